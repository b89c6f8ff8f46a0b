//! Backings: the boot's guest (1 GiB, 2 vCPUs, `--balloon page-reporting,stats`) on one
//! backing of guest RAM (`--mem-backing anon|thp|hugetlb`), to set the huge-page backings
//! against `anon`: how long it takes to come up, how fast the guest writes memory it never
//! touched, how much of 300 MiB it fills and frees comes back to the host, and what an
//! inflate of 256 MiB gives back.
//!
//! Host memory is the VMM's VmRSS plus the host's hugetlb pages in use (less those in use
//! before the guest started): hugetlb pages are not in VmRSS, and a huge page the balloon
//! frees goes back to the pool. The host needs a pool of 512 free 2 MiB pages for the
//! hugetlb guest and transparent huge pages on `madvise` or `always` for the thp one: this
//! scenario sets both up for its guest (as root, which a nested KVM host is) and puts them
//! back afterwards.

use std::fs;
use std::path::Path;
use std::thread;
use std::time::Duration;

use super::{fail, kib_to_mib, since, Guest, Outcome, Phases, StepError};
use crate::figures::key;
use crate::launch::{MemBacking, VmmUnderTest};
use crate::plan::{self, GuestFiles, Scenario, FILL_MIB};
use crate::procfs;

/// Memory the guest writes once, timed, in MiB.
const TOUCH_MIB: u64 = 512;
/// The balloon inflated at the end, in MiB.
const INFLATE_MIB: u64 = 256;
/// How long the filled memory is held before it is freed.
const HOLD: Duration = Duration::from_secs(3);
/// When, after the guest freed its memory, the host's share back is read.
const AFTER_FREE: Duration = Duration::from_secs(5);
/// The pause after the touched memory is freed, and after the balloon reached its size.
const SETTLE: Duration = Duration::from_secs(5);

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";
const THP_ENABLED: &str = "/sys/kernel/mm/transparent_hugepage/enabled";

pub fn run(
    vmm: &VmmUnderTest,
    files: &GuestFiles,
    scenario: Scenario,
    dir: &Path,
    out: &mut Outcome,
) -> Result<(), StepError> {
    let machine = plan::machine(scenario, files);
    let _host = match machine.mem_backing {
        Some(MemBacking::Hugetlb) => HostSetting::hugetlb_pool(machine.mem_mib / 2)?,
        Some(MemBacking::Thp) => HostSetting::thp_on_madvise()?,
        _ => None,
    };
    let pool_before_kib = procfs::read_hugetlb_in_use_kib().unwrap_or(0);
    let mut guest = Guest::start(vmm, &machine, dir, "guest")?;
    out.command = guest.command.clone();
    let host = HostMemory {
        pid: guest.pid,
        pool_before_kib,
    };
    measure(&mut guest, &host, out)?;
    guest.poweroff()
}

/// What the host spends on one guest.
struct HostMemory {
    pid: u32,
    pool_before_kib: u64,
}

impl HostMemory {
    fn kib(&self) -> Result<u64, StepError> {
        let Some(rss) = procfs::read_vm_rss_kib(self.pid) else {
            return fail("the VMM process is gone");
        };
        let pool = procfs::read_hugetlb_in_use_kib()
            .map_err(|e| StepError(format!("cannot read the hugetlb pool: {e}")))?;
        Ok(rss + pool.saturating_sub(self.pool_before_kib))
    }
}

fn measure(guest: &mut Guest, host: &HostMemory, out: &mut Outcome) -> Result<(), StepError> {
    let mut phases = Phases::new(guest.exec_at);
    phases.next("boot", &[guest], out);
    let ready = guest.wait_ready()?;
    out.set(key::EXEC_TO_READY_S, since(guest.exec_at, ready));
    out.set(key::HOST_READY_MIB, kib_to_mib(host.kib()?));
    guest.control()?;

    phases.next(&format!("write {TOUCH_MIB}M"), &[guest], out);
    // Timed by the guest's clock, around the write alone; the file is removed after.
    let (_, text) = guest.run(&format!(
        "read a _ </proc/uptime; dd if=/dev/zero of=/tmp/touch bs=1M count={TOUCH_MIB} 2>/dev/null; \
         read b _ </proc/uptime; rm /tmp/touch; echo \"$a $b\""
    ))?;
    let Some(took_s) = uptime_span(&text) else {
        return fail(format!("cannot read two uptimes from {text:?}"));
    };
    out.set(key::TOUCH_MIB_PER_S, TOUCH_MIB as f64 / took_s);
    phases.next("settle", &[guest], out);
    thread::sleep(SETTLE);

    phases.next(&format!("fill {FILL_MIB}M"), &[guest], out);
    let before_kib = host.kib()?;
    guest.run(&format!(
        "dd if=/dev/zero of=/tmp/fill bs=1M count={FILL_MIB} 2>/dev/null"
    ))?;
    thread::sleep(HOLD);
    let filled_kib = host.kib()?;
    out.set(
        key::FILL_RISE_MIB,
        kib_to_mib(filled_kib.saturating_sub(before_kib)),
    );
    phases.next("free it", &[guest], out);
    guest.run("rm /tmp/fill")?;
    thread::sleep(AFTER_FREE);
    let freed_kib = host.kib()?;
    out.set(
        key::RETURNED_5S_PCT,
        share_pct(filled_kib, freed_kib, FILL_MIB),
    );

    phases.next(&format!("inflate {INFLATE_MIB}M"), &[guest], out);
    let before_kib = host.kib()?;
    out.set(key::INFLATE_256_S, guest.resize(INFLATE_MIB << 20, None)?);
    phases.end(&[guest], out);
    thread::sleep(SETTLE);
    let inflated_kib = host.kib()?;
    out.set(
        key::INFLATE_256_RETURNED_PCT,
        share_pct(before_kib, inflated_kib, INFLATE_MIB),
    );
    let partial = guest.control()?.partial_huge_pages()?;
    out.set(key::PARTIAL_HUGE_PAGES, partial as f64);
    Ok(())
}

