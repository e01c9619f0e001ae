#!/usr/bin/env bash
# Build the trellis OCI image without Docker or a registry, from Debian packages, and
# optionally import it into a containerd.
#
#   hack/build-image.sh                      # -> target/image/trellis-<tag>.oci.tar
#   hack/build-image.sh --import SOCKET      # ... and import it into the containerd at SOCKET
#   hack/build-image.sh --out FILE --no-cache
#
# Options:
#   --out FILE          where the OCI archive goes (default ${CARGO_TARGET_DIR:-target}/image/)
#   --name REF          the image's name (default: the one deploy/manifests/daemonset.yaml uses,
#                       trellis:<tag>); e.g. REGISTRY/trellis:TAG before `skopeo copy`
#   --import SOCKET     import it with `ctr -a SOCKET -n NAMESPACE images import`
#   --namespace NS      containerd namespace for --import (default k8s.io, the CRI plugin's)
#   --no-cache          rebuild the Debian root even when the cache holds it
# Environment:
#   TRELLIS_IMAGE_CACHE    cache dir for the Debian root (default /var/tmp/trellis-image-cache;
#                          "none" disables it)
#   TRELLIS_DEBIAN_MIRROR  a mirror URI for mmdebstrap (default: deb.debian.org, with the
#                          release's updates and security suites)
#
# What goes in is what deploy/Dockerfile's final stage holds, taken from the same sources:
#   - the release binaries of hack/build-release.sh (the plugin static), which the Dockerfile's
#     builder stage runs too, installed where the final stage's `COPY --from=builder` puts them;
#   - a Debian root of the Dockerfile's DEBIAN_RELEASE, `mmdebstrap --variant=minbase` (what
#     debian:<release>-slim is made of, with the same docs/man/locale exclusions), finished by
#     deploy/image-rootfs.sh in a chroot: the packages of deploy/image-packages.txt and the
#     iptables wrapper;
#   - the final stage's LABEL, ENTRYPOINT and CMD, read from the Dockerfile, and the
#     debian-slim base's PATH.
# Any other instruction in the Dockerfile's final stage makes this script fail: it would be
# something this image lacks. The image is named as deploy/manifests/daemonset.yaml names it
# (trellis:<tag>; docker.io/library/trellis:<tag> in containerd, where the CRI plugin looks).
#
# Two layers: the Debian root (cached under TRELLIS_IMAGE_CACHE, keyed by a hash of everything
# that goes into it and at most 7 days old, so Debian's security updates get in), then the
# binaries. A clean machine builds both. Needs root, mmdebstrap, umoci, jq, cargo.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEPLOY=$ROOT/deploy
DOCKERFILE=$DEPLOY/Dockerfile
DAEMONSET=$DEPLOY/manifests/daemonset.yaml
CACHE=${TRELLIS_IMAGE_CACHE:-/var/tmp/trellis-image-cache}
CACHE_DAYS=7
MIRROR=${TRELLIS_DEBIAN_MIRROR:-}
# debian:*-slim's PATH (the final stage inherits it).
IMAGE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

say() { printf 'build-image: %s\n' "$*" >&2; }
die() {
    say "$*"
    exit 1
}

out=
name=
socket=
namespace=k8s.io
use_cache=1
while [ "$#" -gt 0 ]; do
    case $1 in
        --out) out=${2:?--out needs a file}; shift 2 ;;
        --name) name=${2:?--name needs an image reference}; shift 2 ;;
        --import) socket=${2:?--import needs a containerd socket}; shift 2 ;;
        --namespace) namespace=${2:?--namespace needs a name}; shift 2 ;;
        --no-cache) use_cache=0; shift ;;
        -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[ "$CACHE" != none ] || use_cache=0

[ "$(id -u)" -eq 0 ] || die "needs root (mmdebstrap's root mode, chroot)"
for tool in mmdebstrap umoci jq cargo readelf sha256sum; do
    command -v "$tool" >/dev/null || die "$tool not found (hack/install-deps.sh installs what is missing)"
done
[ -z "$socket" ] || command -v ctr >/dev/null || die "ctr not found (apt-get install containerd)"

