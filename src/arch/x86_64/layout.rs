//! The guest physical memory map and the fixed resources of the machine.
//!
//! | guest physical address      | what                                            |
//! |-----------------------------|-------------------------------------------------|
//! | `0x0000_0500`               | GDT                                             |
//! | `0x0000_0520`               | IDT (empty)                                     |
//! | `0x0000_7000`               | zero page (`boot_params`)                       |
//! | `0x0000_8000`..`0x0000_9000`| boot stack                                      |
//! | `0x0000_9000`               | PML4, then PDPT at `0xa000`, PDs at `0xb000`..  |
//! | `0x0002_0000`               | kernel command line                             |
//! | `0x0009_fc00`..`0x000a_0000`| MP table (EBDA)                                 |
//! | `0x000e_0000`..`0x0010_0000`| ACPI tables, starting with the RSDP             |
//! | `0x0010_0000`               | kernel (bzImage protected-mode part)            |
//! | top of RAM below 3 GiB      | initrd                                          |
//! | `0xc000_0000`..`4 GiB`      | MMIO hole: virtio-mmio windows, IOAPIC, LAPIC   |
//! | `0xd000_0000` + 4 KiB × n   | virtio-mmio device n                            |
//! | `0xfec0_0000`               | IOAPIC                                          |
//! | `0xfee0_0000`               | local APICs                                     |
//! | `4 GiB`..                   | RAM beyond the first 3 GiB                      |

use vm_memory::GuestAddress;

/// The GDT the vCPU starts with.
pub const BOOT_GDT_START: GuestAddress = GuestAddress(0x500);
/// The (empty) IDT the vCPU starts with.
pub const BOOT_IDT_START: GuestAddress = GuestAddress(0x520);
/// The Linux zero page, `struct boot_params`.
pub const ZERO_PAGE_START: GuestAddress = GuestAddress(0x7000);
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: GuestAddress = GuestAddress(0x8ff0);
/// Identity-mapping page tables for the first 4 GiB: PML4, PDPT, then four PDs.
pub const PML4_START: GuestAddress = GuestAddress(0x9000);
pub const PDPTE_START: GuestAddress = GuestAddress(0xa000);
pub const PDE_START: GuestAddress = GuestAddress(0xb000);
/// The kernel command line.
pub const CMDLINE_START: GuestAddress = GuestAddress(0x20000);
/// Longest command line accepted (x86 `COMMAND_LINE_SIZE`).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// End of conventional low memory; above it sits the EBDA with the MP table.
pub const EBDA_START: GuestAddress = GuestAddress(0x9fc00);
/// Start of the MP table, in the EBDA where Linux looks for it.
pub const MPTABLE_START: GuestAddress = EBDA_START;
/// The legacy BIOS area where Linux may scan for the RSDP.
pub const ACPI_START: GuestAddress = GuestAddress(0xe0000);
/// End of the legacy BIOS area (exclusive).
pub const ACPI_END: GuestAddress = GuestAddress(0x10_0000);
/// Where the protected-mode kernel is loaded (1 MiB).
pub const HIMEM_START: GuestAddress = GuestAddress(0x10_0000);

/// Start of the MMIO hole below 4 GiB; RAM below 4 GiB ends here.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the MMIO hole (4 GiB).
pub const MMIO_GAP_END: u64 = 1 << 32;
/// RAM that does not fit below the MMIO hole continues here.
pub const HIGH_RAM_START: GuestAddress = GuestAddress(MMIO_GAP_END);

/// First virtio-mmio window; device `n` is at `VIRTIO_MMIO_START + n * VIRTIO_MMIO_SIZE`.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// Size of one virtio-mmio window.
pub const VIRTIO_MMIO_SIZE: u64 = crate::devices::virtio::mmio::MMIO_WINDOW_SIZE;
/// First GSI given to a virtio-mmio device; device `n` gets `VIRTIO_MMIO_FIRST_GSI + n`.
pub const VIRTIO_MMIO_FIRST_GSI: u32 = 5;
/// Number of IOAPIC pins, hence the highest usable GSI + 1.
pub const IOAPIC_PINS: u32 = 24;

pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const APIC_START: u64 = 0xfee0_0000;

