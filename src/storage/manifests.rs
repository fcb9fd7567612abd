//! Manifests, tags, referrers and the catalog.
//!
//! A manifest is stored as a blob (its bytes, content-addressed) plus a revision
//! link in its repository; a tag is a `current/link` to a revision plus an
//! `index/` of every digest it has named. Manifests are checked before they are
//! stored: a known media type, well-formed descriptors, and every blob or child
//! manifest they reference present in the repository.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use cap_std::fs::Dir;
use serde::{Deserialize, Serialize};

use super::{
    list_digest_dirs, list_dir, paths, read_link, remove_tree, write_atomic, write_link, FsStorage,
    Result, StorageError,
};
use crate::reference::{Algorithm, Digest, Reference, RepositoryName, Tag};

pub const MEDIA_TYPE_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_TYPE_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_TYPE_DOCKER_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
const MEDIA_TYPE_DOCKER_SCHEMA1: [&str; 2] = [
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    /// An image (or artifact) manifest: a config and layers.
    Image,
    /// An index or manifest list: child manifests.
    Index,
}

fn kind_of(media_type: &str) -> Option<ManifestKind> {
    match media_type {
        MEDIA_TYPE_OCI_MANIFEST | MEDIA_TYPE_DOCKER_MANIFEST => Some(ManifestKind::Image),
        MEDIA_TYPE_OCI_INDEX | MEDIA_TYPE_DOCKER_LIST => Some(ManifestKind::Index),
        _ => None,
    }
}

/// A content descriptor, as found in manifests and returned by the referrers API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    #[serde(with = "digest_serde")]
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The platform an index names for a child manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

/// An OCI platform (`os`, `architecture`, ...), as an index names it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Platform {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(
        default,
        rename = "os.version",
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
}

