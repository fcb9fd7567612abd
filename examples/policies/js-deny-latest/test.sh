#!/usr/bin/env bash
# Unit tests of the policy logic with Node's test runner (no build needed).
# The built component is tested by ../build-all.sh.
set -euo pipefail
cd "$(dirname "$0")"
exec node --test test/
