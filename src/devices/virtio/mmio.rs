//! The virtio-mmio transport, version 2 (virtio 1.x, "modern" only): the register window
//! a driver uses to discover a device, negotiate features, set up queues, start, notify,
//! take interrupts and reset it. Register map: virtio 1.2, section 4.2.2.
//!
//! The transport owns the device. It keeps the driver's queue configuration in
//! [`virtio_queue::Queue`]s (which validate sizes and alignment) and hands the device its
//! own copies, with guest memory and the interrupt, when the driver sets DRIVER_OK.
//!
//! Every access comes from the guest, so nothing here panics on what the guest writes:
//! accesses the spec does not allow are ignored and reported once per kind (see
//! [`crate::warn_once!`]).

use std::io;
use std::sync::Arc;

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
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::devices::bus::BusDevice;
use crate::devices::virtio::interrupt::MmioInterrupt;
use crate::devices::virtio::{
    Activation, InterruptKind, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1,
};
use crate::devices::IrqLine;
use crate::memory::GuestMemoryMmap;
use crate::warn_once;

/// "virt" in little-endian ASCII.
pub const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;
/// The modern register layout; version 1 was the legacy one.
pub const MMIO_VERSION: u32 = 2;
/// Our `VendorID`: the bytes "VMM\0" as the guest reads them from memory.
pub const MMIO_VENDOR_ID: u32 = u32::from_le_bytes(*b"VMM\0");
/// Size of the register window, registers and config space together.
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

/// A virtio device behind a virtio-mmio register window.
pub struct MmioTransport<D: VirtioDevice> {
    device: D,
    mem: GuestMemoryMmap,
    interrupt: Arc<MmioInterrupt>,
    /// The queues as the driver configured them through the registers. The device gets
    /// copies at activation; these stay to answer register reads.
    queues: Vec<Queue>,
    queue_events: Vec<EventFd>,
    /// Queues notified after they were set up but before DRIVER_OK. Linux's balloon driver
    /// primes its statistics queue and kicks it that early; the device sees the kick as
    /// soon as it starts, or the buffer would sit in the queue forever.
    early_notifications: Vec<bool>,
    status: u32,
    offered_features: u64,
    acked_features: u64,
    device_features_sel: u32,
    driver_features_sel: u32,
    queue_sel: u32,
}

