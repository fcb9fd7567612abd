#!/usr/bin/env bash
# podman (rootful, vfs storage of its own) against portcullis: build an image,
# push it, remove it, pull it back and compare digest, image ID and files;
# then the same round trip as a Docker schema 2 image.
source "$(dirname "$0")/lib.sh"
e2e_init podman
require_tool podman podman
require_tool curl curl
[[ $(id -u) == 0 ]] || bail "the podman test runs as root (rootful podman)"

start_portcullis "$WORK/storage"
REG=$PORTCULLIS_ADDR

# podman's storage, state and configuration all live in $WORK, not the host's.
PODMAN_DIR=$WORK/podman
mkdir -p "$PODMAN_DIR/networks" "$PODMAN_DIR/tmp"
export CONTAINERS_CONF=$PODMAN_DIR/containers.conf
export CONTAINERS_STORAGE_CONF=$PODMAN_DIR/storage.conf
export CONTAINERS_REGISTRIES_CONF=$PODMAN_DIR/registries.conf
cat >"$CONTAINERS_CONF" <<CONF
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$PODMAN_DIR/events.log"
tmp_dir = "$PODMAN_DIR/tmp"
[network]
network_config_dir = "$PODMAN_DIR/networks"
CONF
cat >"$CONTAINERS_STORAGE_CONF" <<CONF
[storage]
driver = "vfs"
graphroot = "$PODMAN_DIR/root"
runroot = "$PODMAN_DIR/runroot"
CONF
echo 'unqualified-search-registries = []' >"$CONTAINERS_REGISTRIES_CONF"
pm() {
    bounded podman --root "$PODMAN_DIR/root" --runroot "$PODMAN_DIR/runroot" --storage-driver vfs "$@"
}

CONTEXT=$WORK/context
mkdir -p "$CONTEXT"
head -c 200000 /dev/urandom >"$CONTEXT/one.bin"
head -c 50000 /dev/urandom >"$CONTEXT/two.bin"
cat >"$CONTEXT/Containerfile" <<'CONTAINERFILE'
FROM scratch
COPY one.bin /data/one.bin
COPY two.bin /data/two.bin
CONTAINERFILE

IMAGE=$REG/e2e/podman:v1
check "podman build makes the image" pm build -t "$IMAGE" "$CONTEXT" || bail "the test image is built"
IMAGE_ID=$(pm image inspect --format '{{.Id}}' "$IMAGE")

# round_trip DESCRIPTION REFERENCE [PUSH OPTIONS...]: push, remove, pull, compare.
round_trip() {
    local what=$1 ref=$2 digest
    shift 2
    rm -f "$WORK/pushed.digest"
    check "podman push of the $what" \
        pm push --signature-policy "$POLICY" --tls-verify=false --digestfile "$WORK/pushed.digest" "$@" "$IMAGE" "$ref"
    digest=$(cat "$WORK/pushed.digest" 2>/dev/null)
    local repo=${ref#"$REG"/} status served
    status=$(http_status "http://$REG/v2/${repo%:*}/manifests/${repo##*:}" -I)
    served=$(grep -i '^docker-content-digest:' "$WORK/http.headers" | tr -d '\r' | cut -d' ' -f2)
    expect_eq "portcullis serves the $what with the digest podman pushed" "200 $digest" "$status $served"

    check "podman rmi of the $what" pm rmi --force "$IMAGE_ID"
    check "podman pull of the $what" pm pull --signature-policy "$POLICY" --tls-verify=false "$ref"
    expect_eq "the pulled $what has the pushed digest" "$digest" "$(pm image inspect --format '{{.Digest}}' "$ref" 2>&1)"
    expect_eq "the pulled $what has the built image's ID" "$IMAGE_ID" "$(pm image inspect --format '{{.Id}}' "$ref" 2>&1)"
    local root
    if root=$(pm image mount "$ref" 2>"$WORK/mount.log"); then
        check "the pulled $what holds the built files" \
            bash -c "cmp '$CONTEXT/one.bin' '$root/data/one.bin' && cmp '$CONTEXT/two.bin' '$root/data/two.bin'"
        pm image unmount "$ref" >/dev/null 2>&1
    else
        not_ok "podman image mount of the $what" "$WORK/mount.log"
    fi
    pm tag "$ref" "$IMAGE"
}

round_trip "an OCI image" "$IMAGE"
round_trip "a Docker schema 2 image" "$REG/e2e/podman-docker:v1" --format v2s2
