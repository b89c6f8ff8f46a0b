#!/usr/bin/env bash
# Tells whether KVM on this machine can really boot a guest: exits 0 if it can, 1 if not,
# with the reason on stderr.
#
# /dev/kvm being there is not enough: on some hosts KVM_CREATE_VM works but a guest hangs
# as soon as it enters protected mode. So the probe boots the guest kernel with the guest
# initramfs, asks its /init (vmmtest.run) to print a marker and power off, and waits for
# that under a hard timeout.
#
# Environment: VMM_PROBE_TIMEOUT (seconds, default 40), VMM_KVM_PROBER (qemu | vmm, default
# qemu; `vmm` boots with VMM_BIN, default target/debug/vmm).
# Needs scripts/guest-kernel.sh and scripts/guest-initramfs.sh to have run.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

TIMEOUT=${VMM_PROBE_TIMEOUT:-40}
KERNEL=$CACHE_DIR/vmlinuz
INITRD=$CACHE_DIR/initramfs.cpio.gz
# No `quiet`: seen here, it made the kernel fail TSC calibration and hang on microvm (TCG).
PROBE_CMDLINE="panic=-1 vmmtest.run=true"

# The one place that boots the probe guest. Prints the guest console on stdout.
boot_probe_guest() {
    case ${VMM_KVM_PROBER:-qemu} in
    qemu)
        need_cmds qemu-system-x86_64
        qemu-system-x86_64 -machine microvm,acpi=on -accel kvm -cpu host,-arch-capabilities \
            -m 256M -smp 1 -nodefaults -no-user-config -display none -no-reboot \
            -serial stdio -kernel "$KERNEL" -initrd "$INITRD" \
            -append "console=ttyS0 $PROBE_CMDLINE"
        ;;
    vmm)
        local vmm=${VMM_BIN:-$REPO/target/debug/vmm}
        [[ -x $vmm ]] || die "VMM_KVM_PROBER=vmm but $vmm is not built"
        "$vmm" --kernel "$KERNEL" --initrd "$INITRD" --mem 256M --cmdline "$PROBE_CMDLINE"
        ;;
    *) die "VMM_KVM_PROBER must be qemu or vmm, not '${VMM_KVM_PROBER}'" ;;
    esac
}

main() {
    if [[ ! -e /dev/kvm ]]; then
        log "no /dev/kvm"
        return 1
    fi
    if [[ ! -r /dev/kvm || ! -w /dev/kvm ]]; then
        log "/dev/kvm is not readable and writable by $(id -un)"
        return 1
    fi
    [[ -s $KERNEL && -s $INITRD ]] ||
        die "no guest kernel or initramfs in $CACHE_DIR: run scripts/guest-kernel.sh and scripts/guest-initramfs.sh"

    local out status=0 started=$SECONDS
    out=$(mktemp)
    # The probe guest gets no input; `timeout -k` also ends a VMM stuck in the kernel.
    timeout -k 5 "$TIMEOUT" "$0" --boot-probe-guest </dev/null >"$out" 2>&1 || status=$?
    if [[ $status -eq 0 ]] && grep -q 'VMMTEST-RUN-EXIT=0' "$out"; then
        log "KVM boots a guest here ($((SECONDS - started)) s, prober ${VMM_KVM_PROBER:-qemu})"
        rm -f "$out"
        return 0
    fi
    if [[ $status -eq 124 || $status -eq 137 ]]; then
        log "KVM is present but a guest did not boot within ${TIMEOUT} s (prober ${VMM_KVM_PROBER:-qemu}); last output:"
    else
        log "the probe guest failed (exit status $status, prober ${VMM_KVM_PROBER:-qemu}); last output:"
    fi
    tail -n 5 "$out" | sed 's/^/    /' >&2
    rm -f "$out"
    return 1
}

if [[ ${1:-} == --boot-probe-guest ]]; then
    boot_probe_guest
else
    main "$@"
fi
