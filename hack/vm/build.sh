#!/usr/bin/env bash
# Build (or reuse) the kernel + initramfs that hack/vm/run.sh boots under QEMU.
#
# Usage: hack/vm/build.sh [CACHE_DIR]
#   CACHE_DIR defaults to $TRELLIS_VM_CACHE, else /var/cache/trellis-vm.
#   TRELLIS_VM_KERNEL_PKG=linux-image-6.1.0-NN-amd64 pins a kernel package; otherwise the
#   package chosen on the first build is kept, so a later `apt-get update` does not trigger
#   a rebuild behind the caller's back.
#
# Why a VM at all: the host kernel lacks ipip/wireguard, and KVM is unavailable, so the
# IPIP backend is exercised in a TCG-emulated Debian 6.1 kernel (see hack/vm/README.md).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${1:-${TRELLIS_VM_CACHE:-/var/cache/trellis-vm}}

log() { printf 'vm-build: %s\n' "$*" >&2; }
die() { printf 'vm-build: error: %s\n' "$*" >&2; exit 1; }

# Modules every guest gets preloaded, in this order (dependencies are resolved by
# `modprobe --show-depends`). crc32c comes first: nf_conntrack/nf_nat pull in libcrc32c,
# which asks the crypto API for "crc32c"; without a provider already loaded, nft NAT
# and iptables NAT fail to load in the initramfs.
required_modules=(
  crc32c_generic
  virtio_pci 9pnet_virtio 9p overlay
  tun veth dummy bridge br_netfilter vxlan ipip
  nfnetlink nf_conntrack nf_nat nf_tables
  nft_nat nft_masq nft_chain_nat nft_ct nft_compat nft_reject_inet nft_fib_inet
  x_tables ip_tables iptable_nat iptable_filter iptable_mangle
  ip6_tables ip6table_nat ip6table_filter
  xt_MASQUERADE xt_mark xt_comment xt_conntrack xt_addrtype xt_tcpudp xt_nat xt_physdev
)
# Optional: absent in some builds, or unusable on some emulated CPUs (crc32c-intel needs
# SSE4.2; the init tolerates its load failure because crc32c_generic covers it).
# wireguard is deliberately not preloaded: its crypto self-tests cost 2-5 s of boot under
# TCG, and the kernel autoloads it from the full module tree on first use.
optional_modules=(crc32c-intel)

