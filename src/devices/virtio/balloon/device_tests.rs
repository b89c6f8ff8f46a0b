//! The balloon device driven the way a driver drives it: mock split queues in real guest
//! memory, one notification at a time.

use std::os::unix::io::RawFd;

use virtio_queue::QueueT;

use super::layout::QueueRole;
use super::test_util::{
    pfn_bytes, pfns_of, ram, ram_with, stat, Bench, Desc, DATA_AREA, GUEST_MEM,
};
use super::warnings::Warning;
use super::*;
use crate::devices::virtio::{ActivateError, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::memory::{resident_bytes, MemoryBacking};
use crate::size::MIB;

const PAGE: u64 = 4096;

fn all_features() -> u64 {
    0b11_1111
}

fn features_from_combination(n: u32) -> BalloonFeatures {
    BalloonFeatures::from_bits(u64::from(n))
}

fn read_config_u32(balloon: &Balloon, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    balloon.read_config(offset, &mut b);
    u32::from_le_bytes(b)
}

/// Waits (up to a generous bound, never asserted on) for `fd` to become readable.
fn wait_readable(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is a valid pollfd for the duration of the call.
    let ret = unsafe { libc::poll(&mut pfd, 1, 10_000) };
    ret == 1
}

fn is_readable_now(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is a valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, 0) == 1 }
}

#[test]
fn identifies_as_a_balloon_offering_what_was_configured() {
    let b = Balloon::new("stats,page-reporting".parse().unwrap(), GUEST_MEM).unwrap();
    assert_eq!(b.device_type(), 5);
    assert_eq!(
        b.device_features(),
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_BALLOON_F_STATS_VQ)
            | (1 << VIRTIO_BALLOON_F_REPORTING)
    );
    assert_eq!(b.queue_max_sizes(), &[256, 256, 256, 256]);
    assert_eq!(b.event_fds().len(), 1);

    let plain = Balloon::new(BalloonConfig::default(), GUEST_MEM).unwrap();
    assert_eq!(plain.device_features(), 1 << VIRTIO_F_VERSION_1);
    assert_eq!(plain.queue_max_sizes(), &[256, 256]);
    assert!(plain.event_fds().is_empty());

    let all = Balloon::new(
        BalloonConfig {
            features: BalloonFeatures::from_bits(all_features()),
            ..Default::default()
        },
        GUEST_MEM,
    )
    .unwrap();
    assert_eq!(
        all.device_features(),
        (1 << VIRTIO_F_VERSION_1) | all_features()
    );
    assert_eq!(all.queue_max_sizes().len(), 5);
}

/// Puts a buffer only `role` understands on the queue the layout gives it, and checks the
/// role's effect.
fn probe(bench: &mut Bench, role: QueueRole) {
    let index = bench.index(role);
    let page = DATA_AREA + 16 * PAGE * role as u64;
    let context = format!(
        "{role:?} at queue {index}, features {:#x}",
        bench.balloon.device_features()
    );
    match role {
        QueueRole::Inflate => {
            bench.fill(page, PAGE, 0x11);
            bench.add_readable(index, &pfn_bytes(&pfns_of(page, 1)));
            bench.notify(index);
            assert!(bench.holds(page, PAGE, 0), "{context}");
            assert_eq!(bench.used_count(index), 1, "{context}");
        }
        QueueRole::Deflate => {
            bench.fill(page, PAGE, 0x22);
            bench.add_readable(index, &pfn_bytes(&pfns_of(page, 1)));
            bench.notify(index);
            assert!(bench.holds(page, PAGE, 0x22), "{context}");
            assert_eq!(bench.used_count(index), 1, "{context}");
            assert_eq!(bench.balloon.counters().deflated_pages, 1, "{context}");
        }
        QueueRole::Stats => {
            bench.add_readable(index, &stat(4, 12345));
            bench.notify(index);
            let stats = bench.balloon.statistics().unwrap();
            assert_eq!(stats.stats.free_memory, Some(12345), "{context}");
            assert_eq!(bench.used_count(index), 0, "{context}: the device keeps it");
        }
        QueueRole::FreePageHint => {
            bench.balloon.start_hinting(false).unwrap();
            let id = bench.balloon.hinting_status().unwrap().host_cmd;
            bench.fill(page, PAGE, 0x33);
            let cmd = bench.buffer(&id.to_le_bytes());
            bench.add_chain(index, &[Desc::Read(cmd, 4)]);
            bench.add_chain(index, &[Desc::Write(page, PAGE as u32)]);
            bench.notify(index);
            assert_eq!(
                bench.balloon.hinting_status().unwrap().guest_cmd,
                Some(id),
                "{context}"
            );
            assert!(bench.holds(page, PAGE, 0), "{context}");
            assert_eq!(bench.used_count(index), 2, "{context}");
        }
        QueueRole::Reporting => {
            bench.fill(page, PAGE, 0x44);
            bench.add_chain(index, &[Desc::Write(page, PAGE as u32)]);
            bench.notify(index);
            assert!(bench.holds(page, PAGE, 0), "{context}");
            assert_eq!(bench.used_count(index), 1, "{context}");
        }
    }
}

#[test]
fn every_feature_set_serves_each_role_on_the_queue_its_layout_names() {
    for n in 0..64 {
        let config = BalloonConfig {
            features: features_from_combination(n),
            stats_interval_s: 0,
            initial_size: 0,
        };
        let bench_ram = ram();
        let mut bench = Bench::new(&bench_ram, config);
        bench.activate().unwrap();
        let roles: Vec<QueueRole> = bench.balloon.layout().roles().collect();
        assert_eq!(roles.len(), bench.balloon.queue_max_sizes().len());
        for role in roles {
            probe(&mut bench, role);
        }
    }
}

#[test]
fn page_reporting_alone_is_queue_2() {
    let bench_ram = ram();
    let mut bench = Bench::parse(&bench_ram, "page-reporting");
    bench.activate().unwrap();
    bench.fill(DATA_AREA, 2 * MIB, 0x5a);
    bench.add_chain(2, &[Desc::Write(DATA_AREA, 2 * MIB as u32)]);
    bench.notify(2);
    assert!(bench.holds(DATA_AREA, 2 * MIB, 0));
    assert_eq!(bench.used_count(2), 1);
    // The spec's fixed index 4 does not exist here.
    bench.notify(4);
    assert_eq!(
        bench.balloon.warning_count(Warning::NotifiedUnknownQueue),
        1
    );
}

#[test]
fn a_chain_longer_than_its_queue_is_cut_at_the_queue_size() {
    let bench_ram = ram();
    let mut bench = Bench::parse(&bench_ram, "page-reporting");
    bench.set_queue_size(2, 32);
    bench.activate().unwrap();
    let pages = 100u64;
    bench.fill(DATA_AREA, pages * PAGE, 0x5a);
    let descs: Vec<Desc> = (0..pages)
        .map(|i| Desc::Write(DATA_AREA + i * PAGE, PAGE as u32))
        .collect();
    let table = bench.indirect_table(&descs);
    bench.add_chain(2, &[table]);
    bench.notify(2);
    assert!(bench.holds(DATA_AREA, 32 * PAGE, 0));
    assert!(bench.holds(DATA_AREA + 32 * PAGE, (pages - 32) * PAGE, 0x5a));
    assert_eq!(bench.balloon.counters().reported_bytes, 32 * PAGE);
    assert_eq!(bench.used_count(2), 1);
    assert_eq!(bench.balloon.warning_count(Warning::ChainTooLong), 1);
}

