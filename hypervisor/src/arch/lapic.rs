//! The local APIC of the current CPU, in xAPIC (MMIO) or x2APIC (MSR) mode.
//!
//! The hypervisor switches every CPU to x2APIC mode when the CPU supports it (no MMIO
//! mapping, no delivery-status polling); otherwise it uses the xAPIC through an
//! uncached mapping of the APIC page. SDM Vol. 3 chapter 11.

use spin::Once;

use hv_core::apic::{DeliveryMode, Destination, Icr};

use crate::arch::idt::{SPURIOUS_VECTOR, TIMER_VECTOR};
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
/// LVT mask bit (SDM 11.5.1).
const LVT_MASKED: u32 = 1 << 16;
/// SVR bit 8: APIC software enable.
const SVR_ENABLE: u32 = 1 << 8;
/// ICR bit 12 (xAPIC only): delivery status, 1 while the IPI is being sent.
const ICR_SEND_PENDING: u32 = 1 << 12;
/// x2APIC MSR of the ICR (SDM table 11-6).
const X2APIC_ICR_MSR: u32 = 0x830;
/// Timer registers (SDM 11.5.4): LVT timer, initial count, current count, divide
/// configuration.
const REG_LVT_TIMER: u32 = 0x320;
const REG_TIMER_INITIAL: u32 = 0x380;
const REG_TIMER_CURRENT: u32 = 0x390;
const REG_TIMER_DIVIDE: u32 = 0x3e0;
/// LVT timer mode bits 18:17 = 10b: TSC-deadline (SDM 11.5.4.1).
const LVT_TIMER_TSC_DEADLINE: u32 = 0b10 << 17;
/// Divide configuration 1011b: divide by 1 (SDM figure 11-10).
const DIVIDE_BY_1: u32 = 0b1011;
/// IA32_TSC_DEADLINE (SDM 11.5.4.1).
const IA32_TSC_DEADLINE: u32 = 0x6e0;

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
        // SAFETY: in x2APIC mode the APIC registers are MSRs 0x800 + reg/16; callers read
        // only ID, SVR, ICR and the timer's current count, which have no side effects.
        Mode::X2Apic => unsafe { x86_64::registers::model_specific::Msr::new(0x800 + reg / 16).read() as u32 },
        // SAFETY: `mmio` maps the APIC page uncached; `reg` is a valid register offset.
        Mode::XApic { mmio } => unsafe { ((mmio + u64::from(reg)) as *const u32).read_volatile() },
    }
}

fn write(reg: u32, value: u32) {
    match mode() {
        // SAFETY: x2APIC register MSR; callers write SVR, EOI and the timer registers,
        // none of which touches memory.
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

/// How the host timer is driven: TSC-deadline mode when the CPU has it, otherwise a
/// one-shot count at the LAPIC timer frequency measured against the TSC at boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerKind {
    TscDeadline,
    OneShot { lapic_hz: u64 },
}

static TIMER: Once<TimerKind> = Once::new();

/// Chooses the host timer on the BSP (measuring the one-shot rate over 1 ms when there
/// is no TSC-deadline mode) and programs this CPU's LVT timer.
pub fn init_timer_bsp(tsc_deadline: bool) -> TimerKind {
    let kind = *TIMER.call_once(|| {
        if tsc_deadline {
            return TimerKind::TscDeadline;
        }
        write(REG_LVT_TIMER, LVT_MASKED | u32::from(TIMER_VECTOR));
        write(REG_TIMER_DIVIDE, DIVIDE_BY_1);
        write(REG_TIMER_INITIAL, u32::MAX);
        crate::arch::tsc::delay_us(1000);
        let elapsed = u32::MAX - read(REG_TIMER_CURRENT);
        write(REG_TIMER_INITIAL, 0);
        TimerKind::OneShot { lapic_hz: u64::from(elapsed).max(1) * 1000 }
    });
    init_timer_this_cpu();
    kind
}

/// Programs this CPU's LVT timer for the host timer (disarmed).
pub fn init_timer_this_cpu() {
    match TIMER.get() {
        Some(TimerKind::TscDeadline) => {
            write(REG_LVT_TIMER, LVT_TIMER_TSC_DEADLINE | u32::from(TIMER_VECTOR));
            // SAFETY: IA32_TSC_DEADLINE exists when CPUID reports TSC-deadline mode
            // (checked when the kind was chosen); 0 disarms the timer.
            unsafe { x86_64::registers::model_specific::Msr::new(IA32_TSC_DEADLINE).write(0) };
        }
        Some(TimerKind::OneShot { .. }) => {
            write(REG_TIMER_DIVIDE, DIVIDE_BY_1);
            write(REG_LVT_TIMER, u32::from(TIMER_VECTOR));
            write(REG_TIMER_INITIAL, 0);
        }
        None => {}
    }
}

/// Arms this CPU's host timer to interrupt (vector `TIMER_VECTOR`) at TSC `deadline`,
/// or disarms it (`None`). A deadline in the past fires at once.
pub fn arm_timer(deadline: Option<u64>) {
    match TIMER.get() {
        Some(TimerKind::TscDeadline) => {
            // A deadline of 0 would disarm: a past deadline is written as 1.
            let value = deadline.map_or(0, |d| d.max(1));
            // SAFETY: see `init_timer_this_cpu`.
            unsafe { x86_64::registers::model_specific::Msr::new(IA32_TSC_DEADLINE).write(value) };
        }
        Some(TimerKind::OneShot { lapic_hz }) => {
            let count = deadline.map_or(0, |d| {
                let ticks = d.saturating_sub(crate::arch::tsc::now());
                let hz = crate::arch::tsc::hz().max(1);
                let count = u128::from(ticks) * u128::from(*lapic_hz) / u128::from(hz);
                u32::try_from(count).unwrap_or(u32::MAX).max(1)
            });
            write(REG_TIMER_INITIAL, count);
        }
        None => {}
    }
}
