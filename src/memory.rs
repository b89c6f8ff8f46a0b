//! Guest RAM: how it is mapped, and how pages the guest gives up go back to the host.
//!
//! Four backings (`--mem-backing`):
//!
//! | backing | mapping | host page | a discard is |
//! | --- | --- | --- | --- |
//! | `anon` (default) | private anonymous | 4 KiB | `madvise(MADV_DONTNEED)` |
//! | `memfd` | a memfd, shared (the form a VMM needs to share guest memory with another process) | 4 KiB | `fallocate(PUNCH_HOLE)` |
//! | `thp` | private anonymous, `madvise(MADV_HUGEPAGE)`, at 2 MiB aligned host addresses | 2 MiB when the host has one free, else 4 KiB | `madvise(MADV_DONTNEED)` |
//! | `hugetlb` | a memfd of 2 MiB hugetlb pages (`MFD_HUGETLB`), shared, its pages reserved when mapped | 2 MiB | `fallocate(PUNCH_HOLE)` of whole pages |
//!
//! [`discard_range`] frees host memory behind a guest range the right way for each:
//! `MADV_DONTNEED` for private anonymous memory, a hole punch for file-backed memory,
//! whose pages `MADV_DONTNEED` would only unmap. Either way the guest reads zeros when it
//! touches the range again.
//!
//! With the huge-page backings the caller should discard whole 2 MiB pages only: a hole
//! punched into part of a hugetlb page frees nothing (so [`discard_range`] refuses it), and
//! `MADV_DONTNEED` on part of a transparent huge page splits it into 4 KiB pages. The
//! balloon keeps track of partly given-up huge pages for this reason
//! (`devices::virtio::balloon::huge_pages`).
//!
//! Why the huge-page backings need 2 MiB aligned regions: KVM maps a guest's 2 MiB frame
//! with one huge page only where the guest physical address and the host virtual address
//! agree modulo 2 MiB, and a guest frame can only be freed as one host huge page if the
//! two coincide. vm-memory maps wherever the kernel puts a mapping, which for anonymous
//! memory (before Linux 6.7) is only 4 KiB aligned, so `thp` regions are mapped here at an
//! aligned address; hugetlb mappings are aligned by the kernel.

use std::fs::File;
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::path::Path;

use vm_memory::mmap::{MmapRegionBuilder, MmapRegionError};
use vm_memory::{
    Address, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap,
    GuestUsize, MmapRegion,
};

use crate::size::{HumanSize, MIB};

/// Guest RAM as every part of the VMM sees it.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// The size of the huge pages `thp` and `hugetlb` back guest RAM with (x86's PMD size).
pub const HUGE_PAGE_SIZE: u64 = 2 * MIB;

/// Where Linux describes its pool of 2 MiB hugetlb pages.
const HUGETLB_POOL_SYSFS: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB";
/// Linux's transparent huge page mode: `always`, `madvise` or `never`, the chosen one in
/// brackets.
const THP_ENABLED_SYSFS: &str = "/sys/kernel/mm/transparent_hugepage/enabled";

/// What backs guest RAM on the host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MemoryBacking {
    /// Private anonymous memory.
    #[default]
    Anonymous,
    /// A memfd, mapped shared.
    Memfd,
    /// Private anonymous memory in transparent huge pages.
    Thp,
    /// A memfd of 2 MiB hugetlb pages, mapped shared.
    Hugetlb,
}

impl MemoryBacking {
    /// The name `--mem-backing` and the API use.
    pub fn name(self) -> &'static str {
        match self {
            MemoryBacking::Anonymous => "anon",
            MemoryBacking::Memfd => "memfd",
            MemoryBacking::Thp => "thp",
            MemoryBacking::Hugetlb => "hugetlb",
        }
    }

    /// The size of the host pages behind guest RAM, and so the unit in which memory the
    /// guest gives up can go back to the host without breaking a page apart.
    pub fn host_page_size(self) -> u64 {
        if self.uses_huge_pages() {
            HUGE_PAGE_SIZE
        } else {
            crate::size::PAGE_SIZE
        }
    }

    /// Whether guest RAM is meant to live in 2 MiB pages.
    pub fn uses_huge_pages(self) -> bool {
        matches!(self, MemoryBacking::Thp | MemoryBacking::Hugetlb)
    }
}

