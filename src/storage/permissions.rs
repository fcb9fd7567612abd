//! `portcullis fsck --fix-permissions`: give an existing filesystem store
//! the modes, group and owner the config says, as if the registry had made
//! every entry itself. The case it is for: a `registry:2` directory (files
//! of root, 0644/0755, or 0666/0777 after a `chmod -R 777`) taken over by a
//! registry running as another user, such as a non-root pod.
//!
//! What it changes: the root itself and everything below `docker/` (the
//! layout) get `storage.dir_mode` / `storage.file_mode` (a directory keeps
//! a set-group-ID bit it has), `storage.group` and the `--owner`; the
//! registry's private `portcullis/` (token key, policy cache) gets the
//! owner and group and the modes the registry gives it (0700, 0600). Other
//! entries of the root are the operator's and are left alone.
//!
//! What it never does: follow a symbolic link (each is reported, and said
//! to point outside the root when it does), or change a file with more than
//! one hard link (it may be a file elsewhere, linked in). Every entry is
//! opened `O_PATH | O_NOFOLLOW` and changed through that descriptor, so an
//! entry swapped for a symbolic link meanwhile is not followed either.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use super::{paths, Permissions};

/// The modes the registry gives its private files (`<root>/portcullis/`).
const PRIVATE_DIR_MODE: u32 = 0o700;
const PRIVATE_FILE_MODE: u32 = 0o600;
/// Deeper than any layout path (a repository name has at most 255
/// characters, so at most 128 components): a tree deeper than this is not
/// a registry's, and is not walked further.
const MAX_DEPTH: usize = 256;
/// Lines of changes kept for the report; the counts are always complete.
const MAX_LINES: usize = 50;

/// What every entry should end up with.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub permissions: Permissions,
    /// The owner (`--owner`), if it is to change.
    pub owner: Option<u32>,
}

#[derive(Debug, Default)]
pub struct PermissionsReport {
    /// The root, absolute.
    pub root: PathBuf,
    pub dirs: usize,
    pub files: usize,
    pub modes_changed: usize,
    pub owners_changed: usize,
    /// The first changes, one line each (`MAX_LINES`, then a count).
    pub changes: Vec<String>,
    /// Entries left as they are, and why (symbolic links, hard-linked
    /// files, devices, the operator's own entries of the root).
    pub skipped: Vec<String>,
    /// Entries that could not be changed, and why.
    pub failures: Vec<String>,
}

impl PermissionsReport {
    fn changed(&mut self, line: String) {
        if self.changes.len() < MAX_LINES {
            self.changes.push(line);
        } else if self.changes.len() == MAX_LINES {
            self.changes
                .push("... (more changes: see the counts below)".into());
        }
    }
}

/// A user name or numeric uid, for `--owner`.
pub fn resolve_user(raw: &str) -> Result<u32, String> {
    if let Ok(uid) = raw.parse::<u32>() {
        return Ok(uid);
    }
    nix::unistd::User::from_name(raw)
        .map_err(|e| format!("--owner {raw:?}: {e}"))?
        .map(|u| u.uid.as_raw())
        .ok_or_else(|| format!("--owner {raw:?}: no such user"))
}

/// Which rules apply below a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// The layout: the configured modes.
    Layout,
    /// `<root>/portcullis`: the registry's private modes.
    Private,
}

impl Scope {
    fn modes(self, permissions: &Permissions) -> (u32, u32) {
        match self {
            Scope::Layout => (permissions.dir_mode, permissions.file_mode),
            Scope::Private => (PRIVATE_DIR_MODE, PRIVATE_FILE_MODE),
        }
    }
}

/// Applies `target` to the store at `root` (which must exist and hold the
/// layout); with `dry_run`, only reports what would change.
pub fn fix(root: &Path, target: &Target, dry_run: bool) -> io::Result<PermissionsReport> {
    super::check_existing_root(root)?;
    let mut report = PermissionsReport {
        root: std::path::absolute(root).unwrap_or_else(|_| root.to_owned()),
        ..Default::default()
    };
    let mut fixer = Fixer {
        target,
        dry_run,
        report: &mut report,
    };
    // The configured root may itself be a symbolic link the operator made;
    // it is the one link followed.
    let root_fd = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let stat = rustix::fs::fstat(&root_fd)?;
    fixer.apply(
        &root_fd,
        &stat,
        FileType::Directory,
        target.permissions.dir_mode,
        Path::new("."),
    );
    fixer.report.dirs += 1;
    let top = paths::LAYOUT_ROOT
        .split('/')
        .next()
        .unwrap_or(paths::LAYOUT_ROOT);
    for (name, fd, stat) in fixer.entries(&root_fd, Path::new(""))? {
        let path = PathBuf::from(&name);
        let scope = match name.as_str() {
            n if n == top => Scope::Layout,
            "portcullis" => Scope::Private,
            _ => {
                fixer
                    .report
                    .skipped
                    .push(format!("{name}: not the registry's (left as it is)"));
                continue;
            }
        };
        fixer.visit(&root_fd, fd, &stat, &path, scope, root)?;
    }
    Ok(report)
}

