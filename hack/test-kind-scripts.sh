#!/usr/bin/env bash
# Run hack/kind-up.sh and hack/kind-down.sh against fake docker, kind and kubectl
# (hack/test-kind-fakes.sh): there is no Docker engine or kind here, but every decision the
# scripts make can be checked. Also runs hack/check-portable.sh on them (bash 3.2, BSD tools).
#
#   hack/test-kind-scripts.sh          # needs bash and kubectl (for `kubectl kustomize`)
#
# Scenarios: a fresh cluster is created from deploy/kind-config.yaml and the applied render
# carries the built image; a trellis-ready cluster is reused; an existing cluster running
# kindnet is refused without building or applying anything, or deleted and created again with
# TRELLIS_KIND_RECREATE=1; a cluster whose API does not answer is refused; a pod outside its
# node's podCIDR fails the run; kind-down deletes the cluster and only trellis:kind-* images.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REAL_KUBECTL=$(command -v kubectl) || {
    echo "test-kind-scripts: kubectl is required (for kubectl kustomize)" >&2
    exit 1
}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/test-kind-scripts.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
IMAGE=trellis:kind-test
PASSED=0
FAILED=0

mkdir -p "$WORK/bin"
for tool in docker kind kubectl; do
    ln -s "$ROOT/hack/test-kind-fakes.sh" "$WORK/bin/$tool"
done

# new_state: a fresh fake world; prints its directory.
new_state() {
    local dir
    dir=$(mktemp -d "$WORK/state.XXXXXX")
    : >"$dir/clusters"
    echo "$dir"
}

# run_script STATE SCRIPT [ARGS...]: runs it with the fakes; output in STATE/out, status in STATE/rc.
run_script() {
    local state=$1 script=$2 rc=0
    shift 2
    env PATH="$WORK/bin:$PATH" FAKE_KIND_STATE="$state" FAKE_REAL_KUBECTL="$REAL_KUBECTL" \
        TRELLIS_IMAGE="$IMAGE" TRELLIS_TIMEOUT=5 TMPDIR="$WORK" \
        bash "$ROOT/hack/$script" "$@" >"$state/out" 2>&1 || rc=$?
    echo "$rc" >"$state/rc"
}

problems=()
expect() { # expect DESCRIPTION COMMAND...: records a problem unless COMMAND succeeds
    local what=$1
    shift
    "$@" || problems+=("$what")
}
called() { grep -q -- "$2" "$1/calls"; }
not_called() { ! called "$@"; }
said() { grep -q -- "$2" "$1/out"; }
not_said() { ! said "$@"; }
status_is() { [ "$(cat "$1/rc")" = "$2" ]; }
status_not() { [ "$(cat "$1/rc")" != "$2" ]; }
has_cluster() { grep -qx "$2" "$1/clusters"; }
# Every container image in the render that reached `kubectl apply` is $IMAGE.
applied_image_is_ours() {
    local images
    images=$(grep -E '^[[:space:]]+image:' "$1/applied.yaml" | sed -E 's/.*image:[[:space:]]*//' | sort -u)
    [ "$images" = "$IMAGE" ]
}

scenario() { # scenario NAME STATE: reports and resets the problems list
    if [ "${#problems[@]}" = 0 ]; then
        PASSED=$((PASSED + 1))
        printf 'PASS  %s\n' "$1"
    else
        FAILED=$((FAILED + 1))
        printf 'FAIL  %s\n' "$1"
        printf '        - %s\n' "${problems[@]}"
        printf '      output:\n'
        sed 's/^/        | /' "$2/out"
        printf '      calls:\n'
        sed 's/^/        | /' "$2/calls"
    fi
    problems=()
}

# 1. No cluster yet: created from the kind config, then build, load, apply, ping.
s=$(new_state)
run_script "$s" kind-up.sh
expect "exit 0" status_is "$s" 0
expect "cluster created with deploy/kind-config.yaml" called "$s" "kind create cluster --name trellis --config $ROOT/deploy/kind-config.yaml"
expect "image built" called "$s" "docker build -f $ROOT/deploy/Dockerfile -t $IMAGE"
expect "image loaded" called "$s" "kind load docker-image $IMAGE --name trellis"
expect "br_netfilter enabled on every node" called "$s" "docker exec trellis-worker2 sh -c modprobe br_netfilter"
expect "render applied with the built image" applied_image_is_ours "$s"
expect "pods pinged across nodes" called "$s" "exec ping-0 -- ping"
expect "every kubectl call names the kind context" not_called "$s" "^kubectl [^-]"
expect "no temporary overlay left behind" [ -z "$(find "$WORK" -maxdepth 1 -name 'tmp.*')" ]
scenario "fresh cluster: created, built, loaded, applied, pinged" "$s"

