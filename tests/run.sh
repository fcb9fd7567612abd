#!/usr/bin/env bash
# The whole test suite: formatting, lints, the bundled policies' unit tests,
# the example policies in C, Python and JavaScript built from source, unit and
# integration tests, the fuzz targets for a minute each, then the end-to-end tests with real clients (docker,
# skopeo, podman, registry:2, the container image). deploy/ is validated
# offline (Kubernetes schemas, Traefik CRD subset, systemd-analyze). CI runs it through .ci/run, which installs the
# tools first.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
(cd fuzz && cargo fmt -- --check)
cargo clippy --all-targets -- -D warnings
(cd policies && cargo fmt --all -- --check && cargo test --locked)
bash examples/policies/build-all.sh
bash deploy/check.sh
cargo test
# Each fuzz target for a bounded time (long runs: README.md, "Reliability").
FUZZ_JOBS=2 bash fuzz/run.sh "${FUZZ_SECONDS:-60}"
bash tests/e2e/run.sh
