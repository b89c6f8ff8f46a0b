//! Shared by the integration tests: runs the `vmm` binary, boots guests with it and talks to
//! the guest's shell over the serial console; [`http`] talks to its API socket.
//!
//! The guest is the Debian kernel with the initramfs built by `scripts/guest-initramfs.sh`:
//! its `/init` (resources/guest/init) prints [`READY_MARKER`] and then serves a shell on the
//! console without echo, so every line written to the VMM's stdin is a shell command and
//! the console carries back only output. `scripts/test.sh` provides the environment:
//!
//! - `VMM_GUEST_KERNEL`, `VMM_GUEST_INITRD`: the guest kernel and initramfs (required).
//! - `VMM_BIN`: the vmm binary (default: the one cargo built for this test).
//! - `VMM_TEST_TIMEOUT_SCALE`: multiplies every timeout (default 1).
//! - `VMM_TEST_CONSOLE=1`: copy the guest console to stderr as it arrives.
//! - `VMM_TEST_GUEST_CMDLINE`: added to every guest's kernel command line (the nested
//!   runner sets `clearcpuid=xsave`, see docs/testing.md).
//! - `VMM_TEST_BOOT_ATTEMPTS`: attempts a boot may take to reach the ready marker.
//! - `VMM_TEST_NESTED=1`: the tests run inside a nested KVM host; a failure then ends with
//!   the harness's verdict on whether the environment is to blame ([`fault`]).
//!
//! Timeouts here only bound how long a test waits for something that should happen; they
//! are generous enough for a guest under nested virtualisation and say nothing about speed.
#![allow(dead_code)] // Each test crate uses its own part of this module.

pub mod fault;
pub mod guest_checks;
pub mod http;
pub mod promtool;

use std::cell::Cell;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use vmm::size::{MIB, PAGE_SIZE};
use vmm_sys_util::tempdir::TempDir;

use fault::{Evidence, Failure, Stall, Verdict, VmmState};

/// Printed by the guest's /init once it is ready for commands.
pub const READY_MARKER: &str = "VMMTEST-READY";

/// How long a guest may take to reach [`READY_MARKER`].
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// How long one shell command may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the VMM may take to exit once the guest powered off or rebooted.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a VMM invocation that should fail at once may take.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the guest may take to inflate or deflate its balloon to a new target.
pub const RESIZE_TIMEOUT: Duration = Duration::from_secs(180);

/// Balloon pages (4 KiB) in a MiB: the API takes sizes in MiB, the device counts pages.
pub const PAGES_PER_MIB: u32 = (MIB / PAGE_SIZE) as u32;

/// Console lines shown when something goes wrong.
const DIAGNOSTIC_LINES: usize = 40;
/// How long the vmm's threads are watched when a guest went quiet.
const STALL_SAMPLE: Duration = Duration::from_secs(2);
/// How long output is awaited after a newline sent to a guest that went quiet.
const NEWLINE_WAIT: Duration = Duration::from_secs(5);

thread_local! {
    /// Set when [`wait_until`] gave up on this thread: a `GuestVm` dropped by the panic
    /// that follows then knows the test failed on a timeout, not on a wrong value.
    static WAIT_TIMED_OUT: Cell<bool> = const { Cell::new(false) };
}

/// Whether the tests run inside a nested KVM host (`VMM_TEST_NESTED=1`, set by
/// scripts/boot-tests.sh), where a failure ends with the harness's verdict ([`fault`]).
pub fn nested() -> bool {
    std::env::var("VMM_TEST_NESTED").is_ok_and(|v| v == "1")
}

