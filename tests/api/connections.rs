//! Connections: keep-alive, pipelining, many and slow clients, and the server's limits.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use vmm::api::connection::Connection;
use vmm::api::request_counts::ApiRequestCounters;
use vmm::api::ServerLimits;
use vmm_sys_util::epoll::EventSet;

use crate::common::http::{connect, exchange, http, read_answer, server_closed};
use crate::common::PAGES_PER_MIB;
use crate::harness::Harness;
use crate::model::{all_features, ModelBalloon, ModelVm};

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let h = Harness::new(Some(all_features()));
    let mut stream = h.connect();
    let mut pending = Vec::new();
    for amount in [10, 20, 30] {
        let body = format!(r#"{{"amount_mib": {amount}}}"#);
        stream
            .write_all(http("PATCH", "/balloon", Some(&body)).as_bytes())
            .unwrap();
        let answer = read_answer(&mut stream, &mut pending);
        assert_eq!(answer.status, 204);
        assert!(!answer.closes());
        stream
            .write_all(http("GET", "/balloon", None).as_bytes())
            .unwrap();
        let answer = read_answer(&mut stream, &mut pending);
        assert_eq!(answer.json()["amount_mib"], amount);
    }
    // An error that keeps the framing intact keeps the connection too.
    stream
        .write_all(http("GET", "/nowhere", None).as_bytes())
        .unwrap();
    let answer = read_answer(&mut stream, &mut pending);
    assert_eq!(answer.status, 404);
    assert!(!answer.closes());
    stream
        .write_all(http("GET", "/vm", None).as_bytes())
        .unwrap();
    assert_eq!(read_answer(&mut stream, &mut pending).status, 200);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let h = Harness::new(Some(all_features()));
    let mut stream = h.connect();
    let mut burst = String::new();
    burst.push_str(&http("GET", "/vm", None));
    burst.push_str(&http("PATCH", "/balloon", Some(r#"{"amount_mib": 64}"#)));
    burst.push_str(&http("GET", "/balloon", None));
    burst.push_str(&http("GET", "/nowhere", None));
    burst.push_str(&http("GET", "/balloon/statistics", None));
    stream.write_all(burst.as_bytes()).unwrap();
    let mut pending = Vec::new();
    let statuses: Vec<u16> = (0..5)
        .map(|_| read_answer(&mut stream, &mut pending))
        .map(|answer| {
            if answer.status == 200 && answer.json().get("amount_mib").is_some() {
                assert_eq!(answer.json()["amount_mib"], 64);
            }
            answer.status
        })
        .collect();
    assert_eq!(statuses, [200, 204, 200, 404, 200]);
}

/// More pipelined answers than the server holds back for a slow reader: the requests it
/// held back are answered once the client has read the first ones, with no new input to
/// wake the server (and also when the client has already shut down its sending side).
#[test]
fn a_long_pipeline_is_answered_in_full() {
    let h = Harness::new(Some(all_features()));
    // 800 requests fit in the input limit; their answers are far over the 64 KiB the
    // server lets wait for the client.
    let burst = "GET /vm HTTP/1.1\r\n\r\n".repeat(800);
    for shut_down_writing in [false, true] {
        let mut stream = h.connect();
        stream.write_all(burst.as_bytes()).unwrap();
        if shut_down_writing {
            stream.shutdown(std::net::Shutdown::Write).unwrap();
        }
        let mut pending = Vec::new();
        for n in 0..800 {
            let answer = read_answer(&mut stream, &mut pending);
            assert_eq!(answer.status, 200, "answer {n}");
        }
    }
}

#[test]
fn twenty_clients_at_once_are_all_served() {
    let h = Harness::new(Some(all_features()));
    let clients = 20;
    let barrier = Arc::new(Barrier::new(clients));
    let threads: Vec<_> = (0..clients)
        .map(|client| {
            let socket = h.socket.clone();
            let barrier = barrier.clone();
            thread::spawn(move || {
                let mut stream = connect(&socket);
                barrier.wait();
                let mut pending = Vec::new();
                for round in 0..5 {
                    let body = format!(r#"{{"amount_mib": {}}}"#, client * 10 + round);
                    stream
                        .write_all(http("PATCH", "/balloon", Some(&body)).as_bytes())
                        .unwrap();
                    assert_eq!(read_answer(&mut stream, &mut pending).status, 204);
                    stream
                        .write_all(http("GET", "/balloon/statistics", None).as_bytes())
                        .unwrap();
                    assert_eq!(read_answer(&mut stream, &mut pending).status, 200);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(h.balloon().changes().len(), clients * 5);
}

#[test]
fn a_silent_client_does_not_hold_up_others() {
    let h = Harness::new(Some(all_features()));
    let mut silent = h.connect();
    for _ in 0..3 {
        assert_eq!(h.request("GET", "/vm", None).status, 200);
    }
    // It is served whenever it speaks.
    silent
        .write_all(http("GET", "/vm", None).as_bytes())
        .unwrap();
    assert_eq!(read_answer(&mut silent, &mut Vec::new()).status, 200);
}

#[test]
fn a_half_sent_request_does_not_hold_up_others_and_completes_later() {
    let h = Harness::new(Some(all_features()));
    let mut slow_headers = h.connect();
    slow_headers
        .write_all(b"GET /balloon HTTP/1.1\r\nHost: loc")
        .unwrap();
    let mut slow_body = h.connect();
    slow_body
        .write_all(
            b"PATCH /balloon HTTP/1.1\r\nHost: localhost\r\nContent-Length: 19\r\n\r\n{\"amou",
        )
        .unwrap();

    assert_eq!(h.request("GET", "/vm", None).status, 200);
    assert_eq!(
        h.request("PATCH", "/balloon", Some(r#"{"amount_mib": 1}"#))
            .status,
        204
    );

    slow_body.write_all(b"nt_mib\": 256}").unwrap();
    assert_eq!(read_answer(&mut slow_body, &mut Vec::new()).status, 204);
    slow_headers.write_all(b"alhost\r\n\r\n").unwrap();
    let answer = read_answer(&mut slow_headers, &mut Vec::new());
    assert_eq!(answer.json()["amount_mib"], 256);
    assert_eq!(
        h.balloon().changes(),
        ["set_target_pages(256)", "set_target_pages(65536)"]
    );
}

/// Sends `request` to a connection one byte at a time, waking it after each byte as the
/// server's loop would; returns the work its framing did and the answer's status.
fn trickle(request: &str) -> (u64, u16) {
    let balloon = Arc::new(ModelBalloon::new(all_features()));
    let vm = ModelVm::new(Some(balloon.clone()));
    let limits = ServerLimits::default();
    let (mut client, server) = UnixStream::pair().unwrap();
    server.set_nonblocking(true).unwrap();
    let requests = Arc::new(ApiRequestCounters::new());
    let mut connection = Connection::new(server, Instant::now(), requests);
    for byte in request.as_bytes() {
        client.write_all(&[*byte]).unwrap();
        assert!(connection.on_ready(EventSet::IN, &vm, &limits, Instant::now()));
    }
    let answer = read_answer(&mut client, &mut Vec::new());
    assert_eq!(balloon.changes(), ["set_target_pages(131072)"]);
    (connection.bytes_examined(), answer.status)
}

/// A request that arrives one byte at a time is not framed again from its start on
/// every byte: the work grows with its length, not with the square of it.
#[test]
fn a_trickled_request_costs_work_linear_in_its_length() {
    let request = |padding: usize| {
        let body = r#"{"amount_mib": 512}"#;
        format!(
            "PATCH /balloon HTTP/1.1\r\nHost: localhost\r\nX-Padding: {}\r\nContent-Length: {}\r\n\r\n{body}",
            "p".repeat(padding),
            body.len()
        )
    };
    let (short, long) = (request(200), request(6000));
    let (short_work, status) = trickle(&short);
    assert_eq!(status, 204);
    let (long_work, status) = trickle(&long);
    assert_eq!(status, 204);
    // Each byte is looked at no more than three times: the scan for the end of the head,
    // the request line, the whole head once.
    assert!(
        long_work <= 3 * long.len() as u64,
        "{long_work} for {} bytes",
        long.len()
    );
    // 23 times the bytes take about 23 times the work; re-framing on every byte would
    // take about 500 times.
    let bytes_ratio = long.len() as f64 / short.len() as f64;
    let work_ratio = long_work as f64 / short_work as f64;
    assert!(
        work_ratio < 1.5 * bytes_ratio,
        "work grew {work_ratio:.1} times for {bytes_ratio:.1} times the bytes"
    );
}

#[test]
fn a_client_that_hangs_up_mid_request_changes_nothing() {
    let h = Harness::new(Some(all_features()));
    let mut stream = h.connect();
    stream
        .write_all(b"PATCH /balloon HTTP/1.1\r\nContent-Length: 19\r\n\r\n{\"amount_mib\"")
        .unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let answer = read_answer(&mut stream, &mut Vec::new());
    assert_eq!(answer.status, 400);
    assert!(answer.fault().contains("middle of a request"));
    assert!(server_closed(&mut stream));

    // One that vanishes altogether is forgotten too.
    let mut gone = h.connect();
    gone.write_all(b"PATCH /balloon HTTP/1.1\r\nContent-Le")
        .unwrap();
    drop(gone);
    assert_eq!(h.request("GET", "/vm", None).status, 200);
    assert!(h.balloon().changes().is_empty());
}

#[test]
fn expect_100_continue_is_honoured() {
    let h = Harness::new(Some(all_features()));
    let mut stream = h.connect();
    stream
        .write_all(
            b"PATCH /balloon HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\nContent-Length: 19\r\n\r\n",
        )
        .unwrap();
    let mut pending = Vec::new();
    assert_eq!(read_answer(&mut stream, &mut pending).status, 100);
    stream.write_all(br#"{"amount_mib": 128}"#).unwrap();
    assert_eq!(read_answer(&mut stream, &mut pending).status, 204);
    assert_eq!(h.balloon().state().target_pages, 128 * PAGES_PER_MIB);
}

#[test]
fn connection_close_and_http_1_0_get_one_answer() {
    let h = Harness::new(None);
    for raw in [
        &b"GET /vm HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"[..],
        b"GET /vm HTTP/1.0\r\n\r\n",
    ] {
        let (answer, mut stream) = exchange(&h.socket, raw);
        assert_eq!(answer.status, 200);
        assert!(answer.closes());
        assert!(server_closed(&mut stream));
    }
}

#[test]
fn idle_connections_are_closed() {
    let limits = ServerLimits {
        idle_timeout: Duration::from_millis(50),
        ..ServerLimits::default()
    };
    let h = Harness::with_limits(None, limits);
    let mut idle = h.connect();
    // Blocks until the server closes it (the hang guard ends the test otherwise).
    assert!(server_closed(&mut idle));
}

#[test]
fn connections_over_the_limit_are_answered_503() {
    let limits = ServerLimits {
        max_connections: 2,
        ..ServerLimits::default()
    };
    let h = Harness::with_limits(None, limits);
    let mut held = h.served_connections(2);
    let (refused, mut stream) = exchange(&h.socket, http("GET", "/vm", None).as_bytes());
    assert_eq!(refused.status, 503);
    assert!(refused.fault().contains("2 connections"));
    assert!(server_closed(&mut stream));

    // Once one closes, a new client is served again. The server learns of the close
    // asynchronously, so ask until it has.
    drop(held.pop());
    let served = (0..1000).any(|_| {
        let (answer, _) = exchange(&h.socket, http("GET", "/vm", None).as_bytes());
        answer.status == 200
    });
    assert!(served);
}

#[test]
fn silent_connections_give_way_to_a_new_client() {
    let limits = ServerLimits {
        max_connections: 2,
        reclaim_after: Duration::from_millis(100),
        ..ServerLimits::default()
    };
    let h = Harness::with_limits(None, limits);
    // Two connections the server has taken, then left silent: one with nothing more, one
    // with half a request.
    let mut silent = h.served_connections(2);
    silent[1].write_all(b"GET /vm HTTP/1.1\r\nHo").unwrap();
    thread::sleep(Duration::from_millis(300));
    // Each new client (kept open, so the server stays full) takes the place of the
    // connection silent the longest.
    let mut newcomers = Vec::new();
    for _ in 0..2 {
        let (answer, stream) = exchange(&h.socket, http("GET", "/vm", None).as_bytes());
        assert_eq!(answer.status, 200);
        newcomers.push(stream);
    }
    assert!(server_closed(&mut silent[0]));
    assert!(server_closed(&mut silent[1]));
}
