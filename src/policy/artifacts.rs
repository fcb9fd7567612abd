//! Policies stored as OCI artifacts: `module = "oci://HOST/REPO:TAG"` (or
//! `@sha256:...`) in a chain entry, and `portcullis policy push`. This is how
//! a 12-18 MB JavaScript or Python component reaches a Kubernetes
//! deployment, past ConfigMaps' 1 MiB.
//!
//! The artifact is the layout of the CNCF Wasm OCI artifact: one layer of
//! media type `application/wasm`, config `application/vnd.wasm.config.v0+json`.
//! From this registry (HOST is `external_url`'s authority, the `listen`
//! address, or `localhost:<port>`) it is read from storage directly: the chain
//! does not exist yet when it loads. From another registry it is pulled over
//! HTTPS (plain HTTP on loopback only), anonymously. Either way the layer is
//! checked against its digest (and the manifest against a digest reference)
//! and kept in `<policy cache>/modules/`: a digest reference whose registry
//! is unreachable loads from there.

use std::path::{Path, PathBuf};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use sha2::Digest as _;

use super::engine::{block_on_guest, store_cache_entry};

use crate::config::Config;
use crate::reference::{Digest, Reference, RepositoryName};
use crate::storage::{ParsedManifest, Storage};

pub const WASM_LAYER: &str = "application/wasm";
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// Largest component loaded from a registry.
pub const MAX_MODULE_BYTES: u64 = 64 << 20;

/// A parsed `oci://` module reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleRef {
    pub host: String,
    pub repository: RepositoryName,
    pub reference: Reference,
}

impl std::fmt::Display for ModuleRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.reference {
            Reference::Tag(t) => write!(f, "oci://{}/{}:{t}", self.host, self.repository),
            Reference::Digest(d) => write!(f, "oci://{}/{}@{d}", self.host, self.repository),
        }
    }
}

/// Parses `oci://HOST/REPO:TAG` or `oci://HOST/REPO@sha256:...` (the prefix
/// included); `None` when `module` is not an `oci://` reference.
pub fn parse(module: &str) -> Option<Result<ModuleRef, String>> {
    let rest = module.strip_prefix("oci://")?;
    Some(parse_ref(rest).map_err(|e| format!("{module}: {e}")))
}

/// Parses `HOST/REPO:TAG` or `HOST/REPO@sha256:...`.
pub fn parse_ref(rest: &str) -> Result<ModuleRef, String> {
    let (host, path) = rest
        .split_once('/')
        .ok_or("expected HOST/REPOSITORY:TAG or HOST/REPOSITORY@DIGEST")?;
    if host.is_empty() || host.contains(['@', '?', '#']) {
        return Err(format!("invalid registry host {host:?}"));
    }
    let (repository, reference) = match path.split_once('@') {
        Some((repo, digest)) => (
            repo,
            Reference::Digest(Digest::parse(digest).map_err(|e| e.to_string())?),
        ),
        None => match path.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => {
                (repo, Reference::parse(tag).map_err(|e| e.to_string())?)
            }
            _ => return Err("name a tag (:TAG) or a digest (@sha256:...)".into()),
        },
    };
    let repository = RepositoryName::parse(repository).map_err(|e| e.to_string())?;
    Ok(ModuleRef {
        host: host.to_owned(),
        repository,
        reference,
    })
}

/// Whether `host` names this registry.
fn is_local(config: &Config, host: &str) -> bool {
    let external = config
        .external_url
        .as_deref()
        .and_then(|u| u.split_once("://").map(|(_, rest)| rest))
        .map(|rest| rest.split('/').next().unwrap_or(rest));
    external == Some(host)
        || host == config.listen.to_string()
        || host == format!("localhost:{}", config.listen.port())
}

