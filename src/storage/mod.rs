//! Content storage: blobs, upload sessions, manifests, tags and referrers, in
//! Distribution's filesystem layout (see `paths.rs`).
//!
//! Every file operation goes through one `cap_std::fs::Dir` opened on the layout
//! root, with paths built only from typed names, so nothing a client sends can
//! reach outside it. Writes are staged and renamed into place after an fsync:
//! a crash leaves the old state or the new one, never a partial file.
//! This layer knows nothing of HTTP; the API layer maps `StorageError` to the
//! spec's error codes.

mod backend;
mod blobs;
pub mod fsck;
pub mod gc;
mod manifests;
pub mod paths;
pub mod permissions;
pub mod records;
pub mod s3;
pub mod uploads;

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use std::os::unix::fs::DirBuilderExt as _;

use cap_std::ambient_authority;
use cap_std::fs::Dir;

use crate::reference::{Digest, RepositoryName, UploadId};

pub use backend::Storage;
pub use blobs::{BlobInfo, BlobReader};
pub use manifests::{
    refuse_folded_keys, Descriptor, ManifestKind, ObjectKeys, ParsedManifest, Platform,
    StoredManifest, TagRecord, MEDIA_TYPE_DOCKER_LIST, MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST,
};
pub use uploads::UploadStatus;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("blob {0} is not known to this repository")]
    BlobUnknown(Digest),
    #[error("upload session {0} does not exist or has ended")]
    UploadUnknown(UploadId),
    #[error("chunk starts at byte {got} but the upload has {expected} bytes; send the next chunk from byte {expected}")]
    UploadOutOfOrder { expected: u64, got: u64 },
    #[error("upload has digest {actual}, not the {expected} the client declared")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("body has {actual} bytes, not the {declared} declared")]
    SizeMismatch { declared: u64, actual: u64 },
    #[error("manifest {0} is not known to this repository")]
    ManifestUnknown(String),
    #[error("repository {0} is not known")]
    NameUnknown(RepositoryName),
    #[error("manifest invalid: {0}")]
    ManifestInvalid(String),
    #[error("manifest references {0}, which is not in this repository; push it first")]
    ManifestBlobUnknown(Digest),
    #[error("manifest digest is {actual}, not the {expected} in the URL")]
    ManifestDigestMismatch { expected: Digest, actual: Digest },
    #[error("client body error: {0}")]
    Body(String),
    #[error("tag {0} was changed by another push while this one was checked; try again")]
    TagChanged(crate::reference::Tag),
    #[error("the tags naming {0} changed while its delete was checked; try again")]
    DigestTagsChanged(Digest),
    #[error("tag now names {now:?}, written by another push just after this one's {ours}")]
    TagSuperseded { ours: Digest, now: Option<Digest> },
    #[error("storage backend unavailable: {0}")]
    Unavailable(String),
    #[error("storage I/O error: {0}")]
    Io(#[from] io::Error),
}

/// Striped locks serialising tag updates within one process: a tag's check
/// (what it names now) and its move happen under the same lock; and a
/// manifest delete with every manifest push of its repository (pushes share
/// the repository's lock, a delete owns it), so that no push can point a tag
/// at a manifest whose revision a delete is removing.
pub(crate) struct TagLocks {
    tags: [std::sync::Mutex<()>; 64],
    repositories: [std::sync::RwLock<()>; 64],
}

impl Default for TagLocks {
    fn default() -> Self {
        Self {
            tags: std::array::from_fn(|_| std::sync::Mutex::new(())),
            repositories: std::array::from_fn(|_| std::sync::RwLock::new(())),
        }
    }
}

