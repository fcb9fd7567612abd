//! Content storage: blobs, upload sessions, manifests, tags and referrers, in
//! Distribution's filesystem layout (see `paths.rs`).
//!
//! Every file operation goes through one `cap_std::fs::Dir` opened on the layout
//! root, with paths built only from typed names, so nothing a client sends can
//! reach outside it. Writes are staged and renamed into place after an fsync:
//! a crash leaves the old state or the new one, never a partial file.
//! This layer knows nothing of HTTP; the API layer maps `StorageError` to the
//! spec's error codes.

mod blobs;
pub mod gc;
mod manifests;
pub mod paths;
pub mod uploads;

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cap_std::ambient_authority;
use cap_std::fs::Dir;

use crate::reference::{Digest, RepositoryName, UploadId};

pub use blobs::{BlobInfo, BlobReader};
pub use manifests::{
    Descriptor, ManifestKind, ParsedManifest, StoredManifest, MEDIA_TYPE_DOCKER_LIST,
    MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST,
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
    #[error("storage I/O error: {0}")]
    Io(#[from] io::Error),
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

#[derive(Debug, Clone)]
pub struct StorageSettings {
    pub upload_max_age: Duration,
}

/// The registry's content store on a local filesystem.
#[derive(Clone)]
pub struct Storage {
    root: Arc<Dir>,
    location: PathBuf,
    settings: StorageSettings,
    uploads: Arc<uploads::Sessions>,
}

impl Storage {
    /// Opens (creating if needed) the data directory at `root`.
    pub fn open(root: &Path, settings: StorageSettings) -> io::Result<Self> {
        let layout = root.join(paths::LAYOUT_ROOT);
        std::fs::create_dir_all(&layout).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot create storage root {}: {e}", layout.display()),
            )
        })?;
        let dir = Dir::open_ambient_dir(&layout, ambient_authority()).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open storage root {}: {e}", layout.display()),
            )
        })?;
        dir.create_dir_all(paths::TMP)?;
        dir.create_dir_all(paths::BLOBS)?;
        dir.create_dir_all(paths::REPOSITORIES)?;
        Ok(Self {
            root: Arc::new(dir),
            location: layout,
            settings,
            uploads: Arc::new(uploads::Sessions::default()),
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
        F: FnOnce(&Dir) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let root = Arc::clone(&self.root);
        tokio::task::spawn_blocking(move || work(&root))
            .await
            .map_err(|e| StorageError::Io(io::Error::other(format!("storage task failed: {e}"))))?
    }

    /// Whether the repository has any content at all.
    pub async fn repository_exists(&self, name: &RepositoryName) -> Result<bool> {
        let dir = paths::repository_dir(name);
        self.blocking(move |root| Ok(root.is_dir(dir))).await
    }
}

/// Writes `contents` to `path` atomically: staged in `_tmp`, fsynced, renamed,
/// and the parent directory fsynced so the rename itself is durable.
pub(crate) fn write_atomic(root: &Dir, path: &Path, contents: &[u8]) -> io::Result<()> {
    let staged = paths::temp_file();
    let result = (|| {
        let mut file = root.create(&staged)?;
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        let parent = parent_of(path);
        root.create_dir_all(parent)?;
        root.rename(&staged, root, path)?;
        sync_dir(root, parent)
    })();
    if result.is_err() {
        let _ = root.remove_file(&staged);
    }
    result
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

pub(crate) fn write_link(root: &Dir, path: &Path, digest: &Digest) -> io::Result<()> {
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
