#!/usr/bin/env bash
# Builds every cargo-fuzz target and runs each for a bounded time, seeded
# from the corpus kept in fuzz/corpus/<target>/ (read only: new inputs go to
# a temporary directory, so a run never dirties the work tree).
#
#   fuzz/run.sh                 60 s per target (CI)
#   fuzz/run.sh 3600            an hour per target
#   fuzz/run.sh 300 manifest    only some targets
#
# Environment:
#   FUZZ_SECONDS    seconds per target when no argument is given (default 60)
#   FUZZ_SANITIZER  none (default) or address; see below
#   FUZZ_MERGE=1    after each run, add the new inputs that raise coverage to
#                   fuzz/corpus/<target>/ (libFuzzer -merge=1), for long runs
#   FUZZ_JOBS       targets fuzzed at once (default 1; 2 halves the time on
#                   a 2-core CI machine)
#   FUZZ_KEEP=1     keep the temporary working directory (logs, new inputs)
#
# Stable Rust: with `-s none` cargo-fuzz passes only stable -C flags
# (sancov instrumentation), so no nightly and no RUSTC_BOOTSTRAP is needed.
# AddressSanitizer needs `-Zsanitizer=address`; stable rustc ships the ASan
# runtime, so FUZZ_SANITIZER=address sets RUSTC_BOOTSTRAP=1 to allow the -Z
# flag. That is a second full build (wasmtime included) and the fuzzed code
# is safe Rust, so CI uses none.
#
# Exits non-zero if any target crashes (panic, failed assertion, overflow,
# timeout or out of memory); the reproducer is in fuzz/artifacts/<target>/,
# replay it with `cargo fuzz run -s none <target> <file>` in fuzz/.
set -euo pipefail
cd "$(dirname "$0")"

CARGO_FUZZ_VERSION=0.13.1
seconds=${1:-${FUZZ_SECONDS:-60}}
[ $# -gt 0 ] && shift
sanitizer=${FUZZ_SANITIZER:-none}
case "$seconds" in
    '' | *[!0-9]*) echo "usage: $0 [SECONDS_PER_TARGET] [TARGET...]" >&2; exit 2 ;;
esac
# Each sanitizer builds everything differently: keep the builds apart.
opts=(--sanitizer "$sanitizer")
if [ "$sanitizer" != none ]; then
    export RUSTC_BOOTSTRAP=1
    opts+=(--target-dir "target/$sanitizer")
fi

if ! cargo fuzz --version 2>/dev/null | grep -qx "cargo-fuzz $CARGO_FUZZ_VERSION"; then
    echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

# Release with debug assertions and overflow checks (cargo-fuzz's default).
# fuzz/Cargo.lock started as a copy of ../Cargo.lock (same versions); it is
# not --locked, so a dependency added to the main crate does not break this.
build_start=$SECONDS
cargo fuzz build "${opts[@]}"
echo "fuzz: build took $((SECONDS - build_start)) s"
# cargo honours CARGO_TARGET_DIR (unless --target-dir is given, as with a
# sanitizer): the binaries are where it put them.
bin_dir=${CARGO_TARGET_DIR:-target}
[ "$sanitizer" != none ] && bin_dir="target/$sanitizer"
bin_dir="$bin_dir/$(rustc -vV | sed -n 's/^host: //p')/release"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_odr_violation=0}

work=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-fuzz.XXXXXX")
if [ "${FUZZ_KEEP:-0}" = 1 ]; then
    echo "fuzz: working directory $work"
else
    trap 'rm -rf "$work"' EXIT
fi

# One target: fuzz it, then write "<execs> <cov> <seconds> <exit status>".
fuzz_one() {
    local target=$1 log="$work/$1.log" start=$SECONDS status=0 execs cov
    mkdir -p "$work/$target" "corpus/$target" "artifacts/$target"
    # The binary as built above (`cargo fuzz run` would rebuild first, and
    # time a rebuild as fuzzing if the tree changed). The first corpus
    # directory receives new inputs; the repo's is only read.
    "$bin_dir/$target" -artifact_prefix="artifacts/$target/" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 "$work/$target" "corpus/$target" >"$log" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -n 1 | cut -d' ' -f2 || true)
    echo "${execs:-0} ${cov:-?} $((SECONDS - start)) $status" >"$work/$target.result"
    if [ "$status" -eq 0 ] && [ "${FUZZ_MERGE:-0}" = 1 ]; then
        local before after
        before=$(find "corpus/$target" -type f | wc -l)
        "$bin_dir/$target" -merge=1 "corpus/$target" "$work/$target" \
            >"$work/$target.merge.log" 2>&1
        after=$(find "corpus/$target" -type f | wc -l)
        echo "fuzz: $target: merged $((after - before)) new inputs into corpus/$target"
    fi
}

# FUZZ_JOBS targets at a time (libFuzzer runs one process per target).
jobs=${FUZZ_JOBS:-1}
running=0
run_start=$SECONDS
for target in "${targets[@]}"; do
    if [ "$running" -ge "$jobs" ]; then
        wait -n || true
        running=$((running - 1))
    fi
    echo "fuzz: running $target for $seconds s"
    fuzz_one "$target" &
    running=$((running + 1))
done
wait

passed=0
failed=0
total_execs=0
summary=()
for target in "${targets[@]}"; do
    read -r execs cov took status <"$work/$target.result"
    total_execs=$((total_execs + execs))
    if [ "$status" -eq 0 ]; then
        passed=$((passed + 1))
        verdict=ok
    else
        failed=$((failed + 1))
        verdict="CRASHED (exit $status)"
        {
            echo "fuzz: $target crashed:"
            # Whatever ended the run: the sanitizer's or libFuzzer's words,
            # else the log's last lines (a binary that did not start).
            if grep -qE "panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer|SUMMARY:" "$work/$target.log"; then
                grep -E -A4 "panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer|SUMMARY:" \
                    "$work/$target.log" | cut -c1-500 | head -n 40
            else
                tail -n 20 "$work/$target.log" | cut -c1-500
            fi
            grep -E -A2 "^Reproduce with:" "$work/$target.log" || true
            echo "fuzz: reproducers in fuzz/artifacts/$target/:"
            ls -1 "artifacts/$target" || true
        } >&2
    fi
    summary+=("$(printf '%-16s %12s execs %8s/s  cov %6s  %4d s  %s' "$target" "$execs" \
        "$((execs / (took > 0 ? took : 1)))" "$cov" "$took" "$verdict")")
done

echo "fuzz: per target ($seconds s each, $jobs at a time, sanitizer $sanitizer," \
    "$((SECONDS - run_start)) s in all):"
printf '  %s\n' "${summary[@]}"
echo "fuzz: $total_execs executions in total"
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
