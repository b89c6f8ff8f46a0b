//! Connects a virtio-mmio device to the event loop: queue notifications arrive as
//! eventfds (KVM ioeventfds on `QueueNotify`) and go through the transport's
//! [`QueueNotifications`]; the device's own fds (timers) go to
//! [`VirtioDevice::process_event_fd`]. Neither takes the transport's register lock (the
//! one a vCPU holds during an MMIO exit): a notification takes the notification gate and
//! then the device's, a timer only the device's.

use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use crate::devices::virtio::mmio::QueueNotifications;
use crate::devices::virtio::VirtioDevice;
use crate::sync::lock;
use crate::warn_once;

/// `Events::data` of a device fd. Queue eventfds carry their queue index instead.
const DEVICE_FD: u32 = u32::MAX;

pub struct VirtioMmioEventHandler<D: VirtioDevice> {
    notifications: Arc<QueueNotifications<D>>,
}

impl<D: VirtioDevice> VirtioMmioEventHandler<D> {
    /// `notifications` come from the transport the VMM puts on the MMIO bus
    /// ([`MmioTransport::notifications`](crate::devices::virtio::mmio::MmioTransport::notifications)).
    pub fn new(notifications: Arc<QueueNotifications<D>>) -> Self {
        VirtioMmioEventHandler { notifications }
    }
}

