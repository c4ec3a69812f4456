//! Multiprocessor start-up as on a PC (Intel SDM Vol. 3 section 9.4): vCPU 0 (the BSP)
//! wakes the other vCPUs (APs) with INIT and two start-up IPIs; each AP starts in real
//! mode at the trampoline the BSP copied below 1 MiB and brings itself to 64-bit mode.
//!
//! The trampoline's 16-bit part is position independent (it only uses offsets from its
//! own start, with DS = CS) and is copied to [`TRAMPOLINE`] at run time; the 32- and
//! 64-bit parts stay in the image, at their link address. It reuses the boot GDT and
//! identity page tables of `hv_abi::start`:
//! real mode → LGDT (base 0x800) → CR0.PE → far jump to 32-bit code (0x10) → CR4.PAE,
//! CR3 = 0x1000, EFER.LME → CR0.PG → far jump to 64-bit code (0x08) → the stack the BSP
//! left in the mailbox → [`ap_main`] → the guest's AP entry with the APIC ID.
//!
//! APs are started one at a time (the mailbox holds one stack), AP `k` being the vCPU
//! with APIC ID `k`, on stack slot `k - 1`. [`cpu_index`] tells the vCPU from the stack
//! it runs on, which needs no help from the hypervisor.

use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use hv_abi::start;

use crate::interrupts::{delay_us, us_to_tsc, wait_for};
use crate::lapic::{self, icr};

/// Most vCPUs a guest of this runtime may have (BSP included).
pub const MAX_CPUS: usize = 8;
/// Stack size of each AP.
pub const AP_STACK_SIZE: usize = 16 * 1024;
/// Physical address the trampoline is copied to (free RAM below 1 MiB: the boot GDT is
/// at 0x800, the page tables at 0x1000-0x6fff).
pub const TRAMPOLINE: u64 = 0x8000;
/// The start-up IPI vector that makes an AP start at [`TRAMPOLINE`] (CS = V << 8, IP = 0).
pub const SIPI_VECTOR: u32 = (TRAMPOLINE >> 12) as u32;

/// How long to wait after INIT before the first start-up IPI (SDM 9.4.4.1: 10 ms).
const INIT_DELAY_US: u64 = 10_000;
/// How long to wait after each start-up IPI (SDM 9.4.4.1: 200 µs).
const SIPI_DELAY_US: u64 = 200;
/// How long an AP may take to reach Rust after its start-up IPIs.
const ONLINE_TIMEOUT_US: u64 = 100_000;

#[repr(C, align(16))]
struct ApStacks([[u8; AP_STACK_SIZE]; MAX_CPUS - 1]);
static mut AP_STACKS: ApStacks = ApStacks([[0; AP_STACK_SIZE]; MAX_CPUS - 1]);

/// Mailbox: the top of the stack of the AP being started (read by the trampoline).
static AP_STACK: AtomicU64 = AtomicU64::new(0);
/// The guest's AP entry, an `extern "C" fn(u32) -> !` (0 until [`start_aps`]).
static AP_ENTRY: AtomicUsize = AtomicUsize::new(0);
/// APs that reached Rust.
static ONLINE: AtomicU32 = AtomicU32::new(0);
/// Address of `AP_STACKS` once [`start_aps`] ran (0 before: then every vCPU is the BSP,
/// and guests without APs do not carry the stacks).
static STACKS_BASE: AtomicU64 = AtomicU64::new(0);

core::arch::global_asm!(
    r#"
    .section .text.guest_rt_smp, "ax"
    .code16
    .balign 16
    .global guest_rt_ap_trampoline
guest_rt_ap_trampoline:
    cli
    cld
    movw %cs, %ax
    movw %ax, %ds
    lgdtl guest_rt_ap_gdt_ptr - guest_rt_ap_trampoline
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl ${code32}, $guest_rt_ap_pm32
    .balign 4
guest_rt_ap_gdt_ptr:
    .word {gdt_limit}
    .long {gdt}
    .global guest_rt_ap_trampoline_end
guest_rt_ap_trampoline_end:

    .code32
    .balign 16
guest_rt_ap_pm32:
    movw ${data32}, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl ${page_tables}, %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx
    rdmsr
    orl $0x900, %eax
    wrmsr
    movl $0x80010033, %eax
    movl %eax, %cr0
    ljmpl ${code64}, $guest_rt_ap_lm64

    .code64
guest_rt_ap_lm64:
    movw ${data64}, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movq {stack}(%rip), %rsp
    xorl %ebp, %ebp
    callq {main}
2:
    cli
    hlt
    jmp 2b
    .text
    "#,
    code32 = const start::CODE32_SELECTOR,
    data32 = const start::DATA32_SELECTOR,
    code64 = const start::CODE_SELECTOR,
    data64 = const start::DATA_SELECTOR,
    gdt = const start::GDT,
    gdt_limit = const start::GDT_LIMIT,
    page_tables = const start::PAGE_TABLES,
    stack = sym AP_STACK,
    main = sym ap_main,
    options(att_syntax)
);

