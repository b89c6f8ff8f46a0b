//! What /proc says about a VMM process: its resident memory, split into guest RAM and the
//! VMM's own, and the CPU time of each of its threads.
//!
//! Guest RAM is not labelled in /proc/PID/smaps, so it is recognised by shape: the
//! writable anonymous (or memfd) mappings of at least [`MIN_GUEST_RAM_MAPPING`], largest
//! first, as long as together they are no larger than the guest's memory plus
//! [`GUEST_RAM_SLACK`]. Both vmm (one mapping per RAM region) and QEMU (one RAM block,
//! possibly rounded up for alignment) fit that rule; heap arenas and thread stacks are far
//! smaller, and the first big mapping taken leaves no room for another.

use std::fs;
use std::io;

/// The smallest mapping taken for guest RAM.
const MIN_GUEST_RAM_MAPPING: u64 = 16 << 20;
/// How much larger than the guest's memory its mappings may be together (QEMU aligns its
/// RAM block).
const GUEST_RAM_SLACK: u64 = 4 << 20;
/// Clock ticks per second in /proc/PID/stat: USER_HZ, 100 on every Linux ABI.
pub const TICKS_PER_SECOND: f64 = 100.0;

/// One mapping of /proc/PID/smaps, with what is needed here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// Its first address in the process.
    pub start: u64,
    pub size: u64,
    pub writable: bool,
    /// The path column: empty for anonymous memory, `[heap]`, `/memfd:...`, a file.
    pub path: String,
    pub rss_kib: u64,
}

impl Mapping {
    fn may_be_guest_ram(&self) -> bool {
        let anonymous = self.path.is_empty()
            || self.path.starts_with("/memfd:")
            || self.path.starts_with("[anon:");
        self.writable && anonymous && self.size >= MIN_GUEST_RAM_MAPPING
    }
}

/// A VMM's resident memory at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryUse {
    /// Every resident page of the process (the sum of smaps' `Rss`).
    pub rss_kib: u64,
    /// The resident part of the guest RAM mappings.
    pub guest_ram_rss_kib: u64,
    /// How many mappings were taken for guest RAM.
    pub guest_ram_mappings: usize,
}

impl MemoryUse {
    /// What the VMM itself holds: everything resident that is not guest RAM.
    pub fn own_kib(&self) -> u64 {
        self.rss_kib.saturating_sub(self.guest_ram_rss_kib)
    }
}

/// Parses the text of /proc/PID/smaps.
pub fn parse_smaps(text: &str) -> Vec<Mapping> {
    let mut mappings: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if let Some((start, end)) = first.split_once('-') {
            // A header: `start-end perms offset dev inode [path]`.
            let (Ok(start), Ok(end)) =
                (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
            else {
                continue;
            };
            let perms = words.next().unwrap_or("");
            let path = words.skip(3).collect::<Vec<_>>().join(" ");
            mappings.push(Mapping {
                start,
                size: end.saturating_sub(start),
                writable: perms.as_bytes().get(1) == Some(&b'w'),
                path,
                rss_kib: 0,
            });
        } else if first == "Rss:" {
            if let (Some(last), Some(Ok(kib))) =
                (mappings.last_mut(), words.next().map(str::parse::<u64>))
            {
                last.rss_kib = kib;
            }
        }
    }
    mappings
}

/// Splits the resident memory of `mappings` into guest RAM and the rest, for a guest of
/// `guest_mem_bytes`.
pub fn memory_use(mappings: &[Mapping], guest_mem_bytes: u64) -> MemoryUse {
    let guest_ram = guest_ram_mappings(mappings, guest_mem_bytes);
    MemoryUse {
        rss_kib: mappings.iter().map(|m| m.rss_kib).sum(),
        guest_ram_rss_kib: guest_ram.iter().map(|m| m.rss_kib).sum(),
        guest_ram_mappings: guest_ram.len(),
    }
}

/// The mappings of `mappings` taken for the guest RAM of a guest of `guest_mem_bytes`,
/// largest first.
pub fn guest_ram_mappings(mappings: &[Mapping], guest_mem_bytes: u64) -> Vec<&Mapping> {
    let mut candidates: Vec<&Mapping> = mappings.iter().filter(|m| m.may_be_guest_ram()).collect();
    candidates.sort_by_key(|m| std::cmp::Reverse(m.size));
    let limit = guest_mem_bytes.saturating_add(GUEST_RAM_SLACK);
    let mut taken = 0u64;
    candidates.retain(|m| {
        let fits = taken.saturating_add(m.size) <= limit;
        if fits {
            taken += m.size;
        }
        fits
    });
    candidates
}

