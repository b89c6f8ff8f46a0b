//! Bytes a client sends to the API socket, through the real connection (its buffers, the
//! HTTP framing and keep-alive) and the router, against a model VM whose balloon is a real
//! one without a driver. The bytes arrive over a real socket pair in chunks the input
//! chooses, so requests split across reads, pipelined requests and a client that hangs up
//! half way are all reached.
//!
//! Whatever the client sent, everything the server answers must be well-formed HTTP: a
//! sequence of complete responses, each body a JSON object of its `Content-Length`, and
//! none of them a 5xx, since the model VM never fails. The connection counts its answers
//! where `GET /metrics` shows them, as the real server's do.
//!
//! Input: flags: u8 (bit 0: a balloon is attached; bits 1 to 3: its statistics, hinting
//! and reporting features; bit 4: the client shuts its side down after the last chunk;
//! bit 5: small server limits), chunks: u8 (1 to 4), the sizes of all chunks but the
//! last: u16 each, then the bytes, the last chunk taking what is left.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use vmm::api::connection::{Connection, ServerLimits};
use vmm::api::request_counts::ApiRequestCounters;
use vmm::api::{VmControl, VmInfo, VmRequestError};
use vmm::devices::virtio::balloon::metrics::BalloonMetrics;
use vmm::devices::virtio::balloon::{
    Balloon, BalloonConfig, BalloonControl, BalloonFeatures, BalloonHandle,
};
use vmm::metrics::Registry;
use vmm::size::MIB;
use vmm_sys_util::epoll::EventSet;

use crate::input::{Input, Script};

/// Guest memory of the model VM.
const MEMORY: u64 = 512 * MIB;

/// Rounds of the connection's readiness handling after the client has sent everything; a
/// connection that still has something to say after that many is stuck.
const MAX_DRAIN_ROUNDS: usize = 64;

/// A VM as the API sees it, with a real balloon that no driver runs, and its metrics: the
/// balloon's, as the real VM shows them, and the API's request counts. (The process's are
/// left out: they would open `/proc/self/statm` for every input.)
struct ModelVm {
    balloon: Option<Arc<dyn BalloonControl>>,
    shutdown: AtomicBool,
    paused: AtomicBool,
    metrics: Registry,
}

impl ModelVm {
    fn refuse_if_stopping(&self) -> Result<(), VmRequestError> {
        if self.shutdown.load(Ordering::Relaxed) {
            return Err(VmRequestError::Conflict("the VM is stopping".into()));
        }
        Ok(())
    }
}

impl VmControl for ModelVm {
    fn info(&self) -> VmInfo {
        VmInfo {
            id: "fuzz".to_string(),
            vcpus: 1,
            memory_bytes: MEMORY,
            state: if self.shutdown.load(Ordering::Relaxed) {
                "Stopping"
            } else if self.paused.load(Ordering::Relaxed) {
                "Paused"
            } else {
                "Running"
            },
            uptime_ms: 0,
        }
    }

    fn balloon(&self) -> Option<Arc<dyn BalloonControl>> {
        self.balloon.clone()
    }

    fn request_shutdown(&self) {
        self.shutdown.store(true, Ordering::Relaxed);
    }

    fn pause(&self) -> Result<(), VmRequestError> {
        self.refuse_if_stopping()?;
        self.paused.store(true, Ordering::Relaxed);
        Ok(())
    }

    fn resume(&self) -> Result<(), VmRequestError> {
        self.refuse_if_stopping()?;
        self.paused.store(false, Ordering::Relaxed);
        Ok(())
    }

    fn send_ctrl_alt_del(&self) -> Result<(), VmRequestError> {
        self.refuse_if_stopping()
    }

    fn metrics(&self) -> &Registry {
        &self.metrics
    }
}

