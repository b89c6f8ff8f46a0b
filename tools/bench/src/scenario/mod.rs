//! The scenarios, and what they share: starting a VMM with its guest, talking to the guest
//! and to the VMM, timing phases, resizing the balloon.

mod backings;
mod boot;
mod density;
mod slack;
mod timeline;

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::console::{CommandOutput, Console};
use crate::control::Control;
use crate::launch::{self, Machine, VmmUnderTest};
use crate::plan::{GuestFiles, Scenario, Step, TimelineParts};
use crate::procfs::{self, CpuTicks, MemoryUse};
use crate::results::{Phase, StepRecord};
use crate::sampler::{self, Sample};

/// How long a guest may take to print its ready marker (nested guests are slow).
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long one guest command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the balloon may take to reach a new size.
const RESIZE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a VMM may take to exit after the guest powered off.
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a failure waits for the VMM to exit, to say how it ended.
const EXPLAIN_WAIT: Duration = Duration::from_secs(2);
/// How often the balloon's size is read while it changes: each read is also a latency
/// sample of the VMM's control interface.
const RESIZE_POLL: Duration = Duration::from_millis(50);
/// Printed by the guest's /init when it is ready for commands (resources/guest/init).
const READY_MARKER: &str = "VMMTEST-READY";

/// Why a step failed, as one sentence.
#[derive(Debug)]
pub struct StepError(String);

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<E: std::error::Error> From<E> for StepError {
    fn from(e: E) -> StepError {
        StepError(e.to_string())
    }
}

pub fn fail<T>(message: impl Into<String>) -> Result<T, StepError> {
    Err(StepError(message.into()))
}

/// What a scenario measured, also when it failed part way.
#[derive(Default)]
pub struct Outcome {
    pub command: String,
    pub figures: BTreeMap<String, f64>,
    pub phases: Vec<Phase>,
    pub latencies_ms: Vec<f64>,
    pub samples: Vec<Sample>,
}

impl Outcome {
    fn set(&mut self, key: &str, value: f64) {
        self.figures.insert(key.to_string(), value);
    }
}

/// Runs one step in `dir` and returns its record; the sampled series goes to `rss.csv`
/// there, the guests' consoles and the VMMs' stderr next to it.
pub fn run_step(step: &Step, files: &GuestFiles, parts: TimelineParts, dir: &Path) -> StepRecord {
    let started = Instant::now();
    let load_at_start = procfs::load_average();
    let mut outcome = Outcome::default();
    let result = match step.scenario {
        Scenario::Boot => boot::run(&step.vmm, files, dir, &mut outcome, true),
        Scenario::Minimal => boot::run(&step.vmm, files, dir, &mut outcome, false),
        Scenario::Timeline => timeline::run(&step.vmm, files, parts, dir, &mut outcome),
        Scenario::Density => density::run(&step.vmm, files, dir, &mut outcome),
        Scenario::BackingAnon | Scenario::BackingThp | Scenario::BackingHugetlb => {
            backings::run(&step.vmm, files, step.scenario, dir, &mut outcome)
        }
        Scenario::SlackBaseline
        | Scenario::SlackCompact
        | Scenario::SlackCmdlineOrder5
        | Scenario::SlackOrder5
        | Scenario::SlackOrder0 => slack::run(&step.vmm, files, step.scenario, dir, &mut outcome),
    };
    let csv = sampler::to_csv(&outcome.samples);
    let mut error = result.err().map(|e| e.0);
    if let Err(e) = fs::write(dir.join(crate::results::RSS_FILE), csv) {
        error.get_or_insert(format!("cannot write the RSS series: {e}"));
    }
    StepRecord {
        step: step.number,
        repetition: step.repetition,
        scenario: step.scenario,
        vmm: step.vmm.name.clone(),
        kind: step.vmm.kind,
        command: outcome.command,
        error,
        figures: outcome.figures,
        phases: outcome.phases,
        latencies_ms: outcome.latencies_ms,
        load_at_start,
        duration_s: started.elapsed().as_secs_f64(),
    }
}

/// A VMM process booting or running a guest. Dropping it kills the VMM.
pub struct Guest {
    child: Child,
    pub pid: u32,
    pub exec_at: Instant,
    console: Console,
    control: Option<Control>,
    vmm: VmmUnderTest,
    machine: Machine,
    sock: PathBuf,
    stderr_path: PathBuf,
    pub command: String,
}

impl Guest {
    /// Starts `vmm` booting `machine`; `label` names its files in `dir`.
    pub fn start(
        vmm: &VmmUnderTest,
        machine: &Machine,
        dir: &Path,
        label: &str,
    ) -> Result<Guest, StepError> {
        let sock = dir.join(format!("{label}.sock"));
        let _ = fs::remove_file(&sock);
        let args = launch::command_line(vmm, machine, &sock);
        let stderr_path = dir.join(format!("{label}.stderr"));
        let stderr = File::create(&stderr_path)?;
        let console_log = File::create(dir.join(format!("{label}.console")))?;
        let exec_at = Instant::now();
        let mut child = Command::new(&args[0])
            .args(&args[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| StepError(format!("cannot run {}: {e}", args[0])))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            return fail("the VMM's stdio pipes are missing");
        };
        Ok(Guest {
            pid: child.id(),
            child,
            exec_at,
            console: Console::new(stdin, stdout, console_log),
            control: None,
            vmm: vmm.clone(),
            machine: machine.clone(),
            sock,
            stderr_path,
            command: launch::shell_line(&args),
        })
    }

