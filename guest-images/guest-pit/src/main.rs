//! `guest-pit`: the 8254 PIT (ports 0x40-0x43) and system control port B (0x61), which
//! the hypervisor forwards to the service partition's `hv_devices` PIT model, with IRQ
//! 0 reaching this guest through the virtual I/O APIC (ISA IRQ 0 is GSI 2, as the MADT
//! override on PC chipsets says). Run with the `pit` device (or `pc`).
//!
//! 1. Counter 0 in mode 2 (rate generator), LSB then MSB, divisor 11932 (about 100 Hz):
//!    the read-back command's status byte shows that mode and access.
//! 2. Counter latch command: two latched reads of counter 0 in a row give a count in
//!    1..=11932 that decreases from the first to the second (retried a few times, as
//!    the second read may fall after a reload).
//! 3. I/O APIC pin 2 → vector 0x50 (fixed, edge, active high, to vCPU 0): the IRQ 0
//!    interrupts over 200 ms of TSC time (the frequency from CPUID 0x4000_0010) must
//!    number 10..=30 (20 expected). Then the pin is masked and counter 0 stopped (a mode
//!    0 control word without a count).
//! 4. Counter 2 in mode 0 (interrupt on terminal count) with count 11932 (10 ms), gated
//!    by port 0x61 bit 0 and read through port 0x61 bit 5 (OUT 2): OUT is low after the
//!    control word; with the gate low it stays low for 20 ms (counting is suspended);
//!    with the gate high it rises after 9..=60 ms (10 ms expected) and stays high.
//!
//! Expected console lines (prefix = the partition's name in the config, e.g. `[pit]`),
//! in this order, among the `PASS guest-pit: ...` check lines (N, A, B, T vary):
//! ```text
//! [pit] pit: latched count A then B
//! [pit] pit: N interrupts in 200 ms
//! [pit] pit: channel 2 OUT rose T us after the gate went high (count 11932)
//! [pit] PASS guest-pit
//! ```
//! On a failed check: `FAIL guest-pit: <check>`, then `FAIL guest-pit`, and the guest
//! stops with code 1.
#![no_std]
#![no_main]

use guest_rt::interrupts::{cli, count, delay_us, sti, tsc, tsc_to_us, us_to_tsc};
use guest_rt::ioapic::{self, entry};
use guest_rt::port::{inb, outb};
use guest_rt::{check, check_fmt, exceptions, lapic, println, stop};

const NAME: &str = "guest-pit";

const COUNTER0: u16 = 0x40;
const COUNTER2: u16 = 0x42;
const CONTROL: u16 = 0x43;
const PORT_B: u16 = 0x61;

/// Control words (8254 datasheet, "Control Word Format"): SC1 SC0 RW1 RW0 M2 M1 M0 BCD.
const CW_COUNTER0_LSB_MSB_MODE2: u8 = 0b0011_0100;
const CW_COUNTER0_LSB_MSB_MODE0: u8 = 0b0011_0000;
const CW_COUNTER2_LSB_MSB_MODE0: u8 = 0b1011_0000;
/// Counter latch command for counter 0 (SC = 00, RW = 00).
const CW_LATCH_COUNTER0: u8 = 0b0000_0000;
/// Read-back command: latch the status (not the count) of counter 0.
const CW_READ_BACK_STATUS0: u8 = 0b1110_0010;

/// About 100 Hz: 1193182 / 11932 = 99.998 Hz.
const DIVISOR: u16 = 11932;
/// Port B: counter 2's GATE (read/write).
const PORT_B_GATE2: u8 = 1 << 0;
/// Port B: speaker data enable (kept off).
const PORT_B_SPEAKER: u8 = 1 << 1;
/// Port B: counter 2's OUT (read-only).
const PORT_B_OUT2: u8 = 1 << 5;

/// ISA IRQ 0 is I/O APIC pin 2.
const PIN: u32 = 2;
const VECTOR: u8 = 0x50;
const MEASURE_US: u64 = 200_000;
const EXPECTED: core::ops::RangeInclusive<u64> = 10..=30;

/// Writes a 16-bit count to `port`, LSB then MSB.
fn write_count(port: u16, count: u16) {
    let [low, high] = count.to_le_bytes();
    outb(port, low);
    outb(port, high);
}

