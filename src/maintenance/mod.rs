//! Maintenance runs: retention (`retention.rs`), then gc, one run at a time
//! (`lock.rs`), from the command line or on the server's schedule
//! (`schedule.rs`).
//!
//! A run takes the lock, applies the `[[retention]]` rules if asked (tags
//! and the manifests only they kept are deleted through the policy chain as
//! `gc.identity`), then runs gc (which frees the blobs nothing references
//! any more, exactly as `portcullis gc` does), and records what it did in
//! the metrics and the log.

pub mod lock;
pub mod retention;
pub mod schedule;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use indicatif::ProgressBar;

use crate::config::{Config, GcConfig};
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::policy::reload::ChainHolder;
use crate::policy::PolicyChain;
use crate::storage::gc::GcReport;
use crate::storage::records::RecordKind;
use crate::storage::{Storage, StorageError};
use lock::Exclusion;
use retention::{Retention, RetentionReport, Rules};

#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    #[error("another run is going on: {0}; try again when it has finished")]
    Busy(String),
    #[error("a run finished at {}, less than gc.every ago", when(*.0))]
    RanRecently(i64),
    #[error("cannot take the gc lock {path}: {source}")]
    Lock {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "the gc lease in the bucket could not be renewed (the store was unreachable, or \
         another replica took it over after it expired); this run stopped"
    )]
    LeaseLost,
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Storage(#[from] StorageError),
}

/// The record of the last good run (`_portcullis/maintenance/gc-last-run`).
const LAST_RUN: &str = "gc-last-run";

#[derive(serde::Serialize, serde::Deserialize)]
struct LastRun {
    finished_ms: u64,
    /// Which process ran it (for people reading the record).
    by: String,
}

fn when(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.to_rfc3339())
        .unwrap_or_default()
}

/// Where a run's policy chain comes from: the server's current one (a
/// reload applies to the next run), or one loaded for a command.
pub enum ChainSource {
    Live(Arc<ChainHolder>),
    Fixed(Arc<PolicyChain>),
}

impl ChainSource {
    fn current(&self) -> Arc<PolicyChain> {
        match self {
            ChainSource::Live(holder) => holder.current(),
            ChainSource::Fixed(chain) => Arc::clone(chain),
        }
    }
}

/// What one run does.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    pub retention: bool,
    pub gc: bool,
    /// Decide and report, write nothing (no lock is taken).
    pub dry_run: bool,
}

#[derive(Debug, Default)]
pub struct RunReport {
    pub retention: Option<RetentionReport>,
    pub gc: Option<GcReport>,
}

pub struct Maintenance {
    storage: Storage,
    /// `None` for gc-only runs (`portcullis gc` without `--retention`).
    chain: Option<ChainSource>,
    metrics: Arc<Metrics>,
    rules: Rules,
    settings: GcConfig,
    lock_file: PathBuf,
    /// Who holds the lease, for the other replicas' messages.
    holder: String,
    /// gc's progress bar (a command on a terminal); hidden otherwise.
    progress: ProgressBar,
}

