//! Garbage collection: mark every blob a manifest in any repository references,
//! sweep the rest, remove abandoned upload sessions and staging files, and
//! take repositories left with no manifest, tag or upload session out of the
//! catalog.
//!
//! Anything younger than `storage.upload_max_age` is left alone, so a blob that
//! was just uploaded for a manifest not yet pushed survives a concurrent `gc`;
//! the report lists what was kept for that reason.
//!
//! An empty repository is removed without a recursive delete: its old link
//! files are removed one by one, then its directories with `rmdir`, children
//! first, so a directory that gained an entry meanwhile (a push arriving)
//! stays, and writers make again any directory they find gone
//! (`retry_in_parent` in `mod.rs`). If a manifest arrived all the same, the
//! layer links gc removed are written back.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use cap_std::fs::Dir;
use indicatif::ProgressBar;

use super::manifests::{every_repository, walk_repositories, ParsedManifest};
use super::{list_blobs, list_digest_dirs, list_dir, paths, remove_tree, FsStorage, Result, Root};
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
    /// A repository with no manifest, tag or upload session left: its
    /// remaining links and directories, so the catalog no longer lists it.
    Repository {
        name: RepositoryName,
    },
}

impl Removal {
    pub fn bytes(&self) -> u64 {
        match self {
            Removal::Blob { bytes, .. }
            | Removal::Upload { bytes, .. }
            | Removal::Staging { bytes, .. } => *bytes,
            Removal::Repository { .. } => 0,
        }
    }
}

/// Something `gc` would have removed but kept because it is younger than
/// `storage.upload_max_age` (a push may be about to use it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    pub what: Removal,
    /// Since it was last written.
    pub age: Duration,
}

impl std::fmt::Display for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let age = humantime::format_duration(Duration::from_secs(self.age.as_secs()));
        write!(f, "{}, {age} old", self.what)
    }
}

/// The age of something last written at `modified` (zero if in the future).
pub(crate) fn age_of(modified: SystemTime) -> Duration {
    SystemTime::now()
        .duration_since(modified)
        .unwrap_or(Duration::ZERO)
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
            Removal::Repository { name } => {
                write!(f, "repository {name} (no manifests, tags or uploads left)")
            }
        }
    }
}

#[derive(Debug, Default)]
pub struct GcReport {
    pub removed: Vec<Removal>,
    /// Unreferenced blobs, upload sessions, staging files and emptied
    /// repositories left alone because they are younger than
    /// `storage.upload_max_age`.
    pub kept_young: Vec<Kept>,
    pub kept_blobs: usize,
    pub manifests_scanned: usize,
    /// Things gc left alone for another reason, said once each (a
    /// repository holding a file gc does not know; a push that arrived
    /// while gc emptied a repository).
    pub notes: Vec<String>,
}

impl GcReport {
    pub fn freed_bytes(&self) -> u64 {
        self.removed.iter().map(Removal::bytes).sum()
    }

    pub fn kept_young_bytes(&self) -> u64 {
        self.kept_young.iter().map(|k| k.what.bytes()).sum()
    }

