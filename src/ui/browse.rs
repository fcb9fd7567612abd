//! Browsing: the repositories a viewer may see, a repository's tags, and
//! one manifest (an image's config and layers, an index's platforms, its
//! referrers and whether a signature policy verifies it).
//!
//! Addresses: `/ui/r/<name>` is a repository, `/ui/r/<name>/:<tag>` and
//! `/ui/r/<name>/@<digest>` a manifest (`:` and `@` cannot be in a name).

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{html, Markup};
use portcullis_patterns::PatternList;

use super::layout::{self, bytes, short_digest};
use super::{error_page, page, registry_host, see_other, signin_to, UiState, Viewer};
use crate::api::access::would_allow;
use crate::api::Query;
use crate::config::{Action, PolicyMode};
use crate::policy::bindings::portcullis::policy::types as wit;
use crate::policy::request::Resource;
use crate::policy::{Access, Verdict};
use crate::reference::{Digest, Reference, RepositoryName, Tag};
use crate::storage::StorageError;

/// Repositories on a page, and the most a `n` may ask for.
const PAGE: usize = 50;
const MAX_PAGE: usize = 200;

/// What a `/ui/r/...` address names.
#[derive(Debug, PartialEq)]
enum Target {
    Repository(RepositoryName),
    Manifest(RepositoryName, Reference),
}

fn parse_target(path: &str) -> Option<Target> {
    let path = path.strip_suffix('/').unwrap_or(path);
    if let Some((name, last)) = path.rsplit_once('/') {
        let reference = if let Some(tag) = last.strip_prefix(':') {
            Some(Reference::Tag(Tag::parse(tag).ok()?))
        } else if let Some(digest) = last.strip_prefix('@') {
            Some(Reference::Digest(Digest::parse(digest).ok()?))
        } else {
            None
        };
        if let Some(reference) = reference {
            let name = RepositoryName::parse(name).ok()?;
            return Some(Target::Manifest(name, reference));
        }
    }
    RepositoryName::parse(path).ok().map(Target::Repository)
}

pub(crate) fn repository_path(name: &str) -> String {
    format!("/ui/r/{name}")
}

fn manifest_path(name: &str, reference: &Reference) -> String {
    match reference {
        Reference::Tag(tag) => format!("/ui/r/{name}/:{tag}"),
        Reference::Digest(digest) => format!("/ui/r/{name}/@{digest}"),
    }
}

/// `/ui/`: the repositories the viewer may see, searched and paged.
pub async fn repositories(State(state): State<UiState>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    let viewer = Viewer::of(&state, &parts.headers, &parts.extensions).await;
    let query = Query::parse(parts.uri.query());
    let search = query
        .get("q")
        .unwrap_or("")
        .chars()
        .take(128)
        .collect::<String>();
    let after = query
        .get("after")
        .filter(|a| !a.is_empty() && a.len() <= 256);
    let n = query
        .get("n")
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(PAGE)
        .clamp(1, MAX_PAGE);
    let listed = match state
        .ui
        .visible
        .page(&state.app, &viewer, &search, after, n)
        .await
    {
        Ok(listed) => listed,
        Err(e) => return storage_error(&viewer, e),
    };
    let next = listed.next.as_ref().map(|last| {
        let enc = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        format!("/ui/?q={}&after={}&n={n}", enc(&search), enc(last))
    });
    let body = html! {
        h1 { "Repositories" }
        form #search method="get" action="/ui/" {
            input type="search" name="q" value=(search) placeholder="Search repositories" aria-label="Search repositories";
            button type="submit" { "Search" }
        }
        @if listed.names.is_empty() && listed.more {
            p.muted { "No repository to show among the first ones checked." }
        } @else if listed.names.is_empty() {
            p.muted {
                @if search.is_empty() { "No repositories to show." } @else { "No repository matches." }
                @if !viewer.signed_in() { " " a href=(signin_to("/ui/")) { "Sign in" } " to see more." }
            }
        } @else {
            table #repositories {
                thead { tr { th { "Repository" } } }
                tbody {
                    @for name in &listed.names {
                        tr.repository {
                            td { a.repository-link href=(repository_path(name)) { (name) } }
                        }
                    }
                }
            }
        }
        @if let Some(next) = &next {
            p.pager {
                a #next-page href=(next) { @if listed.more { "Check more repositories" } @else { "Next page" } }
            }
        }
    };
    page(
        &viewer,
        StatusCode::OK,
        layout::page(&viewer, "Repositories", body),
    )
}

