//! What one step of a run leaves behind, as the runner writes it and the report reads it:
//! a directory per step holding `result.json` ([`StepRecord`]), `rss.csv` (the
//! sampler's series) and the consoles and stderr of its VMMs.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::launch::Kind;
use crate::plan::Scenario;

pub const RESULT_FILE: &str = "result.json";
pub const RSS_FILE: &str = "rss.csv";

/// A stretch of a scenario, with the CPU time the VMM processes used in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    pub name: String,
    /// Seconds since the exec of the (first) VMM.
    pub start_s: f64,
    pub end_s: f64,
    /// CPU seconds of the vCPU threads (the guest running, and exits handled there).
    pub vcpu_cpu_s: f64,
    /// CPU seconds of every other VMM thread (device emulation, the API, helpers).
    pub vmm_cpu_s: f64,
}

/// One step: one scenario booted with one VMM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: usize,
    pub repetition: usize,
    pub scenario: Scenario,
    pub vmm: String,
    pub kind: Kind,
    /// The command line of the (first) VMM, as a shell would take it.
    pub command: String,
    /// Why the step did not finish, in one sentence; its figures are then left out.
    pub error: Option<String>,
    /// The figures this step measured, by name (see `figures.rs`).
    pub figures: BTreeMap<String, f64>,
    pub phases: Vec<Phase>,
    /// Latencies of the balloon reads made while the balloon was inflating, in ms.
    pub latencies_ms: Vec<f64>,
    /// The 1-minute load average of the machine running the VMMs when the step began.
    pub load_at_start: Option<f64>,
    /// Wall-clock seconds the step took.
    pub duration_s: f64,
}

impl StepRecord {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// The directory name of a step.
pub fn step_dir_name(step: usize, scenario: Scenario, vmm: &str) -> String {
    format!("{step:03}-{}-{vmm}", scenario.name())
}

/// Reads every step record under `dir` (one subdirectory per step), in step order.
/// Directories without a record (a step an L1 crash cut short) are skipped.
pub fn read_steps(dir: &Path) -> io::Result<Vec<(StepRecord, std::path::PathBuf)>> {
    let mut steps = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let Ok(text) = fs::read_to_string(path.join(RESULT_FILE)) else {
            continue;
        };
        let record: StepRecord = serde_json::from_str(&text).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.join(RESULT_FILE).display()),
            )
        })?;
        steps.push((record, path));
    }
    steps.sort_by_key(|(r, _)| r.step);
    Ok(steps)
}
