//! Turning what the guest gives up into host ranges to free: PFNs merged into runs of
//! contiguous pages, ranges trimmed to whole pages, and discards clipped to guest RAM.
//!
//! Merging is the point: the seed device made one `madvise` per 4 KiB page; a run of
//! contiguous pages costs one system call however long it is.

use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::warnings::{Warning, Warnings};
use super::BALLOON_PAGE_SIZE;
use crate::memory::{discard_range, DiscardError, GuestMemoryMmap};

const PFN_SHIFT: u32 = 12;

/// A run of contiguous 4 KiB pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PageRun {
    pub first_pfn: u64,
    pub pages: u64,
}

impl PageRun {
    pub fn addr(&self) -> u64 {
        self.first_pfn << PFN_SHIFT
    }

    pub fn len(&self) -> u64 {
        self.pages << PFN_SHIFT
    }
}

/// Sorts `pfns`, drops duplicates and returns the runs of contiguous pages, in order.
/// `pfns` is left sorted and deduplicated.
pub(super) fn merge_pfns(pfns: &mut Vec<u32>) -> Vec<PageRun> {
    pfns.sort_unstable();
    pfns.dedup();
    let mut runs: Vec<PageRun> = Vec::new();
    for &pfn in pfns.iter() {
        let pfn = u64::from(pfn);
        match runs.last_mut() {
            Some(run) if run.first_pfn + run.pages == pfn => run.pages += 1,
            _ => runs.push(PageRun {
                first_pfn: pfn,
                pages: 1,
            }),
        }
    }
    runs
}

/// The whole pages inside `[addr, addr + len)`: the start rounded up and the end rounded
/// down to 4 KiB. `None` if no whole page fits (or the range wraps around).
pub(super) fn whole_pages(addr: u64, len: u64) -> Option<(u64, u64)> {
    whole_units(addr, len, BALLOON_PAGE_SIZE)
}

/// The whole `unit`-aligned blocks of `unit` bytes (a power of two) inside
/// `[addr, addr + len)`, as one range. `None` if no whole block fits (or the range wraps
/// around).
pub(super) fn whole_units(addr: u64, len: u64, unit: u64) -> Option<(u64, u64)> {
    let mask = unit - 1;
    let end = addr.checked_add(len)? & !mask;
    let start = addr.checked_add(mask)? & !mask;
    if end > start {
        Some((start, end - start))
    } else {
        None
    }
}

/// Where a range lies with respect to guest RAM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct RamParts {
    /// The parts that are guest RAM, one per region the range touches, in order.
    pub in_ram: Vec<(u64, u64)>,
    /// Bytes outside guest RAM.
    pub outside_ram: u64,
    /// The first address outside guest RAM.
    pub first_outside: Option<u64>,
}

/// Splits `[addr, addr + len)` (clipped at the end of the address space) into the parts
/// that are guest RAM, one per region, and what is not.
pub(super) fn ram_parts(mem: &GuestMemoryMmap, addr: u64, len: u64) -> RamParts {
    let mut parts = RamParts::default();
    let end = addr.saturating_add(len);
    let mut cursor = addr;
    while cursor < end {
        match mem.find_region(GuestAddress(cursor)) {
            Some(region) => {
                let region_end = region.last_addr().raw_value().saturating_add(1);
                let chunk_end = end.min(region_end);
                parts.in_ram.push((cursor, chunk_end - cursor));
                cursor = chunk_end;
            }
            None => {
                let next_region = mem
                    .iter()
                    .map(|r| r.start_addr().raw_value())
                    .filter(|&start| start > cursor)
                    .min()
                    .unwrap_or(end)
                    .min(end);
                parts.outside_ram += next_region - cursor;
                parts.first_outside.get_or_insert(cursor);
                cursor = next_region;
            }
        }
    }
    parts
}

