#!/usr/bin/env bash
# Installs what building and testing the vmm needs beyond the Rust toolchain, from Debian's
# packages (as root). Idempotent: installs only what is missing, and refreshes the package
# lists only when they are missing or a day old (scripts/guest-kernel.sh resolves the
# current guest kernel from them).
#
#   scripts/install-deps.sh          the Debian packages
#   scripts/install-deps.sh --fuzz   and cargo-fuzz, for scripts/fuzz.sh (from crates.io,
#                                    pinned; about 75 s of CPU to build, once)
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

# The cargo-fuzz that scripts/fuzz.sh and CI use; `cargo install --locked` builds it with
# the dependency versions it was released with.
CARGO_FUZZ_VERSION=0.13.2

fuzz=0
case ${1:-} in
--fuzz) fuzz=1 ;;
"") ;;
*) die "usage: $0 [--fuzz]" ;;
esac

PACKAGES=(
    qemu-system-x86 # L1 for nested runs; the KVM probe
    busybox-static  # the guest's and L1's userland
    cpio gzip       # packing initramfs images
    gcc libc6-dev   # static guest helpers (resources/guest/*.c)
    binutils        # readelf, objcopy (static checks, stripping test binaries)
    jq              # reading cargo's JSON messages
    xz-utils zstd   # compressed kernel modules, should a kernel ship them
    curl socat      # talking to the API socket by hand and in tests
    tmux            # a real terminal for tests/console_host.rs
    prometheus      # promtool, which checks what GET /metrics serves
    g++             # libFuzzer, which cargo fuzz builds (scripts/fuzz.sh)
    # The minimal guest kernel (scripts/guest-kernel.sh --minimal): Debian's kernel source
    # and what building a kernel without modules needs.
    linux-source-6.1 make bc bison flex libelf-dev
)

missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
        missing+=("$pkg")
done

lists_fresh() {
    find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -1440 2>/dev/null | grep -q .
}

if [[ $(id -u) -ne 0 ]]; then
    ((${#missing[@]} == 0)) || die "run as root to install: ${missing[*]}"
    lists_fresh || log "the package lists are over a day old; apt-get update needs root"
else
    export DEBIAN_FRONTEND=noninteractive
    if ((${#missing[@]})) || ! lists_fresh; then
        log "apt-get update"
        apt-get update -q >/dev/null
    fi
    if ((${#missing[@]})); then
        log "installing: ${missing[*]}"
        apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
        # Only promtool is wanted from the prometheus package: not the server that
        # systemd starts when the package is installed.
        if [[ " ${missing[*]} " == *" prometheus "* && -d /run/systemd/system ]]; then
            systemctl disable --now prometheus.service >/dev/null 2>&1 || true
        fi
    fi
fi
log "all packages present"

if ((fuzz)); then
    if [[ $(cargo fuzz --version 2>/dev/null) != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
        log "cargo install cargo-fuzz $CARGO_FUZZ_VERSION"
        cargo install --quiet --locked --version "$CARGO_FUZZ_VERSION" cargo-fuzz
    fi
    log "cargo-fuzz $CARGO_FUZZ_VERSION present"
fi
