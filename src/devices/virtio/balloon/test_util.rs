//! A test bench for the balloon: real guest memory, mock split queues in it, and an
//! interrupt that counts what it is asked to raise.

use std::sync::Arc;

use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestAddress};

use super::layout::QueueRole;
use super::{Balloon, BalloonConfig};
use crate::devices::test_support::CountingInterrupt;
use crate::devices::virtio::{ActivateError, Activation, VirtioDevice};
use crate::memory::{create_guest_memory, GuestMemoryMmap, MemoryBacking};
use crate::size::MIB;

/// Guest RAM of the bench.
pub const GUEST_MEM: u64 = 32 * MIB;
/// Queue `i` lives at `QUEUE_AREA + i * QUEUE_STRIDE`.
const QUEUE_AREA: u64 = MIB;
const QUEUE_STRIDE: u64 = 0x2_0000;
/// Buffers the "driver" writes (PFN arrays, statistics, command IDs).
const BUFFER_AREA: u64 = 2 * MIB;
const BUFFER_AREA_END: u64 = 4 * MIB;
/// Pages the tests give up and check.
pub const DATA_AREA: u64 = 4 * MIB;

const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;
const VRING_DESC_F_INDIRECT: u16 = 4;

/// One descriptor of a chain, from the device's point of view.
#[derive(Debug, Clone, Copy)]
pub enum Desc {
    /// Device-readable.
    Read(u64, u32),
    /// Device-writable.
    Write(u64, u32),
    /// An indirect table at the address, of the length in bytes (the balloon never offers
    /// indirect descriptors; a hostile driver uses them anyway).
    Indirect(u64, u32),
}

/// Guest RAM for a bench.
pub fn ram() -> GuestMemoryMmap {
    ram_with(MemoryBacking::Anonymous)
}

pub fn ram_with(backing: MemoryBacking) -> GuestMemoryMmap {
    create_guest_memory(&[(GuestAddress(0), GUEST_MEM)], backing).unwrap()
}

/// A balloon and a driver's view of its queues, in `mem`. The mock queues live as long
/// as the bench: creating one initialises its rings.
pub struct Bench<'m> {
    pub mem: &'m GuestMemoryMmap,
    pub balloon: Balloon,
    pub interrupt: Arc<CountingInterrupt>,
    mocks: Vec<MockSplitQueue<'m, GuestMemoryMmap>>,
    sizes: Vec<u16>,
    next_desc: Vec<u16>,
    next_buffer: u64,
}

impl<'m> Bench<'m> {
    pub fn new(mem: &'m GuestMemoryMmap, config: BalloonConfig) -> Bench<'m> {
        let balloon = Balloon::new(config, GUEST_MEM).unwrap();
        let queues = balloon.queue_max_sizes().len();
        let mut bench = Bench {
            mem,
            balloon,
            interrupt: Arc::new(CountingInterrupt::default()),
            mocks: Vec::new(),
            sizes: vec![256; queues],
            next_desc: vec![0; queues],
            next_buffer: BUFFER_AREA,
        };
        bench.mocks = (0..queues).map(|i| bench.new_mock(i)).collect();
        bench
    }

    /// Parses a `--balloon` value for the bench.
    pub fn parse(mem: &'m GuestMemoryMmap, config: &str) -> Bench<'m> {
        Bench::new(mem, config.parse().unwrap())
    }

    /// A bench whose balloon is told that `backing` backs `mem`.
    pub fn with_backing(
        mem: &'m GuestMemoryMmap,
        config: &str,
        backing: MemoryBacking,
    ) -> Bench<'m> {
        let mut bench = Bench::parse(mem, config);
        bench.balloon = Balloon::new(config.parse().unwrap(), GUEST_MEM)
            .unwrap()
            .with_memory_backing(backing);
        bench
    }

    fn new_mock(&self, index: usize) -> MockSplitQueue<'m, GuestMemoryMmap> {
        MockSplitQueue::create(
            self.mem,
            GuestAddress(QUEUE_AREA + index as u64 * QUEUE_STRIDE),
            self.sizes[index],
        )
    }

    /// Sets the size the "driver" gives queue `index`.
    pub fn set_queue_size(&mut self, index: usize, size: u16) {
        self.sizes[index] = size;
        self.mocks[index] = self.new_mock(index);
    }

    pub fn index(&self, role: QueueRole) -> usize {
        self.balloon.layout().index_of(role).unwrap()
    }

