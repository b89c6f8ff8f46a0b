//! Boot test of `GET /metrics` on a running guest with the stock Linux balloon driver:
//! the counters move when the guest frees memory (page reporting) and when the balloon
//! inflates, and the real `promtool check metrics` accepts the live output. Like every
//! boot test it is `#[ignore]`d and run by `scripts/test.sh` (directly, or nested where
//! KVM is not usable); see docs/testing.md.
//!
//! One boot checks the whole configuration: each scrape is a few milliseconds, a nested
//! boot a minute.

mod common;

use std::path::Path;
use std::time::Duration;

use common::http::{field, get_json, patch, request};
use common::promtool;
use common::{scaled, wait_until, GuestVm, RESIZE_TIMEOUT};
use vmm::size::MIB;

/// How long freed memory may take to be reported (the guest waits 2 s before reporting,
/// then works through its free lists).
const REPORT_TIMEOUT: Duration = Duration::from_secs(120);

/// One scrape, checked for its status and content type.
fn scrape(sock: &Path) -> String {
    let answer = request(sock, "GET", "/metrics", None);
    assert_eq!(answer.status, 200, "GET /metrics: {}", answer.text());
    assert_eq!(
        answer.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    answer.text()
}

/// The value of one series, written as it appears before the value
/// (`vmm_balloon_discarded_bytes_total{path="reporting"}`); `None` if it is not there.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
        rest.parse().ok()
    })
}

fn must(text: &str, series: &str) -> f64 {
    value(text, series).unwrap_or_else(|| panic!("no series {series} in\n{text}"))
}

fn check_with_promtool(text: &str, what: &str) {
    if let Err(problems) = promtool::check_metrics(text) {
        panic!("{what}: {problems}\nin\n{text}");
    }
}

