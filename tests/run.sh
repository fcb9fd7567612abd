#!/usr/bin/env bash
# The whole test suite: formatting, lints, the bundled policies' unit tests,
# the example policies in C, Python and JavaScript built from source, unit and
# integration tests, the fuzz targets for a minute each, then the end-to-end tests with real clients (docker,
# skopeo, podman, registry:2, the container image). deploy/ is validated
# offline (Kubernetes schemas, Traefik CRD subset, systemd-analyze). CI runs it through .ci/run, which installs the
# tools first.
#
# The S3 backend is tested against a real Garage (installed here unless
# already there, with `tests/garage.sh build`: a cargo install of several
# minutes, once): the integration tests where the storage backend matters run
# a second time with PCTEST_BACKEND=s3, and the docker and Distribution
# end-to-end tests once more with E2E_STORAGE=s3, all on one Garage started
# here. tests/s3.rs also runs moto's S3 server, installed here unless there.
set -euo pipefail
cd "$(dirname "$0")/.."
# Some machines point the AWS SDK at a CA bundle of their own; the S3 client
# talks plain HTTP to the Garage on loopback and needs none.
unset AWS_CA_BUNDLE
cargo fmt --all -- --check
(cd fuzz && cargo fmt -- --check)
cargo clippy --all-targets -- -D warnings
(cd policies && cargo fmt --all -- --check && cargo test --locked)
bash examples/policies/build-all.sh
bash deploy/check.sh

# Garage 2.5.0, the S3 store of the S3 backend's tests (kept in
# ~/.cache/portcullis-garage; an installed 2.5.0 is reused at once).
tests/garage.sh build
# moto's S3 server (PyPI): the one store here that enforces conditional
# writes (If-None-Match / If-Match on PUT), as MinIO, Ceph RGW and AWS S3 do;
# tests/s3.rs races tag pushes on it as well as on Garage, which ignores them.
# PCTEST_MOTO_BIN names another moto_server (tests/common/moto.rs).
if [[ -z ${PCTEST_MOTO_BIN:-} ]] &&
    ! "$HOME/.cache/portcullis-moto/bin/moto_server" --help >/dev/null 2>&1; then
    python3 -m venv "$HOME/.cache/portcullis-moto"
    "$HOME/.cache/portcullis-moto/bin/pip" install --quiet "moto[server]==5.2.5"
fi

# The suite's S3 store: its connection facts in PCTEST_S3_*, which the tests
# read (each registry takes a key prefix of its own).
GARAGE_DIR=$(mktemp -d /tmp/pc-garage.XXXX)
trap 'tests/garage.sh stop "$GARAGE_DIR"; rm -rf "$GARAGE_DIR"' EXIT
trap 'exit 130' INT TERM
tests/garage.sh start "$GARAGE_DIR" auto
# shellcheck disable=SC1091 # written by tests/garage.sh start
source "$GARAGE_DIR/env"

cargo test
# The tests of storing and serving content once more, on the S3 backend.
PCTEST_BACKEND=s3 cargo test --test blobs --test uploads --test manifests --test push_pull \
    --test errors --test discovery --test policies --test hostile --test proxy --test memory \
    --test crash
# Each fuzz target for a bounded time (long runs: README.md, "Reliability").
FUZZ_JOBS=2 bash fuzz/run.sh "${FUZZ_SECONDS:-60}"
bash tests/e2e/run.sh
# docker push and pull against a registry whose content is in the Garage, and
# Distribution's S3 driver and portcullis reading each other's keys there.
E2E_STORAGE=s3 bash tests/e2e/run.sh docker distribution
