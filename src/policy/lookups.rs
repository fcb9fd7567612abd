//! Read-only lookups a policy may import (`wit/policy.wit`, `interface
//! lookup`): the referrers of a digest, a manifest by tag or digest, a small
//! blob. Confined to the repository of the request being decided, bounded per
//! evaluation (count and bytes), counted in `/metrics`.
//!
//! Lookups are async host functions: on S3 a lookup waits as a future on the
//! server's worker (the guest's fiber is suspended), never as a blocked
//! thread, and it runs within the evaluation's `policy.timeout`.

use std::sync::Arc;

use super::bindings::portcullis::policy::lookup::{self, Descriptor, FetchedManifest, LookupError};
use super::bindings::portcullis::policy::types::Reference as WitReference;
use super::engine::GuestState;
use crate::metrics::Metrics;
use crate::reference::{Digest, Reference, RepositoryName, Tag};
use crate::storage::{Storage, StorageError};

/// What one evaluation may look up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LookupLimits {
    /// Lookups (of all kinds together) per evaluation.
    pub calls: u32,
    /// Bytes handed to the policy per evaluation, all lookups together.
    pub bytes: u64,
    /// Largest blob `blob` returns.
    pub blob_bytes: u64,
}

impl Default for LookupLimits {
    fn default() -> Self {
        Self {
            calls: 16,
            bytes: 1 << 20,
            blob_bytes: 64 << 10,
        }
    }
}

/// Most referrers one lookup returns.
pub const MAX_REFERRERS: usize = 256;

/// Where lookups are answered from: the registry's store, with the small
/// blobs policies read on every pull (a signature's payload) kept a while.
pub struct Lookups {
    storage: Storage,
    metrics: Arc<Metrics>,
    blobs: std::sync::Mutex<BlobCache>,
}

/// Small blobs by repository and digest: content-addressed, so only whether
/// the repository still has the blob can change; kept `BLOB_CACHE_TTL`.
#[derive(Default)]
struct BlobCache {
    map: std::collections::HashMap<BlobKey, (std::time::Instant, Arc<Vec<u8>>)>,
    bytes: usize,
}

type BlobKey = (RepositoryName, Digest);

const BLOB_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(30);
const BLOB_CACHE_BYTES: usize = 8 << 20;

impl BlobCache {
    fn get(&self, key: &BlobKey) -> Option<Arc<Vec<u8>>> {
        self.map
            .get(key)
            .filter(|(at, _)| at.elapsed() < BLOB_CACHE_TTL)
            .map(|(_, bytes)| Arc::clone(bytes))
    }

    fn insert(&mut self, key: BlobKey, bytes: Arc<Vec<u8>>) {
        if self.bytes + bytes.len() > BLOB_CACHE_BYTES {
            self.map.clear();
            self.bytes = 0;
        }
        self.bytes += bytes.len();
        if let Some((_, old)) = self.map.insert(key, (std::time::Instant::now(), bytes)) {
            self.bytes -= old.len();
        }
    }
}

impl Lookups {
    pub fn new(storage: Storage, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            storage,
            metrics,
            blobs: std::sync::Mutex::default(),
        })
    }

    fn cached_blob(&self, key: &BlobKey) -> Option<Arc<Vec<u8>>> {
        self.blobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
    }

    fn keep_blob(&self, key: BlobKey, bytes: Arc<Vec<u8>>) {
        self.blobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, bytes);
    }

    /// The store lookups read (also where `oci://` modules of this registry are).
    pub fn storage(&self) -> &Storage {
        &self.storage
    }
}

/// The lookups of one evaluation: its repository and what it has used.
#[derive(Default)]
pub struct LookupSession {
    source: Option<(Arc<Lookups>, RepositoryName)>,
    limits: LookupLimits,
    calls: u32,
    bytes: u64,
}

impl LookupSession {
    /// Lookups in `repository` from `source`; `None` answers `unavailable`.
    pub fn new(source: Option<Arc<Lookups>>, repository: &str, limits: LookupLimits) -> Self {
        let source = source.zip(RepositoryName::parse(repository).ok());
        Self {
            source,
            limits,
            calls: 0,
            bytes: 0,
        }
    }

    /// Takes one call from the budget; the source and repository to use.
    fn begin(&mut self, kind: &str) -> Result<(Arc<Lookups>, RepositoryName), LookupError> {
        let Some((source, repository)) = &self.source else {
            return Err(LookupError::Unavailable);
        };
        if self.calls >= self.limits.calls || self.bytes >= self.limits.bytes {
            source.metrics.record_lookup(kind, "limit-reached", 0);
            return Err(LookupError::LimitReached);
        }
        self.calls += 1;
        Ok((Arc::clone(source), repository.clone()))
    }

