//! Loading a Linux bzImage and telling it about the machine: the zero page
//! (`struct boot_params`), the e820 memory map, the command line and the initrd.
//!
//! The kernel is entered through its 64-bit entry point (`code32_start + 0x200`), as the
//! x86 boot protocol (Documentation/x86/boot.rst) allows for a loader that sets up long
//! mode itself; [`super::regs`] does that.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{bzimage::BzImage, load_cmdline, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::cmdline::cmdline_len;
use super::layout;
use crate::memory::GuestMemoryMmap;

/// e820 entry types.
pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

/// `HdrS`, the boot protocol signature in the setup header.
const BOOT_HEADER_MAGIC: u32 = 0x5372_6448;
/// The kernel has a 64-bit entry point at `code32_start + 0x200`.
const XLF_KERNEL_64: u16 = 1 << 0;
/// Offset of the 64-bit entry point from the protected-mode kernel's start.
const KERNEL_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// `loadflags`: the protected-mode code is loaded at 0x100000.
const LOADED_HIGH: u8 = 1 << 0;
/// `loadflags`: `heap_end_ptr` is valid.
const CAN_USE_HEAP: u8 = 1 << 7;
/// `type_of_loader`: "undefined" loader, as the boot protocol asks of loaders without an ID.
const UNDEFINED_LOADER: u8 = 0xff;
/// Oldest boot protocol we accept: 2.12 added `xloadflags` (64-bit entry) — 2012's Linux 3.8.
const MIN_BOOT_PROTOCOL: u16 = 0x020c;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open kernel {path}: {source}")]
    KernelOpen {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a Linux bzImage (no \"HdrS\" boot header at offset 0x202)")]
    NotBzImage { path: String },
    #[error("{path} is a bzImage with boot protocol {major}.{minor}; vmm needs 2.12 or newer (Linux 3.8+)")]
    OldBootProtocol {
        path: String,
        major: u16,
        minor: u16,
    },
    #[error("{path} has no 64-bit entry point; vmm boots only x86_64 kernels")]
    Not64Bit { path: String },
    #[error("cannot load kernel {path} into guest memory: {reason}")]
    KernelLoad { path: String, reason: String },
    #[error("cannot read initrd {path}: {source}")]
    InitrdOpen {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "initrd {path} ({size} bytes) does not fit in guest memory; give the guest more --mem"
    )]
    InitrdTooLarge { path: String, size: u64 },
    #[error("cannot write {what} to guest memory")]
    GuestWrite { what: &'static str },
}

/// Where the kernel went, for setting up the boot vCPU.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// The 64-bit entry point.
    pub entry: GuestAddress,
    /// Where the protected-mode kernel starts.
    pub load_addr: GuestAddress,
    /// The lowest address above which the kernel leaves memory alone while it
    /// decompresses: its preferred load address (or where it was loaded, if higher) plus
    /// `init_size`.
    pub decompress_end: u64,
    setup_header: linux_loader::loader::bootparam::setup_header,
}

/// Opens `path` and checks it is a bzImage vmm can boot, so that each way a file can be
/// wrong gets its own sentence (the loader's errors are too terse for a user). Cheap
/// enough to run before anything else is set up.
pub fn check_kernel(path: &Path) -> Result<File, BootError> {
    open_kernel(path).map(|(file, _)| file)
}

/// [`check_kernel`], also returning the setup header it read.
fn open_kernel(
    path: &Path,
) -> Result<(File, linux_loader::loader::bootparam::setup_header), BootError> {
    let display = path.display().to_string();
    let mut file = File::open(path).map_err(|source| BootError::KernelOpen {
        path: display.clone(),
        source,
    })?;
    let header = read_setup_header(&mut file).ok_or_else(|| BootError::NotBzImage {
        path: display.clone(),
    })?;
    if header.header != BOOT_HEADER_MAGIC {
        return Err(BootError::NotBzImage { path: display });
    }
    let version = header.version;
    if version < MIN_BOOT_PROTOCOL {
        return Err(BootError::OldBootProtocol {
            path: display,
            major: version >> 8,
            minor: version & 0xff,
        });
    }
    if header.xloadflags & XLF_KERNEL_64 == 0 || header.loadflags & LOADED_HIGH == 0 {
        return Err(BootError::Not64Bit { path: display });
    }
    file.seek(SeekFrom::Start(0))
        .map_err(|source| BootError::KernelOpen {
            path: display,
            source,
        })?;
    Ok((file, header))
}

