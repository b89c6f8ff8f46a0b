//! Every figure the benchmark reports: its name in `result.json`, the scenario that
//! measures it, and how the report shows it.

use crate::plan::Scenario;

/// The names figures have in `result.json`.
pub mod key {
    pub const EXEC_TO_READY_S: &str = "exec_to_ready_s";
    pub const PRE_KERNEL_S: &str = "pre_kernel_s";
    pub const RSS_READY_MIB: &str = "rss_ready_mib";
    pub const OWN_READY_MIB: &str = "own_ready_mib";
    pub const RSS_IDLE_MIB: &str = "rss_idle_mib";
    pub const GUEST_USED_IDLE_MIB: &str = "guest_used_idle_mib";
    pub const IDLE_RATIO: &str = "idle_ratio";
    pub const GUEST_NOT_FREE_IDLE_MIB: &str = "guest_not_free_idle_mib";
    pub const IDLE_RATIO_NOT_FREE: &str = "idle_ratio_not_free";
    pub const OWN_IDLE_MIB: &str = "own_idle_mib";
    pub const IDLE_VMM_CPU_PCT: &str = "idle_vmm_cpu_pct";
    pub const FILL_RISE_MIB: &str = "fill_rise_mib";
    pub const RETURNED_1S_PCT: &str = "returned_1s_pct";
    pub const RETURNED_2S_PCT: &str = "returned_2s_pct";
    pub const RETURNED_5S_PCT: &str = "returned_5s_pct";
    pub const RETURNED_10S_PCT: &str = "returned_10s_pct";
    pub const INFLATE_256_S: &str = "inflate_256_s";
    pub const DEFLATE_256_S: &str = "deflate_256_s";
    pub const INFLATE_1024_S: &str = "inflate_1024_s";
    pub const DEFLATE_1024_S: &str = "deflate_1024_s";
    pub const RSS_INFLATED_1024_MIB: &str = "rss_inflated_1024_mib";
    pub const API_P50_MS: &str = "api_p50_ms";
    pub const API_P99_MS: &str = "api_p99_ms";
    pub const BURST_S: &str = "burst_s";
    pub const BURST_DEFLATED_MIB: &str = "burst_deflated_mib";
    pub const BURST_OOM_KILLS: &str = "burst_oom_kills";
    pub const OWN_END_MIB: &str = "own_end_mib";
    pub const ALL_READY_S: &str = "all_ready_s";
    pub const TOTAL_RSS_IDLE_MIB: &str = "total_rss_idle_mib";
    pub const TOTAL_RSS_PEAK_MIB: &str = "total_rss_peak_mib";
    pub const TOTAL_RSS_FREED_MIB: &str = "total_rss_freed_mib";
    pub const DENSITY_RETURNED_PCT: &str = "density_returned_pct";
    pub const OWN_PER_GUEST_MIB: &str = "own_per_guest_mib";
    pub const HOST_READY_MIB: &str = "host_ready_mib";
    pub const TOUCH_MIB_PER_S: &str = "touch_mib_per_s";
    pub const INFLATE_256_RETURNED_PCT: &str = "inflate_256_returned_pct";
    pub const PARTIAL_HUGE_PAGES: &str = "partial_huge_pages";
    pub const SLACK_RSS_MIB: &str = "slack_rss_mib";
    pub const SLACK_GUEST_RAM_RESIDENT_MIB: &str = "slack_guest_ram_resident_mib";
    pub const SLACK_NOT_FREE_MIB: &str = "slack_not_free_mib";
    pub const SLACK_RATIO: &str = "slack_ratio";
    pub const SLACK_FREE_MIB: &str = "slack_free_mib";
    pub const SLACK_FREE_RESIDENT_MIB: &str = "slack_free_resident_mib";
    pub const SLACK_JOIN_FREE_MIB: &str = "slack_join_free_mib";
    pub const SLACK_JOIN_FREE_RESIDENT_MIN_MIB: &str = "slack_join_free_resident_min_mib";
    pub const SLACK_JOIN_FREE_RESIDENT_MAX_MIB: &str = "slack_join_free_resident_max_mib";
    pub const SLACK_UNREPORTABLE_MIB: &str = "slack_unreportable_mib";
    pub const SLACK_SMALL_ZONES_MIB: &str = "slack_small_zones_mib";
    pub const SLACK_BELOW_ORDER_MIB: &str = "slack_below_order_mib";
    pub const SLACK_BELOW_ORDER_NOT_MOVABLE_MIB: &str = "slack_below_order_not_movable_mib";
    pub const SLACK_UNREPORTABLE_ORDER9_MIB: &str = "slack_unreportable_order9_mib";
    pub const SLACK_NOT_IN_BUDDY_MIB: &str = "slack_not_in_buddy_mib";
    pub const SLACK_ORDER: &str = "slack_order";
    pub const SLACK_REPORTED_MIB: &str = "slack_reported_mib";
    pub const SLACK_REPORTS: &str = "slack_reports";
    pub const SLACK_REPORTS_LAST_10S: &str = "slack_reports_last_10s";
    pub const SLACK_VCPU_S: &str = "slack_vcpu_s";
    pub const SLACK_VMM_CPU_S: &str = "slack_vmm_cpu_s";
    pub const SLACK_COMPACT_S: &str = "slack_compact_s";
    // Not rows of the table: what the plot of freed memory starts from.
    pub const FREED_AT_S: &str = "freed_at_s";
    pub const FILLED_RSS_MIB: &str = "filled_rss_mib";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Seconds,
    Mib,
    Percent,
    Ratio,
    Ms,
    Count,
    MibPerS,
}

