//! `portcullis gc` as an operator runs it, on either backend (this file runs
//! again with `PCTEST_BACKEND=s3` against Garage): what it keeps because it
//! is younger than `storage.upload_max_age` is reported, and a repository
//! left with no manifest, tag or upload session leaves the catalog, without
//! disturbing pushes that arrive while it runs.

mod common;

use std::process::{Command, Output};

use common::{Image, TestRegistry};
use portcullis::config::{Backend, Config};
use reqwest::{Method, StatusCode};

/// The `PORTCULLIS_*` variables that point the binary at `config`'s store.
fn storage_env(config: &Config) -> Vec<(String, String)> {
    let storage = &config.storage;
    let mut env = vec![(
        "PORTCULLIS_STORAGE__ROOT".to_owned(),
        storage.root.display().to_string(),
    )];
    if storage.backend == Backend::S3 {
        let set = |key: &str, value: &str| (format!("PORTCULLIS_STORAGE__{key}"), value.to_owned());
        env.extend([
            set("BACKEND", "s3"),
            set("ENDPOINT", storage.endpoint.as_deref().unwrap_or_default()),
            set("BUCKET", storage.bucket.as_deref().unwrap_or_default()),
            set("REGION", &storage.region),
            set("PREFIX", &storage.prefix),
            set(
                "ACCESS_KEY_ID",
                storage.access_key_id.as_deref().unwrap_or_default(),
            ),
            set(
                "SECRET_ACCESS_KEY",
                storage
                    .secret_access_key
                    .as_ref()
                    .map(|s| s.expose())
                    .unwrap_or_default(),
            ),
        ]);
    }
    env
}

/// `portcullis gc [--dry-run]` on the store `env` names, with `upload_max_age`.
fn run_gc(env: Vec<(String, String)>, dry_run: bool, upload_max_age: &str) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    for (key, _) in std::env::vars() {
        if key.starts_with("PORTCULLIS_") {
            command.env_remove(key);
        }
    }
    command.env_remove("AWS_CA_BUNDLE");
    command.arg("gc");
    if dry_run {
        command.arg("--dry-run");
    }
    command
        .envs(env)
        .env("PORTCULLIS_STORAGE__UPLOAD_MAX_AGE", upload_max_age)
        .output()
        .expect("run portcullis gc")
}

