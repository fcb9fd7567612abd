//! The web pages under `/ui/`: browse what the viewer may pull, sign in,
//! see why a request was refused, manage personal tokens, storage at a
//! glance. Server-rendered HTML (maud templates compiled into the binary,
//! escaped by construction), one stylesheet, no JavaScript.
//!
//! Every page decides with the same policy chain as the API: a repository
//! the viewer may not pull is a 404 (like a missing one, so names stay
//! private), a delete from a page is decided as a `DELETE` would be. A
//! session is a cookie holding a token signed by the registry's token key
//! ([`session`]); every form carries a CSRF token bound to it.

mod browse;
mod decisions;
mod glance;
mod layout;
mod oidc;
pub mod session;
mod signin;
mod tokens;
mod visible;

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::Markup;

use crate::api::access::Caller;
use crate::api::SharedState;
use crate::identity::{Identity, Session};

pub use glance::Glance;

/// The UI's own state beside the API's.
pub struct Ui {
    pub(crate) sessions: Arc<session::SignedOut>,
    pub(crate) starts: session::SessionStarts,
    pub(crate) visible: visible::Visible,
    pub(crate) glance: Arc<Glance>,
    pub(crate) oidc: oidc::Clients,
    /// Held from counting a user's tokens to storing a new one, so that
    /// concurrent posts of the form cannot pass the cap together (on this
    /// replica; each replica adds at most one more).
    pub(crate) token_creation: tokio::sync::Mutex<()>,
}

#[derive(Clone)]
pub(crate) struct UiState {
    pub app: SharedState,
    pub ui: Arc<Ui>,
}

/// The routes under `/ui/`, or none when `ui.enabled = false`.
pub fn router(app: &SharedState) -> Option<Router> {
    if !app.config.ui.enabled {
        return None;
    }
    let glance = Glance::new(app.storage.clone());
    let sessions = Arc::new(session::SignedOut::new(app.storage.clone()));
    glance.spawn(Arc::clone(app));
    let ui = Arc::new(Ui {
        sessions,
        starts: Default::default(),
        visible: visible::Visible::new(app.storage.clone()),
        glance,
        oidc: oidc::Clients::from_config(&app.config),
        token_creation: tokio::sync::Mutex::new(()),
    });
    let state = UiState {
        app: Arc::clone(app),
        ui,
    };
    let routes = Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(browse::repositories))
        .route("/ui/r/{*path}", get(browse::show).post(browse::delete))
        .route("/ui/signin", get(signin::form).post(signin::submit))
        .route("/ui/signout", post(signin::signout))
        .route("/ui/oidc/start", get(oidc::start))
        .route("/ui/oidc/callback", get(oidc::callback))
        .route("/ui/decisions", get(decisions::page_route))
        .route("/ui/tokens", get(tokens::page_route).post(tokens::create))
        .route("/ui/tokens/{id}/revoke", post(tokens::revoke))
        .route("/ui/storage", get(glance::page_route))
        .route("/ui/storage/refresh", post(glance::refresh))
        .route("/ui/static/style.css", get(layout::stylesheet))
        // The API's router keeps the one fallback (/v2/...): unknown pages
        // under /ui/ are answered here.
        .route("/ui/{*rest}", axum::routing::any(not_found_page))
        .layer(axum::middleware::from_fn(secure_headers))
        .with_state(state);
    Some(routes)
}

/// Who is looking at a page: a signed-in user (with their session) or an
/// anonymous visitor, and from where.
#[derive(Debug, Clone)]
pub(crate) struct Viewer {
    pub identity: Identity,
    pub session: Option<Session>,
    pub ip: IpAddr,
    /// The session cookie was there but is no longer good: clear it.
    pub stale_cookie: bool,
}

impl Viewer {
    /// The viewer of a request: the session cookie's user, if it is good.
    pub async fn of(
        state: &UiState,
        headers: &HeaderMap,
        extensions: &axum::http::Extensions,
    ) -> Self {
        let ip = crate::api::client_ip(extensions);
        let mut viewer = Viewer {
            identity: Identity::anonymous(),
            session: None,
            ip,
            stale_cookie: false,
        };
        let Some(token) = session::cookie(headers, session::SESSION_COOKIE) else {
            return viewer;
        };
        match state.app.auth.session(token, ip).await {
            Ok(session) => match state.ui.sessions.status(&session.id).await {
                Some(false) => {
                    viewer.identity = session.login.identity.clone();
                    viewer.session = Some(session);
                }
                Some(true) => viewer.stale_cookie = true,
                // The store cannot tell now: anonymous for this page (fail
                // closed), the cookie kept for the next.
                None => {}
            },
            // Too many failed logins from this address (maybe someone
            // else's behind the same NAT): anonymous for now, still signed in.
            Err(crate::identity::AuthError::Throttled { .. }) => {}
            Err(_) => viewer.stale_cookie = true,
        }
        viewer
    }

    pub fn signed_in(&self) -> bool {
        self.session.is_some()
    }