struct Fixer<'a> {
    target: &'a Target,
    dry_run: bool,
    report: &'a mut PermissionsReport,
}

impl Fixer<'_> {
    /// The entries of `dir` (an `O_PATH` descriptor), each opened
    /// `O_PATH | O_NOFOLLOW` and stat'ed through that descriptor.
    fn entries(
        &mut self,
        dir: &OwnedFd,
        path: &Path,
    ) -> io::Result<Vec<(String, OwnedFd, rustix::fs::Stat)>> {
        let listing = match rustix::fs::openat(
            dir,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(e) => {
                self.report
                    .failures
                    .push(format!("{}: cannot list: {e}", shown(path)));
                return Ok(Vec::new());
            }
        };
        let mut out = Vec::new();
        for entry in rustix::fs::Dir::read_from(&listing)? {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let Ok(name) = std::str::from_utf8(name).map(str::to_owned) else {
                self.report.skipped.push(format!(
                    "{}/{}: not a UTF-8 name (left as it is)",
                    shown(path),
                    String::from_utf8_lossy(name)
                ));
                continue;
            };
            let fd = match rustix::fs::openat(
                dir,
                name.as_str(),
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => fd,
                Err(e) => {
                    self.report
                        .failures
                        .push(format!("{}: cannot open: {e}", shown(&path.join(&name))));
                    continue;
                }
            };
            let stat = rustix::fs::fstat(&fd)?;
            out.push((name, fd, stat));
        }
        Ok(out)
    }

    /// Fixes one entry of `parent` and, for a directory, everything below it
    /// (depth first, with an explicit stack).
    fn visit(
        &mut self,
        parent: &OwnedFd,
        fd: OwnedFd,
        stat: &rustix::fs::Stat,
        path: &Path,
        scope: Scope,
        root: &Path,
    ) -> io::Result<()> {
        let mut stack = vec![(fd, *stat, path.to_path_buf(), 0usize)];
        let mut first_parent = Some(parent);
        while let Some((fd, stat, path, depth)) = stack.pop() {
            let (dir_mode, file_mode) = scope.modes(&self.target.permissions);
            match FileType::from_raw_mode(stat.st_mode) {
                FileType::Directory => {
                    self.report.dirs += 1;
                    self.apply(&fd, &stat, FileType::Directory, dir_mode, &path);
                    if depth >= MAX_DEPTH {
                        self.report.skipped.push(format!(
                            "{}: deeper than {MAX_DEPTH} levels (not walked further)",
                            shown(&path)
                        ));
                        continue;
                    }
                    for (name, child, child_stat) in self.entries(&fd, &path)? {
                        let child_path = path.join(&name);
                        if FileType::from_raw_mode(child_stat.st_mode) == FileType::Symlink {
                            self.symlink(&fd, &name, &child_path, root);
                            continue;
                        }
                        stack.push((child, child_stat, child_path, depth + 1));
                    }
                }
                FileType::RegularFile if stat.st_nlink > 1 => {
                    self.report.skipped.push(format!(
                        "{}: has {} hard links, so it may be a file outside the store (left as it is)",
                        shown(&path),
                        stat.st_nlink
                    ));
                }
                FileType::RegularFile => {
                    self.report.files += 1;
                    self.apply(&fd, &stat, FileType::RegularFile, file_mode, &path);
                }
                FileType::Symlink => {
                    // Only the top entries come here (children are sorted
                    // out above), and only with their parent at hand.
                    if let Some(parent) = first_parent {
                        let name = path.file_name().map(|n| n.to_owned()).unwrap_or_default();
                        self.symlink(parent, &name.to_string_lossy(), &path, root);
                    }
                }
                other => self.report.skipped.push(format!(
                    "{}: a {other:?}, not a file or directory (left as it is)",
                    shown(&path)
                )),
            }
            first_parent = None;
        }
        Ok(())
    }

    /// Reports a symbolic link (never followed, never changed).
    fn symlink(&mut self, dir: &OwnedFd, name: &str, path: &Path, root: &Path) {
        let target = rustix::fs::readlinkat(dir, name, Vec::new())
            .map(|t| PathBuf::from(t.to_string_lossy().into_owned()))
            .unwrap_or_default();
        let outside = points_outside(root, path, &target);
        self.report.skipped.push(format!(
            "{}: a symbolic link to {}{} (not followed)",
            shown(path),
            target.display(),
            if outside {
                ", outside the storage root"
            } else {
                ""
            }
        ));
    }

    /// Gives one entry its owner, group and mode, through its `O_PATH`
    /// descriptor. Owner first: a change of owner clears set-ID bits.
    fn apply(
        &mut self,
        fd: &OwnedFd,
        stat: &rustix::fs::Stat,
        kind: FileType,
        mode: u32,
        path: &Path,
    ) {
        let (uid, gid) = (stat.st_uid, stat.st_gid);
        let want_uid = self.target.owner.unwrap_or(uid);
        let want_gid = self.target.permissions.gid.unwrap_or(gid);
        if (want_uid, want_gid) != (uid, gid) {
            self.report.owners_changed += 1;
            self.report.changed(format!(
                "{}: owner {uid}:{gid} -> {want_uid}:{want_gid}",
                shown(path)
            ));
            if !self.dry_run {
                if let Err(e) = rustix::fs::chownat(
                    fd,
                    "",
                    Some(rustix::fs::Uid::from_raw(want_uid)),
                    Some(rustix::fs::Gid::from_raw(want_gid)),
                    AtFlags::EMPTY_PATH,
                ) {
                    self.report.failures.push(format!(
                        "{}: cannot give it to {want_uid}:{want_gid}: {e} (owned by {uid}:{gid})",
                        shown(path)
                    ));
                }
            }
        }
        let current = stat.st_mode & 0o7777;
        let keep = if kind == FileType::Directory {
            current & 0o2000 // set-group-ID: new entries inherit the group
        } else {
            0
        };
        let wanted = mode | keep;
        if wanted != current {
            self.report.modes_changed += 1;
            self.report.changed(format!(
                "{}: mode {current:04o} -> {wanted:04o}",
                shown(path)
            ));
            if !self.dry_run {
                if let Err(e) = chmod_fd(fd, wanted) {
                    self.report.failures.push(format!(
                        "{}: cannot chmod {wanted:04o}: {e} (owned by {uid}:{gid})",
                        shown(path)
                    ));
                }
            }
        }
    }
}

