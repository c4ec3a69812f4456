//! `guest-rtc`: the MC146818A real-time clock and CMOS RAM (index port 0x70, data port
//! 0x71), which the hypervisor forwards to the service partition's `hv_devices` RTC
//! model, with IRQ 8 reaching this guest through the virtual I/O APIC (pin 8). Run with
//! the `rtc` device (or `pc`).
//!
//! 1. Status registers: B shows 24-hour BCD mode (the power-on state), D shows valid RAM
//!    and time (VRT).
//! 2. The date and time, read as OSes do: wait until register A's update-in-progress
//!    bit (UIP, bit 7) is clear, read every time byte, and repeat until two reads in a
//!    row agree. Every byte is valid BCD, and the clock shows the host's time: the
//!    scenarios start Bochs' clock (the machine's CMOS RTC, which the hypervisor reads
//!    at boot and the service partition's RTC starts from) at 2026-07-01T12:00:00Z, so
//!    the guest sees 2026-07-01 (a Wednesday: day of week 4; century byte 0x32 = 20)
//!    within ten minutes after 12:00, the firmware's and the boot's emulated time
//!    (the service partition's fallback when the hypervisor has no time is 2026-01-01,
//!    which fails the check). Register B's DM bit switches the year to binary (26) and
//!    back.
//! 3. CMOS NVRAM: the memory-size bytes a PC BIOS leaves (base memory 0x15/0x16 = 640
//!    KiB, extended memory above 1 MiB in KiB at 0x17/0x18 and 0x30/0x31, memory above
//!    16 MiB in 64 KiB units at 0x34/0x35) match the RAM size the guest was started
//!    with (ESI); bytes 0x40-0x7F round-trip a pattern (also with the NMI-disable bit
//!    set in the index).
//! 4. Periodic interrupt: register A rate 0xA (64 Hz), register C read to clear old
//!    flags, B.PIE set; I/O APIC pin 8 → vector 0x58 (fixed, edge, active high, to vCPU
//!    0); the handler reads register C to acknowledge. The interrupts over 200 ms of TSC
//!    time must number 6..=20 (about 13 expected); then PIE is cleared and the pin
//!    masked.
//! 5. Update in progress: after a time read (UIP clear), register A is polled back to
//!    back until UIP (bit 7) reads 1 (bounded by 1.5 s: an update comes every second),
//!    then until it reads 0 again; UIP must be seen, must clear within 10 ms (the model
//!    holds it for the last 244 µs before the update, a real chip at most 2228 µs; the
//!    bound is generous for the service partition's and Bochs' latencies), and the
//!    seconds byte must have advanced by exactly one across it. Each poll is two
//!    forwarded port accesses (a few µs of Bochs time), so the 244 µs window spans
//!    many polls.
//! 6. Alarm interrupt, twice: the alarm bytes (0x01 seconds, 0x03 minutes, 0x05
//!    hours) set two seconds after a fresh time read, first as an exact time, then
//!    with the minutes and hours "don't care" (0xC0 / 0xFF); register C read to clear
//!    old flags, B.AIE set (PIE clear), I/O APIC pin 8 → vector 0x58 unmasked. Exactly
//!    one interrupt must arrive, 0.5 s to 3.5 s after AIE was set (nominally 1-2 s;
//!    the margins cover the service partition's wake-up latency and the TSC/RTC
//!    skew under Bochs), register C read by its handler must show AF | IRQF, and the
//!    seconds byte read right after must be the alarm's second or the next one.
//!
//! Expected console lines (prefix = the partition's name in the config, e.g. `[rtc]`),
//! in this order, among the `PASS guest-rtc: ...` check lines (SS and N vary):
//! ```text
//! [rtc] rtc: 2026-07-01 12:0M:SS
//! [rtc] rtc: N periodic interrupts in 200 ms
//! [rtc] PASS guest-rtc: UIP (register A bit 7) is seen set before the update, clears within 10 ms ...
//! [rtc] PASS guest-rtc: alarm at an exact time (12:0M:SS): one interrupt through I/O APIC pin 8 ...
//! [rtc] PASS guest-rtc: alarm with don't-care minutes and hours (ff:c0:SS): one interrupt ...
//! [rtc] PASS guest-rtc
//! ```
//! On a failed check: `FAIL guest-rtc: <check>`, then `FAIL guest-rtc`, and the guest
//! stops with code 1.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU8, Ordering};

