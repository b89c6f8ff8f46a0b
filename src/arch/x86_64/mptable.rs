//! The Intel MultiProcessor Specification (1.4) table: how a kernel without ACPI, or one
//! booted with `acpi=off`, finds the vCPUs, the IOAPIC and the interrupt wiring.
//!
//! A floating pointer structure at `layout::MPTABLE_START` (in the EBDA, one of the places
//! Linux scans for `_MP_`) points at the configuration table right behind it:
//!
//! - one processor entry per vCPU, APIC ID = vCPU index, the boot flag on vCPU 0;
//! - one ISA bus;
//! - the IOAPIC (same ID as in the MADT: [`super::acpi::ioapic_id`]);
//! - an I/O interrupt entry for every IOAPIC pin, ISA IRQ n → pin n, matching KVM's
//!   default GSI routing, with "conforming" polarity and trigger, which for ISA means
//!   edge-triggered and active high — what the serial port and virtio-mmio devices use;
//! - ExtINT on LINT0 and NMI on LINT1 of every local APIC (the virtual-wire set-up).
//!
//! With ACPI tables present Linux prefers the MADT; both describe the same machine.

use std::mem::size_of;

use vm_memory::{ByteValued, Bytes};

use super::acpi::ioapic_id;
use super::layout::{self, MmioDeviceInfo};
use crate::memory::{self, GuestMemoryMmap};

/// The EBDA, and with it the room for the MP table, ends where the legacy video memory
/// starts.
const MPTABLE_END: u64 = 0xa_0000;

const SPEC_REVISION: u8 = 4; // MP spec 1.4
const LAPIC_VERSION: u8 = 0x14; // what KVM's local APIC reports (integrated xAPIC)
const IOAPIC_VERSION: u8 = 0x11; // what KVM's IOAPIC reports
const ISA_BUS_ID: u8 = 0;

// MP spec 1.4 §4.3: entry types.
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

const CPU_FLAG_ENABLED: u8 = 1 << 0;
const CPU_FLAG_BOOT_PROCESSOR: u8 = 1 << 1;
const IOAPIC_FLAG_ENABLED: u8 = 1 << 0;

/// Processor signature and feature flags are informational (Linux ignores them, and the
/// vCPU's real CPUID is set elsewhere): family 6, with an FPU and a local APIC.
const CPU_SIGNATURE: u32 = 6 << 8;
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);

/// Interrupt types of I/O and local interrupt entries.
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Polarity and trigger mode "conforms to the bus": edge and active high on ISA.
const INT_FLAGS_CONFORMING: u16 = 0;
/// A local interrupt entry for every local APIC.
const ALL_LOCAL_APICS: u8 = 0xff;

/// MP floating pointer structure (MP spec 1.4 §4.1).
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
struct MpFloatingPointer {
    signature: [u8; 4],
    config_table_addr: u32,
    length_paragraphs: u8,
    spec_revision: u8,
    checksum: u8,
    /// 0: a configuration table is present (no default configuration).
    feature1: u8,
    /// Bit 7 (IMCRP) clear: no IMCR, the machine runs in virtual wire mode.
    feature2: u8,
    feature3_5: [u8; 3],
}

// SAFETY: a packed struct of integers and byte arrays: no padding, every bit pattern valid.
unsafe impl ByteValued for MpFloatingPointer {}

/// MP configuration table header (MP spec 1.4 §4.2).
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
struct MpConfigHeader {
    signature: [u8; 4],
    base_table_length: u16,
    spec_revision: u8,
    checksum: u8,
    oem_id: [u8; 8],
    product_id: [u8; 12],
    oem_table_addr: u32,
    oem_table_size: u16,
    entry_count: u16,
    lapic_addr: u32,
    extended_table_length: u16,
    extended_table_checksum: u8,
    reserved: u8,
}

// SAFETY: a packed struct of integers and byte arrays: no padding, every bit pattern valid.
unsafe impl ByteValued for MpConfigHeader {}

/// Processor entry (MP spec 1.4 §4.3.1).
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
struct MpProcessor {
    entry_type: u8,
    apic_id: u8,
    apic_version: u8,
    cpu_flags: u8,
    cpu_signature: u32,
    feature_flags: u32,
    reserved: [u8; 8],
}

