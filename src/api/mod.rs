//! The HTTP/JSON API on a Unix socket and its client, `vmm ctl`.
//!
//! - [`server`]: the socket and the thread that serves it ([`ApiServer`]).
//! - [`connection`]: one client connection: buffers, keep-alive, limits.
//! - [`framing`]: where each request in a connection's input begins and ends (HTTP/1.1).
//! - [`routes`]: what each route does, over [`VmControl`].
//! - [`types`]: the JSON bodies on the wire.
//! - [`socket`]: the socket file: mode 0600, stale sockets, removal.
//! - [`socket_lock`]: the lock next to the socket that keeps two vmm off one path.
//! - [`request_counts`]: the API's answers by route and status, for `/metrics`.
//! - [`client`]: `vmm ctl`.
//!
//! The routes are documented in `docs/api.md` and described in `docs/api.yaml` (OpenAPI).

pub mod client;
pub mod connection;
pub mod framing;
pub mod request_counts;
pub mod routes;
pub mod server;
pub mod socket;
pub mod socket_lock;
pub mod types;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::devices::virtio::balloon::BalloonControl;
use crate::metrics::Registry;

pub use client::{run as run_ctl, ClientError, CtlArgs};
pub use connection::ServerLimits;
pub use server::ApiServer;

/// What `GET /vm`, `GET /` and `GET /machine-config` show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmInfo {
    /// The instance ID given with `--id`.
    pub id: String,
    pub vcpus: u8,
    pub memory_bytes: u64,
    /// `"Running"` while the guest runs, `"Paused"` while its vCPUs are paused,
    /// `"Stopping"` once a shutdown was requested.
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
    /// Pauses every vCPU; returns once none runs. Pausing a paused VM changes nothing.
    fn pause(&self) -> Result<(), VmRequestError>;
    /// Lets the vCPUs run again. Resuming a running VM changes nothing.
    fn resume(&self) -> Result<(), VmRequestError>;
    /// Types Ctrl+Alt+Del on the guest's keyboard. Returns once the keys are queued.
    fn send_ctrl_alt_del(&self) -> Result<(), VmRequestError>;
    /// The VM's metric sources, which `GET /metrics` renders. The API server adds its
    /// request counts there when it starts.
    fn metrics(&self) -> &Registry;
}

/// Why the VM did not do what the API asked; the text is one sentence for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VmRequestError {
    /// The VM cannot do it in its present state (it is stopping, the guest does not read
    /// its keyboard): answered 409.
    #[error("{0}")]
    Conflict(String),
    /// The VMM tried and failed: answered 500.
    #[error("{0}")]
    Failed(String),
}

/// Why the API server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{} exists and is not a socket; refusing to replace it (remove it or choose another --api-sock)", .0.display())]
    NotASocket(PathBuf),
    #[error("another process is serving the API socket {}; stop it or choose another --api-sock", .0.display())]
    InUse(PathBuf),
    #[error("another vmm is serving the API socket {} or starting to (it holds {}); stop it or choose another --api-sock", .socket.display(), .lock.display())]
    Locked { socket: PathBuf, lock: PathBuf },
    #[error("{} exists and is not a lock file; refusing to use it as the API socket's lock (remove it or choose another --api-sock)", .0.display())]
    NotALockFile(PathBuf),
    #[error("cannot take the lock of the API socket {} ({}): {source}", .socket.display(), .lock.display())]
    Lock {
        socket: PathBuf,
        lock: PathBuf,
        source: io::Error,
    },
    #[error("API socket path {} is {length} bytes long; a Unix socket path holds at most {max}", .path.display(), max = socket::MAX_SOCKET_PATH)]
    PathTooLong { path: PathBuf, length: usize },
    #[error("cannot create the API socket {}: {source}", .path.display())]
    Socket { path: PathBuf, source: io::Error },
    #[error("cannot start the API server: {0}")]
    Start(io::Error),
    #[error("cannot start the API server: {0}")]
    Confine(crate::seccomp::SeccompError),
}
