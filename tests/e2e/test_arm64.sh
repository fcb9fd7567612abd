#!/usr/bin/env bash
# arm64 (Raspberry Pi, k3s): the aarch64-unknown-linux-musl static binary and
# its container image, cross-built on x86_64, and used.
#
#   - the binary is an aarch64 static executable;
#   - the arm64 image is built without emulation (FROM scratch runs nothing at
#     build time), its config says linux/arm64, and it holds that binary;
#   - the image's own binary runs under qemu-aarch64-static on loopback with a
#     temporary storage root and the default config: GET /v2/ answers 200 with
#     the API version header, skopeo pushes an image and an index and pulls them
#     back with the same digests;
#   - with the x86_64 static binary at hand too (E2E_STATIC_BIN), the amd64 and
#     arm64 images are pushed into that registry and joined into one multi-arch
#     index (docker manifest), which lists both platforms and resolves per
#     architecture.
#
# binfmt_misc: where no qemu-aarch64 handler is registered (these containers
# have none), a container of the arm64 image cannot start; the test says so and
# runs the image's binary under qemu-aarch64-static itself. Where one is
# registered, it also runs the image (`docker run --platform linux/arm64`).
#
# The binary comes from E2E_ARM64_BIN (PORTCULLIS_ARM64_BIN, see run.sh), else
# `deploy/container/build.sh --arch arm64 --binary-only` cross-builds it (a
# release build with cargo-zigbuild: many minutes).
source "$(dirname "$0")/lib.sh"
e2e_init arm64
require_tool qemu-aarch64-static qemu-user-static
require_tool file file
require_tool readelf binutils
require_tool skopeo skopeo
require_tool dockerd docker.io
require_tool docker docker.io
require_tool curl curl
[[ $(id -u) == 0 ]] || bail "the arm64 test runs as root (it starts its own dockerd)"
REPO=$(cd "$E2E_DIR/../.." && pwd)
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO/Cargo.toml" | head -n1)

# --- the binary

if [[ -n ${E2E_ARM64_BIN:-} ]]; then
    ARM64_BIN=$E2E_ARM64_BIN
else
    cross_build() {
        timeout --kill-after=10 3600 bash "$REPO/deploy/container/build.sh" --arch arm64 --binary-only >"$WORK/bin.path"
    }
    started=$SECONDS
    check "build.sh --arch arm64 cross-builds the static binary" cross_build || bail "the arm64 binary is built"
    echo "# cross-building took $((SECONDS - started))s"
    ARM64_BIN=$(tail -n1 "$WORK/bin.path")
fi
[[ -x $ARM64_BIN ]] || bail "the arm64 binary $ARM64_BIN is an executable"
file -b "$ARM64_BIN" >"$WORK/file.txt"
output_has "file(1): an aarch64 static executable" 'ELF 64-bit LSB (pie )?executable, ARM aarch64.*(statically|static-pie) linked' \
    "$WORK/file.txt"
expect_eq "it asks for no dynamic loader" none \
    "$(readelf -lW "$ARM64_BIN" | grep -o 'Requesting program interpreter.*' || echo none)"
expect_eq "qemu-aarch64-static runs it: portcullis --version" "portcullis $VERSION" \
    "$(bounded qemu-aarch64-static "$ARM64_BIN" --version 2>&1)"

# --- the arm64 image, built without emulation

start_dockerd
export DOCKER_CONFIG=$WORK/docker-config # docker manifest keeps its lists there
IMAGE=portcullis-e2e:arm64
build_image() {
    # $1: the platform's static binary, $2: --arch, $3: the tag
    timeout --kill-after=10 600 env PORTCULLIS_STATIC_BIN="$1" \
        bash "$REPO/deploy/container/build.sh" --arch "$2" --tag "$3"
}
check "build.sh --arch arm64 builds the arm64 image on x86_64" build_image "$ARM64_BIN" arm64 "$IMAGE" ||
    bail "the arm64 image is built"
