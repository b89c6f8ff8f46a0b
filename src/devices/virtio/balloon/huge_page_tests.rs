//! The balloon on huge-page backed memory, driven through its queues: a huge page goes
//! back to the host only once all of it is in the balloon, deflated pages are never freed
//! with it, reports free whole huge pages only, and a reset forgets partly ballooned ones.
//!
//! The bench's memory is `thp` backed (private anonymous, 2 MiB aligned), which any Linux
//! with transparent huge pages can map; the hugetlb backing frees memory through the same
//! code with a hole punch instead (`memory.rs` tests that part where the host has a pool).

use super::test_util::{pfn_bytes, pfns_of, ram_with, Bench, Desc, DATA_AREA, GUEST_MEM};
use super::warnings::Warning;
use crate::devices::virtio::VirtioDevice;
use crate::memory::{MemoryBacking, HUGE_PAGE_SIZE};
use crate::size::MIB;

const PAGE: u64 = 4096;
const HUGE: u64 = HUGE_PAGE_SIZE;
/// inflateq and deflateq.
const INFLATE: usize = 0;
const DEFLATE: usize = 1;

/// The PFNs of the 512 pages of the huge page at `addr`, in an order the guest's allocator
/// might hand them out: odd pages downwards, then even ones upwards.
fn scrambled_huge_page(addr: u64) -> Vec<u32> {
    let pfns = pfns_of(addr, 512);
    let (odd, even): (Vec<u32>, Vec<u32>) = pfns.iter().partition(|&&p| p % 2 == 1);
    odd.into_iter().rev().chain(even).collect()
}

fn send(bench: &mut Bench, queue: usize, pfns: &[u32]) {
    for chunk in pfns.chunks(256) {
        bench.add_readable(queue, &pfn_bytes(chunk));
    }
    bench.notify(queue);
}

#[test]
fn a_huge_page_goes_back_when_its_last_page_is_inflated() {
    let ram = ram_with(MemoryBacking::Thp);
    let mut bench = Bench::with_backing(&ram, "", MemoryBacking::Thp);
    bench.activate().unwrap();
    assert_eq!(bench.balloon.info().memory_backing, MemoryBacking::Thp);
    bench.fill(DATA_AREA, 2 * HUGE, 0x33);
    let pfns = scrambled_huge_page(DATA_AREA);
    let (last, rest) = pfns.split_last().unwrap();
    // 511 pages, in two notifications: nothing is freed, the data is still there.
    send(&mut bench, INFLATE, &rest[..300]);
    send(&mut bench, INFLATE, &rest[300..]);
    assert!(bench.holds(DATA_AREA, HUGE, 0x33));
    assert_eq!(bench.balloon.info().partial_huge_pages, 1);
    let counters = bench.balloon.counters();
    assert_eq!(
        (counters.inflated_pages, counters.discarded_bytes),
        (511, 0)
    );
    assert_eq!(counters.kept_bytes, 0, "deferred, not kept for good");
    assert_eq!(
        bench.used_count(INFLATE),
        3,
        "every buffer is returned at once"
    );
    // The last one frees the whole huge page and nothing of the next.
    send(&mut bench, INFLATE, &[*last]);
    assert!(bench.holds(DATA_AREA, HUGE, 0));
    assert!(bench.holds(DATA_AREA + HUGE, HUGE, 0x33));
    assert_eq!(bench.balloon.info().partial_huge_pages, 0);
    let counters = bench.balloon.counters();
    assert_eq!(counters.inflated_pages, 512);
    assert_eq!(
        (counters.discarded_bytes, counters.discard_calls),
        (HUGE, 1)
    );
}

#[test]
fn adjacent_complete_huge_pages_go_back_in_one_call() {
    let ram = ram_with(MemoryBacking::Thp);
    let mut bench = Bench::with_backing(&ram, "", MemoryBacking::Thp);
    bench.activate().unwrap();
    bench.fill(DATA_AREA, 4 * HUGE, 0x34);
    // Four huge pages and a bit, as 1 MiB buffers sent together.
    send(&mut bench, INFLATE, &pfns_of(DATA_AREA, 4 * 512 + 10));
    assert!(bench.holds(DATA_AREA, 4 * HUGE, 0));
    let counters = bench.balloon.counters();
    assert_eq!(
        (counters.discarded_bytes, counters.discard_calls),
        (4 * HUGE, 1)
    );
    assert_eq!(bench.balloon.info().partial_huge_pages, 1);
}

