#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what it needs, then format,
# lint, unit tests and the privileged tests (network namespaces, containerd,
# the VM). Must run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "hack/test.sh needs root: the tests create network namespaces, bridges and firewall rules" >&2
  exit 1
fi

hack/install-deps.sh

# One build from scratch: incremental artifacts would only take disk (~2 GB) that CI lacks.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

echo "== fmt"
cargo fmt --all -- --check
cargo fmt --manifest-path tests/fuzz/Cargo.toml -- --check
echo "== clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
# The fuzz crate is its own workspace (cargo-fuzz's layout); sharing the target dir reuses the
# dependencies just checked.
cargo clippy --manifest-path tests/fuzz/Cargo.toml --all-targets --locked \
  --target-dir "${CARGO_TARGET_DIR:-$PWD/target}" -- -D warnings
echo "== build"
cargo build --workspace --all-targets --locked

# Integration tests that drive the plugin through a runtime use the binary just built.
export TRELLIS_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/trellis"

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast --test-threads 4
else
  cargo test --workspace --locked --no-fail-fast
fi

# Short runs of the reliability campaigns (docs/RELIABILITY.md has the long ones).
echo "== plugin crash injection and churn (short)"
TRELLIS_PLUGIN="$TRELLIS_BIN" hack/crash-plugin.sh 100
CHURN_PODS=100 TRELLIS_PLUGIN="$TRELLIS_BIN" hack/churn-plugin.sh 30
echo "== fuzz (short: 10 s per target, unoptimised build)"
# Its instrumented build shares nothing with the one above: build it in a scratch dir and drop it.
fuzz_target=$(mktemp -d /var/tmp/trellis-fuzz.XXXXXX)
FUZZ_PROFILE=dev FUZZ_TARGET_DIR="$fuzz_target" hack/fuzz.sh 10
rm -rf "$fuzz_target"

if [ -x hack/validate-deploy.sh ]; then
  echo "== deploy manifests"
  hack/validate-deploy.sh
fi

# The image without Docker (mmdebstrap + umoci), checked as containerd runs it, and the plugin it
# ships (static) doing ADD/DEL in a Debian bullseye root, where the dynamic debug build cannot
# start. About 5 minutes on 2 cores, most of it the release build.
echo "== image and the shipped plugin on an old root"
hack/test-image.sh

# The user's path: `kubectl apply -k deploy` with that image on 3 nodes, each a containerd driven
# by the kubelet-shaped node driver; pods, ping matrix, live switches, an agent Pod deleted, the
# DaemonSet without NET_ADMIN and an image without iptables. About a minute (52 s measured with
# the image just built by test-image.sh).
echo "== kubectl apply -k deploy on a cluster without kind"
hack/kube-e2e.sh

# IPIP is missing from this kind of host kernel: those scenarios run in a QEMU VM
# booting Debian's kernel over the host's root (hack/vm).
echo "== VM tests (IPIP)"
hack/test-vm.sh
