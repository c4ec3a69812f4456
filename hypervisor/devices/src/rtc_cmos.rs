//! The PC real-time clock and CMOS RAM: a Motorola MC146818A behind the index port
//! 0x70 and the data port 0x71, on ISA interrupt line 8.
//!
//! Written from the MC146818A datasheet (Motorola, "MC146818A Real-Time Clock plus
//! RAM"); section names below are the datasheet's.
//!
//! - **Address map** ("Address Map"): bytes 0x00-0x09 hold the time, calendar and
//!   alarm, 0x0A-0x0D the four status/control registers A-D, and the rest is
//!   battery-backed user RAM. The MC146818A itself has 64 bytes; the PC/AT chipset
//!   clone has 128, which is what this model offers (0x0E-0x7F NVRAM). Byte 0x32 is
//!   the century by PC convention (the ACPI FADT `CENTURY` field points at it); here
//!   it is computed from the clock like the other time bytes, so the year rolls over
//!   into the next century by itself (the real chip leaves 0x32 to software).
//! - **Index port** 0x70: bits 6:0 select the byte; bit 7 is the PC's NMI mask, kept
//!   but ignored (the platform has no NMI sources here). Port 0x70 is write-only: it
//!   reads as open bus (0xFF). Data port 0x71 reads and writes the selected byte; the
//!   index does not auto-increment. A 2- or 4-byte access is split into byte
//!   accesses at consecutive ports, as an 8-bit ISA device sees it (so
//!   `outw 0x70, (value << 8) | index` selects and writes in one go).
//! - **Time** ("Time, Calendar and Alarm Locations", Table "Time, Calendar and Alarm
//!   Data Modes"): binary or BCD by register B `DM`, 12- or 24-hour by `24/12` (in
//!   12-hour mode bit 7 of the hours byte is PM). The clock is not a ticking counter:
//!   the wall time is `seconds at a reference second boundary + whole seconds since`,
//!   computed from `now`, so it never drifts. The time bytes are re-encoded on each
//!   read, so changing `DM` or `24/12` converts the visible time at once (the real
//!   chip needs the time rewritten after a mode change — software always does that).
//! - **Setting the time** (register B `SET`, "Update Cycle"): while `SET` is 1 the
//!   update cycle is inhibited and the time bytes are frozen; writes to them are kept
//!   raw and read back as written; clearing `SET` decodes them (out-of-range values
//!   are clamped into range) and restarts the clock from that time. Setting `SET`
//!   also clears `UIE`, as the datasheet says. Writes to a time byte while `SET` is 0
//!   take effect at once (the chip accepts them too; software that cares uses `SET`),
//!   with one exception: a date whose day lies past its month's end (day 31 written
//!   before month 3 on 15 February, or year 2025 written on 29 February 2024) reads back
//!   as written until the next update, as the chip's registers would, so that the
//!   writes that follow in the same second can complete it (`unsettled`); at that
//!   update the day is clamped to the month (the chip's behaviour for such a date is
//!   undefined).
//!   The divider chain keeps its phase through `SET`: the next update comes at the
//!   next boundary of the original one-second phase, as on the chip.
//! - **Register A**: `UIP` (bit 7, read-only) is 1 during the last 244 µs
//!   (t<sub>BUC</sub>) before each update — the update itself is instantaneous here,
//!   so the 1984 µs t<sub>UC</sub> of the real update cycle is not modelled; 0 while
//!   `SET` is 1. `DV` (bits 6:4) is stored but not acted on: the time base is always
//!   the 32.768 kHz one and the divider-reset values (11x) do not stop the clock.
//!   `RS` (bits 3:0) selects the periodic interrupt rate (Table "Periodic Interrupt
//!   Rate and Square-Wave Output Frequency"): 0 = none, 3-15 = 32768 >> (RS - 1) Hz,
//!   and 1 and 2, special with the 32.768 kHz time base, are 256 Hz and 128 Hz (the
//!   same as 8 and 9). Periodic ticks are phase-locked to the second updates, as they
//!   come from the same divider chain.
//! - **Register B**: `SET`, `PIE`, `AIE`, `UIE`, `SQWE`, `DM`, `24/12`, `DSE` are
//!   all stored; `SQWE` (no square-wave pin here) and `DSE` (daylight saving, US
//!   1980s rules) have no effect.
//! - **Register C** ("Interrupts"): flags `PF`, `AF`, `UF` are set by their events
//!   whether or not enabled; `IRQF` = (PF·PIE)+(AF·AIE)+(UF·UIE), so enabling an
//!   interrupt whose flag is already set raises `IRQF` at once. Reading C returns the
//!   flags and clears them all. Bits 3:0 read 0; writes are ignored.
//! - **Register D**: `VRT` (bit 7) reads 1 (valid RAM and time); writes are ignored.
//! - **Interrupts**: `PF` at each periodic tick, `UF` at each second update, `AF` at
//!   an update whose hours/minutes/seconds equal the alarm bytes, where an alarm byte
//!   0xC0-0xFF ("don't care") matches any value. IRQ 8 follows `IRQF`: it goes high
//!   when `IRQF` becomes 1 and low when C is read (level-like); changes are reported
//!   through [`Platform::set_irq`]. Flags are computed lazily from `now` on every
//!   access, so a guest that polls C sees exact counts; [`PortIo::next_event`] only
//!   reports the next time the IRQ line would rise (an *enabled* flag getting set
//!   while IRQ 8 is low) — with the line already high, or nothing enabled, there is
//!   nothing to wake up for.

use crate::{open_bus, read_bytewise, write_bytewise, Nanos, Platform, PortIo};

/// The CMOS index port (bit 7: NMI disable).
pub const INDEX_PORT: u16 = 0x70;
/// The CMOS data port.
pub const DATA_PORT: u16 = 0x71;
/// The ISA interrupt line of the RTC.
pub const IRQ: u8 = 8;
/// The CMOS byte holding the century (PC convention, ACPI FADT `CENTURY`).
pub const CENTURY_INDEX: u8 = 0x32;

const NANOS_PER_SEC: u64 = 1_000_000_000;
/// t<sub>BUC</sub>: `UIP` rises this long before each update ("Update Cycle").
const UIP_LEAD: u64 = 244_000;
const SECS_PER_DAY: i64 = 86_400;
/// The time base: the divider chain counts 32.768 kHz cycles.
const TIME_BASE_HZ: u128 = 32_768;

const REG_SECONDS: u8 = 0x00;
const REG_ALARM_SECONDS: u8 = 0x01;
const REG_MINUTES: u8 = 0x02;
const REG_ALARM_MINUTES: u8 = 0x03;
const REG_HOURS: u8 = 0x04;
const REG_ALARM_HOURS: u8 = 0x05;
const REG_DAY_OF_WEEK: u8 = 0x06;
const REG_DAY_OF_MONTH: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0A;
const REG_B: u8 = 0x0B;
const REG_C: u8 = 0x0C;
const REG_D: u8 = 0x0D;
/// The first byte of user RAM.
const NVRAM_START: u8 = 0x0E;

