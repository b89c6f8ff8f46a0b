//! [`Balloon`]: the device's state machine. It owns the configuration space, the target,
//! the statistics timer and the hinting state; the queue work lives in `inflate`,
//! `stats`, `reporting` and `hinting`.

use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::timerfd::TimerFd;

use super::config::ConfigSpace;
use super::hinting::{process_hinting, HintingOutcome, HintingState};
use super::huge_pages::HugePageTracker;
use super::inflate::{process_deflate, process_inflate, DeflateOutcome, InflateOutcome};
use super::layout::{QueueLayout, QueueRole};
use super::ranges::DiscardOutcome;
use super::reporting::{process_reporting, ReportingOutcome};
use super::stats::{StatsOutcome, StatsState};
use super::warnings::{Warning, Warnings};
use super::{
    target_pages, BalloonConfig, BalloonError, BalloonInfo, BalloonStatistics, HintingStatus,
    BALLOON_PAGE_SIZE, MAX_STATS_INTERVAL_S, VIRTIO_BALLOON_F_PAGE_POISON,
};
use crate::devices::virtio::{
    ActivateError, Activation, InterruptKind, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1,
    VIRTIO_ID_BALLOON,
};
use crate::memory::{GuestMemoryMmap, MemoryBacking};
use crate::metrics::LatencyHistogram;

/// Entries in every balloon queue. Linux sends one inflate/deflate buffer at a time, up to
/// 32 reports and up to a queue's worth of hints; 256 leaves the guest room for all.
pub const QUEUE_MAX_SIZE: u16 = 256;

#[derive(Debug, thiserror::Error)]
pub enum BalloonSetupError {
    #[error(transparent)]
    Config(#[from] BalloonError),
    #[error("cannot create the balloon statistics timer: {0}")]
    Timer(#[source] std::io::Error),
}

/// Running totals of what the guest gave and what went back to the host, and of each
/// queue's work. The guest drives every one of them, so they saturate at `u64::MAX` rather
/// than wrap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BalloonCounters {
    /// Pages the guest put in the balloon (each distinct page of a notification once).
    pub inflated_pages: u64,
    /// Pages the guest took back out.
    pub deflated_pages: u64,
    /// Bytes of free memory the guest reported.
    pub reported_bytes: u64,
    /// Bytes of free memory the guest hinted.
    pub hinted_bytes: u64,
    /// Bytes given back to the host, by all three means.
    pub discarded_bytes: u64,
    /// Of those, by each means: inflating, free page reporting, free page hinting.
    pub inflate_discarded_bytes: u64,
    pub reporting_discarded_bytes: u64,
    pub hinting_discarded_bytes: u64,
    /// Bytes the guest offered that were not given back: outside RAM, failed, stale
    /// hints or poisoned reports.
    pub kept_bytes: u64,
    /// Discard system calls made; merging keeps this far below the page count.
    pub discard_calls: u64,
    /// Discard system calls the host refused.
    pub discard_failures: u64,
    /// Statistics buffers the guest sent (each one an update of every statistic).
    pub stats_updates: u64,
    /// Configuration interrupts raised (a new target, a hinting command).
    pub config_interrupts: u64,
    /// Each queue's work, by [`QueueRole`] (see [`BalloonCounters::queue`]).
    pub queues: [QueueCounters; 5],
}

/// The work one balloon queue did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounters {
    /// Notifications the device processed. Kicks that arrive while the device is busy
    /// with the queue are seen together, as one (the eventfd counts them up).
    pub notifications: u64,
    /// Buffers the device gave back to the driver.
    pub buffers: u64,
    /// Used-buffer interrupts the device raised for the queue.
    pub interrupts: u64,
    /// How long the device took for each notification, from taking the first buffer to
    /// raising the interrupt.
    pub processing: LatencyHistogram,
}

impl BalloonCounters {
    /// The counters of the queue serving `role`.
    pub fn queue(&self, role: QueueRole) -> &QueueCounters {
        &self.queues[role.slot()]
    }

    /// With a huge-page backing a notification frees whole huge pages, which may hold
    /// pages inflated earlier, and keeps the pages of huge pages not complete yet for
    /// later; so what an inflate keeps for good is only what lay outside RAM or failed.
    fn count_inflate(&mut self, outcome: &InflateOutcome) {
        self.inflated_pages = self.inflated_pages.saturating_add(outcome.pages);
        let discard = &outcome.discard;
        let kept_for_good = discard.outside_ram.saturating_add(discard.failed);
        let discarded =
            self.count_discard(discard.discarded.saturating_add(kept_for_good), discard);
        self.inflate_discarded_bytes = self.inflate_discarded_bytes.saturating_add(discarded);
    }

