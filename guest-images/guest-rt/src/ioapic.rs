//! The I/O APIC (82093AA register interface) at `hv_abi::platform::IOAPIC_BASE`:
//! IOREGSEL at +0x00 selects a register, IOWIN at +0x10 reads or writes it, both with
//! 32-bit plain MOVs.

use crate::interrupts::without_interrupts;

/// Guest-physical (identity-mapped) base.
pub const BASE: u64 = hv_abi::platform::IOAPIC_BASE;
const IOREGSEL: u64 = BASE;
const IOWIN: u64 = BASE + 0x10;

/// Register indexes (datasheet 3.2).
pub const REG_ID: u32 = 0x00;
pub const REG_VERSION: u32 = 0x01;
pub const REG_ARBITRATION: u32 = 0x02;
/// Redirection entry `pin`: low dword at `0x10 + 2 * pin`, high dword at `+ 1`.
pub const REG_REDTBL: u32 = 0x10;

/// Redirection-entry fields (datasheet 3.2.4).
pub mod entry {
    pub const FIXED: u64 = 0b000 << 8;
    pub const LOWEST_PRIORITY: u64 = 0b001 << 8;
    pub const LOGICAL: u64 = 1 << 11;
    pub const DELIVERY_PENDING: u64 = 1 << 12;
    pub const ACTIVE_LOW: u64 = 1 << 13;
    pub const REMOTE_IRR: u64 = 1 << 14;
    pub const LEVEL: u64 = 1 << 15;
    pub const MASKED: u64 = 1 << 16;
    /// Destination (APIC ID or logical mask) in bits 63:56.
    pub const fn dest(id: u8) -> u64 {
        (id as u64) << 56
    }
}

fn mmio_write(addr: u64, value: u32) {
    // SAFETY: the I/O APIC page is identity-mapped by the boot page tables and is device
    // memory the hypervisor emulates; the write only changes the I/O APIC's state.
    unsafe {
        core::arch::asm!("mov dword ptr [{addr}], eax", addr = in(reg) addr, in("eax") value, options(nostack, preserves_flags));
    }
}

fn mmio_read(addr: u64) -> u32 {
    let value: u32;
    // SAFETY: as for mmio_write; a read has no effect on guest memory.
    unsafe {
        core::arch::asm!("mov eax, dword ptr [{addr}]", addr = in(reg) addr, out("eax") value, options(nostack, preserves_flags));
    }
    value
}

/// Reads register `index` (IOREGSEL then IOWIN, with interrupts off so that a handler
/// cannot move IOREGSEL in between).
pub fn read(index: u32) -> u32 {
    without_interrupts(|| {
        mmio_write(IOREGSEL, index);
        mmio_read(IOWIN)
    })
}

/// Writes register `index`.
pub fn write(index: u32, value: u32) {
    without_interrupts(|| {
        mmio_write(IOREGSEL, index);
        mmio_write(IOWIN, value);
    });
}

/// Redirection entry of `pin` (64 bits).
pub fn read_entry(pin: u32) -> u64 {
    let low = read(REG_REDTBL + 2 * pin);
    let high = read(REG_REDTBL + 2 * pin + 1);
    (u64::from(high) << 32) | u64::from(low)
}

/// Writes the redirection entry of `pin`: high dword (destination) first, then the low
/// dword (which holds the mask), so the entry is complete when it is unmasked.
pub fn write_entry(pin: u32, value: u64) {
    write(REG_REDTBL + 2 * pin + 1, (value >> 32) as u32);
    write(REG_REDTBL + 2 * pin, value as u32);
}

/// Drives input `pin` of this partition's I/O APIC to `level` (the `IRQ_LINE` test
/// hypercall); returns the raw hypercall result (0, or a negative `hv_abi::Error`).
pub fn irq_line(pin: u32, level: u32) -> u64 {
    crate::raw_hypercall(hv_abi::hypercall::IRQ_LINE, u64::from(pin), u64::from(level), 0, 0)
}
