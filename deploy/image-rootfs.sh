#!/bin/sh
# The trellis image's root file system, apart from the two binaries: run INSIDE the image's
# root by both image builds, so they cannot differ.
#
#   sh image-rootfs.sh DIR     # DIR holds image-packages.txt and iptables-wrapper.sh
#
# deploy/Dockerfile runs it in its final stage (debian:bookworm-slim, DIR a bind mount of
# deploy/); hack/build-image.sh runs it with chroot in the root mmdebstrap made, where the
# packages are already installed (mmdebstrap --include) and apt is not needed.
#
# 1. Installs the packages listed in DIR/image-packages.txt that are missing, without
#    recommends, and removes apt's lists; fails unless every listed package is installed.
# 2. Installs DIR/iptables-wrapper.sh as /usr/local/sbin/iptables-wrapper and points the
#    iptables, iptables-save, iptables-restore and ip6tables forms at it (replacing Debian's
#    alternatives links), so the flavour follows the host at run time.
# 3. Checks that both flavours and nft run.
set -eu

dir=${1:?usage: image-rootfs.sh DIR}
packages=$(sed -e 's/#.*//' -e 's/[[:space:]]//g' -e '/^$/d' "$dir/image-packages.txt")
[ -n "$packages" ] || {
    echo "image-rootfs: no package in $dir/image-packages.txt" >&2
    exit 1
}

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep 'install ok installed' >/dev/null
}

missing=
for p in $packages; do
    installed "$p" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    # shellcheck disable=SC2086 # a list of package names
    apt-get install -y --no-install-recommends $missing
    apt-get clean
    rm -rf /var/lib/apt/lists/*
fi
for p in $packages; do
    installed "$p" || {
        echo "image-rootfs: package $p is not installed" >&2
        exit 1
    }
done

install -D -m 0755 "$dir/iptables-wrapper.sh" /usr/local/sbin/iptables-wrapper
for tool in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
    ln -sf /usr/local/sbin/iptables-wrapper "/usr/sbin/$tool"
done

TRELLIS_IPTABLES_MODE=nft iptables --version
TRELLIS_IPTABLES_MODE=legacy iptables --version
nft --version
