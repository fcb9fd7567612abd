#!/usr/bin/env bash
# Portcullis vs CNCF Distribution on loopback: the one benchmark command.
#
#   bench/run.sh                  full run (1 GiB blob, 5 s cells; about 3 minutes on 2 cores)
#   BENCH_QUICK=1 bench/run.sh    smoke run (64 MiB blob, 1 s cells; 30-40 s)
#   BENCH_STORAGE=s3 bench/run.sh both on S3: one Garage 2.5.0 (tests/garage.sh),
#                                 Portcullis's S3 backend and Distribution's s3
#                                 driver, a key prefix each in one bucket (same
#                                 sizes; about 4-5 minutes, BENCH_QUICK=1: 25 s)
#
# Builds target/release/portcullis if it is missing (BENCH_REBUILD=1: always
# run `cargo build --release`, which is a no-op when up to date) and the
# harness in bench/ (its own cargo workspace), starts Portcullis and Debian's
# docker-registry (CNCF Distribution 2.8.2: `apt-get install -y docker-registry`;
# without it only Portcullis's figures are printed) on 127.0.0.1 with fresh
# storage under one temporary directory, runs the workloads against both,
# alternating, and prints a markdown table (also saved as bench/last-run.md).
#
# Settings (environment):
#   BENCH_STORAGE=filesystem filesystem (default) or s3; s3 starts a throw-away
#                            Garage (tests/garage.sh start, on free ports, data
#                            under BENCH_TMPDIR), adds Garage's CPU and S3
#                            request counts to the report, skips workload 5
#                            unless BENCH_WORKLOADS names it, and saves the
#                            report as bench/last-run-s3.md
#   BENCH_S3_PART_MIB=8      s3: Portcullis's part_size and Distribution's chunksize
#   BENCH_QUICK=1            smoke-run defaults for everything below
#   BENCH_WORKLOADS=1,...,7  which workloads (1 push, 2 pull, 3 small blobs,
#                            4 manifests, 5 docker pull, 6 memory, 7 start-up)
#   BENCH_BLOB_MIB=1024      size of the pushed/pulled blob (quick: 64)
#   BENCH_CHUNK_MIB=16       PATCH size of the chunked push
#   BENCH_PULL_CLIENTS=8     concurrent clients of the second pull
#   BENCH_SMALL_BLOBS=2000   small blobs pushed (quick: 200)
#   BENCH_SMALL_KIB=4  BENCH_SMALL_CLIENTS=16
#   BENCH_SECS=5             seconds per manifest cell (quick: 1)
#   BENCH_WARMUP_SECS=0.5    uncounted warm-up per cell (quick: 0.2)
#   BENCH_CONCURRENCY=1,16,64
#   BENCH_IMAGE_MIB=200 BENCH_IMAGE_LAYERS=10   image of the docker pull (quick: 20 MiB)
#   BENCH_ROUNDS=1           repeats of each measurement (median reported)
#   BENCH_STARTUP_RUNS=5     warm start-ups measured (quick: 3)
#   BENCH_DOCKER=0           skip workload 5
#   BENCH_START_DOCKERD=1    with no running docker engine, start a private
#                            dockerd for workload 5 (0: skip it instead)
#   BENCH_TMPDIR=DIR         where storage and the test blob go (default: a
#                            new directory under ${TMPDIR:-/var/tmp}); needs
#                            about 3x BENCH_BLOB_MIB free (s3: about
#                            (4 x BENCH_ROUNDS + 3) x BENCH_BLOB_MIB, Garage's
#                            data included), removed at the end unless BENCH_KEEP=1
#   BENCH_PORTCULLIS=PATH    binary to measure (default target/release/portcullis,
#                            below CARGO_TARGET_DIR when that is set)
#   BENCH_DISTRIBUTION=PATH  default /usr/bin/docker-registry
set -euo pipefail
bench_dir=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$bench_dir/.." && pwd)
cd "$repo"

storage=${BENCH_STORAGE:-filesystem}
case $storage in
filesystem) report=$bench_dir/last-run.md ;;
s3) report=$bench_dir/last-run-s3.md ;;
*)
    echo "bench: BENCH_STORAGE=$storage: expected filesystem or s3" >&2
    exit 2
    ;;
esac
export BENCH_STORAGE=$storage

export BENCH_PORTCULLIS=${BENCH_PORTCULLIS:-${CARGO_TARGET_DIR:-$repo/target}/release/portcullis}
if [[ ! -x $BENCH_PORTCULLIS || ${BENCH_REBUILD:-0} == 1 ]]; then
    echo "bench: building portcullis (cargo build --release)" >&2
    cargo build --release --bin portcullis >&2
