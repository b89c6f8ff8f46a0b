//! Logging a misbehaving guest once per kind of fault.
//!
//! A guest can repeat a fault as fast as it can notify; logging each one would let it fill
//! the host's log. Each kind is logged the first time it happens on a device and counted
//! afterwards, with the VMM's one mechanism for that, [`WarningCounter`].

use std::fmt::Display;

use crate::logging::WarningCounter;

/// Something the guest (or a caller) did wrong that the device skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Warning {
    NotifiedBeforeActivation,
    NotifiedUnknownQueue,
    NotifiedUnusedQueue,
    AvailRingIndex,
    HeadIndexOutOfRange,
    ChainTooLong,
    UsedRingWrite,
    WrongDirection,
    BufferOutsideRam,
    PfnOutsideRam,
    PfnBufferLength,
    TooManyPfns,
    FreeRangesOverBudget,
    DiscardFailed,
    StatsOversized,
    StatsLength,
    StatsSecondBuffer,
    ReportedRangeUnaligned,
    HintCommandLength,
    HintFromGuestDone,
    HintWithoutCommand,
    ConfigReadOnlyWrite,
    TimerFailed,
}

impl Warning {
    const ALL: [Warning; 23] = [
        Warning::NotifiedBeforeActivation,
        Warning::NotifiedUnknownQueue,
        Warning::NotifiedUnusedQueue,
        Warning::AvailRingIndex,
        Warning::HeadIndexOutOfRange,
        Warning::ChainTooLong,
        Warning::UsedRingWrite,
        Warning::WrongDirection,
        Warning::BufferOutsideRam,
        Warning::PfnOutsideRam,
        Warning::PfnBufferLength,
        Warning::TooManyPfns,
        Warning::FreeRangesOverBudget,
        Warning::DiscardFailed,
        Warning::StatsOversized,
        Warning::StatsLength,
        Warning::StatsSecondBuffer,
        Warning::ReportedRangeUnaligned,
        Warning::HintCommandLength,
        Warning::HintFromGuestDone,
        Warning::HintWithoutCommand,
        Warning::ConfigReadOnlyWrite,
        Warning::TimerFailed,
    ];

    fn index(self) -> usize {
        self as usize
    }

    fn sentence(self) -> &'static str {
        match self {
            Warning::NotifiedBeforeActivation => {
                "the driver notified a queue before the device was activated; ignored"
            }
            Warning::NotifiedUnknownQueue => "the driver notified a queue the device does not have",
            Warning::NotifiedUnusedQueue => {
                "the driver notified a queue whose feature it did not negotiate"
            }
            Warning::AvailRingIndex => {
                "the available ring index ran more than a queue's size ahead; queue skipped"
            }
            Warning::HeadIndexOutOfRange => {
                "a descriptor chain head lies outside the queue; it cannot be returned"
            }
            Warning::ChainTooLong => {
                "a descriptor chain is longer than its queue; only the first queue-size descriptors are used"
            }
            Warning::UsedRingWrite => "a buffer could not be returned to the used ring",
            Warning::WrongDirection => "a descriptor has the wrong direction; skipped",
            Warning::BufferOutsideRam => "a descriptor points outside guest RAM; skipped",
            Warning::PfnOutsideRam => "an inflated page lies outside guest RAM; skipped",
            Warning::PfnBufferLength => {
                "an inflate buffer is not a whole number of 4-byte PFNs; the tail is ignored"
            }
            Warning::TooManyPfns => {
                "one inflate notification listed more PFNs than guest RAM has pages; the rest are ignored"
            }
            Warning::FreeRangesOverBudget => {
                "one notification offered more free memory than guest RAM holds; the rest was returned untouched"
            }
            Warning::DiscardFailed => "giving guest memory back to the host failed",
            Warning::StatsOversized => "a statistics buffer is too large; returned unread",
            Warning::StatsLength => {
                "a statistics buffer is not a whole number of 10-byte entries; the tail is ignored"
            }
            Warning::StatsSecondBuffer => {
                "the driver queued a second statistics buffer; the older one was returned"
            }
            Warning::ReportedRangeUnaligned => {
                "a reported free range is not page-aligned; only its whole pages are freed"
            }
            Warning::HintCommandLength => "a free page hint command is not 4 bytes; skipped",
            Warning::HintFromGuestDone => {
                "the guest sent DONE on the free page queue; read as STOP"
            }
            Warning::HintWithoutCommand => {
                "a free page hint arrived before any command ID; not freed"
            }
            Warning::ConfigReadOnlyWrite => {
                "the driver wrote a read-only configuration field; ignored"
            }
            Warning::TimerFailed => "the statistics timer failed",
        }
    }
}

/// Which warnings a device has logged, and how often each happened.
#[derive(Debug, Default)]
pub(super) struct Warnings {
    counters: [WarningCounter; Warning::ALL.len()],
}

impl Warnings {
    /// Records `warning`; logs it with `detail` the first time only.
    pub(super) fn warn(&mut self, warning: Warning, detail: impl Display) {
        self.counters[warning.index()].warn(
            module_path!(),
            format_args!("virtio-balloon: {} ({detail})", warning.sentence()),
        );
    }

    /// How often `warning` happened.
    #[cfg(test)]
    pub(super) fn count(&self, warning: Warning) -> u64 {
        self.counters[warning.index()].count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_warning_has_its_own_slot() {
        for (i, w) in Warning::ALL.iter().enumerate() {
            assert_eq!(w.index(), i);
            assert!(!w.sentence().is_empty());
        }
    }

    #[test]
    fn counts_every_occurrence() {
        let mut warnings = Warnings::default();
        warnings.warn(Warning::PfnOutsideRam, "pfn 0x1");
        warnings.warn(Warning::PfnOutsideRam, "pfn 0x2");
        assert_eq!(warnings.count(Warning::PfnOutsideRam), 2);
        assert_eq!(warnings.count(Warning::StatsLength), 0);
    }
}
