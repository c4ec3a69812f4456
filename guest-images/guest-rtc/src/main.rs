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
//! 3. CMOS NVRAM: bytes 0x40-0x7F round-trip a pattern (also with the NMI-disable bit
//!    set in the index).
//! 4. Periodic interrupt: register A rate 0xA (64 Hz), register C read to clear old
//!    flags, B.PIE set; I/O APIC pin 8 → vector 0x58 (fixed, edge, active high, to vCPU
//!    0); the handler reads register C to acknowledge. The interrupts over 200 ms of TSC
//!    time must number 6..=20 (about 13 expected); then PIE is cleared and the pin
//!    masked.
//!
//! Expected console lines (prefix = the partition's name in the config, e.g. `[rtc]`),
//! in this order, among the `PASS guest-rtc: ...` check lines (SS and N vary):
//! ```text
//! [rtc] rtc: 2026-07-01 12:0M:SS
//! [rtc] rtc: N periodic interrupts in 200 ms
//! [rtc] PASS guest-rtc
//! ```
//! On a failed check: `FAIL guest-rtc: <check>`, then `FAIL guest-rtc`, and the guest
//! stops with code 1.
#![no_std]
#![no_main]

use guest_rt::cmos;
use guest_rt::interrupts::{cli, count, set_hook, sti, tsc, us_to_tsc};
use guest_rt::ioapic::{self, entry};
use guest_rt::{check, check_fmt, exceptions, lapic, println, stop};

const NAME: &str = "guest-rtc";

/// The NMI-disable bit of the index port.
const NMI_DISABLE: u8 = 0x80;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
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
const B_DM_BINARY: u8 = 0x04;
const B_24H: u8 = 0x02;
const C_IRQF: u8 = 0x80;
const C_PF: u8 = 0x40;
const D_VRT: u8 = 0x80;

/// ISA IRQ 8 is I/O APIC pin 8.
const PIN: u32 = 8;
const VECTOR: u8 = 0x58;
const MEASURE_US: u64 = 200_000;
const EXPECTED: core::ops::RangeInclusive<u64> = 6..=20;

/// The handler of the periodic interrupt: reading register C acknowledges it (and
/// lowers IRQ 8).
fn on_rtc(_vector: u8) -> bool {
    cmos::read(REG_C);
    true
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
pub extern "C" fn _start(_vcpu: u64, _ram: u64) -> ! {
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

    // 3. NVRAM round trip.
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

    if ok {
        println!("PASS {NAME}");
    } else {
        println!("FAIL {NAME}");
    }
    stop(if ok { 0 } else { 1 })
}
