//! Connects a virtio-mmio device to the event loop: queue notifications arrive as
//! eventfds (KVM ioeventfds on `QueueNotify`) and become
//! [`MmioTransport::notify_queue`]; the device's own fds (timers) go to
//! [`VirtioDevice::process_event_fd`]. Both run under the transport's lock, the same lock
//! the vCPUs take for register accesses, so the device never sees two callers at once.

use std::io;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use crate::devices::bus::lock;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::VirtioDevice;
use crate::warn_once;

/// `Events::data` of a device fd. Queue eventfds carry their queue index instead.
const DEVICE_FD: u32 = u32::MAX;

pub struct VirtioMmioEventHandler<D: VirtioDevice> {
    transport: Arc<Mutex<MmioTransport<D>>>,
}

impl<D: VirtioDevice> VirtioMmioEventHandler<D> {
    /// `transport` is the same one the VMM puts on the MMIO bus.
    pub fn new(transport: Arc<Mutex<MmioTransport<D>>>) -> Self {
        VirtioMmioEventHandler { transport }
    }
}

impl<D: VirtioDevice> MutEventSubscriber for VirtioMmioEventHandler<D> {
    fn init(&mut self, ops: &mut EventOps) {
        let transport = lock(&self.transport);
        for (index, event) in transport.queue_events().iter().enumerate() {
            // Queue counts are tiny; an index never reaches DEVICE_FD.
            let data = u32::try_from(index).unwrap_or(DEVICE_FD);
            if let Err(e) = ops.add(Events::with_data(event, data, EventSet::IN)) {
                warn_once!("cannot watch the notifications of virtio queue {index}: {e}");
            }
        }
        for fd in transport.device().event_fds() {
            if let Err(e) = ops.add(Events::with_data_raw(fd, DEVICE_FD, EventSet::IN)) {
                warn_once!("cannot watch fd {fd} of a virtio device: {e}");
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events
            .event_set()
            .intersects(EventSet::ERROR | EventSet::HANG_UP)
        {
            // Level-triggered epoll would report a broken fd forever; stop watching it.
            warn_once!(
                "virtio event fd {} reported an error or hang-up; no longer watched",
                events.fd()
            );
            let _ = ops.remove(events);
            return;
        }
        let mut transport = lock(&self.transport);
        if events.data() == DEVICE_FD {
            transport.device_mut().process_event_fd(events.fd());
            return;
        }
        let index = events.data() as usize;
        let Some(event) = transport.queue_events().get(index) else {
            let _ = ops.remove(events);
            return;
        };
        // Read under the lock: a reset drains the eventfds under it too, so a kick from
        // before a reset is either seen here first or gone.
        match event.read() {
            Ok(_) => transport.notify_queue(index),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                warn_once!("cannot read the notification eventfd of virtio queue {index}: {e}; no longer watched");
                let _ = ops.remove(events);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use event_manager::{EventManager, SubscriberOps};
    use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_DRIVER_OK;
    use virtio_bindings::virtio_mmio::VIRTIO_MMIO_STATUS;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::devices::test_support::CountingInterrupt;
    use crate::devices::virtio::mmio::test_driver::*;
    use crate::devices::virtio::test_device::DummyDevice;

    type Manager = EventManager<VirtioMmioEventHandler<DummyDevice>>;

    fn running_transport() -> Arc<Mutex<MmioTransport<DummyDevice>>> {
        let (mut t, _) = transport(DummyDevice::new(VERSION_1, &[16, 16]));
        linux_bring_up(
            &mut t,
            VERSION_1,
            &[Ring::at(0x1_0000, 16), Ring::at(0x2_0000, 16)],
        )
        .unwrap();
        Arc::new(Mutex::new(t))
    }

    fn manager_for(transport: &Arc<Mutex<MmioTransport<DummyDevice>>>) -> Manager {
        let mut manager = Manager::new().unwrap();
        manager.add_subscriber(VirtioMmioEventHandler::new(transport.clone()));
        manager
    }

    #[test]
    fn a_queue_eventfd_becomes_a_queue_notification() {
        let mem = guest_memory();
        let irq = Arc::new(CountingInterrupt::default());
        let mut t = MmioTransport::new(
            DummyDevice::new(VERSION_1, &[16, 16]),
            mem.clone(),
            irq.clone(),
        )
        .unwrap();
        let mut vq = MockSplitQueue::create(&mem, GuestAddress(0x4_0000), 16);
        let ring = Ring {
            size: 16,
            desc: vq.desc_table_addr().0,
            avail: vq.avail_addr().0,
            used: vq.used_addr().0,
        };
        linux_bring_up(&mut t, VERSION_1, &[Ring::at(0x1_0000, 16), ring]).unwrap();
        let transport = Arc::new(Mutex::new(t));
        let mut manager = manager_for(&transport);

        vq.add_chain(1).unwrap();
        // What KVM does when the guest writes 1 to QueueNotify.
        lock(&transport).queue_events()[1].write(1).unwrap();
        assert_eq!(manager.run_with_timeout(0).unwrap(), 1);

        assert_eq!(lock(&transport).device().processed, vec![1]);
        let used_idx: u16 = mem.read_obj(GuestAddress(vq.used_addr().0 + 2)).unwrap();
        assert_eq!(used_idx, 1);
        assert_eq!(irq.signals(), 1);
        // The eventfd was consumed: nothing more to do.
        assert_eq!(manager.run_with_timeout(0).unwrap(), 0);
    }

    #[test]
    fn each_queue_eventfd_carries_its_own_index() {
        let transport = running_transport();
        let mut manager = manager_for(&transport);
        lock(&transport).queue_events()[0].write(1).unwrap();
        assert_eq!(manager.run_with_timeout(0).unwrap(), 1);
        lock(&transport).queue_events()[1].write(3).unwrap();
        assert_eq!(manager.run_with_timeout(0).unwrap(), 1);
        // Three kicks counted on one eventfd are one notification: the device drains
        // the whole queue each time anyway.
        assert_eq!(lock(&transport).device().processed, vec![0, 1]);
    }

    #[test]
    fn device_fds_reach_the_device() {
        let transport = running_transport();
        let mut manager = manager_for(&transport);
        lock(&transport).device().timer.write(1).unwrap();
        assert_eq!(manager.run_with_timeout(0).unwrap(), 1);
        let guard = lock(&transport);
        assert_eq!(guard.device().timer_events, 1);
        assert!(guard.device().processed.is_empty());
    }

    #[test]
    fn a_kick_before_driver_ok_is_processed_once_the_device_runs() {
        let (mut t, _) = transport(DummyDevice::new(VERSION_1, &[16, 16]));
        linux_probe(&mut t, VERSION_1).unwrap();
        linux_setup_queue(&mut t, 0, Ring::at(0x1_0000, 16)).unwrap();
        let transport = Arc::new(Mutex::new(t));
        let mut manager = manager_for(&transport);

        lock(&transport).queue_events()[0].write(1).unwrap();
        assert_eq!(manager.run_with_timeout(0).unwrap(), 1);
        assert!(lock(&transport).device().processed.is_empty());

        add_status(&mut lock(&transport), VIRTIO_CONFIG_S_DRIVER_OK);
        assert_eq!(lock(&transport).device().processed, vec![0]);
    }

    #[test]
    fn a_kick_pending_at_reset_is_dropped() {
        let transport = running_transport();
        let mut manager = manager_for(&transport);
        lock(&transport).queue_events()[0].write(1).unwrap();
        write32(&mut lock(&transport), VIRTIO_MMIO_STATUS, 0);
        assert_eq!(manager.run_with_timeout(0).unwrap(), 0);
        assert!(lock(&transport).device().processed.is_empty());
    }
}
