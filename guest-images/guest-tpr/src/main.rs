//! `guest-tpr`: interrupt priorities in the local APIC (SDM 11.8.3). With TPR = 0x50 a
//! self IPI of class 4 (0x45) stays pending in the IRR while class 6 (0x65) is
//! delivered; lowering the TPR delivers 0x45. PPR follows TPR and the in-service vector:
//! inside a handler that has not sent its EOI yet, a higher class (0x90) nests at once
//! while the same class (0x85) and a lower one (0x70) wait in the IRR until the EOI,
//! and then come highest first. The IRR, ISR and PPR registers are read along the way.
//! First in xAPIC mode (ICR "self" shorthand), then the TPR part again in x2APIC mode
//! (SELF IPI MSR).
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};

use guest_rt::exceptions::install;
use guest_rt::interrupts::{cli, count, delay_us, set_hook, sti, us_to_tsc, wait_for};
use guest_rt::lapic::{self, reg};
use guest_rt::{check, check_fmt, println, stop};

const NAME: &str = "guest-tpr";
const LOW: u8 = 0x45;
const HIGH: u8 = 0x65;
const OUTER: u8 = 0x80;
const NESTED: u8 = 0x90;
const SAME_CLASS: u8 = 0x85;
const LOWER_CLASS: u8 = 0x70;

/// Order in which the nesting test's vectors entered their handlers.
static ORDER: [AtomicU8; 8] = [const { AtomicU8::new(0) }; 8];
static ORDER_N: AtomicU32 = AtomicU32::new(0);
/// What the OUTER handler saw before its EOI.
static OUTER_PPR: AtomicU32 = AtomicU32::new(0);
static OUTER_IN_SERVICE: AtomicBool = AtomicBool::new(false);
static NESTED_AT_ONCE: AtomicBool = AtomicBool::new(false);
static HELD_BACK: AtomicBool = AtomicBool::new(false);
static PENDING_IN_IRR: AtomicBool = AtomicBool::new(false);
static NESTED_PPR: AtomicU32 = AtomicU32::new(0);

fn record(vector: u8) {
    let i = ORDER_N.fetch_add(1, Ordering::SeqCst) as usize;
    if i < ORDER.len() {
        ORDER[i].store(vector, Ordering::SeqCst);
    }
}

fn record_hook(vector: u8) -> bool {
    record(vector);
    if vector == NESTED {
        NESTED_PPR.store(lapic::read(reg::PPR), Ordering::SeqCst);
    }
    true
}

/// The OUTER handler: with OUTER in service (no EOI yet) it enables interrupts and sends
/// itself a higher, a same-class and a lower vector.
fn outer_hook(vector: u8) -> bool {
    record(vector);
    OUTER_PPR.store(lapic::read(reg::PPR), Ordering::SeqCst);
    OUTER_IN_SERVICE.store(lapic::isr(OUTER), Ordering::SeqCst);
    sti();
    lapic::self_ipi(NESTED);
    NESTED_AT_ONCE.store(wait_for(|| count(NESTED) == 1, us_to_tsc(1000)), Ordering::SeqCst);
    lapic::self_ipi(SAME_CLASS);
    lapic::self_ipi(LOWER_CLASS);
    delay_us(300);
    HELD_BACK.store(count(SAME_CLASS) == 0 && count(LOWER_CLASS) == 0, Ordering::SeqCst);
    PENDING_IN_IRR.store(lapic::irr(SAME_CLASS) && lapic::irr(LOWER_CLASS), Ordering::SeqCst);
    cli();
    true
}

