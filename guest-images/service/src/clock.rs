//! Device time: [`Nanos`] from the TSC, counted from the service partition's start
//! (the first [`init`]).
//!
//! The TSC frequency comes from the hypervisor's timing leaf
//! (`hv_abi::platform::CPUID_TIMING_LEAF`, EAX = TSC kHz), read directly so that a
//! missing leaf cannot panic the service partition: it then assumes 1 GHz and says so.
//!
//! **Cost.** [`now`] runs on every forwarded access, so it converts with one 64x64-bit
//! multiplication and a shift: nanoseconds = ticks * [`NS_PER_TICK_FP`] >> 32, the
//! factor computed once by [`init`] (rounded down; its error is below 2^-32 ns per tick,
//! under a millisecond a month). [`to_tsc`] inverts that exactly (the first TSC value at
//! which [`now`] reaches a time), with a division, for wake-up deadlines only.

use core::sync::atomic::{AtomicU64, Ordering};

use guest_rt::interrupts::tsc;
use guest_rt::println;
use hv_abi::platform::CPUID_TIMING_LEAF;
use hv_devices::Nanos;

/// The frequency assumed when the timing leaf is missing.
const FALLBACK_KHZ: u64 = 1_000_000;
/// Fraction bits of [`NS_PER_TICK_FP`].
const SHIFT: u32 = 32;

/// Nanoseconds per TSC tick in 32.32 fixed point (rounded down; never 0). Until
/// [`init`], the fallback's: 1 ns per tick.
static NS_PER_TICK_FP: AtomicU64 = AtomicU64::new(1 << SHIFT);
/// The TSC at time 0, set by the first [`init`] (0 before it).
static BASE: AtomicU64 = AtomicU64::new(0);

/// The 32.32 fixed-point nanoseconds per tick of a `khz` kHz TSC (`khz` > 0).
fn ns_per_tick_fp(khz: u64) -> u64 {
    let fp = (1_000_000u128 << SHIFT) / u128::from(khz.max(1));
    u64::try_from(fp).unwrap_or(u64::MAX).max(1)
}

/// Reads the TSC frequency; `report` prints a line when the fallback is used. The first
/// call (of any vCPU) starts device time.
pub fn init(report: bool) {
    // Only the first call sets it; the others find it set.
    let _ = BASE.compare_exchange(0, tsc().max(1), Ordering::AcqRel, Ordering::Acquire);
    let max = core::arch::x86_64::__cpuid(0x4000_0000).eax;
    let khz = if max >= CPUID_TIMING_LEAF { u64::from(core::arch::x86_64::__cpuid(CPUID_TIMING_LEAF).eax) } else { 0 };
    if khz == 0 && report {
        println!("service: CPUID {CPUID_TIMING_LEAF:#x} gives no TSC frequency; device time assumes 1 GHz");
    }
    NS_PER_TICK_FP.store(ns_per_tick_fp(if khz == 0 { FALLBACK_KHZ } else { khz }), Ordering::Relaxed);
}

/// The device time of TSC value `t`, `base` being the TSC at time 0.
#[inline]
fn nanos_at(t: u64, base: u64) -> Nanos {
    let fp = NS_PER_TICK_FP.load(Ordering::Relaxed);
    let nanos = (u128::from(t.saturating_sub(base)) * u128::from(fp)) >> SHIFT;
    u64::try_from(nanos).unwrap_or(u64::MAX)
}

/// Nanoseconds since the first [`init`]. The service vCPUs run on different physical
/// CPUs whose TSCs may differ slightly: a reading below the base counts as 0, and each
/// board keeps its own time from going back.
#[inline]
pub fn now() -> Nanos {
    nanos_at(tsc(), BASE.load(Ordering::Acquire))
}

/// The current TSC, for cheap "is it time yet" checks against [`to_tsc`] values.
#[inline]
pub fn tsc_now() -> u64 {
    tsc()
}

/// The first TSC value at which [`now`] reaches `nanos` (saturating), for wake-up
/// deadlines.
pub fn to_tsc(nanos: Nanos) -> u64 {
    let base = BASE.load(Ordering::Acquire);
    let fp = u128::from(NS_PER_TICK_FP.load(Ordering::Relaxed).max(1));
    // The least `ticks` with (ticks * fp) >> SHIFT >= nanos: ceil(nanos << SHIFT / fp).
    let ticks = (u128::from(nanos) << SHIFT).div_ceil(fp);
    base.saturating_add(u64::try_from(ticks).unwrap_or(u64::MAX)).max(1)
}
