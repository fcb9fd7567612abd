//! The `portcullis` binary's maintenance commands, run as an operator would:
//! `gc` (dry run and real) against a store a real server filled, and `config`
//! printing the effective settings or refusing an invalid file.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{expect_error, random_bytes, sha256, TestRegistry};
use oci_client::secrets::RegistryAuth;
use reqwest::StatusCode;

/// `portcullis <args>` with a clean `PORTCULLIS_*` environment plus `env`.
fn portcullis(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    for (key, _) in std::env::vars() {
        if key.starts_with("PORTCULLIS_") {
            command.env_remove(key);
        }
    }
    command
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run the portcullis binary")
}

fn gc(root: &Path, dry_run: bool) -> String {
    let root = root.to_str().expect("UTF-8 temp path");
    let args: &[&str] = if dry_run {
        &["gc", "--dry-run"]
    } else {
        &["gc"]
    };
    let output = portcullis(
        args,
        &[
            ("PORTCULLIS_STORAGE__ROOT", root),
            ("PORTCULLIS_STORAGE__UPLOAD_MAX_AGE", "0s"),
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "gc failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn blob_file(root: &Path, digest: &str) -> std::path::PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    root.join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

#[tokio::test]
async fn gc_removes_orphan_blobs_and_abandoned_uploads_but_keeps_images() {
    let mut registry = TestRegistry::start().await;
    let client = registry.oci_client();
    let reference = registry.reference("app/server", "v1");
    let config = oci_client::client::Config::oci_v1(b"{\"os\":\"linux\"}".to_vec(), None);
    let layers = vec![
        oci_client::client::ImageLayer::oci_v1(random_bytes(20_000), None),
        oci_client::client::ImageLayer::oci_v1(random_bytes(30_000), None),
    ];
    client
        .push(
            &reference,
            &layers,
            config.clone(),
            &RegistryAuth::Anonymous,
            None,
        )
        .await
        .expect("image push succeeds");
    let (_, manifest_digest) = client
        .pull_manifest_raw(
            &reference,
            &RegistryAuth::Anonymous,
            &[common::OCI_MANIFEST],
        )
        .await
        .expect("manifest pull succeeds");
    let kept = [
        manifest_digest,
        config.sha256_digest(),
        layers[0].sha256_digest(),
        layers[1].sha256_digest(),
    ];

    let orphan = random_bytes(7_777);
    let orphan_digest = registry.push_blob("app/server", &orphan).await;
    let session = registry
        .start_upload_with("app/server", vec![0u8; 100])
        .await;
    let upload_id = session.rsplit('/').next().unwrap().to_owned();
    let upload_dir = registry
        .root()
        .join("docker/registry/v2/repositories/app/server/_uploads")
        .join(&upload_id);
    registry.stop().await;

    // A dry run reports both, and removes neither.
    let report = gc(registry.root(), true);
    assert!(
        report.contains(&format!("would remove blob {orphan_digest} (7777 bytes)")),
        "{report}"
    );
    assert!(
        report.contains(&format!(
            "would remove upload app/server/{upload_id} (100 bytes)"
        )),
        "{report}"
    );
    assert!(report.contains("7877 bytes would be freed"), "{report}");
    for digest in &kept {
        assert!(
            !report.contains(digest.as_str()),
            "{digest} is in use: {report}"
        );
    }
    assert!(blob_file(registry.root(), &orphan_digest).is_file());
    assert!(upload_dir.is_dir());

    // The real run removes them, and says how much it freed.
    let report = gc(registry.root(), false);
    assert!(
        report.contains(&format!("removed blob {orphan_digest} (7777 bytes)")),
        "{report}"
    );
    assert!(
        report.contains(&format!(
            "removed upload app/server/{upload_id} (100 bytes)"
        )),
        "{report}"
    );
    assert!(report.contains("7877 bytes freed"), "{report}");
    assert!(!blob_file(registry.root(), &orphan_digest).exists());
    assert!(!upload_dir.exists());
    for digest in &kept {
        assert!(
            blob_file(registry.root(), digest).is_file(),
            "{digest} kept"
        );
    }

    // The image still pulls; the orphan and the session are gone.
    registry.restart().await;
    let client = registry.oci_client();
    let reference = registry.reference("app/server", "v1");
    let image = client
        .pull(
            &reference,
            &RegistryAuth::Anonymous,
            vec![oci_client::manifest::IMAGE_LAYER_MEDIA_TYPE],
        )
        .await
        .expect("the image still pulls after gc");
    let mut pulled: Vec<_> = image.layers.iter().map(|l| l.sha256_digest()).collect();
    let mut pushed: Vec<_> = layers.iter().map(|l| l.sha256_digest()).collect();
    pulled.sort();
    pushed.sort();
    assert_eq!(pulled, pushed);
    let blob = registry
        .get(&format!("/v2/app/server/blobs/{orphan_digest}"))
        .await;
    expect_error(blob, 404, "BLOB_UNKNOWN").await;
    let session = registry.url(&format!("/v2/app/server/blobs/uploads/{upload_id}"));
    let status = registry.http.get(&session).send().await.unwrap();
    expect_error(status, 404, "BLOB_UPLOAD_UNKNOWN").await;

    // Nothing is left to collect.
    let report = gc(registry.root(), false);
    assert!(report.contains(" 0 bytes freed"), "{report}");
}

#[tokio::test]
async fn gc_removes_an_abandoned_upload_in_a_repository_with_no_content() {
    let mut registry = TestRegistry::start().await;
    // The first push to a new repository is abandoned after one chunk.
    let session = registry.start_upload("brand/new").await;
    registry
        .http
        .patch(&session)
        .body(vec![0u8; 64])
        .send()
        .await
        .unwrap();
    let upload_id = session.rsplit('/').next().unwrap().to_owned();
    let upload_dir = registry
        .root()
        .join("docker/registry/v2/repositories/brand/new/_uploads")
        .join(&upload_id);
    assert!(upload_dir.is_dir());
    registry.stop().await;

    let report = gc(registry.root(), false);
    assert!(
        report.contains(&format!("removed upload brand/new/{upload_id} (64 bytes)")),
        "{report}"
    );
    assert!(!upload_dir.exists(), "the abandoned upload is gone");
}

#[tokio::test]
async fn gc_keeps_the_children_of_a_tagged_index() {
    let mut registry = TestRegistry::start().await;
    let (a, b) = (common::Image::random(), common::Image::random());
    registry.push_image("multi", &a.digest, &a).await;
    registry.push_image("multi", &b.digest, &b).await;
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": common::OCI_INDEX,
        "manifests": [a.descriptor(), b.descriptor()],
    }))
    .unwrap();
    let put = registry
        .put_manifest("multi", "latest", common::OCI_INDEX, index.clone())
        .await;
    assert_eq!(put.status(), StatusCode::CREATED);
    registry.stop().await;

    let report = gc(registry.root(), false);
    assert!(report.contains(" 0 bytes freed"), "{report}");
    for digest in a.blob_digests().into_iter().chain(b.blob_digests()).chain([
        a.digest.clone(),
        b.digest.clone(),
        sha256(&index),
    ]) {
        assert!(
            blob_file(registry.root(), &digest).is_file(),
            "{digest} kept"
        );
    }
}

