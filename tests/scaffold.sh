#!/usr/bin/env bash
# `portcullis policy new` for each language: the generated project builds
# with the toolchains examples/policies/install-toolchains.sh installs, its
# cases pass (exit 0), and a case whose expectation is flipped fails (exit 1).
#   PORTCULLIS=target/debug/portcullis bash tests/scaffold.sh [rust js python c]
set -euo pipefail
cd "$(dirname "$0")/.."
portcullis=$(realpath "${PORTCULLIS:-target/debug/portcullis}")
export PORTCULLIS=$portcullis
langs=("$@")
[[ ${#langs[@]} -gt 0 ]] || langs=(rust js python c)
work=$(mktemp -d /tmp/pc-scaffold.XXXX)
trap 'rm -rf "$work"' EXIT
failed=0
for lang in "${langs[@]}"; do
    name=demo-$lang
    started=$SECONDS
    "$portcullis" policy new "$name" --lang "$lang" --dir "$work" >/dev/null
    project=$work/$name
    if [[ $lang == js ]]; then
        (cd "$project" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    fi
    if ! (cd "$project" && ./test.sh >"$work/$lang.log" 2>&1); then
        echo "FAIL  policy new --lang $lang: test.sh failed"
        tail -n 20 "$work/$lang.log"
        failed=1
        continue
    fi
    # The same cases with the first expectation flipped must fail.
    python3 - "$project/cases.json" <<'PY'
import json, sys
path = sys.argv[1]
cases = json.load(open(path))
cases[0]["expect"] = "allow" if cases[0]["expect"] != "allow" else "deny"
cases[0].pop("reason", None)
json.dump(cases, open(path, "w"))
PY
    set +e
    (cd "$project" && "$portcullis" policy test --policy "build/$name.wasm" --settings '{}' \
        --cases cases.json >"$work/$lang-flipped.log" 2>&1)
    code=$?
    set -e
    if [[ $code != 1 ]]; then
        echo "FAIL  policy new --lang $lang: a flipped case exited $code, not 1"
        failed=1
        continue
    fi
    # An existing project is never overwritten.
    if "$portcullis" policy new "$name" --lang "$lang" --dir "$work" >/dev/null 2>&1; then
        echo "FAIL  policy new --lang $lang: overwrote an existing project"
        failed=1
        continue
    fi
    echo "ok    policy new --lang $lang ($((SECONDS - started)) s)"
done
exit $failed
