#!/usr/bin/env bash
# docker against portcullis over real TLS, with accounts: a certificate from
# `portcullis tls generate` for a host name mapped to ::1 (dockerd treats
# 127.0.0.0/8 as insecure, so the IPv4 loopback would not test TLS at all),
# refused until the CA is trusted in /etc/docker/certs.d, then docker login,
# push, pull, logout; curl over HTTP/2; the certificate's end in the
# instructions and /metrics; a new certificate served without a restart,
# warned about for ending within 30 days.
source "$(dirname "$0")/lib.sh"
e2e_init tls
require_tool dockerd docker.io
require_tool docker docker.io
require_tool curl curl
require_tool openssl openssl
require_tool htpasswd apache2-utils
require_tool python3 python3
[[ $(id -u) == 0 ]] || bail "the tls test runs as root (dockerd, /etc/hosts, /etc/docker/certs.d)"

HOST=portcullis-e2e.test
PASSWORD=open-sesame-$RANDOM
# The CLI's credentials go here, not into root's ~/.docker.
export DOCKER_CONFIG=$WORK/docker-config
mkdir -p "$DOCKER_CONFIG"

# A free port on ::1, known before the certificate is made, so the printed
# instructions name the registry as clients will.
PORT=$(python3 -c 'import socket; s = socket.socket(socket.AF_INET6); s.bind(("::1", 0)); print(s.getsockname()[1])')
REG=$HOST:$PORT

# --- certificate, accounts, configuration

TLS=$WORK/tls # only the TLS files: the server watches this directory
check "portcullis tls generate makes a CA and a certificate for $HOST and ::1" \
    "$E2E_PORTCULLIS_BIN" tls generate --host "$HOST" --ip ::1 --port "$PORT" --out "$TLS" ||
    bail "the certificate is generated"
cp "$WORK/last.log" "$WORK/generate.log"
CERTS_D=/etc/docker/certs.d/$REG
expect_eq "the printed instructions put the CA in /etc/docker/certs.d/$REG/ca.crt" \
    "cp $TLS/ca.crt $CERTS_D/ca.crt" \
    "$(grep -oE 'cp [^ ]+/ca\.crt /etc/docker/certs\.d/[^ ]+' "$WORK/generate.log")"
# The expiry, as `openssl x509 -enddate` reads it from the certificate.
end_of() { date -u -d "$(openssl x509 -noout -enddate -in "$1" | cut -d= -f2)" "$2"; }
output_has "the printed instructions give the certificate's end and lifetime (397 days)" \
    "valid until $(end_of "$TLS/tls.crt" '+%Y-%m-%d %H:%M') UTC \(397 days\)" "$WORK/generate.log"
serial_of() { openssl x509 -noout -serial -in "$1" | cut -d= -f2; }
FIRST_SERIAL=$(serial_of "$TLS/tls.crt")
CA_SUM=$(sha256_of "$TLS/ca.crt")

htpasswd -B -b -c "$WORK/htpasswd" alice "$PASSWORD" >"$WORK/htpasswd.log" 2>&1 ||
    bail "htpasswd -B makes the account file" "$WORK/htpasswd.log"
cat >"$WORK/tls.toml" <<TOML
[tls]
cert = "$TLS/tls.crt"
key = "$TLS/tls.key"

[auth]
htpasswd = "$WORK/htpasswd"

[groups]
devs = ["alice"]

[[policy.chain]]
name = "team-access"
module = "builtin:group-access"
settings = { groups = { devs = [{ repositories = ["**"], actions = ["pull", "push", "list"] }] } }
TOML

map_host "$HOST" ::1
expect_eq "$HOST resolves to ::1" "::1" "$(getent ahostsv6 "$HOST" | awk 'NR == 1 { print $1 }')"

launch_portcullis "[::1]:$PORT" "$WORK/storage" "$WORK/tls.toml"
expect_eq "portcullis listens on [::1]:$PORT" "[::1]:$PORT" "$PORTCULLIS_ADDR"
for ((i = 0; i < 100; i++)); do
    [[ $(http_status "https://$REG/healthz" --cacert "$TLS/ca.crt") == 200 ]] && break
    kill -0 "$PORTCULLIS_PID" 2>/dev/null || break
    sleep 0.1
done
[[ $(http_status "https://$REG/healthz" --cacert "$TLS/ca.crt") == 200 ]] ||
    bail "portcullis answers https://$REG/healthz" "$PORTCULLIS_LOG" "$WORK/curl.log"

expect_eq "/metrics has the served certificate's end as Unix time" "$(end_of "$TLS/tls.crt" +%s)" \
    "$(curl -sS --cacert "$TLS/ca.crt" "https://$REG/metrics" 2>>"$WORK/curl.log" |
        awk '$1 == "portcullis_tls_certificate_expiry_timestamp_seconds" { print $2 }')"

# --- curl: TLS, HTTP/2, Basic auth

