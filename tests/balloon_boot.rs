//! Boot tests of the virtio balloon with the stock Debian kernel and its `virtio_balloon`
//! module, found through ACPI. Like every boot test they are `#[ignore]`d and run by
//! `scripts/test.sh` (directly, or nested where KVM is not usable); see docs/testing.md.
//!
//! Memory is checked the way a user would: the guest's MemTotal (which the driver lowers
//! by the balloon's size unless deflate-on-oom was negotiated), the balloon's `actual`
//! through the API, and the VMM's resident memory on the host.

mod common;

use std::path::Path;
use std::time::Duration;

use common::guest_checks::{kernel_log_lines, resize_balloon};
use common::http::{field, get_json, patch};
use common::{rss_bytes_of, scaled, wait_until, GuestVm, RESIZE_TIMEOUT};
use vmm::size::MIB;

/// How long freed memory may take to come back through reporting or hinting.
const RECLAIM_TIMEOUT: Duration = Duration::from_secs(120);

/// The feature bits the guest driver negotiated, from sysfs (a string of 0/1, bit 0 first).
fn negotiated_features(vm: &mut GuestVm) -> u64 {
    let text = vm.run_ok("cat /sys/bus/virtio/devices/virtio0/features");
    text.trim()
        .chars()
        .enumerate()
        .filter(|(_, c)| *c == '1')
        .fold(0, |bits, (i, _)| bits | (1u64 << i))
}

fn bits(list: &[u32]) -> u64 {
    list.iter().fold(0, |acc, b| acc | (1u64 << b))
}

const VERSION_1: u32 = 32;
const MUST_TELL_HOST: u32 = 0;
const STATS_VQ: u32 = 1;
const DEFLATE_ON_OOM: u32 = 2;
const FREE_PAGE_HINT: u32 = 3;
const PAGE_POISON: u32 = 4;
const REPORTING: u32 = 5;

fn assert_balloon_bound(vm: &mut GuestVm) {
    let device = vm.run_ok("cat /sys/bus/virtio/devices/virtio0/device");
    assert_eq!(device.trim(), "0x0005", "virtio0 is not a balloon");
    vm.run_ok("test -e /sys/bus/virtio/drivers/virtio_balloon/virtio0");
}

/// Fills `mib` MiB of tmpfs in the guest and deletes it; returns the VMM's RSS with the
/// file in place.
fn fill_and_free_tmpfs(vm: &mut GuestVm, mib: u64) -> u64 {
    vm.run_ok("mkdir -p /mnt/scratch && mount -t tmpfs -o size=90% tmpfs /mnt/scratch");
    vm.run_ok(&format!(
        "dd if=/dev/zero of=/mnt/scratch/fill bs=1M count={mib} 2>/dev/null"
    ));
    let filled = vm.rss_bytes();
    vm.run_ok("rm /mnt/scratch/fill && umount /mnt/scratch");
    filled
}

/// Waits until the VMM's RSS is at least `drop` bytes below `from`; returns the new RSS.
fn wait_for_rss_drop(vm: &mut GuestVm, from: u64, drop: u64, what: &str) -> u64 {
    let pid = vm.pid();
    wait_until(scaled(RECLAIM_TIMEOUT), what, || {
        // Unreadable counts as not fallen yet: the wait ends in its own failure.
        let rss = rss_bytes_of(pid).unwrap_or(u64::MAX);
        (rss + drop <= from).then_some(rss)
    })
}

/// Starts the memcheck filler in the guest and waits until its pattern is written.
fn start_memcheck(vm: &mut GuestVm, mib: u64) {
    vm.run_ok(&format!("memcheck fill {mib} >/tmp/memcheck.log 2>&1 &"));
    let filled = vm.run_with_timeout(
        // A subshell: `exit` in the command itself would end the guest's shell.
        "(for i in $(seq 600); do grep -q FILLED /tmp/memcheck.log && exit 0; sleep 1; done; cat /tmp/memcheck.log; exit 1)",
        scaled(Duration::from_secs(700)),
    );
    assert_eq!(
        filled.status, 0,
        "memcheck never filled its memory: {}",
        filled.output
    );
}

fn assert_memcheck_intact(vm: &mut GuestVm, mib: u64) {
    let verdict = vm.run("memcheck verify");
    assert_eq!(
        (verdict.status, verdict.output.trim()),
        (0, format!("MEMCHECK OK mib={mib}").as_str()),
        "guest memory changed under the balloon"
    );
}

