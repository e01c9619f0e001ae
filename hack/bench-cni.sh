#!/usr/bin/env bash
# Benchmark (not a test): trellis vs the reference bridge+host-local plugins,
# 100 sequential ADD+DEL pairs each, interleaved. Prints p50/p90 and ratios.
#   sudo hack/bench-cni.sh            (BENCH_N=200 for more samples)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }
hack/install-deps.sh
cargo build --release --locked -p trellis-cni --bin trellis
exec python3 hack/bench-cni.py "${CARGO_TARGET_DIR:-target}/release/trellis"
