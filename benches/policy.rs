//! What the policy chain costs: the three bundled policies evaluated directly
//! (median per request), and manifest HEAD throughput over real HTTP with and
//! without the chain, measured in the same run. `cargo bench --bench policy`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis::config::{Action, Config, PolicyEntry};
use portcullis::identity::Identity;
use portcullis::metrics::Metrics;
use portcullis::policy::request::Resource;
use portcullis::policy::{Access, PolicyChain, PolicyEngine, Verdict};
use portcullis::reference::{Reference, RepositoryName, Tag};
use portcullis::server::Server;
use serde_json::json;
use sha2::Digest as _;

fn bundled_chain() -> Vec<PolicyEntry> {
    let entry = |name: &str, settings| PolicyEntry {
        name: name.into(),
        module: format!("builtin:{name}"),
        settings,
        actions: None,
        repositories: None,
    };
    vec![
        entry(
            "repo-allowlist",
            json!({ "push": ["team-a/**"], "pull": ["**"], "list": ["**"], "delete": ["team-a/**"] }),
        ),
        entry(
            "group-access",
            json!({
                "groups": { "devs": [{ "repositories": ["team-a/**"], "actions": ["push", "pull", "list"] }] },
                "anonymous": [
                    { "repositories": ["**"], "actions": ["pull", "list"] },
                    { "repositories": ["team-a/**"], "actions": ["push"] }
                ]
            }),
        ),
        entry("tag-immutability", json!({ "tags": ["v*", "!*-rc*"] })),
    ]
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[samples.len() / 2]
}

/// `recycle_after = 1` gives every evaluation a fresh instance: the cost of
/// full isolation, measured against the warm instances the registry uses.
fn direct_evaluation(recycle_after: u32) -> f64 {
    let mut config = Config::default();
    config.policy.chain = bundled_chain();
    config.policy.recycle_after = recycle_after;
    let engine = Arc::new(PolicyEngine::new(None).expect("engine"));
    let chain = PolicyChain::load(engine, &config).expect("bundled chain loads");
    let access = Access::new(
        Action::Pull,
        Resource::Manifest,
        RepositoryName::parse("team-a/api").expect("name"),
    )
    .with_reference(Reference::Tag(Tag::parse("v1.2.0").expect("tag")));
    let who = Identity {
        subject: Some("alice".into()),
        groups: vec!["devs".into()],
    };
    let ip: IpAddr = [127, 0, 0, 1].into();
    let metrics = Metrics::new();
    // Evaluations are futures awaited on the server's workers; here on one
    // current-thread runtime, a batch per `block_on`.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        for _ in 0..2_000 {
            assert_eq!(
                chain.evaluate(&access, &who, ip, &metrics).await,
                Verdict::Allow
            );
        }
    });
    const BATCH: usize = 2_000;
    let samples: Vec<f64> = (0..25)
        .map(|_| {
            runtime.block_on(async {
                let started = Instant::now();
                for _ in 0..BATCH {
                    std::hint::black_box(chain.evaluate(&access, &who, ip, &metrics).await);
                }
                started.elapsed().as_secs_f64() * 1e6 / BATCH as f64
            })
        })
        .collect();
    median(samples)
}

async fn serve(chain: Vec<PolicyEntry>) -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        ..Config::default()
    };
    config.storage.root = dir.path().to_owned();
    config.policy.chain = chain;
    let server = Server::bind(config).await.expect("server binds");
    let base = format!("http://{}", server.local_addr());
    tokio::spawn(server.run(std::future::pending()));
    (base, dir)
}

async fn push_small_image(http: &reqwest::Client, base: &str) {
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&config)));
    let r = http
        .post(format!(
            "{base}/v2/team-a/api/blobs/uploads/?digest={digest}"
        ))
        .body(config.clone())
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), 201);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest, "size": config.len() },
        "layers": []
    });
    let r = http
        .put(format!("{base}/v2/team-a/api/manifests/v1.2.0"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.to_string())
        .send()
        .await
        .expect("manifest");
    assert_eq!(r.status(), 201);
}

/// Manifest HEADs from `clients` concurrent clients for `duration`: requests per second.
async fn head_throughput(base: &str, clients: usize, duration: Duration) -> f64 {
    let deadline = Instant::now() + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let url = format!("{base}/v2/team-a/api/manifests/v1.2.0");
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let mut done = 0u64;
                while Instant::now() < deadline {
                    let r = http.head(&url).send().await.expect("HEAD");
                    assert_eq!(r.status(), 200);
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("client");
    }
    total as f64 / duration.as_secs_f64()
}

fn main() {
    let warm = direct_evaluation(10_000);
    println!("policy chain (3 bundled policies), warm instances: median {warm:.2} µs per request (target <= 15 µs)");
    let fresh = direct_evaluation(1);
    println!(
        "policy chain (3 bundled policies), a fresh instance per evaluation: median {fresh:.2} µs per request ({:.1}x the warm cost)",
        fresh / warm
    );
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let http = reqwest::Client::new();
        let (without, _a) = serve(Vec::new()).await;
        let (with, _b) = serve(bundled_chain()).await;
        push_small_image(&http, &without).await;
        push_small_image(&http, &with).await;
        let mut ratios = Vec::new();
        // Alternate the two servers so both see the same machine noise.
        for round in 0..3 {
            let a = head_throughput(&without, 16, Duration::from_secs(2)).await;
            let b = head_throughput(&with, 16, Duration::from_secs(2)).await;
            println!("round {round}: manifest HEAD, 16 clients: without policies {a:.0} req/s, with the bundled chain {b:.0} req/s");
            ratios.push(b / a);
        }
        println!(
            "manifest HEAD throughput with/without the policy chain: median ratio {:.3}",
            median(ratios)
        );
    });
}
