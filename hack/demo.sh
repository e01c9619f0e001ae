#!/usr/bin/env bash
# Demo: a node (a network namespace) gets three pods through the trellis CNI
# plugin, exactly as containerd would call it, and they ping each other.
#   sudo hack/demo.sh        bring it up and show it
#   sudo hack/demo.sh down   remove every trace
set -euo pipefail
cd "$(dirname "$0")/.."

NODE=trellis-demo-node
PODS=(trellis-demo-pod1 trellis-demo-pod2 trellis-demo-pod3)
STATE=/tmp/trellis-demo

down() {
  for p in "${PODS[@]}"; do ip netns del "$p" 2>/dev/null || true; done
  ip netns del "$NODE" 2>/dev/null || true
  rm -rf "$STATE"
  echo "demo removed"
}

if [ "${1:-up}" = down ]; then down; exit 0; fi
[ "$(id -u)" -eq 0 ] || { echo "run as root (sudo hack/demo.sh)" >&2; exit 1; }

hack/install-deps.sh
cargo build --release -p trellis-cni --bin trellis
BIN=${CARGO_TARGET_DIR:-target}/release/trellis

down >/dev/null
mkdir -p "$STATE"
# What trellis-agent writes once it has a lease for the node.
cat >"$STATE/subnet.env" <<ENV
FLANNEL_NETWORK=10.244.0.0/16
FLANNEL_SUBNET=10.244.1.1/24
FLANNEL_MTU=1450
FLANNEL_IPMASQ=true
ENV
CONF=$(printf '{"cniVersion":"1.1.0","name":"cbr0","type":"trellis","subnetFile":"%s","dataDir":"%s"}' \
  "$STATE/subnet.env" "$STATE/ipam")

ip netns add "$NODE"
ips=()
for i in "${!PODS[@]}"; do
  p=${PODS[$i]}
  ip netns add "$p"
  out=$(echo "$CONF" | ip netns exec "$NODE" env CNI_COMMAND=ADD CNI_CONTAINERID="demo$i" \
    CNI_NETNS="/var/run/netns/$p" CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni "$BIN")
  ip=$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ips"][0]["address"].split("/")[0])')
  ips+=("$ip")
  echo "pod $p -> $ip"
done

echo; echo "== node $NODE"; ip -n "$NODE" -br link; ip -n "$NODE" -br addr show cni0
echo; echo "== IPAM records ($STATE/ipam/cbr0)"; ls "$STATE/ipam/cbr0"
echo; echo "== pod 1 pings the others"
for ip in "${ips[@]:1}"; do ip netns exec "${PODS[0]}" ping -c 2 -W 1 "$ip" | tail -2; done
echo; echo "remove with: sudo hack/demo.sh down"
