//! Guest console output that never blocks the VM.
//!
//! The UART is written by a vCPU thread, under the serial device's lock. If that thread
//! wrote to stdout itself, a reader that stalls (a pipe nobody reads, a terminal paused by
//! its user, a slow journal) would freeze the vCPU, and with it `SIGTERM` and API
//! shutdowns, which wait for every vCPU to stop. So the UART's writer, [`ConsoleWriter`],
//! only copies bytes into a bounded buffer and returns at once; a thread of its own,
//! `vmm-console`, moves them to the output file descriptor. When the buffer is full the
//! newest bytes are dropped and counted ([`ConsoleCounters`]), never waited for, and a
//! warning says so (at most once a minute, with the running total).
//!
//! The `vmm-console` thread makes these system calls: `write` on the output descriptor,
//! `poll` on it (only when someone else made it non-blocking), and `futex` (waiting for
//! bytes, waking a flush). It is never joined: it may be stuck in `write` for as long as
//! the reader stalls, and process exit ends it. [`ConsoleOutput::flush`] gives it a bounded
//! time to write out what the guest printed last before vmm exits.
//!
//! vmm's log takes the same path ([`ConsoleOutput::start_for_log`], thread `vmm-log`), so
//! that a vCPU logging a warning cannot block on a stderr nobody reads either (with
//! `2>&1`, guest output alone fills that pipe). Dropped log bytes are counted but not
//! logged: the log is what is stalled.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crate::metrics::{Counter, Exposition, MetricSource};
use crate::seccomp::{self, SpawnError, ThreadFilter};

/// Guest output held while the reader catches up. A reader that keeps up never sees more
/// than a few bytes here; a stalled one makes the guest lose everything beyond this.
pub const OUTPUT_BUFFER_BYTES: usize = 64 * 1024;

/// The most the writer thread takes out of the buffer for one `write`.
const WRITE_CHUNK_BYTES: usize = 4096;

/// How often, at most, a warning says that output is being dropped.
pub const DROP_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// How long a flush waits for the writer thread to make progress before giving up on a
/// reader that stalled.
const FLUSH_STALL: Duration = Duration::from_millis(250);
/// How long a flush waits at most, whatever the progress.
const FLUSH_LIMIT: Duration = Duration::from_secs(2);

/// How many bytes of guest output reached the output and how many were lost. Shared
/// with whoever reports them (a log line at exit, `/metrics`).
#[derive(Debug, Default)]
pub struct ConsoleCounters {
    written: Counter,
    dropped: Counter,
}

impl ConsoleCounters {
    /// Bytes the output accepted.
    pub fn bytes_written(&self) -> u64 {
        self.written.get()
    }

    /// Bytes lost: the buffer was full (the reader stalled) or the output refused them.
    pub fn bytes_dropped(&self) -> u64 {
        self.dropped.get()
    }

    fn add_written(&self, n: usize) {
        self.written.add(n as u64);
    }

    fn add_dropped(&self, n: usize) {
        self.dropped.add(n as u64);
    }
}

impl MetricSource for ConsoleCounters {
    fn write_metrics(&self, out: &mut Exposition) {
        out.counter(
            "vmm_console_written_bytes_total",
            "Bytes of guest console output written to the --serial output.",
        )
        .sample(&[], self.bytes_written());
        out.counter(
            "vmm_console_dropped_bytes_total",
            "Bytes of guest console output dropped because the --serial output did not take them in time.",
        )
        .sample(&[], self.bytes_dropped());
    }
}

/// The buffer between the UART and the writer thread.
struct Buffer {
    bytes: VecDeque<u8>,
    capacity: usize,
    /// The writer thread holds bytes it took out of `bytes` and has not written yet.
    writer_busy: bool,
    /// The writer thread sleeps on `data_ready`; only then is a wake-up needed.
    writer_waiting: bool,
    drop_warnings: DropWarnings,
}

/// When to warn that output is being dropped: when dropping starts (after a byte that
/// fitted), at most once per [`DROP_WARNING_INTERVAL`].
#[derive(Debug, Default)]
struct DropWarnings {
    /// When the last warning was logged.
    last: Option<Instant>,
    /// Bytes were dropped since the last one that fitted.
    dropping: bool,
}

