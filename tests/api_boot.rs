//! Boot tests of the API: a running guest resized and watched through the socket, with
//! raw HTTP (what `curl --unix-socket` sends) and with `vmm ctl`, and stopped with
//! `Shutdown`. `#[ignore]`d like every boot test; `scripts/test.sh` runs them.

mod common;

use std::path::{Path, PathBuf};

use common::http::{field, get_json, patch, request};
use common::{scaled, wait_until, GuestVm, EXIT_TIMEOUT, PAGES_PER_MIB, RESIZE_TIMEOUT};

/// The lock file a running vmm holds next to its socket.
fn lock_of(sock: &Path) -> PathBuf {
    let mut lock = sock.as_os_str().to_owned();
    lock.push(".lock");
    PathBuf::from(lock)
}

fn ctl_ok(vm: &mut GuestVm, args: &[&str]) -> String {
    let out = vm.ctl(args);
    assert!(
        out.status.success(),
        "vmm ctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "boots a guest: run through scripts/test.sh"]
fn resize_a_running_guest_through_the_socket_then_shut_it_down() {
    let mut vm = GuestVm::builder()
        .mem("1G")
        .cpus(2)
        .balloon("stats=1,page-reporting")
        .api_sock()
        .arg("--id")
        .arg("api-boot-1")
        .boot();
    let sock = vm.api_sock().to_path_buf();
    assert!(lock_of(&sock).is_file(), "no lock next to the socket");

    let info = get_json(&sock, "/vm");
    assert_eq!(field(&info, "vcpus"), 2);
    assert_eq!(field(&info, "memory_mib"), 1024);
    assert_eq!(info["state"], "Running");
    // Firecracker's read routes show what the command line asked for.
    let instance = get_json(&sock, "/");
    assert_eq!(instance["id"], "api-boot-1");
    assert_eq!(instance["state"], "Running");
    assert_eq!(instance["app_name"], "vmm");
    let machine = get_json(&sock, "/machine-config");
    assert_eq!(field(&machine, "vcpu_count"), 2);
    assert_eq!(field(&machine, "mem_size_mib"), 1024);
    let full_total = vm.meminfo_kib("MemTotal");

    // curl -X PATCH /balloon -d '{"amount_mib": 300}'
    patch(&sock, "/balloon", "{\"amount_mib\": 300}");
    wait_until(scaled(RESIZE_TIMEOUT), "actual_mib to follow", || {
        (field(&get_json(&sock, "/balloon"), "actual_mib") == 300).then_some(())
    });
    assert_eq!(full_total - vm.meminfo_kib("MemTotal"), 300 * 1024);

    // A bad request changes nothing.
    let answer = request(&sock, "PATCH", "/balloon", Some("{\"amount_mib\": 4096}"));
    let body = answer.text();
    assert_eq!(answer.status, 400, "{body}");
    assert!(body.contains("fault_message"), "{body}");
    assert_eq!(field(&get_json(&sock, "/balloon"), "amount_mib"), 300);

    // The same through the client.
    assert!(ctl_ok(&mut vm, &["balloon", "set", "100M"]).contains("100 MiB"));
    wait_until(
        scaled(RESIZE_TIMEOUT),
        "the client's target to be reached",
        || {
            let json = ctl_ok(&mut vm, &["--json", "balloon", "get"]);
            let balloon: serde_json::Value = serde_json::from_str(&json).ok()?;
            (field(&balloon, "actual_mib") == 100).then_some(())
        },
    );
    assert_eq!(full_total - vm.meminfo_kib("MemTotal"), 100 * 1024);

    // Statistics through the client match the guest.
    let total_bytes = vm.meminfo_kib("MemTotal") * 1024;
    wait_until(
        scaled(RESIZE_TIMEOUT),
        "statistics to show the resize",
        || {
            let json = ctl_ok(&mut vm, &["--json", "balloon", "stats"]);
            let stats: serde_json::Value = serde_json::from_str(&json).ok()?;
            (stats["total_memory"].as_u64() == Some(total_bytes)
                && field(&stats, "actual_mib") == 100
                && field(&stats, "target_pages") == u64::from(100 * PAGES_PER_MIB))
            .then_some(())
        },
    );
    let human = ctl_ok(&mut vm, &["balloon", "stats"]);
    assert!(human.contains("total memory"), "{human}");

    // PUT /actions {"action_type": "Shutdown"}: vmm exits 0 and removes its socket.
    let answer = request(
        &sock,
        "PUT",
        "/actions",
        Some("{\"action_type\": \"Shutdown\"}"),
    );
    assert_eq!(answer.status, 204, "{}", answer.text());
    let exit = vm.wait_exit(EXIT_TIMEOUT);
    assert!(exit.success(), "vmm exited with {exit}");
    assert!(!sock.exists(), "the API socket outlived vmm");
    assert!(!lock_of(&sock).exists(), "the socket's lock outlived vmm");
}

#[test]
#[ignore = "boots a guest: run through scripts/test.sh"]
fn a_guest_without_the_balloon_driver_never_blocks_the_api() {
    // The driver is left out: the device is there, nobody answers it.
    let mut vm = GuestVm::builder()
        .mem("512M")
        .balloon("stats")
        .cmdline("vmmtest.nomodules=virtio_balloon")
        .api_sock()
        .boot();
    let sock = vm.api_sock().to_path_buf();
    vm.run_ok("! test -e /sys/bus/virtio/drivers/virtio_balloon");
    patch(&sock, "/balloon", "{\"amount_mib\": 64}");
    let balloon = get_json(&sock, "/balloon");
    assert_eq!(field(&balloon, "amount_mib"), 64);
    assert_eq!(field(&balloon, "actual_mib"), 0);
    assert_eq!(balloon["driver_ready"], false);
    let stats = get_json(&sock, "/balloon/statistics");
    assert_eq!(field(&stats, "target_mib"), 64);
    assert!(stats.get("free_memory").is_none(), "no report yet: {stats}");
    let answer = request(
        &sock,
        "PUT",
        "/actions",
        Some("{\"action_type\": \"Shutdown\"}"),
    );
    assert_eq!(answer.status, 204);
    assert!(vm.wait_exit(EXIT_TIMEOUT).success());
}

/// SIGTERM ends vmm the orderly way: the guest stops, the exit status says which signal
/// (128 + 15), and the API socket is removed.
#[test]
#[ignore = "boots a guest: run through scripts/test.sh"]
fn a_termination_signal_ends_vmm_and_removes_the_socket() {
    let mut vm = GuestVm::builder().api_sock().boot();
    let sock = vm.api_sock().to_path_buf();
    assert_eq!(field(&get_json(&sock, "/vm"), "vcpus"), 1);
    let pid = libc::pid_t::try_from(vm.pid()).expect("a pid fits pid_t");
    // SAFETY: kill(2) with a valid signal number; the pid is our own running child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let exit = vm.wait_exit(EXIT_TIMEOUT);
    assert_eq!(
        exit.code(),
        Some(128 + libc::SIGTERM),
        "vmm exited with {exit}"
    );
    assert!(!sock.exists(), "the API socket outlived vmm");
    assert!(!lock_of(&sock).exists(), "the socket's lock outlived vmm");
}
