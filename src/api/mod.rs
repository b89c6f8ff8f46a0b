//! The HTTP/JSON API on a Unix socket and its client, `vmm ctl`. (Being written; this file
//! holds the interface between the API and the running VM.)

use std::sync::Arc;

use crate::devices::virtio::balloon::BalloonControl;

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
}
