//! What a manifest is, for policies: the contract's `manifest` record with
//! the image's config (read from the store, bounded) and an index's children.
//! Derived facts are cached per manifest digest: they depend on content only,
//! so a pull pays the config read once, not on every request.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde::de::IgnoredAny;
use serde::Deserialize;

use super::bindings::portcullis::policy::types as wit;
use crate::reference::{Digest, RepositoryName};
use crate::storage::{refuse_folded_keys, ObjectKeys};
use crate::storage::{Descriptor, ManifestKind, ParsedManifest, Storage, StoredManifest};

/// Largest image config read for policies; a larger one is shown as absent.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Manifests whose facts are kept, and the bytes they may hold together;
/// past either, the older half is dropped. Facts larger than
/// `MAX_CACHED_FACT_BYTES` (a manifest with 10,000 annotations) are not kept.
const CACHE_ENTRIES: usize = 4096;
const CACHE_BYTES: usize = 64 << 20;
const MAX_CACHED_FACT_BYTES: usize = 64 << 10;

const IMAGE_CONFIG_TYPES: [&str; 2] = [
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// The facts of recently seen manifests, by digest.
#[derive(Default)]
pub struct FactsCache {
    entries: Mutex<CacheEntries>,
}

#[derive(Default)]
struct CacheEntries {
    map: HashMap<Digest, (u64, Arc<wit::Manifest>, usize)>,
    clock: u64,
    bytes: usize,
}

/// About what a manifest's facts hold: their strings, plus per-entry overhead.
fn weight(m: &wit::Manifest) -> usize {
    let pairs =
        |v: &[(String, String)]| v.iter().map(|(k, v)| k.len() + v.len() + 48).sum::<usize>();
    let list = |v: &[String]| v.iter().map(|s| s.len() + 24).sum::<usize>();
    let mut n = 256 + m.media_type.len() + m.digest.len() + pairs(&m.annotations);
    if let Some(image) = &m.image {
        n += image.layers.len() * 160;
        if let Some(c) = &image.config {
            n += pairs(&c.labels) + list(&c.env) + list(&c.cmd) + list(&c.entrypoint);
            n += list(&c.exposed_ports) + c.user.len();
        }
    }
    n + m.children.len() * 200
}

impl FactsCache {
    fn get(&self, digest: &Digest) -> Option<Arc<wit::Manifest>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .map
            .get(digest)
            .map(|(_, facts, _)| Arc::clone(facts))
    }

    fn insert(&self, digest: Digest, facts: Arc<wit::Manifest>) {
        let size = weight(&facts);
        if size > MAX_CACHED_FACT_BYTES {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.map.len() >= CACHE_ENTRIES || entries.bytes + size > CACHE_BYTES {
            // Drop the older half (by insertion): bounded, and O(n) once per
            // many insertions.
            let mut ages: Vec<u64> = entries.map.values().map(|(age, _, _)| *age).collect();
            ages.sort_unstable();
            let cut = ages.get(ages.len() / 2).copied().unwrap_or(0);
            entries.map.retain(|_, (age, _, _)| *age >= cut);
            entries.bytes = entries.map.values().map(|(_, _, n)| *n).sum();
        }
        entries.clock += 1;
        let age = entries.clock;
        entries.bytes += size;
        if let Some((_, _, old)) = entries.map.insert(digest, (age, facts, size)) {
            entries.bytes -= old;
        }
    }

    pub fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The facts of a manifest being pushed (its config is in the store: a
    /// push is refused without it). Not cached: the push may be refused, and
    /// anyone may try one; pulls of what was stored fill the cache.
    pub async fn of_push(
        &self,
        storage: &Storage,
        name: &RepositoryName,
        manifest: &ParsedManifest,
        digest: &Digest,
        size: u64,
    ) -> Arc<wit::Manifest> {
        if let Some(facts) = self.get(digest) {
            return facts;
        }
        self.describe(storage, name, manifest, digest, size, false)
            .await
    }

    /// The facts of a stored manifest being pulled.
    pub async fn of_stored(
        &self,
        storage: &Storage,
        name: &RepositoryName,
        stored: &StoredManifest,
    ) -> Arc<wit::Manifest> {
        if let Some(facts) = self.get(&stored.digest) {
            return facts;
        }
        let size = stored.bytes.len() as u64;
        match ParsedManifest::parse(&stored.bytes, Some(&stored.media_type)) {
            Ok(manifest) => {
                self.describe(storage, name, &manifest, &stored.digest, size, true)
                    .await
            }
            // Stored before validation was what it is now (a registry:2 tree
            // taken over): what is known without reading it.
            Err(_) => Arc::new(wit::Manifest {
                media_type: stored.media_type.clone(),
                digest: stored.digest.to_string(),
                size,
                artifact_type: None,
                subject: None,
                annotations: Vec::new(),
                image: None,
                children: Vec::new(),
            }),
        }
    }

    async fn describe(
        &self,
        storage: &Storage,
        name: &RepositoryName,
        manifest: &ParsedManifest,
        digest: &Digest,
        size: u64,
        keep: bool,
    ) -> Arc<wit::Manifest> {
        let (image, complete) = match manifest.kind {
            ManifestKind::Image => {
                let (image, complete) = image_facts(storage, name, manifest).await;
                (Some(image), complete)
            }
            ManifestKind::Index => (None, true),
        };
        let facts = Arc::new(manifest_facts(manifest, digest, size, image));
        // A config not in the store yet (a pull-through cache fetches blobs
        // on demand) is not cached as absent: it may arrive.
        if keep && complete {
            self.insert(digest.clone(), Arc::clone(&facts));
        }
        facts
    }
}

/// The contract's `manifest` record of a parsed manifest, with `image` as
/// read from the store (or `None`).
pub fn manifest_facts(
    manifest: &ParsedManifest,
    digest: &Digest,
    size: u64,
    image: Option<wit::Image>,
) -> wit::Manifest {
    wit::Manifest {
        media_type: manifest.media_type.clone(),
        digest: digest.to_string(),
        size,
        artifact_type: manifest.effective_artifact_type(),
        subject: manifest.subject.as_ref().map(|s| s.digest.to_string()),
        annotations: manifest
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        image,
        children: manifest.manifests.iter().map(child).collect(),
    }
}

fn child(d: &Descriptor) -> wit::Child {
    wit::Child {
        digest: d.digest.to_string(),
        media_type: d.media_type.clone(),
        size: d.size,
        platform: d.platform.as_ref().map(|p| wit::Platform {
            os: p.os.clone(),
            architecture: p.architecture.clone(),
            variant: p.variant.clone(),
            os_version: p.os_version.clone(),
        }),
        artifact_type: d.artifact_type.clone(),
    }
}

/// The image part of a manifest's facts, and whether it is complete (the
/// config was read, or is not one to read).
async fn image_facts(
    storage: &Storage,
    name: &RepositoryName,
    manifest: &ParsedManifest,
) -> (wit::Image, bool) {
    let layers: Vec<wit::Layer> = manifest
        .layers
        .iter()
        .map(|l| wit::Layer {
            digest: l.digest.to_string(),
            media_type: l.media_type.clone(),
            size: l.size,
        })
        .collect();
    let config_desc = manifest.config.as_ref();
    let total_size = layers
        .iter()
        .map(|l| l.size)
        .chain(config_desc.map(|c| c.size))
        .fold(0u64, u64::saturating_add);
    let (config, complete) = match config_desc {
        Some(desc) if IMAGE_CONFIG_TYPES.contains(&desc.media_type.as_str()) => {
            if desc.size > MAX_CONFIG_BYTES {
                (None, true)
            } else {
                match storage
                    .read_small_blob(name, &desc.digest, MAX_CONFIG_BYTES)
                    .await
                {
                    Ok(Some(bytes)) => (parse_config(&bytes), true),
                    Ok(None) => (None, true),
                    Err(e) => {
                        tracing::debug!(config = %desc.digest, error = %e, "image config not read for the policies");
                        (None, false)
                    }
                }
            }
        }
        _ => (None, true),
    };
    let image = wit::Image {
        config_digest: config_desc
            .map(|c| c.digest.to_string())
            .unwrap_or_default(),
        config_media_type: config_desc
            .map(|c| c.media_type.clone())
            .unwrap_or_default(),
        config_size: config_desc.map_or(0, |c| c.size),
        config,
        layers,
        total_size,
    };
    (image, complete)
}

/// The image config's fields (OCI image-spec config.md), and its `config`'s.
const CONFIG_FIELDS: [&str; 10] = [
    "created",
    "author",
    "architecture",
    "os",
    "os.version",
    "os.features",
    "variant",
    "config",
    "rootfs",
    "history",
];
const RUN_CONFIG_FIELDS: [&str; 10] = [
    "User",
    "ExposedPorts",
    "Env",
    "Entrypoint",
    "Cmd",
    "Volumes",
    "WorkingDir",
    "Labels",
    "StopSignal",
    "ArgsEscaped",
];

#[derive(Deserialize)]
struct ConfigKeys {
    config: Option<ObjectKeys>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawConfig {
    os: Option<String>,
    architecture: Option<String>,
    variant: Option<String>,
    created: Option<String>,
    config: Option<RawRunConfig>,
    history: Option<Vec<IgnoredAny>>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct RawRunConfig {
    user: Option<String>,
    env: Option<Vec<String>>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    exposed_ports: Option<BTreeMap<String, IgnoredAny>>,
    labels: Option<BTreeMap<String, String>>,
}

/// An image config's facts; `None` when it is not the JSON of one.
pub fn parse_config(bytes: &[u8]) -> Option<wit::ImageConfig> {
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return None;
    }
    let raw: RawConfig = serde_json::from_slice(bytes).ok()?;
    // Keys Go's encoding/json would read as these fields (`"user"` beside
    // `"User"`): the runtime might see another config than the policies.
    let top: ObjectKeys = serde_json::from_slice(bytes).ok()?;
    refuse_folded_keys(&top.0, &CONFIG_FIELDS).ok()?;
    let shape: ConfigKeys = serde_json::from_slice(bytes).ok()?;
    if let Some(run) = &shape.config {
        refuse_folded_keys(&run.0, &RUN_CONFIG_FIELDS).ok()?;
    }
    let run = raw.config.unwrap_or_default();
    Some(wit::ImageConfig {
        os: raw.os.unwrap_or_default(),
        architecture: raw.architecture.unwrap_or_default(),
        variant: raw.variant,
        user: run.user.unwrap_or_default(),
        labels: run.labels.unwrap_or_default().into_iter().collect(),
        created: raw.created,
        entrypoint: run.entrypoint.unwrap_or_default(),
        cmd: run.cmd.unwrap_or_default(),
        env: run.env.unwrap_or_default(),
        exposed_ports: run.exposed_ports.unwrap_or_default().into_keys().collect(),
        history_length: raw
            .history
            .map_or(0, |h| u32::try_from(h.len()).unwrap_or(u32::MAX)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_docker_config_gives_its_facts() {
        let config = br#"{"architecture":"arm64","os":"linux","variant":"v8",
            "created":"2026-01-02T03:04:05Z",
            "config":{"User":"1000:1000","Env":["PATH=/bin"],"Cmd":["sh"],
              "Entrypoint":null,"ExposedPorts":{"80/tcp":{},"443/tcp":{}},
              "Labels":{"org.opencontainers.image.source":"https://example.com/x","a":"b"}},
            "history":[{},{},{}],"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let facts = parse_config(config).expect("a config");
        assert_eq!(facts.os, "linux");
        assert_eq!(facts.architecture, "arm64");
        assert_eq!(facts.variant.as_deref(), Some("v8"));
        assert_eq!(facts.user, "1000:1000");
        assert_eq!(facts.cmd, ["sh"]);
        assert!(facts.entrypoint.is_empty());
        assert_eq!(facts.exposed_ports, ["443/tcp", "80/tcp"]);
        assert_eq!(facts.labels[0].0, "a");
        assert_eq!(facts.history_length, 3);
    }

    #[test]
    fn hostile_configs_give_no_facts_or_empty_ones() {
        assert!(parse_config(b"[1,2]").is_none());
        assert!(parse_config(b"not json").is_none());
        assert!(parse_config(br#"{"config":{"Labels":{"a":1}}}"#).is_none());
        // Go reads the last of `User` and `user`: no facts rather than wrong ones.
        assert!(parse_config(br#"{"config":{"User":"1000","user":"0"}}"#).is_none());
        assert!(parse_config(br#"{"OS":"linux","os":"windows"}"#).is_none());
        // Deep nesting in a field nobody reads does not hide the rest.
        let deep = format!(
            r#"{{"os":"linux","config":{{"User":"0","X":{}{}}}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let facts = parse_config(deep.as_bytes()).expect("facts despite the nesting");
        assert_eq!(facts.user, "0");
        let empty = parse_config(br#"{"config":null,"os":null}"#).expect("empty facts");
        assert_eq!(empty.user, "");
        assert!(empty.labels.is_empty());
    }
}
