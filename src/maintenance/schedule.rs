//! `[gc] every`: the server runs gc (and retention) itself. The next
//! round is due `every` after the last good run ended, anywhere: the end
//! of each run is a record in the store, so replicas and restarts agree on
//! it. The lock (`lock.rs`) keeps a command-line run or another replica
//! from running at the same time: a round that finds the lock taken, or
//! finds under it that someone else just ran, is skipped.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

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
            let mut first = true;
            loop {
                let last = self.last_success().await;
                let wait = next_wait(last, every, SystemTime::now(), first);
                first = false;
                tokio::time::sleep(wait).await;
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

/// A store that has never had a run gets its first this soon after start
/// (or `every`, if shorter): a server restarted more often than `every`
/// must not put its first run off for ever.
const FIRST_RUN: Duration = Duration::from_secs(600);

/// How long to wait before the next round: until `every` after the last
/// good run (anyone's, from the store's record); with none, `every` (the
/// first round after start: at most `FIRST_RUN`).
fn next_wait(last: Option<SystemTime>, every: Duration, now: SystemTime, first: bool) -> Duration {
    match last.and_then(|t| (t + every).duration_since(now).ok()) {
        Some(wait) if !wait.is_zero() => wait,
        _ if first => every.min(FIRST_RUN),
        _ => every,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_round_is_every_after_the_last_good_run_anywhere() {
        let now = SystemTime::now();
        let hour = Duration::from_secs(3600);
        let day = 24 * hour;
        // Never ran: soon after start, then every `every`.
        assert_eq!(next_wait(None, day, now, true), FIRST_RUN);
        assert_eq!(
            next_wait(None, Duration::from_secs(1), now, true),
            Duration::from_secs(1)
        );
        assert_eq!(next_wait(None, day, now, false), day);
        // Ran an hour ago (here or on another replica): 23 hours from now.
        assert_eq!(next_wait(Some(now - hour), day, now, true), 23 * hour);
        assert_eq!(next_wait(Some(now - hour), day, now, false), 23 * hour);
        // Overdue (a restart after two days): soon after start.
        assert_eq!(next_wait(Some(now - 2 * day), day, now, true), FIRST_RUN);
        // The last round failed: again after `every`.
        assert_eq!(next_wait(Some(now - 2 * day), day, now, false), day);
    }
}