#[test]
fn config_prints_the_effective_configuration() {
    let output = portcullis(
        &["config"],
        &[
            ("PORTCULLIS_STORAGE__ROOT", "/srv/registry"),
            ("PORTCULLIS_LISTEN", "0.0.0.0:5555"),
            ("PORTCULLIS_STORAGE__UPLOAD_MAX_AGE", "2h"),
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: portcullis::config::Config =
        toml::from_str(&stdout).unwrap_or_else(|e| panic!("config output is TOML ({e}): {stdout}"));
    let mut expected = portcullis::config::Config {
        listen: "0.0.0.0:5555".parse().unwrap(),
        ..Default::default()
    };
    expected.storage.root = "/srv/registry".into();
    expected.storage.upload_max_age = std::time::Duration::from_secs(2 * 3600);
    assert_eq!(printed, expected);
}

#[test]
fn config_reads_a_file_and_the_environment_overrides_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("portcullis.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:6000\"\n[storage]\nroot = \"/from/file\"\n[limits]\nmax_page_size = 50\n",
    )
    .unwrap();
    let output = portcullis(
        &["config", "--config", file.to_str().unwrap()],
        &[("PORTCULLIS_STORAGE__ROOT", "/from/env")],
    );
    assert!(output.status.success());
    let printed: portcullis::config::Config =
        toml::from_str(&String::from_utf8_lossy(&output.stdout)).unwrap();
    assert_eq!(printed.listen.port(), 6000);
    assert_eq!(printed.storage.root, Path::new("/from/env"));
    assert_eq!(printed.limits.max_page_size, 50);
}

#[test]
fn an_invalid_config_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    for (contents, expected) in [
        ("listn = \"127.0.0.1:5000\"\n", "listn"),
        ("listen = \"not an address\"\n", "listen"),
        ("[storage]\nupload_max_age = \"soon\"\n", "upload_max_age"),
        (
            "[limits]\nmax_page_size = 0\n",
            "max_page_size must be greater than 0",
        ),
        ("this is not toml", "invalid configuration"),
    ] {
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, contents).unwrap();
        for command in ["config", "gc"] {
            let output = portcullis(&[command, "--config", file.to_str().unwrap()], &[]);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(!output.status.success(), "{command} accepted {contents:?}");
            assert!(
                stderr.contains("error:") && stderr.contains(expected),
                "{command} with {contents:?}: stderr should name {expected:?}, got: {stderr}"
            );
            assert!(output.stdout.is_empty(), "nothing printed on stdout");
        }
    }

    let missing = dir.path().join("missing.toml");
    let output = portcullis(&["config", "--config", missing.to_str().unwrap()], &[]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("does not exist"), "{stderr}");
}