/// The share of `of_mib` that went from `before_kib` to `after_kib`, in percent (negative
/// when the host's memory grew).
fn share_pct(before_kib: u64, after_kib: u64, of_mib: u64) -> f64 {
    100.0 * (before_kib as f64 - after_kib as f64) / (of_mib * 1024) as f64
}

/// The seconds between the two uptimes the guest printed, `None` unless it printed two
/// numbers, the second later.
pub(super) fn uptime_span(text: &str) -> Option<f64> {
    let mut numbers = text.split_whitespace().map(str::parse::<f64>);
    let (a, b) = (numbers.next()?.ok()?, numbers.next()?.ok()?);
    if numbers.next().is_some() || !a.is_finite() || !b.is_finite() || b <= a {
        return None;
    }
    Some(b - a)
}

/// A host setting changed for one guest, put back when dropped.
struct HostSetting {
    path: &'static str,
    old: String,
}

impl HostSetting {
    /// Makes sure the hugetlb pool has `pages` free pages, raising `nr_hugepages` if it
    /// must.
    fn hugetlb_pool(pages: u64) -> Result<Option<HostSetting>, StepError> {
        let pool = || -> Result<(u64, u64, u64), StepError> {
            let text = fs::read_to_string("/proc/meminfo")?;
            procfs::parse_hugetlb_pool(&text)
                .ok_or_else(|| StepError("/proc/meminfo has no hugetlb pool fields".into()))
        };
        let (used, free, _) = pool()?;
        if free >= pages {
            return Ok(None);
        }
        let old = fs::read_to_string(NR_HUGEPAGES)?.trim().to_string();
        let wanted = used + pages;
        let setting = HostSetting {
            path: NR_HUGEPAGES,
            old,
        };
        fs::write(NR_HUGEPAGES, wanted.to_string()).map_err(|e| {
            StepError(format!(
                "the hugetlb guest needs {pages} free huge pages, the host has {free}, and \
                 raising {NR_HUGEPAGES} to {wanted} failed ({e}): run as root or reserve them"
            ))
        })?;
        let (_, free, _) = pool()?;
        if free < pages {
            return fail(format!(
                "the hugetlb guest needs {pages} free huge pages, but the host found only {free} \
                 (its memory is too fragmented: reserve them at boot)"
            ));
        }
        Ok(Some(setting))
    }

    /// Makes sure `madvise(MADV_HUGEPAGE)` gets transparent huge pages.
    fn thp_on_madvise() -> Result<Option<HostSetting>, StepError> {
        let enabled = fs::read_to_string(THP_ENABLED)
            .map_err(|e| StepError(format!("cannot read {THP_ENABLED}: {e}")))?;
        // The mode in use is the bracketed one: "always [madvise] never".
        if !enabled.contains("[never]") {
            return Ok(None);
        }
        fs::write(THP_ENABLED, "madvise").map_err(|e| {
            StepError(format!(
                "transparent huge pages are off ({THP_ENABLED}) and switching them to madvise \
                 failed ({e}): run as root"
            ))
        })?;
        Ok(Some(HostSetting {
            path: THP_ENABLED,
            old: "never".into(),
        }))
    }
}

impl Drop for HostSetting {
    fn drop(&mut self) {
        // Best effort: a setting that cannot be put back leaves the host as the run left it.
        let _ = fs::write(self.path, &self.old);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_span_takes_two_rising_numbers() {
        assert_eq!(uptime_span("12.50 14.00\n"), Some(1.5));
        for bad in [
            "",
            "12.50",
            "14.00 12.50",
            "12.50 12.50",
            "12.50 NaN",
            "12.50 inf",
            "a b",
            "1 2 3",
            "-1e400 2",
        ] {
            assert_eq!(uptime_span(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn shares_of_returned_memory() {
        assert_eq!(share_pct(400 * 1024, 100 * 1024, 300), 100.0);
        assert_eq!(share_pct(100 * 1024, 100 * 1024, 300), 0.0);
        assert!(share_pct(100 * 1024, 200 * 1024, 256) < 0.0);
    }
}
