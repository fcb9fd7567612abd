#!/usr/bin/env bash
# The container image of deploy/container: built by deploy/container/build.sh
# from the static binary, run by a private dockerd the way Kubernetes runs it
# (read-only root, no capabilities, its own non-root user), and used: an image
# pushed into the containerized registry with skopeo comes back with the same
# digest, the stored files belong to the container's user, and a stop is graceful.
#
# Building the static binary is a release build for x86_64-unknown-linux-musl
# (musl-tools and that rustup target: deploy/install-tools.sh); E2E_STATIC_BIN
# (from PORTCULLIS_STATIC_BIN, see run.sh) reuses one instead.
source "$(dirname "$0")/lib.sh"
e2e_init container
require_tool dockerd docker.io
require_tool docker docker.io
require_tool skopeo skopeo
require_tool curl curl
require_tool readelf binutils
[[ $(id -u) == 0 ]] || bail "the container test runs as root (it starts its own dockerd)"
REPO=$(cd "$E2E_DIR/../.." && pwd)

if [[ -z ${E2E_STATIC_BIN:-} ]]; then
    command -v musl-gcc >/dev/null 2>&1 ||
        bail "musl-gcc is installed, for the static binary (bash deploy/install-tools.sh)"
    rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl ||
        bail "the rustup target x86_64-unknown-linux-musl is installed (bash deploy/install-tools.sh)"
fi

start_dockerd

# --- the image

IMAGE=portcullis-e2e:latest
# A cold release build takes many minutes on two cores: not under the step timeout.
build_image() {
    local static=()
    [[ -n ${E2E_STATIC_BIN:-} ]] && static=(PORTCULLIS_STATIC_BIN="$E2E_STATIC_BIN")
    timeout --kill-after=10 3600 env "${static[@]}" bash "$REPO/deploy/container/build.sh" --tag "$IMAGE"
}
started=$SECONDS
if ! check "deploy/container/build.sh builds the static binary and the image" build_image; then
    # The linker's own complaint is buried in a long command line: show it,
    # and the machine's room, so a CI failure explains itself.
    grep -E 'error(\[|:)|= note: .*(ld|collect2|undefined|cannot|No space|Killed|signal|relocation)|No space left' \
        "$WORK/last.log" | cut -c1-400 | tail -n 15 | sed 's/^/#   /'
    df -h / "${CARGO_TARGET_DIR:-$REPO/target}" 2>&1 | sed 's/^/#   /'
    free -m | sed 's/^/#   /'
    bail "the image is built"
fi
echo "# building took $((SECONDS - started))s"
grep -E '^build.sh: (static binary|image)' "$WORK/last.log" | sed 's/^/# /'

expect_eq "the image runs as the numeric non-root user 65532" "65532:65532" \
    "$(docker image inspect -f '{{.Config.User}}' "$IMAGE")"
expect_eq "the image declares the storage volume and port 5000" "map[/var/lib/portcullis:{}] map[5000/tcp:{}]" \
    "$(docker image inspect -f '{{.Config.Volumes}} {{.Config.ExposedPorts}}' "$IMAGE")"
# The files of every layer, from `docker save` (an exported container would add
# the runtime's own /etc/hosts, /dev, ...).
image_files() {
    docker save -o "$WORK/image.tar" "$IMAGE" && python3 - "$WORK/image.tar" <<'EOF'
import json, sys, tarfile
image = tarfile.open(sys.argv[1])
names = set()
for layer in json.load(image.extractfile("manifest.json"))[0]["Layers"]:
    names.update(m.name for m in tarfile.open(fileobj=image.extractfile(layer)) if not m.isdir())
print(" ".join(sorted(names)))
EOF
}
expect_eq "the image holds the binary, its config and the CA bundle, nothing else" \
    "etc/portcullis/portcullis.toml etc/ssl/certs/ca-certificates.crt usr/local/bin/portcullis" \
    "$(image_files 2>&1)"
expect_eq "the image is small (under 100 MB)" "yes" \
    "$(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{ print ($1 < 100000000) ? "yes" : "no: " $1 " bytes" }')"

# --- running it as Kubernetes does

PORT=$(free_port)
REG=127.0.0.1:$PORT
VOLUME=portcullis-e2e-data
NAME=portcullis-e2e
CONTAINER_LOG=$WORK/container.log
# dockerd runs with --bridge=none: the host's loopback, on an ephemeral port.
run_registry() {
    docker run -d --name "$NAME" --network host \
        --read-only --cap-drop ALL --security-opt no-new-privileges \
        -v "$VOLUME:/var/lib/portcullis" \
        -e PORTCULLIS_LISTEN="$REG" -e PORTCULLIS_LOG=info \
        "$IMAGE" --log-format json
}
defer "docker volume rm -f $VOLUME"
defer "docker rm -f $NAME"
check "the image runs with a read-only root, no capabilities and no-new-privileges" run_registry ||
    bail "the container starts"
