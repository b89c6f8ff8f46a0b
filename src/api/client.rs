//! `vmm ctl`: the command-line client of the API.
//!
//! It speaks HTTP/1.1 over the Unix socket, one connection per request, and gives up after
//! `--timeout` seconds so that a VMM that stopped answering cannot hang a script. Its exit
//! status tells a script what happened ([`exit_status`]): above all, whether the VMM said
//! no or no VMM was there to ask.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use serde::de::DeserializeOwned;
use socket2::{Domain, SockAddr, Socket, Type};

use crate::size::{parse_size, HumanSize, SizeError, MIB};

use super::types::{
    Action, ActionType, BalloonBody, BalloonStatsBody, BalloonUpdate, Fault, HintingStart,
    HintingStatusBody, VmInfoBody, VmStateChange, VmUpdate,
};

/// How long the client waits, by default, for the VMM to take a request or answer it.
pub const DEFAULT_TIMEOUT_S: u64 = 10;
/// The largest answer the client reads; the API's answers are far smaller.
const MAX_ANSWER: usize = 1 << 20;
/// The environment variable that gives the socket when `--api-sock` does not.
pub const API_SOCK_ENV: &str = "VMM_API_SOCK";

/// The exit statuses of `vmm ctl`. A script can tell a VMM that said no (1) from a VMM
/// that is not there to ask (69), and both from a command line that does not parse (2).
pub mod exit_status {
    /// The VMM did what was asked.
    pub const OK: u8 = 0;
    /// The VMM refused the request (its message says why), or the exchange broke off once
    /// connected (so the request may or may not have been carried out), or the output
    /// could not be written.
    pub const FAILED: u8 = 1;
    /// The command line does not parse, as for `vmm` itself.
    pub const USAGE: u8 = crate::lifecycle::exit_status::USAGE;
    /// No VMM answered: no socket at the path, nothing listening on it, or no answer
    /// within `--timeout`. 69 is `EX_UNAVAILABLE` of sysexits.h, "a service is
    /// unavailable", and no status of `vmm` itself.
    pub const UNREACHABLE: u8 = 69;
}

/// The end of `vmm ctl --help`.
const AFTER_HELP: &str = "\
The socket is --api-sock PATH, anywhere on the line, or else $VMM_API_SOCK.

Exit status:
  0   the VMM did what was asked
  1   the VMM refused the request (its message is printed), or the exchange broke off
  2   usage error: the command line does not parse (a size without unit, no socket given)
  69  no VMM answered: no socket at PATH, nothing listening on it, or no answer within
      --timeout";

