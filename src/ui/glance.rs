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
use crate::api::access::allows;
use crate::api::SharedState;
use crate::config::Action;
use crate::maintenance::{ChainSource, Maintenance, RunOptions};
use crate::policy::request::Resource;
use crate::policy::Access;
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
        })
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.snapshot.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Computes now, then on a schedule, for as long as the server runs.
    pub fn spawn(self: &Arc<Self>, app: SharedState) {
        let glance = Arc::clone(self);
        tokio::spawn(async move {
            // Let the server come up first.
            tokio::time::sleep(Duration::from_secs(2)).await;
            loop {
                let snapshot = glance.compute(&app).await;
                *glance.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(snapshot);
                tokio::time::sleep(every(&glance.storage)).await;
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
    let mut shown = Vec::new();
    let mut hidden = 0usize;
    for (name, size) in &snapshot.repositories {
        if shown.len() >= SHOWN {
            break;
        }
        let Ok(repository) = crate::reference::RepositoryName::parse(name) else {
            continue;
        };
        let access = Access::new(Action::List, Resource::Catalog, repository);
        if allows(&state.app, &viewer.caller(), &access).await {
            shown.push((name, *size));
        } else {
            hidden += 1;
        }
    }
    let body = html! {
        h1 { "Storage" }
        @match snapshot.computed {
            None => p.notice #computed-at { "Not computed yet: it runs in the background a few seconds after the server starts. Reload in a moment." },
            Some(at) => p.muted #computed-at { "Computed " (layout::system_time(at)) " in " (format!("{:.1}", snapshot.took.as_secs_f64())) " s; recomputed every " (humantime::format_duration(every(&state.app.storage))) "." },
        }
        @if let Some(e) = &snapshot.error { p.error { "Part of it could not be computed: " (e) } }
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
        @if hidden > 0 { p.muted { (hidden) " repositories you may not see are not listed." } }
        p.muted { "A repository's size counts each blob its manifests name once; blobs shared between repositories are stored once and count in each." }
    };
    page(
        &viewer,
        StatusCode::OK,
        layout::page(&viewer, "Storage", body),
    )
}
