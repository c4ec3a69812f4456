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
//! 5. Counter 0 in mode 3 (square wave), divisor 5966 (about 200 Hz): the status byte
//!    shows mode 3, and the IRQ 0 interrupts over 200 ms must number 20..=60 (40
//!    expected: one per period, at OUT's rising edge). Then counter 0 is stopped again.
//! 6. Counter 2 in mode 3 with count 23864 (period 20 ms, OUT high for 11932 clocks and
//!    low for 11932, 10 ms each): OUT is high after the control word and stays high with
//!    the gate low (not counting); with the gate high, the first six level changes of OUT
//!    (high→low first) each come 5..=20 ms after the one before (10 ms expected; the
//!    bounds are generous because each change is seen by polling port 0x61, a forwarded
//!    access of some tens of microseconds, and a late poll shortens the next interval);
//!    eight latched reads while it runs are all even, in 2..=23864, and not all equal
//!    (mode 3 decrements by two); taking the gate low while OUT is low sets OUT high at
//!    once, and it stays high for 25 ms.
//! 7. One-byte access modes, counter 2 in mode 0 with the gate low (so CE holds the
//!    count): LSB only, count byte 0xA5, then MSB only, count byte 0x5A (count 0x5A00).
//!    Each time the read-back status byte is exactly RW = LSB (0x10) or MSB (0x20),
//!    mode 0, binary, OUT low, count loaded; a latched read returns that one byte, and
//!    so does the next (unlatched) read, as there is no LSB/MSB flip-flop.
//!
//! Expected console lines (prefix = the partition's name in the config, e.g. `[pit]`),
//! in this order, among the `PASS guest-pit: ...` check lines (N, M, A, B, T, H vary):
//! ```text
//! [pit] pit: latched count A then B
//! [pit] pit: N interrupts in 200 ms
//! [pit] pit: channel 2 OUT rose T us after the gate went high (count 11932)
//! [pit] pit: mode 3: M interrupts in 200 ms
//! [pit] pit: channel 2 square wave half-periods H H H H H H us (count 23864)
//! [pit] PASS guest-pit
//! ```
//! On a failed check: `FAIL guest-pit: <check>`, then `FAIL guest-pit`, and the guest
//! stops with code 1.
#![no_std]
#![no_main]

use guest_rt::interrupts::{cli, count, delay_us, sti, tsc, tsc_to_us, us_to_tsc, wait_for};
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
const CW_COUNTER0_LSB_MSB_MODE3: u8 = 0b0011_0110;
const CW_COUNTER2_LSB_MSB_MODE3: u8 = 0b1011_0110;
const CW_COUNTER2_LSB_MODE0: u8 = 0b1001_0000;
const CW_COUNTER2_MSB_MODE0: u8 = 0b1010_0000;
/// Counter latch command for counter 0 (SC = 00, RW = 00).
const CW_LATCH_COUNTER0: u8 = 0b0000_0000;
/// Counter latch command for counter 2 (SC = 10, RW = 00).
const CW_LATCH_COUNTER2: u8 = 0b1000_0000;
/// Read-back command: latch the status (not the count) of counter 0.
const CW_READ_BACK_STATUS0: u8 = 0b1110_0010;
/// Read-back command: latch the status (not the count) of counter 2.
const CW_READ_BACK_STATUS2: u8 = 0b1110_1000;

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

/// About 200 Hz: 1193182 / 5966 = 199.997 Hz (counter 0 in mode 3).
const DIVISOR_MODE3: u16 = 5966;
/// IRQ 0 interrupts in `MEASURE_US` at about 200 Hz: 40 expected, half to 1.5 times that
/// accepted (as for mode 2).
const EXPECTED_MODE3: core::ops::RangeInclusive<u64> = 20..=60;
/// Counter 2's square wave: 23864 clocks = 20.000 ms, OUT high for 11932 clocks (10 ms)
/// and low for 11932.
const SQUARE_COUNT: u16 = 23864;
/// Accepted time between two observed level changes of OUT 2 (10 ms expected): half
/// to double, as the polling of port 0x61 can make one interval short and the next long.
const HALF_PERIOD_US: core::ops::RangeInclusive<u64> = 5_000..=20_000;
/// The level changes of OUT 2 to observe (three periods).
const EDGES: usize = 6;
/// Count bytes for the one-byte access modes.
const LSB_ONLY: u8 = 0xA5;
const MSB_ONLY: u8 = 0x5A;

