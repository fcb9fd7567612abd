//! `portcullis policy new NAME --lang rust|js|python|c`: writes a policy
//! project that builds and tests as it is, for an author to start from.
//!
//! Every project holds the contract (`wit/policy.wit`, compiled into this
//! binary, so it is the contract this registry speaks), a starter policy that
//! uses the 0.2 image facts (manifest pushes of an image whose config has no
//! `org.opencontainers.image.source` label are denied), `cases.json` for
//! `portcullis policy test --cases`, `build.sh`, `test.sh` and a README
//! saying how to build, test and configure it. The templates are in
//! `templates/`, compiled in with `include_str!`; `{{name}}` in them is
//! replaced by the project's name.
//!
//! Nothing is ever overwritten: the project's directory must not exist.

use std::fmt;
use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The contract, `portcullis:policy@0.2.0`, as this binary speaks it.
pub const CONTRACT_WIT: &str = include_str!("../../wit/policy.wit");

/// The longest name accepted.
pub const MAX_NAME_LEN: usize = 64;

/// The placeholder replaced by the project's name in every template.
const PLACEHOLDER: &str = "{{name}}";

const DIR_MODE: u32 = 0o755;
const FILE_MODE: u32 = 0o644;
const SCRIPT_MODE: u32 = 0o755;

/// The language of a new policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Lang {
    /// Rust with wit-bindgen, built with cargo for wasm32-wasip2.
    Rust,
    /// JavaScript with componentize-js (StarlingMonkey).
    Js,
    /// Python with componentize-py (CPython).
    Python,
    /// C with wit-bindgen's C bindings, clang for wasm32-wasi and wasm-tools.
    C,
}

impl Lang {
    pub const ALL: [Lang; 4] = [Lang::Rust, Lang::Js, Lang::Python, Lang::C];

    /// The name `--lang` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Js => "js",
            Lang::Python => "python",
            Lang::C => "c",
        }
    }

    fn templates(self) -> &'static [Template] {
        match self {
            Lang::Rust => RUST,
            Lang::Js => JS,
            Lang::Python => PYTHON,
            Lang::C => C,
        }
    }
}

