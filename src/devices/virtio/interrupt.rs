//! The interrupt of a virtio-mmio device: the `InterruptStatus` and `ConfigGeneration`
//! registers and the line to the guest's interrupt controller.
//!
//! It is shared between the transport (which reads and acknowledges it on MMIO exits) and
//! the device (which triggers it from whichever thread processes its queues), hence
//! atomics rather than the transport's lock.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::devices::virtio::{InterruptKind, VirtioInterrupt};
use crate::devices::IrqLine;

pub struct MmioInterrupt {
    status: AtomicU32,
    config_generation: AtomicU32,
    irq: Arc<dyn IrqLine>,
}

impl MmioInterrupt {
    pub fn new(irq: Arc<dyn IrqLine>) -> Self {
        MmioInterrupt {
            status: AtomicU32::new(0),
            config_generation: AtomicU32::new(0),
            irq,
        }
    }

    /// The `InterruptStatus` register: a bit per [`InterruptKind`] not yet acknowledged.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// `InterruptACK`: clears the bits set in `bits`.
    pub fn acknowledge(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The `ConfigGeneration` register.
    pub fn config_generation(&self) -> u32 {
        self.config_generation.load(Ordering::SeqCst)
    }

    /// Forgets every pending reason, as a device reset does. The generation keeps
    /// counting: it only has to differ between two reads around a change.
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }
}

impl VirtioInterrupt for MmioInterrupt {
    fn trigger(&self, kind: InterruptKind) {
        // The generation moves before the status bit is visible, so a driver that sees the
        // config interrupt and then reads the generation always sees the new one.
        if kind == InterruptKind::Config {
            self.config_generation.fetch_add(1, Ordering::SeqCst);
        }
        self.status.fetch_or(kind as u32, Ordering::SeqCst);
        if let Err(e) = self.irq.signal() {
            crate::warn_once!("cannot raise a virtio device's interrupt: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::test_support::CountingInterrupt;

    #[test]
    fn trigger_sets_the_reason_and_signals_the_line() {
        let irq = Arc::new(CountingInterrupt::default());
        let interrupt = MmioInterrupt::new(irq.clone());

        interrupt.trigger(InterruptKind::Queue);
        assert_eq!(interrupt.status(), 1);
        assert_eq!(interrupt.config_generation(), 0);
        assert_eq!(irq.signals(), 1);

        interrupt.trigger(InterruptKind::Config);
        assert_eq!(interrupt.status(), 3);
        assert_eq!(interrupt.config_generation(), 1);
        assert_eq!(irq.signals(), 2);

        interrupt.acknowledge(1);
        assert_eq!(interrupt.status(), 2);
        interrupt.acknowledge(2);
        assert_eq!(interrupt.status(), 0);
    }

    #[test]
    fn clear_keeps_the_generation() {
        let interrupt = MmioInterrupt::new(Arc::new(CountingInterrupt::default()));
        interrupt.trigger(InterruptKind::Config);
        interrupt.clear();
        assert_eq!(interrupt.status(), 0);
        assert_eq!(interrupt.config_generation(), 1);
    }

    #[test]
    fn a_failing_line_is_not_fatal() {
        struct BrokenIrq;
        impl IrqLine for BrokenIrq {
            fn signal(&self) -> std::io::Result<()> {
                Err(std::io::Error::from_raw_os_error(libc::EBADF))
            }
        }
        let interrupt = MmioInterrupt::new(Arc::new(BrokenIrq));
        interrupt.trigger(InterruptKind::Queue);
        interrupt.trigger(InterruptKind::Queue);
        assert_eq!(interrupt.status(), 1);
    }
}
