//! The virtio-mmio register window driven by arbitrary access sequences, with the balloon
//! behind it: reads and writes of any width at any offset (registers and config space),
//! notifications by register and by the ioeventfd path, resets, guest memory changes, the
//! API's calls and the statistics timer, in any order. After every step the identification
//! registers must read as they always do and the status registers hold only valid bits;
//! after a reset the device must be stopped with no status and no interrupt pending.
//!
//! Input: one byte of offered balloon features, then steps until the data ends, each an
//! opcode byte and its operands (see [`Step`]).

use virtio_bindings::virtio_mmio::{
    VIRTIO_MMIO_INTERRUPT_STATUS, VIRTIO_MMIO_QUEUE_NOTIFY, VIRTIO_MMIO_STATUS,
};
use vmm::devices::virtio::balloon::{
    BalloonConfig, BalloonControl, BalloonFeatures, BalloonHandle,
};
use vmm::devices::virtio::mmio::MMIO_WINDOW_SIZE;
use vmm::devices::virtio::VirtioDevice;
use vmm::memory::MemoryBacking;
use vmm::sync::lock;

use crate::input::{Input, Script};
use crate::machine::{Machine, Ring, RAM_SPAN, REGISTERS, VERSION_1};

/// The opcodes, in the order of [`Step`]'s variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Step {
    /// offset: u16 (modulo the window), width: u8 (1, 2, 4 or 8 by its low bits), value: u64
    Write,
    /// offset: u16, width: u8
    Read,
    /// register: u8 (an index into `REGISTERS`), value: u32; an aligned 32-bit write
    WriteRegister,
    /// queue: u8; signal the queue's ioeventfd and deliver it as the event loop does
    Kick,
    /// addr: u32 (modulo the RAM span), bytes: u8 length + bytes
    Poke,
    /// call: u8, value: u32; one of the API's balloon calls
    Api,
    /// the balloon's own file descriptors (its statistics timer) became readable
    Timer,
    /// driver features: u64, then per queue size code: u8 and page: u16; a whole Linux
    /// bring-up to DRIVER_OK
    BringUp,
}

const STEPS: [Step; 8] = [
    Step::Write,
    Step::Read,
    Step::WriteRegister,
    Step::Kick,
    Step::Poke,
    Step::Api,
    Step::Timer,
    Step::BringUp,
];

const WIDTHS: [usize; 4] = [1, 2, 4, 8];

pub fn run(data: &[u8]) {
    drive(data);
}

/// Runs `data` and returns the machine as the input left it.
pub fn drive(data: &[u8]) -> Machine {
    let mut input = Input::new(data);
    let config = BalloonConfig {
        features: BalloonFeatures::from_bits(input.u8().into()),
        ..Default::default()
    };
    let mut machine = Machine::new(config, MemoryBacking::Anonymous);
    let queue_count = lock(&machine.balloon).queue_max_sizes().len();
    let api = BalloonHandle::new(machine.balloon.clone());
    while !input.is_empty() {
        let step = STEPS[usize::from(input.u8()) % STEPS.len()];
        match step {
            Step::Write => {
                let offset = u64::from(input.u16()) % MMIO_WINDOW_SIZE;
                let width = WIDTHS[usize::from(input.u8() % 4)];
                let value = input.u64();
                machine.write(offset, width, value);
                if (offset, width, value as u32) == (VIRTIO_MMIO_STATUS.into(), 4, 0) {
                    check_reset(&mut machine);
                }
            }
            Step::Read => {
                let offset = u64::from(input.u16()) % MMIO_WINDOW_SIZE;
                let width = WIDTHS[usize::from(input.u8() % 4)];
                machine.read(offset, width);
            }
            Step::WriteRegister => {
                let register = REGISTERS[usize::from(input.u8()) % REGISTERS.len()];
                let value = input.u32();
                machine.write32(register, value);
                if (register, value) == (VIRTIO_MMIO_STATUS, 0) {
                    check_reset(&mut machine);
                }
            }
            Step::Kick => {
                let index = usize::from(input.u8());
                let notifications = machine.transport.notifications();
                if let Some(event) = notifications.queue_events().get(index) {
                    event.write(1).expect("an eventfd write");
                }
                // A queue without an eventfd is an error the event loop would log.
                let _ = notifications.deliver_queue_event(index);
            }
            Step::Poke => {
                let addr = u64::from(input.u32()) % RAM_SPAN;
                let bytes = input.short_bytes();
                machine.poke(addr, bytes);
            }
            Step::Api => {
                let call = input.u8();
                let value = input.u32();
                api_call(&api, call, value);
            }
            Step::Timer => {
                let mut balloon = lock(&machine.balloon);
                for fd in balloon.event_fds() {
                    balloon.process_event_fd(fd);
                }
            }
            Step::BringUp => {
                let features = input.u64();
                let rings: Vec<Option<Ring>> = (0..queue_count)
                    .map(|_| Some(Ring::from_codes(input.u8(), input.u16())))
                    .collect();
                machine.bring_up(features, &rings);
            }
        }
        machine.check_registers();
    }
    machine
}

