//! Push and pull with a real OCI client (`oci-client`), as a tool such as a
//! Wasm or Helm pusher would: images, image indexes, blobs and tag lists.

mod common;

use common::{sha256, TestRegistry, OCI_INDEX, OCI_MANIFEST};
use oci_client::client::{Config, ImageLayer};
use oci_client::manifest::{ImageIndexEntry, OciImageIndex, OciManifest, Platform};
use oci_client::secrets::RegistryAuth;
use serde_json::json;

fn sample_image(seed: &str) -> (Config, Vec<ImageLayer>) {
    let config = Config::oci_v1(
        serde_json::to_vec(&json!({ "architecture": "amd64", "os": "linux", "seed": seed }))
            .expect("config serialises"),
        None,
    );
    let layers = vec![
        ImageLayer::oci_v1(common::random_bytes(64 * 1024), None),
        ImageLayer::oci_v1(format!("second layer of {seed}").into_bytes(), None),
    ];
    (config, layers)
}

/// Layer digests in a stable order: pulls return layers as they complete.
fn layer_digests(layers: &[ImageLayer]) -> Vec<String> {
    let mut digests: Vec<_> = layers.iter().map(ImageLayer::sha256_digest).collect();
    digests.sort();
    digests
}

#[tokio::test]
async fn push_an_image_with_oci_client_and_pull_it_back_identical() {
    let registry = TestRegistry::start().await;
    let client = registry.oci_client();
    let reference = registry.reference("team/app", "v1");
    let (config, layers) = sample_image("a");

    client
        .push(
            &reference,
            &layers,
            config.clone(),
            &RegistryAuth::Anonymous,
            None,
        )
        .await
        .expect("push succeeds");

    let pulled = client
        .pull(
            &reference,
            &RegistryAuth::Anonymous,
            vec![oci_client::manifest::IMAGE_LAYER_MEDIA_TYPE],
        )
        .await
        .expect("pull succeeds");
    assert_eq!(pulled.config.data, config.data);
    // oci-client fetches layers concurrently and returns them as they complete.
    assert_eq!(layer_digests(&pulled.layers), layer_digests(&layers));
    let manifest = pulled.manifest.expect("pull returns the manifest");
    assert_eq!(manifest.config.digest, config.sha256_digest());
    let layer_digests: Vec<_> = manifest.layers.iter().map(|l| l.digest.clone()).collect();
    assert_eq!(
        layer_digests,
        vec![layers[0].sha256_digest(), layers[1].sha256_digest()]
    );

    // The digest the client reports is the digest of the bytes the registry serves.
    let (raw, digest) = client
        .pull_manifest_raw(&reference, &RegistryAuth::Anonymous, &[OCI_MANIFEST])
        .await
        .expect("raw manifest pull succeeds");
    assert_eq!(digest, sha256(&raw));
    assert_eq!(pulled.digest.as_deref(), Some(digest.as_str()));
}

#[tokio::test]
async fn pull_a_manifest_by_tag_and_digest_then_each_blob() {
    let registry = TestRegistry::start().await;
    let client = registry.oci_client();
    let reference = registry.reference("blobs/one-by-one", "latest");
    let (config, layers) = sample_image("b");
    client
        .push(
            &reference,
            &layers,
            config.clone(),
            &RegistryAuth::Anonymous,
            None,
        )
        .await
        .expect("push succeeds");

    let (manifest, digest) = client
        .pull_image_manifest(&reference, &RegistryAuth::Anonymous)
        .await
        .expect("manifest pull by tag succeeds");
    let by_digest = registry.reference_by_digest("blobs/one-by-one", &digest);
    let (again, digest_again) = client
        .pull_image_manifest(&by_digest, &RegistryAuth::Anonymous)
        .await
        .expect("manifest pull by digest succeeds");
    assert_eq!(digest_again, digest);
    assert_eq!(again.layers.len(), manifest.layers.len());

    let mut config_bytes = Vec::new();
    client
        .pull_blob(&reference, &manifest.config, &mut config_bytes)
        .await
        .expect("config blob pull succeeds");
    assert_eq!(config_bytes, config.data.to_vec());
    for (descriptor, layer) in manifest.layers.iter().zip(&layers) {
        let mut bytes = Vec::new();
        client
            .pull_blob(&reference, descriptor, &mut bytes)
            .await
            .expect("layer pull succeeds");
        assert_eq!(sha256(&bytes), layer.sha256_digest());
        assert!(client
            .blob_exists(&reference, &descriptor.digest)
            .await
            .expect("HEAD succeeds"));
    }
    assert!(!client
        .blob_exists(&reference, &sha256(b"never pushed"))
        .await
        .expect("HEAD succeeds"));
}

