# Stage timing for .ci/run, tests/run.sh and tests/e2e/run.sh (sourced, not run).
#
#   stage NAME COMMAND...       run COMMAND in the foreground; print and record its wall
#                               time and CPU time (user + system of everything it waited for)
#   stage_bg NAME LOG COMMAND...  the same in the background, output to LOG (for installs
#                               and other work that is not CPU-bound: both cores are
#                               busy during a cargo build)
#   stage_wait NAME             wait for a background stage; on failure show LOG's end
#   stage_begin ... stage_end NAME STATUS  measure what runs between (the e2e runner's tests)
#   stage_at_exit COMMAND       run COMMAND (a string for eval) when the script exits,
#                               before the table; use it instead of `trap ... EXIT`
#   stage_table                 print every recorded row and the run's wall time
#
# Rows go to the file $STAGE_LOG, shared with the scripts this one calls, so
# .ci/run prints one table for the whole run. The script that creates the
# file (the first to source this one) is the one that prints the table at exit.
# A stage of a script called from a stage is shown indented under it.
#
# CPU time comes from bash's `times` (children reaped so far), so a daemon
# started in a stage and never waited for (Garage, dockerd) is not counted.

if [[ -z ${STAGE_LOG:-} ]]; then
    STAGE_LOG=$(mktemp "${TMPDIR:-/tmp}/portcullis-stages.XXXXXX")
    STAGE_OWNER=1
    STAGE_STARTED=$EPOCHREALTIME
    STAGE_DEPTH=0
    export STAGE_LOG STAGE_STARTED
fi
declare -A STAGE_PIDS=() STAGE_LOGS=()
STAGE_EXIT_HOOKS=()

# Sets STAGE_CPU to the seconds of CPU used by the children of this shell
# reaped so far. (`times` in this shell, and no $(...): a subshell sees only
# its own children.)
_stage_cpu() {
    local user sys file=$STAGE_LOG.times.$BASHPID
    times >"$file"
    { read -r _; read -r user sys; } <"$file"
    rm -f "$file"
    STAGE_CPU=$(_stage_secs "$user" "$sys")
}
# _stage_secs 1m2.500s 0m0.250s -> 62.750 (their sum, in seconds)
_stage_secs() {
    local total=0 t
    for t in "$@"; do
        t=${t%s}
        total=$(awk -v a="$total" -v m="${t%%m*}" -v s="${t#*m}" 'BEGIN { printf "%.3f", a + m * 60 + s }')
    done
    echo "$total"
}
_stage_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

stage_row() {
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "${STAGE_DEPTH:-0}" "$2" "$3" "$4" "$5" >>"$STAGE_LOG"
}

# stage_begin; ...; stage_end NAME STATUS: measure and record what runs between.
# (stage() makes the two variables local, so stages may nest in one shell.)
stage_begin() {
    STAGE_T0=$EPOCHREALTIME
    _stage_cpu
    STAGE_CPU0=$STAGE_CPU
}
stage_end() {
    local wall cpu
    wall=$(_stage_since "$STAGE_T0")
    _stage_cpu
    cpu=$(awk -v a="$STAGE_CPU" -v b="$STAGE_CPU0" 'BEGIN { printf "%.1f", a - b }')
    stage_row "$STAGE_T0" "$1" "$wall" "$cpu" "$2"
    echo "stage: $1: ${wall} s wall, ${cpu} s CPU$([[ $2 == 0 ]] || echo ", FAILED ($2)")"
}

stage() {
    local name=$1 status=0 STAGE_T0 STAGE_CPU0
    shift
    echo "stage: $name"
    stage_begin
    STAGE_DEPTH=$((${STAGE_DEPTH:-0} + 1)) "$@" || status=$?
    stage_end "$name" "$status"
    return "$status"
}

stage_bg() {
    local name=$1 log=$2
    shift 2
    echo "stage: $name (in the background, log $log)"
    (stage "$name" "$@") >"$log" 2>&1 &
    STAGE_PIDS[$name]=$!
    STAGE_LOGS[$name]=$log
}

stage_wait() {
    local name=$1 status=0
    wait "${STAGE_PIDS[$name]}" || status=$?
    # The background stage printed its own figures into its log.
    grep -F "stage: $name: " "${STAGE_LOGS[$name]}" || true
    if [[ $status != 0 ]]; then
        echo "stage: $name failed; the end of its log (${STAGE_LOGS[$name]}):"
        tail -n 40 "${STAGE_LOGS[$name]}" | sed 's/^/#   /'
    fi
    return "$status"
}

stage_table() {
    [[ -s $STAGE_LOG ]] || return 0
    echo
    echo "stages (wall and CPU seconds; background stages overlap the ones after them):"
    printf '  %-60s %8s %8s\n' stage "wall s" "CPU s"
    sort -t$'\t' -k1,1n "$STAGE_LOG" | awk -F'\t' '{
        name = sprintf("%*s%s", 2 * $2, "", $3)
        printf "  %-60s %8.1f %8.1f  %s\n", name, $4, $5, ($6 == 0 ? "" : "FAILED")
    }'
    printf '  %-58s %8s\n' "whole run (wall)" "$(_stage_since "$STAGE_STARTED")"
}

stage_at_exit() { STAGE_EXIT_HOOKS+=("$1"); }
_stage_exit() {
    local hook pid
    # A background stage still running when the script ends (a foreground
    # one failed) is stopped, not left holding apt's lock.
    for pid in "${STAGE_PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -- -"$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    for hook in "${STAGE_EXIT_HOOKS[@]}"; do
        eval "$hook" || true
    done
    # Printed however the run ends, failures included.
    if [[ ${STAGE_OWNER:-} == 1 ]]; then
        stage_table
        rm -f "$STAGE_LOG"
    fi
}
trap _stage_exit EXIT
