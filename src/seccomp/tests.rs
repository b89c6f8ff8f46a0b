//! The compiled filters, run by the kernel: each check forks a child that installs one
//! filter and makes one call, and the child's end says whether the call got through. The
//! arguments are chosen so that an allowed call fails harmlessly (a bad fd, a null
//! pointer) and a refused one, should a filter let it through by mistake, does no harm.

use std::sync::mpsc;
use std::thread;

use seccompiler::{BpfProgram, SeccompAction};
use syscalls::Sysno;

use super::allow_lists::ProcessFacts;
use super::*;

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Allowed,
    Refused,
}
use Verdict::*;

fn program(kind: ThreadKind, refused: SeccompAction) -> BpfProgram {
    compile(kind, &ProcessFacts::of_this_process(), refused).unwrap()
}

/// Waits for child `pid` and returns its exit code, or the signal that ended it as a
/// negative number.
fn wait_for(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a valid out-parameter.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid, "waitpid failed");
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -libc::WTERMSIG(status)
    }
}

/// In a forked child: no core dump for the SIGSYS that ends a refused call, and the
/// kernel's default action for it (this test process may have the report's handler).
///
/// # Safety
/// Only for a freshly forked child, which must only make async-signal-safe calls.
unsafe fn prepare_child() {
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    libc::setrlimit(libc::RLIMIT_CORE, &no_core);
    libc::signal(libc::SIGSYS, libc::SIG_DFL);
}

/// Whether a thread under `program` may make `call` with `args`.
fn verdict(program: &BpfProgram, call: Sysno, args: [u64; 6]) -> Verdict {
    // SAFETY: the child only makes async-signal-safe calls (setrlimit, signal, prctl and
    // seccomp through apply_filter, which does not allocate, the call under test, _exit).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: see above; `args` are plain integers the kernel checks.
        unsafe {
            prepare_child();
            if seccompiler::apply_filter(program).is_err() {
                libc::_exit(100);
            }
            libc::syscall(
                i64::from(call.id()),
                args[0],
                args[1],
                args[2],
                args[3],
                args[4],
                args[5],
            );
            libc::_exit(0);
        }
    }
    match wait_for(pid) {
        0 => Allowed,
        status if status == -libc::SIGSYS => Refused,
        other => panic!("the child checking {} ended with {other}", call.name()),
    }
}

const NONE: [u64; 6] = [0; 6];
const BAD_FD: u64 = u64::MAX; // -1

fn args(first: &[u64]) -> [u64; 6] {
    let mut all = NONE;
    all[..first.len()].copy_from_slice(first);
    all
}

#[test]
fn every_filter_builds_in_every_mode_and_off_builds_none() {
    for mode in [SeccompMode::Log, SeccompMode::Off] {
        let confinement = Confinement::new(mode).unwrap();
        assert_eq!(confinement.mode(), mode);
        for kind in ThreadKind::ALL {
            assert_eq!(
                confinement.filter(kind).program.is_some(),
                mode != SeccompMode::Off,
                "{kind} in {mode:?}"
            );
        }
    }
    for kind in ThreadKind::ALL {
        assert!(!program(kind, SeccompAction::Trap).is_empty());
    }
}