/// `vmm ctl`: talk to a running vmm through its API socket.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct CtlArgs {
    /// The API socket of the running vmm (the path given to its --api-sock)
    #[arg(long, global = true, env = API_SOCK_ENV, value_name = "PATH")]
    pub api_sock: Option<PathBuf>,
    /// Print the VMM's JSON answer as it came instead of a summary
    #[arg(long, global = true)]
    pub json: bool,
    /// Give up when the VMM has not answered within SECONDS
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = DEFAULT_TIMEOUT_S,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum CtlCommand {
    /// Read or resize the memory balloon
    #[command(subcommand)]
    Balloon(BalloonCommand),
    /// Show or stop the VM
    #[command(subcommand)]
    Vm(VmCommand),
    /// Print the VMM's metrics in the Prometheus text format, as GET /metrics serves them
    Metrics,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum BalloonCommand {
    /// Set the balloon's target size: the memory taken from the guest (512M, 1G, 0)
    Set {
        /// A whole number of MiB, written with its unit: 512M, 1G, 1536MiB, or 0
        #[arg(value_name = "SIZE", value_parser = balloon_size_mib)]
        size_mib: u32,
    },
    /// Show the balloon's target and actual size and its features
    Get,
    /// Show the balloon's size and the memory statistics the guest reported
    Stats {
        /// Show them again every SECONDS until interrupted
        #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
        watch: Option<u64>,
    },
    /// Free page hinting
    #[command(subcommand)]
    Hint(HintCommand),
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum HintCommand {
    /// Start a free page hinting run
    Start {
        /// End the run by itself once the guest has finished hinting (false: wait for
        /// `hint stop`)
        #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
        acknowledge_on_stop: bool,
    },
    /// Show where the hinting run stands
    Status,
    /// End the hinting run so that the guest may reuse the hinted pages
    Stop,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum VmCommand {
    /// Show the VM's vCPUs, memory, state and uptime
    Info,
    /// Stop the VM; vmm exits
    Shutdown,
    /// Pause every vCPU (the API, the balloon and shutdown still work)
    Pause,
    /// Let the vCPUs run again
    Resume,
    /// Press Ctrl+Alt+Del on the guest's keyboard
    CtrlAltDel,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no API socket given: pass --api-sock PATH (the path vmm was started with) or set {API_SOCK_ENV}")]
    NoSocket,
    #[error("no API socket at {}; is vmm running with --api-sock {}?", .0.display(), .0.display())]
    SocketMissing(PathBuf),
    #[error("nothing is listening on {} (the vmm that created it has exited)", .0.display())]
    NotListening(PathBuf),
    #[error("the VMM at {} is not taking connections (its queue of waiting clients is full)", .0.display())]
    Busy(PathBuf),
    #[error("cannot connect to the API socket {}: {source}", .path.display())]
    Connect { path: PathBuf, source: io::Error },
    #[error("the VMM did not answer within {} second{}", .0.as_secs(), if .0.as_secs() == 1 { "" } else { "s" })]
    Timeout(Duration),
    #[error("the connection to the VMM failed: {0}")]
    Io(io::Error),
    #[error("the VMM's answer is not valid: {0}")]
    BadAnswer(String),
    #[error("the VMM refused the request (HTTP {status}): {message}")]
    Refused { status: u16, message: String },
    #[error("cannot write the output: {0}")]
    Output(io::Error),
}

impl ClientError {
    /// The status `vmm ctl` exits with after this error.
    pub fn exit_status(&self) -> u8 {
        match self {
            ClientError::NoSocket => exit_status::USAGE,
            ClientError::SocketMissing(_)
            | ClientError::NotListening(_)
            | ClientError::Busy(_)
            | ClientError::Connect { .. }
            | ClientError::Timeout(_) => exit_status::UNREACHABLE,
            ClientError::Io(_)
            | ClientError::BadAnswer(_)
            | ClientError::Refused { .. }
            | ClientError::Output(_) => exit_status::FAILED,
        }
    }
}

/// Why a balloon size on the command line is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BalloonSizeError {
    #[error("balloon size {0} has no unit; did you mean {0}M?")]
    NoUnit(String),
    #[error(transparent)]
    Size(#[from] SizeError),
    #[error("balloon size \"{0}\" is not a whole number of MiB; the balloon is sized in MiB")]
    NotWholeMib(String),
    #[error("balloon size \"{0}\" is too large")]
    TooLarge(String),
}

/// Runs one `vmm ctl` command, writing what it shows to `out`.
pub fn run(args: &CtlArgs, out: &mut dyn Write) -> Result<(), ClientError> {
    let api = ApiClient {
        socket: args.api_sock.as_deref().ok_or(ClientError::NoSocket)?,
        timeout: Duration::from_secs(args.timeout),
    };
    let json = args.json;
    match &args.command {
        CtlCommand::Balloon(BalloonCommand::Set { size_mib }) => {
            let amount_mib = *size_mib;
            let body = to_json(&BalloonUpdate { amount_mib });
            let answer = api.request("PATCH", "/balloon", Some(&body))?;
            show(out, json, &answer, |out| {
                writeln!(out, "balloon target set to {}", show_mib(amount_mib))
            })
        }
        CtlCommand::Balloon(BalloonCommand::Get) => {
            let answer = api.request("GET", "/balloon", None)?;
            let balloon: BalloonBody = decode(&answer)?;
            show(out, json, &answer, |out| show_balloon(out, &balloon))
        }
        CtlCommand::Balloon(BalloonCommand::Stats { watch: None }) => {
            show_statistics(&api, out, json)
        }
        CtlCommand::Balloon(BalloonCommand::Stats {
            watch: Some(seconds),
        }) => loop {
            show_statistics(&api, out, json)?;
            if !json {
                writeln!(out).map_err(ClientError::Output)?;
            }
            out.flush().map_err(ClientError::Output)?;
            thread::sleep(Duration::from_secs(*seconds));
        },
        CtlCommand::Balloon(BalloonCommand::Hint(HintCommand::Start {
            acknowledge_on_stop,
        })) => {
            let body = to_json(&HintingStart {
                acknowledge_on_stop: *acknowledge_on_stop,
            });
            let answer = api.request("PATCH", "/balloon/hinting/start", Some(&body))?;
            show(out, json, &answer, |out| {
                writeln!(out, "free page hinting started")
            })
        }
        CtlCommand::Balloon(BalloonCommand::Hint(HintCommand::Status)) => {
            let answer = api.request("GET", "/balloon/hinting/status", None)?;
            let status: HintingStatusBody = decode(&answer)?;
            show(out, json, &answer, |out| show_hinting(out, &status))
        }
        CtlCommand::Balloon(BalloonCommand::Hint(HintCommand::Stop)) => {
            let answer = api.request("PATCH", "/balloon/hinting/stop", Some(""))?;
            show(out, json, &answer, |out| {
                writeln!(out, "free page hinting stopped")
            })
        }
        CtlCommand::Vm(VmCommand::Info) => {
            let answer = api.request("GET", "/vm", None)?;
            let vm: VmInfoBody = decode(&answer)?;
            show(out, json, &answer, |out| show_vm(out, &vm))
        }
        // Text for Prometheus, not JSON: shown as it came, with or without --json.
        CtlCommand::Metrics => {
            let answer = api.request("GET", "/metrics", None)?;
            out.write_all(&answer).map_err(ClientError::Output)
        }
        CtlCommand::Vm(VmCommand::Shutdown) => {
            let body = to_json(&Action {
                action_type: ActionType::Shutdown,
            });
            let answer = api.request("PUT", "/actions", Some(&body))?;
            show(out, json, &answer, |out| {
                writeln!(out, "the VM is shutting down")
            })
        }
        CtlCommand::Vm(VmCommand::Pause) => {
            let body = to_json(&VmUpdate {
                state: VmStateChange::Paused,
            });
            let answer = api.request("PATCH", "/vm", Some(&body))?;
            show(out, json, &answer, |out| writeln!(out, "the VM is paused"))
        }
        CtlCommand::Vm(VmCommand::Resume) => {
            let body = to_json(&VmUpdate {
                state: VmStateChange::Resumed,
            });
            let answer = api.request("PATCH", "/vm", Some(&body))?;
            show(out, json, &answer, |out| writeln!(out, "the VM is running"))
        }
        CtlCommand::Vm(VmCommand::CtrlAltDel) => {
            let body = to_json(&Action {
                action_type: ActionType::SendCtrlAltDel,
            });
            let answer = api.request("PUT", "/actions", Some(&body))?;
            show(out, json, &answer, |out| {
                writeln!(out, "Ctrl+Alt+Del sent to the guest")
            })
        }
    }
}

/// A balloon size on the command line, in whole MiB. A bare number other than 0 is
/// refused: `balloon set 512` is far more likely to mean 512 MiB than 512 bytes.
pub fn balloon_size_mib(text: &str) -> Result<u32, BalloonSizeError> {
    let trimmed = text.trim();
    if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        if trimmed.bytes().all(|b| b == b'0') {
            return Ok(0);
        }
        return Err(BalloonSizeError::NoUnit(trimmed.to_string()));
    }
    let bytes = parse_size(text)?;
    if bytes % MIB != 0 {
        return Err(BalloonSizeError::NotWholeMib(text.to_string()));
    }
    u32::try_from(bytes / MIB).map_err(|_| BalloonSizeError::TooLarge(text.to_string()))
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    // The request types are plain structs of numbers, booleans and unit enums.
    serde_json::to_string(value).unwrap_or_default()
}

fn decode<T: DeserializeOwned>(answer: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(answer).map_err(|e| ClientError::BadAnswer(e.to_string()))
}

/// Writes the raw answer with `--json`, the summary otherwise.
fn show(
    out: &mut dyn Write,
    json: bool,
    answer: &[u8],
    summary: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<(), ClientError> {
    let written = if json {
        if answer.is_empty() {
            Ok(())
        } else {
            out.write_all(answer).and_then(|()| writeln!(out))
        }
    } else {
        summary(out)
    };
    written.map_err(ClientError::Output)
}

fn show_statistics(api: &ApiClient, out: &mut dyn Write, json: bool) -> Result<(), ClientError> {
    let answer = api.request("GET", "/balloon/statistics", None)?;
    let statistics: BalloonStatsBody = decode(&answer)?;
    show(out, json, &answer, |out| show_stats(out, &statistics))
}

fn line(out: &mut dyn Write, label: &str, value: impl std::fmt::Display) -> io::Result<()> {
    writeln!(out, "{:<22}{value}", format!("{label}:"))
}

fn show_mib(mib: u32) -> String {
    if mib == 0 {
        "0 MiB".to_string()
    } else {
        HumanSize(u64::from(mib) * MIB).to_string()
    }
}

fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

fn show_balloon(out: &mut dyn Write, balloon: &BalloonBody) -> io::Result<()> {
    line(out, "target", show_mib(balloon.amount_mib))?;
    line(out, "actual", show_mib(balloon.actual_mib))?;
    let driver = if balloon.driver_ready {
        "ready"
    } else {
        "not ready (the guest has not set the balloon up)"
    };
    line(out, "guest driver", driver)?;
    let statistics = match (balloon.statistics, balloon.stats_polling_interval_s) {
        (false, _) => "off".to_string(),
        (true, 0) => "on, not polled".to_string(),
        (true, seconds) => format!("on, polled every {seconds} s"),
    };
    line(out, "statistics", statistics)?;
    line(out, "deflate on OOM", on_off(balloon.deflate_on_oom))?;
    line(
        out,
        "free page reporting",
        on_off(balloon.free_page_reporting),
    )?;
    line(out, "free page hinting", on_off(balloon.free_page_hinting))?;
    line(out, "page poison", on_off(balloon.page_poison))?;
    line(out, "must tell host", on_off(balloon.must_tell_host))
}

fn show_stats(out: &mut dyn Write, stats: &BalloonStatsBody) -> io::Result<()> {
    let size = |pages: u32, mib: u32| format!("{} ({pages} pages)", show_mib(mib));
    line(out, "target", size(stats.target_pages, stats.target_mib))?;
    line(out, "actual", size(stats.actual_pages, stats.actual_mib))?;
    let bytes = |value: Option<u64>| value.map(|b| HumanSize(b).to_string());
    let count = |value: Option<u64>| value.map(|c| c.to_string());
    let pages = |value: Option<u64>| value.map(|p| format!("{p} pages"));
    let reported = [
        ("total memory", bytes(stats.total_memory)),
        ("free memory", bytes(stats.free_memory)),
        ("available memory", bytes(stats.available_memory)),
        ("disk caches", bytes(stats.disk_caches)),
        ("swapped in", bytes(stats.swap_in)),
        ("swapped out", bytes(stats.swap_out)),
        ("major faults", count(stats.major_faults)),
        ("minor faults", count(stats.minor_faults)),
        ("OOM kills", count(stats.oom_kill)),
        ("allocation stalls", count(stats.alloc_stall)),
        ("hugetlb allocations", count(stats.hugetlb_allocations)),
        ("hugetlb failures", count(stats.hugetlb_failures)),
        ("scanned (kswapd)", pages(stats.async_scan)),
        ("scanned (direct)", pages(stats.direct_scan)),
        ("reclaimed (kswapd)", pages(stats.async_reclaim)),
        ("reclaimed (direct)", pages(stats.direct_reclaim)),
    ];
    match stats.last_update_age_ms {
        Some(age) => line(out, "last report", format!("{} ago", show_duration(age)))?,
        None => writeln!(out, "the guest has not reported statistics yet")?,
    }
    for (label, value) in reported {
        if let Some(value) = value {
            line(out, label, value)?;
        }
    }
    Ok(())
}

fn show_hinting(out: &mut dyn Write, status: &HintingStatusBody) -> io::Result<()> {
    // Command IDs 0 and 1 are the protocol's STOP and DONE; others number hinting runs.
    let describe = |command: u32| match command {
        0 => "0 (stop)".to_string(),
        1 => "1 (done)".to_string(),
        run => format!("{run} (hinting run)"),
    };
    line(out, "host command", describe(status.host_cmd))?;
    match status.guest_cmd {
        Some(command) => line(out, "guest command", describe(command)),
        None => line(out, "guest command", "none yet"),
    }
}

fn show_vm(out: &mut dyn Write, vm: &VmInfoBody) -> io::Result<()> {
    line(out, "id", &vm.id)?;
    line(out, "state", &vm.state)?;
    line(out, "vCPUs", vm.vcpus)?;
    line(out, "memory", HumanSize(vm.memory_mib * MIB))?;
    line(out, "uptime", show_duration(vm.uptime_ms))?;
    let balloon = if vm.balloon_attached {
        "attached"
    } else {
        "none"
    };
    line(out, "balloon", balloon)
}

fn show_duration(ms: u64) -> String {
    let seconds = ms / 1000;
    match seconds {
        0..60 => format!("{}.{} s", seconds, (ms % 1000) / 100),
        60..3600 => format!("{}m {:02}s", seconds / 60, seconds % 60),
        _ => format!(
            "{}h {:02}m {:02}s",
            seconds / 3600,
            (seconds % 3600) / 60,
            seconds % 60
        ),
    }
}

/// One request at a time over a fresh connection.
struct ApiClient<'a> {
    socket: &'a Path,
    timeout: Duration,
}

impl ApiClient<'_> {
    /// Sends a request and returns the body of a 2xx answer; any other answer is
    /// [`ClientError::Refused`] with the VMM's `fault_message`.
    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<Vec<u8>, ClientError> {
        let mut stream = self.connect()?;
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nConnection: close\r\n"
        );
        if let Some(body) = body {
            request.push_str("Content-Type: application/json\r\n");
            request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        } else {
            request.push_str("\r\n");
        }
        stream
            .write_all(request.as_bytes())
            .map_err(|e| self.io_error(e))?;
        let (status, answer) = self.read_answer(&mut stream)?;
        if (200..300).contains(&status) {
            return Ok(answer);
        }
        let message = match serde_json::from_slice::<Fault>(&answer) {
            Ok(fault) => fault.fault_message,
            Err(_) => String::from_utf8_lossy(&answer).trim().to_string(),
        };
        Err(ClientError::Refused { status, message })
    }

    /// Connects without ever waiting: a VMM whose queue of waiting clients is full is
    /// reported at once rather than waited for with no limit.
    fn connect(&self) -> Result<UnixStream, ClientError> {
        let path = self.socket.to_path_buf();
        let connected = Socket::new(Domain::UNIX, Type::STREAM, None).and_then(|socket| {
            socket.set_nonblocking(true)?;
            socket.connect(&SockAddr::unix(self.socket)?)?;
            socket.set_nonblocking(false)?;
            Ok(UnixStream::from(std::os::fd::OwnedFd::from(socket)))
        });
        let stream = connected.map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ClientError::SocketMissing(path),
            io::ErrorKind::ConnectionRefused => ClientError::NotListening(path),
            io::ErrorKind::WouldBlock => ClientError::Busy(path),
            _ => ClientError::Connect { path, source: e },
        })?;
        stream
            .set_read_timeout(Some(self.timeout))
            .and_then(|()| stream.set_write_timeout(Some(self.timeout)))
            .map_err(ClientError::Io)?;
        Ok(stream)
    }

    fn io_error(&self, error: io::Error) -> ClientError {
        match error.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                ClientError::Timeout(self.timeout)
            }
            _ => ClientError::Io(error),
        }
    }

    /// Reads one answer: its status and body.
    fn read_answer(&self, stream: &mut UnixStream) -> Result<(u16, Vec<u8>), ClientError> {
        let mut buffer = Vec::new();
        loop {
            match parse_head(&buffer)? {
                // 1xx answers (100 Continue) come before the real one.
                Some(head) if (100..200).contains(&head.status) => {
                    buffer.drain(..head.length);
                }
                Some(head) => {
                    let body_length = match head.content_length {
                        Some(length) => length,
                        None if head.status == 204 || head.status == 304 => 0,
                        None => {
                            self.read_to_end(stream, &mut buffer)?;
                            buffer.len() - head.length
                        }
                    };
                    while buffer.len() < head.length + body_length {
                        if !self.read_more(stream, &mut buffer)? {
                            return Err(ClientError::BadAnswer(
                                "the VMM closed the connection in the middle of its answer"
                                    .to_string(),
                            ));
                        }
                    }
                    let body = buffer[head.length..head.length + body_length].to_vec();
                    return Ok((head.status, body));
                }
                None => {
                    if !self.read_more(stream, &mut buffer)? {
                        return Err(ClientError::BadAnswer(
                            "the VMM closed the connection without answering".to_string(),
                        ));
                    }
                }
            }
        }
    }

    /// Reads what arrives; false at the end of the stream.
    fn read_more(
        &self,
        stream: &mut UnixStream,
        buffer: &mut Vec<u8>,
    ) -> Result<bool, ClientError> {
        if buffer.len() > MAX_ANSWER {
            return Err(ClientError::BadAnswer(format!(
                "the answer is larger than {MAX_ANSWER} bytes"
            )));
        }
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(count) => {
                    buffer.extend_from_slice(&chunk[..count]);
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_error(e)),
            }
        }
    }

    fn read_to_end(
        &self,
        stream: &mut UnixStream,
        buffer: &mut Vec<u8>,
    ) -> Result<(), ClientError> {
        while self.read_more(stream, buffer)? {}
        Ok(())
    }
}

