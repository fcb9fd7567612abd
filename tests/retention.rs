//! Retention and scheduled gc against a real server and real storage: rules
//! combined with `any` and `all` over many tags, a dry run that writes
//! nothing, deletes decided by the policy chain (tag-immutability keeps
//! release tags unless retention's identity is exempt), an index that goes
//! with its own children and referrers but not shared ones, the schedule
//! inside a live server kept apart from a command-line run by the lock, and
//! on S3 the lease in the bucket (moto, which enforces conditional writes)
//! or the refusal to schedule without one.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::{unique_prefix, Image, TestRegistry, OCI_INDEX};
use portcullis::config::{Config, KeepIf, RetentionRule};
use portcullis::maintenance::retention::{ManifestOutcome, TagOutcome};
use portcullis::maintenance::{ChainSource, Maintenance, RunOptions, RunReport};
use portcullis::metrics::Metrics;
use portcullis::policy::{PolicyChain, PolicyEngine};
use portcullis::storage::s3::LeaseOutcome;
use portcullis::storage::Storage;
use reqwest::{Method, StatusCode};
use serde_json::json;

const DAY: u64 = 86_400;

fn rule(
    repositories: &[&str],
    tags: &[&str],
    newest: Option<u32>,
    within_days: Option<u64>,
    keep_if: KeepIf,
) -> RetentionRule {
    RetentionRule {
        repositories: repositories.iter().map(|s| s.to_string()).collect(),
        tags: tags.iter().map(|s| s.to_string()).collect(),
        keep_newest: newest,
        keep_within: within_days.map(|d| Duration::from_secs(d * DAY)),
        keep_if,
    }
}

/// Sets when `repository:tag` was last pushed (its link's mtime) to `ago` before now.
fn pushed_ago(root: &Path, repository: &str, tag: &str, ago: Duration) {
    let link = root
        .join("docker/registry/v2/repositories")
        .join(repository)
        .join("_manifests/tags")
        .join(tag)
        .join("current/link");
    let when = SystemTime::now() - ago;
    let secs = when
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let status = Command::new("touch")
        .args(["-m", "-d", &format!("@{secs}")])
        .arg(&link)
        .status()
        .expect("run touch");
    assert!(status.success(), "touch {}", link.display());
}

async fn chain_of(config: &Config) -> Arc<PolicyChain> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || {
        let engine = Arc::new(PolicyEngine::new(Some(config.policy_cache_dir())).unwrap());
        Arc::new(PolicyChain::load(engine, &config).expect("the chain loads"))
    })
    .await
    .unwrap()
}

/// One maintenance run over `config`'s store, as `portcullis gc --retention` makes it.
async fn run(config: &Config, options: RunOptions) -> RunReport {
    let storage = Storage::open(&config.storage)
        .await
        .expect("open the store");
    let chain = chain_of(config).await;
    let maintenance = Maintenance::new(
        config,
        storage,
        Some(ChainSource::Fixed(chain)),
        Arc::new(Metrics::new()),
    )
    .expect("rules compile");
    maintenance.run(options).await.expect("the run succeeds")
}

const RETENTION_AND_GC: RunOptions = RunOptions {
    retention: true,
    gc: true,
    dry_run: false,
};

