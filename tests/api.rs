//! The API end to end without KVM: the server runs over a model of the VM and its balloon,
//! and the tests send real HTTP over a real Unix socket.
//!
//! The models record every change they make, so a test can show that a refused request
//! changed nothing. Timeouts here only guard against hangs; no test measures time.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::Duration;

use clap::Parser;
use serde_json::{json, Value};

use vmm::api::routes::ROUTES;
use vmm::api::{
    run_ctl, ApiError, ApiServer, ClientError, CtlArgs, ServerLimits, VmControl, VmInfo,
};
use vmm::devices::virtio::balloon::{
    BalloonConfig, BalloonControl, BalloonError, BalloonFeatures, BalloonInfo, BalloonStatistics,
    GuestStats, HintingStatus,
};

/// Long enough never to fire on a working server; short enough to end a hung test.
const HANG_GUARD: Duration = Duration::from_secs(30);
const GUEST_MEMORY: u64 = 2 << 30;
const PAGES_PER_MIB: u32 = 256;

// ---------------------------------------------------------------------------------------
// Models

#[derive(Debug, Clone, PartialEq, Eq)]
struct BalloonState {
    target_pages: u32,
    actual_pages: u32,
    stats_interval_s: u32,
    driver_ready: bool,
    host_cmd: u32,
    guest_cmd: Option<u32>,
    acknowledge_on_stop: Option<bool>,
    stats: GuestStats,
    last_update_age_ms: Option<u64>,
    unknown_tags: u64,
}

/// A balloon that behaves as the interface promises: it checks its features and limits,
/// never waits, and logs every change it makes.
struct ModelBalloon {
    config: BalloonConfig,
    state: Mutex<BalloonState>,
    changes: Mutex<Vec<String>>,
}

impl ModelBalloon {
    fn new(features: BalloonFeatures) -> Self {
        ModelBalloon {
            config: BalloonConfig {
                features,
                stats_interval_s: if features.stats { 5 } else { 0 },
                initial_size: 0,
            },
            state: Mutex::new(BalloonState {
                target_pages: 0,
                actual_pages: 0,
                stats_interval_s: if features.stats { 5 } else { 0 },
                driver_ready: true,
                host_cmd: 0,
                guest_cmd: None,
                acknowledge_on_stop: None,
                stats: GuestStats::default(),
                last_update_age_ms: None,
                unknown_tags: 0,
            }),
            changes: Mutex::new(Vec::new()),
        }
    }

    fn state(&self) -> BalloonState {
        self.state.lock().unwrap().clone()
    }

    fn changes(&self) -> Vec<String> {
        self.changes.lock().unwrap().clone()
    }

    fn update(&self, change: impl FnOnce(&mut BalloonState)) {
        change(&mut self.state.lock().unwrap());
    }

    fn log(&self, change: String) {
        self.changes.lock().unwrap().push(change);
    }
}

impl BalloonControl for ModelBalloon {
    fn info(&self) -> BalloonInfo {
        let state = self.state();
        BalloonInfo {
            config: self.config,
            target_pages: state.target_pages,
            actual_pages: state.actual_pages,
            stats_interval_s: state.stats_interval_s,
            driver_ready: state.driver_ready,
            acked_features: 0,
        }
    }

    fn set_target_pages(&self, pages: u32) -> Result<(), BalloonError> {
        let requested = u64::from(pages) * 4096;
        if requested > GUEST_MEMORY {
            return Err(BalloonError::TargetTooLarge {
                requested,
                guest_memory: GUEST_MEMORY,
            });
        }
        self.update(|state| state.target_pages = pages);
        self.log(format!("set_target_pages({pages})"));
        Ok(())
    }

    fn statistics(&self) -> Result<BalloonStatistics, BalloonError> {
        if !self.config.features.stats {
            return Err(BalloonError::StatsDisabled);
        }
        let state = self.state();
        Ok(BalloonStatistics {
            target_pages: state.target_pages,
            actual_pages: state.actual_pages,
            stats: state.stats,
            unknown_tags: state.unknown_tags,
            last_update_age_ms: state.last_update_age_ms,
        })
    }

