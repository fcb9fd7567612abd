#!/usr/bin/env bash
# Offline checks of everything under deploy/, for CI and before a commit:
#
#   - each Kubernetes overlay renders with kustomize (`kubectl kustomize`);
#   - every rendered Kubernetes object validates, strictly (unknown fields are
#     errors), against the Kubernetes schemas of the oldest and newest versions
#     we support (kubernetes-validate ships them: no cluster, no network);
#   - every Traefik IngressRouteTCP validates against
#     kubernetes/schemas/ingressroutetcp.json (check-jsonschema);
#   - the Deployment keeps its security posture (non-root, read-only root,
#     no capabilities, RuntimeDefault seccomp, HTTPS probes);
#   - the systemd unit passes `systemd-analyze verify` and its offline
#     `systemd-analyze security` exposure stays at 2.0 ("OK") or below;
#   - every shipped portcullis.toml is accepted by `portcullis config`, and its
#     policy chain (settings included) by `portcullis policy check`, when a
#     portcullis binary is at hand (PORTCULLIS_BIN, else target/{release,debug}).
#
# The container image is built and run by tests/e2e/test_container.sh.
# deploy/install-tools.sh installs the tools (as root, on Debian 12).
#
# Environment:
#   PORTCULLIS_DEPLOY_TOOLS  the tools' venv (default /opt/portcullis-deploy-tools)
#   PORTCULLIS_BIN           the binary for the config check
#   K8S_VERSIONS             Kubernetes versions to validate against (default "1.30 1.37")
#
# Each check prints `ok - ...` or `not ok - ...`; the last line is the summary.

set -u -o pipefail

DEPLOY=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$DEPLOY/.." && pwd)
TOOLS=${PORTCULLIS_DEPLOY_TOOLS:-/opt/portcullis-deploy-tools}
K8S_VERSIONS=${K8S_VERSIONS:-1.30 1.37}
export PATH=$TOOLS/bin:$PATH

WORK=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-deploy-check.XXXX")
trap 'rm -rf "$WORK"' EXIT

passed=0
failed=0
ok() {
    echo "ok - $1"
    passed=$((passed + 1))
}
# not_ok DESCRIPTION [LOGFILE]: the log's last lines follow as diagnostics.
not_ok() {
    echo "not ok - $1"
    failed=$((failed + 1))
    [[ -s ${2:-} ]] && tail -n 30 "$2" | sed 's/^/#   /'
    return 0
}
# check DESCRIPTION COMMAND...: passes when COMMAND succeeds.
check() {
    local description=$1
    shift
    if "$@" >"$WORK/last.log" 2>&1; then
        ok "$description"
    else
        not_ok "$description" "$WORK/last.log"
        return 1
    fi
}
# need TOOL: is TOOL there? Fails the check that needs it, with the cure.
need() {
    command -v "$1" >/dev/null 2>&1 && return 0
    not_ok "$1 is installed (run deploy/install-tools.sh as root)"
    return 1
}

# ---------------------------------------------------------------- kubernetes

# kustomize itself when installed, else the one built into kubectl.
if command -v kustomize >/dev/null 2>&1; then
    KUSTOMIZE=(kustomize build)
elif command -v kubectl >/dev/null 2>&1; then
    KUSTOMIZE=(kubectl kustomize)
else
    KUSTOMIZE=()
    not_ok "kustomize or kubectl is installed (run deploy/install-tools.sh as root)"
fi
echo "# rendering with: ${KUSTOMIZE[*]:-nothing}"

# A copy of the tree with placeholder Secret sources: the real TLS key and
# htpasswd (git-ignored, maybe present in a user's checkout) are never read.
cp -r "$DEPLOY/kubernetes" "$WORK/kubernetes"
SECRETS=$WORK/kubernetes/base/secrets
find "$SECRETS" -type f ! -name .gitignore -delete
printf 'placeholder certificate\n' >"$SECRETS/tls.crt"
printf 'placeholder key\n' >"$SECRETS/tls.key"
printf 'alice:$2y$05$placeholder\n' >"$SECRETS/htpasswd"

