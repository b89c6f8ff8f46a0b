//! The hardware-reduced ACPI sleep control and status registers (FADT `SLEEP_CONTROL_REG`
//! and `SLEEP_STATUS_REG`). Linux powers off by writing `SLP_TYP` (the `\_S5_` value from
//! the DSDT) and `SLP_EN` to the control register.

use std::sync::Arc;

use super::{PowerEvent, PowerEventHandler};
use crate::devices::bus::BusDevice;

/// `SLP_EN`: bit 5 of the sleep control register.
pub const SLEEP_ENABLE: u8 = 1 << 5;
/// `SLP_TYP` occupies bits 2..=4 of the sleep control register.
pub const SLEEP_TYPE_SHIFT: u8 = 2;
pub const SLEEP_TYPE_MASK: u8 = 0b111 << SLEEP_TYPE_SHIFT;

/// The sleep type a control-register write asks for, if it sets `SLP_EN`.
pub fn decode_sleep_control(value: u8) -> Option<u8> {
    (value & SLEEP_ENABLE != 0).then_some((value & SLEEP_TYPE_MASK) >> SLEEP_TYPE_SHIFT)
}

/// Both registers, one byte each: offset 0 is control, offset 1 status.
pub struct AcpiPowerDevice {
    s5_sleep_type: u8,
    handler: Arc<dyn PowerEventHandler>,
}

impl AcpiPowerDevice {
    /// `s5_sleep_type` is the `SLP_TYP` the DSDT's `\_S5_` package announces.
    pub fn new(s5_sleep_type: u8, handler: Arc<dyn PowerEventHandler>) -> Self {
        AcpiPowerDevice {
            s5_sleep_type,
            handler,
        }
    }
}

impl BusDevice for AcpiPowerDevice {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Nothing ever sleeps and wakes: status reads 0, control reads 0.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 {
            return;
        }
        if let Some(&value) = data.first() {
            if decode_sleep_control(value) == Some(self.s5_sleep_type) {
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
        let mut dev = AcpiPowerDevice::new(5, recorder.clone());
        // What Linux writes: (SLP_TYP << 2) | SLP_EN.
        dev.write(0, &[(5 << 2) | SLEEP_ENABLE]);
        assert_eq!(*recorder.0.lock().unwrap(), vec![PowerEvent::PowerOff]);
    }

    #[test]
    fn other_sleep_states_and_registers_do_nothing() {
        let recorder = Arc::new(Recorder::default());
        let mut dev = AcpiPowerDevice::new(5, recorder.clone());
        dev.write(0, &[5 << 2]); // SLP_EN clear
        dev.write(0, &[(3 << 2) | SLEEP_ENABLE]); // S3
        dev.write(1, &[0xff]); // status register
        dev.write(0, &[]);
        assert!(recorder.0.lock().unwrap().is_empty());
        let mut data = [0xffu8; 1];
        dev.read(1, &mut data);
        assert_eq!(data, [0]);
        assert_eq!(decode_sleep_control(0x34), Some(5));
        assert_eq!(decode_sleep_control(0x14), None);
    }
}
