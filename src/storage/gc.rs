//! Garbage collection: mark every blob a manifest in any repository references,
//! sweep the rest, and remove abandoned upload sessions and staging files.
//!
//! Anything younger than `storage.upload_max_age` is left alone, so a blob that
//! was just uploaded for a manifest not yet pushed survives a concurrent `gc`.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use cap_std::fs::Dir;
use indicatif::ProgressBar;

use super::manifests::{every_repository, ParsedManifest};
use super::{list_blobs, list_digest_dirs, list_dir, paths, remove_tree, FsStorage, Result};
use crate::reference::{Digest, RepositoryName};

/// One thing `gc` removed (or, on a dry run, would remove).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    Blob {
        digest: Digest,
        bytes: u64,
    },
    Upload {
        repository: RepositoryName,
        id: String,
        bytes: u64,
    },
    Staging {
        file: String,
        bytes: u64,
    },
}

impl Removal {
    pub fn bytes(&self) -> u64 {
        match self {
            Removal::Blob { bytes, .. }
            | Removal::Upload { bytes, .. }
            | Removal::Staging { bytes, .. } => *bytes,
        }
    }
}

impl std::fmt::Display for Removal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Removal::Blob { digest, bytes } => write!(f, "blob {digest} ({bytes} bytes)"),
            Removal::Upload {
                repository,
                id,
                bytes,
            } => write!(f, "upload {repository}/{id} ({bytes} bytes)"),
            Removal::Staging { file, bytes } => write!(f, "staging file {file} ({bytes} bytes)"),
        }
    }
}

#[derive(Debug, Default)]
pub struct GcReport {
    pub removed: Vec<Removal>,
    pub kept_blobs: usize,
    pub manifests_scanned: usize,
}

impl GcReport {
    pub fn freed_bytes(&self) -> u64 {
        self.removed.iter().map(Removal::bytes).sum()
    }
}

impl FsStorage {
    /// Deletes upload sessions nobody touched for `storage.upload_max_age`
    /// (the server runs this periodically; `gc` does it too).
    pub async fn expire_uploads(&self) -> Result<Vec<Removal>> {
        let max_age = self.settings.upload_max_age;
        self.blocking(move |root| {
            let repositories = every_repository(root)?;
            let mut removed = Vec::new();
            for name in &repositories {
                expire_sessions(root, name, max_age, false, &mut removed)?;
            }
            Ok(removed)
        })
        .await
    }

    /// Runs a full mark and sweep. `progress` is drawn only on a terminal.
    pub async fn collect_garbage(&self, dry_run: bool, progress: ProgressBar) -> Result<GcReport> {
        let grace = self.settings.upload_max_age;
        self.blocking(move |root| collect(root, dry_run, grace, &progress))
            .await
    }
}

fn older_than(modified: io::Result<SystemTime>, age: Duration) -> bool {
    modified
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .is_some_and(|elapsed| elapsed > age)
}

