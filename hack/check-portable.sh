#!/usr/bin/env bash
# Check that the scripts kind users run on their own machines work with macOS's bash 3.2 and
# BSD tools: no bash-4-only builtins or syntax, no GNU-only commands or flags.
#
#   hack/check-portable.sh               # the kind scripts (hack/kind-up.sh, hack/kind-down.sh)
#   hack/check-portable.sh FILE...       # other scripts
#   hack/check-portable.sh --self-test   # every rule catches its example, portable lines pass
#
# No bash 3.2 or BSD userland is packaged for Debian, and checkbashisms only knows POSIX sh
# versus bash (it skips bash scripts), so this is a list of known traps, each with the
# portable way out. A line that is fine despite matching (a word in a message) can end with
# `# portable: ok`. Full-line comments are ignored. Exit status 1 on any finding.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEFAULT_FILES="hack/kind-up.sh hack/kind-down.sh"

# One rule per line: ERE <TAB> why and what to use instead <TAB> an offending example.
# The EREs run on single lines; `B` below is where a command word starts: the line's start,
# after ; & | ( ! ` { and after keywords or wrappers that run the next word.
B='(^|[;&|(!`{])[[:space:]]*((then|do|else|if|elif|while|until|exec|command|env|sudo|xargs|time|!)[[:space:]]+)*'
RULES=$(
    cat <<EOF
${B}(mapfile|readarray)([[:space:]]|$)	mapfile/readarray are bash 4: use a while IFS= read -r loop	mapfile -t lines < file
${B}(declare|local|typeset)[[:space:]]+-[a-zA-Z]*A	associative arrays are bash 4	declare -A seen
${B}(declare|local|typeset)[[:space:]]+-[a-zA-Z]*n	namerefs are bash 4.3	local -n ref=arr
${B}(declare|typeset)[[:space:]]+-[a-zA-Z]*g	declare -g is bash 4.2	declare -g X=1
\\\$\{[A-Za-z_][A-Za-z0-9_]*(\[[^]]*\])?(\^|,)	case conversion \${x,,} \${x^^} is bash 4: use tr	lower=\${name,,}
\\\$\{[A-Za-z_][A-Za-z0-9_]*(\[[^]]*\])?@[QEPAKaUuLk]\}	\${x@Q} transformations are bash 4.4: use printf %q	quoted=\${x@Q}
\[-[0-9]+\]\}	negative array subscripts are bash 4.3	last=\${arr[-1]}
\|&	|& is bash 4: use 2>&1 |	make |& tee log
&>>	&>> is bash 4: use >>file 2>&1	cmd &>> log
(;;&|(^|[^;]);&([[:space:]]|$))	case fall-through ;& and ;;& are bash 4	case \$x in a) echo a ;& b) echo b ;; esac
${B}coproc([[:space:]]|$)	coproc is bash 4	coproc cat
${B}shopt[[:space:]]+-s[[:space:]]+(globstar|lastpipe|direxpand|globasciiranges|autocd|checkjobs)	this shopt option is bash 4	shopt -s globstar
${B}wait[[:space:]]+-[a-zA-Z]*[nfp]	wait -n/-f/-p are bash 4.3+	wait -n
\{[A-Za-z_][A-Za-z0-9_]*\}[<>]	automatic file descriptors {fd}> are bash 4.1: use a fixed number	exec {fd}>lock
%\([^)]*\)T	printf %(...)T is bash 4.2: use date	printf '%(%s)T' -1
(EPOCHSECONDS|EPOCHREALTIME|BASHPID|SRANDOM|BASH_ARGV0)	this variable is bash 4/5: use date +%s or \$\$	start=\$EPOCHSECONDS
(\[\[|\[|${B}test)[[:space:]]+(![[:space:]]+)?-v[[:space:]]	-v VAR tests are bash 4.2: use \${VAR+x}	[[ -v HOME ]]
${B}realpath([[:space:]]|$)	realpath is missing before macOS 13 and -m/--relative-to are GNU: use cd and pwd	realpath --relative-to=a b
${B}readlink[[:space:]]+(-[a-zA-Z]*[fem]|--canonicalize)	readlink -f/-e/-m are GNU (macOS 12.3+ has only -f): use cd and pwd -P	readlink -f "\$0"
${B}sed[[:space:]]+([^|;]*[[:space:]])?-[a-zA-Z]*i([[:space:]]|$)	sed -i without an attached suffix differs between GNU and BSD: use sed -i.bak or a temp file	sed -i 's/a/b/' f
${B}sed[[:space:]]+([^|;]*[[:space:]])?(-[a-zA-Z]*r|--regexp-extended)	sed -r is GNU: use sed -E	sed -r 's/a+/b/'
${B}grep[[:space:]]+([^|;]*[[:space:]])?(-[a-zA-Z]*P|--perl-regexp)	grep -P is GNU: use grep -E	grep -oP '\\d+'
${B}date[[:space:]]+([^|;]*[[:space:]])?(-d|--date|-I|--iso|--rfc)	date -d/-I are GNU: compute with \$(( )) or date -u +FORMAT	date -d yesterday
${B}date[[:space:]]+[^|;]*%N	date +%N is GNU (BSD prints N): use whole seconds	date +%s.%N
${B}stat[[:space:]]+([^|;]*[[:space:]])?(-c|--format|--printf)	stat -c is GNU (BSD: stat -f)	stat -c %s f
${B}xargs[[:space:]]+([^|;]*[[:space:]])?(-[a-zA-Z]*r|--no-run-if-empty)	xargs -r is GNU	xargs -r rm
${B}find[[:space:]]+[^|;]*-printf	find -printf is GNU	find . -printf '%p'
${B}head[[:space:]]+([^|;]*[[:space:]])?-[nc][[:space:]]*-[0-9]	negative head counts are GNU	head -n -1 f
${B}mktemp[[:space:]]+[^|;]*(--tmpdir|--suffix|-p[[:space:]])	mktemp --tmpdir/-p are GNU: use mktemp -d or "\${TMPDIR:-/tmp}/name.XXXXXX"	mktemp --tmpdir x.XXXX
${B}base64[[:space:]]+[^|;]*(-w|--wrap)	base64 -w is GNU	base64 -w0 f
${B}(cp|mv|rm|ln|mkdir|ls|sort|cut|tr|wc|tail|touch|chmod|chown|install|du|df)[[:space:]]+([^|;]*[[:space:]])?--[a-z]	long options of coreutils are GNU: use the short POSIX ones	rm --recursive d
${B}(timeout|tac|nproc|sha256sum|sha1sum|md5sum|numfmt|sponge|getopt)([[:space:]]|$)	not on macOS out of the box	timeout 5 cmd
EOF
)

# Lines of $1 that are code, as "FILE:N:line" (full-line comments and opt-outs dropped).
code_lines() {
    awk -v f="$1" '
        /^[[:space:]]*#/ { next }
        /# portable: ok[[:space:]]*$/ { next }
        { print f ":" NR ":" $0 }
    ' "$1"
}

# check FILE: prints every finding; returns 1 if there was one.
check() {
    local file=$1 lines found=0 re why hits
    bash -n "$file" || return 1
    lines=$(code_lines "$file")
    while IFS='	' read -r re why _; do
        [ -n "$re" ] || continue
        # Match the code part only (after FILE:N:).
        # The regex goes through the environment: awk -v would eat its backslashes.
        hits=$(printf '%s\n' "$lines" | RE=$re awk '{ l = $0; sub(/^[^:]*:[^:]*:/, "", l); if (l ~ ENVIRON["RE"]) print }')
        if [ -n "$hits" ]; then
            found=1
            printf '%s\n' "$hits" | while IFS= read -r hit; do
                printf '%s\n    not portable: %s\n' "$hit" "$why"
            done
        fi
    done <<EOF
$RULES
EOF
    return "$found"
}

# Lines that must pass: the portable forms the rules point to, and the kind scripts' idioms.
PORTABLE_LINES=$(
    cat <<'EOF'
while IFS= read -r line; do lines+=("$line"); done <<EOT
sed -i.bak 's/a/b/' f
sed -E 's/a+/b/' f
grep -qx "$CLUSTER"
grep -E '^trellis:kind-' f
date +%Y%m%d%H%M%S
kubectl wait --for=condition=Ready nodes --all --timeout="${TIMEOUT}s"
cp -R "$ROOT/deploy" "$overlay/base"
echo "${#workers[@]} ${workers[$i]} ${IMAGE%:*} ${IMAGE##*:} ${x:-default} ${ips[i]}"
mask=$(((0xffffffff << (32 - len)) & 0xffffffff))
case $image in trellis:kind-*) images+=("$image") ;; esac
k -n "$TEST_NS" exec ping-0 -- ping -c 3 -W 2 "${ips[1]}"
overlay=$(mktemp -d)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cmd >log 2>&1
kind delete cluster --name "$CLUSTER"
EOF
)

self_test() {
    local dir failed=0 re why example rc
    dir=$(mktemp -d)
    # shellcheck disable=SC2064 # expand now: the trap runs after this function returned
    trap "rm -rf '$dir'" EXIT
    while IFS='	' read -r re why example; do
        [ -n "$re" ] || continue
        printf '%s\n' "$example" >"$dir/bad.sh"
        rc=0
        check "$dir/bad.sh" >"$dir/out" 2>&1 || rc=$?
        if [ "$rc" = 0 ] || ! grep -qF -- "$why" "$dir/out"; then
            printf 'self-test: rule not triggered by its example: %s\n  rule: %s\n' "$example" "$re"
            failed=1
        fi
    done <<EOF
$RULES
EOF
    printf '%s\n' "$PORTABLE_LINES" >"$dir/good.sh"
    if ! check "$dir/good.sh" >"$dir/out" 2>&1; then
        printf 'self-test: portable lines flagged:\n'
        cat "$dir/out"
        failed=1
    fi
    printf '%s\n' 'echo "a timeout happened"  # portable: ok' '# mapfile in a comment' >"$dir/optout.sh"
    if ! check "$dir/optout.sh" >"$dir/out" 2>&1; then
        printf 'self-test: opt-out or comment flagged:\n'
        cat "$dir/out"
        failed=1
    fi
    [ "$failed" = 0 ] && echo "check-portable: self-test passed ($(printf '%s\n' "$RULES" | grep -c .) rules)"
    return "$failed"
}

if [ "${1:-}" = --self-test ]; then
    self_test
    exit
fi

status=0
if [ "$#" = 0 ]; then
    # shellcheck disable=SC2086 # a fixed list of repository paths without spaces
    set -- $DEFAULT_FILES
fi
for f in "$@"; do
    case $f in /*) path=$f ;; *) path=$ROOT/$f ;; esac
    if check "$path"; then
        echo "check-portable: $f ok"
    else
        status=1
    fi
done
exit "$status"
