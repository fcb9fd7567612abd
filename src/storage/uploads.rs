//! Blob upload sessions: `_uploads/<id>/data` written as chunks arrive, hashed
//! while written, verified and renamed into `blobs/` on commit.
//!
//! Sessions live on disk, so they survive a restart; the running SHA-256 state
//! is kept in memory as an optimisation and rebuilt from the data file when it
//! is missing (after a restart) or does not match the file. Each chunk is
//! all-or-nothing while the server runs: a chunk that fails part-way is cut
//! back off the file, so the reported offset is what was received. After a
//! crash (kill -9) the file may also hold part of a chunk that was never
//! acknowledged; those bytes are correct, and a client resuming from the
//! reported `Range` completes the blob (tests/crash.rs checks both).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use cap_std::fs::{Dir, OpenOptions};
use futures_util::{Stream, StreamExt};
use sha2::{Digest as _, Sha256, Sha512};
use tokio::sync::{mpsc, Mutex as AsyncMutex, OwnedMutexGuard};

use super::{paths, remove_tree, sync_dir, write_link, Result, Storage, StorageError};
use crate::reference::{Algorithm, Digest, RepositoryName, UploadId};

/// How many body frames may wait for the writer thread; bounds memory per upload.
const CHANNEL_FRAMES: usize = 32;
/// Most bytes gathered into one vectored write.
const WRITE_BATCH: usize = 1 << 20;
/// Bytes written between two requests to start writeback.
const WRITEBACK_STEP: u64 = 2 << 20;
/// Read size when a session's hash is rebuilt from its file.
const READ_BUFFER: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadStatus {
    /// Bytes received so far.
    pub size: u64,
}

/// The running hash of a session's data file and how many bytes it covers.
#[derive(Default)]
pub(super) struct Progress {
    hashed: Option<(Sha256, u64)>,
}

/// Sessions whose hash state is cached; past this, idle entries are dropped
/// (their state is rebuilt from disk if they come back).
const MAX_CACHED_SESSIONS: usize = 1024;

#[derive(Default)]
pub(super) struct Sessions {
    live: Mutex<HashMap<UploadId, Arc<AsyncMutex<Progress>>>>,
}

impl Sessions {
    async fn lock(&self, id: UploadId) -> OwnedMutexGuard<Progress> {
        let entry = {
            let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            if live.len() >= MAX_CACHED_SESSIONS && !live.contains_key(&id) {
                // Only entries nobody holds a lock on (strong count 1) may go.
                live.retain(|_, e| Arc::strong_count(e) > 1);
            }
            Arc::clone(live.entry(id).or_default())
        };
        entry.lock_owned().await
    }

    fn forget(&self, id: UploadId) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.remove(&id);
    }
}

/// A chunk to append: where the client says it starts, and how long it says it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChunkBounds {
    pub start: Option<u64>,
    pub length: Option<u64>,
}

impl Storage {
    /// Creates an empty upload session in `name`.
    pub async fn start_upload(&self, name: &RepositoryName) -> Result<UploadId> {
        let name = name.clone();
        self.blocking(move |root| {
            let id = UploadId::new();
            root.create_dirs(&paths::upload_dir(&name, id))?;
            root.create_file(&paths::upload_data(&name, id))?;
            let started = humantime::format_rfc3339_nanos(SystemTime::now()).to_string();
            root.create_file(&paths::upload_started_at(&name, id))?
                .write_all(started.as_bytes())?;
            Ok(id)
        })
        .await
    }

    /// How many bytes the session has received.
    pub async fn upload_status(&self, name: &RepositoryName, id: UploadId) -> Result<UploadStatus> {
        let name = name.clone();
        self.blocking(move |root| session_size(root, &name, id))
            .await
    }