/// gc's stdout; it must have succeeded.
async fn gc(registry: &TestRegistry, dry_run: bool, upload_max_age: &str) -> String {
    let (env, max_age) = (storage_env(registry.config()), upload_max_age.to_owned());
    let output = tokio::task::spawn_blocking(move || run_gc(env, dry_run, &max_age))
        .await
        .expect("gc runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "gc failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

async fn catalog(registry: &TestRegistry) -> Vec<String> {
    let response = registry.get("/v2/_catalog").await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: serde_json::Value = response.json().await.expect("catalog is JSON");
    body["repositories"]
        .as_array()
        .expect("a repositories array")
        .iter()
        .map(|r| r.as_str().expect("names are strings").to_owned())
        .collect()
}

async fn delete_manifest(registry: &TestRegistry, repository: &str, digest: &str) {
    let response = registry
        .send(
            Method::DELETE,
            &format!("/v2/{repository}/manifests/{digest}"),
        )
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED, "delete {digest}");
}

#[tokio::test]
async fn gc_reports_what_it_keeps_because_it_is_younger_than_upload_max_age() {
    let registry = TestRegistry::start().await;
    // An upload in progress (100 bytes so far) and a blob pushed for a
    // manifest that has not come yet, both in a repository of their own.
    let session = registry
        .start_upload_with("young/app", vec![7u8; 100])
        .await;
    let upload_id = session
        .rsplit('/')
        .next()
        .and_then(|id| id.split('?').next())
        .expect("an upload id")
        .to_owned();
    let waiting = common::random_bytes(4321);
    let waiting_digest = registry.push_blob("pending/app", &waiting).await;

    for dry_run in [true, false] {
        let report = gc(&registry, dry_run, "24h").await;
        assert!(
            report.contains(&format!("kept upload young/app/{upload_id} (100 bytes), "))
                && report.contains("younger than storage.upload_max_age (1day)"),
            "dry run {dry_run}: {report}"
        );
        assert!(
            report.contains(&format!("kept blob {waiting_digest} (4321 bytes), ")),
            "dry run {dry_run}: {report}"
        );
        // The repository holding only that blob's link is kept for it too.
        assert!(
            report.contains("kept repository pending/app (no manifests, tags or uploads left), "),
            "dry run {dry_run}: {report}"
        );
        assert!(
            report.contains("3 items (4421 bytes) kept as younger than storage.upload_max_age"),
            "dry run {dry_run}: {report}"
        );
        assert!(report.contains(" 0 bytes "), "nothing removed: {report}");
    }
    // The session goes on where it was, and the blob is still there.
    let status = registry.http.get(&session).send().await.unwrap();
    assert_eq!(status.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        status.headers()["range"].to_str().unwrap(),
        "0-99",
        "the session kept its bytes"
    );
    let blob = registry
        .send(
            Method::HEAD,
            &format!("/v2/pending/app/blobs/{waiting_digest}"),
        )
        .await;
    assert_eq!(blob.status(), StatusCode::OK);

    // Past their age, the same three go.
    let report = gc(&registry, false, "0s").await;
    for removed in [
        format!("removed upload young/app/{upload_id} (100 bytes)"),
        format!("removed blob {waiting_digest} (4321 bytes)"),
        "removed repository pending/app".to_owned(),
    ] {
        assert!(report.contains(&removed), "{removed}: {report}");
    }
    assert!(
        report.contains("0 items (0 bytes) kept as younger"),
        "{report}"
    );
    assert!(
        !catalog(&registry).await.contains(&"pending/app".to_owned()),
        "pending/app left the catalog"
    );
}

#[tokio::test]
async fn gc_takes_repositories_left_empty_out_of_the_catalog() {
    let registry = TestRegistry::start().await;
    // gone/app shares its config and a layer with stays/app, so links to
    // blobs that stay (another repository needs them) are left in gone/app
    // once its manifest is deleted; gone/app/child is nested in its name.
    let gone = Image::random();
    let stays = Image::from_parts(
        gone.config.clone(),
        vec![gone.layers[0].clone(), common::random_bytes(2000)],
        serde_json::json!({}),
    );
    registry.push_image("gone/app", "v1", &gone).await;
    registry.push_image("gone/app", "v2", &stays).await;
    registry.push_image("stays/app", "v1", &stays).await;
    let child = Image::random();
    registry.push_image("gone/app/child", "v1", &child).await;
    delete_manifest(&registry, "gone/app", &gone.digest).await;
    delete_manifest(&registry, "gone/app", &stays.digest).await;
    assert_eq!(
        catalog(&registry).await,
        ["gone/app", "gone/app/child", "stays/app"],
        "a repository without manifests is still listed before gc"
    );

    // A dry run says so and changes nothing.
    let report = gc(&registry, true, "0s").await;
    assert!(
        report.contains("would remove repository gone/app (no manifests, tags or uploads left)"),
        "{report}"
    );
    assert!(!report.contains("repository stays/app"), "{report}");
    assert!(!report.contains("repository gone/app/child"), "{report}");
    assert_eq!(
        catalog(&registry).await,
        ["gone/app", "gone/app/child", "stays/app"]
    );

    let report = gc(&registry, false, "0s").await;
    assert!(
        report.contains("removed repository gone/app (no manifests, tags or uploads left)"),
        "{report}"
    );
    assert_eq!(
        catalog(&registry).await,
        ["gone/app/child", "stays/app"],
        "{report}"
    );
    if !common::s3_backend() {
        let repositories = registry.root().join("docker/registry/v2/repositories");
        for gone in [
            "gone/app/_layers",
            "gone/app/_manifests",
            "gone/app/_uploads",
        ] {
            assert!(!repositories.join(gone).exists(), "{gone} is removed");
        }
        assert!(repositories.join("gone/app/child/_manifests").is_dir());
    }
    // What stays is whole: both images pull, layer by layer.
    for (repository, image) in [("stays/app", &stays), ("gone/app/child", &child)] {
        let manifest = registry
            .get(&format!("/v2/{repository}/manifests/v1"))
            .await;
        assert_eq!(manifest.status(), StatusCode::OK, "{repository}");
        for blob in std::iter::once(&image.config).chain(&image.layers) {
            let digest = common::sha256(blob);
            let got = registry
                .get(&format!("/v2/{repository}/blobs/{digest}"))
                .await;
            assert_eq!(got.status(), StatusCode::OK, "{repository} {digest}");
            assert_eq!(got.bytes().await.unwrap().as_ref(), blob.as_slice());
        }
    }
    // The name can be pushed to again, and is listed again.
    registry
        .push_image("gone/app", "v3", &Image::random())
        .await;
    assert_eq!(
        catalog(&registry).await,
        ["gone/app", "gone/app/child", "stays/app"]
    );
    let report = gc(&registry, false, "0s").await;
    assert!(!report.contains("repository gone/app "), "{report}");
}

/// Upload sessions started and cancelled in one repository while `gc`
/// empties it again and again: the directories gc removes with `rmdir`
/// (`_uploads`, the repository's own) are made again by the writers, and
/// no request fails for it.
#[tokio::test]
async fn uploads_racing_gc_on_an_emptied_repository_all_succeed() {
    let mut registry = TestRegistry::start().await;
    // Upload caps count per replica: a session started on one replica and
    // cancelled through the other would hold its slot (S3 pass).
    registry.single_replica();
    let registry = std::sync::Arc::new(registry);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pusher = {
        let (registry, stop) = (registry.clone(), stop.clone());
        tokio::spawn(async move {
            let mut rounds = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let session = registry.start_upload_with("race/app", vec![1u8; 10]).await;
                let cancel = registry.http.delete(&session).send().await.unwrap();
                assert_eq!(cancel.status(), StatusCode::NO_CONTENT, "DELETE during gc");
                rounds += 1;
                // Idle moments of 0 to 3 ms, in which gc finds the
                // repository empty and the next POST races its rmdir.
                tokio::time::sleep(std::time::Duration::from_millis(rounds % 4)).await;
            }
            rounds
        })
    };
    let repository = registry
        .root()
        .join("docker/registry/v2/repositories/race/app");
    // The repository's directory, removed by gc and made again by a
    // writer, has a new birth time: how often gc removed it under the
    // writers' feet (inode numbers are reused at once, birth times not).
    let mut inodes = std::collections::HashSet::<std::time::SystemTime>::new();
    let inode = |path: &std::path::Path| std::fs::metadata(path).ok()?.created().ok();
    inodes.extend(inode(&repository));
    for _ in 0..30 {
        gc(&registry, false, "1h").await;
        inodes.extend(inode(&repository));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = pusher.await.expect("no request failed while gc ran");
    assert!(rounds > 0, "uploads ran during gc");
    // With nothing arriving, gc leaves no trace of the repository.
    gc(&registry, false, "1h").await;
    if !common::s3_backend() {
        assert!(!repository.exists(), "race/app is removed once idle");
        assert!(
            !repository.parent().unwrap().exists(),
            "and so is race/, empty"
        );
    }
    println!(
        "{rounds} upload rounds during 30 gc runs; race/app made anew {} times",
        inodes.len().saturating_sub(1)
    );
    if !common::s3_backend() {
        assert!(
            inodes.len() > 1,
            "gc removed the repository under the writers at least once"
        );
    }
}

/// On S3 the bucket is the store's root: a missing one is an error for
/// every maintenance command, dry runs included, and none creates it.
#[tokio::test]
async fn a_missing_bucket_is_an_error_for_every_maintenance_command() {
    if !common::s3_backend() {
        return; // the filesystem's missing root: tests/cli.rs
    }
    let registry = TestRegistry::start().await;
    let bucket = format!("no-such-bucket-{}", uuid::Uuid::new_v4().simple());
    let env: Vec<(String, String)> = storage_env(registry.config())
        .into_iter()
        .map(|(k, v)| {
            if k == "PORTCULLIS_STORAGE__BUCKET" {
                (k, bucket.clone())
            } else {
                (k, v)
            }
        })
        .collect();
    for args in [
        &["gc"][..],
        &["gc", "--dry-run"],
        &["fsck"],
        &["fsck", "--repair"],
        &["token", "list"],
    ] {
        let shown = format!("{args:?}");
        let (env, args) = (env.clone(), args.to_vec());
        let output = tokio::task::spawn_blocking(move || {
            let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
            for (key, _) in std::env::vars() {
                if key.starts_with("PORTCULLIS_") {
                    command.env_remove(key);
                }
            }
            command
                .env_remove("AWS_CA_BUNDLE")
                .args(&args)
                .envs(env)
                .env("PORTCULLIS_STORAGE__MAX_RETRIES", "0")
                .output()
                .expect("run portcullis")
        })
        .await
        .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{shown}: {stderr}");
        assert!(
            stderr.contains(&bucket),
            "{shown} names the bucket: {stderr}"
        );
    }
}