# The challenge names the token service at the host the client called, over
# HTTP/1.1 (its Host header) and HTTP/2 (its :authority) alike.
for version in 1.1 2; do
    status=$(http_status "https://$REG/v2/" --cacert "$TLS/ca.crt" "--http$version")
    challenge=$(grep -i '^www-authenticate:' "$WORK/http.headers" | tr -d '\r' | cut -d' ' -f2-)
    expect_eq "GET /v2/ without credentials (HTTP/$version) is 401 with a Bearer challenge for https://$REG/token" \
        "401 Bearer realm=\"https://$REG/token\",service=\"portcullis\"" "$status $challenge"
done
expect_eq "GET /v2/ as alice is 200" 200 \
    "$(http_status "https://$REG/v2/" --cacert "$TLS/ca.crt" -u "alice:$PASSWORD")"
expect_eq "GET /v2/ with a wrong password is 401" 401 \
    "$(http_status "https://$REG/v2/" --cacert "$TLS/ca.crt" -u "alice:wrong-$PASSWORD")"
expect_eq "curl --http2 talks HTTP/2 (ALPN)" "2 200" \
    "$(curl -sS -o /dev/null -w '%{http_version} %{http_code}' --http2 --cacert "$TLS/ca.crt" \
        -u "alice:$PASSWORD" "https://$REG/v2/" 2>>"$WORK/curl.log")"
expect_eq "curl --http1.1 still works" "1.1 200" \
    "$(curl -sS -o /dev/null -w '%{http_version} %{http_code}' --http1.1 --cacert "$TLS/ca.crt" \
        -u "alice:$PASSWORD" "https://$REG/v2/" 2>>"$WORK/curl.log")"
if bounded curl -sS -o /dev/null "https://$REG/v2/" >"$WORK/last.log" 2>&1; then
    not_ok "curl without the CA refuses the certificate" "$WORK/last.log"
else
    output_has "curl without the CA refuses the certificate" 'certificate' "$WORK/last.log"
fi

# --- docker: the CA not trusted yet

start_dockerd

# docker_login PASSWORD: docker login as alice, the password on stdin.
docker_login() { bounded docker login "$REG" -u alice --password-stdin <<<"$1"; }
if docker_login "$PASSWORD" >"$WORK/last.log" 2>&1; then
    not_ok "docker login fails while the CA is not trusted" "$WORK/last.log"
else
    ok "docker login fails while the CA is not trusted"
    output_has "docker names the certificate problem (x509)" 'x509|certificate' "$WORK/last.log"
fi

# --- trust the CA as the instructions say; dockerd reads it per connection

[[ -d /etc/docker ]] || defer "rmdir /etc/docker"
[[ -d /etc/docker/certs.d ]] || defer "rmdir /etc/docker/certs.d"
defer "rm -rf '$CERTS_D'"
{ mkdir -p "$CERTS_D" && cp "$TLS/ca.crt" "$CERTS_D/ca.crt"; } || bail "the CA is installed in $CERTS_D"

if docker_login "wrong-$PASSWORD" >"$WORK/last.log" 2>&1; then
    not_ok "docker login with a wrong password fails" "$WORK/last.log"
else
    ok "docker login with a wrong password fails"
    output_has "docker reports the login as unauthorized" 'unauthorized' "$WORK/last.log"
fi
check "docker login as alice succeeds once the CA is trusted" docker_login "$PASSWORD"
output_has "docker says Login Succeeded" 'Login Succeeded' "$WORK/last.log"
check "the CLI stored the credentials for $REG" grep -qF "\"$REG\"" "$DOCKER_CONFIG/config.json"

# --- push, remove, pull back

CONTEXT=$WORK/context
mkdir -p "$CONTEXT"
head -c 200000 /dev/urandom >"$CONTEXT/data.bin"
echo "portcullis tls e2e $RANDOM" >"$CONTEXT/hello.txt"
cat >"$CONTEXT/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY data.bin /data.bin
COPY hello.txt /hello.txt
DOCKERFILE
IMAGE=$REG/team/app:v1
DOCKER_BUILDKIT=0 check "docker build (classic builder) makes the image" \
    docker build -t "$IMAGE" "$CONTEXT" || bail "the test image is built"
IMAGE_ID=$(docker image inspect -f '{{.Id}}' "$IMAGE")

check "docker push to portcullis over TLS" docker push "$IMAGE"
DIGEST=$(grep -oE 'v1: digest: sha256:[0-9a-f]{64}' "$WORK/last.log" | grep -oE 'sha256:[0-9a-f]{64}')
[[ -n $DIGEST ]] || bail "docker push prints the manifest digest" "$WORK/last.log"
status=$(http_status "https://$REG/v2/team/app/manifests/v1" -I --cacert "$TLS/ca.crt" -u "alice:$PASSWORD" \
    -H 'Accept: application/vnd.docker.distribution.manifest.v2+json')
