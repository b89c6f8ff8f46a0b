//! Virtio: the device model shared by every virtio device, the virtio-mmio transport
//! that carries it, and the devices themselves.
//!
//! A device implements [`VirtioDevice`]: it declares its type, features, queues and
//! config space, and processes its queues once the driver has set them up. The transport
//! ([`mmio::MmioTransport`]) does everything else: registers, feature negotiation, status,
//! queue set-up and the checks of the rings against guest memory, notifications that
//! come before the device runs, interrupts and reset. [`event_handler`] connects the queue
//! notifications (ioeventfds) and a device's own timers to the event loop.
//!
//! A device is shared as itself, an `Arc<Mutex<D>>`: the transport, the event loop and
//! whoever else drives it (the API, for the balloon) each hold it and take its lock.

pub mod balloon;
pub mod event_handler;
pub mod interrupt;
pub mod mmio;

#[cfg(test)]
pub(crate) mod test_device;

use std::os::unix::io::RawFd;
use std::sync::Arc;

use virtio_queue::Queue;

use crate::memory::GuestMemoryMmap;

/// `VIRTIO_F_VERSION_1`: the device follows virtio 1.x (modern). Required by our transport.
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// Device ID of the traditional memory balloon.
pub const VIRTIO_ID_BALLOON: u32 = 5;

/// What an interrupt announces; the values are the bits of the virtio-mmio
/// `InterruptStatus` register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum InterruptKind {
    /// The device used buffers in a queue.
    Queue = 1,
    /// The device's configuration space changed.
    Config = 2,
}

/// How a device interrupts the driver. The transport implements it: it records the reason
/// in `InterruptStatus` (and bumps `ConfigGeneration` for config changes) before raising
/// the device's interrupt line.
pub trait VirtioInterrupt: Send + Sync {
    fn trigger(&self, kind: InterruptKind);
}

/// Everything a device needs to run, handed over when the driver sets DRIVER_OK.
pub struct Activation {
    /// Guest RAM.
    pub mem: GuestMemoryMmap,
    /// The device's queues, in index order, as the driver configured them. A queue the
    /// driver did not enable is present but not ready (`Queue::ready()` is false); the
    /// rings of every ready queue lie in guest RAM (the transport checked them).
    pub queues: Vec<Queue>,
    /// The features the driver accepted (a subset of [`VirtioDevice::device_features`]).
    pub acked_features: u64,
    /// The device's interrupt.
    pub interrupt: Arc<dyn VirtioInterrupt>,
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("queue {index} ({name}) is not set up; the driver must enable it before DRIVER_OK")]
    QueueNotReady { index: usize, name: &'static str },
    #[error("queue {index} ({name}) has {size} entries; this device needs at least {min}")]
    QueueTooSmall {
        index: usize,
        name: &'static str,
        size: u16,
        min: u16,
    },
    #[error("device could not start: {0}")]
    Other(String),
}

/// A virtio device, independent of its transport.
pub trait VirtioDevice: Send {
    /// The virtio device ID (5 for the balloon).
    fn device_type(&self) -> u32;

    /// The features the device offers, including `VIRTIO_F_VERSION_1`.
    fn device_features(&self) -> u64;

    /// Maximum size of each queue; the length of the slice is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// Reads the device configuration space at `offset`. Bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes the device configuration space at `offset`. The device ignores fields the
    /// driver may not write.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// Starts the device. It checks what is particular to it (which queues it needs, their
    /// sizes); the transport has checked the rings and, right after this returns `Ok`,
    /// delivers the notifications the driver sent before DRIVER_OK. On error the transport
    /// sets DEVICE_NEEDS_RESET.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;

    /// Whether [`activate`](Self::activate) succeeded and no reset happened since.
    fn is_activated(&self) -> bool;

    /// Called when the driver notifies queue `index`. The transport calls it only once the
    /// device is activated.
    fn process_queue(&mut self, index: usize);

    /// Returns the device to its state before activation: queues, memory and interrupt
    /// are dropped; user-set state (such as the balloon's target) is kept.
    fn reset(&mut self);

    /// Extra file descriptors the event loop watches for this device (timers).
    fn event_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }

    /// Called when one of [`event_fds`](Self::event_fds) is readable.
    fn process_event_fd(&mut self, _fd: RawFd) {}
}
