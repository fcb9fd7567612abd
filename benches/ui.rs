//! What the web pages cost with a large store (issue 17: "pages render in
//! under 50 ms server time with 10,000 repositories and 100,000 tags on the
//! filesystem backend"). `cargo bench --bench ui`.
//!
//! Seeds a filesystem store in Distribution's layout directly (a few real
//! blobs and five real manifests, written once; per repository only link
//! files: `_layers`, `_manifests/revisions` and each tag's `current/link`;
//! the tags' `index/` history, which no read path uses, is left out to keep
//! the store near 2 GB on disk), starts the real server in-process with
//! `examples/config-groups.toml` (the three bundled policies, the demo
//! htpasswd accounts; `ui.admin_groups = ["ops"]` so bob is an admin; the
//! decision log as configured by default: denials, a ring of 1,000), and
//! requests each page over loopback with keep-alive. Server time is the
//! access log's `duration_ms` (from the request's arrival to the response
//! head, the page fully rendered), collected by a tracing layer; the client
//! latency is printed beside it. The chain evaluations a page costs come
//! from `/metrics` (`policy_decisions_total`; the first policy has no scope,
//! so its count is the number of chain evaluations).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portcullis::config::Config;
use portcullis::server::Server;
use serde_json::json;
use sha2::Digest as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

const REPOSITORIES: usize = 10_000;
/// Tags of the one large repository; `TAGGED` others have the 10 of
/// `tag_names` each (100,000 in all), the last 99 hold untagged manifests.
const BIG_TAGS: usize = 1_000;
const TAGGED: usize = 9_900;
/// Timed requests per warm row.
const SAMPLES: usize = 200;
/// Untimed requests of a warm row after the two counted ones.
const WARM_UP: usize = 5;
/// Fresh servers for the cold rows (each viewer is first on half of them,
/// at once on half of those and a second after the start on the others).
const COLD_SERVERS: usize = 16;

const NAMESPACES: [&str; 8] = [
    "team-a", "team-b", "public", "library", "infra", "ml", "web", "data",
];
const WORDS: [&str; 8] = [
    "api", "worker", "frontend", "db", "cache", "gateway", "auth", "search",
];

const PASSWORD: &str = "change-me";

// ---------------------------------------------------------------- seeding

struct Blob {
    hex: String,
    bytes: Vec<u8>,
}

impl Blob {
    fn new(bytes: Vec<u8>) -> Self {
        Self {
            hex: hex::encode(sha2::Sha256::digest(&bytes)),
            bytes,
        }
    }
    fn digest(&self) -> String {
        format!("sha256:{}", self.hex)
    }
}

struct Seeded {
    /// Every repository name, sorted as the UI sorts them.
    names: Vec<String>,
    /// One with `TAGS_EACH` tags, and the one with `BIG_TAGS`.
    small: String,
    big: String,
    tags: usize,
    files: usize,
    took: Duration,
}

fn repository_name(i: usize) -> String {
    if i == 0 {
        return "team-a/monorepo".into();
    }
    format!(
        "{}/{}-{i:05}",
        NAMESPACES[i % NAMESPACES.len()],
        WORDS[(i / NAMESPACES.len()) % WORDS.len()]
    )
}

fn tag_names(i: usize) -> Vec<String> {
    if i == 0 {
        return (0..BIG_TAGS)
            .map(|j| {
                if j % 10 == 0 {
                    format!("v{}.{}.0", j / 100, (j / 10) % 10)
                } else {
                    format!("build-{j:04}")
                }
            })
            .collect();
    }
    if i > TAGGED {
        return Vec::new();
    }
    [
        "latest",
        "v1.0.0",
        "v1.1.0",
        "v1.2.0",
        "v2.0.0-rc1",
        "v2.0.0",
        "main",
        "dev",
        "nightly",
        "1.0",
    ]
    .iter()
    .map(|t| (*t).to_owned())
    .collect()
}

