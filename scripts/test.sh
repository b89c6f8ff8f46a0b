#!/usr/bin/env bash
# THE test command: every check the project has, in one run.
#
#   scripts/test.sh            format, lints, unit and integration tests, a short fuzzing
#                              run of every fuzz target, then boot tests
#   scripts/test.sh --no-boot  the same without booting guests
#   scripts/test.sh --no-fuzz  the same without fuzzing (both flags may be given)
#
# First makes sure the Debian packages it needs are there (scripts/install-deps.sh, which
# installs what is missing when run as root and only checks otherwise), and cargo-fuzz
# when it fuzzes (`--fuzz`, a pinned version from crates.io). Every stage
# runs even if an earlier one failed, so one run shows every problem; the exit status is
# non-zero if any stage failed. Boot tests run directly where KVM works and inside a nested
# KVM host where it does not (scripts/boot-tests.sh, docs/testing.md).
set -uo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

boot=1
fuzz=1
for arg in "$@"; do
    case $arg in
    --no-boot) boot=0 ;;
    --no-fuzz) fuzz=0 ;;
    *) die "usage: $0 [--no-boot] [--no-fuzz]" ;;
    esac
done
# Seconds each fuzz target runs (from the committed seeds and kept crashers).
FUZZ_SECONDS=${VMM_FUZZ_SECONDS:-20}

check_prerequisites() {
    local missing=() c
    for c in cargo rustfmt cargo-clippy jq tmux promtool; do
        command -v "$c" >/dev/null 2>&1 || missing+=("$c")
    done
    if ((fuzz)); then
        command -v cargo-fuzz >/dev/null 2>&1 || missing+=(cargo-fuzz)
    fi
    if ((boot)); then
        for c in qemu-system-x86_64 busybox cpio gzip gcc readelf objcopy apt-get apt-cache dpkg-deb timeout; do
            command -v "$c" >/dev/null 2>&1 || missing+=("$c")
        done
        command -v busybox >/dev/null 2>&1 && ! file_is_static "$(command -v busybox)" &&
            missing+=("a static busybox (busybox-static)")
        [[ -e /usr/lib/x86_64-linux-gnu/libc.a ]] || missing+=("libc.a (libc6-dev)")
    fi
    if ((${#missing[@]})); then
        log "missing: ${missing[*]}"
        log "install them with scripts/install-deps.sh (as root)"
        exit 1
    fi
}

STAGES=()
RESULTS=()
PASSED=0
FAILED=0
FAILED_STAGES=0

# Runs one stage with its output tee'd to LOG; records its result and time.
run_stage() {
    local name=$1 log=$2 started=$SECONDS status=0
    shift 2
    echo
    echo "==== $name: $*"
    "$@" 2>&1 | tee "$log" || status=$?
    STAGES+=("$name")
    if ((status == 0)); then
        RESULTS+=("ok      $((SECONDS - started)) s")
    else
        RESULTS+=("FAILED  $((SECONDS - started)) s (exit status $status)")
        FAILED_STAGES=$((FAILED_STAGES + 1))
    fi
    return 0
}

# Adds the counts on the LOG's summary lines that match PATTERN to the totals:
#   nextest:    "Summary [ 1.2s] 12 tests run: 11 passed, 1 failed, 6 skipped"
#   libtest:    "test result: ok. 5 passed; 0 failed; ..."
#   boot tests: "boot tests: 5 passed, 0 failed" (the sum of its binaries' libtest lines)
count_tests() {
    local log=$1 pattern=$2 lines
    lines=$(grep -aE "$pattern" "$log")
    PASSED=$((PASSED + $(grep -oE '[0-9]+ passed' <<<"$lines" | awk '{ s += $1 } END { print s + 0 }')))
    FAILED=$((FAILED + $(grep -oE '[0-9]+ failed' <<<"$lines" | awk '{ s += $1 } END { print s + 0 }')))
}

unit_tests() {
    local status=0
    if command -v cargo-nextest >/dev/null 2>&1; then
        # nextest leaves doc tests out; they run after it.
        cargo nextest run --no-fail-fast || status=$?
        cargo test --doc || status=$?
    else
        cargo test --no-fail-fast || status=$?
    fi
    return "$status"
}

# The fuzz crate's own checks, then every target for FUZZ_SECONDS in a fresh corpus, so a
# run depends only on what is committed. Each part reports its own counts. The crate's lint
# and test builds share the main target directory, where the earlier stages left most of
# the dependencies built.
fuzz_stage() {
    local status=0 corpus
    cargo fmt --check --manifest-path fuzz/Cargo.toml || status=$?
    CARGO_TARGET_DIR=$REPO/target cargo clippy --manifest-path fuzz/Cargo.toml --all-targets -- -D warnings || status=$?
    CARGO_TARGET_DIR=$REPO/target cargo test --manifest-path fuzz/Cargo.toml || status=$?
    corpus=$(mktemp -d)
    VMM_FUZZ_CORPUS=$corpus "$REPO/scripts/fuzz.sh" "$FUZZ_SECONDS" || status=$?
    rm -rf "$corpus"
    return "$status"
}

main() {
    cd "$REPO" || exit 1
    local deps_args=()
    ((fuzz)) && deps_args+=(--fuzz)
    bash "$REPO/scripts/install-deps.sh" "${deps_args[@]}" || exit 1
    check_prerequisites
    local started=$SECONDS logs
    LOGS=$(mktemp -d)
    trap 'rm -rf "$LOGS"' EXIT
    logs=$LOGS

    run_stage fmt "$logs/fmt" cargo fmt --check
    run_stage clippy "$logs/clippy" cargo clippy --all-targets --all-features -- -D warnings
    run_stage tests "$logs/tests" unit_tests
    count_tests "$logs/tests" '^ *Summary .* tests? run:|^test result:'
    if ((fuzz)); then
        run_stage fuzz "$logs/fuzz" fuzz_stage
        count_tests "$logs/fuzz" '^test result:|^fuzz targets: [0-9]'
    fi
    local mode="not run"
    if ((boot)); then
        run_stage "boot tests" "$logs/boot" "$REPO/scripts/boot-tests.sh"
        count_tests "$logs/boot" '^boot tests: [0-9]'
        mode=$(sed -n 's/^boot test mode: //p' "$logs/boot" | head -n1)
    fi

    echo
    echo "==== summary ($((SECONDS - started)) s, boot tests: ${mode:-unknown})"
    local i
    for i in "${!STAGES[@]}"; do
        printf '  %-11s %s\n' "${STAGES[$i]}" "${RESULTS[$i]}"
    done
    if ((boot)) && ! grep -qE '^boot tests: [0-9]+ passed' "$logs/boot"; then
        echo "  the boot tests did not report their counts"
    fi
    if ((boot)); then
        # Retries are granted only for faults of the nested environment; boot-tests.sh
        # counts them by class (docs/testing.md, "Retries").
        grep -a '^environment faults retried, ' "$logs/boot" ||
            echo "  the boot tests did not report their retries"
        # From the per-test lines, so that tests retried in an L1 that later froze (and never
        # printed its own summary) count too.
        echo "boot tests that passed only on a retry: $(tr -d '\r' <"$logs/boot" | awk '
            /^=== run [0-9]+ of .* failed/ { sub(/^=== run [0-9]+ of /, ""); sub(/ failed.*/, ""); failed[$0] = 1 }
            /^=== PASS / { sub(/^=== PASS /, ""); if ($0 in failed) n++ }
            END { print n + 0 }')"
    fi
    echo "tests: $PASSED passed, $FAILED failed"
    ((FAILED_STAGES == 0))
}

main
