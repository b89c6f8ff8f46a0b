//! free_page_vq: free page hinting, as the Linux driver runs it.
//!
//! 1. The host writes a new command ID (2 or more) to `free_page_hint_cmd_id` and raises
//!    a configuration interrupt.
//! 2. The guest reads it and, if it differs from the one it last used, sends it back as a
//!    4-byte device-readable buffer on free_page_vq, then allocates free blocks (4 MiB on
//!    x86) one by one and sends each as a device-writable buffer. It holds the blocks.
//! 3. When it runs out of free memory, or sees the command ID change, it sends STOP (0).
//! 4. The host writes DONE (1): the guest frees the blocks it held. Until then the guest
//!    may still take them back under memory pressure (its shrinker), which is the
//!    weakness of this protocol for discarding; see `docs/balloon.md`.
//!
//! Hints are freed only while the guest's command ID is the host's current one, so blocks
//! from an older run, or sent after DONE, are left alone.
//!
//! One notification takes at most as many bytes of hinted blocks as guest RAM holds (see
//! `budget`); blocks past that are left alone and returned. Command IDs are read whatever
//! the budget says: a STOP that went unread would leave the run, and the guest's hold on
//! its blocks, without an end.

use virtio_queue::Queue;
use vm_memory::{Address, Bytes};

use super::budget::Budget;
use super::chains::{give_back, take_available};
use super::ranges::{discard_free_range, whole_pages, DiscardOutcome};
use super::warnings::{Warning, Warnings};
use super::{HintingStatus, FREE_PAGE_HINT_CMD_ID_DONE, FREE_PAGE_HINT_CMD_ID_STOP};
use crate::memory::{ram_size, GuestMemoryMmap};

/// The first command ID that starts a run; 0 and 1 are STOP and DONE.
const FIRST_RUN_CMD_ID: u32 = 2;

/// Where the hinting protocol stands.
#[derive(Debug, Clone, Copy)]
pub(super) struct HintingState {
    /// What `free_page_hint_cmd_id` holds.
    host_cmd: u32,
    /// The command ID the guest last sent.
    guest_cmd: Option<u32>,
    /// The last run's command ID, so each run gets a new one even across resets.
    last_run: u32,
    /// Whether the device sets DONE itself when the guest finishes the current run.
    acknowledge_on_stop: bool,
}

impl Default for HintingState {
    fn default() -> HintingState {
        HintingState {
            host_cmd: FREE_PAGE_HINT_CMD_ID_STOP,
            guest_cmd: None,
            last_run: FREE_PAGE_HINT_CMD_ID_DONE,
            acknowledge_on_stop: false,
        }
    }
}

impl HintingState {
    /// The value of `free_page_hint_cmd_id`.
    pub fn host_cmd(&self) -> u32 {
        self.host_cmd
    }

    pub fn status(&self) -> HintingStatus {
        HintingStatus {
            host_cmd: self.host_cmd,
            guest_cmd: self.guest_cmd,
        }
    }

    /// Starts a run with a new command ID and returns it.
    pub fn start(&mut self, acknowledge_on_stop: bool) -> u32 {
        let mut id = self.last_run.wrapping_add(1);
        if id < FIRST_RUN_CMD_ID {
            id = FIRST_RUN_CMD_ID;
        }
        self.last_run = id;
        self.host_cmd = id;
        self.acknowledge_on_stop = acknowledge_on_stop;
        id
    }

    /// Ends the run: DONE lets the guest reuse the pages it hinted.
    pub fn stop(&mut self) {
        self.host_cmd = FREE_PAGE_HINT_CMD_ID_DONE;
    }

    /// Forgets the run (device reset). The run counter stays so IDs keep increasing.
    pub fn reset(&mut self) {
        *self = HintingState {
            last_run: self.last_run,
            ..HintingState::default()
        };
    }

    /// Whether hints arriving now belong to the current run.
    pub fn may_discard(&self) -> bool {
        self.host_cmd >= FIRST_RUN_CMD_ID && self.guest_cmd == Some(self.host_cmd)
    }

    /// Records a command ID from the guest. Returns true if that finished the current run
    /// and the device set DONE by itself (the caller raises the configuration interrupt).
    pub fn guest_sent(&mut self, id: u32, warnings: &mut Warnings) -> bool {
        let previous = self.guest_cmd.replace(id);
        if id == FREE_PAGE_HINT_CMD_ID_DONE {
            warnings.warn(Warning::HintFromGuestDone, format_args!("command {id}"));
        }
        let stopped = id == FREE_PAGE_HINT_CMD_ID_STOP || id == FREE_PAGE_HINT_CMD_ID_DONE;
        // A STOP ends the current run only if the guest was running it: after a second
        // start_hinting the guest stops the old run first, and acknowledging that STOP
        // would cancel the new run before it began.
        let finished_current =
            stopped && self.host_cmd >= FIRST_RUN_CMD_ID && previous == Some(self.host_cmd);
        if finished_current && self.acknowledge_on_stop {
            self.stop();
            return true;
        }
        false
    }
}

/// What one round of free_page_vq did.
#[derive(Debug, Default)]
pub(super) struct HintingOutcome {
    pub returned: usize,
    /// Bytes hinted (whole pages), freed or not.
    pub hinted: u64,
    pub discard: DiscardOutcome,
    /// The device set DONE; the driver needs a configuration interrupt.
    pub config_changed: bool,
}

