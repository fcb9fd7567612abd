#!/usr/bin/env bash
# Interoperability with CNCF Distribution (registry:2) on the same storage root,
# both ways: what Distribution stored, portcullis serves; what portcullis
# stored, Distribution serves. Covers OCI and Docker schema 2 manifests, an
# OCI index, a second tag, a cross-repository mount and a deleted manifest.
# With E2E_STORAGE=s3 the "root" is a prefix in the PCTEST_S3_* bucket that
# both write to: portcullis's storage.prefix, Distribution's S3 driver's
# rootdirectory (lib.sh, s3_prefix).
source "$(dirname "$0")/lib.sh"
e2e_init distribution
require_tool skopeo skopeo
require_tool "${DOCKER_REGISTRY:-docker-registry}" docker-registry
require_tool curl curl

LAYOUT=$WORK/layout
python3 "$E2E_DIR/oci_layout.py" build "$LAYOUT" distribution || bail "the test OCI layout is built"
layout() { python3 "$E2E_DIR/oci_layout.py" "$1" "${3:-$LAYOUT}" "$2"; }
SINGLE=$(layout digest single)
MULTI=$(layout digest multi)

sk() { bounded skopeo --policy "$POLICY" "$@"; }

# push WRITER REGISTRY: the same set of images, whichever registry stores them.
# Sets DOCKER_DIGEST (the v2s2 conversion of "other", known only after the push).
push_images() {
    local writer=$1 reg=$2
    check "$writer: skopeo pushes an OCI image" \
        sk copy --dest-tls-verify=false "oci:$LAYOUT:single" "docker://$reg/interop/oci:v1"
    check "$writer: skopeo tags it v2 (registry-to-registry copy)" \
        sk copy --src-tls-verify=false --dest-tls-verify=false \
        "docker://$reg/interop/oci:v1" "docker://$reg/interop/oci:v2"
    check "$writer: skopeo pushes a Docker schema 2 image" \
        sk copy --dest-tls-verify=false --format v2s2 --digestfile "$WORK/docker.digest" \
        "oci:$LAYOUT:other" "docker://$reg/interop/docker:v1"
    DOCKER_DIGEST=$(cat "$WORK/docker.digest" 2>/dev/null)
    check "$writer: skopeo copy --all pushes an OCI index" \
        sk copy --all --dest-tls-verify=false "oci:$LAYOUT:multi" "docker://$reg/interop/multi:v1"
    # Same registry, so skopeo mounts the blobs rather than uploading them.
    check "$writer: skopeo copies the image to a second repository" \
        sk copy --src-tls-verify=false --dest-tls-verify=false \
        "docker://$reg/interop/oci:v1" "docker://$reg/interop/mounted:v1"
    check "$writer: skopeo pushes a tag that is then deleted" \
        sk copy --dest-tls-verify=false --format v2s2 "oci:$LAYOUT:multi" "docker://$reg/interop/deleted:v1"
    check "$writer: skopeo delete removes it" \
        sk delete --tls-verify=false "docker://$reg/interop/deleted:v1"
}

# served_digest REGISTRY REFERENCE: the digest of the manifest bytes served.
served_digest() {
    if sk inspect --tls-verify=false --raw "docker://$1/$2" >"$WORK/raw.json" 2>"$WORK/inspect.log"; then
        sha256_of "$WORK/raw.json"
    else
        cat "$WORK/inspect.log" >&2
    fi
}

