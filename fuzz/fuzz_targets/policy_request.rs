//! The policy's input (`src/policy/request.rs`): `Access::to_wit`, which every
//! authorised request goes through, and `JsonRequest::into_wit`, behind
//! `portcullis policy test`. Both must not panic and must carry every field
//! over unchanged.
//!
//! Input: any bytes. They are read twice: as a JSON request (the corpus seeds
//! are `policy test` files), and as the `arbitrary` encoding of an access.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use portcullis::config::Action;
use portcullis::identity::Identity;
use portcullis::policy::bindings::portcullis::policy::types as wit;
use portcullis::policy::request::{Access, JsonReference, JsonRequest, Resource};
use portcullis::reference::{Algorithm, Digest, Reference, RepositoryName, Tag};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = serde_json::from_slice::<JsonRequest>(data) {
        check_json(request);
    }
    let mut u = Unstructured::new(data);
    if let Ok(input) = Input::arbitrary(&mut u) {
        check_access(input);
    }
});

#[derive(Debug, Arbitrary)]
enum FuzzAction {
    Pull,
    Push,
    Delete,
    List,
}

#[derive(Debug, Arbitrary)]
enum FuzzResource {
    Manifest,
    Blob,
    Upload,
    Tags,
    Catalog,
    Referrers,
}

#[derive(Debug, Arbitrary)]
enum FuzzReference {
    Tag(String),
    Digest(bool, Vec<u8>),
}

#[derive(Debug, Arbitrary)]
struct FuzzManifest {
    media_type: String,
    digest: (bool, Vec<u8>),
    size: u64,
    artifact_type: Option<String>,
    subject: Option<(bool, Vec<u8>)>,
    annotations: Vec<(String, String)>,
}

#[derive(Debug, Arbitrary)]
enum FuzzIp {
    V4([u8; 4]),
    V6([u8; 16]),
}

#[derive(Debug, Arbitrary)]
struct Input {
    action: FuzzAction,
    resource: FuzzResource,
    repository: String,
    reference: Option<FuzzReference>,
    subject: Option<String>,
    groups: Vec<String>,
    client: FuzzIp,
    manifest: Option<FuzzManifest>,
    current_digest: Option<(bool, Vec<u8>)>,
    digest_tags: Vec<String>,
    mount_from: Option<String>,
}

/// A valid digest of arbitrary content: the API layer only ever holds parsed ones.
fn digest((sha512, bytes): &(bool, Vec<u8>)) -> Digest {
    let algorithm = if *sha512 {
        Algorithm::Sha512
    } else {
        Algorithm::Sha256
    };
    Digest::of(algorithm, bytes)
}

/// The name as given if it parses, else one made from it that does: the API
/// layer only builds an `Access` from a parsed name.
fn name(raw: &str) -> RepositoryName {
    RepositoryName::parse(raw).unwrap_or_else(|_| {
        let cleaned: String = raw
            .bytes()
            .filter(|b| b.is_ascii_alphanumeric())
            .map(|b| b.to_ascii_lowercase() as char)
            .take(200)
            .collect();
        let cleaned = if cleaned.is_empty() {
            "library/x".into()
        } else {
            cleaned
        };
        RepositoryName::parse(&cleaned).expect("lowercase alphanumerics are a name")
    })
}

fn tag(raw: &str) -> Tag {
    Tag::parse(raw).unwrap_or_else(|_| {
        let cleaned: String = raw
            .bytes()
            .filter(|b| b.is_ascii_alphanumeric())
            .map(char::from)
            .take(128)
            .collect();
        Tag::parse(&cleaned).unwrap_or_else(|_| Tag::parse("latest").unwrap())
    })
}

