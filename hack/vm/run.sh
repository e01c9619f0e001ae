#!/usr/bin/env bash
# Boot the trellis test VM (QEMU, TCG) and run one command inside it as root.
#
# Usage: hack/vm/run.sh SCRIPT [ARGS...]
#   SCRIPT is a host path (the guest's root is the host's root, read-only under a tmpfs
#   overlay, so the same path works inside) or a command name looked up on the guest PATH.
#   Exits with SCRIPT's exit status; 124 on timeout, 125 if the guest never reported one.
#
# Environment (all optional):
#   TRELLIS_VM_CACHE    kernel/initramfs cache (default /var/cache/trellis-vm); built on demand
#   TRELLIS_VM_TIMEOUT  wall-clock limit in seconds for boot + command (default 300)
#   TRELLIS_VM_MEM      guest memory in MiB (default 1024); the overlay's writes live in it
#   TRELLIS_VM_SMP      guest vCPUs (default 2)
#   TRELLIS_VM_ENV      extra variable names to pass to the guest (space-separated)
#   TRELLIS_VM_RW       host directories to make writable in the guest at the same path
#                       (space-separated, no whitespace inside a path); writes reach the host
#   TRELLIS_VM_KEEP=1   keep the control directory (console log, output, status) for debugging
# Passed to the guest by default: PATH, RUST_LOG, RUST_BACKTRACE, CARGO_TARGET_DIR, every
# TRELLIS_* variable, and the current directory.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${TRELLIS_VM_CACHE:-/var/cache/trellis-vm}
timeout_s=${TRELLIS_VM_TIMEOUT:-300}
mem=${TRELLIS_VM_MEM:-1024}
smp=${TRELLIS_VM_SMP:-2}

die() { printf 'vm-run: error: %s\n' "$*" >&2; exit 125; }

