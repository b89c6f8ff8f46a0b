# shellcheck shell=bash
# Shared by the scripts under scripts/: paths, logging, and small helpers.
# Source it; it defines functions and variables only.

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck disable=SC2034 # CACHE_DIR and STATIC_TARGET are for the scripts that source this.
CACHE_DIR=${VMM_CACHE_DIR:-$REPO/.cache/guest}
# The target triple every static build uses; naming it explicitly keeps build scripts and
# proc macros (built for the host) out of reach of the crt-static flag.
STATIC_TARGET=x86_64-unknown-linux-gnu

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

need_cmds() {
    local missing=() c
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || missing+=("$c")
    done
    if ((${#missing[@]})); then
        die "missing command(s): ${missing[*]} (run scripts/install-deps.sh)"
    fi
}

# Hash of the named files and of every file under the named directories, so a build step can
# tell whether its inputs changed since the last time.
inputs_hash() {
    local p
    for p in "$@"; do
        if [[ -d $p ]]; then
            find "$p" -type f -print0 | sort -z | xargs -0 -r sha256sum
        else
            sha256sum "$p"
        fi
    done | sha256sum | cut -d' ' -f1
}

# Copies busybox and one symlink per applet into the root DIR.
install_busybox() {
    local root=$1 bb applet
    bb=$(command -v busybox) || die "busybox not found (apt-get install busybox-static)"
    file_is_static "$bb" || die "$bb is not static (apt-get install busybox-static)"
    mkdir -p "$root/bin" "$root/sbin" "$root/usr/bin" "$root/usr/sbin"
    cp "$bb" "$root/bin/busybox"
    for applet in $("$bb" --list); do
        [[ $applet == busybox ]] && continue
        [[ -e $root/bin/$applet ]] || ln -s busybox "$root/bin/$applet"
    done
}

file_is_static() {
    # A static executable has no PT_INTERP program header.
    ! LC_ALL=C readelf -lW "$1" 2>/dev/null | grep -q 'Requesting program interpreter'
}

# Packs the directory DIR into a newc cpio archive on stdout, with owner root and stable
# ordering so the same tree gives the same bytes.
pack_cpio() {
    (cd "$1" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0)
}

# Atomically replaces DEST with the stdin (mode 0644).
write_atomic() {
    local dest=$1 tmp
    tmp=$(mktemp "$dest.XXXXXX")
    cat >"$tmp" && chmod 0644 "$tmp" && mv -f "$tmp" "$dest"
}

# Prints `direct` or `nested`: VMM_TEST_MODE if set, else what scripts/kvm-probe.sh finds.
# Needs the guest kernel and initramfs built.
choose_mode() {
    case ${VMM_TEST_MODE:-} in
    direct | nested)
        log "mode: $VMM_TEST_MODE (set by VMM_TEST_MODE)"
        echo "$VMM_TEST_MODE"
        ;;
    "")
        if "$REPO/scripts/kvm-probe.sh"; then
            log "mode: direct (KVM works here)"
            echo direct
        else
            log "mode: nested (KVM cannot boot a guest here; running KVM inside a TCG L1)"
            echo nested
        fi
        ;;
    *) die "VMM_TEST_MODE must be direct or nested, not '$VMM_TEST_MODE'" ;;
    esac
}

# Builds the vmm binary and the integration tests, and prints one line per artifact:
# `bin<TAB>vmm<TAB>PATH` and `test<TAB>NAME<TAB>PATH`. With `static`, everything is linked
# statically (for L1, which has no shared libraries). The vmm is built with the
# `test-hooks` feature, so the boot tests can inject faults (src/test_hooks.rs).
# Cargo's progress goes to stderr. Only the vmm package: the workspace's tools have no
# boot tests.
build_test_artifacts() {
    local flavour=$1 json
    local cargo_args=(test --no-run --tests --package vmm --features test-hooks
        --message-format=json-render-diagnostics)
    if [[ $flavour == static ]]; then
        cargo_args+=(--target "$STATIC_TARGET")
        json=$(cd "$REPO" && RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
            cargo "${cargo_args[@]}") || return 1
    else
        json=$(cd "$REPO" && cargo "${cargo_args[@]}") || return 1
    fi
    jq -r 'select(.reason == "compiler-artifact" and .executable != null)
        | if (.target.kind | index("test")) then "test\t\(.target.name)\t\(.executable)"
          elif (.target.kind | index("bin")) and .profile.test == false and .target.name == "vmm"
            then "bin\tvmm\t\(.executable)"
          else empty end' <<<"$json"
}

# Single-quotes each argument for a POSIX shell.
sh_quote() {
    local arg
    for arg in "$@"; do
        printf "'%s' " "${arg//\'/\'\\\'\'}"
    done
}

# Firmware QEMU's microvm machine may load (qboot, and the option ROMs for -kernel).
QEMU_FIRMWARE=(bios-microvm.bin qboot.rom linuxboot_dma.bin linuxboot.bin pvh.bin)

# Copies QEMU, the shared libraries it links (ldd), the dynamic loader and the firmware
# microvm needs into DIR, to run in L1 (which has no shared libraries of its own) as
#   DIR/lib/ld-linux-x86-64.so.2 --library-path DIR/lib DIR/qemu-system-x86_64 -L DIR/share
# Used by scripts/nested/fault-control.sh and scripts/bench.sh.
bundle_qemu() {
    local dir=$1 qemu lib fw
    qemu=$(command -v qemu-system-x86_64) || die "qemu-system-x86_64 not found (run scripts/install-deps.sh)"
    mkdir -p "$dir/lib" "$dir/share"
    cp "$qemu" "$dir/qemu-system-x86_64"
    # ldd prints `name => /path (address)` per library and `/path/ld-linux... (address)`
    # for the loader.
    for lib in $(ldd "$qemu" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
        cp -L "$lib" "$dir/lib/"
    done
    [[ -e $dir/lib/ld-linux-x86-64.so.2 ]] || die "ldd named no ld-linux-x86-64.so.2 for $qemu"
    for fw in "${QEMU_FIRMWARE[@]}"; do
        cp -L "/usr/share/qemu/$fw" "$dir/share/" || die "QEMU firmware $fw is missing"
    done
}