#[test]
fn ioctls_are_allowed_by_number_per_thread() {
    let vcpu = program(ThreadKind::Vcpu, SeccompAction::Trap);
    let api = program(ThreadKind::Api, SeccompAction::Trap);
    let main = program(ThreadKind::Main, SeccompAction::Trap);
    let kvm_run = u64::from(allow_lists::KVM_RUN() as u32);
    let tcsets: u64 = libc::TCSETS;
    let fionbio: u64 = libc::FIONBIO;
    let tiocsti: u64 = libc::TIOCSTI;

    assert_eq!(
        verdict(&vcpu, Sysno::ioctl, args(&[BAD_FD, kvm_run])),
        Allowed
    );
    assert_eq!(
        verdict(&api, Sysno::ioctl, args(&[BAD_FD, kvm_run])),
        Refused
    );
    assert_eq!(
        verdict(&main, Sysno::ioctl, args(&[BAD_FD, kvm_run])),
        Refused
    );
    assert_eq!(
        verdict(&api, Sysno::ioctl, args(&[BAD_FD, fionbio])),
        Allowed
    );
    assert_eq!(
        verdict(&vcpu, Sysno::ioctl, args(&[BAD_FD, fionbio])),
        Refused
    );
    // Typing into the terminal is nobody's job; restoring its settings (with a null
    // pointer here: EFAULT) is everybody's, on stdin only.
    for program in [&vcpu, &api, &main] {
        assert_eq!(verdict(program, Sysno::ioctl, args(&[0, tcsets])), Allowed);
        assert_eq!(verdict(program, Sysno::ioctl, args(&[3, tcsets])), Refused);
        assert_eq!(verdict(program, Sysno::ioctl, args(&[0, tiocsti])), Refused);
    }
    // The kernel reads the request as 32 bits; so does the filter.
    let high_bits = (1u64 << 32) | kvm_run;
    assert_eq!(
        verdict(&vcpu, Sysno::ioctl, args(&[BAD_FD, high_bits])),
        Allowed
    );
}

#[test]
fn memory_may_be_freed_but_never_made_executable() {
    let vcpu = program(ThreadKind::Vcpu, SeccompAction::Trap);
    let main = program(ThreadKind::Main, SeccompAction::Trap);
    let api = program(ThreadKind::Api, SeccompAction::Trap);
    let dontneed = libc::MADV_DONTNEED as u64;
    let anonymous = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
    let read = libc::PROT_READ as u64;
    let read_exec = (libc::PROT_READ | libc::PROT_EXEC) as u64;
    let punch = (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) as u64;

    for program in [&vcpu, &main, &api] {
        assert_eq!(
            verdict(program, Sysno::madvise, args(&[0, 0, dontneed])),
            Allowed
        );
        for advice in [libc::MADV_REMOVE, libc::MADV_HWPOISON, libc::MADV_DOFORK] {
            let advice = advice as u64;
            assert_eq!(
                verdict(program, Sysno::madvise, args(&[0, 0, advice])),
                Refused
            );
        }
        let mmap = |prot| args(&[0, 4096, prot, anonymous, BAD_FD, 0]);
        assert_eq!(verdict(program, Sysno::mmap, mmap(read)), Allowed);
        assert_eq!(verdict(program, Sysno::mmap, mmap(read_exec)), Refused);
        assert_eq!(
            verdict(program, Sysno::mprotect, args(&[0, 0, read_exec])),
            Refused
        );
    }
    // Hole punching (memfd-backed guest memory) on the threads that run device code.
    for program in [&vcpu, &main] {
        assert_eq!(
            verdict(program, Sysno::fallocate, args(&[BAD_FD, punch])),
            Allowed
        );
        assert_eq!(
            verdict(program, Sysno::fallocate, args(&[BAD_FD, 0])),
            Refused
        );
        let zero_range = libc::FALLOC_FL_ZERO_RANGE as u64;
        assert_eq!(
            verdict(program, Sysno::fallocate, args(&[BAD_FD, zero_range])),
            Refused
        );
    }
    assert_eq!(
        verdict(&api, Sysno::fallocate, args(&[BAD_FD, punch])),
        Refused
    );
}

#[test]
fn signals_stay_inside_vmm() {
    let main = program(ThreadKind::Main, SeccompAction::Trap);
    let vcpu = program(ThreadKind::Vcpu, SeccompAction::Trap);
    let facts = ProcessFacts::of_this_process();
    let pid = u64::from(facts.pid);
    let kick = facts.kick_signal as u64;
    let abort = libc::SIGABRT as u64;
    // Thread id 0 makes every tgkill that passes the filter fail with EINVAL.
    assert_eq!(
        verdict(&main, Sysno::tgkill, args(&[pid, 0, kick])),
        Allowed
    );
    assert_eq!(
        verdict(&vcpu, Sysno::tgkill, args(&[pid, 0, kick])),
        Refused
    );
    assert_eq!(
        verdict(&vcpu, Sysno::tgkill, args(&[pid, 0, abort])),
        Allowed
    );
    assert_eq!(verdict(&main, Sysno::tgkill, args(&[1, 0, kick])), Refused);
    assert_eq!(
        verdict(&main, Sysno::tgkill, args(&[pid, 0, libc::SIGKILL as u64])),
        Refused
    );
    assert_eq!(verdict(&main, Sysno::kill, args(&[1, 0])), Refused);
    // Only the default action for SIGSEGV and SIGBUS may be set, and no SIGSYS handler
    // may replace the report's.
    let segv = libc::SIGSEGV as u64;
    let sigsys = libc::SIGSYS as u64;
    assert_eq!(
        verdict(&vcpu, Sysno::rt_sigaction, args(&[segv, 0, 0, 8])),
        Allowed
    );
    assert_eq!(
        verdict(&vcpu, Sysno::rt_sigaction, args(&[sigsys, 0, 0, 8])),
        Refused
    );
}