/// What happened to the bytes of a range given to [`discard_in_ram`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct DiscardOutcome {
    /// Bytes given back to the host.
    pub discarded: u64,
    /// Bytes outside guest RAM, left alone.
    pub outside_ram: u64,
    /// The first address outside guest RAM, for the log.
    pub first_outside: Option<u64>,
    /// Bytes whose discard failed, and the first error.
    pub failed: u64,
    pub first_error: Option<DiscardError>,
    /// Discard calls made.
    pub calls: u64,
    /// Discard calls that failed.
    pub failed_calls: u64,
}

impl DiscardOutcome {
    /// Adds another outcome's counts to this one (saturating: the guest drives them).
    pub fn absorb(&mut self, other: DiscardOutcome) {
        self.discarded = self.discarded.saturating_add(other.discarded);
        self.outside_ram = self.outside_ram.saturating_add(other.outside_ram);
        self.failed = self.failed.saturating_add(other.failed);
        self.calls = self.calls.saturating_add(other.calls);
        self.failed_calls = self.failed_calls.saturating_add(other.failed_calls);
        self.first_outside = self.first_outside.or(other.first_outside);
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Discards every part of the page-aligned range `[addr, addr + len)` that is guest RAM,
/// one call per RAM region it touches, and skips the parts that are not. Never touches
/// memory outside guest RAM, whatever the guest wrote.
pub(super) fn discard_in_ram(mem: &GuestMemoryMmap, addr: u64, len: u64) -> DiscardOutcome {
    discard_units_in_ram(mem, addr, len, BALLOON_PAGE_SIZE)
}

/// Like [`discard_in_ram`], but discards only whole `unit`-aligned blocks of `unit` bytes
/// (the host page size of the backing): the rest of each RAM part is left alone, counted
/// neither as discarded nor as outside RAM.
pub(super) fn discard_units_in_ram(
    mem: &GuestMemoryMmap,
    addr: u64,
    len: u64,
    unit: u64,
) -> DiscardOutcome {
    let parts = ram_parts(mem, addr, len);
    let mut outcome = DiscardOutcome {
        outside_ram: parts.outside_ram,
        first_outside: parts.first_outside,
        ..Default::default()
    };
    for (part, part_len) in parts.in_ram {
        let Some((start, chunk)) = whole_units(part, part_len, unit) else {
            continue;
        };
        outcome.calls += 1;
        match discard_range(mem, GuestAddress(start), chunk) {
            Ok(()) => outcome.discarded += chunk,
            Err(e) => {
                outcome.failed += chunk;
                outcome.failed_calls += 1;
                outcome.first_error.get_or_insert(e);
            }
        }
    }
    outcome
}

/// Discards the whole host pages (`unit` bytes: 4 KiB, or 2 MiB with a huge-page backing)
/// inside `[start, start + len)` of a free range the guest gave up (a reported or hinted
/// block it sent as `addr`+`given_len`), and logs once what lay outside guest RAM or could
/// not be discarded. `kind` names the range in the log ("reported").
pub(super) fn discard_free_range(
    mem: &GuestMemoryMmap,
    (start, len): (u64, u64),
    (kind, addr, given_len): (&str, u64, u64),
    unit: u64,
    warnings: &mut Warnings,
) -> DiscardOutcome {
    let result = discard_units_in_ram(mem, start, len, unit);
    if let Some(at) = result.first_outside {
        warnings.warn(
            Warning::BufferOutsideRam,
            format_args!("{kind} range {addr:#x}+{given_len:#x} reaches {at:#x}"),
        );
    }
    if let Some(e) = &result.first_error {
        warnings.warn(Warning::DiscardFailed, e);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{create_guest_memory, resident_bytes, MemoryBacking};
    use crate::size::MIB;
    use vm_memory::Bytes;

    fn run(first_pfn: u64, pages: u64) -> PageRun {
        PageRun { first_pfn, pages }
    }

    #[test]
    fn merges_sorted_unsorted_and_duplicate_pfns() {
        assert_eq!(merge_pfns(&mut vec![]), vec![]);
        assert_eq!(merge_pfns(&mut vec![5, 6, 7]), vec![run(5, 3)]);
        assert_eq!(
            merge_pfns(&mut vec![9, 7, 8, 1, 3, 2, 100]),
            vec![run(1, 3), run(7, 3), run(100, 1)]
        );
        assert_eq!(merge_pfns(&mut vec![4, 4, 5, 4]), vec![run(4, 2)]);
        assert_eq!(
            merge_pfns(&mut vec![u32::MAX, u32::MAX - 1, 0]),
            vec![run(0, 1), run(u64::from(u32::MAX) - 1, 2)]
        );
        let r = run(0x10, 2);
        assert_eq!((r.addr(), r.len()), (0x10000, 0x2000));
    }

    #[test]
    fn whole_pages_trims_to_page_boundaries() {
        assert_eq!(whole_pages(0x1000, 0x2000), Some((0x1000, 0x2000)));
        assert_eq!(whole_pages(0x1001, 0x2000), Some((0x2000, 0x1000)));
        assert_eq!(whole_pages(0x1000, 0xfff), None);
        assert_eq!(whole_pages(0x1800, 0x1000), None);
        assert_eq!(whole_pages(0, 0), None);
        assert_eq!(whole_pages(u64::MAX - 0xfff, 0x1000), None);
        assert_eq!(whole_pages(u64::MAX, u64::MAX), None);
    }

    #[test]
    fn discards_ram_and_skips_what_is_not() {
        let mem =
            create_guest_memory(&[(GuestAddress(0), 16 * MIB)], MemoryBacking::Anonymous).unwrap();
        mem.write_slice(&vec![0x5a; 16 * MIB as usize], GuestAddress(0))
            .unwrap();
        let before = resident_bytes(&mem);
        let outcome = discard_in_ram(&mem, 12 * MIB, 8 * MIB);
        assert_eq!(outcome.discarded, 4 * MIB);
        assert_eq!(outcome.outside_ram, 4 * MIB);
        assert_eq!(outcome.first_outside, Some(16 * MIB));
        assert_eq!(outcome.failed, 0);
        assert_eq!(outcome.calls, 1);
        assert!(before - resident_bytes(&mem) >= 4 * MIB - 4096);
        let mut page = [1u8; 4096];
        mem.read_slice(&mut page, GuestAddress(12 * MIB)).unwrap();
        assert!(page.iter().all(|&b| b == 0));
        mem.read_slice(&mut page, GuestAddress(12 * MIB - 4096))
            .unwrap();
        assert!(page.iter().all(|&b| b == 0x5a));

        let far = discard_in_ram(&mem, !0xfff, 0x1000);
        assert_eq!(far.outside_ram, 0xfff);
        assert_eq!(far.discarded, 0);
    }

    #[test]
    fn a_discard_the_host_refuses_is_counted_as_failed() {
        let mem =
            create_guest_memory(&[(GuestAddress(0), 4 * MIB)], MemoryBacking::Anonymous).unwrap();
        let host = mem.get_host_address(GuestAddress(MIB)).unwrap();
        // SAFETY: one page of a mapping `mem` owns; locking it changes no contents.
        assert_eq!(unsafe { libc::mlock(host.cast(), 4096) }, 0, "mlock");
        // MADV_DONTNEED refuses a range with locked pages.
        let outcome = discard_in_ram(&mem, MIB, 2 * 4096);
        assert_eq!((outcome.calls, outcome.failed_calls), (1, 1));
        assert_eq!((outcome.discarded, outcome.failed), (0, 2 * 4096));
        assert!(outcome.first_error.is_some());
        // SAFETY: as above.
        unsafe { libc::munlock(host.cast(), 4096) };
    }

    #[test]
    fn a_range_across_the_mmio_gap_is_split_at_the_regions() {
        // RAM in two regions with a hole between them, as below and above an MMIO gap.
        const GAP_START: u64 = 16 * MIB;
        const HIGH_RAM_START: u64 = 48 * MIB;
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), GAP_START as usize),
            (GuestAddress(HIGH_RAM_START), (16 * MIB) as usize),
        ])
        .unwrap();
        let start = GAP_START - MIB;
        let end = HIGH_RAM_START + MIB;
        let outcome = discard_in_ram(&mem, start, end - start);
        assert_eq!(outcome.discarded, 2 * MIB);
        assert_eq!(outcome.outside_ram, HIGH_RAM_START - GAP_START);
        assert_eq!(outcome.first_outside, Some(GAP_START));
        assert_eq!(outcome.calls, 2);
    }

    #[test]
    fn whole_units_keep_only_aligned_blocks() {
        const HUGE: u64 = 2 * MIB;
        assert_eq!(whole_units(0, 4 * MIB, HUGE), Some((0, 4 * MIB)));
        assert_eq!(whole_units(MIB, 4 * MIB, HUGE), Some((2 * MIB, 2 * MIB)));
        assert_eq!(whole_units(MIB, 2 * MIB, HUGE), None);
        assert_eq!(whole_units(2 * MIB, 2 * MIB - 4096, HUGE), None);
        assert_eq!(whole_units(u64::MAX - HUGE, HUGE, HUGE), None);
    }

    #[test]
    fn huge_units_are_discarded_whole_and_the_rest_left_alone() {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), (8 * MIB) as usize),
            (GuestAddress(16 * MIB), (8 * MIB) as usize),
        ])
        .unwrap();
        mem.write_slice(&vec![0x5a; 8 * MIB as usize], GuestAddress(0))
            .unwrap();
        // 1 MiB..7 MiB holds two whole 2 MiB blocks; 1–2 and 6–7 MiB stay.
        let outcome = discard_units_in_ram(&mem, MIB, 6 * MIB, 2 * MIB);
        assert_eq!((outcome.discarded, outcome.calls), (4 * MIB, 1));
        assert_eq!(outcome.outside_ram, 0);
        let mut buf = vec![0u8; MIB as usize];
        mem.read_slice(&mut buf, GuestAddress(MIB)).unwrap();
        assert!(buf.iter().all(|&b| b == 0x5a));
        mem.read_slice(&mut buf, GuestAddress(6 * MIB)).unwrap();
        assert!(buf.iter().all(|&b| b == 0x5a));
        mem.read_slice(&mut buf, GuestAddress(2 * MIB)).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        // Across the gap: each region's part is cut to its own whole blocks.
        let outcome = discard_units_in_ram(&mem, 5 * MIB, 14 * MIB, 2 * MIB);
        assert_eq!(outcome.discarded, 2 * MIB + 2 * MIB);
        assert_eq!(outcome.outside_ram, 8 * MIB);
        assert_eq!(outcome.first_outside, Some(8 * MIB));
        assert_eq!(outcome.calls, 2);
    }

    #[test]
    fn ram_parts_split_at_regions_and_count_the_rest() {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), (8 * MIB) as usize),
            (GuestAddress(16 * MIB), (8 * MIB) as usize),
        ])
        .unwrap();
        assert_eq!(
            ram_parts(&mem, 4 * MIB, 20 * MIB),
            RamParts {
                in_ram: vec![(4 * MIB, 4 * MIB), (16 * MIB, 8 * MIB)],
                outside_ram: 8 * MIB,
                first_outside: Some(8 * MIB),
            }
        );
        assert_eq!(ram_parts(&mem, 0, 0), RamParts::default());
        let far = ram_parts(&mem, u64::MAX - 4095, 8192);
        assert!(far.in_ram.is_empty());
        assert_eq!(far.outside_ram, 4095);
    }

    #[test]
    fn absorb_keeps_the_first_details() {
        let mut total = DiscardOutcome {
            discarded: 1,
            ..Default::default()
        };
        total.absorb(DiscardOutcome {
            discarded: 2,
            outside_ram: 3,
            first_outside: Some(7),
            failed: 0,
            first_error: None,
            calls: 1,
            failed_calls: 0,
        });
        total.absorb(DiscardOutcome {
            outside_ram: 1,
            first_outside: Some(9),
            ..Default::default()
        });
        assert_eq!(total.discarded, 3);
        assert_eq!(total.outside_ram, 4);
        assert_eq!(total.first_outside, Some(7));
        assert_eq!(total.calls, 1);
    }
}
