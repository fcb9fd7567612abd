#!/usr/bin/env bash
# The real browser of tests/e2e/test_ui.sh: Debian's chromium and
# chromium-driver (apt, .ci/install.sh), driven over WebDriver by Python
# selenium from PyPI in a venv of its own.
#
#   tests/browser.sh install   a venv in $PCTEST_BROWSER_HOME (default
#                              ~/.cache/portcullis-browser) with the pinned
#                              tests/e2e/ui-requirements.txt, unless it already
#                              holds that very file; then checks the browser
#
# The venv's python is $PCTEST_BROWSER_HOME/bin/python. Selenium is handed
# /usr/bin/chromedriver and /usr/bin/chromium, so selenium-manager never
# downloads a driver or a browser (tests/e2e/ui_browser.py).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
requirements=$here/e2e/ui-requirements.txt
home=${PCTEST_BROWSER_HOME:-$HOME/.cache/portcullis-browser}

case ${1:-} in
install)
    for tool in /usr/bin/chromium /usr/bin/chromedriver; do
        [[ -x $tool ]] || {
            echo "tests/browser.sh: no $tool (apt-get install chromium chromium-driver)" >&2
            exit 1
        }
    done
    if cmp -s "$requirements" "$home/ui-requirements.txt" &&
        "$home/bin/python" -c 'import selenium' >/dev/null 2>&1; then
        exit 0
    fi
    rm -rf "$home"
    python3 -m venv "$home"
    "$home/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$requirements"
    "$home/bin/python" -c 'import selenium.webdriver'
    # Written last: a venv whose install failed half-way is made anew next time.
    cp "$requirements" "$home/ui-requirements.txt"
    ;;
*)
    sed -n '2,13p' "$0" >&2
    exit 2
    ;;
esac
