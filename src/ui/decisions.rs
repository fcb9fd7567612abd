//! "Why was my push refused?": the policy chain as loaded and the recent
//! decisions (the decision log's in-memory ring of the replica serving the
//! page) for members of `ui.admin_groups`; everyone else signed in sees
//! their own recent refusals.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::html;

use super::layout::{self, short_digest};
use super::{page, see_other, signin_to, UiState, Viewer};
use crate::api::Query;
use crate::policy::decisions::Decision;
use crate::policy::request::{JsonReference, Resource};

/// The most decisions a page shows.
const SHOWN: usize = 200;

/// The filters of the page, each at most this long.
const MAX_FILTER: usize = 256;

struct Filters {
    repository: String,
    user: String,
    policy: String,
    outcome: String,
}

impl Filters {
    fn of(query: &Query) -> Self {
        let get = |key: &str| {
            query
                .get(key)
                .unwrap_or("")
                .trim()
                .chars()
                .take(MAX_FILTER)
                .collect::<String>()
        };
        Self {
            repository: get("repository"),
            user: get("user"),
            policy: get("policy"),
            outcome: get("outcome"),
        }
    }

    fn keeps(&self, d: &Decision) -> bool {
        let subject = d.request.identity.subject.as_deref().unwrap_or("anonymous");
        (self.repository.is_empty() || d.request.repository.contains(&self.repository))
            && (self.user.is_empty() || subject == self.user)
            && (self.policy.is_empty()
                || d.judgement.policy.as_deref() == Some(self.policy.as_str())
                || d.audit.iter().any(|a| a.policy == self.policy))
            && (self.outcome.is_empty() || outcome(d) == self.outcome)
    }
}

/// `allow`, `deny`, `failed`, `unavailable`, or `audit-deny` for an allow
/// an audit-mode policy would have refused.
fn outcome(d: &Decision) -> &str {
    if d.judgement.outcome == "allow" && !d.audit.is_empty() {
        "audit-deny"
    } else {
        &d.judgement.outcome
    }
}

/// A refusal of a request `me` made, as a non-admin sees it. Not the
/// catalog's: `/v2/_catalog` decides each repository in the store for the
/// caller (leaving out what they may not list), so its refusals would name
/// on this page every repository kept from them.
fn own_refusal(d: &Decision, me: Option<&str>) -> bool {
    d.judgement.outcome != "allow"
        && d.request.resource != Resource::Catalog
        && me.is_some()
        && d.request.identity.subject.as_deref() == me
}

