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
//! - DSDT, with `\_S5_` (so Linux can power off), COM1, and one `LNRO0005` device per
//!   virtio-mmio window (the only way a stock Debian kernel finds them).
//!
//! The sleep control register format lives here too ([`decode_sleep_control`]), so that
//! the port device that implements it and the `\_S5_` package announced here cannot
//! drift apart.

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
// Deliberately not set:
// - LEGACY_DEVICES (bit 0): the one ISA device the guest needs, COM1, is in the DSDT.
// - 8042 (bit 1): without it Linux's i8042 driver does not probe the controller (saving
//   boot time and log noise); `reboot` still resets through port 0x64, which the kernel
//   writes directly, and through the FADT reset register below.
const IAPC_BOOT_ARCH: u16 =
    IAPC_VGA_NOT_PRESENT | IAPC_MSI_NOT_SUPPORTED | IAPC_CMOS_RTC_NOT_PRESENT;

/// The i8042 command port and the command that pulses the CPU reset line: the FADT reset
/// register, so that an ACPI reboot (Linux's first choice) resets the VM the same way
/// `reboot=k` does.
const RESET_PORT: u16 = layout::I8042_PORT_BASE + 4;
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

// The hardware-reduced sleep control and status registers (ACPI 6.5 §4.8.3.7-8), as
// ACPICA's `acpi_hw_extended_sleep` uses them: it writes WAK_STS to the status register,
// then `(SLP_TYP << 2) & 0x1c | SLP_EN` to the control register.
/// `SLP_EN` in the sleep control register: enter the state in `SLP_TYP`.
pub const SLEEP_CONTROL_SLP_EN: u8 = 1 << 5;
/// `SLP_TYP` occupies bits 2-4 of the sleep control register.
pub const SLEEP_CONTROL_SLP_TYP_SHIFT: u8 = 2;
pub const SLEEP_CONTROL_SLP_TYP_MASK: u8 = 0b111 << SLEEP_CONTROL_SLP_TYP_SHIFT;
/// `WAK_STS` in the sleep status register; the guest writes it (write-1-to-clear) before
/// it sleeps. Reading the status register as 0 is correct for a machine that never wakes.
pub const SLEEP_STATUS_WAK_STS: u8 = 1 << 7;

const _: () = assert!(
    layout::ACPI_S5_SLEEP_TYPE <= SLEEP_CONTROL_SLP_TYP_MASK >> SLEEP_CONTROL_SLP_TYP_SHIFT,
    "the S5 sleep type must fit in the 3-bit SLP_TYP field"
);

/// A sleep state the guest asked for through the sleep control register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SleepState {
    /// S5, soft off: the guest has shut down and the VM should stop.
    SoftOff,
}

/// The byte a guest writes to the sleep control register to enter the sleep state whose
/// `\_Sx` package announces `slp_typ`.
pub const fn sleep_control_value(slp_typ: u8) -> u8 {
    ((slp_typ << SLEEP_CONTROL_SLP_TYP_SHIFT) & SLEEP_CONTROL_SLP_TYP_MASK) | SLEEP_CONTROL_SLP_EN
}

