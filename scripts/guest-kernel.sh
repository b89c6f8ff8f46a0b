#!/usr/bin/env bash
# Fetches Debian's cloud kernel package (never installs it) and extracts, into the cache:
#
#   $CACHE_DIR/vmlinuz                  the bzImage booted as the guest (and as L1 when nested)
#   $CACHE_DIR/modules/*.ko             the modules below and their dependencies, uncompressed
#   $CACHE_DIR/modules/guest.order      guest modules (virtio-mmio, balloon, pvpanic) in load order
#   $CACHE_DIR/modules/l1.order         L1 modules (kvm, kvm-amd) in load order
#   $CACHE_DIR/modules/wanted           the module lists below, to notice when they change
#   $CACHE_DIR/kernel.pkg               the package they came from
#
# Idempotent: does nothing when the cache already holds the package apt resolves to, with
# the modules asked for here.
#
# `guest-kernel.sh --minimal` builds the minimal kernel instead (everything built in,
# virtio-mmio devices from the command line): see scripts/guest-kernel-minimal.sh.
#
# Environment: VMM_CACHE_DIR (default $REPO/.cache/guest), VMM_GUEST_KERNEL_PKG (a
# linux-image-* package name to use instead of the one linux-image-cloud-amd64 depends on).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

META_PKG=linux-image-cloud-amd64
# Used when apt cannot resolve the meta package (no package lists yet, say).
PINNED_PKG=linux-image-6.1.0-56-cloud-amd64
# pvpanic_mmio (with pvpanic, its dependency) binds the pvpanic port the DSDT describes.
GUEST_MODULES=(virtio_ring virtio virtio_mmio virtio_balloon pvpanic_mmio)
L1_MODULES=(irqbypass kvm kvm-amd)

resolve_pkg() {
    if [[ -n ${VMM_GUEST_KERNEL_PKG:-} ]]; then
        echo "$VMM_GUEST_KERNEL_PKG"
        return
    fi
    local dep
    dep=$(apt-cache depends "$META_PKG" 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
    echo "${dep:-}"
}

wanted_modules() {
    echo "guest: ${GUEST_MODULES[*]}; L1: ${L1_MODULES[*]}"
}

kernel_is_cached() {
    [[ -s $CACHE_DIR/vmlinuz && -s $CACHE_DIR/modules/guest.order &&
        -s $CACHE_DIR/modules/l1.order && -s $CACHE_DIR/kernel.pkg &&
        $(cat "$CACHE_DIR/modules/wanted" 2>/dev/null) == "$(wanted_modules)" ]]
}

# Prints the path of module NAME under the unpacked tree, matching '-' and '_' alike as
# the kernel does, with any compression suffix.
find_module() {
    local tree=$1 name=$2 pattern
    pattern=${name//[-_]/[-_]}
    find "$tree/lib/modules" -regextype posix-extended \
        -regex ".*/${pattern}\.ko(\.xz|\.zst|\.gz)?" -print -quit
}

is_builtin() {
    local tree=$1 name=$2 pattern
    pattern=${name//[-_]/[-_]}
    grep -Eqs "/${pattern}\.ko\$" "$tree"/lib/modules/*/modules.builtin
}

# Writes module FILE uncompressed to DEST.
extract_module() {
    local src=$1 dest=$2
    case $src in
    *.ko.xz) xz -dc "$src" >"$dest" ;;
    *.ko.zst) zstd -qdc "$src" >"$dest" ;;
    *.ko.gz) gzip -dc "$src" >"$dest" ;;
    *) cp "$src" "$dest" ;;
    esac
}

module_depends() {
    tr '\0' '\n' <"$1" | sed -n 's/^depends=//p' | tr ',' ' '
}

# Depth-first walk over `depends=`: appends each module after its dependencies to ORDER,
# copying it into OUT as NAME.ko with the name the kernel uses (dashes become underscores).
declare -A SEEN
ORDER=()
add_module() {
    local tree=$1 out=$2 name=${3//-/_} src dep
    [[ -n ${SEEN[$name]:-} ]] && return
    SEEN[$name]=1
    if is_builtin "$tree" "$name"; then
        log "$name is built into this kernel"
        return
    fi
    src=$(find_module "$tree" "$name")
    [[ -n $src ]] || die "module $name not found in the kernel package"
    extract_module "$src" "$out/$name.ko"
    for dep in $(module_depends "$out/$name.ko"); do
        add_module "$tree" "$out" "$dep"
    done
    ORDER+=("$name.ko")
}

write_order() {
    local tree=$1 out=$2 list=$3 m
    shift 3
    SEEN=()
    ORDER=()
    for m in "$@"; do add_module "$tree" "$out" "$m"; done
    printf '%s\n' "${ORDER[@]}" >"$out/$list"
}

main() {
    case ${1:-} in
    --minimal) exec "$REPO/scripts/guest-kernel-minimal.sh" ;;
    "") ;;
    *) die "usage: $0 [--minimal]" ;;
    esac
    local pkg
    pkg=$(resolve_pkg)
    if [[ -z $pkg ]]; then
        if kernel_is_cached; then
            log "apt cannot resolve $META_PKG; using the cached $(cat "$CACHE_DIR/kernel.pkg")"
            return
        fi
        pkg=$PINNED_PKG
        log "apt cannot resolve $META_PKG (run apt-get update?); trying the pinned $pkg"
    fi
    if kernel_is_cached && [[ $(cat "$CACHE_DIR/kernel.pkg") == "$pkg" ]]; then
        log "guest kernel $pkg is cached in $CACHE_DIR"
        return
    fi

    need_cmds apt-get dpkg-deb
    mkdir -p "$CACHE_DIR"
    WORK=$(mktemp -d "$CACHE_DIR/kernel-work.XXXXXX")
    trap 'rm -rf "$WORK"' EXIT
    local work=$WORK

    log "downloading $pkg"
    (cd "$work" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >&2) ||
        die "apt-get download $pkg failed"
    local deb=("$work"/*.deb)
    log "unpacking $(basename "${deb[0]}")"
    dpkg-deb -x "${deb[0]}" "$work/root"

    local vmlinuz=("$work"/root/boot/vmlinuz-*)
    [[ -s ${vmlinuz[0]} ]] || die "no boot/vmlinuz-* in ${deb[0]}"

    local out=$work/modules
    mkdir -p "$out"
    write_order "$work/root" "$out" guest.order "${GUEST_MODULES[@]}"
    write_order "$work/root" "$out" l1.order "${L1_MODULES[@]}"
    wanted_modules >"$out/wanted"

    rm -rf "$CACHE_DIR/modules"
    mv "$out" "$CACHE_DIR/modules"
    cp "${vmlinuz[0]}" "$CACHE_DIR/vmlinuz.tmp" && mv "$CACHE_DIR/vmlinuz.tmp" "$CACHE_DIR/vmlinuz"
    echo "$pkg" | write_atomic "$CACHE_DIR/kernel.pkg"
    log "guest kernel $pkg: $CACHE_DIR/vmlinuz; modules: $(tr '\n' ' ' <"$CACHE_DIR/modules/guest.order")| $(tr '\n' ' ' <"$CACHE_DIR/modules/l1.order")"
}

main "$@"
