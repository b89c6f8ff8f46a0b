//! Fakes shared by the device tests.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::devices::virtio::{InterruptKind, VirtioInterrupt};
use crate::devices::IrqLine;

/// The one interrupt fake: it counts what it is asked to raise, as a wire to the
/// interrupt controller ([`IrqLine`], every edge) and as a virtio device's interrupt
/// ([`VirtioInterrupt`], by kind). The two counts are kept apart: a test hands it to a
/// device as one or the other.
#[derive(Debug, Default)]
pub struct CountingInterrupt {
    signals: AtomicUsize,
    queue: AtomicUsize,
    config: AtomicUsize,
}

impl CountingInterrupt {
    /// Edges raised on the line.
    pub fn signals(&self) -> usize {
        self.signals.load(Ordering::SeqCst)
    }

    /// Used-buffer interrupts triggered.
    pub fn queue(&self) -> usize {
        self.queue.load(Ordering::SeqCst)
    }

    /// Configuration-change interrupts triggered.
    pub fn config(&self) -> usize {
        self.config.load(Ordering::SeqCst)
    }
}

impl IrqLine for CountingInterrupt {
    fn signal(&self) -> io::Result<()> {
        self.signals.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl VirtioInterrupt for CountingInterrupt {
    fn trigger(&self, kind: InterruptKind) {
        let counter = match kind {
            InterruptKind::Queue => &self.queue,
            InterruptKind::Config => &self.config,
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }
}