impl std::fmt::Display for MemoryBacking {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot create a memfd for {size} bytes of guest memory: {source}")]
    Memfd { size: u64, source: std::io::Error },
    #[error("cannot map {size} bytes of guest memory: {reason}")]
    Map { size: u64, reason: String },
    #[error(
        "--mem-backing {backing}: guest RAM region {addr:#x}+{len:#x} is not made of whole \
         2 MiB huge pages"
    )]
    NotHugePageAligned {
        backing: MemoryBacking,
        addr: u64,
        len: u64,
    },
    #[error(
        "--mem-backing hugetlb: this host has no pool of 2 MiB huge pages \
         ({HUGETLB_POOL_SYSFS}: {reason})"
    )]
    NoHugePagePool { reason: String },
    #[error(
        "--mem-backing hugetlb: {} of guest memory needs {needed} free 2 MiB huge pages but \
         the host has {available} (HugePages_Free {free} less HugePages_Rsvd {reserved}); \
         reserve more with /proc/sys/vm/nr_hugepages",
        HumanSize(*.size)
    )]
    NotEnoughHugePages {
        size: u64,
        needed: u64,
        available: u64,
        free: u64,
        reserved: u64,
    },
    #[error("--mem-backing thp: this kernel has no transparent huge pages ({reason})")]
    NoTransparentHugePages { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscardError {
    #[error("range {addr:#x}+{len:#x} is not inside guest RAM")]
    OutOfRange { addr: u64, len: u64 },
    #[error("range {addr:#x}+{len:#x} is not made of whole 2 MiB huge pages, which is all a hugetlb backing can free")]
    NotHugePageAligned { addr: u64, len: u64 },
    #[error("discarding {addr:#x}+{len:#x} failed: {errno}")]
    Os { addr: u64, len: u64, errno: String },
}

/// The host's pool of 2 MiB hugetlb pages, as `/proc/meminfo` shows it (`HugePages_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HugePagePool {
    /// Pages in the pool.
    pub total: u64,
    /// Pages not in use; some may be promised to mappings already (`reserved`).
    pub free: u64,
    /// Free pages that existing mappings have reserved.
    pub reserved: u64,
}

impl HugePagePool {
    /// Reads the pool from sysfs.
    pub fn read() -> Result<HugePagePool, MemoryError> {
        Self::read_from(Path::new(HUGETLB_POOL_SYSFS))
    }

    fn read_from(dir: &Path) -> Result<HugePagePool, MemoryError> {
        let count = |name: &str| -> Result<u64, MemoryError> {
            let path = dir.join(name);
            let text = std::fs::read_to_string(&path).map_err(|e| MemoryError::NoHugePagePool {
                reason: format!("{name}: {e}"),
            })?;
            text.trim()
                .parse()
                .map_err(|_| MemoryError::NoHugePagePool {
                    reason: format!("{name} holds {:?}, not a number", text.trim()),
                })
        };
        Ok(HugePagePool {
            total: count("nr_hugepages")?,
            free: count("free_hugepages")?,
            reserved: count("resv_hugepages")?,
        })
    }

    /// Pages a new mapping can still reserve.
    pub fn available(&self) -> u64 {
        self.free.saturating_sub(self.reserved)
    }

    /// Refuses `size` bytes of guest memory if the pool cannot hold them.
    fn check_room_for(&self, size: u64) -> Result<(), MemoryError> {
        let needed = size.div_ceil(HUGE_PAGE_SIZE);
        if self.available() < needed {
            return Err(MemoryError::NotEnoughHugePages {
                size,
                needed,
                available: self.available(),
                free: self.free,
                reserved: self.reserved,
            });
        }
        Ok(())
    }
}

/// Checks that this host can back `size` bytes of guest memory as `backing` says, before
/// anything is created: enough free 2 MiB pages for `hugetlb`. For `thp` with transparent
/// huge pages switched off (`never`) it logs a warning: the guest runs, in 4 KiB pages.
pub fn check_host_supports(backing: MemoryBacking, size: u64) -> Result<(), MemoryError> {
    match backing {
        MemoryBacking::Hugetlb => HugePagePool::read()?.check_room_for(size),
        MemoryBacking::Thp => {
            match std::fs::read_to_string(THP_ENABLED_SYSFS) {
                Ok(mode) if mode.contains("[never]") => log::warn!(
                    "--mem-backing thp: transparent huge pages are switched off on this host \
                     ({THP_ENABLED_SYSFS} is \"never\"); guest memory stays in 4 KiB pages \
                     until it is set to \"madvise\" or \"always\""
                ),
                Ok(_) => {}
                Err(e) => {
                    return Err(MemoryError::NoTransparentHugePages {
                        reason: format!("{THP_ENABLED_SYSFS}: {e}"),
                    })
                }
            }
            Ok(())
        }
        MemoryBacking::Anonymous | MemoryBacking::Memfd => Ok(()),
    }
}

