//! The ACPI tables are written into real guest memory and read back from the bytes, by
//! following the pointers from the RSDP as Linux does; the DSDT's AML is walked with
//! [`super::aml_reader`].

use super::aml_reader::{
    eisa_id_string, parse_dsdt, resources, u16_at, u32_at, u64_at, AmlValue, Namespace, Resource,
    EDGE_HIGH_EXCLUSIVE_CONSUMER,
};
use super::*;
use crate::devices::legacy::acpi_power::{
    decode_sleep_control, sleep_control_value, SleepState, S5_SLEEP_TYPE,
};
use crate::memory::{create_guest_memory, MemoryBacking};
use crate::size::MIB;

fn guest_memory() -> GuestMemoryMmap {
    create_guest_memory(&layout::ram_regions(16 * MIB), MemoryBacking::Anonymous).unwrap()
}

fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
    buf
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
    assert_eq!(iapc & 1, 0, "no undescribed legacy devices");
    assert_ne!(iapc & (1 << 1), 0, "8042 present");

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
            AmlValue::Int(u64::from(S5_SLEEP_TYPE)),
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
    assert_eq!(written, sleep_control_value(S5_SLEEP_TYPE));
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

/// The devices whose `_HID` is `hid` (an EISA ID or a string), by path.
fn devices_with_hid(ns: &Namespace, hid: &str) -> Vec<String> {
    ns.devices
        .iter()
        .filter(|d| match ns.get(&format!("{d}._HID")) {
            Some(AmlValue::Int(id)) => eisa_id_string(*id as u32) == hid,
            Some(AmlValue::Str(id)) => id == hid,
            _ => false,
        })
        .cloned()
        .collect()
}

fn crs_of(ns: &Namespace, device: &str) -> Vec<Resource> {
    let Some(AmlValue::Buffer(crs)) = ns.get(&format!("{device}._CRS")) else {
        panic!("{device} has no _CRS buffer")
    };
    resources(crs)
}

fn one_port(port: u16) -> Resource {
    Resource::Io {
        decode16: true,
        min: port,
        max: port,
        align: 0,
        len: 1,
    }
}

#[test]
fn dsdt_describes_the_keyboard_controller_where_the_i8042_is() {
    let mem = guest_memory();
    let t = parse_tables(&mem, create_acpi_tables(&mem, 1, &devices(2)).unwrap());
    let ns = parse_dsdt(&t.dsdt);
    let keyboards = devices_with_hid(&ns, "PNP0303");
    assert_eq!(keyboards.len(), 1);
    // Linux's i8042 driver takes the data port from the first resource, the command port
    // from the second, and the keyboard's interrupt.
    assert_eq!(
        crs_of(&ns, &keyboards[0]),
        vec![
            one_port(layout::I8042_DATA_PORT),
            one_port(layout::I8042_COMMAND_PORT),
            Resource::ExtendedIrq {
                flags: EDGE_HIGH_EXCLUSIVE_CONSUMER,
                irqs: vec![layout::I8042_KEYBOARD_GSI]
            },
        ]
    );
    assert_eq!(
        u64::from(layout::I8042_COMMAND_PORT - layout::I8042_DATA_PORT),
        crate::devices::legacy::i8042::COMMAND_OFFSET
    );
    // No mouse: the controller has no AUX port.
    assert!(devices_with_hid(&ns, "PNP0F13").is_empty());
}

#[test]
fn dsdt_describes_the_pvpanic_port() {
    let mem = guest_memory();
    let t = parse_tables(&mem, create_acpi_tables(&mem, 1, &[]).unwrap());
    let ns = parse_dsdt(&t.dsdt);
    let pvpanic = devices_with_hid(&ns, "QEMU0001");
    assert_eq!(pvpanic.len(), 1);
    assert!(pvpanic[0].starts_with("\\_SB_."));
    assert_eq!(
        crs_of(&ns, &pvpanic[0]),
        vec![one_port(layout::PVPANIC_PORT)]
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
    let mem =
        create_guest_memory(&layout::ram_regions(512 << 10), MemoryBacking::Anonymous).unwrap();
    assert!(matches!(
        create_acpi_tables(&mem, 1, &[]),
        Err(AcpiError::NotInRam { .. })
    ));
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
