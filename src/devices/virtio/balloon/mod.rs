//! The virtio memory balloon (device ID 5).
//!
//! This file holds the public interface the rest of the VMM and the API build on: the
//! configuration, the information and statistics types, the errors, the size rule
//! ([`target_pages`]) and [`BalloonControl`].
//! The device itself is [`Balloon`]; one file per concern:
//!
//! - [`layout`]: which queue index serves which role, from the offered features.
//! - [`config`]: `--balloon` values and the device configuration space.
//! - `device`: [`Balloon`], the [`VirtioDevice`](super::VirtioDevice) state machine.
//! - `inflate`, `stats`, `reporting`, `hinting`: what each queue does with its buffers.
//! - `ranges`: PFN merging and discarding guest ranges that may straddle RAM regions.
//! - `budget`: how much work one notification may cause, so none holds the device for long.
//! - `huge_pages`: which pages of each 2 MiB huge page are in the balloon, so that with a
//!   huge-page backing a huge page goes back to the host once all of it is given up.
//! - `handle`: [`BalloonHandle`], the running balloon behind [`BalloonControl`].
//! - [`metrics`]: what `/metrics` shows of a balloon, read through [`BalloonControl`].
//! - `chains`, `warnings`: taking buffers off a queue and giving them back; logging a
//!   misbehaving guest once per kind of fault.
//!
//! `docs/balloon.md` explains the protocol decisions (queue numbering, page poison,
//! hinting) at length.

mod budget;
mod chains;
pub mod config;
mod device;
mod handle;
mod hinting;
mod huge_pages;
mod inflate;
pub mod layout;
pub mod metrics;
mod ranges;
mod reporting;
mod stats;
mod warnings;

#[cfg(test)]
mod device_tests;
#[cfg(test)]
mod huge_page_tests;
#[cfg(test)]
mod test_util;
#[cfg(test)]
mod transport_tests;

pub use config::{BalloonConfigError, MAX_STATS_INTERVAL_S};
pub use device::{Balloon, BalloonCounters, BalloonSetupError, QueueCounters};
pub use handle::BalloonHandle;
pub use layout::{QueueLayout, QueueRole};

use crate::memory::MemoryBacking;
use crate::size::{HumanSize, PAGE_SIZE};

/// `VIRTIO_BALLOON_F_MUST_TELL_HOST`: the guest tells the host before it reuses deflated pages.
pub const VIRTIO_BALLOON_F_MUST_TELL_HOST: u32 = 0;
/// `VIRTIO_BALLOON_F_STATS_VQ`: the statistics queue exists.
pub const VIRTIO_BALLOON_F_STATS_VQ: u32 = 1;
/// `VIRTIO_BALLOON_F_DEFLATE_ON_OOM`: the guest may deflate the balloon when it runs out of memory.
pub const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u32 = 2;
/// `VIRTIO_BALLOON_F_FREE_PAGE_HINT`: the free page hinting queue exists.
pub const VIRTIO_BALLOON_F_FREE_PAGE_HINT: u32 = 3;
/// `VIRTIO_BALLOON_F_PAGE_POISON`: the guest tells the host the value freed pages hold.
pub const VIRTIO_BALLOON_F_PAGE_POISON: u32 = 4;
/// `VIRTIO_BALLOON_F_REPORTING`: the free page reporting queue exists.
pub const VIRTIO_BALLOON_F_REPORTING: u32 = 5;

/// `free_page_hint_cmd_id` value telling the guest to stop hinting (also its initial value).
pub const FREE_PAGE_HINT_CMD_ID_STOP: u32 = 0;
/// `free_page_hint_cmd_id` value telling the guest it may reuse the pages it hinted.
pub const FREE_PAGE_HINT_CMD_ID_DONE: u32 = 1;

/// Balloon page size: PFNs in the inflate/deflate queues are in 4 KiB units.
pub const BALLOON_PAGE_SIZE: u64 = PAGE_SIZE;

/// The optional features a balloon offers, as chosen on the command line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BalloonFeatures {
    pub must_tell_host: bool,
    pub stats: bool,
    pub deflate_on_oom: bool,
    pub free_page_hint: bool,
    pub page_poison: bool,
    pub page_reporting: bool,
}

/// The balloon as configured at start: `--balloon stats=2,page-reporting,size=256M`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BalloonConfig {
    pub features: BalloonFeatures,
    /// Statistics polling interval in seconds; 0 means the host does not poll.
    pub stats_interval_s: u32,
    /// Balloon size at boot, in bytes (a whole number of pages).
    pub initial_size: u64,
}

