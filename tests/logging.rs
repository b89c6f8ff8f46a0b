//! The one logging path end to end: a warning a guest provokes, a message virtio-queue logs
//! through the `log` facade and a request the API server refuses each reach the logger
//! `vmm::logging::init` installs once (the first two however often the guest repeats
//! them), in the same line format, at their level, and not at all when the configured
//! level is below theirs. No KVM is needed.
//!
//! A process has one logger, so each configured level runs in a process of its own: the
//! scenario test runs here at `warn`, and `every_level_in_its_own_process` runs it again in
//! this same test binary at the other levels.

mod common;

use std::io::{self, Write};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;

use log::{Level, LevelFilter};
use virtio_queue::{Queue, QueueT};

use vmm::api::{ApiServer, VmControl, VmInfo, VmRequestError};
use vmm::devices::virtio::balloon::{Balloon, BalloonConfig, BalloonControl};
use vmm::devices::virtio::VirtioDevice;
use vmm::logging::LogConfig;
use vmm::metrics::Registry;

/// Set by `every_level_in_its_own_process` for the scenario it runs.
const LEVEL_VAR: &str = "VMM_TEST_LOG_LEVEL";
const SCENARIO: &str = "each_message_appears_once_at_its_level";

/// What the log holds; the test reads it back.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).expect("the log is UTF-8")
    }
}

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A VM without a balloon, enough for the API server to answer.
#[derive(Default)]
struct ModelVm {
    metrics: Registry,
}

impl VmControl for ModelVm {
    fn info(&self) -> VmInfo {
        VmInfo {
            id: "logging-test".to_string(),
            vcpus: 1,
            memory_bytes: 256 << 20,
            state: "Running",
            uptime_ms: 1,
        }
    }
    fn balloon(&self) -> Option<Arc<dyn BalloonControl>> {
        None
    }
    fn request_shutdown(&self) {}
    // The logging tests do not drive the VM: anything but a shutdown is refused.
    fn pause(&self) -> Result<(), VmRequestError> {
        Err(VmRequestError::Conflict("this VM cannot pause".into()))
    }
    fn resume(&self) -> Result<(), VmRequestError> {
        Err(VmRequestError::Conflict("this VM cannot resume".into()))
    }
    fn send_ctrl_alt_del(&self) -> Result<(), VmRequestError> {
        Err(VmRequestError::Conflict("this VM has no keyboard".into()))
    }
    fn metrics(&self) -> &Registry {
        &self.metrics
    }
}

/// One log line, taken apart: `<time> <LEVEL> [<thread>] <target>: <message>`.
#[derive(Debug)]
struct Line {
    level: Level,
    thread: String,
    target: String,
    message: String,
}

fn parse_line(line: &str) -> Line {
    let bad = format!("not a log line: {line:?}");
    let (time, rest) = line.split_once(' ').expect(&bad);
    // RFC 3339 in UTC with milliseconds: 2025-01-31T09:15:02.123Z
    let shape_ok = time.len() == 24
        && time.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            10 => b == b'T',
            13 | 16 => b == b':',
            19 => b == b'.',
            23 => b == b'Z',
            _ => b.is_ascii_digit(),
        });
    assert!(shape_ok, "bad timestamp in {line:?}");
    let (level, rest) = rest.split_at_checked(5).expect(&bad);
    let level: Level = level.trim_end().parse().expect(&bad);
    let rest = rest.strip_prefix(" [").expect(&bad);
    let (thread, rest) = rest.split_once("] ").expect(&bad);
    let (target, message) = rest.split_once(": ").expect(&bad);
    assert!(!target.contains(' '), "bad target in {line:?}");
    Line {
        level,
        thread: thread.to_string(),
        target: target.to_string(),
        message: message.to_string(),
    }
}

/// The lines whose message contains `text`.
fn lines_with<'a>(lines: &'a [Line], text: &str) -> Vec<&'a Line> {
    lines.iter().filter(|l| l.message.contains(text)).collect()
}

