//! The `vmm` command line: parses arguments, sets up logging, runs the VM (or the `ctl`
//! client), and turns the outcome into one line on stderr and an exit status.
//!
//! That last line is the program's answer, not a log message: it is written plainly
//! (`vmm: ...`), whatever the log level, as are usage errors. Everything logged while the VM
//! runs goes through [`vmm::logging`]. Nothing here panics when stderr or stdout is closed
//! or a pipe nobody reads: write errors are ignored, since there is nowhere left to report
//! them.

use std::fmt::Display;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use log::LevelFilter;

use vmm::api::CtlArgs;
use vmm::config::{VmConfig, DEFAULT_MEMORY};
use vmm::devices::virtio::balloon::BalloonConfig;
use vmm::lifecycle::exit_status;
use vmm::logging::LogConfig;
use vmm::memory::MemoryBacking;
use vmm::size::parse_size;

/// A small KVM virtual machine monitor built around a complete virtio memory balloon.
#[derive(Parser, Debug)]
#[command(
    name = "vmm",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Talk to a running vmm through its API socket.
    Ctl(CtlArgs),
}

/// Boot a Linux bzImage.
#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The guest kernel (an x86_64 bzImage).
    #[arg(long, value_name = "PATH", required = true)]
    kernel: Option<PathBuf>,
    /// An initramfs for the guest.
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Added to the end of the kernel command line (after "console=ttyS0 reboot=k panic=1 pci=off").
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    cmdline: Option<String>,
    /// Guest memory: 512M, 2G, 1536MiB, 2GiB or bytes.
    #[arg(long, value_name = "SIZE", value_parser = parse_size_arg, default_value_t = DEFAULT_MEMORY, hide_default_value = true)]
    mem: u64,
    /// What backs guest memory. thp and hugetlb need --mem in whole 2 MiB pages; hugetlb
    /// needs that many free pages in the host's pool (/proc/sys/vm/nr_hugepages).
    #[arg(long, value_name = "KIND", value_enum, default_value_t = Backing::Anon)]
    mem_backing: Backing,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    cpus: u8,
    /// Attach a virtio balloon. ITEMS is a comma-separated list of: stats[=SECONDS],
    /// deflate-on-oom, page-reporting, free-page-hint, page-poison, must-tell-host,
    /// size=SIZE. Without ITEMS the balloon has no optional features.
    #[arg(long, value_name = "ITEMS", num_args = 0..=1, default_missing_value = "", value_parser = parse_balloon_arg)]
    balloon: Option<BalloonConfig>,
    /// Serve the JSON API on this Unix socket (mode 0600; removed when vmm exits).
    #[arg(long, value_name = "PATH")]
    api_sock: Option<PathBuf>,
    /// Log messages of this level and above to stderr [default: warn]. Sets the level of
    /// every module; module directives in RUST_LOG (virtio_queue=debug) still apply.
    #[arg(long, value_name = "LEVEL", value_enum)]
    log_level: Option<LogLevel>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Backing {
    /// Private anonymous memory in 4 KiB pages.
    Anon,
    /// A memfd mapped shared, in 4 KiB pages.
    Memfd,
    /// Private anonymous memory in transparent huge pages (MADV_HUGEPAGE).
    Thp,
    /// A memfd of 2 MiB hugetlb pages, reserved at start.
    Hugetlb,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
    Off,
}

impl From<LogLevel> for LevelFilter {
    fn from(level: LogLevel) -> LevelFilter {
        match level {
            LogLevel::Error => LevelFilter::Error,
            LogLevel::Warn => LevelFilter::Warn,
            LogLevel::Info => LevelFilter::Info,
            LogLevel::Debug => LevelFilter::Debug,
            LogLevel::Trace => LevelFilter::Trace,
            LogLevel::Off => LevelFilter::Off,
        }
    }
}

fn parse_balloon_arg(text: &str) -> Result<BalloonConfig, String> {
    text.parse::<BalloonConfig>().map_err(|e| e.to_string())
}

fn parse_size_arg(text: &str) -> Result<u64, String> {
    parse_size(text).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_error(e),
    };
    if let Some(Command::Ctl(args)) = cli.command {
        return run_ctl(&args);
    }
    run_vm(cli.run)
}

/// Help and version go to stdout as clap formats them; a usage error becomes one line.
fn clap_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        _ => {
            // clap's message may continue on the next lines (e.g. the missing argument's
            // name); keep everything before the usage block, on one line.
            let rendered = e.render().to_string();
            let message: Vec<&str> = rendered
                .lines()
                .map(str::trim)
                .take_while(|l| !l.is_empty() && !l.starts_with("Usage:"))
                .collect();
            let first = message.join(" ");
            let first = first.trim_start_matches("error: ");
            fail(
                format_args!("vmm: {first} (see vmm --help)"),
                exit_status::USAGE,
            )
        }
    }
}

fn run_ctl(args: &CtlArgs) -> ExitCode {
    let mut stdout = std::io::stdout();
    match vmm::api::run_ctl(args, &mut stdout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(format_args!("vmm ctl: {e}"), 1),
    }
}

fn run_vm(args: RunArgs) -> ExitCode {
    let Some(kernel) = args.kernel else {
        return fail(
            "vmm: --kernel is required (see vmm --help)",
            exit_status::USAGE,
        );
    };
    let rust_log = match std::env::var("RUST_LOG") {
        Ok(spec) => Some(spec),
        Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(_)) => {
            return fail("vmm: RUST_LOG is not valid UTF-8", exit_status::USAGE);
        }
    };
    let log_config = LogConfig {
        level: args.log_level.map(LevelFilter::from),
        rust_log,
    };
    if let Err(e) = vmm::logging::init(&log_config, Box::new(io::stderr())) {
        return fail(format_args!("vmm: {e}"), exit_status::USAGE);
    }
    let config = VmConfig {
        kernel,
        initrd: args.initrd,
        cmdline_extra: args.cmdline,
        mem_size: args.mem,
        mem_backing: match args.mem_backing {
            Backing::Anon => MemoryBacking::Anonymous,
            Backing::Memfd => MemoryBacking::Memfd,
            Backing::Thp => MemoryBacking::Thp,
            Backing::Hugetlb => MemoryBacking::Hugetlb,
        },
        vcpus: args.cpus,
        balloon: args.balloon,
        api_socket: args.api_sock,
    };
    let outcome = vmm::vmm::run(config);
    vmm::terminal::restore();
    match outcome {
        Ok(reason) => match reason.report() {
            Some(line) => fail(format_args!("vmm: {line}"), reason.exit_code()),
            None => ExitCode::from(reason.exit_code()),
        },
        Err(e) => fail(format_args!("vmm: {e}"), exit_status::VMM_ERROR),
    }
}

/// Writes the one line that ends vmm on an error, and returns `status`.
fn fail(line: impl Display, status: u8) -> ExitCode {
    // Nowhere is left to report a failed write; the status still tells.
    let _ = writeln!(io::stderr(), "{line}");
    ExitCode::from(status)
}