mod digest_serde {
    use super::Digest;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Digest, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(d)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let raw = String::deserialize(d)?;
        Digest::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

const MANIFEST_FIELDS: [&str; 8] = [
    "schemaVersion",
    "mediaType",
    "artifactType",
    "config",
    "layers",
    "manifests",
    "subject",
    "annotations",
];
const DESCRIPTOR_FIELDS: [&str; 8] = [
    "mediaType",
    "digest",
    "size",
    "urls",
    "artifactType",
    "annotations",
    "platform",
    "data",
];
const PLATFORM_FIELDS: [&str; 6] = [
    "architecture",
    "os",
    "os.version",
    "os.features",
    "variant",
    "features",
];

/// A key folded as Go's encoding/json matches field names: ASCII case, and
/// the two non-ASCII letters that fold to ASCII ones (U+017F to `s`, the
/// Kelvin sign U+212A to `k`).
pub fn go_fold(key: &str) -> String {
    key.chars()
        .map(|c| match c {
            '\u{017F}' => 's',
            '\u{212A}' => 'k',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// An error naming the first of `keys` that is not one of `fields` but
/// that Go would read as one of them.
pub fn refuse_folded_keys<'a>(
    keys: impl IntoIterator<Item = &'a String>,
    fields: &[&str],
) -> std::result::Result<(), String> {
    for key in keys {
        if fields.contains(&key.as_str()) {
            continue;
        }
        let folded = go_fold(key);
        if let Some(field) = fields.iter().find(|f| go_fold(f) == folded) {
            return Err(format!(
                "ambiguous JSON: key {key:?} would be read as {field:?} by other clients"
            ));
        }
    }
    Ok(())
}

/// The keys of a JSON object, its values skipped (however deep: serde's
/// `IgnoredAny` keeps no stack per level of nesting it skips).
#[derive(Default)]
pub struct ObjectKeys(pub Vec<String>);

impl<'de> Deserialize<'de> for ObjectKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = ObjectKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<ObjectKeys, A::Error> {
                let mut keys = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    keys.push(key);
                }
                Ok(ObjectKeys(keys))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// A descriptor's keys, and its platform's.
struct DescriptorKeys {
    keys: Vec<String>,
    platform: Vec<String>,
}

impl<'de> Deserialize<'de> for DescriptorKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = DescriptorKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a descriptor object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<DescriptorKeys, A::Error> {
                let (mut keys, mut platform) = (Vec::new(), Vec::new());
                while let Some(key) = map.next_key::<String>()? {
                    if key == "platform" {
                        platform = map.next_value::<ObjectKeys>()?.0;
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                    keys.push(key);
                }
                Ok(DescriptorKeys { keys, platform })
            }
        }
        d.deserialize_map(Visit)
    }
}

#[derive(Deserialize)]
struct ManifestKeys {
    config: Option<DescriptorKeys>,
    subject: Option<DescriptorKeys>,
    layers: Option<Vec<DescriptorKeys>>,
    manifests: Option<Vec<DescriptorKeys>>,
}

fn ambiguous_keys(bytes: &[u8]) -> std::result::Result<(), String> {
    let top: ObjectKeys =
        serde_json::from_slice(bytes).map_err(|e| format!("not a valid manifest: {e}"))?;
    refuse_folded_keys(&top.0, &MANIFEST_FIELDS)?;
    let shape: ManifestKeys =
        serde_json::from_slice(bytes).map_err(|e| format!("not a valid manifest: {e}"))?;
    let descriptors = shape
        .config
        .iter()
        .chain(shape.subject.iter())
        .chain(shape.layers.iter().flatten())
        .chain(shape.manifests.iter().flatten());
    for descriptor in descriptors {
        refuse_folded_keys(&descriptor.keys, &DESCRIPTOR_FIELDS)?;
        refuse_folded_keys(&descriptor.platform, &PLATFORM_FIELDS)?;
    }
    Ok(())
}

/// A manifest that passed validation.
#[derive(Debug, Clone)]
pub struct ParsedManifest {
    pub media_type: String,
    pub kind: ManifestKind,
    pub artifact_type: Option<String>,
    pub config: Option<Descriptor>,
    pub layers: Vec<Descriptor>,
    pub manifests: Vec<Descriptor>,
    pub subject: Option<Descriptor>,
    pub annotations: BTreeMap<String, String>,
}

impl ParsedManifest {
    /// Parses and checks a manifest. `content_type` is the request's header, if any.
    pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Self> {
        let invalid = |m: String| StorageError::ManifestInvalid(m);
        // serde would also read the struct from an array of its fields.
        if bytes.trim_ascii_start().first() != Some(&b'{') {
            return Err(invalid(
                "not a valid manifest: a manifest is a JSON object".into(),
            ));
        }
        let raw: RawManifest = serde_json::from_slice(bytes)
            .map_err(|e| invalid(format!("not a valid manifest: {e}")))?;
        // What serde ignores, Go's encoding/json (containerd, docker) reads:
        // a key differing from a field only in case would make the client see
        // another manifest than the policies did.
        ambiguous_keys(bytes).map_err(invalid)?;
        let header_type = content_type
            .map(|ct| ct.split(';').next().unwrap_or("").trim())
            .filter(|ct| !ct.is_empty());
        for t in [raw.media_type.as_deref(), header_type]
            .into_iter()
            .flatten()
        {
            if MEDIA_TYPE_DOCKER_SCHEMA1.contains(&t) {
                return Err(invalid(
                    "Docker schema1 manifests are not supported; push with a current client".into(),
                ));
            }
        }
        if raw.schema_version != Some(2) {
            return Err(invalid("schemaVersion must be 2".into()));
        }
        let media_type = match (raw.media_type.as_deref(), header_type) {
            (Some(body), _) if kind_of(body).is_none() => {
                return Err(invalid(format!("unsupported manifest mediaType {body:?}")))
            }
            (Some(body), Some(header)) if kind_of(header).is_some() && header != body => {
                return Err(invalid(format!(
                    "Content-Type {header:?} does not match the manifest's mediaType {body:?}"
                )))
            }
            (Some(body), _) => body.to_owned(),
            // Docker's schema requires `mediaType` in the body; without it the
            // bytes would read back as OCI, so such a manifest is refused.
            (None, Some(header))
                if header == MEDIA_TYPE_DOCKER_MANIFEST || header == MEDIA_TYPE_DOCKER_LIST =>
            {
                return Err(invalid(format!(
                    "a {header} must carry its mediaType field in the body"
                )))
            }
            (None, Some(header)) if kind_of(header).is_some() => header.to_owned(),
            (None, _) if raw.manifests.is_some() => MEDIA_TYPE_OCI_INDEX.to_owned(),
            (None, _) => MEDIA_TYPE_OCI_MANIFEST.to_owned(),
        };
        let kind = kind_of(&media_type).unwrap_or(ManifestKind::Image);
        match kind {
            ManifestKind::Image => {
                if raw.config.is_none() {
                    return Err(invalid(
                        "an image manifest needs a config descriptor".into(),
                    ));
                }
                if raw.layers.is_none() {
                    return Err(invalid("an image manifest needs a layers array".into()));
                }
                if raw.manifests.is_some() {
                    return Err(invalid("an image manifest cannot list manifests".into()));
                }
            }
            ManifestKind::Index => {
                if raw.manifests.is_none() {
                    return Err(invalid("an index needs a manifests array".into()));
                }
                if raw.config.is_some() || raw.layers.is_some() {
                    return Err(invalid("an index cannot have a config or layers".into()));
                }
            }
        }
        Ok(Self {
            media_type,
            kind,
            artifact_type: raw.artifact_type,
            config: raw.config,
            layers: raw.layers.unwrap_or_default(),
            manifests: raw.manifests.unwrap_or_default(),
            subject: raw.subject,
            annotations: raw.annotations,
        })
    }

