//! `guest-exceptions`: #UD, #DE, #GP, #PF and #BP raised in the guest are delivered to
//! the guest's own IDT (the hypervisor's exception bitmap is empty), with the right
//! vector, error code, RIP and CR2; single-stepping (RFLAGS.TF) over a CPUID or an IN,
//! which the hypervisor completes, raises exactly one #DB with DR6.BS after it.
#![no_std]
#![no_main]

use guest_rt::exceptions::{clear_dr6, count, expect_fault, expect_trap, install, last_dr6, seen};
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

/// DR6.BS (bit 14): the #DB was a single-step trap (SDM Vol. 3B "Debug Status Register").
const DR6_BS: u64 = 1 << 14;
/// The #DB vector.
const DB: u8 = 1;

/// Sets RFLAGS.TF with POPFQ, so that the next instruction, a CPUID (leaf 0) or an
/// `in al, 0x80` (`io`), both completed by the hypervisor, is single-stepped; returns
/// whether exactly one #DB came, at the instruction after it, with DR6.BS (the guest's
/// handler clears TF).
fn single_step(io: bool) -> bool {
    clear_dr6();
    let before = count(DB);
    expect_trap();
    let after: u64;
    // SAFETY: TF makes the instruction after POPFQ trap once; the handler clears TF and
    // resumes at label 2. RBX (clobbered by CPUID) is saved and restored by hand.
    unsafe {
        if io {
            core::arch::asm!(
                "pushfq", "or qword ptr [rsp], 0x100", "popfq",
                "in al, 0x80",
                "2:",
                "lea {after}, [rip + 2b]",
                after = out(reg) after, out("eax") _,
            );
        } else {
            core::arch::asm!(
                "mov {save}, rbx",
                "pushfq", "or qword ptr [rsp], 0x100", "popfq",
                "cpuid",
                "2:",
                "mov rbx, {save}",
                "lea {after}, [rip + 2b]",
                save = out(reg) _, after = out(reg) after,
                inout("eax") 0u32 => _, out("ecx") _, out("edx") _,
            );
        }
    }
    let db = seen();
    let ok = db.is_some_and(|s| s.vector == u64::from(DB) && s.rip == after)
        && last_dr6() & DR6_BS != 0
        && count(DB) == before + 1;
    if !ok {
        println!(
            "{NAME}: single-step (io {io}): {db:x?}, after {after:#x}, DR6 {:#x}, #DBs {}",
            last_dr6(),
            count(DB) - before
        );
    }
    ok
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

    ok &= check(NAME, "single-step over CPUID: one #DB with DR6.BS after it", single_step(false));
    ok &= check(NAME, "single-step over IN: one #DB with DR6.BS after it", single_step(true));

    if ok {
        println!("PASS {NAME}");
    }
    stop(if ok { 0 } else { 1 })
}
