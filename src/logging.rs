//! Warnings a guest can provoke at will. Each call site of [`warn_once!`](crate::warn_once) prints at most
//! once for the life of the process, so a hostile or broken guest cannot flood stderr.

use std::sync::atomic::{AtomicBool, Ordering};

/// Remembers whether a message was already printed.
#[derive(Debug, Default)]
pub struct LogOnce(AtomicBool);

impl LogOnce {
    pub const fn new() -> Self {
        LogOnce(AtomicBool::new(false))
    }

    /// True the first time it is called, false ever after.
    pub fn first(&self) -> bool {
        !self.0.swap(true, Ordering::Relaxed)
    }
}

/// Prints `vmm: <message>` to stderr the first time this call site is reached.
#[macro_export]
macro_rules! warn_once {
    ($($arg:tt)*) => {{
        static ONCE: $crate::logging::LogOnce = $crate::logging::LogOnce::new();
        if ONCE.first() {
            eprintln!("vmm: {}", format_args!($($arg)*));
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_is_true_only_once() {
        let once = LogOnce::new();
        assert!(once.first());
        assert!(!once.first());
        assert!(!once.first());
    }
}
