//! `guest-irq-flood`: a misbehaving guest for the isolation scenario. It programs its
//! LAPIC timer periodic with initial count 1 at divide 1 (an interrupt every bus clock,
//! far more than can be delivered) and floods itself with self IPIs, for a fixed amount
//! of guest TSC time, then stops both and reports what it got. It passes if it survives
//! and took at least one interrupt of each kind; the partition beside it must finish
//! its own work meanwhile.
//!
//! The timer handler itself ends the timer flood when its time is up: with an interrupt
//! pending after every IRET the main loop might never run again.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use guest_rt::exceptions::install;
use guest_rt::interrupts::{cli, count, delay_us, set_hook, sti, tsc, tsc_to_us, us_to_tsc};
use guest_rt::lapic::{self, divide, lvt, reg};
use guest_rt::{check, println, stop};

const NAME: &str = "guest-irq-flood";
const TIMER: u8 = 0x40;
const IPI: u8 = 0x51;
/// Timer flood duration, then self-IPI-only flood duration (guest TSC time).
const TIMER_FLOOD_US: u64 = 20_000;
const IPI_FLOOD_US: u64 = 10_000;

static TIMER_END: AtomicU64 = AtomicU64::new(u64::MAX);
static TIMER_STOPPED: AtomicBool = AtomicBool::new(false);

/// Stops the timer (mask, initial count 0) once the flood time is over.
fn timer_hook(_vector: u8) -> bool {
    if !TIMER_STOPPED.load(Ordering::SeqCst) && tsc() >= TIMER_END.load(Ordering::SeqCst) {
        lapic::write(reg::LVT_TIMER, lvt::MASKED | lvt::PERIODIC | u32::from(TIMER));
        lapic::write(reg::TIMER_INITIAL, 0);
        TIMER_STOPPED.store(true, Ordering::SeqCst);
    }
    true
}

/// Entry point (see `hv_abi::start`).
#[no_mangle]
#[link_section = ".text._start"]
pub extern "C" fn _start(_vcpu: u64, _ram: u64) -> ! {
    install();
    lapic::sync_mode();
    lapic::enable();
    set_hook(TIMER, Some(timer_hook));
    println!("{NAME}: periodic timer with initial count 1 plus self IPIs for {TIMER_FLOOD_US} us, then self IPIs for {IPI_FLOOD_US} us");

    let start = tsc();
    TIMER_END.store(start + us_to_tsc(TIMER_FLOOD_US), Ordering::SeqCst);
    lapic::write(reg::TIMER_DIVIDE, divide::BY_1);
    lapic::write(reg::LVT_TIMER, lvt::PERIODIC | u32::from(TIMER));
    lapic::write(reg::TIMER_INITIAL, 1);
    sti();
    let mut sent = 0u64;
    while !TIMER_STOPPED.load(Ordering::SeqCst) {
        lapic::self_ipi(IPI);
        sent += 1;
        // If the timer's own interrupts never let the handler see the deadline (they
        // always do), the main loop ends the timer flood as well.
        if tsc() > start + 2 * us_to_tsc(TIMER_FLOOD_US) {
            cli();
            timer_hook(TIMER);
            sti();
        }
    }
    let ipi_end = tsc() + us_to_tsc(IPI_FLOOD_US);
    while tsc() < ipi_end {
        lapic::self_ipi(IPI);
        sent += 1;
    }
    delay_us(100);
    cli();
    let elapsed = tsc() - start;
    let (timer, ipis) = (count(TIMER), count(IPI));
    println!("{NAME}: {timer} timer interrupts, {ipis} self IPIs taken of {sent} sent, in {} us", tsc_to_us(elapsed));
    let mut ok = true;
    ok &= check(NAME, "the flooding guest survived and took timer interrupts", timer > 0);
    ok &= check(NAME, "it took self IPIs", ipis > 0 && ipis <= sent);
    if ok {
        println!("PASS {NAME}");
    } else {
        println!("FAIL {NAME}");
    }
    stop(if ok { 0 } else { 1 })
}
