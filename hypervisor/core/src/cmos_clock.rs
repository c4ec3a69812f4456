//! The machine's wall-clock time from the registers of its MC146818-compatible CMOS
//! real-time clock, as Unix seconds: the pure half of `hypervisor/src/arch/cmos.rs`,
//! which reads the registers. The service partition's guest RTCs start from this time
//! (`SYSTEM_INFO(WALL_CLOCK_SECONDS)`), so a guest sees the host's date.
//!
//! Register layout (MC146818A datasheet, "Address Map"; the same in every PC chipset's
//! RTC, e.g. Intel PCH datasheets, "RTC Indexed Registers"): 0x00 seconds, 0x02 minutes,
//! 0x04 hours, 0x07 day of month, 0x08 month, 0x09 year (two digits), status register A
//! 0x0A (bit 7: update in progress), B 0x0B (bit 2 DM: binary rather than BCD; bit 1
//! 24/12: 24-hour mode), and on PCs the century at 0x32 (the ACPI FADT's CENTURY field
//! names it; its absence is common, and then the century is taken as 20).
//!
//! The clock is taken as UTC, as Linux's and Xen's default on machines that boot
//! through UEFI (UEFI's `GetTime` reports the time zone separately; a machine whose RTC
//! keeps local time shows that local time as UTC).

/// Status register B, DM: the time and date registers are binary, not BCD.
pub const STATUS_B_BINARY: u8 = 1 << 2;
/// Status register B, 24/12: 24-hour mode (else 12-hour, with bit 7 of hours = PM).
pub const STATUS_B_24_HOUR: u8 = 1 << 1;
/// Status register A, UIP: an update is in progress; the time registers may be changing.
pub const STATUS_A_UPDATE_IN_PROGRESS: u8 = 1 << 7;

/// CMOS register indexes (see the module documentation).
pub mod index {
    pub const SECONDS: u8 = 0x00;
    pub const MINUTES: u8 = 0x02;
    pub const HOURS: u8 = 0x04;
    pub const DAY_OF_MONTH: u8 = 0x07;
    pub const MONTH: u8 = 0x08;
    pub const YEAR: u8 = 0x09;
    pub const STATUS_A: u8 = 0x0A;
    pub const STATUS_B: u8 = 0x0B;
    pub const CENTURY: u8 = 0x32;
}

/// The raw time and date registers of one consistent read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CmosTime {
    pub seconds: u8,
    pub minutes: u8,
    pub hours: u8,
    pub day: u8,
    pub month: u8,
    pub year: u8,
    /// The century register (0x32), in the same encoding as the others.
    pub century: u8,
    pub status_b: u8,
}

/// The indexes a reader fetches, in the order of [`CmosTime::from_registers`]'s array.
pub const TIME_REGISTERS: [u8; 8] = [
    index::SECONDS,
    index::MINUTES,
    index::HOURS,
    index::DAY_OF_MONTH,
    index::MONTH,
    index::YEAR,
    index::CENTURY,
    index::STATUS_B,
];

impl CmosTime {
    /// The registers of [`TIME_REGISTERS`], in that order.
    #[must_use]
    pub const fn from_registers(r: [u8; 8]) -> Self {
        Self {
            seconds: r[0],
            minutes: r[1],
            hours: r[2],
            day: r[3],
            month: r[4],
            year: r[5],
            century: r[6],
            status_b: r[7],
        }
    }

    /// Unix seconds of this time (taken as UTC), or `None` when a register holds what no
    /// clock shows (a missing RTC reads all-ones; a dead battery leaves garbage).
    #[must_use]
    pub fn unix_seconds(&self) -> Option<u64> {
        let binary = self.status_b & STATUS_B_BINARY != 0;
        let decode = |v: u8| if binary { Some(v) } else { from_bcd(v) };
        let seconds = decode(self.seconds).filter(|&s| s < 60)?;
        let minutes = decode(self.minutes).filter(|&m| m < 60)?;
        let hours = if self.status_b & STATUS_B_24_HOUR != 0 {
            decode(self.hours).filter(|&h| h < 24)?
        } else {
            // 12-hour mode: 12 AM is midnight, 12 PM noon; bit 7 marks PM.
            let pm = self.hours & 0x80 != 0;
            let h = decode(self.hours & 0x7F).filter(|h| (1..=12).contains(h))?;
            (h % 12) + if pm { 12 } else { 0 }
        };
        let month = decode(self.month).filter(|m| (1..=12).contains(m))?;
        let year_in_century = decode(self.year).filter(|&y| y < 100)?;
        let century = decode(self.century).filter(|c| (19..=21).contains(c)).unwrap_or(20);
        let year = u32::from(century) * 100 + u32::from(year_in_century);
        let day = decode(self.day).filter(|&d| d >= 1 && u32::from(d) <= days_in_month(year, month))?;
        let days = days_since_epoch(year, month, day)?;
        Some(days * 86_400 + u64::from(hours) * 3600 + u64::from(minutes) * 60 + u64::from(seconds))
    }
}

