//! What each kind of thread may ask of the kernel, and why. docs/security.md has the same
//! lists as tables; keep the two in step.
//!
//! A list is every system call the thread makes once it is confined, including those the
//! C library and Rust's runtime make for it (allocating memory, waiting on a lock, ending
//! the thread). Where one argument separates what the thread needs from what an attacker
//! would want (an ioctl number, `madvise` advice, `fallocate` mode, a signal number, mmap
//! protection), only those argument values are allowed. Calls that open files, create
//! sockets, fork or run programs are in no list: every path that needs them (loading the
//! kernel, creating the VM, binding the API socket) runs before the filters go in.
//!
//! The numbers are x86_64's, the only architecture vmm runs on.

use std::collections::BTreeMap;

use seccompiler::{BackendError, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};
use syscalls::Sysno;

use super::ThreadKind;

// The KVM ioctls a vCPU thread makes once it runs, numbered as in the kernel's
// include/uapi/linux/kvm.h (KVMIO is 0xAE).
const KVMIO: u32 = kvm_bindings::KVMIO;
vmm_sys_util::ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_bindings::kvm_regs);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_bindings::kvm_mp_state);
vmm_sys_util::ioctl_io_nr!(KVM_KVMCLOCK_CTRL, KVMIO, 0xad);

/// What the lists depend on that is only known when vmm runs.
#[derive(Debug, Clone, Copy)]
pub struct ProcessFacts {
    /// vmm's process id: threads may send signals within vmm only.
    pub pid: u32,
    /// The signal that kicks a vCPU out of `KVM_RUN` ([`crate::vcpu::kick_signal`]).
    pub kick_signal: i32,
}

impl ProcessFacts {
    pub fn of_this_process() -> ProcessFacts {
        ProcessFacts {
            pid: std::process::id(),
            kick_signal: crate::vcpu::kick_signal(),
        }
    }
}

/// The system calls one kind of thread may make, each with the arguments it may take.
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    calls: BTreeMap<Sysno, Arguments>,
}

#[derive(Debug, Clone)]
enum Arguments {
    Any,
    /// Only arguments that match one of the rules (a rule matches when all its conditions
    /// hold).
    OneOf(Vec<SeccompRule>),
}

impl AllowList {
    /// Allows `call` with any arguments.
    fn allow(&mut self, call: Sysno) {
        self.calls.insert(call, Arguments::Any);
    }

    /// Allows `call` when all `conditions` hold, besides what was allowed already.
    fn allow_if(
        &mut self,
        call: Sysno,
        conditions: Vec<SeccompCondition>,
    ) -> Result<(), BackendError> {
        let rule = SeccompRule::new(conditions)?;
        match self
            .calls
            .entry(call)
            .or_insert_with(|| Arguments::OneOf(Vec::new()))
        {
            Arguments::Any => {}
            Arguments::OneOf(rules) => rules.push(rule),
        }
        Ok(())
    }

    /// Whether `call` is allowed with some arguments.
    pub fn allows(&self, call: Sysno) -> bool {
        self.calls.contains_key(&call)
    }

    /// Whether `call` is allowed whatever its arguments.
    pub fn allows_any_arguments(&self, call: Sysno) -> bool {
        matches!(self.calls.get(&call), Some(Arguments::Any))
    }

    /// Every call allowed, in number order.
    pub fn calls(&self) -> impl Iterator<Item = Sysno> + '_ {
        self.calls.keys().copied()
    }

    /// The form seccompiler compiles: an empty rule list allows any arguments.
    pub fn into_rules(self) -> BTreeMap<i64, Vec<SeccompRule>> {
        self.calls
            .into_iter()
            .map(|(call, arguments)| {
                let rules = match arguments {
                    Arguments::Any => Vec::new(),
                    Arguments::OneOf(rules) => rules,
                };
                (i64::from(call.id()), rules)
            })
            .collect()
    }
}

/// Argument `index`, an `int` (the low 32 bits, as the kernel reads it), equals `value`.
fn int_arg_is(index: u8, value: u32) -> Result<SeccompCondition, BackendError> {
    SeccompCondition::new(
        index,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        u64::from(value),
    )
}

/// Argument `index`, an `int`, with the bits of `mask` only, equals `value`.
fn int_arg_masked_is(index: u8, mask: u32, value: u32) -> Result<SeccompCondition, BackendError> {
    SeccompCondition::new(
        index,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(u64::from(mask)),
        u64::from(value),
    )
}

/// Argument `index`, a 64-bit `unsigned long`, has none of the bits of `mask` set.
fn long_arg_lacks(index: u8, mask: u64) -> Result<SeccompCondition, BackendError> {
    SeccompCondition::new(
        index,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(mask),
        0,
    )
}

