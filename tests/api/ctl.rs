//! `vmm ctl`, run in-process against the server: what it prints and how it reports
//! refusals and broken servers.

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;

use clap::Parser;
use serde_json::Value;
use socket2::{Domain, SockAddr, Socket, Type};

use vmm::api::client::{exit_status, API_SOCK_ENV};
use vmm::api::{run_ctl, ClientError, CtlArgs};
use vmm::devices::virtio::balloon::BalloonFeatures;

use crate::common::http::read_some;
use crate::common::{vmm_bin, PAGES_PER_MIB};
use crate::harness::{test_dir, Harness};
use crate::model::{all_features, every_stat};

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
    assert_eq!(ctl_ok(&h.socket, &["vm", "pause"]), "the VM is paused\n");
    assert!(h.vm.is_paused());
    let out = ctl_ok(&h.socket, &["vm", "info"]);
    assert!(out.contains("state:                Paused\n"), "{out}");
    assert_eq!(
        ctl_ok(&h.socket, &["vm", "ctrl-alt-del"]),
        "Ctrl+Alt+Del sent to the guest\n"
    );
    assert_eq!(h.vm.ctrl_alt_dels(), 1);
    assert_eq!(ctl_ok(&h.socket, &["vm", "resume"]), "the VM is running\n");
    assert!(!h.vm.is_paused());
    assert_eq!(
        ctl_ok(&h.socket, &["vm", "shutdown"]),
        "the VM is shutting down\n"
    );
    // A stopping VM refuses, and the client says why.
    let (result, _) = ctl(&h.socket, &["vm", "pause"]);
    let error = result.unwrap_err().to_string();
    assert_eq!(
        error,
        "the VMM refused the request (HTTP 409): the VM is stopping"
    );
    assert_eq!(h.vm.shutdowns(), 1);
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

    // Sizes the client cannot send are refused before anything is sent.
    for (size, words) in [
        ("1000K", "whole number of MiB"),
        ("lots", "\"lots\""),
        ("512", "did you mean 512M?"),
    ] {
        let argv = ["vmm-ctl", "--api-sock", "x", "balloon", "set", size];
        let err = Cli::try_parse_from(argv).err().unwrap();
        assert!(err.to_string().contains(words), "{size}: {err}");
    }
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
    let dir = test_dir();
    let missing = dir.as_path().join("missing.sock");
    let (result, _) = ctl(&missing, &["vm", "info"]);
    let err = result.unwrap_err();
    assert!(matches!(err, ClientError::SocketMissing(_)));
    let message = err.to_string();
    assert!(message.contains("missing.sock"), "{message}");
    assert!(message.contains("--api-sock"), "{message}");

    let stale = dir.as_path().join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    let (result, _) = ctl(&stale, &["vm", "info"]);
    assert!(matches!(result, Err(ClientError::NotListening(_))));
}

