//! The token service (`/token`), as Docker's registry token specification
//! describes it: `GET` with Basic credentials or none (docker, podman,
//! skopeo), and `POST` with an OAuth2 form (`grant_type=password` or
//! `refresh_token`, as containerd and a logged-in docker send).
//!
//! The `access` a token lists is what the policy chain allows the caller
//! per action, asked without a request's details (a push's manifest is not
//! known yet): a hint that lets clients behave well. Every API request is
//! still decided by the chain with the token's identity when it arrives.

use std::net::IpAddr;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt as _;
use serde_json::json;

use super::access::{self, Caller};
use super::audit::Who;
use super::error::{ApiError, ApiResult, ErrorCode};
use super::{header_str, header_value, SharedState};
use crate::config::Action;
use crate::identity::tokens::AccessEntry;
use crate::identity::{AuthError, Login};
use crate::policy::request::Resource;
use crate::policy::Access;
use crate::reference::RepositoryName;

/// Scopes looked at per request, policy evaluations they may cost, and the
/// form body's size.
const MAX_SCOPES: usize = 32;
const MAX_EVALUATIONS: usize = 16;
const MAX_FORM: usize = 64 * 1024;

pub async fn handle(State(state): State<SharedState>, request: Request) -> Response {
    let mut who = None;
    let mut response = match token(state, request, &mut who).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    };
    if let Some(who) = who {
        response.extensions_mut().insert(who);
    }
    response
}

async fn token(state: SharedState, request: Request, who: &mut Option<Who>) -> ApiResult {
    let (parts, body) = request.into_parts();
    let ip = super::client_ip(&parts.extensions);
    if !state.auth.enabled() {
        return Err(ApiError::new(
            ErrorCode::Unsupported,
            "this registry has no accounts; every caller is anonymous and needs no token",
        )
        .with_status(StatusCode::NOT_FOUND));
    }
    let realm = access::realm(&state, &parts.headers, &parts.uri);
    match parts.method {
        Method::GET => {
            let params = pairs(parts.uri.query().unwrap_or(""));
            check_service(&state, &params)?;
            let login = basic_login(&state, &parts.headers, ip, &realm).await?;
            *who = Some(Who::of(&login.identity));
            let offline = first(&params, "offline_token") == Some("true");
            let scopes = scopes_of(&params);
            let issued = grant(&state, &login, ip, &realm, &scopes, offline).await?;
            respond(issued, false)
        }
        Method::POST => {
            let idle = state.config.limits.body_idle_timeout;
            let form = match tokio::time::timeout(idle, read_form(body)).await {
                Ok(form) => form?,
                Err(_) => {
                    return Err(ApiError::new(
                        ErrorCode::Unsupported,
                        "the form did not arrive in time",
                    )
                    .with_status(StatusCode::REQUEST_TIMEOUT))
                }
            };
            let params = pairs(&form);
            check_service(&state, &params)?;
            let login = match first(&params, "grant_type") {
                Some("password") => {
                    let user = first(&params, "username").unwrap_or("");
                    let password = first(&params, "password").unwrap_or("");
                    state
                        .auth
                        .login(user, password, ip)
                        .await
                        .map_err(|e| refused(&realm, e))?
                }
                Some("refresh_token") => {
                    let refresh = first(&params, "refresh_token").unwrap_or("");
                    state
                        .auth
                        .refresh(refresh, ip)
                        .await
                        .map_err(|e| refused(&realm, e))?
                }
                other => {
                    return Err(ApiError::new(
                        ErrorCode::Unsupported,
                        format!(
                            "grant_type {:?} is not supported: use password or refresh_token",
                            other.unwrap_or("")
                        ),
                    )
                    .with_status(StatusCode::BAD_REQUEST))
                }
            };
            *who = Some(Who::of(&login.identity));
            let offline = first(&params, "access_type") == Some("offline");
            let scopes = scopes_of(&params);
            let mut issued = grant(&state, &login, ip, &realm, &scopes, offline).await?;
            if first(&params, "grant_type") == Some("refresh_token") {
                // The stored refresh token stays the client's credential.
                issued.1.refresh_token = None;
            }
            respond(issued, true)
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// A `service` parameter, if given, must name this registry.
fn check_service(state: &SharedState, params: &[(String, String)]) -> ApiResult<()> {
    match first(params, "service") {
        Some(service) if service != state.auth.service() => Err(ApiError::new(
            ErrorCode::Unsupported,
            format!(
                "this token service issues tokens for {:?}, not {service:?}",
                state.auth.service()
            ),
        )
        .with_status(StatusCode::BAD_REQUEST)),
        _ => Ok(()),
    }
}

/// The caller of a `GET /token`: Basic credentials, or anonymous.
async fn basic_login(
    state: &SharedState,
    headers: &HeaderMap,
    ip: IpAddr,
    realm: &str,
) -> ApiResult<Login> {
    let Some(header) = header_str(headers, header::AUTHORIZATION) else {
        return Ok(state.auth.anonymous_login());
    };
    let (scheme, value) = header.trim().split_once(' ').unwrap_or(("", ""));
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(refused(realm, AuthError::Malformed));
    }
    let decoded = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, value.trim())
        .ok()
        .and_then(|d| String::from_utf8(d).ok());
    let Some((user, password)) = decoded.as_deref().and_then(|t| t.split_once(':')) else {
        return Err(refused(realm, AuthError::Malformed));
    };
    if user.is_empty() && password.is_empty() {
        return Ok(state.auth.anonymous_login());
    }
    state
        .auth
        .login(user, password, ip)
        .await
        .map_err(|e| refused(realm, e))
}

fn refused(realm: &str, e: AuthError) -> ApiError {
    if matches!(e, AuthError::Throttled { .. }) {
        return access::throttled(e);
    }
    let mut err = ApiError::new(ErrorCode::Unauthorized, e.to_string());
    // A Basic challenge: the token service wants credentials, not a token.
    let challenge = format!("Basic realm=\"{realm}\"");
    if let Ok(value) = header_value(challenge) {
        err = err.with_header(header::WWW_AUTHENTICATE, value);
    }
    err
}

/// What the chain allows per scope, and the signed token.
async fn grant(
    state: &SharedState,
    login: &Login,
    ip: IpAddr,
    realm: &str,
    scopes: &[&str],
    offline: bool,
) -> ApiResult<(String, crate::identity::Issued)> {
    let mut scopes: Vec<&str> = scopes.iter().copied().filter(|s| !s.is_empty()).collect();
    scopes.sort_unstable();
    scopes.dedup();
    if scopes.len() > MAX_SCOPES {
        return Err(ApiError::new(
            ErrorCode::Unsupported,
            format!("at most {MAX_SCOPES} scopes per token"),
        )
        .with_status(StatusCode::BAD_REQUEST));
    }
    let caller = Caller {
        identity: login.identity.clone(),
        ip,
        credentials: true,
        realm: realm.to_owned(),
    };
    let mut access = Vec::new();
    // A hint only: past the budget, scopes are listed with nothing granted
    // (the requests themselves are still decided one by one).
    let mut budget = MAX_EVALUATIONS;
    for scope in scopes {
        if let Some(entry) = decide(state, &caller, scope, &mut budget).await {
            access.push(entry);
        }
    }
    let granted = access
        .iter()
        .map(|a| format!("{}:{}:{}", a.kind, a.name, a.actions.join(",")))
        .collect::<Vec<_>>()
        .join(" ");
    let issued = state
        .auth
        .issue(login, access, offline)
        .map_err(|e| match e {
            AuthError::Signing(_) => ApiError::new(ErrorCode::Unknown, e.to_string()),
            refusal => refused(realm, refusal),
        })?;
    tracing::info!(
        target: "portcullis::auth",
        user = login.identity.subject.as_deref().unwrap_or("anonymous"),
        source = %login.source,
        client = %ip,
        granted = %granted,
        "token issued"
    );
    Ok((granted, issued))
}

/// One scope (`repository:<name>:<actions>`, `registry:catalog:*`): the
/// actions the chain allows, or `None` for a scope it cannot mean.
async fn decide(
    state: &SharedState,
    caller: &Caller,
    scope: &str,
    budget: &mut usize,
) -> Option<AccessEntry> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    // `repository(plugin)`: the class does not matter here.
    let kind = kind.split('(').next().unwrap_or(kind);
    if kind == "registry" && name == "catalog" {
        // The listing itself is filtered per repository by the chain.
        return Some(AccessEntry {
            kind: kind.into(),
            name: name.into(),
            actions: vec!["*".into()],
        });
    }
    if kind != "repository" {
        return None;
    }
    let repository = RepositoryName::parse(name).ok()?;
    let mut wanted: Vec<&str> = Vec::new();
    for action in actions.split(',').take(8) {
        match action {
            "*" => wanted.extend(["pull", "push", "delete"]),
            "pull" | "push" | "delete" => wanted.push(action),
            _ => {}
        }
    }
    wanted.sort_unstable();
    wanted.dedup();
    let mut granted = Vec::new();
    for action in wanted {
        let a = match action {
            "pull" => Action::Pull,
            "push" => Action::Push,
            _ => Action::Delete,
        };
        if *budget == 0 {
            break;
        }
        *budget -= 1;
        let access = Access::new(a, Resource::Manifest, repository.clone());
        if access::allows(state, caller, &access).await {
            granted.push(action.to_owned());
        }
    }
    Some(AccessEntry {
        kind: "repository".into(),
        name: repository.as_str().to_owned(),
        actions: granted,
    })
}

