#!/usr/bin/env bash
# Benchmark (not a test) of NetworkPolicy enforcement (issue 15), all in one run on a 3-node
# namespace cluster (tests/src/bin/bench-netpol.rs):
#  (1) rules and set elements each node's kernel holds, and each agent's RSS, as Pod objects
#      and policies double (a quarter, half, all of BENCH_PODS / BENCH_POLICIES; the cluster
#      grows by namespaces of 50 pods and 10 policies, see bench-netpol.rs);
#  (2) at full size, policy creates and updates one at a time: the API write to the change
#      committed in every node's kernel (nft monitor), p50 and p90;
#  (3) two real pods on two nodes: TCP connect latency and iperf3 throughput with enforcement
#      on (the server isolated by a policy allowing the client, beside the load of (1)) and off,
#      in rounds whose order alternates.
# Prints medians and ratios at the end.
#
#   sudo hack/bench-netpol.sh
#   BENCH_PODS=1000 BENCH_POLICIES=200 BENCH_CHANGES=40 BENCH_ROUNDS=3 hack/bench-netpol.sh
# The raw output stays in BENCH_OUT (default: a new /tmp/trellis-bench-netpol.XXXX).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }

pods=${BENCH_PODS:-1000}
policies=${BENCH_POLICIES:-200}
changes=${BENCH_CHANGES:-40}
rounds=${BENCH_ROUNDS:-3}
secs=${BENCH_IPERF_SECS:-5}
conns=${BENCH_CONNECTS:-300}
out=${BENCH_OUT:-$(mktemp -d /tmp/trellis-bench-netpol.XXXX)}
mkdir -p "$out"
target=${CARGO_TARGET_DIR:-$PWD/target}

command -v iperf3 >/dev/null || hack/install-deps.sh
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
cargo build --workspace --bins --locked
# The agent as shipped (release): how long compiling the policies takes is part of what is
# measured. The harness and the other programs stay debug builds.
cargo build --release --locked -p trellis-agent
bin="$target/debug"
export TRELLIS_AGENT_BIN="$target/release/trellis-agent" TRELLIS_BIN="$bin/trellis"
export KUBE_EMULATOR_BIN="$bin/kube-emulator" NETPOL_PROBE_BIN="$bin/netpol-probe"

"$bin/bench-netpol" all --pods "$pods" --policies "$policies" --changes "$changes" \
  --rounds "$rounds" --secs "$secs" --conns "$conns" | tee "$out/raw.txt"

python3 - "$out/raw.txt" <<'PY'
import json, statistics, sys
sizes, changes, traffic = {}, None, {True: [], False: []}
for line in open(sys.argv[1]):
    if not line.startswith("{"):
        continue
    b = json.loads(line)
    if b["what"] == "size":
        s = sizes.setdefault((b["pods"], b["policies"]), {"rules": 0, "elements": 0, "rss": []})
        s["rules"] += b["rules"]
        s["elements"] += b["elements"]
        s["rss"].append(b["agent_rss_kib"] or 0)
    elif b["what"] == "change_summary":
        changes = b
    elif b["what"] == "traffic":
        traffic[b["policies"]].append(b)
print("\n== NetworkPolicy benchmark (3 nodes; rules and elements summed over the nodes)")
prev = None
for (p, n), s in sorted(sizes.items()):
    grow = ""
    if prev:
        grow = f"  x{s['rules'] / prev['rules']:.2f} rules, x{s['elements'] / prev['elements']:.2f} elements"
    print(f"  {p:>5} pods {n:>4} policies: {s['rules']:>6} rules {s['elements']:>7} elements, "
          f"agent RSS max {max(s['rss']) / 1024:.1f} MiB{grow}")
    prev = s
if changes:
    print(f"  policy create/update -> every node's kernel: p50 {changes['p50_ms']:.1f} ms, "
          f"p90 {changes['p90_ms']:.1f} ms (n={changes['n']})")
if traffic[True] and traffic[False]:
    m = lambda xs, k: statistics.median(x[k] for x in xs)
    on_c, off_c = m(traffic[True], "connect_median_ms"), m(traffic[False], "connect_median_ms")
    on_t, off_t = m(traffic[True], "bits_per_second"), m(traffic[False], "bits_per_second")
    print(f"  connect latency median: on {on_c:.3f} ms, off {off_c:.3f} ms: {on_c / off_c:.2f}x")
    print(f"  throughput median: on {on_t / 1e9:.2f} Gbit/s, off {off_t / 1e9:.2f} Gbit/s: {on_t / off_t:.2f}x")
PY
echo "raw output: $out/raw.txt"