/// Where the protected-mode kernel goes: a relocatable kernel at its preferred address
/// (16 MiB for x86_64's default `CONFIG_PHYSICAL_START`), any other at
/// [`layout::HIMEM_START`] (1 MiB), where the boot protocol puts it.
///
/// Either way the kernel decompresses itself at its preferred address. Loaded at 1 MiB,
/// the compressed image it leaves behind (about 13 MiB of Debian's kernel) is memory the
/// guest then frees below 16 MiB, in its DMA zone, where free page reporting never looks:
/// the host keeps it resident for the guest's whole life (docs/performance.md, "Where an
/// idle guest's slack is"). Loaded at its preferred address, the image sits inside the
/// region the kernel decompresses into, and the memory below 16 MiB is never written.
fn kernel_load_address(header: &linux_loader::loader::bootparam::setup_header) -> GuestAddress {
    let pref = header.pref_address;
    let align = u64::from(header.kernel_alignment);
    let usable = header.relocatable_kernel != 0
        && pref > layout::HIMEM_START.raw_value()
        && pref < u64::from(u32::MAX)
        && (align == 0 || pref % align == 0);
    if usable {
        GuestAddress(pref)
    } else {
        layout::HIMEM_START
    }
}

/// Loads the bzImage at `path` at [`kernel_load_address`].
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, BootError> {
    let display = path.display().to_string();
    let (mut file, header) = open_kernel(path)?;
    let load_addr = kernel_load_address(&header);
    let result = BzImage::load(mem, Some(load_addr), &mut file, Some(layout::HIMEM_START))
        .map_err(|e| BootError::KernelLoad {
            path: display.clone(),
            reason: e.to_string(),
        })?;
    let setup_header = result
        .setup_header
        .ok_or(BootError::NotBzImage { path: display })?;
    Ok(LoadedKernel {
        entry: result.kernel_load.unchecked_add(KERNEL_64BIT_ENTRY_OFFSET),
        load_addr: result.kernel_load,
        decompress_end: result
            .kernel_load
            .raw_value()
            .max(setup_header.pref_address)
            .saturating_add(u64::from(setup_header.init_size)),
        setup_header,
    })
}

fn read_setup_header(file: &mut File) -> Option<linux_loader::loader::bootparam::setup_header> {
    use std::io::Read;
    use vm_memory::ByteValued;
    let mut header = linux_loader::loader::bootparam::setup_header::default();
    file.seek(SeekFrom::Start(0x1f1)).ok()?;
    file.read_exact(header.as_mut_slice()).ok()?;
    Some(header)
}

/// Where the initrd went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedInitrd {
    pub addr: GuestAddress,
    pub size: u64,
}

/// Loads the initrd at `path` as high as possible in RAM below 4 GiB (and below the
/// kernel's `initrd_addr_max`), above the memory the kernel needs to decompress.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    path: &Path,
) -> Result<LoadedInitrd, BootError> {
    let display = path.display().to_string();
    let mut file = File::open(path).map_err(|source| BootError::InitrdOpen {
        path: display.clone(),
        source,
    })?;
    let size = file
        .metadata()
        .map_err(|source| BootError::InitrdOpen {
            path: display.clone(),
            source,
        })?
        .len();
    let too_large = || BootError::InitrdTooLarge {
        path: display.clone(),
        size,
    };
    let low_ram_end = mem
        .find_region(GuestAddress(0))
        .map(|r| r.start_addr().raw_value() + r.len())
        .ok_or_else(too_large)?;
    let addr_max = u64::from(kernel.setup_header.initrd_addr_max).max(1) + 1;
    let top = low_ram_end.min(addr_max);
    let lowest = kernel.decompress_end;
    let addr = top
        .checked_sub(size)
        .map(|a| a & !(crate::size::PAGE_SIZE - 1))
        .filter(|&a| a >= lowest && size > 0)
        .ok_or_else(too_large)?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| BootError::InitrdOpen {
            path: display,
            source: std::io::Error::other(e.to_string()),
        })?;
    Ok(LoadedInitrd {
        addr: GuestAddress(addr),
        size,
    })
}

