//! The local APIC (Intel SDM Vol. 3 chapter 11), as a guest OS drives it: xAPIC
//! registers by 32-bit MMIO at `hv_abi::platform::LAPIC_BASE`, x2APIC registers by MSRs
//! 0x800-0x8FF. The mode-aware helpers ([`read`], [`write`], [`send_ipi`], [`eoi`], ...)
//! pick the access method from this vCPU's mode as last set through [`set_base`] /
//! [`enter_x2apic`].

use core::sync::atomic::{AtomicBool, Ordering};

use crate::interrupts::{without_interrupts, SPURIOUS_VECTOR};
use crate::msr;
use crate::smp::{cpu_index, MAX_CPUS};

/// Guest-physical (and, identity-mapped, linear) base of the xAPIC page.
pub const BASE: u64 = hv_abi::platform::LAPIC_BASE;

/// Register offsets in the xAPIC page (SDM table 11-1); the x2APIC MSR of offset `o` is
/// `0x800 + o / 16` ([`x2apic_msr`], SDM table 11-6).
pub mod reg {
    pub const ID: u32 = 0x020;
    pub const VERSION: u32 = 0x030;
    pub const TPR: u32 = 0x080;
    pub const APR: u32 = 0x090;
    pub const PPR: u32 = 0x0a0;
    pub const EOI: u32 = 0x0b0;
    pub const RRD: u32 = 0x0c0;
    pub const LDR: u32 = 0x0d0;
    pub const DFR: u32 = 0x0e0;
    pub const SVR: u32 = 0x0f0;
    pub const ISR: u32 = 0x100;
    pub const TMR: u32 = 0x180;
    pub const IRR: u32 = 0x200;
    pub const ESR: u32 = 0x280;
    pub const ICR_LOW: u32 = 0x300;
    pub const ICR_HIGH: u32 = 0x310;
    pub const LVT_TIMER: u32 = 0x320;
    pub const LVT_LINT0: u32 = 0x350;
    pub const LVT_LINT1: u32 = 0x360;
    pub const LVT_ERROR: u32 = 0x370;
    pub const TIMER_INITIAL: u32 = 0x380;
    pub const TIMER_CURRENT: u32 = 0x390;
    pub const TIMER_DIVIDE: u32 = 0x3e0;
    /// x2APIC only (MSR 0x83F, SDM 11.12.11).
    pub const SELF_IPI: u32 = 0x3f0;
}

/// MSR numbers.
pub mod msrs {
    pub const APIC_BASE: u32 = 0x1b;
    pub const TSC_DEADLINE: u32 = 0x6e0;
    pub const X2APIC_FIRST: u32 = 0x800;
    pub const X2APIC_ICR: u32 = 0x830;
    pub const X2APIC_SELF_IPI: u32 = 0x83f;
}

/// IA32_APIC_BASE bits (SDM 11.4.4, 11.12.1).
pub mod base {
    pub const BSP: u64 = 1 << 8;
    pub const EXTD: u64 = 1 << 10;
    pub const EN: u64 = 1 << 11;
}

/// ICR low-word fields (SDM 11.6.1, figure 11-12).
pub mod icr {
    pub const FIXED: u32 = 0b000 << 8;
    pub const LOWEST_PRIORITY: u32 = 0b001 << 8;
    pub const NMI: u32 = 0b100 << 8;
    pub const INIT: u32 = 0b101 << 8;
    pub const STARTUP: u32 = 0b110 << 8;
    pub const LOGICAL: u32 = 1 << 11;
    pub const DELIVERY_PENDING: u32 = 1 << 12;
    pub const ASSERT: u32 = 1 << 14;
    pub const LEVEL: u32 = 1 << 15;
    pub const SELF: u32 = 0b01 << 18;
    pub const ALL_INCLUDING_SELF: u32 = 0b10 << 18;
    pub const ALL_EXCLUDING_SELF: u32 = 0b11 << 18;
}

/// LVT fields (SDM 11.5.1, figure 11-8).
pub mod lvt {
    pub const MASKED: u32 = 1 << 16;
    pub const ONE_SHOT: u32 = 0b00 << 17;
    pub const PERIODIC: u32 = 0b01 << 17;
    pub const TSC_DEADLINE: u32 = 0b10 << 17;
}

/// Divide configuration register values (SDM 11.5.4, figure 11-10).
pub mod divide {
    pub const BY_1: u32 = 0b1011;
    pub const BY_2: u32 = 0b0000;
    pub const BY_4: u32 = 0b0001;
    pub const BY_8: u32 = 0b0010;
    pub const BY_16: u32 = 0b0011;
    pub const BY_32: u32 = 0b1000;
    pub const BY_64: u32 = 0b1001;
    pub const BY_128: u32 = 0b1010;
}

/// SVR bit 8: APIC software enable.
pub const SVR_ENABLE: u32 = 1 << 8;

/// Whether each vCPU's APIC is in x2APIC mode (as this guest last set it).
static X2APIC: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

/// The x2APIC MSR of xAPIC register offset `offset`.
pub const fn x2apic_msr(offset: u32) -> u32 {
    msrs::X2APIC_FIRST + (offset >> 4)
}

/// Whether this vCPU's APIC is in x2APIC mode.
pub fn is_x2apic() -> bool {
    X2APIC[cpu_index()].load(Ordering::SeqCst)
}

/// 32-bit MMIO read of xAPIC register `offset` (a plain `mov r32, [mem]`).
pub fn mmio_read(offset: u32) -> u32 {
    let value: u32;
    // SAFETY: the xAPIC page is identity-mapped by the boot page tables and is device
    // memory the hypervisor emulates; reading a register has no effect on guest memory.
    unsafe {
        core::arch::asm!("mov eax, dword ptr [{addr}]", addr = in(reg) BASE + u64::from(offset), out("eax") value, options(nostack, preserves_flags));
    }
    value
}

