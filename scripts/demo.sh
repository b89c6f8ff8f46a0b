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
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

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
    local payload=$CACHE_DIR/nested/payload-demo
    rm -rf "$payload"
    mkdir -p "$payload"
    objcopy --strip-debug "$vmm" "$payload/vmm"
    cp "$CACHE_DIR/vmlinuz" "$CACHE_DIR/initramfs.cpio.gz" "$payload/"
    cat >"$payload/run" <<EOF
#!/bin/sh
echo "==== demo guest (nested, booting takes about half a minute): poweroff -f or exit ends it; Ctrl-A x ends L1"
exec /payload/vmm --kernel /payload/vmlinuz --initrd /payload/initramfs.cpio.gz \\
    $(sh_quote "${args[@]}")
EOF
    chmod 0755 "$payload/run"
    exec "$REPO/scripts/nested/run-l1.sh" --interactive "$payload"
}

main "$@"
