//! `signature`: a manifest may be pushed or pulled only if a cosign signature
//! by one of the configured keys names exactly its digest and repository.
//!
//! Settings:
//! ```json
//! { "keys": ["-----BEGIN PUBLIC KEY-----\n...\n-----END PUBLIC KEY-----"],
//!   "tags": ["prod-*"], "referrers": true }
//! ```
//! - `keys`: PEM public keys (ECDSA P-256 or Ed25519, as `cosign
//!   generate-key-pair` writes them); a signature by any one of them counts.
//! - `tags` (optional): only requests naming a matching tag are checked ("a
//!   `prod-*` tag may only point at a signed digest"); without it every
//!   manifest push and pull is checked, by tag or digest.
//! - `referrers` (default true): signatures are also looked for among the
//!   digest's OCI 1.1 referrers, besides cosign's `sha256-<hex>.sig` tag.
//!
//! Which actions and repositories are checked is the chain entry's scope
//! (`actions = ["pull"]`, `repositories = [...]`), as for every policy.
//! What is checked is decided by content, never by name: every index and
//! every image manifest with a filesystem layer (a media type with `.tar` or
//! `rootfs`, what container runtimes unpack) needs a signature; a manifest
//! without one (a cosign signature, an attestation, an SBOM, any artifact)
//! does not, or nothing could be signed. So neither a `subject` field nor a
//! `sha256-<hex>.sig` tag exempts an image an attacker pushed.
//!
//! A signature counts when: its payload blob verifies against a key (by the
//! host's `crypto` import), its `critical.type` is cosign's, its
//! `critical.image.docker-manifest-digest` is the manifest's digest, and its
//! `critical.identity.docker-reference` names the request's repository (any
//! registry host). Verification results are cached by the host.

use std::sync::OnceLock;

use portcullis_patterns::PatternList;
use serde::Deserialize;

wit_bindgen::generate!({ path: "../../wit", world: "policy" });

use portcullis::policy::types::{Action, Manifest, Reference, ResourceKind};
use portcullis::policy::{crypto, lookup};

const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
const COSIGN_TYPE: &str = "cosign container image signature";
/// The artifact type of cosign's signatures stored as OCI 1.1 referrers.
const COSIGN_REFERRER_TYPE: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
const IMAGE_CONFIG_TYPES: [&str; 2] = [
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];
/// Signature layers tried per request (each costs a blob lookup).
const MAX_SIGNATURES: usize = 8;
/// Referrers whose manifests are read per request.
const MAX_REFERRERS: usize = 4;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    keys: Vec<String>,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default = "yes")]
    referrers: bool,
}

fn yes() -> bool {
    true
}

pub struct Settings {
    keys: Vec<String>,
    tags: Option<PatternList>,
    referrers: bool,
}

impl Settings {
    pub fn parse(json: &str) -> Result<Self, String> {
        let raw: RawSettings = serde_json::from_str(json).map_err(|e| format!("settings: {e}"))?;
        if raw.keys.is_empty() {
            return Err("settings.keys: name at least one public key (PEM)".into());
        }
        for (i, key) in raw.keys.iter().enumerate() {
            if !key.trim_start().starts_with("-----BEGIN PUBLIC KEY-----") {
                return Err(format!(
                    "settings.keys[{i}]: not a PEM public key (-----BEGIN PUBLIC KEY-----)"
                ));
            }
            // The host parses the key: a key it cannot use is refused here,
            // not found out request by request.
            #[cfg(target_arch = "wasm32")]
            if let Err(e) = crypto::verify_signature(key, b"", b"") {
                return Err(format!("settings.keys[{i}]: {e}"));
            }
        }
        let tags = match raw.tags {
            Some(t) => Some(PatternList::new(&t).map_err(|e| format!("settings.tags: {e}"))?),
            None => None,
        };
        Ok(Self {
            keys: raw.keys,
            tags,
            referrers: raw.referrers,
        })
    }

