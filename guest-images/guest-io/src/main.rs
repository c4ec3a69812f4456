//! `guest-io`: with no device claiming them, ports read all-ones and ignore writes;
//! IN of 8 and 16 bits keeps the rest of RAX; INS/OUTS with and without REP, both
//! directions, across a page boundary and beyond one exit's worth of elements; a
//! string source that is not mapped gives the guest a #PF. The address size and the
//! segment count: REP INSB with a 0x67 prefix uses ECX and EDI only (stale upper bits
//! ignored, then cleared); OUTSB with an FS override reads at FS base + RSI.
#![no_std]
#![no_main]

use guest_rt::exceptions::{expect_fault, install, seen};
use guest_rt::{check, println, stop};

const NAME: &str = "guest-io";
/// An address the boot page tables do not map (they cover the first 4 GiB).
const UNMAPPED: u64 = 5 << 30;

#[repr(C, align(4096))]
struct Pages([u8; 3 * 4096]);
static mut BUF: Pages = Pages([0; 3 * 4096]);

fn buf() -> *mut u8 {
    core::ptr::addr_of_mut!(BUF).cast()
}

/// Entry point (see `hv_abi::start`).
#[no_mangle]
#[link_section = ".text._start"]
pub extern "C" fn _start(_vcpu: u64, _ram: u64) -> ! {
    install();
    let mut ok = true;

    let (mut a8, mut a16, a32): (u64, u64, u32);
    // SAFETY: port I/O to unclaimed ports; the hypervisor emulates it.
    unsafe {
        a8 = 0x1122_3344_5566_7788;
        a16 = 0x1122_3344_5566_7788;
        core::arch::asm!("in al, 0x80", inout("rax") a8);
        core::arch::asm!("in ax, dx", in("dx") 0x1234u16, inout("rax") a16);
        core::arch::asm!("in eax, dx", in("dx") 0xcfcu16, out("eax") a32);
    }
    ok &= check(NAME, "IN AL of an unclaimed port reads 0xff and keeps RAX[63:8]", a8 == 0x1122_3344_5566_77ff);
    ok &= check(NAME, "IN AX reads 0xffff and keeps RAX[63:16]", a16 == 0x1122_3344_5566_ffff);
    ok &= check(NAME, "IN EAX reads 0xffffffff", a32 == 0xffff_ffff);
    let after: u8;
    // SAFETY: as above; the write is ignored.
    unsafe { core::arch::asm!("out 0x80, al", "in al, 0x80", inout("al") 0x42u8 => after) };
    ok &= check(NAME, "OUT is ignored (the port still reads 0xff)", after == 0xff);

    // REP INSB across a page boundary: 64 bytes ending 32 bytes into the second page.
    let start = buf().wrapping_add(4096 - 32);
    let (rdi, rcx): (u64, u64);
    // SAFETY: the 64 bytes lie in BUF; INS writes only there.
    unsafe {
        core::arch::asm!("cld", "rep insb", inout("rdi") start as u64 => rdi, inout("rcx") 64u64 => rcx, in("dx") 0x80u16)
    };
    // SAFETY: reading back BUF, which only this code uses.
    let bytes = unsafe { core::slice::from_raw_parts(buf(), 3 * 4096) };
    ok &= check(
        NAME,
        "REP INSB fills across a page boundary with 0xff",
        bytes[4096 - 32..4096 + 32].iter().all(|&b| b == 0xff),
    );
    ok &= check(NAME, "REP INSB leaves the neighbours alone", bytes[4096 - 33] == 0 && bytes[4096 + 32] == 0);
    ok &= check(NAME, "REP INSB: RDI advanced by 64, RCX = 0", rdi == start as u64 + 64 && rcx == 0);

    // REP INSB with more elements than one exit completes (4096 per exit: 3 exits).
    let (rdi, rcx): (u64, u64);
    // SAFETY: 10000 bytes, inside BUF's 12288.
    unsafe {
        core::arch::asm!("cld", "rep insb", inout("rdi") buf() as u64 => rdi, inout("rcx") 10_000u64 => rcx, in("dx") 0x80u16)
    };
    ok &= check(NAME, "REP INSB of 10000 elements (3 exits) completes", rdi == buf() as u64 + 10_000 && rcx == 0);
    let (rdi, rcx): (u64, u64);
    // SAFETY: 1000 dwords = 4000 bytes, inside BUF.
    unsafe {
        core::arch::asm!("cld", "rep insd", inout("rdi") buf() as u64 => rdi, inout("rcx") 1000u64 => rcx, in("dx") 0x80u16)
    };
    ok &= check(NAME, "REP INSD of 1000 dwords completes", rdi == buf() as u64 + 4000 && rcx == 0);

    // Backwards (DF = 1) INSW, 4 elements ending at the end of BUF.
    let top = buf().wrapping_add(3 * 4096 - 2);
    let rdi: u64;
    // SAFETY: 8 bytes inside BUF; DF is cleared again right after.
    unsafe {
        core::arch::asm!("std", "rep insw", "cld", inout("rdi") top as u64 => rdi, inout("rcx") 4u64 => _, in("dx") 0x80u16)
    };
    ok &= check(NAME, "REP INSW with DF = 1 moves RDI down", rdi == top as u64 - 8);

    // OUTSW from BUF: RSI advances, nothing else happens.
    let rsi: u64;
    // SAFETY: reads 20 bytes of BUF.
    unsafe {
        core::arch::asm!("cld", "rep outsw", inout("rsi") buf() as u64 => rsi, inout("rcx") 10u64 => _, in("dx") 0x80u16)
    };
    ok &= check(NAME, "REP OUTSW: RSI advanced by 20", rsi == buf() as u64 + 20);

    // OUTSB from an unmapped address: #PF in the guest, CR2 = the address.
    expect_fault(1);
    // SAFETY: faults on purpose; the handler resumes after the 1-byte OUTSB.
    unsafe { core::arch::asm!("outsb", in("rsi") UNMAPPED, in("dx") 0x80u16) };
    ok &= check(
        NAME,
        "OUTSB from an unmapped source gives a #PF with CR2",
        seen().is_some_and(|s| s.vector == 14 && s.cr2 == UNMAPPED),
    );

    // REP INSB with an address-size prefix (67 f3 6c) in 64-bit mode: ECX elements at
    // EDI; the stale upper halves of RCX and RDI are ignored, and the 32-bit updates
    // zero-extend (RCX = 0, RDI = EDI + 16).
    let stale = 0xdead_beef_0000_0000u64;
    let at = 11_000;
    // SAFETY: BUF is only used by this code; 40 bytes inside it.
    unsafe { core::ptr::write_bytes(buf().wrapping_add(at), 0, 40) };
    let target = buf().wrapping_add(at) as u64;
    let (rdi, rcx): (u64, u64);
    // SAFETY: 16 bytes at BUF + 11000 (BUF lies below 4 GiB, so EDI is its address).
    unsafe {
        core::arch::asm!("cld", ".byte 0x67, 0xf3, 0x6c", inout("rdi") stale | target => rdi, inout("rcx") stale | 16 => rcx, in("dx") 0x80u16)
    };
    // SAFETY: reading back BUF.
    let bytes = unsafe { core::slice::from_raw_parts(buf(), 3 * 4096) };
    ok &= check(
        NAME,
        "REP INSB with a 0x67 prefix transfers ECX bytes at EDI; RCX = 0, RDI = EDI + 16 zero-extended",
        bytes[at..at + 16].iter().all(|&b| b == 0xff) && bytes[at + 16] == 0 && rcx == 0 && rdi == target + 16,
    );

    // OUTSB with an FS override (64 6e) reads at FS base + RSI: with FS base at an
    // unmapped address, a #PF there (CR2 = FS base + RSI, not-present read).
    const IA32_FS_BASE: u32 = 0xc000_0100;
    guest_rt::msr::write(IA32_FS_BASE, UNMAPPED);
    expect_fault(2);
    // SAFETY: faults on purpose; the handler resumes after the 2-byte FS: OUTSB.
    unsafe { core::arch::asm!(".byte 0x64, 0x6e", in("rsi") 0x10u64, in("dx") 0x80u16) };
    guest_rt::msr::write(IA32_FS_BASE, 0);
    ok &= check(
        NAME,
        "FS: OUTSB reads at FS base + RSI (#PF with CR2 = FS base + RSI)",
        seen().is_some_and(|s| s.vector == 14 && s.cr2 == UNMAPPED + 0x10 && s.error_code == 0),
    );

    if ok {
        println!("PASS {NAME}");
    }
    stop(if ok { 0 } else { 1 })
}