/// Maps guest RAM as `regions`, each a guest physical address and a length in bytes. The
/// caller decides the layout (the builder asks the architecture's memory map). With a
/// memfd, one file backs every region, each at the file offset where the previous one
/// ended. With a huge-page backing every region must start and end on a 2 MiB boundary.
///
/// A `thp` region is mapped here rather than by vm-memory, which cannot align a mapping;
/// vm-memory does not unmap what it did not map, so it stays mapped until the process
/// exits (a VMM maps its guest's RAM once).
pub fn create_guest_memory(
    regions: &[(GuestAddress, u64)],
    backing: MemoryBacking,
) -> Result<GuestMemoryMmap, MemoryError> {
    let size: u64 = regions.iter().map(|&(_, len)| len).sum();
    if backing.uses_huge_pages() {
        for &(addr, len) in regions {
            if addr.raw_value() % HUGE_PAGE_SIZE != 0 || len % HUGE_PAGE_SIZE != 0 {
                return Err(MemoryError::NotHugePageAligned {
                    backing,
                    addr: addr.raw_value(),
                    len,
                });
            }
        }
    }
    let map_error = |reason: String| MemoryError::Map { size, reason };
    let file = match backing {
        MemoryBacking::Memfd => Some(
            create_memfd(size, libc::MFD_CLOEXEC)
                .map_err(|source| MemoryError::Memfd { size, source })?,
        ),
        MemoryBacking::Hugetlb => {
            // Checked again here, not only by the caller: the pool may have shrunk since.
            HugePagePool::read()?.check_room_for(size)?;
            Some(
                create_memfd(
                    size,
                    libc::MFD_CLOEXEC | libc::MFD_HUGETLB | libc::MFD_HUGE_2MB,
                )
                .map_err(|source| MemoryError::Memfd { size, source })?,
            )
        }
        MemoryBacking::Anonymous | MemoryBacking::Thp => None,
    };
    let mut offset = 0u64;
    let mut guest_regions = Vec::with_capacity(regions.len());
    for &(addr, len) in regions {
        let len_usize = usize::try_from(len).map_err(|_| map_error(format!("{len} bytes")))?;
        let file_offset = match &file {
            Some(file) => Some(FileOffset::new(
                file.try_clone()
                    .map_err(|source| MemoryError::Memfd { size, source })?,
                offset,
            )),
            None => None,
        };
        offset += len;
        let mapping = match backing {
            MemoryBacking::Thp => map_thp(len_usize).map_err(|e| match e.kind() {
                std::io::ErrorKind::InvalidInput => MemoryError::NoTransparentHugePages {
                    reason: format!("madvise(MADV_HUGEPAGE) failed: {e}"),
                },
                _ => map_error(e.to_string()),
            })?,
            MemoryBacking::Hugetlb => {
                let builder = MmapRegionBuilder::new(len_usize)
                    .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                    // Not MAP_NORESERVE: the kernel reserves the huge pages now, so a pool
                    // too small fails here, not when a page is first touched (a vCPU that
                    // stalls in KVM, or SIGBUS in the VMM).
                    .with_mmap_flags(libc::MAP_SHARED)
                    .with_hugetlbfs(true);
                let builder = match file_offset {
                    Some(file_offset) => builder.with_file_offset(file_offset),
                    None => builder,
                };
                builder.build().map_err(|e| match e {
                    MmapRegionError::Mmap(ref io) if io.raw_os_error() == Some(libc::ENOMEM) => {
                        match HugePagePool::read().and_then(|pool| pool.check_room_for(size)) {
                            Err(short) => short,
                            Ok(()) => map_error(e.to_string()),
                        }
                    }
                    _ => map_error(e.to_string()),
                })?
            }
            MemoryBacking::Anonymous | MemoryBacking::Memfd => match file_offset {
                Some(file_offset) => MmapRegion::from_file(file_offset, len_usize),
                None => MmapRegion::new(len_usize),
            }
            .map_err(|e| map_error(e.to_string()))?,
        };
        let region = GuestRegionMmap::new(mapping, addr)
            .ok_or_else(|| map_error(format!("region {:#x}+{len:#x} wraps around", addr.0)))?;
        guest_regions.push(region);
    }
    GuestMemoryMmap::from_regions(guest_regions).map_err(|e| map_error(e.to_string()))
}

