//! What a Linux guest says about its free memory (/proc/buddyinfo, /proc/pagetypeinfo,
//! /proc/zoneinfo, and `memcheck freemap` over /proc/kpageflags), and what it means for
//! free page reporting: which free memory the guest can never report, and how much of its
//! free memory the host still holds.
//!
//! Linux 6.1's free page reporting (mm/page_reporting.c) reports only free blocks of at
//! least the reporting order (`page_reporting_order`: pageblock order, 9 = 2 MiB, on
//! x86_64), and skips a whole zone while its free pages are below its low watermark plus
//! 32 blocks of that order ([`REPORTING_CAPACITY`]): so a small zone, such as the 16 MiB
//! DMA zone at order 9 (64 MiB), is never reported at all.

/// Blocks per report (`PAGE_REPORTING_CAPACITY`): a zone is reported only while it has
/// this many blocks of the reporting order free above its low watermark.
pub const REPORTING_CAPACITY: u64 = 32;
/// 4 KiB pages in a MiB.
const PAGES_PER_MIB: f64 = 256.0;

/// One zone's free blocks by order, from /proc/buddyinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneFree {
    pub zone: String,
    /// Free blocks of order 0, 1, …
    pub blocks: Vec<u64>,
}

impl ZoneFree {
    /// Free pages in blocks of every order.
    pub fn pages(&self) -> u64 {
        self.pages_below(u32::MAX)
    }

    /// Free pages in blocks of an order below `order`.
    pub fn pages_below(&self, order: u32) -> u64 {
        self.blocks
            .iter()
            .enumerate()
            .take_while(|(o, _)| (*o as u64) < u64::from(order))
            .map(|(o, n)| n.saturating_mul(1u64.checked_shl(o as u32).unwrap_or(0)))
            .fold(0u64, u64::saturating_add)
    }
}

/// Parses /proc/buddyinfo: `Node 0, zone      DMA      1      0 …`.
pub fn parse_buddyinfo(text: &str) -> Vec<ZoneFree> {
    text.lines()
        .filter_map(|line| {
            let rest = line.split_once(", zone")?.1;
            let mut words = rest.split_whitespace();
            let zone = words.next()?.to_string();
            let blocks: Option<Vec<u64>> = words.map(|w| w.parse().ok()).collect();
            let blocks = blocks.filter(|b| !b.is_empty() && b.len() <= 64)?;
            Some(ZoneFree { zone, blocks })
        })
        .collect()
}

/// One zone's free blocks of one migrate type, by order, from /proc/pagetypeinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeFree {
    pub migrate_type: String,
    pub free: ZoneFree,
}

/// Parses the free-block lines of /proc/pagetypeinfo:
/// `Node    0, zone      DMA, type    Unmovable      0      1 …`.
pub fn parse_pagetypeinfo(text: &str) -> Vec<TypeFree> {
    text.lines()
        .filter_map(|line| {
            let rest = line.split_once(", zone")?.1;
            let (zone, rest) = rest.split_once(", type")?;
            let mut words = rest.split_whitespace();
            let migrate_type = words.next()?.to_string();
            let blocks: Option<Vec<u64>> = words.map(|w| w.parse().ok()).collect();
            let blocks = blocks.filter(|b| !b.is_empty() && b.len() <= 64)?;
            Some(TypeFree {
                migrate_type,
                free: ZoneFree {
                    zone: zone.trim().to_string(),
                    blocks,
                },
            })
        })
        .collect()
}

/// Free pages in blocks below `order` on the free lists of migrate types other than
/// `Movable`: compaction moves only movable pages, so these small blocks stay small.
pub fn not_movable_pages_below(types: &[TypeFree], order: u32) -> u64 {
    types
        .iter()
        .filter(|t| t.migrate_type != "Movable")
        .map(|t| t.free.pages_below(order))
        .sum()
}

/// The low watermark of each zone, in pages, from the `Node 0, zone NAME` headers and
/// `low N` lines of /proc/zoneinfo (or those lines alone).
pub fn parse_zone_low_watermarks(text: &str) -> Vec<(String, u64)> {
    let mut zones = Vec::new();
    let mut zone: Option<String> = None;
    for line in text.lines() {
        if let Some(rest) = line.split_once(", zone").map(|(_, r)| r) {
            zone = rest.split_whitespace().next().map(str::to_string);
            continue;
        }
        let mut words = line.split_whitespace();
        if words.next() == Some("low") {
            if let (Some(name), Some(Ok(pages))) = (zone.take(), words.next().map(str::parse)) {
                zones.push((name, pages));
            }
        }
    }
    zones
}

