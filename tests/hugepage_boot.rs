//! Boot tests of guests on huge pages (`--mem-backing hugetlb` and `thp`) with the
//! balloon and the stock Debian kernel: memory the guest frees (page reporting) or the
//! balloon takes (inflate) goes back to the host as whole 2 MiB pages, the guest's data
//! stays intact through it all, and deflate-on-oom still works. Like every boot test they
//! are `#[ignore]`d and run by `scripts/test.sh`; see docs/testing.md.
//!
//! Host memory is measured where it lives: for `hugetlb`, the host's pool (pages in use,
//! `HugePages_Total - HugePages_Free`, all of them the guest's: nothing else on a test
//! host uses hugetlb pages); for `thp`, the vmm's RSS, with `AnonHugePages` to show the
//! memory really is in huge pages.
//!
//! The host needs the pages: each test makes sure the pool has enough free 2 MiB pages
//! (raising `/proc/sys/vm/nr_hugepages` for its run if needed) or that transparent huge
//! pages are not `never` (nested L1 keeps them off for the other tests), and puts the
//! setting back afterwards. Changing them needs root, as in L1; `VMM_L1_HUGEPAGES`
//! reserves the pool when L1 boots instead.

mod common;

use std::time::Duration;

use common::guest_checks::{kernel_log_lines, resize_balloon};
use common::http::{field, get_json};
use common::{rss_bytes_of, scaled, wait_until, GuestVm};
use vmm::size::MIB;

/// How long freed memory may take to come back through reporting.
const RECLAIM_TIMEOUT: Duration = Duration::from_secs(120);
/// The guest: 1 GiB is 512 huge pages.
const GUEST_MIB: u64 = 1024;
const HUGE_PAGE: u64 = 2 * MIB;
/// Memory the guest's own activity (its shell, the kernel) may fault in or free between
/// two host measurements that should otherwise agree.
const NOISE: u64 = 16 * MIB;

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";
const THP_ENABLED: &str = "/sys/kernel/mm/transparent_hugepage/enabled";

/// A `/proc/meminfo` field of this (the host's) kernel: KiB, or a count of huge pages for
/// the `HugePages_` fields.
fn host_meminfo(name: &str) -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").expect("cannot read /proc/meminfo");
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /proc/meminfo"))
}

/// Free huge pages no mapping has reserved yet.
fn available_huge_pages() -> u64 {
    host_meminfo("HugePages_Free").saturating_sub(host_meminfo("HugePages_Rsvd"))
}

/// Keeps at least `pages` 2 MiB pages free in the host's hugetlb pool while it lives,
/// raising `nr_hugepages` if it must, and puts the old value back when dropped.
struct HugePagePool {
    raised_from: Option<u64>,
}

impl HugePagePool {
    fn with_free(pages: u64) -> HugePagePool {
        let available = available_huge_pages();
        if available >= pages {
            return HugePagePool { raised_from: None };
        }
        let total = host_meminfo("HugePages_Total");
        let wanted = total + (pages - available);
        if let Err(e) = std::fs::write(NR_HUGEPAGES, wanted.to_string()) {
            panic!(
                "the host has {available} free 2 MiB huge pages and this test needs {pages}; \
                 raising {NR_HUGEPAGES} to {wanted} failed ({e}): run as root, or reserve \
                 them first (VMM_L1_HUGEPAGES when nested)"
            );
        }
        let pool = HugePagePool {
            raised_from: Some(total),
        };
        let got = available_huge_pages();
        assert!(
            got >= pages,
            "asked the host for {wanted} huge pages in all and it found only {got} free: its \
             memory is too fragmented (reserve them at boot: VMM_L1_HUGEPAGES when nested)"
        );
        pool
    }

    /// Pages of the pool in use: the guest's, on a test host.
    fn in_use_bytes() -> u64 {
        (host_meminfo("HugePages_Total") - host_meminfo("HugePages_Free")) * HUGE_PAGE
    }
}

impl Drop for HugePagePool {
    fn drop(&mut self) {
        if let Some(total) = self.raised_from {
            // Best effort: a failure here leaves pages reserved, which only wastes memory.
            let _ = std::fs::write(NR_HUGEPAGES, total.to_string());
        }
    }
}

/// Makes sure `madvise(MADV_HUGEPAGE)` gets transparent huge pages while it lives: switches
/// THP from `never` to `madvise` if need be, and back when dropped.
struct ThpEnabled {
    was_never: bool,
}

impl ThpEnabled {
    fn for_madvise() -> ThpEnabled {
        let mode = std::fs::read_to_string(THP_ENABLED)
            .unwrap_or_else(|e| panic!("cannot read {THP_ENABLED} ({e}): no THP here"));
        if !mode.contains("[never]") {
            return ThpEnabled { was_never: false };
        }
        if let Err(e) = std::fs::write(THP_ENABLED, "madvise") {
            panic!("transparent huge pages are off ({THP_ENABLED}: {mode:?}) and switching them to madvise failed ({e}): run as root");
        }
        ThpEnabled { was_never: true }
    }
}

