//! Builds a VM from a [`VmConfig`], one step per function: the KVM VM, guest memory, the
//! legacy devices, the virtio devices, and what the kernel needs to boot (kernel, initrd,
//! command line, firmware tables), then the vCPUs. [`Vm::build`](crate::vmm::Vm::build)
//! calls the steps in that order.
//!
//! Each `attach_*` function puts devices on a bus and connects them to KVM (an irqfd for
//! their interrupt, ioeventfds for virtio queue notifications) and to the event loop. The
//! devices themselves never see KVM.

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::arch::x86_64::boot::{self, BootError, LoadedKernel};
use crate::arch::x86_64::cmdline::{self, CmdlineError};
use crate::arch::x86_64::{acpi, layout, mptable};
use crate::config::VmConfig;
use crate::console::input::TerminalEvents;
use crate::console::{ConsoleError, ConsoleInput, ConsoleSink, SerialMode};
use crate::devices::bus::{Bus, BusError};
use crate::devices::legacy::acpi_power::AcpiPowerDevice;
use crate::devices::legacy::i8042::I8042;
use crate::devices::legacy::pvpanic::PvPanic;
use crate::devices::legacy::serial::SerialConsole;
use crate::devices::virtio::balloon::{Balloon, BalloonConfig, BalloonHandle, BalloonSetupError};
use crate::devices::virtio::event_handler::VirtioMmioEventHandler;
use crate::devices::virtio::mmio::{MmioError, MmioTransport, MMIO_QUEUE_NOTIFY_OFFSET};
use crate::devices::virtio::VirtioDevice;
use crate::lifecycle::{Lifecycle, SetupError};
use crate::memory::{self, GuestMemoryMmap, MemoryBacking, MemoryError};
use crate::seccomp::ThreadFilter;
use crate::vcpu::{self, Vcpu, VcpuError, VcpuSetup};

