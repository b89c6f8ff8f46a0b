//! What each route does: method and path in, status and JSON body out, over the running VM
//! as [`VmControl`] shows it. Knows nothing of sockets or HTTP framing.
//!
//! A request is checked in full (route, method, balloon attached, body) before anything
//! in the VM is touched, so a refused request changes nothing.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::devices::virtio::balloon::{target_pages, BalloonControl, BalloonError};
use crate::size::MIB;

use super::types::{
    Action, ActionType, BalloonBody, BalloonStatsBody, BalloonStatsUpdate, BalloonUpdate,
    EmptyBody, Fault, HintingStart, HintingStatusBody, InstanceInfoBody, MachineConfigBody,
    VmInfoBody, VmStateChange, VmUpdate,
};
use super::{VmControl, VmRequestError};

/// One method on one path, and the function that answers it.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    handler: Handler,
}

/// Answers a request that matched its route: a refusal is an `Err` so that `?` can return
/// it from the middle of a handler.
type Handler = fn(&dyn VmControl, RequestBody) -> Answer;
type Answer = Result<Response, Response>;

/// Every route the API serves, one entry per method and path. Paths and methods not
/// listed are answered 404 and 405 from this table alone.
pub const ROUTES: &[Route] = &[
    // Firecracker's read routes, in its shapes.
    route("GET", "/", get_instance),
    route("GET", "/machine-config", get_machine_config),
    route("GET", "/vm", get_vm),
    route("PATCH", "/vm", patch_vm),
    route("GET", "/balloon", get_balloon),
    route("PATCH", "/balloon", patch_balloon),
    route("GET", "/balloon/statistics", get_balloon_statistics),
    route("PATCH", "/balloon/statistics", patch_balloon_statistics),
    route("PATCH", "/balloon/hinting/start", start_hinting),
    route("GET", "/balloon/hinting/status", get_hinting_status),
    route("PATCH", "/balloon/hinting/stop", stop_hinting),
    route("PUT", "/actions", put_action),
    route("GET", "/metrics", get_metrics),
];

const fn route(method: &'static str, path: &'static str, handler: Handler) -> Route {
    Route {
        method,
        path,
        handler,
    }
}

/// The body of a request as the HTTP layer framed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestBody<'a> {
    /// The request had no `Content-Length`: by HTTP/1.1 it has no body, and any bytes the
    /// client sent after the headers cannot be delimited.
    Absent,
    /// The `Content-Length` bytes after the headers (possibly none).
    Present(&'a [u8]),
}

/// The `Content-Type` of every answer with a body but `GET /metrics`.
pub const JSON: &str = "application/json";

/// An answer ready for the HTTP layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// JSON text (the metrics' text for `GET /metrics`); `None` for 204.
    pub body: Option<String>,
    /// What `body` is.
    pub content_type: &'static str,
    /// The `Allow` header of a 405.
    pub allow: Option<String>,
    /// The connection cannot carry another request after this one (its framing is lost).
    pub close: bool,
}

impl Response {
    fn no_content() -> Self {
        Response {
            status: 204,
            body: None,
            content_type: JSON,
            allow: None,
            close: false,
        }
    }

    fn json<T: Serialize>(value: &T) -> Self {
        match serde_json::to_string(value) {
            Ok(text) => Response {
                status: 200,
                body: Some(text),
                content_type: JSON,
                allow: None,
                close: false,
            },
            Err(e) => Response::fault(500, format!("cannot encode the answer: {e}")),
        }
    }

    /// A 200 answer of `text` in the Prometheus text format.
    fn metrics(text: String) -> Self {
        Response {
            status: 200,
            body: Some(text),
            content_type: crate::metrics::CONTENT_TYPE,
            allow: None,
            close: false,
        }
    }

    /// An error answer: `{"fault_message": "..."}`.
    pub fn fault(status: u16, message: impl Into<String>) -> Self {
        let fault = Fault {
            fault_message: message.into(),
        };
        // A struct of one string always serializes.
        let body = serde_json::to_string(&fault)
            .unwrap_or_else(|_| String::from("{\"fault_message\":\"internal error\"}"));
        Response {
            status,
            body: Some(body),
            content_type: JSON,
            allow: None,
            close: false,
        }
    }
}

