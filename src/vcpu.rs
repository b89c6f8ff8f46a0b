//! vCPUs: one thread each, running `KVM_RUN` and dispatching exits to the port-I/O and
//! MMIO buses. The data path of virtio devices never comes here: queue notifications go
//! to ioeventfds and interrupts come from irqfds, so a vCPU exit only runs device code for
//! register accesses.
//!
//! Stopping: the VMM sets the [`Lifecycle`] flag and kicks each vCPU thread with a signal
//! ([`kick_signal`]); `KVM_RUN` returns `EINTR` and the thread sees the flag.
//!
//! Pausing: each vCPU passes a [`PauseGate`] before every `KVM_RUN` and parks there while
//! the VM is paused ([`pause`]).
//!
//! Halt detection: with an in-kernel irqchip, a guest that halts (`halt -f`) leaves its
//! vCPUs blocked inside KVM forever. The VMM periodically asks each vCPU (a kick with
//! [`VcpuShared::request_halt_probe`]) whether it sits in HLT with interrupts disabled;
//! when every started vCPU does, nothing can wake the guest and the VM stops as halted.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use kvm_bindings::{
    CpuId, KVM_MP_STATE_HALTED, KVM_MP_STATE_INIT_RECEIVED, KVM_MP_STATE_UNINITIALIZED,
};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::arch::x86_64::{boot::LoadedKernel, cpuid, regs};
use crate::devices::bus::Bus;
use crate::lifecycle::{Lifecycle, StopReason};
use crate::memory::GuestMemoryMmap;

pub mod pause;

pub use pause::PauseGate;

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("cannot create vCPU {index}: {source}")]
    Create {
        index: u8,
        source: kvm_ioctls::Error,
    },
    #[error("cannot set up vCPU {index}: {what}: {source}")]
    Setup {
        index: u8,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("cannot set up vCPU {index}: {reason}")]
    Config { index: u8, reason: String },
    #[error("cannot start the thread for vCPU {index}: {source}")]
    Spawn { index: u8, source: std::io::Error },
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
}

/// The signal that kicks a vCPU thread out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn ignore_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) handler for [`kick_signal`]; without a handler the signal would
/// kill the process, with one it only interrupts `KVM_RUN`.
pub fn install_kick_handler() -> Result<(), VcpuError> {
    register_signal_handler(kick_signal(), ignore_kick).map_err(VcpuError::Signal)
}

/// What a vCPU last said about itself when probed for a halt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum HaltState {
    /// Not probed yet, or probe pending.
    Unknown = 0,
    /// Running, or halted with interrupts enabled (idle).
    Running = 1,
    /// In HLT with interrupts disabled.
    HaltedForever = 2,
    /// Never started by the guest (waiting for INIT/SIPI).
    NotStarted = 3,
}

/// State a vCPU thread shares with the VMM.
#[derive(Default)]
pub struct VcpuShared {
    halt_probe: AtomicBool,
    halt_state: AtomicU8,
}

impl VcpuShared {
    /// Asks the vCPU to report its halt state the next time a kick interrupts `KVM_RUN`.
    pub fn request_halt_probe(&self) {
        self.halt_state
            .store(HaltState::Unknown as u8, Ordering::SeqCst);
        self.halt_probe.store(true, Ordering::SeqCst);
    }

    pub fn halt_state(&self) -> HaltState {
        match self.halt_state.load(Ordering::SeqCst) {
            1 => HaltState::Running,
            2 => HaltState::HaltedForever,
            3 => HaltState::NotStarted,
            _ => HaltState::Unknown,
        }
    }
}

/// Whether a set of probe answers means the guest can never run again.
pub fn guest_halted(states: &[HaltState]) -> bool {
    states.contains(&HaltState::HaltedForever)
        && states
            .iter()
            .all(|s| matches!(s, HaltState::HaltedForever | HaltState::NotStarted))
}

/// A configured vCPU, ready to run on its own thread.
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
    io_bus: Arc<Bus>,
    mmio_bus: Arc<Bus>,
    lifecycle: Arc<Lifecycle>,
    pause_gate: Arc<PauseGate>,
    shared: Arc<VcpuShared>,
}

/// A running vCPU thread.
pub struct VcpuHandle {
    pub index: u8,
    pub shared: Arc<VcpuShared>,
    thread: JoinHandle<()>,
}