use guest_rt::cmos;
use guest_rt::interrupts::{cli, count, last_tsc, set_hook, sti, tsc, tsc_to_us, us_to_tsc, wait_for};
use guest_rt::ioapic::{self, entry};
use guest_rt::{check, check_fmt, exceptions, lapic, println, stop};

const NAME: &str = "guest-rtc";

/// The NMI-disable bit of the index port.
const NMI_DISABLE: u8 = 0x80;

const REG_SECONDS: u8 = 0x00;
const REG_ALARM_SECONDS: u8 = 0x01;
const REG_MINUTES: u8 = 0x02;
const REG_ALARM_MINUTES: u8 = 0x03;
const REG_HOURS: u8 = 0x04;
const REG_ALARM_HOURS: u8 = 0x05;
const REG_DAY_OF_WEEK: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0A;
const REG_B: u8 = 0x0B;
const REG_C: u8 = 0x0C;
const REG_D: u8 = 0x0D;
const REG_CENTURY: u8 = 0x32;

const A_UIP: u8 = 0x80;
const A_RS: u8 = 0x0F;
/// Rate select 0xA: 32768 >> 9 = 64 Hz.
const RATE_64HZ: u8 = 0x0A;
const B_PIE: u8 = 0x40;
const B_AIE: u8 = 0x20;
const B_DM_BINARY: u8 = 0x04;
const B_24H: u8 = 0x02;
const C_IRQF: u8 = 0x80;
const C_PF: u8 = 0x40;
const C_AF: u8 = 0x20;
const D_VRT: u8 = 0x80;

/// ISA IRQ 8 is I/O APIC pin 8.
const PIN: u32 = 8;
const VECTOR: u8 = 0x58;
const MEASURE_US: u64 = 200_000;
const EXPECTED: core::ops::RangeInclusive<u64> = 6..=20;

/// How long to poll register A for UIP: an update comes every second.
const UIP_SEARCH_US: u64 = 1_500_000;
/// How long UIP may stay set: the model's 244 µs, a real chip's 2228 µs at most, and a
/// generous margin for the forwarding and Bochs' instruction-driven time.
const UIP_MAX_US: u64 = 10_000;
/// An "alarm byte matches anything" value (0xC0-0xFF).
const DONT_CARE: u8 = 0xC0;
/// How far ahead of the time read the alarm is set: the update to that second comes
/// 1 to 2 s later.
const ALARM_AHEAD_SECS: u8 = 2;
/// When the alarm interrupt may arrive, in ms after AIE is set: nominally 1000-2000,
/// with generous margins for the service partition's wake-up latency and the skew
/// between the guest's TSC and the service partition's clock under Bochs.
const ALARM_WINDOW_MS: core::ops::RangeInclusive<u64> = 500..=3_500;

/// Register C as the last interrupt handler read it.
static LAST_C: AtomicU8 = AtomicU8::new(0);

/// The handler of IRQ 8: reading register C acknowledges the interrupt (and lowers
/// IRQ 8); the value is kept for the checks.
fn on_rtc(_vector: u8) -> bool {
    LAST_C.store(cmos::read(REG_C), Ordering::SeqCst);
    true
}

fn from_bcd(byte: u8) -> u8 {
    (byte >> 4) * 10 + (byte & 0x0F)
}

fn to_bcd(value: u8) -> u8 {
    ((value / 10) << 4) | (value % 10)
}

/// The BCD time `hours:minutes:seconds` plus `secs` (less than a minute), in BCD,
/// wrapping at midnight.
fn bcd_time_plus(hours: u8, minutes: u8, seconds: u8, secs: u8) -> (u8, u8, u8) {
    let total = (u32::from(from_bcd(hours)) * 3600
        + u32::from(from_bcd(minutes)) * 60
        + u32::from(from_bcd(seconds))
        + u32::from(secs))
        % 86_400;
    // Each part is below 60 (hours below 24): the casts are exact.
    let part = |value: u32| to_bcd(value as u8);
    (part(total / 3600), part(total / 60 % 60), part(total % 60))
}

