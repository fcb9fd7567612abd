#!/usr/bin/env bash
# Unit tests of the policy with Node's test runner (no build needed). The
# entry module's `portcullis:policy/log` import is resolved to a stub
# (test/stubs/). The built component is tested by ../build-all.sh.
set -euo pipefail
cd "$(dirname "$0")"
exec node --import ./test/stubs/register.js --test test/*.test.js