/// 4 KiB pages per 2 MiB block of guest-physical memory.
pub const PAGES_PER_BLOCK: usize = 512;
/// /proc/PID/pagemap: the page is in memory (bit 63) or swapped out (bit 62).
const PAGEMAP_PRESENT_OR_SWAPPED: u64 = 3 << 62;

/// How many pages of each 2 MiB block are resident (in memory or swap), from /proc/PID/pagemap
/// entries of consecutive pages; the last block may be short.
pub fn resident_per_block(entries: &[u64]) -> Vec<u32> {
    entries
        .chunks(PAGES_PER_BLOCK)
        .map(|block| {
            block
                .iter()
                .filter(|&&e| e & PAGEMAP_PRESENT_OR_SWAPPED != 0)
                .count() as u32
        })
        .collect()
}

/// The resident pages of each 2 MiB block of a guest's RAM, block 0 at guest-physical
/// address 0, from the vmm's /proc/PID/pagemap. Only for a guest whose RAM is one mapping
/// at guest-physical 0 (up to 3 GiB on x86_64, below the MMIO gap).
pub fn read_guest_ram_resident_blocks(pid: u32, guest_mem_bytes: u64) -> io::Result<Vec<u32>> {
    use std::os::unix::fs::FileExt;
    let text = fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let mappings = parse_smaps(&text);
    let ram = guest_ram_mappings(&mappings, guest_mem_bytes);
    let [only] = ram.as_slice() else {
        return Err(io::Error::other(format!(
            "guest RAM is in {} mappings, not one",
            ram.len()
        )));
    };
    let pages = (guest_mem_bytes.min(only.size) / 4096) as usize;
    let mut bytes = vec![0u8; pages * 8];
    let pagemap = fs::File::open(format!("/proc/{pid}/pagemap"))?;
    pagemap.read_exact_at(&mut bytes, only.start / 4096 * 8)?;
    let entries: Vec<u64> = bytes
        .chunks_exact(8)
        .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
        .collect();
    Ok(resident_per_block(&entries))
}

/// Reads and splits the resident memory of process `pid`.
pub fn read_memory_use(pid: u32, guest_mem_bytes: u64) -> io::Result<MemoryUse> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    Ok(memory_use(&parse_smaps(&text), guest_mem_bytes))
}

/// `VmRSS` of /proc/PID/status, in KiB: cheap enough to sample several times a second.
pub fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The `VmRSS` of process `pid` in KiB; `None` once it has exited.
pub fn read_vm_rss_kib(pid: u32) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| parse_vm_rss_kib(&s))
}

/// The host's hugetlb pool from the text of /proc/meminfo: (pages in use, free pages,
/// page size in KiB). Pages in use are `HugePages_Total - HugePages_Free`: those some
/// process faulted in. A reserved page that nobody touched yet is still free.
pub fn parse_hugetlb_pool(meminfo: &str) -> Option<(u64, u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    let (total, free) = (field("HugePages_Total:")?, field("HugePages_Free:")?);
    Some((total.checked_sub(free)?, free, field("Hugepagesize:")?))
}

/// The host memory in the hugetlb pool's pages in use, in KiB (0 when the host has none).
/// VmRSS leaves hugetlb pages out, so a hugetlb guest's memory is measured here.
pub fn read_hugetlb_in_use_kib() -> io::Result<u64> {
    let text = fs::read_to_string("/proc/meminfo")?;
    parse_hugetlb_pool(&text)
        .map(|(used, _, page_kib)| used.saturating_mul(page_kib))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no hugetlb pool fields"))
}

/// user + system ticks from the text of /proc/PID/task/TID/stat. The command name may hold
/// spaces and parentheses, so the fields are counted from the last `)`.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state (0), ppid, pgrp, session, tty_nr, tpgid, flags, minflt,
    // cminflt, majflt, cmajflt, utime (11), stime (12).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Which kind of work a VMM thread does, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// Runs a guest CPU: vmm's `vcpuN`, QEMU's `CPU N/KVM` (with `debug-threads=on`).
    Vcpu,
    /// Everything else: the event loop that serves the devices, the API, I/O helpers.
    Vmm,
}

pub fn thread_kind(name: &str) -> ThreadKind {
    if name.starts_with("vcpu") || (name.starts_with("CPU ") && name.ends_with("/KVM")) {
        ThreadKind::Vcpu
    } else {
        ThreadKind::Vmm
    }
}

