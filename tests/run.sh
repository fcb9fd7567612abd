#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests, then the
# end-to-end tests with real clients (docker, skopeo, registry:2).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets
bash tests/e2e/run.sh
