//! Never two gc runs at once: on the filesystem an `flock`ed file next to
//! the data (`<storage.root>/portcullis/gc.lock`), which the server's
//! schedule and `portcullis gc` / `portcullis retention` both take, and
//! which the kernel releases when its holder dies; on S3 a lease in the
//! bucket where the store enforces conditional writes
//! (`storage::s3::lease`). On S3 without them there is nothing a replica can
//! lock: the schedule runs only on the replica the operator names
//! (`gc.single_replica`), see `Maintenance::check_schedule`.

use std::io;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::storage::s3::{LeaseOutcome, LeaseTicket};
use crate::storage::Storage;

use super::MaintenanceError;

/// The lease's name in the bucket.
const LEASE: &str = "gc";

/// Held while a run goes on.
pub enum Exclusion {
    /// The flocked lock file (closing it releases the lock).
    File(std::fs::File),
    Lease(LeaseTicket),
    /// S3 without conditional writes: the operator's promise.
    Unguarded,
}

/// Where the filesystem backend's lock file is.
pub fn lock_path(storage_root: &Path) -> PathBuf {
    storage_root.join("portcullis/gc.lock")
}

/// Takes the lock, or says who has it (`Busy`).
pub async fn exclude(
    storage: &Storage,
    lock_file: &Path,
    holder: &str,
    ttl: Duration,
) -> Result<Exclusion, MaintenanceError> {
    match storage {
        Storage::Filesystem(_) => {
            let path = lock_file.to_owned();
            tokio::task::spawn_blocking(move || lock_file_at(&path))
                .await
                .map_err(|e| MaintenanceError::Lock {
                    path: lock_file.display().to_string(),
                    source: io::Error::other(e.to_string()),
                })?
        }
        Storage::S3(s3) if s3.enforces_conditional_writes() => {
            match s3.acquire_lease(LEASE, holder, ttl).await? {
                LeaseOutcome::Acquired(ticket) => Ok(Exclusion::Lease(ticket)),
                LeaseOutcome::Held { holder, expires } => Err(MaintenanceError::Busy(format!(
                    "the gc lease in the bucket is held by {holder:?} until {}",
                    chrono::DateTime::from_timestamp(expires, 0)
                        .map(|t| t.to_rfc3339())
                        .unwrap_or_default()
                ))),
            }
        }
        Storage::S3(_) => Ok(Exclusion::Unguarded),
    }
}

fn lock_file_at(path: &Path) -> Result<Exclusion, MaintenanceError> {
    let failed = |source: io::Error| MaintenanceError::Lock {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .create(dir)
            .map_err(failed)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o640)
        .open(path)
        .map_err(failed)?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Exclusion::File(file)),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(MaintenanceError::Busy(format!(
            "another gc or retention run holds {}",
            path.display()
        ))),
        Err(e) => Err(failed(e.into())),
    }
}
