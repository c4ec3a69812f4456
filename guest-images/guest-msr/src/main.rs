//! `guest-msr`: pass-through MSRs work without exits, virtualised ones show the
//! hypervisor's values and rules, and an unknown MSR raises #GP in the guest's IDT.
#![no_std]
#![no_main]

use core::arch::x86_64::__cpuid;

use guest_rt::exceptions::{expect_fault, install, seen};
use guest_rt::hv_abi::{hypercall as hc, ExitCount};
use guest_rt::{check, println, raw_hypercall, stop};

const NAME: &str = "guest-msr";

fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDMSR may raise #GP on purpose; the guest's handler resumes after it.
    unsafe { core::arch::asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

fn wrmsr(msr: u32, value: u64) {
    // SAFETY: as for rdmsr; the MSRs written here only affect this guest.
    unsafe {
        core::arch::asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack));
    }
}

/// Whether accessing `msr` raises #GP (2-byte RDMSR/WRMSR skipped by the handler).
fn faults(f: impl FnOnce()) -> bool {
    expect_fault(2);
    f();
    seen().is_some_and(|s| s.vector == 13 && s.error_code == 0)
}

fn xsetbv(value: u64) {
    // SAFETY: XSETBV of XCR0 exits to the hypervisor, which validates the value; a bad
    // value raises #GP, which the guest's handler skips (3 bytes: 0f 01 d1).
    unsafe {
        core::arch::asm!("xsetbv", in("ecx") 0u32, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack))
    };
}

fn xgetbv() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: XGETBV of XCR0 is allowed once CR4.OSXSAVE is set; no side effects.
    unsafe { core::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

static mut STATS: [ExitCount; 32] = [ExitCount { reason: 0, _reserved: 0, count: 0 }; 32];

/// This vCPU's RDMSR (31) plus WRMSR (32) exits so far.
fn msr_exits() -> u64 {
    let entry = core::mem::size_of::<ExitCount>() as u64;
    let n = raw_hypercall(hc::EXIT_STATS, core::ptr::addr_of_mut!(STATS) as u64, 32 * entry, 0, 0);
    // SAFETY: the hypervisor wrote `n` entries; nothing else touches STATS.
    let stats = unsafe { &*core::ptr::addr_of!(STATS) };
    stats.iter().take(n as usize).filter(|e| e.reason == 31 || e.reason == 32).map(|e| e.count).sum()
}

/// Entry point (see `hv_abi::start`): RDI = vCPU id.
#[no_mangle]
#[link_section = ".text._start"]
pub extern "C" fn _start(_vcpu: u64, _ram: u64) -> ! {
    install();
    let mut ok = true;

    let before = msr_exits();
    let lstar = 0xffff_8000_1234_5000;
    wrmsr(0xc000_0082, lstar);
    let back = rdmsr(0xc000_0082);
    ok &= check(NAME, "IA32_LSTAR passes through: the value written reads back", back == lstar);
    ok &= check(NAME, "IA32_LSTAR accesses cause no exit", msr_exits() == before);

    ok &= check(NAME, "IA32_FEATURE_CONTROL reads locked with VMX off (1)", rdmsr(0x3a) == 1);
    ok &= check(NAME, "writing IA32_FEATURE_CONTROL raises #GP", faults(|| wrmsr(0x3a, 5)));
    let pat = 0x0007_0406_0007_0406;
    wrmsr(0x277, pat);
    ok &= check(NAME, "IA32_PAT keeps a valid value", rdmsr(0x277) == pat);
    ok &=
        check(NAME, "IA32_PAT with an invalid memory type raises #GP", faults(|| wrmsr(0x277, 0x0007_0406_0007_0402)));
    ok &= check(NAME, "IA32_MTRRCAP reads 8 variable MTRRs, fixed, WC", rdmsr(0xfe) == 0x508);
    let efer = rdmsr(0xc000_0080);
    ok &= check(NAME, "IA32_EFER shows LME, LMA and NXE", efer & 0xd00 == 0xd00);
    ok &= check(NAME, "IA32_APIC_BASE: enabled BSP at 0xfee00000", rdmsr(0x1b) == 0xfee0_0900);
    ok &= check(
        NAME,
        "reading an unknown MSR (0x1234) raises #GP",
        faults(|| {
            rdmsr(0x1234);
        }),
    );
    ok &= check(NAME, "writing an unknown MSR (0x1234) raises #GP", faults(|| wrmsr(0x1234, 1)));
    ok &= check(NAME, "virtualised and unknown MSRs exit to the hypervisor", msr_exits() > before);

    // XSETBV always exits; the hypervisor applies a valid XCR0 and refuses a bad one.
    if __cpuid(1).ecx & (1 << 26) != 0 {
        // SAFETY: sets CR4.OSXSAVE (bit 18), which the CPU reports (XSAVE), so that
        // XSETBV/XGETBV are allowed in this guest.
        unsafe { core::arch::asm!("mov rax, cr4", "bts rax, 18", "mov cr4, rax", out("rax") _) };
        xsetbv(0b11);
        ok &= check(NAME, "XSETBV with x87|SSE takes effect (XGETBV reads 3)", xgetbv() == 0b11);
        expect_fault(3);
        xsetbv(0b10);
        ok &= check(NAME, "XSETBV without x87 raises #GP", seen().is_some_and(|s| s.vector == 13));
        ok &= check(NAME, "XCR0 is unchanged after the refused XSETBV", xgetbv() == 0b11);
    } else {
        println!("{NAME}: no XSAVE on this CPU; XSETBV checks skipped");
    }

    if ok {
        println!("PASS {NAME}");
    }
    stop(if ok { 0 } else { 1 })
}
