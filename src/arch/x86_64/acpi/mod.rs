//! ACPI tables: how a stock distribution kernel learns about the CPUs, the interrupt
//! controllers, the virtio-mmio devices and how to power the machine off.
//!
//! The machine is a hardware-reduced ACPI platform: no PM timer, no SCI, no GPE blocks,
//! no fixed-feature buttons. What it does have is described by five tables in the
//! legacy BIOS area (`layout::ACPI_START..layout::ACPI_END`):
//!
//! - RSDP (revision 2) at `ACPI_START`, pointing at the XSDT;
//! - XSDT, listing the FADT and the MADT;
//! - FADT, saying "hardware-reduced" and where the sleep control/status registers are;
//! - MADT, one local APIC per vCPU and the IOAPIC;
//! - DSDT, with `\_S5_` (so Linux can power off), COM1, the i8042 keyboard, the pvpanic
//!   port, and one `LNRO0005` device per virtio-mmio window (the only way a stock Debian
//!   kernel finds them).
//!
//! The sleep control register's format, and the `SLP_TYP` value that means S5, come from
//! the port device that implements the register
//! ([`crate::devices::legacy::acpi_power`]), so that the `\_S5_` package announced here
//! and the device cannot drift apart.

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{Aml, AmlSink};
use vm_memory::{Bytes, GuestAddress};

use super::layout::{self, MmioDeviceInfo};
use crate::devices::legacy::acpi_power::S5_SLEEP_TYPE;
use crate::memory::{self, GuestMemoryMmap};

/// The OEM ID in every table header.
const OEM_ID: [u8; 6] = *b"VMM   ";
/// The OEM revision in every table header.
const OEM_REVISION: u32 = 1;
/// FADT `HYPERVISOR_VENDOR_IDENTITY`.
const HYPERVISOR_VENDOR_ID: [u8; 8] = *b"VMM     ";

/// Tables start on 16-byte boundaries (only the RSDP strictly needs it).
const TABLE_ALIGN: u64 = 16;

/// Most vCPUs the tables describe. xAPIC IDs are 8 bits and 0xff is the broadcast ID;
/// the IOAPIC takes the ID after the last vCPU's (see [`ioapic_id`]), which must not be
/// 0xff either.
pub const MAX_CPUS: u8 = 254;

/// Most virtio-mmio devices the DSDT can name (`V000`..`VFFF`).
const MAX_DSDT_DEVICES: usize = 0x1000;

/// The IOAPIC's ID in both the MADT and the MP table: the first ID after the vCPUs' APIC
/// IDs (vCPU `i` has APIC ID `i`), so that no ID on the APIC bus is used twice.
pub const fn ioapic_id(num_cpus: u8) -> u8 {
    num_cpus
}

// IA-PC boot architecture flags (FADT `IAPC_BOOT_ARCH`), ACPI 6.5 table 5.11.
/// No VGA hardware: Linux must not poke the legacy VGA ranges.
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
/// No MSI: there is no PCI, and virtio-mmio interrupts are IOAPIC pins.
const IAPC_MSI_NOT_SUPPORTED: u16 = 1 << 3;
/// No CMOS RTC at ports 0x70/0x71: Linux does not register `rtc_cmos`.
const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;
/// There is an 8042 keyboard controller. Linux finds it through the DSDT's `PNP0303`
/// keyboard; the flag only says the hardware is there.
const IAPC_8042: u16 = 1 << 1;
// Deliberately not set: LEGACY_DEVICES (bit 0). The ISA devices the guest needs (COM1,
// the keyboard, pvpanic) are in the DSDT.
const IAPC_BOOT_ARCH: u16 =
    IAPC_8042 | IAPC_VGA_NOT_PRESENT | IAPC_MSI_NOT_SUPPORTED | IAPC_CMOS_RTC_NOT_PRESENT;

/// The i8042 command port and the command that pulses the CPU reset line: the FADT reset
/// register, so that an ACPI reboot (Linux's first choice) resets the VM the same way
/// `reboot=k` does.
const RESET_PORT: u16 = layout::I8042_COMMAND_PORT;
const RESET_VALUE: u8 = 0xfe;

