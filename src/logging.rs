//! The VMM's one logging path: every message, ours or a library's (virtio-queue logs
//! through the `log` facade too), goes through [`log`] to the logger [`init`] installs.
//!
//! - The logger is `env_logger`, set up here: one line per message, in one format,
//!   `<UTC time> <LEVEL> [<thread>] <target>: <message>`, for example
//!   `2025-01-31T09:15:02.123Z WARN  [vcpu0] vmm::devices::virtio::mmio: virtio-mmio: ...`.
//!   Control characters in a message are escaped, so that no message (an API client's
//!   path, say) can break a line in two or drive the terminal.
//! - Which messages pass: [`LogConfig`], from `--log-level` and `RUST_LOG`.
//! - Writing never fails loudly: an error writing a line (stderr closed, a pipe nobody
//!   reads) loses that line and nothing else. vmm gives [`init`] a writer that never
//!   blocks either (`main` passes the `vmm-log` thread's buffer, see
//!   [`crate::console::output`]), writing to stderr or to `--log-file`.
//! - A guest can repeat a fault as fast as it can run; logging each one would let it fill
//!   the host's log. [`WarningCounter`] counts every occurrence of one warning and logs only
//!   the first; [`warn_once!`](crate::warn_once) gives each call site its own counter. The
//!   warnings and errors of other crates (virtio-queue's, about queues the guest set up)
//!   get the same treatment in the logger itself: each call site is logged once.

use std::collections::HashSet;
use std::fmt::{self, Display};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use log::{Level, LevelFilter, Log, Metadata, Record};

/// The level of every module `RUST_LOG` does not name, when `--log-level` is not given.
pub const DEFAULT_LEVEL: LevelFilter = LevelFilter::Warn;

/// Ends every message that is logged only the first time it happens.
const LATER_NOT_LOGGED: &str = "later occurrences are not logged";

/// Which messages are logged.
///
/// `--log-level`, when given, sets the level of every module; without it, a bare level in
/// `RUST_LOG` (`RUST_LOG=debug`) does, and [`DEFAULT_LEVEL`] without either. Module
/// directives in `RUST_LOG` (`virtio_queue=debug`, `vmm::api=off`) apply on top of the
/// level in every case, so one module can be turned up or down whatever the flag says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogConfig {
    /// `--log-level`.
    pub level: Option<LevelFilter>,
    /// The value of `RUST_LOG`, in `env_logger`'s syntax.
    pub rust_log: Option<String>,
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("RUST_LOG={spec:?}: {source}")]
    BadFilter {
        spec: String,
        source: env_filter::ParseError,
    },
    #[error("a logger is already installed in this process")]
    AlreadyInstalled,
}

/// Installs the logger for the whole process: messages that `config` lets pass are written
/// to `out`, one line each (the VMM passes stderr; tests pass a buffer they read).
pub fn init(config: &LogConfig, out: Box<dyn io::Write + Send>) -> Result<(), LoggingError> {
    let logger = Logger::new(config, out)?;
    let max_level = logger.env_logger.filter();
    log::set_boxed_logger(Box::new(logger)).map_err(|_| LoggingError::AlreadyInstalled)?;
    log::set_max_level(max_level);
    Ok(())
}

/// `env_logger`, with the warnings and errors of other crates logged once per call site.
struct Logger {
    env_logger: env_logger::Logger,
    /// The `(file, line)` of every other crate's warning or error logged so far.
    library_sites_logged: Mutex<HashSet<(&'static str, u32)>>,
}

impl Logger {
    fn new(config: &LogConfig, out: Box<dyn io::Write + Send>) -> Result<Logger, LoggingError> {
        Ok(Logger {
            env_logger: build_env_logger(config, out)?,
            library_sites_logged: Mutex::new(HashSet::new()),
        })
    }

    /// A warning or error of another crate: those we use report what the guest did (such
    /// as virtio-queue about the queues it set up), as often as the guest does it.
    fn is_from_library(record: &Record) -> bool {
        let target = record.target();
        let ours = target == "vmm" || target.starts_with("vmm::");
        !ours && record.level() <= Level::Warn
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.env_logger.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if !self.env_logger.matches(record) {
            return;
        }
        if !Self::is_from_library(record) {
            self.env_logger.log(record);
            return;
        }
        // `log`'s macros always give a static file and a line; a record without them
        // shares one site with the others like it.
        let site = (
            record.file_static().unwrap_or(""),
            record.line().unwrap_or(0),
        );
        let first = self
            .library_sites_logged
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(site);
        if first {
            let args = format_args!("{}; {LATER_NOT_LOGGED}", record.args());
            let record = Record::builder()
                .metadata(record.metadata().clone())
                .args(args)
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .build();
            self.env_logger.log(&record);
        }
    }

