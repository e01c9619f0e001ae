#!/usr/bin/env bash
# Chaos campaign for trellis-agent (issue 6): rounds of API faults during churn and of
# SIGKILLs mid-reconcile, end to end in network namespaces (tests/tests/e2e_faults.rs,
# the ignored `chaos_campaign` test). Per round:
#  - a 3-node vxlan cluster with a pod per node and 20 ms ping loops around the ring;
#    extra peer Nodes created/deleted through the API and pods added/deleted through
#    the plugin while the emulator answers 500 (5 s, watches dropped), answers slowly
#    (1.5 s per request for 6 s, watches dropped), drops every watch (x3), compacts its
#    history behind the watchers (resumes get 410), and restarts on the same state;
#  - a second cluster where an agent is SIGKILLed while it programs or removes a burst
#    of peer Nodes (5 kill points each way) and during vxlan <-> host-gw switches
#    (right after the write, mid-pass, late; plus a switch without a kill as baseline).
# Asserted every time: no kernel entry of a live peer removed (ip/bridge monitor in
# every node), no ping lost (bursts and faults), the kernel equal to the API's Nodes
# after each step, /readyz ready throughout the faults.
#
#   sudo hack/chaos-agent.sh                  # 3 rounds, bursts of 200 peers
#   CHAOS_ROUNDS=10 CHAOS_BURST=220 sudo hack/chaos-agent.sh
# Output (FIGURE lines and the full log) goes to CHAOS_OUT (default: a new temp dir).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "hack/chaos-agent.sh needs root (network namespaces)" >&2; exit 1; }

rounds=${CHAOS_ROUNDS:-3}
burst=${CHAOS_BURST:-200}
out=${CHAOS_OUT:-$(mktemp -d /tmp/trellis-chaos-agent.XXXX)}
mkdir -p "$out"

need=()
command -v ip >/dev/null || need+=(iproute2)
command -v ping >/dev/null || need+=(iputils-ping)
if [ "${#need[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
command -v kubectl >/dev/null || { echo "kubectl is needed (the harness drives the API emulator with it)" >&2; exit 1; }
cargo nextest --version >/dev/null 2>&1 || { echo "cargo-nextest is needed" >&2; exit 1; }

# The harness finds trellis-agent, trellis and kube-emulator next to the test binary.
cargo build --locked -p trellis-agent -p trellis-cni -p trellis-e2e --bins

start=$(date +%s)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
set +e
TRELLIS_CHAOS_ROUNDS=$rounds TRELLIS_CHAOS_BURST=$burst \
  cargo nextest run --locked -p trellis-e2e --test e2e_faults --run-ignored only \
  --no-capture -E 'test(chaos_campaign)' >"$out/campaign.log" 2>&1
rc=$?
set -e
secs=$(( $(date +%s) - start ))

grep '^FIGURE' "$out/campaign.log" >"$out/figures.txt" || true
echo "== chaos-agent: $rounds rounds, bursts of $burst peers, ${secs}s, exit $rc," \
  "load $load_start at start, $(cut -d' ' -f1-3 /proc/loadavg) at the end ($(nproc) cores)"
echo "== faults (per fault: convergence after it ended, ping loss, live entries removed)"
grep '^FIGURE fault ' "$out/figures.txt" | sed 's/^FIGURE fault //' || true
echo "== kills"
grep '^FIGURE sigkill ' "$out/figures.txt" | sed 's/^FIGURE sigkill //' || true
grep '^FIGURE campaign' "$out/figures.txt" || true
if [ "$rc" -ne 0 ]; then
  echo "FAILED: see $out/campaign.log" >&2
  grep -E 'panicked|assertion' -A4 "$out/campaign.log" | head -40 >&2 || true
fi
echo "log: $out/campaign.log"
exit "$rc"