fi
echo "bench: building the harness" >&2
cargo build --release --quiet --manifest-path "$bench_dir/Cargo.toml" >&2
harness=${CARGO_TARGET_DIR:-$bench_dir/target}/release/portcullis-bench

if [[ ! -x ${BENCH_DISTRIBUTION:-/usr/bin/docker-registry} ]]; then
    echo "bench: docker-registry not found: distribution's columns stay empty (apt-get install -y docker-registry)" >&2
fi

work=${BENCH_TMPDIR:-$(mktemp -d "${TMPDIR:-/var/tmp}/portcullis-bench.XXXXXX")}
mkdir -p "$work"
export BENCH_TMPDIR=$work
BENCH_REV="$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock build.rs policies 2>/dev/null || echo '+local changes')"
export BENCH_REV

dockerd_pid=
garage_dir=
cleanup() {
    if [[ -n $garage_dir ]]; then
        "$repo/tests/garage.sh" stop "$garage_dir" >&2 || true
    fi
    if [[ -n $dockerd_pid ]]; then
        docker images -q 2>/dev/null | xargs -r docker rmi -f >/dev/null 2>&1 || true
        kill -TERM "$dockerd_pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$dockerd_pid" 2>/dev/null || true
        # dockerd's own containerd, should it outlive dockerd.
        local cpid
        cpid=$(cat "$work/d/exec/containerd/containerd.pid" 2>/dev/null || true)
        if [[ -n $cpid ]] && tr '\0' ' ' <"/proc/$cpid/cmdline" 2>/dev/null | grep -qF "$work/d"; then
            kill -TERM "$cpid" 2>/dev/null || true
        fi
        awk -v d="$work/d" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/self/mounts |
            sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    fi
    if [[ ${BENCH_KEEP:-0} != 1 ]]; then
        rm -rf "$work"
    else
        echo "bench: kept $work" >&2
    fi
}
trap cleanup EXIT

# The S3 mode's store: a fresh single-node Garage on free ports, its data
# under $work. Its log at INFO (one line per S3 request) is what the harness
# counts requests in.
if [[ $storage == s3 ]]; then
    garage_dir=$work/garage
    echo "bench: starting Garage (tests/garage.sh, log: $garage_dir/garage.log)" >&2
    RUST_LOG=garage=info "$repo/tests/garage.sh" start "$garage_dir" auto >&2
    # shellcheck source=/dev/null
    source "$garage_dir/env"
    export BENCH_S3_ENDPOINT=$PCTEST_S3_ENDPOINT BENCH_S3_BUCKET=$PCTEST_S3_BUCKET \
        BENCH_S3_REGION=$PCTEST_S3_REGION BENCH_S3_ACCESS_KEY=$PCTEST_S3_ACCESS_KEY \
        BENCH_S3_SECRET_KEY=$PCTEST_S3_SECRET_KEY
    unset PCTEST_S3_ENDPOINT PCTEST_S3_BUCKET PCTEST_S3_REGION PCTEST_S3_ACCESS_KEY PCTEST_S3_SECRET_KEY
    BENCH_GARAGE_PID=$(cat "$garage_dir/garage.pid")
    export BENCH_GARAGE_PID BENCH_GARAGE_LOG=$garage_dir/garage.log
fi

# Workload 5 needs a docker engine: the running one, or a private one (in the
# S3 mode only when BENCH_WORKLOADS names it).
default_workloads=5
if [[ $storage == s3 ]]; then
    default_workloads=
fi
if [[ ${BENCH_DOCKER:-1} == 1 && ,${BENCH_WORKLOADS:-$default_workloads}, == *,5,* ]] && command -v docker >/dev/null; then
    if ! docker version >/dev/null 2>&1 && [[ ${BENCH_START_DOCKERD:-1} == 1 ]] && command -v dockerd >/dev/null; then
        mkdir -p "$work/d"
        echo "bench: starting a private dockerd (log: $work/d/dockerd.log)" >&2
        dockerd --iptables=false --ip6tables=false --bridge=none \
            --data-root="$work/d/data" --exec-root="$work/d/exec" --pidfile="$work/d/dockerd.pid" \
            --containerd-namespace=portcullis-bench --containerd-plugins-namespace=portcullis-bench-plugins \
            --host="unix://$work/d/docker.sock" >"$work/d/dockerd.log" 2>&1 &
        dockerd_pid=$!
        export DOCKER_HOST=unix://$work/d/docker.sock
        for _ in $(seq 300); do
            kill -0 "$dockerd_pid" 2>/dev/null || break
            docker version >/dev/null 2>&1 && break
            sleep 0.1
        done
        docker version >/dev/null 2>&1 || echo "bench: dockerd did not start (see $work/d/dockerd.log)" >&2
    fi
fi

"$harness" | tee "$report"
