//! A minimal HTTP client over the VMM's API socket, for boot tests that drive a running
//! guest the way `curl --unix-socket` would.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

/// Sends one request (`Connection: close`) and returns the status and the body.
pub fn request(sock: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut stream = UnixStream::connect(sock)
        .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", sock.display()));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("socket timeout");
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .expect("send the request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read the answer");
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// `GET path`, expecting 200 and a JSON body.
pub fn get_json(sock: &Path, path: &str) -> Value {
    let (status, body) = request(sock, "GET", path, None);
    assert_eq!(status, 200, "GET {path} answered {status}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: bad JSON {body:?}: {e}"))
}

/// `PATCH path` with `body`, expecting 204.
pub fn patch(sock: &Path, path: &str, body: &str) {
    let (status, answer) = request(sock, "PATCH", path, Some(body));
    assert_eq!(
        status, 204,
        "PATCH {path} {body} answered {status}: {answer}"
    );
}

/// A number field of a JSON object.
pub fn field(value: &Value, name: &str) -> u64 {
    value[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no number {name:?} in {value}"))
}
