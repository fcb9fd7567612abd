//! OpenID Connect issuers: JWTs from an identity provider (a person's ID
//! token from Authentik or Keycloak), a CI system (GitHub Actions, GitLab,
//! Forgejo) or a Kubernetes API server (a pod's projected service-account
//! token) are accepted as passwords at `/token` and as Bearer tokens.
//!
//! Keys come from the issuer's discovery document and JWKS (or a JWKS file),
//! fetched once and kept; a token naming a key not seen yet (a rotation)
//! triggers one refetch, at most every `jwks_refetch`, so a flood of
//! made-up `kid`s costs one fetch, not one per request. Every claim that
//! matters is checked: signature (asymmetric algorithms only), `iss`, `aud`,
//! `exp` and `nbf` with a 30 s leeway.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::jwt::{self, JwtError, PublicJwk, Unverified};
use super::IdentityError;
use crate::config::OidcConfig;

/// Clock skew tolerated between the issuer and the registry.
const LEEWAY: i64 = 30;
/// The largest discovery document or JWKS read.
const MAX_DOCUMENT: usize = 1 << 20;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounds on what a token's claims may bring in.
const MAX_GROUPS: usize = 256;
const MAX_NAME: usize = 256;

/// Who an issuer's token names.
#[derive(Debug, Clone)]
pub struct OidcLogin {
    pub user: String,
    /// From the groups claim, with the prefix.
    pub groups: Vec<String>,
    pub expires: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("{0}")]
    Token(#[from] JwtError),
    #[error("the claim {0} is missing or not a usable name")]
    Claim(String),
    #[error("cannot fetch the issuer's keys: {0}")]
    Fetch(String),
    /// The token endpoint said no (a 4xx, RFC 6749 section 5.2: a code
    /// used already or not issued for this verifier): the request's fault,
    /// not the provider's.
    #[error("the issuer refused the request: {0}")]
    Refused(String),
}

/// Where the authorization-code flow goes.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub authorization: String,
    pub token: String,
}

pub struct Issuer {
    config: OidcConfig,
    client: reqwest::Client,
    keys: ArcSwap<Vec<PublicJwk>>,
    last_fetch: Mutex<Option<Instant>>,
    fetching: tokio::sync::Mutex<()>,
    /// The web UI's endpoints as last read (one reader at a time), or why
    /// they could not be: a sign-in page anyone may open asks for them.
    endpoints: tokio::sync::Mutex<Option<(Instant, Result<Endpoints, String>)>>,
}

/// How long the endpoints read from the discovery document are reused, and
/// how long a failure to read them is (so a flood of sign-in starts, or
/// forged callbacks, costs the issuer one fetch, not one per request).
const ENDPOINTS_TTL: Duration = Duration::from_secs(300);
const ENDPOINTS_RETRY: Duration = Duration::from_secs(10);

