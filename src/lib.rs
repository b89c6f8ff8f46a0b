//! vmm: a small KVM virtual machine monitor built around a complete virtio memory balloon.
//!
//! The crate is a library so that every piece can be tested without a VM; `src/main.rs`
//! is only the command line on top of it. A map of the modules:
//!
//! - [`size`]: sizes as users write them (`512M`, `2GiB`, plain bytes).
//! - [`sync`]: the lock helper every shared device and state goes through.
//! - [`memory`]: guest RAM, its backing, and giving pages back to the host.
//! - [`arch`]: x86_64 boot: memory map, boot params, e820, ACPI, MP table, registers, CPUID.
//! - [`devices`]: serial, i8042, the port/MMIO buses, virtio-mmio and the balloon.
//! - [`vcpu`]: one thread per vCPU running `KVM_RUN` and dispatching exits to the buses.
//! - [`config`]: what to run ([`config::VmConfig`]) and the checks made before KVM is touched.
//! - [`builder`]: builds a VM step by step: KVM, memory, devices, boot, vCPUs.
//! - [`lifecycle`]: why and how a VM stops: stop reasons, termination signals, the halt probe.
//! - [`controller`]: the running VM as the API sees it.
//! - [`console`]: the guest's serial console on the host (`--serial`): output that never
//!   blocks the VM, stdin fed to the guest.
//! - [`terminal`]: the host terminal: raw mode only in the foreground, restored on exit.
//! - [`vmm`]: wiring: builds the VM, runs the event loop, stops it.
//! - [`api`]: the HTTP/JSON API on a Unix socket and its client (`vmm ctl`).
//! - [`metrics`]: counters, latency histograms and the Prometheus text format of
//!   `GET /metrics`; each part of the VMM counts its own events.
//! - [`seccomp`]: the seccomp filter of each kind of thread, and the report of a refused call.
//! - [`test_hooks`]: faults the boot tests inject on purpose (only with the `test-hooks` feature).

pub mod api;
pub mod arch;
pub mod builder;
pub mod config;
pub mod console;
pub mod controller;
pub mod devices;
pub mod lifecycle;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod seccomp;
pub mod size;
pub mod sync;
pub mod terminal;
pub mod test_hooks;
pub mod vcpu;
pub mod vmm;
