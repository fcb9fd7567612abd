#!/usr/bin/env bash
# Unit tests of the policy logic with CPython >= 3.8 (no build needed).
# The built component is tested by ../build-all.sh.
set -euo pipefail
cd "$(dirname "$0")"
exec env PYTHONDONTWRITEBYTECODE=1 python3 -m unittest discover -v -s tests
