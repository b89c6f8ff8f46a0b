#!/usr/bin/env bash
# The control experiment for nested guest faults: do guests fault because of the vmm, or
# because of the nested environment (QEMU's emulated SVM under TCG)? Boots the same guest
# with the vmm and with QEMU, alternately, inside L1, and counts how each boot ended:
#
#   scripts/nested/fault-control.sh [BOOTS]      BOOTS per VMM, default 20
#   scripts/nested/fault-control.sh --report DIR  the table of an earlier run again
#
# Every boot: the stock guest kernel and busybox initramfs (scripts/guest-kernel.sh,
# scripts/guest-initramfs.sh), 2 vCPUs, 1 GiB, `clearcpuid=xsave`, the balloon with free
# page reporting, and an exit-heavy workload: two `dd` fill tmpfs while the kernel log is
# printed to the serial console twice, then a marker and a power-off. The vmm runs
# with `--balloon page-reporting`; QEMU 7.2 (this machine's, packed into L1 with its
# libraries, loader and firmware) with `-M microvm,acpi=on -enable-kvm -cpu host` and
# `-device virtio-balloon-device,free-page-reporting=on`.
#
# Each boot ends as one of: completed; triple fault (the vmm's message, or for QEMU, which
# turns the fault into a reset and exits under -no-reboot, a reset the guest did not ask
# for; L1's kernel records the KVM_EXIT_SHUTDOWN either way); guest panic; stall (the boot
# time limit passed: with a vCPU spinning in KVM_RUN, or all halted, or the guest was still
# printing, only too slow); L1 died (panicked or
# froze: a fresh L1 then goes on with the next boot); other. Each is placed in its phase:
# boot (before the guest's ready marker) or workload. At the end a table of the counts per
# VMM is printed and kept, with the raw logs of every boot and of every L1, under
# $VMM_CACHE_DIR/nested/fault-control/<date>-<label>/.
#
# Environment:
#   VMM_CONTROL_LABEL          names the L1 setting under test in the report (default: current)
#   VMM_CONTROL_BOOT_TIMEOUT   seconds one boot may take (default 600)
#   VMM_CONTROL_BUDGET         seconds the whole run may take (default 150 per boot + 600)
#   VMM_L1_CPU, VMM_L1_CPUS, VMM_L1_CMDLINE, VMM_L1_TCG, VMM_L1_MEM   the L1 setting
#                              (scripts/nested/run-l1.sh)
#   VMM_L1_STALL_TIMEOUT       seconds without L1's heartbeat before it counts as frozen
#                              (default here 240)
set -euo pipefail
# shellcheck source=../lib.sh
source "$(dirname "$0")/../lib.sh"

# The workload, run by the guest's /init after its ready marker (resources/guest/init):
# the kernel log goes to the serial console twice (each byte a port write, so a VM exit)
# while two writers fault in 256 MiB of tmpfs; freeing it gives page reporting work.
WORKLOAD='dd if=/dev/zero of=/tmp/a bs=1M count=128 2>/dev/null & dd if=/dev/zero of=/tmp/b bs=1M count=128 2>/dev/null & dmesg; dmesg; wait; rm -f /tmp/a /tmp/b; sleep 3; echo CONTROL-WORKLOAD-DONE'
GUEST_CMDLINE="clearcpuid=xsave vmmtest.run=\"$WORKLOAD\""

build_payload() {
    local payload=$1
    (cd "$REPO" && RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
        cargo build --bin vmm --target "$STATIC_TARGET")
    local vmm=$REPO/target/$STATIC_TARGET/debug/vmm
    file_is_static "$vmm" || die "$vmm is not statically linked"
    rm -rf "$payload"
    mkdir -p "$payload"
    objcopy --strip-debug "$vmm" "$payload/vmm"
    cp "$CACHE_DIR/vmlinuz" "$CACHE_DIR/initramfs.cpio.gz" "$payload/"
    install -m 0755 "$REPO/scripts/nested/fault-control-l1" "$payload/"
    printf '%s\n' "$GUEST_CMDLINE" >"$payload/guest-cmdline"
    bundle_qemu "$payload/qemu"
}

# Prints the value of KEY=value among the words of a CONTROL-RESULT line.
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }

# Splits an L1 run's output into one file per boot and kind: boots/NNN-VMM.KIND.
split_logs() {
    awk -v dir="$1" '
        /^CONTROL-LOG-BEGIN / {
            file = sprintf("%s/%03d-%s.%s", dir, $2, ($2 % 2 ? "vmm" : "qemu"), $3)
            printf "" > file
            copying = 1
            next
        }
        /^CONTROL-LOG-END / { copying = 0; close(file); next }
        copying { print >> file }
    ' "$2"
}