/// `GET /ui/r/...`: a repository's tags, or a manifest.
pub async fn show(
    State(state): State<UiState>,
    Path(path): Path<String>,
    request: Request,
) -> Response {
    let (parts, _) = request.into_parts();
    let viewer = Viewer::of(&state, &parts.headers, &parts.extensions).await;
    let query = Query::parse(parts.uri.query());
    match parse_target(&path) {
        Some(Target::Repository(name)) => tags_page(&state, &viewer, &name, &query).await,
        Some(Target::Manifest(name, reference)) => {
            let host = registry_host(&state, &parts.headers);
            manifest_page(&state, &viewer, &name, &reference, &host).await
        }
        None => not_found(&viewer, parts.uri.path()),
    }
}

/// What a missing repository and one the viewer may not see both get.
fn not_found(viewer: &Viewer, path: &str) -> Response {
    let body = html! {
        h1 { "Not found" }
        p #error { "There is no such repository or manifest, or you may not see it." }
        @if !viewer.signed_in() {
            p { a href=(signin_to(path)) { "Sign in" } " to see more." }
        }
    };
    page(
        viewer,
        StatusCode::NOT_FOUND,
        layout::page(viewer, "Not found", body),
    )
}

fn storage_error(viewer: &Viewer, e: StorageError) -> Response {
    tracing::warn!(error = %e, "web UI: cannot read the store");
    error_page(
        viewer,
        StatusCode::SERVICE_UNAVAILABLE,
        "The store cannot be read right now; try again.",
    )
}

/// One tag's row.
struct TagRow {
    tag: Tag,
    digest: String,
    size: Option<u64>,
    platforms: Vec<String>,
    created: Option<String>,
    pushed: std::time::SystemTime,
    immutable: bool,
}

fn platform_text(os: &str, architecture: &str, variant: Option<&str>) -> String {
    match variant {
        Some(v) => format!("{os}/{architecture}/{v}"),
        None => format!("{os}/{architecture}"),
    }
}

/// Platforms, size and creation time of a manifest, from its facts.
fn summary(facts: &wit::Manifest) -> (Option<u64>, Vec<String>, Option<String>) {
    if let Some(image) = &facts.image {
        let platforms = image
            .config
            .as_ref()
            .map(|c| vec![platform_text(&c.os, &c.architecture, c.variant.as_deref())])
            .unwrap_or_default();
        let created = image.config.as_ref().and_then(|c| c.created.clone());
        return (Some(image.total_size), platforms, created);
    }
    let platforms = facts
        .children
        .iter()
        .filter_map(|c| c.platform.as_ref())
        .map(|p| platform_text(&p.os, &p.architecture, p.variant.as_deref()))
        .collect();
    (None, platforms, None)
}

/// The tag patterns the enforcing tag-immutability policies protect in
/// `name` (their scope and their own `repositories` setting).
fn immutable_patterns(state: &UiState, name: &RepositoryName) -> Vec<PatternList> {
    let chain = state.app.policies.current();
    chain
        .described()
        .into_iter()
        .filter(|p| p.module == "builtin:tag-immutability" && p.mode == PolicyMode::Enforce)
        .filter(|p| {
            p.actions
                .as_ref()
                .is_none_or(|a| a.contains(&Action::Push) || a.contains(&Action::Delete))
        })
        .filter(|p| {
            p.repositories
                .as_ref()
                .is_none_or(|r| PatternList::new(r).is_ok_and(|r| r.matches(name.as_str())))
        })
        .filter_map(|p| {
            let list = |key: &str| -> Option<Vec<String>> {
                serde_json::from_value(p.settings.get(key)?.clone()).ok()
            };
            let repositories = list("repositories").unwrap_or_else(|| vec!["**".into()]);
            let covers = PatternList::new(&repositories).is_ok_and(|r| r.matches(name.as_str()));
            covers
                .then(|| PatternList::new(&list("tags")?).ok())
                .flatten()
        })
        .collect()
}