async fn tags(registry: &TestRegistry, repository: &str) -> Vec<String> {
    let response = registry.get(&format!("/v2/{repository}/tags/list")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: serde_json::Value = response.json().await.unwrap();
    let mut tags: Vec<String> = body["tags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    tags.sort();
    tags
}

async fn manifest_status(registry: &TestRegistry, repository: &str, reference: &str) -> StatusCode {
    registry
        .send(
            Method::HEAD,
            &format!("/v2/{repository}/manifests/{reference}"),
        )
        .await
        .status()
}

fn blob_file(root: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    root.join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn rules_with_any_and_all_decide_which_of_many_tags_stay_and_gc_frees_the_rest() {
    let registry = TestRegistry::start_with(|c| {
        c.storage.upload_max_age = Duration::from_secs(1);
        c.retention = vec![
            // Pull-request builds: the 2 newest, or anything from the last 3 days.
            rule(&["team/*"], &["pr-*"], Some(2), Some(3), KeepIf::Any),
            // Everything else: only what is among the 3 newest AND from the last 5 days.
            rule(&["team/*"], &["*"], Some(3), Some(5), KeepIf::All),
        ];
    })
    .await;
    let root = registry.root().to_owned();
    let mut images = std::collections::HashMap::new();
    for i in 0..6u64 {
        for prefix in ["pr", "b"] {
            let tag = format!("{prefix}-{i}");
            let image = Image::random();
            registry.push_image("team/api", &tag, &image).await;
            // pr-i and b-i were pushed i days (and a minute) ago.
            pushed_ago(&root, "team/api", &tag, Duration::from_secs(i * DAY + 60));
            images.insert(tag, image);
        }
    }
    // One manifest under a dropped tag (pr-5) and a kept one (b-0): it stays.
    registry
        .push_image("team/api", "b-0", &images["pr-5"])
        .await;
    // Another repository, no rule: an old tag stays.
    let other = Image::random();
    registry.push_image("other/api", "old", &other).await;
    pushed_ago(&root, "other/api", "old", Duration::from_secs(400 * DAY));
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let report = run(registry.config(), RETENTION_AND_GC).await;
    let retention = report.retention.expect("retention ran");
    assert_eq!(
        tags(&registry, "team/api").await,
        strings(&["b-0", "b-1", "b-2", "pr-0", "pr-1", "pr-2"])
    );
    assert_eq!(tags(&registry, "other/api").await, strings(&["old"]));
    assert_eq!(retention.tags_deleted(), 6);
    // pr-5's manifest is still b-0's: 5 manifests went, not 6.
    assert_eq!(retention.manifests_deleted(), 5);
    assert_eq!(
        manifest_status(&registry, "team/api", &images["pr-5"].digest).await,
        StatusCode::OK
    );
    for gone in ["pr-3", "pr-4", "b-3", "b-4", "b-5"] {
        assert_eq!(
            manifest_status(&registry, "team/api", &images[gone].digest).await,
            StatusCode::NOT_FOUND,
            "{gone}'s manifest is deleted"
        );
        if !common::s3_backend() {
            for blob in images[gone].blob_digests() {
                assert!(
                    !blob_file(&root, &blob).exists(),
                    "gc freed {gone}'s {blob}"
                );
            }
        }
    }
    let gc = report.gc.expect("gc ran");
    assert!(
        gc.freed_bytes() >= 5 * 4500,
        "gc freed the dropped images' layers ({} bytes)",
        gc.freed_bytes()
    );
    // Each decision names its rule and why.
    let repo = &retention
        .repositories
        .iter()
        .find(|r| r.repository.as_str() == "team/api")
        .unwrap();
    let b3 = repo
        .tags
        .iter()
        .find(|t| t.plan.tag.as_str() == "b-3")
        .unwrap();
    assert_eq!(b3.outcome, TagOutcome::Deleted);
    assert_eq!(
        b3.plan.why,
        "rule 2: 4th newest (keep 3: no), pushed 3d ago (within 5d: yes), all: drop"
    );
    let pr2 = repo
        .tags
        .iter()
        .find(|t| t.plan.tag.as_str() == "pr-2")
        .unwrap();
    assert_eq!(pr2.outcome, TagOutcome::Kept);
    assert!(
        pr2.plan.why.starts_with(
            "rule 1: 3rd newest (keep 2: no), pushed 2d ago (within 3d: yes), any: keep"
        ),
        "{}",
        pr2.plan.why
    );

    // A second run finds nothing more to do.
    let again = run(registry.config(), RETENTION_AND_GC).await;
    assert_eq!(again.retention.unwrap().tags_deleted(), 0);
}

/// `portcullis <args>` with a clean `PORTCULLIS_*` environment, off the test's thread.
async fn portcullis(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
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
    })
    .await
    .unwrap()
}

/// Every file below `dir` with its contents and modification time.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>, SystemTime)> {
    common::files_under(dir)
        .into_iter()
        .filter(|p| !p.starts_with(dir.join("portcullis")))
        .map(|p| {
            let meta = std::fs::metadata(&p).unwrap();
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes, meta.modified().unwrap())
        })
        .collect()
}

