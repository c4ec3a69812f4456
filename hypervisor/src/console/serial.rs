//! COM1, the 16550 UART at I/O port 0x3F8.

use core::fmt;

use uart_16550::SerialPort;

/// COM1's base I/O port (IBM PC/AT assignment).
const COM1: u16 = 0x3f8;

/// The serial console.
pub struct Serial(SerialPort);

impl Serial {
    pub const fn com1() -> Self {
        // SAFETY: 0x3F8 is COM1 on every PC-compatible platform; only this driver uses
        // it. On a machine without COM1 the ports read as 0xFF, which the driver sees as
        // "transmitter empty", so writes never block.
        Self(unsafe { SerialPort::new(COM1) })
    }

    /// Programs 38400 8N1 with FIFOs.
    pub fn init(&mut self) {
        self.0.init();
    }
}

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            self.0.send_raw(b);
        }
        Ok(())
    }
}