#[tokio::test]
async fn push_an_index_of_two_platform_images_and_pull_it_back() {
    let registry = TestRegistry::start().await;
    let client = registry.oci_client();
    let auth = RegistryAuth::Anonymous;
    let mut entries = Vec::new();
    let mut amd64_layers = Vec::new();
    for (arch, tag) in [("amd64", "amd64"), ("arm64", "arm64")] {
        let reference = registry.reference("multi/arch", tag);
        let (config, layers) = sample_image(arch);
        client
            .push(&reference, &layers, config, &auth, None)
            .await
            .expect("platform image push succeeds");
        let (raw, digest) = client
            .pull_manifest_raw(&reference, &auth, &[OCI_MANIFEST])
            .await
            .expect("platform manifest pull succeeds");
        let platform: Platform =
            serde_json::from_value(json!({ "architecture": arch, "os": "linux" }))
                .expect("platform parses");
        entries.push(ImageIndexEntry {
            media_type: OCI_MANIFEST.into(),
            digest,
            size: raw.len() as i64,
            platform: Some(platform),
            annotations: None,
            artifact_type: None,
        });
        if arch == "amd64" {
            amd64_layers = layers;
        }
    }
    let index = OciImageIndex {
        schema_version: 2,
        media_type: Some(OCI_INDEX.into()),
        manifests: entries.clone(),
        artifact_type: None,
        annotations: None,
    };
    let index_ref = registry.reference("multi/arch", "latest");
    client
        .push_manifest_list(&index_ref, &auth, index)
        .await
        .expect("index push succeeds");

    let (pulled, digest) = client
        .pull_manifest(&index_ref, &auth)
        .await
        .expect("index pull succeeds");
    let OciManifest::ImageIndex(pulled) = pulled else {
        panic!("the tag names an index, got an image manifest");
    };
    let digests: Vec<_> = pulled.manifests.iter().map(|m| m.digest.clone()).collect();
    let expected: Vec<_> = entries.iter().map(|m| m.digest.clone()).collect();
    assert_eq!(digests, expected);
    let (raw, _) = client
        .pull_manifest_raw(&index_ref, &auth, &[OCI_INDEX])
        .await
        .expect("raw index pull succeeds");
    assert_eq!(digest, sha256(&raw));

    // Pulling the index as an image resolves the linux/amd64 entry.
    let image = client
        .pull(
            &index_ref,
            &auth,
            vec![oci_client::manifest::IMAGE_LAYER_MEDIA_TYPE],
        )
        .await
        .expect("pull through the index succeeds");
    assert_eq!(image.digest.as_deref(), Some(entries[0].digest.as_str()));
    assert_eq!(layer_digests(&image.layers), layer_digests(&amd64_layers));
}

#[tokio::test]
async fn list_tags_with_oci_client() {
    let registry = TestRegistry::start().await;
    let client = registry.oci_client();
    let (config, layers) = sample_image("tags");
    for tag in ["v2", "v1", "latest"] {
        client
            .push(
                &registry.reference("tagged/app", tag),
                &layers,
                config.clone(),
                &RegistryAuth::Anonymous,
                None,
            )
            .await
            .expect("push succeeds");
    }
    let reference = registry.reference("tagged/app", "latest");
    let all = client
        .list_tags(&reference, &RegistryAuth::Anonymous, None, None)
        .await
        .expect("tag list succeeds");
    assert_eq!(all.name, "tagged/app");
    assert_eq!(all.tags, vec!["latest", "v1", "v2"]);
    let page = client
        .list_tags(
            &reference,
            &RegistryAuth::Anonymous,
            Some(1),
            Some("latest"),
        )
        .await
        .expect("paginated tag list succeeds");
    assert_eq!(page.tags, vec!["v1"]);
}

#[tokio::test]
async fn a_client_speaking_cleartext_http2_can_push_and_pull() {
    let registry = TestRegistry::start().await;
    let http2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("HTTP/2 client");
    let data = common::random_bytes(100_000);
    let digest = sha256(&data);
    let push = http2
        .post(registry.url(&format!("/v2/h2/blobs/uploads/?digest={digest}")))
        .body(data.clone())
        .send()
        .await
        .expect("HTTP/2 POST reaches the registry");
    assert_eq!(push.version(), reqwest::Version::HTTP_2);
    assert_eq!(push.status(), reqwest::StatusCode::CREATED);
    let pull = http2
        .get(registry.url(&format!("/v2/h2/blobs/{digest}")))
        .send()
        .await
        .expect("HTTP/2 GET reaches the registry");
    assert_eq!(pull.status(), reqwest::StatusCode::OK);
    assert_eq!(sha256(&pull.bytes().await.unwrap()), digest);
}
