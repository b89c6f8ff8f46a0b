//! The report of a run: the goals, a table of medians and ratios, the plots, the CPU time
//! by phase, the runs that failed and the exact command lines, as Markdown.
//!
//! A run directory holds `run-info.json` (written by scripts/bench.sh: the machine, the
//! mode, the load average over the run, versions) and `steps/` (written by `vmm-bench run`).
//! The report either fills the results section of an existing document, between
//! [`BEGIN_MARKER`] and [`END_MARKER`], leaving the hand-written text around it alone, or
//! is written as a document of its own.

mod plot;
pub mod stats;

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::figures::{key, Figure, Unit, BACKING_FIGURES, FIGURES, OWN_OVERHEAD, SLACK_FIGURES};
use crate::plan::Scenario;
use crate::results::{read_steps, StepRecord};
use stats::{summarize, Summary};

pub const BEGIN_MARKER: &str =
    "<!-- results: begin (written by scripts/bench.sh from a run; edit outside these markers) -->";
pub const END_MARKER: &str = "<!-- results: end -->";

/// The VMM every ratio is taken against.
const REFERENCE: &str = "qemu";

/// Everything a run left behind.
pub struct RunData {
    pub info: Value,
    pub env: Value,
    pub steps: Vec<(StepRecord, PathBuf)>,
    /// The VMMs in the order the report shows them: vmm, other vmm builds, QEMU.
    pub vmms: Vec<String>,
}

impl RunData {
    pub fn load(run_dir: &Path) -> io::Result<RunData> {
        let json = |name: &str| -> io::Result<Value> {
            let path = run_dir.join(name);
            match fs::read_to_string(&path) {
                Ok(text) => serde_json::from_str(&text).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: {e}", path.display()),
                    )
                }),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Value::Null),
                Err(e) => Err(e),
            }
        };
        let steps = read_steps(&run_dir.join("steps"))?;
        let mut vmms: Vec<String> = Vec::new();
        for (r, _) in &steps {
            if !vmms.contains(&r.vmm) {
                vmms.push(r.vmm.clone());
            }
        }
        vmms.sort_by_key(|v| match v.as_str() {
            "vmm" => 0,
            REFERENCE => 2,
            _ => 1,
        });
        Ok(RunData {
            info: json("run-info.json")?,
            env: json("steps/environment.json")?,
            steps,
            vmms,
        })
    }

    /// The steps of `scenario` run with `vmm` that finished.
    pub fn ok_steps<'a>(
        &'a self,
        scenario: Scenario,
        vmm: &'a str,
    ) -> impl Iterator<Item = &'a (StepRecord, PathBuf)> + 'a {
        self.steps
            .iter()
            .filter(move |(r, _)| r.ok() && r.scenario == scenario && r.vmm == vmm)
    }

    pub fn values(&self, scenario: Scenario, key: &str, vmm: &str) -> Vec<f64> {
        self.ok_steps(scenario, vmm)
            .filter_map(|(r, _)| r.figures.get(key).copied())
            .collect()
    }

    pub fn summary(&self, scenario: Scenario, key: &str, vmm: &str) -> Option<Summary> {
        summarize(&self.values(scenario, key, vmm))
    }

    fn has(&self, vmm: &str) -> bool {
        self.vmms.iter().any(|v| v == vmm)
    }
}

/// Writes the report: its Markdown (returned) and its plots into `plots_dir`, which the
/// Markdown links to as `plots_link/NAME.svg`.
pub fn render(data: &RunData, plots_dir: &Path, plots_link: &str) -> io::Result<String> {
    fs::create_dir_all(plots_dir)?;
    let plots = plot::draw_all(data, plots_dir).map_err(io::Error::other)?;
    let mut md = String::new();
    run_section(data, &mut md);
    // The backings and slack parts alone compare vmm with itself: no goals, no VMM columns.
    if data.steps.iter().any(|(r, _)| !r.scenario.vmm_only()) {
        goals_section(data, &mut md);
        figures_section(data, &mut md);
    }
    backings_section(data, &mut md);
    slack_section(data, &mut md);
    if !plots.is_empty() {
        md.push_str("\n### Plots\n\n");
        for (file, caption) in &plots {
            let _ = writeln!(md, "![{caption}]({plots_link}/{file})\n\n*{caption}*\n");
        }
    }
    phases_section(data, &mut md);
    failures_section(data, &mut md);
    commands_section(data, &mut md);
    Ok(md)
}