#[test]
fn locks_may_wait_and_wake_but_not_requeue() {
    let wake_private = (libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG) as u64;
    let wait_bitset_realtime = (libc::FUTEX_WAIT_BITSET | libc::FUTEX_CLOCK_REALTIME) as u64;
    for kind in ThreadKind::ALL {
        let program = program(kind, SeccompAction::Trap);
        assert_eq!(
            verdict(&program, Sysno::futex, args(&[0, wake_private])),
            Allowed
        );
        // A null address: EFAULT at once, no wait.
        assert_eq!(
            verdict(&program, Sysno::futex, args(&[0, wait_bitset_realtime])),
            Allowed
        );
        for op in [
            libc::FUTEX_CMP_REQUEUE,
            libc::FUTEX_LOCK_PI,
            libc::FUTEX_WAKE_OP,
        ] {
            assert_eq!(
                verdict(&program, Sysno::futex, args(&[0, op as u64])),
                Refused
            );
        }
    }
}

#[test]
fn sockets_are_the_api_threads_only_and_no_thread_opens_or_runs_anything() {
    let api = program(ThreadKind::Api, SeccompAction::Trap);
    let cloexec = libc::SOCK_CLOEXEC as u64;
    assert_eq!(
        verdict(&api, Sysno::accept4, args(&[BAD_FD, 0, 0, cloexec])),
        Allowed
    );
    assert_eq!(
        verdict(&api, Sysno::accept4, args(&[BAD_FD, 0, 0, 0])),
        Refused
    );
    assert_eq!(verdict(&api, Sysno::unlink, NONE), Allowed);
    for kind in ThreadKind::ALL {
        let program = program(kind, SeccompAction::Trap);
        let unix = libc::AF_UNIX as u64;
        let stream = libc::SOCK_STREAM as u64;
        assert_eq!(
            verdict(&program, Sysno::socket, args(&[unix, stream])),
            Refused
        );
        let cwd = libc::AT_FDCWD as u64;
        assert_eq!(verdict(&program, Sysno::openat, args(&[cwd, 0])), Refused);
        assert_eq!(verdict(&program, Sysno::execve, NONE), Refused);
        assert_eq!(
            verdict(
                &program,
                Sysno::fcntl,
                args(&[BAD_FD, libc::F_GETFD as u64])
            ),
            Allowed
        );
        assert_eq!(
            verdict(
                &program,
                Sysno::fcntl,
                args(&[BAD_FD, libc::F_SETFL as u64])
            ),
            Refused
        );
        assert_eq!(
            verdict(&program, report::REFUSED_BY_EVERY_FILTER, NONE),
            Refused
        );
        assert_eq!(verdict(&program, Sysno::write, args(&[BAD_FD])), Allowed);
    }
    let vcpu = program(ThreadKind::Vcpu, SeccompAction::Trap);
    assert_eq!(verdict(&vcpu, Sysno::unlink, NONE), Refused);
}

#[test]
fn log_mode_lets_a_refused_call_through() {
    for kind in ThreadKind::ALL {
        let program = program(kind, SeccompAction::Log);
        assert_eq!(
            verdict(&program, report::REFUSED_BY_EVERY_FILTER, NONE),
            Allowed
        );
    }
}

