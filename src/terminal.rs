//! The host terminal, when stdin is one and the guest's console is on it.
//!
//! vmm takes the terminal (raw mode, reading input) only while it is the terminal's
//! foreground process group, and hands it back on every way out: normal exit, error, panic
//! and termination signals. A vmm started in the background (`vmm … &`), under `nohup` or
//! under a service manager never touches the terminal's settings and never reads from it,
//! and is never stopped by the kernel's job control:
//!
//! - `SIGTTOU` is ignored ([`ignore_job_control_stops`]), so writing guest output or a log
//!   line to a terminal with `stty tostop` set goes through instead of stopping vmm. Raw
//!   mode is switched only in the foreground, so ignoring it never lets vmm change the
//!   settings under a shell.
//! - `SIGTTIN` is ignored, so a read from the terminal in the background fails with `EIO`
//!   instead of stopping vmm; the console input then waits for the foreground.
//! - When vmm gets the foreground, the console input takes the terminal. `fg` of a
//!   stopped job sends `SIGCONT`, which [`continue_event`] turns into an eventfd; `fg` of
//!   a job that was running in the background sends nothing (bash, for one), so the
//!   console input also looks every half second while vmm is in the background
//!   ([`crate::console::input`]).
//!
//! The settings restored at exit are those the terminal had the first time vmm made it
//! raw, and they are restored only if vmm is still in the foreground: a shell that took the
//! terminal back (vmm stopped and put in the background) set its own.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Mutex, OnceLock};

use vmm_sys_util::eventfd::EventFd;

use crate::lifecycle::SetupError;

/// The terminal's settings before vmm first made it raw.
static ORIGINAL: Mutex<Option<libc::termios>> = Mutex::new(None);
/// Raw mode is on, set by vmm in the foreground.
static RAW: AtomicBool = AtomicBool::new(false);
/// The eventfd the `SIGCONT` handler writes, or -1.
static CONTINUE_EVENT_FD: AtomicI32 = AtomicI32::new(-1);

/// Ignores `SIGTTOU` and `SIGTTIN`, so that the terminal's job control never stops vmm
/// (see the module documentation). For the whole process, before anything is written.
pub fn ignore_job_control_stops() {
    for signum in [libc::SIGTTOU, libc::SIGTTIN] {
        // SAFETY: sets the disposition of a valid signal to SIG_IGN; no handler runs.
        unsafe { libc::signal(signum, libc::SIG_IGN) };
    }
}

/// Whether stdin is a terminal.
pub fn stdin_is_terminal() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(libc::STDIN_FILENO) == 1 }
}

/// Whether vmm may read and configure the terminal on stdin without being stopped by job
/// control: its process group is the terminal's foreground group, or the terminal is not
/// vmm's controlling terminal at all (job control signals come only from that one; an
/// init or a supervisor may hand a serial line to a process without a session).
pub fn is_foreground() -> bool {
    // SAFETY: tcgetpgrp only queries; it fails (-1) when stdin is no terminal, is a
    // terminal other than the controlling one (ENOTTY), or has no foreground group.
    let foreground = unsafe { libc::tcgetpgrp(libc::STDIN_FILENO) };
    if foreground == -1 {
        let not_controlling = std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOTTY);
        return not_controlling && stdin_is_terminal();
    }
    // SAFETY: getpgrp only queries and cannot fail.
    foreground == unsafe { libc::getpgrp() }
}

/// Puts the terminal on stdin in raw mode if vmm is its foreground process; returns
/// whether raw mode is on. The first call saves the settings to restore.
pub fn enter_raw_mode() -> bool {
    if RAW.load(Ordering::SeqCst) {
        return true;
    }
    if !stdin_is_terminal() || !is_foreground() {
        return false;
    }
    let mut original = crate::sync::lock(&ORIGINAL);
    if original.is_none() {
        // SAFETY: termios is plain data, filled by tcgetattr for a valid descriptor.
        let mut current: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut current) } != 0 {
            return false;
        }
        *original = Some(current);
        let _ = ORIGINAL_FOR_SIGNAL_HANDLERS.set(current);
    }
    let Some(mut raw) = *original else {
        return false;
    };
    // SAFETY: cfmakeraw only edits the struct it is given.
    unsafe { libc::cfmakeraw(&mut raw) };
    // SAFETY: sets attributes on the terminal on stdin from a valid struct.
    if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
        return false;
    }
    RAW.store(true, Ordering::SeqCst);
    true
}

