//! What `/metrics` shows of a balloon: its size, what the guest gave and what went back
//! to the host, each queue's work, and the guest's last statistics.
//!
//! Everything is read through [`BalloonControl`], the balloon's lock taken briefly for
//! each of `info`, `counters` and `statistics`, as the API's own balloon routes do; the
//! device counts under the lock it already holds while it works, so counting costs it a
//! few additions. docs/metrics.md lists every metric.

use std::sync::Arc;

use super::layout::{QueueLayout, QueueRole};
use super::{
    BalloonControl, BalloonCounters, BalloonInfo, BalloonStatistics, GuestStats, BALLOON_PAGE_SIZE,
};
use crate::metrics::{Exposition, MetricSource};

/// A balloon as a metric source.
pub struct BalloonMetrics {
    balloon: Arc<dyn BalloonControl>,
}

impl BalloonMetrics {
    pub fn new(balloon: Arc<dyn BalloonControl>) -> Self {
        BalloonMetrics { balloon }
    }
}

impl MetricSource for BalloonMetrics {
    fn write_metrics(&self, out: &mut Exposition) {
        let info = self.balloon.info();
        let counters = self.balloon.counters();
        write_state(out, &info);
        write_totals(out, &counters);
        write_queues(out, &info, &counters);
        if info.config.features.stats {
            out.counter(
                "vmm_balloon_statistics_updates_total",
                "Memory statistics buffers the guest sent.",
            )
            .sample(&[], counters.stats_updates);
            if let Ok(statistics) = self.balloon.statistics() {
                write_guest_statistics(out, &statistics);
            }
        }
    }
}

/// Gauges of the balloon's state, one per [`BalloonInfo`] field worth watching.
fn write_state(out: &mut Exposition, info: &BalloonInfo) {
    let bytes = |pages: u32| u64::from(pages) * BALLOON_PAGE_SIZE;
    out.gauge(
        "vmm_balloon_target_bytes",
        "Size of the balloon the host asked for: memory to be taken from the guest.",
    )
    .sample(&[], bytes(info.target_pages));
    out.gauge(
        "vmm_balloon_actual_bytes",
        "Size of the balloon the guest reports: memory it has given up.",
    )
    .sample(&[], bytes(info.actual_pages));
    out.gauge(
        "vmm_balloon_driver_ready",
        "1 while the guest's balloon driver runs the device, 0 otherwise.",
    )
    .sample(&[], u64::from(info.driver_ready));
    out.gauge(
        "vmm_balloon_host_page_size_bytes",
        "Unit in which the memory backing gives memory back to the host (label: the backing).",
    )
    .sample(
        &[("backing", info.memory_backing.name())],
        info.memory_backing.host_page_size(),
    );
    out.gauge(
        "vmm_balloon_partial_huge_pages",
        "Huge pages partly in the balloon: held until all of each is given up.",
    )
    .sample(&[], info.partial_huge_pages);
}

fn write_totals(out: &mut Exposition, c: &BalloonCounters) {
    let page_bytes = |pages: u64| pages.saturating_mul(BALLOON_PAGE_SIZE);
    out.counter(
        "vmm_balloon_inflated_bytes_total",
        "Memory the guest put in the balloon (pages inflated, in bytes).",
    )
    .sample(&[], page_bytes(c.inflated_pages));
    out.counter(
        "vmm_balloon_deflated_bytes_total",
        "Memory the guest took back out of the balloon (pages deflated, in bytes).",
    )
    .sample(&[], page_bytes(c.deflated_pages));
    out.counter(
        "vmm_balloon_reported_bytes_total",
        "Free memory the guest reported (free page reporting).",
    )
    .sample(&[], c.reported_bytes);
    out.counter(
        "vmm_balloon_hinted_bytes_total",
        "Free memory the guest hinted (free page hinting).",
    )
    .sample(&[], c.hinted_bytes);
    out.counter(
        "vmm_balloon_discarded_bytes_total",
        "Memory given back to the host, by the path it came from.",
    )
    .sample(&[("path", "inflate")], c.inflate_discarded_bytes)
    .sample(&[("path", "reporting")], c.reporting_discarded_bytes)
    .sample(&[("path", "hinting")], c.hinting_discarded_bytes);
    out.counter(
        "vmm_balloon_kept_bytes_total",
        "Memory the guest offered that was not given back: outside RAM, refused by the host, stale hints or poisoned reports.",
    )
    .sample(&[], c.kept_bytes);
    out.counter(
        "vmm_balloon_discard_calls_total",
        "System calls made to give memory back to the host (madvise or fallocate).",
    )
    .sample(&[], c.discard_calls);
    out.counter(
        "vmm_balloon_discard_failures_total",
        "Of those system calls, the ones the host refused.",
    )
    .sample(&[], c.discard_failures);
    out.counter(
        "vmm_balloon_config_interrupts_total",
        "Configuration interrupts raised: a new target or a hinting command for the driver.",
    )
    .sample(&[], c.config_interrupts);
}

