//! Signing in with an OpenID provider the token service already trusts
//! (`[[auth.oidc]]` with `ui_client_id`): the authorization-code flow with
//! PKCE (S256) and a nonce.
//!
//! The flow's secrets (the PKCE verifier, the nonce, where to return) are
//! in a short-lived HttpOnly cookie; `state` is the SHA-256 of that cookie,
//! so a callback is only taken by the browser that started it (login CSRF).
//! The ID token the provider returns is verified as any token of that
//! issuer (key, `iss`, `aud` = the issuer's `audience`, times), then its
//! `nonce` must be the one this flow sent.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Redirect, Response};
use base64::Engine as _;
use sha2::Digest as _;

use super::session::{self, OIDC_COOKIE};
use super::signin::{secure, start_session};
use super::{error_page, finish, registry_host, safe_return, UiState, Viewer};
use crate::api::Query;
use crate::config::Config;
use crate::identity::jwt;
use crate::identity::oidc::OidcError;

/// One issuer the sign-in page offers.
pub struct Client {
    issuer: String,
    client_id: String,
    secret: Option<String>,
    label: String,
}

/// The issuers the sign-in page offers, by their place in `[[auth.oidc]]`.
pub struct Clients(Vec<Option<Client>>);

/// How long a browser may take at the provider.
const FLOW_SECONDS: i64 = 600;

impl Clients {
    pub fn from_config(config: &Config) -> Self {
        let clients = config
            .auth
            .oidc
            .iter()
            .map(|o| {
                let client_id = o.ui_client_id.clone()?;
                let secret = match &o.ui_client_secret_file {
                    Some(path) => match std::fs::read_to_string(path) {
                        Ok(s) => Some(s.trim().to_owned()),
                        Err(e) => {
                            tracing::warn!(issuer = %o.issuer, path = %path.display(), error = %e,
                                "cannot read ui_client_secret_file; the issuer is not offered for web sign-in");
                            return None;
                        }
                    },
                    None => None,
                };
                let label = o.ui_name.clone().unwrap_or_else(|| {
                    o.issuer
                        .trim_start_matches("https://")
                        .trim_start_matches("http://")
                        .split('/')
                        .next()
                        .unwrap_or(&o.issuer)
                        .to_owned()
                });
                Some(Client {
                    issuer: o.issuer.clone(),
                    client_id,
                    secret,
                    label,
                })
            })
            .collect();
        Self(clients)
    }

    /// (index, label) of each issuer offered.
    pub fn buttons(&self) -> Vec<(usize, String)> {
        self.0
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|c| (i, c.label.clone())))
            .collect()
    }

    fn get(&self, index: &str) -> Option<(usize, &Client)> {
        let i: usize = index.parse().ok()?;
        self.0.get(i)?.as_ref().map(|c| (i, c))
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The `state` of a flow: the digest of its cookie.
fn state_of(cookie: &str) -> String {
    b64(&sha2::Sha256::digest(cookie.as_bytes()))
}

fn redirect_uri(state: &UiState, headers: &axum::http::HeaderMap) -> String {
    match &state.app.config.external_url {
        Some(url) => format!("{}/ui/oidc/callback", url.trim_end_matches('/')),
        None => {
            let scheme = if state.app.config.tls.cert.is_some() {
                "https"
            } else {
                "http"
            };
            format!(
                "{scheme}://{}/ui/oidc/callback",
                registry_host(state, headers)
            )
        }
    }
}

fn unavailable(viewer: &Viewer, what: &str) -> Response {
    error_page(
        viewer,
        StatusCode::BAD_GATEWAY,
        &format!("Signing in with the identity provider failed: {what}"),
    )
}

/// `GET /ui/oidc/start?issuer=N&return=PATH`: off to the provider.
pub async fn start(State(state): State<UiState>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    let viewer = Viewer::of(&state, &parts.headers, &parts.extensions).await;
    let query = Query::parse(parts.uri.query());
    let Some((index, client)) = query.get("issuer").and_then(|i| state.ui.oidc.get(i)) else {
        return error_page(&viewer, StatusCode::NOT_FOUND, "No such identity provider.");
    };
    let back = safe_return(query.get("return"));
    let Some(issuer) = state.app.auth.oidc_issuer(&client.issuer) else {
        return error_page(&viewer, StatusCode::NOT_FOUND, "No such identity provider.");
    };
    let endpoints = match issuer.endpoints().await {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(issuer = %client.issuer, error = %e, "web UI: cannot read the issuer's discovery document");
            return unavailable(&viewer, "its discovery document cannot be read.");
        }
    };
    let (Ok(verifier), Ok(nonce)) = (jwt::random_bytes(32), jwt::random_bytes(16)) else {
        return unavailable(&viewer, "no randomness.");
    };
    let verifier = b64(&verifier);
    let nonce = hex::encode(nonce);
    let cookie = format!("{index}.{verifier}.{nonce}.{}", b64(back.as_bytes()));
    let challenge = b64(&sha2::Sha256::digest(verifier.as_bytes()));
    let encode = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let separator = if endpoints.authorization.contains('?') {
        '&'
    } else {
        '?'
    };
    let location = format!(
        "{}{separator}response_type=code&client_id={}&redirect_uri={}&scope={}&state={}&nonce={}&code_challenge={}&code_challenge_method=S256",
        endpoints.authorization,
        encode(&client.client_id),
        encode(&redirect_uri(&state, &parts.headers)),
        encode("openid profile email groups"),
        encode(&state_of(&cookie)),
        encode(&nonce),
        encode(&challenge),
    );
    let mut response = axum::response::IntoResponse::into_response(Redirect::to(&location));
    finish(&viewer, &mut response);
    let set = session::set_cookie(OIDC_COOKIE, &cookie, FLOW_SECONDS, secure(&state));
    if let Ok(value) = HeaderValue::from_str(&set) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

/// The flow's cookie, taken apart.
struct Flow {
    index: String,
    verifier: String,
    nonce: String,
    back: String,
}

fn parse_flow(cookie: &str) -> Option<Flow> {
    let mut parts = cookie.split('.');
    let (index, verifier, nonce, back) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let back = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(back)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())?;
    Some(Flow {
        index: index.to_owned(),
        verifier: verifier.to_owned(),
        nonce: nonce.to_owned(),
        back: safe_return(Some(&back)),
    })
}

