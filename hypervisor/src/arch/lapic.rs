//! The local APIC of the current CPU, in xAPIC (MMIO) or x2APIC (MSR) mode.
//!
//! The hypervisor switches every CPU to x2APIC mode when the CPU supports it (no MMIO
//! mapping, no delivery-status polling); otherwise it uses the xAPIC through an
//! uncached mapping of the APIC page. SDM Vol. 3 chapter 11.

use spin::Once;

use hv_core::apic::{DeliveryMode, Destination, Icr};

use crate::arch::idt::SPURIOUS_VECTOR;
use crate::arch::msr::{self, Msr};
use crate::mm::stacks;

/// IA32_APIC_BASE bits (SDM 11.4.4): global enable, x2APIC enable, base address.
const APIC_BASE_ENABLE: u64 = 1 << 11;
const APIC_BASE_X2APIC: u64 = 1 << 10;
const APIC_BASE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Register offsets in the xAPIC page; the x2APIC MSR is 0x800 + offset/16 (SDM 11.12.1.2).
const REG_ID: u32 = 0x20;
const REG_EOI: u32 = 0xb0;
const REG_SVR: u32 = 0xf0;
const REG_ICR_LOW: u32 = 0x300;
const REG_ICR_HIGH: u32 = 0x310;
/// SVR bit 8: APIC software enable.
const SVR_ENABLE: u32 = 1 << 8;
/// ICR bit 12 (xAPIC only): delivery status, 1 while the IPI is being sent.
const ICR_SEND_PENDING: u32 = 1 << 12;
/// x2APIC MSR of the ICR (SDM table 11-6).
const X2APIC_ICR_MSR: u32 = 0x830;

/// How the APICs are driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    X2Apic,
    /// xAPIC registers at this (uncached) virtual address.
    XApic {
        mmio: u64,
    },
}

static MODE: Once<Mode> = Once::new();

/// Chooses the mode on the BSP and maps the xAPIC page when needed.
pub fn init_bsp(x2apic_supported: bool) -> Result<Mode, stacks::StackError> {
    let mode = if x2apic_supported {
        Mode::X2Apic
    } else {
        // SAFETY: IA32_APIC_BASE exists on every CPU with an APIC (all x86_64 CPUs).
        let base = unsafe { msr::read(Msr::ApicBase) } & APIC_BASE_ADDR_MASK;
        Mode::XApic { mmio: stacks::map_device(base, 4096)? }
    };
    MODE.call_once(|| mode);
    enable_this_cpu();
    Ok(mode)
}

fn mode() -> Mode {
    *MODE.get().unwrap_or(&Mode::X2Apic)
}

/// Enables the current CPU's APIC in the chosen mode, with the spurious vector set.
pub fn enable_this_cpu() {
    // SAFETY: IA32_APIC_BASE exists; setting the enable bits keeps the base address.
    // Going xAPIC -> x2APIC with EN already set is a legal transition (SDM 11.12.5).
    unsafe {
        let base = msr::read(Msr::ApicBase);
        let want = match mode() {
            Mode::X2Apic => base | APIC_BASE_ENABLE | APIC_BASE_X2APIC,
            Mode::XApic { .. } => base | APIC_BASE_ENABLE,
        };
        if want != base {
            msr::write(Msr::ApicBase, want);
        }
    }
    write(REG_SVR, SVR_ENABLE | u32::from(SPURIOUS_VECTOR));
}

fn read(reg: u32) -> u32 {
    match mode() {
        // SAFETY: in x2APIC mode the APIC registers are MSRs 0x800 + reg/16; reading
        // the ID/SVR registers has no side effect.
        Mode::X2Apic => unsafe { x86_64::registers::model_specific::Msr::new(0x800 + reg / 16).read() as u32 },
        // SAFETY: `mmio` maps the APIC page uncached; `reg` is a valid register offset.
        Mode::XApic { mmio } => unsafe { ((mmio + u64::from(reg)) as *const u32).read_volatile() },
    }
}

fn write(reg: u32, value: u32) {
    match mode() {
        // SAFETY: x2APIC register MSR; callers write only SVR and EOI this way.
        Mode::X2Apic => unsafe {
            x86_64::registers::model_specific::Msr::new(0x800 + reg / 16).write(u64::from(value))
        },
        // SAFETY: as in `read`; the xAPIC page accepts 32-bit writes to its registers.
        Mode::XApic { mmio } => unsafe { ((mmio + u64::from(reg)) as *mut u32).write_volatile(value) },
    }
}

/// This CPU's APIC ID (32-bit x2APIC ID, or the 8-bit xAPIC ID).
#[must_use]
pub fn id() -> u32 {
    match mode() {
        Mode::X2Apic => read(REG_ID),
        Mode::XApic { .. } => read(REG_ID) >> 24,
    }
}

/// Sends an IPI and waits until the local APIC has accepted it.
pub fn send_ipi(mode_: DeliveryMode, vector: u8, dest: Destination) {
    let icr = Icr::new(mode_, vector, dest);
    match mode() {
        // SAFETY: MSR 0x830 is the x2APIC ICR; the value was encoded per SDM 11.12.9.
        Mode::X2Apic => unsafe { x86_64::registers::model_specific::Msr::new(X2APIC_ICR_MSR).write(icr.x2apic()) },
        Mode::XApic { .. } => {
            let (high, low) = icr.xapic_parts();
            write(REG_ICR_HIGH, high);
            write(REG_ICR_LOW, low);
            let mut spins = 0u32;
            while read(REG_ICR_LOW) & ICR_SEND_PENDING != 0 && spins < 1_000_000 {
                spins += 1;
                core::hint::spin_loop();
            }
        }
    }
}

/// Signals the end of the interrupt being handled (SDM 11.8.5).
pub fn end_of_interrupt() {
    write(REG_EOI, 0);
}
