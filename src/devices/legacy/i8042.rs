//! The i8042 PS/2 controller with an AT keyboard behind it: what Linux's `i8042` and
//! `atkbd` drivers use, the CPU reset line, and key sequences the VMM types
//! ([`I8042::send_ctrl_alt_del`]).
//!
//! - Ports: data at 0x60 (offset 0), status (read) and command (write) at 0x64 (offset 4).
//! - The controller: its command byte (interrupt enable, interface disable, translation),
//!   self-tests, the output port, and the reset line: command 0xFE (Linux's `reboot=k`, and
//!   the FADT reset register) or the output port's bit 0 cleared stops the VM as a reset.
//! - The keyboard ([`keyboard`]): reset, identify, LEDs, typematic rate, scan code set,
//!   enable and disable, each acknowledged as a real one does.
//! - No mouse (AUX) port: the DSDT describes the keyboard only, and the kernel command line
//!   says `i8042.noaux`, so Linux does not look for one. AUX commands are ignored.
//!
//! The output buffer holds one byte; the status register's OBF bit says it is full.
//! Controller answers go first, then the keyboard's bytes, and each byte that fills the
//! buffer raises the keyboard interrupt (IRQ 1) if the command byte enables it. Linux's
//! handler reads one byte per interrupt. Everything a guest can make the device queue is
//! bounded, so no sequence of port accesses grows it without limit.

use std::collections::VecDeque;
use std::sync::Arc;

use super::{PowerEvent, PowerEventHandler};
use crate::devices::bus::BusDevice;
use crate::devices::IrqLine;

pub mod keyboard;

use keyboard::Keyboard;
pub use keyboard::KeyboardError;

/// Offset of the data port (0x60).
pub const DATA_OFFSET: u64 = 0;
/// Offset of the status (read) and command (write) port (0x64).
pub const COMMAND_OFFSET: u64 = 4;

// Status register bits.
const STATUS_OUTPUT_FULL: u8 = 1 << 0;
/// Set by the self-test; mirrors the command byte's system flag.
const STATUS_SYSTEM: u8 = 1 << 2;
/// The last write was to the command port.
const STATUS_LAST_WAS_COMMAND: u8 = 1 << 3;
/// The keyboard is not inhibited by a key lock. Linux warns "Keylock active" without it.
const STATUS_UNLOCKED: u8 = 1 << 4;

// Command byte bits.
const CTR_KEYBOARD_INTERRUPT: u8 = 1 << 0;
const CTR_SYSTEM: u8 = 1 << 2;
const CTR_KEYBOARD_DISABLED: u8 = 1 << 4;
const CTR_AUX_DISABLED: u8 = 1 << 5;
/// The controller translates the keyboard's scan code set 2 into set 1.
pub const CTR_TRANSLATE: u8 = 1 << 6;
/// What the firmware of a PC leaves: keyboard interrupt on, self-test passed, no AUX port,
/// translation on (Linux then reports an "AT Translated Set 2 keyboard").
const CTR_AT_BOOT: u8 = CTR_KEYBOARD_INTERRUPT | CTR_SYSTEM | CTR_AUX_DISABLED | CTR_TRANSLATE;

// Controller commands (written to the command port).
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KEYBOARD_TEST: u8 = 0xab;
const CMD_DISABLE_KEYBOARD: u8 = 0xad;
const CMD_ENABLE_KEYBOARD: u8 = 0xae;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_WRITE_KEYBOARD_OUTPUT: u8 = 0xd2;
const CMD_WRITE_AUX_OUTPUT: u8 = 0xd3;
const CMD_WRITE_TO_AUX: u8 = 0xd4;
/// 0xF0-0xFF pulse the output port lines whose bits are 0 in the command's low nibble;
/// bit 0 is the CPU reset line, so 0xFE resets.
const CMD_PULSE_OUTPUT_PORT: u8 = 0xf0;

const SELF_TEST_PASSED: u8 = 0x55;
const INTERFACE_TEST_PASSED: u8 = 0x00;
/// Output port: bit 0 the CPU reset line (high: not in reset), bit 1 the A20 gate.
const OUTPUT_PORT_RESET: u8 = 1 << 0;
const OUTPUT_PORT_A20: u8 = 1 << 1;

/// Controller answers waiting for the output buffer. A guest that keeps asking without
/// reading gets its oldest answers dropped.
const MAX_CONTROLLER_ANSWERS: usize = 4;

/// The i8042 on ports 0x60-0x64.
pub struct I8042 {
    power: Arc<dyn PowerEventHandler>,
    irq: Arc<dyn IrqLine>,
    /// The command byte (CTR).
    ctr: u8,
    /// A controller command waiting for its data byte.
    awaiting_data: Option<u8>,
    last_write_was_command: bool,
    /// The output buffer register.
    output: Option<u8>,
    /// What the data port reads when the buffer is empty: the last byte read.
    last_output: u8,
    controller_answers: VecDeque<u8>,
    keyboard: Keyboard,
}