    /// The artifact type the referrers API reports: `artifactType`, else the config's media type.
    pub fn effective_artifact_type(&self) -> Option<String> {
        self.artifact_type
            .clone()
            .or_else(|| self.config.as_ref().map(|c| c.media_type.clone()))
    }

    /// Blobs this manifest needs in its repository. Foreign (non-distributable)
    /// layers with external URLs are not expected to be pushed.
    pub fn referenced_blobs(&self) -> impl Iterator<Item = &Descriptor> {
        self.config
            .iter()
            .chain(self.layers.iter().filter(|l| l.urls.is_empty()))
    }
}

/// A tag, what it names, and when it was last set (retention's input).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagRecord {
    pub tag: Tag,
    pub digest: Digest,
    /// When the tag was last set: its link's modification time on the
    /// filesystem, the link object's `Last-Modified` on S3.
    pub pushed: std::time::SystemTime,
}

/// A manifest as read back: its bytes, digest and media type.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Vec<u8>,
}

/// The media type of stored manifest bytes, as Distribution infers it.
pub(crate) fn stored_media_type(bytes: &[u8]) -> String {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Peek {
        media_type: Option<String>,
        manifests: Option<serde::de::IgnoredAny>,
    }
    match serde_json::from_slice::<Peek>(bytes) {
        Ok(Peek {
            media_type: Some(t),
            ..
        }) => t,
        Ok(Peek {
            manifests: Some(_), ..
        }) => MEDIA_TYPE_OCI_INDEX.to_owned(),
        _ => MEDIA_TYPE_OCI_MANIFEST.to_owned(),
    }
}