async fn tags_page(
    state: &UiState,
    viewer: &Viewer,
    name: &RepositoryName,
    query: &Query,
) -> Response {
    let app = &state.app;
    if !state.ui.visible.may_list(app, viewer, name.as_str()).await {
        return not_found(viewer, &repository_path(name.as_str()));
    }
    let mut history = match app.storage.tag_history(name).await {
        Ok(history) => history,
        Err(StorageError::NameUnknown(_)) => {
            return not_found(viewer, &repository_path(name.as_str()))
        }
        Err(e) => return storage_error(viewer, e),
    };
    // The tag listing of a repository that is not there is empty: ask as
    // `tags/list` does, so a missing repository is the 404 a hidden one is.
    if history.is_empty() {
        match app.storage.list_tags(name).await {
            Ok(_) => {}
            Err(StorageError::NameUnknown(_)) => {
                return not_found(viewer, &repository_path(name.as_str()))
            }
            Err(e) => return storage_error(viewer, e),
        }
    }
    // Newest first; the cosign signature tags are shown with their image.
    history.retain(|t| !is_signature_tag(t.tag.as_str()));
    history.sort_by(|a, b| b.pushed.cmp(&a.pushed).then(a.tag.cmp(&b.tag)));
    let total = history.len();
    let offset = query
        .get("offset")
        .and_then(|o| o.parse::<usize>().ok())
        .unwrap_or(0)
        .min(total);
    let immutable = immutable_patterns(state, name);
    let mut rows = Vec::new();
    let mut hidden = 0usize;
    for record in history.iter().skip(offset).take(PAGE) {
        let digest = record.digest.to_string();
        let facts = match app
            .storage
            .get_manifest(name, &Reference::Digest(record.digest.clone()))
            .await
        {
            Ok(stored) => Some(app.facts.of_stored(&app.storage, name, &stored).await),
            Err(_) => None,
        };
        // A policy may judge the tag or what it names (a signature, a
        // platform): a tag the viewer may not pull is left out of the page.
        let mut access = Access::new(Action::Pull, Resource::Manifest, name.clone())
            .with_reference(Reference::Tag(record.tag.clone()));
        access.manifest = facts.clone();
        if !would_allow(app, &viewer.caller(), &access).await {
            hidden += 1;
            continue;
        }
        let (size, platforms, created) = facts.as_deref().map(summary).unwrap_or_default();
        rows.push(TagRow {
            immutable: immutable.iter().any(|p| p.matches(record.tag.as_str())),
            tag: record.tag.clone(),
            digest,
            size,
            platforms,
            created,
            pushed: record.pushed,
        });
    }
    let next = (offset + PAGE < total).then(|| {
        format!(
            "{}?offset={}",
            repository_path(name.as_str()),
            offset + PAGE
        )
    });
    let body = html! {
        h1 { (name.as_str()) }
        p.muted {
            (total) " tags"
            @if hidden > 0 { "; " (hidden) " on this page you may not pull are not shown" }
        }
        @if rows.is_empty() {
            p.muted { "No tags." }
        } @else {
            table #tags {
                thead { tr { th { "Tag" } th { "Digest" } th { "Size" } th { "Platforms" } th { "Created" } th { "Pushed" } } }
                tbody {
                    @for row in &rows {
                        tr.tag data-tag=(row.tag.as_str()) {
                            td.tag-name {
                                a.tag-link href=(manifest_path(name.as_str(), &Reference::Tag(row.tag.clone()))) { (row.tag.as_str()) }
                                @if row.immutable { span.badge.immutable title="tag-immutability: this tag never moves" { "immutable" } }
                            }
                            td.digest.mono title=(row.digest) { (short_digest(&row.digest)) }
                            td.size { @if let Some(size) = row.size { (bytes(size)) } @else { "-" } }
                            td.platforms { (row.platforms.join(", ")) }
                            td.created { @if let Some(c) = &row.created { (layout::created(c)) } @else { "-" } }
                            td.pushed { (layout::system_time(row.pushed)) }
                        }
                    }
                }
            }
        }
        @if let Some(next) = &next { p.pager { a #next-page href=(next) { "Next page" } } }
    };
    page(
        viewer,
        StatusCode::OK,
        layout::page(viewer, name.as_str(), body),
    )
}

/// cosign's tag scheme: `sha256-<hex>.sig` (and `.att`, `.sbom`).
fn is_signature_tag(tag: &str) -> bool {
    tag.starts_with("sha256-")
        && (tag.ends_with(".sig") || tag.ends_with(".att") || tag.ends_with(".sbom"))
}

/// What the signature policies say about a manifest, for this viewer.
#[derive(Debug, PartialEq)]
enum Signature {
    Verified,
    Unverified(String),
    /// No signature policy covers this repository.
    Unknown,
    /// The policies cover it but would not check this view: their `tags`
    /// leave out this reference, or it is not something a runtime runs.
    NotChecked(&'static str),
}

const SIGNATURE_MODULE: &str = "builtin:signature";

/// Whether the `builtin:signature` policy's own rules (its `tags`
/// setting; what it calls runnable) have it check a pull of `reference`
/// of `facts`. Its allow means "verified" only when it does: a digest
/// under a `tags` setting, or an SBOM, is let by unchecked.
fn signature_checks(
    settings: &serde_json::Value,
    reference: &Reference,
    facts: &wit::Manifest,
) -> Result<(), &'static str> {
    if let Some(tags) = settings.get("tags") {
        let patterns = serde_json::from_value::<Vec<String>>(tags.clone())
            .ok()
            .and_then(|t| PatternList::new(&t).ok());
        let checked = match (reference, patterns) {
            (Reference::Tag(tag), Some(p)) => p.matches(tag.as_str()),
            _ => false,
        };
        if !checked {
            return Err(
                "the signature policy checks only tags matching its patterns, not this reference",
            );
        }
    }
    if !is_runnable(facts) {
        return Err("not a runnable image (a signature, SBOM or other artifact): no signature is asked of it");
    }
    Ok(())
}

/// The signature policy's `is_runnable`, on the same facts: an index; an
/// image with a filesystem or Wasm layer; one whose config names an OS;
/// one whose image config could not be read.
fn is_runnable(m: &wit::Manifest) -> bool {
    const IMAGE_CONFIG_TYPES: [&str; 2] = [
        "application/vnd.oci.image.config.v1+json",
        "application/vnd.docker.container.image.v1+json",
    ];
    let Some(image) = &m.image else {
        return true;
    };
    let image_config = IMAGE_CONFIG_TYPES.contains(&image.config_media_type.as_str());
    match &image.config {
        Some(config) if !config.os.is_empty() => return true,
        None if image_config => return true,
        _ => {}
    }
    image.layers.iter().any(|l| {
        let t = l.media_type.as_str();
        t.contains(".tar") || t.contains("rootfs") || t.contains("wasm")
    })
}

async fn signature_status(
    state: &UiState,
    viewer: &Viewer,
    name: &RepositoryName,
    reference: &Reference,
    facts: &Arc<wit::Manifest>,
) -> Signature {
    let app = &state.app;
    let mut access = Access::new(Action::Pull, Resource::Manifest, name.clone())
        .with_reference(reference.clone());
    access.manifest = Some(Arc::clone(facts));
    let chain = app.policies.current();
    // The signature policies (enforcing or in audit mode, as `probe` asks
    // them) whose scope covers a pull here, and whether any of them would
    // check this view at all.
    let covering: Vec<_> = chain
        .described()
        .into_iter()
        .filter(|p| p.module == SIGNATURE_MODULE)
        .filter(|p| p.actions.as_ref().is_none_or(|a| a.contains(&Action::Pull)))
        .filter(|p| {
            p.repositories
                .as_ref()
                .is_none_or(|r| PatternList::new(r).is_ok_and(|r| r.matches(name.as_str())))
        })
        .collect();
    if covering.is_empty() {
        return Signature::Unknown;
    }
    let checks: Vec<_> = covering
        .iter()
        .map(|p| signature_checks(&p.settings, reference, facts))
        .collect();
    if let Some(Err(why)) = checks.first().filter(|_| checks.iter().all(Result::is_err)) {
        return Signature::NotChecked(why);
    }
    match chain
        .probe(
            SIGNATURE_MODULE,
            &access,
            &viewer.identity,
            viewer.ip,
            &app.metrics,
        )
        .await
    {
        None => Signature::Unknown,
        Some(Verdict::Allow) => Signature::Verified,
        Some(Verdict::Deny { reason, .. } | Verdict::Failed { reason, .. }) => {
            Signature::Unverified(reason)
        }
        Some(Verdict::Unavailable { .. }) => {
            Signature::Unverified("the signature policy could not run".into())
        }
    }
}

/// A row of the referrers table.
struct ReferrerRow {
    kind: String,
    digest: String,
    size: u64,
    href: Option<String>,
}

async fn manifest_page(
    state: &UiState,
    viewer: &Viewer,
    name: &RepositoryName,
    reference: &Reference,
    host: &str,
) -> Response {
    let app = &state.app;
    let path = manifest_path(name.as_str(), reference);
    // The repository first: what a viewer may not list, they do not learn
    // exists (nor is the manifest read for them).
    if !state.ui.visible.may_list(app, viewer, name.as_str()).await {
        return not_found(viewer, &path);
    }
    let stored = match app.storage.get_manifest(name, reference).await {
        Ok(stored) => stored,
        Err(StorageError::ManifestUnknown(_) | StorageError::NameUnknown(_)) => {
            return not_found(viewer, &path)
        }
        Err(e) => return storage_error(viewer, e),
    };
    let facts = app.facts.of_stored(&app.storage, name, &stored).await;
    let mut access = Access::new(Action::Pull, Resource::Manifest, name.clone())
        .with_reference(reference.clone());
    access.manifest = Some(Arc::clone(&facts));
    if !would_allow(app, &viewer.caller(), &access).await {
        return not_found(viewer, &path);
    }
    let digest = stored.digest.clone();
    let signature = signature_status(state, viewer, name, reference, &facts).await;
    let mut referrers = Vec::new();
    if let Ok(found) = app.storage.list_referrers(name, &digest).await {
        for r in found {
            referrers.push(ReferrerRow {
                kind: r
                    .artifact_type
                    .clone()
                    .unwrap_or_else(|| r.media_type.clone()),
                href: Some(manifest_path(
                    name.as_str(),
                    &Reference::Digest(r.digest.clone()),
                )),
                digest: r.digest.to_string(),
                size: r.size,
            });
        }
    }
    let hex = digest.to_string().replace(':', "-");
    for (suffix, kind) in [
        (".sig", "cosign signature (tag scheme)"),
        (".att", "cosign attestation (tag scheme)"),
        (".sbom", "cosign SBOM (tag scheme)"),
    ] {
        if let Ok(tag) = Tag::parse(&format!("{hex}{suffix}")) {
            if let Ok(Some(target)) = app.storage.tag_target(name, &tag).await {
                referrers.push(ReferrerRow {
                    kind: kind.into(),
                    href: Some(manifest_path(name.as_str(), &Reference::Tag(tag))),
                    digest: target.to_string(),
                    size: 0,
                });
            }
        }
    }
    let immutable = match reference {
        Reference::Tag(tag) => immutable_patterns(state, name)
            .iter()
            .any(|p| p.matches(tag.as_str())),
        Reference::Digest(_) => false,
    };
    let title = match reference {
        Reference::Tag(tag) => format!("{name}:{tag}"),
        Reference::Digest(d) => format!("{name}@{}", short_digest(&d.to_string())),
    };
    let body = html! {
        p.muted { a href=(repository_path(name.as_str())) { (name.as_str()) } }
        h1 { (title) @if immutable { span.badge.immutable { "immutable" } } }
        dl {
            dt { "Digest" } dd.mono #digest { (digest.to_string()) }
            dt { "Media type" } dd.mono { (stored.media_type) }
            dt { "Signature" }
            dd {
                @match &signature {
                    Signature::Verified => span #signature-status.status-verified data-status="verified" { "verified by the signature policy" },
                    Signature::Unverified(reason) => span #signature-status.status-unverified data-status="unverified" title=(reason) { "not verified: " (reason) },
                    Signature::Unknown => span #signature-status.status-unknown data-status="unknown" { "no signature policy covers this repository" },
                    Signature::NotChecked(why) => span #signature-status.status-unknown data-status="unknown" { "not checked: " (why) },
                }
            }
        }
        h2 { "Pull" }
        div.pull {
            @if let Reference::Tag(tag) = reference {
                code #pull-by-tag { "docker pull " (host) "/" (name.as_str()) ":" (tag.as_str()) }
            }
            code #pull-by-digest { "docker pull " (host) "/" (name.as_str()) "@" (digest.to_string()) }
        }
        (facts_section(name, &facts))
        h2 { "Referrers" }
        @if referrers.is_empty() {
            p.muted { "No signatures, SBOMs or attestations refer to this manifest." }
        } @else {
            table #referrers {
                thead { tr { th { "Type" } th { "Digest" } th { "Size" } } }
                tbody {
                    @for r in &referrers {
                        tr.referrer {
                            td.artifact-type { (r.kind) }
                            td.digest.mono {
                                @if let Some(href) = &r.href { a href=(href) { (short_digest(&r.digest)) } } @else { (short_digest(&r.digest)) }
                            }
                            td { @if r.size > 0 { (bytes(r.size)) } @else { "-" } }
                        }
                    }
                }
            }
        }
        @if viewer.signed_in() {
            h2 { "Delete" }
            p.muted { "Decided by the policy chain, as a DELETE from a client would be." }
            @if let Reference::Tag(tag) = reference {
                form #delete-tag.inline method="post" action=(format!("{}/delete", manifest_path(name.as_str(), reference))) {
                    input type="hidden" name="csrf" value=(viewer.csrf());
                    button.danger type="submit" { "Delete tag " (tag.as_str()) }
                }
                " "
            }
            form #delete-manifest.inline method="post" action=(format!("{}/delete", manifest_path(name.as_str(), &Reference::Digest(digest.clone())))) {
                input type="hidden" name="csrf" value=(viewer.csrf());
                button.danger type="submit" { "Delete manifest " (short_digest(&digest.to_string())) }
            }
        }
    };
    page(viewer, StatusCode::OK, layout::page(viewer, &title, body))
}

