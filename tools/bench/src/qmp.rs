//! A minimal QMP client (QEMU's JSON control protocol): one JSON object per line each way;
//! a command is answered by an object with `return` or `error`, and asynchronous `event`
//! objects may come in between, which are skipped. The whole schema (what the `qapi`
//! crate generates) is not needed for the three commands used here.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

/// The longest line read from QEMU; its answers here are a few hundred bytes.
const MAX_LINE: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to QMP at {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("QMP {command}: {source}")]
    Io {
        command: String,
        source: std::io::Error,
    },
    #[error("QMP {command}: the connection closed")]
    Closed { command: String },
    #[error("QMP {command}: malformed answer {line:?}")]
    Malformed { command: String, line: String },
    #[error("QMP {command} was refused: {desc}")]
    Refused { command: String, desc: String },
}

pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects, reads QEMU's greeting and enters command mode.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let connect_err = |source| QmpError::Connect {
            path: path.display().to_string(),
            source,
        };
        let stream = crate::http::connect_with_timeouts(path, timeout).map_err(connect_err)?;
        let writer = stream.try_clone().map_err(connect_err)?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = qmp.read_object("greeting")?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Malformed {
                command: "greeting".into(),
                line: greeting.to_string(),
            });
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// Runs `command` and returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let mut request = json!({ "execute": command });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let io = |source| QmpError::Io {
            command: command.to_string(),
            source,
        };
        self.writer
            .write_all(format!("{request}\n").as_bytes())
            .map_err(io)?;
        loop {
            let answer = self.read_object(command)?;
            if answer.get("event").is_some() {
                continue;
            }
            return answer_value(command, answer);
        }
    }

    fn read_object(&mut self, command: &str) -> Result<Value, QmpError> {
        let mut line = String::new();
        let n = (&mut self.reader)
            .take(MAX_LINE)
            .read_line(&mut line)
            .map_err(|source| QmpError::Io {
                command: command.to_string(),
                source,
            })?;
        if n == 0 {
            return Err(QmpError::Closed {
                command: command.to_string(),
            });
        }
        serde_json::from_str(line.trim()).map_err(|_| QmpError::Malformed {
            command: command.to_string(),
            line,
        })
    }
}

/// The `return` of an answer, or its `error` as a refusal.
fn answer_value(command: &str, answer: Value) -> Result<Value, QmpError> {
    if let Some(value) = answer.get("return") {
        return Ok(value.clone());
    }
    if let Some(error) = answer.get("error") {
        return Err(QmpError::Refused {
            command: command.to_string(),
            desc: error
                .get("desc")
                .and_then(Value::as_str)
                .unwrap_or("no description")
                .to_string(),
        });
    }
    Err(QmpError::Malformed {
        command: command.to_string(),
        line: answer.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::thread;

    #[test]
    fn answers_are_returns_errors_or_malformed() {
        assert_eq!(
            answer_value("x", json!({"return": {"actual": 5}})).unwrap(),
            json!({"actual": 5})
        );
        let err = answer_value(
            "balloon",
            json!({"error": {"class": "GenericError", "desc": "no balloon"}}),
        );
        assert!(matches!(err, Err(QmpError::Refused { ref desc, .. }) if desc == "no balloon"));
        assert!(matches!(
            answer_value("x", json!({"error": 3})),
            Err(QmpError::Refused { .. })
        ));
        assert!(matches!(
            answer_value("x", json!([1, 2])),
            Err(QmpError::Malformed { .. })
        ));
    }

    /// A fake QEMU: greeting, capabilities, an event before an answer, then garbage.
    #[test]
    fn events_are_skipped_and_garbage_is_an_error() {
        let dir = std::env::temp_dir().join(format!("vmm-bench-qmp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("qmp.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let server = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut writer = stream;
            let mut line = String::new();
            writer
                .write_all(b"{\"QMP\": {\"version\": {}}}\r\n")
                .unwrap();
            reader.read_line(&mut line).unwrap();
            assert!(line.contains("qmp_capabilities"));
            writer.write_all(b"{\"return\": {}}\r\n").unwrap();
            line.clear();
            reader.read_line(&mut line).unwrap();
            assert!(line.contains("query-balloon"));
            writer
                .write_all(b"{\"event\": \"BALLOON_CHANGE\", \"data\": {\"actual\": 1}}\r\n{\"return\": {\"actual\": 1073741824}}\r\n")
                .unwrap();
            line.clear();
            reader.read_line(&mut line).unwrap();
            writer.write_all(b"not json\n").unwrap();
        });
        let mut qmp = Qmp::connect(&path, Duration::from_secs(10)).unwrap();
        let answer = qmp.execute("query-balloon", None).unwrap();
        assert_eq!(answer["actual"], 1_073_741_824u64);
        let err = qmp.execute("query-balloon", None).unwrap_err();
        assert!(matches!(err, QmpError::Malformed { .. }), "{err}");
        server.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
