//! vCPU exits counted per vCPU and reason, for `vmm_vcpu_exits_total`.
//!
//! Only the exits that reach vmm are seen: KVM handles most of a guest's exits itself
//! (the in-kernel interrupt controllers and timer, the ioeventfds of the virtio queues).
//! Each vCPU thread counts its own exits in counters of its own, one atomic add per
//! exit, so counting adds nothing a vCPU waits for.

use std::sync::Arc;

use kvm_ioctls::VcpuExit;

use crate::metrics::{Counter, Exposition, MetricSource};

/// Why `KVM_RUN` returned to vmm: the `reason` label of `vmm_vcpu_exits_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExitReason {
    IoIn,
    IoOut,
    MmioRead,
    MmioWrite,
    Hlt,
    Shutdown,
    FailEntry,
    InternalError,
    SystemEvent,
    /// A signal interrupted `KVM_RUN`: a kick (stopping, the halt probe).
    Signal,
    IrqWindowOpen,
    /// Any other exit KVM reported.
    Other,
    /// `KVM_RUN` itself failed.
    Error,
}

impl ExitReason {
    const ALL: [ExitReason; 13] = [
        ExitReason::IoIn,
        ExitReason::IoOut,
        ExitReason::MmioRead,
        ExitReason::MmioWrite,
        ExitReason::Hlt,
        ExitReason::Shutdown,
        ExitReason::FailEntry,
        ExitReason::InternalError,
        ExitReason::SystemEvent,
        ExitReason::Signal,
        ExitReason::IrqWindowOpen,
        ExitReason::Other,
        ExitReason::Error,
    ];

    fn of(exit: &Result<VcpuExit<'_>, kvm_ioctls::Error>) -> ExitReason {
        match exit {
            Ok(VcpuExit::IoIn(..)) => ExitReason::IoIn,
            Ok(VcpuExit::IoOut(..)) => ExitReason::IoOut,
            Ok(VcpuExit::MmioRead(..)) => ExitReason::MmioRead,
            Ok(VcpuExit::MmioWrite(..)) => ExitReason::MmioWrite,
            Ok(VcpuExit::Hlt) => ExitReason::Hlt,
            Ok(VcpuExit::Shutdown) => ExitReason::Shutdown,
            Ok(VcpuExit::FailEntry(..)) => ExitReason::FailEntry,
            Ok(VcpuExit::InternalError) => ExitReason::InternalError,
            Ok(VcpuExit::SystemEvent(..)) => ExitReason::SystemEvent,
            Ok(VcpuExit::Intr) => ExitReason::Signal,
            Ok(VcpuExit::IrqWindowOpen) => ExitReason::IrqWindowOpen,
            Ok(_) => ExitReason::Other,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => ExitReason::Signal,
            Err(_) => ExitReason::Error,
        }
    }

    fn label(self) -> &'static str {
        match self {
            ExitReason::IoIn => "io_in",
            ExitReason::IoOut => "io_out",
            ExitReason::MmioRead => "mmio_read",
            ExitReason::MmioWrite => "mmio_write",
            ExitReason::Hlt => "hlt",
            ExitReason::Shutdown => "shutdown",
            ExitReason::FailEntry => "fail_entry",
            ExitReason::InternalError => "internal_error",
            ExitReason::SystemEvent => "system_event",
            ExitReason::Signal => "signal",
            ExitReason::IrqWindowOpen => "irq_window_open",
            ExitReason::Other => "other",
            ExitReason::Error => "error",
        }
    }
}

/// One vCPU's exits by reason. Only its own thread counts, so each add is an uncontended
/// atomic on a cache line of its own (no false sharing with another vCPU's counters).
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct VcpuExitCounters {
    counts: [Counter; ExitReason::ALL.len()],
}

impl VcpuExitCounters {
    /// Counts what `KVM_RUN` returned.
    pub fn record(&self, exit: &Result<VcpuExit<'_>, kvm_ioctls::Error>) {
        self.counts[ExitReason::of(exit) as usize].inc();
    }

    /// `(reason label, exits)` for every reason, zeros included.
    pub fn by_reason(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        ExitReason::ALL
            .iter()
            .map(|&reason| (reason.label(), self.counts[reason as usize].get()))
    }
}

/// The exits of every vCPU of a VM, as one metric family.
pub struct VcpuExitMetrics {
    vcpus: Vec<Arc<VcpuExitCounters>>,
}

impl VcpuExitMetrics {
    /// `vcpus[i]` counts the exits of vCPU i.
    pub fn new(vcpus: Vec<Arc<VcpuExitCounters>>) -> Self {
        VcpuExitMetrics { vcpus }
    }
}

impl MetricSource for VcpuExitMetrics {
    fn write_metrics(&self, out: &mut Exposition) {
        let mut family = out.counter(
            "vmm_vcpu_exits_total",
            "Returns of KVM_RUN to vmm, by vCPU and exit reason (exits KVM handles itself are not seen).",
        );
        for (index, counters) in self.vcpus.iter().enumerate() {
            let vcpu = index.to_string();
            for (reason, exits) in counters.by_reason() {
                family.sample(&[("vcpu", &vcpu), ("reason", reason)], exits);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_counted_by_reason_for_each_vcpu() {
        let first = Arc::new(VcpuExitCounters::default());
        let second = Arc::new(VcpuExitCounters::default());
        first.record(&Ok(VcpuExit::Hlt));
        first.record(&Ok(VcpuExit::IoOut(0x3f8, &[1])));
        first.record(&Ok(VcpuExit::IoOut(0x3f8, &[2])));
        second.record(&Err(kvm_ioctls::Error::new(libc::EINTR)));
        second.record(&Err(kvm_ioctls::Error::new(libc::EFAULT)));
        let mut out = Exposition::new();
        VcpuExitMetrics::new(vec![first, second]).write_metrics(&mut out);
        let text = out.finish();
        for line in [
            "vmm_vcpu_exits_total{vcpu=\"0\",reason=\"io_out\"} 2",
            "vmm_vcpu_exits_total{vcpu=\"0\",reason=\"hlt\"} 1",
            "vmm_vcpu_exits_total{vcpu=\"0\",reason=\"signal\"} 0",
            "vmm_vcpu_exits_total{vcpu=\"1\",reason=\"signal\"} 1",
            "vmm_vcpu_exits_total{vcpu=\"1\",reason=\"error\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert_eq!(text.lines().count(), 2 + 2 * ExitReason::ALL.len());
    }
}
