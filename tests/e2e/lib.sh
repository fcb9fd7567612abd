# Shared helpers for the end-to-end tests; sourced by every tests/e2e/test_*.sh.
#
# What lives here: TAP-style reporting (`ok` / `not_ok` / `check`), starting and
# stopping the daemons a test needs (portcullis, CNCF Distribution, dockerd) on
# loopback with ephemeral ports, and a cleanup stack that runs on any exit.
# What does not: the tests themselves; each test_*.sh is one user story.
#
# run.sh exports E2E_TMP (the run's scratch directory), E2E_RESULTS (where
# each check is recorded) and E2E_PORTCULLIS_BIN before running a test.

set -u -o pipefail

# shellcheck disable=SC2034 # used by the test scripts that source this file
E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
: "${E2E_TMP:?run the e2e tests through tests/e2e/run.sh}"
: "${E2E_RESULTS:?run the e2e tests through tests/e2e/run.sh}"
: "${E2E_PORTCULLIS_BIN:?run the e2e tests through tests/e2e/run.sh}"

# ---------------------------------------------------------------- reporting

# Prints a file's last lines as TAP diagnostics, so a failure explains itself
# even though the scratch directory is removed afterwards.
diag() {
    local file=$1 lines=${2:-25}
    [[ -s $file ]] || return 0
    echo "#   --- last lines of $(basename "$file") ---"
    tail -n "$lines" "$file" | sed 's/^/#   /'
}

ok() {
    echo "ok - $1"
    echo "ok" >>"$E2E_RESULTS"
}

# not_ok DESCRIPTION [LOGFILE...]
not_ok() {
    local description=$1
    shift
    echo "not ok - $description"
    echo "not ok" >>"$E2E_RESULTS"
    local file
    for file in "$@"; do diag "$file"; done
}

# A client that hangs on a server bug fails its step instead of stalling the run.
E2E_STEP_TIMEOUT=${E2E_STEP_TIMEOUT:-180}

# bounded COMMAND...: runs an external command under the step timeout.
bounded() {
    timeout --kill-after=10 "$E2E_STEP_TIMEOUT" "$@"
}

# check DESCRIPTION COMMAND...: one check, passing when COMMAND succeeds.
# The command's output goes to $WORK/last.log, shown if it fails.
# COMMAND is an external program (run bounded) or a shell function (bounded itself).
check() {
    local description=$1
    shift
    local run=(bounded)
    declare -F "$1" >/dev/null && run=()
    if "${run[@]}" "$@" >"$WORK/last.log" 2>&1; then
        ok "$description"
    else
        not_ok "$description" "$WORK/last.log"
        return 1
    fi
}

# output_has DESCRIPTION ERE FILE: FILE (a client's output) matches ERE,
# ignoring case; the matching line is shown.
output_has() {
    if grep -qiE "$2" "$3"; then
        ok "$1"
        grep -m1 -iE "$2" "$3" | cut -c1-240 | sed 's/^/#   /'
    else
        not_ok "$1" "$3"
    fi
}

# refused DESCRIPTION ERE COMMAND...: COMMAND (run bounded) fails, and says ERE.
refused() {
    local description=$1 ere=$2
    shift 2
    if bounded "$@" >"$WORK/last.log" 2>&1; then
        not_ok "$description" "$WORK/last.log"
    else
        output_has "$description" "$ere" "$WORK/last.log"
    fi
}

# expect_eq DESCRIPTION EXPECTED ACTUAL
expect_eq() {
    if [[ -n $2 && $2 == "$3" ]]; then
        ok "$1"
    else
        not_ok "$1"
        echo "#   expected: '$2'"
        echo "#   actual:   '$3'"
        return 1
    fi
}

# bail DESCRIPTION [LOGFILE...]: a step the rest of the test needs has failed.
bail() {
    not_ok "$@"
    exit 1
}

# ---------------------------------------------------------------- cleanup

CLEANUP=()

# defer COMMAND: run COMMAND (a string) when the test exits, last deferred first.
defer() {
    CLEANUP+=("$1")
}

