//! What a client that sends something wrong gets back: the spec's status and
//! error code, in the `{"errors":[{"code","message"}]}` body, for bad names,
//! bad digests, unknown content and unsupported methods. Hostile paths go over
//! a bare socket because HTTP clients normalise them away. Path traversal and
//! malformed digests on every route are rows of the table in `hostile.rs`.

mod common;

use common::{expect_error, expect_raw_error, sha256, Image, TestRegistry};
use reqwest::Method;

#[tokio::test]
async fn invalid_repository_names_are_name_invalid() {
    let registry = TestRegistry::start().await;
    let too_long = format!("/v2/{}/tags/list", "a".repeat(256));
    let longest = format!("/v2/{}/tags/list", "a".repeat(255));
    let response = registry.raw_request("GET", &longest).await;
    expect_raw_error(&response, 404, "NAME_UNKNOWN");
    for path in [
        too_long.as_str(),
        "/v2/Uppercase/tags/list",
        "/v2/UPPER/case/manifests/latest",
        "/v2/trailing-/manifests/latest",
        "/v2/double..dot/manifests/latest",
        "/v2/a//b/manifests/latest",
        "/v2/sp%20ace/blobs/uploads/",
    ] {
        let response = registry.raw_request("GET", path).await;
        expect_raw_error(&response, 400, "NAME_INVALID");
    }
}

#[tokio::test]
async fn committing_an_upload_without_a_digest_is_digest_invalid() {
    let registry = TestRegistry::start().await;
    let session = registry.start_upload("nodigest").await;
    let put = registry
        .http
        .put(&session)
        .body(b"data".to_vec())
        .send()
        .await
        .unwrap();
    expect_error(put, 400, "DIGEST_INVALID").await;
    let bad = registry
        .http
        .put(format!("{session}?digest=sha256:nope"))
        .send()
        .await
        .unwrap();
    expect_error(bad, 400, "DIGEST_INVALID").await;
}

#[tokio::test]
async fn unknown_content_is_the_matching_unknown_code() {
    let registry = TestRegistry::start().await;
    registry.push_image("known", "v1", &Image::random()).await;
    let absent = sha256(b"absent");

    let blob = registry.get(&format!("/v2/known/blobs/{absent}")).await;
    expect_error(blob, 404, "BLOB_UNKNOWN").await;
    let by_tag = registry.get("/v2/known/manifests/v2").await;
    expect_error(by_tag, 404, "MANIFEST_UNKNOWN").await;
    let by_digest = registry.get(&format!("/v2/known/manifests/{absent}")).await;
    expect_error(by_digest, 404, "MANIFEST_UNKNOWN").await;
    let delete_blob = registry
        .send(Method::DELETE, &format!("/v2/known/blobs/{absent}"))
        .await;
    expect_error(delete_blob, 404, "BLOB_UNKNOWN").await;
    let tags = registry.get("/v2/unknown/tags/list").await;
    expect_error(tags, 404, "NAME_UNKNOWN").await;
}

#[tokio::test]
async fn an_unknown_or_malformed_upload_id_is_blob_upload_unknown() {
    let registry = TestRegistry::start().await;
    let never_started = format!(
        "/v2/repo/blobs/uploads/{}",
        "0123abcd-0000-4000-8000-000000000000"
    );
    for (method, path) in [
        (Method::GET, never_started.as_str()),
        (Method::PATCH, never_started.as_str()),
        (Method::DELETE, never_started.as_str()),
        (Method::GET, "/v2/repo/blobs/uploads/not-a-session-id"),
    ] {
        let response = registry.request(method.clone(), path).send().await.unwrap();
        expect_error(response, 404, "BLOB_UPLOAD_UNKNOWN").await;
    }
    let put = registry
        .send(
            Method::PUT,
            &format!("{never_started}?digest={}", sha256(b"")),
        )
        .await;
    expect_error(put, 404, "BLOB_UPLOAD_UNKNOWN").await;
}

#[tokio::test]
async fn an_invalid_tag_is_refused() {
    let registry = TestRegistry::start().await;
    let image = Image::random();
    registry.push_image("tags", "ok", &image).await;
    let too_long = "t".repeat(129);
    for tag in ["-leading-dash", ".leading-dot", too_long.as_str()] {
        let put = registry
            .put_manifest("tags", tag, common::OCI_MANIFEST, image.manifest.clone())
            .await;
        assert_eq!(put.status(), 400, "tag {tag:?}");
        let body: serde_json::Value = put.json().await.unwrap();
        assert!(body["errors"][0]["code"].is_string(), "{body}");
    }
}

#[tokio::test]
async fn a_method_the_endpoint_does_not_have_is_405_unsupported() {
    let registry = TestRegistry::start().await;
    for (method, path) in [
        (Method::POST, "/v2/repo/manifests/latest".to_owned()),
        (Method::PATCH, format!("/v2/repo/blobs/{}", sha256(b"x"))),
        (Method::DELETE, "/v2/repo/tags/list".to_owned()),
        (Method::PUT, "/v2/_catalog".to_owned()),
    ] {
        let response = registry
            .request(method.clone(), &path)
            .send()
            .await
            .unwrap();
        expect_error(response, 405, "UNSUPPORTED").await;
    }
}

#[tokio::test]
async fn a_path_outside_the_api_is_404() {
    let registry = TestRegistry::start().await;
    for path in [
        "/",
        "/v1/repo/tags/list",
        "/v2/repo",
        "/v2/repo/unknown-endpoint",
    ] {
        let response = registry.get(path).await;
        expect_error(response, 404, "UNSUPPORTED").await;
    }
}

/// The OCI conformance suite's three cases that once failed (v1.1.1, pull
/// and push workflows): a manifest GET or HEAD of `.INVALID_MANIFEST_NAME`
/// is 404 `MANIFEST_UNKNOWN`, in a repository that exists and in one that
/// does not. A PUT there is still 400 `MANIFEST_INVALID`.
#[tokio::test]
async fn conformance_an_invalid_manifest_name_is_manifest_unknown() {
    let registry = TestRegistry::start().await;
    let image = Image::random();
    registry
        .push_image("conformance/pushed", "v1", &image)
        .await;
    for repository in ["conformance/pushed", "conformance/never"] {
        let path = format!("/v2/{repository}/manifests/.INVALID_MANIFEST_NAME");
        let get = registry.send(Method::GET, &path).await;
        expect_error(get, 404, "MANIFEST_UNKNOWN").await;
        let head = registry.send(Method::HEAD, &path).await;
        assert_eq!(head.status(), 404, "HEAD {path}");
        assert!(
            head.bytes().await.unwrap().is_empty(),
            "HEAD {path} has a body"
        );
    }
    let put = registry
        .request(
            Method::PUT,
            "/v2/conformance/pushed/manifests/.INVALID_MANIFEST_NAME",
        )
        .header("content-type", common::OCI_MANIFEST)
        .body(image.manifest.clone())
        .send()
        .await
        .unwrap();
    expect_error(put, 400, "MANIFEST_INVALID").await;
}