/// Replaces the results section of `doc` with `section`.
pub fn splice(doc: &str, section: &str) -> Result<String, String> {
    let (Some(begin), Some(end)) = (doc.find(BEGIN_MARKER), doc.find(END_MARKER)) else {
        return Err(format!(
            "the document has no results section: it needs the lines {BEGIN_MARKER:?} and {END_MARKER:?}"
        ));
    };
    if end < begin {
        return Err("the document's results markers are in the wrong order".into());
    }
    Ok(format!(
        "{}{BEGIN_MARKER}\n{}\n{}",
        &doc[..begin],
        section.trim(),
        &doc[end..]
    ))
}

fn str_field<'a>(v: &'a Value, name: &str) -> Option<&'a str> {
    v.get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn run_section(data: &RunData, md: &mut String) {
    let info = &data.info;
    md.push_str("### The run\n\n");
    if let Some(date) = str_field(info, "started_utc") {
        let _ = writeln!(md, "- **When**: {date}");
    }
    if let Some(host) = str_field(info, "host") {
        let _ = writeln!(md, "- **Machine**: {host}");
    }
    let mode = str_field(info, "mode").unwrap_or("unknown");
    let env = &data.env;
    let kvm_host = format!(
        "{} CPUs ({}), {} MiB, Linux {}",
        env.get("cpus").and_then(Value::as_u64).unwrap_or(0),
        str_field(env, "cpu_model").unwrap_or("unknown CPU"),
        env.get("mem_total_kib")
            .and_then(Value::as_u64)
            .unwrap_or(0)
            / 1024,
        str_field(env, "kernel").unwrap_or("?"),
    );
    match mode {
        "nested" => {
            let l1 = str_field(info, "l1").unwrap_or("");
            let _ = writeln!(
                md,
                "- **Mode**: nested. The VMMs ran inside a KVM host (L1) that QEMU emulates in \
                 software on the machine above ({l1}); L1 saw {kvm_host}. Times are far longer \
                 than on hardware with KVM: compare the VMMs by their ratios, not by the \
                 absolute figures."
            );
        }
        _ => {
            let _ = writeln!(md, "- **Mode**: {mode}: the VMMs ran on {kvm_host}.");
        }
    }
    if let Some(load) = info.get("load").and_then(Value::as_array) {
        let loads: Vec<f64> = load.iter().filter_map(Value::as_f64).collect();
        if let Some(s) = summarize(&loads) {
            let _ = writeln!(
                md,
                "- **Load average** of the machine (1 min, sampled every 30 s during the run, {} samples): \
                 median {:.1}, {:.1} to {:.1}",
                s.n, s.median, s.min, s.max
            );
        }
    }
    let l1_loads: Vec<f64> = data
        .steps
        .iter()
        .filter_map(|(r, _)| r.load_at_start)
        .collect();
    if let (Some(s), "nested") = (summarize(&l1_loads), mode) {
        let _ = writeln!(
            md,
            "- **Load average inside L1** at the start of each step: median {:.1}, {:.1} to {:.1}",
            s.median, s.min, s.max
        );
    }
    for (field, label) in [
        ("vmm", "vmm"),
        ("baseline", "baseline vmm"),
        ("qemu", "QEMU"),
        ("guest_kernel", "Guest kernels"),
        ("command", "Command"),
    ] {
        if let Some(v) = str_field(info, field) {
            let _ = writeln!(md, "- **{label}**: {v}");
        }
    }
    let runs = info.get("runs").and_then(Value::as_u64).unwrap_or(0);
    let duration = info
        .get("duration_s")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    let failed = data.steps.iter().filter(|(r, _)| !r.ok()).count();
    let _ = writeln!(
        md,
        "- **Runs**: {runs} of each scenario per VMM, alternating (the VMM that goes first \
         changes every repetition); {} steps finished, {failed} failed; the whole run took {:.0} min.",
        data.steps.len() - failed,
        duration / 60.0
    );
    md.push('\n');
}