impl VcpuHandle {
    /// Interrupts the vCPU's `KVM_RUN`.
    pub fn kick(&self) {
        use std::os::unix::thread::JoinHandleExt;
        // SAFETY: the pthread_t belongs to a thread we spawned and have not joined, so it
        // is valid; the signal has a handler installed that does nothing.
        unsafe {
            libc::pthread_kill(self.thread.as_pthread_t(), kick_signal());
        }
    }

    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    pub fn join(self) {
        let _ = self.thread.join();
    }
}

/// Everything a vCPU needs to be set up.
pub struct VcpuSetup<'a> {
    pub vm: &'a VmFd,
    pub mem: &'a GuestMemoryMmap,
    pub supported_cpuid: &'a CpuId,
    pub kernel: &'a LoadedKernel,
    pub count: u8,
    pub io_bus: Arc<Bus>,
    pub mmio_bus: Arc<Bus>,
    pub lifecycle: Arc<Lifecycle>,
    pub pause_gate: Arc<PauseGate>,
}

impl Vcpu {
    /// Creates vCPU `index` and sets its CPUID, MSRs, LAPIC; the boot vCPU (0) also gets
    /// the long-mode registers that enter the kernel.
    pub fn new(index: u8, setup: &VcpuSetup<'_>) -> Result<Vcpu, VcpuError> {
        let fd = setup
            .vm
            .create_vcpu(u64::from(index))
            .map_err(|source| VcpuError::Create { index, source })?;
        let fail = |what| {
            move |source| VcpuError::Setup {
                index,
                what,
                source,
            }
        };

        fd.set_cpuid2(&cpuid::vcpu_cpuid(
            setup.supported_cpuid,
            index,
            setup.count,
        ))
        .map_err(fail("CPUID"))?;
        let msrs = regs::boot_msrs().map_err(|e| VcpuError::Config {
            index,
            reason: e.to_string(),
        })?;
        let written = fd.set_msrs(&msrs).map_err(fail("MSRs"))?;
        if written != msrs.as_slice().len() {
            let failed = msrs.as_slice()[written].index;
            return Err(VcpuError::Config {
                index,
                reason: format!("KVM refused MSR {failed:#x}"),
            });
        }
        let mut lapic = fd.get_lapic().map_err(fail("reading the local APIC"))?;
        regs::set_lint_pins(&mut lapic);
        fd.set_lapic(&lapic).map_err(fail("the local APIC"))?;

        if index == 0 {
            let mut sregs = fd.get_sregs().map_err(fail("reading special registers"))?;
            regs::setup_sregs(setup.mem, &mut sregs).map_err(|e| VcpuError::Config {
                index,
                reason: e.to_string(),
            })?;
            fd.set_sregs(&sregs).map_err(fail("special registers"))?;
            fd.set_regs(&regs::boot_regs(setup.kernel.entry))
                .map_err(fail("registers"))?;
            fd.set_fpu(&regs::boot_fpu()).map_err(fail("FPU"))?;
        }

        Ok(Vcpu {
            index,
            fd,
            io_bus: setup.io_bus.clone(),
            mmio_bus: setup.mmio_bus.clone(),
            lifecycle: setup.lifecycle.clone(),
            pause_gate: setup.pause_gate.clone(),
            shared: Arc::new(VcpuShared::default()),
        })
    }

    /// Starts the vCPU on its own thread.
    pub fn start(self) -> Result<VcpuHandle, VcpuError> {
        let index = self.index;
        let shared = self.shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || self.run())
            .map_err(|source| VcpuError::Spawn { index, source })?;
        Ok(VcpuHandle {
            index,
            shared,
            thread,
        })
    }

    fn run(mut self) {
        let _membership = self.pause_gate.join(self.index);
        while !self.lifecycle.is_stopping() {
            if self.pause_gate.is_paused() {
                self.pause_gate.wait_while_paused(|| {
                    // Fails when the guest has not set up kvmclock: nothing to tell then.
                    let _ = self.fd.kvmclock_ctrl();
                });
                continue;
            }
            let outcome = match self.fd.run() {
                Ok(exit) => handle_exit(self.index, exit, &self.io_bus, &self.mmio_bus),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    // Only here is the vCPU's state consistent: after an I/O or MMIO
                    // exit, KVM finishes the instruction on the next KVM_RUN, and
                    // reading registers in between disturbs the instruction emulator
                    // (seen as random guest crashes). A probe request that arrives
                    // during an exit waits for the next kick.
                    if self.shared.halt_probe.swap(false, Ordering::SeqCst) {
                        self.answer_halt_probe();
                    }
                    ExitOutcome::Continue
                }
                Err(e) => ExitOutcome::Stop(StopReason::Error(format!(
                    "KVM_RUN failed on vCPU {}: {e}",
                    self.index
                ))),
            };
            if let ExitOutcome::Stop(reason) = outcome {
                self.lifecycle.request_stop(reason);
            }
        }
    }

    fn answer_halt_probe(&self) {
        let state = match self.fd.get_mp_state() {
            Ok(mp) if mp.mp_state == KVM_MP_STATE_HALTED => {
                let interrupts_on = self.fd.get_regs().map(|r| r.rflags & (1 << 9) != 0);
                match interrupts_on {
                    Ok(false) => HaltState::HaltedForever,
                    _ => HaltState::Running,
                }
            }
            Ok(mp)
                if mp.mp_state == KVM_MP_STATE_UNINITIALIZED
                    || mp.mp_state == KVM_MP_STATE_INIT_RECEIVED =>
            {
                HaltState::NotStarted
            }
            _ => HaltState::Running,
        };
        self.shared.halt_state.store(state as u8, Ordering::SeqCst);
    }
}

