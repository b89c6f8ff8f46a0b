//! A virtio device for transport tests: it uses every buffer it is notified about and
//! records what the transport asked of it.

use std::os::unix::io::{AsRawFd, RawFd};

use virtio_queue::QueueT;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::devices::virtio::{ActivateError, Activation, InterruptKind, VirtioDevice};

/// The device ID it answers with; no real device has it.
pub const DUMMY_DEVICE_TYPE: u32 = 0x2a;

/// Uses every buffer it is notified about and interrupts for it.
pub struct DummyDevice {
    pub features: u64,
    pub max_sizes: Vec<u16>,
    pub config: [u8; 16],
    pub fail_activation: bool,
    pub running: Option<Activation>,
    pub activations: usize,
    pub processed: Vec<usize>,
    pub resets: usize,
    pub timer: EventFd,
    pub timer_events: usize,
}

impl DummyDevice {
    pub fn new(features: u64, max_sizes: &[u16]) -> Self {
        DummyDevice {
            features,
            max_sizes: max_sizes.to_vec(),
            config: std::array::from_fn(|i| i as u8),
            fail_activation: false,
            running: None,
            activations: 0,
            processed: Vec::new(),
            resets: 0,
            timer: EventFd::new(EFD_NONBLOCK).unwrap(),
            timer_events: 0,
        }
    }
}

impl VirtioDevice for DummyDevice {
    fn device_type(&self) -> u32 {
        DUMMY_DEVICE_TYPE
    }
    fn device_features(&self) -> u64 {
        self.features
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.max_sizes
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = usize::try_from(offset)
                .ok()
                .and_then(|o| self.config.get(o + i))
                .copied()
                .unwrap_or(0);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        for (i, byte) in data.iter().enumerate() {
            if let Some(slot) = self.config.get_mut(offset as usize + i) {
                *slot = *byte;
            }
        }
    }
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        if self.fail_activation {
            return Err(ActivateError::Other("refused by the test".into()));
        }
        self.activations += 1;
        self.running = Some(activation);
        Ok(())
    }
    fn is_activated(&self) -> bool {
        self.running.is_some()
    }
    fn process_queue(&mut self, index: usize) {
        self.processed.push(index);
        let Some(running) = self.running.as_mut() else {
            return;
        };
        let mem = &running.mem;
        let queue = &mut running.queues[index];
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            queue.add_used(mem, chain.head_index(), 0).unwrap();
            used = true;
        }
        if used {
            running.interrupt.trigger(InterruptKind::Queue);
        }
    }
    fn reset(&mut self) {
        self.running = None;
        self.resets += 1;
    }
    fn event_fds(&self) -> Vec<RawFd> {
        vec![self.timer.as_raw_fd()]
    }
    fn process_event_fd(&mut self, fd: RawFd) {
        assert_eq!(fd, self.timer.as_raw_fd());
        self.timer.read().unwrap();
        self.timer_events += 1;
    }
}
