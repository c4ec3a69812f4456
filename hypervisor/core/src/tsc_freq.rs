//! Choosing the TSC frequency from what the CPU reports (CPUID 0x15/0x16) and what a
//! calibration against the PIT measured.
//!
//! CPUID is exact on real hardware, but an emulator may report a frequency its TSC
//! does not run at (Bochs reports 1497 MHz while its TSC advances once per emulated
//! instruction). A calibration is slower to obtain and has some jitter, but it measures
//! the TSC against a clock that runs at a known rate. When both exist and disagree by
//! more than [`MAX_DISAGREEMENT_PERCENT`], the calibration wins.

/// How far CPUID and the calibration may differ before the calibration is preferred.
pub const MAX_DISAGREEMENT_PERCENT: u64 = 5;
/// Used when neither source exists (documented in the log as an assumption).
pub const ASSUMED_HZ: u64 = 2_000_000_000;

/// Where the chosen frequency came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TscSource {
    /// CPUID, confirmed by the calibration or with nothing to compare against.
    Cpuid,
    /// The PIT calibration (no CPUID frequency).
    Pit,
    /// The PIT calibration, because CPUID reported this other frequency.
    PitOverridesCpuid { cpuid_hz: u64 },
    /// Neither: [`ASSUMED_HZ`].
    Assumed,
}

/// Picks the frequency. Values below 1 MHz count as absent.
#[must_use]
pub fn choose(cpuid_hz: Option<u64>, pit_hz: Option<u64>) -> (u64, TscSource) {
    let cpuid_hz = cpuid_hz.filter(|&hz| hz >= 1_000_000);
    let pit_hz = pit_hz.filter(|&hz| hz >= 1_000_000);
    match (cpuid_hz, pit_hz) {
        (Some(c), Some(p)) if c.abs_diff(p).saturating_mul(100) > p.saturating_mul(MAX_DISAGREEMENT_PERCENT) => {
            (p, TscSource::PitOverridesCpuid { cpuid_hz: c })
        }
        (Some(c), _) => (c, TscSource::Cpuid),
        (None, Some(p)) => (p, TscSource::Pit),
        (None, None) => (ASSUMED_HZ, TscSource::Assumed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuid_wins_when_the_calibration_agrees() {
        assert_eq!(choose(Some(2_400_000_000), Some(2_410_000_000)), (2_400_000_000, TscSource::Cpuid));
        assert_eq!(choose(Some(2_400_000_000), None), (2_400_000_000, TscSource::Cpuid));
    }

    #[test]
    fn the_calibration_wins_when_they_disagree() {
        // Bochs: CPUID says 1497 MHz, the TSC runs at the emulator's 100 MHz.
        assert_eq!(
            choose(Some(1_497_000_000), Some(100_100_000)),
            (100_100_000, TscSource::PitOverridesCpuid { cpuid_hz: 1_497_000_000 })
        );
        // Just beyond 5 %.
        assert!(matches!(choose(Some(1_060_000_000), Some(1_000_000_000)).1, TscSource::PitOverridesCpuid { .. }));
        // Just within 5 %.
        assert_eq!(choose(Some(1_050_000_000), Some(1_000_000_000)).1, TscSource::Cpuid);
    }

    #[test]
    fn missing_or_absurd_sources() {
        assert_eq!(choose(None, Some(3_000_000_000)), (3_000_000_000, TscSource::Pit));
        assert_eq!(choose(Some(5), Some(3)), (ASSUMED_HZ, TscSource::Assumed));
        assert_eq!(choose(None, None), (ASSUMED_HZ, TscSource::Assumed));
        assert_eq!(choose(Some(u64::MAX), Some(u64::MAX)).1, TscSource::Cpuid);
    }
}