enum ExitOutcome {
    Continue,
    Stop(StopReason),
}

/// What a port read with no device behind it returns: an empty ISA bus floats high.
const EMPTY_BUS_BYTE: u8 = 0xff;

fn handle_exit(index: u8, exit: VcpuExit<'_>, io_bus: &Bus, mmio_bus: &Bus) -> ExitOutcome {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !io_bus.read(u64::from(port), data) {
                data.fill(EMPTY_BUS_BYTE);
            }
        }
        VcpuExit::IoOut(port, data) => {
            io_bus.write(u64::from(port), data);
        }
        VcpuExit::MmioRead(addr, data) => {
            if !mmio_bus.read(addr, data) {
                data.fill(EMPTY_BUS_BYTE);
            }
        }
        VcpuExit::MmioWrite(addr, data) => {
            mmio_bus.write(addr, data);
        }
        VcpuExit::Hlt => return ExitOutcome::Stop(StopReason::Halted),
        VcpuExit::Shutdown => {
            return ExitOutcome::Stop(StopReason::GuestFault(format!(
                "the guest triple-faulted on vCPU {index}"
            )))
        }
        VcpuExit::FailEntry(reason, cpu) => {
            return ExitOutcome::Stop(StopReason::GuestFault(format!(
                "KVM could not enter the guest on vCPU {index} (hardware reason {reason:#x}, cpu {cpu})"
            )))
        }
        VcpuExit::InternalError => {
            return ExitOutcome::Stop(StopReason::GuestFault(format!(
                "KVM internal error on vCPU {index}"
            )))
        }
        VcpuExit::SystemEvent(kind, _) => {
            return ExitOutcome::Stop(match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => StopReason::Reset,
                _ => StopReason::PowerOff,
            })
        }
        VcpuExit::Intr | VcpuExit::IrqWindowOpen => {}
        other => {
            return ExitOutcome::Stop(StopReason::Error(format!(
                "unexpected KVM exit on vCPU {index}: {other:?}"
            )))
        }
    }
    ExitOutcome::Continue
}

#[cfg(test)]
mod tests {
    use super::*;
    use HaltState::*;

    #[test]
    fn halted_only_when_no_vcpu_can_run() {
        assert!(guest_halted(&[HaltedForever]));
        assert!(guest_halted(&[HaltedForever, NotStarted]));
        assert!(guest_halted(&[HaltedForever, HaltedForever]));
        assert!(!guest_halted(&[HaltedForever, Running]));
        assert!(!guest_halted(&[HaltedForever, Unknown]));
        assert!(!guest_halted(&[NotStarted, NotStarted]));
        assert!(!guest_halted(&[Running]));
        assert!(!guest_halted(&[]));
    }

    #[test]
    fn ports_without_a_device_read_all_ones() {
        let bus = Bus::new();
        let mut data = [0u8; 2];
        let exit = VcpuExit::IoIn(0x80, &mut data);
        assert!(matches!(
            handle_exit(0, exit, &bus, &bus),
            ExitOutcome::Continue
        ));
        assert_eq!(data, [0xff, 0xff]);
        let exit = VcpuExit::IoOut(0x80, &[1]);
        assert!(matches!(
            handle_exit(0, exit, &bus, &bus),
            ExitOutcome::Continue
        ));
    }

    #[test]
    fn a_triple_fault_is_an_error() {
        let bus = Bus::new();
        match handle_exit(1, VcpuExit::Shutdown, &bus, &bus) {
            ExitOutcome::Stop(StopReason::GuestFault(msg)) => assert!(msg.contains("vCPU 1")),
            _ => panic!("a triple fault must stop the VM with an error"),
        }
    }
}