    /// The sessions this run removes (or would) in `name`.
    pub(crate) fn expired_in(&self, name: &RepositoryName) -> HashSet<String> {
        self.removed
            .iter()
            .filter_map(|r| match r {
                Removal::Upload { repository, id, .. } if repository == name => Some(id.clone()),
                _ => None,
            })
            .collect()
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
                expire_sessions(root, name, max_age, false, &mut removed, &mut Vec::new())?;
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

fn modified(meta: &cap_std::fs::Metadata) -> io::Result<SystemTime> {
    meta.modified().map(|t| t.into_std())
}

fn collect(
    root: &Root,
    dry_run: bool,
    grace: Duration,
    progress: &ProgressBar,
) -> Result<GcReport> {
    let mut report = GcReport::default();
    // Repositories holding only abandoned uploads count too, so those get cleaned.
    let repositories = every_repository(root)?;
    let mut catalog = Vec::new();
    walk_repositories(
        root,
        Path::new(paths::REPOSITORIES),
        "",
        false,
        &mut catalog,
    )?;
    let catalog: HashSet<RepositoryName> = catalog.into_iter().collect();

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
        if !older_than(modified(&meta), grace) {
            report.kept_blobs += 1;
            report.kept_young.push(Kept {
                what: Removal::Blob {
                    digest: digest.clone(),
                    bytes: meta.len(),
                },
                age: modified(&meta).map(age_of).unwrap_or_default(),
            });
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
        expire_sessions(
            root,
            name,
            grace,
            dry_run,
            &mut report.removed,
            &mut report.kept_young,
        )?;
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
        let what = Removal::Staging {
            file,
            bytes: meta.len(),
        };
        if older_than(modified(&meta), grace) {
            if !dry_run {
                root.remove_file(&path)?;
            }
            report.removed.push(what);
        } else {
            let age = modified(&meta).map(age_of).unwrap_or_default();
            report.kept_young.push(Kept { what, age });
        }
    }

    progress.set_message("empty repositories");
    for name in &repositories {
        let listed = catalog.contains(name);
        prune_repository(root, name, grace, dry_run, listed, &swept, &mut report)?;
    }
    progress.finish_and_clear();
    Ok(report)
}

/// Whether `name` has a manifest (a revision with its link).
fn has_manifests(root: &Dir, name: &RepositoryName) -> io::Result<bool> {
    Ok(list_digest_dirs(root, &paths::revisions_dir(name))?
        .iter()
        .any(|d| root.is_file(paths::revision_link(name, d))))
}

/// Whether `name` has a tag (a tag directory with its current link).
fn has_tags(root: &Dir, name: &RepositoryName) -> io::Result<bool> {
    Ok(list_dir(root, &paths::tags_dir(name))?
        .iter()
        .filter_map(|t| crate::reference::Tag::parse(t).ok())
        .any(|t| root.is_file(paths::tag_current_link(name, &t))))
}

/// The directories of a repository that are its own (`_layers`,
/// `_manifests`, ...), not those of repositories nested in its name.
fn own_dirs(root: &Dir, name: &RepositoryName) -> io::Result<Vec<PathBuf>> {
    let dir = paths::repository_dir(name);
    Ok(list_dir(root, &dir)?
        .into_iter()
        .filter(|entry| entry.starts_with('_'))
        .map(|entry| dir.join(entry))
        .collect())
}

/// Takes a repository with no manifest, no tag and no upload session (none
/// but those this run expires) out of the catalog: its link files older
/// than `grace` (and those of blobs swept this run) go one by one, then its
/// directories by `rmdir`, children first. A link younger than `grace`
/// keeps the repository (a push may be under way); so does any file that
/// is not a link, which gc does not guess about. `listed`: the catalog
/// listed it when this run started (only then is its removal reported).
fn prune_repository(
    root: &Root,
    name: &RepositoryName,
    grace: Duration,
    dry_run: bool,
    listed: bool,
    swept: &HashSet<Digest>,
    report: &mut GcReport,
) -> Result<()> {
    if has_manifests(root, name)? || has_tags(root, name)? {
        return Ok(());
    }
    let expired = report.expired_in(name);
    if list_dir(root, &paths::uploads_dir(name))?
        .iter()
        .any(|id| !expired.contains(id))
    {
        return Ok(());
    }
    let uploads = paths::uploads_dir(name);
    let layers = paths::layers_dir(name);
    let mut links = Vec::new();
    let mut youngest: Option<Duration> = None;
    let mut pending: Vec<PathBuf> = own_dirs(root, name)?
        .into_iter()
        .filter(|d| *d != uploads)
        .collect();
    while let Some(dir) = pending.pop() {
        for entry in list_dir(root, &dir)? {
            let path = dir.join(&entry);
            let meta = match root.symlink_metadata(&path) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            if meta.is_dir() {
                pending.push(path);
                continue;
            }
            if !meta.is_file() || entry != "link" {
                report.notes.push(format!(
                    "kept repository {name}: {} is not a link file, and gc does not guess what it is",
                    path.display()
                ));
                return Ok(());
            }
            // `_layers/<alg>/<hex>/link` of a blob this run swept goes
            // whatever its age (on a real run it is gone already).
            let swept_layer = path.strip_prefix(&layers).ok().is_some_and(|rest| {
                let mut parts = rest.iter().filter_map(|p| p.to_str());
                match (parts.next(), parts.next()) {
                    (Some(alg), Some(hex)) => crate::reference::Algorithm::parse(alg)
                        .and_then(|alg| Digest::from_parts(alg, hex))
                        .is_some_and(|d| swept.contains(&d)),
                    _ => false,
                }
            });
            if !swept_layer && !older_than(modified(&meta), grace) {
                let age = modified(&meta).map(age_of).unwrap_or_default();
                youngest = Some(youngest.map_or(age, |y| y.min(age)));
            }
            links.push(path);
        }
    }
    if let Some(age) = youngest {
        report.kept_young.push(Kept {
            what: Removal::Repository { name: name.clone() },
            age,
        });
        return Ok(());
    }
    let dir = paths::repository_dir(name);
    if dry_run {
        if listed {
            report
                .removed
                .push(Removal::Repository { name: name.clone() });
        }
        return Ok(());
    }
    let mut unlinked = Vec::new();
    for link in &links {
        match root.remove_file(link) {
            Ok(()) => unlinked.push(link.clone()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    for own in own_dirs(root, name)? {
        remove_empty_dirs(root, &own)?;
    }
    // The repository's directory and its parents up to `repositories/`,
    // each only if empty (a nested repository keeps its parents).
    let mut up = Some(dir.as_path());
    while let Some(path) = up.filter(|p| *p != Path::new(paths::REPOSITORIES)) {
        if !remove_dir_if_empty(root, path)? {
            break;
        }
        up = path.parent();
    }
    // A manifest pushed while this ran stands: the layer links it may name
    // come back (their blobs are there: gc swept none a manifest names).
    if has_manifests(root, name)? {
        for link in unlinked.iter().filter(|l| l.starts_with(&layers)) {
            let mut parts = link
                .strip_prefix(&layers)
                .into_iter()
                .flat_map(|r| r.iter());
            let (Some(alg), Some(hex)) = (
                parts.next().and_then(|p| p.to_str()),
                parts.next().and_then(|p| p.to_str()),
            ) else {
                continue;
            };
            let Some(digest) = crate::reference::Algorithm::parse(alg)
                .and_then(|alg| Digest::from_parts(alg, hex))
            else {
                continue;
            };
            if root.is_file(paths::blob_data(&digest)) {
                super::write_link(root, link, &digest)?;
            }
        }
        report.notes.push(format!(
            "kept repository {name}: a manifest was pushed to it while gc emptied it"
        ));
        return Ok(());
    }
    if listed && !root.is_dir(dir.join("_manifests")) && !root.is_dir(&layers) {
        report
            .removed
            .push(Removal::Repository { name: name.clone() });
    }
    Ok(())
}

/// `rmdir`: true when removed (or already gone), false when the directory
/// is not empty (it gained an entry since it was looked at).
fn remove_dir_if_empty(root: &Dir, path: &Path) -> io::Result<bool> {
    match root.remove_dir(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e)
            if e.kind() == io::ErrorKind::DirectoryNotEmpty
                || e.raw_os_error() == Some(libc::EEXIST) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Removes the empty directories below and at `top`, children first, by
/// `rmdir` only: a directory holding anything (a file, or an entry made
/// since it was listed) stays, and so do its parents. Symbolic links are
/// not followed.
fn remove_empty_dirs(root: &Dir, top: &Path) -> io::Result<()> {
    let mut stack = vec![(top.to_path_buf(), false)];
    while let Some((path, children_done)) = stack.pop() {
        if children_done {
            remove_dir_if_empty(root, &path)?;
            continue;
        }
        match root.symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
        stack.push((path.clone(), true));
        for entry in list_dir(root, &path)? {
            stack.push((path.join(entry), false));
        }
    }
    Ok(())
}

/// Removes `name`'s upload sessions untouched for longer than `max_age`;
/// the younger ones go to `young`.
fn expire_sessions(
    root: &Dir,
    name: &RepositoryName,
    max_age: Duration,
    dry_run: bool,
    removed: &mut Vec<Removal>,
    young: &mut Vec<Kept>,
) -> Result<()> {
    let uploads = paths::uploads_dir(name);
    for id in list_dir(root, &uploads)? {
        let dir = uploads.join(&id);
        let data = root.metadata(dir.join("data"));
        let last_touch = match &data {
            Ok(m) => m.modified(),
            Err(_) => root.metadata(&dir).and_then(|m| m.modified()),
        };
        let last_touch = last_touch.map(|t| t.into_std()).ok();
        let what = Removal::Upload {
            repository: name.clone(),
            id,
            bytes: data.map(|m| m.len()).unwrap_or(0),
        };
        if last_touch.is_some_and(|t| age_of(t) > max_age) {
            if !dry_run {
                remove_tree(root, &dir)?;
            }
            removed.push(what);
        } else {
            let age = last_touch.map(age_of).unwrap_or_default();
            young.push(Kept { what, age });
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
