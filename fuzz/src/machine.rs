//! What the device targets drive: a balloon behind its virtio-mmio transport in a small
//! guest RAM with a hole, and a driver's side of the queues, written into guest memory.

use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio::*;
use vm_memory::{Bytes, GuestAddress};
use vmm::devices::bus::BusDevice;
use vmm::devices::virtio::balloon::{Balloon, BalloonConfig, BalloonCounters};
use vmm::devices::virtio::mmio::{MmioTransport, MMIO_MAGIC_VALUE, MMIO_VERSION};
use vmm::devices::virtio::{VIRTIO_F_VERSION_1, VIRTIO_ID_BALLOON};
use vmm::devices::IrqLine;
use vmm::memory::{create_guest_memory, GuestMemoryMmap, MemoryBacking};
use vmm::size::{MIB, PAGE_SIZE};
use vmm::sync::lock;

/// Guest RAM: 4 MiB, a 2 MiB hole, 2 MiB more. Small, so that the per-notification
/// budgets (guest RAM's size) are within the fuzzer's reach, and with a hole, so that
/// ranges straddle RAM regions.
pub const RAM_REGIONS: [(u64, u64); 2] = [(0, 4 * MIB), (6 * MIB, 2 * MIB)];
/// From address 0 to the end of RAM.
pub const RAM_SPAN: u64 = 8 * MIB;
/// Bytes of RAM.
pub const RAM_BYTES: u64 = 6 * MIB;

pub const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;

/// The largest ring the balloon takes.
pub const MAX_QUEUE_SIZE: u16 = 256;

/// An interrupt line nobody listens to.
struct NoIrq;