expect_eq "the image's config says linux/arm64" "linux/arm64" \
    "$(docker image inspect -f '{{.Os}}/{{.Architecture}}' "$IMAGE")"
# The binary the image holds, from `docker save`: that is what runs below.
IMAGE_BIN=$WORK/portcullis-from-image
image_binary() {
    docker save -o "$WORK/image.tar" "$IMAGE" && python3 - "$WORK/image.tar" "$IMAGE_BIN" <<'EOF'
import json, shutil, sys, tarfile
image = tarfile.open(sys.argv[1])
for layer in json.load(image.extractfile("manifest.json"))[0]["Layers"]:
    files = tarfile.open(fileobj=image.extractfile(layer))
    for m in files:
        if m.name == "usr/local/bin/portcullis":
            with open(sys.argv[2], "wb") as out:
                shutil.copyfileobj(files.extractfile(m), out)
            sys.exit(0)
sys.exit("no usr/local/bin/portcullis in the image")
EOF
}
check "the image holds /usr/local/bin/portcullis" image_binary || bail "the image's binary is extracted"
chmod 0755 "$IMAGE_BIN"
expect_eq "the image's binary is an aarch64 static one too" \
    "$(file -b "$ARM64_BIN" | grep -oE 'ARM aarch64|(statically|static-pie) linked' | tr '\n' ' ')" \
    "$(file -b "$IMAGE_BIN" | grep -oE 'ARM aarch64|(statically|static-pie) linked' | tr '\n' ' ')"

if [[ -r /proc/sys/fs/binfmt_misc/qemu-aarch64 ]] && grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64; then
    expect_eq "binfmt_misc runs the arm64 image: portcullis --version" "portcullis $VERSION" \
        "$(bounded docker run --rm --platform linux/arm64 --entrypoint /usr/local/bin/portcullis "$IMAGE" --version 2>&1)"
else
    echo "# binfmt_misc has no qemu-aarch64 handler here: a container of the arm64 image cannot start,"
    echo "# so its binary runs under qemu-aarch64-static directly instead"
fi

# --- the image's binary, serving on loopback under qemu

cat >"$WORK/portcullis-qemu" <<EOF
#!/bin/sh
exec qemu-aarch64-static "$IMAGE_BIN" "\$@"
EOF
chmod 0755 "$WORK/portcullis-qemu"
E2E_PORTCULLIS_BIN=$WORK/portcullis-qemu
started=$SECONDS
start_portcullis "$WORK/root"
echo "# the emulated registry answered after $((SECONDS - started))s"
REG=$PORTCULLIS_ADDR
tr '\0' ' ' <"/proc/$PORTCULLIS_PID/cmdline" >"$WORK/cmdline.txt"
output_has "the registry is the image's binary under qemu-aarch64-static" "qemu-aarch64-static $IMAGE_BIN" "$WORK/cmdline.txt"
status=$(http_status "http://$REG/v2/")
expect_eq "GET /v2/ answers 200 with Docker-Distribution-API-Version: registry/2.0" "200 registry/2.0" \
    "$status $(awk -F': *' 'tolower($1) == "docker-distribution-api-version" { print $2 }' "$WORK/http.headers" | tr -d '\r')"

LAYOUT=$WORK/layout
python3 "$E2E_DIR/oci_layout.py" build "$LAYOUT" arm64 || bail "the test OCI layout is built"
layout() { python3 "$E2E_DIR/oci_layout.py" "$1" "${3:-$LAYOUT}" "$2"; }
SINGLE=$(layout digest single)
MULTI=$(layout digest multi)
sk() { bounded skopeo --policy "$POLICY" "$@"; }

check "skopeo copy pushes an image into the aarch64 registry" \
    sk copy --dest-tls-verify=false --digestfile "$WORK/pushed.digest" \
    "oci:$LAYOUT:single" "docker://$REG/e2e/arm64:v1"
