//! The retry policy of the nested boot tests (docs/testing.md, "Retries: only for the
//! environment's faults"): the harness's classifier (tests/common/fault.rs) on hostile and
//! borderline evidence, and `scripts/run-test-binaries.sh` acting on its verdict, driven
//! by fake test binaries (shell scripts that print what a real run would and exit 101).
//! Neither needs KVM.

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::fault::{
    classify, EnvironmentFault, Evidence, Failure, Stall, Verdict, VmmState, SPINNING_PERCENT,
};

const TRIPLE_FAULT_STDERR: &str = "vmm: the guest triple-faulted on vCPU 1\n";

fn evidence<'a>(failure: Failure, vmm: VmmState, stderr: &'a str) -> Evidence<'a> {
    Evidence {
        failure,
        vmm,
        vmm_stderr: stderr,
        console: "VMMTEST-READY\n",
        stall: None,
        panic_expected_from: None,
    }
}

fn stall(busy: &[(u32, u32)], output_after_newline: Option<usize>) -> Stall {
    Stall {
        vcpu_busy_percent: busy.to_vec(),
        output_after_newline,
    }
}

fn reason(verdict: Verdict) -> String {
    match verdict {
        Verdict::NotEnvironment(reason) => reason,
        Verdict::Environment(fault) => panic!("classified as the environment's: {fault}"),
    }
}

#[test]
fn a_triple_fault_names_its_vcpu() {
    let verdict = classify(&evidence(
        Failure::Other,
        VmmState::Exited(Some(4)),
        TRIPLE_FAULT_STDERR,
    ));
    assert_eq!(
        verdict,
        Verdict::Environment(EnvironmentFault::GuestTripleFault { vcpu: 1 })
    );
    assert_eq!(
        verdict.marker_line(),
        "=== NESTED-FAULT guest-triple-fault vcpu=1"
    );
    // Log lines before it change nothing.
    let stderr = format!("[2026-12-01T00:00:00Z WARN vmm] something\n{TRIPLE_FAULT_STDERR}");
    let verdict = classify(&evidence(
        Failure::Timeout,
        VmmState::Exited(Some(4)),
        &stderr,
    ));
    assert_eq!(
        verdict,
        Verdict::Environment(EnvironmentFault::GuestTripleFault { vcpu: 1 })
    );
}

#[test]
fn status_4_without_the_triple_fault_line_is_not_the_environment() {
    for stderr in [
        "vmm: KVM internal error on vCPU 0\n",
        "vmm: the guest triple-faulted on vCPU \n",
        "vmm: the guest triple-faulted on vCPU 99999999999999999999\n",
        "",
    ] {
        let why = reason(classify(&evidence(
            Failure::Other,
            VmmState::Exited(Some(4)),
            stderr,
        )));
        assert!(why.contains("status 4"), "{why}");
    }
}

#[test]
fn the_triple_fault_line_with_another_status_is_not_the_environment() {
    for status in [Some(0), Some(1), Some(5), None] {
        let vmm = VmmState::Exited(status);
        let why = reason(classify(&evidence(
            Failure::Other,
            vmm,
            TRIPLE_FAULT_STDERR,
        )));
        assert!(!why.is_empty());
    }
}

#[test]
fn a_vmm_error_or_panic_fails_at_once_with_its_line() {
    let why = reason(classify(&evidence(
        Failure::Other,
        VmmState::Exited(Some(5)),
        "vmm: stopped the VM: thread vcpu1 panicked\n",
    )));
    assert_eq!(
        why,
        "the vmm exited with status 5: \"vmm: stopped the VM: thread vcpu1 panicked\""
    );
}

#[test]
fn a_guest_panic_fails_at_once_even_while_the_guest_spins() {
    let spinning = stall(&[(0, 100), (1, 100)], Some(0));
    let console = "[  1.0] Kernel panic - not syncing: Attempted to kill init!\n";
    let why = reason(classify(&Evidence {
        failure: Failure::Timeout,
        vmm: VmmState::Running,
        vmm_stderr: "",
        console,
        stall: Some(&spinning),
        panic_expected_from: None,
    }));
    assert!(why.starts_with("the guest panicked: "), "{why}");
    assert!(why.contains("Attempted to kill init"), "{why}");
}