impl Unit {
    pub fn suffix(self) -> &'static str {
        match self {
            Unit::Seconds => " s",
            Unit::Mib => " MiB",
            Unit::Percent => " %",
            Unit::Ratio => "×",
            Unit::Ms => " ms",
            Unit::Count => "",
            Unit::MibPerS => " MiB/s",
        }
    }

    pub fn decimals(self) -> usize {
        match self {
            Unit::Seconds | Unit::Mib | Unit::Ms => 1,
            Unit::MibPerS => 0,
            Unit::Ratio => 2,
            Unit::Percent | Unit::Count => 0,
        }
    }
}

/// One row of the report's table.
#[derive(Debug, Clone, Copy)]
pub struct Figure {
    pub scenario: Scenario,
    pub key: &'static str,
    pub label: &'static str,
    pub unit: Unit,
}

const fn figure(scenario: Scenario, key: &'static str, label: &'static str, unit: Unit) -> Figure {
    Figure {
        scenario,
        key,
        label,
        unit,
    }
}

/// The report's rows, in order.
pub const FIGURES: &[Figure] = &[
    figure(
        Scenario::Boot,
        key::EXEC_TO_READY_S,
        "exec → guest ready (stock kernel)",
        Unit::Seconds,
    ),
    figure(
        Scenario::Boot,
        key::PRE_KERNEL_S,
        "… of which before the guest kernel's clock starts",
        Unit::Seconds,
    ),
    figure(
        Scenario::Minimal,
        key::EXEC_TO_READY_S,
        "exec → guest ready (minimal kernel)",
        Unit::Seconds,
    ),
    figure(
        Scenario::Minimal,
        key::PRE_KERNEL_S,
        "… of which before the guest kernel's clock starts",
        Unit::Seconds,
    ),
    figure(
        Scenario::Boot,
        key::RSS_READY_MIB,
        "host RSS at guest ready",
        Unit::Mib,
    ),
    figure(
        Scenario::Boot,
        key::OWN_READY_MIB,
        "own overhead at guest ready (1 GiB, 2 vCPUs)",
        Unit::Mib,
    ),
    figure(
        Scenario::Minimal,
        key::OWN_READY_MIB,
        "own overhead at guest ready, minimal kernel",
        Unit::Mib,
    ),
    figure(
        Scenario::Boot,
        key::RSS_IDLE_MIB,
        "idle guest 30 s after ready: host RSS",
        Unit::Mib,
    ),
    figure(
        Scenario::Boot,
        key::GUEST_USED_IDLE_MIB,
        "idle guest: memory in use inside (MemTotal − MemFree)",
        Unit::Mib,
    ),
    figure(
        Scenario::Boot,
        key::IDLE_RATIO,
        "idle guest: host RSS / memory in use inside",
        Unit::Ratio,
    ),
    figure(
        Scenario::Boot,
        key::GUEST_NOT_FREE_IDLE_MIB,
        "idle guest: memory not free inside (RAM − MemFree)",
        Unit::Mib,
    ),
    figure(
        Scenario::Boot,
        key::IDLE_RATIO_NOT_FREE,
        "idle guest: host RSS / memory not free inside",
        Unit::Ratio,
    ),
    figure(
        Scenario::Boot,
        key::OWN_IDLE_MIB,
        "idle guest: own overhead",
        Unit::Mib,
    ),
    figure(
        Scenario::Boot,
        key::IDLE_VMM_CPU_PCT,
        "idle guest: CPU of the VMM's own threads",
        Unit::Percent,
    ),
    figure(
        Scenario::Timeline,
        key::FILL_RISE_MIB,
        "300 MiB filled in the guest: host RSS rise",
        Unit::Mib,
    ),
    figure(
        Scenario::Timeline,
        key::RETURNED_1S_PCT,
        "freed memory back on the host after 1 s",
        Unit::Percent,
    ),
    figure(
        Scenario::Timeline,
        key::RETURNED_2S_PCT,
        "… after 2 s",
        Unit::Percent,
    ),
    figure(
        Scenario::Timeline,
        key::RETURNED_5S_PCT,
        "… after 5 s",
        Unit::Percent,
    ),
    figure(
        Scenario::Timeline,
        key::RETURNED_10S_PCT,
        "… after 10 s",
        Unit::Percent,
    ),
    figure(
        Scenario::Timeline,
        key::INFLATE_256_S,
        "inflate 256 MiB: API call → actual reached",
        Unit::Seconds,
    ),
    figure(
        Scenario::Timeline,
        key::DEFLATE_256_S,
        "deflate 256 MiB",
        Unit::Seconds,
    ),
    figure(
        Scenario::Timeline,
        key::INFLATE_1024_S,
        "inflate 1 GiB (of 2 GiB)",
        Unit::Seconds,
    ),
    figure(
        Scenario::Timeline,
        key::DEFLATE_1024_S,
        "deflate 1 GiB",
        Unit::Seconds,
    ),
    figure(
        Scenario::Timeline,
        key::RSS_INFLATED_1024_MIB,
        "host RSS with 1 GiB inflated",
        Unit::Mib,
    ),
    figure(
        Scenario::Timeline,
        key::API_P50_MS,
        "balloon read while inflating: latency p50",
        Unit::Ms,
    ),
    figure(Scenario::Timeline, key::API_P99_MS, "… p99", Unit::Ms),
    figure(
        Scenario::Timeline,
        key::BURST_S,
        "burst: guest takes 1152 MiB with 1 GiB ballooned",
        Unit::Seconds,
    ),
    figure(
        Scenario::Timeline,
        key::BURST_DEFLATED_MIB,
        "burst: balloon deflated on OOM",
        Unit::Mib,
    ),
    figure(
        Scenario::Timeline,
        key::BURST_OOM_KILLS,
        "burst: processes the guest's OOM killer ended",
        Unit::Count,
    ),
    figure(
        Scenario::Timeline,
        key::OWN_END_MIB,
        "own overhead after the workload (2 GiB, 2 vCPUs)",
        Unit::Mib,
    ),
    figure(
        Scenario::Density,
        key::ALL_READY_S,
        "4 guests: exec → all four ready",
        Unit::Seconds,
    ),
    figure(
        Scenario::Density,
        key::TOTAL_RSS_IDLE_MIB,
        "4 guests idle: total host RSS",
        Unit::Mib,
    ),
    figure(
        Scenario::Density,
        key::TOTAL_RSS_PEAK_MIB,
        "4 guests, 300 MiB each filled: total host RSS",
        Unit::Mib,
    ),
    figure(
        Scenario::Density,
        key::TOTAL_RSS_FREED_MIB,
        "4 guests, 10 s after freeing it: total host RSS",
        Unit::Mib,
    ),
    figure(
        Scenario::Density,
        key::DENSITY_RETURNED_PCT,
        "4 guests: freed memory back after 10 s",
        Unit::Percent,
    ),
    figure(
        Scenario::Density,
        key::OWN_PER_GUEST_MIB,
        "4 guests: own overhead per VMM process (1 GiB, 1 vCPU)",
        Unit::Mib,
    ),
];