/// The status line and headers of an answer.
struct AnswerHead {
    status: u16,
    /// Bytes of the status line and headers.
    length: usize,
    content_length: Option<usize>,
}

fn parse_head(buffer: &[u8]) -> Result<Option<AnswerHead>, ClientError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let length = match response.parse(buffer) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(ClientError::BadAnswer(e.to_string())),
    };
    let mut content_length = None;
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            let value = String::from_utf8_lossy(header.value);
            let parsed = value.trim().parse::<usize>().map_err(|_| {
                ClientError::BadAnswer(format!("Content-Length \"{value}\" is not a byte count"))
            })?;
            content_length = Some(parsed);
        }
    }
    Ok(Some(AnswerHead {
        status: response.code.unwrap_or_default(),
        length,
        content_length,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balloon_sizes_are_whole_mib_with_a_unit() {
        assert_eq!(balloon_size_mib("512M").unwrap(), 512);
        assert_eq!(balloon_size_mib("1G").unwrap(), 1024);
        assert_eq!(balloon_size_mib("1536MiB").unwrap(), 1536);
        assert_eq!(balloon_size_mib("0").unwrap(), 0);
        assert_eq!(balloon_size_mib("000").unwrap(), 0);
        let err = balloon_size_mib("512").unwrap_err();
        assert_eq!(err, BalloonSizeError::NoUnit("512".to_string()));
        assert!(err.to_string().contains("did you mean 512M?"), "{err}");
        let err = balloon_size_mib("1000K").unwrap_err();
        assert_eq!(err, BalloonSizeError::NotWholeMib("1000K".to_string()));
        assert!(err.to_string().contains("\"1000K\""));
        assert_eq!(
            balloon_size_mib("4096T"),
            Err(BalloonSizeError::TooLarge("4096T".to_string()))
        );
        assert!(matches!(
            balloon_size_mib("lots"),
            Err(BalloonSizeError::Size(_))
        ));
        assert!(matches!(
            balloon_size_mib(""),
            Err(BalloonSizeError::Size(_))
        ));
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(show_duration(1234), "1.2 s");
        assert_eq!(show_duration(61_000), "1m 01s");
        assert_eq!(show_duration(3_723_000), "1h 02m 03s");
    }

    #[test]
    fn answer_heads_are_parsed() {
        let head = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            .unwrap()
            .unwrap();
        assert_eq!(
            (head.status, head.length, head.content_length),
            (200, 38, Some(2))
        );
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n").unwrap().is_none());
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
    }
}