impl TagLocks {
    pub(crate) fn lock(
        &self,
        name: &RepositoryName,
        tag: &crate::reference::Tag,
    ) -> std::sync::MutexGuard<'_, ()> {
        self.tags[stripe((name.as_str(), tag.as_str()), self.tags.len())]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Held by a manifest push while it writes its links (before a tag lock).
    pub(crate) fn share_repository(
        &self,
        name: &RepositoryName,
    ) -> std::sync::RwLockReadGuard<'_, ()> {
        self.repositories[stripe(name.as_str(), self.repositories.len())]
            .read()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Held by a manifest delete from its check to its last removal.
    pub(crate) fn own_repository(
        &self,
        name: &RepositoryName,
    ) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.repositories[stripe(name.as_str(), self.repositories.len())]
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// Which of `stripes` locks guards `key` (a repository, or a repository and a tag).
pub(crate) fn stripe(key: impl std::hash::Hash, stripes: usize) -> usize {
    use std::hash::Hasher;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() % stripes as u64) as usize
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

#[derive(Debug, Clone)]
pub struct StorageSettings {
    pub upload_max_age: Duration,
    pub permissions: Permissions,
    pub small_reads: crate::config::SmallReads,
}

impl StorageSettings {
    /// Settings from the config, with the group name resolved to a gid.
    pub fn from_config(config: &crate::config::StorageConfig) -> std::result::Result<Self, String> {
        let (file_mode, dir_mode) = config.modes().map_err(|e| e.to_string())?;
        let gid = match &config.group {
            None => None,
            Some(crate::config::Group::Id(gid)) => Some(*gid),
            Some(crate::config::Group::Name(raw)) => Some(match raw.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => nix::unistd::Group::from_name(raw)
                    .map_err(|e| format!("storage.group {raw:?}: {e}"))?
                    .ok_or_else(|| format!("storage.group {raw:?}: no such group"))?
                    .gid
                    .as_raw(),
            }),
        };
        Ok(Self {
            upload_max_age: config.upload_max_age,
            small_reads: config.small_reads,
            permissions: Permissions {
                file_mode,
                dir_mode,
                gid,
            },
        })
    }
}

/// How a command opens the store: what it may create, and whether it may
/// write at all. Only `serve` makes a missing root: every other command that
/// opens the store (gc, fsck, token, policy audit) is told of a missing root
/// (a typo, or the relative default `./data` run from another directory)
/// instead of making an empty store and reporting on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// `serve`: the root and the layout in it are made if missing (a first
    /// start).
    Serve,
    /// The root must exist; the layout is made in it if missing
    /// (`token create` before the registry's first start, in a root a
    /// package or systemd's `StateDirectory=` made).
    AddTo,
    /// The root must exist and hold the layout (`docker/registry/v2`);
    /// opening makes nothing (gc, `fsck --repair`, `token revoke`).
    Maintain,
    /// As `Maintain`, and nothing is written at all, not even a probe: a dry
    /// run, `fsck` without `--repair`, `token list`, `policy audit`.
    ReadOnly,
}

impl OpenMode {
    fn makes_root(self) -> bool {
        self == OpenMode::Serve
    }

    fn makes_layout(self) -> bool {
        matches!(self, OpenMode::Serve | OpenMode::AddTo)
    }
}

/// The root of a maintenance command that does not exist, or holds no
/// registry: what to tell the operator (`what` the root is, then `hint`).
fn missing_root(root: &Path, what: &str, hint: &str) -> io::Error {
    let shown = std::path::absolute(root).unwrap_or_else(|_| root.to_owned());
    io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "storage root {} {what}; {hint} storage.root (in the file given with --config, \
             or PORTCULLIS_STORAGE__ROOT)",
            shown.display()
        ),
    )
}

const SET_ROOT: &str = "only `portcullis serve` creates a missing root, no other command \
                        does: set it to the registry's data directory with";

/// That `root` exists and is a directory (the maintenance commands' check).
fn check_root_is_dir(root: &Path) -> io::Result<()> {
    match std::fs::metadata(root) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(missing_root(root, "is not a directory", SET_ROOT)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(missing_root(root, "does not exist", SET_ROOT))
        }
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot read storage root {}: {e}", root.display()),
        )),
    }
}

