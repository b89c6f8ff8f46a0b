//! Taking buffers off a queue and giving them back, safely against a hostile driver.
//!
//! At most one queue's worth of chains is taken per notification (virtio-queue refuses an
//! available index more than the queue size ahead), and each chain's walk is bounded by
//! virtio-queue's descriptor iterator, so a looping chain or an ever-growing ring cannot
//! keep the device busy forever. A driver that adds buffers meanwhile notifies again.

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};

use super::warnings::{Warning, Warnings};
use crate::memory::GuestMemoryMmap;

pub(super) type Chain<'m> = DescriptorChain<&'m GuestMemoryMmap>;

/// The chains available on `queue` now.
pub(super) fn take_available<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
    warnings: &mut Warnings,
) -> Vec<Chain<'m>> {
    match queue.iter(mem) {
        Ok(iter) => iter.collect(),
        Err(e) => {
            warnings.warn(Warning::AvailRingIndex, e);
            Vec::new()
        }
    }
}

/// Puts the chains headed by `heads` on the used ring with length 0 (the balloon never
/// writes into buffers); returns how many went back.
pub(super) fn give_back(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    heads: &[u16],
    warnings: &mut Warnings,
) -> usize {
    let mut returned = 0;
    for &head in heads {
        if head >= queue.size() {
            warnings.warn(
                Warning::HeadIndexOutOfRange,
                format_args!("head {head}, queue size {}", queue.size()),
            );
            continue;
        }
        match queue.add_used(mem, head, 0) {
            Ok(()) => returned += 1,
            Err(e) => warnings.warn(Warning::UsedRingWrite, e),
        }
    }
    returned
}

/// The bytes of the device-readable descriptors of `chain`, concatenated, if they total at
/// most `limit` bytes. Device-writable descriptors are skipped and warned about.
pub(super) enum ReadableBytes {
    Bytes(Vec<u8>),
    /// More than `limit` bytes: not read.
    TooLong(u64),
    /// A descriptor lies outside guest RAM.
    OutsideRam(GuestAddress),
}

pub(super) fn readable_bytes(
    chain: Chain<'_>,
    limit: u64,
    warnings: &mut Warnings,
) -> ReadableBytes {
    let mem = chain.memory();
    let descriptors: Vec<_> = chain.clone().collect();
    let mut total = 0u64;
    for desc in &descriptors {
        if desc.is_write_only() {
            warnings.warn(
                Warning::WrongDirection,
                format_args!("device-writable buffer at {:#x}", desc.addr().raw_value()),
            );
            continue;
        }
        total += u64::from(desc.len());
    }
    if total > limit {
        return ReadableBytes::TooLong(total);
    }
    let mut bytes = vec![0u8; total as usize];
    let mut filled = 0usize;
    for desc in descriptors.iter().filter(|d| !d.is_write_only()) {
        let len = desc.len() as usize;
        if mem
            .read_slice(&mut bytes[filled..filled + len], desc.addr())
            .is_err()
        {
            return ReadableBytes::OutsideRam(desc.addr());
        }
        filled += len;
    }
    ReadableBytes::Bytes(bytes)
}
