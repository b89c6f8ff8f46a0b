//! `GET /metrics` and `vmm ctl metrics` over the model VM: the text format, what the
//! balloon's counters become, the API's own request counts, and `promtool check metrics`
//! on all of it.

use std::time::Duration;

use vmm::devices::virtio::balloon::layout::QueueRole;
use vmm::devices::virtio::balloon::BalloonCounters;

use crate::common::promtool;
use crate::harness::Harness;
use crate::model::{all_features, every_stat};

const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Counters as a guest that used every path would leave them.
fn busy_counters() -> BalloonCounters {
    let mut counters = BalloonCounters {
        inflated_pages: 1000,
        deflated_pages: 10,
        reported_bytes: 4 << 20,
        hinted_bytes: 8 << 20,
        discarded_bytes: 15 << 20,
        inflate_discarded_bytes: 3 << 20,
        reporting_discarded_bytes: 4 << 20,
        hinting_discarded_bytes: 8 << 20,
        kept_bytes: 4096,
        discard_calls: 7,
        discard_failures: 1,
        stats_updates: 3,
        config_interrupts: 2,
        ..Default::default()
    };
    for (i, role) in QueueRole::ALL.into_iter().enumerate() {
        let queue = &mut counters.queues[i];
        assert_eq!(i, role as usize);
        queue.notifications = 5 + i as u64;
        queue.buffers = 4;
        queue.interrupts = 3;
        queue.processing.observe(Duration::from_micros(40));
        queue.processing.observe(Duration::from_millis(3));
    }
    counters
}

fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

#[test]
fn metrics_are_served_as_prometheus_text() {
    let h = Harness::new(Some(all_features()));
    h.balloon().update(|state| {
        state.target_pages = 131_072;
        state.actual_pages = 65_536;
        state.stats.free_memory = Some(123 << 20);
        state.counters = busy_counters();
    });
    let answer = h.request("GET", "/metrics", None);
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.header("content-type"), Some(TEXT_FORMAT));
    let text = answer.text();
    for line in [
        "vmm_balloon_target_bytes 536870912",
        "vmm_balloon_actual_bytes 268435456",
        "vmm_balloon_driver_ready 1",
        "vmm_balloon_inflated_bytes_total 4096000",
        "vmm_balloon_deflated_bytes_total 40960",
        "vmm_balloon_reported_bytes_total 4194304",
        "vmm_balloon_hinted_bytes_total 8388608",
        "vmm_balloon_discarded_bytes_total{path=\"inflate\"} 3145728",
        "vmm_balloon_discarded_bytes_total{path=\"reporting\"} 4194304",
        "vmm_balloon_discarded_bytes_total{path=\"hinting\"} 8388608",
        "vmm_balloon_kept_bytes_total 4096",
        "vmm_balloon_discard_calls_total 7",
        "vmm_balloon_discard_failures_total 1",
        "vmm_balloon_statistics_updates_total 3",
        "vmm_balloon_config_interrupts_total 2",
        "vmm_balloon_queue_notifications_total{queue=\"inflateq\"} 5",
        "vmm_balloon_queue_notifications_total{queue=\"reporting_vq\"} 9",
        "vmm_balloon_queue_interrupts_total{queue=\"statsq\"} 3",
        "vmm_balloon_queue_buffers_total{queue=\"free_page_vq\"} 4",
        "vmm_balloon_queue_processing_seconds_bucket{queue=\"inflateq\",le=\"0.00005\"} 1",
        "vmm_balloon_queue_processing_seconds_bucket{queue=\"inflateq\",le=\"+Inf\"} 2",
        "vmm_balloon_queue_processing_seconds_count{queue=\"deflateq\"} 2",
        "vmm_balloon_guest_free_memory_bytes 128974848",
    ] {
        assert!(has_line(&text, line), "no line {line:?} in\n{text}");
    }
    assert!(text.contains("\nvmm_uptime_seconds "), "{text}");
    assert!(text.contains("\nprocess_resident_memory_bytes "), "{text}");
    // A statistic the guest has not sent has no gauge.
    assert!(
        !text.contains("vmm_balloon_guest_total_memory_bytes"),
        "{text}"
    );
}

#[test]
fn metrics_answer_only_get() {
    let h = Harness::new(None);
    for method in ["PUT", "PATCH", "POST", "DELETE"] {
        let answer = h.request(method, "/metrics", Some("{}"));
        assert_eq!(answer.status, 405, "{method}: {}", answer.text());
        assert_eq!(answer.header("allow"), Some("GET"), "{method}");
        assert!(answer.fault().contains("/metrics"), "{method}");
    }
}

#[test]
fn without_a_balloon_the_balloon_metrics_are_absent() {
    let h = Harness::new(None);
    let answer = h.request("GET", "/metrics", None);
    assert_eq!(answer.status, 200);
    let text = answer.text();
    assert!(!text.contains("vmm_balloon_"), "{text}");
    assert!(text.contains("# TYPE vmm_uptime_seconds gauge\n"), "{text}");
    promtool::check_metrics(&text).unwrap();
}

#[test]
fn api_requests_are_counted_by_route_method_and_status() {
    let h = Harness::new(Some(all_features()));
    h.request("GET", "/vm", None);
    h.request("GET", "/vm", None);
    h.request("PATCH", "/balloon", Some("{\"amount_mib\": 1}"));
    h.request("PATCH", "/balloon", Some("{\"amount_mb\": 1}"));
    h.request("GET", "/no/such/path\"", None);
    h.request("BREW", "/vm", None);
    let text = h.request("GET", "/metrics", None).text();
    for line in [
        "vmm_api_requests_total{route=\"/vm\",method=\"GET\",status=\"200\"} 2",
        "vmm_api_requests_total{route=\"/balloon\",method=\"PATCH\",status=\"204\"} 1",
        "vmm_api_requests_total{route=\"/balloon\",method=\"PATCH\",status=\"400\"} 1",
        "vmm_api_requests_total{route=\"unknown\",method=\"GET\",status=\"404\"} 1",
        "vmm_api_requests_total{route=\"/vm\",method=\"other\",status=\"405\"} 1",
    ] {
        assert!(has_line(&text, line), "no line {line:?} in\n{text}");
    }
    // The scrape that made this text is counted once it is answered.
    let again = h.request("GET", "/metrics", None).text();
    assert!(has_line(
        &again,
        "vmm_api_requests_total{route=\"/metrics\",method=\"GET\",status=\"200\"} 1"
    ));
}

#[test]
fn promtool_accepts_the_metrics_of_a_busy_vm() {
    let h = Harness::new(Some(all_features()));
    h.balloon().update(|state| {
        state.stats = every_stat();
        state.counters = busy_counters();
        state.counters.inflated_pages = u64::MAX;
    });
    h.request("GET", "/nowhere", None);
    h.request("PATCH", "/balloon", Some("{\"amount_mib\": 99999999}"));
    let text = h.request("GET", "/metrics", None).text();
    assert!(
        text.contains("vmm_balloon_guest_direct_reclaim_pages 16\n"),
        "{text}"
    );
    if let Err(problems) = promtool::check_metrics(&text) {
        panic!("{problems}\nin\n{text}");
    }
}
