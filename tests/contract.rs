//! Contract 0.2 against the real server: what a policy sees of an image on
//! push and pull, components built against 0.1 running unchanged, lookups,
//! the log and crypto imports bounded per evaluation; audit mode, the
//! decision log, `policy replay`, `policy audit` and `policy test --cases`.
//!
//! Hostile cases (a policy is untrusted code), each with its expected outcome:
//!
//! | case                                                     | expected                                   |
//! |----------------------------------------------------------|--------------------------------------------|
//! | 2,000 lookups in one evaluation                          | 16 answered, the rest `limit-reached`       |
//! | a lookup of `../../other/repo`, a digest `sha256:../..`  | `invalid`, nothing outside the repository  |
//! | 10,000 log messages of 10 KiB with newlines              | 16 written, cut to 1 KiB, no forged lines  |
//! | 1,000 signature verifications                            | 64 answered, the rest refused              |
//! | a config that is not an image config                     | `config: none`, the push decided anyway    |

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{misbehave, policy, random_bytes, Image, TestRegistry};
use reqwest::StatusCode;
use serde_json::{json, Value};

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn portcullis(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    for (key, _) in std::env::vars() {
        if key.starts_with("PORTCULLIS_") {
            command.env_remove(key);
        }
    }
    command
        .args(args)
        .output()
        .expect("run the portcullis binary")
}

/// `portcullis` on a blocking thread: the test's runtime also serves the
/// registry the command may talk to.
async fn portcullis_async(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        portcullis(&args)
    })
    .await
    .expect("the command's thread")
}

fn fixture_v01() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tag-immutability-0.1.wasm")
        .display()
        .to_string()
}

/// An image whose config says what a Dockerfile would.
fn labelled_image() -> Image {
    let config = serde_json::to_vec(&json!({
        "architecture": "arm64", "os": "linux",
        "created": "2026-11-30T10:00:00Z",
        "config": {
            "User": "1000:1000",
            "Labels": { "org.opencontainers.image.source": "https://git.example.com/app" },
            "ExposedPorts": { "8080/tcp": {} },
            "Env": ["PATH=/usr/bin"],
            "Cmd": ["/app"]
        },
        "history": [{}, {}, {}],
        "rootfs": { "type": "layers", "diff_ids": [] },
        "nonce": hex::encode(random_bytes(8)),
    }))
    .expect("config serialises");
    Image::from_parts(
        config,
        vec![random_bytes(1000), random_bytes(2000)],
        json!({}),
    )
}

async fn reason(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let message = body["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (status, message)
}

#[tokio::test]
async fn policies_see_the_image_config_layers_and_platforms_on_pull_and_push() {
    let facts = || json!({ "mode": "facts" });
    let registry = TestRegistry::start_with(|c| {
        let mut pulls = policy("facts-on-pull", &misbehave(), facts());
        pulls.actions = Some(vec![portcullis::config::Action::Pull]);
        pulls.repositories = Some(vec!["seen/**".into()]);
        let mut pushes = policy("facts-on-push", &misbehave(), facts());
        pushes.actions = Some(vec![portcullis::config::Action::Push]);
        pushes.repositories = Some(vec!["pushed/**".into()]);
        c.policy.chain = vec![pulls, pushes];
    })
    .await;
    let image = labelled_image();
    registry.push_image("seen/app", "v1", &image).await;
    let total = image.config.len() + 3000;
    for path in [
        "/v2/seen/app/manifests/v1".to_owned(),
        format!("/v2/seen/app/manifests/{}", image.digest),
    ] {
        let (status, message) = reason(registry.get(&path).await).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{message}");
        for expected in [
            "action=Action::Pull",
            "now=true",
            "layers=2",
            &format!("total={total}"),
            "os=linux arch=arm64",
            "user=\"1000:1000\"",
            "org.opencontainers.image.source",
            "ports=[\"8080/tcp\"] history=3",
        ] {
            assert!(message.contains(expected), "{expected} in {message}");
        }
    }
    // A missing manifest is decided without facts, then 404: nothing about
    // what exists leaks to a caller the chain refuses, nothing 5xx.
    let missing = registry.get("/v2/seen/app/manifests/nope").await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    // An index shows its children's platforms.
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": image.digest, "size": image.manifest.len(),
            "platform": { "os": "linux", "architecture": "arm64", "variant": "v8" }
        }]
    }))
    .expect("index");
    let put = registry
        .put_manifest("seen/app", "multi", OCI_INDEX, index)
        .await;
    assert_eq!(put.status(), StatusCode::CREATED);
    let (_, message) = reason(registry.get("/v2/seen/app/manifests/multi").await).await;
    assert!(message.contains("child=linux/arm64"), "{message}");

    // On push, the config is read from the store before the decision.
    let (status, body) = registry
        .push_image_as(None, "pushed/app", "v1", &labelled_image())
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let message = body["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("action=Action::Push") && message.contains("user=\"1000:1000\""),
        "{message}"
    );

    // A config that is not JSON is no image config: decided, without it.
    let odd = Image::from_parts(b"not json".to_vec(), vec![random_bytes(10)], json!({}));
    let (status, body) = registry.push_image_as(None, "pushed/odd", "v1", &odd).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let message = body["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("config=none"), "{message}");
}

