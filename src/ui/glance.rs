//! Storage at a glance: the store's total, each repository's share and
//! what gc and retention would free, computed in the background (never
//! per page view): every 10 minutes on a filesystem, every hour on S3
//! (there each run lists the bucket, on every replica).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::html;

use super::browse::repository_path;
use super::layout::{self, bytes};
use super::{page, see_other, signin_to, UiState, Viewer};
use crate::api::SharedState;
use crate::maintenance::{ChainSource, Maintenance, RunOptions};
use crate::reference::Reference;
use crate::storage::ParsedManifest;
use crate::storage::Storage;

/// One computation's results.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub computed: Option<SystemTime>,
    pub took: Duration,
    pub total_bytes: u64,
    /// Each repository's bytes: the distinct blobs its manifests name
    /// (blobs shared between repositories count in each).
    pub repositories: Vec<(String, u64)>,
    pub gc_would_free: Option<u64>,
    /// Tags and manifests the `[[retention]]` rules would delete now.
    pub retention: Option<(usize, usize)>,
    pub error: Option<String>,
}

pub struct Glance {
    storage: Storage,
    snapshot: Mutex<Arc<Snapshot>>,
    /// An admin asked for a computation now.
    kick: tokio::sync::Notify,
}

fn every(storage: &Storage) -> Duration {
    match storage {
        Storage::Filesystem(_) => Duration::from_secs(600),
        Storage::S3(_) => Duration::from_secs(3600),
    }
}

