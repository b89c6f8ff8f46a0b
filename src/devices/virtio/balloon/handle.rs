//! [`BalloonHandle`]: the balloon of a running VM behind the one small interface the rest
//! of the VMM uses, [`BalloonControl`]. Each call takes the transport's lock for as long
//! as the device needs to update its state and, where the guest must be told, raise a
//! config interrupt; none waits for the guest.

use std::sync::{Arc, Mutex};

use super::{Balloon, BalloonControl, BalloonError, BalloonInfo, BalloonStatistics, HintingStatus};
use crate::devices::bus::lock;
use crate::devices::virtio::mmio::MmioTransport;

/// A running balloon, shared with the MMIO bus and the event loop.
#[derive(Clone)]
pub struct BalloonHandle {
    transport: Arc<Mutex<MmioTransport<Balloon>>>,
}

impl BalloonHandle {
    pub fn new(transport: Arc<Mutex<MmioTransport<Balloon>>>) -> Self {
        BalloonHandle { transport }
    }
}

impl BalloonControl for BalloonHandle {
    fn info(&self) -> BalloonInfo {
        lock(&self.transport).device().info()
    }

    fn set_target_pages(&self, pages: u32) -> Result<(), BalloonError> {
        lock(&self.transport).device_mut().set_target_pages(pages)
    }

    fn statistics(&self) -> Result<BalloonStatistics, BalloonError> {
        lock(&self.transport).device().statistics()
    }

    fn set_stats_interval(&self, seconds: u32) -> Result<(), BalloonError> {
        lock(&self.transport)
            .device_mut()
            .set_stats_interval(seconds)
    }

    fn start_hinting(&self, acknowledge_on_stop: bool) -> Result<(), BalloonError> {
        lock(&self.transport)
            .device_mut()
            .start_hinting(acknowledge_on_stop)
    }

    fn hinting_status(&self) -> Result<HintingStatus, BalloonError> {
        lock(&self.transport).device().hinting_status()
    }

    fn stop_hinting(&self) -> Result<(), BalloonError> {
        lock(&self.transport).device_mut().stop_hinting()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::test_support::CountingInterrupt;
    use crate::devices::virtio::balloon::BalloonConfig;
    use crate::memory::{create_guest_memory, MemoryBacking};

    fn handle(config: &str) -> BalloonHandle {
        let mem = create_guest_memory(64 << 20, MemoryBacking::Anonymous).unwrap();
        let balloon = Balloon::new(config.parse::<BalloonConfig>().unwrap(), 64 << 20).unwrap();
        let transport =
            MmioTransport::new(balloon, mem, Arc::new(CountingInterrupt::default())).unwrap();
        BalloonHandle::new(Arc::new(Mutex::new(transport)))
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
