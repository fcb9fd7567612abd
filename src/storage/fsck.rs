//! `portcullis fsck`: re-hash every blob, check every link and every
//! manifest's references, and report what is wrong. With `--repair`, a blob
//! whose bytes do not match its digest is moved to `_quarantine/` (never
//! deleted: it is evidence), and links and tags that point at nothing are
//! removed, so clients get a clean 404 instead of an error.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;
use sha2::Digest as _;

use super::manifests::{every_repository, ParsedManifest};
use super::uploads::hash_reader;
use super::{
    list_blobs, list_digest_dirs, list_dir, paths, read_link, remove_tree, FsStorage, Result, Root,
};
use crate::reference::{Algorithm, Digest, RepositoryName, Tag};

/// Where `--repair` moves corrupt blobs, below the layout root.
pub const QUARANTINE: &str = "_quarantine";

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The blob's bytes hash to something else.
    CorruptBlob { digest: Digest, actual: Digest },
    /// A link file that is not a digest, or names another digest than its path.
    BadLink { path: PathBuf },
    /// A repository links a blob that is not in the store.
    DanglingLayer {
        repository: RepositoryName,
        digest: Digest,
    },
    /// A manifest revision whose bytes are missing or not a manifest.
    BadManifest {
        repository: RepositoryName,
        digest: Digest,
        reason: String,
    },
    /// A manifest references a blob or child manifest that is missing.
    MissingReference {
        repository: RepositoryName,
        manifest: Digest,
        missing: Digest,
    },
    /// A tag points at a manifest the repository does not have.
    DanglingTag {
        repository: RepositoryName,
        tag: Tag,
        digest: Digest,
    },
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::CorruptBlob { digest, actual } => {
                write!(f, "blob {digest}: content hashes to {actual}")
            }
            Finding::BadLink { path } => write!(f, "link {}: unreadable or wrong", path.display()),
            Finding::DanglingLayer { repository, digest } => {
                write!(f, "{repository}: links blob {digest}, which is not stored")
            }
            Finding::BadManifest {
                repository,
                digest,
                reason,
            } => {
                write!(f, "{repository}: manifest {digest}: {reason}")
            }
            Finding::MissingReference {
                repository,
                manifest,
                missing,
            } => write!(
                f,
                "{repository}: manifest {manifest} references {missing}, which is missing"
            ),
            Finding::DanglingTag {
                repository,
                tag,
                digest,
            } => write!(
                f,
                "{repository}: tag {tag} points at {digest}, which the repository does not have"
            ),
        }
    }
}

#[derive(Debug, Default)]
pub struct FsckReport {
    pub blobs_checked: usize,
    pub manifests_checked: usize,
    /// Problems left (all of them without `--repair`).
    pub findings: Vec<Finding>,
    /// Problems `--repair` fixed.
    pub repaired: Vec<Finding>,
}

impl FsckReport {
    pub(crate) fn found(&mut self, finding: Finding, repaired: bool) {
        if repaired {
            self.repaired.push(finding);
        } else {
            self.findings.push(finding);
        }
    }
}

impl FsStorage {
    /// Checks the whole store; with `repair`, fixes what can be fixed safely.
    pub async fn fsck(&self, repair: bool, progress: ProgressBar) -> Result<FsckReport> {
        self.blocking(move |root| check(root, repair, &progress))
            .await
    }
}

