//! Builds the contract's `request` from what the API layer knows about a call.

use std::net::IpAddr;
use std::sync::Arc;

use super::bindings::portcullis::policy::types as wit;
use crate::config::Action;
use crate::identity::Identity;
use crate::reference::{Digest, Reference, RepositoryName};

/// Which kind of resource a request touches (the contract's `resource-kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
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

/// One access to decide: what, where, and the context a policy needs.
#[derive(Debug, Clone)]
pub struct Access {
    pub action: Action,
    pub resource: Resource,
    pub repository: RepositoryName,
    pub reference: Option<Reference>,
    /// What the manifest pushed or pulled is (`facts`).
    pub manifest: Option<Arc<wit::Manifest>>,
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
            manifest: self.manifest.as_deref().cloned(),
            current_digest: self.current_digest.as_ref().map(ToString::to_string),
            digest_tags: self.digest_tags.clone(),
            mount_from: self.mount_from.as_ref().map(ToString::to_string),
            now: unix_now(),
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A request written as JSON, for `portcullis policy test`: the contract's
/// fields with the WIT's names, e.g.
/// `{"action": "push", "resource": "manifest", "repository": "team-a/api",
///   "reference": {"tag": "v1"}, "identity": {"subject": "alice", "groups": ["devs"]}}`.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
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
    /// Seconds since the Unix epoch; the current time when absent.
    #[serde(default)]
    pub now: Option<u64>,
}

fn loopback() -> String {
    "127.0.0.1".into()
}

#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum JsonReference {
    Tag(String),
    Digest(String),
}

#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct JsonIdentity {
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
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
    #[serde(default)]
    pub image: Option<JsonImage>,
    #[serde(default)]
    pub children: Vec<JsonChild>,
}

#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct JsonImage {
    #[serde(default)]
    pub config_digest: String,
    #[serde(default = "oci_config_type")]
    pub config_media_type: String,
    #[serde(default)]
    pub config_size: u64,
    #[serde(default)]
    pub config: Option<JsonImageConfig>,
    #[serde(default)]
    pub layers: Vec<JsonLayer>,
    /// The config's and layers' sizes added up when absent.
    #[serde(default)]
    pub total_size: Option<u64>,
}

fn oci_config_type() -> String {
    "application/vnd.oci.image.config.v1+json".into()
}

#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct JsonImageConfig {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
    pub user: String,
    pub labels: Vec<(String, String)>,
    pub created: Option<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub exposed_ports: Vec<String>,
    pub history_length: u32,
}

#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct JsonLayer {
    pub digest: String,
    #[serde(default = "oci_layer_type")]
    pub media_type: String,
    pub size: u64,
}

fn oci_layer_type() -> String {
    "application/vnd.oci.image.layer.v1.tar+gzip".into()
}

#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct JsonChild {
    pub digest: String,
    #[serde(default = "oci_manifest_type")]
    pub media_type: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub platform: Option<JsonPlatform>,
    #[serde(default)]
    pub artifact_type: Option<String>,
}

fn oci_manifest_type() -> String {
    "application/vnd.oci.image.manifest.v1+json".into()
}

#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct JsonPlatform {
    pub os: String,
    pub architecture: String,
    #[serde(default)]
    pub variant: Option<String>,
    #[serde(default)]
    pub os_version: Option<String>,
}