#[test]
fn ctl_reports_a_vmm_that_hangs_up_without_answering() {
    let dir = test_dir();
    let path = dir.as_path().join("mute.sock");
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
    let dir = test_dir();
    let path = dir.as_path().join("stuck.sock");
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

#[test]
fn ctl_takes_the_socket_anywhere_on_the_line() {
    let h = Harness::new(Some(all_features()));
    let socket = h.socket.to_str().unwrap();
    for argv in [
        &["vmm-ctl", "--api-sock", socket, "balloon", "set", "64M"][..],
        &["vmm-ctl", "balloon", "--api-sock", socket, "set", "64M"],
        &["vmm-ctl", "balloon", "set", "64M", "--api-sock", socket],
        &["vmm-ctl", "balloon", "set", "--api-sock", socket, "64M"],
    ] {
        let cli = Cli::try_parse_from(argv).unwrap();
        assert_eq!(cli.ctl.api_sock.as_deref(), Some(h.socket.as_path()));
        run_ctl(&cli.ctl, &mut Vec::new()).unwrap();
    }
    assert_eq!(h.balloon().changes().len(), 4);
}

/// Runs the `vmm ctl` binary with `args`, and `VMM_API_SOCK` set to `env_socket` or unset.
/// Every invocation ends by itself: ctl gives up after its own `--timeout`.
fn ctl_binary(args: &[&str], env_socket: Option<&Path>) -> Output {
    let mut command = Command::new(vmm_bin());
    command
        .arg("ctl")
        .args(args)
        .env_remove(API_SOCK_ENV)
        .stdin(Stdio::null());
    if let Some(socket) = env_socket {
        command.env(API_SOCK_ENV, socket);
    }
    command.output().unwrap()
}

/// Checks the exit status of `vmm ctl ARGS` and that it said why in one line on stderr
/// containing `words`; returns its stdout.
fn expect_status(args: &[&str], env_socket: Option<&Path>, status: u8, words: &str) -> String {
    let out = ctl_binary(args, env_socket);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(i32::from(status)),
        "vmm ctl {args:?}: {stderr}"
    );
    if status != exit_status::OK {
        assert_eq!(stderr.lines().count(), 1, "vmm ctl {args:?}: {stderr}");
        assert!(stderr.contains(words), "vmm ctl {args:?}: {stderr}");
    }
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn ctl_exit_statuses_tell_a_refusal_from_a_missing_vmm() {
    let h = Harness::new(Some(BalloonFeatures {
        stats: false,
        ..all_features()
    }));
    let sock = h.socket.to_str().unwrap();
    let out = expect_status(&["vm", "info", "--api-sock", sock], None, 0, "");
    assert!(out.contains("id:                   model-vm-1\n"), "{out}");

    // The VMM said no: 1, with its reason.
    #[rustfmt::skip]
    let refused: &[(&[&str], &str)] = &[
        (&["balloon", "set", "4G"], "larger than guest memory"),
        (&["balloon", "stats"], "--balloon stats"),
    ];
    for (args, words) in refused {
        let args = [*args, &["--api-sock", sock][..]].concat();
        expect_status(&args, None, exit_status::FAILED, words);
    }
    let bare = Harness::new(None);
    let args = [
        "--api-sock",
        bare.socket.to_str().unwrap(),
        "balloon",
        "get",
    ];
    expect_status(&args, None, exit_status::FAILED, "HTTP 409");

    // The command line is wrong: 2, and nothing is sent.
    let args = ["balloon", "set", "512", "--api-sock", sock];
    expect_status(&args, None, exit_status::USAGE, "did you mean 512M?");
    expect_status(&["vm", "info"], None, exit_status::USAGE, API_SOCK_ENV);
    assert!(h.balloon().changes().is_empty());

    // No VMM to ask: 69.
    let dir = test_dir();
    let missing = dir.as_path().join("missing.sock");
    let missing = missing.to_str().unwrap();
    let args = ["vm", "info", "--api-sock", missing];
    expect_status(&args, None, exit_status::UNREACHABLE, "no API socket at");
    let stale = dir.as_path().join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    let args = ["--api-sock", stale.to_str().unwrap(), "vm", "info"];
    expect_status(
        &args,
        None,
        exit_status::UNREACHABLE,
        "nothing is listening",
    );
    let stuck = dir.as_path().join("stuck.sock");
    let _stuck = UnixListener::bind(&stuck).unwrap();
    let args = [
        "--timeout",
        "1",
        "--api-sock",
        stuck.to_str().unwrap(),
        "vm",
        "info",
    ];
    expect_status(
        &args,
        None,
        exit_status::UNREACHABLE,
        "did not answer within 1 second",
    );
}

#[test]
fn ctl_reads_the_socket_from_the_environment_and_the_flag_wins() {
    let h = Harness::new(Some(all_features()));
    let out = expect_status(&["balloon", "set", "8M"], Some(&h.socket), 0, "");
    assert_eq!(out, "balloon target set to 8 MiB\n");
    let dir = test_dir();
    let elsewhere = dir.as_path().join("elsewhere.sock");
    let args = [
        "balloon",
        "set",
        "16M",
        "--api-sock",
        h.socket.to_str().unwrap(),
    ];
    expect_status(&args, Some(&elsewhere), 0, "");
    expect_status(
        &["vm", "info"],
        Some(&elsewhere),
        exit_status::UNREACHABLE,
        "elsewhere.sock",
    );
    assert_eq!(
        h.balloon().changes(),
        ["set_target_pages(2048)", "set_target_pages(4096)"]
    );
}

/// A VMM whose queue of waiting connections is full is reported at once, not waited for.
#[test]
fn ctl_does_not_wait_for_a_vmm_that_takes_no_connections() {
    let dir = test_dir();
    let path = dir.as_path().join("full.sock");
    let listener = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
    listener.bind(&SockAddr::unix(&path).unwrap()).unwrap();
    // A backlog of 0 holds one waiting connection; this one fills it.
    listener.listen(0).unwrap();
    let _waiting = UnixStream::connect(&path).unwrap();
    let args = ["--api-sock", path.to_str().unwrap(), "vm", "info"];
    expect_status(
        &args,
        None,
        exit_status::UNREACHABLE,
        "not taking connections",
    );
}

#[test]
fn ctl_metrics_prints_the_text_as_served() {
    let h = Harness::new(Some(all_features()));
    let out = ctl_ok(&h.socket, &["metrics"]);
    assert!(
        out.contains("# TYPE vmm_balloon_actual_bytes gauge\n"),
        "{out}"
    );
    assert!(out.ends_with('\n'));
    // Text for Prometheus, not JSON: the same with --json.
    let json = ctl_ok(&h.socket, &["--json", "metrics"]);
    assert!(json.starts_with("# HELP "), "{json}");
}