/// MADT flag: the machine also has a PC-AT compatible pair of 8259 PICs.
const MADT_PCAT_COMPAT: u32 = 1;
/// MADT revision of ACPI 6.3 and later.
const MADT_REVISION: u8 = 5;
/// DSDT revision 2 and up means 64-bit AML integers.
const DSDT_REVISION: u8 = 2;
/// Offset of the MADT's local interrupt controller address and flags fields.
const MADT_LAPIC_ADDR_OFFSET: usize = 36;
const MADT_FLAGS_OFFSET: usize = 40;
const MADT_HEADER_LEN: u32 = 44;
const SDT_HEADER_LEN: u32 = 36;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcpiError {
    #[error("a VM needs at least one vCPU, got 0")]
    NoCpus,
    #[error("{0} vCPUs is too many for the MADT: at most {MAX_CPUS} are supported")]
    TooManyCpus(u8),
    #[error("{0} virtio-mmio devices is too many for the DSDT: at most {MAX_DSDT_DEVICES}")]
    TooManyDevices(usize),
    #[error("virtio-mmio window {addr:#x}+{len:#x} does not lie below 4 GiB, where ACPI's Memory32Fixed can describe it")]
    DeviceAbove4G { addr: u64, len: u64 },
    #[error(
        "virtio-mmio device at {addr:#x} uses GSI {gsi}, but the IOAPIC has only {} pins",
        layout::IOAPIC_PINS
    )]
    GsiOutOfRange { addr: u64, gsi: u32 },
    #[error("the ACPI tables need {size} bytes but only {available} bytes are reserved for them at {start:#x}")]
    TooLarge {
        size: u64,
        available: u64,
        start: u64,
    },
    #[error("the ACPI area {start:#x}..{end:#x} is not in guest RAM")]
    NotInRam { start: u64, end: u64 },
    #[error("cannot write the {table} table at {addr:#x} to guest memory: {reason}")]
    GuestMemory {
        table: &'static str,
        addr: u64,
        reason: String,
    },
}

/// Writes RSDP, XSDT, FADT, MADT and DSDT for a machine with `num_cpus` vCPUs (APIC IDs
/// `0..num_cpus`) and the virtio-mmio `devices` into the ACPI area, and returns the RSDP's
/// address for `boot_params.acpi_rsdp_addr`. Nothing is written unless all tables fit.
pub fn create_acpi_tables(
    mem: &GuestMemoryMmap,
    num_cpus: u8,
    devices: &[MmioDeviceInfo],
) -> Result<GuestAddress, AcpiError> {
    check_cpus(num_cpus)?;
    check_devices(devices)?;

    let rsdp_addr = layout::ACPI_START.0;
    let dsdt = create_dsdt(devices)?;
    let dsdt_addr = align(rsdp_addr + Rsdp::len() as u64);
    let fadt = create_fadt(dsdt_addr);
    let fadt_addr = align(dsdt_addr + dsdt.len() as u64);
    let madt = create_madt(num_cpus);
    let madt_addr = align(fadt_addr + fadt.len() as u64);
    let xsdt_addr = align(madt_addr + madt.len() as u64);
    let xsdt = create_xsdt(&[fadt_addr, madt_addr]);
    let end = xsdt_addr + xsdt.len() as u64;
    let rsdp = aml_bytes(&Rsdp::new(OEM_ID, xsdt_addr));

    let available = layout::ACPI_END.0 - rsdp_addr;
    if end > layout::ACPI_END.0 {
        return Err(AcpiError::TooLarge {
            size: end - rsdp_addr,
            available,
            start: rsdp_addr,
        });
    }
    if !memory::range_in_ram(mem, layout::ACPI_START, available) {
        return Err(AcpiError::NotInRam {
            start: rsdp_addr,
            end: layout::ACPI_END.0,
        });
    }

    for (table, addr, bytes) in [
        ("RSDP", rsdp_addr, &rsdp),
        ("DSDT", dsdt_addr, &dsdt),
        ("FADT", fadt_addr, &fadt),
        ("MADT", madt_addr, &madt),
        ("XSDT", xsdt_addr, &xsdt),
    ] {
        mem.write_slice(bytes, GuestAddress(addr))
            .map_err(|e| AcpiError::GuestMemory {
                table,
                addr,
                reason: e.to_string(),
            })?;
    }
    Ok(GuestAddress(rsdp_addr))
}

