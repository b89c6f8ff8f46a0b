//! Resizing the balloon and reading its size, the same way for both VMMs: vmm through its
//! HTTP API (`PATCH /balloon`, `GET /balloon`), QEMU through QMP (`balloon`,
//! `query-balloon`). Sizes here are always the balloon's, the memory taken from the guest;
//! QEMU counts the memory the guest keeps instead, and is translated.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::http::{HttpClient, HttpError};
use crate::launch::{Kind, STATS_INTERVAL_S};
use crate::qmp::{Qmp, QmpError};

/// How long a control socket may take to appear after the VMM started.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one request may take before the VMM counts as hung.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error("{request} answered {status}: {body}")]
    Status {
        request: String,
        status: u16,
        body: String,
    },
    #[error("{request}: no {field} in the answer {answer}")]
    Field {
        request: String,
        field: String,
        answer: String,
    },
}

/// A connection to one VMM's control socket.
pub enum Control {
    Vmm(HttpClient),
    Qemu { qmp: Qmp, mem_bytes: u64 },
}

impl Control {
    /// Connects to the control socket at `sock`, waiting for it to appear. For QEMU this
    /// also starts the balloon's statistics polling when `stats` is set (vmm polls from the
    /// start with `--balloon stats`).
    pub fn connect(
        kind: Kind,
        sock: &Path,
        mem_bytes: u64,
        stats: bool,
    ) -> Result<Control, ControlError> {
        let started = Instant::now();
        loop {
            let attempt = match kind {
                Kind::Vmm => HttpClient::connect(sock, REQUEST_TIMEOUT)
                    .map(Control::Vmm)
                    .map_err(ControlError::from),
                Kind::Qemu => Qmp::connect(sock, REQUEST_TIMEOUT)
                    .map(|qmp| Control::Qemu { qmp, mem_bytes })
                    .map_err(ControlError::from),
            };
            match attempt {
                Ok(mut control) => {
                    if let (true, Control::Qemu { qmp, .. }) = (stats, &mut control) {
                        qmp.execute(
                            "qom-set",
                            Some(json!({
                                "path": "/machine/peripheral/balloon0",
                                "property": "guest-stats-polling-interval",
                                "value": STATS_INTERVAL_S,
                            })),
                        )?;
                    }
                    return Ok(control);
                }
                Err(e) if started.elapsed() >= CONNECT_TIMEOUT => return Err(e),
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Asks for a balloon of `bytes`.
    pub fn set_balloon(&mut self, bytes: u64) -> Result<(), ControlError> {
        match self {
            Control::Vmm(http) => {
                let body = json!({ "amount_mib": bytes >> 20 }).to_string();
                let r = http.request("PATCH", "/balloon", Some(&body))?;
                expect_status("PATCH /balloon", r.status, 204, &r.body)
            }
            Control::Qemu { qmp, mem_bytes } => {
                let keep = mem_bytes.saturating_sub(bytes);
                qmp.execute("balloon", Some(json!({ "value": keep })))?;
                Ok(())
            }
        }
    }

    /// The balloon's actual size: what the guest has given so far.
    pub fn balloon_bytes(&mut self) -> Result<u64, ControlError> {
        match self {
            Control::Vmm(http) => {
                let r = http.request("GET", "/balloon", None)?;
                expect_status("GET /balloon", r.status, 200, &r.body)?;
                let answer = parse_json("GET /balloon", &r.body)?;
                let mib = u64_field("GET /balloon", &answer, "actual_mib")?;
                Ok(mib << 20)
            }
            Control::Qemu { qmp, mem_bytes } => {
                let answer = qmp.execute("query-balloon", None)?;
                let keep = u64_field("query-balloon", &answer, "actual")?;
                Ok(mem_bytes.saturating_sub(keep))
            }
        }
    }

    /// vmm's count of huge pages the balloon holds part of (`partial_huge_pages` of
    /// `GET /balloon`); QEMU has no such figure.
    pub fn partial_huge_pages(&mut self) -> Result<u64, ControlError> {
        match self {
            Control::Vmm(http) => {
                let r = http.request("GET", "/balloon", None)?;
                expect_status("GET /balloon", r.status, 200, &r.body)?;
                let answer = parse_json("GET /balloon", &r.body)?;
                u64_field("GET /balloon", &answer, "partial_huge_pages")
            }
            Control::Qemu { .. } => Err(ControlError::Field {
                request: "query-balloon".into(),
                field: "partial_huge_pages".into(),
                answer: "(QEMU does not count them)".into(),
            }),
        }
    }

    /// vmm's `GET /metrics` text, where the vmm has that route; `None` for QEMU and for a
    /// vmm without it.
    pub fn metrics(&mut self) -> Option<String> {
        match self {
            Control::Vmm(http) => {
                let r = http.request("GET", "/metrics", None).ok()?;
                (r.status == 200).then(|| String::from_utf8_lossy(&r.body).into_owned())
            }
            Control::Qemu { .. } => None,
        }
    }
}

fn expect_status(request: &str, status: u16, want: u16, body: &[u8]) -> Result<(), ControlError> {
    if status == want {
        return Ok(());
    }
    Err(ControlError::Status {
        request: request.to_string(),
        status,
        body: String::from_utf8_lossy(body).chars().take(300).collect(),
    })
}

fn parse_json(request: &str, body: &[u8]) -> Result<Value, ControlError> {
    serde_json::from_slice(body).map_err(|_| ControlError::Field {
        request: request.to_string(),
        field: "JSON".into(),
        answer: String::from_utf8_lossy(body).chars().take(300).collect(),
    })
}

fn u64_field(request: &str, answer: &Value, field: &str) -> Result<u64, ControlError> {
    answer
        .get(field)
        .and_then(Value::as_u64)
        .ok_or_else(|| ControlError::Field {
            request: request.to_string(),
            field: field.to_string(),
            answer: answer.to_string().chars().take(300).collect(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_statuses_are_checked() {
        let answer = json!({"actual_mib": 256, "amount_mib": "x"});
        assert_eq!(
            u64_field("GET /balloon", &answer, "actual_mib").unwrap(),
            256
        );
        assert!(u64_field("GET /balloon", &answer, "amount_mib").is_err());
        assert!(u64_field("GET /balloon", &answer, "missing").is_err());
        assert!(expect_status("PATCH /balloon", 204, 204, b"").is_ok());
        let err = expect_status(
            "PATCH /balloon",
            400,
            204,
            b"{\"fault_message\":\"too big\"}",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "PATCH /balloon answered 400: {\"fault_message\":\"too big\"}"
        );
        assert!(parse_json("GET /balloon", b"{not json").is_err());
    }
}
