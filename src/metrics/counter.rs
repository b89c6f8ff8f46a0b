//! [`Counter`]: an event count shared between the thread that counts and the one that
//! reports, without a lock.

use std::sync::atomic::{AtomicU64, Ordering};

/// A count that only goes up and stops at `u64::MAX` rather than wrapping to 0, which a
/// scraper would read as a restart.
///
/// Adding is one uncontended compare-and-swap in the common case (each vCPU, and the
/// console, has counters of its own), about what a plain atomic add costs, and never
/// allocates. Relaxed ordering: a count orders nothing else.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }

    pub fn add(&self, n: u64) {
        // `None` leaves a saturated counter as it is without writing it.
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |count| {
                (count != u64::MAX).then(|| count.saturating_add(n))
            });
    }

    pub fn inc(&self) {
        self.add(1);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn counts_and_saturates_instead_of_wrapping() {
        let counter = Counter::new();
        counter.inc();
        counter.add(41);
        assert_eq!(counter.get(), 42);
        counter.add(u64::MAX - 50);
        assert_eq!(counter.get(), u64::MAX - 8);
        counter.add(100);
        assert_eq!(counter.get(), u64::MAX);
        counter.inc();
        assert_eq!(counter.get(), u64::MAX);
    }

    #[test]
    fn no_add_is_lost_between_threads() {
        let counter = Arc::new(Counter::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let counter = counter.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        counter.inc();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(counter.get(), 40_000);
    }
}
