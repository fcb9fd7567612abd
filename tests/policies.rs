//! The policy engine with the real server and real clients: allowlists,
//! group access with accounts, tag immutability, misbehaving policies held by
//! the sandbox, and hot reload under load.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{
    expect_error, header, misbehave, policy, write_htpasswd, Image, TestRegistry, OCI_MANIFEST,
};
use portcullis::config::{Config, PolicyEntry};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test]
async fn push_outside_the_allowlist_is_denied_with_the_rule_named() {
    let registry = TestRegistry::start_with(|c| {
        c.policy.chain = vec![policy(
            "allowlist",
            "builtin:repo-allowlist",
            json!({ "push": ["team-a/**"], "pull": ["**"], "list": ["**"] }),
        )];
    })
    .await;
    let image = Image::random();
    let (status, _) = registry
        .push_image_as(None, "team-a/api", "1", &image)
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let response = registry
        .send(Method::POST, "/v2/team-b/api/blobs/uploads/")
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({ "errors": [{
            "code": "DENIED",
            "message": "denied by policy allowlist: push on repository team-b/api is not allowed: push is allowed only on [team-a/**]"
        }]})
    );
    // Pulling from anywhere is allowed.
    let pulled = registry
        .get(&format!("/v2/team-a/api/manifests/{}", image.digest))
        .await;
    assert_eq!(pulled.status(), StatusCode::OK);
}

