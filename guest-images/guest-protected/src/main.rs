//! `guest-protected`: starts in 32-bit flat protected mode with paging off (the start
//! state Multiboot loaders and Linux's 32-bit boot protocol give), records CS, DS and
//! SS, reloads the boot protocol's `__BOOT_CS` (0x10) and `__BOOT_DS` (0x18) from the
//! boot GDT (a bad descriptor there would fault and end the guest), reads the LAPIC
//! (an emulated MMIO load) under 32-bit and PAE paging, checks that an emulated MOV to
//! CR0 that would load a PDPTE with a reserved bit raises #GP(0), then enters long
//! mode with the identity page tables the hypervisor wrote (CR3 = 0x1000) and
//! continues in Rust.
#![no_std]
#![no_main]

use guest_rt::hv_abi::{platform, start};
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
    movw %ds, %ax
    movw %ax, (protected_ds)
    movw %ss, %ax
    movw %ax, (protected_ss)
    ljmpl ${boot_cs}, $protected_reloaded
protected_reloaded:
    movw ${boot_ds}, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %cs, %ax
    movw %ax, (reloaded_cs)
    movw %ss, %ax
    movw %ax, (reloaded_ss)
    // 32-bit paging with 4 MiB pages (CR4.PSE), identity: a load from the LAPIC page
    // exits, and the hypervisor fetches the instruction through these tables.
    movl $protected_pd32, %edi
    movl $0x83, %eax
    movl $1024, %ecx
1:
    movl %eax, (%edi)
    addl $0x400000, %eax
    addl $4, %edi
    loop 1b
    movl %cr4, %eax
    orl $0x10, %eax
    movl %eax, %cr4
    movl $protected_pd32, %eax
    movl %eax, %cr3
    movl %cr0, %eax
    orl $0x80000000, %eax
    movl %eax, %cr0
    movl ${lapic_version}, %ebx
    movl (%ebx), %eax
    movl %eax, (paging32_lapic_version)
    movl %cr0, %eax
    andl $0x7fffffff, %eax
    movl %eax, %cr0
    movl %cr4, %eax
    andl $0xffffffef, %eax
    movl %eax, %cr4
    // PAE paging with 2 MiB pages, identity (four page directories). The MOV to CR0
    // also sets NE, which the hypervisor's CR0 mask catches: it emulates the write and
    // must load the four PDPTEs into the VMCS itself, or the next fetch faults. Then
    // the same LAPIC load, fetched through the PDPTEs and these tables.
    movl $protected_pae_pd, %edi
    xorl %eax, %eax
2:
    movl %eax, %edx
    shll $21, %edx
    orl $0x83, %edx
    movl %edx, (%edi)
    movl %eax, %edx
    shrl $11, %edx
    movl %edx, 4(%edi)
    addl $8, %edi
    incl %eax
    cmpl $2048, %eax
    jne 2b
    movl $protected_pae_pdpt, %edi
    movl $protected_pae_pd, %eax
    orl $1, %eax
    movl $4, %ecx
3:
    movl %eax, (%edi)
    movl $0, 4(%edi)
    addl $0x1000, %eax
    addl $8, %edi
    loop 3b
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl $protected_pae_pdpt, %eax
    movl %eax, %cr3
    // First with a reserved bit (bit 1) in the first PDPTE: the emulated MOV to CR0
    // must raise #GP(0) and change nothing (SDM 4.4.1). The #GP handler (an interrupt
    // gate, vector 13) records the error code and resumes at
    // protected_pdpte_gp_resume, where the bit is cleared and the write repeated.
    orl $2, (protected_pae_pdpt)
    movl $protected_gp_handler, %eax
    movw %ax, (protected_idt + 13 * 8)
    movw ${boot_cs}, (protected_idt + 13 * 8 + 2)
    movw $0x8e00, (protected_idt + 13 * 8 + 4)
    shrl $16, %eax
    movw %ax, (protected_idt + 13 * 8 + 6)
    movw $(14 * 8 - 1), (protected_idtr)
    movl $protected_idt, (protected_idtr + 2)
    lidt (protected_idtr)
    movl %cr0, %eax
    orl $0x80000020, %eax
    movl %eax, %cr0
protected_pdpte_gp_resume:
    movl %cr0, %eax
    movl %eax, (pdpte_gp_cr0)
    andl $0xfffffffd, (protected_pae_pdpt)
    // Back to no IDT (limit 0), as the guest started.
    movw $0, (protected_idtr)
    movl $0, (protected_idtr + 2)
    lidt (protected_idtr)
    movl %cr0, %eax
    orl $0x80000020, %eax
    movl %eax, %cr0
    movl ${lapic_version}, %ebx
    movl (%ebx), %eax
    movl %eax, (pae_lapic_version)
    movl %cr0, %eax
    andl $0x7fffffff, %eax
    movl %eax, %cr0
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
    ljmpl ${code64}, $protected_lm64
    .code64
protected_lm64:
    movw ${data64}, %ax
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
    .code32
protected_gp_handler:
    popl (pdpte_gp_error)
    incl (pdpte_gp_count)
    movl $protected_pdpte_gp_resume, (%esp)
    iretl
    .code64
    .text
    "#,
    lapic_version = const LAPIC_VERSION,
    boot_cs = const 0x10,
    boot_ds = const 0x18,
    code64 = const start::CODE_SELECTOR,
    data64 = const start::DATA_SELECTOR,
    options(att_syntax)
);