container_pid() { docker inspect -f '{{.State.Pid}}' "$NAME"; }
# wait_registry: GET /v2/ answers 200 while the container runs (its pid is 0 once it exited).
wait_registry() {
    local pid
    pid=$(container_pid) && [[ $pid -gt 0 ]] && wait_http_ok "http://$REG/v2/" 30 "$pid"
}
if ! wait_registry; then
    docker logs "$NAME" >"$CONTAINER_LOG" 2>&1
    bail "the containerized portcullis answers GET /v2/ with 200" "$CONTAINER_LOG"
fi
ok "the containerized portcullis answers GET /v2/ with 200"

expect_eq "its process runs as uid and gid 65532, not root" "65532 65532" \
    "$(awk '/^Uid:/ { u = $2 } /^Gid:/ { g = $2 } END { print u, g }' "/proc/$(container_pid)/status")"
expect_eq "its process has no capabilities" "0000000000000000" \
    "$(awk '/^CapEff:/ { print $2 }' "/proc/$(container_pid)/status")"

expect_eq "GET /healthz answers 200" 200 "$(http_status "http://$REG/healthz")"
expect_eq "GET /readyz answers 200 (storage writable, policy chain loaded)" 200 "$(http_status "http://$REG/readyz")"
status=$(http_status "http://$REG/metrics")
expect_eq "GET /metrics answers 200 in the Prometheus text format" "200 yes" \
    "$status $(grep -q '^# TYPE ' "$WORK/http.body" && echo yes || echo no)"

# --- push and pull

LAYOUT=$WORK/layout
python3 "$E2E_DIR/oci_layout.py" build "$LAYOUT" container || bail "the test OCI layout is built"
layout() { python3 "$E2E_DIR/oci_layout.py" "$1" "${3:-$LAYOUT}" "$2"; }
SINGLE=$(layout digest single)
sk() { bounded skopeo --policy "$POLICY" "$@"; }

check "skopeo copy pushes an image into the containerized registry" \
    sk copy --dest-tls-verify=false --digestfile "$WORK/pushed.digest" \
    "oci:$LAYOUT:single" "docker://$REG/e2e/container:v1"
expect_eq "the push reports the layout's manifest digest" "$SINGLE" "$(cat "$WORK/pushed.digest" 2>/dev/null)"
check "skopeo copy pulls it back" \
    sk copy --src-tls-verify=false "docker://$REG/e2e/container:v1" "oci:$WORK/pulled:v1"
expect_eq "the pulled image has the pushed digest" "$SINGLE" "$(layout digest v1 "$WORK/pulled" 2>/dev/null)"
expect_eq "every pulled blob hashes to its digest" "$(layout verify single)" "$(layout verify v1 "$WORK/pulled" 2>&1)"

# The volume, seen from the host: everything in it belongs to the container's
# user, and nothing is world-writable.
DATA=$(docker volume inspect -f '{{.Mountpoint}}' "$VOLUME")
expect_eq "the pushed blobs are in the volume" "yes" \
    "$([[ -f $DATA/docker/registry/v2/blobs/sha256/${SINGLE:7:2}/${SINGLE#sha256:}/data ]] && echo yes || echo no)"
# find_or_none FIND-ARGS...: the first matches, or "none".
find_or_none() {
    local found
    found=$(find "$DATA" "$@" | head -n 5)
    echo "${found:-none}"
}
expect_eq "every file in the volume belongs to uid 65532" none "$(find_or_none ! -uid 65532 -printf '%p %U\n')"
expect_eq "nothing in the volume is world-writable" none "$(find_or_none -perm -o+w -printf '%p %m\n')"

# --- stop and start again

check "docker stop ends the registry gracefully within 30 s" docker stop -t 30 "$NAME"
expect_eq "the registry exits with status 0 on SIGTERM (not killed)" 0 \
    "$(docker inspect -f '{{.State.ExitCode}}' "$NAME")"
check "the stopped container starts again" docker start "$NAME"
if wait_registry; then
    sk inspect --tls-verify=false --raw "docker://$REG/e2e/container:v1" >"$WORK/raw.json" 2>"$WORK/inspect.log"
    expect_eq "after the restart the image is still served from the volume" "$SINGLE" "$(sha256_of "$WORK/raw.json")"
else
    docker logs "$NAME" >"$CONTAINER_LOG" 2>&1
    not_ok "the restarted registry answers GET /v2/" "$CONTAINER_LOG"
fi
docker logs "$NAME" >"$CONTAINER_LOG" 2>&1
expect_eq "the container logged JSON lines to stderr" "yes" \
    "$(python3 -c 'import json, sys; lines = [l for l in open(sys.argv[1]) if l.strip()]; [json.loads(l) for l in lines]; print("yes" if lines else "no lines")' "$CONTAINER_LOG" 2>&1 | tail -n1)"