fn create_memfd(size: u64, flags: libc::c_uint) -> std::io::Result<File> {
    // SAFETY: the name is a valid NUL-terminated string; the returned fd is checked.
    let fd = unsafe { libc::memfd_create(c"vmm-guest-ram".as_ptr(), flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)?;
    Ok(file)
}

/// Maps `len` bytes of private anonymous memory at a 2 MiB aligned address and advises
/// the kernel to back it with transparent huge pages. The mapping is never unmapped.
fn map_thp(len: usize) -> std::io::Result<MmapRegion> {
    let huge = HUGE_PAGE_SIZE as usize;
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    // Map a huge page more than needed, then trim the ends so what is left starts on a
    // huge page boundary.
    let span = len
        .checked_add(huge)
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOMEM))?;
    // SAFETY: a new mapping at an address the kernel chooses; it replaces nothing.
    let base = unsafe { libc::mmap(std::ptr::null_mut(), span, prot, flags, -1, 0) };
    if base == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let base = base as usize;
    let start = base.next_multiple_of(huge);
    let head = start - base;
    let tail = span - head - len;
    // SAFETY: both ranges lie in the mapping made above, outside `[start, start + len)`,
    // and nothing refers to them.
    let trimmed = unsafe {
        (head == 0 || libc::munmap(base as *mut libc::c_void, head) == 0)
            && (tail == 0 || libc::munmap((start + len) as *mut libc::c_void, tail) == 0)
    };
    if !trimmed {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `[start, start + len)` is the mapping made above; advice changes no content.
    if unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE) } != 0 {
        let error = std::io::Error::last_os_error();
        // SAFETY: the mapping made above, which nothing refers to yet.
        unsafe { libc::munmap(start as *mut libc::c_void, len) };
        return Err(error);
    }
    // SAFETY: `[start, start + len)` is a live mapping made above with these protections
    // and flags that nothing else uses; it is never unmapped, so it outlives the region.
    let builder = unsafe { MmapRegionBuilder::new(len).with_raw_mmap_pointer(start as *mut u8) };
    builder
        .with_mmap_prot(prot)
        .with_mmap_flags(flags)
        .build()
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// Total bytes of guest RAM.
pub fn ram_size(mem: &GuestMemoryMmap) -> u64 {
    mem.iter().map(|r| r.len()).sum()
}

/// Whether `[addr, addr + len)` lies entirely in one region of guest RAM.
pub fn range_in_ram(mem: &GuestMemoryMmap, addr: GuestAddress, len: u64) -> bool {
    if len == 0 {
        return false;
    }
    let Some(last) = addr.checked_add(len - 1) else {
        return false;
    };
    match mem.find_region(addr) {
        Some(region) => last <= region.last_addr(),
        None => false,
    }
}

/// Gives the host memory behind `[addr, addr + len)` back to the host. The range must lie
/// inside one region of guest RAM and be page-aligned, and for a hugetlb backing consist
/// of whole 2 MiB pages; the guest reads zeros from it afterwards.
pub fn discard_range(
    mem: &GuestMemoryMmap,
    addr: GuestAddress,
    len: u64,
) -> Result<(), DiscardError> {
    let out_of_range = || DiscardError::OutOfRange {
        addr: addr.raw_value(),
        len,
    };
    if !range_in_ram(mem, addr, len) {
        return Err(out_of_range());
    }
    let region = mem.find_region(addr).ok_or_else(out_of_range)?;
    let offset_in_region = addr.unchecked_offset_from(region.start_addr());
    if region.is_hugetlbfs() == Some(true)
        && (offset_in_region % HUGE_PAGE_SIZE != 0 || len % HUGE_PAGE_SIZE != 0)
    {
        // A hole punched into part of a huge page frees nothing; Linux would only zero
        // that part.
        return Err(DiscardError::NotHugePageAligned {
            addr: addr.raw_value(),
            len,
        });
    }
    let os_error = |e: std::io::Error| DiscardError::Os {
        addr: addr.raw_value(),
        len,
        errno: e.to_string(),
    };
    match region.file_offset() {
        Some(file_offset) => {
            let file_pos = file_offset.start() + offset_in_region;
            // SAFETY: fallocate on an fd we own, within the file's size; it does not touch
            // our address space beyond making the range read as zeros.
            let ret = unsafe {
                libc::fallocate(
                    file_offset.file().as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    file_pos as libc::off_t,
                    len as libc::off_t,
                )
            };
            if ret != 0 {
                return Err(os_error(std::io::Error::last_os_error()));
            }
        }
        None => {
            let host = mem.get_host_address(addr).map_err(|_| out_of_range())?;
            // SAFETY: [host, host + len) lies inside one mapping of guest RAM (checked
            // above); MADV_DONTNEED on private anonymous memory only replaces its contents
            // with zeros, which the guest has asked for by giving the pages up.
            let ret = unsafe {
                libc::madvise(host as *mut libc::c_void, len as usize, libc::MADV_DONTNEED)
            };
            if ret != 0 {
                return Err(os_error(std::io::Error::last_os_error()));
            }
        }
    }
    Ok(())
}

