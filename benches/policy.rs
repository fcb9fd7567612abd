//! What the policy chain costs: the three bundled policies evaluated directly
//! (median per request), each policy on its own (the three bundled ones,
//! `builtin:signature` on a signed image with lookups in a real store, and
//! the JavaScript and Python examples when built), and manifest HEAD
//! throughput over real HTTP with and without the chain, measured in the
//! same run. `cargo bench --bench policy`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis::config::{Action, Config, PolicyEntry};
use portcullis::identity::Identity;
use portcullis::metrics::Metrics;
use portcullis::policy::facts::FactsCache;
use portcullis::policy::lookups::Lookups;
use portcullis::policy::request::Resource;
use portcullis::policy::{Access, PolicyChain, PolicyEngine, Verdict};
use portcullis::reference::{Reference, RepositoryName, Tag};
use portcullis::server::Server;
use portcullis::storage::Storage;
use serde_json::json;
use sha2::Digest as _;

fn entry(name: &str, module: String, settings: serde_json::Value) -> PolicyEntry {
    PolicyEntry {
        name: name.into(),
        module,
        settings,
        actions: None,
        repositories: None,
        mode: Default::default(),
    }
}

fn bundled_chain() -> Vec<PolicyEntry> {
    let entry = |name: &str, settings| entry(name, format!("builtin:{name}"), settings);
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

/// The image the per-policy figures decide about, in a real store: a config
/// with `User` 1000 and an `org.opencontainers.image.source` label under
/// `https://github.com/acme/` (so every policy measured allows it), tagged
/// `team-a/api:v1.2.0`, with a cosign signature of its digest (tag scheme,
/// ECDSA P-256 by a key made for the run) next to it.
struct SignedImage {
    storage: Storage,
    /// The manifest facts a pull or push of it carries (as the server
    /// builds them: `FactsCache::of_stored`).
    access_pull: Access,
    access_push: Access,
    public_key_pem: String,
    _dir: tempfile::TempDir,
}

fn base64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

async fn upload(http: &reqwest::Client, base: &str, repo: &str, blob: &[u8]) -> String {
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(blob)));
    let r = http
        .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={digest}"))
        .body(blob.to_vec())
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), 201, "upload {digest}");
    digest
}

async fn put_manifest(http: &reqwest::Client, base: &str, repo: &str, tag: &str, m: &[u8]) {
    let r = http
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(m.to_vec())
        .send()
        .await
        .expect("manifest");
    assert_eq!(r.status(), 201, "PUT manifest {tag}");
}

async fn signed_image() -> SignedImage {
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
    // Pushed through a policy-free server on a fresh directory, then read
    // (facts, lookups) from that directory as the registry's store.
    let (base, dir) = serve(Vec::new()).await;
    let http = reqwest::Client::new();
    let repo = "team-a/api";
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": { "User": "1000", "Labels": { "org.opencontainers.image.source": "https://github.com/acme/api" } },
        "rootfs": { "type": "layers", "diff_ids": [] }
    }))
    .expect("json");
    let config_digest = upload(&http, &base, repo, &config).await;
    let layer = vec![7u8; 4096];
    let layer_digest = upload(&http, &base, repo, &layer).await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len() },
        "layers": [ { "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer.len() } ]
    }))
    .expect("json");
    put_manifest(&http, &base, repo, "v1.2.0", &manifest).await;
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&manifest)));

    // The cosign signature: payload blob, `{}` config, signature manifest
    // under `sha256-<hex>.sig`.
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("P-256 key");
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
        .expect("P-256 key");
    let mut spki =
        hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").expect("hex");
    spki.extend_from_slice(key.public_key().as_ref());
    let encoded = base64(&spki);
    let lines: Vec<&str> = encoded
        .as_bytes()
        .chunks(64)
        .map(|l| std::str::from_utf8(l).expect("ascii"))
        .collect();
    let public_key_pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        lines.join("\n")
    );
    let host = base.trim_start_matches("http://");
    let payload = serde_json::to_vec(&json!({
        "critical": {
            "identity": { "docker-reference": format!("{host}/{repo}") },
            "image": { "docker-manifest-digest": digest },
            "type": "cosign container image signature"
        },
        "optional": null
    }))
    .expect("json");
    let signature = base64(key.sign(&rng, &payload).expect("sign").as_ref());
    let payload_digest = upload(&http, &base, repo, &payload).await;
    let empty_digest = upload(&http, &base, repo, b"{}").await;
    let sig_manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": empty_digest, "size": 2 },
        "layers": [ {
            "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
            "digest": payload_digest, "size": payload.len(),
            "annotations": { "dev.cosignproject.cosign/signature": signature }
        } ]
    }))
    .expect("json");
    let sig_tag = format!("sha256-{}.sig", digest.trim_start_matches("sha256:"));
    put_manifest(&http, &base, repo, &sig_tag, &sig_manifest).await;

    let mut store_config = Config::default();
    store_config.storage.root = dir.path().to_owned();
    let storage = Storage::open(&store_config.storage)
        .await
        .expect("store opens");
    let name = RepositoryName::parse(repo).expect("name");
    let tag = Reference::Tag(Tag::parse("v1.2.0").expect("tag"));
    let stored = storage.get_manifest(&name, &tag).await.expect("stored");
    let facts = FactsCache::default()
        .of_stored(&storage, &name, &stored)
        .await;
    let access = |action| {
        let mut a =
            Access::new(action, Resource::Manifest, name.clone()).with_reference(tag.clone());
        a.manifest = Some(Arc::clone(&facts));
        a
    };
    SignedImage {
        storage,
        access_pull: access(Action::Pull),
        access_push: access(Action::Push),
        public_key_pem,
        _dir: dir,
    }
}