/// The console of `a_guest_kernel_panic_ends_vmm_with_status_3` in a CI run where a
/// triple fault cut the panic short, with the offset where the test asked for the panic.
fn asked_for_panic(after: &str) -> (String, usize) {
    let before = "VMMTEST-READY\n~ # > @vmmtest-end@1@0@\n~ # > ";
    let console = format!(
        "{before}echo c >/proc/sysrq-trigger\n[    6.92] sysrq: Trigger a crash\n\
         [    6.92] Kernel panic - not syncing: sysrq triggered crash\n\
         [    6.93] CPU: 0 PID: 80 Comm: sh Not tainted 6.1.0-57-cloud-amd64\n{after}"
    );
    (console, before.len())
}

/// The verdict on a vmm that ended for a triple fault after the test asked for a panic
/// at `trigger` in `console`.
fn triple_fault_after_asked_panic(console: &str, trigger: usize) -> Verdict {
    classify(&Evidence {
        console,
        panic_expected_from: Some(trigger),
        ..evidence(
            Failure::Other,
            VmmState::Exited(Some(4)),
            TRIPLE_FAULT_STDERR,
        )
    })
}

#[test]
fn a_triple_fault_in_a_panic_the_test_asked_for_is_the_environment_before_the_reboot() {
    let (console, trigger) = asked_for_panic("[    6.93] Call Trace:\n");
    let verdict = triple_fault_after_asked_panic(&console, trigger);
    assert_eq!(
        verdict,
        Verdict::Environment(EnvironmentFault::GuestTripleFault { vcpu: 1 })
    );
}

#[test]
fn a_panic_the_test_asked_for_that_does_not_stop_the_vmm_fails_at_once() {
    // The pvpanic event was missed, and the reset that follows it too.
    let (console, trigger) = asked_for_panic("[    7.94] Rebooting in 1 seconds..\n");
    let why = reason(triple_fault_after_asked_panic(&console, trigger));
    assert!(why.contains("after \"Rebooting in\""), "{why}");
    // The pvpanic event was missed, and the reset ended the vmm as a reboot.
    let why = reason(classify(&Evidence {
        console: &console,
        panic_expected_from: Some(trigger),
        ..evidence(Failure::Other, VmmState::Exited(Some(0)), "")
    }));
    assert_eq!(
        why,
        "the guest panicked as asked, and the vmm exited with status 0: \"\""
    );
    // Still running, its vCPU spinning: not a stall of the environment.
    let (console, trigger) = asked_for_panic("");
    let spinning = stall(&[(0, 100)], Some(0));
    let why = reason(classify(&Evidence {
        console: &console,
        panic_expected_from: Some(trigger),
        stall: Some(&spinning),
        ..evidence(Failure::Timeout, VmmState::Running, "")
    }));
    assert!(why.contains("missed the pvpanic event"), "{why}");
}

#[test]
fn a_panic_before_the_test_asked_for_one_is_a_finding() {
    let (console, _) = asked_for_panic("");
    let trigger = console.find("[    6.93] CPU").unwrap();
    let why = reason(triple_fault_after_asked_panic(&console, trigger));
    assert!(why.starts_with("the guest panicked: "), "{why}");
}

#[test]
fn a_timeout_while_a_vcpu_spins_and_nothing_answers_is_the_environment() {
    let spinning = stall(&[(0, SPINNING_PERCENT), (1, 2)], Some(0));
    let verdict = classify(&Evidence {
        stall: Some(&spinning),
        ..evidence(Failure::Timeout, VmmState::Running, "")
    });
    assert_eq!(
        verdict.marker_line(),
        "=== NESTED-FAULT guest-spinning vcpu0=50 vcpu1=2 output-after-newline=0"
    );
}

#[test]
fn a_timeout_with_the_guest_halted_fails_at_once() {
    let halted = stall(&[(0, SPINNING_PERCENT - 1), (1, 0)], Some(0));
    let why = reason(classify(&Evidence {
        stall: Some(&halted),
        ..evidence(Failure::Timeout, VmmState::Running, "")
    }));
    assert_eq!(
        why,
        "timed out with the guest halted, waiting for an interrupt (vcpu0=49% vcpu1=0%)"
    );
    let no_vcpus = stall(&[], Some(0));
    let why = reason(classify(&Evidence {
        stall: Some(&no_vcpus),
        ..evidence(Failure::Timeout, VmmState::Running, "")
    }));
    assert!(why.contains("no vCPU thread found"), "{why}");
}