fn read_blob(root: &Dir, digest: &Digest, limit: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    root.open(paths::blob_data(digest))?
        .take(limit)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The digest a manifest is stored under: the URL's (checked against the
/// bytes) when pushed by digest, else its SHA-256.
pub(crate) fn manifest_digest(reference: &Reference, bytes: &[u8]) -> Result<Digest> {
    match reference {
        Reference::Digest(expected) => {
            let actual = Digest::of(expected.algorithm(), bytes);
            if &actual != expected {
                return Err(StorageError::ManifestDigestMismatch {
                    expected: expected.clone(),
                    actual,
                });
            }
            Ok(actual)
        }
        Reference::Tag(_) => Ok(Digest::of(Algorithm::Sha256, bytes)),
    }
}

/// Stored manifests are read back with a generous cap, so a corrupt store
/// cannot make the server allocate without bound.
const STORED_MANIFEST_LIMIT: u64 = 64 * 1024 * 1024;

fn resolve(root: &Dir, name: &RepositoryName, reference: &Reference) -> Result<Digest> {
    let unknown = || StorageError::ManifestUnknown(reference.to_string());
    let digest = match reference {
        Reference::Tag(tag) => {
            read_link(root, &paths::tag_current_link(name, tag))?.ok_or_else(unknown)?
        }
        Reference::Digest(d) => d.clone(),
    };
    match read_link(root, &paths::revision_link(name, &digest))? {
        Some(linked) if linked == digest => Ok(digest),
        _ => Err(unknown()),
    }
}

impl FsStorage {
    /// See [`Storage::put_manifest`](super::Storage::put_manifest).
    pub async fn store_manifest(
        &self,
        name: &RepositoryName,
        reference: &Reference,
        bytes: Vec<u8>,
        manifest: ParsedManifest,
        verify_references: bool,
        expected_tag: Option<Option<Digest>>,
    ) -> Result<Digest> {
        let (name, reference) = (name.clone(), reference.clone());
        let tag_locks = std::sync::Arc::clone(&self.tag_locks);
        self.blocking(move |root| {
            let digest = manifest_digest(&reference, &bytes)?;
            // No delete of a manifest of this repository runs from the check
            // of what this one references to its last link
            // (`delete_manifest`): a child checked here cannot go before the
            // push is acknowledged.
            let _repository_guard = tag_locks.share_repository(&name);
            for blob in manifest.referenced_blobs().filter(|_| verify_references) {
                let linked = read_link(root, &paths::layer_link(&name, &blob.digest))?;
                if linked.as_ref() != Some(&blob.digest)
                    || !FsStorage::blob_exists(root, &blob.digest)
                {
                    return Err(StorageError::ManifestBlobUnknown(blob.digest.clone()));
                }
            }
            for child in manifest.manifests.iter().filter(|_| verify_references) {
                if read_link(root, &paths::revision_link(&name, &child.digest))?.is_none() {
                    return Err(StorageError::ManifestBlobUnknown(child.digest.clone()));
                }
            }
            if !FsStorage::blob_exists(root, &digest) {
                write_atomic(root, &paths::blob_data(&digest), &bytes)?;
            }
            let mut links = vec![paths::revision_link(&name, &digest)];
            if let Some(subject) = &manifest.subject {
                links.push(paths::referrer_link(&name, &subject.digest, &digest));
            }
            if let Reference::Tag(tag) = &reference {
                links.push(paths::tag_index_link(&name, tag, &digest));
                links.push(paths::tag_current_link(&name, tag));
            }
            // The tag moves only if it still names what the caller checked
            // (the policy's `current-digest`): one writer per tag at a time
            // in this process, which is every writer of this directory.
            let _tag_guard = match (&reference, &expected_tag) {
                (Reference::Tag(tag), Some(expected)) => {
                    let guard = tag_locks.lock(&name, tag);
                    let now = read_link(root, &paths::tag_current_link(&name, tag))?;
                    if &now != expected {
                        return Err(StorageError::TagChanged(tag.clone()));
                    }
                    Some(guard)
                }
                _ => None,
            };
            // All links or none: a push that fails part-way (a full disk)
            // must not leave the manifest served. The bytes may stay; gc
            // sweeps them.
            let mut undo = Vec::new();
            for link in &links {
                let created = new_path(root, link);
                if let Err(e) = write_link(root, link, &digest) {
                    for path in created.iter().chain(undo.iter().rev()) {
                        let _ = remove_path(root, path);
                    }
                    return Err(e.into());
                }
                undo.extend(created);
            }
            Ok(digest)
        })
        .await
    }

    /// Reads a manifest by tag or digest.
    pub async fn get_manifest(
        &self,
        name: &RepositoryName,
        reference: &Reference,
    ) -> Result<StoredManifest> {
        let (name, reference) = (name.clone(), reference.clone());
        self.small_read(move |root| {
            let digest = resolve(root, &name, &reference)?;
            let bytes = match read_blob(root, &digest, STORED_MANIFEST_LIMIT) {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(StorageError::ManifestUnknown(reference.to_string()))
                }
                Err(e) => return Err(e.into()),
            };
            Ok(StoredManifest {
                media_type: stored_media_type(&bytes),
                digest,
                bytes,
            })
        })
        .await
    }

    /// The digest a tag points to now, if it exists: the tag's own link,
    /// whether or not that manifest is still there (a tag that exists is
    /// never shown to the policies as absent; an immutable tag stays so).
    pub async fn tag_target(&self, name: &RepositoryName, tag: &Tag) -> Result<Option<Digest>> {
        let path = paths::tag_current_link(name, tag);
        self.blocking(move |root| Ok(read_link(root, &path)?)).await
    }

    /// The tags that point to `digest` now, sorted.
    pub async fn tags_pointing_to(
        &self,
        name: &RepositoryName,
        digest: &Digest,
    ) -> Result<Vec<String>> {
        let (name, digest) = (name.clone(), digest.clone());
        self.blocking(move |root| {
            Ok(sorted_tags_naming(root, &name, &digest)?
                .into_iter()
                .map(|t| t.to_string())
                .collect())
        })
        .await
    }

    /// Deletes a manifest by digest: its revision, every tag naming it (if
    /// they are still `expected_tags`), and its referrers entry. Content goes
    /// with the next `gc`. No push of this repository writes links meanwhile.
    pub async fn delete_manifest(
        &self,
        name: &RepositoryName,
        digest: &Digest,
        expected_tags: &[String],
    ) -> Result<()> {
        let (name, digest) = (name.clone(), digest.clone());
        let expected_tags = expected_tags.to_vec();
        let tag_locks = std::sync::Arc::clone(&self.tag_locks);
        self.blocking(move |root| {
            let _repository_guard = tag_locks.own_repository(&name);
            resolve(root, &name, &Reference::Digest(digest.clone()))?;
            let subject = read_blob(root, &digest, STORED_MANIFEST_LIMIT)
                .ok()
                .and_then(|b| ParsedManifest::parse(&b, None).ok())
                .and_then(|m| m.subject);
            let tags = sorted_tags_naming(root, &name, &digest)?;
            if !tags
                .iter()
                .map(Tag::as_str)
                .eq(expected_tags.iter().map(String::as_str))
            {
                return Err(StorageError::DigestTagsChanged(digest.clone()));
            }
            for tag in tags {
                remove_tree(root, &paths::tag_dir(&name, &tag))?;
            }
            if let Some(subject) = subject {
                remove_tree(
                    root,
                    &paths::referrer_link_dir(&name, &subject.digest, &digest),
                )?;
            }
            remove_tree(root, &paths::revision_link_dir(&name, &digest))?;
            Ok(())
        })
        .await
    }

    /// Deletes a tag if it still names `expected`, under the tag's lock (so
    /// no push moves it in between); the manifest stays, reachable by digest.
    pub async fn delete_tag(
        &self,
        name: &RepositoryName,
        tag: &Tag,
        expected: Option<&Digest>,
    ) -> Result<()> {
        let (name, tag, expected) = (name.clone(), tag.clone(), expected.cloned());
        let tag_locks = std::sync::Arc::clone(&self.tag_locks);
        self.blocking(move |root| {
            let _tag_guard = tag_locks.lock(&name, &tag);
            let now = read_link(root, &paths::tag_current_link(&name, &tag))?;
            if now.is_none() {
                return Err(StorageError::ManifestUnknown(tag.to_string()));
            }
            if now != expected {
                return Err(StorageError::TagChanged(tag));
            }
            remove_tree(root, &paths::tag_dir(&name, &tag))?;
            Ok(())
        })
        .await
    }

    /// Every tag of `name` with what it names and when it was last set. A
    /// tag whose link is corrupt is left out (and logged): `fsck` reports it.
    pub async fn tag_history(&self, name: &RepositoryName) -> Result<Vec<TagRecord>> {
        let name = name.clone();
        self.blocking(move |root| {
            let mut records = Vec::new();
            for raw in list_dir(root, &paths::tags_dir(&name))? {
                let Ok(tag) = Tag::parse(&raw) else { continue };
                // Time and digest from one open file: a push renaming a new
                // link into place meanwhile cannot pair the old time with
                // the new digest.
                let mut file = match root.open(paths::tag_current_link(&name, &tag)) {
                    Ok(file) => file,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e.into()),
                };
                let pushed = file.metadata()?.modified()?.into_std();
                let mut text = String::new();
                Read::take(&mut file, 256).read_to_string(&mut text)?;
                let Ok(digest) = Digest::parse(text.trim()) else {
                    tracing::warn!(repository = %name, %tag, "tag link unreadable; left alone");
                    continue;
                };
                records.push(TagRecord {
                    tag,
                    digest,
                    pushed,
                });
            }
            Ok(records)
        })
        .await
    }

    /// The manifests stored in `name` (its revisions), tagged or not.
    pub async fn list_manifests(&self, name: &RepositoryName) -> Result<Vec<Digest>> {
        let dir = paths::revisions_dir(name);
        self.blocking(move |root| Ok(list_digest_dirs(root, &dir)?))
            .await
    }

    /// All tags of a repository, sorted.
    pub async fn list_tags(&self, name: &RepositoryName) -> Result<Vec<String>> {
        let name = name.clone();
        self.blocking(move |root| {
            // The catalog's rule: a repository holds manifests or layers
            // (a directory with only upload sessions in it is not one yet).
            let dir = paths::repository_dir(&name);
            if !root.is_dir(dir.join("_manifests")) && !root.is_dir(dir.join("_layers")) {
                return Err(StorageError::NameUnknown(name));
            }
            let mut tags: Vec<String> = list_dir(root, &paths::tags_dir(&name))?
                .into_iter()
                .filter(|t| {
                    Tag::parse(t)
                        .map(|tag| root.is_file(paths::tag_current_link(&name, &tag)))
                        .unwrap_or(false)
                })
                .collect();
            tags.sort();
            Ok(tags)
        })
        .await
    }

    /// Descriptors of the manifests in `name` whose subject is `subject`.
    pub async fn list_referrers(
        &self,
        name: &RepositoryName,
        subject: &Digest,
    ) -> Result<Vec<Descriptor>> {
        let (name, subject) = (name.clone(), subject.clone());
        self.blocking(move |root| {
            let mut out = Vec::new();
            for digest in list_digest_dirs(root, &paths::referrers_dir(&name, &subject))? {
                if read_link(root, &paths::revision_link(&name, &digest))?.is_none() {
                    continue;
                }
                let bytes = match read_blob(root, &digest, STORED_MANIFEST_LIMIT) {
                    Ok(b) => b,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e.into()),
                };
                let Ok(manifest) = ParsedManifest::parse(&bytes, None) else {
                    continue;
                };
                out.push(Descriptor {
                    media_type: manifest.media_type.clone(),
                    size: bytes.len() as u64,
                    digest,
                    urls: Vec::new(),
                    artifact_type: manifest.effective_artifact_type(),
                    annotations: manifest.annotations,
                    platform: None,
                });
            }
            out.sort_by(|a, b| a.digest.cmp(&b.digest));
            Ok(out)
        })
        .await
    }

    /// Every repository name in the store, sorted.
    pub async fn list_repositories(&self) -> Result<Vec<RepositoryName>> {
        self.blocking(|root| {
            let mut out = Vec::new();
            walk_repositories(
                root,
                std::path::Path::new(paths::REPOSITORIES),
                "",
                false,
                &mut out,
            )?;
            out.sort();
            Ok(out)
        })
        .await
    }
}

