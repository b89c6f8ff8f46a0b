//! inflateq and deflateq.
//!
//! Inflating: each buffer is an array of le32 PFNs in 4 KiB units (Linux sends up to 256,
//! 1 MiB, per buffer and waits for it to come back). The device gathers the PFNs of all
//! buffers available at a notification, sorts and merges them into runs of contiguous
//! pages, and frees each run with one discard. Pages outside guest RAM are skipped.
//!
//! Deflating needs no host work: a discarded page comes back (as zeros) when the guest
//! touches it. The device only returns the buffer, which is the acknowledgement a guest
//! that negotiated MUST_TELL_HOST waits for before it reuses the pages.

use virtio_queue::Queue;
use vm_memory::{Address, Bytes};

use super::budget::Budget;
use super::chains::{give_back, take_available};
use super::ranges::{discard_in_ram, merge_pfns, DiscardOutcome};
use super::warnings::{Warning, Warnings};
use super::BALLOON_PAGE_SIZE;
use crate::memory::{ram_size, GuestMemoryMmap};

const PFN_BYTES: u64 = 4;
/// PFNs read from guest memory at a time.
const READ_CHUNK_PFNS: u64 = 4096;
/// PFNs gathered before they are merged and discarded, bounding the device's memory
/// whatever buffer sizes the guest claims (256 KiB of PFNs, 256 MiB of guest pages).
const FLUSH_PFNS: usize = 64 * 1024;

/// What one round of a queue did.
#[derive(Debug, Default)]
pub(super) struct InflateOutcome {
    /// Buffers returned to the used ring.
    pub returned: usize,
    /// Distinct pages the guest listed.
    pub pages: u64,
    pub discard: DiscardOutcome,
}

/// Processes every buffer available on inflateq.
pub(super) fn process_inflate(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    warnings: &mut Warnings,
) -> InflateOutcome {
    let mut outcome = InflateOutcome::default();
    let chains = take_available(queue, mem, warnings);
    let mut heads = Vec::with_capacity(chains.len());
    let mut pfns: Vec<u32> = Vec::new();
    // As many PFNs as guest RAM has pages (see `budget`).
    let mut budget = Budget::new(ram_size(mem) / BALLOON_PAGE_SIZE);
    for chain in chains {
        heads.push(chain.head_index());
        if budget.exceeded() {
            continue;
        }
        for desc in chain {
            if desc.is_write_only() {
                warnings.warn(
                    Warning::WrongDirection,
                    format_args!(
                        "device-writable PFN buffer at {:#x}",
                        desc.addr().raw_value()
                    ),
                );
                continue;
            }
            let len = u64::from(desc.len());
            if len % PFN_BYTES != 0 {
                warnings.warn(Warning::PfnBufferLength, format_args!("{len} bytes"));
            }
            let count = len / PFN_BYTES;
            let mut done = 0u64;
            while done < count {
                let n = budget.grant(READ_CHUNK_PFNS.min(count - done));
                if n == 0 {
                    break;
                }
                let mut raw = vec![0u8; (n * PFN_BYTES) as usize];
                let at = desc.addr().checked_add(done * PFN_BYTES);
                if at.is_none_or(|at| mem.read_slice(&mut raw, at).is_err()) {
                    warnings.warn(
                        Warning::BufferOutsideRam,
                        format_args!("PFN buffer at {:#x}+{len:#x}", desc.addr().raw_value()),
                    );
                    break;
                }
                pfns.extend(
                    raw.chunks_exact(PFN_BYTES as usize)
                        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                );
                done += n;
                if pfns.len() >= FLUSH_PFNS {
                    discard_pfns(mem, &mut pfns, &mut outcome, warnings);
                }
            }
            if budget.exceeded() {
                break;
            }
        }
    }
    if budget.exceeded() {
        warnings.warn(
            Warning::TooManyPfns,
            format_args!(
                "at most {} per notification",
                ram_size(mem) / BALLOON_PAGE_SIZE
            ),
        );
    }
    discard_pfns(mem, &mut pfns, &mut outcome, warnings);
    outcome.returned = give_back(queue, mem, &heads, warnings);
    outcome
}

fn discard_pfns(
    mem: &GuestMemoryMmap,
    pfns: &mut Vec<u32>,
    outcome: &mut InflateOutcome,
    warnings: &mut Warnings,
) {
    let runs = merge_pfns(pfns);
    outcome.pages = outcome.pages.saturating_add(pfns.len() as u64);
    pfns.clear();
    for run in runs {
        let result = discard_in_ram(mem, run.addr(), run.len());
        if let Some(addr) = result.first_outside {
            warnings.warn(
                Warning::PfnOutsideRam,
                format_args!("PFN {:#x}", addr >> 12),
            );
        }
        if let Some(e) = &result.first_error {
            warnings.warn(Warning::DiscardFailed, e);
        }
        outcome.discard.absorb(result);
    }
}

/// What one round of deflateq did.
#[derive(Debug, Default)]
pub(super) struct DeflateOutcome {
    pub returned: usize,
    /// Pages the guest listed (not deduplicated; nothing is done with them).
    pub pages: u64,
}

/// Acknowledges every buffer available on deflateq.
pub(super) fn process_deflate(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    warnings: &mut Warnings,
) -> DeflateOutcome {
    let chains = take_available(queue, mem, warnings);
    let mut heads = Vec::with_capacity(chains.len());
    let mut pages = 0u64;
    for chain in chains {
        heads.push(chain.head_index());
        pages = chain
            .filter(|d| !d.is_write_only())
            .map(|d| u64::from(d.len()) / PFN_BYTES)
            .fold(pages, u64::saturating_add);
    }
    DeflateOutcome {
        returned: give_back(queue, mem, &heads, warnings),
        pages,
    }
}
