//! The `vmm` command line: parses arguments, sets up logging, runs the VM (or the `ctl`
//! client), and turns the outcome into one line on stderr and an exit status. It also
//! prints shell completion scripts and writes the manual pages, both generated from the
//! clap definitions below so that they cannot drift from the real flags.
//!
//! That last line is the program's answer, not a log message: it is written plainly
//! (`vmm: ...`), whatever the log level, as are usage errors. Everything logged while the VM
//! runs goes through [`vmm::logging`]. Nothing here panics when stderr or stdout is closed
//! or a pipe nobody reads: write errors are ignored, since there is nowhere left to report
//! them.

use std::fmt::Display;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use log::LevelFilter;

use vmm::api::CtlArgs;
use vmm::config::{InstanceId, VmConfig, DEFAULT_MEMORY};
use vmm::console::{ConsoleOutput, SerialMode};
use vmm::devices::virtio::balloon::BalloonConfig;
use vmm::lifecycle::{exit_status, fail_stop};
use vmm::logging::LogConfig;
use vmm::memory::MemoryBacking;
use vmm::seccomp::{Confinement, SeccompMode, ThreadFilter, ThreadKind};
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
    /// Print a shell completion script for vmm (bash, zsh or fish; also elvish, powershell).
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write vmm's manual pages into DIR: vmm.1, and one per command (vmm-ctl.1, ...).
    ManPages {
        /// An existing directory, e.g. /usr/local/share/man/man1.
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
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
    /// Added to the end of the kernel command line (after "console=ttyS0 reboot=k panic=1 pci=off i8042.noaux").
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
    /// The name of this VM, shown by the API (GET /): 1 to 64 ASCII letters, digits and
    /// hyphens, as Firecracker's --id.
    #[arg(long, value_name = "ID", default_value = InstanceId::DEFAULT)]
    id: InstanceId,
    /// Log messages of this level and above [default: warn]. Sets the level of every
    /// module; module directives in RUST_LOG (virtio_queue=debug) still apply.
    #[arg(long, value_name = "LEVEL", value_enum)]
    log_level: Option<LogLevel>,
    /// Append log messages to this file instead of writing them to stderr (mode 0600 when
    /// created). The line that ends vmm on an error still goes to stderr.
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,
    /// The guest's serial console: stdio (stdout, and stdin when vmm is in the foreground
    /// of its terminal), file=PATH (output appended to PATH, no input) or off.
    #[arg(long, value_name = "MODE", default_value = "stdio", value_parser = parse_serial_arg)]
    serial: SerialMode,
    /// Confine each vmm thread to the system calls its job needs. enforce: a refused call
    /// ends vmm with status 159 and a line naming the call and the thread; log: the kernel
    /// logs the call to its audit log (dmesg) and lets it through; off: no filter.
    #[arg(long, value_name = "MODE", value_enum, default_value_t = Seccomp::Enforce)]
    seccomp: Seccomp,
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
enum Seccomp {
    Enforce,
    Log,
    Off,
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

fn parse_serial_arg(text: &str) -> Result<SerialMode, String> {
    text.parse::<SerialMode>().map_err(|e| e.to_string())
}

fn parse_size_arg(text: &str) -> Result<u64, String> {
    parse_size(text).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    fail_stop::install_panic_hook();
    match std::panic::catch_unwind(AssertUnwindSafe(run_command)) {
        Ok(status) => status,
        Err(_) => {
            let what = fail_stop::first_panic().unwrap_or_else(|| "a thread panicked".into());
            vmm::terminal::restore();
            fail(format_args!("vmm: {what}"), exit_status::VMM_PANIC)
        }
    }
}

fn run_command() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_error(e),
    };
    match cli.command {
        Some(Command::Ctl(args)) => run_ctl(&args),
        Some(Command::Completions { shell }) => print_completions(shell),
        Some(Command::ManPages { dir }) => write_man_pages(&dir),
        None => run_vm(cli.run),
    }
}

/// The script is generated into memory first: clap_complete panics on a failed write, and
/// stdout may be a pipe whose reader has gone.
fn print_completions(shell: clap_complete::Shell) -> ExitCode {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "vmm", &mut script);
    let mut stdout = io::stdout();
    match stdout.write_all(&script).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(
            format_args!("vmm completions: cannot write the {shell} script: {e}"),
            exit_status::VMM_ERROR,
        ),
    }
}