fn check_cpus(num_cpus: u8) -> Result<(), AcpiError> {
    match num_cpus {
        0 => Err(AcpiError::NoCpus),
        n if n > MAX_CPUS => Err(AcpiError::TooManyCpus(n)),
        _ => Ok(()),
    }
}

fn check_devices(devices: &[MmioDeviceInfo]) -> Result<(), AcpiError> {
    if devices.len() > MAX_DSDT_DEVICES {
        return Err(AcpiError::TooManyDevices(devices.len()));
    }
    for dev in devices {
        let below_4g = dev.len > 0
            && dev
                .addr
                .checked_add(dev.len)
                .is_some_and(|end| end <= 1 << 32);
        if !below_4g {
            return Err(AcpiError::DeviceAbove4G {
                addr: dev.addr,
                len: dev.len,
            });
        }
        if dev.gsi >= layout::IOAPIC_PINS {
            return Err(AcpiError::GsiOutOfRange {
                addr: dev.addr,
                gsi: dev.gsi,
            });
        }
    }
    Ok(())
}

fn align(addr: u64) -> u64 {
    addr.next_multiple_of(TABLE_ALIGN)
}

fn aml_bytes(aml: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    aml.to_aml_bytes(&mut bytes);
    bytes
}

/// The FADT of a hardware-reduced machine. The crate's builder has no setters for the
/// boot architecture flags, the reset register, the sleep registers or the hypervisor
/// identity, but its fields are public: they are set directly before `finalize`, which
/// computes the checksum over all of them.
fn create_fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, *b"VMMFACP ", OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        // No fixed-feature power or sleep button: Linux must not create button devices
        // for fixed events that a hardware-reduced machine cannot raise.
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup);
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    fadt.reset_reg = io_port_gas(RESET_PORT);
    fadt.reset_value = RESET_VALUE;
    fadt.sleep_control_reg = io_port_gas(layout::ACPI_SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = io_port_gas(layout::ACPI_SLEEP_STATUS_PORT);
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(HYPERVISOR_VENDOR_ID).into();
    aml_bytes(&fadt.finalize())
}