#[test]
fn inflating_merges_pages_frees_them_and_they_read_as_zero() {
    let bench_ram = ram();
    let mut bench = Bench::parse(&bench_ram, "");
    bench.activate().unwrap();
    let len = 4 * MIB;
    bench.fill(DATA_AREA, len + PAGE, 0xa5);
    // 1024 pages, shuffled, 256 per buffer as Linux sends them, four buffers at once.
    let mut pfns = pfns_of(DATA_AREA, 1024);
    pfns.reverse();
    let (odd, even): (Vec<u32>, Vec<u32>) = pfns.iter().partition(|&&p| p % 2 == 1);
    let shuffled: Vec<u32> = odd.into_iter().chain(even).collect();
    for chunk in shuffled.chunks(256) {
        bench.add_readable(0, &pfn_bytes(chunk));
    }
    let before = resident_bytes(bench.mem);
    bench.notify(0);
    let after = resident_bytes(bench.mem);
    assert!(before - after >= len, "resident {before} -> {after}");
    assert!(bench.holds(DATA_AREA, len, 0));
    assert!(bench.holds(DATA_AREA + len, PAGE, 0xa5));
    assert_eq!(bench.used_count(0), 4);
    for n in 0..4 {
        assert_eq!(bench.used(0, n).1, 0);
    }
    assert_eq!(bench.interrupt.queue(), 1, "one interrupt per batch");
    let counters = bench.balloon.counters();
    assert_eq!(counters.inflated_pages, 1024);
    assert_eq!(counters.discarded_bytes, len);
    assert_eq!(counters.discard_calls, 1, "one contiguous run, one call");
}

#[test]
fn inflating_separate_runs_makes_one_call_per_run() {
    let bench_ram = ram();
    let mut bench = Bench::parse(&bench_ram, "");
    bench.activate().unwrap();
    let mut pfns = pfns_of(DATA_AREA, 8);
    pfns.extend(pfns_of(DATA_AREA + MIB, 8));
    pfns.extend(pfns_of(DATA_AREA, 8)); // duplicates count once
    bench.add_readable(0, &pfn_bytes(&pfns));
    bench.notify(0);
    let counters = bench.balloon.counters();
    assert_eq!(counters.inflated_pages, 16);
    assert_eq!(counters.discard_calls, 2);
}

#[test]
fn inflating_with_memfd_backing_punches_holes() {
    let bench_ram = ram_with(MemoryBacking::Memfd);
    let mut bench = Bench::new(&bench_ram, BalloonConfig::default());
    bench.activate().unwrap();
    bench.fill(DATA_AREA, MIB, 0x77);
    bench.add_readable(0, &pfn_bytes(&pfns_of(DATA_AREA, 256)));
    let before = resident_bytes(bench.mem);
    bench.notify(0);
    assert!(before - resident_bytes(bench.mem) >= MIB);
    assert!(bench.holds(DATA_AREA, MIB, 0));
}

#[test]
fn pages_outside_ram_are_skipped_and_the_rest_still_freed() {
    let bench_ram = ram();
    let mut bench = Bench::parse(&bench_ram, "");
    bench.activate().unwrap();
    bench.fill(DATA_AREA, 2 * PAGE, 0x3c);
    let end_pfn = (GUEST_MEM / PAGE) as u32;
    let pfns = [
        (DATA_AREA / PAGE) as u32,
        end_pfn,
        end_pfn + 1,
        u32::MAX,
        (DATA_AREA / PAGE) as u32 + 1,
    ];
    bench.add_readable(0, &pfn_bytes(&pfns));
    bench.notify(0);
    assert!(bench.holds(DATA_AREA, 2 * PAGE, 0));
    assert_eq!(bench.used_count(0), 1);
    assert_eq!(
        bench.balloon.warning_count(Warning::PfnOutsideRam),
        2,
        "two runs outside RAM"
    );
    let counters = bench.balloon.counters();
    assert_eq!(counters.discarded_bytes, 2 * PAGE);
    assert_eq!(counters.kept_bytes, 3 * PAGE);
}

#[test]
fn malformed_inflate_buffers_are_skipped_but_returned() {
    let bench_ram = ram();
    let mut bench = Bench::parse(&bench_ram, "");
    bench.activate().unwrap();
    bench.fill(DATA_AREA, 3 * PAGE, 0x99);
    // Device-writable: not a PFN list.
    let writable = bench.buffer(&pfn_bytes(&pfns_of(DATA_AREA, 1)));
    bench.add_chain(0, &[Desc::Write(writable, 4)]);
    // Six bytes: one PFN and a stray tail.
    let mut odd = pfn_bytes(&pfns_of(DATA_AREA + PAGE, 1));
    odd.extend_from_slice(&[0xff, 0xff]);
    bench.add_readable(0, &odd);
    // A buffer outside guest RAM.
    bench.add_chain(0, &[Desc::Read(GUEST_MEM + PAGE, 4)]);
    // A buffer that starts in RAM and runs out of it.
    bench.add_chain(0, &[Desc::Read(GUEST_MEM - 8, 64)]);
    bench.notify(0);
    assert_eq!(bench.used_count(0), 4);
    assert!(bench.holds(DATA_AREA, PAGE, 0x99));
    assert!(bench.holds(DATA_AREA + PAGE, PAGE, 0));
    assert_eq!(bench.balloon.warning_count(Warning::WrongDirection), 1);
    assert_eq!(bench.balloon.warning_count(Warning::PfnBufferLength), 1);
    assert_eq!(bench.balloon.warning_count(Warning::BufferOutsideRam), 2);
}

#[test]
fn deflating_only_acknowledges() {
    let bench_ram = ram();
    let mut bench = Bench::parse(&bench_ram, "must-tell-host");
    assert_ne!(
        bench.balloon.device_features() & (1 << VIRTIO_BALLOON_F_MUST_TELL_HOST),
        0
    );
    bench.activate().unwrap();
    bench.fill(DATA_AREA, 2 * PAGE, 0x42);
    let head = bench.add_readable(1, &pfn_bytes(&pfns_of(DATA_AREA, 2)));
    bench.notify(1);
    assert_eq!(bench.used_count(1), 1);
    assert_eq!(bench.used(1, 0), (u32::from(head), 0));
    assert_eq!(bench.interrupt.queue(), 1);
    assert!(bench.holds(DATA_AREA, 2 * PAGE, 0x42));
    assert_eq!(bench.balloon.counters().deflated_pages, 2);
}

#[test]
fn a_notification_with_nothing_available_raises_no_interrupt() {
    let bench_ram = ram();
    let mut bench = Bench::parse(&bench_ram, "page-reporting");
    bench.activate().unwrap();
    for i in 0..3 {
        bench.notify(i);
    }
    assert_eq!(bench.interrupt.queue(), 0);
}