fn respond((granted, issued): (String, crate::identity::Issued), oauth: bool) -> ApiResult {
    let issued_at = chrono::DateTime::from_timestamp(issued.issued_at, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default();
    let mut body = if oauth {
        json!({
            "access_token": issued.token,
            "token_type": "Bearer",
            "scope": granted,
            "expires_in": issued.expires_in,
            "issued_at": issued_at,
        })
    } else {
        json!({
            "token": issued.token,
            "access_token": issued.token,
            "expires_in": issued.expires_in,
            "issued_at": issued_at,
        })
    };
    if let (Some(refresh), Some(map)) = (issued.refresh_token, body.as_object_mut()) {
        map.insert("refresh_token".into(), json!(refresh));
    }
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.to_string(),
    )
        .into_response())
}

async fn read_form(body: Body) -> ApiResult<String> {
    let limited = http_body_util::Limited::new(body, MAX_FORM);
    let bytes = limited
        .collect()
        .await
        .map_err(|_| {
            ApiError::new(
                ErrorCode::Unsupported,
                format!("the form is larger than {MAX_FORM} bytes or broken"),
            )
            .with_status(StatusCode::PAYLOAD_TOO_LARGE)
        })?
        .to_bytes();
    String::from_utf8(bytes.to_vec()).map_err(|_| {
        ApiError::new(ErrorCode::Unsupported, "the form is not UTF-8")
            .with_status(StatusCode::BAD_REQUEST)
    })
}

/// Every `key=value` pair of a query string or form, decoded, in order.
fn pairs(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .take(256)
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (decode(k), decode(v))
        })
        .collect()
}

/// Every `scope` value (repeated, as docker sends them, or space-separated, as OAuth2 does).
fn scopes_of(params: &[(String, String)]) -> Vec<&str> {
    params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' '))
        .collect()
}

fn first<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}
