//! Confinement: a seccomp filter for each kind of vmm thread, so that a thread taken over
//! through the input it handles (guest exits, virtio queues, API requests) can make only
//! the system calls its own job needs. docs/security.md ("Confinement") lists them.
//!
//! - [`allow_lists`]: what each [`ThreadKind`] may call, argument by argument where the
//!   argument makes the difference (ioctl numbers, `madvise` advice, `fallocate` mode...).
//! - [`report`]: the SIGSYS handler that ends vmm with
//!   [`SECCOMP_VIOLATION`](crate::lifecycle::exit_status::SECCOMP_VIOLATION) (159) and one
//!   line naming the system call and the thread.
//!
//! How it is used: [`Confinement::new`] compiles every filter once, at start, for the mode
//! `--seccomp` chose. Each thread installs its own filter as the first thing it does:
//! threads vmm spawns go through [`spawn_confined`], which returns only once the new
//! thread's filter is in place; the main thread calls [`ThreadFilter::apply`] after it
//! started every other thread and before its event loop runs. The order matters because a
//! thread inherits the filters of the thread that created it and filters stack (a call
//! must pass all of them): as no thread is created after the main thread confined itself,
//! each thread runs under exactly one filter, its own. A new kind of thread is one
//! [`ThreadKind`] and one list in [`allow_lists`].

pub mod allow_lists;
pub mod report;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

use crate::test_hooks;

/// What `--seccomp` asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SeccompMode {
    /// A refused system call ends vmm (status 159) with a line naming it and the thread.
    #[default]
    Enforce,
    /// A refused system call is let through and recorded by the kernel's audit log.
    Log,
    /// No filter at all.
    Off,
}

/// The kinds of thread vmm runs, each with its own allow list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ThreadKind {
    /// The main thread: the event loop (console input, virtio queues, timers, stop).
    Main,
    /// A vCPU thread: `KVM_RUN` and the device register accesses of its exits.
    Vcpu,
    /// The API server's thread (`--api-sock`).
    Api,
    /// A thread that copies buffered output to a file descriptor: the guest console's
    /// (`vmm-console`) and the log's (`vmm-log`).
    Output,
}

impl ThreadKind {
    /// Every kind, for building all filters at once.
    pub const ALL: [ThreadKind; 4] = [
        ThreadKind::Main,
        ThreadKind::Vcpu,
        ThreadKind::Api,
        ThreadKind::Output,
    ];

    /// The name used in messages and docs.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Vcpu => "vCPU",
            ThreadKind::Api => "API",
            ThreadKind::Output => "output",
        }
    }
}

impl fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the seccomp filter of the {kind} threads: {source}")]
    Build {
        kind: ThreadKind,
        source: seccompiler::BackendError,
    },
    #[error("cannot install the seccomp filter of thread {thread}: {source}; this kernel may lack seccomp filters (CONFIG_SECCOMP_FILTER), or vmm runs under a filter that refuses them: --seccomp off runs without")]
    Install {
        thread: String,
        source: seccompiler::Error,
    },
    #[error("cannot install the handler that reports refused system calls: {0}")]
    ReportHandler(vmm_sys_util::errno::Error),
}

/// Why [`spawn_confined`] could not start a thread.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("{0}")]
    Thread(std::io::Error),
    #[error(transparent)]
    Confine(SeccompError),
}

/// Every thread kind's filter, compiled for one mode.
pub struct Confinement {
    mode: SeccompMode,
    programs: BTreeMap<ThreadKind, Arc<BpfProgram>>,
}

impl Confinement {
    /// Compiles the filter of every thread kind for `mode`. With [`SeccompMode::Enforce`]
    /// it also installs the SIGSYS handler that reports a refused call. Call it once,
    /// before vmm starts any thread.
    pub fn new(mode: SeccompMode) -> Result<Confinement, SeccompError> {
        let mut programs = BTreeMap::new();
        let refused = match mode {
            SeccompMode::Enforce => SeccompAction::Trap,
            SeccompMode::Log => SeccompAction::Log,
            SeccompMode::Off => {
                return Ok(Confinement { mode, programs });
            }
        };
        let facts = allow_lists::ProcessFacts::of_this_process();
        for kind in ThreadKind::ALL {
            programs.insert(kind, Arc::new(compile(kind, &facts, refused.clone())?));
        }
        if mode == SeccompMode::Enforce {
            report::install_handler().map_err(SeccompError::ReportHandler)?;
        }
        single_malloc_arena();
        Ok(Confinement { mode, programs })
    }

