#!/usr/bin/env bash
# The tests that need kernel features this host lacks (IPIP, WireGuard), run in the test VM
# (hack/vm), all in one boot. Builds the workspace and the test binaries on the host, then
# boots the VM, whose root is the host's root read-only, and runs the ignored VM tests there:
# - e2e_switch: two node namespaces, the API emulator, the agents, pods through the plugin, a
#   ping loop and a TCP stream across nodes while the ConfigMap goes vxlan -> ipip -> host-gw,
#   then vxlan -> wireguard -> host-gw;
# - dataplane_wireguard: WireGuard through the executor, drift (a peer removed, an endpoint
#   moved by hand) signalled by the monitor's poll and repaired;
# - wireguard_netlink: the generic netlink layer against the kernel;
# - e2e_wireguard: on the wire only WireGuard (captured), status, the key kept across an agent
#   restart, a peer's new address followed;
# - netpol_conformance: the upstream NetworkPolicy cases over SCTP (the host kernel has no
#   SCTP; hack/test.sh runs every other case on the host).
#
# Usage: hack/test-vm.sh            (root; TRELLIS_VM_TIMEOUT defaults to 900 s here)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "hack/test-vm.sh needs root (QEMU exports / over 9p, the test creates namespaces)" >&2
  exit 1
fi

target=${CARGO_TARGET_DIR:-$PWD/target}
echo "== build (host)"
# The same selection as hack/test.sh's build and test runs (--workspace): with -p, cargo
# unifies features differently and rebuilds half the dependency tree.
cargo build --workspace --all-targets --locked

# A test binary's path is only known from cargo's JSON messages.
test_bin() {
  local path
  path=$(cargo test --workspace --locked --test "$1" --no-run --message-format=json |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        print(m["executable"])
' "$1")
  [ -x "$path" ] || { echo "test-vm: could not find the $1 test binary" >&2; exit 1; }
  echo "$path"
}
switch_bin=$(test_bin e2e_switch)
wg_dataplane_bin=$(test_bin dataplane_wireguard)
wg_netlink_bin=$(test_bin wireguard_netlink)
wg_e2e_bin=$(test_bin e2e_wireguard)
netpol_bin=$(test_bin netpol_conformance)

# Tell the harness where the binaries are, in case the test binary is not under $target.
export TRELLIS_AGENT_BIN="$target/debug/trellis-agent"
export TRELLIS_BIN="$target/debug/trellis"
export KUBE_EMULATOR_BIN="$target/debug/kube-emulator"
export TRELLIS_VM_ENV="TRELLIS_AGENT_BIN KUBE_EMULATOR_BIN"
export TRELLIS_VM_TIMEOUT=${TRELLIS_VM_TIMEOUT:-900}

# What the guest runs: every binary, whatever the ones before it did; fails if any failed.
runner="$target/vm-tests.sh"
# shellcheck disable=SC2016 # single quotes: the guest script expands these itself
{
  echo '#!/usr/bin/env bash'
  echo 'rc=0'
  echo 'run() { echo "== VM test: $*"; "$@" || rc=1; }'
  echo "run '$switch_bin' --ignored vm_live_switch_ --nocapture --test-threads 1"
  echo "run '$wg_dataplane_bin' --ignored --nocapture --test-threads 1"
  echo "run '$wg_netlink_bin' --ignored --nocapture --test-threads 1"
  echo "run '$wg_e2e_bin' --ignored --nocapture --test-threads 1"
  echo "run env NETPOL_SLOW=5 '$netpol_bin' --ignored vm_sctp_ --nocapture --test-threads 1"
  echo 'exit $rc'
} >"$runner"
chmod +x "$runner"

echo "== VM: e2e_switch (ipip, wireguard), dataplane_wireguard, wireguard_netlink, e2e_wireguard, netpol_conformance (SCTP)"
start=$(date +%s)
rc=0
hack/vm/run.sh "$runner" || rc=$?
echo "test-vm: status $rc after $(($(date +%s) - start)) s"
exit "$rc"
