#!/usr/bin/env bash
# The CNI plugin on a host older than the build machine (issue 16). The plugin runs on the
# HOST, from /opt/cni/bin, next to whatever C library the node has: a plugin linked against
# this machine's glibc (2.36) fails every pod ADD on RHEL 8 (2.28), Debian 11 (2.31),
# Ubuntu 20.04 (2.31), Amazon Linux 2 (2.26) or a musl host. The shipped one is static.
#
#   hack/test-old-root.sh [--plugin PATH] [--dynamic PATH] [--suite SUITE]
#
#   --plugin PATH   the plugin to test (default: hack/build-release.sh's, the one the image
#                   ships; hack/test-image.sh passes the one it unpacked from the image)
#   --dynamic PATH  a dynamically linked build, which must FAIL in the old root, proving the
#                   root really is too old for it (default: $TRELLIS_BIN, else target/debug/trellis,
#                   built if missing)
#   --suite SUITE   the old Debian release (default bullseye, glibc 2.31; buster is no longer
#                   on deb.debian.org)
#
# Steps: checks the plugin is static (no program interpreter, no shared library); makes a
# SUITE root with `mmdebstrap --variant=essential` in a temp dir; shows the dynamic build fails
# there (`GLIBC_2.3x' not found`); then, chrooted into that root inside a scratch "node"
# network namespace with /proc and the pod's netns file mounted, runs the plugin: VERSION,
# ADD (result JSON, eth0 address in the pod, cni0, host veth on it, host-local record, ping
# from the node to the pod), CHECK, DEL (record, veth and eth0 gone), DEL again. Everything
# (namespaces, the root) is removed on exit, failure or not; the mounts live only in the
# mount namespace of each `ip netns exec`.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
plugin=
dynamic=${TRELLIS_BIN:-}
suite=${TRELLIS_OLD_SUITE:-bullseye}
say() { printf 'test-old-root: %s\n' "$*" >&2; }
die() {
    say "FAIL: $*"
    exit 1
}
while [ "$#" -gt 0 ]; do
    case $1 in
        --plugin) plugin=${2:?--plugin needs a path}; shift 2 ;;
        --dynamic) dynamic=${2:?--dynamic needs a path}; shift 2 ;;
        --suite) suite=${2:?--suite needs a Debian release}; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[ "$(id -u)" -eq 0 ] || die "needs root (mmdebstrap, chroot, network namespaces)"
for tool in mmdebstrap readelf jq ip ping; do
    command -v "$tool" >/dev/null || die "$tool not found (hack/install-deps.sh installs what is missing)"
done

