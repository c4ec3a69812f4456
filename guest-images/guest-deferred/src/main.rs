//! `guest-deferred`: reads the `delay-test` port (0xF8), which the service partition
//! answers through deferred completion (`hv_abi::io_request`, "Deferred completion"):
//! each `IN` completes only after the delay written to the port, while this vCPU stays
//! on its instruction.
//!
//! 1. With a [`DELAY_MS`] delay, [`READS`] reads: each must return
//!    `DELAY_TEST_VALUE_BASE + n` (n reads completed before) and take at least the delay
//!    of TSC time.
//! 2. With no delay, one more read (the next value).
//! 3. `PASS guest-deferred: ...`, then a read with the delay `DELAY_TEST_NEVER`: the
//!    service partition never completes it, so the hypervisor must stop this guest at
//!    its deferred deadline with a line naming the access. If the read ever returns, the
//!    guest reports `FAIL` and stops with code 1.
//!
//! Expected console lines: `deferred: read N of 3: 0xde1a000M after T ms` (N = 1..3),
//! `deferred: read with no delay: 0xde1a0003`, `PASS guest-deferred: 4 deferred reads
//! completed with their values and delays`, `deferred: reading with a delay that never
//! ends`.
#![no_std]
#![no_main]

use guest_rt::hv_abi::platform::devices::{DELAY_TEST_NEVER, DELAY_TEST_PORT, DELAY_TEST_VALUE_BASE};
use guest_rt::interrupts::{tsc, tsc_to_us};
use guest_rt::port::{inl, outl};
use guest_rt::{check_fmt, println, stop};

/// The delay of the reads that must complete, in milliseconds.
const DELAY_MS: u32 = 20;
/// Delayed reads.
const READS: u32 = 3;
/// Slack for the TSCs of two CPUs and the device clock's rounding, in microseconds.
const SLACK_US: u64 = 100;

/// Reads the delay-test port; returns the value and the microseconds it took.
fn timed_read() -> (u32, u64) {
    let start = tsc();
    let value = inl(DELAY_TEST_PORT);
    (value, tsc_to_us(tsc().wrapping_sub(start)))
}

/// Entry point (see `hv_abi::start`).
#[no_mangle]
#[link_section = ".text._start"]
pub extern "C" fn _start(_vcpu: u64, _ram_bytes: u64) -> ! {
    let mut ok = true;
    outl(DELAY_TEST_PORT, DELAY_MS);
    for n in 0..READS {
        let (value, us) = timed_read();
        println!("deferred: read {} of {READS}: {value:#x} after {} ms", n + 1, us / 1000);
        let expected = DELAY_TEST_VALUE_BASE + n;
        ok &= check_fmt("guest-deferred", format_args!("read {} returns {expected:#x}", n + 1), value == expected);
        ok &= check_fmt(
            "guest-deferred",
            format_args!("read {} took at least {DELAY_MS} ms ({us} us)", n + 1),
            us + SLACK_US >= u64::from(DELAY_MS) * 1000,
        );
    }
    outl(DELAY_TEST_PORT, 0);
    let (value, _) = timed_read();
    println!("deferred: read with no delay: {value:#x}");
    ok &= check_fmt(
        "guest-deferred",
        format_args!("the undelayed read returns the next value"),
        value == DELAY_TEST_VALUE_BASE + READS,
    );
    if !ok {
        stop(1);
    }
    println!("PASS guest-deferred: {} deferred reads completed with their values and delays", READS + 1);
    println!("deferred: reading with a delay that never ends");
    outl(DELAY_TEST_PORT, DELAY_TEST_NEVER);
    let value = inl(DELAY_TEST_PORT);
    println!("FAIL guest-deferred: a read that is never completed returned {value:#x}");
    stop(1)
}
