#!/usr/bin/env bash
# trellis the way its users run it, on a cluster without kind: `kubectl apply -k deploy` with
# the image built here, on 3 nodes whose "kubelet" is the node driver over a real containerd per
# node (tests/src/bin/kube-cluster.rs; ../shared/MACHINE.md says why there is no kind here).
#
#   sudo hack/kube-e2e.sh         # the whole scenario below, then everything removed (hack/test.sh)
#   sudo hack/kube-e2e.sh up      # a cluster with trellis applied, left running; prints KUBECONFIG
#   sudo hack/kube-e2e.sh down    # remove it
#
# The scenario, exactly as an operator types it (kubectl on the host):
#  1. kubectl apply -k deploy -> an agent Pod per node Running and Ready (its readiness probe),
#     install-cni's plugin and conflist on each node;
#  2. 6 app Pods (the scheduler spreads them, 2 per node) Running with addresses from their node's
#     podCIDR; the full ping matrix between them; a pod reaches an outside host as its node;
#  3. `kubectl patch configmap` vxlan -> host-gw -> vxlan under a 20 ms ping between pods on two
#     nodes: longest gap <= 1 s, each switch a BackendSwitched Event from every node;
#  4. kubectl delete pod <agent pod>: the DaemonSet controller recreates it, 0 pings lost;
#  5. app Pods deleted -> their addresses released on disk; kubectl delete -k deploy -> agent Pods
#     gone, Nodes and other namespaces untouched;
#  6. negative proofs: the same DaemonSet without NET_ADMIN, and with an image without iptables,
#     each never Ready and saying why in the agent's log.
# Figures printed at the end: seconds from apply to all agents Ready and to the first app Pod
# Running, the longest ping gap (and losses) across the switches and across the agent restart,
# the image size.
# Environment: KUBE_E2E_DIR (default /var/tmp/trellis-kube), KUBE_E2E_PORT (API on the host's
# loopback, default 16443).
#
# Where it differs from a real cluster: `kubectl exec` is not served (the emulator has no
# streaming), so commands "in a pod" run in its network namespace with nsenter, the pid found
# through the node's containerd; `kubectl logs` neither, so the agent's log is read from the
# node's pod log file, where kubelet keeps it too.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
DIR=${KUBE_E2E_DIR:-/var/tmp/trellis-kube}
PORT=${KUBE_E2E_PORT:-16443}
NODES=3
NS=trellis-system
AGENTS=app.kubernetes.io/component=agent
APP_IMAGE=localhost/trellis/busybox:1 # imported on every node by the node harness
MAX_GAP_MS=1000
export KUBECONFIG=$DIR/kubeconfig

say() { printf 'kube-e2e: %s\n' "$*" >&2; }
die() {
    say "FAIL: $*"
    exit 1
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces, containerd)"
for tool in kubectl ctr nsenter jq umoci python3 flock; do
    command -v "$tool" >/dev/null || die "$tool not found (hack/install-deps.sh installs what is missing)"
done
# One run at a time per DIR (two would tear each other's cluster down). The cluster process
# does not inherit the lock: after `up` it outlives this script, and `down` must get the lock.
exec 8>"$DIR.lock"
flock -n 8 || die "another hack/kube-e2e.sh holds $DIR.lock"

down() {
    if [ -x "$TARGET/debug/kube-cluster" ]; then
        "$TARGET/debug/kube-cluster" down --dir "$DIR"
    fi
    rm -f "$DIR.log"
}
# A cluster left by `up` is the user's: never torn down behind their back.
refuse_running() {
    local pid
    pid=$(jq -r .pid "$DIR/state.json" 2>/dev/null) || return 0
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        die "a cluster from 'hack/kube-e2e.sh up' is running in $DIR (pid $pid): sudo hack/kube-e2e.sh down first"
    fi
}
if [ "${1:-}" = down ]; then
    down
    exit 0
fi

