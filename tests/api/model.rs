//! Models of the VM and its balloon for the API server to run over.
//!
//! They behave as the interfaces promise: they check their features and limits, never
//! wait, and record every change they make, so a test can show that a refused request
//! changed nothing.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use vmm::api::{VmControl, VmInfo, VmRequestError};
use vmm::devices::virtio::balloon::metrics::BalloonMetrics;
use vmm::devices::virtio::balloon::{
    target_pages, BalloonConfig, BalloonControl, BalloonCounters, BalloonError, BalloonFeatures,
    BalloonInfo, BalloonStatistics, GuestStats, HintingStatus,
};
use vmm::memory::MemoryBacking;
use vmm::metrics::{ProcessMetrics, Registry};
use vmm::size::{GIB, MIB, PAGE_SIZE};

/// The model VM's instance ID.
pub const MODEL_ID: &str = "model-vm-1";
/// The model VM's memory, and so the largest balloon.
pub const GUEST_MEMORY: u64 = 2 * GIB;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalloonState {
    pub target_pages: u32,
    pub actual_pages: u32,
    pub stats_interval_s: u32,
    pub driver_ready: bool,
    pub host_cmd: u32,
    pub guest_cmd: Option<u32>,
    pub acknowledge_on_stop: Option<bool>,
    pub stats: GuestStats,
    pub last_update_age_ms: Option<u64>,
    pub unknown_tags: u64,
    pub counters: BalloonCounters,
    pub memory_backing: MemoryBacking,
    pub partial_huge_pages: u64,
}

/// A balloon that behaves as the interface promises: it checks its features and limits,
/// never waits, and logs every change it makes.
pub struct ModelBalloon {
    config: BalloonConfig,
    state: Mutex<BalloonState>,
    changes: Mutex<Vec<String>>,
}

impl ModelBalloon {
    pub fn new(features: BalloonFeatures) -> Self {
        ModelBalloon {
            config: BalloonConfig {
                features,
                stats_interval_s: if features.stats { 5 } else { 0 },
                initial_size: 0,
            },
            state: Mutex::new(BalloonState {
                target_pages: 0,
                actual_pages: 0,
                stats_interval_s: if features.stats { 5 } else { 0 },
                driver_ready: true,
                host_cmd: 0,
                guest_cmd: None,
                acknowledge_on_stop: None,
                stats: GuestStats::default(),
                last_update_age_ms: None,
                unknown_tags: 0,
                counters: BalloonCounters::default(),
                memory_backing: MemoryBacking::Anonymous,
                partial_huge_pages: 0,
            }),
            changes: Mutex::new(Vec::new()),
        }
    }

    pub fn state(&self) -> BalloonState {
        self.state.lock().unwrap().clone()
    }

    pub fn changes(&self) -> Vec<String> {
        self.changes.lock().unwrap().clone()
    }

    pub fn update(&self, change: impl FnOnce(&mut BalloonState)) {
        change(&mut self.state.lock().unwrap());
    }

    fn log(&self, change: String) {
        self.changes.lock().unwrap().push(change);
    }
}

impl BalloonControl for ModelBalloon {
    fn info(&self) -> BalloonInfo {
        let state = self.state();
        BalloonInfo {
            config: self.config,
            target_pages: state.target_pages,
            actual_pages: state.actual_pages,
            stats_interval_s: state.stats_interval_s,
            driver_ready: state.driver_ready,
            acked_features: 0,
            memory_backing: state.memory_backing,
            partial_huge_pages: state.partial_huge_pages,
        }
    }

    // The balloon's own rule for a valid target, so the model answers as the device does.
    fn set_target_pages(&self, pages: u32) -> Result<(), BalloonError> {
        target_pages(u64::from(pages) * PAGE_SIZE, GUEST_MEMORY)?;
        self.update(|state| state.target_pages = pages);
        self.log(format!("set_target_pages({pages})"));
        Ok(())
    }

    fn statistics(&self) -> Result<BalloonStatistics, BalloonError> {
        if !self.config.features.stats {
            return Err(BalloonError::StatsDisabled);
        }
        let state = self.state();
        Ok(BalloonStatistics {
            target_pages: state.target_pages,
            actual_pages: state.actual_pages,
            stats: state.stats,
            unknown_tags: state.unknown_tags,
            last_update_age_ms: state.last_update_age_ms,
        })
    }

    fn set_stats_interval(&self, seconds: u32) -> Result<(), BalloonError> {
        if !self.config.features.stats {
            return Err(BalloonError::StatsDisabled);
        }
        if seconds > 86_400 {
            return Err(BalloonError::IntervalTooLarge(u64::from(seconds)));
        }
        self.update(|state| state.stats_interval_s = seconds);
        self.log(format!("set_stats_interval({seconds})"));
        Ok(())
    }

    fn start_hinting(&self, acknowledge_on_stop: bool) -> Result<(), BalloonError> {
        if !self.config.features.free_page_hint {
            return Err(BalloonError::HintingDisabled);
        }
        self.update(|state| {
            state.host_cmd = state.host_cmd.max(1) + 1;
            state.acknowledge_on_stop = Some(acknowledge_on_stop);
        });
        self.log(format!("start_hinting({acknowledge_on_stop})"));
        Ok(())
    }

