#!/usr/bin/env bash
# skopeo against portcullis: copy an OCI image in and back out, inspect it,
# list its tags, round-trip a multi-arch index with --all, delete a manifest.
source "$(dirname "$0")/lib.sh"
e2e_init skopeo
require_tool skopeo skopeo

start_portcullis "$WORK/storage"
REG=$PORTCULLIS_ADDR
LAYOUT=$WORK/layout
python3 "$E2E_DIR/oci_layout.py" build "$LAYOUT" skopeo || bail "the test OCI layout is built"
layout() { python3 "$E2E_DIR/oci_layout.py" "$1" "${3:-$LAYOUT}" "$2"; }
SINGLE=$(layout digest single)
OTHER=$(layout digest other)
MULTI=$(layout digest multi)

sk() { bounded skopeo --policy "$POLICY" "$@"; }

# expect_manifest_unknown DESCRIPTION REFERENCE: inspect must fail with MANIFEST_UNKNOWN.
expect_manifest_unknown() {
    if sk inspect --tls-verify=false --raw "docker://$2" >"$WORK/inspect.log" 2>&1; then
        not_ok "$1 (inspect succeeded)" "$WORK/inspect.log"
    elif grep -qi 'manifest unknown' "$WORK/inspect.log"; then
        ok "$1"
    else
        not_ok "$1 (inspect failed, but not with manifest unknown)" "$WORK/inspect.log"
    fi
}

# --- a single image: copy in, inspect, copy out

check "skopeo copy pushes an OCI image to portcullis" \
    sk copy --dest-tls-verify=false --digestfile "$WORK/pushed.digest" \
    "oci:$LAYOUT:single" "docker://$REG/skopeo/app:v1"
expect_eq "skopeo copy reports the layout's manifest digest" "$SINGLE" "$(cat "$WORK/pushed.digest" 2>/dev/null)"

