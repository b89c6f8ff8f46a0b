//! The balloon's queue processing over arbitrary guest memory. The input chooses the
//! offered and accepted features (every combination), the memory backing, where each ring
//! lies and how large it is; the driver's side brings the device up through the real
//! transport registers, then the input writes descriptor chains (well-formed or not), PFN
//! arrays, statistics, reports, hints and raw bytes anywhere in guest memory, notifies
//! queues, calls the API and resets the device.
//!
//! After each notification, what the device did must stay within one notification's
//! budget: at most guest RAM's page count of inflated pages, at most guest RAM's size in
//! reported, hinted and discarded bytes.
//!
//! Input: offered features: u8, accepted features: u8, flags: u8 (bit 0: memfd backing,
//! bit 1: write `poison_val`: u32 follows, bit 7: a mask of queues the driver leaves unset
//! follows: u8), then per queue a size code: u8 and a page: u16 (see
//! [`Ring::from_codes`]), then steps until the data ends (see [`Step`]).

use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_CONFIG, VIRTIO_MMIO_QUEUE_NOTIFY};
use vmm::devices::virtio::balloon::{
    BalloonConfig, BalloonCounters, BalloonFeatures, BalloonHandle, BALLOON_PAGE_SIZE,
};
use vmm::devices::virtio::VirtioDevice;
use vmm::memory::MemoryBacking;
use vmm::sync::lock;

use crate::input::{Input, Script};
use crate::machine::{
    DriverQueue, Machine, RawDesc, Ring, RAM_BYTES, RAM_SPAN, VERSION_1, VRING_DESC_F_WRITE,
};
use crate::virtio_mmio::api_call;

/// The opcodes, in the order of [`Step`]'s variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Step {
    /// queue: u8, link: bool, count: u8 (1 to 8), then per descriptor an address mode: u8
    /// (bit 0: the address is a raw u64, else a u32 taken modulo the RAM span), the
    /// address, len: u32, flags: u16, next: u16
    Chain,
    /// addr: u32 (modulo the RAM span), bytes: u8 length + bytes
    Poke,
    /// addr: u32 (modulo the RAM span), count: u16, first PFN: u32, stride: u8; an array
    /// of le32 PFNs `first + i * stride`
    Pfns,
    /// queue: u8; a `QueueNotify` write
    Notify,
    /// call: u8, value: u32; one of the API's balloon calls
    Api,
    /// queue: u8, index: u16; the available index set to anything
    AvailIdx,
    /// the driver resets the device and brings it up again with fresh rings
    Reset,
    /// offset: u8 (modulo 16), value: u32; a config space write
    Config,
}

const STEPS: [Step; 8] = [
    Step::Chain,
    Step::Poke,
    Step::Pfns,
    Step::Notify,
    Step::Api,
    Step::AvailIdx,
    Step::Reset,
    Step::Config,
];

/// At most this many descriptors per chain step; longer chains come from linking
/// descriptors by hand.
const MAX_CHAIN: u8 = 8;

struct Driver {
    features: u64,
    rings: Vec<Option<Ring>>,
    queues: Vec<Option<DriverQueue>>,
}

impl Driver {
    fn bring_up(&mut self, machine: &mut Machine) {
        machine.bring_up(self.features, &self.rings);
        self.queues = self.rings.iter().map(|r| r.map(DriverQueue::new)).collect();
    }

    fn queue(&mut self, index: u8) -> Option<&mut DriverQueue> {
        let count = self.queues.len();
        self.queues[usize::from(index) % count].as_mut()
    }
}

pub fn run(data: &[u8]) {
    drive(data);
}