#[tokio::test]
async fn a_component_built_against_contract_0_1_loads_and_decides_unchanged() {
    let registry = TestRegistry::start_with(|c| {
        c.policy.chain = vec![policy(
            "immutable-0.1",
            &fixture_v01(),
            json!({ "tags": ["v*"] }),
        )];
    })
    .await;
    registry.push_image("old/app", "v1", &Image::random()).await;
    let (status, body) = registry
        .push_image_as(None, "old/app", "v1", &Image::random())
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.to_string().contains("immutable"), "{body}");
    assert_eq!(
        registry.get("/v2/old/app/manifests/v1").await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn lookups_are_confined_bounded_and_counted() {
    let registry = TestRegistry::start_with(|c| {
        let mut entry = policy("looker", &misbehave(), json!({ "mode": "lookups" }));
        entry.actions = Some(vec![portcullis::config::Action::Pull]);
        c.policy.chain = vec![entry];
    })
    .await;
    registry
        .push_image("look/app", "v1", &Image::random())
        .await;
    registry
        .push_image("other/repo", "v1", &Image::random())
        .await;
    let started = std::time::Instant::now();
    let (status, message) = reason(registry.get("/v2/look/app/manifests/v1").await).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // 16 calls: the two hostile names are invalid, 14 are answered; the
    // other 1,986 are refused without touching the store.
    assert_eq!(
        message,
        "denied by policy looker: invalid=2 limit=1986 ok=14"
    );
    // Bounded: no evaluation runs long (a debug build on a busy machine too).
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    let metrics = registry
        .get("/metrics")
        .await
        .text()
        .await
        .unwrap_or_default();
    for line in [
        "portcullis_policy_lookups_total{kind=\"manifest\",outcome=\"ok\"} 7",
        "portcullis_policy_lookups_total{kind=\"blob\",outcome=\"ok\"} 7",
        "portcullis_policy_lookups_total{kind=\"manifest\",outcome=\"invalid\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in /metrics");
    }
    assert!(metrics.contains("portcullis_policy_lookup_bytes_total"));
}

#[tokio::test]
async fn signature_verifications_per_evaluation_are_bounded() {
    let registry = TestRegistry::start_with(|c| {
        c.policy.chain = vec![policy(
            "verifier",
            &misbehave(),
            json!({ "mode": "verify-flood" }),
        )];
    })
    .await;
    let (status, message) = reason(registry.get("/v2/any/app/tags/list").await).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        message,
        "denied by policy verifier: answered=64 refused=936"
    );
}

/// A JSON request for `policy test`.
fn pull_request(repository: &str) -> String {
    json!({ "action": "pull", "resource": "manifest", "repository": repository,
            "reference": { "tag": "v1" } })
    .to_string()
}

#[test]
fn guest_log_messages_are_bounded_and_cannot_forge_lines() {
    let output = portcullis(&[
        "policy",
        "test",
        "--no-cache",
        "--policy",
        &misbehave(),
        "--settings",
        r#"{"mode":"log-flood"}"#,
        "--request",
        &pull_request("a/b"),
    ]);
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Written to the log: 16 lines, each cut to 1 KiB, newlines replaced.
    let written: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("portcullis::policy"))
        .collect();
    assert_eq!(written.len(), 16, "{stderr}");
    assert!(written.iter().all(|l| l.len() < 1400), "messages are cut");
    assert!(
        !stderr.lines().any(|l| l.starts_with("forged")),
        "a message forged a line"
    );
}

