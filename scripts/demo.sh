#!/usr/bin/env bash
# Boots a demo guest with a memory balloon to an interactive shell on this terminal:
#
#   scripts/demo.sh [VMM-ARGS...]     e.g. scripts/demo.sh --mem 2G --cpus 1
#
# Installs the Debian packages it needs if they are missing (scripts/install-deps.sh, as
# root), builds the vmm, the guest kernel and initramfs, then runs
#   vmm --kernel ... --initrd ... --mem 1G --cpus 2 --cmdline vmmtest.echo=1 \
#       --balloon stats,page-reporting --api-sock SOCKET [VMM-ARGS...]
# (--mem, --cpus, --balloon and --api-sock given here replace those, --cmdline extends it)
# directly where KVM works, or inside a nested KVM host (L1, under QEMU's TCG) where it
# does not; VMM_TEST_MODE=direct|nested forces one, and in direct mode VMM_BIN names another
# vmm binary. Input may also come from a pipe. `poweroff -f` (or `exit`) in the guest ends
# the demo with status 0; when nested, Ctrl-A x ends L1 at any time.
#
# Direct, SOCKET is $XDG_RUNTIME_DIR/vmm-demo-PID.sock (or under /tmp), and the demo prints
# the `vmm ctl` and `curl` commands that resize the balloon from another terminal.
# Nested, the socket is inside L1, where no other terminal reaches it, so a short scripted
# tour (scripts/nested/demo-tour) first shows the balloon at work: it resizes the balloon
# and shows the guest's MemTotal fall, has the guest fill and free memory and shows the
# vmm's resident memory fall as free page reporting gives it back, then hands the shell
# over. VMM_DEMO_TOUR=0 skips it; so does a --balloon of the caller's own.
#
# Nested, L1 itself now and then crashes or freezes (a fault of QEMU's emulated SVM,
# docs/testing.md). If that happens before the guest's shell is the user's (before the
# tour has handed it over), the demo says so in one line and boots a fresh L1, up to
# VMM_DEMO_L1_ATTEMPTS L1s in all (default 3); once the shell is the user's the session is
# theirs and nothing is retried. L1's kernel messages go to
# $VMM_CACHE_DIR/nested/demo/l1-kernel-N.log, not to the terminal, unless VMM_DEMO_VERBOSE=1.
# VMM_DEMO_TEST_L1_CRASH=1 (for testing the demo only) crashes the first L1 a few seconds
# into the guest's boot.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

# The guest's /init prints this just before it starts the shell.
READY_MARKER=VMMTEST-READY
# scripts/nested/demo-tour prints this when it hands the guest's shell over.
HANDOVER_MARKER="==== tour: the guest's shell is yours"
# The balloon the demo attaches unless the caller gives one.
DEMO_BALLOON=stats,page-reporting
# Where the API socket is inside L1.
NESTED_SOCKET=/tmp/vmm-demo.sock

# Parses the caller's vmm arguments into ARGS (those after --kernel/--initrd): --mem 1G and
# --cpus 2 where the caller gives none, vmmtest.echo=1 (keep the guest terminal's echo on;
# tests turn it off) added to the kernel command line. Sets USER_BALLOON=1 when the caller
# attaches a balloon, and API_SOCK to the caller's --api-sock (empty if none).
parse_args() {
    local mem=1G cpus=2 cmdline=vmmtest.echo=1 rest=()
    USER_BALLOON=0 API_SOCK=""
    while (($#)); do
        case $1 in
        --mem | --cpus | --cmdline | --api-sock)
            (($# >= 2)) || die "$1 needs a value"
            set -- "$1=$2" "${@:3}"
            continue
            ;;
        --mem=*) mem=${1#*=} ;;
        --cpus=*) cpus=${1#*=} ;;
        --cmdline=*) cmdline+=" ${1#*=}" ;;
        --api-sock=*) API_SOCK=${1#*=} ;;
        --balloon | --balloon=*) USER_BALLOON=1 && rest+=("$1") ;;
        *) rest+=("$1") ;;
        esac
        shift
    done
    ARGS=(--mem "$mem" --cpus "$cpus" --cmdline "$cmdline" "${rest[@]}")
}

