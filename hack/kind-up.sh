#!/usr/bin/env bash
# Bring up a kind cluster networked by trellis, and prove it: a pod on one worker pings a pod
# on the other.
#
#   hack/kind-up.sh            # create (or reuse) the cluster, build, load, apply, test
#   hack/kind-down.sh          # delete it
#
# An existing cluster of that name is reused only if it runs no other pod network: one created
# by kind's defaults runs kindnet, whose conflist would win over trellis's, so it is refused
# (or deleted and created again with TRELLIS_KIND_RECREATE=1).
#
# Portable to macOS's bash 3.2 and BSD tools (hack/check-portable.sh checks it); tested with
# fake docker, kind and kubectl by hack/test-kind-scripts.sh.
#
# Needs docker (with BuildKit, the default builder), kind and kubectl. Environment:
#   TRELLIS_KIND_CLUSTER   cluster name (default trellis; kubectl context kind-<name>)
#   TRELLIS_KIND_RECREATE  1: delete an existing cluster of that name that cannot be reused
#   TRELLIS_IMAGE          image to build and load (default trellis:kind-<timestamp>, so that a
#                          rebuild rolls the DaemonSet)
#   TRELLIS_KIND_NODE_IMAGE  kindest/node image to use (default: kind's own default)
#   TRELLIS_PING_IMAGE     image of the two test pods (default busybox:1.36)
#   TRELLIS_TIMEOUT        seconds to wait for each stage (default 300)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLUSTER=${TRELLIS_KIND_CLUSTER:-trellis}
IMAGE=${TRELLIS_IMAGE:-trellis:kind-$(date +%Y%m%d%H%M%S)}
PING_IMAGE=${TRELLIS_PING_IMAGE:-busybox:1.36}
TIMEOUT=${TRELLIS_TIMEOUT:-300}
CONTEXT=kind-$CLUSTER
TEST_NS=trellis-smoke

say() { printf '\n==> %s\n' "$*"; }
die() {
    printf 'kind-up: %s\n' "$*" >&2
    exit 1
}
# Every kubectl call names the kind context, so a user's current context is never touched.
k() { kubectl --context "$CONTEXT" "$@"; }

for tool in docker kind kubectl; do
    command -v "$tool" >/dev/null || die "$tool is required (see https://kind.sigs.k8s.io for kind)"
done
docker info >/dev/null 2>&1 || die "docker is installed but its daemon is not reachable"

overlay=
on_failure() {
    local rc=$?
    [ -z "$overlay" ] || rm -rf "$overlay"
    [ "$rc" = 0 ] && return
    printf '\nkind-up failed (exit %s). State for diagnosis:\n' "$rc" >&2
    k get nodes -o wide >&2 || true
    k -n trellis-system get pods -o wide >&2 || true
    k -n trellis-system logs ds/trellis -c install-cni --tail=20 >&2 || true
    k -n trellis-system logs ds/trellis -c trellis --tail=40 >&2 || true
    k -n "$TEST_NS" get pods -o wide >&2 || true
}

# 1. Cluster --------------------------------------------------------------------------------
cluster_exists() { kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; }

# Why the existing cluster cannot take trellis, or nothing. kind's default CNI (kindnet) runs as
# a DaemonSet in kube-system; its 10-kindnet.conflist would sort before 10-trellis.conflist.
unusable_reason() {
    local found
    if ! found=$(k -n kube-system get daemonset kindnet --ignore-not-found -o name 2>&1); then
        echo "its API server does not answer ($found)"
    elif [ -n "$found" ]; then
        echo "it runs kindnet, kind's default pod network (it was not created from deploy/kind-config.yaml)"
    fi
}

if cluster_exists; then
    reason=$(unusable_reason)
    if [ -z "$reason" ]; then
        say "reusing kind cluster $CLUSTER"
    elif [ "${TRELLIS_KIND_RECREATE:-}" = 1 ]; then
        say "deleting kind cluster $CLUSTER: $reason"
        kind delete cluster --name "$CLUSTER"
    else
        die "kind cluster $CLUSTER exists but cannot take trellis: $reason. Delete it (TRELLIS_KIND_CLUSTER=$CLUSTER hack/kind-down.sh), pick another name (TRELLIS_KIND_CLUSTER=...), or rerun with TRELLIS_KIND_RECREATE=1"
    fi
fi
if ! cluster_exists; then
    say "creating kind cluster $CLUSTER (default CNI disabled, podSubnet from deploy/kind-config.yaml)"
    create=(kind create cluster --name "$CLUSTER" --config "$ROOT/deploy/kind-config.yaml")
    if [ -n "${TRELLIS_KIND_NODE_IMAGE:-}" ]; then
        create+=(--image "$TRELLIS_KIND_NODE_IMAGE")
    fi
    # No --wait: without a CNI the nodes cannot become Ready until trellis is applied.
    "${create[@]}"
fi

# From here on a failure concerns a cluster that exists: show its state. (A refusal above
# has nothing to show.)
trap on_failure EXIT