/// Median µs per evaluation of `chain_entries` on `access` by alice (group
/// devs), warm instances (the config's default `recycle_after`), lookups
/// answered from `storage`. `None` (with the reason printed) when the chain
/// does not load or does not allow.
fn per_evaluation(
    chain_entries: Vec<PolicyEntry>,
    access: &Access,
    storage: &Storage,
) -> Result<f64, String> {
    let mut config = Config::default();
    config.policy.chain = chain_entries;
    // Compiled once per machine: the JavaScript and Python components take
    // 8-30 s to compile.
    let cache = std::env::temp_dir().join("portcullis-bench-policy-cache");
    let engine = PolicyEngine::new(Some(cache)).map_err(|e| e.to_string())?;
    engine.attach_lookups(Lookups::new(storage.clone(), Arc::new(Metrics::new())));
    let chain = PolicyChain::load(Arc::new(engine), &config).map_err(|e| e.to_string())?;
    let who = Identity {
        subject: Some("alice".into()),
        groups: vec!["devs".into()],
    };
    let ip: IpAddr = [127, 0, 0, 1].into();
    let metrics = Metrics::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        // Warm-up (instances made, verification cached), and how long one takes.
        let started = Instant::now();
        let mut n = 0u32;
        while n < 50 || (started.elapsed() < Duration::from_millis(300) && n < 2_000) {
            let verdict = chain.evaluate(access, &who, ip, &metrics).await;
            if verdict != Verdict::Allow {
                return Err(format!("not allowed: {verdict:?}"));
            }
            n += 1;
        }
        let each = started.elapsed().as_secs_f64() / f64::from(n);
        // Samples of about 20 ms each.
        let batch = ((0.02 / each) as usize).clamp(10, 5_000);
        let mut samples = Vec::new();
        for _ in 0..25 {
            let started = Instant::now();
            for _ in 0..batch {
                std::hint::black_box(chain.evaluate(access, &who, ip, &metrics).await);
            }
            samples.push(started.elapsed().as_secs_f64() * 1e6 / batch as f64);
        }
        Ok(median(samples))
    })
}

fn each_policy() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let image = runtime.block_on(signed_image());
    let bundled = bundled_chain();
    let signature = PolicyEntry {
        actions: Some(vec![Action::Pull]),
        ..entry(
            "signed",
            "builtin:signature".into(),
            json!({ "keys": [image.public_key_pem.clone()] }),
        )
    };
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/policies");
    let js = examples.join("js-require-source/build/js-require-source.wasm");
    let python = examples.join("python-non-root/build/python-non-root.wasm");
    let mut rows: Vec<(String, Vec<PolicyEntry>, bool)> = bundled
        .iter()
        .map(|e| (e.module.clone(), vec![e.clone()], true))
        .collect();
    rows.push(("builtin:signature".into(), vec![signature.clone()], false));
    let mut all = bundled.clone();
    all.push(signature);
    rows.push((
        "3 bundled + builtin:signature (the harness's signed chain)".into(),
        all,
        true,
    ));
    for (label, path, settings) in [
        (
            "js-require-source (JavaScript)",
            &js,
            json!({ "prefixes": ["https://github.com/acme/"] }),
        ),
        ("python-non-root (Python)", &python, json!({})),
    ] {
        if path.is_file() {
            rows.push((
                label.into(),
                vec![entry(
                    label.split(' ').next().expect("name"),
                    path.display().to_string(),
                    settings,
                )],
                true,
            ));
        } else {
            println!(
                "{label}: skipped: {} is missing (build it with its build.sh)",
                path.display()
            );
        }
    }
    println!("each policy alone, warm instances, manifest facts of a signed image (config read from the store, cached as on the server), median µs per evaluation:");
    for (label, chain, push_too) in rows {
        let pull = per_evaluation(chain.clone(), &image.access_pull, &image.storage);
        let push = push_too.then(|| per_evaluation(chain, &image.access_push, &image.storage));
        let show = |r: &Result<f64, String>| match r {
            Ok(us) => format!("{us:.2} µs"),
            Err(e) => format!("failed: {e}"),
        };
        println!(
            "  {label}: pull by tag {}; push by tag {}",
            show(&pull),
            push.as_ref()
                .map_or_else(|| "not in scope (actions = [\"pull\"])".into(), show)
        );
    }
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
    each_policy();
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