# --- build: the binaries, the image, and the image without iptables ----------------------------
# The image `kubectl apply -k deploy` will ask for (deploy/kustomization.yaml may rename it).
image=$(kubectl kustomize "$ROOT/deploy" | sed -n 's/^[[:space:]]*image:[[:space:]]*//p' | sort -u)
[ "$(wc -l <<<"$image")" -eq 1 ] || die "deploy names several images: $image"
[ "${image%:*}" = trellis ] || die "deploy's image is $image: this script builds trellis:<tag> only"
tag=${image##*:}
archive=$TARGET/image/trellis-$tag.oci.tar
bare_tag=$tag-no-iptables
bare_archive=$TARGET/image/trellis-$bare_tag.oci.tar
build() {
    (cd "$ROOT" && cargo build --locked -p trellis-cni -p trellis-agent -p trellis-e2e --bins)
    "$ROOT/hack/build-image.sh" --out "$archive"
    image_without_iptables
}
# The trellis image plus one layer of whiteouts for every iptables/nft tool and the wrapper:
# what a careless image build would ship.
image_without_iptables() {
    local lay
    lay=$(mktemp -d "$TARGET/image/bare.XXXXXX")
    mkdir -p "$lay/layout" "$lay/wh/usr/sbin" "$lay/wh/usr/local/sbin"
    tar -xf "$archive" -C "$lay/layout"
    local manifest base
    manifest=$lay/layout/blobs/sha256/$(jq -r '.manifests[0].digest | sub("sha256:"; "")' "$lay/layout/index.json")
    base=$lay/layout/blobs/sha256/$(jq -r '.layers[0].digest | sub("sha256:"; "")' "$manifest")
    tar -tzf "$base" | sed -n 's#^\./usr/sbin/\(.*tables.*\|nft\)$#\1#p' | while read -r f; do
        : >"$lay/wh/usr/sbin/.wh.$f"
    done
    : >"$lay/wh/usr/local/sbin/.wh.iptables-wrapper"
    [ -e "$lay/wh/usr/sbin/.wh.iptables" ] || die "no usr/sbin/iptables in the image's base layer"
    tar --create --file "$lay/wh.tar" --directory "$lay/wh" --owner=0 --group=0 --numeric-owner usr
    umoci raw add-layer --image "$lay/layout:$tag" --tag "$bare_tag" "$lay/wh.tar"
    jq --arg t "$bare_tag" --arg n "docker.io/library/trellis:$bare_tag" \
        '.manifests |= map(select(.annotations["org.opencontainers.image.ref.name"] == $t)
                           | .annotations["io.containerd.image.name"] = $n)' \
        "$lay/layout/index.json" >"$lay/index.json"
    mv "$lay/index.json" "$lay/layout/index.json"
    umoci gc --layout "$lay/layout"
    tar --create --file "$bare_archive" --directory "$lay/layout" --owner=0 --group=0 --numeric-owner oci-layout index.json blobs
    rm -rf "$lay"
}

# --- the cluster ----------------------------------------------------------------------------------
cluster_pid=
up_cluster() {
    refuse_running
    down
    mkdir -p "$(dirname "$DIR")"
    local log=$DIR.log t0
    (umask 077 && : >"$log") # the cluster's log names its admin kubeconfig
    t0=$(now)
    setsid "$TARGET/debug/kube-cluster" up --dir "$DIR" --nodes "$NODES" --port "$PORT" \
        --image "$archive" --image "$bare_archive" >"$log" 2>&1 8>&- &
    cluster_pid=$!
    for _ in $(seq 600); do
        [ -e "$DIR/ready" ] && break
        kill -0 "$cluster_pid" 2>/dev/null || die "kube-cluster exited: $(tail -n 30 "$log")"
        sleep 0.2
    done
    [ -e "$DIR/ready" ] || die "kube-cluster not up after 120 s: $(tail -n 30 "$log")"
    say "cluster up in $(since "$t0") s: $NODES nodes (containerd each), API at $(kubectl config view -o jsonpath='{.clusters[0].cluster.server}')"
}
node_field() { jq -r --arg n "$1" --arg f "$2" '.nodes[] | select(.name == $n) | .[$f]' "$DIR/state.json"; }
node_names() { jq -r '.nodes[].name' "$DIR/state.json"; }

