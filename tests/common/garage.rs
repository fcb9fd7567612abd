//! A real S3 store for the integration tests: a single-node Garage 2.5.0
//! (installed by `tests/garage.sh build`) on loopback ports, its data in a
//! temporary directory.
//!
//! - [`Garage::start`] gives a test a store of its own, which it can take
//!   away ([`Garage::kill`], [`Garage::stop`], [`Garage::pause`]) and bring
//!   back ([`Garage::start_again`], [`Garage::resume`]) with the same ports
//!   and data, under load.
//! - [`Garage::shared`] gives the suite-wide store's connection facts: the
//!   one `tests/run.sh` started (`PCTEST_S3_*`, from `tests/garage.sh start`),
//!   else one started lazily for this test binary. Tests share it by using a
//!   key prefix of their own ([`unique_prefix`]).
//!
//! Each Garage process is owned by a thread of its own, which spawns it, is
//! the only one to signal it and reaps it; the process gets SIGKILL when that
//! thread ends (`PR_SET_PDEATHSIG`), which is when the process has exited
//! or the test binary itself is gone, so no Garage outlives its test binary.
//!
//! The variables are `PCTEST_*`, not `PORTCULLIS_*`: the server reads every
//! `PORTCULLIS_*` variable as a configuration key and refuses unknown ones.

use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use portcullis::config::{Backend, Config, Secret};
use rand::Rng as _;
use tempfile::TempDir;

/// The Garage version `tests/garage.sh build` installs.
pub const GARAGE_VERSION: &str = "2.5.0";

/// How to reach an S3 bucket: what a Portcullis server's storage configuration needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GarageFacts {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
}

impl GarageFacts {
    /// The suite-wide store given by `PCTEST_S3_*` (`tests/garage.sh start`
    /// writes them to `DIR/env`), if `PCTEST_S3_ENDPOINT` is set.
    pub fn from_env() -> Option<Self> {
        let endpoint = std::env::var("PCTEST_S3_ENDPOINT").ok()?;
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!("PCTEST_S3_ENDPOINT is set but {name} is not (source the env file tests/garage.sh start writes)")
            })
        };
        Some(Self {
            endpoint,
            bucket: var("PCTEST_S3_BUCKET"),
            region: var("PCTEST_S3_REGION"),
            access_key: var("PCTEST_S3_ACCESS_KEY"),
            secret_key: var("PCTEST_S3_SECRET_KEY"),
        })
    }

    /// Points `config`'s storage at this bucket, every key below `prefix`.
    /// `storage.root` is left as it is (the compiled-policy cache lives there).
    pub fn configure(&self, config: &mut Config, prefix: &str) {
        let storage = &mut config.storage;
        storage.backend = Backend::S3;
        storage.endpoint = Some(self.endpoint.clone());
        storage.bucket = Some(self.bucket.clone());
        storage.region = self.region.clone();
        storage.prefix = prefix.to_owned();
        storage.access_key_id = Some(self.access_key.clone());
        storage.secret_access_key = Some(secret(&self.secret_key));
    }
}

/// A configuration [`Secret`] (its field is private; it deserialises from a string).
pub fn secret(value: &str) -> Secret {
    serde_json::from_value(serde_json::Value::String(value.to_owned()))
        .expect("a Secret deserialises from a string")
}

/// A key prefix no other test uses: `t-<uuid>`.
pub fn unique_prefix() -> String {
    format!("t-{}", uuid::Uuid::new_v4())
}

/// The Garage binary: `PCTEST_GARAGE_BIN`, else `bin/garage` below
/// `PCTEST_GARAGE_HOME` (default `~/.cache/portcullis-garage`), as `tests/garage.sh` has it.
pub fn garage_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("PCTEST_GARAGE_BIN") {
        return bin.into();
    }
    let home = std::env::var_os("PCTEST_GARAGE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                .join(".cache/portcullis-garage")
        });
    home.join("bin/garage")
}

/// A Garage process of this test's own. Dropping it kills the process.
pub struct Garage {
    // Declared before `dir`: the process is gone before its data directory.
    process: Option<Process>,
    facts: GarageFacts,
    s3_port: u16,
    admin_port: u16,
    bin: PathBuf,
    dir: TempDir,
}

impl Garage {
    /// Starts a Garage with an empty bucket on free loopback ports and waits
    /// until it is healthy.
    pub async fn start() -> Self {
        let bin = garage_bin();
        assert!(
            bin.is_file(),
            "no Garage binary at {} (install Garage {GARAGE_VERSION} with `tests/garage.sh build`, \
             or set PCTEST_GARAGE_BIN)",
            bin.display()
        );
        let mut last_error = String::new();
        // Ports are chosen free but taken only when Garage binds them; another
        // process may get there first, so a failed start is retried on others.
        for _ in 0..3 {
            let dir = garage_tempdir();
            let (s3_port, rpc_port, admin_port) = free_ports();
            let facts = GarageFacts {
                endpoint: format!("http://127.0.0.1:{s3_port}"),
                bucket: "portcullis".into(),
                region: "garage".into(),
                access_key: format!("GK{}", random_hex(12)),
                secret_key: random_hex(32),
            };
            write_config(dir.path(), s3_port, rpc_port, admin_port);
            let mut garage = Self {
                process: None,
                facts,
                s3_port,
                admin_port,
                bin: bin.clone(),
                dir,
            };
            match garage.launch().await {
                Ok(()) => return garage,
                Err(e) => last_error = e,
            }
        }
        panic!("Garage did not start (3 attempts): {last_error}");
    }

