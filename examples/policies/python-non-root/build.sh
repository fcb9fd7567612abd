#!/usr/bin/env bash
# Builds build/python-non-root.wasm from src/*.py and ../../../wit.
# Needs: componentize-py on PATH (pip install componentize-py==0.25.1, or
# ../install-toolchains.sh). Installs nothing itself.
set -euo pipefail
cd "$(dirname "$0")"

name=python-non-root
wit=../../../wit

if ! command -v componentize-py >/dev/null 2>&1; then
    echo "$name: componentize-py not found: pip install componentize-py==0.25.1 (or run ../install-toolchains.sh)" >&2
    exit 1
fi

mkdir -p build
# componentize-py generates the `wit_world` bindings for the `policy` world,
# bundles CPython with the modules under src/ and snapshots the interpreter
# after importing `app`. The component imports WASI 0.2 (CPython needs it),
# which Portcullis links with an empty context.
#
# PYTHONPATH, VIRTUAL_ENV and the like would add directories to what gets
# bundled; only src/ is wanted, so clear them.
env -u PYTHONPATH -u VIRTUAL_ENV \
    componentize-py --quiet -d "$wit" -w policy componentize -p src app -o "build/$name.wasm"

echo "$name: built build/$name.wasm ($(wc -c < "build/$name.wasm") bytes)"
