#!/usr/bin/env bash
# The side-by-side benchmark: boots the same guests with vmm and with QEMU (microvm),
# alternating, several times each, and reports how they compare (docs/performance.md):
#
#   scripts/bench.sh [--runs N] [--only PARTS] [--baseline REV|PATH] [--no-qemu]
#                    [--guest-args WORDS] [--no-doc]
#   scripts/bench.sh --report DIR [--doc]
#
#   --runs N          repetitions of each scenario per VMM (default 5)
#   --only PARTS      a comma-separated list of: boot, minimal, reclaim, inflate, burst,
#                     timeline (= reclaim,inflate,burst), density, backings, slack.
#                     Default: everything but backings (vmm on --mem-backing anon, thp and
#                     hugetlb) and slack (vmm's idle guest: where its free memory is, and
#                     ways to get it back), which run vmm only: QEMU is left out when they
#                     are the only parts.
#   --baseline X      also run another vmm build, to measure a change against it: a git
#                     revision (built from `git archive`, e.g. `main`) or a vmm binary
#                     (static when nested). Reported as `baseline`, with vmm/baseline ratios.
#   --no-qemu         leave QEMU out (with --baseline: vmm against vmm only)
#   --guest-args W    extra words for every guest's kernel command line, with every VMM
#                     (e.g. 'init_on_alloc=0'); such a run never writes docs/performance.md
#   --no-doc          never write docs/performance.md
#   --report DIR      only write the report of an earlier run again (to DIR/report.md, or
#                     with --doc to docs/performance.md)
#
# The VMMs run on this machine where KVM can boot a guest, otherwise inside a nested KVM
# host (L1) under QEMU's TCG, like the boot tests (docs/testing.md; VMM_TEST_MODE forces
# either). Each run lives in $VMM_BENCH_DIR (default .cache/bench)/<date>-<label>/:
# run-info.json, steps/ (a directory per step: result.json, rss.csv, consoles, stderr),
# the L1 consoles, and report.md. A run of every part with vmm and QEMU and no baseline
# writes docs/performance.md and its plots (docs/performance/); any other run writes
# report.md in its directory and prints where.
#
# Environment: VMM_TEST_MODE, VMM_BENCH_DIR, VMM_BENCH_BUDGET (seconds the nested runs may
# take together, default 3 h), and the VMM_L1_* variables of docs/testing.md.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

BENCH_DIR=${VMM_BENCH_DIR:-$REPO/.cache/bench}
DOC=$REPO/docs/performance.md

usage() {
    die "usage: $0 [--runs N] [--only PARTS] [--baseline REV|PATH] [--no-qemu] [--guest-args WORDS] [--no-doc] | --report DIR [--doc]"
}

original_args=("$@")
runs=5 only="" baseline="" qemu=1 doc=auto report_dir="" guest_args=""
while (($#)); do
    case $1 in
    --runs) runs=${2:-} && shift ;;
    --only) only=${2:-} && shift ;;
    --baseline) baseline=${2:-} && shift ;;
    --no-qemu) qemu=0 ;;
    --guest-args) guest_args=${2:-} && shift ;;
    --no-doc) doc=no ;;
    --doc) doc=yes ;;
    --report) report_dir=${2:-} && shift ;;
    *) usage ;;
    esac
    shift