impl<D: VirtioDevice> MutEventSubscriber for VirtioMmioEventHandler<D> {
    fn init(&mut self, ops: &mut EventOps) {
        for (index, event) in self.notifications.queue_events().iter().enumerate() {
            // Queue counts are tiny; an index never reaches DEVICE_FD.
            let data = u32::try_from(index).unwrap_or(DEVICE_FD);
            if let Err(e) = ops.add(Events::with_data(event, data, EventSet::IN)) {
                warn_once!("cannot watch the notifications of virtio queue {index}: {e}");
            }
        }
        for fd in lock(self.notifications.device()).event_fds() {
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
        if events.data() == DEVICE_FD {
            lock(self.notifications.device()).process_event_fd(events.fd());
            return;
        }
        let index = events.data() as usize;
        if index >= self.notifications.queue_events().len() {
            let _ = ops.remove(events);
            return;
        }
        if let Err(e) = self.notifications.deliver_queue_event(index) {
            warn_once!("cannot read the notification eventfd of virtio queue {index}: {e}; no longer watched");
            let _ = ops.remove(events);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::sync::{Barrier, Mutex};
    use std::thread;
    use std::time::Duration;

    use event_manager::{EventManager, SubscriberOps};
    use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_DRIVER_OK;
    use virtio_bindings::virtio_mmio::VIRTIO_MMIO_STATUS;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::devices::test_support::CountingInterrupt;
    use crate::devices::virtio::mmio::test_driver::*;
    use crate::devices::virtio::mmio::MmioTransport;
    use crate::devices::virtio::test_device::DummyDevice;

    /// Long enough never to fire when nothing is wrong; short enough to end a deadlock.
    const HANG_GUARD: Duration = Duration::from_secs(30);

    type Manager = EventManager<VirtioMmioEventHandler<DummyDevice>>;

    /// A transport wired as the VMM wires it: on the MMIO bus behind the register lock,
    /// its device and notifications shared with the event loop.
    struct Wired {
        registers: Arc<Mutex<MmioTransport<DummyDevice>>>,
        device: Arc<Mutex<DummyDevice>>,
        notifications: Arc<QueueNotifications<DummyDevice>>,
    }

    impl Wired {
        fn new(transport: MmioTransport<DummyDevice>) -> Self {
            Wired {
                device: transport.device().clone(),
                notifications: transport.notifications(),
                registers: Arc::new(Mutex::new(transport)),
            }
        }

        fn manager(&self) -> Manager {
            manager_for(&self.notifications)
        }

        /// What KVM does when the guest writes `index` to QueueNotify, `times` times.
        fn kick(&self, index: usize, times: u64) {
            self.notifications.queue_events()[index]
                .write(times)
                .unwrap();
        }

        fn processed(&self) -> Vec<usize> {
            lock(&self.device).processed.clone()
        }
    }

    fn manager_for(notifications: &Arc<QueueNotifications<DummyDevice>>) -> Manager {
        let mut manager = Manager::new().unwrap();
        manager.add_subscriber(VirtioMmioEventHandler::new(notifications.clone()));
        manager
    }

    fn running_transport() -> Wired {
        let (mut t, _) = transport(DummyDevice::new(VERSION_1, &[16, 16]));
        linux_bring_up(
            &mut t,
            VERSION_1,
            &[Ring::at(0x1_0000, 16), Ring::at(0x2_0000, 16)],
        )
        .unwrap();
        Wired::new(t)
    }

    /// Queue 0 set up, DRIVER_OK not yet written.
    fn transport_before_driver_ok() -> Wired {
        let (mut t, _) = transport(DummyDevice::new(VERSION_1, &[16, 16]));
        linux_probe(&mut t, VERSION_1).unwrap();
        linux_setup_queue(&mut t, 0, Ring::at(0x1_0000, 16)).unwrap();
        Wired::new(t)
    }

    #[test]
    fn a_queue_eventfd_becomes_a_queue_notification() {
        let mem = guest_memory();
        let irq = Arc::new(CountingInterrupt::default());
        let device = Arc::new(Mutex::new(DummyDevice::new(VERSION_1, &[16, 16])));
        let mut t = MmioTransport::new(device, mem.clone(), irq.clone()).unwrap();
        let mut vq = MockSplitQueue::create(&mem, GuestAddress(0x4_0000), 16);
        let ring = Ring {
            size: 16,
            desc: vq.desc_table_addr().0,
            avail: vq.avail_addr().0,
            used: vq.used_addr().0,
        };
        linux_bring_up(&mut t, VERSION_1, &[Ring::at(0x1_0000, 16), ring]).unwrap();
        let wired = Wired::new(t);
        let mut manager = wired.manager();

        vq.add_chain(1).unwrap();
        wired.kick(1, 1);
        assert_eq!(manager.run_with_timeout(0).unwrap(), 1);

        assert_eq!(wired.processed(), vec![1]);
        let used_idx: u16 = mem.read_obj(GuestAddress(vq.used_addr().0 + 2)).unwrap();
        assert_eq!(used_idx, 1);
        assert_eq!(irq.signals(), 1);
        // The eventfd was consumed: nothing more to do.
        assert_eq!(manager.run_with_timeout(0).unwrap(), 0);
    }

    #[test]
    fn each_queue_eventfd_carries_its_own_index() {
        let wired = running_transport();
        let mut manager = wired.manager();
        wired.kick(0, 1);
        assert_eq!(manager.run_with_timeout(0).unwrap(), 1);
        wired.kick(1, 3);
        assert_eq!(manager.run_with_timeout(0).unwrap(), 1);
        // Three kicks counted on one eventfd are one notification: the device drains
        // the whole queue each time anyway.
        assert_eq!(wired.processed(), vec![0, 1]);
    }

    #[test]
    fn device_fds_reach_the_device() {
        let wired = running_transport();
        let mut manager = wired.manager();
        lock(&wired.device).timer.write(1).unwrap();
        assert_eq!(manager.run_with_timeout(0).unwrap(), 1);
        let device = lock(&wired.device);
        assert_eq!(device.timer_events, 1);
        assert!(device.processed.is_empty());
    }

    #[test]
    fn a_kick_before_driver_ok_is_processed_once_the_device_runs() {
        let wired = transport_before_driver_ok();
        let mut manager = wired.manager();

        wired.kick(0, 1);
        assert_eq!(manager.run_with_timeout(0).unwrap(), 1);
        assert!(wired.processed().is_empty());

        add_status(&mut lock(&wired.registers), VIRTIO_CONFIG_S_DRIVER_OK);
        assert_eq!(wired.processed(), vec![0]);
    }

    #[test]
    fn a_kick_pending_at_reset_is_dropped() {
        let wired = running_transport();
        let mut manager = wired.manager();
        wired.kick(0, 1);
        write32(&mut lock(&wired.registers), VIRTIO_MMIO_STATUS, 0);
        assert_eq!(manager.run_with_timeout(0).unwrap(), 0);
        assert!(wired.processed().is_empty());
    }

    #[test]
    fn a_notification_does_not_wait_for_the_register_lock() {
        let wired = running_transport();
        // A vCPU in the middle of an MMIO exit to this device.
        let registers = lock(&wired.registers);
        let notifications = wired.notifications.clone();
        let (done, finished) = mpsc::channel();
        thread::spawn(move || {
            let mut manager = manager_for(&notifications);
            notifications.queue_events()[1].write(1).unwrap();
            let handled = manager.run_with_timeout(0).unwrap();
            let _ = done.send(handled);
        });
        assert_eq!(finished.recv_timeout(HANG_GUARD), Ok(1));
        drop(registers);
        assert_eq!(wired.processed(), vec![1]);
    }

    #[test]
    fn a_kick_racing_with_driver_ok_is_processed_exactly_once() {
        // The vCPU writes DRIVER_OK while the event loop delivers a kick: whichever comes
        // first, the device processes the queue once.
        for round in 0..100 {
            let wired = transport_before_driver_ok();
            let start = Arc::new(Barrier::new(2));
            let vcpu = {
                let registers = wired.registers.clone();
                let start = start.clone();
                thread::spawn(move || {
                    start.wait();
                    add_status(&mut lock(&registers), VIRTIO_CONFIG_S_DRIVER_OK);
                })
            };
            let event_loop = {
                let notifications = wired.notifications.clone();
                thread::spawn(move || {
                    notifications.queue_events()[0].write(1).unwrap();
                    start.wait();
                    notifications.deliver_queue_event(0).unwrap();
                })
            };
            vcpu.join().unwrap();
            event_loop.join().unwrap();
            assert_eq!(wired.processed(), vec![0], "round {round}");
        }
    }
}
