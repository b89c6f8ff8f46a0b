//! Partly ballooned huge pages.
//!
//! With a huge-page backing (`--mem-backing thp` or `hugetlb`) the host can take memory
//! back only in 2 MiB pages, but the balloon protocol gives up 4 KiB pages, one PFN at a
//! time, in whatever order the guest's allocator hands them out. A hugetlb page cannot be
//! freed in part at all; a transparent huge page freed in part is split into 4 KiB pages,
//! which the host keeps until it runs short of memory, and the guest loses its huge
//! mapping. So the device frees a huge page only once all 512 of its 4 KiB pages are in
//! the balloon, and [`HugePageTracker`] remembers which pages are, meanwhile.
//!
//! The record is one bit per 4 KiB page of guest RAM, set while the page is in the
//! balloon: set by inflate, cleared by deflate. A count per huge page tells when it is
//! complete. The huge page is freed by the inflate that completes it; its bits stay set,
//! since its pages are still in the balloon. Deflating clears only the bits of the pages
//! taken out: the huge page is then partly ballooned again (the guest touching a page
//! faults the whole huge page back in, as zeros), and it is freed again once those pages
//! come back. So a page is freed only while every page of its huge page is in the balloon:
//! inflated, and not deflated since. Linux's balloon compaction moves ballooned pages this
//! way (inflate the new page, deflate the old one) all the time, which is why a deflate
//! does not make the device forget the rest of the huge page.
//!
//! Why a bit per page of RAM and not a record per partly ballooned huge page: the size is
//! fixed by guest RAM (32 KiB of bits and 1 KiB of counts per GiB, allocated zeroed, so the
//! parts never written cost no host memory), so a guest cannot make it grow and no cap has
//! to decide which partial pages to forget; every update is a few word operations.
//! QEMU keeps a single partly ballooned huge page and forgets it when a PFN from another
//! arrives, so pages inflated in the guest allocator's order seldom complete one.
//!
//! A device reset drops the tracker with the rest of the running state: after a reset the
//! guest's driver starts with an empty balloon.

use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};

use super::BALLOON_PAGE_SIZE;
use crate::memory::{GuestMemoryMmap, HUGE_PAGE_SIZE};

/// 4 KiB pages in a huge page: 512.
const PAGES_PER_HUGE_PAGE: u64 = HUGE_PAGE_SIZE / BALLOON_PAGE_SIZE;
const BITS_PER_WORD: u64 = u64::BITS as u64;

/// Which 4 KiB pages of guest RAM are in the balloon, per 2 MiB huge page.
#[derive(Debug)]
pub(super) struct HugePageTracker {
    regions: Vec<TrackedRegion>,
    /// Huge pages with some but not all of their pages in the balloon.
    partial: u64,
}

/// The whole huge pages of one region of guest RAM.
#[derive(Debug)]
struct TrackedRegion {
    /// Guest physical address of the first whole huge page.
    start: u64,
    /// One past the last whole huge page.
    end: u64,
    /// Bit `i`: page `i` from `start` is in the balloon.
    ballooned: Vec<u64>,
    /// For each huge page from `start`, how many of its pages are in the balloon.
    counts: Vec<u16>,
}

impl TrackedRegion {
    fn new(addr: u64, len: u64) -> Option<TrackedRegion> {
        let start = addr.checked_next_multiple_of(HUGE_PAGE_SIZE)?;
        let end = addr.checked_add(len)? / HUGE_PAGE_SIZE * HUGE_PAGE_SIZE;
        if end <= start {
            return None;
        }
        let huge_pages = usize::try_from((end - start) / HUGE_PAGE_SIZE).ok()?;
        let words = huge_pages.checked_mul((PAGES_PER_HUGE_PAGE / BITS_PER_WORD) as usize)?;
        Some(TrackedRegion {
            start,
            end,
            ballooned: vec![0; words],
            counts: vec![0; huge_pages],
        })
    }
}