#[test]
fn each_queue_counts_its_notifications_buffers_interrupts_and_time() {
    let bench_ram = ram();
    let mut bench = Bench::parse(&bench_ram, "stats=0,page-reporting");
    let (inflate, stats, reporting) = (
        bench.index(QueueRole::Inflate),
        bench.index(QueueRole::Stats),
        bench.index(QueueRole::Reporting),
    );
    bench.add_readable(stats, &stat(4, 100));
    bench.activate().unwrap();
    bench.notify(stats);
    bench.balloon.set_target_pages(16).unwrap();

    bench.fill(DATA_AREA, 2 * PAGE, 0x11);
    bench.add_readable(inflate, &pfn_bytes(&pfns_of(DATA_AREA, 2)));
    bench.add_readable(inflate, &pfn_bytes(&pfns_of(DATA_AREA + 8 * PAGE, 1)));
    bench.notify(inflate);
    bench.notify(inflate); // nothing left: counted, but no buffer and no interrupt
    bench.add_chain(reporting, &[Desc::Write(DATA_AREA + MIB, 2 * MIB as u32)]);
    bench.notify(reporting);

    let counters = bench.balloon.counters();
    let inflated = counters.queue(QueueRole::Inflate);
    assert_eq!(
        (
            inflated.notifications,
            inflated.buffers,
            inflated.interrupts
        ),
        (2, 2, 1)
    );
    assert_eq!(inflated.processing.count(), 2);
    let reported = counters.queue(QueueRole::Reporting);
    assert_eq!(
        (
            reported.notifications,
            reported.buffers,
            reported.interrupts
        ),
        (1, 1, 1)
    );
    let stats_queue = counters.queue(QueueRole::Stats);
    assert_eq!(
        (
            stats_queue.notifications,
            stats_queue.buffers,
            stats_queue.interrupts
        ),
        (1, 0, 0),
        "the device keeps the statistics buffer"
    );
    assert_eq!(counters.queue(QueueRole::Deflate).notifications, 0);
    assert_eq!(counters.stats_updates, 1);
    assert_eq!(counters.config_interrupts, 1);
    assert_eq!(counters.inflate_discarded_bytes, 3 * PAGE);
    assert_eq!(counters.reporting_discarded_bytes, 2 * MIB);
    assert_eq!(counters.hinting_discarded_bytes, 0);
    assert_eq!(counters.discarded_bytes, 3 * PAGE + 2 * MIB);
    assert_eq!((counters.discard_calls, counters.discard_failures), (3, 0));
    assert_eq!(
        (bench.interrupt.queue() + bench.interrupt.config()) as u64,
        inflated.interrupts + reported.interrupts + counters.config_interrupts
    );
}

// ---- statistics ----

#[test]
fn the_stats_buffer_queued_before_driver_ok_is_read_at_activation_and_kept() {
    let bench_ram = ram();
    let mut bench = Bench::parse(&bench_ram, "stats=5");
    assert_eq!(bench.balloon.statistics().unwrap().last_update_age_ms, None);
    let mut buf = stat(5, 1 << 30);
    buf.extend(stat(4, 512 << 20));
    buf.extend(stat(2, 17));
    bench.add_readable(2, &buf);
    bench.notify(2); // before DRIVER_OK: dropped
    assert_eq!(
        bench
            .balloon
            .warning_count(Warning::NotifiedBeforeActivation),
        1
    );
    bench.activate().unwrap();
    // The transport delivers the kick the driver sent before DRIVER_OK right after the
    // device starts (transport_tests.rs drives this through the registers).
    bench.notify(2);
    let s = bench.balloon.statistics().unwrap();
    assert_eq!(s.stats.total_memory, Some(1 << 30));
    assert_eq!(s.stats.free_memory, Some(512 << 20));
    assert_eq!(s.stats.major_faults, Some(17));
    assert_eq!(s.stats.swap_in, None);
    assert_eq!(s.unknown_tags, 0);
    assert!(s.last_update_age_ms.is_some());
    assert_eq!(bench.used_count(2), 0);
    assert_eq!(bench.interrupt.queue(), 0);
}

#[test]
fn a_timer_event_before_the_interval_elapsed_changes_nothing() {
    let bench_ram = ram();
    let mut bench = Bench::parse(&bench_ram, "stats=60");
    bench.add_readable(2, &stat(4, 1));
    bench.activate().unwrap();
    bench.notify(2); // the driver's kick from before DRIVER_OK, as the transport replays it
    let fd = bench.balloon.event_fds()[0];
    assert!(!is_readable_now(fd));
    bench.balloon.process_event_fd(fd);
    bench.balloon.process_event_fd(fd + 1000);
    assert_eq!(bench.used_count(2), 0);
    assert_eq!(bench.balloon.warning_count(Warning::TimerFailed), 0);
}

#[test]
fn polling_hands_the_buffer_back_and_reads_the_refill() {
    // Starts without polling; polling is switched on at run time.
    let bench_ram = ram();
    let mut bench = Bench::parse(&bench_ram, "stats=0");
    let head = bench.add_readable(2, &stat(4, 100));
    bench.activate().unwrap();
    bench.notify(2); // the driver's kick from before DRIVER_OK, as the transport replays it
    let fd = bench.balloon.event_fds()[0];
    assert!(!is_readable_now(fd), "interval 0 never fires");
    bench.balloon.set_stats_interval(1).unwrap();
    assert_eq!(bench.balloon.info().stats_interval_s, 1);
    assert!(wait_readable(fd), "the timer never fired");
    bench.balloon.process_event_fd(fd);
    assert_eq!(bench.used_count(2), 1);
    assert_eq!(bench.used(2, 0), (u32::from(head), 0));
    assert_eq!(bench.interrupt.queue(), 1);
    let polled = *bench.balloon.counters().queue(QueueRole::Stats);
    assert_eq!((polled.buffers, polled.interrupts), (1, 1));
    // The driver refills and requeues.
    bench.add_readable(2, &stat(4, 200));
    bench.notify(2);
    assert_eq!(
        bench.balloon.statistics().unwrap().stats.free_memory,
        Some(200)
    );
    assert_eq!(bench.used_count(2), 1, "kept until the next poll");
    bench.balloon.set_stats_interval(0).unwrap();
    assert!(!is_readable_now(fd));
}

#[test]
fn unknown_tags_are_counted_and_a_partial_entry_ignored() {
    let bench_ram = ram();
    let mut bench = Bench::parse(&bench_ram, "stats=0");
    bench.activate().unwrap();
    let mut buf = stat(6, 77);
    buf.extend(stat(99, 1));
    buf.extend(stat(16, 1));
    buf.extend_from_slice(&[7, 0, 1, 2, 3]);
    bench.add_readable(2, &buf);
    bench.notify(2);
    let s = bench.balloon.statistics().unwrap();
    assert_eq!(s.stats.available_memory, Some(77));
    assert_eq!(s.unknown_tags, 2);
    assert_eq!(s.stats.disk_caches, None);
    assert_eq!(bench.balloon.warning_count(Warning::StatsLength), 1);
}

