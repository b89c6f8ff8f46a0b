//! Command line errors: bad input must end the vmm at once with one line on stderr and a
//! non-zero status. None of these needs KVM or a guest kernel.

mod common;

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};

use vmm_sys_util::tempfile::TempFile;

use common::{run_vmm, CLI_TIMEOUT};

/// A file that exists but is no kernel, removed when dropped.
struct JunkFile(TempFile);

impl JunkFile {
    fn new() -> JunkFile {
        let prefix = std::env::temp_dir().join("vmm-cli-junk-");
        let file = TempFile::new_with_prefix(&prefix).expect("cannot create the junk file");
        std::fs::write(file.as_path(), b"this is not a bzImage\n".repeat(512))
            .expect("cannot write junk");
        JunkFile(file)
    }

    fn path(&self) -> &str {
        self.0.as_path().to_str().expect("temp path is UTF-8")
    }
}

/// Runs the vmm expecting it to refuse; returns its one stderr line.
fn refused(args: &[&str]) -> String {
    let out = run_vmm(args, CLI_TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "`vmm {}` succeeded; stderr: {stderr:?}",
        args.join(" ")
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "`vmm {}` should explain itself in one line, wrote: {stderr:?}",
        args.join(" ")
    );
    lines[0].to_string()
}

#[test]
fn missing_kernel_file_is_refused() {
    let dir = common::temp_dir("cli");
    let path = dir.as_path().join("missing-kernel");
    let path = path.to_str().expect("temp path is UTF-8");
    let line = refused(&["--kernel", path]);
    assert!(
        line.contains(path),
        "the error should name {path}: {line:?}"
    );
}

#[test]
fn kernel_that_is_not_a_bzimage_is_refused() {
    let junk = JunkFile::new();
    let line = refused(&["--kernel", junk.path(), "--mem", "256M"]);
    assert!(
        line.contains(junk.path()),
        "the error should name {}: {line:?}",
        junk.path()
    );
}

#[test]
fn zero_cpus_are_refused() {
    // Arguments are checked before the kernel is read, so the junk kernel is never reached.
    let junk = JunkFile::new();
    let line = refused(&["--kernel", junk.path(), "--cpus", "0"]);
    assert!(
        line.to_lowercase().contains("cpu"),
        "the error should be about --cpus: {line:?}"
    );
}

#[test]
fn malformed_mem_sizes_are_refused() {
    let junk = JunkFile::new();
    for bad in ["lots", "12XB", "0"] {
        let line = refused(&["--kernel", junk.path(), "--mem", bad]);
        assert!(
            line.contains(bad) || line.to_lowercase().contains("mem"),
            "the error for --mem {bad} should name the value or the flag: {line:?}"
        );
    }
}

#[test]
fn a_bad_instance_id_is_a_usage_error_naming_it() {
    let junk = JunkFile::new();
    let long = "x".repeat(65);
    for (bad, words) in [
        ("vm_1", &["vm_1", "'_' at position 2"][..]),
        (long.as_str(), &["at most 64 characters"][..]),
        ("", &["at least one character"][..]),
    ] {
        let out = run_vmm(&["--kernel", junk.path(), "--id", bad], CLI_TIMEOUT);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--id {bad:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        for word in words {
            assert!(stderr.contains(word), "--id {bad:?}: {stderr}");
        }
    }
}

#[test]
fn huge_page_backings_refuse_memory_in_part_pages_and_a_short_pool() {
    let junk = JunkFile::new();
    for backing in ["thp", "hugetlb"] {
        let line = refused(&[
            "--kernel",
            junk.path(),
            "--mem",
            "1025M",
            "--mem-backing",
            backing,
        ]);
        assert!(
            line.contains("1025 MiB") && line.contains(backing) && line.contains("2 MiB"),
            "{line:?}"
        );
    }
    // More memory than this host's pool has free 2 MiB pages (and at least 64 MiB).
    let meminfo = std::fs::read_to_string("/proc/meminfo").expect("/proc/meminfo");
    let count = |name: &str| -> u64 {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let available = count("HugePages_Free:").saturating_sub(count("HugePages_Rsvd:"));
    let needed = (available + 1).max(32);
    let mem = format!("{}M", needed * 2);
    let line = refused(&[
        "--kernel",
        junk.path(),
        "--mem",
        &mem,
        "--mem-backing",
        "hugetlb",
    ]);
    if std::path::Path::new("/sys/kernel/mm/hugepages/hugepages-2048kB").exists() {
        assert!(
            line.contains(&format!("needs {needed} free 2 MiB huge pages"))
                && line.contains("/proc/sys/vm/nr_hugepages"),
            "{line:?}"
        );
    } else {
        assert!(line.contains("no pool of 2 MiB huge pages"), "{line:?}");
    }
}

/// The write end of a pipe whose read end is already closed: every write to it fails
/// (EPIPE), as when vmm's output goes to a reader that has gone.
fn broken_pipe() -> OwnedFd {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    let ret = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(ret, 0, "pipe2: {}", io::Error::last_os_error());
    // SAFETY: pipe2 succeeded, so both are open descriptors that nothing else owns.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read_end);
    write_end
}

/// Runs vmm with `args` and `env`, its stdout and stderr going to pipes nobody reads.
/// Every invocation here ends at once, so no timeout guards it.
fn run_with_output_unread(args: &[&str], env: &[(&str, &str)]) -> ExitStatus {
    Command::new(common::vmm_bin())
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(broken_pipe())
        .stderr(broken_pipe())
        .status()
        .expect("run vmm")
}

/// Runs vmm with `args` and no stderr at all (`2>&-` through the shell).
fn run_with_stderr_closed(args: &[&str]) -> ExitStatus {
    Command::new("sh")
        .args(["-c", "exec \"$0\" \"$@\" 2>&-"])
        .arg(common::vmm_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .expect("run sh")
}

#[test]
fn refusals_keep_their_status_when_stderr_is_closed_or_unread() {
    let junk = JunkFile::new();
    let socket = std::env::temp_dir().join(format!("vmm-cli-none-{}.sock", common::unique_token()));
    let socket = socket.to_str().expect("temp path is UTF-8");
    // (arguments, RUST_LOG, the status vmm exits with when its stderr is read)
    let cases: &[(&[&str], Option<&str>, i32)] = &[
        (&["--kernel", junk.path(), "--mem", "lots"], None, 2),
        (&["--kernel", junk.path()], Some("vmm=loud"), 2),
        (&["--kernel", junk.path(), "--cpus", "0"], None, 1),
        (&["--kernel", junk.path(), "--log-level", "trace"], None, 1),
        (&["ctl", "--api-sock", socket, "vm", "info"], None, 69),
        (
            &["ctl", "--api-sock", socket, "balloon", "set", "512"],
            None,
            2,
        ),
        (&["--help"], None, 0),
    ];
    for &(args, rust_log, expected) in cases {
        let env: Vec<(&str, &str)> = rust_log
            .map(|spec| ("RUST_LOG", spec))
            .into_iter()
            .collect();
        let unread = run_with_output_unread(args, &env);
        assert_eq!(
            (unread.code(), unread.signal()),
            (Some(expected), None),
            "`vmm {}` with its output unread",
            args.join(" ")
        );
        if rust_log.is_none() {
            let closed = run_with_stderr_closed(args);
            assert_eq!(
                (closed.code(), closed.signal()),
                (Some(expected), None),
                "`vmm {}` with stderr closed",
                args.join(" ")
            );
        }
    }
}
