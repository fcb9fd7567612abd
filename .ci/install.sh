#!/usr/bin/env bash
# What the test suite needs that is not Rust, on a fresh Debian 12 machine, as
# root: every Debian package in one apt-get run, then the PyPI and npm tools.
# None of it is CPU-bound, so .ci/run runs it in the background while cargo
# builds. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
packages=(
    # The real clients of the end-to-end tests; docker-registry is CNCF
    # Distribution 2.8.2, for the layout interop tests.
    docker.io skopeo podman docker-registry
    # The proxy in front of the server in tests/real_client.rs.
    haproxy
    ca-certificates python3 python3-venv curl openssl apache2-utils
    # The example policies in C (examples/policies/install-toolchains.sh).
    clang-19 lld-19 wasi-libc libclang-rt-19-dev-wasm32
    # deploy/install-tools.sh: systemd-analyze, and musl for the static binary;
    # for the arm64 one, cross-built with Zig, its strip, and qemu-aarch64-static
    # to run it in tests/e2e/test_arm64.sh.
    systemd musl-tools qemu-user-static binutils-aarch64-linux-gnu file
    # The web UI's real-browser test (tests/e2e/test_ui.sh): headless Chromium
    # and its WebDriver, /usr/bin/chromedriver, which tests/browser.sh's
    # selenium is pointed at (nothing downloads a driver or a browser).
    chromium chromium-driver
)
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
# The scripts below find their packages installed and go straight to PyPI and npm.
bash examples/policies/install-toolchains.sh
# --arm64: ziglang 0.17.0 and cargo-zigbuild 0.24.0 from PyPI (pinned there);
# .ci/run's rustup stage adds the aarch64-unknown-linux-musl target.
bash deploy/install-tools.sh --no-rust --arm64
bash tests/moto.sh install
bash tests/oidc.sh install
bash tests/browser.sh install