/// The rows of the backings table: each measured by every backing's scenario (its columns),
/// with the key and unit of [`Figure`] (whose scenario is left at `BackingAnon`).
pub const BACKING_FIGURES: &[Figure] = &[
    figure(
        Scenario::BackingAnon,
        key::EXEC_TO_READY_S,
        "exec → guest ready (stock kernel, 1 GiB)",
        Unit::Seconds,
    ),
    figure(
        Scenario::BackingAnon,
        key::HOST_READY_MIB,
        "host memory at guest ready",
        Unit::Mib,
    ),
    figure(
        Scenario::BackingAnon,
        key::TOUCH_MIB_PER_S,
        "guest writes 512 MiB it never touched (dd, guest clock)",
        Unit::MibPerS,
    ),
    figure(
        Scenario::BackingAnon,
        key::FILL_RISE_MIB,
        "300 MiB filled in the guest: host memory rise",
        Unit::Mib,
    ),
    figure(
        Scenario::BackingAnon,
        key::RETURNED_5S_PCT,
        "… freed: back on the host after 5 s (page reporting)",
        Unit::Percent,
    ),
    figure(
        Scenario::BackingAnon,
        key::INFLATE_256_S,
        "inflate 256 MiB: API call → actual reached",
        Unit::Seconds,
    ),
    figure(
        Scenario::BackingAnon,
        key::INFLATE_256_RETURNED_PCT,
        "inflate 256 MiB: host memory returned, of 256 MiB",
        Unit::Percent,
    ),
    figure(
        Scenario::BackingAnon,
        key::PARTIAL_HUGE_PAGES,
        "inflate 256 MiB: `partial_huge_pages` (GET /balloon)",
        Unit::Count,
    ),
];