/// Whether a huge page with `count` of its pages in the balloon is partly ballooned.
fn is_partial(count: u16) -> bool {
    count > 0 && u64::from(count) < PAGES_PER_HUGE_PAGE
}

/// Sets or clears bits `[first, end)` of `words`; returns how many changed.
fn update_bits(words: &mut [u64], first: u64, end: u64, set: bool) -> u64 {
    let mut changed = 0;
    let mut bit = first;
    while bit < end {
        let word = (bit / BITS_PER_WORD) as usize;
        let shift = bit % BITS_PER_WORD;
        let n = (BITS_PER_WORD - shift).min(end - bit);
        let mask = if n == BITS_PER_WORD {
            u64::MAX
        } else {
            ((1u64 << n) - 1) << shift
        };
        let old = words[word];
        let new = if set { old | mask } else { old & !mask };
        changed += u64::from((old ^ new).count_ones());
        words[word] = new;
        bit += n;
    }
    changed
}

impl HugePageTracker {
    /// A tracker for the whole huge pages of `mem`'s regions, with nothing in the balloon.
    pub fn new(mem: &GuestMemoryMmap) -> HugePageTracker {
        let regions: Vec<(u64, u64)> = mem
            .iter()
            .map(|r| (r.start_addr().raw_value(), r.len()))
            .collect();
        Self::for_regions(&regions)
    }

    /// A tracker for the whole huge pages of RAM regions given as (address, length). Pages
    /// of a huge page that is not wholly inside one region are never tracked (and so never
    /// freed): the huge-page backings have none.
    pub fn for_regions(regions: &[(u64, u64)]) -> HugePageTracker {
        HugePageTracker {
            regions: regions
                .iter()
                .filter_map(|&(addr, len)| TrackedRegion::new(addr, len))
                .collect(),
            partial: 0,
        }
    }

    /// How many huge pages are partly in the balloon: held by the host although the guest
    /// gave up some of their pages.
    pub fn partial_huge_pages(&self) -> u64 {
        self.partial
    }

    /// Records that the guest put the pages of `[addr, addr + len)` in the balloon (4 KiB
    /// aligned). Returns the huge pages this completed, as ranges of adjacent ones, for the
    /// caller to free. Pages outside every tracked huge page are ignored.
    pub fn inflate(&mut self, addr: u64, len: u64) -> Vec<(u64, u64)> {
        let mut completed: Vec<(u64, u64)> = Vec::new();
        self.update(addr, len, true, |huge_page| match completed.last_mut() {
            Some((start, len)) if *start + *len == huge_page => *len += HUGE_PAGE_SIZE,
            _ => completed.push((huge_page, HUGE_PAGE_SIZE)),
        });
        completed
    }

    /// Records that the guest took the pages of `[addr, addr + len)` out of the balloon.
    pub fn deflate(&mut self, addr: u64, len: u64) {
        self.update(addr, len, false, |_| {});
    }

    /// Sets (inflate) or clears (deflate) the bits of the pages in `[addr, addr + len)`;
    /// calls `completed` with the address of each huge page whose last page this put in
    /// the balloon.
    fn update(&mut self, addr: u64, len: u64, set: bool, mut completed: impl FnMut(u64)) {
        let end = addr.saturating_add(len);
        for region in &mut self.regions {
            let lo = addr.max(region.start);
            let hi = end.min(region.end);
            if lo >= hi {
                continue;
            }
            let first_page = (lo - region.start) / BALLOON_PAGE_SIZE;
            let end_page = (hi - region.start) / BALLOON_PAGE_SIZE;
            let mut page = first_page;
            while page < end_page {
                let huge_page = page / PAGES_PER_HUGE_PAGE;
                let stop = ((huge_page + 1) * PAGES_PER_HUGE_PAGE).min(end_page);
                let changed = update_bits(&mut region.ballooned, page, stop, set);
                page = stop;
                if changed == 0 {
                    continue;
                }
                let count = &mut region.counts[huge_page as usize];
                let old = *count;
                // At most 512 bits of a huge page change: the count stays in 0..=512.
                let changed = changed as u16;
                *count = if set { old + changed } else { old - changed };
                match (is_partial(old), is_partial(*count)) {
                    (false, true) => self.partial += 1,
                    (true, false) => self.partial -= 1,
                    _ => {}
                }
                if set && u64::from(*count) == PAGES_PER_HUGE_PAGE {
                    completed(region.start + huge_page * HUGE_PAGE_SIZE);
                }
            }
        }
    }

