//! Builds the bundled policies in `policies/` for `wasm32-wasip2` and hands
//! them to the registry as `OUT_DIR/<name>.wasm`, embedded in the binary as
//! `builtin:<name>`. (`policies/misbehave`, a test fixture, is built too but
//! not embedded: tests load it from `target/policies`.) A nested cargo with its own target directory, with the
//! outer build's flags and wrappers removed (they are for the host, not Wasm).

use std::path::{Path, PathBuf};
use std::process::Command;

const POLICIES: [&str; 4] = [
    "repo-allowlist",
    "group-access",
    "tag-immutability",
    "signature",
];

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    let policies = root.join("policies");
    for watched in ["Cargo.toml", "Cargo.lock", ".cargo/config.toml"] {
        println!(
            "cargo:rerun-if-changed={}",
            policies.join(watched).display()
        );
    }
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    for dir in ["patterns", "misbehave"].into_iter().chain(POLICIES) {
        println!("cargo:rerun-if-changed={}", policies.join(dir).display());
    }

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = root.join("target/policies");
    let mut command = Command::new(cargo);
    command
        .current_dir(&policies)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "wasm32-wasip2",
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_MANIFEST_PATH",
    ] {
        command.env_remove(var);
    }
    let status = command.status();
    let ok = matches!(status, Ok(s) if s.success());
    if !ok {
        panic!(
            "building the bundled policies failed ({status:?}).\n\
             They are built for the wasm32-wasip2 target: install it with\n\
             \n    rustup target add wasm32-wasip2\n"
        );
    }
    for name in POLICIES {
        let built = target_dir
            .join("wasm32-wasip2/release")
            .join(format!("{}.wasm", name.replace('-', "_")));
        copy(&built, &out.join(format!("{name}.wasm")));
    }
}

fn copy(from: &Path, to: &Path) {
    if let Err(e) = std::fs::copy(from, to) {
        panic!("cannot copy {} to {}: {e}", from.display(), to.display());
    }
}
