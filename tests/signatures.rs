//! `builtin:signature` against signatures made by an implementation that is
//! not ours: `cosign-tool` (tests/tools/cosign, the sigstore project's Rust
//! crate) signs in cosign's tag scheme and verifies, as the cross-check that
//! the registry admits exactly what that verifier accepts. The OCI 1.1
//! referrers form is built from the same signed payload with the `oci-client`
//! crate. The tool is built by tests/run.sh (`COSIGN_TOOL`, or
//! `target/cosign-tool/debug/cosign-tool`).
//!
//! | case                                       | registry | cosign-tool verify |
//! |--------------------------------------------|----------|--------------------|
//! | signed with the P-256 key (tag scheme)     | 200      | verified           |
//! | signed with the Ed25519 key                | 200      | verified           |
//! | signed with another key                    | 403      | refused            |
//! | payload tampered after signing             | 403      | refused            |
//! | payload names another digest               | 403      | refused            |
//! | payload names another repository          | 403      | refused (identity) |
//! | unsigned                                   | 403      | refused            |
//! | signed as an OCI 1.1 referrer              | 200      | (not its form)     |
//! | `prod-*` tag at an unsigned / signed digest| 403/201  |                    |
//! | an unsigned image with a `subject`, tagged `sha256-<hex>.sig` | 403 |   |

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{descriptor, policy, sha256, Image, TestRegistry};
use reqwest::StatusCode;
use serde_json::json;

fn tool() -> PathBuf {
    let path = std::env::var_os("COSIGN_TOOL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/cosign-tool/debug/cosign-tool")
        });
    assert!(
        path.is_file(),
        "{} is missing: build it with `cd tests/tools/cosign && \
         CARGO_TARGET_DIR=../../../target/cosign-tool cargo build --locked` (tests/run.sh does)",
        path.display()
    );
    path
}

/// Runs the tool without blocking the test's runtime, which also runs the
/// registry it talks to.
async fn cosign(args: &[&str]) -> (bool, String) {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(tool())
            .args(args)
            .env("COSIGN_PASSWORD", "")
            .output()
    })
    .await
    .expect("the tool's thread")
    .expect("run cosign-tool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

async fn key(dir: &Path, name: &str, alg: &str) -> PathBuf {
    let out = dir.join(name);
    let (ok, text) = cosign(&[
        "generate-key",
        "--alg",
        alg,
        "--out",
        out.to_str().unwrap_or_default(),
    ])
    .await;
    assert!(ok, "generate-key: {text}");
    out
}

fn pem(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("cosign.pub")).expect("public key")
}

struct Signer<'a> {
    registry: &'a TestRegistry,
}

impl Signer<'_> {
    fn host(&self) -> String {
        self.registry.addr().to_string()
    }

    async fn sign(&self, key: &Path, repo: &str, digest: &str, extra: &[&str]) {
        let key = key.join("cosign.key");
        let host = self.host();
        let mut args = vec![
            "sign",
            "--insecure",
            "--key",
            key.to_str().unwrap_or_default(),
            "--registry",
            &host,
            "--repo",
            repo,
            "--digest",
            digest,
        ];
        args.extend_from_slice(extra);
        let (ok, text) = cosign(&args).await;
        assert!(ok, "sign: {text}");
    }

    async fn verifies(&self, key: &Path, repo: &str, digest: &str) -> bool {
        let public = key.join("cosign.pub");
        let (host, identity) = (self.host(), format!("{}/{repo}", self.host()));
        cosign(&[
            "verify",
            "--insecure",
            "--key",
            public.to_str().unwrap_or_default(),
            "--registry",
            &host,
            "--repo",
            repo,
            "--digest",
            digest,
            "--identity",
            &identity,
        ])
        .await
        .0
    }
}

async fn pull(registry: &TestRegistry, repo: &str, reference: &str) -> StatusCode {
    registry
        .get(&format!("/v2/{repo}/manifests/{reference}"))
        .await
        .status()
}

