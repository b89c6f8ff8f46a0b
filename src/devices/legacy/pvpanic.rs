//! pvpanic: the guest's kernel tells the host that it panicked, through one I/O port
//! (0x505). The device is QEMU's; Linux's `pvpanic-mmio` driver binds it through ACPI
//! (`_HID "QEMU0001"` with an `IO` resource in the DSDT) and writes one event from its
//! panic notifier, which runs before a `panic=N` reboot.
//!
//! A read returns the events the device supports; the driver sends only those. A write
//! sends an event:
//!
//! - `PANICKED` (bit 0): the kernel panicked → [`PanicEvent::Panicked`].
//! - `CRASH_LOADED` (bit 1): the kernel panicked with a crash kernel loaded (kdump), which
//!   it is about to boot to save a dump → [`PanicEvent::CrashLoaded`]. Newer Linux sends
//!   it only with `crash_kexec_post_notifiers`.
//!
//! Other bits (newer events such as a shutdown notice, which this device does not offer)
//! are ignored.

use std::sync::Arc;

use super::{PanicEvent, PanicEventHandler};
use crate::devices::bus::BusDevice;

/// The event bits of the pvpanic protocol.
pub const PANICKED: u8 = 1 << 0;
pub const CRASH_LOADED: u8 = 1 << 1;
/// What a read of the port answers: the events this device understands.
pub const SUPPORTED_EVENTS: u8 = PANICKED | CRASH_LOADED;

/// The pvpanic port, one byte.
pub struct PvPanic {
    handler: Arc<dyn PanicEventHandler>,
}

impl PvPanic {
    pub fn new(handler: Arc<dyn PanicEventHandler>) -> Self {
        PvPanic { handler }
    }
}

/// What a byte written to the port reports; a panic outranks a crash kernel.
pub fn decode_event(value: u8) -> Option<PanicEvent> {
    if value & PANICKED != 0 {
        Some(PanicEvent::Panicked)
    } else if value & CRASH_LOADED != 0 {
        Some(PanicEvent::CrashLoaded)
    } else {
        None
    }
}

impl BusDevice for PvPanic {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = SUPPORTED_EVENTS;
        }
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let Some(event) = data.first().copied().and_then(decode_event) {
            self.handler.panic_event(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<PanicEvent>>);
    impl PanicEventHandler for Recorder {
        fn panic_event(&self, event: PanicEvent) {
            self.0.lock().unwrap().push(event);
        }
    }

    #[test]
    fn the_guest_reads_the_events_it_may_send() {
        let mut dev = PvPanic::new(Arc::new(Recorder::default()));
        let mut data = [0xffu8; 4];
        dev.read(0, &mut data);
        assert_eq!(data, [0x03, 0, 0, 0]);
    }

    #[test]
    fn each_event_is_reported_and_other_bits_are_ignored() {
        let recorder = Arc::new(Recorder::default());
        let mut dev = PvPanic::new(recorder.clone());
        dev.write(0, &[PANICKED]);
        dev.write(0, &[CRASH_LOADED]);
        dev.write(0, &[PANICKED | CRASH_LOADED]);
        // A shutdown notice (bit 2) and unknown bits; an empty access.
        dev.write(0, &[0x04]);
        dev.write(0, &[0xf8]);
        dev.write(0, &[0]);
        dev.write(0, &[]);
        assert_eq!(
            *recorder.0.lock().unwrap(),
            vec![
                PanicEvent::Panicked,
                PanicEvent::CrashLoaded,
                PanicEvent::Panicked
            ]
        );
    }

    #[test]
    fn every_byte_decodes_without_panicking() {
        for value in 0..=u8::MAX {
            let expected = match value & SUPPORTED_EVENTS {
                0 => None,
                bits if bits & PANICKED != 0 => Some(PanicEvent::Panicked),
                _ => Some(PanicEvent::CrashLoaded),
            };
            assert_eq!(decode_event(value), expected, "{value:#x}");
        }
    }
}
