//! Entering the guest and coming back: the only code that switches between the
//! hypervisor's registers and a guest's.
//!
//! `hv_vmx_run(regs, launched, on_exit, ctx)` saves the host's callee-saved registers
//! and its arguments on the stack, records the stack pointer as HOST_RSP (only when it
//! differs from `regs.host_rsp`, the value the vCPU's VMCS already holds), loads the
//! guest's general-purpose registers from `regs` and executes VMLAUNCH (first entry) or
//! VMRESUME. On a VM exit the CPU continues at `hv_vmx_exit` (HOST_RIP) with that
//! stack: the guest registers are stored back into `regs` and `on_exit(regs, ctx)` is
//! called there. When it returns [`RESUME`] or [`RESUME_KEEP_CR2`], the guest registers
//! are loaded again and the guest resumed at once, without unwinding to the caller of
//! `hv_vmx_run` (the common exit costs no host register saves or restores); on
//! [`LEAVE`] the host registers are restored and the call returns 0. If an entry fails, it returns 1 (VMfailInvalid)
//! or 2 (VMfailValid: see VM_INSTRUCTION_ERROR).
//!
//! The stack at HOST_RSP (16-byte aligned, so `on_exit` is called with the ABI's
//! alignment): `[rsp]` the `GuestRegisters` pointer, `[rsp + 8]` `on_exit`, `[rsp + 16]`
//! `ctx` (an [`ExitFrame`], which the hook gets as its third argument and may change:
//! the next entry loads the registers it names), then the six callee-saved registers
//! and the return address.

/// The guest registers the VMCS does not hold (RSP, RIP and RFLAGS live in the VMCS),
/// and the HOST_RSP value of the vCPU's VMCS. The layout is fixed: the assembly below
/// uses these offsets.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct GuestRegisters {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub cr2: u64,
    /// Not a guest register: the HOST_RSP value the vCPU's VMCS holds (0: none written
    /// yet), so that entries from the same stack depth skip the VMWRITE. It is per
    /// VMCS because the service partition's vCPU is entered from a deeper stack frame
    /// on the same CPU. Resetting the registers to their defaults only costs one
    /// VMWRITE.
    pub host_rsp: u64,
}

core::arch::global_asm!(
    r#"
    // Loads the guest's general-purpose registers from the GuestRegisters at RDI (RDI
    // last); flags are left as they were (the entry path tests them after).
    .macro load_guest_gprs
    mov rax, [rdi + 0*8]
    mov rbx, [rdi + 1*8]
    mov rcx, [rdi + 2*8]
    mov rdx, [rdi + 3*8]
    mov rsi, [rdi + 4*8]
    mov rbp, [rdi + 6*8]
    mov r8,  [rdi + 7*8]
    mov r9,  [rdi + 8*8]
    mov r10, [rdi + 9*8]
    mov r11, [rdi + 10*8]
    mov r12, [rdi + 11*8]
    mov r13, [rdi + 12*8]
    mov r14, [rdi + 13*8]
    mov r15, [rdi + 14*8]
    mov rdi, [rdi + 5*8]
    .endm

    .global hv_vmx_run
hv_vmx_run:
    push rbp
    push rbx
    push r12
    push r13
    push r14
    push r15
    push rcx                      // ctx
    push rdx                      // on_exit
    push rdi                      // the GuestRegisters pointer, found again at exit
    cmp rsp, [rdi + 16*8]         // HOST_RSP already holds this stack pointer?
    je 4f
    mov rax, 0x6c14               // HOST_RSP
    vmwrite rax, rsp
    jbe 3f
    mov [rdi + 16*8], rsp
4:
    test rsi, rsi                 // launched? (flags survive the moves below)
    mov rax, [rdi + 15*8]
    mov cr2, rax
    load_guest_gprs
    jnz 2f
    vmlaunch
    jmp 3f
2:
    vmresume
3:
    // VM entry failed: CF=1 VMfailInvalid, ZF=1 VMfailValid.
    mov eax, 1
    mov ecx, 2
    cmovz eax, ecx
5:
    add rsp, 24                   // the GuestRegisters pointer, on_exit, ctx
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    pop rbp
    ret

    .global hv_vmx_exit
hv_vmx_exit:
    push rdi                      // guest RDI; [rsp + 8] is the GuestRegisters pointer
    mov rdi, [rsp + 8]
    mov [rdi + 0*8], rax
    mov [rdi + 1*8], rbx
    mov [rdi + 2*8], rcx
    mov [rdi + 3*8], rdx
    mov [rdi + 4*8], rsi
    mov [rdi + 6*8], rbp
    mov [rdi + 7*8], r8
    mov [rdi + 8*8], r9
    mov [rdi + 9*8], r10
    mov [rdi + 10*8], r11
    mov [rdi + 11*8], r12
    mov [rdi + 12*8], r13
    mov [rdi + 13*8], r14
    mov [rdi + 14*8], r15
    mov rax, cr2
    mov [rdi + 15*8], rax
    pop rax
    mov [rdi + 5*8], rax          // the stack is as `hv_vmx_run` left it
    mov rsi, [rsp + 16]
    mov rdx, rsp                  // the ExitFrame
    call [rsp + 8]                // on_exit(regs, ctx, frame); RFLAGS.DF is 0 after an exit
    mov rdi, [rsp]                // the registers to enter with (the hook may have changed them)
    test rax, rax                 // RESUME_KEEP_CR2: CR2 still holds the guest's value
    jnz 6f
7:
    load_guest_gprs
    vmresume
    jmp 3b                        // VMRESUME failed (flags as it left them)
6:
    cmp rax, 2                    // RESUME: CR2 from `regs` too
    jne 8f
    mov rax, [rdi + 15*8]
    mov cr2, rax
    jmp 7b
8:
    xor eax, eax                  // LEAVE: the guest exited
    jmp 5b
    "#
);

