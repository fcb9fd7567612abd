//! Manifests over raw HTTP: pushing by tag and by digest, the checks a
//! manifest must pass, reading back with the right headers and `Accept`
//! negotiation, the `OCI-Subject` header, and deletes.

mod common;

use common::{
    descriptor, expect_error, header, random_bytes, sha256, Image, TestRegistry, DOCKER_LIST,
    DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST,
};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn push_a_manifest_by_tag_and_read_it_by_tag_and_digest() {
    let registry = TestRegistry::start().await;
    let image = Image::random();
    registry.push_blob("app", &image.config).await;
    for layer in &image.layers {
        registry.push_blob("app", layer).await;
    }

    let put = registry
        .put_manifest("app", "v1", OCI_MANIFEST, image.manifest.clone())
        .await;
    assert_eq!(put.status(), StatusCode::CREATED);
    assert_eq!(
        header(&put, "location").as_deref(),
        Some(format!("/v2/app/manifests/{}", image.digest).as_str())
    );
    assert_eq!(
        header(&put, "docker-content-digest").as_deref(),
        Some(image.digest.as_str())
    );

    for reference in ["v1", image.digest.as_str()] {
        let get = registry
            .get(&format!("/v2/app/manifests/{reference}"))
            .await;
        assert_eq!(get.status(), StatusCode::OK, "GET {reference}");
        assert_eq!(header(&get, "content-type").as_deref(), Some(OCI_MANIFEST));
        assert_eq!(
            header(&get, "docker-content-digest").as_deref(),
            Some(image.digest.as_str())
        );
        assert_eq!(get.bytes().await.unwrap().to_vec(), image.manifest);

        let head = registry
            .send(Method::HEAD, &format!("/v2/app/manifests/{reference}"))
            .await;
        assert_eq!(head.status(), StatusCode::OK, "HEAD {reference}");
        assert_eq!(header(&head, "content-type").as_deref(), Some(OCI_MANIFEST));
        assert_eq!(
            header(&head, "docker-content-digest").as_deref(),
            Some(image.digest.as_str())
        );
        assert_eq!(
            header(&head, "content-length"),
            Some(image.manifest.len().to_string()),
            "HEAD {reference} announces the manifest's length"
        );
        assert!(head.bytes().await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn push_a_manifest_by_digest_without_a_tag() {
    let registry = TestRegistry::start().await;
    let image = Image::random();
    registry.push_image("untagged", &image.digest, &image).await;

    let get = registry
        .get(&format!("/v2/untagged/manifests/{}", image.digest))
        .await;
    assert_eq!(get.status(), StatusCode::OK);
    assert_eq!(get.bytes().await.unwrap().to_vec(), image.manifest);
    let tags = registry.get("/v2/untagged/tags/list").await;
    assert_eq!(tags.status(), StatusCode::OK);
    let tags: serde_json::Value = tags.json().await.unwrap();
    assert_eq!(tags["tags"].as_array().map(Vec::len).unwrap_or(0), 0);
}

#[tokio::test]
async fn pushing_a_tag_again_moves_it_to_the_new_manifest() {
    let registry = TestRegistry::start().await;
    let old = Image::random();
    let new = Image::random();
    registry.push_image("moving", "stable", &old).await;
    registry.push_image("moving", "stable", &new).await;

    let get = registry.get("/v2/moving/manifests/stable").await;
    assert_eq!(
        header(&get, "docker-content-digest").as_deref(),
        Some(new.digest.as_str())
    );
    // The old manifest is still there by digest.
    let old_get = registry
        .get(&format!("/v2/moving/manifests/{}", old.digest))
        .await;
    assert_eq!(old_get.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_manifest_referencing_a_missing_blob_is_refused() {
    let registry = TestRegistry::start().await;
    let image = Image::random();
    // The config and the first layer, but not the second layer.
    registry.push_blob("incomplete", &image.config).await;
    registry.push_blob("incomplete", &image.layers[0]).await;

    let put = registry
        .put_manifest("incomplete", "v1", OCI_MANIFEST, image.manifest.clone())
        .await;
    let error = expect_error(put, 400, "MANIFEST_BLOB_UNKNOWN").await;
    assert_eq!(error["detail"]["digest"], sha256(&image.layers[1]));

    // A blob in another repository does not count either.
    registry.push_blob("elsewhere", &image.layers[1]).await;
    let put = registry
        .put_manifest("incomplete", "v1", OCI_MANIFEST, image.manifest.clone())
        .await;
    expect_error(put, 400, "MANIFEST_BLOB_UNKNOWN").await;
    let get = registry.get("/v2/incomplete/manifests/v1").await;
    expect_error(get, 404, "MANIFEST_UNKNOWN").await;
}

#[tokio::test]
async fn an_index_referencing_a_missing_child_manifest_is_refused() {
    let registry = TestRegistry::start().await;
    let present = Image::random();
    let missing = Image::random();
    registry
        .push_image("index", &present.digest, &present)
        .await;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [present.descriptor(), missing.descriptor()],
    }))
    .unwrap();

    let put = registry
        .put_manifest("index", "multi", OCI_INDEX, index)
        .await;
    let error = expect_error(put, 400, "MANIFEST_BLOB_UNKNOWN").await;
    assert_eq!(error["detail"]["digest"], missing.digest);
}

#[tokio::test]
async fn an_index_of_pushed_manifests_is_served_as_an_index() {
    let registry = TestRegistry::start().await;
    let (a, b) = (Image::random(), Image::random());
    registry.push_image("index", &a.digest, &a).await;
    registry.push_image("index", &b.digest, &b).await;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [a.descriptor(), b.descriptor()],
    }))
    .unwrap();

    let put = registry
        .put_manifest("index", "multi", OCI_INDEX, index.clone())
        .await;
    assert_eq!(put.status(), StatusCode::CREATED);
    let get = registry.get("/v2/index/manifests/multi").await;
    assert_eq!(header(&get, "content-type").as_deref(), Some(OCI_INDEX));
    assert_eq!(header(&get, "docker-content-digest"), Some(sha256(&index)));
    assert_eq!(get.bytes().await.unwrap().to_vec(), index);
}

