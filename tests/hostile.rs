//! Hostile requests, as one table: each row is a request sent byte for byte
//! over a bare socket (HTTP clients normalise `..` away and refuse broken
//! framing) with the status and spec error code it must get.
//!
//! After every row the runner checks the invariants a hostile client must
//! not break: no 5xx, the server still answers `/v2/`, nothing was created
//! outside the storage root (which is `<tempdir>/root`, so the tempdir itself
//! must hold nothing else) or under a suspicious name inside it, and, unless
//! the row is one that stores, every file below `blobs/` and `repositories/`
//! (upload sessions aside) is byte for byte what it was. With the S3 backend
//! (`PCTEST_BACKEND=s3`) the checks of files are left out.
//!
//! Groups: names (path traversal and the name grammar on every route kind,
//! tags and upload ids), digests, Content-Range and chunk framing,
//! manifests, request heads (floods, long lines, broken framing), slow
//! clients, and the upload limits.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{descriptor, expect_raw_error, sha256, Image, RawResponse, TestRegistry};
use common::{OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST};
use portcullis::config::Config;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DOCKER_MANIFEST: &str = common::DOCKER_MANIFEST;
const SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
const MANIFEST_CAP: usize = 4 * 1024 * 1024;

// ---------------------------------------------------------------------------
// One row of the table.

/// What follows the request head.
#[derive(Clone)]
enum Body {
    None,
    /// Sent whole, with a matching `Content-Length` (unless the row sets one).
    Fixed(Vec<u8>),
    /// Sent whole with `Transfer-Encoding: chunked`, in 64 KiB chunks.
    Chunked(Vec<u8>),
    /// Sent as is, after whatever headers the row gave.
    Raw(Vec<u8>),
    /// `Content-Length: declared`, then only `sent`, and the client stalls
    /// (keeps the connection open without sending more).
    Stalled {
        declared: u64,
        sent: Vec<u8>,
    },
}

/// What exists before the request: `{s}` in the path is the session's path,
/// `{id}` its id.
#[derive(Clone, Copy)]
enum Setup {
    None,
    /// An upload session in `repo` holding `n` bytes (`b'p'` each).
    Session(usize),
    /// An upload session in `repo` that was committed.
    Committed,
}

#[derive(Clone, Copy)]
enum After {
    None,
    /// The setup session still exists and holds this many bytes.
    SessionSize(u64),
    /// The setup session no longer exists.
    SessionGone,
}

#[derive(Clone)]
struct Case {
    label: Option<String>,
    method: String,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Body,
    /// The whole request, verbatim (for framing the builder cannot express).
    raw: Option<Vec<u8>>,
    /// Shut the write side once the request is sent.
    half_close: bool,
    setup: Setup,
    status: u16,
    /// The spec error code in the JSON body, when one is expected.
    code: Option<&'static str>,
    /// The row may change stored content (else it is checked unchanged).
    stores: bool,
    after: After,
    response_header: Option<&'static str>,
}

fn req(method: &str, path: impl Into<String>) -> Case {
    Case {
        label: None,
        method: method.to_owned(),
        path: path.into(),
        headers: Vec::new(),
        body: Body::None,
        raw: None,
        half_close: false,
        setup: Setup::None,
        status: 0,
        code: None,
        stores: false,
        after: After::None,
        response_header: None,
    }
}

/// A request given byte for byte.
fn raw(label: &str, bytes: impl Into<Vec<u8>>) -> Case {
    let mut case = req("RAW", "");
    case.label = Some(label.to_owned());
    case.raw = Some(bytes.into());
    case
}

impl Case {
    /// The status and the spec error code expected.
    fn expect(mut self, status: u16, code: &'static str) -> Self {
        self.status = status;
        self.code = Some(code);
        self
    }

    /// A status only (success, or an error hyper answers without a JSON body).
    fn status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.to_owned(), value.as_ref().to_vec()));
        self
    }

    fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Body::Fixed(body.into());
        self
    }

    fn chunked(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Body::Chunked(body.into());
        self
    }

    fn raw_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Body::Raw(body.into());
        self
    }

    fn stalled(mut self, declared: u64, sent: impl Into<Vec<u8>>) -> Self {
        self.body = Body::Stalled {
            declared,
            sent: sent.into(),
        };
        self
    }

    fn manifest(self, media_type: &str, body: impl Into<Vec<u8>>) -> Self {
        self.header("Content-Type", media_type).body(body)
    }

    fn half_close(mut self) -> Self {
        self.half_close = true;
        self
    }

    fn session(mut self, prefill: usize) -> Self {
        self.setup = Setup::Session(prefill);
        self
    }

    fn committed(mut self) -> Self {
        self.setup = Setup::Committed;
        self
    }

    fn stores(mut self) -> Self {
        self.stores = true;
        self
    }

    fn then_size(mut self, size: u64) -> Self {
        self.after = After::SessionSize(size);
        self
    }

    fn then_gone(mut self) -> Self {
        self.after = After::SessionGone;
        self
    }

    fn with_response_header(mut self, name: &'static str) -> Self {
        self.response_header = Some(name);
        self
    }

    fn describe(&self) -> String {
        if let Some(label) = &self.label {
            return label.clone();
        }
        let mut text = format!("{} {}", self.method, self.path);
        for (name, value) in &self.headers {
            text.push_str(&format!(" [{name}: {}]", String::from_utf8_lossy(value)));
        }
        match &self.body {
            Body::None => {}
            Body::Fixed(b) => text.push_str(&format!(" +{}B", b.len())),
            Body::Chunked(b) => text.push_str(&format!(" +{}B chunked", b.len())),
            Body::Raw(b) => text.push_str(&format!(" +{}B raw", b.len())),
            Body::Stalled { declared, sent } => {
                text.push_str(&format!(" +{}/{declared}B stalled", sent.len()))
            }
        }
        if text.len() > 160 {
            let mut end = 160;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push('…');
        }
        text
    }

    /// The request bytes, and whether the client stalls after them.
    fn bytes(&self, addr: SocketAddr, path: &str) -> Vec<u8> {
        if let Some(raw) = &self.raw {
            return raw.clone();
        }
        let mut out = format!(
            "{} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n",
            self.method
        )
        .into_bytes();
        let has = |name: &str| {
            self.headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case(name))
        };
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        let body: Vec<u8> = match &self.body {
            Body::None => {
                if !has("content-length") {
                    out.extend_from_slice(b"Content-Length: 0\r\n");
                }
                Vec::new()
            }
            Body::Fixed(body) => {
                if !has("content-length") {
                    out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
                }
                body.clone()
            }
            Body::Chunked(body) => {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
                chunked(body)
            }
            Body::Raw(body) => body.clone(),
            Body::Stalled { declared, sent } => {
                out.extend_from_slice(format!("Content-Length: {declared}\r\n").as_bytes());
                sent.clone()
            }
        };
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&body);
        out
    }
}

/// `body` in chunked transfer coding, 64 KiB a chunk.
fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 1000 + 16);
    for chunk in body.chunks(64 * 1024) {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

// ---------------------------------------------------------------------------
// The wire.

/// Sends `request` and reads until the server closes (or resets) the
/// connection. Writing and reading run together, so a server that answers
/// before it has read the whole body is seen answering; a write the server
/// refused by closing is not an error. The write side stays open until the
/// read ends, unless `half_close`.
async fn exchange(addr: SocketAddr, request: &[u8], half_close: bool) -> Vec<u8> {
    let stream = TcpStream::connect(addr)
        .await
        .expect("connect to the registry");
    let (mut rd, mut wr) = stream.into_split();
    let writer = async {
        let _ = wr.write_all(request).await;
        if half_close {
            let _ = wr.shutdown().await;
        }
        wr
    };
    let reader = async {
        let mut bytes = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
            }
        }
        bytes
    };
    let (wr, bytes) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(writer, reader)
    })
    .await
    .expect("the registry answers and closes within 60s");
    drop(wr);
    bytes
}

/// The first response in `bytes`; status 0 when the server sent none.
fn parse_response(bytes: &[u8]) -> RawResponse {
    let Some(split) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return RawResponse {
            status: 0,
            headers: Vec::new(),
            body: Vec::new(),
        };
    };
    let head = String::from_utf8_lossy(&bytes[..split]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &bytes[split + 4..];
    let length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let body = match length {
        Some(n) => rest[..n.min(rest.len())].to_vec(),
        None => rest.to_vec(),
    };
    RawResponse {
        status,
        headers,
        body,
    }
}

/// One request on a fresh connection, closed after.
async fn send(addr: SocketAddr, method: &str, path: &str) -> RawResponse {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    parse_response(&exchange(addr, request.as_bytes(), false).await)
}

/// Reads one whole response (head and `Content-Length` body) off a
/// connection that stays open.
async fn read_one_response(stream: &mut TcpStream) -> RawResponse {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await.expect("read a response");
        assert!(n > 0, "connection closed before a whole response");
        bytes.extend_from_slice(&buf[..n]);
        if let Some(split) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            let response = parse_response(&bytes);
            let length = response
                .header("content-length")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if bytes.len() >= split + 4 + length {
                return response;
            }
        }
    }
}

/// Reads until the server closes the connection; how long it took from `since`.
async fn time_to_close(stream: &mut TcpStream, since: Instant, limit: Duration) -> Duration {
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "connection still open after {limit:?}");
    since.elapsed()
}