# Splits a rendered stream: Traefik objects to traefik-N.json (one document each,
# as check-jsonschema wants), the rest to kubernetes.yaml; prints their kinds.
split_rendered() {
    python3 - "$1" "$2" <<'EOF'
import json, os, sys, yaml
rendered, out = sys.argv[1], sys.argv[2]
kubernetes, traefik = [], []
for doc in yaml.safe_load_all(open(rendered)):
    if doc:
        (traefik if doc["apiVersion"].startswith("traefik.io/") else kubernetes).append(doc)
with open(os.path.join(out, "kubernetes.yaml"), "w") as f:
    yaml.safe_dump_all(kubernetes, f)
for i, doc in enumerate(traefik):
    with open(os.path.join(out, f"traefik-{i}.json"), "w") as f:
        json.dump(doc, f)
print(" ".join(sorted(d["kind"] for d in kubernetes + traefik)))
EOF
}

# The Deployment's security posture, which the docs promise, as assertions.
check_posture() {
    python3 - "$1" <<'EOF'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
deployment = next(d for d in docs if d["kind"] == "Deployment")
pod = deployment["spec"]["template"]["spec"]
problems = []
def expect(what, actual, wanted):
    if actual != wanted:
        problems.append(f"{what} is {actual!r}, expected {wanted!r}")
sc = pod.get("securityContext", {})
expect("pod runAsNonRoot", sc.get("runAsNonRoot"), True)
for key in ("runAsUser", "runAsGroup", "fsGroup"):
    if not isinstance(sc.get(key), int) or sc[key] == 0:
        problems.append(f"pod {key} is {sc.get(key)!r}, expected a non-zero id")
expect("pod seccompProfile", sc.get("seccompProfile"), {"type": "RuntimeDefault"})
expect("automountServiceAccountToken", pod.get("automountServiceAccountToken"), False)
for c in pod["containers"]:
    csc = c.get("securityContext", {})
    expect(f"{c['name']} readOnlyRootFilesystem", csc.get("readOnlyRootFilesystem"), True)
    expect(f"{c['name']} allowPrivilegeEscalation", csc.get("allowPrivilegeEscalation"), False)
    expect(f"{c['name']} capabilities", csc.get("capabilities"), {"drop": ["ALL"]})
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = c.get(probe, {}).get("httpGet", {})
        expect(f"{c['name']} {probe}", (get.get("path"), get.get("scheme")), (path, "HTTPS"))
mounts = {m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
if "/var/lib/portcullis" not in mounts:
    problems.append("no volume is mounted at the storage root /var/lib/portcullis")
print("\n".join(problems))
sys.exit(1 if problems else 0)
EOF
}

for overlay_dir in "$WORK"/kubernetes/overlays/*/; do
    overlay=$(basename "$overlay_dir")
    out=$WORK/rendered/$overlay
    mkdir -p "$out"
    [[ ${#KUSTOMIZE[@]} -gt 0 ]] || break
    check "overlay $overlay renders with kustomize" \
        "${KUSTOMIZE[@]}" "$overlay_dir" -o "$out/all.yaml" || continue
    if ! kinds=$(split_rendered "$out/all.yaml" "$out" 2>"$WORK/split.log"); then
        not_ok "overlay $overlay renders to YAML objects" "$WORK/split.log"
        continue
    fi
    echo "# $overlay: $kinds"

    if need kubernetes-validate; then
        for version in $K8S_VERSIONS; do
            # A kind without a schema is only a warning to kubernetes-validate; here it fails.
            if kubernetes-validate --strict --quiet -k "$version" "$out/kubernetes.yaml" >"$WORK/validate.log" 2>&1 &&
                ! grep -q "Couldn't find schema" "$WORK/validate.log"; then
                ok "overlay $overlay: every Kubernetes object is valid for Kubernetes $version (strict)"
            else
                not_ok "overlay $overlay: every Kubernetes object is valid for Kubernetes $version (strict)" "$WORK/validate.log"
            fi
        done
    fi
    for doc in "$out"/traefik-*.json; do
        [[ -e $doc ]] || continue
        need check-jsonschema || break
        name=$(python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); print(d["kind"] + "/" + d["metadata"]["name"])' "$doc")
        check "overlay $overlay: $name matches schemas/ingressroutetcp.json" \
            check-jsonschema --schemafile "$DEPLOY/kubernetes/schemas/ingressroutetcp.json" "$doc"
    done
    check "overlay $overlay: the Deployment runs non-root, read-only, without capabilities, with HTTPS probes" \
        check_posture "$out/all.yaml"
done

if need check-jsonschema; then
    check "schemas/ingressroutetcp.json is a valid JSON Schema" \
        check-jsonschema --check-metaschema "$DEPLOY/kubernetes/schemas/ingressroutetcp.json"
fi

# ---------------------------------------------------------------- systemd

if need systemd-analyze; then
    # verify insists that ExecStart's binary exists: point it at a stand-in.
    mkdir -p "$WORK/systemd"
    printf '#!/bin/sh\n' >"$WORK/systemd/portcullis" && chmod +x "$WORK/systemd/portcullis"
    sed "s#/usr/local/bin/portcullis #$WORK/systemd/portcullis #" \
        "$DEPLOY/systemd/portcullis.service" >"$WORK/systemd/portcullis.service"
    check "systemd-analyze verify portcullis.service" \
        systemd-analyze verify "$WORK/systemd/portcullis.service"
    if systemd-analyze security --offline=true --threshold=20 "$WORK/systemd/portcullis.service" \
        >"$WORK/security.log" 2>&1; then
        ok "portcullis.service is hardened: $(grep -o 'Overall exposure level.*' "$WORK/security.log" | sed 's/ for [^:]*//')"
    else
        not_ok "portcullis.service exposure is at most 2.0 (systemd-analyze security)" "$WORK/security.log"
    fi
fi

# ---------------------------------------------------------------- configs

CONFIGS=(
    "$DEPLOY/container/portcullis.toml"
    "$DEPLOY/systemd/portcullis.toml"
    "$DEPLOY/kubernetes/base/config/portcullis.toml"
)
BIN=${PORTCULLIS_BIN:-}
if [[ -z $BIN ]]; then
    for candidate in "$REPO/target/release/portcullis" "$REPO/target/debug/portcullis"; do
        [[ -x $candidate ]] && { BIN=$candidate; break; }
    done
fi
if [[ -n $BIN ]]; then
    for config in "${CONFIGS[@]}"; do
        # Only the file is judged: the server reads every PORTCULLIS_* variable
        # (this script's own included) as configuration.
        clean_env=(env $(compgen -e | grep '^PORTCULLIS_' | sed 's/^/-u /'))
        check "portcullis config accepts ${config#"$REPO"/}" \
            "${clean_env[@]}" "$BIN" config --config "$config" || continue
        # Compiles the chain and validates each policy's settings; the compiled
        # policies are cached below the storage root, here a scratch directory.
        mkdir -p "$WORK/storage"
        check "portcullis policy check accepts the policy chain of ${config#"$REPO"/}" \
            "${clean_env[@]}" PORTCULLIS_STORAGE__ROOT="$WORK/storage" "$BIN" policy check --config "$config"
    done
else
    echo "# skipped: portcullis config on the shipped configs (no binary; set PORTCULLIS_BIN or cargo build)"
fi

# ---------------------------------------------------------------- scripts

for script in "$DEPLOY"/*.sh "$DEPLOY"/container/*.sh; do
    check "bash -n ${script#"$REPO"/}" bash -n "$script"
done

echo "deploy: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
