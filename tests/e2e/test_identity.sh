#!/usr/bin/env bash
# A home lab with accounts: nodes and friends pull public/** anonymously,
# people push after `docker login`. One portcullis with an htpasswd (alice,
# bob), groups, a robot token and a real OpenID provider, against real
# clients: docker (private dockerd), podman, skopeo and containerd's ctr.
source "$(dirname "$0")/lib.sh"
e2e_init identity
for tool in dockerd:docker.io docker:docker.io ctr:containerd podman:podman skopeo:skopeo \
    node:nodejs npm:npm curl:curl python3:python3; do
    require_tool "${tool%%:*}" "${tool#*:}"
done
[[ $(id -u) == 0 ]] || bail "the identity test runs as root (dockerd, rootful podman)"
REPO=$(cd "$E2E_DIR/../.." && pwd)
PASSWORD=change-me # examples/htpasswd's alice and bob

# --- a real OpenID provider (oauth2-mock-server)

start_oidc_provider

# --- portcullis: examples/config-groups.toml, plus the OpenID issuer, whose
# group "ci" may push to ci/**, and robot tokens re-read every second

ROOT=$WORK/storage
CONFIG=$WORK/identity.toml
cat >"$CONFIG" <<TOML
[storage]
root = "$ROOT"

[auth]
htpasswd = "$REPO/examples/htpasswd"
realm = "portcullis"
robot_token_refresh = "1s"

[[auth.oidc]]
issuer = "$ISSUER"
audience = "portcullis"
groups_claim = "groups"
group_prefix = ""

[groups]
devs = ["alice"]
ops = ["bob"]

[[policy.chain]]
name = "team-access"
module = "builtin:group-access"
[policy.chain.settings]
authenticated = [{ repositories = ["**"], actions = ["pull", "list"] }]
anonymous = [{ repositories = ["public/**"], actions = ["pull"] }]
[policy.chain.settings.groups]
devs = [{ repositories = ["team-a/**"], actions = ["pull", "push", "list"] }]
ops = [{ repositories = ["**"], actions = ["pull", "push", "delete", "list"] }]
ci = [{ repositories = ["ci/**"], actions = ["pull", "push", "list"] }]

[[policy.chain]]
name = "known-namespaces"
module = "builtin:repo-allowlist"
settings = { push = ["team-a/**", "team-b/**", "public/**", "ci/**"], pull = ["**"], list = ["**"], delete = ["**"] }

[[policy.chain]]
name = "immutable-releases"
module = "builtin:tag-immutability"
settings = { tags = ["v[0-9]*", "!*-rc*"], repositories = ["team-a/**", "team-b/**"] }
TOML
launch_portcullis 127.0.0.1:0 "$ROOT" "$CONFIG"
REG=$PORTCULLIS_ADDR
for ((i = 0; i < 100; i++)); do
    [[ $(http_status "http://$REG/healthz") == 200 ]] && break
    sleep 0.1
done
[[ $(http_status "http://$REG/healthz") == 200 ]] || bail "portcullis answers /healthz" "$PORTCULLIS_LOG"
# pc ARGS...: the portcullis CLI on the same configuration and storage.
pc() { bounded env "${STORAGE_ENV[@]}" "$E2E_PORTCULLIS_BIN" "$@" --config "$CONFIG"; }

status=$(http_status "http://$REG/v2/")
expect_eq "GET /v2/ without credentials is 401 with a Bearer challenge" \
    "401 Bearer realm=\"http://$REG/token\",service=\"portcullis\"" \
    "$status $(grep -i '^www-authenticate:' "$WORK/http.headers" | tr -d '\r' | cut -d' ' -f2-)"

# --- docker: bob seeds public/ and team-a/

export DOCKER_CONFIG=$WORK/docker-config # the CLI's credentials, not root's
mkdir -p "$DOCKER_CONFIG"
start_dockerd
docker_login() { bounded docker login "$REG" -u "$1" --password-stdin <<<"$2"; }

