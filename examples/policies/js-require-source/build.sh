#!/usr/bin/env bash
# Builds build/js-require-source.wasm from src/policy.js (which imports
# src/require_source.js) and ../../../wit.
# Needs: node >= 20 and this folder's npm dependencies (`npm ci` here, or
# ../install-toolchains.sh). Installs nothing itself.
set -euo pipefail
cd "$(dirname "$0")"

name=js-require-source
wit=../../../wit
componentize=node_modules/.bin/componentize-js

if [ ! -x "$componentize" ]; then
    echo "$name: $componentize not found: run \`npm ci\` in $(pwd) (or ../install-toolchains.sh)" >&2
    exit 1
fi

mkdir -p build
# componentize-js embeds the StarlingMonkey (SpiderMonkey) engine and
# snapshots it with the module loaded. `-d ...` turns off every WASI feature
# the engine would otherwise import: the policy uses none of them, and the
# resulting component imports nothing but the policy's own types.
"$componentize" src/policy.js \
    --wit "$wit" --world-name policy \
    -d stdio random clocks http fetch-event \
    -o "build/$name.wasm"

echo "$name: built build/$name.wasm ($(wc -c < "build/$name.wasm") bytes)"
