//! Boot tests: real guests booted by the vmm binary on KVM.
//!
//! Each test is `#[ignore]`d so that a plain `cargo test` does not claim to have run it;
//! `scripts/test.sh` runs them with `--ignored`, directly where KVM works and inside a
//! nested KVM host where it does not (docs/testing.md). Without the guest kernel and
//! initramfs in the environment they fail; they never pass vacuously.

mod common;

use common::{GuestVm, BOOT_TIMEOUT, EXIT_TIMEOUT};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};
use vmm::size::{GIB, KIB};

/// /proc/meminfo counts in KiB.
const GIB_IN_KIB: u64 = GIB / KIB;

#[test]
#[ignore = "boots a guest: run through scripts/test.sh"]
fn guest_reaches_init_from_initrd_with_extra_cmdline() {
    let marker = format!("vmmtest.marker={}", common::unique_token());
    // Reaching the ready marker means the kernel ran /init from the initramfs we passed.
    let mut vm = GuestVm::builder().cmdline(&marker).boot();

    let cmdline = vm.run_ok("cat /proc/cmdline");
    assert!(
        cmdline.split_whitespace().any(|arg| arg == marker),
        "{marker} missing from the guest's /proc/cmdline: {cmdline:?}"
    );
    // The console carries output and exit status both ways.
    let echoed = vm.run("echo first; echo second >&2; (exit 3)");
    assert_eq!(echoed.output, "first\nsecond\n");
    assert_eq!(echoed.status, 3);
}

#[test]
#[ignore = "boots a guest: run through scripts/test.sh"]
fn cpus_and_mem_flags_shape_the_guest() {
    let mut vm = GuestVm::builder().cpus(2).mem("1G").boot();

    assert_eq!(
        vm.run_ok("cat /sys/devices/system/cpu/online").trim(),
        "0-1"
    );
    assert_eq!(vm.run_ok("nproc").trim(), "2");

    // MemTotal is the RAM the guest was given less what the kernel keeps for itself
    // (its image, memmap, reserved firmware areas): a few percent of 1 GiB.
    let total = vm.meminfo_kib("MemTotal");
    assert!(
        total > GIB_IN_KIB * 9 / 10 && total <= GIB_IN_KIB,
        "MemTotal {total} kB does not match --mem 1G"
    );
}

#[test]
#[ignore = "boots a guest: run through scripts/test.sh"]
fn mem_beyond_the_4g_hole_is_usable() {
    let mut vm = GuestVm::builder().mem("5G").boot();

    let total = vm.meminfo_kib("MemTotal");
    assert!(
        total > GIB_IN_KIB * 9 / 2 && total <= 5 * GIB_IN_KIB,
        "MemTotal {total} kB does not match --mem 5G"
    );
    // Part of the RAM must sit above 4 GiB, where it went around the MMIO hole.
    let iomem = vm.run_ok("grep 'System RAM' /proc/iomem");
    let above_4g = iomem.lines().any(|line| {
        let start = line.trim().split('-').next().unwrap_or("");
        u64::from_str_radix(start, 16).is_ok_and(|s| s >= 1 << 32)
    });
    assert!(
        above_4g,
        "no System RAM above 4 GiB in /proc/iomem:\n{iomem}"
    );
    // The kernel hands out the highest zone first, so this memory lands above 4 GiB;
    // the check reads back every word written.
    vm.run_ok("memcheck fill 256 >/tmp/memcheck.log 2>&1 &");
    let filled = vm.run_with_timeout(
        "until grep -q FILLED /tmp/memcheck.log; do sleep 1; done",
        BOOT_TIMEOUT,
    );
    assert_eq!(filled.status, 0, "memcheck did not fill its memory");
    let verdict = vm.run_with_timeout("memcheck verify", BOOT_TIMEOUT);
    assert_eq!(verdict.output.trim(), "MEMCHECK OK mib=256");
    assert_eq!(verdict.status, 0);
}

#[test]
#[ignore = "boots a guest: run through scripts/test.sh"]
fn guest_poweroff_ends_vmm_with_success() {
    let mut vm = GuestVm::builder().boot();
    let status = vm.poweroff();
    if !status.success() {
        vm.fail(&format!(
            "after the guest's poweroff the vmm ended with {status}"
        ));
    }
}

#[test]
#[ignore = "boots a guest: run through scripts/test.sh"]
fn guest_reboot_ends_vmm_with_success() {
    let mut vm = GuestVm::builder().boot();
    vm.send_line("reboot -f");
    let status = vm.wait_exit(EXIT_TIMEOUT);
    if !status.success() {
        vm.fail(&format!(
            "after the guest's reboot the vmm ended with {status}"
        ));
    }
}

/// Not a VMM test: shows that this test binary, as built and deployed by the harness (static,
/// inside the nested KVM host too), can create a VM and run guest code, so a failing boot
/// test points at the VMM and not at the machine.
#[test]
#[ignore = "needs a usable /dev/kvm: run through scripts/test.sh"]
fn harness_kvm_runs_guest_code() {
    const MEM_SIZE: usize = 0x4000;
    const CODE_ADDR: u64 = 0x1000;
    // Real mode: mov al, 0x42; out 0x10, al; hlt
    const CODE: [u8; 5] = [0xb0, 0x42, 0xe6, 0x10, 0xf4];

    let kvm = Kvm::new().expect("cannot open /dev/kvm");
    let vm = kvm.create_vm().expect("KVM_CREATE_VM failed");
    // SAFETY: an anonymous private mapping; the result is checked before use.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            MEM_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_ANONYMOUS | libc::MAP_PRIVATE,
            -1,
            0,
        )
    };
    assert_ne!(mem, libc::MAP_FAILED, "cannot map guest memory");
    // SAFETY: `mem` is a live mapping of MEM_SIZE bytes and CODE fits well inside it.
    unsafe { std::ptr::copy_nonoverlapping(CODE.as_ptr(), mem.cast::<u8>(), CODE.len()) };
    let region = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: CODE_ADDR,
        memory_size: MEM_SIZE as u64,
        userspace_addr: mem as u64,
        flags: 0,
    };
    // SAFETY: the mapping outlives the VM: it is unmapped only after `vm` is dropped below.
    unsafe { vm.set_user_memory_region(region) }.expect("KVM_SET_USER_MEMORY_REGION failed");

    let mut vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU failed");
    let mut sregs = vcpu.get_sregs().expect("KVM_GET_SREGS failed");
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).expect("KVM_SET_SREGS failed");
    let mut regs = vcpu.get_regs().expect("KVM_GET_REGS failed");
    regs.rip = CODE_ADDR;
    regs.rflags = 2;
    vcpu.set_regs(&regs).expect("KVM_SET_REGS failed");

    match vcpu.run().expect("KVM_RUN failed") {
        VcpuExit::IoOut(port, data) => assert_eq!((port, data), (0x10, &[0x42u8][..])),
        other => panic!("expected the guest's port write, got {other:?}"),
    }
    match vcpu.run().expect("KVM_RUN failed") {
        VcpuExit::Hlt => {}
        other => panic!("expected the guest to halt, got {other:?}"),
    }
    drop(vcpu);
    drop(vm);
    // SAFETY: nothing refers to the mapping any more.
    unsafe { libc::munmap(mem, MEM_SIZE) };
}
