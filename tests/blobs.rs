//! Reading and deleting blobs over raw HTTP: whole, by `Range` (resumed
//! pulls), `HEAD`, per-repository visibility, and `DELETE`.

mod common;

use common::{expect_error, header, random_bytes, sha256, TestRegistry};
use reqwest::{Method, StatusCode};

async fn get_range(registry: &TestRegistry, path: &str, range: &str) -> reqwest::Response {
    registry
        .request(Method::GET, path)
        .header("range", range)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_blob_is_served_with_its_digest_and_length() {
    let registry = TestRegistry::start().await;
    let data = random_bytes(100_000);
    let digest = registry.push_blob("reader", &data).await;

    let get = registry.get(&format!("/v2/reader/blobs/{digest}")).await;
    assert_eq!(get.status(), StatusCode::OK);
    assert_eq!(
        header(&get, "docker-content-digest").as_deref(),
        Some(digest.as_str())
    );
    assert_eq!(header(&get, "content-length"), Some(data.len().to_string()));
    assert_eq!(sha256(&get.bytes().await.unwrap()), sha256(&data));
}

#[tokio::test]
async fn a_range_request_gets_206_with_just_those_bytes() {
    let registry = TestRegistry::start().await;
    let data = random_bytes(1_000);
    let digest = registry.push_blob("ranges", &data).await;
    let path = format!("/v2/ranges/blobs/{digest}");

    for (range, start, end) in [
        ("bytes=0-0", 0, 0),
        ("bytes=100-199", 100, 199),
        ("bytes=900-", 900, 999),
        ("bytes=990-5000", 990, 999),
        // Suffix ranges: the last n bytes.
        ("bytes=-10", 990, 999),
        ("bytes=-5000", 0, 999),
    ] {
        let response = get_range(&registry, &path, range).await;
        assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            header(&response, "content-range"),
            Some(format!("bytes {start}-{end}/1000")),
            "{range}"
        );
        assert_eq!(
            header(&response, "content-length"),
            Some((end - start + 1).to_string()),
            "{range}"
        );
        assert!(
            response.bytes().await.unwrap() == data[start..=end],
            "{range}: wrong bytes"
        );
    }
}

#[tokio::test]
async fn a_range_beyond_the_end_is_416_with_the_blob_size() {
    let registry = TestRegistry::start().await;
    let data = random_bytes(1_000);
    let digest = registry.push_blob("ranges", &data).await;
    let path = format!("/v2/ranges/blobs/{digest}");

    for range in ["bytes=1000-", "bytes=5000-6000", "bytes=-0"] {
        let response = get_range(&registry, &path, range).await;
        assert_eq!(
            response.status(),
            StatusCode::RANGE_NOT_SATISFIABLE,
            "{range}"
        );
        assert_eq!(
            header(&response, "content-range").as_deref(),
            Some("bytes */1000"),
            "{range}"
        );
    }
}

#[tokio::test]
async fn head_on_a_blob_gives_its_length_and_no_body() {
    let registry = TestRegistry::start().await;
    let data = random_bytes(12_345);
    let digest = registry.push_blob("heads", &data).await;

    let head = registry
        .send(Method::HEAD, &format!("/v2/heads/blobs/{digest}"))
        .await;
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(header(&head, "content-length").as_deref(), Some("12345"));
    assert_eq!(
        header(&head, "docker-content-digest").as_deref(),
        Some(digest.as_str())
    );
    assert!(head.bytes().await.unwrap().is_empty());

    let missing = registry
        .send(
            Method::HEAD,
            &format!("/v2/heads/blobs/{}", sha256(b"absent")),
        )
        .await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_blob_is_visible_only_in_the_repositories_it_was_pushed_to() {
    let registry = TestRegistry::start().await;
    let data = random_bytes(500);
    let digest = registry.push_blob("owner", &data).await;
    registry.push_blob("stranger", b"unrelated").await;

    let get = registry.get(&format!("/v2/stranger/blobs/{digest}")).await;
    let error = expect_error(get, 404, "BLOB_UNKNOWN").await;
    assert_eq!(error["detail"]["digest"], digest);
}

#[tokio::test]
async fn a_deleted_blob_is_no_longer_served() {
    let registry = TestRegistry::start().await;
    let data = random_bytes(500);
    let digest = registry.push_blob("doomed", &data).await;
    registry.push_blob("survivor", &data).await;

    let delete = registry
        .send(Method::DELETE, &format!("/v2/doomed/blobs/{digest}"))
        .await;
    assert_eq!(delete.status(), StatusCode::ACCEPTED);

    let get = registry.get(&format!("/v2/doomed/blobs/{digest}")).await;
    expect_error(get, 404, "BLOB_UNKNOWN").await;
    let again = registry
        .send(Method::DELETE, &format!("/v2/doomed/blobs/{digest}"))
        .await;
    expect_error(again, 404, "BLOB_UNKNOWN").await;

    // Another repository holding the same content is unaffected.
    let other = registry.get(&format!("/v2/survivor/blobs/{digest}")).await;
    assert_eq!(other.status(), StatusCode::OK);
    assert_eq!(sha256(&other.bytes().await.unwrap()), sha256(&data));
}