/// Register A: update in progress (read-only).
pub const A_UIP: u8 = 0x80;
/// Register A: divider control (DV2-DV0).
pub const A_DV: u8 = 0x70;
/// Register A: rate select (RS3-RS0).
pub const A_RS: u8 = 0x0F;
/// Register B: inhibit updates, time bytes writable.
pub const B_SET: u8 = 0x80;
/// Register B: periodic interrupt enable.
pub const B_PIE: u8 = 0x40;
/// Register B: alarm interrupt enable.
pub const B_AIE: u8 = 0x20;
/// Register B: update-ended interrupt enable.
pub const B_UIE: u8 = 0x10;
/// Register B: square-wave enable (stored, no effect).
pub const B_SQWE: u8 = 0x08;
/// Register B: data mode, 1 = binary, 0 = BCD.
pub const B_DM: u8 = 0x04;
/// Register B: 1 = 24-hour mode, 0 = 12-hour mode.
pub const B_24H: u8 = 0x02;
/// Register B: daylight-saving enable (stored, no effect).
pub const B_DSE: u8 = 0x01;
/// Register C: interrupt request flag.
pub const C_IRQF: u8 = 0x80;
/// Register C: periodic interrupt flag.
pub const C_PF: u8 = 0x40;
/// Register C: alarm flag.
pub const C_AF: u8 = 0x20;
/// Register C: update-ended flag.
pub const C_UF: u8 = 0x10;
/// Register D: valid RAM and time.
pub const D_VRT: u8 = 0x80;

/// Register A at creation: DV = 010 (32.768 kHz time base running), RS = 0110
/// (1024 Hz), what PC firmware programs.
const A_DEFAULT: u8 = 0x26;
/// Register B at creation: 24-hour BCD, no interrupts.
const B_DEFAULT: u8 = B_24H;

// ---------------------------------------------------------------------------------
// Calendar arithmetic (proleptic Gregorian calendar).
// ---------------------------------------------------------------------------------

/// A date of the proleptic Gregorian calendar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Date {
    /// The year (astronomical numbering; the RTC only shows years 0-9999).
    pub year: i64,
    /// The month, 1-12.
    pub month: u8,
    /// The day of the month, 1-31.
    pub day: u8,
}

/// Whether `year` is a leap year: divisible by 4, except centuries not divisible by
/// 400.
#[must_use]
pub const fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

/// The number of days of `month` (1-12) in `year`; 0 for an invalid month.
#[must_use]
pub const fn days_in_month(year: i64, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days from 0000-03-01 to 1970-01-01: the calendar below counts years from March,
/// so that the leap day is the last day of its year.
const DAYS_0000_03_01_TO_EPOCH: i64 = 719_468;
/// Days in a 400-year cycle: 400 * 365 + 97 leap days.
const DAYS_PER_400_YEARS: i64 = 146_097;
/// The largest |days| accepted, far beyond any RTC date; keeps the arithmetic in range.
const DAYS_LIMIT: i64 = 1 << 40;

/// Day of the March-based year (March 1 = 0) at which month `mp` starts, where
/// `mp` = 0 for March ... 11 for February: the month lengths from March repeat
/// 31, 30, 31, 30, 31 and `(153 * mp + 2) / 5` is the exact running total.
const fn march_month_start(mp: i64) -> i64 {
    (153 * mp + 2) / 5
}

/// Days since 1970-01-01 of `date`. The month is taken modulo its range (a month
/// outside 1-12 counts as the nearest valid one) and the day is added linearly, so
/// day 0 is the last day of the previous month.
#[must_use]
pub fn date_to_days(date: Date) -> i64 {
    let month = i64::from(date.month.clamp(1, 12));
    let year = date.year.clamp(-DAYS_LIMIT / 366, DAYS_LIMIT / 366);
    // Count from March: January and February belong to the previous year.
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let day_of_year = march_month_start((month + 9) % 12) + i64::from(date.day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * DAYS_PER_400_YEARS + day_of_era - DAYS_0000_03_01_TO_EPOCH
}

/// The date `days` days after 1970-01-01 (negative: before). The inverse of
/// [`date_to_days`] for valid dates.
#[must_use]
pub fn days_to_date(days: i64) -> Date {
    let days = days.clamp(-DAYS_LIMIT, DAYS_LIMIT) + DAYS_0000_03_01_TO_EPOCH;
    let era = days.div_euclid(DAYS_PER_400_YEARS);
    let day_of_era = days.rem_euclid(DAYS_PER_400_YEARS);
    // Remove the leap days (every 4th year, not the 100th, but the 400th: the last
    // day of the era) to get whole 365-day years.
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - march_month_start(mp) + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = era * 400 + year_of_era + i64::from(month <= 2);
    // Both are in range by construction: month 1-12, day 1-31.
    Date { year, month: u8::try_from(month).unwrap_or(1), day: u8::try_from(day).unwrap_or(1) }
}

/// The day of the week of the day `days` after 1970-01-01, 1 = Sunday ... 7 =
/// Saturday (the PC convention for register 0x06). 1970-01-01 was a Thursday.
#[must_use]
pub fn day_of_week(days: i64) -> u8 {
    // 0..=6, so the cast cannot truncate.
    (days + 4).rem_euclid(7) as u8 + 1
}

/// The earliest wall time shown: 0000-01-01T00:00:00.
const MIN_WALL: i64 = -62_167_219_200;
/// The latest wall time set: 9999-12-31T23:59:59.
const MAX_WALL: i64 = 253_402_300_799;

// ---------------------------------------------------------------------------------
// The device.
// ---------------------------------------------------------------------------------

/// A time broken down into fields, binary, 24-hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fields {
    second: u8,
    minute: u8,
    hour: u8,
    day_of_week: u8,
    day: u8,
    month: u8,
    year: i64,
}

/// The raw bytes of the time registers, as encoded in the current mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TimeBytes {
    second: u8,
    minute: u8,
    hour: u8,
    day_of_week: u8,
    day: u8,
    month: u8,
    year: u8,
    century: u8,
}

/// One alarm byte, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AlarmMatch {
    /// 0xC0-0xFF: matches every value.
    Any,
    /// Matches this binary value.
    Exactly(u8),
    /// Not a valid time value in the current mode: never matches.
    Never,
}

impl AlarmMatch {
    fn matches(self, value: u8) -> bool {
        match self {
            Self::Any => true,
            Self::Exactly(v) => v == value,
            Self::Never => false,
        }
    }
}

/// The MC146818A real-time clock with 128 bytes of CMOS RAM (ports 0x70/0x71,
/// IRQ 8). See the module documentation for what is modelled.
#[derive(Debug, Clone)]
pub struct RtcCmos {
    /// The selected byte (bits 6:0 of the last index write).
    index: u8,
    /// Bit 7 of the last index write; kept, not acted on.
    nmi_disabled: bool,
    /// User RAM and the alarm bytes; the clock and control bytes live elsewhere.
    cmos: [u8; 128],
    /// Register A without `UIP`.
    reg_a: u8,
    reg_b: u8,
    /// `PF`, `AF`, `UF` of register C (`IRQF` is derived).
    flags: u8,
    /// A second boundary of the divider chain: updates happen at
    /// `phase + k * 1 s`, periodic ticks at fractions of that.
    phase: Nanos,
    /// The wall time (Unix seconds) during the second starting at `phase`.
    secs_at_phase: i64,
    /// Day-of-week register minus the computed day of the week, modulo 7.
    day_of_week_offset: u8,
    /// The frozen time bytes while `SET` is 1.
    latched: Option<TimeBytes>,
    /// Time bytes written while `SET` is 0 whose day lies past their month's end, and
    /// when: they read back as written until the next update, when the clock is set
    /// from them as of that time (the day clamped), unless a write in between makes
    /// the date valid (see the module documentation).
    unsettled: Option<(TimeBytes, Nanos)>,
    /// Events up to this time have been accounted for in `flags`.
    last: Nanos,
    /// The level last reported on IRQ 8.
    irq_high: bool,
}

impl RtcCmos {
    /// An RTC whose wall clock reads `epoch_seconds` (Unix time, UTC or local as the
    /// platform chooses) at `now`, a second boundary. Registers start as PC firmware
    /// leaves them: A = 0x26, B = 0x02 (24-hour BCD), no flags, NVRAM zeroed.
    #[must_use]
    pub fn new(epoch_seconds: u64, now: Nanos) -> Self {
        let wall = i64::try_from(epoch_seconds).unwrap_or(i64::MAX).min(MAX_WALL);
        Self {
            index: 0,
            nmi_disabled: false,
            cmos: [0; 128],
            reg_a: A_DEFAULT,
            reg_b: B_DEFAULT,
            flags: 0,
            phase: now,
            secs_at_phase: wall,
            day_of_week_offset: 0,
            latched: None,
            unsettled: None,
            last: now,
            irq_high: false,
        }
    }

