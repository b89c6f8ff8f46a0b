//! The MP table. (Being written.)
