//! VM wiring. (Being written.)