/// Writes `text` straight to the stderr file descriptor: libtest captures `eprintln!` and
/// drops it when a test passes, and the runner must see these lines whatever the outcome.
fn write_stderr(text: &str) {
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// In nested mode, prints the harness's verdict on a failing test as the one line the test
/// runner reads. It starts a line of its own: libtest has printed `test NAME ... ` and
/// waits for the end of the test to finish that line.
fn print_verdict(verdict: &Verdict) {
    if nested() {
        write_stderr(&format!("\n{}\n", verdict.marker_line()));
    }
}

/// How many times [`GuestVmBuilder::boot`] may try to reach the ready marker.
pub fn boot_attempts() -> u32 {
    std::env::var("VMM_TEST_BOOT_ATTEMPTS")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .filter(|n| *n >= 1)
        .unwrap_or(1)
}

/// `base` stretched by `VMM_TEST_TIMEOUT_SCALE`.
pub fn scaled(base: Duration) -> Duration {
    let scale = std::env::var("VMM_TEST_TIMEOUT_SCALE")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .unwrap_or(1.0);
    base.mul_f64(scale)
}

/// The vmm binary under test: `VMM_BIN`, else the one cargo built alongside this test.
pub fn vmm_bin() -> PathBuf {
    match std::env::var_os("VMM_BIN") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_BIN_EXE_vmm")),
    }
}

fn required_file(var: &str) -> PathBuf {
    let Some(path) = std::env::var_os(var) else {
        panic!(
            "{var} is not set: boot tests need a guest kernel and initramfs; \
             run them through scripts/test.sh (see docs/testing.md)"
        );
    };
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "{var}={} is not a file (build it with scripts/guest-kernel.sh and scripts/guest-initramfs.sh)",
        path.display()
    );
    path
}

/// The guest kernel (bzImage) from `VMM_GUEST_KERNEL`; panics if it is not set.
pub fn guest_kernel() -> PathBuf {
    required_file("VMM_GUEST_KERNEL")
}

/// The guest initramfs from `VMM_GUEST_INITRD`; panics if it is not set.
pub fn guest_initrd() -> PathBuf {
    required_file("VMM_GUEST_INITRD")
}

/// A fresh directory under the system's temporary directory, named `vmm-PURPOSE-XXXXXX`
/// and removed with everything in it when dropped.
pub fn temp_dir(purpose: &str) -> TempDir {
    let prefix = std::env::temp_dir().join(format!("vmm-{purpose}-"));
    TempDir::new_with_prefix(&prefix)
        .unwrap_or_else(|e| panic!("cannot create a directory {}XXXXXX: {e}", prefix.display()))
}

/// A string unique to this call within the test run, for markers.
pub fn unique_token() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{:x}{:x}{:x}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs the vmm binary with `args` and no input, for invocations that should end by
/// themselves; kills it and panics if it is still running after `timeout`.
pub fn run_vmm(args: &[&str], timeout: Duration) -> Output {
    let mut child = Command::new(vmm_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", vmm_bin().display()));
    let stdout = spawn_collector(child.stdout.take());
    let stderr = spawn_collector(child.stderr.take());
    let status = wait_child(&mut child, scaled(timeout));
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "`vmm {}` was still running after {:?}; stderr so far:\n{}",
            args.join(" "),
            scaled(timeout),
            String::from_utf8_lossy(&stderr.join().unwrap_or_default())
        );
    };
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// Polls `check` every half second until it returns `Some`, or panics with `what` after
/// `timeout`. The timeout only guards against a hang; it asserts nothing about speed.
pub fn wait_until<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        if Instant::now() >= deadline {
            WAIT_TIMED_OUT.with(|flag| flag.set(true));
            panic!("gave up after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(500));
    }
}

/// The resident set size of process `pid` in bytes, or why /proc cannot tell.
pub fn rss_bytes_of(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| format!("no VmRSS line in {path}"))
}

fn spawn_collector<R: Read + Send + 'static>(source: Option<R>) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut source) = source {
            let _ = source.read_to_end(&mut bytes);
        }
        bytes
    })
}

/// A pipe: (read end, write end), closed on exec.
pub fn pipe() -> (std::fs::File, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    let ret = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(ret, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: pipe2 succeeded, so both are open descriptors that nothing else owns.
    unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    }
}

/// Waits up to `timeout` for the child to exit.
fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            Ok(None) => return None,
            Err(e) => panic!("cannot wait for the vmm process: {e}"),
        }
    }
}