    /// Whether the request is one this policy asks a signature for.
    fn in_scope<'a>(&self, request: &'a Request) -> Option<&'a Manifest> {
        if request.resource != ResourceKind::Manifest
            || !matches!(request.action, Action::Pull | Action::Push)
        {
            return None;
        }
        match &request.reference {
            Some(Reference::Tag(tag)) => {
                if self.tags.as_ref().is_some_and(|t| !t.matches(tag)) {
                    return None;
                }
            }
            Some(Reference::Digest(_)) if self.tags.is_some() => return None,
            Some(Reference::Digest(_)) => {}
            None => return None,
        }
        // A pull of a missing manifest has none: it is answered 404.
        let manifest = request.manifest.as_ref()?;
        is_runnable(manifest).then_some(manifest)
    }

    pub fn decide(&self, request: &Request) -> Decision {
        let Some(manifest) = self.in_scope(request) else {
            return Decision::Allow;
        };
        self.verify(&manifest.digest, &request.repository)
    }

    fn verify(&self, digest: &str, repository: &str) -> Decision {
        let Some(hex) = digest.strip_prefix("sha256:") else {
            return Decision::Deny(format!("{digest}: only sha256 digests can be verified"));
        };
        let mut notes: Vec<String> = Vec::new();
        let mut tried = 0;
        // The tag scheme first: one lookup, what cosign writes by default.
        // The referrers only when it gives no valid signature.
        let mut found: Vec<(String, String)> = Vec::new();
        let tag = Reference::Tag(format!("sha256-{hex}.sig"));
        match lookup::manifest(&tag) {
            Ok(m) => signature_layers(&m.content, &mut found),
            Err(lookup::LookupError::NotFound) => {}
            Err(e) => notes.push(format!("signature tag: {}", describe(e))),
        }
        if self.any_valid(&found, digest, repository, &mut tried, &mut notes) {
            return Decision::Allow;
        }
        if self.referrers {
            let mut referred = Vec::new();
            match lookup::referrers(digest, Some(COSIGN_REFERRER_TYPE)) {
                Ok(list) => {
                    for d in list.iter().take(MAX_REFERRERS) {
                        match lookup::manifest(&Reference::Digest(d.digest.clone())) {
                            Ok(m) => signature_layers(&m.content, &mut referred),
                            Err(e) => notes.push(format!("referrer {}: {}", d.digest, describe(e))),
                        }
                    }
                }
                Err(lookup::LookupError::NotFound) => {}
                Err(e) => notes.push(format!("referrers: {}", describe(e))),
            }
            if self.any_valid(&referred, digest, repository, &mut tried, &mut notes) {
                return Decision::Allow;
            }
        }
        if tried == 0 {
            let mut reason =
                format!("{digest} in {repository} is not signed (no cosign signature found)");
            if !notes.is_empty() {
                reason.push_str(&format!(": {}", notes.join("; ")));
            }
            return Decision::Deny(reason);
        }
        Decision::Deny(format!(
            "{digest} in {repository} has no valid signature: {}",
            notes.join("; ")
        ))
    }

    /// Whether one of `found` (payload digest, base64 signature) is a valid
    /// signature of `digest` in `repository`; what was wrong goes to `notes`.
    /// At most `MAX_SIGNATURES` are tried per request, all sources together.
    fn any_valid(
        &self,
        found: &[(String, String)],
        digest: &str,
        repository: &str,
        tried: &mut usize,
        notes: &mut Vec<String>,
    ) -> bool {
        for (payload_digest, signature) in found {
            if *tried >= MAX_SIGNATURES {
                notes.push(format!("only {MAX_SIGNATURES} signatures are tried"));
                return false;
            }
            *tried += 1;
            let payload = match lookup::blob(payload_digest) {
                Ok(p) => p,
                Err(e) => {
                    notes.push(format!("payload {payload_digest}: {}", describe(e)));
                    continue;
                }
            };
            let Some(signature) = base64_decode(signature) else {
                notes.push("a signature is not base64".into());
                continue;
            };
            let by_key = self
                .keys
                .iter()
                .any(|key| crypto::verify_signature(key, &payload, &signature) == Ok(true));
            if !by_key {
                notes.push("a signature by none of the trusted keys".into());
                continue;
            }
            match check_payload(&payload, digest, repository) {
                Ok(()) => return true,
                Err(why) => notes.push(why),
            }
        }
        false
    }
}