/// Bytes of guest RAM resident in host memory, counted with `mincore`. For tests and
/// benchmarks that check memory really went back to the host.
pub fn resident_bytes(mem: &GuestMemoryMmap) -> u64 {
    let page = crate::size::PAGE_SIZE as usize;
    let mut total = 0u64;
    for region in mem.iter() {
        let Ok(host) = mem.get_host_address(region.start_addr()) else {
            continue;
        };
        let len = region.len() as usize;
        let mut vec = vec![0u8; len.div_ceil(page)];
        // SAFETY: [host, host + len) is one live mapping; `vec` has one byte per page.
        let ret = unsafe { libc::mincore(host as *mut libc::c_void, len, vec.as_mut_ptr()) };
        if ret == 0 {
            total += vec.iter().filter(|&&b| b & 1 != 0).count() as u64 * page as u64;
        }
    }
    total
}

/// The size of `mem`'s largest region, for callers that need a bound.
pub fn largest_region(mem: &GuestMemoryMmap) -> GuestUsize {
    mem.iter().map(|r| r.len()).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::size::MIB;
    use vm_memory::Bytes;

    fn touch(mem: &GuestMemoryMmap, addr: u64, len: u64) {
        let data = vec![0xa5u8; len as usize];
        mem.write_slice(&data, GuestAddress(addr)).unwrap();
    }

    fn discard_returns_zeros_and_frees(backing: MemoryBacking) {
        let mem = create_guest_memory(&[(GuestAddress(0), 16 * MIB)], backing).unwrap();
        touch(&mem, 0, 16 * MIB);
        let before = resident_bytes(&mem);
        assert!(before >= 16 * MIB - 4096, "resident before: {before}");
        discard_range(&mem, GuestAddress(4 * MIB), 8 * MIB).unwrap();
        let after = resident_bytes(&mem);
        assert!(
            before - after >= 8 * MIB - 4096,
            "before {before} after {after}"
        );
        let mut buf = [0u8; 4096];
        mem.read_slice(&mut buf, GuestAddress(4 * MIB)).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        mem.read_slice(&mut buf, GuestAddress(12 * MIB)).unwrap();
        assert!(buf.iter().all(|&b| b == 0xa5));
        mem.read_slice(&mut buf, GuestAddress(4 * MIB - 4096))
            .unwrap();
        assert!(buf.iter().all(|&b| b == 0xa5));
    }

    #[test]
    fn discard_anonymous_memory() {
        discard_returns_zeros_and_frees(MemoryBacking::Anonymous);
    }

    #[test]
    fn discard_memfd_memory_punches_a_hole() {
        discard_returns_zeros_and_frees(MemoryBacking::Memfd);
    }

    #[test]
    fn discard_refuses_ranges_outside_ram() {
        let mem =
            create_guest_memory(&[(GuestAddress(0), 16 * MIB)], MemoryBacking::Anonymous).unwrap();
        let err = discard_range(&mem, GuestAddress(16 * MIB), 4096).unwrap_err();
        assert_eq!(
            err,
            DiscardError::OutOfRange {
                addr: 16 * MIB,
                len: 4096
            }
        );
        assert!(discard_range(&mem, GuestAddress(15 * MIB), 2 * MIB).is_err());
        assert!(discard_range(&mem, GuestAddress(u64::MAX - 4095), 4096).is_err());
        assert!(discard_range(&mem, GuestAddress(0), 0).is_err());
    }

    #[test]
    fn memfd_regions_follow_each_other_in_the_file() {
        let regions = [
            (GuestAddress(0), 4 * MIB),
            (GuestAddress(16 * MIB), 4 * MIB),
        ];
        let mem = create_guest_memory(&regions, MemoryBacking::Memfd).unwrap();
        assert_eq!(ram_size(&mem), 8 * MIB);
        let offsets: Vec<u64> = mem
            .iter()
            .map(|r| r.file_offset().unwrap().start())
            .collect();
        assert_eq!(offsets, vec![0, 4 * MIB]);
        touch(&mem, 0, 4 * MIB);
        touch(&mem, 16 * MIB, 4 * MIB);
        // A hole punched in the second region leaves the first one's pages alone.
        discard_range(&mem, GuestAddress(16 * MIB), 4 * MIB).unwrap();
        let mut buf = [0u8; 4096];
        mem.read_slice(&mut buf, GuestAddress(0)).unwrap();
        assert!(buf.iter().all(|&b| b == 0xa5));
        mem.read_slice(&mut buf, GuestAddress(16 * MIB)).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
    }

    /// The `VmFlags` of the mapping that starts at `host`, from /proc/self/smaps.
    fn vm_flags_of_mapping_at(host: usize) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let start = format!("{host:x}-");
        let mut in_mapping = false;
        for line in smaps.lines() {
            if line.contains('-') && line.split_whitespace().count() >= 5 {
                in_mapping = line.starts_with(&start);
            } else if in_mapping && line.starts_with("VmFlags:") {
                return line.to_string();
            }
        }
        panic!("no mapping at {host:#x} in /proc/self/smaps")
    }

    #[test]
    fn thp_regions_are_huge_page_aligned_and_advised_huge() {
        let regions = [
            (GuestAddress(0), 6 * MIB),
            (GuestAddress(64 * MIB), 4 * MIB),
        ];
        let mem = create_guest_memory(&regions, MemoryBacking::Thp).unwrap();
        assert_eq!(ram_size(&mem), 10 * MIB);
        for region in mem.iter() {
            let host = mem.get_host_address(region.start_addr()).unwrap() as usize;
            assert_eq!(host % HUGE_PAGE_SIZE as usize, 0, "region at {host:#x}");
            assert!(region.file_offset().is_none());
            // "hg": the kernel recorded MADV_HUGEPAGE for the whole mapping.
            let flags = vm_flags_of_mapping_at(host);
            assert!(flags.split_whitespace().any(|f| f == "hg"), "{flags}");
        }
        // A whole huge page discards to zeros; its neighbours keep their data.
        touch(&mem, 0, 6 * MIB);
        discard_range(&mem, GuestAddress(2 * MIB), HUGE_PAGE_SIZE).unwrap();
        let mut buf = vec![0u8; HUGE_PAGE_SIZE as usize];
        mem.read_slice(&mut buf, GuestAddress(2 * MIB)).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        mem.read_slice(&mut buf, GuestAddress(0)).unwrap();
        assert!(buf.iter().all(|&b| b == 0xa5));
        mem.read_slice(&mut buf, GuestAddress(4 * MIB)).unwrap();
        assert!(buf.iter().all(|&b| b == 0xa5));
    }

    #[test]
    fn huge_page_backings_refuse_regions_that_are_not_whole_huge_pages() {
        for backing in [MemoryBacking::Thp, MemoryBacking::Hugetlb] {
            for (addr, len) in [(0, 3 * MIB), (MIB, 2 * MIB), (0, 2 * MIB + 4096)] {
                let err = create_guest_memory(&[(GuestAddress(addr), len)], backing).unwrap_err();
                assert!(
                    matches!(err, MemoryError::NotHugePageAligned { addr: a, len: l, .. } if (a, l) == (addr, len)),
                    "{backing} {addr:#x}+{len:#x}: {err}"
                );
                assert!(err.to_string().contains("2 MiB"), "{err}");
            }
        }
    }

    #[test]
    fn the_huge_page_pool_is_read_from_sysfs_and_short_pools_are_named() {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/vmm-pool-").unwrap();
        let write =
            |name: &str, value: &str| std::fs::write(dir.as_path().join(name), value).unwrap();
        write("nr_hugepages", "600\n");
        write("free_hugepages", "520\n");
        write("resv_hugepages", "20\n");
        let pool = HugePagePool::read_from(dir.as_path()).unwrap();
        assert_eq!(
            pool,
            HugePagePool {
                total: 600,
                free: 520,
                reserved: 20
            }
        );
        assert_eq!(pool.available(), 500);
        assert!(pool.check_room_for(1000 * MIB).is_ok());
        let err = pool.check_room_for(1024 * MIB).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--mem-backing hugetlb: 1 GiB of guest memory needs 512 free 2 MiB huge pages but \
             the host has 500 (HugePages_Free 520 less HugePages_Rsvd 20); reserve more with \
             /proc/sys/vm/nr_hugepages"
        );
        // More reserved than free (never seen, but not trusted): nothing is available.
        write("resv_hugepages", "900\n");
        assert_eq!(
            HugePagePool::read_from(dir.as_path()).unwrap().available(),
            0
        );
        write("free_hugepages", "many\n");
        let err = HugePagePool::read_from(dir.as_path()).unwrap_err();
        assert!(err.to_string().contains("\"many\""), "{err}");
        let err = HugePagePool::read_from(&dir.as_path().join("absent")).unwrap_err();
        assert!(matches!(err, MemoryError::NoHugePagePool { .. }), "{err}");
    }

    /// With a pool of at least 8 free 2 MiB pages on this host, hugetlb memory is mapped,
    /// reserved and freed a whole huge page at a time; without, it is refused with the
    /// numbers. Either way something is checked.
    #[test]
    fn hugetlb_memory_is_reserved_and_punched_in_whole_huge_pages() {
        let size = 16 * MIB;
        let pool = match HugePagePool::read() {
            Ok(pool) => pool,
            Err(e) => {
                let err = create_guest_memory(&[(GuestAddress(0), size)], MemoryBacking::Hugetlb)
                    .unwrap_err();
                assert_eq!(err.to_string(), e.to_string());
                return;
            }
        };
        let mem = match create_guest_memory(&[(GuestAddress(0), size)], MemoryBacking::Hugetlb) {
            Ok(mem) => mem,
            Err(err) => {
                assert!(pool.available() < 8, "{pool:?}: {err}");
                assert!(
                    matches!(err, MemoryError::NotEnoughHugePages { needed: 8, .. }),
                    "{err}"
                );
                return;
            }
        };
        let region = mem.find_region(GuestAddress(0)).unwrap();
        assert_eq!(region.is_hugetlbfs(), Some(true));
        // Mapping reserved every page at once.
        let mapped = HugePagePool::read().unwrap();
        assert!(
            mapped.reserved >= pool.reserved + 8,
            "{pool:?} → {mapped:?}"
        );
        touch(&mem, 0, size);
        assert_eq!(
            discard_range(&mem, GuestAddress(2 * MIB), MIB),
            Err(DiscardError::NotHugePageAligned {
                addr: 2 * MIB,
                len: MIB
            })
        );
        assert_eq!(
            discard_range(&mem, GuestAddress(MIB), 2 * MIB),
            Err(DiscardError::NotHugePageAligned {
                addr: MIB,
                len: 2 * MIB
            })
        );
        let before = HugePagePool::read().unwrap();
        discard_range(&mem, GuestAddress(2 * MIB), 4 * MIB).unwrap();
        let after = HugePagePool::read().unwrap();
        assert!(after.free >= before.free + 2, "{before:?} → {after:?}");
        let mut buf = vec![0u8; 4 * MIB as usize];
        mem.read_slice(&mut buf, GuestAddress(2 * MIB)).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        mem.read_slice(&mut buf[..2 * MIB as usize], GuestAddress(0))
            .unwrap();
        assert!(buf[..2 * MIB as usize].iter().all(|&b| b == 0xa5));
        mem.read_slice(&mut buf, GuestAddress(6 * MIB)).unwrap();
        assert!(buf.iter().all(|&b| b == 0xa5));
    }

    #[test]
    fn backings_name_themselves_and_their_page_size() {
        let expected = [
            (MemoryBacking::Anonymous, "anon", 4096),
            (MemoryBacking::Memfd, "memfd", 4096),
            (MemoryBacking::Thp, "thp", 2 * MIB),
            (MemoryBacking::Hugetlb, "hugetlb", 2 * MIB),
        ];
        for (backing, name, page) in expected {
            assert_eq!((backing.name(), backing.host_page_size()), (name, page));
            assert_eq!(backing.to_string(), name);
        }
    }
}
