//! Guest RAM: how it is mapped, and how pages the guest gives up go back to the host.
//!
//! RAM is either private anonymous memory (the default) or a memfd mapped shared
//! (`--mem-backing memfd`, the form a VMM needs to share guest memory with another
//! process). [`discard_range`] frees host memory behind a guest range the right way for
//! each: `madvise(MADV_DONTNEED)` for private anonymous memory, a hole punch
//! (`fallocate(PUNCH_HOLE)`) for file-backed memory, whose pages `MADV_DONTNEED` would
//! only unmap. Either way the guest reads zeros when it touches the range again.

use std::fs::File;
use std::os::unix::io::{AsRawFd, FromRawFd};

use vm_memory::{
    Address, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestUsize,
};

/// Guest RAM as every part of the VMM sees it.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// What backs guest RAM on the host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MemoryBacking {
    /// Private anonymous memory.
    #[default]
    Anonymous,
    /// A memfd, mapped shared.
    Memfd,
}

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot create a memfd for {size} bytes of guest memory: {source}")]
    Memfd { size: u64, source: std::io::Error },
    #[error("cannot map {size} bytes of guest memory: {reason}")]
    Map { size: u64, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscardError {
    #[error("range {addr:#x}+{len:#x} is not inside guest RAM")]
    OutOfRange { addr: u64, len: u64 },
    #[error("discarding {addr:#x}+{len:#x} failed: {errno}")]
    Os { addr: u64, len: u64, errno: String },
}

/// Maps guest RAM as `regions`, each a guest physical address and a length in bytes. The
/// caller decides the layout (the builder asks the architecture's memory map). With a
/// memfd, one file backs every region, each at the file offset where the previous one
/// ended.
pub fn create_guest_memory(
    regions: &[(GuestAddress, u64)],
    backing: MemoryBacking,
) -> Result<GuestMemoryMmap, MemoryError> {
    let size: u64 = regions.iter().map(|&(_, len)| len).sum();
    let result = match backing {
        MemoryBacking::Anonymous => {
            let ranges: Vec<(GuestAddress, usize)> =
                regions.iter().map(|&(a, l)| (a, l as usize)).collect();
            GuestMemoryMmap::from_ranges(&ranges)
        }
        MemoryBacking::Memfd => {
            let file = create_memfd(size).map_err(|source| MemoryError::Memfd { size, source })?;
            let mut offset = 0u64;
            let ranges: Vec<(GuestAddress, usize, Option<FileOffset>)> = regions
                .iter()
                .map(|&(addr, len)| {
                    let range = (
                        addr,
                        len as usize,
                        Some(FileOffset::new(file.try_clone().ok()?, offset)),
                    );
                    offset += len;
                    Some(range)
                })
                .collect::<Option<_>>()
                .ok_or_else(|| MemoryError::Memfd {
                    size,
                    source: std::io::Error::last_os_error(),
                })?;
            GuestMemoryMmap::from_ranges_with_files(ranges)
        }
    };
    result.map_err(|e| MemoryError::Map {
        size,
        reason: e.to_string(),
    })
}

fn create_memfd(size: u64) -> std::io::Result<File> {
    // SAFETY: the name is a valid NUL-terminated string; the returned fd is checked.
    let fd = unsafe { libc::memfd_create(c"vmm-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)?;
    Ok(file)
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
/// inside one region of guest RAM and be page-aligned; the guest reads zeros from it
/// afterwards.
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
}
