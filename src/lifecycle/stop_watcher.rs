//! The event loop's side of stopping a VM: it wakes on the stop event of [`Lifecycle`]
//! and on termination signals, and probes for a guest that halted for good. Once the VM
//! stops, the event loop ends and [`VcpuThreads::stop`] kicks every vCPU out of `KVM_RUN`
//! and joins its thread.
//!
//! The halt probe: with an in-kernel LAPIC, a guest that halts (`halt -f`) leaves its
//! vCPUs blocked inside KVM, where `HLT` does not exit. Every [`HALT_PROBE_INTERVAL`] the
//! watcher asks each vCPU, by kicking it, whether it sits in `HLT` with interrupts
//! disabled; when every started vCPU does, nothing can wake the guest and the VM stops as
//! [`StopReason::Halted`].

use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::timerfd::TimerFd;

use super::vcpu_threads::VcpuThreads;
use super::{signals, Lifecycle, SetupError, StopReason};
use crate::vcpu;

/// How often the VMM asks the vCPUs whether the guest halted for good.
pub const HALT_PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// Watches the stop event, termination signals, and probes for a halted guest.
pub struct StopWatcher {
    lifecycle: Arc<Lifecycle>,
    vcpus: Arc<VcpuThreads>,
    signal_event: RawFd,
    halt_timer: TimerFd,
    probe_pending: bool,
}

impl StopWatcher {
    /// A watcher for the VM that `lifecycle` stops and whose running vCPUs are `vcpus`.
    pub fn new(lifecycle: Arc<Lifecycle>, vcpus: Arc<VcpuThreads>) -> Result<Self, SetupError> {
        let signal_fd = signals::install_termination_signals()?;
        let mut halt_timer = TimerFd::new().map_err(SetupError::errno("the halt probe timer"))?;
        halt_timer
            .reset(HALT_PROBE_INTERVAL, Some(HALT_PROBE_INTERVAL))
            .map_err(SetupError::errno("the halt probe timer"))?;
        Ok(StopWatcher {
            lifecycle,
            vcpus,
            signal_event: signal_fd,
            halt_timer,
            probe_pending: false,
        })
    }

    fn on_halt_timer(&mut self) {
        let _ = self.halt_timer.wait();
        if self.probe_pending {
            let mut states = Vec::new();
            self.vcpus.for_each(|v| states.push(v.shared.halt_state()));
            if vcpu::guest_halted(&states) {
                self.lifecycle.request_stop(StopReason::Halted);
                return;
            }
        }
        self.vcpus.for_each(|vcpu| {
            vcpu.shared.request_halt_probe();
            vcpu.kick();
        });
        self.probe_pending = true;
    }
}

impl MutEventSubscriber for StopWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        let events = [
            Events::with_data_raw(self.lifecycle.stop_event(), 0, EventSet::IN),
            Events::with_data_raw(self.signal_event, 0, EventSet::IN),
            Events::new(&self.halt_timer, EventSet::IN),
        ];
        for event in events {
            if let Err(e) = ops.add(event) {
                self.lifecycle.request_stop(StopReason::Error(format!(
                    "cannot watch for stop events: {e}"
                )));
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.lifecycle.stop_event() {
            self.lifecycle.ack_stop_event();
        } else if fd == self.signal_event {
            let signum = signals::take_signal(fd);
            self.lifecycle.request_stop(StopReason::Signal(signum));
        } else if fd == self.halt_timer.as_raw_fd() {
            self.on_halt_timer();
        }
    }
}
