#!/bin/bash
# Stage 2 of the trellis test VM: PID 1 after switch_root, running the host's bash on the
# overlay root. Runs the caller's command, records its exit status and output on the
# control share, then powers the VM off. Copied to /run/trellis-vm/stage2 by guest-init.sh.
ctl=/run/trellis-vm/ctl
bb=/run/trellis-vm/busybox

debug=
[[ " $(</proc/cmdline) " == *" trellis.debug "* ]] && debug=1
dbg() { [[ -z "$debug" ]] || echo "trellis-vm: $(cut -d' ' -f1 /proc/uptime) $*"; }

power_off() {
	dbg "power off"
	sync
	"$bb" poweroff -f
	# Fallbacks: sysrq, and finally PID 1 exiting panics the kernel, which with
	# panic=-1 and QEMU's -no-reboot ends the VM as well.
	echo o >/proc/sysrq-trigger
	sleep 10
	exit 1
}

if [[ ! -r "$ctl/argv" ]]; then
	echo "trellis-vm: FATAL: $ctl/argv missing" >&2
	power_off
fi

base_path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root PATH=$base_path TRELLIS_VM=1 TRELLIS_VM_CTL=$ctl
# shellcheck source=/dev/null
[[ -r "$ctl/env" ]] && . "$ctl/env"
# The host PATH may lack the sbin directories (ip, nft, modprobe live there).
PATH=$PATH:$base_path

mapfile -d '' -t argv <"$ctl/argv"
cd "${TRELLIS_VM_CWD:-/}" 2>/dev/null || cd /
read -r up _ </proc/uptime
printf '%s\n' "$up" >"$ctl/boot-seconds"

# A non-executable script file is run with bash rather than failing with EACCES.
if [[ "${argv[0]}" == */* && -f "${argv[0]}" && ! -x "${argv[0]}" ]]; then
	argv=(bash "${argv[@]}")
fi

# Output goes to the console (streamed by run.sh) and to output.log. tee runs beside the
# command rather than after a pipe so that a daemon the command leaves running (holding
# stdout open) cannot keep the VM alive: once the command exits we stop waiting.
"${argv[@]}" </dev/null > >(tee "$ctl/output.log") 2>&1
rc=$?
tee_pid=$!
dbg "command exited with $rc"
(sleep 2 && kill "$tee_pid" 2>/dev/null) &
wait "$tee_pid" 2>/dev/null
kill $! 2>/dev/null
dbg "output drained"
printf '%s\n' "$rc" >"$ctl/status"
power_off
