#!/bin/sh
# Runs the boot tests (the `#[ignore]`d tests) of each given test binary, each test in a
# process of its own, and counts them:
#
#   run-test-binaries.sh BINARY... [-- LIBTEST-ARGS...]
#
# LIBTEST-ARGS select tests as libtest does (a name filter, --exact, --skip NAME); of them
# only --nocapture and --show-output also reach the runs. Every run's output is printed as
# it comes, followed by `=== PASS <binary> <test>` or `=== FAIL <binary> <test>`; at the end
# `boot tests: N passed, M failed`. Exits 0 only if every test passed and at least one ran.
#
# - VMM_TEST_ATTEMPTS (default 1): runs a failed test may take in all. The nested runner
#   sets it because guests under QEMU's TCG now and then stall whatever the VMM does
#   (docs/testing.md). Every failed run stays in the output, a test counts as passed only
#   if a later run passed, and `passed only on a retry: N` is printed.
# - VMM_TEST_WATCHDOG (seconds, default 1500): a run still going after that long is killed
#   with every process it started (the VMMs too) and counts as a failed run. The tests'
#   own timeouts end a stuck test long before; this guards against a hang they miss.
# - VMM_TEST_SKIP_FILE: lines `<binary> <test>` of tests that already passed (in an earlier
#   L1 that stopped responding, say); they are not run again and count as passed.
#
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
watchdog=${VMM_TEST_WATCHDOG:-1500}
case $watchdog in
'' | *[!0-9]* | 0) echo "VMM_TEST_WATCHDOG must be a positive number of seconds, not '$watchdog'" >&2; exit 2 ;;
esac
skip_file=${VMM_TEST_SKIP_FILE:-}
if [ -n "$skip_file" ] && [ ! -r "$skip_file" ]; then
    echo "VMM_TEST_SKIP_FILE names '$skip_file', which cannot be read" >&2
    exit 2
fi

# The flags that change how a run prints, forwarded to every run.
run_flags=""
for arg in "$@"; do
    case $arg in
    --nocapture | --show-output) run_flags="$run_flags $arg" ;;
    esac
done

# Prints what the processes of the run's group are doing, for a run the watchdog ends.
show_group() {
    echo "=== watchdog: processes of the run (pid, state, wait channel, command):"
    for dir in /proc/[0-9]*; do
        read -r line 2>/dev/null <"$dir/stat" || continue
        # Fields: pid (comm) state ppid pgrp; the comm of the processes that matter here
        # (the test binary, vmm) has no spaces.
        # shellcheck disable=SC2086 # split the stat line into its fields
        set -- $line
        [ "$5" = "$group" ] || continue
        echo "    $1 $3 $(cat "$dir/wchan" 2>/dev/null) $(tr '\0' ' ' <"$dir/cmdline" 2>/dev/null)"
    done
}

# Runs test $2 of binary $1 once, in a session of its own so that the watchdog can end it
# with everything it started; returns its exit status.
run_once() {
    # shellcheck disable=SC2086 # run_flags holds whole flags
    setsid "$1" --ignored --test-threads=1 --exact "$2" $run_flags 2>&1 &
    pid=$!
    # A background job of a shell without job control is no group leader, so setsid made
    # the test one in place: its pid is the group's id.
    group=$pid
    # The watchdog polls each second rather than sleeping once, so that it ends by itself
    # soon after the run and leaves no sleeping process behind.
    (
        waited=0
        while [ "$waited" -lt "$watchdog" ]; do
            sleep 1
            kill -0 "$pid" 2>/dev/null || exit 0
            waited=$((waited + 1))
        done
        echo "=== watchdog: $2 still running after $watchdog s; killing it and its VMMs"
        show_group
        kill -9 "-$group"
    ) </dev/null &
    dog=$!
    wait "$pid"
    status=$?
    wait "$dog"
    # Whatever the run left behind (a VMM its test failed to end) goes with it.
    kill -9 "-$group" 2>/dev/null
    return "$status"
}

passed=0
failed=0
retried_ok=0
skipped=0
failing=""
for bin in $bins; do
    name=$(basename "$bin")
    # libtest lists one `NAME: test` line per selected test.
    if ! listing=$("$bin" --ignored --list "$@" 2>&1); then
        echo "=== $name: cannot list its tests: $listing"
        failed=$((failed + 1))
        failing="$failing $name"
        continue
    fi
    for t in $(echo "$listing" | sed -n 's/: test$//p'); do
        if [ -n "$skip_file" ] && grep -qxF "$name $t" "$skip_file"; then
            echo "=== SKIP $name $t (passed in an earlier run)"
            skipped=$((skipped + 1))
            passed=$((passed + 1))
            continue
        fi
        n=1
        ok=0
        while [ "$n" -le "$attempts" ]; do
            echo "=== RUN $name $t (run $n of $attempts)"
            run_once "$bin" "$t"
            status=$?
            if [ "$status" = 0 ]; then
                ok=1
                break
            fi
            echo "=== run $n of $name $t failed (exit status $status)"
            n=$((n + 1))
        done
        if [ "$ok" = 1 ]; then
            echo "=== PASS $name $t"
            passed=$((passed + 1))
            [ "$n" -eq 1 ] || retried_ok=$((retried_ok + 1))
        else
            echo "=== FAIL $name $t"
            failed=$((failed + 1))
            failing="$failing $name/$t"
        fi
    done
done

[ -z "$failing" ] || echo "failing boot tests:$failing"
[ "$skipped" -eq 0 ] || echo "passed in an earlier run and not run again: $skipped"
echo "boot tests: $passed passed, $failed failed"
[ "$attempts" -le 1 ] || echo "passed only on a retry: $retried_ok"
if [ "$failed" -ne 0 ]; then
    exit 1
fi
if [ "$passed" -eq 0 ]; then
    echo "no boot test ran" >&2
    exit 1
fi
exit 0