# Classifies boot N from its CONTROL-RESULT line and its files; prints
# `class<TAB>phase<TAB>detail`.
classify() {
    local n=$1 vmm=$2 result=$3 base status ready timed_out ticks shutdowns phase detail
    base=$(printf '%s/%03d-%s' "$BOOTS_DIR" "$n" "$vmm")
    status=$(field status "$result")
    ready=$(field ready "$result")
    timed_out=$(field timeout "$result")
    ticks=$(field vcpu_ticks "$result")
    shutdowns=$(field shutdown_exits "$result")
    phase=workload
    [[ $ready != - ]] || phase=boot
    local console=$base.console stderr=$base.stderr
    if [[ $status == 0 ]] && grep -aq '^VMMTEST-RUN-EXIT=0' "$console" &&
        grep -aq '^CONTROL-WORKLOAD-DONE' "$console"; then
        printf 'completed\t-\t\n'
        return
    fi
    local bytes panic
    bytes=$(wc -c <"$console")
    panic=$(grep -a -m 1 -o 'Kernel panic - not syncing: .*' "$console" || true)
    if grep -aq 'triple-faulted on vCPU' "$stderr" || [[ $shutdowns != - && $shutdowns -gt 0 ]]; then
        detail="$(grep -a -m 1 -o 'the guest triple-faulted on vCPU [0-9]*' "$stderr" || true)"
        detail+="${detail:+; }L1 saw $shutdowns KVM_EXIT_SHUTDOWN"
        # L1's record of the shutdown intercept: the guest's RIP, and the event it was
        # delivering (intr_info, error_code) when it faulted.
        detail+="$(grep -a -m 1 -o 'reason shutdown rip [^ ]*' "$base.trace" | sed 's/^reason shutdown/ at/')"
        detail+="$(grep -a -m 1 -o 'intr_info [^ ]* error_code [^ ]*' "$base.trace" | sed 's/^/, /')"
        detail+="; $bytes console bytes"
        printf 'triple fault\t%s\t%s\n' "$phase" "$detail"
    elif [[ -n $panic ]]; then
        printf 'guest panic\t%s\t%s\n' "$phase" "$panic"
    elif [[ $timed_out == 1 ]]; then
        # Still printing after the limit: slow, not stuck. Otherwise a vCPU thread at half
        # a CPU or more was running guest code all along (spinning), or none was (halted).
        local after busiest kind
        after=$(field output_after_limit "$result")
        busiest=$(tr ',' '\n' <<<"$ticks" | sed -n 's/.*:\([0-9][0-9]*\)$/\1/p' | sort -n | tail -n 1)
        if [[ $after =~ ^[0-9]+$ ]] && ((after > 0)); then
            kind="too slow"
        elif [[ -z $busiest ]]; then
            kind="stall, vCPUs unknown"
        elif ((busiest >= 50)); then
            kind="stall, spinning"
        else
            kind="stall, halted"
        fi
        local exits
        exits=$(field exits "$result")
        [[ $exits =~ ^[0-9]+$ ]] && exits="; VM exits in 2 s: $exits ($(field top "$result"))" || exits=""
        printf '%s\t%s\tvCPU ticks/s %s%s; %s bytes in the 5 s after the limit\n' \
            "$kind" "$phase" "$ticks" "$exits" "$after"
    elif [[ $vmm == qemu && $status == 0 && $shutdowns == - ]] &&
        ! grep -aq 'reboot: Restarting system' "$console"; then
        # Without L1's trace: QEMU exited as on a reset the guest never asked for.
        printf 'triple fault\t%s\treset not asked for by the guest (no trace); %s console bytes\n' \
            "$phase" "$bytes"
    else
        printf 'other\t%s\texit status %s; %s\n' "$phase" "$status" \
            "$(grep -av '^$' "$stderr" | tail -n 1)"
    fi
}

