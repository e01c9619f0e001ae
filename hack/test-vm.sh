#!/usr/bin/env bash
# The tests that need kernel features this host lacks (IPIP, WireGuard), run in the test VM
# (hack/vm).
# Builds the workspace binaries and the e2e_switch test binary on the host, then boots the
# VM, whose root is the host's root read-only, and runs the ignored VM scenario there:
# two node namespaces, the API emulator, the agents, pods through the plugin, a ping loop
# and a TCP stream across nodes while the ConfigMap goes vxlan -> ipip -> host-gw, then the
# same with vxlan -> wireguard -> host-gw.
#
# Usage: hack/test-vm.sh            (root; TRELLIS_VM_TIMEOUT defaults to 480 s here)
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
# The test binary's path is only known from cargo's JSON messages.
test_bin=$(cargo test --workspace --locked --test e2e_switch --no-run --message-format=json |
  python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "e2e_switch":
        print(m["executable"])
')
[ -x "$test_bin" ] || { echo "test-vm: could not find the e2e_switch test binary" >&2; exit 1; }

# Tell the harness where the binaries are, in case the test binary is not under $target.
export TRELLIS_AGENT_BIN="$target/debug/trellis-agent"
export TRELLIS_BIN="$target/debug/trellis"
export KUBE_EMULATOR_BIN="$target/debug/kube-emulator"
export TRELLIS_VM_ENV="TRELLIS_AGENT_BIN KUBE_EMULATOR_BIN"
export TRELLIS_VM_TIMEOUT=${TRELLIS_VM_TIMEOUT:-480}

echo "== VM: e2e_switch (ipip, wireguard)"
start=$(date +%s)
rc=0
hack/vm/run.sh "$test_bin" --ignored vm_live_switch_ --nocapture --test-threads 1 || rc=$?
echo "test-vm: status $rc after $(($(date +%s) - start)) s"
exit "$rc"