/// That `root` exists and holds a registry (`docker/registry/v2`): a root
/// that `serve` never used, or the directory above or below the right one,
/// is not taken for an empty store.
pub(crate) fn check_existing_root(root: &Path) -> io::Result<()> {
    check_root_is_dir(root)?;
    if root.join(paths::LAYOUT_ROOT).is_dir() {
        return Ok(());
    }
    Err(missing_root(
        root,
        &format!(
            "holds no registry data ({} does not exist in it)",
            paths::LAYOUT_ROOT
        ),
        "a root `portcullis serve` never started on has none, and neither has the directory \
         above or below the right one: check",
    ))
}

/// What every file and directory the registry creates gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permissions {
    pub file_mode: u32,
    pub dir_mode: u32,
    pub gid: Option<u32>,
}

/// The layout root: a directory handle plus the permissions new entries get.
/// It derefs to the `Dir`, so reads go straight through; creating goes
/// through `create_dirs` and `create_file`.
pub(crate) struct Root {
    dir: Dir,
    permissions: Permissions,
    /// Opened with [`OpenMode::ReadOnly`]: creating anything is refused (a
    /// fence behind the callers' own `dry_run` checks).
    read_only: bool,
}

impl std::ops::Deref for Root {
    type Target = Dir;
    fn deref(&self) -> &Dir {
        &self.dir
    }
}

impl Root {
    /// Creates `path` and any missing parents with the directory mode and group.
    /// Like `create_dir_all`: one `mkdir` when the parent exists (the common
    /// case), walking up only as far as directories are missing.
    pub(crate) fn create_dirs(&self, path: &Path) -> io::Result<()> {
        self.refuse_if_read_only(path)?;
        // A parent made a moment ago can be gone again (`gc` removes empty
        // directories): start over a few times.
        let mut tries = 0;
        loop {
            match self.create_dirs_once(path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound && tries < 3 => tries += 1,
                other => return other,
            }
        }
    }

    fn create_dirs_once(&self, path: &Path) -> io::Result<()> {
        use cap_std::fs::DirBuilderExt;
        if path.as_os_str().is_empty() {
            return Ok(());
        }
        let mut builder = cap_std::fs::DirBuilder::new();
        builder.mode(self.permissions.dir_mode);
        let created = match self.dir.create_dir_with(path, &builder) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => match path.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => {
                    self.create_dirs_once(parent)?;
                    self.dir.create_dir_with(path, &builder)
                }
                _ => Err(e),
            },
            other => other,
        };
        match created {
            Ok(()) => self.set_group(path),
            // Already there (made by another request meanwhile, perhaps).
            Err(_) if self.dir.is_dir(path) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn set_group(&self, dir: &Path) -> io::Result<()> {
        let Some(gid) = self.permissions.gid else {
            return Ok(());
        };
        // cap-std opens directories O_PATH, which fchown refuses; fchownat
        // with an empty path works on it, still without resolving any name
        // outside the handle.
        let dir = self.dir.open_dir(dir)?;
        rustix::fs::chownat(
            &dir,
            "",
            None,
            Some(rustix::fs::Gid::from_raw(gid)),
            rustix::fs::AtFlags::EMPTY_PATH,
        )
        .map_err(io::Error::from)
    }

    fn refuse_if_read_only(&self, path: &Path) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{}: the store was opened read-only", path.display()),
            ));
        }
        Ok(())
    }

    /// Creates a new file (it must not exist) with the file mode and group.
    /// A missing parent directory is made (again): `gc` removes directories
    /// it finds empty, and one may go just before a file is made in it.
    pub(crate) fn create_file(&self, path: &Path) -> io::Result<cap_std::fs::File> {
        use cap_std::fs::OpenOptionsExt;
        self.refuse_if_read_only(path)?;
        let mut options = cap_std::fs::OpenOptions::new();
        options
            .write(true)
            .create_new(true)
            .mode(self.permissions.file_mode);
        let file = retry_in_parent(self, path, || self.dir.open_with(path, &options))?;
        if let Some(gid) = self.permissions.gid {
            chown_group(&file, gid)?;
        }
        Ok(file)
    }
}