/// Polls register A back to back, after a time read, until UIP reads 1 and then 0
/// again. Returns (polls before UIP was seen, or `None` if it never was; how long it
/// stayed set in µs, `None` if it did not clear within [`UIP_MAX_US`]; the seconds
/// before and after).
fn uip_across_update() -> (Option<u32>, Option<u64>, u8, u8) {
    let mut ignored = 0;
    wait_uip_clear(&mut ignored);
    let before = cmos::read(REG_SECONDS);
    let mut polls = 0u32;
    let start = tsc();
    let mut seen = None;
    while tsc().wrapping_sub(start) < us_to_tsc(UIP_SEARCH_US) {
        polls += 1;
        if cmos::read(REG_A) & A_UIP != 0 {
            seen = Some(polls);
            break;
        }
    }
    let mut held = None;
    if seen.is_some() {
        let set_at = tsc();
        if wait_for(|| cmos::read(REG_A) & A_UIP == 0, us_to_tsc(UIP_MAX_US)) {
            held = Some(tsc_to_us(tsc().wrapping_sub(set_at)));
        }
    }
    (seen, held, before, cmos::read(REG_SECONDS))
}

/// Sets the alarm `ALARM_AHEAD_SECS` after a fresh time read (minutes and hours
/// "don't care" if `dont_care`), enables only AIE with I/O APIC pin 8 unmasked, and
/// waits for the interrupt. `b` is register B to return to. Returns whether the check
/// passed.
fn alarm(b: u8, dont_care: bool) -> bool {
    let mut ignored = 0;
    let Some(now) = read_time(&mut ignored) else {
        return check(NAME, "alarm: the time can be read", false);
    };
    let (hours, minutes, seconds) = bcd_time_plus(now[2], now[1], now[0], ALARM_AHEAD_SECS);
    let (hours, minutes) = if dont_care { (0xFF, DONT_CARE) } else { (hours, minutes) };
    cmos::write(REG_ALARM_SECONDS, seconds);
    cmos::write(REG_ALARM_MINUTES, minutes);
    cmos::write(REG_ALARM_HOURS, hours);
    LAST_C.store(0, Ordering::SeqCst);
    // Old flags (an earlier alarm match, PF of the rate still selected) go away.
    cmos::read(REG_C);
    ioapic::write_entry(PIN, entry::FIXED | entry::dest(0) | u64::from(VECTOR));
    let before = count(VECTOR);
    cmos::write(REG_B, (b & !B_PIE) | B_AIE);
    let start = tsc();
    sti();
    let max_ms = *ALARM_WINDOW_MS.end();
    wait_for(|| count(VECTOR) != before, us_to_tsc(max_ms * 1000));
    // A second interrupt (there should be none) would show within this short grace.
    let after_first = tsc();
    while tsc().wrapping_sub(after_first) < us_to_tsc(20_000) {
        core::hint::spin_loop();
    }
    cli();
    let at_second = cmos::read(REG_SECONDS);
    cmos::write(REG_B, b);
    ioapic::write_entry(PIN, entry::MASKED | entry::FIXED | entry::dest(0) | u64::from(VECTOR));
    cmos::read(REG_C);
    let n = count(VECTOR) - before;
    let c = LAST_C.load(Ordering::SeqCst);
    let ms = if n == 0 { 0 } else { tsc_to_us(last_tsc(VECTOR).wrapping_sub(start)) / 1000 };
    let next = bcd_time_plus(0, 0, seconds, 1).2;
    let what = if dont_care { "alarm with don't-care minutes and hours" } else { "alarm at an exact time" };
    check_fmt(
        NAME,
        format_args!(
            "{what} ({hours:02x}:{minutes:02x}:{seconds:02x}): one interrupt through I/O APIC pin 8 ({n} taken, \
             {ms} ms after AIE, 500..=3500), register C shows AF|IRQF ({c:#04x}), seconds then {at_second:02x}"
        ),
        n == 1
            && ALARM_WINDOW_MS.contains(&ms)
            && c & (C_AF | C_IRQF) == C_AF | C_IRQF
            && (at_second == seconds || at_second == next),
    )
}

