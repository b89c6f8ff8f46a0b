//! Wiring: builds a VM from a [`VmConfig`], runs it until it stops, and says why.
//!
//! Threads: one per vCPU ([`crate::vcpu`]), the API server's (if `--api-sock`), and the
//! main thread, which runs the event loop: stdin → serial, virtio queue notifications
//! (ioeventfds) and device timers, termination signals, the halt probe, and the stop
//! event. See docs/architecture.md.

use std::os::unix::io::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::api::{ApiError, ApiServer, VmControl, VmInfo};
use crate::arch::x86_64::{acpi, boot, layout, mptable};
use crate::console::ConsoleInput;
use crate::devices::bus::{Bus, BusError};
use crate::devices::legacy::acpi_power::AcpiPowerDevice;
use crate::devices::legacy::i8042::I8042;
use crate::devices::legacy::serial::{SerialConsole, UnbufferedFd};
use crate::devices::virtio::balloon::{
    Balloon, BalloonConfig, BalloonControl, BalloonHandle, BalloonSetupError,
};
use crate::devices::virtio::event_handler::VirtioMmioEventHandler;
use crate::devices::virtio::mmio::{MmioError, MmioTransport, MMIO_QUEUE_NOTIFY_OFFSET};
use crate::devices::virtio::VirtioDevice;
use crate::lifecycle::{Lifecycle, StopReason};
use crate::memory::{self, GuestMemoryMmap, MemoryBacking};
use crate::size::{HumanSize, MIB, PAGE_SIZE};
use crate::vcpu::{self, Vcpu, VcpuHandle, VcpuSetup};