impl<D: VirtioDevice> MmioTransport<D> {
    pub fn new(device: D, mem: GuestMemoryMmap, irq: Arc<dyn IrqLine>) -> Result<Self, MmioError> {
        let device_type = device.device_type();
        let offered_features = device.device_features() & !UNSUPPORTED_TRANSPORT_FEATURES;
        if offered_features & (1 << VIRTIO_F_VERSION_1) == 0 {
            return Err(MmioError::NotModern { device_type });
        }
        let queues = device
            .queue_max_sizes()
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
        let queue_events = (0..queues.len())
            .map(|index| {
                EventFd::new(EFD_NONBLOCK).map_err(|source| MmioError::QueueEvent { index, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(MmioTransport {
            device,
            mem,
            interrupt: Arc::new(MmioInterrupt::new(irq)),
            early_notifications: vec![false; queues.len()],
            queues,
            queue_events,
            status: 0,
            offered_features,
            acked_features: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            queue_sel: 0,
        })
    }

    pub fn device(&self) -> &D {
        &self.device
    }

    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// One eventfd per queue, in queue order. The VMM registers each as a KVM ioeventfd
    /// on `base + MMIO_QUEUE_NOTIFY_OFFSET` with the queue index as datamatch; the event
    /// handler turns it into [`notify_queue`](Self::notify_queue).
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    /// The device's interrupt. Triggering it records the reason in `InterruptStatus` (and
    /// bumps `ConfigGeneration` for config changes) and raises the interrupt line.
    pub fn interrupt(&self) -> Arc<dyn VirtioInterrupt> {
        self.interrupt.clone()
    }

    /// The driver notified queue `index`: the device processes it if it is running.
    pub fn notify_queue(&mut self, index: usize) {
        let Some(queue) = self.queues.get(index) else {
            warn_once!("virtio-mmio: notification for queue {index}, which the device does not have; ignored");
            return;
        };
        if !queue.ready() {
            warn_once!(
                "virtio-mmio: notification for queue {index} before the driver set it up; ignored"
            );
            return;
        }
        if self.status & VIRTIO_CONFIG_S_DRIVER_OK == 0 {
            self.early_notifications[index] = true;
            return;
        }
        if !self.device.is_activated() {
            warn_once!("virtio-mmio: notification for queue {index} of a device that is not running; ignored");
            return;
        }
        self.device.process_queue(index);
    }

    fn read_register(&self, offset: u32) -> u32 {
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MMIO_MAGIC_VALUE,
            VIRTIO_MMIO_VERSION => MMIO_VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
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
        if value == 0 {
            self.early_notifications[index] = false;
        }
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
                self.activate();
            }
        }
    }

    fn activate(&mut self) {
        let device_type = self.device.device_type();
        match self.activation() {
            Ok(activation) => match self.device.activate(activation) {
                Ok(()) => {
                    for index in 0..self.early_notifications.len() {
                        if std::mem::take(&mut self.early_notifications[index]) {
                            self.device.process_queue(index);
                        }
                    }
                }
                Err(e) => self.device_needs_reset(device_type, &e.to_string()),
            },
            Err(reason) => self.device_needs_reset(device_type, &reason),
        }
    }

    /// What the device gets at DRIVER_OK: copies of the driver's queues, checked against
    /// guest memory so no device ever walks a ring that is not in RAM.
    fn activation(&self) -> Result<Activation, String> {
        let event_idx = self.acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (index, queue) in self.queues.iter().enumerate() {
            if queue.ready() && !queue.is_valid(&self.mem) {
                return Err(format!(
                    "queue {index} (size {}, descriptors at {:#x}, driver area at {:#x}, \
                     device area at {:#x}) is not inside guest memory",
                    queue.size(),
                    queue.desc_table(),
                    queue.avail_ring(),
                    queue.used_ring()
                ));
            }
            let mut copy =
                Queue::try_from(queue.state()).map_err(|e| format!("queue {index}: {e}"))?;
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

    fn device_needs_reset(&mut self, device_type: u32, reason: &str) {
        warn_once!("virtio device type {device_type} could not start: {reason}; it needs a reset");
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
        self.interrupt.trigger(InterruptKind::Config);
    }

    /// Back to the state the driver found at boot, so it can probe the device again.
    fn reset(&mut self) {
        self.device.reset();
        for queue in &mut self.queues {
            queue.reset();
        }
        for event in &self.queue_events {
            // A kick left over from before the reset must not reach the next activation;
            // an empty eventfd answers WouldBlock, which is what we want.
            let _ = event.read();
        }
        self.early_notifications.fill(false);
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
                self.device.read_config(offset - CONFIG_SPACE_START, data);
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
                self.device.write_config(offset - CONFIG_SPACE_START, data);
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

/// A device and a driver for tests: the driver side does what Linux's
/// `drivers/virtio/virtio_mmio.c` and `drivers/virtio/virtio.c` do, register by register.
#[cfg(test)]
pub(crate) mod test_support {
    use std::os::unix::io::{AsRawFd, RawFd};
    use std::sync::atomic::{AtomicUsize, Ordering};

    use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_FAILED;

    use super::*;
    use crate::devices::virtio::ActivateError;

    pub const DUMMY_DEVICE_TYPE: u32 = 0x2a;
    pub const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;
    pub const EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;

    #[derive(Default)]
    pub struct CountingIrq(AtomicUsize);

    impl CountingIrq {
        pub fn count(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    impl IrqLine for CountingIrq {
        fn signal(&self) -> io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    /// Uses every buffer it is notified about and interrupts for it.
    pub struct DummyDevice {
        pub features: u64,
        pub max_sizes: Vec<u16>,
        pub config: [u8; 16],
        pub fail_activation: bool,
        pub running: Option<Activation>,
        pub activations: usize,
        pub processed: Vec<usize>,
        pub resets: usize,
        pub timer: EventFd,
        pub timer_events: usize,
    }

    impl DummyDevice {
        pub fn new(features: u64, max_sizes: &[u16]) -> Self {
            DummyDevice {
                features,
                max_sizes: max_sizes.to_vec(),
                config: std::array::from_fn(|i| i as u8),
                fail_activation: false,
                running: None,
                activations: 0,
                processed: Vec::new(),
                resets: 0,
                timer: EventFd::new(EFD_NONBLOCK).unwrap(),
                timer_events: 0,
            }
        }
    }

    impl VirtioDevice for DummyDevice {
        fn device_type(&self) -> u32 {
            DUMMY_DEVICE_TYPE
        }
        fn device_features(&self) -> u64 {
            self.features
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &self.max_sizes
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, byte) in data.iter_mut().enumerate() {
                *byte = usize::try_from(offset)
                    .ok()
                    .and_then(|o| self.config.get(o + i))
                    .copied()
                    .unwrap_or(0);
            }
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            for (i, byte) in data.iter().enumerate() {
                if let Some(slot) = self.config.get_mut(offset as usize + i) {
                    *slot = *byte;
                }
            }
        }
        fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
            if self.fail_activation {
                return Err(ActivateError::Other("refused by the test".into()));
            }
            self.activations += 1;
            self.running = Some(activation);
            Ok(())
        }
        fn is_activated(&self) -> bool {
            self.running.is_some()
        }
        fn process_queue(&mut self, index: usize) {
            self.processed.push(index);
            let Some(running) = self.running.as_mut() else {
                return;
            };
            let mem = &running.mem;
            let queue = &mut running.queues[index];
            let mut used = false;
            while let Some(chain) = queue.pop_descriptor_chain(mem) {
                queue.add_used(mem, chain.head_index(), 0).unwrap();
                used = true;
            }
            if used {
                running.interrupt.trigger(InterruptKind::Queue);
            }
        }
        fn reset(&mut self) {
            self.running = None;
            self.resets += 1;
        }
        fn event_fds(&self) -> Vec<RawFd> {
            vec![self.timer.as_raw_fd()]
        }
        fn process_event_fd(&mut self, fd: RawFd) {
            assert_eq!(fd, self.timer.as_raw_fd());
            self.timer.read().unwrap();
            self.timer_events += 1;
        }
    }

    pub fn guest_memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    pub fn transport(device: DummyDevice) -> (MmioTransport<DummyDevice>, Arc<CountingIrq>) {
        let irq = Arc::new(CountingIrq::default());
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
}

#[cfg(test)]
mod tests {
    use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_FAILED;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::Bytes;

    use super::test_support::*;
    use super::*;

    const BIT0: u64 = 1;
    /// A device-specific feature in the high half (bits 50 to 127 are device-specific).
    const HIGH_BIT: u64 = 1 << 50;
    const STATUS_RUNNING: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE
        | VIRTIO_CONFIG_S_DRIVER
        | VIRTIO_CONFIG_S_FEATURES_OK
        | VIRTIO_CONFIG_S_DRIVER_OK;

    fn two_queue_device() -> DummyDevice {
        DummyDevice::new(VERSION_1 | EVENT_IDX | BIT0, &[256, 128])
    }

    fn rings() -> [Ring; 2] {
        [Ring::at(0x1_0000, 256), Ring::at(0x2_0000, 64)]
    }

    fn status(t: &mut MmioTransport<DummyDevice>) -> u32 {
        read32(t, VIRTIO_MMIO_STATUS)
    }

    #[test]
    fn identifies_itself() {
        let (mut t, _) = transport(two_queue_device());
        assert_eq!(read32(&mut t, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_VERSION), 2);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_DEVICE_ID), DUMMY_DEVICE_TYPE);
        assert_eq!(
            read32(&mut t, VIRTIO_MMIO_VENDOR_ID).to_le_bytes(),
            *b"VMM\0"
        );
        assert_eq!(
            MMIO_WINDOW_SIZE,
            crate::arch::x86_64::layout::VIRTIO_MMIO_SIZE
        );
    }

    #[test]
    fn linux_probe_activates_the_device_with_its_queues_and_features() {
        let (mut t, _) = transport(two_queue_device());
        let [r0, r1] = rings();
        let acked = linux_bring_up(&mut t, VERSION_1 | EVENT_IDX | BIT0, &[r0, r1]).unwrap();
        assert_eq!(acked, VERSION_1 | EVENT_IDX | BIT0);
        assert_eq!(status(&mut t), STATUS_RUNNING);

        let device = t.device();
        assert_eq!(device.activations, 1);
        let running = device.running.as_ref().unwrap();
        assert_eq!(running.acked_features, VERSION_1 | EVENT_IDX | BIT0);
        assert_eq!(running.queues.len(), 2);
        for (queue, ring) in running.queues.iter().zip([r0, r1]) {
            assert!(queue.ready());
            assert_eq!(queue.size(), ring.size);
            assert_eq!(queue.desc_table(), ring.desc);
            assert_eq!(queue.avail_ring(), ring.avail);
            assert_eq!(queue.used_ring(), ring.used);
            assert!(queue.event_idx_enabled());
        }
        assert_eq!(running.queues[0].max_size(), 256);
        assert_eq!(running.queues[1].max_size(), 128);
    }

    #[test]
    fn a_queue_the_driver_skips_reaches_the_device_not_ready() {
        let (mut t, _) = transport(two_queue_device());
        linux_bring_up(&mut t, VERSION_1, &rings()[..1]).unwrap();
        let running = t.device().running.as_ref().unwrap();
        assert!(running.queues[0].ready());
        assert!(!running.queues[1].ready());
        assert!(!running.queues[0].event_idx_enabled());
    }

    #[test]
    fn the_driver_can_only_accept_offered_features() {
        let (mut t, _) = transport(DummyDevice::new(VERSION_1 | HIGH_BIT | BIT0, &[16]));
        linux_probe(&mut t, VERSION_1 | BIT0).unwrap();
        // A driver that writes every bit gets the offered ones only.
        let mut t2 = transport(DummyDevice::new(VERSION_1 | HIGH_BIT | BIT0, &[16])).0;
        write32(&mut t2, VIRTIO_MMIO_STATUS, 0);
        add_status(&mut t2, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        add_status(&mut t2, VIRTIO_CONFIG_S_DRIVER);
        for sel in 0..3 {
            write32(&mut t2, VIRTIO_MMIO_DRIVER_FEATURES_SEL, sel);
            write32(&mut t2, VIRTIO_MMIO_DRIVER_FEATURES, u32::MAX);
        }
        add_status(&mut t2, VIRTIO_CONFIG_S_FEATURES_OK);
        add_status(&mut t2, VIRTIO_CONFIG_S_DRIVER_OK);
        let running = t2.device().running.as_ref().unwrap();
        assert_eq!(running.acked_features, VERSION_1 | HIGH_BIT | BIT0);

        // Features cannot change once FEATURES_OK is set.
        write32(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        write32(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, u32::MAX);
        add_status(&mut t, VIRTIO_CONFIG_S_DRIVER_OK);
        assert_eq!(
            t.device().running.as_ref().unwrap().acked_features,
            VERSION_1 | BIT0
        );
    }

    #[test]
    fn device_features_read_through_the_select_register() {
        let (mut t, _) = transport(DummyDevice::new(VERSION_1 | HIGH_BIT | BIT0, &[16]));
        write32(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), 1);
        write32(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        assert_eq!(
            read32(&mut t, VIRTIO_MMIO_DEVICE_FEATURES),
            ((VERSION_1 | HIGH_BIT) >> 32) as u32
        );
        write32(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 2);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), 0);
    }

    #[test]
    fn transport_features_it_cannot_do_are_not_offered() {
        let packed = 1 << VIRTIO_F_RING_PACKED;
        let notification_data = 1 << VIRTIO_F_NOTIFICATION_DATA;
        let ring_reset = 1 << VIRTIO_F_RING_RESET;
        let (mut t, _) = transport(DummyDevice::new(
            VERSION_1 | packed | notification_data | ring_reset,
            &[16],
        ));
        let acked = linux_probe(&mut t, u64::MAX).unwrap();
        assert_eq!(acked, VERSION_1);
    }

    #[test]
    fn a_driver_without_version_1_is_refused_features_ok_and_can_retry() {
        let (mut t, _) = transport(two_queue_device());
        assert_eq!(
            linux_probe(&mut t, BIT0),
            Err("device refuses features".to_string())
        );
        assert_eq!(
            status(&mut t),
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FAILED
        );
        // A driver that carries on anyway does not start the device.
        add_status(&mut t, VIRTIO_CONFIG_S_DRIVER_OK);
        assert!(!t.device().is_activated());
        assert_eq!(status(&mut t) & VIRTIO_CONFIG_S_DRIVER_OK, 0);

        // A modern driver after it gets a working device.
        linux_bring_up(&mut t, VERSION_1, &rings()).unwrap();
        assert!(t.device().is_activated());
    }

    #[test]
    fn status_bits_must_come_in_order_and_stay_set() {
        let (mut t, _) = transport(two_queue_device());
        write32(&mut t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_DRIVER);
        assert_eq!(status(&mut t), 0);
        linux_probe(&mut t, VERSION_1).unwrap();
        // Clearing DRIVER without a reset is refused.
        write32(
            &mut t,
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_FEATURES_OK,
        );
        assert_eq!(
            status(&mut t),
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK
        );
        // The driver cannot set DEVICE_NEEDS_RESET.
        add_status(&mut t, VIRTIO_CONFIG_S_NEEDS_RESET);
        assert_eq!(status(&mut t) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);

        // DRIVER_OK straight after ACKNOWLEDGE|DRIVER is out of order.
        let (mut t, _) = transport(two_queue_device());
        add_status(&mut t, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        add_status(&mut t, VIRTIO_CONFIG_S_DRIVER);
        write32(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        write32(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
        add_status(&mut t, VIRTIO_CONFIG_S_DRIVER_OK);
        assert!(!t.device().is_activated());
        assert_eq!(
            status(&mut t),
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER
        );
    }

    #[test]
    fn queue_num_max_is_zero_past_the_last_queue() {
        let (mut t, _) = transport(two_queue_device());
        linux_probe(&mut t, VERSION_1).unwrap();
        write32(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 128);
        for index in [2, 3, u32::MAX] {
            assert_eq!(
                linux_setup_queue(&mut t, index, Ring::at(0x3_0000, 16)),
                Err(format!("queue {index} does not exist"))
            );
            // Writes to a queue that does not exist go nowhere.
            write32(&mut t, VIRTIO_MMIO_QUEUE_NUM, 16);
            write32(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x3_0000);
            write32(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
            assert_eq!(read32(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
        }
        linux_setup_queue(&mut t, 0, rings()[0]).unwrap();
        add_status(&mut t, VIRTIO_CONFIG_S_DRIVER_OK);
        assert_eq!(t.device().running.as_ref().unwrap().queues.len(), 2);
    }

    #[test]
    fn queue_sizes_must_be_powers_of_two_within_the_maximum() {
        let (mut t, _) = transport(two_queue_device());
        linux_probe(&mut t, VERSION_1).unwrap();
        let set_up_without_size = |t: &mut MmioTransport<DummyDevice>, index, base: u32| {
            write32(t, VIRTIO_MMIO_QUEUE_SEL, index);
            write32(t, VIRTIO_MMIO_QUEUE_DESC_LOW, base);
            write32(t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, base + 0x1000);
            write32(t, VIRTIO_MMIO_QUEUE_USED_LOW, base + 0x2000);
            write32(t, VIRTIO_MMIO_QUEUE_READY, 1);
        };
        write32(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
        write32(&mut t, VIRTIO_MMIO_QUEUE_NUM, 32);
        for bad in [0, 3, 100, 256, 65536 + 32, u32::MAX] {
            write32(&mut t, VIRTIO_MMIO_QUEUE_NUM, bad);
        }
        set_up_without_size(&mut t, 1, 0x2_0000);
        write32(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
        write32(&mut t, VIRTIO_MMIO_QUEUE_NUM, 512);
        set_up_without_size(&mut t, 0, 0x1_0000);
        add_status(&mut t, VIRTIO_CONFIG_S_DRIVER_OK);
        let queues = &t.device().running.as_ref().unwrap().queues;
        assert_eq!(queues[1].size(), 32);
        // Queue 0 kept its default size, the maximum.
        assert_eq!(queues[0].size(), 256);
    }

    #[test]
    fn misaligned_ring_addresses_are_refused() {
        let (mut t, _) = transport(two_queue_device());
        linux_probe(&mut t, VERSION_1).unwrap();
        let ring = Ring::at(0x1_0000, 16);
        linux_setup_queue(&mut t, 0, ring).unwrap();
        write32(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
        write32(&mut t, VIRTIO_MMIO_QUEUE_NUM, 16);
        write32(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x2_0008);
        write32(&mut t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, 0x2_1001);
        write32(&mut t, VIRTIO_MMIO_QUEUE_USED_LOW, 0x2_2002);
        write32(&mut t, VIRTIO_MMIO_QUEUE_DESC_HIGH, 0);
        add_status(&mut t, VIRTIO_CONFIG_S_DRIVER_OK);
        let queues = &t.device().running.as_ref().unwrap().queues;
        assert_eq!(queues[1].desc_table(), 0);
        assert_eq!(queues[1].avail_ring(), 0);
        assert_eq!(queues[1].used_ring(), 0);
    }

    #[test]
    fn queue_registers_are_frozen_once_ready_and_after_driver_ok() {
        let (mut t, _) = transport(two_queue_device());
        linux_probe(&mut t, VERSION_1).unwrap();
        let [r0, r1] = rings();
        linux_setup_queue(&mut t, 0, r0).unwrap();
        // Ready: size and addresses stay.
        write32(&mut t, VIRTIO_MMIO_QUEUE_NUM, 16);
        write32(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x5_0000);
        // Linux refuses to set up a queue that reads back ready.
        assert_eq!(
            linux_setup_queue(&mut t, 0, r0),
            Err("queue 0 already in use".to_string())
        );
        linux_setup_queue(&mut t, 1, r1).unwrap();
        add_status(&mut t, VIRTIO_CONFIG_S_DRIVER_OK);
        // After DRIVER_OK nothing changes, not even taking a queue down.
        write32(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
        write32(&mut t, VIRTIO_MMIO_QUEUE_READY, 0);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_QUEUE_READY), 1);
        let queues = &t.device().running.as_ref().unwrap().queues;
        assert_eq!(queues[0].size(), r0.size);
        assert_eq!(queues[0].desc_table(), r0.desc);
    }

    #[test]
    fn a_queue_can_be_taken_down_before_driver_ok() {
        let (mut t, _) = transport(two_queue_device());
        linux_probe(&mut t, VERSION_1).unwrap();
        linux_setup_queue(&mut t, 0, Ring::at(0x1_0000, 16)).unwrap();
        write32(&mut t, VIRTIO_MMIO_QUEUE_READY, 0);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
        linux_setup_queue(&mut t, 0, Ring::at(0x3_0000, 32)).unwrap();
        add_status(&mut t, VIRTIO_CONFIG_S_DRIVER_OK);
        let queue = &t.device().running.as_ref().unwrap().queues[0];
        assert_eq!((queue.size(), queue.desc_table()), (32, 0x3_0000));
    }

    #[test]
    fn rings_outside_guest_memory_make_the_device_need_a_reset() {
        let (mut t, irq) = transport(two_queue_device());
        linux_probe(&mut t, VERSION_1).unwrap();
        linux_setup_queue(&mut t, 0, Ring::at(0xf_f000, 256)).unwrap();
        add_status(&mut t, VIRTIO_CONFIG_S_DRIVER_OK);
        assert!(!t.device().is_activated());
        assert_eq!(status(&mut t), STATUS_RUNNING | VIRTIO_CONFIG_S_NEEDS_RESET);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 2);
        assert_eq!(irq.count(), 1);
    }

    #[test]
    fn a_device_that_fails_to_start_needs_a_reset_and_recovers_after_one() {
        let mut device = two_queue_device();
        device.fail_activation = true;
        let (mut t, irq) = transport(device);
        let generation = read32(&mut t, VIRTIO_MMIO_CONFIG_GENERATION);
        linux_bring_up(&mut t, VERSION_1, &rings()).unwrap();
        assert_eq!(status(&mut t), STATUS_RUNNING | VIRTIO_CONFIG_S_NEEDS_RESET);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 2);
        assert_eq!(
            read32(&mut t, VIRTIO_MMIO_CONFIG_GENERATION),
            generation + 1
        );
        assert_eq!(irq.count(), 1);
        // Notifications reach nothing.
        write32(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        assert!(t.device().processed.is_empty());

        t.device_mut().fail_activation = false;
        linux_bring_up(&mut t, VERSION_1, &rings()).unwrap();
        assert_eq!(status(&mut t), STATUS_RUNNING);
        assert!(t.device().is_activated());
    }

    #[test]
    fn config_space_reads_and_writes_reach_the_device_at_every_width() {
        let (mut t, _) = transport(two_queue_device());
        let mut byte = [0u8; 1];
        t.read(0x105, &mut byte);
        assert_eq!(byte, [5]);
        let mut word = [0u8; 2];
        t.read(0x106, &mut word);
        assert_eq!(word, [6, 7]);
        let mut dword = [0u8; 4];
        t.read(0x108, &mut dword);
        assert_eq!(dword, [8, 9, 10, 11]);
        let mut qword = [0u8; 8];
        t.read(0x108, &mut qword);
        assert_eq!(qword, [8, 9, 10, 11, 12, 13, 14, 15]);

        t.write(0x100, &[0xaa]);
        t.write(0x102, &[0xbb, 0xcc]);
        t.write(0x104, &0xdead_beefu32.to_le_bytes());
        t.write(0x108, &u64::MAX.to_le_bytes());
        assert_eq!(
            t.device().config,
            [0xaa, 1, 0xbb, 0xcc, 0xef, 0xbe, 0xad, 0xde, 255, 255, 255, 255, 255, 255, 255, 255]
        );
        // The last byte of the window is config space too; past the device's config it
        // reads as zero.
        t.read(0xfff, &mut byte);
        assert_eq!(byte, [0]);
    }

    #[test]
    fn config_interrupts_bump_the_generation_and_are_acknowledged() {
        let (mut t, irq) = transport(two_queue_device());
        linux_bring_up(&mut t, VERSION_1, &rings()).unwrap();
        let before = read32(&mut t, VIRTIO_MMIO_CONFIG_GENERATION);
        t.device()
            .running
            .as_ref()
            .unwrap()
            .interrupt
            .trigger(InterruptKind::Config);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_CONFIG_GENERATION), before + 1);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 2);
        assert_eq!(irq.count(), 1);
        // What Linux's vm_interrupt() does: ack what it read.
        let pending = read32(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS);
        write32(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, pending);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
        // The transport's handle is the same interrupt.
        t.interrupt().trigger(InterruptKind::Config);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_CONFIG_GENERATION), before + 2);
    }

    #[test]
    fn used_buffers_raise_a_queue_interrupt_until_acknowledged() {
        let mem = guest_memory();
        let irq = Arc::new(CountingIrq::default());
        let mut t = MmioTransport::new(two_queue_device(), mem.clone(), irq.clone()).unwrap();
        let mut vq = MockSplitQueue::create(&mem, GuestAddress(0x4_0000), 16);
        let ring = Ring {
            size: 16,
            desc: vq.desc_table_addr().0,
            avail: vq.avail_addr().0,
            used: vq.used_addr().0,
        };
        linux_bring_up(&mut t, VERSION_1, &[Ring::at(0x1_0000, 16), ring]).unwrap();
        vq.add_chain(2).unwrap();
        vq.add_chain(1).unwrap();
        // Without ioeventfds the notification is an MMIO write.
        write32(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
        assert_eq!(t.device().processed, vec![1]);
        let used_idx: u16 = mem.read_obj(GuestAddress(vq.used_addr().0 + 2)).unwrap();
        assert_eq!(used_idx, 2);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 1);
        assert_eq!(irq.count(), 1);
        write32(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, 1);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    }

    #[test]
    fn notifications_before_driver_ok_wait_for_the_device_to_start() {
        let (mut t, _) = transport(two_queue_device());
        linux_probe(&mut t, VERSION_1).unwrap();
        // Before the queue is set up: dropped.
        t.notify_queue(0);
        linux_setup_queue(&mut t, 0, rings()[0]).unwrap();
        linux_setup_queue(&mut t, 1, rings()[1]).unwrap();
        // Set up but before DRIVER_OK (Linux's balloon does this with its stats queue):
        // the device does not see it yet...
        t.notify_queue(1);
        t.notify_queue(1);
        write32(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
        assert!(t.device().processed.is_empty());
        // ...but gets it, once, as soon as it runs.
        add_status(&mut t, VIRTIO_CONFIG_S_DRIVER_OK);
        assert_eq!(t.device().processed, vec![1]);
    }

    #[test]
    fn a_reset_forgets_early_notifications() {
        let (mut t, _) = transport(two_queue_device());
        linux_probe(&mut t, VERSION_1).unwrap();
        linux_setup_queue(&mut t, 0, rings()[0]).unwrap();
        t.notify_queue(0);
        linux_bring_up(&mut t, VERSION_1, &rings()).unwrap();
        assert!(t.device().processed.is_empty());
    }

    #[test]
    fn notifications_for_queues_that_do_not_exist_are_ignored() {
        let (mut t, _) = transport(two_queue_device());
        linux_bring_up(&mut t, VERSION_1, &rings()[..1]).unwrap();
        t.notify_queue(1);
        t.notify_queue(2);
        t.notify_queue(usize::MAX);
        write32(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 7);
        assert!(t.device().processed.is_empty());
        t.notify_queue(0);
        assert_eq!(t.device().processed, vec![0]);
    }

    #[test]
    fn reset_returns_to_the_initial_state_and_a_second_probe_works() {
        let (mut t, irq) = transport(two_queue_device());
        let pristine: Vec<u32> = (0..0x100).step_by(4).map(|o| read32(&mut t, o)).collect();

        linux_bring_up(&mut t, VERSION_1 | BIT0, &rings()).unwrap();
        t.interrupt().trigger(InterruptKind::Queue);
        write32(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
        write32(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        t.queue_events()[0].write(1).unwrap();
        let generation = read32(&mut t, VIRTIO_MMIO_CONFIG_GENERATION);
        let resets = t.device().resets;

        write32(&mut t, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(t.device().resets, resets + 1);
        assert!(!t.device().is_activated());
        assert_eq!(t.acked_features, 0);
        let after: Vec<u32> = (0..0x100).step_by(4).map(|o| read32(&mut t, o)).collect();
        let generation_index = (VIRTIO_MMIO_CONFIG_GENERATION / 4) as usize;
        for (i, (a, b)) in pristine.iter().zip(&after).enumerate() {
            if i != generation_index {
                assert_eq!(a, b, "register {:#x} after reset", i * 4);
            }
        }
        assert_eq!(after[generation_index], generation);
        for q in 0..2 {
            write32(&mut t, VIRTIO_MMIO_QUEUE_SEL, q);
            assert_eq!(read32(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
        }
        assert_eq!(
            t.queue_events()[0].read().unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );

        // Unbind and bind again, several times, with different choices each time.
        for round in 0..3u16 {
            let size = 16 << round;
            let acked = linux_bring_up(
                &mut t,
                VERSION_1,
                &[Ring::at(0x1_0000, size), Ring::at(0x2_0000, size)],
            )
            .unwrap();
            assert_eq!(acked, VERSION_1);
            let running = t.device().running.as_ref().unwrap();
            assert_eq!(running.acked_features, VERSION_1);
            assert_eq!(running.queues[1].size(), size);
            assert_eq!(running.queues[1].next_avail(), 0);
            write32(&mut t, VIRTIO_MMIO_STATUS, 0);
        }
        assert_eq!(t.device().activations, 4);
        assert_eq!(irq.count(), 1);
    }

    #[test]
    fn invalid_accesses_are_ignored() {
        let (mut t, _) = transport(two_queue_device());
        // Registers are 32-bit and aligned only.
        for len in [1usize, 2, 3, 8] {
            let mut data = vec![0xffu8; len];
            t.read(0, &mut data);
            assert!(data.iter().all(|&b| b == 0), "{len}-byte read");
            t.write(u64::from(VIRTIO_MMIO_STATUS), &vec![1u8; len]);
        }
        let mut data = [0xffu8; 4];
        t.read(2, &mut data);
        assert_eq!(data, [0; 4]);
        t.write(u64::from(VIRTIO_MMIO_STATUS) + 1, &[1, 0, 0, 0]);
        assert_eq!(status(&mut t), 0);

        // Read-only registers do not take writes; write-only ones read as 0.
        write32(&mut t, VIRTIO_MMIO_MAGIC_VALUE, 0);
        write32(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS, 3);
        write32(&mut t, 0x0f0, 1);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_MAGIC_VALUE), MMIO_MAGIC_VALUE);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY), 0);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_DRIVER_FEATURES), 0);
        assert_eq!(read32(&mut t, 0x0f8), 0);

        // Config space: 1, 2, 4 or 8 bytes inside the window.
        let before = t.device().config;
        t.write(0x100, &[9, 9, 9]);
        t.write(0x100, &[9; 16]);
        t.write(0xffe, &[9; 4]);
        t.write(0x1000, &[9]);
        t.write(u64::MAX, &[9]);
        assert_eq!(t.device().config, before);
        for (offset, len) in [
            (0x100, 3usize),
            (0x100, 16),
            (0xffe, 4),
            (0x1000, 1),
            (u64::MAX, 1),
        ] {
            let mut data = vec![0xffu8; len];
            t.read(offset, &mut data);
            assert!(
                data.iter().all(|&b| b == 0),
                "{len}-byte read at {offset:#x}"
            );
        }
        t.read(0x100, &mut []);
        t.write(0x100, &[]);

        // After all that the device still probes normally.
        linux_bring_up(&mut t, VERSION_1, &rings()).unwrap();
        assert!(t.device().is_activated());
    }

    #[test]
    fn shared_memory_regions_do_not_exist() {
        let (mut t, _) = transport(two_queue_device());
        for sel in [0, 1, 255] {
            write32(&mut t, VIRTIO_MMIO_SHM_SEL, sel);
            assert_eq!(read32(&mut t, VIRTIO_MMIO_SHM_LEN_LOW), u32::MAX);
            assert_eq!(read32(&mut t, VIRTIO_MMIO_SHM_LEN_HIGH), u32::MAX);
        }
    }

    #[test]
    fn failed_is_latched_and_only_a_reset_clears_it() {
        let (mut t, _) = transport(two_queue_device());
        add_status(&mut t, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        add_status(&mut t, VIRTIO_CONFIG_S_FAILED);
        add_status(&mut t, VIRTIO_CONFIG_S_DRIVER);
        assert_eq!(
            status(&mut t),
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_FAILED
        );
        write32(&mut t, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(status(&mut t), 0);
    }

    #[test]
    fn devices_the_transport_cannot_carry_are_refused() {
        let irq = Arc::new(CountingIrq::default());
        let legacy = MmioTransport::new(DummyDevice::new(BIT0, &[16]), guest_memory(), irq.clone());
        assert!(matches!(
            legacy,
            Err(MmioError::NotModern {
                device_type: DUMMY_DEVICE_TYPE
            })
        ));
        for max_size in [0u16, 3, 65535] {
            let bad = MmioTransport::new(
                DummyDevice::new(VERSION_1, &[16, max_size]),
                guest_memory(),
                irq.clone(),
            );
            match bad {
                Err(e @ MmioError::InvalidQueueMaxSize { index: 1, .. }) => {
                    assert!(e.to_string().contains(&max_size.to_string()))
                }
                _ => panic!("max size {max_size} accepted"),
            }
        }
    }
}
