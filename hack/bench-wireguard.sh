#!/usr/bin/env bash
# Benchmark (not a test) of the WireGuard backend (issue 14), in the test VM (hack/vm: this
# host's kernel has no WireGuard), all in one run:
#  (1) iperf3 TCP throughput across two nodes, pod-to-pod over wireguard and over vxlan, each
#      beside node-to-node on the same underlay (bench-agent throughput), in rounds whose
#      order alternates; (2) a new Node to the first handshake with it (bench-agent handshake).
# Prints medians and ratios at the end. Under software emulation absolute figures mean
# little: compare the ratios, which is what they are for.
#
#   sudo hack/bench-wireguard.sh
#   BENCH_ROUNDS=3 BENCH_IPERF_SECS=5 BENCH_HANDSHAKE_REPS=5 hack/bench-wireguard.sh
# The raw output stays in BENCH_OUT (default: a new /tmp/trellis-bench-wg.XXXX).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }

rounds=${BENCH_ROUNDS:-3}
secs=${BENCH_IPERF_SECS:-5}
hs=${BENCH_HANDSHAKE_REPS:-5}
out=${BENCH_OUT:-$(mktemp -d /tmp/trellis-bench-wg.XXXX)}
mkdir -p "$out"
target=${CARGO_TARGET_DIR:-$PWD/target}

command -v iperf3 >/dev/null || hack/install-deps.sh
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
cargo build --workspace --bins --locked
bin="$target/debug"

guest="$out/guest.sh"
# shellcheck disable=SC2016 # single quotes: the guest script expands these itself
{
  echo '#!/usr/bin/env bash'
  echo 'set -u'
  echo "for r in \$(seq 1 $rounds); do"
  echo '  if [ $((r % 2)) -eq 1 ]; then order="vxlan wireguard"; else order="wireguard vxlan"; fi'
  echo '  for b in $order; do'
  echo "    '$bin/bench-agent' throughput \$b $secs 1 || exit 1"
  echo '  done'
  echo 'done'
  echo "'$bin/bench-agent' handshake $hs || exit 1"
} >"$guest"
chmod +x "$guest"

export TRELLIS_AGENT_BIN="$bin/trellis-agent" TRELLIS_BIN="$bin/trellis"
export KUBE_EMULATOR_BIN="$bin/kube-emulator"
export TRELLIS_VM_ENV="TRELLIS_AGENT_BIN TRELLIS_BIN KUBE_EMULATOR_BIN"
export TRELLIS_VM_TIMEOUT=${TRELLIS_VM_TIMEOUT:-900}
hack/vm/run.sh "$guest" | tee "$out/raw.txt"

python3 - "$out/raw.txt" <<'PY'
import json, statistics, sys
tp, hs = {}, []
for line in open(sys.argv[1]):
    if not line.startswith("BENCH "):
        continue
    b = json.loads(line[6:])
    if b.get("what") == "new_node_to_handshake":
        hs.append(b["ms"])
    else:
        tp.setdefault((b["backend"], b["path"]), []).append(b["bits_per_second"])
med = {k: statistics.median(v) for k, v in tp.items()}
print("\n== WireGuard benchmark (medians; Gbit/s under software emulation)")
for (backend, path), m in sorted(med.items()):
    print(f"  {backend:<10} {path:<5} {m / 1e9:7.3f} Gbit/s  (n={len(tp[(backend, path)])})")
for backend in ("vxlan", "wireguard"):
    if (backend, "pod") in med and (backend, "node") in med:
        print(f"  {backend:<10} pod/node  {med[(backend, 'pod')] / med[(backend, 'node')]:.2f}x")
if ("wireguard", "pod") in med and ("vxlan", "pod") in med:
    print(f"  wireguard/vxlan pod-to-pod  {med[('wireguard', 'pod')] / med[('vxlan', 'pod')]:.2f}x")
if hs:
    hs.sort()
    print(f"  new Node -> first handshake: median {statistics.median(hs):.0f} ms, max {hs[-1]} ms (n={len(hs)}; status polled every ~0.1 s plus its own run time)")
PY
echo "raw output: $out/raw.txt"
