#!/usr/bin/env bash
# The web UI (/ui/) in a real browser: headless Debian chromium driven over
# WebDriver by Python selenium (tests/browser.sh installs it; the steps are
# tests/e2e/ui_browser.py). A team registry with accounts (alice, an admin;
# bob, not), anonymous pulls, an immutable release tag, a cosign key and a
# real OpenID provider; the Docker engine pushes the images the browser then
# looks at. Screenshots of the main pages go to artifacts/ui-screenshots/.
source "$(dirname "$0")/lib.sh"
e2e_init ui
for tool in dockerd:docker.io docker:docker.io node:nodejs npm:npm curl:curl python3:python3 \
    htpasswd:apache2-utils chromium:chromium chromedriver:chromium-driver; do
    require_tool "${tool%%:*}" "${tool#*:}"
done
[[ $(id -u) == 0 ]] || bail "the ui test runs as root (dockerd)"
REPO=$(cd "$E2E_DIR/../.." && pwd)

check "selenium is installed (tests/browser.sh install)" bash "$REPO/tests/browser.sh" install ||
    bail "selenium is installed"
BROWSER_PYTHON=${PCTEST_BROWSER_HOME:-$HOME/.cache/portcullis-browser}/bin/python

# The cosign implementation of the signature tests (tests/run.sh builds it).
COSIGN_TOOL=${COSIGN_TOOL:-$REPO/target/cosign-tool/debug/cosign-tool}
if [[ ! -x $COSIGN_TOOL ]]; then
    check "cosign-tool builds (tests/tools/cosign)" bash -c \
        "cd '$REPO/tests/tools/cosign' && CARGO_TARGET_DIR='$REPO/target/cosign-tool' cargo build --locked --quiet" ||
        bail "cosign-tool is built"
fi
cosign() { bounded env COSIGN_PASSWORD= "$COSIGN_TOOL" "$@"; }
check "cosign-tool generate-key --alg p256" cosign generate-key --alg p256 --out "$WORK/cosign" ||
    bail "a cosign key pair"

# --- a real OpenID provider (oauth2-mock-server): /authorize answers at once
# with a code for its user johndoe

start_oidc_provider

# --- portcullis: accounts, groups, policies, the decision ring, the UI

ALICE_PASSWORD=alice-$RANDOM$RANDOM
BOB_PASSWORD=bob-$RANDOM$RANDOM
HTPASSWD=$WORK/htpasswd
htpasswd -B -i -c "$HTPASSWD" alice <<<"$ALICE_PASSWORD" 2>"$WORK/htpasswd.log" &&
    htpasswd -B -i "$HTPASSWD" bob <<<"$BOB_PASSWORD" 2>>"$WORK/htpasswd.log" ||
    bail "htpasswd -B makes the accounts" "$WORK/htpasswd.log"
ROOT=$WORK/storage
CONFIG=$WORK/ui.toml
# Anonymous callers pull apps/** and signed/**, not private/**; everyone
# signed in pulls everything and pushes apps/**; admins (alice) may do anything.
# v* tags never move. signed/** pulls are checked against the cosign key in
# audit mode: the unsigned image stays viewable (and pullable), and the page
# tells it apart from the signed one.
cat >"$CONFIG" <<TOML
[storage]
root = "$ROOT"

[auth]
htpasswd = "$HTPASSWD"
realm = "portcullis"
robot_token_refresh = "1s"

[[auth.oidc]]
issuer = "$ISSUER"
audience = "portcullis"
ui_client_id = "portcullis"
ui_name = "Test IdP"

[groups]
admins = ["alice"]

[ui]
admin_groups = ["admins"]

[policy.decision_log]
ring = 1000
record = "all"

[[policy.chain]]
name = "team-access"
module = "builtin:group-access"
[policy.chain.settings]
anonymous = [{ repositories = ["apps/**", "signed/**"], actions = ["pull"] }]
authenticated = [
    { repositories = ["**"], actions = ["pull", "list"] },
    { repositories = ["apps/**"], actions = ["push"] },
]
[policy.chain.settings.groups]
admins = [{ repositories = ["**"], actions = ["pull", "push", "delete", "list"] }]

