//! Legacy PC devices: the 8250 serial console on COM1, the i8042 with its keyboard (reset
//! line, Ctrl+Alt+Del), the hardware-reduced ACPI sleep control register that powers the VM
//! off, and the pvpanic port through which the guest reports a kernel panic.
//!
//! Every other legacy port a Linux guest probes (POST code 0x80, CMOS, PCI config, the
//! other COM ports, VGA…) has no device: the vCPU loop answers reads with all ones and
//! drops writes without locking or logging, which is what an empty ISA bus does.

pub mod acpi_power;
pub mod i8042;
pub mod pvpanic;
pub mod serial;

/// What the guest asked the machine to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerEvent {
    /// ACPI S5: the guest powered off.
    PowerOff,
    /// The guest reset the machine (i8042 reset line).
    Reset,
}

/// Receives power events from devices; the VMM stops the VM on either.
pub trait PowerEventHandler: Send + Sync {
    fn power_event(&self, event: PowerEvent);
}

/// What the guest's kernel reported through pvpanic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PanicEvent {
    /// The kernel panicked.
    Panicked,
    /// The kernel panicked and is handing over to its crash kernel (kdump).
    CrashLoaded,
}

/// Receives the pvpanic device's events.
pub trait PanicEventHandler: Send + Sync {
    fn panic_event(&self, event: PanicEvent);
}
