//! How fast inflating gives memory back: the balloon device's inflate path (PFNs merged
//! into runs, one discard per run) against the seed device's one `madvise` per page.
//!
//! 256 MiB of guest memory is touched before every timed run, then given up as 65 536
//! PFNs in the order a test case names, 256 PFNs per buffer as Linux sends them. Prints
//! pages per second for both and their ratio. Run with `cargo bench --bench inflate`.
//! Timings are the best of a few runs; the ratios are what to compare across machines.

use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};
use vmm::devices::virtio::balloon::{Balloon, BalloonConfig};
use vmm::devices::virtio::{Activation, InterruptKind, VirtioDevice, VirtioInterrupt};
use vmm::memory::{
    create_guest_memory, discard_range, resident_bytes, GuestMemoryMmap, MemoryBacking,
};
use vmm::size::{MIB, PAGE_SIZE};

const GUEST_MEM: u64 = 512 * MIB;
const QUEUE_SIZE: u16 = 256;
const INFLATE_QUEUE: GuestAddress = GuestAddress(MIB);
const DEFLATE_QUEUE: GuestAddress = GuestAddress(2 * MIB);
/// Where the PFN arrays live: 65 536 × 4 bytes.
const PFN_AREA: u64 = 16 * MIB;
/// The memory given up.
const DATA_AREA: u64 = 64 * MIB;
const DATA_LEN: u64 = 256 * MIB;
const PAGES: u64 = DATA_LEN / PAGE_SIZE;
/// PFNs per buffer, as the Linux driver sends them.
const PFNS_PER_BUFFER: u64 = 256;
const RUNS: usize = 3;

struct NoInterrupt;

impl VirtioInterrupt for NoInterrupt {
    fn trigger(&self, _kind: InterruptKind) {}
}

/// The driver's side of inflateq: descriptors and the available ring, written directly
/// so the ring can wrap as often as needed.
struct Driver<'m> {
    mem: &'m GuestMemoryMmap,
    desc_table: GuestAddress,
    avail: GuestAddress,
    avail_idx: u16,
}

impl Driver<'_> {
    /// Offers the PFN array `buffer` (of `pfns` entries) on the queue.
    fn offer(&mut self, buffer: u64, pfns: u64) {
        let slot = self.avail_idx % QUEUE_SIZE;
        let desc = self.desc_table.0 + 16 * u64::from(slot);
        self.mem
            .write_obj(buffer.to_le(), GuestAddress(desc))
            .unwrap();
        self.mem
            .write_obj(((pfns * 4) as u32).to_le(), GuestAddress(desc + 8))
            .unwrap();
        self.mem.write_obj(0u16, GuestAddress(desc + 12)).unwrap();
        let ring_entry = GuestAddress(self.avail.0 + 4 + 2 * u64::from(slot));
        self.mem.write_obj(slot.to_le(), ring_entry).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx.to_le(), GuestAddress(self.avail.0 + 2))
            .unwrap();
    }
}

/// A tiny deterministic shuffle (xorshift), so every run sees the same order.
fn shuffled(mut pfns: Vec<u32>) -> Vec<u32> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for i in (1..pfns.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        pfns.swap(i, (state % (i as u64 + 1)) as usize);
    }
    pfns
}

fn touch(mem: &GuestMemoryMmap) {
    for page in 0..PAGES {
        mem.write_obj(0xa5u8, GuestAddress(DATA_AREA + page * PAGE_SIZE))
            .unwrap();
    }
}

fn write_pfns(mem: &GuestMemoryMmap, pfns: &[u32]) {
    let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
    mem.write_slice(&bytes, GuestAddress(PFN_AREA)).unwrap();
}

