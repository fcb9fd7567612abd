//! Content storage on an S3-compatible object store (Garage, MinIO, Ceph RGW,
//! AWS S3), shared by any number of stateless replicas.
//!
//! The keys are Distribution's layout (`docker/registry/v2/...`, the same
//! paths as the filesystem backend, from `paths.rs`) under the configured
//! prefix, so Distribution's S3 driver and this backend read each other's
//! blobs, manifests and tags. Keys are built only from typed names.
//!
//! What differs from the filesystem: there is no rename, so uploads go to a
//! staging object (an S3 multipart upload) that is copied to its content
//! address once its digest is verified; upload sessions are objects
//! (`repositories/<name>/_uploads/<id>/session`), so any replica continues
//! any session; and a
//! tag moves with a conditional write where the store enforces those
//! (detected at start-up), else with a check immediately before the write.

mod lease;
mod maintenance;
mod uploads;

pub use lease::{LeaseOutcome, LeaseTicket};

use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{
    ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
    PutPayload, RetryConfig, UpdateVersion,
};

use super::manifests::{
    manifest_digest, stored_media_type, Descriptor, ParsedManifest, StoredManifest, TagRecord,
};
use super::{paths, stripe, BlobInfo, OpenMode, Result, StorageError, StorageSettings};
use crate::config::{ConditionalWrites, StorageConfig};
use crate::reference::{Algorithm, Digest, Reference, RepositoryName, Tag};

/// Stored manifests are read back with a cap, as on the filesystem.
const MANIFEST_LIMIT: u64 = 64 * 1024 * 1024;
/// Requests to the store in flight at once for one operation (a manifest's
/// references checked, the tags of a repository listed).
const FAN_OUT: usize = 16;
/// Runs `requests` to the store `FAN_OUT` at a time; the first error ends it.
async fn fan_out<T, F: std::future::Future<Output = Result<T>>>(
    requests: Vec<F>,
) -> Result<Vec<T>> {
    stream::iter(requests)
        .buffer_unordered(FAN_OUT)
        .try_collect()
        .await
}

/// See [`S3Storage::settle_tag`].
const TAG_SETTLE_MIN: Duration = Duration::from_millis(100);

/// The store's view of conditional writes, found at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conditional {
    /// `If-None-Match: *` and `If-Match` on PUT are enforced: tags move race-free.
    Enforced,
    /// The store ignores them (Garage 2.5), or the config said `off`.
    NotEnforced,
}

pub struct S3Storage {
    s3: Arc<AmazonS3>,
    /// The same store for streaming blob bytes out: no limit on a whole
    /// request (a 1 GiB pull to a slow client may take minutes), only on
    /// each read (`request_timeout` without a byte is a dead connection).
    data: Arc<AmazonS3>,
    /// Keys start with this (the prefix, then `docker/registry/v2`), no trailing `/`.
    root: String,
    settings: StorageSettings,
    part_size: usize,
    conditional: Conditional,
    redirect: bool,
    description: String,
    tag_locks: Vec<tokio::sync::Mutex<()>>,
    /// Within this replica, a manifest delete owns its repository's lock and
    /// pushes share it, as on the filesystem; across replicas, each side
    /// reads back what the other may have undone (`store_manifest`,
    /// `delete_manifest`).
    repository_locks: Vec<tokio::sync::RwLock<()>>,
}

impl std::fmt::Debug for S3Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.description)
    }
}

/// An open blob on the store: its key, and the GET of the whole object
/// already answered (sent together with the link check, so a whole-blob
/// pull costs one round trip before the bytes flow).
pub struct RemoteBlob {
    s3: Arc<AmazonS3>,
    key: Path,
    description: Arc<str>,
    whole: Option<object_store::GetResult>,
}

/// A store error while blob bytes stream out, naming the store.
fn io_error(store: &str, e: object_store::Error) -> std::io::Error {
    std::io::Error::other(format!("{store}: {e}"))
}

impl RemoteBlob {
    pub(crate) fn stream(self, start: u64, end: u64) -> BoxStream<'static, std::io::Result<Bytes>> {
        if start >= end {
            return stream::empty().boxed();
        }
        let description = self.description;
        if let Some(whole) = self.whole {
            if start == 0 && end == whole.meta.size {
                return whole
                    .into_stream()
                    .map_err(move |e| io_error(&description, e))
                    .boxed();
            }
        }
        let s3 = self.s3;
        let key = self.key;
        let options = GetOptions {
            range: Some(GetRange::Bounded(start..end)),
            ..Default::default()
        };
        stream::once(async move {
            let result = s3.get_opts(&key, options).await;
            match result {
                Ok(got) => got
                    .into_stream()
                    .map_err(move |e| io_error(&description, e))
                    .boxed(),
                Err(e) => stream::once(async move { Err(io_error(&description, e)) }).boxed(),
            }
        })
        .flatten()
        .boxed()
    }
}

