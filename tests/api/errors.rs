//! What the server refuses, with which status and message, and that a refusal changes
//! nothing.

use std::io::{Read, Write};

use vmm::devices::virtio::balloon::BalloonFeatures;

use crate::common::http::{exchange, read_answer, server_closed};
use crate::harness::Harness;
use crate::model::all_features;

/// Method, path, body, the status it gets and words its message must contain.
type BadRequest<'a> = (&'a str, &'a str, Option<&'a str>, u16, &'a [&'a str]);

#[test]
fn bad_requests_are_refused_with_a_json_fault_and_change_nothing() {
    let h = Harness::new(Some(all_features()));
    h.balloon().update(|state| state.target_pages = 77);
    let before = h.balloon().state();

    #[rustfmt::skip]
    let cases: &[BadRequest] = &[
        ("PATCH", "/balloon", Some(r#"{"amount_mib": 5"#), 400, &["invalid JSON"]),
        ("PATCH", "/balloon", Some("amount_mib=5"), 400, &["invalid JSON", "object"]),
        ("PATCH", "/balloon", Some(r#"{"amount_mib": 5, "deflate": 1}"#), 400, &["unknown field `deflate`"]),
        ("PATCH", "/balloon", Some(r#"{"amount_mib": "512"}"#), 400, &["amount_mib", "\"512\""]),
        ("PATCH", "/balloon", Some(r#"{"amount_mib": -1}"#), 400, &["amount_mib", "-1"]),
        ("PATCH", "/balloon", Some(r#"{"amount_mib": 1.5}"#), 400, &["amount_mib", "1.5"]),
        ("PATCH", "/balloon", Some(r#"{"amount_mib": 4294967296}"#), 400, &["amount_mib", "4294967296"]),
        ("PATCH", "/balloon", Some(r#"{"amount_mib": null}"#), 400, &["amount_mib", "null"]),
        ("PATCH", "/balloon", Some(r#"{"amount_mib": 2049}"#), 400, &["amount_mib 2049", "larger than guest memory"]),
        ("PATCH", "/balloon", Some(r#"{"amount_mib": 4294967295}"#), 400, &["4294967295", "larger than guest memory"]),
        ("PATCH", "/balloon", Some("{}"), 400, &["missing field `amount_mib`"]),
        ("PATCH", "/balloon", Some("[512]"), 400, &["JSON object"]),
        ("PATCH", "/balloon", Some(r#"{"amount_mib": 5} {}"#), 400, &["trailing"]),
        ("PATCH", "/balloon", Some(r#"{"amount_mib": 5, "amount_mib": 6}"#), 400, &["duplicate field"]),
        ("PATCH", "/balloon", Some(""), 400, &["needs a JSON body"]),
        ("PATCH", "/balloon/statistics", Some(r#"{"stats_polling_interval_s": -5}"#), 400, &["stats_polling_interval_s", "-5"]),
        ("PATCH", "/balloon/statistics", Some(r#"{"stats_polling_interval_s": 100000}"#), 400, &["100000"]),
        ("PATCH", "/balloon/statistics", Some(r#"{"amount_mib": 5}"#), 400, &["unknown field `amount_mib`"]),
        ("PATCH", "/balloon/hinting/start", Some(r#"{"acknowledge_on_stop": "yes"}"#), 400, &["acknowledge_on_stop", "yes"]),
        ("PATCH", "/balloon/hinting/start", Some("[true]"), 400, &["JSON object"]),
        ("PATCH", "/balloon/hinting/stop", Some(r#"{"now": true}"#), 400, &["unknown field `now`"]),
        ("PUT", "/actions", Some(r#"{"action_type": "Reboot"}"#), 400, &["Reboot", "Shutdown", "SendCtrlAltDel"]),
        ("PATCH", "/vm", Some(r#"{"state": "Running"}"#), 400, &["Running", "Paused", "Resumed"]),
        ("PATCH", "/vm", Some(r#"{"state": "Paused", "vcpus": 1}"#), 400, &["unknown field `vcpus`"]),
        ("PATCH", "/vm", Some("{}"), 400, &["missing field `state`"]),
        ("PATCH", "/vm", Some(""), 400, &["needs a JSON body like {\"state\": \"Paused\"}"]),
        ("PUT", "/actions", Some("{}"), 400, &["missing field `action_type`"]),
        ("GET", "/nowhere", None, 404, &["/nowhere", "GET /vm"]),
        ("GET", "/balloon/", None, 404, &["/balloon/"]),
        ("GET", "/balloon/hinting", None, 404, &["/balloon/hinting"]),
        ("DELETE", "/balloon", None, 405, &["DELETE", "GET, PATCH"]),
        ("PUT", "/balloon", Some(r#"{"amount_mib": 5}"#), 405, &["PUT"]),
        ("POST", "/vm", Some("{}"), 405, &["POST"]),
        ("GET", "/actions", None, 405, &["GET", "PUT"]),
        ("PATCH", "/actions", Some(r#"{"action_type": "Shutdown"}"#), 405, &["PATCH"]),
    ];
    for (method, path, body, status, words) in cases {
        let answer = h.request(method, path, *body);
        assert_eq!(
            answer.status,
            *status,
            "{method} {path} {body:?}: {}",
            answer.text()
        );
        let message = answer.fault();
        for word in *words {
            assert!(
                message.contains(word),
                "{method} {path} {body:?}: {message:?} does not mention {word:?}"
            );
        }
    }
    let not_allowed = h.request("DELETE", "/balloon", None);
    assert_eq!(not_allowed.header("allow"), Some("GET, PATCH"));

    assert_eq!(h.balloon().state(), before);
    assert_eq!(h.balloon().changes(), Vec::<String>::new());
    assert_eq!(h.vm.shutdowns(), 0);
    assert!(!h.vm.is_paused());
    assert_eq!(h.vm.ctrl_alt_dels(), 0);
}

#[test]
fn requests_the_vm_cannot_carry_out_now_are_refused_with_409() {
    let h = Harness::new(None);
    h.vm.fill_keyboard();
    let keys = h.request(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "SendCtrlAltDel"}"#),
    );
    assert_eq!(keys.status, 409);
    assert!(
        keys.fault().contains("not reading its keyboard"),
        "{}",
        keys.text()
    );

    assert_eq!(
        h.request("PUT", "/actions", Some(r#"{"action_type": "Shutdown"}"#))
            .status,
        204
    );
    for body in [r#"{"state": "Paused"}"#, r#"{"state": "Resumed"}"#] {
        let answer = h.request("PATCH", "/vm", Some(body));
        assert_eq!(answer.status, 409, "{body}: {}", answer.text());
        assert_eq!(answer.fault(), "the VM is stopping");
    }
    assert!(!h.vm.is_paused());
    assert_eq!(h.vm.ctrl_alt_dels(), 0);
}

#[test]
fn head_is_refused_without_a_body() {
    let h = Harness::new(None);
    let (mut stream, mut text) = (h.connect(), Vec::new());
    stream
        .write_all(b"HEAD /vm HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    stream.read_to_end(&mut text).unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(text.starts_with("HTTP/1.1 405 "), "{text}");
    assert!(text.contains("Allow: GET, PATCH\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "{text}");
}

#[test]
fn statistics_routes_are_refused_when_statistics_are_off() {
    let features = BalloonFeatures {
        stats: false,
        ..all_features()
    };
    let h = Harness::new(Some(features));
    let before = h.balloon().state();
    for (method, body) in [
        ("GET", None),
        ("PATCH", Some(r#"{"stats_polling_interval_s": 3}"#)),
    ] {
        let answer = h.request(method, "/balloon/statistics", body);
        assert_eq!(answer.status, 400);
        assert!(answer.fault().contains("--balloon stats"));
    }
    assert_eq!(h.balloon().state(), before);
    assert!(h.balloon().changes().is_empty());
}

#[test]
fn hinting_routes_are_refused_when_hinting_is_off() {
    let features = BalloonFeatures {
        free_page_hint: false,
        ..all_features()
    };
    let h = Harness::new(Some(features));
    for (method, path) in [
        ("PATCH", "/balloon/hinting/start"),
        ("GET", "/balloon/hinting/status"),
        ("PATCH", "/balloon/hinting/stop"),
    ] {
        let body = (method == "PATCH").then_some("{}");
        let answer = h.request(method, path, body);
        assert_eq!(answer.status, 400, "{method} {path}");
        assert!(answer.fault().contains("free-page-hint"));
    }
    assert!(h.balloon().changes().is_empty());
}

#[test]
fn balloon_routes_answer_409_without_a_balloon() {
    let h = Harness::new(None);
    let routes = [
        ("GET", "/balloon", None),
        ("PATCH", "/balloon", Some(r#"{"amount_mib": 1}"#)),
        ("GET", "/balloon/statistics", None),
        (
            "PATCH",
            "/balloon/statistics",
            Some(r#"{"stats_polling_interval_s": 1}"#),
        ),
        ("PATCH", "/balloon/hinting/start", Some("{}")),
        ("GET", "/balloon/hinting/status", None),
        ("PATCH", "/balloon/hinting/stop", None),
    ];
    for (method, path, body) in routes {
        let answer = h.request(method, path, body);
        assert_eq!(answer.status, 409, "{method} {path}");
        assert!(answer.fault().contains("no balloon"));
    }
    assert_eq!(h.request("GET", "/vm", None).status, 200);
}

#[test]
fn a_body_over_the_limit_is_refused_with_413() {
    let h = Harness::new(Some(all_features()));
    let padding = " ".repeat(100_000);
    let body = format!(r#"{{"amount_mib": 5{padding}}}"#);
    let mut stream = h.connect();
    let head = format!(
        "PATCH /balloon HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    // The server may answer and close before taking the whole body.
    let _ = stream.write_all(body.as_bytes());
    let answer = read_answer(&mut stream, &mut Vec::new());
    assert_eq!(answer.status, 413);
    assert!(answer.fault().contains("larger than the limit"));
    assert!(answer.closes());
    assert!(server_closed(&mut stream));
    assert!(h.balloon().changes().is_empty());
    // The server goes on serving.
    assert_eq!(h.request("GET", "/vm", None).status, 200);

    // A length too large even to hold in a machine word is over the limit all the same.
    let mut stream = h.connect();
    stream
        .write_all(
            b"PATCH /balloon HTTP/1.1\r\nHost: localhost\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        )
        .unwrap();
    let answer = read_answer(&mut stream, &mut Vec::new());
    assert_eq!(answer.status, 413);
    assert!(answer
        .fault()
        .contains("99999999999999999999999 bytes is larger than the limit"));
    assert!(h.balloon().changes().is_empty());
}

#[test]
fn headers_over_the_limit_are_refused_with_431() {
    let h = Harness::new(None);
    let mut stream = h.connect();
    let huge = format!(
        "GET /vm HTTP/1.1\r\nHost: localhost\r\nX-Padding: {}\r\n",
        "a".repeat(20_000)
    );
    let _ = stream.write_all(huge.as_bytes());
    let answer = read_answer(&mut stream, &mut Vec::new());
    assert_eq!(answer.status, 431);
    assert!(answer.closes());
    answer.fault();
}

#[test]
fn patch_without_content_length_is_refused_with_411() {
    let h = Harness::new(Some(all_features()));
    let (answer, mut stream) = exchange(
        &h.socket,
        b"PATCH /balloon HTTP/1.1\r\nHost: localhost\r\n\r\n{\"amount_mib\": 512}",
    );
    assert_eq!(answer.status, 411);
    assert!(answer.fault().contains("Content-Length"));
    assert!(answer.closes());
    // The body it could not delimit is not taken for another request.
    assert!(server_closed(&mut stream));
    assert!(h.balloon().changes().is_empty());
}

#[test]
fn chunked_bodies_are_refused_with_411() {
    let h = Harness::new(Some(all_features()));
    let (answer, mut stream) = exchange(
        &h.socket,
        b"PATCH /balloon HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n13\r\n{\"amount_mib\": 512}\r\n0\r\n\r\n",
    );
    assert_eq!(answer.status, 411);
    assert!(answer.fault().contains("Transfer-Encoding"));
    assert!(server_closed(&mut stream));
    assert!(h.balloon().changes().is_empty());
}

#[test]
fn malformed_http_is_refused_with_400_and_the_connection_closed() {
    let h = Harness::new(Some(all_features()));
    for raw in [
        &b"THIS IS NOT HTTP\r\n\r\n"[..],
        b"GET /vm HTTP/1.1\r\nContent-Length: many\r\n\r\n",
        b"PATCH /balloon HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n{}",
    ] {
        let (answer, mut stream) = exchange(&h.socket, raw);
        assert_eq!(answer.status, 400, "{}", String::from_utf8_lossy(raw));
        answer.fault();
        assert!(server_closed(&mut stream));
    }
    assert!(h.balloon().changes().is_empty());
}
