//! How a running VM comes to a stop, and why. Any thread (a vCPU, a device, the API, a
//! signal handler) may ask the VM to stop; the first reason wins and decides vmm's exit
//! status. The event loop wakes on [`Lifecycle::stop_event`] and tears the VM down.
//!
//! - [`signals`]: SIGTERM, SIGINT and SIGHUP become an eventfd the event loop watches.
//! - [`stop_watcher`]: the event loop's side of stopping: the stop event, those signals,
//!   the probe for a guest that halted for good, and kicking the vCPUs out of `KVM_RUN`.

use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

use crate::devices::legacy::{PowerEvent, PowerEventHandler};
use crate::sync::lock;

pub mod signals;
pub mod stop_watcher;

/// A host resource the stop machinery needs (an eventfd, a timer, a signal handler)
/// could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up {what}: {source}")]
pub struct SetupError {
    pub what: &'static str,
    pub source: std::io::Error,
}

impl SetupError {
    /// Wraps an I/O error from setting up `what`.
    pub(crate) fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> SetupError {
        move |source| SetupError { what, source }
    }

    /// Wraps an errno from setting up `what`.
    pub(crate) fn errno(
        what: &'static str,
    ) -> impl FnOnce(vmm_sys_util::errno::Error) -> SetupError {
        move |e| SetupError {
            what,
            source: std::io::Error::from_raw_os_error(e.errno()),
        }
    }
}

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The guest powered off (ACPI S5).
    PowerOff,
    /// The guest reset the machine (i8042); vmm does not reboot it, it exits.
    Reset,
    /// Every vCPU halted with interrupts disabled: nothing can ever wake the guest.
    Halted,
    /// The API asked for a shutdown.
    ShutdownRequested,
    /// vmm received a termination signal.
    Signal(i32),
    /// The guest or KVM failed (triple fault, internal error, failed entry).
    Error(String),
}

impl StopReason {
    /// vmm's exit status for this reason: 0 for what a guest or user does on purpose,
    /// 128 + signal number for signals, 1 for failures.
    pub fn exit_code(&self) -> i32 {
        match self {
            StopReason::PowerOff
            | StopReason::Reset
            | StopReason::Halted
            | StopReason::ShutdownRequested => 0,
            StopReason::Signal(signum) => 128 + signum,
            StopReason::Error(_) => 1,
        }
    }
}

/// The VM's stop flag, its reason and the event that wakes the event loop.
pub struct Lifecycle {
    stopping: AtomicBool,
    reason: Mutex<Option<StopReason>>,
    stop_event: EventFd,
}

impl Lifecycle {
    pub fn new() -> std::io::Result<Self> {
        Ok(Lifecycle {
            stopping: AtomicBool::new(false),
            reason: Mutex::new(None),
            stop_event: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
        })
    }

    /// Asks the VM to stop. Only the first reason is kept.
    pub fn request_stop(&self, reason: StopReason) {
        {
            let mut slot = lock(&self.reason);
            if slot.is_none() {
                *slot = Some(reason);
            }
        }
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.stop_event.write(1);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The reason the VM stopped, once it did.
    pub fn reason(&self) -> Option<StopReason> {
        lock(&self.reason).clone()
    }

    /// Readable once a stop was requested.
    pub fn stop_event(&self) -> RawFd {
        self.stop_event.as_raw_fd()
    }

    /// Clears the stop event after the event loop has seen it.
    pub fn ack_stop_event(&self) {
        let _ = self.stop_event.read();
    }
}

impl PowerEventHandler for Lifecycle {
    fn power_event(&self, event: PowerEvent) {
        self.request_stop(match event {
            PowerEvent::PowerOff => StopReason::PowerOff,
            PowerEvent::Reset => StopReason::Reset,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_reason_wins_and_wakes_the_loop() {
        let lifecycle = Lifecycle::new().unwrap();
        assert!(!lifecycle.is_stopping());
        lifecycle.power_event(PowerEvent::PowerOff);
        lifecycle.request_stop(StopReason::Error("late".into()));
        assert!(lifecycle.is_stopping());
        assert_eq!(lifecycle.reason(), Some(StopReason::PowerOff));
        assert_eq!(lifecycle.reason().unwrap().exit_code(), 0);
        lifecycle.ack_stop_event();
    }

    #[test]
    fn exit_codes() {
        assert_eq!(StopReason::Reset.exit_code(), 0);
        assert_eq!(StopReason::Halted.exit_code(), 0);
        assert_eq!(StopReason::ShutdownRequested.exit_code(), 0);
        assert_eq!(StopReason::Signal(15).exit_code(), 143);
        assert_eq!(StopReason::Error("triple fault".into()).exit_code(), 1);
    }
}
