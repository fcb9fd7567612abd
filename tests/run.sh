#!/usr/bin/env bash
# The whole test suite: formatting, the bundled policies' unit tests, one
# test build of the server linted by clippy, then with its binary the example policies in
# C, Python and JavaScript built from source, the offline deploy/ checks
# (Kubernetes schemas, Traefik CRD subset, systemd-analyze), the unit and
# integration tests, the fuzz targets for a minute each, and the end-to-end
# tests with real clients (docker, skopeo, podman, registry:2, the container
# image). CI runs it through .ci/run, which installs the tools first.
#
# The S3 backend is tested against a real Garage (installed here unless
# already there, with `tests/garage.sh build`: a cargo install of several
# minutes, once): the integration tests where the storage backend matters run
# a second time with PCTEST_BACKEND=s3, and the docker and Distribution
# end-to-end tests once more with E2E_STORAGE=s3, all on one Garage started
# here. tests/s3.rs also runs moto's S3 server (tests/moto.sh installs it).
#
# Each build happens once: the server binary of every script below is the one
# `cargo test` builds (a plain `cargo build` would build a second one, see
# TEST_BIN), and the container image gets the one static musl build.
# Every stage prints its wall and CPU time; the run ends with their table.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/stage.sh
# Some machines point the AWS SDK at a CA bundle of their own; the S3 client
# talks plain HTTP to the Garage on loopback and needs none.
unset AWS_CA_BUNDLE
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}

stage "fmt" bash -c 'cargo fmt --all -- --check && cd fuzz && cargo fmt -- --check'
stage "policies: fmt and unit tests" bash -c 'cd policies && cargo fmt --all -- --check && cargo test --locked'

# The one debug build of the server, linted as it is built. `cargo clippy
# --all-targets -- -D warnings` is `cargo check` with clippy-driver as the
# workspace's rustc wrapper and its arguments in CLIPPY_ARGS; a check makes
# every dependency once more as metadata (5 minutes of two cores here). The
# same wrapper and arguments on the test build lint every target of this
# crate (lib, bin, tests, benches: --all-targets) with the same lints, and
# every later `cargo test` gets them too, so that nothing is rebuilt.
CLIPPY_DRIVER=$(rustup which clippy-driver 2>/dev/null || command -v clippy-driver) || {
    echo "tests/run.sh: no clippy-driver (rustup component add clippy)" >&2
    exit 1
}
LINTED=(env RUSTC_WORKSPACE_WRAPPER="$CLIPPY_DRIVER" CLIPPY_ARGS=-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__)
# `cargo test` builds the binary for the integration tests. Dev-dependencies
# widen two crates' features in that build (figment gets `test`, getrandom
# 0.2 gets `std` through rand 0.8), which changes the hashes of 18 units above
# them (ring, rustls, object_store, reqwest, the portcullis lib and bin, ...):
# a `cargo build --bin portcullis` before or after it compiles all of those a
# second time. So every script below is handed this binary instead.
stage "build: cargo test --all-targets --no-run, with clippy" \
    "${LINTED[@]}" cargo test --all-targets --no-run
TEST_BIN=$TARGET_DIR/debug/portcullis
[[ -x $TEST_BIN ]] || {
    echo "tests/run.sh: cargo test --no-run left no $TEST_BIN" >&2
    exit 1
}

stage "examples: C, Python and JS policies" \
    env PORTCULLIS="$TEST_BIN" bash examples/policies/build-all.sh
stage "policy new: a rust, js, python and c project each builds and passes its cases" \
    env PORTCULLIS="$TEST_BIN" bash tests/scaffold.sh
stage "deploy: offline checks" env PORTCULLIS_BIN="$TEST_BIN" bash deploy/check.sh

# Garage 2.5.0 (kept in ~/.cache/portcullis-garage; an installed 2.5.0 is
# reused at once) and moto's S3 server.
stage "install: Garage, moto and the OpenID provider, unless there" bash -c 'tests/garage.sh build && tests/moto.sh install && tests/oidc.sh install'

