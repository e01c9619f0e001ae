#!/usr/bin/env bash
# Churn campaign for the CNI plugin (issue 6): 500 pod identities ADD/DEL at
# random, up to 32 in parallel, on one node namespace, for SECONDS (default
# 600). Fails on any plugin failure, duplicate address, leaked veth or store
# record. Prints per-minute p50/p99 time and max RSS of ADD and DEL.
#   sudo hack/churn-plugin.sh [SECONDS]      (CHURN_PODS, CHURN_PARALLEL override)
# Results also land in ${CHURN_RESULT:-/tmp/trellis-churn.json}.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "run as root: the campaign creates network namespaces" >&2; exit 1; }
seconds="${1:-600}"
hack/install-deps.sh
# GNU time measures each plugin run's own max RSS (see churn-plugin.py).
[ -x /usr/bin/time ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends time; }
# TRELLIS_PLUGIN=path skips the release build (hack/test.sh passes its debug build).
plugin="${TRELLIS_PLUGIN:-}"
if [ -z "$plugin" ]; then
  cargo build --release --locked -p trellis-cni --bin trellis
  plugin="${CARGO_TARGET_DIR:-target}/release/trellis"
fi
exec python3 hack/churn-plugin.py "$plugin" "$seconds" "${CHURN_RESULT:-/tmp/trellis-churn.json}"