#[test]
fn an_oversized_stats_buffer_is_returned_unread() {
    let bench_ram = ram();
    let mut bench = Bench::parse(&bench_ram, "stats=0");
    bench.activate().unwrap();
    let buf: Vec<u8> = (0..65).flat_map(|_| stat(4, 9)).collect();
    bench.add_readable(2, &buf);
    bench.notify(2);
    assert_eq!(bench.used_count(2), 1);
    assert_eq!(bench.interrupt.queue(), 1);
    assert_eq!(bench.balloon.statistics().unwrap().stats.free_memory, None);
    assert_eq!(bench.balloon.warning_count(Warning::StatsOversized), 1);
    // 64 entries is still fine.
    let buf: Vec<u8> = (0..64).flat_map(|_| stat(4, 9)).collect();
    bench.add_readable(2, &buf);
    bench.notify(2);
    assert_eq!(
        bench.balloon.statistics().unwrap().stats.free_memory,
        Some(9)
    );
    assert_eq!(bench.used_count(2), 1);
}

#[test]
fn a_second_stats_buffer_returns_the_first() {
    let bench_ram = ram();
    let mut bench = Bench::parse(&bench_ram, "stats=0");
    bench.activate().unwrap();
    let first = bench.add_readable(2, &stat(4, 1));
    bench.add_readable(2, &stat(4, 2));
    bench.notify(2);
    assert_eq!(bench.used_count(2), 1);
    assert_eq!(bench.used(2, 0).0, u32::from(first));
    assert_eq!(
        bench.balloon.statistics().unwrap().stats.free_memory,
        Some(2)
    );
}

#[test]
fn statistics_calls_fail_clearly_without_the_feature() {
    let bench_ram = ram();
    let mut bench = Bench::parse(&bench_ram, "page-reporting");
    assert_eq!(bench.balloon.statistics(), Err(BalloonError::StatsDisabled));
    assert_eq!(
        bench.balloon.set_stats_interval(1),
        Err(BalloonError::StatsDisabled)
    );
    let bench2_ram = ram();
    let mut bench2 = Bench::parse(&bench2_ram, "stats");
    assert_eq!(
        bench2.balloon.set_stats_interval(MAX_STATS_INTERVAL_S + 1),
        Err(BalloonError::IntervalTooLarge(
            u64::from(MAX_STATS_INTERVAL_S) + 1
        ))
    );
    assert_eq!(bench2.balloon.info().stats_interval_s, 1);
}

// ---- free page reporting ----

#[test]
fn reported_ranges_are_freed_and_every_chain_returned() {
    let bench_ram = ram();
    let mut bench = Bench::parse(&bench_ram, "page-reporting");
    bench.activate().unwrap();
    bench.fill(DATA_AREA, 8 * MIB, 0x61);
    bench.add_chain(
        2,
        &[
            Desc::Write(DATA_AREA, 2 * MIB as u32),
            Desc::Write(DATA_AREA + 4 * MIB, 2 * MIB as u32),
        ],
    );
    bench.add_chain(2, &[Desc::Write(DATA_AREA + 6 * MIB, 2 * MIB as u32)]);
    let before = resident_bytes(bench.mem);
    bench.notify(2);
    let after = resident_bytes(bench.mem);
    assert!(before - after >= 6 * MIB, "resident {before} -> {after}");
    assert!(bench.holds(DATA_AREA, 2 * MIB, 0));
    assert!(bench.holds(DATA_AREA + 2 * MIB, 2 * MIB, 0x61));
    assert!(bench.holds(DATA_AREA + 4 * MIB, 4 * MIB, 0));
    assert_eq!(bench.used_count(2), 2);
    assert_eq!(bench.interrupt.queue(), 1);
    let counters = bench.balloon.counters();
    assert_eq!(counters.reported_bytes, 6 * MIB);
    assert_eq!(counters.discarded_bytes, 6 * MIB);
}

#[test]
fn malformed_reports_free_only_whole_pages_inside_ram() {
    let bench_ram = ram();
    let mut bench = Bench::parse(&bench_ram, "page-reporting");
    bench.activate().unwrap();
    bench.fill(DATA_AREA, 8 * PAGE, 0x62);
    bench.add_chain(
        2,
        &[
            Desc::Read(DATA_AREA, PAGE as u32),
            Desc::Write(DATA_AREA + PAGE + 100, 3 * PAGE as u32),
            Desc::Write(DATA_AREA + 6 * PAGE + 1, 100),
            Desc::Write(GUEST_MEM - PAGE, 2 * PAGE as u32),
            Desc::Write(1 << 40, MIB as u32),
        ],
    );
    bench.notify(2);
    assert_eq!(bench.used_count(2), 1);
    assert!(bench.holds(DATA_AREA, 2 * PAGE, 0x62));
    assert!(bench.holds(DATA_AREA + 2 * PAGE, 2 * PAGE, 0));
    assert!(bench.holds(DATA_AREA + 4 * PAGE, 4 * PAGE, 0x62));
    assert_eq!(bench.balloon.warning_count(Warning::WrongDirection), 1);
    assert_eq!(
        bench.balloon.warning_count(Warning::ReportedRangeUnaligned),
        2
    );
    assert_eq!(bench.balloon.warning_count(Warning::BufferOutsideRam), 2);
}

fn report_one_page(bench: &mut Bench) -> bool {
    bench.fill(DATA_AREA, PAGE, 0xaa);
    let index = bench.index(QueueRole::Reporting);
    let before = bench.used_count(index);
    bench.add_chain(index, &[Desc::Write(DATA_AREA, PAGE as u32)]);
    bench.notify(index);
    assert_eq!(
        bench.used_count(index),
        before + 1,
        "the chain always comes back"
    );
    bench.holds(DATA_AREA, PAGE, 0)
}

#[test]
fn reported_pages_are_kept_when_the_guest_poisons_free_pages() {
    let bench_ram = ram();
    let mut bench = Bench::parse(&bench_ram, "page-reporting,page-poison");
    bench.activate().unwrap();
    bench
        .balloon
        .write_config(12, &0xaaaa_aaaau32.to_le_bytes());
    assert!(bench.balloon.reported_pages_keep_poison());
    assert!(
        !report_one_page(&mut bench),
        "a poisoned free page must not become zeros"
    );
    assert_eq!(bench.balloon.counters().kept_bytes, PAGE);
    // Inflated pages are re-poisoned by the guest when it frees them: still freed.
    bench.fill(DATA_AREA + PAGE, PAGE, 0xaa);
    bench.add_readable(0, &pfn_bytes(&pfns_of(DATA_AREA + PAGE, 1)));
    bench.notify(0);
    assert!(bench.holds(DATA_AREA + PAGE, PAGE, 0));

    // init_on_free: free pages are zeros, exactly what a discard gives.
    let zeroing_ram = ram();
    let mut zeroing = Bench::parse(&zeroing_ram, "page-reporting,page-poison");
    zeroing.activate().unwrap();
    zeroing.balloon.write_config(12, &0u32.to_le_bytes());
    assert!(report_one_page(&mut zeroing));

    // PAGE_POISON offered but not negotiated: the value means nothing.
    let unnegotiated_ram = ram();
    let mut unnegotiated = Bench::parse(&unnegotiated_ram, "page-reporting,page-poison");
    let acked = unnegotiated.balloon.device_features() & !(1 << VIRTIO_BALLOON_F_PAGE_POISON);
    unnegotiated.activate_acking(acked).unwrap();
    unnegotiated
        .balloon
        .write_config(12, &0xaaaa_aaaau32.to_le_bytes());
    assert!(report_one_page(&mut unnegotiated));
}