start=$(date +%s)
work=$(mktemp -d "${TMPDIR:-/var/tmp}/trellis-image.XXXXXX")
cleanup() {
    # Nothing is ever mounted under $work in this mount namespace (mmdebstrap runs in its own);
    # --one-file-system is the guard should that change.
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT

# --- what the Dockerfile's final stage holds ------------------------------------------------
# Continuation lines joined, comments dropped; the final stage is everything after the last FROM.
sed -e ':a' -e '/\\$/N; s/\\\n//; ta' "$DOCKERFILE" | sed -e '/^[[:space:]]*#/d' -e '/^[[:space:]]*$/d' \
    >"$work/Dockerfile.joined"
suite=$(sed -n 's/^ARG DEBIAN_RELEASE=//p' "$work/Dockerfile.joined")
[ -n "$suite" ] || die "no 'ARG DEBIAN_RELEASE=' in $DOCKERFILE"
awk '/^FROM /{n=NR} {line[NR]=$0} END{for (i=n; i<=NR; i++) print line[i]}' "$work/Dockerfile.joined" \
    >"$work/final-stage"
# shellcheck disable=SC2016 # the Dockerfile's own ${...}, matched literally
grep -qx 'FROM debian:${DEBIAN_RELEASE}-slim' "$work/final-stage" ||
    die "$DOCKERFILE's final stage no longer starts from debian:\${DEBIAN_RELEASE}-slim: update this script"
entrypoint=
cmd=
labels=()
copy_dest=
copy_names=()
while read -r instr rest; do
    case $instr in
        FROM) ;;
        LABEL)
            mapfile -t labels < <(grep -oE '[A-Za-z0-9._-]+="[^"]*"' <<<"$rest" | sed 's/"//g')
            ;;
        ENTRYPOINT) entrypoint=$rest ;;
        CMD) cmd=$rest ;;
        RUN)
            [[ $rest == *'sh /tmp/trellis-deploy/image-rootfs.sh /tmp/trellis-deploy' ]] ||
                die "$DOCKERFILE's final stage runs something other than deploy/image-rootfs.sh: put it in that script (which this build runs too): RUN $rest"
            ;;
        COPY)
            read -ra words <<<"$rest"
            if [ "${words[0]}" != --from=builder ] || [ "${#words[@]}" -lt 3 ]; then
                die "$DOCKERFILE's final stage copies something this script does not: COPY $rest"
            fi
            copy_dest=${words[-1]}
            for w in "${words[@]:1:${#words[@]}-2}"; do
                [[ $w == /out/* ]] || die "COPY from the builder of $w: hack/build-release.sh only leaves /out/*"
                copy_names+=("${w#/out/}")
            done
            ;;
        *) die "$DOCKERFILE's final stage has '$instr', which this script does not reproduce: teach it" ;;
    esac
done <"$work/final-stage"
if [ -z "$entrypoint" ] || [ -z "$cmd" ] || [ "${#copy_names[@]}" -eq 0 ]; then
    die "$DOCKERFILE's final stage lacks ENTRYPOINT, CMD or the COPY of the binaries"
fi
[[ $copy_dest == /*/ ]] || die "the binaries' COPY destination must be a directory ending in /: $copy_dest"
jq -e 'type == "array" and length > 0' >/dev/null <<<"$entrypoint" || die "ENTRYPOINT must be JSON: $entrypoint"
jq -e 'type == "array"' >/dev/null <<<"$cmd" || die "CMD must be JSON: $cmd"

# --- the name the manifests use ---------------------------------------------------------------
if [ -z "$name" ]; then
    mapfile -t names < <(sed -n 's/^[[:space:]]*image:[[:space:]]*//p' "$DAEMONSET" | tr -d '"'"'" | sort -u)
    [ "${#names[@]}" -eq 1 ] || die "$DAEMONSET names ${#names[@]} images (${names[*]}), expected one"
    name=${names[0]}
