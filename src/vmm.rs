//! Wiring: builds a VM from a [`VmConfig`], runs it until it stops, and says why.
//!
//! Threads: one per vCPU ([`crate::vcpu`]), the API server's (if `--api-sock`), and the
//! main thread, which runs the event loop: stdin → serial, virtio queue notifications
//! (ioeventfds) and device timers, termination signals, the halt probe, and the stop
//! event. How each part is built is in [`crate::builder`]; how the VM stops, in
//! [`crate::lifecycle`]; what the API may do to it, in [`crate::controller`]. See
//! docs/architecture.md.

use std::sync::{Arc, Mutex};

use event_manager::SubscriberOps;
use kvm_ioctls::{Kvm, VmFd};

use crate::api::{ApiError, ApiServer};
use crate::builder::{self, BuildError, EventLoop};
use crate::config::{self, ConfigError, VmConfig};
use crate::controller::VmController;
use crate::devices::bus::Bus;
use crate::devices::virtio::balloon::{BalloonControl, BalloonHandle};
use crate::lifecycle::stop_watcher::{stop_vcpus, StopWatcher};
use crate::lifecycle::{signals, Lifecycle, SetupError, StopReason};
use crate::memory::GuestMemoryMmap;
use crate::vcpu::{Vcpu, VcpuError, VcpuSetup};

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
    vcpus: Vec<Vcpu>,
    event_loop: EventLoop,
    balloon: Option<BalloonHandle>,
}

impl Vm {
    /// Builds the VM: KVM, memory, devices, kernel and firmware tables, vCPUs.
    pub fn build(config: VmConfig) -> Result<Vm, VmmError> {
        config::validate(&config)?;
        let (kvm, vm_fd) = builder::create_vm(config.vcpus)?;
        let mem = builder::create_guest_memory(config.mem_size, config.mem_backing)?;
        builder::register_memory(&vm_fd, &mem)?;
        let lifecycle = Arc::new(Lifecycle::new().map_err(SetupError::io("the stop event"))?);

        let mut io_bus = Bus::new();
        let mut mmio_bus = Bus::new();
        let mut event_loop = builder::create_event_loop()?;
        builder::attach_legacy_devices(&vm_fd, &mut io_bus, &mut event_loop, &lifecycle)?;
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
        let vcpus = builder::create_vcpus(&VcpuSetup {
            vm: &vm_fd,
            mem: &mem,
            supported_cpuid: &supported_cpuid,
            kernel: &kernel,
            count: config.vcpus,
            io_bus: Arc::new(io_bus),
            mmio_bus: Arc::new(mmio_bus),
            lifecycle: lifecycle.clone(),
        })?;

        Ok(Vm {
            config,
            _kvm: kvm,
            _vm_fd: vm_fd,
            mem,
            lifecycle,
            vcpus,
            event_loop,
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

    /// What the API may see of and do to this VM.
    pub fn controller(&self) -> VmController {
        VmController::new(
            self.config.vcpus,
            self.config.mem_size,
            self.lifecycle(),
            self.balloon()
                .map(|b| Arc::new(b.clone()) as Arc<dyn BalloonControl>),
        )
    }

    /// Runs the guest until it stops; returns why.
    pub fn run(mut self) -> Result<StopReason, VmmError> {
        let handles = std::mem::take(&mut self.vcpus)
            .into_iter()
            .map(Vcpu::start)
            .collect::<Result<Vec<_>, _>>();
        let handles = match handles {
            Ok(handles) => Arc::new(handles),
            Err(e) => {
                self.lifecycle
                    .request_stop(StopReason::Error(e.to_string()));
                return Err(e.into());
            }
        };
        let watcher = StopWatcher::new(self.lifecycle.clone(), handles.clone())?;
        self.event_loop
            .add_subscriber(Arc::new(Mutex::new(watcher)));

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
        stop_vcpus(handles);
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
/// on the way out.
pub fn run(config: VmConfig) -> Result<StopReason, VmmError> {
    signals::install_termination_signals()?;
    let api_socket = config.api_socket.clone();
    let vm = Vm::build(config)?;
    let api = match api_socket {
        Some(path) => Some(ApiServer::start(&path, Arc::new(vm.controller()))?),
        None => None,
    };
    let _raw = crate::terminal::RawTerminal::enable();
    let outcome = vm.run();
    drop(api);
    outcome
}
