#!/usr/bin/env bash
# Runs the boot tests (every `#[ignore]`d integration test) against real guests:
#
#   scripts/boot-tests.sh [LIBTEST-ARGS...]      e.g. scripts/boot-tests.sh guest_poweroff
#
# Builds the guest kernels (the stock one and the minimal one) and the initramfs, picks the
# mode (VMM_TEST_MODE=direct|nested, else scripts/kvm-probe.sh decides), then runs every
# integration test binary with `--ignored`, one test at a time: on this machine directly,
# or inside one nested KVM host (L1) under QEMU's TCG. Arguments are passed to each test
# binary (a name filter, --exact, ...). Ends with `boot tests: N passed, M failed`; fails
# if any failed or none ran.
#
# Nested, a failure is run again only when the nested environment caused it (a guest
# triple fault or spinning stall, a stuck L1 CPU: scripts/run-test-binaries.sh; an L1 that
# panicked or froze: here), and the end counts those retries by class in
# `environment faults retried, …` lines (docs/testing.md, "Retries").
#
# Environment: VMM_TEST_MODE, VMM_BIN (direct mode only: another vmm binary), the
# VMM_TEST_* and VMM_L1_* variables of docs/testing.md, VMM_L1_RUNS (L1s that may be
# started in all when one panics or freezes, default 3) and VMM_BOOT_TESTS_BUDGET (seconds
# all nested runs may take together, default 4200).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

# Variables the tests read, carried into L1 when set here.
FORWARDED_VARS=(VMM_TEST_TIMEOUT_SCALE VMM_TEST_CONSOLE RUST_BACKTRACE RUST_LOG)

