#!/bin/sh
# shellcheck shell=sh
# /init of the trellis test VM (runs as PID 1 under busybox sh, inside the initramfs).
# Built into the initramfs by hack/vm/build.sh; booted by hack/vm/run.sh.
#
# It assembles the guest root: the host's / (9p tag "hostroot", read-only) under a tmpfs
# overlay, so the guest runs the host's own binaries at their host paths while every
# write stays in guest memory. The control share (tag "share") carries the command,
# environment and results; stage2 runs the command once the root is switched.
export PATH=/bin

msg() { echo "trellis-vm: $*"; }
die() {
	msg "FATAL: $*"
	# Let the console drain, then power off; run.sh reports the missing exit status.
	sleep 1
	echo o >/proc/sysrq-trigger
	sleep 10
	exit 1
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

# shellcheck source=/dev/null
. /etc/trellis-vm.conf

uptime_s() { read -r up _ </proc/uptime && echo "$up"; }
debug=
case " $(cat /proc/cmdline) " in *" trellis.debug "*) debug=1 ;; esac

[ -z "$debug" ] || msg "$(uptime_s) loading modules"
# One modprobe process for all: an exec per module costs ~0.1 s under TCG.
# shellcheck disable=SC2086 # word splitting of the module lists is intended
modprobe -a $PRELOAD_MODULES || msg "modprobe reported errors"
for m in $PRELOAD_MODULES; do
	[ -d "/sys/module/$m" ] || die "module $m did not load"
done
for m in $OPTIONAL_MODULES; do
	modprobe "$m" 2>/dev/null || msg "optional module $m not loaded"
done
[ -z "$debug" ] || msg "$(uptime_s) modules loaded"
p9opts=trans=virtio,version=9p2000.L,msize=512000
mkdir -p /ctl
mount -t 9p -o "$p9opts" share /ctl || die "cannot mount the control share (tag share)"
RW_MOUNTS=
# shellcheck source=/dev/null
[ -f /ctl/vm.conf ] && . /ctl/vm.conf

# cache=loose: the lower layer is read-only for the guest's lifetime, so caching pages
# and attributes is safe and makes exec of host binaries much faster over 9p.
mount -t 9p -o "$p9opts,ro,cache=loose" hostroot /lower || die "cannot mount the host root (tag hostroot)"
mount -t tmpfs -o mode=0755 tmpfs /upper
mkdir -p /upper/upper /upper/work
# 9p has no file handles, so overlay features that need them stay off.
mount -t overlay overlay \
	-o lowerdir=/lower,upperdir=/upper/upper,workdir=/upper/work,index=off,redirect_dir=off,metacopy=off,xino=off \
	/newroot || die "cannot mount the overlay root"

r=/newroot
mount -t proc proc $r/proc
mount -t sysfs sysfs $r/sys
mount -t cgroup2 cgroup2 $r/sys/fs/cgroup 2>/dev/null || true
mount -t devtmpfs devtmpfs $r/dev
# devtmpfs lacks these (udev normally adds them); bash process substitution needs /dev/fd.
ln -sf /proc/self/fd $r/dev/fd
ln -sf /proc/self/fd/0 $r/dev/stdin
ln -sf /proc/self/fd/1 $r/dev/stdout
ln -sf /proc/self/fd/2 $r/dev/stderr
mkdir -p $r/dev/pts $r/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts $r/dev/pts
mount -t tmpfs -o mode=1777 tmpfs $r/dev/shm
# A fresh /run: the host's holds its own netns bind-mount targets, sockets and pid
# files, which would only mislead tools in the guest (e.g. `ip netns list`).
mount -t tmpfs -o mode=0755 tmpfs $r/run
mkdir -p $r/run/trellis-vm/ctl $r/run/netns $r/run/lock
mount --move /ctl $r/run/trellis-vm/ctl

# Host directories the caller asked to be writable, at their own path (TRELLIS_VM_RW).
for spec in $RW_MOUNTS; do
	tag=${spec%%=*}
	path=${spec#*=}
	mkdir -p "$r$path"
	mount -t 9p -o "$p9opts" "$tag" "$r$path" || die "cannot mount $path (tag $tag)"
done

# The host's /lib/modules belongs to the host kernel; give the guest its own full tree
# so modprobe and kernel module autoloading find what the initramfs did not preload.
if [ -d "$r$FULL_MODDIR" ]; then
	mkdir -p "$r/lib/modules/$KVER"
	mount --bind "$r$FULL_MODDIR" "$r/lib/modules/$KVER"
else
	msg "module tree $FULL_MODDIR not visible; only preloaded modules available"
fi

cp /bin/busybox /stage2 $r/run/trellis-vm/
ip link set lo up
hostname trellis-vm

[ -z "$debug" ] || msg "$(uptime_s) switch_root"
exec switch_root $r /run/trellis-vm/stage2
