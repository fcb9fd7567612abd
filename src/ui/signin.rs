//! Signing in with a user name and password (the htpasswd accounts),
//! through the same login throttle as `docker login`, and signing out.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use maud::html;

use super::session::{self, SESSION_COOKIE, SIGNIN_COOKIE};
use super::{layout, page, read_form, safe_return, see_other, UiState, Viewer};
use crate::api::Query;
use crate::identity::jwt;
use crate::identity::AuthError;

/// Whether cookies must only travel over https.
pub(crate) fn secure(state: &UiState) -> bool {
    let config = &state.app.config;
    config.tls.cert.is_some()
        || config
            .external_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"))
}

/// How long the sign-in form's CSRF cookie lasts.
const SIGNIN_FORM_SECONDS: i64 = 1800;

/// `GET /ui/signin`: the form (and the OpenID Connect buttons).
pub async fn form(State(state): State<UiState>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    let viewer = Viewer::of(&state, &parts.headers, &parts.extensions).await;
    let query = Query::parse(parts.uri.query());
    let back = safe_return(query.get("return"));
    if viewer.signed_in() {
        return see_other(&viewer, &back);
    }
    let existing = session::cookie(&parts.headers, SIGNIN_COOKIE);
    form_page(&state, &viewer, existing, &back, None, StatusCode::OK)
}

