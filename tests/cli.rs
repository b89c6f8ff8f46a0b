//! Command line errors: bad input must end the vmm at once with one line on stderr and a
//! non-zero status. None of these needs KVM or a guest kernel.

mod common;

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