/// A one-byte register in the System I/O space.
fn io_port_gas(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

/// The MADT: one enabled local APIC per vCPU and the IOAPIC covering GSIs 0-23.
///
/// Built on the crate's generic `Sdt` (header, length, checksum) with the crate's local
/// APIC and IOAPIC entries, because its `MADT` builder cannot set the flags field.
///
/// PCAT_COMPAT is on: KVM's in-kernel irqchip does emulate the two 8259s and routes GSIs
/// 0-15 to them as well as to the IOAPIC, so an OS that honours the flag masks them when
/// it switches to APIC mode. Linux ignores the flag: a hardware-reduced FADT alone makes
/// it run without a legacy PIC.
///
/// No interrupt source overrides: KVM's default routing sends GSI n to IOAPIC pin n, which
/// is exactly what an OS assumes for ISA IRQs without an override. An override for IRQ 0
/// (real PCs wire the PIT to pin 2) would be wrong here, and a hardware-reduced Linux does
/// not use the PIT interrupt anyway. COM1's IRQ 4 comes from its `_CRS` in the DSDT, and
/// each virtio-mmio device's edge/high GSI from its `Interrupt` descriptor, which Linux
/// programs into the IOAPIC when it registers the GSI.
///
/// No local APIC NMI entry: Linux programs LINT1 as NMI on the boot CPU itself and only
/// prints a warning from such entries, and KVM delivers NMIs (`KVM_NMI`) straight to a
/// vCPU, not through LINT1. (Firecracker's and Cloud Hypervisor's MADTs have none either.)
fn create_madt(num_cpus: u8) -> Vec<u8> {
    let mut madt = Sdt::new(
        *b"APIC",
        MADT_HEADER_LEN,
        MADT_REVISION,
        OEM_ID,
        *b"VMMMADT ",
        OEM_REVISION,
    );
    madt.write_u32(MADT_LAPIC_ADDR_OFFSET, layout::APIC_START as u32);
    madt.write_u32(MADT_FLAGS_OFFSET, MADT_PCAT_COMPAT);
    for cpu in 0..num_cpus {
        madt.append_slice(&aml_bytes(&ProcessorLocalApic::new(
            cpu,
            cpu,
            EnabledStatus::Enabled,
        )));
    }
    madt.append_slice(&aml_bytes(&IoApic::new(
        ioapic_id(num_cpus),
        layout::IOAPIC_START as u32,
        0,
    )));
    madt.as_slice().to_vec()
}

fn create_xsdt(entries: &[u64]) -> Vec<u8> {
    let mut xsdt = XSDT::new(OEM_ID, *b"VMMXSDT ", OEM_REVISION);
    for &entry in entries {
        xsdt.add_entry(entry);
    }
    aml_bytes(&xsdt)
}

/// The DSDT:
///
/// ```text
/// Name (\_S5, Package { S5_SLEEP_TYPE, 0, 0, 0 })
/// Scope (\_SB) {
///     Device (COM1) { _HID EisaId("PNP0501"), _UID 0,
///                     _CRS { IO (Decode16, 0x3f8, 0x3f8, 0, 8), Interrupt (..) { 4 } } }
///     Device (PS2K) { _HID EisaId("PNP0303"),
///                     _CRS { IO (Decode16, 0x60, 0x60, 0, 1), IO (Decode16, 0x64, 0x64, 0, 1),
///                            Interrupt (..) { 1 } } }
///     Device (PEVT) { _HID "QEMU0001", _CRS { IO (Decode16, 0x505, 0x505, 0, 1) } }
///     Device (V000) { _HID "LNRO0005", _UID 0,
///                     _CRS { Memory32Fixed (ReadWrite, addr, len),
///                            Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) { gsi } } }
///     ...
/// }
/// ```
///
/// COM1 is there because with a hardware-reduced FADT Linux runs without a legacy PIC
/// (`nr_legacy_irqs() == 0`): it sets up no identity ISA IRQ mappings and numbers IOAPIC
/// interrupts dynamically, so the built-in 8250 port's hard-coded IRQ 4 need not be GSI 4.
/// Found through ACPI (8250_pnp), the port gets GSI 4 registered, edge/high, and uses
/// whatever IRQ that maps to.
///
/// The keyboard (`PS2K`) is how Linux's i8042 driver finds the controller on an ACPI
/// machine: it probes only the ports and the interrupt a `PNP0303` device names. There is
/// no mouse device, since the controller has no AUX port; the command line's `i8042.noaux`
/// keeps the driver from looking for one. `PEVT` is the pvpanic port, which Linux's
/// `pvpanic-mmio` driver matches by `_HID "QEMU0001"`.
fn create_dsdt(devices: &[MmioDeviceInfo]) -> Result<Vec<u8>, AcpiError> {
    let mut dsdt = Sdt::new(
        *b"DSDT",
        SDT_HEADER_LEN,
        DSDT_REVISION,
        OEM_ID,
        *b"VMMDSDT ",
        OEM_REVISION,
    );

    let s5_type = S5_SLEEP_TYPE;
    let s5 = aml::Package::new(vec![&s5_type, &aml::ZERO, &aml::ZERO, &aml::ZERO]);
    dsdt.append_slice(&aml_bytes(&aml::Name::new("\\_S5_".into(), &s5)));

    let legacy = [serial_device(), keyboard_device(), pvpanic_device()];
    let virtio: Vec<Vec<u8>> = devices
        .iter()
        .enumerate()
        .map(|(index, dev)| virtio_mmio_device(index, dev))
        .collect::<Result<_, _>>()?;
    let raw: Vec<RawAml> = legacy
        .iter()
        .chain(virtio.iter())
        .map(|bytes| RawAml(bytes))
        .collect();
    let children: Vec<&dyn Aml> = raw.iter().map(|d| d as &dyn Aml).collect();
    dsdt.append_slice(&aml_bytes(&aml::Scope::new("\\_SB_".into(), children)));

    Ok(dsdt.as_slice().to_vec())
}

/// Raw AML bytes are AML too: lets already-encoded devices sit in a scope's children.
struct RawAml<'a>(&'a [u8]);