// SAFETY: a packed struct of integers and byte arrays: no padding, every bit pattern valid.
unsafe impl ByteValued for MpProcessor {}

/// Bus entry (MP spec 1.4 §4.3.2).
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
struct MpBus {
    entry_type: u8,
    bus_id: u8,
    bus_type: [u8; 6],
}

// SAFETY: a packed struct of integers and byte arrays: no padding, every bit pattern valid.
unsafe impl ByteValued for MpBus {}

/// I/O APIC entry (MP spec 1.4 §4.3.3).
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
struct MpIoApic {
    entry_type: u8,
    apic_id: u8,
    apic_version: u8,
    flags: u8,
    addr: u32,
}

// SAFETY: a packed struct of integers: no padding, every bit pattern valid.
unsafe impl ByteValued for MpIoApic {}

/// I/O interrupt assignment and local interrupt assignment entries (MP spec 1.4 §4.3.4-5)
/// share one layout; `dest_apic_input` is an IOAPIC pin or a LINTIN number.
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
struct MpInterrupt {
    entry_type: u8,
    interrupt_type: u8,
    flags: u16,
    source_bus_id: u8,
    source_bus_irq: u8,
    dest_apic_id: u8,
    dest_apic_input: u8,
}

// SAFETY: a packed struct of integers: no padding, every bit pattern valid.
unsafe impl ByteValued for MpInterrupt {}

const _: () = {
    assert!(size_of::<MpFloatingPointer>() == 16);
    assert!(size_of::<MpConfigHeader>() == 44);
    assert!(size_of::<MpProcessor>() == 20);
    assert!(size_of::<MpBus>() == 8);
    assert!(size_of::<MpIoApic>() == 8);
    assert!(size_of::<MpInterrupt>() == 8);
};

/// Everything but the processor entries: floating pointer, header, the bus, the IOAPIC,
/// one I/O interrupt entry per pin and the two local interrupt entries.
const FIXED_SIZE: usize = size_of::<MpFloatingPointer>()
    + size_of::<MpConfigHeader>()
    + size_of::<MpBus>()
    + size_of::<MpIoApic>()
    + layout::IOAPIC_PINS as usize * size_of::<MpInterrupt>()
    + 2 * size_of::<MpInterrupt>();

/// Most vCPUs whose processor entries fit in the EBDA with the rest of the table.
pub const MAX_CPUS: u8 = {
    let room = (MPTABLE_END - layout::MPTABLE_START.0) as usize - FIXED_SIZE;
    let n = room / size_of::<MpProcessor>();
    assert!(n <= super::acpi::MAX_CPUS as usize);
    n as u8
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MptableError {
    #[error("a VM needs at least one vCPU, got 0")]
    NoCpus,
    #[error("{num_cpus} vCPUs do not fit in the MP table in the EBDA: at most {max}")]
    TooManyCpus { num_cpus: u8, max: u8 },
    #[error(
        "virtio-mmio device at {addr:#x} uses GSI {gsi}, but the IOAPIC has only {} pins",
        layout::IOAPIC_PINS
    )]
    GsiOutOfRange { addr: u64, gsi: u32 },
    #[error("the MP table area {start:#x}..{end:#x} is not in guest RAM")]
    NotInRam { start: u64, end: u64 },
    #[error("cannot write the MP table at {addr:#x} to guest memory: {reason}")]
    GuestMemory { addr: u64, reason: String },
}