# 2. A cluster made by an earlier kind-up (no kindnet): reused.
s=$(new_state)
echo trellis >"$s/clusters"
run_script "$s" kind-up.sh
expect "exit 0" status_is "$s" 0
expect "said it reuses the cluster" said "$s" "reusing kind cluster trellis"
expect "no cluster created" not_called "$s" "kind create"
expect "no cluster deleted" not_called "$s" "kind delete"
expect "render applied with the built image" applied_image_is_ours "$s"
scenario "existing trellis cluster: reused" "$s"

# 3. A cluster of that name made with kind's defaults (kindnet): refused, nothing done.
s=$(new_state)
echo trellis >"$s/clusters"
touch "$s/kindnet"
run_script "$s" kind-up.sh
expect "exit non-zero" status_not "$s" 0
expect "says kindnet is the reason" said "$s" "runs kindnet"
expect "says how to go on" said "$s" "TRELLIS_KIND_RECREATE=1"
expect "nothing built" not_called "$s" "docker build"
expect "nothing applied" not_called "$s" "apply -k"
expect "cluster not deleted" has_cluster "$s" trellis
expect "no diagnosis dump for a refusal" not_said "$s" "State for diagnosis"
scenario "existing cluster running kindnet: refused" "$s"

# 4. The same with TRELLIS_KIND_RECREATE=1: deleted, created from the kind config.
s=$(new_state)
echo trellis >"$s/clusters"
touch "$s/kindnet"
TRELLIS_KIND_RECREATE=1 run_script "$s" kind-up.sh
expect "exit 0" status_is "$s" 0
expect "cluster deleted" called "$s" "kind delete cluster --name trellis"
expect "cluster created with deploy/kind-config.yaml" called "$s" "kind create cluster --name trellis --config"
expect "render applied with the built image" applied_image_is_ours "$s"
scenario "existing cluster running kindnet, TRELLIS_KIND_RECREATE=1: recreated" "$s"

# 5. An existing cluster whose API server does not answer (containers stopped): refused.
s=$(new_state)
echo trellis >"$s/clusters"
touch "$s/api-down"
run_script "$s" kind-up.sh
expect "exit non-zero" status_not "$s" 0
expect "says the API does not answer" said "$s" "does not answer"
expect "nothing built" not_called "$s" "docker build"
scenario "existing cluster with no API: refused" "$s"

# 6. A pod addressed outside its node's podCIDR (another CNI config first): the run fails.
s=$(new_state)
touch "$s/foreign-ips"
run_script "$s" kind-up.sh
expect "exit non-zero" status_not "$s" 0
expect "names the cause" said "$s" "outside its node's podCIDR"
expect "prints state for diagnosis" said "$s" "State for diagnosis"
scenario "pod outside its podCIDR: fails with the reason" "$s"

# 7. kind-down: deletes the cluster; --images removes only trellis:kind-* images.
s=$(new_state)
echo trellis >"$s/clusters"
printf 'trellis:kind-1\nbusybox:1.36\ntrellis:0.1.0\ntrellis:kind-2\n' >"$s/images"
run_script "$s" kind-down.sh --images
expect "exit 0" status_is "$s" 0
expect "cluster deleted" called "$s" "kind delete cluster --name trellis"
expect "only kind-up's images removed" called "$s" "docker image rm trellis:kind-1 trellis:kind-2$"
scenario "kind-down --images: cluster and kind-up's images removed" "$s"

s=$(new_state)
run_script "$s" kind-down.sh
expect "exit 0" status_is "$s" 0
expect "says there is no cluster" said "$s" "no kind cluster named trellis"
expect "nothing deleted" not_called "$s" "kind delete"
scenario "kind-down without a cluster: says so" "$s"

# 8. Portability of both scripts (bash 3.2, BSD tools), and the checker's own rules.
s=$(new_state)
rc=0
{ bash "$ROOT/hack/check-portable.sh" --self-test && bash "$ROOT/hack/check-portable.sh"; } >"$s/out" 2>&1 || rc=$?
: >"$s/calls"
expect "check-portable passes" [ "$rc" = 0 ]
scenario "kind scripts portable (hack/check-portable.sh)" "$s"

echo "test-kind-scripts: $PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