/// Writes a file, creating nothing else (its directory exists).
fn write_file(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn mkdir(path: &Path) {
    std::fs::create_dir(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// `<dir>/sha256/<hex>/link` for each blob (`<dir>/sha256` exists).
fn links(dir: &Path, blobs: &[&Blob]) -> usize {
    for blob in blobs {
        let d = dir.join("sha256").join(&blob.hex);
        mkdir(&d);
        write_file(&d.join("link"), blob.digest().as_bytes());
    }
    blobs.len()
}

/// Seeds `root`, or only says what is there when `write` is false (a kept
/// store from an earlier run).
fn seed(root: &Path, write: bool) -> Seeded {
    let started = Instant::now();
    let mut names: Vec<String> = (0..REPOSITORIES).map(repository_name).collect();
    names.sort();
    if !write {
        return Seeded {
            names,
            small: repository_name(1),
            big: repository_name(0),
            tags: (0..REPOSITORIES).map(|i| tag_names(i).len()).sum(),
            files: 0,
            took: Duration::ZERO,
        };
    }
    let v2 = root.join("docker/registry/v2");
    // Three layers, four image configs (two platforms), four images and
    // an index of two of them: every repository holds all five.
    let layers: Vec<Blob> = (0..3u8)
        .map(|i| Blob::new(vec![i + 1; 2048 << i]))
        .collect();
    let platform = |i: usize| {
        if i % 2 == 0 {
            ("amd64", None)
        } else {
            ("arm64", Some("v8"))
        }
    };
    let configs: Vec<Blob> = (0..4)
        .map(|i| {
            let (architecture, variant) = platform(i);
            let mut config = json!({
                "architecture": architecture,
                "os": "linux",
                "created": format!("2026-0{}-15T10:00:00Z", i + 1),
                "config": {
                    "User": "1000",
                    "Entrypoint": ["/app/server"],
                    "Cmd": ["--port", "8080"],
                    "Env": ["PATH=/usr/local/bin:/usr/bin"],
                    "ExposedPorts": { "8080/tcp": {} },
                    "Labels": {
                        "org.opencontainers.image.source": "https://github.com/acme/app",
                        "org.opencontainers.image.version": format!("1.{i}.0")
                    }
                },
                "rootfs": { "type": "layers", "diff_ids": [
                    layers[0].digest(), layers[1 + i % 2].digest()
                ] },
                "history": [ { "created_by": "COPY base /" }, { "created_by": "COPY app /app" } ]
            });
            if let Some(v) = variant {
                config["variant"] = json!(v);
            }
            Blob::new(serde_json::to_vec(&config).expect("json"))
        })
        .collect();
    let descriptor = |media_type: &str, blob: &Blob| json!({ "mediaType": media_type, "digest": blob.digest(), "size": blob.bytes.len() });
    let mut manifests: Vec<Blob> = (0..4)
        .map(|i| {
            Blob::new(
                serde_json::to_vec(&json!({
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": descriptor("application/vnd.oci.image.config.v1+json", &configs[i]),
                    "layers": [
                        descriptor("application/vnd.oci.image.layer.v1.tar+gzip", &layers[0]),
                        descriptor("application/vnd.oci.image.layer.v1.tar+gzip", &layers[1 + i % 2]),
                    ],
                    "annotations": { "org.opencontainers.image.created": format!("2026-0{}-15T10:00:00Z", i + 1) }
                }))
                .expect("json"),
            )
        })
        .collect();
    let child = |i: usize| {
        let (architecture, variant) = platform(i);
        let mut d = descriptor("application/vnd.oci.image.manifest.v1+json", &manifests[i]);
        d["platform"] = json!({ "architecture": architecture, "os": "linux" });
        if let Some(v) = variant {
            d["platform"]["variant"] = json!(v);
        }
        d
    };
    let index = Blob::new(
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [child(0), child(1)]
        }))
        .expect("json"),
    );
    manifests.push(index);
    let mut files = 0;
    for blob in layers.iter().chain(&configs).chain(&manifests) {
        let dir = v2.join("blobs/sha256").join(&blob.hex[..2]).join(&blob.hex);
        std::fs::create_dir_all(&dir).expect("blob dir");
        write_file(&dir.join("data"), &blob.bytes);
        files += 1;
    }

    let layer_blobs: Vec<&Blob> = layers.iter().chain(&configs).collect();
    let manifest_blobs: Vec<&Blob> = manifests.iter().collect();
    let repositories = v2.join("repositories");
    let threads = 4;
    let counts: Vec<(usize, usize)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (repositories, layer_blobs, manifest_blobs) =
                    (&repositories, &layer_blobs, &manifest_blobs);
                scope.spawn(move || {
                    let (mut files, mut tags) = (0, 0);
                    for i in (t..REPOSITORIES).step_by(threads) {
                        let repo = repositories.join(repository_name(i));
                        std::fs::create_dir_all(repo.join("_layers/sha256")).expect("repo dir");
                        files += links(&repo.join("_layers"), layer_blobs);
                        let revisions = repo.join("_manifests/revisions");
                        std::fs::create_dir_all(revisions.join("sha256")).expect("revisions");
                        files += links(&revisions, manifest_blobs);
                        let tags_dir = repo.join("_manifests/tags");
                        mkdir(&tags_dir);
                        for (j, tag) in tag_names(i).iter().enumerate() {
                            let target = manifest_blobs[(i + j) % manifest_blobs.len()];
                            let dir = tags_dir.join(tag);
                            mkdir(&dir);
                            mkdir(&dir.join("current"));
                            write_file(&dir.join("current/link"), target.digest().as_bytes());
                            files += 1;
                            tags += 1;
                        }
                    }
                    (files, tags)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("seeding thread"))
            .collect()
    });
    Seeded {
        names,
        small: repository_name(1),
        big: repository_name(0),
        tags: counts.iter().map(|c| c.1).sum(),
        files: files + counts.iter().map(|c| c.0).sum::<usize>(),
        took: started.elapsed(),
    }
}

