#!/usr/bin/env bash
# Boots L1 (the Debian guest kernel under QEMU's TCG, with an emulated AMD CPU that has SVM
# and nested paging, so kvm-amd gives it a /dev/kvm) and runs a job inside it:
#
#   run-l1.sh [--interactive] [--kernel-log FILE] [--console-log FILE]
#             [--outcome-file FILE] PAYLOAD_DIR
#
# PAYLOAD_DIR is packed as /payload into L1's initramfs; its executable `run` is the job.
# The job's stdio is L1's first serial port, which streams to stdout. The job's exit status
# comes back through the `L1-EXIT-STATUS=<n>` line L1 prints and becomes this script's; if
# L1 ends without one (a panic, a freeze, a timeout, Ctrl-A x) the script exits 125.
#
# --interactive      the terminal is connected to the job (and, through it, to a guest);
#                    Ctrl-A x ends QEMU. Without it QEMU reads no input and the hard time
#                    limit applies.
# --kernel-log FILE  L1's kernel messages go to FILE (a third serial port) instead of being
#                    mixed into stdout.
# --console-log FILE keep a copy of stdout in FILE.
# --outcome-file FILE  write how L1 ended to FILE instead of logging it, as one line
#                    `WORD<TAB>sentence`, WORD one of: status (the job reported its exit
#                    status), panic (L1's kernel panicked), frozen (no heartbeat), timeout,
#                    ended (QEMU ended otherwise: Ctrl-A x, a signal).
#
# Environment: VMM_L1_MEM (default 8G), VMM_L1_CPUS (default 2), VMM_L1_TIMEOUT (seconds,
# default 3000), VMM_L1_STALL_TIMEOUT (seconds without a heartbeat from L1 before it is
# ended, default 600); neither limit applies with --interactive. VMM_L1_HUGEPAGES: 2 MiB
# hugetlb pages L1 reserves as it boots (default 0: none). VMM_CACHE_DIR. To try other L1
# settings (see scripts/nested/fault-control.sh): VMM_L1_CPU (QEMU's -cpu value),
# VMM_L1_CMDLINE (added to L1's kernel command line), VMM_L1_TCG (added to `-accel tcg`,
# e.g. `thread=single`).
set -euo pipefail
# shellcheck source=../lib.sh
source "$(dirname "$0")/../lib.sh"

# The features switched off are ones TCG cannot emulate; naming them spares a warning each.
DEFAULT_L1_CPU=EPYC,+svm,+npt,-rdseed,-sha-ni,-fxsr-opt,-misalignsse,-3dnowprefetch,-osvw,-topoext,-nrip-save,-xsavec

interactive=0 kernel_log="" console_log="" outcome_file=""
while [[ $# -gt 1 ]]; do
    case $1 in
    --interactive) interactive=1 ;;
    --kernel-log) kernel_log=$2 && shift ;;
    --console-log) console_log=$2 && shift ;;
    --outcome-file) outcome_file=$2 && shift ;;
    *) break ;;
    esac
    shift
