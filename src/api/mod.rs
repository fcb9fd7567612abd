//! The HTTP API: the OCI Distribution endpoints under `/v2/`.
//!
//! Handlers are thin: the path is parsed into a typed `Route`, the method picks
//! the handler in the resource's file, which calls storage and shapes the
//! response. Cross-cutting concerns (access log, the API version header) are a
//! middleware layer here, not repeated in handlers.

pub mod access;
pub mod audit;
mod blobs;
mod catalog;
pub mod error;
pub mod limits;
pub(crate) mod manifests;
mod mirror;
pub mod ranges;
mod referrers;
pub mod route;
mod tags;
mod token;
mod uploads;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::config::{Action, Config};
use crate::identity::Identities;
use crate::metrics::Metrics;
use crate::policy::reload::ChainHolder;
use crate::policy::request::Resource;
use crate::policy::Access;
use crate::reference::{Reference, RepositoryName};
use crate::storage::Storage;
use access::authorize;
use error::{ApiError, ApiResult, ErrorCode};
use route::Route;

/// What every handler can reach.
pub struct AppState {
    pub storage: Storage,
    pub config: Config,
    pub auth: Arc<Identities>,
    pub policies: Arc<ChainHolder>,
    pub metrics: Arc<Metrics>,
    pub proxy: Option<Arc<crate::proxy::Proxy>>,
    pub uploads: limits::UploadLimiter,
    /// What manifests are, for the policies (cached per digest).
    pub facts: crate::policy::facts::FactsCache,
    /// Whose word about a client's address is taken.
    pub trusted_proxies: crate::network::TrustedProxies,
}

pub type SharedState = Arc<AppState>;

pub fn router(state: SharedState) -> Router {
    router_with(state, None)
}

/// The API's routes and `pages` (the web UI's, served beside them): every
/// request of either goes through the access log.
pub fn router_with(state: SharedState, pages: Option<Router>) -> Router {
    let api = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/token", get(token::handle).post(token::handle))
        .fallback(dispatch)
        .with_state(Arc::clone(&state));
    let routes = match pages {
        Some(pages) => api.merge(pages),
        None => api,
    };
    routes.layer(middleware::from_fn_with_state(state, audit::access_log))
}