// ---------------------------------------------------------------------------
// The runner and its invariants.

/// A registry whose storage root is `<tempdir>/root`, and the rows run on it.
struct Hostile {
    group: &'static str,
    registry: TestRegistry,
    /// `<tempdir>/root/docker/registry/v2`.
    layout: PathBuf,
    /// Whether the layout's files are checked: not with the S3 backend,
    /// whose content is not below the root (the rows' statuses and codes
    /// are checked all the same).
    files: bool,
    cases: AtomicUsize,
}

impl Hostile {
    async fn start(group: &'static str, configure: impl FnOnce(&mut Config)) -> Self {
        let registry = TestRegistry::start_with(|config| {
            config.storage.root = config.storage.root.join("root");
            // Rows start many sessions; the upload caps have their own group.
            config.limits.max_uploads = 100_000;
            config.limits.max_uploads_per_client = 100_000;
            configure(config);
        })
        .await;
        let layout = registry.root().join("root/docker/registry/v2");
        let files = !common::s3_backend();
        assert!(!files || layout.is_dir(), "layout under <tempdir>/root");
        Self {
            group,
            registry,
            layout,
            files,
            cases: AtomicUsize::new(0),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.registry.addr()
    }

    /// A case that ran outside the table (a timing check) still counts.
    fn count(&self) {
        self.cases.fetch_add(1, Ordering::Relaxed);
    }

    fn done(&self) -> usize {
        let n = self.cases.load(Ordering::Relaxed);
        println!("hostile {}: {n} cases, all as expected", self.group);
        n
    }

    /// An upload session in `repo` holding `prefill` bytes; its path.
    async fn session(&self, prefill: usize) -> String {
        let url = self.registry.start_upload("repo").await;
        if prefill > 0 {
            let response = self
                .registry
                .http
                .patch(&url)
                .body(vec![b'p'; prefill])
                .send()
                .await
                .expect("PATCH reaches the registry");
            assert_eq!(response.status(), 202, "prefill the session");
        }
        // The path alone: with two replicas, the URL may name either.
        url.find("/v2/")
            .map_or(url.as_str(), |i| &url[i..])
            .to_owned()
    }

    async fn run(&self, cases: Vec<Case>) {
        for case in cases {
            self.check(case).await;
        }
    }

    /// Sends one row and checks its outcome and the invariants.
    async fn check(&self, case: Case) -> RawResponse {
        let label = format!("[{}] {}", self.group, case.describe());
        assert!(
            case.status != 0 && case.status < 500,
            "{label}: a row expects a 4xx or success"
        );
        let session = match case.setup {
            Setup::None => None,
            Setup::Session(prefill) => Some(self.session(prefill).await),
            Setup::Committed => {
                let session = self.session(0).await;
                let url = format!(
                    "{}?digest={}",
                    self.registry.url(&session),
                    sha256(b"committed")
                );
                let put = self.registry.http.put(url).body(&b"committed"[..]).send();
                assert_eq!(put.await.unwrap().status(), 201, "commit the setup session");
                Some(session)
            }
        };
        let path = match &session {
            Some(s) => case
                .path
                .replace("{s}", s)
                .replace("{id}", s.rsplit('/').next().unwrap_or("")),
            None => case.path.clone(),
        };
        let before = (!case.stores && self.files).then(|| snapshot(&self.layout));

        let mut bytes = case.bytes(self.addr(), &path);
        if let Some(s) = &session {
            bytes = replace_all(&bytes, b"{s}", s.as_bytes());
        }
        let response = parse_response(&exchange(self.addr(), &bytes, case.half_close).await);
        let text = String::from_utf8_lossy(&response.body).into_owned();
        assert!(
            response.status < 500,
            "{label}: server error {}: {text}",
            response.status
        );
        assert_eq!(
            response.status, case.status,
            "{label}: status (body: {text})"
        );
        if let Some(code) = case.code {
            let json: Value = serde_json::from_slice(&response.body)
                .unwrap_or_else(|e| panic!("{label}: error body is not JSON ({e}): {text}"));
            assert_eq!(
                json["errors"][0]["code"], code,
                "{label}: code (body: {text})"
            );
            expect_raw_error(&response, case.status, code);
        }
        if let Some(name) = case.response_header {
            assert!(response.header(name).is_some(), "{label}: no {name} header");
        }

        match (case.after, &session) {
            (After::None, _) => {}
            (After::SessionSize(size), Some(s)) => {
                let status = send(self.addr(), "GET", s).await;
                assert_eq!(status.status, 204, "{label}: the session still exists");
                let expected = format!("0-{}", size.saturating_sub(1));
                assert_eq!(
                    status.header("range"),
                    Some(expected.as_str()),
                    "{label}: the session holds {size} bytes"
                );
            }
            (After::SessionGone, Some(s)) => {
                let status = send(self.addr(), "GET", s).await;
                assert_eq!(status.status, 404, "{label}: the session is gone");
            }
            _ => panic!("{label}: an after-check needs a setup session"),
        }

        self.invariants(&label, before).await;
        self.count();
        response
    }

    /// The server answers, nothing left the root, stored content is unchanged.
    async fn invariants(&self, label: &str, before: Option<BTreeMap<String, String>>) {
        let base = send(self.addr(), "GET", "/v2/").await;
        assert_eq!(base.status, 200, "{label}: the registry still answers /v2/");
        if self.files {
            self.check_confined(label);
        }
        if let Some(before) = before {
            let after = snapshot(&self.layout);
            if before != after {
                let changed: Vec<_> = before
                    .iter()
                    .filter(|(k, v)| after.get(*k) != Some(v))
                    .map(|(k, _)| format!("- {k}"))
                    .chain(
                        after
                            .iter()
                            .filter(|(k, v)| before.get(*k) != Some(v))
                            .map(|(k, _)| format!("+ {k}")),
                    )
                    .collect();
                panic!("{label}: stored content changed:\n{}", changed.join("\n"));
            }
        }
    }

    /// Nothing beside the storage root in the tempdir, and no suspicious name in the layout.
    fn check_confined(&self, label: &str) {
        let top: Vec<String> = std::fs::read_dir(self.registry.root())
            .expect("read the tempdir")
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            top,
            ["root"],
            "{label}: only the storage root in its parent"
        );
        let registry_dir: Vec<String> = std::fs::read_dir(self.layout.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            registry_dir,
            ["v2"],
            "{label}: docker/registry holds only v2"
        );
        let mut layout_top: Vec<String> = std::fs::read_dir(&self.layout)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        layout_top.sort();
        assert_eq!(
            layout_top,
            ["_tmp", "blobs", "repositories"],
            "{label}: the layout's top level"
        );
        for path in walk(&self.layout) {
            let rel = path.strip_prefix(&self.layout).unwrap();
            for component in rel.components() {
                let c = component.as_os_str().to_string_lossy();
                let suspicious = matches!(c.as_ref(), ".." | "." | "etc" | "passwd" | "escape")
                    || c.contains(['\\', '%', '\0', ' ', '~'])
                    || c.chars().any(|ch| ch.is_ascii_uppercase());
                assert!(!suspicious, "{label}: suspicious path {}", rel.display());
            }
        }
    }
}

/// `haystack` with every `needle` replaced.
fn replace_all(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut i = 0;
    while i < haystack.len() {
        if haystack[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    out
}

/// Every file and directory below `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue; // removed meanwhile (an upload session ending)
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(path.clone());
            }
            out.push(path);
        }
    }
    out
}

