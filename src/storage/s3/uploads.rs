//! Blob uploads on the object store.
//!
//! A body is hashed as it streams and sent to an S3 multipart upload on a
//! staging key (`repositories/<name>/_uploads/<id>/data`) in parts of
//! `storage.part_size`; only the part being filled and at most two parts in
//! flight are in memory, whatever the blob's size. On commit the digest is
//! checked before the multipart upload is completed, and the staging object
//! is copied to the blob's content address: nothing under `blobs/` is ever
//! a partial or unverified blob.
//!
//! A session is an object (`repositories/<name>/_uploads/<id>/session`: the
//! multipart upload's id, its parts' etags, the bytes received and the
//! SHA-256 state), so a `PATCH` or the final `PUT` can reach any replica. What a `PATCH` leaves
//! short of a whole part goes to a tail object (S3 refuses parts under
//! 5 MiB except the last) that the next request of the session picks up.
//! A chunk is all-or-nothing: the session object is written last, so a
//! chunk that fails part-way leaves the session as it was (the parts it sent
//! are overwritten by the retry, which reuses their numbers).

use bytes::{Bytes, BytesMut};
use futures_util::stream::{FuturesOrdered, Stream, StreamExt};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{
    MultipartId, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion,
};
use serde::{Deserialize, Serialize};
use sha2::digest::common::hazmat::SerializableState;
use sha2::{Digest as _, Sha256, Sha512};

use super::{Conditional, S3Storage};
use crate::reference::{Algorithm, Digest, RepositoryName, UploadId};
use crate::storage::uploads::ChunkBounds;
use crate::storage::{paths, Result, StorageError, UploadStatus};

/// Parts sent to the store at once per upload.
const PARTS_IN_FLIGHT: usize = 2;

/// What a session object holds.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Session {
    repository: String,
    /// The S3 multipart upload, once the first whole part was sent.
    multipart: Option<String>,
    /// Etags of the parts sent, in order.
    parts: Vec<String>,
    /// Bytes received in all.
    pub(super) size: u64,
    /// Of which the last `tail` are in the tail object, not yet in a part.
    tail: u64,
    /// The SHA-256 state over all `size` bytes (hex).
    sha256_state: String,
    /// Unix seconds when the session was started.
    started: u64,
    /// The user who started it (`""`: an anonymous caller); only they may
    /// continue it. Absent in sessions written before owners were kept,
    /// which anyone allowed to push may continue.
    #[serde(default)]
    owner: Option<String>,
}

/// An upload in progress in this request.
struct Ingest {
    staging: Path,
    multipart: Option<MultipartId>,
    /// Whether this request created the multipart upload (it aborts it on failure).
    created_multipart: bool,
    parts: Vec<PartId>,
    size: u64,
    hasher: Sha256,
    /// Bytes received and hashed but not yet sent in a part.
    buf: BytesMut,
}

fn save_state(hasher: &Sha256) -> String {
    hex::encode(hasher.serialize())
}