/// Liveness: the process answers.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: storage is writable and a policy chain is loaded.
async fn readyz(State(state): State<SharedState>) -> Response {
    match state.storage.probe_writable().await {
        Ok(()) => {
            let policies = state.policies.current().names().len();
            (
                StatusCode::OK,
                format!("ready: storage writable, {policies} policies loaded\n"),
            )
                .into_response()
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: storage {}: {e}\n", state.storage.location()),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<SharedState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

async fn dispatch(State(state): State<SharedState>, request: Request) -> Response {
    let mut who = None;
    let mut response = match route(state, request, &mut who).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    };
    if let Some(who) = who {
        response.extensions_mut().insert(who);
    }
    response
}

async fn route(state: SharedState, request: Request, who: &mut Option<audit::Who>) -> ApiResult {
    let (parts, body) = request.into_parts();
    let route = Route::parse(parts.uri.path())?;
    let query = Query::parse(parts.uri.query());
    let method = parts.method.clone();
    let headers = &parts.headers;
    let head = method == Method::HEAD;
    let ip = client_ip(&parts.extensions);
    let caller = access::identify(&state, headers, &parts.uri, ip).await?;
    *who = Some(audit::Who::of(&caller.identity));
    // Routes whose access is known from the URL alone are authorised here;
    // manifest PUT/DELETE, uploads with a mount and the catalog need more
    // context and authorise in their handlers.
    let (state_ref, caller_ref) = (&state, &caller);
    let check = |action, resource, name: &RepositoryName, reference: Option<Reference>| {
        let mut access = Access::new(action, resource, name.clone());
        access.reference = reference;
        async move { authorize(state_ref, caller_ref, &access).await }
    };
    match (route, method) {
        (Route::Base, Method::GET | Method::HEAD) => {
            access::check_base(&state, &caller)?;
            Ok((
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                "{}",
            )
                .into_response())
        }
        (Route::Catalog, Method::GET) => catalog::list(&state, &caller, &query).await,
        (Route::Tags(name), Method::GET) => {
            check(Action::List, Resource::Tags, &name, None).await?;
            tags::list(&state, &name, &query).await
        }
        (Route::Manifest(name, reference), Method::GET | Method::HEAD) => {
            manifests::get(&state, &caller, &name, &reference, headers, head).await
        }
        // The conformance suite's `.INVALID_MANIFEST_NAME`: a pull the
        // chain decides as any other (so it is logged, and a registry closed
        // to anonymous callers challenges first), then unknown.
        (Route::BadManifestReference(name, _), Method::GET | Method::HEAD) => {
            check(Action::Pull, Resource::Manifest, &name, None).await?;
            Err(ApiError::new(
                ErrorCode::ManifestUnknown,
                format!("{name} has no such manifest: the reference is not a valid tag or digest"),
            ))
        }
        (Route::BadManifestReference(_, e), _) => Err(e.into()),
        (Route::Manifest(name, reference), Method::PUT) => {
            mirror::refuse_write(&state, &name)?;
            manifests::put(&state, &caller, &name, &reference, headers, body).await
        }
        (Route::Manifest(name, reference), Method::DELETE) => {
            mirror::refuse_write(&state, &name)?;
            manifests::delete(&state, &caller, &name, &reference).await
        }
        (Route::Blob(name, digest), Method::GET | Method::HEAD) => {
            let reference = Some(Reference::Digest(digest.clone()));
            check(Action::Pull, Resource::Blob, &name, reference).await?;
            match blobs::get(&state, &name, &digest, headers, head).await {
                // Missing from a mirror: fetch it upstream.
                Err(e)
                    if e.code == ErrorCode::BlobUnknown
                        && mirror::mirrored(&state, &name).is_some() =>
                {
                    match mirror::stream_blob(&state, &name, &digest, head).await? {
                        Some(streamed) => Ok(streamed),
                        None => blobs::get(&state, &name, &digest, headers, head).await,
                    }
                }
                other => other,
            }
        }
        (Route::Blob(name, digest), Method::DELETE) => {
            mirror::refuse_write(&state, &name)?;
            let reference = Some(Reference::Digest(digest.clone()));
            check(Action::Delete, Resource::Blob, &name, reference).await?;
            blobs::delete(&state, &name, &digest).await
        }
        (Route::UploadStart(name), Method::POST) => {
            mirror::refuse_write(&state, &name)?;
            uploads::start(&state, &caller, &name, &query, headers, body).await
        }
        (Route::Upload(name, id), method) => {
            mirror::refuse_write(&state, &name)?;
            check(Action::Push, Resource::Upload, &name, None).await?;
            let session = uploads::Session {
                state: &state,
                caller: &caller,
                name: &name,
                id,
            };
            match method {
                Method::GET => session.status().await,
                Method::PATCH => session.patch(headers, body).await,
                Method::PUT => session.put(&query, headers, body).await,
                Method::DELETE => session.cancel().await,
                _ => Err(ApiError::method_not_allowed()),
            }
        }
        (Route::Referrers(name, digest), Method::GET) => {
            check(
                Action::Pull,
                Resource::Referrers,
                &name,
                Some(Reference::Digest(digest.clone())),
            )
            .await?;
            referrers::list(&state, &name, &digest, &query).await
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// The request's real client (resolved by the access log's layer through
/// `trusted_proxies`), or the TCP peer where that layer did not run.
pub(crate) fn client_ip(extensions: &axum::http::Extensions) -> IpAddr {
    extensions
        .get::<crate::network::ClientAddr>()
        .map(|c| c.ip)
        .or_else(|| {
            extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip())
        })
        .unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

/// Query parameters, first value wins.
pub(crate) struct Query(HashMap<String, String>);

impl Query {
    pub(crate) fn parse(raw: Option<&str>) -> Self {
        let mut map = HashMap::new();
        for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            map.entry(decode(k)).or_insert_with(|| decode(v));
        }
        Self(map)
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
}

/// The `Range` header value the spec uses for upload progress: `0-<last byte>`.
pub(crate) fn upload_range(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

pub(crate) fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

pub(crate) fn header_value(value: impl AsRef<str>) -> ApiResult<HeaderValue> {
    HeaderValue::from_str(value.as_ref())
        .map_err(|_| ApiError::new(ErrorCode::Unknown, "cannot encode response header"))
}

/// Parses `n` and `last` for the paginated listings.
pub(crate) fn pagination(query: &Query, max: usize) -> ApiResult<(Option<usize>, Option<String>)> {
    let n = match query.get("n") {
        None | Some("") => None,
        Some(raw) => Some(
            raw.parse::<usize>()
                .map_err(|_| {
                    ApiError::new(
                        ErrorCode::Unsupported,
                        format!("page size n={raw:?} is not a number"),
                    )
                    .with_status(StatusCode::BAD_REQUEST)
                })?
                .min(max),
        ),
    };
    Ok((n, query.get("last").map(str::to_owned)))
}

/// Applies `last` and `n` to a sorted list; returns the page and whether more follow.
pub(crate) fn paginate(
    sorted: Vec<String>,
    n: Option<usize>,
    last: Option<&str>,
) -> (Vec<String>, bool) {
    let start = match last {
        Some(last) => sorted.partition_point(|item| item.as_str() <= last),
        None => 0,
    };
    let rest = &sorted[start..];
    match n {
        Some(0) => (Vec::new(), false),
        Some(n) if rest.len() > n => (rest[..n].to_vec(), true),
        _ => (rest.to_vec(), false),
    }
}

/// A page of a listing as JSON, with `Link: <path?n=N&last=L>; rel="next"`
/// when more follow.
pub(crate) fn paged_response(
    body: serde_json::Value,
    path: &str,
    page: &[String],
    n: Option<usize>,
    more: bool,
) -> ApiResult {
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    if let (true, Some(n), Some(last)) = (more, n, page.last()) {
        let last = percent_encoding::utf8_percent_encode(last, percent_encoding::NON_ALPHANUMERIC);
        let link = format!("<{path}?n={n}&last={last}>; rel=\"next\"");
        response
            .headers_mut()
            .insert(header::LINK, header_value(link)?);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pagination_follows_last_and_n() {
        let all: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        assert_eq!(
            paginate(all.clone(), Some(2), None),
            (vec!["a".into(), "b".into()], true)
        );
        assert_eq!(
            paginate(all.clone(), Some(2), Some("b")),
            (vec!["c".into(), "d".into()], false)
        );
        assert_eq!(paginate(all.clone(), None, Some("bb")).0.len(), 2);
        assert_eq!(paginate(all, Some(0), None), (vec![], false));
    }
}