    fn flush(&self) {
        self.env_logger.flush();
    }
}

fn build_env_logger(
    config: &LogConfig,
    out: Box<dyn io::Write + Send>,
) -> Result<env_logger::Logger, LoggingError> {
    let mut builder = env_logger::Builder::new();
    // A later directive for the same module replaces an earlier one, so the order below is
    // the order of precedence: default, then RUST_LOG, then the flag.
    builder.filter_level(DEFAULT_LEVEL);
    if let Some(spec) = &config.rust_log {
        // env_logger would report a bad directive itself, with `eprintln!` (which panics
        // when stderr is a closed pipe), and go on without it; refuse it instead.
        env_filter::Builder::new()
            .try_parse(spec)
            .map_err(|source| LoggingError::BadFilter {
                spec: spec.clone(),
                source,
            })?;
        builder.parse_filters(spec);
    }
    if let Some(level) = config.level {
        builder.filter_level(level);
    }
    builder
        .target(env_logger::Target::Pipe(out))
        .format(|out, record| {
            let time = out.timestamp_millis();
            let thread = std::thread::current();
            write_line(out, time, thread.name(), record)
        });
    Ok(builder.build())
}

/// Writes one log line: `<time> <LEVEL> [<thread>] <target>: <message>`.
fn write_line(
    out: &mut dyn io::Write,
    time: impl Display,
    thread: Option<&str>,
    record: &Record,
) -> io::Result<()> {
    writeln!(
        out,
        "{time} {:<5} [{}] {}: {}",
        record.level(),
        thread.unwrap_or("<unnamed>"),
        record.target(),
        OneLine(record.args()),
    )
}

/// A message with its control characters escaped (a newline becomes `\n`).
struct OneLine<'a>(&'a fmt::Arguments<'a>);

impl Display for OneLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::write(&mut EscapeControl(f), *self.0)
    }
}

struct EscapeControl<'a, 'b>(&'a mut fmt::Formatter<'b>);

impl fmt::Write for EscapeControl<'_, '_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        for c in text.chars() {
            if c.is_control() {
                write!(self.0, "{}", c.escape_default())?;
            } else {
                self.0.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// One warning a guest (or a client) can trigger at will: every occurrence is counted, only
/// the first is logged. Shared by [`warn_once!`](crate::warn_once) (one per call site) and
/// the balloon's per-device warnings (one per kind of fault).
#[derive(Debug, Default)]
pub struct WarningCounter(AtomicU64);

impl WarningCounter {
    pub const fn new() -> Self {
        WarningCounter(AtomicU64::new(0))
    }

    /// Counts one occurrence; the first is logged at warn level under `target` (a module
    /// path, for `RUST_LOG`), saying that later ones are not.
    pub fn warn(&self, target: &str, message: fmt::Arguments<'_>) {
        if self.record() == 0 {
            log::warn!(target: target, "{message}; {LATER_NOT_LOGGED}");
        }
    }

    /// How often the warning happened.
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Counts one occurrence; returns the count before it.
    fn record(&self) -> u64 {
        let previous = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_add(1))
            });
        // The closure always returns `Some`, so the update cannot fail.
        previous.unwrap_or_else(|n| n)
    }
}

