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
#   - every pod template (Deployment, StatefulSet, Job, CronJob) meets the
#     restricted Pod Security Standard the namespace enforces (known
#     exceptions are listed in PSS_KNOWN and printed);
#   - the S3 overlays keep their promises (replicas without data volumes, a
#     PodDisruptionBudget, a gc CronJob that never overlaps, one Secret for
#     the credentials, the token signing key from a mounted Secret) and, with
#     Garage, agree across files (replication factor and replicas, region,
#     endpoint, bucket, node count);
#   - components/garage/bootstrap.py passes its tests against a fake Garage;
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

# A copy of the tree with placeholder Secret sources: the real TLS key,
# htpasswd, token signing key, S3 credentials and Garage secrets (git-ignored,
# maybe present in a user's checkout) are never read.
cp -r "$DEPLOY/kubernetes" "$WORK/kubernetes"
find "$WORK/kubernetes" -path '*/secrets/*' -type f ! -name .gitignore -delete
SECRETS=$WORK/kubernetes/base/secrets
printf 'placeholder certificate\n' >"$SECRETS/tls.crt"
printf 'placeholder key\n' >"$SECRETS/tls.key"
printf 'alice:$2y$05$placeholder\n' >"$SECRETS/htpasswd"
printf 'placeholder key\n' >"$WORK/kubernetes/components/s3/secrets/token.key"
for secrets in "$WORK"/kubernetes/overlays/*/secrets; do
    # An overlay's own example (s3.env.example) when it ships one, so the
    # example is checked too; else keys in Garage's format.
    if [[ -f $secrets/../s3.env.example ]]; then
        cp "$secrets/../s3.env.example" "$secrets/s3.env"
    else
        printf 'PORTCULLIS_STORAGE__ACCESS_KEY_ID=GK%s\nPORTCULLIS_STORAGE__SECRET_ACCESS_KEY=%s\n' \
            "$(printf '0%.0s' {1..24})" "$(printf '0%.0s' {1..64})" >"$secrets/s3.env"
    fi
    printf 'GARAGE_RPC_SECRET=%s\nGARAGE_ADMIN_TOKEN=placeholder\nGARAGE_METRICS_TOKEN=placeholder\n' \
        "$(printf '0%.0s' {1..64})" >"$secrets/garage.env"
done

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

# The restricted Pod Security Standard (what base/namespace.yaml enforces),
# for every pod template of an overlay: the API server would refuse the pods
# otherwise. Exemptions are listed, and printed on every run, below.
PSS_KNOWN=()
check_pss() {
    python3 - "$1" "$2" "${PSS_KNOWN[@]}" <<'EOF'
import sys, yaml
rendered, overlay, known = sys.argv[1], sys.argv[2], set(sys.argv[3:])
docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                   "persistentVolumeClaim", "projected", "secret"}
problems, exempted = [], []
def pod_specs(doc):
    spec = doc.get("spec", {})
    if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        yield spec["template"]["spec"]
    elif doc["kind"] == "CronJob":
        yield spec["jobTemplate"]["spec"]["template"]["spec"]
    elif doc["kind"] == "Pod":
        yield spec
for doc in docs:
    for pod in pod_specs(doc):
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        found = []
        psc = pod.get("securityContext", {})
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            if pod.get(key):
                found.append(f"{key} is set")
        for v in pod.get("volumes", []):
            kinds = set(v) - {"name"}
            if not kinds <= ALLOWED_VOLUMES:
                found.append(f"volume {v['name']} is {', '.join(sorted(kinds - ALLOWED_VOLUMES))}")
        for c in pod.get("initContainers", []) + pod.get("containers", []):
            csc = c.get("securityContext", {})
            name = c["name"]
            if csc.get("privileged"):
                found.append(f"{name} is privileged")
            if csc.get("allowPrivilegeEscalation") is not False:
                found.append(f"{name} allowPrivilegeEscalation is not false")
            caps = csc.get("capabilities", {})
            if "ALL" not in caps.get("drop", []):
                found.append(f"{name} does not drop ALL capabilities")
            if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
                found.append(f"{name} adds capabilities {caps['add']}")
            if csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
                found.append(f"{name} runAsNonRoot is not true")
            if csc.get("runAsUser", psc.get("runAsUser")) == 0:
                found.append(f"{name} runs as uid 0")
            seccomp = csc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
            if seccomp not in ("RuntimeDefault", "Localhost"):
                found.append(f"{name} seccompProfile is {seccomp!r}")
            for p in c.get("ports", []):
                if p.get("hostPort"):
                    found.append(f"{name} uses hostPort {p['hostPort']}")
        for f in found:
            line = f"{overlay}: {where}: {f}"
            (exempted if line in known else problems).append(line)
for line in exempted:
    print(f"# known, not admitted under the restricted standard: {line}", file=sys.stderr)
for line in sorted(k for k in known if k.startswith(f"{overlay}: ") and k not in exempted):
    print(f"# PSS_KNOWN has an entry this overlay no longer needs: {line}", file=sys.stderr)
print("\n".join(problems))
sys.exit(1 if problems else 0)
EOF
}

# What deploy/README.md promises of the registry on S3 (an overlay whose
# config says backend = "s3"), and of Garage when the overlay has it: the
# values that must agree across files agree.
check_s3() {
    python3 - "$1" <<'EOF'
import base64, sys, tomllib, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
def find(kind, name=None):
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
def one(kind, name=None):
    found = find(kind, name)
    if len(found) != 1:
        raise SystemExit(f"expected one {kind} {name or ''}, found {len(found)}")
    return found[0]
problems = []
def expect(what, actual, wanted):
    if actual != wanted:
        problems.append(f"{what} is {actual!r}, expected {wanted!r}")

deployment = one("Deployment", "portcullis")
pod = deployment["spec"]["template"]["spec"]
container = next(c for c in pod["containers"] if c["name"] == "portcullis")
config_map = next(v["configMap"]["name"] for v in pod["volumes"] if v["name"] == "config")
config = tomllib.loads(one("ConfigMap", config_map)["data"]["portcullis.toml"])
secrets = {s["metadata"]["name"]: s for s in find("Secret")}
def effective_storage(c):
    """storage.* as the container sees it: the file, then envFrom Secrets, then env."""
    values = dict(config["storage"])
    def apply(name, value):
        if name.startswith("PORTCULLIS_STORAGE__"):
            values[name[len("PORTCULLIS_STORAGE__"):].lower()] = value
    for e in c.get("envFrom", []):
        for name, value in secrets.get(e.get("secretRef", {}).get("name"), {}).get("data", {}).items():
            apply(name, base64.b64decode(value).decode())
    for e in c.get("env", []):
        apply(e["name"], e.get("value"))
    return values
storage = effective_storage(container)
expect("storage.backend", storage.get("backend"), "s3")

# Replicas without a data volume, rolled one by one, guarded by a PDB.
if deployment["spec"].get("replicas", 1) < 2:
    problems.append("the Deployment runs fewer than 2 replicas")
expect("Deployment strategy", deployment["spec"].get("strategy", {}).get("type"), "RollingUpdate")
if find("PersistentVolumeClaim"):
    problems.append("a PersistentVolumeClaim is left: " + ", ".join(d["metadata"]["name"] for d in find("PersistentVolumeClaim")))
storage_volume = next(v for v in pod["volumes"] if v["name"] == "storage")
if "emptyDir" not in storage_volume or len(storage_volume) != 2:
    problems.append(f"the storage volume is {storage_volume}, expected an emptyDir (policy cache only)")
pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
pdbs = [p for p in find("PodDisruptionBudget")
        if p["spec"]["selector"].get("matchLabels", {}).items() <= pod_labels.items()]
if len(pdbs) != 1:
    problems.append(f"{len(pdbs)} PodDisruptionBudgets select the registry's pods, expected 1")
service = one("Service", "portcullis")
if service["spec"].get("sessionAffinity", "None") != "None":
    problems.append("the Service is sticky (sessionAffinity): any replica serves any upload")
for key in ("requests", "limits"):
    if "memory" not in container.get("resources", {}).get(key, {}):
        problems.append(f"the registry has no memory {key}")

# The credentials: a Secret given whole as environment.
env_secrets = [e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e]
if len(env_secrets) != 1 or env_secrets[0] not in secrets:
    problems.append(f"the registry's envFrom Secrets {env_secrets} are not one rendered Secret")

# The token signing key every replica shares (auth.token_key, required on
# S3): a file of a rendered Secret, mounted read-only in the registry.
token_key = config.get("auth", {}).get("token_key")
if not token_key:
    problems.append("auth.token_key is unset: the replicas would not share a signing key")
else:
    directory, _, file = token_key.rpartition("/")
    mount = next((m for m in container.get("volumeMounts", []) if m["mountPath"] == directory), None)
    volume = mount and next((v for v in pod["volumes"] if v["name"] == mount["name"]), None)
    secret = volume and secrets.get(volume.get("secret", {}).get("secretName"))
    if not (mount and mount.get("readOnly") and secret and file in secret.get("data", {})):
        problems.append(f"auth.token_key {token_key} is not a file of a rendered Secret mounted read-only at {directory}")

# gc: a CronJob that never overlaps, with the registry's image, config and Secret.
cron = one("CronJob", "portcullis-gc")
expect("gc concurrencyPolicy", cron["spec"].get("concurrencyPolicy"), "Forbid")
job = cron["spec"]["jobTemplate"]["spec"]
expect("gc parallelism", job.get("parallelism", 1), 1)
gc_pod = job["template"]["spec"]
gc = gc_pod["containers"][0]
if len(gc_pod["containers"]) != 1 or "gc" not in gc.get("command", []) + gc.get("args", []):
    problems.append("the CronJob does not run `portcullis gc` in one container")
expect("gc image", gc["image"], container["image"])
expect("gc envFrom", gc.get("envFrom"), container.get("envFrom"))
expect("gc's storage settings", effective_storage(gc), storage)
gc_config = next((v["configMap"]["name"] for v in gc_pod["volumes"] if "configMap" in v), None)
expect("gc config", gc_config, config_map)

# Garage, when the overlay brings it: the values several files must agree on.
garages = find("StatefulSet", "garage")
if garages:
    garage = garages[0]
    replicas = garage["spec"]["replicas"]
    gpod = garage["spec"]["template"]["spec"]
    gconfig_map = next(v["configMap"]["name"] for v in gpod["volumes"] if v["name"] == "config")
    gconfig = tomllib.loads(one("ConfigMap", gconfig_map)["data"]["garage.toml"])
    expect("Garage replication_factor", gconfig.get("replication_factor"), replicas)
    expect("Garage podManagementPolicy", garage["spec"].get("podManagementPolicy"), "Parallel")
    expect("storage.region", storage.get("region"), gconfig["s3_api"]["s3_region"])
    expect("storage.endpoint", storage.get("endpoint"),
           f"http://{one('Service', 'garage')['metadata']['name']}:{gconfig['s3_api']['api_bind_addr'].rsplit(':', 1)[1]}")
    expect("Garage kubernetes_discovery.namespace", gconfig["kubernetes_discovery"]["namespace"],
           garage["metadata"]["namespace"])
    headless = one("Service", garage["spec"]["serviceName"])
    expect("Garage's headless Service clusterIP", headless["spec"].get("clusterIP"), "None")
    expect("Garage's headless Service publishNotReadyAddresses", headless["spec"].get("publishNotReadyAddresses"), True)
    claims = sorted(t["metadata"]["name"] for t in garage["spec"].get("volumeClaimTemplates", []))
    expect("Garage volumeClaimTemplates", claims, ["data", "meta"])
    boot_pod = one("Job", "garage-bootstrap")["spec"]["template"]["spec"]
    boot = boot_pod["containers"][0]
    env = {e["name"]: e.get("value") for e in boot["env"]}
    expect("bootstrap GARAGE_NODES", env.get("GARAGE_NODES"), str(replicas))
    expect("bootstrap GARAGE_BUCKET", env.get("GARAGE_BUCKET"), storage.get("bucket"))
    expect("bootstrap GARAGE_REGION", env.get("GARAGE_REGION"), storage.get("region"))
    key_refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in boot["env"]
                if e["name"].startswith("PORTCULLIS_STORAGE__")}
    expect("the bootstrap's key Secret", key_refs, set(env_secrets))
    script = next(v["configMap"]["name"] for v in boot_pod["volumes"] if "configMap" in v)
    expect("the bootstrap's script ConfigMap", sorted(one("ConfigMap", script)["data"]), ["bootstrap.py"])
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
    if check_pss "$out/all.yaml" "$overlay" >"$WORK/pss.log" 2>"$WORK/pss-known.log"; then
        if [[ -s $WORK/pss-known.log ]]; then
            ok "overlay $overlay: every pod meets the restricted Pod Security Standard, but for $(wc -l <"$WORK/pss-known.log") known exception(s)"
        else
            ok "overlay $overlay: every pod meets the restricted Pod Security Standard"
        fi
    else
        not_ok "overlay $overlay: every pod meets the restricted Pod Security Standard" "$WORK/pss.log"
    fi
    cat "$WORK/pss-known.log"
    if grep -q 'backend = "s3"' "$out/all.yaml"; then
        check "overlay $overlay: replicas on S3 without data volumes, a PodDisruptionBudget, a gc CronJob that never overlaps, a shared token key, consistent settings" \
            check_s3 "$out/all.yaml"
    fi
done

check "components/garage/bootstrap.py passes its tests against a fake Garage" \
    python3 "$DEPLOY/kubernetes/components/garage/bootstrap_test.py"

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
    "$DEPLOY/kubernetes/components/s3/config/portcullis.toml"
)
BIN=${PORTCULLIS_BIN:-}
if [[ -z $BIN ]]; then
    # The newer of the two builds: a stale release binary must not judge
    # configs written for the current source.
    for candidate in "$REPO/target/release/portcullis" "$REPO/target/debug/portcullis"; do
        [[ -x $candidate ]] || continue
        if [[ -z $BIN || $candidate -nt $BIN ]]; then BIN=$candidate; fi
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
