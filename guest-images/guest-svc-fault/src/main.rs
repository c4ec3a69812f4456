//! `guest-svc-fault`: checks that the service partition answers (a line through COM1),
//! then asks it to fail through the `svc-fault-test` port (0xF6): with 16 MiB of RAM
//! it first asks it to flood the control interface (`FAULT_TEST_CREATE_FLOOD`), checks
//! that it still answers, then asks for a crash (`FAULT_TEST_CRASH`); with 48 MiB for
//! a halt (`FAULT_TEST_HALT`), with 64 MiB for an INIT (`FAULT_TEST_INIT`); with any
//! other size it asks for a hang (`FAULT_TEST_HANG`). The hypervisor must then stop this guest with a line naming the
//! access; if the OUT ever returns, the guest reports `FAIL` and stops with code 1.
//!
//! Expected console lines: `svc-fault: the service partition answers` (through the
//! service partition's 16550), then `svc-fault: asking the service partition to crash`
//! (or `... to hang`).
#![no_std]
#![no_main]

use guest_rt::hv_abi::platform::devices::{
    FAULT_TEST_CRASH, FAULT_TEST_CREATE_FLOOD, FAULT_TEST_CREATE_FLOOD_REQUESTS, FAULT_TEST_HALT, FAULT_TEST_HANG,
    FAULT_TEST_INIT,
};
use guest_rt::port::{inb, outb};
use guest_rt::{println, stop};

const COM1: u16 = 0x3f8;
const FAULT_TEST_PORT: u16 = 0xf6;

/// Writes `line` to COM1, polling LSR.THRE.
fn uart_line(line: &str) {
    for &b in line.as_bytes().iter().chain(b"\n") {
        while inb(COM1 + 5) & 0x20 == 0 {}
        outb(COM1, b);
    }
}

/// Entry point (see `hv_abi::start`): RSI = RAM size in bytes.
#[no_mangle]
#[link_section = ".text._start"]
pub extern "C" fn _start(_vcpu: u64, ram_bytes: u64) -> ! {
    uart_line("svc-fault: the service partition answers");
    if ram_bytes == 16 << 20 {
        // Before the crash: the service partition floods the control interface, and
        // must still answer afterwards.
        println!("svc-fault: asking the service partition to flood VM_CREATE");
        for _ in 0..FAULT_TEST_CREATE_FLOOD_REQUESTS {
            outb(FAULT_TEST_PORT, FAULT_TEST_CREATE_FLOOD);
        }
        uart_line("svc-fault: the service partition answers after its VM_CREATE flood");
    }
    let (what, value) = match ram_bytes >> 20 {
        16 => ("crash", FAULT_TEST_CRASH),
        48 => ("halt", FAULT_TEST_HALT),
        64 => ("take an INIT", FAULT_TEST_INIT),
        _ => ("hang", FAULT_TEST_HANG),
    };
    println!("svc-fault: asking the service partition to {what}");
    outb(FAULT_TEST_PORT, value);
    println!("FAIL guest-svc-fault: still running after the service partition's {what}");
    stop(1)
}
