//! A small HTTP client over the VMM's API socket that shows the wire as it is: requests are
//! written by hand, answers are parsed without interpretation, and a stream can carry
//! several requests (keep-alive, pipelining). The API tests (tests/api) use every part of
//! it against a server over a model VM; the boot tests use the shortcuts at the end
//! ([`get_json`], [`patch`], [`field`]) against a running guest, the way
//! `curl --unix-socket` would.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

/// Long enough never to fire on a working server; short enough to end a hung test.
pub const HANG_GUARD: Duration = Duration::from_secs(30);

/// One HTTP answer as it came off the wire.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {:?}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `fault_message` of an error answer, checking that the body is exactly that.
    pub fn fault(&self) -> String {
        let body = self.json();
        let object = body.as_object().expect("error body is a JSON object");
        assert_eq!(
            object.keys().collect::<Vec<_>>(),
            ["fault_message"],
            "error body: {body}"
        );
        assert_eq!(self.header("content-type"), Some("application/json"));
        body["fault_message"].as_str().unwrap().to_string()
    }

    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|value| value.eq_ignore_ascii_case("close"))
    }
}

/// A new connection to the socket, whose reads and writes give up after [`HANG_GUARD`].
pub fn connect(socket: &Path) -> UnixStream {
    let stream = UnixStream::connect(socket)
        .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", socket.display()));
    stream.set_read_timeout(Some(HANG_GUARD)).unwrap();
    stream.set_write_timeout(Some(HANG_GUARD)).unwrap();
    stream
}

/// The bytes of a request; a body comes with its JSON content type and length.
pub fn http(method: &str, path: &str, body: Option<&str>) -> String {
    match body {
        Some(body) => format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
        None => format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n\r\n"),
    }
}

/// Reads one answer; bytes of later answers stay in `pending`.
pub fn read_answer(stream: &mut UnixStream, pending: &mut Vec<u8>) -> Answer {
    loop {
        let parsed = {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(pending).expect("answer is valid HTTP") {
                httparse::Status::Complete(length) => Some((
                    length,
                    response.code.unwrap(),
                    response
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_string(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect::<Vec<_>>(),
                )),
                httparse::Status::Partial => None,
            }
        };
        if let Some((length, status, headers)) = parsed {
            let content_length = headers
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
                .map_or(0, |(_, value)| value.parse::<usize>().unwrap());
            while pending.len() < length + content_length {
                assert!(read_some(stream, pending), "server closed mid-answer");
            }
            let body = pending[length..length + content_length].to_vec();
            pending.drain(..length + content_length);
            return Answer {
                status,
                headers,
                body,
            };
        }
        assert!(
            read_some(stream, pending),
            "server closed the connection without answering"
        );
    }
}

/// Reads what arrives; false at the end of the stream.
pub fn read_some(stream: &mut UnixStream, pending: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk) {
        Ok(0) => false,
        Ok(count) => {
            pending.extend_from_slice(&chunk[..count]);
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => false,
        Err(e) => panic!("reading the answer failed (hang guard?): {e}"),
    }
}

/// Whether the server has closed the connection (after any answer already read).
pub fn server_closed(stream: &mut UnixStream) -> bool {
    let mut rest = Vec::new();
    !read_some(stream, &mut rest) && rest.is_empty()
}

/// Sends raw bytes on a new connection and reads one answer.
pub fn exchange(socket: &Path, raw: &[u8]) -> (Answer, UnixStream) {
    let mut stream = connect(socket);
    // A server that refuses the connection may close it before taking the request; its
    // answer is still there to read.
    let _ = stream.write_all(raw);
    let answer = read_answer(&mut stream, &mut Vec::new());
    (answer, stream)
}

/// Sends one request on a new connection and reads its answer.
pub fn request(socket: &Path, method: &str, path: &str, body: Option<&str>) -> Answer {
    exchange(socket, http(method, path, body).as_bytes()).0
}

/// `GET path`, expecting 200 and a JSON body.
pub fn get_json(socket: &Path, path: &str) -> Value {
    let answer = request(socket, "GET", path, None);
    assert_eq!(
        answer.status,
        200,
        "GET {path} answered {}: {}",
        answer.status,
        answer.text()
    );
    serde_json::from_slice(&answer.body)
        .unwrap_or_else(|e| panic!("GET {path}: bad JSON {:?}: {e}", answer.text()))
}

/// `PATCH path` with `body`, expecting 204.
pub fn patch(socket: &Path, path: &str, body: &str) {
    let answer = request(socket, "PATCH", path, Some(body));
    assert_eq!(
        answer.status,
        204,
        "PATCH {path} {body} answered {}: {}",
        answer.status,
        answer.text()
    );
}

/// A number field of a JSON object.
pub fn field(value: &Value, name: &str) -> u64 {
    value[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no number {name:?} in {value}"))
}

/// The names of a JSON object's fields.
pub fn keys(value: &Value) -> BTreeSet<String> {
    value.as_object().unwrap().keys().cloned().collect()
}
