//! A signed-in user's own personal tokens (the robot tokens of
//! `portcullis token`, made for themselves): create one (its secret shown
//! once, with the `docker login` line), list them with their last use,
//! revoke one. Nobody sees or revokes another user's tokens here.

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{html, Markup};

use super::layout::{self, unix_time};
use super::{
    checked_form, error_page, page, refused, registry_host, see_other, signin_to, UiState, Viewer,
};
use crate::identity::jwt;
use crate::identity::robots::{self, RobotToken};

/// Lifetimes a page may give a token, in days.
const DEFAULT_DAYS: i64 = 90;
const MAX_DAYS: i64 = 365;
const MAX_DESCRIPTION: usize = 200;
/// The most tokens one user may hold (each is a record every replica reads).
const MAX_TOKENS_PER_USER: usize = 50;

async fn own_tokens(state: &UiState, viewer: &Viewer) -> Result<Vec<RobotToken>, Response> {
    let user = viewer.name();
    match robots::list(&state.app.storage).await {
        Ok(mut all) => {
            all.retain(|t| t.user == user);
            all.sort_by_key(|t| std::cmp::Reverse(t.created));
            Ok(all)
        }
        Err(e) => {
            tracing::warn!(error = %e, "web UI: cannot list tokens");
            Err(error_page(
                viewer,
                StatusCode::SERVICE_UNAVAILABLE,
                "The tokens cannot be read right now; try again.",
            ))
        }
    }
}

/// Whether this session may make tokens: one that came from a password or
/// an OpenID issuer, not from a token (a leaked token must not mint more).
fn may_create(viewer: &Viewer) -> bool {
    viewer
        .session
        .as_ref()
        .is_some_and(|s| s.login.source == "htpasswd" || s.login.source.starts_with("oidc:"))
}