/// A valid image manifest padded with an annotation to exactly `size` bytes.
fn manifest_of_size(image: &Image, size: usize) -> Vec<u8> {
    let build = |padding: usize| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(common::OCI_CONFIG, &image.config),
            "layers": image.layers.iter().map(|l| descriptor(common::OCI_LAYER, l)).collect::<Vec<_>>(),
            "annotations": { "padding": "x".repeat(padding) },
        }))
        .unwrap()
    };
    let overhead = build(0).len();
    let manifest = build(size - overhead);
    assert_eq!(manifest.len(), size);
    manifest
}

#[tokio::test]
async fn a_manifest_over_4_mib_is_refused_with_413() {
    let registry = TestRegistry::start().await;
    let image = Image::random();
    registry.push_image("big", "small", &image).await;
    let too_big = manifest_of_size(&image, 4 * 1024 * 1024 + 1);

    // With a Content-Length the registry can refuse before reading.
    let put = registry
        .put_manifest("big", "huge", OCI_MANIFEST, too_big.clone())
        .await;
    expect_error(put, 413, "MANIFEST_INVALID").await;

    // Streamed without a length, it is refused once the limit is passed.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        too_big.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let put = registry
        .put_manifest(
            "big",
            "huge",
            OCI_MANIFEST,
            reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)),
        )
        .await;
    expect_error(put, 413, "MANIFEST_INVALID").await;

    let get = registry.get("/v2/big/manifests/huge").await;
    expect_error(get, 404, "MANIFEST_UNKNOWN").await;
}

#[tokio::test]
async fn a_manifest_of_exactly_4_mib_is_accepted() {
    let registry = TestRegistry::start().await;
    let image = Image::random();
    registry.push_image("big", "small", &image).await;
    let largest = manifest_of_size(&image, 4 * 1024 * 1024);

    let put = registry
        .put_manifest("big", "largest", OCI_MANIFEST, largest.clone())
        .await;
    assert_eq!(put.status(), StatusCode::CREATED);
    let get = registry.get("/v2/big/manifests/largest").await;
    assert_eq!(get.bytes().await.unwrap().len(), largest.len());
}

