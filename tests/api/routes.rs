//! What every route does when it is asked right.

use serde_json::json;

use vmm::memory::MemoryBacking;
use vmm::size::GIB;

use crate::common::http::{exchange, keys};
use crate::common::PAGES_PER_MIB;
use crate::harness::Harness;
use crate::model::{all_features, every_stat, GUEST_MEMORY, MODEL_ID};

#[test]
fn get_vm_reports_the_vm_and_whether_a_balloon_is_attached() {
    let h = Harness::new(Some(all_features()));
    let answer = h.request("GET", "/vm", None);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(
        answer.json(),
        json!({"id": MODEL_ID, "vcpus": 2, "memory_mib": 2048, "state": "Running",
               "uptime_ms": 12345, "balloon_attached": true})
    );
    let bare = Harness::new(None);
    assert_eq!(
        bare.request("GET", "/vm", None).json()["balloon_attached"],
        json!(false)
    );
}

/// `GET /` and `GET /machine-config` answer in Firecracker's shapes (`InstanceInfo`,
/// `MachineConfiguration`), whether or not a balloon is attached.
#[test]
fn firecrackers_read_routes_answer_in_its_shapes() {
    for features in [Some(all_features()), None] {
        let h = Harness::new(features);
        let answer = h.request("GET", "/", None);
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("content-type"), Some("application/json"));
        assert_eq!(
            answer.json(),
            json!({"id": MODEL_ID, "state": "Running",
                   "vmm_version": env!("CARGO_PKG_VERSION"), "app_name": "vmm"})
        );
        let answer = h.request("GET", "/machine-config", None);
        assert_eq!(answer.status, 200);
        assert_eq!(
            answer.json(),
            json!({"vcpu_count": 2, "mem_size_mib": GUEST_MEMORY / (1 << 20)})
        );
    }
    // The state follows the VM, as GET /vm's does.
    let h = Harness::new(None);
    let answer = h.request("PUT", "/actions", Some(r#"{"action_type": "Shutdown"}"#));
    assert_eq!(answer.status, 204);
    assert_eq!(h.request("GET", "/", None).json()["state"], "Stopping");
}

#[test]
fn get_balloon_reports_target_actual_and_features() {
    let h = Harness::new(Some(all_features()));
    // Sizes that are not whole MiB round down.
    h.balloon().update(|state| {
        state.target_pages = 512 * PAGES_PER_MIB + 100;
        state.actual_pages = 3 * PAGES_PER_MIB + 255;
    });
    let answer = h.request("GET", "/balloon", None);
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.json(),
        json!({
            "amount_mib": 512, "actual_mib": 3, "deflate_on_oom": true,
            "stats_polling_interval_s": 5, "statistics": true, "free_page_reporting": true,
            "free_page_hinting": true, "page_poison": false, "must_tell_host": true,
            "driver_ready": true, "memory_backing": "anon", "host_page_size_kib": 4,
            "partial_huge_pages": 0
        })
    );
}

#[test]
fn get_balloon_shows_the_backing_and_partly_ballooned_huge_pages() {
    let h = Harness::new(Some(all_features()));
    h.balloon().update(|state| {
        state.memory_backing = MemoryBacking::Hugetlb;
        state.partial_huge_pages = 17;
    });
    let balloon = h.request("GET", "/balloon", None).json();
    assert_eq!(balloon["memory_backing"], "hugetlb");
    assert_eq!(balloon["host_page_size_kib"], 2048);
    assert_eq!(balloon["partial_huge_pages"], 17);
}

