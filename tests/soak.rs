//! Soak: the real `portcullis` binary, with the bundled example config and its
//! policy chain, under 32 concurrent clients pushing, pulling, listing and
//! deleting, while the policy chain is reloaded every few seconds (SIGHUP and
//! config-file rewrites, alternately).
//!
//! Every client owns its repositories, so the outcome of every request is
//! known exactly: any other status, any byte that does not hash to its digest,
//! is an error and fails the test. The server's open file descriptors and
//! resident set are sampled every second and must stay flat after warm-up; at
//! the end every tag still held is pulled and verified, the server stops
//! cleanly on SIGTERM and `portcullis fsck` finds nothing.
//!
//! `PORTCULLIS_SOAK_SECS` sets the duration (default 20 s, part of the normal
//! test run); a long run:
//! `PORTCULLIS_SOAK_SECS=1800 cargo test --release --test soak -- --nocapture`.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{descriptor, sha256, OCI_CONFIG, OCI_LAYER, OCI_MANIFEST};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const CLIENTS: usize = 32;
const DEFAULT_SECS: u64 = 20;
const RELOAD_EVERY: Duration = Duration::from_secs(3);
const RELEASE_TAG: &str = "v1.0.0";
/// Layers every client pushes: the same digests committed concurrently.
const SHARED_LAYERS: usize = 4;

/// Open descriptors under load: the median of the last third may be this
/// many above the median after warm-up. A sample holds the 32 keep-alive
/// connections plus the files of the requests in flight at that instant (0 to
/// about 70 with 32 clients), so maxima jump by dozens from one second to the
/// next, and medians moved by up to 13 between windows in our runs as the
/// request mix and the machine's other load changed. One descriptor per
/// client is the bound; the exact leak check is the idle one below.
const FD_SLACK: u64 = CLIENTS as u64;
/// Once every client has disconnected, the server may hold this many
/// descriptors more than right after start-up (it held exactly as many in
/// every run so far): a descriptor leaked anywhere during the soak shows here.
const IDLE_FD_SLACK: u64 = 4;
/// Resident set may end this far above the post-warm-up ceiling: the larger of
/// a quarter of it and 32 MiB. The allocator keeps freed memory in per-thread
/// arenas, the blocking pool grows and shrinks, and the policy engine's
/// instance pool is touched lazily; those move the resident set in steps of a
/// few MiB. A leak grows without bound and crosses it in a long run.
const RSS_SLACK_FRACTION: f64 = 0.25;
const RSS_SLACK_MIN: u64 = 32 << 20;

fn soak_duration() -> Duration {
    let secs = std::env::var("PORTCULLIS_SOAK_SECS")
        .ok()
        .map(|v| {
            v.parse::<u64>()
                .unwrap_or_else(|_| panic!("PORTCULLIS_SOAK_SECS={v:?} is not a number of seconds"))
        })
        .unwrap_or(DEFAULT_SECS);
    Duration::from_secs(secs.max(5))
}

// ---------------------------------------------------------------------------
// The server process

/// The bundled example config, adjusted to this run: an ephemeral port, a
/// temporary storage root and policies directory, the repo-allowlist policy
/// added to its chain, and warm policy instances recycled often (so recycling
/// is soaked too).
fn soak_config(data: &Path, policies: &Path, generation: u64) -> String {
    let example = include_str!("../examples/portcullis.toml");
    let mut config = example.to_owned();
    for (from, to) in [
        (
            "listen = \"127.0.0.1:5000\"",
            "listen = \"127.0.0.1:0\"".to_owned(),
        ),
        ("root = \"./data\"", format!("root = {:?}", data)),
        ("dir = \"./policies\"", format!("dir = {:?}", policies)),
    ] {
        assert!(
            config.contains(from),
            "examples/portcullis.toml no longer has `{from}`; update tests/soak.rs"
        );
        config = config.replacen(from, &to, 1);
    }
    assert!(
        config.contains("delete_enabled = true"),
        "the soak deletes manifests: examples/portcullis.toml must enable deletes"
    );
    assert!(
        config.contains("builtin:tag-immutability"),
        "the soak expects the example chain's tag-immutability policy"
    );
    // Alternate between two recycling rates on each rewrite, so a reload
    // really builds a different chain.
    let recycle = if generation % 2 == 0 { 200 } else { 50 };
    config = config.replacen(
        "[policy]\n",
        &format!("[policy]\nrecycle_after = {recycle}\n"),
        1,
    );
    config.push_str(
        r#"
# Added by tests/soak.rs: clients may push and delete only under soak/.
[[policy.chain]]
name = "soak-allowlist"
module = "builtin:repo-allowlist"
settings = { push = ["soak/**"], delete = ["soak/**"], pull = ["**"], list = ["**"] }
"#,
    );
    config.push_str(&format!("# generation {generation}\n"));
    config
}

/// Writes the config the way editors and ConfigMaps do: a new file renamed over the old.
fn write_config(path: &Path, contents: &str) {
    let staged = path.with_extension("toml.new");
    std::fs::write(&staged, contents).expect("write the staged config");
    std::fs::rename(&staged, path).expect("rename the config into place");
}

/// The binary, without this test's own `PORTCULLIS_SOAK_*` variables: the
/// server reads every `PORTCULLIS_*` variable as configuration and refuses
/// unknown keys.
fn portcullis() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PORTCULLIS_SOAK_") {
            command.env_remove(key);
        }
    }
    command
}

/// What the server's log (JSON lines on stderr) told us.
#[derive(Default)]
struct ServerLog {
    reloaded: u64,
    errors: Vec<String>,
    warnings: Vec<String>,
    tail: Vec<String>,
}

