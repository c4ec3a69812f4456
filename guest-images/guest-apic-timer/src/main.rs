//! `guest-apic-timer`: the local APIC timer in xAPIC mode (SDM 11.5.4), timed against
//! the guest TSC (frequency from CPUID 0x4000_0010; the timer counts at the bus clock it
//! reports, divided by the divide configuration).
//!
//! One-shot: the current count counts down at the divided rate, the interrupt comes
//! once, not before initial count × divide bus clocks, and the count then reads 0.
//! Periodic: N interrupts span N periods within 1%. Divide values 1, 2, 16 and 128 each
//! take their time. A masked LVT entry suppresses the interrupt. TSC-deadline mode: the
//! interrupt comes once at or after the deadline (latency: `bench timer.latency`), a
//! past deadline fires at once, writing 0 disarms, the initial count is ignored, and
//! switching between the modes disarms as the SDM says.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use guest_rt::interrupts::{
    bus_khz, bus_to_tsc, count, delay, delay_us, last_tsc, set_hook, sti, tsc, tsc_khz, tsc_to_bus, tsc_to_us,
    us_to_tsc, wait_for,
};
use guest_rt::lapic::{self, divide, lvt, msrs, reg};
use guest_rt::{check, exceptions, msr, println, stop};

const NAME: &str = "guest-apic-timer";
const TIMER: u8 = 0x40;
/// Periodic test: period in bus clocks (divide 1) and number of periods measured.
const PERIOD_BUS: u32 = 25_000;
const PERIODS: usize = 40;
/// TSC-deadline latency samples.
const DEADLINE_RUNS: u64 = 8;

/// Entry TSC of each periodic interrupt (index = tick number).
static TICKS: [AtomicU64; PERIODS + 1] = [const { AtomicU64::new(0) }; PERIODS + 1];
static TICK_N: AtomicUsize = AtomicUsize::new(0);

/// How late an interrupt may come after its expiry: 5% plus 1 ms of guest TSC time
/// (the emulated platform is slow; the lower bound is what is exact).
fn late_slack(expected: u64) -> u64 {
    expected / 20 + us_to_tsc(1000)
}

/// TSC ticks of `initial` timer clocks at divide configuration `dcr`.
fn timer_tsc(dcr: u32, initial: u32) -> u64 {
    bus_to_tsc(u64::from(initial) * u64::from(lapic::divide_value(dcr)))
}

/// Periodic hook: records each tick's entry TSC and stops the timer (initial count 0)
/// after PERIODS + 1 ticks.
fn periodic_tick(vector: u8) -> bool {
    let i = TICK_N.fetch_add(1, Ordering::SeqCst);
    if i < TICKS.len() {
        TICKS[i].store(last_tsc(vector), Ordering::SeqCst);
    }
    if i + 1 >= TICKS.len() {
        lapic::write(reg::TIMER_INITIAL, 0);
    }
    true
}

/// Arms a one-shot of `initial` clocks at `dcr` and waits for its interrupt. Returns the
/// TSC just before the arming write and the handler's entry TSC.
fn one_shot(dcr: u32, initial: u32) -> Option<(u64, u64)> {
    let before = count(TIMER);
    lapic::write(reg::TIMER_DIVIDE, dcr);
    lapic::write(reg::LVT_TIMER, u32::from(TIMER) | lvt::ONE_SHOT);
    let expected = timer_tsc(dcr, initial);
    let t0 = tsc();
    lapic::write(reg::TIMER_INITIAL, initial);
    if !wait_for(|| count(TIMER) > before, expected + 10 * late_slack(expected)) {
        return None;
    }
    Some((t0, last_tsc(TIMER)))
}

