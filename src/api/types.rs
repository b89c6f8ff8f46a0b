//! The JSON bodies of the API as they travel on the wire.
//!
//! Request bodies refuse unknown fields so that a typo (`amount_mb`) is an error rather
//! than a silently ignored setting. Response bodies accept unknown fields when read back
//! (by `vmm ctl`) so that an older client keeps working against a newer server.
//! Field names follow Firecracker's balloon API wherever it has one.

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use crate::devices::virtio::balloon::{
    BalloonInfo, BalloonStatistics, GuestStats, HintingStatus, BALLOON_PAGE_SIZE,
};
use crate::size::{KIB, MIB};

use super::VmInfo;

/// Balloon pages (4 KiB) in one MiB.
pub const PAGES_PER_MIB: u32 = (MIB / BALLOON_PAGE_SIZE) as u32;

/// MiB in a number of balloon pages, rounded down.
pub fn pages_to_mib(pages: u32) -> u32 {
    pages / PAGES_PER_MIB
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    pub fault_message: String,
}

/// `GET /`: the instance, in the shape of Firecracker's `InstanceInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfoBody {
    /// The instance ID (`--id`).
    pub id: String,
    /// `Running`, or `Stopping` once a shutdown was requested.
    pub state: String,
    pub vmm_version: String,
    pub app_name: String,
}

impl InstanceInfoBody {
    /// The name `GET /` gives this VMM.
    pub const APP_NAME: &'static str = "vmm";

    pub fn new(info: &VmInfo) -> Self {
        InstanceInfoBody {
            id: info.id.clone(),
            state: info.state.to_string(),
            vmm_version: env!("CARGO_PKG_VERSION").to_string(),
            app_name: Self::APP_NAME.to_string(),
        }
    }
}

/// `GET /machine-config`, in the shape of Firecracker's `MachineConfiguration` (its two
/// required fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineConfigBody {
    pub vcpu_count: u8,
    /// Guest memory in MiB, rounded down.
    pub mem_size_mib: u64,
}

impl From<&VmInfo> for MachineConfigBody {
    fn from(info: &VmInfo) -> Self {
        MachineConfigBody {
            vcpu_count: info.vcpus,
            mem_size_mib: info.memory_bytes / MIB,
        }
    }
}

/// `GET /vm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfoBody {
    /// The instance ID (`--id`).
    pub id: String,
    pub vcpus: u8,
    /// Guest memory in MiB, rounded down.
    pub memory_mib: u64,
    /// `Running`, `Paused`, or `Stopping` once a shutdown was requested.
    pub state: String,
    pub uptime_ms: u64,
    /// Whether a balloon device is attached (the `/balloon` routes answer 409 otherwise).
    pub balloon_attached: bool,
}

impl VmInfoBody {
    pub fn new(info: &VmInfo, balloon_attached: bool) -> Self {
        VmInfoBody {
            id: info.id.clone(),
            vcpus: info.vcpus,
            memory_mib: info.memory_bytes / MIB,
            state: info.state.to_string(),
            uptime_ms: info.uptime_ms,
            balloon_attached,
        }
    }
}

/// `GET /balloon`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonBody {
    /// The target size of the balloon: memory taken from the guest, in MiB (rounded down).
    pub amount_mib: u32,
    /// What the guest has actually given so far, in MiB (rounded down).
    pub actual_mib: u32,
    pub deflate_on_oom: bool,
    /// Seconds between statistics requests; 0 when the host does not poll.
    pub stats_polling_interval_s: u32,
    /// Whether the statistics queue is offered (`--balloon stats`).
    pub statistics: bool,
    pub free_page_reporting: bool,
    pub free_page_hinting: bool,
    pub page_poison: bool,
    pub must_tell_host: bool,
    /// Whether the guest's balloon driver has set the device up.
    pub driver_ready: bool,
    /// What backs guest memory, as `--mem-backing` names it: `anon`, `memfd`, `thp` or
    /// `hugetlb`.
    #[serde(default)]
    pub memory_backing: String,
    /// The size of the host pages behind guest memory, in KiB: the unit in which memory
    /// goes back to the host (4, or 2048 with `thp` and `hugetlb`).
    #[serde(default)]
    pub host_page_size_kib: u64,
    /// Huge pages the guest has put some but not all of in the balloon; the host keeps
    /// them until the rest follows. Always 0 with 4 KiB pages.
    #[serde(default)]
    pub partial_huge_pages: u64,
}

impl From<&BalloonInfo> for BalloonBody {
    fn from(info: &BalloonInfo) -> Self {
        let features = &info.config.features;
        BalloonBody {
            amount_mib: pages_to_mib(info.target_pages),
            actual_mib: pages_to_mib(info.actual_pages),
            deflate_on_oom: features.deflate_on_oom,
            stats_polling_interval_s: info.stats_interval_s,
            statistics: features.stats,
            free_page_reporting: features.page_reporting,
            free_page_hinting: features.free_page_hint,
            page_poison: features.page_poison,
            must_tell_host: features.must_tell_host,
            driver_ready: info.driver_ready,
            memory_backing: info.memory_backing.name().to_string(),
            host_page_size_kib: info.memory_backing.host_page_size() / KIB,
            partial_huge_pages: info.partial_huge_pages,
        }
    }
}

