//! The console with a guest of a few instructions built here, on the host's own KVM:
//!
//! - on a real terminal, driven through tmux: started in the background (`vmm … &`) vmm
//!   keeps running (job control never stops it), leaves the terminal to the shell, and
//!   takes it (raw mode) only when `fg` brings it to the foreground; when it ends, the
//!   terminal is as the shell left it;
//! - with stdout and stderr on one pipe nobody reads (`2>&1`), a guest printing without
//!   end never blocks vmm: the API answers and SIGTERM ends it.
//!
//! These need a `/dev/kvm` that can create a VM and run a few instructions, but no guest
//! that boots (the machines where KVM cannot boot Linux still run these), and the terminal
//! test needs tmux. They are not boot tests: they run where tmux is, not inside the nested
//! KVM host, whose initramfs has busybox only.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use vmm_sys_util::tempdir::TempDir;

/// How long the shell and vmm may take to react to a key press; a bound on a hang, not a
/// measure of speed.
const REACTION_TIMEOUT: Duration = Duration::from_secs(60);

/// What the tiny guest does after printing its message.
#[derive(Clone, Copy)]
enum Then {
    /// Spin (`pause` in a loop).
    Spin,
    /// Print it again, forever.
    Repeat,
}

/// A bzImage whose 64-bit entry prints `message` on COM1 with one `rep outsb`, then does
/// what `then` says. Enough for vmm to load and run; the setup header has the fields it
/// checks.
fn tiny_bzimage(dir: &Path, message: &[u8], then: Then) -> PathBuf {
    const SETUP_SECTS: usize = 4;
    let entry = (SETUP_SECTS + 1) * 512 + 0x200;
    let mut image = vec![0u8; entry + 4096];
    image[0x1f1] = SETUP_SECTS as u8;
    image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes()); // boot protocol 2.15
    image[0x211] = 1; // loadflags: LOADED_HIGH
    image[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    image[0x236..0x238].copy_from_slice(&1u16.to_le_bytes()); // xloadflags: 64-bit entry
    image[0x260..0x264].copy_from_slice(&(1u32 << 20).to_le_bytes()); // init_size
    let len = u32::try_from(message.len()).expect("a short message");
    let mut code = vec![
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0x48, 0x8d, 0x35, 0x0b, 0x00, 0x00, 0x00, // lea rsi, [rip + 11]: the message
        0xb9, // mov ecx, len
    ];
    code.extend_from_slice(&len.to_le_bytes());
    code.extend_from_slice(&[0xf3, 0x6e]); // rep outsb
    code.extend_from_slice(match then {
        Then::Spin => &[0xf3, 0x90, 0xeb, 0xfc], // pause; jmp back to the pause
        Then::Repeat => &[0x90, 0x90, 0xeb, 0xea], // nop; nop; jmp back to the start
    });
    code.extend_from_slice(message);
    image[entry..entry + code.len()].copy_from_slice(&code);
    let path = dir.join("tiny-bzImage");
    std::fs::write(&path, image).expect("cannot write the tiny kernel");
    path
}

/// A tmux server of the test's own, killed (with whatever runs in it) when dropped.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    fn start(dir: &Path, shell: &str) -> Tmux {
        let tmux = Tmux {
            socket: dir.join("tmux.sock"),
        };
        let out = tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            "160",
            "-y",
            "50",
            shell,
        ]);
        assert!(
            out.status.success(),
            "tmux cannot start: {}",
            text(&out.stderr)
        );
        tmux
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .env_remove("TMUX")
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run tmux ({e}): install it with scripts/install-deps.sh")
            })
    }

    /// Types `line` and Enter into the pane.
    fn type_line(&self, line: &str) {
        assert!(self
            .run(&["send-keys", "-t", "t", "-l", line])
            .status
            .success());
        assert!(self
            .run(&["send-keys", "-t", "t", "Enter"])
            .status
            .success());
    }

    /// What the pane shows, history included.
    fn screen(&self) -> String {
        text(
            &self
                .run(&["capture-pane", "-p", "-J", "-S", "-1000", "-t", "t"])
                .stdout,
        )
    }

    fn pane_tty(&self) -> String {
        let out = self.run(&["display-message", "-p", "-t", "t", "#{pane_tty}"]);
        text(&out.stdout).trim().to_string()
    }

    /// Waits until the pane shows a line starting with `prefix`; returns its rest.
    fn wait_for_line(&self, prefix: &str) -> String {
        common::wait_until(
            common::scaled(REACTION_TIMEOUT),
            &format!("a line starting with {prefix:?} in the pane"),
            || {
                self.screen()
                    .lines()
                    .find_map(|l| l.strip_prefix(prefix).map(|rest| rest.trim().to_string()))
            },
        )
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- the tmux pane:\n{}", self.screen());
        }
        let _ = self.run(&["kill-server"]);
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The terminal's settings as `stty -a` prints them, one word each.
fn stty(tty: &str) -> Vec<String> {
    let out = Command::new("stty")
        .args(["-F", tty, "-a"])
        .output()
        .expect("cannot run stty");
    assert!(out.status.success(), "stty -F {tty}: {}", text(&out.stderr));
    text(&out.stdout)
        .split([' ', ';', '\n'])
        .map(str::to_string)
        .collect()
}

