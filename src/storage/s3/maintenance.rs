//! `gc`, `fsck` and upload expiry on the object store: the same rules as on
//! the filesystem (`gc.rs`, `fsck.rs`), with object times for file times.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use indicatif::ProgressBar;
use object_store::{ObjectStore, ObjectStoreExt};
use sha2::Digest as _;

use super::S3Storage;
use crate::reference::{Algorithm, Digest, RepositoryName, Tag, UploadId};
use crate::storage::fsck::{check_manifest, Finding, FsckReport, QUARANTINE};
use crate::storage::gc::{mark_references, GcReport, Kept, Removal};
use crate::storage::{paths, Result, StorageError};

fn older_than(time: chrono::DateTime<chrono::Utc>, age: Duration) -> bool {
    (chrono::Utc::now() - time)
        .to_std()
        .is_ok_and(|elapsed| elapsed > age)
}

/// How long ago `time` was (zero if in the future).
fn age(time: chrono::DateTime<chrono::Utc>) -> Duration {
    (chrono::Utc::now() - time).to_std().unwrap_or_default()
}

/// The digest of a blob data key's layout path (`blobs/<alg>/<xx>/<hex>/data`).
fn blob_digest(relative: &str) -> Option<Digest> {
    let mut parts = relative.split('/');
    let (blobs, alg, _, hex, data) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    if blobs != paths::BLOBS || data != "data" || parts.next().is_some() {
        return None;
    }
    Digest::from_parts(Algorithm::parse(alg)?, hex)
}

impl S3Storage {
    /// Removes sessions (and their multipart uploads and tails) untouched
    /// for longer than `max_age`; with `report_young`, the younger ones
    /// (and their sizes, a read each) are returned too.
    async fn expire(
        &self,
        max_age: Duration,
        dry_run: bool,
        report_young: bool,
    ) -> Result<(Vec<Removal>, Vec<Kept>)> {
        let mut removed = Vec::new();
        let mut young = Vec::new();
        for name in self.walk_repositories(true).await? {
            for id in self.list_dir(paths::uploads_dir(&name)).await? {
                let Ok(upload) = UploadId::parse(&id) else {
                    continue;
                };
                // The newest object of the session says when it was last used.
                let prefix = self.key(paths::upload_dir(&name, upload));
                let mut objects = self.s3.list(Some(&prefix));
                let mut newest = None;
                while let Some(meta) = objects.next().await {
                    let meta = meta.map_err(|e| self.unavailable(e))?;
                    newest = newest.max(Some(meta.last_modified));
                }
                if !newest.is_some_and(|t| older_than(t, max_age)) {
                    if report_young {
                        let bytes = self
                            .load_session(&name, upload)
                            .await
                            .map(|(s, _)| s.size)
                            .unwrap_or(0);
                        young.push(Kept {
                            what: Removal::Upload {
                                repository: name.clone(),
                                id,
                                bytes,
                            },
                            age: newest.map(age).unwrap_or_default(),
                        });
                    }
                    continue;
                }
                let bytes = if dry_run {
                    self.load_session(&name, upload)
                        .await
                        .map(|(s, _)| s.size)
                        .unwrap_or(0)
                } else {
                    self.remove_session(&name, upload).await?
                };
                removed.push(Removal::Upload {
                    repository: name.clone(),
                    id,
                    bytes,
                });
            }
        }
        Ok((removed, young))
    }

    pub async fn expire_uploads(&self) -> Result<Vec<Removal>> {
        Ok(self
            .expire(self.settings.upload_max_age, false, false)
            .await?
            .0)
    }

    /// Marks a manifest and everything it references (iteratively).
    async fn mark_manifest(&self, digest: &Digest, marked: &mut HashSet<Digest>) -> Result<()> {
        let mut pending = vec![digest.clone()];
        while let Some(digest) = pending.pop() {
            if !marked.insert(digest.clone()) {
                continue;
            }
            let Some(bytes) = self.read_manifest_bytes(&digest).await? else {
                continue;
            };
            pending.extend(mark_references(&digest, &bytes, marked));
        }
        Ok(())
    }