start=$(date +%s)
work=$(mktemp -d "${TMPDIR:-/var/tmp}/trellis-old-root.XXXXXX")
node=trlold$$n
pod=trlold$$p
cleanup() {
    ip netns del "$pod" 2>/dev/null || true
    ip netns del "$node" 2>/dev/null || true
    # Nothing is mounted under $work in this mount namespace (see in_root); the option guards it.
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT

cd "$ROOT"
if [ -z "$plugin" ]; then
    hack/build-release.sh "$work/out"
    plugin=$work/out/trellis
fi
if [ -z "$dynamic" ]; then
    dynamic=${CARGO_TARGET_DIR:-$ROOT/target}/debug/trellis
    [ -x "$dynamic" ] || cargo build --locked -p trellis-cni --bin trellis
fi
[ -x "$plugin" ] || die "no plugin at $plugin"
[ -x "$dynamic" ] || die "no dynamic plugin at $dynamic"

# --- 1. the shipped plugin is static, the other one is not ------------------------------------
if readelf -lW "$plugin" | grep 'Requesting program interpreter' >/dev/null; then
    die "$plugin has a program interpreter (dynamically linked)"
fi
if readelf -dW "$plugin" | grep '(NEEDED)' >/dev/null; then
    die "$plugin needs shared libraries"
fi
readelf -lW "$plugin" | grep '^ *LOAD' >/dev/null || die "$plugin is no ELF executable"
say "$plugin: static (no PT_INTERP, no DT_NEEDED)"
if command -v file >/dev/null; then
    file -b "$plugin" | grep 'static-pie linked' >/dev/null || die "file(1) does not call $plugin static-pie: $(file -b "$plugin")"
fi
readelf -lW "$dynamic" | grep 'Requesting program interpreter' >/dev/null || die "$dynamic is not dynamically linked"
needs=$(readelf -VW "$dynamic" | grep -oE 'GLIBC_[0-9]+(\.[0-9]+)+' | sed 's/GLIBC_//' | sort -uV | tail -n 1)

# --- 2. the old root ------------------------------------------------------------------------
say "mmdebstrap --variant=essential $suite"
oldroot=$work/root
mkdir -p "$work/tmp"
# Its own mount namespace, so whatever mmdebstrap mounts is gone when it ends.
TMPDIR=$work/tmp unshare --mount --propagation private \
    mmdebstrap --quiet --mode=root --variant=essential --skip=output/dev "$suite" "$oldroot"
has=$(dpkg-query --admindir="$oldroot/var/lib/dpkg" -W -f='${Version}' libc6 | sed 's/-.*//')
say "$suite root: glibc $has; $dynamic needs glibc $needs"
[ "$(printf '%s\n%s\n' "$needs" "$has" | sort -V | tail -n 1)" != "$has" ] ||
    die "glibc $has in $suite is new enough for the dynamic build: pick an older --suite"

install -D -m 0755 "$plugin" "$oldroot/opt/cni/bin/trellis"
install -D -m 0755 "$dynamic" "$oldroot/opt/cni/bin/trellis-dynamic"
mkdir -p "$oldroot/run/flannel" "$oldroot/run/netns" "$oldroot/dev"
touch "$oldroot/run/netns/$pod" "$oldroot/dev/null"
cat >"$oldroot/run/flannel/subnet.env" <<'EOF'
FLANNEL_NETWORK=10.244.0.0/16
FLANNEL_SUBNET=10.244.1.1/24
FLANNEL_MTU=1450
FLANNEL_IPMASQ=true
EOF
conf='{"cniVersion":"1.0.0","name":"cbr0","type":"trellis"}'
cid=0123456789abcdef-old-root

ip netns add "$node"
ip netns add "$pod"
ip -n "$node" link set lo up

# in_root VERB STDIN PROGRAM: run /opt/cni/bin/PROGRAM chrooted into the old root, in the node
# namespace, as a runtime would (CNI_* environment, config on stdin); stdout and stderr go to
# $work/out.json and $work/err. `ip netns exec` gives a mount namespace of its own (a slave of
# this one), so /proc, /dev/null and the pod's netns file are mounted only there.
in_root() {
    local verb=$1 input=$2 program=$3
    # shellcheck disable=SC2016 # expanded by the inner shell, from its arguments
    printf '%s' "$input" | ip netns exec "$node" sh -ec '
        root=$1; pod=$2; shift 2
        mount -t proc proc "$root/proc"
        mount --bind /dev/null "$root/dev/null"
        mount --bind "/run/netns/$pod" "$root/run/netns/$pod"
        exec chroot "$root" "$@"' in-root "$oldroot" "$pod" \
        env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin CNI_COMMAND="$verb" CNI_CONTAINERID="$cid" \
        CNI_NETNS="/run/netns/$pod" CNI_IFNAME=eth0 CNI_PATH=/opt/cni/bin \
        CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=old-root;K8S_POD_NAME=pod" \
        "/opt/cni/bin/$program" >"$work/out.json" 2>"$work/err"
}

# --- 3. the dynamic build fails there: the root really is too old -----------------------------
rc=0
in_root VERSION '{"cniVersion":"1.0.0"}' trellis-dynamic || rc=$?
[ "$rc" -ne 0 ] || die "the dynamic build ran in $suite: this root proves nothing"
grep -qE "version .GLIBC_[0-9.]+' not found" "$work/err" ||
    die "the dynamic build failed (exit $rc) but not for its glibc: $(cat "$work/err")"
say "dynamic build in $suite: exit $rc, $(grep -oE "version .GLIBC_[0-9.]+' not found" "$work/err" | sort -u | paste -sd, -)"

# --- 4. the static plugin: VERSION, ADD, CHECK, DEL, DEL --------------------------------------
in_root VERSION '{"cniVersion":"1.0.0"}' trellis || die "VERSION failed: $(cat "$work/err" "$work/out.json")"
jq -e '.supportedVersions | index("1.0.0") and index("1.1.0")' "$work/out.json" >/dev/null ||
    die "VERSION answered $(cat "$work/out.json")"
say "VERSION: $(jq -c .supportedVersions "$work/out.json")"

in_root ADD "$conf" trellis || die "ADD failed: $(cat "$work/err" "$work/out.json")"
result=$(cat "$work/out.json")
ip_cidr=$(jq -r '.ips[0].address' <<<"$result")
pod_ip=${ip_cidr%/*}
[[ $ip_cidr == 10.244.1.*/24 ]] || die "ADD gave no address in 10.244.1.0/24: $result"
jq -e --arg ns "/run/netns/$pod" 'any(.interfaces[]; .name == "eth0" and .sandbox == $ns)' <<<"$result" >/dev/null ||
    die "ADD's result has no eth0 in the pod: $result"
