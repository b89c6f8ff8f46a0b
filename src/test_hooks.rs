//! Faults injected on purpose, for the boot tests that check how vmm fails: a panic on a
//! given thread, a system call the seccomp filter refuses, and the like.
//!
//! Compiled in only with the `test-hooks` cargo feature, which the boot tests build vmm
//! with (`scripts/lib.sh`); in any other build [`injected`] is a constant `false` and the
//! optimiser removes every hook. A hook fires when `VMM_TEST_INJECT`, a comma-separated
//! list, names its point, e.g. `VMM_TEST_INJECT=panic:vcpu1`. Each point is documented
//! where it is checked and in docs/testing.md.

/// Whether the test asked for the fault at `point`.
#[cfg(feature = "test-hooks")]
pub fn injected(point: &str) -> bool {
    // std::env reads the environment block in memory: no system call, so this is safe
    // to ask from a thread under seccomp.
    std::env::var("VMM_TEST_INJECT").is_ok_and(|points| points.split(',').any(|p| p == point))
}

/// Whether the test asked for the fault at `point`: never, in this build.
#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub fn injected(_point: &str) -> bool {
    false
}