    pub fn mock(&self, index: usize) -> &MockSplitQueue<'m, GuestMemoryMmap> {
        &self.mocks[index]
    }

    /// The queues as a driver that enabled all of them leaves them.
    pub fn queues(&self) -> Vec<Queue> {
        (0..self.sizes.len())
            .map(|i| self.mock(i).create_queue::<Queue>().unwrap())
            .collect()
    }

    pub fn activation(&self, acked_features: u64, queues: Vec<Queue>) -> Activation {
        Activation {
            mem: self.mem.clone(),
            queues,
            acked_features,
            interrupt: self.interrupt.clone(),
        }
    }

    /// Activates with every offered feature acked and every queue enabled.
    pub fn activate(&mut self) -> Result<(), ActivateError> {
        let acked = self.balloon.device_features();
        self.activate_acking(acked)
    }

    pub fn activate_acking(&mut self, acked_features: u64) -> Result<(), ActivateError> {
        let activation = self.activation(acked_features, self.queues());
        self.balloon.activate(activation)
    }

    /// Copies `bytes` into the buffer area and returns their guest address.
    pub fn buffer(&mut self, bytes: &[u8]) -> u64 {
        let len = (bytes.len() as u64).max(1).next_multiple_of(16);
        if self.next_buffer + len > BUFFER_AREA_END {
            self.next_buffer = BUFFER_AREA;
        }
        let addr = self.next_buffer;
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
        self.next_buffer += len;
        addr
    }

    /// Makes a chain of `descs` available on queue `index`; returns its head.
    pub fn add_chain(&mut self, index: usize, descs: &[Desc]) -> u16 {
        let size = self.sizes[index];
        let first = self.next_desc[index];
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let (addr, len, mut flags) = match *d {
                    Desc::Read(a, l) => (a, l, 0),
                    Desc::Write(a, l) => (a, l, VRING_DESC_F_WRITE),
                    Desc::Indirect(a, l) => (a, l, VRING_DESC_F_INDIRECT),
                };
                let last = i + 1 == descs.len();
                let next = (first + i as u16 + 1) % size;
                if !last {
                    flags |= VRING_DESC_F_NEXT;
                }
                RawDescriptor::from(SplitDescriptor::new(
                    addr,
                    len,
                    flags,
                    if last { 0 } else { next },
                ))
            })
            .collect();
        assert!(
            first as usize + raw.len() <= size as usize,
            "the bench wraps only between chains"
        );
        self.mock(index).add_desc_chains(&raw, first).unwrap();
        self.next_desc[index] = (first + raw.len() as u16) % size;
        first
    }

    /// Writes an indirect table of `descs`, chained in order, to the buffer area; returns
    /// the [`Desc::Indirect`] that refers to it.
    pub fn indirect_table(&mut self, descs: &[Desc]) -> Desc {
        let mut table = Vec::with_capacity(descs.len() * 16);
        for (i, d) in descs.iter().enumerate() {
            let (addr, len, mut flags) = match *d {
                Desc::Read(a, l) => (a, l, 0),
                Desc::Write(a, l) => (a, l, VRING_DESC_F_WRITE),
                Desc::Indirect(..) => panic!("an indirect table cannot nest"),
            };
            let last = i + 1 == descs.len();
            if !last {
                flags |= VRING_DESC_F_NEXT;
            }
            let next = if last { 0 } else { i as u16 + 1 };
            table.extend_from_slice(&addr.to_le_bytes());
            table.extend_from_slice(&len.to_le_bytes());
            table.extend_from_slice(&flags.to_le_bytes());
            table.extend_from_slice(&next.to_le_bytes());
        }
        let addr = self.buffer(&table);
        Desc::Indirect(addr, table.len() as u32)
    }

    /// A one-descriptor, device-readable chain holding `bytes`.
    pub fn add_readable(&mut self, index: usize, bytes: &[u8]) -> u16 {
        let addr = self.buffer(bytes);
        self.add_chain(index, &[Desc::Read(addr, bytes.len() as u32)])
    }

    /// Puts a raw head index on the available ring, as a hostile driver may.
    pub fn add_raw_head(&self, index: usize, head: u16) {
        let mock = self.mock(index);
        let avail = mock.avail_addr();
        let idx: u16 = self.mem.read_obj(avail.unchecked_add(2)).unwrap();
        let slot = 4 + 2 * u64::from(idx % self.sizes[index]);
        self.mem.write_obj(head, avail.unchecked_add(slot)).unwrap();
        self.mem
            .write_obj(idx.wrapping_add(1), avail.unchecked_add(2))
            .unwrap();
    }

    /// Sets the available index directly.
    pub fn set_avail_idx(&self, index: usize, idx: u16) {
        let avail = self.mock(index).avail_addr();
        self.mem.write_obj(idx, avail.unchecked_add(2)).unwrap();
    }

    pub fn notify(&mut self, index: usize) {
        self.balloon.process_queue(index);
    }

    /// How many buffers the device has returned on queue `index`.
    pub fn used_count(&self, index: usize) -> u16 {
        self.mock(index).used().idx().load()
    }

    /// The `n`th used element of queue `index`: (head, length).
    pub fn used(&self, index: usize, n: u16) -> (u32, u32) {
        let mock = self.mock(index);
        let elem = mock
            .used()
            .ring()
            .ref_at(usize::from(n % self.sizes[index]))
            .unwrap()
            .load();
        (elem.id(), elem.len())
    }

    pub fn fill(&self, addr: u64, len: u64, byte: u8) {
        self.mem
            .write_slice(&vec![byte; len as usize], GuestAddress(addr))
            .unwrap();
    }

    /// Whether every byte of `[addr, addr + len)` is `byte`.
    pub fn holds(&self, addr: u64, len: u64, byte: u8) -> bool {
        let mut buf = vec![0u8; len as usize];
        self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf.iter().all(|&b| b == byte)
    }
}

/// le32 PFNs as the driver lays them out.
pub fn pfn_bytes(pfns: &[u32]) -> Vec<u8> {
    pfns.iter().flat_map(|p| p.to_le_bytes()).collect()
}

/// PFNs of `pages` pages from `addr`.
pub fn pfns_of(addr: u64, pages: u32) -> Vec<u32> {
    let first = (addr >> 12) as u32;
    (first..first + pages).collect()
}

/// One packed statistics entry.
pub fn stat(tag: u16, val: u64) -> Vec<u8> {
    let mut e = tag.to_le_bytes().to_vec();
    e.extend_from_slice(&val.to_le_bytes());
    e
}
