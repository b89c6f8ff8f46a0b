//! The API end to end without KVM: the server runs over a model of the VM and its balloon,
//! and the tests send real HTTP over a real Unix socket.
//!
//! The models record every change they make, so a test can show that a refused request
//! changed nothing. Timeouts here only guard against hangs; no test measures time.
//!
//! - [`model`]: the model VM and balloon; [`harness`]: a server over them on a socket of
//!   its own. The HTTP client is the one the boot tests use, in `tests/common/http.rs`.
//! - The tests: [`routes`] (what every route does), [`errors`] (what is refused, and how),
//!   [`connections`] (keep-alive, pipelining, slow and many clients, limits),
//!   [`socket_file`] (the socket's life on disk), [`ctl`] (`vmm ctl`), [`metrics`]
//!   (`GET /metrics`, checked by `promtool`) and [`openapi`] (docs/api.yaml against what
//!   the server serves).

#[path = "../common/mod.rs"]
mod common;

mod harness;
mod model;

mod connections;
mod ctl;
mod errors;
mod metrics;
mod openapi;
mod routes;
mod socket_file;