/// The `nonce` claim of a (verified) ID token.
fn nonce_of(id_token: &str) -> Option<String> {
    let payload = id_token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("nonce")?.as_str().map(str::to_owned)
}

/// `GET /ui/oidc/callback?code=...&state=...`: back from the provider.
pub async fn callback(State(state): State<UiState>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    let viewer = Viewer::of(&state, &parts.headers, &parts.extensions).await;
    let query = Query::parse(parts.uri.query());
    let refuse = |why: &str| {
        let mut response = error_page(
            &viewer,
            StatusCode::BAD_REQUEST,
            &format!("This sign-in cannot be finished: {why} Start again from the sign-in page."),
        );
        if let Ok(value) = HeaderValue::from_str(&session::clear_cookie(OIDC_COOKIE)) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
        response
    };
    let Some(cookie) = session::cookie(&parts.headers, OIDC_COOKIE) else {
        return refuse("it was not started in this browser, or took too long.");
    };
    if !session::tokens_match(query.get("state"), &state_of(cookie)) {
        return refuse("its state does not match.");
    }
    let Some(flow) = parse_flow(cookie) else {
        return refuse("its cookie is malformed.");
    };
    if let Some(error) = query.get("error") {
        let error: String = error.chars().take(200).collect();
        return refuse(&format!("the provider answered {error:?}."));
    }
    let Some(code) = query
        .get("code")
        .filter(|c| !c.is_empty() && c.len() <= 4096)
    else {
        return refuse("the provider sent no code.");
    };
    let Some((_, client)) = state.ui.oidc.get(&flow.index) else {
        return refuse("the provider is no longer offered.");
    };
    let Some(issuer) = state.app.auth.oidc_issuer(&client.issuer) else {
        return refuse("the provider is no longer trusted.");
    };
    let endpoints = match issuer.endpoints().await {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(issuer = %client.issuer, error = %e, "web UI: cannot read the issuer's discovery document");
            return unavailable(&viewer, "its discovery document cannot be read.");
        }
    };
    let redirect = redirect_uri(&state, &parts.headers);
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect.as_str()),
        ("client_id", client.client_id.as_str()),
        ("code_verifier", flow.verifier.as_str()),
    ];
    if let Some(secret) = &client.secret {
        form.push(("client_secret", secret.as_str()));
    }
    let answer = match issuer.token_request(&endpoints.token, &form).await {
        Ok(answer) => answer,
        // A replayed code, or one the provider gave another verifier.
        Err(OidcError::Refused(error)) => {
            tracing::info!(issuer = %client.issuer, error, "web UI: the provider refused the code");
            return refuse(&format!("the provider refused its code ({error:?})."));
        }
        Err(e) => {
            tracing::warn!(issuer = %client.issuer, error = %e, "web UI: the code exchange failed");
            return unavailable(&viewer, "the code exchange failed.");
        }
    };
    let Some(id_token) = answer.get("id_token").and_then(|t| t.as_str()) else {
        return unavailable(&viewer, "the provider returned no ID token.");
    };
    // Verified as every token of this issuer is (and throttled alike).
    let login = match state.app.auth.login("", id_token, viewer.ip).await {
        Ok(login) if login.source == format!("oidc:{}", client.issuer) => login,
        Ok(_) | Err(_) => return refuse("the provider's ID token is not valid here."),
    };
    if !session::tokens_match(nonce_of(id_token).as_deref(), &flow.nonce) {
        return refuse("the ID token was not issued for this sign-in (nonce).");
    }
    let mut response = start_session(&state, &viewer, &login, &flow.back);
    if let Ok(value) = HeaderValue::from_str(&session::clear_cookie(OIDC_COOKIE)) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_cookies_parse_and_keep_returns_on_this_ui() {
        let cookie = format!("0.verifier.nonce.{}", b64(b"/ui/r/app"));
        let flow = parse_flow(&cookie).unwrap();
        assert_eq!(
            (flow.index.as_str(), flow.back.as_str()),
            ("0", "/ui/r/app")
        );
        let evil = format!("0.v.n.{}", b64(b"https://evil.example/"));
        assert_eq!(parse_flow(&evil).unwrap().back, "/ui/");
        for bad in ["", "0.v.n", "0.v.n.!!!", "0.v.n.x.y"] {
            assert!(parse_flow(bad).is_none(), "{bad:?}");
        }
        assert_ne!(state_of("a"), state_of("b"));
    }
}