fn is_raw(tty: &str) -> bool {
    let settings = stty(tty);
    settings.iter().any(|s| s == "-icanon") && settings.iter().any(|s| s == "-echo")
}

fn is_cooked(tty: &str) -> bool {
    let settings = stty(tty);
    settings.iter().any(|s| s == "icanon") && settings.iter().any(|s| s == "echo")
}

/// The scheduler state of process `pid` (`T` when stopped), or `None` once it is gone.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Whether process `pid` has a thread named `name`.
fn has_thread(pid: u32, name: &str) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|task| {
        std::fs::read_to_string(task.path().join("comm")).is_ok_and(|comm| comm.trim() == name)
    })
}

/// Kills vmm if the test ends while it still runs.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill(2) with a pid; at worst the process is already gone.
        unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
    }
}

fn need_kvm() {
    let kvm = kvm_ioctls::Kvm::new().and_then(|kvm| kvm.create_vm().map(|_| ()));
    if let Err(e) = kvm {
        panic!("this test needs a /dev/kvm that can create a VM (the guest need not boot): {e}");
    }
}

#[test]
fn output_nobody_reads_never_blocks_vmm() {
    need_kvm();
    let dir: TempDir = common::temp_dir("unread");
    let kernel = tiny_bzimage(dir.as_path(), &[b'x'; 4000], Then::Repeat);
    let socket = dir.as_path().join("api.sock");
    // stdout and stderr: one pipe nobody reads (`2>&1 | sleep`), one page big. Guest
    // output fills it at once; the log lines saying output is dropped find it full too.
    let (read_end, write_end) = common::pipe();
    // SAFETY: fcntl on an open pipe descriptor; failure leaves the default size.
    unsafe { libc::fcntl(write_end.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    let mut vmm = Command::new(common::vmm_bin())
        .args([
            "--kernel",
            kernel.to_str().expect("UTF-8 path"),
            "--mem",
            "64M",
        ])
        .arg("--api-sock")
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(write_end.try_clone().expect("dup"))
        .stderr(write_end)
        .spawn()
        .expect("cannot start vmm");
    let _kill = KillOnDrop(vmm.id());
    // The pipe is full once what it holds stops growing: nobody reads it, and the guest
    // prints without end. (It may hold less than a page: a log line and a chunk of guest
    // output do not always fit together.)
    let mut last = 0;
    common::wait_until(common::scaled(REACTION_TIMEOUT), "the pipe to fill", || {
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD on the pipe's read end, which we own, writes one int.
        unsafe { libc::ioctl(read_end.as_raw_fd(), libc::FIONREAD, &mut queued) };
        let full = queued > 0 && queued == last;
        last = queued;
        full.then_some(())
    });
    // The guest prints on, into a full pipe; the API answers all the same.
    let info = common::http::get_json(&socket, "/vm");
    assert_eq!(info["state"], "Running", "{info}");
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(vmm.id() as i32, libc::SIGTERM) }, 0);
    let status = common::wait_until(common::scaled(REACTION_TIMEOUT), "vmm to exit", || {
        vmm.try_wait().expect("wait for vmm")
    });
    assert_eq!((status.code(), status.signal()), (Some(143), None));
    assert!(!socket.exists(), "the API socket is removed on the way out");
    drop(read_end);
}