fn as_u32(value: i32) -> u32 {
    value as u32
}

/// The allow list of a thread of `kind`.
pub fn for_thread(kind: ThreadKind, facts: &ProcessFacts) -> Result<AllowList, BackendError> {
    let mut list = AllowList::default();
    every_thread(&mut list, facts)?;
    match kind {
        ThreadKind::Main => main_thread(&mut list, facts)?,
        ThreadKind::Vcpu => vcpu_thread(&mut list)?,
        ThreadKind::Api => api_thread(&mut list, facts)?,
        ThreadKind::Output => output_thread(&mut list),
    }
    Ok(list)
}

/// What every thread needs: memory, locks, time, logging, signals, its own end, and the
/// report of a refused call.
fn every_thread(list: &mut AllowList, facts: &ProcessFacts) -> Result<(), BackendError> {
    // Memory, from glibc's allocator (all threads share its main arena: see
    // `single_malloc_arena`). Nothing may be mapped executable: vmm loads no code once it
    // runs, and a thread that could would be one step from running an attacker's.
    list.allow(Sysno::brk);
    list.allow_if(
        Sysno::mmap,
        vec![long_arg_lacks(2, libc::PROT_EXEC as u64)?],
    )?;
    list.allow_if(
        Sysno::mprotect,
        vec![long_arg_lacks(2, libc::PROT_EXEC as u64)?],
    )?;
    list.allow(Sysno::mremap);
    list.allow(Sysno::munmap);
    // Freeing memory (the allocator, a thread's stack when it ends) and giving guest
    // pages back to the host (the balloon, on private anonymous memory). Other advice
    // (MADV_REMOVE, MADV_HWPOISON...) is not needed.
    list.allow_if(
        Sysno::madvise,
        vec![int_arg_is(2, as_u32(libc::MADV_DONTNEED))?],
    )?;

    // Locks, condition variables and joins: the plain wait and wake operations, with or
    // without the private and realtime-clock flags; not the requeue and priority
    // inheritance operations, which have had exploitable bugs and which vmm never uses.
    let futex_command = as_u32(libc::FUTEX_CMD_MASK);
    for op in [
        libc::FUTEX_WAIT,
        libc::FUTEX_WAKE,
        libc::FUTEX_WAIT_BITSET,
        libc::FUTEX_WAKE_BITSET,
    ] {
        list.allow_if(
            Sysno::futex,
            vec![int_arg_masked_is(1, futex_command, as_u32(op))?],
        )?;
    }
    // The standard library's channels back off with sched_yield when contended.
    list.allow(Sysno::sched_yield);

    // Time for log lines and timeouts, when the vDSO cannot answer (as under some
    // nested hypervisors); random keys for hash maps.
    list.allow(Sysno::clock_gettime);
    list.allow(Sysno::getrandom);

    // Writing: log lines to stderr, eventfds (interrupts, stop requests), console output.
    list.allow(Sysno::write);
    // Closing what the thread owns when it is dropped; debug builds of Rust's standard
    // library ask F_GETFD of every descriptor before closing it.
    list.allow(Sysno::close);
    list.allow_if(Sysno::fcntl, vec![int_arg_is(1, as_u32(libc::F_GETFD))?])?;

    // Signals: a termination signal or a vCPU kick may land on any thread, and its
    // handler returns with rt_sigreturn; glibc blocks signals around pthread_kill and
    // while a thread ends.
    list.allow(Sysno::rt_sigreturn);
    list.allow(Sysno::rt_sigprocmask);
    // abort() (a Rust runtime abort, such as a panic during a panic) signals the thread
    // itself with SIGABRT; without these, it would end as a seccomp violation instead.
    list.allow(Sysno::getpid);
    list.allow(Sysno::gettid);
    list.allow_if(
        Sysno::tgkill,
        vec![
            int_arg_is(0, facts.pid)?,
            int_arg_is(2, as_u32(libc::SIGABRT))?,
        ],
    )?;
    // Rust's handler for SIGSEGV and SIGBUS (a stack overflow or a fault) puts the default
    // action back before the fault repeats, so that vmm ends with that signal.
    for signal in [libc::SIGSEGV, libc::SIGBUS] {
        list.allow_if(Sysno::rt_sigaction, vec![int_arg_is(0, as_u32(signal))?])?;
    }

    // A thread's end: Rust takes down its signal stack, then the thread exits.
    list.allow(Sysno::sigaltstack);
    list.allow(Sysno::exit);
    // The process's end; also how the report of a refused call (report.rs) ends vmm,
    // after restoring the terminal's settings (TCSETS on stdin).
    list.allow(Sysno::exit_group);
    list.allow_if(
        Sysno::ioctl,
        vec![
            int_arg_is(0, as_u32(libc::STDIN_FILENO))?,
            int_arg_is(1, libc::TCSETS as u32)?,
        ],
    )?;
    Ok(())
}