    /// Bytes of bitmap and counts this tracker holds (for its test).
    #[cfg(test)]
    fn footprint(&self) -> usize {
        self.regions
            .iter()
            .map(|r| r.ballooned.len() * 8 + r.counts.len() * 2)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::size::{GIB, MIB};

    const HUGE: u64 = HUGE_PAGE_SIZE;
    const PAGE: u64 = BALLOON_PAGE_SIZE;

    /// Inflates the 4 KiB pages at `pages` (addresses) one by one, collecting what
    /// completes.
    fn inflate_each(tracker: &mut HugePageTracker, pages: &[u64]) -> Vec<(u64, u64)> {
        pages
            .iter()
            .flat_map(|&p| tracker.inflate(p, PAGE))
            .collect()
    }

    /// A deterministic shuffle (xorshift).
    fn shuffled(mut items: Vec<u64>, seed: u64) -> Vec<u64> {
        let mut state = seed | 1;
        for i in (1..items.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            items.swap(i, (state % (i as u64 + 1)) as usize);
        }
        items
    }

    fn pages_of(start: u64, len: u64) -> Vec<u64> {
        (start..start + len).step_by(PAGE as usize).collect()
    }

    #[test]
    fn a_huge_page_completes_on_its_last_page_in_any_order() {
        for seed in [1, 7, 0x5eed] {
            let mut tracker = HugePageTracker::for_regions(&[(0, 16 * MIB)]);
            // Two huge pages, their pages interleaved at random.
            let mut pages = pages_of(4 * MIB, 2 * HUGE);
            pages = shuffled(pages, seed);
            let (last, rest) = pages.split_last().unwrap();
            let completed = inflate_each(&mut tracker, rest);
            // The huge page that does not hold the last page completed on its own last
            // one; the other is still partial.
            let other = if *last < 6 * MIB { 6 * MIB } else { 4 * MIB };
            assert_eq!(completed, vec![(other, HUGE)], "seed {seed}");
            assert_eq!(tracker.partial_huge_pages(), 1);
            let mine = *last / HUGE * HUGE;
            assert_eq!(tracker.inflate(*last, PAGE), vec![(mine, HUGE)]);
            assert_eq!(tracker.partial_huge_pages(), 0);
        }
    }

    #[test]
    fn a_run_completes_adjacent_huge_pages_as_one_range() {
        let mut tracker = HugePageTracker::for_regions(&[(0, 16 * MIB)]);
        // Half a huge page, then a run covering its rest and two more, then a part.
        assert!(tracker.inflate(2 * MIB, MIB).is_empty());
        assert_eq!(tracker.partial_huge_pages(), 1);
        assert_eq!(tracker.inflate(3 * MIB, 6 * MIB), vec![(2 * MIB, 3 * HUGE)]);
        assert_eq!(tracker.partial_huge_pages(), 1, "8–9 MiB is partial");
        assert!(tracker.inflate(9 * MIB, 5 * PAGE).is_empty());
        assert_eq!(tracker.partial_huge_pages(), 1);
    }

    #[test]
    fn duplicates_count_once() {
        let mut tracker = HugePageTracker::for_regions(&[(0, 8 * MIB)]);
        let pages = pages_of(2 * MIB, HUGE);
        let (last, rest) = pages.split_last().unwrap();
        assert!(inflate_each(&mut tracker, rest).is_empty());
        // Every page but the last, again, and overlapping runs: still not complete.
        assert!(inflate_each(&mut tracker, rest).is_empty());
        assert!(tracker.inflate(2 * MIB, HUGE - PAGE).is_empty());
        assert_eq!(tracker.partial_huge_pages(), 1);
        assert_eq!(tracker.inflate(*last, PAGE), vec![(2 * MIB, HUGE)]);
        // A complete huge page is not completed (freed) again by a repeat.
        assert!(tracker.inflate(*last, PAGE).is_empty());
        assert!(tracker.inflate(2 * MIB, HUGE).is_empty());
        assert_eq!(tracker.partial_huge_pages(), 0);
    }

    #[test]
    fn a_deflate_in_the_middle_takes_those_pages_out_only() {
        let mut tracker = HugePageTracker::for_regions(&[(0, 8 * MIB)]);
        assert!(tracker.inflate(2 * MIB, 300 * PAGE).is_empty());
        tracker.deflate(2 * MIB + 100 * PAGE, 10 * PAGE);
        // The rest of the huge page arrives: the ten deflated pages are missing.
        assert!(tracker.inflate(2 * MIB + 300 * PAGE, 212 * PAGE).is_empty());
        assert_eq!(tracker.partial_huge_pages(), 1);
        // Deflating pages that are not in the balloon changes nothing.
        tracker.deflate(2 * MIB + 100 * PAGE, 10 * PAGE);
        tracker.deflate(6 * MIB, HUGE);
        assert_eq!(tracker.partial_huge_pages(), 1);
        assert_eq!(
            tracker.inflate(2 * MIB + 100 * PAGE, 10 * PAGE),
            vec![(2 * MIB, HUGE)]
        );
        assert_eq!(tracker.partial_huge_pages(), 0);
    }

    #[test]
    fn a_freed_huge_page_partly_deflated_is_partial_until_its_pages_return() {
        let mut tracker = HugePageTracker::for_regions(&[(0, 8 * MIB)]);
        assert_eq!(tracker.inflate(4 * MIB, HUGE), vec![(4 * MIB, HUGE)]);
        // The guest takes one page back (and touches it: the host faults the huge page
        // back in). The other 511 are still in the balloon.
        tracker.deflate(4 * MIB + 7 * PAGE, PAGE);
        assert_eq!(tracker.partial_huge_pages(), 1);
        // Its return completes the huge page again, so it is freed again.
        assert_eq!(
            tracker.inflate(4 * MIB + 7 * PAGE, PAGE),
            vec![(4 * MIB, HUGE)]
        );
        // Deflating everything leaves nothing partial.
        tracker.deflate(0, 8 * MIB);
        assert_eq!(tracker.partial_huge_pages(), 0);
        assert!(tracker.inflate(4 * MIB, HUGE - PAGE).is_empty());
    }

    #[test]
    fn runs_straddling_regions_complete_the_huge_pages_inside_each() {
        let mut tracker = HugePageTracker::for_regions(&[(0, 16 * MIB), (32 * MIB, 16 * MIB)]);
        // 14 MiB to 34 MiB: the last huge page of the first region, the gap, the first of
        // the second.
        assert_eq!(
            tracker.inflate(14 * MIB, 20 * MIB),
            vec![(14 * MIB, HUGE), (32 * MIB, HUGE)]
        );
        assert_eq!(tracker.partial_huge_pages(), 0);
        // Half a huge page on each side of the gap: two partial huge pages.
        let mut tracker = HugePageTracker::for_regions(&[(0, 16 * MIB), (32 * MIB, 16 * MIB)]);
        assert!(tracker.inflate(15 * MIB, 18 * MIB).is_empty());
        assert_eq!(tracker.partial_huge_pages(), 2);
        // Pages in the gap alone do nothing.
        assert!(tracker.inflate(16 * MIB, 16 * MIB).is_empty());
        tracker.deflate(16 * MIB, 16 * MIB);
        assert_eq!(tracker.partial_huge_pages(), 2);
    }

    #[test]
    fn the_4_gib_hole_is_not_ram() {
        // The x86 layout of a 4 GiB guest: 3 GiB below the MMIO hole, 1 GiB above 4 GiB.
        let below = 3 * GIB;
        let mut tracker = HugePageTracker::for_regions(&[(0, below), (4 * GIB, GIB)]);
        // The last huge page below the hole and the first above, in one run over the hole.
        let start = below - HUGE;
        assert_eq!(
            tracker.inflate(start, 4 * GIB + HUGE - start),
            vec![(start, HUGE), (4 * GIB, HUGE)]
        );
        // The highest PFN a 32-bit inflate entry can name (16 TiB - 4 KiB) is past RAM.
        assert!(tracker.inflate(u64::from(u32::MAX) * PAGE, PAGE).is_empty());
        // A huge page of high RAM, page by page from its top.
        let top = 5 * GIB - HUGE;
        let mut pages = pages_of(top, HUGE);
        pages.reverse();
        assert_eq!(inflate_each(&mut tracker, &pages), vec![(top, HUGE)]);
        assert_eq!(tracker.partial_huge_pages(), 0);
    }

    #[test]
    fn huge_pages_cut_by_a_region_edge_are_not_tracked() {
        // A region from 1 MiB to 7 MiB holds whole huge pages at 2 and 4 MiB only.
        let mut tracker = HugePageTracker::for_regions(&[(MIB, 6 * MIB)]);
        assert_eq!(tracker.inflate(0, 8 * MIB), vec![(2 * MIB, 2 * HUGE)]);
        assert_eq!(tracker.partial_huge_pages(), 0);
        // Nothing at all in a region smaller than a huge page.
        let mut tiny = HugePageTracker::for_regions(&[(MIB, MIB)]);
        assert!(tiny.inflate(0, 4 * MIB).is_empty());
        assert_eq!(tiny.footprint(), 0);
    }

    #[test]
    fn hostile_ranges_cannot_overflow_or_panic() {
        // A region at the top of the address space holds one whole huge page.
        let top = u64::MAX - 4 * MIB;
        let top_huge_page = top.next_multiple_of(HUGE);
        let mut tracker = HugePageTracker::for_regions(&[(0, 8 * MIB), (top, 4 * MIB)]);
        assert!(tracker.inflate(u64::MAX - PAGE, u64::MAX).is_empty());
        assert!(tracker.inflate(0, 0).is_empty());
        assert!(tracker.inflate(u64::MAX, 0).is_empty());
        tracker.deflate(u64::MAX, u64::MAX);
        // A length running past the end of the address space stops there.
        assert_eq!(
            tracker.inflate(top_huge_page, u64::MAX),
            vec![(top_huge_page, HUGE)]
        );
        assert_eq!(tracker.partial_huge_pages(), 0);
        tracker.deflate(0, u64::MAX);
        assert!(tracker.inflate(top_huge_page, HUGE - PAGE).is_empty());
        assert_eq!(tracker.partial_huge_pages(), 1);
        // A region that would end past the address space is not tracked at all.
        let wrapping = HugePageTracker::for_regions(&[(u64::MAX - HUGE, u64::MAX)]);
        assert_eq!(wrapping.footprint(), 0);
    }

    #[test]
    fn the_bitmap_is_a_bit_per_page_of_ram() {
        let tracker = HugePageTracker::for_regions(&[(0, 3 * GIB), (4 * GIB, GIB)]);
        // 4 GiB of RAM: 1 Mi pages → 128 KiB of bits, and 2048 huge pages → 4 KiB of counts.
        assert_eq!(tracker.footprint(), 128 * 1024 + 4 * 1024);
    }
}