/// A reset leaves the device as the driver found it at boot.
fn check_reset(machine: &mut Machine) {
    assert_eq!(machine.read32(VIRTIO_MMIO_STATUS), 0);
    assert_eq!(machine.read32(VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    assert!(!lock(&machine.balloon).is_activated());
}

/// One of the API's calls on the balloon. Refusals are the API's answers, not failures.
pub(crate) fn api_call(api: &dyn BalloonControl, call: u8, value: u32) {
    match call % 6 {
        0 => {
            let _ = api.set_target_pages(value);
        }
        1 => {
            let _ = api.start_hinting(value & 1 == 1);
        }
        2 => {
            let _ = api.stop_hinting();
        }
        3 => {
            let _ = api.set_stats_interval(value);
        }
        4 => {
            let _ = api.statistics();
            let _ = api.hinting_status();
        }
        _ => {
            api.info();
        }
    }
}

/// The queue layout Linux would use for `queue_count` queues, from page 16 of RAM on.
fn linux_rings(script: &mut Script, queue_count: usize) {
    for i in 0..queue_count {
        // 256 entries (size code 8), 4 pages apart.
        script.u8(8).u16(16 + 4 * i as u16);
    }
}

pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = Vec::new();

    // Linux brings the device up with every feature, inflates one page, takes an
    // interrupt, acknowledges it and resets the device.
    let mut s = Script::new();
    s.u8(0x3f);
    s.u8(Step::BringUp as u8).u64(VERSION_1 | 0x3f);
    linux_rings(&mut s, 5);
    // Descriptor 0 of queue 0 (at page 16): 4 bytes of PFNs at 0x30000; avail idx 1.
    let mut desc = Vec::new();
    desc.extend_from_slice(&0x3_0000u64.to_le_bytes());
    desc.extend_from_slice(&4u32.to_le_bytes());
    desc.extend_from_slice(&[0; 4]);
    s.u8(Step::Poke as u8).u32(16 * 4096).short_bytes(&desc);
    s.u8(Step::Poke as u8)
        .u32(0x3_0000)
        .short_bytes(&0x40u32.to_le_bytes());
    s.u8(Step::Poke as u8)
        .u32(16 * 4096 + 16 * 256)
        .short_bytes(&[0, 0, 1, 0, 0, 0]);
    s.u8(Step::WriteRegister as u8)
        .u8(register_index(VIRTIO_MMIO_QUEUE_NOTIFY))
        .u32(0);
    s.u8(Step::Read as u8).u16(0x60).u8(2);
    s.u8(Step::Write as u8).u16(0x64).u8(2).u64(1);
    s.u8(Step::Kick as u8).u8(1);
    s.u8(Step::Api as u8).u8(0).u32(256);
    s.u8(Step::Read as u8).u16(0x100).u8(3);
    s.u8(Step::Write as u8).u16(0x70).u8(2).u64(0);
    seeds.push(("linux-bring-up-inflate-reset", s.into_bytes()));

    // A balloon without optional features, brought up register by register as Linux does,
    // with an access of every width to the config space.
    let mut s = Script::new();
    s.u8(0);
    for (register, value) in [
        (0x70, 0),
        (0x70, 1),
        (0x70, 3),
        (0x14, 1),
        (0x14, 0),
        (0x24, 1),
        (0x20, 1),
        (0x24, 0),
        (0x20, 0),
        (0x70, 11),
    ] {
        s.u8(Step::Write as u8).u16(register).u8(2).u64(value);
    }
    for (queue, base) in [(0u64, 0x1_0000u64), (1, 0x2_0000)] {
        let ring = Ring::at(base, 128);
        s.u8(Step::Write as u8).u16(0x30).u8(2).u64(queue);
        s.u8(Step::Read as u8).u16(0x34).u8(2);
        s.u8(Step::Write as u8).u16(0x38).u8(2).u64(128);
        for (low, addr) in [(0x80, ring.desc), (0x90, ring.avail), (0xa0, ring.used)] {
            s.u8(Step::Write as u8)
                .u16(low)
                .u8(2)
                .u64(addr & 0xffff_ffff);
            s.u8(Step::Write as u8).u16(low + 4).u8(2).u64(addr >> 32);
        }
        s.u8(Step::Write as u8).u16(0x44).u8(2).u64(1);
    }
    s.u8(Step::Write as u8).u16(0x70).u8(2).u64(15);
    for width in 0..4 {
        s.u8(Step::Read as u8).u16(0x100).u8(width);
    }
    s.u8(Step::Write as u8).u16(0x104).u8(2).u64(7);
    s.u8(Step::Timer as u8);
    seeds.push(("register-by-register", s.into_bytes()));
    seeds
}

fn register_index(register: u32) -> u8 {
    REGISTERS
        .iter()
        .position(|&r| r == register)
        .expect("a register of the table") as u8
}