/// The rows of the slack table: each measured by every slack scenario (its columns), with
/// the key and unit of [`Figure`] (whose scenario is left at `SlackBaseline`).
pub const SLACK_FIGURES: &[Figure] = &[
    slack(key::EXEC_TO_READY_S, "exec → guest ready", Unit::Seconds),
    slack(key::SLACK_RSS_MIB, "host RSS 30 s after ready", Unit::Mib),
    slack(
        key::SLACK_GUEST_RAM_RESIDENT_MIB,
        "… of which guest RAM resident",
        Unit::Mib,
    ),
    slack(
        key::SLACK_NOT_FREE_MIB,
        "guest RAM − MemFree (guest memory not free)",
        Unit::Mib,
    ),
    slack(
        key::SLACK_RATIO,
        "host RSS / guest memory not free (goal ≤ 1.1)",
        Unit::Ratio,
    ),
    slack(
        key::SLACK_FREE_RESIDENT_MIB,
        "free guest memory the host holds (resident − not free)",
        Unit::Mib,
    ),
    slack(
        key::SLACK_JOIN_FREE_RESIDENT_MIN_MIB,
        "… page by page: free (buddy) and resident, at least",
        Unit::Mib,
    ),
    slack(
        key::SLACK_JOIN_FREE_RESIDENT_MAX_MIB,
        "… at most",
        Unit::Mib,
    ),
    slack(key::SLACK_FREE_MIB, "MemFree", Unit::Mib),
    slack(
        key::SLACK_NOT_IN_BUDDY_MIB,
        "… not in the buddy allocator (per-CPU lists)",
        Unit::Mib,
    ),
    slack(key::SLACK_ORDER, "reporting order in effect", Unit::Count),
    slack(
        key::SLACK_UNREPORTABLE_MIB,
        "free memory reporting at that order never reports",
        Unit::Mib,
    ),
    slack(
        key::SLACK_SMALL_ZONES_MIB,
        "… in zones too small to report (all of it)",
        Unit::Mib,
    ),
    slack(
        key::SLACK_BELOW_ORDER_MIB,
        "… in blocks below the order, other zones",
        Unit::Mib,
    ),
    slack(
        key::SLACK_BELOW_ORDER_NOT_MOVABLE_MIB,
        "free below the order on non-movable free lists, all zones (pagetypeinfo)",
        Unit::Mib,
    ),
    slack(
        key::SLACK_UNREPORTABLE_ORDER9_MIB,
        "free memory order 9 would never report",
        Unit::Mib,
    ),
    slack(
        key::SLACK_REPORTED_MIB,
        "reported since boot (GET /metrics)",
        Unit::Mib,
    ),
    slack(
        key::SLACK_REPORTS,
        "reports (reporting_vq notifications) since boot",
        Unit::Count,
    ),
    slack(
        key::SLACK_REPORTS_LAST_10S,
        "… of which 20–30 s after ready",
        Unit::Count,
    ),
    slack(
        key::SLACK_VCPU_S,
        "CPU of the vCPU threads, ready → 30 s",
        Unit::Seconds,
    ),
    slack(
        key::SLACK_VMM_CPU_S,
        "CPU of the vmm's other threads, ready → 30 s",
        Unit::Seconds,
    ),
    slack(
        key::SLACK_COMPACT_S,
        "compaction (guest clock)",
        Unit::Seconds,
    ),
];

const fn slack(key: &'static str, label: &'static str, unit: Unit) -> Figure {
    figure(Scenario::SlackBaseline, key, label, unit)
}

/// The figures that are a VMM's own overhead, whatever the guest's size and vCPUs.
pub const OWN_OVERHEAD: &[(Scenario, &str)] = &[
    (Scenario::Boot, key::OWN_READY_MIB),
    (Scenario::Boot, key::OWN_IDLE_MIB),
    (Scenario::Minimal, key::OWN_READY_MIB),
    (Scenario::Timeline, key::OWN_END_MIB),
    (Scenario::Density, key::OWN_PER_GUEST_MIB),
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_row_is_one_figure_of_one_scenario() {
        let mut seen = HashSet::new();
        for f in FIGURES {
            assert!(seen.insert((f.scenario, f.key)), "{} twice", f.key);
        }
        for own in OWN_OVERHEAD {
            assert!(seen.contains(own), "{own:?} is not a row");
        }
    }
}
