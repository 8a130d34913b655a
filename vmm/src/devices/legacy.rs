//! Legacy port-I/O devices: the 8250 UART (console) and the i8042 (reset).

use std::io::Write;
use std::sync::Arc;

use vm_superio::{I8042Device, Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::bus::BusDevice;
use crate::exit::StopReason;
use crate::lifecycle::Lifecycle;

pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
pub const SERIAL_LEN: u64 = 8;
pub const I8042_PORT: u16 = 0x60;
pub const I8042_LEN: u64 = 5;

/// Raises an interrupt by writing an eventfd registered as a KVM irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// The console UART.
pub struct SerialDevice(
    pub Serial<IrqTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>,
);

impl SerialDevice {
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        Self(Serial::new(IrqTrigger(irq), out))
    }

    /// A UART with restored registers and input buffer.
    pub fn from_state(
        state: &vm_superio::serial::SerialState,
        irq: EventFd,
        out: Box<dyn Write + Send>,
    ) -> Result<Self, vm_superio::serial::Error<std::io::Error>> {
        Serial::from_state(state, IrqTrigger(irq), vm_superio::serial::NoEvents, out).map(Self)
    }

    /// Queues host input for the guest; returns how many bytes fit.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.0.enqueue_raw_bytes(bytes).unwrap_or(0)
    }
}

/// A legacy device with byte-wide registers. Wider or out-of-range accesses
/// read as 0xff (no device there) and writes are dropped.
trait ByteRegisters: Send {
    fn read_byte(&mut self, offset: u8) -> u8;
    fn write_byte(&mut self, offset: u8, value: u8);
}

impl<T: ByteRegisters> BusDevice for T {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data.len()) {
            (Ok(off), 1) => data[0] = self.read_byte(off),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), [value]) = (u8::try_from(offset), data) {
            self.write_byte(off, *value);
        }
    }
}

impl ByteRegisters for SerialDevice {
    fn read_byte(&mut self, offset: u8) -> u8 {
        self.0.read(offset)
    }

    fn write_byte(&mut self, offset: u8, value: u8) {
        if let Err(e) = self.0.write(offset, value) {
            // The console sink failing (closed pipe, full disk) must not stop the guest.
            tracing::debug!(error = %e, "serial output failed");
        }
    }
}

/// Turns the i8042 reset command into a VM stop.
pub struct ResetTrigger(pub Arc<Lifecycle>);

impl Trigger for ResetTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        tracing::debug!("i8042 reset: stopping the VM");
        self.0.request_stop(StopReason::GuestReset);
        Ok(())
    }
}

/// The keyboard controller, only for its CPU-reset command.
pub struct I8042(pub I8042Device<ResetTrigger>);

impl I8042 {
    pub fn new(lifecycle: Arc<Lifecycle>) -> Self {
        Self(I8042Device::new(ResetTrigger(lifecycle)))
    }
}

impl ByteRegisters for I8042 {
    fn read_byte(&mut self, offset: u8) -> u8 {
        self.0.read(offset)
    }

    fn write_byte(&mut self, offset: u8, value: u8) {
        // ResetTrigger never fails.
        let _ = self.0.write(offset, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Instant;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn serial_writes_reach_the_sink_and_raise_irq() {
        let sink = Sink::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = SerialDevice::new(irq.try_clone().unwrap(), Box::new(sink.clone()));
        // Enable the "THR empty" interrupt, then write.
        s.write(1, &[0x02]);
        s.write(0, b"h");
        s.write(0, b"i");
        s.write(0, &[1, 2]); // not a byte access: ignored
        assert_eq!(&*sink.0.lock().unwrap(), b"hi");
        assert!(irq.read().unwrap() >= 1);
        assert_eq!(s.enqueue_input(b"x"), 1);
        let mut b = [0u8];
        s.read(0, &mut b);
        assert_eq!(b[0], b'x');
    }

    #[test]
    fn i8042_reset_command_stops_the_vm() {
        let l = Arc::new(Lifecycle::new(Instant::now()).unwrap());
        let mut k = I8042::new(l.clone());
        k.write(0, &[0xfe]);
        assert!(!l.stopping());
        k.write(4, &[0xfe]);
        assert_eq!(l.reason(), Some(StopReason::GuestReset));
    }
}