/// The tags naming `digest`, sorted by name.
fn sorted_tags_naming(root: &Dir, name: &RepositoryName, digest: &Digest) -> io::Result<Vec<Tag>> {
    let mut tags = tags_naming(root, name, digest)?;
    tags.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    Ok(tags)
}

fn tags_naming(root: &Dir, name: &RepositoryName, digest: &Digest) -> io::Result<Vec<Tag>> {
    let mut tags = Vec::new();
    for tag in list_dir(root, &paths::tags_dir(name))? {
        let Ok(tag) = Tag::parse(&tag) else { continue };
        if read_link(root, &paths::tag_current_link(name, &tag))?.as_ref() == Some(digest) {
            tags.push(tag);
        }
    }
    Ok(tags)
}

/// Every repository, those holding only upload sessions included (what gc,
/// fsck and upload expiry go through).
pub(super) fn every_repository(root: &Dir) -> io::Result<Vec<RepositoryName>> {
    let mut repositories = Vec::new();
    walk_repositories(
        root,
        Path::new(paths::REPOSITORIES),
        "",
        true,
        &mut repositories,
    )?;
    Ok(repositories)
}

/// Depth-first walk: a directory holding `_manifests` or `_layers` (or, with
/// `with_uploads_only`, just `_uploads`) is a repository; its other
/// subdirectories may hold nested repositories.
pub(super) fn walk_repositories(
    root: &Dir,
    dir: &std::path::Path,
    prefix: &str,
    with_uploads_only: bool,
    out: &mut Vec<RepositoryName>,
) -> io::Result<()> {
    for entry in list_dir(root, dir)? {
        if entry.starts_with('_') {
            continue;
        }
        let path = dir.join(&entry);
        if !root.is_dir(&path) {
            continue;
        }
        let name = if prefix.is_empty() {
            entry
        } else {
            format!("{prefix}/{entry}")
        };
        if root.is_dir(path.join("_manifests"))
            || root.is_dir(path.join("_layers"))
            || (with_uploads_only && root.is_dir(path.join("_uploads")))
        {
            if let Ok(parsed) = RepositoryName::parse(&name) {
                out.push(parsed);
            }
        }
        walk_repositories(root, &path, &name, with_uploads_only, out)?;
    }
    Ok(())
}