// ---------------------------------------------------------------- server

fn config(root: &Path) -> Config {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut config = Config::load(Some(&here.join("examples/config-groups.toml")))
        .expect("examples/config-groups.toml loads");
    config.listen = "127.0.0.1:0".parse().expect("addr");
    config.storage.root = root.to_owned();
    config.auth.htpasswd = Some(here.join("examples/htpasswd"));
    config.ui.admin_groups = vec!["ops".into()];
    config
}

/// The access log's `duration_ms` of every request, in order.
#[derive(Clone, Default)]
struct AccessLog(Arc<Mutex<Vec<f64>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for AccessLog {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Duration(Option<f64>);
        impl tracing::field::Visit for Duration {
            fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
                if field.name() == "duration_ms" {
                    self.0 = Some(value);
                }
            }
            fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
        }
        let mut duration = Duration(None);
        event.record(&mut duration);
        if let Some(ms) = duration.0 {
            self.0.lock().expect("log").push(ms);
        }
    }
}

impl AccessLog {
    fn take(&self) -> Vec<f64> {
        std::mem::take(&mut *self.0.lock().expect("log"))
    }
}

struct Client {
    http: reqwest::Client,
    base: String,
    log: AccessLog,
}

struct Answer {
    status: u16,
    body: String,
    server_ms: f64,
    client_ms: f64,
}

impl Client {
    fn new(base: String, log: AccessLog) -> Self {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        Self { http, base, log }
    }

    async fn get(&self, path: &str, session: Option<&str>) -> Answer {
        self.log.take();
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(s) = session {
            request = request.header("cookie", format!("portcullis_session={s}"));
        }
        let started = Instant::now();
        let response = request.send().await.expect("GET");
        let status = response.status().as_u16();
        let body = response.text().await.expect("body");
        let client_ms = started.elapsed().as_secs_f64() * 1000.0;
        let logged = self.log.take();
        assert_eq!(logged.len(), 1, "one access log line for {path}");
        Answer {
            status,
            body,
            server_ms: logged[0],
            client_ms,
        }
    }

    /// Signs in with the form (double-submit CSRF cookie): the session cookie.
    async fn sign_in(&self, user: &str) -> String {
        let nonce = "0123456789abcdef0123456789abcdef";
        let response = self
            .http
            .post(format!("{}/ui/signin", self.base))
            .header("cookie", format!("portcullis_signin={nonce}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "csrf={nonce}&return=%2Fui%2F&user={user}&password={PASSWORD}"
            ))
            .send()
            .await
            .expect("sign in");
        assert_eq!(response.status(), 303, "sign-in of {user}");
        let session = response
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|c| c.strip_prefix("portcullis_session="))
            .and_then(|c| c.split(';').next())
            .expect("session cookie")
            .to_owned();
        self.log.take();
        session
    }

    /// Chain evaluations and policy runs so far (`policy_decisions_total`).
    async fn evaluations(&self) -> (u64, u64) {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body");
        self.log.take();
        let (mut chain, mut runs) = (0.0, 0.0);
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("portcullis_policy_decisions_total{") else {
                continue;
            };
            let value: f64 = rest
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            runs += value;
            if rest.contains("policy=\"team-access\"") {
                chain += value;
            }
        }
        (chain as u64, runs as u64)
    }

    /// `get` with the chain evaluations it cost.
    async fn counted(&self, path: &str, session: Option<&str>) -> (Answer, (u64, u64)) {
        let before = self.evaluations().await;
        let answer = self.get(path, session).await;
        let after = self.evaluations().await;
        (answer, (after.0 - before.0, after.1 - before.1))
    }
}