/// What the 32-bit stage saw (written there, read from Rust).
#[no_mangle]
static mut protected_cr0: u32 = 0;
#[no_mangle]
static mut protected_cs: u16 = 0;
#[no_mangle]
static mut protected_ds: u16 = 0;
#[no_mangle]
static mut protected_ss: u16 = 0;
/// The LAPIC's version register (xAPIC MMIO; SDM Vol. 3A, "Local APIC Version
/// Register"), read in 32-bit paging, PAE paging and 64-bit mode: each read exits and
/// is emulated.
const LAPIC_VERSION: u32 = platform::LAPIC_BASE as u32 + 0x30;

/// A page-aligned paging structure of `N` qwords.
#[repr(C, align(4096))]
struct PagingTable<const N: usize>([u64; N]);

/// The 32-bit paging page directory (1024 4-byte PDEs), PAE's four page directories
/// and its page-directory-pointer table, filled by the 32-bit stage.
#[no_mangle]
static mut protected_pd32: PagingTable<512> = PagingTable([0; 512]);
#[no_mangle]
static mut protected_pae_pd: PagingTable<2048> = PagingTable([0; 2048]);
#[no_mangle]
static mut protected_pae_pdpt: PagingTable<4> = PagingTable([0; 4]);
/// The 32-bit stage's IDT (vector 13 only) and its IDTR (limit, 32-bit base).
#[no_mangle]
static mut protected_idt: [u64; 14] = [0; 14];
#[no_mangle]
static mut protected_idtr: [u16; 3] = [0; 3];
/// What the #GP of the MOV to CR0 with a reserved PDPTE bit left: how many #GPs, the
/// last error code, and CR0 after it.
#[no_mangle]
static mut pdpte_gp_count: u32 = 0;
#[no_mangle]
static mut pdpte_gp_error: u32 = u32::MAX;
#[no_mangle]
static mut pdpte_gp_cr0: u32 = 0;
#[no_mangle]
static mut paging32_lapic_version: u32 = 0;
#[no_mangle]
static mut pae_lapic_version: u32 = 0;
#[no_mangle]
static mut reloaded_cs: u16 = 0;
#[no_mangle]
static mut reloaded_ss: u16 = 0;

const NAME: &str = "guest-protected";

#[no_mangle]
extern "C" fn protected_main(_vcpu: u64, ram: u64) -> ! {
    // SAFETY: plain reads of what the 32-bit stage stored.
    let (cr0, cs, ds, ss) = unsafe {
        (
            core::ptr::addr_of!(protected_cr0).read_volatile(),
            core::ptr::addr_of!(protected_cs).read_volatile(),
            core::ptr::addr_of!(protected_ds).read_volatile(),
            core::ptr::addr_of!(protected_ss).read_volatile(),
        )
    };
    // SAFETY: as above.
    let reloaded =
        unsafe { (core::ptr::addr_of!(reloaded_cs).read_volatile(), core::ptr::addr_of!(reloaded_ss).read_volatile()) };
    let mut ok = true;
    ok &= check(
        NAME,
        "started with protection on and paging off (CR0.PE = 1, PG = 0)",
        cr0 & 1 == 1 && cr0 & (1 << 31) == 0,
    );
    ok &= check(NAME, "started on the boot protocol's __BOOT_CS 0x10", cs == 0x10);
    ok &= check(NAME, "started with DS and SS on the boot protocol's __BOOT_DS 0x18", ds == 0x18 && ss == 0x18);
    ok &= check(NAME, "reloaded __BOOT_CS and __BOOT_DS from the boot GDT", reloaded == (0x10, 0x18));
    let code: u16;
    // SAFETY: reading CS has no side effects.
    unsafe { core::arch::asm!("mov {0:x}, cs", out(reg) code) };
    ok &= check(NAME, "reached 64-bit mode with the hypervisor's page tables", code == 0x08);
    ok &= check(NAME, "the RAM size came in ESI", ram == 16 << 20);
    // SAFETY: plain reads: the LAPIC register (an emulated MMIO page, identity-mapped)
    // and what the 32-bit stage stored.
    let (long, paging32, pae) = unsafe {
        (
            core::ptr::with_exposed_provenance::<u32>(LAPIC_VERSION as usize).read_volatile(),
            core::ptr::addr_of!(paging32_lapic_version).read_volatile(),
            core::ptr::addr_of!(pae_lapic_version).read_volatile(),
        )
    };
    // SAFETY: plain reads of what the 32-bit stage and its #GP handler stored.
    let (gp_count, gp_error, gp_cr0) = unsafe {
        (
            core::ptr::addr_of!(pdpte_gp_count).read_volatile(),
            core::ptr::addr_of!(pdpte_gp_error).read_volatile(),
            core::ptr::addr_of!(pdpte_gp_cr0).read_volatile(),
        )
    };
    println!("{NAME}: MOV to CR0 with a reserved PDPTE bit: {gp_count} #GP, error code {gp_error:#x}, CR0 {gp_cr0:#x} after (started {cr0:#x})");
    ok &= check(
        NAME,
        "a reserved bit in a PAE PDPTE made the emulated MOV to CR0 raise #GP(0) and leave CR0 as it was",
        gp_count == 1 && gp_error == 0 && gp_cr0 == cr0,
    );
    println!("{NAME}: LAPIC version {long:#x} in 64-bit mode, {paging32:#x} in 32-bit paging, {pae:#x} in PAE paging");
    ok &= check(NAME, "an MMIO load under 32-bit paging (4 MiB pages) was emulated", paging32 == long && long != 0);
    ok &= check(NAME, "an MMIO load under PAE paging, entered by an emulated MOV to CR0, was emulated", pae == long);
    if ok {
        println!("PASS {NAME}");
    }
    stop(if ok { 0 } else { 1 })
}