impl Glance {
    pub fn new(storage: Storage) -> Arc<Self> {
        Arc::new(Self {
            storage,
            snapshot: Mutex::new(Arc::new(Snapshot::default())),
            kick: tokio::sync::Notify::new(),
        })
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.snapshot.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Computes once the page is first asked for (a server nobody looks at
    /// does no such work), then on a schedule for as long as it runs.
    pub fn spawn(self: &Arc<Self>, app: SharedState) {
        let glance = Arc::clone(self);
        tokio::spawn(async move {
            glance.kick.notified().await;
            loop {
                let snapshot = glance.compute(&app).await;
                *glance.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(snapshot);
                let done = std::time::Instant::now();
                tokio::select! {
                    _ = tokio::time::sleep(every(&glance.storage)) => {}
                    _ = glance.kick.notified() => {
                        // At most one computation a minute, however often asked.
                        tokio::time::sleep(MIN_GAP.saturating_sub(done.elapsed())).await;
                    }
                }
            }
        });
    }

    async fn compute(&self, app: &SharedState) -> Snapshot {
        let started = std::time::Instant::now();
        let mut snapshot = Snapshot {
            computed: Some(SystemTime::now()),
            ..Snapshot::default()
        };
        match self.storage.blob_bytes().await {
            Ok(total) => snapshot.total_bytes = total,
            Err(e) => snapshot.error = Some(format!("total: {e}")),
        }
        match self.per_repository().await {
            Ok(list) => snapshot.repositories = list,
            Err(e) => snapshot.error = Some(format!("repositories: {e}")),
        }
        match Maintenance::new(
            &app.config,
            self.storage.clone(),
            Some(ChainSource::Live(Arc::clone(&app.policies))),
            Arc::clone(&app.metrics),
        ) {
            Ok(maintenance) => {
                let options = RunOptions {
                    retention: maintenance.has_rules(),
                    gc: true,
                    dry_run: true,
                };
                match maintenance.run(options).await {
                    Ok(report) => {
                        snapshot.gc_would_free = report.gc.as_ref().map(|g| g.freed_bytes());
                        snapshot.retention = report
                            .retention
                            .as_ref()
                            .map(|r| (r.tags_deleted(), r.manifests_deleted()));
                    }
                    Err(e) => snapshot.error = Some(format!("gc dry run: {e}")),
                }
            }
            Err(e) => snapshot.error = Some(format!("gc dry run: {e}")),
        }
        snapshot.took = started.elapsed();
        snapshot
    }

    async fn per_repository(&self) -> Result<Vec<(String, u64)>, crate::storage::StorageError> {
        let mut out = Vec::new();
        for name in self.storage.list_repositories().await? {
            let mut seen = HashSet::new();
            let mut total = 0u64;
            for digest in self.storage.list_manifests(&name).await.unwrap_or_default() {
                let Ok(stored) = self
                    .storage
                    .get_manifest(&name, &Reference::Digest(digest.clone()))
                    .await
                else {
                    continue;
                };
                if seen.insert(digest.to_string()) {
                    total += stored.bytes.len() as u64;
                }
                let Ok(parsed) = ParsedManifest::parse(&stored.bytes, Some(&stored.media_type))
                else {
                    continue;
                };
                for d in parsed.config.iter().chain(&parsed.layers) {
                    if seen.insert(d.digest.to_string()) {
                        total = total.saturating_add(d.size);
                    }
                }
            }
            out.push((name.as_str().to_owned(), total));
        }
        out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        Ok(out)
    }
}

/// The least time between two computations asked for from the page.
const MIN_GAP: Duration = Duration::from_secs(60);

/// `POST /ui/storage/refresh` (admins): compute again soon.
pub async fn refresh(State(state): State<UiState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let viewer = Viewer::of(&state, &parts.headers, &parts.extensions).await;
    if super::checked_form(&viewer, &parts, body).await.is_none() {
        return super::refused(&viewer);
    }
    if !viewer.is_admin(&state) {
        return super::error_page(
            &viewer,
            StatusCode::FORBIDDEN,
            "Only members of the admin groups may ask for this.",
        );
    }
    state.ui.glance.kick.notify_one();
    see_other(&viewer, "/ui/storage")
}

/// How many repositories the page lists.
const SHOWN: usize = 100;

/// `GET /ui/storage`: the last computation. Repositories the viewer may
/// not see are counted in the total, never named.
pub async fn page_route(State(state): State<UiState>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    let viewer = Viewer::of(&state, &parts.headers, &parts.extensions).await;
    if !viewer.signed_in() {
        return see_other(&viewer, &signin_to("/ui/storage"));
    }
    let snapshot = state.ui.glance.snapshot();
    if snapshot.computed.is_none() {
        state.ui.glance.kick.notify_one();
    }
    let mut shown = Vec::new();
    let mut hidden = false;
    for (name, size) in &snapshot.repositories {
        if shown.len() >= SHOWN {
            break;
        }
        if state.ui.visible.may_list(&state.app, &viewer, name).await {
            shown.push((name, *size));
        } else {
            hidden = true;
        }
    }
    let body = html! {
        h1 { "Storage" }
        @match snapshot.computed {
            None => p.notice #computed-at { "Being computed in the background: reload in a moment." },
            Some(at) => p.muted #computed-at { "Computed " (layout::system_time(at)) " in " (format!("{:.1}", snapshot.took.as_secs_f64())) " s; recomputed every " (humantime::format_duration(every(&state.app.storage))) "." },
        }
        @if let Some(e) = &snapshot.error { p.error { "Part of it could not be computed: " (e) } }
        @if viewer.is_admin(&state) {
            form #refresh-storage method="post" action="/ui/storage/refresh" {
                input type="hidden" name="csrf" value=(viewer.csrf());
                button type="submit" { "Compute again" }
                span.muted { " (at most once a minute; reload the page in a few seconds)" }
            }
        }
        div.cards {
            div.card { div.muted { "Stored (every blob)" } div.big #total-bytes { (bytes(snapshot.total_bytes)) } }
            div.card { div.muted { "gc would free now" } div.big #gc-would-free { @match snapshot.gc_would_free { Some(b) => (bytes(b)), None => "-" } } }
            div.card {
                div.muted { "Retention would delete" }
                div.big #retention-would-delete {
                    @match snapshot.retention { Some((tags, manifests)) => { (tags) " tags, " (manifests) " manifests" }, None => "no rules" }
                }
                div.muted { "(their layers are freed by the gc that follows)" }
            }
        }
        h2 { "Largest repositories" }
        table #repository-bytes {
            thead { tr { th { "Repository" } th { "Size" } } }
            tbody {
                @for (name, size) in &shown {
                    tr.repository-bytes { td { a href=(repository_path(name)) { (name) } } td.size { (bytes(*size)) } }
                }
            }
        }
        @if hidden { p.muted { "Repositories you may not see are counted in the total, not listed." } }
        p.muted { "A repository's size counts each blob its manifests name once; blobs shared between repositories are stored once and count in each." }
    };
    page(
        &viewer,
        StatusCode::OK,
        layout::page(&viewer, "Storage", body),
    )
}