#[tokio::test]
async fn a_dry_run_writes_nothing_and_reports_each_tag_with_the_rule_that_decided_it() {
    let registry = TestRegistry::start().await;
    let root = registry.root().to_owned();
    for (i, tag) in ["pr-1", "pr-2", "pr-3", "main"].iter().enumerate() {
        registry.push_image("team/web", tag, &Image::random()).await;
        pushed_ago(
            &root,
            "team/web",
            tag,
            Duration::from_secs((4 - i as u64) * DAY),
        );
    }
    let config = root.join("retention.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[storage]
root = "{}"
upload_max_age = "0s"

[[retention]]
repositories = ["team/*"]
tags = ["pr-*"]
keep_newest = 1
"#,
            root.display()
        ),
    )
    .unwrap();
    let before = snapshot(&root);
    let config = config.display().to_string();
    for args in [
        vec!["retention", "--dry-run", "--config", &config],
        vec!["gc", "--retention", "--dry-run", "--config", &config],
    ] {
        let output = portcullis(args.iter().map(|s| s.to_string()).collect()).await;
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{args:?}: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        for line in [
            "team/web\n",
            "  tag pr-3: keep [rule 1: 1st newest (keep 1: yes), any: keep]\n",
            "  tag pr-2: would delete [rule 1: 2nd newest (keep 1: no), any: drop]\n",
            "  tag pr-1: would delete [rule 1: 3rd newest (keep 1: no), any: drop]\n",
            "  tag main: keep [no rule matches]\n",
            "retention: 2 tags would be deleted, 2 manifests would be deleted, 0 refused by policies\n",
        ] {
            assert!(stdout.contains(line), "{args:?} prints {line:?}:\n{stdout}");
        }
        assert_eq!(snapshot(&root), before, "{args:?} changed the store");
    }
    assert_eq!(
        tags(&registry, "team/web").await,
        strings(&["main", "pr-1", "pr-2", "pr-3"])
    );
    // The same command without --dry-run deletes.
    let output = portcullis(strings(&["retention", "--config", &config])).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("  tag pr-1: deleted [rule 1"));
    assert_eq!(
        tags(&registry, "team/web").await,
        strings(&["main", "pr-3"])
    );
}

#[tokio::test]
async fn tag_immutability_keeps_release_tags_from_retention_unless_its_identity_is_exempt() {
    let immutable = common::policy(
        "immutable-releases",
        "builtin:tag-immutability",
        json!({ "tags": ["v*"], "exempt_groups": ["release-admins"] }),
    );
    let mut registry = TestRegistry::start_with(|c| {
        c.policy.chain = vec![immutable];
        c.retention = vec![rule(&["**"], &["*"], Some(1), None, KeepIf::Any)];
    })
    .await;
    let root = registry.root().to_owned();
    for (i, tag) in ["v1.0.0", "v1.2.0", "nightly-1", "nightly-2"]
        .iter()
        .enumerate()
    {
        registry.push_image("app", tag, &Image::random()).await;
        pushed_ago(
            &root,
            "app",
            tag,
            Duration::from_secs((10 - i as u64) * DAY),
        );
    }
    let mut config = registry.config().clone();
    let report = run(&config, RETENTION_AND_GC).await.retention.unwrap();
    // nightly-2 is the newest; nightly-1 goes; the releases are refused.
    assert_eq!(
        tags(&registry, "app").await,
        strings(&["nightly-2", "v1.0.0", "v1.2.0"])
    );
    assert_eq!(report.tags_deleted(), 1);
    assert_eq!(report.refused(), 2);
    let v120 = report.repositories[0]
        .tags
        .iter()
        .find(|t| t.plan.tag.as_str() == "v1.2.0")
        .unwrap();
    match &v120.outcome {
        TagOutcome::Refused { policy, reason } => {
            assert_eq!(policy, "immutable-releases");
            assert!(
                reason.contains("v1.2.0") && reason.contains("immutable"),
                "{reason}"
            );
        }
        other => panic!("v1.2.0: {other:?}"),
    }
    // A refusal is not retried within the run, and stays one next time.
    let again = run(&config, RETENTION_AND_GC).await.retention.unwrap();
    assert_eq!((again.tags_deleted(), again.refused()), (0, 2));

    // Another identity name alone changes nothing; the exempt group does.
    config.gc.identity = "robot:cleanup".into();
    let renamed = run(&config, RETENTION_AND_GC).await.retention.unwrap();
    assert_eq!(renamed.refused(), 2);
    config.gc.groups = vec!["release-admins".into()];
    let exempt = run(&config, RETENTION_AND_GC).await.retention.unwrap();
    assert_eq!((exempt.tags_deleted(), exempt.refused()), (2, 0));
    assert_eq!(tags(&registry, "app").await, strings(&["nightly-2"]));
    registry.stop().await;
}