impl I8042 {
    /// A controller that reports a reset to `power` and raises the keyboard interrupt on
    /// `irq`.
    pub fn new(power: Arc<dyn PowerEventHandler>, irq: Arc<dyn IrqLine>) -> Self {
        I8042 {
            power,
            irq,
            ctr: CTR_AT_BOOT,
            awaiting_data: None,
            last_write_was_command: false,
            output: None,
            last_output: 0,
            controller_answers: VecDeque::new(),
            keyboard: Keyboard::new(),
        }
    }

    /// Types Ctrl+Alt+Del (pressed, then released) on the keyboard. Linux turns it into
    /// SIGINT for init or a reboot, as `/proc/sys/kernel/ctrl-alt-del` says.
    pub fn send_ctrl_alt_del(&mut self) -> Result<(), KeyboardError> {
        let translated = self.ctr & CTR_TRANSLATE != 0;
        self.keyboard
            .type_keys(keyboard::ctrl_alt_del(translated))?;
        self.fill_output();
        Ok(())
    }

    fn status(&self) -> u8 {
        let mut status = STATUS_UNLOCKED;
        if self.output.is_some() {
            status |= STATUS_OUTPUT_FULL;
        }
        if self.ctr & CTR_SYSTEM != 0 {
            status |= STATUS_SYSTEM;
        }
        if self.last_write_was_command {
            status |= STATUS_LAST_WAS_COMMAND;
        }
        status
    }

    fn read_data(&mut self) -> u8 {
        let value = self.output.take().unwrap_or(self.last_output);
        self.last_output = value;
        self.fill_output();
        value
    }

    /// Moves the next waiting byte into the empty output buffer and interrupts.
    fn fill_output(&mut self) {
        if self.output.is_some() {
            return;
        }
        let next = match self.controller_answers.pop_front() {
            Some(answer) => Some(answer),
            None if self.ctr & CTR_KEYBOARD_DISABLED == 0 => self.keyboard.next_byte(),
            None => None,
        };
        if let Some(byte) = next {
            self.output = Some(byte);
            if self.ctr & CTR_KEYBOARD_INTERRUPT != 0 {
                // A failed irqfd write is not the guest's doing and there is nobody to
                // tell; the byte stays readable by polling.
                let _ = self.irq.signal();
            }
        }
    }

    fn answer(&mut self, byte: u8) {
        if self.controller_answers.len() == MAX_CONTROLLER_ANSWERS {
            self.controller_answers.pop_front();
        }
        self.controller_answers.push_back(byte);
        self.fill_output();
    }

    fn reset_cpu(&self) {
        self.power.power_event(PowerEvent::Reset);
    }

    fn write_command(&mut self, command: u8) {
        self.awaiting_data = None;
        match command {
            CMD_READ_CTR => self.answer(self.ctr),
            CMD_WRITE_CTR
            | CMD_WRITE_OUTPUT_PORT
            | CMD_WRITE_KEYBOARD_OUTPUT
            | CMD_WRITE_AUX_OUTPUT
            | CMD_WRITE_TO_AUX => self.awaiting_data = Some(command),
            CMD_SELF_TEST => self.answer(SELF_TEST_PASSED),
            CMD_KEYBOARD_TEST => self.answer(INTERFACE_TEST_PASSED),
            CMD_DISABLE_KEYBOARD => self.ctr |= CTR_KEYBOARD_DISABLED,
            CMD_ENABLE_KEYBOARD => {
                self.ctr &= !CTR_KEYBOARD_DISABLED;
                self.fill_output();
            }
            CMD_READ_OUTPUT_PORT => self.answer(OUTPUT_PORT_RESET | OUTPUT_PORT_A20),
            pulse
                if pulse & CMD_PULSE_OUTPUT_PORT == CMD_PULSE_OUTPUT_PORT
                    && pulse & OUTPUT_PORT_RESET == 0 =>
            {
                self.reset_cpu()
            }
            // Other pulses (the A20 gate) and anything else (AUX commands among them) are
            // not implemented and ignored.
            _ => {}
        }
    }

