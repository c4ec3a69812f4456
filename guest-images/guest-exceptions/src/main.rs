//! `guest-exceptions`: #UD, #DE, #GP, #PF and #BP raised in the guest are delivered to
//! the guest's own IDT (the hypervisor's exception bitmap is empty), with the right
//! vector, error code, RIP and CR2.
#![no_std]
#![no_main]

use guest_rt::exceptions::{expect_fault, expect_trap, install, seen};
use guest_rt::{check, println, stop};

const NAME: &str = "guest-exceptions";
/// An address the boot page tables do not map (they cover the first 4 GiB).
const UNMAPPED: u64 = 5 << 30;
/// A non-canonical address.
const NON_CANONICAL: u64 = 0x8000_0000_0000_0000;

/// Reads a qword at `addr` with `mov rax, [rcx]` (3 bytes: 48 8b 01); returns the
/// instruction's address.
fn load_at(addr: u64) -> u64 {
    let rip: u64;
    // SAFETY: the load may fault on purpose; the guest's handler resumes after it.
    unsafe {
        core::arch::asm!("lea {rip}, [rip + 2f]", "2:", ".byte 0x48, 0x8b, 0x01", rip = out(reg) rip, in("rcx") addr, out("rax") _);
    }
    rip
}

/// Entry point (see `hv_abi::start`).
#[no_mangle]
#[link_section = ".text._start"]
pub extern "C" fn _start(_vcpu: u64, _ram: u64) -> ! {
    install();
    let mut ok = true;

    expect_fault(2);
    let rip: u64;
    // SAFETY: UD2 faults on purpose; the handler resumes after its 2 bytes.
    unsafe { core::arch::asm!("lea {}, [rip + 2f]", "2:", "ud2", out(reg) rip) };
    ok &= check(
        NAME,
        "#UD from UD2 reaches the guest at the right RIP",
        seen().is_some_and(|s| s.vector == 6 && s.rip == rip),
    );

    expect_fault(3);
    let rip: u64;
    // SAFETY: DIV RCX (48 f7 f1) with RCX = 0 faults on purpose (#DE).
    unsafe {
        core::arch::asm!("lea {rip}, [rip + 2f]", "2:", ".byte 0x48, 0xf7, 0xf1", rip = out(reg) rip, in("rcx") 0u64, inout("rax") 1u64 => _, inout("rdx") 0u64 => _);
    }
    ok &= check(NAME, "#DE from a division by zero", seen().is_some_and(|s| s.vector == 0 && s.rip == rip));

    expect_fault(3);
    let rip = load_at(NON_CANONICAL);
    ok &= check(
        NAME,
        "#GP(0) from a non-canonical address",
        seen().is_some_and(|s| s.vector == 13 && s.error_code == 0 && s.rip == rip),
    );

    expect_fault(3);
    let rip = load_at(UNMAPPED);
    let pf = seen();
    ok &= check(
        NAME,
        "#PF with CR2 = the address and a not-present read error code",
        pf.is_some_and(|s| s.vector == 14 && s.cr2 == UNMAPPED && s.error_code == 0 && s.rip == rip),
    );

    expect_trap();
    let after: u64;
    // SAFETY: INT3 traps on purpose; the handler resumes after it.
    unsafe { core::arch::asm!("int3", "2:", "lea {}, [rip + 2b]", out(reg) after) };
    ok &= check(
        NAME,
        "#BP from INT3 reports the next instruction",
        seen().is_some_and(|s| s.vector == 3 && s.rip == after),
    );

    if ok {
        println!("PASS {NAME}");
    }
    stop(if ok { 0 } else { 1 })
}