CONTEXT=$WORK/context
mkdir -p "$CONTEXT"
head -c 100000 /dev/urandom >"$CONTEXT/data.bin"
echo "home lab $RANDOM" >"$CONTEXT/hello.txt"
printf 'FROM scratch\nCOPY data.bin /data.bin\nCOPY hello.txt /hello.txt\n' >"$CONTEXT/Dockerfile"
PUBLIC=$REG/public/hello:1
DOCKER_BUILDKIT=0 check "docker build (classic builder) makes the image" \
    docker build -t "$PUBLIC" "$CONTEXT" || bail "the test image is built"
IMAGE_ID=$(docker image inspect -f '{{.Id}}' "$PUBLIC")
docker tag "$PUBLIC" "$REG/team-a/app:seed"

check "docker login as bob" docker_login bob "$PASSWORD"
output_has "docker says Login Succeeded" 'Login Succeeded' "$WORK/last.log"
check "bob (ops) pushes public/hello:1" docker push "$PUBLIC"
check "bob (ops) pushes team-a/app:seed" docker push "$REG/team-a/app:seed"
check "docker logout" docker logout "$REG"

# --- docker, anonymous: public/ yes, team-a/ no

check "docker rmi removes the local images" docker rmi "$PUBLIC" "$REG/team-a/app:seed"
check "anonymous docker pull of public/hello:1" docker pull "$PUBLIC"
expect_eq "the pulled image is the built one" "$IMAGE_ID" "$(docker image inspect -f '{{.Id}}' "$PUBLIC" 2>&1)"
refused "anonymous docker pull of team-a/app:seed is refused: pull access denied, may require 'docker login'" \
    "pull access denied for $REG/team-a/app, repository does not exist or may require 'docker login'" \
    docker pull "$REG/team-a/app:seed"
if (($(portcullis_requests GET /v2/team-a/app/manifests/seed 401) > 0)); then
    ok "portcullis answered the anonymous team-a manifest request with 401"
else
    not_ok "portcullis answered the anonymous team-a manifest request with 401" "$PORTCULLIS_LOG"
fi

# --- docker, alice (devs): team-a/ yes, team-b/ no

check "docker login -u alice --password-stdin" docker_login alice "$PASSWORD"
output_has "docker says Login Succeeded" 'Login Succeeded' "$WORK/last.log"
check "docker pull of team-a/app:seed as alice" docker pull "$REG/team-a/app:seed"
docker tag "$PUBLIC" "$REG/team-a/app:alice"
check "alice pushes team-a/app:alice" docker push "$REG/team-a/app:alice"
docker tag "$PUBLIC" "$REG/team-b/app:alice"
refused "alice's push to team-b/app is denied (she is not ops)" 'denied' docker push "$REG/team-b/app:alice"
expect_eq "team-b/app:alice does not exist (asked as bob)" 404 \
    "$(http_status "http://$REG/v2/team-b/app/manifests/alice" -I -u "bob:$PASSWORD")"
check "docker logout" docker logout "$REG"

# --- a robot token: docker login with it, push, revoke, refused

pc token create --user ci-bot --groups ops --description "home lab CI" >"$WORK/robot.out" 2>"$WORK/robot.err" ||
    not_ok "portcullis token create" "$WORK/robot.err"
ROBOT=$(grep -oE '^pcr_[0-9a-f]{16}_[A-Za-z0-9_-]+$' "$WORK/robot.out")
ROBOT_ID=${ROBOT:4:16}
[[ -n $ROBOT ]] || bail "portcullis token create prints pcr_<id>_<secret> on stdout" "$WORK/robot.out" "$WORK/robot.err"
ok "portcullis token create prints pcr_<id>_<secret> on stdout"
robot_listed() { pc token list | grep -F "$ROBOT_ID"; }
check "portcullis token list shows the robot token" robot_listed
check "docker login -u ci-bot with the robot token" docker_login ci-bot "$ROBOT"
docker tag "$PUBLIC" "$REG/team-b/robot:1"
check "the robot (ops) pushes team-b/robot:1" docker push "$REG/team-b/robot:1"
check "portcullis token revoke" pc token revoke "$ROBOT_ID"
started=$SECONDS
revoked=
while ((SECONDS - started < 15)); do
    if ! docker_login ci-bot "$ROBOT" >"$WORK/login.log" 2>&1; then
        revoked=yes
        break
    fi
    sleep 0.5
