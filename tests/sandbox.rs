//! The policy sandbox against hostile components, with the real server: tables
//! and memories that would take the host's memory, guests that print, panic,
//! sleep, read stdin or open sockets, and deny reasons of megabytes. Every
//! case ends in a decision the client receives (allow, deny, or
//! failed-and-denied), and everyone else keeps being served.
//!
//! Components that Rust cannot express (a `table.grow` loop, two memories)
//! are core modules written here in WAT and made into components of the
//! `wit/` world with wit-component; the rest is `policies/misbehave`.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::served::Served;
use common::{misbehave, policy, Image, TestRegistry};
use portcullis::config::{Config, PolicyEntry};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Scoped to the repositories `<name>/**`, so that each policy misbehaves
/// only on its own requests.
fn scoped(name: &str, module: &str, settings: Value) -> PolicyEntry {
    PolicyEntry {
        repositories: Some(vec![format!("{name}/**")]),
        mode: Default::default(),
        ..policy(name, module, settings)
    }
}

/// A policy component whose core module has `fields` (memories, tables,
/// functions) besides what the contract needs, and runs `evaluate_body` on
/// every evaluation before allowing. Settings are always accepted.
fn wat_component(fields: &str, evaluate_body: &str) -> Vec<u8> {
    let wat = format!(
        r#"(module
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 4096))
  {fields}
  ;; A bump allocator for the arguments the host lowers into the guest.
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    (local.set $p (i32.and
      (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
      (i32.sub (i32.const 0) (local.get 2))))
    (global.set $heap (i32.add (local.get $p) (local.get 3)))
    (if (i32.gt_u (global.get $heap) (i32.const 131072)) (then unreachable))
    (local.get $p))
  ;; result<_, string> and decision both start with their discriminant: 0 is
  ;; `ok` and `allow`.
  (func (export "validate-settings") (param i32 i32) (result i32)
    (i32.store8 (i32.const 0) (i32.const 0))
    (i32.const 0))
  (func (export "init") (param i32 i32) (result i32)
    (i32.store8 (i32.const 0) (i32.const 0))
    (i32.const 0))
  (func (export "evaluate") (param i32) (result i32)
    (global.set $heap (i32.const 4096))
    {evaluate_body}
    (i32.store8 (i32.const 16) (i32.const 0))
    (i32.const 16))
)"#
    );
    let mut module = wat::parse_str(&wat).expect("the test's WAT parses");
    let mut resolve = wit_parser::Resolve::default();
    let (package, _) = resolve
        .push_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("wit"))
        .expect("wit/ parses");
    let world = resolve
        .select_world(&[package], Some("policy"))
        .expect("the policy world");
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
    )
    .expect("metadata embeds");
    wit_component::ComponentEncoder::default()
        .module(&module)
        .expect("module")
        .validate(true)
        .encode()
        .expect("the component encodes")
}

/// Writes `wasm` as `<dir>/<name>.wasm` and returns its path.
fn write_component(dir: &Path, name: &str, wasm: &[u8]) -> String {
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, wasm).unwrap();
    path.display().to_string()
}

