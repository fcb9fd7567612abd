//! `[gc] every`: the server runs gc (and retention) itself. Runs follow
//! each other (the next starts `every` after the last ended), and the lock
//! (`lock.rs`) keeps a command-line run or another replica from running at
//! the same time: a round that finds the lock taken is skipped.

use std::sync::Arc;
use std::time::Duration;

use super::{Maintenance, MaintenanceError, RunOptions};
use crate::storage::Storage;

impl Maintenance {
    /// Whether a schedule may start on this store: on S3 only when a lease
    /// can exclude the other replicas, or the operator says this is the
    /// only replica with a schedule.
    pub fn check_schedule(&self) -> Result<(), MaintenanceError> {
        if let Storage::S3(s3) = &self.storage {
            if !s3.enforces_conditional_writes() && !self.settings.single_replica {
                return Err(MaintenanceError::Config(format!(
                    "gc.every is set, but {} does not enforce conditional writes \
                     (If-None-Match/If-Match on PUT), so replicas cannot take turns through \
                     a lease in the bucket and two could collect garbage at once. Run the \
                     schedule on exactly one replica and declare it there with \
                     gc.single_replica = true (leave gc.every unset on the others), or run \
                     `portcullis gc --retention` from a Kubernetes CronJob with \
                     concurrencyPolicy: Forbid instead",
                    s3.description()
                )));
            }
            if !s3.enforces_conditional_writes() {
                tracing::warn!(
                    store = %s3.description(),
                    "gc.single_replica = true: scheduled gc runs here without a lease; \
                     no other replica may have gc.every set"
                );
            }
        }
        Ok(())
    }

    /// Starts the schedule: a run every `every`, for the life of the process.
    pub fn spawn_schedule(self: Arc<Self>, every: Duration) {
        let options = RunOptions {
            retention: self.settings.retention && self.has_rules(),
            gc: true,
            dry_run: false,
        };
        tracing::info!(
            every = %humantime::format_duration(every),
            retention = options.retention,
            identity = %self.settings.identity,
            "scheduled gc on"
        );
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match self.run_scheduled(options, every).await {
                    Ok(_) => {}
                    Err(e @ (MaintenanceError::Busy(_) | MaintenanceError::RanRecently(_))) => {
                        tracing::info!(reason = %e, "scheduled gc skipped")
                    }
                    Err(e) => tracing::warn!(error = %e, "scheduled gc failed"),
                }
            }
        });
    }
}
