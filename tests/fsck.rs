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

/// `portcullis fsck --fix-permissions [extra]` on `root`, with `env`.
fn fix_permissions(
    bin: &std::path::Path,
    root: &std::path::Path,
    extra: &[&str],
    env: &[(&str, &str)],
    user: Option<u32>,
) -> (bool, String) {
    let mut command = if let Some(uid) = user {
        // As another user: setpriv drops root before the binary runs.
        let mut c = Command::new("setpriv");
        c.args([
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--clear-groups".into(),
        ])
        .arg(bin);
        c
    } else {
        Command::new(bin)
    };
    for (key, _) in std::env::vars() {
        if key.starts_with("PORTCULLIS_") {
            command.env_remove(key);
        }
    }
    command
        .args(["fsck", "--fix-permissions"])
        .args(extra)
        .env("PORTCULLIS_STORAGE__ROOT", root)
        .envs(env.iter().copied());
    let output = command
        .output()
        .expect("portcullis fsck --fix-permissions runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

fn owner(path: &std::path::Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).unwrap();
    (meta.uid(), meta.gid())
}

/// Every entry below `dir` (symbolic links not followed), `dir` included.
fn tree(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let path = out[i].clone();
        if std::fs::symlink_metadata(&path).unwrap().is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                out.push(entry.unwrap().path());
            }
        }
        i += 1;
    }
    out
}