/// Smallest guest a stock kernel boots in.
pub const MIN_MEMORY: u64 = 64 * MIB;
/// Default guest memory.
pub const DEFAULT_MEMORY: u64 = 512 * MIB;
/// The command line every guest gets, before what the user adds: the console on COM1,
/// reboot through the i8042 (which ends vmm), a panic reboots after 1 s, no PCI bus to
/// probe.
pub const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off";
/// Where KVM keeps the TSS for real-mode emulation: three pages just below the BIOS
/// area, out of the way of RAM (which ends at 3 GiB) and of the MMIO devices.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
/// How often the VMM asks the vCPUs whether the guest halted for good.
const HALT_PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// What to run.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Appended to [`BASE_CMDLINE`].
    pub cmdline_extra: Option<String>,
    pub mem_size: u64,
    pub mem_backing: MemoryBacking,
    pub vcpus: u8,
    /// The balloon, if `--balloon` was given.
    pub balloon: Option<BalloonConfig>,
    /// Where to serve the API, if `--api-sock` was given.
    pub api_socket: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("cannot open /dev/kvm: {0}. KVM is not available here: load kvm_intel or kvm_amd, check that your user may open /dev/kvm (group kvm), or run vmm inside a VM with nested virtualization (scripts/demo.sh does that under QEMU)")]
    KvmOpen(String),
    #[error("KVM call failed while {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("--cpus {0}: a VM needs at least one vCPU")]
    NoVcpus(u8),
    #[error("--cpus {requested}: at most {max} vCPUs are supported here")]
    TooManyVcpus { requested: u8, max: usize },
    #[error("--mem {}: not a whole number of 4 KiB pages", HumanSize(*.0))]
    MemoryNotPageAligned(u64),
    #[error("--mem {}: a Linux guest needs at least {}", HumanSize(*.0), HumanSize(MIN_MEMORY))]
    MemoryTooSmall(u64),
    #[error("--mem {}: more than this host has ({} of RAM and swap)", HumanSize(*.requested), HumanSize(*.host))]
    MemoryTooLarge { requested: u64, host: u64 },
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error("cannot build the ACPI tables: {0}")]
    Acpi(#[from] acpi::AcpiError),
    #[error("cannot build the MP table: {0}")]
    Mptable(#[from] mptable::MptableError),
    #[error(transparent)]
    Vcpu(#[from] vcpu::VcpuError),
    #[error("cannot place a device: {0}")]
    Bus(#[from] BusError),
    #[error("cannot set up {what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("event loop failed: {0}")]
    EventLoop(String),
    #[error("--balloon: {0}")]
    Balloon(#[from] BalloonSetupError),
    #[error("cannot set up the virtio-mmio transport: {0}")]
    Mmio(#[from] MmioError),
    #[error("--api-sock: {0}")]
    Api(#[from] ApiError),
}

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> VmmError {
    move |source| VmmError::Io { what, source }
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Kvm { what, source }
}

/// Checks what can be checked before touching KVM: the numbers, and that the kernel and
/// initrd can be read.
pub fn validate(config: &VmConfig) -> Result<(), VmmError> {
    validate_numbers(config)?;
    boot::check_kernel(&config.kernel)?;
    if let Some(initrd) = &config.initrd {
        std::fs::File::open(initrd).map_err(|source| boot::BootError::InitrdOpen {
            path: initrd.display().to_string(),
            source,
        })?;
    }
    Ok(())
}

fn validate_numbers(config: &VmConfig) -> Result<(), VmmError> {
    if config.vcpus == 0 {
        return Err(VmmError::NoVcpus(0));
    }
    if config.mem_size % PAGE_SIZE != 0 {
        return Err(VmmError::MemoryNotPageAligned(config.mem_size));
    }
    if config.mem_size < MIN_MEMORY {
        return Err(VmmError::MemoryTooSmall(config.mem_size));
    }
    if let Some(host) = host_memory() {
        if config.mem_size > host {
            return Err(VmmError::MemoryTooLarge {
                requested: config.mem_size,
                host,
            });
        }
    }
    Ok(())
}

/// RAM plus swap of the host, from /proc/meminfo.
fn host_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = meminfo.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    Some(field("MemTotal:")? + field("SwapTotal:").unwrap_or(0))
}

/// The full kernel command line for `config`.
pub fn kernel_cmdline(config: &VmConfig, mmio_devices: &[layout::MmioDeviceInfo]) -> String {
    let mut cmdline = String::from(BASE_CMDLINE);
    for device in mmio_devices {
        cmdline.push(' ');
        cmdline.push_str(&device.cmdline_entry());
    }
    if let Some(extra) = config.cmdline_extra.as_deref().map(str::trim) {
        if !extra.is_empty() {
            cmdline.push(' ');
            cmdline.push_str(extra);
        }
    }
    cmdline
}

/// A built VM, ready to run.
pub struct Vm {
    _kvm: Kvm,
    vm_fd: VmFd,
    mem: GuestMemoryMmap,
    lifecycle: Arc<Lifecycle>,
    vcpus: Vec<Vcpu>,
    event_manager: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>,
    balloon: Option<BalloonHandle>,
    config: VmConfig,
}

impl Vm {
    /// Builds the VM: KVM, memory, kernel, devices, firmware tables, vCPUs.
    pub fn build(config: VmConfig) -> Result<Vm, VmmError> {
        validate(&config)?;
        let kvm = Kvm::new().map_err(|e| VmmError::KvmOpen(e.to_string()))?;
        let max_vcpus = kvm.get_max_vcpus().min(usize::from(acpi::MAX_CPUS));
        if usize::from(config.vcpus) > max_vcpus {
            return Err(VmmError::TooManyVcpus {
                requested: config.vcpus,
                max: max_vcpus,
            });
        }
        let vm_fd = kvm.create_vm().map_err(kvm_err("creating the VM"))?;
        vm_fd
            .set_tss_address(KVM_TSS_ADDRESS)
            .map_err(kvm_err("setting the TSS address"))?;
        vm_fd
            .create_irq_chip()
            .map_err(kvm_err("creating the in-kernel interrupt controllers"))?;
        vm_fd
            .create_pit2(kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            })
            .map_err(kvm_err("creating the in-kernel PIT"))?;

        let mem = memory::create_guest_memory(config.mem_size, config.mem_backing)?;
        register_memory(&vm_fd, &mem)?;

        let lifecycle = Arc::new(Lifecycle::new().map_err(io_err("the stop event"))?);
        let mut io_bus = Bus::new();
        let mut mmio_bus = Bus::new();
        let mut event_manager = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new()
            .map_err(|e| VmmError::EventLoop(e.to_string()))?;

        // COM1.
        let serial_irq =
            EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("the serial interrupt"))?;
        vm_fd
            .register_irqfd(&serial_irq, layout::SERIAL_GSI)
            .map_err(kvm_err("wiring the serial interrupt"))?;
        let input_drained =
            EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("the serial input event"))?;
        let serial = Arc::new(Mutex::new(SerialConsole::new(
            Arc::new(serial_irq),
            UnbufferedFd(libc::STDOUT_FILENO),
            input_drained
                .try_clone()
                .map_err(io_err("the serial input event"))?,
        )));
        io_bus.insert(
            serial.clone(),
            u64::from(layout::SERIAL_PORT_BASE),
            u64::from(layout::SERIAL_PORT_SIZE),
        )?;
        event_manager.add_subscriber(Arc::new(Mutex::new(ConsoleInput::new(
            libc::STDIN_FILENO,
            serial,
            input_drained,
        ))));

        // Reset (i8042) and power-off (ACPI sleep control).
        io_bus.insert(
            Arc::new(Mutex::new(I8042::new(lifecycle.clone()))),
            u64::from(layout::I8042_PORT_BASE),
            u64::from(layout::I8042_PORT_SIZE),
        )?;
        io_bus.insert(
            Arc::new(Mutex::new(AcpiPowerDevice::new(lifecycle.clone()))),
            u64::from(layout::ACPI_SLEEP_CONTROL_PORT),
            2,
        )?;

        // Virtio devices, one virtio-mmio slot each.
        let mut mmio_devices: Vec<layout::MmioDeviceInfo> = Vec::new();
        let balloon = match config.balloon {
            Some(balloon_config) => {
                let slot = layout::MmioDeviceInfo::slot(mmio_devices.len() as u32);
                let device = Arc::new(Mutex::new(Balloon::new(balloon_config, config.mem_size)?));
                attach_virtio_device(
                    &vm_fd,
                    &mem,
                    &mut mmio_bus,
                    &mut event_manager,
                    device.clone(),
                    slot,
                )?;
                mmio_devices.push(slot);
                Some(BalloonHandle::new(device))
            }
            None => None,
        };

        // The kernel, its command line, initrd and the firmware tables.
        let kernel = boot::load_kernel(&mem, &config.kernel)?;
        let initrd = config
            .initrd
            .as_deref()
            .map(|path| boot::load_initrd(&mem, &kernel, path))
            .transpose()?;
        let cmdline = kernel_cmdline(&config, &mmio_devices);
        boot::write_cmdline(&mem, &cmdline)?;
        let rsdp = acpi::create_acpi_tables(&mem, config.vcpus, &mmio_devices)?;
        // The MP table is for kernels without ACPI; it has room for only so many CPUs,
        // and kernels that can use more read the MADT.
        if config.vcpus <= mptable::MAX_CPUS {
            mptable::setup_mptable(&mem, config.vcpus, &mmio_devices)?;
        }
        boot::write_boot_params(&mem, &kernel, cmdline.len(), initrd, Some(rsdp))?;

        let supported_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("reading the supported CPUID"))?;
        vcpu::install_kick_handler()?;
        let setup = VcpuSetup {
            vm: &vm_fd,
            mem: &mem,
            supported_cpuid: &supported_cpuid,
            kernel: &kernel,
            count: config.vcpus,
            io_bus: Arc::new(io_bus),
            mmio_bus: Arc::new(mmio_bus),
            lifecycle: lifecycle.clone(),
        };
        let vcpus = (0..config.vcpus)
            .map(|index| Vcpu::new(index, &setup))
            .collect::<Result<Vec<_>, _>>()?;

        Ok(Vm {
            _kvm: kvm,
            vm_fd,
            mem,
            lifecycle,
            vcpus,
            event_manager,
            balloon,
            config,
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
        self.event_manager
            .add_subscriber(Arc::new(Mutex::new(watcher)));

        let mut loop_error = None;
        while !self.lifecycle.is_stopping() {
            if let Err(e) = self.event_manager.run() {
                if !matches!(&e, event_manager::Error::Epoll(errno) if errno.errno() == libc::EINTR)
                {
                    loop_error = Some(VmmError::EventLoop(e.to_string()));
                    self.lifecycle
                        .request_stop(StopReason::Error(format!("event loop failed: {e}")));
                }
            }
        }
        stop_vcpus(handles);
        let _ = &self.vm_fd;
        let _ = &self.config;
        match loop_error {
            Some(e) => Err(e),
            None => Ok(self
                .lifecycle
                .reason()
                .unwrap_or(StopReason::ShutdownRequested)),
        }
    }
}

/// Puts a virtio device on the MMIO bus at `slot`: its register window, an ioeventfd per
/// queue on `QueueNotify` (datamatch = queue index, so notifications never reach a vCPU
/// exit), an irqfd on its GSI, and its events in the event loop.
fn attach_virtio_device<D: VirtioDevice + 'static>(
    vm_fd: &VmFd,
    mem: &GuestMemoryMmap,
    mmio_bus: &mut Bus,
    event_manager: &mut EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>,
    device: Arc<Mutex<D>>,
    slot: layout::MmioDeviceInfo,
) -> Result<(), VmmError> {
    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("a virtio interrupt"))?;
    vm_fd
        .register_irqfd(&irq, slot.gsi)
        .map_err(kvm_err("wiring a virtio interrupt"))?;
    let transport = MmioTransport::new(device, mem.clone(), Arc::new(irq))?;
    for (index, event) in transport.queue_events().iter().enumerate() {
        vm_fd
            .register_ioevent(
                event,
                &IoEventAddress::Mmio(slot.addr + MMIO_QUEUE_NOTIFY_OFFSET),
                index as u32,
            )
            .map_err(kvm_err("registering a virtio queue notification"))?;
    }
    let notifications = transport.notifications();
    mmio_bus.insert(Arc::new(Mutex::new(transport)), slot.addr, slot.len)?;
    event_manager.add_subscriber(Arc::new(Mutex::new(VirtioMmioEventHandler::new(
        notifications,
    ))));
    Ok(())
}

fn register_memory(vm_fd: &VmFd, mem: &GuestMemoryMmap) -> Result<(), VmmError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|_| VmmError::EventLoop("guest memory region has no host mapping".into()))?;
        let region_desc = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which outlives the VM
        // (both live in `Vm`, and the vCPUs are joined before either is dropped).
        unsafe { vm_fd.set_user_memory_region(region_desc) }
            .map_err(kvm_err("registering guest memory"))?;
    }
    Ok(())
}