# kind does not load br_netfilter, and without it (or with bridge-nf-call-iptables=0, a
# per-namespace sysctl) pod -> Service -> pod on the same node fails: the agent reports it and
# stays not ready. kind's nodes are privileged containers sharing the host's kernel, so the
# module is loaded from one of them, and the sysctl set in each.
say "enabling br_netfilter on the nodes"
for node in $(kind get nodes --name "$CLUSTER"); do
    docker exec "$node" sh -c 'modprobe br_netfilter 2>/dev/null || true;
        sysctl -qw net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1' \
        || die "cannot enable br_netfilter on $node: run 'modprobe br_netfilter' on the Docker host"
done

# 2. Image ----------------------------------------------------------------------------------
say "building $IMAGE"
DOCKER_BUILDKIT=1 docker build -f "$ROOT/deploy/Dockerfile" -t "$IMAGE" "$ROOT"
say "loading $IMAGE into the nodes"
kind load docker-image "$IMAGE" --name "$CLUSTER"

# 3. Apply ----------------------------------------------------------------------------------
say "applying deploy/ with image $IMAGE"
overlay=$(mktemp -d)
image_name=${IMAGE%:*}
image_tag=${IMAGE##*:}
case $image_tag in
    "$IMAGE" | */*) die "TRELLIS_IMAGE must carry a tag (name:tag), got $IMAGE" ;;
esac
# kustomize takes only relative resource paths: a copy of deploy/ beside the overlay is one,
# with no GNU `realpath --relative-to` needed.
cp -R "$ROOT/deploy" "$overlay/base"
cat >"$overlay/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - base
images:
  - name: trellis
    newName: $image_name
    newTag: "$image_tag"
EOF
k apply -k "$overlay"
rm -rf "$overlay"
overlay=

say "waiting for the trellis DaemonSet and for every node to be Ready"
k -n trellis-system rollout status ds/trellis --timeout="${TIMEOUT}s"
k wait --for=condition=Ready nodes --all --timeout="${TIMEOUT}s"
k get nodes -o custom-columns='NODE:.metadata.name,READY:.status.conditions[?(@.type=="Ready")].status,PODCIDR:.spec.podCIDR,BACKEND:.metadata.annotations.flannel\.alpha\.coreos\.com/backend-type'

# 4. Cross-node ping ------------------------------------------------------------------------
workers=()
while IFS= read -r node; do
    [ -z "$node" ] || workers+=("$node")
done <<EOF
$(k get nodes -l '!node-role.kubernetes.io/control-plane' -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}')
EOF
[ "${#workers[@]}" -ge 2 ] || die "need two worker nodes, found ${#workers[@]} (deploy/kind-config.yaml)"

say "starting a pod on ${workers[0]} and one on ${workers[1]}"
k create namespace "$TEST_NS" --dry-run=client -o yaml | k apply -f -
for i in 0 1; do
    k -n "$TEST_NS" delete pod "ping-$i" --ignore-not-found --wait=true
    k -n "$TEST_NS" apply -f - <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: ping-$i
  namespace: $TEST_NS
spec:
  nodeName: ${workers[$i]}
  terminationGracePeriodSeconds: 1
  containers:
    - name: ping
      image: $PING_IMAGE
      command: ["sleep", "3600"]
EOF
done
k -n "$TEST_NS" wait --for=condition=Ready pod/ping-0 pod/ping-1 --timeout="${TIMEOUT}s"

ipv4_to_int() {
    local a b c d
    IFS=. read -r a b c d <<<"$1"
    echo $(((a << 24) | (b << 16) | (c << 8) | d))
}
# The trap this catches: a foreign conflist winning, so pods get addresses from another range.
in_cidr() {
    local ip=$1 net=${2%/*} len=${2#*/} mask
    mask=$(((0xffffffff << (32 - len)) & 0xffffffff))
    [ $(($(ipv4_to_int "$ip") & mask)) = $(($(ipv4_to_int "$net") & mask)) ]
}

declare -a ips
for i in 0 1; do
    ips[i]=$(k -n "$TEST_NS" get pod "ping-$i" -o jsonpath='{.status.podIP}')
    cidr=$(k get node "${workers[$i]}" -o jsonpath='{.spec.podCIDR}')
    in_cidr "${ips[i]}" "$cidr" || die "pod ping-$i has ${ips[i]}, outside its node's podCIDR $cidr: is another CNI config first in /etc/cni/net.d?"
    echo "ping-$i on ${workers[$i]}: ${ips[i]} (node podCIDR $cidr)"
done

say "ping ${ips[0]} -> ${ips[1]} and back"
k -n "$TEST_NS" exec ping-0 -- ping -c 3 -W 2 "${ips[1]}"
k -n "$TEST_NS" exec ping-1 -- ping -c 3 -W 2 "${ips[0]}"

trap - EXIT
cat <<EOF

trellis is up on kind cluster '$CLUSTER' (context $CONTEXT, image $IMAGE):
pods on ${workers[0]} (${ips[0]}) and ${workers[1]} (${ips[1]}) reach each other across nodes.

  kubectl --context $CONTEXT -n trellis-system get pods -o wide
  kubectl --context $CONTEXT -n trellis-system edit configmap trellis-config  (Backend.Type switches live)
  kubectl --context $CONTEXT delete namespace $TEST_NS  (removes the test pods)
  hack/kind-down.sh  (deletes the cluster)
EOF