#[test]
fn a_refused_call_ends_the_process_with_159_and_one_line() {
    let program = program(ThreadKind::Vcpu, SeccompAction::Trap);
    let mut pipe = [0; 2];
    // SAFETY: pipe fills the two-element array.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    // SAFETY: the child makes only async-signal-safe calls: set_thread_name writes a
    // thread-local buffer, install_handler is sigaction.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: see above.
        unsafe {
            prepare_child();
            libc::dup2(pipe[1], libc::STDERR_FILENO);
            report::set_thread_name("vcpu7");
            if report::install_handler().is_err() || seccompiler::apply_filter(&program).is_err() {
                libc::_exit(100);
            }
            report::make_refused_call();
            libc::_exit(0);
        }
    }
    // SAFETY: the parent's copy of the write end is ours to close.
    unsafe { libc::close(pipe[1]) };
    let status = wait_for(pid);
    let mut out = [0u8; 512];
    // SAFETY: reads into a local buffer of its length from our pipe.
    let n = unsafe { libc::read(pipe[0], out.as_mut_ptr().cast(), out.len()) };
    // SAFETY: closes our read end.
    unsafe { libc::close(pipe[0]) };
    assert_eq!(status, 159);
    assert_eq!(
        String::from_utf8_lossy(&out[..n.max(0) as usize]),
        "vmm: thread vcpu7 made a system call its seccomp filter refuses: getppid (number 110)\n"
    );
}

#[test]
fn a_confined_thread_runs_its_body_and_ends_under_its_filter() {
    // The whole life of a thread after its filter went in, as a vCPU thread lives it:
    // locks, a channel, logging-sized allocations, and ending (signal stack, stack
    // memory, exit). A refused call would end this test process with SIGSYS.
    let confinement = Confinement::new(SeccompMode::Enforce).unwrap();
    let (sender, receiver) = mpsc::channel();
    let builder = thread::Builder::new().name("vcpu9".to_string());
    let handle = spawn_confined(builder, confinement.filter(ThreadKind::Vcpu), move || {
        let text = format!("{:?}", vec![7u8; 1000]);
        sender.send(text.len()).unwrap();
    })
    .unwrap();
    assert!(receiver.recv().unwrap() > 1000);
    handle.join().unwrap();
}

#[test]
fn off_spawns_a_thread_with_no_filter_of_its_own() {
    fn seccomp_lines(status: &str) -> Vec<String> {
        status
            .lines()
            .filter(|l| l.starts_with("Seccomp"))
            .map(str::to_string)
            .collect()
    }
    let (sender, receiver) = mpsc::channel();
    let builder = thread::Builder::new().name("unconfined".to_string());
    let handle = spawn_confined(builder, ThreadFilter::none(), move || {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        sender.send(status).unwrap();
    })
    .unwrap();
    let spawned = receiver.recv().unwrap();
    handle.join().unwrap();
    // As confined as the thread that started it (a test runner may itself run under a
    // container's filter), and no more.
    let spawner = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    assert!(!seccomp_lines(&spawned).is_empty(), "{spawned}");
    assert_eq!(seccomp_lines(&spawned), seccomp_lines(&spawner));
}

/// The API as vmm serves it, over a VM with a real balloon and no guest, and the metric
/// sources `VmController` registers (the process's RSS file is opened here, before any
/// filter, as in vmm).
struct BalloonOnlyVm {
    balloon: Arc<crate::devices::virtio::balloon::BalloonHandle>,
    metrics: crate::metrics::Registry,
}

impl BalloonOnlyVm {
    fn new(balloon: crate::devices::virtio::balloon::BalloonHandle) -> Self {
        use crate::devices::virtio::balloon::metrics::BalloonMetrics;
        use crate::metrics::{ProcessMetrics, Registry};

        let balloon = Arc::new(balloon);
        let metrics = Registry::new();
        let process = ProcessMetrics::new(std::time::Instant::now());
        metrics.register("process", Arc::new(process));
        let source = BalloonMetrics::new(balloon.clone());
        metrics.register("balloon", Arc::new(source));
        BalloonOnlyVm { balloon, metrics }
    }
}

