#!/usr/bin/env bash
# Builds the fixed part of L1's initramfs into $CACHE_DIR/nested/l1-base.cpio.gz: busybox,
# the KVM modules listed in $CACHE_DIR/modules/l1.order and scripts/nested/l1-init as /init.
# What L1 should run (/payload) is packed separately by run-l1.sh, so this part is rebuilt
# only when its inputs change.
set -euo pipefail
# shellcheck source=../lib.sh
source "$(dirname "$0")/../lib.sh"

OUT=$CACHE_DIR/nested/l1-base.cpio.gz
STAMP=$CACHE_DIR/nested/l1-base.inputs

main() {
    [[ -s $CACHE_DIR/modules/l1.order ]] ||
        die "no L1 modules in $CACHE_DIR: run scripts/guest-kernel.sh first"
    need_cmds busybox cpio gzip readelf
    mkdir -p "$CACHE_DIR/nested"

    local hash
    hash=$(inputs_hash "$(command -v busybox)" "$CACHE_DIR/modules" \
        "$REPO/scripts/nested/l1-init" "$0" "$REPO/scripts/lib.sh")
    if [[ -s $OUT && -s $STAMP && $(cat "$STAMP") == "$hash" ]]; then
        log "L1 initramfs is up to date: $OUT"
        return
    fi

    WORK=$(mktemp -d "$CACHE_DIR/nested/l1-work.XXXXXX")
    trap 'rm -rf "$WORK"' EXIT
    local root=$WORK/root m
    mkdir -p "$root"/{dev,proc,sys,tmp,root,etc,payload,lib/modules}
    install_busybox "$root"
    while read -r m; do
        cp "$CACHE_DIR/modules/$m" "$root/lib/modules/"
    done <"$CACHE_DIR/modules/l1.order"
    cp "$CACHE_DIR/modules/l1.order" "$root/lib/modules/"
    install -m 0755 "$REPO/scripts/nested/l1-init" "$root/init"
    echo "root:x:0:0:root:/root:/bin/sh" >"$root/etc/passwd"

    pack_cpio "$root" | gzip -6 | write_atomic "$OUT"
    echo "$hash" | write_atomic "$STAMP"
    log "built $OUT ($(du -k "$OUT" | cut -f1) KiB)"
}

main "$@"
