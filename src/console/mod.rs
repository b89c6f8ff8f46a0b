//! The guest's serial console (COM1) on the host, as `--serial` chooses:
//!
//! - `stdio`: guest output to stdout, stdin to the guest. When stdin is a terminal, it is
//!   put in raw mode and read only while vmm is the terminal's foreground process
//!   ([`crate::terminal`]); started in the background (`vmm … &`), vmm leaves the terminal
//!   alone until `fg` brings it to the foreground.
//! - `file=PATH`: guest output appended to PATH; no input.
//! - `off`: guest output discarded; no input.
//!
//! Output never blocks the VM ([`output`]): a bounded buffer and a thread of its own stand
//! between the UART and the file descriptor, and bytes a stalled reader cannot take are
//! dropped and counted. Input comes from the event loop ([`input`]).

use std::fmt;
use std::fs::OpenOptions;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use crate::seccomp::ThreadFilter;

pub mod input;
pub mod output;

pub use input::ConsoleInput;
pub use output::{ConsoleCounters, ConsoleOutput, ConsoleWriter};

/// Where the guest's serial console goes (`--serial`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SerialMode {
    /// Output to stdout, input from stdin.
    #[default]
    Stdio,
    /// Output appended to this file; no input.
    File(PathBuf),
    /// Output discarded; no input.
    Off,
}

impl fmt::Display for SerialMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SerialMode::Stdio => f.write_str("stdio"),
            SerialMode::File(path) => write!(f, "file={}", path.display()),
            SerialMode::Off => f.write_str("off"),
        }
    }
}

/// A `--serial` value that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SerialModeError {
    #[error("{0:?}: expected stdio, off or file=PATH")]
    Unknown(String),
    #[error("file=: the path is empty")]
    EmptyPath,
}

impl FromStr for SerialMode {
    type Err = SerialModeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "stdio" => Ok(SerialMode::Stdio),
            "off" => Ok(SerialMode::Off),
            _ => match text.strip_prefix("file=") {
                Some("") => Err(SerialModeError::EmptyPath),
                Some(path) => Ok(SerialMode::File(PathBuf::from(path))),
                None => Err(SerialModeError::Unknown(text.to_string())),
            },
        }
    }
}

/// The output file of `--serial file=PATH` could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("--serial file={path}: cannot open it for appending: {source}")]
    OpenFile {
        path: String,
        source: std::io::Error,
    },
    #[error("--serial {mode}: cannot set up the console output: {source}")]
    Output {
        mode: SerialMode,
        source: std::io::Error,
    },
}

/// What guest output is written to, made from a [`SerialMode`].
pub struct ConsoleSink {
    /// The buffer and its writer thread; `None` with `--serial off`.
    output: Option<ConsoleOutput>,
}

impl ConsoleSink {
    /// Opens the output of `mode` and starts its writer thread.
    pub fn open(mode: &SerialMode, filter: ThreadFilter) -> Result<ConsoleSink, ConsoleError> {
        let (fd, name): (OwnedFd, String) = match mode {
            SerialMode::Off => return Ok(ConsoleSink { output: None }),
            SerialMode::Stdio => {
                // A descriptor of our own for the writer thread, on the same open file.
                let stdout = std::io::stdout().lock();
                let fd = std::os::fd::AsFd::as_fd(&stdout)
                    .try_clone_to_owned()
                    .map_err(|source| ConsoleError::Output {
                        mode: mode.clone(),
                        source,
                    })?;
                (fd, "stdout".to_string())
            }
            SerialMode::File(path) => {
                // Guest output may hold anything the guest prints (keys, passwords):
                // readable by the owner only, as the API socket is.
                let file = OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|source| ConsoleError::OpenFile {
                        path: path.display().to_string(),
                        source,
                    })?;
                (file.into(), path.display().to_string())
            }
        };
        let output = ConsoleOutput::start(fd, &name, output::OUTPUT_BUFFER_BYTES, filter).map_err(
            |source| ConsoleError::Output {
                mode: mode.clone(),
                source,
            },
        )?;
        Ok(ConsoleSink {
            output: Some(output),
        })
    }

    /// The writer for the UART: the buffer, or nothing with `--serial off`.
    pub fn writer(&self) -> Box<dyn std::io::Write + Send> {
        match &self.output {
            Some(output) => Box::new(output.writer()),
            None => Box::new(std::io::sink()),
        }
    }

    /// The output's counters; `None` with `--serial off`.
    pub fn counters(&self) -> Option<Arc<ConsoleCounters>> {
        self.output.as_ref().map(ConsoleOutput::counters)
    }

    /// Gives the writer thread a bounded time to write out what is buffered (the guest's
    /// last words before it powered off), then logs how much output was lost in all.
    pub fn finish(&self) {
        let Some(output) = &self.output else { return };
        let complete = output.flush();
        let dropped = output.counters().bytes_dropped();
        if dropped > 0 || !complete {
            log::warn!(
                "guest console output: {dropped} bytes were dropped in all{}",
                if complete {
                    ""
                } else {
                    "; what was still buffered at exit is lost too"
                }
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_modes_parse_and_print_back() {
        for text in ["stdio", "off", "file=/var/log/guest.log", "file=rel/a=b"] {
            assert_eq!(text.parse::<SerialMode>().unwrap().to_string(), text);
        }
        assert_eq!(
            "file=x".parse::<SerialMode>().unwrap(),
            SerialMode::File(PathBuf::from("x"))
        );
    }

    #[test]
    fn bad_serial_modes_are_refused_with_the_value() {
        assert_eq!(
            "tty".parse::<SerialMode>().unwrap_err().to_string(),
            "\"tty\": expected stdio, off or file=PATH"
        );
        assert_eq!(
            "file=".parse::<SerialMode>().unwrap_err(),
            SerialModeError::EmptyPath
        );
        assert!("file".parse::<SerialMode>().is_err());
        assert!("Stdio".parse::<SerialMode>().is_err());
        assert!("".parse::<SerialMode>().is_err());
    }

    #[test]
    fn file_output_appends_and_is_private() {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let path = dir.as_path().join("guest.log");
        std::fs::write(&path, b"before\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let sink =
            ConsoleSink::open(&SerialMode::File(path.clone()), ThreadFilter::none()).unwrap();
        sink.writer().write_all(b"guest says hi\n").unwrap();
        sink.finish();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "before\nguest says hi\n"
        );
        assert_eq!(sink.counters().unwrap().bytes_written(), 14);

        let fresh = dir.as_path().join("fresh.log");
        let sink =
            ConsoleSink::open(&SerialMode::File(fresh.clone()), ThreadFilter::none()).unwrap();
        sink.finish();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn an_unopenable_file_is_refused_with_its_path() {
        let err = ConsoleSink::open(
            &SerialMode::File(PathBuf::from("/nonexistent/dir/log")),
            ThreadFilter::none(),
        )
        .err()
        .unwrap();
        assert!(
            err.to_string()
                .starts_with("--serial file=/nonexistent/dir/log: cannot open"),
            "{err}"
        );
    }

    #[test]
    fn off_discards_everything() {
        use std::io::Write;
        let sink = ConsoleSink::open(&SerialMode::Off, ThreadFilter::none()).unwrap();
        sink.writer().write_all(b"lost").unwrap();
        assert!(sink.counters().is_none());
        sink.finish();
    }
}