/// Boots a guest with `--balloon items` (and `cmdline` added to its command line); checks
/// that the driver binds and accepts exactly the `expected` features, that the queues
/// land where the driver looks for them (the optional ones are numbered densely by the
/// features offered, docs/balloon.md), and that each queue the case has does its work.
fn check_feature_combination(items: &str, cmdline: &str, expected: &[u32]) {
    let mut builder = GuestVm::builder().mem("1G").balloon(items).api_sock();
    if !cmdline.is_empty() {
        builder = builder.cmdline(cmdline);
    }
    let mut vm = builder.boot();
    assert_balloon_bound(&mut vm);
    assert_eq!(
        negotiated_features(&mut vm),
        bits(expected),
        "--balloon {items:?}: negotiated features differ from those offered"
    );
    let sock = vm.api_sock().to_path_buf();
    assert_eq!(get_json(&sock, "/balloon")["driver_ready"], true);

    // inflateq and deflateq.
    resize_balloon(&vm, 32);
    resize_balloon(&vm, 0);
    if items.contains("stats") {
        let stats = wait_until(scaled(RESIZE_TIMEOUT), "statistics", || {
            let stats = get_json(&sock, "/balloon/statistics");
            stats.get("total_memory").is_some().then_some(stats)
        });
        assert!(field(&stats, "total_memory") > 512 * MIB);
    }
    if items.contains("free-page-hint") {
        patch(
            &sock,
            "/balloon/hinting/start",
            "{\"acknowledge_on_stop\": true}",
        );
        // The guest answers on free_page_vq, hints all its free memory and sends STOP.
        wait_for_hinting_run_end(&sock);
        if cmdline.contains("init_on_free=1") {
            wait_for_hinted_blocks_zeroed(&mut vm);
        }
    }
    if items.contains("page-reporting") {
        let filled = fill_and_free_tmpfs(&mut vm, 200);
        wait_for_rss_drop(
            &mut vm,
            filled,
            120 * MIB,
            &format!("--balloon {items:?}: page reporting to return freed memory"),
        );
    }
    assert!(vm.poweroff().success());
}

/// How long a hinting run may take. The guest zeroes each 4 MiB block it allocates for a
/// hint (`init_on_alloc`, on in Debian's kernel), which faults in every page of free
/// memory the host does not hold yet. Measured nested: about 40 s for a 1 GiB guest on an
/// idle host, with the vCPU in `clear_page_rep`; on a loaded host more than 120 s, which
/// looked like the environment's spinning stall.
const HINT_RUN_TIMEOUT: Duration = Duration::from_secs(600);

/// Waits until a run started with `acknowledge_on_stop` has ended: the guest sent STOP
/// (0) and the device answered DONE (1).
fn wait_for_hinting_run_end(sock: &Path) {
    wait_until(scaled(HINT_RUN_TIMEOUT), "the hinting run to end", || {
        let status = get_json(sock, "/balloon/hinting/status");
        (status.get("guest_cmd").and_then(|v| v.as_u64()) == Some(0)
            && field(&status, "host_cmd") == 1)
            .then_some(())
    });
}

/// How long a guest that zeroes freed pages may take to free what it hinted (below).
const HINT_RELEASE_TIMEOUT: Duration = Duration::from_secs(600);

/// Waits for the shell of a guest that zeroes freed pages (`init_on_free=1`) to answer
/// again after a hinting run. On DONE Linux frees every hinted block in one go with
/// interrupts off (`return_free_pages_to_mm`), and zeroing each page writes it, which
/// faults back in every page the device discarded. Measured nested: about 850 MiB
/// hinted, 33–51 s with the vCPU in `clear_page_rep` and no interrupt taken, so no
/// console; under a loaded host longer than a command's 120 s, which looked like the
/// environment's spinning stall (docs/balloon.md, "Free page hinting").
fn wait_for_hinted_blocks_zeroed(vm: &mut GuestVm) {
    let answer = vm.run_with_timeout("true", scaled(HINT_RELEASE_TIMEOUT));
    assert_eq!(answer.status, 0, "{}", answer.output);
}

// One test per feature combination, so that a nested fault in one boot costs a rerun of
// that boot only.

/// inflateq 0 and deflateq 1 only.
#[test]
#[ignore = "boots a guest: run through scripts/test.sh"]
fn driver_binds_with_no_optional_feature() {
    check_feature_combination("", "", &[VERSION_1]);
}

/// reportingq is queue 2 when it is the only optional queue.
#[test]
#[ignore = "boots a guest: run through scripts/test.sh"]
fn driver_binds_with_page_reporting_on_queue_2() {
    check_feature_combination("page-reporting", "", &[REPORTING, VERSION_1]);
}