# pull_images READER REGISTRY: reads back everything push_images wrote.
pull_images() {
    local reader=$1 reg=$2 dir=$WORK/pulled-by-$1
    mkdir -p "$dir"
    expect_eq "$reader serves the OCI image's manifest unchanged" "$SINGLE" "$(served_digest "$reg" interop/oci:v1)"
    expect_eq "$reader serves tag v2 as the same manifest" "$SINGLE" "$(served_digest "$reg" interop/oci:v2)"
    expect_eq "$reader serves the Docker schema 2 manifest unchanged" "$DOCKER_DIGEST" "$(served_digest "$reg" interop/docker:v1)"
    expect_eq "$reader serves the index unchanged" "$MULTI" "$(served_digest "$reg" interop/multi:v1)"
    expect_eq "$reader serves the mounted image" "$SINGLE" "$(served_digest "$reg" interop/mounted:v1)"

    check "$reader: skopeo pulls the OCI image with its blobs" \
        sk copy --src-tls-verify=false "docker://$reg/interop/oci:v1" "oci:$dir/oci:v1"
    expect_eq "$reader: the pulled OCI image has the pushed digest and intact blobs" \
        "$SINGLE $(layout verify single)" "$(layout digest v1 "$dir/oci" 2>/dev/null) $(layout verify v1 "$dir/oci" 2>&1)"
    check "$reader: skopeo pulls the Docker schema 2 image with its blobs" \
        sk copy --src-tls-verify=false "docker://$reg/interop/docker:v1" "dir:$dir/docker"
    expect_eq "$reader: the pulled Docker image has the pushed digest" "$DOCKER_DIGEST" "$(sha256_of "$dir/docker/manifest.json" 2>/dev/null)"
    check "$reader: skopeo copy --all pulls the index with both platforms" \
        sk copy --all --src-tls-verify=false "docker://$reg/interop/multi:v1" "oci:$dir/multi:v1"
    expect_eq "$reader: the pulled index has the pushed digest and intact blobs" \
        "$MULTI $(layout verify multi)" "$(layout digest v1 "$dir/multi" 2>/dev/null) $(layout verify v1 "$dir/multi" 2>&1)"
    check "$reader: skopeo pulls the mounted image with its blobs" \
        sk copy --src-tls-verify=false "docker://$reg/interop/mounted:v1" "oci:$dir/mounted:v1"

    if sk list-tags --tls-verify=false "docker://$reg/interop/oci" >"$WORK/tags.json" 2>"$WORK/tags.log"; then
        expect_eq "$reader: skopeo list-tags lists both tags" '["v1", "v2"]' "$(json_get "$WORK/tags.json" 'sorted(j["Tags"])')"
    else
        not_ok "$reader: skopeo list-tags docker://$reg/interop/oci" "$WORK/tags.log"
    fi
    if sk inspect --tls-verify=false --raw "docker://$reg/interop/deleted:v1" >"$WORK/deleted.log" 2>&1; then
        not_ok "$reader: the deleted manifest stays deleted (it is served)" "$WORK/deleted.log"
    elif grep -qi 'manifest unknown' "$WORK/deleted.log"; then
        ok "$reader: the deleted manifest stays deleted"
    else
        not_ok "$reader: the deleted manifest stays deleted (not manifest unknown)" "$WORK/deleted.log"
    fi
    if [[ $(http_status "http://$reg/v2/_catalog") == 200 ]]; then
        expect_eq "$reader: GET /v2/_catalog lists the repositories" \
            '["interop/docker", "interop/mounted", "interop/multi", "interop/oci"]' \
            "$(json_get "$WORK/http.body" 'sorted(r for r in j["repositories"] if r != "interop/deleted")')"
    else
        not_ok "$reader: GET /v2/_catalog answers 200" "$WORK/http.body"
    fi
}

echo "# (a) Distribution writes, portcullis reads"
ROOT=$WORK/written-by-distribution
start_distribution "$ROOT"
push_images distribution "$DISTRIBUTION_ADDR"
stop_distribution
start_portcullis "$ROOT"
pull_images portcullis "$PORTCULLIS_ADDR"
stop_portcullis

echo "# (b) portcullis writes, Distribution reads"
ROOT=$WORK/written-by-portcullis
start_portcullis "$ROOT"
push_images portcullis "$PORTCULLIS_ADDR"
mounts=$(portcullis_requests POST '/v2/interop/mounted/blobs/uploads/' 201)
if [[ $mounts -gt 0 ]]; then
    ok "portcullis: the copy to a second repository mounted $mounts blob(s) (POST ...?mount= answered 201)"
else
    not_ok "portcullis: the copy to a second repository mounted its layers (no POST ...?mount= answered 201)" "$PORTCULLIS_LOG"
fi
stop_portcullis
start_distribution "$ROOT"
pull_images distribution "$DISTRIBUTION_ADDR"
stop_distribution