    fn count_deflate(&mut self, outcome: &DeflateOutcome) {
        self.deflated_pages = self.deflated_pages.saturating_add(outcome.pages);
    }

    fn count_stats(&mut self, outcome: &StatsOutcome) {
        self.stats_updates = self.stats_updates.saturating_add(outcome.updates);
    }

    fn count_hinting(&mut self, outcome: &HintingOutcome) {
        self.hinted_bytes = self.hinted_bytes.saturating_add(outcome.hinted);
        let discarded = self.count_discard(outcome.hinted, &outcome.discard);
        self.hinting_discarded_bytes = self.hinting_discarded_bytes.saturating_add(discarded);
    }

    fn count_reporting(&mut self, outcome: &ReportingOutcome) {
        self.reported_bytes = self.reported_bytes.saturating_add(outcome.reported);
        let discarded = self.count_discard(outcome.reported, &outcome.discard);
        self.reporting_discarded_bytes = self.reporting_discarded_bytes.saturating_add(discarded);
    }

    /// Adds what discarding `offered` bytes by one means did; returns the bytes it gave
    /// back, for that means' own total.
    fn count_discard(&mut self, offered: u64, outcome: &DiscardOutcome) -> u64 {
        self.discarded_bytes = self.discarded_bytes.saturating_add(outcome.discarded);
        self.discard_calls = self.discard_calls.saturating_add(outcome.calls);
        self.discard_failures = self.discard_failures.saturating_add(outcome.failed_calls);
        let kept = offered.saturating_sub(outcome.discarded);
        self.kept_bytes = self.kept_bytes.saturating_add(kept);
        outcome.discarded
    }

    fn count_config_interrupt(&mut self) {
        self.config_interrupts = self.config_interrupts.saturating_add(1);
    }

    /// One notification of `role`'s queue processed: `returned` buffers given back (and an
    /// interrupt raised if any were), in `took`.
    fn count_notification(&mut self, role: QueueRole, returned: usize, took: Duration) {
        let queue = &mut self.queues[role.slot()];
        queue.notifications = queue.notifications.saturating_add(1);
        queue.buffers = queue.buffers.saturating_add(returned as u64);
        queue.interrupts = queue.interrupts.saturating_add(u64::from(returned > 0));
        queue.processing.observe(took);
    }

    /// A statistics buffer handed back on the polling timer, with its interrupt.
    fn count_stats_poll(&mut self) {
        let stats = &mut self.queues[QueueRole::Stats.slot()];
        stats.buffers = stats.buffers.saturating_add(1);
        stats.interrupts = stats.interrupts.saturating_add(1);
    }
}

/// What the device holds while the driver runs it.
struct Running {
    mem: GuestMemoryMmap,
    /// Queues by role; `None` for a role whose feature the driver did not accept.
    queues: [Option<Queue>; 5],
    acked_features: u64,
    interrupt: Arc<dyn VirtioInterrupt>,
    /// With a huge-page backing: which pages are in the balloon, per huge page.
    huge_pages: Option<HugePageTracker>,
}

impl Running {
    fn queue(&mut self, role: QueueRole) -> Option<&mut Queue> {
        self.queues[role.slot()].as_mut()
    }

    fn has_feature(&self, bit: u32) -> bool {
        self.acked_features & (1u64 << bit) != 0
    }
}

/// The virtio memory balloon.
pub struct Balloon {
    config: BalloonConfig,
    guest_memory_bytes: u64,
    /// What backs guest RAM, and so in what units memory can go back to the host.
    memory_backing: MemoryBacking,
    layout: QueueLayout,
    queue_max_sizes: Vec<u16>,
    target_pages: u32,
    actual_pages: u32,
    poison_val: u32,
    stats_interval_s: u32,
    stats: StatsState,
    /// Present when the statistics feature is offered.
    stats_timer: Option<TimerFd>,
    hinting: HintingState,
    running: Option<Running>,
    counters: BalloonCounters,
    warnings: Warnings,
}

