//! `portcullis fsck` on a store with a corrupt blob, a dangling link and a
//! dangling tag: reported, repaired, then clean.

mod common;

use std::process::Command;

use common::{Image, TestRegistry};

fn fsck(root: &std::path::Path, repair: bool) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    command.arg("fsck").env("PORTCULLIS_STORAGE__ROOT", root);
    if repair {
        command.arg("--repair");
    }
    let output = command.output().expect("portcullis fsck runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test]
async fn fsck_finds_corruption_repairs_it_and_then_finds_nothing() {
    let mut registry = TestRegistry::start().await;
    let image = Image::random();
    registry.push_image("team/app", "v1", &image).await;
    let other = Image::random();
    registry.push_image("team/other", "v1", &other).await;
    registry.stop().await;
    let v2 = registry.root().join("docker/registry/v2");

    let (ok, text) = fsck(registry.root(), false);
    assert!(ok, "a fresh store is clean: {text}");
    assert!(
        text.contains("8 blobs and 2 manifests checked, 0 findings"),
        "{text}"
    );

    // Bit rot in one layer of team/app.
    let layer = common::sha256(&image.layers[0]);
    let hex = layer.trim_start_matches("sha256:");
    let data = v2.join(format!("blobs/sha256/{}/{hex}/data", &hex[..2]));
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();
    // team/other's manifest bytes vanish: its tag and revision now dangle.
    let manifest_hex = other.digest.trim_start_matches("sha256:").to_owned();
    std::fs::remove_dir_all(v2.join(format!(
        "blobs/sha256/{}/{manifest_hex}",
        &manifest_hex[..2]
    )))
    .unwrap();

    let (ok, text) = fsck(registry.root(), false);
    assert!(!ok, "problems make fsck fail: {text}");
    assert!(
        text.contains(&format!("blob {layer}: content hashes to")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "team/other: manifest {}: its bytes are not stored",
            other.digest
        )),
        "{text}"
    );
    assert!(text.contains("team/other: tag v1 points at"), "{text}");

    let (_, repaired) = fsck(registry.root(), true);
    assert!(repaired.contains("repaired: blob"), "{repaired}");
    let quarantined = v2.join(format!("_quarantine/sha256-{hex}"));
    assert!(
        quarantined.is_file(),
        "the corrupt blob is kept in quarantine"
    );

    // What could not be repaired (a manifest whose blob is gone) is still
    // reported; everything repairable is gone.
    let (clean, after) = fsck(registry.root(), false);
    assert!(
        !clean,
        "a manifest whose bytes are gone cannot be repaired: {after}"
    );
    assert!(after.contains("its bytes are not stored"), "{after}");
    assert!(!after.contains("content hashes to"), "{after}");
    assert!(!after.contains("tag v1 points at"), "{after}");
}
