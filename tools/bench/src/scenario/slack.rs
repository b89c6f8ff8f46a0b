//! Slack: the boot's guest (stock kernel, 1 GiB, 2 vCPUs, `--balloon page-reporting,stats`)
//! left idle until 30 s after it was ready, and then where its free memory is: how much of
//! it the host still holds, and why free page reporting did not give it back. Each
//! scenario of the part tries one way of getting it back (compaction, a lower reporting
//! order) and is measured the same way, with what the way costs (CPU time, reports).
//!
//! At 30 s: the vmm's RSS and the resident part of its guest RAM mapping (smaps), then the
//! guest's /proc/meminfo, /proc/buddyinfo, /proc/pagetypeinfo, the low watermarks of
//! /proc/zoneinfo, the reporting order in effect, and `memcheck freemap` (the free pages of
//! each 2 MiB of guest-physical memory, from /proc/kpageflags), set against the host's
//! resident pages of the same 2 MiB (the vmm's /proc/PID/pagemap, read right after). The
//! raw texts are kept in the step's directory.

use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use super::{fail, kib_to_mib, since, Guest, Outcome, Phases, StepError};
use crate::figures::key;
use crate::guestmem::{self, pages_to_mib};
use crate::launch::VmmUnderTest;
use crate::plan::{self, GuestFiles, Scenario};
use crate::procfs;

/// When, after ready, the guest is measured (as the boot scenario's idle guest).
const MEASURE_AT: Duration = super::boot::IDLE_AFTER_READY;
/// When, after ready, the compaction variant compacts, and the reports counted over the
/// last stretch start.
const ACT_AT: Duration = Duration::from_secs(20);
/// Linux's reporting order on x86_64 when nothing changes it: pageblock order (2 MiB).
const DEFAULT_ORDER: u32 = 9;
const ORDER_PARAMETER: &str = "/sys/module/page_reporting/parameters/page_reporting_order";
const REPORTS: &str = "vmm_balloon_queue_notifications_total{queue=\"reporting_vq\"}";
const REPORTED_BYTES: &str = "vmm_balloon_reported_bytes_total";
/// What separates the guest's files in one command's output.
const SEPARATOR: &str = "@@slack@@";

pub fn run(
    vmm: &VmmUnderTest,
    files: &GuestFiles,
    scenario: Scenario,
    dir: &Path,
    out: &mut Outcome,
) -> Result<(), StepError> {
    let machine = plan::machine(scenario, files);
    let mut guest = Guest::start(vmm, &machine, dir, "guest")?;
    out.command = guest.command.clone();
    measure(&mut guest, scenario, dir, out)?;
    guest.poweroff()
}

