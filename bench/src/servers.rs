//! Starting the two registries, and what /proc tells about them.

use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hyper::Method;

use crate::client::{self, Conn};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// Portcullis with an empty policy chain.
    PortcullisBare,
    /// Portcullis with the three bundled policies.
    PortcullisPolicies,
    /// The three bundled policies plus `builtin:signature` on pulls, with
    /// the harness's P-256 key (`start_signed`; workload 4 only).
    PortcullisSigned,
    Distribution,
}

impl Kind {
    /// Accounts on (htpasswd with the user `bench`): the 3-policies server,
    /// whose anonymous callers the chain allows as before.
    pub fn accounts(self) -> bool {
        self == Kind::PortcullisPolicies
    }

    /// What start-up waits for a 200 on: with accounts on, `GET /v2/`
    /// without credentials answers 401, so `/healthz` (same router, served
    /// from the same moment).
    pub fn ready_path(self) -> &'static str {
        if self.accounts() {
            "/healthz"
        } else {
            "/v2/"
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Kind::PortcullisBare => "portcullis (no policies)",
            Kind::PortcullisPolicies => "portcullis (3 policies)",
            Kind::PortcullisSigned => "portcullis (3 + signature)",
            Kind::Distribution => "distribution",
        }
    }
}

/// The three bundled policies, set up so every request of the benchmark
/// (anonymous, or the user `bench` of group `devs` with a Bearer token;
/// repositories under `team-a/`, tag `latest`) is evaluated by all three and
/// allowed. The same chain as benches/policy.rs.
const POLICY_CHAIN: &str = r#"
[[policy.chain]]
name = "repo-allowlist"
module = "builtin:repo-allowlist"
settings = { push = ["team-a/**"], pull = ["**"], list = ["**"], delete = ["team-a/**"] }

[[policy.chain]]
name = "group-access"
module = "builtin:group-access"
settings = { groups = { devs = [{ repositories = ["team-a/**"], actions = ["push", "pull", "list"] }] }, anonymous = [{ repositories = ["**"], actions = ["pull", "list"] }, { repositories = ["team-a/**"], actions = ["push"] }] }

[[policy.chain]]
name = "immutable-releases"
module = "builtin:tag-immutability"
settings = { tags = ["v[0-9]*", "!*-rc*"] }
"#;

/// The account of the accounts-on server (`Kind::accounts`): user `bench`,
/// password `bench-pw`, in group `devs` (which group-access lets push, pull
/// and list `team-a/**`). Made with `htpasswd -nbB -C 4 bench bench-pw`.
const HTPASSWD: &str = "bench:$2y$04$hEL3GB6NjSW4lgFnfmmnQuz4LmKlCl5frVD21gp7RJysCcvz/lcRO\n";
const USER_PASSWORD: &[u8] = b"bench:bench-pw";

/// `Authorization` value with the user `bench`'s credentials.
pub fn basic_auth() -> String {
    format!("Basic {}", base64(USER_PASSWORD))
}

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A new Ed25519 signing key as PKCS#8 PEM (v1: the fixed prefix, then the
/// 32-byte seed), for `auth.token_key`, which the S3 backend requires.
fn token_key_pem() -> String {
    use rand::RngCore;
    let mut der = hex::decode("302e020100300506032b657004220420").expect("hex");
    let mut seed = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut seed);
    der.extend_from_slice(&seed);
    format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        base64(&der)
    )
}

pub struct Binaries {
    pub portcullis: PathBuf,
    pub distribution: Option<PathBuf>,
}

/// Where the servers keep content.
pub enum Storage {
    /// A fresh directory per server (`dir/storage`).
    Filesystem,
    /// One bucket of an S3 store, a key prefix per server.
    S3(S3Store),
}

/// The S3 store both servers use (bench/run.sh starts a Garage for it).
pub struct S3Store {
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    /// Portcullis's `storage.part_size` and Distribution's `chunksize`, in bytes.
    pub part_size: u64,
}

