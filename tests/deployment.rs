//! Running it at home: TLS from `tls generate` with certificate reload,
//! storage permissions instead of `chmod 777`, health, readiness and metrics,
//! and graceful shutdown that lets an upload in flight finish.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Image, TestRegistry};
use portcullis::config::{Config, PolicyEntry};
use portcullis::server::Server;
use reqwest::{Method, StatusCode};
use serde_json::json;

fn https_client(ca: &Path, host: &str, addr: std::net::SocketAddr) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(ca)
        .resolve(host, addr)
        .build()
        .unwrap()
}

#[tokio::test]
async fn tls_from_tls_generate_serves_https_and_picks_up_a_new_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let tls_dir = dir.path().join("tls");
    let generated =
        portcullis::tls::generate(&["a.registry.test".into()], &[], &tls_dir, 397).unwrap();
    let key_mode = std::fs::metadata(&generated.key)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(
        key_mode, 0o600,
        "the private key is readable by its owner only"
    );

    let config_path = dir.path().join("portcullis.toml");
    std::fs::write(
        &config_path,
        format!(
            "listen = \"127.0.0.1:0\"\n[storage]\nroot = \"{}\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            dir.path().join("data").display(),
            generated.cert.display(),
            generated.key.display()
        ),
    )
    .unwrap();
    let config = Config::load(Some(&config_path)).unwrap();
    let server = Server::bind_watching(config, Some(config_path))
        .await
        .unwrap();
    assert!(server.is_tls());
    let addr = server.local_addr();
    tokio::spawn(server.run(std::future::pending()));

    // Trusted CA, right name: HTTP/2 by ALPN.
    let a = https_client(&generated.ca_cert, "a.registry.test", addr);
    let response = a
        .get(format!("https://a.registry.test:{}/v2/", addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), reqwest::Version::HTTP_2);

    // /metrics has the served certificate's notAfter.
    let (expiry, metrics) = served_expiry(&a, addr.port()).await;
    assert_eq!(
        expiry,
        Some(generated.not_after.unix_timestamp().to_string()),
        "{metrics}"
    );
    assert_eq!(
        (generated.not_after - generated.not_before).whole_days(),
        397
    );

    // A name the certificate does not cover fails the handshake...
    let b = https_client(&generated.ca_cert, "b.registry.test", addr);
    let b_url = format!("https://b.registry.test:{}/v2/", addr.port());
    assert!(b.get(&b_url).send().await.is_err());

    // ...until a new certificate (same CA) is generated in place: no restart.
    let renewed = portcullis::tls::generate(
        &["a.registry.test".into(), "b.registry.test".into()],
        &[],
        &tls_dir,
        30,
    )
    .unwrap();
    let started = Instant::now();
    loop {
        let b = https_client(&generated.ca_cert, "b.registry.test", addr);
        if let Ok(r) = b.get(&b_url).send().await {
            assert_eq!(r.status(), StatusCode::OK);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the new certificate was not served within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The gauge follows the reload: the renewed certificate's end, 30 days on.
    let (expiry, metrics) = served_expiry(&a, addr.port()).await;
    assert_eq!(
        expiry,
        Some(renewed.not_after.unix_timestamp().to_string()),
        "{metrics}"
    );
    assert_ne!(renewed.not_after, generated.not_after);

    // A client that does not trust the CA is refused.
    let untrusted = reqwest::Client::builder()
        .resolve("a.registry.test", addr)
        .build()
        .unwrap();
    let err = untrusted
        .get(format!("https://a.registry.test:{}/v2/", addr.port()))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");
}

fn modes_under(root: &Path, out: &mut Vec<(std::path::PathBuf, u32, u32, bool)>) {
    for entry in std::fs::read_dir(root).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        out.push((
            entry.path(),
            meta.permissions().mode() & 0o777,
            meta.gid(),
            meta.is_dir(),
        ));
        if meta.is_dir() {
            modes_under(&entry.path(), out);
        }
    }
}

