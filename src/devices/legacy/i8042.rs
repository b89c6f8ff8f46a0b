//! The i8042 keyboard controller, kept for one thing: Linux with `reboot=k` resets the
//! machine by writing 0xFE to its command port. The keyboard itself is not emulated; with
//! ACPI and no PS/2 device in the DSDT, Linux does not probe it.

use std::sync::Arc;

use vm_superio::{I8042Device, Trigger};

use super::{PowerEvent, PowerEventHandler};
use crate::devices::bus::BusDevice;

/// Turns the i8042's reset line into a [`PowerEvent::Reset`].
pub struct ResetLine(Arc<dyn PowerEventHandler>);

impl Trigger for ResetLine {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.power_event(PowerEvent::Reset);
        Ok(())
    }
}

/// The i8042 on ports 0x60 (data, offset 0) and 0x64 (command/status, offset 4).
pub struct I8042(I8042Device<ResetLine>);

impl I8042 {
    pub fn new(handler: Arc<dyn PowerEventHandler>) -> Self {
        I8042(I8042Device::new(ResetLine(handler)))
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = self.0.read(offset as u8);
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(&value) = data.first() {
            let Ok(()) = self.0.write(offset as u8, value);
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
    fn reset_command_resets_the_machine() {
        let recorder = Arc::new(Recorder::default());
        let mut dev = I8042::new(recorder.clone());
        let mut status = [0xffu8];
        dev.read(4, &mut status);
        assert_eq!(
            status[0] & 0x02,
            0,
            "input buffer empty, so Linux may write"
        );
        dev.write(4, &[0x20]);
        assert!(recorder.0.lock().unwrap().is_empty());
        dev.write(4, &[0xfe]);
        assert_eq!(*recorder.0.lock().unwrap(), vec![PowerEvent::Reset]);
    }
}
