//! [`Exposition`]: metric families written in the Prometheus text exposition format,
//! version 0.0.4 (`text/plain; version=0.0.4`).
//!
//! The format is lines of text: `# HELP name text` and `# TYPE name type` before a
//! family's samples, then one `name{label="value",...} value` line per sample; a
//! histogram adds `_bucket` lines with an `le` label, `_sum` and `_count`. Three escaping
//! rules keep a sample on its line: in label values `\`, `"` and a line feed become `\\`,
//! `\"` and `\n`; in help text `\` and a line feed do.
//!
//! Why not a crate: `prometheus-client`, the official Rust client, writes only the
//! OpenMetrics format, whose counter families a 0.0.4 reader does not take; the
//! `prometheus` crate writes 0.0.4 but brings eight more crates (parking_lot, a lazily
//! built global registry) and metric types of its own, whose integer counters wrap where
//! ours must saturate, only for the encoder's sixty lines. The real `promtool check
//! metrics` checks what this writes, in the API tests and in a boot test.

use std::fmt::Write;

use super::histogram::LatencyHistogram;

/// A sample's value. Counts are written as integers, so they stay exact at any size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Count(u64),
    Real(f64),
}

impl From<u64> for Value {
    fn from(count: u64) -> Self {
        Value::Count(count)
    }
}

impl From<f64> for Value {
    fn from(real: f64) -> Self {
        Value::Real(real)
    }
}

/// A family's type, as its `# TYPE` line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// The text of a scrape being written.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    pub fn new() -> Self {
        Exposition::default()
    }

    /// A counter family: `name` ends in `_total`.
    pub fn counter(&mut self, name: &'static str, help: &'static str) -> Family<'_> {
        self.family(name, help, Kind::Counter)
    }

    pub fn gauge(&mut self, name: &'static str, help: &'static str) -> Family<'_> {
        self.family(name, help, Kind::Gauge)
    }

    /// A histogram family of durations: `name` ends in `_seconds`.
    pub fn histogram(&mut self, name: &'static str, help: &'static str) -> Family<'_> {
        self.family(name, help, Kind::Histogram)
    }

    /// The text written so far.
    pub fn finish(self) -> String {
        self.text
    }

    fn family(&mut self, name: &'static str, help: &'static str, kind: Kind) -> Family<'_> {
        debug_assert!(is_valid_name(name), "metric name {name:?}");
        Family {
            out: self,
            name,
            help,
            kind,
            started: false,
        }
    }
}

/// One metric family. Its `# HELP` and `# TYPE` lines are written with its first sample,
/// so a family without samples leaves no trace.
pub struct Family<'a> {
    out: &'a mut Exposition,
    name: &'static str,
    help: &'static str,
    kind: Kind,
    started: bool,
}

impl Family<'_> {
    /// Writes a sample of a counter or gauge with these labels.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: impl Into<Value>) -> &mut Self {
        debug_assert!(
            self.kind != Kind::Histogram,
            "{}: not a histogram sample",
            self.name
        );
        self.start();
        self.line("", labels, None, value.into());
        self
    }

    /// Writes the `_bucket`, `_sum` and `_count` samples of a histogram with these labels.
    pub fn histogram_sample(
        &mut self,
        labels: &[(&str, &str)],
        histogram: &LatencyHistogram,
    ) -> &mut Self {
        debug_assert!(
            self.kind == Kind::Histogram,
            "{}: not a histogram",
            self.name
        );
        self.start();
        let mut count = 0;
        for (bound_ns, cumulative) in histogram.cumulative_buckets() {
            let le = bound_ns.map_or_else(|| "+Inf".to_string(), seconds_from_ns);
            self.line("_bucket", labels, Some(&le), Value::Count(cumulative));
            count = cumulative;
        }
        self.line("_sum", labels, None, Value::Real(histogram.sum_seconds()));
        // The `+Inf` bucket, so that the two agree whatever was observed.
        self.line("_count", labels, None, Value::Count(count));
        self
    }

    fn start(&mut self) {
        if self.started {
            return;
        }
        self.started = true;
        let text = &mut self.out.text;
        text.push_str("# HELP ");
        text.push_str(self.name);
        text.push(' ');
        escape_into(text, self.help, false);
        text.push_str("\n# TYPE ");
        text.push_str(self.name);
        text.push(' ');
        text.push_str(self.kind.name());
        text.push('\n');
    }

    fn line(&mut self, suffix: &str, labels: &[(&str, &str)], le: Option<&str>, value: Value) {
        let text = &mut self.out.text;
        text.push_str(self.name);
        text.push_str(suffix);
        debug_assert!(
            labels.iter().all(|(l, _)| is_valid_name(l) && *l != "le"),
            "label names {labels:?}"
        );
        let le = le.map(|le| ("le", le));
        let mut separator = '{';
        for (label, value) in labels.iter().copied().chain(le) {
            text.push(separator);
            text.push_str(label);
            text.push_str("=\"");
            escape_into(text, value, true);
            text.push('"');
            separator = ',';
        }
        if separator == ',' {
            text.push('}');
        }
        text.push(' ');
        match value {
            Value::Count(count) => {
                let _ = write!(text, "{count}");
            }
            Value::Real(real) if real.is_nan() => text.push_str("NaN"),
            Value::Real(real) if real.is_infinite() => {
                text.push_str(if real > 0.0 { "+Inf" } else { "-Inf" })
            }
            Value::Real(real) => {
                let _ = write!(text, "{real}");
            }
        }
        text.push('\n');
    }
}