install_missing_tools() {
  local -a pkgs=()
  command -v qemu-system-x86_64 >/dev/null || pkgs+=(qemu-system-x86)
  # The dynamically linked `busybox` package would not run inside the initramfs.
  [[ "$(dpkg-query -W -f='${Status}' busybox-static 2>/dev/null)" == "install ok installed" ]] ||
    pkgs+=(busybox-static)
  command -v cpio >/dev/null || pkgs+=(cpio)
  command -v xz >/dev/null || pkgs+=(xz-utils)
  { command -v depmod && command -v modprobe; } >/dev/null || pkgs+=(kmod)
  if ((${#pkgs[@]})); then
    log "installing ${pkgs[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  fi
}

newest_kernel_pkg() {
  apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' |
    awk '{print $1}' | sort -V | tail -n 1
}

choose_kernel_pkg() {
  if [[ -n "${TRELLIS_VM_KERNEL_PKG:-}" ]]; then
    printf '%s\n' "$TRELLIS_VM_KERNEL_PKG"
    return
  fi
  if [[ -s "$cache/kernel-pkg" ]]; then
    cat "$cache/kernel-pkg"
    return
  fi
  local pkg
  pkg=$(newest_kernel_pkg)
  if [[ -z "$pkg" ]]; then
    # apt-cache only knows what the last `apt-get update` fetched.
    apt-get update -qq
    pkg=$(newest_kernel_pkg)
  fi
  [[ -n "$pkg" ]] || die "no linux-image-6.1.0-*-amd64 package known to apt (is a bookworm source configured?)"
  printf '%s\n' "$pkg"
}

# Everything that changes the produced image goes into the stamp, so edits to the guest
# init or the module list rebuild it while a plain re-run is a no-op.
compute_stamp() {
  {
    printf '%s\n' "$1" "$cache" "${required_modules[@]}" "${optional_modules[@]}"
    cat "$here/build.sh" "$here/guest-init.sh" "$here/guest-stage2.sh"
  } | sha256sum | cut -d' ' -f1
}

# Prints, one per line and dependencies first, the .ko files (paths relative to the
# module tree) needed to load MOD; prints nothing for built-in modules.
module_closure() {
  local root=$1 kver=$2 mod=$3 line
  local out
  out=$(modprobe --dirname "$root" --set-version "$kver" --show-depends "$mod" 2>/dev/null) || return 1
  while IFS= read -r line; do
    case $line in
      insmod\ *)
        line=${line#insmod }
        line=${line%% *}
        printf '%s\n' "${line#"$root/lib/modules/$kver/"}"
        ;;
    esac
  done <<<"$out"
}

# Drops the appended signature of a module file in place. Debian signs its modules and
# the kernel verifies any signature it finds (RSA + SHA-256 over the whole file), which
# under TCG is a large share of boot time; an unsigned module loads unverified (the kernel
# merely marks itself tainted) since signatures are not enforced without Secure Boot.
strip_signature() {
  local f=$1 size siglen
  [[ "$(tail -c 28 "$f")" == "~Module signature appended~" ]] || return 0
  size=$(stat -c %s "$f")
  # struct module_signature (12 bytes) precedes the magic; its last field is the
  # big-endian signature length.
  siglen=$(tail -c 32 "$f" | head -c 4 | od -An -tu1 |
    awk '{ print ((($1 * 256 + $2) * 256 + $3) * 256 + $4) }')
  truncate -s "$((size - 28 - 12 - siglen))" "$f"
}

build_initramfs() {
  local root=$1 kver=$2 out=$3
  local moddir=$root/lib/modules/$kver
  local stage
  stage=$(mktemp -d "$cache/initramfs.XXXXXX")
  # shellcheck disable=SC2064 # expand now: $stage is local
  trap "rm -rf '$stage'" RETURN

  mkdir -p "$stage"/{bin,sbin,etc,proc,sys,dev,lower,upper,newroot,lib/modules/"$kver"}
  cp /bin/busybox "$stage/bin/busybox"
  "$stage/bin/busybox" --list | while IFS= read -r applet; do
    [[ "$applet" == busybox ]] || ln -sf busybox "$stage/bin/$applet"
  done

  local -a files=() preload=() optional_loaded=()
  local -A seen=()
  local mod ko closure
  for mod in "${required_modules[@]}"; do
    closure=$(module_closure "$root" "$kver" "$mod") || die "module $mod not found in $kver"
    # An empty closure means the module is built into this kernel.
    # Underscored, as /sys/module names them (the init checks there).
    [[ -z "$closure" ]] || preload+=("${mod//-/_}")
    for ko in $closure; do
      [[ -n "${seen[$ko]:-}" ]] || { seen[$ko]=1; files+=("$ko"); }
    done
  done
  for mod in "${optional_modules[@]}"; do
    if ! closure=$(module_closure "$root" "$kver" "$mod"); then
      log "optional module $mod not in $kver, skipped"
      continue
    fi
    [[ -z "$closure" ]] || optional_loaded+=("$mod")
    for ko in $closure; do
      [[ -n "${seen[$ko]:-}" ]] || { seen[$ko]=1; files+=("$ko"); }
    done
  done

  # busybox modprobe cannot decompress, so modules are stored plain.
  local mstage=$stage/lib/modules/$kver
  for ko in "${files[@]}"; do
    local dest=$mstage/${ko%.xz}
    mkdir -p "$(dirname "$dest")"
    case $ko in
      *.xz) xz -dc "$moddir/$ko" >"$dest" ;;
      *.zst) die "zstd-compressed modules are not supported ($ko)" ;;
      *) cp "$moddir/$ko" "$dest" ;;
    esac
    strip_signature "$dest"
  done
  cp "$moddir"/modules.{order,builtin,builtin.modinfo} "$mstage/"
  # An index of just the copied subset: busybox modprobe resolves dependencies from it,
  # loading everything from one process instead of one insmod exec per module.
  depmod -b "$stage" "$kver"

  cp "$here/guest-init.sh" "$stage/init"
  cp "$here/guest-stage2.sh" "$stage/stage2"
  chmod 0755 "$stage/init" "$stage/stage2"
  # The full module tree is bind-mounted into the guest root (read over 9p) so that
  # modprobe and the kernel's module autoloading work for anything not preloaded.
  {
    printf 'KVER=%s\n' "$kver"
    printf 'FULL_MODDIR=%s\n' "$moddir"
    printf 'PRELOAD_MODULES="%s"\n' "${preload[*]}"
    printf 'OPTIONAL_MODULES="%s"\n' "${optional_loaded[*]}"
  } >"$stage/etc/trellis-vm.conf"

  # Uncompressed: under TCG, decompressing a gzip initramfs costs more boot time than
  # QEMU copying a larger file into guest memory.
  (cd "$stage" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) >"$out.tmp"
  mv "$out.tmp" "$out"
  log "initramfs: ${#files[@]} modules, $(du -h "$out" | cut -f1)"
}

