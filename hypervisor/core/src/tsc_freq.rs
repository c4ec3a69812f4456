//! Choosing the TSC frequency from what the CPU reports (CPUID 0x15/0x16) and what a
//! calibration against a reference clock (HPET, ACPI PM timer or PIT) measured, and the
//! arithmetic of those calibrations.
//!
//! CPUID is exact on real hardware, but an emulator may report a frequency its TSC
//! does not run at (Bochs reports 1497 MHz while its TSC advances once per emulated
//! instruction). A calibration is slower to obtain and has some jitter, but it measures
//! the TSC against a clock that runs at a known rate. When both exist and disagree by
//! more than [`MAX_DISAGREEMENT_PERCENT`], the calibration wins.

use core::fmt;

/// How far CPUID and the calibration may differ before the calibration is preferred.
pub const MAX_DISAGREEMENT_PERCENT: u64 = 5;
/// Used when neither source exists (documented in the log as an assumption).
pub const ASSUMED_HZ: u64 = 2_000_000_000;
/// The ACPI PM timer runs at 3.579545 MHz (ACPI 6.5 section 4.8.3.3, "Power Management
/// Timer").
pub const PM_TIMER_HZ: u64 = 3_579_545;
/// The HPET's COUNTER_CLK_PERIOD is at most 100 ns = 0x05F5E100 fs and never 0 (HPET
/// spec 1.0a section 2.3.4, General Capabilities and ID Register, bits 63:32).
pub const HPET_MAX_PERIOD_FS: u64 = 0x05F5_E100;
/// Femtoseconds per second.
const FS_PER_S: u128 = 1_000_000_000_000_000;

/// A clock that runs at a known rate, against which the TSC was measured. Listed in the
/// order of preference: the HPET is the finest and cheapest to read, the PM timer needs
/// a port read per sample, the PIT is the coarsest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferenceClock {
    Hpet,
    PmTimer,
    Pit,
}

impl fmt::Display for ReferenceClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Hpet => "HPET",
            Self::PmTimer => "ACPI PM timer",
            Self::Pit => "PIT",
        })
    }
}

/// What a calibration measured: the TSC frequency against `clock`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Calibration {
    pub clock: ReferenceClock,
    pub hz: u64,
}

/// Where the chosen frequency came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TscSource {
    /// CPUID, confirmed by a calibration against `confirmed_by` (or with nothing to
    /// compare against).
    Cpuid { confirmed_by: Option<ReferenceClock> },
    /// A calibration (no CPUID frequency).
    Calibrated(ReferenceClock),
    /// A calibration, because CPUID reported this other frequency.
    CalibrationOverridesCpuid { clock: ReferenceClock, cpuid_hz: u64 },
    /// Neither: [`ASSUMED_HZ`].
    Assumed,
}

/// The explanation after the frequency in the kernel's `tsc: N MHz (...)` line.
impl fmt::Display for TscSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpuid { confirmed_by: Some(clock) } => write!(f, "CPUID 0x15/0x16, confirmed by the {clock}"),
            Self::Cpuid { confirmed_by: None } => f.write_str("CPUID 0x15/0x16, unconfirmed: no reference clock"),
            Self::Calibrated(clock) => write!(f, "{clock} calibration; CPUID reports no frequency"),
            Self::CalibrationOverridesCpuid { clock, cpuid_hz } => write!(
                f,
                "{clock} calibration; CPUID reported {} MHz, which this TSC does not run at",
                cpuid_hz / 1_000_000
            ),
            Self::Assumed => f.write_str("assumed: no CPUID frequency and no reference clock"),
        }
    }
}

/// Picks the frequency. Values below 1 MHz count as absent.
#[must_use]
pub fn choose(cpuid_hz: Option<u64>, calibration: Option<Calibration>) -> (u64, TscSource) {
    let cpuid_hz = cpuid_hz.filter(|&hz| hz >= 1_000_000);
    let calibration = calibration.filter(|c| c.hz >= 1_000_000);
    match (cpuid_hz, calibration) {
        (Some(c), Some(Calibration { clock, hz: p }))
            if c.abs_diff(p).saturating_mul(100) > p.saturating_mul(MAX_DISAGREEMENT_PERCENT) =>
        {
            (p, TscSource::CalibrationOverridesCpuid { clock, cpuid_hz: c })
        }
        (Some(c), cal) => (c, TscSource::Cpuid { confirmed_by: cal.map(|cal| cal.clock) }),
        (None, Some(Calibration { clock, hz })) => (hz, TscSource::Calibrated(clock)),
        (None, None) => (ASSUMED_HZ, TscSource::Assumed),
    }
}

