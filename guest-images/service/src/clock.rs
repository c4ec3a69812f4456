//! Device time: [`Nanos`] from the TSC, counted from the first request the service
//! partition handles (`tsc * 1_000_000 / tsc_khz`, in 128-bit arithmetic).
//!
//! The TSC frequency comes from the hypervisor's timing leaf
//! (`hv_abi::platform::CPUID_TIMING_LEAF`, EAX = TSC kHz), read directly so that a
//! missing leaf cannot panic the service partition: it then assumes 1 GHz and says so.

use core::sync::atomic::{AtomicU64, Ordering};

use guest_rt::interrupts::tsc;
use guest_rt::println;
use hv_abi::platform::CPUID_TIMING_LEAF;
use hv_devices::Nanos;

/// The frequency assumed when the timing leaf is missing.
const FALLBACK_KHZ: u64 = 1_000_000;

/// TSC kHz (0 until [`init`]).
static TSC_KHZ: AtomicU64 = AtomicU64::new(0);
/// The TSC at the first request (0: none yet).
static BASE: AtomicU64 = AtomicU64::new(0);

/// Reads the TSC frequency; `report` prints a line when the fallback is used.
pub fn init(report: bool) {
    let max = core::arch::x86_64::__cpuid(0x4000_0000).eax;
    let khz = if max >= CPUID_TIMING_LEAF { u64::from(core::arch::x86_64::__cpuid(CPUID_TIMING_LEAF).eax) } else { 0 };
    if khz == 0 && report {
        println!("service: CPUID {CPUID_TIMING_LEAF:#x} gives no TSC frequency; device time assumes 1 GHz");
    }
    TSC_KHZ.store(if khz == 0 { FALLBACK_KHZ } else { khz }, Ordering::Relaxed);
}

/// Nanoseconds since the first call. The service vCPUs run on different physical CPUs
/// whose TSCs may differ slightly: a reading below the base counts as 0, and each board
/// keeps its own time from going back.
pub fn now() -> Nanos {
    let t = tsc().max(1);
    let base = match BASE.compare_exchange(0, t, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => t,
        Err(base) => base,
    };
    let khz = match TSC_KHZ.load(Ordering::Relaxed) {
        0 => FALLBACK_KHZ,
        khz => khz,
    };
    let nanos = u128::from(t.saturating_sub(base)) * 1_000_000 / u128::from(khz);
    u64::try_from(nanos).unwrap_or(u64::MAX)
}

/// The TSC value at which [`now`] reaches `nanos` (saturating), for wake-up deadlines.
pub fn to_tsc(nanos: Nanos) -> u64 {
    let base = BASE.load(Ordering::Acquire);
    let khz = match TSC_KHZ.load(Ordering::Relaxed) {
        0 => FALLBACK_KHZ,
        khz => khz,
    };
    // Round up, so that the deadline is never before the event.
    let ticks = (u128::from(nanos) * u128::from(khz)).div_ceil(1_000_000);
    base.saturating_add(u64::try_from(ticks).unwrap_or(u64::MAX)).max(1)
}