# Polls COMMAND every 0.2 s for up to SECONDS; dies naming WHAT.
wait_for() {
    local limit=$1 what=$2
    shift 2
    local end=$((SECONDS + limit))
    until "$@"; do
        [ "$SECONDS" -lt "$end" ] || die "$what: not within $limit s"
        sleep 0.2
    done
}

ready_agents() {
    kubectl -n "$NS" get pods -l "$AGENTS" -o json | jq '[.items[] | select(.metadata.deletionTimestamp == null)
        | select(any(.status.conditions[]?; .type == "Ready" and .status == "True"))] | length'
}
all_agents_ready() { [ "$(ready_agents)" -eq "$NODES" ]; }
agent_on() { # NODE: the name of the live agent Pod there
    kubectl -n "$NS" get pods -l "$AGENTS" -o json |
        jq -r --arg n "$1" '.items[] | select(.spec.nodeName == $n and .metadata.deletionTimestamp == null) | .metadata.name'
}
# The pid of a pod's first container, from its node's containerd.
pod_pid() { # NAMESPACE POD
    local node id tasks
    node=$(kubectl -n "$1" get pod "$2" -o jsonpath='{.spec.nodeName}') || die "pod $1/$2: no node"
    id=$(kubectl -n "$1" get pod "$2" -o jsonpath='{.status.containerStatuses[0].containerID}') || die "pod $1/$2: no container"
    tasks=$(ctr -a "$(node_field "$node" socket)" -n k8s.io tasks ls) || die "ctr on $node failed"
    awk -v id="${id#containerd://}" '$1 == id { print $2 }' <<<"$tasks"
}
# The first app pod on another node than POD's.
app_elsewhere() { # POD
    local p
    for p in "${APPS[@]}"; do
        if [ "${NODE_OF[$p]}" != "${NODE_OF[$1]}" ]; then
            echo "$p"
            return 0
        fi
    done
    die "no app pod on another node than $1's"
}
in_pod() { # POD COMMAND...: COMMAND in the network namespace of app Pod POD
    local pid=${PID[$1]}
    shift
    nsenter -t "$pid" -n "$@"
}
# The container log of POD's CONTAINER (all attempts), as the node keeps it.
pod_log() { # NAMESPACE POD CONTAINER
    local node uid
    node=$(kubectl -n "$1" get pod "$2" -o jsonpath='{.spec.nodeName}')
    uid=$(kubectl -n "$1" get pod "$2" -o jsonpath='{.metadata.uid}')
    cat "$(node_field "$node" pods)/$uid/logs/$3/"*.log 2>/dev/null || true
}

# --- 1. kubectl apply -k deploy --------------------------------------------------------------------
apply_deploy() {
    local t0
    t0=$(now)
    kubectl apply -k "$ROOT/deploy" >/dev/null
    wait_for 180 "$NODES agent Pods Ready" all_agents_ready
    APPLY_TO_READY=$(since "$t0")
    say "1. kubectl apply -k deploy -> $NODES agent Pods Running and Ready in $APPLY_TO_READY s"
    local n root
    for n in $(node_names); do
        root=$(node_field "$n" root)
        [ -x "$root/opt/cni/bin/trellis" ] || die "$n: install-cni put no plugin in /opt/cni/bin"
        jq -e '.plugins[0].type == "trellis"' "$root/etc/cni/net.d/10-trellis.conflist" >/dev/null ||
            die "$n: no trellis conflist in /etc/cni/net.d"
        grep -q "^FLANNEL_SUBNET=" "$root/run/flannel/subnet.env" || die "$n: no /run/flannel/subnet.env"
    done
    say "   each node: /opt/cni/bin/trellis, /etc/cni/net.d/10-trellis.conflist, /run/flannel/subnet.env"
}