done
[[ $# -eq 1 && $1 != --* ]] ||
    die "usage: $0 [--interactive] [--kernel-log FILE] [--console-log FILE] [--outcome-file FILE] PAYLOAD_DIR"
payload=$(cd "$1" && pwd)
[[ -x $payload/run ]] || die "$payload/run is missing or not executable"

need_cmds qemu-system-x86_64 cpio timeout
"$REPO/scripts/nested/l1-initramfs.sh"

WORK=$(mktemp -d "$CACHE_DIR/nested/run.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
# The kernel unpacks concatenated cpio archives one after the other. The payload (big,
# rebuilt every run) stays uncompressed: decompressing it under TCG would cost more than
# reading it. It goes first because the kernel finds an uncompressed archive only at a
# 4-byte aligned offset, which the end of a gzip stream need not be.
mkdir -p "$WORK/root"
ln -s "$payload" "$WORK/root/payload"
{
    (cd "$WORK/root" && find -L payload | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 -L)
    cat "$CACHE_DIR/nested/l1-base.cpio.gz"
} >"$WORK/l1.cpio"

# Serial ports: ttyS0 is the job's stdio (and L1's kernel console unless --kernel-log
# moves that to ttyS2); ttyS1 carries the heartbeat of l1-init.
console=ttyS0
serial_extra=()
if [[ -n $kernel_log ]]; then
    console=ttyS2
    : >"$kernel_log"
    serial_extra=(-serial "file:$kernel_log")
fi
# shellcheck disable=SC2054 # the commas belong to QEMU options
qemu=(qemu-system-x86_64
    -machine q35 -accel "tcg${VMM_L1_TCG:+,$VMM_L1_TCG}"
    -cpu "${VMM_L1_CPU:-$DEFAULT_L1_CPU}"
    -smp "${VMM_L1_CPUS:-2}" -m "${VMM_L1_MEM:-8G}"
    -nodefaults -no-user-config -display none -no-reboot
    -kernel "$CACHE_DIR/vmlinuz" -initrd "$WORK/l1.cpio"
    -append "console=$console quiet panic=-1 mitigations=off hugepages=${VMM_L1_HUGEPAGES:-0}${VMM_L1_CMDLINE:+ $VMM_L1_CMDLINE}"
    -pidfile "$WORK/qemu.pid")

# Ends QEMU when L1's heartbeat (l1-init writes one to the second serial port every 20 s)
# has not grown for $stall_limit seconds: a frozen L1 then costs minutes, not the whole
# time limit. Runs in the background with no output of its own.
watch_heartbeat() {
    local last=-1 size quiet=0
    while sleep 10; do
        [[ -s $WORK/qemu.pid ]] || continue
        size=$(stat -c %s "$WORK/heartbeat" 2>/dev/null || echo 0)
        if [[ $size != "$last" ]]; then
            last=$size
            quiet=0
        else
            quiet=$((quiet + 10))
        fi
        if ((quiet >= stall_limit)); then
            touch "$WORK/stalled"
            kill "$(cat "$WORK/qemu.pid")" 2>/dev/null
            return
        fi
    done
}

log "booting L1: TCG, ${VMM_L1_CPUS:-2} CPUs, ${VMM_L1_MEM:-8G}, payload $payload ($(du -shL "$payload" | cut -f1))"
status=0
time_limit=${VMM_L1_TIMEOUT:-3000}
stall_limit=${VMM_L1_STALL_TIMEOUT:-600}
watch_heartbeat >/dev/null 2>&1 </dev/null &
watcher=$!
if ((interactive)); then
    # Ctrl-C goes to the guest; Ctrl-A x ends QEMU (the monitor shares the console).
    "${qemu[@]}" -chardev stdio,id=con,mux=on,signal=off -serial chardev:con \
        -serial "file:$WORK/heartbeat" "${serial_extra[@]}" -mon chardev=con,mode=readline |
        tee "$WORK/console" || status=$?
else
    timeout -k 10 "$time_limit" "${qemu[@]}" -serial stdio -serial "file:$WORK/heartbeat" \
        "${serial_extra[@]}" </dev/null | tee "$WORK/console" || status=$?
fi
kill "$watcher" 2>/dev/null || true
[[ -z $console_log ]] || cp "$WORK/console" "$console_log"

# How L1 ended: prints `WORD<TAB>sentence` (see --outcome-file).
outcome() {
    local panic
    if [[ -n $reported ]]; then
        printf 'status\tthe job in L1 exited with status %s\n' "$reported"
        return
    fi
    panic=$(cat "$WORK/console" ${kernel_log:+"$kernel_log"} | tr -d '\r' |
        grep -a -m 1 -o 'Kernel panic - not syncing: .*' || true)
    if [[ -e $WORK/stalled ]]; then
        printf 'frozen\tL1 stopped responding: no heartbeat for %s s (last: %s); ended it\n' \
            "$stall_limit" "$(tr -d '\r' <"$WORK/heartbeat" | tail -n 1)"
    elif [[ -n $panic ]]; then
        printf "panic\tL1's kernel panicked (%s)\n" "$panic"
    elif ((!interactive && status == 124)); then
        printf 'timeout\tL1 timed out after %s s without reporting a status\n' "$time_limit"
    else
        printf 'ended\tL1 ended (QEMU status %s) without reporting a status\n' "$status"
    fi
}

reported=$(tr -d '\r' <"$WORK/console" | sed -n 's/^L1-EXIT-STATUS=\([0-9][0-9]*\)$/\1/p' | tail -n 1)
ending=$(outcome)
if [[ -n $outcome_file ]]; then
    echo "$ending" >"$outcome_file"
elif [[ -z $reported ]]; then
    log "${ending#*$'\t'}"
fi
[[ -n $reported ]] || exit 125
exit "$reported"
