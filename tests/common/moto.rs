//! moto's S3 server (from PyPI), for the one path Garage cannot test: a store
//! that enforces conditional writes (`If-None-Match` / `If-Match` on PUT), as
//! MinIO, Ceph RGW and AWS S3 do. `tests/run.sh` installs it into
//! `~/.cache/portcullis-moto` (or `PCTEST_MOTO_BIN` names `moto_server`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::GarageFacts;

pub fn moto_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("PCTEST_MOTO_BIN") {
        return bin.into();
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".cache/portcullis-moto/bin/moto_server")
}

pub struct Moto {
    child: Child,
    facts: GarageFacts,
}

impl Moto {
    /// Starts a moto S3 server on a free loopback port with one bucket.
    pub async fn start() -> Self {
        let bin = moto_bin();
        assert!(
            bin.exists(),
            "moto_server not found at {} (run tests/run.sh, or: python3 -m venv ~/.cache/portcullis-moto && ~/.cache/portcullis-moto/bin/pip install 'moto[server]')",
            bin.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let endpoint = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if client.get(&endpoint).send().await.is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "moto_server did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let bucket = "portcullis";
        let created = client
            .put(format!("{endpoint}/{bucket}"))
            .send()
            .await
            .expect("create the bucket");
        assert!(
            created.status().is_success(),
            "bucket creation: {}",
            created.status()
        );
        Self {
            child,
            facts: GarageFacts {
                endpoint,
                bucket: bucket.into(),
                region: "us-east-1".into(),
                access_key: "testing-key".into(),
                secret_key: "testing-secret-key".into(),
            },
        }
    }

    pub fn facts(&self) -> &GarageFacts {
        &self.facts
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
