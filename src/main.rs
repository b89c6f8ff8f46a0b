//! The `vmm` command line. (Being written.)
fn main() {}
