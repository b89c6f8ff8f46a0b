//! Steps the balloon boot tests share: resizing the balloon and searching the guest's
//! kernel log.

use super::http::{field, get_json, patch};
use super::{scaled, wait_until, GuestVm, RESIZE_TIMEOUT};

/// Sets the balloon target through the API and waits until the guest's `actual` matches.
pub fn resize_balloon(vm: &GuestVm, mib: u64) {
    let sock = vm.api_sock().to_path_buf();
    patch(&sock, "/balloon", &format!("{{\"amount_mib\": {mib}}}"));
    wait_until(
        scaled(RESIZE_TIMEOUT),
        &format!("the balloon to reach {mib} MiB"),
        || (field(&get_json(&sock, "/balloon"), "actual_mib") == mib).then_some(()),
    );
}

/// Lines of the guest's kernel log with any of `patterns`. The guest filters its log
/// itself: the whole log is some 50 KiB over the serial port, and under nested KVM such
/// bursts of port writes and interrupts are where guests were seen to stall or
/// triple-fault (docs/testing.md).
pub fn kernel_log_lines(vm: &mut GuestVm, patterns: &[&str]) -> String {
    let args: String = patterns.iter().map(|p| format!(" -e '{p}'")).collect();
    let found = vm.run(&format!("dmesg | grep -F{args}"));
    match found.status {
        0 | 1 => found.output.trim().to_string(),
        status => vm.fail(&format!(
            "searching the kernel log failed with {status}: {}",
            found.output
        )),
    }
}
