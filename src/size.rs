//! Sizes as users write them: `512M`, `2G`, `1536MiB`, `2GiB`, `4096` (bytes).
//!
//! Units are binary: `K`/`KiB` = 1024, `M`/`MiB` = 1024², `G`/`GiB` = 1024³, `T`/`TiB` = 1024⁴.
//! A trailing `B` is accepted (`512MB` is still 512 MiB), and so are lower-case units.

use std::fmt;

/// 4 KiB, the page size of x86_64 and of the balloon protocol.
pub const PAGE_SIZE: u64 = 4096;
pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("size \"{0}\" is empty; write it like 512M, 2G, 1536MiB, 2GiB or a number of bytes")]
    Empty(String),
    #[error("size \"{0}\" is not a number followed by an optional unit (K, M, G, T, KiB, MiB, GiB, TiB)")]
    Malformed(String),
    #[error("size \"{0}\" is too large")]
    Overflow(String),
    #[error("size \"{0}\" is not a whole number of 4 KiB pages")]
    NotPageAligned(String),
}

/// Parses a size in bytes. Does not require page alignment; see [`parse_page_aligned`].
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(SizeError::Empty(text.to_string()));
    }
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(digits_end);
    if digits.is_empty() {
        return Err(SizeError::Malformed(text.to_string()));
    }
    let number: u64 = digits
        .parse()
        .map_err(|_| SizeError::Overflow(text.to_string()))?;
    let multiplier = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => KIB,
        "m" | "mb" | "mib" => MIB,
        "g" | "gb" | "gib" => GIB,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(SizeError::Malformed(text.to_string())),
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| SizeError::Overflow(text.to_string()))
}

/// Parses a size that must be a whole number of 4 KiB pages.
pub fn parse_page_aligned(text: &str) -> Result<u64, SizeError> {
    let bytes = parse_size(text)?;
    if bytes % PAGE_SIZE != 0 {
        return Err(SizeError::NotPageAligned(text.to_string()));
    }
    Ok(bytes)
}

/// A byte count printed the way a person reads it: `512 MiB`, `2 GiB`, `1536 KiB`, `100 bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanSize(pub u64);

impl fmt::Display for HumanSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.0;
        for (unit, name) in [
            (1u64 << 40, "TiB"),
            (GIB, "GiB"),
            (MIB, "MiB"),
            (KIB, "KiB"),
        ] {
            if bytes >= unit && bytes % unit == 0 {
                return write!(f, "{} {}", bytes / unit, name);
            }
        }
        if bytes >= MIB {
            return write!(f, "{:.1} MiB", bytes as f64 / MIB as f64);
        }
        write!(f, "{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_forms() {
        assert_eq!(parse_size("512M"), Ok(512 * MIB));
        assert_eq!(parse_size("2G"), Ok(2 * GIB));
        assert_eq!(parse_size("1536MiB"), Ok(1536 * MIB));
        assert_eq!(parse_size("2GiB"), Ok(2 * GIB));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64k"), Ok(64 * KIB));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size(" 3g "), Ok(3 * GIB));
        assert_eq!(parse_size("512MB"), Ok(512 * MIB));
    }

    #[test]
    fn refuses_malformed_sizes_naming_the_value() {
        assert_eq!(parse_size(""), Err(SizeError::Empty(String::new())));
        assert_eq!(parse_size("G"), Err(SizeError::Malformed("G".into())));
        assert_eq!(parse_size("12X"), Err(SizeError::Malformed("12X".into())));
        assert_eq!(parse_size("-1G"), Err(SizeError::Malformed("-1G".into())));
        assert_eq!(parse_size("1.5G"), Err(SizeError::Malformed("1.5G".into())));
        let err = parse_size("99999999999999999999").unwrap_err();
        assert_eq!(err, SizeError::Overflow("99999999999999999999".into()));
        assert!(err.to_string().contains("99999999999999999999"));
        assert_eq!(
            parse_size("17179869184T"),
            Err(SizeError::Overflow("17179869184T".into()))
        );
    }

    #[test]
    fn page_alignment_is_checked_when_asked() {
        assert_eq!(parse_page_aligned("1M"), Ok(MIB));
        let err = parse_page_aligned("1000").unwrap_err();
        assert_eq!(err, SizeError::NotPageAligned("1000".into()));
        assert!(err.to_string().contains("\"1000\""));
    }

    #[test]
    fn human_sizes_read_naturally() {
        assert_eq!(HumanSize(512 * MIB).to_string(), "512 MiB");
        assert_eq!(HumanSize(2 * GIB).to_string(), "2 GiB");
        assert_eq!(HumanSize(1536 * MIB).to_string(), "1536 MiB");
        assert_eq!(HumanSize(100).to_string(), "100 bytes");
        assert_eq!(HumanSize(MIB + MIB / 2 + 1).to_string(), "1.5 MiB");
    }
}
