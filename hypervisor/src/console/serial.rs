//! COM1, the 16550 UART at I/O port 0x3F8.

use core::fmt;

use uart_16550::SerialPort;

/// COM1's base I/O port (IBM PC/AT assignment).
const COM1: u16 = 0x3f8;
/// Receiver buffer register offset (DLAB = 0; PC16550D data sheet, Table II).
const RBR: u16 = 0;
/// Line status register offset and its "transmitter empty" bit (16550 data sheet).
const LSR: u16 = 5;
const LSR_TRANSMITTER_EMPTY: u8 = 1 << 6;
/// LSR bit 0, "data ready": a received byte waits in RBR or the receiver FIFO (PC16550D
/// data sheet, 8.4).
const LSR_DATA_READY: u8 = 1 << 0;
/// What LSR reads where no UART answers: an open ISA bus reads all-ones. A working
/// 16550 does not report every condition at once (bit 7, "error in receiver FIFO",
/// together with an empty transmitter and data ready and every error), so all-ones is
/// taken to mean "no COM1" (the same test Linux's 8250 driver makes on LSR).
const LSR_ABSENT: u8 = 0xff;

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

    /// The next received byte, if one is waiting (LSR bit 0, data ready, then RBR);
    /// never waits. `None` too when no UART answers at the port (LSR reads all-ones), so
    /// a machine without COM1 does not produce an endless stream of 0xFF bytes.
    ///
    /// Reading LSR clears its error bits (overrun, parity, framing, break), which the
    /// transmit path does not use; reading RBR takes the byte. The writer only reads
    /// LSR's THRE bit, so the two sides may run on different CPUs without a lock.
    pub fn try_read(&mut self) -> Option<u8> {
        // SAFETY: reading COM1's line status register only clears its error bits (see
        // above); no memory is touched.
        let lsr = unsafe { crate::arch::port::inb(COM1 + LSR) };
        if lsr == LSR_ABSENT || lsr & LSR_DATA_READY == 0 {
            return None;
        }
        // SAFETY: with DLAB = 0 (set by `init` and never changed) reading offset 0 takes
        // the received byte from RBR / the receiver FIFO; only this reader does so.
        Some(unsafe { crate::arch::port::inb(COM1 + RBR) })
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
