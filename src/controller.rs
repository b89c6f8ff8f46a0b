//! The running VM as the API sees it: [`VmController`] implements the API's
//! [`VmControl`] over the VM's [`Lifecycle`] and its balloon.

use std::sync::Arc;
use std::time::Instant;

use crate::api::{VmControl, VmInfo};
use crate::config::InstanceId;
use crate::devices::virtio::balloon::BalloonControl;
use crate::lifecycle::{Lifecycle, StopReason};

/// What the API may see of and do to a running VM.
pub struct VmController {
    id: InstanceId,
    vcpus: u8,
    memory_bytes: u64,
    started: Instant,
    lifecycle: Arc<Lifecycle>,
    balloon: Option<Arc<dyn BalloonControl>>,
}

impl VmController {
    /// The controller of the VM `id`, with `vcpus` vCPUs and `memory_bytes` of RAM, that
    /// starts now; its uptime counts from this call.
    pub fn new(
        id: InstanceId,
        vcpus: u8,
        memory_bytes: u64,
        lifecycle: Arc<Lifecycle>,
        balloon: Option<Arc<dyn BalloonControl>>,
    ) -> Self {
        VmController {
            id,
            vcpus,
            memory_bytes,
            started: Instant::now(),
            lifecycle,
            balloon,
        }
    }
}

impl VmControl for VmController {
    fn info(&self) -> VmInfo {
        VmInfo {
            id: self.id.to_string(),
            vcpus: self.vcpus,
            memory_bytes: self.memory_bytes,
            state: if self.lifecycle.is_stopping() {
                "Stopping"
            } else {
                "Running"
            },
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        }
    }

    fn balloon(&self) -> Option<Arc<dyn BalloonControl>> {
        self.balloon.clone()
    }

    fn request_shutdown(&self) {
        self.lifecycle.request_stop(StopReason::ShutdownRequested);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_the_vm_and_stops_it_on_request() {
        let lifecycle = Arc::new(Lifecycle::new().unwrap());
        let id: InstanceId = "vm-7".parse().unwrap();
        let controller = VmController::new(id, 2, 1 << 30, lifecycle.clone(), None);
        let info = controller.info();
        assert_eq!(info.id, "vm-7");
        assert_eq!((info.vcpus, info.memory_bytes), (2, 1 << 30));
        assert_eq!(info.state, "Running");
        assert!(controller.balloon().is_none());
        controller.request_shutdown();
        assert_eq!(controller.info().state, "Stopping");
        assert_eq!(lifecycle.reason(), Some(StopReason::ShutdownRequested));
    }
}