    pub fn mode(&self) -> SeccompMode {
        self.mode
    }

    /// The filter a thread of `kind` installs on itself.
    pub fn filter(&self, kind: ThreadKind) -> ThreadFilter {
        ThreadFilter {
            program: self.programs.get(&kind).cloned(),
        }
    }
}

/// Compiles the allow list of `kind` into a BPF program: the listed calls are allowed,
/// every other one gets `refused`.
pub fn compile(
    kind: ThreadKind,
    facts: &allow_lists::ProcessFacts,
    refused: SeccompAction,
) -> Result<BpfProgram, SeccompError> {
    let build = |source| SeccompError::Build { kind, source };
    let rules = allow_lists::for_thread(kind, facts)
        .map_err(build)?
        .into_rules();
    let filter = SeccompFilter::new(rules, refused, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(build)?;
    BpfProgram::try_from(filter).map_err(build)
}

/// Keeps every thread's allocations in glibc's main arena, as musl's allocator does. A
/// thread with an arena of its own opens `/proc/sys/vm/overcommit_memory` the first time
/// that arena shrinks (glibc's `malloc/arena.c`), at a moment no code of ours chooses and
/// on a thread whose filter refuses `openat`. The main arena shrinks with `brk` only. The
/// cost, threads sharing one allocator lock, is small here: the vCPU and API threads
/// allocate little, and glibc's per-thread cache still serves small blocks without it.
fn single_malloc_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets a tunable of the allocator; called before vmm starts
    // other threads, so no arena has been created yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// The filter one thread installs on itself, or none (`--seccomp off`).
#[derive(Clone, Default)]
pub struct ThreadFilter {
    program: Option<Arc<BpfProgram>>,
}

impl ThreadFilter {
    /// No filter: the thread runs unconfined (`--seccomp off`, and tests of other things).
    pub fn none() -> ThreadFilter {
        ThreadFilter::default()
    }

    /// Confines the calling thread: records its name for the report of a refused call,
    /// then installs the filter, which lasts as long as the thread.
    ///
    /// Test hook `seccomp-violation:<thread name>` (e.g. `seccomp-violation:vcpu0`,
    /// `seccomp-violation:vmm-api`, `seccomp-violation:main`): once the filter is in
    /// place, the thread makes [`report::REFUSED_BY_EVERY_FILTER`], which no filter
    /// allows.
    pub fn apply(&self) -> Result<(), SeccompError> {
        let current = thread::current();
        let name = current.name().unwrap_or("unnamed");
        report::set_thread_name(name);
        if let Some(program) = &self.program {
            seccompiler::apply_filter(program).map_err(|source| SeccompError::Install {
                thread: name.to_string(),
                source,
            })?;
        }
        if test_hooks::injected(&format!("seccomp-violation:{name}")) {
            report::make_refused_call();
        }
        Ok(())
    }
}

/// Starts a thread from `builder` that confines itself with `filter` before it runs
/// `body`, and returns once the filter is in place. If it cannot be installed, the thread
/// ends without running `body` and the error comes back here.
pub fn spawn_confined<F>(
    builder: thread::Builder,
    filter: ThreadFilter,
    body: F,
) -> Result<JoinHandle<()>, SpawnError>
where
    F: FnOnce() + Send + 'static,
{
    let (confined, outcome) = mpsc::sync_channel(1);
    let handle = builder
        .spawn(move || {
            let applied = filter.apply();
            let ok = applied.is_ok();
            // The spawner waits for this answer; it cannot have gone away.
            let _ = confined.send(applied);
            if ok {
                body();
            }
        })
        .map_err(SpawnError::Thread)?;
    match outcome.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(SpawnError::Confine(e))
        }
        // The thread ended before it answered: it panicked while installing the filter.
        Err(_) => {
            let _ = handle.join();
            Err(SpawnError::Thread(std::io::Error::other(
                "the thread ended while installing its seccomp filter",
            )))
        }
    }
}