/// One e820 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The e820 map: low RAM below the EBDA, the EBDA (MP table) and BIOS area (ACPI)
/// reserved, then RAM from 1 MiB up to the MMIO hole, and RAM above 4 GiB if any.
pub fn e820_map(mem: &GuestMemoryMmap) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: layout::EBDA_START.raw_value(),
            kind: E820_RAM,
        },
        E820Entry {
            addr: layout::EBDA_START.raw_value(),
            size: 0xa0000 - layout::EBDA_START.raw_value(),
            kind: E820_RESERVED,
        },
        E820Entry {
            addr: layout::ACPI_START.raw_value(),
            size: layout::ACPI_END.raw_value() - layout::ACPI_START.raw_value(),
            kind: E820_RESERVED,
        },
    ];
    for region in mem.iter() {
        let start = region
            .start_addr()
            .raw_value()
            .max(layout::HIMEM_START.raw_value());
        let end = region.start_addr().raw_value() + region.len();
        if end > start {
            map.push(E820Entry {
                addr: start,
                size: end - start,
                kind: E820_RAM,
            });
        }
    }
    map
}

/// Writes `cmdline` (built by [`super::cmdline::kernel_cmdline`], which checked its length)
/// to [`layout::CMDLINE_START`], ending in a NUL, and returns its length without the NUL
/// for [`write_boot_params`].
pub fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &Cmdline) -> Result<usize, BootError> {
    load_cmdline(mem, layout::CMDLINE_START, cmdline).map_err(|_| BootError::GuestWrite {
        what: "the command line",
    })?;
    Ok(cmdline_len(cmdline))
}

/// Builds the zero page from the kernel's setup header and writes it to
/// [`layout::ZERO_PAGE_START`].
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline_len: usize,
    initrd: Option<LoadedInitrd>,
    rsdp: Option<GuestAddress>,
) -> Result<(), BootError> {
    let params = build_boot_params(mem, kernel, cmdline_len, initrd, rsdp);
    mem.write_obj(params, layout::ZERO_PAGE_START)
        .map_err(|_| BootError::GuestWrite {
            what: "the zero page",
        })
}

