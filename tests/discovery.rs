//! Finding content: the version check, tag lists and the catalog with `n`/`last`
//! pagination and `Link` headers, and the referrers API.

mod common;

use common::{expect_error, header, sha256, Image, TestRegistry, OCI_INDEX, OCI_MANIFEST};
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test]
async fn the_api_version_check_answers_200() {
    let registry = TestRegistry::start().await;
    let response = registry.get("/v2/").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "docker-distribution-api-version").as_deref(),
        Some("registry/2.0")
    );
}

/// Follows `Link: <...>; rel="next"` from `first` and returns every page's items.
async fn follow_pages(registry: &TestRegistry, first: &str, key: &str) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut next = Some(first.to_owned());
    while let Some(path) = next.take() {
        let response = registry.get(&path).await;
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        next = header(&response, "link").map(|link| {
            let (target, rel) = link.split_once(';').expect("Link has a rel");
            assert_eq!(rel.trim(), "rel=\"next\"");
            target
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_owned()
        });
        let body: Value = response.json().await.unwrap();
        let items = body[key]
            .as_array()
            .unwrap_or_else(|| panic!("{key} is an array: {body}"))
            .iter()
            .map(|t| t.as_str().unwrap().to_owned())
            .collect();
        pages.push(items);
        assert!(pages.len() < 20, "pagination does not end");
    }
    pages
}

#[tokio::test]
async fn tags_are_listed_in_order_and_paginated_with_n_last_and_link() {
    let registry = TestRegistry::start().await;
    let image = Image::random();
    let tags = ["alpha", "beta", "gamma", "delta", "epsilon"];
    for tag in tags {
        registry.push_image("paged", tag, &image).await;
    }
    let mut sorted = tags.map(str::to_owned).to_vec();
    sorted.sort();

    let all: Value = registry
        .get("/v2/paged/tags/list")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(all, json!({ "name": "paged", "tags": sorted }));

    let first = registry.get("/v2/paged/tags/list?n=2").await;
    assert_eq!(
        header(&first, "link").as_deref(),
        Some("</v2/paged/tags/list?n=2&last=beta>; rel=\"next\"")
    );
    let pages = follow_pages(&registry, "/v2/paged/tags/list?n=2", "tags").await;
    assert_eq!(
        pages,
        vec![
            vec!["alpha", "beta"],
            vec!["delta", "epsilon"],
            vec!["gamma"],
        ]
    );

    let after: Value = registry
        .get("/v2/paged/tags/list?last=delta")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(after["tags"], json!(["epsilon", "gamma"]));
    let exact = registry.get("/v2/paged/tags/list?n=5").await;
    assert_eq!(
        header(&exact, "link"),
        None,
        "no next page after the last tag"
    );
}

#[tokio::test]
async fn tags_of_an_unknown_repository_are_name_unknown() {
    let registry = TestRegistry::start().await;
    let response = registry.get("/v2/nobody/here/tags/list").await;
    expect_error(response, 404, "NAME_UNKNOWN").await;
}

#[tokio::test]
async fn the_catalog_lists_repositories_and_paginates() {
    let registry = TestRegistry::start().await;
    let image = Image::random();
    let names = ["zeta", "alpha/one", "alpha/two", "mid", "library/postgres"];
    for name in names {
        registry.push_image(name, "latest", &image).await;
    }
    let mut sorted = names.map(str::to_owned).to_vec();
    sorted.sort();

    let all: Value = registry.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(all, json!({ "repositories": sorted }));

    let first = registry.get("/v2/_catalog?n=2").await;
    assert_eq!(
        header(&first, "link").as_deref(),
        Some("</v2/_catalog?n=2&last=alpha%2Ftwo>; rel=\"next\"")
    );
    let pages = follow_pages(&registry, "/v2/_catalog?n=2", "repositories").await;
    assert_eq!(pages.concat(), sorted);
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![2, 2, 1]
    );
}

/// Pushes an artifact whose subject is `subject`, and returns it.
async fn push_referrer(
    registry: &TestRegistry,
    repository: &str,
    subject: &Image,
    artifact_type: &str,
) -> Image {
    let artifact = Image::with_fields(json!({
        "artifactType": artifact_type,
        "subject": subject.descriptor(),
        "annotations": { "org.example.kind": artifact_type },
    }));
    registry
        .push_image(repository, &artifact.digest, &artifact)
        .await;
    artifact
}