/// Processes every chain available on free_page_vq; frees the whole host pages (of
/// `host_page_size` bytes) of the hints of the current run.
pub(super) fn process_hinting(
    state: &mut HintingState,
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    host_page_size: u64,
    warnings: &mut Warnings,
) -> HintingOutcome {
    let mut outcome = HintingOutcome::default();
    let chains = take_available(queue, mem, warnings);
    let mut heads = Vec::with_capacity(chains.len());
    let mut budget = Budget::new(ram_size(mem));
    for chain in chains {
        heads.push(chain.head_index());
        for desc in chain {
            let addr = desc.addr().raw_value();
            let len = u64::from(desc.len());
            if !desc.is_write_only() {
                // A command ID.
                if len != 4 {
                    warnings.warn(Warning::HintCommandLength, format_args!("{len} bytes"));
                    continue;
                }
                match mem.read_obj::<u32>(desc.addr()) {
                    Ok(id) => {
                        outcome.config_changed |= state.guest_sent(u32::from_le(id), warnings)
                    }
                    Err(_) => warnings.warn(
                        Warning::BufferOutsideRam,
                        format_args!("hint command at {addr:#x}"),
                    ),
                }
                continue;
            }
            // A free block.
            if state.guest_cmd.is_none() {
                warnings.warn(
                    Warning::HintWithoutCommand,
                    format_args!("{addr:#x}+{len:#x}"),
                );
                continue;
            }
            let Some((start, pages_len)) = whole_pages(addr, len) else {
                continue;
            };
            let granted = budget.grant(pages_len);
            if granted == 0 {
                continue;
            }
            outcome.hinted = outcome.hinted.saturating_add(granted);
            if state.may_discard() {
                outcome.discard.absorb(discard_free_range(
                    mem,
                    (start, granted),
                    ("hinted", addr, len),
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
                "free_page_vq: at most {} bytes per notification",
                ram_size(mem)
            ),
        );
    }
    outcome.returned = give_back(queue, mem, &heads, warnings);
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_get_fresh_ids_from_2_and_wrap_past_the_reserved_ones() {
        let mut state = HintingState::default();
        assert_eq!(state.host_cmd(), 0);
        assert_eq!(state.start(false), 2);
        assert_eq!(state.start(false), 3);
        state.stop();
        assert_eq!(state.host_cmd(), 1);
        assert_eq!(state.start(false), 4);
        state.last_run = u32::MAX;
        assert_eq!(state.start(false), 2);
        state.reset();
        assert_eq!(
            state.status(),
            HintingStatus {
                host_cmd: 0,
                guest_cmd: None
            }
        );
        assert_eq!(state.start(false), 3);
    }

    #[test]
    fn hints_count_only_while_the_guest_runs_the_current_command() {
        let mut w = Warnings::default();
        let mut state = HintingState::default();
        assert!(!state.may_discard());
        let id = state.start(false);
        assert!(!state.may_discard());
        state.guest_sent(id - 1, &mut w);
        assert!(!state.may_discard());
        state.guest_sent(id, &mut w);
        assert!(state.may_discard());
        assert!(!state.guest_sent(FREE_PAGE_HINT_CMD_ID_STOP, &mut w));
        assert!(!state.may_discard());
        assert_eq!(
            state.status(),
            HintingStatus {
                host_cmd: id,
                guest_cmd: Some(0)
            }
        );
        state.guest_sent(id, &mut w);
        state.stop();
        assert!(!state.may_discard());
    }

    #[test]
    fn acknowledge_on_stop_sets_done_when_the_current_run_ends() {
        let mut w = Warnings::default();
        let mut state = HintingState::default();
        let id = state.start(true);
        state.guest_sent(id, &mut w);
        assert!(state.guest_sent(FREE_PAGE_HINT_CMD_ID_STOP, &mut w));
        assert_eq!(state.host_cmd(), FREE_PAGE_HINT_CMD_ID_DONE);
        // A second STOP changes nothing.
        assert!(!state.guest_sent(FREE_PAGE_HINT_CMD_ID_STOP, &mut w));
    }

    #[test]
    fn the_stop_of_a_superseded_run_does_not_end_the_new_one() {
        let mut w = Warnings::default();
        let mut state = HintingState::default();
        let first = state.start(true);
        state.guest_sent(first, &mut w);
        let second = state.start(true);
        assert!(!state.guest_sent(FREE_PAGE_HINT_CMD_ID_STOP, &mut w));
        assert_eq!(state.host_cmd(), second);
        state.guest_sent(second, &mut w);
        assert!(state.may_discard());
        assert!(state.guest_sent(FREE_PAGE_HINT_CMD_ID_STOP, &mut w));
    }

    #[test]
    fn done_from_the_guest_reads_as_stop() {
        let mut w = Warnings::default();
        let mut state = HintingState::default();
        let id = state.start(true);
        state.guest_sent(id, &mut w);
        assert!(state.guest_sent(FREE_PAGE_HINT_CMD_ID_DONE, &mut w));
        assert_eq!(w.count(Warning::HintFromGuestDone), 1);
    }
}