impl S3Store {
    /// The key prefix of the server whose files live in `dir`: `bench-` and
    /// the directory's name (`bench-p-policies`, `bench-distribution`, ...).
    pub fn prefix(dir: &Path) -> String {
        format!(
            "bench-{}",
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "server".into())
        )
    }
}

pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub struct Server {
    pub kind: Kind,
    pub addr: SocketAddr,
    pub pid: u32,
    pub log: PathBuf,
    child: Child,
}

/// A spawned server and how long it took to answer 200 on `Kind::ready_path`.
pub struct Started {
    pub server: Server,
    pub startup: Duration,
}

/// Writes the config of `kind` below `dir` (storage in `dir/storage`, or on
/// S3 under the prefix `S3Store::prefix(dir)`; the policy cache in `cache`)
/// and starts it.
pub async fn start(
    bins: &Binaries,
    storage_kind: &Storage,
    kind: Kind,
    dir: &Path,
    cache: Option<&Path>,
) -> Result<Started> {
    assert!(kind != Kind::PortcullisSigned, "use start_signed");
    start_inner(bins, storage_kind, kind, dir, cache, None).await
}

/// A `Kind::PortcullisSigned` server: the three bundled policies, then
/// `builtin:signature` on pulls trusting `public_key_pem` (SPKI PEM).
pub async fn start_signed(
    bins: &Binaries,
    storage_kind: &Storage,
    dir: &Path,
    public_key_pem: &str,
) -> Result<Started> {
    start_inner(
        bins,
        storage_kind,
        Kind::PortcullisSigned,
        dir,
        None,
        Some(public_key_pem),
    )
    .await
}

/// The signed server's chain entry after `POLICY_CHAIN`: every manifest
/// pull (by tag or digest) needs a cosign signature by `public_key_pem`.
fn signature_entry(public_key_pem: &str) -> String {
    // A TOML basic string: Rust's escaping of the PEM (`\n`) is TOML's.
    format!(
        "\n[[policy.chain]]\nname = \"signed\"\nmodule = \"builtin:signature\"\nactions = [\"pull\"]\nsettings = {{ keys = [{public_key_pem:?}] }}\n"
    )
}