/// Seed behaviour: read each PFN from guest memory, discard its page alone.
fn per_page(mem: &GuestMemoryMmap) -> Duration {
    let start = Instant::now();
    for i in 0..PAGES {
        let pfn: u32 = mem.read_obj(GuestAddress(PFN_AREA + 4 * i)).unwrap();
        discard_range(
            mem,
            GuestAddress(u64::from(u32::from_le(pfn)) << 12),
            PAGE_SIZE,
        )
        .unwrap();
    }
    start.elapsed()
}

/// The device: `buffers_per_notification` buffers offered, then one notification.
fn through_device(
    mem: &GuestMemoryMmap,
    balloon: &mut Balloon,
    driver: &mut Driver<'_>,
    buffers_per_notification: u64,
) -> Duration {
    let buffers = PAGES / PFNS_PER_BUFFER;
    let start = Instant::now();
    let mut offered = 0;
    while offered < buffers {
        for _ in 0..buffers_per_notification.min(buffers - offered) {
            driver.offer(PFN_AREA + offered * PFNS_PER_BUFFER * 4, PFNS_PER_BUFFER);
            offered += 1;
        }
        balloon.process_queue(0);
    }
    let elapsed = start.elapsed();
    assert!(
        resident_bytes(mem) < DATA_LEN / 2,
        "the pages were not freed"
    );
    elapsed
}

fn best_of(mut run: impl FnMut() -> Duration) -> Duration {
    (0..RUNS).map(|_| run()).min().unwrap()
}

fn pages_per_second(d: Duration) -> f64 {
    PAGES as f64 / d.as_secs_f64()
}

fn main() {
    let mem =
        create_guest_memory(&[(GuestAddress(0), GUEST_MEM)], MemoryBacking::Anonymous).unwrap();
    let inflate = MockSplitQueue::create(&mem, INFLATE_QUEUE, QUEUE_SIZE);
    let deflate = MockSplitQueue::create(&mem, DEFLATE_QUEUE, QUEUE_SIZE);
    let mut balloon = Balloon::new(BalloonConfig::default(), GUEST_MEM).unwrap();
    balloon
        .activate(Activation {
            mem: mem.clone(),
            queues: vec![
                inflate.create_queue::<Queue>().unwrap(),
                deflate.create_queue::<Queue>().unwrap(),
            ],
            acked_features: balloon.device_features(),
            interrupt: Arc::new(NoInterrupt),
        })
        .unwrap();
    let mut driver = Driver {
        mem: &mem,
        desc_table: inflate.desc_table_addr(),
        avail: inflate.avail_addr(),
        avail_idx: 0,
    };

    let first_pfn = (DATA_AREA / PAGE_SIZE) as u32;
    let contiguous: Vec<u32> = (first_pfn..first_pfn + PAGES as u32).collect();
    let scattered = shuffled(contiguous.clone());
    let cases: [(&str, &[u32], u64); 3] = [
        ("contiguous, 1 buffer per notification", &contiguous, 1),
        ("scattered, 1 buffer per notification", &scattered, 1),
        ("scattered, 256 buffers per notification", &scattered, 256),
    ];

    println!(
        "inflating {} MiB ({PAGES} pages, {PFNS_PER_BUFFER} PFNs per buffer), best of {RUNS}",
        DATA_LEN / MIB
    );
    println!(
        "{:<42} {:>14} {:>14} {:>7}",
        "case", "device pg/s", "per-page pg/s", "ratio"
    );
    for (name, pfns, per_notification) in cases {
        write_pfns(&mem, pfns);
        let device = best_of(|| {
            touch(&mem);
            through_device(&mem, &mut balloon, &mut driver, per_notification)
        });
        let baseline = best_of(|| {
            touch(&mem);
            per_page(&mem)
        });
        println!(
            "{name:<42} {:>14.0} {:>14.0} {:>6.1}x",
            pages_per_second(device),
            pages_per_second(baseline),
            baseline.as_secs_f64() / device.as_secs_f64()
        );
    }
    let counters = balloon.counters();
    println!(
        "device totals: {} pages inflated in {} discard calls",
        counters.inflated_pages, counters.discard_calls
    );
}