impl DropWarnings {
    /// Output was dropped at `now`; returns whether to warn.
    fn dropped(&mut self, now: Instant) -> bool {
        let starts = !self.dropping;
        self.dropping = true;
        let due = self
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= DROP_WARNING_INTERVAL);
        if starts && due {
            self.last = Some(now);
        }
        starts && due
    }

    /// Output fitted again.
    fn accepted(&mut self) {
        self.dropping = false;
    }
}

struct Shared {
    buffer: Mutex<Buffer>,
    /// Bytes arrived for the writer thread.
    data_ready: Condvar,
    /// The writer thread wrote something (or found nothing left), for a flush.
    progress: Condvar,
    counters: Arc<ConsoleCounters>,
    /// What the output is, for messages: "stdout", "/var/log/guest.log".
    name: String,
    /// Whether dropped bytes and write errors are logged (not for the log's own output).
    report: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Buffer> {
        crate::sync::lock(&self.buffer)
    }
}

/// Where guest output goes: a bounded buffer drained by the `vmm-console` thread.
pub struct ConsoleOutput {
    shared: Arc<Shared>,
}

impl ConsoleOutput {
    /// Starts the `vmm-console` thread writing guest output to `out`, named `name` in
    /// messages, with a buffer of `capacity` bytes.
    pub fn start(
        out: OwnedFd,
        name: &str,
        capacity: usize,
        filter: ThreadFilter,
    ) -> io::Result<ConsoleOutput> {
        Self::start_thread(out, name, capacity, ("vmm-console", filter), true)
    }

    /// Starts the `vmm-log` thread writing vmm's log to `out`: the same path, but dropped
    /// bytes and write errors are only counted (logging them would feed the log itself).
    pub fn start_for_log(
        out: OwnedFd,
        name: &str,
        capacity: usize,
        filter: ThreadFilter,
    ) -> io::Result<ConsoleOutput> {
        Self::start_thread(out, name, capacity, ("vmm-log", filter), false)
    }

    fn start_thread(
        out: OwnedFd,
        name: &str,
        capacity: usize,
        (thread_name, filter): (&str, ThreadFilter),
        report: bool,
    ) -> io::Result<ConsoleOutput> {
        let shared = Arc::new(Shared {
            buffer: Mutex::new(Buffer {
                bytes: VecDeque::with_capacity(capacity),
                capacity,
                writer_busy: false,
                writer_waiting: false,
                drop_warnings: DropWarnings::default(),
            }),
            data_ready: Condvar::new(),
            progress: Condvar::new(),
            counters: Arc::new(ConsoleCounters::default()),
            name: name.to_string(),
            report,
        });
        let for_thread = shared.clone();
        let builder = thread::Builder::new().name(thread_name.to_string());
        // Confined before it writes anything (see crate::seccomp).
        seccomp::spawn_confined(builder, filter, move || write_loop(&for_thread, &out)).map_err(
            |e| match e {
                SpawnError::Thread(e) => e,
                SpawnError::Confine(e) => io::Error::other(e),
            },
        )?;
        Ok(ConsoleOutput { shared })
    }

    /// The writer the UART writes guest output to.
    pub fn writer(&self) -> ConsoleWriter {
        ConsoleWriter {
            shared: self.shared.clone(),
        }
    }

    /// The output's counters.
    pub fn counters(&self) -> Arc<ConsoleCounters> {
        self.shared.counters.clone()
    }

    /// Waits until everything buffered was written, as long as the writer thread makes
    /// progress, and at most a couple of seconds; returns whether all of it was.
    pub fn flush(&self) -> bool {
        let started = Instant::now();
        let mut buffer = self.shared.lock();
        loop {
            if buffer.bytes.is_empty() && !buffer.writer_busy {
                return true;
            }
            let left = FLUSH_LIMIT.saturating_sub(started.elapsed());
            if left.is_zero() {
                return false;
            }
            let before = self.shared.counters.bytes_written();
            let (guard, timeout) = self
                .shared
                .progress
                .wait_timeout(buffer, FLUSH_STALL.min(left))
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            buffer = guard;
            if timeout.timed_out() && self.shared.counters.bytes_written() == before {
                return false;
            }
        }
    }
}

