//! `guest-triplefault`: triple-faults on purpose. With an empty IDT, #UD cannot be
//! delivered (#GP), nor can the #GP (#DF), nor the #DF: the CPU shuts down, which under
//! VMX is a triple-fault exit. The hypervisor must stop this partition only.
#![no_std]
#![no_main]

use guest_rt::println;

/// Entry point (see `hv_abi::start`).
#[no_mangle]
#[link_section = ".text._start"]
pub extern "C" fn _start(_vcpu: u64, _ram: u64) -> ! {
    println!("guest-triplefault: loading an empty IDT and executing UD2");
    let empty: [u16; 5] = [0; 5];
    // SAFETY: deliberately breaks this guest: an empty IDT, then an invalid opcode.
    unsafe {
        core::arch::asm!("lidt [{}]", "ud2", in(reg) empty.as_ptr(), options(noreturn));
    }
}