#[test]
fn a_reporting_queue_under_32_entries_is_refused() {
    let bench_ram = ram();
    let mut bench = Bench::parse(&bench_ram, "stats,page-reporting");
    bench.set_queue_size(3, 16);
    match bench.activate() {
        Err(ActivateError::QueueTooSmall {
            index: 3,
            name: "reporting_vq",
            size: 16,
            min: 32,
        }) => {}
        other => panic!("{other:?}"),
    }
    assert!(!bench.balloon.is_activated());
    bench.set_queue_size(3, 32);
    bench.activate().unwrap();
}

// ---- free page hinting ----

fn send_cmd(bench: &mut Bench, id: u32) {
    let index = bench.index(QueueRole::FreePageHint);
    let addr = bench.buffer(&id.to_le_bytes());
    bench.add_chain(index, &[Desc::Read(addr, 4)]);
    bench.notify(index);
}

fn send_hint(bench: &mut Bench, addr: u64, len: u64) {
    let index = bench.index(QueueRole::FreePageHint);
    bench.add_chain(index, &[Desc::Write(addr, len as u32)]);
    bench.notify(index);
}

#[test]
fn a_hinting_run_frees_hints_of_the_current_command_only() {
    let bench_ram = ram();
    let mut bench = Bench::parse(&bench_ram, "stats,free-page-hint,page-reporting");
    assert_eq!(bench.index(QueueRole::FreePageHint), 3);
    bench.activate().unwrap();
    assert_eq!(
        read_config_u32(&bench.balloon, 8),
        FREE_PAGE_HINT_CMD_ID_STOP
    );
    bench.balloon.start_hinting(false).unwrap();
    assert_eq!(bench.interrupt.config(), 1);
    let id = read_config_u32(&bench.balloon, 8);
    assert!(id >= 2);
    assert_eq!(
        bench.balloon.hinting_status().unwrap(),
        HintingStatus {
            host_cmd: id,
            guest_cmd: None
        }
    );

    bench.fill(DATA_AREA, 12 * MIB, 0x71);
    // A hint before any command ID is not freed.
    send_hint(&mut bench, DATA_AREA, 4 * MIB);
    assert!(bench.holds(DATA_AREA, 4 * MIB, 0x71));
    assert_eq!(bench.balloon.warning_count(Warning::HintWithoutCommand), 1);
    // A stale command ID: its hints are not freed.
    send_cmd(&mut bench, id - 1);
    send_hint(&mut bench, DATA_AREA, 4 * MIB);
    assert!(bench.holds(DATA_AREA, 4 * MIB, 0x71));
    // The current one: freed.
    send_cmd(&mut bench, id);
    send_hint(&mut bench, DATA_AREA + 4 * MIB, 4 * MIB);
    assert!(bench.holds(DATA_AREA + 4 * MIB, 4 * MIB, 0));
    send_cmd(&mut bench, FREE_PAGE_HINT_CMD_ID_STOP);
    assert_eq!(
        bench.balloon.hinting_status().unwrap(),
        HintingStatus {
            host_cmd: id,
            guest_cmd: Some(0)
        }
    );
    assert_eq!(
        bench.interrupt.config(),
        1,
        "no automatic DONE without acknowledge_on_stop"
    );
    // Hints after STOP are not freed.
    send_hint(&mut bench, DATA_AREA + 8 * MIB, 4 * MIB);
    assert!(bench.holds(DATA_AREA + 8 * MIB, 4 * MIB, 0x71));

    bench.balloon.stop_hinting().unwrap();
    assert_eq!(
        read_config_u32(&bench.balloon, 8),
        FREE_PAGE_HINT_CMD_ID_DONE
    );
    assert_eq!(bench.interrupt.config(), 2);
    assert_eq!(bench.used_count(3), 7, "every buffer comes back");
    let counters = bench.balloon.counters();
    assert_eq!(counters.discarded_bytes, 4 * MIB);
    assert_eq!(counters.hinted_bytes, 12 * MIB);
}

#[test]
fn acknowledge_on_stop_sets_done_when_the_guest_finishes() {
    let bench_ram = ram();
    let mut bench = Bench::parse(&bench_ram, "free-page-hint");
    bench.activate().unwrap();
    bench.balloon.start_hinting(true).unwrap();
    let id = bench.balloon.hinting_status().unwrap().host_cmd;
    send_cmd(&mut bench, id);
    bench.fill(DATA_AREA, 4 * MIB, 0x12);
    send_hint(&mut bench, DATA_AREA, 4 * MIB);
    send_cmd(&mut bench, FREE_PAGE_HINT_CMD_ID_STOP);
    assert_eq!(
        read_config_u32(&bench.balloon, 8),
        FREE_PAGE_HINT_CMD_ID_DONE
    );
    assert_eq!(
        bench.interrupt.config(),
        2,
        "start, then the automatic DONE"
    );
    assert!(bench.holds(DATA_AREA, 4 * MIB, 0));
    // In flight after DONE: the guest may be reusing these pages.
    bench.fill(DATA_AREA, 4 * MIB, 0x12);
    send_hint(&mut bench, DATA_AREA, 4 * MIB);
    assert!(bench.holds(DATA_AREA, 4 * MIB, 0x12));
}

#[test]
fn hinting_before_the_driver_runs_is_only_stored() {
    let bench_ram = ram();
    let mut bench = Bench::parse(&bench_ram, "free-page-hint");
    bench.balloon.start_hinting(false).unwrap();
    assert_eq!(bench.interrupt.config(), 0);
    assert_eq!(read_config_u32(&bench.balloon, 8), 2);
}

#[test]
fn malformed_hint_commands_are_skipped() {
    let bench_ram = ram();
    let mut bench = Bench::parse(&bench_ram, "free-page-hint");
    bench.activate().unwrap();
    bench.balloon.start_hinting(true).unwrap();
    let addr = bench.buffer(&[2, 0, 0, 0, 0, 0, 0, 0]);
    bench.add_chain(2, &[Desc::Read(addr, 8)]);
    bench.add_chain(2, &[Desc::Read(GUEST_MEM, 4)]);
    bench.notify(2);
    assert_eq!(bench.balloon.hinting_status().unwrap().guest_cmd, None);
    assert_eq!(bench.balloon.warning_count(Warning::HintCommandLength), 1);
    assert_eq!(bench.balloon.warning_count(Warning::BufferOutsideRam), 1);
    assert_eq!(bench.used_count(2), 2);
}

#[test]
fn hinting_calls_fail_clearly_without_the_feature() {
    let bench_ram = ram();
    let mut bench = Bench::parse(&bench_ram, "stats");
    assert_eq!(
        bench.balloon.start_hinting(true),
        Err(BalloonError::HintingDisabled)
    );
    assert_eq!(
        bench.balloon.hinting_status(),
        Err(BalloonError::HintingDisabled)
    );
    assert_eq!(
        bench.balloon.stop_hinting(),
        Err(BalloonError::HintingDisabled)
    );
}

// ---- target and configuration space ----