/// Runs `make` (which creates `path`), and again after making `path`'s
/// parent when it failed for want of that parent: `gc` removes empty
/// directories with `rmdir`, and a writer may lose the directory it just
/// made in that moment. A few tries; a directory that keeps vanishing is an
/// error.
fn retry_in_parent<T>(
    root: &Root,
    path: &Path,
    mut make: impl FnMut() -> io::Result<T>,
) -> io::Result<T> {
    let mut tries = 0;
    loop {
        match make() {
            Err(e) if e.kind() == io::ErrorKind::NotFound && tries < 3 => {
                tries += 1;
                root.create_dirs(parent_of(path))?;
            }
            other => return other,
        }
    }
}

/// Whether `dir` is on a filesystem known to be local (its small reads come
/// from the page cache or a local disk). Network and FUSE filesystems, and
/// anything unrecognised, are not.
fn is_local_filesystem(dir: &Dir) -> bool {
    const LOCAL: [u64; 9] = [
        0xEF53,      // ext2/3/4
        0x5846_5342, // xfs
        0x9123_683E, // btrfs
        0x0102_1994, // tmpfs
        0x2FC1_2FC1, // zfs
        0x794C_7630, // overlayfs
        0xF2F5_2010, // f2fs
        0x8584_58F6, // ramfs
        0x4244,      // hfs+ (macOS disks mounted on Linux)
    ];
    match rustix::fs::fstatfs(dir) {
        #[allow(clippy::unnecessary_cast)]
        Ok(stat) => LOCAL.contains(&(stat.f_type as u64)),
        Err(_) => false,
    }
}

/// A gid the process may not use is an error the operator sees at startup
/// (the write probe), not at the first push.
fn chown_group(fd: impl std::os::fd::AsFd, gid: u32) -> io::Result<()> {
    rustix::fs::fchown(fd, None, Some(rustix::fs::Gid::from_raw(gid))).map_err(io::Error::from)
}

/// The registry's content store on a local filesystem.
#[derive(Clone)]
pub struct FsStorage {
    root: Arc<Root>,
    location: PathBuf,
    settings: StorageSettings,
    uploads: Arc<uploads::Sessions>,
    /// Whether [`FsStorage::small_read`] runs on the caller's thread.
    inline_small_reads: bool,
    tag_locks: Arc<TagLocks>,
}

impl FsStorage {
    /// Opens (creating if needed) the data directory at `root`, as `serve` does.
    pub fn open(root: &Path, settings: StorageSettings) -> io::Result<Self> {
        Self::open_with(root, settings, OpenMode::Serve)
    }

