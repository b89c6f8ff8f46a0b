//! Finding the requests in a connection's input as it arrives: HTTP/1.1 framing with
//! httparse, at a cost linear in the input however it trickles in.
//!
//! httparse parses a request head from its first byte every time it is called. Called on
//! each arrival, a head sent one byte at a time would be parsed once per byte: O(n²). So
//! [`RequestFramer`] remembers where it got to. It scans only the new bytes for the
//! blank line that ends the head, and calls httparse twice per request at most: when the
//! first line is in (so that a request line that is not HTTP is refused at once, not after
//! 8 KiB) and when the head is whole. The parsed head is then kept while the body
//! arrives. [`RequestFramer::bytes_examined`] counts the work, which the tests check.

use std::ops::Range;

use super::connection::ServerLimits;
use super::routes::Response;

/// Headers a request may carry.
pub const MAX_HEADERS: usize = 32;

/// A complete request found at the start of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub target: String,
    /// Where the body lies in the input; `None` without `Content-Length`.
    pub body: Option<Range<usize>>,
    /// Bytes of input the request takes, headers and body.
    pub length: usize,
    pub keep_alive: bool,
}

#[derive(Debug)]
pub enum Framing {
    /// More bytes are needed. `expects_continue`: the headers are in and ask for
    /// `100 Continue` before the body.
    Incomplete {
        expects_continue: bool,
    },
    Complete(Request),
    /// The request cannot be delimited or is too large; the connection must close.
    Refused(Response),
}

/// What is known of the request at the start of a connection's input, kept between
/// arrivals. Positions count from the start of that request.
#[derive(Debug, Default)]
pub struct RequestFramer {
    /// Bytes scanned for the end of the head.
    scanned: usize,
    /// Where the line being scanned starts.
    line_start: usize,
    /// Whether the request line has been seen (empty lines before it are skipped).
    request_line_seen: bool,
    /// The head once parsed: the request without its body.
    head: Option<Request>,
    expects_continue: bool,
    /// Bytes looked at so far, over the life of the connection.
    examined: u64,
}

impl RequestFramer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Frames the request at the start of `input`. `input` must be what it was at the
    /// last call plus whatever arrived since, until [`RequestFramer::next_request`].
    pub fn frame(&mut self, input: &[u8], limits: &ServerLimits) -> Framing {
        if self.head.is_none() {
            let head_length = match self.scan_for_head_end(input, limits) {
                Ok(Some(length)) => length,
                Ok(None) if input.len() > limits.max_header => {
                    return Framing::Refused(too_large_headers(limits))
                }
                Ok(None) => {
                    return Framing::Incomplete {
                        expects_continue: false,
                    }
                }
                Err(refused) => return Framing::Refused(refused),
            };
            self.examined += head_length as u64;
            match parse_head(&input[..head_length], limits) {
                Ok((head, expects_continue)) => {
                    self.head = Some(head);
                    self.expects_continue = expects_continue;
                }
                Err(refused) => return Framing::Refused(refused),
            }
        }
        match &self.head {
            Some(head) if input.len() >= head.length => Framing::Complete(head.clone()),
            _ => Framing::Incomplete {
                expects_continue: self.expects_continue,
            },
        }
    }

    /// The request framed last has been taken off the input; the next one starts.
    pub fn next_request(&mut self) {
        *self = RequestFramer {
            examined: self.examined,
            ..RequestFramer::default()
        };
    }

    /// Bytes of input looked at so far, by the scan and by httparse together. It grows
    /// with the input, not with how many pieces the input came in.
    pub fn bytes_examined(&self) -> u64 {
        self.examined
    }

    /// Scans the bytes not scanned yet for the blank line that ends the head, within the
    /// first `max_header` bytes. Returns the length of the head once it is whole.
    fn scan_for_head_end(
        &mut self,
        input: &[u8],
        limits: &ServerLimits,
    ) -> Result<Option<usize>, Response> {
        let end = input.len().min(limits.max_header);
        while self.scanned < end {
            let at = self.scanned;
            self.scanned += 1;
            self.examined += 1;
            if input[at] != b'\n' {
                continue;
            }
            let line = &input[self.line_start..at];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            self.line_start = at + 1;
            if !line.is_empty() && !self.request_line_seen {
                self.request_line_seen = true;
                self.examined += (at + 1) as u64;
                check_request_line(&input[..=at])?;
            } else if line.is_empty() && self.request_line_seen {
                return Ok(Some(at + 1));
            }
        }
        Ok(None)
    }
}

