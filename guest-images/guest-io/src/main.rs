//! `guest-io`: with no device claiming them, ports read all-ones and ignore writes;
//! IN of 8 and 16 bits keeps the rest of RAX; INS/OUTS with and without REP, both
//! directions, across a page boundary and beyond one exit's worth of elements; a
//! string source that is not mapped gives the guest a #PF. The address size and the
//! segment count: REP INSB with a 0x67 prefix uses ECX and EDI only (stale upper bits
//! ignored, then cleared); OUTSB with an FS override reads at FS base + RSI. At CPL 3
//! (IOPL 3), REP INSB into and REP OUTSB from a supervisor-only page raise #PF with the
//! U/S bit in the error code.
#![no_std]
#![no_main]

use guest_rt::exceptions::{expect_fault, install, seen, set_user_gate};
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

/// The 2 MiB page at 4 MiB: supervisor-only (its boot page-directory entry has U/S = 0).
const SUPERVISOR_PAGE: u64 = 4 << 20;
/// The vector ring 3 uses to come back (`INT 0x81`, a DPL 3 gate).
const RETURN_VECTOR: u8 = 0x81;
/// Selectors of the GDT below: ring-3 data and 64-bit code (RPL 3), the TSS.
const USER_DATA: u64 = 0x20 | 3;
const USER_CODE: u64 = 0x28 | 3;
const TSS_SELECTOR: u16 = 0x30;

/// The ring-0 stack the CPU switches to on an exception from ring 3 (TSS.RSP0).
#[repr(C, align(16))]
struct Stack([u8; 16 * 1024]);
static mut RING0_STACK: Stack = Stack([0; 16 * 1024]);
/// A 64-bit TSS (SDM Vol. 3A "Task Management in 64-bit Mode"): RSP0 at byte 4, the
/// I/O map base at byte 102 past the limit (no bitmap: IOPL alone allows I/O).
#[repr(C, align(16))]
struct Tss([u8; 104]);
static mut TSS: Tss = Tss([0; 104]);
/// The boot GDT's four descriptors, ring-3 data (0x20) and 64-bit code (0x28), and the
/// TSS descriptor (0x30, two slots).
static mut GDT: [u64; 8] = [
    0,
    0x00af_9b00_0000_ffff,
    0x00cf_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x00cf_f300_0000_ffff,
    0x00af_fb00_0000_ffff,
    0,
    0,
];
/// Ring 0's RSP while ring 3 runs (`guest_io_enter_user` / `guest_io_user_return`).
#[no_mangle]
static mut GUEST_IO_SAVED_RSP: u64 = 0;
/// The address the ring-3 code transfers to or from.
#[no_mangle]
static mut GUEST_IO_USER_TARGET: u64 = 0;

core::arch::global_asm!(
    r#"
    .text
    .global guest_io_enter_user
// rdi: the ring-3 code to run. Returns when it executes INT 0x81.
guest_io_enter_user:
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
    mov [rip + GUEST_IO_SAVED_RSP], rsp
    push {user_data}
    push 0
    pushfq
    pop rax
    or rax, 0x3000
    and rax, ~0x200
    push rax
    push {user_code}
    push rdi
    iretq
    .global guest_io_user_return
guest_io_user_return:
    mov rsp, [rip + GUEST_IO_SAVED_RSP]
    // The INT from ring 3 left SS null and the IRETQ to ring 3 nulled DS and ES: back
    // to the boot data selector.
    mov eax, 0x18
    mov ss, eax
    mov ds, eax
    mov es, eax
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    ret
// Ring 3: REP INSB of 4 bytes from port 0x80 to the target, then back.
    .global guest_io_user_ins
guest_io_user_ins:
    mov rdi, [rip + GUEST_IO_USER_TARGET]
    mov ecx, 4
    mov edx, 0x80
    rep insb
    int {vector}
// Ring 3: REP OUTSB of 4 bytes from the target to port 0x80, then back.
    .global guest_io_user_outs
guest_io_user_outs:
    mov rsi, [rip + GUEST_IO_USER_TARGET]
    mov ecx, 4
    mov edx, 0x80
    rep outsb
    int {vector}
"#,
    user_data = const USER_DATA,
    user_code = const USER_CODE,
    vector = const RETURN_VECTOR,
);