    /// Adds what became of the VMM process to an error, when it has exited.
    fn explain(&mut self, e: StepError) -> StepError {
        // A closed console comes just before the exit: give the VMM a moment to end.
        let deadline = Instant::now() + EXPLAIN_WAIT;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
                _ => return e,
            }
        };
        let stderr = fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let last = stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
        StepError(format!(
            "{e}; the VMM exited ({status}), its last line: {last:?}"
        ))
    }

    /// Waits for the guest's ready marker; returns when it arrived.
    pub fn wait_ready(&mut self) -> Result<Instant, StepError> {
        match self
            .console
            .wait_for(READY_MARKER, "ready marker", BOOT_TIMEOUT)
        {
            Ok((at, _)) => Ok(at),
            Err(e) => Err(self.explain(e.into())),
        }
    }

    /// The VMM's control connection, made on first use.
    pub fn control(&mut self) -> Result<&mut Control, StepError> {
        if self.control.is_none() {
            let control = Control::connect(
                self.vmm.kind,
                &self.sock,
                self.machine.mem_bytes(),
                self.machine.balloon.stats,
            )
            .map_err(|e| self.explain(e.into()))?;
            self.control = Some(control);
        }
        match self.control.as_mut() {
            Some(control) => Ok(control),
            None => fail("no control connection"),
        }
    }

    /// Runs a guest command that must succeed; returns when it ended and its output.
    pub fn run(&mut self, command: &str) -> Result<(Instant, String), StepError> {
        let pending = self.console.start(command).map_err(StepError::from);
        let pending = pending.map_err(|e| self.explain(e))?;
        self.finish(pending)
    }

    /// Starts a guest command; [`Guest::finish`] waits for it.
    pub fn start_command(
        &mut self,
        command: &str,
    ) -> Result<crate::console::PendingCommand, StepError> {
        let pending = self.console.start(command).map_err(StepError::from);
        pending.map_err(|e| self.explain(e))
    }

    pub fn finish(
        &mut self,
        pending: crate::console::PendingCommand,
    ) -> Result<(Instant, String), StepError> {
        let (at, CommandOutput { output, status }) =
            match self.console.finish(pending, COMMAND_TIMEOUT) {
                Ok(done) => done,
                Err(e) => return Err(self.explain(e.into())),
            };
        if status != 0 {
            return fail(format!("a guest command exited with {status}: {output:?}"));
        }
        Ok((at, output))
    }

    /// What the guest says of its memory, in MiB: (MemTotal − MemFree, its RAM − MemFree).
    /// The second also counts what the guest kernel reserved at boot, outside MemTotal.
    pub fn guest_used_mib(&mut self) -> Result<(f64, f64), StepError> {
        let (_, text) = self.run("grep -E '^(MemTotal|MemFree):' /proc/meminfo")?;
        match meminfo_used_mib(&text, self.machine.mem_mib) {
            Some(used) => Ok(used),
            None => fail(format!("cannot read MemTotal and MemFree from {text:?}")),
        }
    }

    /// How long the guest kernel had been running when `ready` came: its uptime now, less
    /// the time since.
    pub fn kernel_time_at(&mut self, ready: Instant) -> Result<f64, StepError> {
        let (at, text) = self.run("cat /proc/uptime")?;
        let uptime: f64 = text
            .split_whitespace()
            .next()
            .and_then(|u| u.parse().ok())
            .ok_or_else(|| StepError(format!("cannot read the guest's uptime from {text:?}")))?;
        Ok(uptime - at.saturating_duration_since(ready).as_secs_f64())
    }

    pub fn memory_use(&self) -> Result<MemoryUse, StepError> {
        procfs::read_memory_use(self.pid, self.machine.mem_bytes())
            .map_err(|e| StepError(format!("cannot read /proc/{}/smaps: {e}", self.pid)))
    }

    /// The guest's memory, in MiB.
    pub fn mem_mib(&self) -> u64 {
        self.machine.mem_mib
    }

    pub fn cpu(&self) -> CpuTicks {
        procfs::read_cpu_ticks(self.pid)
    }

    /// Resizes the balloon to `bytes` and waits until the guest got there, reading the size
    /// every [`RESIZE_POLL`]; returns the seconds from the request to the read that saw it.
    /// Each read's latency goes to `latencies_ms` when given.
    pub fn resize(
        &mut self,
        bytes: u64,
        mut latencies_ms: Option<&mut Vec<f64>>,
    ) -> Result<f64, StepError> {
        let started = Instant::now();
        let control = self.control()?;
        control.set_balloon(bytes)?;
        let mut actual;
        loop {
            thread::sleep(RESIZE_POLL);
            let asked = Instant::now();
            actual = control.balloon_bytes()?;
            if let Some(l) = latencies_ms.as_deref_mut() {
                l.push(asked.elapsed().as_secs_f64() * 1000.0);
            }
            if actual == bytes {
                return Ok(started.elapsed().as_secs_f64());
            }
            if started.elapsed() >= RESIZE_TIMEOUT {
                break;
            }
        }
        fail(format!(
            "the balloon did not reach {} MiB within {} s (it is at {} MiB)",
            bytes >> 20,
            RESIZE_TIMEOUT.as_secs(),
            actual >> 20
        ))
    }

    /// Powers the guest off and waits for the VMM to exit.
    pub fn poweroff(mut self) -> Result<(), StepError> {
        let sent = self
            .console
            .send_line("poweroff -f")
            .map_err(StepError::from);
        sent.map_err(|e| self.explain(e))?;
        let status = self.wait_exit(EXIT_TIMEOUT)?;
        if !status.success() {
            return Err(self.explain(StepError(format!(
                "the VMM ended with {status} after the guest powered off"
            ))));
        }
        Ok(())
    }

    fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, StepError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return fail(format!(
                    "the VMM did not exit within {} s of the guest's power-off",
                    timeout.as_secs()
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = fs::remove_file(&self.sock);
    }
}