async fn start_inner(
    bins: &Binaries,
    storage_kind: &Storage,
    kind: Kind,
    dir: &Path,
    cache: Option<&Path>,
    signature_key: Option<&str>,
) -> Result<Started> {
    fs::create_dir_all(dir)?;
    let storage = dir.join("storage");
    fs::create_dir_all(&storage)?;
    let port = free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let log = dir.join("server.log");
    let logfile = fs::File::create(&log)?;
    let mut cmd;
    match kind {
        Kind::PortcullisBare | Kind::PortcullisPolicies | Kind::PortcullisSigned => {
            let policy_dir = dir.join("policies");
            fs::create_dir_all(&policy_dir)?;
            let cache = cache
                .map(Path::to_path_buf)
                .unwrap_or(dir.join("policy-cache"));
            // With S3, `root` holds nothing but is required.
            let s3 = match storage_kind {
                Storage::Filesystem => String::new(),
                Storage::S3(s3) => format!(
                    "backend = \"s3\"\nendpoint = {:?}\nbucket = {:?}\nregion = {:?}\nprefix = {:?}\naccess_key_id = {:?}\nsecret_access_key = {:?}\npart_size = {}\n",
                    s3.endpoint,
                    s3.bucket,
                    s3.region,
                    S3Store::prefix(dir),
                    s3.access_key,
                    s3.secret_key,
                    s3.part_size
                ),
            };
            // Accounts: tokens valid for an hour (one is fetched per run of
            // workload 4); on S3 the token key must be a file.
            let auth = if kind.accounts() {
                let htpasswd = dir.join("htpasswd");
                fs::write(&htpasswd, HTPASSWD)?;
                let key = match storage_kind {
                    Storage::Filesystem => String::new(),
                    Storage::S3(_) => {
                        let key = dir.join("token.key");
                        fs::write(&key, token_key_pem())?;
                        format!("token_key = {key:?}\n")
                    }
                };
                format!(
                    "[auth]\nhtpasswd = {htpasswd:?}\ntoken_ttl = \"1h\"\n{key}\n[groups]\ndevs = [\"bench\"]\n\n"
                )
            } else {
                String::new()
            };
            let mut config = format!(
                "listen = \"{addr}\"\n\n[storage]\n{s3}root = {:?}\n\n{auth}[policy]\ndir = {:?}\ncache_dir = {:?}\n",
                storage, policy_dir, cache
            );
            if kind == Kind::PortcullisBare {
                config.push_str("chain = []\n");
            } else {
                config.push_str(POLICY_CHAIN);
            }
            if let Some(key) = signature_key {
                config.push_str(&signature_entry(key));
            }
            let path = dir.join("portcullis.toml");
            fs::write(&path, config)?;
            cmd = Command::new(&bins.portcullis);
            cmd.arg("serve").arg("--config").arg(&path);
            // The config file alone decides: no PORTCULLIS_* from the caller.
            for (k, _) in std::env::vars() {
                if k.starts_with("PORTCULLIS_") {
                    cmd.env_remove(k);
                }
            }
        }
        Kind::Distribution => {
            let bin = bins
                .distribution
                .as_ref()
                .context("docker-registry is not installed")?;
            // Debian's default config (/etc/docker/registry/config.yml), less
            // auth, on loopback and a temporary root; or its S3 driver, which
            // serves blob bytes itself (redirect disabled) as Portcullis does
            // by default.
            let driver = match storage_kind {
                Storage::Filesystem => format!(
                    "  filesystem:\n    rootdirectory: {}\n",
                    storage.display()
                ),
                Storage::S3(s3) => format!(
                    "  s3:\n    regionendpoint: {:?}\n    region: {:?}\n    bucket: {:?}\n    rootdirectory: {:?}\n    secure: {}\n    v4auth: true\n    chunksize: {}\n    accesskey: {:?}\n    secretkey: {:?}\n  redirect:\n    disable: true\n",
                    s3.endpoint,
                    s3.region,
                    s3.bucket,
                    format!("/{}", S3Store::prefix(dir)),
                    s3.endpoint.starts_with("https://"),
                    s3.part_size,
                    s3.access_key,
                    s3.secret_key
                ),
            };
            let config = format!(
                "version: 0.1\nlog:\n  fields:\n    service: registry\nstorage:\n  cache:\n    blobdescriptor: inmemory\n{driver}  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n  headers:\n    X-Content-Type-Options: [nosniff]\nhealth:\n  storagedriver:\n    enabled: true\n    interval: 10s\n    threshold: 3\n"
            );
            let path = dir.join("distribution.yml");
            fs::write(&path, config)?;
            cmd = Command::new(bin);
            cmd.arg("serve").arg(&path);
            // Distribution reads REGISTRY_* variables as configuration.
            for (k, _) in std::env::vars() {
                if k.starts_with("REGISTRY_") {
                    cmd.env_remove(k);
                }
            }
        }
    }
    if let Storage::S3(_) = storage_kind {
        // The config file alone decides how the store is reached: no AWS_*
        // from the caller (Distribution 2.8.2 panics at start-up on
        // AWS_CA_BUNDLE, LoadCustomCABundleError, and an AWS_PROFILE or
        // AWS_ENDPOINT_URL would be read by either).
        for (k, _) in std::env::vars() {
            if k.starts_with("AWS_") {
                cmd.env_remove(k);
            }
        }
    }
    cmd.stdin(Stdio::null())
        .stdout(logfile.try_clone()?)
        .stderr(logfile);
    let t0 = Instant::now();
    let child = cmd.spawn().with_context(|| format!("spawn {kind:?}"))?;
    let mut server = Server {
        kind,
        addr,
        pid: child.id(),
        log,
        child,
    };
    let startup = wait_ready(&mut server, t0, Duration::from_secs(120)).await?;
    Ok(Started { server, startup })
}