/// Per queue the balloon has (as its offered features lay them out), labelled with the
/// queue's name.
fn write_queues(out: &mut Exposition, info: &BalloonInfo, c: &BalloonCounters) {
    let queues: Vec<QueueRole> = QueueLayout::for_features(&info.config.features)
        .roles()
        .collect();
    let label = |role: &QueueRole| [("queue", role.name())];
    let mut family = out.counter(
        "vmm_balloon_queue_notifications_total",
        "Notifications from the driver the device processed, per queue.",
    );
    for role in &queues {
        family.sample(&label(role), c.queue(*role).notifications);
    }
    let mut family = out.counter(
        "vmm_balloon_queue_buffers_total",
        "Buffers the device gave back to the driver, per queue.",
    );
    for role in &queues {
        family.sample(&label(role), c.queue(*role).buffers);
    }
    let mut family = out.counter(
        "vmm_balloon_queue_interrupts_total",
        "Used-buffer interrupts the device raised, per queue.",
    );
    for role in &queues {
        family.sample(&label(role), c.queue(*role).interrupts);
    }
    let mut family = out.histogram(
        "vmm_balloon_queue_processing_seconds",
        "Time the device took to process one notification, per queue; the wait between the guest's kick and the device starting is not included.",
    );
    for role in &queues {
        family.histogram_sample(&label(role), &c.queue(*role).processing);
    }
}

/// Reads one statistic out of what the guest sent.
type StatField = fn(&GuestStats) -> Option<u64>;

/// The guest's statistics as gauges, in their own units: bytes, events, or pages (of the
/// guest, 4 KiB on x86) for the scan and reclaim counts. Most are running totals in the
/// guest, but a guest restart sets them back, so they are gauges of the last report.
const GUEST_STATS: [(&str, &str, StatField); 16] = [
    (
        "vmm_balloon_guest_swap_in_bytes",
        "Memory the guest swapped in, as it last reported.",
        |s| s.swap_in,
    ),
    (
        "vmm_balloon_guest_swap_out_bytes",
        "Memory the guest swapped out, as it last reported.",
        |s| s.swap_out,
    ),
    (
        "vmm_balloon_guest_major_faults",
        "Major page faults in the guest, as it last reported.",
        |s| s.major_faults,
    ),
    (
        "vmm_balloon_guest_minor_faults",
        "Minor page faults in the guest, as it last reported.",
        |s| s.minor_faults,
    ),
    (
        "vmm_balloon_guest_free_memory_bytes",
        "Memory the guest leaves unused, as it last reported.",
        |s| s.free_memory,
    ),
    (
        "vmm_balloon_guest_total_memory_bytes",
        "Total memory the guest sees, as it last reported.",
        |s| s.total_memory,
    ),
    (
        "vmm_balloon_guest_available_memory_bytes",
        "Memory available to new guest programs without swapping, as the guest last reported.",
        |s| s.available_memory,
    ),
    (
        "vmm_balloon_guest_disk_caches_bytes",
        "Memory of the guest's disk caches, as it last reported.",
        |s| s.disk_caches,
    ),
    (
        "vmm_balloon_guest_hugetlb_allocations",
        "Huge page allocations in the guest, as it last reported.",
        |s| s.hugetlb_allocations,
    ),
    (
        "vmm_balloon_guest_hugetlb_failures",
        "Failed huge page allocations in the guest, as it last reported.",
        |s| s.hugetlb_failures,
    ),
    (
        "vmm_balloon_guest_oom_kills",
        "Processes the guest's OOM killer ended, as it last reported.",
        |s| s.oom_kill,
    ),
    (
        "vmm_balloon_guest_alloc_stalls",
        "Allocation stalls in the guest, as it last reported.",
        |s| s.alloc_stall,
    ),
    (
        "vmm_balloon_guest_async_scan_pages",
        "Pages the guest's kswapd scanned, as it last reported.",
        |s| s.async_scan,
    ),
    (
        "vmm_balloon_guest_direct_scan_pages",
        "Pages the guest scanned in direct reclaim, as it last reported.",
        |s| s.direct_scan,
    ),
    (
        "vmm_balloon_guest_async_reclaim_pages",
        "Pages the guest's kswapd reclaimed, as it last reported.",
        |s| s.async_reclaim,
    ),
    (
        "vmm_balloon_guest_direct_reclaim_pages",
        "Pages the guest reclaimed directly, as it last reported.",
        |s| s.direct_reclaim,
    ),
];