impl crate::api::VmControl for BalloonOnlyVm {
    fn info(&self) -> crate::api::VmInfo {
        crate::api::VmInfo {
            id: "seccomp-test".to_string(),
            vcpus: 1,
            memory_bytes: 64 << 20,
            state: "Running",
            uptime_ms: 0,
        }
    }

    fn balloon(&self) -> Option<Arc<dyn crate::devices::virtio::balloon::BalloonControl>> {
        Some(self.balloon.clone())
    }

    fn request_shutdown(&self) {}

    fn pause(&self) -> Result<(), crate::api::VmRequestError> {
        Err(crate::api::VmRequestError::Conflict("no vCPUs here".into()))
    }

    fn resume(&self) -> Result<(), crate::api::VmRequestError> {
        Err(crate::api::VmRequestError::Conflict("no vCPUs here".into()))
    }

    fn send_ctrl_alt_del(&self) -> Result<(), crate::api::VmRequestError> {
        Err(crate::api::VmRequestError::Conflict(
            "no keyboard here".into(),
        ))
    }

    fn metrics(&self) -> &crate::metrics::Registry {
        &self.metrics
    }
}

/// Sends one request with `Connection: close` and returns the status line of the answer.
fn status_line(socket: &std::path::Path, method: &str, path: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: vmm\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer.lines().next().unwrap_or_default().to_string()
}

#[test]
fn the_api_server_serves_and_stops_under_its_filter() {
    use crate::api::{ApiServer, ServerLimits};
    use crate::devices::virtio::balloon::{Balloon, BalloonConfig, BalloonHandle};
    use std::sync::Mutex;

    let confinement = Confinement::new(SeccompMode::Enforce).unwrap();
    let config = "stats=1".parse::<BalloonConfig>().unwrap();
    let balloon = Balloon::new(config, 64 << 20).unwrap();
    let vm = BalloonOnlyVm::new(BalloonHandle::new(Arc::new(Mutex::new(balloon))));
    let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/vmm-seccomp-").unwrap();
    let socket = dir.as_path().join("api.sock");
    let server = ApiServer::start_confined(
        &socket,
        Arc::new(vm),
        ServerLimits::default(),
        confinement.filter(ThreadKind::Api),
    )
    .unwrap();
    // Accepting, reading, answering, refusing, the balloon's timer: a refused call would
    // end this test process with status 159.
    assert!(status_line(&socket, "GET", "/vm", "").contains("200"));
    assert!(status_line(&socket, "GET", "/nowhere", "").contains("404"));
    let interval = "{\"stats_polling_interval_s\": 3}";
    assert!(status_line(&socket, "PATCH", "/balloon/statistics", interval).contains("204"));
    assert!(status_line(&socket, "PATCH", "/balloon", "{\"amount_mib\": 8}").contains("204"));
    // Stopping: the thread ends and removes the socket file under its filter.
    drop(server);
    assert!(!socket.exists());
}

#[test]
fn a_refused_call_while_panicking_fails_with_eperm_and_the_panic_goes_on() {
    // Printing a panic's backtrace makes calls no filter allows; they must not turn the
    // panic into a seccomp violation. A value dropped while unwinding stands in for it.
    struct CallWhileUnwinding(mpsc::Sender<(i64, i32)>);
    impl Drop for CallWhileUnwinding {
        fn drop(&mut self) {
            // SAFETY: getppid takes no arguments.
            let result = unsafe { libc::syscall(i64::from(report::REFUSED_BY_EVERY_FILTER.id())) };
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            let _ = self.0.send((result, errno));
        }
    }
    let confinement = Confinement::new(SeccompMode::Enforce).unwrap();
    let (sender, receiver) = mpsc::channel();
    let builder = thread::Builder::new().name("vcpu8".to_string());
    let handle = spawn_confined(builder, confinement.filter(ThreadKind::Vcpu), move || {
        let _call = CallWhileUnwinding(sender);
        panic!("a panic on a confined thread (expected by this test)");
    })
    .unwrap();
    assert!(handle.join().is_err(), "the thread should have panicked");
    assert_eq!(receiver.recv().unwrap(), (-1, libc::EPERM));
}
