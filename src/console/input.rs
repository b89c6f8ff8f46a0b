//! Feeds the host's stdin to the guest's serial console from the event loop.
//!
//! Reading pauses while the UART's receive FIFO is full and resumes when the guest has
//! drained it, so typing ahead never loses bytes. End of input (a closed pipe, or
//! `/dev/null`, which cannot even be polled) just stops the forwarding; the guest keeps
//! running.
//!
//! When stdin is a terminal, it is read only while vmm is the terminal's foreground
//! process, which is also when it is in raw mode ([`crate::terminal`]). In the background
//! nothing is read (a read there fails with `EIO`, as `SIGTTIN` is ignored). vmm takes the
//! terminal when it gets the foreground: shells send `SIGCONT` when `fg` continues a
//! stopped job, but not when the job was running in the background all along, so while in
//! the background vmm also looks every [`FOREGROUND_POLL`].

use std::io::Write;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::devices::legacy::serial::SerialConsole;
use crate::sync::lock;
use crate::terminal;

/// What a read from the input gave.
enum ReadResult {
    /// Bytes, or nothing for now (`EINTR`, `EAGAIN`).
    Data,
    /// End of input or an error that will not go away.
    Closed,
    /// A terminal read from the background (`EIO`): wait for the foreground.
    NotForeground,
}

/// The stdin → serial forwarder.
pub struct ConsoleInput<W: Write + Send> {
    input: RawFd,
    serial: Arc<Mutex<SerialConsole<W>>>,
    input_drained: EventFd,
    /// Bytes read from stdin that did not fit in the FIFO yet.
    pending: Vec<u8>,
    input_open: bool,
    watching_input: bool,
    /// With a terminal on stdin: the `SIGCONT` event, and whether vmm holds the terminal
    /// (foreground, raw mode).
    terminal: Option<TerminalState>,
}

/// How often vmm, in the background of its terminal, looks whether it got the foreground.
pub const FOREGROUND_POLL: Duration = Duration::from_millis(500);

/// The events that tell a console input on a terminal to look whether vmm has the
/// foreground: `SIGCONT` ([`terminal::continue_event`]) and a timer for the background.
pub struct TerminalEvents {
    pub continued: RawFd,
    pub poll: TimerFd,
}

struct TerminalState {
    events: TerminalEvents,
    owned: bool,
    polling: bool,
}

impl<W: Write + Send> ConsoleInput<W> {
    /// Forwards `input` (normally stdin) to `serial`. `input_drained` is the event the
    /// serial device signals when the guest has read everything. `terminal` is given when
    /// `input` is a terminal.
    pub fn new(
        input: RawFd,
        serial: Arc<Mutex<SerialConsole<W>>>,
        input_drained: EventFd,
        terminal: Option<TerminalEvents>,
    ) -> Self {
        ConsoleInput {
            input,
            serial,
            input_drained,
            pending: Vec::new(),
            input_open: true,
            watching_input: false,
            terminal: terminal.map(|events| TerminalState {
                events,
                owned: false,
                polling: false,
            }),
        }
    }

    fn read_input(&mut self) -> ReadResult {
        let mut buf = [0u8; 64];
        // SAFETY: reads into a local buffer of the length given.
        let n = unsafe { libc::read(self.input, buf.as_mut_ptr().cast(), buf.len()) };
        match n {
            0 => ReadResult::Closed,
            n if n < 0 => {
                let err = std::io::Error::last_os_error();
                match err.kind() {
                    std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock => {
                        ReadResult::Data
                    }
                    _ if err.raw_os_error() == Some(libc::EIO) && self.terminal.is_some() => {
                        ReadResult::NotForeground
                    }
                    _ => ReadResult::Closed,
                }
            }
            n => {
                self.pending.extend_from_slice(&buf[..n as usize]);
                ReadResult::Data
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

    /// Takes the terminal if vmm is in its foreground, lets go of it otherwise; looks
    /// again every [`FOREGROUND_POLL`] while in the background.
    fn check_foreground(&mut self) {
        let Some(state) = &mut self.terminal else {
            return;
        };
        if terminal::is_foreground() {
            state.owned = terminal::enter_raw_mode();
        } else if state.owned {
            state.owned = false;
            terminal::left_foreground();
        }
        Self::poll_while_background(state);
    }

    fn lost_foreground(&mut self) {
        if let Some(state) = &mut self.terminal {
            state.owned = false;
            terminal::left_foreground();
            Self::poll_while_background(state);
        }
    }

    fn poll_while_background(state: &mut TerminalState) {
        let poll = !state.owned;
        if poll == state.polling {
            return;
        }
        let armed = if poll {
            state
                .events
                .poll
                .reset(FOREGROUND_POLL, Some(FOREGROUND_POLL))
        } else {
            state.events.poll.clear()
        };
        if armed.is_ok() {
            state.polling = poll;
        }
    }

    /// Whether stdin should be read now: it is open, it is no terminal or vmm holds it,
    /// and everything read so far reached the FIFO.
    fn wants_input(&self) -> bool {
        self.input_open
            && self.pending.is_empty()
            && self.terminal.as_ref().is_none_or(|state| state.owned)
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
        if let Some(state) = &self.terminal {
            let _ = ops.add(Events::with_data_raw(
                state.events.continued,
                0,
                EventSet::IN,
            ));
            let _ = ops.add(Events::new(&state.events.poll, EventSet::IN));
        }
        self.check_foreground();
        let watch = self.wants_input();
        self.set_watching(ops, watch);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let (continued, poll) = match &self.terminal {
            Some(state) => (
                Some(state.events.continued),
                Some(state.events.poll.as_raw_fd()),
            ),
            None => (None, None),
        };
        if events.fd() == self.input_drained.as_raw_fd() {
            let _ = self.input_drained.read();
        } else if Some(events.fd()) == continued {
            terminal::ack_continue(events.fd());
            self.check_foreground();
        } else if Some(events.fd()) == poll {
            if let Some(state) = &mut self.terminal {
                let _ = state.events.poll.wait();
            }
            self.check_foreground();
        } else if events.fd() == self.input {
            if events.event_set().contains(EventSet::IN) {
                match self.read_input() {
                    ReadResult::Data => {}
                    ReadResult::NotForeground => self.lost_foreground(),
                    ReadResult::Closed => {
                        self.set_watching(ops, false);
                        self.input_open = false;
                    }
                }
            } else {
                // HUP or ERR without data: the other end is gone.
                self.set_watching(ops, false);
                self.input_open = false;
            }
        }
        self.flush_pending();
        // Stop reading while the FIFO is full (resume when the guest drains it) and while
        // the terminal belongs to someone else.
        let watch = self.wants_input();
        self.set_watching(ops, watch);
    }
}
