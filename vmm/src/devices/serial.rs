//! COM1: a vm-superio 16550 at 0x3f8 whose output goes to the console sink, which remembers
//! when the first full line arrived (for the exit report).

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// COM1 base port.
pub const COM1: u16 = 0x3f8;
/// COM1 IRQ (ISA).
pub const COM1_IRQ: u32 = 4;

/// Interrupt line of the UART: an eventfd registered as irqfd on GSI 4.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Where console bytes go, and when the first line ended.
pub struct ConsoleSink {
    out: Box<dyn Write + Send>,
    start: Instant,
    first_line: Arc<OnceLock<Duration>>,
    /// Last partial line, to let tests and `vmm info` see recent output.
    line: Vec<u8>,
}

impl ConsoleSink {
    /// A sink writing to `out`; times are measured from `start`.
    pub fn new(
        out: Box<dyn Write + Send>,
        start: Instant,
        first_line: Arc<OnceLock<Duration>>,
    ) -> Self {
        ConsoleSink {
            out,
            start,
            first_line,
            line: Vec::new(),
        }
    }
}

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for b in buf {
            if *b == b'\n' {
                let _ = self.first_line.set(self.start.elapsed());
                self.line.clear();
            } else if self.line.len() < 256 {
                self.line.push(*b);
            }
        }
        self.out.write_all(buf)?;
        if buf.contains(&b'\n') {
            self.out.flush()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// The UART as seen by the port I/O bus.
pub struct SerialPort {
    uart: Serial<IrqTrigger, vm_superio::serial::NoEvents, ConsoleSink>,
}

impl SerialPort {
    /// Wraps a UART raising `irq` and writing to `sink`.
    pub fn new(irq: EventFd, sink: ConsoleSink) -> Self {
        SerialPort {
            uart: Serial::new(IrqTrigger(irq), sink),
        }
    }

    /// Port read at `offset` (0..8) from COM1.
    pub fn read(&mut self, offset: u8) -> u8 {
        self.uart.read(offset)
    }

    /// Port write at `offset` (0..8).
    pub fn write(&mut self, offset: u8, value: u8) {
        let _ = self.uart.write(offset, value);
    }

    /// Queues console input for the guest; returns how many bytes fit in the FIFO.
    pub fn input(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.uart.fifo_capacity());
        self.uart.enqueue_raw_bytes(&bytes[..n]).unwrap_or(0)
    }
}

/// Feeds our stdin to the guest's COM1 while stdin is a terminal (an interactive Linux shell);
/// does nothing otherwise (tests, scripts, background runs).
pub fn spawn_stdin_feeder(serial: SharedSerial) {
    // SAFETY: isatty only inspects file descriptor 0.
    if unsafe { libc::isatty(0) } != 1 {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("vmm-stdin".into())
        .spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 64];
            let mut stdin = std::io::stdin();
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut rest = &buf[..n];
                while !rest.is_empty() {
                    let put = serial.lock().unwrap().input(rest);
                    rest = &rest[put..];
                    if put == 0 {
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                }
            }
        });
}

/// Shared handle used by the vCPU threads.
pub type SharedSerial = Arc<Mutex<SerialPort>>;

#[cfg(test)]
mod tests {
    use super::*;

    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn thr_writes_reach_the_sink_and_time_the_first_line() {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let first = Arc::new(OnceLock::new());
        let sink = ConsoleSink::new(
            Box::new(Capture(buf.clone())),
            Instant::now(),
            first.clone(),
        );
        let mut port = SerialPort::new(EventFd::new(0).unwrap(), sink);
        // LSR says THR empty.
        assert_ne!(port.read(5) & 0x20, 0);
        for b in b"hi" {
            port.write(0, *b);
        }
        assert!(first.get().is_none());
        port.write(0, b'\n');
        assert!(first.get().is_some());
        assert_eq!(&*buf.lock().unwrap(), b"hi\n");
        // Input: LSR data-ready, then RBR.
        assert_eq!(port.input(b"ab"), 2);
        assert_ne!(port.read(5) & 1, 0);
        assert_eq!(port.read(0), b'a');
        assert_eq!(port.read(0), b'b');
        assert_eq!(port.read(5) & 1, 0);
    }
}
