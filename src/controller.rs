//! The running VM as the API sees it: [`VmController`] implements the API's
//! [`VmControl`] over the VM's [`Lifecycle`], its balloon and its metrics.

use std::sync::Arc;
use std::time::Instant;

use crate::api::{VmControl, VmInfo};
use crate::devices::virtio::balloon::metrics::BalloonMetrics;
use crate::devices::virtio::balloon::BalloonControl;
use crate::lifecycle::{Lifecycle, StopReason};
use crate::metrics::{ProcessMetrics, Registry};

/// What the API may see of and do to a running VM.
pub struct VmController {
    vcpus: u8,
    memory_bytes: u64,
    started: Instant,
    lifecycle: Arc<Lifecycle>,
    balloon: Option<Arc<dyn BalloonControl>>,
    metrics: Registry,
}

impl VmController {
    /// The controller of a VM with `vcpus` vCPUs and `memory_bytes` of RAM that starts
    /// now; its uptime counts from this call. Its metrics show the process (uptime, RSS)
    /// and the balloon; the caller registers the VM's other sources.
    pub fn new(
        vcpus: u8,
        memory_bytes: u64,
        lifecycle: Arc<Lifecycle>,
        balloon: Option<Arc<dyn BalloonControl>>,
    ) -> Self {
        let started = Instant::now();
        let metrics = Registry::new();
        metrics.register("process", Arc::new(ProcessMetrics::new(started)));
        if let Some(balloon) = &balloon {
            metrics.register("balloon", Arc::new(BalloonMetrics::new(balloon.clone())));
        }
        VmController {
            vcpus,
            memory_bytes,
            started,
            lifecycle,
            balloon,
            metrics,
        }
    }
}

impl VmControl for VmController {
    fn info(&self) -> VmInfo {
        VmInfo {
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

    fn metrics(&self) -> &Registry {
        &self.metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_the_vm_and_stops_it_on_request() {
        let lifecycle = Arc::new(Lifecycle::new().unwrap());
        let controller = VmController::new(2, 1 << 30, lifecycle.clone(), None);
        let info = controller.info();
        assert_eq!((info.vcpus, info.memory_bytes), (2, 1 << 30));
        assert_eq!(info.state, "Running");
        assert!(controller.balloon().is_none());
        controller.request_shutdown();
        assert_eq!(controller.info().state, "Stopping");
        assert_eq!(lifecycle.reason(), Some(StopReason::ShutdownRequested));
    }

    #[test]
    fn shows_the_process_and_the_balloon_in_its_metrics() {
        use crate::devices::virtio::balloon::{Balloon, BalloonHandle};
        use std::sync::Mutex;

        let lifecycle = Arc::new(Lifecycle::new().unwrap());
        let balloon = Balloon::new("stats,size=4M".parse().unwrap(), 64 << 20).unwrap();
        let balloon = BalloonHandle::new(Arc::new(Mutex::new(balloon)));
        let controller = VmController::new(1, 64 << 20, lifecycle, Some(Arc::new(balloon)));
        let text = controller.metrics().render();
        assert!(text.contains("\nvmm_uptime_seconds "), "{text}");
        assert!(
            text.contains("\nvmm_balloon_target_bytes 4194304\n"),
            "{text}"
        );
        assert!(text.contains("vmm_balloon_queue_notifications_total{queue=\"statsq\"} 0\n"));
        // No statistics yet: no gauge for any.
        assert!(!text.contains("vmm_balloon_guest_"), "{text}");
    }
}