served=$(grep -i '^docker-content-digest:' "$WORK/http.headers" | tr -d '\r' | cut -d' ' -f2)
expect_eq "portcullis serves team/app:v1 with the pushed digest" "200 $DIGEST" "$status $served"

check "docker rmi removes the local image" docker rmi "$IMAGE"
check "docker pull from portcullis over TLS" docker pull "$IMAGE"
expect_eq "docker pull reports the pushed digest" "Digest: $DIGEST" \
    "$(grep -oE 'Digest: sha256:[0-9a-f]{64}' "$WORK/last.log")"
expect_eq "RepoDigests records the pushed digest" "$REG/team/app@$DIGEST" \
    "$(docker image inspect -f '{{range .RepoDigests}}{{println .}}{{end}}' "$IMAGE" | grep -F "$REG/team/app@")"
expect_eq "the pulled image has the built image's ID" "$IMAGE_ID" "$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>&1)"

# --- logged out: refused

check "docker logout" docker logout "$REG"
docker tag "$IMAGE" "$REG/team/app:v2"
if bounded docker push "$REG/team/app:v2" >"$WORK/last.log" 2>&1; then
    not_ok "docker push after logout is refused" "$WORK/last.log"
else
    ok "docker push after logout is refused"
    # Anonymous callers get a token without push: docker reports a denial.
    output_has "docker says the anonymous push is denied" 'requested access to the resource is denied|unauthorized' "$WORK/last.log"
fi
expect_eq "v2 was not pushed" 401 \
    "$(http_status "https://$REG/v2/team/app/manifests/v2" -I --cacert "$TLS/ca.crt")"
expect_eq "and, asked as alice, does not exist" 404 \
    "$(http_status "https://$REG/v2/team/app/manifests/v2" -I --cacert "$TLS/ca.crt" -u "alice:$PASSWORD")"

# --- a new certificate, picked up without a restart

served_serial() {
    openssl s_client -connect "[::1]:$PORT" -servername "$HOST" </dev/null 2>/dev/null |
        openssl x509 -noout -serial 2>/dev/null | cut -d= -f2
}
expect_eq "portcullis serves the generated certificate" "$FIRST_SERIAL" "$(served_serial)"
expect_eq "no reload while the files did not change" 0 "$(grep -c 'TLS certificate reloaded' "$PORTCULLIS_LOG")"

sleep 1 # a different mtime second, for file systems with coarse timestamps
check "portcullis tls generate again into the same directory, for 30 days" \
    "$E2E_PORTCULLIS_BIN" tls generate --host "$HOST" --ip ::1 --port "$PORT" --out "$TLS" --days 30
output_has "it says the CA is kept" "CA: Portcullis local CA .* \(kept from $TLS/ca.crt; [0-9]+ days left\)" "$WORK/last.log"
SECOND_SERIAL=$(serial_of "$TLS/tls.crt")
expect_eq "the CA is kept" "$CA_SUM" "$(sha256_of "$TLS/ca.crt")"
if [[ $SECOND_SERIAL == "$FIRST_SERIAL" ]]; then
    not_ok "the new certificate has a new serial"
else
    ok "the new certificate has a new serial"
fi
serial=
for ((i = 0; i < 50; i++)); do
    serial=$(served_serial)
    [[ $serial == "$SECOND_SERIAL" ]] && break
    sleep 0.1
done
expect_eq "within 5 s portcullis serves the new certificate" "$SECOND_SERIAL" "$serial" ||
    diag "$PORTCULLIS_LOG"
if is_our_child "$PORTCULLIS_PID" && [[ $(grep -c 'portcullis listening' "$PORTCULLIS_LOG") == 1 ]]; then
    ok "by the same process (pid $PORTCULLIS_PID), not restarted"
else
    not_ok "by the same process (pid $PORTCULLIS_PID), not restarted" "$PORTCULLIS_LOG"
fi
check "portcullis logged the reload" grep -q 'TLS certificate reloaded' "$PORTCULLIS_LOG"
output_has "and warns that the new certificate ends within 30 days" 'WARN.*TLS certificate expires soon' "$PORTCULLIS_LOG"
expect_eq "/metrics follows the reload" "$(end_of "$TLS/tls.crt" +%s)" \
    "$(curl -sS --cacert "$TLS/ca.crt" "https://$REG/metrics" 2>>"$WORK/curl.log" |
        awk '$1 == "portcullis_tls_certificate_expiry_timestamp_seconds" { print $2 }')"
expect_eq "GET /v2/ as alice over the new certificate is 200" 200 \
    "$(http_status "https://$REG/v2/" --cacert "$TLS/ca.crt" -u "alice:$PASSWORD")"
check "docker login through the new certificate (same CA)" docker_login "$PASSWORD"
docker rmi "$IMAGE" "$REG/team/app:v2" >"$WORK/rmi.log" 2>&1
check "docker pull through the new certificate" docker pull "$IMAGE"
expect_eq "the image pulled again is the built image" "$IMAGE_ID" "$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>&1)"
