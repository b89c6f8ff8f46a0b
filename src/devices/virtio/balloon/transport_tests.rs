//! The balloon behind the virtio-mmio transport, driven register by register as Linux
//! drives it: what the transport does for the balloon (ring checks, notifications from
//! before DRIVER_OK) and the locks the balloon shares with the API and the event loop.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use virtio_bindings::virtio_config::{VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_NEEDS_RESET};
use virtio_bindings::virtio_mmio::{
    VIRTIO_MMIO_CONFIG, VIRTIO_MMIO_INTERRUPT_STATUS, VIRTIO_MMIO_QUEUE_NOTIFY, VIRTIO_MMIO_STATUS,
};

use super::test_util::{ram, stat, Bench, GUEST_MEM};
use super::{Balloon, BalloonControl, BalloonHandle};
use crate::devices::test_support::CountingInterrupt;
use crate::devices::virtio::mmio::test_driver::*;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::VirtioDevice;
use crate::memory::GuestMemoryMmap;
use crate::sync::lock;

/// Long enough never to fire when nothing is wrong; short enough to end a deadlock.
const HANG_GUARD: Duration = Duration::from_secs(30);

/// A balloon configured by `config`, behind a transport in `mem`.
fn balloon_behind_transport(
    config: &str,
    mem: &GuestMemoryMmap,
) -> (
    Arc<Mutex<Balloon>>,
    MmioTransport<Balloon>,
    Arc<CountingInterrupt>,
) {
    let balloon = Balloon::new(config.parse().unwrap(), GUEST_MEM).unwrap();
    let balloon = Arc::new(Mutex::new(balloon));
    let irq = Arc::new(CountingInterrupt::default());
    let transport = MmioTransport::new(balloon.clone(), mem.clone(), irq.clone()).unwrap();
    (balloon, transport, irq)
}

/// The bench's mock queues as the rings a driver sets up.
fn rings(bench: &Bench) -> Vec<Ring> {
    (0..bench.balloon.layout().len())
        .map(|index| {
            let mock = bench.mock(index);
            Ring {
                size: 256,
                desc: mock.desc_table_addr().0,
                avail: mock.avail_addr().0,
                used: mock.used_addr().0,
            }
        })
        .collect()
}

#[test]
fn the_stats_buffer_kicked_before_driver_ok_is_read_when_the_balloon_starts() {
    let bench_ram = ram();
    let mut bench = Bench::parse(&bench_ram, "stats=5");
    let (balloon, mut t, irq) = balloon_behind_transport("stats=5", &bench_ram);
    linux_probe(&mut t, u64::MAX).unwrap();
    for (index, ring) in rings(&bench).into_iter().enumerate() {
        linux_setup_queue(&mut t, index as u32, ring).unwrap();
    }
    // Linux's init_vqs(): the first statistics buffer, queued and kicked before DRIVER_OK.
    let mut buf = stat(5, 1 << 30);
    buf.extend(stat(4, 512 << 20));
    bench.add_readable(2, &buf);
    write32(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 2);
    assert_eq!(
        lock(&balloon).statistics().unwrap().last_update_age_ms,
        None
    );

    add_status(&mut t, VIRTIO_CONFIG_S_DRIVER_OK);
    let s = lock(&balloon).statistics().unwrap();
    assert_eq!(s.stats.total_memory, Some(1 << 30));
    assert_eq!(s.stats.free_memory, Some(512 << 20));
    assert!(s.last_update_age_ms.is_some());
    // Kept for the next poll: nothing used, no interrupt.
    assert_eq!(bench.used_count(2), 0);
    assert_eq!(read32(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    assert_eq!(irq.signals(), 0);
}

#[test]
fn rings_outside_guest_memory_never_reach_the_balloon() {
    let bench_ram = ram();
    let bench = Bench::parse(&bench_ram, "");
    let (balloon, mut t, _) = balloon_behind_transport("", &bench_ram);
    let mut rings = rings(&bench);
    rings[0] = Ring::at(GUEST_MEM - 0x1000, 256);
    linux_bring_up(&mut t, u64::MAX, &rings).unwrap();
    assert!(!lock(&balloon).info().driver_ready);
    assert_ne!(
        read32(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET,
        0
    );
}

#[test]
fn an_api_call_does_not_wait_for_the_transport_registers() {
    let bench_ram = ram();
    let (balloon, t, _) = balloon_behind_transport("stats=5", &bench_ram);
    let registers = Mutex::new(t);
    let handle = BalloonHandle::new(balloon);

    // A vCPU in the middle of an MMIO exit to the balloon's registers.
    let exit = lock(&registers);
    let (done, finished) = mpsc::channel();
    thread::spawn(move || {
        let answer = handle.set_target_pages(1024).map(|()| handle.info());
        let _ = done.send(answer);
    });
    let info = finished.recv_timeout(HANG_GUARD).unwrap().unwrap();
    assert_eq!(info.target_pages, 1024);
    drop(exit);
}

#[test]
fn mmio_exits_notifications_and_api_calls_never_deadlock() {
    // Each thread takes the locks as its real counterpart does: a vCPU the registers (then
    // the notification gate and the balloon), the event loop the gate then the balloon or
    // the balloon alone, the API the balloon alone. A lock order that could cycle would
    // sooner or later hang here.
    const ROUNDS: u32 = 200;
    let bench_ram = ram();
    let bench = Bench::parse(&bench_ram, "stats=1");
    let rings = rings(&bench);
    let (balloon, t, _) = balloon_behind_transport("stats=1", &bench_ram);
    let notifications = t.notifications();
    let registers = Arc::new(Mutex::new(t));
    let handle = BalloonHandle::new(balloon.clone());
    let (done, finished) = mpsc::channel();

    let vcpu_done = done.clone();
    thread::spawn(move || {
        for _ in 0..ROUNDS {
            linux_bring_up(&mut lock(&registers), u64::MAX, &rings).unwrap();
            let target = read32(&mut lock(&registers), VIRTIO_MMIO_CONFIG);
            write32(&mut lock(&registers), VIRTIO_MMIO_CONFIG + 4, target);
            write32(&mut lock(&registers), VIRTIO_MMIO_QUEUE_NOTIFY, 0);
            write32(&mut lock(&registers), VIRTIO_MMIO_STATUS, 0);
        }
        let _ = vcpu_done.send("vcpu");
    });
    let event_loop_done = done.clone();
    thread::spawn(move || {
        let timer = lock(&balloon).event_fds()[0];
        for _ in 0..ROUNDS {
            for index in 0..notifications.queue_events().len() {
                notifications.queue_events()[index].write(1).unwrap();
                notifications.deliver_queue_event(index).unwrap();
            }
            lock(&balloon).process_event_fd(timer);
        }
        let _ = event_loop_done.send("event loop");
    });
    thread::spawn(move || {
        for round in 0..ROUNDS {
            handle.set_target_pages(round).unwrap();
            assert_eq!(handle.info().target_pages, round);
            handle.set_stats_interval(round % 3).unwrap();
        }
        let _ = done.send("api");
    });
    let mut finished_threads: Vec<&str> = (0..3)
        .map(|_| finished.recv_timeout(HANG_GUARD).unwrap())
        .collect();
    finished_threads.sort();
    assert_eq!(finished_threads, ["api", "event loop", "vcpu"]);
}
