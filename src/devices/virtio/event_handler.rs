//! Connects a virtio-mmio device to the event loop. (Filled in with the transport.)
