#!/usr/bin/env bash
# Benchmark (not a test) of trellis's iptables firewall check on a node crowded by kube-proxy:
# in a throwaway network namespace per flavour (iptables-nft, iptables-legacy), BENCH_RULES
# kube-proxy-like nat rules (KUBE-SERVICES -> KUBE-SVC-* -> KUBE-SEP-*, two endpoints per
# Service) are loaded with iptables-restore, trellis's dual-stack rules are installed, and the
# agent's own check runs in both read modes side by side in one run:
#   dump        the old way: iptables-save and ip6tables-save, whole, every check
#   own-chains  iptables -t T -S CHAIN of trellis's chains and their built-in hooks only
# Per mode: median wall time of one check, child processes per check, and the peak RSS of
# those children (/usr/bin/time -f %M). Prints a table with the ratios at the end.
#
#   sudo hack/bench-firewall.sh
#   BENCH_RULES=20000 BENCH_REPS=30 BENCH_RSS_REPS=5 BENCH_NO_BUILD=1 sudo -E hack/bench-firewall.sh
# Logs and table.txt stay in BENCH_OUT (default: a new /tmp/trellis-bench-firewall.XXXX).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "run as root (network namespaces, iptables)" >&2; exit 1; }

rules=${BENCH_RULES:-20000}
reps=${BENCH_REPS:-30}
rss_reps=${BENCH_RSS_REPS:-5}
out=${BENCH_OUT:-$(mktemp -d /tmp/trellis-bench-firewall.XXXX)}
mkdir -p "$out"
for tool in /usr/bin/time iptables-nft-restore iptables-legacy-restore; do
  command -v "$tool" >/dev/null || { echo "$tool missing: run hack/install-deps.sh" >&2; exit 1; }
done

if [ -z "${BENCH_NO_BUILD:-}" ]; then
  cargo build --release --locked -p trellis-agent --example bench_firewall
fi
bin=$(realpath "${CARGO_TARGET_DIR:-target}/release/examples/bench_firewall")

# kube-proxy's iptables mode, 8 rules per Service with two endpoints: the Service's
# KUBE-SERVICES match, its KUBE-SVC chain's masquerade mark and two probability jumps, and per
# endpoint a KUBE-SEP chain with the hairpin mark and the DNAT.
gen_rules() {
  awk -v services="$(( (rules + 7) / 8 ))" 'BEGIN {
    print "*nat"
    print ":KUBE-SERVICES - [0:0]"
    print ":KUBE-POSTROUTING - [0:0]"
    print ":KUBE-MARK-MASQ - [0:0]"
    for (s = 0; s < services; s++) {
      printf ":KUBE-SVC-%016X - [0:0]\n", s
      for (e = 0; e < 2; e++) printf ":KUBE-SEP-%012X%04X - [0:0]\n", s, e
    }
    print "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
    print "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
    print "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING"
    print "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000"
    print "-A KUBE-POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE --random-fully"
    for (s = 0; s < services; s++) {
      ip = sprintf("10.96.%d.%d", int(s / 250), s % 250 + 1)
      svc = sprintf("KUBE-SVC-%016X", s)
      printf "-A KUBE-SERVICES -d %s/32 -p tcp -m comment --comment \"ns/svc-%d:http cluster IP\" -m tcp --dport 80 -j %s\n", ip, s, svc
      printf "-A %s ! -s 10.244.0.0/16 -d %s/32 -p tcp -m comment --comment \"ns/svc-%d:http cluster IP\" -m tcp --dport 80 -j KUBE-MARK-MASQ\n", svc, ip, s
      for (e = 0; e < 2; e++) {
        n = 2 * s + e
        pod = sprintf("10.245.%d.%d", int(n / 250), n % 250 + 1)
        sep = sprintf("KUBE-SEP-%012X%04X", s, e)
        prob = (e == 0) ? " -m statistic --mode random --probability 0.50000000000" : ""
        printf "-A %s -m comment --comment \"ns/svc-%d:http -> %s:8080\"%s -j %s\n", svc, s, pod, prob, sep
        printf "-A %s -s %s/32 -m comment --comment \"ns/svc-%d:http\" -j KUBE-MARK-MASQ\n", sep, pod, s
        printf "-A %s -p tcp -m comment --comment \"ns/svc-%d:http\" -m tcp -j DNAT --to-destination %s:8080\n", sep, s, pod
      }
    }
    print "COMMIT"
  }'
}

namespaces=()
cleanup() {
  local ns
  for ns in "${namespaces[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
}
trap cleanup EXIT

gen_rules >"$out/kube-proxy.rules"
results=$out/results.txt
: >"$results"
for flavour in nft legacy; do
  ns=trl-benchfw-$flavour-$$
  namespaces+=("$ns")
  ip netns add "$ns"
  ip netns exec "$ns" "iptables-$flavour-restore" <"$out/kube-proxy.rules"
  loaded=$(ip netns exec "$ns" "iptables-$flavour-save" | grep -c '^-A')
  echo "$flavour: $loaded rules loaded" >&2
  ip netns exec "$ns" "$bin" "$flavour" "$reps" "$rss_reps" "$out" | tee -a "$results"
  ip netns del "$ns"
done

# The table: one row per flavour and mode, ratios against the old way (dump) per flavour.
awk '
  /^RESULT/ {
    for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    key = v["flavour"] "/" v["mode"]
    order[++n] = key; flavour[key] = v["flavour"]; mode[key] = v["mode"]; def[key] = v["default"]
    med[key] = v["median_ms"]; kids[key] = v["children_per_check"]; rss[key] = v["peak_child_rss_kib"]
    if (v["mode"] == "dump") { base_med[v["flavour"]] = v["median_ms"]; base_rss[v["flavour"]] = v["peak_child_rss_kib"] }
  }
  END {
    printf "%-7s %-11s %-8s %10s %9s %14s %12s %12s\n", "iptables", "read", "default", "median ms", "children", "peak RSS MiB", "time/dump", "RSS/dump"
    for (i = 1; i <= n; i++) {
      k = order[i]
      printf "%-7s %-11s %-8s %10.2f %9d %14.1f %11.2fx %11.2fx\n", flavour[k], mode[k], def[k], med[k], kids[k], rss[k] / 1024, med[k] / base_med[flavour[k]], rss[k] / base_rss[flavour[k]]
    }
  }' "$results" | tee "$out/table.txt"
echo "($rules kube-proxy-like rules requested, $reps timed checks per mode, $rss_reps checks per mode under /usr/bin/time; logs in $out)"