fn fmt_summary(s: &Summary, unit: Unit, runs: usize) -> String {
    let d = unit.decimals();
    let mut text = format!("{:.*}", d, s.median);
    if s.n > 1 {
        let _ = write!(text, " ({:.*}–{:.*})", d, s.min, d, s.max);
    }
    if runs > 0 && s.n < runs {
        let _ = write!(text, " n={}", s.n);
    }
    text
}

fn ratio(a: Option<Summary>, b: Option<Summary>) -> Option<f64> {
    let (a, b) = (a?, b?);
    (b.median != 0.0).then(|| a.median / b.median)
}

fn figures_section(data: &RunData, md: &mut String) {
    let runs = data.info.get("runs").and_then(Value::as_u64).unwrap_or(0) as usize;
    let others: Vec<&String> = data.vmms.iter().filter(|v| v.as_str() != "vmm").collect();
    md.push_str("### Figures\n\nMedian of the runs, with the smallest and largest in brackets");
    md.push_str(" (`n=` when fewer runs than asked for finished).\n\n| figure | unit |");
    for v in &data.vmms {
        let _ = write!(md, " {v} |");
    }
    for o in &others {
        let _ = write!(md, " vmm/{o} |");
    }
    md.push_str("\n| --- | --- |");
    for _ in 0..data.vmms.len() + others.len() {
        md.push_str(" ---: |");
    }
    md.push('\n');
    for f in FIGURES {
        let row: Vec<Option<Summary>> = data
            .vmms
            .iter()
            .map(|v| data.summary(f.scenario, f.key, v))
            .collect();
        if row.iter().all(Option::is_none) {
            continue;
        }
        let _ = write!(md, "| {} | {} |", f.label, f.unit.suffix().trim());
        for s in &row {
            let cell = s.map_or("—".to_string(), |s| fmt_summary(&s, f.unit, runs));
            let _ = write!(md, " {cell} |");
        }
        let vmm = data.summary(f.scenario, f.key, "vmm");
        for o in &others {
            let cell = ratio(vmm, data.summary(f.scenario, f.key, o))
                .filter(|_| ratio_means_something(f))
                .map_or("—".to_string(), |r| format!("{r:.2}"));
            let _ = write!(md, " {cell} |");
        }
        md.push('\n');
    }
    md.push('\n');
}

/// vmm on each backing of guest RAM, `anon` the reference: medians and ratios.
fn backings_section(data: &RunData, md: &mut String) {
    let backings: Vec<(Scenario, &str)> = Scenario::BACKINGS
        .iter()
        .filter_map(|s| Some((*s, s.backing()?.name())))
        .collect();
    if !data
        .steps
        .iter()
        .any(|(r, _)| r.vmm == "vmm" && r.scenario.backing().is_some())
    {
        return;
    }
    let runs = data.info.get("runs").and_then(Value::as_u64).unwrap_or(0) as usize;
    let (reference, others) = (backings[0], &backings[1..]);
    md.push_str(
        "### Huge-page backings

vmm on each `--mem-backing` (1 GiB, 2 vCPUs, \
         `--balloon page-reporting,stats`). Host memory is the vmm's VmRSS plus the host's \
         hugetlb pages in use. Median of the runs, with the smallest and largest in brackets.\n\n| figure | unit |",
    );
    for (_, name) in &backings {
        let _ = write!(md, " {name} |");
    }
    for (_, name) in others {
        let _ = write!(md, " {name}/{} |", reference.1);
    }
    md.push_str("\n| --- | --- |");
    for _ in 0..backings.len() + others.len() {
        md.push_str(" ---: |");
    }
    md.push('\n');
    for f in BACKING_FIGURES {
        let row: Vec<Option<Summary>> = backings
            .iter()
            .map(|(s, _)| data.summary(*s, f.key, "vmm"))
            .collect();
        if row.iter().all(Option::is_none) {
            continue;
        }
        let _ = write!(md, "| {} | {} |", f.label, f.unit.suffix().trim());
        for s in &row {
            let cell = s.map_or("—".to_string(), |s| fmt_summary(&s, f.unit, runs));
            let _ = write!(md, " {cell} |");
        }
        for other in &row[1..] {
            let cell = ratio(*other, row[0])
                .filter(|_| ratio_means_something(f))
                .map_or("—".to_string(), |r| format!("{r:.2}"));
            let _ = write!(md, " {cell} |");
        }
        md.push('\n');
    }
    md.push('\n');
}

