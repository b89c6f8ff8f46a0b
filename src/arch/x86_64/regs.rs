//! The state the boot vCPU starts in: long mode with identity-mapped page tables, a flat
//! GDT, the 64-bit boot protocol's registers (RSI = zero page), the FPU, the MSRs Linux
//! expects a firmware to have set, and the local APIC's LINT pins.

use kvm_bindings::{
    kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs,
};
use vm_memory::{Address, Bytes, GuestAddress};

use super::layout;
use crate::memory::GuestMemoryMmap;

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("cannot write the boot {0} to guest memory")]
    GuestWrite(&'static str),
    #[error("too many MSRs for one KVM_SET_MSRS call")]
    MsrList,
}

// Control register and EFER bits.
const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

// Page table entry bits.
const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITABLE: u64 = 1 << 1;
const PDE_PAGE_SIZE: u64 = 1 << 7;

/// GDT selectors: entry index × 8.
pub const CODE_SELECTOR: u16 = 1 << 3;
pub const DATA_SELECTOR: u16 = 2 << 3;
pub const TSS_SELECTOR: u16 = 3 << 3;

/// The boot GDT: null, 64-bit code, data, TSS. Flags/access are packed as
/// `flags << 12 | access` the way `gdt_entry` spreads them.
const BOOT_GDT: [u64; 4] = [
    0,
    gdt_entry(0xa09b, 0, 0xfffff), // code: present, ring 0, exec/read, L=1, G=1
    gdt_entry(0xc093, 0, 0xfffff), // data: present, ring 0, read/write, D/B=1, G=1
    gdt_entry(0x808b, 0, 0xfffff), // TSS: present, busy 64-bit TSS, G=1
];

/// Encodes a segment descriptor.
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// Decodes a descriptor from the GDT into the form KVM takes.
fn kvm_segment_from_gdt(entry: u64, table_index: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit_raw = (entry & 0xffff) | ((entry >> 32) & 0x000f_0000);
    let granularity = ((entry >> 55) & 1) as u8;
    let limit = if granularity == 1 {
        (limit_raw << 12) | 0xfff
    } else {
        limit_raw
    };
    kvm_segment {
        base,
        limit: limit as u32,
        selector: table_index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granularity,
        avl: ((entry >> 52) & 1) as u8,
        padding: 0,
        unusable: u8::from(((entry >> 47) & 1) == 0),
    }
}

/// Writes the GDT, IDT and page tables the boot vCPU uses and fills in `sregs` to match:
/// protected mode, paging, PAE and long mode, with the first 4 GiB identity-mapped in
/// 2 MiB pages (the boot protocol asks for the kernel, zero page and command line to be
/// mapped; mapping all of low memory keeps the initrd reachable too).
pub fn setup_sregs(mem: &GuestMemoryMmap, sregs: &mut kvm_sregs) -> Result<(), RegsError> {
    for (i, entry) in BOOT_GDT.iter().enumerate() {
        mem.write_obj(*entry, layout::BOOT_GDT_START.unchecked_add(i as u64 * 8))
            .map_err(|_| RegsError::GuestWrite("GDT"))?;
    }
    mem.write_obj(0u64, layout::BOOT_IDT_START)
        .map_err(|_| RegsError::GuestWrite("IDT"))?;

    let code = kvm_segment_from_gdt(BOOT_GDT[1], 1);
    let data = kvm_segment_from_gdt(BOOT_GDT[2], 2);
    let tss = kvm_segment_from_gdt(BOOT_GDT[3], 3);
    sregs.gdt.base = layout::BOOT_GDT_START.raw_value();
    sregs.gdt.limit = (BOOT_GDT.len() * 8 - 1) as u16;
    sregs.idt.base = layout::BOOT_IDT_START.raw_value();
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    write_page_tables(mem)?;
    sregs.cr3 = layout::PML4_START.raw_value();
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    Ok(())
}

/// PML4 → one PDPT → four page directories of 2 MiB pages, covering 0..4 GiB.
fn write_page_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    let err = |_| RegsError::GuestWrite("page tables");
    mem.write_obj(
        layout::PDPTE_START.raw_value() | PTE_PRESENT | PTE_WRITABLE,
        layout::PML4_START,
    )
    .map_err(err)?;
    for dir in 0..4u64 {
        let pd = layout::PDE_START.unchecked_add(dir * 0x1000);
        mem.write_obj(
            pd.raw_value() | PTE_PRESENT | PTE_WRITABLE,
            layout::PDPTE_START.unchecked_add(dir * 8),
        )
        .map_err(err)?;
        for entry in 0..512u64 {
            let phys = (dir << 30) | (entry << 21);
            mem.write_obj(
                phys | PTE_PRESENT | PTE_WRITABLE | PDE_PAGE_SIZE,
                pd.unchecked_add(entry * 8),
            )
            .map_err(err)?;
        }
    }
    Ok(())
}

/// General registers for the 64-bit boot protocol: RIP at the entry point, RSI pointing
/// at the zero page, a stack, and interrupts off.
pub fn boot_regs(entry: GuestAddress) -> kvm_regs {
    kvm_regs {
        rflags: 0x2, // bit 1 is reserved and always set
        rip: entry.raw_value(),
        rsp: layout::BOOT_STACK_POINTER.raw_value(),
        rbp: layout::BOOT_STACK_POINTER.raw_value(),
        rsi: layout::ZERO_PAGE_START.raw_value(),
        ..Default::default()
    }
}

