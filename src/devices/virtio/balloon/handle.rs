//! [`BalloonHandle`]: the balloon of a running VM behind the one small interface the rest
//! of the VMM uses, [`BalloonControl`].
//!
//! The handle holds the balloon itself, the same `Arc<Mutex<Balloon>>` the virtio-mmio
//! transport holds. Each call takes only the balloon's lock, for as long as the device
//! needs to update its state and, where the guest must be told, raise a config interrupt:
//! it never waits for a vCPU's exit to the transport's registers nor for another device,
//! and never for the guest.

use std::sync::{Arc, Mutex};

use super::{
    Balloon, BalloonControl, BalloonCounters, BalloonError, BalloonInfo, BalloonStatistics,
    HintingStatus,
};
use crate::sync::lock;

/// A running balloon, shared with its transport and the event loop.
#[derive(Clone)]
pub struct BalloonHandle {
    balloon: Arc<Mutex<Balloon>>,
}

impl BalloonHandle {
    pub fn new(balloon: Arc<Mutex<Balloon>>) -> Self {
        BalloonHandle { balloon }
    }
}

impl BalloonControl for BalloonHandle {
    fn info(&self) -> BalloonInfo {
        lock(&self.balloon).info()
    }

    fn set_target_pages(&self, pages: u32) -> Result<(), BalloonError> {
        lock(&self.balloon).set_target_pages(pages)
    }

    fn statistics(&self) -> Result<BalloonStatistics, BalloonError> {
        lock(&self.balloon).statistics()
    }

    fn set_stats_interval(&self, seconds: u32) -> Result<(), BalloonError> {
        lock(&self.balloon).set_stats_interval(seconds)
    }

    fn start_hinting(&self, acknowledge_on_stop: bool) -> Result<(), BalloonError> {
        lock(&self.balloon).start_hinting(acknowledge_on_stop)
    }

    fn hinting_status(&self) -> Result<HintingStatus, BalloonError> {
        lock(&self.balloon).hinting_status()
    }

    fn stop_hinting(&self) -> Result<(), BalloonError> {
        lock(&self.balloon).stop_hinting()
    }

    fn counters(&self) -> BalloonCounters {
        lock(&self.balloon).counters()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::balloon::BalloonConfig;

    fn balloon(config: &str) -> Arc<Mutex<Balloon>> {
        let config = config.parse::<BalloonConfig>().unwrap();
        Arc::new(Mutex::new(Balloon::new(config, 64 << 20).unwrap()))
    }

    fn handle(config: &str) -> BalloonHandle {
        BalloonHandle::new(balloon(config))
    }

    #[test]
    fn the_handle_reaches_the_device_without_a_driver() {
        let balloon = handle("stats=5,free-page-hint,size=8M");
        let info = balloon.info();
        assert_eq!(info.target_pages, 2048);
        assert_eq!(info.actual_pages, 0);
        assert!(!info.driver_ready);
        balloon.set_target_pages(4096).unwrap();
        assert_eq!(balloon.info().target_pages, 4096);
        assert!(matches!(
            balloon.set_target_pages(u32::MAX),
            Err(BalloonError::TargetTooLarge { .. })
        ));
        assert_eq!(
            balloon.info().target_pages,
            4096,
            "a refused target changes nothing"
        );
        balloon.set_stats_interval(2).unwrap();
        assert_eq!(balloon.info().stats_interval_s, 2);
        assert_eq!(balloon.statistics().unwrap().last_update_age_ms, None);
        balloon.start_hinting(true).unwrap();
        assert!(balloon.hinting_status().unwrap().host_cmd >= 2);
        balloon.stop_hinting().unwrap();
    }

    #[test]
    fn features_that_are_off_are_refused() {
        let balloon = handle("");
        assert_eq!(balloon.statistics(), Err(BalloonError::StatsDisabled));
        assert_eq!(
            balloon.set_stats_interval(1),
            Err(BalloonError::StatsDisabled)
        );
        assert_eq!(
            balloon.start_hinting(false),
            Err(BalloonError::HintingDisabled)
        );
        assert_eq!(balloon.hinting_status(), Err(BalloonError::HintingDisabled));
    }
}