/// Polls GET `Kind::ready_path` (a new connection each time, every 2 ms) until 200.
async fn wait_ready(server: &mut Server, t0: Instant, limit: Duration) -> Result<Duration> {
    loop {
        if let Some(status) = server.child.try_wait()? {
            bail!(
                "{:?} exited ({status}) before answering; log: {}",
                server.kind,
                server.log.display()
            );
        }
        let mut conn = Conn::new(server.addr);
        if let Ok(resp) = conn
            .send(Method::GET, server.kind.ready_path(), &[], client::empty())
            .await
        {
            let ok = resp.status().as_u16() == 200;
            let _ = client::drain(resp).await;
            if ok {
                return Ok(t0.elapsed());
            }
        }
        if t0.elapsed() > limit {
            bail!("{:?} not ready after {limit:?}", server.kind);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// utime + stime of all threads of `pid`, in seconds.
pub fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    let rest = &stat[stat.rfind(')').map(|i| i + 1).unwrap_or(0)..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After "pid (comm)": state is field 3, utime 14, stime 15.
    let ticks: u64 = f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / hz
}

impl Server {
    /// utime + stime of all threads, in seconds.
    pub fn cpu_secs(&self) -> f64 {
        cpu_secs(self.pid)
    }

    /// A /proc/<pid>/status field in KiB (VmRSS, VmHWM).
    pub fn status_kib(&self, key: &str) -> u64 {
        status_kib(self.pid, key)
    }

    /// Resets VmHWM to the current RSS.
    pub fn reset_hwm(&self) -> bool {
        fs::write(format!("/proc/{}/clear_refs", self.pid), "5").is_ok()
    }
}

pub fn status_kib(pid: u32, key: &str) -> u64 {
    let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe {
            libc::kill(self.pid as i32, libc::SIGTERM);
        }
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Samples VmRSS of `pid` every 50 ms until stopped; returns the maximum in KiB.
pub struct RssSampler {
    stop: tokio::sync::watch::Sender<bool>,
    handle: tokio::task::JoinHandle<u64>,
}

impl RssSampler {
    pub fn start(pid: u32) -> Self {
        let (stop, mut rx) = tokio::sync::watch::channel(false);
        let handle = tokio::spawn(async move {
            let mut max = status_kib(pid, "VmRSS");
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tokio::select! {
                    _ = tick.tick() => max = max.max(status_kib(pid, "VmRSS")),
                    _ = rx.changed() => break,
                }
            }
            max.max(status_kib(pid, "VmRSS"))
        });
        Self { stop, handle }
    }

    pub async fn finish(self) -> u64 {
        let _ = self.stop.send(true);
        self.handle.await.unwrap_or(0)
    }
}

/// The Garage bench/run.sh started for the S3 mode (not our child): its CPU,
/// and the S3 requests its log shows (Garage logs one INFO line per request,
/// and one more per error response).
pub struct Garage {
    pub pid: u32,
    pub log: PathBuf,
}

/// Where Garage stood at the start of a measurement.
pub struct GarageMark {
    cpu: f64,
    log_len: u64,
}

/// What Garage did between a mark and now.
#[derive(Default)]
pub struct GarageUse {
    pub cpu_secs: f64,
    /// S3 requests received.
    pub requests: u64,
    /// Error responses by status ("404 Not Found": 3).
    pub errors: std::collections::BTreeMap<String, u64>,
    /// WARN and ERROR lines (first few kept).
    pub warnings: u64,
    pub first_warnings: Vec<String>,
}

impl GarageUse {
    pub fn errors_text(&self) -> String {
        if self.errors.is_empty() {
            return "no error responses".into();
        }
        let list: Vec<String> = self
            .errors
            .iter()
            .map(|(k, v)| format!("{v} x {k}"))
            .collect();
        format!("error responses: {}", list.join(", "))
    }

    pub fn add(&mut self, other: &GarageUse) {
        self.cpu_secs += other.cpu_secs;
        self.requests += other.requests;
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        self.warnings += other.warnings;
        for w in &other.first_warnings {
            if self.first_warnings.len() < 5 {
                self.first_warnings.push(w.clone());
            }
        }
    }
}

/// `s` without ANSI escape sequences (Garage colours its log).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters, ended by a letter.
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Garage {
    pub fn from_env() -> Option<Self> {
        let pid = std::env::var("BENCH_GARAGE_PID")
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let log = PathBuf::from(std::env::var("BENCH_GARAGE_LOG").ok()?);
        Some(Self { pid, log })
    }

    /// `garage --version` of the running binary.
    pub fn version(&self) -> String {
        fs::read_link(format!("/proc/{}/exe", self.pid))
            .ok()
            .and_then(|exe| Command::new(exe).arg("--version").output().ok())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "?".into())
    }

    pub fn alive(&self) -> bool {
        fs::metadata(format!("/proc/{}", self.pid)).is_ok()
    }

    pub fn rss_mib(&self) -> f64 {
        status_kib(self.pid, "VmRSS") as f64 / 1024.0
    }

    /// Waits (at most 10 s) until Garage uses at most one clock tick (10 ms
    /// at the usual 100 Hz, 5% of a core) over 200 ms; false if it never did.
    pub async fn settle(&self) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            let c0 = cpu_secs(self.pid);
            tokio::time::sleep(Duration::from_millis(200)).await;
            let used = cpu_secs(self.pid) - c0;
            if !used.is_finite() || used < 0.015 {
                return true;
            }
        }
        false
    }

    pub fn mark(&self) -> GarageMark {
        GarageMark {
            cpu: cpu_secs(self.pid),
            log_len: fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0),
        }
    }

    pub fn since(&self, mark: &GarageMark) -> GarageUse {
        let mut used = GarageUse {
            cpu_secs: cpu_secs(self.pid) - mark.cpu,
            ..Default::default()
        };
        let Ok(mut f) = fs::File::open(&self.log) else {
            return used;
        };
        let mut buf = Vec::new();
        use std::io::{Read, Seek, SeekFrom};
        if f.seek(SeekFrom::Start(mark.log_len)).is_err() || f.read_to_end(&mut buf).is_err() {
            return used;
        }
        // Only whole lines: a line being written now counts next time.
        let end = buf
            .iter()
            .rposition(|&b| b == b'\n')
            .map(|i| i + 1)
            .unwrap_or(0);
        for line in String::from_utf8_lossy(&buf[..end]).lines() {
            let line = strip_ansi(line);
            if let Some(rest) = line.split_once("generic_server: ").map(|x| x.1) {
                if let Some(err) = rest.strip_prefix("error ") {
                    // "error 404 Not Found, Key not found in response to ..."
                    let status = err.split(',').next().unwrap_or(err).trim().to_string();
                    *used.errors.entry(status).or_default() += 1;
                } else if rest.starts_with(|c: char| c.is_ascii_digit() || c == '[') {
                    used.requests += 1;
                }
            }
            if line.contains(" WARN ") || line.contains(" ERROR ") {
                used.warnings += 1;
                if used.first_warnings.len() < 5 {
                    used.first_warnings.push(line.chars().take(300).collect());
                }
            }
        }
        used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_basic_auth() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(basic_auth(), "Basic YmVuY2g6YmVuY2gtcHc=");
    }

    #[test]
    fn token_key_is_pkcs8() {
        let pem = token_key_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI"));
        assert_eq!(pem.lines().nth(1).map(str::len), Some(64));
    }
}