impl Drop for ThpEnabled {
    fn drop(&mut self) {
        if self.was_never {
            let _ = std::fs::write(THP_ENABLED, "never");
        }
    }
}

/// `AnonHugePages` of process `pid`, in bytes.
fn anon_huge_pages_of(pid: u32) -> u64 {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("AnonHugePages:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// One of the two huge-page backings, and how to see its memory on the host.
#[derive(Clone, Copy, Debug)]
enum Backing {
    Hugetlb,
    Thp,
}

impl Backing {
    fn name(self) -> &'static str {
        match self {
            Backing::Hugetlb => "hugetlb",
            Backing::Thp => "thp",
        }
    }

    /// Host memory the guest holds now.
    fn host_bytes(self, vm: &GuestVm) -> u64 {
        match self {
            Backing::Hugetlb => HugePagePool::in_use_bytes(),
            Backing::Thp => rss_bytes_of(vm.pid()).unwrap_or(u64::MAX),
        }
    }

    /// What the host must provide for the guest's run.
    fn prepare(self) -> (Option<HugePagePool>, Option<ThpEnabled>) {
        match self {
            // All of guest RAM is reserved when the vmm starts.
            Backing::Hugetlb => (Some(HugePagePool::with_free(GUEST_MIB / 2)), None),
            Backing::Thp => (None, Some(ThpEnabled::for_madvise())),
        }
    }

    fn boot(self, balloon: &str) -> GuestVm {
        let vm = GuestVm::builder()
            .mem(&format!("{GUEST_MIB}M"))
            .balloon(balloon)
            .arg("--mem-backing")
            .arg(self.name())
            .api_sock()
            .boot();
        let info = get_json(vm.api_sock(), "/balloon");
        assert_eq!(info["memory_backing"], self.name(), "{info}");
        assert_eq!(field(&info, "host_page_size_kib"), 2048, "{info}");
        vm
    }
}

fn partial_huge_pages(vm: &GuestVm) -> u64 {
    field(&get_json(vm.api_sock(), "/balloon"), "partial_huge_pages")
}

/// Fills `mib` MiB of tmpfs in the guest; [`free_tmpfs`] deletes it again.
fn fill_tmpfs(vm: &mut GuestVm, mib: u64) {
    vm.run_ok("mkdir -p /mnt/scratch && mount -t tmpfs -o size=90% tmpfs /mnt/scratch");
    vm.run_ok(&format!(
        "dd if=/dev/zero of=/mnt/scratch/fill bs=1M count={mib} 2>/dev/null"
    ));
}

fn free_tmpfs(vm: &mut GuestVm) {
    vm.run_ok("rm /mnt/scratch/fill && umount /mnt/scratch");
}

/// Starts a memcheck filler of `mib` MiB keeping its state in `dir`, and waits until its
/// pattern is written.
fn start_memcheck(vm: &mut GuestVm, dir: &str, mib: u64) {
    vm.run_ok(&format!(
        "mkdir -p {dir} && MEMCHECK_DIR={dir} memcheck fill {mib} >{dir}/log 2>&1 &"
    ));
    let filled = vm.run_with_timeout(
        // A subshell: `exit` in the command itself would end the guest's shell.
        &format!("(for i in $(seq 600); do grep -q FILLED {dir}/log && exit 0; sleep 1; done; cat {dir}/log; exit 1)"),
        scaled(Duration::from_secs(700)),
    );
    assert_eq!(
        filled.status, 0,
        "memcheck never filled its memory: {}",
        filled.output
    );
}

fn assert_memcheck_intact(vm: &mut GuestVm, dir: &str, mib: u64, when: &str) {
    let verdict = vm.run(&format!("MEMCHECK_DIR={dir} memcheck verify"));
    assert_eq!(
        (verdict.status, verdict.output.trim()),
        (0, format!("MEMCHECK OK mib={mib}").as_str()),
        "guest memory changed under the balloon ({when})"
    );
}

/// Waits until the guest's host memory holds still (page reporting works in passes a
/// couple of seconds apart) and returns it.
fn wait_until_settled(backing: Backing, vm: &GuestVm) -> u64 {
    let mut last = backing.host_bytes(vm);
    let mut still = 0;
    wait_until(scaled(RECLAIM_TIMEOUT), "host memory to settle", || {
        std::thread::sleep(Duration::from_secs(2));
        let now = backing.host_bytes(vm);
        still = if now.abs_diff(last) < 4 * MIB {
            still + 1
        } else {
            0
        };
        last = now;
        (still >= 3).then_some(now)
    })
}

fn mib(bytes: u64) -> u64 {
    bytes / MIB
}

/// Switches the guest's free page reporting off or back on. Linux reports free blocks of
/// at least `page_reporting_order` (9: 2 MiB on x86); no free block reaches order 11 (on
/// Linux 6.1, whose largest is order 10), so 11 stops reporting. A kernel that refuses
/// 11 fails the test here, loudly.
fn set_guest_reporting(vm: &mut GuestVm, on: bool) {
    let order = if on { 9 } else { 11 };
    vm.run_ok(&format!(
        "echo {order} > /sys/module/page_reporting/parameters/page_reporting_order"
    ));
}

/// Prints how long each phase of a test took (nested runs are slow; this says where).
struct Phases {
    backing: Backing,
    started: std::time::Instant,
}

impl Phases {
    fn done(&mut self, what: &str) {
        eprintln!(
            "{}: {what} took {:.0?}",
            self.backing.name(),
            self.started.elapsed()
        );
        self.started = std::time::Instant::now();
    }
}

/// One boot of a 1 GiB guest on `backing`, with page reporting and deflate-on-oom, checking
/// everything the balloon does with huge pages. Prints what came back at each step, so the
/// figures in docs/balloon.md can be measured again.
///
/// 1. Page reporting returns the memory the guest frees, as whole huge pages (with `thp`
///    the rest of guest memory stays in huge pages).
/// 2. With reporting switched off in the guest and its free memory resident on the host
///    (written and freed), inflating 256 MiB returns every huge page it completes: host
///    memory falls by 256 MiB less the partly ballooned huge pages the device reports.
///    The balloon gets order-0 pages from wherever the guest's allocator has them, so
///    not every huge page completes; the fraction that does is printed.
/// 3. With reporting on, inflating leaves no more resident than those partial huge pages.
/// 4. A pattern in guest memory survives all of it, and deflating.
/// 5. With `hugetlb`, deflate-on-oom gives memory back to a guest under pressure instead
///    of killing a process: the deflated pages come back from the host's pool. (With
///    `thp` the device does exactly the same; the host side is plain anonymous memory,
///    tested with `anon` in balloon_boot.rs.)
fn huge_pages_go_back_and_data_stays(backing: Backing) {
    let _host = backing.prepare();
    let mut phases = Phases {
        backing,
        started: std::time::Instant::now(),
    };
    let mut vm = backing.boot("page-reporting,deflate-on-oom");
    start_memcheck(&mut vm, "/run/mc", 128);
    phases.done("boot and memcheck");

    // 1. Reporting.
    let before = backing.host_bytes(&vm);
    fill_tmpfs(&mut vm, 300);
    let filled = backing.host_bytes(&vm);
    let added = filled.saturating_sub(before);
    assert!(
        added >= 250 * MIB,
        "filling 300 MiB of tmpfs took only {} MiB of host memory",
        mib(added)
    );
    if let Backing::Thp = backing {
        let huge = anon_huge_pages_of(vm.pid());
        eprintln!(
            "thp: AnonHugePages {} MiB of RSS {} MiB",
            mib(huge),
            mib(filled)
        );
        assert!(
            huge >= 250 * MIB,
            "guest memory is not in transparent huge pages: AnonHugePages {} MiB",
            mib(huge)
        );
    }
    free_tmpfs(&mut vm);
    let reported = wait_until(
        scaled(RECLAIM_TIMEOUT),
        "page reporting to return most of the 300 MiB the guest freed",
        || {
            let now = backing.host_bytes(&vm);
            (now + added * 2 / 3 <= filled).then_some(now)
        },
    );
    // Reports keep coming for a moment; take the figure once they have.
    let reported = reported.min(wait_until_settled(backing, &vm));
    eprintln!(
        "{} page reporting: host memory {} MiB -> {} MiB -> {} MiB ({} of {} MiB back)",
        backing.name(),
        mib(before),
        mib(filled),
        mib(reported),
        mib(filled - reported),
        mib(added),
    );
    if let Backing::Thp = backing {
        // Reporting freed whole huge pages: what is left is still huge.
        let huge = anon_huge_pages_of(vm.pid());
        eprintln!("thp: after reporting AnonHugePages {} MiB", mib(huge));
        assert!(
            huge >= reported * 3 / 4,
            "reporting split the huge pages: AnonHugePages {} MiB of RSS {} MiB",
            mib(huge),
            mib(reported)
        );
    }
    phases.done("page reporting");

    // 2. Inflating, reporting off, the guest's free memory resident.
    set_guest_reporting(&mut vm, false);
    fill_tmpfs(&mut vm, 700);
    free_tmpfs(&mut vm);
    let resident = backing.host_bytes(&vm);
    resize_balloon(&vm, 256);
    let inflated = backing.host_bytes(&vm);
    let partial = partial_huge_pages(&vm);
    let returned = resident.saturating_sub(inflated);
    eprintln!(
        "{} inflate of 256 MiB, reporting off: host memory {} MiB -> {} MiB, {} MiB returned \
         ({}%), {partial} huge pages partly ballooned",
        backing.name(),
        mib(resident),
        mib(inflated),
        mib(returned),
        returned * 100 / (256 * MIB),
    );
    // Every ballooned page is in a huge page that went back, or in a partial one.
    assert!(
        returned + partial * HUGE_PAGE + NOISE >= 256 * MIB,
        "only {} MiB came back with {partial} partial huge pages",
        mib(returned)
    );
    // And huge pages did complete: most of the balloon came back.
    assert!(
        returned >= 128 * MIB,
        "only {} MiB of 256 came back",
        mib(returned)
    );
    assert_memcheck_intact(&mut vm, "/run/mc", 128, "after inflating");
    resize_balloon(&vm, 0);
    assert_eq!(
        partial_huge_pages(&vm),
        0,
        "an empty balloon holds no pages"
    );
    assert_memcheck_intact(&mut vm, "/run/mc", 128, "after deflating");
    phases.done("inflate without reporting");

    // 3. Inflating with reporting on. Linux reports after pages are freed, so once it is
    // back on, freeing a little makes it report all the free memory, the part freed while
    // it was off too. Once that has settled, the memory the balloon takes was reported
    // already, and inflating may leave no more resident than its partial huge pages.
    set_guest_reporting(&mut vm, true);
    fill_tmpfs(&mut vm, 64);
    free_tmpfs(&mut vm);
    let settled = wait_until_settled(backing, &vm);
    assert!(
        settled + 400 * MIB <= resident,
        "switched back on, reporting did not return the memory freed while it was off: \
         {} MiB -> {} MiB",
        mib(resident),
        mib(settled)
    );
    resize_balloon(&vm, 256);
    let inflated = wait_until_settled(backing, &vm);
    let partial = partial_huge_pages(&vm);
    eprintln!(
        "{} inflate of 256 MiB, reporting on: host memory {} MiB -> {} MiB, {partial} huge \
         pages partly ballooned",
        backing.name(),
        mib(settled),
        mib(inflated)
    );
    assert!(
        inflated <= settled + partial * HUGE_PAGE + NOISE,
        "inflating with reporting on left {} MiB more resident than its {partial} partial \
         huge pages explain",
        mib(inflated.saturating_sub(settled))
    );
    // 4. The data.
    assert_memcheck_intact(&mut vm, "/run/mc", 128, "after inflating and reporting");
    resize_balloon(&vm, 0);
    assert_memcheck_intact(&mut vm, "/run/mc", 128, "after deflating");
    phases.done("inflate with reporting");

    // 5. Deflate on OOM: a balloon that leaves the guest too little, then a program that
    // needs more. The guest's OOM notifier deflates instead of killing anything.
    if let Backing::Hugetlb = backing {
        let total = vm.meminfo_kib("MemTotal");
        resize_balloon(&vm, 640);
        assert_eq!(
            vm.meminfo_kib("MemTotal"),
            total,
            "deflate-on-oom keeps MemTotal"
        );
        start_memcheck(&mut vm, "/run/mc2", 200);
        let actual = field(&get_json(vm.api_sock(), "/balloon"), "actual_mib");
        assert!(
            actual < 640,
            "the guest did not deflate under pressure (actual {actual} MiB)"
        );
        assert_memcheck_intact(&mut vm, "/run/mc", 128, "after deflate-on-oom");
        assert_memcheck_intact(&mut vm, "/run/mc2", 200, "after deflate-on-oom");
        let kills = kernel_log_lines(&mut vm, &["Killed process"]);
        assert!(kills.is_empty(), "the guest killed a process:\n{kills}");
        phases.done("deflate on OOM");
    }
    let complaints = kernel_log_lines(&mut vm, &["BUG:", "corruption", "Oops", "WARNING: CPU"]);
    assert!(
        complaints.is_empty(),
        "guest kernel complained:\n{complaints}"
    );
    assert!(vm.poweroff().success());
}

#[test]
#[ignore = "boots a guest: run through scripts/test.sh"]
fn hugetlb_guest_gives_back_whole_huge_pages_and_keeps_its_data() {
    huge_pages_go_back_and_data_stays(Backing::Hugetlb);
}

#[test]
#[ignore = "boots a guest: run through scripts/test.sh"]
fn thp_guest_gives_back_whole_huge_pages_and_keeps_its_data() {
    huge_pages_go_back_and_data_stays(Backing::Thp);
}
