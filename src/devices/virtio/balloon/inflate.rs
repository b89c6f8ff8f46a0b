//! inflateq and deflateq.
//!
//! Inflating: each buffer is an array of le32 PFNs in 4 KiB units (Linux sends up to 256,
//! 1 MiB, per buffer and waits for it to come back). The device gathers the PFNs of all
//! buffers available at a notification, sorts and merges them into runs of contiguous
//! pages, and frees each run with one discard. Pages outside guest RAM are skipped.
//!
//! With a huge-page backing a page goes back to the host only with the rest of its 2 MiB
//! huge page: the PFNs are recorded in a [`HugePageTracker`] and a huge page is freed by
//! the inflate that puts its last page in the balloon (see `huge_pages`).
//!
//! Deflating needs no host work: a discarded page comes back (as zeros) when the guest
//! touches it. The device returns the buffer, which is the acknowledgement a guest that
//! negotiated MUST_TELL_HOST waits for before it reuses the pages. With a huge-page
//! backing it first takes the deflated pages out of the tracker.

use virtio_queue::Queue;
use vm_memory::{Address, Bytes};

use super::budget::Budget;
use super::chains::{give_back, take_available};
use super::huge_pages::HugePageTracker;
use super::ranges::{discard_in_ram, merge_pfns, ram_parts, DiscardOutcome, PageRun};
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

/// Processes every buffer available on inflateq. With `huge_pages` (a huge-page backing)
/// the pages are recorded there and only the huge pages they complete are freed.
pub(super) fn process_inflate(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    mut huge_pages: Option<&mut HugePageTracker>,
    warnings: &mut Warnings,
) -> InflateOutcome {
    let mut outcome = InflateOutcome::default();
    let returned = read_pfn_buffers(queue, mem, warnings, |pfns, warnings| {
        let runs = merge_pfns(pfns);
        outcome.pages = outcome.pages.saturating_add(pfns.len() as u64);
        for run in runs {
            let result = match huge_pages.as_deref_mut() {
                None => discard_in_ram(mem, run.addr(), run.len()),
                Some(tracker) => discard_completed_huge_pages(mem, tracker, run),
            };
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
    });
    outcome.returned = returned;
    outcome
}

/// Records `run` as ballooned in `tracker` and frees the huge pages it completes.
fn discard_completed_huge_pages(
    mem: &GuestMemoryMmap,
    tracker: &mut HugePageTracker,
    run: PageRun,
) -> DiscardOutcome {
    let parts = ram_parts(mem, run.addr(), run.len());
    let mut outcome = DiscardOutcome {
        outside_ram: parts.outside_ram,
        first_outside: parts.first_outside,
        ..Default::default()
    };
    for (addr, len) in parts.in_ram {
        for (start, len) in tracker.inflate(addr, len) {
            outcome.absorb(discard_in_ram(mem, start, len));
        }
    }
    outcome
}

/// Reads the PFN arrays of every buffer available on `queue` and hands them to `flush` in
/// batches of at most [`FLUSH_PFNS`] (the last one possibly empty), then returns every
/// buffer. Returns how many buffers went back to the used ring.
fn read_pfn_buffers(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    warnings: &mut Warnings,
    mut flush: impl FnMut(&mut Vec<u32>, &mut Warnings),
) -> usize {
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
                    flush(&mut pfns, warnings);
                    pfns.clear();
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
    flush(&mut pfns, warnings);
    give_back(queue, mem, &heads, warnings)
}

/// What one round of deflateq did.
#[derive(Debug, Default)]
pub(super) struct DeflateOutcome {
    pub returned: usize,
    /// Pages the guest listed (not deduplicated).
    pub pages: u64,
}

/// Acknowledges every buffer available on deflateq. With `huge_pages` (a huge-page
/// backing) it also reads the PFNs and takes the pages out of the tracker, so their huge
/// pages are not freed while the guest uses them.
pub(super) fn process_deflate(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    huge_pages: Option<&mut HugePageTracker>,
    warnings: &mut Warnings,
) -> DeflateOutcome {
    if let Some(tracker) = huge_pages {
        let mut pages = 0u64;
        let returned = read_pfn_buffers(queue, mem, warnings, |pfns, _| {
            pages = pages.saturating_add(pfns.len() as u64);
            for run in merge_pfns(pfns) {
                tracker.deflate(run.addr(), run.len());
            }
        });
        return DeflateOutcome { returned, pages };
    }
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