fn describe(e: lookup::LookupError) -> &'static str {
    match e {
        lookup::LookupError::NotFound => "not found",
        lookup::LookupError::Invalid => "invalid",
        lookup::LookupError::TooLarge => "too large",
        lookup::LookupError::LimitReached => "lookup limit reached",
        lookup::LookupError::Unavailable => "store unavailable",
    }
}

/// Whether a container runtime would run what this manifest names: an
/// index (its children are checked as they are pulled, by digest); an image
/// with a filesystem or Wasm layer (what runtimes and runwasi shims unpack);
/// an image whose config names an OS (a signature's config is `{}`); or an
/// image config the host could not read (fail closed).
fn is_runnable(m: &Manifest) -> bool {
    let Some(image) = &m.image else {
        return true;
    };
    let image_config = IMAGE_CONFIG_TYPES.contains(&image.config_media_type.as_str());
    match &image.config {
        Some(config) if !config.os.is_empty() => return true,
        None if image_config => return true,
        _ => {}
    }
    image.layers.iter().any(|l| {
        let t = l.media_type.as_str();
        t.contains(".tar") || t.contains("rootfs") || t.contains("wasm")
    })
}

#[derive(Deserialize)]
struct SignatureManifest {
    #[serde(default)]
    layers: Vec<Layer>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Layer {
    media_type: String,
    digest: String,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
}

/// The (payload digest, base64 signature) pairs of a signature manifest.
fn signature_layers(content: &[u8], out: &mut Vec<(String, String)>) {
    let Ok(manifest) = serde_json::from_slice::<SignatureManifest>(content) else {
        return;
    };
    for layer in manifest.layers {
        if layer.media_type != SIMPLE_SIGNING {
            continue;
        }
        if let Some(sig) = layer.annotations.get(SIGNATURE_ANNOTATION) {
            out.push((layer.digest, sig.clone()));
        }
    }
}

#[derive(Deserialize)]
struct Payload {
    critical: Critical,
}

#[derive(Deserialize)]
struct Critical {
    identity: PayloadIdentity,
    image: PayloadImage,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct PayloadIdentity {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

#[derive(Deserialize)]
struct PayloadImage {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// Whether a verified payload names exactly this digest and repository.
fn check_payload(payload: &[u8], digest: &str, repository: &str) -> Result<(), String> {
    let payload: Payload = serde_json::from_slice(payload)
        .map_err(|e| format!("a signed payload is not cosign's: {e}"))?;
    let critical = payload.critical;
    if !critical.kind.eq_ignore_ascii_case(COSIGN_TYPE) {
        return Err(format!("a signed payload has type {:?}", critical.kind));
    }
    if critical.image.docker_manifest_digest != digest {
        return Err(format!(
            "a signature names {}, not this digest",
            critical.image.docker_manifest_digest
        ));
    }
    let named = repository_of(&critical.identity.docker_reference);
    if named != repository {
        return Err(format!(
            "a signature is for {}, not this repository",
            critical.identity.docker_reference
        ));
    }
    Ok(())
}

/// The repository path of a docker reference: without the registry host
/// (a first component with a `.` or `:`, or `localhost`), tag or digest.
fn repository_of(reference: &str) -> &str {
    let path = match reference.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            rest
        }
        _ => reference,
    };
    let path = path.split_once('@').map_or(path, |(p, _)| p);
    match path.rfind(':') {
        Some(colon) if !path[colon..].contains('/') => &path[..colon],
        _ => path,
    }
}

/// Standard base64 (with or without padding); `None` when it is not.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let trimmed = bytes
        .strip_suffix(b"==")
        .or_else(|| bytes.strip_suffix(b"="));
    let data = trimmed.unwrap_or(&bytes);
    if data.len() % 4 == 1 || data.len() > 4096 {
        return None;
    }
    let mut out = Vec::with_capacity(data.len() * 3 / 4);
    for chunk in data.chunks(4) {
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            acc |= value(*c)? << (18 - 6 * i);
        }
        let n = chunk.len() - 1;
        for i in 0..n {
            out.push((acc >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

struct Policy;

impl Guest for Policy {
    fn validate_settings(settings: String) -> Result<(), String> {
        Settings::parse(&settings).map(|_| ())
    }

    fn init(settings: String) -> Result<(), String> {
        let parsed = Settings::parse(&settings)?;
        SETTINGS
            .set(parsed)
            .map_err(|_| "init called twice".to_string())
    }

    fn evaluate(request: Request) -> Decision {
        match SETTINGS.get() {
            Some(s) => s.decide(&request),
            None => Decision::Deny("signature was not initialised".into()),
        }
    }
}

export!(Policy);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_of_drops_host_tag_and_digest() {
        assert_eq!(repository_of("127.0.0.1:5000/team/app"), "team/app");
        assert_eq!(repository_of("registry.example.com/app:v1"), "app");
        assert_eq!(repository_of("localhost/a/b@sha256:00"), "a/b");
        assert_eq!(repository_of("team/app"), "team/app");
    }

    #[test]
    fn base64_round_trips_and_refuses_garbage() {
        assert_eq!(base64_decode("aGVsbG8=").as_deref(), Some(&b"hello"[..]));
        assert_eq!(base64_decode("aGVsbG8").as_deref(), Some(&b"hello"[..]));
        assert_eq!(base64_decode("TWFu").as_deref(), Some(&b"Man"[..]));
        assert!(base64_decode("a").is_none());
        assert!(base64_decode("****").is_none());
    }

    fn manifest(layers: &[&str], image: bool) -> Manifest {
        use portcullis::policy::types::{Image, ImageConfig, Layer};
        Manifest {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: "sha256:aa".into(),
            size: 1,
            artifact_type: None,
            subject: Some("sha256:bb".into()),
            annotations: vec![],
            image: image.then(|| Image {
                config_digest: "sha256:cc".into(),
                config_media_type: "application/vnd.oci.image.config.v1+json".into(),
                config_size: 2,
                config: Some(ImageConfig {
                    os: String::new(),
                    architecture: String::new(),
                    variant: None,
                    user: String::new(),
                    labels: vec![],
                    created: None,
                    entrypoint: vec![],
                    cmd: vec![],
                    env: vec![],
                    exposed_ports: vec![],
                    history_length: 0,
                }),
                layers: layers
                    .iter()
                    .map(|t| Layer {
                        digest: "sha256:dd".into(),
                        media_type: (*t).into(),
                        size: 1,
                    })
                    .collect(),
                total_size: 3,
            }),
            children: vec![],
        }
    }

    #[test]
    fn what_runs_needs_a_signature_whatever_its_subject_or_tag() {
        assert!(is_runnable(&manifest(
            &["application/vnd.oci.image.layer.v1.tar+gzip"],
            true
        )));
        assert!(is_runnable(&manifest(
            &[
                SIMPLE_SIGNING,
                "application/vnd.docker.image.rootfs.diff.tar.gzip"
            ],
            true
        )));
        assert!(is_runnable(&manifest(&[], false)), "an index");
        assert!(!is_runnable(&manifest(&[SIMPLE_SIGNING], true)));
        // A config naming an OS, or one the host could not read, runs.
        let mut dressed = manifest(&[SIMPLE_SIGNING], true);
        if let Some(config) = dressed.image.as_mut().and_then(|i| i.config.as_mut()) {
            config.os = "linux".into();
        }
        assert!(is_runnable(&dressed));
        let mut unread = manifest(&[SIMPLE_SIGNING], true);
        if let Some(image) = unread.image.as_mut() {
            image.config = None;
        }
        assert!(is_runnable(&unread));
        assert!(!is_runnable(&manifest(
            &["application/vnd.in-toto+json"],
            true
        )));
    }

    #[test]
    fn payloads_must_name_this_digest_and_repository() {
        let payload = br#"{"critical":{"identity":{"docker-reference":"r.example/team/app"},
            "image":{"docker-manifest-digest":"sha256:aa"},"type":"cosign container image signature"},
            "optional":null}"#;
        assert!(check_payload(payload, "sha256:aa", "team/app").is_ok());
        assert!(check_payload(payload, "sha256:bb", "team/app").is_err());
        assert!(check_payload(payload, "sha256:aa", "team/other").is_err());
        assert!(check_payload(b"{}", "sha256:aa", "team/app").is_err());
    }
}