    /// Opens the data directory at `root`, creating only what `mode` allows.
    pub fn open_with(root: &Path, settings: StorageSettings, mode: OpenMode) -> io::Result<Self> {
        let layout = root.join(paths::LAYOUT_ROOT);
        let context = |what: &str, e: io::Error| {
            io::Error::new(
                e.kind(),
                format!("cannot {what} storage root {}: {e}", root.display()),
            )
        };
        if !mode.makes_root() {
            check_root_is_dir(root)?;
        }
        if !mode.makes_layout() {
            check_existing_root(root)?;
        }
        // The configured root is the operator's; everything below it is ours
        // and gets our modes and group.
        if mode.makes_root() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(settings.permissions.dir_mode)
                .create(root)
                .map_err(|e| context("create", e))?;
        }
        let read_only = mode == OpenMode::ReadOnly;
        let base = Root {
            dir: Dir::open_ambient_dir(root, ambient_authority())
                .map_err(|e| context("open", e))?,
            permissions: settings.permissions,
            read_only,
        };
        if mode.makes_layout() {
            base.create_dirs(Path::new(paths::LAYOUT_ROOT))
                .map_err(|e| context("create the layout in", e))?;
        }
        let root = Root {
            dir: base.open_dir(paths::LAYOUT_ROOT)?,
            permissions: settings.permissions,
            read_only,
        };
        // A `registry:2` directory has no `_tmp`; writers make what they
        // miss (`retry_in_parent`), so only `serve` lays it all out up front.
        if mode.makes_layout() {
            for dir in [paths::TMP, paths::BLOBS, paths::REPOSITORIES] {
                root.create_dirs(Path::new(dir))?;
            }
            for shard in paths::TMP_SHARDS {
                root.create_dirs(&Path::new(paths::TMP).join(shard))?;
            }
        }
        let inline_small_reads = match settings.small_reads {
            crate::config::SmallReads::Inline => true,
            crate::config::SmallReads::Pool => false,
            crate::config::SmallReads::Auto => is_local_filesystem(&root),
        };
        Ok(Self {
            root: Arc::new(root),
            location: layout,
            settings,
            uploads: Arc::new(uploads::Sessions::default()),
            inline_small_reads,
            tag_locks: Arc::default(),
        })
    }

    /// The layout root on the host, for messages only.
    pub fn location(&self) -> &Path {
        &self.location
    }

    pub fn settings(&self) -> &StorageSettings {
        &self.settings
    }

    /// Runs filesystem work off the async runtime's threads.
    async fn blocking<T, F>(&self, work: F) -> Result<T>
    where
        F: FnOnce(&Root) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let root = Arc::clone(&self.root);
        tokio::task::spawn_blocking(move || work(&root))
            .await
            .map_err(|e| StorageError::Io(io::Error::other(format!("storage task failed: {e}"))))?
    }

    /// Runs a read of a few small files (links, a manifest): on the caller's
    /// thread when the filesystem is local, where that takes microseconds
    /// from the page cache and a hop to the blocking pool and back cost a
    /// manifest GET about a quarter of its time (28k -> 37k requests/s);
    /// on the blocking pool for network filesystems, whose round trips must
    /// not stall the runtime. `storage.small_reads` overrides the choice.
    async fn small_read<T, F>(&self, work: F) -> Result<T>
    where
        F: FnOnce(&Root) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        if self.inline_small_reads {
            work(&self.root)
        } else {
            self.blocking(work).await
        }
    }

    /// Checks that the store can be written (a file created, synced and
    /// removed in `_tmp`): the readiness probe, and a start-up check.
    pub async fn probe_writable(&self) -> Result<()> {
        self.blocking(|root| {
            let probe = paths::temp_file();
            let mut file = root.create_file(&probe)?;
            file.write_all(b"probe")?;
            file.sync_all()?;
            root.remove_file(&probe)?;
            Ok(())
        })
        .await
    }

    /// Bytes held in blobs, for the storage metric.
    /// Streams the walk: memory stays flat however many blobs there are (a
    /// list of every digest, made each minute on a growing store, raised the
    /// server's resident memory step by step in the long soak).
    pub async fn blob_bytes(&self) -> Result<u64> {
        self.blocking(|root| {
            let mut total = 0;
            for_each_blob(root, |digest| {
                if let Ok(meta) = root.metadata(paths::blob_data(&digest)) {
                    total += meta.len();
                }
            })?;
            Ok(total)
        })
        .await
    }

    /// Whether the repository has any content at all.
    pub async fn repository_exists(&self, name: &RepositoryName) -> Result<bool> {
        let dir = paths::repository_dir(name);
        self.blocking(move |root| Ok(root.is_dir(dir))).await
    }
}

/// Small files of the registry's own (`records`), relative to the layout root.
impl FsStorage {
    pub(crate) async fn put_small(&self, path: PathBuf, bytes: bytes::Bytes) -> Result<()> {
        self.blocking(move |root| Ok(write_atomic(root, &path, &bytes)?))
            .await
    }

    pub(crate) async fn get_small(
        &self,
        path: PathBuf,
        limit: u64,
    ) -> Result<Option<bytes::Bytes>> {
        self.blocking(move |root| {
            let file = match root.open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let mut bytes = Vec::new();
            Read::take(file, limit + 1).read_to_end(&mut bytes)?;
            if bytes.len() as u64 > limit {
                return Err(StorageError::Io(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is larger than {limit} bytes", path.display()),
                )));
            }
            Ok(Some(bytes.into()))
        })
        .await
    }

    pub(crate) async fn list_small(&self, dir: PathBuf) -> Result<Vec<String>> {
        self.blocking(move |root| Ok(list_dir(root, &dir)?)).await
    }

    pub(crate) async fn delete_small(&self, path: PathBuf) -> Result<()> {
        self.blocking(move |root| match root.remove_file(&path) {
            Ok(()) => Ok(sync_dir(root, parent_of(&path))?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        })
        .await
    }
}

