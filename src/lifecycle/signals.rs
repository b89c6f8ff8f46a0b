//! Termination signals: SIGTERM, SIGINT and SIGHUP end vmm through its orderly exit.
//! SIGHUP is left alone when vmm was started with it ignored (`nohup`).
//!
//! A signal handler may do almost nothing, so it only records the signal's number and
//! writes an eventfd; the event loop wakes on that eventfd
//! ([`StopWatcher`](super::stop_watcher::StopWatcher)) and stops the VM with
//! [`StopReason::Signal`](super::StopReason::Signal), which makes vmm exit with
//! 128 + the signal's number.

use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

use vmm_sys_util::eventfd::EventFd;

use super::SetupError;

/// The last termination signal received, and the eventfd its handler pokes. Statics,
/// because a signal handler can reach nothing else.
static SIGNAL_NUMBER: AtomicI32 = AtomicI32::new(0);
static SIGNAL_EVENT_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_termination_signal(
    signum: libc::c_int,
    _: *mut libc::siginfo_t,
    _: *mut libc::c_void,
) {
    SIGNAL_NUMBER.store(signum, Ordering::SeqCst);
    let fd = SIGNAL_EVENT_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; the fd is an eventfd that lives as long
        // as the process (it is leaked on purpose) and the buffer is 8 valid bytes.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

/// Routes SIGTERM, SIGINT and SIGHUP to an eventfd that the event loop watches, and
/// returns that eventfd; later calls return the same one. Installed before anything is
/// created that must be cleaned up on the way out (the API socket), so that a signal
/// always ends vmm through its orderly exit.
pub fn install_termination_signals() -> Result<RawFd, SetupError> {
    let installed = SIGNAL_EVENT_FD.load(Ordering::SeqCst);
    if installed >= 0 {
        return Ok(installed);
    }
    let signal_event = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
        .map_err(SetupError::io("the signal event"))?;
    let signal_fd = signal_event.as_raw_fd();
    // The handler may run at any time until exit, so the eventfd is never closed.
    std::mem::forget(signal_event);
    SIGNAL_EVENT_FD.store(signal_fd, Ordering::SeqCst);
    for signum in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // `nohup` starts vmm with SIGHUP ignored so that it survives the terminal's hangup;
        // a handler would undo that.
        if signum == libc::SIGHUP && is_ignored(signum) {
            continue;
        }
        vmm_sys_util::signal::register_signal_handler(signum, on_termination_signal)
            .map_err(SetupError::errno("signal handlers"))?;
    }
    Ok(signal_fd)
}

/// Whether `signum` is ignored (SIG_IGN), as vmm's parent may have left it.
fn is_ignored(signum: libc::c_int) -> bool {
    // SAFETY: sigaction is plain data; a null new action only reads the current one.
    let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `current` is valid for writes.
    let ret = unsafe { libc::sigaction(signum, std::ptr::null(), &mut current) };
    ret == 0 && current.sa_sigaction == libc::SIG_IGN
}

/// Clears `signal_event` (the fd [`install_termination_signals`] returned) once it was
/// readable, and returns the number of the termination signal that made it so.
pub fn take_signal(signal_event: RawFd) -> i32 {
    let mut value = 0u64;
    // SAFETY: reads 8 bytes into a u64 from our eventfd.
    unsafe { libc::read(signal_event, (&mut value as *mut u64).cast(), 8) };
    SIGNAL_NUMBER.load(Ordering::SeqCst)
}