/// CPU ticks used so far by the threads of a process, summed by [`ThreadKind`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTicks {
    pub vcpu: u64,
    pub vmm: u64,
}

impl CpuTicks {
    /// The ticks used between `earlier` and `self`, in seconds: (vCPU threads, the rest).
    pub fn seconds_since(&self, earlier: &CpuTicks) -> (f64, f64) {
        (
            self.vcpu.saturating_sub(earlier.vcpu) as f64 / TICKS_PER_SECOND,
            self.vmm.saturating_sub(earlier.vmm) as f64 / TICKS_PER_SECOND,
        )
    }
}

/// The CPU ticks of every thread of process `pid`, by kind. A thread that ends meanwhile
/// is skipped; a process that has ended reads as zero.
pub fn read_cpu_ticks(pid: u32) -> CpuTicks {
    let mut ticks = CpuTicks::default();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return ticks;
    };
    for task in tasks.flatten() {
        let dir = task.path();
        let (Ok(name), Ok(stat)) = (
            fs::read_to_string(dir.join("comm")),
            fs::read_to_string(dir.join("stat")),
        ) else {
            continue;
        };
        let Some(used) = parse_stat_ticks(&stat) else {
            continue;
        };
        match thread_kind(name.trim_end()) {
            ThreadKind::Vcpu => ticks.vcpu += used,
            ThreadKind::Vmm => ticks.vmm += used,
        }
    }
    ticks
}

