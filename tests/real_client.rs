//! The real client behind a proxy, with a real proxy: HAProxy (Debian's) in
//! front of the real binary, as TCP passthrough with the PROXY protocol (v2
//! and v1) and as an HTTP proxy adding `X-Forwarded-For`. Loopback has a
//! whole /8, so each party has an address of its own: the client
//! 127.0.0.5, the trusted proxy 127.0.0.2, an untrusted one 127.0.0.4.
//! The client lies in every request (`X-Forwarded-For: 6.6.6.6`, and on
//! a bare socket a forged PROXY header); only what the trusted proxy says is
//! believed. What the server believed is read from its access log and from
//! the decision log, where policies see `client-ip`.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::served::Served;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5));
const SPOOFED: &str = "6.6.6.6";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Haproxy {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// HAProxy with one frontend per way of reaching `registry` (a port on
/// 127.0.0.1): `(frontend port, mode, server options)`.
fn haproxy(registry: u16, frontends: &[(u16, &str, &str)]) -> Haproxy {
    let dir = tempfile::tempdir().unwrap();
    let mut config = String::from(
        "global\n  maxconn 100\n\
         defaults\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n",
    );
    for (i, (port, mode, options)) in frontends.iter().enumerate() {
        config.push_str(&format!(
            "frontend f{i}\n  mode {mode}\n  bind 127.0.0.3:{port}\n  default_backend b{i}\n\
             backend b{i}\n  mode {mode}\n{}  server registry 127.0.0.1:{registry} {options}\n",
            if *mode == "http" {
                "  option forwardfor\n"
            } else {
                ""
            }
        ));
    }
    let file = dir.path().join("haproxy.cfg");
    std::fs::write(&file, &config).unwrap();
    let check = Command::new("haproxy")
        .args(["-c", "-f"])
        .arg(&file)
        .output()
        .expect("haproxy (Debian's haproxy package; .ci/install.sh installs it)");
    assert!(
        check.status.success(),
        "{config}\n{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let child = Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Haproxy { child, _dir: dir }
}

async fn wait_for(port: u16) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.3", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("haproxy is not listening on 127.0.0.3:{port}");
}

/// A client at 127.0.0.5 that says it is 6.6.6.6.
fn liar() -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(CLIENT)
        .no_proxy()
        .build()
        .unwrap()
}

/// A request for a path of its own through `host:port`; the access line's
/// `client` for it.
async fn client_seen(served: &Served, host: &str, port: u16, case: &str) -> Value {
    let path = format!("/v2/{case}/tags/list");
    let response = liar()
        .get(format!("http://{host}:{port}{path}"))
        .header("x-forwarded-for", SPOOFED)
        .header("forwarded", format!("for={SPOOFED}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    assert_eq!(response.status(), 404, "{case}");
    served.access(&path).await["client"].clone()
}

/// A bare socket from `source` that writes `start` and then a request for
/// `path`; the raw answer, and whether the server ended the connection
/// within 5 s (rather than the read timing out).
async fn raw(source: IpAddr, port: u16, start: &[u8], path: &str) -> (String, bool) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((source, 0).into()).unwrap();
    let mut stream = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
    stream.write_all(start).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {SPOOFED}\r\nConnection: close\r\n\r\n"
    );
    let _ = stream.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .is_ok();
    (String::from_utf8_lossy(&answer).into_owned(), ended)
}

const PROXY: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// The decision log's `client-ip` per repository, once `want` are there.
async fn decided(log: &std::path::Path, want: usize) -> std::collections::BTreeMap<String, String> {
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..100 {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        seen = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|d| {
                let request = &d["request"];
                let repository = request["repository"].as_str()?.to_owned();
                Some((repository, request["client-ip"].as_str()?.to_owned()))
            })
            .collect();
        if seen.len() >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    seen
}