/// 32-bit MMIO write of xAPIC register `offset` (a plain `mov [mem], r32`).
pub fn mmio_write(offset: u32, value: u32) {
    // SAFETY: as for mmio_read; the write only changes the APIC's state.
    unsafe {
        core::arch::asm!("mov dword ptr [{addr}], eax", addr = in(reg) BASE + u64::from(offset), in("eax") value, options(nostack, preserves_flags));
    }
}

/// Reads register `offset` in the current mode (low 32 bits of the MSR in x2APIC mode).
pub fn read(offset: u32) -> u32 {
    if is_x2apic() {
        msr::read(x2apic_msr(offset)) as u32
    } else {
        mmio_read(offset)
    }
}

/// Writes register `offset` in the current mode.
pub fn write(offset: u32, value: u32) {
    if is_x2apic() {
        msr::write(x2apic_msr(offset), u64::from(value));
    } else {
        mmio_write(offset, value);
    }
}

/// IA32_APIC_BASE.
pub fn apic_base() -> u64 {
    msr::read(msrs::APIC_BASE)
}

/// Writes IA32_APIC_BASE (a #GP on purpose must be announced by the caller; the WRMSR
/// is the first instruction that can fault), then records the mode it reads back.
pub fn set_base(value: u64) {
    msr::write(msrs::APIC_BASE, value);
    sync_mode();
}

/// Records this vCPU's APIC mode from IA32_APIC_BASE (EXTD).
pub fn sync_mode() {
    let x2 = apic_base() & base::EXTD != 0;
    X2APIC[cpu_index()].store(x2, Ordering::SeqCst);
}

/// Switches this vCPU's APIC from xAPIC to x2APIC mode (EN | EXTD).
pub fn enter_x2apic() {
    set_base(apic_base() | base::EN | base::EXTD);
}

/// This APIC's ID: bits 31:24 of the xAPIC ID register, or the 32-bit x2APIC ID.
pub fn id() -> u32 {
    if is_x2apic() {
        msr::read(x2apic_msr(reg::ID)) as u32
    } else {
        mmio_read(reg::ID) >> 24
    }
}

/// Software-enables the APIC (SVR bit 8, spurious vector [`SPURIOUS_VECTOR`]) and
/// accepts every priority (TPR = 0).
pub fn enable() {
    write(reg::TPR, 0);
    write(reg::SVR, SVR_ENABLE | u32::from(SPURIOUS_VECTOR));
}

/// End of interrupt: xAPIC EOI register write, or WRMSR 0x80B with 0.
pub fn eoi() {
    write(reg::EOI, 0);
}

/// Sends an IPI: `low` is the ICR low word (vector, delivery mode, destination mode,
/// level, trigger, shorthand), `dest` the destination (APIC ID or logical mask; 8 bits in
/// xAPIC mode). In xAPIC mode it waits for the previous IPI to leave (delivery status)
/// and writes ICR high then low with interrupts off, so a handler on this vCPU cannot
/// slip an IPI of its own in between.
pub fn send_ipi(dest: u32, low: u32) {
    without_interrupts(|| {
        if is_x2apic() {
            msr::write(msrs::X2APIC_ICR, (u64::from(dest) << 32) | u64::from(low));
        } else {
            wait_icr_idle();
            mmio_write(reg::ICR_HIGH, dest << 24);
            mmio_write(reg::ICR_LOW, low);
        }
    });
}

/// Waits (bounded) until the xAPIC ICR delivery status shows idle.
pub fn wait_icr_idle() {
    let mut spins = 0u32;
    while mmio_read(reg::ICR_LOW) & icr::DELIVERY_PENDING != 0 && spins < 1_000_000 {
        spins += 1;
        core::hint::spin_loop();
    }
}

/// A fixed, edge-triggered IPI of `vector` to this vCPU: the ICR "self" shorthand in
/// xAPIC mode, the SELF IPI MSR in x2APIC mode.
pub fn self_ipi(vector: u8) {
    if is_x2apic() {
        msr::write(msrs::X2APIC_SELF_IPI, u64::from(vector));
    } else {
        send_ipi(0, icr::SELF | icr::ASSERT | icr::FIXED | u32::from(vector));
    }
}

fn vector_bit(first: u32, vector: u8) -> bool {
    let v = u32::from(vector);
    read(first + (v / 32) * 0x10) & (1 << (v % 32)) != 0
}

/// Whether `vector` is set in the IRR (requested, not yet delivered).
pub fn irr(vector: u8) -> bool {
    vector_bit(reg::IRR, vector)
}

/// Whether `vector` is set in the ISR (delivered, not yet EOIed).
pub fn isr(vector: u8) -> bool {
    vector_bit(reg::ISR, vector)
}

/// Whether `vector` is set in the TMR (accepted as level-triggered).
pub fn tmr(vector: u8) -> bool {
    vector_bit(reg::TMR, vector)
}

/// Programs the timer: LVT entry `lvt_entry` (vector | mode | mask), divide
/// configuration `divide`, then the initial count `initial` (which starts it; 0 stops
/// it).
pub fn timer(lvt_entry: u32, divide: u32, initial: u32) {
    write(reg::TIMER_DIVIDE, divide);
    write(reg::LVT_TIMER, lvt_entry);
    write(reg::TIMER_INITIAL, initial);
}

/// The divide value of a divide configuration register value (SDM figure 11-10).
pub const fn divide_value(dcr: u32) -> u32 {
    let code = (dcr & 3) | ((dcr >> 1) & 4);
    if code == 7 {
        1
    } else {
        2 << code
    }
}
