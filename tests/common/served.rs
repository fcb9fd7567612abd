//! The real `portcullis` binary serving a config in a process of its own:
//! for what only a process shows (its memory, its log on stderr, the
//! listener's PROXY protocol in front of a real proxy). Its stderr goes to a
//! file the test reads; `--log-format json` makes each line a JSON object.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

pub struct Served {
    child: std::process::Child,
    pub base: String,
    pub port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Served {
    /// Serves `config` (TOML, without `listen` and `[storage]`'s root) with
    /// human-readable logs.
    pub async fn start(config: &str) -> Self {
        Self::start_with(config, &[]).await
    }

    /// Like [`Served::start`], with more arguments for `portcullis` (before
    /// `serve`, e.g. `--log-format json`).
    pub async fn start_with(config: &str, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let file = dir.path().join("portcullis.toml");
        let root = dir.path().join("data");
        std::fs::write(
            &file,
            format!("listen = \"127.0.0.1:{port}\"\n{config}\n[storage]\nroot = {root:?}\n"),
        )
        .unwrap();
        let log = dir.path().join("stderr.log");
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"));
        for (key, _) in std::env::vars() {
            if key.starts_with("PORTCULLIS_") {
                command.env_remove(key);
            }
        }
        let child = command
            .args(args)
            .args(["serve", "--config"])
            .arg(&file)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        // Killed and waited for by `Drop`, whatever happens next.
        let mut served = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            port,
            log,
            _dir: dir,
        };
        let http = reqwest::Client::new();
        for _ in 0..400 {
            if let Ok(Some(status)) = served.child.try_wait() {
                panic!("the server ended ({status}):\n{}", served.stderr());
            }
            if http
                .get(format!("{}/healthz", served.base))
                .send()
                .await
                .is_ok()
            {
                return served;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "the server did not come up on {}:\n{}",
            served.base,
            served.stderr()
        );
    }

    /// Everything the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The JSON log lines so far (with `--log-format json`); a line that is
    /// not a JSON object fails the test.
    pub fn json_lines(&self) -> Vec<Value> {
        self.stderr()
            .lines()
            .map(|line| match serde_json::from_str::<Value>(line) {
                Ok(v) if v.is_object() => v,
                _ => panic!("a log line is not a JSON object: {line:?}"),
            })
            .collect()
    }

    /// The first JSON log line `pick` accepts, waited for (the log is written
    /// by a thread of its own, a moment after the response).
    pub async fn line(&self, what: &str, pick: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..200 {
            if let Some(line) = self.json_lines().into_iter().find(&pick) {
                return line;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("no log line {what}; the log:\n{}", self.stderr());
    }

    /// The access-log line of the request to `path` (each test asks each
    /// path once).
    pub async fn access(&self, path: &str) -> Value {
        self.line(&format!("for {path}"), |l| {
            l["target"] == "portcullis::access" && l["fields"]["path"] == path
        })
        .await["fields"]
            .clone()
    }

    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS in /proc/<pid>/status");
        kib * 1024
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