#[tokio::test]
async fn an_index_goes_with_its_own_children_and_referrers_but_not_with_shared_ones() {
    let registry = TestRegistry::start_with(|c| {
        c.retention = vec![rule(&["multi"], &["*"], Some(1), None, KeepIf::Any)];
    })
    .await;
    let root = registry.root().to_owned();
    let (amd, arm, shared) = (Image::random(), Image::random(), Image::random());
    for image in [&amd, &arm, &shared] {
        registry.push_image("multi", &image.digest, image).await;
    }
    let index = |children: &[&Image]| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": children.iter().map(|c| c.descriptor()).collect::<Vec<_>>(),
        }))
        .unwrap()
    };
    let old = index(&[&amd, &arm, &shared]);
    let new = index(&[&shared]);
    for (tag, body) in [("old", &old), ("new", &new)] {
        let response = registry
            .put_manifest("multi", tag, OCI_INDEX, body.clone())
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    pushed_ago(&root, "multi", "old", Duration::from_secs(DAY));
    let old_digest = common::sha256(&old);
    // A signature of the old index (a referrer, pushed by digest).
    let signature = Image::with_fields(json!({
        "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json",
        "subject": { "mediaType": OCI_INDEX, "digest": old_digest, "size": old.len() },
    }));
    registry
        .push_image("multi", &signature.digest, &signature)
        .await;
    // A signature of the shared child: it stays with the child the new index
    // keeps, though retention reaches it through the old one.
    let shared_signature = Image::with_fields(json!({
        "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json",
        "subject": shared.descriptor(),
    }));
    registry
        .push_image("multi", &shared_signature.digest, &shared_signature)
        .await;
    // Pushed by digest before the run, referenced by nothing: not retention's.
    let loose = Image::random();
    registry.push_image("multi", &loose.digest, &loose).await;

    let report = run(registry.config(), RETENTION_AND_GC)
        .await
        .retention
        .unwrap();
    let manifests = &report.repositories[0].manifests;
    let mut gone: Vec<(String, String)> = manifests
        .iter()
        .filter(|m| m.outcome == ManifestOutcome::Deleted)
        .map(|m| (m.digest.to_string(), m.why.clone()))
        .collect();
    gone.sort();
    let mut expected = vec![
        (old_digest.clone(), "untagged".to_owned()),
        (amd.digest.clone(), format!("child of {old_digest}")),
        (arm.digest.clone(), format!("child of {old_digest}")),
        (
            signature.digest.clone(),
            format!("referrer of {old_digest}"),
        ),
    ];
    expected.sort();
    assert_eq!(gone, expected);
    for (digest, status) in [
        (&old_digest, StatusCode::NOT_FOUND),
        (&amd.digest, StatusCode::NOT_FOUND),
        (&arm.digest, StatusCode::NOT_FOUND),
        (&signature.digest, StatusCode::NOT_FOUND),
        (&shared.digest, StatusCode::OK),
        (&shared_signature.digest, StatusCode::OK),
        (&loose.digest, StatusCode::OK),
    ] {
        assert_eq!(
            manifest_status(&registry, "multi", digest).await,
            status,
            "{digest}"
        );
    }
    assert_eq!(
        manifest_status(&registry, "multi", "new").await,
        StatusCode::OK
    );
}

