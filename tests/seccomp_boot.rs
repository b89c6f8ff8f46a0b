//! Boot tests of confinement (docs/security.md, "Confinement"): every vmm thread runs under
//! a seccomp filter of its own, a refused system call ends vmm with status 159 and a line
//! naming the call and the thread, `--seccomp log` lets the call through and the kernel
//! records it, `--seccomp off` installs nothing. Every other boot test runs with the
//! filters enforced too (the default), so any path that needs a missing call fails there.
//!
//! None of these waits for the guest to boot: the filters are in place before the guest
//! runs its first instruction, and the failures are injected as each thread starts
//! (`VMM_TEST_INJECT=seccomp-violation:<thread>`, src/test_hooks.rs), so each vmm here
//! lives a few seconds. `#[ignore]`d like every boot test; `scripts/test.sh` runs them.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::http::{field, get_json, patch};
use common::{scaled, wait_until, GuestVm, CLI_TIMEOUT, EXIT_TIMEOUT};

/// The `Seccomp` mode /proc shows for a thread under a filter (SECCOMP_MODE_FILTER).
const FILTER_MODE: &str = "2";

/// Each thread of process `pid` by name, with the `Seccomp` and `Seccomp_filters` fields
/// of its /proc status (the second is missing before Linux 5.9).
fn seccomp_of_threads(pid: u32) -> Vec<(String, String, Option<String>)> {
    let mut threads = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return threads;
    };
    for task in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let fields: BTreeMap<&str, &str> = status
            .lines()
            .filter_map(|line| line.split_once(':'))
            .map(|(key, value)| (key, value.trim()))
            .collect();
        threads.push((
            fields.get("Name").unwrap_or(&"?").to_string(),
            fields.get("Seccomp").unwrap_or(&"?").to_string(),
            fields.get("Seccomp_filters").map(|v| v.to_string()),
        ));
    }
    threads
}

/// The `Seccomp` field of this test process's own status, what a thread with no filter
/// of its own shows (a test runner may itself run under a container's filter).
fn own_seccomp_mode() -> String {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("Seccomp:"))
        .expect("no Seccomp line in /proc/self/status")
        .trim()
        .to_string()
}

fn has_thread(threads: &[(String, String, Option<String>)], name: &str) -> bool {
    threads.iter().any(|(n, _, _)| n == name)
}