/// Entry point (see `hv_abi::start`).
#[no_mangle]
#[link_section = ".text._start"]
pub extern "C" fn _start(_vcpu: u64, _ram: u64) -> ! {
    exceptions::install();
    lapic::sync_mode();
    lapic::enable();
    sti();
    let mut ok = true;
    println!("{NAME}: TSC {} kHz, LAPIC bus {} kHz", tsc_khz(), bus_khz());
    ok &= check(NAME, "the timing leaf reports a 100 MHz LAPIC bus", bus_khz() == contract_bus_khz());
    ok &= check(NAME, "xAPIC ID reads 0 and the version reads 0x00050014", {
        lapic::id() == 0 && lapic::read(reg::VERSION) == 0x0005_0014
    });

    ok &= one_shot_checks();
    ok &= periodic_checks();
    ok &= divide_checks();
    ok &= masked_checks();
    ok &= deadline_checks();

    lapic::write(reg::LVT_TIMER, lvt::MASKED | u32::from(TIMER));
    lapic::write(reg::TIMER_INITIAL, 0);
    if ok {
        println!("PASS {NAME}");
    } else {
        println!("FAIL {NAME}");
    }
    stop(if ok { 0 } else { 1 })
}

fn contract_bus_khz() -> u64 {
    guest_rt::hv_abi::platform::LAPIC_BUS_HZ / 1000
}

fn one_shot_checks() -> bool {
    let mut ok = true;
    let dcr = divide::BY_16;
    let initial = 10_000u32; // 1.6 ms at 100 MHz / 16
    let entry = u32::from(TIMER) | lvt::ONE_SHOT;
    lapic::write(reg::TIMER_DIVIDE, dcr);
    lapic::write(reg::LVT_TIMER, entry);
    ok &= check(NAME, "the LVT timer entry and divide configuration read back", {
        lapic::read(reg::LVT_TIMER) & !(1 << 12) == entry && lapic::read(reg::TIMER_DIVIDE) & 0xb == dcr
    });
    let before = count(TIMER);
    let expected = timer_tsc(dcr, initial);
    let t0 = tsc();
    lapic::write(reg::TIMER_INITIAL, initial);
    let ta = tsc();
    let c1 = lapic::read(reg::TIMER_CURRENT);
    let tb = tsc();
    delay_us(300);
    let tc = tsc();
    let c2 = lapic::read(reg::TIMER_CURRENT);
    let td = tsc();
    // Nothing is printed until the interrupt came: a console hypercall takes
    // milliseconds of guest time, during which the guest cannot take the interrupt.
    let initial_reads_back = lapic::read(reg::TIMER_INITIAL) == initial;
    // c1 was sampled in [ta, tb] and c2 in [tc, td]: the clocks between them lie in
    // [tc - tb, td - ta] (one clock of rounding at each end, and 0.1% for the kHz
    // rounding of the TSC frequency).
    let div = u64::from(lapic::divide_value(dcr));
    let counted = u64::from(c1.saturating_sub(c2)) * div;
    let (lo, hi) = (tsc_to_bus(tc - tb), tsc_to_bus(td - ta));
    let rate_ok = counted + 2 * div + lo / 1000 >= lo && counted <= hi + 2 * div + hi / 1000;
    let fired = wait_for(|| count(TIMER) > before, expected + 10 * late_slack(expected));
    let took = last_tsc(TIMER).wrapping_sub(t0);
    ok &= check(NAME, "one-shot: the initial count reads back", initial_reads_back);
    ok &= check(NAME, "one-shot: the current count counts down from the initial count", {
        c1 <= initial && c2 < c1 && c2 > 0
    });
    if !rate_ok {
        println!("{NAME}: counted {counted} bus clocks while {lo}..{hi} passed");
    }
    ok &= check(NAME, "one-shot: the current count falls at bus clock / divide (16)", rate_ok);
    ok &= check(NAME, "one-shot: the interrupt arrives", fired);
    if fired {
        ok &= check(NAME, "one-shot: not before initial count x divide bus clocks", took >= expected);
        ok &= check(NAME, "one-shot: not more than 5% + 1 ms late", took <= expected + late_slack(expected));
        println!("{NAME}: one-shot of {} us fired after {} us", tsc_to_us(expected), tsc_to_us(took));
    }
    ok &= check(NAME, "one-shot: the current count reads 0 after it fired", lapic::read(reg::TIMER_CURRENT) == 0);
    delay(3 * expected);
    ok &= check(NAME, "one-shot: it fires exactly once", count(TIMER) == before + 1);
    ok
}

