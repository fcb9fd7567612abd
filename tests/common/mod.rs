//! The harness every integration test uses: a real `portcullis` server on an
//! ephemeral loopback port over a temporary storage root, plus the few client
//! helpers the tests share (push a blob, push an image, check an error body).
//!
//! It holds no registry logic of its own: requests go over real sockets, so a
//! test sees exactly what a client would.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod garage;
pub mod moto;
pub mod oidc;
pub mod served;
pub mod ui;
pub use garage::{unique_prefix, Garage, GarageFacts};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use portcullis::config::Config;
use portcullis::server::Server;
use rand::RngCore;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::Digest as _;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Whether the tests run against the S3 backend (`PCTEST_BACKEND=s3`, as the
/// second pass of `tests/run.sh` does): every [`TestRegistry`] then keeps its
/// content in the suite's Garage, under a key prefix of its own, and a test
/// that looks at the files below its storage root skips that part.
pub fn s3_backend() -> bool {
    std::env::var("PCTEST_BACKEND").is_ok_and(|b| b == "s3")
}

/// A registry served in-process, with its storage root in a temporary
/// directory (with the S3 backend, the root holds only the policy cache).
pub struct TestRegistry {
    root: TempDir,
    config: Config,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    /// With the S3 backend, a second replica on the same bucket and prefix:
    /// requests alternate between the two, as behind a round-robin load
    /// balancer, so every test of the S3 pass runs across two replicas.
    replica: Option<Replica>,
    turn: std::sync::atomic::AtomicUsize,
    /// A plain-HTTP client for raw API calls.
    pub http: reqwest::Client,
}

/// The second replica of a [`TestRegistry`].
struct Replica {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

/// Whether the S3 pass puts two replicas behind each registry
/// (`PCTEST_REPLICAS`, default 2; 1 for a single server).
fn s3_replicas() -> usize {
    std::env::var("PCTEST_REPLICAS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2)
}

impl TestRegistry {
    /// Starts a registry with the default configuration on an empty root.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a registry after `configure` has adjusted the configuration.
    /// With [`s3_backend`], its storage is the shared Garage's bucket under a
    /// new prefix.
    pub async fn start_with(configure: impl FnOnce(&mut Config)) -> Self {
        if s3_backend() {
            let garage = Garage::shared().await;
            let mut registry = Self::start_s3_with(&garage, &unique_prefix(), configure).await;
            if s3_replicas() > 1 {
                registry.add_replica().await;
            }
            return registry;
        }
        Self::launch(|_| {}, configure).await
    }

    /// Starts a registry on the S3 backend: `garage`'s bucket, every key
    /// below `prefix`. Two registries given the same bucket and prefix are
    /// two replicas of one registry.
    pub async fn start_s3_with(
        garage: &GarageFacts,
        prefix: &str,
        configure: impl FnOnce(&mut Config),
    ) -> Self {
        Self::launch(|config| garage.configure(config, prefix), configure).await
    }

    /// A loopback listener and a temporary root, then `storage`, then `configure`.
    async fn launch(
        storage: impl FnOnce(&mut Config),
        configure: impl FnOnce(&mut Config),
    ) -> Self {
        let root = tempfile::tempdir().expect("create a temporary storage root");
        let mut config = Config {
            listen: "127.0.0.1:0".parse().expect("loopback address"),
            ..Config::default()
        };
        config.storage.root = root.path().to_owned();
        storage(&mut config);
        configure(&mut config);
        let (addr, stop, task) = serve(config.clone()).await;
        Self {
            root,
            config,
            addr,
            stop: Some(stop),
            task: Some(task),
            replica: None,
            turn: std::sync::atomic::AtomicUsize::new(0),
            http: reqwest::Client::new(),
        }
    }

    /// Starts a second server on the same storage (an S3 bucket and prefix),
    /// and alternates requests between the two from then on.
    pub async fn add_replica(&mut self) {
        let (addr, stop, task) = serve(self.config.clone()).await;
        self.replica = Some(Replica {
            addr,
            stop: Some(stop),
            task: Some(task),
        });
    }

    /// Sends every request from now on to the first server only: for a test
    /// of state a replica keeps in memory (per-client upload caps).
    pub fn single_replica(&mut self) {
        if let Some(mut replica) = self.replica.take() {
            if let Some(stop) = replica.stop.take() {
                let _ = stop.send(());
            }
        }
    }

    /// The address the next request goes to.
    fn next_addr(&self) -> SocketAddr {
        let turn = self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match &self.replica {
            Some(replica) if turn % 2 == 1 => replica.addr,
            _ => self.addr,
        }
    }

    /// Stops the server (letting requests in flight finish) and starts a new
    /// one on the same storage root, as an operator's restart would.
    pub async fn restart(&mut self) {
        let replicated = self.replica.is_some();
        self.stop().await;
        if replicated {
            self.add_replica().await;
        }
        let (addr, stop, task) = serve(self.config.clone()).await;
        self.addr = addr;
        self.stop = Some(stop);
        self.task = Some(task);
        // Pooled connections went to the old server.
        self.http = reqwest::Client::new();
    }

    /// Stops the server and waits until it has shut down.
    pub async fn stop(&mut self) {
        if let Some(mut replica) = self.replica.take() {
            if let Some(stop) = replica.stop.take() {
                let _ = stop.send(());
            }
            if let Some(task) = replica.task.take() {
                let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
            }
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("server shuts down within 10s")
                .expect("server task does not panic")
                .expect("server exits cleanly");
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The second server's address, after [`Self::add_replica`].
    pub fn replica_addr(&self) -> Option<SocketAddr> {
        self.replica.as_ref().map(|r| r.addr)
    }

    /// The configuration it was started with (`storage.prefix` for a replica).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The configured storage root (the directory `docker/registry/v2` lives in).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// An absolute URL for an API path such as `/v2/`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.next_addr())
    }

    /// Resolves a `Location` header (which may be a path) against the server.
    pub fn location(&self, response: &reqwest::Response) -> String {
        let location = header(response, "location").expect("response has a Location header");
        if location.starts_with("http://") {
            location
        } else {
            self.url(&location)
        }
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path))
    }

    /// Sends a request with no body and no extra headers.
    pub async fn send(&self, method: Method, path: &str) -> reqwest::Response {
        self.request(method, path)
            .send()
            .await
            .expect("the request reaches the registry")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.request(Method::GET, path)
            .send()
            .await
            .expect("GET reaches the registry")
    }

    /// An `oci-client` configured for this plain-HTTP registry, choosing linux/amd64 from indexes.
    pub fn oci_client(&self) -> oci_client::Client {
        oci_client::Client::new(oci_client::client::ClientConfig {
            protocol: oci_client::client::ClientProtocol::Http,
            platform_resolver: Some(Box::new(oci_client::client::linux_amd64_resolver)),
            ..Default::default()
        })
    }

    /// An `oci-client` reference to `repository:tag` in this registry.
    pub fn reference(&self, repository: &str, tag: &str) -> oci_client::Reference {
        oci_client::Reference::with_tag(self.next_addr().to_string(), repository.into(), tag.into())
    }

    /// An `oci-client` reference to `repository@digest` in this registry.
    pub fn reference_by_digest(&self, repository: &str, digest: &str) -> oci_client::Reference {
        oci_client::Reference::with_digest(
            self.next_addr().to_string(),
            repository.into(),
            digest.into(),
        )
    }

    /// Pushes a blob in one `POST ?digest=` and returns its digest.
    pub async fn push_blob(&self, repository: &str, data: &[u8]) -> String {
        let digest = sha256(data);
        self.push_blob_as(repository, data, &digest).await;
        digest
    }

    /// Pushes a blob in one `POST ?digest=` under an explicit digest (sha256 or sha512).
    pub async fn push_blob_as(&self, repository: &str, data: &[u8], digest: &str) {
        let response = self
            .request(
                Method::POST,
                &format!("/v2/{repository}/blobs/uploads/?digest={digest}"),
            )
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .expect("POST reaches the registry");
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "monolithic push of {digest} to {repository}: {}",
            response.text().await.unwrap_or_default()
        );
    }

    /// Starts an upload session and returns its absolute URL.
    pub async fn start_upload(&self, repository: &str) -> String {
        let response = self
            .request(Method::POST, &format!("/v2/{repository}/blobs/uploads/"))
            .send()
            .await
            .expect("POST reaches the registry");
        assert_eq!(response.status(), StatusCode::ACCEPTED, "start upload");
        self.location(&response)
    }

    /// Starts an upload in `repository` and sends `data` as its first
    /// chunk (202); the session's URL, for what the test does next.
    pub async fn start_upload_with(&self, repository: &str, data: Vec<u8>) -> String {
        let session = self.start_upload(repository).await;
        let patch = self
            .http
            .patch(&session)
            .body(data)
            .send()
            .await
            .expect("PATCH reaches the registry");
        assert_eq!(patch.status(), StatusCode::ACCEPTED, "PATCH {session}");
        session
    }

    /// Sends a manifest with its media type as `Content-Type`.
    pub async fn put_manifest(
        &self,
        repository: &str,
        reference: &str,
        media_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.request(
            Method::PUT,
            &format!("/v2/{repository}/manifests/{reference}"),
        )
        .header("content-type", media_type)
        .body(body)
        .send()
        .await
        .expect("PUT reaches the registry")
    }

    /// Pushes an image's config and layers (monolithic uploads), not its manifest.
    pub async fn push_blobs(&self, repository: &str, image: &Image) {
        for blob in std::iter::once(&image.config).chain(&image.layers) {
            self.push_blob(repository, blob).await;
        }
    }

    /// Pushes an image's blobs and then its manifest under `reference` (tag or digest).
    pub async fn push_image(&self, repository: &str, reference: &str, image: &Image) {
        self.push_blob(repository, &image.config).await;
        for layer in &image.layers {
            self.push_blob(repository, layer).await;
        }
        let response = self
            .put_manifest(repository, reference, OCI_MANIFEST, image.manifest.clone())
            .await;
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "manifest push to {repository}:{reference}: {}",
            response.text().await.unwrap_or_default()
        );
    }

    /// Pushes an image's blobs (monolithic uploads) and manifest as `user`
    /// (or anonymously), stopping at the first refusal. Returns that
    /// response's status and JSON body, or the manifest PUT's.
    pub async fn push_image_as(
        &self,
        user: Option<(&str, &str)>,
        repository: &str,
        tag: &str,
        image: &Image,
    ) -> (StatusCode, Value) {
        let auth = |b: reqwest::RequestBuilder| match user {
            Some((u, p)) => b.basic_auth(u, Some(p)),
            None => b,
        };
        for blob in std::iter::once(&image.config).chain(&image.layers) {
            let path = format!("/v2/{repository}/blobs/uploads/?digest={}", sha256(blob));
            let response = auth(self.request(Method::POST, &path))
                .body(blob.clone())
                .send()
                .await
                .expect("upload reaches the registry");
            if response.status() != StatusCode::CREATED {
                let status = response.status();
                return (status, response.json().await.unwrap_or(Value::Null));
            }
        }
        let path = format!("/v2/{repository}/manifests/{tag}");
        let response = auth(self.request(Method::PUT, &path))
            .header("content-type", OCI_MANIFEST)
            .body(image.manifest.clone())
            .send()
            .await
            .expect("manifest PUT reaches the registry");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Sends a request over a bare TCP connection, with the path byte for byte:
    /// HTTP clients normalise `..` and `%2e%2e` away, a hostile client does not.
    pub async fn raw_request(&self, method: &str, path: &str) -> RawResponse {
        let mut stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect to the registry");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.addr
        );
        stream
            .write_all(request.as_bytes())
            .await
            .expect("send the raw request");
        let mut bytes = Vec::new();
        stream
            .read_to_end(&mut bytes)
            .await
            .expect("read the raw response");
        RawResponse::parse(&bytes)
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(stop) = self.replica.as_mut().and_then(|r| r.stop.take()) {
            let _ = stop.send(());
        }
    }
}