extern "C" {
    fn guest_io_enter_user(code: u64);
    fn guest_io_user_return();
    fn guest_io_user_ins();
    fn guest_io_user_outs();
}

/// Sets up ring 3 (a GDT with ring-3 segments and a TSS, the return gate, U/S = 1 on
/// the paging entries of this image's 2 MiB page) and checks that ring-3 string I/O
/// on the supervisor page at 4 MiB faults as the processor's would: #PF with
/// P | U/S (| W/R for INS) and CR2 = the target.
fn user_mode_checks() -> bool {
    // SAFETY: the boot page tables at hv_abi's PAGE_TABLES (PML4, PDPT, then the
    // first GiB's page directory) identity-map this guest; setting U/S on the entries
    // that lead to the image's 2 MiB page (2-4 MiB) lets ring 3 run it. The TSS and GDT
    // are this guest's own statics; LGDT keeps the four boot descriptors in place, so
    // the loaded selectors stay valid. The CR3 reload flushes the old translations.
    unsafe {
        let pml4 = 0x1000 as *mut u64;
        let pdpt = 0x2000 as *mut u64;
        let pd = 0x3000 as *mut u64;
        const USER: u64 = 1 << 2;
        *pml4 |= USER;
        *pdpt |= USER;
        *pd.add(1) |= USER;
        core::arch::asm!("mov {t}, cr3", "mov cr3, {t}", t = out(reg) _);

        let stack_top = core::ptr::addr_of!(RING0_STACK) as u64 + core::mem::size_of::<Stack>() as u64;
        let tss = core::ptr::addr_of_mut!(TSS).cast::<u8>();
        core::ptr::copy_nonoverlapping(stack_top.to_le_bytes().as_ptr(), tss.add(4), 8);
        core::ptr::copy_nonoverlapping(104u16.to_le_bytes().as_ptr(), tss.add(102), 2);
        let base = tss as u64;
        let gdt = core::ptr::addr_of_mut!(GDT).cast::<u64>();
        // Available 64-bit TSS (type 9), present, limit 103 (SDM Vol. 3A "TSS Descriptor
        // in 64-bit mode").
        *gdt.add(6) = 103 | ((base & 0xff_ffff) << 16) | (0x89 << 40) | ((base >> 24) & 0xff) << 56;
        *gdt.add(7) = base >> 32;
        let mut pointer = [0u8; 10];
        pointer[..2].copy_from_slice(&(8u16 * 8 - 1).to_le_bytes());
        pointer[2..].copy_from_slice(&(gdt as u64).to_le_bytes());
        core::arch::asm!("lgdt [{}]", in(reg) pointer.as_ptr(), options(nostack));
        core::arch::asm!("ltr {0:x}", in(reg) TSS_SELECTOR, options(nostack));
    }
    set_user_gate(RETURN_VECTOR, guest_io_user_return as *const () as u64);

    let mut ok = true;
    let target = SUPERVISOR_PAGE + 0x100;
    // SAFETY: a static only this code uses.
    unsafe { *core::ptr::addr_of_mut!(GUEST_IO_USER_TARGET) = target };
    for (what, code, error) in [
        (
            "CPL 3 REP INSB into a supervisor page: #PF with P | W | U/S (0x7), CR2 = the target",
            guest_io_user_ins as *const () as u64,
            0x7,
        ),
        (
            "CPL 3 REP OUTSB from a supervisor page: #PF with P | U/S (0x5), CR2 = the target",
            guest_io_user_outs as *const () as u64,
            0x5,
        ),
    ] {
        expect_fault(2);
        // SAFETY: runs `code` at CPL 3; it faults once (the handler resumes after the
        // 2-byte REP INSB/OUTSB) and returns through INT 0x81.
        unsafe { guest_io_enter_user(code) };
        let pf = seen();
        let good = pf.is_some_and(|s| s.vector == 14 && s.error_code == error && s.cr2 == target);
        if !good {
            println!("{NAME}: {what}: saw {pf:x?}");
        }
        ok &= check(NAME, what, good);
    }
    ok
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

    ok &= user_mode_checks();

    if ok {
        println!("PASS {NAME}");
    }
    stop(if ok { 0 } else { 1 })
}
