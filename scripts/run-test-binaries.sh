#!/bin/sh
# Runs the boot tests (the `#[ignore]`d tests) of each given test binary, each test in a
# process of its own, and counts them:
#
#   run-test-binaries.sh BINARY... [-- LIBTEST-ARGS...]
#
# LIBTEST-ARGS select tests as libtest does (a name filter, --exact, --skip NAME); of them
# only --nocapture and --show-output also reach the runs. Every run's output is printed as
# it comes, followed by `=== PASS <binary> <test>` or `=== FAIL <binary> <test> …`; at the
# end `boot tests: N passed, M failed`. Exits 0 only if every test passed and at least one
# ran.
#
# - VMM_TEST_ATTEMPTS (default 1): runs a failed test may take in all. A failed run is run
#   again only for a fault of the nested environment (docs/testing.md, "Retries"), named
#   in `=== run N of <binary> <test> failed (exit status S): CLASS …`:
#     guest-triple-fault, guest-spinning  the run's own verdict, its last
#                                         `=== NESTED-FAULT CLASS …` line (tests/common)
#     l1-soft-lockup, l1-rcu-stall        new lines in this kernel's log during the run: a
#                                         CPU stuck inside a vmm thread, or an RCU stall
#   Any other failure ends the test at once: `=== FAIL <binary> <test> not retried: WHY`.
#   The test counts as passed only if a later run passed; every failed run stays in the
#   output, and the end says how many runs were retried, by class.
# - VMM_TEST_WATCHDOG (seconds, default 1500): a run still going after that long is killed
#   with every process it started (the VMMs too) and counts as a failed run. The tests'
#   own timeouts end a stuck test long before; this guards against a hang they miss.
# - VMM_TEST_LOCKUP_GRACE (seconds, default 60): a run still going that long after this
#   kernel reported a soft lockup in one of its vmm threads is killed the same way: a CPU
#   stuck inside KVM_RUN holds a vmm that no signal ends, and the test waiting for it.
# - VMM_TEST_SKIP_FILE: lines `<binary> <test>` of tests that already passed (in an earlier
#   L1 that stopped responding, say); they are not run again and count as passed.
# - VMM_TEST_FAILED_FILE: lines `<binary> <test>` of tests that already failed for good;
#   they are not run again and count as failed.
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
lockup_grace=${VMM_TEST_LOCKUP_GRACE:-60}
case $lockup_grace in
'' | *[!0-9]*) echo "VMM_TEST_LOCKUP_GRACE must be a number of seconds, not '$lockup_grace'" >&2; exit 2 ;;
esac
skip_file=${VMM_TEST_SKIP_FILE:-}
if [ -n "$skip_file" ] && [ ! -r "$skip_file" ]; then
    echo "VMM_TEST_SKIP_FILE names '$skip_file', which cannot be read" >&2
    exit 2
fi
failed_file=${VMM_TEST_FAILED_FILE:-}
if [ -n "$failed_file" ] && [ ! -r "$failed_file" ]; then
    echo "VMM_TEST_FAILED_FILE names '$failed_file', which cannot be read" >&2
    exit 2
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/run-test-binaries.XXXXXX") || exit 2
trap 'rm -rf "$work"' EXIT

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

# The lines of this kernel's log, or none when it cannot be read (an unprivileged user).
kernel_log() {
    dmesg 2>/dev/null
}

# The kernel log's lines after the first $1, one of them per fault that ends a run: a soft
# lockup of a CPU running a vmm thread (vmm, vcpuN, vmm-…), or an RCU stall.
l1_stalls_since() {
    kernel_log | tail -n "+$(($1 + 1))" |
        grep -E 'soft lockup.*\[(vmm|vcpu[0-9]+)[^]:]*:[0-9]+\]|rcu: INFO: .*stall'
}

# The class of an L1 stall line: l1-soft-lockup or l1-rcu-stall.
l1_stall_class() {
    case $1 in
    *"soft lockup"*) echo l1-soft-lockup ;;
    *) echo l1-rcu-stall ;;
    esac
}