impl Aml for RawAml<'_> {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(self.0);
    }
}

fn serial_device() -> Vec<u8> {
    let base = layout::SERIAL_PORT_BASE;
    let io = aml::IO::new(base, base, 0, layout::SERIAL_PORT_SIZE as u8);
    let irq = edge_high_interrupt(layout::SERIAL_GSI);
    let crs = aml::ResourceTemplate::new(vec![&io, &irq]);
    let hid = aml::EISAName::new("PNP0501");
    let uid: u32 = 0;
    aml_bytes(&aml::Device::new(
        "COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &hid),
            &aml::Name::new("_UID".into(), &uid),
            &aml::Name::new("_CRS".into(), &crs),
        ],
    ))
}

fn keyboard_device() -> Vec<u8> {
    let data = one_port(layout::I8042_DATA_PORT);
    let command = one_port(layout::I8042_COMMAND_PORT);
    let irq = edge_high_interrupt(layout::I8042_KEYBOARD_GSI);
    let crs = aml::ResourceTemplate::new(vec![&data, &command, &irq]);
    let hid = aml::EISAName::new("PNP0303");
    aml_bytes(&aml::Device::new(
        "PS2K".into(),
        vec![
            &aml::Name::new("_HID".into(), &hid),
            &aml::Name::new("_CRS".into(), &crs),
        ],
    ))
}

fn pvpanic_device() -> Vec<u8> {
    let port = one_port(layout::PVPANIC_PORT);
    let crs = aml::ResourceTemplate::new(vec![&port]);
    let hid = "QEMU0001";
    aml_bytes(&aml::Device::new(
        "PEVT".into(),
        vec![
            &aml::Name::new("_HID".into(), &hid),
            &aml::Name::new("_CRS".into(), &crs),
        ],
    ))
}

/// A one-byte I/O port resource.
fn one_port(port: u16) -> aml::IO {
    aml::IO::new(port, port, 0, 1)
}

fn virtio_mmio_device(index: usize, dev: &MmioDeviceInfo) -> Result<Vec<u8>, AcpiError> {
    let above_4g = || AcpiError::DeviceAbove4G {
        addr: dev.addr,
        len: dev.len,
    };
    let addr = u32::try_from(dev.addr).map_err(|_| above_4g())?;
    let len = u32::try_from(dev.len).map_err(|_| above_4g())?;
    let mmio = aml::Memory32Fixed::new(true, addr, len);
    let irq = edge_high_interrupt(dev.gsi);
    let crs = aml::ResourceTemplate::new(vec![&mmio, &irq]);
    let hid = "LNRO0005";
    let uid = index as u32;
    // Four hex digits would not fit a NameSeg; MAX_DSDT_DEVICES keeps `index` to three.
    let name = format!("V{index:03X}");
    Ok(aml_bytes(&aml::Device::new(
        name.as_str().into(),
        vec![
            &aml::Name::new("_HID".into(), &hid),
            &aml::Name::new("_UID".into(), &uid),
            &aml::Name::new("_CRS".into(), &crs),
        ],
    )))
}

/// An extended interrupt descriptor: consumer, edge-triggered, active high, exclusive.
fn edge_high_interrupt(gsi: u32) -> aml::Interrupt {
    aml::Interrupt::new(true, true, false, false, gsi)
}

#[cfg(test)]
mod aml_reader;
#[cfg(test)]
mod tests;
