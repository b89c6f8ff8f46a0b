//! Runs the steps of a plan one after another, writing each step's files into a directory
//! of its own under the output directory.
//!
//! Progress goes to stdout as lines starting with `BENCH-`, which scripts/bench.sh reads
//! (inside a nested KVM host it sees only that host's console). With `print`, each
//! finished step's files follow its result line, framed so they can be cut out again:
//!
//!   BENCH-FILE <step directory>/<file name>
//!   ...the file's lines...
//!   BENCH-FILE-END

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use crate::plan::{GuestFiles, Selection, Step};
use crate::procfs;
use crate::results::{step_dir_name, RESULT_FILE};
use crate::scenario;

/// Writes one line to stdout. Output that cannot be written (nobody reads it any more) is
/// dropped: the results are in the files.
pub fn say(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Where this tool runs: the machine whose CPUs the VMMs use (the nested KVM host, when
/// nested), written to `environment.json` in the output directory.
fn environment() -> serde_json::Value {
    let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string());
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let mem_kib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    serde_json::json!({
        "cpu_model": cpu_model,
        "cpus": cpus,
        "mem_total_kib": mem_kib,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "load_at_start": procfs::load_average(),
    })
}

pub fn run(
    steps: &[Step],
    files: &GuestFiles,
    selection: &Selection,
    out: &Path,
    from_step: usize,
    print: bool,
) -> io::Result<()> {
    fs::create_dir_all(out)?;
    let env = environment();
    fs::write(out.join("environment.json"), format!("{env:#}\n"))?;
    if print {
        say(&format!(
            "BENCH-FILE environment.json\n{env:#}\nBENCH-FILE-END"
        ));
    }
    let total = steps.len();
    say(&format!("BENCH-PLAN {total} steps"));
    for step in steps.iter().filter(|s| s.number >= from_step) {
        say(&format!(
            "BENCH-STEP {} of {total}: {} with {} (repetition {}), load {}",
            step.number,
            step.scenario.name(),
            step.vmm.name,
            step.repetition,
            procfs::load_average().map_or("?".into(), |l| format!("{l:.2}")),
        ));
        let name = step_dir_name(step.number, step.scenario, &step.vmm.name);
        let dir = out.join(&name);
        fs::create_dir_all(&dir)?;
        let record = scenario::run_step(step, files, selection.timeline, &dir);
        let json = serde_json::to_string_pretty(&record).map_err(io::Error::other)?;
        fs::write(dir.join(RESULT_FILE), format!("{json}\n"))?;
        if print {
            print_dir(&dir, &name)?;
        }
        say(&format!(
            "BENCH-RESULT {} {} in {:.0} s{}",
            step.number,
            if record.ok() { "ok" } else { "FAILED" },
            record.duration_s,
            record.error.map_or(String::new(), |e| format!(": {e}")),
        ));
    }
    say("BENCH-DONE");
    Ok(())
}

/// Prints every file of `dir` framed (see the module's description), the result last, so
/// that a step whose files arrived whole is one whose result arrived.
fn print_dir(dir: &Path, name: &str) -> io::Result<()> {
    let mut files: Vec<_> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    files.sort_by_key(|f| (f == RESULT_FILE, f.clone()));
    for file in files {
        let bytes = fs::read(dir.join(&file))?;
        let text = String::from_utf8_lossy(&bytes);
        let newline = if text.ends_with('\n') || text.is_empty() {
            ""
        } else {
            "\n"
        };
        say(&format!(
            "BENCH-FILE {name}/{file}\n{text}{newline}BENCH-FILE-END"
        ));
    }
    Ok(())
}