# The independent cosign implementation the signature tests check against
# (the sigstore crate; a workspace of its own, never in the server's build).
stage "build: cosign-tool (sigstore crate, tests only)" bash -c \
    'cd tests/tools/cosign && CARGO_TARGET_DIR=../../../target/cosign-tool cargo build --locked'
export COSIGN_TOOL="$PWD/target/cosign-tool/debug/cosign-tool"

# The suite's S3 store: its connection facts in PCTEST_S3_*, which the tests
# read (each registry takes a key prefix of its own).
GARAGE_DIR=$(mktemp -d /tmp/pc-garage.XXXX)
stage_at_exit 'tests/garage.sh stop "$GARAGE_DIR"; rm -rf "$GARAGE_DIR"'
trap 'exit 130' INT TERM
tests/garage.sh start "$GARAGE_DIR" auto
# shellcheck disable=SC1091 # written by tests/garage.sh start
source "$GARAGE_DIR/env"

stage "cargo test (filesystem; s3.rs on Garage, moto)" "${LINTED[@]}" cargo test
# The tests of storing and serving content once more, on the S3 backend
# (and of identity: robot tokens live in the bucket, shared by replicas; and
# of the web UI: its sign-outs too, and the storage page's numbers).
stage "cargo test (again on S3: Garage)" "${LINTED[@]}" PCTEST_BACKEND=s3 cargo test \
    --test blobs --test uploads --test manifests --test push_pull --test errors --test discovery \
    --test policies --test hostile --test proxy --test memory --test crash --test accounts \
    --test sandbox --test identity --test signatures --test gc --test ui
# Each fuzz target for a bounded time (long runs: README.md, "Reliability").
stage "fuzz: build, then ${FUZZ_SECONDS:-60} s a target" env FUZZ_JOBS=2 bash fuzz/run.sh "${FUZZ_SECONDS:-60}"

# The container image's static binary: the one musl release build of the run.
# (build.sh --binary-only prints its path last; the stage's own lines go to
# the terminal, not into that file.)
build_static() { bash deploy/container/build.sh --binary-only >"$GARAGE_DIR/static-bin"; }
if [[ -n ${PORTCULLIS_STATIC_BIN:-} ]]; then
    STATIC_BIN=$PORTCULLIS_STATIC_BIN
else
    stage "build: static binary (release, musl)" build_static
    STATIC_BIN=$(tail -n 1 "$GARAGE_DIR/static-bin")
fi
# The arm64 one, cross-built with cargo-zigbuild (tests/e2e/test_arm64.sh runs
# it under qemu-aarch64-static and joins both images into a multi-arch index).
# Same target directory: the build scripts and proc macros of the x86_64
# build above can be reused (host units: same profile, flags and features).
build_arm64() { bash deploy/container/build.sh --arch arm64 --binary-only >"$GARAGE_DIR/arm64-bin"; }
if [[ -n ${PORTCULLIS_ARM64_BIN:-} ]]; then
    ARM64_BIN=$PORTCULLIS_ARM64_BIN
else
    stage "build: static binary (release, musl, aarch64 cross-built)" build_arm64
    ARM64_BIN=$(tail -n 1 "$GARAGE_DIR/arm64-bin")
fi
stage "e2e (filesystem)" env PORTCULLIS_BIN="$TEST_BIN" PORTCULLIS_STATIC_BIN="$STATIC_BIN" \
    PORTCULLIS_ARM64_BIN="$ARM64_BIN" bash tests/e2e/run.sh
# docker push and pull against a registry whose content is in the Garage, and
# Distribution's S3 driver and portcullis reading each other's keys there.
stage "e2e (S3: docker, Distribution)" env PORTCULLIS_BIN="$TEST_BIN" E2E_STORAGE=s3 \
    bash tests/e2e/run.sh docker distribution