    /// Appends one chunk (a PATCH body, or the body of the final PUT).
    pub async fn append_upload<S, E>(
        &self,
        name: &RepositoryName,
        id: UploadId,
        bounds: ChunkBounds,
        body: S,
    ) -> Result<UploadStatus>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut progress = self.uploads.lock(id).await;
        let result = self
            .append_locked(&mut progress, name, id, bounds, body)
            .await;
        drop(progress);
        if matches!(result, Err(StorageError::UploadUnknown(_))) {
            self.uploads.forget(id);
        }
        result
    }

    async fn append_locked<S, E>(
        &self,
        progress: &mut Progress,
        name: &RepositoryName,
        id: UploadId,
        bounds: ChunkBounds,
        mut body: S,
    ) -> Result<UploadStatus>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let (hasher, size) = self.current_hash(progress, name, id).await?;
        if let Some(start) = bounds.start {
            if start != size {
                return Err(StorageError::UploadOutOfOrder {
                    expected: size,
                    got: start,
                });
            }
        }

        let (tx, rx) = mpsc::channel::<Bytes>(CHANNEL_FRAMES);
        let writer = {
            let root = Arc::clone(&self.root);
            let path = paths::upload_data(name, id);
            let hasher = hasher.clone();
            tokio::task::spawn_blocking(move || write_chunk(&root, &path, hasher, rx))
        };

        let mut received: u64 = 0;
        let mut failure = None;
        let mut writer_gone = false;
        while let Some(frame) = body.next().await {
            match frame {
                Ok(bytes) => {
                    received += bytes.len() as u64;
                    if bounds.length.is_some_and(|declared| received > declared) {
                        failure = Some(StorageError::SizeMismatch {
                            declared: bounds.length.unwrap_or(0),
                            actual: received,
                        });
                        break;
                    }
                    if tx.send(bytes).await.is_err() {
                        // The writer failed (a full disk, say): its error is
                        // the answer, not the length the body did not reach.
                        writer_gone = true;
                        break;
                    }
                }
                Err(e) => {
                    failure = Some(StorageError::Body(e.to_string()));
                    break;
                }
            }
        }
        drop(tx);
        let written = writer
            .await
            .map_err(|e| io::Error::other(format!("upload writer failed: {e}")))?;

        if failure.is_none() && !writer_gone && written.is_ok() {
            if let Some(declared) = bounds.length {
                if declared != received {
                    failure = Some(StorageError::SizeMismatch {
                        declared,
                        actual: received,
                    });
                }
            }
        }
        match (written, failure) {
            (Ok(new_hasher), None) => {
                let new_size = size + received;
                progress.hashed = Some((new_hasher, new_size));
                Ok(UploadStatus { size: new_size })
            }
            (written, failure) => {
                // Cut the partial chunk back off so the session stays consistent.
                let root = Arc::clone(&self.root);
                let path = paths::upload_data(name, id);
                self.blocking(move |_| {
                    let file = root.open_with(&path, OpenOptions::new().write(true))?;
                    file.set_len(size)?;
                    file.sync_data()?;
                    Ok(())
                })
                .await?;
                progress.hashed = Some((hasher, size));
                Err(failure.unwrap_or_else(|| match written {
                    Err(e) => StorageError::Io(e),
                    Ok(_) => StorageError::Io(io::Error::other("upload write stopped")),
                }))
            }
        }
    }

    /// The SHA-256 state of the session's data so far, rebuilt from disk if needed.
    async fn current_hash(
        &self,
        progress: &mut Progress,
        name: &RepositoryName,
        id: UploadId,
    ) -> Result<(Sha256, u64)> {
        let name = name.clone();
        let known = progress.hashed.clone();
        let state = self
            .blocking(move |root| {
                let size = session_size(root, &name, id)?.size;
                match known {
                    Some((hasher, hashed)) if hashed == size => Ok((hasher, size)),
                    _ => {
                        let file = root.open(paths::upload_data(&name, id))?;
                        let mut hasher = Sha256::new();
                        let hashed = hash_reader(file, &mut hasher)?;
                        Ok((hasher, hashed))
                    }
                }
            })
            .await?;
        progress.hashed = Some(state.clone());
        Ok(state)
    }

    /// Appends a last chunk if one is given, verifies the digest, and makes the
    /// blob visible in `name`. On a digest mismatch the session is removed.
    pub async fn commit_upload<S, E>(
        &self,
        name: &RepositoryName,
        id: UploadId,
        expected: &Digest,
        bounds: ChunkBounds,
        body: S,
    ) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut progress = self.uploads.lock(id).await;
        let status = match self
            .append_locked(&mut progress, name, id, bounds, body)
            .await
        {
            Ok(status) => status,
            Err(e) => {
                drop(progress);
                if matches!(e, StorageError::UploadUnknown(_)) {
                    self.uploads.forget(id);
                }
                return Err(e);
            }
        };
        let (hasher, _) = self.current_hash(&mut progress, name, id).await?;
        let (name, expected) = (name.clone(), expected.clone());
        let result = self
            .blocking(move |root| {
                let data = paths::upload_data(&name, id);
                let actual = match expected.algorithm() {
                    Algorithm::Sha256 => {
                        Digest::from_parts(Algorithm::Sha256, &hex::encode(hasher.finalize()))
                    }
                    Algorithm::Sha512 => {
                        let mut h = Sha512::new();
                        hash_reader(root.open(&data)?, &mut h)?;
                        Digest::from_parts(Algorithm::Sha512, &hex::encode(h.finalize()))
                    }
                }
                .ok_or_else(|| io::Error::other("hash output is not a digest"))?;
                if actual != expected {
                    remove_tree(root, &paths::upload_dir(&name, id))?;
                    return Err(StorageError::DigestMismatch { expected, actual });
                }
                // Chunks were fsynced as they were acknowledged; now publish atomically.
                let blob_dir = paths::blob_dir(&expected);
                root.create_dirs(&blob_dir)?;
                root.rename(&data, root, paths::blob_data(&expected))?;
                sync_dir(root, &blob_dir)?;
                write_link(root, &paths::layer_link(&name, &expected), &expected)?;
                remove_tree(root, &paths::upload_dir(&name, id))?;
                Ok(status.size)
            })
            .await;
        drop(progress);
        if matches!(
            result,
            Ok(_) | Err(StorageError::DigestMismatch { .. } | StorageError::UploadUnknown(_))
        ) {
            self.uploads.forget(id);
        }
        result
    }

    /// Ends a session without creating a blob.
    pub async fn cancel_upload(&self, name: &RepositoryName, id: UploadId) -> Result<()> {
        let progress = self.uploads.lock(id).await;
        let name = name.clone();
        let result = self
            .blocking(move |root| {
                session_size(root, &name, id)?;
                remove_tree(root, &paths::upload_dir(&name, id))?;
                Ok(())
            })
            .await;
        drop(progress);
        self.uploads.forget(id);
        result
    }
}

