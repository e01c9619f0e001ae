#!/usr/bin/env bash
# Demo: a 3-node cluster in network namespaces on this machine. An API
# emulator stands in for kube-apiserver; each node runs trellis-agent (VXLAN
# by default); pods are made by the trellis CNI plugin, two per node, and
# ping each other across nodes. Each node's `trellis-agent status` is shown.
#   sudo hack/demo.sh [vxlan|host-gw]   bring it up and show it (left running)
#   sudo hack/demo.sh down              remove every trace
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=/tmp/trellis-demo
[ "$(id -u)" -eq 0 ] || { echo "run as root (sudo hack/demo.sh)" >&2; exit 1; }
TARGET=${CARGO_TARGET_DIR:-$PWD/target}

if [ "${1:-}" = down ]; then
  if [ -x "$TARGET/debug/netns-cluster" ]; then
    "$TARGET/debug/netns-cluster" down --dir "$DIR"
  else
    rm -rf "$DIR"
  fi
  exit 0
fi

hack/install-deps.sh
cargo build --locked -p trellis-cni -p trellis-agent -p trellis-e2e --bins
export TRELLIS_BIN=$TARGET/debug/trellis TRELLIS_AGENT_BIN=$TARGET/debug/trellis-agent \
  KUBE_EMULATOR_BIN=$TARGET/debug/kube-emulator
exec "$TARGET/debug/netns-cluster" up --dir "$DIR" --backend "${1:-vxlan}"