async fn serve(
    config: Config,
) -> (
    SocketAddr,
    oneshot::Sender<()>,
    JoinHandle<std::io::Result<()>>,
) {
    let server = Server::bind(config).await.expect("bind the registry");
    let addr = server.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    (addr, stop, task)
}

/// A response read off a bare TCP connection.
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    fn parse(bytes: &[u8]) -> Self {
        let split = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("response has a header block");
        let head = String::from_utf8_lossy(&bytes[..split]);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().expect("status line");
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status code");
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Self {
            status,
            headers,
            body: bytes[split + 4..].to_vec(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A response header as a string, if present.
pub fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().expect("header is ASCII").to_owned())
}

/// Checks an error response: the status, `application/json`, and the spec's
/// `{"errors":[{"code":...,"message":...}]}` with `code` first. Returns the entry.
pub async fn expect_error(response: reqwest::Response, status: u16, code: &str) -> Value {
    let actual = response.status().as_u16();
    let content_type = header(&response, "content-type");
    let body = response.bytes().await.expect("read the error body");
    check_error(actual, content_type.as_deref(), &body, status, code)
}

/// `expect_error` for a response read off a bare TCP connection.
pub fn expect_raw_error(response: &RawResponse, status: u16, code: &str) -> Value {
    check_error(
        response.status,
        response.header("content-type"),
        &response.body,
        status,
        code,
    )
}

fn check_error(
    status: u16,
    content_type: Option<&str>,
    body: &[u8],
    expected_status: u16,
    code: &str,
) -> Value {
    let text = String::from_utf8_lossy(body);
    assert_eq!(status, expected_status, "status (body: {text})");
    assert_eq!(
        content_type,
        Some("application/json"),
        "error Content-Type (body: {text})"
    );
    let json: Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {text}"));
    let errors = json["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("error body has no errors array: {text}"));
    assert!(!errors.is_empty(), "errors array is empty: {text}");
    for entry in errors {
        assert!(
            entry["code"].is_string(),
            "error entry without code: {text}"
        );
        assert!(
            entry["message"].as_str().is_some_and(|m| !m.is_empty()),
            "error entry without a message: {text}"
        );
    }
    assert_eq!(errors[0]["code"], code, "error code (body: {text})");
    errors[0].clone()
}

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

pub fn sha512(data: &[u8]) -> String {
    format!("sha512:{}", hex::encode(sha2::Sha512::digest(data)))
}

pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut data);
    data
}