/// The 1-minute load average of this machine.
pub fn load_average() -> Option<f64> {
    fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn hugetlb_pool_in_use_is_total_less_free() {
        let meminfo = "MemTotal: 8000000 kB\nHugePages_Total:     576\nHugePages_Free:      64\n\
                       HugePages_Rsvd:      60\nHugepagesize:       2048 kB\n";
        assert_eq!(parse_hugetlb_pool(meminfo), Some((512, 64, 2048)));
        for bad in [
            "",
            "HugePages_Total: 1\nHugepagesize: 2048 kB\n",
            "HugePages_Total: 1\nHugePages_Free: 2\nHugepagesize: 2048 kB\n",
            "HugePages_Total: x\nHugePages_Free: 0\nHugepagesize: 2048 kB\n",
            "HugePages_Total: 1\nHugePages_Free: 0\n",
        ] {
            assert_eq!(parse_hugetlb_pool(bad), None, "{bad:?}");
        }
    }

    fn smaps_entry(start: u64, size: u64, perms: &str, path: &str, rss_kib: u64) -> String {
        format!(
            "{start:x}-{:x} {perms} 00000000 00:00 0 {path}\nSize: {} kB\nRss: {rss_kib} kB\nPss: {rss_kib} kB\n",
            start + size,
            size / 1024
        )
    }

    #[test]
    fn smaps_headers_and_rss_are_read() {
        let text = smaps_entry(0x1000, 4096, "r-xp", "/usr/bin/vmm", 4)
            + &smaps_entry(0x7f00_0000_0000, GIB, "rw-p", "", 300_000)
            + &smaps_entry(0x7f80_0000_0000, 8192, "rw-p", "[stack]", 8);
        let maps = parse_smaps(&text);
        assert_eq!(maps.len(), 3);
        assert_eq!(maps[0].path, "/usr/bin/vmm");
        assert!(!maps[0].writable);
        assert_eq!(maps[1].size, GIB);
        assert!(maps[1].writable);
        assert_eq!(maps[1].rss_kib, 300_000);
        assert_eq!(maps[2].path, "[stack]");
    }

    #[test]
    fn guest_ram_is_the_big_anonymous_mapping_and_the_rest_is_own() {
        let text = smaps_entry(0x1000, 4 << 20, "r-xp", "/usr/bin/qemu", 3000)
            // QEMU's RAM block, 2 MiB larger than the guest for alignment.
            + &smaps_entry(0x7f00_0000_0000, GIB + (2 << 20), "rw-p", "", 500_000)
            // A malloc arena: big, writable, anonymous, but no room is left for it.
            + &smaps_entry(0x7f80_0000_0000, 64 << 20, "rw-p", "", 2000)
            // The reserved rest of an arena: not writable.
            + &smaps_entry(0x7f90_0000_0000, 60 << 20, "---p", "", 0);
        let used = memory_use(&parse_smaps(&text), GIB);
        assert_eq!(used.guest_ram_rss_kib, 500_000);
        assert_eq!(used.guest_ram_mappings, 1);
        assert_eq!(used.rss_kib, 505_000);
        assert_eq!(used.own_kib(), 5000);
    }

    #[test]
    fn guest_ram_in_two_regions_and_memfd_backing_count() {
        let text = smaps_entry(
            0x7f00_0000_0000,
            3 * GIB,
            "rw-s",
            "/memfd:guest-ram (deleted)",
            10,
        ) + &smaps_entry(
            0x7f10_0000_0000,
            GIB,
            "rw-s",
            "/memfd:guest-ram (deleted)",
            20,
        ) + &smaps_entry(0x7f20_0000_0000, 8 << 20, "rw-p", "", 7);
        let used = memory_use(&parse_smaps(&text), 4 * GIB);
        assert_eq!(used.guest_ram_rss_kib, 30);
        assert_eq!(used.guest_ram_mappings, 2);
        assert_eq!(used.own_kib(), 7);
    }

    #[test]
    fn guest_ram_mapping_starts_where_smaps_says() {
        let text = smaps_entry(0x7f00_0000_0000, GIB, "rw-p", "", 10)
            + &smaps_entry(0x7f20_0000_0000, 8 << 20, "rw-p", "", 7);
        let maps = parse_smaps(&text);
        let ram = guest_ram_mappings(&maps, GIB);
        assert_eq!(ram.len(), 1);
        assert_eq!(ram[0].start, 0x7f00_0000_0000);
    }

    #[test]
    fn resident_pages_are_counted_per_2_mib_block() {
        let present = 1u64 << 63;
        let swapped = 1u64 << 62;
        let mut entries = vec![0u64; PAGES_PER_BLOCK * 2 + 3];
        entries[0] = present | 0x1234;
        entries[1] = swapped;
        entries[2] = 0x1234; // a PFN without the present bit: not resident
        entries[PAGES_PER_BLOCK] = present;
        entries[PAGES_PER_BLOCK * 2 + 2] = present;
        assert_eq!(resident_per_block(&entries), [2, 1, 1]);
        assert!(resident_per_block(&[]).is_empty());
    }

    #[test]
    fn hostile_smaps_text_is_tolerated() {
        assert!(parse_smaps("").is_empty());
        assert!(parse_smaps("Rss: 12 kB\nzz-yy rw-p\n\n-\n").is_empty());
        let maps = parse_smaps("1000-0 rw-p 0 0 0\nRss: lots kB\n");
        assert_eq!(maps.len(), 1);
        assert_eq!(maps[0].size, 0);
        assert_eq!(maps[0].rss_kib, 0);
        assert_eq!(memory_use(&maps, GIB).rss_kib, 0);
    }

    #[test]
    fn vm_rss_is_read_from_status() {
        let status = "Name:\tvmm\nVmPeak:\t 1000 kB\nVmRSS:\t  123456 kB\nThreads:\t5\n";
        assert_eq!(parse_vm_rss_kib(status), Some(123_456));
        assert_eq!(parse_vm_rss_kib("Name: vmm\n"), None);
        assert_eq!(parse_vm_rss_kib("VmRSS: many kB\n"), None);
    }

    #[test]
    fn stat_ticks_are_counted_after_the_name() {
        // A name with a space and a parenthesis, as QEMU's vCPU threads have.
        let stat = "42 (CPU 0/KVM) x) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0";
        assert_eq!(parse_stat_ticks(stat), Some(325));
        assert_eq!(parse_stat_ticks("42 (vmm) S 1"), None);
        assert_eq!(parse_stat_ticks("no parenthesis"), None);
    }

    #[test]
    fn threads_are_told_apart_by_name() {
        assert_eq!(thread_kind("vcpu0"), ThreadKind::Vcpu);
        assert_eq!(thread_kind("vcpu12"), ThreadKind::Vcpu);
        assert_eq!(thread_kind("CPU 1/KVM"), ThreadKind::Vcpu);
        assert_eq!(thread_kind("vmm"), ThreadKind::Vmm);
        assert_eq!(thread_kind("vmm-api"), ThreadKind::Vmm);
        assert_eq!(thread_kind("qemu-system-x86"), ThreadKind::Vmm);
        assert_eq!(thread_kind("CPU hotplug"), ThreadKind::Vmm);
    }

    #[test]
    fn cpu_seconds_between_two_readings() {
        let before = CpuTicks { vcpu: 100, vmm: 10 };
        let after = CpuTicks { vcpu: 350, vmm: 60 };
        assert_eq!(after.seconds_since(&before), (2.5, 0.5));
        // A restarted count (a thread ended) never goes negative.
        assert_eq!(before.seconds_since(&after), (0.0, 0.0));
    }
}
