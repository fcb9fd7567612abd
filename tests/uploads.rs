//! Blob uploads over raw HTTP, one test per way the spec lets a client push:
//! monolithic POST, POST then PUT, streamed PATCH, chunked PATCH with
//! `Content-Range`, cross-repository mounts, and what happens to a session on
//! cancel, on a wrong digest, under concurrency and across a restart.

mod common;

use std::sync::Arc;

use common::{expect_error, files_under, header, random_bytes, sha256, sha512, TestRegistry};
use reqwest::{Method, StatusCode};

#[tokio::test]
async fn monolithic_post_with_digest_creates_the_blob_in_one_request() {
    let registry = TestRegistry::start().await;
    let data = random_bytes(10_000);
    let digest = sha256(&data);

    let response = registry
        .request(
            Method::POST,
            &format!("/v2/mono/blobs/uploads/?digest={digest}"),
        )
        .header("content-type", "application/octet-stream")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        header(&response, "location").as_deref(),
        Some(format!("/v2/mono/blobs/{digest}").as_str())
    );
    assert_eq!(
        header(&response, "docker-content-digest").as_deref(),
        Some(digest.as_str())
    );

    let blob = registry.get(&format!("/v2/mono/blobs/{digest}")).await;
    assert_eq!(blob.status(), StatusCode::OK);
    assert_eq!(sha256(&blob.bytes().await.unwrap()), sha256(&data));
}

#[tokio::test]
async fn post_then_single_put_with_the_whole_blob() {
    let registry = TestRegistry::start().await;
    let data = random_bytes(5_000);
    let digest = sha256(&data);

    let start = registry
        .send(Method::POST, "/v2/twostep/blobs/uploads/")
        .await;
    assert_eq!(start.status(), StatusCode::ACCEPTED);
    assert!(header(&start, "docker-upload-uuid").is_some());
    let session = registry.location(&start);

    let put = registry
        .http
        .put(format!("{session}?digest={digest}"))
        .header("content-type", "application/octet-stream")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED);
    assert_eq!(
        header(&put, "location").as_deref(),
        Some(format!("/v2/twostep/blobs/{digest}").as_str())
    );
    assert_eq!(
        header(&put, "docker-content-digest").as_deref(),
        Some(digest.as_str())
    );
    let blob = registry.get(&format!("/v2/twostep/blobs/{digest}")).await;
    assert_eq!(sha256(&blob.bytes().await.unwrap()), sha256(&data));
}