fn model_vm(flags: u8) -> ModelVm {
    let balloon = (flags & 1 == 1).then(|| {
        let features = BalloonFeatures {
            stats: flags & 2 != 0,
            free_page_hint: flags & 4 != 0,
            page_reporting: flags & 8 != 0,
            ..Default::default()
        };
        let config = BalloonConfig {
            features,
            stats_interval_s: 0,
            initial_size: 0,
        };
        let balloon = Balloon::new(config, MEMORY).expect("a balloon");
        Arc::new(BalloonHandle::new(Arc::new(Mutex::new(balloon)))) as Arc<dyn BalloonControl>
    });
    let metrics = Registry::new();
    if let Some(balloon) = &balloon {
        metrics.register("balloon", Arc::new(BalloonMetrics::new(balloon.clone())));
    }
    ModelVm {
        balloon,
        shutdown: AtomicBool::new(false),
        paused: AtomicBool::new(false),
        metrics,
    }
}

fn limits(small: bool) -> ServerLimits {
    if small {
        ServerLimits {
            max_body: 64,
            max_header: 256,
            ..ServerLimits::default()
        }
    } else {
        ServerLimits::default()
    }
}

pub fn run(data: &[u8]) {
    check_answers(&exchange(data));
}

/// Sends what `data` describes and returns everything the server answered.
pub fn exchange(data: &[u8]) -> Vec<u8> {
    let mut input = Input::new(data);
    let flags = input.u8();
    let chunk_count = usize::from(input.u8() % 4) + 1;
    let sizes: Vec<usize> = (1..chunk_count).map(|_| usize::from(input.u16())).collect();
    let mut chunks: Vec<&[u8]> = sizes.into_iter().map(|n| input.bytes(n)).collect();
    chunks.push(input.rest());

    let vm = model_vm(flags);
    let limits = limits(flags & 0x20 != 0);
    let (mut client, server) = UnixStream::pair().expect("a socket pair");
    server.set_nonblocking(true).expect("a non-blocking socket");
    client.set_nonblocking(true).expect("a non-blocking socket");
    let requests = Arc::new(ApiRequestCounters::new());
    vm.metrics.register("api", requests.clone());
    let mut connection = Connection::new(server, Instant::now(), requests);
    let mut answers = Vec::new();
    let mut open = true;

    for chunk in chunks {
        if !open {
            break;
        }
        // The socket takes what it has room for; a server that stopped reading (at its
        // input limit) leaves the rest unsent, as a real client's would be.
        let _ = client.write(chunk);
        open = connection.on_ready(EventSet::IN, &vm, &limits, Instant::now());
        receive(&mut client, &mut answers);
    }
    if open && flags & 0x10 != 0 {
        let _ = client.shutdown(Shutdown::Write);
        open = connection.on_ready(
            EventSet::IN | EventSet::READ_HANG_UP,
            &vm,
            &limits,
            Instant::now(),
        );
        receive(&mut client, &mut answers);
    }
    let mut rounds = 0;
    while open && connection.interest(&limits).contains(EventSet::OUT) {
        rounds += 1;
        assert!(
            rounds <= MAX_DRAIN_ROUNDS,
            "the connection keeps answers it cannot send"
        );
        open = connection.on_ready(EventSet::OUT, &vm, &limits, Instant::now());
        receive(&mut client, &mut answers);
    }
    drop(connection);
    receive(&mut client, &mut answers);
    answers
}

/// Reads what the server sent so far.
fn receive(client: &mut UnixStream, answers: &mut Vec<u8>) {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        match client.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(n) => answers.extend_from_slice(&buffer[..n]),
        }
    }
}

