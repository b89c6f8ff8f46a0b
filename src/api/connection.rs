//! One client connection: its buffers, HTTP/1.1 framing (httparse) and keep-alive.
//!
//! A connection never blocks: it reads what is there, answers every complete request in
//! order (several may arrive in one read: pipelining), and writes what the socket takes.
//! Bytes of a request still on their way stay in the buffer until the rest arrives.
//! Every answer is counted, and logged if it refuses the request, once, as it is queued
//! (`answered`).

use std::io::{self, Read, Write};
use std::ops::Range;
use std::os::unix::net::UnixStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::EventSet;

use super::request_counts::ApiRequestCounters;
use super::routes::{self, RequestBody, Response};
use super::types::Fault;
use super::VmControl;

/// Headers a request may carry.
const MAX_HEADERS: usize = 32;
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
    input: Vec<u8>,
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
        while !self.closing {
            if self.output.len() >= OUTPUT_HIGH_WATER {
                return !self.input.is_empty();
            }
            match frame_request(&self.input, limits) {
                Framing::Incomplete { expects_continue } => {
                    if self.peer_done && !self.input.is_empty() {
                        let response = Response::fault(
                            400,
                            "the connection was closed in the middle of a request",
                        );
                        answered(&self.requests, request_line(&self.input), &response);
                        self.answer_and_close(&response, false);
                    } else if expects_continue && !self.continue_sent {
                        self.output.extend_from_slice(CONTINUE);
                        self.continue_sent = true;
                    }
                    return false;
                }
                Framing::Refused(response) => {
                    answered(&self.requests, request_line(&self.input), &response);
                    self.answer_and_close(&response, false);
                }
                Framing::Complete(request) => {
                    let body = match &request.body {
                        None => RequestBody::Absent,
                        Some(range) => RequestBody::Present(&self.input[range.clone()]),
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
                        self.input.drain(..request.length);
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
        self.closing = true;
    }
}

/// A complete request found at the start of the input.
#[derive(Debug)]
struct Request {
    method: String,
    target: String,
    /// Where the body lies in the input; `None` without `Content-Length`.
    body: Option<Range<usize>>,
    /// Bytes of input the request takes, headers and body.
    length: usize,
    keep_alive: bool,
}

#[derive(Debug)]
enum Framing {
    /// More bytes are needed. `expects_continue`: the headers are in and ask for
    /// `100 Continue` before the body.
    Incomplete {
        expects_continue: bool,
    },
    Complete(Request),
    /// The request cannot be delimited or is too large; the connection must close.
    Refused(Response),
}

fn frame_request(input: &[u8], limits: &ServerLimits) -> Framing {
    let too_large_headers = || {
        Framing::Refused(Response::fault(
            431,
            format!(
                "the request line and headers are larger than {} bytes",
                limits.max_header
            ),
        ))
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let header_length = match request.parse(input) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if input.len() > limits.max_header => {
            return too_large_headers()
        }
        Ok(httparse::Status::Partial) => {
            return Framing::Incomplete {
                expects_continue: false,
            }
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Framing::Refused(Response::fault(
                431,
                format!("the request has more than {MAX_HEADERS} headers"),
            ))
        }
        Err(e) => {
            return Framing::Refused(Response::fault(400, format!("malformed HTTP request: {e}")))
        }
    };
    if header_length > limits.max_header {
        return too_large_headers();
    }

    let mut content_length: Option<usize> = None;
    // As sent, for the error message: a length past usize::MAX is read as usize::MAX.
    let mut content_length_text = String::new();
    let mut transfer_encoding = false;
    let mut close = false;
    let mut expects_continue = false;
    for header in request.headers.iter() {
        let value = String::from_utf8_lossy(header.value);
        let value = value.trim();
        if header.name.eq_ignore_ascii_case("content-length") {
            let parsed = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
                // Digits beyond what usize holds are a body over any limit (413 below).
                Some(value.parse::<usize>().unwrap_or(usize::MAX))
            } else {
                None
            };
            match (parsed, content_length) {
                (None, _) => {
                    return Framing::Refused(Response::fault(
                        400,
                        format!("Content-Length \"{value}\" is not a byte count"),
                    ))
                }
                (Some(new), Some(old)) if new != old => {
                    return Framing::Refused(Response::fault(
                        400,
                        format!("the request has two Content-Length headers ({old} and {new})"),
                    ))
                }
                (Some(new), _) => {
                    content_length = Some(new);
                    content_length_text = value.to_string();
                }
            }
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
        } else if header.name.eq_ignore_ascii_case("connection") {
            close |= value
                .split(',')
                .any(|token| token.trim().eq_ignore_ascii_case("close"));
        } else if header.name.eq_ignore_ascii_case("expect") {
            expects_continue = value.eq_ignore_ascii_case("100-continue");
        }
    }

    if transfer_encoding {
        return Framing::Refused(Response::fault(
            411,
            "Transfer-Encoding (such as chunked) is not supported; send the body with a Content-Length header",
        ));
    }
    if let Some(length) = content_length {
        if length > limits.max_body {
            return Framing::Refused(Response::fault(
                413,
                format!(
                    "the request body of {content_length_text} bytes is larger than the limit of {} bytes",
                    limits.max_body
                ),
            ));
        }
    }
    let length = header_length + content_length.unwrap_or(0);
    if input.len() < length {
        return Framing::Incomplete { expects_continue };
    }
    // An HTTP/1.0 client gets one answer per connection.
    let keep_alive = request.version == Some(1) && !close;
    Framing::Complete(Request {
        method: request.method.unwrap_or_default().to_string(),
        target: request.path.unwrap_or_default().to_string(),
        body: content_length.map(|body_length| header_length..header_length + body_length),
        length,
        keep_alive,
    })
}

/// The method and target of a request, as far as its first line could be read.
fn request_line(input: &[u8]) -> Option<(&str, &str)> {
    // No room for headers: parsing stops after the request line, which is all this needs.
    let mut request = httparse::Request::new(&mut []);
    let _ = request.parse(input);
    Some((request.method?, request.path?))
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

    fn frame(input: &str) -> Framing {
        frame_request(input.as_bytes(), &ServerLimits::default())
    }

    #[test]
    fn frames_a_request_with_its_body() {
        let input = "PATCH /balloon HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}GET";
        let Framing::Complete(request) = frame(input) else {
            panic!("not complete");
        };
        assert_eq!(request.method, "PATCH");
        assert_eq!(request.target, "/balloon");
        assert_eq!(&input[request.body.clone().unwrap()], "{}");
        assert_eq!(request.length, input.len() - 3);
        assert!(request.keep_alive);
    }

    #[test]
    fn waits_for_the_rest_of_a_request() {
        assert!(matches!(
            frame("GET /vm HTTP/1.1\r\nHost: x\r\n"),
            Framing::Incomplete {
                expects_continue: false
            }
        ));
        assert!(matches!(
            frame("PATCH /balloon HTTP/1.1\r\nContent-Length: 20\r\nExpect: 100-continue\r\n\r\n{"),
            Framing::Incomplete {
                expects_continue: true
            }
        ));
    }

    #[test]
    fn http_1_0_and_connection_close_end_the_connection() {
        let Framing::Complete(request) = frame("GET /vm HTTP/1.0\r\n\r\n") else {
            panic!("not complete");
        };
        assert!(!request.keep_alive);
        let Framing::Complete(request) = frame("GET /vm HTTP/1.1\r\nConnection: Close\r\n\r\n")
        else {
            panic!("not complete");
        };
        assert!(!request.keep_alive);
    }

    #[test]
    fn refuses_what_cannot_be_delimited() {
        let status = |input: &str| match frame(input) {
            Framing::Refused(response) => response.status,
            other => panic!("{input:?} was not refused: {other:?}"),
        };
        assert_eq!(status("GET /vm HTTP/1.1\r\nContent-Length: x\r\n\r\n"), 400);
        assert_eq!(
            status("GET /vm HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
            400
        );
        assert_eq!(
            status("GET /vm HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            400
        );
        assert_eq!(
            status("PATCH /balloon HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            411
        );
        assert_eq!(
            status("PATCH /balloon HTTP/1.1\r\nContent-Length: 100000\r\n\r\n"),
            413
        );
        assert_eq!(status("GARBAGE\0\r\n\r\n"), 400);
    }

    #[test]
    fn reads_the_request_line_of_a_refused_request() {
        fn line(input: &str) -> Option<(&str, &str)> {
            request_line(input.as_bytes())
        }
        assert_eq!(
            line("PATCH /balloon HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            Some(("PATCH", "/balloon"))
        );
        assert_eq!(line("GET /vm HTTP/1.1\r\nHost: x"), Some(("GET", "/vm")));
        assert_eq!(line("GET /v"), None);
        assert_eq!(line("GARBAGE\0\r\n\r\n"), None);
    }

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
