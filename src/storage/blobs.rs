//! Reading blobs, and linking them into repositories (the `_layers` links that
//! make a global, content-addressed blob visible in one repository).

use std::io::{self, SeekFrom};

use tokio::io::AsyncSeekExt;

use super::{paths, read_link, remove_tree, write_link, Result, Storage, StorageError};
use crate::reference::{Digest, RepositoryName};

#[derive(Debug, Clone)]
pub struct BlobInfo {
    pub digest: Digest,
    pub size: u64,
}

/// An open blob, positioned at the first byte to send.
pub struct BlobReader {
    pub file: tokio::fs::File,
    pub size: u64,
}

impl Storage {
    /// Size of a blob linked into `name`, or `BlobUnknown`.
    pub async fn stat_blob(&self, name: &RepositoryName, digest: &Digest) -> Result<BlobInfo> {
        let (name, digest) = (name.clone(), digest.clone());
        self.blocking(move |root| {
            let linked = read_link(root, &paths::layer_link(&name, &digest))?;
            if linked.as_ref() != Some(&digest) {
                return Err(StorageError::BlobUnknown(digest));
            }
            match root.metadata(paths::blob_data(&digest)) {
                Ok(meta) => Ok(BlobInfo {
                    size: meta.len(),
                    digest,
                }),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    Err(StorageError::BlobUnknown(digest))
                }
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    /// Opens a blob linked into `name` for reading from byte `offset`.
    pub async fn open_blob(
        &self,
        name: &RepositoryName,
        digest: &Digest,
        offset: u64,
    ) -> Result<BlobReader> {
        let info = self.stat_blob(name, digest).await?;
        let digest = digest.clone();
        let file = self
            .blocking(move |root| match root.open(paths::blob_data(&digest)) {
                Ok(f) => Ok(f.into_std()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    Err(StorageError::BlobUnknown(digest))
                }
                Err(e) => Err(e.into()),
            })
            .await?;
        let mut file = tokio::fs::File::from_std(file);
        if offset > 0 {
            file.seek(SeekFrom::Start(offset)).await?;
        }
        Ok(BlobReader {
            file,
            size: info.size,
        })
    }

    /// Whether the blob's content exists in the global store (linked anywhere or not).
    pub(crate) fn blob_exists(root: &cap_std::fs::Dir, digest: &Digest) -> bool {
        root.is_file(paths::blob_data(digest))
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
                let (name, digest) = (name.clone(), digest.clone());
                self.blocking(move |root| {
                    write_link(root, &paths::layer_link(&name, &digest), &digest)?;
                    Ok(())
                })
                .await?;
                Ok(Some(info))
            }
            Err(StorageError::BlobUnknown(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes a blob's link from a repository. The content itself stays until
    /// `gc` finds nothing referencing it.
    pub async fn delete_blob(&self, name: &RepositoryName, digest: &Digest) -> Result<()> {
        let (name, digest) = (name.clone(), digest.clone());
        self.blocking(move |root| {
            if read_link(root, &paths::layer_link(&name, &digest))?.is_none() {
                return Err(StorageError::BlobUnknown(digest));
            }
            remove_tree(root, &paths::layer_link_dir(&name, &digest))?;
            Ok(())
        })
        .await
    }
}