    /// Pre-fills byte `index` of user RAM (0x0E-0x7F, except the century byte 0x32,
    /// which follows the clock), e.g. the memory-size bytes firmware reads. Other
    /// indexes are ignored.
    pub fn set_nvram(&mut self, index: u8, value: u8) {
        if (NVRAM_START..=0x7F).contains(&index) && index != CENTURY_INDEX {
            self.cmos[usize::from(index)] = value;
        }
    }

    /// The chip's RESET input, which a PC's system reset drives (datasheet, "Pin
    /// Description", RESET; QEMU's PC models it the same way): `PIE`, `AIE`, `UIE` and
    /// `SQWE` of register B are cleared, and so are the flags of register C (`IRQF`
    /// with them), so IRQ 8 goes low. The clock, the calendar, the alarm, register A,
    /// the data modes of B and the user RAM are untouched: they are battery-backed and
    /// survive a reset. Events up to `now` are accounted for first, so a flag that came
    /// due before the reset does not reappear after it.
    pub fn reset_pin(&mut self, now: Nanos, platform: &mut dyn Platform) {
        self.advance(now, platform);
        self.reg_b &= !(B_PIE | B_AIE | B_UIE | B_SQWE);
        self.flags = 0;
        self.update_irq(platform);
    }

    /// Whether the guest last wrote the index port with bit 7 (NMI disable) set.
    #[must_use]
    pub fn nmi_disabled(&self) -> bool {
        self.nmi_disabled
    }

    // --- time ------------------------------------------------------------------

    /// Whole seconds of the divider phase elapsed at `now`.
    fn elapsed_secs(&self, now: Nanos) -> u64 {
        now.saturating_sub(self.phase) / NANOS_PER_SEC
    }

    /// The wall time at `now` (while running).
    fn wall_secs(&self, now: Nanos) -> i64 {
        let elapsed = i64::try_from(self.elapsed_secs(now)).unwrap_or(i64::MAX);
        self.secs_at_phase.saturating_add(elapsed)
    }

    fn fields(&self, wall: i64) -> Fields {
        let days = wall.div_euclid(SECS_PER_DAY);
        let time_of_day = wall.rem_euclid(SECS_PER_DAY);
        let date = days_to_date(days);
        let dow = (day_of_week(days) - 1 + self.day_of_week_offset) % 7 + 1;
        // Each quotient is below 60 or 24, so the casts cannot truncate.
        Fields {
            second: (time_of_day % 60) as u8,
            minute: (time_of_day / 60 % 60) as u8,
            hour: (time_of_day / 3600) as u8,
            day_of_week: dow,
            day: date.day,
            month: date.month,
            year: date.year,
        }
    }

    fn binary(&self) -> bool {
        self.reg_b & B_DM != 0
    }

    fn hours_24(&self) -> bool {
        self.reg_b & B_24H != 0
    }

    /// A value 0-99 as a time byte in the current data mode.
    fn encode(&self, value: u8) -> u8 {
        if self.binary() {
            value
        } else {
            let value = value % 100;
            ((value / 10) << 4) | (value % 10)
        }
    }

    /// A time byte in the current data mode, leniently (a BCD digit above 9 counts
    /// as its value).
    fn decode(&self, raw: u8) -> u8 {
        if self.binary() {
            raw
        } else {
            (raw >> 4) * 10 + (raw & 0x0F)
        }
    }

    /// A time byte in the current data mode, or `None` if it is not valid BCD.
    fn decode_strict(&self, raw: u8) -> Option<u8> {
        (self.binary() || (raw >> 4 <= 9 && raw & 0x0F <= 9)).then(|| self.decode(raw))
    }

    /// An hour 0-23 as the hours byte in the current modes.
    fn encode_hour(&self, hour: u8) -> u8 {
        if self.hours_24() {
            self.encode(hour)
        } else {
            let pm = if hour >= 12 { 0x80 } else { 0 };
            let hour_12 = match hour % 12 {
                0 => 12,
                h => h,
            };
            self.encode(hour_12) | pm
        }
    }

    /// The hours byte in the current modes as an hour 0-23 (leniently; may be out of
    /// range for a garbage byte).
    fn decode_hour(&self, raw: u8) -> u8 {
        if self.hours_24() {
            self.decode(raw)
        } else {
            let pm = if raw & 0x80 != 0 { 12 } else { 0 };
            (self.decode(raw & 0x7F) % 12).saturating_add(pm)
        }
    }

    fn encode_time(&self, wall: i64) -> TimeBytes {
        let f = self.fields(wall);
        // `year` is 0-9999 (the wall time is clamped), so both parts fit in a byte.
        let year = f.year.clamp(0, 9999);
        TimeBytes {
            second: self.encode(f.second),
            minute: self.encode(f.minute),
            hour: self.encode_hour(f.hour),
            day_of_week: self.encode(f.day_of_week),
            day: self.encode(f.day),
            month: self.encode(f.month),
            year: self.encode((year % 100) as u8),
            century: self.encode((year / 100) as u8),
        }
    }

    /// The time bytes as the guest sees them at `now` (after [`RtcCmos::settle`]).
    fn time_bytes(&self, now: Nanos) -> TimeBytes {
        match (self.latched, self.unsettled) {
            (Some(latched), _) => latched,
            (None, Some((written, _))) => written,
            (None, None) => self.encode_time(self.wall_secs(now)),
        }
    }

    /// Whether `bytes` (in the current modes) hold a month 1-12 and a day 1-31 that
    /// lies past that month's end: a date a later write may still complete.
    fn day_past_month_end(&self, bytes: TimeBytes) -> bool {
        let year = i64::from(self.decode(bytes.century).min(99)) * 100 + i64::from(self.decode(bytes.year).min(99));
        let (month, day) = (self.decode(bytes.month), self.decode(bytes.day));
        (1..=12).contains(&month) && (1..=31).contains(&day) && day > days_in_month(year, month)
    }

    /// Sets the clock from [`RtcCmos::unsettled`] bytes once an update came after
    /// their write (see the module documentation).
    fn settle(&mut self, now: Nanos) {
        if let Some((written, at)) = self.unsettled {
            if self.elapsed_secs(now) > self.elapsed_secs(at) {
                self.unsettled = None;
                self.set_clock(written, at);
            }
        }
    }

    /// A time byte write while `SET` is 0 left `bytes` at `now`.
    fn write_running(&mut self, bytes: TimeBytes, now: Nanos) {
        if self.day_past_month_end(bytes) {
            self.unsettled = Some((bytes, now));
        } else {
            self.unsettled = None;
            self.set_clock(bytes, now);
        }
    }

    /// Sets the clock to the time `bytes` (in the current modes) at `now`, clamping
    /// out-of-range fields; the one-second phase is kept.
    fn set_clock(&mut self, bytes: TimeBytes, now: Nanos) {
        let second = i64::from(self.decode(bytes.second).min(59));
        let minute = i64::from(self.decode(bytes.minute).min(59));
        let hour = i64::from(self.decode_hour(bytes.hour).min(23));
        let year = i64::from(self.decode(bytes.century).min(99)) * 100 + i64::from(self.decode(bytes.year).min(99));
        let month = self.decode(bytes.month).clamp(1, 12);
        let day = self.decode(bytes.day).clamp(1, days_in_month(year, month));
        let days = date_to_days(Date { year, month, day });
        let wall = (days * SECS_PER_DAY + hour * 3600 + minute * 60 + second).clamp(MIN_WALL, MAX_WALL);
        let elapsed = i64::try_from(self.elapsed_secs(now)).unwrap_or(i64::MAX);
        self.secs_at_phase = wall.saturating_sub(elapsed);
        let written_dow = self.decode(bytes.day_of_week);
        if (1..=7).contains(&written_dow) {
            self.day_of_week_offset = (written_dow + 7 - day_of_week(days)) % 7;
        }
    }