/// COM1, the console.
pub const SERIAL_PORT_BASE: u16 = 0x3f8;
pub const SERIAL_PORT_SIZE: u16 = 8;
pub const SERIAL_GSI: u32 = 4;
/// The i8042 keyboard controller (data at 0x60, command/status at 0x64).
pub const I8042_PORT_BASE: u16 = 0x60;
pub const I8042_PORT_SIZE: u16 = 5;
pub const I8042_DATA_PORT: u16 = I8042_PORT_BASE;
pub const I8042_COMMAND_PORT: u16 = I8042_PORT_BASE + 4;
/// The keyboard interrupt, IRQ 1 as on every PC.
pub const I8042_KEYBOARD_GSI: u32 = 1;

/// The pvpanic port, where QEMU has it (the guest finds it through the DSDT).
pub const PVPANIC_PORT: u16 = 0x505;

/// Hardware-reduced ACPI sleep control register (FADT `SLEEP_CONTROL_REG`), one byte.
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x600;
/// Hardware-reduced ACPI sleep status register (FADT `SLEEP_STATUS_REG`), one byte.
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x601;

/// Base address and GSI of the `index`-th virtio-mmio device.
pub fn virtio_mmio_slot(index: u32) -> (u64, u32) {
    (
        VIRTIO_MMIO_START + u64::from(index) * VIRTIO_MMIO_SIZE,
        VIRTIO_MMIO_FIRST_GSI + index,
    )
}

/// How many virtio-mmio devices fit in the IOAPIC's pins.
pub const MAX_VIRTIO_MMIO_DEVICES: u32 = IOAPIC_PINS - VIRTIO_MMIO_FIRST_GSI;

/// The RAM regions for a guest of `mem_size` bytes: up to 3 GiB below the MMIO hole,
/// the rest from 4 GiB.
pub fn ram_regions(mem_size: u64) -> Vec<(GuestAddress, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(GuestAddress(0), mem_size)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START),
            (HIGH_RAM_START, mem_size - MMIO_GAP_START),
        ]
    }
}

/// Describes one virtio-mmio device for the firmware tables and the command line
/// ([`super::cmdline`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDeviceInfo {
    /// Guest physical base of the register window.
    pub addr: u64,
    /// Size of the register window.
    pub len: u64,
    /// The GSI (IOAPIC pin) the device interrupts on; edge-triggered, active high.
    pub gsi: u32,
}

impl MmioDeviceInfo {
    /// The `index`-th virtio-mmio slot.
    pub fn slot(index: u32) -> Self {
        let (addr, gsi) = virtio_mmio_slot(index);
        MmioDeviceInfo {
            addr,
            len: VIRTIO_MMIO_SIZE,
            gsi,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guests_fit_below_the_hole() {
        assert_eq!(ram_regions(512 << 20), vec![(GuestAddress(0), 512 << 20)]);
        assert_eq!(
            ram_regions(MMIO_GAP_START),
            vec![(GuestAddress(0), MMIO_GAP_START)]
        );
    }

    #[test]
    fn large_guests_continue_above_4g() {
        let regions = ram_regions(5 << 30);
        assert_eq!(
            regions,
            vec![
                (GuestAddress(0), MMIO_GAP_START),
                (HIGH_RAM_START, (5 << 30) - MMIO_GAP_START)
            ]
        );
        let total: u64 = regions.iter().map(|r| r.1).sum();
        assert_eq!(total, 5 << 30);
    }

    #[test]
    fn regions_of_whole_2m_pages_start_and_end_on_2m_pages() {
        // What the huge-page backings need: every region (and so every memfd offset, the
        // sum of the regions before it) a whole number of 2 MiB pages at a 2 MiB address.
        const HUGE: u64 = 2 << 20;
        for mem_size in [
            64 << 20,
            MMIO_GAP_START - HUGE,
            MMIO_GAP_START,
            (5 << 30) + HUGE,
        ] {
            for (addr, len) in ram_regions(mem_size) {
                assert_eq!(addr.0 % HUGE, 0, "{mem_size:#x}: {addr:?}");
                assert_eq!(len % HUGE, 0, "{mem_size:#x}: {len:#x}");
            }
        }
    }

    #[test]
    fn mmio_slots_do_not_overlap_ram_or_apics() {
        for i in 0..MAX_VIRTIO_MMIO_DEVICES {
            let dev = MmioDeviceInfo::slot(i);
            assert!(dev.addr >= MMIO_GAP_START && dev.addr + dev.len <= IOAPIC_START);
            assert!(dev.gsi < IOAPIC_PINS && dev.gsi != SERIAL_GSI);
            assert_ne!(dev.gsi, I8042_KEYBOARD_GSI);
        }
    }
}
