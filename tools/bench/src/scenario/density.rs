//! Density: four guests started at once, each filling and then freeing 300 MiB at the same
//! time, the total resident memory of their VMMs sampled throughout.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use super::{fail, kib_to_mib, since, Guest, Outcome, Phases, StepError};
use crate::figures::key;
use crate::launch::VmmUnderTest;
use crate::plan::{self, GuestFiles, Scenario, DENSITY_GUESTS, FILL_MIB};
use crate::procfs;
use crate::sampler::Sampler;

const IDLE: Duration = Duration::from_secs(10);
const HOLD: Duration = Duration::from_secs(3);
/// How long after the free the memory given back is measured.
const AFTER_FREE: Duration = Duration::from_secs(10);

pub fn run(
    vmm: &VmmUnderTest,
    files: &GuestFiles,
    dir: &Path,
    out: &mut Outcome,
) -> Result<(), StepError> {
    let machine = plan::machine(Scenario::Density, files);
    let mut guests = Vec::with_capacity(DENSITY_GUESTS);
    for i in 0..DENSITY_GUESTS {
        guests.push(Guest::start(vmm, &machine, dir, &format!("guest{i}"))?);
    }
    out.command = guests[0].command.clone();
    let origin = guests[0].exec_at;
    let sampler = Sampler::start(origin, guests.iter().map(|g| g.pid).collect());
    let result = workload(&mut guests, origin, out);
    out.samples = sampler.stop();
    result?;
    for guest in guests {
        guest.poweroff()?;
    }
    Ok(())
}

fn workload(guests: &mut [Guest], origin: Instant, out: &mut Outcome) -> Result<(), StepError> {
    let mut phases = Phases::new(origin);
    phases.next("boot", &refs(guests), out);
    let mut last_ready = origin;
    for guest in guests.iter_mut() {
        last_ready = last_ready.max(guest.wait_ready()?);
        guest.control()?;
    }
    out.set(key::ALL_READY_S, since(origin, last_ready));

    phases.next("idle", &refs(guests), out);
    thread::sleep(IDLE);
    out.set(key::TOTAL_RSS_IDLE_MIB, kib_to_mib(total_rss_kib(guests)?));

    phases.next(&format!("fill {FILL_MIB}M each"), &refs(guests), out);
    in_every_guest(
        guests,
        &format!("dd if=/dev/zero of=/tmp/fill bs=1M count={FILL_MIB} 2>/dev/null"),
    )?;
    thread::sleep(HOLD);
    let filled = total_rss_kib(guests)?;
    out.set(key::TOTAL_RSS_PEAK_MIB, kib_to_mib(filled));

    phases.next("free it", &refs(guests), out);
    in_every_guest(guests, "rm /tmp/fill")?;
    thread::sleep(AFTER_FREE);
    let after = total_rss_kib(guests)?;
    out.set(key::TOTAL_RSS_FREED_MIB, kib_to_mib(after));
    let freed_kib = (DENSITY_GUESTS as u64 * FILL_MIB * 1024) as f64;
    out.set(
        key::DENSITY_RETURNED_PCT,
        100.0 * filled.saturating_sub(after) as f64 / freed_kib,
    );
    let mut own_kib = 0;
    for guest in guests.iter() {
        own_kib += guest.memory_use()?.own_kib();
    }
    out.set(
        key::OWN_PER_GUEST_MIB,
        kib_to_mib(own_kib) / DENSITY_GUESTS as f64,
    );
    phases.end(&refs(guests), out);
    Ok(())
}

fn refs(guests: &[Guest]) -> Vec<&Guest> {
    guests.iter().collect()
}

/// Runs `command` in every guest at once and waits for all of them.
fn in_every_guest(guests: &mut [Guest], command: &str) -> Result<(), StepError> {
    let mut pending = Vec::with_capacity(guests.len());
    for guest in guests.iter_mut() {
        pending.push(guest.start_command(command)?);
    }
    for (guest, p) in guests.iter_mut().zip(pending) {
        guest.finish(p)?;
    }
    Ok(())
}

fn total_rss_kib(guests: &[Guest]) -> Result<u64, StepError> {
    let mut total = 0;
    for guest in guests {
        match procfs::read_vm_rss_kib(guest.pid) {
            Some(kib) => total += kib,
            None => return fail(format!("VMM process {} is gone", guest.pid)),
        }
    }
    Ok(total)
}