    // --- interrupts ------------------------------------------------------------

    /// log2 of the periodic interrupt period in 32.768 kHz cycles, if enabled.
    fn periodic_shift(&self) -> Option<u32> {
        match self.reg_a & A_RS {
            0 => None,
            // With the 32.768 kHz time base, RS = 1 and 2 give 256 Hz and 128 Hz.
            1 => Some(7),
            2 => Some(8),
            rs => Some(u32::from(rs) - 1),
        }
    }

    /// The number of periodic ticks in (phase, t].
    fn periodic_count(&self, t: Nanos, shift: u32) -> u128 {
        u128::from(t.saturating_sub(self.phase)) * TIME_BASE_HZ / (u128::from(NANOS_PER_SEC) << shift)
    }

    /// The time of periodic tick `k` (the first instant at which it has happened).
    fn periodic_time(&self, k: u128, shift: u32) -> Nanos {
        let offset = (k * (u128::from(NANOS_PER_SEC) << shift)).div_ceil(TIME_BASE_HZ);
        self.phase.saturating_add(u64::try_from(offset).unwrap_or(u64::MAX))
    }

    /// The time of the update that starts whole second `k` of the phase.
    fn update_time(&self, k: u64) -> Nanos {
        self.phase.saturating_add(k.saturating_mul(NANOS_PER_SEC))
    }

    fn alarm_byte(&self, index: u8, max: u8) -> AlarmMatch {
        let raw = self.cmos[usize::from(index)];
        if raw & 0xC0 == 0xC0 {
            return AlarmMatch::Any;
        }
        match self.decode_strict(raw) {
            Some(v) if v <= max => AlarmMatch::Exactly(v),
            _ => AlarmMatch::Never,
        }
    }

    fn alarm_hour(&self) -> AlarmMatch {
        let raw = self.cmos[usize::from(REG_ALARM_HOURS)];
        if raw & 0xC0 == 0xC0 || self.hours_24() {
            return self.alarm_byte(REG_ALARM_HOURS, 23);
        }
        let pm = if raw & 0x80 != 0 { 12 } else { 0 };
        match self.decode_strict(raw & 0x7F) {
            Some(h @ 1..=12) => AlarmMatch::Exactly(h % 12 + pm),
            _ => AlarmMatch::Never,
        }
    }

    /// Seconds (1-86400) from wall time `wall` to the next wall second whose
    /// hours/minutes/seconds match the alarm bytes, or `None` if none ever does.
    fn alarm_delta(&self, wall: i64) -> Option<u64> {
        let (hours, minutes, seconds) =
            (self.alarm_hour(), self.alarm_byte(REG_ALARM_MINUTES, 59), self.alarm_byte(REG_ALARM_SECONDS, 59));
        if [hours, minutes, seconds].contains(&AlarmMatch::Never) {
            return None;
        }
        let now = wall.rem_euclid(SECS_PER_DAY);
        // Lexicographic search for the first matching (h, m, s) after now, today or
        // tomorrow; each loop stops at the first match past the current time, so
        // this is a few hundred steps at most.
        for day in 0..2 {
            for h in (0..24).filter(|&h| hours.matches(h)) {
                for m in (0..60).filter(|&m| minutes.matches(m)) {
                    for s in (0..60).filter(|&s| seconds.matches(s)) {
                        let candidate = day * SECS_PER_DAY + i64::from(h) * 3600 + i64::from(m) * 60 + i64::from(s);
                        if candidate > now {
                            return u64::try_from(candidate - now).ok();
                        }
                    }
                }
            }
        }
        None
    }

    fn irqf(&self) -> bool {
        // The flag bits of C sit at the same positions as the enables of B.
        self.flags & self.reg_b & (C_PF | C_AF | C_UF) != 0
    }

    fn update_irq(&mut self, platform: &mut dyn Platform) {
        let level = self.irqf();
        if level != self.irq_high {
            self.irq_high = level;
            platform.set_irq(IRQ, level);
        }
    }

    /// Accounts for the events in (last, now] and updates IRQ 8.
    fn advance(&mut self, now: Nanos, platform: &mut dyn Platform) {
        self.settle(now);
        if now > self.last {
            if let Some(shift) = self.periodic_shift() {
                if self.periodic_count(now, shift) > self.periodic_count(self.last, shift) {
                    self.flags |= C_PF;
                }
            }
            if self.latched.is_none() {
                let updates = self.elapsed_secs(now) - self.elapsed_secs(self.last);
                if updates > 0 {
                    self.flags |= C_UF;
                    if self.alarm_delta(self.wall_secs(self.last)).is_some_and(|d| d <= updates) {
                        self.flags |= C_AF;
                    }
                }
            }
            self.last = now;
        }
        self.update_irq(platform);
    }

    // --- registers -------------------------------------------------------------

    fn read_register(&mut self, now: Nanos, platform: &mut dyn Platform) -> u8 {
        let index = self.index;
        let time = || self.time_bytes(now);
        match index {
            REG_SECONDS => time().second,
            REG_MINUTES => time().minute,
            REG_HOURS => time().hour,
            REG_DAY_OF_WEEK => time().day_of_week,
            REG_DAY_OF_MONTH => time().day,
            REG_MONTH => time().month,
            REG_YEAR => time().year,
            CENTURY_INDEX => time().century,
            REG_A => {
                let to_update = NANOS_PER_SEC - now.saturating_sub(self.phase) % NANOS_PER_SEC;
                let uip = self.latched.is_none() && to_update <= UIP_LEAD;
                self.reg_a | if uip { A_UIP } else { 0 }
            }
            REG_B => self.reg_b,
            REG_C => {
                let value = self.flags | if self.irqf() { C_IRQF } else { 0 };
                self.flags = 0;
                self.update_irq(platform);
                value
            }
            REG_D => D_VRT,
            _ => self.cmos[usize::from(index & 0x7F)],
        }
    }

    fn write_register(&mut self, value: u8, now: Nanos, platform: &mut dyn Platform) {
        let index = self.index;
        let mut time = self.time_bytes(now);
        let field = match index {
            REG_SECONDS => Some(&mut time.second),
            REG_MINUTES => Some(&mut time.minute),
            REG_HOURS => Some(&mut time.hour),
            REG_DAY_OF_WEEK => Some(&mut time.day_of_week),
            REG_DAY_OF_MONTH => Some(&mut time.day),
            REG_MONTH => Some(&mut time.month),
            REG_YEAR => Some(&mut time.year),
            CENTURY_INDEX => Some(&mut time.century),
            _ => None,
        };
        if let Some(field) = field {
            *field = value;
            match &mut self.latched {
                Some(latched) => *latched = time,
                None => self.write_running(time, now),
            }
            return;
        }
        match index {
            REG_A => self.reg_a = value & !A_UIP,
            REG_B => {
                // Unsettled bytes are in the current data modes: when those change, the
                // bytes set the clock now, while they can still be decoded.
                if (value ^ self.reg_b) & (B_DM | B_24H) != 0 {
                    if let Some((written, at)) = self.unsettled.take() {
                        self.set_clock(written, at);
                    }
                }
                let was_set = self.reg_b & B_SET != 0;
                // "UIE is cleared when SET goes to 1" (Register B, UIE).
                self.reg_b = if value & B_SET != 0 { value & !B_UIE } else { value };
                match (was_set, self.reg_b & B_SET != 0) {
                    // Freeze the time as shown in the (new) modes, or as written when
                    // unsettled (the modes did not change).
                    (false, true) => {
                        self.latched = Some(match self.unsettled.take() {
                            Some((written, _)) => written,
                            None => self.encode_time(self.wall_secs(now)),
                        });
                    }
                    (true, false) => {
                        if let Some(latched) = self.latched.take() {
                            self.set_clock(latched, now);
                        }
                    }
                    _ => {}
                }
                self.update_irq(platform);
            }
            REG_C | REG_D => {}
            _ => self.cmos[usize::from(index & 0x7F)] = value,
        }
    }
}

