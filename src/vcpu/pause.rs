//! Pausing the vCPUs: a gate every vCPU thread passes before each `KVM_RUN`.
//!
//! While the VM runs, passing the gate is one atomic load. [`PauseGate::pause`] closes it
//! and kicks each vCPU thread out of `KVM_RUN`; the thread finds the gate closed and
//! parks on a condition variable, without polling, until [`PauseGate::resume`] or
//! [`PauseGate::release`] (the VM is stopping) opens it again. `pause` returns only once
//! every vCPU thread is parked, so when it returns no vCPU is in guest mode, nor can one
//! enter it.
//!
//! A kick is a signal, and a signal that arrives while the thread is handling an exit
//! (outside `KVM_RUN`) interrupts nothing: the thread may have looked at the gate just
//! before it closed and go back into the guest. So `pause` kicks again every
//! [`REKICK_INTERVAL`] until each thread has parked, as stopping the vCPUs does.
//!
//! A vCPU that parks in the middle of an instruction (an MMIO read whose value KVM
//! completes on the next `KVM_RUN`) simply finishes it after the resume.
//!
//! Guest time: the guest's clock (kvmclock) follows the host's, so after a resume the
//! guest's time has moved on by the length of the pause, as wall-clock time has. Each vCPU
//! tells KVM it was stopped (`KVM_KVMCLOCK_CTRL`, the `on_park` hook of
//! [`PauseGate::wait_while_paused`]) so that the guest's soft-lockup watchdog does not
//! take the jump for a hung CPU.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::sync::lock;

/// How often [`PauseGate::pause`] kicks the vCPUs that have not parked yet.
pub const REKICK_INTERVAL: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PauseError {
    #[error("the VM is stopping")]
    Stopping,
    #[error("the VM was resumed before every vCPU had stopped")]
    Resumed,
    #[error("vCPU {} did not leave the guest within {} ms; the VM keeps running", .running.iter().map(u8::to_string).collect::<Vec<_>>().join(", vCPU "), .waited.as_millis())]
    Timeout { running: Vec<u8>, waited: Duration },
}

/// A vCPU thread that runs its loop, as the gate knows it.
struct Member {
    index: u8,
    thread: libc::pthread_t,
    parked: bool,
}

#[derive(Default)]
struct GateState {
    /// Closed by `pause`, opened by `resume`.
    paused: bool,
    /// The VM is stopping: the gate stays open for good.
    released: bool,
    members: Vec<Member>,
}

impl GateState {
    fn running(&self) -> Vec<u8> {
        self.members
            .iter()
            .filter(|m| !m.parked)
            .map(|m| m.index)
            .collect()
    }
}

/// The gate the vCPU threads pass before each `KVM_RUN`; shared by the vCPUs and the
/// controller that pauses them.
#[derive(Default)]
pub struct PauseGate {
    /// `GateState::paused && !GateState::released`, readable without the lock: the vCPUs'
    /// fast path.
    closed: AtomicBool,
    state: Mutex<GateState>,
    changed: Condvar,
}

/// A vCPU thread's membership of the gate; it leaves when this is dropped, as the thread
/// ends its loop.
pub struct Membership {
    gate: Arc<PauseGate>,
    thread: libc::pthread_t,
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut state = lock(&self.gate.state);
        state.members.retain(|m| m.thread != self.thread);
        self.gate.changed.notify_all();
    }
}

impl PauseGate {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the calling thread, vCPU `index`, a member: `pause` waits for it to park and
    /// kicks it until it does. Call it on the vCPU thread before its first `KVM_RUN`, and
    /// keep the result until the thread leaves its loop.
    pub fn join(self: &Arc<Self>, index: u8) -> Membership {
        // SAFETY: pthread_self has no preconditions.
        let thread = unsafe { libc::pthread_self() };
        let mut state = lock(&self.state);
        state.members.push(Member {
            index,
            thread,
            parked: false,
        });
        self.changed.notify_all();
        Membership {
            gate: self.clone(),
            thread,
        }
    }

