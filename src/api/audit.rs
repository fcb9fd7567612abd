//! The access log: one line and one metrics sample per request, naming who
//! asked (the user, or `anonymous`), from where (the real client, through
//! `trusted_proxies`), what came of it, and for a 401 or 403 which policy
//! refused and why. "Who pushed what, and who was refused" is answered here;
//! failed logins have a line of their own from `identity` (target
//! `portcullis::auth`, "login failed"), with the name tried and never the
//! secret.
//!
//! Bytes are counted as they pass: the request body's bytes as the handler
//! reads them (a chunked upload has no `Content-Length`), the response's from
//! its length, and none for the answer to a HEAD.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::BodyExt;

use super::route::Route;
use super::SharedState;
use crate::network::{ClientAddr, ProxiedSource};

/// The identity a request was served as, put on its response by the handler.
#[derive(Debug, Clone)]
pub struct Who(pub String);

impl Who {
    pub fn of(identity: &crate::identity::Identity) -> Self {
        Who(identity
            .subject
            .clone()
            .unwrap_or_else(|| "anonymous".into()))
    }
}

/// Why a request was refused (401, 403): the deciding policy, if a policy
/// decided, and the message the client got. Put on the response by
/// [`super::error::ApiError`].
#[derive(Debug, Clone)]
pub struct Refusal {
    pub policy: Option<String>,
    pub reason: String,
}

/// Resolves the real client, counts the body, logs the line.
pub async fn access_log(
    State(state): State<SharedState>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let peer = request
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
    let proxied = request.extensions().get::<ProxiedSource>().copied();
    let client = state
        .trusted_proxies
        .client(peer, proxied, request.headers());
    request.extensions_mut().insert(client);
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let sends_body = declared > 0 || request.headers().contains_key(header::TRANSFER_ENCODING);
    let http1 = request.version() < axum::http::Version::HTTP_2;
    let received = Arc::new(AtomicU64::new(0));
    let request = {
        let received = Arc::clone(&received);
        request.map(move |body| {
            Body::new(body.map_frame(move |frame| {
                if let Some(data) = frame.data_ref() {
                    received.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                frame
            }))
        })
    };
    let mut response = next.run(request).await;
    response.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    let status = response.status();
    // An error to a request with a body may come before the body was read to
    // its end (a full disk mid-upload, a refused chunk): the connection then
    // cannot carry another request, and saying so keeps a client from
    // sending its next request on a connection that is about to close.
    if http1 && sends_body && (status.is_client_error() || status.is_server_error()) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let bytes_in = received.load(Ordering::Relaxed);
    let bytes_out = if method == Method::HEAD {
        0
    } else {
        response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .or_else(|| axum::body::HttpBody::size_hint(response.body()).exact())
            .unwrap_or(0)
    };
    let route = match path.as_str() {
        "/healthz" | "/readyz" | "/metrics" | "/token" => path.trim_start_matches('/'),
        p if p == "/ui" || p.starts_with("/ui/") => "ui",
        _ => Route::parse(&path).map(|r| r.kind()).unwrap_or("invalid"),
    };
    let elapsed = started.elapsed();
    state.metrics.record_request(
        route,
        method.as_str(),
        status.as_u16(),
        bytes_in,
        bytes_out,
        elapsed,
    );
    let user = response
        .extensions()
        .get::<Who>()
        .map_or("anonymous", |w| w.0.as_str());
    let ClientAddr { ip: client, .. } = client;
    let duration_ms = elapsed.as_secs_f64() * 1000.0;
    match response.extensions().get::<Refusal>() {
        Some(refusal) => tracing::info!(
            target: "portcullis::access",
            method = method.as_str(),
            path,
            status = status.as_u16(),
            user,
            client = %client,
            policy = refusal.policy.as_deref().unwrap_or("-"),
            reason = refusal.reason.as_str(),
            bytes_in,
            bytes_out,
            duration_ms,
            "request"
        ),
        None => tracing::info!(
            target: "portcullis::access",
            method = method.as_str(),
            path,
            status = status.as_u16(),
            user,
            client = %client,
            bytes_in,
            bytes_out,
            duration_ms,
            "request"
        ),
    }
    response
}