fn action(d: &Decision) -> String {
    serde_json::to_value(d.request.action)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn reference(d: &Decision) -> String {
    match &d.request.reference {
        Some(JsonReference::Tag(tag)) => format!(":{tag}"),
        Some(JsonReference::Digest(digest)) => format!("@{}", short_digest(digest)),
        None => String::new(),
    }
}

/// `GET /ui/decisions`.
pub async fn page_handler(state: &UiState, viewer: &Viewer, query: &Query) -> Response {
    let admin = viewer.is_admin(state);
    let filters = Filters::of(query);
    let log = state.app.policies.decisions();
    let decisions: Vec<_> = match &log {
        Some(log) if admin => log.recent(SHOWN, |d| filters.keeps(d)),
        Some(log) => {
            let me = viewer.identity.subject.as_deref();
            log.recent(SHOWN, |d| own_refusal(d, me))
        }
        None => Vec::new(),
    };
    let ring = state.app.config.policy.decision_log.ring;
    let records_allows =
        state.app.config.policy.decision_log.record == crate::config::DecisionRecord::All;
    let s3 = matches!(state.app.storage, crate::storage::Storage::S3(_));
    let chain = state.app.policies.current().described();
    let status = state.app.policies.status();
    let title = if admin { "Decisions" } else { "Your refusals" };
    let body = html! {
        h1 { (title) }
        @if admin {
            h2 { "Policy chain" }
            p #last-reload.muted {
                "Loaded " (layout::system_time(status.loaded)) "."
                @if let Some((at, result)) = &status.last_attempt {
                    " Last reload " (layout::system_time(*at)) ": "
                    @match result {
                        Ok(()) => span.outcome-allow { "loaded" },
                        Err(e) => span.outcome-deny { "refused, the chain above stays in force: " (e) },
                    }
                }
            }
            table #chain {
                thead { tr { th { "#" } th { "Name" } th { "Module" } th { "Digest" } th { "Scope" } th { "Mode" } } }
                tbody {
                    @for (i, p) in chain.iter().enumerate() {
                        tr.policy {
                            td { (i + 1) }
                            td.name { (p.name) }
                            td.module.mono { (p.module) " " span.muted { "(contract " (p.contract) ")" } }
                            td.digest.mono title=(p.digest) { (short_digest(&p.digest)) }
                            td.scope {
                                @match &p.actions { Some(a) => (a.iter().filter_map(|a| serde_json::to_value(a).ok()).filter_map(|v| v.as_str().map(str::to_owned)).collect::<Vec<_>>().join(", ")), None => "every action" }
                                " on "
                                @match &p.repositories { Some(r) => span.mono { (r.join(", ")) }, None => "every repository" }
                            }
                            td.mode { (format!("{:?}", p.mode).to_lowercase()) }
                        }
                    }
                }
            }
            h2 { "Recent decisions" }
            form #filter.filters method="get" action="/ui/decisions" {
                input type="text" name="repository" value=(filters.repository) placeholder="repository contains" aria-label="Repository";
                input type="text" name="user" value=(filters.user) placeholder="user (or anonymous)" aria-label="User";
                select name="policy" aria-label="Policy" {
                    option value="" { "any policy" }
                    @for p in &chain { option value=(p.name) selected[p.name == filters.policy] { (p.name) } }
                }
                select name="outcome" aria-label="Outcome" {
                    @for o in ["", "deny", "allow", "audit-deny", "failed", "unavailable"] {
                        option value=(o) selected[o == filters.outcome] { @if o.is_empty() { "any outcome" } @else { (o) } }
                    }
                }
                button type="submit" { "Filter" }
            }
        }
        p.muted {
            "The last " (ring) " decisions this replica made"
            @if !records_allows { " (refusals only: set " code { "policy.decision_log.record = \"all\"" } " to keep allows too)" }
            ", newest first"
            @if s3 { "; other replicas keep their own: a request another replica served is in its log, not here" }
            "."
        }
        @if log.is_none() || ring == 0 {
            p.notice { "The decision log keeps no decisions in memory (" code { "policy.decision_log.ring = 0" } ")." }
        } @else if decisions.is_empty() {
            p.muted { "No decisions to show." }
        } @else {
            table #decisions {
                thead { tr { th { "Time" } th { "User" } th { "Action" } th { "Repository" } th { "Outcome" } th { "Policy" } th { "Reason" } th { "Client" } } }
                tbody {
                    @for d in &decisions {
                        tr.decision {
                            td.time { (d.time.get(..19).unwrap_or(&d.time).replace('T', " ")) }
                            td.user { (d.request.identity.subject.as_deref().unwrap_or("anonymous")) }
                            td.action { (action(d)) }
                            td.repository.mono { (d.request.repository) (reference(d)) }
                            td class=(format!("outcome outcome-{}", outcome(d))) { (outcome(d)) }
                            td.policy {
                                (d.judgement.policy.as_deref().unwrap_or(""))
                                @for a in &d.audit { " " span.muted { "(audit: " (a.policy) ")" } }
                            }
                            td.reason {
                                (d.judgement.reason.as_deref().unwrap_or(""))
                                @for a in &d.audit { " " span.muted { (a.reason) } }
                            }
                            td.mono { (d.request.client_ip) }
                        }
                    }
                }
            }
        }
    };
    page(viewer, StatusCode::OK, layout::page(viewer, title, body))
}

pub async fn page_route(State(state): State<UiState>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    let viewer = Viewer::of(&state, &parts.headers, &parts.extensions).await;
    if !viewer.signed_in() {
        let back = match parts.uri.query() {
            Some(q) => format!("/ui/decisions?{q}"),
            None => "/ui/decisions".into(),
        };
        return see_other(&viewer, &signin_to(&back));
    }
    let query = Query::parse(parts.uri.query());
    page_handler(&state, &viewer, &query).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(
        outcome: &str,
        resource: &str,
        repository: &str,
        subject: Option<&str>,
    ) -> Decision {
        serde_json::from_value(serde_json::json!({
            "time": "2026-12-06T17:00:00Z",
            "outcome": outcome,
            "policy": "p",
            "micros": 1,
            "request": {
                "action": if resource == "catalog" { "list" } else { "pull" },
                "resource": resource,
                "repository": repository,
                "identity": { "subject": subject, "groups": [] },
            },
        }))
        .unwrap()
    }

    #[test]
    fn a_user_sees_their_own_refusals_not_the_catalogs() {
        let me = Some("alice");
        assert!(own_refusal(&decision("deny", "manifest", "app", me), me));
        assert!(own_refusal(&decision("failed", "blob", "app", me), me));
        // The catalog's per-repository refusals would name hidden repositories.
        assert!(!own_refusal(
            &decision("deny", "catalog", "secret/plans", me),
            me
        ));
        assert!(!own_refusal(&decision("allow", "manifest", "app", me), me));
        assert!(!own_refusal(
            &decision("deny", "manifest", "app", Some("bob")),
            me
        ));
        assert!(!own_refusal(&decision("deny", "manifest", "app", None), me));
        assert!(!own_refusal(
            &decision("deny", "manifest", "app", None),
            None
        ));
    }
}
