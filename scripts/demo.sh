#!/usr/bin/env bash
# Boots a demo guest to an interactive shell on this terminal:
#
#   scripts/demo.sh [VMM-ARGS...]     e.g. scripts/demo.sh --mem 2G --balloon stats
#
# Installs the Debian packages it needs if they are missing (scripts/install-deps.sh, as
# root), builds the vmm, the guest kernel and initramfs, then runs
#   vmm --kernel ... --initrd ... --mem 1G --cpus 2 --cmdline vmmtest.echo=1 [VMM-ARGS...]
# (--mem, --cpus and --cmdline given here replace or extend those)
# directly where KVM works, or inside a nested KVM host (L1, under QEMU's TCG) where it
# does not; VMM_TEST_MODE=direct|nested forces one, and in direct mode VMM_BIN names another
# vmm binary. Input may also come from a pipe. `poweroff -f` (or `exit`) in the guest ends
# the demo; when nested, Ctrl-A x ends L1 at any time.
#
# Nested, L1 itself now and then crashes or freezes (a fault of QEMU's emulated SVM,
# docs/testing.md). If that happens before the guest's shell is up, the demo says so in one
# line and boots a fresh L1, up to VMM_DEMO_L1_ATTEMPTS L1s in all (default 3); once the
# shell is up the session is the user's and nothing is retried. L1's kernel messages go to
# $VMM_CACHE_DIR/nested/demo/l1-kernel-N.log, not to the terminal, unless VMM_DEMO_VERBOSE=1.
# VMM_DEMO_TEST_L1_CRASH=1 (for testing the demo only) crashes the first L1 a few seconds
# into the guest's boot.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

# The guest's /init prints this just before it starts the shell.
READY_MARKER=VMMTEST-READY

# Prints the vmm's boot arguments after --kernel/--initrd, one a line: the caller's, with
# --mem 1G and --cpus 2 where the caller gives none, and vmmtest.echo=1 (keep the guest
# terminal's echo on; tests turn it off) added to the kernel command line.
boot_args() {
    local mem=1G cpus=2 cmdline=vmmtest.echo=1 rest=()
    while (($#)); do
        case $1 in
        --mem) mem=$2 && shift ;;
        --cpus) cpus=$2 && shift ;;
        --cmdline) cmdline+=" $2" && shift ;;
        *) rest+=("$1") ;;
        esac
        shift
    done
    printf '%s\n' --mem "$mem" --cpus "$cpus" --cmdline "$cmdline" "${rest[@]}"
}

main() {
    local args
    mapfile -t args < <(boot_args "$@")
    bash "$REPO/scripts/install-deps.sh"
    need_cmds cargo
    "$REPO/scripts/guest-kernel.sh"
    "$REPO/scripts/guest-initramfs.sh"
    local mode
    mode=$(choose_mode)

    if [[ $mode == direct ]]; then
        [[ -n ${VMM_BIN:-} ]] || (cd "$REPO" && cargo build --bin vmm)
        echo "==== demo guest (direct KVM): poweroff -f or exit ends it" >&2
        exec "${VMM_BIN:-$REPO/target/debug/vmm}" --kernel "$CACHE_DIR/vmlinuz" \
            --initrd "$CACHE_DIR/initramfs.cpio.gz" "${args[@]}"
    fi

    run_nested "${args[@]}"
}

# Writes the payload's job: the banner, then the vmm with ARGS. With CRASH=1, L1's kernel
# is made to crash a few seconds in, as if QEMU's emulated SVM had failed (testing only).
write_demo_job() {
    local job=$1 crash=$2
    shift 2
    {
        echo "#!/bin/sh"
        echo "echo \"==== demo guest (nested, booting takes about half a minute): poweroff -f or exit ends it; Ctrl-A x ends L1\""
        if ((crash)); then
            echo "echo \"==== VMM_DEMO_TEST_L1_CRASH: this L1 will crash in 5 s\""
            echo "(sleep 5; echo c >/proc/sysrq-trigger) &"
        fi
        echo "exec /payload/vmm --kernel /payload/vmlinuz --initrd /payload/initramfs.cpio.gz \\"
        echo "    $(sh_quote "$@")"
    } >"$job"
    chmod 0755 "$job"
}

run_nested() {
    local args=("$@")
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

    local attempts=${VMM_DEMO_L1_ATTEMPTS:-3} attempt=1 status crash outcome what where
    [[ $attempts =~ ^[1-9][0-9]*$ ]] ||
        die "VMM_DEMO_L1_ATTEMPTS must be a positive integer, not '$attempts'"
    # A frozen L1 shows no sign of life but its missing heartbeat: do not make the user
    # wait the default ten minutes for it.
    export VMM_L1_STALL_TIMEOUT=${VMM_L1_STALL_TIMEOUT:-180}
    while :; do
        crash=0
        [[ $attempt == 1 && ${VMM_DEMO_TEST_L1_CRASH:-} == 1 ]] && crash=1
        write_demo_job "$payload/run" "$crash" "${args[@]}"
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
        if grep -aq "$READY_MARKER" "$logs/console-$attempt.log"; then
            log "$what during the session (a known fault of QEMU's emulated SVM$where); the guest is gone"
            return "$status"
        fi
        if ((attempt >= attempts)); then
            log "$what before the guest's shell came up, in all $attempts attempts$where; giving up"
            return "$status"
        fi
        attempt=$((attempt + 1))
        log "$what while the guest booted (a known fault of QEMU's emulated SVM$where);" \
            "starting a fresh one, attempt $attempt of $attempts"
    done
}

main "$@"
