#!/usr/bin/env bash
# docker against portcullis, through a private dockerd: push a multi-layer
# image built with the classic builder, pull it back after removing it, push
# again (layers already exist) and push to a second repository (blobs mounted).
source "$(dirname "$0")/lib.sh"
e2e_init docker
require_tool dockerd docker.io
require_tool docker docker.io
require_tool curl curl
[[ $(id -u) == 0 ]] || bail "the docker test runs as root (it starts its own dockerd)"

start_portcullis "$WORK/storage"
REG=$PORTCULLIS_ADDR
start_dockerd

# An image of three layers, one per COPY, from generated files.
CONTEXT=$WORK/context
mkdir -p "$CONTEXT/one"
head -c 300000 /dev/urandom >"$CONTEXT/one/a.bin"
head -c 1000 /dev/urandom >"$CONTEXT/one/b.bin"
head -c 700000 /dev/urandom >"$CONTEXT/two.bin"
echo "portcullis e2e $RANDOM" >"$CONTEXT/three.txt"
cat >"$CONTEXT/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY one/ /data/one/
COPY two.bin /data/two.bin
COPY three.txt /etc/three.txt
LABEL org.opencontainers.image.title="portcullis e2e"
DOCKERFILE

IMAGE=$REG/e2e/docker:v1
DOCKER_BUILDKIT=0 check "docker build (classic builder) makes the image" \
    docker build -t "$IMAGE" "$CONTEXT" || bail "the test image is built"
expect_eq "the image has three layers" 3 "$(docker image inspect -f '{{len .RootFS.Layers}}' "$IMAGE")"
IMAGE_ID=$(docker image inspect -f '{{.Id}}' "$IMAGE")

# --- push

check "docker push to portcullis" docker push "$IMAGE"
cp "$WORK/last.log" "$WORK/push.log"
DIGEST=$(grep -oE 'v1: digest: sha256:[0-9a-f]{64}' "$WORK/push.log" | grep -oE 'sha256:[0-9a-f]{64}')
[[ -n $DIGEST ]] || bail "docker push prints the manifest digest" "$WORK/push.log"
status=$(http_status "http://$REG/v2/e2e/docker/manifests/v1" -I \
    -H 'Accept: application/vnd.docker.distribution.manifest.v2+json')
served=$(grep -i '^docker-content-digest:' "$WORK/http.headers" | tr -d '\r' | cut -d' ' -f2)
expect_eq "portcullis serves the tag with the digest docker pushed" "200 $DIGEST" "$status $served"

# --- pull after removing the local image

check "docker rmi removes the local image" docker rmi "$IMAGE"
if docker image inspect "$IMAGE_ID" >/dev/null 2>&1; then
    not_ok "the image is gone from dockerd"
else
    ok "the image is gone from dockerd"
fi
check "docker pull from portcullis" docker pull "$IMAGE"
expect_eq "docker pull reports the pushed digest" "Digest: $DIGEST" "$(grep -oE 'Digest: sha256:[0-9a-f]{64}' "$WORK/last.log")"
expect_eq "RepoDigests records the pushed digest" "$REG/e2e/docker@$DIGEST" \
    "$(docker image inspect -f '{{range .RepoDigests}}{{println .}}{{end}}' "$IMAGE" | grep -F "$REG/e2e/docker@")"
expect_eq "the pulled image has the built image's ID (same config and layers)" "$IMAGE_ID" \
    "$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>&1)"

mkdir -p "$WORK/out"
docker create --name e2e-content "$IMAGE" /none >/dev/null 2>"$WORK/create.log" ||
    not_ok "docker create from the pulled image" "$WORK/create.log"
defer "docker rm -f e2e-content"
check "the pulled layers hold the built files" bash -c "
    docker cp e2e-content:/data '$WORK/out/data' &&
    docker cp e2e-content:/etc/three.txt '$WORK/out/three.txt' &&
    diff -r '$CONTEXT/one' '$WORK/out/data/one' &&
    cmp '$CONTEXT/two.bin' '$WORK/out/data/two.bin' &&
    cmp '$CONTEXT/three.txt' '$WORK/out/three.txt'"
docker rm -f e2e-content >/dev/null 2>&1

check "docker pull by digest" docker pull "$REG/e2e/docker@$DIGEST"

# --- push again: nothing to upload

check "docker push of the same image again" docker push "$IMAGE"
expect_eq "every layer already exists" 3 "$(grep -c 'Layer already exists' "$WORK/last.log")"
expect_eq "the re-push reports the same digest" "v1: digest: $DIGEST" \
    "$(grep -oE 'v1: digest: sha256:[0-9a-f]{64}' "$WORK/last.log")"

# --- push to another repository: layers are mounted, not uploaded

MOUNTED=$REG/e2e/mounted:v1
docker tag "$IMAGE" "$MOUNTED"
check "docker push to a second repository" docker push "$MOUNTED"
expect_eq "docker mounts all three layers from e2e/docker" 3 "$(grep -c 'Mounted from e2e/docker' "$WORK/last.log")"
expect_eq "portcullis answered the three mount requests with 201" 3 \
    "$(portcullis_requests POST '/v2/e2e/mounted/blobs/uploads/' 201)"
expect_eq "the second repository has the same manifest digest" "v1: digest: $DIGEST" \
    "$(grep -oE 'v1: digest: sha256:[0-9a-f]{64}' "$WORK/last.log")"

docker rmi "$IMAGE" "$MOUNTED" "$REG/e2e/docker@$DIGEST" >"$WORK/rmi.log" 2>&1
check "docker pulls the image from the second repository" docker pull "$MOUNTED"
expect_eq "the image pulled from the second repository is the same image" "$IMAGE_ID" \
    "$(docker image inspect -f '{{.Id}}' "$MOUNTED" 2>&1)"

# --- tag immutability: the same registry, now with the bundled policy on

stop_portcullis
cat >"$WORK/immutable.toml" <<'TOML'
[[policy.chain]]
name = "immutable-releases"
module = "builtin:tag-immutability"
settings = { tags = ["v*", "!*-rc*"] }
TOML
start_portcullis "$WORK/storage" "$WORK/immutable.toml"
REG2=$PORTCULLIS_ADDR
RELEASE=$REG2/e2e/docker:v1
docker tag "$MOUNTED" "$RELEASE"
check "docker re-push of the same image to the immutable tag v1 is allowed" docker push "$RELEASE"
echo "changed $RANDOM" >"$CONTEXT/three.txt"
DOCKER_BUILDKIT=0 check "docker build of a different image" docker build -t "$RELEASE" "$CONTEXT"
if bounded docker push "$RELEASE" >"$WORK/last.log" 2>&1; then
    not_ok "docker push of a different image to the immutable tag v1 fails" "$WORK/last.log"
else
    ok "docker push of a different image to the immutable tag v1 fails"
fi
expect_eq "docker shows the policy's message" \
    "denied: denied by policy immutable-releases: tag v1 in e2e/docker is immutable: it points to $DIGEST; push under a new tag instead" \
    "$(grep -oE 'denied: denied by policy.*' "$WORK/last.log" | head -n1)"
status=$(http_status "http://$REG2/v2/e2e/docker/manifests/v1" -I \
    -H 'Accept: application/vnd.docker.distribution.manifest.v2+json')
served=$(grep -i '^docker-content-digest:' "$WORK/http.headers" | tr -d '\r' | cut -d' ' -f2)
expect_eq "v1 still names the first image" "200 $DIGEST" "$status $served"
