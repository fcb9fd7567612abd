//! A full storage volume: pushes that do not fit fail with 507 and the spec's
//! error body, leave nothing behind (no blob, no upload data, no manifest, no
//! tag), existing content keeps being served byte for byte, and once space is
//! freed the same push goes through.
//!
//! Each test mounts its own small tmpfs as the storage root, so "full" is real
//! ENOSPC from the kernel and not a simulation. Mounting needs root: CI runs the
//! suite as root, and elsewhere these tests fail saying so.

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{expect_error, header, random_bytes, sha256, Image, TestRegistry, OCI_MANIFEST};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tempfile::TempDir;

const PAGE: u64 = 4096;
const MIB: usize = 1024 * 1024;

/// A tmpfs of `size` bytes mounted on a fresh temporary directory, unmounted on drop.
struct Tmpfs {
    mount: PathBuf,
    _dir: TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "tests/disk_full.rs mounts a tmpfs to get a really full disk and must run as root \
             (CI does); run `sudo -E cargo test --test disk_full`"
        );
        let dir = tempfile::tempdir().expect("create a mount point");
        let mount = dir.path().join("volume");
        std::fs::create_dir(&mount).expect("create the mount point");
        let output = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(&mount)
            .output()
            .expect("run mount(8)");
        assert!(
            output.status.success(),
            "cannot mount a {size} tmpfs on {} (the test needs root and mount(8)): {}",
            mount.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        Self { mount, _dir: dir }
    }

    fn path(&self) -> &Path {
        &self.mount
    }

    /// Bytes an unprivileged write could still use.
    fn free(&self) -> u64 {
        let stat = rustix::fs::statvfs(&self.mount).expect("statvfs the tmpfs");
        stat.f_bavail * stat.f_frsize
    }

    /// Fills the volume with a file outside the registry's layout until the
    /// kernel says ENOSPC, then gives back `leave` bytes (whole pages).
    fn fill_leaving(&self, leave: u64) -> Filler {
        let path = self.mount.join("filler");
        let mut file = File::create(&path).expect("create the filler file");
        let chunk = vec![0xa5u8; 256 * 1024];
        let mut written = 0u64;
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        assert_eq!(self.free(), 0, "the volume is full after the filler");
        assert!(
            written >= leave,
            "the filler has {written} bytes to give back"
        );
        file.set_len(written - leave).expect("shrink the filler");
        file.sync_all().expect("sync the filler");
        assert_eq!(self.free(), leave, "free space after shrinking the filler");
        Filler { path }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.mount)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // A server task still holding a file open (a test that panicked
            // early): detach now, the kernel frees it when the last fd closes.
            let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        }
    }
}

/// The file that keeps the volume full; removing it frees the space.
struct Filler {
    path: PathBuf,
}

impl Filler {
    fn remove(self) {
        std::fs::remove_file(&self.path).expect("remove the filler file");
    }
}

/// A registry whose storage root is the tmpfs.
async fn registry_on(volume: &Tmpfs) -> TestRegistry {
    let root = volume.path().join("registry");
    TestRegistry::start_with(move |config| config.storage.root = root).await
}

fn layout(volume: &Tmpfs) -> PathBuf {
    volume.path().join("registry/docker/registry/v2")
}

/// Every file of the layout with its size: what "nothing changed" is checked against.
fn snapshot(volume: &Tmpfs) -> BTreeMap<PathBuf, u64> {
    let root = layout(volume);
    common::files_under(&root)
        .into_iter()
        .map(|path| {
            let len = std::fs::metadata(&path).expect("stat a stored file").len();
            (
                path.strip_prefix(&root).expect("below the root").to_owned(),
                len,
            )
        })
        .collect()
}

fn assert_unchanged(before: &BTreeMap<PathBuf, u64>, after: &BTreeMap<PathBuf, u64>, what: &str) {
    let added: Vec<_> = after
        .iter()
        .filter(|(p, len)| before.get(*p) != Some(len))
        .collect();
    let removed: Vec<_> = before.keys().filter(|p| !after.contains_key(*p)).collect();
    assert!(
        added.is_empty() && removed.is_empty(),
        "{what} changed the store: added or resized {added:?}, removed {removed:?}"
    );
}

fn blob_path(volume: &Tmpfs, digest: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    layout(volume).join(format!("blobs/sha256/{}/{hex}", &hex[..2]))
}