/// Kicks every vCPU out of `KVM_RUN` until its thread has ended, then joins them.
fn stop_vcpus(handles: Arc<Vec<VcpuHandle>>) {
    loop {
        let running: Vec<&VcpuHandle> = handles.iter().filter(|h| !h.is_finished()).collect();
        if running.is_empty() {
            break;
        }
        for handle in running {
            handle.kick();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if let Ok(handles) = Arc::try_unwrap(handles) {
        for handle in handles {
            handle.join();
        }
    }
}

/// The last termination signal received, and the eventfd its handler pokes.
static SIGNAL_NUMBER: AtomicI32 = AtomicI32::new(0);
static SIGNAL_EVENT_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_termination_signal(
    signum: libc::c_int,
    _: *mut libc::siginfo_t,
    _: *mut libc::c_void,
) {
    SIGNAL_NUMBER.store(signum, Ordering::SeqCst);
    let fd = SIGNAL_EVENT_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; the fd is an eventfd that lives as long
        // as the process (it is leaked on purpose) and the buffer is 8 valid bytes.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

/// Watches the stop event, termination signals, and probes for a halted guest.
struct StopWatcher {
    lifecycle: Arc<Lifecycle>,
    vcpus: Arc<Vec<VcpuHandle>>,
    signal_event: RawFd,
    halt_timer: TimerFd,
    probe_pending: bool,
}

/// Routes SIGTERM, SIGINT and SIGHUP to an eventfd that the event loop watches, and
/// returns that eventfd; later calls return the same one. Installed before anything is
/// created that must be cleaned up on the way out (the API socket), so that a signal
/// always ends vmm through its orderly exit.
fn install_termination_signals() -> Result<RawFd, VmmError> {
    let installed = SIGNAL_EVENT_FD.load(Ordering::SeqCst);
    if installed >= 0 {
        return Ok(installed);
    }
    let signal_event =
        EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(io_err("the signal event"))?;
    let signal_fd = signal_event.as_raw_fd();
    // The handler may run at any time until exit, so the eventfd is never closed.
    std::mem::forget(signal_event);
    SIGNAL_EVENT_FD.store(signal_fd, Ordering::SeqCst);
    for signum in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        vmm_sys_util::signal::register_signal_handler(signum, on_termination_signal).map_err(
            |e| VmmError::Io {
                what: "signal handlers",
                source: std::io::Error::from_raw_os_error(e.errno()),
            },
        )?;
    }
    Ok(signal_fd)
}

impl StopWatcher {
    fn new(lifecycle: Arc<Lifecycle>, vcpus: Arc<Vec<VcpuHandle>>) -> Result<Self, VmmError> {
        let signal_fd = install_termination_signals()?;
        let timer_err = |e: vmm_sys_util::errno::Error| VmmError::Io {
            what: "the halt probe timer",
            source: std::io::Error::from_raw_os_error(e.errno()),
        };
        let mut halt_timer = TimerFd::new().map_err(timer_err)?;
        halt_timer
            .reset(HALT_PROBE_INTERVAL, Some(HALT_PROBE_INTERVAL))
            .map_err(timer_err)?;
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
            let states: Vec<_> = self.vcpus.iter().map(|v| v.shared.halt_state()).collect();
            if vcpu::guest_halted(&states) {
                self.lifecycle.request_stop(StopReason::Halted);
                return;
            }
        }
        for vcpu in self.vcpus.iter() {
            vcpu.shared.request_halt_probe();
            vcpu.kick();
        }
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
            let mut value = 0u64;
            // SAFETY: reads 8 bytes into a u64 from our eventfd.
            unsafe { libc::read(fd, (&mut value as *mut u64).cast(), 8) };
            let signum = SIGNAL_NUMBER.load(Ordering::SeqCst);
            self.lifecycle.request_stop(StopReason::Signal(signum));
        } else if fd == self.halt_timer.as_raw_fd() {
            self.on_halt_timer();
        }
    }
}