/// Runs `data` and returns the machine as the input left it.
pub fn drive(data: &[u8]) -> Machine {
    let mut input = Input::new(data);
    let offered = BalloonFeatures::from_bits(input.u8().into());
    let accepted = u64::from(input.u8() & 0x3f);
    let flags = input.u8();
    let backing = if flags & 1 == 1 {
        MemoryBacking::Memfd
    } else {
        MemoryBacking::Anonymous
    };
    let poison = (flags & 2 != 0).then(|| input.u32());
    let unset = if flags & 0x80 != 0 { input.u8() } else { 0 };
    let config = BalloonConfig {
        features: offered,
        ..Default::default()
    };
    let mut machine = Machine::new(config, backing);
    let queue_count = lock(&machine.balloon).queue_max_sizes().len();
    let rings = (0..queue_count)
        .map(|i| {
            let ring = Ring::from_codes(input.u8(), input.u16());
            (unset & (1 << i) == 0).then_some(ring)
        })
        .collect();
    let mut driver = Driver {
        features: VERSION_1 | accepted,
        rings,
        queues: Vec::new(),
    };
    if let Some(value) = poison {
        machine.write(u64::from(VIRTIO_MMIO_CONFIG) + 12, 4, value.into());
    }
    driver.bring_up(&mut machine);
    let api = BalloonHandle::new(machine.balloon.clone());

    while !input.is_empty() {
        match STEPS[usize::from(input.u8()) % STEPS.len()] {
            Step::Chain => {
                let index = input.u8();
                let link = input.bool();
                let count = input.u8() % MAX_CHAIN + 1;
                let descs: Vec<RawDesc> = (0..count)
                    .map(|_| {
                        let raw_addr = input.u8() & 1 == 1;
                        let addr = if raw_addr {
                            input.u64()
                        } else {
                            u64::from(input.u32()) % RAM_SPAN
                        };
                        RawDesc {
                            addr,
                            len: input.u32(),
                            flags: input.u16(),
                            next: input.u16(),
                        }
                    })
                    .collect();
                if let Some(queue) = driver.queue(index) {
                    queue.add_chain(&machine, &descs, link);
                }
            }
            Step::Poke => {
                let addr = u64::from(input.u32()) % RAM_SPAN;
                let bytes = input.short_bytes();
                machine.poke(addr, bytes);
            }
            Step::Pfns => {
                let addr = u64::from(input.u32()) % RAM_SPAN;
                let count = input.u16();
                let first = input.u32();
                let stride = u32::from(input.u8());
                let pfns: Vec<u8> = (0..u32::from(count))
                    .flat_map(|i| first.wrapping_add(i.wrapping_mul(stride)).to_le_bytes())
                    .collect();
                machine.poke(addr, &pfns);
            }
            Step::Notify => {
                let index = input.u8() % queue_count as u8;
                let before = machine.counters();
                machine.write(VIRTIO_MMIO_QUEUE_NOTIFY.into(), 4, index.into());
                check_budget(&before, &machine.counters());
            }
            Step::Api => {
                let call = input.u8();
                let value = input.u32();
                api_call(&api, call, value);
            }
            Step::AvailIdx => {
                let index = input.u8();
                let idx = input.u16();
                if let Some(queue) = driver.queue(index) {
                    queue.set_avail_idx(&machine, idx);
                }
            }
            Step::Reset => driver.bring_up(&mut machine),
            Step::Config => {
                let offset = u64::from(input.u8() % 16);
                let value = input.u32();
                machine.write(u64::from(VIRTIO_MMIO_CONFIG) + offset, 4, value.into());
            }
        }
    }
    machine
}

/// One notification stayed within its budget (see the balloon's `budget.rs`).
fn check_budget(before: &BalloonCounters, after: &BalloonCounters) {
    let grew = |a: u64, b: u64| b.saturating_sub(a);
    let ram_pages = RAM_BYTES / BALLOON_PAGE_SIZE;
    let inflated = grew(before.inflated_pages, after.inflated_pages);
    assert!(inflated <= ram_pages, "{inflated} pages inflated at once");
    for (what, bytes) in [
        (
            "reported",
            grew(before.reported_bytes, after.reported_bytes),
        ),
        ("hinted", grew(before.hinted_bytes, after.hinted_bytes)),
        (
            "discarded",
            grew(before.discarded_bytes, after.discarded_bytes),
        ),
    ] {
        assert!(bytes <= RAM_BYTES, "{bytes} bytes {what} at once");
    }
}

/// Where the seeds put things: rings from page 16, 4 pages apart; buffers from 1 MiB.
const SEED_RING_PAGE: u16 = 16;
const SEED_BUFFERS: u32 = 0x10_0000;

