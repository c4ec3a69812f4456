//! Interrupts inside the guest: what arrived on which vCPU, when, and the helpers the
//! interrupt guests share (TSC, IF, HLT, bounded waits).
//!
//! The IDT of [`crate::exceptions`] sends NMI (vector 2) and vectors 32-255 here. The
//! handler, on the vCPU it interrupted:
//! 1. records the TSC at entry ([`last_tsc`]),
//! 2. runs the vector's hook, if one is set ([`set_hook`]),
//! 3. sends the EOI to the local APIC in whichever mode it is (xAPIC MMIO or x2APIC
//!    MSR), unless the vector is NMI or [`SPURIOUS_VECTOR`] or the hook asked not to,
//! 4. counts the interrupt ([`count`]).
//!
//! It runs with IF = 0 (interrupt gates) on the interrupted vCPU's stack.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::lapic;
use crate::smp::{cpu_index, MAX_CPUS};

/// The NMI vector.
pub const NMI_VECTOR: u8 = 2;
/// The spurious-interrupt vector the guests put in the SVR ([`lapic::enable`]); it gets
/// no EOI (SDM 11.9).
pub const SPURIOUS_VECTOR: u8 = 0xff;

/// A per-vector hook, run by the handler before the EOI. It gets the vector and
/// returns whether the handler should send the EOI (false: the hook or the test does
/// it later, e.g. to keep the vector in service). A hook may enable interrupts (STI)
/// to allow nesting, but must disable them again (CLI) before it returns.
pub type Hook = fn(u8) -> bool;

static COUNTS: [[AtomicU64; 256]; MAX_CPUS] = [const { [const { AtomicU64::new(0) }; 256] }; MAX_CPUS];
static ENTRY_TSC: [[AtomicU64; 256]; MAX_CPUS] = [const { [const { AtomicU64::new(0) }; 256] }; MAX_CPUS];
/// Hook function pointers (0: none); only values of type [`Hook`] are ever stored.
static HOOKS: [AtomicUsize; 256] = [const { AtomicUsize::new(0) }; 256];

/// Called by the IDT stubs for NMI and vectors 32-255.
pub(crate) fn dispatch(vector: u8) {
    let now = tsc();
    let cpu = cpu_index();
    let v = usize::from(vector);
    ENTRY_TSC[cpu][v].store(now, Ordering::SeqCst);
    let mut eoi = vector != NMI_VECTOR && vector != SPURIOUS_VECTOR;
    let hook = HOOKS[v].load(Ordering::SeqCst);
    if hook != 0 {
        // SAFETY: HOOKS only ever holds 0 or a `Hook` function pointer (see set_hook).
        let hook = unsafe { core::mem::transmute::<usize, Hook>(hook) };
        eoi &= hook(vector);
    }
    if eoi {
        lapic::eoi();
    }
    COUNTS[cpu][v].fetch_add(1, Ordering::SeqCst);
}

/// Sets (or with `None` removes) the hook of `vector`, for all vCPUs.
pub fn set_hook(vector: u8, hook: Option<Hook>) {
    HOOKS[usize::from(vector)].store(hook.map_or(0, |h| h as usize), Ordering::SeqCst);
}

/// How many times `vector` was taken on this vCPU.
pub fn count(vector: u8) -> u64 {
    count_on(cpu_index(), vector)
}

/// How many times `vector` was taken on vCPU `cpu` (its [`cpu_index`]).
pub fn count_on(cpu: usize, vector: u8) -> u64 {
    COUNTS[cpu][usize::from(vector)].load(Ordering::SeqCst)
}

/// TSC at the entry of the last handler of `vector` on this vCPU (0: never).
pub fn last_tsc(vector: u8) -> u64 {
    last_tsc_on(cpu_index(), vector)
}

/// TSC at the entry of the last handler of `vector` on vCPU `cpu` (0: never).
pub fn last_tsc_on(cpu: usize, vector: u8) -> u64 {
    ENTRY_TSC[cpu][usize::from(vector)].load(Ordering::SeqCst)
}

/// Interrupts of all vectors taken on this vCPU.
pub fn total() -> u64 {
    COUNTS[cpu_index()].iter().map(|c| c.load(Ordering::SeqCst)).sum()
}

/// STI.
#[inline(always)]
pub fn sti() {
    // SAFETY: the guest runs in ring 0 with an IDT for every vector.
    unsafe { core::arch::asm!("sti", options(nostack)) };
}

/// CLI.
#[inline(always)]
pub fn cli() {
    // SAFETY: the guest runs in ring 0.
    unsafe { core::arch::asm!("cli", options(nostack)) };
}