/// Writes a 16-bit count to `port`, LSB then MSB.
fn write_count(port: u16, count: u16) {
    let [low, high] = count.to_le_bytes();
    outb(port, low);
    outb(port, high);
}

/// Latches a counter in LSB/MSB access (`latch` is its counter latch command, `port`
/// its port) and reads the latched count, LSB then MSB.
fn latched_count(latch: u8, port: u16) -> u16 {
    outb(CONTROL, latch);
    let low = inb(port);
    let high = inb(port);
    u16::from_le_bytes([low, high])
}

fn latched_count0() -> u16 {
    latched_count(CW_LATCH_COUNTER0, COUNTER0)
}

/// The IRQ 0 interrupts during `MEASURE_US` of TSC time, with I/O APIC pin 2 unmasked
/// and interrupts enabled only meanwhile.
fn irq0_interrupts() -> u64 {
    ioapic::write_entry(PIN, entry::FIXED | entry::dest(0) | u64::from(VECTOR));
    sti();
    let before = count(VECTOR);
    delay_us(MEASURE_US);
    let n = count(VECTOR) - before;
    ioapic::write_entry(PIN, entry::MASKED | entry::FIXED | entry::dest(0) | u64::from(VECTOR));
    cli();
    n
}

/// One-byte access mode `control` (counter 2, mode 0) with count byte `byte`, the gate
/// low: the status byte is `status`, a latched read and the next plain read give `byte`.
fn one_byte_access(control: u8, byte: u8, status: u8, what: &str) -> bool {
    gate2(false);
    outb(CONTROL, control);
    outb(COUNTER2, byte);
    // The count reaches CE at the next PIT clock (0.84 us); wait well past it.
    delay_us(100);
    outb(CONTROL, CW_READ_BACK_STATUS2);
    let got = inb(COUNTER2);
    let mut ok = check_fmt(
        NAME,
        format_args!("counter 2 {what}: read-back status is {status:#04x} (access as written, mode 0, binary, OUT low, count loaded; got {got:#04x})"),
        got == status,
    );
    outb(CONTROL, CW_LATCH_COUNTER2);
    let latched = inb(COUNTER2);
    let again = inb(COUNTER2);
    ok &= check_fmt(
        NAME,
        format_args!("counter 2 {what}: a latched read and the next read both give the byte written, {byte:#04x} ({latched:#04x}, {again:#04x})"),
        latched == byte && again == byte,
    );
    ok
}

fn out2() -> bool {
    inb(PORT_B) & PORT_B_OUT2 != 0
}

/// Sets counter 2's gate, speaker off.
fn gate2(high: bool) {
    let b = inb(PORT_B) & !(PORT_B_SPEAKER | PORT_B_GATE2);
    outb(PORT_B, b | if high { PORT_B_GATE2 } else { 0 });
}

