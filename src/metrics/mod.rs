//! Metrics in the Prometheus text exposition format (version 0.0.4), served at
//! `GET /metrics` (docs/metrics.md lists every metric).
//!
//! Each part of the VMM counts its own events where they happen and describes them itself
//! as a [`MetricSource`]: the balloon its queues and pages, each vCPU its exits, the console
//! its bytes, the API its requests. A [`Registry`] holds the sources of one VM and renders
//! them all on demand, on the API thread. Nothing is gathered in between: a scrape reads
//! the counters as they are.
//!
//! - [`counter`]: [`Counter`], a lock-free counter that saturates instead of wrapping, for
//!   events counted outside any lock (vCPU exits, console bytes, API requests).
//! - [`histogram`]: [`LatencyHistogram`], durations in fixed buckets, kept under the lock of
//!   whatever it measures.
//! - [`exposition`]: [`Exposition`], which writes metric families in the text format.
//! - [`process`]: [`ProcessMetrics`], uptime and the resident memory of the vmm process.
//!
//! Rules every source follows:
//!
//! - Names follow Prometheus conventions: `vmm_` first, base units (bytes, seconds) named
//!   last, `_total` on counters and only there.
//! - Counting costs an atomic add or a plain add under a lock already held; nothing is
//!   allocated per event. A counter never wraps: at `u64::MAX` it stays there.
//! - Label values come from fixed lists (queue names, exit reasons, API routes and
//!   statuses), never from what a guest or a client sent, so a scrape stays small whatever
//!   they do.
//!
//! This module depends on nothing else of the VMM, so devices can count without knowing
//! who reads them.

pub mod counter;
pub mod exposition;
pub mod histogram;
pub mod process;

use std::sync::{Arc, Mutex};

pub use counter::Counter;
pub use exposition::Exposition;
pub use histogram::LatencyHistogram;
pub use process::ProcessMetrics;

use crate::sync::lock;

/// The `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A part of the VMM that has metrics to show.
pub trait MetricSource: Send + Sync {
    /// Writes this source's metric families. A family name belongs to one source only.
    fn write_metrics(&self, out: &mut Exposition);
}

/// The metric sources of one VM, rendered together for `GET /metrics`.
#[derive(Default)]
pub struct Registry {
    sources: Mutex<Vec<(&'static str, Arc<dyn MetricSource>)>>,
}

impl Registry {
    pub fn new() -> Self {
        Registry::default()
    }

    /// Adds `source` under `key`, replacing the source registered under the same key (an
    /// API server started again brings fresh request counts).
    pub fn register(&self, key: &'static str, source: Arc<dyn MetricSource>) {
        let mut sources = lock(&self.sources);
        match sources.iter_mut().find(|(existing, _)| *existing == key) {
            Some(slot) => slot.1 = source,
            None => sources.push((key, source)),
        }
    }

    /// Every source's metrics, in the order they were first registered.
    pub fn render(&self) -> String {
        // A source may take a device's lock: not while holding this one.
        let sources: Vec<Arc<dyn MetricSource>> = lock(&self.sources)
            .iter()
            .map(|(_, source)| source.clone())
            .collect();
        let mut out = Exposition::new();
        for source in sources {
            source.write_metrics(&mut out);
        }
        out.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(&'static str, u64);

    impl MetricSource for Fixed {
        fn write_metrics(&self, out: &mut Exposition) {
            out.counter(self.0, "A test counter.").sample(&[], self.1);
        }
    }

    #[test]
    fn renders_every_source_once_and_replaces_by_key() {
        let registry = Registry::new();
        registry.register("a", Arc::new(Fixed("a_total", 1)));
        registry.register("b", Arc::new(Fixed("b_total", 2)));
        registry.register("a", Arc::new(Fixed("a_total", 3)));
        assert_eq!(
            registry.render(),
            "# HELP a_total A test counter.\n# TYPE a_total counter\na_total 3\n\
             # HELP b_total A test counter.\n# TYPE b_total counter\nb_total 2\n"
        );
        assert_eq!(Registry::new().render(), "");
    }
}