[[policy.chain]]
name = "immutable-releases"
module = "builtin:tag-immutability"
settings = { tags = ["v*"] }

[[policy.chain]]
name = "signed-pulls"
module = "builtin:signature"
actions = ["pull"]
repositories = ["signed/**"]
mode = "audit"
[policy.chain.settings]
keys = ['''
$(cat "$WORK/cosign/cosign.pub")
''']
TOML
launch_portcullis 127.0.0.1:0 "$ROOT" "$CONFIG"
REG=$PORTCULLIS_ADDR
for ((i = 0; i < 100; i++)); do
    [[ $(http_status "http://$REG/healthz") == 200 ]] && break
    sleep 0.1
done
[[ $(http_status "http://$REG/healthz") == 200 ]] || bail "portcullis answers /healthz" "$PORTCULLIS_LOG"

# --- docker: alice pushes the images the browser looks at

export DOCKER_CONFIG=$WORK/docker-config # the CLI's credentials, not root's
mkdir -p "$DOCKER_CONFIG"
start_dockerd
docker_login() { bounded docker login "$REG" -u "$1" --password-stdin <<<"$2"; }
# build DIR TAG: the classic builder (no BuildKit needed), FROM scratch.
build() { DOCKER_BUILDKIT=0 bounded docker build -q -t "$2" "$1"; }

WEB=$WORK/web
mkdir -p "$WEB"
head -c 300000 /dev/urandom >"$WEB/server.bin"
echo "hello from the web UI test $RANDOM" >"$WEB/index.html"
cat >"$WEB/Dockerfile" <<'EOF'
FROM scratch
LABEL org.opencontainers.image.title="web" \
      org.opencontainers.image.source="https://git.example.com/team/web" \
      org.example.xss="<script>alert(1)</script>" \
      org.example.quotes="a \"quoted\" & <b>bold</b> 'value'"
COPY server.bin /usr/bin/server
COPY index.html /srv/index.html
USER 1000:1000
ENTRYPOINT ["/usr/bin/server", "--port", "8080"]
CMD ["--root", "/srv"]
EOF
check "docker build of the web image (labels, user, entrypoint)" build "$WEB" "$REG/apps/web:v1.0.0" ||
    bail "the web image is built"
for name in signed unsigned other; do
    mkdir -p "$WORK/$name"
    head -c 50000 /dev/urandom >"$WORK/$name/app.bin"
    printf 'FROM scratch\nCOPY app.bin /app\nENTRYPOINT ["/app"]\n' >"$WORK/$name/Dockerfile"
done
check "docker build of the signed image" build "$WORK/signed" "$REG/signed/app:1"
check "docker build of the unsigned image" build "$WORK/unsigned" "$REG/signed/app:unsigned-1"
check "docker build of bob's image" build "$WORK/other" "$REG/apps/web:bob"
docker tag "$REG/signed/app:1" "$REG/private/secret:1"

check "docker login as alice" docker_login alice "$ALICE_PASSWORD"
docker tag "$REG/apps/web:bob" "$REG/apps/web:old" # deleted from the page by alice
for image in apps/web:v1.0.0 apps/web:old signed/app:1 signed/app:unsigned-1 private/secret:1; do
    check "alice pushes $image" docker push "$REG/$image"
done
# repo_digest IMAGE: the digest the registry stored, from docker's record of the push.
repo_digest() { docker image inspect -f '{{range .RepoDigests}}{{println .}}{{end}}' "$REG/$1" | grep -m1 -F "$REG/${1%%:*}@" | cut -d@ -f2; }
WEB_DIGEST=$(repo_digest apps/web:v1.0.0)
SIGNED_DIGEST=$(repo_digest signed/app:1)
UNSIGNED_DIGEST=$(repo_digest signed/app:unsigned-1)
[[ $WEB_DIGEST == sha256:* && $SIGNED_DIGEST == sha256:* && $UNSIGNED_DIGEST == sha256:* ]] ||
    bail "docker knows the pushed digests ('$WEB_DIGEST' '$SIGNED_DIGEST' '$UNSIGNED_DIGEST')"