#[test]
fn policy_test_runs_tables_of_cases_with_exit_codes_and_the_compile_cache() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = dir.path().join("cache");
    let cases = dir.path().join("cases.json");
    let write_cases = |expect_second: &str| {
        let table = json!([
            { "name": "a re-push of v1 moves it", "expect": "deny", "reason": "immutable",
              "request": { "action": "push", "resource": "manifest", "repository": "a/b",
                "reference": { "tag": "v1" }, "current-digest": format!("sha256:{}", "a".repeat(64)),
                "manifest": { "media-type": "application/vnd.oci.image.manifest.v1+json",
                              "digest": format!("sha256:{}", "b".repeat(64)) } } },
            { "name": "latest moves", "expect": expect_second,
              "request": { "action": "push", "resource": "manifest", "repository": "a/b",
                "reference": { "tag": "latest" } } }
        ]);
        std::fs::write(&cases, table.to_string()).expect("write cases");
    };
    let run = || {
        portcullis(&[
            "policy",
            "test",
            "--policy",
            &fixture_v01(),
            "--settings",
            r#"{"tags":["v*"]}"#,
            "--cases",
            cases.to_str().unwrap_or_default(),
            "--cache-dir",
            cache.to_str().unwrap_or_default(),
        ])
    };
    write_cases("allow");
    let first = run();
    assert_eq!(first.status.code(), Some(0), "{first:?}");
    assert!(String::from_utf8_lossy(&first.stdout).contains("0 failed"));
    assert!(
        std::fs::read_dir(&cache).map(|d| d.count()).unwrap_or(0) > 0,
        "compiled into the cache"
    );
    write_cases("deny");
    let mismatch = run();
    assert_eq!(mismatch.status.code(), Some(1), "{mismatch:?}");
    assert!(String::from_utf8_lossy(&mismatch.stdout).contains("FAIL  latest moves"));
    // One request: 0 allowed, 1 denied; 2 when it cannot run at all.
    let one = |request: &str| {
        portcullis(&[
            "policy",
            "test",
            "--no-cache",
            "--policy",
            &fixture_v01(),
            "--settings",
            r#"{"tags":["v*"]}"#,
            "--request",
            request,
        ])
    };
    assert_eq!(one(&pull_request("a/b")).status.code(), Some(0));
    let missing = portcullis(&[
        "policy",
        "test",
        "--policy",
        "/nonexistent.wasm",
        "--request",
        "{}",
    ]);
    assert_eq!(missing.status.code(), Some(2), "{missing:?}");
}

/// `portcullis policy check` of `config`, written into `dir`.
async fn check(dir: &Path, config: &portcullis::config::Config) -> Output {
    let file = write_config(dir, config);
    portcullis_async(&[
        "policy",
        "check",
        "--config",
        file.to_str().unwrap_or_default(),
    ])
    .await
}

fn write_config(dir: &Path, config: &portcullis::config::Config) -> std::path::PathBuf {
    let path = dir.join("portcullis.toml");
    std::fs::write(&path, toml::to_string(config).expect("config serialises")).expect("write");
    path
}

#[tokio::test]
async fn audit_mode_lets_requests_through_and_the_decision_log_replays_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("decisions.jsonl");
    let log_path = log.clone();
    let registry = TestRegistry::start_with(move |c| {
        let mut entry = policy(
            "immutable",
            "builtin:tag-immutability",
            json!({ "tags": ["v*"] }),
        );
        entry.mode = portcullis::config::PolicyMode::Audit;
        c.policy.chain = vec![entry];
        c.policy.decision_log.path = Some(log_path);
    })
    .await;
    registry
        .push_image("audit/app", "v1", &Image::random())
        .await;
    // Would be refused; audit lets it through, logs and counts it.
    registry
        .push_image("audit/app", "v1", &Image::random())
        .await;
    let metrics = registry
        .get("/metrics")
        .await
        .text()
        .await
        .unwrap_or_default();
    assert!(
        metrics.contains(
            "portcullis_policy_decisions_total{policy=\"immutable\",outcome=\"audit-deny\"} 1"
        ),
        "{metrics}"
    );
    // Written by the log's own thread: wait for it.
    let mut text = String::new();
    for _ in 0..100 {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if !text.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert_eq!(lines[0]["outcome"], "allow");
    assert_eq!(lines[0]["audit"][0]["policy"], "immutable");
    assert_eq!(lines[0]["request"]["repository"], "audit/app");
    assert!(!text.contains("password") && !text.contains("authorization"));

    // The same request under an enforcing chain: the change is reported.
    let mut enforcing = registry.config().clone();
    enforcing.policy.chain[0].mode = portcullis::config::PolicyMode::Enforce;
    enforcing.policy.decision_log.path = None;
    let config = write_config(dir.path(), &enforcing);
    let replay = portcullis(&[
        "policy",
        "replay",
        "--log",
        log.to_str().unwrap_or_default(),
        "--config",
        config.to_str().unwrap_or_default(),
    ]);
    let stdout = String::from_utf8_lossy(&replay.stdout);
    assert_eq!(
        replay.status.code(),
        Some(1),
        "{stdout}{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    assert!(
        stdout.contains("was allow, now deny by immutable"),
        "{stdout}"
    );
    assert!(
        stdout.contains("1 decisions replayed, 1 would change"),
        "{stdout}"
    );
}