    /// The suite-wide store: `PCTEST_S3_*` if set (tests/run.sh starts one
    /// with `tests/garage.sh start`), else a Garage started on first use and
    /// kept for the rest of this test binary.
    pub async fn shared() -> GarageFacts {
        static SHARED: tokio::sync::OnceCell<GarageFacts> = tokio::sync::OnceCell::const_new();
        SHARED
            .get_or_init(|| async {
                if let Some(facts) = GarageFacts::from_env() {
                    return facts;
                }
                let garage = Self::start().await;
                let facts = garage.facts.clone();
                // Lives until the test binary exits (its process then gets
                // SIGKILL); its directory is removed by a later binary's sweep.
                std::mem::forget(garage);
                facts
            })
            .await
            .clone()
    }

    pub fn facts(&self) -> &GarageFacts {
        &self.facts
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.facts.endpoint
    }

    pub fn bucket(&self) -> &str {
        &self.facts.bucket
    }

    pub fn region(&self) -> &str {
        &self.facts.region
    }

    pub fn access_key(&self) -> &str {
        &self.facts.access_key
    }

    pub fn secret_key(&self) -> &str {
        &self.facts.secret_key
    }

    /// Its metadata, data, configuration and log (`garage.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last lines of its log, for a failure message.
    pub fn log_tail(&self) -> String {
        log_tail(self.dir.path())
    }

    /// Whether the process is running (a paused one counts).
    pub fn is_running(&self) -> bool {
        self.process
            .as_ref()
            .is_some_and(|p| !p.owner.is_finished())
    }

    /// Takes the store away at once, as a crash would (SIGKILL), and waits
    /// until the process is gone. Nothing if it is not running.
    pub async fn kill(&mut self) {
        if let Some(process) = self.process.take() {
            process.signal(libc::SIGKILL);
            process.wait(Duration::from_secs(10)).await;
        }
    }

    /// Shuts the store down (SIGTERM; SIGKILL after 10 s) and waits until the
    /// process is gone. Nothing if it is not running.
    pub async fn stop(&mut self) {
        if let Some(process) = self.process.take() {
            process.signal(libc::SIGTERM);
            if !process.wait_until_gone(Duration::from_secs(10)).await {
                process.signal(libc::SIGKILL);
            }
            process.wait(Duration::from_secs(10)).await;
        }
    }

    /// Starts the store again after `kill` or `stop`: same ports, same data,
    /// same keys; returns once it is healthy.
    pub async fn start_again(&mut self) {
        assert!(
            self.process.is_none(),
            "start_again: Garage is still running"
        );
        if let Err(e) = self.launch().await {
            panic!("Garage did not start again: {e}");
        }
    }

    /// Freezes the process (SIGSTOP): connections are accepted by the kernel
    /// but never answered, as with a store that hangs.
    pub fn pause(&self) {
        if let Some(process) = &self.process {
            process.signal(libc::SIGSTOP);
        }
    }

    /// Lets a paused process go on (SIGCONT).
    pub fn resume(&self) {
        if let Some(process) = &self.process {
            process.signal(libc::SIGCONT);
        }
    }

