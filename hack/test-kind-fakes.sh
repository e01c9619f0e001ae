#!/usr/bin/env bash
# Fake docker, kind and kubectl for hack/test-kind-scripts.sh: one script, linked under the
# three names into a directory put first on PATH. Each call is appended to $FAKE_KIND_STATE/calls;
# the cluster the fakes pretend to run is described by files in that directory:
#
#   clusters      names `kind get clusters` prints (create/delete edit it)
#   kindnet       present: the cluster runs kind's default CNI (a kindnet DaemonSet)
#   api-down      present: every kubectl call fails as if the API server did not answer
#   foreign-ips   present: pods get addresses outside their node's podCIDR
#   images        lines `docker image ls` prints
#
# `kubectl apply -k DIR` renders DIR with the real kubectl ($FAKE_REAL_KUBECTL) into
# $FAKE_KIND_STATE/applied.yaml, so a test can check what would have reached the cluster.
set -euo pipefail

STATE=${FAKE_KIND_STATE:?FAKE_KIND_STATE must name the fakes state directory}
tool=$(basename "$0")
printf '%s %s\n' "$tool" "$*" >>"$STATE/calls"

fail() {
    printf '%s (fake): %s\n' "$tool" "$*" >&2
    exit 1
}

fake_kind() {
    case "$*" in
        "get clusters") cat "$STATE/clusters" 2>/dev/null || true ;;
        "create cluster --name "*)
            if [ "${5:-}" != --config ] || [ ! -f "${6:-}" ]; then
                fail "create cluster: no --config file"
            fi
            echo "$4" >>"$STATE/clusters"
            ;;
        "delete cluster --name "*)
            grep -vx "$4" "$STATE/clusters" >"$STATE/clusters.new" || true
            mv "$STATE/clusters.new" "$STATE/clusters"
            rm -f "$STATE/kindnet" "$STATE/api-down"
            ;;
        "load docker-image "*) ;;
        "get nodes --name "*) printf '%s\n' "$4-control-plane" "$4-worker" "$4-worker2" ;;
        *) fail "unexpected: kind $*" ;;
    esac
}

fake_docker() {
    case "$*" in
        info) ;;
        "build "*) ;;
        "image ls "*) cat "$STATE/images" 2>/dev/null || true ;;
        "image rm "*) ;;
        "exec "*) ;;
        *) fail "unexpected: docker $*" ;;
    esac
}

fake_kubectl() {
    [ "${1:-}" = --context ] && shift 2
    [ ! -e "$STATE/api-down" ] || fail "The connection to the server 127.0.0.1:6443 was refused"
    local worker1=10.244.1 worker2=10.244.2
    if [ -e "$STATE/foreign-ips" ]; then
        worker1=10.88.0
    fi
    case "$*" in
        "-n kube-system get daemonset kindnet --ignore-not-found -o name")
            [ ! -e "$STATE/kindnet" ] || echo daemonset.apps/kindnet
            ;;
        "apply -k "*) "${FAKE_REAL_KUBECTL:?}" kustomize "$3" >"$STATE/applied.yaml" ;;
        "-n trellis-system rollout status "* | "wait --for=condition=Ready nodes "*) ;;
        "get nodes -o custom-columns="*) echo "NODE READY PODCIDR BACKEND" ;;
        "get nodes -l "*) printf 'trellis-worker\ntrellis-worker2\n' ;;
        "create namespace "*) printf 'apiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n' "$3" ;;
        "apply -f -" | "-n trellis-smoke apply -f -") cat >>"$STATE/pods.yaml" ;;
        "-n trellis-smoke delete pod "* | "-n trellis-smoke wait "* | "-n trellis-smoke exec "*) ;;
        "-n trellis-smoke get pod ping-0 -o jsonpath={.status.podIP}") echo "$worker1.5" ;;
        "-n trellis-smoke get pod ping-1 -o jsonpath={.status.podIP}") echo "$worker2.7" ;;
        "get node trellis-worker -o jsonpath={.spec.podCIDR}") echo 10.244.1.0/24 ;;
        "get node trellis-worker2 -o jsonpath={.spec.podCIDR}") echo 10.244.2.0/24 ;;
        # What kind-up prints for diagnosis after a failure.
        "get nodes -o wide" | "-n trellis-system get pods -o wide" | "-n trellis-system logs "* | "-n trellis-smoke get pods -o wide") ;;
        *) fail "unexpected: kubectl $*" ;;
    esac
}

case $tool in
    kind) fake_kind "$@" ;;
    docker) fake_docker "$@" ;;
    kubectl) fake_kubectl "$@" ;;
    *) fail "link this script as kind, docker or kubectl" ;;
esac