    fn set_stats_interval(&self, seconds: u32) -> Result<(), BalloonError> {
        if !self.config.features.stats {
            return Err(BalloonError::StatsDisabled);
        }
        if seconds > 86_400 {
            return Err(BalloonError::IntervalTooLarge(u64::from(seconds)));
        }
        self.update(|state| state.stats_interval_s = seconds);
        self.log(format!("set_stats_interval({seconds})"));
        Ok(())
    }

    fn start_hinting(&self, acknowledge_on_stop: bool) -> Result<(), BalloonError> {
        if !self.config.features.free_page_hint {
            return Err(BalloonError::HintingDisabled);
        }
        self.update(|state| {
            state.host_cmd = state.host_cmd.max(1) + 1;
            state.acknowledge_on_stop = Some(acknowledge_on_stop);
        });
        self.log(format!("start_hinting({acknowledge_on_stop})"));
        Ok(())
    }

    fn hinting_status(&self) -> Result<HintingStatus, BalloonError> {
        if !self.config.features.free_page_hint {
            return Err(BalloonError::HintingDisabled);
        }
        let state = self.state();
        Ok(HintingStatus {
            host_cmd: state.host_cmd,
            guest_cmd: state.guest_cmd,
        })
    }

    fn stop_hinting(&self) -> Result<(), BalloonError> {
        if !self.config.features.free_page_hint {
            return Err(BalloonError::HintingDisabled);
        }
        self.update(|state| state.host_cmd = 1);
        self.log("stop_hinting".to_string());
        Ok(())
    }
}

struct ModelVm {
    balloon: Option<Arc<ModelBalloon>>,
    shutdowns: AtomicUsize,
}

impl VmControl for ModelVm {
    fn info(&self) -> VmInfo {
        let stopping = self.shutdowns.load(Ordering::SeqCst) > 0;
        VmInfo {
            vcpus: 2,
            memory_bytes: GUEST_MEMORY,
            state: if stopping { "Stopping" } else { "Running" },
            uptime_ms: 12_345,
        }
    }

    fn balloon(&self) -> Option<Arc<dyn BalloonControl>> {
        self.balloon
            .clone()
            .map(|balloon| balloon as Arc<dyn BalloonControl>)
    }

    fn request_shutdown(&self) {
        self.shutdowns.fetch_add(1, Ordering::SeqCst);
    }
}

fn all_features() -> BalloonFeatures {
    BalloonFeatures {
        must_tell_host: true,
        stats: true,
        deflate_on_oom: true,
        free_page_hint: true,
        page_poison: false,
        page_reporting: true,
    }
}

fn every_stat() -> GuestStats {
    GuestStats {
        swap_in: Some(1),
        swap_out: Some(2),
        major_faults: Some(3),
        minor_faults: Some(4),
        free_memory: Some(512 << 20),
        total_memory: Some(GUEST_MEMORY),
        available_memory: Some(1 << 30),
        disk_caches: Some(64 << 20),
        hugetlb_allocations: Some(9),
        hugetlb_failures: Some(10),
        oom_kill: Some(11),
        alloc_stall: Some(12),
        async_scan: Some(13),
        direct_scan: Some(14),
        async_reclaim: Some(15),
        direct_reclaim: Some(16),
    }
}

// ---------------------------------------------------------------------------------------
// Set-up

/// A fresh directory for one test's socket, removed at the end.
struct TestDir(PathBuf);