/// What clients see of the registry: the catalog and every repository's tags.
async fn visible_state(registry: &TestRegistry, repositories: &[&str]) -> Value {
    let catalog: Value = registry
        .get("/v2/_catalog")
        .await
        .json()
        .await
        .expect("catalog is JSON");
    let mut tags = serde_json::Map::new();
    for repository in repositories {
        let response = registry.get(&format!("/v2/{repository}/tags/list")).await;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        tags.insert(
            (*repository).to_owned(),
            serde_json::json!({ "status": status, "body": body }),
        );
    }
    serde_json::json!({ "catalog": catalog, "tags": tags })
}

/// A 507 with the spec's error body whose message says storage is the problem.
async fn expect_storage_full(response: reqwest::Response, what: &str) {
    let entry = expect_error(response, 507, "UNKNOWN").await;
    let message = entry["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("storage"),
        "{what}: the message names storage: {entry}"
    );
}

/// Pulls an image back by tag and checks every byte.
async fn assert_pulls_back(registry: &TestRegistry, repository: &str, tag: &str, image: &Image) {
    let response = registry
        .request(Method::GET, &format!("/v2/{repository}/manifests/{tag}"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("GET manifest reaches the registry");
    assert_eq!(response.status(), StatusCode::OK, "{repository}:{tag}");
    assert_eq!(
        response.bytes().await.expect("manifest body").as_ref(),
        image.manifest.as_slice(),
        "{repository}:{tag} manifest bytes"
    );
    for blob in std::iter::once(&image.config).chain(&image.layers) {
        assert_blob(registry, repository, blob).await;
    }
}

async fn assert_blob(registry: &TestRegistry, repository: &str, data: &[u8]) {
    let digest = sha256(data);
    let response = registry
        .get(&format!("/v2/{repository}/blobs/{digest}"))
        .await;
    assert_eq!(response.status(), StatusCode::OK, "{repository}@{digest}");
    let body = response.bytes().await.expect("blob body");
    assert!(
        body.as_ref() == data,
        "{repository}@{digest}: {} bytes pulled back differ from the {} pushed",
        body.len(),
        data.len()
    );
}

/// Sends a body bigger than the free space and returns the response. The
/// server stops reading the body when the write fails and answers at once;
/// HTTP/1.1 can only follow that by closing the connection, so a client still
/// sending may see a reset instead of the answer. Such an attempt changed
/// nothing (that is asserted after each one) and is sent again, a few times.
async fn send_too_big(
    volume: &Tmpfs,
    before: &BTreeMap<PathBuf, u64>,
    request: impl Fn() -> reqwest::RequestBuilder,
    what: &str,
) -> reqwest::Response {
    for _ in 0..5 {
        let result = request().send().await;
        assert_unchanged(before, &snapshot(volume), what);
        match result {
            Ok(response) => return response,
            Err(e) => {
                eprintln!("{what}: connection reset before the response was read ({e}); again")
            }
        }
    }
    panic!("{what}: five attempts, and not one response was read");
}

/// A volume with an image in `team/app:v1`, then filled to 1 MiB free.
async fn full_registry() -> (Tmpfs, TestRegistry, Image, Filler) {
    let volume = Tmpfs::mount("8m");
    let registry = registry_on(&volume).await;
    let existing = Image::random();
    registry.push_image("team/app", "v1", &existing).await;
    let filler = volume.fill_leaving(MIB as u64);
    (volume, registry, existing, filler)
}

const REPOSITORIES: [&str; 2] = ["team/app", "team/new"];

/// The monolithic push (POST ?digest= with the whole blob) of a blob three
/// times the free space, into an existing repository and into a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monolithic_push_that_does_not_fit_is_refused_with_507_and_leaves_nothing_behind() {
    let (volume, mut registry, existing, filler) = full_registry().await;
    let visible_before = visible_state(&registry, &REPOSITORIES).await;
    let big = random_bytes(3 * MIB);
    let digest = sha256(&big);
    let before = snapshot(&volume);
    for repository in REPOSITORIES {
        let response = send_too_big(
            &volume,
            &before,
            || {
                registry
                    .request(
                        Method::POST,
                        &format!("/v2/{repository}/blobs/uploads/?digest={digest}"),
                    )
                    .header("content-type", "application/octet-stream")
                    .body(big.clone())
            },
            &format!("monolithic push to {repository}"),
        )
        .await;
        expect_storage_full(response, "monolithic push").await;
        assert!(!blob_path(&volume, &digest).exists());
        assert_eq!(
            volume.free(),
            MIB as u64,
            "the partial upload's space is given back"
        );
    }
    assert_eq!(
        visible_state(&registry, &REPOSITORIES).await,
        visible_before
    );
    assert_pulls_back(&registry, "team/app", "v1", &existing).await;

    filler.remove();
    for repository in REPOSITORIES {
        registry.push_blob(repository, &big).await;
        assert_blob(&registry, repository, &big).await;
    }
    assert_pulls_back(&registry, "team/app", "v1", &existing).await;
    registry.stop().await;
}

/// A streamed upload (one PATCH, no Content-Range) that does not fit: the
/// session survives, empty, and takes the blob once space is freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_upload_that_does_not_fit_is_refused_with_507_and_keeps_its_session() {
    let (volume, mut registry, existing, filler) = full_registry().await;
    let visible_before = visible_state(&registry, &REPOSITORIES).await;
    let big = random_bytes(3 * MIB);
    let digest = sha256(&big);
    let session = registry.start_upload("team/app").await;
    let before = snapshot(&volume);
    let free = volume.free();
    let response = send_too_big(
        &volume,
        &before,
        || {
            registry
                .http
                .patch(&session)
                .header("content-type", "application/octet-stream")
                .body(big.clone())
        },
        "streamed PATCH",
    )
    .await;
    expect_storage_full(response, "streamed PATCH").await;
    assert!(!blob_path(&volume, &digest).exists());
    assert_eq!(
        volume.free(),
        free,
        "the partial chunk's space is given back"
    );
    // The session reports exactly what it durably holds: nothing.
    let status = registry.http.get(&session).send().await.unwrap();
    assert_eq!(status.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&status, "range").as_deref(), Some("0-0"));
    assert_eq!(
        visible_state(&registry, &REPOSITORIES).await,
        visible_before
    );
    assert_pulls_back(&registry, "team/app", "v1", &existing).await;

    filler.remove();
    let response = registry
        .http
        .patch(&session)
        .header("content-type", "application/octet-stream")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED, "the blob fits now");
    let session = registry.location(&response);
    let response = registry
        .http
        .put(format!("{session}?digest={digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_blob(&registry, "team/app", &big).await;
    assert_pulls_back(&registry, "team/app", "v1", &existing).await;
    registry.stop().await;
}

/// A chunked upload whose second chunk (with Content-Range) does not fit: the
/// session keeps exactly the first chunk, and resumes from there once space
/// is freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_that_does_not_fit_is_refused_with_507_and_the_upload_resumes_after() {
    let (volume, mut registry, existing, filler) = full_registry().await;
    let visible_before = visible_state(&registry, &REPOSITORIES).await;
    let big = random_bytes(3 * MIB);
    let digest = sha256(&big);
    let session = registry.start_upload("team/app").await;
    let (first, rest) = big.split_at(512 * 1024);
    let response = registry
        .http
        .patch(&session)
        .header("content-type", "application/octet-stream")
        .header("content-range", format!("0-{}", first.len() - 1))
        .body(first.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::ACCEPTED,
        "the first chunk fits"
    );
    let session = registry.location(&response);
    let before = snapshot(&volume);
    let free = volume.free();
    let second = || {
        registry
            .http
            .patch(&session)
            .header("content-type", "application/octet-stream")
            .header(
                "content-range",
                format!("{}-{}", first.len(), big.len() - 1),
            )
            .body(rest.to_vec())
    };
    let response = send_too_big(&volume, &before, second, "second chunk").await;
    expect_storage_full(response, "second chunk").await;
    assert_eq!(
        volume.free(),
        free,
        "the partial chunk's space is given back"
    );
    let status = registry.http.get(&session).send().await.unwrap();
    assert_eq!(status.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        header(&status, "range"),
        Some(format!("0-{}", first.len() - 1)),
        "the session holds exactly the first chunk"
    );
    assert!(!blob_path(&volume, &digest).exists());
    assert_eq!(
        visible_state(&registry, &REPOSITORIES).await,
        visible_before
    );
    assert_pulls_back(&registry, "team/app", "v1", &existing).await;

    filler.remove();
    let response = second().send().await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::ACCEPTED,
        "the chunk fits now"
    );
    let session = registry.location(&response);
    let response = registry
        .http
        .put(format!("{session}?digest={digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_blob(&registry, "team/app", &big).await;
    assert_pulls_back(&registry, "team/app", "v1", &existing).await;
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_push_on_a_full_disk_fails_cleanly_and_succeeds_once_space_is_freed() {
    let volume = Tmpfs::mount("8m");
    let mut registry = registry_on(&volume).await;
    let existing = Image::random();
    registry.push_image("team/app", "v1", &existing).await;
    let image = Image::random();
    for blob in std::iter::once(&image.config).chain(&image.layers) {
        registry.push_blob("team/app", blob).await;
    }
    let repositories = ["team/app"];
    let visible_before = visible_state(&registry, &repositories).await;

    let filler = volume.fill_leaving(0);
    let before = snapshot(&volume);
    for reference in ["v2", image.digest.as_str()] {
        let response = registry
            .put_manifest("team/app", reference, OCI_MANIFEST, image.manifest.clone())
            .await;
        expect_storage_full(response, "manifest PUT").await;
        assert_unchanged(&before, &snapshot(&volume), "a failed manifest push");
        assert!(
            common::files_under(&layout(&volume).join("_tmp")).is_empty(),
            "the staged manifest is removed"
        );
    }
    for reference in ["v2", image.digest.as_str()] {
        let response = registry
            .get(&format!("/v2/team/app/manifests/{reference}"))
            .await;
        expect_error(response, 404, "MANIFEST_UNKNOWN").await;
    }
    assert_eq!(
        visible_state(&registry, &repositories).await,
        visible_before
    );
    assert_pulls_back(&registry, "team/app", "v1", &existing).await;

    filler.remove();
    let response = registry
        .put_manifest("team/app", "v2", OCI_MANIFEST, image.manifest.clone())
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        header(&response, "docker-content-digest").as_deref(),
        Some(image.digest.as_str())
    );
    assert_pulls_back(&registry, "team/app", "v2", &image).await;
    assert_pulls_back(&registry, "team/app", "v1", &existing).await;

    registry.stop().await;
}

/// A tagged manifest push writes several files (the manifest's bytes, its
/// revision link, the tag's index and current links). With room for only
/// some of them, the push must still fail as a whole: the manifest must not
/// be reachable afterwards, by tag or by digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_push_that_runs_out_of_space_part_way_leaves_no_manifest_behind() {
    let volume = Tmpfs::mount("8m");
    let mut registry = registry_on(&volume).await;
    let existing = Image::random();
    registry.push_image("team/app", "v1", &existing).await;
    let repositories = ["team/app"];

    for pages in 1..=8u64 {
        let image = Image::random();
        for blob in std::iter::once(&image.config).chain(&image.layers) {
            registry.push_blob("team/app", blob).await;
        }
        let tag = format!("p{pages}");
        let visible_before = visible_state(&registry, &repositories).await;
        let filler = volume.fill_leaving(pages * PAGE);
        let before = snapshot(&volume);
        let response = registry
            .put_manifest("team/app", &tag, OCI_MANIFEST, image.manifest.clone())
            .await;
        let status = response.status();
        eprintln!("{pages} pages free: manifest PUT {status}");
        if status == StatusCode::CREATED {
            filler.remove();
            assert_pulls_back(&registry, "team/app", &tag, &image).await;
            continue;
        }
        expect_storage_full(response, &format!("manifest PUT with {pages} pages free")).await;
        let by_digest = registry
            .get(&format!("/v2/team/app/manifests/{}", image.digest))
            .await;
        assert_eq!(
            by_digest.status(),
            StatusCode::NOT_FOUND,
            "with {pages} pages free the push failed with 507, yet the manifest is served by digest"
        );
        assert_eq!(
            visible_state(&registry, &repositories).await,
            visible_before,
            "with {pages} pages free"
        );
        // The manifest's own bytes may stay behind in blobs/: content
        // addressed, referenced by nothing, invisible, and swept by `gc`.
        // Nothing else may.
        let own_bytes = blob_path(&volume, &image.digest)
            .join("data")
            .strip_prefix(layout(&volume))
            .expect("below the layout")
            .to_owned();
        let mut after = snapshot(&volume);
        after.remove(&own_bytes);
        assert_unchanged(
            &before,
            &after,
            &format!("a manifest push that failed with {pages} pages free"),
        );
        filler.remove();
        assert_pulls_back(&registry, "team/app", "v1", &existing).await;
    }
    registry.stop().await;
}
