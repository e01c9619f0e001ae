#!/bin/sh
# iptables-wrapper: run the iptables flavour (legacy or nft) that the host already uses.
#
# Installed in the image as /usr/sbin/iptables, iptables-save, iptables-restore and their
# ip6tables forms. Rules written with the other flavour than kube-proxy's and the kubelet's
# land in a second, invisible rule set: masquerade or forward rules that exist but never match
# the packets kube-proxy steers. So the flavour must follow the host, not the image.
#
# Decision, made once per container and cached (the root file system is read-only, so the
# cache lives under /tmp, an emptyDir in the DaemonSet), in the order of the upstream
# kubernetes-sigs/iptables-wrappers:
#   1. TRELLIS_IPTABLES_MODE=legacy|nft, when set, wins (an operator's override).
#   2. The kubelet (1.17+) creates KUBE-IPTABLES-HINT / KUBE-KUBELET-CANARY in the mangle table
#      with the flavour it uses. nft is asked first, for the mangle table only: reading an nft
#      table never creates it, and nft is the common case.
#   3. Then legacy, but with a whole iptables-legacy-save and no `-t mangle`: naming a legacy
#      table makes the kernel create it (an empty legacy mangle table on an nft host, which
#      is what makes other tools think legacy is in use); without -t, the save reads only the
#      tables that already exist.
#   4. No hint (an old kubelet, or none yet): the flavour holding more rules wins, and a tie
#      (an empty host) picks nft, the default of current distributions.
set -eu

prog=$(basename "$0")
case "$prog" in
    iptables | iptables-save | iptables-restore | ip6tables | ip6tables-save | ip6tables-restore) ;;
    *)
        echo "iptables-wrapper: must be called through an iptables or ip6tables link, not as '$prog'" >&2
        exit 2
        ;;
esac

cache=${TRELLIS_IPTABLES_MODE_CACHE:-/tmp/trellis-iptables-mode}

# Reads fail on hosts missing one family or flavour; a failed read counts as empty.
nft_save_mangle() {
    "iptables-nft-save" -t mangle 2>/dev/null || true
    "ip6tables-nft-save" -t mangle 2>/dev/null || true
}

nft_save_all() {
    "iptables-nft-save" 2>/dev/null || true
    "ip6tables-nft-save" 2>/dev/null || true
}

# Never with -t: see step 3 above.
legacy_save_all() {
    "iptables-legacy-save" 2>/dev/null || true
    "ip6tables-legacy-save" 2>/dev/null || true
}

has_kubelet_chain() {
    grep -qE '^:(KUBE-IPTABLES-HINT|KUBE-KUBELET-CANARY) '
}

count_rules() {
    grep -c '^-' || true
}

detect_mode() {
    if nft_save_mangle | has_kubelet_chain; then
        echo nft
        return
    fi
    # One legacy read serves both the hint and the count.
    legacy_rules=$(legacy_save_all)
    if printf '%s\n' "$legacy_rules" | has_kubelet_chain; then
        echo legacy
    elif [ "$(printf '%s\n' "$legacy_rules" | count_rules)" -gt "$(nft_save_all | count_rules)" ]; then
        echo legacy
    else
        echo nft
    fi
}

mode=${TRELLIS_IPTABLES_MODE:-}
if [ -z "$mode" ] && [ -r "$cache" ]; then
    mode=$(cat "$cache")
fi
if [ -z "$mode" ]; then
    mode=$(detect_mode)
    # Write then rename, so concurrent first calls never read a half-written cache. A failed
    # write only costs a new detection next time.
    if printf '%s\n' "$mode" >"$cache.$$" 2>/dev/null; then
        mv -f "$cache.$$" "$cache" 2>/dev/null || rm -f "$cache.$$"
        echo "iptables-wrapper: using iptables-$mode (matching the host)" >&2
    fi
fi

case "$mode" in
    legacy | nft) ;;
    *)
        echo "iptables-wrapper: invalid mode '$mode' (TRELLIS_IPTABLES_MODE or $cache): use legacy or nft" >&2
        exit 2
        ;;
esac

family=${prog%%-*}
suffix=${prog#"$family"}
exec "/usr/sbin/$family-$mode$suffix" "$@"
