//! Feeds the host's stdin to the guest's serial console from the event loop.
//!
//! Reading pauses while the UART's receive FIFO is full and resumes when the guest has
//! drained it, so typing ahead never loses bytes. End of input (a closed pipe, or
//! `/dev/null`, which cannot even be polled) just stops the forwarding; the guest keeps
//! running.

use std::io::Write;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::devices::legacy::serial::SerialConsole;
use crate::sync::lock;

/// The stdin → serial forwarder.
pub struct ConsoleInput<W: Write + Send> {
    input: RawFd,
    serial: Arc<Mutex<SerialConsole<W>>>,
    input_drained: EventFd,
    /// Bytes read from stdin that did not fit in the FIFO yet.
    pending: Vec<u8>,
    input_open: bool,
    watching_input: bool,
}

impl<W: Write + Send> ConsoleInput<W> {
    /// Forwards `input` (normally stdin) to `serial`. `input_drained` is the event the
    /// serial device signals when the guest has read everything.
    pub fn new(input: RawFd, serial: Arc<Mutex<SerialConsole<W>>>, input_drained: EventFd) -> Self {
        ConsoleInput {
            input,
            serial,
            input_drained,
            pending: Vec::new(),
            input_open: true,
            watching_input: false,
        }
    }

    fn read_input(&mut self) -> Option<usize> {
        let mut buf = [0u8; 64];
        // SAFETY: reads into a local buffer of the length given.
        let n = unsafe { libc::read(self.input, buf.as_mut_ptr().cast(), buf.len()) };
        match n {
            0 => None,
            n if n < 0 => {
                let err = std::io::Error::last_os_error();
                match err.kind() {
                    std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock => Some(0),
                    _ => None,
                }
            }
            n => {
                self.pending.extend_from_slice(&buf[..n as usize]);
                Some(n as usize)
            }
        }
    }

    /// Moves pending bytes into the FIFO; returns whether all of them fit.
    fn flush_pending(&mut self) -> bool {
        if !self.pending.is_empty() {
            let taken = lock(&self.serial).enqueue_input(&self.pending);
            self.pending.drain(..taken);
        }
        self.pending.is_empty()
    }

    fn set_watching(&mut self, ops: &mut EventOps, watch: bool) {
        if watch == self.watching_input || !self.input_open {
            return;
        }
        let event = Events::with_data_raw(self.input, 0, EventSet::IN);
        let result = if watch {
            ops.add(event)
        } else {
            ops.remove(event)
        };
        match result {
            Ok(()) => self.watching_input = watch,
            // /dev/null and regular files cannot be polled: there is no input to forward.
            Err(_) => self.input_open = false,
        }
    }
}

impl<W: Write + Send> MutEventSubscriber for ConsoleInput<W> {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.input_drained, EventSet::IN));
        self.set_watching(ops, true);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.input_drained.as_raw_fd() {
            let _ = self.input_drained.read();
        } else if events.fd() == self.input {
            if events.event_set().contains(EventSet::IN) {
                if self.read_input().is_none() {
                    self.set_watching(ops, false);
                    self.input_open = false;
                }
            } else {
                // HUP or ERR without data: the other end is gone.
                self.set_watching(ops, false);
                self.input_open = false;
            }
        }
        let all_in = self.flush_pending();
        // Stop reading while the FIFO is full; resume when the guest drains it.
        self.set_watching(ops, all_in);
    }
}
