//! Taking buffers off a queue and giving them back, safely against a hostile driver.
//!
//! At most one queue's worth of chains is taken per notification (virtio-queue refuses an
//! available index more than the queue size ahead), and each chain yields at most the
//! queue's size in descriptors, so a looping chain or an ever-growing ring cannot keep the
//! device busy forever. A driver that adds buffers meanwhile notifies again.

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};

use super::warnings::{Warning, Warnings};
use crate::memory::GuestMemoryMmap;

/// A chain taken off a queue. Its walk stops after the queue's size in descriptors: the
/// balloon never offers VIRTIO_RING_F_INDIRECT_DESC, so no legal chain is longer, but
/// virtio-queue follows an indirect table of up to 65535 descriptors all the same, and a
/// queue's worth of those would cost the device millions of discards per notification.
#[derive(Clone)]
pub(super) struct Chain<'m> {
    inner: DescriptorChain<&'m GuestMemoryMmap>,
    left: u16,
}

impl<'m> Chain<'m> {
    pub fn head_index(&self) -> u16 {
        self.inner.head_index()
    }

    pub fn memory(&self) -> &GuestMemoryMmap {
        self.inner.memory()
    }
}

impl Iterator for Chain<'_> {
    type Item = Descriptor;

    fn next(&mut self) -> Option<Descriptor> {
        self.left = self.left.checked_sub(1)?;
        self.inner.next()
    }
}

/// The chains available on `queue` now.
pub(super) fn take_available<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
    warnings: &mut Warnings,
) -> Vec<Chain<'m>> {
    let max_len = queue.size();
    let iter = match queue.iter(mem) {
        Ok(iter) => iter,
        Err(e) => {
            warnings.warn(Warning::AvailRingIndex, e);
            return Vec::new();
        }
    };
    iter.map(|inner| {
        // Walking one descriptor past the bound costs reads, not discards.
        if inner.clone().nth(usize::from(max_len)).is_some() {
            warnings.warn(
                Warning::ChainTooLong,
                format_args!(
                    "head {}: more than {max_len} descriptors (an indirect table?); \
                     the rest is ignored",
                    inner.head_index()
                ),
            );
        }
        Chain {
            inner,
            left: max_len,
        }
    })
    .collect()
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