fn too_large_headers(limits: &ServerLimits) -> Response {
    Response::fault(
        431,
        format!(
            "the request line and headers are larger than {} bytes",
            limits.max_header
        ),
    )
}

fn malformed(error: httparse::Error) -> Response {
    Response::fault(400, format!("malformed HTTP request: {error}"))
}

/// Refuses a request line httparse cannot read. `line` ends with the line's newline.
fn check_request_line(line: &[u8]) -> Result<(), Response> {
    // No room for headers: parsing stops after the request line.
    let mut request = httparse::Request::new(&mut []);
    match request.parse(line) {
        Err(e) if e != httparse::Error::TooManyHeaders => Err(malformed(e)),
        _ => Ok(()),
    }
}

/// Parses a whole head (request line, headers, blank line) into the request it starts,
/// and whether it asks for `100 Continue`.
fn parse_head(head: &[u8], limits: &ServerLimits) -> Result<(Request, bool), Response> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let header_length = match request.parse(head) {
        Ok(httparse::Status::Complete(length)) => length,
        // The scan found the blank line that ends the head; httparse must agree.
        Ok(httparse::Status::Partial) => return Err(malformed(httparse::Error::NewLine)),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Response::fault(
                431,
                format!("the request has more than {MAX_HEADERS} headers"),
            ))
        }
        Err(e) => return Err(malformed(e)),
    };

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
                    return Err(Response::fault(
                        400,
                        format!("Content-Length \"{value}\" is not a byte count"),
                    ))
                }
                (Some(new), Some(old)) if new != old => {
                    return Err(Response::fault(
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
        return Err(Response::fault(
            411,
            "Transfer-Encoding (such as chunked) is not supported; send the body with a Content-Length header",
        ));
    }
    if let Some(length) = content_length {
        if length > limits.max_body {
            return Err(Response::fault(
                413,
                format!(
                    "the request body of {content_length_text} bytes is larger than the limit of {} bytes",
                    limits.max_body
                ),
            ));
        }
    }
    // An HTTP/1.0 client gets one answer per connection.
    let keep_alive = request.version == Some(1) && !close;
    let request = Request {
        method: request.method.unwrap_or_default().to_string(),
        target: request.path.unwrap_or_default().to_string(),
        body: content_length.map(|body_length| header_length..header_length + body_length),
        length: header_length + content_length.unwrap_or(0),
        keep_alive,
    };
    Ok((request, expects_continue))
}

/// The method and target of a request, as far as its first line could be read.
pub fn request_line(input: &[u8]) -> Option<(&str, &str)> {
    // No room for headers: parsing stops after the request line, which is all this needs.
    let mut request = httparse::Request::new(&mut []);
    let _ = request.parse(input);
    Some((request.method?, request.path?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(input: &str) -> Framing {
        RequestFramer::new().frame(input.as_bytes(), &ServerLimits::default())
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
    fn empty_lines_before_the_request_and_bare_newlines_are_taken() {
        let input = "\r\n\nGET /vm HTTP/1.1\nHost: x\n\n";
        let Framing::Complete(request) = frame(input) else {
            panic!("not complete");
        };
        assert_eq!(
            (request.method.as_str(), request.target.as_str()),
            ("GET", "/vm")
        );
        assert_eq!(request.length, input.len());
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
        // A request line that is not HTTP is refused as soon as it ends.
        assert_eq!(status("GET /vm FTP/1.1\r\n"), 400);
        let many = format!(
            "GET /vm HTTP/1.1\r\n{}\r\n",
            "X: y\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(status(&many), 431);
        assert_eq!(status(&format!("GET /{} HTTP/1.1", "x".repeat(9000))), 431);
    }

    #[test]
    fn the_head_must_end_within_the_header_limit() {
        let limits = ServerLimits {
            max_header: 40,
            ..ServerLimits::default()
        };
        let fits = "GET /vm HTTP/1.1\r\nHost: localhost123\r\n\r\n";
        assert_eq!(fits.len(), 40);
        let framed = RequestFramer::new().frame(fits.as_bytes(), &limits);
        assert!(matches!(framed, Framing::Complete(_)), "{framed:?}");
        let over = "GET /vm HTTP/1.1\r\nHost: localhost1234\r\n\r\n";
        let framed = RequestFramer::new().frame(over.as_bytes(), &limits);
        assert!(
            matches!(framed, Framing::Refused(ref r) if r.status == 431),
            "{framed:?}"
        );
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
}
