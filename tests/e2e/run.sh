#!/usr/bin/env bash
# End-to-end tests: real clients (docker, skopeo, podman) and CNCF Distribution
# against a real portcullis binary, all on loopback in a scratch directory.
#
#   bash tests/e2e/run.sh                 # every tests/e2e/test_*.sh
#   bash tests/e2e/run.sh skopeo docker   # only test_skopeo.sh and test_docker.sh
#   bash tests/e2e/run.sh container       # only test_container.sh: the image of deploy/container
#   bash tests/e2e/run.sh tls             # only test_tls.sh: docker login/push/pull over TLS
#   bash tests/e2e/run.sh identity        # only test_identity.sh: accounts, robot and OIDC tokens
#                                         # with docker, podman, skopeo and containerd's ctr
#   bash tests/e2e/run.sh arm64           # only test_arm64.sh: the aarch64 binary and image, run
#                                         # under qemu-aarch64-static; the multi-arch index
#   bash tests/e2e/run.sh ui              # only test_ui.sh: the web UI in headless chromium (selenium):
#                                         # sign-in (password, OIDC), browse, decisions, tokens;
#                                         # screenshots to artifacts/ui-screenshots/
#
# Needs root (dockerd and rootful podman) and, on Debian 12, these packages:
#
#   apt-get install -y docker.io skopeo podman docker-registry python3 curl openssl apache2-utils
#
# the identity and ui tests' OpenID provider needs nodejs and npm, and its package
# installed once (`bash tests/oidc.sh install`, which uses the network);
# the ui test, chromium and chromium-driver, Python selenium in a venv
# (`bash tests/browser.sh install`, PyPI) and the cosign test tool (COSIGN_TOOL,
# which tests/run.sh builds; else the test builds tests/tools/cosign);
# and, for the container test's static binary, musl-tools and
# `rustup target add x86_64-unknown-linux-musl` (deploy/install-tools.sh does both);
# for the arm64 test, qemu-user-static, and to cross-build its binary cargo-zigbuild,
# zig and `rustup target add aarch64-unknown-linux-musl` (deploy/install-tools.sh).
#
# docker.io brings dockerd, containerd and runc; docker-registry is CNCF
# Distribution 2.8 (registry:2); podman pulls in conmon and
# golang-github-containers-common; apache2-utils is htpasswd (the tls test's
# bcrypt accounts), openssl its s_client. No network is used beyond loopback.
#
# The tls test serves TLS on [::1] (dockerd takes every 127.0.0.0/8 registry as
# insecure) under a test host name: while it runs it adds a line to /etc/hosts
# and a CA to /etc/docker/certs.d/<host>:<port>/, and removes both when it ends.
#
# Environment:
#   PORTCULLIS_BIN             binary to test (default: `cargo build`, then target/debug/portcullis)
#   PORTCULLIS_STATIC_BIN      static binary for the container test's image (default: it runs
#                              deploy/container/build.sh, a release musl build)
#   PORTCULLIS_ARM64_BIN       aarch64 static binary for the arm64 test (default: it runs
#                              deploy/container/build.sh --arch arm64 --binary-only)
#   E2E_SKIP                   test names to skip, e.g. "podman"; each counts as neither passed nor failed
#   E2E_KEEP=1                 keep the scratch directory (logs, storage) for a look afterwards
#   E2E_DOCKER_STORAGE_DRIVER  dockerd's storage driver (default vfs: slow, but works everywhere)
#   E2E_STORAGE=s3             portcullis keeps its content in an S3 bucket instead of its root:
#                              the one PCTEST_S3_* describe (source the env file that
#                              `tests/garage.sh start DIR` writes), under a prefix per test
#
# Each check prints `ok - ...` or `not ok - ...`; the last line is the summary.

set -u -o pipefail

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$E2E_DIR/../.." && pwd)
# Each test is a row of the stage table (wall and CPU time).
source "$REPO/tests/stage.sh"

if [[ -z ${PORTCULLIS_BIN:-} ]]; then
    echo "# building portcullis (cargo build)"
    (cd "$REPO" && cargo build --quiet --bin portcullis) || {
        echo "not ok - cargo build"
        echo "e2e: 0 passed, 1 failed"
        exit 1
    }
    PORTCULLIS_BIN=$REPO/target/debug/portcullis
fi
if [[ ! -x $PORTCULLIS_BIN ]]; then
    echo "not ok - PORTCULLIS_BIN=$PORTCULLIS_BIN is an executable"
    echo "e2e: 0 passed, 1 failed"
    exit 1
