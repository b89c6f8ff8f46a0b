//! A minimal HTTP/1.1 client for vmm's API socket: one keep-alive connection, one request
//! at a time, bodies framed by `Content-Length` (all vmm sends). Responses are parsed by
//! httparse.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// The largest response read; vmm's answers are a few hundred bytes (its metrics a few
/// tens of KiB).
const MAX_RESPONSE: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot connect to {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("API request {request}: {source}")]
    Io {
        request: String,
        source: std::io::Error,
    },
    #[error("API request {request}: the connection closed before a whole response")]
    Closed { request: String },
    #[error("API request {request}: malformed response: {reason}")]
    Malformed { request: String, reason: String },
}

pub struct HttpClient {
    stream: UnixStream,
    /// Bytes read past the end of the last response.
    pending: Vec<u8>,
}

/// A response: its status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Connects to the Unix socket at `path`, with `timeout` on every read and write.
pub fn connect_with_timeouts(path: &Path, timeout: Duration) -> std::io::Result<UnixStream> {
    let stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

impl HttpClient {
    pub fn connect(path: &Path, timeout: Duration) -> Result<HttpClient, HttpError> {
        let stream = connect_with_timeouts(path, timeout).map_err(|source| HttpError::Connect {
            path: path.display().to_string(),
            source,
        })?;
        Ok(HttpClient {
            stream,
            pending: Vec::new(),
        })
    }

    /// Sends one request and reads its response.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<Response, HttpError> {
        let request = format!("{method} {path}");
        let io = |source| HttpError::Io {
            request: request.clone(),
            source,
        };
        let mut text = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
        if let Some(body) = body {
            text.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ));
        } else {
            text.push_str("\r\n");
        }
        self.stream.write_all(text.as_bytes()).map_err(io)?;
        let mut chunk = [0u8; 8192];
        loop {
            if let Some((response, used)) = parse_response(&self.pending, &request)? {
                self.pending.drain(..used);
                return Ok(response);
            }
            if self.pending.len() > MAX_RESPONSE {
                return Err(HttpError::Malformed {
                    request,
                    reason: format!("longer than {MAX_RESPONSE} bytes"),
                });
            }
            let n = self.stream.read(&mut chunk).map_err(io)?;
            if n == 0 {
                return Err(HttpError::Closed { request });
            }
            self.pending.extend_from_slice(&chunk[..n]);
        }
    }
}

/// A whole response at the start of `bytes` and how many bytes it took, or `None` if more
/// are needed.
fn parse_response(bytes: &[u8], request: &str) -> Result<Option<(Response, usize)>, HttpError> {
    let malformed = |reason: String| HttpError::Malformed {
        request: request.to_string(),
        reason,
    };
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(malformed(e.to_string())),
    };
    let status = response
        .code
        .ok_or_else(|| malformed("no status code".into()))?;
    let mut body_len = 0usize;
    for h in response.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            body_len = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .filter(|&n| n <= MAX_RESPONSE)
                .ok_or_else(|| {
                    malformed(format!(
                        "Content-Length {:?}",
                        String::from_utf8_lossy(h.value)
                    ))
                })?;
        }
    }
    let Some(end) = head_len.checked_add(body_len).filter(|&e| e <= bytes.len()) else {
        return Ok(None);
    };
    Ok(Some((
        Response {
            status,
            body: bytes[head_len..end].to_vec(),
        },
        end,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;
    use std::thread;

    #[test]
    fn whole_and_partial_responses() {
        let text = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 204";
        let (r, used) = parse_response(text, "GET /").unwrap().unwrap();
        assert_eq!(
            (r.status, r.body.as_slice(), used),
            (200, &b"hello"[..], 43)
        );
        assert!(parse_response(&text[..40], "GET /").unwrap().is_none());
        assert!(parse_response(b"HTTP/1.1 20", "GET /").unwrap().is_none());
        let (r, _) = parse_response(b"HTTP/1.1 204 No Content\r\n\r\n", "PATCH /")
            .unwrap()
            .unwrap();
        assert_eq!((r.status, r.body.len()), (204, 0));
    }

    #[test]
    fn hostile_responses_are_errors_not_panics() {
        for bad in [
            &b"garbage\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2000000\r\n\r\n",
        ] {
            assert!(
                parse_response(bad, "GET /").is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn one_connection_carries_several_requests() {
        let dir = std::env::temp_dir().join(format!("vmm-bench-http-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("api.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let server = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
            let mut writer = stream;
            for body in ["{\"a\":1}", "{\"b\":2}"] {
                // Read the request head (these requests have no body).
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap() > 0 && line != "\r\n" {
                    line.clear();
                }
                write!(
                    writer,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .unwrap();
            }
        });
        let mut client = HttpClient::connect(&path, Duration::from_secs(10)).unwrap();
        assert_eq!(
            client.request("GET", "/balloon", None).unwrap().body,
            b"{\"a\":1}"
        );
        assert_eq!(
            client.request("GET", "/balloon", None).unwrap().body,
            b"{\"b\":2}"
        );
        server.join().unwrap();
        let err = client.request("GET", "/balloon", None).unwrap_err();
        assert!(
            matches!(err, HttpError::Closed { .. } | HttpError::Io { .. }),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
