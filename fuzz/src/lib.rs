//! Fuzz targets for vmm's four surfaces that take hostile input, run by `cargo fuzz`
//! (`fuzz_targets/` holds one thin `fuzz_target!` per module here; `README.md` says how to
//! run them):
//!
//! - [`virtio_mmio`]: the virtio-mmio register window, driven by arbitrary accesses, with
//!   the balloon behind it;
//! - [`balloon_queues`]: the balloon's queue processing over arbitrary guest memory:
//!   descriptor tables, rings, PFN arrays, statistics, reports and hints, every feature
//!   combination;
//! - [`api_request`]: bytes a client sends to the API socket, through the connection's
//!   framing and the router, against a model VM with a real balloon;
//! - [`cli_parsers`]: `--balloon` values and sizes as users write them.
//!
//! Each target reads its input with [`input::Input`], a little-endian byte reader that
//! yields zeros once the data runs out, and writes its seeds with [`input::Script`], its
//! mirror image, so the committed seed corpus (`seeds/`) is generated from readable code
//! ([`seeds`]) rather than kept as opaque bytes. Besides not panicking, each target checks
//! properties of what it drives (the registers' fixed values, the per-notification
//! budgets, answers that are well-formed HTTP, parsers that read back what they print).

pub mod api_request;
pub mod balloon_queues;
pub mod cli_parsers;
pub mod input;
pub mod machine;
pub mod virtio_mmio;

/// A fuzz target: its name (as in `fuzz_targets/` and `seeds/`), its entry point and its
/// named seeds.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
    pub seeds: fn() -> Vec<(&'static str, Vec<u8>)>,
}

/// Every target, for the tests that keep `seeds/` up to date and replay it.
pub const TARGETS: &[Target] = &[
    Target {
        name: "virtio_mmio",
        run: virtio_mmio::run,
        seeds: virtio_mmio::seeds,
    },
    Target {
        name: "balloon_queues",
        run: balloon_queues::run,
        seeds: balloon_queues::seeds,
    },
    Target {
        name: "api_request",
        run: api_request::run,
        seeds: api_request::seeds,
    },
    Target {
        name: "cli_parsers",
        run: cli_parsers::run,
        seeds: cli_parsers::seeds,
    },
];

/// The seeds of the target called `name`.
pub fn seeds(name: &str) -> Vec<(&'static str, Vec<u8>)> {
    TARGETS
        .iter()
        .find(|t| t.name == name)
        .map_or_else(Vec::new, |t| (t.seeds)())
}