check "cosign-tool signs signed/app:1 (tag scheme, as alice)" cosign sign --insecure \
    --key "$WORK/cosign/cosign.key" --registry "$REG" --repo signed/app --digest "$SIGNED_DIGEST" \
    --user "alice:$ALICE_PASSWORD"
check "cosign-tool verifies signed/app:1 with the public key" cosign verify --insecure \
    --key "$WORK/cosign/cosign.pub" --registry "$REG" --repo signed/app --digest "$SIGNED_DIGEST" \
    --identity "$REG/signed/app" --user "alice:$ALICE_PASSWORD"
refused "cosign-tool does not verify signed/app:unsigned-1" 'not verified' "$COSIGN_TOOL" verify --insecure \
    --key "$WORK/cosign/cosign.pub" --registry "$REG" --repo signed/app --digest "$UNSIGNED_DIGEST" \
    --identity "$REG/signed/app" --user "alice:$ALICE_PASSWORD"
check "docker logout" docker logout "$REG"

# --- bob may push apps/**, but not over the release tag v1.0.0

check "docker login as bob" docker_login bob "$BOB_PASSWORD"
check "bob pushes apps/web:bob" docker push "$REG/apps/web:bob"
docker tag "$REG/apps/web:bob" "$REG/apps/web:v1.0.0"
refused "bob's docker push over the immutable apps/web:v1.0.0 is denied" 'denied' \
    docker push "$REG/apps/web:v1.0.0"
check "docker logout" docker logout "$REG"
docker rmi "$REG/apps/web:v1.0.0" >/dev/null 2>&1

# --- the browser

# (Asked only now: the page's list of repositories is cached for seconds.)
expect_eq "GET /ui/ answers 200 to an anonymous caller" 200 "$(http_status "http://$REG/ui/")"
csp=$(grep -i '^content-security-policy:' "$WORK/http.headers" | tr -d '\r' | cut -d' ' -f2-)
expect_eq "/ui/ is served with a Content-Security-Policy that allows no script" \
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'" "$csp"

SCREENSHOTS=$REPO/artifacts/ui-screenshots
mkdir -p "$SCREENSHOTS"
rm -f "$SCREENSHOTS"/*.png # none left over from an earlier run
started=$SECONDS
env UI_REGISTRY="$REG" UI_ALICE_PASSWORD="$ALICE_PASSWORD" UI_BOB_PASSWORD="$BOB_PASSWORD" \
    UI_WEB_DIGEST="$WEB_DIGEST" UI_SIGNED_DIGEST="$SIGNED_DIGEST" UI_UNSIGNED_DIGEST="$UNSIGNED_DIGEST" \
    UI_SCREENSHOTS="$SCREENSHOTS" UI_WORK="$WORK" UI_STEP_TIMEOUT="$E2E_STEP_TIMEOUT" \
    timeout --kill-after=10 300 "$BROWSER_PYTHON" "$E2E_DIR/ui_browser.py" 2>"$WORK/ui_browser.log"
status=$?
echo "# the browser's steps took $((SECONDS - started)) s"
[[ $status -eq 0 ]] || not_ok "the browser's steps ran to the end (exit status $status)" "$WORK/ui_browser.log" "$PORTCULLIS_LOG"

# --- what the server said meanwhile

# The refusals the browser saw were the server's: one forged csrf field and
# one cross-site form (tokens), the immutable tag and bob's delete.
expect_eq "portcullis answered both refused token forms with 403" 2 "$(portcullis_requests POST /ui/tokens 403)"
expect_eq "portcullis answered both refused deletes with 403" 2 "$(portcullis_requests POST '/ui/r/apps/web/:.*/delete' 403)"

server_errors() {
    python3 - "$@" <<'EOF'
import fileinput, json, sys
bad = []
for line in fileinput.input(sys.argv[1:]):
    try:
        fields = json.loads(line).get("fields", {})
    except ValueError:
        continue
    if fields.get("message") == "request" and int(fields.get("status", 0)) >= 500:
        bad.append(f'{fields.get("method")} {fields.get("path")} {fields.get("status")}')
print("\n".join(bad))
sys.exit(1 if bad else 0)
EOF
}
check "no request was answered with a 5xx" server_errors "$PORTCULLIS_LOG"