async fn metric(addr: std::net::SocketAddr, line_start: &str) -> u64 {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

const RUNS_OK: &str = "portcullis_gc_runs_total{result=\"ok\"}";
const RUNS_SKIPPED: &str = "portcullis_gc_runs_total{result=\"skipped\"}";

/// Waits until `check` holds, up to `within`.
async fn eventually<F: std::future::Future<Output = bool>>(
    within: Duration,
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_schedule_runs_in_the_server_and_never_at_the_same_time_as_another_run() {
    let registry = TestRegistry::start_with(|c| {
        c.gc.every = Some(Duration::from_secs(1));
        c.storage.upload_max_age = Duration::from_secs(1);
        c.retention = vec![rule(&["team/*"], &["*"], Some(1), None, KeepIf::Any)];
    })
    .await;
    let root = registry.root().to_owned();
    let addr = registry.addr();
    for (i, tag) in ["a", "b", "c"].iter().enumerate() {
        registry.push_image("team/svc", tag, &Image::random()).await;
        pushed_ago(
            &root,
            "team/svc",
            tag,
            Duration::from_secs((3 - i as u64) * 60),
        );
    }
    eventually(
        Duration::from_secs(15),
        "the schedule applies retention",
        || async { tags(&registry, "team/svc").await == strings(&["c"]) },
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "a scheduled run is counted",
        || async { metric(addr, RUNS_OK).await >= 1 },
    )
    .await;
    assert!(metric(addr, "portcullis_retention_total{outcome=\"tag_deleted\"}").await >= 2);
    assert!(metric(addr, "portcullis_gc_last_success_timestamp_seconds").await > 1_700_000_000);

    // Hold the lock as a command-line gc would: the server's rounds are skipped.
    let lock_path = root.join("portcullis/gc.lock");
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .open(&lock_path)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        assert!(
            Instant::now() < deadline,
            "the server's run ends and frees the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (ok, skipped) = (
        metric(addr, RUNS_OK).await,
        metric(addr, RUNS_SKIPPED).await,
    );
    registry.push_image("team/svc", "d", &Image::random()).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(
        metric(addr, RUNS_OK).await,
        ok,
        "no run while the lock is held elsewhere"
    );
    assert!(
        metric(addr, RUNS_SKIPPED).await >= skipped + 2,
        "rounds were skipped"
    );
    assert_eq!(tags(&registry, "team/svc").await, strings(&["c", "d"]));
    // And a command-line run meanwhile is refused with the reason.
    let output = portcullis(vec!["gc".into(), "--config".into(), write_config(&root)]).await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("another run is going on") && stderr.contains("gc.lock"),
        "{stderr}"
    );
    drop(lock);
    eventually(
        Duration::from_secs(10),
        "runs resume once the lock is free",
        || async { metric(addr, RUNS_OK).await > ok },
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "and apply retention again",
        || async { tags(&registry, "team/svc").await.len() == 1 },
    )
    .await;
}

fn write_config(root: &Path) -> String {
    let path = root.join("gc.toml");
    std::fs::write(&path, format!("[storage]\nroot = \"{}\"\n", root.display())).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn on_s3_with_conditional_writes_a_lease_in_the_bucket_lets_one_replica_run_at_a_time() {
    let moto = common::moto::Moto::start().await;
    let prefix = unique_prefix();
    let configure = |c: &mut Config| {
        c.gc.every = Some(Duration::from_secs(1));
        c.gc.lease_ttl = Duration::from_secs(3);
        c.retention = vec![rule(&["team/*"], &["*"], Some(1), None, KeepIf::Any)];
    };
    let a = TestRegistry::start_s3_with(moto.facts(), &prefix, configure).await;
    let b = TestRegistry::start_s3_with(moto.facts(), &prefix, configure).await;
    for tag in ["one", "two"] {
        a.push_image("team/s3", tag, &Image::random()).await;
    }
    eventually(
        Duration::from_secs(20),
        "one of the replicas applies retention",
        || async { tags(&a, "team/s3").await.len() == 1 },
    )
    .await;

    // The lease, taken from outside: both replicas skip their rounds.
    let Storage::S3(store) = Storage::open(&a.config().storage).await.unwrap() else {
        panic!("an S3 store")
    };
    assert!(
        store.enforces_conditional_writes(),
        "moto enforces conditional writes"
    );
    let ticket = loop {
        match store
            .acquire_lease("gc", "test", Duration::from_secs(30))
            .await
            .unwrap()
        {
            LeaseOutcome::Acquired(ticket) => break ticket,
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let ok = metric(a.addr(), RUNS_OK).await + metric(b.addr(), RUNS_OK).await;
    let skipped = metric(a.addr(), RUNS_SKIPPED).await + metric(b.addr(), RUNS_SKIPPED).await;
    assert!(ok >= 1);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(
        metric(a.addr(), RUNS_OK).await + metric(b.addr(), RUNS_OK).await,
        ok,
        "no replica runs while another holds the lease"
    );
    assert!(
        metric(a.addr(), RUNS_SKIPPED).await + metric(b.addr(), RUNS_SKIPPED).await >= skipped + 3
    );
    // A second holder is refused, whoever asks.
    match store
        .acquire_lease("gc", "intruder", Duration::from_secs(30))
        .await
        .unwrap()
    {
        LeaseOutcome::Held { holder, .. } => assert_eq!(holder, "test"),
        other => panic!("the lease is held: {other:?}"),
    }
    store.release_lease(ticket).await.unwrap();
    eventually(
        Duration::from_secs(10),
        "a replica runs once the lease is free",
        || async { metric(a.addr(), RUNS_OK).await + metric(b.addr(), RUNS_OK).await > ok },
    )
    .await;

    // A holder that vanishes without releasing: its lease expires and is taken over.
    let other = unique_prefix();
    let mut c = a.config().clone();
    c.storage.prefix = other;
    let Storage::S3(fresh) = Storage::open(&c.storage).await.unwrap() else {
        panic!("an S3 store")
    };
    let first = fresh
        .acquire_lease("gc", "crashed", Duration::from_secs(1))
        .await
        .unwrap();
    assert!(matches!(first, LeaseOutcome::Acquired(_)));
    assert!(matches!(
        fresh
            .acquire_lease("gc", "next", Duration::from_secs(30))
            .await
            .unwrap(),
        LeaseOutcome::Held { .. }
    ));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let LeaseOutcome::Acquired(mut next) = fresh
        .acquire_lease("gc", "next", Duration::from_secs(30))
        .await
        .unwrap()
    else {
        panic!("an expired lease is taken over")
    };
    // Its renewal by the crashed holder now fails: that run would stop.
    let LeaseOutcome::Acquired(mut stale) = first else {
        unreachable!()
    };
    assert!(!fresh
        .renew_lease(&mut stale, Duration::from_secs(30))
        .await
        .unwrap());
    assert!(fresh
        .renew_lease(&mut next, Duration::from_secs(30))
        .await
        .unwrap());
    fresh.release_lease(next).await.unwrap();
}

#[tokio::test]
async fn on_s3_without_conditional_writes_the_schedule_needs_single_replica() {
    // moto with conditional writes turned off stands in for a store that
    // ignores them (Garage: the next test).
    let moto = common::moto::Moto::start().await;
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    let root = tempfile::tempdir().unwrap();
    config.storage.root = root.path().to_owned();
    moto.facts().configure(&mut config, &unique_prefix());
    config.storage.conditional_writes = portcullis::config::ConditionalWrites::Off;
    schedule_needs_single_replica(config).await;
}

#[tokio::test]
async fn on_garage_the_schedule_needs_single_replica() {
    let garage = common::Garage::shared().await;
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    let root = tempfile::tempdir().unwrap();
    config.storage.root = root.path().to_owned();
    garage.configure(&mut config, &unique_prefix());
    schedule_needs_single_replica(config).await;
}

async fn schedule_needs_single_replica(mut config: Config) {
    config.gc.every = Some(Duration::from_secs(1));
    let refused = match portcullis::server::Server::bind(config.clone()).await {
        Ok(_) => panic!("a schedule without a lease or single_replica is refused"),
        Err(e) => e.to_string(),
    };
    for words in [
        "does not enforce conditional writes",
        "gc.single_replica = true",
        "CronJob",
    ] {
        assert!(refused.contains(words), "{refused}");
    }
    // A lease is refused outright on such a store.
    let Storage::S3(store) = Storage::open(&config.storage).await.unwrap() else {
        panic!("an S3 store")
    };
    assert!(!store.enforces_conditional_writes());
    assert!(store
        .acquire_lease("gc", "x", Duration::from_secs(5))
        .await
        .is_err());
    // Declared the single replica: it starts, and its schedule applies
    // retention to what the (real) store holds.
    let facts = common::GarageFacts {
        endpoint: config.storage.endpoint.clone().unwrap(),
        bucket: config.storage.bucket.clone().unwrap(),
        region: config.storage.region.clone(),
        access_key: config.storage.access_key_id.clone().unwrap(),
        secret_key: config
            .storage
            .secret_access_key
            .as_ref()
            .unwrap()
            .expose()
            .to_owned(),
    };
    let conditional_writes = config.storage.conditional_writes;
    let registry = TestRegistry::start_s3_with(&facts, &config.storage.prefix, |c| {
        c.storage.conditional_writes = conditional_writes;
        c.gc.every = Some(Duration::from_secs(1));
        c.gc.single_replica = true;
        c.retention = vec![rule(&["team/*"], &["*"], Some(1), None, KeepIf::Any)];
    })
    .await;
    for tag in ["older", "newer"] {
        registry.push_image("team/one", tag, &Image::random()).await;
        // S3 keeps times to the second: the two pushes must differ.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    eventually(
        Duration::from_secs(15),
        "the single replica's schedule applies retention",
        || async { tags(&registry, "team/one").await == strings(&["newer"]) },
    )
    .await;
    assert!(metric(registry.addr(), RUNS_OK).await >= 1);
}

#[tokio::test]
async fn the_retention_example_config_keeps_releases_and_recent_builds() {
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/config-retention.toml");
    let loaded = Config::load(Some(&example)).expect("the example loads");
    assert!(
        loaded.gc.every.is_some(),
        "the example turns the schedule on"
    );
    let registry = TestRegistry::start_with(|c| {
        c.retention = loaded.retention.clone();
        c.policy.chain = loaded.policy.chain.clone();
        c.gc.identity = loaded.gc.identity.clone();
        c.gc.groups = loaded.gc.groups.clone();
    })
    .await;
    let root = registry.root().to_owned();
    for i in 0..15u64 {
        let tag = format!("pr-{i}");
        registry
            .push_image("team-a/api", &tag, &Image::random())
            .await;
        pushed_ago(
            &root,
            "team-a/api",
            &tag,
            Duration::from_secs((40 - i) * DAY),
        );
    }
    for (i, tag) in ["v1.0.0", "v2.0.0"].iter().enumerate() {
        registry
            .push_image("team-a/api", tag, &Image::random())
            .await;
        pushed_ago(
            &root,
            "team-a/api",
            tag,
            Duration::from_secs((900 - i as u64) * DAY),
        );
    }
    let report = run(registry.config(), RETENTION_AND_GC)
        .await
        .retention
        .unwrap();
    // pr-*: none from the last 14 days, so the 10 newest (pr-5..pr-14) stay;
    // the releases are older than a year, and the chain refuses to delete them.
    let mut expected: Vec<String> = (5..15).map(|i| format!("pr-{i}")).collect();
    expected.extend(strings(&["v1.0.0", "v2.0.0"]));
    expected.sort();
    assert_eq!(
        tags(&registry, "team-a/api").await,
        expected,
        "{}",
        report.render()
    );
    assert_eq!((report.tags_deleted(), report.refused()), (5, 2));
}