# --- 2. app Pods, ping matrix, masquerade ------------------------------------------------------------
APPS=(app-1 app-2 app-3 app-4 app-5 app-6)
app_pods() {
    local p t0
    t0=$(now)
    for p in "${APPS[@]}"; do
        cat <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $p, namespace: default, labels: {app: trellis-e2e}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: $APP_IMAGE
    command: ["/bin/busybox", "sh", "-c", "trap 'exit 0' TERM; /bin/busybox sleep 100000 & wait"]
---
EOF
    done | kubectl apply -f - >/dev/null
    wait_for 60 "the first app Pod Running" first_app_running
    FIRST_APP=$(since "$t0")
    wait_for 120 "all app Pods Running" all_apps_running
    say "2. ${#APPS[@]} app Pods: first Running in $FIRST_APP s, all in $(since "$t0") s"
    local pod node ip cidr
    # Read once: the app pods' containers do not change until they are deleted.
    declare -gA IP NODE_OF PID
    for pod in "${APPS[@]}"; do
        node=$(kubectl get pod "$pod" -o jsonpath='{.spec.nodeName}')
        ip=$(kubectl get pod "$pod" -o jsonpath='{.status.podIP}')
        cidr=$(kubectl get node "$node" -o jsonpath='{.spec.podCIDR}')
        python3 -c 'import ipaddress,sys; sys.exit(ipaddress.ip_address(sys.argv[1]) not in ipaddress.ip_network(sys.argv[2]))' \
            "$ip" "$cidr" || die "$pod on $node has $ip, outside the node's podCIDR $cidr"
        IP[$pod]=$ip
        PID[$pod]=$(pod_pid default "$pod")
        [ -n "${PID[$pod]}" ] || die "no running container for pod $pod"
        NODE_OF[$pod]=$node
        say "   $pod  $node  $ip  (podCIDR $cidr)"
    done
    local per
    per=$(printf '%s\n' "${NODE_OF[@]}" | sort | uniq -c | awk '{print $1}' | sort -u | tr '\n' ' ')
    [ "$per" = "2 " ] || die "app Pods not 2 per node: $(printf '%s\n' "${NODE_OF[@]}" | sort | uniq -c | tr '\n' ' ')"
}
running_apps() {
    kubectl get pods -l app=trellis-e2e -o json | jq '[.items[] | select(.status.phase == "Running" and .status.podIP != null)] | length'
}
first_app_running() { [ "$(running_apps)" -ge 1 ]; }
all_apps_running() { [ "$(running_apps)" -eq "${#APPS[@]}" ]; }

ping_matrix() {
    local a b failed=0 pairs=0
    for a in "${APPS[@]}"; do
        for b in "${APPS[@]}"; do
            [ "$a" != "$b" ] || continue
            pairs=$((pairs + 1))
            in_pod "$a" ping -c 1 -W 2 "${IP[$b]}" >/dev/null 2>&1 || {
                say "   $a (${NODE_OF[$a]}) -> $b (${NODE_OF[$b]}) ${IP[$b]}: no reply"
                failed=$((failed + 1))
            }
        done
    done
    [ "$failed" -eq 0 ] || die "ping matrix: $failed of $pairs pairs failed"
    say "   ping matrix: $pairs of $pairs pairs answer (within and across nodes)"
}

