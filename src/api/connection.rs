//! One client connection: its buffers, keep-alive, and the limits on what it may hold.
//!
//! A connection never blocks: it reads what is there, answers every complete request in
//! order (several may arrive in one read: pipelining), and writes what the socket takes.
//! Bytes of a request still on their way stay in the buffer until the rest arrives; the
//! [`RequestFramer`] remembers how far it got, so they are not framed again. Every answer
//! is counted, and logged if it refuses the request, once, as it is queued (`answered`).

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::EventSet;

use super::framing::{request_line, Framing, RequestFramer};
use super::request_counts::ApiRequestCounters;
use super::routes::{self, RequestBody, Response};
use super::types::Fault;
use super::VmControl;
/// Answers a connection may have waiting to be sent before it stops reading requests (a
/// client that sends but never reads must not make the server buffer without end).
const OUTPUT_HIGH_WATER: usize = 64 * 1024;
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Sizes and times that bound what one client can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// The largest request body; a larger one is answered 413.
    pub max_body: usize,
    /// The largest request line plus headers; a larger one is answered 431.
    pub max_header: usize,
    /// Connections served at once. A client beyond them takes the place of the connection
    /// silent the longest, if one has been silent for `reclaim_after` with no answer
    /// waiting; otherwise it is answered 503 and closed.
    pub max_connections: usize,
    /// A connection without traffic for this long is closed.
    pub idle_timeout: Duration,
    /// How long a connection must have been silent before a new client may take its place.
    pub reclaim_after: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_body: 8 * 1024,
            max_header: 8 * 1024,
            max_connections: 64,
            idle_timeout: Duration::from_secs(60),
            reclaim_after: Duration::from_secs(5),
        }
    }
}

impl ServerLimits {
    fn max_input(&self) -> usize {
        self.max_header.saturating_add(self.max_body)
    }
}

pub struct Connection {
    stream: UnixStream,
    /// What the client sent; `input[consumed..]` is not answered yet.
    input: Vec<u8>,
    /// Bytes at the start of `input` taken by requests already answered; dropped from
    /// `input` once per wake-up rather than once per request.
    consumed: usize,
    framer: RequestFramer,
    output: Vec<u8>,
    /// The request being received asked `Expect: 100-continue` and was told to go on.
    continue_sent: bool,
    /// The client will send nothing more.
    peer_done: bool,
    /// No more requests are read; the connection closes once `output` is sent.
    closing: bool,
    last_activity: Instant,
    /// Where the answers are counted.
    requests: Arc<ApiRequestCounters>,
}

