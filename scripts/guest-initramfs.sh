#!/usr/bin/env bash
# Builds the test guest's initramfs into $CACHE_DIR/initramfs.cpio.gz:
#   busybox (static) and one symlink per applet, the guest modules listed in
#   $CACHE_DIR/modules/guest.order (run scripts/guest-kernel.sh first), resources/guest/init
#   as /init, every resources/guest/*.c built static into /bin, and every other executable
#   file in resources/guest copied into /bin.
# Rebuilt only when one of those inputs (or this script) changed.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

SRC=$REPO/resources/guest
OUT=$CACHE_DIR/initramfs.cpio.gz
STAMP=$CACHE_DIR/initramfs.inputs

main() {
    [[ -s $CACHE_DIR/modules/guest.order ]] ||
        die "no guest modules in $CACHE_DIR: run scripts/guest-kernel.sh first"
    need_cmds busybox cpio gzip gcc readelf

    local hash
    hash=$(inputs_hash "$(command -v busybox)" "$CACHE_DIR/modules" "$SRC" "$0" \
        "$REPO/scripts/lib.sh")
    if [[ -s $OUT && -s $STAMP && $(cat "$STAMP") == "$hash" ]]; then
        log "guest initramfs is up to date: $OUT"
        return
    fi

    WORK=$(mktemp -d "$CACHE_DIR/initramfs-work.XXXXXX")
    trap 'rm -rf "$WORK"' EXIT
    local root=$WORK/root
    mkdir -p "$root"/{dev,proc,sys,tmp,run,root,etc,lib/modules}
    install_busybox "$root"

    local m
    while read -r m; do
        cp "$CACHE_DIR/modules/$m" "$root/lib/modules/"
    done <"$CACHE_DIR/modules/guest.order"
    cp "$CACHE_DIR/modules/guest.order" "$root/lib/modules/"

    install -m 0755 "$SRC/init" "$root/init"
    local f name
    for f in "$SRC"/*; do
        name=$(basename "$f")
        case $name in
        init) ;;
        *.c)
            gcc -static -O2 -Wall -Wextra -Werror -o "$root/bin/${name%.c}" "$f" ||
                die "building $name failed"
            ;;
        *) [[ -x $f ]] && install -m 0755 "$f" "$root/bin/$name" ;;
        esac
    done
    echo "root:x:0:0:root:/root:/bin/sh" >"$root/etc/passwd"

    pack_cpio "$root" | gzip -9 | write_atomic "$OUT"
    echo "$hash" | write_atomic "$STAMP"
    log "built $OUT ($(du -k "$OUT" | cut -f1) KiB)"
}

main "$@"
