//! The panic hook of `vmm::lifecycle::fail_stop`: a panic on any thread stops the running
//! VM with `VmmPanic`, naming the thread, and only the first panic counts.
//!
//! A panic hook is process-wide (and vmm's prints nothing), so the checks run in a child
//! process of this test binary, which reports what it saw on stdout for the parent to
//! check.

use std::process::Command;
use std::sync::Arc;

use vmm::lifecycle::{fail_stop, Lifecycle, StopReason};

const CHILD: &str = "VMM_FAIL_STOP_TEST_CHILD";

/// In the child: two threads panic one after the other; prints the stop reason and the
/// first panic.
fn child() {
    fail_stop::install_panic_hook();
    let lifecycle = Arc::new(Lifecycle::new().expect("a lifecycle"));
    fail_stop::stop_on_panic(&lifecycle);
    for name in ["vcpu7", "vmm-api"] {
        let joined = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || panic!("boom on {}\nsecond line", name))
            .expect("spawn")
            .join();
        println!("JOINED-WITH-PANIC={}", joined.is_err());
    }
    println!("STOPPING={}", lifecycle.is_stopping());
    match lifecycle.reason() {
        Some(StopReason::VmmPanic(what)) => println!("REASON=VmmPanic:{what}"),
        other => println!("REASON={other:?}"),
    }
    println!("FIRST={}", fail_stop::first_panic().unwrap_or_default());
    println!(
        "EXIT-CODE={}",
        lifecycle.reason().map_or(0, |r| r.exit_code())
    );
}

#[test]
fn a_panic_on_any_thread_stops_the_vm_and_the_first_one_counts() {
    if std::env::var_os(CHILD).is_some() {
        child();
        return;
    }
    let out = Command::new(std::env::current_exe().expect("the test binary"))
        .args([
            "--exact",
            "a_panic_on_any_thread_stops_the_vm_and_the_first_one_counts",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let value = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in the child's output:\n{stdout}"))
            .to_string()
    };
    assert!(out.status.success(), "the child failed:\n{stdout}");
    assert_eq!(value("STOPPING="), "true");
    let first = value("FIRST=");
    assert!(
        first.starts_with("thread 'vcpu7' panicked at tests/fail_stop.rs:")
            && first.ends_with(": boom on vcpu7\\nsecond line"),
        "{first}"
    );
    assert_eq!(value("REASON="), format!("VmmPanic:{first}"));
    assert_eq!(value("EXIT-CODE="), "5");
    assert_eq!(stdout.matches("JOINED-WITH-PANIC=true").count(), 2);
    // The hook replaces the standard one, which would print each panic on stderr.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
