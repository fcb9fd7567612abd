#!/usr/bin/env bash
# moto's S3 server (PyPI), the one store here that enforces conditional writes
# (If-None-Match / If-Match on PUT) as MinIO, Ceph RGW and AWS S3 do:
# tests/s3.rs races tag pushes on it as well as on Garage, which ignores them.
#
#   tests/moto.sh install   a venv in ~/.cache/portcullis-moto with moto[server] 5.2.5,
#                           unless its moto_server already runs (or PCTEST_MOTO_BIN is set)
#
# PCTEST_MOTO_BIN names another moto_server (tests/common/moto.rs).
set -euo pipefail
MOTO_VERSION=5.2.5
VENV=$HOME/.cache/portcullis-moto

case ${1:-} in
install)
    if [[ -n ${PCTEST_MOTO_BIN:-} ]] || "$VENV/bin/moto_server" --help >/dev/null 2>&1; then
        exit 0
    fi
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
    ;;
*)
    sed -n '2,8p' "$0" >&2
    exit 2
    ;;
esac