fn measure(
    guest: &mut Guest,
    scenario: Scenario,
    dir: &Path,
    out: &mut Outcome,
) -> Result<(), StepError> {
    let mut phases = Phases::new(guest.exec_at);
    phases.next("boot", &[guest], out);
    let ready = guest.wait_ready()?;
    out.set(key::EXEC_TO_READY_S, since(guest.exec_at, ready));
    guest.control()?;

    phases.next("idle to 20 s", &[guest], out);
    let (mut vcpu_s, mut vmm_s) = (0.0, 0.0);
    let order = match scenario {
        Scenario::SlackOrder5 => Some(5),
        Scenario::SlackOrder0 => Some(0),
        _ => None,
    };
    if let Some(order) = order {
        // The balloon's driver registered before the ready marker; from now on the guest
        // reports free blocks from this order up (the next free of such a block starts a
        // pass 2 s later).
        guest.run(&format!("echo {order} >{ORDER_PARAMETER}"))?;
    }
    sleep_until(ready + ACT_AT);
    let before = metrics(guest)?;
    let (v, m) = phases.end(&[guest], out);
    (vcpu_s, vmm_s) = (vcpu_s + v, vmm_s + m);

    phases.next("20 s to 30 s", &[guest], out);
    if scenario == Scenario::SlackCompact {
        let (_, text) = guest.run(
            "read a _ </proc/uptime; echo 1 >/proc/sys/vm/compact_memory; \
             read b _ </proc/uptime; echo \"$a $b\"",
        )?;
        if let Some(s) = super::backings::uptime_span(&text) {
            out.set(key::SLACK_COMPACT_S, s);
        }
    }
    sleep_until(ready + MEASURE_AT);
    let host = guest.memory_use()?;
    let after = metrics(guest)?;
    let (v, m) = phases.end(&[guest], out);
    (vcpu_s, vmm_s) = (vcpu_s + v, vmm_s + m);
    out.set(key::SLACK_VCPU_S, vcpu_s);
    out.set(key::SLACK_VMM_CPU_S, vmm_s);
    let rss_mib = kib_to_mib(host.rss_kib);
    let ram_resident_mib = kib_to_mib(host.guest_ram_rss_kib);
    out.set(key::SLACK_RSS_MIB, rss_mib);
    out.set(key::SLACK_GUEST_RAM_RESIDENT_MIB, ram_resident_mib);
    out.set(
        key::SLACK_REPORTED_MIB,
        after.reported_bytes / (1 << 20) as f64,
    );
    out.set(key::SLACK_REPORTS, after.reports);
    out.set(key::SLACK_REPORTS_LAST_10S, after.reports - before.reports);

    // The guest's view, right after.
    phases.next("guest's view", &[guest], out);
    let (_, text) = guest.run(&format!(
        "cat /proc/meminfo; echo {SEPARATOR}; cat /proc/buddyinfo; echo {SEPARATOR}; \
         cat /proc/pagetypeinfo; echo {SEPARATOR}; \
         grep -E '^Node|^ +(pages free|min|low|high|managed) ' /proc/zoneinfo; \
         echo {SEPARATOR}; cat {ORDER_PARAMETER}"
    ))?;
    let parts: Vec<&str> = text.split(SEPARATOR).map(str::trim).collect();
    let [meminfo, buddyinfo, pagetypeinfo, zoneinfo, order_text] = parts.as_slice() else {
        return fail(format!(
            "the guest's memory files came back in {} parts, not 5",
            parts.len()
        ));
    };
    for (name, text) in [
        ("meminfo", meminfo),
        ("buddyinfo", buddyinfo),
        ("pagetypeinfo", pagetypeinfo),
        ("zoneinfo", zoneinfo),
    ] {
        fs::write(dir.join(format!("guest-{name}.txt")), text)?;
    }
    let Some((_, not_free_mib)) = super::meminfo_used_mib(meminfo, guest.mem_mib()) else {
        return fail(format!("cannot read MemTotal and MemFree from {meminfo:?}"));
    };
    let free_mib = guest.mem_mib() as f64 - not_free_mib;
    out.set(key::SLACK_NOT_FREE_MIB, not_free_mib);
    out.set(key::SLACK_FREE_MIB, free_mib);
    out.set(key::SLACK_RATIO, rss_mib / not_free_mib);
    out.set(
        key::SLACK_FREE_RESIDENT_MIB,
        ram_resident_mib - not_free_mib,
    );
    let Ok(order) = order_text.parse::<u32>() else {
        return fail(format!(
            "cannot read the reporting order from {order_text:?}"
        ));
    };
    out.set(key::SLACK_ORDER, f64::from(order));
    let zones = guestmem::parse_buddyinfo(buddyinfo);
    if zones.is_empty() {
        return fail(format!("cannot read /proc/buddyinfo from {buddyinfo:?}"));
    }
    let buddy_pages: u64 = zones.iter().map(|z| z.pages()).sum();
    // MemFree less the buddy allocator's free blocks: mostly the per-CPU page lists.
    out.set(
        key::SLACK_NOT_IN_BUDDY_MIB,
        free_mib - pages_to_mib(buddy_pages),
    );
    let low = guestmem::parse_zone_low_watermarks(zoneinfo);
    let left = guestmem::unreportable(&zones, &low, order);
    out.set(key::SLACK_SMALL_ZONES_MIB, pages_to_mib(left.small_zones));
    out.set(key::SLACK_BELOW_ORDER_MIB, pages_to_mib(left.below_order));
    out.set(key::SLACK_UNREPORTABLE_MIB, pages_to_mib(left.pages()));
    let types = guestmem::parse_pagetypeinfo(pagetypeinfo);
    out.set(
        key::SLACK_BELOW_ORDER_NOT_MOVABLE_MIB,
        pages_to_mib(guestmem::not_movable_pages_below(&types, order)),
    );
    // As the default order would leave it, for the variants that change it.
    let left9 = guestmem::unreportable(&zones, &low, DEFAULT_ORDER);
    out.set(
        key::SLACK_UNREPORTABLE_ORDER9_MIB,
        pages_to_mib(left9.pages()),
    );

    // Page by page: the guest's free pages against the host's resident ones, per 2 MiB.
    let (_, text) = guest.run("memcheck freemap")?;
    fs::write(dir.join("guest-freemap.txt"), &text)?;
    let Some(free) = guestmem::parse_freemap(&text) else {
        return fail("cannot read the output of memcheck freemap");
    };
    let resident = procfs::read_guest_ram_resident_blocks(guest.pid, guest.mem_mib() << 20)
        .map_err(|e| StepError(format!("cannot read the vmm's pagemap: {e}")))?;
    fs::write(
        dir.join("host-resident-blocks.txt"),
        resident
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(" "),
    )?;
    let (low_pages, high_pages) = guestmem::free_and_resident_pages(&free, &resident);
    out.set(
        key::SLACK_JOIN_FREE_MIB,
        pages_to_mib(free.iter().map(|&f| u64::from(f)).sum()),
    );
    out.set(
        key::SLACK_JOIN_FREE_RESIDENT_MIN_MIB,
        pages_to_mib(low_pages),
    );
    out.set(
        key::SLACK_JOIN_FREE_RESIDENT_MAX_MIB,
        pages_to_mib(high_pages),
    );
    phases.end(&[guest], out);
    Ok(())
}

/// The balloon's reporting counters from `GET /metrics`.
struct Reporting {
    reports: f64,
    reported_bytes: f64,
}

fn metrics(guest: &mut Guest) -> Result<Reporting, StepError> {
    let Some(text) = guest.control()?.metrics() else {
        return fail("the vmm serves no GET /metrics");
    };
    match (
        guestmem::metric(&text, REPORTS),
        guestmem::metric(&text, REPORTED_BYTES),
    ) {
        (Some(reports), Some(reported_bytes)) => Ok(Reporting {
            reports,
            reported_bytes,
        }),
        _ => fail(format!("GET /metrics has no {REPORTS} or {REPORTED_BYTES}")),
    }
}

fn sleep_until(at: Instant) {
    if let Some(left) = at.checked_duration_since(Instant::now()) {
        thread::sleep(left);
    }
}
