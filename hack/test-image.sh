#!/usr/bin/env bash
# Build the trellis image the way hack/build-image.sh does, and check it as a runtime sees it.
#
#   hack/test-image.sh        # run by hack/test.sh; root
#
# 1. Starts a throwaway containerd (temp dir, own socket, CRI plugin off) and runs
#    `hack/build-image.sh --out ... --import SOCKET` against it.
# 2. The archive: index annotated with the name containerd and the CRI plugin use
#    (docker.io/library/trellis:<tag> for the manifests' trellis:<tag>); config with the
#    Dockerfile's entry point, which is the DaemonSet's command, CMD ["run"], PATH, labels;
#    compressed size under a budget.
# 3. The root file system (umoci unpack): both binaries where the DaemonSet runs them, the plugin
#    static, every package of deploy/image-packages.txt installed, the wrapper and its six
#    links, both iptables flavours and nft; no docs but copyright files, no man pages, no apt
#    lists or caches, no perl, no device nodes.
# 4. Containers from the imported image, as the DaemonSet runs them (read-only root, tmpfs /tmp,
#    NET_ADMIN, default seccomp) in their own network namespace: `trellis-agent --version`
#    (the image tag's version), the plugin's VERSION, `iptables --version` in both wrapper
#    modes, `nft --version`, and a chain/table made through the wrapper's automatic choice,
#    through each forced flavour and through nft, each found where it must be.
# 5. hack/test-old-root.sh on the plugin unpacked from the image: static, and a full
#    VERSION/ADD/CHECK/DEL in a Debian bullseye root (glibc 2.31), where a dynamic build fails.
# Cleans up (containers, containerd, its shims, the temp dir) on any exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEPLOY=$ROOT/deploy
NS=k8s.io
# The compressed size today is ~37 MiB (2026-12): a budget, so that growth is a decision.
MAX_COMPRESSED_MIB=45
# Shared with the Rust tests that start a containerd (tests/src/containerd): they and this
# script share /run/containerd/runc/k8s.io and the k8s.io cgroup parents.
SERIAL_LOCK=/run/trellis-containerd-tests.lock

say() { printf 'test-image: %s\n' "$*" >&2; }
die() {
    say "FAIL: $*"
    exit 1
}
[ "$(id -u)" -eq 0 ] || die "needs root"
for tool in containerd ctr runc umoci jq readelf flock; do
    command -v "$tool" >/dev/null || die "$tool not found (hack/install-deps.sh installs what is missing)"
done

start=$(date +%s)
work=$(mktemp -d "${TMPDIR:-/var/tmp}/trellis-image-test.XXXXXX")
sock=$work/ctd/containerd.sock
ctd_pid=
# The containers this script may run (named here: run_in_image runs in command substitutions).
containers=("trellis-image-test-$$-agent" "trellis-image-test-$$-tools")

