#!/usr/bin/env bash
# Fuzz trellis's parsers of outside input (tests/fuzz, cargo-fuzz + libFuzzer).
#
#   hack/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Runs each target (default: all) for SECONDS_PER_TARGET (default 20), one at a time, starting
# from the committed seeds in tests/fuzz/corpus/<target>/ plus whatever earlier runs grew in
# $CARGO_TARGET_DIR/fuzz-corpus/<target>/. Fails on any crash, panic, timeout or OOM; the
# failing input is left in tests/fuzz/artifacts/<target>/. Prints executions, exec/s,
# coverage and corpus size per target.
#
# Works on a stable toolchain: RUSTC_BOOTSTRAP=1 lets stable rustc accept the -Z flags
# cargo-fuzz passes, and no sanitizer is used (the targets are safe Rust: ASan would only
# slow them down; panics, overflow checks and debug assertions are what catch bugs here).
# Installs cargo-fuzz when missing (about 3 minutes on 2 cores).
#
# FUZZ_PROFILE=dev builds without optimisation: about half the build time (4 instead of 8
# minutes from scratch on 2 cores) for a few times fewer executions per second, the right trade
# for the short smoke run in hack/test.sh. Campaigns use the default, release. The dev build
# calls cargo directly with the instrumentation flags cargo-fuzz 0.13 passes, so the smoke run
# on a fresh machine does not spend 3 minutes installing cargo-fuzz.
#
# FUZZ_TARGET_DIR puts the build (and the grown corpus) elsewhere than $CARGO_TARGET_DIR or
# tests/fuzz/target: hack/test.sh builds in a scratch dir and removes it afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-20}"
shift || true
all_targets=(cni_config cni_env subnet_env ipam_allocator net_conf node_annotations netpol_policy)
if [ "$#" -gt 0 ]; then targets=("$@"); else targets=("${all_targets[@]}"); fi
case "$secs" in
  '' | *[!0-9]*)
    echo "usage: hack/fuzz.sh [SECONDS_PER_TARGET] [TARGET...] (targets: ${all_targets[*]})" >&2
    exit 2
    ;;
esac

fuzz_dir=tests/fuzz
target_dir="${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-$PWD/$fuzz_dir/target}}"
work="$target_dir/fuzz-corpus"
logs="$target_dir/fuzz-logs"
mkdir -p "$work" "$logs"

profile=${FUZZ_PROFILE:-release}
if [ "$profile" = release ] && ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi

export RUSTC_BOOTSTRAP=1
# Per input: 10 s is ~10^4 times what a parse of a few KiB takes; 1 GiB is far above any
# legitimate use and keeps a leak from taking the shared machine down.
build_flags=(--fuzz-dir "$fuzz_dir" --sanitizer none --release --codegen-units 16 --target-dir "$target_dir")
host=$(rustc -vV | sed -n 's/^host: //p')
case "$profile" in
  release) profile_dir=release ;;
  dev) profile_dir=debug ;;
  *) echo "FUZZ_PROFILE must be release or dev" >&2; exit 2 ;;
esac
fuzz_limits=(-rss_limit_mb=1024 -malloc_limit_mb=512 -timeout=10 -max_len=8192 -print_final_stats=1)

echo "== build fuzz targets (${FUZZ_PROFILE:-release})"
start=$(date +%s)
if [ "$profile" = release ]; then
  cargo fuzz build "${build_flags[@]}"
else
  # What `cargo fuzz build --dev --sanitizer none` runs (libFuzzer's coverage instrumentation).
  RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cllvm-args=-sanitizer-coverage-stack-depth \
-Cllvm-args=-simplifycfg-branch-fold-threshold=0 --cfg fuzzing -Cdebug-assertions" \
    cargo build --manifest-path "$fuzz_dir/Cargo.toml" --locked --bins --target "$host" \
    --target-dir "$target_dir"
fi
echo "built in $(($(date +%s) - start)) s"
bin_dir="$target_dir/$host/$profile_dir"

failed=()
summary=()
for t in "${targets[@]}"; do
  if [ ! -f "$fuzz_dir/fuzz_targets/$t.rs" ]; then
    echo "unknown target $t (targets: ${all_targets[*]})" >&2
    exit 2
  fi
  mkdir -p "$work/$t" "$fuzz_dir/artifacts/$t"
  log="$logs/$t.log"
  echo "== fuzz $t for ${secs} s (log: $log)"
  rc=0
  # The binary built above, not `cargo fuzz run`: that rebuilds whenever another change lands
  # in the tree. New inputs go to the first (scratch) corpus dir; the seeds are only read.
  "$bin_dir/$t" "$work/$t" "$fuzz_dir/corpus/$t" \
    "${fuzz_limits[@]}" -max_total_time="$secs" -dict="$fuzz_dir/dict/$t.dict" \
    -artifact_prefix="$fuzz_dir/artifacts/$t/" >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  last=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -1 || true)
  cov=$(sed -n 's/.*cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corp=$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$last")
  line=$(printf '%-17s execs %-10s exec/s %-7s cov %-5s ft %-6s corpus %-5s' \
    "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}")
  if [ "$rc" -ne 0 ]; then
    line="$line FAILED (exit $rc)"
    failed+=("$t")
    grep -E 'panicked at|ERROR: libFuzzer|SUMMARY|Test unit written to' "$log" | head -20 >&2 || true
  else
    line="$line ok"
  fi
  echo "$line"
  summary+=("$line")
done

echo "== fuzz summary (${secs} s per target)"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzzing found failures in: ${failed[*]} (inputs in $fuzz_dir/artifacts/; reproduce with" \
    "$bin_dir/<target> <input>)" >&2
  exit 1
fi
