//! The transport driven register by register as Linux drives it, with a dummy device.

use std::sync::{mpsc, MutexGuard};
use std::thread;
use std::time::Duration;

use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_FAILED;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::Bytes;

use super::test_driver::*;
use super::*;
use crate::devices::test_support::CountingInterrupt;
use crate::devices::virtio::test_device::{DummyDevice, DUMMY_DEVICE_TYPE};

/// Long enough never to fire when nothing is wrong; short enough to end a deadlock.
const HANG_GUARD: Duration = Duration::from_secs(30);
const BIT0: u64 = 1;
/// A device-specific feature in the high half (bits 50 to 127 are device-specific).
const HIGH_BIT: u64 = 1 << 50;
const STATUS_RUNNING: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE
    | VIRTIO_CONFIG_S_DRIVER
    | VIRTIO_CONFIG_S_FEATURES_OK
    | VIRTIO_CONFIG_S_DRIVER_OK;

fn two_queue_device() -> DummyDevice {
    DummyDevice::new(VERSION_1 | EVENT_IDX | BIT0, &[256, 128])
}

fn rings() -> [Ring; 2] {
    [Ring::at(0x1_0000, 256), Ring::at(0x2_0000, 64)]
}

fn status(t: &mut MmioTransport<DummyDevice>) -> u32 {
    read32(t, VIRTIO_MMIO_STATUS)
}

/// The device, locked as the transport locks it.
fn dummy(t: &MmioTransport<DummyDevice>) -> MutexGuard<'_, DummyDevice> {
    lock(t.device())
}

