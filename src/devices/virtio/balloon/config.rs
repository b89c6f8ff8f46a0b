//! The balloon's configuration: `--balloon` values as users write them, the feature bits
//! they turn into, and the device configuration space the driver reads and writes.

use std::fmt;
use std::str::FromStr;

use super::{
    BalloonConfig, BalloonFeatures, VIRTIO_BALLOON_F_DEFLATE_ON_OOM,
    VIRTIO_BALLOON_F_FREE_PAGE_HINT, VIRTIO_BALLOON_F_MUST_TELL_HOST, VIRTIO_BALLOON_F_PAGE_POISON,
    VIRTIO_BALLOON_F_REPORTING, VIRTIO_BALLOON_F_STATS_VQ,
};
use crate::size::{parse_page_aligned, SizeError, GIB, KIB, MIB};

/// The longest statistics polling interval accepted: one day. Longer is surely a typo.
pub const MAX_STATS_INTERVAL_S: u32 = 24 * 60 * 60;

/// The polling interval `stats` without a value means.
const DEFAULT_STATS_INTERVAL_S: u32 = 1;

const VALID_ITEMS: &str = "stats[=SECONDS], deflate-on-oom, page-reporting, free-page-hint, \
page-poison, must-tell-host, size=SIZE";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BalloonConfigError {
    #[error("unknown balloon option \"{0}\"; valid options are {VALID_ITEMS}")]
    Unknown(String),
    #[error("balloon option \"{0}\" is empty; valid options are {VALID_ITEMS}")]
    Empty(String),
    #[error("balloon option \"{0}\" is given twice; valid options are {VALID_ITEMS}")]
    Repeated(String),
    #[error("balloon option \"{0}\" takes no value; valid options are {VALID_ITEMS}")]
    UnexpectedValue(String),
    #[error("balloon option \"{0}\" needs a value; valid options are {VALID_ITEMS}")]
    MissingValue(String),
    #[error(
        "balloon option \"{0}\": the polling interval must be a whole number of seconds from 0 \
         to {MAX_STATS_INTERVAL_S}; valid options are {VALID_ITEMS}"
    )]
    BadInterval(String),
    #[error("balloon option \"{item}\": {source}; valid options are {VALID_ITEMS}")]
    BadSize { item: String, source: SizeError },
}

impl FromStr for BalloonConfig {
    type Err = BalloonConfigError;

    /// Parses `stats=2,page-reporting,size=256M`. The empty string is a balloon with no
    /// optional features.
    fn from_str(text: &str) -> Result<BalloonConfig, BalloonConfigError> {
        let mut config = BalloonConfig::default();
        if text.trim().is_empty() {
            return Ok(config);
        }
        let mut seen: Vec<&str> = Vec::new();
        for raw in text.split(',') {
            let item = raw.trim();
            if item.is_empty() {
                return Err(BalloonConfigError::Empty(text.to_string()));
            }
            let (key, value) = match item.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim())),
                None => (item, None),
            };
            if seen.contains(&key) {
                return Err(BalloonConfigError::Repeated(item.to_string()));
            }
            let flag = |target: &mut bool| match value {
                None => {
                    *target = true;
                    Ok(())
                }
                Some(_) => Err(BalloonConfigError::UnexpectedValue(item.to_string())),
            };
            let features = &mut config.features;
            match key {
                "stats" => {
                    features.stats = true;
                    config.stats_interval_s = match value {
                        None => DEFAULT_STATS_INTERVAL_S,
                        Some(v) => v
                            .parse::<u32>()
                            .ok()
                            .filter(|&s| s <= MAX_STATS_INTERVAL_S)
                            .ok_or_else(|| BalloonConfigError::BadInterval(item.to_string()))?,
                    };
                }
                "deflate-on-oom" => flag(&mut features.deflate_on_oom)?,
                "page-reporting" => flag(&mut features.page_reporting)?,
                "free-page-hint" => flag(&mut features.free_page_hint)?,
                "page-poison" => flag(&mut features.page_poison)?,
                "must-tell-host" => flag(&mut features.must_tell_host)?,
                "size" => {
                    let v = value
                        .filter(|v| !v.is_empty())
                        .ok_or_else(|| BalloonConfigError::MissingValue(item.to_string()))?;
                    config.initial_size =
                        parse_page_aligned(v).map_err(|source| BalloonConfigError::BadSize {
                            item: item.to_string(),
                            source,
                        })?;
                }
                _ => return Err(BalloonConfigError::Unknown(item.to_string())),
            }
            seen.push(key);
        }
        Ok(config)
    }
}