#[tokio::test]
async fn only_what_a_trusted_key_signed_for_this_digest_and_repository_is_pulled() {
    let keys = tempfile::tempdir().expect("temp dir");
    let p256 = key(keys.path(), "ci", "p256").await;
    let ed25519 = key(keys.path(), "release", "ed25519").await;
    let other = key(keys.path(), "other", "p256").await;
    let trusted = vec![pem(&p256), pem(&ed25519)];
    let registry = TestRegistry::start_with(move |c| {
        let mut pulls = policy(
            "signed-pulls",
            "builtin:signature",
            json!({ "keys": trusted }),
        );
        pulls.actions = Some(vec![portcullis::config::Action::Pull]);
        pulls.repositories = Some(vec!["signed/**".into()]);
        let mut prod = policy(
            "signed-prod",
            "builtin:signature",
            json!({ "keys": trusted, "tags": ["prod-*"] }),
        );
        prod.actions = Some(vec![portcullis::config::Action::Push]);
        c.policy.chain = vec![pulls, prod];
    })
    .await;
    let signer = Signer {
        registry: &registry,
    };
    let push = |repo: &'static str| {
        let registry = &registry;
        async move {
            let image = Image::random();
            registry.push_image(repo, "v1", &image).await;
            image.digest
        }
    };

    // Signed by a trusted key, in the tag scheme: both admit it.
    let digest = push("signed/p256").await;
    assert_eq!(
        pull(&registry, "signed/p256", "v1").await,
        StatusCode::FORBIDDEN,
        "unsigned"
    );
    assert!(!signer.verifies(&p256, "signed/p256", &digest).await);
    signer.sign(&p256, "signed/p256", &digest, &[]).await;
    assert!(signer.verifies(&p256, "signed/p256", &digest).await);
    assert_eq!(pull(&registry, "signed/p256", "v1").await, StatusCode::OK);
    assert_eq!(
        pull(&registry, "signed/p256", &digest).await,
        StatusCode::OK
    );

    let digest = push("signed/ed").await;
    signer.sign(&ed25519, "signed/ed", &digest, &[]).await;
    assert!(signer.verifies(&ed25519, "signed/ed", &digest).await);
    assert_eq!(pull(&registry, "signed/ed", "v1").await, StatusCode::OK);

    // Refused by both.
    let digest = push("signed/other-key").await;
    signer.sign(&other, "signed/other-key", &digest, &[]).await;
    assert!(!signer.verifies(&p256, "signed/other-key", &digest).await);
    assert_eq!(
        pull(&registry, "signed/other-key", "v1").await,
        StatusCode::FORBIDDEN
    );

    let digest = push("signed/tampered").await;
    signer
        .sign(&p256, "signed/tampered", &digest, &["--tamper"])
        .await;
    assert!(!signer.verifies(&p256, "signed/tampered", &digest).await);
    assert_eq!(
        pull(&registry, "signed/tampered", "v1").await,
        StatusCode::FORBIDDEN
    );

    let digest = push("signed/elsewhere").await;
    let another = format!("sha256:{}", "0".repeat(64));
    signer
        .sign(
            &p256,
            "signed/elsewhere",
            &digest,
            &["--digest-in-payload", &another],
        )
        .await;
    assert!(!signer.verifies(&p256, "signed/elsewhere", &digest).await);
    assert_eq!(
        pull(&registry, "signed/elsewhere", "v1").await,
        StatusCode::FORBIDDEN
    );

    let digest = push("signed/repo").await;
    let identity = format!("{}/signed/other", signer.host());
    signer
        .sign(&p256, "signed/repo", &digest, &["--identity", &identity])
        .await;
    assert!(!signer.verifies(&p256, "signed/repo", &digest).await);
    let response = registry.get("/v2/signed/repo/manifests/v1").await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body = response.text().await.unwrap_or_default();
    assert!(body.contains("not this repository"), "{body}");

    // An attacker's unsigned image dressed as a signature (a `subject`, a
    // cosign tag name) is still an image: refused by tag and by digest.
    let victim = push("signed/dressed").await;
    let dressed = Image::with_fields(json!({
        "subject": { "mediaType": common::OCI_MANIFEST, "digest": victim, "size": 1 }
    }));
    let tag = format!("sha256-{}.sig", victim.trim_start_matches("sha256:"));
    registry.push_image("signed/dressed", &tag, &dressed).await;
    assert_eq!(
        pull(&registry, "signed/dressed", &tag).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        pull(&registry, "signed/dressed", &dressed.digest).await,
        StatusCode::FORBIDDEN
    );

    // Outside the policy's scope, nothing is asked.
    let digest = push("open/app").await;
    assert_eq!(pull(&registry, "open/app", &digest).await, StatusCode::OK);

    // The referrers form, from the same kind of signed payload, pushed with
    // a generic client (oci-client).
    let referred = Image::random();
    registry
        .push_image("signed/referred", "v1", &referred)
        .await;
    let digest = referred.digest.clone();
    let out = keys.path().join("payload");
    let identity = format!("{}/signed/referred", signer.host());
    let key_file = p256.join("cosign.key");
    let (ok, text) = cosign(&[
        "payload",
        "--key",
        key_file.to_str().unwrap_or_default(),
        "--identity",
        &identity,
        "--digest",
        &digest,
        "--out",
        out.to_str().unwrap_or_default(),
    ])
    .await;
    assert!(ok, "payload: {text}");
    let payload = std::fs::read(out.join("payload.json")).expect("payload");
    let signature = std::fs::read_to_string(out.join("signature.b64")).expect("signature");
    assert_eq!(
        pull(&registry, "signed/referred", "v1").await,
        StatusCode::FORBIDDEN
    );
    push_referrer(
        &registry,
        "signed/referred",
        &referred.manifest,
        &payload,
        signature.trim(),
    )
    .await;
    let response = registry.get("/v2/signed/referred/manifests/v1").await;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    assert_eq!(status, StatusCode::OK, "{body}");

    // A prod-* tag may only point at a signed digest.
    let unsigned = Image::random();
    let (status, _) = registry
        .push_image_as(None, "app", "prod-1", &unsigned)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let image = Image::random();
    registry.push_image("app", "ci-42", &image).await;
    signer.sign(&ed25519, "app", &image.digest, &[]).await;
    let put = registry
        .put_manifest(
            "app",
            "prod-1",
            common::OCI_MANIFEST,
            image.manifest.clone(),
        )
        .await;
    assert_eq!(put.status(), StatusCode::CREATED);

    let metrics = registry
        .get("/metrics")
        .await
        .text()
        .await
        .unwrap_or_default();
    assert!(metrics.contains("portcullis_policy_lookups_total{kind=\"referrers\",outcome=\"ok\"}"));
}

