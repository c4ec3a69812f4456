//! `guest-protected`: starts in 32-bit flat protected mode with paging off (the start
//! state Multiboot loaders give), checks it, then enters long mode with the identity
//! page tables the hypervisor wrote (CR3 = 0x1000) and continues in Rust.
#![no_std]
#![no_main]

use guest_rt::{check, println, stop};

core::arch::global_asm!(
    r#"
    .section .text._start, "ax"
    .code32
    .global _start
_start:
    movl %cr0, %eax
    movl %eax, (protected_cr0)
    movw %cs, %ax
    movw %ax, (protected_cs)
    movl $0xc0000080, %ecx
    rdmsr
    orl $0x900, %eax
    wrmsr
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl $0x1000, %eax
    movl %eax, %cr3
    movl %cr0, %eax
    orl $0x80000000, %eax
    movl %eax, %cr0
    ljmpl $0x08, $protected_lm64
    .code64
protected_lm64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl %edi, %edi
    movl %esi, %esi
    movl %esp, %esp
    call protected_main
2:
    hlt
    jmp 2b
    .text
    "#,
    options(att_syntax)
);

/// What the 32-bit stage saw (written there, read from Rust).
#[no_mangle]
static mut protected_cr0: u32 = 0;
#[no_mangle]
static mut protected_cs: u16 = 0;

const NAME: &str = "guest-protected";

#[no_mangle]
extern "C" fn protected_main(_vcpu: u64, ram: u64) -> ! {
    // SAFETY: plain reads of what the 32-bit stage stored.
    let (cr0, cs) = unsafe {
        (core::ptr::addr_of!(protected_cr0).read_volatile(), core::ptr::addr_of!(protected_cs).read_volatile())
    };
    let mut ok = true;
    ok &= check(
        NAME,
        "started with protection on and paging off (CR0.PE = 1, PG = 0)",
        cr0 & 1 == 1 && cr0 & (1 << 31) == 0,
    );
    ok &= check(NAME, "started on the flat 32-bit code selector 0x18", cs == 0x18);
    let code: u16;
    // SAFETY: reading CS has no side effects.
    unsafe { core::arch::asm!("mov {0:x}, cs", out(reg) code) };
    ok &= check(NAME, "reached 64-bit mode with the hypervisor's page tables", code == 0x08);
    ok &= check(NAME, "the RAM size came in ESI", ram == 16 << 20);
    if ok {
        println!("PASS {NAME}");
    }
    stop(if ok { 0 } else { 1 })
}
