//! A driver for transport tests that does what Linux's `drivers/virtio/virtio_mmio.c` and
//! `drivers/virtio/virtio.c` do, register by register, and a transport to drive: a device
//! in 1 MiB of guest RAM with an interrupt line that counts.

use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK,
};
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::GuestAddress;

use super::MmioTransport;
use crate::devices::bus::BusDevice;
use crate::devices::test_support::CountingInterrupt;
use crate::devices::virtio::{VirtioDevice, VIRTIO_F_VERSION_1};
use crate::memory::GuestMemoryMmap;

pub const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;
pub const EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;

/// 1 MiB of guest RAM from address 0.
pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
}

/// `device` behind a transport in [`guest_memory`], and the interrupt line it raises.
pub fn transport<D: VirtioDevice>(device: D) -> (MmioTransport<D>, Arc<CountingInterrupt>) {
    let irq = Arc::new(CountingInterrupt::default());
    let device = Arc::new(Mutex::new(device));
    let transport = MmioTransport::new(device, guest_memory(), irq.clone()).unwrap();
    (transport, irq)
}

pub fn read32<D: VirtioDevice>(t: &mut MmioTransport<D>, offset: u32) -> u32 {
    let mut data = [0u8; 4];
    t.read(u64::from(offset), &mut data);
    u32::from_le_bytes(data)
}

pub fn write32<D: VirtioDevice>(t: &mut MmioTransport<D>, offset: u32, value: u32) {
    t.write(u64::from(offset), &value.to_le_bytes());
}

/// `virtio_add_status()`: read the status, or in a bit, write it back.
pub fn add_status<D: VirtioDevice>(t: &mut MmioTransport<D>, bit: u32) {
    let status = read32(t, VIRTIO_MMIO_STATUS);
    write32(t, VIRTIO_MMIO_STATUS, status | bit);
}

/// `virtio_mmio_probe()` and `virtio_dev_probe()` up to FEATURES_OK: returns the
/// features the driver settled on, or why it gave up.
pub fn linux_probe<D: VirtioDevice>(
    t: &mut MmioTransport<D>,
    driver_features: u64,
) -> Result<u64, String> {
    if read32(t, VIRTIO_MMIO_MAGIC_VALUE) != 0x7472_6976 {
        return Err("wrong magic value".into());
    }
    if read32(t, VIRTIO_MMIO_VERSION) != 2 {
        return Err("not a modern device".into());
    }
    if read32(t, VIRTIO_MMIO_DEVICE_ID) == 0 {
        return Err("no device behind the window".into());
    }
    write32(t, VIRTIO_MMIO_STATUS, 0);
    add_status(t, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    add_status(t, VIRTIO_CONFIG_S_DRIVER);
    write32(t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    let high = read32(t, VIRTIO_MMIO_DEVICE_FEATURES);
    write32(t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    let low = read32(t, VIRTIO_MMIO_DEVICE_FEATURES);
    let features = ((u64::from(high) << 32) | u64::from(low)) & driver_features;
    write32(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    write32(t, VIRTIO_MMIO_DRIVER_FEATURES, (features >> 32) as u32);
    write32(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    write32(t, VIRTIO_MMIO_DRIVER_FEATURES, features as u32);
    add_status(t, VIRTIO_CONFIG_S_FEATURES_OK);
    if read32(t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
        add_status(t, VIRTIO_CONFIG_S_FAILED);
        return Err("device refuses features".into());
    }
    Ok(features)
}

#[derive(Clone, Copy, Debug)]
pub struct Ring {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

impl Ring {
    /// A ring of `size` entries laid out from `base` the way a driver would.
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
}

/// `vm_setup_vq()`.
pub fn linux_setup_queue<D: VirtioDevice>(
    t: &mut MmioTransport<D>,
    index: u32,
    ring: Ring,
) -> Result<(), String> {
    write32(t, VIRTIO_MMIO_QUEUE_SEL, index);
    if read32(t, VIRTIO_MMIO_QUEUE_READY) != 0 {
        return Err(format!("queue {index} already in use"));
    }
    let max = read32(t, VIRTIO_MMIO_QUEUE_NUM_MAX);
    if max == 0 {
        return Err(format!("queue {index} does not exist"));
    }
    if u32::from(ring.size) > max {
        return Err(format!("queue {index} is at most {max} entries"));
    }
    write32(t, VIRTIO_MMIO_QUEUE_NUM, u32::from(ring.size));
    for (low, value) in [
        (VIRTIO_MMIO_QUEUE_DESC_LOW, ring.desc),
        (VIRTIO_MMIO_QUEUE_AVAIL_LOW, ring.avail),
        (VIRTIO_MMIO_QUEUE_USED_LOW, ring.used),
    ] {
        write32(t, low, value as u32);
        write32(t, low + 4, (value >> 32) as u32);
    }
    write32(t, VIRTIO_MMIO_QUEUE_READY, 1);
    Ok(())
}

/// The whole probe: features, every ring in `rings` (queue index = position), DRIVER_OK.
pub fn linux_bring_up<D: VirtioDevice>(
    t: &mut MmioTransport<D>,
    driver_features: u64,
    rings: &[Ring],
) -> Result<u64, String> {
    let features = linux_probe(t, driver_features)?;
    for (index, ring) in rings.iter().enumerate() {
        linux_setup_queue(t, index as u32, *ring)?;
    }
    add_status(t, VIRTIO_CONFIG_S_DRIVER_OK);
    Ok(features)
}
