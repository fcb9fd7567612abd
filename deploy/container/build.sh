#!/usr/bin/env bash
# Builds the container image: a static (musl) release binary, then
# deploy/container/Containerfile from a context holding only that binary, the
# default config and the host's CA bundle.
#
#   deploy/container/build.sh                         # image portcullis:<version> for x86_64
#   deploy/container/build.sh --tag cr.lan/portcullis:1 --save portcullis.tar
#   deploy/container/build.sh --arch arm64            # image for linux/arm64 (Raspberry Pi), cross-built
#   deploy/container/build.sh --binary-only           # only the static binary; prints its path
#
# --arch amd64|arm64 is short for --target x86_64-/aarch64-unknown-linux-musl.
# A target of another CPU than the build machine's is cross-compiled with
# `cargo zigbuild` (Zig as the C compiler and linker of ring and aws-lc-sys).
#
# Needs, on Debian 12: musl-tools and `rustup target add x86_64-unknown-linux-musl
# wasm32-wasip2`; docker (or podman: CONTAINER_ENGINE=podman). For arm64 from
# x86_64: cargo-zigbuild and zig (PyPI cargo-zigbuild and ziglang), `rustup target
# add aarch64-unknown-linux-musl`, and binutils-aarch64-linux-gnu for the strip
# (deploy/install-tools.sh installs all of it).
#
# Environment:
#   PORTCULLIS_STATIC_BIN  use this static binary instead of running cargo
#   CARGO_TARGET_DIR       cargo's target directory (default: target/ in the repository)
#   CONTAINER_ENGINE       docker (default) or podman
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO/Cargo.toml" | head -n1)
TAG=portcullis:$VERSION
TARGET=x86_64-unknown-linux-musl
SAVE=
BINARY_ONLY=0
ENGINE=${CONTAINER_ENGINE:-docker}

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --tag) TAG=$2; shift 2 ;;
        --target) TARGET=$2; shift 2 ;;
        --arch)
            case $2 in
                amd64 | x86_64) TARGET=x86_64-unknown-linux-musl ;;
                arm64 | aarch64) TARGET=aarch64-unknown-linux-musl ;;
                *) echo "build.sh: --arch is amd64 or arm64, not $2" >&2; exit 2 ;;
            esac
            shift 2 ;;
        --save) SAVE=$2; shift 2 ;;
        --binary-only) BINARY_ONLY=1; shift ;;
        -h | --help) usage ;;
        *) echo "build.sh: unknown argument $1" >&2; usage 2 >&2 ;;
    esac
done
case $TARGET in
    x86_64-*) PLATFORM=linux/amd64 ;;
    aarch64-*) PLATFORM=linux/arm64 ;;
    *) echo "build.sh: no image platform known for target $TARGET" >&2; exit 2 ;;
esac

log() { echo "build.sh: $*" >&2; }

# --- the static binary

if [[ -n ${PORTCULLIS_STATIC_BIN:-} ]]; then
    BIN=$PORTCULLIS_STATIC_BIN
    log "using $BIN"
else
    started=$SECONDS
    # The same CPU: cargo, with musl-gcc for the C parts. Another CPU: Debian
    # packages no musl C cross compiler, so Zig compiles and links them.
    cargo=(cargo build)
    if [[ ${TARGET%%-*} != $(uname -m) ]]; then
        command -v cargo-zigbuild >/dev/null 2>&1 ||
            { log "cross-building $TARGET needs cargo-zigbuild and zig (bash deploy/install-tools.sh)"; exit 1; }
        cargo=(cargo zigbuild)
    fi
    log "${cargo[*]} --release --target $TARGET"
    # build.rs builds the bundled policies for wasm32-wasip2 with a nested cargo
    # of its own; --target here applies to the registry binary only.
    # The image gets no debug sections: do not make them (less to link, and
    # less disk), unless the caller asks with CARGO_PROFILE_RELEASE_DEBUG.
    (cd "$REPO" && CARGO_PROFILE_RELEASE_DEBUG=${CARGO_PROFILE_RELEASE_DEBUG:-false} \
        "${cargo[@]}" --release --locked --target "$TARGET" --bin portcullis)
    BIN=${CARGO_TARGET_DIR:-$REPO/target}/$TARGET/release/portcullis
    log "static binary built in $((SECONDS - started))s: $BIN"
fi
[[ -x $BIN ]] || { log "$BIN is not an executable"; exit 1; }
# A scratch image has no dynamic loader: refuse a binary that asks for one.
if readelf -lW "$BIN" | grep -q 'Requesting program interpreter'; then
    log "$BIN is dynamically linked; build it for a *-linux-musl target"
    exit 1
fi
if [[ $BINARY_ONLY == 1 ]]; then
    echo "$BIN"
    exit 0
fi

# --- the image, from a context of three files and a directory

CONTEXT=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-image.XXXX")
trap 'rm -rf "$CONTEXT"' EXIT
# The release profile keeps line tables for backtraces (about 100 MB of them):
# the image gets the binary without debug sections, symbols kept.
STRIP=strip
[[ $TARGET == x86_64-* ]] || STRIP=${TARGET%%-*}-linux-gnu-strip
if command -v "$STRIP" >/dev/null 2>&1; then
    "$STRIP" --strip-debug -o "$CONTEXT/portcullis" "$BIN"
else
    log "no $STRIP (binutils for $TARGET): the image gets the binary with its debug sections"
    cp "$BIN" "$CONTEXT/portcullis"
fi
chmod 0755 "$CONTEXT/portcullis"
install -D -m 0644 "$REPO/deploy/container/portcullis.toml" "$CONTEXT/etc/portcullis/portcullis.toml"
if [[ -r /etc/ssl/certs/ca-certificates.crt ]]; then
    install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$CONTEXT/etc/ssl/certs/ca-certificates.crt"
fi
install -d -m 0750 "$CONTEXT/data"

build=("$ENGINE" build --platform "$PLATFORM" -f "$REPO/deploy/container/Containerfile" -t "$TAG")
# The Containerfile needs no BuildKit feature; without the buildx plugin (Debian's
# docker.io) the classic builder is the one there is.
if [[ $ENGINE == docker ]] && ! docker buildx version >/dev/null 2>&1; then
    export DOCKER_BUILDKIT=0
fi
started=$SECONDS
"${build[@]}" "$CONTEXT" >&2
log "image $TAG built in $((SECONDS - started))s"
if [[ -n $SAVE ]]; then
    "$ENGINE" save -o "$SAVE" "$TAG"
    log "saved $TAG to $SAVE (import on a k3s node: k3s ctr images import $SAVE)"
fi
echo "$TAG"
