//! Repository names, tags, digests, references and upload ids
//! (`src/reference.rs`), checked against an independent reading of the OCI
//! Distribution grammar and for the properties storage relies on: a parsed
//! name or id is safe to use as path components.
//!
//! Input: any bytes, read as UTF-8 (lossily, so every input reaches the parsers).

#![no_main]

use std::path::Component;

use libfuzzer_sys::fuzz_target;
use portcullis::reference::{
    Algorithm, Digest, ParseError, Reference, RepositoryName, Tag, UploadId, MAX_NAME_LEN,
    MAX_TAG_LEN,
};
use portcullis::storage::paths;

fuzz_target!(|data: &[u8]| {
    let raw = String::from_utf8_lossy(data);
    let raw: &str = &raw;
    check_name(raw);
    check_tag(raw);
    check_digest(raw);
    check_reference(raw);
    check_upload_id(raw);
    check_digest_of(data);
});

/// The spec's path component, `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, read as
/// alternating runs of alphanumerics and separators (a different algorithm
/// from the one under test).
fn oracle_component(c: &str) -> bool {
    fn is_alnum(ch: char) -> bool {
        ch.is_ascii_lowercase() || ch.is_ascii_digit()
    }
    let mut runs: Vec<(bool, String)> = Vec::new();
    for ch in c.chars() {
        let alnum = is_alnum(ch);
        match runs.last_mut() {
            Some((kind, run)) if *kind == alnum => run.push(ch),
            _ => runs.push((alnum, ch.to_string())),
        }
    }
    if runs.is_empty() || !runs[0].0 || !runs[runs.len() - 1].0 {
        return false;
    }
    runs.iter().filter(|(alnum, _)| !alnum).all(|(_, sep)| {
        sep == "."
            || sep == "_"
            || sep == "__"
            || (!sep.is_empty() && sep.chars().all(|c| c == '-'))
    })
}

fn oracle_name(raw: &str) -> bool {
    !raw.is_empty() && raw.len() <= MAX_NAME_LEN && raw.split('/').all(oracle_component)
}

fn oracle_tag(raw: &str) -> bool {
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-';
    let mut chars = raw.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric() || c == '_')
        && raw.chars().all(ok)
        && raw.len() <= MAX_TAG_LEN
}

/// Error messages carry the input, cut to a readable length on a char boundary.
fn check_error_text(err: &ParseError, raw: &str) {
    let shown = match err {
        ParseError::Name(s)
        | ParseError::Tag(s)
        | ParseError::Digest(s)
        | ParseError::UploadId(s) => s,
    };
    let kept = shown.strip_suffix('…').unwrap_or(shown);
    assert!(
        raw.starts_with(kept),
        "error text {shown:?} is not a prefix of the input"
    );
    assert!(
        kept.len() <= 300,
        "error text not truncated: {} bytes",
        kept.len()
    );
    if raw.len() <= 300 {
        assert_eq!(shown, raw);
    }
    // Display must not panic either.
    let _ = err.to_string();
}

fn check_name(raw: &str) {
    let parsed = RepositoryName::parse(raw);
    assert_eq!(
        parsed.is_ok(),
        oracle_name(raw),
        "grammar disagreement on {raw:?}"
    );
    assert_eq!(
        raw.parse::<RepositoryName>(),
        parsed,
        "FromStr differs from parse"
    );
    let name = match parsed {
        Ok(name) => name,
        Err(e) => return check_error_text(&e, raw),
    };
    assert_eq!(name.as_str(), raw);
    assert_eq!(name.to_string(), raw);
    assert_eq!(RepositoryName::parse(name.as_str()).as_ref(), Ok(&name));
    assert!(!raw.is_empty() && raw.len() <= MAX_NAME_LEN);
    assert!(!raw.starts_with('/') && !raw.ends_with('/'));
    assert!(!raw.contains("//") && !raw.contains('\\') && !raw.contains('\0'));
    assert!(raw.bytes().all(|b| b.is_ascii_lowercase()
        || b.is_ascii_digit()
        || matches!(b, b'.' | b'_' | b'-' | b'/')));
    let components: Vec<&str> = name.components().collect();
    assert_eq!(components.join("/"), raw);
    for c in &components {
        assert!(!c.is_empty() && *c != "." && *c != "..", "component {c:?}");
        assert!(!c.contains(".."), "component {c:?} holds '..'");
        // Never one of the layout's `_layers`, `_manifests`, ... directories.
        assert!(!c.starts_with('_') && !paths::REPO_META_DIRS.contains(c));
    }
    // Storage paths built from it stay plain relative paths.
    let dir = paths::repository_dir(&name);
    assert_eq!(dir.components().count(), 1 + components.len());
    assert!(dir.components().all(|c| matches!(c, Component::Normal(_))));
}

