//! The 8250 UART on COM1 (`ttyS0`), the guest's console. Output goes to whatever writer it
//! is given, byte by byte as the guest writes its transmit register: the VMM gives it one
//! that never blocks ([`crate::console::ConsoleWriter`]), since the guest writes on a vCPU
//! thread. Input is pushed in by the event loop from stdin.

use std::io::{self, Write};
use std::sync::Arc;

use vm_superio::serial::SerialEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::BusDevice;
use crate::devices::IrqLine;

/// Raises the UART's interrupt through an [`IrqLine`].
pub struct SerialIrq(Arc<dyn IrqLine>);

impl Trigger for SerialIrq {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.signal()
    }
}

/// Tells the event loop when the guest has drained the receive FIFO, so that reading
/// from stdin, paused while the FIFO was full, can resume.
pub struct InputDrained(EventFd);

impl SerialEvents for InputDrained {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        let _ = self.0.write(1);
    }
}

/// COM1: eight registers at 0x3f8, IRQ 4.
pub struct SerialConsole<W: Write + Send> {
    uart: Serial<SerialIrq, InputDrained, W>,
}

impl<W: Write + Send> SerialConsole<W> {
    /// A UART that interrupts on `irq`, writes guest output to `out`, and signals
    /// `input_drained` when the guest has read all pending input.
    pub fn new(irq: Arc<dyn IrqLine>, out: W, input_drained: EventFd) -> Self {
        SerialConsole {
            uart: Serial::with_events(SerialIrq(irq), InputDrained(input_drained), out),
        }
    }

    /// Room left in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Queues bytes for the guest to read; returns how many fit.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let room = self.uart.fifo_capacity().min(bytes.len());
        if room == 0 {
            return 0;
        }
        self.uart.enqueue_raw_bytes(&bytes[..room]).unwrap_or(0)
    }
}

impl<W: Write + Send> BusDevice for SerialConsole<W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Some(first), Ok(offset)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.uart.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&value), Ok(offset)) = (data.first(), u8::try_from(offset)) {
            // A failed interrupt or a lost output byte is not the guest's fault and
            // there is nobody to tell; the UART keeps going.
            let _ = self.uart.write(offset, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::test_support::CountingInterrupt;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);
    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    const THR: u64 = 0;
    const IER: u64 = 1;
    const LSR: u64 = 5;
    const LSR_DATA_READY: u8 = 1;

    #[test]
    fn guest_output_reaches_the_writer() {
        let out = SharedBuf::default();
        let irq = Arc::new(CountingInterrupt::default());
        let mut console = SerialConsole::new(irq, out.clone(), EventFd::new(0).unwrap());
        for &b in b"hello\n" {
            console.write(THR, &[b]);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hello\n");
    }

    #[test]
    fn host_input_interrupts_the_guest_and_drains() {
        let irq = Arc::new(CountingInterrupt::default());
        let drained = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut console = SerialConsole::new(
            irq.clone(),
            SharedBuf::default(),
            drained.try_clone().unwrap(),
        );
        console.write(IER, &[0x01]); // receive-data interrupt on
        let capacity = console.input_capacity();
        assert!(capacity > 0);
        assert_eq!(console.enqueue_input(b"ls\n"), 3);
        assert!(irq.signals() > 0);
        let mut read = Vec::new();
        loop {
            let mut lsr = [0u8];
            console.read(LSR, &mut lsr);
            if lsr[0] & LSR_DATA_READY == 0 {
                break;
            }
            let mut byte = [0u8];
            console.read(THR, &mut byte);
            read.push(byte[0]);
        }
        assert_eq!(read, b"ls\n");
        assert_eq!(
            drained.read().unwrap(),
            1,
            "drained signal lets stdin resume"
        );
    }

    #[test]
    fn a_full_fifo_takes_only_what_fits() {
        let irq = Arc::new(CountingInterrupt::default());
        let mut console = SerialConsole::new(irq, SharedBuf::default(), EventFd::new(0).unwrap());
        let capacity = console.input_capacity();
        let big = vec![b'x'; capacity + 10];
        assert_eq!(console.enqueue_input(&big), capacity);
        assert_eq!(console.enqueue_input(b"more"), 0);
    }
}
