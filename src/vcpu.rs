//! vCPU threads. (Being written.)