struct ServerProcess {
    child: Child,
    addr: String,
    log: Arc<Mutex<ServerLog>>,
}

impl ServerProcess {
    fn start(config: &Path) -> Self {
        let mut child = portcullis()
            .args(["--log-format", "json", "serve", "--config"])
            .arg(config)
            // The access log would be most of the output; everything else stays.
            .env("PORTCULLIS_LOG", "info,portcullis::access=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start portcullis serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(ServerLog::default()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel::<String>();
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let parsed: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                    let message = parsed["fields"]["message"].as_str().unwrap_or("");
                    let mut log = log.lock().unwrap();
                    if message == "portcullis listening" {
                        if let Some(addr) = parsed["fields"]["addr"].as_str() {
                            let _ = addr_tx.send(addr.to_owned());
                        }
                    }
                    if message == "policy chain reloaded" {
                        log.reloaded += 1;
                    }
                    match parsed["level"].as_str() {
                        Some("ERROR") => log.errors.push(line.clone()),
                        Some("WARN") => log.warnings.push(line.clone()),
                        _ => {}
                    }
                    if parsed.is_null() {
                        // Not JSON: a panic message, for instance.
                        log.errors.push(line.clone());
                    }
                    log.tail.push(line);
                    if log.tail.len() > 50 {
                        log.tail.remove(0);
                    }
                }
            });
        }
        let addr = match addr_rx.recv_timeout(Duration::from_secs(120)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let tail = log.lock().unwrap().tail.join("\n");
                panic!("portcullis serve did not report its address within 120 s:\n{tail}");
            }
        };
        Self { child, addr, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill(1)");
        assert!(status.success(), "kill -{signal} {}", self.pid());
    }

    /// SIGTERM, then waits for a clean exit.
    fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for portcullis") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "portcullis did not exit within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Open descriptors and resident bytes of a process.
fn process_usage(pid: u32) -> (u64, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| entries.count() as u64)
        .unwrap_or(0);
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0);
    (fds, rss)
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Duration,
    fds: u64,
    rss: u64,
}

// ---------------------------------------------------------------------------
// The workload

/// Requests sent, by kind, and the unexpected outcomes.
#[derive(Default)]
struct Stats {
    requests: Mutex<BTreeMap<&'static str, u64>>,
    errors: Mutex<Vec<String>>,
    error_count: AtomicU64,
}

impl Stats {
    fn count(&self, kind: &'static str) {
        *self.requests.lock().unwrap().entry(kind).or_default() += 1;
    }

    fn error(&self, client: usize, message: String) {
        self.error_count.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.errors.lock().unwrap();
        if errors.len() < 50 {
            errors.push(format!("client {client}: {message}"));
        }
    }

    fn total(&self) -> u64 {
        self.requests.lock().unwrap().values().sum()
    }
}

#[derive(Clone)]
struct Image {
    blobs: Vec<Vec<u8>>,
    manifest: Vec<u8>,
    digest: String,
}

impl Image {
    fn new(rng: &mut StdRng, shared: &[Vec<u8>]) -> Self {
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": { "type": "layers", "diff_ids": [] },
            "nonce": rng.gen::<u64>(),
        }))
        .expect("config serialises");
        let mut layers = Vec::new();
        if rng.gen_bool(0.5) {
            layers.push(shared[rng.gen_range(0..shared.len())].clone());
        }
        for _ in 0..rng.gen_range(1..=3) {
            let mut layer = vec![0u8; rng.gen_range(200..16 * 1024)];
            rng.fill_bytes(&mut layer);
            layers.push(layer);
        }
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, &config),
            "layers": layers.iter().map(|l| descriptor(OCI_LAYER, l)).collect::<Vec<_>>(),
        }))
        .expect("manifest serialises");
        let digest = sha256(&manifest);
        let mut blobs = vec![config];
        blobs.extend(layers);
        Self {
            blobs,
            manifest,
            digest,
        }
    }
}

/// What one repository holds, as its only writer knows it.
#[derive(Default)]
struct Repo {
    name: String,
    /// Whether the repository exists (something was uploaded to it).
    exists: bool,
    blobs: HashSet<String>,
    manifests: HashMap<String, Image>,
    tags: BTreeMap<String, String>,
}

impl Repo {
    fn tags_of(&self, digest: &str) -> Vec<String> {
        self.tags
            .iter()
            .filter(|(_, d)| *d == digest)
            .map(|(t, _)| t.clone())
            .collect()
    }
}

type Outcome = Result<(), String>;

struct Client {
    id: usize,
    http: reqwest::Client,
    base: String,
    rng: StdRng,
    /// `soak/cNN/app` (holds the immutable release) and `soak/cNN/lib`.
    repos: [Repo; 2],
    release: Option<Image>,
    next_tag: u64,
    shared: Arc<Vec<Vec<u8>>>,
    stats: Arc<Stats>,
}

/// Fails with what was expected and what came back, body included.
async fn expect(
    response: reqwest::Response,
    status: StatusCode,
    what: &str,
) -> Result<reqwest::Response, String> {
    if response.status() == status {
        return Ok(response);
    }
    let got = response.status();
    let body = response.text().await.unwrap_or_default();
    Err(format!("{what}: expected {status}, got {got}: {body}"))
}

/// Checks an error response's status, code, and the spec's JSON body.
async fn expect_code(
    response: reqwest::Response,
    status: StatusCode,
    code: &str,
    what: &str,
) -> Outcome {
    let response = expect(response, status, what).await?;
    let body: Value = response
        .json()
        .await
        .map_err(|e| format!("{what}: error body is not JSON: {e}"))?;
    if body["errors"][0]["code"] != code {
        return Err(format!("{what}: expected code {code}: {body}"));
    }
    Ok(())
}

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