/// Notes that vmm lost the foreground (it was stopped and put in the background): the
/// shell that took the terminal set its own settings, which must not be "restored" later.
pub fn left_foreground() {
    RAW.store(false, Ordering::SeqCst);
}

/// Restores the terminal's settings if vmm made it raw and is still in the foreground.
/// Safe to call more than once, from any thread.
pub fn restore() {
    if !RAW.swap(false, Ordering::SeqCst) || !is_foreground() {
        return;
    }
    let original = *crate::sync::lock(&ORIGINAL);
    if let Some(original) = original {
        // SAFETY: restores attributes read from the same terminal.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &original) };
    }
}

/// Whether raw mode is on.
pub fn is_raw() -> bool {
    RAW.load(Ordering::SeqCst)
}

extern "C" fn on_continue(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let fd = CONTINUE_EVENT_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; the eventfd is never closed (leaked on
        // purpose) and the buffer is 8 valid bytes.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

/// An eventfd that becomes readable each time vmm is continued (`SIGCONT`, which `fg`
/// and `bg` send); later calls return the same one.
pub fn continue_event() -> Result<RawFd, SetupError> {
    let installed = CONTINUE_EVENT_FD.load(Ordering::SeqCst);
    if installed >= 0 {
        return Ok(installed);
    }
    let event = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
        .map_err(SetupError::io("the SIGCONT event"))?;
    let fd = event.as_raw_fd();
    // The handler may run at any time until exit, so the eventfd is never closed.
    std::mem::forget(event);
    CONTINUE_EVENT_FD.store(fd, Ordering::SeqCst);
    // SAFETY: sigaction is plain data; zeroed is a valid empty mask and no flags.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_continue as *const () as libc::sighandler_t;
    // SA_RESTART: `fg` may come at any time, and no thread should see a system call fail
    // with EINTR because of it.
    action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    // SAFETY: installs a handler that only writes an eventfd; `action` is initialised.
    if unsafe { libc::sigaction(libc::SIGCONT, &action, std::ptr::null_mut()) } != 0 {
        return Err(SetupError {
            what: "the SIGCONT handler",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(fd)
}

/// Clears the eventfd [`continue_event`] returned.
pub fn ack_continue(event: RawFd) {
    let mut value = 0u64;
    // SAFETY: reads 8 bytes into a u64 from our eventfd.
    unsafe { libc::read(event, (&mut value as *mut u64).cast(), 8) };
}

/// Restores the terminal when dropped.
pub struct TerminalGuard {
    _private: (),
}

impl TerminalGuard {
    /// A guard for whatever [`enter_raw_mode`] does while it lives.
    pub fn new() -> TerminalGuard {
        TerminalGuard { _private: () }
    }
}

impl Default for TerminalGuard {
    fn default() -> Self {
        TerminalGuard::new()
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore();
    }
}

/// The settings [`restore`] would put back, for [`restore_in_signal_handler`], which may
/// take no lock: set once, the first time vmm makes the terminal raw.
static ORIGINAL_FOR_SIGNAL_HANDLERS: OnceLock<libc::termios> = OnceLock::new();

/// Puts back the settings raw mode replaced, if raw mode is on, from a signal handler
/// (the report of a refused system call): no lock, no allocation, one `ioctl(TCSETS)`.
pub fn restore_in_signal_handler() {
    if !RAW.load(Ordering::SeqCst) {
        return;
    }
    if let Some(original) = ORIGINAL_FOR_SIGNAL_HANDLERS.get() {
        // SAFETY: tcsetattr is async-signal-safe; it sets attributes on stdin from settings
        // read from it.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, original) };
    }
}