/// vmm's idle guest in each slack variant, the baseline (as users run it) first: medians.
fn slack_section(data: &RunData, md: &mut String) {
    let variants: Vec<(Scenario, &str)> = Scenario::SLACK
        .iter()
        .filter_map(|s| Some((*s, s.slack_variant()?)))
        .filter(|(s, _)| {
            data.steps
                .iter()
                .any(|(r, _)| r.vmm == "vmm" && r.scenario == *s)
        })
        .collect();
    if variants.is_empty() {
        return;
    }
    let runs = data.info.get("runs").and_then(Value::as_u64).unwrap_or(0) as usize;
    md.push_str(
        "### Where an idle guest's slack is

vmm's idle guest (stock kernel, 1 GiB, 2 vCPUs, `--balloon page-reporting,stats`), 30 s \
         after ready, in each way of getting its free memory back. Median of the runs, with \
         the smallest and largest in brackets.\n\n| figure | unit |",
    );
    for (_, name) in &variants {
        let _ = write!(md, " {name} |");
    }
    md.push_str("\n| --- | --- |");
    for _ in &variants {
        md.push_str(" ---: |");
    }
    md.push('\n');
    for f in SLACK_FIGURES {
        let row: Vec<Option<Summary>> = variants
            .iter()
            .map(|(s, _)| data.summary(*s, f.key, "vmm"))
            .collect();
        if row.iter().all(Option::is_none) {
            continue;
        }
        let _ = write!(md, "| {} | {} |", f.label, f.unit.suffix().trim());
        for s in &row {
            let cell = s.map_or("—".to_string(), |s| fmt_summary(&s, f.unit, runs));
            let _ = write!(md, " {cell} |");
        }
        md.push('\n');
    }
    md.push('\n');
}

/// Ratios of counts and of shares are not meaningful ("0 kills / 0 kills").
fn ratio_means_something(f: &Figure) -> bool {
    !matches!(f.unit, Unit::Count | Unit::Percent)
}

/// One goal of issue 10, judged on vmm's medians.
struct Goal {
    goal: &'static str,
    measured: String,
    met: Option<bool>,
    short_by: String,
}