# Processes (shims) whose command line names our socket: those are ours and nobody else's.
our_shims() {
    local f pid
    for f in /proc/[0-9]*/cmdline; do
        pid=${f#/proc/}
        pid=${pid%/cmdline}
        # (A process may be gone between the glob and the read.)
        if { tr '\0' ' ' <"$f"; } 2>/dev/null | grep "containerd-shim.* -address $sock " >/dev/null; then
            echo "$pid"
        fi
    done
}
cleanup() {
    local id pid
    for id in "${containers[@]}"; do
        ctr -a "$sock" -n "$NS" tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
        ctr -a "$sock" -n "$NS" containers delete "$id" >/dev/null 2>&1 || true
        runc --root "/run/containerd/runc/$NS" delete --force "$id" >/dev/null 2>&1 || true
        rmdir /sys/fs/cgroup/*/"$NS/$id" 2>/dev/null || true
    done
    if [ -n "$ctd_pid" ]; then
        kill "$ctd_pid" 2>/dev/null || true
        wait "$ctd_pid" 2>/dev/null || true
    fi
    for pid in $(our_shims); do kill -9 "$pid" 2>/dev/null || true; done
    # Parents left empty by our containers (another instance's still in use stay).
    rmdir /sys/fs/cgroup/*/"$NS" "/run/containerd/runc/$NS" /run/containerd/runc /run/containerd/s \
        /run/containerd 2>/dev/null || true
    # containerd ran in its own mount namespace: its overlay mounts died with it.
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT

# --- 1. containerd, then the build with --import ----------------------------------------------
mkdir -p "$work/ctd"
cat >"$work/ctd/config.toml" <<EOF
version = 2
root = "$work/ctd/root"
state = "$work/ctd/state"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$work/ctd/opt"
EOF
# Its own mount namespace (a slave of this one), so image and container mounts stay in it.
unshare --mount --propagation slave containerd --config "$work/ctd/config.toml" >"$work/ctd/log" 2>&1 &
ctd_pid=$!
for _ in $(seq 100); do
    ctr -a "$sock" version >/dev/null 2>&1 && break
    kill -0 "$ctd_pid" 2>/dev/null || die "containerd exited: $(tail -n 20 "$work/ctd/log")"
    sleep 0.1
done
ctr -a "$sock" version >/dev/null || die "containerd not serving after 10 s: $(tail -n 20 "$work/ctd/log")"

archive=$work/trellis.oci.tar
build_start=$(date +%s)
"$ROOT/hack/build-image.sh" --out "$archive" --import "$sock" --namespace "$NS"
build_secs=$(($(date +%s) - build_start))

# --- 2. the archive ---------------------------------------------------------------------------
image=$(sed -n 's/^[[:space:]]*image:[[:space:]]*//p' "$DEPLOY/manifests/daemonset.yaml" | tr -d '"'"'" | sort -u)
[ "$(wc -l <<<"$image")" -eq 1 ] || die "the DaemonSet names several images: $image"
tag=${image##*:}
full=docker.io/library/$image
mkdir -p "$work/layout"
tar -xf "$archive" -C "$work/layout"
index=$work/layout/index.json
jq -e --arg n "$full" --arg t "$tag" '.manifests | length == 1 and
    .[0].annotations["io.containerd.image.name"] == $n and .[0].annotations["org.opencontainers.image.ref.name"] == $t' \
    "$index" >/dev/null || die "index.json does not name $full / $tag: $(jq -c . "$index")"
blob() { echo "$work/layout/blobs/sha256/${1#sha256:}"; }
manifest=$(blob "$(jq -r '.manifests[0].digest' "$index")")
config=$(blob "$(jq -r '.config.digest' "$manifest")")
# The DaemonSet's command for both containers, as JSON.
mapfile -t commands < <(sed -n 's/^[[:space:]]*command:[[:space:]]*//p' "$DEPLOY/manifests/daemonset.yaml" | sort -u)
[ "${#commands[@]}" -eq 1 ] || die "the DaemonSet's containers run different commands: ${commands[*]}"
jq -e --argjson cmd "${commands[0]}" '.os == "linux" and .config.Entrypoint == $cmd and .config.Cmd == ["run"] and
    (.config.Env | index("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")) and
    .config.Labels["org.opencontainers.image.title"] == "trellis" and (.rootfs.diff_ids | length == 2)' \
    "$config" >/dev/null || die "image config: $(jq -c '{os, config, rootfs}' "$config")"
compressed=$(jq '[.layers[].size] | add' "$manifest")
[ "$compressed" -le $((MAX_COMPRESSED_MIB * 1048576)) ] ||
    die "the image is $((compressed / 1048576)) MiB compressed, over the $MAX_COMPRESSED_MIB MiB budget"
say "archive: $full, entry point ${commands[0]} run, $(awk -v b="$compressed" 'BEGIN{printf "%.1f", b/1048576}') MiB compressed"

# --- 3. the root file system ----------------------------------------------------------------
umoci unpack --image "$work/layout:$tag" "$work/bundle" >/dev/null
rootfs=$work/bundle/rootfs
agent=$(jq -r '.[0]' <<<"${commands[0]}")
plugin_src=$(sed -n 's/.*--plugin-source=\([^" ]*\).*/\1/p' "$DEPLOY/manifests/daemonset.yaml" | awk 'NR == 1')
[ -n "$plugin_src" ] || die "no --plugin-source in the DaemonSet"
for f in "$agent" "$plugin_src" /usr/local/sbin/iptables-wrapper /usr/sbin/iptables-legacy /usr/sbin/iptables-nft \
    /usr/sbin/ip6tables-legacy /usr/sbin/ip6tables-nft /usr/sbin/nft; do
    [ -x "$rootfs$f" ] || die "$f missing from the image"
done
if readelf -lW "$rootfs$plugin_src" | grep 'Requesting program interpreter' >/dev/null ||
    readelf -dW "$rootfs$plugin_src" | grep '(NEEDED)' >/dev/null; then
    die "the image's plugin $plugin_src is not statically linked"
fi
cmp -s "$rootfs/usr/local/sbin/iptables-wrapper" "$DEPLOY/iptables-wrapper.sh" || die "the image's wrapper differs from deploy/"
for tool in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
    [ "$(readlink "$rootfs/usr/sbin/$tool")" = /usr/local/sbin/iptables-wrapper ] || die "/usr/sbin/$tool is not the wrapper"
done
while read -r p; do
    dpkg-query --admindir="$rootfs/var/lib/dpkg" -W -f='${Status}' "$p" 2>/dev/null | grep 'install ok installed' >/dev/null ||
        die "package $p (deploy/image-packages.txt) is not installed in the image"
done < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' -e '/^$/d' "$DEPLOY/image-packages.txt")
junk=$(cd "$rootfs" && {
    find usr/share/doc -type f ! -name copyright
    find usr/share/man usr/share/locale -mindepth 1 -type f
    find usr/share/info -mindepth 1 -type f ! -name dir
    find var/lib/apt/lists var/cache/apt -type f ! -name lock
    find dev -mindepth 1 \( -type c -o -type b \)
    true # a directory that is absent holds nothing
} 2>/dev/null | awk 'NR <= 5')
[ -z "$junk" ] || die "the image holds what it should not (first 5): $junk"
# usrmerge would drag in perl (40 MB); debian-slim has neither (perl-base, which is Essential, stays).
for p in usrmerge perl; do
    if dpkg-query --admindir="$rootfs/var/lib/dpkg" -W -f='${Status}' "$p" 2>/dev/null | grep 'install ok installed' >/dev/null; then
        die "package $p is installed in the image"
    fi
done
say "root: $agent, $plugin_src (static), wrapper + 6 links, $(tr '\n' ' ' < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$DEPLOY/image-packages.txt"))installed; no docs, apt lists, perl or device nodes; $(du -sm "$rootfs" | cut -f1) MiB"

# --- 4. containers from the imported image --------------------------------------------------
exec 9>"$SERIAL_LOCK"
flock 9
run_in_image() { # ID COMMAND...: a container as the DaemonSet runs one, in its own netns
    local id=trellis-image-test-$$-$1
    shift
    ctr -a "$sock" -n "$NS" run --rm --fifo-dir "$work/fifo" --read-only --seccomp --cap-add CAP_NET_ADMIN \
        --mount "type=tmpfs,src=tmpfs,dst=/tmp,options=rw:nosuid:nodev" "$full" "$id" "$@"
}
version=$(run_in_image agent "$agent" --version)
grep -q "$tag" <<<"$version" || die "trellis-agent --version says '$version', not $tag"
# shellcheck disable=SC2016 # expanded inside the container
checks='set -eu
printf "{\"cniVersion\":\"1.0.0\"}" | CNI_COMMAND=VERSION "$1"
echo
TRELLIS_IPTABLES_MODE=nft iptables --version | grep "(nf_tables)"
TRELLIS_IPTABLES_MODE=legacy iptables --version | grep "(legacy)"
nft --version
# The automatic choice in an empty network namespace is nft, cached in /tmp (read-only root).
iptables -t nat -N TRELLIS-AUTO
test "$(cat /tmp/trellis-iptables-mode)" = nft
iptables-nft-save -t nat | grep -q "^:TRELLIS-AUTO "
TRELLIS_IPTABLES_MODE=legacy iptables -t nat -N TRELLIS-LEGACY
iptables-legacy-save -t nat | grep -q "^:TRELLIS-LEGACY "
TRELLIS_IPTABLES_MODE=legacy ip6tables -t filter -N TRELLIS-LEGACY6
ip6tables-legacy-save -t filter | grep -q "^:TRELLIS-LEGACY6 "
nft add table inet trellis-image-test
nft list tables | grep -q "inet trellis-image-test"
echo "firewall tools: wrapper auto (nft), forced legacy, ip6tables, nft all work"'
out=$(run_in_image tools sh -c "$checks" sh "$plugin_src" 2>&1) || die "in the container: $out"
grep -q '"supportedVersions"' <<<"$out" || die "the plugin's VERSION in the container: $out"
say "containers: $version; $(head -n 1 <<<"$out"); $(tail -n 1 <<<"$out")"
flock -u 9

# --- 5. the shipped plugin on an old root -----------------------------------------------------
"$ROOT/hack/test-old-root.sh" --plugin "$rootfs$plugin_src"

say "PASS ($(($(date +%s) - start)) s, of which build-image ${build_secs} s)"
