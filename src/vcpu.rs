//! vCPUs: one thread each, running `KVM_RUN` and dispatching exits to the port-I/O and
//! MMIO buses. The data path of virtio devices never comes here: queue notifications go
//! to ioeventfds and interrupts come from irqfds, so a vCPU exit only runs device code for
//! register accesses.
//!
//! Stopping: the VMM sets the [`Lifecycle`] flag and kicks each vCPU thread with a signal
//! ([`kick_signal`]); `KVM_RUN` returns `EINTR` and the thread sees the flag. Each vCPU
//! holds a reference to guest memory, so the mapping lives as long as any vCPU thread
//! that could still touch it. A panic on a vCPU thread ends that thread and stops the VM
//! ([`crate::lifecycle::fail_stop`]).
//!
//! Exits: port I/O goes to the port bus one access at a time, string instructions
//! (`rep outsb`) included (`PortIo`); MMIO to the MMIO bus; KVM's system events become
//! the [`StopReason`] they mean (a crash is a guest panic, not a power-off).
//!
//! Pausing: each vCPU passes a [`PauseGate`] before every `KVM_RUN` and parks there while
//! the VM is paused ([`pause`]).
//!
//! Exits are counted per vCPU and reason ([`exits`]).
//!
//! Halt detection: with an in-kernel irqchip, a guest that halts (`halt -f`) leaves its
//! vCPUs blocked inside KVM forever. The VMM periodically asks each vCPU (a kick with
//! [`VcpuShared::request_halt_probe`]) whether it sits in HLT with interrupts disabled;
//! when every started vCPU does, nothing can wake the guest and the VM stops as halted.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use kvm_bindings::{
    kvm_run, CpuId, KVM_EXIT_IO, KVM_EXIT_IO_OUT, KVM_MP_STATE_HALTED, KVM_MP_STATE_INIT_RECEIVED,
    KVM_MP_STATE_UNINITIALIZED, KVM_PIO_PAGE_OFFSET,
};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::arch::x86_64::{boot::LoadedKernel, cpuid, regs};
use crate::devices::bus::Bus;
use crate::lifecycle::{Lifecycle, StopReason};
use crate::memory::GuestMemoryMmap;
use crate::seccomp::{self, SpawnError, ThreadFilter};
use crate::test_hooks;

pub mod exits;
pub mod pause;