#[test]
fn patch_balloon_sets_the_target_in_pages() {
    let h = Harness::new(Some(all_features()));
    let answer = h.request("PATCH", "/balloon", Some(r#"{"amount_mib": 512}"#));
    assert_eq!(answer.status, 204);
    assert!(answer.body.is_empty());
    assert_eq!(h.balloon().state().target_pages, 512 * PAGES_PER_MIB);
    assert_eq!(h.request("GET", "/balloon", None).json()["amount_mib"], 512);

    // All of guest memory is the largest balloon; 0 deflates it.
    assert_eq!(
        h.request("PATCH", "/balloon", Some(r#"{"amount_mib": 2048}"#))
            .status,
        204
    );
    assert_eq!(
        h.request("PATCH", "/balloon", Some(r#"{"amount_mib":0}"#))
            .status,
        204
    );
    assert_eq!(h.balloon().state().target_pages, 0);
    assert_eq!(
        h.balloon().changes(),
        [
            "set_target_pages(131072)",
            "set_target_pages(524288)",
            "set_target_pages(0)"
        ]
    );
}

#[test]
fn statistics_show_the_sizes_and_only_the_stats_the_guest_reported() {
    let h = Harness::new(Some(all_features()));
    h.balloon().update(|state| {
        state.target_pages = 1024;
        state.actual_pages = 700;
        state.stats.free_memory = Some(GIB);
        state.stats.major_faults = Some(42);
        state.stats.oom_kill = Some(0);
        state.last_update_age_ms = Some(1500);
    });
    let answer = h.request("GET", "/balloon/statistics", None);
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.json(),
        json!({
            "target_pages": 1024, "actual_pages": 700, "target_mib": 4, "actual_mib": 2,
            "free_memory": 1073741824u64, "major_faults": 42, "oom_kill": 0,
            "last_update_age_ms": 1500
        })
    );

    h.balloon().update(|state| {
        state.stats = every_stat();
        state.unknown_tags = 3;
    });
    let all = h.request("GET", "/balloon/statistics", None).json();
    assert_eq!(all["total_memory"], GUEST_MEMORY);
    assert_eq!(all["direct_reclaim"], 16);
    assert_eq!(all["unknown_tags"], 3);
    assert_eq!(keys(&all).len(), 4 + 16 + 2);
}

#[test]
fn statistics_of_a_guest_that_never_reported_show_what_is_known() {
    // A guest without a balloon driver: the target is set at once and nothing waits.
    let h = Harness::new(Some(all_features()));
    h.balloon().update(|state| state.driver_ready = false);
    assert_eq!(
        h.request("PATCH", "/balloon", Some(r#"{"amount_mib": 100}"#))
            .status,
        204
    );
    let stats = h.request("GET", "/balloon/statistics", None);
    assert_eq!(stats.status, 200);
    assert_eq!(
        stats.json(),
        json!({"target_pages": 25600, "actual_pages": 0, "target_mib": 100, "actual_mib": 0})
    );
    assert_eq!(
        h.request("GET", "/balloon", None).json()["driver_ready"],
        false
    );
}

#[test]
fn patch_statistics_sets_the_polling_interval() {
    let h = Harness::new(Some(all_features()));
    let answer = h.request(
        "PATCH",
        "/balloon/statistics",
        Some(r#"{"stats_polling_interval_s": 1}"#),
    );
    assert_eq!(answer.status, 204);
    assert_eq!(h.balloon().state().stats_interval_s, 1);
    assert_eq!(
        h.request("GET", "/balloon", None).json()["stats_polling_interval_s"],
        1
    );
    assert_eq!(h.balloon().changes(), ["set_stats_interval(1)"]);
}

#[test]
fn hinting_starts_reports_and_stops() {
    let h = Harness::new(Some(all_features()));
    let status = h.request("GET", "/balloon/hinting/status", None);
    assert_eq!(status.status, 200);
    assert_eq!(status.json(), json!({"host_cmd": 0}));

    // Without a body (curl -X PATCH with no -d), acknowledge_on_stop defaults to true.
    let (started, _) = exchange(
        &h.socket,
        b"PATCH /balloon/hinting/start HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    assert_eq!(started.status, 204);
    assert_eq!(h.balloon().state().acknowledge_on_stop, Some(true));
    assert_eq!(
        h.request(
            "PATCH",
            "/balloon/hinting/start",
            Some(r#"{"acknowledge_on_stop": false}"#)
        )
        .status,
        204
    );
    assert_eq!(h.balloon().state().acknowledge_on_stop, Some(false));

    h.balloon().update(|state| state.guest_cmd = Some(3));
    assert_eq!(
        h.request("GET", "/balloon/hinting/status", None).json(),
        json!({"host_cmd": 3, "guest_cmd": 3})
    );
    let (stopped, _) = exchange(
        &h.socket,
        b"PATCH /balloon/hinting/stop HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    assert_eq!(stopped.status, 204);
    assert_eq!(
        h.request("PATCH", "/balloon/hinting/stop", Some("{}"))
            .status,
        204
    );
    assert_eq!(h.balloon().state().host_cmd, 1);
    assert_eq!(
        h.balloon().changes(),
        [
            "start_hinting(true)",
            "start_hinting(false)",
            "stop_hinting",
            "stop_hinting"
        ]
    );
}

#[test]
fn shutdown_action_asks_the_vm_to_stop() {
    let h = Harness::new(None);
    let answer = h.request("PUT", "/actions", Some(r#"{"action_type": "Shutdown"}"#));
    assert_eq!(answer.status, 204);
    assert_eq!(h.vm.shutdowns(), 1);
    assert_eq!(h.request("GET", "/vm", None).json()["state"], "Stopping");
}

#[test]
fn patch_vm_pauses_and_resumes_and_ctrl_alt_del_reaches_the_guest() {
    let h = Harness::new(Some(all_features()));
    let pause = h.request("PATCH", "/vm", Some(r#"{"state": "Paused"}"#));
    assert_eq!(pause.status, 204, "{}", pause.text());
    assert!(h.vm.is_paused());
    assert_eq!(h.request("GET", "/vm", None).json()["state"], "Paused");
    // The balloon still answers while paused.
    assert_eq!(
        h.request("PATCH", "/balloon", Some(r#"{"amount_mib": 64}"#))
            .status,
        204
    );
    // Keys typed while paused wait for the guest.
    let keys = h.request(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "SendCtrlAltDel"}"#),
    );
    assert_eq!(keys.status, 204, "{}", keys.text());
    assert_eq!(h.vm.ctrl_alt_dels(), 1);
    assert_eq!(
        h.request("PATCH", "/vm", Some(r#"{"state":"Resumed"}"#))
            .status,
        204
    );
    assert!(!h.vm.is_paused());
    assert_eq!(h.request("GET", "/vm", None).json()["state"], "Running");
}

#[test]
fn a_query_string_is_ignored() {
    let h = Harness::new(Some(all_features()));
    assert_eq!(h.request("GET", "/vm?pretty=1", None).status, 200);
}
