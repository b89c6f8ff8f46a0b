//! Wiring: builds a VM from a [`VmConfig`], runs it until it stops, and says why.
//!
//! Threads: one per vCPU ([`crate::vcpu`]), the API server's (if `--api-sock`), the
//! console writer `vmm-console` ([`crate::console::output`], unless `--serial off`), and
//! the main thread, which runs the event loop: stdin → serial, virtio queue notifications
//! (ioeventfds) and device timers, termination signals, `SIGCONT` (`fg`), the halt probe,
//! and the stop event. How each part is built is in [`crate::builder`]; how the VM stops, in
//! [`crate::lifecycle`]; what the API may do to it, in [`crate::controller`]; which system
//! calls each thread may make, in [`crate::seccomp`]. See docs/architecture.md.

use std::sync::{Arc, Mutex};

use event_manager::SubscriberOps;
use kvm_ioctls::{Kvm, VmFd};

use crate::api::{ApiError, ApiServer, ServerLimits, VmControl};
use crate::builder::{self, BuildError, EventLoop, LegacyDevices};
use crate::config::{self, ConfigError, VmConfig};
use crate::console::ConsoleCounters;
use crate::controller::VmController;
use crate::devices::bus::Bus;
use crate::devices::virtio::balloon::{BalloonControl, BalloonHandle};
use crate::lifecycle::stop_watcher::StopWatcher;
use crate::lifecycle::vcpu_threads::VcpuThreads;
use crate::lifecycle::{fail_stop, signals, Lifecycle, SetupError, StopReason};
use crate::memory::GuestMemoryMmap;
use crate::seccomp::{Confinement, SeccompError, ThreadKind};
use crate::vcpu::{PauseGate, Vcpu, VcpuError, VcpuExitMetrics, VcpuSetup};

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Lifecycle(#[from] SetupError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("event loop failed: {0}")]
    EventLoop(String),
    #[error("--api-sock: {0}")]
    Api(#[from] ApiError),
    #[error("--seccomp: {0}")]
    Seccomp(#[from] SeccompError),
}

/// A built VM, ready to run.
pub struct Vm {
    config: VmConfig,
    _kvm: Kvm,
    /// Not used once the VM is built, but kept open as long as the VM runs: it is the VM
    /// in KVM that the memory slots, irqfds and ioeventfds were registered with.
    _vm_fd: VmFd,
    mem: GuestMemoryMmap,
    lifecycle: Arc<Lifecycle>,
    pause_gate: Arc<PauseGate>,
    vcpus: Vec<Vcpu>,
    event_loop: EventLoop,
    legacy: LegacyDevices,
    balloon: Option<BalloonHandle>,
}

impl Vm {
    /// Builds the VM: KVM, memory, devices, kernel and firmware tables, vCPUs.
    pub fn build(config: VmConfig, confinement: &Confinement) -> Result<Vm, VmmError> {
        config::validate(&config)?;
        let (kvm, vm_fd) = builder::create_vm(config.vcpus)?;
        let mem = builder::create_guest_memory(config.mem_size, config.mem_backing)?;
        builder::register_memory(&vm_fd, &mem)?;
        let lifecycle = Arc::new(Lifecycle::new().map_err(SetupError::io("the stop event"))?);
        // From here on, a panic on any thread (the console writer, the API server, a vCPU)
        // stops this VM.
        fail_stop::stop_on_panic(&lifecycle);

        let mut io_bus = Bus::new();
        let mut mmio_bus = Bus::new();
        let mut event_loop = builder::create_event_loop()?;
        let legacy = builder::attach_legacy_devices(
            &vm_fd,
            &mut io_bus,
            &mut event_loop,
            &lifecycle,
            &config.serial,
            confinement.filter(ThreadKind::Output),
        )?;
        // Virtio devices, one virtio-mmio slot each.
        let mut mmio_devices = Vec::new();
        let balloon = match config.balloon {
            Some(balloon) => Some(builder::attach_balloon(
                &vm_fd,
                &mem,
                config.mem_backing,
                &mut mmio_bus,
                &mut event_loop,
                &mut mmio_devices,
                balloon,
            )?),
            None => None,
        };

        let kernel = builder::configure_boot(&mem, &config, &mmio_devices)?;
        let supported_cpuid = builder::supported_cpuid(&kvm)?;
        let pause_gate = Arc::new(PauseGate::new());
        let vcpus = builder::create_vcpus(&VcpuSetup {
            vm: &vm_fd,
            mem: &mem,
            supported_cpuid: &supported_cpuid,
            kernel: &kernel,
            count: config.vcpus,
            io_bus: Arc::new(io_bus),
            mmio_bus: Arc::new(mmio_bus),
            lifecycle: lifecycle.clone(),
            pause_gate: pause_gate.clone(),
        })?;

        Ok(Vm {
            config,
            _kvm: kvm,
            _vm_fd: vm_fd,
            mem,
            lifecycle,
            pause_gate,
            vcpus,
            event_loop,
            legacy,
            balloon,
        })
    }

    /// The VM's stop control, for the API and signal handling.
    pub fn lifecycle(&self) -> Arc<Lifecycle> {
        self.lifecycle.clone()
    }

    /// Guest RAM.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The balloon, if one is attached.
    pub fn balloon(&self) -> Option<&BalloonHandle> {
        self.balloon.as_ref()
    }

    /// How much guest console output was written and dropped; `None` with `--serial off`.
    pub fn console_counters(&self) -> Option<Arc<ConsoleCounters>> {
        self.legacy.console.counters()
    }

    /// What the API may see of and do to this VM, with every metric source of the VM
    /// registered. Called before [`Vm::run`], which takes the vCPUs.
    pub fn controller(&self) -> VmController {
        let controller = VmController::new(
            self.config.id.clone(),
            self.config.vcpus,
            self.config.mem_size,
            self.lifecycle(),
            self.pause_gate.clone(),
            self.legacy.i8042.clone(),
            self.balloon()
                .map(|b| Arc::new(b.clone()) as Arc<dyn BalloonControl>),
        );
        let metrics = controller.metrics();
        let exits = self.vcpus.iter().map(Vcpu::exit_counters).collect();
        metrics.register("vcpus", Arc::new(VcpuExitMetrics::new(exits)));
        if let Some(console) = self.console_counters() {
            metrics.register("console", console);
        }
        controller
    }

    /// Runs the guest until it stops; returns why. Each vCPU thread confines itself with
    /// its filter from `confinement` before the guest runs, and the main thread does the
    /// same before its event loop handles any event. Every vCPU thread has been joined (or,
    /// stuck beyond [`JOIN_TIMEOUT`](crate::lifecycle::vcpu_threads::JOIN_TIMEOUT),
    /// reported) when this returns or unwinds.
    pub fn run(mut self, confinement: &Confinement) -> Result<StopReason, VmmError> {
        let vcpus = Arc::new(VcpuThreads::start(
            std::mem::take(&mut self.vcpus),
            self.lifecycle.clone(),
            confinement.filter(ThreadKind::Vcpu),
            self.pause_gate.clone(),
        )?);
        let watcher = StopWatcher::new(self.lifecycle.clone(), vcpus.clone())?;
        self.event_loop
            .add_subscriber(Arc::new(Mutex::new(watcher)));
        // Last of all, once every other thread was started (so none inherits this filter).
        if let Err(e) = confinement.filter(ThreadKind::Main).apply() {
            self.lifecycle
                .request_stop(StopReason::Error(e.to_string()));
            vcpus.stop();
            return Err(e.into());
        }

        let mut loop_error = None;
        while !self.lifecycle.is_stopping() {
            if let Err(e) = self.event_loop.run() {
                if !matches!(&e, event_manager::Error::Epoll(errno) if errno.errno() == libc::EINTR)
                {
                    loop_error = Some(VmmError::EventLoop(e.to_string()));
                    self.lifecycle
                        .request_stop(StopReason::Error(format!("event loop failed: {e}")));
                }
            }
        }
        // vCPUs parked by a pause leave the gate, then their loop.
        vcpus.stop();
        self.legacy.console.finish();
        match loop_error {
            Some(e) => Err(e),
            None => Ok(self
                .lifecycle
                .reason()
                .unwrap_or(StopReason::ShutdownRequested)),
        }
    }
}

/// Builds and runs a VM: the whole life of `vmm --kernel …`. The API socket (if any) is
/// served from before the first vCPU runs until after the last one stopped, and removed
/// on the way out. Every thread runs under its seccomp filter (`config.seccomp`) from
/// before it handles any input.
pub fn run(config: VmConfig, confinement: &Confinement) -> Result<StopReason, VmmError> {
    signals::install_termination_signals()?;
    let api_socket = config.api_socket.clone();
    // Raw mode, if the console input takes the terminal, is undone when this is dropped,
    // on every way out of here.
    let _terminal = crate::terminal::TerminalGuard::new();
    let vm = Vm::build(config, confinement)?;
    let api = match api_socket {
        Some(path) => Some(ApiServer::start_confined(
            &path,
            Arc::new(vm.controller()),
            ServerLimits::default(),
            confinement.filter(ThreadKind::Api),
        )?),
        None => None,
    };
    let outcome = vm.run(confinement);
    drop(api);
    outcome
}