/// What to remove to undo creating `path`: its highest directory that does
/// not exist yet, or the file itself; `None` when it exists already (an
/// atomic overwrite leaves the old content if it fails).
fn new_path(root: &Dir, path: &Path) -> Option<PathBuf> {
    if root.exists(path) {
        return None;
    }
    let mut undo = path.to_path_buf();
    let mut dir = path.parent();
    while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty() && !root.exists(d)) {
        undo = d.to_path_buf();
        dir = d.parent();
    }
    Some(undo)
}

fn remove_path(root: &Dir, path: &Path) -> io::Result<()> {
    match root.symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => remove_tree(root, path).map(|_| ()),
        Ok(_) => root.remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(d: &str) -> String {
        format!(
            r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":1}}"#
        )
    }

    #[test]
    fn media_type_comes_from_body_then_header_then_shape() {
        let d = Digest::of(Algorithm::Sha256, b"x").to_string();
        let image = format!(r#"{{"schemaVersion":2,"config":{},"layers":[]}}"#, desc(&d));
        let m = ParsedManifest::parse(image.as_bytes(), None).unwrap();
        assert_eq!(m.media_type, MEDIA_TYPE_OCI_MANIFEST);
        // Docker's schema requires mediaType in the body, so the header alone is not enough.
        assert!(ParsedManifest::parse(image.as_bytes(), Some(MEDIA_TYPE_DOCKER_MANIFEST)).is_err());
        let docker = image.replacen(
            '{',
            &format!(r#"{{"mediaType":"{MEDIA_TYPE_DOCKER_MANIFEST}","#),
            1,
        );
        let m = ParsedManifest::parse(docker.as_bytes(), Some(MEDIA_TYPE_DOCKER_MANIFEST)).unwrap();
        assert_eq!(m.media_type, MEDIA_TYPE_DOCKER_MANIFEST);
        let index = format!(r#"{{"schemaVersion":2,"manifests":[{}]}}"#, desc(&d));
        let m = ParsedManifest::parse(index.as_bytes(), Some("application/json")).unwrap();
        assert_eq!(m.kind, ManifestKind::Index);
    }

    #[test]
    fn keys_that_other_clients_would_read_as_fields_are_refused() {
        let layer = format!(
            r#"{{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json","MediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:{}","size":1}}"#,
            "a".repeat(64)
        );
        let config = desc(&format!("sha256:{}", "b".repeat(64)));
        for body in [
            format!(r#"{{"schemaVersion":2,"config":{config},"layers":[{layer}]}}"#),
            format!(r#"{{"schemaVersion":2,"config":{config},"layers":[],"Layers":[]}}"#),
            format!(r#"{{"schemaVersion":2,"config":{config},"layers":[],"ſubject":{config}}}"#),
        ] {
            let error = ParsedManifest::parse(body.as_bytes(), None).unwrap_err();
            assert!(error.to_string().contains("ambiguous"), "{error}");
        }
    }

    #[test]
    fn malformed_manifests_are_refused_with_a_reason() {
        let d = Digest::of(Algorithm::Sha256, b"x").to_string();
        for (bad, why) in [
            ("not json".to_owned(), "not a valid manifest"),
            (
                r#"[2,"application/vnd.oci.image.index.v1+json",null,null,null,[],null,{}]"#
                    .to_owned(),
                "JSON object",
            ),
            (r#"{"schemaVersion":1}"#.to_owned(), "schemaVersion"),
            (
                r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#
                    .to_owned(),
                "config",
            ),
            (
                format!(
                    r#"{{"schemaVersion":2,"config":{},"layers":[],"layers":[]}}"#,
                    desc(&d)
                ),
                "duplicate",
            ),
            (
                format!(
                    r#"{{"schemaVersion":2,"config":{},"layers":[]}}"#,
                    desc("sha256:zz")
                ),
                "digest",
            ),
            (
                r#"{"schemaVersion":2,"mediaType":"text/plain","layers":[]}"#.to_owned(),
                "unsupported",
            ),
        ] {
            let err = ParsedManifest::parse(bad.as_bytes(), None).unwrap_err();
            assert!(err.to_string().contains(why), "{bad}: {err}");
        }
    }
}