#[test]
fn deflated_pages_are_never_freed_with_their_huge_page() {
    let ram = ram_with(MemoryBacking::Thp);
    let mut bench = Bench::with_backing(&ram, "must-tell-host", MemoryBacking::Thp);
    bench.activate().unwrap();
    bench.fill(DATA_AREA, HUGE, 0x35);
    let pfns = pfns_of(DATA_AREA, 512);
    send(&mut bench, INFLATE, &pfns[..300]);
    // The guest takes ten pages back and uses them.
    send(&mut bench, DEFLATE, &pfns[100..110]);
    assert_eq!(bench.used_count(DEFLATE), 1);
    assert_eq!(bench.balloon.counters().deflated_pages, 10);
    bench.fill(DATA_AREA + 100 * PAGE, 10 * PAGE, 0x44);
    // The rest arrives: 502 of 512 pages, still not complete.
    send(&mut bench, INFLATE, &pfns[300..]);
    assert!(bench.holds(DATA_AREA + 100 * PAGE, 10 * PAGE, 0x44));
    assert_eq!(bench.balloon.info().partial_huge_pages, 1);
    assert_eq!(bench.balloon.counters().discarded_bytes, 0);
    // Once the ten come back too, the huge page goes.
    send(&mut bench, INFLATE, &pfns[100..110]);
    assert!(bench.holds(DATA_AREA, HUGE, 0));
    assert_eq!(bench.balloon.info().partial_huge_pages, 0);
}

#[test]
fn a_freed_huge_page_deflated_in_part_is_freed_again_when_complete() {
    let ram = ram_with(MemoryBacking::Thp);
    let mut bench = Bench::with_backing(&ram, "", MemoryBacking::Thp);
    bench.activate().unwrap();
    let pfns = pfns_of(DATA_AREA, 512);
    send(&mut bench, INFLATE, &pfns);
    assert_eq!(bench.balloon.counters().discarded_bytes, HUGE);
    // One page back to the guest, which writes it (the host faults the huge page in).
    send(&mut bench, DEFLATE, &pfns[7..8]);
    bench.fill(DATA_AREA + 7 * PAGE, PAGE, 0x46);
    assert_eq!(bench.balloon.info().partial_huge_pages, 1);
    // A guest that zeroes pages before inflating them (init_on_alloc) writes it again.
    bench.fill(DATA_AREA + 7 * PAGE, PAGE, 0);
    send(&mut bench, INFLATE, &pfns[7..8]);
    assert_eq!(bench.balloon.info().partial_huge_pages, 0);
    assert_eq!(bench.balloon.counters().discarded_bytes, 2 * HUGE);
    // A repeat of a page already in a complete huge page frees nothing more.
    send(&mut bench, INFLATE, &pfns[7..8]);
    assert_eq!(bench.balloon.counters().discarded_bytes, 2 * HUGE);
}

#[test]
fn reports_free_the_whole_huge_pages_they_hold() {
    let ram = ram_with(MemoryBacking::Thp);
    let mut bench = Bench::with_backing(&ram, "page-reporting", MemoryBacking::Thp);
    bench.activate().unwrap();
    bench.fill(DATA_AREA, 8 * MIB, 0x61);
    // An aligned 2 MiB block (what Linux reports) and a 3 MiB one from 1 MiB into a huge
    // page: that holds one whole huge page.
    bench.add_chain(
        2,
        &[
            Desc::Write(DATA_AREA, HUGE as u32),
            Desc::Write(DATA_AREA + 3 * MIB, 3 * MIB as u32),
        ],
    );
    bench.notify(2);
    assert_eq!(bench.used_count(2), 1);
    assert!(bench.holds(DATA_AREA, HUGE, 0));
    assert!(bench.holds(DATA_AREA + 2 * MIB, 2 * MIB, 0x61));
    assert!(bench.holds(DATA_AREA + 4 * MIB, HUGE, 0));
    assert!(bench.holds(DATA_AREA + 6 * MIB, 2 * MIB, 0x61));
    let counters = bench.balloon.counters();
    assert_eq!(counters.reported_bytes, 5 * MIB);
    assert_eq!(counters.discarded_bytes, 4 * MIB);
    assert_eq!(counters.kept_bytes, MIB);
    // Reported pages go back to the guest's free lists: they are not partly ballooned.
    assert_eq!(bench.balloon.info().partial_huge_pages, 0);
}

