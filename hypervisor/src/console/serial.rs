//! COM1, the 16550 UART at I/O port 0x3F8.

use core::fmt;

use uart_16550::SerialPort;

/// COM1's base I/O port (IBM PC/AT assignment).
const COM1: u16 = 0x3f8;
/// Line status register offset and its "transmitter empty" bit (16550 data sheet).
const LSR: u16 = 5;
const LSR_TRANSMITTER_EMPTY: u8 = 1 << 6;

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

    /// Waits (bounded) until the transmitter is empty: LSR bit 6, TEMT (16550 data
    /// sheet). Used before powering off, so that the last line is not lost.
    pub fn drain(&mut self) {
        for _ in 0..1_000_000 {
            // SAFETY: reading COM1's line status register has no side effect.
            if unsafe { crate::arch::port::inb(COM1 + LSR) } & LSR_TRANSMITTER_EMPTY != 0 {
                return;
            }
            core::hint::spin_loop();
        }
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
