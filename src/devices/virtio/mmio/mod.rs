//! The virtio-mmio transport, version 2 (virtio 1.x, "modern" only): the register window
//! a driver uses to discover a device, negotiate features, set up queues, start, notify,
//! take interrupts and reset it. Register map: virtio 1.2, section 4.2.2.
//!
//! The device is shared, behind its own lock. Three locks, always taken in this order:
//! the transport's registers (the MMIO bus holds [`MmioTransport`] in a mutex), the
//! notification gate of [`QueueNotifications`], the device. So a vCPU's exit to a
//! register that does not concern the device, a queue notification and a call from the
//! API never wait for one another beyond the device's own work. docs/architecture.md has
//! the whole picture.
//!
//! The transport keeps the driver's queue configuration in [`virtio_queue::Queue`]s
//! (which validate sizes and alignment), checks the rings against guest memory at
//! DRIVER_OK and hands the device its own copies, with guest memory and the interrupt.
//! It alone checks rings and replays notifications that came before DRIVER_OK; a device
//! checks only what is particular to it (which queues it needs, their minimum sizes).
//!
//! Every access comes from the guest, so nothing here panics on what the guest writes:
//! accesses the spec does not allow are ignored and reported once per kind (see
//! [`crate::warn_once!`]).

mod notifications;
#[cfg(test)]
pub(crate) mod test_driver;
#[cfg(test)]
mod tests;

pub use notifications::QueueNotifications;

use std::io;
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_ADMIN_VQ, VIRTIO_F_NOTIFICATION_DATA, VIRTIO_F_NOTIF_CONFIG_DATA,
    VIRTIO_F_RING_PACKED, VIRTIO_F_RING_RESET,
};
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::BusDevice;
use crate::devices::virtio::interrupt::MmioInterrupt;
use crate::devices::virtio::{
    ActivateError, Activation, InterruptKind, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1,
};
use crate::devices::IrqLine;
use crate::memory::GuestMemoryMmap;
use crate::sync::lock;
use crate::warn_once;

/// "virt" in little-endian ASCII.
pub const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;
/// The modern register layout; version 1 was the legacy one.
pub const MMIO_VERSION: u32 = 2;
/// Our `VendorID`: the bytes "VMM\0" as the guest reads them from memory.
pub const MMIO_VENDOR_ID: u32 = u32::from_le_bytes(*b"VMM\0");
/// Size of the register window, registers and config space together. The guest memory
/// map spaces the devices' windows by it.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// Offset of the `QueueNotify` register, where the VMM places the queue ioeventfds.
pub const MMIO_QUEUE_NOTIFY_OFFSET: u64 = VIRTIO_MMIO_QUEUE_NOTIFY as u64;

/// Where the device configuration space starts in the window.
const CONFIG_SPACE_START: u64 = VIRTIO_MMIO_CONFIG as u64;

/// Transport features this transport does not implement (packed rings, notification data,
/// per-queue reset, admin queues). They are withheld even if a device offers them.
const UNSUPPORTED_TRANSPORT_FEATURES: u64 = (1 << VIRTIO_F_RING_PACKED)
    | (1 << VIRTIO_F_NOTIFICATION_DATA)
    | (1 << VIRTIO_F_NOTIF_CONFIG_DATA)
    | (1 << VIRTIO_F_RING_RESET)
    | (1 << VIRTIO_F_ADMIN_VQ);

/// The status bits a driver may set; DEVICE_NEEDS_RESET is the device's to set.
const DRIVER_STATUS_BITS: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE
    | VIRTIO_CONFIG_S_DRIVER
    | VIRTIO_CONFIG_S_FEATURES_OK
    | VIRTIO_CONFIG_S_DRIVER_OK
    | VIRTIO_CONFIG_S_FAILED;

/// `SHMLen`/`SHMBase` for a region that does not exist: we have no shared memory.
const NO_SHARED_MEMORY: u32 = u32::MAX;

