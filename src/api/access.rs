//! Identity and authorization for the API: who the caller is (Basic
//! credentials, a Bearer token, or nobody), and whether the policy chain
//! lets them do what the request asks. Denials map to what clients act on:
//! an anonymous caller gets 401 with a Bearer challenge naming the scope
//! (`error="insufficient_scope"` once it holds a token), so docker, podman,
//! skopeo and containerd fetch a token or say "may require 'docker login'";
//! a known user gets 403 `DENIED`.

use std::net::IpAddr;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};

use super::error::{ApiError, ApiResult, ErrorCode};
use super::{header_str, header_value, SharedState};
use crate::config::Action;
use crate::identity::{AuthError, Identity};
use crate::policy::chain::Stage;
use crate::policy::request::Resource;
use crate::policy::{Access, PolicyChain, Verdict};

/// The caller of one request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub identity: Identity,
    pub ip: IpAddr,
    /// Whether credentials or a token came with the request.
    pub credentials: bool,
    /// The token service's URL, for challenges.
    pub realm: String,
}

/// The token endpoint's URL: `external_url`, or what the client called
/// (its `Host` header, or the `:authority` of HTTP/2, if it is a plain host
/// name or address).
pub fn realm(state: &SharedState, headers: &HeaderMap, uri: &Uri) -> String {
    if let Some(url) = &state.config.external_url {
        return format!("{}/token", url.trim_end_matches('/'));
    }
    let scheme = if state.config.tls.cert.is_some() {
        "https"
    } else {
        "http"
    };
    let host = header_str(headers, header::HOST)
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| state.config.listen.to_string());
    format!("{scheme}://{host}/token")
}

/// The `WWW-Authenticate` value: a Bearer challenge for the token service.
pub fn challenge(
    state: &SharedState,
    realm: &str,
    scope: Option<&str>,
    error: Option<&str>,
) -> String {
    let mut value = format!(
        "Bearer realm=\"{realm}\",service=\"{}\"",
        state.auth.service()
    );
    if let Some(scope) = scope {
        value.push_str(&format!(",scope=\"{scope}\""));
    }
    if let Some(error) = error {
        value.push_str(&format!(",error=\"{error}\""));
    }
    value
}

fn unauthorized(
    state: &SharedState,
    realm: &str,
    scope: Option<&str>,
    error: Option<&str>,
    message: String,
) -> ApiError {
    let mut err = ApiError::new(ErrorCode::Unauthorized, message);
    if let Ok(value) = header_value(challenge(state, realm, scope, error)) {
        err = err.with_header(header::WWW_AUTHENTICATE, value);
    }
    err
}

/// The token scope an access needs (`repository:<name>:pull`, ...).
fn scope_of(access: &Access) -> String {
    if access.resource == Resource::Catalog {
        return "registry:catalog:*".into();
    }
    let actions = match access.action {
        Action::Pull | Action::List => "pull",
        Action::Push => "pull,push",
        Action::Delete => "delete",
    };
    format!("repository:{}:{actions}", access.repository)
}

/// Reads the caller's identity; bad credentials or tokens are a 401 with a challenge.
pub async fn identify(
    state: &SharedState,
    headers: &HeaderMap,
    uri: &Uri,
    ip: IpAddr,
) -> ApiResult<Caller> {
    let realm = if state.auth.enabled() {
        realm(state, headers, uri)
    } else {
        String::new()
    };
    match state
        .auth
        .identify(header_str(headers, header::AUTHORIZATION), ip)
        .await
    {
        Ok(presented) => Ok(Caller {
            identity: presented.identity,
            ip,
            credentials: presented.credentials,
            realm,
        }),
        Err(e @ (AuthError::BadCredentials | AuthError::Malformed)) => {
            Err(unauthorized(state, &realm, None, None, e.to_string()))
        }
        Err(e @ AuthError::BadToken(_)) => Err(unauthorized(
            state,
            &realm,
            None,
            Some("invalid_token"),
            e.to_string(),
        )),
        Err(e @ AuthError::Throttled { .. }) => Err(throttled(e)),
        Err(e @ AuthError::Signing(_)) => Err(ApiError::new(ErrorCode::Unknown, e.to_string())),
    }
}

/// 429 with `Retry-After` for a throttled login.
pub fn throttled(e: AuthError) -> ApiError {
    let seconds = match &e {
        AuthError::Throttled { retry_after } => retry_after.as_secs().max(1),
        _ => 1,
    };
    ApiError::new(ErrorCode::TooManyRequests, e.to_string()).with_header(
        header::RETRY_AFTER,
        HeaderValue::from_str(&seconds.to_string()).unwrap_or(HeaderValue::from_static("60")),
    )
}

/// `GET /v2/`: with accounts on, a caller without credentials or a token is
/// challenged, so that clients learn where to get a token.
pub fn check_base(state: &SharedState, caller: &Caller) -> ApiResult<()> {
    if state.auth.enabled() && !caller.credentials {
        return Err(unauthorized(
            state,
            &caller.realm,
            None,
            None,
            "authentication required".into(),
        ));
    }
    Ok(())
}

/// Whether the chain allows `access` (no error response, for filtering listings).
pub async fn allows(state: &SharedState, caller: &Caller, access: &Access) -> bool {
    state
        .policies
        .current()
        .evaluate(access, &caller.identity, caller.ip, &state.metrics)
        .await
        == Verdict::Allow
}

/// Whether the chain would allow `access`, asked by a web page about what
/// to show (not a request: no decision is recorded).
pub async fn would_allow(state: &SharedState, caller: &Caller, access: &Access) -> bool {
    state
        .policies
        .current()
        .permits(access, &caller.identity, caller.ip, &state.metrics)
        .await
}

/// Runs `access` through the chain and turns a denial into the right error.
pub async fn authorize(state: &SharedState, caller: &Caller, access: &Access) -> ApiResult<()> {
    let chain = state.policies.current();
    authorize_in(state, &chain, caller, access, Stage::All).await
}

/// Runs `access` through `chain`'s policies of `stage` (a manifest pull asks
/// the policies that need no facts before it reads the manifest, the others
/// after, on the same chain).
pub async fn authorize_in(
    state: &SharedState,
    chain: &PolicyChain,
    caller: &Caller,
    access: &Access,
    stage: Stage,
) -> ApiResult<()> {
    let verdict = chain
        .evaluate_stage(access, &caller.identity, caller.ip, &state.metrics, stage)
        .await;
    match verdict {
        Verdict::Allow => Ok(()),
        Verdict::Deny { policy, reason } => {
            let message = format!("denied by policy {policy}: {reason}");
            if caller.identity.is_anonymous() && state.auth.enabled() {
                // Without a token yet: get one (maybe after logging in);
                // with one: it is not enough.
                let error = caller.credentials.then_some("insufficient_scope");
                Err(unauthorized(
                    state,
                    &caller.realm,
                    Some(&scope_of(access)),
                    error,
                    message,
                )
                .by_policy(policy))
            } else {
                Err(ApiError::new(ErrorCode::Denied, message).by_policy(policy))
            }
        }
        Verdict::Unavailable { policy } => Err(ApiError::new(
            ErrorCode::Unavailable,
            format!(
                "policy {policy} cannot run now: the policies' memory \
                 (policy.total_memory) is in use; retry"
            ),
        )
        .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))),
        Verdict::Failed { policy, .. } => Err(ApiError::new(
            ErrorCode::Denied,
            format!(
                "policy {policy} failed; the request is denied (the operator's log has details)"
            ),
        )
        .with_status(StatusCode::FORBIDDEN)
        .by_policy(policy)),
    }
}