/// A packed-BCD byte's value, or `None` if a digit is above 9.
const fn from_bcd(v: u8) -> Option<u8> {
    let (hi, lo) = (v >> 4, v & 0x0F);
    if hi > 9 || lo > 9 {
        None
    } else {
        Some(hi * 10 + lo)
    }
}

const fn is_leap(year: u32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

const fn days_in_month(year: u32, month: u8) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to `year`-`month`-`day` (the proleptic Gregorian calendar;
/// `None` before 1970).
fn days_since_epoch(year: u32, month: u8, day: u8) -> Option<u64> {
    if year < 1970 {
        return None;
    }
    let years: u64 = (1970..year).map(|y| if is_leap(y) { 366 } else { 365 }).sum();
    let months: u64 = (1..month).map(|m| u64::from(days_in_month(year, m))).sum();
    Some(years + months + u64::from(day) - 1)
}

/// A UTC date and time, for log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcDateTime {
    pub year: u32,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

impl UtcDateTime {
    /// The date and time of Unix second `seconds`.
    #[must_use]
    pub fn from_unix_seconds(seconds: u64) -> Self {
        let (year, month, day) = civil_from_days(seconds / 86_400);
        let s = (seconds % 86_400) as u32;
        Self { year, month, day, hour: s / 3600, minute: s / 60 % 60, second: s % 60 }
    }
}

impl core::fmt::Display for UtcDateTime {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

/// (year, month, day) of day `z` after 1970-01-01: the era-based day count of the
/// proleptic Gregorian calendar (400-year eras of 146,097 days, years starting in
/// March so that the leap day comes last), computed independently of
/// [`days_since_epoch`], which the tests check it against.
fn civil_from_days(z: u64) -> (u32, u32, u32) {
    let z = z + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = z / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (u32::try_from(year).unwrap_or(u32::MAX), month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BCD_24H: u8 = STATUS_B_24_HOUR;

    fn bcd(seconds: u8, minutes: u8, hours: u8, day: u8, month: u8, year: u8, century: u8) -> CmosTime {
        CmosTime { seconds, minutes, hours, day, month, year, century, status_b: BCD_24H }
    }

    #[test]
    fn bcd_24_hour_dates() {
        // 2026-01-01T00:00:00Z
        assert_eq!(bcd(0, 0, 0, 0x01, 0x01, 0x26, 0x20).unix_seconds(), Some(1_767_225_600));
        // 2000-02-29T12:34:56Z (a leap day of a century leap year)
        assert_eq!(bcd(0x56, 0x34, 0x12, 0x29, 0x02, 0x00, 0x20).unix_seconds(), Some(951_827_696));
        // 1999-12-31T23:59:59Z
        assert_eq!(bcd(0x59, 0x59, 0x23, 0x31, 0x12, 0x99, 0x19).unix_seconds(), Some(946_684_799));
        // 1970-01-01T00:00:00Z
        assert_eq!(bcd(0, 0, 0, 1, 1, 0x70, 0x19).unix_seconds(), Some(0));
    }

    #[test]
    fn binary_mode_and_12_hour_mode() {
        let mut t = CmosTime {
            seconds: 56,
            minutes: 34,
            hours: 12,
            day: 29,
            month: 2,
            year: 0,
            century: 20,
            status_b: STATUS_B_BINARY | STATUS_B_24_HOUR,
        };
        assert_eq!(t.unix_seconds(), Some(951_827_696));
        // 12-hour binary: 12 PM is noon, 12 AM midnight, 1 PM is 13:00.
        t.status_b = STATUS_B_BINARY;
        t.hours = 0x80 | 12;
        assert_eq!(t.unix_seconds(), Some(951_827_696));
        t.hours = 12;
        assert_eq!(t.unix_seconds(), Some(951_827_696 - 12 * 3600));
        t.hours = 0x80 | 1;
        assert_eq!(t.unix_seconds(), Some(951_827_696 + 3600));
        // 12-hour BCD: 0x92 is 12 PM.
        let mut b = bcd(0x56, 0x34, 0x92, 0x29, 0x02, 0x00, 0x20);
        b.status_b = 0;
        assert_eq!(b.unix_seconds(), Some(951_827_696));
        b.hours = 0x13; // no 13 o'clock in 12-hour mode
        assert_eq!(b.unix_seconds(), None);
    }

    #[test]
    fn a_missing_or_garbled_century_means_20() {
        for century in [0x00, 0xFF, 0x25, 0x1A] {
            assert_eq!(bcd(0, 0, 0, 0x01, 0x01, 0x26, century).unix_seconds(), Some(1_767_225_600), "{century:#x}");
        }
    }

    #[test]
    fn impossible_registers_give_no_time() {
        let good = bcd(0, 0, 0, 0x01, 0x01, 0x26, 0x20);
        assert!(good.unix_seconds().is_some());
        // A missing RTC reads all-ones.
        assert_eq!(CmosTime::from_registers([0xFF; 8]).unix_seconds(), None);
        for t in [
            CmosTime { seconds: 0x60, ..good },
            CmosTime { seconds: 0x0A, ..good }, // not BCD
            CmosTime { minutes: 0x60, ..good },
            CmosTime { hours: 0x24, ..good },
            CmosTime { day: 0, ..good },
            CmosTime { day: 0x32, ..good },
            CmosTime { month: 0, ..good },
            CmosTime { month: 0x13, ..good },
            CmosTime { day: 0x29, month: 0x02, year: 0x26, ..good }, // 2026 is no leap year
            CmosTime { day: 0x31, month: 0x04, ..good },
            CmosTime { year: 0x69, century: 0x19, ..good }, // before 1970
        ] {
            assert_eq!(t.unix_seconds(), None, "{t:?}");
        }
        assert!(CmosTime { day: 0x29, month: 0x02, year: 0x24, ..good }.unix_seconds().is_some());
    }

    #[test]
    fn registers_in_reader_order() {
        let t = CmosTime::from_registers([1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            t,
            CmosTime { seconds: 1, minutes: 2, hours: 3, day: 4, month: 5, year: 6, century: 7, status_b: 8 }
        );
        assert_eq!(TIME_REGISTERS[0], index::SECONDS);
        assert_eq!(TIME_REGISTERS[7], index::STATUS_B);
    }

    proptest::proptest! {
        /// Any register bytes: no panic, and any time given is within the years the
        /// clock can show (1970 to 2199).
        #[test]
        fn any_registers_are_safe(r in proptest::array::uniform8(proptest::num::u8::ANY)) {
            if let Some(s) = CmosTime::from_registers(r).unix_seconds() {
                proptest::prop_assert!(s < 7_258_118_400); // 2200-01-01
            }
        }

        /// Every day from 1970 to 2199 at a BCD 24-hour time round-trips through a
        /// day count computed independently (days from civil, H. Hinnant's algorithm).
        #[test]
        fn dates_agree_with_a_civil_day_count(days in 0u64..83_000, secs in 0u64..86_400) {
            let (y, m, d) = civil_from_days(days);
            let to_bcd = |v: u32| ((v / 10) << 4 | (v % 10)) as u8;
            let t = CmosTime {
                seconds: to_bcd((secs % 60) as u32),
                minutes: to_bcd((secs / 60 % 60) as u32),
                hours: to_bcd((secs / 3600) as u32),
                day: to_bcd(d),
                month: to_bcd(m),
                year: to_bcd(y % 100),
                century: to_bcd(y / 100),
                status_b: BCD_24H,
            };
            proptest::prop_assert_eq!(t.unix_seconds(), Some(days * 86_400 + secs));
        }
    }

    #[test]
    fn dates_for_log_lines() {
        assert_eq!(UtcDateTime::from_unix_seconds(0).to_string(), "1970-01-01 00:00:00 UTC");
        assert_eq!(UtcDateTime::from_unix_seconds(951_827_696).to_string(), "2000-02-29 12:34:56 UTC");
        assert_eq!(UtcDateTime::from_unix_seconds(1_782_907_207).to_string(), "2026-07-01 12:00:07 UTC");
    }
}