fn periodic_checks() -> bool {
    let mut ok = true;
    TICK_N.store(0, Ordering::SeqCst);
    set_hook(TIMER, Some(periodic_tick));
    let period = timer_tsc(divide::BY_1, PERIOD_BUS);
    lapic::write(reg::TIMER_DIVIDE, divide::BY_1);
    lapic::write(reg::LVT_TIMER, u32::from(TIMER) | lvt::PERIODIC);
    lapic::write(reg::TIMER_INITIAL, PERIOD_BUS);
    let all = wait_for(|| TICK_N.load(Ordering::SeqCst) >= TICKS.len(), (PERIODS as u64 + 10) * period * 2);
    let mid = lapic::read(reg::TIMER_CURRENT);
    delay(3 * period);
    set_hook(TIMER, None);
    let n = TICK_N.load(Ordering::SeqCst);
    ok &= check(NAME, "periodic: the interrupts keep coming", all);
    ok &= check(NAME, "periodic: writing initial count 0 stops it", n == TICKS.len() && mid == 0);
    if !all {
        println!("{NAME}: only {n} periodic interrupts");
        return false;
    }
    let t = |i: usize| TICKS[i].load(Ordering::SeqCst);
    let elapsed = t(PERIODS) - t(0);
    let expected = PERIODS as u64 * period;
    let tolerance = expected / 100 + period / 2;
    let max_gap = (1..=PERIODS).map(|i| t(i) - t(i - 1)).max().unwrap_or(0);
    println!(
        "{NAME}: {PERIODS} periods of {} TSC ticks took {elapsed} (expected {expected}), longest gap {max_gap}",
        period
    );
    ok &= check(NAME, "periodic: N interrupts span N periods within 1%", elapsed.abs_diff(expected) <= tolerance);
    ok &= check(NAME, "periodic: no period is lost (every gap < 1.5 periods)", max_gap < period + period / 2);
    ok
}

fn divide_checks() -> bool {
    let initial = 10_000u32;
    let mut all = true;
    for (dcr, value) in [(divide::BY_1, 1), (divide::BY_2, 2), (divide::BY_16, 16), (divide::BY_128, 128)] {
        let expected = timer_tsc(dcr, initial);
        let right = match one_shot(dcr, initial) {
            Some((t0, at)) => {
                let took = at.wrapping_sub(t0);
                println!(
                    "{NAME}: divide {value}: {} us expected, fired after {} us",
                    tsc_to_us(expected),
                    tsc_to_us(took)
                );
                took >= expected && took <= expected + late_slack(expected)
            }
            None => {
                println!("{NAME}: divide {value}: no interrupt");
                false
            }
        };
        all &= right;
    }
    check(NAME, "divide 1, 2, 16, 128: a one-shot takes initial count x divide bus clocks", all)
}

fn masked_checks() -> bool {
    let mut ok = true;
    let before = count(TIMER);
    let initial = 10_000u32; // 100 µs
    lapic::write(reg::TIMER_DIVIDE, divide::BY_1);
    lapic::write(reg::LVT_TIMER, u32::from(TIMER) | lvt::ONE_SHOT | lvt::MASKED);
    lapic::write(reg::TIMER_INITIAL, initial);
    delay_us(400);
    ok &= check(NAME, "masked: the timer runs down (current count 0) without an interrupt", {
        count(TIMER) == before && lapic::read(reg::TIMER_CURRENT) == 0
    });
    lapic::write(reg::LVT_TIMER, u32::from(TIMER) | lvt::ONE_SHOT);
    delay_us(300);
    ok &= check(NAME, "masked: unmasking later delivers nothing for the past expiry", count(TIMER) == before);
    ok
}