impl Connection {
    pub fn new(stream: UnixStream, now: Instant, requests: Arc<ApiRequestCounters>) -> Self {
        Connection {
            stream,
            input: Vec::new(),
            consumed: 0,
            framer: RequestFramer::new(),
            output: Vec::new(),
            continue_sent: false,
            peer_done: false,
            closing: false,
            last_activity: now,
            requests,
        }
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    pub fn last_activity(&self) -> Instant {
        self.last_activity
    }

    /// Bytes of input framing has looked at over the connection's life (see
    /// [`RequestFramer::bytes_examined`]).
    pub fn bytes_examined(&self) -> u64 {
        self.framer.bytes_examined()
    }

    /// No answer is waiting to be sent, so closing the connection loses none.
    pub fn has_no_answer_pending(&self) -> bool {
        self.output.is_empty()
    }

    /// Handles readiness of the socket. Returns false when the connection is finished and
    /// should be dropped.
    pub fn on_ready(
        &mut self,
        events: EventSet,
        vm: &dyn VmControl,
        limits: &ServerLimits,
        now: Instant,
    ) -> bool {
        let readable = EventSet::IN | EventSet::HANG_UP | EventSet::ERROR | EventSet::READ_HANG_UP;
        if events.intersects(readable) && !self.closing && self.receive(limits, now).is_err() {
            return false;
        }
        loop {
            let held_back = self.answer_requests(vm, limits);
            if self.flush(now).is_err() {
                return false;
            }
            // Requests held back at the high-water mark must be answered as soon as the
            // socket took the answers before them: no further input may ever come to
            // wake this connection. A socket that took too little waits for OUT.
            if !held_back || self.output.len() >= OUTPUT_HIGH_WATER {
                break;
            }
        }
        !(self.output.is_empty() && (self.closing || self.peer_done))
    }

    /// The readiness this connection waits for now.
    pub fn interest(&self, limits: &ServerLimits) -> EventSet {
        let mut interest = EventSet::empty();
        if !self.closing
            && !self.peer_done
            && self.input.len() < limits.max_input()
            && self.output.len() < OUTPUT_HIGH_WATER
        {
            interest |= EventSet::IN;
        }
        if !self.output.is_empty() {
            interest |= EventSet::OUT;
        }
        interest
    }

    /// Sends what the socket takes without waiting.
    pub fn flush(&mut self, now: Instant) -> io::Result<()> {
        while !self.output.is_empty() {
            match self.stream.write(&self.output) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => {
                    self.output.drain(..written);
                    self.last_activity = now;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn receive(&mut self, limits: &ServerLimits, now: Instant) -> io::Result<()> {
        let mut chunk = [0u8; 4096];
        while self.input.len() < limits.max_input() {
            let room = (limits.max_input() - self.input.len()).min(chunk.len());
            match self.stream.read(&mut chunk[..room]) {
                Ok(0) => {
                    self.peer_done = true;
                    break;
                }
                Ok(count) => {
                    self.input.extend_from_slice(&chunk[..count]);
                    self.last_activity = now;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Answers the complete requests in the input, in order, until the answers waiting to
    /// be sent reach the high-water mark. Returns true if it stopped there with requests
    /// possibly left unanswered.
    fn answer_requests(&mut self, vm: &dyn VmControl, limits: &ServerLimits) -> bool {
        let held_back = self.answer_pending(vm, limits);
        self.input.drain(..self.consumed);
        self.consumed = 0;
        held_back
    }

    fn answer_pending(&mut self, vm: &dyn VmControl, limits: &ServerLimits) -> bool {
        while !self.closing {
            let pending = &self.input[self.consumed..];
            if self.output.len() >= OUTPUT_HIGH_WATER {
                return !pending.is_empty();
            }
            match self.framer.frame(pending, limits) {
                Framing::Incomplete { expects_continue } => {
                    if self.peer_done && !pending.is_empty() {
                        let response = Response::fault(
                            400,
                            "the connection was closed in the middle of a request",
                        );
                        answered(&self.requests, request_line(pending), &response);
                        self.answer_and_close(&response, false);
                    } else if expects_continue && !self.continue_sent {
                        self.output.extend_from_slice(CONTINUE);
                        self.continue_sent = true;
                    }
                    return false;
                }
                Framing::Refused(response) => {
                    answered(&self.requests, request_line(pending), &response);
                    self.answer_and_close(&response, false);
                }
                Framing::Complete(request) => {
                    let body = match &request.body {
                        None => RequestBody::Absent,
                        Some(range) => RequestBody::Present(&pending[range.clone()]),
                    };
                    let response = catch_unwind(AssertUnwindSafe(|| {
                        routes::handle(vm, &request.method, &request.target, body)
                    }))
                    .unwrap_or_else(|_| {
                        Response::fault(500, "the VMM failed while answering this request")
                    });
                    let line = Some((request.method.as_str(), request.target.as_str()));
                    answered(&self.requests, line, &response);
                    let head_only = request.method == "HEAD";
                    if request.keep_alive && !response.close {
                        self.output
                            .extend_from_slice(&encode(&response, false, head_only));
                        self.consumed += request.length;
                        self.framer.next_request();
                        self.continue_sent = false;
                    } else {
                        self.answer_and_close(&response, head_only);
                    }
                }
            }
        }
        false
    }

    /// Sends a last answer; whatever else the client sent is dropped.
    fn answer_and_close(&mut self, response: &Response, head_only: bool) {
        self.output
            .extend_from_slice(&encode(response, true, head_only));
        self.input = Vec::new();
        self.consumed = 0;
        self.framer.next_request();
        self.closing = true;
    }
}

/// Counts an answer, and logs it if it refuses the request. Called once for each answer,
/// as it is queued, with the request's method and target when they are known.
pub(super) fn answered(
    requests: &ApiRequestCounters,
    request: Option<(&str, &str)>,
    response: &Response,
) {
    requests.record(request, response.status);
    log_refusal(request, response);
}

/// Logs an answer that refuses a request (status 400 and above): a client's mistake as a
/// warning, the VMM's as an error.
fn log_refusal(request: Option<(&str, &str)>, response: &Response) {
    if response.status < 400 {
        return;
    }
    let level = if response.status >= 500 {
        log::Level::Error
    } else {
        log::Level::Warn
    };
    let request = match request {
        Some((method, target)) => format!("API request {method} {target}"),
        None => "API request".to_string(),
    };
    let body = response.body.as_deref().unwrap_or_default();
    let fault = match serde_json::from_str::<Fault>(body) {
        Ok(fault) => fault.fault_message,
        Err(_) => body.to_string(),
    };
    log::log!(
        level,
        "{request} refused with {} {}: {fault}",
        response.status,
        reason(response.status)
    );
}

/// The bytes of an answer. `head_only`: the body is left out (an answer to HEAD).
pub fn encode(response: &Response, close: bool, head_only: bool) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nServer: vmm\r\n",
        response.status,
        reason(response.status)
    );
    if let Some(body) = &response.body {
        head.push_str(&format!("Content-Type: {}\r\n", response.content_type));
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    if let Some(allow) = &response.allow {
        head.push_str(&format!("Allow: {allow}\r\n"));
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    if let (Some(body), false) = (&response.body, head_only) {
        bytes.extend_from_slice(body.as_bytes());
    }
    bytes
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_answers() {
        let text = String::from_utf8(encode(&Response::fault(404, "gone"), true, false)).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(text.contains("Content-Type: application/json\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\n{\"fault_message\":\"gone\"}"));
        let head = String::from_utf8(encode(&Response::fault(404, "gone"), false, true)).unwrap();
        assert!(head.ends_with("\r\n\r\n"));
        assert!(head.contains("Content-Length: 24\r\n"));
    }
}