    fn write_data(&mut self, value: u8) {
        match self.awaiting_data.take() {
            Some(CMD_WRITE_CTR) => {
                self.ctr = value;
                self.fill_output();
            }
            Some(CMD_WRITE_OUTPUT_PORT) => {
                if value & OUTPUT_PORT_RESET == 0 {
                    self.reset_cpu();
                }
            }
            Some(CMD_WRITE_KEYBOARD_OUTPUT) => self.answer(value),
            // Bytes for the AUX port that is not there.
            Some(_) => {}
            None => {
                let translated = self.ctr & CTR_TRANSLATE != 0;
                self.keyboard.command(value, translated);
                self.fill_output();
            }
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            DATA_OFFSET => self.read_data(),
            COMMAND_OFFSET => self.status(),
            // Ports 0x61-0x63 are not the controller's.
            _ => 0xff,
        };
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else {
            return;
        };
        match offset {
            DATA_OFFSET => {
                self.last_write_was_command = false;
                self.write_data(value);
            }
            COMMAND_OFFSET => {
                self.last_write_was_command = true;
                self.write_command(value);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::keyboard::{ACK, BAT_PASSED, MAX_QUEUED};
    use super::*;
    use crate::devices::test_support::CountingInterrupt;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<PowerEvent>>);
    impl PowerEventHandler for Recorder {
        fn power_event(&self, event: PowerEvent) {
            self.0.lock().unwrap().push(event);
        }
    }

    struct Fixture {
        dev: I8042,
        power: Arc<Recorder>,
        irq: Arc<CountingInterrupt>,
    }

    fn fixture() -> Fixture {
        let power = Arc::new(Recorder::default());
        let irq = Arc::new(CountingInterrupt::default());
        Fixture {
            dev: I8042::new(power.clone(), irq.clone()),
            power,
            irq,
        }
    }

    impl Fixture {
        fn status(&mut self) -> u8 {
            let mut byte = [0u8];
            self.dev.read(COMMAND_OFFSET, &mut byte);
            byte[0]
        }

        fn command(&mut self, command: u8) {
            assert_eq!(self.status() & 0x02, 0, "the input buffer is always empty");
            self.dev.write(COMMAND_OFFSET, &[command]);
        }

        fn send(&mut self, byte: u8) {
            self.dev.write(DATA_OFFSET, &[byte]);
        }

        /// What Linux's driver does: read while the status says the buffer is full.
        fn drain(&mut self) -> Vec<u8> {
            let mut bytes = Vec::new();
            while self.status() & STATUS_OUTPUT_FULL != 0 {
                let mut byte = [0u8];
                self.dev.read(DATA_OFFSET, &mut byte);
                bytes.push(byte[0]);
                assert!(bytes.len() <= 64, "the output never empties");
            }
            bytes
        }
    }

    #[test]
    fn linux_probes_the_controller_and_its_keyboard() {
        let mut f = fixture();
        // i8042_controller_check, then i8042_controller_init: flush, read the command
        // byte until two reads agree, disable the keyboard port and its interrupt.
        assert_eq!(f.drain(), Vec::<u8>::new());
        let status = f.status();
        assert_ne!(status & STATUS_UNLOCKED, 0, "no keylock");
        assert_ne!(status & STATUS_SYSTEM, 0);
        f.command(CMD_READ_CTR);
        let ctr = f.drain();
        assert_eq!(ctr, [CTR_AT_BOOT]);
        f.command(CMD_READ_CTR);
        assert_eq!(f.drain(), ctr);
        let irqs_before = f.irq.signals();
        f.command(CMD_WRITE_CTR);
        assert_ne!(f.status() & STATUS_LAST_WAS_COMMAND, 0);
        f.send((CTR_AT_BOOT | CTR_KEYBOARD_DISABLED) & !CTR_KEYBOARD_INTERRUPT);
        assert_eq!(f.status() & STATUS_LAST_WAS_COMMAND, 0);
        // The A20 write and the null command Linux sends on x86 do not reset.
        f.command(CMD_WRITE_OUTPUT_PORT);
        f.send(0xdf);
        f.command(0xff);
        assert!(f.power.0.lock().unwrap().is_empty());
        // i8042_setup_kbd: enable the port and its interrupt.
        f.command(CMD_WRITE_CTR);
        f.send(CTR_AT_BOOT);
        assert_eq!(f.irq.signals(), irqs_before, "nothing to interrupt for yet");

        // atkbd: identify (translated ID), set the typematic rate, enable.
        f.send(0xf2);
        assert_eq!(f.drain(), [ACK, 0xab, 0x41]);
        f.send(0xf3);
        f.send(0x00);
        f.send(0xed);
        f.send(0x02);
        f.send(0xf4);
        f.send(0xee);
        assert_eq!(f.drain(), [ACK, ACK, ACK, ACK, ACK, 0xee]);
        assert_eq!(f.irq.signals(), irqs_before + 9, "one interrupt per byte");

        // Self-tests.
        f.command(CMD_SELF_TEST);
        assert_eq!(f.drain(), [SELF_TEST_PASSED]);
        f.command(CMD_KEYBOARD_TEST);
        assert_eq!(f.drain(), [INTERFACE_TEST_PASSED]);
        f.send(0xff);
        assert_eq!(f.drain(), [ACK, BAT_PASSED]);
    }

    #[test]
    fn ctrl_alt_del_reaches_the_guest_one_byte_per_interrupt() {
        let mut f = fixture();
        f.dev.send_ctrl_alt_del().unwrap();
        // Set 1 (translated): Ctrl, Alt, Delete pressed, then released.
        let expected = [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];
        assert_eq!(f.irq.signals(), 1, "the first byte is waiting");
        assert_eq!(f.drain(), expected);
        assert_eq!(f.irq.signals(), expected.len());

        // Untranslated, the keyboard's own set 2.
        f.command(CMD_WRITE_CTR);
        f.send(CTR_AT_BOOT & !CTR_TRANSLATE);
        f.dev.send_ctrl_alt_del().unwrap();
        assert_eq!(
            f.drain(),
            [0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14]
        );
    }

    #[test]
    fn keys_wait_while_the_keyboard_port_is_disabled_and_without_interrupts() {
        let mut f = fixture();
        f.command(CMD_DISABLE_KEYBOARD);
        f.dev.send_ctrl_alt_del().unwrap();
        assert_eq!(f.drain(), Vec::<u8>::new());
        assert_eq!(f.irq.signals(), 0);
        // Controller answers still come through.
        f.command(CMD_READ_CTR);
        assert_eq!(f.drain(), [CTR_AT_BOOT | CTR_KEYBOARD_DISABLED]);
        // Polled, with the interrupt off.
        f.command(CMD_WRITE_CTR);
        f.send(CTR_AT_BOOT & !CTR_KEYBOARD_INTERRUPT);
        let irqs = f.irq.signals();
        assert_eq!(f.drain().len(), 8);
        assert_eq!(f.irq.signals(), irqs);
    }

    #[test]
    fn a_keyboard_nobody_reads_refuses_more_keys_than_it_holds() {
        let mut f = fixture();
        let mut sent = 0;
        while f.dev.send_ctrl_alt_del().is_ok() {
            sent += 1;
            assert!(sent <= MAX_QUEUED, "the keyboard buffer is unbounded");
        }
        assert_eq!(
            f.dev.send_ctrl_alt_del(),
            Err(KeyboardError::BufferFull {
                needed: 8,
                room: MAX_QUEUED - 8 * sent + 1
            })
        );
        // The one byte in the output buffer, and the whole sequences queued: no partial
        // sequence.
        assert_eq!(f.drain().len(), 8 * sent);
        f.dev.send_ctrl_alt_del().unwrap();
    }

    #[test]
    fn a_guest_that_disabled_scanning_gets_no_keys() {
        let mut f = fixture();
        f.send(0xf5);
        assert_eq!(f.drain(), [ACK]);
        assert_eq!(
            f.dev.send_ctrl_alt_del(),
            Err(KeyboardError::ScanningDisabled)
        );
        f.send(0xf4);
        assert_eq!(f.drain(), [ACK]);
        f.dev.send_ctrl_alt_del().unwrap();
    }

    #[test]
    fn the_reset_line_resets_the_machine() {
        let mut f = fixture();
        f.command(0xfe);
        f.command(CMD_WRITE_OUTPUT_PORT);
        f.send(0xfe);
        // Pulses that leave the reset line alone, and an AUX byte that is dropped.
        f.command(0xfd);
        f.command(CMD_WRITE_TO_AUX);
        f.send(0xfe);
        assert_eq!(
            *f.power.0.lock().unwrap(),
            vec![PowerEvent::Reset, PowerEvent::Reset]
        );
    }

    #[test]
    fn the_loopback_command_echoes_a_byte_as_the_keyboard() {
        let mut f = fixture();
        f.command(CMD_WRITE_KEYBOARD_OUTPUT);
        f.send(0x5a);
        assert_eq!(f.drain(), [0x5a]);
        // An empty buffer reads as the last byte.
        let mut byte = [0u8; 2];
        f.dev.read(DATA_OFFSET, &mut byte);
        assert_eq!(byte, [0x5a, 0]);
    }

    #[test]
    fn hostile_port_accesses_keep_everything_bounded() {
        let mut f = fixture();
        let mut seed = 0x2545_f491_u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for _ in 0..200_000 {
            let r = next();
            let value = (r >> 8) as u8;
            let len = 1 + (r >> 16) as usize % 4;
            match r % 5 {
                0 => f.dev.write(COMMAND_OFFSET, &[value]),
                1 => f.dev.write(DATA_OFFSET, &vec![value; len]),
                2 => f.dev.read(DATA_OFFSET, &mut vec![0; len]),
                3 => f.dev.read(u64::from(value % 8), &mut [0]),
                _ => {
                    let _ = f.dev.send_ctrl_alt_del();
                }
            }
            f.dev.write(1, &[]);
            assert!(f.dev.controller_answers.len() <= MAX_CONTROLLER_ANSWERS);
            assert!(f.dev.keyboard.queued() <= MAX_QUEUED);
        }
    }
}