# Runs test $2 of binary $1 once, in a session of its own so that the watchdog can end it
# with everything it started; its output goes to stdout and to $work/out. Returns its exit
# status (137 when the watchdog killed it). $work/ended-by names why the watchdog did.
run_once() {
    rm -f "$work/status" "$work/ended-by"
    kernel_lines=$(kernel_log | wc -l)
    # The shell between setsid and the test keeps the output flowing to stdout while
    # saving a copy, and records the test's status (the pipeline's is tee's).
    # shellcheck disable=SC2016,SC2086 # expanded by that shell; run_flags holds whole flags
    setsid sh -c '{ "$@" 2>&1; echo "$?" >"$0/status"; } | tee "$0/out"' "$work" \
        "$1" --ignored --test-threads=1 --exact "$2" $run_flags &
    pid=$!
    # A background job of a shell without job control is no group leader, so setsid made
    # that shell one in place: its pid is the group's id.
    group=$pid
    # The watchdog polls each second rather than sleeping once, so that it ends by itself
    # soon after the run and leaves no sleeping process behind. Every 10 s it also reads the
    # kernel log for a CPU stuck in a vmm.
    (
        waited=0
        stuck_at=""
        while [ "$waited" -lt "$watchdog" ]; do
            sleep 1
            kill -0 "$pid" 2>/dev/null || exit 0
            waited=$((waited + 1))
            if [ -z "$stuck_at" ] && [ $((waited % 10)) -eq 0 ]; then
                stuck=$(l1_stalls_since "$kernel_lines" | head -n 1)
                if [ -n "$stuck" ]; then
                    stuck_at=$waited
                    echo "=== watchdog: the kernel reports a stuck CPU during $2: $stuck"
                    echo "=== watchdog: ending the run in $lockup_grace s unless it ends first"
                fi
            fi
            if [ -n "$stuck_at" ] && [ $((waited - stuck_at)) -ge "$lockup_grace" ]; then
                echo "=== watchdog: $2 still running $lockup_grace s after the stuck CPU; killing it and its VMMs"
                show_group
                echo "$(l1_stall_class "$stuck") $stuck" >"$work/ended-by"
                kill -9 "-$group"
                exit 0
            fi
        done
        echo "=== watchdog: $2 still running after $watchdog s; killing it and its VMMs"
        show_group
        echo "watchdog the run was still going after $watchdog s" >"$work/ended-by"
        kill -9 "-$group"
    ) </dev/null &
    dog=$!
    wait "$pid"
    wait "$dog"
    # Whatever the run left behind (a VMM its test failed to end) goes with it.
    kill -9 "-$group" 2>/dev/null
    status=137
    [ ! -s "$work/status" ] || status=$(cat "$work/status")
    return "$status"
}

# The last run's last verdict line from the harness (tests/common/fault.rs), if any.
last_verdict() {
    tr -d '\r' <"$work/out" | grep -E '^=== (NOT-)?NESTED-FAULT ' | tail -n 1
}

# Prints the environment fault that ended the last run, as `CLASS evidence…`, or nothing.
environment_fault() {
    ended_by=$(cat "$work/ended-by" 2>/dev/null)
    case $ended_by in
    l1-*)
        echo "$ended_by"
        return
        ;;
    esac
    # The harness's last verdict counts: a test may have judged an earlier guest too.
    case $(last_verdict) in
    "=== NESTED-FAULT "*)
        last_verdict | sed 's/^=== NESTED-FAULT //'
        return
        ;;
    esac
    stuck=$(l1_stalls_since "$kernel_lines" | head -n 1)
    [ -z "$stuck" ] || echo "$(l1_stall_class "$stuck") $stuck"
}

# Prints why the last run's failure is no environment fault.
not_retried_because() {
    ended_by=$(cat "$work/ended-by" 2>/dev/null)
    said=$(last_verdict | sed -n 's/^=== NOT-NESTED-FAULT //p')
    if [ -n "$said" ]; then
        echo "$said"
    elif [ -n "$ended_by" ]; then
        echo "${ended_by#watchdog }"
    else
        echo "it failed (exit status $1) with no environment fault named: a wrong value or a harness error, see above"
    fi
}

passed=0
failed=0
retried_ok=0
skipped=0
failing=""
: >"$work/retries"
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
        if [ -n "$failed_file" ] && grep -qxF "$name $t" "$failed_file"; then
            echo "=== SKIP $name $t (failed in an earlier run)"
            skipped=$((skipped + 1))
            failed=$((failed + 1))
            failing="$failing $name/$t"
            continue
        fi
        n=1
        ok=0
        why=""
        while :; do
            echo "=== RUN $name $t (run $n of $attempts)"
            run_once "$bin" "$t"
            status=$?
            if [ "$status" = 0 ]; then
                ok=1
                break
            fi
            fault=$(environment_fault)
            if [ -z "$fault" ]; then
                echo "=== run $n of $name $t failed (exit status $status)"
                why="not retried: $(not_retried_because "$status")"
                break
            fi
            if [ "$n" -ge "$attempts" ]; then
                echo "=== run $n of $name $t failed (exit status $status): $fault"
                if [ "$attempts" -gt 1 ]; then
                    why="after $n runs, each ended by a fault of the nested environment"
                else
                    why="not retried: VMM_TEST_ATTEMPTS=1"
                fi
                break
            fi
            echo "=== run $n of $name $t failed (exit status $status): $fault; running it again"
            echo "${fault%% *}" >>"$work/retries"
            n=$((n + 1))
        done
        if [ "$ok" = 1 ]; then
            echo "=== PASS $name $t"
            passed=$((passed + 1))
            [ "$n" -eq 1 ] || retried_ok=$((retried_ok + 1))
        else
            echo "=== FAIL $name $t $why"
            failed=$((failed + 1))
            failing="$failing $name/$t"
        fi
    done
done

[ -z "$failing" ] || echo "failing boot tests:$failing"
[ "$skipped" -eq 0 ] || echo "decided in an earlier run and not run again: $skipped"
echo "boot tests: $passed passed, $failed failed"
if [ "$attempts" -gt 1 ]; then
    echo "passed only on a retry: $retried_ok"
    echo "runs retried for a fault of the nested environment: $(wc -l <"$work/retries" | tr -d ' ')$(
        sort "$work/retries" | uniq -c | sort -k1,1nr -k2,2 | awk '
            { sep = NR == 1 ? " (" : ", "; printf "%s%s %s", sep, $2, $1 }
            END { if (NR) printf ")" }')"
fi
if [ "$failed" -ne 0 ]; then
    exit 1
fi
if [ "$passed" -eq 0 ]; then
    echo "no boot test ran" >&2
    exit 1
fi
exit 0