impl TestDir {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("vmm-api-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TestDir(path)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A server over a model, on a socket of its own.
struct Harness {
    server: Option<ApiServer>,
    socket: PathBuf,
    vm: Arc<ModelVm>,
    balloon: Option<Arc<ModelBalloon>>,
    _dir: TestDir,
}

impl Harness {
    fn new(features: Option<BalloonFeatures>) -> Self {
        Self::with_limits(features, ServerLimits::default())
    }

    fn with_limits(features: Option<BalloonFeatures>, limits: ServerLimits) -> Self {
        let dir = TestDir::new();
        let socket = dir.join("api.sock");
        let balloon = features.map(|features| Arc::new(ModelBalloon::new(features)));
        let vm = Arc::new(ModelVm {
            balloon: balloon.clone(),
            shutdowns: AtomicUsize::new(0),
        });
        let server = ApiServer::start_with_limits(&socket, vm.clone(), limits).unwrap();
        Harness {
            server: Some(server),
            socket,
            vm,
            balloon,
            _dir: dir,
        }
    }

    fn balloon(&self) -> &ModelBalloon {
        self.balloon.as_ref().unwrap()
    }

    fn request(&self, method: &str, path: &str, body: Option<&str>) -> Answer {
        request(&self.socket, method, path, body)
    }

    fn connect(&self) -> UnixStream {
        connect(&self.socket)
    }

    /// `count` connections the server has surely taken: each has been answered once.
    fn served_connections(&self, count: usize) -> Vec<UnixStream> {
        (0..count)
            .map(|_| {
                let mut stream = self.connect();
                stream
                    .write_all(http("GET", "/vm", None).as_bytes())
                    .unwrap();
                assert_eq!(read_answer(&mut stream, &mut Vec::new()).status, 200);
                stream
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// A small HTTP client that shows the wire as it is

#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {:?}", self.text()))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `fault_message` of an error answer, checking that the body is exactly that.
    fn fault(&self) -> String {
        let body = self.json();
        let object = body.as_object().expect("error body is a JSON object");
        assert_eq!(
            object.keys().collect::<Vec<_>>(),
            ["fault_message"],
            "error body: {body}"
        );
        assert_eq!(self.header("content-type"), Some("application/json"));
        body["fault_message"].as_str().unwrap().to_string()
    }

    fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|value| value.eq_ignore_ascii_case("close"))
    }
}

fn connect(socket: &Path) -> UnixStream {
    let stream = UnixStream::connect(socket).unwrap();
    stream.set_read_timeout(Some(HANG_GUARD)).unwrap();
    stream.set_write_timeout(Some(HANG_GUARD)).unwrap();
    stream
}

fn http(method: &str, path: &str, body: Option<&str>) -> String {
    match body {
        Some(body) => format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
        None => format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n\r\n"),
    }
}

/// Reads one answer; bytes of later answers stay in `pending`.
fn read_answer(stream: &mut UnixStream, pending: &mut Vec<u8>) -> Answer {
    loop {
        let parsed = {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(pending).expect("answer is valid HTTP") {
                httparse::Status::Complete(length) => Some((
                    length,
                    response.code.unwrap(),
                    response
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_string(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect::<Vec<_>>(),
                )),
                httparse::Status::Partial => None,
            }
        };
        if let Some((length, status, headers)) = parsed {
            let content_length = headers
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
                .map_or(0, |(_, value)| value.parse::<usize>().unwrap());
            while pending.len() < length + content_length {
                assert!(read_some(stream, pending), "server closed mid-answer");
            }
            let body = pending[length..length + content_length].to_vec();
            pending.drain(..length + content_length);
            return Answer {
                status,
                headers,
                body,
            };
        }
        assert!(
            read_some(stream, pending),
            "server closed the connection without answering"
        );
    }
}

/// Reads what arrives; false at the end of the stream.
fn read_some(stream: &mut UnixStream, pending: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk) {
        Ok(0) => false,
        Ok(count) => {
            pending.extend_from_slice(&chunk[..count]);
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => false,
        Err(e) => panic!("reading the answer failed (hang guard?): {e}"),
    }
}

/// Whether the server has closed the connection (after any answer already read).
fn server_closed(stream: &mut UnixStream) -> bool {
    let mut rest = Vec::new();
    !read_some(stream, &mut rest) && rest.is_empty()
}

/// Sends raw bytes on a new connection and reads one answer.
fn exchange(socket: &Path, raw: &[u8]) -> (Answer, UnixStream) {
    let mut stream = connect(socket);
    // A server that refuses the connection may close it before taking the request; its
    // answer is still there to read.
    let _ = stream.write_all(raw);
    let answer = read_answer(&mut stream, &mut Vec::new());
    (answer, stream)
}

fn request(socket: &Path, method: &str, path: &str, body: Option<&str>) -> Answer {
    exchange(socket, http(method, path, body).as_bytes()).0
}

fn keys(value: &Value) -> BTreeSet<String> {
    value.as_object().unwrap().keys().cloned().collect()
}

// ---------------------------------------------------------------------------------------
// Every route

#[test]
fn get_vm_reports_the_vm_and_whether_a_balloon_is_attached() {
    let h = Harness::new(Some(all_features()));
    let answer = h.request("GET", "/vm", None);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(
        answer.json(),
        json!({"vcpus": 2, "memory_mib": 2048, "state": "Running", "uptime_ms": 12345,
               "balloon_attached": true})
    );
    let bare = Harness::new(None);
    assert_eq!(
        bare.request("GET", "/vm", None).json()["balloon_attached"],
        json!(false)
    );
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
            "driver_ready": true
        })
    );
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
        state.stats.free_memory = Some(1 << 30);
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
    assert_eq!(h.vm.shutdowns.load(Ordering::SeqCst), 1);
    assert_eq!(h.request("GET", "/vm", None).json()["state"], "Stopping");
}

#[test]
fn a_query_string_is_ignored() {
    let h = Harness::new(Some(all_features()));
    assert_eq!(h.request("GET", "/vm?pretty=1", None).status, 200);
}

// ---------------------------------------------------------------------------------------
// Errors

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
        ("PUT", "/actions", Some(r#"{"action_type": "Reboot"}"#), 400, &["Reboot", "Shutdown"]),
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
    assert_eq!(h.vm.shutdowns.load(Ordering::SeqCst), 0);
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
    assert!(text.contains("Allow: GET\r\n"), "{text}");
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

// ---------------------------------------------------------------------------------------
// Connections

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

// ---------------------------------------------------------------------------------------
// The socket file

#[test]
fn the_socket_has_mode_0600() {
    let h = Harness::new(None);
    let meta = fs::symlink_metadata(&h.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // Nothing is left behind in the directory but the socket.
    let names: Vec<_> = fs::read_dir(h.socket.parent().unwrap())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(names, ["api.sock"]);
}

#[test]
fn a_stale_socket_is_replaced() {
    let dir = TestDir::new();
    let path = dir.join("api.sock");
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists(), "a closed listener leaves its socket file");
    let vm = Arc::new(ModelVm {
        balloon: None,
        shutdowns: AtomicUsize::new(0),
    });
    let _server = ApiServer::start(&path, vm).unwrap();
    assert_eq!(request(&path, "GET", "/vm", None).status, 200);
}

#[test]
fn a_file_that_is_not_a_socket_is_refused_and_left_untouched() {
    let dir = TestDir::new();
    let vm = Arc::new(ModelVm {
        balloon: None,
        shutdowns: AtomicUsize::new(0),
    });
    let path = dir.join("precious.txt");
    fs::write(&path, "keep me").unwrap();
    let err = ApiServer::start(&path, vm.clone()).err().unwrap();
    assert!(matches!(err, ApiError::NotASocket(_)));
    assert!(err.to_string().contains("precious.txt"));
    assert_eq!(fs::read_to_string(&path).unwrap(), "keep me");

    // Nor is a symbolic link followed, even to a stale socket.
    let stale = dir.join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    let link = dir.join("link.sock");
    std::os::unix::fs::symlink(&stale, &link).unwrap();
    let err = ApiServer::start(&link, vm.clone()).err().unwrap();
    assert!(matches!(err, ApiError::NotASocket(_)));
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(stale.exists());

    let subdir = dir.join("a-directory");
    fs::create_dir(&subdir).unwrap();
    assert!(matches!(
        ApiServer::start(&subdir, vm),
        Err(ApiError::NotASocket(_))
    ));
    assert!(subdir.is_dir());
}

#[test]
fn a_socket_in_use_is_refused() {
    let h = Harness::new(None);
    let other = Arc::new(ModelVm {
        balloon: None,
        shutdowns: AtomicUsize::new(0),
    });
    let err = ApiServer::start(&h.socket, other).err().unwrap();
    assert!(matches!(err, ApiError::InUse(_)), "{err}");
    assert_eq!(h.request("GET", "/vm", None).status, 200);
}

#[test]
fn a_missing_directory_or_a_too_long_path_is_reported() {
    let vm = Arc::new(ModelVm {
        balloon: None,
        shutdowns: AtomicUsize::new(0),
    });
    let err = ApiServer::start(Path::new("/nonexistent-dir/api.sock"), vm.clone())
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("/nonexistent-dir/api.sock"),
        "{err}"
    );
    let long = PathBuf::from(format!("/tmp/{}.sock", "x".repeat(200)));
    assert!(matches!(
        ApiServer::start(&long, vm),
        Err(ApiError::PathTooLong { .. })
    ));
}

#[test]
fn the_socket_is_removed_when_the_server_stops() {
    let mut h = Harness::new(None);
    assert!(h.socket.exists());
    drop(h.server.take());
    assert!(!h.socket.exists());

    let h = Harness::new(None);
    let mut client = h.connect();
    h.server.unwrap().shutdown();
    assert!(!h.socket.exists());
    assert!(server_closed(&mut client));
}

#[test]
fn a_socket_replaced_by_someone_else_is_not_removed() {
    let mut h = Harness::new(None);
    fs::remove_file(&h.socket).unwrap();
    fs::write(&h.socket, "someone else's").unwrap();
    drop(h.server.take());
    assert_eq!(fs::read_to_string(&h.socket).unwrap(), "someone else's");
}

// ---------------------------------------------------------------------------------------
// vmm ctl

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    ctl: CtlArgs,
}

fn ctl(socket: &Path, args: &[&str]) -> (Result<(), ClientError>, String) {
    let mut argv = vec!["vmm-ctl", "--api-sock", socket.to_str().unwrap()];
    argv.extend_from_slice(args);
    let cli = Cli::try_parse_from(argv).unwrap();
    let mut out = Vec::new();
    let result = run_ctl(&cli.ctl, &mut out);
    (result, String::from_utf8(out).unwrap())
}

fn ctl_ok(socket: &Path, args: &[&str]) -> String {
    let (result, out) = ctl(socket, args);
    result.unwrap_or_else(|e| panic!("vmm ctl {args:?}: {e}"));
    out
}

#[test]
fn ctl_sets_and_shows_the_balloon() {
    let h = Harness::new(Some(all_features()));
    let out = ctl_ok(&h.socket, &["balloon", "set", "512M"]);
    assert_eq!(out, "balloon target set to 512 MiB\n");
    assert_eq!(h.balloon().state().target_pages, 512 * PAGES_PER_MIB);
    ctl_ok(&h.socket, &["balloon", "set", "1G"]);
    assert_eq!(h.balloon().state().target_pages, 1024 * PAGES_PER_MIB);
    assert_eq!(
        ctl_ok(&h.socket, &["balloon", "set", "0"]),
        "balloon target set to 0 MiB\n"
    );

    h.balloon().update(|state| {
        state.target_pages = 1024 * PAGES_PER_MIB;
        state.actual_pages = 300 * PAGES_PER_MIB;
    });
    let out = ctl_ok(&h.socket, &["balloon", "get"]);
    for expected in [
        "target:               1 GiB\n",
        "actual:               300 MiB\n",
        "guest driver:         ready\n",
        "statistics:           on, polled every 5 s\n",
        "deflate on OOM:       on\n",
        "free page reporting:  on\n",
        "page poison:          off\n",
    ] {
        assert!(out.contains(expected), "{expected:?} not in:\n{out}");
    }
}

#[test]
fn ctl_shows_statistics() {
    let h = Harness::new(Some(all_features()));
    let out = ctl_ok(&h.socket, &["balloon", "stats"]);
    assert!(
        out.contains("the guest has not reported statistics yet"),
        "{out}"
    );
    assert!(!out.contains("free memory"));

    h.balloon().update(|state| {
        state.target_pages = 512 * PAGES_PER_MIB;
        state.actual_pages = 512 * PAGES_PER_MIB;
        state.stats = every_stat();
        state.last_update_age_ms = Some(2_500);
    });
    let out = ctl_ok(&h.socket, &["balloon", "stats"]);
    for expected in [
        "target:               512 MiB (131072 pages)\n",
        "actual:               512 MiB (131072 pages)\n",
        "last report:          2.5 s ago\n",
        "total memory:         2 GiB\n",
        "free memory:          512 MiB\n",
        "major faults:         3\n",
        "OOM kills:            11\n",
        "reclaimed (direct):   16 pages\n",
    ] {
        assert!(out.contains(expected), "{expected:?} not in:\n{out}");
    }
}

#[test]
fn ctl_json_prints_the_raw_answer() {
    let h = Harness::new(Some(all_features()));
    h.balloon().update(|state| state.stats = every_stat());
    for (args, path) in [
        (&["--json", "balloon", "get"][..], "/balloon"),
        (&["balloon", "get", "--json"][..], "/balloon"),
        (&["balloon", "stats", "--json"][..], "/balloon/statistics"),
        (&["vm", "info", "--json"][..], "/vm"),
        (
            &["balloon", "hint", "status", "--json"][..],
            "/balloon/hinting/status",
        ),
    ] {
        let out = ctl_ok(&h.socket, args);
        let printed: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(printed, h.request("GET", path, None).json(), "{args:?}");
    }
    // A 204 has no body to print.
    assert_eq!(ctl_ok(&h.socket, &["--json", "balloon", "set", "2M"]), "");
}

#[test]
fn ctl_drives_hinting_and_the_vm() {
    let h = Harness::new(Some(all_features()));
    assert_eq!(
        ctl_ok(&h.socket, &["balloon", "hint", "start"]),
        "free page hinting started\n"
    );
    ctl_ok(
        &h.socket,
        &["balloon", "hint", "start", "--acknowledge-on-stop", "false"],
    );
    let out = ctl_ok(&h.socket, &["balloon", "hint", "status"]);
    assert!(
        out.contains("host command:         3 (hinting run)"),
        "{out}"
    );
    assert!(out.contains("guest command:        none yet"), "{out}");
    assert_eq!(
        ctl_ok(&h.socket, &["balloon", "hint", "stop"]),
        "free page hinting stopped\n"
    );

    let out = ctl_ok(&h.socket, &["vm", "info"]);
    for expected in [
        "state:                Running\n",
        "vCPUs:                2\n",
        "memory:               2 GiB\n",
        "uptime:               12.3 s\n",
        "balloon:              attached\n",
    ] {
        assert!(out.contains(expected), "{expected:?} not in:\n{out}");
    }
    assert_eq!(
        ctl_ok(&h.socket, &["vm", "shutdown"]),
        "the VM is shutting down\n"
    );
    assert_eq!(h.vm.shutdowns.load(Ordering::SeqCst), 1);
    assert_eq!(
        h.balloon().changes(),
        [
            "start_hinting(true)",
            "start_hinting(false)",
            "stop_hinting"
        ]
    );
}

#[test]
fn ctl_reports_refusals_with_the_vmm_message() {
    let h = Harness::new(Some(BalloonFeatures {
        stats: false,
        ..all_features()
    }));
    let (result, out) = ctl(&h.socket, &["balloon", "set", "4G"]);
    let err = result.unwrap_err();
    assert!(
        matches!(err, ClientError::Refused { status: 400, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("larger than guest memory"),
        "{err}"
    );
    assert!(out.is_empty());

    let (result, _) = ctl(&h.socket, &["balloon", "stats"]);
    assert!(result.unwrap_err().to_string().contains("--balloon stats"));

    let (result, _) = ctl(&h.socket, &["balloon", "set", "1000K"]);
    let err = result.unwrap_err();
    assert!(matches!(err, ClientError::NotWholeMib(_)));
    assert!(err.to_string().contains("whole number of MiB"));
    let (result, _) = ctl(&h.socket, &["balloon", "set", "lots"]);
    assert!(matches!(result, Err(ClientError::Size(_))));
    assert!(h.balloon().changes().is_empty());

    let bare = Harness::new(None);
    let (result, _) = ctl(&bare.socket, &["balloon", "get"]);
    assert!(matches!(
        result,
        Err(ClientError::Refused { status: 409, .. })
    ));
}

#[test]
fn ctl_reports_a_missing_socket_or_a_dead_vmm() {
    let dir = TestDir::new();
    let missing = dir.join("missing.sock");
    let (result, _) = ctl(&missing, &["vm", "info"]);
    let err = result.unwrap_err();
    assert!(matches!(err, ClientError::SocketMissing(_)));
    let message = err.to_string();
    assert!(message.contains("missing.sock"), "{message}");
    assert!(message.contains("--api-sock"), "{message}");

    let stale = dir.join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    let (result, _) = ctl(&stale, &["vm", "info"]);
    assert!(matches!(result, Err(ClientError::NotListening(_))));
}

#[test]
fn ctl_reports_a_vmm_that_hangs_up_without_answering() {
    let dir = TestDir::new();
    let path = dir.join("mute.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let mute = thread::spawn(move || {
        // Takes the whole request, then hangs up without a word.
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = Vec::new();
        while !request.ends_with(b"\r\n\r\n") && read_some(&mut stream, &mut request) {}
    });
    let (result, _) = ctl(&path, &["vm", "info"]);
    mute.join().unwrap();
    assert!(
        matches!(result, Err(ClientError::BadAnswer(_))),
        "{result:?}"
    );
}

#[test]
fn ctl_gives_up_on_a_vmm_that_never_answers() {
    let dir = TestDir::new();
    let path = dir.join("stuck.sock");
    // Connections land in the backlog; nobody ever reads or answers them.
    let _listener = UnixListener::bind(&path).unwrap();
    let (result, _) = ctl(&path, &["--timeout", "1", "vm", "info"]);
    let err = result.unwrap_err();
    assert!(matches!(err, ClientError::Timeout(_)), "{err}");
    assert!(
        err.to_string().contains("did not answer within 1 second"),
        "{err}"
    );
}

/// Takes a number of lines, then fails like a closed pipe.
struct LimitedOutput {
    text: Arc<Mutex<String>>,
    blocks_left: usize,
}

impl Write for LimitedOutput {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(bytes);
        if text.starts_with("target:") {
            if self.blocks_left == 0 {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
            self.blocks_left -= 1;
        }
        self.text.lock().unwrap().push_str(&text);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn ctl_watch_shows_statistics_until_stopped() {
    let h = Harness::new(Some(all_features()));
    let text = Arc::new(Mutex::new(String::new()));
    let mut out = LimitedOutput {
        text: text.clone(),
        blocks_left: 2,
    };
    let cli = Cli::try_parse_from([
        "vmm-ctl",
        "--api-sock",
        h.socket.to_str().unwrap(),
        "balloon",
        "stats",
        "--watch",
        "1",
    ])
    .unwrap();
    let err = run_ctl(&cli.ctl, &mut out).unwrap_err();
    assert!(matches!(err, ClientError::Output(_)));
    assert_eq!(text.lock().unwrap().matches("target:").count(), 2);
    assert!(Cli::try_parse_from([
        "vmm-ctl",
        "--api-sock",
        "x",
        "balloon",
        "stats",
        "--watch",
        "0"
    ])
    .is_err());
}

// ---------------------------------------------------------------------------------------
// The OpenAPI description

const METHODS: [&str; 5] = ["GET", "PUT", "PATCH", "POST", "DELETE"];

fn openapi() -> Value {
    let text = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.yaml")).unwrap();
    serde_norway::from_str(&text).unwrap()
}

fn resolve<'a>(spec: &'a Value, node: &'a Value) -> &'a Value {
    match node.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference.strip_prefix('#').expect("local $ref");
            let target = spec
                .pointer(pointer)
                .unwrap_or_else(|| panic!("{reference}"));
            resolve(spec, target)
        }
        None => node,
    }
}

/// The (path, METHOD) pairs the spec describes.
fn spec_operations(spec: &Value) -> BTreeSet<(String, String)> {
    let mut operations = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if METHODS.contains(&method.to_uppercase().as_str()) {
                operations.insert((path.clone(), method.to_uppercase()));
            }
        }
    }
    operations
}