/// An image's config and layers, or an index's platforms; annotations.
fn facts_section(name: &RepositoryName, facts: &wit::Manifest) -> Markup {
    html! {
        @if let Some(image) = &facts.image {
            h2 { "Image" }
            dl #config {
                dt { "Size" } dd #total-size { (bytes(image.total_size)) }
                @if let Some(c) = &image.config {
                    dt { "Platform" } dd #platform { (platform_text(&c.os, &c.architecture, c.variant.as_deref())) }
                    dt { "Created" } dd #created { @if let Some(t) = &c.created { (layout::created(t)) } @else { "-" } }
                    dt { "User" } dd #user.mono { @if c.user.is_empty() { "(none: root)" } @else { (c.user) } }
                    dt { "Entrypoint" } dd #entrypoint.mono { (shell_words(&c.entrypoint)) }
                    dt { "Command" } dd #cmd.mono { (shell_words(&c.cmd)) }
                    dt { "Exposed ports" } dd #ports { (c.exposed_ports.join(", ")) }
                    dt { "Build steps" } dd { (c.history_length) }
                }
            }
            @if let Some(c) = &image.config {
                @if !c.labels.is_empty() {
                    h2 { "Labels" }
                    table #labels {
                        tbody {
                            @for (key, value) in &c.labels {
                                tr.label { th.mono { (key) } td { (value) } }
                            }
                        }
                    }
                }
            }
            h2 { "Layers" }
            table #layers {
                thead { tr { th { "#" } th { "Digest" } th { "Media type" } th { "Size" } } }
                tbody {
                    @for (i, layer) in image.layers.iter().enumerate() {
                        tr.layer {
                            td { (i + 1) }
                            td.digest.mono title=(layer.digest) { (short_digest(&layer.digest)) }
                            td.mono.muted { (layer.media_type) }
                            td.size { (bytes(layer.size)) }
                        }
                    }
                }
            }
        }
        @if !facts.children.is_empty() {
            h2 { "Platforms" }
            table #platforms {
                thead { tr { th { "Platform" } th { "Digest" } th { "Size" } } }
                tbody {
                    @for child in &facts.children {
                        tr.platform {
                            td.platform {
                                @if let Some(p) = &child.platform { (platform_text(&p.os, &p.architecture, p.variant.as_deref())) }
                                @else { (child.artifact_type.clone().unwrap_or_else(|| "-".into())) }
                            }
                            td.digest.mono {
                                @match Digest::parse(&child.digest) {
                                    Ok(d) => a href=(manifest_path(name.as_str(), &Reference::Digest(d))) { (short_digest(&child.digest)) },
                                    Err(_) => (short_digest(&child.digest)),
                                }
                            }
                            td { (bytes(child.size)) }
                        }
                    }
                }
            }
        }
        @if !facts.annotations.is_empty() {
            h2 { "Annotations" }
            table #annotations {
                tbody {
                    @for (key, value) in &facts.annotations {
                        tr.annotation { th.mono { (key) } td { (value) } }
                    }
                }
            }
        }
    }
}