main() {
    parse_args "$@"
    bash "$REPO/scripts/install-deps.sh"
    need_cmds cargo
    "$REPO/scripts/guest-kernel.sh"
    "$REPO/scripts/guest-initramfs.sh"
    local mode
    mode=$(choose_mode)
    ((USER_BALLOON)) || ARGS+=(--balloon "$DEMO_BALLOON")

    if [[ $mode == direct ]]; then
        [[ -n ${VMM_BIN:-} ]] || (cd "$REPO" && cargo build --bin vmm)
        local vmm=${VMM_BIN:-$REPO/target/debug/vmm}
        if [[ -z $API_SOCK ]]; then
            API_SOCK=${XDG_RUNTIME_DIR:-/tmp}/vmm-demo-$$.sock
        fi
        ARGS+=(--api-sock "$API_SOCK")
        print_direct_banner "$vmm" >&2
        exec "$vmm" --kernel "$CACHE_DIR/vmlinuz" --initrd "$CACHE_DIR/initramfs.cpio.gz" \
            "${ARGS[@]}"
    fi

    local tour=1
    case ${VMM_DEMO_TOUR:-1} in
    0) tour=0 ;;
    1) ;;
    *) die "VMM_DEMO_TOUR must be 0 or 1, not '$VMM_DEMO_TOUR'" ;;
    esac
    if ((tour && USER_BALLOON)); then
        log "no tour: it needs the demo's own balloon ($DEMO_BALLOON), and you gave --balloon"
        tour=0
    fi
    ARGS+=(--api-sock "${API_SOCK:-$NESTED_SOCKET}")
    run_nested "$tour" "${ARGS[@]}"
}

# What to try from another terminal while the demo guest runs (the vmm is exec'd next, so
# the socket's name holds its PID).
print_direct_banner() {
    local vmm=$1 sock amount='{"amount_mib": 256}'
    sock=$(printf '%q' "$API_SOCK")
    echo "==== demo guest (direct KVM): poweroff -f or exit ends it"
    echo "==== its API socket is $API_SOCK; from another terminal, resize the balloon"
    echo "==== and watch the guest's MemTotal (grep MemTotal /proc/meminfo) fall and rise:"
    echo "    $(printf '%q' "$vmm") ctl --api-sock $sock balloon set 256M"
    echo "    $(printf '%q' "$vmm") ctl --api-sock $sock balloon stats --watch 2"
    echo "    $(printf '%q' "$vmm") ctl --api-sock $sock balloon set 0"
    echo "    curl --unix-socket $sock -X PATCH http://localhost/balloon -d '$amount'"
    echo "    curl --unix-socket $sock http://localhost/balloon/statistics"
}

# Writes the payload's job: the banner, then scripts/nested/demo-tour, which runs the vmm
# with ARGS and gives it the terminal after the tour (TOUR=1) or at once (in L1 the
# terminal cannot simply be the vmm's stdin; demo-tour says why). With CRASH=1, L1's
# kernel is made to crash a few seconds in, as if QEMU's emulated SVM had failed (testing
# only).
write_demo_job() {
    local job=$1 crash=$2 tour=$3
    shift 3
    {
        echo "#!/bin/sh"
        echo "echo \"==== demo guest (nested, booting takes about half a minute): poweroff -f or exit ends it; Ctrl-A x ends L1\""
        if ((crash)); then
            echo "echo \"==== VMM_DEMO_TEST_L1_CRASH: this L1 will crash in 5 s\""
            echo "(sleep 5; echo c >/proc/sysrq-trigger) &"
        fi
        if ((tour)); then
            echo "exec /payload/demo-tour /payload/vmm --kernel /payload/vmlinuz \\"
        else
            echo "exec /payload/demo-tour --no-tour /payload/vmm --kernel /payload/vmlinuz \\"
        fi
        echo "    --initrd /payload/initramfs.cpio.gz $(sh_quote "$@")"
    } >"$job"
    chmod 0755 "$job"
}