#[tokio::test]
async fn referrers_list_the_manifests_whose_subject_is_the_digest() {
    let registry = TestRegistry::start().await;
    let subject = Image::random();
    registry.push_image("refs", "v1", &subject).await;
    let signature = push_referrer(&registry, "refs", &subject, "application/vnd.example.sig").await;
    let sbom = push_referrer(&registry, "refs", &subject, "application/vnd.example.sbom").await;
    // A referrer of something else is not listed.
    push_referrer(&registry, "refs", &signature, "application/vnd.example.sig").await;

    let response = registry
        .get(&format!("/v2/refs/referrers/{}", subject.digest))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "content-type").as_deref(),
        Some(OCI_INDEX)
    );
    assert_eq!(header(&response, "oci-filters-applied"), None);
    let index: Value = response.json().await.unwrap();
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], OCI_INDEX);
    let mut expected = vec![
        json!({
            "mediaType": OCI_MANIFEST,
            "digest": signature.digest,
            "size": signature.manifest.len(),
            "artifactType": "application/vnd.example.sig",
            "annotations": { "org.example.kind": "application/vnd.example.sig" },
        }),
        json!({
            "mediaType": OCI_MANIFEST,
            "digest": sbom.digest,
            "size": sbom.manifest.len(),
            "artifactType": "application/vnd.example.sbom",
            "annotations": { "org.example.kind": "application/vnd.example.sbom" },
        }),
    ];
    let mut listed = index["manifests"].as_array().cloned().unwrap_or_default();
    let by_digest = |v: &Value| v["digest"].as_str().unwrap_or("").to_owned();
    expected.sort_by_key(by_digest);
    listed.sort_by_key(by_digest);
    assert_eq!(listed, expected);
}

#[tokio::test]
async fn referrers_filtered_by_artifact_type_say_the_filter_was_applied() {
    let registry = TestRegistry::start().await;
    let subject = Image::random();
    registry.push_image("filtered", "v1", &subject).await;
    let sbom = push_referrer(
        &registry,
        "filtered",
        &subject,
        "application/vnd.example.sbom+json",
    )
    .await;
    push_referrer(
        &registry,
        "filtered",
        &subject,
        "application/vnd.example.sig",
    )
    .await;

    let encoded = "application%2Fvnd.example.sbom%2Bjson";
    let response = registry
        .get(&format!(
            "/v2/filtered/referrers/{}?artifactType={encoded}",
            subject.digest
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "oci-filters-applied").as_deref(),
        Some("artifactType")
    );
    let index: Value = response.json().await.unwrap();
    let digests: Vec<_> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(digests, vec![sbom.digest]);
}

#[tokio::test]
async fn referrers_of_an_unknown_digest_are_an_empty_index() {
    let registry = TestRegistry::start().await;
    registry.push_image("lonely", "v1", &Image::random()).await;
    let response = registry
        .get(&format!(
            "/v2/lonely/referrers/{}",
            sha256(b"nothing refers to me")
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "content-type").as_deref(),
        Some(OCI_INDEX)
    );
    let index: Value = response.json().await.unwrap();
    assert_eq!(
        index,
        json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [] })
    );

    // The spec forbids a 404 from the referrers API, even for an unknown repository.
    let response = registry
        .get(&format!("/v2/no/such/repo/referrers/{}", sha256(b"x")))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_deleted_referrer_is_no_longer_listed() {
    let registry = TestRegistry::start().await;
    let subject = Image::random();
    registry.push_image("unref", "v1", &subject).await;
    let signature =
        push_referrer(&registry, "unref", &subject, "application/vnd.example.sig").await;

    let delete = registry
        .request(
            reqwest::Method::DELETE,
            &format!("/v2/unref/manifests/{}", signature.digest),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), StatusCode::ACCEPTED);
    let index: Value = registry
        .get(&format!("/v2/unref/referrers/{}", subject.digest))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(index["manifests"], json!([]));
}