/// A command as a shell would take it back (JSON array quoting).
fn shell_words(words: &[String]) -> String {
    if words.is_empty() {
        return "-".into();
    }
    serde_json::to_string(words).unwrap_or_default()
}

/// `POST /ui/r/<name>/:<tag>/delete` and `/@<digest>/delete`: a DELETE
/// decided by the chain as the viewer.
pub async fn delete(
    State(state): State<UiState>,
    Path(path): Path<String>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let viewer = Viewer::of(&state, &parts.headers, &parts.extensions).await;
    let Some(form) = super::checked_form(&viewer, &parts, body).await else {
        return super::refused(&viewer);
    };
    drop(form);
    let Some(Target::Manifest(name, reference)) =
        path.strip_suffix("/delete").and_then(parse_target)
    else {
        return not_found(&viewer, parts.uri.path());
    };
    let result =
        crate::api::manifests::delete(&state.app, &viewer.caller(), &name, &reference).await;
    match result {
        Ok(_) => {
            tracing::info!(user = viewer.name(), repository = %name, reference = %reference, "deleted from the web UI");
            see_other(&viewer, &repository_path(name.as_str()))
        }
        Err(e) if e.status == StatusCode::NOT_FOUND => not_found(&viewer, parts.uri.path()),
        Err(e) => {
            let status = match e.status {
                StatusCode::UNAUTHORIZED => StatusCode::FORBIDDEN,
                s if s.is_server_error() => StatusCode::SERVICE_UNAVAILABLE,
                s => s,
            };
            error_page(&viewer, status, &format!("Not deleted: {}", e.message))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_name_repositories_and_manifests() {
        let repo = |s: &str| RepositoryName::parse(s).unwrap();
        assert_eq!(
            parse_target("library/postgres"),
            Some(Target::Repository(repo("library/postgres")))
        );
        assert_eq!(
            parse_target("library/postgres/"),
            Some(Target::Repository(repo("library/postgres")))
        );
        assert_eq!(
            parse_target("library/postgres/:16"),
            Some(Target::Manifest(
                repo("library/postgres"),
                Reference::Tag(Tag::parse("16").unwrap())
            ))
        );
        let digest = format!("sha256:{}", "a".repeat(64));
        assert!(matches!(
            parse_target(&format!("app/@{digest}")),
            Some(Target::Manifest(_, Reference::Digest(_)))
        ));
        for bad in [
            "",
            "/",
            "UPPER",
            "a/:",
            "a/:-bad",
            "a/@sha256:short",
            "../etc",
            "a/../b",
            ":tag",
            "a/:<script>",
            "a//b",
        ] {
            assert_eq!(parse_target(bad), None, "{bad:?}");
        }
        assert!(is_signature_tag("sha256-abc.sig"));
        assert!(!is_signature_tag("v1.sig"));
    }

    fn manifest(layer_type: &str, os: &str) -> wit::Manifest {
        wit::Manifest {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: format!("sha256:{}", "b".repeat(64)),
            size: 500,
            artifact_type: None,
            subject: None,
            annotations: Vec::new(),
            image: Some(wit::Image {
                config_digest: format!("sha256:{}", "c".repeat(64)),
                config_media_type: if os.is_empty() {
                    "application/vnd.dev.cosign.artifact.sig.v1+json".into()
                } else {
                    "application/vnd.oci.image.config.v1+json".into()
                },
                config_size: 2,
                config: (!os.is_empty()).then(|| wit::ImageConfig {
                    os: os.into(),
                    architecture: "amd64".into(),
                    variant: None,
                    user: String::new(),
                    labels: Vec::new(),
                    created: None,
                    entrypoint: Vec::new(),
                    cmd: Vec::new(),
                    env: Vec::new(),
                    exposed_ports: Vec::new(),
                    history_length: 0,
                }),
                layers: vec![wit::Layer {
                    digest: format!("sha256:{}", "d".repeat(64)),
                    media_type: layer_type.into(),
                    size: 10,
                }],
                total_size: 12,
            }),
            children: Vec::new(),
        }
    }

    #[test]
    fn an_allow_is_verified_only_where_the_signature_policy_checks() {
        let image = manifest("application/vnd.oci.image.layer.v1.tar+gzip", "linux");
        let sbom = manifest("application/spdx+json", "");
        let tag = |t: &str| Reference::Tag(Tag::parse(t).unwrap());
        let digest =
            Reference::Digest(Digest::parse(&format!("sha256:{}", "b".repeat(64))).unwrap());
        let every = serde_json::json!({ "keys": ["k"] });
        let prod = serde_json::json!({ "keys": ["k"], "tags": ["prod-*"] });
        assert_eq!(signature_checks(&every, &tag("v1"), &image), Ok(()));
        assert_eq!(signature_checks(&every, &digest, &image), Ok(()));
        assert_eq!(signature_checks(&prod, &tag("prod-1"), &image), Ok(()));
        // The policy lets these by without looking for a signature: its
        // allow is not "verified".
        assert!(signature_checks(&prod, &tag("dev-1"), &image).is_err());
        assert!(signature_checks(&prod, &digest, &image).is_err());
        assert!(signature_checks(&every, &digest, &sbom).is_err());
        assert!(
            signature_checks(&serde_json::json!({ "tags": "bad" }), &tag("x"), &image).is_err()
        );
    }
}
