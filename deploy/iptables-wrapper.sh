#!/bin/sh
# iptables-wrapper: run the iptables flavour (legacy or nft) that the host already uses.
#
# Installed in the image as /usr/sbin/iptables, iptables-save, iptables-restore and their
# ip6tables forms. Rules written with the other flavour than kube-proxy's and the kubelet's
# land in a second, invisible rule set: masquerade or forward rules that exist but never match
# the packets kube-proxy steers. So the flavour must follow the host, not the image.
#
# Decision, made once per container and cached (the root file system is read-only, so the
# cache lives under /tmp, an emptyDir in the DaemonSet):
#   1. TRELLIS_IPTABLES_MODE=legacy|nft, when set, wins (an operator's override).
#   2. The kubelet creates the KUBE-IPTABLES-HINT / KUBE-KUBELET-CANARY chains in the mangle
#      table with the flavour it uses: whichever flavour shows them is the host's.
#   3. Otherwise the flavour holding more rules (kube-proxy's) wins; a tie (an empty host)
#      picks nft, the default of current distributions.
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

has_kubelet_hint() {
    {
        "iptables-$1-save" -t mangle
        "ip6tables-$1-save" -t mangle
    } 2>/dev/null | grep -qE '^:(KUBE-IPTABLES-HINT|KUBE-KUBELET-CANARY) '
}

rule_count() {
    {
        "iptables-$1-save"
        "ip6tables-$1-save"
    } 2>/dev/null | grep -c '^-' || true
}

detect_mode() {
    if has_kubelet_hint nft; then
        echo nft
    elif has_kubelet_hint legacy; then
        echo legacy
    elif [ "$(rule_count legacy)" -gt "$(rule_count nft)" ]; then
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