done
if [[ -n $revoked ]]; then
    ok "within 15 s docker login with the revoked token fails ($((SECONDS - started)) s)"
    output_has "docker reports the login as unauthorized" 'unauthorized|401' "$WORK/login.log"
else
    not_ok "within 15 s docker login with the revoked token fails" "$WORK/login.log"
fi
docker tag "$PUBLIC" "$REG/team-b/robot:2"
refused "docker push with the login stored before the revocation is refused" \
    'unauthorized|denied|authentication required' docker push "$REG/team-b/robot:2"
check "docker logout" docker logout "$REG"

# --- an OpenID Connect ID token as the password

curl -sS -X POST -H 'Content-Type: application/json' -o "$WORK/mint.json" \
    -d '{"sub":"ci-job","aud":"portcullis","groups":["ci"],"exp_in":900}' "$CONTROL/mint" 2>"$WORK/mint.log"
ID_TOKEN=$(json_get "$WORK/mint.json" 'j["token"]' 2>/dev/null) || bail "the provider mints an ID token" "$WORK/mint.log"
check "docker login with an ID token (sub ci-job, groups [ci])" docker_login ci-job "$ID_TOKEN"
output_has "docker says Login Succeeded" 'Login Succeeded' "$WORK/last.log"
docker tag "$PUBLIC" "$REG/ci/app:1"
check "ci-job (OIDC group ci) pushes ci/app:1" docker push "$REG/ci/app:1"
docker tag "$PUBLIC" "$REG/team-a/app:ci"
refused "ci-job's push to team-a/app is denied" 'denied' docker push "$REG/team-a/app:ci"
check "docker logout" docker logout "$REG"

# --- skopeo: anonymous copy of public/, not of team-a/; --creds to push

export DOCKER_CONFIG=$WORK/no-docker-config REGISTRY_AUTH_FILE=$WORK/containers-auth.json
echo '{"auths": {}}' >"$REGISTRY_AUTH_FILE" # podman login writes here
sk() { bounded skopeo --policy "$POLICY" "$@"; }
check "anonymous skopeo copy of public/hello:1 into an OCI layout" \
    sk copy --src-tls-verify=false "docker://$PUBLIC" "oci:$WORK/oci:hello"
refused "anonymous skopeo copy of team-a/app:seed is refused" 'denied|unauthorized' \
    skopeo --policy "$POLICY" copy --src-tls-verify=false "docker://$REG/team-a/app:seed" "oci:$WORK/oci:seed"
refused "skopeo copy to team-a/ without credentials is refused" 'denied|unauthorized|authentication required' \
    skopeo --policy "$POLICY" copy --dest-tls-verify=false "oci:$WORK/oci:hello" "docker://$REG/team-a/skopeo:anon"
check "skopeo copy --dest-creds alice:... pushes team-a/skopeo:1" \
    sk copy --dest-tls-verify=false --dest-creds "alice:$PASSWORD" "oci:$WORK/oci:hello" "docker://$REG/team-a/skopeo:1"
check "skopeo inspect --creds alice:... reads team-a/skopeo:1" \
    sk inspect --tls-verify=false --creds "alice:$PASSWORD" "docker://$REG/team-a/skopeo:1"

# --- podman: anonymous pull of public/, push to team-a/ after podman login

