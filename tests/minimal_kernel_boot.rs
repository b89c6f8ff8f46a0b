//! Boot tests of the minimal guest kernel (`scripts/guest-kernel.sh --minimal`): Debian's
//! linux-source-6.1 with everything built in and no modules, which finds virtio-mmio
//! devices through the `virtio_mmio.device=` entries the vmm puts on the command line,
//! the way Firecracker-style minimal kernels do. It boots with ACPI, and with `acpi=off`
//! from the MP table. `#[ignore]`d like every boot test; `scripts/boot-tests.sh minimal`
//! runs them (docs/testing.md).

mod common;

use std::path::PathBuf;

use common::guest_checks::resize_balloon;
use common::{GuestVm, GuestVmBuilder};

/// The platform device the kernel makes of the first `virtio_mmio.device=` entry.
const CMDLINE_DEVICE: &str = "/sys/devices/virtio-mmio-cmdline/virtio-mmio.0";
/// The platform device the kernel makes of the first virtio-mmio device in the DSDT.
const ACPI_DEVICE: &str = "/sys/devices/platform/LNRO0005:00";

/// The minimal kernel from `VMM_GUEST_MINIMAL_KERNEL`; panics if it is not set.
fn minimal_kernel() -> PathBuf {
    let Some(path) = std::env::var_os("VMM_GUEST_MINIMAL_KERNEL") else {
        panic!(
            "VMM_GUEST_MINIMAL_KERNEL is not set: these boot tests need the minimal kernel; \
             run them through scripts/boot-tests.sh (see docs/testing.md)"
        );
    };
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "VMM_GUEST_MINIMAL_KERNEL={} is not a file (build it with scripts/guest-kernel.sh --minimal)",
        path.display()
    );
    path
}

/// Two vCPUs, so the firmware tables have more than the boot CPU to describe, and a
/// balloon the test resizes through the API.
fn minimal_guest() -> GuestVmBuilder {
    GuestVm::builder()
        .kernel(minimal_kernel())
        .cpus(2)
        .mem("1G")
        .balloon("page-reporting")
        .api_sock()
}

/// The balloon is the guest's only virtio device and the built-in driver bound to it;
/// the kernel made a platform device of the `virtio_mmio.device=` entry. Returns the
/// virtio device's path in sysfs, which tells which description of the device it came from.
fn assert_one_balloon_bound(vm: &mut GuestVm) -> String {
    // Nothing could have been loaded: the kernel has no module support.
    vm.run_ok("test ! -e /proc/modules");
    let cmdline = vm.run_ok("cat /proc/cmdline");
    assert!(
        cmdline
            .split_whitespace()
            .any(|arg| arg.starts_with("virtio_mmio.device=")),
        "no virtio_mmio.device= entry on the guest's command line: {cmdline:?}"
    );
    vm.run_ok(&format!("test -d {CMDLINE_DEVICE}"));
    assert_eq!(vm.run_ok("ls /sys/bus/virtio/devices").trim(), "virtio0");
    let id = vm.run_ok("cat /sys/bus/virtio/devices/virtio0/device");
    assert_eq!(id.trim(), "0x0005", "virtio0 is not a balloon");
    vm.run_ok("test -e /sys/bus/virtio/drivers/virtio_balloon/virtio0");
    vm.run_ok("readlink -f /sys/bus/virtio/devices/virtio0")
        .trim()
        .to_string()
}

/// Inflating takes exactly the balloon's size out of the guest's MemTotal; deflating
/// gives it back.
fn assert_balloon_resizes(vm: &mut GuestVm) {
    let full = vm.meminfo_kib("MemTotal");
    resize_balloon(vm, 256);
    let inflated = vm.meminfo_kib("MemTotal");
    assert_eq!(
        full - inflated,
        256 * 1024,
        "MemTotal {full} kB → {inflated} kB"
    );
    resize_balloon(vm, 0);
    assert_eq!(vm.meminfo_kib("MemTotal"), full);
}

fn assert_poweroff_succeeds(vm: &mut GuestVm) {
    let status = vm.poweroff();
    if !status.success() {
        vm.fail(&format!(
            "after the guest's poweroff the vmm ended with {status}"
        ));
    }
}

/// With ACPI the device is described twice, in the DSDT and on the command line. The
/// kernel creates ACPI devices first (at subsys_initcall, the command-line ones at
/// device_initcall), so the driver binds the DSDT's one and the command-line copy fails to
/// claim the same window: one balloon, never two. The CPUs come from the MADT, and power-off
/// goes through `\_S5_`.
#[test]
#[ignore = "boots a guest: run through scripts/test.sh"]
fn minimal_kernel_with_acpi_binds_one_balloon() {
    let mut vm = minimal_guest().boot();
    vm.run_ok("test -d /sys/firmware/acpi/tables");
    assert_eq!(
        vm.run_ok("cat /sys/devices/system/cpu/online").trim(),
        "0-1"
    );
    let device = assert_one_balloon_bound(&mut vm);
    assert_eq!(device, format!("{ACPI_DEVICE}/virtio0"));
    vm.run_ok(&format!("test ! -e {CMDLINE_DEVICE}/driver"));
    assert_balloon_resizes(&mut vm);
    assert_poweroff_succeeds(&mut vm);
}

/// With `acpi=off` the kernel finds both vCPUs in the MP table and the balloon only on the
/// command line; powering off halts the guest, which ends the vmm just as well.
#[test]
#[ignore = "boots a guest: run through scripts/test.sh"]
fn minimal_kernel_without_acpi_uses_the_mp_table_and_the_command_line() {
    let mut vm = minimal_guest().cmdline("acpi=off").boot();
    vm.run_ok("test ! -e /sys/firmware/acpi");
    assert_eq!(
        vm.run_ok("cat /sys/devices/system/cpu/online").trim(),
        "0-1"
    );
    let device = assert_one_balloon_bound(&mut vm);
    assert_eq!(device, format!("{CMDLINE_DEVICE}/virtio0"));
    assert_balloon_resizes(&mut vm);
    assert_poweroff_succeeds(&mut vm);
}
