//! Which failures of a boot test the nested environment is to blame for.
//!
//! Under nested KVM (L1 emulated by QEMU's TCG) a guest now and then triple-faults, or
//! stalls with its vCPUs spinning in guest mode, whatever the VMM (docs/testing.md, "The
//! control experiment"). Such a failure may be run again; every other one — a wrong value,
//! a vmm error or panic, a guest panic, a guest that went quiet while halted — is a finding
//! and fails at once. [`classify`] makes that call from what the harness saw when the test
//! gave up, and nothing else: it is a pure function, unit-tested in `tests/nested_faults.rs`.
//!
//! In nested mode (`VMM_TEST_NESTED=1`) the harness prints its verdict as one line on
//! stderr, which `scripts/run-test-binaries.sh` reads to decide on a rerun:
//!
//! - `=== NESTED-FAULT guest-triple-fault vcpu=1`
//! - `=== NESTED-FAULT guest-spinning vcpu0=100 vcpu1=2 output-after-newline=0`
//! - `=== NOT-NESTED-FAULT <one sentence>`

use std::fmt;

/// Prefix of the line naming an environment fault.
pub const NESTED_FAULT_PREFIX: &str = "=== NESTED-FAULT ";
/// Prefix of the line saying why a failure is not the environment's.
pub const NOT_NESTED_FAULT_PREFIX: &str = "=== NOT-NESTED-FAULT ";

/// What the vmm's exit status says when the guest's CPU state broke (src/lifecycle).
const GUEST_FAULT_STATUS: i32 = 4;
/// The vmm's line for a triple fault, followed by the vCPU's index (src/vcpu.rs).
const TRIPLE_FAULT_LINE: &str = "the guest triple-faulted on vCPU ";
/// What a guest kernel prints when it panics.
const GUEST_PANIC_LINE: &str = "Kernel panic - not syncing";
/// What Linux prints after its panic notifiers (pvpanic's among them) have run, just
/// before it resets the machine (`panic=1`).
const PANIC_REBOOT_LINE: &str = "Rebooting in ";
/// A vCPU thread using at least this share of a CPU (percent) runs in `KVM_RUN`; below
/// it, the guest mostly halts, waiting for an interrupt.
pub const SPINNING_PERCENT: u32 = 50;

/// What made the test give up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// A wait for the guest (console output, the vmm's exit, a condition) ran out of time.
    Timeout,
    /// Anything else: a failed assertion, a harness error, the vmm exiting under a wait.
    Other,
}

/// How the vmm process stood when the test gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmmState {
    Running,
    /// It exited with this status; `None` when a signal ended it.
    Exited(Option<i32>),
}

/// What a guest that went quiet was doing, measured while its vmm ran on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stall {
    /// Each vCPU's index and the share of one CPU (percent) its thread used.
    pub vcpu_busy_percent: Vec<(u32, u32)>,
    /// Console bytes within a few seconds of a newline sent to the guest; `None` when its
    /// input was already closed.
    pub output_after_newline: Option<usize>,
}

/// Everything [`classify`] decides from.
#[derive(Debug, Clone)]
pub struct Evidence<'a> {
    pub failure: Failure,
    pub vmm: VmmState,
    pub vmm_stderr: &'a str,
    pub console: &'a str,
    /// Measured only for a vmm still running.
    pub stall: Option<&'a Stall>,
    /// Where in `console` (a byte offset) the test asked the guest to panic; a panic
    /// after it is what the test wanted, not a finding.
    pub panic_expected_from: Option<usize>,
}

/// A failure the nested environment causes, which may be run again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvironmentFault {
    /// The vmm ended with status 4 and named the vCPU that triple-faulted.
    GuestTripleFault { vcpu: u32 },
    /// A wait timed out while a vCPU spun in guest mode and a newline brought nothing back.
    GuestSpinning { stall: Stall },
}

impl fmt::Display for EnvironmentFault {
    /// The class and its evidence as `word key=value…`, the form the scripts parse.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvironmentFault::GuestTripleFault { vcpu } => {
                write!(f, "guest-triple-fault vcpu={vcpu}")
            }
            EnvironmentFault::GuestSpinning { stall } => {
                write!(f, "guest-spinning")?;
                for (index, percent) in &stall.vcpu_busy_percent {
                    write!(f, " vcpu{index}={percent}")?;
                }
                write!(
                    f,
                    " output-after-newline={}",
                    stall.output_after_newline.unwrap_or(0)
                )
            }
        }
    }
}

/// Whom a failure is to be blamed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Environment(EnvironmentFault),
    /// Not the environment's: the sentence says what it was.
    NotEnvironment(String),
}

impl Verdict {
    /// The line the harness prints on stderr in nested mode.
    pub fn marker_line(&self) -> String {
        match self {
            Verdict::Environment(fault) => format!("{NESTED_FAULT_PREFIX}{fault}"),
            Verdict::NotEnvironment(reason) => format!("{NOT_NESTED_FAULT_PREFIX}{reason}"),
        }
    }
}

/// The vCPU the vmm's stderr says triple-faulted, if it says so.
fn triple_faulted_vcpu(stderr: &str) -> Option<u32> {
    let at = stderr.find(TRIPLE_FAULT_LINE)? + TRIPLE_FAULT_LINE.len();
    let digits: String = stderr[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .take(10)
        .collect();
    digits.parse().ok()
}

fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
}

fn first_line_with<'t>(text: &'t str, needle: &str) -> Option<&'t str> {
    text.lines().find(|l| l.contains(needle)).map(str::trim)
}