impl fmt::Display for Lang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Lang {
    type Err = ScaffoldError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "rust" | "rs" => Ok(Lang::Rust),
            "js" | "javascript" => Ok(Lang::Js),
            "python" | "py" => Ok(Lang::Python),
            "c" => Ok(Lang::C),
            _ => Err(ScaffoldError::UnknownLang(s.to_owned())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error("invalid policy name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("unknown language {0:?}: expected rust, js, python or c")]
    UnknownLang(String),
    #[error("{} already exists: choose another name or directory (nothing is overwritten)", .0.display())]
    Exists(PathBuf),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ScaffoldError + '_ {
    move |source| ScaffoldError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One file of a project: its path in the project and the templates whose
/// concatenation it is.
struct Template {
    path: &'static str,
    parts: &'static [&'static str],
    mode: u32,
}

macro_rules! template {
    ($file:literal) => {
        include_str!(concat!("templates/", $file))
    };
}

const CASES: Template = Template {
    path: "cases.json",
    parts: &[template!("common/cases.json.tmpl")],
    mode: FILE_MODE,
};
const TEST_SH: Template = Template {
    path: "test.sh",
    parts: &[template!("common/test.sh.tmpl")],
    mode: SCRIPT_MODE,
};
const WIT: Template = Template {
    path: "wit/policy.wit",
    parts: &[CONTRACT_WIT],
    mode: FILE_MODE,
};
const README_TAIL: &str = template!("common/README-tail.md.tmpl");

const RUST: &[Template] = &[
    Template {
        path: "README.md",
        parts: &[template!("rust/README.md.tmpl"), README_TAIL],
        mode: FILE_MODE,
    },
    Template {
        path: "Cargo.toml",
        parts: &[template!("rust/Cargo.toml.tmpl")],
        mode: FILE_MODE,
    },
    Template {
        path: "src/lib.rs",
        parts: &[template!("rust/lib.rs.tmpl")],
        mode: FILE_MODE,
    },
    Template {
        path: "build.sh",
        parts: &[template!("rust/build.sh.tmpl")],
        mode: SCRIPT_MODE,
    },
    Template {
        path: ".gitignore",
        parts: &[template!("rust/gitignore.tmpl")],
        mode: FILE_MODE,
    },
    TEST_SH,
    CASES,
    WIT,
];

const JS: &[Template] = &[
    Template {
        path: "README.md",
        parts: &[template!("js/README.md.tmpl"), README_TAIL],
        mode: FILE_MODE,
    },
    Template {
        path: "package.json",
        parts: &[template!("js/package.json.tmpl")],
        mode: FILE_MODE,
    },
    Template {
        path: "package-lock.json",
        parts: &[template!("js/package-lock.json.tmpl")],
        mode: FILE_MODE,
    },
    Template {
        path: "src/policy.js",
        parts: &[template!("js/policy.js.tmpl")],
        mode: FILE_MODE,
    },
    Template {
        path: "build.sh",
        parts: &[template!("js/build.sh.tmpl")],
        mode: SCRIPT_MODE,
    },
    Template {
        path: ".gitignore",
        parts: &[template!("js/gitignore.tmpl")],
        mode: FILE_MODE,
    },
    TEST_SH,
    CASES,
    WIT,
];

const PYTHON: &[Template] = &[
    Template {
        path: "README.md",
        parts: &[template!("python/README.md.tmpl"), README_TAIL],
        mode: FILE_MODE,
    },
    Template {
        path: "src/app.py",
        parts: &[template!("python/app.py.tmpl")],
        mode: FILE_MODE,
    },
    Template {
        path: "build.sh",
        parts: &[template!("python/build.sh.tmpl")],
        mode: SCRIPT_MODE,
    },
    Template {
        path: ".gitignore",
        parts: &[template!("python/gitignore.tmpl")],
        mode: FILE_MODE,
    },
    TEST_SH,
    CASES,
    WIT,
];

const C: &[Template] = &[
    Template {
        path: "README.md",
        parts: &[template!("c/README.md.tmpl"), README_TAIL],
        mode: FILE_MODE,
    },
    Template {
        path: "src/policy.c",
        parts: &[template!("c/policy.c.tmpl")],
        mode: FILE_MODE,
    },
    Template {
        path: "build.sh",
        parts: &[template!("c/build.sh.tmpl")],
        mode: SCRIPT_MODE,
    },
    // The C example's bindings, checked against wit/ by its build
    // (examples/policies/build-all.sh): a project builds without wit-bindgen.
    Template {
        path: "bindings/policy.c",
        parts: &[include_str!(
            "../../examples/policies/c-max-size/bindings/policy.c"
        )],
        mode: FILE_MODE,
    },
    Template {
        path: "bindings/policy.h",
        parts: &[include_str!(
            "../../examples/policies/c-max-size/bindings/policy.h"
        )],
        mode: FILE_MODE,
    },
    Template {
        path: ".gitignore",
        parts: &[template!("c/gitignore.tmpl")],
        mode: FILE_MODE,
    },
    TEST_SH,
    CASES,
    WIT,
];

/// A file of a rendered project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectFile {
    /// Relative to the project's directory, `/`-separated.
    pub path: &'static str,
    pub contents: String,
    /// Permission bits it is created with (the umask applies too).
    pub mode: u32,
}

/// Checks that `name` is usable as a directory, package and file name
/// everywhere it goes: `[a-z][a-z0-9-]{0,63}`.
pub fn validate_name(name: &str) -> Result<(), ScaffoldError> {
    let invalid = |reason| {
        Err(ScaffoldError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    let Some(first) = name.chars().next() else {
        return invalid("it is empty");
    };
    if !first.is_ascii_lowercase() {
        return invalid("it must start with a lowercase letter (a-z)");
    }
    if name.len() > MAX_NAME_LEN {
        return invalid("it is longer than 64 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return invalid("use only lowercase letters, digits and `-`");
    }
    Ok(())
}

/// The files of a new `lang` project named `name`, rendered, without writing
/// anything.
pub fn render(name: &str, lang: Lang) -> Result<Vec<ProjectFile>, ScaffoldError> {
    validate_name(name)?;
    Ok(lang
        .templates()
        .iter()
        .map(|template| ProjectFile {
            path: template.path,
            contents: template.parts.concat().replace(PLACEHOLDER, name),
            mode: template.mode,
        })
        .collect())
}

/// Writes a new `lang` policy project named `name` into `parent/name`
/// (`parent` is created if missing) and returns its directory. Refuses an
/// invalid name and a directory that exists; on a failure midway, removes
/// what it created.
pub fn new_project(name: &str, lang: Lang, parent: &Path) -> Result<PathBuf, ScaffoldError> {
    let files = render(name, lang)?;
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(parent)
        .map_err(io_error(parent))?;
    let dir = parent.join(name);
    // Not recursive: fails if anything (a directory, a file, a symlink) is there.
    if let Err(e) = DirBuilder::new().mode(DIR_MODE).create(&dir) {
        return Err(if e.kind() == std::io::ErrorKind::AlreadyExists {
            ScaffoldError::Exists(dir)
        } else {
            ScaffoldError::Io {
                path: dir,
                source: e,
            }
        });
    }
    match write_files(&dir, &files) {
        Ok(()) => Ok(dir),
        Err(e) => {
            // The directory is ours (created just above): leave nothing half-made.
            let _ = std::fs::remove_dir_all(&dir);
            Err(e)
        }
    }
}

fn write_files(dir: &Path, files: &[ProjectFile]) -> Result<(), ScaffoldError> {
    for file in files {
        let path = dir.join(file.path);
        if let Some(parent) = path.parent() {
            DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(parent)
                .map_err(io_error(parent))?;
        }
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(file.mode)
            .open(&path)
            .map_err(io_error(&path))?;
        out.write_all(file.contents.as_bytes())
            .and_then(|()| out.sync_all())
            .map_err(io_error(&path))?;
    }
    Ok(())
}

/// What to tell the author once the project at `dir` is written.
pub fn next_steps(name: &str, lang: Lang, dir: &Path) -> String {
    let setup = match lang {
        Lang::Rust => "rustup target add wasm32-wasip2   # once\n  ",
        Lang::Js => "npm ci                           # the pinned componentize-js toolchain\n  ",
        Lang::Python => "pip install componentize-py==0.25.1   # once\n  ",
        Lang::C => "",
    };
    format!(
        "created {lang} policy {name} in {dir}\n\
         next:\n  \
         cd {dir}\n  \
         {setup}./build.sh                       # -> build/{name}.wasm\n  \
         ./test.sh                        # build, then `portcullis policy test --cases cases.json`\n\
         (set PORTCULLIS=/path/to/portcullis if portcullis is not on PATH); \
         README.md says how to add it to portcullis.toml",
        dir = dir.display()
    )
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn names_are_checked() {
        let longest = format!("a{}", "b".repeat(63));
        for ok in [
            "a",
            "demo-rust",
            "p2",
            "require-source-v2",
            longest.as_str(),
        ] {
            assert!(validate_name(ok).is_ok(), "{ok} refused");
        }
        let too_long = format!("a{}", "b".repeat(64));
        for bad in [
            "",
            "Demo",
            "1policy",
            "-policy",
            "my_policy",
            "my.policy",
            "a/b",
            "../x",
            "..",
            "a b",
            "pölicy",
            "policy\n",
            too_long.as_str(),
        ] {
            match validate_name(bad) {
                Err(ScaffoldError::InvalidName { name, .. }) => assert_eq!(name, bad),
                other => panic!("{bad:?} accepted: {other:?}"),
            }
        }
    }

    #[test]
    fn an_invalid_name_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let parent = tmp.path().join("parent");
        let err = new_project("../escape", Lang::Rust, &parent).unwrap_err();
        assert!(matches!(err, ScaffoldError::InvalidName { .. }), "{err}");
        assert!(!parent.exists());
        assert!(!tmp.path().join("escape").exists());
    }

    #[test]
    fn an_existing_directory_is_never_touched() {
        let tmp = tempfile::tempdir().unwrap();
        let existing = tmp.path().join("taken");
        std::fs::create_dir(&existing).unwrap();
        std::fs::write(existing.join("README.md"), "mine").unwrap();
        for lang in Lang::ALL {
            match new_project("taken", lang, tmp.path()) {
                Err(ScaffoldError::Exists(path)) => assert_eq!(path, existing),
                other => panic!("{lang}: {other:?}"),
            }
        }
        let entries: Vec<_> = std::fs::read_dir(&existing).unwrap().collect();
        assert_eq!(entries.len(), 1);
        assert_eq!(
            std::fs::read_to_string(existing.join("README.md")).unwrap(),
            "mine"
        );
        // A file (or a symlink) by that name is refused just the same.
        std::fs::write(tmp.path().join("file"), "x").unwrap();
        assert!(matches!(
            new_project("file", Lang::C, tmp.path()),
            Err(ScaffoldError::Exists(_))
        ));
        std::os::unix::fs::symlink(&existing, tmp.path().join("link")).unwrap();
        assert!(matches!(
            new_project("link", Lang::C, tmp.path()),
            Err(ScaffoldError::Exists(_))
        ));
    }

    #[test]
    fn every_template_renders_with_the_name_and_the_contract() {
        assert!(CONTRACT_WIT.contains("package portcullis:policy@0.2.0;"));
        let name = "my-policy";
        for lang in Lang::ALL {
            let files = render(name, lang).unwrap();
            let get = |path: &str| {
                files
                    .iter()
                    .find(|f| f.path == path)
                    .unwrap_or_else(|| panic!("{lang}: no {path}"))
            };
            for file in &files {
                assert!(
                    !file.contents.contains("{{"),
                    "{lang}: {} has a placeholder left",
                    file.path
                );
                assert!(!file.contents.is_empty(), "{lang}: {} is empty", file.path);
                assert_eq!(
                    file.mode & 0o022,
                    0,
                    "{lang}: {} is writable by others",
                    file.path
                );
            }
            let mut paths: Vec<_> = files.iter().map(|f| f.path).collect();
            paths.sort_unstable();
            paths.dedup();
            assert_eq!(paths.len(), files.len(), "{lang}: a path twice");

            assert_eq!(get("wit/policy.wit").contents, CONTRACT_WIT, "{lang}");
            let readme = &get("README.md").contents;
            assert!(readme.starts_with(&format!("# {name}\n")), "{lang}");
            for needle in [
                "[[policy.chain]]",
                "module = \"my-policy.wasm\"",
                "./build.sh",
                "./test.sh",
                "cases.json",
                "org.opencontainers.image.source",
            ] {
                assert!(readme.contains(needle), "{lang}: README lacks {needle}");
            }
            let build = get("build.sh");
            assert!(
                build.contents.starts_with("#!/usr/bin/env bash\n"),
                "{lang}"
            );
            assert!(build.contents.contains("name=my-policy\n"), "{lang}");
            assert_eq!(build.mode, SCRIPT_MODE);
            let test = get("test.sh");
            assert!(
                test.contents.contains(
                    "policy test --policy build/my-policy.wasm --settings '{}' --cases cases.json"
                ),
                "{lang}"
            );
            assert_eq!(test.mode, SCRIPT_MODE);

            let cases: serde_json::Value = serde_json::from_str(&get("cases.json").contents)
                .unwrap_or_else(|e| panic!("{lang}: cases.json: {e}"));
            let cases = cases.as_array().unwrap();
            assert!(cases.iter().any(|c| c["expect"] == "allow"));
            assert!(cases.iter().any(|c| c["expect"] == "deny"));
            for case in cases {
                assert!(
                    case["name"].is_string() && case["request"].is_object(),
                    "{case}"
                );
            }

            let source = match lang {
                Lang::Rust => "src/lib.rs",
                Lang::Js => "src/policy.js",
                Lang::Python => "src/app.py",
                Lang::C => "src/policy.c",
            };
            let source = &get(source).contents;
            assert!(source.contains("org.opencontainers.image.source"), "{lang}");
            assert!(source.contains("my-policy was not initialised"), "{lang}");
        }
        let cargo = render(name, Lang::Rust).unwrap();
        let manifest = &cargo
            .iter()
            .find(|f| f.path == "Cargo.toml")
            .unwrap()
            .contents;
        assert!(manifest.contains("name = \"my-policy\""));
        assert!(manifest.contains("crate-type = [\"cdylib\"]"));
        let js = render(name, Lang::Js).unwrap();
        for path in ["package.json", "package-lock.json"] {
            let json: serde_json::Value =
                serde_json::from_str(&js.iter().find(|f| f.path == path).unwrap().contents)
                    .unwrap();
            assert_eq!(json["name"], name, "{path}");
        }
    }

    #[test]
    fn a_project_is_written_with_safe_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let parent = tmp.path().join("new/parent");
        for lang in Lang::ALL {
            let name = format!("p-{lang}");
            let dir = new_project(&name, lang, &parent).unwrap();
            assert_eq!(dir, parent.join(&name));
            for file in render(&name, lang).unwrap() {
                let path = dir.join(file.path);
                assert_eq!(std::fs::read_to_string(&path).unwrap(), file.contents);
                let mode = std::fs::metadata(&path).unwrap().permissions().mode();
                assert_eq!(mode & 0o022, 0, "{}: {mode:o}", path.display());
                assert_eq!(
                    mode & 0o100 != 0,
                    file.path.ends_with(".sh"),
                    "{}: {mode:o}",
                    path.display()
                );
            }
            for sub in [dir.as_path(), &dir.join("wit"), &dir.join("src")] {
                let mode = std::fs::metadata(sub).unwrap().permissions().mode();
                assert_eq!(mode & 0o022, 0, "{}: {mode:o}", sub.display());
            }
        }
    }

    #[test]
    fn languages_parse_and_print() {
        for lang in Lang::ALL {
            assert_eq!(lang.as_str().parse::<Lang>().unwrap(), lang);
            assert_eq!(lang.to_string(), lang.as_str());
            let value = clap::ValueEnum::to_possible_value(&lang).unwrap();
            assert_eq!(value.get_name(), lang.as_str());
        }
        assert_eq!("JavaScript".parse::<Lang>().unwrap(), Lang::Js);
        assert!(matches!(
            "go".parse::<Lang>(),
            Err(ScaffoldError::UnknownLang(_))
        ));
    }

    #[test]
    fn next_steps_name_the_commands() {
        let text = next_steps("demo", Lang::Js, Path::new("/tmp/x/demo"));
        assert!(text.contains("cd /tmp/x/demo"));
        assert!(text.contains("npm ci"));
        assert!(text.contains("./test.sh"));
    }
}
