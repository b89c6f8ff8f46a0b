//! Boot: how long a guest takes to come up and what its VMM then costs. With `idle`, the
//! guest is left alone until 30 s after it was ready, and the host's cost of an idle guest
//! is set against the memory the guest itself uses.

use std::path::Path;
use std::thread;
use std::time::Duration;

use super::{kib_to_mib, since, Guest, Outcome, Phases, StepError};
use crate::figures::key;
use crate::launch::VmmUnderTest;
use crate::plan::{self, GuestFiles, Scenario};
use crate::sampler::Sampler;

/// How long after its ready marker an idle guest is measured.
pub const IDLE_AFTER_READY: Duration = Duration::from_secs(30);

pub fn run(
    vmm: &VmmUnderTest,
    files: &GuestFiles,
    dir: &Path,
    out: &mut Outcome,
    idle: bool,
) -> Result<(), StepError> {
    let scenario = if idle {
        Scenario::Boot
    } else {
        Scenario::Minimal
    };
    let machine = plan::machine(scenario, files);
    let mut guest = Guest::start(vmm, &machine, dir, "guest")?;
    out.command = guest.command.clone();
    let sampler = Sampler::start(guest.exec_at, vec![guest.pid]);
    let result = measure(&mut guest, out, idle);
    out.samples = sampler.stop();
    result?;
    guest.poweroff()
}

fn measure(guest: &mut Guest, out: &mut Outcome, idle: bool) -> Result<(), StepError> {
    let mut phases = Phases::new(guest.exec_at);
    phases.next("boot", &[guest], out);
    let ready = guest.wait_ready()?;
    let at_ready = guest.memory_use()?;
    phases.end(&[guest], out);
    let exec_to_ready = since(guest.exec_at, ready);
    out.set(key::EXEC_TO_READY_S, exec_to_ready);
    out.set(key::RSS_READY_MIB, kib_to_mib(at_ready.rss_kib));
    out.set(key::OWN_READY_MIB, kib_to_mib(at_ready.own_kib()));
    let kernel_s = guest.kernel_time_at(ready)?;
    out.set(key::PRE_KERNEL_S, exec_to_ready - kernel_s);
    if !idle {
        return Ok(());
    }

    phases.next("idle", &[guest], out);
    // QEMU starts polling the balloon's statistics only when told to, through QMP.
    guest.control()?;
    if let Some(left) = IDLE_AFTER_READY.checked_sub(ready.elapsed()) {
        thread::sleep(left);
    }
    let host = guest.memory_use()?;
    let (_, vmm_cpu_s) = phases.end(&[guest], out);
    let idle_s = out.phases.last().map_or(0.0, |p| p.end_s - p.start_s);
    let (used_mib, not_free_mib) = guest.guest_used_mib()?;
    let rss_mib = kib_to_mib(host.rss_kib);
    out.set(key::RSS_IDLE_MIB, rss_mib);
    out.set(key::OWN_IDLE_MIB, kib_to_mib(host.own_kib()));
    out.set(key::GUEST_USED_IDLE_MIB, used_mib);
    out.set(key::GUEST_NOT_FREE_IDLE_MIB, not_free_mib);
    if used_mib > 0.0 {
        out.set(key::IDLE_RATIO, rss_mib / used_mib);
    }
    if not_free_mib > 0.0 {
        out.set(key::IDLE_RATIO_NOT_FREE, rss_mib / not_free_mib);
    }
    if idle_s > 0.0 {
        out.set(key::IDLE_VMM_CPU_PCT, 100.0 * vmm_cpu_s / idle_s);
    }
    Ok(())
}
