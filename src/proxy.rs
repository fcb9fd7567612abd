//! The pull-through cache: repositories under `proxy.prefix` mirror an
//! upstream registry (Docker Hub, or any Distribution registry). A pull of
//! something missing fetches it upstream (with `oci-client`, which speaks the
//! upstream's token or Basic auth), streams it to the client while storing it,
//! and serves it locally afterwards. Tags are re-checked upstream after
//! `proxy.tag_ttl`; when the upstream is unreachable the cached copy is served.
//! The mirrored namespace is read-only: pushes there are refused.
//!
//! This module talks to the upstream only; storing goes through `storage`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;

use crate::config::ProxyConfig;
use crate::reference::{Digest, Reference, RepositoryName, Tag};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("upstream {remote}: {message}")]
    Upstream { remote: String, message: String },
    #[error("upstream {remote} sent {what} with digest {actual}, not {expected}")]
    Digest {
        remote: String,
        what: &'static str,
        expected: String,
        actual: String,
    },
}

/// Every manifest type we store.
const ACCEPTED: [&str; 4] = [
    crate::storage::MEDIA_TYPE_OCI_INDEX,
    crate::storage::MEDIA_TYPE_OCI_MANIFEST,
    crate::storage::MEDIA_TYPE_DOCKER_LIST,
    crate::storage::MEDIA_TYPE_DOCKER_MANIFEST,
];

pub struct Proxy {
    client: oci_client::Client,
    remote: String,
    registry: String,
    prefix: String,
    auth: RegistryAuth,
    tag_ttl: Duration,
    checked: Mutex<HashMap<(RepositoryName, Tag), Instant>>,
}

impl Proxy {
    /// The cache for `config`, or `None` when no upstream is configured.
    pub fn from_config(config: &ProxyConfig) -> Option<Self> {
        let remote = config.remote.clone()?;
        let (protocol, registry) = match remote.split_once("://") {
            Some(("http", host)) => (ClientProtocol::Http, host),
            Some((_, host)) => (ClientProtocol::Https, host),
            None => (ClientProtocol::Https, remote.as_str()),
        };
        let registry = registry.trim_end_matches('/').to_owned();
        let auth = match (&config.username, &config.password) {
            (Some(user), Some(password)) => {
                RegistryAuth::Basic(user.clone(), password.expose().to_owned())
            }
            _ => RegistryAuth::Anonymous,
        };
        crate::tls::install_crypto_provider();
        let client = oci_client::Client::new(ClientConfig {
            protocol,
            ..ClientConfig::default()
        });
        Some(Self {
            client,
            remote,
            registry,
            prefix: config.prefix.clone(),
            auth,
            tag_ttl: config.tag_ttl,
            checked: Mutex::new(HashMap::new()),
        })
    }

    pub fn remote(&self) -> &str {
        &self.remote
    }

    /// The upstream repository `name` mirrors, if it is in the mirrored namespace.
    pub fn upstream_name(&self, name: &RepositoryName) -> Option<String> {
        if self.prefix.is_empty() {
            return Some(name.to_string());
        }
        name.as_str()
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
            .map(str::to_owned)
    }

    fn error(&self, e: impl std::fmt::Display) -> ProxyError {
        ProxyError::Upstream {
            remote: self.remote.clone(),
            message: e.to_string(),
        }
    }

    fn reference(&self, upstream: &str, reference: &Reference) -> oci_client::Reference {
        match reference {
            Reference::Tag(t) => oci_client::Reference::with_tag(
                self.registry.clone(),
                upstream.to_owned(),
                t.to_string(),
            ),
            Reference::Digest(d) => oci_client::Reference::with_digest(
                self.registry.clone(),
                upstream.to_owned(),
                d.to_string(),
            ),
        }
    }

    /// Whether `tag` was checked upstream less than `tag_ttl` ago.
    pub fn tag_is_fresh(&self, name: &RepositoryName, tag: &Tag) -> bool {
        let checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
        checked
            .get(&(name.clone(), tag.clone()))
            .is_some_and(|at| at.elapsed() < self.tag_ttl)
    }

    pub fn mark_checked(&self, name: &RepositoryName, tag: &Tag) {
        let mut checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
        if checked.len() > 100_000 {
            let ttl = self.tag_ttl;
            checked.retain(|_, at| at.elapsed() < ttl);
        }
        checked.insert((name.clone(), tag.clone()), Instant::now());
    }

    /// The digest the upstream's tag names now (a HEAD upstream).
    pub async fn tag_digest(&self, upstream: &str, tag: &Tag) -> Result<Digest, ProxyError> {
        let reference = self.reference(upstream, &Reference::Tag(tag.clone()));
        let digest = self
            .client
            .fetch_manifest_digest(&reference, &self.auth)
            .await
            .map_err(|e| self.error(e))?;
        Digest::parse(&digest).map_err(|e| self.error(e))
    }

    /// A manifest from upstream, its digest verified when asked for by digest.
    pub async fn manifest(
        &self,
        upstream: &str,
        reference: &Reference,
    ) -> Result<(Vec<u8>, Digest), ProxyError> {
        let oci_reference = self.reference(upstream, reference);
        let (bytes, _) = self
            .client
            .pull_manifest_raw(&oci_reference, &self.auth, &ACCEPTED)
            .await
            .map_err(|e| self.error(e))?;
        let algorithm = match reference {
            Reference::Digest(d) => d.algorithm(),
            Reference::Tag(_) => crate::reference::Algorithm::Sha256,
        };
        let actual = Digest::of(algorithm, &bytes);
        if let Reference::Digest(expected) = reference {
            if &actual != expected {
                return Err(ProxyError::Digest {
                    remote: self.remote.clone(),
                    what: "a manifest",
                    expected: expected.to_string(),
                    actual: actual.to_string(),
                });
            }
        }
        Ok((bytes.to_vec(), actual))
    }

    /// A blob's bytes from upstream, as a stream, with its length if known.
    /// The digest is verified by storage when the cached copy is committed.
    pub async fn blob(
        &self,
        upstream: &str,
        digest: &Digest,
    ) -> Result<oci_client::client::SizedStream, ProxyError> {
        let reference = self.reference(upstream, &Reference::Digest(digest.clone()));
        self.client
            .store_auth_if_needed(&self.registry, &self.auth)
            .await;
        self.client
            .pull_blob_stream(&reference, digest.to_string().as_str())
            .await
            .map_err(|e| self.error(e))
    }
}
