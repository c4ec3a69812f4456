//! `guest-ioapic`: the virtual I/O APIC (82093AA register interface), driven by the
//! `IRQ_LINE` test hypercall as the interrupt source.
//!
//! Edge pin 5 → vector 0x40: a rising edge delivers once, a line held high delivers no
//! more, lowering and raising delivers again, and an edge while masked is lost.
//! Level pin 9 → vector 0x41: a high line delivers, remote IRR stays set until the EOI
//! (which the LAPIC broadcasts to the I/O APIC for a level-triggered vector), and with
//! the line still high the EOI brings it again; once the line is low the EOI ends it. A
//! masked level pin that is high delivers when unmasked. A bad pin or level is refused.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicBool, Ordering};

use guest_rt::hv_abi::{platform, Error};
use guest_rt::interrupts::{count, delay_us, set_hook, sti, us_to_tsc, wait_for};
use guest_rt::ioapic::{self, entry, irq_line};
use guest_rt::lapic;
use guest_rt::{check, exceptions, println, stop};

const NAME: &str = "guest-ioapic";
const EDGE_PIN: u32 = 5;
const EDGE_VECTOR: u8 = 0x40;
const LEVEL_PIN: u32 = 9;
const LEVEL_VECTOR: u8 = 0x41;
/// How long to wait for an interrupt that should come, and to watch for one that
/// should not.
const ARRIVE_US: u64 = 1000;
const QUIET_US: u64 = 300;

/// Whether the level vector's handler sends the EOI itself (off: the test does).
static LEVEL_AUTO_EOI: AtomicBool = AtomicBool::new(false);

fn level_hook(_vector: u8) -> bool {
    LEVEL_AUTO_EOI.load(Ordering::SeqCst)
}

/// Drives `pin` to `level`; the hypercall must succeed.
fn line(pin: u32, level: u32) -> bool {
    let r = irq_line(pin, level);
    if r != 0 {
        println!("{NAME}: IRQ_LINE({pin}, {level}) returned {:#x}", r);
    }
    r == 0
}

/// Waits until `vector` has been taken `n` times, then a little longer; true if the
/// count is exactly `n`.
fn exactly(vector: u8, n: u64) -> bool {
    wait_for(|| count(vector) >= n, us_to_tsc(ARRIVE_US));
    delay_us(QUIET_US);
    let got = count(vector);
    if got != n {
        println!("{NAME}: vector {vector:#x} taken {got} times, expected {n}");
    }
    got == n
}