fn busy_list(stall: &Stall) -> String {
    if stall.vcpu_busy_percent.is_empty() {
        return "no vCPU thread found".to_string();
    }
    stall
        .vcpu_busy_percent
        .iter()
        .map(|(index, percent)| format!("vcpu{index}={percent}%"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Decides whether the nested environment is to blame for a failure (see the module docs).
pub fn classify(evidence: &Evidence<'_>) -> Verdict {
    use Verdict::NotEnvironment;

    let (before_trigger, after_trigger) = split_at_trigger(evidence);
    // A panicking guest spins too (Linux loops after a panic), so this comes first.
    if let Some(line) = first_line_with(before_trigger, GUEST_PANIC_LINE) {
        return NotEnvironment(format!("the guest panicked: {line}"));
    }
    if first_line_with(after_trigger, GUEST_PANIC_LINE).is_some() {
        return classify_expected_panic(evidence, after_trigger);
    }
    match evidence.vmm {
        VmmState::Exited(Some(GUEST_FAULT_STATUS)) => {
            match triple_faulted_vcpu(evidence.vmm_stderr) {
                Some(vcpu) => Verdict::Environment(EnvironmentFault::GuestTripleFault { vcpu }),
                None => NotEnvironment(format!(
                    "the vmm exited with status 4 but not for a triple fault: {:?}",
                    last_line(evidence.vmm_stderr)
                )),
            }
        }
        VmmState::Exited(Some(0)) => NotEnvironment(
            "the test failed after the vmm exited with status 0: a wrong value or a harness error"
                .to_string(),
        ),
        VmmState::Exited(Some(status)) => NotEnvironment(format!(
            "the vmm exited with status {status}: {:?}",
            last_line(evidence.vmm_stderr)
        )),
        VmmState::Exited(None) => NotEnvironment(format!(
            "the vmm was ended by a signal: {:?}",
            last_line(evidence.vmm_stderr)
        )),
        VmmState::Running => classify_running(evidence),
    }
}

/// The console before and after the point where the test asked for a panic (all of it
/// before when it asked for none).
fn split_at_trigger<'c>(evidence: &Evidence<'c>) -> (&'c str, &'c str) {
    let console = evidence.console;
    match evidence.panic_expected_from {
        Some(at) if console.is_char_boundary(at.min(console.len())) => {
            console.split_at(at.min(console.len()))
        }
        // An offset inside a character: the whole console counts as before, so a panic
        // is judged as one nobody asked for.
        Some(_) | None => (console, ""),
    }
}

/// [`classify`] once the guest panicked as the test asked. Linux's panic path runs the
/// panic notifiers (pvpanic's write, which stops the VM) and only then prints
/// [`PANIC_REBOOT_LINE`] and resets the machine through the i8042 (`reboot=k`), which
/// ends the vmm too. Nothing on that path triple-faults by itself, so a triple fault
/// before the reboot line is the environment's, like any other; every other ending
/// (a triple fault after the line, an exit with status 0, a guest still running) means
/// the vmm missed the pvpanic event or the reset, and is a finding.
fn classify_expected_panic(evidence: &Evidence<'_>, after_trigger: &str) -> Verdict {
    let rebooting = after_trigger.contains(PANIC_REBOOT_LINE);
    let triple_faulted = match evidence.vmm {
        VmmState::Exited(Some(GUEST_FAULT_STATUS)) => triple_faulted_vcpu(evidence.vmm_stderr),
        _ => None,
    };
    match (triple_faulted, rebooting) {
        (Some(vcpu), false) => Verdict::Environment(EnvironmentFault::GuestTripleFault { vcpu }),
        (Some(_), true) => Verdict::NotEnvironment(
            "the guest panicked as asked, then triple-faulted after \"Rebooting in\": neither \
             its pvpanic event nor its reset through the i8042 stopped the vmm"
                .to_string(),
        ),
        (None, _) => Verdict::NotEnvironment(match evidence.vmm {
            VmmState::Running => {
                "the guest panicked as asked, and the vmm still runs: it missed the pvpanic event"
                    .to_string()
            }
            VmmState::Exited(status) => format!(
                "the guest panicked as asked, and the vmm exited with {}: {:?}",
                status.map_or("a signal".to_string(), |s| format!("status {s}")),
                last_line(evidence.vmm_stderr)
            ),
        }),
    }
}

/// [`classify`] for a vmm still running when the test gave up.
fn classify_running(evidence: &Evidence<'_>) -> Verdict {
    use Verdict::NotEnvironment;

    if evidence.failure == Failure::Other {
        return NotEnvironment(
            "the test failed while the guest ran: a wrong value or a harness error".to_string(),
        );
    }
    let Some(stall) = evidence.stall else {
        return NotEnvironment("timed out, and the vmm's threads were not measured".to_string());
    };
    let spinning = stall
        .vcpu_busy_percent
        .iter()
        .any(|(_, percent)| *percent >= SPINNING_PERCENT);
    match (spinning, stall.output_after_newline) {
        (_, Some(bytes)) if bytes > 0 => NotEnvironment(format!(
            "timed out, but the guest answered a newline with {bytes} bytes: it is alive ({})",
            busy_list(stall)
        )),
        (true, Some(_)) => Verdict::Environment(EnvironmentFault::GuestSpinning {
            stall: stall.clone(),
        }),
        (true, None) => NotEnvironment(format!(
            "timed out with a vCPU spinning ({}), but the console's input was closed, so \
             whether the guest still answers is unknown",
            busy_list(stall)
        )),
        (false, _) => NotEnvironment(format!(
            "timed out with the guest halted, waiting for an interrupt ({})",
            busy_list(stall)
        )),
    }
}
