//! The guest's serial console, through the VMM's stdin and stdout: when a marker arrived,
//! and shell commands with their output.
//!
//! The guest's /init (resources/guest/init) serves a shell on the console without echo, so
//! every line written is a command and what comes back is only output. A command is framed
//! by begin and end markers that printf assembles, so the command line itself never holds
//! them.

use std::fs::File;
use std::io::{Read, Write};
use std::process::{ChildStdin, ChildStdout};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// Console bytes kept; a guest printing more than this is not doing the benchmark's work.
const MAX_CONSOLE_BYTES: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("no {what} on the guest console within {} s (last line: {last_line:?})", waited.as_secs())]
    Timeout {
        what: String,
        waited: Duration,
        last_line: String,
    },
    #[error("the guest console closed before {what} (last line: {last_line:?})")]
    Closed { what: String, last_line: String },
    #[error("cannot write to the guest console: {0}")]
    Write(std::io::Error),
    #[error("cannot read the exit status of guest command {command:?} from {text:?}")]
    Status { command: String, text: String },
}

#[derive(Default)]
struct Received {
    bytes: Vec<u8>,
    /// (length of `bytes` after a read, when that read returned).
    arrivals: Vec<(usize, Instant)>,
    closed: bool,
}

type Shared = Arc<(Mutex<Received>, Condvar)>;

fn lock(shared: &Shared) -> MutexGuard<'_, Received> {
    shared.0.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a guest command printed, and its exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    pub output: String,
    pub status: i32,
}

pub struct Console {
    shared: Shared,
    stdin: ChildStdin,
    /// Where the next search starts: markers are found in order, each once.
    cursor: usize,
    next_command: u64,
}