ip -n "$pod" -o addr show dev eth0 | grep "inet $ip_cidr " >/dev/null || die "eth0 in the pod lacks $ip_cidr"
ip -n "$node" -d link show cni0 | grep 'bridge ' >/dev/null || die "no cni0 bridge in the node"
ip -n "$node" -o addr show dev cni0 | grep 'inet 10.244.1.1/24 ' >/dev/null || die "cni0 lacks the gateway 10.244.1.1/24"
veth=$(ip -n "$node" -o link show master cni0 | awk -F': ' '{print $2}' | cut -d@ -f1)
[[ $veth == trl* ]] || die "no trellis host veth on cni0 (found '$veth')"
record=$oldroot/var/lib/cni/networks/cbr0/$pod_ip
[ "$(head -n 1 "$record" 2>/dev/null | tr -d '\r')" = "$cid" ] || die "no host-local record $record for $cid"
ip netns exec "$node" ping -c 1 -W 2 "$pod_ip" >/dev/null || die "the node cannot ping the pod at $pod_ip"
say "ADD: $ip_cidr on eth0, host veth $veth on cni0, record written, node pings pod"

in_root CHECK "$(jq -c --argjson prev "$result" '. + {prevResult: $prev}' <<<"$conf")" trellis ||
    die "CHECK failed: $(cat "$work/err" "$work/out.json")"

in_root DEL "$conf" trellis || die "DEL failed: $(cat "$work/err" "$work/out.json")"
[ ! -e "$record" ] || die "DEL left the record $record"
# The host veth is detached at once and destroyed by the plugin's reaper child right after.
for _ in $(seq 50); do
    ip -n "$node" link show "$veth" >/dev/null 2>&1 || break
    sleep 0.1
done
! ip -n "$node" link show "$veth" >/dev/null 2>&1 || die "DEL left the host veth $veth"
! ip -n "$pod" link show eth0 >/dev/null 2>&1 || die "DEL left eth0 in the pod"
in_root DEL "$conf" trellis || die "a second DEL failed: $(cat "$work/err" "$work/out.json")"
say "DEL: record, host veth and eth0 gone; a second DEL succeeds"
say "PASS: the static plugin works on $suite (glibc $has), where the dynamic build cannot start ($(($(date +%s) - start)) s)"
