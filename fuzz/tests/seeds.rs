//! The committed inputs: `seeds/<target>/` holds exactly what each target's `seeds()`
//! makes (run with `VMM_FUZZ_WRITE_SEEDS=1` to rewrite them after changing a target), and
//! every seed and every kept crasher (`regressions/<target>/`) runs through its target
//! without failing. This runs without libFuzzer: `cargo test` in this directory.

use std::fs;
use std::path::{Path, PathBuf};

use vmm_fuzz::TARGETS;

fn dir(kind: &str, target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(kind)
        .join(target)
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file() && !p.ends_with("README.md"))
        .collect();
    files.sort();
    files
}

#[test]
fn committed_seeds_are_what_the_targets_make() {
    let write = std::env::var_os("VMM_FUZZ_WRITE_SEEDS").is_some();
    for target in TARGETS {
        let seed_dir = dir("seeds", target.name);
        let seeds = (target.seeds)();
        assert!(!seeds.is_empty(), "{} has no seeds", target.name);
        if write {
            // File by file, never the directory at once: the other tests read it meanwhile.
            fs::create_dir_all(&seed_dir).unwrap();
            for (name, bytes) in &seeds {
                fs::write(seed_dir.join(name), bytes).unwrap();
            }
            for stale in files(&seed_dir) {
                let name = stale.file_name().unwrap().to_string_lossy().into_owned();
                if !seeds.iter().any(|(n, _)| *n == name) {
                    fs::remove_file(stale).unwrap();
                }
            }
        }
        let mut names: Vec<&str> = seeds.iter().map(|(name, _)| *name).collect();
        names.sort();
        let on_disk: Vec<String> = files(&seed_dir)
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            on_disk, names,
            "{}: seeds/ differs from seeds(); VMM_FUZZ_WRITE_SEEDS=1 rewrites it",
            target.name
        );
        for (name, bytes) in &seeds {
            let committed = fs::read(seed_dir.join(name)).unwrap();
            assert!(
                &committed == bytes,
                "{}/{name} is out of date; VMM_FUZZ_WRITE_SEEDS=1 rewrites it",
                target.name
            );
        }
    }
}

#[test]
fn every_seed_and_kept_crasher_runs_clean() {
    for target in TARGETS {
        for kind in ["seeds", "regressions"] {
            for file in files(&dir(kind, target.name)) {
                let bytes = fs::read(&file).unwrap();
                eprintln!("{}", file.display());
                (target.run)(&bytes);
            }
        }
    }
}

// The seeds do what their names say, so the fuzzer starts from inputs that reach deep.

#[test]
fn the_mmio_seeds_bring_the_balloon_up() {
    let machine = vmm_fuzz::virtio_mmio::drive(&vmm_fuzz::seeds("virtio_mmio")[0].1);
    let balloon = vmm::sync::lock(&machine.balloon);
    assert_eq!(balloon.counters().inflated_pages, 1);
    assert_eq!(balloon.info().target_pages, 256);
    assert!(!balloon.info().driver_ready, "the seed ends with a reset");
    drop(balloon);
    let machine = vmm_fuzz::virtio_mmio::drive(&vmm_fuzz::seeds("virtio_mmio")[1].1);
    let info = vmm::sync::lock(&machine.balloon).info();
    assert!(info.driver_ready);
    assert_eq!(info.actual_pages, 7);
}

#[test]
fn the_queue_seeds_reach_every_queue() {
    let drive = |name: &str| {
        let seeds = vmm_fuzz::seeds("balloon_queues");
        let (_, bytes) = seeds.iter().find(|(n, _)| *n == name).unwrap();
        vmm_fuzz::balloon_queues::drive(bytes)
    };
    let machine = drive("inflate-deflate-reset");
    let counters = machine.counters();
    assert_eq!(
        (counters.inflated_pages, counters.deflated_pages),
        (256, 256)
    );
    assert!(
        vmm::sync::lock(&machine.balloon).info().driver_ready,
        "up again"
    );
    let machine = drive("stats");
    let balloon = vmm::sync::lock(&machine.balloon);
    let statistics = balloon.statistics().unwrap();
    assert_eq!(statistics.stats.free_memory, Some(4 << 20));
    assert_eq!(balloon.info().stats_interval_s, 1);
    drop(balloon);
    let counters = drive("reporting").counters();
    assert_eq!(counters.reported_bytes, 4 << 20);
    assert_eq!(counters.discarded_bytes, 4 << 20);
    let hinting = drive("hinting");
    let counters = hinting.counters();
    assert_eq!(counters.hinted_bytes, 2 << 20);
    assert_eq!(counters.discarded_bytes, 2 << 20);
    let balloon = vmm::sync::lock(&hinting.balloon);
    assert_eq!(balloon.info().acked_features & 0x3f, 0x3f);
}

#[test]
fn the_api_seeds_reach_every_route() {
    let seeds = vmm_fuzz::seeds("api_request");
    let statuses = |name: &str| -> Vec<u16> {
        let (_, bytes) = seeds.iter().find(|(n, _)| *n == name).unwrap();
        let answers = vmm_fuzz::api_request::exchange(bytes);
        String::from_utf8_lossy(&answers)
            .match_indices("HTTP/1.1 ")
            .map(|(at, _)| {
                let text = String::from_utf8_lossy(&answers[at + 9..at + 12]).into_owned();
                text.parse().unwrap()
            })
            .collect()
    };
    assert_eq!(statuses("patch-balloon"), [204]);
    assert_eq!(
        statuses("every-route-pipelined"),
        [200, 200, 200, 200, 204, 204, 200, 204, 405, 204]
    );
    assert_eq!(statuses("refusals"), [404, 405, 100, 409, 413]);
}
