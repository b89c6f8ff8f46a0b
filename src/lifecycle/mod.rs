//! How a running VM comes to a stop, and why. Any thread (a vCPU, a device, the API, a
//! signal handler) may ask the VM to stop; the first reason wins and decides vmm's exit
//! status. The event loop wakes on [`Lifecycle::stop_event`] and tears the VM down.
//!
//! - [`signals`]: SIGTERM, SIGINT and SIGHUP become an eventfd the event loop watches.
//! - [`stop_watcher`]: the event loop's side of stopping: the stop event, those signals,
//!   and the probe for a guest that halted for good.
//! - [`vcpu_threads`]: starting the vCPU threads as a group, and stopping and joining
//!   them (bounded) on every way out.
//! - [`fail_stop`]: a panic on any thread stops the VM.

use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

use crate::devices::legacy::{PanicEvent, PanicEventHandler, PowerEvent, PowerEventHandler};
use crate::sync::lock;
use crate::warn_once;

pub mod fail_stop;
pub mod signals;
pub mod stop_watcher;
pub mod vcpu_threads;

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

/// vmm's exit statuses, one per kind of ending, so that a supervisor (systemd, a container
/// runtime) can tell them apart. README.md has the same table for users.
pub mod exit_status {
    /// The guest powered off, reset or halted for good, or the API asked for a shutdown.
    pub const OK: u8 = 0;
    /// vmm failed: it could not start the VM (no KVM, a kernel that is not a bzImage, a
    /// size the host cannot give...), or KVM or the event loop failed under it.
    pub const VMM_ERROR: u8 = 1;
    /// The command line does not parse (an unknown flag, a malformed value).
    pub const USAGE: u8 = 2;
    /// The guest kernel panicked (it said so through pvpanic or a KVM crash event).
    pub const GUEST_PANIC: u8 = 3;
    /// The guest's CPU state broke: a triple fault, or KVM could not run it.
    pub const GUEST_FAULT: u8 = 4;
    /// A thread of vmm panicked; the VM was stopped (fail-stop).
    pub const VMM_PANIC: u8 = 5;
    /// Added to the number of the termination signal that ended vmm (SIGTERM: 143).
    pub const SIGNAL_BASE: u8 = 128;
    /// A thread of vmm made a system call its seccomp filter refuses (128 + SIGSYS).
    pub const SECCOMP_VIOLATION: u8 = SIGNAL_BASE + libc::SIGSYS as u8;
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
    /// The guest kernel reported a panic or crash; the text says how.
    GuestPanic(String),
    /// The guest's CPU state broke (triple fault, failed entry, KVM internal error).
    GuestFault(String),
    /// A thread of vmm panicked; the text names the thread and the panic.
    VmmPanic(String),
    /// vmm itself failed while the VM ran (a KVM call, the event loop).
    Error(String),
}

impl StopReason {
    /// vmm's exit status for this reason (see [`exit_status`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            StopReason::PowerOff
            | StopReason::Reset
            | StopReason::Halted
            | StopReason::ShutdownRequested => exit_status::OK,
            StopReason::Signal(signum) => {
                exit_status::SIGNAL_BASE.saturating_add(u8::try_from(*signum).unwrap_or(0))
            }
            StopReason::GuestPanic(_) => exit_status::GUEST_PANIC,
            StopReason::GuestFault(_) => exit_status::GUEST_FAULT,
            StopReason::VmmPanic(_) => exit_status::VMM_PANIC,
            StopReason::Error(_) => exit_status::VMM_ERROR,
        }
    }

    /// The one line vmm prints on its way out for an ending that is not the normal one,
    /// or `None` when the status says it all.
    pub fn report(&self) -> Option<String> {
        match self {
            StopReason::PowerOff
            | StopReason::Reset
            | StopReason::Halted
            | StopReason::ShutdownRequested
            | StopReason::Signal(_) => None,
            StopReason::GuestPanic(what) => Some(format!("the guest panicked: {what}")),
            StopReason::GuestFault(what) | StopReason::Error(what) => Some(what.clone()),
            StopReason::VmmPanic(what) => Some(format!("stopped the VM: {what}")),
        }
    }
}

/// The VM's stop flag, its reason and the event that wakes the event loop.
pub struct Lifecycle {
    stopping: AtomicBool,
    reason: Mutex<Option<StopReason>>,
    stop_event: EventFd,
    /// The guest's kernel crashed into its crash kernel (pvpanic `CRASH_LOADED`): the VM
    /// runs on so that the dump can be saved, and the guest's own ending is then a panic.
    crashed: AtomicBool,
}

