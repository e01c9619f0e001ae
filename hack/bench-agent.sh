#!/usr/bin/env bash
# Benchmark (not a test) of trellis-agent, issue 3, all in one run on this machine:
#  (1) agent start -> N peers programmed (N=1000, 5000 Nodes of ~10 KB) vs `ip -batch` +
#      `bridge -batch` applying the identical entries, each in a fresh node namespace,
#      interleaved; (2) one more Node -> its route in the kernel, with 5000 present;
#  (3) agent VmRSS/VmHWM at 5000 peers; (4) iperf3 pod-to-pod vs node-to-node across two
#      nodes, vxlan and host-gw. Prints medians and ratios as a table at the end.
#
#   sudo hack/bench-agent.sh
#   BENCH_REPS=5 BENCH_PEERS="1000 5000" BENCH_ONE_MORE=20 BENCH_IPERF_SECS=5 \
#   BENCH_IPERF_REPS=3 BENCH_NO_BUILD=1 hack/bench-agent.sh
#   BENCH_BASELINE=/path/to/older/trellis-agent hack/bench-agent.sh   # (1) and (3) for both
#     agents in the same rounds, in rotating order: "did this change slow anything?"
# Results and logs stay in BENCH_OUT (default: a new /tmp/trellis-bench-agent.XXXX).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }

reps=${BENCH_REPS:-5}
read -r -a peers <<<"${BENCH_PEERS:-1000 5000}"
one_more=${BENCH_ONE_MORE:-20}
iperf_secs=${BENCH_IPERF_SECS:-5}
iperf_reps=${BENCH_IPERF_REPS:-3}
out=${BENCH_OUT:-$(mktemp -d /tmp/trellis-bench-agent.XXXX)}
mkdir -p "$out"

command -v iperf3 >/dev/null || hack/install-deps.sh
if [ -z "${BENCH_NO_BUILD:-}" ]; then
  cargo build --release --locked -p trellis-agent -p trellis-cni -p trellis-e2e --bins
fi
bin=$(realpath "${CARGO_TARGET_DIR:-target}/release")
for b in trellis-agent trellis kube-emulator bench-agent; do
  [ -x "$bin/$b" ] || { echo "missing $bin/$b (build it or unset BENCH_NO_BUILD)" >&2; exit 1; }
done

# Every namespace made here starts with this prefix, so cleanup removes exactly ours.
prefix="tbench-$$"
cleanup() {
  local ns
  for ns in $(ip netns list | awk '{print $1}' | grep "^$prefix-" || true); do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
}
trap cleanup EXIT
ip netns add "$prefix-u"

echo "# scale: N=${peers[*]}, $reps rounds each; results in $out" >&2
baseline=()
if [ -n "${BENCH_BASELINE:-}" ]; then
  [ -x "$BENCH_BASELINE" ] || { echo "BENCH_BASELINE=$BENCH_BASELINE is not executable" >&2; exit 1; }
  baseline=(--baseline "$(realpath "$BENCH_BASELINE")")
fi
ip netns exec "$prefix-u" python3 hack/bench-agent/bench.py scale \
  --agent "$bin/trellis-agent" "${baseline[@]}" --emulator "$bin/kube-emulator" --workdir "$out" \
  --prefix "$prefix" --peers "${peers[@]}" --reps "$reps" --one-more "$one_more" \
  --out "$out/scale.json"

tp=()
for backend in vxlan host-gw; do
  echo "# throughput: $backend, $iperf_reps x ${iperf_secs}s per path" >&2
  "$bin/bench-agent" throughput "$backend" "$iperf_secs" "$iperf_reps" | tee "$out/tp-$backend.txt" >&2
  tp+=("$out/tp-$backend.txt")
done

echo
python3 hack/bench-agent/bench.py report "$out/scale.json" "${tp[@]}" | tee "$out/table.txt"
