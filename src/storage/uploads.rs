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

use super::{
    move_into, paths, remove_tree, stage_file, sync_dir, FsStorage, Result, Root, StorageError,
};
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

/// What the request side sends its writer thread: the body's frames, then
/// `Done` once the whole body has arrived as declared. A writer whose channel
/// closes without `Done` keeps nothing (the body was cut short or refused).
enum Frame {
    Data(Bytes),
    Done,
}

/// Feeds `body` to a writer thread, checking it against the declared length.
/// Returns the bytes received and, when the body itself is at fault, why.
/// A writer that stopped (a full disk, say) ends the loop with no fault of
/// the body's: its own error is the answer.
async fn pump<S, E>(
    body: &mut S,
    declared: Option<u64>,
    tx: mpsc::Sender<Frame>,
) -> (u64, Option<StorageError>)
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut received: u64 = 0;
    while let Some(frame) = body.next().await {
        match frame {
            Ok(bytes) => {
                received += bytes.len() as u64;
                if let Some(declared) = declared.filter(|d| received > *d) {
                    let actual = received;
                    return (
                        received,
                        Some(StorageError::SizeMismatch { declared, actual }),
                    );
                }
                if tx.send(Frame::Data(bytes)).await.is_err() {
                    return (received, None);
                }
            }
            Err(e) => return (received, Some(StorageError::Body(e.to_string()))),
        }
    }
    if let Some(declared) = declared.filter(|d| *d != received) {
        let actual = received;
        return (
            received,
            Some(StorageError::SizeMismatch { declared, actual }),
        );
    }
    // Only a writer that is gone refuses this; it reports its own error.
    let _ = tx.send(Frame::Done).await;
    (received, None)
}

impl FsStorage {
    /// Creates an empty upload session in `name`, belonging to `owner`.
    pub async fn start_upload(
        &self,
        name: &RepositoryName,
        owner: Option<&str>,
    ) -> Result<UploadId> {
        let name = name.clone();
        let owner = owner.map(str::to_owned);
        self.blocking(move |root| {
            let id = UploadId::new();
            root.create_dirs(&paths::upload_dir(&name, id))?;
            // The owner before the data file: a session is usable (and so
            // claimable) only once its data file exists. Empty: anonymous.
            root.create_file(&paths::upload_owner(&name, id))?
                .write_all(owner.as_deref().unwrap_or_default().as_bytes())?;
            root.create_file(&paths::upload_data(&name, id))?;
            let started = humantime::format_rfc3339_nanos(SystemTime::now()).to_string();
            root.create_file(&paths::upload_started_at(&name, id))?
                .write_all(started.as_bytes())?;
            Ok(id)
        })
        .await
    }