/// Ticks from `start` to `end` of a counter `bits` wide (1..=64) that wraps to 0,
/// assuming it wrapped at most once (the ACPI PM timer is 24 or 32 bits wide, ACPI 6.5
/// section 4.8.3.3; a 32-bit HPET main counter wraps too).
#[must_use]
pub fn counter_elapsed(start: u64, end: u64, bits: u32) -> u64 {
    let mask = if bits >= 64 { u64::MAX } else { (1u64 << bits) - 1 };
    end.wrapping_sub(start) & mask
}

/// The TSC frequency from `tsc_ticks` counted while a reference clock of `ref_hz`
/// advanced `ref_ticks`. `None` when nothing was measured or the result does not fit.
#[must_use]
pub fn hz_from_ticks(tsc_ticks: u64, ref_ticks: u64, ref_hz: u64) -> Option<u64> {
    if tsc_ticks == 0 || ref_ticks == 0 {
        return None;
    }
    u64::try_from(u128::from(tsc_ticks) * u128::from(ref_hz) / u128::from(ref_ticks)).ok()
}

/// The TSC frequency from `tsc_ticks` counted while the HPET main counter advanced
/// `hpet_ticks` of `period_fs` femtoseconds each. `None` for a period outside the range
/// the HPET spec allows (an absent or broken HPET reads as all-ones).
#[must_use]
pub fn hz_from_hpet(tsc_ticks: u64, hpet_ticks: u64, period_fs: u64) -> Option<u64> {
    if period_fs == 0 || period_fs > HPET_MAX_PERIOD_FS || tsc_ticks == 0 || hpet_ticks == 0 {
        return None;
    }
    let elapsed_fs = u128::from(hpet_ticks) * u128::from(period_fs);
    u64::try_from(u128::from(tsc_ticks) * FS_PER_S / elapsed_fs).ok()
}