/// Device work that runs on whichever thread touched the device: a vCPU (register
/// accesses, a driver's DRIVER_OK, which processes the queues kicked before it, a queue
/// notification without an ioeventfd) or the event loop (queue notifications, timers).
fn device_work(list: &mut AllowList) -> Result<(), BackendError> {
    // Queue eventfds, drained when a device resets; timers.
    list.allow(Sysno::read);
    // Giving guest pages back to the host on memfd-backed memory: a hole punched in the
    // file, keeping its size. MADV_DONTNEED, for anonymous memory, is allowed above.
    list.allow_if(
        Sysno::fallocate,
        vec![int_arg_is(
            1,
            as_u32(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE),
        )?],
    )?;
    Ok(())
}

/// The main thread: the event loop, then the VM's teardown.
fn main_thread(list: &mut AllowList, facts: &ProcessFacts) -> Result<(), BackendError> {
    device_work(list)?;
    // The event loop: waiting, and adding or removing the fds it watches (console input
    // paused while the UART is full, a broken virtio eventfd).
    list.allow(Sysno::epoll_wait);
    list.allow(Sysno::epoll_ctl);
    // Kicking the vCPUs out of KVM_RUN (the halt probe, stopping): pthread_kill sends the
    // kick signal to a thread of vmm.
    list.allow_if(
        Sysno::tgkill,
        vec![
            int_arg_is(0, facts.pid)?,
            int_arg_is(2, as_u32(facts.kick_signal))?,
        ],
    )?;
    // Waiting between kicks while the vCPUs stop.
    list.allow(Sysno::clock_nanosleep);
    // The console input takes the terminal on stdin only while vmm is its foreground
    // process: asking who that is, reading the settings to restore (TCSETS, which puts
    // them back, is in every list), and re-arming the timer that asks again while vmm is
    // in the background.
    list.allow(Sysno::getpgrp);
    for request in [libc::TIOCGPGRP, libc::TCGETS] {
        list.allow_if(
            Sysno::ioctl,
            vec![
                int_arg_is(0, as_u32(libc::STDIN_FILENO))?,
                int_arg_is(1, request as u32)?,
            ],
        )?;
    }
    list.allow(Sysno::timerfd_settime);
    Ok(())
}

/// A vCPU thread: running the guest, and the device work of its exits.
fn vcpu_thread(list: &mut AllowList) -> Result<(), BackendError> {
    device_work(list)?;
    // Running the guest, the halt probe's questions (is the vCPU halted, with interrupts
    // off?), and telling the guest's kvmclock it was paused (so its watchdog does not take
    // the gap for a lock-up). Every other KVM ioctl was made while building the VM.
    for request in [
        KVM_RUN(),
        KVM_GET_MP_STATE(),
        KVM_GET_REGS(),
        KVM_KVMCLOCK_CTRL(),
    ] {
        list.allow_if(Sysno::ioctl, vec![int_arg_is(1, request as u32)?])?;
    }
    // The balloon's statistics timer, armed when the driver starts the device and
    // disarmed when it resets it.
    list.allow(Sysno::timerfd_settime);
    Ok(())
}

/// An output thread (`vmm-console`, `vmm-log`): waits on its buffer's condition variable
/// (futex) and writes to its descriptor (write, in every list).
fn output_thread(list: &mut AllowList) {
    // Waiting for room when another process sharing the descriptor made it non-blocking.
    list.allow(Sysno::poll);
}