/// The common start of a seed: features, the memory backing, `poison_val`, and
/// 256-entry rings for `queue_count` queues.
fn seed_start(
    offered: u8,
    accepted: u8,
    memfd: bool,
    poison: Option<u32>,
    queue_count: usize,
) -> Script {
    let mut s = Script::new();
    let flags = u8::from(memfd) | if poison.is_some() { 2 } else { 0 };
    s.u8(offered).u8(accepted).u8(flags);
    if let Some(value) = poison {
        s.u32(value);
    }
    for i in 0..queue_count {
        s.u8(8).u16(SEED_RING_PAGE + 4 * i as u16);
    }
    s
}

/// A chain step: `descs` as (address inside RAM, length, device-writable).
fn seed_chain(s: &mut Script, queue: u8, descs: &[(u32, u32, bool)]) {
    s.u8(Step::Chain as u8)
        .u8(queue)
        .bool(true)
        .u8(descs.len() as u8 - 1);
    for &(addr, len, writable) in descs {
        let flags = if writable { VRING_DESC_F_WRITE } else { 0 };
        s.u8(0).u32(addr).u32(len).u16(flags).u16(0);
    }
}

fn seed_notify(s: &mut Script, queue: u8) {
    s.u8(Step::Notify as u8).u8(queue);
}

pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = Vec::new();

    // Inflate 256 pages as Linux does (one buffer of 256 PFNs), then deflate them.
    let mut s = seed_start(0, 0, false, None, 2);
    s.u8(Step::Pfns as u8)
        .u32(SEED_BUFFERS)
        .u16(256)
        .u32(0x200)
        .u8(1);
    seed_chain(&mut s, 0, &[(SEED_BUFFERS, 1024, false)]);
    seed_notify(&mut s, 0);
    seed_chain(&mut s, 1, &[(SEED_BUFFERS, 1024, false)]);
    seed_notify(&mut s, 1);
    s.u8(Step::Reset as u8);
    seeds.push(("inflate-deflate-reset", s.into_bytes()));

    // Statistics: the driver's buffer of 16 entries, taken and kept; a new interval.
    let mut s = seed_start(0x02, 0x02, false, None, 3);
    let entries: Vec<u8> = (0u16..16)
        .flat_map(|tag| {
            let mut entry = tag.to_le_bytes().to_vec();
            entry.extend_from_slice(&(u64::from(tag) << 20).to_le_bytes());
            entry
        })
        .collect();
    s.u8(Step::Poke as u8)
        .u32(SEED_BUFFERS)
        .short_bytes(&entries);
    seed_chain(&mut s, 2, &[(SEED_BUFFERS, entries.len() as u32, false)]);
    seed_notify(&mut s, 2);
    s.u8(Step::Api as u8).u8(3).u32(1);
    s.u8(Step::Api as u8).u8(4).u32(0);
    seeds.push(("stats", s.into_bytes()));

    // Free page reporting on memfd memory with page poison: the guest first says free
    // pages hold a pattern, then zeros; two 2 MiB blocks, one in each RAM region.
    let mut s = seed_start(0x30, 0x30, true, Some(0xaaaa_aaaa), 3);
    s.u8(Step::Config as u8).u8(12).u32(0);
    seed_chain(
        &mut s,
        2,
        &[(0x20_0000, 0x20_0000, true), (0x60_0000, 0x20_0000, true)],
    );
    seed_notify(&mut s, 2);
    seeds.push(("reporting", s.into_bytes()));

    // A hinting run with every feature: the host starts it (acknowledging on STOP), the
    // guest sends the command ID, two 1 MiB blocks and STOP.
    let mut s = seed_start(0x3f, 0x3f, false, None, 5);
    s.u8(Step::Api as u8).u8(1).u32(1);
    s.u8(Step::Poke as u8)
        .u32(SEED_BUFFERS)
        .short_bytes(&2u32.to_le_bytes());
    s.u8(Step::Poke as u8)
        .u32(SEED_BUFFERS + 16)
        .short_bytes(&0u32.to_le_bytes());
    seed_chain(&mut s, 3, &[(SEED_BUFFERS, 4, false)]);
    seed_chain(&mut s, 3, &[(0x20_0000, 0x10_0000, true)]);
    seed_chain(&mut s, 3, &[(0x30_0000, 0x10_0000, true)]);
    seed_chain(&mut s, 3, &[(SEED_BUFFERS + 16, 4, false)]);
    seed_notify(&mut s, 3);
    s.u8(Step::Api as u8).u8(4).u32(0);
    seeds.push(("hinting", s.into_bytes()));
    seeds
}