    /// Charges `bytes` to the budget; `limit-reached` when they do not fit.
    fn charge(&mut self, source: &Lookups, kind: &str, bytes: u64) -> Result<(), LookupError> {
        if self.bytes.saturating_add(bytes) > self.limits.bytes {
            self.bytes = self.limits.bytes;
            source.metrics.record_lookup(kind, "limit-reached", 0);
            return Err(LookupError::LimitReached);
        }
        self.bytes += bytes;
        source.metrics.record_lookup(kind, "ok", bytes);
        Ok(())
    }

    fn failed(source: &Lookups, kind: &str, error: LookupError) -> LookupError {
        source.metrics.record_lookup(kind, error_name(error), 0);
        error
    }
}

fn error_name(error: LookupError) -> &'static str {
    match error {
        LookupError::NotFound => "not-found",
        LookupError::Invalid => "invalid",
        LookupError::TooLarge => "too-large",
        LookupError::LimitReached => "limit-reached",
        LookupError::Unavailable => "unavailable",
    }
}

fn from_storage(e: &StorageError) -> LookupError {
    match e {
        StorageError::BlobUnknown(_)
        | StorageError::ManifestUnknown(_)
        | StorageError::NameUnknown(_) => LookupError::NotFound,
        other => {
            tracing::debug!(error = %other, "a policy's lookup failed");
            LookupError::Unavailable
        }
    }
}

/// What a descriptor costs against the byte budget: its strings.
fn descriptor_bytes(d: &Descriptor) -> u64 {
    let strings = d.media_type.len()
        + d.digest.len()
        + d.artifact_type.as_ref().map_or(0, String::len)
        + d.annotations
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>();
    strings as u64 + 16
}

impl lookup::Host for GuestState {
    async fn referrers(
        &mut self,
        digest: String,
        artifact_type: Option<String>,
    ) -> Result<Vec<Descriptor>, LookupError> {
        const KIND: &str = "referrers";
        let session = &mut self.lookups;
        let (source, repository) = session.begin(KIND)?;
        let digest = Digest::parse(&digest)
            .map_err(|_| LookupSession::failed(&source, KIND, LookupError::Invalid))?;
        let found = source
            .storage
            .list_referrers(&repository, &digest)
            .await
            .map_err(|e| LookupSession::failed(&source, KIND, from_storage(&e)))?;
        let list: Vec<Descriptor> = found
            .into_iter()
            .filter(|d| {
                artifact_type
                    .as_ref()
                    .is_none_or(|t| d.artifact_type.as_ref() == Some(t))
            })
            .take(MAX_REFERRERS)
            .map(|d| Descriptor {
                media_type: d.media_type,
                digest: d.digest.to_string(),
                size: d.size,
                artifact_type: d.artifact_type,
                annotations: d.annotations.into_iter().collect(),
            })
            .collect();
        let bytes = list.iter().map(descriptor_bytes).sum();
        session.charge(&source, KIND, bytes)?;
        Ok(list)
    }

    async fn manifest(&mut self, reference: WitReference) -> Result<FetchedManifest, LookupError> {
        const KIND: &str = "manifest";
        let session = &mut self.lookups;
        let (source, repository) = session.begin(KIND)?;
        let reference = match &reference {
            WitReference::Tag(t) => Tag::parse(t).map(Reference::Tag),
            WitReference::Digest(d) => Digest::parse(d).map(Reference::Digest),
        }
        .map_err(|_| LookupSession::failed(&source, KIND, LookupError::Invalid))?;
        let stored = source
            .storage
            .get_manifest(&repository, &reference)
            .await
            .map_err(|e| LookupSession::failed(&source, KIND, from_storage(&e)))?;
        session.charge(&source, KIND, stored.bytes.len() as u64)?;
        Ok(FetchedManifest {
            media_type: stored.media_type,
            digest: stored.digest.to_string(),
            content: stored.bytes,
        })
    }

    async fn blob(&mut self, digest: String) -> Result<Vec<u8>, LookupError> {
        const KIND: &str = "blob";
        let session = &mut self.lookups;
        let (source, repository) = session.begin(KIND)?;
        let digest = Digest::parse(&digest)
            .map_err(|_| LookupSession::failed(&source, KIND, LookupError::Invalid))?;
        let limit = session.limits.blob_bytes;
        let key = (repository, digest);
        let bytes = match source.cached_blob(&key) {
            Some(bytes) if bytes.len() as u64 <= limit => bytes,
            Some(_) => return Err(LookupSession::failed(&source, KIND, LookupError::TooLarge)),
            None => {
                let bytes = source
                    .storage
                    .read_small_blob(&key.0, &key.1, limit)
                    .await
                    .map_err(|e| LookupSession::failed(&source, KIND, from_storage(&e)))?
                    .ok_or_else(|| LookupSession::failed(&source, KIND, LookupError::TooLarge))?;
                let bytes = Arc::new(bytes);
                source.keep_blob(key, Arc::clone(&bytes));
                bytes
            }
        };
        session.charge(&source, KIND, bytes.len() as u64)?;
        Ok(bytes.as_ref().clone())
    }
}