# Appends the boots of one L1 run to results.tsv; prints the index of the last boot that
# L1 started. Columns: boot vmm class phase elapsed ready host-load l1-load detail
# l1-warnings (lines of L1's kernel log during the boot that warn of a bug or a lockup).
collect_run() {
    local run_dir=$1 outcome=$2 line n vmm result class_line last=0 l1load hostload
    split_logs "$BOOTS_DIR" "$run_dir/console"
    while read -r line; do
        n=$(cut -d' ' -f2 <<<"$line")
        vmm=$(cut -d' ' -f3 <<<"$line")
        l1load=$(field l1load "$line")
        hostload=$(sed -n "s/^$n //p" "$run_dir/hostload" | tail -n 1)
        last=$n
        result=$(grep -a "^CONTROL-RESULT $n " "$run_dir/console" || true)
        if [[ -n $result ]]; then
            class_line=$(classify "$n" "$vmm" "$result")
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$n" "$vmm" \
                "$(cut -f1 <<<"$class_line")" "$(cut -f2 <<<"$class_line")" \
                "$(field elapsed "$result")" "$(field ready "$result")" "${hostload:--}" \
                "$l1load" "$(cut -f3 <<<"$class_line")" "$(field l1_warnings "$result")" \
                >>"$OUT/results.tsv"
        else
            # L1 ended while this boot ran.
            local phase=boot first_oops
            grep -aq "^CONTROL-READY $n " "$run_dir/console" && phase=workload
            first_oops=$(grep -a -m 1 -E 'BUG:|Kernel panic|general protection|double fault' \
                "$run_dir/kernel.log" || true)
            printf '%s\t%s\tL1 %s\t%s\t-\t-\t%s\t%s\t%s%s\t-\n' "$n" "$vmm" \
                "${outcome%%$'\t'*}" "$phase" "${hostload:--}" "$l1load" "${outcome#*$'\t'}" \
                "${first_oops:+; first sign: $first_oops}" >>"$OUT/results.tsv"
        fi
    done < <(grep -a '^CONTROL-START ' "$run_dir/console")
    echo "$last"
}

# Prints the table of counts per VMM from results.tsv.
report() {
    local vmm
    printf '%-5s %5s %9s %13s %13s %11s %14s %12s %8s %13s %13s %5s\n' VMM boots completed \
        'triple: boot' 'triple: work' 'guest panic' 'stall spinning' 'stall halted' \
        'too slow' 'L1 died: boot' 'L1 died: work' other
    for vmm in vmm qemu; do
        awk -F'\t' -v vmm="$vmm" '
            $2 == vmm {
                boots++
                if ($3 == "completed") done++
                else if ($3 == "triple fault" && $4 == "boot") tb++
                else if ($3 == "triple fault") tw++
                else if ($3 == "guest panic") panic++
                else if ($3 == "stall, spinning") spin++
                else if ($3 == "stall, halted") halt++
                else if ($3 == "too slow") slow++
                else if (($3 == "L1 panic" || $3 == "L1 frozen") && $4 == "boot") l1b++
                else if ($3 == "L1 panic" || $3 == "L1 frozen") l1w++
                else other++
            }
            END {
                printf "%-5s %5d %9d %13d %13d %11d %14d %12d %8d %13d %13d %5d\n", vmm, boots,
                    done, tb, tw, panic, spin, halt, slow, l1b, l1w, other
            }' "$OUT/results.tsv"
    done
    awk -F'\t' '$7 != "-" { n++; s += $7; if (min == "" || $7 < min) min = $7; if ($7 > max) max = $7 }
        END { if (n) printf "host load (1 min) at the end of each boot: mean %.1f, %.2f to %.2f\n", s / n, min, max }' \
        "$OUT/results.tsv"
    awk -F'\t' '$3 == "completed" { n[$2]++; s[$2] += $5 }
        END { for (v in n) printf "mean time of a completed boot, %s: %d s\n", v, s[v] / n[v] }' \
        "$OUT/results.tsv" | sort
    echo "L1 runs: $(cat "$OUT"/l1-*/outcome 2>/dev/null | cut -f1 | sort | uniq -c | awk '{ printf "%s%s %s", sep, $1, $2; sep = ", " }')"
    awk -F'\t' '$10 ~ /^[1-9]/ { n[$2]++ } END { for (v in n) printf "boots during which L1'"'"'s kernel warned (a lockup, a BUG), %s: %d\n", v, n[v] }' \
        "$OUT/results.tsv" | sort
    echo "boots that did not complete (boot, VMM, how, phase, seconds, detail):"
    awk -F'\t' '$3 != "completed" { printf "  %s %s: %s, %s, %s s; %s\n", $1, $2, $3, $4, $5, $9 }' \
        "$OUT/results.tsv"
}