impl PortIo for RtcCmos {
    fn read(&mut self, port: u16, size: u8, now: Nanos, platform: &mut dyn Platform) -> u32 {
        if !matches!(size, 1 | 2 | 4) {
            return open_bus(size);
        }
        let now = now.max(self.last);
        self.advance(now, platform);
        // The index port is write-only.
        read_bytewise(port, size, |p| (p == DATA_PORT).then(|| self.read_register(now, platform)))
    }

    fn write(&mut self, port: u16, size: u8, value: u32, now: Nanos, platform: &mut dyn Platform) {
        if !matches!(size, 1 | 2 | 4) {
            return;
        }
        let now = now.max(self.last);
        self.advance(now, platform);
        write_bytewise(port, size, value, |p, byte| match p {
            INDEX_PORT => {
                self.index = byte & 0x7F;
                self.nmi_disabled = byte & 0x80 != 0;
            }
            DATA_PORT => self.write_register(byte, now, platform),
            _ => {}
        });
    }

    fn next_event(&self) -> Option<Nanos> {
        if self.irqf() {
            return None;
        }
        let mut next: Option<Nanos> = None;
        let mut consider = |t: Nanos| next = Some(next.map_or(t, |n| n.min(t)));
        if self.reg_b & B_PIE != 0 {
            if let Some(shift) = self.periodic_shift() {
                consider(self.periodic_time(self.periodic_count(self.last, shift) + 1, shift));
            }
        }
        if self.latched.is_none() {
            let elapsed = self.elapsed_secs(self.last);
            if self.reg_b & B_UIE != 0 {
                consider(self.update_time(elapsed + 1));
            }
            if self.reg_b & B_AIE != 0 {
                if let Some(delta) = self.alarm_delta(self.wall_secs(self.last)) {
                    consider(self.update_time(elapsed + delta));
                }
            }
        }
        next
    }