pub use exits::{VcpuExitCounters, VcpuExitMetrics};
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
    Spawn { index: u8, source: SpawnError },
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
    /// Keeps guest RAM mapped for as long as this vCPU can run, even if vmm exits without
    /// being able to join its thread.
    _mem: GuestMemoryMmap,
    io_bus: Arc<Bus>,
    mmio_bus: Arc<Bus>,
    lifecycle: Arc<Lifecycle>,
    pause_gate: Arc<PauseGate>,
    shared: Arc<VcpuShared>,
    exits: Arc<VcpuExitCounters>,
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
            _mem: setup.mem.clone(),
            io_bus: setup.io_bus.clone(),
            mmio_bus: setup.mmio_bus.clone(),
            lifecycle: setup.lifecycle.clone(),
            pause_gate: setup.pause_gate.clone(),
            shared: Arc::new(VcpuShared::default()),
            exits: Arc::new(VcpuExitCounters::default()),
        })
    }

    /// The counts of this vCPU's exits, for `/metrics`.
    pub fn exit_counters(&self) -> Arc<VcpuExitCounters> {
        self.exits.clone()
    }

    /// Starts the vCPU on its own thread, which confines itself with `filter` before the
    /// guest runs.
    pub fn start(self, filter: ThreadFilter) -> Result<VcpuHandle, VcpuError> {
        let index = self.index;
        let shared = self.shared.clone();
        let builder = std::thread::Builder::new().name(format!("vcpu{index}"));
        let thread = seccomp::spawn_confined(builder, filter, move || self.run())
            .map_err(|source| VcpuError::Spawn { index, source })?;
        Ok(VcpuHandle {
            index,
            shared,
            thread,
        })
    }

    fn run(mut self) {
        let _membership = self.pause_gate.join(self.index);
        // The test hook that makes this vCPU panic (src/test_hooks.rs).
        let panic_point = format!("panic:vcpu{}", self.index);
        while !self.lifecycle.is_stopping() {
            if self.pause_gate.is_paused() {
                self.pause_gate.wait_while_paused(|| {
                    // Fails when the guest has not set up kvmclock: nothing to tell then.
                    let _ = self.fd.kvmclock_ctrl();
                });
                continue;
            }
            let exit = self.fd.run();
            self.exits.record(&exit);
            let outcome = match exit {
                // The data of a port-I/O exit is read below from kvm_run, where KVM also
                // says how many accesses of what size it holds.
                Ok(VcpuExit::IoIn(..) | VcpuExit::IoOut(..)) => None,
                Ok(exit) => Some(handle_exit(self.index, exit, &self.mmio_bus)),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    // Only here is the vCPU's state consistent: after an I/O or MMIO
                    // exit, KVM finishes the instruction on the next KVM_RUN, and
                    // reading registers in between disturbs the instruction emulator
                    // (seen as random guest crashes). A probe request that arrives
                    // during an exit waits for the next kick.
                    if self.shared.halt_probe.swap(false, Ordering::SeqCst) {
                        self.answer_halt_probe();
                    }
                    Some(ExitOutcome::Continue)
                }
                Err(e) => Some(ExitOutcome::Stop(StopReason::Error(format!(
                    "KVM_RUN failed on vCPU {}: {e}",
                    self.index
                )))),
            };
            let outcome = outcome.unwrap_or_else(|| {
                let run: *mut kvm_run = self.fd.get_kvm_run();
                // SAFETY: `run` is this vCPU's kvm_run mapping, and KVM_RUN just returned
                // a port-I/O exit; no other reference to the mapping is alive.
                match unsafe { PortIo::from_kvm_run(run) } {
                    Some(io) => {
                        if io.port == PANIC_HOOK_PORT
                            && io.is_write
                            && test_hooks::injected(&panic_point)
                        {
                            panic!("injected panic (VMM_TEST_INJECT={panic_point})");
                        }
                        io.dispatch(&self.io_bus);
                        ExitOutcome::Continue
                    }
                    None => ExitOutcome::Stop(StopReason::Error(format!(
                        "KVM described a port-I/O exit on vCPU {} that vmm cannot read",
                        self.index
                    ))),
                }
            });
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

/// A guest write to this port makes a vCPU panic when a boot test asks for it
/// (`VMM_TEST_INJECT=panic:vcpuN`, only in builds with the `test-hooks` feature). It is
/// the POST code port, which has no device here and which Linux on KVM does not write.
const PANIC_HOOK_PORT: u16 = 0x80;

/// The most data one port-I/O exit carries: KVM puts it in one page of the kvm_run
/// mapping.
const PIO_DATA_MAX: usize = 4096;

/// One port-I/O exit as KVM describes it in `kvm_run.io`: `count` accesses of `size`
/// bytes each to one port (more than one for a string instruction such as `rep outsb`),
/// their data one after the other in the kvm_run mapping.
struct PortIo<'a> {
    port: u16,
    is_write: bool,
    size: usize,
    data: &'a mut [u8],
}