# An outside host (no route to the pod network) tells whom it sees: the node, not the pod.
masquerade() {
    local ext port=8081 seen node_ip
    ext=$(jq -r .ext_netns "$DIR/state.json")
    ip netns exec "$ext" python3 -c "
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', $port)); s.listen(1); s.settimeout(20)
c, a = s.accept(); c.sendall((a[0] + '\n').encode()); c.close()" &
    SERVER_PID=$!
    local server=$SERVER_PID
    seen=
    for _ in $(seq 50); do
        seen=$(in_pod app-1 python3 -c "
import socket
s = socket.create_connection(('$(jq -r .ext_ip "$DIR/state.json")', $port), timeout=3)
print(s.recv(64).decode().strip())" 2>/dev/null) && break
        sleep 0.1
    done
    wait "$server" || true
    node_ip=$(node_field "${NODE_OF[app-1]}" ip)
    [ "$seen" = "$node_ip" ] || die "the outside host saw '$seen' for app-1, not its node's $node_ip"
    say "   app-1 (${IP[app-1]}) reaches the outside host, which sees its node $node_ip"
}

# --- 3. live backend switches under a 20 ms ping ------------------------------------------------------
PING_OUT=
start_ping() { # FROM TO
    local pid=${PID[$1]}
    PING_OUT=$(mktemp "${TMPDIR:-/tmp}/trellis-kube-ping.XXXXXX")
    # nsenter execs ping, so $! is ping's pid and SIGINT reaches it.
    # (A deadline, so that no ping outlives the script whatever happens.)
    nsenter -t "$pid" -n ping -D -i 0.02 -W 1 -w 600 "${IP[$2]}" >"$PING_OUT" 2>&1 &
    PING_PID=$!
    wait_for 10 "the ping loop's first reply" grep -q " bytes from " "$PING_OUT"
}
# Prints "received lost longest_gap_ms" from the echo replies so far (ICMP errors and
# duplicates are no replies). With END (a unix time), the time from the last reply to END
# counts as a gap too, and the echo requests sent meanwhile (at 20 ms) as lost: a path that
# died and never came back shows.
ping_figures() { # [END]
    awk -v end="${1:-}" '/ bytes from .*icmp_seq=/ && !/DUP!/ {
        t = substr($1, 2, length($1) - 2) + 0
        match($0, /icmp_seq=[0-9]+/); s = substr($0, RSTART + 9, RLENGTH - 9) + 0
        if (!(s in seen)) { seen[s] = 1; n++ }
        if (min == "" || s < min) min = s
        if (s > max) max = s
        if (prev != "" && t - prev > gap) gap = t - prev
        prev = t
    } END {
        lost = max - min + 1 - n
        if (end != "" && prev != "") {
            if (end - prev > gap) gap = end - prev
            lost += int((end - prev) / 0.02 - 1 > 0 ? (end - prev) / 0.02 - 1 : 0)
        }
        printf "%d %d %d\n", n, lost, gap * 1000
    }' "$PING_OUT"
}
# Stops the loop; prints its figures up to now.
stop_ping() {
    local end
    end=$(now)
    kill -INT "$PING_PID" 2>/dev/null || true
    wait "$PING_PID" 2>/dev/null || true
    PING_PID=
    ping_figures "$end"
}
switch_events() { # FROM TO: how many nodes have posted the BackendSwitched Event for it
    kubectl get events.v1.events.k8s.io -n default -o json |
        jq --arg note "backend switched from $1 to $2 " '[.items[] | select(.reason == "BackendSwitched"
            and (.note | startswith($note))) | .regarding.name] | unique | length'
}
switched_everywhere() { [ "$(switch_events "$1" "$2")" -ge "$NODES" ]; }
set_backend() {
    local conf
    conf=$(kubectl -n "$NS" get configmap trellis-config -o json |
        jq -r '.data["net-conf.json"]' | jq -c --arg b "$1" '.Backend.Type = $b')
    kubectl -n "$NS" patch configmap trellis-config --type merge \
        -p "$(jq -n --arg c "$conf" '{data: {"net-conf.json": $c}}')" >/dev/null
}
switches() {
    local from=vxlan to a=app-1 b received lost gap
    b=$(app_elsewhere "$a")
    start_ping "$a" "$b"
    for to in host-gw vxlan; do
        set_backend "$to"
        wait_for 60 "BackendSwitched $from -> $to from every node" switched_everywhere "$from" "$to"
        sleep 1 # a second of replies after the switch: a path that did not come back shows
        say "3. $from -> $to: every node posted BackendSwitched; ping $a -> $b so far (received lost longest-gap-ms): $(ping_figures "$(now)")"
        from=$to
    done
    read -r received lost gap < <(stop_ping)
    [ "$gap" -le "$MAX_GAP_MS" ] || die "longest ping gap across the switches: $gap ms (max $MAX_GAP_MS)"
    SWITCH_FIGURE="$received replies, $lost lost, longest gap $gap ms"
    say "   vxlan -> host-gw -> vxlan under a 20 ms ping $a -> $b: $SWITCH_FIGURE"
    rm -f "$PING_OUT"
}

