#!/usr/bin/env bash
# Delete the kind cluster made by hack/kind-up.sh.
#
#   hack/kind-down.sh            # delete the cluster (TRELLIS_KIND_CLUSTER, default trellis)
#   hack/kind-down.sh --images   # also remove the trellis:kind-* images kind-up built
#
# Portable to macOS's bash 3.2 and BSD tools (hack/check-portable.sh).
set -euo pipefail

CLUSTER=${TRELLIS_KIND_CLUSTER:-trellis}
remove_images=false
case "${1:-}" in
    "") ;;
    --images) remove_images=true ;;
    *)
        echo "usage: $0 [--images]" >&2
        exit 2
        ;;
esac

command -v kind >/dev/null || {
    echo "kind-down: kind is not installed" >&2
    exit 1
}

if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    # Also removes the kind-$CLUSTER context from the kubeconfig.
    kind delete cluster --name "$CLUSTER"
else
    echo "kind-down: no kind cluster named $CLUSTER"
fi

if $remove_images; then
    images=()
    while IFS= read -r image; do
        case $image in trellis:kind-*) images+=("$image") ;; esac
    done <<EOF
$(docker image ls --format '{{.Repository}}:{{.Tag}}')
EOF
    if [ "${#images[@]}" -gt 0 ]; then
        docker image rm "${images[@]}"
    else
        echo "kind-down: no trellis:kind-* images to remove"
    fi
fi
