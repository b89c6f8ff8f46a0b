//! The parsers of what users type on the command line: `--balloon` values and sizes
//! (`--mem`, `size=`). Besides never panicking:
//!
//! - a `--balloon` value that parses prints (`Display`) as a value that parses to the same
//!   configuration, with a whole number of pages and an interval within bounds;
//! - a size that parses prints (`HumanSize`) as a size that parses to the same number of
//!   bytes, when it prints with a unit and is not rounded (`1.5 MiB`);
//! - a page-aligned size is a size that is a whole number of pages, and the other way
//!   round;
//! - every refusal names the value it refuses.
//!
//! Input: which parser: u8 (modulo 3: `--balloon`, size, page-aligned size), then the text,
//! which must be UTF-8 (the command line parser refuses anything else before ours).

use vmm::devices::virtio::balloon::{BalloonConfig, MAX_STATS_INTERVAL_S};
use vmm::size::{parse_page_aligned, parse_size, HumanSize, SizeError, PAGE_SIZE};

use crate::input::{Input, Script};

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let parser = input.u8() % 3;
    let Ok(text) = std::str::from_utf8(input.rest()) else {
        return;
    };
    match parser {
        0 => balloon(text),
        1 => size(text),
        _ => page_aligned(text),
    }
}

fn balloon(text: &str) {
    match text.parse::<BalloonConfig>() {
        Ok(config) => {
            assert_eq!(config.initial_size % PAGE_SIZE, 0, "{text:?}");
            assert!(config.stats_interval_s <= MAX_STATS_INTERVAL_S, "{text:?}");
            let shown = config.to_string();
            assert_eq!(
                shown.parse::<BalloonConfig>(),
                Ok(config),
                "{text:?} -> {shown:?}"
            );
        }
        Err(e) => {
            let message = e.to_string();
            assert!(message.contains("valid options are"), "{message}");
        }
    }
}

fn size(text: &str) {
    match parse_size(text) {
        Ok(bytes) => {
            // `1.5 MiB` is rounded, and `100 bytes` is prose, not a size to type back.
            let shown = HumanSize(bytes).to_string();
            if !shown.contains('.') && !shown.ends_with(" bytes") {
                assert_eq!(parse_size(&shown), Ok(bytes), "{text:?} -> {shown:?}");
            }
        }
        Err(e) => assert!(e.to_string().contains(text), "{text:?}: {e}"),
    }
}

fn page_aligned(text: &str) {
    match (parse_page_aligned(text), parse_size(text)) {
        (Ok(aligned), Ok(bytes)) => {
            assert_eq!(aligned, bytes);
            assert_eq!(aligned % PAGE_SIZE, 0);
        }
        (Err(SizeError::NotPageAligned(value)), Ok(bytes)) => {
            assert_ne!(bytes % PAGE_SIZE, 0);
            assert_eq!(value, text);
        }
        (Err(aligned), Err(plain)) => assert_eq!(aligned, plain),
        (aligned, plain) => panic!("{text:?}: page-aligned {aligned:?}, plain {plain:?}"),
    }
}

pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let seed = |parser: u8, text: &str| {
        let mut s = Script::new();
        s.u8(parser).bytes(text.as_bytes());
        s.into_bytes()
    };
    vec![
        (
            "balloon-every-item",
            seed(
                0,
                "stats=2,deflate-on-oom,page-reporting,free-page-hint,page-poison,must-tell-host,size=256M",
            ),
        ),
        ("balloon-refused", seed(0, "stats,,size=1000,stats=86401")),
        ("size", seed(1, "1536MiB")),
        ("size-too-large", seed(1, "17179869184T")),
        ("page-aligned", seed(2, " 2gib ")),
    ]
}
