//! `guest-hello`: a 64-bit guest that greets through the console hypercall, checks
//! the start state it was given, and stops itself.
#![no_std]
#![no_main]

use guest_rt::{check, println, stop};

/// Entry point (see `hv_abi::start`): RDI = vCPU id, RSI = RAM size in bytes.
#[no_mangle]
#[link_section = ".text._start"]
pub extern "C" fn _start(vcpu: u64, ram_bytes: u64) -> ! {
    println!("hello from guest-hello: vcpu {vcpu}, {} MiB of RAM", ram_bytes >> 20);
    let mut ok = true;
    ok &= check("guest-hello", "vcpu id hypercall matches RDI", guest_rt::vcpu_id() == vcpu);
    ok &= check("guest-hello", "RAM size is a whole number of MiB", ram_bytes > 0 && ram_bytes.is_multiple_of(1 << 20));
    if ok {
        println!("PASS guest-hello");
    }
    stop(if ok { 0 } else { 1 })
}
