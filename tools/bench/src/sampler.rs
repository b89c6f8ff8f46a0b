//! Samples the resident memory of one or more VMM processes at a fixed rate, on a thread
//! of its own, from the moment it starts until it is stopped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::procfs;

/// How often the resident memory is read: often enough to see memory come back second by
/// second, rarely enough that reading it (cheap: /proc/PID/status) costs nothing visible.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(250);

/// The resident memory of each sampled process at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Seconds since the run's origin (the exec of the first VMM).
    pub t_s: f64,
    /// VmRSS of each process, in KiB; `None` once it has exited.
    pub rss_kib: Vec<Option<u64>>,
}

impl Sample {
    /// The sum over the processes still running.
    pub fn total_kib(&self) -> u64 {
        self.rss_kib.iter().flatten().sum()
    }
}

pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Sample>>,
}

impl Sampler {
    /// Starts sampling `pids`, timing each sample from `origin`.
    pub fn start(origin: Instant, pids: Vec<u32>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut samples = Vec::new();
            let mut next = Instant::now();
            while !stop_flag.load(Ordering::Relaxed) {
                samples.push(Sample {
                    t_s: origin.elapsed().as_secs_f64(),
                    rss_kib: pids.iter().map(|&p| procfs::read_vm_rss_kib(p)).collect(),
                });
                // A fixed rate, not a fixed pause: a slow read does not stretch the series.
                next += SAMPLE_INTERVAL;
                match next.checked_duration_since(Instant::now()) {
                    Some(pause) => thread::sleep(pause),
                    None => next = Instant::now(),
                }
            }
            samples
        });
        Sampler { stop, thread }
    }

    /// Stops sampling and returns the samples.
    pub fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// The total resident memory at `t_s`, interpolated linearly between the samples around
/// it; `None` outside the samples' span.
pub fn total_kib_at(samples: &[Sample], t_s: f64) -> Option<f64> {
    let after = samples.iter().position(|s| s.t_s >= t_s)?;
    let b = &samples[after];
    if after == 0 {
        return (b.t_s == t_s).then_some(b.total_kib() as f64);
    }
    let a = &samples[after - 1];
    let span = b.t_s - a.t_s;
    if span <= 0.0 {
        return Some(b.total_kib() as f64);
    }
    let w = (t_s - a.t_s) / span;
    Some(a.total_kib() as f64 * (1.0 - w) + b.total_kib() as f64 * w)
}

/// Writes samples as CSV: `t_s` and one `rssN_kib` column per process (empty once it has
/// exited).
pub fn to_csv(samples: &[Sample]) -> String {
    let columns = samples.iter().map(|s| s.rss_kib.len()).max().unwrap_or(1);
    let mut out = String::from("t_s");
    for i in 0..columns {
        out.push_str(&format!(",rss{i}_kib"));
    }
    out.push('\n');
    for s in samples {
        out.push_str(&format!("{:.3}", s.t_s));
        for i in 0..columns {
            out.push(',');
            if let Some(Some(kib)) = s.rss_kib.get(i) {
                out.push_str(&kib.to_string());
            }
        }
        out.push('\n');
    }
    out
}

/// Reads what [`to_csv`] wrote. Lines that do not parse are skipped.
pub fn from_csv(text: &str) -> Vec<Sample> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split(',');
            let t_s = fields.next()?.parse().ok()?;
            let rss_kib = fields.map(|f| f.parse().ok()).collect();
            Some(Sample { t_s, rss_kib })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t_s: f64, rss: &[Option<u64>]) -> Sample {
        Sample {
            t_s,
            rss_kib: rss.to_vec(),
        }
    }

    #[test]
    fn csv_round_trip_keeps_exited_processes_empty() {
        let samples = vec![
            sample(0.0, &[Some(100), Some(200)]),
            sample(0.25, &[Some(150), None]),
        ];
        let csv = to_csv(&samples);
        assert_eq!(csv, "t_s,rss0_kib,rss1_kib\n0.000,100,200\n0.250,150,\n");
        assert_eq!(from_csv(&csv), samples);
        assert_eq!(samples[1].total_kib(), 150);
    }

    #[test]
    fn malformed_csv_lines_are_skipped() {
        let parsed = from_csv("t_s,rss0_kib\nx,1\n\n1.5,7\n2.0,lots\n");
        assert_eq!(parsed, vec![sample(1.5, &[Some(7)]), sample(2.0, &[None])]);
    }

    #[test]
    fn totals_are_interpolated_between_samples() {
        let samples = vec![sample(1.0, &[Some(100)]), sample(2.0, &[Some(300)])];
        assert_eq!(total_kib_at(&samples, 1.0), Some(100.0));
        assert_eq!(total_kib_at(&samples, 1.5), Some(200.0));
        assert_eq!(total_kib_at(&samples, 2.0), Some(300.0));
        assert_eq!(total_kib_at(&samples, 0.5), None);
        assert_eq!(total_kib_at(&samples, 2.5), None);
        assert_eq!(total_kib_at(&[], 1.0), None);
    }

    #[test]
    fn the_sampler_reads_this_process() {
        let sampler = Sampler::start(Instant::now(), vec![std::process::id()]);
        thread::sleep(SAMPLE_INTERVAL * 2);
        let samples = sampler.stop();
        assert!(!samples.is_empty());
        assert!(samples.iter().all(|s| s.rss_kib[0].is_some_and(|k| k > 0)));
        assert!(samples.windows(2).all(|w| w[0].t_s <= w[1].t_s));
    }
}