impl<'a> PortIo<'a> {
    /// Reads the exit from kvm_run; `None` if it is not a port-I/O exit or holds what KVM
    /// never gives (a size other than 1, 2 or 4 bytes, no access, more than a page).
    ///
    /// # Safety
    ///
    /// `run` points to a vCPU's kvm_run mapping (the `kvm_run` structure followed by the
    /// page KVM keeps port-I/O data in), valid and otherwise unused for `'a`.
    unsafe fn from_kvm_run(run: *mut kvm_run) -> Option<PortIo<'a>> {
        // SAFETY: the caller guarantees `run` is valid for reads.
        if unsafe { (*run).exit_reason } != KVM_EXIT_IO {
            return None;
        }
        // SAFETY: the exit reason says `io` is the union's live member.
        let io = unsafe { (*run).__bindgen_anon_1.io };
        let size = usize::from(io.size);
        let len = size.checked_mul(usize::try_from(io.count).ok()?)?;
        let data_offset = usize::try_from(KVM_PIO_PAGE_OFFSET).ok()? * PIO_DATA_MAX;
        if !matches!(size, 1 | 2 | 4)
            || len == 0
            || len > PIO_DATA_MAX
            || usize::try_from(io.data_offset).ok()? != data_offset
        {
            return None;
        }
        // SAFETY: KVM's ABI puts the data in the page at KVM_PIO_PAGE_OFFSET of the
        // mapping, which the caller guarantees is there; `len` fits in that page.
        let data =
            unsafe { std::slice::from_raw_parts_mut(run.cast::<u8>().add(data_offset), len) };
        Some(PortIo {
            port: io.port,
            is_write: u32::from(io.direction) == KVM_EXIT_IO_OUT,
            size,
            data,
        })
    }

    /// Performs each access on `bus` in order. A read with no device behind the port
    /// gives all ones.
    fn dispatch(self, bus: &Bus) {
        let port = u64::from(self.port);
        for unit in self.data.chunks_mut(self.size) {
            if self.is_write {
                bus.write(port, unit);
            } else if !bus.read(port, unit) {
                unit.fill(EMPTY_BUS_BYTE);
            }
        }
    }
}

/// What a KVM system event means for the VM.
fn system_event(index: u8, kind: u32, data: &[u64]) -> StopReason {
    use kvm_bindings::{
        KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SEV_TERM,
        KVM_SYSTEM_EVENT_SHUTDOWN, KVM_SYSTEM_EVENT_SUSPEND, KVM_SYSTEM_EVENT_WAKEUP,
    };
    match kind {
        KVM_SYSTEM_EVENT_SHUTDOWN => StopReason::PowerOff,
        KVM_SYSTEM_EVENT_RESET => StopReason::Reset,
        KVM_SYSTEM_EVENT_CRASH => StopReason::GuestPanic(format!(
            "KVM reported a guest crash on vCPU {index} (KVM_SYSTEM_EVENT_CRASH, data {data:#x?})"
        )),
        KVM_SYSTEM_EVENT_SEV_TERM => StopReason::GuestFault(format!(
            "the encrypted (SEV) guest asked KVM to terminate it on vCPU {index} \
             (KVM_SYSTEM_EVENT_SEV_TERM, data {data:#x?})"
        )),
        KVM_SYSTEM_EVENT_SUSPEND | KVM_SYSTEM_EVENT_WAKEUP => StopReason::Error(format!(
            "the guest asked to suspend or wait for a wake-up on vCPU {index} (KVM system \
             event {kind}), which vmm does not support"
        )),
        _ => StopReason::Error(format!(
            "KVM reported an unknown system event {kind} on vCPU {index} (data {data:#x?})"
        )),
    }
}