#[tokio::test]
async fn policy_audit_lists_the_stored_tags_a_chain_would_refuse() {
    let dir = tempfile::tempdir().expect("temp dir");
    let registry = TestRegistry::start().await;
    registry
        .push_image("team/app", "v1", &Image::random())
        .await;
    registry
        .push_image("rogue/app", "v1", &Image::random())
        .await;
    let mut config = registry.config().clone();
    config.groups.insert("devs".into(), vec!["alice".into()]);
    config.policy.chain = vec![policy(
        "devs-push-team",
        "builtin:group-access",
        json!({ "groups": { "devs": [{ "repositories": ["team/**"], "actions": ["push"] }] } }),
    )];
    let file = write_config(dir.path(), &config);
    let output = portcullis(&[
        "policy",
        "audit",
        "--config",
        file.to_str().unwrap_or_default(),
        "--as",
        "alice",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(1),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("rogue/app:v1"), "{stdout}");
    assert!(!stdout.contains("team/app:v1"), "{stdout}");
    assert!(
        stdout.contains("2 tags checked, 1 would be refused"),
        "{stdout}"
    );
}

#[tokio::test]
async fn a_policy_stored_as_an_oci_artifact_loads_from_a_registry_and_its_cache() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = TestRegistry::start().await;
    let target = format!("{}/policies/immutable:v1", store.addr());
    let pushed = portcullis_async(&["policy", "push", &fixture_v01(), &target]).await;
    let stdout = String::from_utf8_lossy(&pushed.stdout).into_owned();
    assert!(
        pushed.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    let digest = stdout
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the digest is printed")
        .to_owned();

    // Another registry loads it from this one, pinned by digest.
    let module = format!("oci://{}/policies/immutable@{digest}", store.addr());
    let cache = dir.path().join("cache");
    let (module_b, cache_b) = (module.clone(), cache.clone());
    let registry = TestRegistry::start_with(move |c| {
        c.policy.cache_dir = Some(cache_b);
        c.policy.chain = vec![policy("immutable", &module_b, json!({ "tags": ["v*"] }))];
    })
    .await;
    registry.push_image("app", "v1", &Image::random()).await;
    let (status, _) = registry
        .push_image_as(None, "app", "v1", &Image::random())
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "the artifact's policy decides"
    );

    // This registry reads its own artifact from storage (external_url's host).
    let mut own = store.config().clone();
    own.external_url = Some("https://registry.example".into());
    own.policy.cache_dir = Some(dir.path().join("own-cache"));
    own.policy.chain = vec![policy(
        "immutable",
        "oci://registry.example/policies/immutable:v1",
        json!({ "tags": ["v*"] }),
    )];
    let checked = check(dir.path(), &own).await;
    assert!(checked.status.success(), "{checked:?}");
    assert!(String::from_utf8_lossy(&checked.stdout).contains("contract 0.1"));

    // The registry it came from is gone: a digest reference loads from the cache.
    store.stop().await;
    let mut offline = registry.config().clone();
    offline.policy.chain = vec![policy("immutable", &module, json!({ "tags": ["v*"] }))];
    let checked = check(dir.path(), &offline).await;
    assert!(checked.status.success(), "{checked:?}");
    // A tag reference is not trusted from the cache.
    offline.policy.chain[0].module = format!("oci://{target}");
    let checked = check(dir.path(), &offline).await;
    assert!(!checked.status.success(), "{checked:?}");

    // Hostile references are refused at load, with the reason.
    for bad in [
        "oci://host/../x:v1",
        "oci://host/repo",
        "oci://no-such-host.invalid/p:v1",
    ] {
        offline.policy.chain[0].module = bad.into();
        let checked = check(dir.path(), &offline).await;
        assert!(!checked.status.success(), "{bad}");
    }
}