/// TPR blocking and unblocking with self IPIs, in the current APIC mode.
fn tpr_checks(mode: &str) -> bool {
    let mut ok = true;
    let (low, high) = (count(LOW), count(HIGH));
    lapic::write(reg::TPR, 0x50);
    ok &= check_fmt(NAME, format_args!("{mode}: TPR reads back 0x50 and PPR is 0x50"), {
        lapic::read(reg::TPR) & 0xff == 0x50 && lapic::read(reg::PPR) & 0xff == 0x50
    });
    lapic::self_ipi(LOW);
    delay_us(300);
    ok &= check_fmt(NAME, format_args!("{mode}: TPR 0x50 holds vector 0x45 back: pending in the IRR"), {
        count(LOW) == low && lapic::irr(LOW) && !lapic::isr(LOW)
    });
    lapic::self_ipi(HIGH);
    ok &= check_fmt(NAME, format_args!("{mode}: vector 0x65 (class 6 > 5) is delivered meanwhile"), {
        wait_for(|| count(HIGH) == high + 1, us_to_tsc(1000)) && !lapic::isr(HIGH) && count(LOW) == low
    });
    lapic::write(reg::TPR, 0);
    ok &= check_fmt(NAME, format_args!("{mode}: lowering TPR to 0 delivers 0x45"), {
        wait_for(|| count(LOW) == low + 1, us_to_tsc(1000))
    });
    ok &= check_fmt(NAME, format_args!("{mode}: IRR and ISR are clear again and PPR is 0"), {
        !lapic::irr(LOW) && !lapic::isr(LOW) && lapic::read(reg::PPR) & 0xff == 0
    });
    ok
}

/// Entry point (see `hv_abi::start`).
#[no_mangle]
#[link_section = ".text._start"]
pub extern "C" fn _start(_vcpu: u64, _ram: u64) -> ! {
    install();
    lapic::sync_mode();
    lapic::enable();
    sti();
    let mut ok = true;

    println!("{NAME}: xAPIC mode");
    ok &= tpr_checks("xAPIC");

    // Nesting by priority class.
    for v in [NESTED, SAME_CLASS, LOWER_CLASS] {
        set_hook(v, Some(record_hook));
    }
    set_hook(OUTER, Some(outer_hook));
    lapic::self_ipi(OUTER);
    let all = wait_for(|| count(OUTER) == 1 && count(SAME_CLASS) == 1 && count(LOWER_CLASS) == 1, us_to_tsc(5000));
    ok &= check(NAME, "all four vectors of the nesting test arrive", all && count(NESTED) == 1);
    ok &= check(NAME, "in the 0x80 handler before EOI: ISR has 0x80 and PPR is 0x80", {
        OUTER_IN_SERVICE.load(Ordering::SeqCst) && OUTER_PPR.load(Ordering::SeqCst) & 0xff == 0x80
    });
    ok &= check(NAME, "a higher class (0x90) nests inside the 0x80 handler at once (PPR 0x90 there)", {
        NESTED_AT_ONCE.load(Ordering::SeqCst) && NESTED_PPR.load(Ordering::SeqCst) & 0xff == 0x90
    });
    ok &= check(NAME, "the same class (0x85) and a lower one (0x70) wait in the IRR until the EOI", {
        HELD_BACK.load(Ordering::SeqCst) && PENDING_IN_IRR.load(Ordering::SeqCst)
    });
    let order: [u8; 4] = core::array::from_fn(|i| ORDER[i].load(Ordering::SeqCst));
    ok &= check(NAME, "delivery order: 0x80, 0x90, then after the EOI 0x85 before 0x70", {
        ORDER_N.load(Ordering::SeqCst) == 4 && order == [OUTER, NESTED, SAME_CLASS, LOWER_CLASS]
    });
    if order != [OUTER, NESTED, SAME_CLASS, LOWER_CLASS] {
        println!("{NAME}: order {order:#04x?}");
    }
    ok &= check(NAME, "afterwards nothing is in service and PPR is 0", {
        (0..8).all(|i| lapic::read(reg::ISR + i * 0x10) == 0) && lapic::read(reg::PPR) & 0xff == 0
    });

    println!("{NAME}: x2APIC mode");
    lapic::enter_x2apic();
    ok &= check(NAME, "switched to x2APIC mode", lapic::is_x2apic());
    ok &= tpr_checks("x2APIC");

    if ok {
        println!("PASS {NAME}");
    } else {
        println!("FAIL {NAME}");
    }
    stop(if ok { 0 } else { 1 })
}