/// The time bytes, in the order seconds, minutes, hours, day of week, day, month,
/// year, century.
type Time = [u8; 8];

fn read_time_bytes() -> Time {
    [REG_SECONDS, REG_MINUTES, REG_HOURS, REG_DAY_OF_WEEK, REG_DAY, REG_MONTH, REG_YEAR, REG_CENTURY].map(cmos::read)
}

/// Waits (bounded: 2 s of TSC time, an update comes every second) until UIP is clear.
fn wait_uip_clear(seen_set: &mut u32) -> bool {
    let start = tsc();
    while tsc().wrapping_sub(start) < us_to_tsc(2_000_000) {
        if cmos::read(REG_A) & A_UIP == 0 {
            return true;
        }
        *seen_set += 1;
    }
    false
}

/// Reads the time as OSes do: UIP clear, read everything; again; until two reads agree.
fn read_time(seen_set: &mut u32) -> Option<Time> {
    for _ in 0..20 {
        if !wait_uip_clear(seen_set) {
            continue;
        }
        let first = read_time_bytes();
        if !wait_uip_clear(seen_set) {
            continue;
        }
        if read_time_bytes() == first {
            return Some(first);
        }
    }
    None
}

fn is_bcd(byte: u8) -> bool {
    byte & 0x0F <= 9 && byte >> 4 <= 9
}