    /// Who started the session: the user, `""` for an anonymous caller,
    /// `None` for a session that recorded no owner (made before owners were
    /// kept, or by Distribution).
    pub async fn upload_owner(
        &self,
        name: &RepositoryName,
        id: UploadId,
    ) -> Result<Option<String>> {
        let name = name.clone();
        self.blocking(move |root| {
            session_size(root, &name, id)?;
            match root.read_to_string(paths::upload_owner(&name, id)) {
                Ok(owner) => Ok(Some(owner)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e.into()),
            }
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

        let (tx, rx) = mpsc::channel::<Frame>(CHANNEL_FRAMES);
        let writer = {
            let root = Arc::clone(&self.root);
            let path = paths::upload_data(name, id);
            let hasher = hasher.clone();
            tokio::task::spawn_blocking(move || write_chunk(&root, &path, hasher, rx))
        };
        let (received, failure) = pump(&mut body, bounds.length, tx).await;
        let written = writer
            .await
            .map_err(|e| io::Error::other(format!("upload writer failed: {e}")))?;
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
                publish_blob(root, &data, None, &name, &expected)?;
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

    /// Stores a whole blob sent in one request (`POST ?digest=`). The body is
    /// streamed into a staging file in `_tmp`, hashed with the digest's own
    /// algorithm, made durable, verified and renamed into place by one task
    /// on the blocking pool: no session directory is made, since a one-shot
    /// upload leaves nothing for a client to resume. A failed or refused body
    /// leaves nothing; a crash leaves at most a staging file, which `gc`
    /// removes. Returns the blob's size.
    pub async fn put_blob<S, E>(
        &self,
        name: &RepositoryName,
        expected: &Digest,
        declared: Option<u64>,
        mut body: S,
    ) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let (tx, rx) = mpsc::channel::<Frame>(CHANNEL_FRAMES);
        let writer = {
            let root = Arc::clone(&self.root);
            let (name, expected) = (name.clone(), expected.clone());
            tokio::task::spawn_blocking(move || store_blob(&root, &name, &expected, rx))
        };
        let (_, failure) = pump(&mut body, declared, tx).await;
        let stored = writer
            .await
            .map_err(|e| io::Error::other(format!("upload writer failed: {e}")))?;
        match failure {
            Some(e) => Err(e),
            None => stored,
        }
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

/// The writer thread of a one-shot upload: see [`FsStorage::put_blob`].
fn store_blob(
    root: &Root,
    name: &RepositoryName,
    expected: &Digest,
    mut frames: mpsc::Receiver<Frame>,
) -> Result<u64> {
    let staged = paths::temp_file();
    let mut file = root.create_file(&staged)?;
    let written = (|| -> Result<u64> {
        let (hex, size) = match expected.algorithm() {
            Algorithm::Sha256 => append_hashed::<Sha256>(&mut file, &mut frames)?,
            Algorithm::Sha512 => append_hashed::<Sha512>(&mut file, &mut frames)?,
        };
        let actual = Digest::from_parts(expected.algorithm(), &hex)
            .ok_or_else(|| io::Error::other("hash output is not a digest"))?;
        if actual != *expected {
            return Err(StorageError::DigestMismatch {
                expected: expected.clone(),
                actual,
            });
        }
        Ok(size)
    })();
    let published = written.and_then(|size| {
        publish_blob(root, &staged, Some(&file), name, expected)?;
        Ok(size)
    });
    drop(file);
    if published.is_err() {
        let _ = root.remove_file(&staged);
    }
    published
}

/// Writes every frame to the empty `file`, hashed with `H`: the hex digest
/// and the size.
fn append_hashed<H: sha2::Digest>(
    file: &mut cap_std::fs::File,
    frames: &mut mpsc::Receiver<Frame>,
) -> io::Result<(String, u64)> {
    let mut hasher = H::new();
    let size = append_frames(file, 0, &mut hasher, frames)?;
    Ok((hex::encode(hasher.finalize()), size))
}

/// Moves verified data at `data` to its content address and links it into
/// `name`. Every file and directory involved is fsynced before this returns,
/// in an order that lets a journaling filesystem commit them in two
/// transactions instead of four: both files are written before either is
/// synced (the second sync finds its file already committed), and both
/// renames are made before either directory is synced. `data_file` is the
/// data's open file when it still needs its own sync.
fn publish_blob(
    root: &Root,
    data: &std::path::Path,
    data_file: Option<&cap_std::fs::File>,
    name: &RepositoryName,
    digest: &Digest,
) -> Result<()> {
    let (blob, link) = (paths::blob_data(digest), paths::layer_link(name, digest));
    let (staged_link, link_file) = stage_file(root, digest.to_string().as_bytes())?;
    let published = (|| -> io::Result<()> {
        if let Some(data_file) = data_file {
            data_file.sync_data()?;
        }
        link_file.sync_all()?;
        let blob_dir = move_into(root, data, &blob)?;
        let link_dir = move_into(root, &staged_link, &link)?;
        sync_dir(root, blob_dir)?;
        sync_dir(root, link_dir)
    })();
    drop(link_file);
    if published.is_err() {
        let _ = root.remove_file(&staged_link);
    }
    Ok(published?)
}

/// The writer thread of one chunk: appends and hashes frames as they arrive,
/// then makes them durable before the chunk is acknowledged.
fn write_chunk(
    root: &Dir,
    path: &std::path::Path,
    mut hasher: Sha256,
    mut frames: mpsc::Receiver<Frame>,
) -> io::Result<Sha256> {
    let mut file = root.open_with(path, OpenOptions::new().append(true))?;
    let position = file.metadata()?.len();
    append_frames(&mut file, position, &mut hasher, &mut frames)?;
    file.sync_data()?;
    Ok(hasher)
}

/// Appends and hashes frames until `Done`; returns the bytes written, or an
/// error if the channel closed without `Done`.
///
/// Frames are written as they are, gathered into vectored writes of up to
/// [`WRITE_BATCH`] (no copy into a buffer), and the kernel is asked to start
/// writing each [`WRITEBACK_STEP`] back to disk while more arrives, so the
/// `fdatasync` before the acknowledgement finds little left to do.
fn append_frames(
    file: &mut cap_std::fs::File,
    mut position: u64,
    hasher: &mut impl sha2::Digest,
    frames: &mut mpsc::Receiver<Frame>,
) -> io::Result<u64> {
    let start = position;
    let mut flushed = position;
    let mut batch: Vec<Bytes> = Vec::with_capacity(64);
    let mut done = false;
    while !done {
        match frames.blocking_recv() {
            Some(Frame::Data(frame)) => batch.push(frame),
            Some(Frame::Done) => done = true,
            None => return Err(io::Error::other("the upload body ended early")),
        }
        let mut pending: usize = batch.iter().map(Bytes::len).sum();
        while !done && pending < WRITE_BATCH && batch.len() < batch.capacity() {
            match frames.try_recv() {
                Ok(Frame::Data(frame)) => {
                    pending += frame.len();
                    batch.push(frame);
                }
                Ok(Frame::Done) => done = true,
                Err(_) => break,
            }
        }
        for frame in &batch {
            hasher.update(frame);
        }
        write_all_vectored(file, &batch)?;
        batch.clear();
        position += pending as u64;
        if position - flushed >= WRITEBACK_STEP {
            start_writeback(file, flushed, position - flushed);
            flushed = position;
        }
    }
    Ok(position - start)
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
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
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
