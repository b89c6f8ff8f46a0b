//! Emulated devices. None of them touches KVM: they see guest memory, a bus offset and
//! an [`IrqLine`], so each is tested without a VM.
//!
//! - [`bus`]: the port-I/O and MMIO buses a vCPU exit is dispatched on.
//! - [`legacy`]: the 8250 serial console, the i8042 (for reset), the ACPI power register
//!   and the legacy ports Linux probes that we answer with nothing.
//! - [`virtio`]: the virtio-mmio transport and the balloon.
//!
//! Their tests share one interrupt fake, `test_support::CountingInterrupt`.

pub mod bus;
pub mod legacy;
pub mod virtio;

#[cfg(test)]
pub(crate) mod test_support;

use std::io;

use vmm_sys_util::eventfd::EventFd;

/// A wire to the guest's interrupt controller. With KVM it is an `EventFd` registered as an
/// irqfd on a GSI; in tests it counts.
pub trait IrqLine: Send + Sync {
    /// Raises the interrupt (an edge on the GSI).
    fn signal(&self) -> io::Result<()>;
}

impl IrqLine for EventFd {
    fn signal(&self) -> io::Result<()> {
        self.write(1)
    }
}