/// HLT (with whatever IF is).
#[inline(always)]
pub fn hlt() {
    // SAFETY: the guest runs in ring 0; HLT returns after the next interrupt (or at once
    // if the hypervisor does not block).
    unsafe { core::arch::asm!("hlt", options(nostack)) };
}

/// `STI; HLT`: enables interrupts and halts until one is delivered. The STI shadow
/// makes the pair atomic: an interrupt that is already pending wakes the HLT instead of
/// slipping in before it. Returns with interrupts enabled.
#[inline(always)]
pub fn sti_hlt() {
    // SAFETY: as for sti and hlt.
    unsafe { core::arch::asm!("sti", "hlt", options(nostack)) };
}

/// Whether RFLAGS.IF is set.
pub fn interrupts_enabled() -> bool {
    let flags: u64;
    // SAFETY: reads RFLAGS through the stack.
    unsafe { core::arch::asm!("pushfq", "pop {}", out(reg) flags) };
    flags & (1 << 9) != 0
}

/// Runs `f` with interrupts disabled, restoring IF afterwards.
pub fn without_interrupts<R>(f: impl FnOnce() -> R) -> R {
    let enabled = interrupts_enabled();
    cli();
    let r = f();
    if enabled {
        sti();
    }
    r
}

/// RDTSC.
#[inline(always)]
pub fn tsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDTSC has no side effects.
    unsafe { core::arch::asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

static TSC_KHZ: AtomicU64 = AtomicU64::new(0);
static BUS_KHZ: AtomicU64 = AtomicU64::new(0);

fn timing() -> (u64, u64) {
    let tsc = TSC_KHZ.load(Ordering::Relaxed);
    if tsc != 0 {
        return (tsc, BUS_KHZ.load(Ordering::Relaxed));
    }
    let leaf = hv_abi::platform::CPUID_TIMING_LEAF;
    let max = core::arch::x86_64::__cpuid(0x4000_0000).eax;
    let r = core::arch::x86_64::__cpuid(leaf);
    if max < leaf || r.eax == 0 {
        panic!("CPUID {leaf:#x} gives no TSC frequency (max hypervisor leaf {max:#x}, EAX {:#x})", r.eax);
    }
    let bus = if r.ebx == 0 { hv_abi::platform::LAPIC_BUS_HZ / 1000 } else { u64::from(r.ebx) };
    BUS_KHZ.store(bus, Ordering::Relaxed);
    TSC_KHZ.store(u64::from(r.eax), Ordering::Relaxed);
    (u64::from(r.eax), bus)
}

/// TSC frequency in kHz (CPUID 0x4000_0010 EAX, `hv_abi::platform::CPUID_TIMING_LEAF`).
pub fn tsc_khz() -> u64 {
    timing().0
}

/// LAPIC timer bus frequency in kHz (CPUID 0x4000_0010 EBX).
pub fn bus_khz() -> u64 {
    timing().1
}

/// TSC ticks in `us` microseconds.
pub fn us_to_tsc(us: u64) -> u64 {
    us * tsc_khz() / 1000
}

/// TSC ticks in `ticks` LAPIC bus clocks (rounded down).
pub fn bus_to_tsc(ticks: u64) -> u64 {
    (u128::from(ticks) * u128::from(tsc_khz()) / u128::from(bus_khz())) as u64
}

/// LAPIC bus clocks in `tsc` TSC ticks (rounded down).
pub fn tsc_to_bus(tsc: u64) -> u64 {
    (u128::from(tsc) * u128::from(bus_khz()) / u128::from(tsc_khz())) as u64
}

/// Microseconds in `ticks` TSC ticks (rounded down), for messages.
pub fn tsc_to_us(ticks: u64) -> u64 {
    ticks * 1000 / tsc_khz()
}

/// Spins until `pred` holds or `max_tsc` TSC ticks have passed; returns whether it held.
pub fn wait_for(mut pred: impl FnMut() -> bool, max_tsc: u64) -> bool {
    let start = tsc();
    loop {
        if pred() {
            return true;
        }
        if tsc().wrapping_sub(start) > max_tsc {
            return pred();
        }
        core::hint::spin_loop();
    }
}

/// Spins for `ticks` TSC ticks (interrupts are taken meanwhile if IF = 1).
pub fn delay(ticks: u64) {
    let start = tsc();
    while tsc().wrapping_sub(start) < ticks {
        core::hint::spin_loop();
    }
}

/// Spins for `us` microseconds of guest TSC time.
pub fn delay_us(us: u64) {
    delay(us_to_tsc(us));
}