    /// Whether the VM is paused (a vCPU must not enter the guest).
    pub fn is_paused(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Called by a member before each `KVM_RUN`: returns at once while the VM runs; while
    /// it is paused, calls `on_park` and waits until the VM is resumed or stopping.
    pub fn wait_while_paused(&self, on_park: impl FnOnce()) {
        if !self.is_paused() {
            return;
        }
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        let mut state = lock(&self.state);
        if !state.paused || state.released {
            return;
        }
        on_park();
        set_parked(&mut state, me, true);
        self.changed.notify_all();
        while state.paused && !state.released {
            state = self.wait(state, None);
        }
        set_parked(&mut state, me, false);
    }

    /// Pauses the VM: returns once every member is parked, so that no vCPU runs. Gives up
    /// after `timeout`, and then lets the VM run on. Pausing a paused VM changes nothing.
    pub fn pause(&self, timeout: Duration) -> Result<(), PauseError> {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.state);
        if state.released {
            return Err(PauseError::Stopping);
        }
        state.paused = true;
        self.closed.store(true, Ordering::SeqCst);
        loop {
            if state.released {
                return Err(PauseError::Stopping);
            }
            if !state.paused {
                return Err(PauseError::Resumed);
            }
            let running: Vec<&Member> = state.members.iter().filter(|m| !m.parked).collect();
            if running.is_empty() {
                return Ok(());
            }
            for member in running {
                kick(member.thread);
            }
            let now = Instant::now();
            if now >= deadline {
                let running = state.running();
                self.open(&mut state);
                return Err(PauseError::Timeout {
                    running,
                    waited: timeout,
                });
            }
            state = self.wait(state, Some(REKICK_INTERVAL.min(deadline - now)));
        }
    }

    /// Lets the parked vCPUs run again. Resuming a running VM changes nothing.
    pub fn resume(&self) {
        let mut state = lock(&self.state);
        self.open(&mut state);
    }

    /// The VM is stopping: parked vCPUs leave the gate (and then their loop), and the VM
    /// cannot be paused any more.
    pub fn release(&self) {
        let mut state = lock(&self.state);
        state.released = true;
        self.open(&mut state);
    }

    fn open(&self, state: &mut GateState) {
        state.paused = false;
        self.closed.store(false, Ordering::SeqCst);
        self.changed.notify_all();
    }

    fn wait<'a>(
        &self,
        state: MutexGuard<'a, GateState>,
        timeout: Option<Duration>,
    ) -> MutexGuard<'a, GateState> {
        match timeout {
            None => self
                .changed
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            Some(timeout) => {
                self.changed
                    .wait_timeout(state, timeout)
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .0
            }
        }
    }
}

fn set_parked(state: &mut GateState, thread: libc::pthread_t, parked: bool) {
    if let Some(member) = state.members.iter_mut().find(|m| m.thread == thread) {
        member.parked = parked;
    }
}

