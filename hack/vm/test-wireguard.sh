#!/usr/bin/env bash
# The WireGuard generic netlink tests (node-agent/tests/wireguard_netlink.rs) in the test VM:
# this host's kernel has no WireGuard, Debian's 6.1 in the VM has. Builds the test binary on
# the host, boots the VM (whose root is the host's, read-only) and runs the ignored tests
# there: a tunnel between two namespaces with a ping through it, IPv6 endpoints, 2000 peers
# set and read back, the message size limit.
#
# Usage: hack/vm/test-wireguard.sh [TEST-NAME-FILTER]   (root; TRELLIS_VM_TIMEOUT 240 s here)
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "$(id -u)" -ne 0 ]; then
  echo "test-wireguard: needs root (QEMU exports / over 9p, the tests create namespaces)" >&2
  exit 1
fi

echo "== build (host)"
# The test binary's path is only known from cargo's JSON messages.
test_bin=$(cargo test -p trellis-agent --locked --test wireguard_netlink --no-run \
  --message-format=json | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "wireguard_netlink":
        print(m["executable"])
')
[ -x "$test_bin" ] || { echo "test-wireguard: could not find the test binary" >&2; exit 1; }

export TRELLIS_VM_TIMEOUT=${TRELLIS_VM_TIMEOUT:-240}
echo "== VM: $test_bin --ignored ${1:-}"
start=$(date +%s)
rc=0
hack/vm/run.sh "$test_bin" --ignored --nocapture --test-threads 1 ${1:+"$1"} || rc=$?
echo "test-wireguard: status $rc after $(($(date +%s) - start)) s"
exit "$rc"
