//! Crash safety ("Reliability"): the real `portcullis` binary, a separate
//! process, is SIGKILLed at random moments while several clients push
//! multi-layer images concurrently (monolithic `POST ?digest=`, streamed
//! `PATCH`, chunked `PATCH` with `Content-Range`), then restarted on the same
//! storage, many times over. After every crash:
//!
//! - every manifest the server acknowledged with 201 pulls back by digest and by
//!   its (unique) tag with the same bytes, and every blob it references is there
//!   with the right size and digest (new ones, and a sample of older ones,
//!   are downloaded and re-hashed; at the end all of them are);
//! - every file under `blobs/` is a `data` file at its content address and
//!   hashes to its name: no staging or partial file is ever visible there;
//! - upload sessions survive the crash (the store's design, see
//!   `src/storage/uploads.rs`): `GET` on a session answers 204 with a `Range`
//!   covering exactly the acknowledged bytes (or, for a chunk the crash
//!   interrupted, a prefix of it), and it resumes from there to the right digest;
//! - tag listings name every acknowledged tag, and any other tag they name
//!   (a PUT completed just before the kill) resolves.
//!
//! At the end `portcullis fsck` reports nothing, `portcullis gc` with
//! `upload_max_age = 0s` removes the abandoned sessions and staging files but
//! none of the acknowledged content, and everything still pulls back.
//!
//! One state a kill can leave, a link directory without its link, is also
//! built by hand in a deterministic test, since the random kills only
//! sometimes land in that window (filesystem only: S3 has no directories).
//!
//! With `PCTEST_BACKEND=s3` the same runs on the S3 backend, the server's
//! content in the suite's Garage (`tests/common/garage.rs`) under a key prefix
//! of its own, with 5 MiB parts: a few layers are bigger than a part, and the
//! slow session chunk goes past its first part at once and trickles on from
//! there, so kills land in multipart uploads, and between a part sent and the
//! session object written. What is checked there instead of the files:
//!
//! - every object under `<prefix>/docker/registry/v2/blobs/` is a `data`
//!   object at its content address and hashes to its name;
//! - a chunk is all-or-nothing (the session object is written last, see
//!   `src/storage/s3/uploads.rs`): after a kill mid-chunk `GET` on the session
//!   reports the acknowledged size, or all of the chunk if the kill came after
//!   the session was saved and before the 202 went out, never a part of it;
//! - `gc` empties every `_uploads/<id>/` (sessions, tails, staging objects a
//!   kill left behind). Incomplete multipart uploads a kill orphans are not
//!   listed by the object listing and not checked (README "Scale-out": a
//!   lifecycle rule aborts them).
//!
//! The prefix is removed at the end of a run that passed (a failed one leaves
//! it for a look; it is printed first). The default run takes about a minute
//! in a debug build (pushes are slower, so fewer: about 250 manifests) and
//! stores about 100 MB in the Garage; 50 iterations about 3 minutes, 300 MB.
//!
//! `PORTCULLIS_CRASH_ITERATIONS` (default 20) sets the number of crashes and
//! `PORTCULLIS_CRASH_SEED` replays a run's random choices (the seed is printed;
//! timing still varies). The default takes about 40 s in a debug build and
//! stores about 100 MB. A long run (every restart re-checks everything pushed
//! so far, so the time grows faster than the iterations; 100 iterations take
//! about 5 minutes in a debug build and store about 500 MB):
//!
//! ```text
//! PORTCULLIS_CRASH_ITERATIONS=100 cargo test --release --test crash -- --nocapture
//! tests/garage.sh start /tmp/g auto && source /tmp/g/env
//! PCTEST_BACKEND=s3 cargo test --test crash -- --nocapture
//! ```

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{
    expect_error, header, sha256, Garage, GarageFacts, OCI_CONFIG, OCI_LAYER, OCI_MANIFEST,
};
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use reqwest::{Method, StatusCode};
use serde_json::json;
use sha2::Digest as _;
use tempfile::TempDir;

const DEFAULT_ITERATIONS: usize = 20;
const PUSH_CLIENTS: usize = 5;
/// How long after the clients start the server is killed.
const KILL_AFTER_MS: std::ops::RangeInclusive<u64> = 50..=800;
/// Older blobs re-downloaded after each restart, besides the new ones.
const SAMPLED_BLOBS: usize = 24;
const SESSION_REPO: &str = "crash/sessions";
/// `storage.part_size` on S3: the smallest S3 allows.
const S3_PART_SIZE: u64 = 5 << 20;

// ------------------------------------------------------------------ the server process

/// `portcullis <args>` with a clean `PORTCULLIS_*` environment plus `env`.
fn portcullis_command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    for (key, _) in std::env::vars() {
        if key.starts_with("PORTCULLIS_") {
            command.env_remove(key);
        }
    }
    // Some machines point the AWS SDK at a CA bundle of their own; the S3
    // client talks plain HTTP to the Garage on loopback and needs none.
    command.env_remove("AWS_CA_BUNDLE");
    command.args(args).envs(env.iter().copied());
    command
}

fn run_portcullis(args: &[&str], env: &[(&str, &str)]) -> Output {
    portcullis_command(args, env)
        .stdin(Stdio::null())
        .output()
        .expect("run the portcullis binary")
}

/// The scratch directory: a config (the bundled example's, with its policy
/// chain, pointed at a temporary storage root, or with `PCTEST_BACKEND=s3` at
/// the suite's Garage under a new prefix) and the servers' logs.
struct Harness {
    dir: TempDir,
    config: PathBuf,
    store: Store,
    starts: usize,
}

impl Harness {
    async fn new() -> Self {
        let dir = tempfile::tempdir().expect("create a scratch directory");
        let root = dir.path().join("data");
        let policies = dir.path().join("policies");
        std::fs::create_dir_all(&policies).expect("create the policies directory");
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/portcullis.toml");
        let mut config: toml::Table = std::fs::read_to_string(&example)
            .expect("read examples/portcullis.toml")
            .parse()
            .expect("examples/portcullis.toml is TOML");
        config.insert("listen".into(), "127.0.0.1:0".into());
        let path = |p: &Path| toml::Value::from(p.to_str().expect("UTF-8 temp path"));
        let section = |config: &toml::Table, name: &str| -> toml::Table {
            config
                .get(name)
                .and_then(|v| v.as_table())
                .cloned()
                .unwrap_or_default()
        };
        let mut storage = section(&config, "storage");
        // With S3 the root holds only the compiled-policy cache.
        storage.insert("root".into(), path(&root));
        let store = if common::s3_backend() {
            let garage = Garage::shared().await;
            let prefix = common::unique_prefix();
            for (key, value) in [
                ("backend", "s3"),
                ("endpoint", garage.endpoint.as_str()),
                ("bucket", garage.bucket.as_str()),
                ("region", garage.region.as_str()),
                ("prefix", prefix.as_str()),
                ("access_key_id", garage.access_key.as_str()),
                ("secret_access_key", garage.secret_key.as_str()),
                // S3's smallest (S3_PART_SIZE): the multipart path at the least data.
                ("part_size", "5MiB"),
            ] {
                storage.insert(key.into(), value.into());
            }
            Store::s3(&garage, &prefix)
        } else {
            Store::Fs {
                layout: root.join("docker/registry/v2"),
            }
        };
        config.insert("storage".into(), storage.into());
        let mut policy = section(&config, "policy");
        policy.insert("dir".into(), path(&policies));
        config.insert("policy".into(), policy.into());
        let config_path = dir.path().join("portcullis.toml");
        std::fs::write(
            &config_path,
            toml::to_string(&config).expect("config serialises"),
        )
        .expect("write the config");
        Self {
            dir,
            config: config_path,
            store,
            starts: 0,
        }
    }

    fn config(&self) -> &str {
        self.config.to_str().expect("UTF-8 temp path")
    }

