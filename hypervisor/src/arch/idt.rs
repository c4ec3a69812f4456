//! The interrupt descriptor table and the exception entry path.
//!
//! Every vector gets a 16-byte assembly stub that pushes a uniform frame (error code
//! or 0, vector number, all general-purpose registers) and calls [`handle_trap`].
//! Exceptions print vector, error code, RIP, CR2 and the registers, then halt the CPU
//! that took them; the other CPUs keep running. NMIs are counted and return.

use core::sync::atomic::{AtomicU64, Ordering};

use x86_64::instructions::tables::lidt;
use x86_64::structures::DescriptorTablePointer;
use x86_64::VirtAddr;

use crate::arch::{gdt, percpu};

/// The saved state at an exception, as laid out on the stack by the stubs below.
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    // Pushed by the CPU (SDM Vol. 3 6.14.1, 64-bit mode stack frame).
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

// Vectors for which the CPU pushes an error code (SDM Vol. 3 table 6-1): #DF 8, #TS 10,
// #NP 11, #SS 12, #GP 13, #PF 14, #AC 17, #CP 21, #VC 29, #SX 30. The others get a 0
// pushed by the stub so that the frame is uniform.
core::arch::global_asm!(
    r#"
    .section .text.trap_stubs, "ax"
    .balign 16
    .global hv_trap_stubs
hv_trap_stubs:
    .set vec, 0
    .rept 256
    .balign 16
    .if (vec == 8) | (vec == 10) | (vec == 11) | (vec == 12) | (vec == 13) | (vec == 14) | (vec == 17) | (vec == 21) | (vec == 29) | (vec == 30)
    .else
    push 0
    .endif
    push vec
    jmp hv_trap_common
    .set vec, vec + 1
    .endr

hv_trap_common:
    push rax
    push rcx
    push rdx
    push rbx
    push rbp
    push rsi
    push rdi
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    mov rdi, rsp
    cld
    call {handler}
    pop r15
    pop r14
    pop r13
    pop r12
    pop r11
    pop r10
    pop r9
    pop r8
    pop rdi
    pop rsi
    pop rbp
    pop rbx
    pop rdx
    pop rcx
    pop rax
    add rsp, 16
    iretq
    "#,
    handler = sym handle_trap,
);

extern "C" {
    /// The first of 256 16-byte entry stubs.
    static hv_trap_stubs: [u8; 256 * 16];
}

/// One 64-bit IDT gate descriptor (SDM Vol. 3 figure 6-8).
#[repr(C)]
#[derive(Clone, Copy)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

/// Present, DPL 0, 64-bit interrupt gate (type 0xE): IF is cleared on entry.
const INTERRUPT_GATE: u8 = 0x8e;

#[repr(C, align(16))]
struct Idt([Gate; 256]);

static mut IDT: Idt =
    Idt([Gate { offset_low: 0, selector: 0, ist: 0, type_attr: 0, offset_mid: 0, offset_high: 0, reserved: 0 }; 256]);

/// Number of NMIs seen (all CPUs).
pub static NMI_COUNT: AtomicU64 = AtomicU64::new(0);
/// Number of CPUs halted by a fatal exception.
pub static FATAL_TRAPS: AtomicU64 = AtomicU64::new(0);

const NMI: u64 = 2;
const DOUBLE_FAULT: u64 = 8;
const MACHINE_CHECK: u64 = 18;
const PAGE_FAULT: u64 = 14;
/// The LAPIC spurious-interrupt vector the hypervisor programs.
pub const SPURIOUS_VECTOR: u8 = 0xff;
/// The vector the BSP uses to wake APs sleeping in `hlt` during boot, and the "kick"
/// that makes a CPU re-examine its vCPU (a new virtual interrupt, a stop request): it
/// pulls the CPU out of guest mode (external-interrupt exiting) or out of `hlt`.
pub const WAKE_VECTOR: u8 = 0xf0;
/// The vector of each CPU's own LAPIC timer (the host timer, `lapic::arm_timer`).
pub const TIMER_VECTOR: u8 = 0xef;