fn example_body<'a>(spec: &'a Value, operation: &'a Value) -> Option<&'a Value> {
    let body = resolve(spec, operation.get("requestBody")?);
    body.pointer("/content/application~1json/example")
}

#[test]
fn openapi_describes_exactly_the_routes_the_server_serves() {
    let spec = openapi();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    assert!(spec["info"]["title"].is_string());
    assert!(spec["info"]["version"].is_string());
    let described = spec_operations(&spec);

    // Every operation of the spec is served, and its example body is accepted.
    let h = Harness::new(Some(all_features()));
    for (path, method) in &described {
        let operation = &spec["paths"][path][method.to_lowercase()];
        let body = example_body(&spec, operation).map(|example| example.to_string());
        let answer = h.request(method, path, body.as_deref());
        assert!(
            (200..300).contains(&answer.status),
            "{method} {path} with the spec's example: {} {}",
            answer.status,
            answer.text()
        );
        let documented = operation["responses"]
            .as_object()
            .unwrap()
            .contains_key(&answer.status.to_string());
        assert!(
            documented,
            "{method} {path}: status {} is not in the spec",
            answer.status
        );
    }

    // Everything the server serves is in the spec: probe every path either knows of,
    // and some it should not serve, with every method.
    let mut paths: BTreeSet<String> = described.iter().map(|(path, _)| path.clone()).collect();
    paths.extend(ROUTES.iter().map(|route| route.path.to_string()));
    paths.extend(
        ["/", "/balloon/hinting", "/machine-config", "/vm/config"]
            .iter()
            .map(|p| p.to_string()),
    );
    let probe = Harness::new(Some(all_features()));
    for path in &paths {
        for method in METHODS {
            let body = (method != "GET").then_some("{}");
            let answer = probe.request(method, path, body);
            let served = answer.status != 404 && answer.status != 405;
            assert_eq!(
                served,
                described.contains(&(path.clone(), method.to_string())),
                "{method} {path}: {} {}",
                answer.status,
                answer.text()
            );
        }
    }
}