fn remote_irr(pin: u32) -> bool {
    ioapic::read_entry(pin) & entry::REMOTE_IRR != 0
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

    let version = ioapic::read(ioapic::REG_VERSION);
    let id = ioapic::read(ioapic::REG_ID);
    println!("{NAME}: IOAPIC ID register {id:#010x}, version register {version:#010x}");
    ok &= check(NAME, "the version register shows 24 pins (max redirection entry 23)", {
        (version >> 16) & 0xff == platform::IOAPIC_PINS - 1
    });
    ok &= check(NAME, "the version register shows an I/O APIC version (0x11 or 0x20)", {
        matches!(version & 0xff, 0x11 | 0x20)
    });
    ok &= check(NAME, "redirection entries start masked", {
        (0..platform::IOAPIC_PINS).all(|pin| ioapic::read_entry(pin) & entry::MASKED != 0)
    });

    // Edge pin.
    let edge = entry::FIXED | entry::dest(0) | u64::from(EDGE_VECTOR);
    ioapic::write_entry(EDGE_PIN, edge);
    ok &= check(NAME, "edge: the redirection entry reads back", {
        ioapic::read_entry(EDGE_PIN) & !(entry::DELIVERY_PENDING | entry::REMOTE_IRR) == edge
    });
    ok &= check(NAME, "edge: raising pin 5 delivers vector 0x40 once", line(EDGE_PIN, 1) && exactly(EDGE_VECTOR, 1));
    ok &= check(NAME, "edge: holding the line high (and setting it high again) delivers no more", {
        line(EDGE_PIN, 1) && exactly(EDGE_VECTOR, 1)
    });
    ok &= check(NAME, "edge: lowering and raising it delivers again", {
        line(EDGE_PIN, 0) && line(EDGE_PIN, 1) && exactly(EDGE_VECTOR, 2)
    });
    ok &= check(NAME, "edge: lowering it delivers nothing", line(EDGE_PIN, 0) && exactly(EDGE_VECTOR, 2));
    ioapic::write_entry(EDGE_PIN, edge | entry::MASKED);
    ok &= check(NAME, "edge: an edge while masked is lost (also after unmasking)", {
        let raised = line(EDGE_PIN, 1) && exactly(EDGE_VECTOR, 2);
        ioapic::write_entry(EDGE_PIN, edge);
        raised && exactly(EDGE_VECTOR, 2)
    });
    ok &= check(NAME, "edge: after unmasking, the next edge is delivered", {
        line(EDGE_PIN, 0) && line(EDGE_PIN, 1) && exactly(EDGE_VECTOR, 3)
    });
    line(EDGE_PIN, 0);
    ioapic::write_entry(EDGE_PIN, edge | entry::MASKED);

    // Level pin; the test sends the EOIs itself.
    set_hook(LEVEL_VECTOR, Some(level_hook));
    let level = entry::FIXED | entry::LEVEL | entry::dest(0) | u64::from(LEVEL_VECTOR);
    ioapic::write_entry(LEVEL_PIN, level);
    ok &= check(NAME, "level: the redirection entry reads back (remote IRR clear)", {
        ioapic::read_entry(LEVEL_PIN) & !entry::DELIVERY_PENDING == level
    });
    ok &=
        check(NAME, "level: a high line on pin 9 delivers vector 0x41", line(LEVEL_PIN, 1) && exactly(LEVEL_VECTOR, 1));
    ok &= check(NAME, "level: remote IRR is set until the EOI", remote_irr(LEVEL_PIN));
    ok &= check(NAME, "level: the LAPIC took it as level-triggered (TMR and ISR set)", {
        lapic::tmr(LEVEL_VECTOR) && lapic::isr(LEVEL_VECTOR)
    });
    lapic::eoi();
    ok &= check(NAME, "level: the EOI with the line still high delivers it again", exactly(LEVEL_VECTOR, 2));
    ok &= check(NAME, "level: ... with remote IRR set again", remote_irr(LEVEL_PIN));
    ok &= check(NAME, "level: lowering the line delivers nothing", line(LEVEL_PIN, 0) && exactly(LEVEL_VECTOR, 2));
    lapic::eoi();
    ok &= check(NAME, "level: the EOI after the line went low ends it (remote IRR clear)", {
        exactly(LEVEL_VECTOR, 2) && !remote_irr(LEVEL_PIN) && !lapic::isr(LEVEL_VECTOR)
    });

    // Masked level pin.
    ioapic::write_entry(LEVEL_PIN, level | entry::MASKED);
    ok &= check(NAME, "level: a masked pin held high delivers nothing", {
        line(LEVEL_PIN, 1) && exactly(LEVEL_VECTOR, 2) && !remote_irr(LEVEL_PIN)
    });
    ioapic::write_entry(LEVEL_PIN, level);
    ok &= check(NAME, "level: unmasking it while the line is high delivers it", exactly(LEVEL_VECTOR, 3));
    line(LEVEL_PIN, 0);
    lapic::eoi();
    ok &= check(NAME, "level: line low and EOI: quiet again", exactly(LEVEL_VECTOR, 3) && !remote_irr(LEVEL_PIN));
    ioapic::write_entry(LEVEL_PIN, level | entry::MASKED);

    // Bad arguments.
    let bad = Error::BadArgument.to_rax();
    ok &= check(NAME, "IRQ_LINE with pin 24 returns BadArgument", irq_line(platform::IOAPIC_PINS, 1) == bad);
    ok &= check(NAME, "IRQ_LINE with level 2 returns BadArgument", irq_line(EDGE_PIN, 2) == bad);
    ok &= check(NAME, "no interrupt came from the refused calls", {
        exactly(EDGE_VECTOR, 3) && exactly(LEVEL_VECTOR, 3)
    });

    if ok {
        println!("PASS {NAME}");
    } else {
        println!("FAIL {NAME}");
    }
    stop(if ok { 0 } else { 1 })
}
