//! Fail-stop: a panic on any thread of vmm stops the VM, and vmm exits with
//! [`exit_status::VMM_PANIC`](super::exit_status::VMM_PANIC) and one line naming the thread
//! and the panic.
//!
//! vmm is built with `panic = "unwind"`, and [`install_panic_hook`] replaces the standard
//! hook (which prints two lines, and through `eprintln!`-like code) with one that:
//!
//! 1. keeps the first panic's description, `thread 'vcpu1' panicked at src/vcpu.rs:10:5:
//!    message`, for the exit line;
//! 2. puts the terminal back (raw mode off), in case nothing else gets to run;
//! 3. asks the running VM, if any ([`stop_on_panic`]), to stop with
//!    [`StopReason::VmmPanic`], which wakes the event loop: it kicks and joins the vCPUs
//!    and vmm exits through its orderly path (API socket removed, console flushed).
//!
//! The panicking thread then unwinds and ends; a vCPU thread that ends that way is joined
//! like the others. A panic on the main thread unwinds to `main`, which catches it: the
//! vCPU threads are stopped and joined on the way ([`super::vcpu_threads::VcpuThreads`]
//! does it when dropped) before guest memory can be unmapped. With `RUST_BACKTRACE` set,
//! the hook also writes a backtrace to stderr. docs/security.md ("Fail-stop") says why
//! unwinding rather than aborting.

use std::any::Any;
use std::io::Write;
use std::panic::PanicHookInfo;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use super::{Lifecycle, StopReason};

/// The first panic of the process, described.
static FIRST_PANIC: OnceLock<String> = OnceLock::new();
/// The VM a panic stops.
static RUNNING_VM: Mutex<Option<Weak<Lifecycle>>> = Mutex::new(None);

/// Replaces the standard panic hook with vmm's (see the module documentation). Call once,
/// first thing in `main`.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(on_panic));
}

/// Makes a panic on any thread stop the VM that `lifecycle` controls.
pub fn stop_on_panic(lifecycle: &Arc<Lifecycle>) {
    *crate::sync::lock(&RUNNING_VM) = Some(Arc::downgrade(lifecycle));
}

/// The first panic of the process, as the exit line says it; `None` if nothing panicked.
pub fn first_panic() -> Option<String> {
    FIRST_PANIC.get().cloned()
}

fn on_panic(info: &PanicHookInfo<'_>) {
    let thread = std::thread::current();
    let location = info
        .location()
        .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
    let report = describe_panic(thread.name(), location.as_deref(), info.payload());
    let _ = FIRST_PANIC.set(report.clone());
    crate::terminal::restore();
    if std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0") {
        let backtrace = std::backtrace::Backtrace::force_capture();
        // Nowhere is left to report a failed write.
        let _ = writeln!(std::io::stderr(), "{report}\n{backtrace}");
    }
    let vm = crate::sync::lock(&RUNNING_VM)
        .as_ref()
        .and_then(Weak::upgrade);
    if let Some(lifecycle) = vm {
        lifecycle.request_stop(StopReason::VmmPanic(report));
    }
}

/// `thread 'NAME' panicked at FILE:LINE:COLUMN: MESSAGE`, on one line.
fn describe_panic(thread: Option<&str>, location: Option<&str>, payload: &dyn Any) -> String {
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(a panic without a message)");
    let message: String = message
        .chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect();
    format!(
        "thread '{}' panicked at {}: {message}",
        thread.unwrap_or("<unnamed>"),
        location.unwrap_or("an unknown place")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_described_on_one_line_with_its_thread() {
        let text: Box<dyn Any> = Box::new("injected panic");
        assert_eq!(
            describe_panic(Some("vcpu1"), Some("src/vcpu.rs:10:5"), text.as_ref()),
            "thread 'vcpu1' panicked at src/vcpu.rs:10:5: injected panic"
        );
        let formatted: Box<dyn Any> = Box::new(format!("bad value {}\nsecond line", 7));
        assert_eq!(
            describe_panic(None, None, formatted.as_ref()),
            "thread '<unnamed>' panicked at an unknown place: bad value 7\\nsecond line"
        );
        let other: Box<dyn Any> = Box::new(42u32);
        assert!(describe_panic(Some("main"), None, other.as_ref())
            .ends_with("(a panic without a message)"));
    }
}