run_direct() {
    local artifacts vmm tests
    artifacts=$(build_test_artifacts native) || die "building the tests failed"
    vmm=${VMM_BIN:-$(awk -F'\t' '$1 == "bin" { print $3 }' <<<"$artifacts")}
    mapfile -t tests < <(awk -F'\t' '$1 == "test" { print $3 }' <<<"$artifacts")
    ((${#tests[@]})) || die "cargo built no integration test binary"
    log "running ${#tests[@]} test binaries directly with $vmm"
    local output=$CACHE_DIR/direct-tests.log status=0
    VMM_BIN=$vmm VMM_GUEST_KERNEL=$CACHE_DIR/vmlinuz \
        VMM_GUEST_MINIMAL_KERNEL=$CACHE_DIR/vmlinuz-minimal \
        VMM_GUEST_INITRD=$CACHE_DIR/initramfs.cpio.gz RUST_BACKTRACE=${RUST_BACKTRACE:-1} \
        "$REPO/scripts/run-test-binaries.sh" "${tests[@]}" -- "$@" | tee "$output" || status=$?
    retry_summary direct "$output"
    return "$status"
}

# Prints `CLASS COUNT` pairs, most frequent first, as ` (a 2, b 1)`, or nothing.
classes_of() {
    sort | uniq -c | sort -k1,1nr -k2,2 | awk '
        { sep = NR == 1 ? " (" : ", "; printf "%s%s %s", sep, $2, $1 }
        END { if (NR) print ")" }'
}

# Prints, from the output FILEs of every run in MODE, the retries granted for a fault of
# the nested environment, by class (the lines' formats: tests/common/mod.rs,
# run-test-binaries.sh and run_nested below). scripts/test.sh repeats them in its summary.
#   retry_summary MODE FILE...
retry_summary() {
    local mode=$1 lines
    shift
    lines=$(cat "$@" | tr -d '\r')
    local boots runs hosts
    boots=$(sed -nE 's/^boot attempt [0-9]+ of [0-9]+ failed: ([a-z0-9-]+).*; booting again.*/\1/p' <<<"$lines")
    runs=$(sed -nE 's/^=== run [0-9]+ of .* failed \(exit status [0-9]+\): ([a-z0-9-]+).*; running it again$/\1/p' <<<"$lines")
    hosts=$(sed -nE 's/^=== L1 run [0-9]+ ended: ([a-z0-9-]+) .*; starting a fresh L1.*/\1/p' <<<"$lines")
    echo "environment faults retried, boot attempts: $(grep -c . <<<"$boots")$(grep . <<<"$boots" | classes_of)"
    echo "environment faults retried, test runs: $(grep -c . <<<"$runs")$(grep . <<<"$runs" | classes_of)"
    [[ $mode != nested ]] ||
        echo "environment faults retried, L1 hosts replaced: $(grep -c . <<<"$hosts")$(grep . <<<"$hosts" | classes_of)"
}

# The test L1 was running when it ended, from its console: the last `=== RUN` without a
# `=== PASS` or `=== FAIL` after it; nothing when it was between tests.
test_in_progress() {
    tr -d '\r' <"$1" | awk '
        /^=== RUN / { current = $3 " " $4 }
        /^=== (PASS|FAIL) / { current = "" }
        END { print current }'
}

# Copies an executable into the payload without its debug sections: L1 holds the payload
# in RAM, and debug info would multiply its size. Symbols stay, for backtraces.
install_stripped() {
    objcopy --strip-debug "$1" "$2"
    chmod 0755 "$2"
}

# Copies promtool (tests/common/promtool.rs runs it) into DIR as DIR/promtool, runnable in
# L1. Debian's is a Go program linked against glibc, which L1 lacks: it travels with its
# loader and libraries, and DIR/promtool starts it through that loader. Without promtool
# on this host nothing is copied, and the tests that need it fail, saying so.
install_promtool() {
    local dir=$1 tool lib loader
    tool=$(command -v promtool) || return 0
    mkdir -p "$dir"
    if file_is_static "$tool"; then
        install_stripped "$tool" "$dir/promtool"
        return
    fi
    mkdir -p "$dir/lib"
    cp "$tool" "$dir/promtool.bin"
    for lib in $(ldd "$tool" | grep -o '/[^ ]*'); do
        cp -L "$lib" "$dir/lib/"
    done
    loader=$(basename "$(ldd "$tool" | grep -o '/[^ ]*ld-linux[^ ]*')")
    printf '#!/bin/sh\nexec /payload/promtool/lib/%s --library-path /payload/promtool/lib /payload/promtool/promtool.bin "$@"\n' \
        "$loader" >"$dir/promtool"
    chmod 0755 "$dir/promtool"
}

run_nested() {
    [[ -z ${VMM_BIN:-} ]] || die "VMM_BIN is honoured in direct mode only (L1 runs the static vmm built here)"
    need_cmds objcopy jq
    local artifacts
    artifacts=$(build_test_artifacts static) || die "building the static tests failed"

    local payload=$CACHE_DIR/nested/payload-tests
    rm -rf "$payload"
    mkdir -p "$payload/tests"
    local kind name path names=()
    while IFS=$'\t' read -r kind name path; do
        file_is_static "$path" || die "$path is not statically linked"
        case $kind in
        bin) install_stripped "$path" "$payload/vmm" ;;
        test)
            install_stripped "$path" "$payload/tests/$name"
            names+=("/payload/tests/$name")
            ;;
        esac
    done <<<"$artifacts"
    [[ -x $payload/vmm ]] || die "cargo built no vmm binary"
    ((${#names[@]})) || die "cargo built no integration test binary"
    cp "$CACHE_DIR/vmlinuz" "$CACHE_DIR/vmlinuz-minimal" "$CACHE_DIR/initramfs.cpio.gz" \
        "$payload/"
    install -m 0755 "$REPO/scripts/run-test-binaries.sh" "$payload/"
    install_promtool "$payload/promtool"

    {
        echo "#!/bin/sh"
        echo "export VMM_BIN=/payload/vmm VMM_GUEST_KERNEL=/payload/vmlinuz"
        echo "export VMM_GUEST_MINIMAL_KERNEL=/payload/vmlinuz-minimal"
        echo "export VMM_GUEST_INITRD=/payload/initramfs.cpio.gz RUST_BACKTRACE=${RUST_BACKTRACE:-1}"
        # Nested guests now and then triple-fault or stall spinning whatever the VMM
        # (docs/testing.md, "Retries"). The harness then says so (VMM_TEST_NESTED), and
        # only such a failure is granted another boot (GuestVmBuilder::boot) ...
        echo "export VMM_TEST_NESTED=1"
        echo "export VMM_TEST_BOOT_ATTEMPTS=${VMM_TEST_BOOT_ATTEMPTS:-3}"
        # ... or another run of the whole test, as is an L1 CPU stuck in a vmm; every
        # run is logged and every retry named and counted.
        echo "export VMM_TEST_ATTEMPTS=${VMM_TEST_ATTEMPTS:-4}"
        # A run that outlives every timeout of its own is ended (with its VMMs) after this.
        echo "export VMM_TEST_WATCHDOG=${VMM_TEST_WATCHDOG:-1200}"
        # Tests decided in an earlier L1 which then panicked or froze (below).
        echo "export VMM_TEST_SKIP_FILE=/payload/passed VMM_TEST_FAILED_FILE=/payload/failed"
        if [[ -x $payload/promtool/promtool ]]; then
            echo "export VMM_PROMTOOL=/payload/promtool/promtool"
        fi
        # QEMU's TCG does not let L1's KVM intercept an L2 XSETBV, so a guest's XCR0 and
        # KVM's idea of it part ways and AVX state is clobbered on exits (docs/testing.md).
        # `quiet` keeps the boot log off the serial port: every character written there is
        # a VM exit, each costly under TCG and each a chance to hit QEMU's SVM bugs.
        echo "export VMM_TEST_GUEST_CMDLINE=$(sh_quote "${VMM_TEST_GUEST_CMDLINE:-clearcpuid=xsave quiet}")"
        local var
        for var in "${FORWARDED_VARS[@]}"; do
            [[ -n ${!var:-} && $var != RUST_BACKTRACE ]] && echo "export $var=$(sh_quote "${!var}")"
        done
        echo "exec /payload/run-test-binaries.sh ${names[*]} -- $(sh_quote "$@")"
    } >"$payload/run"
    chmod 0755 "$payload/run"

    # An L1 that panics or freezes as a whole (seen under TCG now and then) is ended by
    # run-l1.sh with status 125, and its outcome file says which. Then a fresh L1 runs the
    # tests not decided yet (the one in progress among them), within the time budget, so
    # one lost L1 does not cost the whole suite. An L1 that timed out or ended otherwise
    # is not the environment's known fault: nothing more is run.
    local runs=${VMM_L1_RUNS:-3} run=1 status left per_run word sentence current
    local deadline=$((SECONDS + ${VMM_BOOT_TESTS_BUDGET:-4200}))
    # The heartbeat comes every 20 s: five minutes of silence is a frozen L1, not a slow one
    # (seen in CI: a soft lockup on one L1 CPU and a timer that stopped on the other).
    export VMM_L1_STALL_TIMEOUT=${VMM_L1_STALL_TIMEOUT:-300}
    local outcome=$CACHE_DIR/nested/l1-outcome consoles=()
    : >"$payload/passed"
    : >"$payload/failed"
    rm -f "$CACHE_DIR"/nested/l1-console-*.log
    log "running ${#names[@]} test binaries inside L1"
    while :; do
        left=$((deadline - SECONDS))
        # An L1 may use what is left of the budget: a slow L1 (a loaded host) still gets
        # through the suite, and a frozen or panicked one is caught long before, by the
        # heartbeat or its own kernel log.
        per_run=${VMM_L1_TIMEOUT:-$left}
        ((per_run <= left)) || per_run=$left
        consoles+=("$CACHE_DIR/nested/l1-console-$run.log")
        status=0
        rm -f "$outcome"
        VMM_L1_TIMEOUT=$per_run "$REPO/scripts/nested/run-l1.sh" --outcome-file "$outcome" \
            "$payload" | tee "${consoles[-1]}" || status=$?
        ((status == 125)) || break
        word=$(cut -f1 "$outcome" 2>/dev/null || echo ended)
        sentence=$(cut -f2- "$outcome" 2>/dev/null || echo "L1 ended without saying how")
        current=$(test_in_progress "${consoles[-1]}")
        tr -d '\r' <"${consoles[-1]}" | sed -n 's/^=== PASS \([^ ]*\) \([^ ]*\)$/\1 \2/p' \
            >>"$payload/passed"
        tr -d '\r' <"${consoles[-1]}" | sed -n 's/^=== FAIL \([^ ]*\) \([^ ]*\).*/\1 \2/p' \
            >>"$payload/failed"
        left=$((deadline - SECONDS))
        local ended="=== L1 run $run ended: l1-$word between tests: $sentence"
        [[ -z $current ]] || ended="=== L1 run $run ended: l1-$word during $current: $sentence"
        # Each verdict goes into this L1's console log too, where retry_summary counts it.
        if [[ $word != panic && $word != frozen ]]; then
            echo "$ended; not the nested environment's known fault, so nothing more is run" |
                tee -a "${consoles[-1]}"
            break
        fi
        if ((run >= runs)); then
            echo "$ended; that was the last of VMM_L1_RUNS=$runs L1s" | tee -a "${consoles[-1]}"
            break
        fi
        if ((left < 600)); then
            echo "$ended; only $left s of the budget are left, so no fresh L1" |
                tee -a "${consoles[-1]}"
            break
        fi
        run=$((run + 1))
        echo "$ended; starting a fresh L1 (run $run of $runs, $left s left of the budget)" \
            "for the tests not decided yet: $(wc -l <"$payload/passed") passed and" \
            "$(wc -l <"$payload/failed") failed so far" | tee -a "${consoles[-1]}"
    done
    retry_summary nested "${consoles[@]}"
    return "$status"
}

main() {
    need_cmds cargo jq
    "$REPO/scripts/guest-kernel.sh"
    "$REPO/scripts/guest-kernel.sh" --minimal
    "$REPO/scripts/guest-initramfs.sh"
    local mode
    mode=$(choose_mode)
    echo "boot test mode: $mode"
    local started=$SECONDS status=0
    if [[ $mode == direct ]]; then
        run_direct "$@" || status=$?
    else
        run_nested "$@" || status=$?
    fi
    echo "boot tests ($mode) took $((SECONDS - started)) s, exit status $status"
    return "$status"
}

main "$@"