fn goals(data: &RunData) -> Vec<Goal> {
    let mut goals = Vec::new();
    let against_qemu = |goal: &'static str, scenario: Scenario, key: &str, limit: f64| {
        let (vmm, qemu) = (
            data.summary(scenario, key, "vmm"),
            data.summary(scenario, key, REFERENCE),
        );
        match (vmm, qemu, ratio(vmm, qemu)) {
            (Some(v), Some(q), Some(r)) => Goal {
                goal,
                measured: format!("{r:.2}× (vmm {:.1} s, QEMU {:.1} s)", v.median, q.median),
                met: Some(r <= limit),
                short_by: if r <= limit {
                    String::new()
                } else {
                    format!(
                        "{:.1} s too slow: needs {:.1} s, {:.0} % less",
                        v.median - limit * q.median,
                        limit * q.median,
                        100.0 * (1.0 - limit * q.median / v.median)
                    )
                },
            },
            _ => not_measured(goal),
        }
    };
    goals.push(against_qemu(
        "inflate 256 MiB ≤ 0.4× QEMU",
        Scenario::Timeline,
        key::INFLATE_256_S,
        0.4,
    ));
    goals.push(against_qemu(
        "exec → guest ready ≤ 0.4× QEMU (stock kernel)",
        Scenario::Boot,
        key::EXEC_TO_READY_S,
        0.4,
    ));
    goals.push(against_qemu(
        "exec → guest ready ≤ 0.4× QEMU (minimal kernel)",
        Scenario::Minimal,
        key::EXEC_TO_READY_S,
        0.4,
    ));

    let own: Vec<(&Figure, Summary)> = OWN_OVERHEAD
        .iter()
        .filter_map(|(scenario, k)| {
            let f = FIGURES
                .iter()
                .find(|f| f.scenario == *scenario && f.key == *k)?;
            Some((f, data.summary(*scenario, k, "vmm")?))
        })
        .collect();
    let goal = "own overhead ≤ 3 MiB at any guest size and vCPU count";
    goals.push(
        match own.iter().max_by(|a, b| a.1.median.total_cmp(&b.1.median)) {
            Some((f, worst)) => Goal {
                goal,
                measured: format!(
                    "at most {:.1} MiB ({}; {} configurations measured)",
                    worst.median,
                    f.label,
                    own.len()
                ),
                met: Some(worst.median <= 3.0),
                short_by: if worst.median <= 3.0 {
                    String::new()
                } else {
                    format!("{:.1} MiB over", worst.median - 3.0)
                },
            },
            None => not_measured(goal),
        },
    );

    let goal = "95 % of freed memory back on the host within 5 s";
    goals.push(
        match data.summary(Scenario::Timeline, key::RETURNED_5S_PCT, "vmm") {
            Some(s) => Goal {
                goal,
                measured: format!("{:.0} % after 5 s", s.median),
                met: Some(s.median >= 95.0),
                short_by: if s.median >= 95.0 {
                    String::new()
                } else {
                    format!("{:.0} percentage points short", 95.0 - s.median)
                },
            },
            None => not_measured(goal),
        },
    );

    // The goal counts what the guest kernel reserved at boot, outside MemTotal, as in use
    // (RAM − MemFree): no VMM can avoid holding memory the guest wrote.
    let goal = "idle guest 30 s after boot (`--balloon page-reporting,stats`): host RSS ≤ 1.1× the guest memory not free (RAM − MemFree)";
    goals.push(
        match (
            data.summary(Scenario::Boot, key::IDLE_RATIO_NOT_FREE, "vmm"),
            data.summary(Scenario::Boot, key::RSS_IDLE_MIB, "vmm"),
            data.summary(Scenario::Boot, key::GUEST_NOT_FREE_IDLE_MIB, "vmm"),
        ) {
            (Some(r), Some(rss), Some(used)) => Goal {
                goal,
                measured: format!(
                    "{:.2}× (host RSS {:.1} MiB, not free {:.1} MiB)",
                    r.median, rss.median, used.median
                ),
                met: Some(r.median <= 1.1),
                short_by: if r.median <= 1.1 {
                    String::new()
                } else {
                    format!(
                        "{:.1} MiB too much: needs at most {:.1} MiB",
                        rss.median - 1.1 * used.median,
                        1.1 * used.median
                    )
                },
            },
            _ => not_measured(goal),
        },
    );
    goals
}

fn not_measured(goal: &'static str) -> Goal {
    Goal {
        goal,
        measured: "not measured in this run".into(),
        met: None,
        short_by: String::new(),
    }
}

fn goals_section(data: &RunData, md: &mut String) {
    if !data.has("vmm") {
        return;
    }
    md.push_str("### Goals\n\nEach judged on the medians of this run.\n\n");
    md.push_str("| goal | measured | met? | short by |\n| --- | --- | --- | --- |\n");
    for g in goals(data) {
        let met = match g.met {
            Some(true) => "**met**",
            Some(false) => "**not met**",
            None => "—",
        };
        let _ = writeln!(
            md,
            "| {} | {} | {met} | {} |",
            g.goal, g.measured, g.short_by
        );
    }
    md.push('\n');
}

