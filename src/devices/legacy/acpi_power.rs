//! The hardware-reduced ACPI sleep control and status registers (FADT `SLEEP_CONTROL_REG`
//! and `SLEEP_STATUS_REG`, ACPI 6.5 §4.8.3.7-8). Linux powers off by writing `SLP_TYP`
//! (the `\_S5_` value from the DSDT) and `SLP_EN` to the control register.
//!
//! The register format and the `SLP_TYP` value that means S5 are defined here, with the
//! device that decodes them; the ACPI tables that announce the registers and `\_S5_`
//! import them from here, so the two cannot drift apart.

use std::sync::Arc;

use super::{PowerEvent, PowerEventHandler};
use crate::devices::bus::BusDevice;

// The registers as ACPICA's `acpi_hw_extended_sleep` uses them: it writes WAK_STS to the
// status register, then `(SLP_TYP << 2) & 0x1c | SLP_EN` to the control register.
/// `SLP_EN` in the sleep control register: enter the state in `SLP_TYP`.
pub const SLEEP_CONTROL_SLP_EN: u8 = 1 << 5;
/// `SLP_TYP` occupies bits 2-4 of the sleep control register.
pub const SLEEP_CONTROL_SLP_TYP_SHIFT: u8 = 2;
pub const SLEEP_CONTROL_SLP_TYP_MASK: u8 = 0b111 << SLEEP_CONTROL_SLP_TYP_SHIFT;
/// `WAK_STS` in the sleep status register; the guest writes it (write-1-to-clear) before
/// it sleeps. Reading the status register as 0 is correct for a machine that never wakes.
pub const SLEEP_STATUS_WAK_STS: u8 = 1 << 7;

/// The `SLP_TYP` value of S5 (soft off): the DSDT's `\_S5_` package announces it, and the
/// guest writes it with `SLP_EN` to power off.
pub const S5_SLEEP_TYPE: u8 = 5;

const _: () = assert!(
    S5_SLEEP_TYPE <= SLEEP_CONTROL_SLP_TYP_MASK >> SLEEP_CONTROL_SLP_TYP_SHIFT,
    "the S5 sleep type must fit in the 3-bit SLP_TYP field"
);

/// A sleep state the guest asked for through the sleep control register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SleepState {
    /// S5, soft off: the guest has shut down and the VM should stop.
    SoftOff,
}

/// The byte a guest writes to the sleep control register to enter the sleep state whose
/// `\_Sx` package announces `slp_typ`.
pub const fn sleep_control_value(slp_typ: u8) -> u8 {
    ((slp_typ << SLEEP_CONTROL_SLP_TYP_SHIFT) & SLEEP_CONTROL_SLP_TYP_MASK) | SLEEP_CONTROL_SLP_EN
}

/// What a write of `value` to the sleep control register asks for: `Some` only if
/// `SLP_EN` is set and `SLP_TYP` is a state the DSDT announces. Reserved bits are
/// ignored, as the specification asks.
pub fn decode_sleep_control(value: u8) -> Option<SleepState> {
    if value & SLEEP_CONTROL_SLP_EN == 0 {
        return None;
    }
    let slp_typ = (value & SLEEP_CONTROL_SLP_TYP_MASK) >> SLEEP_CONTROL_SLP_TYP_SHIFT;
    (slp_typ == S5_SLEEP_TYPE).then_some(SleepState::SoftOff)
}

/// Both registers, one byte each: offset 0 is control, offset 1 status.
pub struct AcpiPowerDevice {
    handler: Arc<dyn PowerEventHandler>,
}

impl AcpiPowerDevice {
    pub fn new(handler: Arc<dyn PowerEventHandler>) -> Self {
        AcpiPowerDevice { handler }
    }
}

impl BusDevice for AcpiPowerDevice {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Nothing ever sleeps and wakes: both registers read 0 (WAK_STS clear).
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // Writes to the status register (WAK_STS, write-1-to-clear) need no action.
        if offset != 0 {
            return;
        }
        if let Some(&value) = data.first() {
            if decode_sleep_control(value) == Some(SleepState::SoftOff) {
                self.handler.power_event(PowerEvent::PowerOff);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<PowerEvent>>);
    impl PowerEventHandler for Recorder {
        fn power_event(&self, event: PowerEvent) {
            self.0.lock().unwrap().push(event);
        }
    }

    #[test]
    fn s5_with_sleep_enable_powers_off() {
        let recorder = Arc::new(Recorder::default());
        let mut dev = AcpiPowerDevice::new(recorder.clone());
        // What Linux writes for poweroff: (5 << 2) | SLP_EN = 0x34.
        assert_eq!(sleep_control_value(S5_SLEEP_TYPE), 0x34);
        dev.write(0, &[0x34]);
        assert_eq!(*recorder.0.lock().unwrap(), vec![PowerEvent::PowerOff]);
    }

    #[test]
    fn other_sleep_states_and_registers_do_nothing() {
        let recorder = Arc::new(Recorder::default());
        let mut dev = AcpiPowerDevice::new(recorder.clone());
        dev.write(0, &[S5_SLEEP_TYPE << 2]); // SLP_EN clear
        dev.write(0, &[(3 << 2) | SLEEP_CONTROL_SLP_EN]); // S3
        dev.write(1, &[0x80]); // WAK_STS, written just before power-off
        dev.write(0, &[]);
        assert!(recorder.0.lock().unwrap().is_empty());
        let mut data = [0xffu8; 1];
        dev.read(1, &mut data);
        assert_eq!(data, [0]);
    }

    #[test]
    fn sleep_control_decoding() {
        let s5 = sleep_control_value(S5_SLEEP_TYPE);
        assert_eq!(s5, (S5_SLEEP_TYPE << 2) | 0x20);
        assert_eq!(decode_sleep_control(s5), Some(SleepState::SoftOff));
        // Reserved bits 0-1 and 6-7 are ignored.
        assert_eq!(decode_sleep_control(s5 | 0xc3), Some(SleepState::SoftOff));
        // SLP_TYP without SLP_EN does nothing.
        assert_eq!(decode_sleep_control(s5 & !SLEEP_CONTROL_SLP_EN), None);
        // The WAK_STS clear that precedes the sleep (written to the status register, but
        // harmless here too) and sleep types the DSDT does not announce are not S5.
        assert_eq!(decode_sleep_control(SLEEP_STATUS_WAK_STS), None);
        for typ in (0..8).filter(|&t| t != S5_SLEEP_TYPE) {
            assert_eq!(
                decode_sleep_control(sleep_control_value(typ)),
                None,
                "type {typ}"
            );
        }
    }
}
