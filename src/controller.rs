//! The running VM as the API sees it: [`VmController`] implements the API's
//! [`VmControl`] over the VM's [`Lifecycle`], its vCPUs' [`PauseGate`], its keyboard, its
//! balloon and its metrics.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::api::{VmControl, VmInfo, VmRequestError};
use crate::config::InstanceId;
use crate::devices::legacy::i8042::I8042;
use crate::devices::virtio::balloon::metrics::BalloonMetrics;
use crate::devices::virtio::balloon::BalloonControl;
use crate::lifecycle::{Lifecycle, StopReason};
use crate::metrics::{ProcessMetrics, Registry};
use crate::sync::lock;
use crate::vcpu::pause::PauseError;
use crate::vcpu::PauseGate;

/// How long a pause may wait for the vCPUs to leave the guest. A kick takes them out in
/// well under a millisecond; one that does not come back within this is stuck in the VMM,
/// and the API must answer rather than wait with it (`vmm ctl` gives up after 10 s).
pub const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the API may see of and do to a running VM.
pub struct VmController {
    id: InstanceId,
    vcpus: u8,
    memory_bytes: u64,
    started: Instant,
    lifecycle: Arc<Lifecycle>,
    pause_gate: Arc<PauseGate>,
    keyboard: Arc<Mutex<I8042>>,
    balloon: Option<Arc<dyn BalloonControl>>,
    metrics: Registry,
}

impl VmController {
    /// The controller of the VM `id`, with `vcpus` vCPUs and `memory_bytes` of RAM, that
    /// starts now; its uptime counts from this call. Its metrics show the process (uptime,
    /// RSS) and the balloon; the caller registers the VM's other sources.
    pub fn new(
        id: InstanceId,
        vcpus: u8,
        memory_bytes: u64,
        lifecycle: Arc<Lifecycle>,
        pause_gate: Arc<PauseGate>,
        keyboard: Arc<Mutex<I8042>>,
        balloon: Option<Arc<dyn BalloonControl>>,
    ) -> Self {
        let started = Instant::now();
        let metrics = Registry::new();
        metrics.register("process", Arc::new(ProcessMetrics::new(started)));
        if let Some(balloon) = &balloon {
            metrics.register("balloon", Arc::new(BalloonMetrics::new(balloon.clone())));
        }
        VmController {
            id,
            vcpus,
            memory_bytes,
            started,
            lifecycle,
            pause_gate,
            keyboard,
            balloon,
            metrics,
        }
    }

    fn refuse_if_stopping(&self) -> Result<(), VmRequestError> {
        if self.lifecycle.is_stopping() {
            return Err(VmRequestError::Conflict(PauseError::Stopping.to_string()));
        }
        Ok(())
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
            } else if self.pause_gate.is_paused() {
                "Paused"
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

    fn pause(&self) -> Result<(), VmRequestError> {
        self.refuse_if_stopping()?;
        self.pause_gate
            .pause(PAUSE_TIMEOUT)
            .map_err(|error| match error {
                PauseError::Stopping | PauseError::Resumed => {
                    VmRequestError::Conflict(error.to_string())
                }
                PauseError::Timeout { .. } => VmRequestError::Failed(error.to_string()),
            })
    }

    fn resume(&self) -> Result<(), VmRequestError> {
        self.refuse_if_stopping()?;
        self.pause_gate.resume();
        Ok(())
    }

    fn send_ctrl_alt_del(&self) -> Result<(), VmRequestError> {
        self.refuse_if_stopping()?;
        lock(&self.keyboard)
            .send_ctrl_alt_del()
            .map_err(|error| VmRequestError::Conflict(error.to_string()))
    }

    fn metrics(&self) -> &Registry {
        &self.metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::bus::BusDevice;
    use crate::devices::test_support::CountingInterrupt;

    struct Fixture {
        controller: VmController,
        lifecycle: Arc<Lifecycle>,
        keyboard: Arc<Mutex<I8042>>,
        keyboard_irq: Arc<CountingInterrupt>,
    }

    fn fixture() -> Fixture {
        fixture_with(None)
    }

    fn fixture_with(balloon: Option<Arc<dyn BalloonControl>>) -> Fixture {
        let lifecycle = Arc::new(Lifecycle::new().unwrap());
        let keyboard_irq = Arc::new(CountingInterrupt::default());
        let keyboard = Arc::new(Mutex::new(I8042::new(
            lifecycle.clone(),
            keyboard_irq.clone(),
        )));
        let id: InstanceId = "vm-7".parse().unwrap();
        let controller = VmController::new(
            id,
            2,
            1 << 30,
            lifecycle.clone(),
            Arc::new(PauseGate::new()),
            keyboard.clone(),
            balloon,
        );
        Fixture {
            controller,
            lifecycle,
            keyboard,
            keyboard_irq,
        }
    }

    #[test]
    fn shows_the_vm_and_stops_it_on_request() {
        let f = fixture();
        let info = f.controller.info();
        assert_eq!(info.id, "vm-7");
        assert_eq!((info.vcpus, info.memory_bytes), (2, 1 << 30));
        assert_eq!(info.state, "Running");
        assert!(f.controller.balloon().is_none());
        f.controller.request_shutdown();
        assert_eq!(f.controller.info().state, "Stopping");
        assert_eq!(f.lifecycle.reason(), Some(StopReason::ShutdownRequested));
    }

    #[test]
    fn pauses_and_resumes_until_the_vm_stops() {
        let f = fixture();
        // No vCPU thread runs here, so the pause holds at once.
        f.controller.pause().unwrap();
        assert_eq!(f.controller.info().state, "Paused");
        f.controller.pause().unwrap();
        f.controller.resume().unwrap();
        assert_eq!(f.controller.info().state, "Running");
        f.controller.resume().unwrap();

        f.controller.pause().unwrap();
        f.controller.request_shutdown();
        assert_eq!(f.controller.info().state, "Stopping");
        let refused = VmRequestError::Conflict("the VM is stopping".into());
        assert_eq!(f.controller.pause(), Err(refused.clone()));
        assert_eq!(f.controller.resume(), Err(refused.clone()));
        assert_eq!(f.controller.send_ctrl_alt_del(), Err(refused));
    }

    #[test]
    fn ctrl_alt_del_is_typed_on_the_keyboard_until_its_buffer_is_full() {
        let f = fixture();
        f.controller.send_ctrl_alt_del().unwrap();
        assert_eq!(f.keyboard_irq.signals(), 1);
        let mut first = [0u8];
        lock(&f.keyboard).read(0, &mut first);
        assert_eq!(first, [0x1d], "left Ctrl pressed, in scan code set 1");
        // Nobody reads the keyboard: it fills up, and the API hears why.
        let refusal = loop {
            if let Err(refusal) = f.controller.send_ctrl_alt_del() {
                break refusal;
            }
        };
        let VmRequestError::Conflict(message) = refusal else {
            panic!("{refusal:?}")
        };
        assert!(message.contains("not reading its keyboard"), "{message}");
    }

    #[test]
    fn shows_the_process_and_the_balloon_in_its_metrics() {
        use crate::devices::virtio::balloon::{Balloon, BalloonHandle};

        let balloon = Balloon::new("stats,size=4M".parse().unwrap(), 64 << 20).unwrap();
        let balloon = BalloonHandle::new(Arc::new(Mutex::new(balloon)));
        let f = fixture_with(Some(Arc::new(balloon)));
        let text = f.controller.metrics().render();
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