/// [`ExitHook`] results: enter the guest again at once, loading its registers from
/// `regs`, CR2 included ([`RESUME`]) or not ([`RESUME_KEEP_CR2`]: nothing since the exit
/// changed CR2 or `regs.cr2`, so the CPU's CR2 is still the guest's); or return from
/// [`enter_with`] ([`LEAVE`]).
pub const RESUME_KEEP_CR2: u64 = 0;
pub const LEAVE: u64 = 1;
pub const RESUME: u64 = 2;

/// Called on the exit stack after every VM exit with the guest's registers saved in
/// `regs` (and the VMCS that exited current); returns [`RESUME`], [`RESUME_KEEP_CR2`]
/// or [`LEAVE`]. `ctx` is what the caller of [`enter_with`] passed; `frame` is the exit
/// stub's [`ExitFrame`].
pub type ExitHook = extern "C" fn(regs: *mut GuestRegisters, ctx: *const (), frame: *mut ExitFrame) -> u64;

/// The three words at the exit stub's stack pointer (HOST_RSP): which registers the
/// next exit saves into (and [`RESUME`] loads), which hook it calls and with what
/// context. A hook may change them before it returns [`RESUME`] to switch this CPU to
/// another vCPU in the same stack frame: it makes that vCPU's VMCS current, writes
/// HOST_RSP of that VMCS if it is not this frame's (the frame's own address, where the
/// stub's stack pointer was; [`GuestRegisters::host_rsp`] of that vCPU's registers
/// records it), and puts that vCPU's registers (and the hook for its exits) here. The service partition's forwarding does this
/// (`service::begin_port_forward`).
#[repr(C)]
#[derive(Debug)]
pub struct ExitFrame {
    pub regs: *mut GuestRegisters,
    pub on_exit: ExitHook,
    pub ctx: *const (),
}

extern "C" {
    fn hv_vmx_run(regs: *mut GuestRegisters, launched: u64, on_exit: ExitHook, ctx: *const ()) -> u64;
    fn hv_vmx_exit();
}

/// How an attempt to run the guest ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// The guest ran and exited, and the exit hook said [`LEAVE`]; the exit reason is
    /// in the VMCS.
    Exited,
    /// VMLAUNCH/VMRESUME failed: VMfailInvalid.
    FailInvalid,
    /// VMLAUNCH/VMRESUME failed: VMfailValid (VM-instruction error in the VMCS).
    FailValid,
}

/// The address to put in HOST_RIP.
#[must_use]
pub fn exit_entry_point() -> u64 {
    hv_vmx_exit as *const () as u64
}

/// An exit hook that returns on every exit.
extern "C" fn leave(_regs: *mut GuestRegisters, _ctx: *const (), _frame: *mut ExitFrame) -> u64 {
    LEAVE
}

/// Runs the guest of the current VMCS until its next VM exit.
pub fn enter(regs: &mut GuestRegisters, launched: bool) -> Entry {
    enter_with(regs, launched, leave, core::ptr::null())
}

/// Runs the guest of the current VMCS, calling `on_exit(regs, ctx)` after each exit,
/// until it says [`LEAVE`] or an entry fails. `on_exit` runs with this CPU's state as
/// after a VM exit (interrupts off) on this stack, below this call's frame; it must not
/// use `regs` other than through its argument.
pub fn enter_with(regs: &mut GuestRegisters, launched: bool, on_exit: ExitHook, ctx: *const ()) -> Entry {
    // SAFETY: the current VMCS is fully set up with HOST_RIP = `hv_vmx_exit` and the
    // host state of this CPU; `hv_vmx_run` saves and restores every callee-saved
    // register and returns on this stack whether an entry fails or the hook leaves;
    // in between it calls `on_exit` with the C ABI (aligned stack, DF clear) and
    // reloads every guest register after it. The guest cannot reach hypervisor memory
    // (EPT) and `regs` stays valid and unused here throughout.
    match unsafe { hv_vmx_run(regs, u64::from(launched), on_exit, ctx) } {
        0 => Entry::Exited,
        1 => Entry::FailInvalid,
        _ => Entry::FailValid,
    }
}