# Unpacks the ELF kernel from an xz bzImage. QEMU boots it via its PVH entry point,
# which skips the in-guest xz decompression (several seconds under TCG).
extract_vmlinux() {
  local bz=$1 out=$2 offset
  offset=$(LC_ALL=C grep -abo $'\xfd7zXZ\x00' "$bz" | head -n 1 | cut -d: -f1)
  [[ -n "$offset" ]] || return 1
  # xz reports the bytes after the stream as corruption; the ELF is complete regardless
  # and is checked below.
  tail -c +"$((offset + 1))" "$bz" | xz -dc >"$out" 2>/dev/null || true
  [[ "$(head -c 4 "$out" | od -An -c | tr -d ' ')" == '177ELF' ]]
}

main() {
  [[ $EUID -eq 0 ]] || die "must run as root (installs packages, writes $cache)"
  mkdir -p "$cache"
  exec 9>"$cache/.lock"
  flock 9

  install_missing_tools
  local pkg stamp
  pkg=$(choose_kernel_pkg)
  stamp=$(compute_stamp "$pkg")
  if [[ -f "$cache/stamp" && "$(cat "$cache/stamp")" == "$stamp" && -f "$cache/vmlinuz" && -f "$cache/initrd.img" ]]; then
    log "up to date ($pkg) in $cache"
    return 0
  fi

  local root=$cache/kernel/$pkg
  if [[ ! -f "$root/.extracted" ]]; then
    local debdir=$cache/debs
    mkdir -p "$debdir"
    local deb
    deb=$(find "$debdir" -maxdepth 1 -name "${pkg}_*.deb" | head -n 1)
    if [[ -z "$deb" ]]; then
      log "downloading $pkg"
      # apt-get download writes into the current directory; _apt cannot write to a
      # root-owned cache, so the sandbox warning is expected and harmless.
      (cd "$debdir" && apt-get download -qq "$pkg") 2>&1 | { grep -v 'unsandboxed' || true; } >&2
      deb=$(find "$debdir" -maxdepth 1 -name "${pkg}_*.deb" | head -n 1)
      [[ -n "$deb" ]] || die "apt-get download $pkg produced no .deb"
    fi
    log "extracting $(basename "$deb")"
    rm -rf "$root"
    mkdir -p "$root"
    dpkg-deb -x "$deb" "$root"
    touch "$root/.extracted"
  fi

  local kver
  kver=$(find "$root/lib/modules" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | head -n 1)
  [[ -n "$kver" && -f "$root/boot/vmlinuz-$kver" ]] || die "unexpected layout in $root (no boot/vmlinuz-<kver>)"
  depmod -b "$root" "$kver"

  build_initramfs "$root" "$kver" "$cache/initrd.img"
  cp "$root/boot/vmlinuz-$kver" "$cache/vmlinuz.tmp"
  mv "$cache/vmlinuz.tmp" "$cache/vmlinuz"
  rm -f "$cache/vmlinux"
  if grep -qx 'CONFIG_PVH=y' "$root/boot/config-$kver" && extract_vmlinux "$cache/vmlinuz" "$cache/vmlinux.tmp"; then
    mv "$cache/vmlinux.tmp" "$cache/vmlinux"
  else
    rm -f "$cache/vmlinux.tmp"
    log "no PVH-bootable vmlinux; run.sh will boot the compressed vmlinuz (slower)"
  fi
  printf '%s\n' "$pkg" >"$cache/kernel-pkg"
  printf '%s\n' "$stamp" >"$cache/stamp"
  log "built $kver into $cache"
}

main "$@"
