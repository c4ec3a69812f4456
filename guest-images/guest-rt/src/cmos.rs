//! The CMOS RTC and NVRAM of the virtual PC (index port 0x70, data port 0x71; the
//! MC146818A's registers), for the test guests that use it. Bit 7 of the index is the
//! NMI mask on PCs; callers pass plain register numbers.

use crate::port::{inb, outb};

/// The index (register select) port.
pub const INDEX: u16 = 0x70;
/// The data port.
pub const DATA: u16 = 0x71;

/// Reads CMOS register `index`.
pub fn read(index: u8) -> u8 {
    outb(INDEX, index);
    inb(DATA)
}

/// Writes `value` to CMOS register `index`.
pub fn write(index: u8, value: u8) {
    outb(INDEX, index);
    outb(DATA, value);
}
