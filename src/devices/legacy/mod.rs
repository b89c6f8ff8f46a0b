//! Legacy PC devices. (Being written.)