    pub fn name(&self) -> &str {
        self.identity.subject.as_deref().unwrap_or("anonymous")
    }

    /// The CSRF token of this viewer's forms (empty when anonymous).
    pub fn csrf(&self) -> String {
        self.session
            .as_ref()
            .map(|s| session::csrf_token(&s.id))
            .unwrap_or_default()
    }

    /// Whether the viewer is in one of `ui.admin_groups`.
    pub fn is_admin(&self, state: &UiState) -> bool {
        self.signed_in()
            && state
                .app
                .config
                .ui
                .admin_groups
                .iter()
                .any(|g| self.identity.groups.contains(g))
    }

    /// The API's view of this viewer, for the chain and the handlers.
    pub fn caller(&self) -> Caller {
        Caller {
            identity: self.identity.clone(),
            ip: self.ip,
            credentials: self.signed_in(),
            realm: String::new(),
        }
    }
}

/// A rendered page with the status, the access log's user and (when the
/// session went bad) the cookie cleared.
pub(crate) fn page(viewer: &Viewer, status: StatusCode, markup: Markup) -> Response {
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response();
    finish(viewer, &mut response);
    response
}

/// Puts the access log's user on a response, and clears a stale cookie.
pub(crate) fn finish(viewer: &Viewer, response: &mut Response) {
    response
        .extensions_mut()
        .insert(crate::api::audit::Who::of(&viewer.identity));
    if viewer.stale_cookie {
        if let Ok(value) = HeaderValue::from_str(&session::clear_cookie(session::SESSION_COOKIE)) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
}

/// A 303 to `location` (a path on this site).
pub(crate) fn see_other(viewer: &Viewer, location: &str) -> Response {
    let mut response = Redirect::to(location).into_response();
    finish(viewer, &mut response);
    response
}

/// A page that only says what went wrong.
pub(crate) fn error_page(viewer: &Viewer, status: StatusCode, message: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    page(
        viewer,
        status,
        layout::page(
            viewer,
            title,
            maud::html! {
                h1 { (title) }
                p #error { (message) }
                p { a href="/ui/" { "Back to the repositories" } }
            },
        ),
    )
}

async fn not_found_page(State(state): State<UiState>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    let viewer = Viewer::of(&state, &parts.headers, &parts.extensions).await;
    error_page(&viewer, StatusCode::NOT_FOUND, "There is no such page.")
}

/// The longest form body read (a token's description is the longest field).
const MAX_FORM: usize = 16 * 1024;

/// A form post's fields (`application/x-www-form-urlencoded`, at most
/// [`MAX_FORM`] bytes), if it came from this site's page: not cross-site.
pub(crate) async fn read_form(
    parts: &axum::http::request::Parts,
    body: axum::body::Body,
) -> Option<crate::api::Query> {
    if !same_origin(&parts.method, &parts.headers) {
        return None;
    }
    let form_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
    if !form_type {
        return None;
    }
    let bytes = axum::body::to_bytes(body, MAX_FORM).await.ok()?;
    let text = std::str::from_utf8(&bytes).ok()?;
    Some(crate::api::Query::parse(Some(text)))
}

/// A form post of a signed-in viewer with its session's CSRF token.
pub(crate) async fn checked_form(
    viewer: &Viewer,
    parts: &axum::http::request::Parts,
    body: axum::body::Body,
) -> Option<crate::api::Query> {
    if !viewer.signed_in() {
        return None;
    }
    let form = read_form(parts, body).await?;
    session::tokens_match(form.get("csrf"), &viewer.csrf()).then_some(form)
}

/// What a form post without a good session, CSRF token or origin gets.
pub(crate) fn refused(viewer: &Viewer) -> Response {
    error_page(
        viewer,
        StatusCode::FORBIDDEN,
        "This form was not sent from this site's page by a signed-in user \
         (its session or security token is missing, expired or wrong). Reload the page and try again.",
    )
}

/// A sign-in page's address that comes back to `path` afterwards.
pub(crate) fn signin_to(path: &str) -> String {
    let back = percent_encoding::utf8_percent_encode(path, percent_encoding::NON_ALPHANUMERIC);
    format!("/ui/signin?return={back}")
}

/// Where to go after signing in: `raw` only if it is a path of this UI
/// (`/ui/...`, no scheme, host, `//`, backslash, dot segment or control
/// character, written plainly or percent-encoded: a browser reads
/// `/ui/%2e%2e/` as `/ui/../`), so the sign-in page cannot send anyone
/// elsewhere.
pub(crate) fn safe_return(raw: Option<&str>) -> String {
    let fallback = "/ui/".to_owned();
    let Some(raw) = raw else {
        return fallback;
    };
    let stays = |path: &str| {
        !path.contains("//")
            && !path.contains('\\')
            && !path.contains("/../")
            && !path.ends_with("/..")
            && !path.contains("/./")
            && !path.ends_with("/.")
    };
    let decoded = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
    let decoded_path = decoded.split('?').next().unwrap_or("");
    let ok = raw.len() <= 2048
        && raw.starts_with("/ui/")
        && stays(raw)
        && stays(decoded_path)
        && raw.bytes().all(|b| b.is_ascii_graphic())
        && !decoded.chars().any(char::is_control);
    if ok {
        raw.to_owned()
    } else {
        fallback
    }
}

/// Refuses a state-changing request another site made the browser send:
/// a cross-site `Sec-Fetch-Site`, or an `Origin` that is not this host.
/// (The CSRF token is checked as well; this is the second lock.)
pub(crate) fn same_origin(method: &Method, headers: &HeaderMap) -> bool {
    if method == Method::GET || method == Method::HEAD {
        return true;
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = header("sec-fetch-site") {
        if !matches!(site, "same-origin" | "none") {
            return false;
        }
    }
    match (header("origin"), header("host")) {
        (None, _) => true,
        (Some(origin), Some(host)) => {
            let origin_host = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            origin_host == Some(host)
        }
        (Some(_), None) => false,
    }
}

/// Security headers on every page: no script, no framing, no sniffing,
/// no caching of pages that hold names and tokens.
async fn secure_headers(request: Request, next: axum::middleware::Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let set = |headers: &mut HeaderMap, name: &'static str, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(
        headers,
        "content-security-policy",
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; \
         frame-ancestors 'none'; base-uri 'none'",
    );
    set(headers, "x-content-type-options", "nosniff");
    set(headers, "referrer-policy", "same-origin");
    set(headers, "x-frame-options", "DENY");
    if !headers.contains_key(header::CACHE_CONTROL) {
        set(headers, "cache-control", "no-store");
    }
    response
}

/// The registry's host as clients name it, for `docker pull` lines.
pub(crate) fn registry_host(state: &UiState, headers: &HeaderMap) -> String {
    if let Some(url) = &state.app.config.external_url {
        let host = url
            .trim_end_matches('/')
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        return host.to_owned();
    }
    headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| state.app.config.listen.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_paths_stay_on_this_ui() {
        for (raw, expected) in [
            (None, "/ui/"),
            (Some("/ui/r/library/postgres"), "/ui/r/library/postgres"),
            (Some("/ui/decisions?user=bob"), "/ui/decisions?user=bob"),
            (Some("https://evil.example/ui/"), "/ui/"),
            (Some("//evil.example/ui/"), "/ui/"),
            (Some("/ui//evil.example"), "/ui/"),
            (Some("/\\evil.example"), "/ui/"),
            (Some("/ui/\\\\evil.example"), "/ui/"),
            (Some("/ui/../v2/_catalog"), "/ui/"),
            (Some("/ui/r/a/.."), "/ui/"),
            (Some("javascript:alert(1)"), "/ui/"),
            (Some("/ui/\r\nLocation: https://evil.example"), "/ui/"),
            (Some("/ui/ x"), "/ui/"),
            (Some("/v2/"), "/ui/"),
            (Some(""), "/ui/"),
            (Some("/uix"), "/ui/"),
            (Some("/ui/%2e%2e/v2/_catalog"), "/ui/"),
            (Some("/ui/%2E%2E/v2/_catalog"), "/ui/"),
            (Some("/ui/.%2e/v2/_catalog"), "/ui/"),
            (Some("/ui/r/%2e"), "/ui/"),
            (Some("/ui/%2f%2fevil.example"), "/ui/"),
            (Some("/ui/%5cevil.example"), "/ui/"),
            (Some("/ui/%0d%0aSet-Cookie:x"), "/ui/"),
            (Some("/ui/?q=%00"), "/ui/"),
            (Some("/ui/?q=a%20b"), "/ui/?q=a%20b"),
            (Some("/ui/?q=a%2Fb"), "/ui/?q=a%2Fb"),
            (Some("/ui/r/a/."), "/ui/"),
        ] {
            assert_eq!(safe_return(raw), expected, "{raw:?}");
        }
        assert_eq!(
            safe_return(Some(&format!("/ui/{}", "a".repeat(3000)))),
            "/ui/"
        );
    }

    #[test]
    fn cross_site_posts_are_refused() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            h
        };
        let post = Method::POST;
        assert!(same_origin(&post, &headers(&[("host", "cr.local")])));
        assert!(same_origin(
            &post,
            &headers(&[("host", "cr.local"), ("origin", "https://cr.local")])
        ));
        assert!(!same_origin(
            &post,
            &headers(&[("host", "cr.local"), ("origin", "https://evil.example")])
        ));
        assert!(!same_origin(
            &post,
            &headers(&[("host", "cr.local"), ("origin", "null")])
        ));
        assert!(!same_origin(
            &post,
            &headers(&[("host", "cr.local"), ("sec-fetch-site", "cross-site")])
        ));
        assert!(!same_origin(
            &post,
            &headers(&[("host", "cr.local"), ("sec-fetch-site", "same-site")])
        ));
        assert!(same_origin(
            &Method::GET,
            &headers(&[("host", "cr.local"), ("sec-fetch-site", "cross-site")])
        ));
    }
}