/// Path and SHA-256 of every file (and every directory) below `blobs/` and
/// `repositories/`, upload sessions excluded.
fn snapshot(layout: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for top in ["blobs", "repositories"] {
        for path in walk(&layout.join(top)) {
            let rel = path.strip_prefix(layout).unwrap();
            if rel.components().any(|c| c.as_os_str() == "_uploads") {
                continue;
            }
            let key = rel.to_string_lossy().into_owned();
            if path.is_dir() {
                out.insert(key, "dir".to_owned());
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.insert(key, sha256(&bytes));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The groups.

/// `repo` holds an image tagged `v1`; returns it.
async fn seed(h: &Hostile) -> Image {
    let image = Image::random();
    h.registry.push_image("repo", "v1", &image).await;
    image
}

const UUID: &str = "0123abcd-0000-4000-8000-000000000000";

async fn names() -> usize {
    let h = Hostile::start("names", |_| {}).await;
    let image = seed(&h).await;
    let blob = sha256(&image.config);
    let mut cases = Vec::new();

    // Bad names, on every route kind.
    let components_256 = format!("{}/abcd", vec!["abc"; 63].join("/"));
    assert_eq!(components_256.len(), 256);
    let bad_names: Vec<String> = [
        "..",
        "../etc",
        "../../etc",
        "../../../../etc",
        "../escape",
        "%2e%2e/%2e%2e/etc",
        "a%2f..%2fb",
        "x/../y",
        "x/..",
        "%2e%2e",
        "%2E%2E/etc",
        "%2e%2e%2f%2e%2e%2fetc",
        "..%2fetc",
        "x/..%2f..%2fescape",
        "/etc/passwd",
        "//etc/passwd",
        "a%00b",
        "x/%00",
        "a%5cb",
        "..%5c..%5cetc",
        "a\\b",
        "..\\..\\etc",
        "a%2fb",
        "A",
        "Upper/case",
        "a//b",
        "a/",
        "-a",
        ".a",
        "a/-b",
        "a/.b",
        ".",
        "x/./y",
        "a%20b",
        "~root",
        "a___b",
        "a.",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        "a".repeat(256),
        components_256,
        "a".repeat(8000),
        format!("{}/..", "a".repeat(250)),
    ])
    .collect();
    for n in &bad_names {
        let name_invalid = |case: Case| case.expect(400, "NAME_INVALID");
        cases.extend([
            name_invalid(req("GET", format!("/v2/{n}/manifests/latest"))),
            name_invalid(
                req("PUT", format!("/v2/{n}/manifests/v2"))
                    .manifest(OCI_MANIFEST, image.manifest.clone()),
            ),
            name_invalid(req("DELETE", format!("/v2/{n}/manifests/{}", image.digest))),
            name_invalid(req("GET", format!("/v2/{n}/blobs/{blob}"))),
            name_invalid(req("DELETE", format!("/v2/{n}/blobs/{blob}"))),
            name_invalid(req("POST", format!("/v2/{n}/blobs/uploads/"))),
            name_invalid(
                req(
                    "POST",
                    format!("/v2/{n}/blobs/uploads/?digest={}", sha256(b"x")),
                )
                .body("x"),
            ),
            name_invalid(req(
                "POST",
                format!("/v2/{n}/blobs/uploads/?mount={blob}&from=repo"),
            )),
            name_invalid(req("PATCH", format!("/v2/{n}/blobs/uploads/{{id}}")).body("chunk"))
                .session(3)
                .then_size(3),
            name_invalid(req(
                "PUT",
                format!("/v2/{n}/blobs/uploads/{{id}}?digest={}", sha256(b"ppp")),
            ))
            .session(3)
            .then_size(3),
            name_invalid(req("GET", format!("/v2/{n}/tags/list"))),
            name_invalid(req("GET", format!("/v2/{n}/referrers/{}", image.digest))),
        ]);
    }
    // A valid name elsewhere does not make `from` safe.
    for from in [
        "..",
        "%2e%2e",
        "../etc",
        "..%2fetc",
        "Repo",
        "/etc/passwd",
        "a//b",
    ] {
        cases.push(
            req(
                "POST",
                format!("/v2/repo/blobs/uploads/?mount={blob}&from={from}"),
            )
            .expect(400, "NAME_INVALID"),
        );
    }
    // Paths that climb out of /v2 altogether are no route.
    for path in [
        "//etc/passwd",
        "/v2/../../../../etc/passwd",
        "/v2/repo/blobs/uploads/../../../etc",
        "/../v2/",
        "/v2/repo/manifests/latest/../../../etc/passwd",
        "/v2/repo/tags/list/",
    ] {
        cases.push(req("GET", path).expect(404, "UNSUPPORTED"));
    }
    // Pagination parameters.
    for path in [
        "/v2/_catalog?n=-1",
        "/v2/_catalog?n=18446744073709551616",
        "/v2/_catalog?n=1e3",
        "/v2/repo/tags/list?n=%00",
    ] {
        cases.push(req("GET", path).expect(400, "UNSUPPORTED"));
    }
    for path in [
        "/v2/_catalog?n=18446744073709551615",
        "/v2/_catalog?last=..%2f..%2fetc",
        "/v2/_catalog?last=%ff%fe",
        "/v2/repo/tags/list?n=0&last=%00",
        "/v2/repo/tags/list?n=1&n=-1",
    ] {
        cases.push(req("GET", path).status(200));
    }
    // A NUL or a space in the request line is not HTTP: hyper answers 400.
    for (label, line) in [
        (
            "raw NUL in the path",
            &b"GET /v2/a\0b/tags/list HTTP/1.1\r\n"[..],
        ),
        (
            "raw space in the path",
            b"GET /v2/a b/tags/list HTTP/1.1\r\n",
        ),
        (
            "raw DEL in the path",
            b"GET /v2/a\x7fb/tags/list HTTP/1.1\r\n",
        ),
    ] {
        let mut bytes = line.to_vec();
        bytes.extend_from_slice(b"Host: x\r\nConnection: close\r\n\r\n");
        cases.push(raw(label, bytes).status(400));
    }

    // Tags: the reference is percent-decoded, then must be a tag or a digest.
    for tag in [
        "..",
        "%2e%2e",
        "..%2f..%2fetc%2fpasswd",
        "%2fetc%2fpasswd",
        "a%2fb",
        "a%00",
        "a%5cb",
        "a\\b",
        "-x",
        ".x",
        "%2ex",
        "a%20b",
        "caf%C3%A9",
    ] {
        // A read of a reference no manifest can have is unknown, as the
        // conformance suite (and Distribution) has it; a write is invalid.
        cases.push(req("GET", format!("/v2/repo/manifests/{tag}")).expect(404, "MANIFEST_UNKNOWN"));
        cases.push(req("HEAD", format!("/v2/repo/manifests/{tag}")).status(404));
        cases.push(
            req("PUT", format!("/v2/repo/manifests/{tag}"))
                .manifest(OCI_MANIFEST, image.manifest.clone())
                .expect(400, "MANIFEST_INVALID"),
        );
        cases.push(
            req("DELETE", format!("/v2/repo/manifests/{tag}")).expect(400, "MANIFEST_INVALID"),
        );
    }
    let long_tag = "t".repeat(129);
    cases.push(
        req("PUT", format!("/v2/repo/manifests/{long_tag}"))
            .manifest(OCI_MANIFEST, image.manifest.clone())
            .expect(400, "MANIFEST_INVALID"),
    );

    // Upload ids: only the canonical UUID the server issued names a session.
    for id in [
        "..%2f..%2fetc",
        "%2e%2e",
        "..",
        "{id}%00",
        "%7B{id}%7D",
        "urn:uuid:{id}",
        "{id}%2f..",
        "{id}.",
        &UUID.to_uppercase(),
    ] {
        for method in ["GET", "PATCH", "DELETE"] {
            cases.push(
                req(method, format!("/v2/repo/blobs/uploads/{id}"))
                    .body("chunk")
                    .session(2)
                    .then_size(2)
                    .expect(404, "BLOB_UPLOAD_UNKNOWN"),
            );
        }
    }
    h.run(cases).await;

    // The live session's id spelled another way (uppercase, no hyphens,
    // braces) is the same UUID but not the id the server issued: unknown.
    let spellings: [fn(&str) -> String; 3] = [
        |id| id.to_uppercase(),
        |id| id.replace('-', ""),
        |id| format!("{{{id}}}"),
    ];
    for spelling in spellings {
        let session = h.session(4).await;
        let id = session.rsplit('/').next().unwrap().to_owned();
        let other = spelling(&id);
        if other == id {
            continue; // an id without letters: uppercasing changes nothing
        }
        let case = req("PATCH", format!("/v2/repo/blobs/uploads/{other}"))
            .body("chunk")
            .expect(404, "BLOB_UPLOAD_UNKNOWN");
        h.check(case).await;
        let status = send(h.addr(), "GET", &session).await;
        assert_eq!(
            status.header("range"),
            Some("0-3"),
            "the live session is untouched"
        );
    }
    // A session is bound to its repository: another name cannot reach it.
    let session = h.session(5).await;
    let id = session.rsplit('/').next().unwrap();
    h.registry.push_blob("other", b"other").await;
    for method in ["GET", "PATCH", "DELETE"] {
        let case = req(method, format!("/v2/other/blobs/uploads/{id}"))
            .body("chunk")
            .expect(404, "BLOB_UPLOAD_UNKNOWN");
        h.check(case).await;
    }
    let case = req(
        "PUT",
        format!("/v2/other/blobs/uploads/{id}?digest={}", sha256(b"ppppp")),
    )
    .expect(404, "BLOB_UPLOAD_UNKNOWN");
    h.check(case).await;
    let status = send(h.addr(), "GET", &session).await;
    assert_eq!(
        status.header("range"),
        Some("0-4"),
        "the session in repo is untouched"
    );
    h.done()
}

async fn digests() -> usize {
    let h = Hostile::start("digests", |_| {}).await;
    let image = seed(&h).await;
    let hex = "a".repeat(64);
    let mut cases = Vec::new();
    // Digests that must be DIGEST_INVALID wherever a digest is expected.
    let bad: Vec<String> = vec![
        format!("md5:{}", "a".repeat(32)),
        format!("sha3:{hex}"),
        "sha3:".into(),
        format!("sha1:{}", "a".repeat(40)),
        format!("sha384:{}", "a".repeat(96)),
        "sha256:abc".into(),
        format!("sha256:{}", "a".repeat(65)),
        format!("sha256:{}", "a".repeat(63)),
        format!("sha512:{hex}"),
        format!("sha256:{}g", "a".repeat(63)),
        format!("sha256:{}", "A".repeat(64)),
        format!("SHA256:{hex}"),
        "sha256:".into(),
        format!(":{hex}"),
        format!("sha256:{hex}:{hex}"),
        format!("sha256::{hex}"),
        format!("sha256:{hex}%00"),
        format!("sha256:{hex}%20"),
        "sha256:%2e%2e%2f%2e%2e%2fetc%2fpasswd".into(),
        format!("sha256:{}", "a".repeat(10_000)),
        format!("sha256%3a{}g", "a".repeat(63)),
    ];
    let invalid = |case: Case| case.expect(400, "DIGEST_INVALID");
    for d in &bad {
        cases.extend([
            invalid(req("GET", format!("/v2/repo/blobs/{d}"))),
            invalid(req("DELETE", format!("/v2/repo/blobs/{d}"))),
            invalid(req("GET", format!("/v2/repo/referrers/{d}"))),
            invalid(req("POST", format!("/v2/repo/blobs/uploads/?digest={d}")).body("data")),
            invalid(req(
                "POST",
                format!("/v2/repo/blobs/uploads/?mount={d}&from=repo"),
            )),
            invalid(req("POST", format!("/v2/repo/blobs/uploads/?mount={d}"))),
            invalid(req("PUT", format!("{{s}}?digest={d}")).body("data"))
                .session(3)
                .then_size(3),
        ]);
        if d.contains(':') || d.contains("%3a") {
            cases.extend([
                invalid(req("GET", format!("/v2/repo/manifests/{d}"))),
                invalid(req("DELETE", format!("/v2/repo/manifests/{d}"))),
                invalid(
                    req("PUT", format!("/v2/repo/manifests/{d}"))
                        .manifest(OCI_MANIFEST, image.manifest.clone()),
                ),
            ]);
        }
    }
    // Empty and colon-less digests.
    let no_colon = format!("sha256{hex}");
    cases.extend([
        invalid(req("GET", "/v2/repo/blobs/")),
        invalid(req("DELETE", "/v2/repo/blobs/")),
        invalid(req("GET", "/v2/repo/referrers/")),
        invalid(req("POST", "/v2/repo/blobs/uploads/?digest=").body("data")),
        invalid(req("POST", "/v2/repo/blobs/uploads/?digest").body("data")),
        invalid(req("POST", "/v2/repo/blobs/uploads/?mount=&from=repo")),
        invalid(req("PUT", "{s}?digest=").body("data"))
            .session(3)
            .then_size(3),
        // The first `digest` wins: a second one cannot swap it.
        invalid(
            req(
                "PUT",
                format!("{{s}}?digest=md5:x&digest={}", sha256(b"pppdata")),
            )
            .body("data"),
        )
        .session(3)
        .then_size(3),
        invalid(req("GET", format!("/v2/repo/blobs/{no_colon}"))),
        invalid(req("GET", format!("/v2/repo/referrers/{no_colon}"))),
        invalid(req("POST", format!("/v2/repo/blobs/uploads/?digest={no_colon}")).body("data")),
        // An empty reference is no tag; a colon-less "digest" is a tag, and unknown.
        req("GET", "/v2/repo/manifests/").expect(404, "MANIFEST_UNKNOWN"),
        req("GET", format!("/v2/repo/manifests/{no_colon}")).expect(404, "MANIFEST_UNKNOWN"),
    ]);
    // A valid digest that does not match the content.
    let wrong = sha256(b"something else");
    cases.extend([
        invalid(req("POST", format!("/v2/repo/blobs/uploads/?digest={wrong}")).body("data")),
        invalid(
            req("PUT", format!("/v2/repo/manifests/{wrong}"))
                .manifest(OCI_MANIFEST, image.manifest.clone()),
        ),
        invalid(
            req(
                "PUT",
                format!("/v2/repo/manifests/{}", common::sha512(b"x")),
            )
            .manifest(OCI_MANIFEST, image.manifest.clone()),
        ),
    ]);
    h.run(cases).await;
    h.done()
}

async fn content_range() -> usize {
    let h = Hostile::start("content-range", |_| {}).await;
    let image = seed(&h).await;
    let blob = sha256(&image.layers[0]);
    let ten = vec![b'c'; 10];
    let out_of_order = |case: Case| case.expect(416, "BLOB_UPLOAD_INVALID");
    let cases = vec![
        // Against a session already holding 10 bytes.
        out_of_order(req("PATCH", "{s}").header("Content-Range", "5-14").body(ten.clone()))
            .label("overlapping chunk 5-14 after 10 bytes")
            .session(10)
            .then_size(10),
        out_of_order(req("PATCH", "{s}").header("Content-Range", "20-29").body(ten.clone()))
            .label("chunk past a gap, 20-29 after 10 bytes")
            .session(10)
            .then_size(10),
        out_of_order(req("PATCH", "{s}").header("Content-Range", "0-9").body(ten.clone()))
            .label("the first chunk repeated, 0-9 after 10 bytes")
            .session(10)
            .then_size(10),
        out_of_order(req("PATCH", "{s}").header("Content-Range", "18446744073709551614-18446744073709551615").body("ab"))
            .session(10)
            .then_size(10)
            .with_response_header("range"),
        req("PATCH", "{s}")
            .header("Content-Range", "10-19")
            .body(ten.clone())
            .status(202)
            .label("control: the next chunk, 10-19 after 10 bytes")
            .session(10)
            .then_size(20),
        // Content-Range and Content-Length disagree.
        req("PATCH", "{s}")
            .header("Content-Range", "10-19")
            .body(vec![b'c'; 5])
            .expect(416, "SIZE_INVALID")
            .label("Content-Range 10-19 with Content-Length 5")
            .session(10)
            .then_size(10),
        req("PATCH", "{s}")
            .header("Content-Range", "10-14")
            .body(ten.clone())
            .expect(416, "SIZE_INVALID")
            .label("Content-Range 10-14 with Content-Length 10")
            .session(10)
            .then_size(10),
        req("PUT", format!("{{s}}?digest={}", sha256(b"x")))
            .header("Content-Range", "10-14")
            .body(ten.clone())
            .expect(416, "SIZE_INVALID")
            .label("final PUT: Content-Range 10-14 with Content-Length 10")
            .session(10)
            .then_size(10),
        // A chunked body longer or shorter than its Content-Range.
        req("PATCH", "{s}")
            .header("Content-Range", "10-14")
            .chunked(ten.clone())
            .expect(400, "SIZE_INVALID")
            .label("Content-Range 10-14, chunked body of 10")
            .session(10)
            .then_size(10),
        req("PATCH", "{s}")
            .header("Content-Range", "10-19")
            .chunked(vec![b'c'; 5])
            .expect(400, "SIZE_INVALID")
            .label("Content-Range 10-19, chunked body of 5")
            .session(10)
            .then_size(10),
        // Overflowing and malformed ranges, on an empty session.
        out_of_order(req("PATCH", "{s}").header("Content-Range", "0-18446744073709551615").body("a"))
            .session(0)
            .then_size(0),
        out_of_order(req("PATCH", "{s}").header("Content-Range", "18446744073709551615-18446744073709551616").body("a"))
            .session(0)
            .then_size(0),
        out_of_order(req("PATCH", "{s}").header("Content-Range", "99999999999999999999999-0").body("a"))
            .session(0)
            .then_size(0),
        out_of_order(req("PATCH", "{s}").header("Content-Range", "5-3").body("abc"))
            .session(0)
            .then_size(0),
        out_of_order(req("PATCH", "{s}").header("Content-Range", "-1-2").body("abcd"))
            .session(0)
            .then_size(0),
        out_of_order(req("PATCH", "{s}").header("Content-Range", "0--1").body("a"))
            .session(0)
            .then_size(0),
        out_of_order(req("PATCH", "{s}").header("Content-Range", "abc").body("a"))
            .session(0)
            .then_size(0),
        out_of_order(req("PATCH", "{s}").header("Content-Range", "0-").body("a"))
            .session(0)
            .then_size(0),
        out_of_order(req("PATCH", "{s}").header("Content-Range", "3").body("a"))
            .session(0)
            .then_size(0),
        out_of_order(req("PATCH", "{s}").header("Content-Range", "").body("a"))
            .session(0)
            .then_size(0),
        out_of_order(req("PATCH", "{s}").header("Content-Range", "0x0-0x5").body("abcdef"))
            .session(0)
            .then_size(0),
        out_of_order(req("PATCH", "{s}").header("Content-Range", "bytes 1-6/*").body("abcdef"))
            .session(0)
            .then_size(0),
        // Distribution's `bytes ` form is accepted (as documented in ranges.rs).
        req("PATCH", "{s}")
            .header("Content-Range", "bytes 0-5")
            .body("abcdef")
            .status(202)
            .session(0)
            .then_size(6),
        // Two Content-Range fields: the first is the one used.
        out_of_order(
            req("PATCH", "{s}")
                .header("Content-Range", "0-9")
                .header("Content-Range", "10-19")
                .body(ten.clone()),
        )
        .session(10)
        .then_size(10),
        // A body longer than its Content-Length: the extra bytes are not
        // this request's, and never reach the session.
        req("PATCH", "{s}")
            .header("Content-Length", "5")
            .raw_body(b"12345EXTRA-BYTES-NOT-STORED".to_vec())
            .status(202)
            .label("Content-Length 5, 27 bytes sent")
            .session(10)
            .then_size(15),
        req("PATCH", "{s}")
            .header("Content-Length", "5")
            .raw_body(b"12345PATCH /v2/repo/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc".to_vec())
            .status(202)
            .label("Content-Length 5, a second PATCH smuggled after the body")
            .session(10)
            .then_size(15),
        // A body cut short: the client closes before Content-Length bytes.
        req("PATCH", "{s}")
            .header("Content-Length", "100")
            .raw_body(vec![b'c'; 40])
            .half_close()
            .expect(400, "BLOB_UPLOAD_INVALID")
            .label("Content-Length 100, 40 bytes, then EOF")
            .session(10)
            .then_size(10),
        req("PATCH", "{s}")
            .header("Transfer-Encoding", "chunked")
            .raw_body(b"a\r\n0123456789\r\n5\r\n01".to_vec())
            .half_close()
            .expect(400, "BLOB_UPLOAD_INVALID")
            .label("chunked body cut mid-chunk, then EOF")
            .session(10)
            .then_size(10),
        // Sessions that are no more, or never were.
        req("PATCH", "{s}")
            .body("late")
            .expect(404, "BLOB_UPLOAD_UNKNOWN")
            .label("chunk to a committed session")
            .committed()
            .then_gone(),
        req("PATCH", "{s}")
            .header("Content-Range", "9-12")
            .body("late")
            .expect(404, "BLOB_UPLOAD_UNKNOWN")
            .label("ranged chunk to a committed session")
            .committed()
            .then_gone(),
        req("PUT", format!("{{s}}?digest={}", sha256(b"committed")))
            .expect(404, "BLOB_UPLOAD_UNKNOWN")
            .label("second commit of a committed session")
            .committed()
            .then_gone(),
        req("PATCH", format!("/v2/repo/blobs/uploads/{UUID}"))
            .header("Content-Range", "0-3")
            .body("abcd")
            .expect(404, "BLOB_UPLOAD_UNKNOWN"),
        req("PUT", format!("/v2/repo/blobs/uploads/{UUID}?digest={}", sha256(b"abcd")))
            .body("abcd")
            .expect(404, "BLOB_UPLOAD_UNKNOWN"),
        // A commit with the wrong digest stores nothing and ends the session.
        req("PUT", format!("{{s}}?digest={}", sha256(b"not the data")))
            .body(ten.clone())
            .expect(400, "DIGEST_INVALID")
            .label("commit with the wrong sha256")
            .session(10)
            .then_gone(),
        req("PUT", format!("{{s}}?digest={}", common::sha512(b"not the data")))
            .expect(400, "DIGEST_INVALID")
            .label("commit with the wrong sha512")
            .session(10)
            .then_gone(),
        req("PUT", format!("{{s}}?digest={}", sha256(&[b'p'; 10])))
            .header("Content-Range", "10-19")
            .body(ten.clone())
            .expect(400, "DIGEST_INVALID")
            .label("commit whose digest covers only the earlier chunks")
            .session(10)
            .then_gone(),
        // Broken framing of the body itself.
        raw(
            "PATCH with two different Content-Length fields",
            "PATCH {s} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
        )
        .status(400)
        .session(10)
        .then_size(10),
        raw(
            "PATCH with a negative Content-Length",
            "PATCH {s} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: -1\r\n\r\nabc",
        )
        .status(400)
        .session(10)
        .then_size(10),
        raw(
            "PATCH with a Content-Length past u64",
            "PATCH {s} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 18446744073709551616\r\n\r\nabc",
        )
        .status(400)
        .session(10)
        .then_size(10),
        raw(
            "PATCH with a chunk size past u64",
            "PATCH {s} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\nabc\r\n0\r\n\r\n",
        )
        .expect(400, "BLOB_UPLOAD_INVALID")
        .session(10)
        .then_size(10),
        raw(
            "PATCH with an unknown Transfer-Encoding",
            "PATCH {s} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: gzip\r\n\r\nabc",
        )
        .status(400)
        .session(10)
        .then_size(10),
        // Content-Length and Transfer-Encoding: chunked together: hyper
        // reads the chunked body (RFC 9112 6.3: the framing the smuggler
        // hoped would be ignored is the one used), never the 3 bytes.
        raw(
            "PATCH with both Content-Length: 3 and Transfer-Encoding: chunked",
            "PATCH {s} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        )
        .status(202)
        .session(10)
        .then_size(15),
        // Range on a blob GET: huge numbers clamp or are refused, never wrap.
        req("GET", "/v2/repo/blobs/{blob}")
            .header("Range", "bytes=0-18446744073709551615")
            .status(206),
        req("GET", "/v2/repo/blobs/{blob}")
            .header("Range", "bytes=-18446744073709551615")
            .status(206),
        req("GET", "/v2/repo/blobs/{blob}")
            .header("Range", "bytes=18446744073709551615-")
            .expect(416, "SIZE_INVALID"),
        req("GET", "/v2/repo/blobs/{blob}")
            .header("Range", "bytes=-0")
            .expect(416, "SIZE_INVALID"),
        req("GET", "/v2/repo/blobs/{blob}")
            .header("Range", "bytes=99999999999999999999-")
            .status(200),
        req("GET", "/v2/repo/blobs/{blob}")
            .header("Range", "bytes=5-3")
            .status(200),
        req("GET", "/v2/repo/blobs/{blob}")
            .header("Range", format!("bytes={}", vec!["0-0"; 5000].join(",")))
            .status(200),
        // A Content-Range the server cannot read as text is no license to
        // append the chunk wherever the session ends: refuse it.
        out_of_order(req("PATCH", "{s}").header("Content-Range", b"0-5\xff").body("abcdef"))
            .label("Content-Range with a non-ASCII byte")
            .session(3)
            .then_size(3),
    ];
    let cases = cases
        .into_iter()
        .map(|mut case| {
            case.path = case.path.replace("{blob}", &blob);
            case
        })
        .collect();
    h.run(cases).await;
    h.done()
}

async fn manifests() -> usize {
    let h = Hostile::start("manifests", |_| {}).await;
    let image = seed(&h).await;
    let other = Image::random();
    h.registry.push_image("elsewhere", "v1", &other).await;
    let config = descriptor(OCI_CONFIG, &image.config);
    let layer = descriptor(OCI_LAYER, &image.layers[0]);
    let to_vec = |v: Value| serde_json::to_vec(&v).unwrap();
    let index_of = |children: Vec<Value>| {
        to_vec(json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}))
    };
    let invalid = |case: Case| case.expect(400, "MANIFEST_INVALID");
    let put = |tag: &str| req("PUT", format!("/v2/repo/manifests/{tag}"));
    let mut cases = Vec::new();

    // Size: the cap is 4 MiB by default.
    let pad = |target: usize| {
        let base = to_vec(json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config,
            "layers": [layer], "annotations": {"pad": ""},
        }));
        to_vec(json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config,
            "layers": [layer], "annotations": {"pad": "x".repeat(target - base.len())},
        }))
    };
    let at_cap = pad(MANIFEST_CAP);
    assert_eq!(at_cap.len(), MANIFEST_CAP);
    let over_cap = pad(MANIFEST_CAP + 1);
    cases.extend([
        put("big")
            .header("Content-Type", OCI_MANIFEST)
            .stalled(MANIFEST_CAP as u64 + 1, over_cap[..4096].to_vec())
            .expect(413, "MANIFEST_INVALID")
            .label("manifest declaring 4 MiB + 1 (refused before the body)"),
        put("big")
            .header("Content-Type", OCI_MANIFEST)
            .stalled(1 << 62, b"{".to_vec())
            .expect(413, "MANIFEST_INVALID")
            .label("manifest declaring Content-Length 2^62"),
        put("big")
            .header("Content-Type", OCI_MANIFEST)
            .chunked(over_cap.clone())
            .expect(413, "MANIFEST_INVALID")
            .label("manifest of 4 MiB + 1, chunked (no Content-Length)"),
        put("big")
            .manifest(OCI_MANIFEST, at_cap)
            .status(201)
            .stores()
            .label("manifest of exactly 4 MiB is accepted"),
    ]);

    cases.push(
        put("short")
            .header("Content-Type", OCI_MANIFEST)
            .header("Content-Length", "1000")
            .raw_body(image.manifest[..10].to_vec())
            .half_close()
            .expect(400, "MANIFEST_INVALID")
            .label("manifest body cut short (EOF before Content-Length)"),
    );

    // Not JSON, or not a manifest.
    let deep = |depth: usize| {
        let mut text = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","x":"#);
        text.push_str(&"[".repeat(depth));
        text.push_str(&"]".repeat(depth));
        text.push('}');
        text.into_bytes()
    };
    let deep_objects = {
        let mut text = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","x":"#);
        text.push_str(&r#"{"a":"#.repeat(50_000));
        text.push('1');
        text.push_str(&"}".repeat(50_000));
        text.push('}');
        text.into_bytes()
    };
    for (label, body) in [
        ("empty body", Vec::new()),
        ("not JSON", b"not json".to_vec()),
        ("truncated JSON", br#"{"schemaVersion":2,"#.to_vec()),
        ("JSON null", b"null".to_vec()),
        ("JSON array", b"[]".to_vec()),
        ("JSON string", b"\"manifest\"".to_vec()),
        ("JSON object, empty", b"{}".to_vec()),
        ("trailing garbage after the manifest", {
            let mut b = image.manifest.clone();
            b.extend_from_slice(b" garbage");
            b
        }),
        ("two manifests back to back", {
            let mut b = image.manifest.clone();
            b.extend_from_slice(&image.manifest);
            b
        }),
        ("invalid UTF-8 in a string", {
            let mut b = br#"{"schemaVersion":2,"mediaType":""#.to_vec();
            b.extend_from_slice(b"\xff\xfe");
            b.extend_from_slice(br#""}"#);
            b
        }),
        ("a lone UTF-16 surrogate escape", br#"{"schemaVersion":2,"annotations":{"a":"\ud800"}}"#.to_vec()),
        ("NUL byte outside a string", b"{\0}".to_vec()),
        ("arrays nested 100 000 deep", deep(100_000)),
        ("arrays nested 200 deep", deep(200)),
        ("objects nested 50 000 deep", deep_objects),
        ("schemaVersion as a string", br#"{"schemaVersion":"2","config":{},"layers":[]}"#.to_vec()),
        ("schemaVersion 1e400", br#"{"schemaVersion":1e400}"#.to_vec()),
        ("schemaVersion 3", to_vec(json!({"schemaVersion": 3, "mediaType": OCI_MANIFEST, "config": config, "layers": []}))),
        ("no schemaVersion", to_vec(json!({"mediaType": OCI_MANIFEST, "config": config, "layers": []}))),
        ("unknown mediaType", to_vec(json!({"schemaVersion": 2, "mediaType": "application/vnd.evil+json", "config": config, "layers": []}))),
        ("image manifest without layers", to_vec(json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config}))),
        ("image manifest listing manifests", to_vec(json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [], "manifests": []}))),
        ("index with a config", to_vec(json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "config": config, "manifests": []}))),
        ("descriptor with an md5 digest", to_vec(json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {"mediaType": OCI_CONFIG, "digest": format!("md5:{}", "a".repeat(32)), "size": 1}, "layers": []}))),
        ("descriptor with a traversal digest", to_vec(json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {"mediaType": OCI_CONFIG, "digest": "sha256:../../../../etc/passwd", "size": 1}, "layers": []}))),
        ("descriptor with a negative size", to_vec(json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {"mediaType": OCI_CONFIG, "digest": sha256(&image.config), "size": -1}, "layers": []}))),
        ("descriptor with a size past u64", format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_CONFIG}","digest":"{}","size":18446744073709551616}},"layers":[]}}"#, sha256(&image.config)).into_bytes()),
        ("descriptor without a digest", to_vec(json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {"mediaType": OCI_CONFIG, "size": 1}, "layers": []}))),
        ("layers as an object", to_vec(json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": {"0": layer}}))),
    ] {
        cases.push(invalid(put("bad").manifest(OCI_MANIFEST, body)).label(label));
    }

    // Duplicate keys: serde's derived structs refuse a repeated field, so
    // a manifest cannot say one thing to the registry and another to a
    // client whose parser keeps the first (or last) value.
    let manifest_text = String::from_utf8(image.manifest.clone()).unwrap();
    let body_of = |s: String| s.into_bytes();
    for (label, body) in [
        (
            "duplicate mediaType (index, then manifest)",
            body_of(manifest_text.replacen('{', &format!(r#"{{"mediaType":"{OCI_INDEX}","#), 1)),
        ),
        (
            "duplicate schemaVersion",
            body_of(manifest_text.replacen('{', r#"{"schemaVersion":1,"#, 1)),
        ),
        (
            "duplicate layers (empty, then the real ones)",
            body_of(manifest_text.replacen('{', r#"{"layers":[],"#, 1)),
        ),
        (
            "duplicate config",
            body_of(manifest_text.replacen(
                '{',
                &format!(r#"{{"config":{},"#, descriptor(OCI_CONFIG, &other.config)),
                1,
            )),
        ),
        (
            "duplicate digest inside a descriptor",
            body_of(manifest_text.replacen(
                r#""digest":"#,
                &format!(r#""digest":"{}","digest":"#, sha256(&other.config)),
                1,
            )),
        ),
        (
            "duplicate annotations objects",
            body_of(manifest_text.replacen('{', r#"{"annotations":{},"annotations":{},"#, 1)),
        ),
    ] {
        cases.push(invalid(put("dup").manifest(OCI_MANIFEST, body)).label(label));
    }
    // Inside a map (annotations), a repeated key is JSON's last-wins, as Go's
    // encoding/json reads it too; the bytes are stored as sent.
    cases.push(
        put("dup-annotation")
            .manifest(
                OCI_MANIFEST,
                body_of(manifest_text.replacen(
                    '{',
                    r#"{"annotations":{"org.opencontainers.image.title":"one","org.opencontainers.image.title":"two"},"#,
                    1,
                )),
            )
            .status(201)
            .stores()
            .label("a repeated annotation key is accepted (last wins)"),
    );

    // Content-Type against mediaType, and schema1.
    let mut no_media_type: Value = serde_json::from_slice(&image.manifest).unwrap();
    no_media_type.as_object_mut().unwrap().remove("mediaType");
    let no_media_type = to_vec(no_media_type);
    let schema1 = to_vec(json!({
        "schemaVersion": 1, "name": "repo", "tag": "v1", "architecture": "amd64",
        "fsLayers": [{"blobSum": sha256(&image.layers[0])}],
        "history": [{"v1Compatibility": "{}"}],
    }));
    cases.extend([
        invalid(put("ct").manifest(OCI_INDEX, image.manifest.clone()))
            .label("Content-Type index, mediaType manifest"),
        invalid(put("ct").manifest(DOCKER_MANIFEST, image.manifest.clone()))
            .label("Content-Type docker manifest, mediaType OCI manifest"),
        invalid(put("ct").manifest(OCI_INDEX, no_media_type.clone()))
            .label("Content-Type index, no mediaType, image fields"),
        invalid(put("ct").manifest(DOCKER_MANIFEST, no_media_type.clone()))
            .label("Content-Type docker manifest, no mediaType in the body"),
        invalid(put("ct").manifest(SCHEMA1, schema1.clone())).label("schema1, signed"),
        invalid(put("ct").manifest(
            "application/vnd.docker.distribution.manifest.v1+json",
            schema1.clone(),
        ))
        .label("schema1, unsigned"),
        invalid(put("ct").manifest(OCI_MANIFEST, schema1.clone()))
            .label("schema1 body under an OCI Content-Type"),
        invalid(put("ct").manifest(SCHEMA1, image.manifest.clone()))
            .label("schema2 body under a schema1 Content-Type"),
        invalid(put("ct").manifest(
            OCI_MANIFEST,
            to_vec(json!({
                "schemaVersion": 2, "mediaType": SCHEMA1, "config": config, "layers": [],
            })),
        ))
        .label("schema1 mediaType in a schema2 body"),
        // A Content-Type that names no manifest type defers to the body.
        put("ct-text")
            .manifest("text/plain", image.manifest.clone())
            .status(201)
            .stores()
            .label("Content-Type text/plain, mediaType manifest: the body decides"),
    ]);

    // References that are not there.
    let absent = sha256(b"absent child");
    cases.extend([
        put("missing")
            .manifest(
                OCI_INDEX,
                index_of(vec![
                    json!({"mediaType": OCI_MANIFEST, "digest": absent, "size": 10}),
                ]),
            )
            .expect(400, "MANIFEST_BLOB_UNKNOWN")
            .label("index whose child is missing"),
        put("missing")
            .manifest(
                OCI_INDEX,
                index_of(vec![
                    image.descriptor(),
                    json!({"mediaType": OCI_INDEX, "digest": absent, "size": 10}),
                ]),
            )
            .expect(400, "MANIFEST_BLOB_UNKNOWN")
            .label("index whose second child (an index) is missing"),
        put("missing")
            .manifest(
                OCI_INDEX,
                index_of(vec![descriptor(OCI_MANIFEST, &image.config)]),
            )
            .expect(400, "MANIFEST_BLOB_UNKNOWN")
            .label("index whose child is a blob, not a manifest"),
        put("missing")
            .manifest(OCI_INDEX, index_of(vec![other.descriptor()]))
            .expect(400, "MANIFEST_BLOB_UNKNOWN")
            .label("index whose child is in another repository"),
        put("missing")
            .manifest(
                OCI_MANIFEST,
                to_vec(json!({
                    "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config,
                    "layers": [descriptor(OCI_LAYER, b"absent layer")],
                })),
            )
            .expect(400, "MANIFEST_BLOB_UNKNOWN")
            .label("image whose layer is missing"),
        put("missing")
            .manifest(
                OCI_MANIFEST,
                to_vec(json!({
                    "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "config": descriptor(OCI_CONFIG, &other.config), "layers": [],
                })),
            )
            .expect(400, "MANIFEST_BLOB_UNKNOWN")
            .label("image whose config is in another repository"),
        put("missing")
            .manifest(
                OCI_MANIFEST,
                to_vec(json!({
                    "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config,
                    "layers": [image.descriptor()],
                })),
            )
            .expect(400, "MANIFEST_BLOB_UNKNOWN")
            .label("image whose layer is a manifest (not linked as a layer)"),
    ]);
    // serde skips an unknown field without recursing, so a valid manifest
    // carrying one nested 100 000 deep is stored and read back without stack
    // growth (known fields are typed, and refuse the first wrong bracket).
    let deep_unknown = manifest_text.replacen(
        '{',
        &format!(r#"{{"x":{}{},"#, "[".repeat(100_000), "]".repeat(100_000)),
        1,
    );
    cases.extend([
        put("deep-unknown")
            .manifest(OCI_MANIFEST, deep_unknown.into_bytes())
            .status(201)
            .stores()
            .label("valid manifest with an unknown field nested 100 000 deep"),
        req("GET", "/v2/repo/manifests/deep-unknown").status(200),
    ]);
    h.run(cases).await;

    // An index nested 100 deep: every level exists when it is pushed, so
    // each is accepted; checking a child is one link lookup, no recursion.
    let mut child = image.descriptor();
    for depth in 1..=100 {
        let body = index_of(vec![child.clone()]);
        let tag = format!("nest-{depth}");
        let case = put(&tag)
            .manifest(OCI_INDEX, body.clone())
            .status(201)
            .stores()
            .label(format!("index nested {depth} deep"));
        h.check(case).await;
        child = descriptor(OCI_INDEX, &body);
    }
    let top = h.registry.get("/v2/repo/manifests/nest-100").await;
    assert_eq!(top.status(), 200, "the top of the nest reads back");
    // A wide index: 10 000 children, all the same manifest.
    let wide = index_of(vec![image.descriptor(); 10_000]);
    assert!(wide.len() < MANIFEST_CAP);
    h.check(
        put("wide")
            .manifest(OCI_INDEX, wide)
            .status(201)
            .stores()
            .label("index listing one child 10 000 times"),
    )
    .await;
    h.done()
}

async fn heads() -> usize {
    let h = Hostile::start("heads", |_| {}).await;
    seed(&h).await;
    let request = |fields: &[String]| {
        let mut text = "GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".to_owned();
        for field in fields {
            text.push_str(field);
            text.push_str("\r\n");
        }
        text.push_str("\r\n");
        text.into_bytes()
    };
    let flood = |n: usize| {
        (0..n)
            .map(|i| format!("X-Flood-{i}: {i}"))
            .collect::<Vec<_>>()
    };
    let cases = vec![
        // Host and Connection are two of the 100 fields allowed.
        raw("100 header fields", request(&flood(98))).status(200),
        raw("101 header fields", request(&flood(99))).status(431),
        raw("10 000 header fields", request(&flood(10_000))).status(431),
        raw(
            "one 60 KiB header",
            request(&[format!("X-Big: {}", "b".repeat(60 * 1024))]),
        )
        .status(200),
        raw(
            "one 100 KiB header",
            request(&[format!("X-Big: {}", "b".repeat(100 * 1024))]),
        )
        .status(431),
        raw(
            "one 1 MiB header",
            request(&[format!("X-Big: {}", "b".repeat(1024 * 1024))]),
        )
        .status(431),
        raw(
            "80 headers of 1 KiB (80 KiB)",
            request(
                &(0..80)
                    .map(|i| format!("X-K{i}: {}", "k".repeat(1024)))
                    .collect::<Vec<_>>(),
            ),
        )
        .status(431),
        raw(
            "a 100 KiB header name",
            request(&[format!("X-{}: v", "n".repeat(100 * 1024))]),
        )
        .status(431),
        raw(
            "a 100 KiB request target",
            format!(
                "GET /v2/{}/tags/list HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                "a".repeat(100 * 1024)
            ),
        )
        .status(431),
        raw(
            "a 30 KiB name in the request target",
            format!(
                "GET /v2/{}/tags/list HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                "a".repeat(30 * 1024)
            ),
        )
        .expect(400, "NAME_INVALID"),
        raw(
            "a header line folded (obs-fold)",
            request(&["X-Fold: a\r\n b".to_owned()]),
        )
        .status(400),
        raw(
            "a NUL in a header value",
            request(&["X-Nul: a\0b".to_owned()]),
        )
        .status(400),
        raw(
            "a header without a colon",
            request(&["X-No-Colon".to_owned()]),
        )
        .status(400),
        raw(
            "a space before the colon",
            request(&["X-Space : v".to_owned()]),
        )
        .status(400),
        raw(
            "a TLS ClientHello on the plain port",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
        )
        .status(400),
        raw("garbage request line", b"\xff\xfe\xfd\r\n\r\n".to_vec()).status(400),
        raw(
            "unknown HTTP version",
            b"GET /v2/ HTTP/9.9\r\nHost: x\r\n\r\n".to_vec(),
        )
        .status(400),
        raw(
            "Content-Length u64::MAX (hyper's own bound)",
            b"PUT /v2/repo/manifests/x HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551615\r\n\r\n{".to_vec(),
        )
        .status(431),
    ];
    h.run(cases).await;
    // The HTTP/2 preface switches the connection to HTTP/2; junk after it
    // gets a GOAWAY (no HTTP/1 response): only the invariants are checked.
    let bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\njunk";
    let response = parse_response(&exchange(h.addr(), bytes, false).await);
    assert!(
        response.status < 500,
        "HTTP/2 preface then junk: {}",
        response.status
    );
    h.invariants("HTTP/2 preface then junk", None).await;
    h.count();
    h.done()
}

async fn slow_clients() -> usize {
    let h = Hostile::start("slow clients", |config| {
        config.limits.header_timeout = Duration::from_secs(1);
        config.limits.body_idle_timeout = Duration::from_secs(1);
    })
    .await;
    seed(&h).await;
    let addr = h.addr();

    // A head trickled one byte every 300 ms is cut off at about 1 s in all.
    for (label, head) in [
        (
            "trickled header field",
            "GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: ".to_owned() + &"s".repeat(100),
        ),
        (
            "trickled request line",
            "GET /v2/".to_owned() + &"a".repeat(100),
        ),
    ] {
        let started = Instant::now();
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut rd, mut wr) = stream.into_split();
        let reader = tokio::spawn(async move {
            let mut bytes = Vec::new();
            let mut buf = [0u8; 1024];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => return (started.elapsed(), bytes),
                    Ok(n) => bytes.extend_from_slice(&buf[..n]),
                }
            }
        });
        let mut sent = 0;
        for byte in head.bytes() {
            if reader.is_finished() || wr.write_all(&[byte]).await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{label}: still connected after 10s"
            );
        }
        let (closed_after, bytes) = reader.await.unwrap();
        assert!(
            closed_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(3),
            "{label}: closed after {closed_after:?} and {sent} bytes; expected about 1s"
        );
        let response = parse_response(&bytes);
        assert!(
            matches!(response.status, 0 | 408),
            "{label}: got {} instead of a close or a 408",
            response.status
        );
        h.invariants(label, None).await;
        h.count();
    }

    // A connection that never sends anything is closed at about 1 s.
    let started = Instant::now();
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let closed_after = time_to_close(&mut idle, started, Duration::from_secs(10)).await;
    assert!(
        closed_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(3),
        "a silent connection closed after {closed_after:?}; expected about 1s"
    );
    h.count();

    // An idle keep-alive connection is closed at about 1 s after its last response.
    let mut keep_alive = TcpStream::connect(addr).await.unwrap();
    keep_alive
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let first = read_one_response(&mut keep_alive).await;
    assert_eq!(first.status, 200, "keep-alive: first request");
    let answered = Instant::now();
    let closed_after = time_to_close(&mut keep_alive, answered, Duration::from_secs(10)).await;
    assert!(
        closed_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(3),
        "an idle keep-alive connection closed {closed_after:?} after its response; expected about 1s"
    );
    h.count();

    // A body that stalls: 408, the connection closed, the chunk not kept.
    let stalled = [
        req("PATCH", "{s}")
            .stalled(100, vec![b's'; 40])
            .expect(408, "BLOB_UPLOAD_INVALID")
            .with_response_header("connection")
            .label("PATCH: 40 of 100 bytes, then a stall")
            .session(10)
            .then_size(10),
        req("PATCH", "{s}")
            .header("Transfer-Encoding", "chunked")
            .raw_body(b"a\r\n0123456789\r\n".to_vec())
            .expect(408, "BLOB_UPLOAD_INVALID")
            .label("PATCH: one chunk of a chunked body, then a stall")
            .session(10)
            .then_size(10),
        req("PUT", format!("{{s}}?digest={}", sha256(b"x")))
            .stalled(100, vec![b's'; 40])
            .expect(408, "BLOB_UPLOAD_INVALID")
            .label("final PUT: 40 of 100 bytes, then a stall")
            .session(10)
            .then_size(10),
        req(
            "POST",
            format!("/v2/repo/blobs/uploads/?digest={}", sha256(&[b's'; 100])),
        )
        .stalled(100, vec![b's'; 40])
        .expect(408, "BLOB_UPLOAD_INVALID")
        .label("monolithic POST: 40 of 100 bytes, then a stall"),
        req("PUT", "/v2/repo/manifests/slow")
            .header("Content-Type", OCI_MANIFEST)
            .stalled(1000, b"{\"schemaVersion\":".to_vec())
            .expect(408, "BLOB_UPLOAD_INVALID")
            .label("manifest PUT: part of the body, then a stall"),
    ];
    for case in stalled {
        let label = case.describe();
        let started = Instant::now();
        let response = h.check(case).await;
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "{label}: answered after {took:?}; expected about 1s"
        );
        assert_eq!(response.header("connection"), Some("close"), "{label}");
    }
    let done = h.done();

    // 50 slow clients at once do not hold up anyone else.
    let h2 = Hostile::start("slow clients, 50 at once", |config| {
        config.limits.header_timeout = Duration::from_secs(10);
        config.limits.body_idle_timeout = Duration::from_secs(10);
    })
    .await;
    seed(&h2).await;
    let addr = h2.addr();
    let mut held = Vec::new();
    for i in 0..25 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(format!("GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow-{i}: ").as_bytes())
            .await
            .unwrap();
        held.push(stream);
    }
    for _ in 0..25 {
        let session = h2.session(10).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(
                format!(
                    "PATCH {session} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{}",
                    "s".repeat(100)
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        held.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for attempt in 0..5 {
        let started = Instant::now();
        let response = send(addr, "GET", "/v2/").await;
        let took = started.elapsed();
        assert_eq!(response.status, 200, "GET /v2/ with 50 slow clients");
        assert!(
            took < Duration::from_secs(1),
            "GET /v2/ #{attempt} took {took:?} with 50 slow clients"
        );
        h2.count();
    }
    let started = Instant::now();
    h2.check(
        req(
            "POST",
            format!("/v2/repo/blobs/uploads/?digest={}", sha256(b"fast")),
        )
        .body("fast")
        .status(201)
        .stores()
        .label("a push with 50 slow clients connected"),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the push was held up"
    );
    drop(held);
    done + h2.done()
}

async fn upload_limits() -> usize {
    let mut total = 0;

    let start = || req("POST", "/v2/repo/blobs/uploads/");
    let too_many = |case: Case| {
        case.expect(429, "TOO_MANY_REQUESTS")
            .with_response_header("retry-after")
    };
    let path_of = |r: &RawResponse| r.header("location").expect("Location").to_owned();

    // Blobs of at most 1 KiB.
    let h = Hostile::start("upload limits, blob size", |config| {
        config.limits.max_blob_bytes = Some(bytesize::ByteSize::b(1024));
    })
    .await;
    h.registry.push_blob("repo", b"seed").await;
    let size_invalid = |case: Case| case.expect(413, "SIZE_INVALID");
    let k1 = vec![b'k'; 1024];
    let k1_plus = vec![b'k'; 1025];
    let monolithic = |data: &[u8]| {
        req(
            "POST",
            format!("/v2/repo/blobs/uploads/?digest={}", sha256(data)),
        )
    };
    let prefix_and = |n: usize, tail: &[u8]| {
        let mut all = vec![b'p'; n];
        all.extend_from_slice(tail);
        sha256(&all)
    };
    let cases = vec![
        size_invalid(monolithic(&k1_plus).body(k1_plus.clone())).label("monolithic 1025 bytes"),
        size_invalid(monolithic(&k1_plus).chunked(k1_plus.clone()))
            .label("monolithic 1025 bytes, chunked"),
        size_invalid(monolithic(&k1_plus).stalled(10 << 30, vec![b'k'; 10]))
            .label("monolithic declaring 10 GiB (refused before the body)"),
        monolithic(&k1)
            .body(k1.clone())
            .status(201)
            .stores()
            .label("monolithic 1024 bytes"),
        size_invalid(req("PATCH", "{s}").body(vec![b'k'; 600]))
            .label("PATCH 600 after 600")
            .session(600)
            .then_size(600),
        size_invalid(req("PATCH", "{s}").chunked(vec![b'k'; 600]))
            .label("PATCH 600 after 600, chunked")
            .session(600)
            .then_size(600),
        size_invalid(
            req("PATCH", "{s}")
                .header("Content-Range", "600-1199")
                .body(vec![b'k'; 600]),
        )
        .label("PATCH 600-1199 after 600")
        .session(600)
        .then_size(600),
        size_invalid(req("PATCH", "{s}").body("k"))
            .label("PATCH 1 after 1024")
            .session(1024)
            .then_size(1024),
        req("PATCH", "{s}")
            .body(vec![b'k'; 424])
            .status(202)
            .label("PATCH up to exactly 1024")
            .session(600)
            .then_size(1024),
        size_invalid(
            req(
                "PUT",
                format!("{{s}}?digest={}", prefix_and(600, &[b'k'; 600])),
            )
            .body(vec![b'k'; 600]),
        )
        .label("final PUT of 600 after 600")
        .session(600)
        .then_size(600),
        size_invalid(
            req(
                "PUT",
                format!("{{s}}?digest={}", prefix_and(600, &[b'k'; 600])),
            )
            .chunked(vec![b'k'; 600]),
        )
        .label("final PUT of 600 after 600, chunked")
        .session(600)
        .then_size(600),
        req(
            "PUT",
            format!("{{s}}?digest={}", prefix_and(600, &[b'k'; 424])),
        )
        .body(vec![b'k'; 424])
        .status(201)
        .stores()
        .label("final PUT up to exactly 1024")
        .session(600)
        .then_gone(),
    ];
    h.run(cases).await;
    // Many chunks that each fit but together do not.
    let session = h.session(0).await;
    for i in 0..4 {
        h.check(
            req("PATCH", session.clone())
                .body(vec![b'c'; 256])
                .status(202)
                .label(format!("chunk {i} of 256")),
        )
        .await;
    }
    h.check(
        size_invalid(req("PATCH", session.clone()).body("c")).label("a 5th chunk past 1024 in all"),
    )
    .await;
    let status = send(h.addr(), "GET", &session).await;
    assert_eq!(
        status.header("range"),
        Some("0-1023"),
        "the session keeps its 1024 bytes"
    );
    total += h.done();

    // Two sessions on the whole registry.
    let h = Hostile::start("upload limits, in all", |config| {
        config.limits.max_uploads = 2;
        config.limits.max_uploads_per_client = 100;
    })
    .await;
    h.registry.push_blob("repo", b"seed").await;
    h.check(start().status(202)).await;
    h.check(start().status(202)).await;
    h.check(too_many(start()).label("3rd session in all")).await;
    total += h.done();

    // Three sessions per client.
    let h = Hostile::start("upload limits, per client", |config| {
        config.limits.max_uploads_per_client = 3;
    })
    .await;
    h.registry.push_blob("repo", b"seed").await;
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(path_of(&h.check(start().status(202)).await));
    }
    h.check(too_many(start()).label("4th session")).await;
    h.check(
        too_many(
            req(
                "POST",
                format!("/v2/repo/blobs/uploads/?digest={}", sha256(b"x")),
            )
            .body("x"),
        )
        .label("monolithic upload at the cap"),
    )
    .await;
    h.check(
        too_many(req(
            "POST",
            format!(
                "/v2/repo/blobs/uploads/?mount={}&from=repo",
                sha256(b"absent")
            ),
        ))
        .label("unmountable mount at the cap (would open a session)"),
    )
    .await;
    h.check(
        req(
            "POST",
            format!(
                "/v2/other/blobs/uploads/?mount={}&from=repo",
                sha256(b"seed")
            ),
        )
        .status(201)
        .stores()
        .label("a mount that succeeds needs no session"),
    )
    .await;
    h.check(req("PATCH", sessions[0].clone()).body("more").status(202))
        .await;
    h.check(req("DELETE", sessions[0].clone()).status(204))
        .await;
    sessions[0] = path_of(
        &h.check(
            start()
                .status(202)
                .label("a cancelled session frees its slot"),
        )
        .await,
    );
    h.check(too_many(start())).await;
    h.check(
        req("PUT", format!("{}?digest={}", sessions[1], sha256(b"")))
            .status(201)
            .stores(),
    )
    .await;
    sessions[1] = path_of(
        &h.check(
            start()
                .status(202)
                .label("a committed session frees its slot"),
        )
        .await,
    );
    h.check(too_many(start())).await;
    h.check(req("DELETE", sessions[0].clone()).status(204))
        .await;
    h.check(
        req(
            "POST",
            format!("/v2/repo/blobs/uploads/?digest={}", sha256(b"wrong")),
        )
        .body("data")
        .expect(400, "DIGEST_INVALID")
        .label("a failed monolithic upload (at cap - 1)"),
    )
    .await;
    sessions[0] = path_of(
        &h.check(
            start()
                .status(202)
                .label("a failed monolithic upload held no slot"),
        )
        .await,
    );
    h.check(too_many(start())).await;
    // A commit with the wrong digest ends the session (its files are
    // removed, `then_gone` in the content-range group): its slot is free.
    h.check(
        req(
            "PUT",
            format!("{}?digest={}", sessions[2], sha256(b"wrong")),
        )
        .body("data")
        .expect(400, "DIGEST_INVALID"),
    )
    .await;
    // (No GET on it here: a GET that finds it gone frees the slot, which
    // would hide a leak; the content-range group checks it is gone.)
    h.check(
        start()
            .status(202)
            .label("a session ended by a bad digest frees its slot"),
    )
    .await;
    h.check(too_many(start())).await;
    total += h.done();
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_requests_get_the_right_4xx_and_change_nothing() {
    // Each group on its own registry, all at once; a failing group does not
    // hide the others' failures.
    let groups = [
        ("names", tokio::spawn(names())),
        ("digests", tokio::spawn(digests())),
        ("content-range", tokio::spawn(content_range())),
        ("manifests", tokio::spawn(manifests())),
        ("heads", tokio::spawn(heads())),
        ("slow clients", tokio::spawn(slow_clients())),
        ("upload limits", tokio::spawn(upload_limits())),
    ];
    let mut total = 0;
    let mut failed = Vec::new();
    for (group, task) in groups {
        match task.await {
            Ok(n) => total += n,
            Err(_) => failed.push(group),
        }
    }
    assert!(
        failed.is_empty(),
        "hostile groups failed (see above): {failed:?}"
    );
    println!("hostile: {total} cases, all as expected");
}