main() {
    if [[ ${1:-} == --report ]]; then
        [[ -s ${2:-}/results.tsv ]] || die "usage: $0 --report DIR (a directory of an earlier run)"
        OUT=$2
        cat "$OUT/setting.txt"
        report
        return
    fi
    local per_vmm=${1:-20}
    [[ $per_vmm =~ ^[1-9][0-9]*$ ]] || die "usage: $0 [BOOTS] (boots per VMM, default 20)"
    local total=$((2 * per_vmm)) boot_timeout=${VMM_CONTROL_BOOT_TIMEOUT:-600}
    local budget=${VMM_CONTROL_BUDGET:-$((150 * total + 600))} label=${VMM_CONTROL_LABEL:-current}
    [[ $label =~ ^[A-Za-z0-9._+=,-]+$ ]] || die "VMM_CONTROL_LABEL may hold letters, digits and ._+=,- only"
    need_cmds cargo objcopy ldd qemu-system-x86_64
    "$REPO/scripts/guest-kernel.sh"
    "$REPO/scripts/guest-initramfs.sh"

    OUT=$CACHE_DIR/nested/fault-control/$(date +%Y%m%d-%H%M%S)-$label
    BOOTS_DIR=$OUT/boots
    mkdir -p "$BOOTS_DIR"
    local payload=$OUT/payload
    build_payload "$payload"
    : >"$OUT/results.tsv"
    {
        echo "label: $label"
        echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
        echo "host: $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)," \
            "$(free -g | awk '/^Mem:/ { print $2 }') GiB, $(. /etc/os-release && echo "$PRETTY_NAME")"
        echo "QEMU: $(qemu-system-x86_64 --version | head -n 1)"
        echo "guest kernel: $(cat "$CACHE_DIR/kernel.pkg"); cmdline: $GUEST_CMDLINE"
        echo "L1: VMM_L1_CPU=${VMM_L1_CPU:-(default)} VMM_L1_CPUS=${VMM_L1_CPUS:-(default)}" \
            "VMM_L1_CMDLINE=${VMM_L1_CMDLINE:-} VMM_L1_TCG=${VMM_L1_TCG:-} VMM_L1_MEM=${VMM_L1_MEM:-(default)}"
        echo "boots: $per_vmm per VMM, alternating; boot time limit $boot_timeout s; budget $budget s"
    } | tee "$OUT/setting.txt" >&2

    local deadline=$((SECONDS + budget)) next=1 run=0 idle_runs=0 last run_dir outcome
    export VMM_L1_STALL_TIMEOUT=${VMM_L1_STALL_TIMEOUT:-240}
    while ((next <= total)); do
        local left=$((deadline - SECONDS))
        # L1's own boot, then room for one whole boot.
        if ((left < boot_timeout + 60)); then
            log "the budget ($budget s) is nearly used up: stopping before boot $next"
            break
        fi
        run=$((run + 1))
        run_dir=$OUT/l1-$run
        mkdir -p "$run_dir"
        printf '#!/bin/sh\nexec /payload/fault-control-l1 %d %d %d\n' "$next" "$total" \
            "$boot_timeout" >"$payload/run"
        chmod 0755 "$payload/run"
        : >"$run_dir/hostload"
        log "L1 run $run: boots $next to $total ($left s of the budget left)"
        VMM_L1_TIMEOUT=$left "$REPO/scripts/nested/run-l1.sh" --kernel-log "$run_dir/kernel.log" \
            --outcome-file "$run_dir/outcome" "$payload" 2>>"$OUT/run-l1.log" |
            sed -u 's/\r//g' | tee "$run_dir/console" |
            grep -a --line-buffered -E '^CONTROL-(INFO|START|RESULT)' |
            while read -r line; do
                case $line in
                CONTROL-RESULT*)
                    echo "$(cut -d' ' -f2 <<<"$line") $(cut -d' ' -f1 /proc/loadavg)" >>"$run_dir/hostload"
                    log "$(date +%T) ${line#CONTROL-RESULT }"
                    ;;
                CONTROL-START*) log "$(date +%T) ${line#CONTROL-}, host load $(cut -d' ' -f1 /proc/loadavg)" ;;
                *) log "${line#CONTROL-INFO }" ;;
                esac
            done || true
        outcome=$(cat "$run_dir/outcome" 2>/dev/null || printf 'ended\trun-l1.sh left no outcome')
        last=$(collect_run "$run_dir" "$outcome")
        log "L1 run $run ended: ${outcome#*$'\t'}"
        if ((last == 0)); then
            idle_runs=$((idle_runs + 1))
            ((idle_runs < 3)) || die "three L1 runs in a row booted no guest; see $OUT"
            continue
        fi
        idle_runs=0
        next=$((last + 1))
        if [[ ${outcome%%$'\t'*} == status ]] && ! grep -aq '^CONTROL-DONE' "$run_dir/console"; then
            die "the control job in L1 failed: ${outcome#*$'\t'}; see $run_dir"
        fi
    done

    report | tee "$OUT/summary.txt"
    echo "per boot: $OUT/results.tsv; logs: $OUT"
}

main "$@"
