//! Builds the contract's `request` from what the API layer knows about a call.

use std::net::IpAddr;

use super::bindings::portcullis::policy::types as wit;
use crate::config::Action;
use crate::identity::Identity;
use crate::reference::{Digest, Reference, RepositoryName};
use crate::storage::ParsedManifest;

/// Which kind of resource a request touches (the contract's `resource-kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Resource {
    Manifest,
    Blob,
    Upload,
    Tags,
    Catalog,
    Referrers,
}

fn wit_action(action: Action) -> wit::Action {
    match action {
        Action::Pull => wit::Action::Pull,
        Action::Push => wit::Action::Push,
        Action::Delete => wit::Action::Delete,
        Action::List => wit::Action::List,
    }
}

fn wit_resource(resource: Resource) -> wit::ResourceKind {
    match resource {
        Resource::Manifest => wit::ResourceKind::Manifest,
        Resource::Blob => wit::ResourceKind::Blob,
        Resource::Upload => wit::ResourceKind::Upload,
        Resource::Tags => wit::ResourceKind::Tags,
        Resource::Catalog => wit::ResourceKind::Catalog,
        Resource::Referrers => wit::ResourceKind::Referrers,
    }
}

/// Facts about a manifest being pushed.
#[derive(Debug, Clone)]
pub struct ManifestFacts {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    pub artifact_type: Option<String>,
    pub subject: Option<Digest>,
    pub annotations: Vec<(String, String)>,
}

impl ManifestFacts {
    pub fn new(manifest: &ParsedManifest, digest: Digest, size: u64) -> Self {
        Self {
            media_type: manifest.media_type.clone(),
            digest,
            size,
            artifact_type: manifest.effective_artifact_type(),
            subject: manifest.subject.as_ref().map(|s| s.digest.clone()),
            annotations: manifest
                .annotations
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }
}

/// One access to decide: what, where, and the context a policy needs.
#[derive(Debug, Clone)]
pub struct Access {
    pub action: Action,
    pub resource: Resource,
    pub repository: RepositoryName,
    pub reference: Option<Reference>,
    pub manifest: Option<ManifestFacts>,
    pub current_digest: Option<Digest>,
    pub digest_tags: Vec<String>,
    pub mount_from: Option<RepositoryName>,
}

impl Access {
    pub fn new(action: Action, resource: Resource, repository: RepositoryName) -> Self {
        Self {
            action,
            resource,
            repository,
            reference: None,
            manifest: None,
            current_digest: None,
            digest_tags: Vec::new(),
            mount_from: None,
        }
    }

    pub fn with_reference(mut self, reference: Reference) -> Self {
        self.reference = Some(reference);
        self
    }

    /// The contract's request for this access by `identity` from `client`.
    pub fn to_wit(&self, identity: &Identity, client: IpAddr) -> wit::Request {
        wit::Request {
            action: wit_action(self.action),
            resource: wit_resource(self.resource),
            repository: self.repository.to_string(),
            reference: self.reference.as_ref().map(|r| match r {
                Reference::Tag(t) => wit::Reference::Tag(t.to_string()),
                Reference::Digest(d) => wit::Reference::Digest(d.to_string()),
            }),
            identity: wit::Identity {
                subject: identity.subject.clone(),
                groups: identity.groups.clone(),
            },
            client_ip: client.to_string(),
            manifest: self.manifest.as_ref().map(|m| wit::Manifest {
                media_type: m.media_type.clone(),
                digest: m.digest.to_string(),
                size: m.size,
                artifact_type: m.artifact_type.clone(),
                subject: m.subject.as_ref().map(ToString::to_string),
                annotations: m.annotations.clone(),
            }),
            current_digest: self.current_digest.as_ref().map(ToString::to_string),
            digest_tags: self.digest_tags.clone(),
            mount_from: self.mount_from.as_ref().map(ToString::to_string),
        }
    }
}

/// A request written as JSON, for `portcullis policy test`: the contract's
/// fields with the WIT's names, e.g.
/// `{"action": "push", "resource": "manifest", "repository": "team-a/api",
///   "reference": {"tag": "v1"}, "identity": {"subject": "alice", "groups": ["devs"]}}`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct JsonRequest {
    pub action: Action,
    pub resource: Resource,
    pub repository: String,
    #[serde(default)]
    pub reference: Option<JsonReference>,
    #[serde(default)]
    pub identity: JsonIdentity,
    #[serde(default = "loopback")]
    pub client_ip: String,
    #[serde(default)]
    pub manifest: Option<JsonManifest>,
    #[serde(default)]
    pub current_digest: Option<String>,
    #[serde(default)]
    pub digest_tags: Vec<String>,
    #[serde(default)]
    pub mount_from: Option<String>,
}

fn loopback() -> String {
    "127.0.0.1".into()
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JsonReference {
    Tag(String),
    Digest(String),
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonIdentity {
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct JsonManifest {
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub artifact_type: Option<String>,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub annotations: Vec<(String, String)>,
}

impl JsonRequest {
    /// The contract's request, exactly as written (no grammar checks: authors
    /// may want to see how their policy treats odd input).
    pub fn into_wit(self) -> wit::Request {
        wit::Request {
            action: wit_action(self.action),
            resource: wit_resource(self.resource),
            repository: self.repository,
            reference: self.reference.map(|r| match r {
                JsonReference::Tag(t) => wit::Reference::Tag(t),
                JsonReference::Digest(d) => wit::Reference::Digest(d),
            }),
            identity: wit::Identity {
                subject: self.identity.subject,
                groups: self.identity.groups,
            },
            client_ip: self.client_ip,
            manifest: self.manifest.map(|m| wit::Manifest {
                media_type: m.media_type,
                digest: m.digest,
                size: m.size,
                artifact_type: m.artifact_type,
                subject: m.subject,
                annotations: m.annotations,
            }),
            current_digest: self.current_digest,
            digest_tags: self.digest_tags,
            mount_from: self.mount_from,
        }
    }
}