#[tokio::test]
async fn groups_decide_who_pushes_where_and_anonymous_callers_are_challenged() {
    let secrets = tempfile::tempdir().unwrap();
    let htpasswd = write_htpasswd(secrets.path(), &[("alice", "alice-pw"), ("bob", "bob-pw")]);
    let registry = TestRegistry::start_with(|c| {
        c.auth.htpasswd = Some(htpasswd);
        c.groups.insert("devs".into(), vec!["alice".into()]);
        c.groups.insert("ops".into(), vec!["bob".into()]);
        c.policy.chain = vec![policy(
            "groups",
            "builtin:group-access",
            json!({
                "groups": {
                    "devs": [{ "repositories": ["team-a/**"], "actions": ["push", "pull", "list"] }],
                    "ops": [{ "repositories": ["team-b/**"], "actions": ["push", "pull", "list"] }]
                },
                "authenticated": [{ "repositories": ["**"], "actions": ["pull"] }],
                "anonymous": []
            }),
        )];
    })
    .await;
    let alice = Some(("alice", "alice-pw"));
    let bob = Some(("bob", "bob-pw"));

    // `docker login` starts at /v2/: challenged without credentials (to
    // the token service, tests/identity.rs), 200 with.
    let base = registry.get("/v2/").await;
    assert_eq!(base.status(), StatusCode::UNAUTHORIZED);
    assert!(header(&base, "www-authenticate")
        .unwrap()
        .starts_with("Bearer realm=\"http://"));
    let base = registry
        .request(Method::GET, "/v2/")
        .basic_auth("alice", Some("alice-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(base.status(), StatusCode::OK);
    let wrong = registry
        .request(Method::GET, "/v2/")
        .basic_auth("alice", Some("nope"))
        .send()
        .await
        .unwrap();
    expect_error(wrong, 401, "UNAUTHORIZED").await;

    let image = Image::random();
    assert_eq!(
        registry
            .push_image_as(alice, "team-a/api", "1", &image)
            .await
            .0,
        StatusCode::CREATED
    );
    assert_eq!(
        registry
            .push_image_as(bob, "team-b/api", "1", &image)
            .await
            .0,
        StatusCode::CREATED
    );

    let (status, body) = registry
        .push_image_as(alice, "team-b/api", "2", &image)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["errors"][0]["code"], "DENIED");
    assert_eq!(
        body["errors"][0]["message"],
        "denied by policy groups: user alice (groups devs) may not push team-b/api"
    );

    // Anonymous callers are asked to log in rather than refused outright.
    let (status, body) = registry
        .push_image_as(None, "team-a/api", "3", &image)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED");

    // Bob may pull team-a (every authenticated user may), not list it.
    let pull = registry
        .request(
            Method::GET,
            &format!("/v2/team-a/api/manifests/{}", image.digest),
        )
        .basic_auth("bob", Some("bob-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(pull.status(), StatusCode::OK);
    let tags = registry
        .request(Method::GET, "/v2/team-a/api/tags/list")
        .basic_auth("bob", Some("bob-pw"))
        .send()
        .await
        .unwrap();
    expect_error(tags, 403, "DENIED").await;

    // The catalog shows each caller what they may list, nothing more.
    let catalog: Value = registry
        .request(Method::GET, "/v2/_catalog")
        .basic_auth("alice", Some("alice-pw"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(catalog, json!({ "repositories": ["team-a/api"] }));
    let anonymous: Value = registry.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(anonymous, json!({ "repositories": [] }));
}

#[tokio::test]
async fn immutable_tags_accept_the_same_digest_and_refuse_another() {
    let registry = TestRegistry::start_with(|c| {
        c.policy.chain = vec![policy(
            "immutable-releases",
            "builtin:tag-immutability",
            json!({ "tags": ["v*", "!*-rc*"] }),
        )];
    })
    .await;
    let first = Image::random();
    let second = Image::random();
    assert_eq!(
        registry
            .push_image_as(None, "app", "v1.2.0", &first)
            .await
            .0,
        StatusCode::CREATED
    );
    // Clients re-push manifests routinely: the same digest is fine.
    assert_eq!(
        registry
            .push_image_as(None, "app", "v1.2.0", &first)
            .await
            .0,
        StatusCode::CREATED
    );

    let (status, body) = registry.push_image_as(None, "app", "v1.2.0", &second).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body["errors"][0]["message"],
        format!(
            "denied by policy immutable-releases: tag v1.2.0 in app is immutable: it points to {}; push under a new tag instead",
            first.digest
        )
    );
    // The tag still names the first image.
    let head = registry
        .send(Method::HEAD, "/v2/app/manifests/v1.2.0")
        .await;
    assert_eq!(
        header(&head, "docker-content-digest"),
        Some(first.digest.clone())
    );

    // Neither the tag nor the manifest behind it can be deleted.
    let delete_tag = registry
        .send(Method::DELETE, "/v2/app/manifests/v1.2.0")
        .await;
    expect_error(delete_tag, 403, "DENIED").await;
    let delete_digest = registry
        .send(
            Method::DELETE,
            &format!("/v2/app/manifests/{}", first.digest),
        )
        .await;
    let entry = expect_error(delete_digest, 403, "DENIED").await;
    assert!(entry["message"]
        .as_str()
        .unwrap()
        .contains("immutable tag v1.2.0"));

    // Release candidates and `latest` move freely.
    assert_eq!(
        registry
            .push_image_as(None, "app", "v1.3.0-rc1", &first)
            .await
            .0,
        StatusCode::CREATED
    );
    assert_eq!(
        registry
            .push_image_as(None, "app", "v1.3.0-rc1", &second)
            .await
            .0,
        StatusCode::CREATED
    );
    assert_eq!(
        registry
            .push_image_as(None, "app", "latest", &first)
            .await
            .0,
        StatusCode::CREATED
    );
    assert_eq!(
        registry
            .push_image_as(None, "app", "latest", &second)
            .await
            .0,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn runaway_and_memory_hungry_policies_are_stopped_and_others_keep_working() {
    let registry = TestRegistry::start_with(|c| {
        c.policy.memory = bytesize::ByteSize::mib(16);
        c.policy.chain = vec![
            PolicyEntry {
                repositories: Some(vec!["loop/**".into()]),
                mode: Default::default(),
                ..policy("runaway", &misbehave(), json!({ "mode": "loop" }))
            },
            PolicyEntry {
                repositories: Some(vec!["hog/**".into()]),
                mode: Default::default(),
                ..policy("hog", &misbehave(), json!({ "mode": "hog" }))
            },
            PolicyEntry {
                repositories: Some(vec!["trap/**".into()]),
                mode: Default::default(),
                ..policy("trap", &misbehave(), json!({ "mode": "trap" }))
            },
        ];
    })
    .await;
    let image = Image::random();
    assert_eq!(
        registry
            .push_image_as(None, "fine/app", "1", &image)
            .await
            .0,
        StatusCode::CREATED
    );

    // Misbehaving requests and well-behaved ones, at the same time.
    let bad = ["loop", "hog", "trap"].map(|kind| {
        let url = registry.url(&format!("/v2/{kind}/app/manifests/1"));
        let http = registry.http.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let response = http.get(url).send().await.unwrap();
            (
                kind,
                started.elapsed(),
                response.status(),
                response.text().await.unwrap(),
            )
        })
    });
    for _ in 0..20 {
        let ok = registry.get("/v2/fine/app/manifests/1").await;
        assert_eq!(ok.status(), StatusCode::OK);
    }
    for task in bad {
        let (kind, elapsed, status, body) = task.await.unwrap();
        assert_eq!(status, StatusCode::FORBIDDEN, "{kind}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["errors"][0]["code"], "DENIED");
        let policy = match kind {
            "loop" => "runaway",
            other => other,
        };
        assert!(
            body["errors"][0]["message"]
                .as_str()
                .unwrap()
                .starts_with(&format!("policy {policy} failed")),
            "{body}"
        );
        assert!(elapsed < Duration::from_secs(5), "{kind} took {elapsed:?}");
    }
    // A failed instance is never reused: the policy still answers afterwards.
    let again = registry.get("/v2/loop/app/manifests/1").await;
    assert_eq!(again.status(), StatusCode::FORBIDDEN);
    let ok = registry.get("/v2/fine/app/manifests/1").await;
    assert_eq!(ok.status(), StatusCode::OK);
}

fn allowlist_config(root: &std::path::Path, push: &str) -> String {
    format!(
        r#"listen = "127.0.0.1:0"
[storage]
root = "{}"
[[policy.chain]]
name = "allowlist"
module = "builtin:repo-allowlist"
settings = {{ push = ["{push}"], pull = ["**"], list = ["**"] }}
"#,
        root.display()
    )
}

/// Pushes with a fresh image until it is allowed, or gives up after `limit`.
async fn push_allowed_within(
    http: &reqwest::Client,
    base: &str,
    repo: &str,
    limit: Duration,
) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        let response = http
            .post(format!("{base}/v2/{repo}/blobs/uploads/"))
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::ACCEPTED {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn config_changes_take_effect_within_two_seconds_without_failing_requests() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("portcullis.toml");
    let data = dir.path().join("data");
    std::fs::write(&config_path, allowlist_config(&data, "team-a/**")).unwrap();
    let config = Config::load(Some(&config_path)).unwrap();
    let server = portcullis::server::Server::bind_watching(config, Some(config_path.clone()))
        .await
        .unwrap();
    let base = format!("http://{}", server.local_addr());
    tokio::spawn(server.run(std::future::pending()));
    let http = reqwest::Client::new();

    // A client pulling in a loop for the whole test: no request may fail.
    let registry_base = base.clone();
    let image = Image::random();
    for blob in std::iter::once(&image.config).chain(&image.layers) {
        let r = http
            .post(format!(
                "{base}/v2/team-a/api/blobs/uploads/?digest={}",
                common::sha256(blob)
            ))
            .body(blob.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let r = http
        .put(format!("{base}/v2/team-a/api/manifests/1"))
        .header("content-type", OCI_MANIFEST)
        .body(image.manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let puller = tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut pulls = 0u32;
        loop {
            if stop_rx.try_recv().is_ok() {
                return pulls;
            }
            let r = http
                .get(format!("{registry_base}/v2/team-a/api/manifests/1"))
                .send()
                .await
                .expect("pull reaches the registry");
            assert_eq!(r.status(), StatusCode::OK, "a pull failed during reload");
            pulls += 1;
        }
    });

    assert!(!push_allowed_within(&http, &base, "team-b/api", Duration::from_millis(300)).await);
    std::fs::write(&config_path, allowlist_config(&data, "team-b/**")).unwrap();
    let changed = Instant::now();
    assert!(
        push_allowed_within(&http, &base, "team-b/api", Duration::from_secs(2)).await,
        "the new rule was not in force within 2 s"
    );
    let took = changed.elapsed();

    // A broken config, then a config naming a policy that does not exist:
    // the running chain stays in force.
    std::fs::write(&config_path, "this is not toml [").unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(push_allowed_within(&http, &base, "team-b/api", Duration::from_millis(100)).await);
    std::fs::write(
        &config_path,
        allowlist_config(&data, "team-c/**").replace("builtin:repo-allowlist", "builtin:nope"),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(push_allowed_within(&http, &base, "team-b/api", Duration::from_millis(100)).await);
    let refused = http
        .post(format!("{base}/v2/team-c/api/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);

    let _ = stop_tx.send(());
    let pulls = puller.await.expect("no pull failed");
    assert!(pulls > 10, "the puller ran ({pulls} pulls)");
    eprintln!("reload in force after {took:?}, {pulls} pulls without a failure");
}

/// The example configs are documentation users copy: each must load and its
/// chain must compile and accept its settings.
#[test]
fn every_example_config_loads_and_its_policy_chain_compiles() {
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples");
    let cache = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let mut config =
            Config::load(Some(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        config.policy.cache_dir = Some(cache.path().to_owned());
        let engine = std::sync::Arc::new(portcullis::policy::PolicyEngine::new(None).unwrap());
        let chain = portcullis::policy::PolicyChain::load(engine, &config)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!chain.names().is_empty(), "{} has policies", path.display());
        checked += 1;
    }
    assert!(checked >= 2, "found the example configs");
}

#[tokio::test]
async fn the_group_example_lets_alice_push_to_team_a_only() {
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/config-groups.toml");
    let mut loaded = Config::load(Some(&example)).unwrap();
    loaded.auth.htpasswd =
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/htpasswd"));
    let registry = TestRegistry::start_with(move |c| {
        c.auth = loaded.auth;
        c.groups = loaded.groups;
        c.policy.chain = loaded.policy.chain;
    })
    .await;
    let image = Image::random();
    let alice = Some(("alice", "change-me"));
    assert_eq!(
        registry
            .push_image_as(alice, "team-a/api", "v1.0.0", &image)
            .await
            .0,
        StatusCode::CREATED
    );
    let (status, body) = registry
        .push_image_as(alice, "team-b/api", "v1.0.0", &image)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _) = registry
        .push_image_as(Some(("bob", "change-me")), "team-b/api", "v1.0.0", &image)
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = registry
        .push_image_as(Some(("bob", "change-me")), "elsewhere/api", "1", &image)
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "the allowlist still applies to ops"
    );
}
