//! Timeline: one guest through the scripted workload, its VMM's resident memory sampled
//! throughout: boot, idle, fill 300 MiB and free it, inflate and deflate the balloon by
//! 256 MiB and by 1 GiB of the guest's 2, then a burst that needs more memory than the
//! balloon left the guest, which deflate-on-oom has to give back.

use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use super::{fail, kib_to_mib, percentile, since, Guest, Outcome, Phases, StepError};
use crate::figures::key;
use crate::launch::VmmUnderTest;
use crate::plan::{self, GuestFiles, Scenario, TimelineParts, FILL_MIB};
use crate::procfs;
use crate::sampler::{self, Sampler};

const MIB: u64 = 1 << 20;
/// The idle stretch after boot.
const IDLE: Duration = Duration::from_secs(10);
/// How long the filled memory is held before it is freed.
const HOLD: Duration = Duration::from_secs(3);
/// How long the host's RSS is watched after the guest freed the memory.
const WATCH_FREED: Duration = Duration::from_secs(11);
/// The moments after the free at which the returned share is reported.
const RETURNED_AT: [(f64, &str); 4] = [
    (1.0, key::RETURNED_1S_PCT),
    (2.0, key::RETURNED_2S_PCT),
    (5.0, key::RETURNED_5S_PCT),
    (10.0, key::RETURNED_10S_PCT),
];
/// The pause between two balloon resizes.
const SETTLE: Duration = Duration::from_secs(2);
/// The balloon during the burst, and what the guest then asks for.
const BURST_BALLOON_MIB: u64 = 1024;
const BURST_MIB: u64 = 1152;

/// Where the freed memory was measured from.
struct Freed {
    /// When the guest's `rm` returned, in seconds since exec.
    at_s: f64,
    /// The VMM's RSS just before.
    filled_kib: u64,
}

pub fn run(
    vmm: &VmmUnderTest,
    files: &GuestFiles,
    parts: TimelineParts,
    dir: &Path,
    out: &mut Outcome,
) -> Result<(), StepError> {
    let machine = plan::machine(Scenario::Timeline, files);
    let mut guest = Guest::start(vmm, &machine, dir, "guest")?;
    out.command = guest.command.clone();
    let sampler = Sampler::start(guest.exec_at, vec![guest.pid]);
    let mut freed = None;
    let result = workload(&mut guest, parts, dir, out, &mut freed);
    out.samples = sampler.stop();
    if let Some(freed) = freed {
        out.set(key::FREED_AT_S, freed.at_s);
        out.set(key::FILLED_RSS_MIB, kib_to_mib(freed.filled_kib));
        for (after_s, key) in RETURNED_AT {
            if let Some(now) = sampler::total_kib_at(&out.samples, freed.at_s + after_s) {
                let returned = freed.filled_kib as f64 - now;
                out.set(key, 100.0 * returned / (FILL_MIB * 1024) as f64);
            }
        }
    }
    result?;
    guest.poweroff()
}