/// Records phases: each starts where the previous ended, with the CPU time the guests'
/// VMMs used in it.
pub struct Phases {
    origin: Instant,
    current: Option<(String, f64, Vec<CpuTicks>)>,
}

impl Phases {
    pub fn new(origin: Instant) -> Phases {
        Phases {
            origin,
            current: None,
        }
    }

    /// Ends the current phase (if any) and begins `name`.
    pub fn next(&mut self, name: &str, guests: &[&Guest], out: &mut Outcome) {
        self.end(guests, out);
        let ticks = guests.iter().map(|g| g.cpu()).collect();
        self.current = Some((name.to_string(), self.origin.elapsed().as_secs_f64(), ticks));
    }

    /// Ends the current phase; returns its (vCPU, VMM) CPU seconds.
    pub fn end(&mut self, guests: &[&Guest], out: &mut Outcome) -> (f64, f64) {
        let Some((name, start_s, before)) = self.current.take() else {
            return (0.0, 0.0);
        };
        let (mut vcpu, mut vmm) = (0.0, 0.0);
        for (guest, before) in guests.iter().zip(&before) {
            let (v, m) = guest.cpu().seconds_since(before);
            vcpu += v;
            vmm += m;
        }
        out.phases.push(Phase {
            name,
            start_s,
            end_s: self.origin.elapsed().as_secs_f64(),
            vcpu_cpu_s: vcpu,
            vmm_cpu_s: vmm,
        });
        (vcpu, vmm)
    }
}

/// (MemTotal − MemFree, `mem_mib` − MemFree) in MiB from the guest's /proc/meminfo lines;
/// `None` unless both fields are there as whole kB no larger than the guest's memory.
fn meminfo_used_mib(text: &str, mem_mib: u64) -> Option<(f64, f64)> {
    let field = |name: &str| -> Option<u64> {
        let kib: u64 = text
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        (kib <= mem_mib.saturating_mul(1024)).then_some(kib)
    };
    let (total, free) = (field("MemTotal:")?, field("MemFree:")?);
    let used = total.checked_sub(free)?;
    Some((kib_to_mib(used), mem_mib as f64 - kib_to_mib(free)))
}

/// Seconds since `origin` at `at`.
fn since(origin: Instant, at: Instant) -> f64 {
    at.saturating_duration_since(origin).as_secs_f64()
}

fn kib_to_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The `p`-th percentile (0–100) of `values`, by the nearest-rank method.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_gives_used_and_not_free_memory() {
        let text = "MemTotal:         996512 kB\nMemFree:          956296 kB\n";
        let (used, not_free) = meminfo_used_mib(text, 1024).unwrap();
        assert_eq!(used, (996512.0 - 956296.0) / 1024.0);
        assert_eq!(not_free, 1024.0 - 956296.0 / 1024.0);
        // What a hostile or broken guest may print instead.
        for bad in [
            "",
            "MemTotal: 996512 kB\n",
            "MemTotal: NaN kB\nMemFree: 1 kB\n",
            "MemTotal: -5 kB\nMemFree: 1 kB\n",
            "MemTotal: 100 kB\nMemFree: 200 kB\n",
            "MemTotal: 99999999999999999999999 kB\nMemFree: 1 kB\n",
            "MemTotal: 2000000 kB\nMemFree: 1 kB\n",
            "MemTotal:\nMemFree:\n",
        ] {
            assert_eq!(meminfo_used_mib(bad, 1024), None, "{bad:?}");
        }
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[1.0, f64::NAN], 50.0), Some(1.0));
    }
}