/// GET of a manifest: the status and the error message, if any.
async fn pull(registry: &TestRegistry, repository: &str) -> (StatusCode, String) {
    let response = registry.get(&format!("/v2/{repository}/manifests/1")).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let message = body["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (status, message)
}

#[tokio::test]
async fn a_policy_growing_its_table_by_millions_is_stopped_and_the_host_stays_flat() {
    let dir = tempfile::tempdir().unwrap();
    // The red-team component: a million table elements more on every call.
    let tables = write_component(
        dir.path(),
        "tables",
        &wat_component(
            "(table $t 1 funcref)",
            "(drop (table.grow $t (ref.null func) (i32.const 1000000)))",
        ),
    );
    let served = Served::start(&format!(
        "[[policy.chain]]\nname = \"tables\"\nmodule = {tables:?}\nsettings = {{}}\n"
    ))
    .await;
    let http = reqwest::Client::new();
    let before = served.rss_bytes();
    for _ in 0..40 {
        let response = http
            .get(format!("{}/v2/tables/app/manifests/1", served.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let body: Value = response.json().await.unwrap();
        let message = body["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(message.starts_with("policy tables failed"), "{body}");
    }
    let grown = served.rss_bytes().saturating_sub(before);
    // Unbounded, 40 calls made the server hold 2.7 GB: now every call is
    // refused its growth, and the server stays where it was.
    assert!(grown < 32 << 20, "the server grew by {grown} bytes");
}

#[tokio::test]
async fn table_elements_piling_up_in_a_warm_instance_are_capped_and_the_instance_replaced() {
    let dir = tempfile::tempdir().unwrap();
    // 40,000 elements a call: the 3rd call passes the 100,000-element cap.
    let tables = write_component(
        dir.path(),
        "tables",
        &wat_component(
            "(table $t 0 funcref)",
            "(drop (table.grow $t (ref.null func) (i32.const 40000)))",
        ),
    );
    let mut registry = TestRegistry::start_with(|c| {
        c.policy.chain = vec![PolicyEntry {
            actions: Some(vec![portcullis::config::Action::Pull]),
            ..policy("tables", &tables, json!({}))
        }];
    })
    .await;
    // Warm instances are a replica's own: on the S3 backend, one of the two.
    registry.single_replica();
    registry.push_image("app", "1", &Image::random()).await;
    // One request at a time: one warm instance, 40,000 elements more a call.
    for call in 0..2 {
        assert_eq!(
            pull(&registry, "app").await.0,
            StatusCode::OK,
            "call {call}"
        );
    }
    let (status, message) = pull(&registry, "app").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{message}");
    assert!(message.starts_with("policy tables failed"), "{message}");
    // The failed instance is gone; a fresh one serves the next call.
    assert_eq!(pull(&registry, "app").await.0, StatusCode::OK);
}

#[test]
fn memories_and_tables_count_together_against_policy_memory() {
    let dir = tempfile::tempdir().unwrap();
    // 15 MiB of memory (2 pages declared, 238 grown), then 100,000 table
    // elements (1.6 MB): each fits under 16 MiB alone, not together.
    let both = write_component(
        dir.path(),
        "both",
        &wat_component(
            "(table $t 0 funcref)",
            "(drop (memory.grow (i32.const 238)))
             (drop (table.grow $t (ref.null func) (i32.const 100000)))",
        ),
    );
    let (stdout, _) = policy_test(&both, "{}");
    let first = stdout.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("failed: exceeded its memory limit: growing a table would bring it to ")
            && first.ends_with("over policy.memory (16777216 bytes)"),
        "{stdout}"
    );
}

/// `portcullis policy test` of `module` with `settings` on a pull request:
/// its stdout and stderr (the policy loaded; its decision is in stdout).
fn policy_test(module: &str, settings: &str) -> (String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["policy", "test", "--policy", module, "--settings", settings])
        .args([
            "--request",
            r#"{"action":"pull","resource":"manifest","repository":"a","identity":{"subject":null,"groups":[]}}"#,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    // 0 allowed, 1 denied or failed; 2 would be a policy that did not load.
    assert!(
        matches!(output.status.code(), Some(0 | 1)),
        "{stdout}{stderr}"
    );
    (stdout, stderr)
}

#[test]
fn a_component_with_two_memories_in_one_module_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let two = write_component(
        dir.path(),
        "two",
        &wat_component(
            "(memory $extra 1)",
            "(drop (memory.grow $extra (i32.const 1)))",
        ),
    );
    let mut config = Config::default();
    config.policy.cache_dir = Some(dir.path().join("cache"));
    config.policy.chain = vec![policy("two", &two, json!({}))];
    let engine = std::sync::Arc::new(portcullis::policy::PolicyEngine::new(None).unwrap());
    let error = match portcullis::policy::PolicyChain::load(engine, &config) {
        Ok(_) => panic!("a module with two memories loaded"),
        Err(e) => e.to_string(),
    };
    assert!(
        error.contains("two.wasm is not a valid policy component"),
        "{error}"
    );
    assert!(error.contains("multiple memories"), "{error}");
}

#[tokio::test]
async fn guests_that_print_panic_sleep_read_stdin_or_connect_end_in_a_decision() {
    let registry = TestRegistry::start_with(|c| {
        c.policy.timeout = Duration::from_millis(500);
        c.policy.chain = ["print", "panic", "sleep", "stdin", "socket", "long-deny"]
            .into_iter()
            .map(|mode| scoped(mode, &misbehave(), json!({ "mode": mode })))
            .collect();
    })
    .await;
    registry.push_image("fine/app", "1", &Image::random()).await;
    // The others deny pushes as they deny pulls: their pulls are decided
    // before the store is asked.
    registry
        .push_image("print/app", "1", &Image::random())
        .await;

    let bad = ["panic", "sleep", "stdin", "socket", "long-deny"].map(|mode| {
        let url = registry.url(&format!("/v2/{mode}/app/manifests/1"));
        let http = registry.http.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let response = http
                .get(url)
                .send()
                .await
                .expect("a response, not a dropped connection");
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            (mode, started.elapsed(), status, body)
        })
    });
    // Meanwhile, everyone else is served.
    for _ in 0..20 {
        assert_eq!(pull(&registry, "fine/app").await.0, StatusCode::OK);
    }
    for task in bad {
        let (mode, elapsed, status, body) = task.await.unwrap();
        assert_eq!(status, StatusCode::FORBIDDEN, "{mode}: {body}");
        assert_eq!(body["errors"][0]["code"], "DENIED", "{mode}: {body}");
        let message = body["errors"][0]["message"].as_str().unwrap();
        match mode {
            "panic" => assert!(message.starts_with("policy panic failed"), "{message}"),
            "sleep" => assert!(message.starts_with("policy sleep failed"), "{message}"),
            "stdin" => assert_eq!(message, "denied by policy stdin: read 0 bytes from stdin"),
            "socket" => assert!(
                message.starts_with("denied by policy socket: cannot connect: "),
                "{message}"
            ),
            "long-deny" => {
                assert!(message.len() < 2200, "{} bytes", message.len());
                assert!(
                    message.ends_with(" more bytes]"),
                    "{}",
                    &message[message.len() - 40..]
                );
            }
            _ => unreachable!(),
        }
        // The sleeper is cut off at policy.timeout, not after its hour.
        assert!(elapsed < Duration::from_secs(5), "{mode} took {elapsed:?}");
    }
    // A guest that prints megabytes is allowed; what it printed was bounded.
    assert_eq!(pull(&registry, "print/app").await.0, StatusCode::OK);
    // Failed instances are gone; the policies answer the same way again.
    assert_eq!(pull(&registry, "sleep/app").await.0, StatusCode::FORBIDDEN);
    assert_eq!(pull(&registry, "fine/app").await.0, StatusCode::OK);
}

#[test]
fn policy_test_shows_what_a_guest_printed_bounded_and_what_it_held() {
    let (stdout, stderr) = policy_test(&misbehave(), r#"{"mode": "print"}"#);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "allow", "{stdout}");
    assert!(lines[1].starts_with("fuel used: "), "{stdout}");
    assert!(lines[2].starts_with("memory: "), "{stdout}");
    let start = stderr
        .find("policy output: ")
        .expect("the guest's output on stderr");
    let printed = stderr[start + "policy output: ".len()..].trim_end();
    // 2 MiB written, 4 KiB kept.
    assert!(printed.len() < 4200, "{} bytes", printed.len());
    assert!(printed.ends_with(" more bytes dropped]"), "{printed:.80}");
}

#[tokio::test]
async fn a_large_valid_manifest_passes_the_bundled_policies() {
    let registry = TestRegistry::start_with(|c| {
        c.policy.chain = vec![
            policy(
                "access",
                "builtin:group-access",
                json!({ "anonymous": [{ "repositories": ["**"], "actions": ["pull", "push", "list"] }] }),
            ),
            policy(
                "allowlist",
                "builtin:repo-allowlist",
                json!({ "push": ["**"], "pull": ["**"], "list": ["**"] }),
            ),
            policy(
                "immutable",
                "builtin:tag-immutability",
                json!({ "tags": ["v*"] }),
            ),
        ];
    })
    .await;
    // 100,000 annotations, 2.6 MB: under limits.max_manifest_bytes, and each
    // one a string pair every policy is handed.
    let annotations: serde_json::Map<String, Value> = (0..100_000)
        .map(|i| (format!("org.example.k{i:06}"), json!("v")))
        .collect();
    let image = Image::with_fields(json!({ "annotations": annotations }));
    assert!(image.manifest.len() > 2_500_000, "{}", image.manifest.len());
    registry.push_blobs("big/app", &image).await;
    let response = registry
        .put_manifest(
            "big/app",
            "v1",
            common::OCI_MANIFEST,
            image.manifest.clone(),
        )
        .await;
    let status = response.status();
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{}",
        response.text().await.unwrap()
    );
    let back = registry.get("/v2/big/app/manifests/v1").await;
    assert_eq!(back.status(), StatusCode::OK);
}