fn check_access(input: Input) {
    let action = match input.action {
        FuzzAction::Pull => Action::Pull,
        FuzzAction::Push => Action::Push,
        FuzzAction::Delete => Action::Delete,
        FuzzAction::List => Action::List,
    };
    let resource = match input.resource {
        FuzzResource::Manifest => Resource::Manifest,
        FuzzResource::Blob => Resource::Blob,
        FuzzResource::Upload => Resource::Upload,
        FuzzResource::Tags => Resource::Tags,
        FuzzResource::Catalog => Resource::Catalog,
        FuzzResource::Referrers => Resource::Referrers,
    };
    let mut access = Access::new(action, resource, name(&input.repository));
    if let Some(reference) = &input.reference {
        access = access.with_reference(match reference {
            FuzzReference::Tag(t) => Reference::Tag(tag(t)),
            FuzzReference::Digest(sha512, bytes) => {
                Reference::Digest(digest(&(*sha512, bytes.clone())))
            }
        });
    }
    access.manifest = input.manifest.as_ref().map(|m| {
        std::sync::Arc::new(wit::Manifest {
            media_type: m.media_type.clone(),
            digest: digest(&m.digest).to_string(),
            size: m.size,
            artifact_type: m.artifact_type.clone(),
            subject: m.subject.as_ref().map(|s| digest(s).to_string()),
            annotations: m.annotations.clone(),
            image: None,
            children: Vec::new(),
        })
    });
    access.current_digest = input.current_digest.as_ref().map(digest);
    access.digest_tags = input.digest_tags.clone();
    access.mount_from = input.mount_from.as_deref().map(name);
    let identity = Identity {
        subject: input.subject.clone(),
        groups: input.groups.clone(),
    };
    let client = match input.client {
        FuzzIp::V4(b) => IpAddr::V4(Ipv4Addr::from(b)),
        FuzzIp::V6(b) => IpAddr::V6(Ipv6Addr::from(b)),
    };

    let request = access.to_wit(&identity, client);

    assert_eq!(action_name(request.action), action_name_of(access.action));
    assert_eq!(
        resource_name(request.resource),
        format!("{:?}", access.resource).to_lowercase()
    );
    assert_eq!(request.repository, access.repository.as_str());
    // What a policy sees as a name or digest is still in the grammar.
    assert_eq!(
        RepositoryName::parse(&request.repository).as_ref(),
        Ok(&access.repository)
    );
    match (&request.reference, &access.reference) {
        (None, None) => {}
        (Some(wit::Reference::Tag(t)), Some(Reference::Tag(tag))) => {
            assert_eq!(t, tag.as_str());
            assert_eq!(
                Reference::parse(t).as_ref(),
                Ok(&Reference::Tag(tag.clone()))
            );
        }
        (Some(wit::Reference::Digest(d)), Some(Reference::Digest(digest))) => {
            assert_eq!(Digest::parse(d).as_ref(), Ok(digest));
        }
        (got, want) => panic!("reference {got:?} for {want:?}"),
    }
    assert_eq!(request.identity.subject, identity.subject);
    assert_eq!(request.identity.groups, identity.groups);
    assert_eq!(request.client_ip.parse::<IpAddr>(), Ok(client));
    match (&request.manifest, &access.manifest) {
        (None, None) => {}
        (Some(got), Some(want)) => {
            assert_eq!(got.media_type, want.media_type);
            assert_eq!(got.digest, want.digest);
            assert!(Digest::parse(&got.digest).is_ok());
            assert_eq!(got.size, want.size);
            assert_eq!(got.artifact_type, want.artifact_type);
            assert_eq!(got.subject, want.subject);
            assert_eq!(got.annotations, want.annotations);
        }
        (got, want) => panic!("manifest {got:?} for {want:?}"),
    }
    assert_eq!(
        request
            .current_digest
            .as_deref()
            .map(|s| Digest::parse(s).unwrap()),
        access.current_digest
    );
    assert_eq!(request.digest_tags, access.digest_tags);
    assert_eq!(
        request
            .mount_from
            .as_deref()
            .map(|s| RepositoryName::parse(s).unwrap()),
        access.mount_from
    );
}

fn check_json(json: JsonRequest) {
    let expected = json.clone();
    let request = json.into_wit();
    assert_eq!(action_name(request.action), action_name_of(expected.action));
    assert_eq!(
        resource_name(request.resource),
        format!("{:?}", expected.resource).to_lowercase()
    );
    assert_eq!(request.repository, expected.repository);
    match (&request.reference, &expected.reference) {
        (None, None) => {}
        (Some(wit::Reference::Tag(a)), Some(JsonReference::Tag(b))) => assert_eq!(a, b),
        (Some(wit::Reference::Digest(a)), Some(JsonReference::Digest(b))) => assert_eq!(a, b),
        (got, want) => panic!("reference {got:?} for {want:?}"),
    }
    assert_eq!(request.identity.subject, expected.identity.subject);
    assert_eq!(request.identity.groups, expected.identity.groups);
    assert_eq!(request.client_ip, expected.client_ip);
    match (&request.manifest, &expected.manifest) {
        (None, None) => {}
        (Some(got), Some(want)) => {
            assert_eq!(got.media_type, want.media_type);
            assert_eq!(got.digest, want.digest);
            assert_eq!(got.size, want.size);
            assert_eq!(got.artifact_type, want.artifact_type);
            assert_eq!(got.subject, want.subject);
            assert_eq!(got.annotations, want.annotations);
        }
        (got, want) => panic!("manifest {got:?} for {want:?}"),
    }
    assert_eq!(request.current_digest, expected.current_digest);
    assert_eq!(request.digest_tags, expected.digest_tags);
    assert_eq!(request.mount_from, expected.mount_from);
}

fn action_name_of(action: Action) -> &'static str {
    match action {
        Action::Pull => "pull",
        Action::Push => "push",
        Action::Delete => "delete",
        Action::List => "list",
    }
}

fn action_name(action: wit::Action) -> &'static str {
    match action {
        wit::Action::Pull => "pull",
        wit::Action::Push => "push",
        wit::Action::Delete => "delete",
        wit::Action::List => "list",
    }
}

fn resource_name(resource: wit::ResourceKind) -> &'static str {
    match resource {
        wit::ResourceKind::Manifest => "manifest",
        wit::ResourceKind::Blob => "blob",
        wit::ResourceKind::Upload => "upload",
        wit::ResourceKind::Tags => "tags",
        wit::ResourceKind::Catalog => "catalog",
        wit::ResourceKind::Referrers => "referrers",
    }
}
