//! `guest-io-flood`: floods the service partition with forwarded port I/O (COM1's line
//! status register and the POST port) as fast as it can, long enough (600 000
//! accesses) that the `svc-flood` scenario's other guest runs its whole course
//! meanwhile, then checks that every read
//! gave a value the 16550 model can give and reports how many accesses it made.
//!
//! Expected console lines: `io-flood: N accesses, all answered` and
//! `PASS guest-io-flood`.
#![no_std]
#![no_main]

use guest_rt::port::{inb, outb};
use guest_rt::{check, println, stop};

const NAME: &str = "guest-io-flood";
/// COM1's line status register and the POST code port.
const COM1_LSR: u16 = 0x3fd;
const POST: u16 = 0x80;
/// Rounds of one LSR read and one POST write.
const ROUNDS: u32 = 300_000;

/// Entry point (see `hv_abi::start`).
#[no_mangle]
#[link_section = ".text._start"]
pub extern "C" fn _start(_vcpu: u64, _ram: u64) -> ! {
    let mut open_bus = 0u32;
    for round in 0..ROUNDS {
        let lsr = inb(COM1_LSR);
        outb(POST, round as u8);
        // An idle 16550 reports its transmitter empty (THRE and TEMT); all-ones would
        // mean the access was not answered by the model.
        if lsr == 0xff || lsr & 0x60 != 0x60 {
            open_bus += 1;
        }
    }
    if open_bus == 0 {
        println!("io-flood: {} accesses, all answered", 2 * ROUNDS);
    }
    let ok = check(NAME, "every LSR read came from the 16550 model", open_bus == 0);
    if ok {
        println!("PASS {NAME}");
    }
    stop(if ok { 0 } else { 1 })
}