fn workload(
    guest: &mut Guest,
    parts: TimelineParts,
    dir: &Path,
    out: &mut Outcome,
    freed: &mut Option<Freed>,
) -> Result<(), StepError> {
    let mut phases = Phases::new(guest.exec_at);
    phases.next("boot", &[guest], out);
    guest.wait_ready()?;
    guest.control()?;
    phases.next("idle", &[guest], out);
    thread::sleep(IDLE);

    if parts.reclaim {
        let before = rss_kib(guest)?;
        phases.next(&format!("fill {FILL_MIB}M"), &[guest], out);
        guest.run(&format!(
            "dd if=/dev/zero of=/tmp/fill bs=1M count={FILL_MIB} 2>/dev/null"
        ))?;
        thread::sleep(HOLD);
        let filled_kib = rss_kib(guest)?;
        out.set(
            key::FILL_RISE_MIB,
            kib_to_mib(filled_kib.saturating_sub(before)),
        );
        phases.next("free it", &[guest], out);
        let (done, _) = guest.run("rm /tmp/fill")?;
        *freed = Some(Freed {
            at_s: since(guest.exec_at, done),
            filled_kib,
        });
        thread::sleep(WATCH_FREED);
        phases.end(&[guest], out);
    }

    let mut ballooned_mib = 0;
    if parts.inflate {
        for (mib, inflate_key, deflate_key) in [
            (256, key::INFLATE_256_S, key::DEFLATE_256_S),
            (1024, key::INFLATE_1024_S, key::DEFLATE_1024_S),
        ] {
            phases.next(&format!("inflate {}", size_name(mib)), &[guest], out);
            let took = guest.resize(mib * MIB, Some(&mut out.latencies_ms))?;
            phases.end(&[guest], out);
            out.set(inflate_key, took);
            save_metrics(guest, dir, &format!("metrics-inflated-{mib}M.txt"))?;
            thread::sleep(SETTLE);
            if mib == 1024 {
                out.set(key::RSS_INFLATED_1024_MIB, kib_to_mib(rss_kib(guest)?));
            }
            phases.next("deflate", &[guest], out);
            out.set(deflate_key, guest.resize(0, None)?);
            phases.end(&[guest], out);
            thread::sleep(SETTLE);
        }
        if let Some(p50) = percentile(&out.latencies_ms, 50.0) {
            out.set(key::API_P50_MS, p50);
        }
        if let Some(p99) = percentile(&out.latencies_ms, 99.0) {
            out.set(key::API_P99_MS, p99);
        }
    }

    if parts.burst {
        phases.next(
            &format!("inflate {}", size_name(BURST_BALLOON_MIB)),
            &[guest],
            out,
        );
        guest.resize(BURST_BALLOON_MIB * MIB, None)?;
        ballooned_mib = BURST_BALLOON_MIB;
        phases.end(&[guest], out);
        thread::sleep(SETTLE);
        phases.next(&format!("burst {}", size_name(BURST_MIB)), &[guest], out);
        let started = Instant::now();
        // memcheck fills its memory, prints a line and waits; the loop ends when it has
        // filled or was killed.
        let (done, output) = guest.run(&format!(
            "memcheck fill {BURST_MIB} >/tmp/burst.log 2>&1 & p=$!; \
             while kill -0 $p 2>/dev/null && ! grep -q FILLED /tmp/burst.log; do sleep 0.1; done; \
             cat /tmp/burst.log"
        ))?;
        let took = since(started, done);
        let (_, kills) = guest.run("dmesg | grep -c 'Killed process' || true")?;
        let kills: f64 = kills.trim().parse().unwrap_or(f64::NAN);
        out.set(key::BURST_OOM_KILLS, kills);
        let left = guest.control()?.balloon_bytes()? / MIB;
        out.set(
            key::BURST_DEFLATED_MIB,
            BURST_BALLOON_MIB.saturating_sub(left) as f64,
        );
        if !output.contains("MEMCHECK FILLED") {
            return fail(format!(
                "the burst of {BURST_MIB} MiB did not complete ({kills} processes killed by the guest's OOM killer): {output:?}"
            ));
        }
        out.set(key::BURST_S, took);
        phases.next("free", &[guest], out);
        // Wait for the filler within the command: busybox's interactive shell exits (as on
        // end of input) when a background job ends while it sits at its prompt.
        guest.run("memcheck stop && wait")?;
    }

    if ballooned_mib > 0 {
        phases.next("deflate", &[guest], out);
        guest.resize(0, None)?;
    }
    phases.end(&[guest], out);
    thread::sleep(SETTLE);
    out.set(key::OWN_END_MIB, kib_to_mib(guest.memory_use()?.own_kib()));
    Ok(())
}

fn rss_kib(guest: &Guest) -> Result<u64, StepError> {
    match procfs::read_vm_rss_kib(guest.pid) {
        Some(kib) => Ok(kib),
        None => fail("the VMM process is gone"),
    }
}

/// vmm's metrics at this point, when the vmm serves them (for reading where the time
/// went; not a figure).
fn save_metrics(guest: &mut Guest, dir: &Path, name: &str) -> Result<(), StepError> {
    if let Some(text) = guest.control()?.metrics() {
        fs::write(dir.join(name), text)?;
    }
    Ok(())
}

fn size_name(mib: u64) -> String {
    if mib.is_multiple_of(1024) {
        format!("{}G", mib / 1024)
    } else {
        format!("{mib}M")
    }
}