/// `GET /balloon/statistics`. A guest statistic is present only if the guest reported it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BalloonStatsBody {
    pub target_pages: u32,
    pub actual_pages: u32,
    pub target_mib: u32,
    pub actual_mib: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_in: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_out: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major_faults: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor_faults: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_memory: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_memory: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_memory: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_caches: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugetlb_allocations: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugetlb_failures: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_kill: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alloc_stall: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub async_scan: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_scan: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub async_reclaim: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_reclaim: Option<u64>,
    /// Milliseconds since the guest last sent statistics; absent if it never did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_age_ms: Option<u64>,
    /// Statistics entries with a tag this VMM does not know; absent when there were none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unknown_tags: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

impl From<&BalloonStatistics> for BalloonStatsBody {
    fn from(snapshot: &BalloonStatistics) -> Self {
        let GuestStats {
            swap_in,
            swap_out,
            major_faults,
            minor_faults,
            free_memory,
            total_memory,
            available_memory,
            disk_caches,
            hugetlb_allocations,
            hugetlb_failures,
            oom_kill,
            alloc_stall,
            async_scan,
            direct_scan,
            async_reclaim,
            direct_reclaim,
        } = snapshot.stats;
        BalloonStatsBody {
            target_pages: snapshot.target_pages,
            actual_pages: snapshot.actual_pages,
            target_mib: pages_to_mib(snapshot.target_pages),
            actual_mib: pages_to_mib(snapshot.actual_pages),
            swap_in,
            swap_out,
            major_faults,
            minor_faults,
            free_memory,
            total_memory,
            available_memory,
            disk_caches,
            hugetlb_allocations,
            hugetlb_failures,
            oom_kill,
            alloc_stall,
            async_scan,
            direct_scan,
            async_reclaim,
            direct_reclaim,
            last_update_age_ms: snapshot.last_update_age_ms,
            unknown_tags: snapshot.unknown_tags,
        }
    }
}

/// `GET /balloon/hinting/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HintingStatusBody {
    pub host_cmd: u32,
    /// Absent until the guest has sent a command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_cmd: Option<u32>,
}

impl From<&HintingStatus> for HintingStatusBody {
    fn from(status: &HintingStatus) -> Self {
        HintingStatusBody {
            host_cmd: status.host_cmd,
            guest_cmd: status.guest_cmd,
        }
    }
}

/// `PATCH /balloon`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonUpdate {
    /// The new target size of the balloon (memory taken from the guest), in MiB.
    #[serde(deserialize_with = "whole_u32")]
    pub amount_mib: u32,
}

/// `PATCH /balloon/statistics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonStatsUpdate {
    #[serde(deserialize_with = "whole_u32")]
    pub stats_polling_interval_s: u32,
}

/// `PATCH /balloon/hinting/start`; the body is optional.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HintingStart {
    /// Whether the host ends the run by itself (sets DONE) when the guest reports it has
    /// finished hinting. Defaults to true, as in Firecracker.
    #[serde(default = "default_acknowledge_on_stop")]
    pub acknowledge_on_stop: bool,
}

impl Default for HintingStart {
    fn default() -> Self {
        HintingStart {
            acknowledge_on_stop: default_acknowledge_on_stop(),
        }
    }
}

fn default_acknowledge_on_stop() -> bool {
    true
}

/// A body that must be empty or `{}` (`PATCH /balloon/hinting/stop`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmptyBody {}

/// `PATCH /vm`, as in Firecracker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmUpdate {
    pub state: VmStateChange,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmStateChange {
    /// Stop every vCPU until `Resumed`.
    Paused,
    /// Let the vCPUs run again.
    Resumed,
}

/// `PUT /actions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    pub action_type: ActionType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    /// Stop the VM; vmm exits with status 0.
    Shutdown,
    /// Type Ctrl+Alt+Del on the guest's keyboard.
    SendCtrlAltDel,
}

/// Accepts only a JSON integer that fits a u32, so that `-1`, `1.5`, `"512"` and
/// `4294967296` are refused with a message that names the value (the caller adds the
/// field name).
fn whole_u32<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    struct WholeU32;

    impl Visitor<'_> for WholeU32 {
        type Value = u32;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "a whole number from 0 to {}", u32::MAX)
        }

        fn visit_u64<E: de::Error>(self, value: u64) -> Result<u32, E> {
            u32::try_from(value)
                .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(value), &self))
        }

        fn visit_i64<E: de::Error>(self, value: i64) -> Result<u32, E> {
            u32::try_from(value).map_err(|_| E::invalid_value(de::Unexpected::Signed(value), &self))
        }
    }

    deserializer.deserialize_u32(WholeU32)
}