    /// Spawns `portcullis serve` and waits until it answers `GET /v2/`.
    async fn start(&mut self) -> Server {
        self.starts += 1;
        let log = self.dir.path().join(format!("server-{}.log", self.starts));
        let out = File::create(&log).expect("create the server log");
        let err = out.try_clone().expect("clone the log handle");
        let mut child = portcullis_command(
            &["--log-format", "json", "serve", "--config", self.config()],
            &[],
        )
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn portcullis serve");
        let deadline = Instant::now() + Duration::from_secs(120);
        let addr = loop {
            if let Some(status) = child.try_wait().expect("poll the server") {
                panic!(
                    "portcullis serve exited ({status}) before listening:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let listening = text
                .lines()
                .filter(|l| l.contains("portcullis listening"))
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find_map(|v| v["fields"]["addr"].as_str().map(str::to_owned));
            if let Some(addr) = listening {
                break addr;
            }
            assert!(
                Instant::now() < deadline,
                "portcullis serve did not listen within 120s:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let server = Server {
            child,
            base: format!("http://{addr}"),
            log,
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http.get(format!("{}/v2/", server.base)).send().await {
                if r.status() == StatusCode::OK {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "GET /v2/ did not answer 200 within 30s; log {}",
                server.log.display()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        server
    }
}

struct Server {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Server {
    /// SIGKILL, and reap the process.
    fn kill(mut self) {
        self.child.kill().expect("SIGKILL the server");
        self.child.wait().expect("reap the server");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A failed assertion must not leave a registry running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------ the storage, looked at directly

/// Where the server keeps its content, as the checks look at it: directly,
/// not through the server (which is dead whenever they run).
enum Store {
    /// `<root>/docker/registry/v2`.
    Fs { layout: PathBuf },
    /// The bucket, and the layout's root key in it (`<prefix>/docker/registry/v2`).
    S3 {
        s3: AmazonS3,
        prefix: String,
        root: String,
        description: String,
    },
}

/// What is under `blobs/`.
#[derive(Default)]
struct BlobCheck {
    /// The digests stored.
    stored: HashSet<String>,
    /// Their bytes.
    bytes: u64,
    problems: Vec<String>,
}

/// The upload sessions and staging the storage holds, for `gc`.
struct Leftovers {
    /// The upload directories' ids (`_uploads/<id>`): `gc` removes each as an upload.
    uploads: Vec<String>,
    /// Those holding a session (filesystem: all; S3: those with a `session` object).
    sessions: Vec<String>,
    /// Filesystem: `_tmp`'s files. S3: the objects of upload directories
    /// without a session, a monolithic push's or a commit's staging object
    /// (or what is left of a session being removed) that a kill left behind.
    staging: Vec<String>,
}

impl Store {
    fn is_s3(&self) -> bool {
        matches!(self, Store::S3 { .. })
    }

    fn s3(garage: &GarageFacts, prefix: &str) -> Self {
        let s3 = AmazonS3Builder::new()
            .with_endpoint(&garage.endpoint)
            .with_bucket_name(&garage.bucket)
            .with_region(&garage.region)
            .with_access_key_id(&garage.access_key)
            .with_secret_access_key(&garage.secret_key)
            .with_allow_http(true)
            .build()
            .expect("an S3 client for the Garage");
        Store::S3 {
            s3,
            prefix: prefix.to_owned(),
            root: format!("{prefix}/docker/registry/v2"),
            description: format!(
                "S3 bucket {} at {}, prefix {prefix}",
                garage.bucket, garage.endpoint
            ),
        }
    }

    fn describe(&self) -> String {
        match self {
            Store::Fs { layout } => format!(
                "{}, {} MB free in {}",
                layout.display(),
                free_space() / 1_000_000,
                std::env::temp_dir().display()
            ),
            Store::S3 { description, .. } => description.clone(),
        }
    }

    /// Only `<alg>/<xx>/<hex>/data` under `blobs/`, each hashing to its name
    /// (re-hashed only when new or changed since `hashed` saw it).
    async fn check_blobs(&self, hashed: &mut HashMap<String, String>) -> BlobCheck {
        match self {
            Store::Fs { layout } => check_blob_files(layout, hashed),
            Store::S3 { s3, root, .. } => check_blob_objects(s3, root, hashed).await,
        }
    }

    async fn leftovers(&self) -> Leftovers {
        match self {
            Store::Fs { layout } => {
                let (uploads, staging) = leftover_uploads(layout);
                Leftovers {
                    sessions: uploads.clone(),
                    uploads,
                    staging,
                }
            }
            Store::S3 { s3, root, .. } => {
                // `<repository>/_uploads/<id>` -> the names of its objects.
                let mut dirs: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for meta in list_objects(s3, &format!("{root}/repositories")).await {
                    let key = meta.location.to_string();
                    let Some((repository, rest)) = key.split_once("/_uploads/") else {
                        continue;
                    };
                    let (id, name) = rest.split_once('/').unwrap_or((rest, ""));
                    dirs.entry(format!("{repository}/_uploads/{id}"))
                        .or_default()
                        .push(name.to_owned());
                }
                let mut leftovers = Leftovers {
                    uploads: Vec::new(),
                    sessions: Vec::new(),
                    staging: Vec::new(),
                };
                for (dir, names) in dirs {
                    let id = dir.rsplit('/').next().unwrap_or_default().to_owned();
                    if names.iter().any(|n| n == "session") {
                        leftovers.sessions.push(id.clone());
                    } else {
                        leftovers
                            .staging
                            .extend(names.iter().map(|n| format!("{id}/{n}")));
                    }
                    leftovers.uploads.push(id);
                }
                leftovers
            }
        }
    }

    /// What the storage holds where fsck reports a bad link.
    async fn explain_findings(&self, lines: &[&str]) -> String {
        let mut notes = String::new();
        for line in lines {
            let Some(path) = line
                .strip_prefix("link ")
                .and_then(|l| l.strip_suffix(": unreadable or wrong"))
            else {
                continue;
            };
            let note = match self {
                Store::Fs { layout } => explain_link_file(layout, path),
                Store::S3 { s3, root, .. } => {
                    match s3.get(&ObjectPath::from(format!("{root}/{path}"))).await {
                        Ok(got) => match got.bytes().await {
                            Ok(bytes) => format!("holds {:?}", String::from_utf8_lossy(&bytes)),
                            Err(e) => format!("cannot be read: {e}"),
                        },
                        Err(object_store::Error::NotFound { .. }) => {
                            "does not exist (no such object)".to_owned()
                        }
                        Err(e) => format!("cannot be read: {e}"),
                    }
                }
            };
            notes.push_str(&format!("\nnote: {path} {note}"));
        }
        notes
    }

    /// Removes what the run stored (S3: every key under the prefix; the
    /// filesystem's goes with the scratch directory).
    async fn remove(&self) {
        if let Store::S3 { s3, prefix, .. } = self {
            let keys: Vec<object_store::Result<ObjectPath>> = list_objects(s3, prefix)
                .await
                .into_iter()
                .map(|meta| Ok(meta.location))
                .collect();
            let failed = s3
                .delete_stream(futures_util::stream::iter(keys).boxed())
                .filter(|r| std::future::ready(r.is_err()))
                .count()
                .await;
            if failed > 0 {
                println!("crash: {failed} objects under {prefix} could not be removed");
            }
        }
    }
}

/// Every object below `prefix` (a key prefix, matched by whole segments).
async fn list_objects(s3: &AmazonS3, prefix: &str) -> Vec<object_store::ObjectMeta> {
    s3.list(Some(&ObjectPath::from(prefix)))
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("list {prefix} in the bucket: {e}"))
}

// ------------------------------------------------------------------ what clients learned

#[derive(Clone, Debug)]
struct BlobRef {
    digest: String,
    size: u64,
}

/// A manifest the server acknowledged with 201.
#[derive(Clone, Debug)]
struct Acked {
    repo: String,
    tag: String,
    digest: String,
    manifest: Bytes,
    blobs: Vec<BlobRef>,
}

/// An upload session a client holds: what it has sent and what was acknowledged.
#[derive(Clone, Debug)]
struct Session {
    /// The session's server-relative path.
    location: String,
    data: Bytes,
    /// Bytes the server acknowledged with 202.
    acked: u64,
    /// Bytes of a chunk sent after those, not (yet) acknowledged.
    in_flight: u64,
    /// Of those, how many the client had handed to its connection.
    streamed: Arc<AtomicU64>,
}

/// A session left for `gc`: only its id and exact size are kept.
#[derive(Clone, Debug)]
struct Abandoned {
    location: String,
    size: u64,
}

#[derive(Default)]
struct Shared {
    killed: AtomicBool,
    acked: Mutex<Vec<Acked>>,
    sessions: Mutex<Vec<Session>>,
    problems: Mutex<Vec<String>>,
}

impl Shared {
    fn problem(&self, message: String) {
        self.problems.lock().unwrap().push(message);
    }
}

/// One iteration's view of the server, shared by its client tasks.
struct Ctx {
    base: String,
    http: reqwest::Client,
    shared: Arc<Shared>,
}

impl Ctx {
    fn new(base: &str, shared: Arc<Shared>) -> Arc<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("build the HTTP client");
        Arc::new(Self {
            base: base.to_owned(),
            http,
            shared,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a request. A transport error is what a killed server looks like:
    /// fine once the kill was issued, a problem before it. Any HTTP response
    /// is returned for the caller to check (a dead server sends none).
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> Option<reqwest::Response> {
        match request.send().await {
            Ok(response) => Some(response),
            Err(e) => {
                if !self.shared.killed.load(Ordering::SeqCst) {
                    self.shared.problem(format!(
                        "{what}: transport error while the server was up: {e:?}"
                    ));
                }
                None
            }
        }
    }

    /// `send`, then the status must be `expected`; anything else is a problem.
    async fn expect(
        &self,
        request: reqwest::RequestBuilder,
        expected: StatusCode,
        what: &str,
    ) -> Option<reqwest::Response> {
        let response = self.send(request, what).await?;
        if response.status() == expected {
            return Some(response);
        }
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        self.shared
            .problem(format!("{what}: expected {expected}, got {status}: {body}"));
        None
    }

    /// A `Location` header resolved against the server.
    fn location(&self, response: &reqwest::Response, what: &str) -> Option<String> {
        match header(response, "location") {
            Some(l) if l.starts_with("http") => Some(l),
            Some(l) => Some(self.url(&l)),
            None => {
                self.shared.problem(format!("{what}: no Location header"));
                None
            }
        }
    }

    /// A session URL as a server-relative path, valid across restarts.
    fn path_of(&self, url: &str) -> String {
        url.strip_prefix(&self.base).unwrap_or(url).to_owned()
    }

    fn check_header(&self, response: &reqwest::Response, name: &str, expected: &str, what: &str) {
        let actual = header(response, name);
        if actual.as_deref() != Some(expected) {
            self.shared.problem(format!(
                "{what}: {name} is {actual:?}, expected {expected:?}"
            ));
        }
    }
}

fn with_digest(location: &str, digest: &str) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}digest={digest}")
}

/// The size an upload `Range: 0-<last>` header reports (never 0 here: every
/// tracked session has at least one acknowledged byte).
fn range_size(response: &reqwest::Response) -> Option<u64> {
    let range = header(response, "range")?;
    let last = range.strip_prefix("0-")?.parse::<u64>().ok()?;
    Some(last + 1)
}

// ------------------------------------------------------------------ pushing

#[derive(Clone, Copy, Debug)]
enum Mode {
    Monolithic,
    Streamed,
    Chunked,
}

fn random_data(rng: &mut StdRng, len: usize) -> Bytes {
    let mut data = vec![0u8; len];
    rng.fill_bytes(&mut data);
    Bytes::from(data)
}

/// Mostly small layers, a few up to a few MiB (the disk this runs on may be
/// small: a default run stores about 100 MB). On S3 the few go up to 7 MiB,
/// past the 5 MiB part size the harness sets, so some pushes are multipart
/// uploads (parts, then completion, copy to the content address, staging
/// object deleted) that a kill can land in.
fn layer_size(rng: &mut StdRng) -> usize {
    let largest = if common::s3_backend() { 7 } else { 3 } << 20;
    match rng.gen_range(0..50) {
        0..=19 => rng.gen_range(1..=1024),
        20..=48 => rng.gen_range(1024..=32 * 1024),
        _ => rng.gen_range(64 * 1024..=largest),
    }
}

/// A body sent with chunked transfer encoding, in pieces of `piece` bytes:
/// the first `fast` bytes at once, the rest `pause` apart. `streamed` counts
/// the bytes handed over.
fn streamed_body(
    data: Bytes,
    piece: usize,
    (fast, pause): (usize, Duration),
    streamed: Arc<AtomicU64>,
) -> reqwest::Body {
    let stream = futures_util::stream::unfold((data, 0usize), move |(data, at)| {
        let streamed = Arc::clone(&streamed);
        async move {
            if at >= data.len() {
                return None;
            }
            if at >= fast && !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            let end = (at + piece).min(data.len());
            streamed.fetch_add((end - at) as u64, Ordering::SeqCst);
            Some((Ok::<_, std::io::Error>(data.slice(at..end)), (data, end)))
        }
    });
    reqwest::Body::wrap_stream(stream)
}

/// Starts an upload session and returns its URL.
async fn start_session(ctx: &Ctx, repo: &str, what: &str) -> Option<String> {
    let response = ctx
        .expect(
            ctx.http
                .post(ctx.url(&format!("/v2/{repo}/blobs/uploads/"))),
            StatusCode::ACCEPTED,
            what,
        )
        .await?;
    ctx.location(&response, what)
}

/// Sends one chunk with `Content-Range`; returns the session's next URL.
async fn patch_chunk(
    ctx: &Ctx,
    location: &str,
    data: &Bytes,
    start: usize,
    end: usize,
    what: &str,
) -> Option<String> {
    let response = ctx
        .expect(
            ctx.http
                .patch(location)
                .header("content-type", "application/octet-stream")
                .header("content-range", format!("{start}-{}", end - 1))
                .body(data.slice(start..end)),
            StatusCode::ACCEPTED,
            what,
        )
        .await?;
    ctx.check_header(&response, "range", &format!("0-{}", end - 1), what);
    ctx.location(&response, what)
}

/// Pushes one blob in the given way. `None`: the server died (or a problem
/// was recorded).
async fn push_blob(
    ctx: &Ctx,
    repo: &str,
    data: &Bytes,
    mode: Mode,
    rng: &mut StdRng,
) -> Option<()> {
    let digest = sha256(data);
    let what = format!("{mode:?} push of {digest} ({} bytes) to {repo}", data.len());
    let done = match mode {
        Mode::Monolithic => {
            ctx.expect(
                ctx.http
                    .post(ctx.url(&format!("/v2/{repo}/blobs/uploads/?digest={digest}")))
                    .header("content-type", "application/octet-stream")
                    .body(data.clone()),
                StatusCode::CREATED,
                &what,
            )
            .await?
        }
        Mode::Streamed => {
            let location = start_session(ctx, repo, &what).await?;
            let piece = rng.gen_range(1..=256 * 1024);
            let response = ctx
                .expect(
                    ctx.http
                        .patch(&location)
                        .header("content-type", "application/octet-stream")
                        .body(streamed_body(
                            data.clone(),
                            piece,
                            (0, Duration::ZERO),
                            Arc::default(),
                        )),
                    StatusCode::ACCEPTED,
                    &what,
                )
                .await?;
            ctx.check_header(&response, "range", &format!("0-{}", data.len() - 1), &what);
            let location = ctx.location(&response, &what)?;
            ctx.expect(
                ctx.http.put(with_digest(&location, &digest)),
                StatusCode::CREATED,
                &what,
            )
            .await?
        }
        Mode::Chunked => {
            let mut location = start_session(ctx, repo, &what).await?;
            let chunks = rng.gen_range(1..=4).min(data.len());
            let mut cuts: Vec<usize> = (0..chunks - 1)
                .map(|_| rng.gen_range(1..data.len()))
                .collect();
            cuts.push(0);
            cuts.push(data.len());
            cuts.sort_unstable();
            cuts.dedup();
            // The last chunk goes with the PUT half of the time.
            let last_in_put = rng.gen_bool(0.5);
            let patched = if last_in_put {
                cuts.len() - 2
            } else {
                cuts.len() - 1
            };
            for pair in cuts[..=patched].windows(2) {
                location = patch_chunk(ctx, &location, data, pair[0], pair[1], &what).await?;
            }
            let mut put = ctx.http.put(with_digest(&location, &digest));
            if last_in_put {
                let (start, end) = (cuts[cuts.len() - 2], data.len());
                put = put
                    .header("content-type", "application/octet-stream")
                    .header("content-range", format!("{start}-{}", end - 1))
                    .body(data.slice(start..end));
            }
            ctx.expect(put, StatusCode::CREATED, &what).await?
        }
    };
    ctx.check_header(&done, "docker-content-digest", &digest, &what);
    Some(())
}

/// Pushes `blobs` (config first) and a manifest naming them under `tag`, and
/// records it if the server acknowledged it with 201.
async fn push_image(
    ctx: &Ctx,
    repo: &str,
    tag: &str,
    config: Bytes,
    layers: Vec<Bytes>,
    rng: &mut StdRng,
) -> Option<()> {
    for blob in std::iter::once(&config).chain(&layers) {
        let mode = match rng.gen_range(0..3) {
            0 => Mode::Monolithic,
            1 => Mode::Streamed,
            _ => Mode::Chunked,
        };
        push_blob(ctx, repo, blob, mode, rng).await?;
    }
    let descriptor = |media_type: &str, data: &Bytes| json!({ "mediaType": media_type, "digest": sha256(data), "size": data.len() });
    let manifest = Bytes::from(
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, &config),
            "layers": layers.iter().map(|l| descriptor(OCI_LAYER, l)).collect::<Vec<_>>(),
        }))
        .expect("manifest serialises"),
    );
    let digest = sha256(&manifest);
    let what = format!("manifest PUT {repo}:{tag}");
    let response = ctx
        .expect(
            ctx.http
                .put(ctx.url(&format!("/v2/{repo}/manifests/{tag}")))
                .header("content-type", OCI_MANIFEST)
                .body(manifest.clone()),
            StatusCode::CREATED,
            &what,
        )
        .await?;
    ctx.check_header(&response, "docker-content-digest", &digest, &what);
    let blobs = std::iter::once(&config)
        .chain(&layers)
        .map(|b| BlobRef {
            digest: sha256(b),
            size: b.len() as u64,
        })
        .collect();
    ctx.shared.acked.lock().unwrap().push(Acked {
        repo: repo.to_owned(),
        tag: tag.to_owned(),
        digest,
        manifest,
        blobs,
    });
    Some(())
}

fn config_blob(rng: &mut StdRng, label: &str) -> Bytes {
    Bytes::from(
        serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": { "type": "layers", "diff_ids": [] },
            "label": label,
            "nonce": hex::encode(random_data(rng, 8)),
        }))
        .expect("config serialises"),
    )
}

/// One pushing client: images until the server dies under it.
async fn push_client(
    ctx: Arc<Ctx>,
    iteration: usize,
    client: usize,
    mut rng: StdRng,
    base_layers: Arc<Vec<Bytes>>,
) {
    let repo = format!("crash/client{client}");
    for n in 0.. {
        if ctx.shared.killed.load(Ordering::SeqCst) {
            return;
        }
        let tag = format!("i{iteration}-c{client}-n{n}");
        let config = config_blob(&mut rng, &tag);
        let mut layers = Vec::new();
        if rng.gen_bool(0.3) {
            // A base layer other clients push too, concurrently, to other repositories.
            layers.push(base_layers[rng.gen_range(0..base_layers.len())].clone());
        }
        for _ in 0..rng.gen_range(1..=4) {
            let size = layer_size(&mut rng);
            layers.push(random_data(&mut rng, size));
        }
        if push_image(&ctx, &repo, &tag, config, layers, &mut rng)
            .await
            .is_none()
        {
            return;
        }
    }
}

/// Opens two sessions and leaves them: one idle after its first chunk was
/// acknowledged, one in the middle of a slowly streamed second chunk. That
/// chunk is longer than the server's 1 MiB write buffer, so a kill finds
/// none, some or all of it on disk. On S3 the chunk goes 64 KiB past the
/// session's first part (5 MiB) at once, then 0.4 to 2.4 MiB more slowly:
/// a kill lands before any of it went to the store, after a whole part of it
/// was sent to the multipart upload (the chunk must still count as not
/// received), or after the session object was saved.
async fn session_client(ctx: Arc<Ctx>, mut rng: StdRng) {
    let s3 = common::s3_backend();
    for slow_second_chunk in [false, true] {
        let what = format!("session in {SESSION_REPO} (slow second chunk: {slow_second_chunk})");
        let first = rng.gen_range(1..=64 * 1024);
        let to_part = S3_PART_SIZE as usize - first;
        let (size, fast) = match (slow_second_chunk, s3) {
            (false, _) => (first + rng.gen_range(0..=256 * 1024), 0),
            (true, false) => (first + rng.gen_range(1100 * 1024..=2048 * 1024), 0),
            (true, true) => (
                first + to_part + rng.gen_range(512 * 1024..=2560 * 1024),
                to_part + 64 * 1024,
            ),
        };
        let data = random_data(&mut rng, size);
        let Some(location) = start_session(&ctx, SESSION_REPO, &what).await else {
            return;
        };
        let Some(location) = patch_chunk(&ctx, &location, &data, 0, first, &what).await else {
            return;
        };
        let second = if slow_second_chunk { size - first } else { 0 };
        let streamed = Arc::new(AtomicU64::new(0));
        let index = {
            let mut sessions = ctx.shared.sessions.lock().unwrap();
            sessions.push(Session {
                location: ctx.path_of(&location),
                data: data.clone(),
                acked: first as u64,
                in_flight: second as u64,
                streamed: Arc::clone(&streamed),
            });
            sessions.len() - 1
        };
        if second > 0 {
            // About 6 MB/s, so the kill often lands mid-chunk.
            let body = streamed_body(
                data.slice(first..first + second),
                32 * 1024,
                (fast, Duration::from_millis(5)),
                streamed,
            );
            let Some(response) = ctx
                .expect(
                    ctx.http
                        .patch(&location)
                        .header("content-type", "application/octet-stream")
                        .body(body),
                    StatusCode::ACCEPTED,
                    &what,
                )
                .await
            else {
                return;
            };
            let total = (first + second) as u64;
            ctx.check_header(&response, "range", &format!("0-{}", total - 1), &what);
            let mut sessions = ctx.shared.sessions.lock().unwrap();
            sessions[index].acked = total;
            sessions[index].in_flight = 0;
            if let Some(next) = ctx.location(&response, &what) {
                sessions[index].location = ctx.path_of(&next);
            }
        }
    }
}

// ------------------------------------------------------------------ checking

fn fail_on(problems: Vec<String>, when: &str, seed: u64) {
    if problems.is_empty() {
        return;
    }
    let shown: Vec<&String> = problems.iter().take(30).collect();
    // 507 is the filesystem's full disk; a full store behind S3 answers otherwise.
    let hint = if !common::s3_backend() && problems.iter().any(|p| p.contains("507")) {
        format!(
            "\n(507: the disk under {} is full, {} MB free: the environment, not the crash safety, failed here)",
            std::env::temp_dir().display(),
            free_space() / 1_000_000
        )
    } else {
        String::new()
    };
    panic!(
        "{when}: {} problem(s) (seed {seed}):\n  {}{hint}",
        problems.len(),
        shown
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}

/// Bytes free on the temporary directory's filesystem.
fn free_space() -> u64 {
    rustix::fs::statvfs(std::env::temp_dir())
        .map(|s| s.f_bavail * s.f_frsize)
        .unwrap_or(0)
}

/// Checks every acknowledged manifest by digest and by tag, and its blobs:
/// downloaded and re-hashed if `download` says so, else `HEAD` (size and digest).
async fn verify_acked(
    ctx: &Ctx,
    acked: &[Acked],
    download: &dyn Fn(&str, &str) -> bool,
) -> (usize, usize, Vec<String>) {
    let problems = Mutex::new(Vec::new());
    let problem = |m: String| problems.lock().unwrap().push(m);
    let mut blobs: BTreeMap<(String, String), u64> = BTreeMap::new();
    for image in acked {
        for blob in &image.blobs {
            blobs.insert((image.repo.clone(), blob.digest.clone()), blob.size);
        }
    }
    let manifest_checks = futures_util::stream::iter(acked.iter().flat_map(|image| {
        [image.digest.as_str(), image.tag.as_str()]
            .into_iter()
            .map(move |reference| (image, reference))
    }))
    .map(|(image, reference)| {
        let problem = &problem;
        async move {
            let what = format!("GET {}:{reference}", image.repo);
            let response = ctx
                .http
                .get(ctx.url(&format!("/v2/{}/manifests/{reference}", image.repo)))
                .header("accept", OCI_MANIFEST)
                .send()
                .await;
            let response = match response {
                Ok(r) if r.status() == StatusCode::OK => r,
                Ok(r) => {
                    let status = r.status();
                    let body = r.text().await.unwrap_or_default();
                    return problem(format!("{what}: {status}: {body}"));
                }
                Err(e) => return problem(format!("{what}: {e:?}")),
            };
            let digest = header(&response, "docker-content-digest");
            if digest.as_deref() != Some(image.digest.as_str()) {
                problem(format!(
                    "{what}: digest {digest:?}, acknowledged {}",
                    image.digest
                ));
            }
            match response.bytes().await {
                Ok(body) if body == image.manifest => {}
                Ok(body) => problem(format!(
                    "{what}: {} bytes hashing to {}, not the acknowledged manifest",
                    body.len(),
                    sha256(&body)
                )),
                Err(e) => problem(format!("{what}: reading the body: {e:?}")),
            }
        }
    })
    .buffer_unordered(16)
    .collect::<Vec<()>>();
    manifest_checks.await;

    // Tag listings: every acknowledged tag, and nothing that does not resolve
    // (a listed tag nobody saw acknowledged is a PUT the kill cut off after
    // it completed: it must pull back too).
    let mut tags: BTreeMap<&str, HashSet<&str>> = BTreeMap::new();
    for image in acked {
        tags.entry(&image.repo).or_default().insert(&image.tag);
    }
    for (repo, acked_tags) in &tags {
        let what = format!("GET {repo} tags/list");
        let url = ctx.url(&format!("/v2/{repo}/tags/list?n=10000"));
        let listed: Vec<String> = match ctx.http.get(url).send().await {
            Ok(r) if r.status() == StatusCode::OK => match r.json::<serde_json::Value>().await {
                Ok(body) => body["tags"]
                    .as_array()
                    .map(|t| {
                        t.iter()
                            .filter_map(|t| t.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default(),
                Err(e) => {
                    problem(format!("{what}: {e:?}"));
                    continue;
                }
            },
            Ok(r) => {
                problem(format!("{what}: {}", r.status()));
                continue;
            }
            Err(e) => {
                problem(format!("{what}: {e:?}"));
                continue;
            }
        };
        let listed_set: HashSet<&str> = listed.iter().map(String::as_str).collect();
        for tag in acked_tags.difference(&listed_set) {
            problem(format!("{what}: acknowledged tag {tag} is not listed"));
        }
        for tag in listed_set.difference(acked_tags) {
            let url = ctx.url(&format!("/v2/{repo}/manifests/{tag}"));
            match ctx
                .http
                .head(url)
                .header("accept", OCI_MANIFEST)
                .send()
                .await
            {
                Ok(r) if r.status() == StatusCode::OK => {}
                Ok(r) => problem(format!("{what}: listed tag {tag} answers {}", r.status())),
                Err(e) => problem(format!("{what}: listed tag {tag}: {e:?}")),
            }
        }
    }

    let mut downloaded = 0;
    let checks: Vec<_> = blobs
        .iter()
        .map(|((repo, digest), size)| {
            let get = download(repo, digest);
            downloaded += usize::from(get);
            (repo, digest, *size, get)
        })
        .collect();
    futures_util::stream::iter(checks)
        .map(|(repo, digest, size, get)| {
            let problem = &problem;
            async move {
                let method = if get { Method::GET } else { Method::HEAD };
                let what = format!("{method} {repo} blob {digest}");
                let response = ctx
                    .http
                    .request(method, ctx.url(&format!("/v2/{repo}/blobs/{digest}")))
                    .send()
                    .await;
                let response = match response {
                    Ok(r) if r.status() == StatusCode::OK => r,
                    Ok(r) => return problem(format!("{what}: {}", r.status())),
                    Err(e) => return problem(format!("{what}: {e:?}")),
                };
                let length = header(&response, "content-length");
                if length != Some(size.to_string()) {
                    problem(format!(
                        "{what}: Content-Length {length:?}, pushed {size} bytes"
                    ));
                }
                let served = header(&response, "docker-content-digest");
                if served.as_deref() != Some(digest.as_str()) {
                    problem(format!("{what}: Docker-Content-Digest {served:?}"));
                }
                if get {
                    match response.bytes().await {
                        Ok(body) if body.len() as u64 == size && &sha256(&body) == digest => {}
                        Ok(body) => problem(format!(
                            "{what}: {} bytes hashing to {}",
                            body.len(),
                            sha256(&body)
                        )),
                        Err(e) => problem(format!("{what}: reading the body: {e:?}")),
                    }
                }
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    (blobs.len(), downloaded, problems.into_inner().unwrap())
}

/// What a blob was when it was last hashed: re-hashed only if replaced or
/// changed (a file's inode, size and mtime; an object's size, etag and time).
fn file_stamp(meta: &std::fs::Metadata) -> String {
    format!(
        "{}:{}:{}.{}",
        meta.ino(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec()
    )
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The hex digest of `bytes` with `algorithm` (`sha256` or `sha512`).
fn hash_hex(algorithm: &str, bytes: &[u8]) -> String {
    match algorithm {
        "sha256" => hex::encode(sha2::Sha256::digest(bytes)),
        _ => hex::encode(sha2::Sha512::digest(bytes)),
    }
}

fn hex_len(algorithm: &str) -> Option<usize> {
    match algorithm {
        "sha256" => Some(64),
        "sha512" => Some(128),
        _ => None,
    }
}

fn names(dir: &Path) -> Vec<(String, std::fs::Metadata)> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| {
                let e = e.expect("read a storage directory entry");
                let meta = std::fs::symlink_metadata(e.path()).expect("stat a storage entry");
                (e.file_name().to_string_lossy().into_owned(), meta)
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("read {}: {e}", dir.display()),
    }
}

/// Walks `blobs/`: only `<alg>/<xx>/<hex>/data` files, each hashing to its name.
fn check_blob_files(layout: &Path, hashed: &mut HashMap<String, String>) -> BlobCheck {
    let mut check = BlobCheck::default();
    let problems = &mut check.problems;
    let blobs = layout.join("blobs");
    for (algorithm, meta) in names(&blobs) {
        let Some(hex_len) = hex_len(&algorithm) else {
            problems.push(format!("blobs/{algorithm}: not an algorithm directory"));
            continue;
        };
        assert!(meta.is_dir(), "blobs/{algorithm} is a directory");
        for (prefix, meta) in names(&blobs.join(&algorithm)) {
            if !meta.is_dir() || !is_hex(&prefix, 2) {
                problems.push(format!(
                    "blobs/{algorithm}/{prefix}: not a prefix directory"
                ));
                continue;
            }
            for (hex, meta) in names(&blobs.join(&algorithm).join(&prefix)) {
                let at = format!("blobs/{algorithm}/{prefix}/{hex}");
                if !meta.is_dir() || !is_hex(&hex, hex_len) || !hex.starts_with(&prefix) {
                    problems.push(format!("{at}: not a blob directory"));
                    continue;
                }
                for (name, meta) in names(&blobs.join(&algorithm).join(&prefix).join(&hex)) {
                    if name != "data" || !meta.is_file() {
                        problems.push(format!("{at}/{name}: only a data file belongs here"));
                        continue;
                    }
                    let path = blobs.join(&algorithm).join(&prefix).join(&hex).join("data");
                    check.stored.insert(format!("{algorithm}:{hex}"));
                    check.bytes += meta.len();
                    let key = path.display().to_string();
                    let now = file_stamp(&meta);
                    if hashed.get(&key) == Some(&now) {
                        continue;
                    }
                    let bytes = std::fs::read(&path).expect("read a blob file");
                    let actual = hash_hex(&algorithm, &bytes);
                    if actual == hex {
                        hashed.insert(key, now);
                    } else {
                        problems.push(format!(
                            "{at}/data: {} bytes hashing to {algorithm}:{actual}",
                            bytes.len()
                        ));
                    }
                }
            }
        }
    }
    check
}

/// Lists `<root>/blobs/` in the bucket: only `<alg>/<xx>/<hex>/data`
/// objects, each hashing to its name (downloaded 16 at a time).
async fn check_blob_objects(
    s3: &AmazonS3,
    root: &str,
    hashed: &mut HashMap<String, String>,
) -> BlobCheck {
    let mut check = BlobCheck::default();
    let mut unhashed = Vec::new();
    for meta in list_objects(s3, &format!("{root}/blobs")).await {
        let key = meta.location.to_string();
        let at = key
            .strip_prefix(root)
            .and_then(|k| k.strip_prefix('/'))
            .unwrap_or(&key)
            .to_owned();
        let parts: Vec<&str> = at.split('/').collect();
        let address = match parts.as_slice() {
            ["blobs", algorithm, prefix, hex, "data"] => hex_len(algorithm)
                .filter(|&n| is_hex(prefix, 2) && is_hex(hex, n) && hex.starts_with(prefix))
                .map(|_| (algorithm.to_string(), hex.to_string())),
            _ => None,
        };
        let Some((algorithm, hex)) = address else {
            check.problems.push(format!(
                "{at} ({} bytes): only data objects at their content address belong under blobs/",
                meta.size
            ));
            continue;
        };
        check.stored.insert(format!("{algorithm}:{hex}"));
        check.bytes += meta.size;
        let now = format!("{}:{:?}:{}", meta.size, meta.e_tag, meta.last_modified);
        if hashed.get(&key) != Some(&now) {
            unhashed.push((meta.location, key, at, algorithm, hex, now));
        }
    }
    let results: Vec<_> = futures_util::stream::iter(unhashed)
        .map(|(location, key, at, algorithm, hex, now)| async move {
            let bytes = match s3.get(&location).await {
                Ok(got) => got.bytes().await,
                Err(e) => Err(e),
            };
            let outcome = bytes.map(|b| (b.len(), hash_hex(&algorithm, &b)));
            (key, at, algorithm, hex, now, outcome)
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for (key, at, algorithm, hex, now, outcome) in results {
        match outcome {
            Ok((_, actual)) if actual == hex => {
                hashed.insert(key, now);
            }
            Ok((len, actual)) => check
                .problems
                .push(format!("{at}: {len} bytes hashing to {algorithm}:{actual}")),
            Err(e) => check
                .problems
                .push(format!("{at}: listed, but cannot be read: {e}")),
        }
    }
    check
}

/// Every blob of every acknowledged manifest, and the manifest itself, must be stored.
fn check_acked_stored(acked: &[Acked], stored: &HashSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    for image in acked {
        for digest in std::iter::once(&image.digest).chain(image.blobs.iter().map(|b| &b.digest)) {
            if !stored.contains(digest) {
                problems.push(format!(
                    "{}:{} ({}) needs {digest}, which is not stored under blobs/",
                    image.repo, image.tag, image.digest
                ));
            }
        }
    }
    problems
}

/// Checks the sessions clients hold after a restart: each answers 204 with the
/// acknowledged size (or, with a chunk in flight at the crash, a size between
/// the acknowledged bytes and the end of that chunk; on S3, where a chunk is
/// all-or-nothing, one of the two ends). Half are then resumed to completion
/// and pushed as an image; the rest are abandoned for `gc`.
async fn check_sessions(
    ctx: &Ctx,
    sessions: Vec<Session>,
    abandoned: &mut Vec<Abandoned>,
    iteration: usize,
    rng: &mut StdRng,
    stats: &mut Stats,
) -> Vec<String> {
    let mut problems = Vec::new();
    for old in abandoned.iter() {
        let what = format!("GET abandoned session {}", old.location);
        match ctx.http.get(ctx.url(&old.location)).send().await {
            Ok(r) if r.status() == StatusCode::NO_CONTENT && range_size(&r) == Some(old.size) => {}
            Ok(r) => problems.push(format!(
                "{what}: {} with Range {:?}, expected 204 with {} bytes",
                r.status(),
                header(&r, "range"),
                old.size
            )),
            Err(e) => problems.push(format!("{what}: {e:?}")),
        }
    }
    for (k, session) in sessions.into_iter().enumerate() {
        stats.sessions_checked += 1;
        let what = format!(
            "session {} ({} bytes acknowledged, {} in flight at the crash)",
            session.location, session.acked, session.in_flight
        );
        let response = match ctx.http.get(ctx.url(&session.location)).send().await {
            Ok(r) => r,
            Err(e) => {
                problems.push(format!("GET {what}: {e:?}"));
                continue;
            }
        };
        let size = range_size(&response);
        if response.status() != StatusCode::NO_CONTENT
            || header(&response, "docker-upload-uuid").is_none()
        {
            problems.push(format!(
                "GET {what}: {} (Range {:?}); the design keeps sessions across restarts, so 204 was expected",
                response.status(),
                header(&response, "range")
            ));
            continue;
        }
        let Some(size) =
            size.filter(|s| *s >= session.acked && *s <= session.acked + session.in_flight)
        else {
            problems.push(format!(
                "GET {what}: Range {:?} is not within the bytes sent",
                header(&response, "range")
            ));
            continue;
        };
        let end = session.acked + session.in_flight;
        if session.in_flight > 0 {
            stats.sessions_in_flight += 1;
            if size > session.acked && size < end {
                stats.sessions_partial += 1;
            } else if size == end {
                stats.sessions_whole += 1;
            }
            // Half a MiB past a part's worth of bytes sent: the server had
            // (almost surely) filled a part and sent it to the multipart upload.
            let streamed = session.streamed.load(Ordering::SeqCst);
            if size < end && session.acked + streamed >= S3_PART_SIZE + (512 << 10) {
                stats.sessions_past_a_part += 1;
            }
        }
        if common::s3_backend() && size != session.acked && size != end {
            problems.push(format!(
                "GET {what}: Range {:?}, a part of the chunk in flight: on S3 a chunk is all-or-nothing (its session object is written last)",
                header(&response, "range")
            ));
            continue;
        }
        if !rng.gen_bool(0.5) {
            abandoned.push(Abandoned {
                location: session.location.clone(),
                size,
            });
            continue;
        }
        // Resume from where the server says it is, and commit.
        stats.sessions_resumed += 1;
        let data = &session.data;
        let digest = sha256(data);
        let mut location = ctx.url(&session.location);
        if (size as usize) < data.len() {
            let response = ctx
                .http
                .patch(&location)
                .header("content-type", "application/octet-stream")
                .header("content-range", format!("{size}-{}", data.len() - 1))
                .body(data.slice(size as usize..))
                .send()
                .await;
            match response {
                Ok(r) if r.status() == StatusCode::ACCEPTED => {
                    if range_size(&r) != Some(data.len() as u64) {
                        problems.push(format!("resume {what}: Range {:?}", header(&r, "range")));
                    }
                    location = ctx.location(&r, &what).unwrap_or(location);
                }
                Ok(r) => {
                    let status = r.status();
                    problems.push(format!(
                        "resume {what} from {size}: {status}: {}",
                        r.text().await.unwrap_or_default()
                    ));
                    continue;
                }
                Err(e) => {
                    problems.push(format!("resume {what}: {e:?}"));
                    continue;
                }
            }
        }
        match ctx.http.put(with_digest(&location, &digest)).send().await {
            Ok(r) if r.status() == StatusCode::CREATED => {}
            Ok(r) => {
                let status = r.status();
                problems.push(format!(
                    "commit {what} as {digest}: {status}: {}",
                    r.text().await.unwrap_or_default()
                ));
                continue;
            }
            Err(e) => {
                problems.push(format!("commit {what}: {e:?}"));
                continue;
            }
        }
        // Keep the blob (and check it end to end) as the layer of an image.
        let tag = format!("resumed-i{iteration}-{k}");
        let config = config_blob(rng, &tag);
        let before = ctx.shared.problems.lock().unwrap().len();
        if push_image(ctx, SESSION_REPO, &tag, config, vec![data.clone()], rng)
            .await
            .is_none()
        {
            problems.push(format!(
                "pushing {SESSION_REPO}:{tag} with the resumed blob failed"
            ));
        }
        problems.extend(ctx.shared.problems.lock().unwrap().drain(before..));
    }
    problems
}

#[derive(Default)]
struct Stats {
    sessions_checked: usize,
    /// Sessions whose chunk was still streaming when the server was killed...
    sessions_in_flight: usize,
    /// ... and of those, how many had part of it on disk (never on S3)...
    sessions_partial: usize,
    /// ... and how many all of it (the kill came before the 202 went out).
    sessions_whole: usize,
    /// Of those killed mid-chunk and not stored whole, how many after the
    /// client had sent more than a part's worth of it (S3: a part of it was in
    /// the multipart upload, not in the session).
    sessions_past_a_part: usize,
    sessions_resumed: usize,
}

/// The `_uploads` directories' entries (session ids) and `_tmp`'s files.
fn leftover_uploads(layout: &Path) -> (Vec<String>, Vec<String>) {
    let mut uploads = Vec::new();
    let mut pending = vec![layout.join("repositories")];
    while let Some(dir) = pending.pop() {
        for (name, meta) in names(&dir) {
            if !meta.is_dir() {
                continue;
            }
            if name == "_uploads" {
                uploads.extend(names(&dir.join(&name)).into_iter().map(|(id, _)| id));
            } else if !name.starts_with('_') {
                pending.push(dir.join(&name));
            }
        }
    }
    // Staging files live in `_tmp`'s shard directories.
    let mut tmp = Vec::new();
    for (name, meta) in names(&layout.join("_tmp")) {
        if meta.is_dir() {
            let shard = layout.join("_tmp").join(&name);
            tmp.extend(
                names(&shard)
                    .into_iter()
                    .map(|(n, _)| format!("{name}/{n}")),
            );
        } else {
            tmp.push(name);
        }
    }
    (uploads, tmp)
}

/// Runs `portcullis fsck` and requires exit 0 and zero findings.
async fn fsck(harness: &Harness, acked_manifests: usize, seed: u64) -> String {
    let output = run_portcullis(&["fsck", "--config", harness.config()], &[]);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stdout.lines().collect();
    if !(output.status.success() && lines.len() == 1) {
        panic!(
            "portcullis fsck failed (seed {seed}, {}): {}\n{stdout}{stderr}{}",
            harness.store.describe(),
            output.status,
            harness.store.explain_findings(&lines).await
        );
    }
    let summary = lines[0];
    let numbers: Vec<usize> = summary
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("a count"))
        .collect();
    assert!(
        summary.ends_with(" findings, 0 repaired") && numbers.len() == 4,
        "unexpected fsck summary: {summary}"
    );
    let (blobs, manifests, findings) = (numbers[0], numbers[1], numbers[2]);
    assert_eq!(findings, 0, "fsck findings (seed {seed}):\n{stdout}");
    assert!(
        manifests >= acked_manifests && blobs >= acked_manifests,
        "fsck checked {manifests} manifests and {blobs} blobs, but {acked_manifests} manifests were acknowledged: {summary}"
    );
    summary.to_owned()
}

/// What the filesystem holds at a link fsck reports as bad.
fn explain_link_file(layout: &Path, path: &str) -> String {
    let link = layout.join(path);
    let dir = link.parent().unwrap_or(&link);
    match std::fs::read(&link) {
        Ok(bytes) => format!("holds {:?}", String::from_utf8_lossy(&bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => format!(
            "does not exist; its directory holds {:?} (a link write the kill cut off between creating the directory and renaming the staged link into it: see a_link_write_cut_short_by_a_crash_is_not_an_fsck_finding)",
            names(dir).into_iter().map(|(n, _)| n).collect::<Vec<_>>()
        ),
        Err(e) => format!("cannot be read: {e}"),
    }
}

fn env_number(name: &str) -> Option<u64> {
    let raw = std::env::var(name).ok()?;
    Some(
        raw.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={raw:?} is not a number")),
    )
}

// ------------------------------------------------------------------ the test

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_pushes_survive_sigkill_at_random_moments() {
    let started = Instant::now();
    let iterations = env_number("PORTCULLIS_CRASH_ITERATIONS")
        .map(|n| n as usize)
        .unwrap_or(DEFAULT_ITERATIONS);
    let seed = env_number("PORTCULLIS_CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos() as u64
    });
    let mut harness = Harness::new().await;
    println!(
        "crash: seed {seed} (replay with PORTCULLIS_CRASH_SEED={seed}), {iterations} iterations, storage: {}",
        harness.store.describe()
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let base_layers: Arc<Vec<Bytes>> = Arc::new(
        (0..3)
            .map(|_| {
                let size = rng.gen_range(128 * 1024..=1024 * 1024);
                random_data(&mut rng, size)
            })
            .collect(),
    );

    let mut acked: Vec<Acked> = Vec::new();
    let mut downloaded: HashSet<(String, String)> = HashSet::new();
    let mut hashed: HashMap<String, String> = HashMap::new();
    let mut abandoned: Vec<Abandoned> = Vec::new();
    let mut open_sessions: Vec<Session> = Vec::new();
    let mut stats = Stats::default();

    let mut server = harness.start().await;
    for iteration in 0..iterations {
        let shared = Arc::new(Shared::default());
        let ctx = Ctx::new(&server.base, Arc::clone(&shared));

        if iteration > 0 {
            // The server was just restarted after a SIGKILL: everything
            // acknowledged before must be there, sessions included.
            let problems = check_sessions(
                &ctx,
                std::mem::take(&mut open_sessions),
                &mut abandoned,
                iteration,
                &mut rng,
                &mut stats,
            )
            .await;
            fail_on(
                problems,
                &format!("iteration {iteration}: sessions after restart"),
                seed,
            );
            acked.append(&mut shared.acked.lock().unwrap());
            let mut older: Vec<(String, String)> = downloaded.iter().cloned().collect();
            older.sort();
            let sample: HashSet<(String, String)> = (0..SAMPLED_BLOBS.min(older.len()))
                .map(|_| older[rng.gen_range(0..older.len())].clone())
                .collect();
            let download = |repo: &str, digest: &str| {
                let key = (repo.to_owned(), digest.to_owned());
                !downloaded.contains(&key) || sample.contains(&key)
            };
            let (_, _, problems) = verify_acked(&ctx, &acked, &download).await;
            fail_on(
                problems,
                &format!("iteration {iteration}: verification after restart"),
                seed,
            );
            for image in &acked {
                for blob in &image.blobs {
                    downloaded.insert((image.repo.clone(), blob.digest.clone()));
                }
            }
        }

        // Chaos: clients push until the server is killed under them.
        let mut tasks = Vec::new();
        for client in 0..PUSH_CLIENTS {
            tasks.push(tokio::spawn(push_client(
                Arc::clone(&ctx),
                iteration,
                client,
                StdRng::seed_from_u64(rng.next_u64()),
                Arc::clone(&base_layers),
            )));
        }
        tasks.push(tokio::spawn(session_client(
            Arc::clone(&ctx),
            StdRng::seed_from_u64(rng.next_u64()),
        )));
        let delay = Duration::from_millis(rng.gen_range(KILL_AFTER_MS));
        tokio::time::sleep(delay).await;
        shared.killed.store(true, Ordering::SeqCst);
        server.kill();
        for task in tasks {
            tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .expect("clients notice the dead server within 60s")
                .expect("client task does not panic");
        }
        let new_acks = shared.acked.lock().unwrap().len();
        acked.append(&mut shared.acked.lock().unwrap());
        open_sessions.extend(shared.sessions.lock().unwrap().drain(..));
        fail_on(
            std::mem::take(&mut *shared.problems.lock().unwrap()),
            &format!("iteration {iteration}: pushing"),
            seed,
        );

        // What the crash left in the storage, before anything touches it again.
        let BlobCheck {
            stored,
            mut problems,
            ..
        } = harness.store.check_blobs(&mut hashed).await;
        problems.extend(check_acked_stored(&acked, &stored));
        fail_on(
            problems,
            &format!("iteration {iteration}: blobs after the crash"),
            seed,
        );
        println!(
            "crash: iteration {iteration}: killed after {} ms, {new_acks} manifests acknowledged ({} in all), {} sessions open",
            delay.as_millis(),
            acked.len(),
            open_sessions.len()
        );
        server = harness.start().await;
    }

    // After the last crash: sessions, then everything, downloaded.
    let shared = Arc::new(Shared::default());
    let ctx = Ctx::new(&server.base, Arc::clone(&shared));
    let problems = check_sessions(
        &ctx,
        std::mem::take(&mut open_sessions),
        &mut abandoned,
        iterations,
        &mut rng,
        &mut stats,
    )
    .await;
    fail_on(problems, "final restart: sessions", seed);
    acked.append(&mut shared.acked.lock().unwrap());
    let (blob_count, verified_blobs, problems) = verify_acked(&ctx, &acked, &|_, _| true).await;
    fail_on(problems, "final restart: verification", seed);
    server.kill();
    hashed.clear();
    let BlobCheck {
        stored,
        mut problems,
        ..
    } = harness.store.check_blobs(&mut hashed).await;
    problems.extend(check_acked_stored(&acked, &stored));
    fail_on(problems, "final blobs", seed);
    let fsck_before_gc = fsck(&harness, acked.len(), seed).await;

    // Abandoned sessions are still stored; gc with upload_max_age = 0 removes
    // them and the staging crashes left, and no acknowledged content.
    let before_gc = harness.store.leftovers().await;
    for old in &abandoned {
        let id = old.location.rsplit('/').next().unwrap_or_default();
        assert!(
            before_gc.sessions.iter().any(|u| u == id),
            "abandoned session {} is not under _uploads before gc: {:?}",
            old.location,
            before_gc.sessions
        );
    }
    let gc = run_portcullis(
        &["gc", "--config", harness.config()],
        &[("PORTCULLIS_STORAGE__UPLOAD_MAX_AGE", "0s")],
    );
    let gc_out = String::from_utf8_lossy(&gc.stdout).into_owned();
    assert!(
        gc.status.success(),
        "portcullis gc failed (seed {seed}): {gc_out}{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    let keep: HashSet<&str> = acked
        .iter()
        .flat_map(|i| {
            std::iter::once(i.digest.as_str()).chain(i.blobs.iter().map(|b| b.digest.as_str()))
        })
        .collect();
    for line in gc_out.lines() {
        if let Some(rest) = line.strip_prefix("removed blob ") {
            let digest = rest.split(' ').next().unwrap_or_default();
            assert!(
                !keep.contains(digest),
                "gc removed acknowledged content: {line}"
            );
        }
    }
    let removed_uploads = gc_out
        .lines()
        .filter(|l| l.starts_with("removed upload "))
        .count();
    assert_eq!(
        removed_uploads,
        before_gc.uploads.len(),
        "gc removes every abandoned session:\n{gc_out}"
    );
    let after_gc = harness.store.leftovers().await;
    assert!(
        after_gc.uploads.is_empty(),
        "sessions left after gc: {:?}",
        after_gc.uploads
    );
    assert!(
        after_gc.staging.is_empty(),
        "staging files left after gc: {:?}",
        after_gc.staging
    );
    let BlobCheck {
        stored,
        bytes: stored_bytes,
        mut problems,
    } = harness.store.check_blobs(&mut hashed).await;
    problems.extend(check_acked_stored(&acked, &stored));
    fail_on(problems, "blobs after gc", seed);
    let fsck_after_gc = fsck(&harness, acked.len(), seed).await;

    // Everything acknowledged still pulls back; abandoned sessions are gone.
    let server = harness.start().await;
    let ctx = Ctx::new(&server.base, Arc::new(Shared::default()));
    let (_, _, problems) = verify_acked(&ctx, &acked, &|_, _| true).await;
    fail_on(problems, "after gc: verification", seed);
    for old in &abandoned {
        let response = ctx
            .http
            .get(ctx.url(&old.location))
            .send()
            .await
            .expect("GET reaches the registry");
        expect_error(response, 404, "BLOB_UPLOAD_UNKNOWN").await;
    }
    server.kill();

    println!("crash: fsck before gc: {fsck_before_gc}");
    println!("crash: fsck after gc: {fsck_after_gc}");
    println!(
        "crash: gc removed {removed_uploads} upload directories ({} with a session, {} tracked as abandoned) and {} staging files",
        before_gc.sessions.len(),
        abandoned.len(),
        before_gc.staging.len()
    );
    println!(
        "crash: sessions: {} checked after a restart ({} killed mid-chunk: {} with part of it stored, {} with all of it{}), {} resumed, {} abandoned",
        stats.sessions_checked,
        stats.sessions_in_flight,
        stats.sessions_partial,
        stats.sessions_whole,
        if harness.store.is_s3() {
            format!(
                "; {} of them after more than a part of it was sent",
                stats.sessions_past_a_part
            )
        } else {
            String::new()
        },
        stats.sessions_resumed,
        abandoned.len()
    );
    if harness.store.is_s3() {
        let multipart = acked
            .iter()
            .flat_map(|image| &image.blobs)
            .filter(|blob| blob.size > S3_PART_SIZE)
            .count();
        println!("crash: {multipart} acknowledged blobs bigger than a part (multipart uploads)");
    }
    println!(
        "crash: {iterations} iterations, {} manifests acknowledged, {} verified ({blob_count} blobs, {verified_blobs} downloaded; {} MB stored), seed {seed}, {:.1}s",
        acked.len(),
        acked.len(),
        stored_bytes / 1_000_000,
        started.elapsed().as_secs_f64()
    );
    harness.store.remove().await;
}

/// The state a SIGKILL leaves when it lands inside a link write, between
/// creating the link's directory and renaming the staged link file into it
/// (`write_atomic` in `src/storage/mod.rs`): a blob committed to `blobs/` whose
/// `_layers/<alg>/<hex>/` directory in the repository has no `link` yet. The
/// upload was never acknowledged, the blob is not served there, and a retry
/// completes it; `fsck` must not count it as damage.
#[tokio::test]
async fn a_link_write_cut_short_by_a_crash_is_not_an_fsck_finding() {
    // Filesystem only: on S3 there are no directories, and a link is one PUT.
    if common::s3_backend() {
        return;
    }
    let mut harness = Harness::new().await;
    let Store::Fs { layout } = &harness.store else {
        unreachable!("the filesystem backend");
    };
    let layout = layout.clone();
    let server = harness.start().await;
    let ctx = Ctx::new(&server.base, Arc::new(Shared::default()));
    let mut rng = StdRng::seed_from_u64(7);
    let config = config_blob(&mut rng, "interrupted-link");
    let layer = random_data(&mut rng, 4096);
    push_image(
        &ctx,
        "crash/interrupted",
        "v1",
        config,
        vec![layer.clone()],
        &mut rng,
    )
    .await
    .expect("the image is pushed");
    let problems = std::mem::take(&mut *ctx.shared.problems.lock().unwrap());
    fail_on(problems, "pushing the image", 7);
    server.kill();

    // The crash: the blob is in place, its link in the other repository is not.
    let digest = sha256(&layer);
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    let link_dir = layout
        .join("repositories/crash/other/_layers/sha256")
        .join(hex);
    std::fs::create_dir_all(&link_dir).expect("create the link directory");
    fsck(&harness, 1, 7).await;

    // Not served there; a retried upload completes the link.
    let server = harness.start().await;
    let ctx = Ctx::new(&server.base, Arc::new(Shared::default()));
    let url = ctx.url(&format!("/v2/crash/other/blobs/{digest}"));
    let response = ctx
        .http
        .head(&url)
        .send()
        .await
        .expect("HEAD reaches the registry");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    push_blob(&ctx, "crash/other", &layer, Mode::Monolithic, &mut rng)
        .await
        .expect("the blob is pushed again");
    let response = ctx
        .http
        .get(&url)
        .send()
        .await
        .expect("GET reaches the registry");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(sha256(&response.bytes().await.expect("blob body")), digest);
    server.kill();
    fsck(&harness, 1, 7).await;
}