#[tokio::test]
async fn a_manifest_that_is_not_json_or_not_a_manifest_is_refused() {
    let registry = TestRegistry::start().await;
    let image = Image::random();
    registry.push_image("invalid", "ok", &image).await;
    for (why, body) in [
        ("not JSON", b"{ this is not json".to_vec()),
        ("JSON but not an object", b"[1, 2, 3]".to_vec()),
        (
            "schemaVersion 1",
            serde_json::to_vec(&json!({"schemaVersion": 1, "mediaType": OCI_MANIFEST})).unwrap(),
        ),
        (
            "image manifest without a config",
            serde_json::to_vec(
                &json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}),
            )
            .unwrap(),
        ),
        (
            "bad digest in a descriptor",
            serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": common::OCI_CONFIG, "digest": "sha256:nothex", "size": 2},
                "layers": [],
            }))
            .unwrap(),
        ),
    ] {
        let put = registry
            .put_manifest("invalid", "bad", OCI_MANIFEST, body)
            .await;
        let status = put.status();
        let error = expect_error(put, 400, "MANIFEST_INVALID").await;
        assert_eq!(status, 400, "{why}: {error}");
    }
    let get = registry.get("/v2/invalid/manifests/bad").await;
    expect_error(get, 404, "MANIFEST_UNKNOWN").await;
}

#[tokio::test]
async fn a_manifest_pushed_by_a_digest_its_bytes_do_not_have_is_refused() {
    let registry = TestRegistry::start().await;
    let image = Image::random();
    registry.push_image("mismatch", "ok", &image).await;
    let wrong = sha256(b"some other manifest");

    let put = registry
        .put_manifest("mismatch", &wrong, OCI_MANIFEST, image.manifest.clone())
        .await;
    expect_error(put, 400, "DIGEST_INVALID").await;
    let get = registry
        .get(&format!("/v2/mismatch/manifests/{wrong}"))
        .await;
    expect_error(get, 404, "MANIFEST_UNKNOWN").await;
}

#[tokio::test]
async fn a_manifest_with_a_subject_gets_the_oci_subject_header() {
    let registry = TestRegistry::start().await;
    let subject = Image::random();
    registry.push_image("signed", "v1", &subject).await;
    let signature = Image::with_fields(json!({
        "artifactType": "application/vnd.example.signature",
        "subject": subject.descriptor(),
    }));
    registry.push_blob("signed", &signature.config).await;
    for layer in &signature.layers {
        registry.push_blob("signed", layer).await;
    }

    let put = registry
        .put_manifest(
            "signed",
            &signature.digest,
            OCI_MANIFEST,
            signature.manifest.clone(),
        )
        .await;
    assert_eq!(put.status(), StatusCode::CREATED);
    assert_eq!(
        header(&put, "oci-subject").as_deref(),
        Some(subject.digest.as_str())
    );

    // Without a subject, no header.
    let plain = registry
        .put_manifest("signed", "v1", OCI_MANIFEST, subject.manifest.clone())
        .await;
    assert_eq!(plain.status(), StatusCode::CREATED);
    assert_eq!(header(&plain, "oci-subject"), None);
}

#[tokio::test]
async fn accept_negotiation_hides_an_oci_manifest_from_a_docker_only_client() {
    let registry = TestRegistry::start().await;
    let image = Image::random();
    registry.push_image("negotiate", "v1", &image).await;
    let get = |accept: Option<&str>| {
        let mut request = registry.request(Method::GET, "/v2/negotiate/manifests/v1");
        if let Some(accept) = accept {
            request = request.header("accept", accept);
        }
        request.send()
    };

    let docker_only = get(Some(&format!("{DOCKER_MANIFEST}, {DOCKER_LIST}")))
        .await
        .unwrap();
    expect_error(docker_only, 404, "MANIFEST_UNKNOWN").await;

    for accept in [
        None,
        Some(OCI_MANIFEST.to_owned()),
        Some(format!("{DOCKER_MANIFEST}, {OCI_MANIFEST};q=0.9")),
        Some("*/*".to_owned()),
    ] {
        let response = get(accept.as_deref()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "Accept: {accept:?}");
        assert_eq!(
            header(&response, "content-type").as_deref(),
            Some(OCI_MANIFEST)
        );
    }
}

#[tokio::test]
async fn a_docker_manifest_is_served_with_its_docker_media_type() {
    let registry = TestRegistry::start().await;
    let config = random_bytes(100);
    let layer = random_bytes(100);
    registry.push_blob("docker", &config).await;
    registry.push_blob("docker", &layer).await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": descriptor("application/vnd.docker.container.image.v1+json", &config),
        "layers": [descriptor("application/vnd.docker.image.rootfs.diff.tar.gzip", &layer)],
    }))
    .unwrap();
    let put = registry
        .put_manifest("docker", "v1", DOCKER_MANIFEST, manifest.clone())
        .await;
    assert_eq!(put.status(), StatusCode::CREATED);

    let get = registry
        .request(Method::GET, "/v2/docker/manifests/v1")
        .header("accept", DOCKER_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), StatusCode::OK);
    assert_eq!(
        header(&get, "content-type").as_deref(),
        Some(DOCKER_MANIFEST)
    );
    let oci_only = registry
        .request(Method::GET, "/v2/docker/manifests/v1")
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    expect_error(oci_only, 404, "MANIFEST_UNKNOWN").await;
}