/// The answers are complete HTTP/1.1 responses one after the other, each with a body of
/// its `Content-Length` (a JSON object, or the metrics as text), or no body (204, 100
/// Continue, an answer to HEAD).
fn check_answers(mut answers: &[u8]) {
    while !answers.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut response = httparse::Response::new(&mut headers);
        let head = match response.parse(answers) {
            Ok(httparse::Status::Complete(head)) => head,
            other => panic!(
                "not a complete response ({other:?}): {:?}",
                String::from_utf8_lossy(answers)
            ),
        };
        assert_eq!(response.version, Some(1));
        // The model VM never fails, so neither may the server (a panic in a route, which
        // the connection turns into 500, is a bug).
        let status = response.code.expect("a status code");
        assert!((100..500).contains(&status), "status {status}");
        let header = |name: &str| {
            response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| std::str::from_utf8(h.value).expect("a header value in UTF-8"))
        };
        let content_length =
            header("content-length").map(|v| v.parse::<usize>().expect("a numeric Content-Length"));
        let content_type = header("content-type").unwrap_or_default().to_string();
        answers = &answers[head..];
        // An answer to HEAD has the length but not the body: the next answer follows.
        let Some(length) =
            content_length.filter(|_| !answers.is_empty() && !answers.starts_with(b"HTTP/"))
        else {
            continue;
        };
        assert!(answers.len() >= length, "a body cut short");
        let body = &answers[..length];
        if content_type.starts_with("application/json") {
            let body: serde_json::Value = serde_json::from_slice(body).expect("a JSON body");
            assert!(body.is_object(), "{body}");
        } else if content_type.starts_with("text/plain") {
            // `GET /metrics`: the Prometheus text format, whole lines of UTF-8.
            let text = std::str::from_utf8(body).expect("a text body in UTF-8");
            assert!(text.ends_with('\n'), "{text}");
        } else {
            panic!("a body of unexpected type {content_type:?}");
        }
        answers = &answers[length..];
    }
}

fn request(method: &str, path: &str, body: Option<&str>) -> String {
    match body {
        Some(body) => format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        ),
        None => format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n\r\n"),
    }
}

pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = Vec::new();
    let all_features = 0b1111;

    let mut s = Script::new();
    s.u8(all_features).u8(0);
    s.bytes(request("PATCH", "/balloon", Some(r#"{"amount_mib": 128}"#)).as_bytes());
    seeds.push(("patch-balloon", s.into_bytes()));

    // Every route, pipelined on one connection, in three reads, then the client hangs up.
    let interval = r#"{"stats_polling_interval_s": 5}"#;
    let requests = [
        request("GET", "/vm", None),
        request("GET", "/balloon", None),
        request("GET", "/metrics", None),
        request("GET", "/balloon/statistics", None),
        request("PATCH", "/balloon/statistics", Some(interval)),
        request(
            "PATCH",
            "/balloon/hinting/start",
            Some(r#"{"acknowledge_on_stop": true}"#),
        ),
        request("GET", "/balloon/hinting/status", None),
        request("PATCH", "/balloon/hinting/stop", None),
        request("HEAD", "/vm", None),
        request("PUT", "/actions", Some(r#"{"action_type": "Shutdown"}"#)),
    ]
    .concat();
    let mut s = Script::new();
    s.u8(all_features | 0x10).u8(2).u16(30).u16(200);
    s.bytes(requests.as_bytes());
    seeds.push(("every-route-pipelined", s.into_bytes()));

    // Refusals: an unknown route, a wrong method, a request that waits for 100 Continue
    // before its body (sent in a second read), a body too large for small limits, then
    // garbage that is never read.
    let first_read = [
        request("GET", "/nowhere", None),
        request("DELETE", "/balloon", None),
        "PATCH /balloon HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 20\r\n\r\n".to_string(),
    ]
    .concat();
    let second_read = [
        r#"{"amount_mib": 1}   "#.to_string(),
        request("PATCH", "/balloon", Some(&" ".repeat(100))),
        "GARBAGE\0\r\n\r\n".to_string(),
    ]
    .concat();
    let mut s = Script::new();
    s.u8(0x20).u8(1).u16(first_read.len() as u16);
    s.bytes(first_read.as_bytes()).bytes(second_read.as_bytes());
    seeds.push(("refusals", s.into_bytes()));
    seeds
}
