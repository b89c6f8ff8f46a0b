#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ (cargo fuzz, libFuzzer) for a while, one after the other.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]   SECONDS per target (default 60); all targets
#                                           unless some are named
#
# Each target starts from its committed seeds (fuzz/seeds/TARGET) and kept crashers
# (fuzz/regressions/TARGET) plus the corpus it grew before, in $VMM_FUZZ_CORPUS/TARGET
# (default fuzz/corpus, not committed). A crash stops that target, leaves the input in
# fuzz/artifacts/TARGET/ and makes the script fail; the others still run. The last line
# says how many targets ran clean: "fuzz targets: N passed, M failed".
#
# Builds on the stable toolchain: no sanitizer (`--sanitizer none`; the code under test has
# no unsafe of its own beyond system calls), with debug assertions and overflow checks on.
# Installs cargo-fuzz first if it is missing (scripts/install-deps.sh --fuzz).
set -uo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

seconds=${1:-60}
[[ $seconds =~ ^[0-9]+$ && $seconds -gt 0 ]] || die "usage: $0 [SECONDS] [TARGET...]"
shift $(($# > 0 ? 1 : 0))

FUZZ=$REPO/fuzz
CORPUS=${VMM_FUZZ_CORPUS:-$FUZZ/corpus}
# The flags every cargo fuzz command here takes; build and run must agree or run rebuilds.
FUZZ_FLAGS=(--sanitizer none --fuzz-dir "$FUZZ")

bash "$REPO/scripts/install-deps.sh" --fuzz || exit 1
cd "$REPO" || exit 1

mapfile -t all_targets < <(cargo fuzz list --fuzz-dir "$FUZZ")
targets=("$@")
((${#targets[@]})) || targets=("${all_targets[@]}")
for target in "${targets[@]}"; do
    [[ " ${all_targets[*]} " == *" $target "* ]] || die "no fuzz target $target (there are: ${all_targets[*]})"
done

log "building the fuzz targets"
cargo fuzz build "${FUZZ_FLAGS[@]}" || die "the fuzz targets do not build"

passed=0
failed=0
summary=()
for target in "${targets[@]}"; do
    mkdir -p "$CORPUS/$target" "$FUZZ/regressions/$target"
    out=$(mktemp)
    log "fuzzing $target for $seconds s"
    # libFuzzer adds what it finds to the first directory only.
    cargo fuzz run "${FUZZ_FLAGS[@]}" "$target" \
        "$CORPUS/$target" "$FUZZ/seeds/$target" "$FUZZ/regressions/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$out" 2>&1
    status=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out" | tail -n1)
    # libFuzzer's last status line: "#N DONE cov: E ft: F corp: C/SIZE ...".
    coverage=$(grep -aE '[[:space:]]DONE[[:space:]]' "$out" | tail -n1 | sed -n 's/.*cov: \([0-9]*\).*corp: \([0-9]*\).*/\1 edges, corpus of \2/p')
    if ((status == 0)); then
        passed=$((passed + 1))
        summary+=("$target: ${runs:-?} runs in $seconds s (${coverage:-coverage unknown}), no crash")
    else
        failed=$((failed + 1))
        # The panic message, libFuzzer's verdict and where it left the input.
        grep -aE "panicked at|^(assertion|thread)|ERROR: libFuzzer|Test unit written|^SUMMARY" "$out" | head -n 20
        summary+=("$target: FAILED after ${runs:-?} runs (exit status $status); reproduce with" \
            "cargo fuzz run ${FUZZ_FLAGS[*]} $target $(sed -n 's/.*Test unit written to //p' "$out" | tail -n1)")
    fi
    rm -f "$out"
done

echo
for line in "${summary[@]}"; do
    echo "fuzz $line"
done
echo "fuzz targets: $passed passed, $failed failed"
((failed == 0))