async fn start(root: &Path, log: &AccessLog) -> Client {
    let server = Server::bind(config(root)).await.expect("server binds");
    let base = format!("http://{}", server.local_addr());
    tokio::spawn(server.run(std::future::pending()));
    Client::new(base, log.clone())
}

// ---------------------------------------------------------------- rows

struct Row {
    page: String,
    viewer: &'static str,
    cache: &'static str,
    server: Vec<f64>,
    client: Vec<f64>,
    /// Chain evaluations (policy runs) of the first request, and of one
    /// after it.
    first: (u64, u64),
    again: Option<(u64, u64)>,
    status: u16,
}

fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// A warm row: one request counted, one more counted, then `SAMPLES` timed.
async fn warm(
    client: &Client,
    page: &str,
    viewer: &'static str,
    session: Option<&str>,
    expect: u16,
    check: &str,
) -> Row {
    let (answer, first) = client.counted(page, session).await;
    assert_eq!(answer.status, expect, "{page} as {viewer}");
    assert!(
        answer.body.contains(check),
        "{page} as {viewer}: no {check:?} in the page"
    );
    let (_, again) = client.counted(page, session).await;
    // A page whose evaluations ran out continues where it stopped on the
    // next request (`PAGE_EVALUATIONS`): a few more before the timed ones.
    for _ in 0..WARM_UP {
        client.get(page, session).await;
    }
    let (mut server, mut took) = (Vec::new(), Vec::new());
    for _ in 0..SAMPLES {
        let a = client.get(page, session).await;
        assert_eq!(a.status, expect, "{page} as {viewer}");
        server.push(a.server_ms);
        took.push(a.client_ms);
    }
    Row {
        page: page.into(),
        viewer,
        cache: "warm",
        server,
        client: took,
        first,
        again: Some(again),
        status: expect,
    }
}

/// Requests 100 ms apart for 16 s (a steady trickle of viewers): the
/// store's list cached by the page expires every 5 s on a filesystem, and
/// whichever request finds it expired is timed too.
async fn paced(client: &Client, page: &str, viewer: &'static str, session: Option<&str>) -> Row {
    let (_, first) = client.counted(page, session).await;
    let mut ticks = tokio::time::interval(Duration::from_millis(100));
    let (mut server, mut took) = (Vec::new(), Vec::new());
    for _ in 0..160 {
        ticks.tick().await;
        let a = client.get(page, session).await;
        assert_eq!(a.status, 200, "{page} as {viewer}");
        server.push(a.server_ms);
        took.push(a.client_ms);
    }
    Row {
        page: page.into(),
        viewer,
        cache: "10 requests/s for 16 s",
        server,
        client: took,
        first,
        again: None,
        status: 200,
    }
}

fn print_table(rows: &[Row]) {
    println!();
    println!("| page | viewer | cache | n | server median ms | server p99 ms | client median ms | chain evaluations (policy runs): first request; again | < 50 ms (p99) |");
    println!("|---|---|---|---:|---:|---:|---:|---|---|");
    for r in rows {
        let p99 = percentile(&r.server, 0.99);
        let again = r
            .again
            .map_or_else(|| "-".into(), |(c, p)| format!("{c} ({p})"));
        println!(
            "| `{}` ({}) | {} | {} | {} | {:.2} | {:.2} | {:.2} | {} ({}); {} | {} |",
            r.page,
            r.status,
            r.viewer,
            r.cache,
            r.server.len(),
            percentile(&r.server, 0.5),
            p99,
            percentile(&r.client, 0.5),
            r.first.0,
            r.first.1,
            again,
            if p99 < 50.0 { "yes" } else { "**no**" }
        );
    }
}