/// The canonical `--balloon` value: parsing it gives the same configuration back.
impl fmt::Display for BalloonConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut items: Vec<String> = Vec::new();
        let features = &self.features;
        if features.stats {
            items.push(format!("stats={}", self.stats_interval_s));
        }
        for (on, name) in [
            (features.deflate_on_oom, "deflate-on-oom"),
            (features.page_reporting, "page-reporting"),
            (features.free_page_hint, "free-page-hint"),
            (features.page_poison, "page-poison"),
            (features.must_tell_host, "must-tell-host"),
        ] {
            if on {
                items.push(name.to_string());
            }
        }
        if self.initial_size != 0 {
            items.push(format!("size={}", compact_size(self.initial_size)));
        }
        f.write_str(&items.join(","))
    }
}

/// `512M`, `2G`, `12K` or plain bytes: the shortest form `parse_size` reads back exactly.
fn compact_size(bytes: u64) -> String {
    for (unit, suffix) in [(GIB, "G"), (MIB, "M"), (KIB, "K")] {
        if bytes % unit == 0 {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

impl BalloonFeatures {
    /// The optional features as a virtio feature bit mask (without `VIRTIO_F_VERSION_1`).
    pub fn bits(&self) -> u64 {
        [
            (self.must_tell_host, VIRTIO_BALLOON_F_MUST_TELL_HOST),
            (self.stats, VIRTIO_BALLOON_F_STATS_VQ),
            (self.deflate_on_oom, VIRTIO_BALLOON_F_DEFLATE_ON_OOM),
            (self.free_page_hint, VIRTIO_BALLOON_F_FREE_PAGE_HINT),
            (self.page_poison, VIRTIO_BALLOON_F_PAGE_POISON),
            (self.page_reporting, VIRTIO_BALLOON_F_REPORTING),
        ]
        .into_iter()
        .filter(|&(on, _)| on)
        .fold(0, |bits, (_, bit)| bits | (1u64 << bit))
    }

    /// The balloon features present in a feature bit mask; other bits are ignored.
    pub fn from_bits(bits: u64) -> BalloonFeatures {
        let has = |bit: u32| bits & (1u64 << bit) != 0;
        BalloonFeatures {
            must_tell_host: has(VIRTIO_BALLOON_F_MUST_TELL_HOST),
            stats: has(VIRTIO_BALLOON_F_STATS_VQ),
            deflate_on_oom: has(VIRTIO_BALLOON_F_DEFLATE_ON_OOM),
            free_page_hint: has(VIRTIO_BALLOON_F_FREE_PAGE_HINT),
            page_poison: has(VIRTIO_BALLOON_F_PAGE_POISON),
            page_reporting: has(VIRTIO_BALLOON_F_REPORTING),
        }
    }
}

/// `struct virtio_balloon_config`: four little-endian 32-bit fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConfigSpace {
    /// @0: the target, in 4 KiB pages. Written by the host.
    pub num_pages: u32,
    /// @4: the pages the guest has given. Written by the driver.
    pub actual: u32,
    /// @8: the free page hinting command. Written by the host.
    pub free_page_hint_cmd_id: u32,
    /// @12: the value freed guest pages hold (PAGE_POISON). Written by the driver.
    pub poison_val: u32,
}

/// What a driver write to the configuration space did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConfigWrite {
    /// Bytes that fell on fields the driver may not write (or past the end); ignored.
    pub ignored_bytes: usize,
}

impl ConfigSpace {
    /// Size of the configuration space in bytes.
    pub const SIZE: u64 = 16;
    const ACTUAL: std::ops::Range<u64> = 4..8;
    const POISON_VAL: std::ops::Range<u64> = 12..16;

    fn to_bytes(self) -> [u8; 16] {
        let mut bytes = [0u8; 16];
        for (i, field) in [
            self.num_pages,
            self.actual,
            self.free_page_hint_cmd_id,
            self.poison_val,
        ]
        .into_iter()
        .enumerate()
        {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&field.to_le_bytes());
        }
        bytes
    }

    fn from_bytes(bytes: [u8; 16]) -> ConfigSpace {
        let field = |i: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&bytes[i * 4..i * 4 + 4]);
            u32::from_le_bytes(b)
        };
        ConfigSpace {
            num_pages: field(0),
            actual: field(1),
            free_page_hint_cmd_id: field(2),
            poison_val: field(3),
        }
    }

    /// Reads `data.len()` bytes at `offset`; bytes past the end read as zero.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        let bytes = self.to_bytes();
        for (i, out) in data.iter_mut().enumerate() {
            *out = offset
                .checked_add(i as u64)
                .filter(|&at| at < Self::SIZE)
                .map_or(0, |at| bytes[at as usize]);
        }
    }

    /// Applies a driver write at `offset`, byte by byte: bytes on `actual` and `poison_val`
    /// are stored, all others ignored and counted.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> ConfigWrite {
        let mut bytes = self.to_bytes();
        let mut result = ConfigWrite::default();
        for (i, &value) in data.iter().enumerate() {
            match offset.checked_add(i as u64) {
                Some(at) if Self::ACTUAL.contains(&at) || Self::POISON_VAL.contains(&at) => {
                    bytes[at as usize] = value;
                }
                _ => result.ignored_bytes += 1,
            }
        }
        *self = ConfigSpace::from_bytes(bytes);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<BalloonConfig, BalloonConfigError> {
        text.parse()
    }

    #[test]
    fn empty_means_no_optional_features() {
        assert_eq!(parse(""), Ok(BalloonConfig::default()));
        assert_eq!(parse("  "), Ok(BalloonConfig::default()));
    }

    #[test]
    fn every_item_sets_what_it_names() {
        let config =
            parse("stats=2,deflate-on-oom,page-reporting,free-page-hint,page-poison,must-tell-host,size=256M")
                .unwrap();
        assert_eq!(
            config,
            BalloonConfig {
                features: BalloonFeatures {
                    must_tell_host: true,
                    stats: true,
                    deflate_on_oom: true,
                    free_page_hint: true,
                    page_poison: true,
                    page_reporting: true,
                },
                stats_interval_s: 2,
                initial_size: 256 * MIB,
            }
        );
        let only_reporting = parse("page-reporting").unwrap();
        assert_eq!(
            only_reporting.features,
            BalloonFeatures {
                page_reporting: true,
                ..Default::default()
            }
        );
        assert_eq!(only_reporting.stats_interval_s, 0);
        assert_eq!(only_reporting.initial_size, 0);
    }

    #[test]
    fn stats_defaults_to_one_second_and_zero_means_no_polling() {
        let config = parse("stats").unwrap();
        assert!(config.features.stats);
        assert_eq!(config.stats_interval_s, 1);
        let config = parse(" stats = 0 ").unwrap();
        assert!(config.features.stats);
        assert_eq!(config.stats_interval_s, 0);
    }

    #[test]
    fn errors_name_the_item_and_list_the_valid_ones() {
        let cases = [
            ("stats,balloon-magic", "balloon-magic"),
            ("stats=fast", "stats=fast"),
            ("stats=-1", "stats=-1"),
            ("stats=86401", "stats=86401"),
            ("page-reporting=yes", "page-reporting=yes"),
            ("size=12X", "size=12X"),
            ("size=1000", "size=1000"),
            ("size", "size"),
            ("size=", "size="),
            ("stats,stats=3", "stats=3"),
        ];
        for (input, item) in cases {
            let err = parse(input).unwrap_err();
            let message = err.to_string();
            assert!(
                message.contains(&format!("\"{item}\"")),
                "{input}: {message}"
            );
            assert!(message.contains(VALID_ITEMS), "{input}: {message}");
        }
        assert_eq!(
            parse("stats,,size=4K"),
            Err(BalloonConfigError::Empty("stats,,size=4K".into()))
        );
        assert!(matches!(
            parse("size=1000"),
            Err(BalloonConfigError::BadSize {
                source: SizeError::NotPageAligned(_),
                ..
            })
        ));
    }

    #[test]
    fn display_reads_back_as_the_same_config() {
        for text in [
            "",
            "stats",
            "stats=0,page-reporting",
            "size=2G",
            "size=12K",
            "must-tell-host,free-page-hint,page-poison,deflate-on-oom,stats=30,size=1536M",
        ] {
            let config = parse(text).unwrap();
            let shown = config.to_string();
            assert_eq!(parse(&shown), Ok(config), "{text} -> {shown}");
        }
        assert_eq!(parse("size=1024M").unwrap().to_string(), "size=1G");
    }

    #[test]
    fn feature_bits_follow_the_spec_numbering() {
        let all = BalloonFeatures {
            must_tell_host: true,
            stats: true,
            deflate_on_oom: true,
            free_page_hint: true,
            page_poison: true,
            page_reporting: true,
        };
        assert_eq!(all.bits(), 0b11_1111);
        let reporting = BalloonFeatures {
            page_reporting: true,
            ..Default::default()
        };
        assert_eq!(reporting.bits(), 1 << 5);
        for n in 0..64u64 {
            assert_eq!(BalloonFeatures::from_bits(n).bits(), n);
        }
        assert_eq!(
            BalloonFeatures::from_bits(1 << 32),
            BalloonFeatures::default()
        );
    }

    #[test]
    fn config_space_is_little_endian_at_the_spec_offsets() {
        let space = ConfigSpace {
            num_pages: 0x0403_0201,
            actual: 0x0807_0605,
            free_page_hint_cmd_id: 0x0c0b_0a09,
            poison_val: 0x100f_0e0d,
        };
        let mut all = [0u8; 20];
        space.read(0, &mut all);
        assert_eq!(&all[..16], &(1..=16).collect::<Vec<u8>>()[..]);
        assert_eq!(&all[16..], &[0; 4]);
        let mut one = [0u8; 2];
        space.read(9, &mut one);
        assert_eq!(one, [0x0a, 0x0b]);
        let mut past = [0xffu8; 4];
        space.read(u64::MAX - 1, &mut past);
        assert_eq!(past, [0; 4]);
    }

    #[test]
    fn the_driver_may_write_only_actual_and_poison_val() {
        let mut space = ConfigSpace {
            num_pages: 100,
            free_page_hint_cmd_id: 7,
            ..Default::default()
        };
        assert_eq!(space.write(4, &42u32.to_le_bytes()).ignored_bytes, 0);
        assert_eq!(
            space.write(12, &0xaaaa_aaaau32.to_le_bytes()).ignored_bytes,
            0
        );
        assert_eq!(space.write(0, &5u32.to_le_bytes()).ignored_bytes, 4);
        assert_eq!(space.write(8, &9u32.to_le_bytes()).ignored_bytes, 4);
        // A write straddling num_pages and actual keeps only the bytes on actual.
        assert_eq!(space.write(2, &[0xff; 4]).ignored_bytes, 2);
        assert_eq!(space.write(14, &[0; 4]).ignored_bytes, 2);
        assert_eq!(space.write(u64::MAX, &[1, 2]).ignored_bytes, 2);
        assert_eq!(
            space,
            ConfigSpace {
                num_pages: 100,
                actual: 0xffff,
                free_page_hint_cmd_id: 7,
                poison_val: 0x0000_aaaa,
            }
        );
    }
}