run_cleanup() {
    local status=$? i
    trap - EXIT INT TERM
    for ((i = ${#CLEANUP[@]} - 1; i >= 0; i--)); do
        eval "${CLEANUP[i]}" >/dev/null 2>&1 || true
    done
    exit "$status"
}
trap run_cleanup EXIT
trap 'exit 130' INT TERM

# e2e_init NAME: creates this test's scratch directory $WORK under $E2E_TMP.
e2e_init() {
    WORK=$(mktemp -d "$E2E_TMP/$1.XXXX")
    export TMPDIR=$WORK/tmp
    mkdir -p "$TMPDIR"
    # skopeo and podman refuse to copy without a signature policy; accept
    # anything rather than depend on the host's /etc/containers/policy.json.
    POLICY=$WORK/policy.json
    echo '{"default":[{"type":"insecureAcceptAnything"}]}' >"$POLICY"
}

# Whether PID is still a process this test started, not a reused number.
is_our_child() {
    [[ $(awk '/^PPid:/ { print $2 }' "/proc/$1/status" 2>/dev/null) == "$$" ]]
}

# stop_pid PID [SECONDS]: SIGTERM, then SIGKILL if it is still alive after SECONDS.
stop_pid() {
    local pid=$1 timeout=${2:-10} i
    is_our_child "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < timeout * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# ---------------------------------------------------------------- helpers

require_tool() {
    command -v "$1" >/dev/null 2>&1 || bail "$1 is installed (apt-get install $2)"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# http_status URL [CURL ARGS...]: prints the status code, body to $WORK/http.body.
http_status() {
    local url=$1
    shift
    curl -sS -o "$WORK/http.body" -D "$WORK/http.headers" -w '%{http_code}' "$@" "$url" 2>>"$WORK/curl.log" || true
}

# wait_http_ok URL SECONDS PID: waits for URL to answer 200 while PID lives.
wait_http_ok() {
    local url=$1 timeout=$2 pid=$3 i
    for ((i = 0; i < timeout * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || return 1
        [[ $(http_status "$url") == 200 ]] && return 0
        sleep 0.1
    done
    return 1
}

sha256_of() {
    sha256sum "$1" | cut -d' ' -f1 | sed 's/^/sha256:/'
}

# json_get FILE EXPR: evaluates a Python expression over the parsed JSON `j`.
json_get() {
    python3 -c 'import json, sys; j = json.load(open(sys.argv[1])); r = eval(sys.argv[2]); print(r if isinstance(r, str) else json.dumps(r, sort_keys=True))' "$1" "$2"
}

# start_oidc_provider: installs (once) and starts the real OpenID provider of
# tests/oidc/provider.mjs (oauth2-mock-server; /authorize answers at once with
# a code for its user johndoe), stopped when the test ends. Sets ISSUER and
# CONTROL (its URL and its control port's); bails if it does not start.
start_oidc_provider() {
    check "the OpenID provider is installed (tests/oidc.sh install)" bash "$E2E_DIR/../oidc.sh" install ||
        bail "the OpenID provider is installed"
    node "$E2E_DIR/../oidc/provider.mjs" >"$WORK/oidc.json" 2>"$WORK/oidc.log" &
    local pid=$! i
    defer "stop_pid $pid"
    for ((i = 0; i < 300; i++)); do
        [[ -s $WORK/oidc.json ]] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    ISSUER=$(json_get "$WORK/oidc.json" 'j["issuer"]' 2>/dev/null) ||
        bail "the OpenID provider starts" "$WORK/oidc.log"
    CONTROL=$(json_get "$WORK/oidc.json" 'j["control"]')
}

# ---------------------------------------------------------------- portcullis

# s3_prefix ROOT: the key prefix that stands for ROOT with E2E_STORAGE=s3, one
# of this run's, this test's and ROOT's own: each start on the same ROOT, of
# portcullis or of Distribution, sees the same content, as on the filesystem.
s3_prefix() {
    echo "e2e/${E2E_TMP##*/}/${WORK##*/}/${1##*/}"
}

# storage_env ROOT: sets STORAGE_ENV to the storage settings of a portcullis
# on ROOT, as environment assignments. With E2E_STORAGE=s3 the content goes to
# the S3 bucket given by PCTEST_S3_* (tests/garage.sh start writes them), under
# ROOT's prefix (s3_prefix), and ROOT holds only the policy cache.
storage_env() {
    STORAGE_ENV=("PORTCULLIS_STORAGE__ROOT=$1")
    [[ ${E2E_STORAGE:-filesystem} == s3 ]] || return 0
    STORAGE_ENV+=(
        PORTCULLIS_STORAGE__BACKEND=s3
        "PORTCULLIS_STORAGE__ENDPOINT=$PCTEST_S3_ENDPOINT"
        "PORTCULLIS_STORAGE__BUCKET=$PCTEST_S3_BUCKET"
        "PORTCULLIS_STORAGE__REGION=$PCTEST_S3_REGION"
        "PORTCULLIS_STORAGE__ACCESS_KEY_ID=$PCTEST_S3_ACCESS_KEY"
        "PORTCULLIS_STORAGE__SECRET_ACCESS_KEY=$PCTEST_S3_SECRET_KEY"
        "PORTCULLIS_STORAGE__PREFIX=$(s3_prefix "$1")"
    )
}

# start_portcullis ROOT [CONFIG]: serves ROOT on an ephemeral loopback port,
# with CONFIG's other settings (policies, ...) if given.
# Sets PORTCULLIS_PID, PORTCULLIS_ADDR and PORTCULLIS_LOG.
start_portcullis() {
    local root=$1 i config=()
    [[ -n ${2:-} ]] && config=(--config "$2")
    PORTCULLIS_LOG=$(mktemp "$WORK/portcullis.XXXX.log")
    storage_env "$root"
    env PORTCULLIS_LISTEN=127.0.0.1:0 "${STORAGE_ENV[@]}" \
        "$E2E_PORTCULLIS_BIN" --log-format json serve "${config[@]}" >"$PORTCULLIS_LOG" 2>&1 &
    PORTCULLIS_PID=$!
    defer "stop_pid $PORTCULLIS_PID"
    PORTCULLIS_ADDR=
    for ((i = 0; i < 300; i++)); do
        kill -0 "$PORTCULLIS_PID" 2>/dev/null || break
        PORTCULLIS_ADDR=$(grep -m1 'portcullis listening' "$PORTCULLIS_LOG" | grep -oE '127\.0\.0\.1:[0-9]+' | head -n1)
        [[ -n $PORTCULLIS_ADDR ]] && break
        sleep 0.1
    done
    [[ -n $PORTCULLIS_ADDR ]] || bail "portcullis starts on $root" "$PORTCULLIS_LOG"
    wait_http_ok "http://$PORTCULLIS_ADDR/v2/" 10 "$PORTCULLIS_PID" ||
        bail "portcullis answers GET /v2/ with 200" "$PORTCULLIS_LOG"
}

stop_portcullis() {
    stop_pid "$PORTCULLIS_PID"
}

# launch_portcullis LISTEN ROOT [CONFIG]: like start_portcullis, but on LISTEN
# (e.g. '[::1]:0') and without the plain-HTTP readiness check, for a server
# that speaks TLS or wants credentials; it returns once the server has logged
# its address. Sets PORTCULLIS_PID, PORTCULLIS_ADDR (127.0.0.1:PORT or
# [::1]:PORT) and PORTCULLIS_LOG.
launch_portcullis() {
    local listen=$1 root=$2 i config=()
    [[ -n ${3:-} ]] && config=(--config "$3")
    PORTCULLIS_LOG=$(mktemp "$WORK/portcullis.XXXX.log")
    storage_env "$root"
    env "PORTCULLIS_LISTEN=$listen" "${STORAGE_ENV[@]}" \
        "$E2E_PORTCULLIS_BIN" --log-format json serve "${config[@]}" >"$PORTCULLIS_LOG" 2>&1 &
    PORTCULLIS_PID=$!
    defer "stop_pid $PORTCULLIS_PID"
    PORTCULLIS_ADDR=
    for ((i = 0; i < 300; i++)); do
        kill -0 "$PORTCULLIS_PID" 2>/dev/null || break
        PORTCULLIS_ADDR=$(grep -m1 'portcullis listening' "$PORTCULLIS_LOG" |
            grep -oE '"addr":"([0-9.]+|\[[0-9a-fA-F:.]+\]):[0-9]+"' | cut -d'"' -f4)
        [[ -n $PORTCULLIS_ADDR ]] && break
        sleep 0.1
    done
    [[ -n $PORTCULLIS_ADDR ]] || bail "portcullis starts on $listen" "$PORTCULLIS_LOG"
}

# portcullis_requests METHOD PATH_REGEX STATUS: how many access-log lines match.
portcullis_requests() {
    python3 - "$PORTCULLIS_LOG" "$1" "$2" "$3" <<'EOF'
import json, re, sys
log, method, path, status = sys.argv[1], sys.argv[2], re.compile(sys.argv[3]), int(sys.argv[4])
count = 0
for line in open(log):
    try:
        fields = json.loads(line).get("fields", {})
    except ValueError:
        continue
    if (fields.get("message") == "request" and fields.get("method") == method
            and path.fullmatch(fields.get("path", "")) and fields.get("status") == status):
        count += 1
print(count)
EOF
}

# ---------------------------------------------------------------- distribution

# start_distribution ROOT: CNCF Distribution (registry:2) serving ROOT. With
# E2E_STORAGE=s3 it serves ROOT's prefix in the PCTEST_S3_* bucket instead,
# with its S3 driver: rootdirectory /<prefix> puts its keys at
# <prefix>/docker/registry/v2/..., where portcullis's storage.prefix puts them.
# Sets DISTRIBUTION_PID, DISTRIBUTION_ADDR and DISTRIBUTION_LOG.
start_distribution() {
    local root=$1 config var
    DISTRIBUTION_ADDR=127.0.0.1:$(free_port)
    config=$(mktemp "$WORK/distribution.XXXX.yml")
    DISTRIBUTION_LOG=${config%.yml}.log
    {
        cat <<EOF
version: 0.1
log:
  level: info
storage:
EOF
        if [[ ${E2E_STORAGE:-filesystem} == s3 ]]; then
            # Blob GETs served by Distribution itself, not redirected to the store.
            cat <<EOF
  s3:
    regionendpoint: $PCTEST_S3_ENDPOINT
    region: $PCTEST_S3_REGION
    bucket: $PCTEST_S3_BUCKET
    rootdirectory: /$(s3_prefix "$root")
    accesskey: $PCTEST_S3_ACCESS_KEY
    secretkey: $PCTEST_S3_SECRET_KEY
    secure: false
    v4auth: true
    chunksize: 5242880
  redirect:
    disable: true
EOF
        else
            cat <<EOF
  filesystem:
    rootdirectory: $root
EOF
        fi
        cat <<EOF
  delete:
    enabled: true
http:
  addr: $DISTRIBUTION_ADDR
EOF
    } >"$config"
    # Distribution reads REGISTRY_* variables as configuration (a REGISTRY_AUTH_FILE
    # meant for skopeo would become its `auth` section); give it none. Its S3
    # driver panics (LoadCustomCABundleError) on an AWS_CA_BUNDLE, which plain
    # HTTP on loopback does not need.
    local unset_vars=(-u AWS_CA_BUNDLE)
    for var in $(compgen -e | grep '^REGISTRY_'); do unset_vars+=(-u "$var"); done
    env "${unset_vars[@]}" "${DOCKER_REGISTRY:-docker-registry}" serve "$config" >"$DISTRIBUTION_LOG" 2>&1 &
    DISTRIBUTION_PID=$!
    defer "stop_pid $DISTRIBUTION_PID"
    wait_http_ok "http://$DISTRIBUTION_ADDR/v2/" 30 "$DISTRIBUTION_PID" ||
        bail "docker-registry starts on $root" "$DISTRIBUTION_LOG"
}

stop_distribution() {
    stop_pid "$DISTRIBUTION_PID"
}

# ---------------------------------------------------------------- dockerd

# start_dockerd: a private dockerd (own data root, exec root and socket);
# exports DOCKER_HOST for the docker CLI. dockerd starts its own containerd
# unless the host runs one, which it then shares under its own namespaces.
start_dockerd() {
    local dir=$WORK/docker i
    mkdir -p "$dir"
    DOCKERD_LOG=$dir/dockerd.log
    dockerd --iptables=false --ip6tables=false --bridge=none \
        --storage-driver="${E2E_DOCKER_STORAGE_DRIVER:-vfs}" \
        --data-root="$dir/data" --exec-root="$dir/exec" --pidfile="$dir/dockerd.pid" \
        --containerd-namespace=portcullis-e2e --containerd-plugins-namespace=portcullis-e2e-plugins \
        --host="unix://$dir/docker.sock" >"$DOCKERD_LOG" 2>&1 &
    DOCKERD_PID=$!
    # Stop dockerd's own containerd too, should dockerd leave it behind.
    defer "umount_below $dir"
    defer "stop_orphan $dir/exec/containerd/containerd.pid $dir"
    defer "stop_pid $DOCKERD_PID 30"
    export DOCKER_HOST=unix://$dir/docker.sock
    for ((i = 0; i < 600; i++)); do
        kill -0 "$DOCKERD_PID" 2>/dev/null || break
        docker version >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    bail "dockerd starts" "$DOCKERD_LOG"
}

# stop_orphan PIDFILE MARKER: stops the process in PIDFILE if its command line
# contains MARKER (a daemon's child that outlived it is no longer our child).
stop_orphan() {
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 0
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$2" || return 0
    kill -TERM "$pid" 2>/dev/null
    sleep 2
    kill -KILL "$pid" 2>/dev/null || true
}

# Unmounts whatever a daemon left mounted below DIR, deepest first.
umount_below() {
    local mounts
    mounts=$(awk -v d="$1" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/self/mounts | sort -r)
    [[ -z $mounts ]] || echo "$mounts" | xargs -r -n1 umount -l
}

# ---------------------------------------------------------------- host names

# map_host NAME IP: resolves NAME to IP through /etc/hosts until the test exits.
# The line carries a marker, so the cleanup (or the next run, after a kill)
# removes exactly it; /etc/hosts is rewritten in place, as it may be a bind mount.
map_host() {
    local name=$1 ip=$2
    unmap_host "$name"
    defer "unmap_host $name"
    [[ ! -s /etc/hosts || -z $(tail -c1 /etc/hosts) ]] || echo >>/etc/hosts
    printf '%s %s # portcullis-e2e %s\n' "$ip" "$name" "$name" >>/etc/hosts
}

unmap_host() {
    local kept
    grep -qF "# portcullis-e2e $1" /etc/hosts || return 0
    kept=$(grep -vF "# portcullis-e2e $1" /etc/hosts)
    printf '%s\n' "$kept" >/etc/hosts
}
