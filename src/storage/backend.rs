//! `Storage`: the content store the API, `gc` and `fsck` use, on either
//! backend. Handlers see one type; each call goes to the filesystem
//! (`FsStorage`, cap-std) or the object store (`S3Storage`). An enum rather
//! than a trait object: the set of backends is closed, the async methods
//! stay plain `async fn` (no boxing per call), and the filesystem's hot
//! paths (manifest GET, blob reads) keep their inlined shape.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;
use indicatif::ProgressBar;

use super::blobs::{BlobReader, BlobSource};
use super::fsck::FsckReport;
use super::gc::{GcReport, Removal};
use super::s3::S3Storage;
use super::uploads::ChunkBounds;
use super::{
    BlobInfo, Descriptor, FsStorage, OpenMode, ParsedManifest, Result, StorageError,
    StorageSettings, StoredManifest, TagRecord, UploadStatus,
};
use crate::config::{Backend, StorageConfig};
use crate::reference::{Digest, Reference, RepositoryName, Tag, UploadId};

#[derive(Clone)]
pub enum Storage {
    Filesystem(FsStorage),
    S3(Arc<S3Storage>),
}

/// Calls the same method on whichever backend this is.
macro_rules! on_backend {
    ($self:expr, $s:ident => $call:expr) => {
        match $self {
            Storage::Filesystem($s) => $call,
            Storage::S3($s) => $call,
        }
    };
}

impl Storage {
    /// Opens the store the config names as `serve` does: the filesystem
    /// root (made if missing), or the bucket (probed: reachable, writable,
    /// conditional writes or not).
    pub async fn open(config: &StorageConfig) -> std::result::Result<Self, String> {
        Self::open_with(config, OpenMode::Serve).await
    }

    /// Opens the store for a command that does only what `mode` allows (see
    /// [`OpenMode`]): a missing root or bucket is an error, and nothing is
    /// made unless the mode says so.
    pub async fn open_with(
        config: &StorageConfig,
        mode: OpenMode,
    ) -> std::result::Result<Self, String> {
        let settings = StorageSettings::from_config(config)?;
        match config.backend {
            Backend::Filesystem => FsStorage::open_with(&config.root, settings, mode)
                .map(Storage::Filesystem)
                .map_err(|e| e.to_string()),
            Backend::S3 => S3Storage::open(config, settings, mode)
                .await
                .map(|s| Storage::S3(Arc::new(s)))
                .map_err(|e| e.to_string()),
        }
    }

    /// Where the content is, for messages.
    pub fn location(&self) -> String {
        match self {
            Storage::Filesystem(fs) => fs.location().display().to_string(),
            Storage::S3(s3) => s3.description().to_owned(),
        }
    }

    pub fn settings(&self) -> &StorageSettings {
        on_backend!(self, s => s.settings())
    }

    pub async fn probe_writable(&self) -> Result<()> {
        on_backend!(self, s => s.probe_writable().await)
    }

    pub async fn blob_bytes(&self) -> Result<u64> {
        on_backend!(self, s => s.blob_bytes().await)
    }

    pub async fn repository_exists(&self, name: &RepositoryName) -> Result<bool> {
        on_backend!(self, s => s.repository_exists(name).await)
    }

    pub async fn stat_blob(&self, name: &RepositoryName, digest: &Digest) -> Result<BlobInfo> {
        on_backend!(self, s => s.stat_blob(name, digest).await)
    }

    pub async fn open_blob(&self, name: &RepositoryName, digest: &Digest) -> Result<BlobReader> {
        match self {
            Storage::Filesystem(fs) => fs.open_blob(name, digest).await,
            Storage::S3(s3) => {
                let (blob, size) = s3.open_blob(name, digest).await?;
                Ok(BlobReader {
                    source: BlobSource::Remote(Box::new(blob)),
                    size,
                })
            }
        }
    }

    /// A small blob's bytes, or `None` when it is larger than `limit` (not
    /// read). For what policies read: an image's config, a signature's payload.
    pub async fn read_small_blob(
        &self,
        name: &RepositoryName,
        digest: &Digest,
        limit: u64,
    ) -> Result<Option<Vec<u8>>> {
        use futures_util::StreamExt;
        let reader = self.open_blob(name, digest).await?;
        if reader.size > limit {
            return Ok(None);
        }
        let size = reader.size;
        let mut stream = reader.stream(0, size);
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if (bytes.len() + chunk.len()) as u64 > limit {
                return Ok(None);
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Some(bytes))
    }

    /// A URL to send the client to for the blob's bytes, when the backend
    /// is set to redirect (`storage.redirect` on S3).
    pub async fn blob_url(&self, name: &RepositoryName, digest: &Digest) -> Result<Option<String>> {
        match self {
            Storage::Filesystem(_) => Ok(None),
            Storage::S3(s3) => s3.blob_url(name, digest).await,
        }
    }

