#!/usr/bin/env bash
# Guest-side smoke test of the VM harness: proves the guest kernel gives the IPIP backend
# and its NAT rules what they need. Run it with: hack/vm/run.sh hack/vm/smoke-ipip.sh
#
# Checks, each in namespaces this script creates and removes:
#   1. flannel-style IPIP: a "flannel.ipip" device with only a local address per node and
#      per-peer routes "via PEER dev flannel.ipip onlink"; ping across, packets counted on
#      the tunnel, MTU = underlay - 20.
#   2. point-to-point IPIP (local A remote B) ping.
#   3. nft NAT: a masquerade rule loads and counts a pod's outgoing connection.
#   4. iptables-legacy and iptables-nft NAT rules with the match modules flannel uses.
#   5. module autoloading (GRE, not preloaded), /dev/net/tun, WireGuard if the kernel has it.
# Every exec costs ~0.1-0.3 s under TCG, so setup is batched (`ip -n NS -batch`).
set -euo pipefail

if [[ "${TRELLIS_VM:-}" != 1 ]]; then
  echo "smoke-ipip: meant to run inside the VM: hack/vm/run.sh $0" >&2
  exit 2
fi

id=$$
ns_a=smk-a-$id ns_b=smk-b-$id ns_c=smk-c-$id ns_d=smk-d-$id ns_p=smk-p-$id
all_ns=("$ns_a" "$ns_b" "$ns_c" "$ns_d" "$ns_p")
cleanup() {
  for ns in "${all_ns[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
}
trap cleanup EXIT

step() { printf '== %s\n' "$*"; }
fail() { printf 'smoke-ipip: FAIL: %s\n' "$*" >&2; exit 1; }
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
ipb() { local ns=$1; ip -n "$ns" -batch - || fail "ip -batch in $ns failed"; }

# iputils ping if installed, else busybox's (the host has busybox-static from build.sh).
if command -v ping >/dev/null; then ping_cmd=(ping); else ping_cmd=(busybox ping); fi
ping_from() { # NS SRC DST
  in_ns "$1" "${ping_cmd[@]}" -A -c 3 -w 5 -I "$2" "$3" >/dev/null ||
    fail "ping $2 -> $3 from $1 got no reply"
}
# Prints "RX_PACKETS TX_PACKETS" of DEV in NS.
packets() {
  ip -n "$1" -s link show dev "$2" |
    awk '/RX:/ { getline; rx = $2 } /TX:/ { getline; tx = $2 } END { print rx, tx }'
}

# Two "nodes" joined by a veth underlay.
underlay() { # NS1 NS2 IP1 IP2
  ip netns add "$1"
  ip netns add "$2"
  ip link add eth0 netns "$1" type veth peer name eth0 netns "$2"
  printf 'addr add %s/24 dev eth0\nlink set lo up\nlink set eth0 up\n' "$3" | ipb "$1"
  printf 'addr add %s/24 dev eth0\nlink set lo up\nlink set eth0 up\n' "$4" | ipb "$2"
}

step "flannel-style IPIP (flannel.ipip, routes via peer onlink)"
underlay "$ns_a" "$ns_b" 192.168.50.1 192.168.50.2
flannel_node() { # NS PUBLIC_IP POD_NET_ADDR PEER_PUBLIC PEER_SUBNET
  ipb "$1" <<EOT
link add flannel.ipip type ipip local $2
addr add $3/32 dev flannel.ipip
link set flannel.ipip up
route add $5 via $4 dev flannel.ipip onlink
EOT
}
flannel_node "$ns_a" 192.168.50.1 10.244.0.0 192.168.50.2 10.244.1.0/24
flannel_node "$ns_b" 192.168.50.2 10.244.1.0 192.168.50.1 10.244.0.0/24
links=$(ip -n "$ns_a" -d link show)
grep -q 'tunl0@NONE' <<<"$links" || fail "the kernel's fallback tunl0 is missing"
grep -Eq 'flannel\.ipip@NONE: .* mtu 1480 ' <<<"$links" ||
  fail "flannel.ipip MTU is not 1480 (1500 - 20): $links"