extern "C" {
    static guest_rt_ap_trampoline: u8;
    static guest_rt_ap_trampoline_end: u8;
}

/// The first Rust code of an AP, on its own stack: loads the IDT, software-enables its
/// local APIC (so that it accepts fixed IPIs from now on), checks in and calls the
/// guest's AP entry with its APIC ID.
extern "C" fn ap_main() -> ! {
    crate::exceptions::load();
    lapic::sync_mode();
    lapic::enable();
    let id = lapic::id();
    let entry = AP_ENTRY.load(Ordering::SeqCst);
    ONLINE.fetch_add(1, Ordering::SeqCst);
    // SAFETY: start_aps stores an `extern "C" fn(u32) -> !` before any AP can start.
    let entry = unsafe { core::mem::transmute::<usize, extern "C" fn(u32) -> !>(entry) };
    entry(id)
}

/// Which vCPU runs this: 0 on the BSP, `k` on the AP started as APIC ID `k` (it runs on
/// stack slot `k - 1`). Works in interrupt handlers too (they use the same stack).
pub fn cpu_index() -> usize {
    let rsp: u64;
    // SAFETY: reads RSP.
    unsafe { core::arch::asm!("mov {}, rsp", out(reg) rsp, options(nomem, nostack, preserves_flags)) };
    let base = STACKS_BASE.load(Ordering::Relaxed);
    let end = base + core::mem::size_of::<ApStacks>() as u64;
    if base != 0 && rsp > base && rsp <= end {
        ((rsp - base - 1) / AP_STACK_SIZE as u64) as usize + 1
    } else {
        0
    }
}

/// The number of vCPUs of this partition (CPUID.1:EBX[23:16]).
pub fn vcpu_count() -> u32 {
    (core::arch::x86_64::__cpuid(1).ebx >> 16) & 0xff
}

/// APs that reached Rust so far.
pub fn online() -> u32 {
    ONLINE.load(Ordering::SeqCst)
}

/// Starts the APs with APIC IDs 1..=`count` one after another (INIT, 10 ms, start-up
/// IPI, 200 µs, start-up IPI, 200 µs, as in SDM 9.4.4.1), each calling `entry` with its
/// APIC ID on its own stack, with interrupts off and its local APIC software-enabled.
/// Call it on the BSP, after [`crate::exceptions::install`]. Returns the number of APs
/// online; it stops at the first AP that does not check in within 100 ms (printing a
/// `FAIL` line), because that AP might still start later on the next AP's stack.
pub fn start_aps(count: u32, entry: extern "C" fn(u32) -> !) -> u32 {
    let count = count.min(MAX_CPUS as u32 - 1);
    let src = core::ptr::addr_of!(guest_rt_ap_trampoline);
    let len = core::ptr::addr_of!(guest_rt_ap_trampoline_end) as usize - src as usize;
    assert!(len <= 0x1000, "AP trampoline too large");
    // SAFETY: the page at TRAMPOLINE is free RAM (identity-mapped, below the image and
    // above the boot structures) that nothing else uses; the source is the trampoline's
    // bytes in the image.
    unsafe { core::ptr::copy_nonoverlapping(src, TRAMPOLINE as *mut u8, len) };
    AP_ENTRY.store(entry as usize, Ordering::SeqCst);
    let stacks = core::ptr::addr_of!(AP_STACKS) as u64;
    STACKS_BASE.store(stacks, Ordering::SeqCst);
    for id in 1..=count {
        let before = ONLINE.load(Ordering::SeqCst);
        AP_STACK.store(stacks + u64::from(id) * AP_STACK_SIZE as u64, Ordering::SeqCst);
        lapic::send_ipi(id, icr::INIT | icr::ASSERT);
        delay_us(INIT_DELAY_US);
        for _ in 0..2 {
            lapic::send_ipi(id, icr::STARTUP | icr::ASSERT | SIPI_VECTOR);
            delay_us(SIPI_DELAY_US);
        }
        if !wait_for(|| ONLINE.load(Ordering::SeqCst) > before, us_to_tsc(ONLINE_TIMEOUT_US)) {
            crate::println!("FAIL smp: the AP with APIC ID {id} did not come online after INIT, SIPI, SIPI");
            break;
        }
    }
    ONLINE.load(Ordering::SeqCst)
}