expect_eq "the push reports the layout's manifest digest" "$SINGLE" "$(cat "$WORK/pushed.digest" 2>/dev/null)"
check "skopeo copy pulls it back" \
    sk copy --src-tls-verify=false "docker://$REG/e2e/arm64:v1" "oci:$WORK/pulled:v1"
expect_eq "the pulled image has the pushed digest" "$SINGLE" "$(layout digest v1 "$WORK/pulled" 2>/dev/null)"
expect_eq "every pulled blob hashes to its digest" "$(layout verify single)" "$(layout verify v1 "$WORK/pulled" 2>&1)"
check "skopeo copy --all pushes an image index" \
    sk copy --all --dest-tls-verify=false "oci:$LAYOUT:multi" "docker://$REG/e2e/arm64:multi"
check "skopeo copy --all pulls it back" \
    sk copy --all --src-tls-verify=false "docker://$REG/e2e/arm64:multi" "oci:$WORK/pulled:multi"
expect_eq "the pulled index has the pushed digest" "$MULTI" "$(layout digest multi "$WORK/pulled" 2>/dev/null)"
expect_eq "the index's children and blobs all came back" "$(layout verify multi)" "$(layout verify multi "$WORK/pulled" 2>&1)"
expect_eq "GET of a manifest that is not there answers 404 MANIFEST_UNKNOWN" "404 MANIFEST_UNKNOWN" \
    "$(http_status "http://$REG/v2/e2e/arm64/manifests/absent") $(json_get "$WORK/http.body" 'j["errors"][0]["code"]' 2>&1)"

# --- the multi-arch index: amd64 + arm64, pushed into the aarch64 registry

if [[ -z ${E2E_STATIC_BIN:-} ]]; then
    echo "# no x86_64 static binary (PORTCULLIS_STATIC_BIN): the multi-arch index is not built"
else
    REPO_REF=$REG/e2e/portcullis
    check "build.sh builds the amd64 image" build_image "$E2E_STATIC_BIN" amd64 "$REPO_REF:$VERSION-amd64" ||
        bail "the amd64 image is built"
    check "docker tag the arm64 image" docker tag "$IMAGE" "$REPO_REF:$VERSION-arm64"
    check "docker push the amd64 image" docker push "$REPO_REF:$VERSION-amd64"
    check "docker push the arm64 image" docker push "$REPO_REF:$VERSION-arm64"
    check "docker manifest create joins them" docker manifest create --insecure "$REPO_REF:$VERSION" \
        "$REPO_REF:$VERSION-amd64" "$REPO_REF:$VERSION-arm64"
    check "docker manifest push pushes the index" docker manifest push --insecure "$REPO_REF:$VERSION"
    sk inspect --tls-verify=false --raw "docker://$REPO_REF:$VERSION" >"$WORK/index.json" 2>"$WORK/inspect.log"
    expect_eq "the index lists linux/amd64 and linux/arm64" "linux/amd64 linux/arm64" \
        "$(json_get "$WORK/index.json" '" ".join(sorted(m["platform"]["os"] + "/" + m["platform"]["architecture"] for m in j["manifests"]))' 2>&1)"
    for arch in amd64 arm64; do
        sk inspect --tls-verify=false --override-os linux --override-arch "$arch" \
            "docker://$REPO_REF:$VERSION" >"$WORK/inspect-$arch.json" 2>"$WORK/inspect.log"
        expect_eq "a $arch client resolves the index to the $arch image" "$arch" \
            "$(json_get "$WORK/inspect-$arch.json" 'j["Architecture"]' 2>&1)"
    done
    docker rmi "$REPO_REF:$VERSION-arm64" >/dev/null 2>&1
    check "docker pull --platform linux/arm64 of the index" \
        docker pull --platform linux/arm64 "$REPO_REF:$VERSION"
    expect_eq "the pulled image is the arm64 one" "linux/arm64 $(docker image inspect -f '{{.Id}}' "$IMAGE")" \
        "$(docker image inspect -f '{{.Os}}/{{.Architecture}} {{.Id}}' "$REPO_REF:$VERSION" 2>&1)"
fi