fi
tag=${name##*:}
if [ "$tag" = "$name" ] || [[ $tag == */* ]]; then
    die "the image in $DAEMONSET has no tag: $name"
fi
# The reference as containerd's CRI plugin resolves it: a first component with a dot, a colon
# or "localhost" is a registry; otherwise Docker Hub, "library/" for a single component.
if [[ $name != */* ]]; then
    full_name=docker.io/library/$name
else
    case ${name%%/*} in
        *.* | *:* | localhost) full_name=$name ;;
        *) full_name=docker.io/$name ;;
    esac
fi
base_name=${name%:*}
out=${out:-${CARGO_TARGET_DIR:-$ROOT/target}/image/${base_name##*/}-$tag.oci.tar}

# --- the binaries ---------------------------------------------------------------------------
say "release binaries (hack/build-release.sh)"
"$ROOT/hack/build-release.sh" "$work/out"
mkdir -p "$work/bin-layer$copy_dest"
for n in "${copy_names[@]}"; do
    [ -x "$work/out/$n" ] || die "hack/build-release.sh left no $n, which the Dockerfile copies"
    install -m 0755 "$work/out/$n" "$work/bin-layer$copy_dest$n"
done

# --- the Debian root --------------------------------------------------------------------------
mapfile -t packages < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' -e '/^$/d' "$DEPLOY/image-packages.txt")
[ "${#packages[@]}" -gt 0 ] || die "no package in $DEPLOY/image-packages.txt"
# Everything the root is made from: this script (its mmdebstrap options), the list, the
# script run in the root, the wrapper, the release and the mirror.
key=$({
    sha256sum "$0" "$DEPLOY/image-packages.txt" "$DEPLOY/image-rootfs.sh" "$DEPLOY/iptables-wrapper.sh" | cut -d' ' -f1
    printf '%s\n' "$suite" "$MIRROR"
} | sha256sum | cut -c1-16)
base=$work/base.tar
cached=$CACHE/base-$suite-$key.tar
if [ "$use_cache" = 1 ] && [ -n "$(find "$cached" -maxdepth 0 -mtime "-$CACHE_DAYS" 2>/dev/null)" ]; then
    say "Debian root: cached ($cached)"
    base=$cached
else
    say "Debian root: mmdebstrap --variant=minbase $suite + ${packages[*]}"
    mkdir -p "$work/deploy" "$work/tmp"
    cp "$DEPLOY/image-packages.txt" "$DEPLOY/image-rootfs.sh" "$DEPLOY/iptables-wrapper.sh" "$work/deploy/"
    mirror_args=()
    [ -z "$MIRROR" ] || mirror_args=("$MIRROR")
    # A private mount namespace: whatever mmdebstrap mounts in its chroot is gone when it ends,
    # however it ends. merged-/usr by symlinks as debian-slim has it (the usrmerge package would
    # pull in perl, 40 MB); debian-slim's dpkg exclusions (docs but copyright files, man, info,
    # locales); no device nodes (the runtime provides /dev); apt's lists and caches are removed
    # by mmdebstrap's cleanup.
    # shellcheck disable=SC2016 # $1 is expanded by the hook's shell: mmdebstrap's chroot dir
    TRELLIS_IMAGE_DEPLOY=$work/deploy TMPDIR=$work/tmp unshare --mount --propagation private \
        mmdebstrap --quiet --mode=root --variant=minbase --include="$(IFS=,; echo "${packages[*]}")" \
        --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
        --aptopt='Acquire::Languages "none"' \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/groff/*' --dpkgopt='path-exclude=/usr/share/lintian/*' \
        --dpkgopt='path-exclude=/usr/share/linda/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
        --customize-hook='mkdir -p "$1/tmp/trellis-deploy" && cp "$TRELLIS_IMAGE_DEPLOY"/* "$1/tmp/trellis-deploy/"' \
        --customize-hook='chroot "$1" sh /tmp/trellis-deploy/image-rootfs.sh /tmp/trellis-deploy' \
        --customize-hook='rm -rf "$1/tmp/trellis-deploy"' \
        --skip=output/dev \
        "$suite" "$work/base.tar" "${mirror_args[@]}" >"$work/mmdebstrap.log" 2>&1 ||
        die "mmdebstrap failed: $(tail -n 40 "$work/mmdebstrap.log")"
    # The last lines are deploy/image-rootfs.sh's checks of the tools.
    tail -n 3 "$work/mmdebstrap.log" | sed 's/^/build-image:   /' >&2
    if [ "$use_cache" = 1 ]; then
        mkdir -p "$CACHE"
        # One root per release: older keys are dead weight.
        find "$CACHE" -maxdepth 1 -name "base-$suite-*.tar" -delete
        # Copied under a name of its own, then renamed: a concurrent build never reads half a root.
        mv "$work/base.tar" "$cached.$$.part"
        mv "$cached.$$.part" "$cached"
        base=$cached
    fi
fi

# The agent is linked dynamically against the build machine's glibc: the root's must be as new.
need=$(readelf -VW "$work/out/trellis-agent" | grep -oE 'GLIBC_[0-9]+(\.[0-9]+)+' | sed 's/GLIBC_//' | sort -uV | tail -n 1)
have=$(tar -xOf "$base" ./var/lib/dpkg/status |
    awk '/^Package: /{p=$2} /^Version: / && p == "libc6" {v=$2} END{sub(/-.*/, "", v); print v}')
