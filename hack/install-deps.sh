#!/usr/bin/env bash
# Install everything the build, the tests and the demo need, on a fresh
# Debian machine. Idempotent and quiet when everything is already there.
set -euo pipefail

packages=(
  iproute2 iptables nftables iputils-ping kmod procps
  containerd runc containernetworking-plugins protobuf-compiler
  shellcheck iperf3 python3-venv gcc g++ libc6-dev time
  mmdebstrap debian-archive-keyring umoci jq binutils file
  busybox-static
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if command -v rustup >/dev/null; then
  for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
  done
fi