fn check_tag(raw: &str) {
    let parsed = Tag::parse(raw);
    assert_eq!(
        parsed.is_ok(),
        oracle_tag(raw),
        "grammar disagreement on {raw:?}"
    );
    let tag = match parsed {
        Ok(tag) => tag,
        Err(e) => return check_error_text(&e, raw),
    };
    assert_eq!(tag.as_str(), raw);
    assert_eq!(tag.to_string(), raw);
    assert!(!raw.is_empty() && raw.len() <= MAX_TAG_LEN);
    assert!(!raw.starts_with('.') && !raw.starts_with('-'));
    assert!(!raw.contains('/') && !raw.contains(':') && !raw.contains('\0'));
    assert!(raw != "." && raw != "..");
    let link = paths::tag_current_link(&RepositoryName::parse("a").unwrap(), &tag);
    assert!(link.components().all(|c| matches!(c, Component::Normal(_))));
    // A tag is never mistaken for a digest.
    assert_eq!(Reference::parse(raw), Ok(Reference::Tag(tag)));
}

fn check_digest_value(digest: &Digest) {
    let hex = digest.hex();
    let expected_len = match digest.algorithm() {
        Algorithm::Sha256 => 64,
        Algorithm::Sha512 => 128,
    };
    assert_eq!(hex.len(), expected_len, "{digest}");
    assert!(hex
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    let text = digest.to_string();
    assert_eq!(text, format!("{}:{hex}", digest.algorithm().as_str()));
    assert_eq!(Digest::parse(&text).as_ref(), Ok(digest));
    assert_eq!(
        Digest::from_parts(digest.algorithm(), hex).as_ref(),
        Some(digest)
    );
    assert_eq!(
        Algorithm::parse(digest.algorithm().as_str()),
        Some(digest.algorithm())
    );
    // blobs/<alg>/<2 hex>/<hex>/data, all plain components.
    let blob = paths::blob_data(digest);
    assert_eq!(blob.components().count(), 5);
    assert!(blob.components().all(|c| matches!(c, Component::Normal(_))));
}

fn check_digest(raw: &str) {
    let parsed = Digest::parse(raw);
    assert_eq!(raw.parse::<Digest>(), parsed, "FromStr differs from parse");
    let digest = match parsed {
        Ok(d) => d,
        Err(e) => return check_error_text(&e, raw),
    };
    assert_eq!(digest.to_string(), raw);
    check_digest_value(&digest);
    // Exactly one algorithm prefix and colon.
    assert_eq!(raw.matches(':').count(), 1);
}

fn check_reference(raw: &str) {
    match Reference::parse(raw) {
        Ok(reference) => {
            assert_eq!(reference.to_string(), raw);
            match &reference {
                Reference::Digest(d) => {
                    assert!(raw.contains(':'));
                    check_digest_value(d);
                }
                Reference::Tag(t) => {
                    assert!(!raw.contains(':'));
                    assert_eq!(t.as_str(), raw);
                }
            }
        }
        Err(e) => {
            check_error_text(&e, raw);
            if raw.contains(':') {
                assert!(matches!(e, ParseError::Digest(_)));
            } else {
                assert!(matches!(e, ParseError::Tag(_)));
            }
        }
    }
}

fn check_upload_id(raw: &str) {
    let id = match UploadId::parse(raw) {
        Ok(id) => id,
        Err(e) => return check_error_text(&e, raw),
    };
    // Only the canonical hyphenated lowercase spelling parses.
    assert_eq!(id.to_string(), raw);
    assert_eq!(raw.len(), 36);
    for (i, b) in raw.bytes().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            assert_eq!(b, b'-');
        } else {
            assert!(b.is_ascii_digit() || (b'a'..=b'f').contains(&b), "{raw:?}");
        }
    }
    let upload = paths::upload_dir(&RepositoryName::parse("a").unwrap(), id);
    assert!(upload
        .components()
        .all(|c| matches!(c, Component::Normal(_))));
}

fn check_digest_of(data: &[u8]) {
    for algorithm in Algorithm::ALL {
        check_digest_value(&Digest::of(algorithm, data));
    }
}
