//! Identity and authorization for the API: who the caller is (Basic auth),
//! and whether the policy chain lets them do what the request asks.
//! Denials map to the spec's errors: 401 with a challenge for anonymous
//! callers (so `docker login` is prompted), 403 `DENIED` for known users.

use std::net::IpAddr;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};

use super::error::{ApiError, ApiResult, ErrorCode};
use super::{header_str, header_value, SharedState};
use crate::auth::{AuthError, Identity};
use crate::policy::{Access, Verdict};

/// The caller of one request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub identity: Identity,
    pub ip: IpAddr,
}

fn unauthorized(state: &SharedState, message: String) -> ApiError {
    let mut err = ApiError::new(ErrorCode::Unauthorized, message);
    if let Ok(value) = header_value(state.auth.challenge()) {
        err = err.with_header(header::WWW_AUTHENTICATE, value);
    }
    err
}

/// Reads the caller's identity; wrong credentials are a 401 with a challenge.
pub async fn identify(state: &SharedState, headers: &HeaderMap, ip: IpAddr) -> ApiResult<Caller> {
    match state
        .auth
        .identify(header_str(headers, header::AUTHORIZATION), ip)
        .await
    {
        Ok(identity) => Ok(Caller { identity, ip }),
        Err(e @ (AuthError::BadCredentials | AuthError::Malformed)) => {
            Err(unauthorized(state, e.to_string()))
        }
        Err(e @ AuthError::Throttled { retry_after }) => {
            let seconds = retry_after.as_secs().max(1).to_string();
            Err(
                ApiError::new(ErrorCode::TooManyRequests, e.to_string()).with_header(
                    header::RETRY_AFTER,
                    HeaderValue::from_str(&seconds).unwrap_or(HeaderValue::from_static("60")),
                ),
            )
        }
    }
}

/// `GET /v2/`: with accounts configured, anonymous callers are challenged so
/// that `docker login` checks the password.
pub fn check_base(state: &SharedState, caller: &Caller) -> ApiResult<()> {
    if state.auth.enabled() && caller.identity.is_anonymous() {
        return Err(unauthorized(state, "authentication required".into()));
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

/// Runs `access` through the chain and turns a denial into the right error.
pub async fn authorize(state: &SharedState, caller: &Caller, access: &Access) -> ApiResult<()> {
    let verdict = state
        .policies
        .current()
        .evaluate(access, &caller.identity, caller.ip, &state.metrics)
        .await;
    match verdict {
        Verdict::Allow => Ok(()),
        Verdict::Deny { policy, reason } => {
            let message = format!("denied by policy {policy}: {reason}");
            if caller.identity.is_anonymous() && state.auth.enabled() {
                Err(unauthorized(state, message))
            } else {
                Err(ApiError::new(ErrorCode::Denied, message))
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
        .with_status(StatusCode::FORBIDDEN)),
    }
}