#[test]
fn vmm_in_the_background_is_never_stopped_and_takes_the_terminal_only_in_the_foreground() {
    need_kvm();
    let dir: TempDir = common::temp_dir("terminal");
    let kernel = tiny_bzimage(dir.as_path(), b"TINY-GUEST-OUTPUT\r\n", Then::Spin);
    let stderr = dir.as_path().join("vmm.stderr");
    // bash without line editing reads the terminal in canonical mode with echo, so the
    // terminal's settings say whether vmm changed them.
    let tmux = Tmux::start(
        dir.as_path(),
        "env PS1='$ ' bash --norc --noprofile --noediting -i",
    );
    let tty = tmux.pane_tty();
    common::wait_until(
        common::scaled(REACTION_TIMEOUT),
        "the shell's prompt",
        || tmux.screen().contains("$ ").then_some(()),
    );
    assert!(is_cooked(&tty), "the shell's terminal: {:?}", stty(&tty));

    // In the background, with `tostop`: a background process that writes to the terminal
    // or changes its settings is stopped by SIGTTOU, unless it ignores the signal.
    tmux.type_line(&format!(
        "stty tostop; {} --kernel {} --mem 64M 2>{} & echo BG-PID=$!",
        common::vmm_bin().display(),
        kernel.display(),
        stderr.display()
    ));
    let pid: u32 = tmux.wait_for_line("BG-PID=").parse().expect("a pid");
    let _kill = KillOnDrop(pid);
    // The console is set up before the vCPUs start: a vmm stopped by job control while
    // setting up would never get to start vCPU 0.
    common::wait_until(
        common::scaled(REACTION_TIMEOUT),
        "vmm to start vCPU 0",
        || {
            let state = process_state(pid);
            assert!(
                state.is_some_and(|s| s != 'T'),
                "vmm in the background is {state:?} (T: stopped); stderr: {}",
                text(&std::fs::read(&stderr).unwrap_or_default())
            );
            has_thread(pid, "vcpu0").then_some(())
        },
    );
    assert!(
        is_cooked(&tty),
        "vmm in the background changed the terminal: {:?}",
        stty(&tty)
    );
    // The shell still has the terminal: it reads and runs a command.
    tmux.type_line("echo alive-$((6 * 7))");
    tmux.wait_for_line("alive-42");
    assert_ne!(
        process_state(pid),
        Some('T'),
        "vmm was stopped in the background"
    );

    // `fg` gives vmm the terminal (and a SIGCONT): now it goes raw.
    tmux.type_line("fg");
    common::wait_until(
        common::scaled(REACTION_TIMEOUT),
        "raw mode after fg",
        || is_raw(&tty).then_some(()),
    );
    assert_ne!(process_state(pid), Some('T'));

    // SIGTERM: vmm ends through its orderly exit and gives the terminal back as it was.
    // SAFETY: kill(2) on the vmm the shell started for this test.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    // Keys typed before vmm is gone would go to the guest.
    common::wait_until(common::scaled(REACTION_TIMEOUT), "vmm to exit", || {
        process_state(pid).is_none_or(|s| s == 'Z').then_some(())
    });
    tmux.type_line("echo EXIT=$?");
    assert_eq!(tmux.wait_for_line("EXIT="), "143");
    assert!(
        is_cooked(&tty),
        "the terminal after vmm ended: {:?}",
        stty(&tty)
    );
    let errors = text(&std::fs::read(&stderr).unwrap_or_default());
    assert!(!errors.contains("panicked"), "{errors}");
}

/// A terminal on stdin that is not vmm's controlling terminal (an init or a supervisor
/// handing a serial line to vmm, with no session around it) cannot stop vmm by job
/// control, so vmm takes it: raw mode while it runs, the settings back when it ends.
#[test]
fn a_terminal_that_is_not_the_controlling_one_is_taken() {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;

    need_kvm();
    let dir: TempDir = common::temp_dir("no-ctty");
    let kernel = tiny_bzimage(dir.as_path(), b"TINY-GUEST-OUTPUT\r\n", Then::Spin);
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two descriptors into the integers it is given; the name,
    // settings and window size are optional (null).
    let ret = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(ret, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: openpty succeeded, so both are open descriptors that nothing else owns.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let tty = std::fs::read_link(format!("/proc/self/fd/{}", slave.as_raw_fd()))
        .expect("the terminal's name")
        .display()
        .to_string();
    assert!(is_cooked(&tty), "a new terminal: {:?}", stty(&tty));

    let mut command = Command::new(common::vmm_bin());
    command
        .args(["--kernel", &kernel.display().to_string(), "--mem", "64M"])
        .stdin(Stdio::from(slave))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: setsid is async-signal-safe; the child starts a session of its own, so it
    // has no controlling terminal at all.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().expect("cannot start vmm");
    let pid = child.id();
    let _kill = KillOnDrop(pid);
    common::wait_until(
        common::scaled(REACTION_TIMEOUT),
        "raw mode on a terminal that is not vmm's controlling one",
        || is_raw(&tty).then_some(()),
    );
    // SAFETY: kill(2) on the vmm this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().expect("vmm's exit");
    assert_eq!(out.status.code(), Some(143), "{}", text(&out.stderr));
    assert!(
        is_cooked(&tty),
        "the terminal after vmm ended: {:?}",
        stty(&tty)
    );
    drop(master);
}