/// Writes `contents` to `path` atomically: staged in `_tmp`, fsynced, renamed,
/// and the parent directory fsynced so the rename itself is durable.
pub(crate) fn write_atomic(root: &Root, path: &Path, contents: &[u8]) -> io::Result<()> {
    let (staged, file) = stage_file(root, contents)?;
    let result = (|| {
        file.sync_all()?;
        drop(file);
        let parent = move_into(root, &staged, path)?;
        sync_dir(root, parent)
    })();
    if result.is_err() {
        let _ = root.remove_file(&staged);
    }
    result
}

/// Writes `contents` to a new file in `_tmp`, not yet synced: the first half
/// of an atomic write. Nothing is left behind if writing fails.
pub(crate) fn stage_file(root: &Root, contents: &[u8]) -> io::Result<(PathBuf, cap_std::fs::File)> {
    let staged = paths::temp_file();
    let mut file = root.create_file(&staged)?;
    if let Err(e) = file.write_all(contents) {
        drop(file);
        let _ = root.remove_file(&staged);
        return Err(e);
    }
    Ok((staged, file))
}

/// Renames `from` to `path`, making `path`'s directory first if needed;
/// returns that directory, for the caller to sync.
pub(crate) fn move_into<'a>(root: &Root, from: &Path, path: &'a Path) -> io::Result<&'a Path> {
    let parent = parent_of(path);
    root.create_dirs(parent)?;
    // The source is ours and stays; only the target's directory can vanish
    // (a `gc` removing it as empty just now).
    retry_in_parent(root, path, || {
        root.rename(from, root, path)?;
        Ok(())
    })?;
    Ok(parent)
}

pub(crate) fn parent_of(path: &Path) -> &Path {
    path.parent().unwrap_or_else(|| Path::new("."))
}

pub(crate) fn sync_dir(root: &Dir, dir: &Path) -> io::Result<()> {
    root.open_dir(dir)?.open(".")?.sync_all()
}

/// Reads a Distribution link file (`sha256:<hex>`). A missing file is `None`;
/// a corrupt one is an error naming the file.
pub(crate) fn read_link(root: &Dir, path: &Path) -> io::Result<Option<Digest>> {
    let mut file = match root.open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut text = String::new();
    // A link is at most an algorithm, a colon and 128 hex digits.
    Read::take(&mut file, 256).read_to_string(&mut text)?;
    Digest::parse(text.trim()).map(Some).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("corrupt link file {}", path.display()),
        )
    })
}

pub(crate) fn write_link(root: &Root, path: &Path, digest: &Digest) -> io::Result<()> {
    write_atomic(root, path, digest.to_string().as_bytes())
}

