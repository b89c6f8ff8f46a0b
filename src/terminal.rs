//! Terminal raw mode. (Being written.)
