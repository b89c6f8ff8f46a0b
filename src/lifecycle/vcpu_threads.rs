//! Starting and stopping the vCPU threads as a group, so that no path out of vmm leaves a
//! vCPU running: not a VM that stops, not a start that fails at vCPU n > 0, not a panic
//! that unwinds the main thread.
//!
//! Stopping is bounded: each thread is kicked out of `KVM_RUN` until it ends, for at most
//! [`JOIN_TIMEOUT`]; a thread still running after that is reported and left behind (vmm
//! exits without it). Leaving one behind is memory-safe: every vCPU holds a reference to
//! guest memory (`Vcpu` keeps a clone of the mapping), so the mapping outlives every
//! thread that can still touch it, until the process exits.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Lifecycle, StopReason};
use crate::seccomp::ThreadFilter;
use crate::vcpu::PauseGate;
use crate::vcpu::{Vcpu, VcpuError, VcpuHandle};

/// How long stopping the vCPUs may take before vmm gives up on the ones left.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a vCPU that has not ended yet is kicked again: a kick that arrives just
/// before the thread enters `KVM_RUN` is lost, the next one is not.
const KICK_INTERVAL: Duration = Duration::from_millis(5);

/// A running vCPU thread, as far as stopping it goes.
pub trait VcpuThread {
    /// Which vCPU.
    fn index(&self) -> u8;
    /// Interrupts its `KVM_RUN`, so it sees the stop request.
    fn kick(&self);
    /// Whether the thread has ended.
    fn is_finished(&self) -> bool;
    /// Waits for a thread that has ended.
    fn join(self);
}

impl VcpuThread for VcpuHandle {
    fn index(&self) -> u8 {
        self.index
    }
    fn kick(&self) {
        VcpuHandle::kick(self);
    }
    fn is_finished(&self) -> bool {
        VcpuHandle::is_finished(self)
    }
    fn join(self) {
        VcpuHandle::join(self);
    }
}

/// Starts each of `vcpus` with `start`, in order. If one fails to start, the VM is asked
/// to stop, `release` lets go of any vCPU held back (a pause that came before the start
/// failed), the ones already started are stopped and joined, and the error is returned.
pub fn start_all<V, H: VcpuThread>(
    vcpus: Vec<V>,
    mut start: impl FnMut(V) -> Result<H, VcpuError>,
    lifecycle: &Lifecycle,
    release: impl FnOnce(),
) -> Result<Vec<H>, VcpuError> {
    let mut started = Vec::with_capacity(vcpus.len());
    for vcpu in vcpus {
        match start(vcpu) {
            Ok(handle) => started.push(handle),
            Err(e) => {
                lifecycle.request_stop(StopReason::Error(e.to_string()));
                release();
                let left = stop_and_join(started, JOIN_TIMEOUT);
                report_left_behind(&left);
                return Err(e);
            }
        }
    }
    Ok(started)
}

/// Kicks every thread until it ends, for at most `timeout`, and joins those that ended.
/// The caller has asked the VM to stop. Returns the indices of the threads still running.
pub fn stop_and_join<H: VcpuThread>(threads: Vec<H>, timeout: Duration) -> Vec<u8> {
    let deadline = Instant::now() + timeout;
    let mut running = threads;
    loop {
        let (finished, still): (Vec<H>, Vec<H>) =
            running.into_iter().partition(VcpuThread::is_finished);
        for thread in finished {
            thread.join();
        }
        running = still;
        if running.is_empty() || Instant::now() >= deadline {
            break;
        }
        for thread in &running {
            thread.kick();
        }
        std::thread::sleep(KICK_INTERVAL);
    }
    running.iter().map(VcpuThread::index).collect()
}

fn report_left_behind(indices: &[u8]) {
    if !indices.is_empty() {
        log::error!(
            "vCPU(s) {indices:?} did not stop within {JOIN_TIMEOUT:?} of being asked; \
             vmm exits without waiting for them"
        );
    }
}

/// The running vCPU threads of a VM. Dropping it stops and joins them, so that a path
/// out of vmm that forgot to (a panic unwinding the main thread) still does.
pub struct VcpuThreads {
    lifecycle: Arc<Lifecycle>,
    pause_gate: Arc<PauseGate>,
    threads: Mutex<Vec<VcpuHandle>>,
}

impl VcpuThreads {
    /// Starts every vCPU (see [`start_all`]), each confining itself with `filter` first
    /// and parking at `pause_gate` while the VM is paused.
    pub fn start(
        vcpus: Vec<Vcpu>,
        lifecycle: Arc<Lifecycle>,
        filter: ThreadFilter,
        pause_gate: Arc<PauseGate>,
    ) -> Result<VcpuThreads, VcpuError> {
        let threads = start_all(
            vcpus,
            |vcpu| vcpu.start(filter.clone()),
            &lifecycle,
            || pause_gate.release(),
        )?;
        Ok(VcpuThreads {
            lifecycle,
            pause_gate,
            threads: Mutex::new(threads),
        })
    }

    /// Calls `f` with each running vCPU.
    pub fn for_each(&self, mut f: impl FnMut(&VcpuHandle)) {
        crate::sync::lock(&self.threads).iter().for_each(&mut f);
    }