/// Starts counter 0 with control word `control` (LSB/MSB access, binary, `mode`) and
/// count `divisor`, and checks that its read-back status says so (bits 5:0: RW = 11,
/// the mode, BCD = 0).
fn start_counter0(control: u8, divisor: u16, mode: u8) -> bool {
    outb(CONTROL, control);
    write_count(COUNTER0, divisor);
    outb(CONTROL, CW_READ_BACK_STATUS0);
    let status = inb(COUNTER0);
    check_fmt(
        NAME,
        format_args!("read-back status of counter 0 shows LSB/MSB access, mode {mode}, binary ({status:#04x})"),
        status & 0x3F == 0x30 | (mode << 1),
    )
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
    ok &= start_counter0(CW_COUNTER0_LSB_MSB_MODE2, DIVISOR, 2);

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
    let n = irq0_interrupts();
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

    // 5. Counter 0, mode 3, about 200 Hz: IRQ 0 once per period.
    ok &= start_counter0(CW_COUNTER0_LSB_MSB_MODE3, DIVISOR_MODE3, 3);
    let n = irq0_interrupts();
    outb(CONTROL, CW_COUNTER0_LSB_MSB_MODE0);
    println!("pit: mode 3: {n} interrupts in 200 ms");
    ok &= check_fmt(
        NAME,
        format_args!("counter 0 in mode 3: IRQ 0 came {n} times in 200 ms at ~200 Hz (20..=60)"),
        EXPECTED_MODE3.contains(&n),
    );

    // 6. Counter 2, mode 3: a square wave on OUT 2.
    gate2(false);
    outb(CONTROL, CW_COUNTER2_LSB_MSB_MODE3);
    ok &= check(NAME, "counter 2 in mode 3: OUT is high after the control word", out2());
    write_count(COUNTER2, SQUARE_COUNT);
    delay_us(15_000);
    ok &= check(NAME, "counter 2 in mode 3: with the gate low, OUT stays high (15 ms)", out2());
    let mut edges = [0u64; EDGES];
    let mut seen = 0;
    let mut level = out2();
    let start = tsc();
    gate2(true);
    let limit = us_to_tsc(200_000);
    while seen < EDGES && tsc().wrapping_sub(start) < limit {
        let now = out2();
        if now != level {
            level = now;
            if let Some(edge) = edges.get_mut(seen) {
                *edge = tsc().wrapping_sub(start);
            }
            seen += 1;
        }
    }
    let mut halves = [0u64; EDGES];
    let mut previous = 0;
    for (half, &edge) in halves.iter_mut().zip(edges.iter()) {
        *half = tsc_to_us(edge.wrapping_sub(previous));
        previous = edge;
    }
    let [h0, h1, h2, h3, h4, h5] = halves;
    println!("pit: channel 2 square wave half-periods {h0} {h1} {h2} {h3} {h4} {h5} us (count 23864)");
    ok &= check_fmt(
        NAME,
        format_args!("counter 2 in mode 3: OUT changes level {EDGES} times, high first, every ~10000 us (5000..=20000; {seen} seen)"),
        seen == EDGES && halves.iter().all(|h| HALF_PERIOD_US.contains(h)),
    );
    let (mut even, mut in_range, mut lowest, mut highest) = (true, true, u16::MAX, 0);
    for _ in 0..8 {
        let c = latched_count(CW_LATCH_COUNTER2, COUNTER2);
        even &= c % 2 == 0;
        in_range &= (2..=SQUARE_COUNT).contains(&c);
        lowest = lowest.min(c);
        highest = highest.max(c);
    }
    ok &= check_fmt(
        NAME,
        format_args!("counter 2 in mode 3: latched counts are even, in 2..=23864 and change ({lowest}..={highest})"),
        even && in_range && lowest != highest,
    );
    let was_low = wait_for(|| !out2(), us_to_tsc(30_000));
    gate2(false);
    ok &= check(
        NAME,
        "counter 2 in mode 3: taking the gate low while OUT is low sets OUT high at once",
        was_low && out2(),
    );
    delay_us(25_000);
    ok &= check(NAME, "counter 2 in mode 3: with the gate low again, OUT stays high (25 ms)", out2());

    // 7. One-byte access modes.
    ok &= one_byte_access(CW_COUNTER2_LSB_MODE0, LSB_ONLY, 0x10, "LSB only");
    ok &= one_byte_access(CW_COUNTER2_MSB_MODE0, MSB_ONLY, 0x20, "MSB only");

    if ok {
        println!("PASS {NAME}");
    } else {
        println!("FAIL {NAME}");
    }
    stop(if ok { 0 } else { 1 })
}