/// Each thread of process `pid`: its name, scheduler state and CPU time so far (in clock
/// ticks), by thread id; empty if /proc cannot tell.
fn thread_cpu_ticks(pid: u32) -> std::collections::BTreeMap<u32, (String, char, u64)> {
    let mut threads = std::collections::BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return threads;
    };
    for entry in dir.flatten() {
        let Ok(tid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "tid (name) state ... utime stime ...": the name may hold spaces, so split
        // after its closing parenthesis; utime and stime are fields 14 and 15.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_string();
        let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let state = rest.first().and_then(|s| s.chars().next()).unwrap_or('?');
        let ticks = |i: usize| rest.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        threads.insert(tid, (name, state, ticks(11) + ticks(12)));
    }
    threads
}

/// Bytes a process wrote, collected by a reader thread; `closed` once the pipe reached EOF.
#[derive(Default)]
struct Stream {
    bytes: Vec<u8>,
    closed: bool,
}

#[derive(Default)]
struct SharedStream {
    state: Mutex<Stream>,
    grew: Condvar,
}

impl SharedStream {
    fn lock(&self) -> std::sync::MutexGuard<'_, Stream> {
        // A reader thread never panics while holding the lock; recover the data anyway.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn spawn_reader<R: Read + Send + 'static>(
        self: &Arc<Self>,
        mut source: R,
        echo_to_stderr: bool,
    ) -> JoinHandle<()> {
        let shared = Arc::clone(self);
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let n = match source.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if echo_to_stderr {
                    let _ = std::io::stderr().write_all(&buf[..n]);
                }
                shared.lock().bytes.extend_from_slice(&buf[..n]);
                shared.grew.notify_all();
            }
            shared.lock().closed = true;
            shared.grew.notify_all();
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.lock().bytes).replace('\r', "")
    }
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() {
        return Some(from);
    }
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// `text` with every line indented by a bar, so that nothing the guest or the vmm printed
/// can pass for a line of the harness's own (the verdict the test runner reads).
fn quoted(text: &str) -> String {
    text.lines()
        .map(|line| format!("  | {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}

/// The output and exit status of a command run in the guest's shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// What the command wrote to stdout and stderr, without carriage returns.
    pub output: String,
    pub status: i32,
}

/// How to start a guest; every option maps to one `vmm` flag.
#[derive(Debug, Clone)]
pub struct GuestVmBuilder {
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    use_initrd: bool,
    cmdline: Vec<String>,
    mem: Option<String>,
    cpus: Option<u32>,
    balloon: Option<String>,
    api_sock: bool,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
    stdout_unread: bool,
}

impl GuestVmBuilder {
    /// Overrides the kernel (default: `VMM_GUEST_KERNEL`).
    pub fn kernel(mut self, path: impl Into<PathBuf>) -> Self {
        self.kernel = Some(path.into());
        self
    }

    /// Overrides the initramfs (default: `VMM_GUEST_INITRD`).
    pub fn initrd(mut self, path: impl Into<PathBuf>) -> Self {
        self.initrd = Some(path.into());
        self.use_initrd = true;
        self
    }

    /// Boots without `--initrd`.
    pub fn no_initrd(mut self) -> Self {
        self.use_initrd = false;
        self
    }

    /// Appends kernel command line arguments (`--cmdline`); calls accumulate.
    pub fn cmdline(mut self, args: &str) -> Self {
        self.cmdline.push(args.to_string());
        self
    }

    /// `--mem`, e.g. "1G".
    pub fn mem(mut self, size: &str) -> Self {
        self.mem = Some(size.to_string());
        self
    }

    /// `--cpus`.
    pub fn cpus(mut self, count: u32) -> Self {
        self.cpus = Some(count);
        self
    }

    /// `--balloon`, e.g. "stats,page-reporting".
    pub fn balloon(mut self, items: &str) -> Self {
        self.balloon = Some(items.to_string());
        self
    }

    /// Gives the VMM an API socket in a fresh temporary directory, removed with the
    /// `GuestVm` (see [`GuestVm::api_sock`]).
    pub fn api_sock(mut self) -> Self {
        self.api_sock = true;
        self
    }

    /// Any further arguments, passed as they are.
    pub fn arg(mut self, arg: &str) -> Self {
        self.extra_args.push(arg.to_string());
        self
    }

    /// Sets an environment variable of the VMM (e.g. `VMM_TEST_INJECT`).
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// Gives the VMM a stdout that is a pipe nobody reads, one page big: once it is full,
    /// every write to it would block. The console is then empty for the test: use `spawn`, not `boot`.
    pub fn stdout_unread(mut self) -> Self {
        self.stdout_unread = true;
        self
    }

    /// Starts the VMM without waiting for the guest.
    pub fn spawn(self) -> GuestVm {
        let kernel = self.kernel.unwrap_or_else(guest_kernel);
        let mut args: Vec<String> = vec!["--kernel".into(), path_arg(&kernel)];
        if self.use_initrd {
            let initrd = self.initrd.unwrap_or_else(guest_initrd);
            args.extend(["--initrd".into(), path_arg(&initrd)]);
        }
        let mut cmdline = self.cmdline;
        if let Ok(extra) = std::env::var("VMM_TEST_GUEST_CMDLINE") {
            cmdline.push(extra);
        }
        if !cmdline.is_empty() {
            args.extend(["--cmdline".into(), cmdline.join(" ")]);
        }
        if let Some(mem) = self.mem {
            args.extend(["--mem".into(), mem]);
        }
        if let Some(cpus) = self.cpus {
            args.extend(["--cpus".into(), cpus.to_string()]);
        }
        if let Some(balloon) = self.balloon {
            args.extend(["--balloon".into(), balloon]);
        }
        let api_dir = self.api_sock.then(|| temp_dir("test"));
        let api_sock = api_dir.as_ref().map(|dir| dir.as_path().join("api.sock"));
        if let Some(sock) = &api_sock {
            args.extend(["--api-sock".into(), path_arg(sock)]);
        }
        args.extend(self.extra_args);
        GuestVm::start(args, &self.env, self.stdout_unread, api_sock, api_dir)
    }

    /// Starts the VMM and waits until the guest's shell is ready for commands.
    ///
    /// Under nested KVM (L1 emulated by QEMU's TCG on a loaded host) a guest now and then
    /// triple-faults or stalls spinning during early boot, whatever the VMM
    /// (docs/testing.md, "Retries: only for the environment's faults").
    /// `VMM_TEST_BOOT_ATTEMPTS`, which the nested runner sets (default: one attempt),
    /// allows that many attempts to reach the ready marker, but only an attempt that ended
    /// in such an environment fault ([`fault::classify`]) is followed by another; each is
    /// reported in full on stderr, ending in `boot attempt N of M failed: CLASS …`. Any
    /// other failure fails the test at once, and nothing after the ready marker is retried.
    pub fn boot(self) -> GuestVm {
        let attempts = boot_attempts();
        for attempt in 1..attempts {
            let mut vm = self.clone().spawn();
            let (reason, failure) = match vm.wait_for_console(READY_MARKER, BOOT_TIMEOUT) {
                Ok(_) => return vm,
                Err(failed) => failed,
            };
            let (diagnostics, verdict) = vm.failure_report(failure);
            let fault = match verdict {
                Verdict::Environment(fault) => fault,
                Verdict::NotEnvironment(_) => vm.fail_reported(
                    &format!("boot attempt {attempt} of {attempts} failed: {reason}"),
                    &diagnostics,
                    &verdict,
                ),
            };
            write_stderr(&format!(
                "\n--- boot attempt {attempt} of {attempts}: {reason}\n{diagnostics}\n\
                 boot attempt {attempt} of {attempts} failed: {fault}; booting again \
                 (VMM_TEST_BOOT_ATTEMPTS={attempts})\n"
            ));
        }
        let mut vm = self.spawn();
        vm.wait_for(READY_MARKER, BOOT_TIMEOUT);
        vm
    }
}

fn path_arg(path: &Path) -> String {
    path.to_str()
        .unwrap_or_else(|| panic!("path {} is not UTF-8", path.display()))
        .to_string()
}

/// A running `vmm` process with a guest whose console the test reads and writes.
///
/// Dropping it kills the VMM. If the test is failing at that point, the last console lines
/// and the VMM's stderr are printed, so every failure shows what the guest was doing.
pub struct GuestVm {
    child: Child,
    args: Vec<String>,
    stdin: Option<ChildStdin>,
    console: Arc<SharedStream>,
    stderr: Arc<SharedStream>,
    readers: Vec<JoinHandle<()>>,
    /// Console bytes before this offset were consumed by `wait_for`.
    cursor: usize,
    next_command: u64,
    api_sock: Option<PathBuf>,
    /// The directory holding `api_sock`, removed with it once the VMM is gone.
    api_dir: Option<TempDir>,
    exit_status: Option<ExitStatus>,
    diagnostics_shown: bool,
    /// Where the console stood (in [`GuestVm::console`]'s text) when the test asked the
    /// guest to panic ([`GuestVm::expect_guest_panic`]).
    panic_expected_from: Option<usize>,
    /// The read end of a stdout nobody reads ([`GuestVmBuilder::stdout_unread`]), kept
    /// open so that the VMM's writes block rather than fail.
    _unread_stdout: Option<std::fs::File>,
}

impl GuestVm {
    pub fn builder() -> GuestVmBuilder {
        GuestVmBuilder {
            kernel: None,
            initrd: None,
            use_initrd: true,
            cmdline: Vec::new(),
            mem: None,
            cpus: None,
            balloon: None,
            api_sock: false,
            extra_args: Vec::new(),
            env: Vec::new(),
            stdout_unread: false,
        }
    }

    fn start(
        args: Vec<String>,
        env: &[(String, String)],
        stdout_unread: bool,
        api_sock: Option<PathBuf>,
        api_dir: Option<TempDir>,
    ) -> GuestVm {
        let bin = vmm_bin();
        let (stdout, unread_stdout) = if stdout_unread {
            let (read_end, write_end) = pipe();
            // As small as the kernel allows (a page), so that it fills sooner.
            // SAFETY: fcntl on an open pipe descriptor; failure leaves the default size.
            unsafe { libc::fcntl(write_end.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
            (Stdio::from(write_end), Some(read_end))
        } else {
            (Stdio::piped(), None)
        };
        let mut child = Command::new(&bin)
            .args(&args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let echo = std::env::var("VMM_TEST_CONSOLE").is_ok_and(|v| v == "1");
        let console = Arc::new(SharedStream::default());
        let stderr = Arc::new(SharedStream::default());
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(console.spawn_reader(out, echo));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(stderr.spawn_reader(err, echo));
        }
        GuestVm {
            stdin: child.stdin.take(),
            child,
            args,
            console,
            stderr,
            readers,
            cursor: 0,
            next_command: 0,
            api_sock,
            api_dir,
            exit_status: None,
            diagnostics_shown: false,
            panic_expected_from: None,
            _unread_stdout: unread_stdout,
        }
    }

    /// Tells the harness that the test is about to make the guest panic, so that a
    /// panic from here on is not held against the run ([`fault::classify`]).
    pub fn expect_guest_panic(&mut self) {
        self.panic_expected_from = Some(self.console().len());
    }

    /// The VMM's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The API socket path, if the builder asked for one.
    pub fn api_sock(&self) -> &Path {
        self.api_sock
            .as_deref()
            .expect("this guest was started without .api_sock()")
    }

    /// Everything the guest wrote to the console so far, without carriage returns.
    pub fn console(&self) -> String {
        self.console.text()
    }

    /// What the VMM wrote to stderr so far.
    pub fn vmm_stderr(&self) -> String {
        self.stderr.text()
    }

    /// The last console lines, the VMM's stderr and how it ended, for failure messages.
    pub fn diagnostics(&mut self) -> String {
        self.diagnose().0
    }

    /// [`GuestVm::diagnostics`], and what the vmm's state and stall measurement were.
    fn diagnose(&mut self) -> (String, VmmState, Option<Stall>) {
        let exited = self
            .exit_status
            .or_else(|| self.child.try_wait().ok().flatten());
        let status = match exited {
            Some(status) => format!("exited with {status}"),
            None => "still running".to_string(),
        };
        if exited.is_some() {
            // Its output, the line saying why it stopped included, is complete once the
            // readers saw the pipes close.
            for reader in self.readers.drain(..) {
                let _ = reader.join();
            }
        }
        // The console as it was when the test gave up, before the stall report adds input.
        let console = last_lines(&self.console(), DIAGNOSTIC_LINES);
        let (stalled, stall) = match exited {
            Some(_) => (String::new(), None),
            None => {
                let (text, stall) = self.stall_report();
                (text, Some(stall))
            }
        };
        let text = format!(
            "--- vmm {} ({status})\n--- last {DIAGNOSTIC_LINES} console lines:\n{}\n--- vmm stderr:\n{}\n{stalled}---",
            self.args.join(" "),
            quoted(&console),
            quoted(self.vmm_stderr().trim_end())
        );
        let state = match exited {
            Some(status) => VmmState::Exited(status.code()),
            None => VmmState::Running,
        };
        (text, state, stall)
    }

    /// For a guest that went quiet while its vmm runs on: what each vmm thread did over
    /// [`STALL_SAMPLE`] (a vCPU thread that used no CPU time sits in a halted guest; one
    /// using a whole CPU spins in guest mode), and whether a newline on the console brings
    /// output back (a receive interrupt also restarts a transmitter waiting for an
    /// interrupt that never came).
    fn stall_report(&mut self) -> (String, Stall) {
        let threads_before = thread_cpu_ticks(self.pid());
        thread::sleep(STALL_SAMPLE);
        let threads_after = thread_cpu_ticks(self.pid());
        // SAFETY: sysconf reads a constant of the system and touches no memory of ours.
        let ticks_per_second = match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
            n if n > 0 => n as u64,
            _ => 100,
        };
        let sample_ticks = ticks_per_second * STALL_SAMPLE.as_secs();
        let mut stall = Stall::default();
        let mut report =
            format!("--- vmm threads (name, state, share of a CPU over {STALL_SAMPLE:?}):\n");
        for (tid, (name, state, ticks)) in &threads_after {
            let used = threads_before
                .get(tid)
                .map_or(*ticks, |(_, _, before)| ticks.saturating_sub(*before));
            let percent = u32::try_from(used * 100 / sample_ticks).unwrap_or(u32::MAX);
            report.push_str(&format!("    {name} {state} {percent}%\n"));
            if let Some(index) = name.strip_prefix("vcpu").and_then(|n| n.parse().ok()) {
                stall.vcpu_busy_percent.push((index, percent));
            }
        }
        stall.vcpu_busy_percent.sort_unstable();
        let before = self.console.lock().bytes.len();
        if let Some(stdin) = self.stdin.as_mut() {
            let _ = stdin.write_all(b"\n").and_then(|()| stdin.flush());
            thread::sleep(NEWLINE_WAIT);
            let after = self.console.lock().bytes.len();
            report.push_str(&format!(
                "--- after a newline on the console: {} bytes of output within {NEWLINE_WAIT:?}\n",
                after - before
            ));
            stall.output_after_newline = Some(after - before);
        }
        (report, stall)
    }

    /// The diagnostics of a failing test and the verdict on who is to blame for it.
    fn failure_report(&mut self, failure: Failure) -> (String, Verdict) {
        let (diagnostics, vmm, stall) = self.diagnose();
        self.diagnostics_shown = true;
        let console = self.console();
        let stderr = self.vmm_stderr();
        let verdict = fault::classify(&Evidence {
            failure,
            vmm,
            vmm_stderr: &stderr,
            console: &console,
            stall: stall.as_ref(),
            panic_expected_from: self.panic_expected_from,
        });
        (diagnostics, verdict)
    }

    /// Panics with `message` and the diagnostics; in nested mode the verdict goes to stderr
    /// first, as the one line the test runner reads.
    fn fail_reported(&mut self, message: &str, diagnostics: &str, verdict: &Verdict) -> ! {
        print_verdict(verdict);
        panic!("{message}\n{diagnostics}");
    }

    /// Fails the test for `failure`, with `message` and the diagnostics.
    fn fail_with(&mut self, failure: Failure, message: &str) -> ! {
        let (diagnostics, verdict) = self.failure_report(failure);
        self.fail_reported(message, &diagnostics, &verdict)
    }

    /// Panics with `message` and the diagnostics.
    pub fn fail(&mut self, message: &str) -> ! {
        self.fail_with(Failure::Other, message)
    }

    /// Waits until `text` appears on the console after what earlier waits consumed, and
    /// returns the console text up to and including it. Fails early if the VMM exits.
    pub fn wait_for(&mut self, text: &str, timeout: Duration) -> String {
        match self.wait_for_console(text, timeout) {
            Ok(consumed) => consumed,
            Err((reason, failure)) => self.fail_with(failure, &reason),
        }
    }

    /// [`GuestVm::wait_for`] that returns why it gave up instead of failing the test.
    pub fn try_wait_for(&mut self, text: &str, timeout: Duration) -> Result<String, String> {
        self.wait_for_console(text, timeout)
            .map_err(|(reason, _)| reason)
    }

    /// [`GuestVm::try_wait_for`] that also says whether it gave up on a timeout.
    fn wait_for_console(
        &mut self,
        text: &str,
        timeout: Duration,
    ) -> Result<String, (String, Failure)> {
        let timeout = scaled(timeout);
        let deadline = Instant::now() + timeout;
        let needle = text.as_bytes();
        let console = Arc::clone(&self.console);
        let mut stream = console.lock();
        let mut scanned = self.cursor;
        loop {
            if let Some(at) = find(&stream.bytes, needle, scanned) {
                let end = at + needle.len();
                let consumed = String::from_utf8_lossy(&stream.bytes[self.cursor..end]);
                let consumed = consumed.replace('\r', "");
                self.cursor = end;
                return Ok(consumed);
            }
            // Only the last needle.len() - 1 bytes can start a match that more output completes.
            scanned = stream.bytes.len().saturating_sub(needle.len()).max(scanned);
            if stream.closed {
                drop(stream);
                self.reap(scaled(EXIT_TIMEOUT));
                return Err((
                    format!("the console closed before {text:?} appeared (the vmm exited)"),
                    Failure::Other,
                ));
            }
            let now = Instant::now();
            if now >= deadline {
                drop(stream);
                return Err((
                    format!("{text:?} did not appear within {timeout:?}"),
                    Failure::Timeout,
                ));
            }
            stream = console
                .grew
                .wait_timeout(stream, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Writes one line to the guest's console input.
    pub fn send_line(&mut self, line: &str) {
        let Some(stdin) = self.stdin.as_mut() else {
            self.fail("the vmm's stdin is already closed");
        };
        let written = stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush());
        if let Err(e) = written {
            self.fail(&format!("cannot write {line:?} to the vmm's stdin: {e}"));
        }
    }

    /// Runs a shell command in the guest and returns its output and exit status.
    pub fn run(&mut self, command: &str) -> CommandOutput {
        self.run_with_timeout(command, COMMAND_TIMEOUT)
    }

    /// Runs a shell command and returns its output, failing the test if it exits non-zero.
    pub fn run_ok(&mut self, command: &str) -> String {
        let result = self.run(command);
        if result.status != 0 {
            self.fail(&format!(
                "guest command {command:?} exited with {}; its output:\n{}",
                result.status, result.output
            ));
        }
        result.output
    }

    /// [`GuestVm::run`] with its own timeout, for commands known to take long.
    pub fn run_with_timeout(&mut self, command: &str, timeout: Duration) -> CommandOutput {
        // The shell reads whole lines from a terminal in canonical mode, which holds at
        // most 4095 characters.
        assert!(
            command.len() < 3000,
            "guest commands are limited to 3000 bytes"
        );
        self.next_command += 1;
        let id = self.next_command;
        // The markers are assembled by printf, so the command line itself (should the
        // terminal ever echo it) never contains them. The command's stdin is /dev/null so it
        // cannot swallow the lines that follow; the newline before `}` lets the command end
        // in `&`.
        let begin = format!("@vmmtest-begin@{id}@");
        let end = format!("@vmmtest-end@{id}@");
        self.send_line(&format!(
            "printf '\\n@%s@%s@\\n' vmmtest-begin {id}; {{ {command}\n}} </dev/null 2>&1; \
             printf '\\n@%s@%s@%s@\\n' vmmtest-end {id} \"$?\""
        ));
        self.wait_for(&begin, timeout);
        let rest = self.wait_for(&end, timeout);
        let status_text = self.wait_for("@", timeout);
        let status = match status_text.trim_end_matches('@').parse::<i32>() {
            Ok(status) => status,
            Err(_) => self.fail(&format!(
                "cannot read the exit status of {command:?} from {status_text:?}"
            )),
        };
        // `rest` is: the end of the begin line, the output, the newline printed before the
        // end marker, and the marker.
        let output = rest
            .strip_prefix('\n')
            .unwrap_or(&rest)
            .strip_suffix(&end)
            .unwrap_or(&rest);
        let output = output.strip_suffix('\n').unwrap_or(output).to_string();
        CommandOutput { output, status }
    }

    /// A `/proc/meminfo` field of the guest, in KiB.
    pub fn meminfo_kib(&mut self, field: &str) -> u64 {
        let line = self.run_ok(&format!("grep '^{field}:' /proc/meminfo"));
        let value = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<u64>().ok());
        match value {
            Some(kib) => kib,
            None => self.fail(&format!("cannot read {field} from meminfo line {line:?}")),
        }
    }

    /// The resident set size of the VMM process, in bytes.
    pub fn rss_bytes(&mut self) -> u64 {
        match rss_bytes_of(self.pid()) {
            Ok(bytes) => bytes,
            Err(reason) => self.fail(&reason),
        }
    }

    /// Runs `vmm ctl --api-sock <this guest's socket> ARGS` and returns its output.
    pub fn ctl(&mut self, args: &[&str]) -> Output {
        let sock = path_arg(self.api_sock());
        let mut full = vec!["ctl", "--api-sock", sock.as_str()];
        full.extend_from_slice(args);
        run_vmm(&full, COMMAND_TIMEOUT)
    }

    fn reap(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exit_status.is_none() {
            self.exit_status = wait_child(&mut self.child, timeout);
        }
        self.exit_status
    }

    /// Waits for the VMM to exit (after the guest powered off, say) and returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let timeout = scaled(timeout);
        match self.reap(timeout) {
            Some(status) => {
                // The output is complete once the readers saw the pipes close.
                for reader in self.readers.drain(..) {
                    let _ = reader.join();
                }
                status
            }
            None => self.fail_with(
                Failure::Timeout,
                &format!("the vmm did not exit within {timeout:?}"),
            ),
        }
    }

    /// Asks the guest to power off (`poweroff -f`) and returns the VMM's exit status.
    pub fn poweroff(&mut self) -> ExitStatus {
        self.send_line("poweroff -f");
        self.wait_exit(EXIT_TIMEOUT)
    }
}

impl Drop for GuestVm {
    fn drop(&mut self) {
        // Judged before the vmm is killed: a guest that went quiet is measured running.
        if thread::panicking() && !self.diagnostics_shown {
            let failure = if WAIT_TIMED_OUT.with(Cell::get) {
                Failure::Timeout
            } else {
                Failure::Other
            };
            let (diagnostics, verdict) = self.failure_report(failure);
            print_verdict(&verdict);
            eprintln!("{diagnostics}");
        }
        if self.exit_status.is_none() && self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // `api_dir`, dropped after this, removes the socket and its directory.
    }
}
