#!/usr/bin/env bash
# A stand-in for the vmm binary built from QEMU (microvm), for checking the test harness
# itself: `VMM_BIN=scripts/dev/qemu-as-vmm.sh` makes the boot tests drive QEMU instead of
# our VMM. Accepts the vmm's boot flags (--kernel --initrd --cmdline --mem --cpus
# --balloon); the console is on stdio, and the exit status is 0 when the guest powers off
# or reboots, as with the vmm. Not a test of anything but the harness.
#
# Environment: QEMU_AS_VMM_ACCEL (tcg, the default, or kvm).
set -euo pipefail

kernel="" initrd="" cmdline="" mem=512M cpus=1 balloon=""
while [[ $# -gt 0 ]]; do
    case $1 in
    --kernel) kernel=$2 ;;
    --initrd) initrd=$2 ;;
    --cmdline) cmdline=$2 ;;
    --mem) mem=$2 ;;
    --cpus) cpus=$2 ;;
    --balloon) balloon=$2 ;;
    *)
        echo "qemu-as-vmm: unsupported argument $1" >&2
        exit 2
        ;;
    esac
    shift 2
done
[[ -f $kernel ]] || {
    echo "qemu-as-vmm: kernel $kernel not found" >&2
    exit 1
}

# shellcheck disable=SC2054 # the commas belong to QEMU options
args=(-machine microvm,acpi=on -accel "${QEMU_AS_VMM_ACCEL:-tcg}" -m "$mem" -smp "$cpus"
    -nodefaults -no-user-config -display none -no-reboot -serial stdio -kernel "$kernel")
if [[ ${QEMU_AS_VMM_ACCEL:-tcg} == kvm ]]; then
    args+=(-cpu host)
else
    args+=(-cpu max)
fi
[[ -n $initrd ]] && args+=(-initrd "$initrd")
if [[ -n $balloon ]]; then
    opts=""
    [[ $balloon == *deflate-on-oom* ]] && opts+=",deflate-on-oom=on"
    [[ $balloon == *page-reporting* ]] && opts+=",free-page-reporting=on"
    args+=(-device "virtio-balloon-device$opts")
fi
# microvm has no i8042, so the guest reboots by triple fault (reboot=t), which -no-reboot
# turns into an exit. Under TCG the kernel sometimes fails to calibrate the TSC on microvm
# and hangs; it is given the host's frequency instead.
if [[ ${QEMU_AS_VMM_ACCEL:-tcg} == tcg ]]; then
    cmdline="tsc_early_khz=$(awk '/^cpu MHz/ { printf "%d", $4 * 1000; exit }' /proc/cpuinfo) $cmdline"
fi
exec qemu-system-x86_64 "${args[@]}" -append "console=ttyS0 reboot=t panic=1 $cmdline"