#[test]
fn identifies_itself() {
    let (mut t, _) = transport(two_queue_device());
    assert_eq!(read32(&mut t, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
    assert_eq!(read32(&mut t, VIRTIO_MMIO_VERSION), 2);
    assert_eq!(read32(&mut t, VIRTIO_MMIO_DEVICE_ID), DUMMY_DEVICE_TYPE);
    assert_eq!(
        read32(&mut t, VIRTIO_MMIO_VENDOR_ID).to_le_bytes(),
        *b"VMM\0"
    );
    // The guest memory map spaces the windows by this constant, and the kernel command
    // line announces them as `4K@`.
    assert_eq!(MMIO_WINDOW_SIZE, 0x1000);
}

#[test]
fn linux_probe_activates_the_device_with_its_queues_and_features() {
    let (mut t, _) = transport(two_queue_device());
    let [r0, r1] = rings();
    let acked = linux_bring_up(&mut t, VERSION_1 | EVENT_IDX | BIT0, &[r0, r1]).unwrap();
    assert_eq!(acked, VERSION_1 | EVENT_IDX | BIT0);
    assert_eq!(status(&mut t), STATUS_RUNNING);

    let device = dummy(&t);
    assert_eq!(device.activations, 1);
    let running = device.running.as_ref().unwrap();
    assert_eq!(running.acked_features, VERSION_1 | EVENT_IDX | BIT0);
    assert_eq!(running.queues.len(), 2);
    for (queue, ring) in running.queues.iter().zip([r0, r1]) {
        assert!(queue.ready());
        assert_eq!(queue.size(), ring.size);
        assert_eq!(queue.desc_table(), ring.desc);
        assert_eq!(queue.avail_ring(), ring.avail);
        assert_eq!(queue.used_ring(), ring.used);
        assert!(queue.event_idx_enabled());
    }
    assert_eq!(running.queues[0].max_size(), 256);
    assert_eq!(running.queues[1].max_size(), 128);
}

#[test]
fn a_queue_the_driver_skips_reaches_the_device_not_ready() {
    let (mut t, _) = transport(two_queue_device());
    linux_bring_up(&mut t, VERSION_1, &rings()[..1]).unwrap();
    let dummy = dummy(&t);
    let running = dummy.running.as_ref().unwrap();
    assert!(running.queues[0].ready());
    assert!(!running.queues[1].ready());
    assert!(!running.queues[0].event_idx_enabled());
}

#[test]
fn the_driver_can_only_accept_offered_features() {
    let (mut t, _) = transport(DummyDevice::new(VERSION_1 | HIGH_BIT | BIT0, &[16]));
    linux_probe(&mut t, VERSION_1 | BIT0).unwrap();
    // A driver that writes every bit gets the offered ones only.
    let mut t2 = transport(DummyDevice::new(VERSION_1 | HIGH_BIT | BIT0, &[16])).0;
    write32(&mut t2, VIRTIO_MMIO_STATUS, 0);
    add_status(&mut t2, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    add_status(&mut t2, VIRTIO_CONFIG_S_DRIVER);
    for sel in 0..3 {
        write32(&mut t2, VIRTIO_MMIO_DRIVER_FEATURES_SEL, sel);
        write32(&mut t2, VIRTIO_MMIO_DRIVER_FEATURES, u32::MAX);
    }
    add_status(&mut t2, VIRTIO_CONFIG_S_FEATURES_OK);
    add_status(&mut t2, VIRTIO_CONFIG_S_DRIVER_OK);
    assert_eq!(
        dummy(&t2).running.as_ref().unwrap().acked_features,
        VERSION_1 | HIGH_BIT | BIT0
    );

    // Features cannot change once FEATURES_OK is set.
    write32(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    write32(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, u32::MAX);
    add_status(&mut t, VIRTIO_CONFIG_S_DRIVER_OK);
    assert_eq!(
        dummy(&t).running.as_ref().unwrap().acked_features,
        VERSION_1 | BIT0
    );
}

#[test]
fn device_features_read_through_the_select_register() {
    let (mut t, _) = transport(DummyDevice::new(VERSION_1 | HIGH_BIT | BIT0, &[16]));
    write32(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    assert_eq!(read32(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), 1);
    write32(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    assert_eq!(
        read32(&mut t, VIRTIO_MMIO_DEVICE_FEATURES),
        ((VERSION_1 | HIGH_BIT) >> 32) as u32
    );
    write32(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 2);
    assert_eq!(read32(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), 0);
}

#[test]
fn transport_features_it_cannot_do_are_not_offered() {
    let packed = 1 << VIRTIO_F_RING_PACKED;
    let notification_data = 1 << VIRTIO_F_NOTIFICATION_DATA;
    let ring_reset = 1 << VIRTIO_F_RING_RESET;
    let (mut t, _) = transport(DummyDevice::new(
        VERSION_1 | packed | notification_data | ring_reset,
        &[16],
    ));
    let acked = linux_probe(&mut t, u64::MAX).unwrap();
    assert_eq!(acked, VERSION_1);
}

#[test]
fn a_driver_without_version_1_is_refused_features_ok_and_can_retry() {
    let (mut t, _) = transport(two_queue_device());
    assert_eq!(
        linux_probe(&mut t, BIT0),
        Err("device refuses features".to_string())
    );
    assert_eq!(
        status(&mut t),
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FAILED
    );
    // A driver that carries on anyway does not start the device.
    add_status(&mut t, VIRTIO_CONFIG_S_DRIVER_OK);
    assert!(!dummy(&t).is_activated());
    assert_eq!(status(&mut t) & VIRTIO_CONFIG_S_DRIVER_OK, 0);

    // A modern driver after it gets a working device.
    linux_bring_up(&mut t, VERSION_1, &rings()).unwrap();
    assert!(dummy(&t).is_activated());
}

#[test]
fn status_bits_must_come_in_order_and_stay_set() {
    let (mut t, _) = transport(two_queue_device());
    write32(&mut t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_DRIVER);
    assert_eq!(status(&mut t), 0);
    linux_probe(&mut t, VERSION_1).unwrap();
    // Clearing DRIVER without a reset is refused.
    write32(
        &mut t,
        VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_FEATURES_OK,
    );
    assert_eq!(
        status(&mut t),
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK
    );
    // The driver cannot set DEVICE_NEEDS_RESET.
    add_status(&mut t, VIRTIO_CONFIG_S_NEEDS_RESET);
    assert_eq!(status(&mut t) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);

    // DRIVER_OK straight after ACKNOWLEDGE|DRIVER is out of order.
    let (mut t, _) = transport(two_queue_device());
    add_status(&mut t, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    add_status(&mut t, VIRTIO_CONFIG_S_DRIVER);
    write32(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    write32(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
    add_status(&mut t, VIRTIO_CONFIG_S_DRIVER_OK);
    assert!(!dummy(&t).is_activated());
    assert_eq!(
        status(&mut t),
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER
    );
}

#[test]
fn queue_num_max_is_zero_past_the_last_queue() {
    let (mut t, _) = transport(two_queue_device());
    linux_probe(&mut t, VERSION_1).unwrap();
    write32(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
    assert_eq!(read32(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 128);
    for index in [2, 3, u32::MAX] {
        assert_eq!(
            linux_setup_queue(&mut t, index, Ring::at(0x3_0000, 16)),
            Err(format!("queue {index} does not exist"))
        );
        // Writes to a queue that does not exist go nowhere.
        write32(&mut t, VIRTIO_MMIO_QUEUE_NUM, 16);
        write32(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x3_0000);
        write32(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
    }
    linux_setup_queue(&mut t, 0, rings()[0]).unwrap();
    add_status(&mut t, VIRTIO_CONFIG_S_DRIVER_OK);
    assert_eq!(dummy(&t).running.as_ref().unwrap().queues.len(), 2);
}

#[test]
fn queue_sizes_must_be_powers_of_two_within_the_maximum() {
    let (mut t, _) = transport(two_queue_device());
    linux_probe(&mut t, VERSION_1).unwrap();
    let set_up_without_size = |t: &mut MmioTransport<DummyDevice>, index, base: u32| {
        write32(t, VIRTIO_MMIO_QUEUE_SEL, index);
        write32(t, VIRTIO_MMIO_QUEUE_DESC_LOW, base);
        write32(t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, base + 0x1000);
        write32(t, VIRTIO_MMIO_QUEUE_USED_LOW, base + 0x2000);
        write32(t, VIRTIO_MMIO_QUEUE_READY, 1);
    };
    write32(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
    write32(&mut t, VIRTIO_MMIO_QUEUE_NUM, 32);
    for bad in [0, 3, 100, 256, 65536 + 32, u32::MAX] {
        write32(&mut t, VIRTIO_MMIO_QUEUE_NUM, bad);
    }
    set_up_without_size(&mut t, 1, 0x2_0000);
    write32(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
    write32(&mut t, VIRTIO_MMIO_QUEUE_NUM, 512);
    set_up_without_size(&mut t, 0, 0x1_0000);
    add_status(&mut t, VIRTIO_CONFIG_S_DRIVER_OK);
    let dummy = dummy(&t);
    let queues = &dummy.running.as_ref().unwrap().queues;
    assert_eq!(queues[1].size(), 32);
    // Queue 0 kept its default size, the maximum.
    assert_eq!(queues[0].size(), 256);
}

#[test]
fn misaligned_ring_addresses_are_refused() {
    let (mut t, _) = transport(two_queue_device());
    linux_probe(&mut t, VERSION_1).unwrap();
    let ring = Ring::at(0x1_0000, 16);
    linux_setup_queue(&mut t, 0, ring).unwrap();
    write32(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
    write32(&mut t, VIRTIO_MMIO_QUEUE_NUM, 16);
    write32(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x2_0008);
    write32(&mut t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, 0x2_1001);
    write32(&mut t, VIRTIO_MMIO_QUEUE_USED_LOW, 0x2_2002);
    write32(&mut t, VIRTIO_MMIO_QUEUE_DESC_HIGH, 0);
    add_status(&mut t, VIRTIO_CONFIG_S_DRIVER_OK);
    let dummy = dummy(&t);
    let queues = &dummy.running.as_ref().unwrap().queues;
    assert_eq!(queues[1].desc_table(), 0);
    assert_eq!(queues[1].avail_ring(), 0);
    assert_eq!(queues[1].used_ring(), 0);
}

#[test]
fn queue_registers_are_frozen_once_ready_and_after_driver_ok() {
    let (mut t, _) = transport(two_queue_device());
    linux_probe(&mut t, VERSION_1).unwrap();
    let [r0, r1] = rings();
    linux_setup_queue(&mut t, 0, r0).unwrap();
    // Ready: size and addresses stay.
    write32(&mut t, VIRTIO_MMIO_QUEUE_NUM, 16);
    write32(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x5_0000);
    // Linux refuses to set up a queue that reads back ready.
    assert_eq!(
        linux_setup_queue(&mut t, 0, r0),
        Err("queue 0 already in use".to_string())
    );
    linux_setup_queue(&mut t, 1, r1).unwrap();
    add_status(&mut t, VIRTIO_CONFIG_S_DRIVER_OK);
    // After DRIVER_OK nothing changes, not even taking a queue down.
    write32(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
    write32(&mut t, VIRTIO_MMIO_QUEUE_READY, 0);
    assert_eq!(read32(&mut t, VIRTIO_MMIO_QUEUE_READY), 1);
    let dummy = dummy(&t);
    let queues = &dummy.running.as_ref().unwrap().queues;
    assert_eq!(queues[0].size(), r0.size);
    assert_eq!(queues[0].desc_table(), r0.desc);
}

#[test]
fn a_queue_can_be_taken_down_before_driver_ok() {
    let (mut t, _) = transport(two_queue_device());
    linux_probe(&mut t, VERSION_1).unwrap();
    linux_setup_queue(&mut t, 0, Ring::at(0x1_0000, 16)).unwrap();
    write32(&mut t, VIRTIO_MMIO_QUEUE_READY, 0);
    assert_eq!(read32(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
    linux_setup_queue(&mut t, 0, Ring::at(0x3_0000, 32)).unwrap();
    add_status(&mut t, VIRTIO_CONFIG_S_DRIVER_OK);
    let dummy = dummy(&t);
    let queue = &dummy.running.as_ref().unwrap().queues[0];
    assert_eq!((queue.size(), queue.desc_table()), (32, 0x3_0000));
}

#[test]
fn rings_outside_guest_memory_make_the_device_need_a_reset() {
    let (mut t, irq) = transport(two_queue_device());
    linux_probe(&mut t, VERSION_1).unwrap();
    linux_setup_queue(&mut t, 0, Ring::at(0xf_f000, 256)).unwrap();
    add_status(&mut t, VIRTIO_CONFIG_S_DRIVER_OK);
    assert!(!dummy(&t).is_activated());
    assert_eq!(status(&mut t), STATUS_RUNNING | VIRTIO_CONFIG_S_NEEDS_RESET);
    assert_eq!(read32(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 2);
    assert_eq!(irq.signals(), 1);
    // The refusal names the queue and where the driver put its rings.
    match t.activation() {
        Err(refusal @ StartError::RingOutsideMemory { .. }) => {
            let message = refusal.to_string();
            assert!(message.contains("queue 0 (size 256"), "{message}");
            assert!(message.contains("0xff000"), "{message}");
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("rings outside guest memory accepted"),
    }
}

#[test]
fn a_device_that_fails_to_start_needs_a_reset_and_recovers_after_one() {
    let mut device = two_queue_device();
    device.fail_activation = true;
    let (mut t, irq) = transport(device);
    let generation = read32(&mut t, VIRTIO_MMIO_CONFIG_GENERATION);
    linux_bring_up(&mut t, VERSION_1, &rings()).unwrap();
    assert_eq!(status(&mut t), STATUS_RUNNING | VIRTIO_CONFIG_S_NEEDS_RESET);
    assert_eq!(read32(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 2);
    assert_eq!(
        read32(&mut t, VIRTIO_MMIO_CONFIG_GENERATION),
        generation + 1
    );
    assert_eq!(irq.signals(), 1);
    // Notifications reach nothing.
    write32(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert!(dummy(&t).processed.is_empty());

    dummy(&t).fail_activation = false;
    linux_bring_up(&mut t, VERSION_1, &rings()).unwrap();
    assert_eq!(status(&mut t), STATUS_RUNNING);
    assert!(dummy(&t).is_activated());
}

#[test]
fn config_space_reads_and_writes_reach_the_device_at_every_width() {
    let (mut t, _) = transport(two_queue_device());
    let mut byte = [0u8; 1];
    t.read(0x105, &mut byte);
    assert_eq!(byte, [5]);
    let mut word = [0u8; 2];
    t.read(0x106, &mut word);
    assert_eq!(word, [6, 7]);
    let mut dword = [0u8; 4];
    t.read(0x108, &mut dword);
    assert_eq!(dword, [8, 9, 10, 11]);
    let mut qword = [0u8; 8];
    t.read(0x108, &mut qword);
    assert_eq!(qword, [8, 9, 10, 11, 12, 13, 14, 15]);

    t.write(0x100, &[0xaa]);
    t.write(0x102, &[0xbb, 0xcc]);
    t.write(0x104, &0xdead_beefu32.to_le_bytes());
    t.write(0x108, &u64::MAX.to_le_bytes());
    assert_eq!(
        dummy(&t).config,
        [0xaa, 1, 0xbb, 0xcc, 0xef, 0xbe, 0xad, 0xde, 255, 255, 255, 255, 255, 255, 255, 255]
    );
    // The last byte of the window is config space too; past the device's config it
    // reads as zero.
    t.read(0xfff, &mut byte);
    assert_eq!(byte, [0]);
}

#[test]
fn config_interrupts_bump_the_generation_and_are_acknowledged() {
    let (mut t, irq) = transport(two_queue_device());
    linux_bring_up(&mut t, VERSION_1, &rings()).unwrap();
    let before = read32(&mut t, VIRTIO_MMIO_CONFIG_GENERATION);
    dummy(&t)
        .running
        .as_ref()
        .unwrap()
        .interrupt
        .trigger(InterruptKind::Config);
    assert_eq!(read32(&mut t, VIRTIO_MMIO_CONFIG_GENERATION), before + 1);
    assert_eq!(read32(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 2);
    assert_eq!(irq.signals(), 1);
    // What Linux's vm_interrupt() does: ack what it read.
    let pending = read32(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS);
    write32(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, pending);
    assert_eq!(read32(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    // The transport's handle is the same interrupt.
    t.interrupt().trigger(InterruptKind::Config);
    assert_eq!(read32(&mut t, VIRTIO_MMIO_CONFIG_GENERATION), before + 2);
}

#[test]
fn used_buffers_raise_a_queue_interrupt_until_acknowledged() {
    let mem = guest_memory();
    let irq = Arc::new(CountingInterrupt::default());
    let device = Arc::new(Mutex::new(two_queue_device()));
    let mut t = MmioTransport::new(device, mem.clone(), irq.clone()).unwrap();
    let mut vq = MockSplitQueue::create(&mem, GuestAddress(0x4_0000), 16);
    let ring = Ring {
        size: 16,
        desc: vq.desc_table_addr().0,
        avail: vq.avail_addr().0,
        used: vq.used_addr().0,
    };
    linux_bring_up(&mut t, VERSION_1, &[Ring::at(0x1_0000, 16), ring]).unwrap();
    vq.add_chain(2).unwrap();
    vq.add_chain(1).unwrap();
    // Without ioeventfds the notification is an MMIO write.
    write32(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    assert_eq!(dummy(&t).processed, vec![1]);
    let used_idx: u16 = mem.read_obj(GuestAddress(vq.used_addr().0 + 2)).unwrap();
    assert_eq!(used_idx, 2);
    assert_eq!(read32(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 1);
    assert_eq!(irq.signals(), 1);
    write32(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, 1);
    assert_eq!(read32(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
}

#[test]
fn notifications_before_driver_ok_wait_for_the_device_to_start() {
    let (mut t, _) = transport(two_queue_device());
    linux_probe(&mut t, VERSION_1).unwrap();
    // Before the queue is set up: dropped.
    t.notify_queue(0);
    linux_setup_queue(&mut t, 0, rings()[0]).unwrap();
    linux_setup_queue(&mut t, 1, rings()[1]).unwrap();
    // Set up but before DRIVER_OK (Linux's balloon does this with its stats queue):
    // the device does not see it yet...
    t.notify_queue(1);
    t.notify_queue(1);
    write32(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    assert!(dummy(&t).processed.is_empty());
    // ...but gets it, once, as soon as it runs.
    add_status(&mut t, VIRTIO_CONFIG_S_DRIVER_OK);
    assert_eq!(dummy(&t).processed, vec![1]);
}

#[test]
fn a_reset_forgets_early_notifications() {
    let (mut t, _) = transport(two_queue_device());
    linux_probe(&mut t, VERSION_1).unwrap();
    linux_setup_queue(&mut t, 0, rings()[0]).unwrap();
    t.notify_queue(0);
    linux_bring_up(&mut t, VERSION_1, &rings()).unwrap();
    assert!(dummy(&t).processed.is_empty());
}

#[test]
fn notifications_for_queues_that_do_not_exist_are_ignored() {
    let (mut t, _) = transport(two_queue_device());
    linux_bring_up(&mut t, VERSION_1, &rings()[..1]).unwrap();
    t.notify_queue(1);
    t.notify_queue(2);
    t.notify_queue(usize::MAX);
    write32(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 7);
    assert!(dummy(&t).processed.is_empty());
    t.notify_queue(0);
    assert_eq!(dummy(&t).processed, vec![0]);
}

#[test]
fn reset_returns_to_the_initial_state_and_a_second_probe_works() {
    let (mut t, irq) = transport(two_queue_device());
    let pristine: Vec<u32> = (0..0x100).step_by(4).map(|o| read32(&mut t, o)).collect();

    linux_bring_up(&mut t, VERSION_1 | BIT0, &rings()).unwrap();
    t.interrupt().trigger(InterruptKind::Queue);
    write32(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
    write32(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    t.queue_events()[0].write(1).unwrap();
    let generation = read32(&mut t, VIRTIO_MMIO_CONFIG_GENERATION);
    let resets = dummy(&t).resets;

    write32(&mut t, VIRTIO_MMIO_STATUS, 0);
    assert_eq!(dummy(&t).resets, resets + 1);
    assert!(!dummy(&t).is_activated());
    assert_eq!(t.acked_features, 0);
    let after: Vec<u32> = (0..0x100).step_by(4).map(|o| read32(&mut t, o)).collect();
    let generation_index = (VIRTIO_MMIO_CONFIG_GENERATION / 4) as usize;
    for (i, (a, b)) in pristine.iter().zip(&after).enumerate() {
        if i != generation_index {
            assert_eq!(a, b, "register {:#x} after reset", i * 4);
        }
    }
    assert_eq!(after[generation_index], generation);
    for q in 0..2 {
        write32(&mut t, VIRTIO_MMIO_QUEUE_SEL, q);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
    }
    assert_eq!(
        t.queue_events()[0].read().unwrap_err().kind(),
        io::ErrorKind::WouldBlock
    );

    // Unbind and bind again, several times, with different choices each time.
    for round in 0..3u16 {
        let size = 16 << round;
        let acked = linux_bring_up(
            &mut t,
            VERSION_1,
            &[Ring::at(0x1_0000, size), Ring::at(0x2_0000, size)],
        )
        .unwrap();
        assert_eq!(acked, VERSION_1);
        {
            let dummy = dummy(&t);
            let running = dummy.running.as_ref().unwrap();
            assert_eq!(running.acked_features, VERSION_1);
            assert_eq!(running.queues[1].size(), size);
            assert_eq!(running.queues[1].next_avail(), 0);
        }
        write32(&mut t, VIRTIO_MMIO_STATUS, 0);
    }
    assert_eq!(dummy(&t).activations, 4);
    assert_eq!(irq.signals(), 1);
}

#[test]
fn invalid_accesses_are_ignored() {
    let (mut t, _) = transport(two_queue_device());
    // Registers are 32-bit and aligned only.
    for len in [1usize, 2, 3, 8] {
        let mut data = vec![0xffu8; len];
        t.read(0, &mut data);
        assert!(data.iter().all(|&b| b == 0), "{len}-byte read");
        t.write(u64::from(VIRTIO_MMIO_STATUS), &vec![1u8; len]);
    }
    let mut data = [0xffu8; 4];
    t.read(2, &mut data);
    assert_eq!(data, [0; 4]);
    t.write(u64::from(VIRTIO_MMIO_STATUS) + 1, &[1, 0, 0, 0]);
    assert_eq!(status(&mut t), 0);

    // Read-only registers do not take writes; write-only ones read as 0.
    write32(&mut t, VIRTIO_MMIO_MAGIC_VALUE, 0);
    write32(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS, 3);
    write32(&mut t, 0x0f0, 1);
    assert_eq!(read32(&mut t, VIRTIO_MMIO_MAGIC_VALUE), MMIO_MAGIC_VALUE);
    assert_eq!(read32(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    assert_eq!(read32(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY), 0);
    assert_eq!(read32(&mut t, VIRTIO_MMIO_DRIVER_FEATURES), 0);
    assert_eq!(read32(&mut t, 0x0f8), 0);

    // Config space: 1, 2, 4 or 8 bytes inside the window.
    let before = dummy(&t).config;
    t.write(0x100, &[9, 9, 9]);
    t.write(0x100, &[9; 16]);
    t.write(0xffe, &[9; 4]);
    t.write(0x1000, &[9]);
    t.write(u64::MAX, &[9]);
    assert_eq!(dummy(&t).config, before);
    for (offset, len) in [
        (0x100, 3usize),
        (0x100, 16),
        (0xffe, 4),
        (0x1000, 1),
        (u64::MAX, 1),
    ] {
        let mut data = vec![0xffu8; len];
        t.read(offset, &mut data);
        assert!(
            data.iter().all(|&b| b == 0),
            "{len}-byte read at {offset:#x}"
        );
    }
    t.read(0x100, &mut []);
    t.write(0x100, &[]);

    // After all that the device still probes normally.
    linux_bring_up(&mut t, VERSION_1, &rings()).unwrap();
    assert!(dummy(&t).is_activated());
}

#[test]
fn shared_memory_regions_do_not_exist() {
    let (mut t, _) = transport(two_queue_device());
    for sel in [0, 1, 255] {
        write32(&mut t, VIRTIO_MMIO_SHM_SEL, sel);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_SHM_LEN_LOW), u32::MAX);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_SHM_LEN_HIGH), u32::MAX);
    }
}

#[test]
fn failed_is_latched_and_only_a_reset_clears_it() {
    let (mut t, _) = transport(two_queue_device());
    add_status(&mut t, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    add_status(&mut t, VIRTIO_CONFIG_S_FAILED);
    add_status(&mut t, VIRTIO_CONFIG_S_DRIVER);
    assert_eq!(
        status(&mut t),
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_FAILED
    );
    write32(&mut t, VIRTIO_MMIO_STATUS, 0);
    assert_eq!(status(&mut t), 0);
}

#[test]
fn devices_the_transport_cannot_carry_are_refused() {
    let irq = Arc::new(CountingInterrupt::default());
    let legacy = MmioTransport::new(
        Arc::new(Mutex::new(DummyDevice::new(BIT0, &[16]))),
        guest_memory(),
        irq.clone(),
    );
    assert!(matches!(
        legacy,
        Err(MmioError::NotModern {
            device_type: DUMMY_DEVICE_TYPE
        })
    ));
    for max_size in [0u16, 3, 65535] {
        let bad = MmioTransport::new(
            Arc::new(Mutex::new(DummyDevice::new(VERSION_1, &[16, max_size]))),
            guest_memory(),
            irq.clone(),
        );
        match bad {
            Err(e @ MmioError::InvalidQueueMaxSize { index: 1, .. }) => {
                assert!(e.to_string().contains(&max_size.to_string()))
            }
            _ => panic!("max size {max_size} accepted"),
        }
    }
}

#[test]
fn registers_that_do_not_concern_the_device_do_not_wait_for_it() {
    let (mut t, _) = transport(two_queue_device());
    linux_bring_up(&mut t, VERSION_1, &rings()).unwrap();
    let device = t.device().clone();
    // The API, or the event loop processing a queue, holds the device.
    let busy = lock(&device);
    let (done, finished) = mpsc::channel();
    thread::spawn(move || {
        write32(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
        write32(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, 1);
        let answers = [
            VIRTIO_MMIO_DEVICE_ID,
            VIRTIO_MMIO_DEVICE_FEATURES,
            VIRTIO_MMIO_QUEUE_NUM_MAX,
            VIRTIO_MMIO_QUEUE_READY,
            VIRTIO_MMIO_INTERRUPT_STATUS,
            VIRTIO_MMIO_STATUS,
            VIRTIO_MMIO_CONFIG_GENERATION,
        ]
        .map(|register| read32(&mut t, register));
        let _ = done.send(answers);
    });
    let answers = finished.recv_timeout(HANG_GUARD).unwrap();
    drop(busy);
    let low_features = (VERSION_1 | EVENT_IDX | BIT0) as u32;
    assert_eq!(
        answers,
        [
            DUMMY_DEVICE_TYPE,
            low_features,
            128,
            1,
            0,
            STATUS_RUNNING,
            0
        ]
    );
}