/// The UART's side of [`ConsoleOutput`]: copies guest output into the buffer and never
/// waits for the reader. Every write succeeds; what did not fit is counted as dropped.
pub struct ConsoleWriter {
    shared: Arc<Shared>,
}

impl io::Write for ConsoleWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut buffer = self.shared.lock();
        let room = buffer.capacity.saturating_sub(buffer.bytes.len());
        let taken = room.min(bytes.len());
        buffer.bytes.extend(&bytes[..taken]);
        let lost = bytes.len() - taken;
        if lost == 0 {
            buffer.drop_warnings.accepted();
        } else {
            self.shared.counters.add_dropped(lost);
            if buffer.drop_warnings.dropped(Instant::now()) && self.shared.report {
                log::warn!(
                    "guest console output: {} is not being read fast enough; dropping output \
                     ({} bytes dropped so far; this warning repeats at most once a minute)",
                    self.shared.name,
                    self.shared.counters.bytes_dropped()
                );
            }
        }
        if taken > 0 && buffer.writer_waiting {
            self.shared.data_ready.notify_one();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The `vmm-console` thread: moves bytes from the buffer to `out`, forever.
fn write_loop(shared: &Shared, out: &OwnedFd) {
    let mut chunk = Vec::with_capacity(WRITE_CHUNK_BYTES);
    let mut reported_error = false;
    loop {
        {
            let mut buffer = shared.lock();
            buffer.writer_busy = false;
            shared.progress.notify_all();
            while buffer.bytes.is_empty() {
                buffer.writer_waiting = true;
                buffer = shared
                    .data_ready
                    .wait(buffer)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                buffer.writer_waiting = false;
            }
            let n = buffer.bytes.len().min(WRITE_CHUNK_BYTES);
            chunk.clear();
            chunk.extend(buffer.bytes.drain(..n));
            buffer.writer_busy = true;
        }
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            match write_some(out, rest) {
                Ok(n) => {
                    shared.counters.add_written(n);
                    rest = &rest[n..];
                    shared.progress.notify_all();
                }
                Err(e) => {
                    // EPIPE (the reader is gone), EIO (a hung-up terminal), ENOSPC: the
                    // bytes are lost; the VM goes on. Later chunks are tried again, as the
                    // output may recover (disk space freed).
                    if !reported_error && shared.report {
                        reported_error = true;
                        log::warn!(
                            "guest console output: cannot write to {}: {e}; output is dropped \
                             while this lasts (later errors are not logged)",
                            shared.name
                        );
                    }
                    shared.counters.add_dropped(rest.len());
                    rest = &[];
                }
            }
        }
    }
}