#[test]
fn output_after_the_newline_fails_at_once() {
    let answering = stall(&[(0, 100)], Some(3));
    let why = reason(classify(&Evidence {
        stall: Some(&answering),
        ..evidence(Failure::Timeout, VmmState::Running, "")
    }));
    assert!(why.contains("answered a newline with 3 bytes"), "{why}");
}

#[test]
fn a_spinning_guest_whose_input_is_closed_is_not_assumed_stalled() {
    let unknown = stall(&[(0, 100)], None);
    let why = reason(classify(&Evidence {
        stall: Some(&unknown),
        ..evidence(Failure::Timeout, VmmState::Running, "")
    }));
    assert!(why.contains("input was closed"), "{why}");
}

#[test]
fn a_wrong_value_fails_at_once_whatever_the_vcpus_do() {
    let spinning = stall(&[(0, 100)], Some(0));
    let why = reason(classify(&Evidence {
        stall: Some(&spinning),
        ..evidence(Failure::Other, VmmState::Running, "")
    }));
    assert!(why.contains("a wrong value or a harness error"), "{why}");
    let why = reason(classify(&evidence(
        Failure::Other,
        VmmState::Exited(Some(0)),
        "",
    )));
    assert!(why.contains("a wrong value or a harness error"), "{why}");
}

#[test]
fn an_unmeasured_timeout_is_not_the_environment() {
    let why = reason(classify(&evidence(Failure::Timeout, VmmState::Running, "")));
    assert!(why.contains("not measured"), "{why}");
}

#[test]
fn hostile_console_and_stderr_bytes_never_panic() {
    let junk: String = (0..4096u32)
        .map(|i| char::from_u32(i * 7919 % 0x2_0000).unwrap_or('\u{fffd}'))
        .collect();
    let texts = [
        junk.as_str(),
        "the guest triple-faulted on vCPU ",
        "the guest triple-faulted on vCPU \u{0661}",
        "Kernel panic - not syncing",
        "\n\n\n",
    ];
    let spinning = stall(&[(u32::MAX, u32::MAX)], Some(usize::MAX));
    for text in texts {
        for vmm in [
            VmmState::Running,
            VmmState::Exited(Some(4)),
            VmmState::Exited(None),
        ] {
            for failure in [Failure::Timeout, Failure::Other] {
                let verdict = classify(&Evidence {
                    failure,
                    vmm,
                    vmm_stderr: text,
                    console: text,
                    stall: Some(&spinning),
                    panic_expected_from: Some(text.len() / 2),
                });
                // The runner reads the verdict as one line.
                assert!(!verdict.marker_line().contains('\n'), "{verdict:?}");
            }
        }
    }
}

/// A directory with a fake test binary `fake` holding one test, `the_test`. Run N prints
/// `runN.out` and exits with `runN.status` (0 when absent); `runN.sh`, when present, is
/// sourced in between. A fake `dmesg` prints `kernel.log`.
struct FakeRuns {
    dir: vmm_sys_util::tempdir::TempDir,
}

const FAKE_TEST: &str = r#"#!/bin/sh
dir=$(dirname "$0")
case " $* " in
*" --list "*) echo "the_test: test"; exit 0 ;;
esac
n=$(($(cat "$dir/runs" 2>/dev/null || echo 0) + 1))
echo "$n" >"$dir/runs"
[ ! -f "$dir/run$n.out" ] || cat "$dir/run$n.out"
[ ! -f "$dir/run$n.sh" ] || . "$dir/run$n.sh"
exit "$(cat "$dir/run$n.status" 2>/dev/null || echo 0)"
"#;

const FAKE_DMESG: &str = r#"#!/bin/sh
cat "$(dirname "$0")/../kernel.log" 2>/dev/null
"#;

/// What a real lockup of an L1 CPU running a vCPU thread looks like in the kernel log.
const VCPU_LOCKUP: &str = "[ 312.5] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [vcpu0:1234]";

impl FakeRuns {
    fn new() -> FakeRuns {
        let dir = common::temp_dir("fake-runs");
        let fake = FakeRuns { dir };
        fake.executable("fake", FAKE_TEST);
        fs::create_dir(fake.path("bin")).expect("mkdir bin");
        fake.executable("bin/dmesg", FAKE_DMESG);
        fs::write(fake.path("kernel.log"), "[ 0.0] Linux version 6.1\n").expect("kernel.log");
        fake
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.as_path().join(name)
    }