/// Upload parts are buffers of `part_size` (8 MiB) that come and go with
/// every part. glibc raises its mmap threshold to the size of the largest
/// mapped block freed, so after the first part such buffers come from the
/// per-thread heaps and stay resident when freed: a single 1 GiB push left
/// 60-90 MiB resident. A fixed threshold keeps every allocation of 1 MiB
/// and more a mapping of its own, returned to the system when freed. Smaller
/// allocations (request buffers, 256 KiB blob reads) are not affected.
fn return_large_buffers_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's tuning; it is safe to call
    // at any time from any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

impl S3Storage {
    /// Connects to the store the config names and probes it: the bucket must
    /// be reachable and writable, and (for `serve`) whether it enforces
    /// conditional writes is found out on a scratch key. Read-only
    /// (`OpenMode::ReadOnly`), the bucket is only listed: nothing is written.
    pub async fn open(
        config: &StorageConfig,
        settings: StorageSettings,
        mode: OpenMode,
    ) -> Result<Self> {
        let bucket = config.bucket.clone().unwrap_or_default();
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&bucket)
            .with_region(&config.region)
            .with_retry(RetryConfig {
                max_retries: config.max_retries,
                retry_timeout: config.retry_timeout,
                backoff: Default::default(),
            });
        if let Some(endpoint) = &config.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        if let Some(id) = &config.access_key_id {
            builder = builder.with_access_key_id(id);
        }
        if let Some(secret) = &config.secret_access_key {
            builder = builder.with_secret_access_key(secret.expose());
        }
        let description = format!(
            "S3 bucket {bucket:?} at {}",
            config.endpoint.as_deref().unwrap_or("AWS")
        );
        // Client options replace the builder's own (`allow_http` included).
        let options = ClientOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_allow_http(
                config
                    .endpoint
                    .as_deref()
                    .is_some_and(|e| e.starts_with("http://")),
            );
        let build = |options: ClientOptions| {
            builder
                .clone()
                .with_client_options(options)
                .build()
                .map(Arc::new)
                .map_err(|e| {
                    StorageError::Unavailable(format!(
                        "{description}: cannot configure the client: {e}"
                    ))
                })
        };
        let s3 = build(options.clone().with_timeout(config.request_timeout))?;
        let data = build(
            options
                .with_timeout_disabled()
                .with_read_timeout(config.request_timeout),
        )?;
        return_large_buffers_to_the_system();
        let prefix = config.prefix.trim_matches('/');
        let root = if prefix.is_empty() {
            paths::LAYOUT_ROOT.to_owned()
        } else {
            format!("{prefix}/{}", paths::LAYOUT_ROOT)
        };
        let mut storage = Self {
            s3,
            data,
            root,
            settings,
            part_size: config.part_size.as_u64() as usize,
            conditional: Conditional::NotEnforced,
            redirect: config.redirect,
            description,
            tag_locks: (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
            repository_locks: (0..64).map(|_| tokio::sync::RwLock::new(())).collect(),
        };
        if mode == OpenMode::ReadOnly {
            // A missing bucket is an error here too, without a write.
            storage
                .s3
                .list_with_delimiter(Some(&Path::from(storage.root.as_str())))
                .await
                .map_err(|e| storage.unavailable(e))?;
            return Ok(storage);
        }
        storage.probe_writable().await?;
        // Tag moves rely on conditional writes (only `serve` moves tags), and
        // so does the gc lease that keeps `serve`'s schedule and a `gc`
        // command apart.
        if matches!(mode, OpenMode::Serve | OpenMode::Maintain)
            && config.conditional_writes == ConditionalWrites::Auto
        {
            storage.conditional = storage.detect_conditional_writes().await?;
        }
        if mode != OpenMode::Serve {
            return Ok(storage);
        }
        match storage.conditional {
            Conditional::Enforced => tracing::info!(
                store = %storage.description,
                "the store enforces conditional writes: tag updates are race-free across replicas"
            ),
            Conditional::NotEnforced => tracing::warn!(
                store = %storage.description,
                "the store does not enforce conditional writes (If-None-Match/If-Match on PUT): \
                 a tag is re-read at least 100 ms after each move, and a push whose write was \
                 overwritten in that time is decided again on what the tag names now. The race \
                 that remains: two replicas can both move a tag past the tag-immutability check \
                 if one of them stalls between reading the tag and writing it for longer than \
                 that wait. Pushes through one replica are serialised per tag"
            ),
        }
        Ok(storage)
    }