    /// Stops and joins every vCPU thread (bounded by [`JOIN_TIMEOUT`]). The VM should have
    /// been asked to stop; if not, it is now. vCPUs parked by a pause leave the gate first.
    /// Later calls do nothing.
    pub fn stop(&self) {
        if !self.lifecycle.is_stopping() {
            self.lifecycle.request_stop(StopReason::Error(
                "vmm stopped the vCPUs without a reason (a bug)".to_string(),
            ));
        }
        self.pause_gate.release();
        let threads = std::mem::take(&mut *crate::sync::lock(&self.threads));
        report_left_behind(&stop_and_join(threads, JOIN_TIMEOUT));
    }
}

impl Drop for VcpuThreads {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::thread::JoinHandle;

    /// A stand-in for a vCPU thread: it ends once it sees the VM stopping after a kick,
    /// unless it is `stuck` (a vCPU that never comes back out of KVM), which ends only
    /// when the test releases it.
    struct FakeVcpu {
        index: u8,
        thread: JoinHandle<()>,
        kicks: Arc<AtomicUsize>,
        joined: Arc<AtomicUsize>,
    }

    fn fake(
        index: u8,
        lifecycle: &Arc<Lifecycle>,
        stuck: bool,
        release: &Arc<AtomicBool>,
        joined: &Arc<AtomicUsize>,
    ) -> FakeVcpu {
        let (lifecycle, release) = (lifecycle.clone(), release.clone());
        let kicks = Arc::new(AtomicUsize::new(0));
        let seen_kicks = kicks.clone();
        let thread = std::thread::spawn(move || loop {
            let kicked = seen_kicks.load(Ordering::SeqCst) > 0;
            if (!stuck && kicked && lifecycle.is_stopping()) || release.load(Ordering::SeqCst) {
                break;
            }
            std::thread::park_timeout(Duration::from_millis(10));
        });
        FakeVcpu {
            index,
            thread,
            kicks,
            joined: joined.clone(),
        }
    }

    impl VcpuThread for FakeVcpu {
        fn index(&self) -> u8 {
            self.index
        }
        fn kick(&self) {
            self.kicks.fetch_add(1, Ordering::SeqCst);
            self.thread.thread().unpark();
        }
        fn is_finished(&self) -> bool {
            self.thread.is_finished()
        }
        fn join(self) {
            self.thread.join().unwrap();
            self.joined.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn stopping_kicks_and_joins_every_vcpu() {
        let lifecycle = Arc::new(Lifecycle::new().unwrap());
        let (release, joined) = (Arc::default(), Arc::default());
        let vcpus: Vec<_> = (0..3)
            .map(|i| fake(i, &lifecycle, false, &release, &joined))
            .collect();
        let kicks: Vec<_> = vcpus.iter().map(|v| v.kicks.clone()).collect();
        lifecycle.request_stop(StopReason::ShutdownRequested);
        assert_eq!(stop_and_join(vcpus, JOIN_TIMEOUT), Vec::<u8>::new());
        assert_eq!(joined.load(Ordering::SeqCst), 3);
        assert!(kicks.iter().all(|k| k.load(Ordering::SeqCst) > 0));
    }

    #[test]
    fn a_vcpu_that_never_stops_is_left_behind_after_the_bound() {
        let lifecycle = Arc::new(Lifecycle::new().unwrap());
        let (release, joined) = (Arc::new(AtomicBool::new(false)), Arc::default());
        let vcpus = vec![
            fake(0, &lifecycle, false, &release, &joined),
            fake(1, &lifecycle, true, &release, &joined),
        ];
        lifecycle.request_stop(StopReason::ShutdownRequested);
        // The bound is what ends the wait: the stuck vCPU is reported, the other joined.
        assert_eq!(stop_and_join(vcpus, Duration::from_millis(100)), vec![1]);
        assert_eq!(joined.load(Ordering::SeqCst), 1);
        release.store(true, Ordering::SeqCst);
    }

    #[test]
    fn a_failed_start_stops_and_joins_the_vcpus_already_running() {
        let lifecycle = Arc::new(Lifecycle::new().unwrap());
        let (release, joined) = (Arc::default(), Arc::default());
        let mut attempts = Vec::new();
        let result = start_all(
            vec![0u8, 1, 2, 3],
            |index| {
                attempts.push(index);
                if index == 2 {
                    Err(VcpuError::Spawn {
                        index,
                        source: crate::seccomp::SpawnError::Thread(
                            std::io::Error::from_raw_os_error(libc::EAGAIN),
                        ),
                    })
                } else {
                    Ok(fake(index, &lifecycle, false, &release, &joined))
                }
            },
            &lifecycle,
            || {},
        );
        let Err(e) = result else {
            panic!("the start of vCPU 2 failed, so starting all must fail");
        };
        assert!(e.to_string().contains("vCPU 2"), "{e}");
        assert_eq!(attempts, [0, 1, 2], "nothing is started after a failure");
        assert_eq!(
            joined.load(Ordering::SeqCst),
            2,
            "vCPUs 0 and 1 were joined"
        );
        assert!(matches!(lifecycle.reason(), Some(StopReason::Error(m)) if m.contains("vCPU 2")));
    }
}