/// The running VM as the API sees it.
struct VmController {
    vcpus: u8,
    memory_bytes: u64,
    started: Instant,
    lifecycle: Arc<Lifecycle>,
    balloon: Option<Arc<dyn BalloonControl>>,
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
}

/// Builds and runs a VM: the whole life of `vmm --kernel …`. The API socket (if any) is
/// served from before the first vCPU runs until after the last one stopped, and removed
/// on the way out.
pub fn run(config: VmConfig) -> Result<StopReason, VmmError> {
    install_termination_signals()?;
    let api_socket = config.api_socket.clone();
    let vm = Vm::build(config)?;
    let api = match api_socket {
        Some(path) => {
            let controller = VmController {
                vcpus: vm.config.vcpus,
                memory_bytes: vm.config.mem_size,
                started: Instant::now(),
                lifecycle: vm.lifecycle(),
                balloon: vm
                    .balloon()
                    .map(|b| Arc::new(b.clone()) as Arc<dyn BalloonControl>),
            };
            Some(ApiServer::start(&path, Arc::new(controller))?)
        }
        None => None,
    };
    let _raw = crate::terminal::RawTerminal::enable();
    let outcome = vm.run();
    drop(api);
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> VmConfig {
        VmConfig {
            kernel: PathBuf::from("/boot/vmlinuz"),
            initrd: None,
            cmdline_extra: None,
            mem_size: DEFAULT_MEMORY,
            mem_backing: MemoryBacking::Anonymous,
            vcpus: 1,
            balloon: None,
            api_socket: None,
        }
    }

    #[test]
    fn command_line_starts_with_the_base_and_ends_with_the_user_part() {
        let mut cfg = config();
        cfg.cmdline_extra = Some(" init=/bin/sh ".into());
        let devices = [layout::MmioDeviceInfo::slot(0)];
        assert_eq!(
            kernel_cmdline(&cfg, &devices),
            "console=ttyS0 reboot=k panic=1 pci=off virtio_mmio.device=4K@0xd0000000:5 init=/bin/sh"
        );
        cfg.cmdline_extra = None;
        assert_eq!(kernel_cmdline(&cfg, &[]), BASE_CMDLINE);
    }

    #[test]
    fn bad_configs_are_refused_with_the_value() {
        let mut cfg = config();
        cfg.vcpus = 0;
        assert_eq!(
            validate_numbers(&cfg).unwrap_err().to_string(),
            "--cpus 0: a VM needs at least one vCPU"
        );
        let mut cfg = config();
        cfg.mem_size = 1000 * 4096 + 1;
        assert!(validate_numbers(&cfg)
            .unwrap_err()
            .to_string()
            .contains("4 KiB pages"));
        cfg.mem_size = 16 * MIB;
        assert_eq!(
            validate_numbers(&cfg).unwrap_err().to_string(),
            "--mem 16 MiB: a Linux guest needs at least 64 MiB"
        );
        cfg.mem_size = 1 << 50;
        assert!(validate_numbers(&cfg)
            .unwrap_err()
            .to_string()
            .starts_with("--mem 1024 TiB: more than this host has"));
        assert!(validate_numbers(&config()).is_ok());
    }
}