/// Per phase: the median wall time and CPU time of each VMM's runs.
fn phases_section(data: &RunData, md: &mut String) {
    let mut wrote_heading = false;
    for scenario in [Scenario::Boot, Scenario::Timeline, Scenario::Density] {
        // The phase names of the first finished run; runs with other phases (a different
        // selection of parts) are left out.
        let Some(names) = data
            .steps
            .iter()
            .find(|(r, _)| r.ok() && r.scenario == scenario)
            .map(|(r, _)| r.phases.iter().map(|p| p.name.clone()).collect::<Vec<_>>())
        else {
            continue;
        };
        if !wrote_heading {
            md.push_str(
                "### Where the time goes, by phase\n\nMedian over the runs: wall-clock seconds of \
                 the phase, then CPU seconds of the VMM's vCPU threads (the guest running, and \
                 the exits handled on them) and of its other threads (the event loop and device \
                 emulation, the API, helpers), summed over all guests.\n\n",
            );
            wrote_heading = true;
        }
        let _ = write!(md, "**{}**\n\n| phase |", scenario.name());
        for v in &data.vmms {
            let _ = write!(md, " {v}: wall | vCPU | VMM |");
        }
        md.push_str("\n| --- |");
        for _ in &data.vmms {
            md.push_str(" ---: | ---: | ---: |");
        }
        md.push('\n');
        for (i, name) in names.iter().enumerate() {
            let _ = write!(md, "| {name} |");
            for v in &data.vmms {
                let phases: Vec<_> = data
                    .ok_steps(scenario, v)
                    .filter(|(r, _)| r.phases.len() == names.len())
                    .filter_map(|(r, _)| r.phases.get(i))
                    .collect();
                let med = |f: &dyn Fn(&crate::results::Phase) -> f64| {
                    summarize(&phases.iter().map(|p| f(p)).collect::<Vec<_>>())
                        .map_or("—".to_string(), |s| format!("{:.1}", s.median))
                };
                let _ = write!(
                    md,
                    " {} | {} | {} |",
                    med(&|p| p.end_s - p.start_s),
                    med(&|p| p.vcpu_cpu_s),
                    med(&|p| p.vmm_cpu_s)
                );
            }
            md.push('\n');
        }
        md.push('\n');
    }
}

fn failures_section(data: &RunData, md: &mut String) {
    let failed: Vec<&StepRecord> = data
        .steps
        .iter()
        .map(|(r, _)| r)
        .filter(|r| !r.ok())
        .collect();
    let lost = data.info.get("lost_steps").and_then(Value::as_array);
    if failed.is_empty() && lost.is_none_or(|l| l.is_empty()) {
        md.push_str("### Runs that failed\n\nNone.\n\n");
        return;
    }
    md.push_str("### Runs that failed\n\nLeft out of the medians above.\n\n");
    for r in failed {
        let _ = writeln!(
            md,
            "- step {} ({} with {}, repetition {}): {}",
            r.step,
            r.scenario.name(),
            r.vmm,
            r.repetition,
            r.error.as_deref().unwrap_or("")
        );
    }
    for l in lost.into_iter().flatten().filter_map(Value::as_str) {
        let _ = writeln!(md, "- {l}");
    }
    md.push('\n');
}