/// The API server: its own event loop over the socket and its connections.
fn api_thread(list: &mut AllowList, facts: &ProcessFacts) -> Result<(), BackendError> {
    list.allow(Sysno::epoll_wait);
    list.allow(Sysno::epoll_ctl);
    // Accepting a connection (always close-on-exec, as Rust's standard library asks),
    // making it non-blocking, and talking on it.
    list.allow_if(
        Sysno::accept4,
        vec![int_arg_is(3, as_u32(libc::SOCK_CLOEXEC))?],
    )?;
    list.allow_if(Sysno::ioctl, vec![int_arg_is(1, libc::FIONBIO as u32)?])?;
    list.allow(Sysno::recvfrom);
    list.allow(Sysno::sendto);
    // PATCH /vm {"state": "Paused"} kicks the vCPUs out of KVM_RUN, as the main thread
    // does to stop them.
    list.allow_if(
        Sysno::tgkill,
        vec![
            int_arg_is(0, facts.pid)?,
            int_arg_is(2, as_u32(facts.kick_signal))?,
        ],
    )?;
    // PATCH /balloon/statistics re-arms the balloon's statistics timer.
    list.allow(Sysno::timerfd_settime);
    // GET /metrics reads the process's resident set size from `/proc/self/statm`, a file
    // opened before the filter was installed; reading at offset 0 needs no seek.
    list.allow(Sysno::pread64);
    // When the server stops, it removes its socket file, after checking that the path
    // still names the socket it created (so that it never removes another's).
    list.allow(Sysno::statx);
    list.allow(Sysno::unlink);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> ProcessFacts {
        ProcessFacts::of_this_process()
    }

    fn list(kind: ThreadKind) -> AllowList {
        for_thread(kind, &facts()).unwrap()
    }

    #[test]
    fn kvm_ioctl_numbers_match_the_kernel_headers() {
        assert_eq!(KVM_RUN(), 0xae80);
        assert_eq!(KVM_GET_REGS(), 0x8090_ae81);
        assert_eq!(KVM_GET_MP_STATE(), 0x8004_ae98);
        assert_eq!(KVM_KVMCLOCK_CTRL(), 0xaead);
    }

    #[test]
    fn no_thread_may_run_programs_open_files_or_create_sockets() {
        let forbidden = [
            Sysno::execve,
            Sysno::execveat,
            Sysno::fork,
            Sysno::vfork,
            Sysno::clone,
            Sysno::clone3,
            Sysno::open,
            Sysno::openat,
            Sysno::openat2,
            Sysno::creat,
            Sysno::socket,
            Sysno::connect,
            Sysno::bind,
            Sysno::ptrace,
            Sysno::process_vm_writev,
            Sysno::memfd_create,
            Sysno::mount,
            Sysno::kill,
            Sysno::seccomp,
            Sysno::prctl,
            Sysno::setuid,
        ];
        for kind in ThreadKind::ALL {
            let list = list(kind);
            for call in forbidden {
                assert!(
                    !list.allows(call),
                    "the {kind} thread may call {}",
                    call.name()
                );
            }
        }
    }

    #[test]
    fn each_thread_has_what_its_job_needs_and_no_more() {
        let vcpu = list(ThreadKind::Vcpu);
        let api = list(ThreadKind::Api);
        let main = list(ThreadKind::Main);

        // Every ioctl is argument-filtered; no thread may make any ioctl it likes.
        for list in [&vcpu, &api, &main] {
            assert!(list.allows(Sysno::ioctl));
            assert!(!list.allows_any_arguments(Sysno::ioctl));
            for call in [
                Sysno::madvise,
                Sysno::mmap,
                Sysno::mprotect,
                Sysno::futex,
                Sysno::tgkill,
                Sysno::fcntl,
                Sysno::rt_sigaction,
            ] {
                assert!(
                    !list.allows_any_arguments(call),
                    "{} is not argument-filtered",
                    call.name()
                );
            }
            assert!(
                list.allows(Sysno::exit_group),
                "the report needs exit_group"
            );
        }
        // Only the threads that run device code discard guest memory by hole punching.
        assert!(vcpu.allows(Sysno::fallocate) && main.allows(Sysno::fallocate));
        assert!(!api.allows(Sysno::fallocate));
        assert!(!vcpu.allows_any_arguments(Sysno::fallocate));
        // Only the API thread talks on sockets, and only the main thread waits in epoll
        // for guest events or kicks vCPUs.
        for call in [
            Sysno::accept4,
            Sysno::recvfrom,
            Sysno::sendto,
            Sysno::unlink,
        ] {
            assert!(api.allows(call));
            assert!(!vcpu.allows(call) && !main.allows(call), "{}", call.name());
        }
        assert!(!vcpu.allows(Sysno::epoll_wait));
        assert!(!vcpu.allows(Sysno::clock_nanosleep));
        // Removing files is the API thread's job at its end, never the guest-facing ones'.
        for call in [Sysno::unlink, Sysno::unlinkat, Sysno::rmdir, Sysno::rename] {
            assert!(!vcpu.allows(call) && !main.allows(call), "{}", call.name());
        }
    }

    #[test]
    fn a_condition_after_any_arguments_keeps_any_arguments() {
        let mut list = AllowList::default();
        list.allow(Sysno::read);
        list.allow_if(Sysno::read, vec![int_arg_is(0, 0).unwrap()])
            .unwrap();
        assert!(list.allows_any_arguments(Sysno::read));
        assert!(list.into_rules()[&i64::from(Sysno::read.id())].is_empty());
    }
}