/// Answers one request. `target` is the request target as sent (a query string is ignored).
pub fn handle(vm: &dyn VmControl, method: &str, target: &str, body: RequestBody) -> Response {
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    let on_path: Vec<&Route> = ROUTES.iter().filter(|route| route.path == path).collect();
    if on_path.is_empty() {
        return Response::fault(404, format!("no such route: {path}; {}", route_list()));
    }
    match on_path.iter().find(|route| route.method == method) {
        Some(route) => (route.handler)(vm, body).unwrap_or_else(|refusal| refusal),
        None => {
            let methods: Vec<&str> = on_path.iter().map(|route| route.method).collect();
            let allow = methods.join(", ");
            let mut response = Response::fault(
                405,
                format!("{path} does not answer {method}; it answers {allow}"),
            );
            response.allow = Some(allow);
            response
        }
    }
}

fn route_list() -> String {
    let routes: Vec<String> = ROUTES
        .iter()
        .map(|route| format!("{} {}", route.method, route.path))
        .collect();
    format!("the API serves {}", routes.join(", "))
}

fn get_instance(vm: &dyn VmControl, _: RequestBody) -> Answer {
    Ok(Response::json(&InstanceInfoBody::new(&vm.info())))
}

fn get_machine_config(vm: &dyn VmControl, _: RequestBody) -> Answer {
    Ok(Response::json(&MachineConfigBody::from(&vm.info())))
}

fn get_vm(vm: &dyn VmControl, _: RequestBody) -> Answer {
    let attached = vm.balloon().is_some();
    Ok(Response::json(&VmInfoBody::new(&vm.info(), attached)))
}

fn patch_vm(vm: &dyn VmControl, body: RequestBody) -> Answer {
    let update: VmUpdate = required_body(body, "PATCH /vm", VM_STATE_EXAMPLE)?;
    match update.state {
        VmStateChange::Paused => vm.pause(),
        VmStateChange::Resumed => vm.resume(),
    }
    .map_err(vm_fault)?;
    Ok(Response::no_content())
}

fn get_balloon(vm: &dyn VmControl, _: RequestBody) -> Answer {
    Ok(Response::json(&BalloonBody::from(&balloon(vm)?.info())))
}

fn get_balloon_statistics(vm: &dyn VmControl, _: RequestBody) -> Answer {
    let statistics = balloon(vm)?.statistics().map_err(balloon_fault)?;
    Ok(Response::json(&BalloonStatsBody::from(&statistics)))
}

fn patch_balloon_statistics(vm: &dyn VmControl, body: RequestBody) -> Answer {
    let balloon = balloon(vm)?;
    let update: BalloonStatsUpdate =
        required_body(body, "PATCH /balloon/statistics", STATS_EXAMPLE)?;
    balloon
        .set_stats_interval(update.stats_polling_interval_s)
        .map_err(balloon_fault)?;
    Ok(Response::no_content())
}

fn start_hinting(vm: &dyn VmControl, body: RequestBody) -> Answer {
    let balloon = balloon(vm)?;
    let start: HintingStart = optional_body(body)?;
    balloon
        .start_hinting(start.acknowledge_on_stop)
        .map_err(balloon_fault)?;
    Ok(Response::no_content())
}

fn get_hinting_status(vm: &dyn VmControl, _: RequestBody) -> Answer {
    let status = balloon(vm)?.hinting_status().map_err(balloon_fault)?;
    Ok(Response::json(&HintingStatusBody::from(&status)))
}

fn stop_hinting(vm: &dyn VmControl, body: RequestBody) -> Answer {
    let balloon = balloon(vm)?;
    let _: EmptyBody = optional_body(body)?;
    balloon.stop_hinting().map_err(balloon_fault)?;
    Ok(Response::no_content())
}

fn get_metrics(vm: &dyn VmControl, _: RequestBody) -> Answer {
    Ok(Response::metrics(vm.metrics().render()))
}