done
[[ $runs =~ ^[1-9][0-9]*$ ]] || die "--runs takes a positive number, not '$runs'"
# The backings and slack parts run vmm alone: no QEMU to bundle when nothing else is asked
# for.
if [[ -n $only ]]; then
    vmm_only=1
    for part in ${only//,/ }; do
        [[ $part == backings || $part == slack ]] || vmm_only=0
    done
    ((vmm_only)) && qemu=0
fi

# The static vmm-bench of this checkout, built once per run.
build_tool() {
    local out=$1
    (cd "$REPO" && RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
        cargo build --release --target "$STATIC_TARGET" --package vmm-bench --package vmm \
        --bin vmm-bench --bin vmm) >&2
    local bin
    mkdir -p "$out"
    for bin in vmm vmm-bench; do
        file_is_static "$REPO/target/$STATIC_TARGET/release/$bin" ||
            die "$bin is not statically linked"
        objcopy --strip-debug "$REPO/target/$STATIC_TARGET/release/$bin" "$out/$bin"
    done
}

# Puts the baseline vmm at $2: the binary $1, or built from git revision $1.
build_baseline() {
    local what=$1 dest=$2 sha src
    if [[ -f $what ]]; then
        cp "$what" "$dest" || die "cannot copy $what"
        echo "$what"
        return
    fi
    sha=$(git -C "$REPO" rev-parse --verify --quiet "$what^{commit}") ||
        die "--baseline $what is neither a file nor a git revision"
    src=$BENCH_DIR/baseline-src/$sha
    if [[ ! -e $src/Cargo.toml ]]; then
        rm -rf "$src"
        mkdir -p "$src"
        git -C "$REPO" archive "$sha" | tar -x -C "$src"
    fi
    log "building the baseline vmm from $what ($sha)"
    # The caller takes this function's output, so errexit does not reach in here: every
    # step checks its own failure.
    (cd "$src" && CARGO_TARGET_DIR=$BENCH_DIR/baseline-target \
        RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
        cargo build --release --target "$STATIC_TARGET" --package vmm --bin vmm) >&2 ||
        die "cannot build the baseline vmm from $what (see above)"
    objcopy --strip-debug "$BENCH_DIR/baseline-target/$STATIC_TARGET/release/vmm" "$dest" ||
        die "cannot copy the baseline vmm"
    echo "$what ($(git -C "$REPO" log -1 --format='%h %s' "$sha"))"
}

describe_host() {
    # shellcheck source=/dev/null
    printf '%s CPUs (%s), %s GiB, %s' "$(nproc)" \
        "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)" \
        "$(free -g | awk '/^Mem:/ { print $2 }')" "$(. /etc/os-release && echo "$PRETTY_NAME")"
}

describe_vmm() {
    local commit dirty=""
    commit=$(git -C "$REPO" log -1 --format='%h %s' 2>/dev/null || echo unknown)
    git -C "$REPO" diff --quiet HEAD 2>/dev/null || dirty=", with uncommitted changes"
    echo "$commit$dirty (release build, static)"
}

# Samples the machine's 1-minute load average every 30 s into FILE until killed.
sample_load() {
    while :; do
        cut -d' ' -f1 /proc/loadavg >>"$1"
        sleep 30
    done
}

# Cuts the files that `vmm-bench run --print` framed out of CONSOLE into DIR.
extract_files() {
    awk -v dir="$2" '
        /^BENCH-FILE-END$/ { if (file != "") close(file); file = ""; next }
        /^BENCH-FILE / {
            file = ""
            if ($2 ~ /^[A-Za-z0-9._\/-]+$/ && $2 !~ /\.\./) {
                file = dir "/" $2
                d = file
                sub(/\/[^\/]*$/, "", d)
                system("mkdir -p \"" d "\"")
                printf "" >file
            }
            next
        }
        file != "" { print >>file }
    ' "$1"
}

# Prints the number of the last step whose result arrived, 0 if none.
last_finished_step() {
    find "$1" -mindepth 2 -maxdepth 2 -name result.json 2>/dev/null |
        sed -n 's|.*/\([0-9][0-9]*\)-[^/]*/result.json$|\1|p' | sort -n | tail -n 1 | sed 's/^0*//'
}

# Runs the steps inside L1s, a fresh L1 going on where one that died stopped. A step an L1
# died in is tried once more in the next; lost twice, it is recorded and skipped.
run_nested() {
    local run=$1 total=$2
    shift 2
    local payload=$run/payload l1=0 next=1 last outcome lost_once="" stopped
    local deadline=$((SECONDS + ${VMM_BENCH_BUDGET:-10800}))
    mkdir -p "$run/steps"
    : >"$run/lost-steps"
    while ((next <= total)); do
        local left=$((deadline - SECONDS))
        if ((left < 600)); then
            log "the time budget is nearly used up: stopping before step $next of $total"
            echo "steps $next to $total: not run, the time budget (VMM_BENCH_BUDGET) ran out" >>"$run/lost-steps"
            break
        fi
        l1=$((l1 + 1))
        {
            echo "#!/bin/sh"
            echo "exec /payload/vmm-bench run $(sh_quote "$@") --out /tmp/bench --from-step $next --print"
        } >"$payload/run"
        chmod 0755 "$payload/run"
        log "L1 run $l1: steps $next to $total ($left s of the budget left)"
        VMM_L1_TIMEOUT=$left "$REPO/scripts/nested/run-l1.sh" --kernel-log "$run/l1-$l1.kernel.log" \
            --outcome-file "$run/l1-$l1.outcome" "$payload" 2>>"$run/run-l1.log" |
            tr -d '\r' | tee "$run/l1-$l1.console" |
            { grep -a --line-buffered -E '^(BENCH-(PLAN|STEP|RESULT|DONE)|vmm-bench:)' || true; } |
            while IFS= read -r line; do log "$(date +%T) $line"; done || true
        extract_files "$run/l1-$l1.console" "$run/steps"
        outcome=$(cat "$run/l1-$l1.outcome" 2>/dev/null || printf 'ended\trun-l1.sh left no outcome')
        if grep -aq '^BENCH-DONE' "$run/l1-$l1.console"; then
            break
        fi
        if [[ ${outcome%%$'\t'*} == status ]]; then
            die "vmm-bench failed inside L1: ${outcome#*$'\t'}; see $run/l1-$l1.console"
        fi
        last=$(last_finished_step "$run/steps")
        stopped=$((${last:-0} + 1))
        ((stopped >= next)) || stopped=$next
        log "L1 run $l1 ended during step $stopped: ${outcome#*$'\t'}"
        if [[ $lost_once == "$stopped" ]]; then
            echo "step $stopped: lost twice, the nested KVM host died under it each time (${outcome#*$'\t'}; L1 kernel log: l1-$l1.kernel.log)" >>"$run/lost-steps"
            next=$((stopped + 1))
        else
            lost_once=$stopped
            next=$stopped
        fi
        ((l1 < total + 3)) || die "too many L1 runs; see $run"
    done
}

write_run_info() {
    local run=$1
    shift
    jq -n "$@" '$ARGS.named' >"$run/run-info.json.tmp"
    mv "$run/run-info.json.tmp" "$run/run-info.json"
}

report() {
    local run=$1 to_doc=$2
    if ((to_doc)); then
        "$run/bin/vmm-bench" report --run "$run" --doc "$DOC"
    else
        "$run/bin/vmm-bench" report --run "$run"
    fi
}

main() {
    need_cmds cargo jq objcopy git
    if [[ -n $report_dir ]]; then
        [[ -x $report_dir/bin/vmm-bench ]] || die "$report_dir is not a run directory of scripts/bench.sh"
        report "$report_dir" "$([[ $doc == yes ]] && echo 1 || echo 0)"
        return
    fi
    local minimal=1
    [[ -z $only || ,$only, == *,minimal,* ]] || minimal=0
    "$REPO/scripts/guest-kernel.sh"
    ((minimal)) && "$REPO/scripts/guest-kernel.sh" --minimal
    "$REPO/scripts/guest-initramfs.sh"
    local mode
    mode=$(choose_mode)

    local label run started=$SECONDS
    label=$(date -u +%Y%m%d-%H%M%S)${only:+-${only//,/+}}${baseline:+-baseline}${guest_args:+-guest-args}
    run=$BENCH_DIR/$label
    mkdir -p "$run/bin"
    log "run directory: $run"
    build_tool "$run/bin"
    local baseline_desc=""
    [[ -z $baseline ]] || baseline_desc=$(build_baseline "$baseline" "$run/bin/vmm-baseline")

    # The arguments of `vmm-bench run`, with the paths the VMMs see.
    local root cmdline args=()
    if [[ $mode == nested ]]; then
        root=/payload
        # As for the boot tests (scripts/boot-tests.sh): XSAVE state is not kept right for
        # nested guests under TCG, and every console byte is a costly exit.
        cmdline="clearcpuid=xsave quiet"
    else
        root=$run/bin
        cmdline="quiet"
    fi
    [[ -z $guest_args ]] || cmdline+=" $guest_args"
    args+=(--vmm "vmm=$root/vmm")
    [[ -z $baseline ]] || args+=(--vmm "baseline=$root/vmm-baseline")
    if ((qemu)); then
        if [[ $mode == nested ]]; then
            args+=(--qemu-bundle /payload/qemu)
        else
            args+=(--qemu "$(command -v qemu-system-x86_64)")
        fi
    fi
    local guest=$CACHE_DIR
    [[ $mode == nested ]] && guest=/payload
    args+=(--kernel "$guest/vmlinuz" --initrd "$guest/initramfs.cpio.gz" --cmdline "$cmdline"
        --runs "$runs")
    ((minimal)) && args+=(--minimal-kernel "$guest/vmlinuz-minimal")
    [[ -z $only ]] || args+=(--only "$only")
    local total
    total=$("$run/bin/vmm-bench" run "${args[@]}" --out "$run/steps" --list | wc -l) ||
        die "vmm-bench refused its arguments"

    local l1_desc=""
    if [[ $mode == nested ]]; then
        l1_desc="QEMU TCG, ${VMM_L1_CPUS:-2} vCPUs, ${VMM_L1_MEM:-8G}, -cpu ${VMM_L1_CPU:-EPYC,+svm,+npt,...}"
    fi
    local qemu_desc="" kernels
    ((qemu)) && qemu_desc="$(qemu-system-x86_64 --version | head -n 1), -machine microvm,acpi=on"
    kernels="stock: $(cat "$CACHE_DIR/kernel.pkg" 2>/dev/null || echo unknown)"
    ((minimal)) && kernels+="; minimal: scripts/guest-kernel.sh --minimal (Debian's linux-source-6.1)"
    local info=(--arg started_utc "$(date -u '+%Y-%m-%d %H:%M UTC')" --arg mode "$mode"
        --arg host "$(describe_host)" --arg l1 "$l1_desc" --arg vmm "$(describe_vmm)"
        --arg baseline "$baseline_desc" --arg command "scripts/bench.sh $(sh_quote "${original_args[@]}")"
        --arg qemu "$qemu_desc" --arg guest_kernel "$kernels"
        --argjson runs "$runs")
    write_run_info "$run" "${info[@]}"

    local load_sampler
    sample_load "$run/load.txt" &
    load_sampler=$!
    log "$total steps, $mode"
    if [[ $mode == nested ]]; then
        # The hugetlb guest of the backings part (1 GiB) takes its huge pages from a pool
        # L1 reserves at boot, before its memory fragments.
        if [[ ,$only, == *,backings,* ]]; then
            export VMM_L1_HUGEPAGES=${VMM_L1_HUGEPAGES:-576}
        fi
        need_cmds ldd
        local payload=$run/payload
        mkdir -p "$payload"
        cp "$run/bin/vmm" "$run/bin/vmm-bench" "$payload/"
        [[ -z $baseline ]] || cp "$run/bin/vmm-baseline" "$payload/"
        cp "$CACHE_DIR/vmlinuz" "$CACHE_DIR/initramfs.cpio.gz" "$payload/"
        ((minimal)) && cp "$CACHE_DIR/vmlinuz-minimal" "$payload/"
        ((qemu)) && bundle_qemu "$payload/qemu"
        run_nested "$run" "$total" "${args[@]}"
    else
        "$run/bin/vmm-bench" run "${args[@]}" --out "$run/steps" | tee "$run/progress.log" |
            { grep -a --line-buffered -E '^(BENCH-(PLAN|STEP|RESULT|DONE)|vmm-bench:)' || true; } |
            while IFS= read -r line; do log "$(date +%T) $line"; done
    fi
    kill "$load_sampler" 2>/dev/null || true
    wait "$load_sampler" 2>/dev/null || true

    local lost='[]'
    [[ -s $run/lost-steps ]] && lost=$(jq -R . "$run/lost-steps" | jq -s .)
    write_run_info "$run" "${info[@]}" --argjson duration_s "$((SECONDS - started))" \
        --argjson load "$(jq -s . "$run/load.txt")" --argjson lost_steps "$lost"

    local to_doc=0
    if [[ $doc == yes ]] || { [[ $doc == auto && -z $only && -z $baseline && -z $guest_args ]] && ((qemu)); }; then
        to_doc=1
    fi
    report "$run" "$to_doc"
    log "took $(((SECONDS - started) / 60)) min; results in $run"
}

main
