#!/usr/bin/env bash
# Runs the boot tests (every `#[ignore]`d integration test) against real guests:
#
#   scripts/boot-tests.sh [LIBTEST-ARGS...]      e.g. scripts/boot-tests.sh guest_poweroff
#
# Builds the guest kernel and initramfs, picks the mode (VMM_TEST_MODE=direct|nested, else
# scripts/kvm-probe.sh decides), then runs every integration test binary with `--ignored`,
# one test at a time: on this machine directly, or inside one nested KVM host (L1) under
# QEMU's TCG. Arguments are passed to each test binary (a name filter, --exact, ...).
# Ends with `boot tests: N passed, M failed`; fails if any failed or none ran.
#
# Environment: VMM_TEST_MODE, VMM_BIN (direct mode only: another vmm binary), the
# VMM_TEST_* and VMM_L1_* variables of docs/testing.md.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

# Variables the tests read, carried into L1 when set here.
FORWARDED_VARS=(VMM_TEST_TIMEOUT_SCALE VMM_TEST_CONSOLE RUST_BACKTRACE RUST_LOG)

run_direct() {
    local artifacts vmm tests
    artifacts=$(build_test_artifacts native) || die "building the tests failed"
    vmm=${VMM_BIN:-$(awk -F'\t' '$1 == "bin" { print $3 }' <<<"$artifacts")}
    mapfile -t tests < <(awk -F'\t' '$1 == "test" { print $3 }' <<<"$artifacts")
    ((${#tests[@]})) || die "cargo built no integration test binary"
    log "running ${#tests[@]} test binaries directly with $vmm"
    VMM_BIN=$vmm VMM_GUEST_KERNEL=$CACHE_DIR/vmlinuz \
        VMM_GUEST_INITRD=$CACHE_DIR/initramfs.cpio.gz RUST_BACKTRACE=${RUST_BACKTRACE:-1} \
        "$REPO/scripts/run-test-binaries.sh" "${tests[@]}" -- "$@"
}

# Copies an executable into the payload without its debug sections: L1 holds the payload
# in RAM, and debug info would multiply its size. Symbols stay, for backtraces.
install_stripped() {
    objcopy --strip-debug "$1" "$2"
    chmod 0755 "$2"
}

run_nested() {
    [[ -z ${VMM_BIN:-} ]] || die "VMM_BIN is honoured in direct mode only (L1 runs the static vmm built here)"
    need_cmds objcopy jq
    local artifacts
    artifacts=$(build_test_artifacts static) || die "building the static tests failed"

    local payload=$CACHE_DIR/nested/payload-tests
    rm -rf "$payload"
    mkdir -p "$payload/tests"
    local kind name path names=()
    while IFS=$'\t' read -r kind name path; do
        file_is_static "$path" || die "$path is not statically linked"
        case $kind in
        bin) install_stripped "$path" "$payload/vmm" ;;
        test)
            install_stripped "$path" "$payload/tests/$name"
            names+=("/payload/tests/$name")
            ;;
        esac
    done <<<"$artifacts"
    [[ -x $payload/vmm ]] || die "cargo built no vmm binary"
    ((${#names[@]})) || die "cargo built no integration test binary"
    cp "$CACHE_DIR/vmlinuz" "$CACHE_DIR/initramfs.cpio.gz" "$payload/"
    install -m 0755 "$REPO/scripts/run-test-binaries.sh" "$payload/"

    {
        echo "#!/bin/sh"
        echo "export VMM_BIN=/payload/vmm VMM_GUEST_KERNEL=/payload/vmlinuz"
        echo "export VMM_GUEST_INITRD=/payload/initramfs.cpio.gz RUST_BACKTRACE=${RUST_BACKTRACE:-1}"
        # Nested guests now and then crash or stall in early boot whatever the VMM
        # (tests/common/mod.rs, GuestVmBuilder::boot); let each boot try again.
        echo "export VMM_TEST_BOOT_ATTEMPTS=${VMM_TEST_BOOT_ATTEMPTS:-3}"
        # ... and stall later too (an L1 soft lockup, a guest that stops mid-output), so a
        # failed test runs again on its own; every run is logged and counted.
        echo "export VMM_TEST_ATTEMPTS=${VMM_TEST_ATTEMPTS:-3}"
        # QEMU's TCG does not let L1's KVM intercept an L2 XSETBV, so a guest's XCR0 and
        # KVM's idea of it part ways and AVX state is clobbered on exits (docs/testing.md).
        echo "export VMM_TEST_GUEST_CMDLINE=$(sh_quote "${VMM_TEST_GUEST_CMDLINE:-clearcpuid=xsave}")"
        local var
        for var in "${FORWARDED_VARS[@]}"; do
            [[ -n ${!var:-} && $var != RUST_BACKTRACE ]] && echo "export $var=$(sh_quote "${!var}")"
        done
        echo "exec /payload/run-test-binaries.sh ${names[*]} -- $(sh_quote "$@")"
    } >"$payload/run"
    chmod 0755 "$payload/run"

    log "running ${#names[@]} test binaries inside L1"
    "$REPO/scripts/nested/run-l1.sh" "$payload"
}

main() {
    need_cmds cargo jq
    "$REPO/scripts/guest-kernel.sh"
    "$REPO/scripts/guest-initramfs.sh"
    local mode
    mode=$(choose_mode)
    echo "boot test mode: $mode"
    local started=$SECONDS status=0
    if [[ $mode == direct ]]; then
        run_direct "$@" || status=$?
    else
        run_nested "$@" || status=$?
    fi
    echo "boot tests ($mode) took $((SECONDS - started)) s, exit status $status"
    return "$status"
}

main "$@"