/// Free memory by whether free page reporting at `order` can ever report it, in pages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unreportable {
    /// Free pages of zones whose free memory is below their low watermark plus
    /// [`REPORTING_CAPACITY`] blocks of `order`: the reporting skips those zones whole.
    pub small_zones: u64,
    /// Free pages in blocks below `order` in the other zones.
    pub below_order: u64,
}

impl Unreportable {
    pub fn pages(&self) -> u64 {
        self.small_zones + self.below_order
    }
}

/// What reporting at `order` leaves out of `zones`, given each zone's low watermark (a
/// zone without one counts as 0).
pub fn unreportable(zones: &[ZoneFree], low: &[(String, u64)], order: u32) -> Unreportable {
    let mut out = Unreportable::default();
    for z in zones {
        let low = low
            .iter()
            .find(|(name, _)| *name == z.zone)
            .map_or(0, |(_, p)| *p);
        let needed = low.saturating_add(REPORTING_CAPACITY << order.min(32));
        if z.pages() <= needed {
            out.small_zones += z.pages();
        } else {
            out.below_order += z.pages_below(order);
        }
    }
    out
}

/// Parses the output of `memcheck freemap`: free pages of each 2 MiB block of the guest.
pub fn parse_freemap(text: &str) -> Option<Vec<u32>> {
    let mut lines = text.lines().skip_while(|l| !l.starts_with("FREEMAP "));
    let header = lines.next()?;
    let blocks: usize = header
        .split_whitespace()
        .find_map(|w| w.strip_prefix("blocks="))?
        .parse()
        .ok()?;
    let free: Option<Vec<u32>> = lines
        .flat_map(str::split_whitespace)
        .map(|w| w.parse().ok().filter(|&n| n <= 512))
        .collect();
    free.filter(|f| f.len() == blocks)
}

/// The guest's free pages that the host holds, from the guest's free pages per 2 MiB block
/// and the host's resident pages of the same blocks: (at least, at most). A block wholly
/// free or wholly used gives an exact count; in a partly free block the used pages are
/// taken to be resident (the guest writes a page it allocates: Debian's kernels zero it),
/// the rest of its resident pages free, which is the lower bound.
pub fn free_and_resident_pages(free: &[u32], resident: &[u32]) -> (u64, u64) {
    let (mut low, mut high) = (0u64, 0u64);
    for (&f, &r) in free.iter().zip(resident) {
        let used = 512u32.saturating_sub(f);
        low += u64::from(r.saturating_sub(used));
        high += u64::from(r.min(f));
    }
    (low, high)
}

/// The value of one series of a Prometheus text exposition (`name{labels} value`), by its
/// exact name and labels as written.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        let value = rest.strip_prefix(' ')?.split_whitespace().next()?;
        value.parse().ok().filter(|v: &f64| v.is_finite())
    })
}

