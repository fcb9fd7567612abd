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
    Distribution,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::PortcullisBare => "portcullis (no policies)",
            Kind::PortcullisPolicies => "portcullis (3 policies)",
            Kind::Distribution => "distribution",
        }
    }
}

/// The three bundled policies, set up so every request of the benchmark
/// (anonymous, repositories under `team-a/`, tag `latest`) is evaluated by
/// all three and allowed. The same chain as benches/policy.rs.
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

pub struct Binaries {
    pub portcullis: PathBuf,
    pub distribution: Option<PathBuf>,
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

/// A spawned server and how long it took to answer 200 on /v2/.
pub struct Started {
    pub server: Server,
    pub startup: Duration,
}

/// Writes the config of `kind` below `dir` (storage in `dir/storage`, the
/// policy cache in `cache`) and starts it.
pub async fn start(
    bins: &Binaries,
    kind: Kind,
    dir: &Path,
    cache: Option<&Path>,
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
        Kind::PortcullisBare | Kind::PortcullisPolicies => {
            let policy_dir = dir.join("policies");
            fs::create_dir_all(&policy_dir)?;
            let cache = cache
                .map(Path::to_path_buf)
                .unwrap_or(dir.join("policy-cache"));
            let mut config = format!(
                "listen = \"{addr}\"\n\n[storage]\nroot = {:?}\n\n[policy]\ndir = {:?}\ncache_dir = {:?}\n",
                storage, policy_dir, cache
            );
            if kind == Kind::PortcullisBare {
                config.push_str("chain = []\n");
            } else {
                config.push_str(POLICY_CHAIN);
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
            // auth, on loopback and a temporary root.
            let config = format!(
                "version: 0.1\nlog:\n  fields:\n    service: registry\nstorage:\n  cache:\n    blobdescriptor: inmemory\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n  headers:\n    X-Content-Type-Options: [nosniff]\nhealth:\n  storagedriver:\n    enabled: true\n    interval: 10s\n    threshold: 3\n",
                storage.display()
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

/// Polls GET /v2/ (a new connection each time, every 2 ms) until 200.
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
        if let Ok(resp) = conn.send(Method::GET, "/v2/", &[], client::empty()).await {
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

impl Server {
    /// utime + stime of all threads, in seconds.
    pub fn cpu_secs(&self) -> f64 {
        let Ok(stat) = fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
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
