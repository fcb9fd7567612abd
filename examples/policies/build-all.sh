#!/usr/bin/env bash
# Builds the example policies from source and checks each one:
#   1. its build.sh builds examples/policies/<example>/build/<example>.wasm;
#   2. its test.sh (unit tests of the logic, no Wasm) passes;
#   3. `portcullis policy test` on the built component gives the exact
#      expected output for an allowed request and a denied one, and
#      bad settings are refused with the policy's own message.
#
# Usage: examples/policies/build-all.sh [EXAMPLE...]   (default: all three)
#
# The toolchains must be installed first (install-toolchains.sh). The
# portcullis binary is $PORTCULLIS if set, else this checkout's debug build
# (built here with `cargo build --bin portcullis` if needed).
#
# Prints one `ok - ...` / `not ok - ...` line per check, then
# `examples: N passed, M failed`; exits non-zero if any check failed.
# SC2016: the backquotes in expected messages are literal. SC2317: the check
# functions are called indirectly ("checks_$example").
# shellcheck disable=SC2016,SC2317
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
logs=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-examples.XXXXXX")
trap 'rm -rf "$logs"' EXIT

all_examples=(c-max-size python-annotations js-deny-latest)
if [ $# -gt 0 ]; then
    examples=("$@")
else
    examples=("${all_examples[@]}")
fi

passed=0
failed=0
pass() { echo "ok - $*"; passed=$((passed + 1)); }
fail() { echo "not ok - $*"; failed=$((failed + 1)); }
# Shows the end of a log under a failed check, as TAP-style comments.
show() { tail -n "${2:-20}" "$1" | sed 's/^/#   /'; }
finish() {
    echo "examples: $passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    exit
}

# ---- the portcullis binary ----
if [ -z "${PORTCULLIS:-}" ]; then
    if (cd "$root" && cargo build --quiet --bin portcullis) >"$logs/cargo.log" 2>&1; then
        PORTCULLIS="${CARGO_TARGET_DIR:-$root/target}/debug/portcullis"
    else
        fail "cargo build --bin portcullis"
        show "$logs/cargo.log"
        finish
    fi
fi
if [ ! -x "$PORTCULLIS" ]; then
    fail "portcullis binary at $PORTCULLIS"
    finish
fi

# ---- checks ----

# run_policy EXAMPLE SETTINGS REQUEST: runs `portcullis policy test`, leaving
# stdout, stderr and the exit code in $logs/out, $logs/err and $rc.
run_policy() {
    local wasm="$here/$1/build/$1.wasm"
    "$PORTCULLIS" policy test --policy "$wasm" --settings "$2" --request "$3" \
        >"$logs/out" 2>"$logs/err"
    rc=$?
}

# expect EXAMPLE DESCRIPTION SETTINGS REQUEST EXPECTED_FIRST_LINE
# The output must be exactly three lines: EXPECTED_FIRST_LINE, then
# `fuel used: N`, then what the instance held (`memory: ...`).
expect() {
    local example=$1 what=$2 settings=$3 request=$4 want=$5
    local start=$SECONDS
    run_policy "$example" "$settings" "$request"
    local first second third lines
    first=$(sed -n 1p "$logs/out")
    second=$(sed -n 2p "$logs/out")
    third=$(sed -n 3p "$logs/out")
    lines=$(wc -l <"$logs/out")
    if [ "$rc" -eq 0 ] && [ "$first" = "$want" ] && [ "$lines" -eq 3 ] &&
        [[ "$second" =~ ^fuel\ used:\ [0-9]+$ ]] &&
        [[ "$third" =~ ^memory:\ [0-9]+\ bytes\ in\ [0-9]+\ memories\ and\ [0-9]+\ tables\ of\ [0-9]+\ elements$ ]]; then
        pass "$example: $what -> $want ($((SECONDS - start)) s, $second, $third)"
    else
        fail "$example: $what"
        echo "#   wanted: $want"
        echo "#   exit code $rc, output:"
        sed 's/^/#     /' "$logs/out"
        show "$logs/err" 10
    fi
}

# expect_refused EXAMPLE SETTINGS MESSAGE: the settings must be refused
# (non-zero exit) with the policy's MESSAGE.
expect_refused() {
    local example=$1 settings=$2 want=$3
    local start=$SECONDS
    run_policy "$example" "$settings" \
        '{"action":"pull","resource":"manifest","repository":"team-a/api","reference":{"tag":"v1"},"identity":{"subject":"alice","groups":[]}}'
    if [ "$rc" -ne 0 ] && grep -qF "refused its settings: $want" "$logs/err"; then
        pass "$example: settings $settings are refused: $want ($((SECONDS - start)) s)"
    else
        fail "$example: settings $settings are refused"
        echo "#   wanted on stderr: refused its settings: $want"
        echo "#   exit code $rc, stdout and stderr:"
        sed 's/^/#     /' "$logs/out" "$logs/err"
    fi
}

# A manifest push request to team-a/api, tag $1, manifest size $2 and
# annotations $3 (a JSON list of [key, value] pairs).
manifest_push() {
    printf '{"action":"push","resource":"manifest","repository":"team-a/api","reference":{"tag":"%s"},"identity":{"subject":"alice","groups":["devs"]},"client-ip":"192.0.2.7","manifest":{"media-type":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:4f2c1c0e6f6b8a7c4d1b9e0a2f3d5c6b7a8e9f0d1c2b3a4f5e6d7c8b9a0f1e2d","size":%s,"annotations":%s}}' \
        "$1" "$2" "$3"
}

checks_c-max-size() {
    local s='{"max_bytes": 65536}'
    expect c-max-size "push of a 1024-byte manifest" "$s" "$(manifest_push v1 1024 '[]')" \
        "allow"
    expect c-max-size "push of a 70000-byte manifest" "$s" "$(manifest_push v1 70000 '[]')" \
        'deny: manifest pushed to team-a/api is 70000 bytes, over the limit of 65536 bytes'
    expect_refused c-max-size '{"max_bytes": "64KiB"}' \
        'settings.max_bytes: expected a whole number of bytes'
}

checks_python-annotations() {
    local s='{"required": ["org.opencontainers.image.source"]}'
    expect python-annotations "push with the source annotation" "$s" \
        "$(manifest_push v1 1024 '[["org.opencontainers.image.source","https://example.com/api"]]')" \
        "allow"
    expect python-annotations "push without it" "$s" \
        "$(manifest_push v1 1024 '[["org.opencontainers.image.title","api"]]')" \
        'deny: manifest pushed to team-a/api is missing the required annotation `org.opencontainers.image.source`'
    expect_refused python-annotations '{"required": []}' \
        'settings.required: expected a non-empty list of annotation keys'
}

checks_js-deny-latest() {
    local s='{"forbidden_tags": ["latest"]}'
    expect js-deny-latest "push of tag v1" "$s" "$(manifest_push v1 1024 '[]')" \
        "allow"
    expect js-deny-latest "push of tag latest" "$s" "$(manifest_push latest 1024 '[]')" \
        'deny: pushing the tag `latest` is not allowed (to team-a/api): push an immutable version tag instead'
    expect_refused js-deny-latest '{"forbidden": ["latest"]}' \
        'settings: unknown key `forbidden` (expected `forbidden_tags`)'
}

for example in "${examples[@]}"; do
    if [ ! -x "$here/$example/build.sh" ]; then
        fail "$example: no such example (have: ${all_examples[*]})"
        continue
    fi

    start=$SECONDS
    rm -f "$here/$example/build/$example.wasm"
    if "$here/$example/build.sh" >"$logs/build.log" 2>&1 &&
        [ -s "$here/$example/build/$example.wasm" ]; then
        pass "$example: build.sh builds build/$example.wasm ($((SECONDS - start)) s, $(wc -c <"$here/$example/build/$example.wasm") bytes)"
        built=1
    else
        fail "$example: build.sh builds build/$example.wasm"
        show "$logs/build.log"
        built=0
    fi

    if "$here/$example/test.sh" >"$logs/test.log" 2>&1; then
        pass "$example: unit tests (test.sh)"
    else
        fail "$example: unit tests (test.sh)"
        show "$logs/test.log" 40
    fi

    # The C example's bindings are generated, then committed: when the same
    # wit-bindgen is at hand, check that they still match wit/.
    if [ "$example" = c-max-size ]; then
        if wit-bindgen --version 2>/dev/null | grep -q ' 0\.63\.0$'; then
            if wit-bindgen c "$root/wit" --world policy --out-dir "$logs/bindings" >/dev/null 2>&1 &&
                diff -r "$logs/bindings" "$here/c-max-size/bindings" >"$logs/diff.log" 2>&1; then
                pass "c-max-size: committed bindings match wit/"
            else
                fail "c-max-size: committed bindings match wit/ (regenerate them: see c-max-size/README.md)"
                show "$logs/diff.log"
            fi
        else
            echo "# c-max-size: wit-bindgen 0.63.0 not installed, not checking the committed bindings"
        fi
    fi

    if [ "$built" -eq 1 ]; then
        "checks_$example"
    else
        fail "$example: portcullis policy test (skipped: not built)"
    fi
done

finish