/// Logs a warning the first time this call site is reached; later times are only counted.
/// Takes `format!` arguments.
#[macro_export]
macro_rules! warn_once {
    ($($arg:tt)*) => {{
        static COUNTER: $crate::logging::WarningCounter = $crate::logging::WarningCounter::new();
        COUNTER.warn(module_path!(), format_args!($($arg)*));
    }};
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex, OnceLock};

    use super::*;

    /// A writer tests can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    impl io::Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn config(level: Option<LevelFilter>, rust_log: Option<&str>) -> LogConfig {
        LogConfig {
            level,
            rust_log: rust_log.map(str::to_string),
        }
    }

    fn passes(config: &LogConfig, target: &str, level: Level) -> bool {
        let logger = Logger::new(config, Box::new(io::sink())).unwrap();
        let record = Record::builder().target(target).level(level).build();
        logger.env_logger.matches(&record)
    }

    fn line(thread: Option<&str>, level: Level, target: &str, args: fmt::Arguments) -> String {
        let record = Record::builder()
            .level(level)
            .target(target)
            .args(args)
            .build();
        let mut out = Vec::new();
        write_line(&mut out, "2025-01-31T09:15:02.123Z", thread, &record).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn formats_one_line_per_message() {
        assert_eq!(
            line(
                Some("vcpu0"),
                Level::Warn,
                "vmm::devices",
                format_args!("queue {} ignored", 3)
            ),
            "2025-01-31T09:15:02.123Z WARN  [vcpu0] vmm::devices: queue 3 ignored\n"
        );
        assert_eq!(
            line(
                None,
                Level::Error,
                "virtio_queue::queue",
                format_args!("bad")
            ),
            "2025-01-31T09:15:02.123Z ERROR [<unnamed>] virtio_queue::queue: bad\n"
        );
    }

    #[test]
    fn escapes_control_characters() {
        let text = line(
            Some("vmm-api"),
            Level::Warn,
            "vmm::api",
            format_args!("GET /a\nb\r\t\x1b[31m é"),
        );
        assert_eq!(
            text,
            "2025-01-31T09:15:02.123Z WARN  [vmm-api] vmm::api: GET /a\\nb\\r\\t\\u{1b}[31m é\n"
        );
    }

    #[test]
    fn the_logger_writes_time_level_and_thread() {
        let out = Shared::default();
        let logger = Logger::new(&LogConfig::default(), Box::new(out.clone())).unwrap();
        std::thread::Builder::new()
            .name("vcpu3".to_string())
            .spawn(move || {
                logger.log(
                    &Record::builder()
                        .level(Level::Warn)
                        .target("vmm::test")
                        .args(format_args!("hello"))
                        .build(),
                );
                logger.log(
                    &Record::builder()
                        .level(Level::Info)
                        .target("vmm::test")
                        .args(format_args!("below warn"))
                        .build(),
                );
            })
            .unwrap()
            .join()
            .unwrap();
        let text = out.text();
        let (time, rest) = text.split_once(' ').unwrap();
        // RFC 3339 in UTC with milliseconds: 2025-01-31T09:15:02.123Z
        assert_eq!(time.len(), 24, "{text:?}");
        assert_eq!(&time[10..11], "T", "{text:?}");
        assert_eq!(&time[19..20], ".", "{text:?}");
        assert!(time.ends_with('Z'), "{text:?}");
        assert_eq!(rest, "WARN  [vcpu3] vmm::test: hello\n");
    }

    #[test]
    fn write_errors_are_ignored() {
        struct Broken;
        impl io::Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
        }
        let logger = Logger::new(&LogConfig::default(), Box::new(Broken)).unwrap();
        for _ in 0..2 {
            logger.log(
                &Record::builder()
                    .level(Level::Error)
                    .args(format_args!("lost"))
                    .build(),
            );
        }
    }

    #[test]
    fn warn_is_the_default_level() {
        let default = config(None, None);
        assert!(passes(&default, "vmm::x", Level::Warn));
        assert!(passes(&default, "vmm::x", Level::Error));
        assert!(!passes(&default, "vmm::x", Level::Info));
    }

    #[test]
    fn rust_log_sets_the_level_without_the_flag() {
        let debug = config(None, Some("debug"));
        assert!(passes(&debug, "vmm::x", Level::Debug));
        assert!(!passes(&debug, "vmm::x", Level::Trace));
        let modules_only = config(None, Some("virtio_queue=trace"));
        assert!(passes(&modules_only, "virtio_queue::queue", Level::Trace));
        assert!(passes(&modules_only, "vmm::x", Level::Warn));
        assert!(!passes(&modules_only, "vmm::x", Level::Info));
    }

    #[test]
    fn the_flag_sets_the_level_and_rust_log_modules_still_apply() {
        let flag_wins = config(Some(LevelFilter::Error), Some("debug"));
        assert!(!passes(&flag_wins, "vmm::x", Level::Warn));
        assert!(passes(&flag_wins, "vmm::x", Level::Error));

        let module = config(Some(LevelFilter::Error), Some("info,virtio_queue=debug"));
        assert!(passes(&module, "virtio_queue::queue", Level::Debug));
        assert!(!passes(&module, "virtio_queue::queue", Level::Trace));
        assert!(!passes(&module, "vmm::x", Level::Warn));

        let quiet_module = config(Some(LevelFilter::Info), Some("vmm::api=off"));
        assert!(!passes(&quiet_module, "vmm::api::connection", Level::Error));
        assert!(passes(&quiet_module, "vmm::devices", Level::Info));

        let off = config(Some(LevelFilter::Off), None);
        assert!(!passes(&off, "vmm::x", Level::Error));
    }

    #[test]
    fn a_bad_rust_log_is_refused_with_its_value() {
        let Err(e) = Logger::new(&config(None, Some("vmm=loud")), Box::new(io::sink())) else {
            panic!("RUST_LOG=vmm=loud was accepted");
        };
        assert!(e.to_string().contains("vmm=loud"), "{e}");
    }

    #[test]
    fn other_crates_warnings_are_logged_once_per_call_site() {
        let out = Shared::default();
        let logger = Logger::new(&config(None, Some("trace")), Box::new(out.clone())).unwrap();
        let log = |target: &str, level: Level, line: u32, message: &str| {
            logger.log(
                &Record::builder()
                    .target(target)
                    .level(level)
                    .file_static(Some("src/queue.rs"))
                    .line(Some(line))
                    .args(format_args!("{message}"))
                    .build(),
            );
        };
        for i in 0..3 {
            log(
                "virtio_queue::queue",
                Level::Error,
                368,
                &format!("size {i}"),
            );
            log(
                "virtio_queue::queue",
                Level::Warn,
                400,
                &format!("ring {i}"),
            );
            log(
                "virtio_queue::queue",
                Level::Debug,
                500,
                &format!("debug {i}"),
            );
            log("vmm::api", Level::Error, 368, &format!("ours {i}"));
        }
        let messages: Vec<String> = out
            .text()
            .lines()
            .map(|line| line.split_once(": ").unwrap().1.to_string())
            .collect();
        assert_eq!(
            messages,
            [
                "size 0; later occurrences are not logged",
                "ring 0; later occurrences are not logged",
                "debug 0",
                "ours 0",
                "debug 1",
                "ours 1",
                "debug 2",
                "ours 2",
            ]
        );
    }

    #[test]
    fn a_counter_counts_every_occurrence() {
        let counter = WarningCounter::new();
        assert_eq!(counter.record(), 0);
        assert_eq!(counter.record(), 1);
        assert_eq!(counter.count(), 2);

        let full = WarningCounter(AtomicU64::new(u64::MAX));
        assert_eq!(full.record(), u64::MAX);
        assert_eq!(full.count(), u64::MAX);
    }

    /// Records what reaches the `log` facade from this module's tests. Installed once for
    /// the unit-test process; other tests' messages are left out by target.
    fn captured() -> &'static Mutex<Vec<(Level, String, String)>> {
        struct Capture(Mutex<Vec<(Level, String, String)>>);
        impl Log for Capture {
            fn enabled(&self, _: &log::Metadata) -> bool {
                true
            }
            fn log(&self, record: &Record) {
                if record.target().starts_with("vmm::logging::tests") {
                    let entry = (
                        record.level(),
                        record.target().to_string(),
                        record.args().to_string(),
                    );
                    self.0.lock().unwrap().push(entry);
                }
            }
            fn flush(&self) {}
        }
        static CAPTURE: OnceLock<&'static Capture> = OnceLock::new();
        let capture = CAPTURE.get_or_init(|| {
            let capture: &'static Capture = Box::leak(Box::new(Capture(Mutex::new(Vec::new()))));
            log::set_logger(capture).expect("no other unit test installs a logger");
            log::set_max_level(LevelFilter::Trace);
            capture
        });
        &capture.0
    }

    fn messages_from(target: &str) -> Vec<(Level, String)> {
        captured()
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, t, _)| t == target)
            .map(|(level, _, message)| (*level, message.clone()))
            .collect()
    }

    #[test]
    fn a_counter_logs_only_the_first_occurrence() {
        captured();
        let target = "vmm::logging::tests::counter";
        let counter = WarningCounter::new();
        for i in 0..3 {
            counter.warn(target, format_args!("fault {i}"));
        }
        assert_eq!(counter.count(), 3);
        assert_eq!(
            messages_from(target),
            [(
                Level::Warn,
                "fault 0; later occurrences are not logged".to_string()
            )]
        );
    }

    #[test]
    fn warn_once_logs_once_per_call_site() {
        captured();
        fn fault(site: u32) {
            match site {
                1 => warn_once!("site one"),
                _ => warn_once!("site {site}"),
            }
        }
        for _ in 0..3 {
            fault(1);
            fault(2);
            fault(3);
        }
        let target = module_path!();
        assert_eq!(
            messages_from(target),
            [
                (
                    Level::Warn,
                    "site one; later occurrences are not logged".to_string()
                ),
                (
                    Level::Warn,
                    "site 2; later occurrences are not logged".to_string()
                ),
            ]
        );
    }
}
