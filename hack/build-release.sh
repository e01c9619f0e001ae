#!/usr/bin/env bash
# Build the release binaries the image ships, the one way both image builds do it:
# deploy/Dockerfile's builder stage and hack/build-image.sh both run this script.
#
#   hack/build-release.sh OUT_DIR      # leaves OUT_DIR/trellis and OUT_DIR/trellis-agent
#
# - `trellis`, the CNI plugin, runs on the HOST from /opt/cni/bin, next to whatever C library
#   the node has (glibc 2.28 on RHEL 8, 2.31 on Debian 11, musl...). It is linked statically
#   (static-pie, `-C target-feature=+crt-static`), as flannel's plugin is, so it needs nothing
#   from the host. The flag is given to the final link only (`cargo rustc`): crt-static only
#   matters when linking (libc's and std's `#[link(cfg(target_feature = "crt-static"))]` are
#   decided there), the binary is the same as with RUSTFLAGS, and the dependencies stay shared
#   with the agent's build instead of being compiled twice.
# - `trellis-agent` runs only inside the image, whose Debian release is the one it was built
#   on, so it stays dynamically linked: glibc's name resolution (getaddrinfo, NSS) is not
#   meant to be linked statically.
# Both are built for an explicit --target (the host's triple), so that no flag reaches build
# scripts or proc-macros and the output (target/<triple>/release) never touches the debug
# build the tests use. Fails unless the plugin really has no program interpreter and no
# shared library.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
die() {
    printf 'build-release: %s\n' "$*" >&2
    exit 1
}

[ "$#" -eq 1 ] || die "usage: hack/build-release.sh OUT_DIR"
out=$1
command -v readelf >/dev/null || die "readelf not found (apt-get install binutils)"

triple=$(rustc -vV | sed -n 's/^host: //p')
[ -n "$triple" ] || die "cannot tell the host triple from 'rustc -vV'"
target_dir=${CARGO_TARGET_DIR:-$ROOT/target}
release=$target_dir/$triple/release

cd "$ROOT"
# The plugin first: its dependencies are a subset of the agent's.
cargo rustc --release --locked --target "$triple" -p trellis-cni --bin trellis \
    -- -C target-feature=+crt-static
cargo build --release --locked --target "$triple" -p trellis-agent

# static-pie: an ELF with no PT_INTERP and no DT_NEEDED entry.
if readelf -lW "$release/trellis" | grep 'Requesting program interpreter' >/dev/null; then
    die "$release/trellis has a program interpreter: it is not statically linked"
fi
if readelf -dW "$release/trellis" | grep '(NEEDED)' >/dev/null; then
    die "$release/trellis needs shared libraries: $(readelf -dW "$release/trellis" | grep '(NEEDED)' | tr -s ' ')"
fi

mkdir -p "$out"
install -m 0755 "$release/trellis" "$out/trellis"
install -m 0755 "$release/trellis-agent" "$out/trellis-agent"
printf 'build-release: %s (static, %s bytes), %s (%s bytes)\n' \
    "$out/trellis" "$(stat -c %s "$out/trellis")" "$out/trellis-agent" "$(stat -c %s "$out/trellis-agent")" >&2
