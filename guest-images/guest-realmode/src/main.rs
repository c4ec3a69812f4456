//! `guest-realmode`: starts in real mode at 0x8000 (unrestricted guest) and brings
//! itself up as an OS would: protected mode with its own GDT, identity page tables,
//! EFER.LME (a WRMSR the hypervisor checks), paging on, a far jump into 64-bit code,
//! and then Rust, which checks that each stage really happened.
#![no_std]
#![no_main]

use guest_rt::{check, println, stop};

core::arch::global_asm!(
    r#"
    .section .realmode, "awx"
    .code16
    .global _start
_start:
    cli
    xorw %ax, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw $0x7000, %sp
    movw %cs, %ax
    movw %ax, (realmode_cs)
    movb $1, (realmode_marker)
    lgdtl (realmode_gdt_ptr)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x18, $realmode_pm32

    .code32
realmode_pm32:
    movw $0x20, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movl $0x7000, %esp
    movl $1, (protected_marker)
    // Identity page tables at 0x1000: PML4, PDPT, four page directories (4 GiB, 2 MiB pages).
    pushl %edi
    movl $0x1000, %edi
    movl $0x1800, %ecx
    xorl %eax, %eax
    cld
    rep stosl
    popl %edi
    movl $0x2003, 0x1000
    movl $0x3003, 0x2000
    movl $0x4003, 0x2008
    movl $0x5003, 0x2010
    movl $0x6003, 0x2018
    movl $0x3000, %ebx
    movl $0x83, %eax
    movl $2048, %ecx
1:
    movl %eax, (%ebx)
    addl $0x200000, %eax
    addl $8, %ebx
    loop 1b
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl $0x1000, %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx
    rdmsr
    orl $0x900, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80000000, %eax
    movl %eax, %cr0
    ljmpl $0x08, $realmode_lm64

    .code64
realmode_lm64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movq $0x1ff000, %rsp
    movl %edi, %edi
    movl %esi, %esi
    call rust_main
2:
    hlt
    jmp 2b

    .balign 8
realmode_gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
    .quad 0x00cf9a000000ffff
    .quad 0x00cf92000000ffff
realmode_gdt_ptr:
    .word 39
    .long realmode_gdt
    .global realmode_marker
realmode_marker:
    .byte 0
    .balign 4
    .global protected_marker
protected_marker:
    .long 0
    .global realmode_cs
realmode_cs:
    .word 0
    .text
    "#,
    options(att_syntax)
);

extern "C" {
    static realmode_marker: u8;
    static protected_marker: u32;
    static realmode_cs: u16;
}

const NAME: &str = "guest-realmode";

/// Called from the 64-bit stage with RDI = vCPU id and RSI = RAM size (from the start
/// state, kept through the mode switches).
#[no_mangle]
pub extern "C" fn rust_main(_vcpu: u64, ram: u64) -> ! {
    let mut ok = true;
    // SAFETY: plain reads of bytes the 16- and 32-bit stages wrote.
    let (real, protected, cs) = unsafe {
        (
            core::ptr::addr_of!(realmode_marker).read_volatile(),
            core::ptr::addr_of!(protected_marker).read_volatile(),
            core::ptr::addr_of!(realmode_cs).read_volatile(),
        )
    };
    ok &= check(NAME, "the 16-bit entry ran in real mode with CS = 0x0800", real == 1 && cs == 0x0800);
    ok &= check(NAME, "protected mode was reached", protected == 1);
    let (lo, hi): (u32, u32);
    // SAFETY: reading IA32_EFER; the hypervisor answers from the guest's state.
    unsafe { core::arch::asm!("rdmsr", in("ecx") 0xc000_0080u32, out("eax") lo, out("edx") hi) };
    let efer = (u64::from(hi) << 32) | u64::from(lo);
    ok &= check(NAME, "long mode is active (EFER.LME and LMA)", efer & 0x500 == 0x500);
    let code: u16;
    // SAFETY: reading CS has no side effects.
    unsafe { core::arch::asm!("mov {0:x}, cs", out(reg) code) };
    ok &= check(NAME, "running in the 64-bit code segment (CS = 0x08)", code == 0x08);
    ok &= check(NAME, "the RAM size survived the mode switches (RSI)", ram == 16 << 20);
    if ok {
        println!("PASS {NAME}");
    }
    stop(if ok { 0 } else { 1 })
}