[ -n "$have" ] || die "no libc6 in the Debian root"
[ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | tail -n 1)" = "$have" ] ||
    die "trellis-agent needs glibc $need, the $suite root has $have: build on $suite (or use deploy/Dockerfile)"

# --- the image ------------------------------------------------------------------------------
say "packing $full_name"
tar --create --file "$work/bin.tar" --directory "$work/bin-layer" --owner=0 --group=0 --numeric-owner \
    --sort=name "./${copy_dest#/}"
layout=$work/oci
umoci init --layout "$layout"
umoci new --image "$layout:$tag"
umoci raw add-layer --image "$layout:$tag" --history.created_by "mmdebstrap --variant=minbase $suite + deploy/image-rootfs.sh" "$base"
umoci raw add-layer --image "$layout:$tag" --history.created_by "hack/build-release.sh -> ${copy_names[*]} in $copy_dest" "$work/bin.tar"
config_args=(--os linux --architecture "$(dpkg --print-architecture)" --config.env "PATH=$IMAGE_PATH")
while read -r arg; do config_args+=(--config.entrypoint "$arg"); done < <(jq -r '.[]' <<<"$entrypoint")
while read -r arg; do config_args+=(--config.cmd "$arg"); done < <(jq -r '.[]' <<<"$cmd")
for l in "${labels[@]}"; do config_args+=(--config.label "$l"); done
umoci config --image "$layout:$tag" "${config_args[@]}" --history.created_by "deploy/Dockerfile's LABEL, ENTRYPOINT, CMD"
umoci gc --layout "$layout"
# containerd names an imported image by this annotation (ctr otherwise prefixes a date).
jq --arg name "$full_name" '.manifests[0].annotations["io.containerd.image.name"] = $name' \
    "$layout/index.json" >"$work/index.json"
mv "$work/index.json" "$layout/index.json"
mkdir -p "$(dirname "$out")"
tar --create --file "$out.part" --directory "$layout" --owner=0 --group=0 --numeric-owner oci-layout index.json blobs
mv "$out.part" "$out"

manifest=$layout/blobs/sha256/$(jq -r '.manifests[0].digest | sub("sha256:"; "")' "$layout/index.json")
compressed=$(jq '[.layers[].size] | add' "$manifest")
unpacked=$(($(stat -c %s "$base") + $(stat -c %s "$work/bin.tar")))
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
say "$out: $full_name, $(mib "$compressed") compressed ($(mib "$unpacked") unpacked), built in $(($(date +%s) - start)) s"

if [ -n "$socket" ]; then
    ctr -a "$socket" -n "$namespace" images import "$out"
    ctr -a "$socket" -n "$namespace" images ls -q | grep -x "$full_name" >/dev/null ||
        die "ctr imported $out but lists no $full_name"
    say "imported into $socket (namespace $namespace) as $full_name"
fi
