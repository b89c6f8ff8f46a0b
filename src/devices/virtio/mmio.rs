//! The virtio-mmio transport, version 2. (Being written.)