    fn executable(&self, name: &str, text: &str) {
        let path = self.path(name);
        fs::write(&path, text).expect("write a fake");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    /// Run `n` prints `output` and exits with `status`.
    fn run(self, n: u32, output: &str, status: i32) -> Self {
        fs::write(self.path(&format!("run{n}.out")), format!("{output}\n")).expect("out");
        fs::write(self.path(&format!("run{n}.status")), status.to_string()).expect("status");
        self
    }

    /// Run `n` also runs `script` (sh) before it exits.
    fn script(self, n: u32, script: &str) -> Self {
        fs::write(self.path(&format!("run{n}.sh")), script).expect("sh");
        self
    }

    /// Runs run-test-binaries.sh on the fake with `env`; returns its output and the runs
    /// the fake made.
    fn go(&self, env: &[(&str, &str)]) -> (Output, String, u32) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/run-test-binaries.sh");
        let path = format!(
            "{}:{}",
            self.path("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let output = Command::new("sh")
            .arg(script)
            .arg(self.path("fake"))
            .env("PATH", path)
            .env("TMPDIR", self.dir.as_path())
            .env_remove("VMM_TEST_SKIP_FILE")
            .env_remove("VMM_TEST_FAILED_FILE")
            .envs(env.iter().copied())
            .output()
            .expect("run run-test-binaries.sh");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let runs = fs::read_to_string(self.path("runs"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        (output, stdout, runs)
    }
}

fn assert_has(stdout: &str, line: &str) {
    assert!(
        stdout.lines().any(|l| l == line),
        "no line {line:?} in:\n{stdout}"
    );
}

const ATTEMPTS_3: &[(&str, &str)] = &[("VMM_TEST_ATTEMPTS", "3")];

#[test]
fn a_guest_triple_fault_is_run_again_and_named() {
    let fake = FakeRuns::new().run(1, "=== NESTED-FAULT guest-triple-fault vcpu=1", 101);
    let (output, stdout, runs) = fake.go(ATTEMPTS_3);
    assert!(output.status.success(), "{stdout}");
    assert_eq!(runs, 2);
    assert_has(
        &stdout,
        "=== run 1 of fake the_test failed (exit status 101): guest-triple-fault vcpu=1; running it again",
    );
    assert_has(&stdout, "=== PASS fake the_test");
    assert_has(&stdout, "passed only on a retry: 1");
    assert_has(
        &stdout,
        "runs retried for a fault of the nested environment: 1 (guest-triple-fault 1)",
    );
}

#[test]
fn a_spinning_guest_is_run_again_and_named() {
    let spinning = "=== NESTED-FAULT guest-spinning vcpu0=100 vcpu1=3 output-after-newline=0";
    let fake = FakeRuns::new().run(1, spinning, 101).run(
        2,
        "=== NESTED-FAULT guest-triple-fault vcpu=0",
        101,
    );
    let (output, stdout, runs) = fake.go(ATTEMPTS_3);
    assert!(output.status.success(), "{stdout}");
    assert_eq!(runs, 3);
    assert_has(
        &stdout,
        &format!(
            "=== run 1 of fake the_test failed (exit status 101): {}; running it again",
            spinning.trim_start_matches("=== NESTED-FAULT ")
        ),
    );
    assert_has(
        &stdout,
        "runs retried for a fault of the nested environment: 2 (guest-spinning 1, guest-triple-fault 1)",
    );
}

#[test]
fn a_failure_that_is_not_the_environments_is_not_run_again() {
    let fake = FakeRuns::new().run(
        1,
        "=== NOT-NESTED-FAULT the vmm exited with status 5: \"vmm: stopped the VM\"",
        101,
    );
    let (output, stdout, runs) = fake.go(ATTEMPTS_3);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert_eq!(runs, 1);
    assert_has(
        &stdout,
        "=== run 1 of fake the_test failed (exit status 101)",
    );
    assert_has(
        &stdout,
        "=== FAIL fake the_test not retried: the vmm exited with status 5: \"vmm: stopped the VM\"",
    );
    assert_has(&stdout, "boot tests: 0 passed, 1 failed");
    assert_has(
        &stdout,
        "runs retried for a fault of the nested environment: 0",
    );
}

#[test]
fn a_failed_assertion_without_a_verdict_is_not_run_again() {
    let fake = FakeRuns::new().run(
        1,
        "thread 'the_test' panicked at tests/x.rs:1:1:\nassertion `left == right` failed",
        101,
    );
    let (output, stdout, runs) = fake.go(ATTEMPTS_3);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert_eq!(runs, 1);
    assert_has(
        &stdout,
        "=== FAIL fake the_test not retried: it failed (exit status 101) with no environment \
         fault named: a wrong value or a harness error, see above",
    );
}

#[test]
fn the_last_verdict_of_a_run_decides() {
    let fake = FakeRuns::new().run(
        1,
        "=== NESTED-FAULT guest-triple-fault vcpu=1\n=== NOT-NESTED-FAULT the guest panicked: x",
        101,
    );
    let (_, stdout, runs) = fake.go(ATTEMPTS_3);
    assert_eq!(runs, 1, "{stdout}");
    assert_has(
        &stdout,
        "=== FAIL fake the_test not retried: the guest panicked: x",
    );
}

#[test]
fn an_l1_soft_lockup_in_a_vcpu_thread_is_run_again_and_named() {
    let lockup = format!("echo '{VCPU_LOCKUP}' >>\"$dir/kernel.log\"");
    let fake = FakeRuns::new()
        .run(
            1,
            "=== NOT-NESTED-FAULT timed out with the guest halted",
            101,
        )
        .script(1, &lockup);
    let (output, stdout, runs) = fake.go(ATTEMPTS_3);
    assert!(output.status.success(), "{stdout}");
    assert_eq!(runs, 2);
    assert_has(
        &stdout,
        &format!(
            "=== run 1 of fake the_test failed (exit status 101): l1-soft-lockup {VCPU_LOCKUP}; running it again"
        ),
    );
    assert_has(
        &stdout,
        "runs retried for a fault of the nested environment: 1 (l1-soft-lockup 1)",
    );
}

#[test]
fn an_l1_rcu_stall_is_run_again_and_named() {
    let stall_line = "[ 400.1] rcu: INFO: rcu_preempt self-detected stall on CPU";
    let fake = FakeRuns::new()
        .run(1, "", 101)
        .script(1, &format!("echo '{stall_line}' >>\"$dir/kernel.log\""));
    let (output, stdout, runs) = fake.go(ATTEMPTS_3);
    assert!(output.status.success(), "{stdout}");
    assert_eq!(runs, 2);
    assert_has(
        &stdout,
        &format!(
            "=== run 1 of fake the_test failed (exit status 101): l1-rcu-stall {stall_line}; running it again"
        ),
    );
}

#[test]
fn a_soft_lockup_of_another_task_or_before_the_run_is_not_the_runs() {
    // Logged before the run started: not this run's.
    let fake = FakeRuns::new().run(1, "", 101);
    fs::write(fake.path("kernel.log"), format!("{VCPU_LOCKUP}\n")).expect("kernel.log");
    let (_, stdout, runs) = fake.go(ATTEMPTS_3);
    assert_eq!(runs, 1, "{stdout}");
    assert!(
        stdout.contains("=== FAIL fake the_test not retried"),
        "{stdout}"
    );

    // A lockup of a task that is no vmm.
    let other = "[ 9.0] watchdog: BUG: soft lockup - CPU#1 stuck for 23s! [kworker/1:1:40]";
    let fake = FakeRuns::new()
        .run(1, "", 101)
        .script(1, &format!("echo '{other}' >>\"$dir/kernel.log\""));
    let (_, stdout, runs) = fake.go(ATTEMPTS_3);
    assert_eq!(runs, 1, "{stdout}");
    assert!(
        stdout.contains("=== FAIL fake the_test not retried"),
        "{stdout}"
    );
}

#[test]
fn a_run_hanging_on_a_stuck_l1_cpu_is_ended_and_run_again() {
    // The run never ends by itself, as a test waiting for a vmm whose vCPU thread an L1
    // CPU holds inside KVM_RUN; the per-test watchdog is far away.
    let fake = FakeRuns::new().run(1, "", 101).script(
        1,
        &format!("echo '{VCPU_LOCKUP}' >>\"$dir/kernel.log\"; while :; do sleep 1; done"),
    );
    let (output, stdout, runs) = fake.go(&[
        ("VMM_TEST_ATTEMPTS", "2"),
        ("VMM_TEST_LOCKUP_GRACE", "1"),
        ("VMM_TEST_WATCHDOG", "100000"),
    ]);
    assert!(output.status.success(), "{stdout}");
    assert_eq!(runs, 2);
    assert!(
        stdout.contains(&format!(
            "=== watchdog: the kernel reports a stuck CPU during the_test: {VCPU_LOCKUP}"
        )),
        "{stdout}"
    );
    assert_has(
        &stdout,
        &format!(
            "=== run 1 of fake the_test failed (exit status 137): l1-soft-lockup {VCPU_LOCKUP}; running it again"
        ),
    );
}

#[test]
fn environment_faults_in_every_run_fail_the_test_saying_so() {
    let fault = "=== NESTED-FAULT guest-triple-fault vcpu=0";
    let fake = FakeRuns::new().run(1, fault, 101).run(2, fault, 101);
    let (output, stdout, runs) = fake.go(&[("VMM_TEST_ATTEMPTS", "2")]);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert_eq!(runs, 2);
    assert_has(
        &stdout,
        "=== run 2 of fake the_test failed (exit status 101): guest-triple-fault vcpu=0",
    );
    assert_has(
        &stdout,
        "=== FAIL fake the_test after 2 runs, each ended by a fault of the nested environment",
    );

    // With one run allowed (direct mode), nothing is run again.
    let fake = FakeRuns::new().run(1, fault, 101);
    let (output, stdout, runs) = fake.go(&[("VMM_TEST_ATTEMPTS", "1")]);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert_eq!(runs, 1);
    assert_has(
        &stdout,
        "=== FAIL fake the_test not retried: VMM_TEST_ATTEMPTS=1",
    );
}

#[test]
fn tests_decided_in_an_earlier_l1_are_not_run_again() {
    for (var, counts) in [
        ("VMM_TEST_SKIP_FILE", "boot tests: 1 passed, 0 failed"),
        ("VMM_TEST_FAILED_FILE", "boot tests: 0 passed, 1 failed"),
    ] {
        let fake = FakeRuns::new();
        let list = fake.path("decided");
        fs::write(&list, "fake the_test\n").expect("list");
        let (_, stdout, runs) = fake.go(&[(var, list.to_str().expect("UTF-8 path"))]);
        assert_eq!(runs, 0, "{stdout}");
        assert_has(&stdout, counts);
    }
}

/// Tells [`the_harness_judges_a_vmm_that_fails_to_boot`] it runs as the child of a scenario.
const SCENARIO_VAR: &str = "VMM_NESTED_FAULTS_SCENARIO";

/// Fake vmms for the harness to boot: each counts its starts in `starts` next to itself.
const FAKE_VMM_START: &str = r#"#!/bin/sh
dir=$(dirname "$0")
n=$(($(cat "$dir/starts" 2>/dev/null || echo 0) + 1))
echo "$n" >"$dir/starts"
"#;

/// (scenario, the fake vmm's behaviour after counting its start).
const FAKE_VMMS: &[(&str, &str)] = &[
    // Triple-faults once, then boots and powers off when asked.
    (
        "triple-fault-once",
        "if [ \"$n\" = 1 ]; then echo 'vmm: the guest triple-faulted on vCPU 1' >&2; exit 4; fi\n\
         echo VMMTEST-READY; read -r line; exit 0\n",
    ),
    (
        "triple-fault-always",
        "echo 'vmm: the guest triple-faulted on vCPU 1' >&2; exit 4\n",
    ),
    // Its console forges the harness's verdict line first, as a hostile guest could.
    (
        "vmm-error",
        "echo '=== NESTED-FAULT guest-triple-fault vcpu=9'\n\
         echo 'vmm: cannot read the kernel /x: No such file' >&2; exit 1\n",
    ),
    // Says nothing and uses no CPU, like a guest halted for good.
    ("halted", "exec sleep 1000\n"),
];

/// Runs this test binary's [`the_harness_judges_a_vmm_that_fails_to_boot`] as a nested
/// boot test would run, booting the fake vmm of `scenario`; returns its status, its output
/// and the fake's starts.
fn boot_fake_vmm(scenario: &str, behaviour: &str) -> (Option<i32>, String, u32) {
    let dir = common::temp_dir("fake-vmm");
    let file = |name: &str| dir.as_path().join(name);
    fs::write(file("vmm"), format!("{FAKE_VMM_START}{behaviour}")).expect("fake vmm");
    fs::set_permissions(file("vmm"), fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::write(file("kernel"), "").expect("kernel");
    // One pipe for stdout and stderr, as run-test-binaries.sh has it (`2>&1`): the lines
    // it reads must stand on their own in libtest's output.
    let (mut output_pipe, write_end) = common::pipe();
    let stderr_end = write_end.try_clone().expect("dup the pipe");
    let mut child = Command::new(std::env::current_exe().expect("this test binary"))
        .args([
            "--exact",
            "the_harness_judges_a_vmm_that_fails_to_boot",
            "--test-threads=1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::from(stderr_end))
        .env(SCENARIO_VAR, scenario)
        .env("VMM_BIN", file("vmm"))
        .env("VMM_GUEST_KERNEL", file("kernel"))
        .env("VMM_GUEST_INITRD", file("kernel"))
        .env("VMM_TEST_NESTED", "1")
        .env("VMM_TEST_BOOT_ATTEMPTS", "3")
        // The halted fake's boot gives up after 1.8 s.
        .env("VMM_TEST_TIMEOUT_SCALE", "0.01")
        .env_remove("VMM_TEST_GUEST_CMDLINE")
        .env_remove("VMM_TEST_CONSOLE")
        .spawn()
        .expect("run this test binary");
    let mut bytes = Vec::new();
    // The command's copies of the write end are closed, so this ends with the child.
    output_pipe
        .read_to_end(&mut bytes)
        .expect("read its output");
    let status = child.wait().expect("wait for it");
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let starts = fs::read_to_string(file("starts"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    (status.code(), text, starts)
}

/// The harness's own retry and verdict, end to end with fake vmms: a boot is tried again
/// only after a triple fault, each retry and the final verdict named in the output.
#[test]
fn the_harness_judges_a_vmm_that_fails_to_boot() {
    if std::env::var_os(SCENARIO_VAR).is_some() {
        // The child: boot as a boot test does, and power off.
        let mut vm = common::GuestVm::builder().boot();
        assert!(vm.poweroff().success());
        return;
    }
    let verdicts = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("=== NESTED-FAULT") || l.starts_with("=== NOT-NESTED"))
            .map(str::to_string)
            .collect()
    };
    let retry = |attempt: u32| {
        format!(
            "boot attempt {attempt} of 3 failed: guest-triple-fault vcpu=1; booting again \
             (VMM_TEST_BOOT_ATTEMPTS=3)"
        )
    };
    for (scenario, behaviour) in FAKE_VMMS {
        let (status, text, starts) = boot_fake_vmm(scenario, behaviour);
        match *scenario {
            "triple-fault-once" => {
                assert_eq!(status, Some(0), "{text}");
                assert_eq!(starts, 2, "{text}");
                assert_has(&text, &retry(1));
                assert_eq!(verdicts(&text), Vec::<String>::new(), "{text}");
            }
            "triple-fault-always" => {
                assert_eq!(status, Some(101), "{text}");
                assert_eq!(starts, 3, "{text}");
                assert_has(&text, &retry(1));
                assert_has(&text, &retry(2));
                assert_eq!(
                    verdicts(&text),
                    ["=== NESTED-FAULT guest-triple-fault vcpu=1"],
                    "{text}"
                );
            }
            "vmm-error" => {
                assert_eq!(status, Some(101), "{text}");
                assert_eq!(starts, 1, "{text}");
                assert!(!text.contains("booting again"), "{text}");
                assert_eq!(
                    verdicts(&text),
                    ["=== NOT-NESTED-FAULT the vmm exited with status 1: \
                         \"vmm: cannot read the kernel /x: No such file\""],
                    "{text}"
                );
            }
            "halted" => {
                assert_eq!(status, Some(101), "{text}");
                assert_eq!(starts, 1, "{text}");
                assert_eq!(
                    verdicts(&text),
                    [
                        "=== NOT-NESTED-FAULT timed out with the guest halted, waiting for an \
                         interrupt (no vCPU thread found)"
                    ],
                    "{text}"
                );
            }
            other => panic!("no expectations for scenario {other}"),
        }
    }
}