#[tokio::test]
async fn everything_stored_gets_the_configured_modes_and_group() {
    // As root (CI) any group may be given, so use one that is not ours
    // (daemon, gid 1); as a user, our own primary group.
    let gid = if nix::unistd::geteuid().is_root() {
        1
    } else {
        nix::unistd::getegid().as_raw()
    };
    let registry = TestRegistry::start_with(move |c| {
        c.storage.file_mode = "0640".into();
        c.storage.dir_mode = "0750".into();
        c.storage.group = Some(portcullis::config::Group::Name(gid.to_string()));
    })
    .await;
    let image = Image::random();
    registry.push_image("team/app", "v1", &image).await;
    let session = registry.start_upload("team/app").await;
    let _ = session;

    let mut entries = Vec::new();
    modes_under(&registry.root().join("docker"), &mut entries);
    assert!(entries.len() > 20, "the push created files and directories");
    for (path, mode, owner_gid, is_dir) in entries {
        let expected = if is_dir { 0o750 } else { 0o640 };
        assert_eq!(mode, expected, "{} has mode {mode:o}", path.display());
        assert_eq!(owner_gid, gid, "{} has group {owner_gid}", path.display());
    }
}

#[test]
fn world_writable_modes_are_refused() {
    let mut config = Config::default();
    config.storage.file_mode = "0666".into();
    let err = config.storage.modes().unwrap_err().to_string();
    assert!(err.contains("world-writable"), "{err}");
    config.storage.file_mode = "rw-r-----".into();
    assert!(config.storage.modes().is_err());
}

#[tokio::test]
async fn health_readiness_and_metrics_describe_the_running_registry() {
    let registry = TestRegistry::start_with(|c| {
        c.policy.chain = vec![PolicyEntry {
            name: "immutable".into(),
            module: "builtin:tag-immutability".into(),
            settings: json!({ "tags": ["v*"] }),
            actions: None,
            repositories: None,
            mode: Default::default(),
        }];
    })
    .await;
    let health = registry.get("/healthz").await;
    assert_eq!(health.status(), StatusCode::OK);
    let ready = registry.get("/readyz").await;
    assert_eq!(ready.status(), StatusCode::OK);
    assert_eq!(
        ready.text().await.unwrap(),
        "ready: storage writable, 1 policies loaded\n"
    );

    let first = Image::random();
    registry.push_image("app", "v1", &first).await;
    let (status, _) = registry
        .push_image_as(None, "app", "v1", &Image::random())
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let pulled = registry.get("/v2/app/manifests/v1").await;
    assert_eq!(pulled.status(), StatusCode::OK);

    let metrics = registry.get("/metrics").await.text().await.unwrap();
    for expected in [
        "portcullis_http_requests_total{route=\"manifest\",method=\"PUT\",status=\"201\"}",
        "portcullis_http_requests_total{route=\"manifest\",method=\"PUT\",status=\"403\"} 1",
        "portcullis_http_request_duration_seconds_bucket{le=",
        "portcullis_http_received_bytes_total{route=\"upload\",method=\"POST\"}",
        "portcullis_http_sent_bytes_total{route=\"manifest\",method=\"GET\"}",
        "portcullis_policy_decisions_total{policy=\"immutable\",outcome=\"deny\"} 1",
        "portcullis_policy_decisions_total{policy=\"immutable\",outcome=\"allow\"}",
        "portcullis_policy_evaluation_duration_seconds_count{policy=\"immutable\"}",
        "portcullis_storage_blob_bytes",
    ] {
        assert!(
            metrics.contains(expected),
            "missing {expected} in:\n{metrics}"
        );
    }
    // Without TLS there is no certificate, so no expiry (not a zero that
    // an alert on `expiry - time() < 30d` would fire on).
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("portcullis_tls_certificate_expiry_timestamp_seconds")),
        "{metrics}"
    );
}