/// Writes the MP floating pointer and configuration table for `num_cpus` vCPUs at
/// `layout::MPTABLE_START`. `devices` are only checked: every IOAPIC pin already has
/// its interrupt entry, so each device's GSI must be one of them.
pub fn setup_mptable(
    mem: &GuestMemoryMmap,
    num_cpus: u8,
    devices: &[MmioDeviceInfo],
) -> Result<(), MptableError> {
    if num_cpus == 0 {
        return Err(MptableError::NoCpus);
    }
    if num_cpus > MAX_CPUS {
        return Err(MptableError::TooManyCpus {
            num_cpus,
            max: MAX_CPUS,
        });
    }
    if let Some(dev) = devices.iter().find(|d| d.gsi >= layout::IOAPIC_PINS) {
        return Err(MptableError::GsiOutOfRange {
            addr: dev.addr,
            gsi: dev.gsi,
        });
    }

    let (entries, entry_count) = config_entries(num_cpus);
    let table_len = size_of::<MpConfigHeader>() + entries.len();
    let mut header = MpConfigHeader {
        signature: *b"PCMP",
        base_table_length: table_len as u16,
        spec_revision: SPEC_REVISION,
        oem_id: *b"VMM     ",
        product_id: *b"VMM MPTABLE ",
        entry_count,
        lapic_addr: layout::APIC_START as u32,
        ..Default::default()
    };
    header.checksum = checksum(&[header.as_slice(), &entries]);

    let fp_addr = layout::MPTABLE_START.0;
    let table_addr = fp_addr + size_of::<MpFloatingPointer>() as u64;
    let mut fp = MpFloatingPointer {
        signature: *b"_MP_",
        config_table_addr: table_addr as u32,
        length_paragraphs: (size_of::<MpFloatingPointer>() / 16) as u8,
        spec_revision: SPEC_REVISION,
        ..Default::default()
    };
    fp.checksum = checksum(&[fp.as_slice()]);

    let end = table_addr + table_len as u64;
    debug_assert!(end <= MPTABLE_END, "MAX_CPUS keeps the table in the EBDA");
    if !memory::range_in_ram(mem, layout::MPTABLE_START, end - fp_addr) {
        return Err(MptableError::NotInRam {
            start: fp_addr,
            end,
        });
    }
    let mut bytes = Vec::with_capacity((end - fp_addr) as usize);
    bytes.extend_from_slice(fp.as_slice());
    bytes.extend_from_slice(header.as_slice());
    bytes.extend_from_slice(&entries);
    mem.write_slice(&bytes, layout::MPTABLE_START)
        .map_err(|e| MptableError::GuestMemory {
            addr: fp_addr,
            reason: e.to_string(),
        })
}

/// The configuration table's entries, in the order the spec requires (by entry type),
/// and their count.
fn config_entries(num_cpus: u8) -> (Vec<u8>, u16) {
    let mut bytes = Vec::new();
    let mut count = 0u16;
    let mut push = |entry: &[u8]| {
        bytes.extend_from_slice(entry);
        count += 1;
    };

    for cpu in 0..num_cpus {
        let boot = if cpu == 0 { CPU_FLAG_BOOT_PROCESSOR } else { 0 };
        push(
            MpProcessor {
                entry_type: ENTRY_PROCESSOR,
                apic_id: cpu,
                apic_version: LAPIC_VERSION,
                cpu_flags: CPU_FLAG_ENABLED | boot,
                cpu_signature: CPU_SIGNATURE,
                feature_flags: CPU_FEATURES,
                ..Default::default()
            }
            .as_slice(),
        );
    }
    push(
        MpBus {
            entry_type: ENTRY_BUS,
            bus_id: ISA_BUS_ID,
            bus_type: *b"ISA   ",
        }
        .as_slice(),
    );
    let ioapic = ioapic_id(num_cpus);
    push(
        MpIoApic {
            entry_type: ENTRY_IOAPIC,
            apic_id: ioapic,
            apic_version: IOAPIC_VERSION,
            flags: IOAPIC_FLAG_ENABLED,
            addr: layout::IOAPIC_START as u32,
        }
        .as_slice(),
    );
    for pin in 0..layout::IOAPIC_PINS as u8 {
        push(
            MpInterrupt {
                entry_type: ENTRY_IO_INTERRUPT,
                interrupt_type: INT_TYPE_INT,
                flags: INT_FLAGS_CONFORMING,
                source_bus_id: ISA_BUS_ID,
                source_bus_irq: pin,
                dest_apic_id: ioapic,
                dest_apic_input: pin,
            }
            .as_slice(),
        );
    }
    for (lint, interrupt_type) in [(0, INT_TYPE_EXTINT), (1, INT_TYPE_NMI)] {
        push(
            MpInterrupt {
                entry_type: ENTRY_LOCAL_INTERRUPT,
                interrupt_type,
                flags: INT_FLAGS_CONFORMING,
                source_bus_id: ISA_BUS_ID,
                source_bus_irq: 0,
                dest_apic_id: ALL_LOCAL_APICS,
                dest_apic_input: lint,
            }
            .as_slice(),
        );
    }
    (bytes, count)
}