impl Lifecycle {
    pub fn new() -> std::io::Result<Self> {
        Ok(Lifecycle {
            stopping: AtomicBool::new(false),
            reason: Mutex::new(None),
            stop_event: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
            crashed: AtomicBool::new(false),
        })
    }

    /// Asks the VM to stop. Only the first reason is kept.
    pub fn request_stop(&self, reason: StopReason) {
        let reason = if self.crashed.load(Ordering::SeqCst) {
            reason.after_crash_kernel()
        } else {
            reason
        };
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

impl StopReason {
    /// This reason, once the guest's kernel crashed into its crash kernel: the guest
    /// ending by itself (the crash kernel's reboot or power-off) ends it as a panic.
    fn after_crash_kernel(self) -> StopReason {
        let ending = match self {
            StopReason::PowerOff => "powered off",
            StopReason::Reset => "rebooted",
            StopReason::Halted => "halted",
            other => return other,
        };
        StopReason::GuestPanic(format!(
            "pvpanic reported CRASH_LOADED (a crash kernel took over), then the guest {ending}"
        ))
    }
}

impl PanicEventHandler for Lifecycle {
    fn panic_event(&self, event: PanicEvent) {
        match event {
            PanicEvent::Panicked => {
                self.request_stop(StopReason::GuestPanic("pvpanic reported PANICKED".into()))
            }
            PanicEvent::CrashLoaded => {
                self.crashed.store(true, Ordering::SeqCst);
                warn_once!(
                    "the guest's kernel panicked and is booting its crash kernel (pvpanic: CRASH_LOADED); the VM runs on so that it can save a dump"
                );
            }
        }
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
        assert_eq!(StopReason::Error("event loop failed".into()).exit_code(), 1);
        assert_eq!(StopReason::GuestPanic("pvpanic".into()).exit_code(), 3);
        assert_eq!(StopReason::GuestFault("triple fault".into()).exit_code(), 4);
        assert_eq!(StopReason::VmmPanic("vcpu0".into()).exit_code(), 5);
        assert_eq!(exit_status::SECCOMP_VIOLATION, 159);
    }

    #[test]
    fn a_pvpanic_panic_stops_the_vm_before_the_reboot_that_follows() {
        let lifecycle = Lifecycle::new().unwrap();
        lifecycle.panic_event(PanicEvent::Panicked);
        // panic=1: the kernel resets the machine a second later.
        lifecycle.power_event(PowerEvent::Reset);
        let reason = lifecycle.reason().unwrap();
        assert_eq!(reason.exit_code(), exit_status::GUEST_PANIC);
        assert_eq!(
            reason.report().unwrap(),
            "the guest panicked: pvpanic reported PANICKED"
        );
    }

    #[test]
    fn a_crash_kernel_runs_and_its_ending_is_a_panic() {
        for (ending, word) in [
            (StopReason::Reset, "rebooted"),
            (StopReason::PowerOff, "powered off"),
            (StopReason::Halted, "halted"),
        ] {
            let lifecycle = Lifecycle::new().unwrap();
            lifecycle.panic_event(PanicEvent::CrashLoaded);
            assert!(!lifecycle.is_stopping(), "the crash kernel must get to run");
            lifecycle.request_stop(ending);
            let reason = lifecycle.reason().unwrap();
            assert_eq!(reason.exit_code(), exit_status::GUEST_PANIC);
            assert!(reason.report().unwrap().contains(word), "{reason:?}");
        }
        // Endings the host asked for keep their own status.
        let lifecycle = Lifecycle::new().unwrap();
        lifecycle.panic_event(PanicEvent::CrashLoaded);
        lifecycle.request_stop(StopReason::Signal(15));
        assert_eq!(lifecycle.reason(), Some(StopReason::Signal(15)));
    }

    #[test]
    fn only_abnormal_endings_print_a_line() {
        assert_eq!(StopReason::PowerOff.report(), None);
        assert_eq!(StopReason::Signal(15).report(), None);
        assert_eq!(
            StopReason::GuestFault("the guest triple-faulted on vCPU 1".into()).report(),
            Some("the guest triple-faulted on vCPU 1".into())
        );
        assert_eq!(
            StopReason::GuestPanic("pvpanic".into()).report(),
            Some("the guest panicked: pvpanic".into())
        );
    }
}
