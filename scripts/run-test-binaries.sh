#!/bin/sh
# Runs the boot tests (the `#[ignore]`d tests) of each given test binary, one test at a time,
# and adds up libtest's counts:
#
#   run-test-binaries.sh BINARY... [-- LIBTEST-ARGS...]
#
# Prints each binary's output as it comes, then `boot tests: N passed, M failed`.
# Exits 0 only if every binary succeeded and at least one test ran.
#
# VMM_TEST_ATTEMPTS (default 1) lets a failed test run again on its own, up to that many
# runs in all; the nested runner sets it because guests under QEMU's TCG now and then stall
# whatever the VMM does (docs/testing.md). Each failed run stays in the output, a test
# counts as passed only if a later run passed, and `passed only on a retry: N` is printed.
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

attempts=${VMM_TEST_ATTEMPTS:-1}
case $attempts in
'' | *[!0-9]* | 0) echo "VMM_TEST_ATTEMPTS must be a positive integer, not '$attempts'" >&2; exit 2 ;;
esac

# Names listed in the last "failures:" block of libtest's output in file $1.
failed_test_names() {
    awk '/^failures:$/ { block = ""; inblock = 1; next }
         inblock && /^    [^ ]/ { sub(/^    /, ""); block = block $0 "\n"; next }
         inblock && !/^$/ { inblock = 0 }
         END { printf "%s", block }' "$1"
}

# Runs test $2 of binary $1 alone until it passes or the attempts run out; 0 if it passed.
retry_test() {
    n=2
    while [ "$n" -le "$attempts" ]; do
        echo "=== retry $n of $attempts: $1 --ignored --exact $2"
        if "$1" --ignored --test-threads=1 --exact "$2" 2>&1; then
            echo "=== $2 passed on run $n of $attempts (it failed before: see above)"
            return 0
        fi
        n=$((n + 1))
    done
    return 1
}

work=$(mktemp -d "${TMPDIR:-/tmp}/boot-tests.XXXXXX") || exit 2
passed=0
failed=0
retried_ok=0
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
    if [ "$status" != 0 ] && [ "$attempts" -gt 1 ] && [ -n "$result" ]; then
        still_failing=0
        bin_failed=${f:-0}
        for t in $(failed_test_names "$work/out"); do
            if retry_test "$bin" "$t"; then
                passed=$((passed + 1))
                failed=$((failed - 1))
                bin_failed=$((bin_failed - 1))
                retried_ok=$((retried_ok + 1))
            else
                still_failing=1
            fi
        done
        [ "$still_failing" = 1 ] || [ "$bin_failed" -ne 0 ] || status=0
    fi
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
[ "$attempts" -le 1 ] || echo "passed only on a retry: $retried_ok"
if [ -n "$failing_bins" ] || [ "$failed" -ne 0 ]; then
    exit 1
fi
if [ "$passed" -eq 0 ]; then
    echo "no boot test ran" >&2
    exit 1
fi
exit 0