#[test]
#[ignore = "boots a guest: run through scripts/test.sh"]
fn metrics_follow_reporting_and_inflation_and_pass_promtool() {
    let mut vm = GuestVm::builder()
        .mem("1G")
        .balloon("stats=1,page-reporting")
        .api_sock()
        .boot();
    let sock = vm.api_sock().to_path_buf();
    wait_until(
        scaled(RESIZE_TIMEOUT),
        "the balloon driver to start",
        || (value(&scrape(&sock), "vmm_balloon_driver_ready") == Some(1.0)).then_some(()),
    );
    let before = scrape(&sock);
    check_with_promtool(&before, "after boot");
    let reported_before = must(&before, "vmm_balloon_reported_bytes_total");
    let returned_before = must(
        &before,
        "vmm_balloon_discarded_bytes_total{path=\"reporting\"}",
    );

    // Free page reporting: the guest fills 200 MiB of tmpfs and frees it.
    vm.run_ok("mkdir -p /mnt/scratch && mount -t tmpfs -o size=90% tmpfs /mnt/scratch");
    vm.run_ok("dd if=/dev/zero of=/mnt/scratch/fill bs=1M count=200 2>/dev/null");
    vm.run_ok("rm /mnt/scratch/fill && umount /mnt/scratch");
    let reported = wait_until(
        scaled(REPORT_TIMEOUT),
        "the reported bytes to grow by 150 MiB after the guest freed 200 MiB",
        || {
            let text = scrape(&sock);
            let reported = must(&text, "vmm_balloon_reported_bytes_total");
            (reported >= reported_before + (150 * MIB) as f64).then_some(text)
        },
    );
    let returned = must(
        &reported,
        "vmm_balloon_discarded_bytes_total{path=\"reporting\"}",
    );
    assert!(
        returned >= returned_before + (150 * MIB) as f64,
        "reported memory was not given back: {returned_before} → {returned}"
    );
    assert!(
        must(
            &reported,
            "vmm_balloon_queue_notifications_total{queue=\"reporting_vq\"}"
        ) > 0.0
    );

    // Inflating: the balloon takes 128 MiB.
    let inflated_before = must(&reported, "vmm_balloon_inflated_bytes_total");
    patch(&sock, "/balloon", "{\"amount_mib\": 128}");
    wait_until(
        scaled(RESIZE_TIMEOUT),
        "the balloon to reach 128 MiB",
        || (field(&get_json(&sock, "/balloon"), "actual_mib") == 128).then_some(()),
    );
    let after = scrape(&sock);
    let mib_128 = (128 * MIB) as f64;
    assert_eq!(must(&after, "vmm_balloon_target_bytes"), mib_128);
    assert_eq!(must(&after, "vmm_balloon_actual_bytes"), mib_128);
    assert!(
        must(&after, "vmm_balloon_inflated_bytes_total") >= inflated_before + mib_128,
        "inflating 128 MiB moved vmm_balloon_inflated_bytes_total only from {inflated_before}:\n{after}"
    );
    assert!(
        must(
            &after,
            "vmm_balloon_discarded_bytes_total{path=\"inflate\"}"
        ) >= mib_128 * 0.9
    );
    // Linux sends 256 pages (1 MiB) per inflate buffer.
    let inflate_buffers = must(
        &after,
        "vmm_balloon_queue_buffers_total{queue=\"inflateq\"}",
    );
    assert!(
        inflate_buffers >= 128.0,
        "{inflate_buffers} inflate buffers"
    );
    let timed = must(
        &after,
        "vmm_balloon_queue_processing_seconds_count{queue=\"inflateq\"}",
    );
    assert_eq!(
        timed,
        must(
            &after,
            "vmm_balloon_queue_notifications_total{queue=\"inflateq\"}"
        ),
        "every processed notification is timed once"
    );
    assert!(must(&after, "vmm_balloon_config_interrupts_total") >= 1.0);
    assert_eq!(must(&after, "vmm_balloon_discard_failures_total"), 0.0);

    // The rest of the VM: statistics (polled every second), vCPU exits, console, API.
    let stats = wait_until(
        scaled(RESIZE_TIMEOUT),
        "guest statistics in /metrics",
        || {
            let text = scrape(&sock);
            value(&text, "vmm_balloon_guest_total_memory_bytes").map(|_| text)
        },
    );
    assert!(must(&stats, "vmm_balloon_statistics_updates_total") >= 1.0);
    assert!(must(&stats, "vmm_vcpu_exits_total{vcpu=\"0\",reason=\"io_out\"}") > 0.0);
    assert!(must(&stats, "vmm_console_written_bytes_total") > 0.0);
    assert!(
        must(
            &stats,
            "vmm_api_requests_total{route=\"/metrics\",method=\"GET\",status=\"200\"}"
        ) >= 3.0
    );
    // The process's RSS follows the guest (reporting and the balloon give memory back),
    // so it is checked against the kernel's own figure read around a scrape, not a
    // fixed size.
    let rss_before = vm.rss_bytes() as f64;
    let scraped = scrape(&sock);
    let rss_after = vm.rss_bytes() as f64;
    let reported = must(&scraped, "process_resident_memory_bytes");
    let slack = (8 * MIB) as f64;
    assert!(
        reported >= rss_before.min(rss_after) - slack
            && reported <= rss_before.max(rss_after) + slack,
        "process_resident_memory_bytes {reported}, VmRSS {rss_before} then {rss_after}"
    );
    check_with_promtool(&stats, "after reporting and inflating");

    // `vmm ctl metrics` prints the same families.
    let ctl = vm.ctl(&["metrics"]);
    assert!(ctl.status.success(), "vmm ctl metrics: {ctl:?}");
    let printed = String::from_utf8(ctl.stdout).expect("UTF-8 metrics");
    assert!(
        value(&printed, "vmm_balloon_actual_bytes") == Some(mib_128),
        "{printed}"
    );
    check_with_promtool(&printed, "vmm ctl metrics");

    assert!(vm.poweroff().success());
}