/// Entry point (see `hv_abi::start`).
#[no_mangle]
#[link_section = ".text._start"]
pub extern "C" fn _start(_vcpu: u64, ram: u64) -> ! {
    exceptions::install();
    lapic::sync_mode();
    lapic::enable();
    let mut ok = true;

    // 1. Status registers.
    let b = cmos::read(REG_B);
    ok &= check_fmt(NAME, format_args!("register B: 24-hour BCD mode ({b:#04x})"), {
        b & (B_DM_BINARY | B_24H) == B_24H
    });
    let d = cmos::read(REG_D);
    ok &= check_fmt(NAME, format_args!("register D: valid RAM and time ({d:#04x})"), d == D_VRT);

    // 2. Date and time, with the update-in-progress rule.
    let mut uip_seen = 0;
    let time = read_time(&mut uip_seen);
    ok &= check(NAME, "two reads in a row with UIP clear agree", time.is_some());
    let [second, minute, hour, weekday, day, month, year, century] = time.unwrap_or([0xFF; 8]);
    if time.is_some() {
        println!("rtc: {century:02x}{year:02x}-{month:02x}-{day:02x} {hour:02x}:{minute:02x}:{second:02x}");
    }
    ok &= check(NAME, "every time byte is valid BCD", time.is_some_and(|t| t.iter().all(|&b| is_bcd(b))));
    ok &= check_fmt(
        NAME,
        format_args!(
            "the date is the host's, 2026-07-01, a Wednesday (day of week {weekday:#04x}, century {century:#04x})"
        ),
        (century, year, month, day, weekday) == (0x20, 0x26, 0x07, 0x01, 0x04),
    );
    ok &= check(NAME, "the time is the host's, within ten minutes after 12:00 (12:0M:SS)", {
        hour == 0x12 && minute < 0x10 && second < 0x60
    });
    println!("{NAME}: UIP read as set {uip_seen} times while waiting");
    cmos::write(REG_B, b | B_DM_BINARY);
    let binary_year = cmos::read(REG_YEAR);
    cmos::write(REG_B, b);
    let bcd_year = cmos::read(REG_YEAR);
    ok &= check_fmt(
        NAME,
        format_args!("register B.DM switches the year to binary ({binary_year}) and back to BCD ({bcd_year:#04x})"),
        binary_year == 26 && bcd_year == 0x26,
    );

    // 3. The memory-size bytes, then an NVRAM round trip.
    let word = |index: u8| u64::from(cmos::read(index)) | u64::from(cmos::read(index + 1)) << 8;
    let (base, extended, extended_copy, above_16m) = (word(0x15), word(0x17), word(0x30), word(0x34));
    ok &= check_fmt(
        NAME,
        format_args!(
            "the CMOS memory-size bytes match the {} MiB of RAM: base {base} KiB, extended {extended} KiB (copy {extended_copy}), {above_16m} x 64 KiB above 16 MiB",
            ram >> 20
        ),
        base == 640
            && extended == ((ram - (1 << 20)) >> 10).min(0xFFFF)
            && extended_copy == extended
            && above_16m == (ram.saturating_sub(16 << 20) >> 16).min(0xFFFF),
    );
    let pattern = |i: u8| i.wrapping_mul(37) ^ 0xA5;
    for index in 0x40..0x80u8 {
        cmos::write(index, pattern(index));
    }
    let bad = (0x40..0x80u8).filter(|&i| cmos::read(i) != pattern(i)).count();
    ok &= check_fmt(NAME, format_args!("CMOS bytes 0x40-0x7f round-trip ({bad} differ)"), bad == 0);
    ok &= check(NAME, "the NMI-disable bit in the index selects the same byte", {
        cmos::read(NMI_DISABLE | 0x55) == pattern(0x55)
    });

    // 4. The periodic interrupt at 64 Hz through I/O APIC pin 8.
    let a = cmos::read(REG_A);
    cmos::write(REG_A, (a & !(A_RS | A_UIP)) | RATE_64HZ);
    let a = cmos::read(REG_A);
    ok &= check_fmt(NAME, format_args!("register A: rate select 0xa reads back ({a:#04x})"), a & A_RS == RATE_64HZ);
    cmos::read(REG_C);
    set_hook(VECTOR, Some(on_rtc));
    ioapic::write_entry(PIN, entry::FIXED | entry::dest(0) | u64::from(VECTOR));
    cmos::write(REG_B, b | B_PIE);
    sti();
    let before = count(VECTOR);
    let start = tsc();
    while tsc().wrapping_sub(start) < us_to_tsc(MEASURE_US) {
        core::hint::spin_loop();
    }
    let n = count(VECTOR) - before;
    cli();
    cmos::write(REG_B, b);
    ioapic::write_entry(PIN, entry::MASKED | entry::FIXED | entry::dest(0) | u64::from(VECTOR));
    println!("rtc: {n} periodic interrupts in 200 ms");
    ok &= check_fmt(NAME, format_args!("{n} periodic interrupts at 64 Hz in 200 ms (6..=20)"), EXPECTED.contains(&n));
    // With PIE clear, PF still sets (C shows it) but IRQF does not.
    let c = cmos::read(REG_C);
    let flag_wait = tsc();
    while tsc().wrapping_sub(flag_wait) < us_to_tsc(50_000) {
        core::hint::spin_loop();
    }
    let c2 = cmos::read(REG_C);
    ok &= check_fmt(
        NAME,
        format_args!("with PIE clear, register C shows PF without IRQF ({c:#04x} then {c2:#04x})"),
        c2 & (C_PF | C_IRQF) == C_PF,
    );

    // 5. UIP, seen while polling across a second boundary.
    let (seen, held, before, after) = uip_across_update();
    let polls = seen.unwrap_or(0);
    let held_us = held.unwrap_or(u64::MAX);
    ok &= check_fmt(
        NAME,
        format_args!(
            "UIP (register A bit 7) is seen set before the update, clears within 10 ms ({polls} polls, set for \
             {held_us} us) and the seconds advance by one ({before:02x} -> {after:02x})"
        ),
        seen.is_some() && held.is_some() && after == bcd_time_plus(0, 0, before, 1).2,
    );

    // 6. Alarm interrupts: an exact time, then don't-care minutes and hours.
    ok &= alarm(b, false);
    ok &= alarm(b, true);

    if ok {
        println!("PASS {NAME}");
    } else {
        println!("FAIL {NAME}");
    }
    stop(if ok { 0 } else { 1 })
}