impl Client {
    fn url(&self, path: &str) -> String {
        if path.starts_with("http://") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        }
    }

    async fn send(
        &self,
        kind: &'static str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, String> {
        self.stats.count(kind);
        request
            .send()
            .await
            .map_err(|e| format!("{kind}: transport error: {e}"))
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path))
    }

    fn location(response: &reqwest::Response, what: &str) -> Result<String, String> {
        header(response, "location").ok_or_else(|| format!("{what}: no Location"))
    }

    async fn run(mut self, stop: Arc<AtomicBool>) -> Self {
        if let Err(e) = self.push_release().await {
            self.stats.error(self.id, e);
        }
        while !stop.load(Ordering::Relaxed) {
            let r = self.rng.gen_range(0..2);
            let outcome = self.step(r).await;
            if let Err(e) = outcome {
                self.stats.error(self.id, e);
            }
        }
        self
    }

    async fn step(&mut self, r: usize) -> Outcome {
        let roll = self.rng.gen_range(0..100);
        let repo = &self.repos[r];
        let (manifests, tags) = (repo.manifests.len(), repo.tags.len());
        if manifests > 12 {
            return self.delete_manifest(r).await;
        }
        match roll {
            0..=19 => self.push_new(r).await,
            20..=24 if manifests > 0 => self.retag(r).await,
            25..=54 if manifests > 0 => self.pull(r).await,
            55..=64 => self.list_tags(r).await,
            65..=69 => self.catalog().await,
            70..=79 if manifests > 0 => self.delete_manifest(r).await,
            80..=84 if tags > 0 => self.delete_tag(r).await,
            85..=87 => self.cancelled_upload().await,
            88..=96 => self.release_rules().await,
            97..=99 => self.forbidden().await,
            _ => self.push_new(r).await,
        }
    }

    // --- blobs

    /// Makes `data` present in repository `r`, the way a client would: HEAD
    /// first, then a mount from the sibling repository or one of the four
    /// upload styles.
    async fn push_blob(&mut self, r: usize, data: &[u8]) -> Outcome {
        let digest = sha256(data);
        let name = self.repos[r].name.clone();
        let known = self.repos[r].blobs.contains(&digest);
        let head = self
            .send(
                "blob HEAD",
                self.request(Method::HEAD, &format!("/v2/{name}/blobs/{digest}")),
            )
            .await?;
        let expected = if known {
            StatusCode::OK
        } else {
            StatusCode::NOT_FOUND
        };
        let head = expect(head, expected, &format!("HEAD {name}@{digest}")).await?;
        if known {
            let length = header(&head, "content-length");
            if length != Some(data.len().to_string()) {
                return Err(format!("HEAD {name}@{digest}: Content-Length {length:?}"));
            }
            return Ok(());
        }
        let sibling = &self.repos[1 - r];
        let style = if sibling.blobs.contains(&digest) && self.rng.gen_bool(0.5) {
            4
        } else {
            self.rng.gen_range(0..4)
        };
        let what = format!("upload {name}@{digest} (style {style})");
        let uploads = format!("/v2/{name}/blobs/uploads/");
        match style {
            0 => {
                let response = self
                    .send(
                        "blob upload",
                        self.request(Method::POST, &format!("{uploads}?digest={digest}"))
                            .header("content-type", "application/octet-stream")
                            .body(data.to_vec()),
                    )
                    .await?;
                expect(response, StatusCode::CREATED, &what).await?;
            }
            1..=3 => {
                let response = self
                    .send("blob upload", self.request(Method::POST, &uploads))
                    .await?;
                let response = expect(response, StatusCode::ACCEPTED, &what).await?;
                let mut session = Self::location(&response, &what)?;
                let split = if style == 1 {
                    data.len()
                } else {
                    self.rng.gen_range(1..data.len())
                };
                // Streamed (no Content-Range) for style 1, chunked otherwise.
                let mut patch = self
                    .request(Method::PATCH, &session)
                    .header("content-type", "application/octet-stream")
                    .body(data[..split].to_vec());
                if style != 1 {
                    patch = patch.header("content-range", format!("0-{}", split - 1));
                }
                let response = expect(
                    self.send("blob upload", patch).await?,
                    StatusCode::ACCEPTED,
                    &what,
                )
                .await?;
                if header(&response, "range") != Some(format!("0-{}", split - 1)) {
                    return Err(format!(
                        "{what}: PATCH Range {:?}",
                        header(&response, "range")
                    ));
                }
                session = Self::location(&response, &what)?;
                let rest = &data[split..];
                if style == 2 && !rest.is_empty() {
                    let response = self
                        .send(
                            "blob upload",
                            self.request(Method::PATCH, &session)
                                .header("content-type", "application/octet-stream")
                                .header("content-range", format!("{split}-{}", data.len() - 1))
                                .body(rest.to_vec()),
                        )
                        .await?;
                    let response = expect(response, StatusCode::ACCEPTED, &what).await?;
                    session = Self::location(&response, &what)?;
                    let status = self
                        .send("blob upload", self.request(Method::GET, &session))
                        .await?;
                    let status = expect(status, StatusCode::NO_CONTENT, &what).await?;
                    if header(&status, "range") != Some(format!("0-{}", data.len() - 1)) {
                        return Err(format!(
                            "{what}: status Range {:?}",
                            header(&status, "range")
                        ));
                    }
                }
                // Style 3 sends the rest with the closing PUT.
                let last = if style == 3 {
                    rest.to_vec()
                } else {
                    Vec::new()
                };
                let separator = if session.contains('?') { '&' } else { '?' };
                let response = self
                    .send(
                        "blob upload",
                        self.request(Method::PUT, &format!("{session}{separator}digest={digest}"))
                            .header("content-type", "application/octet-stream")
                            .body(last),
                    )
                    .await?;
                expect(response, StatusCode::CREATED, &what).await?;
            }
            _ => {
                let from = self.repos[1 - r].name.clone();
                let response = self
                    .send(
                        "blob mount",
                        self.request(
                            Method::POST,
                            &format!("{uploads}?mount={digest}&from={from}"),
                        ),
                    )
                    .await?;
                expect(response, StatusCode::CREATED, &what).await?;
            }
        }
        let repo = &mut self.repos[r];
        repo.blobs.insert(digest);
        repo.exists = true;
        Ok(())
    }

    async fn get_blob(&mut self, r: usize, data: &[u8]) -> Outcome {
        let digest = sha256(data);
        let name = &self.repos[r].name;
        let path = format!("/v2/{name}/blobs/{digest}");
        if data.len() > 16 && self.rng.gen_bool(0.2) {
            // A resumed pull: a byte range.
            let start = self.rng.gen_range(0..data.len() - 1);
            let end = self.rng.gen_range(start..data.len());
            let response = self
                .send(
                    "blob GET",
                    self.request(Method::GET, &path)
                        .header("range", format!("bytes={start}-{end}")),
                )
                .await?;
            let response = expect(
                response,
                StatusCode::PARTIAL_CONTENT,
                &format!("GET {path} range"),
            )
            .await?;
            let body = response
                .bytes()
                .await
                .map_err(|e| format!("GET {path}: {e}"))?;
            if body.as_ref() != &data[start..=end] {
                return Err(format!("GET {path} bytes {start}-{end}: wrong bytes"));
            }
            return Ok(());
        }
        let response = self
            .send("blob GET", self.request(Method::GET, &path))
            .await?;
        let response = expect(response, StatusCode::OK, &format!("GET {path}")).await?;
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        if sha256(&body) != digest {
            return Err(format!(
                "GET {path}: {} bytes that hash to {}",
                body.len(),
                sha256(&body)
            ));
        }
        Ok(())
    }

    // --- manifests

    async fn put_manifest(&mut self, r: usize, reference: &str, image: &Image) -> Outcome {
        let name = &self.repos[r].name;
        let what = format!("PUT {name}:{reference}");
        let response = self
            .send(
                "manifest PUT",
                self.request(Method::PUT, &format!("/v2/{name}/manifests/{reference}"))
                    .header("content-type", OCI_MANIFEST)
                    .body(image.manifest.clone()),
            )
            .await?;
        let response = expect(response, StatusCode::CREATED, &what).await?;
        let digest = header(&response, "docker-content-digest");
        if digest.as_deref() != Some(image.digest.as_str()) {
            return Err(format!("{what}: Docker-Content-Digest {digest:?}"));
        }
        let repo = &mut self.repos[r];
        repo.manifests.insert(image.digest.clone(), image.clone());
        if !reference.starts_with("sha256:") {
            repo.tags.insert(reference.to_owned(), image.digest.clone());
        }
        Ok(())
    }

    async fn push_image(&mut self, r: usize, reference: &str, image: &Image) -> Outcome {
        for blob in &image.blobs {
            self.push_blob(r, blob).await?;
        }
        self.put_manifest(r, reference, image).await
    }

    async fn push_release(&mut self) -> Outcome {
        let image = Image::new(&mut self.rng, &self.shared);
        self.push_image(0, RELEASE_TAG, &image).await?;
        self.release = Some(image);
        Ok(())
    }

    async fn push_new(&mut self, r: usize) -> Outcome {
        let image = Image::new(&mut self.rng, &self.shared);
        self.next_tag += 1;
        let tag = format!("t{}", self.next_tag);
        // Sometimes by digest only: an untagged manifest.
        if self.rng.gen_bool(0.1) {
            let digest = image.digest.clone();
            return self.push_image(r, &digest, &image).await;
        }
        self.push_image(r, &tag, &image).await
    }

    /// Tags a manifest already there: a new tag, or an existing one moved.
    async fn retag(&mut self, r: usize) -> Outcome {
        let repo = &self.repos[r];
        let digests: Vec<&String> = repo.manifests.keys().collect();
        let digest = digests[self.rng.gen_range(0..digests.len())].clone();
        let image = repo.manifests[&digest].clone();
        let movable: Vec<&String> = repo.tags.keys().filter(|t| *t != RELEASE_TAG).collect();
        let tag = if !movable.is_empty() && self.rng.gen_bool(0.5) {
            movable[self.rng.gen_range(0..movable.len())].clone()
        } else {
            self.next_tag += 1;
            format!("t{}", self.next_tag)
        };
        self.put_manifest(r, &tag, &image).await
    }

    async fn pull(&mut self, r: usize) -> Outcome {
        let repo = &self.repos[r];
        let by_tag = !repo.tags.is_empty() && self.rng.gen_bool(0.7);
        let (reference, digest) = if by_tag {
            let tags: Vec<(&String, &String)> = repo.tags.iter().collect();
            let (tag, digest) = tags[self.rng.gen_range(0..tags.len())];
            (tag.clone(), digest.clone())
        } else {
            let digests: Vec<&String> = repo.manifests.keys().collect();
            let digest = digests[self.rng.gen_range(0..digests.len())].clone();
            (digest.clone(), digest)
        };
        let image = repo.manifests[&digest].clone();
        let name = repo.name.clone();
        let path = format!("/v2/{name}/manifests/{reference}");
        let method = if self.rng.gen_bool(0.2) {
            Method::HEAD
        } else {
            Method::GET
        };
        let response = self
            .send(
                "manifest GET",
                self.request(method.clone(), &path).header(
                    "accept",
                    format!("{OCI_MANIFEST}, application/vnd.oci.image.index.v1+json"),
                ),
            )
            .await?;
        let response = expect(response, StatusCode::OK, &format!("{method} {path}")).await?;
        let served = header(&response, "docker-content-digest");
        if served.as_deref() != Some(digest.as_str()) {
            return Err(format!(
                "{method} {path}: Docker-Content-Digest {served:?}, expected {digest}"
            ));
        }
        if header(&response, "content-type").as_deref() != Some(OCI_MANIFEST) {
            return Err(format!(
                "{method} {path}: Content-Type {:?}",
                header(&response, "content-type")
            ));
        }
        if method == Method::HEAD {
            return Ok(());
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        if body.as_ref() != image.manifest.as_slice() {
            return Err(format!(
                "GET {path}: manifest bytes differ from those pushed"
            ));
        }
        for blob in &image.blobs {
            self.get_blob(r, blob).await?;
        }
        Ok(())
    }

    async fn list_tags(&mut self, r: usize) -> Outcome {
        let repo = &self.repos[r];
        let name = repo.name.clone();
        let path = format!("/v2/{name}/tags/list");
        if !repo.exists {
            let response = self
                .send("tags list", self.request(Method::GET, &path))
                .await?;
            return expect_code(response, StatusCode::NOT_FOUND, "NAME_UNKNOWN", &path).await;
        }
        let expected: Vec<String> = repo.tags.keys().cloned().collect();
        let page = [None, Some(1), Some(3)][self.rng.gen_range(0..3)];
        let listed = self.paginate("tags list", &path, "tags", page).await?;
        if listed != expected {
            return Err(format!("{path}: listed {listed:?}, expected {expected:?}"));
        }
        Ok(())
    }

    async fn catalog(&mut self) -> Outcome {
        let page = [None, Some(10), Some(50)][self.rng.gen_range(0..3)];
        let listed = self
            .paginate("catalog", "/v2/_catalog", "repositories", page)
            .await?;
        let mut sorted = listed.clone();
        sorted.sort();
        sorted.dedup();
        if sorted != listed {
            return Err(format!("catalog is not sorted and unique: {listed:?}"));
        }
        for repo in self.repos.iter().filter(|r| r.exists) {
            if !listed.contains(&repo.name) {
                return Err(format!("catalog lacks {}: {listed:?}", repo.name));
            }
        }
        if let Some(odd) = listed
            .iter()
            .find(|n| !(n.starts_with("soak/c") && (n.ends_with("/app") || n.ends_with("/lib"))))
        {
            return Err(format!("catalog lists {odd}, which no client created"));
        }
        Ok(())
    }

    /// Follows `Link: <...>; rel="next"` to the end and concatenates `field`.
    async fn paginate(
        &self,
        kind: &'static str,
        path: &str,
        field: &str,
        page: Option<usize>,
    ) -> Result<Vec<String>, String> {
        let mut next = Some(match page {
            Some(n) => format!("{path}?n={n}"),
            None => path.to_owned(),
        });
        let mut out = Vec::new();
        let mut pages = 0;
        while let Some(url) = next.take() {
            pages += 1;
            if pages > 10_000 {
                return Err(format!("{path}: pagination does not end"));
            }
            let response = self.send(kind, self.request(Method::GET, &url)).await?;
            let response = expect(response, StatusCode::OK, &url).await?;
            if let Some(link) = header(&response, "link") {
                let target = link
                    .strip_prefix('<')
                    .and_then(|l| l.split_once('>'))
                    .map(|(t, _)| t.to_owned())
                    .ok_or_else(|| format!("{url}: malformed Link {link:?}"))?;
                next = Some(target);
            }
            let body: Value = response
                .json()
                .await
                .map_err(|e| format!("{url}: body is not JSON: {e}"))?;
            let items = body[field]
                .as_array()
                .ok_or_else(|| format!("{url}: no {field} array: {body}"))?;
            if page.is_some_and(|n| items.len() > n) {
                return Err(format!("{url}: more than n items: {body}"));
            }
            out.extend(items.iter().filter_map(|v| v.as_str().map(str::to_owned)));
        }
        Ok(out)
    }

    async fn delete_manifest(&mut self, r: usize) -> Outcome {
        let release = self.release.as_ref().map(|i| i.digest.clone());
        let repo = &self.repos[r];
        let candidates: Vec<&String> = repo
            .manifests
            .keys()
            .filter(|d| Some(*d) != release.as_ref())
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let digest = candidates[self.rng.gen_range(0..candidates.len())].clone();
        let name = repo.name.clone();
        let path = format!("/v2/{name}/manifests/{digest}");
        let response = self
            .send("manifest DELETE", self.request(Method::DELETE, &path))
            .await?;
        expect(response, StatusCode::ACCEPTED, &format!("DELETE {path}")).await?;
        let repo = &mut self.repos[r];
        repo.manifests.remove(&digest);
        for tag in repo.tags_of(&digest) {
            repo.tags.remove(&tag);
        }
        let response = self
            .send("manifest GET", self.request(Method::GET, &path))
            .await?;
        expect_code(
            response,
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            &format!("GET {path} after its DELETE"),
        )
        .await
    }

    async fn delete_tag(&mut self, r: usize) -> Outcome {
        let repo = &self.repos[r];
        let tags: Vec<&String> = repo.tags.keys().filter(|t| *t != RELEASE_TAG).collect();
        if tags.is_empty() {
            return Ok(());
        }
        let tag = tags[self.rng.gen_range(0..tags.len())].clone();
        let digest = repo.tags[&tag].clone();
        let name = repo.name.clone();
        let path = format!("/v2/{name}/manifests/{tag}");
        let response = self
            .send("tag DELETE", self.request(Method::DELETE, &path))
            .await?;
        expect(response, StatusCode::ACCEPTED, &format!("DELETE {path}")).await?;
        self.repos[r].tags.remove(&tag);
        let response = self
            .send("manifest GET", self.request(Method::GET, &path))
            .await?;
        expect_code(
            response,
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            &format!("GET {path} after its DELETE"),
        )
        .await?;
        // The manifest itself stays, by digest.
        let by_digest = format!("/v2/{name}/manifests/{digest}");
        let response = self
            .send("manifest GET", self.request(Method::HEAD, &by_digest))
            .await?;
        expect(
            response,
            StatusCode::OK,
            &format!("HEAD {by_digest} after untagging"),
        )
        .await?;
        Ok(())
    }

    /// An upload started, fed and cancelled: its session is gone afterwards.
    async fn cancelled_upload(&mut self) -> Outcome {
        let name = self.repos[0].name.clone();
        let what = format!("cancelled upload in {name}");
        let response = self
            .send(
                "upload cancel",
                self.request(Method::POST, &format!("/v2/{name}/blobs/uploads/")),
            )
            .await?;
        let response = expect(response, StatusCode::ACCEPTED, &what).await?;
        let session = Self::location(&response, &what)?;
        let mut chunk = vec![0u8; 4096];
        self.rng.fill_bytes(&mut chunk);
        let response = self
            .send(
                "upload cancel",
                self.request(Method::PATCH, &session)
                    .header("content-type", "application/octet-stream")
                    .body(chunk),
            )
            .await?;
        let response = expect(response, StatusCode::ACCEPTED, &what).await?;
        let session = Self::location(&response, &what)?;
        let response = self
            .send("upload cancel", self.request(Method::DELETE, &session))
            .await?;
        expect(response, StatusCode::NO_CONTENT, &what).await?;
        let response = self
            .send("upload cancel", self.request(Method::GET, &session))
            .await?;
        expect_code(
            response,
            StatusCode::NOT_FOUND,
            "BLOB_UPLOAD_UNKNOWN",
            &what,
        )
        .await
    }

    /// The example chain's tag-immutability: the release tag may be pushed
    /// again with the same manifest, never moved, never deleted.
    async fn release_rules(&mut self) -> Outcome {
        let Some(release) = self.release.clone() else {
            return Ok(());
        };
        let name = self.repos[0].name.clone();
        match self.rng.gen_range(0..4) {
            0 => self.put_manifest(0, RELEASE_TAG, &release).await,
            1 => {
                let other = self.repos[0]
                    .manifests
                    .values()
                    .find(|i| i.digest != release.digest)
                    .cloned();
                let Some(other) = other else { return Ok(()) };
                let response = self
                    .send(
                        "policy denial",
                        self.request(Method::PUT, &format!("/v2/{name}/manifests/{RELEASE_TAG}"))
                            .header("content-type", OCI_MANIFEST)
                            .body(other.manifest.clone()),
                    )
                    .await?;
                expect_code(
                    response,
                    StatusCode::FORBIDDEN,
                    "DENIED",
                    "moving the release tag",
                )
                .await
            }
            2 => {
                let response = self
                    .send(
                        "policy denial",
                        self.request(
                            Method::DELETE,
                            &format!("/v2/{name}/manifests/{}", release.digest),
                        ),
                    )
                    .await?;
                expect_code(
                    response,
                    StatusCode::FORBIDDEN,
                    "DENIED",
                    "deleting the release by digest",
                )
                .await
            }
            _ => {
                let response = self
                    .send(
                        "policy denial",
                        self.request(
                            Method::DELETE,
                            &format!("/v2/{name}/manifests/{RELEASE_TAG}"),
                        ),
                    )
                    .await?;
                expect_code(
                    response,
                    StatusCode::FORBIDDEN,
                    "DENIED",
                    "deleting the release tag",
                )
                .await
            }
        }
    }

    /// The soak's repo-allowlist: pushing outside soak/ is denied.
    async fn forbidden(&mut self) -> Outcome {
        let path = format!("/v2/elsewhere/c{:02}/blobs/uploads/", self.id);
        let response = self
            .send("policy denial", self.request(Method::POST, &path))
            .await?;
        expect_code(
            response,
            StatusCode::FORBIDDEN,
            "DENIED",
            &format!("POST {path}"),
        )
        .await
    }

    /// After the load: everything this client still holds is served intact.
    async fn verify_all(&mut self) -> Outcome {
        for r in 0..2 {
            let tags: Vec<(String, String)> = self.repos[r]
                .tags
                .iter()
                .map(|(t, d)| (t.clone(), d.clone()))
                .collect();
            let name = self.repos[r].name.clone();
            for (tag, digest) in tags {
                let image = self.repos[r].manifests[&digest].clone();
                let path = format!("/v2/{name}/manifests/{tag}");
                let response = self
                    .send("final verify", self.request(Method::GET, &path))
                    .await?;
                let response = expect(response, StatusCode::OK, &path).await?;
                let body = response.bytes().await.map_err(|e| format!("{path}: {e}"))?;
                if body.as_ref() != image.manifest.as_slice() {
                    return Err(format!("{path}: manifest bytes differ at the end"));
                }
                for blob in &image.blobs {
                    let digest = sha256(blob);
                    let path = format!("/v2/{name}/blobs/{digest}");
                    let response = self
                        .send("final verify", self.request(Method::GET, &path))
                        .await?;
                    let response = expect(response, StatusCode::OK, &path).await?;
                    let body = response.bytes().await.map_err(|e| format!("{path}: {e}"))?;
                    if sha256(&body) != digest {
                        return Err(format!("{path}: bytes do not hash to the digest"));
                    }
                }
            }
            let digests: Vec<String> = self.repos[r].manifests.keys().cloned().collect();
            for digest in digests {
                let path = format!("/v2/{name}/manifests/{digest}");
                let response = self
                    .send("final verify", self.request(Method::HEAD, &path))
                    .await?;
                expect(response, StatusCode::OK, &format!("HEAD {path}")).await?;
            }
            if self.repos[r].exists {
                let expected: Vec<String> = self.repos[r].tags.keys().cloned().collect();
                let path = format!("/v2/{name}/tags/list");
                let listed = self.paginate("final verify", &path, "tags", None).await?;
                if listed != expected {
                    return Err(format!(
                        "{path}: {listed:?} at the end, expected {expected:?}"
                    ));
                }
            }
        }
        Ok(())
    }
}