impl Console {
    /// Starts reading `stdout` on a thread of its own, copying it to `log` as it comes.
    pub fn new(stdin: ChildStdin, mut stdout: ChildStdout, mut log: File) -> Console {
        let shared: Shared = Arc::default();
        let reader = Arc::clone(&shared);
        thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            loop {
                let n = match stdout.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let now = Instant::now();
                // The log is for people reading a failed run; losing it loses no result.
                let _ = log.write_all(&chunk[..n]);
                let mut received = lock(&reader);
                if received.bytes.len() + n <= MAX_CONSOLE_BYTES {
                    received.bytes.extend_from_slice(&chunk[..n]);
                    let len = received.bytes.len();
                    received.arrivals.push((len, now));
                }
                reader.1.notify_all();
            }
            lock(&reader).closed = true;
            reader.1.notify_all();
        });
        Console {
            shared,
            stdin,
            cursor: 0,
            next_command: 0,
        }
    }

    /// Waits for `marker` after the previous one found; returns when the read that
    /// completed it returned, and what came between.
    pub fn wait_for(
        &mut self,
        marker: &str,
        what: &str,
        timeout: Duration,
    ) -> Result<(Instant, String), ConsoleError> {
        let deadline = Instant::now() + timeout;
        let mut received = lock(&self.shared);
        loop {
            if let Some(at) = find(&received.bytes[self.cursor..], marker.as_bytes()) {
                let start = self.cursor;
                let end = self.cursor + at + marker.len();
                self.cursor = end;
                let arrived = received
                    .arrivals
                    .iter()
                    .find(|(len, _)| *len >= end)
                    .map_or_else(Instant::now, |(_, when)| *when);
                let between = String::from_utf8_lossy(&received.bytes[start..end - marker.len()]);
                return Ok((arrived, between.into_owned()));
            }
            if received.closed {
                return Err(ConsoleError::Closed {
                    what: what.to_string(),
                    last_line: last_line(&received.bytes),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ConsoleError::Timeout {
                    what: what.to_string(),
                    waited: timeout,
                    last_line: last_line(&received.bytes),
                });
            }
            received = self
                .shared
                .1
                .wait_timeout(received, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Writes one line to the guest.
    pub fn send_line(&mut self, line: &str) -> Result<(), ConsoleError> {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| self.stdin.flush())
            .map_err(ConsoleError::Write)
    }

    /// Starts a shell command in the guest; [`Console::finish`] waits for it. Commands of
    /// one guest finish in the order they started.
    pub fn start(&mut self, command: &str) -> Result<PendingCommand, ConsoleError> {
        self.next_command += 1;
        let id = self.next_command;
        // stdin from /dev/null, so the command cannot eat the lines that follow; the
        // newline before `}` lets a command end in `&`.
        self.send_line(&format!(
            "printf '\\n@%s@%s@\\n' bench-begin {id}; {{ {command}\n}} </dev/null 2>&1; \
             printf '\\n@%s@%s@%s@\\n' bench-end {id} \"$?\""
        ))?;
        Ok(PendingCommand {
            id,
            command: command.to_string(),
        })
    }

    /// Waits for a command started with [`Console::start`]; returns when its end marker
    /// arrived, and its output.
    pub fn finish(
        &mut self,
        pending: PendingCommand,
        timeout: Duration,
    ) -> Result<(Instant, CommandOutput), ConsoleError> {
        let what = format!("the end of guest command {:?}", pending.command);
        let begin = format!("@bench-begin@{}@", pending.id);
        let end = format!("@bench-end@{}@", pending.id);
        self.wait_for(&begin, &what, timeout)?;
        let (ended, output) = self.wait_for(&end, &what, timeout)?;
        let (_, status_text) = self.wait_for("@", &what, timeout)?;
        let status = status_text.parse().map_err(|_| ConsoleError::Status {
            command: pending.command.clone(),
            text: status_text.clone(),
        })?;
        // The output starts with the newline after the begin marker; the guest's terminal
        // ends lines with CR LF. Trailing newlines go, as in the shell's `$(...)`.
        let output = output.replace('\r', "");
        let output = output.strip_prefix('\n').unwrap_or(&output);
        let output = output.trim_end_matches('\n').to_string();
        Ok((ended, CommandOutput { output, status }))
    }

    /// Runs a shell command in the guest and waits for it.
    #[cfg(test)]
    pub fn run(
        &mut self,
        command: &str,
        timeout: Duration,
    ) -> Result<(Instant, CommandOutput), ConsoleError> {
        let pending = self.start(command)?;
        self.finish(pending, timeout)
    }
}

/// A command started in the guest and not yet waited for.
pub struct PendingCommand {
    id: u64,
    command: String,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn last_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(4096)..]);
    text.lines()
        .map(|l| l.trim_matches(|c: char| c.is_whitespace() || c.is_control()))
        .rfind(|l| !l.is_empty())
        .unwrap_or("")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command, Stdio};

    /// A stand-in guest: `sh` reading commands from the console, as the guest's shell.
    fn shell() -> (Child, Console) {
        let mut child = Command::new("sh")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("sh runs");
        let log = File::create("/dev/null").unwrap();
        let console = Console::new(
            child.stdin.take().unwrap(),
            child.stdout.take().unwrap(),
            log,
        );
        (child, console)
    }

    #[test]
    fn commands_return_their_output_and_status() {
        let (mut child, mut console) = shell();
        let (_, out) = console
            .run("echo one; echo two", Duration::from_secs(10))
            .unwrap();
        assert_eq!(
            out,
            CommandOutput {
                output: "one\ntwo".into(),
                status: 0
            }
        );
        let (_, out) = console
            .run(
                "exit_with() { return $1; }; exit_with 3",
                Duration::from_secs(10),
            )
            .unwrap();
        assert_eq!(out.status, 3);
        let (_, out) = console.run("true", Duration::from_secs(10)).unwrap();
        assert_eq!(out.output, "");
        console.send_line("exit").unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn commands_started_together_finish_in_order() {
        let (mut child, mut console) = shell();
        let first = console.start("sleep 0.2; echo first").unwrap();
        let second = console.start("echo second").unwrap();
        let (t1, out1) = console.finish(first, Duration::from_secs(10)).unwrap();
        let (t2, out2) = console.finish(second, Duration::from_secs(10)).unwrap();
        assert_eq!(
            (out1.output.as_str(), out2.output.as_str()),
            ("first", "second")
        );
        assert!(t1 <= t2);
        console.send_line("exit").unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn a_marker_that_never_comes_times_out_and_a_closed_console_says_so() {
        let (mut child, mut console) = shell();
        console.send_line("echo hello").unwrap();
        let err = console
            .wait_for("NEVER", "the marker", Duration::from_millis(300))
            .unwrap_err();
        assert!(
            matches!(err, ConsoleError::Timeout { ref last_line, .. } if last_line == "hello"),
            "{err}"
        );
        console.send_line("exit").unwrap();
        child.wait().unwrap();
        let err = console
            .wait_for("NEVER", "the marker", Duration::from_secs(10))
            .unwrap_err();
        assert!(matches!(err, ConsoleError::Closed { .. }), "{err}");
    }

    #[test]
    fn last_line_skips_blank_lines_and_control_characters() {
        assert_eq!(last_line(b"a\r\nb\r\n\r\n"), "b");
        assert_eq!(last_line(b""), "");
        assert_eq!(last_line(&[0xff, b'\n', b'x']), "x");
    }
}