/// Every command besides `serve` that opens the store, with the arguments
/// it needs (`CONFIG` is replaced by a config file's path).
const MAINTENANCE: &[&[&str]] = &[
    &["gc"],
    &["gc", "--dry-run"],
    &["fsck"],
    &["fsck", "--repair"],
    &["fsck", "--fix-permissions"],
    &["fsck", "--fix-permissions", "--dry-run"],
    &["token", "list"],
    &["token", "create", "--user", "ci"],
    &["token", "revoke", "0123456789abcdef"],
    &["policy", "audit", "--config", "CONFIG"],
];

/// Runs `args` in `cwd` with the config file `config` (via `--config` for
/// the commands that take it that way, `PORTCULLIS_*` otherwise).
fn run_in(cwd: &Path, args: &[&str], config: &Path, env: &[(&str, &str)]) -> Output {
    let config = config.to_str().expect("UTF-8 temp path");
    let mut args: Vec<&str> = args
        .iter()
        .map(|a| if *a == "CONFIG" { config } else { a })
        .collect();
    if !args.contains(&config) {
        args.extend(["--config", config]);
    }
    let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    for (key, _) in std::env::vars() {
        if key.starts_with("PORTCULLIS_") {
            command.env_remove(key);
        }
    }
    command
        .current_dir(cwd)
        .args(&args)
        .envs(env.iter().copied())
        .output()
        .expect("run the portcullis binary")
}

/// Every path below `dir` with what a write would change: type, size,
/// mode, owner and modification time (not the access time: reads change it).
fn snapshot(dir: &Path) -> std::collections::BTreeMap<std::path::PathBuf, String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = std::collections::BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path).expect("stat");
        out.insert(
            path.strip_prefix(dir).unwrap().to_path_buf(),
            format!(
                "{:?} {} {:o} {}:{} {}.{}",
                meta.file_type(),
                meta.len(),
                meta.mode(),
                meta.uid(),
                meta.gid(),
                meta.mtime(),
                meta.mtime_nsec()
            ),
        );
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).expect("list") {
                pending.push(entry.expect("entry").path());
            }
        }
    }
    out
}