/// `chmod -R 777`, files 0666: what a `registry:2` hostPath often looks like.
fn make_world_writable(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    for path in tree(dir) {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = if meta.is_dir() {
            0o777
        } else if meta.is_file() {
            0o666
        } else {
            continue;
        };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// A `registry:2` directory after `chmod -R 777`, with hostile entries, made
/// the registry's by `fsck --fix-permissions` (as root, for a non-root
/// registry: owner 65532, group 4242), then served.
///
/// | entry | expected |
/// | --- | --- |
/// | every directory / file of the layout (0777 / 0666) | 0750 / 0640, 65532:4242 |
/// | the root (0777) | 0750, 65532:4242 |
/// | a file made unreadable (0000) | 0640 |
/// | a directory made unreadable and unlistable (0000) | 0750, and what is in it fixed |
/// | a directory with the set-group-ID bit (2777) | 2750 (the bit kept) |
/// | a symlink to a file outside the root (mode 0600) | not followed, reported as outside; the file unchanged |
/// | a symlink to a directory outside (`/etc`-like) | not followed, reported; nothing in it changed |
/// | a file hard-linked to one outside the root | reported, left as it is (the outside file unchanged) |
/// | a FIFO | reported, left as it is (no open blocks) |
/// | an operator's file in the root (0666) | not the registry's: left as it is |
/// | `--dry-run` before all this | reports, changes nothing |
#[tokio::test]
async fn fix_permissions_takes_over_a_world_writable_registry_2_directory() {
    if common::s3_backend() {
        return; // a bucket has no modes
    }
    if !is_root() {
        eprintln!("skipped: giving files to another owner needs root");
        return;
    }
    let mut registry = TestRegistry::start().await;
    let image = Image::random();
    registry.push_image("team/app", "v1", &image).await;
    registry.stop().await;
    let root = registry.root().to_owned();
    let v2 = root.join("docker/registry/v2");
    // The registry's private directory is not a registry:2 thing.
    let _ = std::fs::remove_dir_all(root.join("portcullis"));
    make_world_writable(&root);

    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret");
    std::fs::write(&secret, "not the registry's").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let shared = outside.path().join("hard-linked");
    std::fs::write(&shared, "linked in").unwrap();
    std::fs::set_permissions(&shared, std::os::unix::fs::PermissionsExt::from_mode(0o604)).unwrap();
    let outside_dir = outside.path().join("etc");
    std::fs::create_dir(&outside_dir).unwrap();
    std::fs::write(outside_dir.join("passwd"), "x").unwrap();
    std::fs::set_permissions(
        outside_dir.join("passwd"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    std::os::unix::fs::symlink(&secret, v2.join("blobs/escape")).unwrap();
    std::os::unix::fs::symlink(&outside_dir, v2.join("repositories/escape")).unwrap();
    std::os::unix::fs::symlink("../blobs", v2.join("repositories/inside")).unwrap();
    std::fs::hard_link(&shared, v2.join("repositories/hard")).unwrap();
    let fifo = std::ffi::CString::new(v2.join("_tmp/fifo").to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only creates a file.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o666) }, 0);
    std::fs::write(root.join("operator-notes.txt"), "mine").unwrap();
    std::fs::set_permissions(
        root.join("operator-notes.txt"),
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    let tag_link = v2.join("repositories/team/app/_manifests/tags/v1/current/link");
    std::fs::set_permissions(
        &tag_link,
        std::os::unix::fs::PermissionsExt::from_mode(0o000),
    )
    .unwrap();
    let locked = v2.join("repositories/team/app/_manifests/tags");
    let setgid = v2.join("repositories/team");
    std::fs::set_permissions(
        &setgid,
        std::os::unix::fs::PermissionsExt::from_mode(0o2777),
    )
    .unwrap();
    std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();

    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_portcullis"));
    let env = [("PORTCULLIS_STORAGE__GROUP", "4242")];
    let before: Vec<_> = tree(&root)
        .iter()
        .map(|p| (p.clone(), mode(p), owner(p)))
        .collect();
    let (ok, text) = fix_permissions(bin, &root, &["--owner", "65532", "--dry-run"], &env, None);
    assert!(ok, "{text}");
    assert!(
        text.contains("would change: .: mode 0777 -> 0750"),
        "{text}"
    );
    let after: Vec<_> = tree(&root)
        .iter()
        .map(|p| (p.clone(), mode(p), owner(p)))
        .collect();
    assert_eq!(before, after, "a dry run changes nothing");

    let (ok, text) = fix_permissions(bin, &root, &["--owner", "65532"], &env, None);
    assert!(ok, "{text}");
    for expected in [
        "skipped: docker/registry/v2/blobs/escape: a symbolic link to",
        "skipped: docker/registry/v2/repositories/escape: a symbolic link to",
        "skipped: docker/registry/v2/repositories/hard: has 2 hard links",
        "skipped: docker/registry/v2/_tmp/fifo: a Fifo",
        "skipped: operator-notes.txt: not the registry's",
    ] {
        assert!(text.contains(expected), "{expected}: {text}");
    }
    assert!(
        text.lines()
            .any(|l| l.contains("blobs/escape") && l.contains("outside the storage root")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("repositories/inside") && !l.contains("outside the storage root")),
        "{text}"
    );
    // What is outside the root is as it was.
    assert_eq!(mode(&secret), 0o600);
    assert_eq!(mode(&shared), 0o604);
    assert_eq!(mode(&outside_dir.join("passwd")), 0o644);
    assert_eq!(owner(&secret), (0, 0));
    assert_eq!(mode(&root.join("operator-notes.txt")), 0o666);
    // Everything of the registry's is the registry's.
    assert_eq!(mode(&root), 0o750);
    assert_eq!(owner(&root), (65532, 4242));
    assert_eq!(mode(&setgid), 0o2750, "the set-group-ID bit is kept");
    assert_eq!(mode(&locked), 0o750);
    assert_eq!(mode(&tag_link), 0o640);
    let mut counted = (0, 0);
    for path in tree(&root.join("docker")) {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.file_type().is_symlink() || path.ends_with("hard") || path.ends_with("fifo") {
            continue;
        }
        assert_eq!(owner(&path), (65532, 4242), "{}", path.display());
        if meta.is_dir() {
            counted.0 += 1;
            assert_eq!(mode(&path) & 0o777, 0o750, "{}", path.display());
        } else {
            counted.1 += 1;
            assert_eq!(mode(&path), 0o640, "{}", path.display());
        }
    }
    assert!(counted.1 >= 7, "the image's files were there: {counted:?}");
    // Run again, nothing is left to change.
    let (ok, text) = fix_permissions(bin, &root, &["--owner", "65532"], &env, None);
    assert!(ok, "{text}");
    assert!(
        text.contains("modes changed on 0, owner or group on 0"),
        "{text}"
    );

    // The registry serves it (as root here; the modes are what a non-root
    // registry of uid 65532 would have made) and fsck finds it whole.
    for hostile in [
        "blobs/escape",
        "repositories/escape",
        "repositories/inside",
        "repositories/hard",
        "_tmp/fifo",
    ] {
        std::fs::remove_file(v2.join(hostile)).unwrap();
    }
    let (ok, text) = fsck(&root, false);
    assert!(ok, "{text}");
    registry.restart().await;
    let manifest = registry.get("/v2/team/app/manifests/v1").await;
    assert_eq!(manifest.status(), reqwest::StatusCode::OK);
}

/// As a user who is not root: what it owns is fixed (even unreadable), what
/// another user owns is reported as a failure (exit 1), never skipped
/// silently.
#[tokio::test]
async fn fix_permissions_as_a_user_reports_what_it_cannot_change() {
    if common::s3_backend() || !is_root() {
        eprintln!("skipped: needs root to make a tree owned by two users");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let mut registry = TestRegistry::start().await;
    registry
        .push_image("team/app", "v1", &Image::random())
        .await;
    registry.stop().await;
    let root = registry.root().to_owned();
    let _ = std::fs::remove_dir_all(root.join("portcullis"));
    make_world_writable(&root);
    const USER: u32 = 65534;
    for path in tree(&root) {
        std::os::unix::fs::lchown(&path, Some(USER), Some(USER)).unwrap();
    }
    let theirs =
        root.join("docker/registry/v2/repositories/team/app/_manifests/tags/v1/current/link");
    std::os::unix::fs::chown(&theirs, Some(0), Some(0)).unwrap();
    let unreadable = root.join("docker/registry/v2/repositories/team/app/_manifests/tags/v1/index");
    std::fs::set_permissions(&unreadable, std::fs::Permissions::from_mode(0o000)).unwrap();
    // The binary where that user can run it.
    let scratch = tempfile::tempdir().unwrap();
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = scratch.path().join("portcullis");
    std::fs::copy(env!("CARGO_BIN_EXE_portcullis"), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let parent = root.parent().unwrap();
    let parent_mode = mode(parent);
    assert!(
        parent_mode & 0o001 != 0,
        "{} must be searchable by others",
        parent.display()
    );

    let (ok, text) = fix_permissions(&bin, &root, &[], &[], Some(USER));
    assert!(!ok, "a failure makes the command fail: {text}");
    assert!(
        text.lines().any(|l| l.starts_with("failed: ")
            && l.contains("tags/v1/current/link: cannot chmod 0640")
            && l.contains("owned by 0:0")),
        "{text}"
    );
    assert!(text.contains("1 entries could not be changed"), "{text}");
    assert_eq!(
        mode(&theirs),
        0o666,
        "another user's file is left as it was"
    );
    assert_eq!(
        mode(&unreadable),
        0o750,
        "its own unreadable directory is fixed"
    );
    assert_eq!(mode(&root), 0o750);
    assert_eq!(
        mode(
            &root.join("docker/registry/v2/repositories/team/app/_manifests/tags/v1/index/sha256")
        ),
        0o750,
        "and what was below it"
    );
}
