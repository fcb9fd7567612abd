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
    let generated = portcullis::tls::generate(&["a.registry.test".into()], &[], &tls_dir).unwrap();
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

    // A name the certificate does not cover fails the handshake...
    let b = https_client(&generated.ca_cert, "b.registry.test", addr);
    let b_url = format!("https://b.registry.test:{}/v2/", addr.port());
    assert!(b.get(&b_url).send().await.is_err());

    // ...until a new certificate (same CA) is generated in place: no restart.
    portcullis::tls::generate(
        &["a.registry.test".into(), "b.registry.test".into()],
        &[],
        &tls_dir,
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