impl Maintenance {
    pub fn new(
        config: &Config,
        storage: Storage,
        chain: Option<ChainSource>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, MaintenanceError> {
        let rules = Rules::new(&config.retention).map_err(MaintenanceError::Config)?;
        let host = hostname();
        Ok(Self {
            storage,
            chain,
            metrics,
            rules,
            settings: config.gc.clone(),
            lock_file: lock::lock_path(&config.storage.root),
            holder: format!(
                "{host} pid {} ({})",
                std::process::id(),
                uuid::Uuid::new_v4()
            ),
            progress: ProgressBar::hidden(),
        })
    }

    /// Draws gc's progress on `bar` (for a command on a terminal).
    pub fn with_progress(mut self, bar: ProgressBar) -> Self {
        self.progress = bar;
        self
    }

    /// The identity retention's deletes are decided for.
    pub fn identity(&self) -> Identity {
        let mut groups = self.settings.groups.clone();
        groups.sort();
        groups.dedup();
        Identity {
            subject: Some(self.settings.identity.clone()),
            groups,
        }
    }

    pub fn has_rules(&self) -> bool {
        !self.rules.is_empty()
    }

    /// One run: lock, retention, gc. Metrics record it (unless a dry run).
    pub async fn run(&self, options: RunOptions) -> Result<RunReport, MaintenanceError> {
        let result = self.run_locked(options, None).await;
        self.record(options, &result);
        result
    }

    /// A scheduled run: skipped when a run (another replica's, or a
    /// command's) finished well within about `interval` (nine tenths of it,
    /// so that timers firing a moment early do not skip a round); checked
    /// under the lock, so of two replicas due at once only one runs.
    pub(crate) async fn run_scheduled(
        &self,
        options: RunOptions,
        interval: Duration,
    ) -> Result<RunReport, MaintenanceError> {
        let result = self.run_locked(options, Some(interval)).await;
        self.record(options, &result);
        result
    }

    fn record(&self, options: RunOptions, result: &Result<RunReport, MaintenanceError>) {
        if options.dry_run {
            return;
        }
        match result {
            Ok(report) => {
                let freed = report.gc.as_ref().map_or(0, GcReport::freed_bytes);
                self.metrics.record_gc_run("ok", freed);
                if let Some(r) = &report.retention {
                    self.metrics
                        .record_retention("tag_deleted", r.tags_deleted() as u64);
                    self.metrics
                        .record_retention("manifest_deleted", r.manifests_deleted() as u64);
                    self.metrics.record_retention("refused", r.refused() as u64);
                }
            }
            Err(MaintenanceError::Busy(_) | MaintenanceError::RanRecently(_)) => {
                self.metrics.record_gc_run("skipped", 0)
            }
            Err(_) => self.metrics.record_gc_run("failed", 0),
        }
    }

    /// When a run last finished well, from the store (every replica and
    /// command sees the same); `None` if never, or unreadable.
    pub async fn last_success(&self) -> Option<SystemTime> {
        let bytes = self
            .storage
            .get_record(RecordKind::Maintenance, LAST_RUN)
            .await
            .ok()??;
        let record: LastRun = serde_json::from_slice(&bytes).ok()?;
        SystemTime::UNIX_EPOCH.checked_add(Duration::from_millis(record.finished_ms))
    }

    async fn note_success(&self) {
        let finished_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let record = LastRun {
            finished_ms,
            by: self.holder.clone(),
        };
        let bytes = serde_json::to_vec(&record).unwrap_or_default();
        if let Err(e) = self
            .storage
            .put_record(RecordKind::Maintenance, LAST_RUN, bytes.into())
            .await
        {
            tracing::warn!(error = %e, "cannot record the gc run's end; the next scheduled run may come early");
        }
    }

    async fn run_locked(
        &self,
        options: RunOptions,
        interval: Option<Duration>,
    ) -> Result<RunReport, MaintenanceError> {
        if options.dry_run {
            return self.work(options).await;
        }
        let ttl = self.settings.lease_ttl;
        let exclusion = lock::exclude(&self.storage, &self.lock_file, &self.holder, ttl).await?;
        if let (Some(interval), Some(last)) = (interval, self.last_success().await) {
            if last + interval * 9 / 10 > SystemTime::now() {
                self.release(exclusion).await;
                return Err(MaintenanceError::RanRecently(
                    chrono::DateTime::<chrono::Utc>::from(last).timestamp(),
                ));
            }
        }
        self.metrics.set_gc_running(true);
        let result = match exclusion {
            Exclusion::Lease(mut ticket) => {
                let result = tokio::select! {
                    result = self.work(options) => result,
                    () = self.keep_lease(&mut ticket) => Err(MaintenanceError::LeaseLost),
                };
                if result.is_ok() {
                    self.note_success().await;
                }
                self.release(Exclusion::Lease(ticket)).await;
                result
            }
            held => {
                let result = self.work(options).await;
                if result.is_ok() {
                    self.note_success().await;
                }
                self.release(held).await;
                result
            }
        };
        self.metrics.set_gc_running(false);
        result
    }

    /// Lets the next run in: the lease is marked free (a lock file is
    /// unlocked when it is closed).
    async fn release(&self, exclusion: Exclusion) {
        if let (Exclusion::Lease(ticket), Storage::S3(s3)) = (exclusion, &self.storage) {
            if let Err(e) = s3.release_lease(ticket).await {
                tracing::warn!(error = %e, "cannot release the gc lease; it expires after gc.lease_ttl");
            }
        }
    }

    /// Renews the lease every third of its time; returns when it is lost.
    async fn keep_lease(&self, ticket: &mut crate::storage::s3::LeaseTicket) {
        let Storage::S3(s3) = &self.storage else {
            return std::future::pending().await;
        };
        let ttl = self.settings.lease_ttl;
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(ttl / 3).await;
            match s3.renew_lease(ticket, ttl).await {
                Ok(true) => renewed = Instant::now(),
                Ok(false) => return,
                // Unreachable for now: the next renewal may still make it,
                // unless the lease would lapse before then (another replica
                // may take it once it has): the run stops first.
                Err(e) if renewed.elapsed() + ttl / 3 >= ttl => {
                    tracing::warn!(error = %e, "cannot renew the gc lease before it lapses; stopping the run");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "cannot renew the gc lease; retrying"),
            }
        }
    }

    async fn work(&self, options: RunOptions) -> Result<RunReport, MaintenanceError> {
        let started = Instant::now();
        let mut report = RunReport::default();
        if options.retention {
            let chain = self
                .chain
                .as_ref()
                .ok_or_else(|| MaintenanceError::Config("retention needs the policy chain".into()))?
                .current();
            let identity = self.identity();
            let retention = Retention {
                storage: &self.storage,
                chain: &chain,
                identity: &identity,
                metrics: &self.metrics,
                dry_run: options.dry_run,
            };
            report.retention = Some(retention.run(&self.rules).await?);
        }
        if options.gc {
            report.gc = Some(
                self.storage
                    .collect_garbage(options.dry_run, self.progress.clone())
                    .await?,
            );
        }
        let retention = report.retention.as_ref();
        tracing::info!(
            dry_run = options.dry_run,
            tags_deleted = retention.map_or(0, RetentionReport::tags_deleted),
            manifests_deleted = retention.map_or(0, RetentionReport::manifests_deleted),
            refused = retention.map_or(0, RetentionReport::refused),
            gc_removed = report.gc.as_ref().map_or(0, |g| g.removed.len()),
            freed_bytes = report.gc.as_ref().map_or(0, GcReport::freed_bytes),
            seconds = started.elapsed().as_secs_f64(),
            "maintenance run finished"
        );
        Ok(report)
    }
}

/// This machine's name, for the lease's holder field (messages only).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}
