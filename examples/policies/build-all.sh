#!/usr/bin/env bash
# Builds the example policies from source and checks each one:
#   1. its build.sh builds examples/policies/<example>/build/<example>.wasm;
#   2. its test.sh (unit tests of the logic, no Wasm) passes;
#   3. `portcullis policy test` on the built component gives the exact
#      expected output (and exit code) for allowed requests and denied ones,
#      bad settings are refused with the policy's own message, and the
#      example's own table of cases (<example>/test/cases.json with its
#      settings.json; tests/ for Python) is decided as it expects.
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

all_examples=(c-max-size python-non-root js-require-source)
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

# expect EXAMPLE DESCRIPTION SETTINGS REQUEST EXPECTED_FIRST_LINE [STDERR]
# The output must be exactly three lines: EXPECTED_FIRST_LINE, then
# `fuel used: N`, then what the instance held (`memory: ...`), and the exit
# code 0 for `allow`, 1 for a denial. With STDERR,
# stderr must contain it too (what the policy logged shows there, as
# `policy output: [level] message`).
expect() {
    local example=$1 what=$2 settings=$3 request=$4 want=$5 want_err=${6:-}
    local start=$SECONDS
    run_policy "$example" "$settings" "$request"
    local first second third lines
    first=$(sed -n 1p "$logs/out")
    second=$(sed -n 2p "$logs/out")
    third=$(sed -n 3p "$logs/out")
    lines=$(wc -l <"$logs/out")
    local want_rc=1 # `policy test` exits 0 for allow, 1 for deny or failed
    [ "$want" != allow ] || want_rc=0
    if [ "$rc" -eq "$want_rc" ] && [ "$first" = "$want" ] && [ "$lines" -eq 3 ] &&
        [[ "$second" =~ ^fuel\ used:\ [0-9]+$ ]] &&
        [[ "$third" =~ ^memory:\ [0-9]+\ bytes\ in\ [0-9]+\ memories\ and\ [0-9]+\ tables\ of\ [0-9]+\ elements$ ]] &&
        { [ -z "$want_err" ] || grep -qF -- "$want_err" "$logs/err"; }; then
        pass "$example: $what -> $want ($((SECONDS - start)) s, $second, $third)"
    else
        fail "$example: $what"
        echo "#   wanted: $want"
        [ -z "$want_err" ] || echo "#   and on stderr: $want_err"
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

# expect_cases EXAMPLE: the example's own table of cases, its test dir's
# cases.json decided under its settings.json (`policy test --cases`), must
# all match: exit code 0 and a last line `0 failed`.
expect_cases() {
    local example=$1 dir
    local start=$SECONDS
    dir=$(cd "$here/$example" && ls -d test tests 2>/dev/null | head -n 1)
    local wasm="$here/$example/build/$example.wasm" cases="$here/$example/$dir/cases.json"
    "$PORTCULLIS" policy test --policy "$wasm" --settings "@$here/$example/$dir/settings.json" \
        --cases "$cases" >"$logs/out" 2>"$logs/err"
    rc=$?
    local n
    n=$(grep -c '^ok ' "$logs/out")
    if [ "$rc" -eq 0 ] && [ "$(tail -n 1 "$logs/out")" = "0 failed" ] && [ "$n" -gt 0 ]; then
        pass "$example: $n cases of $dir/cases.json ($((SECONDS - start)) s)"
    else
        fail "$example: cases of $dir/cases.json"
        echo "#   exit code $rc, output:"
        grep -v '^ok ' "$logs/out" | sed 's/^/#     /'
        show "$logs/err" 10
    fi
}

# ---- requests (the contract's fields, WIT names in kebab-case) ----

digest() { printf 'sha256:%064d' "$1"; }

# manifest_request ACTION MANIFEST: a manifest ACTION (push or pull) of
# team-a/api:v1 by alice, carrying the manifest JSON MANIFEST.
manifest_request() {
    printf '{"action":"%s","resource":"manifest","repository":"team-a/api","reference":{"tag":"v1"},"identity":{"subject":"alice","groups":["devs"]},"client-ip":"192.0.2.7","now":1735787045,"manifest":%s}' \
        "$1" "$2"
}

# image_manifest ANNOTATIONS USER LABELS LAYER_SIZE...: an OCI image manifest
# whose config (1000 bytes) runs as USER with LABELS, and one layer per
# LAYER_SIZE. ANNOTATIONS and LABELS are JSON lists of [key, value] pairs.
image_manifest() {
    local annotations=$1 user=$2 labels=$3
    shift 3
    local layers="" total=1000 i=1 size
    for size in "$@"; do
        layers="$layers${layers:+,}{\"digest\":\"$(digest "$i")\",\"media-type\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"size\":$size}"
        total=$((total + size))
        i=$((i + 1))
    done
    printf '{"media-type":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%s,"annotations":%s,"image":{"config-digest":"%s","config-media-type":"application/vnd.oci.image.config.v1+json","config-size":1000,"config":{"os":"linux","architecture":"amd64","user":"%s","labels":%s,"created":"2025-01-02T03:04:05Z","entrypoint":["/app"],"cmd":[],"env":["PATH=/usr/bin"],"exposed-ports":["8080/tcp"],"history-length":3},"layers":[%s],"total-size":%s},"children":[]}' \
        "$(digest 4242)" 900 "$annotations" "$(digest 7)" "$user" "$labels" "$layers" "$total"
}

source_label='[["org.opencontainers.image.source","https://github.com/acme/api"]]'

checks_c-max-size() {
    local s='{"max_bytes": 1000000}'
    expect c-max-size "push of a 600000-byte image" "$s" \
        "$(manifest_request push "$(image_manifest '[]' app '[]' 200000 199000 200000)")" \
        "allow"
    expect c-max-size "push of a 1500000-byte image" "$s" \
        "$(manifest_request push "$(image_manifest '[]' app '[]' 999000 500000)")" \
        'deny: image pushed to team-a/api is 1500000 bytes (config and 2 layers), over the limit of 1000000 bytes'
    expect_refused c-max-size '{"max_bytes": "64KiB"}' \
        'settings.max_bytes: expected a whole number of bytes'
    expect_cases c-max-size
}

checks_python-non-root() {
    local s='{}'
    expect python-non-root "push of an image running as 65532:65532" "$s" \
        "$(manifest_request push "$(image_manifest '[]' 65532:65532 '[]' 1000)")" \
        "allow"
    expect python-non-root "push of an image with no USER" "$s" \
        "$(manifest_request push "$(image_manifest '[]' '' '[]' 1000)")" \
        'deny: image pushed to team-a/api runs as root (no `USER`): build it with a non-root user, e.g. `USER 65532:65532`'
    expect python-non-root "pull of an image running as 0:0" "$s" \
        "$(manifest_request pull "$(image_manifest '[]' 0:0 '[]' 1000)")" \
        'deny: image pulled from team-a/api runs as root (`USER 0:0`): build it with a non-root user, e.g. `USER 65532:65532`'
    expect_refused python-non-root '{"allow_repositories": "base/*"}' \
        'settings.allow_repositories: expected a list of repository patterns'
    expect_cases python-non-root
}

checks_js-require-source() {
    local s='{"prefixes": ["https://github.com/acme/"]}'
    expect js-require-source "push of an image with the source label" "$s" \
        "$(manifest_request push "$(image_manifest '[]' app "$source_label" 1000)")" \
        "allow" \
        "policy output: [debug] team-a/api $(digest 4242): source https://github.com/acme/api (label)"
    expect js-require-source "push of an image with neither" "$s" \
        "$(manifest_request push "$(image_manifest '[]' app '[["org.opencontainers.image.title","api"]]' 1000)")" \
        'deny: image pushed to team-a/api has no `org.opencontainers.image.source` label or annotation: set it to the URL of its source, starting with `https://github.com/acme/`'
    expect js-require-source "push of an image from another source" "$s" \
        "$(manifest_request push "$(image_manifest '[]' app '[["org.opencontainers.image.source","https://github.com/evil/api"]]' 1000)")" \
        'deny: image (label) pushed to team-a/api has `org.opencontainers.image.source` https://github.com/evil/api, which does not start with an allowed prefix (`https://github.com/acme/`)'
    expect_refused js-require-source '{"prefixes": []}' \
        'settings.prefixes: expected a non-empty list of prefixes'
    expect_cases js-require-source
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