/// Whether `name` may be a metric or label name: `[a-zA-Z_][a-zA-Z0-9_]*` (colons are
/// for recording rules, not for exporters).
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Appends `value` escaped for a label value (`quotes`) or a help text.
fn escape_into(text: &mut String, value: &str, quotes: bool) {
    for c in value.chars() {
        match c {
            '\\' => text.push_str("\\\\"),
            '\n' => text.push_str("\\n"),
            '"' if quotes => text.push_str("\\\""),
            c => text.push(c),
        }
    }
}

/// Nanoseconds as a decimal number of seconds, exactly: 2500 is `0.0000025`, where a
/// float division would print `0.0000025000000000000004`.
fn seconds_from_ns(ns: u64) -> String {
    let (seconds, fraction) = (ns / 1_000_000_000, ns % 1_000_000_000);
    if fraction == 0 {
        return seconds.to_string();
    }
    let digits = format!("{fraction:09}");
    format!("{seconds}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn writes_counters_and_gauges_with_their_headers_once() {
        let mut out = Exposition::new();
        out.counter("vmm_things_total", "Things that happened.")
            .sample(&[("kind", "a")], 1)
            .sample(&[("kind", "b")], u64::MAX);
        out.gauge("vmm_level_bytes", "How full it is.")
            .sample(&[], 0.5);
        assert_eq!(
            out.finish(),
            "# HELP vmm_things_total Things that happened.\n\
             # TYPE vmm_things_total counter\n\
             vmm_things_total{kind=\"a\"} 1\n\
             vmm_things_total{kind=\"b\"} 18446744073709551615\n\
             # HELP vmm_level_bytes How full it is.\n\
             # TYPE vmm_level_bytes gauge\n\
             vmm_level_bytes 0.5\n"
        );
    }

    #[test]
    fn a_family_without_samples_writes_nothing() {
        let mut out = Exposition::new();
        out.gauge("vmm_absent", "Never sampled.");
        assert_eq!(out.finish(), "");
    }

    #[test]
    fn escapes_label_values_and_help_text() {
        let mut out = Exposition::new();
        out.gauge("g", "back\\slash\nnew \"line\"")
            .sample(&[("path", "a\"b\\c\nd")], 1);
        assert_eq!(
            out.finish(),
            "# HELP g back\\\\slash\\nnew \"line\"\n# TYPE g gauge\n\
             g{path=\"a\\\"b\\\\c\\nd\"} 1\n"
        );
    }

    #[test]
    fn writes_special_floats_as_the_format_spells_them() {
        let mut out = Exposition::new();
        out.gauge("g", "h")
            .sample(&[("v", "nan")], f64::NAN)
            .sample(&[("v", "inf")], f64::INFINITY)
            .sample(&[("v", "-inf")], f64::NEG_INFINITY)
            .sample(&[("v", "small")], 2.5e-7);
        let text = out.finish();
        for line in [
            "g{v=\"nan\"} NaN",
            "g{v=\"inf\"} +Inf",
            "g{v=\"-inf\"} -Inf",
            "g{v=\"small\"} 0.00000025",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }

    #[test]
    fn writes_histograms_cumulatively_with_sum_and_count() {
        let mut histogram = LatencyHistogram::default();
        histogram.observe(Duration::from_micros(2));
        histogram.observe(Duration::from_millis(2));
        let mut out = Exposition::new();
        out.histogram("vmm_work_seconds", "Time per job.")
            .histogram_sample(&[("queue", "q")], &histogram);
        let text = out.finish();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "# TYPE vmm_work_seconds histogram");
        assert_eq!(
            lines[2],
            "vmm_work_seconds_bucket{queue=\"q\",le=\"0.000001\"} 0"
        );
        assert_eq!(
            lines[3],
            "vmm_work_seconds_bucket{queue=\"q\",le=\"0.0000025\"} 1"
        );
        assert!(lines.contains(&"vmm_work_seconds_bucket{queue=\"q\",le=\"0.0025\"} 2"));
        assert!(lines.contains(&"vmm_work_seconds_bucket{queue=\"q\",le=\"1\"} 2"));
        assert!(lines.contains(&"vmm_work_seconds_bucket{queue=\"q\",le=\"+Inf\"} 2"));
        assert!(lines.contains(&"vmm_work_seconds_sum{queue=\"q\"} 0.002002"));
        assert_eq!(lines.last(), Some(&"vmm_work_seconds_count{queue=\"q\"} 2"));
    }

    #[test]
    fn names_follow_the_format() {
        for good in ["a", "_a", "vmm_balloon_actual_bytes", "A9_b"] {
            assert!(is_valid_name(good), "{good}");
        }
        for bad in ["", "9a", "a-b", "a:b", "a b", "é"] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn seconds_are_exact_decimals() {
        assert_eq!(seconds_from_ns(1_000), "0.000001");
        assert_eq!(seconds_from_ns(2_500), "0.0000025");
        assert_eq!(seconds_from_ns(250_000_000), "0.25");
        assert_eq!(seconds_from_ns(1_000_000_000), "1");
        assert_eq!(seconds_from_ns(1_500_000_000), "1.5");
    }
}