async fn tokens_page(state: &UiState, viewer: &Viewer, created: Option<Markup>) -> Response {
    let tokens = match own_tokens(state, viewer).await {
        Ok(tokens) => tokens,
        Err(response) => return response,
    };
    let mut last_used = Vec::with_capacity(tokens.len());
    for t in &tokens {
        last_used.push(robots::last_used(&state.app.storage, &t.id).await);
    }
    let now = jwt::now();
    let csrf = viewer.csrf();
    let body = html! {
        h1 { "Personal tokens" }
        @if let Some(created) = created { (created) }
        p.muted { "A token signs in " code { "docker login" } ", podman, skopeo and CI as you, with your groups, until it expires or you revoke it. It is stored hashed: its secret is shown once." }
        @if tokens.is_empty() {
            p.muted { "You have no tokens." }
        } @else {
            table #tokens {
                thead { tr { th { "Id" } th { "Description" } th { "Created" } th { "Expires" } th { "Last used" } th {} } }
                tbody {
                    @for (t, used) in tokens.iter().zip(&last_used) {
                        tr.token {
                            td.token-id.mono { (t.id) }
                            td.description { (t.description) }
                            td { (unix_time(t.created)) }
                            td.expires {
                                @match t.expires { Some(e) => { (unix_time(e)) @if e <= now { " " span.outcome-deny { "expired" } } }, None => "never" }
                            }
                            td.last-used { @match used { Some(u) => (unix_time(*u)), None => "never" } }
                            td {
                                form.revoke-token.inline method="post" action=(format!("/ui/tokens/{}/revoke", t.id)) {
                                    input type="hidden" name="csrf" value=(csrf);
                                    button.danger type="submit" { "Revoke" }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "New token" }
        @if may_create(viewer) {
            form #create-token.filters method="post" action="/ui/tokens" {
                input type="hidden" name="csrf" value=(csrf);
                input type="text" name="description" maxlength=(MAX_DESCRIPTION) placeholder="What it is for (CI of app-x)" aria-label="Description";
                label { "expires in " input type="number" name="expires_days" min="1" max=(MAX_DAYS) value=(DEFAULT_DAYS) aria-label="Days"; " days" }
                button #create-token-submit type="submit" { "Create token" }
            }
        } @else {
            p.notice { "You signed in with a token: sign in with your password or identity provider to make new tokens." }
        }
    };
    page(viewer, StatusCode::OK, layout::page(viewer, "Tokens", body))
}

fn signed_in_or_redirect(viewer: &Viewer) -> Option<Response> {
    (!viewer.signed_in()).then(|| see_other(viewer, &signin_to("/ui/tokens")))
}

/// `GET /ui/tokens`.
pub async fn page_route(State(state): State<UiState>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    let viewer = Viewer::of(&state, &parts.headers, &parts.extensions).await;
    if let Some(response) = signed_in_or_redirect(&viewer) {
        return response;
    }
    tokens_page(&state, &viewer, None).await
}

/// `POST /ui/tokens`: a new token for the viewer.
pub async fn create(State(state): State<UiState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let viewer = Viewer::of(&state, &parts.headers, &parts.extensions).await;
    let Some(form) = checked_form(&viewer, &parts, body).await else {
        return refused(&viewer);
    };
    if !may_create(&viewer) {
        return error_page(
            &viewer,
            StatusCode::FORBIDDEN,
            "A session that came from a token cannot make tokens.",
        );
    }
    let days = match form.get("expires_days").map(str::trim) {
        None | Some("") => DEFAULT_DAYS,
        Some(raw) => match raw.parse::<i64>() {
            Ok(d) if (1..=MAX_DAYS).contains(&d) => d,
            _ => {
                return error_page(
                    &viewer,
                    StatusCode::BAD_REQUEST,
                    &format!("A token lasts 1 to {MAX_DAYS} days."),
                )
            }
        },
    };
    let description: String = form
        .get("description")
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_DESCRIPTION)
        .collect();
    let existing = match own_tokens(&state, &viewer).await {
        Ok(tokens) => tokens,
        Err(response) => return response,
    };
    if existing.len() >= MAX_TOKENS_PER_USER {
        return error_page(
            &viewer,
            StatusCode::CONFLICT,
            &format!("You have {MAX_TOKENS_PER_USER} tokens: revoke one first."),
        );
    }
    let Some(session) = &viewer.session else {
        return refused(&viewer);
    };
    // A password user's token takes their groups from `[groups]` at each
    // use; an OpenID user's keeps the groups they have now (the issuer is
    // not asked again when the token is used).
    let groups = session
        .login
        .source
        .starts_with("oidc:")
        .then(|| viewer.identity.groups.clone());
    let expires = Some(jwt::now().saturating_add(days.saturating_mul(86_400)));
    let user = viewer.name().to_owned();
    let (record, secret) =
        match robots::create(&state.app.storage, &user, groups, expires, &description).await {
            Ok(made) => made,
            Err(e) => {
                tracing::warn!(error = %e, "web UI: cannot create a token");
                return error_page(
                    &viewer,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The token cannot be stored right now; try again.",
                );
            }
        };
    if let Err(e) = state.app.auth.robots().refresh().await {
        tracing::warn!(error = %e, "web UI: cannot re-read the tokens");
    }
    tracing::info!(target: "portcullis::auth", user, id = %record.id, days, "personal token created in the web UI");
    let host = registry_host(&state, &parts.headers);
    let created = html! {
        div.notice #token-created {
            p { "Your new token " code { (record.id) } " (copy it now: it is not shown again):" }
            pre { code #new-token { (secret) } }
            p { "Sign in with it:" }
            pre { code #docker-login { "docker login " (host) " -u " (user) " --password-stdin" } }
            p.muted { "and paste the token as the password (or pipe it in)." }
        }
    };
    tokens_page(&state, &viewer, Some(created)).await
}

/// `POST /ui/tokens/<id>/revoke`: only the viewer's own.
pub async fn revoke(
    State(state): State<UiState>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let viewer = Viewer::of(&state, &parts.headers, &parts.extensions).await;
    if checked_form(&viewer, &parts, body).await.is_none() {
        return refused(&viewer);
    }
    let tokens = match own_tokens(&state, &viewer).await {
        Ok(tokens) => tokens,
        Err(response) => return response,
    };
    // Another user's token (or none): the same answer, so ids stay private.
    if !tokens.iter().any(|t| t.id == id) {
        return error_page(&viewer, StatusCode::NOT_FOUND, "You have no such token.");
    }
    if let Err(e) = robots::revoke(&state.app.storage, &id).await {
        tracing::warn!(error = %e, "web UI: cannot revoke a token");
        return error_page(
            &viewer,
            StatusCode::SERVICE_UNAVAILABLE,
            "The token cannot be revoked right now; try again.",
        );
    }
    if let Err(e) = state.app.auth.robots().refresh().await {
        tracing::warn!(error = %e, "web UI: cannot re-read the tokens");
    }
    tracing::info!(target: "portcullis::auth", user = viewer.name(), id, "personal token revoked in the web UI");
    see_other(&viewer, "/ui/tokens")
}