# --- 4. an agent Pod deleted -------------------------------------------------------------------------
agent_restart() {
    local a=app-1 b node old new received lost gap
    b=$(app_elsewhere "$a")
    node=${NODE_OF[$a]}
    old=$(agent_on "$node")
    start_ping "$a" "$b"
    kubectl -n "$NS" delete pod "$old" --wait=false >/dev/null
    replaced() {
        new=$(agent_on "$node")
        [ -n "$new" ] && [ "$new" != "$old" ] && all_agents_ready
    }
    wait_for 120 "a new agent Pod on $node, Ready" replaced
    sleep 1
    read -r received lost gap < <(stop_ping)
    [ "$lost" -eq 0 ] || die "the agent restart on $node lost $lost pings (longest gap $gap ms)"
    RESTART_FIGURE="$received replies, 0 lost, longest gap $gap ms"
    say "4. kubectl delete pod $old -> $new Ready on $node; ping $a -> $b: $RESTART_FIGURE"
    rm -f "$PING_OUT"
}

# --- 5. app Pods and then trellis deleted ------------------------------------------------------------
ipam_files() { # NODE: the addresses (v4 and v6) host-local holds on that node
    find "$(node_field "$1" root)/var/lib/cni/networks" -type f ! -name lock ! -name 'last_reserved_ip*' 2>/dev/null | wc -l
}
no_apps() { [ "$(kubectl get pods -l app=trellis-e2e -o json | jq '.items | length')" -eq 0 ]; }
no_agents() { [ "$(kubectl -n "$NS" get pods -l "$AGENTS" -o json | jq '.items | length')" -eq 0 ]; }
no_namespace() { ! kubectl get namespace "$NS" >/dev/null 2>&1; }
# kubectl delete -k OVERLAY, then until the namespace is gone (a terminating one refuses content).
delete_k() {
    kubectl delete -k "$1" --wait=false >/dev/null
    wait_for 90 "agent Pods gone" no_agents
    wait_for 90 "namespace $NS gone" no_namespace
}
delete_all() {
    local n held=0
    kubectl delete pods -l app=trellis-e2e --wait=false >/dev/null
    wait_for 60 "app Pods gone" no_apps
    for n in $(node_names); do held=$((held + $(ipam_files "$n"))); done
    [ "$held" -eq 0 ] || die "$held pod addresses still held on disk after the app Pods went"
    say "5. app Pods deleted: no address left in any node's /var/lib/cni/networks"
    delete_k "$ROOT/deploy"
    [ "$(kubectl get nodes -o json | jq '.items | length')" -eq "$NODES" ] || die "Nodes disturbed by the delete"
    kubectl get namespace default kube-system >/dev/null || die "namespaces disturbed by the delete"
    say "   kubectl delete -k deploy: agent Pods and $NS gone; $NODES Nodes, default and kube-system still there"
}