/// Checks that a message at `level` appears exactly once when `configured` lets it pass,
/// and not at all when it does not; returns the line if it appeared.
fn expect_once<'a>(
    lines: &'a [Line],
    text: &str,
    level: Level,
    configured: LevelFilter,
) -> Option<&'a Line> {
    let found = lines_with(lines, text);
    if level <= configured {
        assert_eq!(found.len(), 1, "{text:?} at {configured}: {found:#?}");
        assert_eq!(found[0].level, level, "{found:#?}");
        Some(found[0])
    } else {
        assert!(found.is_empty(), "{text:?} at {configured}: {found:#?}");
        None
    }
}

#[test]
fn each_message_appears_once_at_its_level() {
    let configured: LevelFilter = match std::env::var(LEVEL_VAR) {
        Ok(level) => level.parse().expect("a log level"),
        Err(_) => LevelFilter::Warn,
    };
    let log = LogBuffer::default();
    let config = LogConfig {
        level: Some(configured),
        rust_log: None,
    };
    vmm::logging::init(&config, Box::new(log.clone())).expect("install the logger");

    // On a vCPU thread, as an MMIO exit would: the guest writes the balloon's read-only
    // `num_pages` three times, and three times gives a queue a size virtio does not allow.
    thread::Builder::new()
        .name("vcpu0".to_string())
        .spawn(|| {
            let mut balloon = Balloon::new(BalloonConfig::default(), 256 << 20).unwrap();
            for _ in 0..3 {
                balloon.write_config(0, &[1, 0, 0, 0]);
            }
            let mut queue = Queue::new(256).unwrap();
            for _ in 0..3 {
                queue.set_size(3);
            }
        })
        .unwrap()
        .join()
        .unwrap();

    // A request the API refuses, through the real server and socket.
    let dir = common::temp_dir("logging");
    let socket = dir.as_path().join("api.sock");
    let server =
        ApiServer::start(&socket, Arc::new(ModelVm::default())).expect("start the API server");
    let answer = common::http::request(&socket, "GET", "/nowhere", None);
    assert_eq!(answer.status, 404);
    server.shutdown();

    let text = log.text();
    let lines: Vec<Line> = text.lines().map(parse_line).collect();

    let guest = expect_once(
        &lines,
        "virtio-balloon: the driver wrote a read-only configuration field; ignored \
         (4 bytes at offset 0); later occurrences are not logged",
        Level::Warn,
        configured,
    );
    if let Some(line) = guest {
        assert_eq!(line.thread, "vcpu0");
        assert!(
            line.target.starts_with("vmm::devices::virtio::balloon"),
            "{line:?}"
        );
    }

    let queue = expect_once(
        &lines,
        "virtio queue with invalid size: 3; later occurrences are not logged",
        Level::Error,
        configured,
    );
    if let Some(line) = queue {
        assert_eq!(line.thread, "vcpu0");
        assert!(line.target.starts_with("virtio_queue"), "{line:?}");
    }

    let api = expect_once(
        &lines,
        "API request GET /nowhere refused with 404 Not Found: no such route: /nowhere",
        Level::Warn,
        configured,
    );
    if let Some(line) = api {
        assert_eq!(line.thread, "vmm-api");
        assert!(line.target.starts_with("vmm::api"), "{line:?}");
    }

    if configured == LevelFilter::Off {
        assert_eq!(text, "");
    }
}

#[test]
fn every_level_in_its_own_process() {
    let this_test_binary = std::env::current_exe().expect("the test binary");
    for level in ["trace", "error", "off"] {
        let out = Command::new(&this_test_binary)
            .args([SCENARIO, "--exact", "--nocapture", "--test-threads=1"])
            .env(LEVEL_VAR, level)
            .output()
            .expect("run the scenario");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "the scenario failed at {level} ({}):\n{stdout}\n{stderr}",
            out.status
        );
    }
}
