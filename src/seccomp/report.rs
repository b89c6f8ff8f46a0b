//! The report of a refused system call. Under `--seccomp enforce` the kernel answers a
//! call that the thread's filter refuses with SIGSYS on that thread; the handler here
//! writes one line naming the call and the thread, puts the terminal back, and ends vmm
//! with status [`SECCOMP_VIOLATION`] (159):
//!
//! ```text
//! vmm: thread vcpu0 made a system call its seccomp filter refuses: getppid (number 110)
//! ```
//!
//! A thread that made a refused call is not to be trusted any further, so nothing else
//! runs: no orderly stop, and the API socket file stays behind (the next vmm on that path
//! replaces it). One exception: on a thread that is already panicking, the refused call
//! fails with `EPERM` instead. Printing a panic's backtrace (`RUST_BACKTRACE`) reads the
//! executable and the working directory, which no filter allows; the panic is the cause,
//! and it goes on to be reported as one (with an unresolved backtrace).
//!
//! The handler runs under the filter of the thread that failed, so it makes
//! only calls every filter allows (`write`, `ioctl(TCSETS)` on stdin, `exit_group`), and it
//! must be async-signal-safe: the thread's name waits for it in a thread-local buffer
//! filled when the thread confined itself, the line is assembled in a buffer on the stack,
//! and the call's name comes from a table (`syscalls`), without allocating or locking.

use std::cell::Cell;

use syscalls::Sysno;

use crate::lifecycle::exit_status::SECCOMP_VIOLATION;

/// The call the `seccomp-violation:<thread>` test hook makes: harmless, and in no list
/// (a unit test checks), so every filter refuses it.
pub const REFUSED_BY_EVERY_FILTER: Sysno = Sysno::getppid;

/// Longest thread name kept; Linux's own thread names are at most 15 bytes.
const NAME_CAPACITY: usize = 32;

/// `si_code` of a SIGSYS sent by a seccomp filter (the kernel's `SYS_SECCOMP`).
const SYS_SECCOMP: i32 = 1;

thread_local! {
    /// This thread's name, NUL-padded, for the handler to read without a system call.
    static THREAD_NAME: Cell<[u8; NAME_CAPACITY]> = const { Cell::new([0; NAME_CAPACITY]) };
}

/// Records the calling thread's name for the report. Called when a thread confines
/// itself, before its filter goes in.
pub fn set_thread_name(name: &str) {
    let mut stored = [0u8; NAME_CAPACITY];
    let len = name.len().min(NAME_CAPACITY - 1);
    stored[..len].copy_from_slice(&name.as_bytes()[..len]);
    THREAD_NAME.with(|cell| cell.set(stored));
}

/// Makes [`REFUSED_BY_EVERY_FILTER`], for the test hook.
pub fn make_refused_call() {
    // SAFETY: getppid takes no arguments and changes nothing.
    unsafe { libc::syscall(i64::from(REFUSED_BY_EVERY_FILTER.id())) };
}

/// Installs the SIGSYS handler for the whole process.
pub fn install_handler() -> Result<(), vmm_sys_util::errno::Error> {
    vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, on_sigsys)
}

/// The fields of a SIGSYS `siginfo_t` on x86_64 (the kernel's `_sigsys` member of the
/// union, which starts 8-byte aligned after three ints).
#[repr(C)]
#[allow(dead_code)] // The layout needs every field; the handler reads two.
struct SigsysInfo {
    signo: i32,
    errno: i32,
    code: i32,
    call_addr: *mut libc::c_void,
    syscall: i32,
    arch: u32,
}

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: for SIGSYS the kernel passes a valid siginfo_t whose union holds the sigsys
    // fields, which SigsysInfo lays out; only plain integers are read.
    let (code, syscall) = unsafe {
        let info = &*(info as *const SigsysInfo);
        (info.code, info.syscall)
    };
    // Reads a thread-local counter and an atomic: no system call, no lock.
    if code == SYS_SECCOMP && std::thread::panicking() {
        // SAFETY: with SA_SIGINFO the third argument is the interrupted thread's
        // ucontext_t; the refused call was not made, and the value left in RAX when the
        // handler returns is what the call returns.
        unsafe {
            let context = &mut *context.cast::<libc::ucontext_t>();
            context.uc_mcontext.gregs[libc::REG_RAX as usize] = -i64::from(libc::EPERM);
        }
        return;
    }
    let mut line = Line::new();
    if code == SYS_SECCOMP {
        let name = THREAD_NAME.with(Cell::get);
        write_report(&mut line, &name, syscall);
    } else {
        line.push(b"vmm: received SIGSYS from outside vmm\n");
    }
    crate::terminal::restore_in_signal_handler();
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is valid for its
    // length. Nothing is left to do if the write fails.
    unsafe {
        libc::write(libc::STDERR_FILENO, line.bytes().as_ptr().cast(), line.len);
        libc::_exit(i32::from(SECCOMP_VIOLATION));
    }
}

