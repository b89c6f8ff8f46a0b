//! x86_64 machine set-up: where things live in guest memory, how the kernel is told about
//! them (boot params, e820, ACPI, MP table) and the state a vCPU starts in.

pub mod acpi;
pub mod boot;
pub mod cmdline;
pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod regs;