#[tokio::test]
async fn shutdown_lets_an_upload_in_flight_finish() {
    let registry = TestRegistry::start().await;
    let location = registry.start_upload("slow/app").await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let body = reqwest::Body::wrap_stream(tokio_stream_from(rx));
    let http = registry.http.clone();
    let upload = tokio::spawn(async move {
        http.request(Method::PATCH, location)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
            .await
    });
    tx.send(Ok(vec![1u8; 64 * 1024])).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Shut down while the upload is still streaming, then finish the upload.
    let mut registry = registry;
    let addr = registry.addr();
    let stopping = tokio::spawn(async move {
        registry.stop().await;
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // New connections are no longer accepted.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    tx.send(Ok(vec![2u8; 64 * 1024])).await.unwrap();
    drop(tx);
    let response = upload.await.unwrap().expect("the upload completes");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(
        common::header(&response, "range").as_deref(),
        Some("0-131071")
    );
    stopping.await.unwrap();
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

// ------------------------------------------------------------------ tls generate, as an operator runs it

/// `portcullis <args>` with a clean `PORTCULLIS_*` environment.
/// `portcullis tls generate --host r.lan --out OUT --days DAYS`.
fn tls_generate(out: &Path, days: &str) -> std::process::Output {
    portcullis(&[
        "tls",
        "generate",
        "--host",
        "r.lan",
        "--out",
        out.to_str().unwrap(),
        "--days",
        days,
    ])
}

fn portcullis(args: &[&str]) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"));
    for (key, _) in std::env::vars() {
        if key.starts_with("PORTCULLIS_") {
            command.env_remove(key);
        }
    }
    command
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run the portcullis binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `openssl <args>`, which must succeed; its stdout.
fn openssl(args: &[&str]) -> String {
    let output = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed (Debian's openssl)");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// The value of an X.509v3 extension as `openssl x509 -text` prints it (the
/// line after its heading), e.g. a key identifier `AB:CD:...`.
fn extension(cert: &Path, heading: &str) -> Option<String> {
    let dump = openssl(&["x509", "-noout", "-text", "-in", cert.to_str().unwrap()]);
    let mut lines = dump.lines();
    lines.find(|l| l.trim_start().starts_with(heading))?;
    lines
        .next()
        .map(|l| l.trim().trim_start_matches("keyid:").to_owned())
}

fn subject_cn(cert: &Path) -> String {
    openssl(&[
        "x509",
        "-noout",
        "-subject",
        "-nameopt",
        "multiline",
        "-in",
        cert.to_str().unwrap(),
    ])
    .lines()
    .find_map(|l| {
        l.trim()
            .strip_prefix("commonName")
            .map(|v| v.trim_start_matches([' ', '=']).to_owned())
    })
    .unwrap_or_default()
}

/// A certificate's notAfter, read with x509-parser.
fn not_after(cert: &Path) -> time::OffsetDateTime {
    let pem = std::fs::read(cert).unwrap();
    let (_, block) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let x509 = block.parse_x509().unwrap();
    time::OffsetDateTime::from_unix_timestamp(x509.validity().not_after.timestamp()).unwrap()
}

#[test]
fn tls_generate_prints_the_expiry_and_names_the_registry_as_clients_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tls");
    let out_s = out.to_str().unwrap();
    let run = portcullis(&[
        "tls",
        "generate",
        "--host",
        "registry.example.lan",
        "--ip",
        "192.0.2.10",
        "--port",
        "443",
        "--days",
        "30",
        "--out",
        out_s,
    ]);
    let printed = text(&run.stdout);
    assert!(run.status.success(), "{printed}{}", text(&run.stderr));

    // The server certificate: 30 days, chained to the CA by key identifiers.
    let (ca, cert) = (out.join("ca.crt"), out.join("tls.crt"));
    let until = portcullis::tls::format_utc(not_after(&cert));
    assert!(
        printed.contains(&format!("valid until {until} (30 days)")),
        "the expiry is printed ({until}):\n{printed}"
    );
    let ca_until = portcullis::tls::format_utc(not_after(&ca));
    assert!(
        printed.contains(&format!("valid until {ca_until}")),
        "the CA's expiry is printed ({ca_until}):\n{printed}"
    );
    assert!(printed.contains("(new; 3650 days)"), "{printed}");
    assert!(openssl(&[
        "verify",
        "-CAfile",
        out.join("ca.crt").to_str().unwrap(),
        cert.to_str().unwrap()
    ])
    .contains(": OK"));
    let ca_ski = extension(&ca, "X509v3 Subject Key Identifier").expect("the CA has an SKI");
    let ski =
        extension(&cert, "X509v3 Subject Key Identifier").expect("the server cert has an SKI");
    let aki =
        extension(&cert, "X509v3 Authority Key Identifier").expect("the server cert has an AKI");
    assert_eq!(
        aki, ca_ski,
        "the server certificate's AKI names the CA's key"
    );
    assert_ne!(ski, ca_ski);
    let dates = openssl(&[
        "x509",
        "-noout",
        "-startdate",
        "-enddate",
        "-in",
        cert.to_str().unwrap(),
    ]);
    let parse = |prefix: &str| {
        let line = dates.lines().find_map(|l| l.strip_prefix(prefix)).unwrap();
        let output = std::process::Command::new("date")
            .args(["-u", "-d", line, "+%s"])
            .output()
            .unwrap();
        text(&output.stdout).trim().parse::<i64>().unwrap()
    };
    assert_eq!(
        parse("notAfter=") - parse("notBefore="),
        30 * 86_400,
        "{dates}"
    );
    let ca_name = subject_cn(&ca);
    assert!(ca_name.starts_with("Portcullis local CA "), "{ca_name}");
    assert!(
        printed.contains(&format!("CA: {ca_name} (new")),
        "{printed}"
    );

    // Port 443 is left out, as clients leave it out of image references.
    assert!(!printed.contains(":443"), "{printed}");
    for expected in [
        format!("sudo cp {out_s}/ca.crt /etc/docker/certs.d/registry.example.lan/ca.crt"),
        "\"registry.example.lan\":".to_owned(),
        "/etc/containerd/certs.d/registry.example.lan/hosts.toml".to_owned(),
        "server = \"https://registry.example.lan\"".to_owned(),
        "registry.example.lan, 192.0.2.10".to_owned(),
    ] {
        assert!(
            printed.contains(&expected),
            "missing {expected:?} in:\n{printed}"
        );
    }

    // Any other port is part of the name; the CA is kept, with its remaining days.
    let again = portcullis(&[
        "tls",
        "generate",
        "--host",
        "registry.example.lan",
        "--port",
        "5000",
        "--out",
        out_s,
    ]);
    let printed = text(&again.stdout);
    assert!(again.status.success(), "{printed}{}", text(&again.stderr));
    assert!(
        printed.contains("/etc/docker/certs.d/registry.example.lan:5000/ca.crt"),
        "{printed}"
    );
    assert!(
        printed.contains("\"registry.example.lan:5000\":"),
        "{printed}"
    );
    assert!(
        printed.contains(&format!(
            "CA: {ca_name} (kept from {out_s}/ca.crt; 3649 days left)"
        )),
        "{printed}"
    );
    assert!(
        printed.contains("(397 days)"),
        "the default lifetime:\n{printed}"
    );
    assert_eq!(
        extension(&out.join("tls.crt"), "X509v3 Authority Key Identifier"),
        Some(ca_ski)
    );

    // A second CA elsewhere gets a name of its own.
    let other = dir.path().join("other");
    assert!(portcullis(&[
        "tls",
        "generate",
        "--host",
        "registry.example.lan",
        "--out",
        other.to_str().unwrap()
    ])
    .status
    .success());
    let other_name = subject_cn(&other.join("ca.crt"));
    assert!(
        other_name.starts_with("Portcullis local CA "),
        "{other_name}"
    );
    assert_ne!(
        other_name, ca_name,
        "two CAs in one trust store are told apart"
    );
}

#[test]
fn tls_generate_refuses_hostile_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tls");
    let out_s = out.to_str().unwrap();
    let long_label = "a".repeat(64);
    let long_name = vec!["abcdefghi"; 26].join(".");
    let sixty_nines = "9".repeat(60);
    // (arguments after `tls generate --out DIR`, what stderr must say)
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--host", "r.lan", "--days", "0"], "at least 1 day"),
        (vec!["--host", "r.lan", "--days", "-1"], "at least 1 day"),
        (vec!["--host", "r.lan", "--days=-365"], "at least 1 day"),
        (vec!["--host", "r.lan", "--days", "826"], "at most 825"),
        (vec!["--host", "r.lan", "--days", "36500"], "at most 825"),
        (
            vec!["--host", "r.lan", "--days", "18446744073709551617"],
            "at most 825",
        ),
        (
            vec!["--host", "r.lan", "--days", &sixty_nines],
            "out of range",
        ),
        (
            vec!["--host", "r.lan", "--days", "ten"],
            "not a whole number",
        ),
        (
            vec!["--host", "r.lan", "--days", "1.5"],
            "not a whole number",
        ),
        (
            vec!["--host", "r.lan", "--days", "1e3"],
            "not a whole number",
        ),
        (vec!["--host", "r.lan", "--days", ""], "not a whole number"),
        (
            vec!["--host", "r.lan", "--days", "0x10"],
            "not a whole number",
        ),
        (
            vec!["--host", "r.lan", "--port", "0"],
            "0 is not in 1..=65535",
        ),
        (vec!["--host", "r.lan", "--port", "65536"], "--port"),
        (vec!["--host", "r.lan", "--ip", "999.1.1.1"], "--ip"),
        (vec!["--days", "30"], "--host"),
        (vec!["--host", ""], "empty host name"),
        (vec!["--host", "registry example"], "not a host name"),
        (vec!["--host", "r.lan; rm -rf /"], "not a host name"),
        (vec!["--host", "$(reboot)"], "not a host name"),
        (vec!["--host", "../../etc"], "not a host name"),
        (vec!["--host", "a..b"], "not a host name"),
        (vec!["--host=-r.lan"], "not a host name"),
        (vec!["--host", "r_1.lan"], "not a host name"),
        (vec!["--host", "rëgistry.lan"], "not a host name"),
        (vec!["--host", &long_label], "not a host name"),
        (vec!["--host", &long_name], "at most 253"),
        (vec!["--host", "registry.lan:5000"], "a port goes in --port"),
        (vec!["--host", "*.example.lan"], "no wildcards"),
    ];
    for (args, says) in &cases {
        let mut all = vec!["tls", "generate", "--out", out_s];
        all.extend(args.iter().copied());
        let run = portcullis(&all);
        let stderr = text(&run.stderr);
        assert_eq!(
            run.status.code(),
            Some(2),
            "{args:?} is refused as a usage error: {stderr}"
        );
        assert!(
            stderr.contains(says),
            "{args:?}: expected {says:?} in {stderr}"
        );
        assert!(!out.exists(), "{args:?} wrote nothing");
    }
    // The edges are accepted.
    for days in ["1", "825", "+7"] {
        let run = portcullis(&[
            "tls", "generate", "--host", "r.lan", "--out", out_s, "--days", days,
        ]);
        assert!(run.status.success(), "--days {days}: {}", text(&run.stderr));
    }
}

/// Writes a CA to `dir` (ca.crt, ca.key) ending `ends` from now.
fn write_ca(dir: &Path, ends: time::Duration) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Old lab CA");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(3000);
    params.not_after = now + ends;
    let cert = params.self_signed(&key).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("ca.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("ca.key"), key.serialize_pem()).unwrap();
}

#[test]
fn tls_generate_keeps_its_ca_and_never_outlives_it() {
    let dir = tempfile::tempdir().unwrap();
    let generate = |out: &Path, days: &str| tls_generate(out, days);

    // A CA with 20 days left: the certificate ends with it, and says so.
    let short = dir.path().join("short");
    write_ca(&short, time::Duration::days(20));
    let run = generate(&short, "397");
    let printed = text(&run.stdout);
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert_eq!(
        not_after(&short.join("tls.crt")),
        not_after(&short.join("ca.crt"))
    );
    assert!(printed.contains("CA: Old lab CA (kept from"), "{printed}");
    assert!(printed.contains("19 days left"), "{printed}");
    assert!(
        printed.contains("cut short to end with its CA"),
        "{printed}"
    );

    // An expired CA signs nothing.
    let expired = dir.path().join("expired");
    write_ca(&expired, -time::Duration::days(1));
    let run = generate(&expired, "30");
    assert_eq!(run.status.code(), Some(1));
    assert!(
        text(&run.stderr).contains("expired on"),
        "{}",
        text(&run.stderr)
    );
    assert!(!expired.join("tls.crt").exists());

    // Half a CA is not silently replaced by a new one the clients do not trust.
    let half = dir.path().join("half");
    write_ca(&half, time::Duration::days(100));
    std::fs::remove_file(half.join("ca.key")).unwrap();
    let before = std::fs::read(half.join("ca.crt")).unwrap();
    let run = generate(&half, "30");
    assert_eq!(run.status.code(), Some(1));
    assert!(
        text(&run.stderr).contains("is there but"),
        "{}",
        text(&run.stderr)
    );
    assert_eq!(
        std::fs::read(half.join("ca.crt")).unwrap(),
        before,
        "ca.crt untouched"
    );
    assert!(!half.join("ca.key").exists() && !half.join("tls.crt").exists());

    // A key that is not the certificate's.
    let mixed = dir.path().join("mixed");
    write_ca(&mixed, time::Duration::days(100));
    std::fs::copy(short.join("ca.key"), mixed.join("ca.key")).unwrap();
    let run = generate(&mixed, "30");
    assert_eq!(run.status.code(), Some(1));
    assert!(
        text(&run.stderr).contains("do not belong together"),
        "{}",
        text(&run.stderr)
    );

    // Not a certificate at all.
    std::fs::write(mixed.join("ca.crt"), "not a certificate\n").unwrap();
    std::fs::copy(short.join("ca.key"), mixed.join("ca.key")).unwrap();
    let run = generate(&mixed, "30");
    assert_eq!(run.status.code(), Some(1));
    assert!(
        text(&run.stderr).contains("not a readable CA certificate"),
        "{}",
        text(&run.stderr)
    );
}

/// Runs `portcullis serve` over the certificate in `tls` until it listens;
/// its JSON log lines.
fn serve_log(dir: &Path, tls: &Path) -> Vec<serde_json::Value> {
    let config = dir.join("serve.toml");
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\n[storage]\nroot = \"{}\"\n[policy]\ndir = \"{}\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            dir.join("data").display(),
            dir.join("policies").display(),
            tls.join("tls.crt").display(),
            tls.join("tls.key").display()
        ),
    )
    .unwrap();
    let log = dir.join("serve.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"));
    for (key, _) in std::env::vars() {
        if key.starts_with("PORTCULLIS_") {
            command.env_remove(key);
        }
    }
    let mut child = command
        .args([
            "--log-format",
            "json",
            "serve",
            "--config",
            config.to_str().unwrap(),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("spawn portcullis serve");
    let deadline = Instant::now() + Duration::from_secs(60);
    let lines = loop {
        let content = std::fs::read_to_string(&log).unwrap_or_default();
        if content.contains("portcullis listening") {
            break content;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("portcullis serve exited ({status}):\n{content}");
        }
        assert!(
            Instant::now() < deadline,
            "not listening within 60 s:\n{content}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    lines
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The log line about the certificate's expiry: (level, fields).
fn expiry_line(log: &[serde_json::Value]) -> (String, serde_json::Value) {
    let line = log
        .iter()
        .find(|l| {
            l["fields"]["message"].as_str().is_some_and(|m| {
                m.starts_with("TLS certificate") && l["fields"]["expires"].is_string()
            })
        })
        .unwrap_or_else(|| panic!("no expiry line in {log:#?}"));
    (
        line["level"].as_str().unwrap().to_owned(),
        line["fields"].clone(),
    )
}

#[test]
fn the_server_log_warns_30_days_before_the_certificate_ends() {
    let dir = tempfile::tempdir().unwrap();
    let generate = |out: &Path, days: &str| {
        let run = tls_generate(out, days);
        assert!(run.status.success(), "{}", text(&run.stderr));
    };

    // 10 days: a warning at start, naming the date and what to do.
    let soon = dir.path().join("soon");
    generate(&soon, "10");
    let log = serve_log(&soon, &soon);
    let (level, fields) = expiry_line(&log);
    assert_eq!(level, "WARN", "{fields}");
    assert_eq!(fields["days_left"], 9, "{fields}");
    assert_eq!(
        fields["expires"],
        portcullis::tls::format_utc(not_after(&soon.join("tls.crt")))
    );
    assert!(
        fields["message"].as_str().unwrap().contains("renew it"),
        "{fields}"
    );

    // 397 days: no warning.
    let fine = dir.path().join("fine");
    generate(&fine, "397");
    let log = serve_log(&fine, &fine);
    let (level, fields) = expiry_line(&log);
    assert_eq!(level, "INFO", "{fields}");
    assert_eq!(fields["days_left"], 396, "{fields}");
    assert!(
        !log.iter()
            .any(|l| l["level"] == "WARN" || l["level"] == "ERROR"),
        "{log:#?}"
    );

    // Already expired (a certificate `tls generate` would not make): an error, still served.
    let expired = dir.path().join("expired");
    std::fs::create_dir_all(&expired).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["r.lan".to_owned()]).unwrap();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(40);
    params.not_after = now - time::Duration::days(2);
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(expired.join("tls.crt"), cert.pem()).unwrap();
    std::fs::write(expired.join("tls.key"), key.serialize_pem()).unwrap();
    let log = serve_log(&expired, &expired);
    let (level, fields) = expiry_line(&log);
    assert_eq!(level, "ERROR", "{fields}");
    assert!(
        fields["message"].as_str().unwrap().contains("has expired"),
        "{fields}"
    );
}

/// The served certificate's notAfter as /metrics of `a.registry.test` has
/// it, and the whole text (for messages).
async fn served_expiry(client: &reqwest::Client, port: u16) -> (Option<String>, String) {
    let metrics = client
        .get(format!("https://a.registry.test:{port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let expiry = metrics
        .lines()
        .find_map(|l| l.strip_prefix("portcullis_tls_certificate_expiry_timestamp_seconds "))
        .map(str::to_owned);
    (expiry, metrics)
}
