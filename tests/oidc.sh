#!/usr/bin/env bash
# A real OpenID provider for the tests that verify ID tokens: oauth2-mock-server
# (npm) behind tests/oidc/provider.mjs, which tests/common/oidc.rs starts.
#
#   tests/oidc.sh install   npm ci of tests/oidc/package-lock.json into
#                           $PCTEST_OIDC_HOME (default ~/.cache/portcullis-oidc),
#                           unless it already holds that very lock file
#
# provider.mjs loads the package from $PCTEST_OIDC_HOME/node_modules, so it runs
# from anywhere: node tests/oidc/provider.mjs (it prints its URLs as JSON).
set -euo pipefail
here=$(cd "$(dirname "$0")/oidc" && pwd)
home=${PCTEST_OIDC_HOME:-$HOME/.cache/portcullis-oidc}

case ${1:-} in
install)
    if cmp -s "$here/package-lock.json" "$home/package-lock.json" &&
        [[ -f $home/node_modules/oauth2-mock-server/package.json ]]; then
        exit 0
    fi
    mkdir -p "$home"
    cp "$here/package.json" "$here/package-lock.json" "$home/"
    (cd "$home" && npm ci --silent --no-audit --no-fund)
    ;;
*)
    sed -n '2,10p' "$0" >&2
    exit 2
    ;;
esac