fn check(root: &Root, repair: bool, progress: &ProgressBar) -> Result<FsckReport> {
    let mut report = FsckReport::default();

    // Every blob: its bytes must hash to its name.
    let blobs = list_blobs(root)?;
    progress.set_length(blobs.len() as u64);
    progress.set_message("hashing blobs");
    for digest in blobs {
        progress.inc(1);
        let Ok(file) = root.open(paths::blob_data(&digest)) else {
            continue; // a directory without data: nothing to verify
        };
        report.blobs_checked += 1;
        let actual = hash(file, digest.algorithm())?;
        if actual != digest {
            if repair {
                root.create_dirs(Path::new(QUARANTINE))?;
                let target = PathBuf::from(QUARANTINE).join(format!(
                    "{}-{}",
                    digest.algorithm().as_str(),
                    digest.hex()
                ));
                root.rename(paths::blob_data(&digest), root, &target)?;
                remove_tree(root, &paths::blob_dir(&digest))?;
            }
            report.found(Finding::CorruptBlob { digest, actual }, repair);
        }
    }

    // Every repository: links, manifests and their references, tags.
    let repositories = every_repository(root)?;
    progress.set_length(repositories.len() as u64);
    progress.set_position(0);
    progress.set_message("repositories");
    for name in &repositories {
        progress.inc(1);
        let stored = |d: &Digest| FsStorage::blob_exists(root, d);
        for digest in list_digest_dirs(root, &paths::layers_dir(name))? {
            let link = paths::layer_link(name, &digest);
            let fixable = match read_link(root, &link) {
                Ok(Some(linked)) if linked == digest => {
                    if stored(&digest) {
                        continue;
                    }
                    Finding::DanglingLayer {
                        repository: name.clone(),
                        digest: digest.clone(),
                    }
                }
                Ok(None) => {
                    // A link write cut short by a crash (the directory made,
                    // the link not yet renamed in): never served, never
                    // acknowledged, harmless. --repair tidies it.
                    if repair {
                        remove_tree(root, &paths::layer_link_dir(name, &digest))?;
                    }
                    continue;
                }
                _ => Finding::BadLink { path: link },
            };
            if repair {
                remove_tree(root, &paths::layer_link_dir(name, &digest))?;
            }
            report.found(fixable, repair);
        }
        let revisions = list_digest_dirs(root, &paths::revisions_dir(name))?;
        for digest in &revisions {
            let bytes = match root.read(paths::blob_data(digest)) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(e.into()),
                Ok(bytes) => Some(bytes),
            };
            check_manifest(
                &mut report,
                name,
                digest,
                bytes.as_deref(),
                &revisions,
                stored,
            );
        }
        for tag in list_dir(root, &paths::tags_dir(name))? {
            let Ok(tag) = Tag::parse(&tag) else { continue };
            let current = paths::tag_current_link(name, &tag);
            let finding = match read_link(root, &current) {
                Ok(Some(digest)) if revisions.contains(&digest) && stored(&digest) => continue,
                Ok(Some(digest)) => Finding::DanglingTag {
                    repository: name.clone(),
                    tag: tag.clone(),
                    digest,
                },
                Ok(None) => continue, // a tag directory without a current link is not served
                Err(_) => Finding::BadLink { path: current },
            };
            if repair {
                remove_tree(root, &paths::tag_dir(name, &tag))?;
            }
            report.found(finding, repair);
        }
    }
    progress.finish_and_clear();
    Ok(report)
}

/// Checks one manifest revision of `name` (its bytes, `None` when they are
/// not stored): it must parse, and what it references must be there (blobs
/// by `stored`, child manifests among `revisions`). Both backends use it.
pub(crate) fn check_manifest(
    report: &mut FsckReport,
    name: &RepositoryName,
    digest: &Digest,
    bytes: Option<&[u8]>,
    revisions: &[Digest],
    stored: impl Fn(&Digest) -> bool,
) {
    report.manifests_checked += 1;
    let missing = |missing: &Digest| Finding::MissingReference {
        repository: name.clone(),
        manifest: digest.clone(),
        missing: missing.clone(),
    };
    let problem = match bytes.map(|b| ParsedManifest::parse(b, None)) {
        None => Some("its bytes are not stored".to_owned()),
        Some(Err(e)) => Some(e.to_string()),
        Some(Ok(manifest)) => {
            for blob in manifest.referenced_blobs().filter(|b| !stored(&b.digest)) {
                report.findings.push(missing(&blob.digest));
            }
            for child in manifest
                .manifests
                .iter()
                .filter(|c| !revisions.contains(&c.digest))
            {
                report.findings.push(missing(&child.digest));
            }
            None
        }
    };
    if let Some(reason) = problem {
        report.findings.push(Finding::BadManifest {
            repository: name.clone(),
            digest: digest.clone(),
            reason,
        });
    }
}

fn hash(reader: impl Read, algorithm: Algorithm) -> io::Result<Digest> {
    let hex = match algorithm {
        Algorithm::Sha256 => {
            let mut h = sha2::Sha256::new();
            hash_reader(reader, &mut h)?;
            hex::encode(h.finalize())
        }
        Algorithm::Sha512 => {
            let mut h = sha2::Sha512::new();
            hash_reader(reader, &mut h)?;
            hex::encode(h.finalize())
        }
    };
    Digest::from_parts(algorithm, &hex)
        .ok_or_else(|| io::Error::other("hash output is not a digest"))
}