impl Balloon {
    /// A balloon for a guest with `guest_memory_bytes` of RAM. Its target starts at
    /// `config.initial_size`, which [`target_pages`] must accept.
    pub fn new(
        config: BalloonConfig,
        guest_memory_bytes: u64,
    ) -> Result<Balloon, BalloonSetupError> {
        let target_pages = target_pages(config.initial_size, guest_memory_bytes)?;
        if config.stats_interval_s > MAX_STATS_INTERVAL_S {
            return Err(BalloonError::IntervalTooLarge(config.stats_interval_s.into()).into());
        }
        let stats_timer = if config.features.stats {
            Some(nonblocking_timer().map_err(BalloonSetupError::Timer)?)
        } else {
            None
        };
        let layout = QueueLayout::for_features(&config.features);
        Ok(Balloon {
            config,
            guest_memory_bytes,
            memory_backing: MemoryBacking::default(),
            layout,
            queue_max_sizes: vec![QUEUE_MAX_SIZE; layout.len()],
            target_pages,
            actual_pages: 0,
            poison_val: 0,
            stats_interval_s: config.stats_interval_s,
            stats: StatsState::default(),
            stats_timer,
            hinting: HintingState::default(),
            running: None,
            counters: BalloonCounters::default(),
            warnings: Warnings::default(),
        })
    }

    /// Tells the balloon what backs guest RAM (`anon` if never told). With a huge-page
    /// backing it frees only whole 2 MiB pages and keeps track of partly ballooned ones.
    pub fn with_memory_backing(mut self, backing: MemoryBacking) -> Balloon {
        self.memory_backing = backing;
        self
    }

    /// The configuration the balloon was created with.
    pub fn config(&self) -> &BalloonConfig {
        &self.config
    }

    /// Which queue index serves which role.
    pub fn layout(&self) -> &QueueLayout {
        &self.layout
    }

    /// Configuration, target, actual size and negotiation state.
    pub fn info(&self) -> BalloonInfo {
        BalloonInfo {
            config: self.config,
            target_pages: self.target_pages,
            actual_pages: self.actual_pages,
            stats_interval_s: self.stats_interval_s,
            driver_ready: self.running.is_some(),
            acked_features: self.running.as_ref().map_or(0, |r| r.acked_features),
            memory_backing: self.memory_backing,
            partial_huge_pages: self
                .running
                .as_ref()
                .and_then(|r| r.huge_pages.as_ref())
                .map_or(0, HugePageTracker::partial_huge_pages),
        }
    }

    /// Sets the target in 4 KiB pages, if [`target_pages`] accepts it. Once the driver
    /// runs the device, a configuration interrupt tells it at once; before, the driver
    /// reads the target when it starts.
    pub fn set_target_pages(&mut self, pages: u32) -> Result<(), BalloonError> {
        target_pages(
            u64::from(pages) * BALLOON_PAGE_SIZE,
            self.guest_memory_bytes,
        )?;
        self.target_pages = pages;
        self.notify_config_change();
        Ok(())
    }

