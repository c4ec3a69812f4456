//! Port I/O.
//!
//! Port accesses are `unsafe` because a write can reprogram any legacy device. These
//! wrappers are `pub(crate)` and used only by the drivers that own the port in
//! question (serial, PIT, ACPI PM1, CMOS RTC, emulator exit devices).

use x86_64::instructions::port::Port;

/// Reads a byte from `port`.
///
/// # Safety
/// The caller owns the device at `port` and a read has no side effect it does not expect.
pub(crate) unsafe fn inb(port: u16) -> u8 {
    // SAFETY: forwarded to the caller's contract.
    unsafe { Port::<u8>::new(port).read() }
}

/// Writes a byte to `port`.
///
/// # Safety
/// The caller owns the device at `port` and knows what the write does.
pub(crate) unsafe fn outb(port: u16, value: u8) {
    // SAFETY: forwarded to the caller's contract.
    unsafe { Port::<u8>::new(port).write(value) }
}

/// Writes a 16-bit word to `port`.
///
/// # Safety
/// As for [`outb`].
pub(crate) unsafe fn outw(port: u16, value: u16) {
    // SAFETY: forwarded to the caller's contract.
    unsafe { Port::<u16>::new(port).write(value) }
}

/// Writes a 32-bit word to `port`.
///
/// # Safety
/// As for [`outb`].
pub(crate) unsafe fn outl(port: u16, value: u32) {
    // SAFETY: forwarded to the caller's contract.
    unsafe { Port::<u32>::new(port).write(value) }
}
