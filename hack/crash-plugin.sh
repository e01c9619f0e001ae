#!/usr/bin/env bash
# Crash-injection campaign for the CNI plugin (issue 6): RUNS times (default
# 300), SIGKILL an ADD at a random point, then DEL, ADD again (same container,
# ifname, netns), DEL, as a runtime does. Fails on any leaked veth, record,
# stray file or held lock, a bad last_reserved_ip, or a retry that does not
# give a working address. Prints how many kills hit each stage of ADD.
#   sudo hack/crash-plugin.sh [RUNS]
# Results also land in ${CRASH_RESULT:-/tmp/trellis-crash.json}.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "run as root: the campaign creates network namespaces" >&2; exit 1; }
runs="${1:-300}"
hack/install-deps.sh
# TRELLIS_PLUGIN=path skips the release build (hack/test.sh passes its debug build).
plugin="${TRELLIS_PLUGIN:-}"
if [ -z "$plugin" ]; then
  cargo build --release --locked -p trellis-cni --bin trellis
  plugin="${CARGO_TARGET_DIR:-target}/release/trellis"
fi
exec python3 hack/crash-plugin.py "$plugin" "$runs" "${CRASH_RESULT:-/tmp/trellis-crash.json}"