#[test]
fn a_missing_storage_root_is_an_error_and_nothing_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().join("elsewhere");
    std::fs::create_dir(&cwd).unwrap();
    let missing = dir.path().join("typo/data");
    let config = dir.path().join("portcullis.toml");
    // A typo in the configured root, and the relative default `./data` run
    // from another directory: both are reported, with the absolute path.
    for (root_line, shown) in [
        (
            format!("root = {:?}", missing.to_str().unwrap()),
            missing.clone(),
        ),
        (String::new(), cwd.join("data")),
    ] {
        std::fs::write(&config, format!("[storage]\n{root_line}\n")).unwrap();
        for args in MAINTENANCE {
            let output = run_in(&cwd, args, &config, &[]);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(!output.status.success(), "{args:?} succeeded: {stderr}");
            assert!(
                stderr.contains(&format!("storage root {} does not exist", shown.display()))
                    && stderr.contains("storage.root"),
                "{args:?}: {stderr}"
            );
            assert!(
                !dir.path().join("typo").exists(),
                "{args:?} created the root"
            );
            assert_eq!(
                std::fs::read_dir(&cwd).unwrap().count(),
                0,
                "{args:?} created something in the working directory"
            );
        }
        // `policy check` needs no store: it compiles the chain without
        // caching it below a root that is not there.
        let output = run_in(&cwd, &["policy", "check"], &config, &[]);
        assert!(output.status.success(), "{output:?}");
        assert_eq!(std::fs::read_dir(&cwd).unwrap().count(), 0, "policy check");
        assert!(!dir.path().join("typo").exists(), "policy check");
    }

    // A root that exists but holds no registry (the directory above the
    // right one, say) is refused too, by every command that would read or
    // clean it; `token create` may lay the store out in it.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(
        &config,
        format!("[storage]\nroot = {:?}\n", empty.to_str().unwrap()),
    )
    .unwrap();
    for args in MAINTENANCE.iter().filter(|a| a.get(1) != Some(&"create")) {
        let output = run_in(&cwd, args, &config, &[]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded: {stderr}");
        assert!(
            stderr.contains("holds no registry data (docker/registry/v2 does not exist"),
            "{args:?}: {stderr}"
        );
        assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0, "{args:?}");
    }
    let output = run_in(&cwd, &["token", "create", "--user", "ci"], &config, &[]);
    assert!(output.status.success(), "{output:?}");
    assert!(empty.join("docker/registry/v2/_portcullis/tokens").is_dir());
    let output = run_in(&cwd, &["token", "list"], &config, &[]);
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("ci"),
        "{output:?}"
    );
}

#[tokio::test]
async fn a_dry_run_and_a_check_write_nothing_at_all() {
    let mut registry = TestRegistry::start().await;
    if common::s3_backend() {
        return; // the files are what this test looks at
    }
    let image = common::Image::random();
    registry.push_image("kept/app", "v1", &image).await;
    registry.push_blob("kept/app", &random_bytes(999)).await;
    let emptied = common::Image::random();
    registry.push_image("emptied/app", "v1", &emptied).await;
    let deleted = registry
        .send(
            reqwest::Method::DELETE,
            &format!("/v2/emptied/app/manifests/{}", emptied.digest),
        )
        .await;
    assert_eq!(deleted.status(), StatusCode::ACCEPTED);
    let session = registry.start_upload("kept/app").await;
    registry
        .http
        .patch(&session)
        .body(vec![0u8; 10])
        .send()
        .await
        .unwrap();
    registry.stop().await;
    let root = registry.root().to_owned();
    // A registry:2 directory has no `_tmp`: nothing may make one.
    std::fs::remove_dir_all(root.join("docker/registry/v2/_tmp")).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let config = scratch.path().join("maintenance.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\nroot = {:?}\nupload_max_age = \"0s\"\nfile_mode = \"0600\"\ndir_mode = \"0710\"\n",
            root.to_str().unwrap()
        ),
    )
    .unwrap();

    let before = snapshot(&root);
    for args in [
        &["gc", "--dry-run"][..],
        &["fsck"],
        &["token", "list"],
        &["fsck", "--fix-permissions", "--dry-run"],
    ] {
        let output = run_in(&root, args, &config, &[]);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{args:?}: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        if args[0] == "gc" {
            // It had plenty to do: it only said so.
            assert!(
                stdout.contains("would remove repository emptied/app"),
                "{stdout}"
            );
            assert!(stdout.contains("would remove upload kept/app/"), "{stdout}");
            assert!(stdout.contains("would remove blob"), "{stdout}");
        }
        if args.get(1) == Some(&"--fix-permissions") {
            assert!(
                stdout
                    .lines()
                    .any(|l| l.starts_with("would change: .: mode ") && l.ends_with(" -> 0710")),
                "{stdout}"
            );
        }
        let after = snapshot(&root);
        assert!(
            before == after,
            "{args:?} changed the store: {:?}",
            before
                .iter()
                .filter(|(path, meta)| after.get(*path) != Some(*meta))
                .chain(after.iter().filter(|(path, _)| !before.contains_key(*path)))
                .collect::<Vec<_>>()
        );
    }
}
