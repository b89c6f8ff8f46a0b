//! statsq: the guest's memory statistics.
//!
//! The queue runs backwards. The driver queues one device-readable buffer of packed
//! `{le16 tag; le64 val}` entries (10 bytes each) at probe; the device reads it and keeps
//! it. Returning it is the request for fresh numbers: the driver refills the same buffer
//! and queues it again. So the device holds the buffer and hands it back once per polling
//! interval.

use std::time::Instant;

use virtio_queue::Queue;

use super::chains::{give_back, readable_bytes, take_available, ReadableBytes};
use super::warnings::{Warning, Warnings};
use super::GuestStats;
use crate::memory::GuestMemoryMmap;

/// Bytes per entry: `struct virtio_balloon_stat` is packed.
pub(super) const STAT_ENTRY_BYTES: usize = 10;
/// The most entries a buffer may have. Linux sends at most 16 (`VIRTIO_BALLOON_S_NR`);
/// four times that leaves room for future tags and refuses nonsense.
pub(super) const MAX_STAT_ENTRIES: usize = 64;

/// One buffer's worth of statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct DecodedStats {
    pub stats: GuestStats,
    pub unknown_tags: u64,
    /// Bytes after the last whole entry.
    pub trailing_bytes: usize,
}

/// Decodes a statistics buffer. A tag repeated in one buffer keeps its last value.
pub(super) fn decode(bytes: &[u8]) -> DecodedStats {
    let mut out = DecodedStats::default();
    let entries = bytes.chunks_exact(STAT_ENTRY_BYTES);
    out.trailing_bytes = entries.remainder().len();
    for entry in entries {
        let tag = u16::from_le_bytes([entry[0], entry[1]]);
        let mut val = [0u8; 8];
        val.copy_from_slice(&entry[2..10]);
        let val = Some(u64::from_le_bytes(val));
        let s = &mut out.stats;
        // Tag numbers from include/uapi/linux/virtio_balloon.h.
        match tag {
            0 => s.swap_in = val,
            1 => s.swap_out = val,
            2 => s.major_faults = val,
            3 => s.minor_faults = val,
            4 => s.free_memory = val,
            5 => s.total_memory = val,
            6 => s.available_memory = val,
            7 => s.disk_caches = val,
            8 => s.hugetlb_allocations = val,
            9 => s.hugetlb_failures = val,
            10 => s.oom_kill = val,
            11 => s.alloc_stall = val,
            12 => s.async_scan = val,
            13 => s.direct_scan = val,
            14 => s.async_reclaim = val,
            15 => s.direct_reclaim = val,
            _ => out.unknown_tags += 1,
        }
    }
    out
}

/// What one round of statsq did.
#[derive(Debug, Default)]
pub(super) struct StatsOutcome {
    /// Buffers that went back to the driver.
    pub returned: usize,
    /// Buffers read as fresh statistics.
    pub updates: u64,
}

/// What the device knows and holds of the statistics exchange.
#[derive(Debug, Default)]
pub(super) struct StatsState {
    /// The head of the buffer the device keeps until the next poll.
    held: Option<u16>,
    /// The latest buffer's contents; each buffer replaces the previous one whole, as
    /// the driver fills every entry it knows each time.
    latest: DecodedStats,
    last_update: Option<Instant>,
}

impl StatsState {
    pub fn latest(&self) -> &DecodedStats {
        &self.latest
    }

    pub fn last_update(&self) -> Option<Instant> {
        self.last_update
    }

    /// Reads every buffer available on statsq; keeps the newest valid one.
    pub fn process_queue(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        warnings: &mut Warnings,
    ) -> StatsOutcome {
        let mut outcome = StatsOutcome::default();
        let mut to_return = Vec::new();
        for chain in take_available(queue, mem, warnings) {
            let head = chain.head_index();
            let limit = (MAX_STAT_ENTRIES * STAT_ENTRY_BYTES) as u64;
            match readable_bytes(chain, limit, warnings) {
                ReadableBytes::Bytes(bytes) => {
                    let decoded = decode(&bytes);
                    if decoded.trailing_bytes != 0 {
                        warnings.warn(Warning::StatsLength, format_args!("{} bytes", bytes.len()));
                    }
                    self.latest = decoded;
                    self.last_update = Some(Instant::now());
                    outcome.updates += 1;
                    if let Some(previous) = self.held.replace(head) {
                        warnings.warn(Warning::StatsSecondBuffer, format_args!("head {previous}"));
                        to_return.push(previous);
                    }
                }
                ReadableBytes::TooLong(len) => {
                    warnings.warn(
                        Warning::StatsOversized,
                        format_args!("{len} bytes, at most {limit}"),
                    );
                    to_return.push(head);
                }
                ReadableBytes::OutsideRam(addr) => {
                    warnings.warn(
                        Warning::BufferOutsideRam,
                        format_args!("statistics buffer at {:#x}", addr.0),
                    );
                    to_return.push(head);
                }
            }
        }
        outcome.returned = give_back(queue, mem, &to_return, warnings);
        outcome
    }

    /// Hands the held buffer back, asking the driver for fresh statistics. Returns whether
    /// a buffer went back.
    pub fn request_update(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        warnings: &mut Warnings,
    ) -> bool {
        match self.held.take() {
            Some(head) => give_back(queue, mem, &[head], warnings) == 1,
            None => false,
        }
    }

    /// Forgets the held buffer and the statistics (device reset).
    pub fn reset(&mut self) {
        *self = StatsState::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tag: u16, val: u64) -> Vec<u8> {
        let mut e = tag.to_le_bytes().to_vec();
        e.extend_from_slice(&val.to_le_bytes());
        e
    }

    #[test]
    fn decodes_every_known_tag_to_its_field() {
        let bytes: Vec<u8> = (0u16..16)
            .flat_map(|tag| entry(tag, 1000 + u64::from(tag)))
            .collect();
        let d = decode(&bytes);
        let s = d.stats;
        let fields = [
            s.swap_in,
            s.swap_out,
            s.major_faults,
            s.minor_faults,
            s.free_memory,
            s.total_memory,
            s.available_memory,
            s.disk_caches,
            s.hugetlb_allocations,
            s.hugetlb_failures,
            s.oom_kill,
            s.alloc_stall,
            s.async_scan,
            s.direct_scan,
            s.async_reclaim,
            s.direct_reclaim,
        ];
        for (tag, field) in fields.iter().enumerate() {
            assert_eq!(*field, Some(1000 + tag as u64), "tag {tag}");
        }
        assert_eq!(d.unknown_tags, 0);
        assert_eq!(d.trailing_bytes, 0);
    }

    #[test]
    fn counts_unknown_tags_and_leaves_unsent_fields_empty() {
        let mut bytes = entry(4, 1 << 30);
        bytes.extend(entry(16, 7));
        bytes.extend(entry(0xffff, 7));
        bytes.extend(entry(4, 2 << 30));
        let d = decode(&bytes);
        assert_eq!(d.stats.free_memory, Some(2 << 30));
        assert_eq!(d.stats.total_memory, None);
        assert_eq!(d.unknown_tags, 2);
    }

    #[test]
    fn a_partial_entry_is_ignored() {
        let mut bytes = entry(5, 42);
        bytes.extend_from_slice(&[5, 0, 1]);
        let d = decode(&bytes);
        assert_eq!(d.stats.total_memory, Some(42));
        assert_eq!(d.trailing_bytes, 3);
        assert_eq!(decode(&[]), DecodedStats::default());
    }
}