fn load_state(hex_state: &str) -> Option<Sha256> {
    let bytes = hex::decode(hex_state).ok()?;
    let state =
        sha2::digest::common::hazmat::SerializedState::<Sha256>::try_from(bytes.as_slice()).ok()?;
    Sha256::deserialize(&state).ok()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn session_key(storage: &S3Storage, name: &RepositoryName, id: UploadId) -> Path {
    storage.key(paths::upload_dir(name, id).join("session"))
}

fn tail_key(storage: &S3Storage, name: &RepositoryName, id: UploadId, end: u64) -> Path {
    storage.key(paths::upload_dir(name, id).join(format!("tail-{end}")))
}

impl S3Storage {
    pub async fn start_upload(
        &self,
        name: &RepositoryName,
        owner: Option<&str>,
    ) -> Result<UploadId> {
        let id = UploadId::new();
        let session = Session {
            repository: name.to_string(),
            multipart: None,
            parts: Vec::new(),
            size: 0,
            tail: 0,
            sha256_state: save_state(&Sha256::new()),
            started: unix_now(),
            owner: Some(owner.unwrap_or_default().to_owned()),
        };
        self.save_session(name, id, &session, None).await?;
        Ok(id)
    }

    pub async fn upload_owner(
        &self,
        name: &RepositoryName,
        id: UploadId,
    ) -> Result<Option<String>> {
        let (session, _) = self.load_session(name, id).await?;
        Ok(session.owner)
    }

    pub(super) async fn load_session(
        &self,
        name: &RepositoryName,
        id: UploadId,
    ) -> Result<(Session, Option<String>)> {
        let key = session_key(self, name, id);
        let Some((bytes, e_tag)) = self.get_small(&key, 1 << 20).await? else {
            return Err(StorageError::UploadUnknown(id));
        };
        let session: Session = serde_json::from_slice(&bytes).map_err(|e| {
            StorageError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("corrupt upload session {key}: {e}"),
            ))
        })?;
        if session.repository != name.as_str() {
            return Err(StorageError::UploadUnknown(id));
        }
        Ok((session, e_tag))
    }

    /// Writes the session object; with `previous` (its etag when read) on a
    /// store that enforces conditional writes, only if nobody else wrote it since.
    async fn save_session(
        &self,
        name: &RepositoryName,
        id: UploadId,
        session: &Session,
        previous: Option<Option<String>>,
    ) -> Result<()> {
        let key = session_key(self, name, id);
        let bytes = serde_json::to_vec(session)
            .map_err(|e| StorageError::Io(std::io::Error::other(e.to_string())))?;
        let mode = match (self.conditional, previous) {
            (Conditional::Enforced, Some(e_tag @ Some(_))) => PutMode::Update(UpdateVersion {
                e_tag,
                version: None,
            }),
            _ => PutMode::Overwrite,
        };
        let options = PutOptions {
            mode,
            ..Default::default()
        };
        match self
            .s3
            .put_opts(&key, PutPayload::from(bytes), options)
            .await
        {
            Ok(_) => Ok(()),
            Err(object_store::Error::Precondition { .. }) => {
                // Another request of the same session got there first.
                let (now, _) = self.load_session(name, id).await?;
                Err(StorageError::UploadOutOfOrder {
                    expected: now.size,
                    got: session.size,
                })
            }
            Err(e) => Err(self.unavailable(e)),
        }
    }

    pub async fn upload_status(&self, name: &RepositoryName, id: UploadId) -> Result<UploadStatus> {
        let (session, _) = self.load_session(name, id).await?;
        Ok(UploadStatus { size: session.size })
    }

    /// The session's state, ready to take more bytes: its tail read back.
    async fn resume(
        &self,
        name: &RepositoryName,
        id: UploadId,
        session: &Session,
    ) -> Result<Ingest> {
        let hasher = load_state(&session.sha256_state).ok_or_else(|| {
            StorageError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("upload session {id}: unreadable hash state"),
            ))
        })?;
        let mut buf = BytesMut::with_capacity(self.part_size);
        if session.tail > 0 {
            let key = tail_key(self, name, id, session.size);
            match self.get_small(&key, session.tail).await? {
                Some((bytes, _)) if bytes.len() as u64 == session.tail => {
                    buf.extend_from_slice(&bytes)
                }
                _ => {
                    return Err(StorageError::Io(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("upload session {id}: its tail object {key} is missing"),
                    )))
                }
            }
        }
        Ok(Ingest {
            staging: self.key(paths::upload_data(name, id)),
            multipart: session.multipart.clone(),
            created_multipart: false,
            parts: session
                .parts
                .iter()
                .map(|content_id| PartId {
                    content_id: content_id.clone(),
                })
                .collect(),
            size: session.size,
            hasher,
            buf,
        })
    }

    /// Takes a body into `ingest`: hashed, and sent in whole parts as they
    /// fill. Checks the body against its declared length.
    async fn feed<S, E>(
        &self,
        ingest: &mut Ingest,
        body: &mut S,
        declared: Option<u64>,
    ) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut received: u64 = 0;
        let mut in_flight = FuturesOrdered::new();
        while let Some(frame) = body.next().await {
            let bytes = frame.map_err(|e| StorageError::Body(e.to_string()))?;
            received += bytes.len() as u64;
            if let Some(declared) = declared.filter(|d| received > *d) {
                return Err(StorageError::SizeMismatch {
                    declared,
                    actual: received,
                });
            }
            ingest.hasher.update(&bytes);
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                // Parts of exactly `part_size`: the buffer never grows past
                // its first allocation.
                let room = self.part_size - ingest.buf.len();
                let (now, later) = rest.split_at(room.min(rest.len()));
                ingest.buf.extend_from_slice(now);
                rest = later;
                if ingest.buf.len() < self.part_size {
                    continue;
                }
                let part =
                    std::mem::replace(&mut ingest.buf, BytesMut::with_capacity(self.part_size));
                let upload = self.multipart_of(ingest).await?;
                let index = ingest.parts.len() + in_flight.len();
                let (s3, staging) = (std::sync::Arc::clone(&self.s3), ingest.staging.clone());
                // A task of its own: the part goes out while the body keeps
                // coming in (a future merely queued here would not progress).
                in_flight.push_back(AbortOnDrop(tokio::spawn(async move {
                    s3.put_part(&staging, &upload, index, PutPayload::from(part.freeze()))
                        .await
                })));
                if in_flight.len() >= PARTS_IN_FLIGHT {
                    if let Some(done) = in_flight.next().await {
                        ingest.parts.push(self.part_result(done)?);
                    }
                }
            }
        }
        while let Some(done) = in_flight.next().await {
            ingest.parts.push(self.part_result(done)?);
        }
        if let Some(declared) = declared.filter(|d| *d != received) {
            return Err(StorageError::SizeMismatch {
                declared,
                actual: received,
            });
        }
        ingest.size += received;
        Ok(received)
    }

    fn part_result(
        &self,
        done: std::result::Result<object_store::Result<PartId>, tokio::task::JoinError>,
    ) -> Result<PartId> {
        match done {
            Ok(part) => part.map_err(|e| self.unavailable(e)),
            Err(e) => Err(StorageError::Io(std::io::Error::other(format!(
                "part upload task failed: {e}"
            )))),
        }
    }

    /// The upload's multipart id, created on first use.
    async fn multipart_of(&self, ingest: &mut Ingest) -> Result<MultipartId> {
        if let Some(id) = &ingest.multipart {
            return Ok(id.clone());
        }
        let id = self
            .s3
            .create_multipart(&ingest.staging)
            .await
            .map_err(|e| self.unavailable(e))?;
        ingest.multipart = Some(id.clone());
        ingest.created_multipart = true;
        Ok(id)
    }

    /// Drops what a failed request of `ingest` started on the store.
    async fn abandon(&self, ingest: &Ingest, whole_upload: bool) {
        if let Some(id) = &ingest.multipart {
            if ingest.created_multipart || whole_upload {
                let _ = self.s3.abort_multipart(&ingest.staging, id).await;
            }
        }
    }

    /// Verifies the bytes of `ingest` against `expected` and makes the blob
    /// visible in `name`. Returns its size.
    async fn publish(
        &self,
        mut ingest: Ingest,
        name: &RepositoryName,
        expected: &Digest,
    ) -> Result<u64> {
        let blob_key = self.key(paths::blob_data(expected));
        let size = ingest.size;
        let sha256 = || {
            Digest::from_parts(
                Algorithm::Sha256,
                &hex::encode(ingest.hasher.clone().finalize()),
            )
        };
        match ingest.multipart.clone() {
            None => {
                // The whole blob is in memory (smaller than one part).
                let bytes = ingest.buf.split().freeze();
                let actual = match expected.algorithm() {
                    Algorithm::Sha256 => sha256(),
                    Algorithm::Sha512 => {
                        Digest::from_parts(Algorithm::Sha512, &hex::encode(Sha512::digest(&bytes)))
                    }
                };
                check_digest(expected, actual)?;
                if self.size_of(&blob_key).await? != Some(size) {
                    self.put(&blob_key, bytes).await?;
                }
            }
            Some(upload) => {
                if expected.algorithm() == Algorithm::Sha256 {
                    // Checked before the upload is completed: a wrong blob
                    // never exists as an object at all.
                    if let Err(e) = check_digest(expected, sha256()) {
                        self.abandon(&ingest, true).await;
                        return Err(e);
                    }
                }
                if !ingest.buf.is_empty() {
                    let last = ingest.buf.split().freeze();
                    let part = self
                        .s3
                        .put_part(
                            &ingest.staging,
                            &upload,
                            ingest.parts.len(),
                            PutPayload::from(last),
                        )
                        .await
                        .map_err(|e| self.unavailable(e))?;
                    ingest.parts.push(part);
                }
                self.s3
                    .complete_multipart(&ingest.staging, &upload, std::mem::take(&mut ingest.parts))
                    .await
                    .map_err(|e| self.unavailable(e))?;
                if expected.algorithm() == Algorithm::Sha512 {
                    let actual = self.hash_object(&ingest.staging).await?;
                    if let Err(e) = check_digest(expected, Some(actual)) {
                        self.delete(&ingest.staging).await?;
                        return Err(e);
                    }
                }
                if self.size_of(&blob_key).await? != Some(size) {
                    self.s3
                        .copy(&ingest.staging, &blob_key)
                        .await
                        .map_err(|e| self.unavailable(e))?;
                }
                self.delete(&ingest.staging).await?;
            }
        }
        self.write_link(paths::layer_link(name, expected), expected)
            .await?;
        Ok(size)
    }

    /// SHA-512 of an object, streamed.
    async fn hash_object(&self, key: &Path) -> Result<Digest> {
        let got = self.data.get(key).await.map_err(|e| self.unavailable(e))?;
        let mut chunks = got.into_stream();
        let mut hasher = Sha512::new();
        while let Some(chunk) = chunks.next().await {
            hasher.update(chunk.map_err(|e| self.unavailable(e))?);
        }
        Digest::from_parts(Algorithm::Sha512, &hex::encode(hasher.finalize()))
            .ok_or_else(|| StorageError::Io(std::io::Error::other("hash output is not a digest")))
    }

    /// Appends a chunk to a session: any replica may take any chunk.
    pub async fn append_upload<S, E>(
        &self,
        name: &RepositoryName,
        id: UploadId,
        bounds: ChunkBounds,
        mut body: S,
    ) -> Result<UploadStatus>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let (session, e_tag) = self.load_session(name, id).await?;
        check_start(&session, bounds)?;
        let mut ingest = self.resume(name, id, &session).await?;
        if let Err(e) = self.feed(&mut ingest, &mut body, bounds.length).await {
            self.abandon(&ingest, false).await;
            return Err(e);
        }
        // The bytes short of a part wait in a tail object named by the
        // session's new size, so the session object (written last) and its
        // tail always agree.
        let tail = ingest.buf.split().freeze();
        let tail_len = tail.len() as u64;
        if tail_len > 0 {
            self.put(&tail_key(self, name, id, ingest.size), tail)
                .await?;
        }
        let updated = Session {
            repository: session.repository.clone(),
            multipart: ingest.multipart.clone(),
            parts: ingest.parts.iter().map(|p| p.content_id.clone()).collect(),
            size: ingest.size,
            tail: tail_len,
            sha256_state: save_state(&ingest.hasher),
            started: session.started,
            owner: session.owner.clone(),
        };
        self.save_session(name, id, &updated, Some(e_tag)).await?;
        if session.tail > 0 && session.size != ingest.size {
            let _ = self.delete(&tail_key(self, name, id, session.size)).await;
        }
        Ok(UploadStatus { size: ingest.size })
    }

    /// Takes the last chunk (if any), verifies the digest and publishes the blob.
    pub async fn commit_upload<S, E>(
        &self,
        name: &RepositoryName,
        id: UploadId,
        expected: &Digest,
        bounds: ChunkBounds,
        mut body: S,
    ) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let (session, _) = self.load_session(name, id).await?;
        check_start(&session, bounds)?;
        let mut ingest = self.resume(name, id, &session).await?;
        if let Err(e) = self.feed(&mut ingest, &mut body, bounds.length).await {
            self.abandon(&ingest, false).await;
            return Err(e);
        }
        match self.publish(ingest, name, expected).await {
            Ok(size) => {
                self.delete_tree(paths::upload_dir(name, id)).await?;
                Ok(size)
            }
            Err(e @ StorageError::DigestMismatch { .. }) => {
                // As on the filesystem: a session whose digest failed is gone.
                self.delete_tree(paths::upload_dir(name, id)).await?;
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// A whole blob in one request (`POST ?digest=`): no session object.
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
        let mut ingest = Ingest {
            staging: self.key(paths::upload_data(name, UploadId::new())),
            multipart: None,
            created_multipart: false,
            parts: Vec::new(),
            size: 0,
            hasher: Sha256::new(),
            buf: BytesMut::with_capacity(self.part_size.min(declared.unwrap_or(u64::MAX) as usize)),
        };
        if let Err(e) = self.feed(&mut ingest, &mut body, declared).await {
            self.abandon(&ingest, true).await;
            return Err(e);
        }
        self.publish(ingest, name, expected).await
    }

    pub async fn cancel_upload(&self, name: &RepositoryName, id: UploadId) -> Result<()> {
        let (session, _) = self.load_session(name, id).await?;
        if let Some(upload) = session.multipart {
            let staging = self.key(paths::upload_data(name, id));
            let _ = self.s3.abort_multipart(&staging, &upload).await;
        }
        self.delete_tree(paths::upload_dir(name, id)).await?;
        Ok(())
    }

    /// Removes a session and its multipart upload (expiry, gc).
    pub(super) async fn remove_session(&self, name: &RepositoryName, id: UploadId) -> Result<u64> {
        let size = match self.load_session(name, id).await {
            Ok((session, _)) => {
                if let Some(upload) = session.multipart {
                    let staging = self.key(paths::upload_data(name, id));
                    let _ = self.s3.abort_multipart(&staging, &upload).await;
                }
                session.size
            }
            Err(_) => 0,
        };
        self.delete_tree(paths::upload_dir(name, id)).await?;
        Ok(size)
    }
}

/// A part upload's task, cancelled when the request that started it fails
/// or goes away (its parts are then simply not in the session).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> std::future::Future for AbortOnDrop<T> {
    type Output = std::result::Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn check_start(session: &Session, bounds: ChunkBounds) -> Result<()> {
    match bounds.start {
        Some(start) if start != session.size => Err(StorageError::UploadOutOfOrder {
            expected: session.size,
            got: start,
        }),
        _ => Ok(()),
    }
}

fn check_digest(expected: &Digest, actual: Option<Digest>) -> Result<()> {
    let actual = actual
        .ok_or_else(|| StorageError::Io(std::io::Error::other("hash output is not a digest")))?;
    if &actual != expected {
        return Err(StorageError::DigestMismatch {
            expected: expected.clone(),
            actual,
        });
    }
    Ok(())
}