    /// The latest statistics the guest sent.
    pub fn statistics(&self) -> Result<BalloonStatistics, BalloonError> {
        if !self.config.features.stats {
            return Err(BalloonError::StatsDisabled);
        }
        let latest = self.stats.latest();
        Ok(BalloonStatistics {
            target_pages: self.target_pages,
            actual_pages: self.actual_pages,
            stats: latest.stats,
            unknown_tags: latest.unknown_tags,
            last_update_age_ms: self
                .stats
                .last_update()
                .map(|t| u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)),
        })
    }

    /// Changes the statistics polling interval; 0 stops polling. Takes effect at once if
    /// the device runs.
    pub fn set_stats_interval(&mut self, seconds: u32) -> Result<(), BalloonError> {
        if !self.config.features.stats {
            return Err(BalloonError::StatsDisabled);
        }
        if seconds > MAX_STATS_INTERVAL_S {
            return Err(BalloonError::IntervalTooLarge(seconds.into()));
        }
        self.stats_interval_s = seconds;
        self.arm_stats_timer();
        Ok(())
    }

    /// Starts a free page hinting run with a new command ID. With `acknowledge_on_stop`
    /// the device ends the run (DONE) itself when the guest has sent all its hints.
    pub fn start_hinting(&mut self, acknowledge_on_stop: bool) -> Result<(), BalloonError> {
        if !self.config.features.free_page_hint {
            return Err(BalloonError::HintingDisabled);
        }
        self.hinting.start(acknowledge_on_stop);
        self.notify_config_change();
        Ok(())
    }

    /// The host's and the guest's last command IDs.
    pub fn hinting_status(&self) -> Result<HintingStatus, BalloonError> {
        if !self.config.features.free_page_hint {
            return Err(BalloonError::HintingDisabled);
        }
        Ok(self.hinting.status())
    }

    /// Ends a hinting run: DONE lets the guest reuse the pages it hinted.
    pub fn stop_hinting(&mut self) -> Result<(), BalloonError> {
        if !self.config.features.free_page_hint {
            return Err(BalloonError::HintingDisabled);
        }
        self.hinting.stop();
        self.notify_config_change();
        Ok(())
    }

    /// Running totals since the balloon was created.
    pub fn counters(&self) -> BalloonCounters {
        self.counters
    }

    /// Whether pages the guest reports must be left alone: it negotiated PAGE_POISON and
    /// expects free pages to hold a non-zero pattern, which a discard would replace with
    /// zeros.
    pub fn reported_pages_keep_poison(&self) -> bool {
        self.running
            .as_ref()
            .is_some_and(|r| r.has_feature(VIRTIO_BALLOON_F_PAGE_POISON))
            && self.poison_val != 0
    }

    /// Puts the running totals where a test wants them, such as next to `u64::MAX`.
    #[cfg(test)]
    pub(super) fn set_counters(&mut self, counters: BalloonCounters) {
        self.counters = counters;
    }

    #[cfg(test)]
    pub(super) fn warning_count(&self, warning: Warning) -> u64 {
        self.warnings.count(warning)
    }

    fn config_space(&self) -> ConfigSpace {
        ConfigSpace {
            num_pages: self.target_pages,
            actual: self.actual_pages,
            free_page_hint_cmd_id: self.hinting.host_cmd(),
            poison_val: self.poison_val,
        }
    }

    fn notify_config_change(&mut self) {
        if let Some(running) = &self.running {
            running.interrupt.trigger(InterruptKind::Config);
            self.counters.count_config_interrupt();
        }
    }

    /// Arms the timer for the current interval if the driver runs the statistics queue;
    /// disarms it otherwise.
    fn arm_stats_timer(&mut self) {
        let polling = self.stats_interval_s > 0
            && self
                .running
                .as_mut()
                .is_some_and(|r| r.queue(QueueRole::Stats).is_some());
        let Some(timer) = self.stats_timer.as_mut() else {
            return;
        };
        let result = if polling {
            let period = Duration::from_secs(self.stats_interval_s.into());
            timer.reset(period, Some(period))
        } else {
            timer.clear()
        };
        if let Err(e) = result {
            self.warnings.warn(Warning::TimerFailed, e);
        }
    }

    /// Hands the held statistics buffer back so the guest refills it.
    fn poll_stats(&mut self) {
        let Some(running) = self.running.as_mut() else {
            return;
        };
        let Some(queue) = running.queues[QueueRole::Stats.slot()].as_mut() else {
            return;
        };
        if self
            .stats
            .request_update(queue, &running.mem, &mut self.warnings)
        {
            running.interrupt.trigger(InterruptKind::Queue);
            self.counters.count_stats_poll();
        }
    }

    fn process_role(&mut self, role: QueueRole) {
        let started = Instant::now();
        let may_discard_reports = !self.reported_pages_keep_poison();
        let Some(running) = self.running.as_mut() else {
            return;
        };
        let Some(queue) = running.queues[role.slot()].as_mut() else {
            self.warnings
                .warn(Warning::NotifiedUnusedQueue, role.name());
            return;
        };
        let mem = &running.mem;
        let huge_pages = running.huge_pages.as_mut();
        let host_page_size = self.memory_backing.host_page_size();
        let warnings = &mut self.warnings;
        let counters = &mut self.counters;
        let mut config_changed = false;
        let returned = match role {
            QueueRole::Inflate => {
                let out = process_inflate(queue, mem, huge_pages, warnings);
                counters.count_inflate(&out);
                out.returned
            }
            QueueRole::Deflate => {
                let out = process_deflate(queue, mem, huge_pages, warnings);
                counters.count_deflate(&out);
                out.returned
            }
            QueueRole::Stats => {
                let out = self.stats.process_queue(queue, mem, warnings);
                counters.count_stats(&out);
                out.returned
            }
            QueueRole::FreePageHint => {
                let out = process_hinting(&mut self.hinting, queue, mem, host_page_size, warnings);
                counters.count_hinting(&out);
                config_changed = out.config_changed;
                out.returned
            }
            QueueRole::Reporting => {
                let out =
                    process_reporting(queue, mem, may_discard_reports, host_page_size, warnings);
                counters.count_reporting(&out);
                out.returned
            }
        };
        if returned > 0 {
            running.interrupt.trigger(InterruptKind::Queue);
        }
        if config_changed {
            running.interrupt.trigger(InterruptKind::Config);
            counters.count_config_interrupt();
        }
        counters.count_notification(role, returned, started.elapsed());
    }
}

