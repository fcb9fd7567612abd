//! The pull-through cache against a real upstream: a second Portcullis on
//! loopback (with accounts, like Docker Hub with credentials).

mod common;

use std::time::Duration;

use common::{expect_error, header, Image, TestRegistry};
use portcullis::config::{PolicyEntry, Secret};
use reqwest::{Method, StatusCode};
use serde_json::json;

async fn upstream_with_login() -> (TestRegistry, tempfile::TempDir) {
    let secrets = tempfile::tempdir().unwrap();
    let htpasswd = secrets.path().join("htpasswd");
    std::fs::write(
        &htpasswd,
        format!("mirror:{}\n", bcrypt::hash("mirror-pw", 4).unwrap()),
    )
    .unwrap();
    let upstream = TestRegistry::start_with(move |c| {
        c.auth.htpasswd = Some(htpasswd);
        c.policy.chain = vec![PolicyEntry {
            name: "access".into(),
            module: "builtin:group-access".into(),
            settings: json!({
                "authenticated": [{ "repositories": ["**"], "actions": ["pull", "push", "list"] }],
                "anonymous": []
            }),
            actions: None,
            repositories: None,
            mode: Default::default(),
        }];
    })
    .await;
    (upstream, secrets)
}

async fn mirror_of(
    upstream: &TestRegistry,
    ttl: Duration,
    chain: Vec<PolicyEntry>,
) -> TestRegistry {
    let remote = format!("http://{}", upstream.addr());
    TestRegistry::start_with(move |c| {
        c.proxy.remote = Some(remote);
        c.proxy.prefix = "hub".into();
        c.proxy.username = Some("mirror".into());
        c.proxy.password = Some(serde_json::from_value::<Secret>(json!("mirror-pw")).unwrap());
        c.proxy.tag_ttl = ttl;
        c.policy.chain = chain;
    })
    .await
}

#[tokio::test]
async fn a_pull_through_the_mirror_fetches_stores_and_then_serves_locally() {
    let (mut upstream, _secrets) = upstream_with_login().await;
    let image = Image::random();
    let (status, _) = upstream
        .push_image_as(Some(("mirror", "mirror-pw")), "library/app", "1.0", &image)
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let mirror = mirror_of(&upstream, Duration::from_secs(3600), Vec::new()).await;

    // A real client pulls the whole image through the mirror.
    let client = mirror.oci_client();
    let pulled = client
        .pull(
            &mirror.reference("hub/library/app", "1.0"),
            &oci_client::secrets::RegistryAuth::Anonymous,
            vec![common::OCI_LAYER],
        )
        .await
        .expect("pull through the mirror");
    assert_eq!(pulled.digest.as_deref(), Some(image.digest.as_str()));
    assert_eq!(pulled.layers.len(), 2);
    // oci-client fetches layers concurrently: compare them as a set.
    for layer in &image.layers {
        assert!(
            pulled.layers.iter().any(|p| p.data[..] == layer[..]),
            "a layer came back different"
        );
    }
    assert_eq!(pulled.config.data, image.config);

    // With the upstream gone, everything is served from the cache.
    upstream.stop().await;
    let manifest = mirror.get("/v2/hub/library/app/manifests/1.0").await;
    assert_eq!(manifest.status(), StatusCode::OK);
    assert_eq!(
        header(&manifest, "docker-content-digest"),
        Some(image.digest.clone())
    );
    for (digest, bytes) in image
        .blob_digests()
        .iter()
        .zip(std::iter::once(&image.config).chain(&image.layers))
    {
        // The cached copy is committed just after the client got the last
        // byte; give that commit a moment.
        let mut blob = mirror
            .get(&format!("/v2/hub/library/app/blobs/{digest}"))
            .await;
        for _ in 0..50 {
            if blob.status() == StatusCode::OK {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            blob = mirror
                .get(&format!("/v2/hub/library/app/blobs/{digest}"))
                .await;
        }
        assert_eq!(blob.status(), StatusCode::OK, "{digest} cached");
        assert_eq!(&blob.bytes().await.unwrap()[..], &bytes[..]);
    }
    // Something never pulled is not there.
    let missing = mirror.get("/v2/hub/library/other/manifests/1.0").await;
    expect_error(missing, 404, "MANIFEST_UNKNOWN").await;
}

#[tokio::test]
async fn tags_are_rechecked_after_the_ttl_and_the_mirror_is_read_only() {
    let (upstream, _secrets) = upstream_with_login().await;
    let login = Some(("mirror", "mirror-pw"));
    let first = Image::random();
    upstream
        .push_image_as(login, "library/app", "latest", &first)
        .await;
    let mirror = mirror_of(&upstream, Duration::ZERO, Vec::new()).await;

    let head = mirror
        .send(Method::HEAD, "/v2/hub/library/app/manifests/latest")
        .await;
    assert_eq!(
        header(&head, "docker-content-digest"),
        Some(first.digest.clone())
    );

    // The upstream moves the tag: with a zero TTL the mirror follows at once.
    let second = Image::random();
    upstream
        .push_image_as(login, "library/app", "latest", &second)
        .await;
    let head = mirror
        .send(Method::HEAD, "/v2/hub/library/app/manifests/latest")
        .await;
    assert_eq!(
        header(&head, "docker-content-digest"),
        Some(second.digest.clone())
    );

    // Pushing into the mirrored namespace is refused with a clear message.
    let push = mirror
        .send(Method::POST, "/v2/hub/library/app/blobs/uploads/")
        .await;
    let entry = expect_error(push, 403, "DENIED").await;
    assert!(
        entry["message"]
            .as_str()
            .unwrap()
            .contains("read-only mirror of http://"),
        "{entry}"
    );
    // Outside the mirror the registry is a normal one.
    let (status, _) = mirror
        .push_image_as(None, "mine/app", "1", &Image::random())
        .await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test]
async fn policies_apply_to_pulls_through_the_mirror() {
    let (upstream, _secrets) = upstream_with_login().await;
    let login = Some(("mirror", "mirror-pw"));
    upstream
        .push_image_as(login, "library/app", "1", &Image::random())
        .await;
    upstream
        .push_image_as(login, "library/blocked", "1", &Image::random())
        .await;
    let mirror = mirror_of(
        &upstream,
        Duration::from_secs(60),
        vec![PolicyEntry {
            name: "allowlist".into(),
            module: "builtin:repo-allowlist".into(),
            settings: json!({ "pull": ["hub/library/app"], "push": ["mine/**"] }),
            actions: None,
            repositories: None,
            mode: Default::default(),
        }],
    )
    .await;
    assert_eq!(
        mirror.get("/v2/hub/library/app/manifests/1").await.status(),
        StatusCode::OK
    );
    let blocked = mirror.get("/v2/hub/library/blocked/manifests/1").await;
    expect_error(blocked, 403, "DENIED").await;
}