fi
E2E_PORTCULLIS_BIN=$(cd "$(dirname "$PORTCULLIS_BIN")" && pwd)/$(basename "$PORTCULLIS_BIN")
E2E_STATIC_BIN=
if [[ -n ${PORTCULLIS_STATIC_BIN:-} ]]; then
    E2E_STATIC_BIN=$(cd "$(dirname "$PORTCULLIS_STATIC_BIN")" && pwd)/$(basename "$PORTCULLIS_STATIC_BIN")
fi
E2E_ARM64_BIN=
if [[ -n ${PORTCULLIS_ARM64_BIN:-} ]]; then
    E2E_ARM64_BIN=$(cd "$(dirname "$PORTCULLIS_ARM64_BIN")" && pwd)/$(basename "$PORTCULLIS_ARM64_BIN")
fi
# The server reads every PORTCULLIS_* variable as configuration; these are the runner's.
unset PORTCULLIS_BIN PORTCULLIS_STATIC_BIN PORTCULLIS_ARM64_BIN
case ${E2E_STORAGE:=filesystem} in
filesystem) ;;
s3)
    if [[ -z ${PCTEST_S3_ENDPOINT:-} || -z ${PCTEST_S3_BUCKET:-} || -z ${PCTEST_S3_REGION:-} ||
        -z ${PCTEST_S3_ACCESS_KEY:-} || -z ${PCTEST_S3_SECRET_KEY:-} ]]; then
        echo "not ok - E2E_STORAGE=s3 has its bucket in PCTEST_S3_* (source the env file of tests/garage.sh start)"
        echo "e2e: 0 passed, 1 failed"
        exit 1
    fi
    echo "# storage: S3, bucket $PCTEST_S3_BUCKET at $PCTEST_S3_ENDPOINT"
    # Some machines point the AWS SDK at a CA bundle of their own; not needed on loopback.
    unset AWS_CA_BUNDLE
    ;;
*)
    echo "not ok - E2E_STORAGE=$E2E_STORAGE is filesystem or s3"
    echo "e2e: 0 passed, 1 failed"
    exit 1
    ;;
esac

# Short path: dockerd's unix sockets live below it (108-byte limit).
E2E_TMP=$(mktemp -d /tmp/pc-e2e.XXXX)
child=
cleanup() {
    # A test stopped from outside still gets to stop its daemons first.
    if [[ -n $child ]] && kill -TERM "$child" 2>/dev/null; then
        wait "$child"
    fi
    if [[ ${E2E_KEEP:-} == 1 ]]; then
        echo "# kept $E2E_TMP"
    else
        rm -rf "$E2E_TMP"
    fi
}
stage_at_exit cleanup
trap 'exit 130' INT TERM
export E2E_TMP E2E_PORTCULLIS_BIN E2E_STATIC_BIN E2E_ARM64_BIN E2E_STORAGE

selected=("$@")
passed=0
failed=0
for script in "$E2E_DIR"/test_*.sh; do
    name=$(basename "$script" .sh)
    name=${name#test_}
    if [[ ${#selected[@]} -gt 0 && " ${selected[*]} " != *" $name "* ]]; then
        continue
    fi
    if [[ " ${E2E_SKIP:-} " == *" $name "* ]]; then
        echo "# skipping $name (E2E_SKIP)"
        continue
    fi
    echo "# $name"
    export E2E_RESULTS=$E2E_TMP/$name.results
    : >"$E2E_RESULTS"
    stage_begin
    bash "$script" &
    child=$!
    wait "$child"
    status=$?
    child=
    if [[ $status -ne 0 ]] && ! grep -qx 'not ok' "$E2E_RESULTS"; then
        echo "not ok - $name ran to the end (exit status $status)"
        echo "not ok" >>"$E2E_RESULTS"
    fi
    stage_end "e2e $name ($E2E_STORAGE)" "$(grep -cx 'not ok' "$E2E_RESULTS")"
    passed=$((passed + $(grep -cx 'ok' "$E2E_RESULTS")))
    failed=$((failed + $(grep -cx 'not ok' "$E2E_RESULTS")))
done

# A run that checked nothing (every test skipped, a mistyped name) is no pass.
[[ $passed -gt 0 || $failed -gt 0 ]] || echo "# no checks ran"
echo "e2e: $passed passed, $failed failed"
[[ $failed -eq 0 && $passed -gt 0 ]]