/// TCP passthrough: the PROXY header of a trusted proxy is believed (and
/// nothing after it); a trusted peer must send one; nobody else is read.
#[tokio::test]
async fn proxy_protocol_from_trusted_proxies_only() {
    let decisions = tempfile::tempdir().unwrap();
    let decision_log = decisions.path().join("decisions.jsonl");
    let served = Served::start_with(
        &format!(
            "trusted_proxies = [\"127.0.0.2/32\"]\nproxy_protocol = true\n\
             [policy.decision_log]\nrecord = \"all\"\npath = {decision_log:?}\n"
        ),
        &["--log-format", "json"],
    )
    .await;
    let [v2, v1, untrusted, http_untrusted] = [(); 4].map(|_| free_port());
    let _haproxy = haproxy(
        served.port,
        &[
            (v2, "tcp", "send-proxy-v2 source 127.0.0.2"),
            (v1, "tcp", "send-proxy source 127.0.0.2"),
            (untrusted, "tcp", "send-proxy-v2 source 127.0.0.4"),
            (http_untrusted, "http", "source 127.0.0.4"),
        ],
    );
    for port in [v2, v1, untrusted, http_untrusted] {
        wait_for(port).await;
    }
    let client = CLIENT.to_string();
    // Through the trusted proxy, v2 and v1: the real client, whatever the
    // client wrote in X-Forwarded-For and Forwarded.
    assert_eq!(
        client_seen(&served, "127.0.0.3", v2, "via-v2").await,
        client.as_str()
    );
    assert_eq!(
        client_seen(&served, "127.0.0.3", v1, "via-v1").await,
        client.as_str()
    );
    // An HTTP proxy nobody trusts: that proxy, whatever it says.
    assert_eq!(
        client_seen(&served, "127.0.0.3", http_untrusted, "via-untrusted-http").await,
        "127.0.0.4"
    );
    // Directly, with forged headers: the client's own address.
    assert_eq!(
        client_seen(&served, "127.0.0.1", served.port, "direct").await,
        client.as_str()
    );
    // A PROXY header from a proxy nobody trusts is not read: its bytes are
    // not HTTP, and the request fails (400) instead of being believed.
    let refused = liar()
        .get(format!(
            "http://127.0.0.3:{untrusted}/v2/untrusted-v2/tags/list"
        ))
        .send()
        .await;
    assert!(
        refused.as_ref().map_or(true, |r| r.status() == 400),
        "{refused:?}"
    );
    // A forged PROXY line from a client: the same.
    let (forged, _) = raw(
        CLIENT,
        served.port,
        b"PROXY TCP4 6.6.6.6 127.0.0.1 1234 5000\r\n",
        "/v2/forged-v1/tags/list",
    )
    .await;
    assert!(forged.starts_with("HTTP/1.1 400"), "{forged}");

    // The trusted proxy's own connections: a good header is believed, and
    // headers after it are the client's, never read.
    let (good, _) = raw(
        PROXY,
        served.port,
        b"PROXY TCP4 198.51.100.9 127.0.0.1 1234 5000\r\n",
        "/v2/raw-v1/tags/list",
    )
    .await;
    assert!(good.starts_with("HTTP/1.1 404"), "{good}");
    assert_eq!(
        served.access("/v2/raw-v1/tags/list").await["client"],
        "198.51.100.9"
    );
    // No header, or a malformed one: the connection is ended at once (the
    // protocol's rule: a receiver never guesses), and the server goes on.
    for (i, bad) in [
        &b""[..],
        b"PROXY TCP4 6.6.6.6\r\n",
        b"PROXY TCP4 6.6.6.6 1.1.1.1 99999 1\r\n",
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff",
    ]
    .iter()
    .enumerate()
    {
        let (answer, ended) = raw(PROXY, served.port, bad, &format!("/v2/bad-{i}/tags/list")).await;
        assert!(
            answer.is_empty() && ended,
            "case {i}: {answer:?}, ended: {ended}"
        );
    }
    assert_eq!(
        client_seen(&served, "127.0.0.3", v2, "after-bad").await,
        client.as_str()
    );

    // What the policies saw: the same real addresses, never the lie.
    let seen = decided(&decision_log, 6).await;
    for (repository, ip) in [
        ("via-v2", client.as_str()),
        ("via-v1", client.as_str()),
        ("via-untrusted-http", "127.0.0.4"),
        ("direct", client.as_str()),
        ("raw-v1", "198.51.100.9"),
    ] {
        assert_eq!(
            seen.get(repository).map(String::as_str),
            Some(ip),
            "{seen:?}"
        );
    }
    assert!(!seen.values().any(|ip| ip == SPOOFED), "{seen:?}");
}

/// HTTP proxies: X-Forwarded-For from a trusted proxy, read from the right.
#[tokio::test]
async fn x_forwarded_for_from_trusted_proxies_only() {
    let served = Served::start_with(
        "trusted_proxies = [\"127.0.0.2/32\"]\n",
        &["--log-format", "json"],
    )
    .await;
    let [http, http_untrusted] = [(); 2].map(|_| free_port());
    let _haproxy = haproxy(
        served.port,
        &[
            (http, "http", "source 127.0.0.2"),
            (http_untrusted, "http", "source 127.0.0.4"),
        ],
    );
    wait_for(http).await;
    wait_for(http_untrusted).await;
    // HAProxy appends 127.0.0.5 to the client's "6.6.6.6"; the client's
    // `Forwarded` is not the header this registry reads.
    assert_eq!(
        client_seen(&served, "127.0.0.3", http, "http").await,
        CLIENT.to_string().as_str()
    );
    assert_eq!(
        client_seen(&served, "127.0.0.3", http_untrusted, "http-untrusted").await,
        "127.0.0.4"
    );
    assert_eq!(
        client_seen(&served, "127.0.0.1", served.port, "http-direct").await,
        CLIENT.to_string().as_str()
    );
}

#[tokio::test]
async fn without_trusted_proxies_every_header_is_ignored() {
    let served = Served::start_with("proxy_protocol = true\n", &["--log-format", "json"]).await;
    let http = free_port();
    let _haproxy = haproxy(served.port, &[(http, "http", "source 127.0.0.2")]);
    wait_for(http).await;
    assert_eq!(
        client_seen(&served, "127.0.0.3", http, "nobody-http").await,
        "127.0.0.2"
    );
    assert!(served.stderr().contains("trusted_proxies is empty"));
}