/// `chmod` of the inode an `O_PATH` descriptor holds: through its
/// `/proc/self/fd` entry, which names that inode whatever happens to the
/// path meanwhile (`fchmod` refuses `O_PATH` descriptors).
fn chmod_fd(fd: &OwnedFd, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let proc_path = format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd());
    std::fs::set_permissions(&proc_path, std::fs::Permissions::from_mode(mode)).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            io::Error::new(e.kind(), "/proc is not mounted")
        } else {
            e
        }
    })
}

/// How a path below the root is shown.
fn shown(path: &Path) -> String {
    if path.as_os_str().is_empty() {
        ".".into()
    } else {
        path.display().to_string()
    }
}

/// Whether a link at `path` (relative to `root`) with `target` points
/// outside `root`, read lexically (the link is never resolved).
fn points_outside(root: &Path, path: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        let root = std::path::absolute(root).unwrap_or_else(|_| root.to_owned());
        return !target.starts_with(&root);
    }
    let mut depth: isize = path.parent().map_or(0, |p| p.components().count() as isize);
    for component in target.components() {
        match component {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            _ => {}
        }
        if depth < 0 {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_judged_outside_lexically() {
        let root = Path::new("/srv/registry");
        let at = Path::new("docker/registry/v2/blobs/x");
        assert!(points_outside(root, at, Path::new("/etc/passwd")));
        assert!(!points_outside(root, at, Path::new("/srv/registry/docker")));
        assert!(points_outside(root, at, Path::new("../../../../../etc")));
        assert!(!points_outside(root, at, Path::new("../../../v2")));
        assert!(!points_outside(root, at, Path::new("data")));
    }
}