fn collect(root: &Dir, dry_run: bool, grace: Duration, progress: &ProgressBar) -> Result<GcReport> {
    let mut report = GcReport::default();
    // Repositories holding only abandoned uploads count too, so those get cleaned.
    let repositories = every_repository(root)?;

    // Mark.
    progress.set_length(repositories.len() as u64);
    progress.set_message("marking");
    let mut marked: HashSet<Digest> = HashSet::new();
    for name in &repositories {
        for digest in list_digest_dirs(root, &paths::revisions_dir(name))? {
            report.manifests_scanned += 1;
            mark_manifest(root, &digest, &mut marked);
        }
        progress.inc(1);
    }

    // Sweep blobs.
    progress.set_message("sweeping blobs");
    progress.set_position(0);
    let candidates = list_blobs(root)?;
    progress.set_length(candidates.len() as u64);
    let mut swept = HashSet::new();
    for digest in candidates {
        progress.inc(1);
        if marked.contains(&digest) {
            report.kept_blobs += 1;
            continue;
        }
        let meta = match root.metadata(paths::blob_data(&digest)) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        if !older_than(meta.modified().map(|t| t.into_std()), grace) {
            report.kept_blobs += 1;
            continue;
        }
        if !dry_run {
            remove_tree(root, &paths::blob_dir(&digest))?;
        }
        report.removed.push(Removal::Blob {
            digest: digest.clone(),
            bytes: meta.len(),
        });
        swept.insert(digest);
    }

    // Links to swept blobs, link directories a crash left without their
    // link, and abandoned uploads.
    progress.set_message("uploads");
    for name in &repositories {
        if !dry_run {
            for digest in list_digest_dirs(root, &paths::layers_dir(name))? {
                let dir = paths::layer_link_dir(name, &digest);
                let unlinked = || {
                    matches!(root.metadata(paths::layer_link(name, &digest)), Err(e) if e.kind() == io::ErrorKind::NotFound)
                        && older_than(
                            root.metadata(&dir)
                                .and_then(|m| m.modified())
                                .map(|t| t.into_std()),
                            grace,
                        )
                };
                if swept.contains(&digest) || unlinked() {
                    remove_tree(root, &dir)?;
                }
            }
        }
        expire_sessions(root, name, grace, dry_run, &mut report.removed)?;
    }
    // Staging files: in `_tmp`'s shard directories (and, from older
    // versions, in `_tmp` itself).
    let mut staged = Vec::new();
    for entry in list_dir(root, Path::new(paths::TMP))? {
        let path = PathBuf::from(paths::TMP).join(&entry);
        if root.is_dir(&path) {
            for file in list_dir(root, &path)? {
                staged.push((format!("{entry}/{file}"), path.join(file)));
            }
        } else {
            staged.push((entry, path));
        }
    }
    for (file, path) in staged {
        let meta = root.metadata(&path)?;
        if older_than(meta.modified().map(|t| t.into_std()), grace) {
            if !dry_run {
                root.remove_file(&path)?;
            }
            report.removed.push(Removal::Staging {
                file,
                bytes: meta.len(),
            });
        }
    }
    progress.finish_and_clear();
    Ok(report)
}

/// Removes `name`'s upload sessions untouched for longer than `max_age`.
fn expire_sessions(
    root: &Dir,
    name: &RepositoryName,
    max_age: Duration,
    dry_run: bool,
    removed: &mut Vec<Removal>,
) -> Result<()> {
    let uploads = paths::uploads_dir(name);
    for id in list_dir(root, &uploads)? {
        let dir = uploads.join(&id);
        let data = root.metadata(dir.join("data"));
        let last_touch = match &data {
            Ok(m) => m.modified(),
            Err(_) => root.metadata(&dir).and_then(|m| m.modified()),
        };
        if older_than(last_touch.map(|t| t.into_std()), max_age) {
            if !dry_run {
                remove_tree(root, &dir)?;
            }
            removed.push(Removal::Upload {
                repository: name.clone(),
                id,
                bytes: data.map(|m| m.len()).unwrap_or(0),
            });
        }
    }
    Ok(())
}

/// Marks a manifest and everything it references. A manifest that cannot be
/// read or parsed keeps only itself: gc never deletes what it does not understand
/// beyond the blobs nobody names. Iterative: index nesting has no depth limit.
fn mark_manifest(root: &Dir, digest: &Digest, marked: &mut HashSet<Digest>) {
    let mut pending = vec![digest.clone()];
    while let Some(digest) = pending.pop() {
        if !marked.insert(digest.clone()) {
            continue;
        }
        let Ok(bytes) = root.read(paths::blob_data(&digest)) else {
            continue;
        };
        pending.extend(mark_references(&digest, &bytes, marked));
    }
}

/// Marks the blobs a manifest's `bytes` reference; returns its child
/// manifests, to be marked in turn. A manifest that cannot be parsed keeps
/// only itself (both backends' gc use this).
pub(crate) fn mark_references(
    digest: &Digest,
    bytes: &[u8],
    marked: &mut HashSet<Digest>,
) -> Vec<Digest> {
    let Ok(manifest) = ParsedManifest::parse(bytes, None) else {
        tracing::warn!(%digest, "gc: manifest cannot be parsed; keeping it but not its references");
        return Vec::new();
    };
    for blob in manifest.referenced_blobs().chain(manifest.layers.iter()) {
        marked.insert(blob.digest.clone());
    }
    manifest
        .manifests
        .iter()
        .map(|child| child.digest.clone())
        .collect()
}
