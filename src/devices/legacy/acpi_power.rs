//! The hardware-reduced ACPI sleep control and status registers (FADT `SLEEP_CONTROL_REG`
//! and `SLEEP_STATUS_REG`). Linux powers off by writing `SLP_TYP` (the `\_S5_` value from
//! the DSDT) and `SLP_EN` to the control register; the encoding lives with the tables
//! that announce it, in [`crate::arch::x86_64::acpi`].

use std::sync::Arc;

use super::{PowerEvent, PowerEventHandler};
use crate::arch::x86_64::acpi::{decode_sleep_control, SleepState};
use crate::devices::bus::BusDevice;

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
    use crate::arch::x86_64::acpi::{sleep_control_value, SLEEP_CONTROL_SLP_EN};
    use crate::arch::x86_64::layout::ACPI_S5_SLEEP_TYPE;
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
        assert_eq!(sleep_control_value(ACPI_S5_SLEEP_TYPE), 0x34);
        dev.write(0, &[0x34]);
        assert_eq!(*recorder.0.lock().unwrap(), vec![PowerEvent::PowerOff]);
    }

    #[test]
    fn other_sleep_states_and_registers_do_nothing() {
        let recorder = Arc::new(Recorder::default());
        let mut dev = AcpiPowerDevice::new(recorder.clone());
        dev.write(0, &[ACPI_S5_SLEEP_TYPE << 2]); // SLP_EN clear
        dev.write(0, &[(3 << 2) | SLEEP_CONTROL_SLP_EN]); // S3
        dev.write(1, &[0x80]); // WAK_STS, written just before power-off
        dev.write(0, &[]);
        assert!(recorder.0.lock().unwrap().is_empty());
        let mut data = [0xffu8; 1];
        dev.read(1, &mut data);
        assert_eq!(data, [0]);
    }
}