fn deadline_checks() -> bool {
    let mut ok = true;
    let leaf1 = core::arch::x86_64::__cpuid(1);
    if !check(NAME, "CPUID.1:ECX shows TSC-deadline (bit 24)", leaf1.ecx & (1 << 24) != 0) {
        return false;
    }
    // One-shot armed, then the mode switched to TSC-deadline: disarmed (SDM 11.5.4.1).
    let before = count(TIMER);
    lapic::write(reg::TIMER_DIVIDE, divide::BY_1);
    lapic::write(reg::LVT_TIMER, u32::from(TIMER) | lvt::ONE_SHOT);
    lapic::write(reg::TIMER_INITIAL, 30_000); // 300 µs
    let entry = u32::from(TIMER) | lvt::TSC_DEADLINE;
    lapic::write(reg::LVT_TIMER, entry);
    ok &= check(
        NAME,
        "TSC-deadline: the LVT entry reads back with mode 10b",
        lapic::read(reg::LVT_TIMER) & !(1 << 12) == entry,
    );
    delay_us(600);
    ok &= check(NAME, "switching a running one-shot to TSC-deadline mode disarms it", count(TIMER) == before);
    lapic::write(reg::TIMER_INITIAL, 10_000);
    delay_us(300);
    ok &= check(NAME, "TSC-deadline: writing the initial count starts nothing", count(TIMER) == before);
    ok &= check(NAME, "TSC-deadline: IA32_TSC_DEADLINE reads 0 when not armed", msr::read(msrs::TSC_DEADLINE) == 0);

    let mut latency = [0u64; DEADLINE_RUNS as usize];
    let mut runs = 0;
    let mut armed_reads_back = true;
    let mut in_time = true;
    let mut cleared = true;
    for _ in 0..DEADLINE_RUNS {
        let before = count(TIMER);
        let deadline = tsc() + us_to_tsc(200);
        msr::write(msrs::TSC_DEADLINE, deadline);
        armed_reads_back &= msr::read(msrs::TSC_DEADLINE) == deadline;
        if !wait_for(|| count(TIMER) > before, us_to_tsc(200) + 10 * late_slack(us_to_tsc(200))) {
            in_time = false;
            break;
        }
        let at = last_tsc(TIMER);
        in_time &= at >= deadline && at - deadline <= late_slack(0);
        latency[runs] = at.wrapping_sub(deadline);
        runs += 1;
        cleared &= msr::read(msrs::TSC_DEADLINE) == 0;
    }
    let total_before = count(TIMER);
    delay_us(400);
    ok &= check(NAME, "TSC-deadline: the armed deadline reads back", armed_reads_back);
    ok &= check(NAME, "TSC-deadline: the interrupt comes at or after the deadline (within 1 ms)", in_time);
    ok &= check(NAME, "TSC-deadline: after it fired the MSR reads 0 and nothing more comes", {
        cleared && count(TIMER) == total_before
    });
    // From the deadline to the handler's first instructions (its TSC read).
    guest_rt::bench::report("timer.latency", &mut latency[..runs]);

    let before = count(TIMER);
    msr::write(msrs::TSC_DEADLINE, tsc() - us_to_tsc(10));
    ok &= check(NAME, "TSC-deadline: a deadline in the past fires at once (within 1 ms)", {
        wait_for(|| count(TIMER) > before, us_to_tsc(1000))
    });

    let before = count(TIMER);
    msr::write(msrs::TSC_DEADLINE, tsc() + us_to_tsc(300));
    msr::write(msrs::TSC_DEADLINE, 0);
    delay_us(800);
    ok &= check(NAME, "TSC-deadline: writing 0 disarms it", count(TIMER) == before);

    // Back to one-shot mode: the count-down timer works again.
    let expected = timer_tsc(divide::BY_1, 10_000);
    let back = one_shot(divide::BY_1, 10_000).is_some_and(|(t0, at)| at.wrapping_sub(t0) >= expected);
    delay(3 * expected);
    ok &= check(NAME, "switching back to one-shot mode: it fires once again", back && count(TIMER) == before + 1);
    ok
}