PODMAN_DIR=$WORK/podman
mkdir -p "$PODMAN_DIR/networks" "$PODMAN_DIR/tmp"
export CONTAINERS_CONF=$PODMAN_DIR/containers.conf CONTAINERS_STORAGE_CONF=$PODMAN_DIR/storage.conf \
    CONTAINERS_REGISTRIES_CONF=$PODMAN_DIR/registries.conf
printf '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\nevents_logfile_path = "%s"\ntmp_dir = "%s"\n[network]\nnetwork_config_dir = "%s"\n' \
    "$PODMAN_DIR/events.log" "$PODMAN_DIR/tmp" "$PODMAN_DIR/networks" >"$CONTAINERS_CONF"
printf '[storage]\ndriver = "vfs"\ngraphroot = "%s"\nrunroot = "%s"\n' "$PODMAN_DIR/root" "$PODMAN_DIR/runroot" >"$CONTAINERS_STORAGE_CONF"
echo 'unqualified-search-registries = []' >"$CONTAINERS_REGISTRIES_CONF"
pm() { bounded podman --root "$PODMAN_DIR/root" --runroot "$PODMAN_DIR/runroot" --storage-driver vfs "$@"; }
check "anonymous podman pull of public/hello:1" pm pull --signature-policy "$POLICY" --tls-verify=false "$PUBLIC"
expect_eq "podman pulled the built image" "$IMAGE_ID" "sha256:$(pm image inspect --format '{{.Id}}' "$PUBLIC" 2>&1)"
pm tag "$PUBLIC" "$REG/team-a/podman:1" >/dev/null 2>&1
refused "podman push to team-a/ before podman login is refused" 'denied|unauthorized|authentication required' \
    podman --root "$PODMAN_DIR/root" --runroot "$PODMAN_DIR/runroot" --storage-driver vfs \
    push --signature-policy "$POLICY" --tls-verify=false "$REG/team-a/podman:1"
check "podman login -u alice --password-stdin" bash -c \
    "podman login --tls-verify=false -u alice --password-stdin '$REG' <<<'$PASSWORD'"
check "podman pushes team-a/podman:1 as alice" \
    pm push --signature-policy "$POLICY" --tls-verify=false "$REG/team-a/podman:1"
check "podman logout" podman logout "$REG"

# --- containerd's ctr, on dockerd's own containerd (a namespace of its own)

CTR_SOCK=$WORK/docker/exec/containerd/containerd.sock
[[ -S $CTR_SOCK ]] || bail "dockerd's containerd listens on $CTR_SOCK"
ctrd() { bounded ctr --address "$CTR_SOCK" --namespace portcullis-e2e-ctr "$@"; }
check "anonymous ctr images pull --plain-http of public/hello:1" \
    ctrd images pull --plain-http --snapshotter native "$PUBLIC"
check "ctr images tag team-a/ctr:1" ctrd images tag "$PUBLIC" "$REG/team-a/ctr:1"
refused "anonymous ctr images push to team-a/ is refused" 'insufficient_scope|denied|unauthorized' \
    ctr --address "$CTR_SOCK" --namespace portcullis-e2e-ctr images push --plain-http "$REG/team-a/ctr:1"
oauth_before=$(portcullis_requests POST /token 200)
check "ctr images push --plain-http --user alice:... to team-a/ctr:1" \
    ctrd images push --plain-http --user "alice:$PASSWORD" "$REG/team-a/ctr:1"
if (($(portcullis_requests POST /token 200) > oauth_before)); then
    ok "containerd got its token by POST /token (OAuth grant_type=password)"
else
    not_ok "containerd got its token by POST /token (OAuth grant_type=password)" "$PORTCULLIS_LOG"
fi
expect_eq "team-a/ctr:1 exists (asked as alice)" 200 \
    "$(http_status "http://$REG/v2/team-a/ctr/manifests/1" -I -u "alice:$PASSWORD" \
        -H 'Accept: application/vnd.docker.distribution.manifest.v2+json')"
check "ctr images rm" ctrd images rm "$PUBLIC" "$REG/team-a/ctr:1"