/// A timerfd whose read never blocks: the interval may change between the event loop
/// seeing it readable and the device reading it, and re-arming clears the expirations.
fn nonblocking_timer() -> std::io::Result<TimerFd> {
    let timer = TimerFd::new().map_err(std::io::Error::from)?;
    let fd = timer.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own; they touch no memory of ours.
    let ok = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
    };
    if !ok {
        return Err(std::io::Error::last_os_error());
    }
    Ok(timer)
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BALLOON
    }

    fn device_features(&self) -> u64 {
        (1u64 << VIRTIO_F_VERSION_1) | self.config.features.bits()
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_max_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.config_space().read(offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let mut space = self.config_space();
        let write = space.write(offset, data);
        if write.ignored_bytes > 0 {
            self.warnings.warn(
                Warning::ConfigReadOnlyWrite,
                format_args!("{} bytes at offset {offset}", data.len()),
            );
        }
        self.actual_pages = space.actual;
        self.poison_val = space.poison_val;
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let Activation {
            mem,
            queues,
            acked_features,
            interrupt,
        } = activation;
        if queues.len() != self.layout.len() {
            return Err(ActivateError::Other(format!(
                "the balloon has {} queues but was given {}",
                self.layout.len(),
                queues.len()
            )));
        }
        let acked_features = acked_features & self.device_features();
        let mut by_role: [Option<Queue>; 5] = Default::default();
        for (index, queue) in queues.into_iter().enumerate() {
            let Some(role) = self.layout.role_at(index) else {
                continue;
            };
            if !role.enabled_by(acked_features) {
                continue;
            }
            let name = role.name();
            if !queue.ready() {
                return Err(ActivateError::QueueNotReady { index, name });
            }
            if queue.size() < role.min_size() {
                return Err(ActivateError::QueueTooSmall {
                    index,
                    name,
                    size: queue.size(),
                    min: role.min_size(),
                });
            }
            by_role[role.slot()] = Some(queue);
        }
        let huge_pages = self
            .memory_backing
            .uses_huge_pages()
            .then(|| HugePageTracker::new(&mem));
        self.running = Some(Running {
            mem,
            queues: by_role,
            acked_features,
            interrupt,
            huge_pages,
        });
        self.arm_stats_timer();
        Ok(())
    }

    fn is_activated(&self) -> bool {
        self.running.is_some()
    }

    fn process_queue(&mut self, index: usize) {
        if self.running.is_none() {
            self.warnings.warn(
                Warning::NotifiedBeforeActivation,
                format_args!("queue {index}"),
            );
            return;
        }
        match self.layout.role_at(index) {
            Some(role) => self.process_role(role),
            None => self
                .warnings
                .warn(Warning::NotifiedUnknownQueue, format_args!("queue {index}")),
        }
    }

    fn reset(&mut self) {
        self.running = None;
        self.actual_pages = 0;
        self.poison_val = 0;
        self.stats.reset();
        self.hinting.reset();
        self.arm_stats_timer();
    }

    fn event_fds(&self) -> Vec<RawFd> {
        self.stats_timer.iter().map(|t| t.as_raw_fd()).collect()
    }

    fn process_event_fd(&mut self, fd: RawFd) {
        let Some(timer) = self.stats_timer.as_mut() else {
            return;
        };
        if timer.as_raw_fd() != fd {
            return;
        }
        match timer.wait() {
            Ok(_) => self.poll_stats(),
            // Re-armed or cleared since it became readable: nothing to do.
            Err(e) if e.errno() == libc::EAGAIN => {}
            Err(e) => self.warnings.warn(Warning::TimerFailed, e),
        }
    }
}
