//! The example policies in other languages (examples/policies: C, Python,
//! JavaScript), built from source by `examples/policies/build-all.sh`, loaded
//! into the real server together and deciding real pushes.

mod common;

use std::path::PathBuf;

use common::{Image, TestRegistry};
use portcullis::config::PolicyEntry;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn built(example: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples/policies")
        .join(example)
        .join("build")
        .join(format!("{example}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: build the examples first with examples/policies/build-all.sh \
         (toolchains: examples/policies/install-toolchains.sh)",
        path.display()
    );
    path.display().to_string()
}

fn scoped(name: &str, example: &str, repositories: &str, settings: Value) -> PolicyEntry {
    PolicyEntry {
        name: name.into(),
        module: built(example),
        settings,
        actions: None,
        repositories: Some(vec![repositories.into()]),
    }
}

async fn push(
    registry: &TestRegistry,
    repository: &str,
    tag: &str,
    image: &Image,
) -> (StatusCode, String) {
    let (status, body) = registry.push_image_as(None, repository, tag, image).await;
    let message = body["errors"][0]["message"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    (status, message)
}

#[tokio::test]
async fn c_python_and_javascript_policies_decide_pushes_in_the_real_server() {
    // Compiling the 12-18 MB Python and JS components is slow; share the cache.
    let cache = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-policy-cache");
    let registry = TestRegistry::start_with(move |c| {
        c.policy.cache_dir = Some(cache);
        c.policy.memory = bytesize::ByteSize::mib(64);
        c.policy.fuel = 50_000_000;
        c.policy.chain = vec![
            scoped(
                "max-size",
                "c-max-size",
                "c/**",
                json!({ "max_bytes": 1000 }),
            ),
            scoped(
                "annotations",
                "python-annotations",
                "py/**",
                json!({ "required": ["org.opencontainers.image.source"] }),
            ),
            scoped(
                "no-latest",
                "js-deny-latest",
                "js/**",
                json!({ "forbidden_tags": ["latest"] }),
            ),
        ];
    })
    .await;

    // C: manifest size.
    let small = Image::random();
    let big = Image::with_fields(json!({ "annotations": { "padding": "x".repeat(2000) } }));
    assert_eq!(
        push(&registry, "c/app", "1", &small).await.0,
        StatusCode::CREATED
    );
    let (status, message) = push(&registry, "c/app", "2", &big).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        message.starts_with("denied by policy max-size: "),
        "{message}"
    );
    assert!(
        message.contains("over the limit of 1000 bytes"),
        "{message}"
    );

    // Python: required annotation.
    let annotated = Image::with_fields(json!({
        "annotations": { "org.opencontainers.image.source": "https://example.com/app" }
    }));
    assert_eq!(
        push(&registry, "py/app", "1", &annotated).await.0,
        StatusCode::CREATED
    );
    let (status, message) = push(&registry, "py/app", "2", &small).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        message.contains("org.opencontainers.image.source"),
        "{message}"
    );

    // JavaScript: no `latest`.
    assert_eq!(
        push(&registry, "js/app", "v1", &small).await.0,
        StatusCode::CREATED
    );
    let (status, message) = push(&registry, "js/app", "latest", &small).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        message.starts_with("denied by policy no-latest: "),
        "{message}"
    );

    // Each policy keeps to its scope: `latest` is fine outside js/.
    assert_eq!(
        push(&registry, "c/app", "latest", &small).await.0,
        StatusCode::CREATED
    );
}
