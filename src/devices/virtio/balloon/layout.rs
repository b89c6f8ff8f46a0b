//! Which queue index serves which role: the one place that knows the numbering rule.
//!
//! inflateq is queue 0 and deflateq queue 1. The optional queues follow in the order
//! statsq, free_page_vq, reporting_vq, each present only if the device *offers* its
//! feature, and numbered densely: offering only PAGE_REPORTING puts reporting_vq at 2.
//!
//! This is what Linux (since 2019) and QEMU do, not what the spec's list of fixed indexes
//! suggests; crosvm's fixed numbering silently broke page reporting for years (see
//! `docs/balloon.md`). The offered features decide, not the negotiated ones: the transport
//! needs the number of queues before the driver has acked anything, and Linux asks for
//! queues by the same rule (it clears only PAGE_POISON and REPORTING, and reporting_vq is
//! the last queue, so clearing it shifts nothing).

use super::{
    BalloonFeatures, VIRTIO_BALLOON_F_FREE_PAGE_HINT, VIRTIO_BALLOON_F_REPORTING,
    VIRTIO_BALLOON_F_STATS_VQ,
};

/// What a balloon queue is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueueRole {
    Inflate,
    Deflate,
    Stats,
    FreePageHint,
    Reporting,
}

impl QueueRole {
    /// Every role, in queue order.
    pub const ALL: [QueueRole; 5] = [
        QueueRole::Inflate,
        QueueRole::Deflate,
        QueueRole::Stats,
        QueueRole::FreePageHint,
        QueueRole::Reporting,
    ];

    /// The queue's name as the Linux driver and the spec call it.
    pub fn name(self) -> &'static str {
        match self {
            QueueRole::Inflate => "inflateq",
            QueueRole::Deflate => "deflateq",
            QueueRole::Stats => "statsq",
            QueueRole::FreePageHint => "free_page_vq",
            QueueRole::Reporting => "reporting_vq",
        }
    }

    /// The feature bit the queue depends on; `None` for the two queues always present.
    pub fn feature_bit(self) -> Option<u32> {
        match self {
            QueueRole::Inflate | QueueRole::Deflate => None,
            QueueRole::Stats => Some(VIRTIO_BALLOON_F_STATS_VQ),
            QueueRole::FreePageHint => Some(VIRTIO_BALLOON_F_FREE_PAGE_HINT),
            QueueRole::Reporting => Some(VIRTIO_BALLOON_F_REPORTING),
        }
    }

    /// Whether the queue exists (for offered features) or is in use (for acked features)
    /// given a feature bit mask.
    pub fn enabled_by(self, features: u64) -> bool {
        match self.feature_bit() {
            None => true,
            Some(bit) => features & (1u64 << bit) != 0,
        }
    }

    /// The fewest entries the queue may have. The Linux driver puts up to
    /// `PAGE_REPORTING_CAPACITY` (32) buffers on reporting_vq at once and refuses a
    /// smaller queue; free_page_vq keeps one entry for the command ID besides the hints.
    pub fn min_size(self) -> u16 {
        match self {
            QueueRole::Reporting => 32,
            QueueRole::FreePageHint => 2,
            _ => 1,
        }
    }

    /// A dense index for per-role arrays (not a queue index).
    pub(super) fn slot(self) -> usize {
        self as usize
    }
}

/// The queue numbering for one set of offered features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLayout {
    /// Queue index of each role, by `QueueRole::slot`.
    index: [Option<usize>; 5],
    len: usize,
}

impl QueueLayout {
    /// The layout for the features a device offers.
    pub fn for_features(features: &BalloonFeatures) -> QueueLayout {
        QueueLayout::for_feature_bits(features.bits())
    }

    /// The layout for an offered feature bit mask.
    pub fn for_feature_bits(offered: u64) -> QueueLayout {
        let mut index = [None; 5];
        let mut len = 0;
        for role in QueueRole::ALL {
            if role.enabled_by(offered) {
                index[role.slot()] = Some(len);
                len += 1;
            }
        }
        QueueLayout { index, len }
    }