/// One gauge per statistic the guest has sent; a statistic it never sent has none.
fn write_guest_statistics(out: &mut Exposition, statistics: &BalloonStatistics) {
    for (name, help, field) in GUEST_STATS {
        if let Some(value) = field(&statistics.stats) {
            out.gauge(name, help).sample(&[], value);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::devices::virtio::balloon::{Balloon, BalloonHandle};

    fn render(config: &str) -> String {
        let balloon = Balloon::new(config.parse().unwrap(), 64 << 20).unwrap();
        let handle = BalloonHandle::new(Arc::new(Mutex::new(balloon)));
        let mut out = Exposition::new();
        BalloonMetrics::new(Arc::new(handle)).write_metrics(&mut out);
        out.finish()
    }

    #[test]
    fn only_the_queues_the_balloon_has_are_shown() {
        let text = render("page-reporting,size=8M");
        assert!(
            text.contains("\nvmm_balloon_target_bytes 8388608\n"),
            "{text}"
        );
        assert!(text.contains("\nvmm_balloon_driver_ready 0\n"), "{text}");
        for queue in ["inflateq", "deflateq", "reporting_vq"] {
            let line = format!("vmm_balloon_queue_notifications_total{{queue=\"{queue}\"}} 0\n");
            assert!(text.contains(&line), "{line} in\n{text}");
        }
        assert!(
            !text.contains("statsq") && !text.contains("free_page_vq"),
            "{text}"
        );
        // Without the statistics feature there is nothing to say about statistics.
        assert!(
            !text.contains("statistics") && !text.contains("guest_"),
            "{text}"
        );
    }

    #[test]
    fn the_memory_backing_and_its_page_size_are_shown() {
        let text = render("size=0");
        assert!(
            text.contains("\nvmm_balloon_host_page_size_bytes{backing=\"anon\"} 4096\n"),
            "{text}"
        );
        assert!(
            text.contains("\nvmm_balloon_partial_huge_pages 0\n"),
            "{text}"
        );

        let balloon = Balloon::new("size=0".parse().unwrap(), 64 << 20)
            .unwrap()
            .with_memory_backing(crate::memory::MemoryBacking::Hugetlb);
        let handle = BalloonHandle::new(Arc::new(Mutex::new(balloon)));
        let mut out = Exposition::new();
        BalloonMetrics::new(Arc::new(handle)).write_metrics(&mut out);
        let text = out.finish();
        assert!(
            text.contains("\nvmm_balloon_host_page_size_bytes{backing=\"hugetlb\"} 2097152\n"),
            "{text}"
        );
    }

    #[test]
    fn every_guest_statistic_has_a_gauge_named_in_base_units() {
        let names: Vec<&str> = GUEST_STATS.iter().map(|(name, _, _)| *name).collect();
        for name in &names {
            assert!(crate::metrics::exposition::is_valid_name(name), "{name}");
            assert!(!name.ends_with("_total"), "{name} is a gauge");
        }
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len());
        // Each field of GuestStats has its own gauge: with every field a different value,
        // the gauges read every value once.
        let distinct = GuestStats {
            swap_in: Some(1),
            swap_out: Some(2),
            major_faults: Some(3),
            minor_faults: Some(4),
            free_memory: Some(5),
            total_memory: Some(6),
            available_memory: Some(7),
            disk_caches: Some(8),
            hugetlb_allocations: Some(9),
            hugetlb_failures: Some(10),
            oom_kill: Some(11),
            alloc_stall: Some(12),
            async_scan: Some(13),
            direct_scan: Some(14),
            async_reclaim: Some(15),
            direct_reclaim: Some(16),
        };
        let mut read: Vec<u64> = GUEST_STATS
            .iter()
            .filter_map(|(_, _, field)| field(&distinct))
            .collect();
        read.sort_unstable();
        assert_eq!(read, (1..=16).collect::<Vec<u64>>());
        // A statistic the guest never sent has no gauge; the largest value is exact.
        let only_swap_in = GuestStats {
            swap_in: Some(u64::MAX),
            ..Default::default()
        };
        let mut out = Exposition::new();
        write_guest_statistics(
            &mut out,
            &BalloonStatistics {
                target_pages: 0,
                actual_pages: 0,
                stats: only_swap_in,
                unknown_tags: 0,
                last_update_age_ms: None,
            },
        );
        let text = out.finish();
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(text.ends_with("\nvmm_balloon_guest_swap_in_bytes 18446744073709551615\n"));
    }
}