#[test]
fn hints_free_the_whole_huge_pages_they_hold() {
    let ram = ram_with(MemoryBacking::Thp);
    let mut bench = Bench::with_backing(&ram, "free-page-hint", MemoryBacking::Thp);
    bench.activate().unwrap();
    bench.fill(DATA_AREA, 8 * MIB, 0x62);
    bench.balloon.start_hinting(false).unwrap();
    let id = bench.balloon.hinting_status().unwrap().host_cmd;
    bench.add_readable(2, &id.to_le_bytes());
    // A 4 MiB block (what Linux hints) and a 1 MiB one, too small for a huge page.
    bench.add_chain(
        2,
        &[
            Desc::Write(DATA_AREA, 4 * MIB as u32),
            Desc::Write(DATA_AREA + 5 * MIB, MIB as u32),
        ],
    );
    bench.notify(2);
    assert!(bench.holds(DATA_AREA, 4 * MIB, 0));
    assert!(bench.holds(DATA_AREA + 4 * MIB, 4 * MIB, 0x62));
    let counters = bench.balloon.counters();
    assert_eq!(
        (counters.hinted_bytes, counters.discarded_bytes),
        (5 * MIB, 4 * MIB)
    );
}

#[test]
fn a_reset_forgets_partly_ballooned_huge_pages() {
    let ram = ram_with(MemoryBacking::Thp);
    let mut bench = Bench::with_backing(&ram, "", MemoryBacking::Thp);
    bench.activate().unwrap();
    bench.fill(DATA_AREA, HUGE, 0x36);
    let pfns = pfns_of(DATA_AREA, 512);
    send(&mut bench, INFLATE, &pfns[..100]);
    assert_eq!(bench.balloon.info().partial_huge_pages, 1);
    bench.balloon.reset();
    assert_eq!(bench.balloon.info().partial_huge_pages, 0);
    // The driver starts again with an empty balloon: the first 100 pages are the guest's
    // now, so the rest of the huge page does not complete it.
    let fresh_ram = ram_with(MemoryBacking::Thp);
    let mut fresh = Bench::with_backing(&fresh_ram, "", MemoryBacking::Thp);
    fresh.balloon = bench.balloon;
    fresh.activate().unwrap();
    fresh.fill(DATA_AREA, HUGE, 0x36);
    send(&mut fresh, INFLATE, &pfns[100..]);
    assert!(fresh.holds(DATA_AREA, 100 * PAGE, 0x36));
    assert_eq!(fresh.balloon.info().partial_huge_pages, 1);
    assert_eq!(fresh.balloon.info().memory_backing, MemoryBacking::Thp);
}

#[test]
fn hostile_pfns_on_both_queues_are_bounded_and_ignored() {
    let ram = ram_with(MemoryBacking::Thp);
    let mut bench = Bench::with_backing(&ram, "", MemoryBacking::Thp);
    bench.activate().unwrap();
    bench.fill(DATA_AREA, HUGE, 0x37);
    let end_pfn = (GUEST_MEM / PAGE) as u32;
    let outside = [end_pfn, end_pfn + 511, u32::MAX, u32::MAX - 1];
    send(&mut bench, INFLATE, &outside);
    send(&mut bench, DEFLATE, &outside);
    // Three runs outside RAM on inflate; deflating pages outside RAM needs no warning.
    assert_eq!(bench.balloon.warning_count(Warning::PfnOutsideRam), 3);
    assert_eq!(bench.balloon.info().partial_huge_pages, 0);
    assert_eq!(bench.balloon.counters().kept_bytes, 4 * PAGE);
    // Deflating what was never inflated, and a deflate buffer outside RAM or writable.
    send(&mut bench, DEFLATE, &pfns_of(DATA_AREA, 512));
    bench.add_chain(DEFLATE, &[Desc::Read(GUEST_MEM + PAGE, 4)]);
    bench.add_chain(DEFLATE, &[Desc::Write(DATA_AREA, 4)]);
    bench.notify(DEFLATE);
    assert_eq!(bench.used_count(DEFLATE), 5);
    assert_eq!(bench.balloon.warning_count(Warning::BufferOutsideRam), 1);
    assert_eq!(bench.balloon.warning_count(Warning::WrongDirection), 1);
    // A deflate buffer claiming 4 GiB of PFNs is read only up to a guest RAM's worth.
    bench.add_chain(DEFLATE, &[Desc::Read(DATA_AREA, u32::MAX - 3)]);
    bench.notify(DEFLATE);
    assert_eq!(bench.balloon.warning_count(Warning::TooManyPfns), 1);
    assert!(bench.holds(DATA_AREA, HUGE, 0x37));
}