fn put_action(vm: &dyn VmControl, body: RequestBody) -> Answer {
    let action: Action = required_body(body, "PUT /actions", ACTION_EXAMPLE)?;
    match action.action_type {
        ActionType::Shutdown => vm.request_shutdown(),
        ActionType::SendCtrlAltDel => vm.send_ctrl_alt_del().map_err(vm_fault)?,
    }
    Ok(Response::no_content())
}

const VM_STATE_EXAMPLE: &str = r#"{"state": "Paused"}"#;
const AMOUNT_EXAMPLE: &str = r#"{"amount_mib": 512}"#;
const STATS_EXAMPLE: &str = r#"{"stats_polling_interval_s": 5}"#;
const ACTION_EXAMPLE: &str = r#"{"action_type": "Shutdown"}"#;

/// The balloon decides which sizes it takes ([`target_pages`]); the route only says which
/// field its refusal is about.
fn patch_balloon(vm: &dyn VmControl, body: RequestBody) -> Answer {
    let balloon = balloon(vm)?;
    let update: BalloonUpdate = required_body(body, "PATCH /balloon", AMOUNT_EXAMPLE)?;
    let requested = u64::from(update.amount_mib) * MIB;
    let pages = target_pages(requested, vm.info().memory_bytes)
        .map_err(|e| Response::fault(400, format!("amount_mib {}: {e}", update.amount_mib)))?;
    balloon.set_target_pages(pages).map_err(balloon_fault)?;
    Ok(Response::no_content())
}

fn balloon(vm: &dyn VmControl) -> Result<std::sync::Arc<dyn BalloonControl>, Response> {
    vm.balloon().ok_or_else(|| {
        Response::fault(
            409,
            "no balloon is attached to this VM; start vmm with --balloon",
        )
    })
}

fn vm_fault(error: VmRequestError) -> Response {
    match error {
        VmRequestError::Conflict(message) => Response::fault(409, message),
        VmRequestError::Failed(message) => Response::fault(500, message),
    }
}

/// Every balloon error is a request the device cannot carry out as asked.
fn balloon_fault(error: BalloonError) -> Response {
    Response::fault(400, error.to_string())
}

fn required_body<T: DeserializeOwned>(
    body: RequestBody,
    route: &str,
    example: &str,
) -> Result<T, Response> {
    match body {
        RequestBody::Absent => {
            let mut response = Response::fault(
                411,
                format!(
                    "{route} needs a JSON body like {example} sent with a Content-Length header"
                ),
            );
            response.close = true;
            Err(response)
        }
        RequestBody::Present(bytes) if is_blank(bytes) => Err(Response::fault(
            400,
            format!("{route} needs a JSON body like {example}; the body is empty"),
        )),
        RequestBody::Present(bytes) => parse(bytes),
    }
}

/// A body that may be left out: no body, an empty one, or JSON.
fn optional_body<T: DeserializeOwned + Default>(body: RequestBody) -> Result<T, Response> {
    match body {
        RequestBody::Absent => Ok(T::default()),
        RequestBody::Present(bytes) if is_blank(bytes) => Ok(T::default()),
        RequestBody::Present(bytes) => parse(bytes),
    }
}

fn is_blank(bytes: &[u8]) -> bool {
    bytes.iter().all(u8::is_ascii_whitespace)
}

/// Parses a JSON body; the error names the field at fault, if any.
fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Response> {
    let invalid = |message: String| Response::fault(400, format!("invalid JSON body: {message}"));
    // serde would also take a struct's fields from an array (`[512]`); the API does not.
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err(invalid("the body must be a JSON object".to_string()));
    }
    let mut json = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let inner = e.inner().to_string();
        // "unknown field `x`" already names it.
        if e.path().iter().next().is_none() || inner.starts_with("unknown field") {
            invalid(inner)
        } else {
            invalid(format!("{}: {inner}", e.path()))
        }
    })?;
    json.end().map_err(|e| invalid(e.to_string()))?;
    Ok(value)
}
