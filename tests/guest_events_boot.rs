//! Boot tests of what happens to a running guest from outside or from its kernel: pausing
//! and resuming it, a kernel panic reported through pvpanic, and Ctrl+Alt+Del typed on its
//! keyboard. `#[ignore]`d like every boot test; `scripts/test.sh` runs them.

mod common;

use std::os::unix::net::UnixStream;
use std::thread;
use std::time::{Duration, Instant};

use common::http::{field, get_json, patch, request};
use common::{
    scaled, wait_until, GuestVm, BOOT_TIMEOUT, COMMAND_TIMEOUT, EXIT_TIMEOUT, READY_MARKER,
    RESIZE_TIMEOUT,
};

/// How long a paused guest is watched for output it should not make.
const PAUSE_WINDOW: Duration = Duration::from_secs(3);
/// The console counts as settled after this long without new output: what the guest wrote
/// before the pause has then been read from the pipe.
const SETTLE: Duration = Duration::from_secs(2);

fn ctl_ok(vm: &mut GuestVm, args: &[&str]) -> String {
    let out = vm.ctl(args);
    assert!(
        out.status.success(),
        "vmm ctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until the console has not grown for [`SETTLE`], and returns it. A guest that keeps
/// printing (one that is not paused) fails the test.
fn settled_console(vm: &mut GuestVm) -> String {
    let deadline = Instant::now() + scaled(COMMAND_TIMEOUT);
    let mut seen = vm.console();
    let mut since = Instant::now();
    while since.elapsed() < SETTLE {
        if Instant::now() > deadline {
            vm.fail("the console never went quiet: the paused guest kept printing");
        }
        thread::sleep(Duration::from_millis(100));
        let now = vm.console();
        if now != seen {
            seen = now;
            since = Instant::now();
        }
    }
    seen
}

/// Checks that a paused guest prints nothing for [`PAUSE_WINDOW`]; returns the console.
fn assert_silent_while_paused(vm: &mut GuestVm, when: &str) -> String {
    let settled = settled_console(vm);
    thread::sleep(PAUSE_WINDOW);
    let later = vm.console();
    if later != settled {
        vm.fail(&format!(
            "the guest printed while paused ({when}): {:?}",
            &later[settled.len().min(later.len())..]
        ));
    }
    settled
}

/// The highest `TICK n` the guest's counter printed.
fn last_tick(console: &str) -> u64 {
    console
        .lines()
        .filter_map(|line| line.trim().strip_prefix("TICK ")?.parse().ok())
        .max()
        .unwrap_or(0)
}

/// Pause and resume, grouped in one boot: paused while it boots; a counter that stops while
/// paused and goes on after; the API and the balloon answering while paused, with a target
/// set meanwhile reached after the resume; pausing twice; and a shutdown while paused.
#[test]
#[ignore = "boots a guest: run through scripts/test.sh"]
fn a_paused_guest_stops_and_goes_on_when_resumed() {
    let mut vm = GuestVm::builder().balloon("").api_sock().spawn();
    let sock = vm.api_sock().to_path_buf();

    // Paused as soon as the API answers, while the guest boots (or before it starts).
    wait_until(
        scaled(BOOT_TIMEOUT),
        "the API socket to take connections",
        || UnixStream::connect(&sock).ok().map(drop),
    );
    patch(&sock, "/vm", r#"{"state": "Paused"}"#);
    assert_eq!(get_json(&sock, "/vm")["state"], "Paused");
    assert_silent_while_paused(&mut vm, "during boot");
    assert_eq!(ctl_ok(&mut vm, &["vm", "resume"]), "the VM is running\n");
    vm.wait_for(READY_MARKER, BOOT_TIMEOUT);
    assert_eq!(get_json(&sock, "/vm")["state"], "Running");

    // From here on the console carries the counter, so no more guest commands.
    vm.run_ok("(i=0; while :; do i=$((i+1)); echo \"TICK $i\"; usleep 200000; done) &");
    // The counter only grows, so the first "TICK n" on the console is tick n itself.
    vm.wait_for("TICK 3", COMMAND_TIMEOUT);

    for round in 1..=2 {
        if round == 1 {
            patch(&sock, "/vm", r#"{"state": "Paused"}"#);
        } else {
            assert_eq!(ctl_ok(&mut vm, &["vm", "pause"]), "the VM is paused\n");
        }
        // Pausing again changes nothing.
        patch(&sock, "/vm", r#"{"state": "Paused"}"#);
        assert_eq!(get_json(&sock, "/vm")["state"], "Paused");
        if round == 1 {
            // The balloon API answers; the paused guest cannot follow the new target yet.
            patch(&sock, "/balloon", r#"{"amount_mib": 64}"#);
            let balloon = get_json(&sock, "/balloon");
            assert_eq!(field(&balloon, "amount_mib"), 64);
            assert_eq!(field(&balloon, "actual_mib"), 0);
        }
        let console = assert_silent_while_paused(&mut vm, &format!("round {round}"));
        let stopped_at = last_tick(&console);
        assert!(stopped_at >= 3, "no counter on the console:\n{console}");

        patch(&sock, "/vm", r#"{"state": "Resumed"}"#);
        assert_eq!(get_json(&sock, "/vm")["state"], "Running");
        vm.wait_for(&format!("TICK {}", stopped_at + 2), COMMAND_TIMEOUT);
    }

    // The configuration interrupt raised while paused was not lost: the guest's driver
    // inflated the balloon to the target once it ran again.
    wait_until(
        scaled(RESIZE_TIMEOUT),
        "the balloon set while paused to be inflated",
        || (field(&get_json(&sock, "/balloon"), "actual_mib") == 64).then_some(()),
    );

    // A paused VM still shuts down.
    patch(&sock, "/vm", r#"{"state": "Paused"}"#);
    let answer = request(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "Shutdown"}"#),
    );
    assert_eq!(answer.status, 204, "{}", answer.text());
    let exit = vm.wait_exit(EXIT_TIMEOUT);
    assert!(exit.success(), "vmm exited with {exit}");
    assert!(!sock.exists(), "the API socket outlived vmm");
}

/// A kernel panic ends vmm with status 3 and says so, although `panic=1` (on every
/// guest's command line) would have the kernel reset the machine: the pvpanic event comes
/// first. Without pvpanic that reset would end vmm with status 0.
#[test]
#[ignore = "boots a guest: run through scripts/test.sh"]
fn a_guest_kernel_panic_ends_vmm_with_status_3() {
    let mut vm = GuestVm::builder().boot();
    // The pvpanic-mmio driver bound the device the DSDT describes, and read from the port
    // the events it may send: PANICKED and CRASH_LOADED.
    let capability = vm.run_ok("cat /sys/bus/platform/drivers/pvpanic-mmio/QEMU0001:00/capability");
    assert_eq!(capability.trim(), "3");
    vm.expect_guest_panic();
    vm.send_line("echo c >/proc/sysrq-trigger");
    let exit = vm.wait_exit(EXIT_TIMEOUT);
    let stderr = vm.vmm_stderr();
    assert_eq!(
        exit.code(),
        Some(3),
        "vmm exited with {exit}; stderr:\n{stderr}"
    );
    assert!(
        stderr
            .lines()
            .any(|line| line == "vmm: the guest panicked: pvpanic reported PANICKED"),
        "no panic line on stderr:\n{stderr}"
    );
    assert!(
        vm.console().contains("Kernel panic - not syncing"),
        "the guest did not panic?"
    );
}

/// `SendCtrlAltDel` types the keys on the guest's i8042 keyboard; the guest's init (told
/// by `/proc/sys/kernel/ctrl-alt-del` = 0 to get SIGINT rather than an immediate reboot)
/// prints its marker and powers off, and vmm exits 0.
#[test]
#[ignore = "boots a guest: run through scripts/test.sh"]
fn ctrl_alt_del_shuts_the_guest_down_in_order() {
    let mut vm = GuestVm::builder().api_sock().boot();
    let sock = vm.api_sock().to_path_buf();
    // Linux found the controller and its keyboard through the DSDT, with no complaint
    // about a missing AUX port. (Without a legacy PIC, Linux numbers the interrupt of
    // GSI 1 as it likes; /proc/interrupts shows the IOAPIC pin.)
    let log = vm.run_ok("dmesg | grep -iE 'i8042|serio|keyboard|aux'");
    for expected in [
        "i8042: PNP: PS/2 Controller [PNP0303:PS2K] at 0x60,0x64",
        "serio: i8042 KBD port at 0x60,0x64 irq",
        "input: AT Translated Set 2 keyboard",
    ] {
        assert!(log.contains(expected), "{expected:?} not in:\n{log}");
    }
    let interrupts = vm.run_ok("grep i8042 /proc/interrupts");
    assert!(
        interrupts.contains("IO-APIC") && interrupts.contains(" 1-edge "),
        "the keyboard is not on IOAPIC pin 1, edge-triggered:\n{interrupts}"
    );
    assert!(
        !log.contains("AUX"),
        "a complaint about the AUX port:\n{log}"
    );
    assert_eq!(vm.run_ok("cat /proc/sys/kernel/ctrl-alt-del").trim(), "0");

    let answer = request(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "SendCtrlAltDel"}"#),
    );
    assert_eq!(answer.status, 204, "{}", answer.text());
    vm.wait_for("VMMTEST-CTRL-ALT-DEL", COMMAND_TIMEOUT);
    let exit = vm.wait_exit(EXIT_TIMEOUT);
    assert!(exit.success(), "vmm exited with {exit}");
}