#[test]
fn the_initial_size_is_the_first_target_and_must_fit_in_guest_memory() {
    let b = Balloon::new("size=8M".parse().unwrap(), GUEST_MEM).unwrap();
    assert_eq!(b.info().target_pages, 2048);
    assert_eq!(read_config_u32(&b, 0), 2048);
    match Balloon::new("size=64M".parse().unwrap(), GUEST_MEM) {
        Err(BalloonSetupError::Config(BalloonError::TargetTooLarge {
            requested,
            guest_memory,
        })) => assert_eq!((requested, guest_memory), (64 * MIB, GUEST_MEM)),
        other => panic!("{:?}", other.err()),
    }
    let err = Balloon::new("size=64M".parse().unwrap(), GUEST_MEM)
        .err()
        .unwrap();
    assert!(err.to_string().contains(&(64 * MIB).to_string()));
}

#[test]
fn a_new_target_interrupts_only_a_running_driver() {
    let bench_ram = ram();
    let mut bench = Bench::parse(&bench_ram, "");
    bench.balloon.set_target_pages(100).unwrap();
    assert_eq!(bench.interrupt.config(), 0);
    assert_eq!(read_config_u32(&bench.balloon, 0), 100);
    bench.activate().unwrap();
    bench.balloon.set_target_pages(200).unwrap();
    assert_eq!(bench.interrupt.config(), 1);
    assert_eq!(read_config_u32(&bench.balloon, 0), 200);
    assert_eq!(
        bench
            .balloon
            .set_target_pages((GUEST_MEM / PAGE) as u32 + 1),
        Err(BalloonError::TargetTooLarge {
            requested: GUEST_MEM + PAGE,
            guest_memory: GUEST_MEM
        })
    );
    assert_eq!(bench.balloon.info().target_pages, 200);
    assert_eq!(bench.interrupt.config(), 1);
    bench
        .balloon
        .set_target_pages((GUEST_MEM / PAGE) as u32)
        .unwrap();
}

#[test]
fn the_driver_writes_actual_and_poison_val_only() {
    let bench_ram = ram();
    let mut bench = Bench::parse(&bench_ram, "page-poison,size=4M");
    bench.activate().unwrap();
    bench.balloon.write_config(4, &512u32.to_le_bytes());
    bench
        .balloon
        .write_config(12, &0xaaaa_aaaau32.to_le_bytes());
    bench.balloon.write_config(0, &7u32.to_le_bytes());
    bench.balloon.write_config(8, &7u32.to_le_bytes());
    let info = bench.balloon.info();
    assert_eq!(info.actual_pages, 512);
    assert_eq!(info.target_pages, 1024);
    assert_eq!(read_config_u32(&bench.balloon, 8), 0);
    assert_eq!(read_config_u32(&bench.balloon, 12), 0xaaaa_aaaa);
    assert_eq!(bench.balloon.warning_count(Warning::ConfigReadOnlyWrite), 2);
    let mut past = [0xffu8; 4];
    bench.balloon.read_config(16, &mut past);
    assert_eq!(past, [0; 4]);
}

// ---- activation and reset ----

#[test]
fn a_needed_queue_that_is_not_ready_fails_activation() {
    let bench_ram = ram();
    let mut bench = Bench::parse(&bench_ram, "stats");
    let mut queues = bench.queues();
    queues[1] = virtio_queue::Queue::new(256).unwrap();
    let activation = bench.activation(bench.balloon.device_features(), queues);
    match bench.balloon.activate(activation) {
        Err(ActivateError::QueueNotReady {
            index: 1,
            name: "deflateq",
        }) => {}
        other => panic!("{other:?}"),
    }
    let mut queues = bench.queues();
    queues[2] = virtio_queue::Queue::new(256).unwrap();
    let activation = bench.activation(bench.balloon.device_features(), queues);
    match bench.balloon.activate(activation) {
        Err(ActivateError::QueueNotReady {
            index: 2,
            name: "statsq",
        }) => {}
        other => panic!("{other:?}"),
    }
    assert!(!bench.balloon.is_activated());
    assert!(!bench.balloon.info().driver_ready);
}

#[test]
fn a_queue_whose_feature_the_driver_declined_may_stay_unset() {
    // Linux clears REPORTING when it poisons free pages and PAGE_POISON is not offered.
    let bench_ram = ram();
    let mut bench = Bench::parse(&bench_ram, "stats,page-reporting");
    let mut queues = bench.queues();
    queues[3] = virtio_queue::Queue::new(256).unwrap();
    let acked = bench.balloon.device_features() & !(1 << VIRTIO_BALLOON_F_REPORTING);
    let activation = bench.activation(acked, queues);
    bench.balloon.activate(activation).unwrap();
    assert_eq!(bench.balloon.info().acked_features, acked);
    bench.notify(3);
    assert_eq!(bench.balloon.warning_count(Warning::NotifiedUnusedQueue), 1);
    probe(&mut bench, QueueRole::Stats);
}

#[test]
fn activation_checks_the_queue_count() {
    // Rings outside guest RAM are the transport's to refuse: transport_tests.rs.
    let bench_ram = ram();
    let mut bench = Bench::parse(&bench_ram, "stats");
    let mut queues = bench.queues();
    queues.pop();
    let activation = bench.activation(bench.balloon.device_features(), queues);
    assert!(matches!(
        bench.balloon.activate(activation),
        Err(ActivateError::Other(_))
    ));
    assert!(!bench.balloon.is_activated());
}

#[test]
fn reset_forgets_the_run_but_keeps_the_target_and_config() {
    let bench_ram = ram();
    let mut bench = Bench::parse(&bench_ram, "stats=0,free-page-hint,size=4M");
    bench.add_readable(2, &stat(4, 5));
    bench.activate().unwrap();
    bench.notify(2); // the driver's kick from before DRIVER_OK, as the transport replays it
    bench.balloon.set_target_pages(2048).unwrap();
    bench.balloon.write_config(4, &2048u32.to_le_bytes());
    bench.balloon.start_hinting(false).unwrap();
    let id = bench.balloon.hinting_status().unwrap().host_cmd;
    send_cmd(&mut bench, id);
    bench.add_readable(0, &pfn_bytes(&pfns_of(DATA_AREA, 1)));
    bench.notify(0);
    let counters = bench.balloon.counters();

    bench.balloon.reset();
    assert!(!bench.balloon.is_activated());
    let info = bench.balloon.info();
    assert_eq!(info.target_pages, 2048);
    assert_eq!(info.actual_pages, 0);
    assert_eq!(info.acked_features, 0);
    assert_eq!(
        info.config,
        "stats=0,free-page-hint,size=4M".parse().unwrap()
    );
    assert_eq!(
        bench.balloon.hinting_status().unwrap(),
        HintingStatus {
            host_cmd: 0,
            guest_cmd: None
        }
    );
    let s = bench.balloon.statistics().unwrap();
    assert_eq!(s.stats, GuestStats::default());
    assert_eq!(s.last_update_age_ms, None);
    assert_eq!(bench.balloon.counters(), counters);

    let interrupts = bench.interrupt.config();
    bench.balloon.set_target_pages(1000).unwrap();
    assert_eq!(
        bench.interrupt.config(),
        interrupts,
        "no driver, no interrupt"
    );
    bench.notify(0);
    assert_eq!(
        bench
            .balloon
            .warning_count(Warning::NotifiedBeforeActivation),
        1
    );

    // The driver starts again with fresh queues.
    let fresh_ram = ram();
    let mut fresh = Bench::parse(&fresh_ram, "stats=0,free-page-hint,size=4M");
    fresh.balloon = bench.balloon;
    fresh.activate().unwrap();
    probe(&mut fresh, QueueRole::Inflate);
    assert_eq!(read_config_u32(&fresh.balloon, 0), 1000);
}