    fn tick(&mut self, now: Nanos, platform: &mut dyn Platform) {
        let now = now.max(self.last);
        self.advance(now, platform);
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::RecordingPlatform;
    use proptest::prelude::*;
    use std::vec::Vec;

    const S: Nanos = NANOS_PER_SEC;
    /// An arbitrary creation time: the phase is not at a multiple of a second.
    const T0: Nanos = 7 * S + 123_456_789;
    /// 2024-02-29T13:45:07Z, a Thursday.
    const LEAP_DAY: u64 = 1_709_214_307;

    fn rtc() -> (RtcCmos, RecordingPlatform) {
        (RtcCmos::new(LEAP_DAY, T0), RecordingPlatform::default())
    }

    fn read(rtc: &mut RtcCmos, p: &mut RecordingPlatform, index: u8, now: Nanos) -> u8 {
        rtc.write(INDEX_PORT, 1, u32::from(index), now, p);
        rtc.read(DATA_PORT, 1, now, p) as u8
    }

    fn write(rtc: &mut RtcCmos, p: &mut RecordingPlatform, index: u8, value: u8, now: Nanos) {
        rtc.write(INDEX_PORT, 1, u32::from(index), now, p);
        rtc.write(DATA_PORT, 1, u32::from(value), now, p);
    }

    /// (seconds, minutes, hours, day of week, day, month, year, century)
    fn time(rtc: &mut RtcCmos, p: &mut RecordingPlatform, now: Nanos) -> [u8; 8] {
        [0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32].map(|i| read(rtc, p, i, now))
    }

    #[test]
    fn calendar_known_dates() {
        assert_eq!(days_to_date(0), Date { year: 1970, month: 1, day: 1 });
        assert_eq!(date_to_days(Date { year: 2000, month: 3, day: 1 }), 11_017);
        assert_eq!(days_to_date(11_016), Date { year: 2000, month: 2, day: 29 });
        assert_eq!(days_to_date(19_782), Date { year: 2024, month: 2, day: 29 });
        assert_eq!(days_to_date(-1), Date { year: 1969, month: 12, day: 31 });
        assert_eq!(
            date_to_days(Date { year: 2100, month: 3, day: 1 }) - date_to_days(Date { year: 2100, month: 2, day: 28 }),
            1
        );
        assert_eq!(date_to_days(Date { year: 0, month: 1, day: 1 }) * SECS_PER_DAY, MIN_WALL);
        assert_eq!(date_to_days(Date { year: 10_000, month: 1, day: 1 }) * SECS_PER_DAY - 1, MAX_WALL);
        assert_eq!(day_of_week(0), 5); // Thursday
        assert_eq!(day_of_week(19_782), 5); // 2024-02-29: Thursday
        assert_eq!(day_of_week(-4), 1); // 1969-12-28: Sunday
        assert!(is_leap_year(2000) && is_leap_year(2024) && !is_leap_year(1900) && !is_leap_year(2100));
        assert_eq!(days_in_month(2023, 2), 28);
        assert_eq!(days_in_month(2024, 2), 29);
        assert_eq!(days_in_month(2024, 13), 0);
    }

    proptest! {
        #[test]
        fn calendar_round_trip_days(days in date_to_days(Date { year: 1970, month: 1, day: 1 })
            ..date_to_days(Date { year: 2200, month: 1, day: 1 })) {
            let date = days_to_date(days);
            prop_assert!((1970..2200).contains(&date.year));
            prop_assert!((1..=12).contains(&date.month));
            prop_assert!(date.day >= 1 && date.day <= days_in_month(date.year, date.month));
            prop_assert_eq!(date_to_days(date), days);
            // Consecutive days are consecutive dates.
            let next = days_to_date(days + 1);
            let expected = if date.day < days_in_month(date.year, date.month) {
                Date { day: date.day + 1, ..date }
            } else if date.month < 12 {
                Date { year: date.year, month: date.month + 1, day: 1 }
            } else {
                Date { year: date.year + 1, month: 1, day: 1 }
            };
            prop_assert_eq!(next, expected);
        }

        #[test]
        fn calendar_round_trip_dates(year in 1970i64..2200, month in 1u8..=12, day in 1u8..=31) {
            let day = day.min(days_in_month(year, month));
            let date = Date { year, month, day };
            prop_assert_eq!(days_to_date(date_to_days(date)), date);
        }

        /// Garbage from the guest never panics, and IRQ 8 always matches IRQF.
        #[test]
        fn random_accesses_do_not_panic(ops in proptest::collection::vec(
            (0x6Eu16..0x74, prop_oneof![Just(1u8), Just(2), Just(4), Just(3)], any::<u32>(), 0u64..3 * S, any::<bool>()), 1..200)) {
            let (mut rtc, mut p) = rtc();
            let mut now = T0;
            for (port, size, value, dt, is_write) in ops {
                now += dt;
                if is_write {
                    rtc.write(port, size, value, now, &mut p);
                } else {
                    rtc.read(port, size, now, &mut p);
                }
                if let Some(t) = rtc.next_event() {
                    prop_assert!(t > rtc.last);
                }
                prop_assert_eq!(p.lines & (1 << IRQ) != 0, rtc.irqf());
            }
        }
    }

    #[test]
    fn reads_bcd_24_hour() {
        let (mut rtc, mut p) = rtc();
        assert_eq!(time(&mut rtc, &mut p, T0), [0x07, 0x45, 0x13, 5, 0x29, 0x02, 0x24, 0x20]);
        assert_eq!(read(&mut rtc, &mut p, REG_B, T0), 0x02);
        // 61.5 s later: 13:46:08.
        assert_eq!(time(&mut rtc, &mut p, T0 + 61 * S + S / 2), [0x08, 0x46, 0x13, 5, 0x29, 0x02, 0x24, 0x20]);
        // 10 h 14 min 53 s later: 2024-03-01 00:00:00, a Friday.
        let midnight = T0 + (10 * 3600 + 14 * 60 + 53) * S;
        assert_eq!(time(&mut rtc, &mut p, midnight - 1), [0x59, 0x59, 0x23, 5, 0x29, 0x02, 0x24, 0x20]);
        assert_eq!(time(&mut rtc, &mut p, midnight), [0x00, 0x00, 0x00, 6, 0x01, 0x03, 0x24, 0x20]);
    }

    #[test]
    fn reads_binary_and_12_hour() {
        let (mut rtc, mut p) = rtc();
        write(&mut rtc, &mut p, REG_B, B_DM | B_24H, T0);
        assert_eq!(time(&mut rtc, &mut p, T0), [7, 45, 13, 5, 29, 2, 24, 20]);
        // 12-hour binary: 1 PM.
        write(&mut rtc, &mut p, REG_B, B_DM, T0);
        assert_eq!(read(&mut rtc, &mut p, REG_HOURS, T0), 0x81);
        // 12-hour BCD.
        write(&mut rtc, &mut p, REG_B, 0, T0);
        assert_eq!(read(&mut rtc, &mut p, REG_HOURS, T0), 0x81);
        let cases = [(0, 0x12), (1, 0x01), (11, 0x11), (12, 0x92), (13, 0x81), (23, 0x91)];
        for (hour, expected) in cases {
            let rtc = RtcCmos { reg_b: 0, ..RtcCmos::new(hour * 3600, 0) };
            assert_eq!(rtc.time_bytes(0).hour, expected, "hour {hour}");
            assert_eq!(rtc.decode_hour(expected), hour as u8);
            let binary = RtcCmos { reg_b: B_DM, ..rtc };
            assert_eq!(binary.decode_hour(binary.time_bytes(0).hour), hour as u8);
        }
    }

    #[test]
    fn set_freezes_and_sets_the_clock() {
        let (mut rtc, mut p) = rtc();
        write(&mut rtc, &mut p, REG_B, B_24H | B_UIE, T0);
        write(&mut rtc, &mut p, REG_B, B_SET | B_24H | B_UIE, T0 + S / 4);
        // SET clears UIE.
        assert_eq!(read(&mut rtc, &mut p, REG_B, T0 + S / 4), B_SET | B_24H);
        // Frozen while SET: no update even seconds later.
        assert_eq!(time(&mut rtc, &mut p, T0 + 5 * S), [0x07, 0x45, 0x13, 5, 0x29, 0x02, 0x24, 0x20]);
        // 1999-12-31 23:59:58, a Friday.
        for (index, value) in [
            (0x00, 0x58),
            (0x02, 0x59),
            (0x04, 0x23),
            (0x06, 6),
            (0x07, 0x31),
            (0x08, 0x12),
            (0x09, 0x99),
            (0x32, 0x19),
        ] {
            write(&mut rtc, &mut p, index, value, T0 + 5 * S);
        }
        assert_eq!(time(&mut rtc, &mut p, T0 + 6 * S), [0x58, 0x59, 0x23, 6, 0x31, 0x12, 0x99, 0x19]);
        // Clear SET 6.5 s after creation: the clock runs again from the written time,
        // on the original one-second phase.
        let resume = T0 + 6 * S + S / 2;
        write(&mut rtc, &mut p, REG_B, B_24H, resume);
        assert_eq!(time(&mut rtc, &mut p, T0 + 7 * S - 1), [0x58, 0x59, 0x23, 6, 0x31, 0x12, 0x99, 0x19]);
        assert_eq!(time(&mut rtc, &mut p, T0 + 7 * S), [0x59, 0x59, 0x23, 6, 0x31, 0x12, 0x99, 0x19]);
        assert_eq!(time(&mut rtc, &mut p, T0 + 8 * S), [0x00, 0x00, 0x00, 7, 0x01, 0x01, 0x00, 0x20]);
        assert_eq!(rtc.wall_secs(T0 + 8 * S), 946_684_800);
    }

    #[test]
    fn set_clamps_garbage_and_single_writes_apply() {
        let (mut rtc, mut p) = rtc();
        write(&mut rtc, &mut p, REG_B, B_SET | B_24H, T0);
        write(&mut rtc, &mut p, REG_DAY_OF_MONTH, 0x31, T0); // 31 February
        write(&mut rtc, &mut p, REG_MINUTES, 0xAB, T0); // not BCD: read back raw
        assert_eq!(read(&mut rtc, &mut p, REG_MINUTES, T0), 0xAB);
        write(&mut rtc, &mut p, REG_B, B_24H, T0);
        assert_eq!(time(&mut rtc, &mut p, T0), [0x07, 0x59, 0x13, 5, 0x29, 0x02, 0x24, 0x20]);
        // Without SET, a single time byte write takes effect at once. 2025 has no
        // 29 February: the date reads as written until the next update, which clamps
        // the day. The day of week is a register of its own, as on the chip: changing
        // the date does not change it.
        write(&mut rtc, &mut p, REG_YEAR, 0x25, T0);
        assert_eq!(time(&mut rtc, &mut p, T0), [0x07, 0x59, 0x13, 5, 0x29, 0x02, 0x25, 0x20]);
        assert_eq!(time(&mut rtc, &mut p, T0 + S), [0x08, 0x59, 0x13, 5, 0x28, 0x02, 0x25, 0x20]);
        // The day of week keeps the offset the guest wrote.
        write(&mut rtc, &mut p, REG_DAY_OF_WEEK, 2, T0);
        assert_eq!(read(&mut rtc, &mut p, REG_DAY_OF_WEEK, T0 + 86_400 * S), 3);
    }

    #[test]
    fn date_written_byte_by_byte_without_set() {
        // From 29 February 2024: day 31, then month 3 (and then year 2023), in the same
        // second, with SET clear, as a DOS-era tool does: 31 March, not the 29th the
        // first write alone would have clamped it to.
        let (mut clock, mut p) = rtc();
        write(&mut clock, &mut p, REG_DAY_OF_MONTH, 0x31, T0);
        assert_eq!(read(&mut clock, &mut p, REG_DAY_OF_MONTH, T0), 0x31);
        write(&mut clock, &mut p, REG_MONTH, 0x03, T0);
        assert_eq!(time(&mut clock, &mut p, T0), [0x07, 0x45, 0x13, 5, 0x31, 0x03, 0x24, 0x20]);
        write(&mut clock, &mut p, REG_YEAR, 0x23, T0);
        assert_eq!(time(&mut clock, &mut p, T0 + 2 * S), [0x09, 0x45, 0x13, 5, 0x31, 0x03, 0x23, 0x20]);
        // Month first, then day: the same.
        let (mut clock, mut p) = rtc();
        write(&mut clock, &mut p, REG_MONTH, 0x04, T0);
        write(&mut clock, &mut p, REG_DAY_OF_MONTH, 0x30, T0);
        assert_eq!(time(&mut clock, &mut p, T0 + S), [0x08, 0x45, 0x13, 5, 0x30, 0x04, 0x24, 0x20]);
        // A day past the month's end that nothing completes is clamped at the next
        // update, from the time it was written: 30 February becomes the 29th.
        let (mut clock, mut p) = rtc();
        write(&mut clock, &mut p, REG_DAY_OF_MONTH, 0x30, T0 + S / 2);
        assert_eq!(read(&mut clock, &mut p, REG_DAY_OF_MONTH, T0 + S / 2), 0x30);
        assert_eq!(time(&mut clock, &mut p, T0 + 3 * S), [0x10, 0x45, 0x13, 5, 0x29, 0x02, 0x24, 0x20]);
        // Setting SET keeps the bytes as written: day 31, then SET, month 5, SET clear:
        // 31 May.
        let (mut clock, mut p) = rtc();
        write(&mut clock, &mut p, REG_DAY_OF_MONTH, 0x31, T0);
        write(&mut clock, &mut p, REG_B, B_SET | B_24H, T0);
        write(&mut clock, &mut p, REG_MONTH, 0x05, T0);
        write(&mut clock, &mut p, REG_B, B_24H, T0);
        assert_eq!(time(&mut clock, &mut p, T0), [0x07, 0x45, 0x13, 5, 0x31, 0x05, 0x24, 0x20]);
        // A change of data mode decodes them first (in the mode they were written in):
        // 31 February, then binary mode: 29 February, read in binary.
        let (mut clock, mut p) = rtc();
        write(&mut clock, &mut p, REG_DAY_OF_MONTH, 0x31, T0);
        write(&mut clock, &mut p, REG_B, B_DM | B_24H, T0);
        assert_eq!(time(&mut clock, &mut p, T0), [7, 45, 13, 5, 29, 2, 24, 20]);
    }

    #[test]
    fn uip_window() {
        let (mut rtc, mut p) = rtc();
        let boundary = T0 + 3 * S;
        assert_eq!(read(&mut rtc, &mut p, REG_A, boundary - UIP_LEAD - 1), 0x26);
        assert_eq!(read(&mut rtc, &mut p, REG_A, boundary - UIP_LEAD), 0x26 | A_UIP);
        assert_eq!(read(&mut rtc, &mut p, REG_A, boundary - 1), 0x26 | A_UIP);
        assert_eq!(read(&mut rtc, &mut p, REG_A, boundary), 0x26);
        // The time has not changed during UIP and has right after.
        let (mut rtc, mut p) = self::rtc();
        assert_eq!(read(&mut rtc, &mut p, REG_SECONDS, boundary - 1), 0x09);
        assert_eq!(read(&mut rtc, &mut p, REG_SECONDS, boundary), 0x10);
        // UIP is read-only and 0 while SET.
        write(&mut rtc, &mut p, REG_A, 0xA3, boundary);
        assert_eq!(read(&mut rtc, &mut p, REG_A, boundary), 0x23);
        write(&mut rtc, &mut p, REG_B, B_SET | B_24H, boundary);
        assert_eq!(read(&mut rtc, &mut p, REG_A, boundary + S - 1), 0x23);
    }

    #[test]
    fn registers_c_and_d() {
        let (mut rtc, mut p) = rtc();
        assert_eq!(read(&mut rtc, &mut p, REG_D, T0), D_VRT);
        write(&mut rtc, &mut p, REG_D, 0, T0);
        assert_eq!(read(&mut rtc, &mut p, REG_D, T0), D_VRT);
        assert_eq!(read(&mut rtc, &mut p, REG_C, T0), 0);
        // Flags are set without their enables (polled), without IRQ.
        assert_eq!(read(&mut rtc, &mut p, REG_C, T0 + S), C_PF | C_UF);
        assert_eq!(read(&mut rtc, &mut p, REG_C, T0 + S), 0);
        assert_eq!(p.lines, 0);
        // Enabling an interrupt whose flag is set raises IRQF and IRQ 8 at once.
        read(&mut rtc, &mut p, REG_A, T0 + 2 * S);
        write(&mut rtc, &mut p, REG_B, B_24H | B_UIE, T0 + 2 * S);
        assert_eq!(p.lines, 1 << IRQ);
        assert_eq!(rtc.next_event(), None);
        // Reading C clears the flags and lowers the line.
        assert_eq!(read(&mut rtc, &mut p, REG_C, T0 + 2 * S), C_IRQF | C_PF | C_UF);
        assert_eq!(p.lines, 0);
        assert_eq!(read(&mut rtc, &mut p, REG_C, T0 + 2 * S), 0);
        // Disabling the enable drops IRQF too.
        rtc.tick(T0 + 3 * S, &mut p);
        assert_eq!(p.lines, 1 << IRQ);
        write(&mut rtc, &mut p, REG_B, B_24H, T0 + 3 * S);
        assert_eq!(p.lines, 0);
        assert_eq!(p.rising_edges[usize::from(IRQ)], 2);
    }

    /// Counts the interrupts in (from, until] the way a guest handler does: run to
    /// each event, check IRQ 8, read C.
    fn count_irqs(rtc: &mut RtcCmos, p: &mut RecordingPlatform, until: Nanos) -> (u32, Vec<u8>) {
        let mut count = 0;
        let mut flags = Vec::new();
        while let Some(t) = rtc.next_event() {
            if t > until {
                break;
            }
            rtc.tick(t, p);
            assert_eq!(p.lines, 1 << IRQ, "IRQ at {t}");
            let c = read(rtc, p, REG_C, t);
            assert_ne!(c & C_IRQF, 0);
            flags.push(c);
            count += 1;
        }
        (count, flags)
    }

    #[test]
    fn periodic_rates_do_not_drift() {
        for (rs, hz) in [(1u8, 256u32), (2, 128), (3, 8192), (6, 1024), (7, 512), (15, 2)] {
            let (mut rtc, mut p) = rtc();
            write(&mut rtc, &mut p, REG_A, 0x20 | rs, T0);
            write(&mut rtc, &mut p, REG_B, B_24H | B_PIE, T0);
            let (count, _) = count_irqs(&mut rtc, &mut p, T0 + 3 * S);
            assert_eq!(count, 3 * hz, "RS {rs}");
            assert_eq!(p.rising_edges[usize::from(IRQ)], 3 * hz);
        }
        // Over a long time, with late handling: still exactly the rate.
        let (mut rtc, mut p) = rtc();
        write(&mut rtc, &mut p, REG_A, 0x23, T0);
        write(&mut rtc, &mut p, REG_B, B_24H | B_PIE, T0);
        let first = rtc.next_event().unwrap();
        assert_eq!(first, T0 + 122_071); // ceil(1e9 / 8192)
        let mut count = 0;
        let mut now = T0;
        while now < T0 + 100 * S {
            let t = rtc.next_event().unwrap();
            now = t + 50_000; // the handler runs 50 µs late
            rtc.tick(now, &mut p);
            read(&mut rtc, &mut p, REG_C, now);
            count += 1;
        }
        // Ticks k at ceil(k * 1e9 / 8192): 819_200 of them in 100 s.
        assert_eq!(count, 819_200);
        // RS = 0: no periodic interrupt.
        write(&mut rtc, &mut p, REG_A, 0x20, now);
        assert_eq!(rtc.next_event(), None);
        assert_eq!(read(&mut rtc, &mut p, REG_C, now + S) & C_PF, 0);
    }

    #[test]
    fn update_interrupt_once_per_second() {
        let (mut rtc, mut p) = rtc();
        write(&mut rtc, &mut p, REG_B, B_24H | B_UIE, T0);
        assert_eq!(rtc.next_event(), Some(T0 + S));
        let mut times = Vec::new();
        while let Some(t) = rtc.next_event().filter(|&t| t <= T0 + 5 * S) {
            rtc.tick(t, &mut p);
            times.push((t, read(&mut rtc, &mut p, REG_SECONDS, t)));
            assert_eq!(read(&mut rtc, &mut p, REG_C, t), C_IRQF | C_UF | C_PF);
        }
        assert_eq!(
            times,
            [(T0 + S, 0x08), (T0 + 2 * S, 0x09), (T0 + 3 * S, 0x10), (T0 + 4 * S, 0x11), (T0 + 5 * S, 0x12)]
        );
        assert_eq!(p.rising_edges[usize::from(IRQ)], 5);
        // Unhandled: the line stays high, one edge, nothing more to wake for.
        rtc.tick(T0 + 9 * S, &mut p);
        assert_eq!(p.rising_edges[usize::from(IRQ)], 6);
        assert_eq!(rtc.next_event(), None);
    }

    #[test]
    fn alarm_with_dont_care() {
        let (mut rtc, mut p) = rtc();
        // Every minute at second 30: 13:45:30 is 23 s away.
        write(&mut rtc, &mut p, REG_ALARM_SECONDS, 0x30, T0);
        write(&mut rtc, &mut p, REG_ALARM_MINUTES, 0xC0, T0);
        write(&mut rtc, &mut p, REG_ALARM_HOURS, 0xFF, T0);
        write(&mut rtc, &mut p, REG_B, B_24H | B_AIE, T0);
        let (count, flags) = count_irqs(&mut rtc, &mut p, T0 + 23 * S + 3 * 60 * S);
        assert_eq!(count, 4);
        assert!(flags.iter().all(|&c| c & C_AF != 0));
        assert_eq!(read(&mut rtc, &mut p, REG_SECONDS, T0 + 23 * S + 3 * 60 * S), 0x30);
        // Exactly 14:00:00: the next event is at that update.
        let now = T0 + 23 * S + 3 * 60 * S;
        write(&mut rtc, &mut p, REG_ALARM_SECONDS, 0x00, now);
        write(&mut rtc, &mut p, REG_ALARM_MINUTES, 0x00, now);
        write(&mut rtc, &mut p, REG_ALARM_HOURS, 0x14, now);
        let at = T0 + (14 * 3600 - (13 * 3600 + 45 * 60 + 7)) * S;
        assert_eq!(rtc.next_event(), Some(at));
        // Passing it without ticking still sets AF (polled).
        assert_eq!(read(&mut rtc, &mut p, REG_C, at - 1) & C_AF, 0);
        assert_eq!(read(&mut rtc, &mut p, REG_C, at + 2 * S) & (C_AF | C_IRQF), C_AF | C_IRQF);
        // Tomorrow at the same time.
        assert_eq!(rtc.next_event(), Some(at + 86_400 * S));
        // 12-hour mode: 2 PM is 0x82.
        write(&mut rtc, &mut p, REG_B, B_AIE, at + 2 * S);
        assert_eq!(rtc.next_event(), None, "0x14 is not a 12-hour BCD hour");
        write(&mut rtc, &mut p, REG_ALARM_HOURS, 0x82, at + 2 * S);
        assert_eq!(rtc.next_event(), Some(at + 86_400 * S));
        // An impossible alarm never fires.
        write(&mut rtc, &mut p, REG_ALARM_SECONDS, 0x60, at + 2 * S);
        assert_eq!(rtc.next_event(), None);
        assert_eq!(read(&mut rtc, &mut p, REG_C, at + 3 * 86_400 * S) & C_AF, 0);
    }

    #[test]
    fn alarm_search_bounds() {
        let mut rtc = RtcCmos::new(0, 0);
        for (alarm, wall, delta) in [
            ([0xFF, 0xFF, 0xFF], 0, Some(1)),
            ([0x00, 0xFF, 0xFF], 59, Some(1)),
            ([0x00, 0x00, 0x00], 0, Some(86_400)),
            ([0x59, 0x59, 0x23], 86_399, Some(86_400)),
            ([0x30, 0x10, 0xC0], 3600 + 11 * 60, Some(59 * 60 + 30)),
            ([0x00, 0x61, 0xFF], 0, None),
        ] {
            rtc.cmos[1] = alarm[0];
            rtc.cmos[3] = alarm[1];
            rtc.cmos[5] = alarm[2];
            assert_eq!(rtc.alarm_delta(wall), delta, "{alarm:x?} at {wall}");
        }
    }

    #[test]
    fn reset_pin_keeps_time_and_ram_and_clears_interrupts() {
        let (mut rtc, mut p) = rtc();
        write(&mut rtc, &mut p, 0x40, 0xA5, T0);
        write(&mut rtc, &mut p, REG_B, B_24H | B_DM | B_PIE | B_UIE | B_SQWE, T0);
        // Let a periodic tick and an update come due: IRQ 8 rises.
        rtc.tick(T0 + 2 * S, &mut p);
        assert_ne!(p.lines & (1 << IRQ), 0);
        let before = time(&mut rtc, &mut p, T0 + 2 * S);
        rtc.reset_pin(T0 + 2 * S, &mut p);
        assert_eq!(p.lines & (1 << IRQ), 0, "IRQ 8 goes low");
        // Register B keeps its data modes, loses its interrupt enables and SQWE.
        assert_eq!(read(&mut rtc, &mut p, REG_B, T0 + 2 * S), B_24H | B_DM);
        assert_eq!(read(&mut rtc, &mut p, REG_C, T0 + 2 * S), 0);
        assert_eq!(read(&mut rtc, &mut p, REG_A, T0 + 2 * S) & !A_UIP, A_DEFAULT);
        assert_eq!(read(&mut rtc, &mut p, 0x40, T0 + 2 * S), 0xA5, "NVRAM survives");
        assert_eq!(time(&mut rtc, &mut p, T0 + 2 * S), before, "the clock survives");
        // The clock keeps running, and nothing is enabled to raise IRQ 8 any more.
        assert_eq!(rtc.next_event(), None);
        rtc.tick(T0 + 5 * S, &mut p);
        assert_eq!(p.lines & (1 << IRQ), 0);
        let later = time(&mut rtc, &mut p, T0 + 5 * S);
        assert_eq!(later[0], before[0] + 3, "seconds advanced by 3 (binary mode)");
    }

    #[test]
    fn nvram_and_index_port() {
        let (mut rtc, mut p) = rtc();
        rtc.set_nvram(0x34, 0x12);
        rtc.set_nvram(0x5D, 0x01);
        rtc.set_nvram(0x05, 0x99); // a clock byte: ignored
        rtc.set_nvram(0x32, 0x99); // the century: ignored
        rtc.set_nvram(0x80, 0x99); // out of range: ignored
        assert_eq!(read(&mut rtc, &mut p, 0x34, T0), 0x12);
        assert_eq!(read(&mut rtc, &mut p, 0x5D, T0), 0x01);
        assert_eq!(read(&mut rtc, &mut p, 0x05, T0), 0x00);
        assert_eq!(read(&mut rtc, &mut p, 0x32, T0), 0x20);
        // The guest writes NVRAM; bit 7 of the index is the NMI mask.
        write(&mut rtc, &mut p, 0x80 | 0x7F, 0x42, T0);
        assert!(rtc.nmi_disabled());
        assert_eq!(read(&mut rtc, &mut p, 0x7F, T0), 0x42);
        assert!(!rtc.nmi_disabled());
        // The index port reads as open bus; a word write selects and writes.
        assert_eq!(rtc.read(INDEX_PORT, 1, T0, &mut p), 0xFF);
        rtc.write(INDEX_PORT, 2, 0x5510, T0, &mut p);
        assert_eq!(read(&mut rtc, &mut p, 0x10, T0), 0x55);
        rtc.write(INDEX_PORT, 1, 0x10, T0, &mut p);
        assert_eq!(rtc.read(INDEX_PORT, 2, T0, &mut p), 0x55FF);
        assert_eq!(rtc.read(DATA_PORT, 3, T0, &mut p), open_bus(3));
    }
}