    pub fn description(&self) -> &str {
        &self.description
    }

    pub fn settings(&self) -> &StorageSettings {
        &self.settings
    }

    /// The key of a layout path (`paths.rs`).
    fn key(&self, path: impl AsRef<FsPath>) -> Path {
        let path = path.as_ref().to_string_lossy();
        Path::from(format!("{}/{}", self.root, path.trim_matches('/')))
    }

    /// The layout path of a key below the root, as `/`-separated text.
    fn relative<'a>(&self, key: &'a Path) -> Option<&'a str> {
        key.as_ref()
            .strip_prefix(self.root.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
    }

    fn unavailable(&self, e: object_store::Error) -> StorageError {
        StorageError::Unavailable(format!("{}: {e}", self.description))
    }

    /// An object's bytes (at most `limit`), or `None` when it does not exist.
    async fn get_small(&self, key: &Path, limit: u64) -> Result<Option<(Bytes, Option<String>)>> {
        match self.s3.get(key).await {
            Ok(got) => {
                if got.meta.size > limit {
                    return Err(StorageError::Io(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("object {key} is larger than {limit} bytes"),
                    )));
                }
                let e_tag = got.meta.e_tag.clone();
                let bytes = got.bytes().await.map_err(|e| self.unavailable(e))?;
                Ok(Some((bytes, e_tag)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.unavailable(e)),
        }
    }

    // ---- small records of the registry's own (`records`)

    pub(crate) async fn put_small(&self, path: std::path::PathBuf, bytes: Bytes) -> Result<()> {
        self.put(&self.key(&path), bytes).await
    }

    pub(crate) async fn get_small_at(
        &self,
        path: std::path::PathBuf,
        limit: u64,
    ) -> Result<Option<Bytes>> {
        Ok(self
            .get_small(&self.key(&path), limit)
            .await?
            .map(|(b, _)| b))
    }

    pub(crate) async fn list_small(&self, dir: std::path::PathBuf) -> Result<Vec<String>> {
        self.list_dir(&dir).await
    }

    pub(crate) async fn delete_small(&self, path: std::path::PathBuf) -> Result<()> {
        self.delete(&self.key(&path)).await
    }

    /// A link object's digest and etag; `None` when it does not exist.
    async fn read_link_tagged(
        &self,
        path: impl AsRef<FsPath>,
    ) -> Result<Option<(Digest, Option<String>)>> {
        let key = self.key(path);
        let Some((bytes, e_tag)) = self.get_small(&key, 256).await? else {
            return Ok(None);
        };
        let text = std::str::from_utf8(&bytes).unwrap_or("");
        match Digest::parse(text.trim()) {
            Ok(d) => Ok(Some((d, e_tag))),
            Err(_) => Err(StorageError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("corrupt link object {key}"),
            ))),
        }
    }

    async fn read_link(&self, path: impl AsRef<FsPath>) -> Result<Option<Digest>> {
        Ok(self.read_link_tagged(path).await?.map(|(d, _)| d))
    }

    async fn put(&self, key: &Path, bytes: Bytes) -> Result<()> {
        self.s3
            .put(key, PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| self.unavailable(e))
    }

    async fn write_link(&self, path: impl AsRef<FsPath>, digest: &Digest) -> Result<()> {
        self.put(&self.key(path), Bytes::from(digest.to_string()))
            .await
    }

    /// Size of an object, or `None` when it does not exist.
    async fn size_of(&self, key: &Path) -> Result<Option<u64>> {
        match self.s3.head(key).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.unavailable(e)),
        }
    }

    async fn delete(&self, key: &Path) -> Result<()> {
        match self.s3.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.unavailable(e)),
        }
    }

    /// Deletes every object below a layout directory; returns whether there were any.
    async fn delete_tree(&self, dir: impl AsRef<FsPath>) -> Result<bool> {
        let prefix = self.key(dir);
        let keys: Vec<Path> = self
            .s3
            .list(Some(&prefix))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(|e| self.unavailable(e))?;
        let any = !keys.is_empty();
        let mut deleted = self
            .s3
            .delete_stream(stream::iter(keys.into_iter().map(Ok)).boxed());
        while let Some(result) = deleted.next().await {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.unavailable(e)),
            }
        }
        Ok(any)
    }

    /// Names of the entries (sub-directories and objects) of a layout directory.
    async fn list_dir(&self, dir: impl AsRef<FsPath>) -> Result<Vec<String>> {
        let prefix = self.key(dir);
        let listing = self
            .s3
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(listing
            .common_prefixes
            .iter()
            .chain(listing.objects.iter().map(|o| &o.location))
            .filter_map(|p| p.filename().map(str::to_owned))
            .collect())
    }

    /// Digests whose link directories sit below `dir/<alg>/<hex>`.
    async fn list_digest_dirs(&self, dir: &FsPath) -> Result<Vec<Digest>> {
        let mut digests = Vec::new();
        for algorithm in Algorithm::ALL {
            for hex in self.list_dir(dir.join(algorithm.as_str())).await? {
                if let Some(d) = Digest::from_parts(algorithm, &hex) {
                    digests.push(d);
                }
            }
        }
        Ok(digests)
    }

    /// Writes and removes a scratch object: the readiness probe.
    pub async fn probe_writable(&self) -> Result<()> {
        let key = self.key(format!("_portcullis/probe/{}", uuid::Uuid::new_v4()));
        self.put(&key, Bytes::from_static(b"probe")).await?;
        self.delete(&key).await
    }

    /// Creates a scratch key twice with `If-None-Match: *`: a store that
    /// enforces conditional writes refuses the second.
    async fn detect_conditional_writes(&self) -> Result<Conditional> {
        let key = self.key(format!(
            "_portcullis/conditional-probe/{}",
            uuid::Uuid::new_v4()
        ));
        let create = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let first = self
            .s3
            .put_opts(&key, PutPayload::from_static(b"1"), create.clone())
            .await;
        let second = self
            .s3
            .put_opts(&key, PutPayload::from_static(b"2"), create)
            .await;
        let _ = self.s3.delete(&key).await;
        match (first, second) {
            (Ok(_), Err(object_store::Error::AlreadyExists { .. }))
            | (Ok(_), Err(object_store::Error::Precondition { .. })) => Ok(Conditional::Enforced),
            (Ok(_), Ok(_)) => Ok(Conditional::NotEnforced),
            (Err(e), _) | (_, Err(e)) => Err(self.unavailable(e)),
        }
    }

    // ---- blobs

    async fn linked_blob(&self, name: &RepositoryName, digest: &Digest) -> Result<u64> {
        let data = self.key(paths::blob_data(digest));
        let (link, size) = tokio::try_join!(
            self.read_link(paths::layer_link(name, digest)),
            self.size_of(&data)
        )?;
        match (link, size) {
            (Some(linked), Some(size)) if &linked == digest => Ok(size),
            _ => Err(StorageError::BlobUnknown(digest.clone())),
        }
    }

    pub async fn stat_blob(&self, name: &RepositoryName, digest: &Digest) -> Result<BlobInfo> {
        let size = self.linked_blob(name, digest).await?;
        Ok(BlobInfo {
            digest: digest.clone(),
            size,
        })
    }

    pub async fn open_blob(
        &self,
        name: &RepositoryName,
        digest: &Digest,
    ) -> Result<(RemoteBlob, u64)> {
        let key = self.key(paths::blob_data(digest));
        let get = async {
            match self.data.get(&key).await {
                Ok(got) => Ok(Some(got)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(self.unavailable(e)),
            }
        };
        let (link, whole) = tokio::try_join!(self.read_link(paths::layer_link(name, digest)), get)?;
        match (link, whole) {
            (Some(linked), Some(whole)) if &linked == digest => {
                let size = whole.meta.size;
                Ok((
                    RemoteBlob {
                        s3: Arc::clone(&self.data),
                        key,
                        description: Arc::from(self.description.as_str()),
                        whole: Some(whole),
                    },
                    size,
                ))
            }
            _ => Err(StorageError::BlobUnknown(digest.clone())),
        }
    }

    /// With `redirect = true`: a presigned URL for a blob linked into `name`.
    pub async fn blob_url(&self, name: &RepositoryName, digest: &Digest) -> Result<Option<String>> {
        if !self.redirect {
            return Ok(None);
        }
        self.linked_blob(name, digest).await?;
        let key = self.key(paths::blob_data(digest));
        let url = object_store::signer::Signer::signed_url(
            self.s3.as_ref(),
            axum::http::Method::GET,
            &key,
            Duration::from_secs(20 * 60),
        )
        .await
        .map_err(|e| self.unavailable(e))?;
        Ok(Some(url.to_string()))
    }

    /// Links a stored blob into `name` (a cross-repository mount).
    pub async fn link_blob(&self, name: &RepositoryName, digest: &Digest) -> Result<()> {
        self.write_link(paths::layer_link(name, digest), digest)
            .await
    }

    pub async fn delete_blob(&self, name: &RepositoryName, digest: &Digest) -> Result<()> {
        if self
            .read_link(paths::layer_link(name, digest))
            .await?
            .is_none()
        {
            return Err(StorageError::BlobUnknown(digest.clone()));
        }
        self.delete_tree(paths::layer_link_dir(name, digest))
            .await?;
        Ok(())
    }

    /// Bytes held in blobs, for the storage metric.
    pub async fn blob_bytes(&self) -> Result<u64> {
        let prefix = self.key(paths::BLOBS);
        let mut listing = self.s3.list(Some(&prefix));
        let mut total = 0;
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| self.unavailable(e))?;
            if meta.location.filename() == Some("data") {
                total += meta.size;
            }
        }
        Ok(total)
    }

    // ---- manifests and tags

    /// Whether a blob's content is stored (linked anywhere or not).
    async fn blob_exists(&self, digest: &Digest) -> Result<bool> {
        Ok(self
            .size_of(&self.key(paths::blob_data(digest)))
            .await?
            .is_some())
    }

    pub async fn store_manifest(
        &self,
        name: &RepositoryName,
        reference: &Reference,
        bytes: Vec<u8>,
        manifest: ParsedManifest,
        verify_references: bool,
        expected_tag: Option<Option<Digest>>,
    ) -> Result<Digest> {
        let digest = manifest_digest(reference, &bytes)?;
        // No delete of a manifest of this repository by this replica runs
        // from the check of what this one references to its last link: a
        // child checked here cannot go before the push is acknowledged.
        let _repository_guard = self.repository_lock(name).read().await;
        if verify_references {
            let blobs = manifest.referenced_blobs().map(|blob| async move {
                let linked = self
                    .read_link(paths::layer_link(name, &blob.digest))
                    .await?;
                if linked.as_ref() != Some(&blob.digest) || !self.blob_exists(&blob.digest).await? {
                    return Err(StorageError::ManifestBlobUnknown(blob.digest.clone()));
                }
                Ok(())
            });
            fan_out(blobs.collect()).await?;
            let children = manifest.manifests.iter().map(|child| async move {
                if self
                    .read_link(paths::revision_link(name, &child.digest))
                    .await?
                    .is_none()
                {
                    return Err(StorageError::ManifestBlobUnknown(child.digest.clone()));
                }
                Ok(())
            });
            fan_out(children.collect()).await?;
        }
        let revision = paths::revision_link(name, &digest);
        // Needed only to undo a lost tag race (below).
        let had_revision = match (reference, &expected_tag) {
            (Reference::Tag(_), Some(_)) => self.read_link(&revision).await?.is_some(),
            _ => true,
        };
        // Content first, then the links that make it visible; the tag last,
        // so nobody reads a tag naming a manifest that is not there yet.
        // Content-addressed: writing it again is harmless, and as cheap as
        // asking whether it is there.
        self.put(&self.key(paths::blob_data(&digest)), Bytes::from(bytes))
            .await?;
        let mut links = vec![revision];
        if let Some(subject) = &manifest.subject {
            links.push(paths::referrer_link(name, &subject.digest, &digest));
        }
        let tag = match reference {
            Reference::Tag(tag) => {
                links.push(paths::tag_index_link(name, tag, &digest));
                Some(tag)
            }
            Reference::Digest(_) => None,
        };
        for link in &links {
            self.write_link(link, &digest).await?;
        }
        let Some(tag) = tag else {
            return Ok(digest);
        };
        match self.move_tag(name, tag, &digest, expected_tag).await {
            Ok(()) => {
                // A delete of this manifest on another replica may have
                // removed the revision between its write and the tag's: the
                // tag stands (it was acknowledged), so the revision comes
                // back. (That delete reads the tags after its removal and
                // restores it too; one of the two always sees the other.)
                if self.read_link(&links[0]).await?.is_none() {
                    self.restore_links(name, &digest, manifest.subject.as_ref())
                        .await?;
                }
                Ok(digest)
            }
            Err(StorageError::TagChanged(t)) => {
                // The push lost a race for the tag: what it made visible goes.
                if !had_revision {
                    self.delete_tree(paths::revision_link_dir(name, &digest))
                        .await?;
                    if let Some(subject) = &manifest.subject {
                        self.delete_tree(paths::referrer_link_dir(name, &subject.digest, &digest))
                            .await?;
                    }
                }
                Err(StorageError::TagChanged(t))
            }
            Err(e) => Err(e),
        }
    }

    fn repository_lock(&self, name: &RepositoryName) -> &tokio::sync::RwLock<()> {
        &self.repository_locks[stripe(name.as_str(), self.repository_locks.len())]
    }

    /// Writes the revision link of `digest` (and its referrers entry) again.
    async fn restore_links(
        &self,
        name: &RepositoryName,
        digest: &Digest,
        subject: Option<&Descriptor>,
    ) -> Result<()> {
        self.write_link(paths::revision_link(name, digest), digest)
            .await?;
        if let Some(subject) = subject {
            self.write_link(paths::referrer_link(name, &subject.digest, digest), digest)
                .await?;
        }
        Ok(())
    }

    /// Points `tag` at `digest` if it still names `expected` (when given).
    async fn move_tag(
        &self,
        name: &RepositoryName,
        tag: &Tag,
        digest: &Digest,
        expected: Option<Option<Digest>>,
    ) -> Result<()> {
        let path = paths::tag_current_link(name, tag);
        let key = self.key(&path);
        let payload = || PutPayload::from(Bytes::from(digest.to_string()));
        let Some(expected) = expected else {
            return self.write_link(&path, digest).await;
        };
        // One mover per tag in this replica; across replicas, the store decides.
        let _guard = self.tag_locks[stripe((name.as_str(), tag.as_str()), self.tag_locks.len())]
            .lock()
            .await;
        let current = self.read_link_tagged(&path).await?;
        let checked = std::time::Instant::now();
        if current.as_ref().map(|(d, _)| d) != expected.as_ref() {
            return Err(StorageError::TagChanged(tag.clone()));
        }
        let mode = match (self.conditional, current) {
            (Conditional::NotEnforced, _) => PutMode::Overwrite,
            (Conditional::Enforced, None) => PutMode::Create,
            (Conditional::Enforced, Some((_, e_tag))) => PutMode::Update(UpdateVersion {
                e_tag,
                version: None,
            }),
        };
        let options = PutOptions {
            mode,
            ..Default::default()
        };
        match self.s3.put_opts(&key, payload(), options).await {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => {
                return Err(StorageError::TagChanged(tag.clone()))
            }
            Err(e) => return Err(self.unavailable(e)),
        }
        if self.conditional == Conditional::NotEnforced {
            self.settle_tag(&path, digest, checked.elapsed()).await?;
        }
        Ok(())
    }

    /// On a store that ignores conditional writes, two replicas can check a
    /// tag, both see what they expect, and both write it. Each writer
    /// therefore waits a little past its own write, longer than another
    /// writer takes from its check to its write (`TAG_SETTLE_MIN`, or four
    /// times this writer's own check-to-write time if that is longer), and
    /// reads the tag again: a writer whose write was overwritten in that
    /// time lost the race (`TagSuperseded`), and the request is decided
    /// again on what the tag names now. The race that remains: another
    /// writer whose check-to-write time exceeds the wait (a replica stalled
    /// between the two).
    async fn settle_tag(&self, path: &FsPath, digest: &Digest, gap: Duration) -> Result<()> {
        tokio::time::sleep(TAG_SETTLE_MIN.max(gap * 4)).await;
        match self.read_link(path).await? {
            Some(now) if &now == digest => Ok(()),
            now => Err(StorageError::TagSuperseded {
                ours: digest.clone(),
                now,
            }),
        }
    }

    async fn resolve(&self, name: &RepositoryName, reference: &Reference) -> Result<Digest> {
        let unknown = || StorageError::ManifestUnknown(reference.to_string());
        let digest = match reference {
            Reference::Tag(tag) => self
                .read_link(paths::tag_current_link(name, tag))
                .await?
                .ok_or_else(unknown)?,
            Reference::Digest(d) => d.clone(),
        };
        match self.read_link(paths::revision_link(name, &digest)).await? {
            Some(linked) if linked == digest => Ok(digest),
            _ => Err(unknown()),
        }
    }

    async fn read_manifest_bytes(&self, digest: &Digest) -> Result<Option<Bytes>> {
        Ok(self
            .get_small(&self.key(paths::blob_data(digest)), MANIFEST_LIMIT)
            .await?
            .map(|(b, _)| b))
    }

    pub async fn get_manifest(
        &self,
        name: &RepositoryName,
        reference: &Reference,
    ) -> Result<StoredManifest> {
        let unknown = || StorageError::ManifestUnknown(reference.to_string());
        let digest = match reference {
            Reference::Tag(tag) => self
                .read_link(paths::tag_current_link(name, tag))
                .await?
                .ok_or_else(unknown)?,
            Reference::Digest(d) => d.clone(),
        };
        // The revision check and the content read go out together.
        let (linked, bytes) = tokio::try_join!(
            self.read_link(paths::revision_link(name, &digest)),
            self.read_manifest_bytes(&digest)
        )?;
        match (linked, bytes) {
            (Some(linked), Some(bytes)) if linked == digest => Ok(StoredManifest {
                media_type: stored_media_type(&bytes),
                digest,
                bytes: bytes.to_vec(),
            }),
            _ => Err(unknown()),
        }
    }

    /// The tag's own link, whether or not its manifest is still there (a tag
    /// that exists is never shown to the policies as absent).
    pub async fn tag_target(&self, name: &RepositoryName, tag: &Tag) -> Result<Option<Digest>> {
        self.read_link(paths::tag_current_link(name, tag)).await
    }

    /// The tags of `name` and what each names now.
    async fn tag_links(&self, name: &RepositoryName) -> Result<Vec<(Tag, Digest)>> {
        let tags = self
            .list_dir(paths::tags_dir(name))
            .await?
            .into_iter()
            .filter_map(|t| Tag::parse(&t).ok());
        let reads = tags.map(|tag| async move {
            let target = self.read_link(paths::tag_current_link(name, &tag)).await?;
            Ok::<_, StorageError>(target.map(|d| (tag, d)))
        });
        let found = fan_out(reads.collect()).await?;
        Ok(found.into_iter().flatten().collect())
    }

    pub async fn tags_pointing_to(
        &self,
        name: &RepositoryName,
        digest: &Digest,
    ) -> Result<Vec<String>> {
        let mut tags: Vec<String> = self
            .tag_links(name)
            .await?
            .into_iter()
            .filter(|(_, d)| d == digest)
            .map(|(t, _)| t.to_string())
            .collect();
        tags.sort();
        Ok(tags)
    }

    pub async fn delete_manifest(
        &self,
        name: &RepositoryName,
        digest: &Digest,
        expected_tags: &[String],
    ) -> Result<()> {
        let _repository_guard = self.repository_lock(name).write().await;
        self.resolve(name, &Reference::Digest(digest.clone()))
            .await?;
        let subject = self
            .read_manifest_bytes(digest)
            .await
            .ok()
            .flatten()
            .and_then(|b| ParsedManifest::parse(&b, None).ok())
            .and_then(|m| m.subject);
        let tags = self.tags_pointing_to(name, digest).await?;
        if tags != expected_tags {
            return Err(StorageError::DigestTagsChanged(digest.clone()));
        }
        for tag in tags.iter().filter_map(|t| Tag::parse(t).ok()) {
            self.delete_tree(paths::tag_dir(name, &tag)).await?;
        }
        if let Some(subject) = &subject {
            self.delete_tree(paths::referrer_link_dir(name, &subject.digest, digest))
                .await?;
        }
        self.delete_tree(paths::revision_link_dir(name, digest))
            .await?;
        // A push on another replica may have pointed a tag at this manifest
        // meanwhile: that push stands, so its manifest stays.
        if !self.tags_pointing_to(name, digest).await?.is_empty() {
            self.restore_links(name, digest, subject.as_ref()).await?;
        }
        Ok(())
    }

    /// Deletes a tag if it still names `expected`: serialised with pushes of
    /// that tag within this replica; across replicas, a push landing between
    /// this check and the removal is the one window left (README, "Scale-out").
    pub async fn delete_tag(
        &self,
        name: &RepositoryName,
        tag: &Tag,
        expected: Option<&Digest>,
    ) -> Result<()> {
        let _guard = self.tag_locks[stripe((name.as_str(), tag.as_str()), self.tag_locks.len())]
            .lock()
            .await;
        let now = self.read_link(paths::tag_current_link(name, tag)).await?;
        if now.is_none() {
            return Err(StorageError::ManifestUnknown(tag.to_string()));
        }
        if now.as_ref() != expected {
            return Err(StorageError::TagChanged(tag.clone()));
        }
        self.delete_tree(paths::tag_dir(name, tag)).await?;
        Ok(())
    }

    /// Whether `name` holds manifests or layers (the catalog's rule).
    async fn holds_content(&self, name: &RepositoryName) -> Result<bool> {
        let children = self.list_dir(paths::repository_dir(name)).await?;
        Ok(children.iter().any(|c| c == "_manifests" || c == "_layers"))
    }

    /// Every tag of `name`, what it names, and its link's `Last-Modified`:
    /// one listing of the tags' keys, then the links read `FAN_OUT` at a
    /// time (time and digest from the same GET, so a push landing between
    /// the listing and the read is seen whole).
    pub async fn tag_history(&self, name: &RepositoryName) -> Result<Vec<TagRecord>> {
        let dir = paths::tags_dir(name).to_string_lossy().into_owned();
        let objects: Vec<object_store::ObjectMeta> = self
            .s3
            .list(Some(&self.key(&dir)))
            .try_collect()
            .await
            .map_err(|e| self.unavailable(e))?;
        let tags = objects.iter().filter_map(|meta| {
            let tag = self
                .relative(&meta.location)?
                .strip_prefix(dir.as_str())?
                .strip_prefix('/')?
                .strip_suffix("/current/link")?;
            Tag::parse(tag).ok()
        });
        let reads = tags.map(|tag| async move {
            let key = self.key(paths::tag_current_link(name, &tag));
            let got = match self.s3.get(&key).await {
                Ok(got) => got,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(self.unavailable(e)),
            };
            if got.meta.size > 256 {
                tracing::warn!(repository = %name, %tag, "tag link larger than a digest; left alone");
                return Ok(None);
            }
            let pushed = std::time::SystemTime::from(got.meta.last_modified);
            let bytes = got.bytes().await.map_err(|e| self.unavailable(e))?;
            let text = std::str::from_utf8(&bytes).unwrap_or("");
            let Ok(digest) = Digest::parse(text.trim()) else {
                tracing::warn!(repository = %name, %tag, "tag link unreadable; left alone");
                return Ok(None);
            };
            Ok::<_, StorageError>(Some(TagRecord {
                tag,
                digest,
                pushed,
            }))
        });
        let found = fan_out(reads.collect()).await?;
        Ok(found.into_iter().flatten().collect())
    }

    pub async fn list_manifests(&self, name: &RepositoryName) -> Result<Vec<Digest>> {
        self.list_digest_dirs(&paths::revisions_dir(name)).await
    }

    pub async fn list_tags(&self, name: &RepositoryName) -> Result<Vec<String>> {
        if !self.holds_content(name).await? {
            return Err(StorageError::NameUnknown(name.clone()));
        }
        let mut tags: Vec<String> = self
            .tag_links(name)
            .await?
            .into_iter()
            .map(|(t, _)| t.to_string())
            .collect();
        tags.sort();
        Ok(tags)
    }

    pub async fn list_referrers(
        &self,
        name: &RepositoryName,
        subject: &Digest,
    ) -> Result<Vec<Descriptor>> {
        let digests = self
            .list_digest_dirs(&paths::referrers_dir(name, subject))
            .await?;
        let reads = digests.into_iter().map(|digest| async move {
            if self
                .read_link(paths::revision_link(name, &digest))
                .await?
                .is_none()
            {
                return Ok(None);
            }
            let Some(bytes) = self.read_manifest_bytes(&digest).await? else {
                return Ok(None);
            };
            let Ok(manifest) = ParsedManifest::parse(&bytes, None) else {
                return Ok(None);
            };
            Ok::<_, StorageError>(Some(Descriptor {
                media_type: manifest.media_type.clone(),
                size: bytes.len() as u64,
                digest,
                urls: Vec::new(),
                artifact_type: manifest.effective_artifact_type(),
                annotations: manifest.annotations,
                platform: None,
            }))
        });
        let found = fan_out(reads.collect()).await?;
        let mut out: Vec<Descriptor> = found.into_iter().flatten().collect();
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(out)
    }

    /// Every repository name, sorted; with `with_uploads_only`, also those
    /// holding nothing but upload sessions.
    async fn walk_repositories(&self, with_uploads_only: bool) -> Result<Vec<RepositoryName>> {
        let mut out = Vec::new();
        let mut pending = vec![String::new()];
        while let Some(prefix) = pending.pop() {
            let dir = if prefix.is_empty() {
                paths::REPOSITORIES.to_owned()
            } else {
                format!("{}/{prefix}", paths::REPOSITORIES)
            };
            let children = self.list_dir(&dir).await?;
            let is_repository = children.iter().any(|c| {
                c == "_manifests" || c == "_layers" || (with_uploads_only && c == "_uploads")
            });
            if is_repository {
                if let Ok(name) = RepositoryName::parse(&prefix) {
                    out.push(name);
                }
            }
            for child in children.into_iter().filter(|c| !c.starts_with('_')) {
                pending.push(if prefix.is_empty() {
                    child
                } else {
                    format!("{prefix}/{child}")
                });
            }
        }
        out.sort();
        Ok(out)
    }

    pub async fn list_repositories(&self) -> Result<Vec<RepositoryName>> {
        self.walk_repositories(false).await
    }

    pub async fn repository_exists(&self, name: &RepositoryName) -> Result<bool> {
        Ok(!self.list_dir(paths::repository_dir(name)).await?.is_empty())
    }
}