/// How long a walk of the store's repositories takes (ms), 10 times.
fn list_walks(root: &Path) -> Vec<f64> {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let storage = portcullis::storage::Storage::open(&config(root).storage)
            .await
            .expect("store opens");
        let mut walks = Vec::new();
        for _ in 0..10 {
            let started = Instant::now();
            let names = storage.list_repositories().await.expect("list");
            assert_eq!(names.len(), REPOSITORIES);
            walks.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        walks
    })
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "{cpu}, {cores} cores, load average {}",
        load.split(' ').take(3).collect::<Vec<_>>().join(" ")
    )
}

fn main() {
    let log = AccessLog::default();
    tracing_subscriber::registry()
        .with(
            log.clone().with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target("portcullis::access", tracing::Level::INFO),
            ),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(tracing_subscriber::filter::LevelFilter::WARN),
        )
        .init();
    println!("machine: {}", machine());
    // About half a million inodes (links and their directories), removed
    // at the end; or kept in UI_BENCH_STORE (seeded when empty,
    // reused as it is otherwise) for runs after this one.
    let (dir, kept) = match std::env::var_os("UI_BENCH_STORE") {
        Some(path) => {
            let path = PathBuf::from(path);
            let reuse = path.join("docker/registry/v2/repositories").is_dir();
            (None, Some((path, reuse)))
        }
        None => (Some(tempfile::tempdir().expect("tempdir")), None),
    };
    let root = match (&dir, &kept) {
        (Some(d), _) => d.path().to_owned(),
        (None, Some((path, _))) => path.clone(),
        (None, None) => unreachable!("a store either way"),
    };
    let reuse = kept.as_ref().is_some_and(|k| k.1);
    let seeded = seed(&root, !reuse);
    println!(
        "{} {} repositories, {} tags, {} files in {:.1} s ({})",
        if reuse { "reused" } else { "seeded" },
        seeded.names.len(),
        seeded.tags,
        seeded.files,
        seeded.took.as_secs_f64(),
        root.display()
    );
    let walks = list_walks(&root);
    println!(
        "the store's list of repositories (Storage::list_repositories, read by the page's list cache and /v2/_catalog): median {:.1} ms, max {:.1} ms of {}",
        percentile(&walks, 0.5),
        percentile(&walks, 1.0),
        walks.len()
    );
    let mut rows = Vec::new();

    // Cold: a fresh server per sample (its own runtime, dropped after, so
    // its background work never starts); the first viewer finds its
    // decisions uncached and the list of repositories maybe not read yet
    // (asked at once after the sign-in, or a second after the start), the
    // second viewer only its decisions uncached.
    // (viewer, cache) -> (server ms, client ms, evaluations of the last)
    type Cold = (Vec<f64>, Vec<f64>, (u64, u64));
    let mut cold: BTreeMap<(&'static str, &'static str), Cold> = BTreeMap::new();
    for round in 0..COLD_SERVERS {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let bound = Instant::now();
            let client = start(&root, &log).await;
            let alice = client.sign_in("alice").await;
            let later = (round / 2) % 2 == 1;
            if later {
                tokio::time::sleep(Duration::from_secs(1).saturating_sub(bound.elapsed())).await;
            }
            if round == 0 {
                println!(
                    "a fresh server binds and signs alice in in {:.0} ms",
                    bound.elapsed().as_secs_f64() * 1000.0
                );
            }
            let order: [(&'static str, Option<&str>); 2] = if round % 2 == 0 {
                [("anonymous", None), ("alice", Some(&alice))]
            } else {
                [("alice", Some(&alice)), ("anonymous", None)]
            };
            for (k, (viewer, session)) in order.into_iter().enumerate() {
                let (answer, evaluations) = client.counted("/ui/", session).await;
                assert_eq!(answer.status, 200);
                let cache = if k == 0 && !later {
                    "first page, asked at once after start and sign-in"
                } else if k == 0 {
                    "first page, asked 1 s after start"
                } else {
                    "cold decisions (list cached)"
                };
                let entry = cold.entry((viewer, cache)).or_default();
                entry.0.push(answer.server_ms);
                entry.1.push(answer.client_ms);
                entry.2 = evaluations;
            }
        });
        runtime.shutdown_timeout(Duration::from_secs(5));
    }
    for ((viewer, cache), (server, client, first)) in cold {
        rows.push(Row {
            page: "/ui/".into(),
            viewer,
            cache,
            server,
            client,
            first,
            again: None,
            status: 200,
        });
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let client = start(&root, &log).await;
        let alice = client.sign_in("alice").await;
        let bob = client.sign_in("bob").await;
        // The storage page's numbers are computed in the background once
        // the page is first asked for: wait for them, so no row shares the
        // machine with that walk.
        let waited = Instant::now();
        loop {
            let a = client.get("/ui/storage", Some(&alice)).await;
            if a.body.contains("recomputed every") {
                let took = a
                    .body
                    .split(" in ")
                    .nth(1)
                    .and_then(|s| s.split(" s;").next())
                    .unwrap_or("?");
                println!(
                    "storage at a glance computed after {:.1} s (its own run took {took} s)",
                    waited.elapsed().as_secs_f64()
                );
                break;
            }
            assert!(
                waited.elapsed() < Duration::from_secs(600),
                "glance never computed"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // A full decision ring: anonymous pulls are refused (the example
        // lets anonymous callers pull `public/**` only).
        let refused: Vec<&String> = seeded
            .names
            .iter()
            .filter(|n| !n.starts_with("public/"))
            .take(1_200)
            .collect();
        for name in &refused {
            let a = client
                .get(&format!("/v2/{name}/manifests/latest"), None)
                .await;
            assert_eq!(a.status, 401, "anonymous pull of {name}");
        }
        let deep = &seeded.names[seeded.names.len() - 60];
        let enc = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        let cases: Vec<(String, &'static str, Option<&str>, u16, &str)> = vec![
            ("/ui/".into(), "anonymous", None, 200, "id=\"next-page\""),
            (
                "/ui/".into(),
                "alice",
                Some(&alice),
                200,
                "id=\"next-page\"",
            ),
            (
                "/ui/?q=worker".into(),
                "alice",
                Some(&alice),
                200,
                "class=\"repository\"",
            ),
            (
                format!("/ui/?after={}", enc(deep)),
                "alice",
                Some(&alice),
                200,
                "class=\"repository\"",
            ),
            (
                format!("/ui/r/{}", seeded.small),
                "alice",
                Some(&alice),
                200,
                "class=\"tag\"",
            ),
            (
                format!("/ui/r/{}", seeded.big),
                "alice",
                Some(&alice),
                200,
                "id=\"next-page\"",
            ),
            (
                format!("/ui/r/{}/:v1.1.0", seeded.small),
                "alice",
                Some(&alice),
                200,
                "id=\"layers\"",
            ),
            (
                format!("/ui/r/{}/:v1.2.0", seeded.small),
                "alice",
                Some(&alice),
                200,
                "id=\"platforms\"",
            ),
            (
                "/ui/decisions".into(),
                "bob (admin)",
                Some(&bob),
                200,
                "class=\"decision\"",
            ),
            (
                "/ui/storage".into(),
                "alice",
                Some(&alice),
                200,
                "class=\"repository-bytes\"",
            ),
        ];
        for (page, viewer, session, expect, check) in cases {
            let row = warm(&client, &page, viewer, session, expect, check).await;
            println!(
                "{page} as {viewer}: median {:.2} ms, p99 {:.2} ms",
                percentile(&row.server, 0.5),
                percentile(&row.server, 0.99)
            );
            rows.push(row);
        }
        for (viewer, session) in [("alice", Some(alice.as_str())), ("anonymous", None)] {
            let row = paced(&client, "/ui/", viewer, session).await;
            println!(
                "/ui/ as {viewer}, paced: median {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                percentile(&row.server, 0.5),
                percentile(&row.server, 0.99),
                percentile(&row.server, 1.0)
            );
            rows.push(row);
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    println!("\nserver time = the access log's duration_ms; client = loopback latency with keep-alive; p99 of the n samples.");
    print_table(&rows);
    if let Some(dir) = dir {
        let removing = Instant::now();
        // One thread per namespace: a quarter of the time of one walk.
        let repositories = dir.path().join("docker/registry/v2/repositories");
        std::thread::scope(|scope| {
            for ns in NAMESPACES {
                let path = repositories.join(ns);
                scope.spawn(move || std::fs::remove_dir_all(path));
            }
        });
        drop(dir);
        println!(
            "\n(store removed in {:.1} s)",
            removing.elapsed().as_secs_f64()
        );
    }
}