#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    #[error(
        "virtio device type {device_type} does not offer VIRTIO_F_VERSION_1; \
         the virtio-mmio transport supports only modern devices"
    )]
    NotModern { device_type: u32 },
    #[error(
        "queue {index} of virtio device type {device_type} has maximum size {max_size}; \
         it must be a power of two from 1 to 32768"
    )]
    InvalidQueueMaxSize {
        device_type: u32,
        index: usize,
        max_size: u16,
    },
    #[error("cannot create the notification eventfd of queue {index}: {source}")]
    QueueEvent { index: usize, source: io::Error },
}

/// Why a device did not start at DRIVER_OK.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error(
        "queue {index} (size {size}, descriptors at {desc:#x}, driver area at {avail:#x}, \
         device area at {used:#x}) is not inside guest memory"
    )]
    RingOutsideMemory {
        index: usize,
        size: u16,
        desc: u64,
        avail: u64,
        used: u64,
    },
    #[error("queue {index}: {source}")]
    QueueState {
        index: usize,
        source: virtio_queue::Error,
    },
    #[error(transparent)]
    Device(#[from] ActivateError),
}

/// A virtio device behind a virtio-mmio register window.
pub struct MmioTransport<D: VirtioDevice> {
    /// The device (behind its own lock) and its notification path, shared with the event
    /// loop.
    notifications: Arc<QueueNotifications<D>>,
    /// `device.device_type()`, which never changes: reading `DeviceID` needs no device lock.
    device_type: u32,
    mem: GuestMemoryMmap,
    interrupt: Arc<MmioInterrupt>,
    /// The queues as the driver configured them through the registers. The device gets
    /// copies at activation; these stay to answer register reads.
    queues: Vec<Queue>,
    status: u32,
    offered_features: u64,
    acked_features: u64,
    device_features_sel: u32,
    driver_features_sel: u32,
    queue_sel: u32,
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// Puts `device` behind a register window. The caller may keep its own reference to
    /// the device (the API does, for the balloon); it must not hold the device's lock
    /// while calling this.
    pub fn new(
        device: Arc<Mutex<D>>,
        mem: GuestMemoryMmap,
        irq: Arc<dyn IrqLine>,
    ) -> Result<Self, MmioError> {
        let (device_type, device_features, queue_max_sizes) = {
            let device = lock(&device);
            let max_sizes = device.queue_max_sizes().to_vec();
            (device.device_type(), device.device_features(), max_sizes)
        };
        let offered_features = device_features & !UNSUPPORTED_TRANSPORT_FEATURES;
        if offered_features & (1 << VIRTIO_F_VERSION_1) == 0 {
            return Err(MmioError::NotModern { device_type });
        }
        let queues = queue_max_sizes
            .iter()
            .enumerate()
            .map(|(index, &max_size)| {
                Queue::new(max_size).map_err(|_| MmioError::InvalidQueueMaxSize {
                    device_type,
                    index,
                    max_size,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let notifications = QueueNotifications::new(device, queues.len())?;
        Ok(MmioTransport {
            notifications: Arc::new(notifications),
            device_type,
            mem,
            interrupt: Arc::new(MmioInterrupt::new(irq)),
            queues,
            status: 0,
            offered_features,
            acked_features: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            queue_sel: 0,
        })
    }

    /// The device, behind its own lock.
    pub fn device(&self) -> &Arc<Mutex<D>> {
        self.notifications.device()
    }

    /// The notification path, for the event loop: it delivers queue notifications (and
    /// reaches the device's own fds) without the register lock.
    pub fn notifications(&self) -> Arc<QueueNotifications<D>> {
        self.notifications.clone()
    }

    /// One eventfd per queue, in queue order. The VMM registers each as a KVM ioeventfd
    /// on `base + MMIO_QUEUE_NOTIFY_OFFSET` with the queue index as datamatch; the event
    /// handler turns it into a notification.
    pub fn queue_events(&self) -> &[EventFd] {
        self.notifications.queue_events()
    }

    /// The device's interrupt. Triggering it records the reason in `InterruptStatus` (and
    /// bumps `ConfigGeneration` for config changes) and raises the interrupt line.
    pub fn interrupt(&self) -> Arc<dyn VirtioInterrupt> {
        self.interrupt.clone()
    }

    /// The driver notified queue `index`: the device processes it if it is running, or
    /// when it starts if the driver has not set DRIVER_OK yet.
    pub fn notify_queue(&self, index: usize) {
        self.notifications.notify(index);
    }

    fn read_register(&self, offset: u32) -> u32 {
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MMIO_MAGIC_VALUE,
            VIRTIO_MMIO_VERSION => MMIO_VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device_type,
            VIRTIO_MMIO_VENDOR_ID => MMIO_VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered_features as u32,
                1 => (self.offered_features >> 32) as u32,
                _ => 0,
            },
            // 0 tells Linux the queue does not exist.
            VIRTIO_MMIO_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| q.max_size().into()),
            VIRTIO_MMIO_QUEUE_READY => self.selected_queue().is_some_and(|q| q.ready()).into(),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            VIRTIO_MMIO_STATUS => self.status,
            VIRTIO_MMIO_SHM_LEN_LOW
            | VIRTIO_MMIO_SHM_LEN_HIGH
            | VIRTIO_MMIO_SHM_BASE_LOW
            | VIRTIO_MMIO_SHM_BASE_HIGH => NO_SHARED_MEMORY,
            VIRTIO_MMIO_CONFIG_GENERATION => self.interrupt.config_generation(),
            _ => {
                warn_once!(
                    "virtio-mmio: read of write-only or unknown register {offset:#x}; reads as 0"
                );
                0
            }
        }
    }

    fn write_register(&mut self, offset: u32, value: u32) {
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES => self.write_driver_features(value),
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = value,
            VIRTIO_MMIO_QUEUE_NUM => self.write_queue_num(value),
            VIRTIO_MMIO_QUEUE_READY => self.write_queue_ready(value),
            VIRTIO_MMIO_QUEUE_NOTIFY => self.notify_queue(value as usize),
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.acknowledge(value),
            VIRTIO_MMIO_STATUS => self.write_status(value),
            VIRTIO_MMIO_QUEUE_DESC_LOW
            | VIRTIO_MMIO_QUEUE_DESC_HIGH
            | VIRTIO_MMIO_QUEUE_AVAIL_LOW
            | VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | VIRTIO_MMIO_QUEUE_USED_LOW
            | VIRTIO_MMIO_QUEUE_USED_HIGH => self.write_queue_address(offset, value),
            // Every region reads as absent, whichever is selected.
            VIRTIO_MMIO_SHM_SEL => {}
            _ => warn_once!(
                "virtio-mmio: write of {value:#x} to read-only or unknown register {offset:#x}; ignored"
            ),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            warn_once!("virtio-mmio: driver features written after FEATURES_OK; ignored");
            return;
        }
        let shift = match self.driver_features_sel {
            0 => 0,
            1 => 32,
            // No feature is offered there, so nothing can be accepted.
            _ => return,
        };
        let half = 0xffff_ffffu64 << shift;
        let accepted = (u64::from(value) << shift) & self.offered_features;
        self.acked_features = (self.acked_features & !half) | accepted;
    }

    fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(self.queue_sel as usize)
    }

    /// The selected queue, if the driver may still change its configuration: it exists,
    /// is not ready, and the device has not started.
    fn configurable_queue(&mut self) -> Option<&mut Queue> {
        if self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            warn_once!("virtio-mmio: queue configuration written after DRIVER_OK; ignored");
            return None;
        }
        let index = self.queue_sel;
        let Some(queue) = self.queues.get_mut(index as usize) else {
            warn_once!("virtio-mmio: configuration of queue {index}, which the device does not have; ignored");
            return None;
        };
        if queue.ready() {
            warn_once!("virtio-mmio: configuration of queue {index} while it is ready; ignored");
            return None;
        }
        Some(queue)
    }

    fn write_queue_num(&mut self, value: u32) {
        let Some(queue) = self.configurable_queue() else {
            return;
        };
        let max = queue.max_size();
        let valid = u16::try_from(value)
            .ok()
            .is_some_and(|size| queue.try_set_size(size).is_ok());
        if !valid {
            warn_once!(
                "virtio-mmio: queue size {value} is not a power of two from 1 to {max}; ignored"
            );
        }
    }

    fn write_queue_ready(&mut self, value: u32) {
        if value > 1 {
            warn_once!("virtio-mmio: QueueReady written with {value}; only 0 and 1 mean anything");
            return;
        }
        if self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            warn_once!("virtio-mmio: QueueReady written after DRIVER_OK; ignored");
            return;
        }
        let index = self.queue_sel as usize;
        let Some(queue) = self.queues.get_mut(index) else {
            warn_once!(
                "virtio-mmio: QueueReady of queue {index}, which the device does not have; ignored"
            );
            return;
        };
        queue.set_ready(value == 1);
        self.notifications.set_queue_ready(index, value == 1);
    }

    fn write_queue_address(&mut self, offset: u32, value: u32) {
        let Some(queue) = self.configurable_queue() else {
            return;
        };
        let high = matches!(
            offset,
            VIRTIO_MMIO_QUEUE_DESC_HIGH
                | VIRTIO_MMIO_QUEUE_AVAIL_HIGH
                | VIRTIO_MMIO_QUEUE_USED_HIGH
        );
        let replace_half = |current: u64| {
            if high {
                (current & 0xffff_ffff) | (u64::from(value) << 32)
            } else {
                (current & !0xffff_ffff) | u64::from(value)
            }
        };
        let result = match offset {
            VIRTIO_MMIO_QUEUE_DESC_LOW | VIRTIO_MMIO_QUEUE_DESC_HIGH => {
                queue.try_set_desc_table_address(GuestAddress(replace_half(queue.desc_table())))
            }
            VIRTIO_MMIO_QUEUE_AVAIL_LOW | VIRTIO_MMIO_QUEUE_AVAIL_HIGH => {
                queue.try_set_avail_ring_address(GuestAddress(replace_half(queue.avail_ring())))
            }
            _ => queue.try_set_used_ring_address(GuestAddress(replace_half(queue.used_ring()))),
        };
        if let Err(e) = result {
            warn_once!(
                "virtio-mmio: queue address {value:#x} at register {offset:#x} refused: {e}"
            );
        }
    }

    /// The device status state machine (virtio 1.2, 3.1.1): each bit may only be added
    /// after the ones before it; 0 resets; FAILED may come at any time.
    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status & DRIVER_STATUS_BITS;
        let written = value & DRIVER_STATUS_BITS;
        if written & old != old {
            warn_once!(
                "virtio-mmio: status {value:#x} clears bits of {:#x} without a reset; ignored",
                self.status
            );
            return;
        }
        let added = written & !old;
        if added & VIRTIO_CONFIG_S_FAILED != 0 {
            self.status |= VIRTIO_CONFIG_S_FAILED;
            return;
        }
        if self.status & VIRTIO_CONFIG_S_FAILED != 0 {
            return;
        }
        for bit in [
            VIRTIO_CONFIG_S_ACKNOWLEDGE,
            VIRTIO_CONFIG_S_DRIVER,
            VIRTIO_CONFIG_S_FEATURES_OK,
            VIRTIO_CONFIG_S_DRIVER_OK,
        ] {
            if added & bit == 0 {
                continue;
            }
            let (required, name) = match bit {
                VIRTIO_CONFIG_S_ACKNOWLEDGE => (0, "ACKNOWLEDGE"),
                VIRTIO_CONFIG_S_DRIVER => (VIRTIO_CONFIG_S_ACKNOWLEDGE, "DRIVER"),
                VIRTIO_CONFIG_S_FEATURES_OK => (VIRTIO_CONFIG_S_DRIVER, "FEATURES_OK"),
                _ => (VIRTIO_CONFIG_S_FEATURES_OK, "DRIVER_OK"),
            };
            if self.status & required != required {
                warn_once!(
                    "virtio-mmio: status {name} set out of order (status {:#x}); ignored",
                    self.status
                );
                return;
            }
            if bit == VIRTIO_CONFIG_S_FEATURES_OK
                && self.acked_features & (1 << VIRTIO_F_VERSION_1) == 0
            {
                // Not latched: the driver reads FEATURES_OK back clear and gives up.
                warn_once!(
                    "virtio-mmio: the driver did not accept VIRTIO_F_VERSION_1 (a legacy driver?); \
                     FEATURES_OK refused"
                );
                return;
            }
            self.status |= bit;
            if bit == VIRTIO_CONFIG_S_DRIVER_OK {
                self.start_device();
            }
        }
    }

    /// DRIVER_OK: the device starts with the driver's rings if they are all in RAM.
    fn start_device(&mut self) {
        let started = match self.activation() {
            Ok(activation) => self
                .notifications
                .start(activation)
                .map_err(StartError::from),
            Err(refused) => {
                self.notifications.start_refused();
                Err(refused)
            }
        };
        if let Err(e) = started {
            self.device_needs_reset(&e);
        }
    }

    /// What the device gets at DRIVER_OK: copies of the driver's queues, checked against
    /// guest memory so no device ever walks a ring that is not in RAM.
    fn activation(&self) -> Result<Activation, StartError> {
        let event_idx = self.acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (index, queue) in self.queues.iter().enumerate() {
            if queue.ready() && !queue.is_valid(&self.mem) {
                return Err(StartError::RingOutsideMemory {
                    index,
                    size: queue.size(),
                    desc: queue.desc_table(),
                    avail: queue.avail_ring(),
                    used: queue.used_ring(),
                });
            }
            let mut copy = Queue::try_from(queue.state())
                .map_err(|source| StartError::QueueState { index, source })?;
            copy.set_event_idx(event_idx);
            queues.push(copy);
        }
        Ok(Activation {
            mem: self.mem.clone(),
            queues,
            acked_features: self.acked_features,
            interrupt: self.interrupt(),
        })
    }

    fn device_needs_reset(&mut self, reason: &StartError) {
        let device_type = self.device_type;
        warn_once!("virtio device type {device_type} could not start: {reason}; it needs a reset");
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
        self.interrupt.trigger(InterruptKind::Config);
    }

    /// Back to the state the driver found at boot, so it can probe the device again.
    fn reset(&mut self) {
        self.notifications.reset();
        for queue in &mut self.queues {
            queue.reset();
        }
        self.interrupt.clear();
        self.status = 0;
        self.acked_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
    }
}