impl JsonImage {
    fn into_wit(self) -> wit::Image {
        let layers: Vec<wit::Layer> = self
            .layers
            .into_iter()
            .map(|l| wit::Layer {
                digest: l.digest,
                media_type: l.media_type,
                size: l.size,
            })
            .collect();
        let total_size = self.total_size.unwrap_or_else(|| {
            layers
                .iter()
                .map(|l| l.size)
                .fold(self.config_size, u64::saturating_add)
        });
        wit::Image {
            config_digest: self.config_digest,
            config_media_type: self.config_media_type,
            config_size: self.config_size,
            config: self.config.map(|c| wit::ImageConfig {
                os: c.os,
                architecture: c.architecture,
                variant: c.variant,
                user: c.user,
                labels: c.labels,
                created: c.created,
                entrypoint: c.entrypoint,
                cmd: c.cmd,
                env: c.env,
                exposed_ports: c.exposed_ports,
                history_length: c.history_length,
            }),
            layers,
            total_size,
        }
    }
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
                image: m.image.map(JsonImage::into_wit),
                children: m
                    .children
                    .into_iter()
                    .map(|c| wit::Child {
                        digest: c.digest,
                        media_type: c.media_type,
                        size: c.size,
                        platform: c.platform.map(|p| wit::Platform {
                            os: p.os,
                            architecture: p.architecture,
                            variant: p.variant,
                            os_version: p.os_version,
                        }),
                        artifact_type: c.artifact_type,
                    })
                    .collect(),
            }),
            current_digest: self.current_digest,
            digest_tags: self.digest_tags,
            mount_from: self.mount_from,
            now: self.now.unwrap_or_else(unix_now),
        }
    }
}

impl JsonRequest {
    /// The JSON form of a contract request: what the decision log writes and
    /// `policy replay` reads back.
    pub fn from_wit(r: &wit::Request) -> Self {
        Self {
            action: match r.action {
                wit::Action::Pull => Action::Pull,
                wit::Action::Push => Action::Push,
                wit::Action::Delete => Action::Delete,
                wit::Action::List => Action::List,
            },
            resource: match r.resource {
                wit::ResourceKind::Manifest => Resource::Manifest,
                wit::ResourceKind::Blob => Resource::Blob,
                wit::ResourceKind::Upload => Resource::Upload,
                wit::ResourceKind::Tags => Resource::Tags,
                wit::ResourceKind::Catalog => Resource::Catalog,
                wit::ResourceKind::Referrers => Resource::Referrers,
            },
            repository: r.repository.clone(),
            reference: r.reference.as_ref().map(|x| match x {
                wit::Reference::Tag(t) => JsonReference::Tag(t.clone()),
                wit::Reference::Digest(d) => JsonReference::Digest(d.clone()),
            }),
            identity: JsonIdentity {
                subject: r.identity.subject.clone(),
                groups: r.identity.groups.clone(),
            },
            client_ip: r.client_ip.clone(),
            manifest: r.manifest.as_ref().map(|m| JsonManifest {
                media_type: m.media_type.clone(),
                digest: m.digest.clone(),
                size: m.size,
                artifact_type: m.artifact_type.clone(),
                subject: m.subject.clone(),
                annotations: m.annotations.clone(),
                image: m.image.as_ref().map(|i| JsonImage {
                    config_digest: i.config_digest.clone(),
                    config_media_type: i.config_media_type.clone(),
                    config_size: i.config_size,
                    config: i.config.as_ref().map(|c| JsonImageConfig {
                        os: c.os.clone(),
                        architecture: c.architecture.clone(),
                        variant: c.variant.clone(),
                        user: c.user.clone(),
                        labels: c.labels.clone(),
                        created: c.created.clone(),
                        entrypoint: c.entrypoint.clone(),
                        cmd: c.cmd.clone(),
                        env: c.env.clone(),
                        exposed_ports: c.exposed_ports.clone(),
                        history_length: c.history_length,
                    }),
                    layers: i
                        .layers
                        .iter()
                        .map(|l| JsonLayer {
                            digest: l.digest.clone(),
                            media_type: l.media_type.clone(),
                            size: l.size,
                        })
                        .collect(),
                    total_size: Some(i.total_size),
                }),
                children: m
                    .children
                    .iter()
                    .map(|c| JsonChild {
                        digest: c.digest.clone(),
                        media_type: c.media_type.clone(),
                        size: c.size,
                        platform: c.platform.as_ref().map(|p| JsonPlatform {
                            os: p.os.clone(),
                            architecture: p.architecture.clone(),
                            variant: p.variant.clone(),
                            os_version: p.os_version.clone(),
                        }),
                        artifact_type: c.artifact_type.clone(),
                    })
                    .collect(),
            }),
            current_digest: r.current_digest.clone(),
            digest_tags: r.digest_tags.clone(),
            mount_from: r.mount_from.clone(),
            now: Some(r.now),
        }
    }
}