run_nested() {
    local tour=$1
    shift
    local args=("$@") session_marker=$READY_MARKER
    ((tour)) && session_marker=$HANDOVER_MARKER
    (cd "$REPO" && RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
        cargo build --bin vmm --target "$STATIC_TARGET")
    local vmm=$REPO/target/$STATIC_TARGET/debug/vmm
    file_is_static "$vmm" || die "$vmm is not statically linked"
    # Under QEMU's TCG an L2 guest's XSETBV escapes L1's KVM (docs/testing.md): the
    # nested guest does without XSAVE.
    local i
    for i in "${!args[@]}"; do
        [[ ${args[$i]} == --cmdline ]] && args[i + 1]+=" clearcpuid=xsave"
    done
    local payload=$CACHE_DIR/nested/payload-demo logs=$CACHE_DIR/nested/demo
    rm -rf "$payload" "$logs"
    mkdir -p "$payload" "$logs"
    objcopy --strip-debug "$vmm" "$payload/vmm"
    cp "$CACHE_DIR/vmlinuz" "$CACHE_DIR/initramfs.cpio.gz" "$payload/"
    install -m 0755 "$REPO/scripts/nested/demo-tour" "$payload/"

    local attempts=${VMM_DEMO_L1_ATTEMPTS:-3} attempt=1 status crash outcome what where when
    [[ $attempts =~ ^[1-9][0-9]*$ ]] ||
        die "VMM_DEMO_L1_ATTEMPTS must be a positive integer, not '$attempts'"
    # A frozen L1 shows no sign of life but its missing heartbeat: do not make the user
    # wait the default ten minutes for it.
    export VMM_L1_STALL_TIMEOUT=${VMM_L1_STALL_TIMEOUT:-180}
    while :; do
        crash=0
        [[ $attempt == 1 && ${VMM_DEMO_TEST_L1_CRASH:-} == 1 ]] && crash=1
        write_demo_job "$payload/run" "$crash" "$tour" "${args[@]}"
        local l1_args=(--interactive --console-log "$logs/console-$attempt.log"
            --outcome-file "$logs/outcome-$attempt")
        where=""
        if [[ ${VMM_DEMO_VERBOSE:-} != 1 ]]; then
            l1_args+=(--kernel-log "$logs/l1-kernel-$attempt.log")
            where="; its kernel log: ${logs#"$REPO"/}/l1-kernel-$attempt.log"
        fi
        status=0
        "$REPO/scripts/nested/run-l1.sh" "${l1_args[@]}" "$payload" || status=$?
        outcome=$(cut -f1 "$logs/outcome-$attempt" 2>/dev/null || echo ended)
        case $outcome in
        panic) what="the nested KVM host (L1) crashed" ;;
        frozen) what="the nested KVM host (L1) stopped responding" ;;
        status) return "$status" ;; # the guest's session ended, as the user chose
        *)                           # Ctrl-A x, a signal
            log "$(cut -f2 "$logs/outcome-$attempt" 2>/dev/null)"
            return "$status"
            ;;
        esac
        if grep -aq "$session_marker" "$logs/console-$attempt.log"; then
            log "$what during the session (a known fault of QEMU's emulated SVM$where); the guest is gone"
            return "$status"
        fi
        when="while the guest booted"
        grep -aq "$READY_MARKER" "$logs/console-$attempt.log" && when="during the tour"
        if ((attempt >= attempts)); then
            log "$what before the guest's shell came up, in all $attempts attempts$where; giving up"
            return "$status"
        fi
        attempt=$((attempt + 1))
        log "$what $when (a known fault of QEMU's emulated SVM$where);" \
            "starting a fresh one, attempt $attempt of $attempts"
    done
}

main "$@"