fn form_page(
    state: &UiState,
    viewer: &Viewer,
    existing: Option<&str>,
    back: &str,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    // One value per browser (another tab's form stays good), made anew
    // when the cookie is missing or not one of ours.
    let nonce = match existing {
        Some(value) if value.len() == 32 && value.bytes().all(|b| b.is_ascii_hexdigit()) => {
            value.to_owned()
        }
        _ => jwt::random_bytes(16).map(hex::encode).unwrap_or_default(),
    };
    let accounts = state.app.auth.enabled();
    let passwords = state.app.config.auth.htpasswd.is_some();
    let issuers = state.ui.oidc.buttons();
    let body = html! {
        h1 { "Sign in" }
        @if !accounts {
            p.notice { "This registry has no accounts (no htpasswd file or OpenID issuer is configured): everyone sees what anonymous callers may pull." }
        } @else {
            div.signin {
                @if let Some(error) = error { p #error.error { (error) } }
                @if passwords {
                    form #signin method="post" action="/ui/signin" {
                        input type="hidden" name="csrf" value=(nonce);
                        input type="hidden" name="return" value=(back);
                        label for="user" { "User name" }
                        input #user type="text" name="user" autocomplete="username" required autofocus;
                        label for="password" { "Password" }
                        input #password type="password" name="password" autocomplete="current-password" required;
                        button #signin-submit type="submit" { "Sign in" }
                    }
                }
                @for (index, label) in &issuers {
                    p {
                        a.signin-oidc href=(format!("/ui/oidc/start?issuer={index}&return={}", percent_encoding::utf8_percent_encode(back, percent_encoding::NON_ALPHANUMERIC))) {
                            "Sign in with " (label)
                        }
                    }
                }
                p.muted { "Robots and CI use tokens with " code { "docker login" } ", not this page." }
            }
        }
    };
    let mut response = page(viewer, status, layout::page(viewer, "Sign in", body));
    let cookie = session::set_cookie(SIGNIN_COOKIE, &nonce, SIGNIN_FORM_SECONDS, secure(state));
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

/// `POST /ui/signin`.
pub async fn submit(State(state): State<UiState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let viewer = Viewer::of(&state, &parts.headers, &parts.extensions).await;
    let Some(form) = read_form(&parts, body).await else {
        return super::refused(&viewer);
    };
    let expected = session::cookie(&parts.headers, SIGNIN_COOKIE).unwrap_or("");
    if !session::tokens_match(form.get("csrf"), expected) {
        return super::refused(&viewer);
    }
    let back = safe_return(form.get("return"));
    let user = form.get("user").unwrap_or("");
    let password = form.get("password").unwrap_or("");
    if user.is_empty() || password.is_empty() {
        return form_page(
            &state,
            &viewer,
            Some(expected),
            &back,
            Some("Give a user name and a password."),
            StatusCode::UNAUTHORIZED,
        );
    }
    // The form is for people's passwords; tokens sign in `docker login`.
    let token_shaped = crate::identity::robots::parse(password).is_some()
        || (password.starts_with("eyJ") && password.matches('.').count() == 2);
    if token_shaped || state.app.config.auth.htpasswd.is_none() {
        return form_page(
            &state,
            &viewer,
            Some(expected),
            &back,
            Some("Sign in with your user name and password."),
            StatusCode::UNAUTHORIZED,
        );
    }
    let login = match state.app.auth.login(user, password, viewer.ip).await {
        Ok(login) => login,
        Err(AuthError::Throttled { retry_after }) => {
            let mut response = form_page(
                &state,
                &viewer,
                Some(expected),
                &back,
                Some(&format!(
                    "Too many failed sign-ins; try again in {} s.",
                    retry_after.as_secs().max(1)
                )),
                StatusCode::TOO_MANY_REQUESTS,
            );
            if let Ok(value) = HeaderValue::from_str(&retry_after.as_secs().max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            return response;
        }
        Err(_) => {
            return form_page(
                &state,
                &viewer,
                Some(expected),
                &back,
                Some("Wrong user name or password."),
                StatusCode::UNAUTHORIZED,
            )
        }
    };
    start_session(&state, &viewer, &login, &back)
}

/// Signs `login` in: the session cookie, then on to `back`.
pub(crate) fn start_session(
    state: &UiState,
    viewer: &Viewer,
    login: &crate::identity::Login,
    back: &str,
) -> Response {
    let user = login.identity.subject.as_deref().unwrap_or("");
    if !state.ui.starts.admit(user) {
        return super::error_page(
            viewer,
            StatusCode::TOO_MANY_REQUESTS,
            "Too many sign-ins for this user in the last minutes; try again later.",
        );
    }
    let session = match state
        .app
        .auth
        .issue_session(login, state.app.config.ui.session_ttl)
    {
        Ok(session) => session,
        // The credential ends within a minute (an ID token about to expire).
        Err(AuthError::BadToken(why)) => {
            return super::error_page(
                viewer,
                StatusCode::BAD_REQUEST,
                &format!("Cannot start a session: {why}"),
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, "web UI: cannot start a session");
            return super::error_page(
                viewer,
                StatusCode::SERVICE_UNAVAILABLE,
                "Cannot start a session right now.",
            );
        }
    };
    tracing::info!(
        target: "portcullis::auth",
        user = login.identity.subject.as_deref().unwrap_or(""),
        source = %login.source,
        client = %viewer.ip,
        "web UI sign-in"
    );
    let signed_in = Viewer {
        identity: login.identity.clone(),
        session: Some(session.clone()),
        ip: viewer.ip,
        stale_cookie: false,
    };
    let mut response = see_other(&signed_in, back);
    let max_age = session.expires.saturating_sub(jwt::now()).max(0);
    let token = session.token.as_deref().unwrap_or("");
    for cookie in [
        session::set_cookie(SESSION_COOKIE, token, max_age, secure(state)),
        session::clear_cookie(SIGNIN_COOKIE),
    ] {
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

/// `POST /ui/signout`: the session ends on every replica.
pub async fn signout(State(state): State<UiState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let viewer = Viewer::of(&state, &parts.headers, &parts.extensions).await;
    if super::checked_form(&viewer, &parts, body).await.is_none() {
        return super::refused(&viewer);
    }
    if let Some(session) = &viewer.session {
        if let Err(e) = state
            .ui
            .sessions
            .sign_out(&session.id, session.expires)
            .await
        {
            tracing::warn!(error = %e, "web UI: cannot record a sign-out");
            return super::error_page(
                &viewer,
                StatusCode::SERVICE_UNAVAILABLE,
                "Cannot sign out right now; try again.",
            );
        }
    }
    let anonymous = Viewer {
        identity: crate::identity::Identity::anonymous(),
        session: None,
        ip: viewer.ip,
        stale_cookie: true,
    };
    see_other(&anonymous, "/ui/")
}