/// statsq 2, reportingq 3.
#[test]
#[ignore = "boots a guest: run through scripts/test.sh"]
fn driver_binds_with_stats_on_queue_2_and_page_reporting_on_3() {
    check_feature_combination(
        "stats,page-reporting",
        "",
        &[STATS_VQ, REPORTING, VERSION_1],
    );
}

/// free_page_vq 2, reportingq 3 (the spec's fixed numbering would put them at 3 and 4).
#[test]
#[ignore = "boots a guest: run through scripts/test.sh"]
fn driver_binds_with_free_page_hint_on_queue_2_and_page_reporting_on_3() {
    check_feature_combination(
        "free-page-hint,page-reporting",
        "",
        &[FREE_PAGE_HINT, REPORTING, VERSION_1],
    );
}

/// Every feature: statsq 2, free_page_vq 3, reportingq 4. Linux accepts PAGE_POISON only
/// when the guest zeroes or poisons freed pages.
#[test]
#[ignore = "boots a guest: run through scripts/test.sh"]
fn driver_binds_and_accepts_every_offered_feature() {
    check_feature_combination(
        "stats,deflate-on-oom,page-reporting,free-page-hint,page-poison,must-tell-host",
        "init_on_free=1",
        &[
            MUST_TELL_HOST,
            STATS_VQ,
            DEFLATE_ON_OOM,
            FREE_PAGE_HINT,
            PAGE_POISON,
            REPORTING,
            VERSION_1,
        ],
    );
}

/// When the guest poisons freed pages (here: zeroes them, `init_on_free=1`) and the
/// device does not offer PAGE_POISON, Linux declines page reporting; the device must still
/// work with the reporting queue offered but never set up.
#[test]
#[ignore = "boots a guest: run through scripts/test.sh"]
fn declined_page_reporting_leaves_a_working_balloon() {
    let mut vm = GuestVm::builder()
        .mem("1G")
        .balloon("stats,page-reporting")
        .cmdline("init_on_free=1")
        .api_sock()
        .boot();
    assert_balloon_bound(&mut vm);
    assert_eq!(negotiated_features(&mut vm), bits(&[STATS_VQ, VERSION_1]));
    resize_balloon(&vm, 64);
    resize_balloon(&vm, 0);
    assert!(vm.poweroff().success());
}

/// A balloon set at boot takes its size out of MemTotal; resizing at run time moves
/// MemTotal by exactly the difference; going back to 0 returns all of it.
#[test]
#[ignore = "boots a guest: run through scripts/test.sh"]
fn balloon_size_moves_guest_memtotal_and_back() {
    let mut vm = GuestVm::builder()
        .mem("1G")
        .balloon("size=256M")
        .api_sock()
        .boot();
    let sock = vm.api_sock().to_path_buf();
    wait_until(scaled(RESIZE_TIMEOUT), "the boot-time balloon", || {
        (field(&get_json(&sock, "/balloon"), "actual_mib") == 256).then_some(())
    });
    assert_eq!(field(&get_json(&sock, "/balloon"), "amount_mib"), 256);
    let inflated = vm.meminfo_kib("MemTotal");

    resize_balloon(&vm, 0);
    let full = vm.meminfo_kib("MemTotal");
    assert_eq!(
        full - inflated,
        256 * 1024,
        "MemTotal {inflated} kB → {full} kB"
    );

    resize_balloon(&vm, 128);
    assert_eq!(full - vm.meminfo_kib("MemTotal"), 128 * 1024);
    resize_balloon(&vm, 0);
    assert_eq!(vm.meminfo_kib("MemTotal"), full);
    assert!(vm.poweroff().success());
}

/// Free page reporting alone puts reporting_vq at index 2: the guest fills and deletes
/// 300 MiB of tmpfs and the VMM's resident memory falls by most of it.
#[test]
#[ignore = "boots a guest: run through scripts/test.sh"]
fn page_reporting_returns_freed_memory_to_the_host() {
    let mut vm = GuestVm::builder()
        .mem("1G")
        .balloon("page-reporting")
        .boot();
    let before = vm.rss_bytes();
    let filled = fill_and_free_tmpfs(&mut vm, 300);
    assert!(
        filled >= before + 250 * MIB,
        "filling tmpfs did not raise RSS: {before} → {filled}"
    );
    let after = wait_for_rss_drop(
        &mut vm,
        filled,
        240 * MIB,
        "RSS to fall after the guest freed 300 MiB",
    );
    eprintln!(
        "page reporting: RSS {} MiB → {} MiB → {} MiB",
        before / MIB,
        filled / MIB,
        after / MIB
    );
    assert!(vm.poweroff().success());
}

