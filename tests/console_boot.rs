//! Boot tests of the console and of fail-stop: guest output that nobody reads never blocks
//! vmm, `--serial file=` gets the guest's output, and a panic on a vCPU thread ends vmm
//! with status 5 and one line naming the thread.
//!
//! Each test is `#[ignore]`d so that a plain `cargo test` does not claim to have run it;
//! `scripts/test.sh` runs them with `--ignored` (docs/testing.md).

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;

use common::{http, GuestVm, BOOT_TIMEOUT, EXIT_TIMEOUT};

/// The log line that says guest output is being dropped (src/console/output.rs).
const DROPPING: &str = "is not being read fast enough; dropping output";

fn read_text(path: &Path) -> String {
    std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

#[test]
#[ignore = "boots a guest: run through scripts/test.sh"]
fn guest_output_nobody_reads_never_blocks_vmm() {
    let dir = common::temp_dir("console");
    let log = dir.as_path().join("vmm.log");
    // 1 MiB of output, far more than the pipe (a page) and vmm's buffer (64 KiB) hold;
    // then the guest idles. Nothing reads vmm's stdout, ever.
    let mut vm = GuestVm::builder()
        .cmdline("vmmtest.run=\"yes 0123456789abcdef | head -c 1048576; sleep 100000\"")
        .api_sock()
        .stdout_unread()
        .arg("--log-file")
        .arg(log.to_str().expect("temp path is UTF-8"))
        .spawn();

    // Dropping starts once the pipe and the buffer are full: the guest is printing, and
    // the vCPU writing it has not blocked.
    common::wait_until(
        common::scaled(BOOT_TIMEOUT),
        "the log to say that guest output is being dropped",
        || read_text(&log).contains(DROPPING).then_some(()),
    );

    // The API answers while the guest keeps printing into the void.
    let info = http::get_json(vm.api_sock(), "/vm");
    assert_eq!(info["state"], "Running", "{info}");

    // SIGTERM ends vmm (the guest may still be printing), through its orderly exit.
    // SAFETY: kill(2) on the pid of our own child process.
    assert_eq!(unsafe { libc::kill(vm.pid() as i32, libc::SIGTERM) }, 0);
    let status = vm.wait_exit(EXIT_TIMEOUT);
    assert_eq!(
        (status.code(), status.signal()),
        (Some(143), None),
        "SIGTERM must end vmm with 128 + 15; stderr: {}",
        vm.vmm_stderr()
    );
    assert!(
        !vm.api_sock().exists(),
        "the API socket is removed on the way out"
    );
    // The total is logged at exit: some output was dropped, none of it blocked anything.
    let log = read_text(&log);
    let dropped = log
        .lines()
        .filter_map(|l| {
            l.split_once("guest console output: ")?
                .1
                .split_once(" bytes were dropped in all")
        })
        .map(|(n, _)| n.parse::<u64>().expect("a byte count"))
        .next_back()
        .unwrap_or_else(|| panic!("no total of dropped bytes in the log:\n{log}"));
    assert!(dropped > 0, "{log}");
    assert!(!vm.vmm_stderr().contains("panicked"), "{}", vm.vmm_stderr());
}

#[test]
#[ignore = "boots a guest: run through scripts/test.sh"]
fn serial_file_gets_the_guest_output() {
    let dir = common::temp_dir("console");
    let serial = dir.as_path().join("guest.log");
    std::fs::write(&serial, "kept from before\n").expect("cannot write the serial file");
    let marker = format!("console-file-{}", common::unique_token());
    let mut vm = GuestVm::builder()
        .cmdline(&format!("vmmtest.run=\"echo {marker}\""))
        .arg("--serial")
        .arg(&format!("file={}", serial.display()))
        .spawn();
    let status = vm.wait_exit(BOOT_TIMEOUT);
    let text = read_text(&serial).replace('\r', "");
    assert!(
        status.success(),
        "the guest powers off after its command; vmm ended with {status}; stderr: {}\nserial file:\n{text}",
        vm.vmm_stderr()
    );
    assert!(
        text.starts_with("kept from before\n"),
        "appended, not truncated:\n{text}"
    );
    for expected in ["VMMTEST-READY", &marker, "VMMTEST-RUN-EXIT=0"] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from the serial file:\n{text}"
        );
    }
    assert_eq!(
        vm.console(),
        "",
        "with --serial file= nothing goes to stdout"
    );
}

#[test]
#[ignore = "boots a guest: run through scripts/test.sh"]
fn a_panic_on_a_vcpu_thread_stops_vmm_with_status_5() {
    let mut vm = GuestVm::builder()
        .cpus(2)
        .api_sock()
        .env("VMM_TEST_INJECT", "panic:vcpu1")
        // With a backtrace asked for, the hook writes it too; the line is the point here.
        .env("RUST_BACKTRACE", "0")
        .boot();
    // A write to port 0x80 from the second vCPU is where the injected panic fires
    // (src/vcpu.rs); `outb` (resources/guest/outb.c) makes it from user space.
    vm.send_line("taskset 2 outb 0x80 0");
    let status = vm.wait_exit(EXIT_TIMEOUT);
    let stderr = vm.vmm_stderr();
    assert_eq!(
        (status.code(), status.signal()),
        (Some(5), None),
        "a vmm thread panicked; stderr: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("panicked")).collect();
    assert_eq!(lines.len(), 1, "one line says what happened: {stderr}");
    assert!(
        lines[0].starts_with("vmm: stopped the VM: thread 'vcpu1' panicked at src/vcpu.rs:")
            && lines[0].ends_with("injected panic (VMM_TEST_INJECT=panic:vcpu1)"),
        "{stderr}"
    );
    assert!(
        !vm.api_sock().exists(),
        "the API socket is removed on the way out"
    );
}
