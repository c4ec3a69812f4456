//! The 8259A pair of a PC, for the test guests that program it (`guest-pic`,
//! `guest-extint`): its ports, the command words they use (8259A datasheet,
//! "Initialization Command Words" and "Operation Command Words") and the standard
//! initialization, as Linux's `init_8259A()` does it.

use crate::port::{inb, outb};

pub const MASTER_CMD: u16 = 0x20;
pub const MASTER_DATA: u16 = 0x21;
pub const SLAVE_CMD: u16 = 0xA0;
pub const SLAVE_DATA: u16 = 0xA1;

/// ICW1: D4 = 1 (initialization), IC4 (ICW4 follows), cascade mode, edge-triggered.
pub const ICW1_EDGE: u8 = 0x11;
/// [`ICW1_EDGE`] with LTIM (D3): level-triggered inputs.
pub const ICW1_LEVEL: u8 = 0x19;
/// ICW2: the vector bases Linux uses.
pub const MASTER_VECTOR_BASE: u8 = 0x20;
pub const SLAVE_VECTOR_BASE: u8 = 0x28;
/// Master ICW3: a slave on IR2. Slave ICW3: its ID, 2.
pub const ICW3_MASTER: u8 = 1 << 2;
pub const ICW3_SLAVE: u8 = 2;
/// ICW4: 8086/8088 mode, normal EOI.
pub const ICW4_8086: u8 = 0x01;
/// OCW3: read IRR / read ISR on the next read of the command port.
pub const OCW3_READ_IRR: u8 = 0x0A;
pub const OCW3_READ_ISR: u8 = 0x0B;
/// OCW2: non-specific EOI.
pub const OCW2_EOI: u8 = 0x20;

/// ICW1 to ICW4 on the master (edge-triggered), then on the slave (`slave_icw1`:
/// [`ICW1_EDGE`] or [`ICW1_LEVEL`]): vector bases [`MASTER_VECTOR_BASE`] and
/// [`SLAVE_VECTOR_BASE`], the slave on IR2, 8086 mode. ICW1 clears each chip's mask
/// register and its IRR and ISR.
pub fn init(slave_icw1: u8) {
    outb(MASTER_CMD, ICW1_EDGE);
    outb(MASTER_DATA, MASTER_VECTOR_BASE);
    outb(MASTER_DATA, ICW3_MASTER);
    outb(MASTER_DATA, ICW4_8086);
    outb(SLAVE_CMD, slave_icw1);
    outb(SLAVE_DATA, SLAVE_VECTOR_BASE);
    outb(SLAVE_DATA, ICW3_SLAVE);
    outb(SLAVE_DATA, ICW4_8086);
}

/// The IRR of the chip at command port `cmd` (OCW3 selects it; it stays selected).
#[must_use]
pub fn irr(cmd: u16) -> u8 {
    outb(cmd, OCW3_READ_IRR);
    inb(cmd)
}

/// The ISR of the chip at command port `cmd` (OCW3 selects it; it stays selected).
#[must_use]
pub fn isr(cmd: u16) -> u8 {
    outb(cmd, OCW3_READ_ISR);
    inb(cmd)
}