/// With the same memory backed by a memfd, reporting punches holes instead of
/// `MADV_DONTNEED` and the memory still goes back.
#[test]
#[ignore = "boots a guest: run through scripts/test.sh"]
fn page_reporting_frees_memfd_backed_memory() {
    let mut vm = GuestVm::builder()
        .mem("1G")
        .balloon("page-reporting")
        .arg("--mem-backing")
        .arg("memfd")
        .boot();
    let filled = fill_and_free_tmpfs(&mut vm, 300);
    // Shared memfd pages count in RssShmem, part of VmRSS.
    wait_for_rss_drop(
        &mut vm,
        filled,
        240 * MIB,
        "memfd-backed RSS to fall after the guest freed 300 MiB",
    );
    assert!(vm.poweroff().success());
}

/// The statistics the device hands out are the guest's own numbers.
#[test]
#[ignore = "boots a guest: run through scripts/test.sh"]
fn statistics_agree_with_guest_meminfo() {
    let mut vm = GuestVm::builder()
        .mem("1G")
        .balloon("stats=1")
        .api_sock()
        .boot();
    let sock = vm.api_sock().to_path_buf();
    for balloon_mib in [0, 128] {
        resize_balloon(&vm, balloon_mib);
        let total_kib = vm.meminfo_kib("MemTotal");
        // Wait for a report taken after the resize settled.
        let stats = wait_until(
            scaled(RESIZE_TIMEOUT),
            "statistics after the resize",
            || {
                let stats = get_json(&sock, "/balloon/statistics");
                (stats.get("total_memory").and_then(|v| v.as_u64()) == Some(total_kib * 1024))
                    .then_some(stats)
            },
        );
        assert_eq!(field(&stats, "actual_mib"), balloon_mib);
        let free = vm.meminfo_kib("MemFree") * 1024;
        let available = vm.meminfo_kib("MemAvailable") * 1024;
        let close = |a: u64, b: u64| a.abs_diff(b) <= 32 * MIB;
        assert!(
            close(field(&stats, "free_memory"), free),
            "free_memory {} vs MemFree {free}",
            field(&stats, "free_memory")
        );
        assert!(
            close(field(&stats, "available_memory"), available),
            "available_memory {} vs MemAvailable {available}",
            field(&stats, "available_memory")
        );
        for tag in [
            "swap_in",
            "swap_out",
            "major_faults",
            "minor_faults",
            "disk_caches",
        ] {
            assert!(stats.get(tag).is_some(), "no {tag} in {stats}");
        }
    }
    // Polling can be changed while the guest runs.
    patch(
        &sock,
        "/balloon/statistics",
        "{\"stats_polling_interval_s\": 2}",
    );
    assert_eq!(
        field(&get_json(&sock, "/balloon"), "stats_polling_interval_s"),
        2
    );
    assert!(vm.poweroff().success());
}

/// A pattern in guest memory survives inflating, deflating and page reporting.
#[test]
#[ignore = "boots a guest: run through scripts/test.sh"]
fn guest_memory_stays_intact_through_balloon_operations() {
    let mut vm = GuestVm::builder()
        .mem("1G")
        .cpus(2)
        .balloon("stats,page-reporting")
        .api_sock()
        .boot();
    start_memcheck(&mut vm, 256);
    resize_balloon(&vm, 384);
    assert_memcheck_intact(&mut vm, 256);
    resize_balloon(&vm, 0);
    fill_and_free_tmpfs(&mut vm, 200);
    resize_balloon(&vm, 256);
    // Let reporting run over the memory tmpfs gave back.
    std::thread::sleep(scaled(Duration::from_secs(5)));
    assert_memcheck_intact(&mut vm, 256);
    resize_balloon(&vm, 0);
    assert_memcheck_intact(&mut vm, 256);
    // The kernel's own reports of bad memory or state; not the boot-time notes on CPU
    // vulnerabilities, which also say "WARNING".
    let complaints = kernel_log_lines(&mut vm, &["BUG:", "corruption", "Oops", "WARNING: CPU"]);
    assert!(
        complaints.is_empty(),
        "guest kernel complained:\n{complaints}"
    );
    assert!(vm.poweroff().success());
}