impl IrqLine for NoIrq {
    fn signal(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Where a driver put one queue's rings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ring {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

impl Ring {
    /// A ring of `size` entries laid out from `base` as Linux lays a split ring out.
    pub fn at(base: u64, size: u16) -> Ring {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
        Ring {
            size,
            desc,
            avail,
            used,
        }
    }

    /// A ring of `1 << (size_code % 9)` entries (1 to 256) at 4 KiB page `page` of the RAM
    /// span (which may fall in the hole: the transport then refuses to start).
    pub fn from_codes(size_code: u8, page: u16) -> Ring {
        let size = 1u16 << (size_code % 9);
        let base = (u64::from(page) * PAGE_SIZE) % RAM_SPAN;
        Ring::at(base, size)
    }
}

/// The balloon, its transport and guest RAM.
pub struct Machine {
    pub mem: GuestMemoryMmap,
    pub balloon: Arc<Mutex<Balloon>>,
    pub transport: MmioTransport<Balloon>,
}

impl Machine {
    pub fn new(config: BalloonConfig, backing: MemoryBacking) -> Machine {
        let regions = RAM_REGIONS.map(|(addr, len)| (GuestAddress(addr), len));
        let mem = create_guest_memory(&regions, backing).expect("guest RAM for the fuzz target");
        let balloon = Balloon::new(config, RAM_BYTES).expect("a balloon");
        let balloon = Arc::new(Mutex::new(balloon));
        let transport = MmioTransport::new(balloon.clone(), mem.clone(), Arc::new(NoIrq))
            .expect("a transport for the balloon");
        Machine {
            mem,
            balloon,
            transport,
        }
    }

    pub fn counters(&self) -> BalloonCounters {
        lock(&self.balloon).counters()
    }

    /// A register access of `width` bytes (1, 2, 4 or 8) at `offset` in the window.
    pub fn read(&mut self, offset: u64, width: usize) -> u64 {
        let mut data = [0u8; 8];
        self.transport.read(offset, &mut data[..width]);
        u64::from_le_bytes(data)
    }

    pub fn write(&mut self, offset: u64, width: usize, value: u64) {
        self.transport.write(offset, &value.to_le_bytes()[..width]);
    }

    pub fn read32(&mut self, register: u32) -> u32 {
        self.read(register.into(), 4) as u32
    }

    pub fn write32(&mut self, register: u32, value: u32) {
        self.write(register.into(), 4, value.into());
    }

    /// What Linux's virtio-mmio probe does, up to DRIVER_OK: reset, ACKNOWLEDGE, DRIVER,
    /// features (those offered and in `driver_features`), FEATURES_OK, then each ring in
    /// `rings` (by queue index; `None` leaves the queue alone), then DRIVER_OK. Stops
    /// where Linux would give up.
    pub fn bring_up(&mut self, driver_features: u64, rings: &[Option<Ring>]) {
        self.write32(VIRTIO_MMIO_STATUS, 0);
        self.add_status(VIRTIO_CONFIG_S_ACKNOWLEDGE);
        self.add_status(VIRTIO_CONFIG_S_DRIVER);
        self.write32(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        let high = self.read32(VIRTIO_MMIO_DEVICE_FEATURES);
        self.write32(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        let low = self.read32(VIRTIO_MMIO_DEVICE_FEATURES);
        let features = ((u64::from(high) << 32) | u64::from(low)) & driver_features;
        self.write32(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        self.write32(VIRTIO_MMIO_DRIVER_FEATURES, (features >> 32) as u32);
        self.write32(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        self.write32(VIRTIO_MMIO_DRIVER_FEATURES, features as u32);
        self.add_status(VIRTIO_CONFIG_S_FEATURES_OK);
        if self.read32(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
            self.add_status(VIRTIO_CONFIG_S_FAILED);
            return;
        }
        for (index, ring) in rings.iter().enumerate() {
            if let Some(ring) = ring {
                if !self.set_up_queue(index as u32, *ring) {
                    return;
                }
            }
        }
        self.add_status(VIRTIO_CONFIG_S_DRIVER_OK);
    }

    fn add_status(&mut self, bit: u32) {
        let status = self.read32(VIRTIO_MMIO_STATUS);
        self.write32(VIRTIO_MMIO_STATUS, status | bit);
    }

    /// Linux's `vm_setup_vq`; false where it would give up.
    fn set_up_queue(&mut self, index: u32, ring: Ring) -> bool {
        self.write32(VIRTIO_MMIO_QUEUE_SEL, index);
        if self.read32(VIRTIO_MMIO_QUEUE_READY) != 0 {
            return false;
        }
        let max = self.read32(VIRTIO_MMIO_QUEUE_NUM_MAX);
        if max == 0 || u32::from(ring.size) > max {
            return false;
        }
        self.write32(VIRTIO_MMIO_QUEUE_NUM, ring.size.into());
        for (low, value) in [
            (VIRTIO_MMIO_QUEUE_DESC_LOW, ring.desc),
            (VIRTIO_MMIO_QUEUE_AVAIL_LOW, ring.avail),
            (VIRTIO_MMIO_QUEUE_USED_LOW, ring.used),
        ] {
            self.write32(low, value as u32);
            self.write32(low + 4, (value >> 32) as u32);
        }
        self.write32(VIRTIO_MMIO_QUEUE_READY, 1);
        true
    }

    /// What must hold whatever the driver did: the identification registers never change,
    /// and the interrupt status and device status hold only bits they may hold.
    pub fn check_registers(&mut self) {
        assert_eq!(self.read32(VIRTIO_MMIO_MAGIC_VALUE), MMIO_MAGIC_VALUE);
        assert_eq!(self.read32(VIRTIO_MMIO_VERSION), MMIO_VERSION);
        assert_eq!(self.read32(VIRTIO_MMIO_DEVICE_ID), VIRTIO_ID_BALLOON);
        let interrupt = self.read32(VIRTIO_MMIO_INTERRUPT_STATUS);
        assert_eq!(interrupt & !0b11, 0, "InterruptStatus {interrupt:#x}");
        let status = self.read32(VIRTIO_MMIO_STATUS);
        let allowed = VIRTIO_CONFIG_S_ACKNOWLEDGE
            | VIRTIO_CONFIG_S_DRIVER
            | VIRTIO_CONFIG_S_FEATURES_OK
            | VIRTIO_CONFIG_S_DRIVER_OK
            | VIRTIO_CONFIG_S_FAILED
            | VIRTIO_CONFIG_S_NEEDS_RESET;
        assert_eq!(status & !allowed, 0, "Status {status:#x}");
    }

    /// Writes `bytes` into guest memory at `addr` if it all lies in RAM.
    pub fn poke(&self, addr: u64, bytes: &[u8]) {
        let _ = self.mem.write_slice(bytes, GuestAddress(addr));
    }

    pub fn poke_u16(&self, addr: u64, value: u16) {
        self.poke(addr, &value.to_le_bytes());
    }
}

/// The driver's side of one split queue: where its rings are and what it has made
/// available, as a driver keeps it. It writes descriptors and ring entries into guest
/// memory; the device reads them from there.
#[derive(Clone, Copy, Debug)]
pub struct DriverQueue {
    pub ring: Ring,
    next_desc: u16,
    avail_idx: u16,
}

/// One descriptor as it goes into the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawDesc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

pub const VRING_DESC_F_NEXT: u16 = 1;
pub const VRING_DESC_F_WRITE: u16 = 2;
pub const VRING_DESC_F_INDIRECT: u16 = 4;

impl DriverQueue {
    pub fn new(ring: Ring) -> DriverQueue {
        DriverQueue {
            ring,
            next_desc: 0,
            avail_idx: 0,
        }
    }

    /// Writes `descs` into the table from the next free slot on (wrapping) and makes the
    /// first one available. With `link`, each descriptor but the last gets NEXT and the
    /// index of the one after it, as a driver writes a chain; without, the flags and
    /// `next` are written as given, however wrong.
    pub fn add_chain(&mut self, machine: &Machine, descs: &[RawDesc], link: bool) {
        let size = self.ring.size;
        let head = self.next_desc % size;
        for (i, desc) in descs.iter().enumerate() {
            let slot = (head + i as u16) % size;
            let mut desc = *desc;
            if link {
                desc.flags &= !VRING_DESC_F_NEXT;
                if i + 1 < descs.len() {
                    desc.flags |= VRING_DESC_F_NEXT;
                    desc.next = (slot + 1) % size;
                }
            }
            let mut entry = [0u8; 16];
            entry[..8].copy_from_slice(&desc.addr.to_le_bytes());
            entry[8..12].copy_from_slice(&desc.len.to_le_bytes());
            entry[12..14].copy_from_slice(&desc.flags.to_le_bytes());
            entry[14..].copy_from_slice(&desc.next.to_le_bytes());
            machine.poke(self.ring.desc + 16 * u64::from(slot), &entry);
        }
        self.next_desc = (head + descs.len() as u16) % size;
        self.push_head(machine, head);
    }

    /// Puts `head` on the available ring and publishes it.
    pub fn push_head(&mut self, machine: &Machine, head: u16) {
        let slot = u64::from(self.avail_idx % self.ring.size);
        machine.poke_u16(self.ring.avail + 4 + 2 * slot, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        machine.poke_u16(self.ring.avail + 2, self.avail_idx);
    }

    /// Sets the available index to anything, as a hostile driver may.
    pub fn set_avail_idx(&mut self, machine: &Machine, idx: u16) {
        self.avail_idx = idx;
        machine.poke_u16(self.ring.avail + 2, idx);
    }
}

/// The whole window's registers, for targets that pick one by number.
pub const REGISTERS: [u32; 31] = [
    VIRTIO_MMIO_MAGIC_VALUE,
    VIRTIO_MMIO_VERSION,
    VIRTIO_MMIO_DEVICE_ID,
    VIRTIO_MMIO_VENDOR_ID,
    VIRTIO_MMIO_DEVICE_FEATURES,
    VIRTIO_MMIO_DEVICE_FEATURES_SEL,
    VIRTIO_MMIO_DRIVER_FEATURES,
    VIRTIO_MMIO_DRIVER_FEATURES_SEL,
    VIRTIO_MMIO_QUEUE_SEL,
    VIRTIO_MMIO_QUEUE_NUM_MAX,
    VIRTIO_MMIO_QUEUE_NUM,
    VIRTIO_MMIO_QUEUE_READY,
    VIRTIO_MMIO_QUEUE_NOTIFY,
    VIRTIO_MMIO_INTERRUPT_STATUS,
    VIRTIO_MMIO_INTERRUPT_ACK,
    VIRTIO_MMIO_STATUS,
    VIRTIO_MMIO_QUEUE_DESC_LOW,
    VIRTIO_MMIO_QUEUE_DESC_HIGH,
    VIRTIO_MMIO_QUEUE_AVAIL_LOW,
    VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
    VIRTIO_MMIO_QUEUE_USED_LOW,
    VIRTIO_MMIO_QUEUE_USED_HIGH,
    VIRTIO_MMIO_SHM_SEL,
    VIRTIO_MMIO_SHM_LEN_LOW,
    VIRTIO_MMIO_SHM_LEN_HIGH,
    VIRTIO_MMIO_SHM_BASE_LOW,
    VIRTIO_MMIO_SHM_BASE_HIGH,
    VIRTIO_MMIO_CONFIG_GENERATION,
    VIRTIO_MMIO_CONFIG,
    VIRTIO_MMIO_CONFIG + 4,
    VIRTIO_MMIO_CONFIG + 12,
];