fn metric(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or(0)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_clients_with_policy_reloads_leak_nothing_and_leave_a_clean_store() {
    let duration = soak_duration();
    let dir = tempfile::tempdir().expect("temporary directory");
    let data = dir.path().join("data");
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).expect("create the policies directory");
    let config_path = dir.path().join("portcullis.toml");
    write_config(&config_path, &soak_config(&data, &policies, 0));

    let launched = Instant::now();
    let mut server = ServerProcess::start(&config_path);
    let startup = launched.elapsed();
    let base = format!("http://{}", server.addr);
    let pid = server.pid();
    let started = Instant::now();
    let (start_fds, start_rss) = process_usage(pid);

    // Sampling, every second, of the server's descriptors and resident set.
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (samples, stop) = (Arc::clone(&samples), Arc::clone(&stop));
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (fds, rss) = process_usage(pid);
                samples.lock().unwrap().push(Sample {
                    at: started.elapsed(),
                    fds,
                    rss,
                });
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };

    // Reloads: SIGHUP and config rewrites, alternately.
    let reloader = {
        let stop = Arc::clone(&stop);
        let (config_path, data, policies) = (config_path.clone(), data.clone(), policies.clone());
        let pid = server.pid();
        tokio::spawn(async move {
            let (mut signals, mut rewrites) = (0u64, 0u64);
            let mut next = Instant::now() + RELOAD_EVERY;
            while !stop.load(Ordering::Relaxed) {
                if Instant::now() < next {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                next += RELOAD_EVERY;
                if (signals + rewrites) % 2 == 0 {
                    let status = Command::new("kill")
                        .args(["-HUP", &pid.to_string()])
                        .status()
                        .expect("run kill(1)");
                    assert!(status.success(), "kill -HUP {pid}");
                    signals += 1;
                } else {
                    rewrites += 1;
                    write_config(&config_path, &soak_config(&data, &policies, rewrites));
                }
            }
            (signals, rewrites)
        })
    };

    // The clients.
    let stats = Arc::new(Stats::default());
    let mut seed_rng = StdRng::seed_from_u64(
        std::env::var("PORTCULLIS_SOAK_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| rand::thread_rng().gen()),
    );
    let shared: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..SHARED_LAYERS)
            .map(|_| {
                let mut layer = vec![0u8; seed_rng.gen_range(1024..16 * 1024)];
                seed_rng.fill_bytes(&mut layer);
                layer
            })
            .collect(),
    );
    let mut tasks = Vec::new();
    for id in 0..CLIENTS {
        let client = Client {
            id,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("HTTP client"),
            base: base.clone(),
            rng: StdRng::seed_from_u64(seed_rng.gen()),
            repos: [
                Repo {
                    name: format!("soak/c{id:02}/app"),
                    ..Repo::default()
                },
                Repo {
                    name: format!("soak/c{id:02}/lib"),
                    ..Repo::default()
                },
            ],
            release: None,
            next_tag: 0,
            shared: Arc::clone(&shared),
            stats: Arc::clone(&stats),
        };
        tasks.push(tokio::spawn(client.run(Arc::clone(&stop))));
    }

    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut clients = Vec::new();
    for task in tasks {
        clients.push(task.await.expect("client task"));
    }
    let load_time = started.elapsed();
    let (signals, rewrites) = reloader.await.expect("reloader task");
    sampler.await.expect("sampler task");
    let load_requests = stats.total();

    // Let the last reload finish, then read the counters.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let http = reqwest::Client::new();
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    let reloads_ok = metric(
        &metrics,
        "portcullis_policy_reloads_total{result=\"success\"}",
    );
    let reloads_failed = metric(
        &metrics,
        "portcullis_policy_reloads_total{result=\"failure\"}",
    );

    // Everything still tagged is served intact (the clients check their own, concurrently).
    let verifying = Instant::now();
    let checks: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let outcome = client.verify_all().await;
                (client, outcome)
            })
        })
        .collect();
    let mut clients = Vec::new();
    for check in checks {
        let (client, outcome) = check.await.expect("verification task");
        if let Err(e) = outcome {
            stats.error(client.id, format!("final verification: {e}"));
        }
        clients.push(client);
    }
    let verify_time = verifying.elapsed();
    let (end_fds, end_rss) = process_usage(pid);

    // Once every client has hung up, the server holds what it held at the start.
    drop(clients);
    drop(http);
    let mut idle_fds = process_usage(pid).0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while idle_fds > start_fds + IDLE_FD_SLACK && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        idle_fds = process_usage(pid).0;
    }

    let stopping = Instant::now();
    let exit = server.terminate();
    let stop_time = stopping.elapsed();
    let checking = Instant::now();
    let fsck = portcullis()
        .args(["fsck", "--config"])
        .arg(&config_path)
        .output()
        .expect("run portcullis fsck");
    let fsck_time = checking.elapsed();
    let fsck_text = format!(
        "{}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );

    // The summary.
    let samples = samples.lock().unwrap().clone();
    let warm_up = (duration / 4).clamp(Duration::from_secs(5), Duration::from_secs(120));
    let last_third = duration * 2 / 3;
    let window = |from: Duration, to: Duration| -> Vec<Sample> {
        samples
            .iter()
            .filter(|s| s.at >= from && s.at < to)
            .copied()
            .collect()
    };
    let middle = window(warm_up, last_third);
    let last = window(last_third, duration + Duration::from_secs(1));
    let max_of = |s: &[Sample], f: fn(&Sample) -> u64| s.iter().map(f).max().unwrap_or(0);
    let median_of = |s: &[Sample]| {
        let mut fds: Vec<u64> = s.iter().map(|s| s.fds).collect();
        fds.sort_unstable();
        fds.get(fds.len() / 2).copied().unwrap_or(0)
    };
    let (middle_fds, last_fds) = (median_of(&middle), median_of(&last));
    let (middle_rss, last_rss) = (max_of(&middle, |s| s.rss), max_of(&last, |s| s.rss));
    let peak_fds = max_of(&samples, |s| s.fds).max(end_fds);
    let peak_rss = max_of(&samples, |s| s.rss).max(end_rss);
    let rss_allowance = ((middle_rss as f64 * RSS_SLACK_FRACTION) as u64).max(RSS_SLACK_MIN);
    let log = server.log.lock().unwrap();
    let errors = stats.errors.lock().unwrap().clone();
    let error_count = stats.error_count.load(Ordering::Relaxed);
    eprintln!("soak summary");
    eprintln!(
        "  duration        {:.1} s of load with {CLIENTS} clients ({:.0} requests/s)",
        load_time.as_secs_f64(),
        load_requests as f64 / load_time.as_secs_f64()
    );
    eprintln!("  requests        {} in all", stats.total());
    for (kind, n) in stats.requests.lock().unwrap().iter() {
        eprintln!("    {kind:<16}{n}");
    }
    eprintln!("  errors          {error_count}");
    eprintln!(
        "  reloads         {signals} SIGHUP + {rewrites} config rewrites sent; \
         {reloads_ok} succeeded, {reloads_failed} failed (metrics); {} logged",
        log.reloaded
    );
    eprintln!(
        "  fds             start {start_fds}, peak {peak_fds}, end of load {end_fds}, \
         all clients gone {idle_fds}; median after warm-up {middle_fds}, median in the last third {last_fds}"
    );
    eprintln!(
        "  RSS             start {}, peak {}, end {}; max after warm-up {}, max in the last third {}",
        mib(start_rss),
        mib(peak_rss),
        mib(end_rss),
        mib(middle_rss),
        mib(last_rss)
    );
    eprintln!(
        "  server log      {} errors, {} warnings",
        log.errors.len(),
        log.warnings.len()
    );
    eprintln!(
        "  fsck            {} ({:.1} s)",
        fsck_text.trim().replace('\n', "\n                  "),
        fsck_time.as_secs_f64()
    );
    eprintln!(
        "  phases          start-up {:.1} s, final verification {:.1} s, shutdown {:.1} s",
        startup.as_secs_f64(),
        verify_time.as_secs_f64(),
        stop_time.as_secs_f64()
    );
    eprintln!(
        "  samples         fds {:?}",
        samples.iter().map(|s| s.fds).collect::<Vec<_>>()
    );
    eprintln!(
        "                  RSS MiB {:?}",
        samples.iter().map(|s| s.rss >> 20).collect::<Vec<_>>()
    );

    assert!(
        errors.is_empty(),
        "{error_count} unexpected outcomes, the first ones:\n{}",
        errors.join("\n")
    );
    assert!(
        log.errors.is_empty(),
        "the server logged errors:\n{}",
        log.errors.join("\n")
    );
    assert!(
        exit.success(),
        "portcullis exited with {exit} after SIGTERM"
    );
    assert!(
        fsck.status.success() && fsck_text.contains(" 0 findings"),
        "portcullis fsck after the soak:\n{fsck_text}"
    );
    assert_eq!(reloads_failed, 0, "no reload may fail");
    assert!(
        reloads_ok >= signals + rewrites && signals + rewrites >= 1,
        "{} reloads were asked for, {reloads_ok} happened",
        signals + rewrites
    );
    assert!(
        !middle.is_empty() && !last.is_empty(),
        "too few samples to judge: {samples:?}"
    );
    assert!(
        last_fds <= middle_fds + FD_SLACK,
        "open descriptors grew: median {middle_fds} after warm-up, {last_fds} in the last third \
         (samples: {:?})",
        samples.iter().map(|s| s.fds).collect::<Vec<_>>()
    );
    assert!(
        idle_fds <= start_fds + IDLE_FD_SLACK,
        "with every client gone the server holds {idle_fds} descriptors, {start_fds} at start-up"
    );
    assert!(
        last_rss <= middle_rss + rss_allowance,
        "resident set grew: at most {} after warm-up, {} in the last third (allowed {} more; \
         samples in MiB: {:?})",
        mib(middle_rss),
        mib(last_rss),
        mib(rss_allowance),
        samples.iter().map(|s| s.rss >> 20).collect::<Vec<_>>()
    );
}
