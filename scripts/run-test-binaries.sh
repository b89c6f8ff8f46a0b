#!/bin/sh
# Runs the boot tests (the `#[ignore]`d tests) of each given test binary, one test at a time,
# and adds up libtest's counts:
#
#   run-test-binaries.sh BINARY... [-- LIBTEST-ARGS...]
#
# Prints each binary's output as it comes, then `boot tests: N passed, M failed`.
# Exits 0 only if every binary succeeded and at least one test ran.
# POSIX sh on purpose: it runs on the host and inside L1's busybox alike.

bins=""
while [ $# -gt 0 ]; do
    if [ "$1" = "--" ]; then
        shift
        break
    fi
    bins="$bins $1"
    shift
done

if [ -z "$bins" ]; then
    echo "usage: $0 BINARY... [-- LIBTEST-ARGS...]" >&2
    exit 2
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/boot-tests.XXXXXX") || exit 2
passed=0
failed=0
failing_bins=""
for bin in $bins; do
    name=$(basename "$bin")
    echo "=== $name: ${bin} --ignored --test-threads=1 $*"
    # The status travels through a file: a pipeline's status is tee's.
    { "$bin" --ignored --test-threads=1 "$@" 2>&1; echo $? >"$work/status"; } | tee "$work/out"
    status=$(cat "$work/status")
    # libtest: "test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 2 filtered out; ..."
    result=$(grep '^test result:' "$work/out" | tail -n 1)
    p=$(echo "$result" | sed -n 's/.* \([0-9][0-9]*\) passed;.*/\1/p')
    f=$(echo "$result" | sed -n 's/.* \([0-9][0-9]*\) failed;.*/\1/p')
    passed=$((passed + ${p:-0}))
    failed=$((failed + ${f:-0}))
    if [ "$status" != 0 ]; then
        failing_bins="$failing_bins $name"
        # A binary that died before its summary (a panic outside a test, a signal)
        # counts as one failure so it cannot go unnoticed.
        [ -n "$result" ] || failed=$((failed + 1))
    fi
done
rm -rf "$work"

[ -z "$failing_bins" ] || echo "failing test binaries:$failing_bins"
echo "boot tests: $passed passed, $failed failed"
if [ -n "$failing_bins" ] || [ "$failed" -ne 0 ]; then
    exit 1
fi
if [ "$passed" -eq 0 ]; then
    echo "no boot test ran" >&2
    exit 1
fi
exit 0
