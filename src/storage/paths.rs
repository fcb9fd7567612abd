//! The on-disk layout, and nothing else: every path the registry reads or writes
//! is spelled here, relative to `<storage.root>/docker/registry/v2`.
//!
//! This is CNCF Distribution's filesystem driver layout, so a `registry:2` data
//! directory is served as it is and the other way round. Paths are built only
//! from typed names (`RepositoryName`, `Tag`, `Digest`, `UploadId`), which the
//! grammar in `reference.rs` keeps free of `..`, `/` surprises and NULs.
//!
//! Two additions Distribution does not have, both ignored by it: `_referrers`
//! under a repository (an index from subject digest to referrer manifests, for
//! the referrers API) and `_tmp` at the top, where files are staged before an
//! atomic rename.

use std::path::PathBuf;

use crate::reference::{Algorithm, Digest, RepositoryName, Tag, UploadId};

/// Where the layout lives below the configured root.
pub const LAYOUT_ROOT: &str = "docker/registry/v2";

pub const BLOBS: &str = "blobs";
pub const REPOSITORIES: &str = "repositories";
pub const TMP: &str = "_tmp";

/// Directory names inside a repository that are not part of its name.
pub const REPO_META_DIRS: [&str; 4] = ["_layers", "_manifests", "_uploads", "_referrers"];

fn digest_dir(base: PathBuf, digest: &Digest) -> PathBuf {
    base.join(digest.algorithm().as_str()).join(digest.hex())
}

/// `blobs/<alg>/<first two hex>/<hex>`: the directory holding one blob.
pub fn blob_dir(digest: &Digest) -> PathBuf {
    PathBuf::from(BLOBS)
        .join(digest.algorithm().as_str())
        .join(&digest.hex()[..2])
        .join(digest.hex())
}

pub fn blob_data(digest: &Digest) -> PathBuf {
    blob_dir(digest).join("data")
}

/// `blobs/<alg>`: walked by `gc` and `fsck`.
pub fn blobs_algorithm_dir(algorithm: Algorithm) -> PathBuf {
    PathBuf::from(BLOBS).join(algorithm.as_str())
}

pub fn repository_dir(name: &RepositoryName) -> PathBuf {
    let mut path = PathBuf::from(REPOSITORIES);
    path.extend(name.components());
    path
}

/// `_layers`: one `<alg>/<hex>/link` below it per blob linked into the repository.
pub fn layers_dir(name: &RepositoryName) -> PathBuf {
    repository_dir(name).join("_layers")
}

/// The link that makes a blob visible in one repository.
pub fn layer_link(name: &RepositoryName, digest: &Digest) -> PathBuf {
    layer_link_dir(name, digest).join("link")
}

pub fn layer_link_dir(name: &RepositoryName, digest: &Digest) -> PathBuf {
    digest_dir(layers_dir(name), digest)
}

/// `_manifests/revisions`: one `<alg>/<hex>/link` below it per manifest.
pub fn revisions_dir(name: &RepositoryName) -> PathBuf {
    repository_dir(name).join("_manifests/revisions")
}

pub fn revision_link_dir(name: &RepositoryName, digest: &Digest) -> PathBuf {
    digest_dir(revisions_dir(name), digest)
}

/// The link that makes a manifest exist in one repository.
pub fn revision_link(name: &RepositoryName, digest: &Digest) -> PathBuf {
    revision_link_dir(name, digest).join("link")
}

pub fn tags_dir(name: &RepositoryName) -> PathBuf {
    repository_dir(name).join("_manifests/tags")
}

pub fn tag_dir(name: &RepositoryName, tag: &Tag) -> PathBuf {
    tags_dir(name).join(tag.as_str())
}

/// What a tag points to now.
pub fn tag_current_link(name: &RepositoryName, tag: &Tag) -> PathBuf {
    tag_dir(name, tag).join("current/link")
}

/// Every digest a tag has pointed to (Distribution keeps this history).
pub fn tag_index_link(name: &RepositoryName, tag: &Tag, digest: &Digest) -> PathBuf {
    digest_dir(tag_dir(name, tag).join("index"), digest).join("link")
}

pub fn uploads_dir(name: &RepositoryName) -> PathBuf {
    repository_dir(name).join("_uploads")
}

pub fn upload_dir(name: &RepositoryName, id: UploadId) -> PathBuf {
    uploads_dir(name).join(id.to_string())
}

pub fn upload_data(name: &RepositoryName, id: UploadId) -> PathBuf {
    upload_dir(name, id).join("data")
}

pub fn upload_started_at(name: &RepositoryName, id: UploadId) -> PathBuf {
    upload_dir(name, id).join("startedat")
}

/// Ours, beside Distribution's files: the user who started the session
/// (absent for an anonymous one); only they may continue it.
pub fn upload_owner(name: &RepositoryName, id: UploadId) -> PathBuf {
    upload_dir(name, id).join("owner")
}

/// `_referrers/<alg>/<subject hex>`: one link directory per referrer below it.
pub fn referrers_dir(name: &RepositoryName, subject: &Digest) -> PathBuf {
    digest_dir(repository_dir(name).join("_referrers"), subject)
}

pub fn referrer_link_dir(name: &RepositoryName, subject: &Digest, referrer: &Digest) -> PathBuf {
    digest_dir(referrers_dir(name, subject), referrer)
}

pub fn referrer_link(name: &RepositoryName, subject: &Digest, referrer: &Digest) -> PathBuf {
    referrer_link_dir(name, subject, referrer).join("link")
}

/// Staging files are spread over this many subdirectories of `_tmp` (named
/// by the first hex digit of their random name): creating a file and renaming
/// it away both lock the directory, and with every write of the registry
/// staged in one directory, concurrent pushes queued on that one lock.
pub const TMP_SHARDS: [&str; 16] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "a", "b", "c", "d", "e", "f",
];

/// A unique staging file for an atomic write: `_tmp/<shard>/<uuid>`.
pub fn temp_file() -> PathBuf {
    let name = UploadId::new().to_string();
    let shard = name.get(..1).unwrap_or("0");
    PathBuf::from(TMP).join(shard).join(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_distribution() {
        let name = RepositoryName::parse("library/postgres").unwrap();
        let d = Digest::of(Algorithm::Sha256, b"x");
        let hex = d.hex().to_owned();
        assert_eq!(
            blob_data(&d),
            PathBuf::from(format!("blobs/sha256/{}/{hex}/data", &hex[..2]))
        );
        assert_eq!(
            layer_link(&name, &d),
            PathBuf::from(format!(
                "repositories/library/postgres/_layers/sha256/{hex}/link"
            ))
        );
        assert_eq!(
            revision_link(&name, &d),
            PathBuf::from(format!(
                "repositories/library/postgres/_manifests/revisions/sha256/{hex}/link"
            ))
        );
        let tag = Tag::parse("16").unwrap();
        assert_eq!(
            tag_current_link(&name, &tag),
            PathBuf::from("repositories/library/postgres/_manifests/tags/16/current/link")
        );
        assert_eq!(
            tag_index_link(&name, &tag, &d),
            PathBuf::from(format!(
                "repositories/library/postgres/_manifests/tags/16/index/sha256/{hex}/link"
            ))
        );
    }
}
