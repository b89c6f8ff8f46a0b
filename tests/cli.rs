//! The command line: bad input must end the vmm at once with one line on stderr and a
//! non-zero status; the shell completions and the manual pages come from the same clap
//! definitions, and the pages committed in docs/man are the ones those generate. None of
//! these needs KVM or a guest kernel.

mod common;

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
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

/// Completes the words of `line` (the last one partial) with the bash script that
/// `vmm completions bash` prints, as bash's programmable completion would on Tab.
fn bash_completions(script: &Path, line: &[&str]) -> Vec<String> {
    // The function's arguments are those bash passes: the command, the word being
    // completed and the word before it.
    let complete = r#"
        source "$0" || exit 90
        case $(complete -p vmm) in *" -F _vmm vmm") ;; *) exit 91 ;; esac
        COMP_WORDS=("$@")
        COMP_CWORD=$(($# - 1))
        COMP_LINE="$*"
        COMP_POINT=${#COMP_LINE}
        _vmm vmm "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
        printf '%s\n' "${COMPREPLY[@]}"
    "#;
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", complete])
        .arg(script)
        .args(line)
        .stdin(Stdio::null())
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "completing {line:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn bash_completion_offers_the_real_flags_and_commands() {
    let out = run_vmm(&["completions", "bash"], CLI_TIMEOUT);
    assert!(out.status.success(), "{out:?}");
    let script = TempFile::new_with_prefix(std::env::temp_dir().join("vmm-cli-bash-"))
        .expect("cannot create a temporary file");
    std::fs::write(script.as_path(), &out.stdout).expect("cannot write the script");

    let cases: &[(&[&str], &[&str])] = &[
        (&["vmm", "--ba"], &["--balloon"]),
        (&["vmm", "--se"], &["--serial", "--seccomp"]),
        (&["vmm", "--seccomp", ""], &["enforce", "log", "off"]),
        (&["vmm", "c"], &["ctl", "completions"]),
        (&["vmm", "completions", ""], &["bash", "zsh", "fish"]),
        (&["vmm", "ctl", "balloon", "s"], &["set", "stats"]),
        (&["vmm", "ctl", "vm", "p"], &["pause"]),
        (&["vmm", "ctl", "balloon", "stats", "--w"], &["--watch"]),
    ];
    for &(line, expected) in cases {
        let mut offered = bash_completions(script.as_path(), line);
        offered.sort();
        let mut expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        expected.sort();
        assert!(
            expected.iter().all(|e| offered.contains(e)),
            "completing {line:?} offered {offered:?}, expected {expected:?} among them"
        );
        let partial = line.last().copied().unwrap_or_default();
        assert!(
            offered.iter().all(|o| o.starts_with(partial)),
            "completing {line:?} offered {offered:?}, not all starting with {partial:?}"
        );
    }
}

#[test]
fn zsh_and_fish_completions_name_every_command_and_flag() {
    // Neither shell is installed here; check that the scripts are for vmm and cover the
    // command line: zsh's down to the flags of the deepest command, fish's (which
    // clap_complete generates two commands deep) down to `vmm ctl`'s.
    let zsh_flags = [
        "kernel",
        "balloon",
        "api-sock",
        "seccomp",
        "acknowledge-on-stop",
    ];
    let fish_flags = ["kernel", "balloon", "api-sock", "seccomp", "timeout"];
    for (shell, first_line, flag, names) in [
        ("zsh", "#compdef vmm", "--", zsh_flags),
        ("fish", "", "-l ", fish_flags),
    ] {
        let out = run_vmm(&["completions", shell], CLI_TIMEOUT);
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.starts_with(first_line), "{shell}: {script:.200}");
        for flag in names.map(|name| format!("{flag}{name}")) {
            assert!(
                script.contains(&flag),
                "the {shell} script does not mention {flag}"
            );
        }
        for command in ["ctl", "balloon", "ctrl-alt-del", "completions", "man-pages"] {
            assert!(
                script.contains(command),
                "the {shell} script does not mention {command}"
            );
        }
    }
}

#[test]
fn completions_for_an_unknown_shell_are_a_usage_error() {
    let line = refused(&["completions", "tcsh"]);
    assert!(
        line.contains("tcsh"),
        "the error should name tcsh: {line:?}"
    );
    let out = run_vmm(&["completions", "tcsh"], CLI_TIMEOUT);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn completions_into_a_pipe_nobody_reads_fail_with_status_1_not_a_panic() {
    let status = run_with_output_unread(&["completions", "bash"], &[]);
    assert_eq!((status.code(), status.signal()), (Some(1), None));
    let out = Command::new(common::vmm_bin())
        .args(["completions", "fish"])
        .stdin(Stdio::null())
        .stdout(broken_pipe())
        .output()
        .expect("run vmm");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("vmm completions: cannot write the fish script"),
        "{stderr}"
    );
}

/// The `.1` files in `dir`, by name.
fn man_pages_in(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("read_dir entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "1"))
        .map(|path| {
            let name = path
                .file_name()
                .expect("a file name")
                .to_string_lossy()
                .into();
            let text = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (name, text)
        })
        .collect()
}

#[test]
fn the_committed_man_pages_are_the_ones_the_command_line_generates() {
    let dir = common::temp_dir("man");
    let path = dir.as_path().to_str().expect("temp path is UTF-8");
    let out = run_vmm(&["man-pages", path], CLI_TIMEOUT);
    assert!(out.status.success(), "{out:?}");
    let generated = man_pages_in(dir.as_path());
    let committed = man_pages_in(&Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/man"));

    for page in [
        "vmm.1",
        "vmm-ctl.1",
        "vmm-ctl-balloon-set.1",
        "vmm-completions.1",
    ] {
        assert!(
            generated.contains_key(page),
            "no {page} among {:?}",
            generated.keys()
        );
    }
    let vmm_page = String::from_utf8_lossy(&generated["vmm.1"]);
    assert!(vmm_page.contains("\n.TH vmm 1 "), "{vmm_page:.200}");
    assert!(vmm_page.contains("balloon"), "{vmm_page:.200}");

    let stale: Vec<&String> = generated
        .keys()
        .chain(committed.keys())
        .filter(|name| generated.get(*name) != committed.get(*name))
        .collect();
    assert!(
        stale.is_empty(),
        "docs/man does not match the command line ({stale:?} differ, are missing or are \
         extra): run scripts/man-pages.sh and commit docs/man"
    );
}

#[test]
fn man_pages_into_a_missing_directory_fail_naming_it() {
    let dir = common::temp_dir("man");
    let missing = dir.as_path().join("not-there");
    let missing = missing.to_str().expect("temp path is UTF-8");
    let out = run_vmm(&["man-pages", missing], CLI_TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(missing), "{stderr}");
}