/// Where KVM keeps the TSS for real-mode emulation: three pages just below the BIOS
/// area, out of the way of RAM (which ends at 3 GiB) and of the MMIO devices.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// The event loop the VMM's main thread runs, which devices add their events to.
pub type EventLoop = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot open /dev/kvm: {0}. KVM is not available here: load kvm_intel or kvm_amd, check that your user may open /dev/kvm (group kvm), or run vmm inside a VM with nested virtualization (scripts/demo.sh does that under QEMU)")]
    KvmOpen(String),
    #[error("KVM call failed while {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("--cpus {requested}: at most {max} vCPUs are supported here")]
    TooManyVcpus { requested: u8, max: usize },
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error("guest memory region at {addr:#x} has no host mapping to give KVM")]
    NoHostMapping { addr: u64 },
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Cmdline(#[from] CmdlineError),
    #[error("cannot build the ACPI tables: {0}")]
    Acpi(#[from] acpi::AcpiError),
    #[error("cannot build the MP table: {0}")]
    Mptable(#[from] mptable::MptableError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("cannot place a device: {0}")]
    Bus(#[from] BusError),
    #[error("cannot set up {what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("cannot set up the event loop: {0}")]
    EventLoop(String),
    #[error("--balloon: {0}")]
    Balloon(#[from] BalloonSetupError),
    #[error("cannot set up the virtio-mmio transport: {0}")]
    Mmio(#[from] MmioError),
    #[error(transparent)]
    Console(#[from] ConsoleError),
    #[error(transparent)]
    Setup(#[from] SetupError),
}

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> BuildError {
    move |source| BuildError::Io { what, source }
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> BuildError {
    move |source| BuildError::Kvm { what, source }
}

/// Opens KVM and creates a VM for `vcpus` vCPUs with the in-kernel interrupt controllers
/// (PIC, IOAPIC, LAPICs) and PIT.
pub fn create_vm(vcpus: u8) -> Result<(Kvm, VmFd), BuildError> {
    let kvm = Kvm::new().map_err(|e| BuildError::KvmOpen(e.to_string()))?;
    let max_vcpus = kvm.get_max_vcpus().min(usize::from(acpi::MAX_CPUS));
    if usize::from(vcpus) > max_vcpus {
        return Err(BuildError::TooManyVcpus {
            requested: vcpus,
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
    Ok((kvm, vm_fd))
}

/// Maps `size` bytes of guest RAM, backed as `backing` says, in the regions the memory
/// map gives a guest of that size (RAM skips the MMIO hole below 4 GiB; with whole 2 MiB
/// pages of memory every region is whole huge pages, as the huge-page backings need).
pub fn create_guest_memory(
    size: u64,
    backing: MemoryBacking,
) -> Result<GuestMemoryMmap, BuildError> {
    Ok(memory::create_guest_memory(
        &layout::ram_regions(size),
        backing,
    )?)
}

/// Gives KVM every region of `mem`, one memory slot each.
pub fn register_memory(vm_fd: &VmFd, mem: &GuestMemoryMmap) -> Result<(), BuildError> {
    for (slot, region) in mem.iter().enumerate() {
        let host =
            mem.get_host_address(region.start_addr())
                .map_err(|_| BuildError::NoHostMapping {
                    addr: region.start_addr().raw_value(),
                })?;
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

/// The event loop, empty.
pub fn create_event_loop() -> Result<EventLoop, BuildError> {
    EventLoop::new().map_err(|e| BuildError::EventLoop(e.to_string()))
}

/// The legacy devices the VMM still talks to once the VM runs.
pub struct LegacyDevices {
    /// The console's output: its counters, and its last flush on the way out.
    pub console: ConsoleSink,
    /// The keyboard controller, through which the API types Ctrl+Alt+Del.
    pub i8042: Arc<Mutex<I8042>>,
}

/// The legacy devices on the port-I/O bus: COM1 as the console (see
/// [`attach_serial_console`]), the i8042 (keyboard, and reset), the ACPI sleep control
/// register for power-off, and the pvpanic port; the last three stop the VM through
/// `lifecycle`.
pub fn attach_legacy_devices(
    vm_fd: &VmFd,
    io_bus: &mut Bus,
    event_manager: &mut EventLoop,
    lifecycle: &Arc<Lifecycle>,
    serial: &SerialMode,
    output_filter: ThreadFilter,
) -> Result<LegacyDevices, BuildError> {
    let console = attach_serial_console(vm_fd, io_bus, event_manager, serial, output_filter)?;
    let keyboard_irq =
        EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("the keyboard interrupt"))?;
    vm_fd
        .register_irqfd(&keyboard_irq, layout::I8042_KEYBOARD_GSI)
        .map_err(kvm_err("wiring the keyboard interrupt"))?;
    let i8042 = Arc::new(Mutex::new(I8042::new(
        lifecycle.clone(),
        Arc::new(keyboard_irq),
    )));
    io_bus.insert(
        i8042.clone(),
        u64::from(layout::I8042_PORT_BASE),
        u64::from(layout::I8042_PORT_SIZE),
    )?;
    io_bus.insert(
        Arc::new(Mutex::new(AcpiPowerDevice::new(lifecycle.clone()))),
        u64::from(layout::ACPI_SLEEP_CONTROL_PORT),
        2,
    )?;
    io_bus.insert(
        Arc::new(Mutex::new(PvPanic::new(lifecycle.clone()))),
        u64::from(layout::PVPANIC_PORT),
        1,
    )?;
    Ok(LegacyDevices { console, i8042 })
}

/// COM1, its output as `mode` says (never blocking the vCPU that writes it), and with
/// `--serial stdio` stdin fed to it by the event loop.
pub fn attach_serial_console(
    vm_fd: &VmFd,
    io_bus: &mut Bus,
    event_manager: &mut EventLoop,
    mode: &SerialMode,
    output_filter: ThreadFilter,
) -> Result<ConsoleSink, BuildError> {
    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("the serial interrupt"))?;
    vm_fd
        .register_irqfd(&serial_irq, layout::SERIAL_GSI)
        .map_err(kvm_err("wiring the serial interrupt"))?;
    let input_drained =
        EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("the serial input event"))?;
    let console = ConsoleSink::open(mode, output_filter)?;
    let serial = Arc::new(Mutex::new(SerialConsole::new(
        Arc::new(serial_irq),
        console.writer(),
        input_drained
            .try_clone()
            .map_err(io_err("the serial input event"))?,
    )));
    io_bus.insert(
        serial.clone(),
        u64::from(layout::SERIAL_PORT_BASE),
        u64::from(layout::SERIAL_PORT_SIZE),
    )?;
    if *mode == SerialMode::Stdio {
        // A terminal is read only in the foreground (see crate::console::input).
        let terminal = if crate::terminal::stdin_is_terminal() {
            Some(TerminalEvents {
                continued: crate::terminal::continue_event()?,
                poll: TimerFd::new().map_err(|e| BuildError::Io {
                    what: "the terminal's foreground timer",
                    source: std::io::Error::from_raw_os_error(e.errno()),
                })?,
            })
        } else {
            None
        };
        event_manager.add_subscriber(Arc::new(Mutex::new(ConsoleInput::new(
            libc::STDIN_FILENO,
            serial,
            input_drained,
            terminal,
        ))));
    }
    Ok(console)
}

/// Puts a balloon in the next free virtio-mmio slot and records the slot in
/// `mmio_devices`, for the firmware tables and the command line. `backing` is what backs
/// `mem`: it decides in what units the balloon gives memory back.
pub fn attach_balloon(
    vm_fd: &VmFd,
    mem: &GuestMemoryMmap,
    backing: MemoryBacking,
    mmio_bus: &mut Bus,
    event_manager: &mut EventLoop,
    mmio_devices: &mut Vec<layout::MmioDeviceInfo>,
    config: BalloonConfig,
) -> Result<BalloonHandle, BuildError> {
    let slot = layout::MmioDeviceInfo::slot(mmio_devices.len() as u32);
    let balloon = Balloon::new(config, memory::ram_size(mem))?.with_memory_backing(backing);
    let device = Arc::new(Mutex::new(balloon));
    attach_virtio_device(vm_fd, mem, mmio_bus, event_manager, device.clone(), slot)?;
    mmio_devices.push(slot);
    Ok(BalloonHandle::new(device))
}

/// Puts a virtio device on the MMIO bus at `slot`: its register window, an ioeventfd per
/// queue on `QueueNotify` (datamatch = queue index, so notifications never reach a vCPU
/// exit), an irqfd on its GSI, and its events in the event loop.
pub fn attach_virtio_device<D: VirtioDevice + 'static>(
    vm_fd: &VmFd,
    mem: &GuestMemoryMmap,
    mmio_bus: &mut Bus,
    event_manager: &mut EventLoop,
    device: Arc<Mutex<D>>,
    slot: layout::MmioDeviceInfo,
) -> Result<(), BuildError> {
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

/// Loads the kernel and initrd and writes everything the kernel reads at boot: its
/// command line, the ACPI tables, the MP table and the zero page. Returns where the
/// kernel went, for the boot vCPU.
pub fn configure_boot(
    mem: &GuestMemoryMmap,
    config: &VmConfig,
    mmio_devices: &[layout::MmioDeviceInfo],
) -> Result<LoadedKernel, BuildError> {
    let kernel = boot::load_kernel(mem, &config.kernel)?;
    let initrd = config
        .initrd
        .as_deref()
        .map(|path| boot::load_initrd(mem, &kernel, path))
        .transpose()?;
    let cmdline = cmdline::kernel_cmdline(config.cmdline_extra.as_deref(), mmio_devices)?;
    let cmdline_len = boot::write_cmdline(mem, &cmdline)?;
    let rsdp = acpi::create_acpi_tables(mem, config.vcpus, mmio_devices)?;
    // The MP table is for kernels without ACPI; it has room for only so many CPUs,
    // and kernels that can use more read the MADT.
    if config.vcpus <= mptable::MAX_CPUS {
        mptable::setup_mptable(mem, config.vcpus, mmio_devices)?;
    }
    boot::write_boot_params(mem, &kernel, cmdline_len, initrd, Some(rsdp))?;
    Ok(kernel)
}

/// The CPUID entries KVM supports on this host, which each vCPU's CPUID is made from.
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, BuildError> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("reading the supported CPUID"))
}

/// Creates and sets up `setup.count` vCPUs, ready to start.
pub fn create_vcpus(setup: &VcpuSetup<'_>) -> Result<Vec<Vcpu>, BuildError> {
    vcpu::install_kick_handler()?;
    Ok((0..setup.count)
        .map(|index| Vcpu::new(index, setup))
        .collect::<Result<Vec<_>, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{largest_region, ram_size, range_in_ram};
    use vm_memory::GuestAddress;

    #[test]
    fn large_guests_span_the_mmio_hole() {
        // Only the address space is reserved (MAP_NORESERVE); nothing is touched.
        let mem = create_guest_memory(5 << 30, MemoryBacking::Anonymous).unwrap();
        assert_eq!(ram_size(&mem), 5 << 30);
        assert!(range_in_ram(
            &mem,
            GuestAddress(layout::MMIO_GAP_START - 4096),
            4096
        ));
        assert!(!range_in_ram(
            &mem,
            GuestAddress(layout::MMIO_GAP_START),
            4096
        ));
        assert!(!range_in_ram(
            &mem,
            GuestAddress(layout::MMIO_GAP_START - 4096),
            8192
        ));
        assert!(range_in_ram(&mem, GuestAddress(1 << 32), 4096));
        assert_eq!(largest_region(&mem), layout::MMIO_GAP_START);
    }
}