#[tokio::test]
async fn deleting_a_manifest_by_digest_removes_it_and_its_tags() {
    let registry = TestRegistry::start().await;
    let image = Image::random();
    registry.push_image("deletes", "v1", &image).await;
    registry.push_image("deletes", "also", &image).await;
    let keep = Image::random();
    registry.push_image("deletes", "keep", &keep).await;

    let delete = registry
        .send(
            Method::DELETE,
            &format!("/v2/deletes/manifests/{}", image.digest),
        )
        .await;
    assert_eq!(delete.status(), StatusCode::ACCEPTED);

    for reference in [image.digest.as_str(), "v1", "also"] {
        let get = registry
            .get(&format!("/v2/deletes/manifests/{reference}"))
            .await;
        expect_error(get, 404, "MANIFEST_UNKNOWN").await;
    }
    let tags: serde_json::Value = registry
        .get("/v2/deletes/tags/list")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tags["tags"], json!(["keep"]));

    let again = registry
        .send(
            Method::DELETE,
            &format!("/v2/deletes/manifests/{}", image.digest),
        )
        .await;
    expect_error(again, 404, "MANIFEST_UNKNOWN").await;
}

#[tokio::test]
async fn deleting_a_tag_keeps_the_manifest_by_digest() {
    let registry = TestRegistry::start().await;
    let image = Image::random();
    registry.push_image("untag", "v1", &image).await;

    let delete = registry
        .send(Method::DELETE, "/v2/untag/manifests/v1")
        .await;
    assert_eq!(delete.status(), StatusCode::ACCEPTED);

    let by_tag = registry.get("/v2/untag/manifests/v1").await;
    expect_error(by_tag, 404, "MANIFEST_UNKNOWN").await;
    let by_digest = registry
        .get(&format!("/v2/untag/manifests/{}", image.digest))
        .await;
    assert_eq!(by_digest.status(), StatusCode::OK);
    let again = registry
        .send(Method::DELETE, "/v2/untag/manifests/v1")
        .await;
    expect_error(again, 404, "MANIFEST_UNKNOWN").await;
}

