//! reporting_vq: free page reporting.
//!
//! The guest reports blocks of free memory it has set aside (2 MiB on x86) as
//! device-writable buffers, one block per descriptor, up to 32 per chain, and waits for
//! the chain to come back before it puts the pages back on its free lists. The device
//! frees every block and returns every chain. With a huge-page backing it frees the whole
//! 2 MiB pages of each block (Linux reports 2 MiB aligned blocks, so all of it); the pages
//! go back to the guest's free lists, so a part too small for a huge page is not tracked
//! like a partly inflated huge page but left alone.
//!
//! Reported pages stay in the guest's free lists and are handed out without being
//! written first. If the guest expects freed pages to hold a poison pattern (PAGE_POISON
//! negotiated with a non-zero `poison_val`), a discarded page would come back as zeros
//! and the guest would report corruption; then the device returns the chains without
//! freeing anything (see `docs/balloon.md`).
//!
//! One notification takes at most as many bytes of reported ranges as guest RAM holds (see
//! `budget`): a real driver's chain is at most 32 distinct free blocks, all in RAM. Ranges
//! past that are left alone and their chains returned, since the driver waits for each.

use virtio_queue::Queue;
use vm_memory::Address;

use super::budget::Budget;
use super::chains::{give_back, take_available};
use super::ranges::{discard_free_range, whole_pages, DiscardOutcome};
use super::warnings::{Warning, Warnings};
use crate::memory::{ram_size, GuestMemoryMmap};

/// What one round of reporting_vq did.
#[derive(Debug, Default)]
pub(super) struct ReportingOutcome {
    pub returned: usize,
    /// Bytes the guest reported (whole pages).
    pub reported: u64,
    pub discard: DiscardOutcome,
}

/// Processes every chain available on reporting_vq; frees the whole host pages (of
/// `host_page_size` bytes) of the reported ranges if `may_discard`.
pub(super) fn process_reporting(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    may_discard: bool,
    host_page_size: u64,
    warnings: &mut Warnings,
) -> ReportingOutcome {
    let mut outcome = ReportingOutcome::default();
    let chains = take_available(queue, mem, warnings);
    let mut heads = Vec::with_capacity(chains.len());
    let mut budget = Budget::new(ram_size(mem));
    for chain in chains {
        heads.push(chain.head_index());
        if budget.exceeded() {
            continue;
        }
        for desc in chain {
            let addr = desc.addr().raw_value();
            let len = u64::from(desc.len());
            if !desc.is_write_only() {
                warnings.warn(
                    Warning::WrongDirection,
                    format_args!("device-readable reported range {addr:#x}+{len:#x}"),
                );
                continue;
            }
            let Some((start, pages_len)) = whole_pages(addr, len) else {
                warnings.warn(
                    Warning::ReportedRangeUnaligned,
                    format_args!("{addr:#x}+{len:#x} holds no whole page"),
                );
                continue;
            };
            if (start, pages_len) != (addr, len) {
                warnings.warn(
                    Warning::ReportedRangeUnaligned,
                    format_args!("{addr:#x}+{len:#x}"),
                );
            }
            let granted = budget.grant(pages_len);
            if granted == 0 {
                break;
            }
            outcome.reported = outcome.reported.saturating_add(granted);
            if may_discard {
                outcome.discard.absorb(discard_free_range(
                    mem,
                    (start, granted),
                    ("reported", addr, len),
                    host_page_size,
                    warnings,
                ));
            }
        }
    }
    if budget.exceeded() {
        warnings.warn(
            Warning::FreeRangesOverBudget,
            format_args!(
                "reporting_vq: at most {} bytes per notification",
                ram_size(mem)
            ),
        );
    }
    outcome.returned = give_back(queue, mem, &heads, warnings);
    outcome
}