// ---- a hostile driver ----

#[test]
fn a_looping_chain_ends() {
    let bench_ram = ram();
    let mut bench = Bench::parse(&bench_ram, "");
    bench.activate().unwrap();
    bench.fill(DATA_AREA, PAGE, 0x10);
    let pfns = bench.buffer(&pfn_bytes(&pfns_of(DATA_AREA, 1)));
    // Descriptor 0 chains to itself.
    let looping = virtio_queue::desc::RawDescriptor::from(
        virtio_queue::desc::split::Descriptor::new(pfns, 4, 1, 0),
    );
    bench.mock(0).add_desc_chains(&[looping], 0).unwrap();
    bench.notify(0);
    assert_eq!(bench.used_count(0), 1);
    assert!(bench.holds(DATA_AREA, PAGE, 0));
    assert_eq!(bench.balloon.counters().inflated_pages, 1);
}

#[test]
fn bad_ring_entries_are_skipped_and_the_queue_goes_on() {
    let bench_ram = ram();
    let mut bench = Bench::parse(&bench_ram, "");
    bench.activate().unwrap();
    bench.add_raw_head(0, 300);
    bench.notify(0);
    assert_eq!(bench.used_count(0), 0);
    assert_eq!(bench.balloon.warning_count(Warning::HeadIndexOutOfRange), 1);
    probe(&mut bench, QueueRole::Inflate);

    // An available index far ahead of what the device has seen.
    bench.set_avail_idx(1, 1000);
    bench.notify(1);
    assert_eq!(bench.used_count(1), 0);
    assert_eq!(bench.balloon.warning_count(Warning::AvailRingIndex), 1);
}

#[test]
fn a_huge_pfn_buffer_is_bounded_by_guest_ram() {
    let bench_ram = ram();
    let mut bench = Bench::parse(&bench_ram, "");
    bench.activate().unwrap();
    let addr = bench.buffer(&[0; 16]);
    bench.add_chain(0, &[Desc::Read(addr, u32::MAX)]);
    bench.notify(0);
    assert_eq!(bench.used_count(0), 1);
    // A RAM's worth of PFNs is read, then the rest of the buffer is ignored (before it
    // would run out of RAM).
    assert_eq!(bench.balloon.warning_count(Warning::TooManyPfns), 1);
    assert_eq!(bench.balloon.warning_count(Warning::BufferOutsideRam), 0);
}

#[test]
fn one_inflate_notification_reads_at_most_a_guest_ram_worth_of_pfns() {
    let bench_ram = ram();
    let mut bench = Bench::parse(&bench_ram, "");
    bench.activate().unwrap();
    let ram_pages = (GUEST_MEM / PAGE) as usize;
    let (x, y) = (DATA_AREA, DATA_AREA + PAGE);
    bench.fill(x, 2 * PAGE, 0x5a);
    // As many PFNs as guest RAM has pages (all naming page x), then page y in a second
    // chain of the same notification: y is past what any driver needs to send at once.
    bench.add_readable(0, &pfn_bytes(&vec![(x / PAGE) as u32; ram_pages]));
    bench.add_readable(0, &pfn_bytes(&pfns_of(y, 1)));
    bench.notify(0);
    assert!(bench.holds(x, PAGE, 0));
    assert!(bench.holds(y, PAGE, 0x5a), "read past the bound");
    assert_eq!(bench.used_count(0), 2, "every buffer still goes back");
    assert_eq!(bench.balloon.warning_count(Warning::TooManyPfns), 1);
    // The bound is per notification: y alone goes through.
    bench.add_readable(0, &pfn_bytes(&pfns_of(y, 1)));
    bench.notify(0);
    assert!(bench.holds(y, PAGE, 0));
    assert_eq!(bench.used_count(0), 3);
}

#[test]
fn notifications_for_queues_that_do_not_exist_are_ignored() {
    let bench_ram = ram();
    let mut bench = Bench::parse(&bench_ram, "");
    bench.notify(0);
    bench.activate().unwrap();
    bench.notify(2);
    bench.notify(usize::MAX);
    assert_eq!(
        bench
            .balloon
            .warning_count(Warning::NotifiedBeforeActivation),
        1
    );
    assert_eq!(
        bench.balloon.warning_count(Warning::NotifiedUnknownQueue),
        2
    );
    assert_eq!(bench.interrupt.queue(), 0);
}

/// `count` descriptors of 2 MiB, all naming the same 2 MiB of RAM, in one chain.
fn same_block_everywhere(count: usize) -> Vec<Desc> {
    vec![Desc::Write(DATA_AREA, 2 * MIB as u32); count]
}

#[test]
fn one_reporting_notification_frees_at_most_a_guest_ram_worth_of_bytes() {
    let bench_ram = ram();
    let mut bench = Bench::parse(&bench_ram, "page-reporting");
    bench.activate().unwrap();
    let blocks_in_budget = GUEST_MEM / (2 * MIB);
    // Twice the budget in one chain, then a chain past it.
    bench.add_chain(2, &same_block_everywhere(2 * blocks_in_budget as usize));
    bench.fill(DATA_AREA + 2 * MIB, 2 * MIB, 0x5a);
    bench.add_chain(2, &[Desc::Write(DATA_AREA + 2 * MIB, 2 * MIB as u32)]);
    bench.notify(2);
    let counters = bench.balloon.counters();
    assert_eq!(counters.reported_bytes, GUEST_MEM);
    assert_eq!(counters.discard_calls, blocks_in_budget);
    assert!(
        bench.holds(DATA_AREA + 2 * MIB, 2 * MIB, 0x5a),
        "freed past the budget"
    );
    assert_eq!(bench.used_count(2), 2, "every chain still goes back");
    assert_eq!(bench.interrupt.queue(), 1);
    assert_eq!(
        bench.balloon.warning_count(Warning::FreeRangesOverBudget),
        1
    );
    // The budget is per notification: the next one is served.
    bench.add_chain(2, &[Desc::Write(DATA_AREA + 2 * MIB, 2 * MIB as u32)]);
    bench.notify(2);
    assert!(bench.holds(DATA_AREA + 2 * MIB, 2 * MIB, 0));
    assert_eq!(bench.used_count(2), 3);
    assert_eq!(bench.balloon.counters().reported_bytes, GUEST_MEM + 2 * MIB);
}