    /// Mark and sweep. Blobs younger than `storage.upload_max_age` are never
    /// swept: an upload in progress on any replica may be about to name them.
    pub async fn collect_garbage(&self, dry_run: bool, progress: ProgressBar) -> Result<GcReport> {
        let grace = self.settings.upload_max_age;
        let mut report = GcReport::default();
        let repositories = self.walk_repositories(true).await?;
        let catalog: HashSet<RepositoryName> =
            self.walk_repositories(false).await?.into_iter().collect();
        progress.set_length(repositories.len() as u64);
        progress.set_message("marking");
        let mut marked = HashSet::new();
        for name in &repositories {
            for digest in self.list_digest_dirs(&paths::revisions_dir(name)).await? {
                report.manifests_scanned += 1;
                self.mark_manifest(&digest, &mut marked).await?;
            }
            progress.inc(1);
        }

        progress.set_message("sweeping blobs");
        let prefix = self.key(paths::BLOBS);
        let mut listing = self.s3.list(Some(&prefix));
        let mut swept = HashSet::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| self.unavailable(e))?;
            let Some(digest) = self.relative(&meta.location).and_then(blob_digest) else {
                continue;
            };
            if marked.contains(&digest) {
                report.kept_blobs += 1;
                continue;
            }
            if !older_than(meta.last_modified, grace) {
                report.kept_blobs += 1;
                report.kept_young.push(Kept {
                    what: Removal::Blob {
                        digest,
                        bytes: meta.size,
                    },
                    age: age(meta.last_modified),
                });
                continue;
            }
            if !dry_run {
                self.delete(&meta.location).await?;
            }
            report.removed.push(Removal::Blob {
                digest: digest.clone(),
                bytes: meta.size,
            });
            swept.insert(digest);
        }

        progress.set_message("links");
        if !dry_run {
            for name in &repositories {
                for digest in self.list_digest_dirs(&paths::layers_dir(name)).await? {
                    if swept.contains(&digest) {
                        self.delete_tree(paths::layer_link_dir(name, &digest))
                            .await?;
                    }
                }
            }
        }
        let (expired, young) = self.expire(grace, dry_run, true).await?;
        report.removed.extend(expired);
        report.kept_young.extend(young);
        progress.set_message("empty repositories");
        for name in &repositories {
            let listed = catalog.contains(name);
            self.prune_repository(name, grace, dry_run, listed, &swept, &mut report)
                .await?;
        }
        progress.finish_and_clear();
        Ok(report)
    }

    /// Takes a repository with no manifest, no tag and no upload session
    /// (none but those this run expires) out of the catalog, by the rules
    /// of the filesystem's `gc.rs`. There are no directories here: the
    /// catalog lists a name while any key is below its `_manifests/` or
    /// `_layers/`, so what goes is its link objects.
    ///
    /// The invariant against pushes through any replica meanwhile: gc
    /// deletes only keys it listed, one by one (never a prefix), each a link
    /// older than `storage.upload_max_age` (or of a blob this run swept), in
    /// a repository whose listing showed no manifest, tag or session. A key
    /// written after the listing survives, unless it is one of those very
    /// keys written again in that moment (a cross-repository mount of the
    /// same blob: the manifest push that follows then fails cleanly with
    /// `MANIFEST_BLOB_UNKNOWN`). After deleting, gc lists the revisions
    /// again, and if a manifest arrived it writes the layer links back.
    /// What remains: a manifest push that checked its layer links before
    /// gc deleted them and wrote its revision after gc looked again.
    /// `listed`: the catalog listed it when this run started.
    async fn prune_repository(
        &self,
        name: &RepositoryName,
        grace: Duration,
        dry_run: bool,
        listed: bool,
        swept: &HashSet<Digest>,
        report: &mut GcReport,
    ) -> Result<()> {
        let base = format!("{}/", paths::repository_dir(name).display());
        let objects: Vec<object_store::ObjectMeta> = self
            .s3
            .list(Some(&self.key(paths::repository_dir(name))))
            .try_collect()
            .await
            .map_err(|e| self.unavailable(e))?;
        let expired = report.expired_in(name);
        let mut links: Vec<(object_store::path::Path, Option<Digest>)> = Vec::new();
        let mut youngest: Option<Duration> = None;
        for meta in &objects {
            let Some(rest) = self
                .relative(&meta.location)
                .and_then(|r| r.strip_prefix(base.as_str()))
            else {
                continue;
            };
            let parts: Vec<&str> = rest.split('/').collect();
            let own = parts[0];
            if !own.starts_with('_') {
                continue; // a repository nested in this one's name
            }
            match parts.as_slice() {
                ["_uploads", id, ..] if expired.contains(*id) => continue,
                ["_uploads", ..] => return Ok(()),
                ["_manifests", "revisions", _, _, "link"] => return Ok(()),
                ["_manifests", "tags", _, "current", "link"] => return Ok(()),
                _ => {}
            }
            let known = matches!(own, "_layers" | "_manifests" | "_referrers");
            if !known || parts.last() != Some(&"link") {
                report.notes.push(format!(
                    "kept repository {name}: {} is not a link object, and gc does not guess what it is",
                    meta.location
                ));
                return Ok(());
            }
            let layer = match parts.as_slice() {
                ["_layers", alg, hex, "link"] => {
                    Algorithm::parse(alg).and_then(|alg| Digest::from_parts(alg, hex))
                }
                _ => None,
            };
            let swept_layer = layer.as_ref().is_some_and(|d| swept.contains(d));
            if !swept_layer && !older_than(meta.last_modified, grace) {
                let age = age(meta.last_modified);
                youngest = Some(youngest.map_or(age, |y| y.min(age)));
            }
            links.push((meta.location.clone(), layer));
        }
        if let Some(age) = youngest {
            report.kept_young.push(Kept {
                what: Removal::Repository { name: name.clone() },
                age,
            });
            return Ok(());
        }
        if dry_run || links.is_empty() {
            if listed {
                report
                    .removed
                    .push(Removal::Repository { name: name.clone() });
            }
            return Ok(());
        }
        for (key, _) in &links {
            self.delete(key).await?;
        }
        let arrived = self
            .list_digest_dirs(&paths::revisions_dir(name))
            .await?
            .into_iter()
            .next()
            .is_some();
        if arrived {
            for digest in links.iter().filter_map(|(_, layer)| layer.as_ref()) {
                if self.blob_exists(digest).await? {
                    self.link_blob(name, digest).await?;
                }
            }
            report.notes.push(format!(
                "kept repository {name}: a manifest was pushed to it while gc emptied it"
            ));
            return Ok(());
        }
        if listed {
            report
                .removed
                .push(Removal::Repository { name: name.clone() });
        }
        Ok(())
    }

    /// SHA-256 or SHA-512 of an object, streamed; `None` when it is gone.
    async fn hash_blob(&self, digest: &Digest) -> Result<Option<Digest>> {
        let key = self.key(paths::blob_data(digest));
        let got = match self.data.get(&key).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.unavailable(e)),
        };
        let mut chunks = got.into_stream();
        let mut sha256 = sha2::Sha256::new();
        let mut sha512 = sha2::Sha512::new();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| self.unavailable(e))?;
            match digest.algorithm() {
                Algorithm::Sha256 => sha256.update(&chunk),
                Algorithm::Sha512 => sha512.update(&chunk),
            }
        }
        let hex = match digest.algorithm() {
            Algorithm::Sha256 => hex::encode(sha256.finalize()),
            Algorithm::Sha512 => hex::encode(sha512.finalize()),
        };
        Ok(Digest::from_parts(digest.algorithm(), &hex))
    }

    pub async fn fsck(&self, repair: bool, progress: ProgressBar) -> Result<FsckReport> {
        let mut report = FsckReport::default();
        progress.set_message("hashing blobs");
        let prefix = self.key(paths::BLOBS);
        let mut listing = self.s3.list(Some(&prefix));
        let mut stored = HashSet::new();
        let mut blobs = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| self.unavailable(e))?;
            if let Some(digest) = self.relative(&meta.location).and_then(blob_digest) {
                blobs.push(digest);
            }
        }
        progress.set_length(blobs.len() as u64);
        for digest in blobs {
            progress.inc(1);
            let Some(actual) = self.hash_blob(&digest).await? else {
                continue;
            };
            report.blobs_checked += 1;
            if actual == digest {
                stored.insert(digest);
                continue;
            }
            // As on the filesystem: a corrupt blob is still there (and its
            // links not dangling) until --repair quarantines it.
            if !repair {
                stored.insert(digest.clone());
            }
            if repair {
                let data = self.key(paths::blob_data(&digest));
                let target = self.key(PathBuf::from(QUARANTINE).join(format!(
                    "{}-{}",
                    digest.algorithm().as_str(),
                    digest.hex()
                )));
                self.s3
                    .copy(&data, &target)
                    .await
                    .map_err(|e| self.unavailable(e))?;
                self.delete(&data).await?;
            }
            report.found(Finding::CorruptBlob { digest, actual }, repair);
        }

        let repositories = self.walk_repositories(false).await?;
        progress.set_length(repositories.len() as u64);
        progress.set_position(0);
        progress.set_message("repositories");
        for name in &repositories {
            progress.inc(1);
            self.check_repository(name, &stored, repair, &mut report)
                .await?;
        }
        progress.finish_and_clear();
        Ok(report)
    }

    async fn check_repository(
        &self,
        name: &RepositoryName,
        stored: &HashSet<Digest>,
        repair: bool,
        report: &mut FsckReport,
    ) -> Result<()> {
        for digest in self.list_digest_dirs(&paths::layers_dir(name)).await? {
            let link = paths::layer_link(name, &digest);
            let finding = match self.read_link(&link).await {
                Ok(Some(linked)) if linked == digest => {
                    if stored.contains(&digest) {
                        continue;
                    }
                    Finding::DanglingLayer {
                        repository: name.clone(),
                        digest: digest.clone(),
                    }
                }
                Ok(None) => continue,
                Err(StorageError::Unavailable(e)) => return Err(StorageError::Unavailable(e)),
                _ => Finding::BadLink { path: link },
            };
            if repair {
                self.delete_tree(paths::layer_link_dir(name, &digest))
                    .await?;
            }
            report.found(finding, repair);
        }
        let revisions = self.list_digest_dirs(&paths::revisions_dir(name)).await?;
        for digest in &revisions {
            let bytes = self.read_manifest_bytes(digest).await?;
            check_manifest(report, name, digest, bytes.as_deref(), &revisions, |d| {
                stored.contains(d)
            });
        }
        for tag in self.list_dir(paths::tags_dir(name)).await? {
            let Ok(tag) = Tag::parse(&tag) else { continue };
            let current = paths::tag_current_link(name, &tag);
            let finding = match self.read_link(&current).await {
                Ok(Some(digest)) if revisions.contains(&digest) && stored.contains(&digest) => {
                    continue
                }
                Ok(Some(digest)) => Finding::DanglingTag {
                    repository: name.clone(),
                    tag: tag.clone(),
                    digest,
                },
                Ok(None) => continue,
                Err(StorageError::Unavailable(e)) => return Err(StorageError::Unavailable(e)),
                Err(_) => Finding::BadLink { path: current },
            };
            if repair {
                self.delete_tree(paths::tag_dir(name, &tag)).await?;
            }
            report.found(finding, repair);
        }
        Ok(())
    }
}
