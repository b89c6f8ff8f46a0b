//! The notification path of one virtio-mmio device: the queue eventfds, whether a
//! notification may reach the device yet, and the ones that came before it could.
//!
//! The transport and the event loop share it. It has its own small lock, the *gate*, so a
//! notification never waits for the transport's register lock (a vCPU's MMIO exit). The
//! gate is taken before the device's lock and never after it: this type holds the device,
//! the device holds nothing of this type, so no code can reach the gate while it holds
//! the device. The full lock order is in docs/architecture.md.

use std::io;
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::MmioError;
use crate::devices::virtio::{ActivateError, Activation, VirtioDevice};
use crate::sync::lock;
use crate::warn_once;

/// A device's queue notifications: what the transport tells it about the driver's
/// progress, and the eventfds KVM signals when the driver writes `QueueNotify`.
pub struct QueueNotifications<D> {
    device: Arc<Mutex<D>>,
    queue_events: Vec<EventFd>,
    gate: Mutex<Gate>,
}

/// What a notification needs to know to be delivered, dropped or kept for later.
struct Gate {
    /// Queues the driver has set up (`QueueReady` = 1). The transport's queue registers
    /// are the source; this copy spares a notification the register lock.
    ready: Vec<bool>,
    /// The driver set DRIVER_OK: notifications go to the device if it started.
    driver_ok: bool,
    /// Set-up queues notified before DRIVER_OK. Linux's balloon driver primes its
    /// statistics queue and kicks it that early, and refills it only when the device
    /// returns the buffer; the device sees each such kick as soon as it starts.
    early: Vec<bool>,
}

impl<D: VirtioDevice> QueueNotifications<D> {
    pub(super) fn new(device: Arc<Mutex<D>>, queue_count: usize) -> Result<Self, MmioError> {
        let queue_events = (0..queue_count)
            .map(|index| {
                EventFd::new(EFD_NONBLOCK).map_err(|source| MmioError::QueueEvent { index, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(QueueNotifications {
            device,
            queue_events,
            gate: Mutex::new(Gate {
                ready: vec![false; queue_count],
                driver_ok: false,
                early: vec![false; queue_count],
            }),
        })
    }

    /// The device, behind its own lock.
    pub fn device(&self) -> &Arc<Mutex<D>> {
        &self.device
    }

    /// One eventfd per queue, in queue order (see
    /// [`MmioTransport::queue_events`](super::MmioTransport::queue_events)).
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    /// The eventfd of queue `index` is readable: consume it and deliver the notification.
    /// The read happens under the gate, as does a reset's drain, so a kick from before a
    /// reset is either delivered before the reset or dropped by it.
    pub fn deliver_queue_event(&self, index: usize) -> io::Result<()> {
        let event = self
            .queue_events
            .get(index)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let mut gate = lock(&self.gate);
        match event.read() {
            Ok(_) => {
                self.deliver(&mut gate, index);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The driver notified queue `index`: the device processes it if it runs.
    pub(super) fn notify(&self, index: usize) {
        self.deliver(&mut lock(&self.gate), index);
    }

    fn deliver(&self, gate: &mut Gate, index: usize) {
        let Some(&ready) = gate.ready.get(index) else {
            warn_once!("virtio-mmio: notification for queue {index}, which the device does not have; ignored");
            return;
        };
        if !ready {
            warn_once!(
                "virtio-mmio: notification for queue {index} before the driver set it up; ignored"
            );
            return;
        }
        if !gate.driver_ok {
            gate.early[index] = true;
            return;
        }
        let mut device = lock(&self.device);
        if !device.is_activated() {
            warn_once!("virtio-mmio: notification for queue {index} of a device that is not running; ignored");
            return;
        }
        device.process_queue(index);
    }

    /// The driver set or cleared `QueueReady` of queue `index` (before DRIVER_OK). Taking
    /// a queue down forgets a notification it had before.
    pub(super) fn set_queue_ready(&self, index: usize, ready: bool) {
        let mut gate = lock(&self.gate);
        if let Some(slot) = gate.ready.get_mut(index) {
            *slot = ready;
            gate.early[index] &= ready;
        }
    }

    /// DRIVER_OK with rings the transport accepted: the device starts, then processes
    /// every queue notified before. Under the gate, so a notification racing with this
    /// is either kept for the replay or delivered after it, never lost.
    pub(super) fn start(&self, activation: Activation) -> Result<(), ActivateError> {
        let mut gate = lock(&self.gate);
        gate.driver_ok = true;
        let early = std::mem::replace(&mut gate.early, vec![false; self.queue_events.len()]);
        let mut device = lock(&self.device);
        device.activate(activation)?;
        for (index, _) in early.iter().enumerate().filter(|(_, &notified)| notified) {
            device.process_queue(index);
        }
        Ok(())
    }

    /// DRIVER_OK with rings the transport refused: the device stays stopped and every
    /// notification is dropped until a reset.
    pub(super) fn start_refused(&self) {
        let mut gate = lock(&self.gate);
        gate.driver_ok = true;
        gate.early.fill(false);
    }

    /// A device reset: the device stops, and no kick from before reaches the next run.
    pub(super) fn reset(&self) {
        let mut gate = lock(&self.gate);
        lock(&self.device).reset();
        for event in &self.queue_events {
            // An empty eventfd answers WouldBlock, which is what we want.
            let _ = event.read();
        }
        gate.ready.fill(false);
        gate.driver_ok = false;
        gate.early.fill(false);
    }
}