/// Assembles the report of a refused call in `line`: the thread's (NUL-padded) name, and
/// the call's name and number.
fn write_report(line: &mut Line, thread_name: &[u8], syscall: i32) {
    let name_len = thread_name
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(thread_name.len());
    line.push(b"vmm: thread ");
    if name_len == 0 {
        line.push(b"(unnamed)");
    } else {
        line.push(&thread_name[..name_len]);
    }
    line.push(b" made a system call its seccomp filter refuses: ");
    let call = usize::try_from(syscall).ok().and_then(Sysno::new);
    line.push(call.map_or("unknown", |c| c.name()).as_bytes());
    line.push(b" (number ");
    line.push_decimal(i64::from(syscall));
    line.push(b")\n");
}

/// A line assembled without allocating: bytes beyond its capacity are dropped, except
/// that it always ends in a newline once one was pushed.
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    fn new() -> Line {
        Line {
            buf: [0; 256],
            len: 0,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let room = self.buf.len() - self.len;
        let taken = bytes.len().min(room);
        self.buf[self.len..self.len + taken].copy_from_slice(&bytes[..taken]);
        self.len += taken;
        if taken < bytes.len() && bytes.last() == Some(&b'\n') {
            self.buf[self.buf.len() - 1] = b'\n';
        }
    }

    fn push_decimal(&mut self, value: i64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut rest = value.unsigned_abs();
        loop {
            at -= 1;
            digits[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        if value < 0 {
            self.push(b"-");
        }
        self.push(&digits[at..]);
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(name: &str, syscall: i32) -> String {
        let mut stored = [0u8; NAME_CAPACITY];
        stored[..name.len()].copy_from_slice(name.as_bytes());
        let mut line = Line::new();
        write_report(&mut line, &stored, syscall);
        String::from_utf8(line.bytes().to_vec()).unwrap()
    }

    #[test]
    fn the_report_names_the_thread_and_the_call() {
        assert_eq!(
            report("vcpu0", 110),
            "vmm: thread vcpu0 made a system call its seccomp filter refuses: getppid (number 110)\n"
        );
        assert_eq!(
            report("vmm-api", 257),
            "vmm: thread vmm-api made a system call its seccomp filter refuses: openat (number 257)\n"
        );
    }

    #[test]
    fn numbers_without_a_name_and_threads_without_one_still_make_a_line() {
        assert_eq!(
            report("", 4000),
            "vmm: thread (unnamed) made a system call its seccomp filter refuses: unknown (number 4000)\n"
        );
        assert!(report("main", -1).contains("unknown (number -1)"));
        assert!(report("main", i32::MIN).contains("(number -2147483648)"));
    }

    #[test]
    fn a_line_too_long_is_cut_but_still_ends_the_line() {
        let mut line = Line::new();
        line.push(&[b'x'; 300]);
        line.push(b"\n");
        assert_eq!(line.len, 256);
        assert_eq!(line.bytes().last(), Some(&b'\n'));
    }

    #[test]
    fn long_thread_names_are_cut_to_fit() {
        set_thread_name(&"n".repeat(100));
        let stored = THREAD_NAME.with(Cell::get);
        assert_eq!(stored[NAME_CAPACITY - 1], 0);
        assert_eq!(stored[..NAME_CAPACITY - 1], [b'n'; NAME_CAPACITY - 1]);
    }
}