#[tokio::test]
async fn deletes_are_refused_when_the_operator_disabled_them() {
    let registry = TestRegistry::start_with(|c| c.storage.delete_enabled = false).await;
    let image = Image::random();
    registry.push_image("kept", "v1", &image).await;

    for path in [
        format!("/v2/kept/manifests/{}", image.digest),
        "/v2/kept/manifests/v1".to_owned(),
        format!("/v2/kept/blobs/{}", sha256(&image.config)),
    ] {
        let delete = registry.send(Method::DELETE, &path).await;
        expect_error(delete, 405, "UNSUPPORTED").await;
    }
    let get = registry.get("/v2/kept/manifests/v1").await;
    assert_eq!(get.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_deleted_manifest_can_be_pushed_again() {
    let registry = TestRegistry::start().await;
    let image = Image::random();
    registry.push_image("again", "v1", &image).await;
    let delete = registry
        .send(
            Method::DELETE,
            &format!("/v2/again/manifests/{}", image.digest),
        )
        .await;
    assert_eq!(delete.status(), StatusCode::ACCEPTED);

    let put = registry
        .put_manifest("again", "v1", OCI_MANIFEST, image.manifest.clone())
        .await;
    assert_eq!(put.status(), StatusCode::CREATED);
    let get = registry.get("/v2/again/manifests/v1").await;
    assert_eq!(get.status(), StatusCode::OK);
    assert_eq!(
        header(&get, "docker-content-digest").as_deref(),
        Some(image.digest.as_str())
    );
}

#[tokio::test]
async fn a_manifest_can_be_addressed_by_its_sha512_digest() {
    let registry = TestRegistry::start().await;
    let image = Image::random();
    registry.push_image("sha512", "v1", &image).await;
    let digest = common::sha512(&image.manifest);

    let put = registry
        .put_manifest("sha512", &digest, OCI_MANIFEST, image.manifest.clone())
        .await;
    assert_eq!(put.status(), StatusCode::CREATED);
    assert_eq!(
        header(&put, "docker-content-digest").as_deref(),
        Some(digest.as_str())
    );
    let get = registry
        .get(&format!("/v2/sha512/manifests/{digest}"))
        .await;
    assert_eq!(get.status(), StatusCode::OK);
    assert_eq!(
        header(&get, "docker-content-digest").as_deref(),
        Some(digest.as_str())
    );
    assert_eq!(get.bytes().await.unwrap().to_vec(), image.manifest);
}

#[tokio::test]
async fn a_non_distributable_layer_with_urls_need_not_be_pushed() {
    let registry = TestRegistry::start().await;
    let config = random_bytes(64);
    registry.push_blob("foreign", &config).await;
    let foreign = random_bytes(64);
    let mut layer = descriptor(
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        &foreign,
    );
    layer["urls"] = json!(["https://example.com/layer.tar.gz"]);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(common::OCI_CONFIG, &config),
        "layers": [layer],
    }))
    .unwrap();
    let put = registry
        .put_manifest("foreign", "v1", OCI_MANIFEST, manifest)
        .await;
    assert_eq!(put.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn a_manifest_is_served_with_the_media_type_it_was_accepted_as() {
    let registry = TestRegistry::start().await;
    let (a, b) = (Image::random(), Image::random());
    registry.push_image("typed", &a.digest, &a).await;
    registry.push_image("typed", &b.digest, &b).await;
    // No `mediaType` in the bodies: the media type is only in Content-Type,
    // as oci-client sends an `OciImageIndex` whose `media_type` is `None`.
    let list = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [a.descriptor(), b.descriptor()],
    }))
    .unwrap();
    let mut image: serde_json::Value = serde_json::from_slice(&a.manifest).unwrap();
    image.as_object_mut().unwrap().remove("mediaType");
    let image = serde_json::to_vec(&image).unwrap();

    for (tag, media_type, body) in [("list", DOCKER_LIST, list), ("v2", DOCKER_MANIFEST, image)] {
        let put = registry.put_manifest("typed", tag, media_type, body).await;
        if put.status() == StatusCode::BAD_REQUEST {
            // Refusing a Docker manifest without its mediaType field is fine too.
            expect_error(put, 400, "MANIFEST_INVALID").await;
            continue;
        }
        assert_eq!(put.status(), StatusCode::CREATED, "PUT as {media_type}");
        let get = registry
            .request(Method::GET, &format!("/v2/typed/manifests/{tag}"))
            .header("accept", media_type)
            .send()
            .await
            .unwrap();
        let status = get.status();
        let content_type = header(&get, "content-type");
        assert_eq!(
            (status, content_type.as_deref()),
            (StatusCode::OK, Some(media_type)),
            "accepted as {media_type}, then GET with Accept: {media_type} answered {}",
            get.text().await.unwrap_or_default()
        );
    }
}

#[tokio::test]
async fn manifests_and_blobs_read_the_same_on_the_blocking_pool_and_inline() {
    use portcullis::config::SmallReads;
    for mode in [SmallReads::Pool, SmallReads::Inline] {
        let registry = TestRegistry::start_with(|c| c.storage.small_reads = mode).await;
        let image = Image::random();
        registry.push_image("reads", "v1", &image).await;
        for reference in ["v1", image.digest.as_str()] {
            let get = registry
                .get(&format!("/v2/reads/manifests/{reference}"))
                .await;
            assert_eq!(get.status(), StatusCode::OK, "{mode:?} GET {reference}");
            assert_eq!(
                header(&get, "docker-content-digest").as_deref(),
                Some(image.digest.as_str())
            );
            assert_eq!(get.bytes().await.unwrap().to_vec(), image.manifest);
        }
        let missing = registry.get("/v2/reads/manifests/v2").await;
        expect_error(missing, 404, "MANIFEST_UNKNOWN").await;
        for layer in &image.layers {
            let digest = common::sha256(layer);
            let head = registry
                .request(Method::HEAD, &format!("/v2/reads/blobs/{digest}"))
                .send()
                .await
                .unwrap();
            assert_eq!(head.status(), StatusCode::OK, "{mode:?} HEAD {digest}");
            assert_eq!(
                header(&head, "content-length"),
                Some(layer.len().to_string())
            );
            let get = registry.get(&format!("/v2/reads/blobs/{digest}")).await;
            assert_eq!(get.bytes().await.unwrap().to_vec(), *layer);
        }
    }
}