fn commands_section(data: &RunData, md: &mut String) {
    md.push_str("### Command lines\n\nAs run, for one guest of each scenario (paths are inside L1 when nested).\n\n");
    for scenario in Scenario::ALL {
        for v in &data.vmms {
            if let Some((r, _)) = data
                .steps
                .iter()
                .find(|(r, _)| r.scenario == scenario && &r.vmm == v && !r.command.is_empty())
            {
                let _ = writeln!(
                    md,
                    "{} with {v}:\n\n```\n{}\n```\n",
                    scenario.name(),
                    r.command
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch::Kind;
    use crate::results::Phase;
    use std::collections::BTreeMap;

    fn record(
        step: usize,
        scenario: Scenario,
        vmm: &str,
        figures: &[(&str, f64)],
    ) -> (StepRecord, PathBuf) {
        (
            StepRecord {
                step,
                repetition: 1,
                scenario,
                vmm: vmm.into(),
                kind: if vmm == "qemu" { Kind::Qemu } else { Kind::Vmm },
                command: format!("{vmm} --boot"),
                error: None,
                figures: figures
                    .iter()
                    .map(|(k, v)| (k.to_string(), *v))
                    .collect::<BTreeMap<_, _>>(),
                phases: vec![Phase {
                    name: "boot".into(),
                    start_s: 0.0,
                    end_s: 2.0,
                    vcpu_cpu_s: 1.5,
                    vmm_cpu_s: 0.25,
                }],
                latencies_ms: vec![],
                load_at_start: Some(1.0),
                duration_s: 10.0,
            },
            PathBuf::new(),
        )
    }

    fn data(steps: Vec<(StepRecord, PathBuf)>) -> RunData {
        RunData {
            info: serde_json::json!({"runs": 2, "mode": "nested", "load": [1.0, 3.0, 2.0]}),
            env: Value::Null,
            steps,
            vmms: vec!["vmm".into(), "qemu".into()],
        }
    }

    #[test]
    fn goals_are_judged_on_medians_with_the_shortfall() {
        let mut steps = vec![
            record(
                1,
                Scenario::Timeline,
                "vmm",
                &[(key::INFLATE_256_S, 6.0), (key::RETURNED_5S_PCT, 97.0)],
            ),
            record(2, Scenario::Timeline, "qemu", &[(key::INFLATE_256_S, 10.0)]),
            record(
                3,
                Scenario::Boot,
                "vmm",
                &[(key::EXEC_TO_READY_S, 3.0), (key::OWN_READY_MIB, 2.5)],
            ),
            record(
                4,
                Scenario::Boot,
                "qemu",
                &[(key::EXEC_TO_READY_S, 10.0), (key::OWN_READY_MIB, 50.0)],
            ),
        ];
        let mut failed = record(5, Scenario::Boot, "vmm", &[(key::EXEC_TO_READY_S, 99.0)]);
        failed.0.error = Some("the guest triple-faulted".into());
        steps.push(failed);
        let g = goals(&data(steps));
        assert_eq!(g[0].met, Some(false));
        assert!(g[0].measured.starts_with("0.60×"), "{}", g[0].measured);
        assert!(
            g[0].short_by.starts_with("2.0 s too slow: needs 4.0 s"),
            "{}",
            g[0].short_by
        );
        // The failed run's 99 s is left out.
        assert_eq!(g[1].met, Some(true));
        assert_eq!(g[2].met, None);
        assert_eq!(g[3].met, Some(true));
        assert!(g[3].measured.contains("2.5 MiB"), "{}", g[3].measured);
        assert_eq!(g[4].met, Some(true));
        assert_eq!(g[5].met, None);
    }

    #[test]
    fn the_table_has_medians_spreads_and_ratios() {
        let steps = vec![
            record(1, Scenario::Boot, "vmm", &[(key::EXEC_TO_READY_S, 3.0)]),
            record(2, Scenario::Boot, "qemu", &[(key::EXEC_TO_READY_S, 10.0)]),
            record(3, Scenario::Boot, "qemu", &[(key::EXEC_TO_READY_S, 12.0)]),
            record(4, Scenario::Boot, "vmm", &[(key::EXEC_TO_READY_S, 5.0)]),
        ];
        let mut md = String::new();
        figures_section(&data(steps), &mut md);
        assert!(
            md.contains("| exec → guest ready (stock kernel) | s | 4.0 (3.0–5.0) | 11.0 (10.0–12.0) | 0.36 |"),
            "{md}"
        );
        assert!(
            !md.contains("minimal kernel"),
            "rows without values are left out:\n{md}"
        );
    }

    #[test]
    fn the_backings_table_sets_each_backing_against_anon() {
        let steps = vec![
            record(
                1,
                Scenario::BackingAnon,
                "vmm",
                &[
                    (key::TOUCH_MIB_PER_S, 100.0),
                    (key::PARTIAL_HUGE_PAGES, 0.0),
                ],
            ),
            record(
                2,
                Scenario::BackingThp,
                "vmm",
                &[
                    (key::TOUCH_MIB_PER_S, 150.0),
                    (key::PARTIAL_HUGE_PAGES, 3.0),
                ],
            ),
            record(
                3,
                Scenario::BackingHugetlb,
                "vmm",
                &[
                    (key::TOUCH_MIB_PER_S, 200.0),
                    (key::PARTIAL_HUGE_PAGES, 5.0),
                ],
            ),
        ];
        let mut md = String::new();
        backings_section(&data(steps), &mut md);
        assert!(
            md.contains("| anon | thp | hugetlb | thp/anon | hugetlb/anon |"),
            "{md}"
        );
        assert!(
            md.contains("| MiB/s | 100 n=1 | 150 n=1 | 200 n=1 | 1.50 | 2.00 |"),
            "{md}"
        );
        assert!(
            md.contains("(GET /balloon) |  | 0 n=1 | 3 n=1 | 5 n=1 | — | — |"),
            "counts get no ratio:\n{md}"
        );
        assert!(!md.contains("exec → guest ready"), "{md}");
        let mut md = String::new();
        backings_section(&data(vec![record(1, Scenario::Boot, "vmm", &[])]), &mut md);
        assert_eq!(md, "", "no table without the backings part");
    }

    #[test]
    fn the_slack_table_has_a_column_per_variant_that_ran() {
        let steps = vec![
            record(
                1,
                Scenario::SlackBaseline,
                "vmm",
                &[(key::SLACK_RATIO, 1.15), (key::SLACK_ORDER, 9.0)],
            ),
            record(
                2,
                Scenario::SlackOrder5,
                "vmm",
                &[(key::SLACK_RATIO, 1.05), (key::SLACK_ORDER, 5.0)],
            ),
        ];
        let mut md = String::new();
        slack_section(&data(steps), &mut md);
        assert!(
            md.contains("| figure | unit | baseline | order 5 |\n"),
            "{md}"
        );
        assert!(
            md.contains("(goal ≤ 1.1) | × | 1.15 n=1 | 1.05 n=1 |"),
            "{md}"
        );
        assert!(
            md.contains("| reporting order in effect |  | 9 n=1 | 5 n=1 |"),
            "{md}"
        );
        assert!(
            !md.contains("compaction"),
            "rows without values are left out:\n{md}"
        );
        let mut md = String::new();
        slack_section(&data(vec![record(1, Scenario::Boot, "vmm", &[])]), &mut md);
        assert_eq!(md, "", "no table without the slack part");
    }

    #[test]
    fn the_phase_table_takes_medians() {
        let steps = vec![
            record(1, Scenario::Boot, "vmm", &[]),
            record(2, Scenario::Boot, "qemu", &[]),
        ];
        let mut md = String::new();
        phases_section(&data(steps), &mut md);
        assert!(
            md.contains("| boot | 2.0 | 1.5 | 0.2 | 2.0 | 1.5 | 0.2 |"),
            "{md}"
        );
    }

    #[test]
    fn splice_replaces_only_the_results_section() {
        let doc = format!("# Title\n\nprose\n\n{BEGIN_MARKER}\nold\n{END_MARKER}\n\nmore prose\n");
        let new = splice(&doc, "new table\n").unwrap();
        assert_eq!(
            new,
            format!("# Title\n\nprose\n\n{BEGIN_MARKER}\nnew table\n{END_MARKER}\n\nmore prose\n")
        );
        assert!(splice("no markers", "x").is_err());
        assert!(splice(&format!("{END_MARKER}\n{BEGIN_MARKER}"), "x").is_err());
    }
}