#[test]
fn huge_and_looping_reports_are_cut_by_the_budget() {
    let bench_ram = ram();
    let mut bench = Bench::parse(&bench_ram, "page-reporting");
    bench.activate().unwrap();
    // 4 GiB from inside RAM: only a RAM's worth counts, and what lies outside RAM is
    // skipped.
    bench.add_chain(2, &[Desc::Write(DATA_AREA, u32::MAX)]);
    bench.notify(2);
    let counters = bench.balloon.counters();
    assert_eq!(counters.reported_bytes, GUEST_MEM);
    assert_eq!(counters.discarded_bytes, GUEST_MEM - DATA_AREA);
    assert_eq!(bench.used_count(2), 1);
    assert_eq!(bench.balloon.warning_count(Warning::BufferOutsideRam), 1);

    // A descriptor that chains to itself yields a queue's worth of the same 2 MiB
    // (virtio-queue stops a chain there), eight times the budget.
    let looping = virtio_queue::desc::RawDescriptor::from(
        virtio_queue::desc::split::Descriptor::new(DATA_AREA, 2 * MIB as u32, 1 | 2, 1),
    );
    bench.mock(2).add_desc_chains(&[looping], 1).unwrap();
    bench.notify(2);
    let counters = bench.balloon.counters();
    assert_eq!(counters.reported_bytes, 2 * GUEST_MEM);
    assert_eq!(bench.used_count(2), 2);
    assert_eq!(
        bench.balloon.warning_count(Warning::FreeRangesOverBudget),
        2
    );
}

#[test]
fn one_hinting_notification_takes_at_most_a_guest_ram_worth_of_bytes_but_every_command() {
    let bench_ram = ram();
    let mut bench = Bench::parse(&bench_ram, "free-page-hint");
    bench.activate().unwrap();
    bench.balloon.start_hinting(true).unwrap();
    let id = bench.balloon.hinting_status().unwrap().host_cmd;
    send_cmd(&mut bench, id);
    // In one notification: hints of twice guest RAM, then the guest's STOP.
    let blocks = 2 * GUEST_MEM / (2 * MIB);
    bench.add_chain(2, &same_block_everywhere(blocks as usize));
    let stop = bench.buffer(&FREE_PAGE_HINT_CMD_ID_STOP.to_le_bytes());
    bench.add_chain(2, &[Desc::Read(stop, 4)]);
    bench.notify(2);
    let counters = bench.balloon.counters();
    assert_eq!(counters.hinted_bytes, GUEST_MEM);
    assert_eq!(counters.discard_calls, GUEST_MEM / (2 * MIB));
    assert_eq!(
        bench.balloon.warning_count(Warning::FreeRangesOverBudget),
        1
    );
    // The STOP past the budget still ended the run, so the guest gets its DONE.
    assert_eq!(
        read_config_u32(&bench.balloon, 8),
        FREE_PAGE_HINT_CMD_ID_DONE
    );
    assert_eq!(
        bench.interrupt.config(),
        2,
        "start, then the automatic DONE"
    );
    assert_eq!(bench.used_count(2), 3, "every buffer comes back");
}

#[test]
fn buffers_whose_address_plus_length_wraps_are_skipped_on_every_queue() {
    let bench_ram = ram();
    let mut bench = Bench::parse(&bench_ram, "stats=0,free-page-hint,page-reporting");
    bench.activate().unwrap();
    let near_top = u64::MAX - 0xfff;
    for role in [
        QueueRole::Inflate,
        QueueRole::Deflate,
        QueueRole::Stats,
        QueueRole::FreePageHint,
        QueueRole::Reporting,
    ] {
        let index = bench.index(role);
        let desc = match role {
            QueueRole::Inflate | QueueRole::Deflate | QueueRole::Stats => {
                Desc::Read(near_top, 0x2000)
            }
            QueueRole::FreePageHint | QueueRole::Reporting => Desc::Write(near_top, 0x2000),
        };
        bench.add_chain(index, &[desc]);
        if role == QueueRole::FreePageHint {
            // A command ID that wraps too.
            bench.add_chain(index, &[Desc::Read(u64::MAX - 1, 4)]);
        }
        bench.notify(index);
        let expected = if role == QueueRole::FreePageHint {
            2
        } else {
            1
        };
        assert_eq!(bench.used_count(index), expected, "{role:?}");
    }
    let counters = bench.balloon.counters();
    assert_eq!(counters.inflated_pages, 0);
    assert_eq!(counters.reported_bytes, 0);
    assert_eq!(counters.hinted_bytes, 0);
    assert_eq!(counters.discard_calls, 0);
    assert_eq!(bench.balloon.statistics().unwrap().last_update_age_ms, None);
    assert_eq!(bench.balloon.hinting_status().unwrap().guest_cmd, None);
}

#[test]
fn counters_stop_at_the_top_instead_of_wrapping() {
    let bench_ram = ram();
    let mut bench = Bench::parse(&bench_ram, "stats=0,free-page-hint,page-reporting");
    bench.activate().unwrap();
    let near_top = QueueCounters {
        notifications: u64::MAX,
        buffers: u64::MAX - 1,
        interrupts: u64::MAX,
        ..Default::default()
    };
    let top = BalloonCounters {
        inflated_pages: u64::MAX,
        deflated_pages: u64::MAX - 1,
        reported_bytes: u64::MAX - PAGE,
        hinted_bytes: u64::MAX,
        discarded_bytes: u64::MAX - 1,
        inflate_discarded_bytes: u64::MAX - PAGE,
        reporting_discarded_bytes: u64::MAX - 1,
        hinting_discarded_bytes: u64::MAX,
        kept_bytes: u64::MAX,
        discard_calls: u64::MAX,
        discard_failures: u64::MAX,
        stats_updates: u64::MAX,
        config_interrupts: u64::MAX,
        queues: [near_top; 5],
    };
    bench.balloon.set_counters(top);
    probe(&mut bench, QueueRole::Inflate);
    // Deflating four pages (deflateq is queue 1).
    bench.add_readable(1, &pfn_bytes(&pfns_of(DATA_AREA, 4)));
    bench.notify(1);
    probe(&mut bench, QueueRole::Stats);
    probe(&mut bench, QueueRole::Reporting);
    probe(&mut bench, QueueRole::FreePageHint);
    let counters = bench.balloon.counters();
    let at_top = QueueCounters {
        notifications: u64::MAX,
        buffers: u64::MAX,
        interrupts: u64::MAX,
        ..Default::default()
    };
    let mut queues = [at_top; 5];
    for (slot, queue) in queues.iter_mut().enumerate() {
        // The time of each notification is counted too (its own saturation is tested in
        // metrics::histogram); the rest must sit at the top.
        queue.processing = counters.queues[slot].processing;
    }
    // statsq gave back no buffer: the device keeps it.
    queues[QueueRole::Stats.slot()].buffers = u64::MAX - 1;
    assert_eq!(
        counters,
        BalloonCounters {
            inflated_pages: u64::MAX,
            deflated_pages: u64::MAX,
            reported_bytes: u64::MAX,
            hinted_bytes: u64::MAX,
            discarded_bytes: u64::MAX,
            inflate_discarded_bytes: u64::MAX,
            reporting_discarded_bytes: u64::MAX,
            hinting_discarded_bytes: u64::MAX,
            kept_bytes: u64::MAX,
            discard_calls: u64::MAX,
            discard_failures: u64::MAX,
            stats_updates: u64::MAX,
            config_interrupts: u64::MAX,
            queues,
        }
    );
    assert_eq!(counters.queue(QueueRole::Inflate).processing.count(), 1);
}
