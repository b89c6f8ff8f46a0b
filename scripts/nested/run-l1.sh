#!/usr/bin/env bash
# Boots L1 (the Debian guest kernel under QEMU's TCG, with an emulated AMD CPU that has SVM
# and nested paging, so kvm-amd gives it a /dev/kvm) and runs a job inside it:
#
#   run-l1.sh [--interactive] PAYLOAD_DIR
#
# PAYLOAD_DIR is packed as /payload into L1's initramfs; its executable `run` is the job.
# L1's serial console streams to stdout. The job's exit status comes back through the
# `L1-EXIT-STATUS=<n>` line L1 prints and becomes this script's; if L1 ends without one
# (a panic, a timeout) the script exits 125.
#
# --interactive: the terminal is connected to L1's console (and, through the job, to a
# guest); Ctrl-A x ends QEMU. Without it QEMU reads no input, and a hard timeout applies.
#
# Environment: VMM_L1_MEM (default 8G), VMM_L1_CPUS (default 2), VMM_L1_TIMEOUT (seconds,
# default 3000), VMM_L1_STALL_TIMEOUT (seconds without a heartbeat from L1 before it is
# ended, default 600); neither limit applies with --interactive. VMM_L1_HUGEPAGES: 2 MiB
# hugetlb pages L1 reserves as it boots (default 0: none). VMM_CACHE_DIR.
set -euo pipefail
# shellcheck source=../lib.sh
source "$(dirname "$0")/../lib.sh"

interactive=0
if [[ ${1:-} == --interactive ]]; then
    interactive=1
    shift
fi
[[ $# -eq 1 ]] || die "usage: $0 [--interactive] PAYLOAD_DIR"
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

# The features switched off are ones TCG cannot emulate; naming them spares a warning each.
# shellcheck disable=SC2054 # the commas belong to QEMU options
qemu=(qemu-system-x86_64
    -machine q35,accel=tcg
    -cpu EPYC,+svm,+npt,-rdseed,-sha-ni,-fxsr-opt,-misalignsse,-3dnowprefetch,-osvw,-topoext,-nrip-save,-xsavec
    -smp "${VMM_L1_CPUS:-2}" -m "${VMM_L1_MEM:-8G}"
    -nodefaults -no-user-config -display none -no-reboot
    -kernel "$CACHE_DIR/vmlinuz" -initrd "$WORK/l1.cpio"
    -append "console=ttyS0 quiet panic=-1 mitigations=off hugepages=${VMM_L1_HUGEPAGES:-0}")

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
if ((interactive)); then
    # Ctrl-C goes to the guest; Ctrl-A x ends QEMU (the monitor shares the console).
    "${qemu[@]}" -chardev stdio,id=con,mux=on,signal=off -serial chardev:con \
        -serial "file:$WORK/heartbeat" -mon chardev=con,mode=readline |
        tee "$WORK/console" || status=$?
else
    watch_heartbeat >/dev/null 2>&1 </dev/null &
    watcher=$!
    timeout -k 10 "$time_limit" "${qemu[@]}" -serial stdio -serial "file:$WORK/heartbeat" \
        -pidfile "$WORK/qemu.pid" </dev/null | tee "$WORK/console" || status=$?
    kill "$watcher" 2>/dev/null || true
fi

reported=$(tr -d '\r' <"$WORK/console" | sed -n 's/^L1-EXIT-STATUS=\([0-9][0-9]*\)$/\1/p' | tail -n 1)
if [[ -z $reported ]]; then
    if [[ -e $WORK/stalled ]]; then
        log "L1 stopped responding: no heartbeat for $stall_limit s (last: $(tr -d '\r' <"$WORK/heartbeat" | tail -n 1)); ended it"
    elif [[ $status -eq 124 ]]; then
        log "L1 timed out after $time_limit s without reporting a status"
    else
        log "L1 ended (QEMU status $status) without reporting a status"
    fi
    exit 125
fi
exit "$reported"
