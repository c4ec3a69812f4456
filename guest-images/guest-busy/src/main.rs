//! `guest-busy`: the bystander of svc-deferred. It runs for [`RUN_MS`] of TSC time,
//! writing a line through its 16550 (COM1, emulated by the service partition) every
//! [`LINE_EVERY_MS`], and checks that it was never held up for longer than
//! [`MAX_STALL_MS`] (its loop reads the TSC over and over; the longest gap between two
//! readings is the longest it was kept from running). Meanwhile the guest beside it
//! waits on deferred requests, the last one for the hypervisor's whole deferred
//! deadline: neither that wait nor the service partition's deferred work may hold this
//! guest up.
//!
//! Expected console lines: `busy: 1000 ms` ... `busy: 7000 ms` (through the UART), then
//! `PASS guest-busy: ran 7000 ms, never held up for more than 100 ms (longest: N us, at T ms)`.
#![no_std]
#![no_main]

use core::fmt::Write;

use guest_rt::interrupts::{tsc, tsc_to_us, us_to_tsc};
use guest_rt::port::{inb, outb};
use guest_rt::{println, stop};

/// How long the guest runs, in milliseconds of TSC time (longer than the other guest's
/// deferred reads and its 5 s deferred deadline together).
const RUN_MS: u64 = 7000;
/// A line every this many milliseconds.
const LINE_EVERY_MS: u64 = 1000;
/// The longest the guest may be kept from running.
const MAX_STALL_MS: u64 = 100;
const COM1: u16 = 0x3f8;

/// COM1 as a text sink, polling LSR.THRE before each byte.
struct Com1;

impl core::fmt::Write for Com1 {
    fn write_str(&mut self, text: &str) -> core::fmt::Result {
        for &b in text.as_bytes() {
            while inb(COM1 + 5) & 0x20 == 0 {}
            outb(COM1, b);
        }
        Ok(())
    }
}

/// Entry point (see `hv_abi::start`).
#[no_mangle]
#[link_section = ".text._start"]
pub extern "C" fn _start(_vcpu: u64, _ram_bytes: u64) -> ! {
    let start = tsc();
    let mut last = start;
    let mut longest = 0;
    let mut longest_at = start;
    let mut next_line = LINE_EVERY_MS;
    while next_line <= RUN_MS {
        let now = tsc();
        if now.wrapping_sub(last) > longest {
            longest = now.wrapping_sub(last);
            longest_at = last;
        }
        last = now;
        if now.wrapping_sub(start) >= us_to_tsc(next_line * 1000) {
            // COM1 never refuses a byte (the loop waits for room).
            let _ = writeln!(Com1, "busy: {next_line} ms");
            next_line += LINE_EVERY_MS;
            // The line's own forwarded accesses are not a stall.
            last = tsc();
        }
    }
    let longest_us = tsc_to_us(longest);
    let longest_at_ms = tsc_to_us(longest_at.wrapping_sub(start)) / 1000;
    if longest_us > MAX_STALL_MS * 1000 {
        println!(
            "FAIL guest-busy: held up for {longest_us} us at {longest_at_ms} ms (at most {MAX_STALL_MS} ms allowed)"
        );
        stop(1);
    }
    println!(
        "PASS guest-busy: ran {RUN_MS} ms, never held up for more than {MAX_STALL_MS} ms (longest: {longest_us} us, at {longest_at_ms} ms)"
    );
    stop(0)
}