fn is_loopback(host: &str) -> bool {
    let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
    name == "localhost"
        || name
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn oci_reference(r: &ModuleRef) -> oci_client::Reference {
    match &r.reference {
        Reference::Tag(t) => {
            oci_client::Reference::with_tag(r.host.clone(), r.repository.to_string(), t.to_string())
        }
        Reference::Digest(d) => oci_client::Reference::with_digest(
            r.host.clone(),
            r.repository.to_string(),
            d.to_string(),
        ),
    }
}

fn client_for(host: &str) -> oci_client::Client {
    let protocol = if is_loopback(host) {
        ClientProtocol::Http
    } else {
        ClientProtocol::Https
    };
    oci_client::Client::new(ClientConfig {
        protocol,
        // A stalled registry fails the load (the running chain stays),
        // never hangs it.
        connect_timeout: Some(std::time::Duration::from_secs(10)),
        read_timeout: Some(std::time::Duration::from_secs(30)),
        ..ClientConfig::default()
    })
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// The one `application/wasm` layer of a policy artifact's manifest.
fn wasm_layer(manifest: &[u8]) -> Result<(Digest, u64), String> {
    let parsed = ParsedManifest::parse(manifest, None).map_err(|e| e.to_string())?;
    let layers: Vec<_> = parsed
        .layers
        .iter()
        .filter(|l| l.media_type == WASM_LAYER)
        .collect();
    match layers.as_slice() {
        [layer] if layer.size <= MAX_MODULE_BYTES => Ok((layer.digest.clone(), layer.size)),
        [layer] => Err(format!(
            "the component is {} bytes, over {MAX_MODULE_BYTES}",
            layer.size
        )),
        _ => Err(format!(
            "not a policy artifact: it needs exactly one {WASM_LAYER} layer"
        )),
    }
}

/// The component bytes of `module`, fetched (or read from this registry's
/// storage), checked against their digests, and cached under `cache_dir`.
pub fn load(
    config: &Config,
    storage: Option<&Storage>,
    module: &ModuleRef,
    cache_dir: &Path,
) -> Result<Vec<u8>, String> {
    let cache = cache_dir.join("modules");
    let local = is_local(config, &module.host);
    let fetched = block_on_guest(async {
        let manifest = if local {
            let storage = storage.ok_or("this registry's storage is not open here")?;
            storage
                .get_manifest(&module.repository, &module.reference)
                .await
                .map_err(|e| e.to_string())?
                .bytes
        } else {
            let (bytes, _) = client_for(&module.host)
                .pull_manifest_raw(
                    &oci_reference(module),
                    &RegistryAuth::Anonymous,
                    &[crate::storage::MEDIA_TYPE_OCI_MANIFEST],
                )
                .await
                .map_err(|e| e.to_string())?;
            bytes.to_vec()
        };
        if let Reference::Digest(want) = &module.reference {
            if sha256_digest(&manifest) != want.to_string() {
                return Err(format!("the manifest's digest is not {want}"));
            }
        }
        let (layer, size) = wasm_layer(&manifest)?;
        remember_layer(&cache, module, &layer);
        if let Some(bytes) = read_cached(&cache, &layer) {
            return Ok(bytes);
        }
        let bytes = if local {
            let storage = storage.ok_or("this registry's storage is not open here")?;
            storage
                .read_small_blob(&module.repository, &layer, MAX_MODULE_BYTES)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("the component is too large")?
        } else {
            let mut out = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
            let descriptor = oci_client::manifest::OciDescriptor {
                media_type: WASM_LAYER.into(),
                digest: layer.to_string(),
                size: i64::try_from(size).unwrap_or(i64::MAX),
                ..Default::default()
            };
            client_for(&module.host)
                .pull_blob(&oci_reference(module), &descriptor, &mut out)
                .await
                .map_err(|e| e.to_string())?;
            out
        };
        if sha256_digest(&bytes) != layer.to_string() {
            return Err(format!("the component's bytes do not match {layer}"));
        }
        if let Err(e) = write_cached(&cache, &layer, &bytes) {
            tracing::warn!(module = %module, error = %e, "cannot cache the policy component");
        }
        Ok(bytes)
    })?;
    match fetched {
        Ok(bytes) => Ok(bytes),
        // Unreachable, but pinned by digest and fetched before: the cache.
        Err(e) => match &module.reference {
            Reference::Digest(_) => {
                cached_for_manifest(&cache, module).ok_or_else(|| format!("{module}: {e}"))
            }
            Reference::Tag(_) => Err(format!("{module}: {e}")),
        },
    }
}

fn cache_file(cache: &Path, digest: &str) -> PathBuf {
    cache.join(format!("{}.wasm", digest.replace(':', "-")))
}

fn read_cached(cache: &Path, layer: &Digest) -> Option<Vec<u8>> {
    let bytes = std::fs::read(cache_file(cache, &layer.to_string())).ok()?;
    (sha256_digest(&bytes) == layer.to_string()).then_some(bytes)
}

/// For a digest reference: the layer digest recorded when it was fetched.
fn cached_for_manifest(cache: &Path, module: &ModuleRef) -> Option<Vec<u8>> {
    let Reference::Digest(manifest) = &module.reference else {
        return None;
    };
    let layer =
        std::fs::read_to_string(cache_file(cache, &manifest.to_string()).with_extension("layer"))
            .ok()?;
    let layer = Digest::parse(layer.trim()).ok()?;
    read_cached(cache, &layer)
}

/// Atomically, 0600 in a 0700 directory: as the compile cache's entries.
fn write_cached(cache: &Path, layer: &Digest, bytes: &[u8]) -> std::io::Result<()> {
    store_cache_entry(&cache_file(cache, &layer.to_string()), bytes)
}

/// Records which layer a digest reference named, for loads without network.
fn remember_layer(cache: &Path, module: &ModuleRef, layer: &Digest) {
    use std::os::unix::fs::DirBuilderExt;
    if let Reference::Digest(d) = &module.reference {
        let made = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(cache);
        let path = cache_file(cache, &d.to_string()).with_extension("layer");
        if made
            .and_then(|()| std::fs::write(path, layer.to_string()))
            .is_err()
        {
            tracing::debug!(module = %module, "cannot record the policy's layer digest");
        }
    }
}

/// `portcullis policy push FILE REF`: stores a component as a policy
/// artifact; returns the manifest's digest.
pub async fn push(wasm: Vec<u8>, target: &ModuleRef, auth: RegistryAuth) -> Result<String, String> {
    if matches!(target.reference, Reference::Digest(_)) {
        return Err("push to a tag (HOST/REPOSITORY:TAG), not a digest".into());
    }
    let layer = oci_client::client::ImageLayer::new(wasm, WASM_LAYER.into(), None);
    let config = oci_client::client::Config::new(b"{}".to_vec(), WASM_CONFIG.into(), None);
    let response = client_for(&target.host)
        .push(&oci_reference(target), &[layer], config, &auth, None)
        .await
        .map_err(|e| format!("push to {target}: {e}"))?;
    let digest = response
        .manifest_url
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_references_parse_and_hostile_ones_are_refused() {
        let tag = parse("oci://registry.example.com:5000/policies/js:v1")
            .expect("an oci ref")
            .expect("valid");
        assert_eq!(tag.host, "registry.example.com:5000");
        assert_eq!(tag.repository.as_str(), "policies/js");
        let digest = format!("oci://localhost:5000/p@sha256:{}", "a".repeat(64));
        assert!(matches!(
            parse(&digest)
                .expect("an oci ref")
                .expect("valid")
                .reference,
            Reference::Digest(_)
        ));
        assert!(parse("builtin:signature").is_none());
        for bad in [
            "oci://",
            "oci://host",
            "oci://host/repo",
            "oci:///repo:v1",
            "oci://host/../etc:v1",
            "oci://host/Repo:v1",
            "oci://host/repo@sha256:xyz",
            "oci://host/repo:bad tag",
        ] {
            assert!(parse(bad).expect("an oci ref").is_err(), "{bad}");
        }
    }
}