    /// Spawns the server on this Garage's configuration and waits for `/health`.
    async fn launch(&mut self) -> Result<(), String> {
        let dir = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("garage.log"))
            .map_err(|e| format!("open garage.log: {e}"))?;
        let log_err = log.try_clone().map_err(|e| e.to_string())?;
        let mut command = Command::new(&self.bin);
        command
            .arg("-c")
            .arg(dir.join("garage.toml"))
            .args(["server", "--single-node", "--default-bucket"])
            .env("GARAGE_DEFAULT_ACCESS_KEY", &self.facts.access_key)
            .env("GARAGE_DEFAULT_SECRET_KEY", &self.facts.secret_key)
            .env("GARAGE_DEFAULT_BUCKET", &self.facts.bucket)
            .env("RUST_LOG", "garage=info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        // The caller's own GARAGE_* settings (an RPC secret, ...) are not this one's.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("GARAGE_") {
                command.env_remove(key);
            }
        }
        let process =
            Process::spawn(command).map_err(|e| format!("spawn {}: {e}", self.bin.display()))?;
        let health = format!("http://127.0.0.1:{}/health", self.admin_port);
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("build an HTTP client");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if process.owner.is_finished() {
                let status = process.wait(Duration::from_secs(1)).await;
                return Err(format!(
                    "garage exited during start-up ({status:?}); its log:\n{}",
                    log_tail(dir)
                ));
            }
            if let Ok(response) = client.get(&health).send().await {
                if response.status().is_success() {
                    break;
                }
            }
            if Instant::now() > deadline {
                process.signal(libc::SIGKILL);
                process.wait(Duration::from_secs(10)).await;
                return Err(format!(
                    "GET {health} not 200 after 10 s (S3 port {}); garage's log:\n{}",
                    self.s3_port,
                    log_tail(dir)
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.process = Some(process);
        Ok(())
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        if let Some(process) = self.process.take() {
            // Closing the channel makes the owner kill and reap it.
            drop(process.signals);
            let _ = process.owner.join();
        }
    }
}

/// A running Garage, owned by a thread that alone signals and reaps it.
struct Process {
    signals: mpsc::Sender<libc::c_int>,
    owner: JoinHandle<ExitStatus>,
}

impl Process {
    fn spawn(mut command: Command) -> std::io::Result<Self> {
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            command.pre_exec(|| {
                // SIGKILL when the owner thread (its parent) ends.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let (signals, received) = mpsc::channel::<libc::c_int>();
        let (spawned, started) = mpsc::channel();
        let owner = std::thread::Builder::new()
            .name("garage-owner".into())
            .spawn(move || {
                let mut child = match command.spawn() {
                    Ok(child) => child,
                    Err(e) => {
                        let _ = spawned.send(Err(e));
                        return ExitStatus::default();
                    }
                };
                let _ = spawned.send(Ok(()));
                let pid = child.id() as libc::pid_t;
                loop {
                    match received.recv_timeout(Duration::from_millis(20)) {
                        // The child is not reaped yet (only this thread reaps
                        // it), so `pid` is still this child.
                        // SAFETY: kill(2) has no memory-safety preconditions.
                        Ok(signal) => unsafe {
                            libc::kill(pid, signal);
                        },
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => {
                            let _ = child.kill();
                            return child.wait().expect("reap garage");
                        }
                    }
                    if let Ok(Some(status)) = child.try_wait() {
                        return status;
                    }
                }
            })?;
        match started.recv() {
            Ok(Ok(())) => Ok(Self { signals, owner }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(std::io::Error::other("garage owner thread died")),
        }
    }

    fn signal(&self, signal: libc::c_int) {
        let _ = self.signals.send(signal);
    }

    /// Whether the process exited within `limit`.
    async fn wait_until_gone(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while !self.owner.is_finished() {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Waits (up to `limit`, then it is killed) until the process has exited.
    async fn wait(self, limit: Duration) -> ExitStatus {
        if !self.wait_until_gone(limit).await {
            self.signal(libc::SIGKILL);
        }
        drop(self.signals);
        self.owner
            .join()
            .expect("the garage owner thread does not panic")
    }
}

/// A directory named after this test binary's pid, so a later binary can
/// remove those whose binary is gone (killed, or the shared store's).
fn garage_tempdir() -> TempDir {
    let pid = std::process::id();
    let tmp = std::env::temp_dir();
    if let Ok(entries) = std::fs::read_dir(&tmp) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix("portcullis-garage-") else {
                continue;
            };
            let Some(owner) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if owner != pid && !Path::new(&format!("/proc/{owner}")).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    tempfile::Builder::new()
        .prefix(&format!("portcullis-garage-{pid}-"))
        .tempdir_in(tmp)
        .expect("create Garage's directory")
}

/// Three free loopback ports for S3, RPC and admin: a base below the usual
/// ephemeral range (32768-60999, where outgoing connections take their local
/// ports, which could otherwise take a port while the store is down), S3 on
/// it, RPC on +1 and admin on +3, as `tests/garage.sh` has them.
fn free_ports() -> (u16, u16, u16) {
    let mut rng = rand::thread_rng();
    for _ in 0..200 {
        let base: u16 = rng.gen_range(20_000..32_000);
        let ports = (base, base + 1, base + 3);
        let free = [ports.0, ports.1, ports.2]
            .iter()
            .all(|&p| TcpListener::bind(("127.0.0.1", p)).is_ok());
        if free {
            return ports;
        }
    }
    panic!("no free loopback ports for Garage in 20000-32000");
}

fn write_config(dir: &Path, s3_port: u16, rpc_port: u16, admin_port: u16) {
    let config = format!(
        r#"# A throw-away single-node Garage {GARAGE_VERSION} for one test.
metadata_dir = "{dir}/meta"
data_dir = "{dir}/data"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{secret}"

[s3_api]
api_bind_addr = "127.0.0.1:{s3_port}"
s3_region = "garage"

[admin]
api_bind_addr = "127.0.0.1:{admin_port}"
"#,
        dir = dir.display(),
        secret = random_hex(32),
    );
    std::fs::write(dir.join("garage.toml"), config).expect("write garage.toml");
}

fn random_hex(bytes: usize) -> String {
    let mut data = vec![0u8; bytes];
    rand::thread_rng().fill(&mut data[..]);
    hex::encode(data)
}

fn log_tail(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join("garage.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