/// What a write of `value` to the sleep control register (`layout::ACPI_SLEEP_CONTROL_PORT`)
/// asks for: `Some` only if `SLP_EN` is set and `SLP_TYP` is a state the DSDT announces.
/// Reserved bits are ignored, as the specification asks.
pub fn decode_sleep_control(value: u8) -> Option<SleepState> {
    if value & SLEEP_CONTROL_SLP_EN == 0 {
        return None;
    }
    let slp_typ = (value & SLEEP_CONTROL_SLP_TYP_MASK) >> SLEEP_CONTROL_SLP_TYP_SHIFT;
    (slp_typ == layout::ACPI_S5_SLEEP_TYPE).then_some(SleepState::SoftOff)
}

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
/// Name (\_S5, Package { ACPI_S5_SLEEP_TYPE, 0, 0, 0 })
/// Scope (\_SB) {
///     Device (COM1) { _HID EisaId("PNP0501"), _UID 0,
///                     _CRS { IO (Decode16, 0x3f8, 0x3f8, 0, 8), Interrupt (..) { 4 } } }
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
fn create_dsdt(devices: &[MmioDeviceInfo]) -> Result<Vec<u8>, AcpiError> {
    let mut dsdt = Sdt::new(
        *b"DSDT",
        SDT_HEADER_LEN,
        DSDT_REVISION,
        OEM_ID,
        *b"VMMDSDT ",
        OEM_REVISION,
    );

    let s5_type = layout::ACPI_S5_SLEEP_TYPE;
    let s5 = aml::Package::new(vec![&s5_type, &aml::ZERO, &aml::ZERO, &aml::ZERO]);
    dsdt.append_slice(&aml_bytes(&aml::Name::new("\\_S5_".into(), &s5)));

    let com1 = serial_device();
    let virtio: Vec<Vec<u8>> = devices
        .iter()
        .enumerate()
        .map(|(index, dev)| virtio_mmio_device(index, dev))
        .collect::<Result<_, _>>()?;
    let raw: Vec<RawAml> = std::iter::once(&com1)
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
mod tests {
    use super::*;
    use crate::memory::{create_guest_memory, MemoryBacking};

    const MIB: u64 = 1 << 20;

    fn guest_memory() -> GuestMemoryMmap {
        create_guest_memory(16 * MIB, MemoryBacking::Anonymous).unwrap()
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
    }
    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }
    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
    }

    /// Reads the SDT at `addr` (length from its header) and checks its checksum.
    fn read_sdt(mem: &GuestMemoryMmap, addr: u64, signature: &[u8; 4]) -> Vec<u8> {
        let header = read(mem, addr, 36);
        assert_eq!(&header[0..4], signature, "signature at {addr:#x}");
        let len = u32_at(&header, 4) as usize;
        assert!(len >= 36);
        let table = read(mem, addr, len);
        assert_eq!(
            sum(&table),
            0,
            "checksum of {}",
            String::from_utf8_lossy(signature)
        );
        assert!(addr + len as u64 <= layout::ACPI_END.0);
        table
    }

    /// Every table, found by following the pointers from the RSDP as Linux does.
    struct Tables {
        rsdp: Vec<u8>,
        xsdt_entries: Vec<u64>,
        fadt: Vec<u8>,
        fadt_addr: u64,
        madt: Vec<u8>,
        dsdt: Vec<u8>,
        dsdt_addr: u64,
    }

    fn parse_tables(mem: &GuestMemoryMmap, rsdp_addr: GuestAddress) -> Tables {
        let rsdp = read(mem, rsdp_addr.0, 36);
        assert_eq!(&rsdp[0..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[0..20]), 0, "RSDP 20-byte checksum");
        assert_eq!(rsdp[15], 2, "RSDP revision");
        assert_eq!(u32_at(&rsdp, 20), 36, "RSDP length");
        assert_eq!(sum(&rsdp), 0, "RSDP extended checksum");
        let xsdt_addr = u64_at(&rsdp, 24);

        let xsdt = read_sdt(mem, xsdt_addr, b"XSDT");
        let xsdt_entries: Vec<u64> = (36..xsdt.len())
            .step_by(8)
            .map(|o| u64_at(&xsdt, o))
            .collect();
        let find = |sig: &[u8; 4]| -> u64 {
            let found: Vec<u64> = xsdt_entries
                .iter()
                .copied()
                .filter(|&a| &read(mem, a, 4)[..] == sig)
                .collect();
            assert_eq!(
                found.len(),
                1,
                "one {} in the XSDT",
                String::from_utf8_lossy(sig)
            );
            found[0]
        };
        let fadt_addr = find(b"FACP");
        let madt_addr = find(b"APIC");
        let fadt = read_sdt(mem, fadt_addr, b"FACP");
        let madt = read_sdt(mem, madt_addr, b"APIC");
        let dsdt_addr = u64_at(&fadt, 140);
        let dsdt = read_sdt(mem, dsdt_addr, b"DSDT");
        Tables {
            rsdp,
            xsdt_entries,
            fadt,
            fadt_addr,
            madt,
            dsdt,
            dsdt_addr,
        }
    }

    fn devices(n: u32) -> Vec<MmioDeviceInfo> {
        (0..n).map(MmioDeviceInfo::slot).collect()
    }

    #[test]
    fn rsdp_points_at_xsdt_which_lists_fadt_and_madt() {
        let mem = guest_memory();
        let rsdp_addr = create_acpi_tables(&mem, 2, &devices(2)).unwrap();
        assert_eq!(rsdp_addr, layout::ACPI_START);
        let t = parse_tables(&mem, rsdp_addr);
        assert_eq!(&t.rsdp[9..15], &OEM_ID);
        assert_eq!(t.xsdt_entries.len(), 2);
        // The RSDP is where Linux's legacy scan also finds it: 16-byte aligned in 0xe0000..
        assert_eq!(rsdp_addr.0 % 16, 0);
        assert!(t.fadt_addr > rsdp_addr.0 && t.dsdt_addr > rsdp_addr.0);
    }

    #[test]
    fn fadt_is_hardware_reduced_with_sleep_registers() {
        let mem = guest_memory();
        let rsdp_addr = create_acpi_tables(&mem, 1, &[]).unwrap();
        let t = parse_tables(&mem, rsdp_addr);
        let f = &t.fadt;
        assert_eq!(f.len(), 276, "ACPI 6.x FADT length");
        assert_eq!(f[8], 6, "FADT major revision");
        assert_eq!(f[131], 5, "FADT minor revision");
        assert_eq!(u32_at(f, 40), 0, "32-bit DSDT pointer unused");
        assert_eq!(u64_at(f, 140), t.dsdt_addr, "X_DSDT");
        assert_eq!(u32_at(f, 36), 0, "no FACS");
        assert_eq!(u64_at(f, 132), 0, "no X_FACS");

        let flags = u32_at(f, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 4), 0, "no fixed power button");
        assert_ne!(flags & (1 << 5), 0, "no fixed sleep button");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");

        let iapc = u16_at(f, 109);
        assert_ne!(iapc & (1 << 2), 0, "VGA not present");
        assert_ne!(iapc & (1 << 3), 0, "MSI not supported");
        assert_ne!(iapc & (1 << 5), 0, "CMOS RTC not present");
        assert_eq!(iapc & 0b11, 0, "no legacy devices, no 8042 advertised");

        // No SCI, no PM timer, no PM1/GPE blocks.
        assert_eq!(u16_at(f, 46), 0, "SCI_INT");
        assert_eq!(u32_at(f, 76), 0, "PM_TMR_BLK");
        assert!(f[148..244].iter().all(|&b| b == 0), "X_PM*/X_GPE* blocks");

        let gas = |off: usize| {
            (
                f[off],
                f[off + 1],
                f[off + 2],
                f[off + 3],
                u64_at(f, off + 4),
            )
        };
        // Space 1 = System I/O, 8 bits wide, offset 0, byte access.
        assert_eq!(
            gas(244),
            (1, 8, 0, 1, u64::from(layout::ACPI_SLEEP_CONTROL_PORT)),
            "SLEEP_CONTROL_REG"
        );
        assert_eq!(
            gas(256),
            (1, 8, 0, 1, u64::from(layout::ACPI_SLEEP_STATUS_PORT)),
            "SLEEP_STATUS_REG"
        );
        assert_eq!(gas(116), (1, 8, 0, 1, 0x64), "RESET_REG");
        assert_eq!(f[128], 0xfe, "RESET_VALUE");
        assert_eq!(&f[268..276], &HYPERVISOR_VENDOR_ID);
    }

    /// The MADT's entries as (type, bytes).
    fn madt_entries(madt: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut entries = Vec::new();
        let mut off = 44;
        while off < madt.len() {
            let (kind, len) = (madt[off], madt[off + 1] as usize);
            assert!(
                len >= 2 && off + len <= madt.len(),
                "entry at {off} overruns"
            );
            entries.push((kind, madt[off..off + len].to_vec()));
            off += len;
        }
        entries
    }

    fn check_madt(num_cpus: u8) {
        let mem = guest_memory();
        let rsdp_addr = create_acpi_tables(&mem, num_cpus, &devices(3)).unwrap();
        let t = parse_tables(&mem, rsdp_addr);
        assert_eq!(u32_at(&t.madt, 36), layout::APIC_START as u32);
        assert_eq!(u32_at(&t.madt, 40), MADT_PCAT_COMPAT);
        let entries = madt_entries(&t.madt);

        let lapics: Vec<&Vec<u8>> = entries.iter().filter(|e| e.0 == 0).map(|e| &e.1).collect();
        assert_eq!(lapics.len(), num_cpus as usize);
        for (i, lapic) in lapics.iter().enumerate() {
            assert_eq!(lapic.len(), 8);
            assert_eq!(lapic[2] as usize, i, "processor UID");
            assert_eq!(lapic[3] as usize, i, "APIC ID");
            assert_eq!(u32_at(lapic, 4), 1, "enabled");
        }

        let ioapics: Vec<&Vec<u8>> = entries.iter().filter(|e| e.0 == 1).map(|e| &e.1).collect();
        assert_eq!(ioapics.len(), 1);
        let ioapic = ioapics[0];
        assert_eq!(ioapic.len(), 12);
        assert_eq!(ioapic[2], ioapic_id(num_cpus));
        assert!(
            ioapic[2] >= num_cpus && ioapic[2] != 0xff,
            "IOAPIC ID clashes"
        );
        assert_eq!(u32_at(ioapic, 4), layout::IOAPIC_START as u32);
        assert_eq!(u32_at(ioapic, 8), 0, "GSI base");

        assert_eq!(
            entries.len(),
            num_cpus as usize + 1,
            "only LAPICs and the IOAPIC"
        );
    }

    #[test]
    fn madt_has_one_enabled_lapic_per_vcpu_and_the_ioapic() {
        for n in [1, 2, 7, MAX_CPUS] {
            check_madt(n);
        }
    }

    #[test]
    fn cpu_counts_out_of_range_are_refused() {
        let mem = guest_memory();
        assert_eq!(create_acpi_tables(&mem, 0, &[]), Err(AcpiError::NoCpus));
        assert_eq!(
            create_acpi_tables(&mem, 255, &[]),
            Err(AcpiError::TooManyCpus(255))
        );
    }

    // ---- A small AML reader, enough for the DSDT we generate. ----

    #[derive(Debug, Clone, PartialEq)]
    enum AmlValue {
        Int(u64),
        Str(String),
        Buffer(Vec<u8>),
        Package(Vec<AmlValue>),
    }

    /// Named objects by absolute path (`\_SB_.V000._HID`), and the device paths.
    #[derive(Default, Debug)]
    struct Namespace {
        names: Vec<(String, AmlValue)>,
        devices: Vec<String>,
    }

    impl Namespace {
        fn get(&self, path: &str) -> Option<&AmlValue> {
            self.names.iter().find(|(p, _)| p == path).map(|(_, v)| v)
        }
    }

    /// Returns (length, bytes used by the encoding).
    fn pkg_length(b: &[u8]) -> (usize, usize) {
        let lead = b[0];
        let follow = (lead >> 6) as usize;
        if follow == 0 {
            return ((lead & 0x3f) as usize, 1);
        }
        let mut len = (lead & 0x0f) as usize;
        for i in 0..follow {
            len |= (b[1 + i] as usize) << (4 + 8 * i);
        }
        (len, 1 + follow)
    }

    /// Returns (segments, is_root, bytes used).
    fn name_string(b: &[u8]) -> (Vec<String>, bool, usize) {
        let mut i = 0;
        let root = b[0] == b'\\';
        if root {
            i += 1;
        }
        assert_ne!(b[i], b'^', "parent prefixes are not expected");
        let count = match b[i] {
            0x00 => {
                return (vec![], root, i + 1);
            }
            0x2e => {
                i += 1;
                2
            }
            0x2f => {
                i += 2;
                b[i - 1] as usize
            }
            _ => 1,
        };
        let segs = (0..count)
            .map(|k| String::from_utf8(b[i + 4 * k..i + 4 * k + 4].to_vec()).unwrap())
            .collect();
        (segs, root, i + 4 * count)
    }

    fn join(scope: &[String], segs: Vec<String>, root: bool) -> Vec<String> {
        let mut path = if root { vec![] } else { scope.to_vec() };
        path.extend(segs);
        path
    }

    fn path_string(path: &[String]) -> String {
        format!("\\{}", path.join("."))
    }

    /// Parses one data object; returns it and the bytes it took.
    fn data_object(b: &[u8]) -> (AmlValue, usize) {
        match b[0] {
            0x00 => (AmlValue::Int(0), 1),
            0x01 => (AmlValue::Int(1), 1),
            0xff => (AmlValue::Int(u64::MAX), 1),
            0x0a => (AmlValue::Int(b[1] as u64), 2),
            0x0b => (AmlValue::Int(u16_at(b, 1) as u64), 3),
            0x0c => (AmlValue::Int(u32_at(b, 1) as u64), 5),
            0x0e => (AmlValue::Int(u64_at(b, 1)), 9),
            0x0d => {
                let end = b[1..].iter().position(|&c| c == 0).unwrap() + 1;
                (
                    AmlValue::Str(String::from_utf8(b[1..end].to_vec()).unwrap()),
                    end + 1,
                )
            }
            0x11 => {
                let (len, used) = pkg_length(&b[1..]);
                let end = 1 + len;
                let (size, size_used) = data_object(&b[1 + used..]);
                let AmlValue::Int(size) = size else {
                    panic!("buffer size is not an integer")
                };
                let data = b[1 + used + size_used..end].to_vec();
                assert_eq!(data.len() as u64, size, "buffer size matches its bytes");
                (AmlValue::Buffer(data), end)
            }
            0x12 => {
                let (len, used) = pkg_length(&b[1..]);
                let end = 1 + len;
                let count = b[1 + used] as usize;
                let mut off = 2 + used;
                let mut elements = Vec::new();
                while off < end {
                    let (v, n) = data_object(&b[off..end]);
                    elements.push(v);
                    off += n;
                }
                assert_eq!(elements.len(), count, "package element count");
                (AmlValue::Package(elements), end)
            }
            op => panic!("unexpected AML data opcode {op:#x}"),
        }
    }

    fn term_list(b: &[u8], scope: &[String], ns: &mut Namespace) {
        let mut off = 0;
        while off < b.len() {
            match b[off] {
                0x08 => {
                    let (segs, root, used) = name_string(&b[off + 1..]);
                    let path = join(scope, segs, root);
                    let (value, n) = data_object(&b[off + 1 + used..]);
                    ns.names.push((path_string(&path), value));
                    off += 1 + used + n;
                }
                0x10 => {
                    let (len, used) = pkg_length(&b[off + 1..]);
                    let end = off + 1 + len;
                    let (segs, root, n) = name_string(&b[off + 1 + used..]);
                    let path = join(scope, segs, root);
                    term_list(&b[off + 1 + used + n..end], &path, ns);
                    off = end;
                }
                0x5b if b[off + 1] == 0x82 => {
                    let (len, used) = pkg_length(&b[off + 2..]);
                    let end = off + 2 + len;
                    let (segs, root, n) = name_string(&b[off + 2 + used..]);
                    let path = join(scope, segs, root);
                    ns.devices.push(path_string(&path));
                    term_list(&b[off + 2 + used + n..end], &path, ns);
                    off = end;
                }
                op => panic!("unexpected AML opcode {op:#x} at {off}"),
            }
        }
        assert_eq!(off, b.len(), "term list overran its package");
    }

    fn parse_dsdt(dsdt: &[u8]) -> Namespace {
        let mut ns = Namespace::default();
        term_list(&dsdt[36..], &[], &mut ns);
        ns
    }

    #[derive(Debug, PartialEq)]
    enum Resource {
        Memory32Fixed {
            writeable: bool,
            base: u32,
            len: u32,
        },
        ExtendedIrq {
            flags: u8,
            irqs: Vec<u32>,
        },
        Io {
            decode16: bool,
            min: u16,
            max: u16,
            align: u8,
            len: u8,
        },
    }

    /// Decodes a resource template up to its end tag.
    fn resources(b: &[u8]) -> Vec<Resource> {
        let mut out = Vec::new();
        let mut off = 0;
        loop {
            let tag = b[off];
            if tag & 0x80 != 0 {
                let len = u16_at(b, off + 1) as usize;
                let d = &b[off + 3..off + 3 + len];
                match tag {
                    0x86 => {
                        assert_eq!(len, 9);
                        out.push(Resource::Memory32Fixed {
                            writeable: d[0] & 1 != 0,
                            base: u32_at(d, 1),
                            len: u32_at(d, 5),
                        });
                    }
                    0x89 => {
                        let count = d[1] as usize;
                        assert_eq!(len, 2 + 4 * count);
                        out.push(Resource::ExtendedIrq {
                            flags: d[0],
                            irqs: (0..count).map(|k| u32_at(d, 2 + 4 * k)).collect(),
                        });
                    }
                    other => panic!("unexpected large resource {other:#x}"),
                }
                off += 3 + len;
            } else {
                let (kind, len) = (tag >> 3, (tag & 7) as usize);
                let d = &b[off + 1..off + 1 + len];
                match kind {
                    0x08 => out.push(Resource::Io {
                        decode16: d[0] & 1 != 0,
                        min: u16_at(d, 1),
                        max: u16_at(d, 3),
                        align: d[5],
                        len: d[6],
                    }),
                    0x0f => {
                        assert_eq!(off + 2, b.len(), "end tag ends the template");
                        return out;
                    }
                    other => panic!("unexpected small resource {other:#x}"),
                }
                off += 1 + len;
            }
        }
    }

    /// Consumer, edge-triggered, active high, exclusive.
    const EDGE_HIGH_EXCLUSIVE_CONSUMER: u8 = 0b0011;

    fn eisa_id_string(id: u32) -> String {
        let v = id.swap_bytes();
        let c = |shift: u32| (((v >> shift) & 0x1f) as u8 + 0x40) as char;
        format!("{}{}{}{:04X}", c(26), c(21), c(16), v & 0xffff)
    }

    #[test]
    fn dsdt_has_s5_matching_the_sleep_control_decoder() {
        let mem = guest_memory();
        let t = parse_tables(&mem, create_acpi_tables(&mem, 1, &[]).unwrap());
        let ns = parse_dsdt(&t.dsdt);
        let Some(AmlValue::Package(s5)) = ns.get("\\_S5_") else {
            panic!("no \\_S5_ package: {ns:?}")
        };
        assert_eq!(
            s5,
            &vec![
                AmlValue::Int(u64::from(layout::ACPI_S5_SLEEP_TYPE)),
                AmlValue::Int(0),
                AmlValue::Int(0),
                AmlValue::Int(0)
            ]
        );
        // What Linux writes for S5 (SLP_TYP from \_S5_ in bits 2-4, SLP_EN in bit 5)
        // decodes as power-off.
        let AmlValue::Int(slp_typ) = s5[0] else {
            unreachable!()
        };
        let written = ((slp_typ as u8) << 2) & 0x1c | 0x20;
        assert_eq!(decode_sleep_control(written), Some(SleepState::SoftOff));
        assert_eq!(written, sleep_control_value(layout::ACPI_S5_SLEEP_TYPE));
    }

    #[test]
    fn dsdt_describes_each_virtio_mmio_device() {
        let devs = vec![
            MmioDeviceInfo::slot(0),
            MmioDeviceInfo::slot(1),
            MmioDeviceInfo::slot(layout::MAX_VIRTIO_MMIO_DEVICES - 1),
            MmioDeviceInfo {
                addr: 0xfebf_f000,
                len: 0x1000,
                gsi: layout::IOAPIC_PINS - 1,
            },
        ];
        let mem = guest_memory();
        let t = parse_tables(&mem, create_acpi_tables(&mem, 4, &devs).unwrap());
        let ns = parse_dsdt(&t.dsdt);

        let virtio: Vec<&String> = ns
            .devices
            .iter()
            .filter(|d| ns.get(&format!("{d}._HID")) == Some(&AmlValue::Str("LNRO0005".into())))
            .collect();
        assert_eq!(virtio.len(), devs.len());
        for (index, dev) in devs.iter().enumerate() {
            let path = virtio
                .iter()
                .find(|d| ns.get(&format!("{d}._UID")) == Some(&AmlValue::Int(index as u64)))
                .unwrap_or_else(|| panic!("no LNRO0005 with _UID {index}"));
            assert!(path.starts_with("\\_SB_."), "{path} under \\_SB");
            let Some(AmlValue::Buffer(crs)) = ns.get(&format!("{path}._CRS")) else {
                panic!("{path} has no _CRS buffer")
            };
            assert_eq!(
                resources(crs),
                vec![
                    Resource::Memory32Fixed {
                        writeable: true,
                        base: dev.addr as u32,
                        len: dev.len as u32
                    },
                    Resource::ExtendedIrq {
                        flags: EDGE_HIGH_EXCLUSIVE_CONSUMER,
                        irqs: vec![dev.gsi]
                    },
                ],
                "{path}"
            );
        }
    }

    #[test]
    fn dsdt_describes_com1() {
        let mem = guest_memory();
        let t = parse_tables(&mem, create_acpi_tables(&mem, 1, &devices(1)).unwrap());
        let ns = parse_dsdt(&t.dsdt);
        let com1: Vec<&String> = ns
            .devices
            .iter()
            .filter(|d| match ns.get(&format!("{d}._HID")) {
                Some(AmlValue::Int(id)) => eisa_id_string(*id as u32) == "PNP0501",
                _ => false,
            })
            .collect();
        assert_eq!(com1.len(), 1);
        let Some(AmlValue::Buffer(crs)) = ns.get(&format!("{}._CRS", com1[0])) else {
            panic!("COM1 has no _CRS")
        };
        assert_eq!(
            resources(crs),
            vec![
                Resource::Io {
                    decode16: true,
                    min: layout::SERIAL_PORT_BASE,
                    max: layout::SERIAL_PORT_BASE,
                    align: 0,
                    len: layout::SERIAL_PORT_SIZE as u8
                },
                Resource::ExtendedIrq {
                    flags: EDGE_HIGH_EXCLUSIVE_CONSUMER,
                    irqs: vec![layout::SERIAL_GSI]
                },
            ]
        );
    }

    #[test]
    fn tables_that_do_not_fit_are_refused_before_anything_is_written() {
        let mem = guest_memory();
        let many: Vec<MmioDeviceInfo> = (0..4000)
            .map(|i| MmioDeviceInfo {
                addr: layout::VIRTIO_MMIO_START + i * layout::VIRTIO_MMIO_SIZE,
                len: layout::VIRTIO_MMIO_SIZE,
                gsi: layout::VIRTIO_MMIO_FIRST_GSI,
            })
            .collect();
        let err = create_acpi_tables(&mem, 1, &many).unwrap_err();
        let AcpiError::TooLarge {
            size, available, ..
        } = err
        else {
            panic!("expected TooLarge, got {err:?}")
        };
        assert!(size > available);
        assert_eq!(available, layout::ACPI_END.0 - layout::ACPI_START.0);
        assert!(read(&mem, layout::ACPI_START.0, 64).iter().all(|&b| b == 0));
    }

    #[test]
    fn devices_acpi_cannot_describe_are_refused() {
        let mem = guest_memory();
        let high = MmioDeviceInfo {
            addr: 1 << 32,
            len: 0x1000,
            gsi: 5,
        };
        assert_eq!(
            create_acpi_tables(&mem, 1, &[high]),
            Err(AcpiError::DeviceAbove4G {
                addr: 1 << 32,
                len: 0x1000
            })
        );
        let straddling = MmioDeviceInfo {
            addr: 0xffff_f000,
            len: 0x2000,
            gsi: 5,
        };
        assert!(matches!(
            create_acpi_tables(&mem, 1, &[straddling]),
            Err(AcpiError::DeviceAbove4G { .. })
        ));
        let bad_gsi = MmioDeviceInfo {
            gsi: layout::IOAPIC_PINS,
            ..MmioDeviceInfo::slot(0)
        };
        assert_eq!(
            create_acpi_tables(&mem, 1, &[bad_gsi]),
            Err(AcpiError::GsiOutOfRange {
                addr: layout::VIRTIO_MMIO_START,
                gsi: layout::IOAPIC_PINS
            })
        );
        assert_eq!(
            create_acpi_tables(
                &mem,
                1,
                &vec![MmioDeviceInfo::slot(0); MAX_DSDT_DEVICES + 1]
            ),
            Err(AcpiError::TooManyDevices(MAX_DSDT_DEVICES + 1))
        );
    }

    #[test]
    fn acpi_area_outside_ram_is_refused() {
        // 512 KiB of RAM ends below the ACPI area.
        let mem = create_guest_memory(512 << 10, MemoryBacking::Anonymous).unwrap();
        assert!(matches!(
            create_acpi_tables(&mem, 1, &[]),
            Err(AcpiError::NotInRam { .. })
        ));
    }

    #[test]
    fn sleep_control_decoding() {
        let s5 = sleep_control_value(layout::ACPI_S5_SLEEP_TYPE);
        assert_eq!(s5, (layout::ACPI_S5_SLEEP_TYPE << 2) | 0x20);
        assert_eq!(decode_sleep_control(s5), Some(SleepState::SoftOff));
        // Reserved bits 0-1 and 6-7 are ignored.
        assert_eq!(decode_sleep_control(s5 | 0xc3), Some(SleepState::SoftOff));
        // SLP_TYP without SLP_EN does nothing.
        assert_eq!(decode_sleep_control(s5 & !SLEEP_CONTROL_SLP_EN), None);
        // The WAK_STS clear that precedes the sleep (written to the status register, but
        // harmless here too) and sleep types the DSDT does not announce are not S5.
        assert_eq!(decode_sleep_control(SLEEP_STATUS_WAK_STS), None);
        for typ in (0..8).filter(|&t| t != layout::ACPI_S5_SLEEP_TYPE) {
            assert_eq!(
                decode_sleep_control(sleep_control_value(typ)),
                None,
                "type {typ}"
            );
        }
    }

    #[test]
    fn tables_stay_in_the_acpi_area_and_do_not_overlap() {
        let mem = guest_memory();
        let t = parse_tables(
            &mem,
            create_acpi_tables(&mem, MAX_CPUS, &devices(19)).unwrap(),
        );
        let mut spans = vec![(layout::ACPI_START.0, t.rsdp.len() as u64)];
        let xsdt_addr = u64_at(&t.rsdp, 24);
        let xsdt_len = 36 + 8 * t.xsdt_entries.len() as u64;
        spans.push((xsdt_addr, xsdt_len));
        spans.push((t.fadt_addr, t.fadt.len() as u64));
        spans.push((t.xsdt_entries[1], t.madt.len() as u64));
        spans.push((t.dsdt_addr, t.dsdt.len() as u64));
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "{w:x?} overlap");
        }
        let last = spans.last().unwrap();
        assert!(last.0 + last.1 <= layout::ACPI_END.0);
    }
}