#[test]
fn openapi_schemas_name_the_fields_the_server_returns() {
    let spec = openapi();
    let full = Harness::new(Some(all_features()));
    full.balloon().update(|state| {
        state.stats = every_stat();
        state.last_update_age_ms = Some(10);
        state.unknown_tags = 1;
        state.guest_cmd = Some(2);
    });
    let minimal = Harness::new(Some(all_features()));

    let mut checked = 0;
    for (path, method) in spec_operations(&spec) {
        let operation = &spec["paths"][&path][method.to_lowercase()];
        let responses = operation["responses"].as_object().unwrap();
        for (status, response) in responses {
            let response = resolve(&spec, response);
            let Some(schema) = response.pointer("/content/application~1json/schema") else {
                continue;
            };
            let schema = resolve(&spec, schema);
            let properties: BTreeSet<String> = keys(&schema["properties"]);
            let required: BTreeSet<String> = schema
                .get("required")
                .and_then(Value::as_array)
                .map(|names| {
                    names
                        .iter()
                        .map(|name| name.as_str().unwrap().to_string())
                        .collect()
                })
                .unwrap_or_default();
            assert!(required.is_subset(&properties), "{method} {path} {status}");
            if status == "200" {
                let everything = full.request(&method, &path, None).json();
                assert_eq!(keys(&everything), properties, "{method} {path}");
                let least = minimal.request(&method, &path, None).json();
                assert!(
                    required.is_subset(&keys(&least)),
                    "{method} {path}: required {required:?}, minimal answer {least}"
                );
                checked += 1;
            } else if !status.starts_with('2') {
                assert_eq!(properties, BTreeSet::from(["fault_message".to_string()]));
                assert_eq!(required, properties);
            }
        }
    }
    // GET /vm, /balloon, /balloon/statistics, /balloon/hinting/status.
    assert_eq!(checked, 4);
}