/// A cosign signature as an OCI 1.1 referrer of `digest`: the payload as a
/// simple-signing layer with the signature annotation, `subject` the image.
async fn push_referrer(
    registry: &TestRegistry,
    repo: &str,
    image: &[u8],
    payload: &[u8],
    signature: &str,
) {
    let client = registry.oci_client();
    let auth = oci_client::secrets::RegistryAuth::Anonymous;
    let reference = registry.reference(repo, "unused");
    client
        .auth(&reference, &auth, oci_client::RegistryOperation::Push)
        .await
        .ok();
    let config = b"{}".to_vec();
    for blob in [&config, &payload.to_vec()] {
        client
            .push_blob(&reference, blob.clone(), &sha256(blob))
            .await
            .expect("blob pushed with oci-client");
    }
    let mut layer = descriptor("application/vnd.dev.cosign.simplesigning.v1+json", payload);
    layer["annotations"] = json!({ "dev.cosignproject.cosign/signature": signature });
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": common::OCI_MANIFEST,
        "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json",
        "config": descriptor("application/vnd.oci.empty.v1+json", &config),
        "layers": [layer],
        "subject": descriptor(common::OCI_MANIFEST, image),
    });
    let bytes = serde_json::to_vec(&manifest).expect("manifest");
    let target = registry.reference_by_digest(repo, &sha256(&bytes));
    client
        .push_manifest_raw(
            &target,
            bytes,
            reqwest::header::HeaderValue::from_static(common::OCI_MANIFEST),
        )
        .await
        .expect("referrer pushed with oci-client");
}

/// A key the host cannot use refuses the chain at load, with the reason,
/// instead of denying every pull later.
#[test]
fn a_key_that_is_not_p256_or_ed25519_refuses_the_chain() {
    let mut config = portcullis::config::Config::default();
    let rsa_shaped =
        "-----BEGIN PUBLIC KEY-----\nMAwwCgYIKoZIzj0EAwIDAA==\n-----END PUBLIC KEY-----\n";
    config.policy.chain = vec![policy(
        "signed",
        "builtin:signature",
        json!({ "keys": [rsa_shaped] }),
    )];
    let engine = std::sync::Arc::new(portcullis::policy::PolicyEngine::new(None).expect("engine"));
    let error = match portcullis::policy::PolicyChain::load(engine, &config) {
        Ok(_) => panic!("a chain with an unusable key loaded"),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("settings.keys[0]"), "{error}");
}
