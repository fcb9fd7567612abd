#!/usr/bin/env bash
# A real S3 store for the tests: Garage 2.5.0, single node, on loopback.
#
#   tests/garage.sh build [CARGO ARGS...]   install Garage 2.5.0 (cargo install, about 4 min
#                                           on 2 cores) unless the installed one is 2.5.0
#   tests/garage.sh start DIR [S3_PORT]     start a fresh Garage with its config, data and
#                                           log in DIR; S3 API on S3_PORT (default 3900,
#                                           `auto`: a free one), RPC on S3_PORT+1, admin
#                                           (GET /health) on S3_PORT+3; writes DIR/env
#   tests/garage.sh stop DIR                stop the Garage started in DIR
#
# DIR/env holds shell `export` lines for the tests (source it):
#   PCTEST_S3_ENDPOINT (http://127.0.0.1:PORT), PCTEST_S3_BUCKET, PCTEST_S3_REGION
#   (garage), PCTEST_S3_ACCESS_KEY, PCTEST_S3_SECRET_KEY
# The prefix is PCTEST_, not PORTCULLIS_: the server reads every PORTCULLIS_*
# variable as a configuration key and refuses the ones it does not know.
#
# Environment:
#   PCTEST_GARAGE_HOME  where `build` installs (default ~/.cache/portcullis-garage)
#   PCTEST_GARAGE_BIN   the binary `start` runs (default $PCTEST_GARAGE_HOME/bin/garage)
set -euo pipefail

GARAGE_VERSION=2.5.0
GARAGE_HOME=${PCTEST_GARAGE_HOME:-$HOME/.cache/portcullis-garage}
GARAGE_BIN=${PCTEST_GARAGE_BIN:-$GARAGE_HOME/bin/garage}

usage() {
    sed -n '3,10p' "$0" >&2
    exit 2
}

# random_hex BYTES: 2*BYTES lowercase hex digits.
random_hex() {
    od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'
}

installed_version_ok() {
    local bin=$GARAGE_HOME/bin/garage
    [[ -x $bin ]] && "$bin" --version 2>/dev/null | grep -q "[: ]$GARAGE_VERSION\b"
}

build() {
    if installed_version_ok; then
        echo "garage: $GARAGE_HOME/bin/garage is $GARAGE_VERSION already"
        return 0
    fi
    # lmdb only (the default sqlite would need a system libsqlite3), built from
    # the bundled sources. A test store needs no release-grade optimisation:
    # opt-level 1 without LTO builds in about 4 minutes on 2 cores instead
    # of 7.5 (the CARGO_PROFILE_RELEASE_* variables of the caller win).
    CARGO_PROFILE_RELEASE_OPT_LEVEL=${CARGO_PROFILE_RELEASE_OPT_LEVEL:-1} \
        CARGO_PROFILE_RELEASE_LTO=${CARGO_PROFILE_RELEASE_LTO:-off} \
        cargo install garage --version "$GARAGE_VERSION" --locked --force \
        --no-default-features --features bundled-libs,lmdb \
        --root "$GARAGE_HOME" "$@"
    installed_version_ok || {
        echo "garage: $GARAGE_HOME/bin/garage --version does not report $GARAGE_VERSION" >&2
        exit 1
    }
}