/// Handles every exit but port I/O (see [`PortIo`]).
fn handle_exit(index: u8, exit: VcpuExit<'_>, mmio_bus: &Bus) -> ExitOutcome {
    match exit {
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
        VcpuExit::SystemEvent(kind, data) => {
            return ExitOutcome::Stop(system_event(index, kind, data))
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

    use crate::devices::bus::BusDevice;
    use kvm_bindings::{kvm_run__bindgen_ty_1__bindgen_ty_4 as KvmIo, KVM_EXIT_IO_IN};
    use std::sync::{Arc, Mutex};

    /// A kvm_run mapping as KVM lays it out: the structure, then the port-I/O data page.
    #[repr(C, align(4096))]
    struct FakeKvmRun([u8; 2 * PIO_DATA_MAX]);

    impl FakeKvmRun {
        fn new(exit_reason: u32, io: KvmIo, data: &[u8]) -> Box<FakeKvmRun> {
            let mut mapping = Box::new(FakeKvmRun([0; 2 * PIO_DATA_MAX]));
            let run = mapping.0.as_mut_ptr().cast::<kvm_run>();
            // SAFETY: the buffer is larger than kvm_run and aligned for it; kvm_run is
            // plain data, valid when zeroed.
            unsafe {
                (*run).exit_reason = exit_reason;
                (*run).__bindgen_anon_1.io = io;
            }
            mapping.0[PIO_DATA_MAX..PIO_DATA_MAX + data.len()].copy_from_slice(data);
            mapping
        }

        fn io(&mut self) -> Option<PortIo<'_>> {
            // SAFETY: the mapping has the layout from_kvm_run expects and lives (and is
            // borrowed) for as long as the result.
            unsafe { PortIo::from_kvm_run(self.0.as_mut_ptr().cast()) }
        }

        fn data(&self, len: usize) -> &[u8] {
            &self.0[PIO_DATA_MAX..PIO_DATA_MAX + len]
        }
    }

    fn io_exit(direction: u32, size: u8, port: u16, count: u32) -> KvmIo {
        KvmIo {
            direction: direction as u8,
            size,
            port,
            count,
            data_offset: u64::from(KVM_PIO_PAGE_OFFSET) * PIO_DATA_MAX as u64,
        }
    }

    /// Records every access: (write?, offset, bytes); reads return 0x10, 0x11, ...
    #[derive(Default)]
    struct Recorder {
        accesses: Vec<(bool, u64, Vec<u8>)>,
        next_read: u8,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            for byte in data.iter_mut() {
                *byte = 0x10 + self.next_read;
                self.next_read += 1;
            }
            self.accesses.push((false, offset, data.to_vec()));
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.accesses.push((true, offset, data.to_vec()));
        }
    }

    fn recording_bus(port: u64) -> (Bus, Arc<Mutex<Recorder>>) {
        let recorder = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(recorder.clone(), port, 8).unwrap();
        (bus, recorder)
    }

    #[test]
    fn a_string_write_reaches_the_port_one_access_at_a_time() {
        let (bus, recorder) = recording_bus(0x3f8);
        // rep outsb of "hi!\n" to COM1's transmit register.
        let mut run = FakeKvmRun::new(KVM_EXIT_IO, io_exit(KVM_EXIT_IO_OUT, 1, 0x3f8, 4), b"hi!\n");
        run.io().unwrap().dispatch(&bus);
        let accesses = &recorder.lock().unwrap().accesses;
        let written: Vec<(bool, u64, Vec<u8>)> =
            b"hi!\n".iter().map(|&b| (true, 0, vec![b])).collect();
        assert_eq!(*accesses, written);

        // rep outsw: two 2-byte accesses, not one of four.
        let (bus, recorder) = recording_bus(0x3f8);
        let mut run = FakeKvmRun::new(
            KVM_EXIT_IO,
            io_exit(KVM_EXIT_IO_OUT, 2, 0x3f9, 2),
            &[1, 2, 3, 4],
        );
        run.io().unwrap().dispatch(&bus);
        assert_eq!(
            recorder.lock().unwrap().accesses,
            [(true, 1, vec![1, 2]), (true, 1, vec![3, 4])]
        );
    }

    #[test]
    fn a_string_read_fills_each_access_in_order() {
        let (bus, recorder) = recording_bus(0x3f8);
        let mut run = FakeKvmRun::new(KVM_EXIT_IO, io_exit(KVM_EXIT_IO_IN, 1, 0x3f8, 3), &[]);
        run.io().unwrap().dispatch(&bus);
        assert_eq!(run.data(3), [0x10, 0x11, 0x12]);
        assert_eq!(recorder.lock().unwrap().accesses.len(), 3);
    }

    #[test]
    fn ports_without_a_device_read_all_ones() {
        let bus = Bus::new();
        let mut run = FakeKvmRun::new(KVM_EXIT_IO, io_exit(KVM_EXIT_IO_IN, 2, 0x80, 2), &[]);
        run.io().unwrap().dispatch(&bus);
        assert_eq!(run.data(4), [0xff; 4]);
        let mut run = FakeKvmRun::new(KVM_EXIT_IO, io_exit(KVM_EXIT_IO_OUT, 1, 0x80, 1), &[1]);
        run.io().unwrap().dispatch(&bus);
    }

    #[test]
    fn port_io_exits_kvm_never_gives_are_refused() {
        let full_page = PIO_DATA_MAX as u32;
        for (size, count) in [
            (0, 1),
            (3, 1),
            (8, 1),
            (1, 0),
            (1, full_page + 1),
            (4, full_page),
        ] {
            let mut run = FakeKvmRun::new(
                KVM_EXIT_IO,
                io_exit(KVM_EXIT_IO_OUT, size, 0x3f8, count),
                &[],
            );
            assert!(run.io().is_none(), "size {size} count {count}");
        }
        let mut elsewhere = io_exit(KVM_EXIT_IO_OUT, 1, 0x3f8, 1);
        elsewhere.data_offset = 64;
        assert!(FakeKvmRun::new(KVM_EXIT_IO, elsewhere, &[]).io().is_none());
        let not_io = FakeKvmRun::new(
            kvm_bindings::KVM_EXIT_MMIO,
            io_exit(KVM_EXIT_IO_OUT, 1, 0x3f8, 1),
            &[],
        );
        assert!({ not_io }.io().is_none());
        // The largest exit KVM can give is fine.
        let mut run = FakeKvmRun::new(
            KVM_EXIT_IO,
            io_exit(KVM_EXIT_IO_OUT, 1, 0x3f8, full_page),
            &[],
        );
        assert_eq!(run.io().unwrap().data.len(), PIO_DATA_MAX);
    }

    #[test]
    fn system_events_stop_the_vm_as_what_they_are() {
        use kvm_bindings::*;
        assert_eq!(
            system_event(0, KVM_SYSTEM_EVENT_SHUTDOWN, &[]),
            StopReason::PowerOff
        );
        assert_eq!(
            system_event(0, KVM_SYSTEM_EVENT_RESET, &[]),
            StopReason::Reset
        );
        let crash = system_event(1, KVM_SYSTEM_EVENT_CRASH, &[0x1]);
        assert!(
            matches!(&crash, StopReason::GuestPanic(m) if m.contains("vCPU 1")),
            "{crash:?}"
        );
        assert_eq!(crash.exit_code(), 3);
        let sev = system_event(0, KVM_SYSTEM_EVENT_SEV_TERM, &[]);
        assert_eq!(sev.exit_code(), 4, "{sev:?}");
        for kind in [KVM_SYSTEM_EVENT_SUSPEND, KVM_SYSTEM_EVENT_WAKEUP, 99] {
            let reason = system_event(2, kind, &[]);
            assert_eq!(reason.exit_code(), 1, "{reason:?}");
            assert!(reason.report().unwrap().contains("vCPU 2"), "{reason:?}");
        }
    }

    #[test]
    fn a_triple_fault_is_an_error() {
        let bus = Bus::new();
        match handle_exit(1, VcpuExit::Shutdown, &bus) {
            ExitOutcome::Stop(StopReason::GuestFault(msg)) => assert!(msg.contains("vCPU 1")),
            _ => panic!("a triple fault must stop the VM with an error"),
        }
    }
}
