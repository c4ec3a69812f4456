//! `guest-deferred-stop` (2 vCPUs): is reset while one of its vCPUs waits on a deferred
//! request, which the hypervisor must then drop (`hv_abi::io_request`, "Deferred
//! completion").
//!
//! vCPU 0 sets the `delay-test` delay to [`DELAY_MS`] and starts vCPU 1, which reads the
//! port (the service partition answers `DEFERRED`). Once vCPU 1 is about to read, vCPU
//! 0 waits [`RESET_AFTER_MS`] (well before the read is due), checks that the read has
//! not returned, and resets the guest through port 0xCF9: the hypervisor stops the
//! guest, and vCPU 1's CPU, which waits on the deferred read, must leave the wait and
//! drop the request. If vCPU 1's read ever returns, or the reset does not stop the
//! guest, it prints `FAIL` and stops with code 1.
//!
//! Expected console line: `deferred-stop: vcpu 1 waits on its deferred read; resetting
//! the guest`.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicBool, Ordering};

use guest_rt::hv_abi::platform::devices::DELAY_TEST_PORT;
use guest_rt::interrupts::{delay_us, us_to_tsc, wait_for};
use guest_rt::port::{inl, outb, outl};
use guest_rt::{println, smp, stop};

/// The delay of vCPU 1's read, in milliseconds (longer than the reset comes after).
const DELAY_MS: u32 = 2000;
/// How long after vCPU 1 starts its read vCPU 0 resets the guest.
const RESET_AFTER_MS: u64 = 50;
/// The PIIX reset control register and the value that resets the system.
const RESET_CONTROL_PORT: u16 = 0xcf9;
const RESET_VALUE: u8 = 6;

/// vCPU 1 is about to read the delay-test port.
static READING: AtomicBool = AtomicBool::new(false);
/// vCPU 1's read returned.
static RETURNED: AtomicBool = AtomicBool::new(false);

/// vCPU 1: reads the delay-test port, which is still deferred when the reset comes.
extern "C" fn ap_entry(_apic_id: u32) -> ! {
    READING.store(true, Ordering::SeqCst);
    let value = inl(DELAY_TEST_PORT);
    RETURNED.store(true, Ordering::SeqCst);
    println!("FAIL guest-deferred-stop: vcpu 1's read returned {value:#x} although the guest was reset");
    stop(1)
}

/// Entry point (see `hv_abi::start`).
#[no_mangle]
#[link_section = ".text._start"]
pub extern "C" fn _start(_vcpu: u64, _ram_bytes: u64) -> ! {
    outl(DELAY_TEST_PORT, DELAY_MS);
    if smp::start_aps(1, ap_entry) != 1 {
        println!("FAIL guest-deferred-stop: vcpu 1 did not come online");
        stop(1);
    }
    if !wait_for(|| READING.load(Ordering::SeqCst), us_to_tsc(1_000_000)) {
        println!("FAIL guest-deferred-stop: vcpu 1 did not start its read");
        stop(1);
    }
    delay_us(RESET_AFTER_MS * 1000);
    if RETURNED.load(Ordering::SeqCst) {
        println!("FAIL guest-deferred-stop: vcpu 1's read returned before its delay");
        stop(1);
    }
    println!("deferred-stop: vcpu 1 waits on its deferred read; resetting the guest");
    outb(RESET_CONTROL_PORT, RESET_VALUE);
    // The reset stops this vCPU on its way back into the guest; nothing below runs.
    delay_us(1_000_000);
    println!("FAIL guest-deferred-stop: still running after the reset");
    stop(1)
}