/// Everything the VMM shows about the balloon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalloonInfo {
    pub config: BalloonConfig,
    /// The target the host set (`num_pages`), in 4 KiB pages.
    pub target_pages: u32,
    /// What the guest reports it has given (`actual`), in 4 KiB pages.
    pub actual_pages: u32,
    /// The current statistics polling interval in seconds (0: not polling).
    pub stats_interval_s: u32,
    /// Whether the driver has set the device up (DRIVER_OK) and it is running.
    pub driver_ready: bool,
    /// The features the driver accepted, as a bit mask of virtio feature bits.
    pub acked_features: u64,
    /// What backs guest RAM; its `host_page_size()` is the unit memory goes back in.
    pub memory_backing: MemoryBacking,
    /// Huge pages (with a huge-page backing) that the guest has put some but not all of in
    /// the balloon, which the host keeps until the rest follows.
    pub partial_huge_pages: u64,
}

/// The statistics the guest last reported. Memory amounts are in bytes; a tag the guest
/// has not sent is `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestStats {
    pub swap_in: Option<u64>,
    pub swap_out: Option<u64>,
    pub major_faults: Option<u64>,
    pub minor_faults: Option<u64>,
    pub free_memory: Option<u64>,
    pub total_memory: Option<u64>,
    pub available_memory: Option<u64>,
    pub disk_caches: Option<u64>,
    pub hugetlb_allocations: Option<u64>,
    pub hugetlb_failures: Option<u64>,
    pub oom_kill: Option<u64>,
    pub alloc_stall: Option<u64>,
    pub async_scan: Option<u64>,
    pub direct_scan: Option<u64>,
    pub async_reclaim: Option<u64>,
    pub direct_reclaim: Option<u64>,
}

/// A statistics snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalloonStatistics {
    pub target_pages: u32,
    pub actual_pages: u32,
    pub stats: GuestStats,
    /// How many stat entries carried a tag this device does not know.
    pub unknown_tags: u64,
    /// Milliseconds since the guest last sent statistics; `None` if it never did.
    pub last_update_age_ms: Option<u64>,
}

/// The state of free page hinting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HintingStatus {
    /// The command ID the host last set in `free_page_hint_cmd_id`.
    pub host_cmd: u32,
    /// The command ID the guest last sent on the free page queue, if any.
    pub guest_cmd: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BalloonError {
    #[error(
        "balloon size {} ({requested} bytes) is larger than guest memory ({}); \
         the balloon cannot take more than the guest has",
        HumanSize(*requested),
        HumanSize(*guest_memory)
    )]
    TargetTooLarge { requested: u64, guest_memory: u64 },
    #[error(
        "balloon size {} ({requested} bytes) is more 4 KiB pages than the balloon can count \
         (at most {})",
        HumanSize(*requested),
        u32::MAX
    )]
    TargetTooManyPages { requested: u64 },
    #[error("balloon statistics are not enabled; start vmm with --balloon stats")]
    StatsDisabled,
    #[error("free page hinting is not enabled; start vmm with --balloon free-page-hint")]
    HintingDisabled,
    #[error("statistics polling interval {0} s is too large; the most is {MAX_STATS_INTERVAL_S} s (a day)")]
    IntervalTooLarge(u64),
}

/// The balloon's size rule: a balloon of `requested` bytes in a guest with `guest_memory`
/// bytes of RAM, as a target in 4 KiB pages (a partial page does not count). The balloon
/// can take at most all of guest memory, and counts its pages in 32 bits (the
/// configuration space's `num_pages`). `Balloon::new`, `Balloon::set_target_pages` and
/// the API all ask this function.
pub fn target_pages(requested: u64, guest_memory: u64) -> Result<u32, BalloonError> {
    if requested > guest_memory {
        return Err(BalloonError::TargetTooLarge {
            requested,
            guest_memory,
        });
    }
    u32::try_from(requested / BALLOON_PAGE_SIZE)
        .map_err(|_| BalloonError::TargetTooManyPages { requested })
}

/// The one small interface through which the VMM reads and sets the balloon while the
/// guest runs. The API is built on it; tests implement it with a model.
pub trait BalloonControl: Send + Sync {
    /// Configuration, target, actual size and negotiation state.
    fn info(&self) -> BalloonInfo;
    /// Sets the balloon target (memory taken from the guest) in 4 KiB pages and tells the
    /// guest at once with a config interrupt. Never waits for the guest. A target
    /// [`target_pages`] refuses is refused with its error.
    fn set_target_pages(&self, pages: u32) -> Result<(), BalloonError>;
    /// The latest statistics; never waits for the guest.
    fn statistics(&self) -> Result<BalloonStatistics, BalloonError>;
    /// Changes the statistics polling interval (0 stops polling).
    fn set_stats_interval(&self, seconds: u32) -> Result<(), BalloonError>;
    /// Starts a free page hinting run with a new command ID.
    fn start_hinting(&self, acknowledge_on_stop: bool) -> Result<(), BalloonError>;
    /// Where the hinting protocol stands.
    fn hinting_status(&self) -> Result<HintingStatus, BalloonError>;
    /// Ends a hinting run: the host sets DONE so the guest may reuse the hinted pages.
    fn stop_hinting(&self) -> Result<(), BalloonError>;
    /// Running totals of pages given and returned and of each queue's work, for metrics.
    fn counters(&self) -> BalloonCounters;
}