    /// Makes a blob already in `from` visible in `name` (cross-repository mount).
    /// Returns `None` when `from` does not have it, so the caller starts an upload.
    pub async fn mount_blob(
        &self,
        name: &RepositoryName,
        from: &RepositoryName,
        digest: &Digest,
    ) -> Result<Option<BlobInfo>> {
        match self.stat_blob(from, digest).await {
            Ok(info) => {
                on_backend!(self, s => s.link_blob(name, digest).await)?;
                Ok(Some(info))
            }
            Err(StorageError::BlobUnknown(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn delete_blob(&self, name: &RepositoryName, digest: &Digest) -> Result<()> {
        on_backend!(self, s => s.delete_blob(name, digest).await)
    }

    /// Starts an upload session belonging to `owner` (a user name; `None`
    /// for an anonymous caller).
    pub async fn start_upload(
        &self,
        name: &RepositoryName,
        owner: Option<&str>,
    ) -> Result<UploadId> {
        on_backend!(self, s => s.start_upload(name, owner).await)
    }

    /// Who started the session: the user, `""` for an anonymous caller,
    /// `None` if it recorded no owner (`UploadUnknown` if there is none).
    pub async fn upload_owner(
        &self,
        name: &RepositoryName,
        id: UploadId,
    ) -> Result<Option<String>> {
        on_backend!(self, s => s.upload_owner(name, id).await)
    }

    pub async fn upload_status(&self, name: &RepositoryName, id: UploadId) -> Result<UploadStatus> {
        on_backend!(self, s => s.upload_status(name, id).await)
    }

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
        on_backend!(self, s => s.append_upload(name, id, bounds, body).await)
    }

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
        on_backend!(self, s => s.commit_upload(name, id, expected, bounds, body).await)
    }

    pub async fn put_blob<S, E>(
        &self,
        name: &RepositoryName,
        expected: &Digest,
        declared: Option<u64>,
        body: S,
    ) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        on_backend!(self, s => s.put_blob(name, expected, declared, body).await)
    }

    pub async fn cancel_upload(&self, name: &RepositoryName, id: UploadId) -> Result<()> {
        on_backend!(self, s => s.cancel_upload(name, id).await)
    }

    /// Validates references and stores a manifest (and moves the tag, if the
    /// reference is one). With `expected_tag`, the tag moves only if it still
    /// names that (`None`: it must not exist); else `TagChanged`.
    pub async fn put_manifest(
        &self,
        name: &RepositoryName,
        reference: &Reference,
        bytes: Vec<u8>,
        manifest: ParsedManifest,
        expected_tag: Option<Option<Digest>>,
    ) -> Result<Digest> {
        on_backend!(self, s => s.store_manifest(name, reference, bytes, manifest, true, expected_tag).await)
    }

    /// Stores a manifest fetched by the pull-through cache. Its blobs arrive
    /// later, on demand, so they are not required to be present.
    pub async fn cache_manifest(
        &self,
        name: &RepositoryName,
        reference: &Reference,
        bytes: Vec<u8>,
        manifest: ParsedManifest,
    ) -> Result<Digest> {
        on_backend!(self, s => s.store_manifest(name, reference, bytes, manifest, false, None).await)
    }

    pub async fn get_manifest(
        &self,
        name: &RepositoryName,
        reference: &Reference,
    ) -> Result<StoredManifest> {
        on_backend!(self, s => s.get_manifest(name, reference).await)
    }

    pub async fn tag_target(&self, name: &RepositoryName, tag: &Tag) -> Result<Option<Digest>> {
        on_backend!(self, s => s.tag_target(name, tag).await)
    }

    pub async fn tags_pointing_to(
        &self,
        name: &RepositoryName,
        digest: &Digest,
    ) -> Result<Vec<String>> {
        on_backend!(self, s => s.tags_pointing_to(name, digest).await)
    }

    /// Deletes a manifest and the tags naming it, if those are still
    /// `expected_tags` (sorted, what the policies were shown); otherwise
    /// `DigestTagsChanged`, and the caller decides again. A push racing the
    /// delete leaves either the manifest deleted or the push standing whole
    /// (its tag naming a manifest that is there), never a tag naming nothing.
    pub async fn delete_manifest(
        &self,
        name: &RepositoryName,
        digest: &Digest,
        expected_tags: &[String],
    ) -> Result<()> {
        on_backend!(self, s => s.delete_manifest(name, digest, expected_tags).await)
    }

    /// Deletes a tag if it still names `expected` (what the policies were
    /// shown); otherwise `TagChanged`, and the caller decides again.
    pub async fn delete_tag(
        &self,
        name: &RepositoryName,
        tag: &Tag,
        expected: Option<&Digest>,
    ) -> Result<()> {
        on_backend!(self, s => s.delete_tag(name, tag, expected).await)
    }

    pub async fn list_tags(&self, name: &RepositoryName) -> Result<Vec<String>> {
        on_backend!(self, s => s.list_tags(name).await)
    }

    /// Every tag of `name` with what it names and when it was last set.
    pub async fn tag_history(&self, name: &RepositoryName) -> Result<Vec<TagRecord>> {
        on_backend!(self, s => s.tag_history(name).await)
    }

    /// Every manifest stored in `name` (its revisions), tagged or not.
    pub async fn list_manifests(&self, name: &RepositoryName) -> Result<Vec<Digest>> {
        on_backend!(self, s => s.list_manifests(name).await)
    }

    pub async fn list_referrers(
        &self,
        name: &RepositoryName,
        subject: &Digest,
    ) -> Result<Vec<Descriptor>> {
        on_backend!(self, s => s.list_referrers(name, subject).await)
    }

    pub async fn list_repositories(&self) -> Result<Vec<RepositoryName>> {
        on_backend!(self, s => s.list_repositories().await)
    }

    pub async fn expire_uploads(&self) -> Result<Vec<Removal>> {
        on_backend!(self, s => s.expire_uploads().await)
    }

    pub async fn collect_garbage(&self, dry_run: bool, progress: ProgressBar) -> Result<GcReport> {
        on_backend!(self, s => s.collect_garbage(dry_run, progress).await)
    }

    pub async fn fsck(&self, repair: bool, progress: ProgressBar) -> Result<FsckReport> {
        on_backend!(self, s => s.fsck(repair, progress).await)
    }
}