impl Issuer {
    fn new(config: OidcConfig) -> Result<Self, IdentityError> {
        let mut builder = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path).map_err(|source| IdentityError::Read {
                path: path.display().to_string(),
                source,
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| IdentityError::Oidc(format!("{}: ca_file: {e}", config.issuer)))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder
            .build()
            .map_err(|e| IdentityError::Oidc(format!("{}: {e}", config.issuer)))?;
        let keys = match &config.jwks_file {
            Some(path) => {
                let bytes = std::fs::read(path).map_err(|source| IdentityError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                jwt::JwkSet::parse(&bytes).map_err(|e| {
                    IdentityError::Oidc(format!("{}: jwks_file: {e}", path.display()))
                })?
            }
            None => Vec::new(),
        };
        Ok(Self {
            config,
            client,
            keys: ArcSwap::from_pointee(keys),
            last_fetch: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            endpoints: tokio::sync::Mutex::new(None),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    pub fn config(&self) -> &OidcConfig {
        &self.config
    }

    /// The authorization and token endpoints (for the web UI's sign-in),
    /// from the discovery document: https, or http where the issuer is.
    /// Read at most every [`ENDPOINTS_TTL`] ([`ENDPOINTS_RETRY`] after a
    /// failure), by one caller at a time.
    pub async fn endpoints(&self) -> Result<Endpoints, OidcError> {
        let mut cached = self.endpoints.lock().await;
        if let Some((at, result)) = cached.as_ref() {
            let ttl = if result.is_ok() {
                ENDPOINTS_TTL
            } else {
                ENDPOINTS_RETRY
            };
            if at.elapsed() < ttl {
                return result.clone().map_err(OidcError::Fetch);
            }
        }
        let result = self.read_endpoints().await;
        let kept = match &result {
            Ok(endpoints) => Ok(endpoints.clone()),
            Err(OidcError::Fetch(why)) => Err(why.clone()),
            Err(e) => Err(e.to_string()),
        };
        *cached = Some((Instant::now(), kept));
        result
    }

    async fn read_endpoints(&self) -> Result<Endpoints, OidcError> {
        let base = self.config.issuer.trim_end_matches('/');
        let discovery = self
            .get_json(&format!("{base}/.well-known/openid-configuration"))
            .await?;
        if discovery.get("issuer").and_then(|v| v.as_str()) != Some(self.config.issuer.as_str()) {
            return Err(OidcError::Fetch(
                "the discovery document names another issuer".into(),
            ));
        }
        let endpoint = |key: &str| -> Result<String, OidcError> {
            let url = discovery
                .get(key)
                .and_then(|v| v.as_str())
                .ok_or_else(|| OidcError::Fetch(format!("the discovery document has no {key}")))?;
            let scheme_ok = url.starts_with("https://")
                || (base.starts_with("http://") && url.starts_with("http://"));
            let clean = url.len() <= 2048 && url.bytes().all(|b| b.is_ascii_graphic());
            if scheme_ok && clean {
                Ok(url.to_owned())
            } else {
                Err(OidcError::Fetch(format!(
                    "{key} {url:?} is not an https URL"
                )))
            }
        };
        Ok(Endpoints {
            authorization: endpoint("authorization_endpoint")?,
            token: endpoint("token_endpoint")?,
        })
    }

    /// POSTs `form` to the issuer's token endpoint and reads its JSON answer
    /// (at most 1 MiB).
    pub async fn token_request(
        &self,
        url: &str,
        form: &[(&str, &str)],
    ) -> Result<serde_json::Value, OidcError> {
        let encode = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        let body = form
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let fetch = |e: reqwest::Error| OidcError::Fetch(format!("{url}: {e}"));
        let mut response = self
            .client
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(body)
            .send()
            .await
            .map_err(fetch)?;
        let status = response.status();
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(fetch)? {
            if bytes.len() + chunk.len() > MAX_DOCUMENT {
                return Err(OidcError::Fetch(format!("{url}: larger than 1 MiB")));
            }
            bytes.extend_from_slice(&chunk);
        }
        if status.is_client_error() {
            // `{"error": "invalid_grant", ...}`, when the answer says.
            let error = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error")?.as_str().map(str::to_owned))
                .unwrap_or_else(|| status.to_string());
            return Err(OidcError::Refused(error.chars().take(100).collect()));
        }
        if !status.is_success() {
            return Err(OidcError::Fetch(format!("{url}: {status}")));
        }
        serde_json::from_slice(&bytes).map_err(|e| OidcError::Fetch(format!("{url}: {e}")))
    }

    fn key(&self, kid: Option<&str>) -> Option<PublicJwk> {
        let keys = self.keys.load();
        match kid {
            Some(kid) => keys.iter().find(|k| k.kid.as_deref() == Some(kid)).cloned(),
            // No kid: only unambiguous with one key.
            None if keys.len() == 1 => keys.first().cloned(),
            None => None,
        }
    }

    /// Fetches the keys unless a fetch happened within `jwks_refetch`.
    async fn refetch(&self) -> Result<(), OidcError> {
        if self.config.jwks_file.is_some() {
            return Ok(());
        }
        // One fetch at a time; callers arriving meanwhile do not queue
        // behind a slow issuer (their token names a key not known yet).
        let Ok(_one) = self.fetching.try_lock() else {
            return Ok(());
        };
        {
            let last = self.last_fetch.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < self.config.jwks_refetch) {
                return Ok(());
            }
        }
        let result = self.fetch().await;
        *self.last_fetch.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        match result {
            Ok(keys) => {
                tracing::info!(issuer = %self.config.issuer, keys = keys.len(), "fetched the issuer's signing keys");
                self.keys.store(Arc::new(keys));
                Ok(())
            }
            Err(e) => {
                tracing::warn!(issuer = %self.config.issuer, error = %e, "cannot fetch the issuer's signing keys");
                Err(e)
            }
        }
    }

    async fn get_json(&self, url: &str) -> Result<serde_json::Value, OidcError> {
        let fetch = |e: reqwest::Error| OidcError::Fetch(format!("{url}: {e}"));
        let mut response = self.client.get(url).send().await.map_err(fetch)?;
        if !response.status().is_success() {
            return Err(OidcError::Fetch(format!("{url}: {}", response.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(fetch)? {
            if body.len() + chunk.len() > MAX_DOCUMENT {
                return Err(OidcError::Fetch(format!("{url}: larger than 1 MiB")));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|e| OidcError::Fetch(format!("{url}: {e}")))
    }

    async fn fetch(&self) -> Result<Vec<PublicJwk>, OidcError> {
        let base = self.config.issuer.trim_end_matches('/');
        let discovery = self
            .get_json(&format!("{base}/.well-known/openid-configuration"))
            .await?;
        if discovery.get("issuer").and_then(|v| v.as_str()) != Some(self.config.issuer.as_str()) {
            return Err(OidcError::Fetch(
                "the discovery document names another issuer".into(),
            ));
        }
        let jwks_uri = discovery
            .get("jwks_uri")
            .and_then(|v| v.as_str())
            .ok_or_else(|| OidcError::Fetch("the discovery document has no jwks_uri".into()))?;
        // Keys only over https, or plain http where the issuer itself is.
        let scheme_ok = jwks_uri.starts_with("https://")
            || (base.starts_with("http://") && jwks_uri.starts_with("http://"));
        if !scheme_ok {
            return Err(OidcError::Fetch(format!(
                "jwks_uri {jwks_uri} is not https"
            )));
        }
        let jwks = self.get_json(jwks_uri).await?;
        jwt::JwkSet::parse(jwks.to_string().as_bytes())
            .map_err(|e| OidcError::Fetch(format!("{jwks_uri}: {e}")))
    }

    /// Verifies an issuer's token and says whom it names.
    pub async fn verify(&self, token: Unverified) -> Result<OidcLogin, OidcError> {
        let kid = token.kid.clone();
        let key = match self.key(kid.as_deref()) {
            Some(key) => key,
            None => {
                // Unknown yet: maybe rotated, or never fetched.
                let _ = self.refetch().await;
                self.key(kid.as_deref()).ok_or_else(|| {
                    OidcError::Token(JwtError::UnknownKey(
                        kid.map(|k| k.chars().take(32).collect()),
                    ))
                })?
            }
        };
        let claims = token.verify(&key)?;
        if claims.get("iss").and_then(|v| v.as_str()) != Some(self.config.issuer.as_str()) {
            return Err(JwtError::Issuer.into());
        }
        if !jwt::has_audience(&claims, &self.config.audience) {
            return Err(JwtError::Audience.into());
        }
        let expires = jwt::check_times(&claims, LEEWAY)?;
        let user = match claims.get(&self.config.user_claim) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => String::new(),
        };
        if !usable_name(&user) {
            return Err(OidcError::Claim(self.config.user_claim.clone()));
        }
        let user = format!("{}{user}", self.config.user_prefix);
        let listed: Vec<&str> = match claims.get(&self.config.groups_claim) {
            Some(serde_json::Value::Array(list)) => {
                list.iter().filter_map(|g| g.as_str()).collect()
            }
            Some(serde_json::Value::String(one)) => vec![one.as_str()],
            _ => Vec::new(),
        };
        let groups = listed
            .into_iter()
            .filter(|g| usable_name(g))
            .take(MAX_GROUPS)
            .map(|g| format!("{}{g}", self.config.group_prefix))
            .collect();
        Ok(OidcLogin {
            user,
            groups,
            expires,
        })
    }

    /// Fetches the keys once in the background, so the first login does not wait.
    pub fn warm(self: &Arc<Self>) {
        if self.config.jwks_file.is_some() {
            return;
        }
        let issuer = Arc::clone(self);
        tokio::spawn(async move {
            let _ = issuer.refetch().await;
        });
    }
}

fn usable_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME && !name.chars().any(char::is_control)
}

/// The issuers of one config, by `iss`.
#[derive(Default)]
pub struct Issuers {
    by_issuer: HashMap<String, Arc<Issuer>>,
}

impl Issuers {
    /// The configured issuers; one whose settings did not change keeps its
    /// keys from `previous` (a reload does not refetch every JWKS).
    pub fn from_config(
        list: &[OidcConfig],
        previous: Option<&Issuers>,
    ) -> Result<Self, IdentityError> {
        let mut by_issuer = HashMap::new();
        for config in list {
            let kept = previous
                .and_then(|p| p.by_issuer.get(&config.issuer))
                .filter(|i| i.config == *config && config.jwks_file.is_none());
            let issuer = match kept {
                Some(issuer) => Arc::clone(issuer),
                None => Arc::new(Issuer::new(config.clone())?),
            };
            by_issuer.insert(config.issuer.clone(), issuer);
        }
        Ok(Self { by_issuer })
    }

    pub fn get(&self, issuer: &str) -> Option<&Arc<Issuer>> {
        self.by_issuer.get(issuer)
    }

    pub fn is_empty(&self) -> bool {
        self.by_issuer.is_empty()
    }

    pub fn warm(&self) {
        for issuer in self.by_issuer.values() {
            issuer.warm();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A discovery document for the issuer `<server>/idp` served on
    /// loopback; the second counter counts requests for anything else.
    async fn provider() -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/idp", listener.local_addr().unwrap());
        let (hits, misses) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (counter, missed, issuer) = (Arc::clone(&hits), Arc::clone(&misses), base.clone());
        let app = axum::Router::new()
            .route(
                "/idp/.well-known/openid-configuration",
                axum::routing::get(move || {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let issuer = issuer.clone();
                    async move {
                        let body = serde_json::json!({
                            "issuer": issuer,
                            "authorization_endpoint": format!("{issuer}/authorize"),
                            "token_endpoint": format!("{issuer}/token"),
                            "jwks_uri": format!("{issuer}/jwks"),
                        });
                        (
                            [(axum::http::header::CONTENT_TYPE, "application/json")],
                            body.to_string(),
                        )
                    }
                }),
            )
            .route(
                "/idp/token",
                axum::routing::post(|| async {
                    (
                        axum::http::StatusCode::BAD_REQUEST,
                        r#"{"error":"invalid_grant"}"#,
                    )
                }),
            )
            .route(
                "/idp/broken",
                axum::routing::post(|| async { axum::http::StatusCode::BAD_GATEWAY }),
            )
            .fallback(move || {
                missed.fetch_add(1, Ordering::SeqCst);
                async { axum::http::StatusCode::NOT_FOUND }
            });
        tokio::spawn(async move { axum::serve(listener, app).await });
        (base, hits, misses)
    }

    fn issuer(url: &str) -> Issuer {
        Issuer::new(OidcConfig {
            issuer: url.to_owned(),
            audience: "portcullis".into(),
            user_claim: "sub".into(),
            user_prefix: String::new(),
            groups_claim: "groups".into(),
            group_prefix: String::new(),
            ca_file: None,
            jwks_file: None,
            jwks_refetch: Duration::from_secs(60),
            ui_client_id: Some("portcullis".into()),
            ui_name: None,
            ui_client_secret_file: None,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn endpoints_are_read_once_for_many_sign_ins() {
        let (url, hits, _) = provider().await;
        let issuer = issuer(&url);
        for _ in 0..20 {
            let endpoints = issuer.endpoints().await.unwrap();
            assert_eq!(endpoints.authorization, format!("{url}/authorize"));
            assert_eq!(endpoints.token, format!("{url}/token"));
        }
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_unreadable_discovery_document_is_not_asked_for_again_at_once() {
        let (url, hits, misses) = provider().await;
        // An issuer whose discovery document is a 404.
        let missing = issuer(&format!("{url}/elsewhere"));
        for _ in 0..20 {
            assert!(matches!(
                missing.endpoints().await,
                Err(OidcError::Fetch(_))
            ));
        }
        assert_eq!(misses.load(Ordering::SeqCst), 1);
        assert_eq!(hits.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_refused_code_is_told_from_a_provider_that_fails() {
        let (url, _, _) = provider().await;
        let issuer = issuer(&url);
        let form = [("grant_type", "authorization_code"), ("code", "forged")];
        let refused = issuer.token_request(&format!("{url}/token"), &form).await;
        assert!(matches!(refused, Err(OidcError::Refused(_))), "{refused:?}");
        let failed = issuer.token_request(&format!("{url}/broken"), &form).await;
        assert!(matches!(failed, Err(OidcError::Fetch(_))), "{failed:?}");
    }
}