/// A descriptor of `data` as it appears in a manifest.
pub fn descriptor(media_type: &str, data: &[u8]) -> Value {
    json!({ "mediaType": media_type, "digest": sha256(data), "size": data.len() })
}

/// An image: a config, layers, and the manifest bytes that reference them.
#[derive(Clone)]
pub struct Image {
    pub config: Vec<u8>,
    pub layers: Vec<Vec<u8>>,
    pub manifest: Vec<u8>,
    pub digest: String,
}

impl Image {
    /// A config and two random layers; every call gives a different image.
    pub fn random() -> Self {
        Self::with_fields(json!({}))
    }

    /// A random image whose manifest also carries `extra`'s fields
    /// (`subject`, `artifactType`, `annotations`, ...).
    pub fn with_fields(extra: Value) -> Self {
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": { "type": "layers", "diff_ids": [] },
            "nonce": hex::encode(random_bytes(8)),
        }))
        .expect("config serialises");
        Self::from_parts(config, vec![random_bytes(1500), random_bytes(3000)], extra)
    }

    pub fn from_parts(config: Vec<u8>, layers: Vec<Vec<u8>>, extra: Value) -> Self {
        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, &config),
            "layers": layers.iter().map(|l| descriptor(OCI_LAYER, l)).collect::<Vec<_>>(),
        });
        if let (Some(fields), Some(target)) = (extra.as_object(), manifest.as_object_mut()) {
            for (key, value) in fields {
                target.insert(key.clone(), value.clone());
            }
        }
        let manifest = serde_json::to_vec(&manifest).expect("manifest serialises");
        let digest = sha256(&manifest);
        Self {
            config,
            layers,
            manifest,
            digest,
        }
    }

    /// This image's manifest as a descriptor (for an index or a `subject`).
    pub fn descriptor(&self) -> Value {
        descriptor(OCI_MANIFEST, &self.manifest)
    }

    /// The digests of the config and layers.
    pub fn blob_digests(&self) -> Vec<String> {
        std::iter::once(&self.config)
            .chain(&self.layers)
            .map(|b| sha256(b))
            .collect()
    }
}

/// Every regular file below `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read a storage directory") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// A chain entry for policy `name`: `module` with `settings`, every action
/// and repository.
pub fn policy(name: &str, module: &str, settings: Value) -> portcullis::config::PolicyEntry {
    portcullis::config::PolicyEntry {
        name: name.into(),
        module: module.into(),
        settings,
        actions: None,
        repositories: None,
        mode: Default::default(),
    }
}

/// The misbehaving test policy (`policies/misbehave`), built by build.rs next
/// to the bundled ones.
pub fn misbehave() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/policies/wasm32-wasip2/release/misbehave.wasm")
        .display()
        .to_string()
}

/// An htpasswd file in `dir` with bcrypt (cost 4) entries for `users`
/// (name, password).
pub fn write_htpasswd(dir: &Path, users: &[(&str, &str)]) -> PathBuf {
    let path = dir.join("htpasswd");
    let text: String = users
        .iter()
        .map(|(u, p)| format!("{u}:{}\n", bcrypt::hash(p, 4).expect("bcrypt")))
        .collect();
    std::fs::write(&path, text).expect("write htpasswd");
    path
}