fn session_size(root: &Dir, name: &RepositoryName, id: UploadId) -> Result<UploadStatus> {
    match root.metadata(paths::upload_data(name, id)) {
        Ok(meta) if meta.is_file() => Ok(UploadStatus { size: meta.len() }),
        Ok(_) => Err(StorageError::UploadUnknown(id)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StorageError::UploadUnknown(id)),
        Err(e) => Err(e.into()),
    }
}

/// The writer thread of one chunk: appends and hashes frames as they arrive,
/// then makes them durable before the chunk is acknowledged.
///
/// Frames are written as they are, gathered into vectored writes of up to
/// [`WRITE_BATCH`] (no copy into a buffer), and the kernel is asked to start
/// writing each [`WRITEBACK_STEP`] back to disk while more arrives, so the
/// `fdatasync` before the acknowledgement finds little left to do.
fn write_chunk(
    root: &Dir,
    path: &std::path::Path,
    mut hasher: Sha256,
    mut frames: mpsc::Receiver<Bytes>,
) -> io::Result<Sha256> {
    let mut file = root.open_with(path, OpenOptions::new().append(true))?;
    let mut position = file.metadata()?.len();
    let mut flushed = position;
    let mut batch: Vec<Bytes> = Vec::with_capacity(64);
    while let Some(frame) = frames.blocking_recv() {
        let mut pending = frame.len();
        batch.push(frame);
        while pending < WRITE_BATCH && batch.len() < batch.capacity() {
            match frames.try_recv() {
                Ok(frame) => {
                    pending += frame.len();
                    batch.push(frame);
                }
                Err(_) => break,
            }
        }
        for frame in &batch {
            hasher.update(frame);
        }
        write_all_vectored(&mut file, &batch)?;
        batch.clear();
        position += pending as u64;
        if position - flushed >= WRITEBACK_STEP {
            start_writeback(&file, flushed, position - flushed);
            flushed = position;
        }
    }
    file.sync_data()?;
    Ok(hasher)
}

/// Writes every frame, in order, with as few `writev` calls as the kernel allows.
fn write_all_vectored(file: &mut cap_std::fs::File, frames: &[Bytes]) -> io::Result<()> {
    let mut slices: Vec<io::IoSlice<'_>> = frames.iter().map(|f| io::IoSlice::new(f)).collect();
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => io::IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Asks the kernel to start writing `len` bytes from `offset` back to disk,
/// without waiting: only a head start for the `fdatasync` that follows, so a
/// failure is ignored (the `fdatasync` reports real ones).
#[cfg(target_os = "linux")]
fn start_writeback(file: &cap_std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: the descriptor is open for the duration of the call, and
    // sync_file_range reads no memory of ours.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset,
            len,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &cap_std::fs::File, _offset: u64, _len: u64) {}

pub(super) fn hash_reader(
    mut reader: impl Read,
    hasher: &mut impl sha2::Digest,
) -> io::Result<u64> {
    let mut buf = vec![0u8; READ_BUFFER];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
}
