#!/usr/bin/env bash
# Unit tests of the settings parser and the denial message, compiled for the
# build machine with HOST_CC (default: cc). The built component is tested by
# ../build-all.sh.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p build
"${HOST_CC:-cc}" -std=c11 -O1 -Wall -Wextra -Werror -Isrc \
    -o build/unit_test test/unit_test.c src/max_size.c
exec build/unit_test