# --- 6. negative proofs ------------------------------------------------------------------------------
overlay() { # NAME: an overlay of deploy/ in $DIR/NAME, its patch on stdin
    local dir=$DIR/$1
    mkdir -p "$dir"
    cat >"$dir/patch.yaml"
    cat >"$dir/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: ["$(realpath --relative-to="$dir" "$ROOT/deploy")"]
patches:
- path: patch.yaml
  target: {kind: DaemonSet, name: trellis}
EOF
    echo "$dir"
}
# Applies OVERLAY; every agent must stay unready and its log must match PATTERN.
must_fail() { # OVERLAY PATTERN WHAT READYZ_PATTERN
    local overlay=$1 pattern=$2 what=$3 reason=$4 n pod log code body
    kubectl apply -k "$overlay" >/dev/null
    # (bash's dynamic scope: has_log sees n, pod, log and pattern of this call.)
    has_log() {
        pod=$(agent_on "$n")
        [ -n "$pod" ] && log=$(pod_log "$NS" "$pod" trellis) && grep -qE "$pattern" <<<"$log"
    }
    for n in $(node_names); do
        wait_for 90 "$what: the agent log on $n explaining it" has_log
        say "   $what, $n: log: $(grep -E "$pattern" <<<"$log" | head -n 1 | sed 's/^.* stderr [FP] //' | cut -c 1-240)"
        # The probe's own answer, not just a Pod not (yet) marked Ready.
        read -r code body < <(readyz "$n")
        [ "$code" = 503 ] || die "$what: /readyz on $n answers $code: $body"
        grep -qE "$reason" <<<"$body" || die "$what: /readyz on $n does not say why: $body"
        say "   $what, $n: /readyz 503: $(cut -c 1-160 <<<"$body")"
    done
    [ "$(ready_agents)" -eq 0 ] || die "$what: $(ready_agents) agents Ready anyway"
    delete_k "$overlay"
}
# "CODE BODY" of the agent's readiness endpoint, as the kubelet's probe reaches it (the node's
# loopback, the agent being in the host network).
readyz() { # NODE
    ip netns exec "$(node_field "$1" netns)" python3 -c '
import urllib.request, urllib.error
try:
    r = urllib.request.urlopen("http://127.0.0.1:9402/readyz", timeout=3); print(r.status, r.read().decode().replace("\n", " "))
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode().replace("\n", " "))
except Exception as e:
    print(0, e)'
}
negative() {
    local o
    o=$(overlay no-net-admin <<'EOF'
- op: replace
  path: /spec/template/spec/containers/0/securityContext/capabilities/add
  value: ["NET_RAW"]
EOF
)
    must_fail "$o" "runs without CAP_NET_ADMIN" "6. without NET_ADMIN" "runs without CAP_NET_ADMIN"
    o=$(overlay no-iptables <<EOF
- op: replace
  path: /spec/template/spec/containers/0/image
  value: trellis:$bare_tag
EOF
)
    must_fail "$o" "firewall backend unavailable: cannot run .iptables" "6. image without iptables" "firewall"
}

# --- main ----------------------------------------------------------------------------------------------
START=$(now)
build
compressed=$(tar -xOf "$archive" index.json | jq -r '.manifests[0].digest | sub("sha256:"; "blobs/sha256/")' |
    xargs -I{} tar -xOf "$archive" {} | jq '[.layers[].size] | add')
# Whatever happens, nothing stays; after a failure the cluster's log tail says what it saw.
on_exit() {
    local status=$?
    [ -z "$PING_PID" ] || kill "$PING_PID" 2>/dev/null || true
    [ -z "$SERVER_PID" ] || kill "$SERVER_PID" 2>/dev/null || true
    rm -f "$PING_OUT"
    if [ "$status" -ne 0 ] && [ -s "$DIR.log" ]; then
        say "kube-cluster's log (tail):"
        tail -n 20 "$DIR.log" >&2
    fi
    # A kube-cluster still starting has written no state for `down` yet: its own SIGTERM
    # teardown then.
    if [ -n "$cluster_pid" ] && kill -0 "$cluster_pid" 2>/dev/null; then
        kill -TERM "$cluster_pid" 2>/dev/null || true
        for _ in $(seq 450); do kill -0 "$cluster_pid" 2>/dev/null || break; sleep 0.2; done
    fi
    down
}
PING_PID='' SERVER_PID='' PING_OUT=''
trap on_exit EXIT
if [ "${1:-}" = up ]; then
    up_cluster
    apply_deploy
    trap - EXIT
    say "left running. export KUBECONFIG=$KUBECONFIG; kubectl get pods -A -o wide; remove with: sudo hack/kube-e2e.sh down"
    exit 0
fi
up_cluster
apply_deploy
app_pods
ping_matrix
masquerade
switches
agent_restart
delete_all
negative
trap - EXIT
down
say "PASS in $(since "$START") s: apply -> $NODES agents Ready ${APPLY_TO_READY} s; first app Pod Running ${FIRST_APP} s; switches: $SWITCH_FIGURE; agent Pod deleted: $RESTART_FIGURE; image $(awk -v b="$compressed" 'BEGIN { printf "%.1f", b / 1048576 }') MiB compressed"
