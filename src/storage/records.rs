//! Small records of the registry's own (robot tokens, maintenance state), kept in the content
//! store beside Distribution's layout, under `_portcullis/<kind>/<name>`, so
//! that every replica on one bucket reads the same ones. Names are checked
//! here: a record name is `[a-z0-9._-]`, never a path.

use std::path::PathBuf;

use bytes::Bytes;

use super::backend::Storage;
use super::{Result, StorageError};

/// The largest record read back (a robot token's record is ~300 bytes).
const MAX_RECORD: u64 = 64 * 1024;

/// A kind of record: the directory its records live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// Robot and personal tokens.
    Tokens,
    /// When each token was last used (written apart from the token, so a
    /// use never races a revocation).
    TokenUses,
    /// Maintenance state: when gc last finished well (`maintenance`).
    Maintenance,
    /// Web UI sessions ended by signing out, by session id, until they
    /// would have expired anyway (`ui::session`).
    SignedOut,
}

impl RecordKind {
    fn dir(self) -> &'static str {
        match self {
            RecordKind::Tokens => "_portcullis/tokens",
            RecordKind::TokenUses => "_portcullis/token-uses",
            RecordKind::Maintenance => "_portcullis/maintenance",
            RecordKind::SignedOut => "_portcullis/signed-out",
        }
    }
}

fn checked(name: &str) -> Result<&str> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(name)
    } else {
        Err(StorageError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{name:?} is not a record name"),
        )))
    }
}

fn path(kind: RecordKind, name: &str) -> Result<PathBuf> {
    Ok(PathBuf::from(kind.dir()).join(checked(name)?))
}

impl Storage {
    /// Writes a record atomically (a reader sees the old or the new one).
    pub async fn put_record(&self, kind: RecordKind, name: &str, bytes: Bytes) -> Result<()> {
        let path = path(kind, name)?;
        match self {
            Storage::Filesystem(fs) => fs.put_small(path, bytes).await,
            Storage::S3(s3) => s3.put_small(path, bytes).await,
        }
    }

    /// A record's bytes, `None` if there is no such record.
    pub async fn get_record(&self, kind: RecordKind, name: &str) -> Result<Option<Bytes>> {
        let path = path(kind, name)?;
        match self {
            Storage::Filesystem(fs) => fs.get_small(path, MAX_RECORD).await,
            Storage::S3(s3) => s3.get_small_at(path, MAX_RECORD).await,
        }
    }

    /// The names of a kind's records.
    pub async fn list_records(&self, kind: RecordKind) -> Result<Vec<String>> {
        let mut names = match self {
            Storage::Filesystem(fs) => fs.list_small(PathBuf::from(kind.dir())).await?,
            Storage::S3(s3) => s3.list_small(PathBuf::from(kind.dir())).await?,
        };
        names.retain(|n| checked(n).is_ok());
        names.sort();
        Ok(names)
    }

    /// Removes a record; a missing one is fine.
    pub async fn delete_record(&self, kind: RecordKind, name: &str) -> Result<()> {
        let path = path(kind, name)?;
        match self {
            Storage::Filesystem(fs) => fs.delete_small(path).await,
            Storage::S3(s3) => s3.delete_small(path).await,
        }
    }
}
