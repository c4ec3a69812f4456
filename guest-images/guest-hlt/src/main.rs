//! `guest-hlt`: HLT with interrupts enabled blocks the vCPU until an interrupt can be
//! delivered (2 vCPUs).
//!
//! 1. vCPU 0 arms its LAPIC one-shot timer and executes `STI; HLT`: HLT returns only
//!    after the timer's deadline, with the timer's handler having run exactly once (an
//!    HLT that did not block would return with no interrupt taken).
//! 2. vCPU 0 starts vCPU 1 (INIT, SIPI, SIPI) and halts again; vCPU 1 waits until vCPU
//!    0 is about to halt, lets it settle, and sends it a fixed IPI. vCPU 0 wakes with that
//!    vector. `bench hlt.wake` is the TSC from the send (read on vCPU 1) to the handler
//!    entry on vCPU 0 (the vCPUs' TSCs are assumed to be in step).
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use guest_rt::hv_abi::{hypercall as hc, ExitCount};
use guest_rt::interrupts::{
    bus_to_tsc, cli, count, delay_us, last_tsc, sti_hlt, total, tsc, tsc_to_us, us_to_tsc, wait_for,
};
use guest_rt::lapic::{self, divide, icr, lvt, reg};
use guest_rt::{check, exceptions, println, raw_hypercall, smp, stop};

const NAME: &str = "guest-hlt";
const TIMER: u8 = 0x40;
const WAKE: u8 = 0x41;
/// The one-shot's length in bus clocks (500 µs).
const ONE_SHOT_BUS: u32 = 50_000;
/// How long vCPU 1 lets vCPU 0 settle into HLT before the IPI.
const SETTLE_US: u64 = 300;

/// vCPU 0 is about to execute STI; HLT (set with interrupts off).
static HALTING: AtomicBool = AtomicBool::new(false);
/// TSC on vCPU 1 just before it wrote the ICR.
static SENT_AT: AtomicU64 = AtomicU64::new(0);

static mut STATS: [ExitCount; 64] = [ExitCount { reason: 0, _reserved: 0, count: 0 }; 64];

/// This vCPU's HLT exits (basic exit reason 12) so far.
fn hlt_exits() -> u64 {
    let entry = core::mem::size_of::<ExitCount>() as u64;
    let n = raw_hypercall(hc::EXIT_STATS, core::ptr::addr_of_mut!(STATS) as u64, 64 * entry, 0, 0);
    // SAFETY: the hypervisor wrote `n` entries; only vCPU 0 uses STATS.
    let stats = unsafe { &*core::ptr::addr_of!(STATS) };
    stats.iter().take(n.min(64) as usize).filter(|e| e.reason == 12).map(|e| e.count).sum()
}

extern "C" fn ap_entry(_apic_id: u32) -> ! {
    if wait_for(|| HALTING.load(Ordering::SeqCst), us_to_tsc(100_000)) {
        delay_us(SETTLE_US);
        SENT_AT.store(tsc(), Ordering::SeqCst);
        lapic::send_ipi(0, icr::FIXED | icr::ASSERT | u32::from(WAKE));
    } else {
        println!("FAIL {NAME}: vCPU 0 never got ready to halt");
    }
    loop {
        sti_hlt();
    }
}

/// Entry point (see `hv_abi::start`).
#[no_mangle]
#[link_section = ".text._start"]
pub extern "C" fn _start(_vcpu: u64, _ram: u64) -> ! {
    exceptions::install();
    lapic::sync_mode();
    lapic::enable();
    let mut ok = true;
    let exits_before = hlt_exits();

    // 1. Woken by its own timer.
    cli();
    lapic::write(reg::TIMER_DIVIDE, divide::BY_1);
    lapic::write(reg::LVT_TIMER, u32::from(TIMER) | lvt::ONE_SHOT);
    let expected = bus_to_tsc(u64::from(ONE_SHOT_BUS));
    let t0 = tsc();
    lapic::write(reg::TIMER_INITIAL, ONE_SHOT_BUS);
    sti_hlt();
    let woke = tsc();
    let taken = total();
    ok &= check(NAME, "STI; HLT returns only after the timer interrupt (its handler ran once)", {
        count(TIMER) == 1 && taken == 1
    });
    ok &= check(NAME, "the wake-up came at or after the timer's deadline", {
        last_tsc(TIMER).wrapping_sub(t0) >= expected && woke - t0 >= expected
    });
    println!("{NAME}: one-shot of {} us: woke after {} us", tsc_to_us(expected), tsc_to_us(woke - t0));
    lapic::write(reg::LVT_TIMER, lvt::MASKED | u32::from(TIMER));

    // 2. Woken by an IPI from vCPU 1.
    cli();
    let online = smp::start_aps(1, ap_entry);
    ok &= check(NAME, "vCPU 1 came online after INIT, SIPI, SIPI", online == 1);
    if online == 1 {
        HALTING.store(true, Ordering::SeqCst);
        sti_hlt();
        let woke = tsc();
        let got = count(WAKE);
        ok &= check(NAME, "STI; HLT returns with the IPI from vCPU 1 taken (and nothing else)", {
            got == 1 && total() == taken + 1
        });
        let sent = SENT_AT.load(Ordering::SeqCst);
        ok &= check(NAME, "the wake-up is vCPU 1's IPI (it recorded sending it)", sent != 0);
        // Across vCPUs: not asserted, only reported.
        let latency = last_tsc(WAKE) as i64 - sent as i64;
        println!("{NAME}: vCPU 0 woke {} TSC ticks after the send", woke as i64 - sent as i64);
        // One sample: from vCPU 1's IPI send to vCPU 0's handler (TSCs are synchronised
        // between the emulated CPUs; a negative value would mean they are not).
        guest_rt::bench::report("hlt.wake", &mut [latency.max(0) as u64]);
    }
    let exits = hlt_exits() - exits_before;
    println!("{NAME}: {exits} HLT exits on vCPU 0");

    if ok {
        println!("PASS {NAME}");
    } else {
        println!("FAIL {NAME}");
    }
    stop(if ok { 0 } else { 1 })
}