/// Removes a directory tree; a missing one is fine.
pub(crate) fn remove_tree(root: &Dir, path: &Path) -> io::Result<bool> {
    match root.remove_dir_all(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Names of the entries of a directory; a missing directory has none.
pub(crate) fn list_dir(root: &Dir, path: &Path) -> io::Result<Vec<String>> {
    let entries = match root.read_dir(path) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry?;
        if let Ok(name) = entry.file_name().into_string() {
            names.push(name);
        }
    }
    Ok(names)
}

/// Every blob in the store (`blobs/<alg>/<xx>/<hex>`), for gc, fsck and metrics.
pub(crate) fn list_blobs(root: &Dir) -> io::Result<Vec<Digest>> {
    let mut blobs = Vec::new();
    for_each_blob(root, |digest| blobs.push(digest))?;
    Ok(blobs)
}

/// Calls `visit` with every stored blob's digest, one prefix directory in
/// memory at a time.
pub(crate) fn for_each_blob(root: &Dir, mut visit: impl FnMut(Digest)) -> io::Result<()> {
    for algorithm in crate::reference::Algorithm::ALL {
        let dir = paths::blobs_algorithm_dir(algorithm);
        for prefix in list_dir(root, &dir)? {
            for hex in list_dir(root, &dir.join(&prefix))? {
                if let Some(digest) = Digest::from_parts(algorithm, &hex) {
                    visit(digest);
                }
            }
        }
    }
    Ok(())
}

/// The digests whose link directories sit below `dir/<alg>/<hex>`.
pub(crate) fn list_digest_dirs(root: &Dir, dir: &Path) -> io::Result<Vec<Digest>> {
    let mut digests = Vec::new();
    for algorithm in crate::reference::Algorithm::ALL {
        for hex in list_dir(root, &dir.join(algorithm.as_str()))? {
            if let Some(d) = Digest::from_parts(algorithm, &hex) {
                digests.push(d);
            }
        }
    }
    Ok(digests)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> StorageSettings {
        StorageSettings {
            upload_max_age: Duration::from_secs(60),
            small_reads: crate::config::SmallReads::Auto,
            permissions: Permissions {
                file_mode: 0o640,
                dir_mode: 0o750,
                gid: None,
            },
        }
    }

    /// What `gc` may do between a writer's `mkdir` and its file: remove the
    /// directory as empty. The writer makes it again.
    #[test]
    fn writers_make_again_a_directory_gc_removed_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStorage::open(dir.path(), settings()).unwrap();
        let root = &store.root;
        let session = Path::new("repositories/a/b/_uploads/x");
        root.create_dirs(session).unwrap();
        for gone in [
            "repositories/a/b/_uploads/x",
            "repositories/a/b/_uploads",
            "repositories/a/b",
        ] {
            root.remove_dir(gone).unwrap();
        }
        root.create_file(&session.join("data")).unwrap();
        assert!(root.is_file(session.join("data")));

        let link = Path::new("repositories/c/_layers/sha256/ab/link");
        let (staged, file) = stage_file(root, b"sha256:ab").unwrap();
        drop(file);
        root.create_dirs(parent_of(link)).unwrap();
        root.remove_dir("repositories/c/_layers/sha256/ab").unwrap();
        root.remove_dir("repositories/c/_layers/sha256").unwrap();
        move_into(root, &staged, link).unwrap();
        assert_eq!(root.read(link).unwrap(), b"sha256:ab");
    }

    #[test]
    fn a_read_only_store_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        FsStorage::open(dir.path(), settings()).unwrap();
        let store = FsStorage::open_with(dir.path(), settings(), OpenMode::ReadOnly).unwrap();
        let error = store
            .root
            .create_dirs(Path::new("repositories/x"))
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::PermissionDenied);
        let error = store.root.create_file(Path::new("_tmp/0/y")).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::PermissionDenied);
        assert!(!store.root.exists("repositories/x") && !store.root.exists("_tmp/0/y"));
    }

    #[test]
    fn only_serve_makes_a_missing_root() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        for mode in [OpenMode::AddTo, OpenMode::Maintain, OpenMode::ReadOnly] {
            let error = FsStorage::open_with(&missing, settings(), mode)
                .err()
                .unwrap();
            assert!(
                error.to_string().contains("does not exist"),
                "{mode:?}: {error}"
            );
            assert!(!missing.exists(), "{mode:?}");
        }
        std::fs::create_dir(&missing).unwrap();
        for mode in [OpenMode::Maintain, OpenMode::ReadOnly] {
            let error = FsStorage::open_with(&missing, settings(), mode)
                .err()
                .unwrap();
            assert!(
                error.to_string().contains("holds no registry data"),
                "{mode:?}: {error}"
            );
        }
        FsStorage::open_with(&missing, settings(), OpenMode::AddTo).unwrap();
        assert!(missing.join(paths::LAYOUT_ROOT).is_dir());
    }
}
