//! [`LatencyHistogram`]: how long something took, counted in fixed buckets.
//!
//! It is plain data, updated under the lock of whatever it measures (a device processing
//! a queue already holds its own), and copied out for a scrape. Buckets are fixed so
//! that two scrapes, or two VMs, can be compared bucket by bucket.

use std::time::Duration;

/// Upper bounds of the buckets, in nanoseconds: 1 µs to 1 s in 1-2.5-5 steps. One
/// notification of a balloon queue takes from a few microseconds (a statistics buffer)
/// to milliseconds (discarding a large run of pages); more than a second would be a
/// hostile driver or a host in trouble, which the `+Inf` bucket still counts.
pub const BUCKET_BOUNDS_NS: [u64; 19] = [
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
];

/// Durations counted per bucket, with their sum. Every count saturates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// Observations per bucket (not cumulative); the last one is above every bound.
    counts: [u64; BUCKET_BOUNDS_NS.len() + 1],
    sum_ns: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            counts: [0; BUCKET_BOUNDS_NS.len() + 1],
            sum_ns: 0,
        }
    }
}

impl LatencyHistogram {
    pub fn observe(&mut self, duration: Duration) {
        let ns = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BUCKET_BOUNDS_NS.partition_point(|&bound| bound < ns);
        self.counts[bucket] = self.counts[bucket].saturating_add(1);
        self.sum_ns = self.sum_ns.saturating_add(ns);
    }

    /// How many durations were observed.
    pub fn count(&self) -> u64 {
        self.counts
            .iter()
            .fold(0u64, |total, &n| total.saturating_add(n))
    }

    /// The sum of every duration observed, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_ns as f64 / 1e9
    }

    /// `(upper bound in nanoseconds, observations at or below it)` per bucket, ending
    /// with `None` (no bound: `+Inf`) and the total count: the cumulative form the text
    /// format wants.
    pub fn cumulative_buckets(&self) -> impl Iterator<Item = (Option<u64>, u64)> + '_ {
        let bounds = BUCKET_BOUNDS_NS
            .iter()
            .map(|&ns| Some(ns))
            .chain(std::iter::once(None));
        bounds.zip(self.counts.iter().scan(0u64, |total, &n| {
            *total = total.saturating_add(n);
            Some(*total)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_duration_lands_in_the_first_bucket_that_holds_it() {
        let mut histogram = LatencyHistogram::default();
        histogram.observe(Duration::from_nanos(1_000)); // on the first bound
        histogram.observe(Duration::from_nanos(1_001));
        histogram.observe(Duration::from_millis(3));
        histogram.observe(Duration::from_secs(5));
        assert_eq!(histogram.count(), 4);
        let buckets: Vec<(Option<u64>, u64)> = histogram.cumulative_buckets().collect();
        assert_eq!(buckets.len(), BUCKET_BOUNDS_NS.len() + 1);
        assert_eq!(buckets[0], (Some(1_000), 1));
        assert_eq!(buckets[1], (Some(2_500), 2));
        assert_eq!(buckets[10], (Some(2_500_000), 2));
        assert_eq!(buckets[11], (Some(5_000_000), 3));
        assert_eq!(buckets[18], (Some(1_000_000_000), 3));
        assert_eq!(buckets[19], (None, 4));
        assert!((histogram.sum_seconds() - 5.003_002_001).abs() < 1e-9);
    }

    #[test]
    fn counts_saturate() {
        let mut histogram = LatencyHistogram::default();
        histogram.observe(Duration::MAX);
        histogram.observe(Duration::MAX);
        histogram.counts[0] = u64::MAX;
        histogram.observe(Duration::ZERO);
        assert_eq!(histogram.counts[0], u64::MAX);
        assert_eq!(histogram.count(), u64::MAX);
        assert_eq!(histogram.sum_ns, u64::MAX);
        assert_eq!(
            histogram.cumulative_buckets().last(),
            Some((None, u64::MAX))
        );
    }
}