fn write_man_pages(dir: &Path) -> ExitCode {
    match clap_mangen::generate_to(Cli::command(), dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(
            format_args!(
                "vmm man-pages: cannot write the pages into {}: {e}",
                dir.display()
            ),
            exit_status::VMM_ERROR,
        ),
    }
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
            let help = if is_ctl() {
                "vmm ctl --help"
            } else {
                "vmm --help"
            };
            fail(
                format_args!("vmm: {first} (see {help})"),
                exit_status::USAGE,
            )
        }
    }
}

/// Whether the command line is `vmm ctl ...` (a subcommand must come first).
fn is_ctl() -> bool {
    std::env::args_os().nth(1).is_some_and(|arg| arg == "ctl")
}

fn run_ctl(args: &CtlArgs) -> ExitCode {
    let mut stdout = std::io::stdout();
    match vmm::api::run_ctl(args, &mut stdout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(format_args!("vmm ctl: {e}"), e.exit_status()),
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
    // Before anything is written: a terminal's job control must never stop vmm.
    vmm::terminal::ignore_job_control_stops();
    let log_config = LogConfig {
        level: args.log_level.map(LevelFilter::from),
        rust_log,
    };
    // Every filter is compiled before vmm starts its first thread (the log's writer), so
    // that each thread confines itself from its start (see vmm::seccomp).
    let confinement = match Confinement::new(match args.seccomp {
        Seccomp::Enforce => SeccompMode::Enforce,
        Seccomp::Log => SeccompMode::Log,
        Seccomp::Off => SeccompMode::Off,
    }) {
        Ok(confinement) => confinement,
        Err(e) => return fail(format_args!("vmm: --seccomp: {e}"), exit_status::VMM_ERROR),
    };
    let log_output = match open_log_output(
        args.log_file.as_deref(),
        confinement.filter(ThreadKind::Output),
    ) {
        Ok(output) => output,
        Err(line) => return fail(line, exit_status::VMM_ERROR),
    };
    if let Err(e) = vmm::logging::init(&log_config, Box::new(log_output.writer())) {
        return fail(format_args!("vmm: {e}"), exit_status::USAGE);
    }
    let config = VmConfig {
        id: args.id,
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
        serial: args.serial,
    };
    let outcome = vmm::vmm::run(config, &confinement);
    vmm::terminal::restore();
    // The last log lines come before the line that ends vmm (if the log's reader keeps up).
    log_output.flush();
    // A panic ends vmm with its status even if it came after the VM was asked to stop
    // for another reason (the guest powered off, then a thread panicked on the way out).
    if let Some(what) = fail_stop::first_panic() {
        return fail(
            format_args!("vmm: stopped the VM: {what}"),
            exit_status::VMM_PANIC,
        );
    }
    match outcome {
        Ok(reason) => match reason.report() {
            Some(line) => fail(format_args!("vmm: {line}"), reason.exit_code()),
            None => ExitCode::from(reason.exit_code()),
        },
        Err(e) => fail(format_args!("vmm: {e}"), exit_status::VMM_ERROR),
    }
}

/// The log's output: stderr, or the `--log-file` opened for appending, written by a thread
/// of its own so that logging never blocks (see `vmm::console::output`). On error, the
/// line to end vmm with.
fn open_log_output(
    log_file: Option<&std::path::Path>,
    filter: ThreadFilter,
) -> Result<ConsoleOutput, String> {
    use std::os::fd::{AsFd, OwnedFd};
    let (fd, name): (OwnedFd, String) = match log_file {
        None => match io::stderr().as_fd().try_clone_to_owned() {
            Ok(fd) => (fd, "stderr".to_string()),
            Err(e) => return Err(format!("vmm: cannot set up logging to stderr: {e}")),
        },
        Some(path) => {
            let file = OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| {
                    format!(
                        "vmm: --log-file {}: cannot open it for appending: {e}",
                        path.display()
                    )
                })?;
            (file.into(), path.display().to_string())
        }
    };
    ConsoleOutput::start_for_log(fd, &name, LOG_BUFFER_BYTES, filter)
        .map_err(|e| format!("vmm: cannot start the logging thread: {e}"))
}

/// Log lines held while stderr (or the log file) is not taking them.
const LOG_BUFFER_BYTES: usize = 64 * 1024;

/// Writes the one line that ends vmm on an error, and returns `status`.
fn fail(line: impl Display, status: u8) -> ExitCode {
    // Nowhere is left to report a failed write; the status still tells.
    let _ = writeln!(io::stderr(), "{line}");
    ExitCode::from(status)
}
