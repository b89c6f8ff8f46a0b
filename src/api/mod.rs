//! The HTTP/JSON API on a Unix socket and its client, `vmm ctl`.
//!
//! - [`server`]: the socket and the thread that serves it ([`ApiServer`]).
//! - [`connection`]: one client connection: HTTP framing, keep-alive, limits.
//! - [`routes`]: what each route does, over [`VmControl`].
//! - [`types`]: the JSON bodies on the wire.
//! - [`socket`]: the socket file: mode 0600, stale sockets, removal.
//! - [`request_counts`]: the API's answers by route and status, for `/metrics`.
//! - [`client`]: `vmm ctl`.
//!
//! The routes are documented in `docs/api.md` and described in `docs/api.yaml` (OpenAPI).

pub mod client;
pub mod connection;
pub mod request_counts;
pub mod routes;
pub mod server;
pub mod socket;
pub mod types;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::devices::virtio::balloon::BalloonControl;
use crate::metrics::Registry;

pub use client::{run as run_ctl, ClientError, CtlArgs};
pub use connection::ServerLimits;
pub use server::ApiServer;

/// What `GET /vm` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmInfo {
    pub vcpus: u8,
    pub memory_bytes: u64,
    /// `"Running"` while the guest runs, `"Stopping"` once a shutdown was requested.
    pub state: &'static str,
    pub uptime_ms: u64,
}

/// The running VM as the API sees it. The VMM implements it; API tests use a model.
pub trait VmControl: Send + Sync {
    fn info(&self) -> VmInfo;
    /// The balloon, if one is attached.
    fn balloon(&self) -> Option<Arc<dyn BalloonControl>>;
    /// Asks the VM to stop; vmm then exits with status 0. Returns at once.
    fn request_shutdown(&self);
    /// The VM's metric sources, which `GET /metrics` renders. The API server adds its
    /// request counts there when it starts.
    fn metrics(&self) -> &Registry;
}

/// Why the API server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{} exists and is not a socket; refusing to replace it (remove it or choose another --api-sock)", .0.display())]
    NotASocket(PathBuf),
    #[error("another process is serving the API socket {}; stop it or choose another --api-sock", .0.display())]
    InUse(PathBuf),
    #[error("API socket path {} is {length} bytes long; a Unix socket path holds at most {max}", .path.display(), max = socket::MAX_SOCKET_PATH)]
    PathTooLong { path: PathBuf, length: usize },
    #[error("cannot create the API socket {}: {source}", .path.display())]
    Socket { path: PathBuf, source: io::Error },
    #[error("cannot start the API server: {0}")]
    Start(io::Error),
}
