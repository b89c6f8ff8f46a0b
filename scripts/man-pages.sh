#!/usr/bin/env bash
# Regenerates the manual pages in docs/man from the command line's clap definitions:
#
#   scripts/man-pages.sh
#
# Builds vmm and runs `vmm man-pages` into docs/man, replacing the pages there, one per
# command (vmm.1, vmm-ctl.1, vmm-ctl-balloon-set.1, ...). Run it after changing a flag or
# a command's help and commit the result: tests/cli.rs fails while docs/man differs from
# what the code generates. Read a page with `man -l docs/man/vmm.1`.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

need_cmds cargo
(cd "$REPO" && cargo build --quiet --bin vmm)
out=$REPO/docs/man
work=$(mktemp -d "${TMPDIR:-/tmp}/vmm-man.XXXXXX")
trap 'rm -rf "$work"' EXIT
"$REPO/target/debug/vmm" man-pages "$work"
mkdir -p "$out"
rm -f "$out"/*.1
cp "$work"/*.1 "$out/"
log "wrote $(find "$out" -name '*.1' | wc -l) pages into ${out#"$REPO"/}"