/// Latches counter 0 and reads the latched count, LSB then MSB.
fn latched_count0() -> u16 {
    outb(CONTROL, CW_LATCH_COUNTER0);
    let low = inb(COUNTER0);
    let high = inb(COUNTER0);
    u16::from_le_bytes([low, high])
}

fn out2() -> bool {
    inb(PORT_B) & PORT_B_OUT2 != 0
}

/// Sets counter 2's gate, speaker off.
fn gate2(high: bool) {
    let b = inb(PORT_B) & !(PORT_B_SPEAKER | PORT_B_GATE2);
    outb(PORT_B, b | if high { PORT_B_GATE2 } else { 0 });
}

/// Entry point (see `hv_abi::start`).
#[no_mangle]
#[link_section = ".text._start"]
pub extern "C" fn _start(_vcpu: u64, _ram: u64) -> ! {
    exceptions::install();
    lapic::sync_mode();
    lapic::enable();
    let mut ok = true;

    // 1. Counter 0, mode 2, about 100 Hz.
    outb(CONTROL, CW_COUNTER0_LSB_MSB_MODE2);
    write_count(COUNTER0, DIVISOR);
    outb(CONTROL, CW_READ_BACK_STATUS0);
    let status = inb(COUNTER0);
    ok &= check_fmt(
        NAME,
        format_args!("read-back status of counter 0 shows LSB/MSB access, mode 2, binary ({status:#04x})"),
        status & 0x3F == 0x34,
    );

    // 2. Counter latch: the count goes down between two latched reads (unless a reload
    // fell in between; then try again).
    let mut pair = (0, 0);
    let mut decreased = false;
    for _ in 0..10 {
        let a = latched_count0();
        let b = latched_count0();
        pair = (a, b);
        let in_range = |c: u16| (1..=DIVISOR).contains(&c);
        if in_range(a) && in_range(b) && b < a {
            decreased = true;
            break;
        }
    }
    println!("pit: latched count {} then {}", pair.0, pair.1);
    ok &= check(NAME, "two latched reads of counter 0 give a decreasing count in 1..=11932", decreased);

    // 3. IRQ 0 through I/O APIC pin 2.
    ioapic::write_entry(PIN, entry::FIXED | entry::dest(0) | u64::from(VECTOR));
    sti();
    let before = count(VECTOR);
    let start = tsc();
    while tsc().wrapping_sub(start) < us_to_tsc(MEASURE_US) {
        core::hint::spin_loop();
    }
    let n = count(VECTOR) - before;
    ioapic::write_entry(PIN, entry::MASKED | entry::FIXED | entry::dest(0) | u64::from(VECTOR));
    cli();
    // Stop counter 0: a mode 0 control word without a count.
    outb(CONTROL, CW_COUNTER0_LSB_MSB_MODE0);
    println!("pit: {n} interrupts in 200 ms");
    ok &= check_fmt(NAME, format_args!("IRQ 0 came {n} times in 200 ms at ~100 Hz (10..=30)"), EXPECTED.contains(&n));

    // 4. Counter 2, mode 0, gated by port 0x61 bit 0, OUT 2 read at bit 5.
    gate2(false);
    outb(CONTROL, CW_COUNTER2_LSB_MSB_MODE0);
    ok &= check(NAME, "counter 2: OUT is low after a mode 0 control word", !out2());
    write_count(COUNTER2, DIVISOR);
    delay_us(20_000);
    ok &= check(NAME, "counter 2: with the gate low, OUT stays low past the count (20 ms)", !out2());
    let start = tsc();
    gate2(true);
    let limit = us_to_tsc(100_000);
    let mut rose = false;
    while tsc().wrapping_sub(start) < limit {
        if out2() {
            rose = true;
            break;
        }
    }
    let us = tsc_to_us(tsc().wrapping_sub(start));
    if rose {
        println!("pit: channel 2 OUT rose {us} us after the gate went high (count 11932)");
    }
    ok &= check_fmt(
        NAME,
        format_args!("counter 2: with the gate high, OUT rises after the count (~10000 us; took {us} us)"),
        rose && (9_000..=60_000).contains(&us),
    );
    delay_us(5_000);
    ok &= check(NAME, "counter 2: OUT stays high after terminal count", out2());
    gate2(false);

    if ok {
        println!("PASS {NAME}");
    } else {
        println!("FAIL {NAME}");
    }
    stop(if ok { 0 } else { 1 })
}
