//! Port I/O for the test guests. In a guest of this hypervisor every port either
//! reaches an emulated device (the hypervisor forwards it to the service partition) or
//! is unclaimed (reads all-ones, writes ignored); no port reaches hardware and none
//! of the emulated devices does DMA, so an access can change device state (and may
//! end the partition, e.g. isa-debug-exit) but never this guest's memory. That is why
//! these wrappers are safe functions.

use core::arch::asm;

/// `IN AL, DX`.
#[must_use]
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: port I/O only (see the module documentation); no memory is touched.
    unsafe { asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags)) };
    value
}

/// `IN AX, DX`.
#[must_use]
pub fn inw(port: u16) -> u16 {
    let value: u16;
    // SAFETY: as in `inb`.
    unsafe { asm!("in ax, dx", in("dx") port, out("ax") value, options(nomem, nostack, preserves_flags)) };
    value
}

/// `IN EAX, DX`.
#[must_use]
pub fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: as in `inb`.
    unsafe { asm!("in eax, dx", in("dx") port, out("eax") value, options(nomem, nostack, preserves_flags)) };
    value
}

/// `OUT DX, AL`.
pub fn outb(port: u16, value: u8) {
    // SAFETY: as in `inb`.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags)) };
}

/// `OUT DX, AX`.
pub fn outw(port: u16, value: u16) {
    // SAFETY: as in `inb`.
    unsafe { asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags)) };
}

/// `OUT DX, EAX`.
pub fn outl(port: u16, value: u32) {
    // SAFETY: as in `inb`.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags)) };
}