/// HPET main counter ticks in `us` microseconds, for a period of `period_fs`.
#[must_use]
pub fn hpet_ticks_in_us(us: u64, period_fs: u64) -> u64 {
    (u128::from(us) * 1_000_000_000 / u128::from(period_fs.max(1))).try_into().unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    use ReferenceClock::{Hpet, Pit, PmTimer};

    fn cal(clock: ReferenceClock, hz: u64) -> Option<Calibration> {
        Some(Calibration { clock, hz })
    }

    #[test]
    fn cpuid_wins_when_the_calibration_agrees() {
        assert_eq!(
            choose(Some(2_400_000_000), cal(Pit, 2_410_000_000)),
            (2_400_000_000, TscSource::Cpuid { confirmed_by: Some(Pit) })
        );
        assert_eq!(
            choose(Some(2_400_000_000), cal(Hpet, 2_399_000_000)),
            (2_400_000_000, TscSource::Cpuid { confirmed_by: Some(Hpet) })
        );
        assert_eq!(choose(Some(2_400_000_000), None), (2_400_000_000, TscSource::Cpuid { confirmed_by: None }));
    }

    #[test]
    fn the_calibration_wins_when_they_disagree() {
        // Bochs: CPUID says 1497 MHz, the TSC runs at the emulator's 100 MHz.
        assert_eq!(
            choose(Some(1_497_000_000), cal(Pit, 100_100_000)),
            (100_100_000, TscSource::CalibrationOverridesCpuid { clock: Pit, cpuid_hz: 1_497_000_000 })
        );
        assert_eq!(
            choose(Some(1_497_000_000), cal(PmTimer, 100_100_000)).1,
            TscSource::CalibrationOverridesCpuid { clock: PmTimer, cpuid_hz: 1_497_000_000 }
        );
        // Just beyond 5 %.
        assert!(matches!(
            choose(Some(1_060_000_000), cal(Hpet, 1_000_000_000)).1,
            TscSource::CalibrationOverridesCpuid { clock: Hpet, .. }
        ));
        // Just within 5 %.
        assert_eq!(
            choose(Some(1_050_000_000), cal(Hpet, 1_000_000_000)).1,
            TscSource::Cpuid { confirmed_by: Some(Hpet) }
        );
    }

    #[test]
    fn missing_or_absurd_sources() {
        assert_eq!(choose(None, cal(Pit, 3_000_000_000)), (3_000_000_000, TscSource::Calibrated(Pit)));
        assert_eq!(choose(None, cal(PmTimer, 3_000_000_000)), (3_000_000_000, TscSource::Calibrated(PmTimer)));
        assert_eq!(choose(Some(5), cal(Pit, 3)), (ASSUMED_HZ, TscSource::Assumed));
        assert_eq!(choose(None, None), (ASSUMED_HZ, TscSource::Assumed));
        // A calibration below 1 MHz is no confirmation.
        assert_eq!(choose(Some(2_000_000_000), cal(Hpet, 3)).1, TscSource::Cpuid { confirmed_by: None });
        assert_eq!(choose(Some(u64::MAX), cal(Pit, u64::MAX)).1, TscSource::Cpuid { confirmed_by: Some(Pit) });
    }

    #[test]
    fn log_wording() {
        let line =
            |hz_source: (u64, TscSource)| alloc::format!("tsc: {} MHz ({})", hz_source.0 / 1_000_000, hz_source.1);
        assert_eq!(
            line(choose(Some(2_400_000_000), cal(Hpet, 2_401_000_000))),
            "tsc: 2400 MHz (CPUID 0x15/0x16, confirmed by the HPET)"
        );
        // The wording the Bochs runs and ARCHITECTURE.md quote.
        assert_eq!(
            line(choose(Some(1_497_000_000), cal(Pit, 100_000_000))),
            "tsc: 100 MHz (PIT calibration; CPUID reported 1497 MHz, which this TSC does not run at)"
        );
        assert_eq!(TscSource::Calibrated(PmTimer).to_string(), "ACPI PM timer calibration; CPUID reports no frequency");
        assert!(TscSource::Assumed.to_string().starts_with("assumed"));
    }

    #[test]
    fn counters_that_wrap() {
        // 24-bit PM timer (TMR_VAL_EXT clear): wraps from 0xFF_FFFF to 0.
        assert_eq!(counter_elapsed(0xFF_FFF0, 0x00_0010, 24), 0x20);
        assert_eq!(counter_elapsed(0x10, 0x8C03, 24), 0x8BF3);
        // Bits above the counter's width (reserved, read as 0 but never trusted) do not count.
        assert_eq!(counter_elapsed(0xFFFF_FFF0, 0x0000_0010, 24), 0x20);
        // 32-bit PM timer (TMR_VAL_EXT set).
        assert_eq!(counter_elapsed(0xFFFF_FFF0, 0x0000_0010, 32), 0x20);
        // Crossing bit 24 is no wrap for a 32-bit counter.
        assert_eq!(counter_elapsed(0x00FF_FFF0, 0x0100_0010, 32), 0x20);
        // 64-bit HPET main counter.
        assert_eq!(counter_elapsed(u64::MAX - 1, 3, 64), 5);
        assert_eq!(counter_elapsed(5, 5, 24), 0);
    }

    #[test]
    fn frequency_arithmetic() {
        // 10 ms of the PM timer (35795 ticks) while a 2.4 GHz TSC counted 24 million.
        let hz = hz_from_ticks(24_000_000, 35_795, PM_TIMER_HZ).unwrap();
        assert!(hz.abs_diff(2_400_000_000) < 100_000, "{hz}");
        assert_eq!(hz_from_ticks(0, 35_795, PM_TIMER_HZ), None);
        assert_eq!(hz_from_ticks(1, 0, PM_TIMER_HZ), None);
        assert_eq!(hz_from_ticks(u64::MAX, 1, PM_TIMER_HZ), None);
        // QEMU's HPET: 10 ns period (100 MHz); 10 ms = 1,000,000 ticks.
        assert_eq!(hpet_ticks_in_us(10_000, 10_000_000), 1_000_000);
        assert_eq!(hz_from_hpet(24_000_000, 1_000_000, 10_000_000), Some(2_400_000_000));
        // A 14.31818 MHz HPET (69,841,279 fs): 143,181 whole ticks in 10 ms.
        let hz = hz_from_hpet(30_000_000, hpet_ticks_in_us(10_000, 69_841_279), 69_841_279).unwrap();
        assert!(hz.abs_diff(3_000_000_000) < 30_000, "{hz}");
    }

    #[test]
    fn hpet_periods_outside_the_spec_are_refused() {
        assert_eq!(hz_from_hpet(1_000, 1_000, 0), None);
        assert_eq!(hz_from_hpet(1_000, 1_000, HPET_MAX_PERIOD_FS + 1), None);
        // All-ones, as an absent device reads.
        assert_eq!(hz_from_hpet(1_000, 1_000, 0xFFFF_FFFF), None);
        assert!(hz_from_hpet(1_000, 1_000, HPET_MAX_PERIOD_FS).is_some());
        assert_eq!(hz_from_hpet(0, 1_000, 10_000_000), None);
        assert_eq!(hz_from_hpet(1_000, 0, 10_000_000), None);
    }
}