    fn hinting_status(&self) -> Result<HintingStatus, BalloonError> {
        if !self.config.features.free_page_hint {
            return Err(BalloonError::HintingDisabled);
        }
        let state = self.state();
        Ok(HintingStatus {
            host_cmd: state.host_cmd,
            guest_cmd: state.guest_cmd,
        })
    }

    fn stop_hinting(&self) -> Result<(), BalloonError> {
        if !self.config.features.free_page_hint {
            return Err(BalloonError::HintingDisabled);
        }
        self.update(|state| state.host_cmd = 1);
        self.log("stop_hinting".to_string());
        Ok(())
    }

    fn counters(&self) -> BalloonCounters {
        self.state().counters
    }
}

/// A VM that counts the shutdowns and key presses asked of it and knows whether it is
/// paused; once stopping, it refuses the rest as the real one does. Its metrics are the
/// real sources of the process and of the (model) balloon, so `/metrics` shows what a VM
/// shows.
pub struct ModelVm {
    balloon: Option<Arc<ModelBalloon>>,
    shutdowns: AtomicUsize,
    paused: AtomicBool,
    ctrl_alt_dels: AtomicUsize,
    /// The guest does not read its keyboard: Ctrl+Alt+Del is refused.
    keyboard_full: AtomicBool,
    metrics: Registry,
}

impl ModelVm {
    pub fn new(balloon: Option<Arc<ModelBalloon>>) -> Self {
        let metrics = Registry::new();
        metrics.register("process", Arc::new(ProcessMetrics::new(Instant::now())));
        if let Some(balloon) = &balloon {
            let control: Arc<dyn BalloonControl> = balloon.clone();
            metrics.register("balloon", Arc::new(BalloonMetrics::new(control)));
        }
        ModelVm {
            balloon,
            shutdowns: AtomicUsize::new(0),
            paused: AtomicBool::new(false),
            ctrl_alt_dels: AtomicUsize::new(0),
            keyboard_full: AtomicBool::new(false),
            metrics,
        }
    }

    /// How many times the API asked the VM to shut down.
    pub fn shutdowns(&self) -> usize {
        self.shutdowns.load(Ordering::SeqCst)
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// How many Ctrl+Alt+Del the guest was sent.
    pub fn ctrl_alt_dels(&self) -> usize {
        self.ctrl_alt_dels.load(Ordering::SeqCst)
    }

    pub fn fill_keyboard(&self) {
        self.keyboard_full.store(true, Ordering::SeqCst);
    }

    fn refuse_if_stopping(&self) -> Result<(), VmRequestError> {
        if self.shutdowns() > 0 {
            return Err(VmRequestError::Conflict("the VM is stopping".into()));
        }
        Ok(())
    }
}

impl VmControl for ModelVm {
    fn info(&self) -> VmInfo {
        VmInfo {
            id: MODEL_ID.to_string(),
            vcpus: 2,
            memory_bytes: GUEST_MEMORY,
            state: match (self.shutdowns() > 0, self.is_paused()) {
                (true, _) => "Stopping",
                (false, true) => "Paused",
                (false, false) => "Running",
            },
            uptime_ms: 12_345,
        }
    }

    fn pause(&self) -> Result<(), VmRequestError> {
        self.refuse_if_stopping()?;
        self.paused.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn resume(&self) -> Result<(), VmRequestError> {
        self.refuse_if_stopping()?;
        self.paused.store(false, Ordering::SeqCst);
        Ok(())
    }

    fn send_ctrl_alt_del(&self) -> Result<(), VmRequestError> {
        self.refuse_if_stopping()?;
        if self.keyboard_full.load(Ordering::SeqCst) {
            return Err(VmRequestError::Conflict(
                "the guest is not reading its keyboard".into(),
            ));
        }
        self.ctrl_alt_dels.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn balloon(&self) -> Option<Arc<dyn BalloonControl>> {
        self.balloon
            .clone()
            .map(|balloon| balloon as Arc<dyn BalloonControl>)
    }

    fn request_shutdown(&self) {
        self.shutdowns.fetch_add(1, Ordering::SeqCst);
    }

    fn metrics(&self) -> &Registry {
        &self.metrics
    }
}

pub fn all_features() -> BalloonFeatures {
    BalloonFeatures {
        must_tell_host: true,
        stats: true,
        deflate_on_oom: true,
        free_page_hint: true,
        page_poison: false,
        page_reporting: true,
    }
}

pub fn every_stat() -> GuestStats {
    GuestStats {
        swap_in: Some(1),
        swap_out: Some(2),
        major_faults: Some(3),
        minor_faults: Some(4),
        free_memory: Some(512 * MIB),
        total_memory: Some(GUEST_MEMORY),
        available_memory: Some(GIB),
        disk_caches: Some(64 * MIB),
        hugetlb_allocations: Some(9),
        hugetlb_failures: Some(10),
        oom_kill: Some(11),
        alloc_stall: Some(12),
        async_scan: Some(13),
        direct_scan: Some(14),
        async_reclaim: Some(15),
        direct_reclaim: Some(16),
    }
}

// ---------------------------------------------------------------------------------------