/// The register an access names, if it is a valid one: 32 bits wide and aligned.
fn register_offset(offset: u64, len: usize) -> Option<u32> {
    (offset < CONFIG_SPACE_START && len == 4 && offset % 4 == 0).then_some(offset as u32)
}

fn config_access_is_valid(offset: u64, len: usize) -> bool {
    matches!(len, 1 | 2 | 4 | 8)
        && offset
            .checked_add(len as u64)
            .is_some_and(|end| end <= MMIO_WINDOW_SIZE)
}

impl<D: VirtioDevice> BusDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE_START {
            if config_access_is_valid(offset, data.len()) {
                lock(self.device()).read_config(offset - CONFIG_SPACE_START, data);
            } else {
                data.fill(0);
                warn_once!(
                    "virtio-mmio: {}-byte config read at {offset:#x} is not allowed; reads as 0",
                    data.len()
                );
            }
            return;
        }
        match register_offset(offset, data.len()) {
            Some(register) => data.copy_from_slice(&self.read_register(register).to_le_bytes()),
            None => {
                data.fill(0);
                warn_once!(
                    "virtio-mmio: {}-byte register read at {offset:#x}; registers are 32-bit, reads as 0",
                    data.len()
                );
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_START {
            if config_access_is_valid(offset, data.len()) {
                lock(self.device()).write_config(offset - CONFIG_SPACE_START, data);
            } else {
                warn_once!(
                    "virtio-mmio: {}-byte config write at {offset:#x} is not allowed; ignored",
                    data.len()
                );
            }
            return;
        }
        let register = register_offset(offset, data.len());
        match (register, <[u8; 4]>::try_from(data)) {
            (Some(register), Ok(bytes)) => self.write_register(register, u32::from_le_bytes(bytes)),
            _ => warn_once!(
                "virtio-mmio: {}-byte register write at {offset:#x}; registers are 32-bit, ignored",
                data.len()
            ),
        }
    }
}
