//! vmm-bench: runs vmm and QEMU side by side on the same guest and reports how they compare.
//! scripts/bench.sh builds it and drives it; see docs/performance.md.
//!
//!   vmm-bench run --vmm vmm=PATH [--qemu PATH | --qemu-bundle DIR] --kernel K --initrd I ...
//!       boots the scenarios' guests, one step at a time, and writes each step's results
//!       under --out (inside the nested KVM host when nested)
//!   vmm-bench report --run DIR [--doc FILE]
//!       the goals, the table of medians and ratios and the plots of a run

mod console;
mod control;
mod figures;
mod http;
mod launch;
mod plan;
mod procfs;
mod qmp;
mod report;
mod results;
mod run;
mod sampler;
mod scenario;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use launch::VmmUnderTest;
use plan::{GuestFiles, Selection};

#[derive(Parser)]
#[command(
    name = "vmm-bench",
    about = "Runs vmm and QEMU side by side and reports how they compare"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot the scenarios' guests with each VMM, alternating, and record what they measure.
    Run(RunArgs),
    /// Write the report of a run: goals, figures, plots.
    Report(ReportArgs),
}

#[derive(Args)]
struct RunArgs {
    /// A vmm build to run, as NAME=PATH (NAME `vmm` for the build under test, `baseline`
    /// for the one it is compared with); repeatable.
    #[arg(long = "vmm", value_name = "NAME=PATH", value_parser = parse_vmm)]
    vmms: Vec<VmmUnderTest>,
    /// The QEMU binary to compare with.
    #[arg(long, value_name = "PATH", conflicts_with = "qemu_bundle")]
    qemu: Option<PathBuf>,
    /// QEMU packed with its libraries, loader and firmware (scripts/lib.sh, bundle_qemu).
    #[arg(long, value_name = "DIR")]
    qemu_bundle: Option<PathBuf>,
    /// The stock guest kernel (bzImage).
    #[arg(long)]
    kernel: PathBuf,
    /// The minimal guest kernel, for the `minimal` scenario.
    #[arg(long)]
    minimal_kernel: Option<PathBuf>,
    /// The guest initramfs (scripts/guest-initramfs.sh).
    #[arg(long)]
    initrd: PathBuf,
    /// Added to every guest's kernel command line.
    #[arg(long, default_value = "quiet")]
    cmdline: String,
    /// Repetitions of each scenario per VMM.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=100))]
    runs: u64,
    /// Only these parts (comma-separated): boot, minimal, reclaim, inflate, burst,
    /// timeline (= reclaim,inflate,burst), density.
    #[arg(long, value_name = "PARTS")]
    only: Option<Selection>,
    /// Where each step's results go, a directory per step.
    #[arg(long)]
    out: PathBuf,
    /// Start with this step (counted from 1), to go on after an interrupted run.
    #[arg(long, default_value_t = 1)]
    from_step: usize,
    /// Also print each finished step's files on stdout, framed (for a nested KVM host,
    /// whose only way out is its console).
    #[arg(long)]
    print: bool,
    /// List the steps and exit.
    #[arg(long)]
    list: bool,
}

#[derive(Args)]
struct ReportArgs {
    /// The run directory (run-info.json and steps/).
    #[arg(long)]
    run: PathBuf,
    /// Fill the results section of this document (e.g. docs/performance.md), its plots in
    /// the directory of its name (docs/performance/). Without it the report is written to
    /// DIR/report.md, its plots to DIR/report/.
    #[arg(long)]
    doc: Option<PathBuf>,
}

fn parse_vmm(s: &str) -> Result<VmmUnderTest, String> {
    let (name, path) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=PATH"))?;
    if name.is_empty()
        || name == "qemu"
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(format!(
            "{name:?} cannot name a vmm build: use letters, digits and hyphens, not \"qemu\""
        ));
    }
    Ok(VmmUnderTest::vmm(name, Path::new(path)))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Report(args) => report(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            run::say(&format!("vmm-bench: {message}"));
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> Result<(), String> {
    let mut vmms = args.vmms.clone();
    if let Some(dir) = &args.qemu_bundle {
        vmms.push(VmmUnderTest::qemu_bundle(dir));
    } else if let Some(qemu) = &args.qemu {
        vmms.push(VmmUnderTest::qemu(qemu));
    }
    if vmms.is_empty() {
        return Err("nothing to run: give --vmm, --qemu or --qemu-bundle".into());
    }
    let selection = args.only.unwrap_or_else(Selection::everything);
    if selection.minimal && args.minimal_kernel.is_none() {
        return Err("the minimal scenario needs --minimal-kernel".into());
    }
    let files = GuestFiles {
        kernel: args.kernel,
        minimal_kernel: args.minimal_kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
    };
    let steps = plan::steps(&selection, &vmms, args.runs as usize);
    if args.list {
        for s in &steps {
            run::say(&format!(
                "{} {} {} {}",
                s.number,
                s.repetition,
                s.scenario.name(),
                s.vmm.name
            ));
        }
        return Ok(());
    }
    run::run(
        &steps,
        &files,
        &selection,
        &args.out,
        args.from_step,
        args.print,
    )
    .map_err(|e| format!("writing the results under {}: {e}", args.out.display()))
}

fn report(args: ReportArgs) -> Result<(), String> {
    let data = report::RunData::load(&args.run)
        .map_err(|e| format!("reading the run in {}: {e}", args.run.display()))?;
    if data.steps.is_empty() {
        return Err(format!("{} holds no finished step", args.run.display()));
    }
    let (doc, existing) = match &args.doc {
        Some(doc) => {
            let text = fs::read_to_string(doc)
                .map_err(|e| format!("cannot read {}: {e}", doc.display()))?;
            (doc.clone(), Some(text))
        }
        None => (args.run.join("report.md"), None),
    };
    let stem = doc
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "report".into());
    let plots_dir = doc.with_file_name(&stem);
    let section = report::render(&data, &plots_dir, &stem)
        .map_err(|e| format!("drawing the plots into {}: {e}", plots_dir.display()))?;
    let text = match existing {
        Some(text) => {
            report::splice(&text, &section).map_err(|e| format!("{}: {e}", doc.display()))?
        }
        None => format!("# Benchmark report\n\n{}\n", section.trim()),
    };
    fs::write(&doc, text).map_err(|e| format!("cannot write {}: {e}", doc.display()))?;
    run::say(&format!(
        "vmm-bench: wrote {} and its plots in {}",
        doc.display(),
        plots_dir.display()
    ));
    Ok(())
}