fn build_boot_params(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline_len: usize,
    initrd: Option<LoadedInitrd>,
    rsdp: Option<GuestAddress>,
) -> boot_params {
    let mut params = boot_params {
        hdr: kernel.setup_header,
        ..Default::default()
    };
    params.hdr.type_of_loader = UNDEFINED_LOADER;
    params.hdr.loadflags |= CAN_USE_HEAP;
    // The setup code's heap is unused with a 64-bit entry, but the field must be sane.
    params.hdr.heap_end_ptr = 0xfe00;
    params.hdr.cmd_line_ptr = layout::CMDLINE_START.raw_value() as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = initrd.addr.raw_value() as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
        params.ext_ramdisk_size = (initrd.size >> 32) as u32;
    }
    if let Some(rsdp) = rsdp {
        params.acpi_rsdp_addr = rsdp.raw_value();
    }
    let map = e820_map(mem);
    for (slot, entry) in params.e820_table.iter_mut().zip(map.iter()) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind,
        };
    }
    params.e820_entries = map.len().min(params.e820_table.len()) as u8;
    params
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{create_guest_memory, MemoryBacking};
    use crate::size::MIB;
    use std::io::Write;

    /// A minimal file that passes as a bzImage: a setup header with the fields the loader
    /// checks, followed by a few bytes of "kernel".
    fn fake_bzimage(xloadflags: u16, version: u16) -> tempfile_like::TempFile {
        let mut image = vec![0u8; 5 * 512 + 4096];
        image[0x1f1] = 4; // setup_sects: 4 sectors + boot sector
        image[0x202..0x206].copy_from_slice(&BOOT_HEADER_MAGIC.to_le_bytes());
        image[0x206..0x208].copy_from_slice(&version.to_le_bytes());
        image[0x211] = LOADED_HIGH;
        image[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
        image[0x22c..0x230].copy_from_slice(&0x37ff_ffffu32.to_le_bytes()); // initrd_addr_max
        image[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
        image[0x260..0x264].copy_from_slice(&(8 * MIB as u32).to_le_bytes()); // init_size
        image[5 * 512..].fill(0xcc);
        tempfile_like::TempFile::with_contents(&image)
    }

    mod tempfile_like {
        use super::*;
        use std::path::PathBuf;
        use std::sync::atomic::{AtomicUsize, Ordering};

        pub struct TempFile(pub PathBuf);
        impl TempFile {
            pub fn with_contents(bytes: &[u8]) -> Self {
                static N: AtomicUsize = AtomicUsize::new(0);
                let path = std::env::temp_dir().join(format!(
                    "vmm-boot-test-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                let mut f = File::create(&path).unwrap();
                f.write_all(bytes).unwrap();
                TempFile(path)
            }
        }
        impl Drop for TempFile {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn loads_a_64bit_bzimage_that_is_not_relocatable_at_1mib() {
        let mem =
            create_guest_memory(&layout::ram_regions(64 * MIB), MemoryBacking::Anonymous).unwrap();
        let image = fake_bzimage(XLF_KERNEL_64, 0x020f);
        let kernel = load_kernel(&mem, &image.0).unwrap();
        assert_eq!(kernel.load_addr, layout::HIMEM_START);
        assert_eq!(kernel.entry, GuestAddress(0x10_0200));
        assert_eq!(kernel.decompress_end, 0x10_0000 + 8 * MIB);
        let byte: u8 = mem.read_obj(layout::HIMEM_START).unwrap();
        assert_eq!(byte, 0xcc);
    }

    /// A relocatable image with a preferred address (`pref_address`) and alignment.
    fn fake_relocatable_bzimage(pref_address: u64, alignment: u32) -> tempfile_like::TempFile {
        let image = fake_bzimage(XLF_KERNEL_64, 0x020f);
        let mut bytes = std::fs::read(&image.0).unwrap();
        bytes[0x230..0x234].copy_from_slice(&alignment.to_le_bytes()); // kernel_alignment
        bytes[0x234] = 1; // relocatable_kernel
        bytes[0x258..0x260].copy_from_slice(&pref_address.to_le_bytes());
        tempfile_like::TempFile::with_contents(&bytes)
    }

    #[test]
    fn loads_a_relocatable_bzimage_at_its_preferred_address_and_leaves_low_memory_alone() {
        let mem =
            create_guest_memory(&layout::ram_regions(64 * MIB), MemoryBacking::Anonymous).unwrap();
        let image = fake_relocatable_bzimage(16 * MIB, 2 * MIB as u32);
        let kernel = load_kernel(&mem, &image.0).unwrap();
        assert_eq!(kernel.load_addr, GuestAddress(16 * MIB));
        assert_eq!(kernel.entry, GuestAddress(16 * MIB + 0x200));
        assert_eq!(kernel.decompress_end, 16 * MIB + 8 * MIB);
        let loaded: u8 = mem.read_obj(GuestAddress(16 * MIB)).unwrap();
        assert_eq!(loaded, 0xcc);
        let low: u8 = mem.read_obj(layout::HIMEM_START).unwrap();
        assert_eq!(low, 0, "nothing written at 1 MiB");
        // The zero page tells the kernel where it is.
        let params = build_boot_params(&mem, &kernel, 0, None, None);
        let code32_start = params.hdr.code32_start;
        assert_eq!(u64::from(code32_start), 16 * MIB);
    }

    #[test]
    fn a_relocatable_bzimage_with_an_unusable_preferred_address_goes_to_1mib() {
        let mem =
            create_guest_memory(&layout::ram_regions(64 * MIB), MemoryBacking::Anonymous).unwrap();
        for (pref, align) in [(16 * MIB + 4096, 2 * MIB as u32), (0, 2 * MIB as u32)] {
            let image = fake_relocatable_bzimage(pref, align);
            let kernel = load_kernel(&mem, &image.0).unwrap();
            assert_eq!(
                kernel.load_addr,
                layout::HIMEM_START,
                "pref_address {pref:#x}"
            );
        }
    }

    #[test]
    fn refuses_files_that_are_not_64bit_bzimages() {
        let mem =
            create_guest_memory(&layout::ram_regions(64 * MIB), MemoryBacking::Anonymous).unwrap();
        let text = tempfile_like::TempFile::with_contents(b"#!/bin/sh\necho not a kernel\n");
        let err = load_kernel(&mem, &text.0).unwrap_err();
        assert!(matches!(err, BootError::NotBzImage { .. }), "{err}");
        assert!(err.to_string().contains("is not a Linux bzImage"));

        let zeros = tempfile_like::TempFile::with_contents(&[0u8; 8192]);
        assert!(matches!(
            load_kernel(&mem, &zeros.0),
            Err(BootError::NotBzImage { .. })
        ));

        let no64 = fake_bzimage(0, 0x020f);
        assert!(matches!(
            load_kernel(&mem, &no64.0),
            Err(BootError::Not64Bit { .. })
        ));

        let old = fake_bzimage(XLF_KERNEL_64, 0x0206);
        let err = load_kernel(&mem, &old.0).unwrap_err();
        assert!(err.to_string().contains("2.6"), "{err}");

        let missing = std::path::Path::new("/nonexistent/bzImage");
        let err = load_kernel(&mem, missing).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/bzImage"), "{err}");
    }

    #[test]
    fn initrd_goes_high_and_too_large_is_refused() {
        let mem =
            create_guest_memory(&layout::ram_regions(64 * MIB), MemoryBacking::Anonymous).unwrap();
        let image = fake_bzimage(XLF_KERNEL_64, 0x020f);
        let kernel = load_kernel(&mem, &image.0).unwrap();
        let initrd = tempfile_like::TempFile::with_contents(&vec![0x5a; 10_000]);
        let loaded = load_initrd(&mem, &kernel, &initrd.0).unwrap();
        assert_eq!(loaded.size, 10_000);
        assert_eq!(loaded.addr.raw_value() % 4096, 0);
        assert!(loaded.addr.raw_value() + 10_000 <= 64 * MIB);
        assert!(loaded.addr.raw_value() >= 64 * MIB - 16384);
        let byte: u8 = mem.read_obj(loaded.addr).unwrap();
        assert_eq!(byte, 0x5a);

        let big = tempfile_like::TempFile::with_contents(&vec![0; 60 * MIB as usize]);
        let err = load_initrd(&mem, &kernel, &big.0).unwrap_err();
        assert!(matches!(err, BootError::InitrdTooLarge { .. }), "{err}");
    }

    #[test]
    fn e820_has_a_hole_for_mmio_and_ram_above_4g() {
        let mem =
            create_guest_memory(&layout::ram_regions(5 << 30), MemoryBacking::Anonymous).unwrap();
        let map = e820_map(&mem);
        let ram: Vec<_> = map.iter().filter(|e| e.kind == E820_RAM).collect();
        assert_eq!(ram[0].addr, 0);
        assert_eq!(ram[1].addr, 1 << 20);
        assert_eq!(ram[1].addr + ram[1].size, layout::MMIO_GAP_START);
        assert_eq!(ram[2].addr, 1 << 32);
        assert_eq!(ram[2].size, (5 << 30) - layout::MMIO_GAP_START);
        // Entries are sorted and never overlap.
        for pair in map.windows(2) {
            assert!(pair[0].addr + pair[0].size <= pair[1].addr, "{map:?}");
        }
        // RAM totals what was asked, minus the legacy holes below 1 MiB.
        let total: u64 = ram.iter().map(|e| e.size).sum();
        assert_eq!(
            total,
            (5 << 30) - (0x10_0000 - layout::EBDA_START.raw_value())
        );
    }

    #[test]
    fn boot_params_carry_cmdline_initrd_rsdp_and_e820() {
        let mem =
            create_guest_memory(&layout::ram_regions(64 * MIB), MemoryBacking::Anonymous).unwrap();
        let image = fake_bzimage(XLF_KERNEL_64, 0x020f);
        let kernel = load_kernel(&mem, &image.0).unwrap();
        let mut cmdline = Cmdline::new(layout::CMDLINE_MAX_SIZE).unwrap();
        cmdline.insert_str("console=ttyS0").unwrap();
        assert_eq!(write_cmdline(&mem, &cmdline).unwrap(), 13);
        let initrd = LoadedInitrd {
            addr: GuestAddress(0x300_0000),
            size: 1234,
        };
        write_boot_params(&mem, &kernel, 13, Some(initrd), Some(GuestAddress(0xe0000))).unwrap();
        let params: boot_params = mem.read_obj(layout::ZERO_PAGE_START).unwrap();
        let hdr = params.hdr;
        assert_eq!({ hdr.header }, BOOT_HEADER_MAGIC);
        assert_eq!({ hdr.type_of_loader }, UNDEFINED_LOADER);
        assert_eq!({ hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ hdr.cmdline_size }, 13);
        assert_eq!({ hdr.ramdisk_image }, 0x300_0000);
        assert_eq!({ hdr.ramdisk_size }, 1234);
        assert_eq!({ params.acpi_rsdp_addr }, 0xe0000);
        assert_eq!(params.e820_entries as usize, e820_map(&mem).len());
        let first = params.e820_table[0];
        assert_eq!(
            ({ first.addr }, { first.size }, { first.r#type }),
            (0, 0x9fc00, E820_RAM)
        );
        let mut cmdline = [0u8; 14];
        mem.read_slice(&mut cmdline, layout::CMDLINE_START).unwrap();
        assert_eq!(&cmdline, b"console=ttyS0\0");
    }
}