ping_from "$ns_a" 10.244.0.0 10.244.1.0
read -r _ tx < <(packets "$ns_a" flannel.ipip)
read -r rx _ < <(packets "$ns_b" flannel.ipip)
((tx >= 3 && rx >= 3)) || fail "ping did not go through the tunnel (tx=$tx rx=$rx)"
echo "ok: ping over flannel.ipip, tx=$tx rx=$rx, mtu=1480"

step "point-to-point IPIP (local A remote B)"
underlay "$ns_c" "$ns_d" 192.168.51.1 192.168.51.2
ptp() { # NS LOCAL REMOTE ADDR PEER_ADDR
  ipb "$1" <<EOT
link add ptp0 type ipip local $2 remote $3
addr add $4 peer $5 dev ptp0
link set ptp0 up
EOT
}
ptp "$ns_c" 192.168.51.1 192.168.51.2 10.99.0.1 10.99.0.2
ptp "$ns_d" 192.168.51.2 192.168.51.1 10.99.0.2 10.99.0.1
ping_from "$ns_c" 10.99.0.1 10.99.0.2
echo "ok: ping over a point-to-point ipip tunnel"

step "nft masquerade for a pod behind node a"
# A pod namespace on node a; its traffic leaving via the underlay is masqueraded.
ip netns add "$ns_p"
ip link add eth0 netns "$ns_p" type veth peer name veth-p netns "$ns_a"
ipb "$ns_p" <<EOT
addr add 10.244.0.2/24 dev eth0
link set lo up
link set eth0 up
route add default via 10.244.0.1
EOT
ipb "$ns_a" <<EOT
addr add 10.244.0.1/24 dev veth-p
link set veth-p up
EOT
in_ns "$ns_a" sh -c 'echo 1 >/proc/sys/net/ipv4/ip_forward && nft -f -' <<'EOT'
table ip smoke-nat {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr 10.244.0.0/16 ip daddr != 10.244.0.0/16 oifname "eth0" counter masquerade
  }
}
EOT
ping_from "$ns_p" 10.244.0.2 192.168.50.2
in_ns "$ns_a" nft list table ip smoke-nat | grep -Eq 'counter packets [1-9]' ||
  fail "the nft masquerade rule matched nothing"
echo "ok: nft masquerade loaded and matched"

step "iptables NAT (legacy and nft)"
# Separate namespaces per variant: with both present, iptables-nft warns about legacy tables.
check_iptables() { # VARIANT NS
  local v=$1 ns=$2 out
  command -v "$v" >/dev/null || fail "$v is not installed on the host"
  out=$(in_ns "$ns" sh -c "$v-restore && $v-save -t nat" <<'EOT'
*nat
:SMOKE-POSTRTG - [0:0]
-A POSTROUTING -m comment --comment "smoke" -j SMOKE-POSTRTG
-A SMOKE-POSTRTG -m mark --mark 0x4000/0x4000 -j RETURN
-A SMOKE-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m addrtype ! --dst-type LOCAL -j MASQUERADE --random-fully
COMMIT
*filter
-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
EOT
  ) || fail "$v-restore rejected the NAT rules"
  grep -q -- '-j MASQUERADE --random-fully' <<<"$out" || fail "$v: MASQUERADE rule not listed: $out"
  echo "ok: $v nat MASQUERADE, comment, mark, addrtype, conntrack"
}
check_iptables iptables-legacy "$ns_b"
check_iptables iptables-nft "$ns_d"

step "module autoloading, /dev/net/tun, WireGuard"
# ip_gre is not preloaded by the initramfs: creating a GRE link proves the kernel can
# autoload modules from the full tree bind-mounted at /lib/modules/$(uname -r).
ip -n "$ns_c" link add gre-smoke type gre local 192.168.51.1 remote 192.168.51.2 ||
  fail "GRE link creation failed: module autoloading does not work"
[[ -c /dev/net/tun ]] || fail "/dev/net/tun missing"
if modinfo wireguard >/dev/null 2>&1; then
  ip -n "$ns_c" link add wg-smoke type wireguard || fail "wireguard link creation failed"
  echo "ok: autoload (gre), /dev/net/tun, wireguard link"
else
  echo "ok: autoload (gre), /dev/net/tun; no wireguard module in this kernel"
fi

echo "smoke-ipip: PASS (kernel $(uname -r))"