/// The byte that makes `parts` sum to zero.
fn checksum(parts: &[&[u8]]) -> u8 {
    let sum = parts
        .iter()
        .flat_map(|p| p.iter())
        .fold(0u8, |acc, b| acc.wrapping_add(*b));
    0u8.wrapping_sub(sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{create_guest_memory, MemoryBacking};
    use vm_memory::GuestAddress;

    fn guest_memory() -> GuestMemoryMmap {
        create_guest_memory(&layout::ram_regions(16 << 20), MemoryBacking::Anonymous).unwrap()
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
    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
    }

    /// Finds the floating pointer the way Linux does (scanning the last KiB of base
    /// memory on 16-byte boundaries) and returns the configuration table's entries.
    fn parse(mem: &GuestMemoryMmap) -> Vec<Vec<u8>> {
        let scan_start = 639 * 1024;
        let area = read(mem, scan_start, 1024);
        let fp_off = (0..1024)
            .step_by(16)
            .find(|&o| &area[o..o + 4] == b"_MP_")
            .expect("no _MP_ in the last KiB of base memory");
        let fp = &area[fp_off..fp_off + 16];
        assert_eq!(sum(fp), 0, "floating pointer checksum");
        assert_eq!(fp[8], 1, "length in paragraphs");
        assert_eq!(fp[9], 4, "spec revision 1.4");
        assert_eq!(fp[11], 0, "feature1: configuration table present");
        assert_eq!(fp[12] & 0x80, 0, "no IMCR: virtual wire mode");

        let table_addr = u32_at(fp, 4) as u64;
        let header = read(mem, table_addr, 44);
        assert_eq!(&header[0..4], b"PCMP");
        let len = u16_at(&header, 4) as usize;
        assert_eq!(header[6], 4, "spec revision 1.4");
        assert_eq!(u32_at(&header, 36), layout::APIC_START as u32);
        assert_eq!(u16_at(&header, 40), 0, "no extended table");
        assert!(
            table_addr + len as u64 <= MPTABLE_END,
            "table leaves the EBDA"
        );
        let table = read(mem, table_addr, len);
        assert_eq!(sum(&table), 0, "configuration table checksum");

        let mut entries = Vec::new();
        let mut off = 44;
        while off < len {
            let size = if table[off] == ENTRY_PROCESSOR { 20 } else { 8 };
            assert!(
                table[off] <= ENTRY_LOCAL_INTERRUPT,
                "entry type {}",
                table[off]
            );
            entries.push(table[off..off + size].to_vec());
            off += size;
        }
        assert_eq!(off, len, "entries fill the table exactly");
        assert_eq!(u16_at(&header, 34) as usize, entries.len(), "entry count");
        entries
    }

    fn of_type(entries: &[Vec<u8>], kind: u8) -> Vec<&Vec<u8>> {
        entries.iter().filter(|e| e[0] == kind).collect()
    }

    fn check(num_cpus: u8) {
        let mem = guest_memory();
        let devices: Vec<MmioDeviceInfo> = (0..layout::MAX_VIRTIO_MMIO_DEVICES)
            .map(MmioDeviceInfo::slot)
            .collect();
        setup_mptable(&mem, num_cpus, &devices).unwrap();
        let entries = parse(&mem);

        let types: Vec<u8> = entries.iter().map(|e| e[0]).collect();
        assert!(
            types.windows(2).all(|w| w[0] <= w[1]),
            "entries sorted by type"
        );

        let cpus = of_type(&entries, ENTRY_PROCESSOR);
        assert_eq!(cpus.len(), num_cpus as usize);
        for (i, cpu) in cpus.iter().enumerate() {
            assert_eq!(cpu[1] as usize, i, "APIC ID");
            assert_eq!(cpu[2], LAPIC_VERSION);
            assert_ne!(cpu[3] & 1, 0, "enabled");
            assert_eq!(cpu[3] & 2 != 0, i == 0, "only vCPU 0 is the boot processor");
        }

        let buses = of_type(&entries, ENTRY_BUS);
        assert_eq!(buses.len(), 1);
        assert_eq!(&buses[0][2..8], b"ISA   ");
        let isa = buses[0][1];

        let ioapics = of_type(&entries, ENTRY_IOAPIC);
        assert_eq!(ioapics.len(), 1);
        let ioapic = ioapics[0];
        assert_eq!(ioapic[1], ioapic_id(num_cpus));
        assert!(ioapic[1] >= num_cpus, "IOAPIC ID clashes with an APIC ID");
        assert_ne!(ioapic[3] & 1, 0, "IOAPIC enabled");
        assert_eq!(u32_at(ioapic, 4), layout::IOAPIC_START as u32);

        let irqs = of_type(&entries, ENTRY_IO_INTERRUPT);
        assert_eq!(irqs.len(), layout::IOAPIC_PINS as usize);
        for (pin, irq) in irqs.iter().enumerate() {
            assert_eq!(irq[1], INT_TYPE_INT);
            assert_eq!(u16_at(irq, 2), 0, "conforming polarity and trigger");
            assert_eq!((irq[4], irq[5] as usize), (isa, pin), "ISA IRQ = pin");
            assert_eq!((irq[6], irq[7] as usize), (ioapic[1], pin));
        }
        for dev in &devices {
            assert!(irqs.iter().any(|irq| u32::from(irq[7]) == dev.gsi));
        }

        let lints = of_type(&entries, ENTRY_LOCAL_INTERRUPT);
        let lints: Vec<(u8, u8, u8)> = lints.iter().map(|l| (l[1], l[6], l[7])).collect();
        assert_eq!(
            lints,
            vec![(INT_TYPE_EXTINT, 0xff, 0), (INT_TYPE_NMI, 0xff, 1)],
            "ExtINT on LINT0, NMI on LINT1, all local APICs"
        );

        assert_eq!(
            entries.len(),
            num_cpus as usize + 1 + 1 + layout::IOAPIC_PINS as usize + 2
        );
    }

    #[test]
    fn one_vcpu() {
        check(1);
    }

    #[test]
    fn two_vcpus() {
        check(2);
    }

    #[test]
    fn as_many_vcpus_as_fit_in_the_ebda() {
        assert_eq!(MAX_CPUS, 37);
        check(MAX_CPUS);
    }

    #[test]
    fn too_many_or_no_vcpus_are_refused_and_nothing_is_written() {
        let mem = guest_memory();
        assert_eq!(
            setup_mptable(&mem, MAX_CPUS + 1, &[]),
            Err(MptableError::TooManyCpus {
                num_cpus: MAX_CPUS + 1,
                max: MAX_CPUS
            })
        );
        assert_eq!(setup_mptable(&mem, 0, &[]), Err(MptableError::NoCpus));
        let ebda = read(&mem, layout::MPTABLE_START.0, 1024);
        assert!(ebda.iter().all(|&b| b == 0));
    }

    #[test]
    fn devices_on_missing_pins_are_refused() {
        let mem = guest_memory();
        let dev = MmioDeviceInfo {
            gsi: layout::IOAPIC_PINS,
            ..MmioDeviceInfo::slot(0)
        };
        assert_eq!(
            setup_mptable(&mem, 1, &[dev]),
            Err(MptableError::GsiOutOfRange {
                addr: dev.addr,
                gsi: dev.gsi
            })
        );
    }

    #[test]
    fn ebda_outside_ram_is_refused() {
        let mem =
            create_guest_memory(&layout::ram_regions(512 << 10), MemoryBacking::Anonymous).unwrap();
        assert!(matches!(
            setup_mptable(&mem, 1, &[]),
            Err(MptableError::NotInRam { .. })
        ));
    }
}