/// One `write(2)`, retried on `EINTR`, waiting for room on `EAGAIN`: the descriptor is
/// blocking unless another process sharing it made it non-blocking.
fn write_some(out: &OwnedFd, bytes: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `bytes` is valid for reads of its length; the fd is open (owned).
        let ret = unsafe { libc::write(out.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
        if ret >= 0 {
            return Ok(ret as usize);
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::Interrupted => {}
            io::ErrorKind::WouldBlock => {
                let mut pollfd = libc::pollfd {
                    fd: out.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd; a timeout, so a reader that never comes back
                // costs a wake-up a second rather than a hang we cannot see.
                unsafe { libc::poll(&mut pollfd, 1, 1000) };
            }
            _ => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::FromRawFd;

    /// A pipe: (read end, write end).
    fn pipe() -> (std::fs::File, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both are fresh descriptors nothing else owns.
        unsafe {
            (
                std::fs::File::from_raw_fd(fds[0]),
                OwnedFd::from_raw_fd(fds[1]),
            )
        }
    }

    #[test]
    fn output_reaches_a_reader_that_keeps_up() {
        let (mut reader, write_end) = pipe();
        let output = ConsoleOutput::start(write_end, "a pipe", 1024, ThreadFilter::none()).unwrap();
        let mut writer = output.writer();
        let text = b"hello from the guest\n".repeat(200);
        let reading = thread::spawn(move || {
            let mut got = vec![0u8; 200 * 21];
            reader.read_exact(&mut got).unwrap();
            got
        });
        for chunk in text.chunks(700) {
            writer.write_all(chunk).unwrap();
            // A reader that keeps up drains the buffer before the next chunk.
            assert!(output.flush(), "a reading pipe drains");
        }
        assert_eq!(reading.join().unwrap(), text);
        let counters = output.counters();
        assert_eq!(counters.bytes_written(), text.len() as u64);
        assert_eq!(counters.bytes_dropped(), 0);
    }

    /// Fills the pipe behind `fd` to the brim, as a reader that stopped reading leaves it.
    fn fill(fd: &OwnedFd) {
        let raw = fd.as_raw_fd();
        // SAFETY: fcntl on an open descriptor with valid flags; writes from a local buffer.
        unsafe {
            let flags = libc::fcntl(raw, libc::F_GETFL);
            libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK);
            let junk = [b'.'; 4096];
            while libc::write(raw, junk.as_ptr().cast(), junk.len()) > 0 {}
            // The last, partial write may leave a few bytes of room; take those too.
            while libc::write(raw, junk.as_ptr().cast(), 1) > 0 {}
            libc::fcntl(raw, libc::F_SETFL, flags);
        }
    }

    #[test]
    fn a_reader_that_stalls_loses_bytes_but_never_blocks_the_writer() {
        let (reader, write_end) = pipe();
        fill(&write_end);
        let output =
            ConsoleOutput::start(write_end, "a pipe nobody reads", 4096, ThreadFilter::none())
                .unwrap();
        let mut writer = output.writer();
        // Far more than the buffer holds; the writer returns for every byte, as a vCPU
        // must, while the writer thread sits in a write that cannot finish.
        let total: u64 = 1 << 20;
        for _ in 0..total / 1024 {
            assert_eq!(writer.write(&[b'x'; 1024]).unwrap(), 1024);
        }
        assert!(!output.flush(), "nothing drains a pipe nobody reads");
        let counters = output.counters();
        assert_eq!(counters.bytes_written(), 0);
        // What is not dropped is held: in the buffer, or in the writer thread's hands.
        let held = {
            let buffer = output.shared.lock();
            assert!(buffer.writer_busy || buffer.bytes.len() == 4096);
            buffer.bytes.len() as u64
        };
        let in_flight = total - counters.bytes_dropped() - held;
        assert!(in_flight <= WRITE_CHUNK_BYTES as u64, "{in_flight}");
        assert!(counters.bytes_dropped() >= total - 2 * 4096);
        drop(reader);
    }

    #[test]
    fn dropping_is_warned_about_when_it_starts_and_at_most_once_a_minute() {
        let mut warnings = DropWarnings::default();
        let start = Instant::now();
        assert!(warnings.dropped(start), "the first drop is warned about");
        assert!(
            !warnings.dropped(start + Duration::from_secs(1)),
            "same episode"
        );
        warnings.accepted();
        assert!(
            !warnings.dropped(start + Duration::from_secs(2)),
            "a new episode within the minute is not"
        );
        assert!(
            !warnings.dropped(start + DROP_WARNING_INTERVAL * 2),
            "nor the same episode later on"
        );
        warnings.accepted();
        assert!(warnings.dropped(start + DROP_WARNING_INTERVAL * 2));
    }

    #[test]
    fn a_closed_reader_counts_everything_as_dropped_after_it_left() {
        let (reader, write_end) = pipe();
        drop(reader);
        let output =
            ConsoleOutput::start(write_end, "a closed pipe", 1024, ThreadFilter::none()).unwrap();
        let mut writer = output.writer();
        writer.write_all(b"nobody will see this\n").unwrap();
        assert!(output.flush());
        let counters = output.counters();
        assert_eq!(counters.bytes_written(), 0);
        assert_eq!(counters.bytes_dropped(), 21);
    }
}