pub fn pages_to_mib(pages: u64) -> f64 {
    pages as f64 / PAGES_PER_MIB
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDDYINFO: &str = "\
Node 0, zone      DMA      3      2      1      1      2      1      1      0      1      1      3 \n\
Node 0, zone    DMA32    120     60     31     14      8      4      3      2      3      2    220 \n";

    #[test]
    fn buddyinfo_gives_free_blocks_per_zone_and_order() {
        let zones = parse_buddyinfo(BUDDYINFO);
        assert_eq!(zones.len(), 2);
        assert_eq!(zones[0].zone, "DMA");
        assert_eq!(zones[0].blocks.len(), 11);
        // 3 + 4 + 4 + 8 + 32 + 32 + 64 + 0 + 256 + 512 + 3072
        assert_eq!(zones[0].pages(), 3987);
        assert_eq!(zones[0].pages_below(9), 3 + 4 + 4 + 8 + 32 + 32 + 64 + 256);
        assert_eq!(zones[1].pages_below(0), 0);
        assert_eq!(zones[1].pages_below(1), 120);
        for bad in [
            "",
            "Node 0, zone DMA x 1\n",
            "Node 0, zone\n",
            "zone DMA 1 2\n",
        ] {
            assert!(parse_buddyinfo(bad).is_empty(), "{bad:?}");
        }
    }

    #[test]
    fn pagetypeinfo_gives_free_blocks_per_migrate_type() {
        let text = "Page block order: 9\nPages per block:  512\n\n\
Free pages count per migrate type at order       0      1      2      3      4      5      6      7      8      9     10 \n\
Node    0, zone      DMA, type    Unmovable      0      0      0      1      1      1      1      0      0      0      0 \n\
Node    0, zone    DMA32, type      Movable     90     40     20     10      5      2      1      1      2      2    220 \n\n\
Number of blocks type     Unmovable      Movable  Reclaimable   HighAtomic      Isolate \n\
Node 0, zone      DMA            1            7            0            0            0 \n";
        let types = parse_pagetypeinfo(text);
        assert_eq!(types.len(), 2);
        assert_eq!(types[0].migrate_type, "Unmovable");
        assert_eq!(types[0].free.zone, "DMA");
        assert_eq!(types[0].free.pages(), 8 + 16 + 32 + 64);
        assert_eq!(types[1].free.zone, "DMA32");
        assert_eq!(
            types[1].free.pages_below(9),
            90 + 80 + 80 + 80 + 80 + 64 + 64 + 128 + 512
        );
    }

    #[test]
    fn low_watermarks_follow_their_zone_headers() {
        let text = "Node 0, zone      DMA\n  per-node stats\n      nr_free_pages 1\n  pages free     3987\n        boost    0\n        min      33\n        low      41\n        high     49\n\
Node 0, zone    DMA32\n  pages free     230000\n        min      2000\n        low      2500\n";
        assert_eq!(
            parse_zone_low_watermarks(text),
            [("DMA".to_string(), 41), ("DMA32".to_string(), 2500)]
        );
        assert!(parse_zone_low_watermarks("low 5\n").is_empty());
    }

    #[test]
    fn a_small_zone_is_never_reported_and_a_large_one_only_from_the_order_up() {
        let zones = parse_buddyinfo(BUDDYINFO);
        let low = [("DMA".to_string(), 41), ("DMA32".to_string(), 2500)];
        // Order 9: DMA needs 41 + 32 × 512 free pages and has 3987.
        let u = unreportable(&zones, &low, 9);
        assert_eq!(u.small_zones, 3987);
        assert_eq!(u.below_order, zones[1].pages_below(9));
        assert_eq!(u.pages(), u.small_zones + u.below_order);
        // Order 5: DMA needs 41 + 32 × 32 = 1065, so it is reported above order 5.
        let u = unreportable(&zones, &low, 5);
        assert_eq!(u.small_zones, 0);
        assert_eq!(
            u.below_order,
            zones[0].pages_below(5) + zones[1].pages_below(5)
        );
    }

    #[test]
    fn freemap_is_read_after_its_header() {
        let text = "noise\nFREEMAP pages=1536 blocks=3\n512 0\n17\n";
        assert_eq!(parse_freemap(text), Some(vec![512, 0, 17]));
        for bad in [
            "",
            "512 0 17\n",
            "FREEMAP pages=1536 blocks=3\n512 0\n",
            "FREEMAP pages=1536 blocks=2\n512 0 17\n",
            "FREEMAP pages=1536 blocks=1\n513\n",
            "FREEMAP pages=1536 blocks=1\n-1\n",
            "FREEMAP pages=1536\n1\n",
        ] {
            assert_eq!(parse_freemap(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn free_resident_pages_are_exact_in_whole_blocks_and_bounded_in_partial_ones() {
        // Wholly free and half resident; wholly used; 100 free with 450 resident.
        let (low, high) = free_and_resident_pages(&[512, 0, 100], &[256, 512, 450]);
        assert_eq!(low, 256 + (450 - 412));
        assert_eq!(high, 256 + 100);
        // Blocks the guest did not list are left out.
        assert_eq!(free_and_resident_pages(&[512], &[512, 512]), (512, 512));
    }

    #[test]
    fn metrics_are_read_by_their_exact_series() {
        let text = "# TYPE vmm_balloon_reported_bytes_total counter\n\
vmm_balloon_reported_bytes_total 8388608\n\
vmm_balloon_queue_notifications_total{queue=\"inflateq\"} 3\n\
vmm_balloon_queue_notifications_total{queue=\"reporting_vq\"} 41\n";
        assert_eq!(
            metric(text, "vmm_balloon_reported_bytes_total"),
            Some(8388608.0)
        );
        assert_eq!(
            metric(
                text,
                "vmm_balloon_queue_notifications_total{queue=\"reporting_vq\"}"
            ),
            Some(41.0)
        );
        assert_eq!(metric(text, "vmm_balloon_reported_bytes"), None);
        assert_eq!(metric("x NaN\n", "x"), None);
    }
}