# port_free PORT: nothing listens on 127.0.0.1:PORT.
port_free() {
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# auto_port: a base port below the usual ephemeral range (32768-60999, where
# outgoing connections take their local ports) whose S3, RPC and admin ports are free.
auto_port() {
    local base i
    for ((i = 0; i < 100; i++)); do
        base=$((20000 + RANDOM % 12000))
        if port_free "$base" && port_free $((base + 1)) && port_free $((base + 3)); then
            echo "$base"
            return 0
        fi
    done
    echo "garage: no free ports found" >&2
    return 1
}

start() {
    local dir=${1:?usage: tests/garage.sh start DIR [S3_PORT]} s3_port=${2:-3900}
    [[ -x $GARAGE_BIN ]] || {
        echo "garage: no binary at $GARAGE_BIN (run tests/garage.sh build, or set PCTEST_GARAGE_BIN)" >&2
        exit 1
    }
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [[ -s $dir/garage.pid ]] && kill -0 "$(cat "$dir/garage.pid")" 2>/dev/null; then
        echo "garage: already running in $dir (pid $(cat "$dir/garage.pid"))" >&2
        exit 1
    fi
    local auto=0 attempt
    [[ $s3_port == auto ]] && auto=1
    for attempt in 1 2 3; do
        [[ $auto == 1 ]] && s3_port=$(auto_port)
        if start_once "$dir" "$s3_port"; then
            return 0
        fi
        # A fixed port is not retried: what holds it will still hold it.
        [[ $auto == 1 ]] || break
        echo "garage: attempt $attempt failed, trying other ports" >&2
    done
    exit 1
}

# start_once DIR S3_PORT
start_once() {
    local dir=$1 s3_port=$2 rpc_port=$(($2 + 1)) admin_port=$(($2 + 3)) pid i
    local access_key secret_key bucket=portcullis
    rm -rf "$dir/meta" "$dir/data"
    cat >"$dir/garage.toml" <<EOF
# Written by tests/garage.sh: a throw-away single-node Garage $GARAGE_VERSION.
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(random_hex 32)"

[s3_api]
api_bind_addr = "127.0.0.1:$s3_port"
s3_region = "garage"

[admin]
api_bind_addr = "127.0.0.1:$admin_port"
EOF
    access_key=GK$(random_hex 12)
    secret_key=$(random_hex 32)
    # --single-node lays out the one-node cluster; --default-bucket creates the
    # bucket and the key from these variables, the key allowed on the bucket.
    GARAGE_DEFAULT_ACCESS_KEY=$access_key GARAGE_DEFAULT_SECRET_KEY=$secret_key \
        GARAGE_DEFAULT_BUCKET=$bucket RUST_LOG=${RUST_LOG:-garage=info} \
        "$GARAGE_BIN" -c "$dir/garage.toml" server --single-node --default-bucket \
        </dev/null >"$dir/garage.log" 2>&1 &
    pid=$!
    echo "$pid" >"$dir/garage.pid"
    for ((i = 0; i < 200; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "garage: exited during start-up; its log ($dir/garage.log):" >&2
            tail -n 40 "$dir/garage.log" >&2
            rm -f "$dir/garage.pid"
            return 1
        fi
        if curl -fsS -o /dev/null "http://127.0.0.1:$admin_port/health" 2>/dev/null; then
            cat >"$dir/env" <<EOF
export PCTEST_S3_ENDPOINT=http://127.0.0.1:$s3_port
export PCTEST_S3_BUCKET=$bucket
export PCTEST_S3_REGION=garage
export PCTEST_S3_ACCESS_KEY=$access_key
export PCTEST_S3_SECRET_KEY=$secret_key
EOF
            echo "garage: up on 127.0.0.1:$s3_port (pid $pid, $dir)"
            return 0
        fi
        sleep 0.05
    done
    echo "garage: /health not 200 after 10 s; its log ($dir/garage.log):" >&2
    tail -n 40 "$dir/garage.log" >&2
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$dir/garage.pid"
    return 1
}

stop() {
    local dir=${1:?usage: tests/garage.sh stop DIR} pid i
    [[ -s $dir/garage.pid ]] || return 0
    dir=$(cd "$dir" && pwd)
    pid=$(cat "$dir/garage.pid")
    # Only a garage: the pid file may be stale and the number reused.
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$dir/garage.toml"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/garage.pid"
}

case ${1:-} in
build)
    shift
    build "$@"
    ;;
start)
    shift
    start "$@"
    ;;
stop)
    shift
    stop "$@"
    ;;
*) usage ;;
esac