/// Interrupts `thread`'s `KVM_RUN` (or whatever system call it is in).
fn kick(thread: libc::pthread_t) {
    // SAFETY: `thread` is a member, and members are kicked only with the gate's lock held;
    // a member leaves (under that lock) before its thread ends, so the thread is alive.
    // The kick signal has a handler that does nothing (`install_kick_handler`).
    unsafe {
        libc::pthread_kill(thread, super::kick_signal());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::thread::{self, JoinHandle};

    /// A stand-in for a vCPU thread: it passes the gate, then "runs the guest" (counts
    /// and sleeps a little), until told to stop.
    struct FakeVcpu {
        runs: Arc<AtomicU64>,
        parks: Arc<AtomicU64>,
        thread: JoinHandle<()>,
    }

    fn start(gate: &Arc<PauseGate>, index: u8, stop: &Arc<AtomicBool>) -> FakeVcpu {
        super::super::install_kick_handler().unwrap();
        let runs = Arc::new(AtomicU64::new(0));
        let parks = Arc::new(AtomicU64::new(0));
        let (gate, stop) = (gate.clone(), stop.clone());
        let (thread_runs, thread_parks) = (runs.clone(), parks.clone());
        let thread = thread::spawn(move || {
            let _membership = gate.join(index);
            while !stop.load(Ordering::SeqCst) {
                gate.wait_while_paused(|| {
                    thread_parks.fetch_add(1, Ordering::SeqCst);
                });
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                thread_runs.fetch_add(1, Ordering::SeqCst);
                thread::sleep(Duration::from_millis(1));
            }
        });
        FakeVcpu {
            runs,
            parks,
            thread,
        }
    }

    fn wait_for_runs(vcpus: &[FakeVcpu], at_least: u64) {
        while vcpus
            .iter()
            .any(|v| v.runs.load(Ordering::SeqCst) < at_least)
        {
            thread::sleep(Duration::from_millis(1));
        }
    }

    const GENEROUS: Duration = Duration::from_secs(60);

    #[test]
    fn a_paused_vm_runs_no_vcpu_until_resumed() {
        let gate = Arc::new(PauseGate::new());
        let stop = Arc::new(AtomicBool::new(false));
        let vcpus: Vec<FakeVcpu> = (0..3).map(|i| start(&gate, i, &stop)).collect();
        wait_for_runs(&vcpus, 5);

        for round in 1..=3 {
            gate.pause(GENEROUS).unwrap();
            assert!(gate.is_paused());
            // Pausing again changes nothing.
            gate.pause(GENEROUS).unwrap();
            let frozen: Vec<u64> = vcpus
                .iter()
                .map(|v| v.runs.load(Ordering::SeqCst))
                .collect();
            thread::sleep(Duration::from_millis(30));
            let later: Vec<u64> = vcpus
                .iter()
                .map(|v| v.runs.load(Ordering::SeqCst))
                .collect();
            assert_eq!(frozen, later, "a vCPU ran while paused (round {round})");
            for vcpu in &vcpus {
                assert_eq!(vcpu.parks.load(Ordering::SeqCst), round);
            }

            gate.resume();
            assert!(!gate.is_paused());
            wait_for_runs(&vcpus, frozen.iter().max().unwrap() + 5);
        }
        stop.store(true, Ordering::SeqCst);
        gate.release();
        for vcpu in vcpus {
            vcpu.thread.join().unwrap();
        }
    }

    #[test]
    fn stopping_lets_parked_vcpus_leave_and_refuses_later_pauses() {
        let gate = Arc::new(PauseGate::new());
        let stop = Arc::new(AtomicBool::new(false));
        let vcpus: Vec<FakeVcpu> = (0..2).map(|i| start(&gate, i, &stop)).collect();
        wait_for_runs(&vcpus, 1);
        gate.pause(GENEROUS).unwrap();

        // What a shutdown or a signal does while paused: the stop flag, then the release.
        stop.store(true, Ordering::SeqCst);
        gate.release();
        for vcpu in vcpus {
            vcpu.thread.join().unwrap();
        }
        assert!(!gate.is_paused());
        assert_eq!(gate.pause(GENEROUS), Err(PauseError::Stopping));
        assert!(!gate.is_paused());
    }

    #[test]
    fn a_pause_before_the_vcpus_start_holds_them_at_the_gate() {
        let gate = Arc::new(PauseGate::new());
        let stop = Arc::new(AtomicBool::new(false));
        // No member yet: the pause holds at once, and vCPUs that start later park before
        // they run.
        gate.pause(GENEROUS).unwrap();
        let vcpus: Vec<FakeVcpu> = (0..2).map(|i| start(&gate, i, &stop)).collect();
        while vcpus.iter().any(|v| v.parks.load(Ordering::SeqCst) == 0) {
            thread::sleep(Duration::from_millis(1));
        }
        assert!(vcpus.iter().all(|v| v.runs.load(Ordering::SeqCst) == 0));
        gate.resume();
        wait_for_runs(&vcpus, 3);
        stop.store(true, Ordering::SeqCst);
        gate.release();
        for vcpu in vcpus {
            vcpu.thread.join().unwrap();
        }
    }

    #[test]
    fn a_vcpu_that_never_comes_back_fails_the_pause_and_the_vm_runs_on() {
        let gate = Arc::new(PauseGate::new());
        // A member stuck outside the gate (say, in a device that blocks): a kick cannot
        // bring it back, so the pause gives up and reopens the gate.
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let (leave_tx, leave_rx) = std::sync::mpsc::channel::<()>();
        let stuck_gate = gate.clone();
        super::super::install_kick_handler().unwrap();
        let stuck = thread::spawn(move || {
            let _membership = stuck_gate.join(7);
            entered_tx.send(()).unwrap();
            leave_rx.recv().unwrap();
        });
        entered_rx.recv().unwrap();
        let error = gate.pause(Duration::from_millis(50)).unwrap_err();
        assert_eq!(
            error,
            PauseError::Timeout {
                running: vec![7],
                waited: Duration::from_millis(50)
            }
        );
        assert_eq!(
            error.to_string(),
            "vCPU 7 did not leave the guest within 50 ms; the VM keeps running"
        );
        assert!(!gate.is_paused());
        leave_tx.send(()).unwrap();
        stuck.join().unwrap();
        // With no member left, a pause holds at once.
        gate.pause(GENEROUS).unwrap();
    }
}
