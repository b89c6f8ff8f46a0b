//! `promtool check metrics`, Prometheus's own checker of the text exposition format and of
//! its naming conventions, run on what `/metrics` served.
//!
//! The Debian package `prometheus` provides it (`scripts/install-deps.sh` installs it);
//! `VMM_PROMTOOL` names another binary (the nested runner sets it to the copy it carries
//! into L1). A test that needs it and cannot find it fails, saying so: it never passes
//! without having checked.

use std::io::Write;
use std::process::{Command, Stdio};

/// The promtool to run: `VMM_PROMTOOL`, else `promtool` on the `PATH`.
fn promtool() -> String {
    std::env::var("VMM_PROMTOOL").unwrap_or_else(|_| "promtool".to_string())
}

/// Runs `promtool check metrics` on `text`; `Err` holds what it found wrong.
pub fn check_metrics(text: &str) -> Result<(), String> {
    let tool = promtool();
    let mut child = Command::new(&tool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {tool:?} ({e}): these tests need promtool, from the Debian \
                 package prometheus (scripts/install-deps.sh installs it), or VMM_PROMTOOL \
                 naming one"
            )
        });
    let mut stdin = child.stdin.take().expect("promtool's stdin");
    // Written from a thread of its own, so that promtool's output cannot fill up while
    // its input is still being written.
    let input = text.to_string();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output().expect("promtool ran");
    writer
        .join()
        .expect("the writer thread")
        .expect("promtool took its input");
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "`{tool} check metrics` exited with {}:\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}