[[ $# -ge 1 ]] || { sed -n '2,/^set -e/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
[[ $EUID -eq 0 ]] || die "must run as root (QEMU exports / over 9p with the caller's rights)"
[[ "$timeout_s" =~ ^[0-9]+$ ]] || die "TRELLIS_VM_TIMEOUT must be whole seconds, got '$timeout_s'"
if [[ "$1" == */* && ! -e "$1" ]]; then
  die "$1: no such file on the host (the guest sees the host's filesystem)"
fi

"$here/build.sh" "$cache" 2> >(grep -v '^vm-build: up to date' >&2)

ctl=$(mktemp -d /tmp/trellis-vm.XXXXXX)
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
  if [[ "${TRELLIS_VM_KEEP:-}" == 1 ]]; then
    printf 'vm-run: kept %s\n' "$ctl" >&2
  else
    rm -rf "$ctl"
  fi
}
trap cleanup EXIT

printf '%s\0' "$@" >"$ctl/argv"
{
  printf 'export TRELLIS_VM_CWD=%q\n' "$PWD"
  names=(PATH RUST_LOG RUST_BACKTRACE CARGO_TARGET_DIR)
  while IFS= read -r name; do names+=("$name"); done < <(compgen -e TRELLIS_)
  read -r -a extra <<<"${TRELLIS_VM_ENV:-}"
  names+=("${extra[@]}")
  for name in "${names[@]}"; do
    [[ "$name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "TRELLIS_VM_ENV: bad variable name '$name'"
    if [[ -v "$name" ]]; then printf 'export %s=%q\n' "$name" "${!name}"; fi
  done
} >"$ctl/env"

virtfs=(
  -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"
  -virtfs "local,path=$ctl,mount_tag=share,security_model=none,multidevs=remap"
)
rw_mounts=()
read -r -a rw_paths <<<"${TRELLIS_VM_RW:-}"
for i in "${!rw_paths[@]}"; do
  p=$(realpath -e "${rw_paths[$i]}" 2>/dev/null) || die "TRELLIS_VM_RW: ${rw_paths[$i]} does not exist"
  [[ -d "$p" ]] || die "TRELLIS_VM_RW: $p is not a directory"
  virtfs+=(-virtfs "local,path=$p,mount_tag=rw$i,security_model=none,multidevs=remap")
  rw_mounts+=("rw$i=$p")
done
printf "RW_MOUNTS='%s'\n" "${rw_mounts[*]}" >"$ctl/vm.conf"

# The uncompressed ELF kernel boots through PVH, skipping SeaBIOS and an xz
# decompression that costs several seconds under TCG; vmlinuz is the fallback.
kernel=$cache/vmlinux
[[ -f "$kernel" ]] || kernel=$cache/vmlinuz

start=$(date +%s.%N)
set +e
# Speed under TCG: la57=off spares every emulated TLB refill a fifth page-table level
# (~20% on exec-heavy work); rcu_expedited shortens the RCU grace periods that netns
# creation/removal and module loading wait for; tsc=reliable keeps the kernel on the TSC
# instead of falling back to an emulated HPET/PM timer when emulation jitter makes the TSC
# look unstable; cryptomgr.notests skips crypto self-tests at module load.
# stdin from /dev/null: QEMU must not put the caller's terminal into raw mode or read
# from it. The serial console uses CRLF and SeaBIOS paints the screen with escape
# sequences; strip both, and the firmware banner, so logs stay greppable.
cmdline="console=ttyS0 quiet panic=-1 mitigations=off cryptomgr.notests rcupdate.rcu_expedited=1"
cmdline+=" tsc=reliable no_timer_check ${TRELLIS_VM_APPEND:-}"
timeout -k 10 "$timeout_s" qemu-system-x86_64 \
  -accel tcg,thread=multi -cpu max,la57=off -m "$mem" -smp "$smp" \
  -nographic -no-reboot -nic none \
  -kernel "$kernel" -initrd "$cache/initrd.img" \
  -append "$cmdline" \
  "${virtfs[@]}" </dev/null 2>"$ctl/qemu.stderr" > >(
  sed -u -e 's/\r$//' -e 's/\x1bc//g; s/\x1b\[[0-9;?]*[A-Za-z]//g' \
    -e '/^SeaBIOS (version/d; s/^Booting from ROM\.\.//; /^\[ *[0-9.]*\] reboot: Power down$/d' |
    tee "$ctl/console.log"
) &
qemu_pid=$!
# If the caller gives up on us (Ctrl-C, a test harness's kill), take the VM down too
# rather than leave it running until its own timeout.
interrupted=
trap 'interrupted=1; kill -TERM "$qemu_pid" 2>/dev/null' INT TERM
while :; do
  wait "$qemu_pid"
  qemu_rc=$?
  # wait returns early (>128) when a trapped signal arrives; loop until reaped.
  kill -0 "$qemu_pid" 2>/dev/null || break
done
wait # for the console filter to flush
set -e
elapsed=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')

if [[ -n "$interrupted" ]]; then
  printf 'vm-run: interrupted; VM stopped after %ss\n' "$elapsed" >&2
  exit 130
fi
if [[ -f "$ctl/status" ]]; then
  rc=$(cat "$ctl/status")
  boot=$(cat "$ctl/boot-seconds" 2>/dev/null || echo '?')
  printf 'vm-run: exit status %s (guest booted in %ss, total %ss)\n' "$rc" "$boot" "$elapsed" >&2
  ((qemu_rc == 0)) || printf 'vm-run: warning: QEMU ended with status %s after the command finished\n' "$qemu_rc" >&2
  exit "$rc"
fi
if ((qemu_rc == 124 || qemu_rc == 137)); then
  printf 'vm-run: error: timed out after %ss (TRELLIS_VM_TIMEOUT=%s) before %s finished\n' "$elapsed" "$timeout_s" "$1" >&2
  exit 124
fi
printf 'vm-run: error: the guest powered off without reporting an exit status (QEMU status %s, %ss);\n' "$qemu_rc" "$elapsed" >&2
printf 'vm-run: boot or init failed; console output above. QEMU stderr:\n' >&2
sed 's/^/  /' "$ctl/qemu.stderr" >&2
exit 125