/// The FPU as after `FNINIT`, with SSE exceptions masked.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default type write-back: all RAM is cacheable as a BIOS would leave it.
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;

/// The MSRs a firmware would leave initialised. The TSC is left alone: KVM starts every
/// vCPU's TSC in step, and writing it per vCPU would make them drift apart.
pub fn boot_msrs() -> Result<Msrs, RegsError> {
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    Msrs::from_entries(&[
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        entry(MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
    ])
    .map_err(|_| RegsError::MsrList)
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[offset + i] as u8);
    u32::from_le_bytes(bytes)
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().iter().enumerate() {
        lapic.regs[offset + i] = *byte as _;
    }
}

/// Wires LINT0 as ExtINT (the legacy PIC) and LINT1 as NMI, as a BIOS does (virtual wire
/// mode); Linux relies on it when it checks the timer and for NMIs.
pub fn set_lint_pins(lapic: &mut kvm_lapic_state) {
    let delivery_mode = |reg: u32, mode: u32| (reg & !0x700) | (mode << 8);
    let lvt0 = lapic_reg(lapic, APIC_LVT0);
    set_lapic_reg(lapic, APIC_LVT0, delivery_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = lapic_reg(lapic, APIC_LVT1);
    set_lapic_reg(lapic, APIC_LVT1, delivery_mode(lvt1, APIC_MODE_NMI));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{create_guest_memory, MemoryBacking};

    #[test]
    fn gdt_entries_decode_to_flat_long_mode_segments() {
        let code = kvm_segment_from_gdt(BOOT_GDT[1], 1);
        assert_eq!(
            (code.base, code.limit, code.selector),
            (0, 0xffff_ffff, CODE_SELECTOR)
        );
        assert_eq!(
            (code.l, code.db, code.present, code.s, code.type_),
            (1, 0, 1, 1, 0xb)
        );
        let data = kvm_segment_from_gdt(BOOT_GDT[2], 2);
        assert_eq!(
            (data.l, data.db, data.type_, data.selector),
            (0, 1, 0x3, DATA_SELECTOR)
        );
        let tss = kvm_segment_from_gdt(BOOT_GDT[3], 3);
        assert_eq!((tss.s, tss.type_, tss.selector), (0, 0xb, TSS_SELECTOR));
        assert_eq!(kvm_segment_from_gdt(0, 0).unusable, 1);
    }

    #[test]
    fn sregs_enter_long_mode_with_identity_mapping() {
        let mem =
            create_guest_memory(&layout::ram_regions(16 << 20), MemoryBacking::Anonymous).unwrap();
        let mut sregs = kvm_sregs::default();
        setup_sregs(&mem, &mut sregs).unwrap();
        assert_eq!(
            sregs.cr0 & (X86_CR0_PE | X86_CR0_PG),
            X86_CR0_PE | X86_CR0_PG
        );
        assert_ne!(sregs.cr4 & X86_CR4_PAE, 0);
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(sregs.cr3, layout::PML4_START.raw_value());

        // Walk the tables for a few addresses, as the MMU would.
        for addr in [0u64, 0x10_0000, 0x7fe0_0000, 0xbfff_f000, 0xffe0_0000] {
            let pml4e: u64 = mem
                .read_obj(GuestAddress(sregs.cr3 + ((addr >> 39) & 511) * 8))
                .unwrap();
            let pdpt = pml4e & !0xfff;
            let pdpte: u64 = mem
                .read_obj(GuestAddress(pdpt + ((addr >> 30) & 511) * 8))
                .unwrap();
            let pd = pdpte & !0xfff;
            let pde: u64 = mem
                .read_obj(GuestAddress(pd + ((addr >> 21) & 511) * 8))
                .unwrap();
            assert_ne!(pde & PDE_PAGE_SIZE, 0);
            assert_eq!((pde & !0x1f_ffff) | (addr & 0x1f_ffff), addr);
        }
    }

    #[test]
    fn boot_registers_follow_the_64bit_protocol() {
        let regs = boot_regs(GuestAddress(0x10_0200));
        assert_eq!(regs.rip, 0x10_0200);
        assert_eq!(regs.rsi, layout::ZERO_PAGE_START.raw_value());
        assert_eq!(regs.rflags & (1 << 9), 0, "interrupts must start disabled");
        assert_eq!(boot_msrs().unwrap().as_slice().len(), 10);
    }

    #[test]
    fn lint_pins_are_extint_and_nmi() {
        let mut lapic = kvm_lapic_state::default();
        set_lapic_reg(&mut lapic, APIC_LVT0, 0x0001_0700);
        set_lint_pins(&mut lapic);
        assert_eq!((lapic_reg(&lapic, APIC_LVT0) >> 8) & 7, APIC_MODE_EXTINT);
        assert_eq!(
            lapic_reg(&lapic, APIC_LVT0) & 0x1_0000,
            0x1_0000,
            "mask bit kept"
        );
        assert_eq!((lapic_reg(&lapic, APIC_LVT1) >> 8) & 7, APIC_MODE_NMI);
    }
}
