//! The AT keyboard behind the i8042: it answers the commands Linux's `atkbd` sends and
//! holds the keys the VMM types until the controller takes them.
//!
//! The keyboard speaks scan code set 2. With translation on (the controller's command
//! byte, on by default), the controller turns that into set 1 before the guest sees it; the
//! keyboard queues bytes already in the form the guest will read, so the controller
//! passes them on as they are.

use std::collections::VecDeque;

/// The keyboard's answer to a command or a parameter.
pub const ACK: u8 = 0xfa;
/// After a reset: the basic assurance test passed.
pub const BAT_PASSED: u8 = 0xaa;
/// The first byte of a multi-function keyboard's ID; the second is 0x83, or 0x41 through a
/// translating controller.
const ID_FIRST: u8 = 0xab;
const ID_SECOND: u8 = 0x83;
const ID_SECOND_TRANSLATED: u8 = 0x41;
/// The answer to "which scan code set": the only one this keyboard speaks.
const SCAN_CODE_SET: u8 = 2;

// Keyboard commands (written to the data port).
const SET_LEDS: u8 = 0xed;
const ECHO: u8 = 0xee;
const SCAN_CODE_SET_CMD: u8 = 0xf0;
const IDENTIFY: u8 = 0xf2;
const SET_TYPEMATIC: u8 = 0xf3;
const ENABLE: u8 = 0xf4;
const DISABLE: u8 = 0xf5;
const SET_DEFAULTS: u8 = 0xf6;
const RESEND: u8 = 0xfe;
const RESET: u8 = 0xff;

/// Bytes the keyboard holds for the controller, as a real one's 16-byte buffer.
pub const MAX_QUEUED: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyboardError {
    #[error("the guest has disabled its keyboard")]
    ScanningDisabled,
    #[error("the guest is not reading its keyboard: {needed} bytes of keys do not fit in the {room} left in its buffer")]
    BufferFull { needed: usize, room: usize },
}

/// Ctrl, Alt and Delete pressed, then released, as the guest reads them.
pub fn ctrl_alt_del(translated: bool) -> &'static [u8] {
    // Left Ctrl, left Alt and Delete (an extended key, after 0xE0). Set 1 marks a release
    // with bit 7; set 2 with a 0xF0 prefix.
    const SET1: &[u8] = &[0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];
    const SET2: &[u8] = &[
        0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14,
    ];
    if translated {
        SET1
    } else {
        SET2
    }
}

pub struct Keyboard {
    /// Whether the keyboard sends keys (`ENABLE`, `DISABLE`).
    scanning: bool,
    /// A command waiting for its parameter byte.
    awaiting_parameter: Option<u8>,
    queue: VecDeque<u8>,
    last_sent: u8,
}

impl Keyboard {
    /// A keyboard as after power-on: scanning, nothing queued.
    pub fn new() -> Self {
        Keyboard {
            scanning: true,
            awaiting_parameter: None,
            queue: VecDeque::with_capacity(MAX_QUEUED),
            last_sent: ACK,
        }
    }

    /// Bytes waiting for the controller.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// The next byte for the controller's output buffer.
    pub fn next_byte(&mut self) -> Option<u8> {
        let byte = self.queue.pop_front()?;
        self.last_sent = byte;
        Some(byte)
    }

    /// Queues key bytes (`keys`, already in the form the guest reads), all or none.
    pub fn type_keys(&mut self, keys: &[u8]) -> Result<(), KeyboardError> {
        if !self.scanning {
            return Err(KeyboardError::ScanningDisabled);
        }
        let room = MAX_QUEUED - self.queue.len();
        if keys.len() > room {
            return Err(KeyboardError::BufferFull {
                needed: keys.len(),
                room,
            });
        }
        self.queue.extend(keys);
        Ok(())
    }

