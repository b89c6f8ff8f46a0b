//! [`ProcessMetrics`]: how long vmm has run and how much host memory it holds.
//!
//! The resident set size comes from `/proc/self/statm`, opened once when the metrics are
//! set up and read again with `pread` at offset 0 for each scrape. So a scrape needs no
//! `open`, which the API thread's seccomp filter need not allow: it reads with `pread64`
//! and asks the clock with `clock_gettime`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::Instant;

use super::{Exposition, MetricSource};

const STATM: &str = "/proc/self/statm";

/// Uptime and resident memory of the vmm process.
pub struct ProcessMetrics {
    started: Instant,
    /// `None` if `/proc` could not be read at start: the RSS is then left out.
    statm: Option<File>,
    page_size: u64,
}

impl ProcessMetrics {
    /// Uptime counts from `started`. Opens `/proc/self/statm` now; if that fails (no
    /// `/proc`), says so once and leaves the RSS out of every scrape.
    pub fn new(started: Instant) -> Self {
        let statm = File::open(STATM)
            .inspect_err(|e| {
                log::warn!("cannot open {STATM}: {e}; /metrics will not show the RSS");
            })
            .ok();
        ProcessMetrics {
            started,
            statm,
            page_size: page_size(),
        }
    }

    /// The resident set size in bytes, or `None` if it cannot be read.
    pub fn resident_bytes(&self) -> Option<u64> {
        let statm = self.statm.as_ref()?;
        // Seven numbers of at most 20 digits and their separators.
        let mut buffer = [0u8; 256];
        let length = statm.read_at(&mut buffer, 0).ok()?;
        resident_pages(&buffer[..length]).map(|pages| pages.saturating_mul(self.page_size))
    }
}

impl MetricSource for ProcessMetrics {
    fn write_metrics(&self, out: &mut Exposition) {
        out.gauge("vmm_uptime_seconds", "Seconds since the VM was set up.")
            .sample(&[], self.started.elapsed().as_secs_f64());
        if let Some(bytes) = self.resident_bytes() {
            out.gauge(
                "process_resident_memory_bytes",
                "Host memory resident for the vmm process (its RSS), guest RAM included.",
            )
            .sample(&[], bytes);
        }
    }
}

/// The second field of a `statm` line: resident pages.
fn resident_pages(statm: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(statm).ok()?;
    text.split_ascii_whitespace().nth(1)?.parse().ok()
}

fn page_size() -> u64 {
    // SAFETY: sysconf reads a configuration value; it touches no memory of ours.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_resident_pages_of_a_statm_line() {
        assert_eq!(resident_pages(b"5120 1024 512 10 0 600 0\n"), Some(1024));
        assert_eq!(resident_pages(b"5120"), None);
        assert_eq!(resident_pages(b""), None);
        assert_eq!(resident_pages(b"5120 lots 0"), None);
        assert_eq!(resident_pages(&[0xff, b' ', b'1']), None);
    }

    #[test]
    fn the_rss_follows_memory_the_process_touches() {
        let metrics = ProcessMetrics::new(Instant::now());
        let before = metrics.resident_bytes().expect("this test needs /proc");
        // 64 MiB, every page written so it is resident.
        let touched = std::hint::black_box(vec![1u8; 64 << 20]);
        let during = metrics.resident_bytes().unwrap();
        assert!(
            during >= before + (48 << 20),
            "RSS {before} → {during} after touching 64 MiB"
        );
        drop(touched);
    }

    #[test]
    fn shows_uptime_and_rss() {
        let text = {
            let mut out = Exposition::new();
            ProcessMetrics::new(Instant::now()).write_metrics(&mut out);
            out.finish()
        };
        assert!(text.contains("# TYPE vmm_uptime_seconds gauge\nvmm_uptime_seconds "));
        assert!(text.contains("# TYPE process_resident_memory_bytes gauge\n"));
    }
}
