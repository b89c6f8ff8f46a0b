#!/usr/bin/env bash
# Builds the minimal guest kernel from Debian's linux-source-6.1 package and the committed
# fragment resources/kernel/minimal.config (run it as `scripts/guest-kernel.sh --minimal`):
#
#   $VMM_KERNELS_DIR/minimal-<hash>/bzImage   the kernel, built once per machine
#   $VMM_KERNELS_DIR/minimal-<hash>/config    its final .config
#   $CACHE_DIR/vmlinuz-minimal                a copy for this checkout's boot tests
#
# <hash> covers the fragment, the package's version and this script, so a checkout that
# changes none of them reuses the kernel another checkout built. VMM_KERNELS_DIR defaults
# to ${XDG_CACHE_HOME:-$HOME/.cache}/vmm/kernels. The configuration starts from
# `make allnoconfig` with the fragment merged in by the kernel's own merge_config.sh, and the
# build fails, naming the option, if any line of the fragment did not end up in the final
# .config as written. Needs the packages scripts/install-deps.sh installs.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

SOURCE_PKG=linux-source-6.1
SOURCE_TARBALL=/usr/src/$SOURCE_PKG.tar.xz
FRAGMENT=$REPO/resources/kernel/minimal.config
KERNELS_DIR=${VMM_KERNELS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vmm/kernels}
OUT=$CACHE_DIR/vmlinuz-minimal

# Prints the lines of FRAGMENT that the final .config CONFIG does not honour, each with
# what the option became. `CONFIG_X=v` must appear as it is; `# CONFIG_X is not set` is
# honoured by any .config without a `CONFIG_X=` line.
unhonoured_options() {
    local fragment=$1 config=$2 line name want got
    while IFS= read -r line; do
        if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
            name=${BASH_REMATCH[1]} want=${BASH_REMATCH[2]}
        elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
            name=${BASH_REMATCH[1]} want=n
        else
            continue
        fi
        got=$(sed -n "s/^$name=//p" "$config")
        [[ -n $got ]] || got=n
        [[ $got == "$want" ]] || echo "$name=$want (became $got)"
    done <"$fragment"
}

# Configures and builds the kernel in the unpacked tree SRC, leaving bzImage and config in
# DEST. Output of the kernel's build goes to LOG.
configure_and_build() {
    local src=$1 dest=$2 log=$3 wrong
    # ARCH is explicit: allnoconfig for ARCH=x86 would give a 32-bit kernel.
    local make_args=(-C "$src" ARCH=x86_64 KBUILD_BUILD_USER=vmm KBUILD_BUILD_HOST=minimal)
    # -n: merge_config.sh runs `make allnoconfig` with the fragment as the values to keep,
    # so everything the fragment does not name (or need) is off.
    log "configuring: allnoconfig + $(basename "$FRAGMENT")"
    (cd "$src" && ARCH=x86_64 ./scripts/kconfig/merge_config.sh -n "$FRAGMENT") \
        >>"$log" 2>&1 || return 1
    make "${make_args[@]}" olddefconfig >>"$log" 2>&1 || return 1
    wrong=$(unhonoured_options "$FRAGMENT" "$src/.config")
    if [[ -n $wrong ]]; then
        log "error: these options of $FRAGMENT did not end up in the kernel's configuration" \
            "(a dependency is missing or the option does not exist in this kernel):"
        sed 's/^/    /' <<<"$wrong" >&2
        return 2
    fi
    log "building bzImage with make -j$(nproc)"
    make "${make_args[@]}" -j"$(nproc)" bzImage >>"$log" 2>&1 || return 1
    cp "$src/arch/x86/boot/bzImage" "$dest/bzImage" && cp "$src/.config" "$dest/config"
}

# Builds the kernel into KERNELS_DIR/minimal-HASH unless it is there already.
build_once() {
    local hash=$1 version=$2 entry=$KERNELS_DIR/minimal-$1
    [[ -s $entry/bzImage ]] && return
    need_cmds make gcc bc bison flex tar xz
    [[ -e /usr/include/libelf.h ]] || die "libelf.h is missing (apt-get install libelf-dev)"

    # Only one build runs at a time (the caller holds the lock), so any other build
    # directory was left by one that was killed; each holds an unpacked tree of ~1.5 GB.
    rm -rf "$KERNELS_DIR"/build-*
    local work
    work=$(mktemp -d "$KERNELS_DIR/build-$hash.XXXXXX")
    # shellcheck disable=SC2064 # expand now: `work` is local
    trap "rm -rf '$work'" EXIT
    mkdir -p "$work/result"
    local log=$work/result/build.log started=$SECONDS status=0
    log "unpacking $SOURCE_TARBALL ($SOURCE_PKG $version)"
    tar -xf "$SOURCE_TARBALL" -C "$work"
    local src=("$work"/linux-source-*/)
    [[ -d ${src[0]} ]] || die "$SOURCE_TARBALL holds no linux-source-* directory"
    configure_and_build "${src[0]%/}" "$work/result" "$log" || status=$?
    if ((status == 1)); then
        tail -n 40 "$log" >&2
        cp "$log" "$KERNELS_DIR/failed-build.log"
        die "building the minimal kernel failed (the end of its log is above;" \
            "all of it in $KERNELS_DIR/failed-build.log)"
    fi
    ((status == 0)) || die "the minimal kernel's configuration is not what $FRAGMENT asks for"
    echo "$SOURCE_PKG $version" >"$work/result/source"
    mv "$work/result" "$entry"
    log "built the minimal kernel in $((SECONDS - started)) s:" \
        "$entry/bzImage ($(du -k "$entry/bzImage" | cut -f1) KiB)"
}

main() {
    [[ -s $SOURCE_TARBALL ]] ||
        die "$SOURCE_TARBALL is missing (run scripts/install-deps.sh as root)"
    local version hash
    version=$(dpkg-query -W -f='${Version}' "$SOURCE_PKG" 2>/dev/null) ||
        die "$SOURCE_PKG is not installed (run scripts/install-deps.sh as root)"
    hash=$( {
        echo "$SOURCE_PKG $version"
        sha256sum <"$FRAGMENT"
        sha256sum <"${BASH_SOURCE[0]}"
    } | sha256sum | cut -c1-16)

    mkdir -p "$KERNELS_DIR" "$CACHE_DIR"
    # One build at a time per machine: checkouts that share the cache wait for each other
    # rather than build the same kernel twice.
    exec {lock}>"$KERNELS_DIR/.lock"
    if ! flock -n "$lock"; then
        log "waiting for another build of a minimal kernel to finish"
        flock "$lock"
    fi
    build_once "$hash" "$version"
    flock -u "$lock"

    local built=$KERNELS_DIR/minimal-$hash/bzImage
    if ! cmp -s "$built" "$OUT"; then
        write_atomic "$OUT" <"$built"
    fi
    log "minimal guest kernel ($SOURCE_PKG $version, fragment hash $hash): $OUT"
}

main "$@"