    /// How many queues the device has.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: inflateq and deflateq always exist.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The queue index of `role`, if the queue exists.
    pub fn index_of(&self, role: QueueRole) -> Option<usize> {
        self.index[role.slot()]
    }

    /// The role of queue `index`, if there is such a queue.
    pub fn role_at(&self, index: usize) -> Option<QueueRole> {
        QueueRole::ALL
            .into_iter()
            .find(|&role| self.index_of(role) == Some(index))
    }

    /// The roles in queue order.
    pub fn roles(&self) -> impl Iterator<Item = QueueRole> + '_ {
        (0..self.len).filter_map(|i| self.role_at(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The six optional features as a bit mask from a number 0..64, one bit each.
    fn features_from_combination(n: u32) -> BalloonFeatures {
        BalloonFeatures {
            must_tell_host: n & 1 != 0,
            stats: n & 2 != 0,
            deflate_on_oom: n & 4 != 0,
            free_page_hint: n & 8 != 0,
            page_poison: n & 16 != 0,
            page_reporting: n & 32 != 0,
        }
    }

    /// The oracle: Linux's `init_vqs()` over virtio-mmio's `vm_find_vqs()`. The driver fills
    /// a fixed array of five names, NULL for a queue whose feature is absent, and the
    /// transport hands out queue indexes only to named entries, counting up from 0.
    fn linux_queue_indexes(f: &BalloonFeatures) -> [Option<usize>; 5] {
        let names: [Option<&str>; 5] = [
            Some("inflate"),
            Some("deflate"),
            f.stats.then_some("stats"),
            f.free_page_hint.then_some("free_page_vq"),
            f.page_reporting.then_some("reporting_vq"),
        ];
        let mut out = [None; 5];
        let mut queue_idx = 0;
        for (i, name) in names.iter().enumerate() {
            if name.is_some() {
                out[i] = Some(queue_idx);
                queue_idx += 1;
            }
        }
        out
    }

    #[test]
    fn all_64_feature_sets_match_the_linux_numbering() {
        for n in 0..64 {
            let features = features_from_combination(n);
            let layout = QueueLayout::for_features(&features);
            let expected = linux_queue_indexes(&features);
            for (slot, role) in QueueRole::ALL.into_iter().enumerate() {
                assert_eq!(
                    layout.index_of(role),
                    expected[slot],
                    "{role:?} with {features:?}"
                );
                if let Some(i) = expected[slot] {
                    assert_eq!(layout.role_at(i), Some(role));
                }
            }
            assert_eq!(layout.len(), expected.iter().flatten().count());
            assert_eq!(layout.role_at(layout.len()), None);
            assert_eq!(layout.roles().count(), layout.len());
            assert!(!layout.is_empty());
        }
    }

    #[test]
    fn the_cases_that_went_wrong_elsewhere() {
        let reporting_only = BalloonFeatures {
            page_reporting: true,
            ..Default::default()
        };
        let layout = QueueLayout::for_features(&reporting_only);
        assert_eq!(layout.index_of(QueueRole::Reporting), Some(2));
        assert_eq!(layout.index_of(QueueRole::Stats), None);
        assert_eq!(layout.len(), 3);

        let stats_and_reporting = BalloonFeatures {
            stats: true,
            page_reporting: true,
            ..Default::default()
        };
        let layout = QueueLayout::for_features(&stats_and_reporting);
        assert_eq!(layout.index_of(QueueRole::Stats), Some(2));
        assert_eq!(layout.index_of(QueueRole::Reporting), Some(3));
        assert_eq!(layout.index_of(QueueRole::FreePageHint), None);
    }

    #[test]
    fn only_queue_features_count() {
        let no_queues = BalloonFeatures {
            must_tell_host: true,
            deflate_on_oom: true,
            page_poison: true,
            ..Default::default()
        };
        let layout = QueueLayout::for_features(&no_queues);
        assert_eq!(layout.len(), 2);
        assert_eq!(
            layout.roles().collect::<Vec<_>>(),
            [QueueRole::Inflate, QueueRole::Deflate]
        );
    }
}