fn fill_gates(with_ist: bool) {
    let base = core::ptr::addr_of!(hv_trap_stubs) as u64;
    for vector in 0..256u64 {
        let handler = base + vector * 16;
        let ist = match vector {
            DOUBLE_FAULT if with_ist => gdt::IST_DOUBLE_FAULT,
            NMI if with_ist => gdt::IST_NMI,
            MACHINE_CHECK if with_ist => gdt::IST_MACHINE_CHECK,
            _ => 0,
        };
        let gate = Gate {
            offset_low: handler as u16,
            selector: gdt::KERNEL_CS,
            ist,
            type_attr: INTERRUPT_GATE,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        };
        // SAFETY: the IDT is written only by the BSP while it is the only CPU running
        // (early boot, then once more before the APs start).
        unsafe { (*core::ptr::addr_of_mut!(IDT)).0[vector as usize] = gate };
    }
}

/// Fills the IDT without IST stacks (none exist yet) and loads it on the BSP.
pub fn init_early() {
    fill_gates(false);
    load();
}

/// Switches #DF, NMI and #MC to their IST stacks, once the BSP has a TSS. APs start
/// after this and load the final table.
pub fn enable_ist() {
    fill_gates(true);
}

/// The IDT's address (the VMCS host state needs it).
#[must_use]
pub fn base() -> u64 {
    core::ptr::addr_of!(IDT) as u64
}

/// Loads the shared IDT on the current CPU.
pub fn load() {
    let ptr = DescriptorTablePointer {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: VirtAddr::new(core::ptr::addr_of!(IDT) as u64),
    };
    // SAFETY: the IDT is a static whose gates all point at the stubs above.
    unsafe { lidt(&ptr) };
}

fn exception_name(vector: u64) -> &'static str {
    match vector {
        0 => "#DE divide error",
        1 => "#DB debug",
        2 => "NMI",
        3 => "#BP breakpoint",
        4 => "#OF overflow",
        5 => "#BR bound range",
        6 => "#UD invalid opcode",
        7 => "#NM device not available",
        8 => "#DF double fault",
        10 => "#TS invalid TSS",
        11 => "#NP segment not present",
        12 => "#SS stack fault",
        13 => "#GP general protection",
        14 => "#PF page fault",
        16 => "#MF x87 error",
        17 => "#AC alignment check",
        18 => "#MC machine check",
        19 => "#XM SIMD exception",
        20 => "#VE virtualization exception",
        21 => "#CP control protection",
        v if v < 32 => "reserved exception",
        _ => "unexpected interrupt",
    }
}

/// Called by the stubs with the saved frame.
extern "C" fn handle_trap(frame: &mut TrapFrame) {
    match frame.vector {
        NMI => {
            NMI_COUNT.fetch_add(1, Ordering::Relaxed);
        }
        v if v == u64::from(SPURIOUS_VECTOR) => {}
        v if v == u64::from(WAKE_VECTOR) || v == u64::from(TIMER_VECTOR) => crate::arch::lapic::end_of_interrupt(),
        _ => fatal_trap(frame),
    }
}

fn fatal_trap(f: &TrapFrame) -> ! {
    let cr2 = x86_64::registers::control::Cr2::read_raw();
    let cpu = percpu::index();
    let guard_hint = if f.vector == PAGE_FAULT && crate::mm::stacks::is_guard_page(cr2) {
        " (stack overflow: guard page hit)"
    } else {
        ""
    };
    crate::console::write_fatal(format_args!(
        "FATAL: cpu {cpu}: {} (vector {}) error code {:#x}{guard_hint}\n\
         FATAL:   rip {:#018x} cs {:#x} rflags {:#x} rsp {:#018x} ss {:#x} cr2 {:#018x}\n\
         FATAL:   rax {:#018x} rbx {:#018x} rcx {:#018x} rdx {:#018x}\n\
         FATAL:   rsi {:#018x} rdi {:#018x} rbp {:#018x} r8  {:#018x}\n\
         FATAL:   r9  {:#018x} r10 {:#018x} r11 {:#018x} r12 {:#018x}\n\
         FATAL:   r13 {:#018x} r14 {:#018x} r15 {:#018x}\n\
         FATAL: cpu {cpu} halted\n",
        exception_name(f.vector),
        f.vector,
        f.error_code,
        f.rip,
        f.cs,
        f.rflags,
        f.rsp,
        f.ss,
        cr2,
        f.rax,
        f.rbx,
        f.rcx,
        f.rdx,
        f.rsi,
        f.rdi,
        f.rbp,
        f.r8,
        f.r9,
        f.r10,
        f.r11,
        f.r12,
        f.r13,
        f.r14,
        f.r15,
    ));
    FATAL_TRAPS.fetch_add(1, Ordering::AcqRel);
    crate::arch::halt_forever()
}