#[test]
#[ignore = "boots a guest: run through scripts/test.sh"]
fn every_vmm_thread_runs_under_a_seccomp_filter_of_its_own() {
    // Every kind of thread: the main thread (named after the program), two vCPUs, the API
    // server; the balloon gives the main thread its virtio work.
    let mut vm = GuestVm::builder()
        .cpus(2)
        .balloon("stats=1")
        .api_sock()
        .spawn();
    let expected = ["vmm", "vcpu0", "vcpu1", "vmm-api"];
    // The main thread confines itself last, once it started the others.
    let pid = vm.pid();
    let threads = wait_until(
        scaled(CLI_TIMEOUT),
        "every vmm thread to be confined",
        || {
            let threads = seccomp_of_threads(pid);
            let all_there = expected.iter().all(|name| has_thread(&threads, name));
            let all_confined = threads.iter().all(|(_, mode, _)| mode == FILTER_MODE);
            (all_there && all_confined).then_some(threads)
        },
    );
    // One filter each: no thread inherited another's list on top of its own. (Threads
    // the kernel adds to the process, such as KVM's `kvm-nx-lpage-re` on recent kernels,
    // inherit the filter of the thread that started them and run no user code.)
    for (name, mode, filters) in &threads {
        assert_eq!(mode, FILTER_MODE, "thread {name}: {threads:?}");
        if let Some(filters) = filters {
            assert_eq!(
                filters, "1",
                "thread {name} runs under more than one filter"
            );
        }
    }

    // The API works under its filter (accepting, reading, answering, re-arming the
    // statistics timer) and so does the way out: a shutdown from the API, the vCPUs
    // kicked and joined, the socket file removed by the API thread.
    let sock = vm.api_sock().to_path_buf();
    assert_eq!(field(&get_json(&sock, "/vm"), "vcpus"), 2);
    patch(
        &sock,
        "/balloon/statistics",
        "{\"stats_polling_interval_s\": 2}",
    );
    let out = vm.ctl(&["vm", "shutdown"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = vm.wait_exit(EXIT_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", vm.vmm_stderr());
    assert!(!sock.exists(), "the API socket was not removed");
}

#[test]
#[ignore = "boots a guest: run through scripts/test.sh"]
fn seccomp_off_installs_no_filter() {
    let mut vm = GuestVm::builder()
        .cpus(2)
        .api_sock()
        .arg("--seccomp")
        .arg("off")
        .spawn();
    let unconfined = own_seccomp_mode();
    let pid = vm.pid();
    let threads = wait_until(scaled(CLI_TIMEOUT), "the vmm threads to start", || {
        let threads = seccomp_of_threads(pid);
        ["vcpu0", "vcpu1", "vmm-api"]
            .iter()
            .all(|name| has_thread(&threads, name))
            .then_some(threads)
    });
    for (name, mode, _) in &threads {
        assert_eq!(mode, &unconfined, "thread {name} is confined: {threads:?}");
    }
    let out = vm.ctl(&["vm", "shutdown"]);
    assert!(out.status.success());
    assert_eq!(vm.wait_exit(EXIT_TIMEOUT).code(), Some(0));
}

/// Starts vmm with `VMM_TEST_INJECT=seccomp-violation:<thread>`, two vCPUs, a balloon and
/// an API socket in `dir`, and `extra` arguments; stderr is piped.
fn spawn_with_violation(thread: &str, dir: &Path, extra: &[&str]) -> Child {
    let kernel = common::guest_kernel();
    let initrd = common::guest_initrd();
    let sock = dir.join("api.sock");
    Command::new(common::vmm_bin())
        .arg("--kernel")
        .arg(&kernel)
        .arg("--initrd")
        .arg(&initrd)
        .args(["--cpus", "2", "--mem", "256M", "--balloon", "--api-sock"])
        .arg(&sock)
        .args(extra)
        .env("VMM_TEST_INJECT", format!("seccomp-violation:{thread}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", common::vmm_bin().display()))
}

/// Waits up to `timeout` for `child` to exit; kills it and panics if it does not.
fn wait_or_kill(child: &mut Child, timeout: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + scaled(timeout);
    loop {
        if let Some(status) = child.try_wait().expect("wait for vmm") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: vmm did not exit within {:?}", scaled(timeout));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn stderr_of(child: &mut Child) -> String {
    let mut text = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut text);
    }
    text
}

#[test]
#[ignore = "boots a guest: run through scripts/test.sh"]
fn a_call_the_seccomp_filter_refuses_ends_vmm_with_159_naming_it_and_the_thread() {
    // One of each kind of thread; vcpu1 rather than vcpu0, to show the name is the
    // thread's own.
    for thread in ["vcpu1", "vmm-api", "main"] {
        let dir = common::temp_dir("seccomp");
        let mut child = spawn_with_violation(thread, dir.as_path(), &[]);
        let status = wait_or_kill(&mut child, EXIT_TIMEOUT, thread);
        let stderr = stderr_of(&mut child);
        assert_eq!(
            status.code(),
            Some(159),
            "{thread}: vmm ended with {status}; stderr:\n{stderr}"
        );
        let expected = format!(
            "vmm: thread {thread} made a system call its seccomp filter refuses: getppid (number 110)"
        );
        let report: Vec<&str> = stderr.lines().filter(|l| l.contains("seccomp")).collect();
        assert_eq!(report, [expected.as_str()], "{thread}: stderr:\n{stderr}");
    }
}

/// The kernel log records (`/dev/kmsg`) written so far that contain every one of `parts`.
fn kernel_log_lines_with(parts: &[&str]) -> Vec<String> {
    let mut kmsg = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
        .unwrap_or_else(|e| {
            panic!("cannot read the kernel log /dev/kmsg ({e}): this test needs root")
        });
    let mut found = Vec::new();
    let mut record = vec![0u8; 8192];
    loop {
        // One record per read; EAGAIN at the end, EPIPE when a record was overwritten.
        match kmsg.read(&mut record) {
            Ok(0) => break,
            Ok(n) => {
                let text = String::from_utf8_lossy(&record[..n]);
                if parts.iter().all(|part| text.contains(part)) {
                    found.push(text.trim_end().to_string());
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(_) => break,
        }
    }
    found
}

#[test]
#[ignore = "boots a guest: run through scripts/test.sh"]
fn seccomp_log_lets_the_call_through_and_the_kernel_records_it() {
    let dir = common::temp_dir("seccomp");
    let mut child = spawn_with_violation("vcpu0", dir.as_path(), &["--seccomp", "log"]);
    let pid = child.id();
    // The audit record of a SECCOMP_RET_LOG action (type 1326), as docs/security.md says
    // to look for it. Without auditd the kernel prints it to its log.
    let pid_field = format!("pid={pid} ");
    let parts = [
        "type=1326",
        pid_field.as_str(),
        "comm=\"vcpu0\"",
        "syscall=110",
    ];
    let records = wait_until(
        scaled(CLI_TIMEOUT),
        "the kernel to log the call (is auditd running? it takes these records)",
        || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("vmm ended with {status}: {}", stderr_of(&mut child));
            }
            let records = kernel_log_lines_with(&parts);
            (!records.is_empty()).then_some(records)
        },
    );
    assert_eq!(records.len(), 1, "{records:?}");
    // Let through, the call changed nothing: vmm runs on until told to stop.
    assert!(child.try_wait().expect("wait for vmm").is_none());
    // SAFETY: signals our own child, which has not been reaped.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let status = wait_or_kill(&mut child, EXIT_TIMEOUT, "SIGTERM");
    assert_eq!(status.code(), Some(143), "{}", stderr_of(&mut child));
}