/// Unbinding the driver resets the device; binding it again finds it in working order,
/// with the host's target kept.
#[test]
#[ignore = "boots a guest: run through scripts/test.sh"]
fn driver_unbinds_and_binds_again() {
    let mut vm = GuestVm::builder()
        .mem("1G")
        .balloon("stats=1,page-reporting,size=64M")
        .api_sock()
        .boot();
    let sock = vm.api_sock().to_path_buf();
    resize_balloon(&vm, 64);
    let bound_total = vm.meminfo_kib("MemTotal");

    vm.run_ok("echo virtio0 > /sys/bus/virtio/drivers/virtio_balloon/unbind");
    let balloon = get_json(&sock, "/balloon");
    assert_eq!(balloon["driver_ready"], false, "{balloon}");
    assert_eq!(field(&balloon, "actual_mib"), 0);
    assert_eq!(
        field(&balloon, "amount_mib"),
        64,
        "the target outlives the driver"
    );
    assert_eq!(vm.meminfo_kib("MemTotal"), bound_total + 64 * 1024);

    for _ in 0..2 {
        vm.run_ok("echo virtio0 > /sys/bus/virtio/drivers/virtio_balloon/bind");
        assert_balloon_bound(&mut vm);
        wait_until(
            scaled(RESIZE_TIMEOUT),
            "the rebound driver to inflate",
            || (field(&get_json(&sock, "/balloon"), "actual_mib") == 64).then_some(()),
        );
        assert_eq!(vm.meminfo_kib("MemTotal"), bound_total);
        // Statistics flow again after the reset.
        wait_until(scaled(RESIZE_TIMEOUT), "fresh statistics", || {
            let stats = get_json(&sock, "/balloon/statistics");
            (stats.get("last_update_age_ms").and_then(|v| v.as_u64()) < Some(3000)).then_some(())
        });
        vm.run_ok("echo virtio0 > /sys/bus/virtio/drivers/virtio_balloon/unbind");
    }
    vm.run_ok("echo virtio0 > /sys/bus/virtio/drivers/virtio_balloon/bind");
    resize_balloon(&vm, 128);
    resize_balloon(&vm, 0);
    assert!(vm.poweroff().success());
}

/// A hinting run: the guest answers the host's command, hints its free memory, which
/// goes back to the host, and reuses it after DONE without losing data.
#[test]
#[ignore = "boots a guest: run through scripts/test.sh"]
fn free_page_hinting_returns_free_memory() {
    let mut vm = GuestVm::builder()
        .mem("1G")
        .balloon("free-page-hint")
        .api_sock()
        .boot();
    let sock = vm.api_sock().to_path_buf();
    start_memcheck(&mut vm, 128);
    // Without reporting, freed tmpfs pages stay resident until hinted.
    let filled = fill_and_free_tmpfs(&mut vm, 300);
    patch(
        &sock,
        "/balloon/hinting/start",
        "{\"acknowledge_on_stop\": true}",
    );
    let host_cmd = field(&get_json(&sock, "/balloon/hinting/status"), "host_cmd");
    assert!(
        host_cmd >= 2,
        "a run starts with a fresh command id, got {host_cmd}"
    );
    wait_for_hinting_run_end(&sock);
    wait_for_rss_drop(&mut vm, filled, 200 * MIB, "hinted memory to go back");
    assert_memcheck_intact(&mut vm, 128);
    // The guest can use its memory again after DONE.
    fill_and_free_tmpfs(&mut vm, 300);
    assert_memcheck_intact(&mut vm, 128);
    assert!(vm.poweroff().success());
}

/// With deflate-on-oom the guest takes memory back from the balloon instead of killing
/// a process.
#[test]
#[ignore = "boots a guest: run through scripts/test.sh"]
fn deflate_on_oom_gives_memory_back_under_pressure() {
    let mut vm = GuestVm::builder()
        .mem("512M")
        .balloon("deflate-on-oom")
        .api_sock()
        .boot();
    let sock = vm.api_sock().to_path_buf();
    let total = vm.meminfo_kib("MemTotal");
    resize_balloon(&vm, 384);
    // With DEFLATE_ON_OOM the balloon's pages stay in MemTotal; only MemFree falls.
    assert_eq!(vm.meminfo_kib("MemTotal"), total);
    start_memcheck(&mut vm, 160);
    let actual = field(&get_json(&sock, "/balloon"), "actual_mib");
    assert!(
        actual < 384,
        "the guest did not deflate under pressure (actual {actual} MiB)"
    );
    assert_memcheck_intact(&mut vm, 160);
    let kills = kernel_log_lines(&mut vm, &["Killed process"]);
    assert!(kills.is_empty(), "the guest killed a process:\n{kills}");
    assert!(vm.poweroff().success());
}
