//! The example policies in other languages (examples/policies: C, Python,
//! JavaScript), built from source by `examples/policies/build-all.sh`, loaded
//! into the real server together and deciding real pushes.

mod common;

use std::path::PathBuf;

use common::{random_bytes, Image, TestRegistry};
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
        mode: Default::default(),
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
                json!({ "max_bytes": 10000 }),
            ),
            scoped("non-root", "python-non-root", "py/**", json!({})),
            scoped(
                "require-source",
                "js-require-source",
                "js/**",
                json!({ "prefixes": ["https://github.com/acme/"] }),
            ),
        ];
    })
    .await;

    // C: the image's size, from its config and layers.
    let small = Image::random();
    let big = Image::from_parts(
        small.config.clone(),
        vec![random_bytes(8000), random_bytes(4000)],
        json!({}),
    );
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
        message.contains("over the limit of 10000 bytes"),
        "{message}"
    );

    // Python: the config's user, read from the store.
    let config = serde_json::to_vec(&json!({
        "architecture": "arm64", "os": "linux",
        "config": { "User": "65532:65532" },
        "rootfs": { "type": "layers", "diff_ids": [] },
    }))
    .expect("config");
    let non_root = Image::from_parts(config, vec![random_bytes(100)], json!({}));
    assert_eq!(
        push(&registry, "py/app", "1", &non_root).await.0,
        StatusCode::CREATED
    );
    let (status, message) = push(&registry, "py/app", "2", &small).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(message.contains("runs as root"), "{message}");

    // JavaScript: a source label or annotation from an allowed prefix.
    let sourced = Image::with_fields(json!({
        "annotations": { "org.opencontainers.image.source": "https://github.com/acme/app" }
    }));
    assert_eq!(
        push(&registry, "js/app", "v1", &sourced).await.0,
        StatusCode::CREATED
    );
    let (status, message) = push(&registry, "js/app", "v2", &small).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        message.starts_with("denied by policy require-source: "),
        "{message}"
    );
    assert!(
        message.contains("org.opencontainers.image.source"),
        "{message}"
    );

    // Each policy keeps to its scope: `latest` is fine outside js/.
    assert_eq!(
        push(&registry, "c/app", "latest", &small).await.0,
        StatusCode::CREATED
    );
}
