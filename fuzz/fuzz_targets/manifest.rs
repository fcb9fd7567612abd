//! Manifest and index parsing for `PUT /v2/<name>/manifests/<ref>`:
//! `ParsedManifest::parse(body, Content-Type)` (`src/storage/manifests.rs`),
//! then the policy's view of it (`facts::manifest_facts`).
//!
//! Input: `<Content-Type>\n<body>`. An empty first line sends no
//! Content-Type; input without a newline is a body without one.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::policy::facts::manifest_facts;
use portcullis::reference::{Algorithm, Digest};
use portcullis::storage::{
    Descriptor, ManifestKind, ParsedManifest, StorageError, MEDIA_TYPE_DOCKER_LIST,
    MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST,
};

fuzz_target!(|data: &[u8]| {
    let (content_type, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => {
            let ct = String::from_utf8_lossy(&data[..i]).into_owned();
            (Some(ct).filter(|ct| !ct.is_empty()), &data[i + 1..])
        }
        None => (None, data),
    };
    check(body, content_type.as_deref());
    // The same body without a header must not panic either, and gets the same
    // answer when the header named nothing the parser looks at.
    let without = ParsedManifest::parse(body, None);
    if content_type.is_none() {
        let with = ParsedManifest::parse(body, None);
        assert_eq!(
            summary(&with),
            summary(&without),
            "parse is not deterministic"
        );
    }
});

const SCHEMA1: [&str; 2] = [
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

fn kind_of(media_type: &str) -> Option<ManifestKind> {
    match media_type {
        MEDIA_TYPE_OCI_MANIFEST | MEDIA_TYPE_DOCKER_MANIFEST => Some(ManifestKind::Image),
        MEDIA_TYPE_OCI_INDEX | MEDIA_TYPE_DOCKER_LIST => Some(ManifestKind::Index),
        _ => None,
    }
}

/// A comparable digest of a parse result.
fn summary(r: &Result<ParsedManifest, StorageError>) -> Result<String, String> {
    match r {
        Ok(m) => Ok(format!("{m:?}")),
        Err(e) => Err(e.to_string()),
    }
}

fn check_descriptor(d: &Descriptor) {
    // A descriptor's digest passed the grammar; it round-trips through JSON.
    assert_eq!(Digest::parse(&d.digest.to_string()).as_ref(), Ok(&d.digest));
    let json = serde_json::to_vec(d).expect("a descriptor serialises");
    let back: Descriptor = serde_json::from_slice(&json).expect("a serialised descriptor parses");
    assert_eq!(&back, d);
}

fn check(body: &[u8], content_type: Option<&str>) {
    let parsed = ParsedManifest::parse(body, content_type);
    let again = ParsedManifest::parse(body, content_type);
    assert_eq!(
        summary(&parsed),
        summary(&again),
        "parse is not deterministic"
    );
    let manifest = match parsed {
        Ok(m) => m,
        Err(e) => {
            assert!(matches!(e, StorageError::ManifestInvalid(_)), "{e:?}");
            let _ = e.to_string();
            return;
        }
    };

    // Only complete JSON documents with schemaVersion 2 get through. serde
    // skips the fields it ignores without validating them the way a `Value`
    // does (UTF-8, escapes, number range), so such a body is accepted, as
    // Distribution's Go decoder also does: only those syntax checks may differ.
    let value: serde_json::Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(e) => {
            assert_eq!(
                e.classify(),
                serde_json::error::Category::Syntax,
                "accepted a body that is not JSON: {e}"
            );
            return;
        }
    };
    if !value.is_object() {
        // serde reads a struct from a JSON array too; parse refuses
        // anything but an object (corpus: json-array-as-manifest).
        panic!("accepted a manifest that is not a JSON object");
    }
    assert_eq!(value.get("schemaVersion").and_then(|v| v.as_i64()), Some(2));

    // A known media type, matching the kind, the body and the header.
    let kind = kind_of(&manifest.media_type)
        .unwrap_or_else(|| panic!("accepted unknown media type {:?}", manifest.media_type));
    assert_eq!(kind, manifest.kind);
    let body_type = value.get("mediaType").and_then(|v| v.as_str());
    if let Some(body_type) = body_type {
        assert_eq!(manifest.media_type, body_type);
    }
    let header_type = content_type
        .map(|ct| ct.split(';').next().unwrap_or("").trim())
        .filter(|ct| !ct.is_empty());
    if let Some(header) = header_type.filter(|h| kind_of(h).is_some()) {
        assert_eq!(manifest.media_type, header, "Content-Type ignored");
    }
    if body_type.is_none() {
        // Docker types must be spelled in the body, or they read back as OCI.
        assert!(
            manifest.media_type == MEDIA_TYPE_OCI_MANIFEST
                || manifest.media_type == MEDIA_TYPE_OCI_INDEX,
            "{} without mediaType in the body",
            manifest.media_type
        );
    }
    // Docker schema1 is refused whichever side names it.
    for t in [body_type, header_type].into_iter().flatten() {
        assert!(!SCHEMA1.contains(&t), "accepted schema1 {t:?}");
    }

    match manifest.kind {
        ManifestKind::Image => {
            assert!(manifest.config.is_some(), "image without config");
            assert!(manifest.manifests.is_empty(), "image with manifests");
            assert!(value.get("layers").is_some_and(|l| l.is_array()));
        }
        ManifestKind::Index => {
            assert!(manifest.config.is_none() && manifest.layers.is_empty());
            assert!(value.get("manifests").is_some_and(|l| l.is_array()));
        }
    }
    let descriptors = manifest
        .config
        .iter()
        .chain(&manifest.layers)
        .chain(&manifest.manifests)
        .chain(&manifest.subject);
    for d in descriptors {
        check_descriptor(d);
    }

    // The blobs a push must have: config and local layers, nothing else.
    let referenced: Vec<&Descriptor> = manifest.referenced_blobs().collect();
    let expected: Vec<&Descriptor> = manifest
        .config
        .iter()
        .chain(manifest.layers.iter().filter(|l| l.urls.is_empty()))
        .collect();
    assert_eq!(referenced, expected);

    // The policy's view: every fact carried over, annotations sorted by key.
    let digest = Digest::of(Algorithm::Sha256, body);
    let facts = manifest_facts(&manifest, &digest, body.len() as u64, None);
    assert_eq!(facts.media_type, manifest.media_type);
    assert_eq!(facts.digest, digest.to_string());
    assert_eq!(facts.size, body.len() as u64);
    assert_eq!(
        facts.artifact_type,
        manifest
            .artifact_type
            .clone()
            .or_else(|| manifest.config.as_ref().map(|c| c.media_type.clone()))
    );
    assert_eq!(facts.artifact_type, manifest.effective_artifact_type());
    assert_eq!(
        facts.subject,
        manifest.subject.as_ref().map(|s| s.digest.to_string())
    );
    assert_eq!(facts.children.len(), manifest.manifests.len());
    assert_eq!(facts.annotations.len(), manifest.annotations.len());
    assert!(facts.annotations.windows(2).all(|w| w[0].0 < w[1].0));
    for (k, v) in &facts.annotations {
        assert_eq!(manifest.annotations.get(k), Some(v));
    }
}