    /// A byte the guest sent to the keyboard: a command or a command's parameter.
    /// `translated` says whether the controller translates what the keyboard sends.
    pub fn command(&mut self, byte: u8, translated: bool) {
        if let Some(command) = self.awaiting_parameter.take() {
            self.send(ACK);
            if command == SCAN_CODE_SET_CMD && byte == 0 {
                // Parameter 0 asks which set is in use. Other sets are acknowledged but
                // not switched to: keys stay in set 2.
                self.send(SCAN_CODE_SET);
            }
            return;
        }
        match byte {
            SET_LEDS | SET_TYPEMATIC | SCAN_CODE_SET_CMD => {
                self.awaiting_parameter = Some(byte);
                self.send(ACK);
            }
            ECHO => self.send(ECHO),
            IDENTIFY => {
                self.send(ACK);
                self.send(ID_FIRST);
                self.send(if translated {
                    ID_SECOND_TRANSLATED
                } else {
                    ID_SECOND
                });
            }
            ENABLE => {
                self.scanning = true;
                self.send(ACK);
            }
            DISABLE | SET_DEFAULTS => {
                // Both restore the power-on settings; only DISABLE stops scanning.
                self.queue.clear();
                self.scanning = byte == SET_DEFAULTS;
                self.send(ACK);
            }
            RESEND => self.send(self.last_sent),
            RESET => {
                self.queue.clear();
                self.scanning = true;
                self.send(ACK);
                self.send(BAT_PASSED);
            }
            // The set 3 commands and the rest: acknowledged, nothing to do.
            _ => self.send(ACK),
        }
    }

    /// Queues an answer; one that does not fit is lost, as a real keyboard's overrun.
    fn send(&mut self, byte: u8) {
        if self.queue.len() < MAX_QUEUED {
            self.queue.push_back(byte);
        }
    }
}

impl Default for Keyboard {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The controller's translation for the keys of [`ctrl_alt_del`]: set 2 codes to set
    /// 1, a 0xF0 prefix folded into bit 7 of the next code.
    fn translate(set2: &[u8]) -> Vec<u8> {
        let to_set1 = |code: u8| match code {
            0x14 => 0x1d,
            0x11 => 0x38,
            0x71 => 0x53,
            0xe0 => 0xe0,
            other => panic!("no translation for {other:#x} here"),
        };
        let mut out = Vec::new();
        let mut release = false;
        for &code in set2 {
            if code == 0xf0 {
                release = true;
                continue;
            }
            let code = to_set1(code);
            out.push(if release && code != 0xe0 {
                code | 0x80
            } else {
                code
            });
            release = release && code == 0xe0;
        }
        out
    }

    #[test]
    fn both_forms_of_ctrl_alt_del_are_the_same_keys() {
        assert_eq!(translate(ctrl_alt_del(false)), ctrl_alt_del(true));
        assert!(ctrl_alt_del(false).len() <= MAX_QUEUED);
    }

    #[test]
    fn the_scan_code_set_query_and_resend() {
        let mut keyboard = Keyboard::new();
        keyboard.command(SCAN_CODE_SET_CMD, true);
        keyboard.command(0, true);
        let answers: Vec<u8> = std::iter::from_fn(|| keyboard.next_byte()).collect();
        assert_eq!(answers, [ACK, ACK, SCAN_CODE_SET]);
        keyboard.command(RESEND, true);
        assert_eq!(keyboard.next_byte(), Some(SCAN_CODE_SET));
        keyboard.command(IDENTIFY, false);
        let answers: Vec<u8> = std::iter::from_fn(|| keyboard.next_byte()).collect();
        assert_eq!(answers, [ACK, ID_FIRST, ID_SECOND]);
    }

    #[test]
    fn answers_that_do_not_fit_are_lost() {
        let mut keyboard = Keyboard::new();
        for _ in 0..100 {
            keyboard.command(ECHO, true);
        }
        assert_eq!(keyboard.queued(), MAX_QUEUED);
    }
}
