//! Puts the host terminal in raw mode while the guest owns the console, and puts it back
//! on every way out: normal exit, error, panic (a hook) and termination signals (the
//! event loop turns them into a normal stop).

use std::sync::{Mutex, OnceLock};

/// The terminal settings to restore, if raw mode is on.
static SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);
/// The same settings for [`restore_in_signal_handler`], which may take no lock.
static SAVED_FOR_SIGNAL_HANDLERS: OnceLock<libc::termios> = OnceLock::new();

/// Raw mode for as long as this value lives.
pub struct RawTerminal {
    _private: (),
}

impl RawTerminal {
    /// Switches stdin to raw mode if it is a terminal; returns `None` if it is not (a
    /// pipe or `/dev/null`), in which case nothing changes.
    pub fn enable() -> Option<RawTerminal> {
        // SAFETY: isatty only inspects the fd.
        if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
            return None;
        }
        // SAFETY: termios is plain data; tcgetattr fills it for a valid fd.
        let mut original: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut original) } != 0 {
            return None;
        }
        let mut raw = original;
        // SAFETY: cfmakeraw only edits the struct it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: sets attributes on a valid terminal fd from a valid struct.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        *SAVED.lock().unwrap_or_else(|p| p.into_inner()) = Some(original);
        let _ = SAVED_FOR_SIGNAL_HANDLERS.set(original);
        install_panic_restore();
        Some(RawTerminal { _private: () })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        restore();
    }
}

/// Restores the saved terminal settings, if any. Safe to call more than once.
pub fn restore() {
    let saved = SAVED.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(original) = saved {
        // SAFETY: restores attributes we read from the same fd.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &original) };
    }
}

/// Puts back the settings raw mode replaced, if it was ever on, from a signal handler
/// (the report of a refused system call): no lock, no allocation, one `ioctl(TCSETS)`.
/// Restoring settings that are already in place changes nothing.
pub fn restore_in_signal_handler() {
    if let Some(original) = SAVED_FOR_SIGNAL_HANDLERS.get() {
        // SAFETY: tcsetattr is async-signal-safe; it sets attributes on stdin from settings
        // read from it.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, original) };
    }
}

fn install_panic_restore() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore();
        previous(info);
    }));
}