if sk inspect --tls-verify=false "docker://$REG/skopeo/app:v1" >"$WORK/inspect.json" 2>"$WORK/inspect.log"; then
    expect_eq "skopeo inspect shows the pushed digest" "$SINGLE" "$(json_get "$WORK/inspect.json" 'j["Digest"]')"
    expect_eq "skopeo inspect shows the image's layers" \
        "$(python3 -c 'import json, sys; print(json.dumps([l["digest"] for l in json.load(open(sys.argv[1]))["layers"]]))' \
            "$LAYOUT/blobs/sha256/${SINGLE#sha256:}")" \
        "$(json_get "$WORK/inspect.json" 'j["Layers"]')"
    expect_eq "skopeo inspect reads the image config (labels)" '{"e2e.image": "single", "e2e.seed": "skopeo"}' \
        "$(json_get "$WORK/inspect.json" 'j["Labels"]')"
else
    not_ok "skopeo inspect docker://$REG/skopeo/app:v1" "$WORK/inspect.log"
fi

sk inspect --tls-verify=false --raw "docker://$REG/skopeo/app:v1" >"$WORK/raw.json" 2>"$WORK/inspect.log"
expect_eq "the manifest served is byte-identical to the one pushed" "$SINGLE" "$(sha256_of "$WORK/raw.json")"

check "skopeo copy pulls the image back into an OCI layout" \
    sk copy --src-tls-verify=false "docker://$REG/skopeo/app:v1" "oci:$WORK/pulled:v1"
expect_eq "the pulled image has the pushed digest" "$SINGLE" "$(layout digest v1 "$WORK/pulled" 2>/dev/null)"
expect_eq "every pulled blob hashes to its digest" "$(layout verify single)" "$(layout verify v1 "$WORK/pulled" 2>&1)"

# --- tags: a registry-to-registry copy, and a second image to delete later

check "skopeo copies v1 to v2 within portcullis" \
    sk copy --src-tls-verify=false --dest-tls-verify=false \
    "docker://$REG/skopeo/app:v1" "docker://$REG/skopeo/app:v2"
check "skopeo copy pushes a second image as tag doomed" \
    sk copy --dest-tls-verify=false "oci:$LAYOUT:other" "docker://$REG/skopeo/app:doomed"
if sk list-tags --tls-verify=false "docker://$REG/skopeo/app" >"$WORK/tags.json" 2>"$WORK/tags.log"; then
    expect_eq "skopeo list-tags lists every tag" '["doomed", "v1", "v2"]' "$(json_get "$WORK/tags.json" 'sorted(j["Tags"])')"
else
    not_ok "skopeo list-tags docker://$REG/skopeo/app" "$WORK/tags.log"
fi

# --- a multi-arch index with --all

check "skopeo copy --all pushes a two-platform OCI index" \
    sk copy --all --dest-tls-verify=false --digestfile "$WORK/multi.digest" \
    "oci:$LAYOUT:multi" "docker://$REG/skopeo/multi:v1"
expect_eq "skopeo copy --all reports the index digest" "$MULTI" "$(cat "$WORK/multi.digest" 2>/dev/null)"
sk inspect --tls-verify=false --raw "docker://$REG/skopeo/multi:v1" >"$WORK/index.json" 2>"$WORK/inspect.log"
expect_eq "the index served is byte-identical to the one pushed" "$MULTI" "$(sha256_of "$WORK/index.json")"
for child in $(layout children multi); do
    sk inspect --tls-verify=false --raw "docker://$REG/skopeo/multi@$child" >"$WORK/child.json" 2>"$WORK/inspect.log"
    expect_eq "platform manifest $child is served by digest" "$child" "$(sha256_of "$WORK/child.json")"
done
sk inspect --tls-verify=false --override-arch arm64 "docker://$REG/skopeo/multi:v1" >"$WORK/arm64.json" 2>"$WORK/inspect.log"
expect_eq "skopeo inspect --override-arch arm64 picks the arm64 image from the index" "multi-arm64 arm64" \
    "$(json_get "$WORK/arm64.json" 'j["Labels"]["e2e.image"] + " " + j["Architecture"]' 2>/dev/null)"

check "skopeo copy --all pulls the index back into a new OCI layout" \
    sk copy --all --src-tls-verify=false "docker://$REG/skopeo/multi:v1" "oci:$WORK/multi-pulled:v1"
expect_eq "the pulled index has the pushed digest" "$MULTI" "$(layout digest v1 "$WORK/multi-pulled" 2>/dev/null)"
expect_eq "the pulled index lists the same platform manifests" \
    "$(layout children multi | tr '\n' ' ')" "$(layout children v1 "$WORK/multi-pulled" 2>/dev/null | tr '\n' ' ')"
expect_eq "every blob of both platforms was pulled and hashes to its digest" \
    "$(layout verify multi)" "$(layout verify v1 "$WORK/multi-pulled" 2>&1)"

# --- delete

check "skopeo delete removes the doomed image" \
    sk delete --tls-verify=false "docker://$REG/skopeo/app:doomed"
expect_manifest_unknown "the deleted tag is manifest unknown" "$REG/skopeo/app:doomed"
expect_manifest_unknown "the deleted manifest is manifest unknown by digest" "$REG/skopeo/app@$OTHER"
if sk list-tags --tls-verify=false "docker://$REG/skopeo/app" >"$WORK/tags.json" 2>"$WORK/tags.log"; then
    expect_eq "skopeo list-tags no longer lists the deleted tag" '["v1", "v2"]' "$(json_get "$WORK/tags.json" 'sorted(j["Tags"])')"
else
    not_ok "skopeo list-tags after the delete" "$WORK/tags.log"
fi
sk inspect --tls-verify=false --raw "docker://$REG/skopeo/app:v1" >"$WORK/raw.json" 2>"$WORK/inspect.log"
expect_eq "the other image is untouched by the delete" "$SINGLE" "$(sha256_of "$WORK/raw.json")"