#[tokio::test]
async fn streamed_patch_without_content_range_then_put_commits() {
    let registry = TestRegistry::start().await;
    let data = random_bytes(300_000);
    let digest = sha256(&data);
    let session = registry.start_upload("streamed").await;

    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        data.chunks(7_000).map(|c| Ok(c.to_vec())).collect();
    let patch = registry
        .http
        .patch(&session)
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(patch.status(), StatusCode::ACCEPTED);
    assert_eq!(
        header(&patch, "range").as_deref(),
        Some(format!("0-{}", data.len() - 1).as_str())
    );
    let session = registry.location(&patch);

    let put = registry
        .http
        .put(format!("{session}?digest={digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED);
    let blob = registry.get(&format!("/v2/streamed/blobs/{digest}")).await;
    assert_eq!(sha256(&blob.bytes().await.unwrap()), sha256(&data));
}

#[tokio::test]
async fn chunked_patches_with_content_range_append_in_order() {
    let registry = TestRegistry::start().await;
    let data = random_bytes(25_000);
    let digest = sha256(&data);
    let mut session = registry.start_upload("chunked").await;

    let mut offset = 0;
    for chunk in data.chunks(10_000) {
        let end = offset + chunk.len() - 1;
        let patch = registry
            .http
            .patch(&session)
            .header("content-type", "application/octet-stream")
            .header("content-range", format!("{offset}-{end}"))
            .body(chunk.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(patch.status(), StatusCode::ACCEPTED, "chunk at {offset}");
        assert_eq!(
            header(&patch, "range").as_deref(),
            Some(format!("0-{end}").as_str())
        );
        session = registry.location(&patch);
        offset = end + 1;
    }
    let put = registry
        .http
        .put(format!("{session}?digest={digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED);
    let blob = registry.get(&format!("/v2/chunked/blobs/{digest}")).await;
    assert_eq!(sha256(&blob.bytes().await.unwrap()), sha256(&data));

    // A committed session has ended.
    let status = registry.http.get(&session).send().await.unwrap();
    expect_error(status, 404, "BLOB_UPLOAD_UNKNOWN").await;
}

#[tokio::test]
async fn a_chunk_cut_off_mid_transfer_is_not_kept() {
    let registry = TestRegistry::start().await;
    let data = random_bytes(300_000);
    let digest = sha256(&data);
    let session = registry.start_upload("interrupted").await;
    let first = registry
        .http
        .patch(&session)
        .header("content-range", "0-99999")
        .body(data[..100_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);

    // The next chunk's connection fails after 64 KiB of its 200,000 bytes.
    let partial: Vec<Result<Vec<u8>, std::io::Error>> = vec![
        Ok(data[100_000..165_536].to_vec()),
        Err(std::io::Error::other("network cable pulled")),
    ];
    let cut = registry
        .http
        .patch(&session)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            partial,
        )))
        .send()
        .await;
    assert!(cut.is_err(), "the interrupted request fails on the client");

    // The retry of that chunk from byte 100,000 is accepted: the partial
    // bytes were cut back off the session.
    let retry = registry
        .http
        .patch(&session)
        .header("content-range", format!("100000-{}", data.len() - 1))
        .body(data[100_000..].to_vec())
        .send()
        .await
        .unwrap();
    let status = retry.status();
    let range = header(&retry, "range");
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "{}",
        retry.text().await.unwrap_or_default()
    );
    assert_eq!(range, Some(format!("0-{}", data.len() - 1)));
    let put = registry
        .http
        .put(format!("{session}?digest={digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn a_repeated_or_out_of_order_chunk_is_refused_with_416_and_the_session_survives() {
    let registry = TestRegistry::start().await;
    let data = random_bytes(300);
    let digest = sha256(&data);
    let session = registry.start_upload("ordering").await;
    let patch = |range: &str, body: &[u8]| {
        registry
            .http
            .patch(&session)
            .header("content-type", "application/octet-stream")
            .header("content-range", range.to_owned())
            .body(body.to_vec())
            .send()
    };

    let first = patch("0-99", &data[..100]).await.unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);

    // The same chunk again.
    let repeated = patch("0-99", &data[..100]).await.unwrap();
    assert_eq!(
        header(&repeated, "range").as_deref(),
        Some("0-99"),
        "a 416 tells the client how much arrived"
    );
    expect_error(repeated, 416, "BLOB_UPLOAD_INVALID").await;

    // A chunk that skips ahead.
    let skipping = patch("200-299", &data[200..]).await.unwrap();
    expect_error(skipping, 416, "BLOB_UPLOAD_INVALID").await;

    // Neither refused chunk was kept: the session still holds 100 bytes and
    // resumes from there.
    let status = registry.http.get(&session).send().await.unwrap();
    assert_eq!(status.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&status, "range").as_deref(), Some("0-99"));
    let rest = patch("100-299", &data[100..]).await.unwrap();
    assert_eq!(rest.status(), StatusCode::ACCEPTED);
    let put = registry
        .http
        .put(format!("{session}?digest={digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn upload_status_reports_the_received_range_and_location() {
    let registry = TestRegistry::start().await;
    let session = registry.start_upload("status").await;
    let patch = registry
        .http
        .patch(&session)
        .body(vec![7u8; 1234])
        .send()
        .await
        .unwrap();
    assert_eq!(patch.status(), StatusCode::ACCEPTED);

    let status = registry.http.get(&session).send().await.unwrap();
    assert_eq!(status.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&status, "range").as_deref(), Some("0-1233"));
    // The same session (with two replicas, the URL may name the other one).
    let path = |url: &str| url[url.find("/v2/").unwrap_or(0)..].to_owned();
    assert_eq!(path(&registry.location(&status)), path(&session));
    assert!(status.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_cancelled_upload_is_gone() {
    let registry = TestRegistry::start().await;
    let session = registry.start_upload("cancel").await;
    registry
        .http
        .patch(&session)
        .body(vec![1u8; 100])
        .send()
        .await
        .unwrap();

    let cancel = registry.http.delete(&session).send().await.unwrap();
    assert_eq!(cancel.status(), StatusCode::NO_CONTENT);

    let status = registry.http.get(&session).send().await.unwrap();
    expect_error(status, 404, "BLOB_UPLOAD_UNKNOWN").await;
    let patch = registry
        .http
        .patch(&session)
        .body(vec![1u8; 10])
        .send()
        .await
        .unwrap();
    expect_error(patch, 404, "BLOB_UPLOAD_UNKNOWN").await;
    let again = registry.http.delete(&session).send().await.unwrap();
    expect_error(again, 404, "BLOB_UPLOAD_UNKNOWN").await;
}

#[tokio::test]
async fn an_upload_session_belongs_to_its_repository() {
    let registry = TestRegistry::start().await;
    let session = registry.start_upload("owner").await;
    let foreign = session.replace("/v2/owner/", "/v2/intruder/");
    let status = registry.http.get(&foreign).send().await.unwrap();
    expect_error(status, 404, "BLOB_UPLOAD_UNKNOWN").await;
}

#[tokio::test]
async fn mount_from_a_repository_that_has_the_blob_is_201() {
    let registry = TestRegistry::start().await;
    let data = random_bytes(2_000);
    let digest = registry.push_blob("source/repo", &data).await;

    let mount = registry
        .send(
            Method::POST,
            &format!("/v2/target/repo/blobs/uploads/?mount={digest}&from=source/repo"),
        )
        .await;
    assert_eq!(mount.status(), StatusCode::CREATED);
    assert_eq!(
        header(&mount, "location").as_deref(),
        Some(format!("/v2/target/repo/blobs/{digest}").as_str())
    );
    assert_eq!(
        header(&mount, "docker-content-digest").as_deref(),
        Some(digest.as_str())
    );
    let blob = registry
        .get(&format!("/v2/target/repo/blobs/{digest}"))
        .await;
    assert_eq!(blob.status(), StatusCode::OK);
    assert_eq!(sha256(&blob.bytes().await.unwrap()), sha256(&data));
}

#[tokio::test]
async fn mount_of_a_blob_the_source_lacks_opens_an_upload_session_instead() {
    let registry = TestRegistry::start().await;
    // The blob exists in the store, but not in the repository named as the source.
    let data = random_bytes(2_000);
    let digest = registry.push_blob("elsewhere", &data).await;
    registry.push_blob("source", b"something else").await;

    for from in ["source", "does-not-exist"] {
        let mount = registry
            .send(
                Method::POST,
                &format!("/v2/target/blobs/uploads/?mount={digest}&from={from}"),
            )
            .await;
        assert_eq!(mount.status(), StatusCode::ACCEPTED, "mount from {from}");
        let session = registry.location(&mount);
        assert!(
            session.contains("/v2/target/blobs/uploads/"),
            "Location is an upload session: {session}"
        );
        let status = registry.http.get(&session).send().await.unwrap();
        assert_eq!(status.status(), StatusCode::NO_CONTENT);
    }
    let blob = registry.get(&format!("/v2/target/blobs/{digest}")).await;
    expect_error(blob, 404, "BLOB_UNKNOWN").await;
}

#[tokio::test]
async fn a_wrong_digest_on_commit_is_refused_and_leaves_nothing_behind() {
    let registry = TestRegistry::start().await;
    let data = random_bytes(4_096);
    let actual = sha256(&data);
    let claimed = sha256(b"not these bytes");

    let session = registry.start_upload("wrong").await;
    let patch = registry
        .http
        .patch(&session)
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(patch.status(), StatusCode::ACCEPTED);
    let put = registry
        .http
        .put(format!("{session}?digest={claimed}"))
        .send()
        .await
        .unwrap();
    expect_error(put, 400, "DIGEST_INVALID").await;

    // The same through a monolithic POST.
    let post = registry
        .request(
            Method::POST,
            &format!("/v2/wrong/blobs/uploads/?digest={claimed}"),
        )
        .body(data.clone())
        .send()
        .await
        .unwrap();
    expect_error(post, 400, "DIGEST_INVALID").await;

    for digest in [&claimed, &actual] {
        let blob = registry.get(&format!("/v2/wrong/blobs/{digest}")).await;
        expect_error(blob, 404, "BLOB_UNKNOWN").await;
    }
    // The rest looks at the files of the filesystem backend.
    if common::s3_backend() {
        return;
    }
    let layout = registry.root().join("docker/registry/v2");
    assert_eq!(
        files_under(&layout),
        Vec::<std::path::PathBuf>::new(),
        "a refused upload leaves no file in the storage layout"
    );
    let data_files: Vec<_> = files_under(registry.root())
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "data"))
        .collect();
    assert!(data_files.is_empty(), "stray data files: {data_files:?}");
}

#[tokio::test]
async fn a_sha512_blob_is_accepted_and_served_under_its_sha512_digest() {
    let registry = TestRegistry::start().await;
    let data = random_bytes(70_000);
    let digest = sha512(&data);

    registry.push_blob_as("sha512", &data, &digest).await;
    let blob = registry.get(&format!("/v2/sha512/blobs/{digest}")).await;
    assert_eq!(blob.status(), StatusCode::OK);
    assert_eq!(
        header(&blob, "docker-content-digest").as_deref(),
        Some(digest.as_str())
    );
    assert_eq!(sha256(&blob.bytes().await.unwrap()), sha256(&data));

    // And through a session with a PATCH and a commit.
    let other = random_bytes(1_000);
    let other_digest = sha512(&other);
    let session = registry.start_upload("sha512").await;
    registry
        .http
        .patch(&session)
        .body(other.clone())
        .send()
        .await
        .unwrap();
    let put = registry
        .http
        .put(format!("{session}?digest={other_digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED);
    let blob = registry
        .get(&format!("/v2/sha512/blobs/{other_digest}"))
        .await;
    assert_eq!(sha256(&blob.bytes().await.unwrap()), sha256(&other));
}

#[tokio::test]
async fn an_empty_blob_can_be_pushed() {
    let registry = TestRegistry::start().await;
    let digest = registry.push_blob("empty", b"").await;
    let blob = registry.get(&format!("/v2/empty/blobs/{digest}")).await;
    assert_eq!(blob.status(), StatusCode::OK);
    assert_eq!(header(&blob, "content-length").as_deref(), Some("0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_pushing_the_same_blob_concurrently_all_succeed() {
    let registry = Arc::new(TestRegistry::start().await);
    let data = Arc::new(random_bytes(2 * 1024 * 1024));
    let digest = sha256(&data);
    let clients = 6;
    let barrier = Arc::new(tokio::sync::Barrier::new(clients));

    let mut pushes = Vec::new();
    for i in 0..clients {
        let (registry, data, digest, barrier) = (
            Arc::clone(&registry),
            Arc::clone(&data),
            digest.clone(),
            Arc::clone(&barrier),
        );
        pushes.push(tokio::spawn(async move {
            // Separate clients: separate connections.
            let http = reqwest::Client::new();
            let repository = if i % 2 == 0 {
                "same/blob"
            } else {
                "other/repo"
            };
            let start = http
                .post(registry.url(&format!("/v2/{repository}/blobs/uploads/")))
                .send()
                .await
                .unwrap();
            assert_eq!(start.status(), StatusCode::ACCEPTED);
            let session = registry.location(&start);
            let (head, tail) = data.split_at(data.len() / 2);
            let patch = http
                .patch(&session)
                .body(head.to_vec())
                .send()
                .await
                .unwrap();
            assert_eq!(patch.status(), StatusCode::ACCEPTED);
            let session = registry.location(&patch);
            barrier.wait().await;
            let put = http
                .put(format!("{session}?digest={digest}"))
                .body(tail.to_vec())
                .send()
                .await
                .unwrap();
            let status = put.status();
            let body = put.text().await.unwrap();
            assert_eq!(status, StatusCode::CREATED, "client {i}: {body}");
        }));
    }
    for push in pushes {
        push.await.expect("push task completes");
    }
    for repository in ["same/blob", "other/repo"] {
        let blob = registry
            .get(&format!("/v2/{repository}/blobs/{digest}"))
            .await;
        assert_eq!(blob.status(), StatusCode::OK);
        assert_eq!(sha256(&blob.bytes().await.unwrap()), digest);
    }
}

#[tokio::test]
async fn an_upload_session_survives_a_registry_restart() {
    let mut registry = TestRegistry::start().await;
    let data = random_bytes(200_000);
    let digest = sha256(&data);
    let (first, rest) = data.split_at(80_000);

    let session = registry.start_upload("durable").await;
    let patch = registry
        .http
        .patch(&session)
        .header("content-range", format!("0-{}", first.len() - 1))
        .body(first.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(patch.status(), StatusCode::ACCEPTED);
    let path = session
        .find("/v2/")
        .map(|i| session[i..].to_owned())
        .expect("session URL names the registry");

    registry.restart().await;
    let session = registry.url(&path);

    let status = registry.http.get(&session).send().await.unwrap();
    assert_eq!(status.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        header(&status, "range").as_deref(),
        Some(format!("0-{}", first.len() - 1).as_str())
    );
    let patch = registry
        .http
        .patch(&session)
        .header(
            "content-range",
            format!("{}-{}", first.len(), data.len() - 1),
        )
        .body(rest.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(patch.status(), StatusCode::ACCEPTED);
    let put = registry
        .http
        .put(format!("{session}?digest={digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED);
    let blob = registry.get(&format!("/v2/durable/blobs/{digest}")).await;
    assert_eq!(sha256(&blob.bytes().await.unwrap()), digest);
}

#[tokio::test]
async fn a_one_shot_sha512_push_is_served_whole_and_in_ranges_across_read_chunks() {
    let registry = TestRegistry::start().await;
    // Larger than two of the server's read chunks (256 KiB), not a multiple of one.
    let data = random_bytes(700_001);
    let digest = sha512(&data);
    let post = registry
        .request(
            Method::POST,
            &format!("/v2/oneshot/blobs/uploads/?digest={digest}"),
        )
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), StatusCode::CREATED);
    // The staging files and the page cache are the filesystem backend's;
    // with S3 only the responses are checked.
    let layout = registry.root().join("docker/registry/v2");
    if !common::s3_backend() {
        assert!(
            files_under(&layout.join("_tmp")).is_empty(),
            "a one-shot push leaves no staging file"
        );
        assert!(
            !layout.join("repositories/oneshot/_uploads").exists(),
            "a one-shot push makes no session directory"
        );
    }

    let whole = registry.get(&format!("/v2/oneshot/blobs/{digest}")).await;
    assert_eq!(whole.status(), StatusCode::OK);
    assert_eq!(header(&whole, "content-length"), Some("700001".to_string()));
    assert!(whole.bytes().await.unwrap() == data);

    // Out of the page cache, the chunks are read on the blocking pool instead.
    if !common::s3_backend() {
        let hex = digest.trim_start_matches("sha512:");
        let stored = layout.join(format!("blobs/sha512/{}/{hex}/data", &hex[..2]));
        let file = std::fs::File::open(&stored).unwrap();
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        let cold = registry.get(&format!("/v2/oneshot/blobs/{digest}")).await;
        assert_eq!(cold.status(), StatusCode::OK);
        assert!(cold.bytes().await.unwrap() == data, "read from disk");
    }

    for (range, start, end) in [
        ("bytes=262000-530000", 262_000usize, 530_000usize),
        ("bytes=524288-", 524_288, 700_000),
        ("bytes=-1000", 699_001, 700_000),
        ("bytes=0-0", 0, 0),
    ] {
        let part = registry
            .request(Method::GET, &format!("/v2/oneshot/blobs/{digest}"))
            .header("range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            header(&part, "content-range"),
            Some(format!("bytes {start}-{end}/700001")),
            "{range}"
        );
        assert!(
            part.bytes().await.unwrap() == data[start..=end],
            "{range}: wrong bytes"
        );
    }
}
