//! The VM-exit dispatcher: one handler per exit reason, named after it
//! (`handle_<reason>`, the names of `hv_core::exit::ExitReason::name`).
//!
//! Handlers are small and run without allocation; they format only when they log a
//! partition's end. Whatever a guest does, the outcome is "continue" or "stop this
//! partition" with a clear line: never a hypervisor fault.

use core::sync::atomic::Ordering;

use hv_abi::{hypercall, Error as HcError};
use hv_core::exit::{
    reinject, CrAccess, CrAccessType, EptViolation, ExitReason, ExitReasonField, Injection, InterruptionInfo,
    IoInstruction,
};
use hv_core::io_request::Completion;
use hv_core::pci_config::{self, PciPortRoute};
use hv_core::virt_cpuid::{virtual_cpuid, VcpuInfo};
use hv_core::virt_msr::{policy, MsrPolicy, VirtMsr};
use x86::vmx::vmcs::{control, guest, ro};

use crate::arch::cpuid::cpuid;
use crate::mm::frames;
use crate::partition::{Vcpu, Vm, EXIT_REASONS};
use crate::vmx::run::GuestRegisters;
use crate::vmx::vmcs;

/// What the vCPU loop does after a handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Continue,
    Stop,
}

/// Exception vectors injected into guests (SDM Vol. 3 table 6-1).
const UD: u8 = 6;
const GP: u8 = 13;
const PF: u8 = 14;

/// One exit in this many of each reason has its handler timed (the first one
/// included); the counts are exact.
pub const EXIT_TIMING_SAMPLE: u64 = 16;

/// Handles the exit that just happened on `vcpu`, counting it, and for one exit in
/// [`EXIT_TIMING_SAMPLE`] of its reason the TSC ticks its handler took (two TSC reads
/// on every exit would be a good part of a short handler's cost).
#[inline(always)]
pub fn handle_exit(vcpu: &'static Vcpu, regs: &mut GuestRegisters) -> Outcome {
    let field = ExitReasonField(vmcs::read_present(ro::EXIT_REASON) as u32);
    let slot = usize::from(field.basic()).min(EXIT_REASONS - 1);
    if vcpu.exits[slot].load(Ordering::Relaxed).is_multiple_of(EXIT_TIMING_SAMPLE) {
        return handle_exit_timed(vcpu, regs, field, slot);
    }
    let outcome = dispatch(vcpu, regs, field);
    vcpu.exits[slot].fetch_add(1, Ordering::Relaxed);
    outcome
}

/// What [`try_handle_exit_inline`] did with an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InlineExit {
    /// Handled and counted, with this outcome.
    Done(Outcome),
    /// A CPUID exit, counted: [`handle_cpuid_exit`] handles it (out of line, as the
    /// virtual CPUID rules need more registers than all the inline handlers together).
    Cpuid,
    /// An IN or OUT (not INS/OUTS) of a partition with forwarded devices, counted:
    /// [`handle_port_io`] handles it (out of line: forwarding needs many registers).
    PortIo(IoInstruction),
    /// Not handled (nothing changed, nothing counted): [`handle_exit`] handles it.
    NotInline,
}

/// [`handle_exit`] for the exits whose handling calls no function: the hypercalls
/// that only return a value, port I/O to an unclaimed port, RDMSR of an MSR whose value
/// needs no lock, interrupts, timers and windows (and CPUID, see [`InlineExit::Cpuid`]),
/// when the exit is not timed and interrupted no event delivery. Any other exit is
/// left alone for [`handle_exit`].
///
/// Its caller (`vcpu::on_exit`, called from the exit stub) then needs no callee-saved
/// registers, so the common exit saves and restores no host registers at all.
#[inline(always)]
pub fn try_handle_exit_inline(vcpu: &'static Vcpu, regs: &mut GuestRegisters) -> InlineExit {
    let field = ExitReasonField(vmcs::read_present(ro::EXIT_REASON) as u32);
    let slot = usize::from(field.basic()).min(EXIT_REASONS - 1);
    let seen = vcpu.exits[slot].load(Ordering::Relaxed);
    if seen.is_multiple_of(EXIT_TIMING_SAMPLE) || field.entry_failure() {
        return InlineExit::NotInline;
    }
    // Re-injection is left to `handle_exit` (which reads the field again).
    if InterruptionInfo(vmcs::read_present(ro::IDT_VECTORING_INFO) as u32).valid() {
        return InlineExit::NotInline;
    }
    // The arms below do what the handlers do, through the same helpers, for the cases
    // that need no call. Each counts the exit once it knows it handles it (and before
    // the handler, which then has more registers).
    let count = || vcpu.exits[slot].store(seen + 1, Ordering::Relaxed);
    let Some(reason) = field.reason() else { return InlineExit::NotInline };
    let outcome = match reason {
        ExitReason::Cpuid => {
            count();
            return InlineExit::Cpuid;
        }
        ExitReason::Vmcall => {
            let Some(value) = value_hypercall(vcpu, regs.rax) else { return InlineExit::NotInline };
            count();
            complete_hypercall(regs, Ok(value))
        }
        ExitReason::IoInstruction => {
            let Some(io) = IoInstruction::decode(vmcs::read_present(ro::EXIT_QUALIFICATION)) else {
                return InlineExit::NotInline;
            };
            if io.string() {
                return InlineExit::NotInline;
            }
            count();
            // A partition with devices: its caller forwards them out of line (a port
            // lookup here would cost every exit of this function its registers).
            if vcpu.vm.devices.load(Ordering::Relaxed) != 0 {
                return InlineExit::PortIo(io);
            }
            complete_port_io(regs, io, Completion::Failed)
        }
        ExitReason::Rdmsr => {
            let MsrPolicy::Virtualized(msr) = policy(regs.rcx as u32) else { return InlineExit::NotInline };
            let Some(value) = read_plain_msr(msr) else { return InlineExit::NotInline };
            count();
            complete_rdmsr(regs, Some(value))
        }
        // Timer and kick exits (about one per millisecond at most) take the general path,
        // which also runs the service partition's device timers when they are due (a call
        // here would cost every exit of this function its registers).
        ExitReason::ExternalInterrupt | ExitReason::PreemptionTimer => return InlineExit::NotInline,
        ExitReason::InterruptWindow => {
            count();
            handle_interrupt_window()
        }
        ExitReason::NmiWindow => {
            count();
            handle_nmi_window()
        }
        _ => return InlineExit::NotInline,
    };
    InlineExit::Done(outcome)
}

/// A CPUID exit that [`try_handle_exit_inline`] counted.
#[inline(always)]
pub fn handle_cpuid_exit(vcpu: &'static Vcpu, regs: &mut GuestRegisters) -> Outcome {
    handle_cpuid(vcpu, regs)
}

/// [`handle_exit`] for an exit whose handler is timed.
#[inline(never)]
fn handle_exit_timed(vcpu: &'static Vcpu, regs: &mut GuestRegisters, field: ExitReasonField, slot: usize) -> Outcome {
    let start = crate::arch::tsc::now();
    let outcome = dispatch(vcpu, regs, field);
    vcpu.exit_ticks[slot].fetch_add(crate::arch::tsc::now().wrapping_sub(start), Ordering::Relaxed);
    vcpu.exits_timed[slot].fetch_add(1, Ordering::Relaxed);
    vcpu.exits[slot].fetch_add(1, Ordering::Relaxed);
    outcome
}

/// The guest's XCR0 where a leaf needs it (0xD), else 0 (no XGETBV on other leaves).
#[inline(always)]
fn xcr0_for(leaf: u32) -> u64 {
    if leaf == 0xd {
        crate::arch::cpuid::xcr0()
    } else {
        0
    }
}

/// Calls the handler of the exit reason in `field`.
///
/// Inlined into the vCPU loop, as are the handlers of the frequent exits (CPUID,
/// VMCALL, port I/O, RDMSR, interrupts and timers); the others, and every path that
/// logs, stay out of line so that the frequent paths keep their registers.
#[inline(always)]
fn dispatch(vcpu: &'static Vcpu, regs: &mut GuestRegisters, field: ExitReasonField) -> Outcome {
    let basic = field.basic();
    // An event that was being delivered when the exit happened must be delivered again
    // (SDM 28.2.4); handlers below may override it with their own injection.
    let vectoring = InterruptionInfo(vmcs::read_present(ro::IDT_VECTORING_INFO) as u32);
    if vectoring.valid() {
        reinject_vectoring(vectoring);
    }
    if field.entry_failure() {
        return handle_entry_failure(vcpu, basic);
    }
    let Some(reason) = field.reason() else {
        return stop_with_dump(vcpu, "unknown exit reason", u64::from(basic));
    };
    match reason {
        ExitReason::Cpuid => handle_cpuid(vcpu, regs),
        ExitReason::Vmcall => handle_vmcall(vcpu, regs),
        ExitReason::Hlt => handle_hlt(vcpu),
        ExitReason::IoInstruction => handle_io_instruction(vcpu, regs),
        ExitReason::Rdmsr => handle_rdmsr(vcpu, regs),
        ExitReason::Wrmsr => handle_wrmsr(vcpu, regs),
        ExitReason::CrAccess => handle_cr_access(vcpu, regs),
        ExitReason::TripleFault => handle_triple_fault(vcpu),
        ExitReason::EptViolation => handle_ept_violation(vcpu, regs),
        ExitReason::EptMisconfiguration => handle_ept_misconfiguration(vcpu),
        ExitReason::ExceptionOrNmi => handle_exception_or_nmi(vcpu),
        ExitReason::ExternalInterrupt => {
            crate::service::run_timers_if_due(vcpu);
            handle_external_interrupt()
        }
        ExitReason::PreemptionTimer => {
            crate::service::run_timers_if_due(vcpu);
            handle_preemption_timer()
        }
        ExitReason::InterruptWindow => handle_interrupt_window(),
        ExitReason::NmiWindow => handle_nmi_window(),
        ExitReason::VirtualizedEoi => handle_virtualized_eoi(vcpu),
        ExitReason::Invd | ExitReason::Wbinvd => handle_wbinvd(),
        ExitReason::Xsetbv => handle_xsetbv(regs),
        ExitReason::InitSignal => handle_init_signal(vcpu, regs),
        ExitReason::Sipi => handle_sipi(vcpu),
        ExitReason::Mwait | ExitReason::Monitor | ExitReason::Pause => skip_instruction(),
        r if r.is_vmx_instruction() => handle_vmx_instruction(),
        other => stop_with_dump(vcpu, other.name(), u64::from(basic)),
    }
}

/// Queues the event whose delivery the exit interrupted (`vectoring`, valid) for
/// delivery again on the next entry.
#[cold]
#[inline(never)]
fn reinject_vectoring(vectoring: InterruptionInfo) {
    if let Some(again) = reinject(vectoring) {
        let _ = vmcs::write(control::VMENTRY_INTERRUPTION_INFO_FIELD, u64::from(again.info.0));
        if again.copy_error_code {
            let _ = vmcs::write(control::VMENTRY_EXCEPTION_ERR_CODE, vmcs::read(ro::IDT_VECTORING_ERR_CODE));
        }
        if again.needs_instruction_length {
            let _ = vmcs::write(control::VMENTRY_INSTRUCTION_LEN, vmcs::read(ro::VMEXIT_INSTRUCTION_LEN));
        }
    }
}

/// Advances the guest's RIP past the instruction that exited.
#[inline(always)]
pub fn skip_instruction() -> Outcome {
    advance_rip(vmcs::read_present(ro::VMEXIT_INSTRUCTION_LEN))
}

/// Advances the guest's RIP by `len` bytes, completing an instruction the hypervisor
/// emulated: ends STI/MOV-SS blocking and, with RFLAGS.TF set, leaves the single-step
/// trap pending (`single_step_trap`), as the instruction would on hardware.
#[inline(always)]
pub fn advance_rip(len: u64) -> Outcome {
    complete_instruction::<true>(len)
}

/// [`advance_rip`] without the single-step check, for the service partition's
/// `SERVICE_REPLY_WAIT` only (`service::commit_wait`): its code is the hypervisor's own
/// (`guest-images/service`) and never runs with TF, and the check would cost every
/// forwarded round trip a second RFLAGS read.
#[inline(always)]
pub fn advance_rip_trusted(len: u64) -> Outcome {
    complete_instruction::<false>(len)
}

#[inline(always)]
fn complete_instruction<const SINGLE_STEP: bool>(len: u64) -> Outcome {
    let rip = vmcs::read_present(guest::RIP);
    vmcs::write_ignoring_failure(guest::RIP, rip.wrapping_add(len));
    // Skipping an instruction ends any STI/MOV-SS blocking (SDM 25.4.2, bits 0 and 1
    // of the interruptibility state); the field is written only when one is set.
    let interruptibility = vmcs::read_present(guest::INTERRUPTIBILITY_STATE);
    // One test for both rare cases (any interruptibility bit, or TF), so that the common
    // completion pays only the RFLAGS read and one AND more than before; the branch
    // looks again. Bit 8 of the interruptibility state is reserved (0, checked by VM
    // entry), so bit 8 of `rare` is TF.
    let tf = if SINGLE_STEP { vmcs::read_present(guest::RFLAGS) & RFLAGS_TF } else { 0 };
    let rare = interruptibility | tf;
    if rare != 0 {
        if interruptibility & BLOCKING_BY_STI_MOV_SS != 0 {
            vmcs::write_ignoring_failure(guest::INTERRUPTIBILITY_STATE, interruptibility & !BLOCKING_BY_STI_MOV_SS);
        }
        // An instruction the guest executed with RFLAGS.TF set ends with a single-step
        // trap (SDM Vol. 3B "Single-Step Exception Condition"); the VM exit took its
        // place.
        if rare & RFLAGS_TF != 0 {
            single_step_trap();
        }
    }
    Outcome::Continue
}

/// Interruptibility state bits 0 (blocking by STI) and 1 (blocking by MOV SS), SDM
/// Vol. 3C "Guest Non-Register State".
const BLOCKING_BY_STI_MOV_SS: u64 = 0x3;
/// RFLAGS.TF (SDM Vol. 1 3.4.3.3, "System Flags and IOPL Field").
const RFLAGS_TF: u64 = 1 << 8;
/// The BS bit (bit 14) of the guest pending-debug-exceptions field: a single-step
/// trap is pending (SDM Vol. 3C "Guest Non-Register State").
pub const PENDING_DEBUG_BS: u64 = 1 << 14;

/// Makes the single-step #DB of the instruction just completed pending, as KVM and Xen
/// do: the BS bit of the pending-debug-exceptions field, which VM entry delivers as a
/// #DB with DR6.BS set, with the priority of a trap on the previous instruction, ahead
/// of NMIs, external interrupts and the interrupt- and NMI-window exits (SDM Vol. 3C
/// "Delivery of Pending Debug Exceptions after VM Entry"). An event injected on the
/// same entry would discard it, so `virq` holds interrupts back while BS is set.
/// IA32_DEBUGCTL.BTF (single-step on branches only) is always 0 for guests (the MSR is
/// not virtualised: RDMSR/WRMSR of it raise #GP), so TF alone decides. VM entry requires
/// BS with TF = 1 only under STI/MOV-SS blocking or in HLT activity, which a completed
/// instruction clears (`advance_rip`) or does not use.
///
/// Inlined with no call: the exit paths that complete instructions must save no host
/// registers (`try_handle_exit_inline`).
#[inline(always)]
fn single_step_trap() {
    let pending = vmcs::read_present(guest::PENDING_DBG_EXCEPTIONS);
    vmcs::write_ignoring_failure(guest::PENDING_DBG_EXCEPTIONS, pending | PENDING_DEBUG_BS);
}

/// Queues `event` for delivery into the guest on the next VM entry (SDM 27.6).
pub fn inject(event: Injection) -> Outcome {
    let _ = vmcs::write(control::VMENTRY_INTERRUPTION_INFO_FIELD, u64::from(event.info.0));
    if let Some(code) = event.error_code {
        let _ = vmcs::write(control::VMENTRY_EXCEPTION_ERR_CODE, u64::from(code));
    }
    if event.needs_instruction_length() {
        let _ = vmcs::write(control::VMENTRY_INSTRUCTION_LEN, vmcs::read(ro::VMEXIT_INSTRUCTION_LEN));
    }
    Outcome::Continue
}

#[inline(always)]
fn handle_cpuid(vcpu: &'static Vcpu, regs: &mut GuestRegisters) -> Outcome {
    let (leaf, subleaf) = (regs.rax as u32, regs.rcx as u32);
    let host = crate::arch::cpuid::host_facts();
    // Leaf 0 is the same for every vCPU: precomputed at boot.
    if leaf == 0 {
        if let Some(r) = host.map(|h| h.leaf0) {
            regs.rax = u64::from(r.eax);
            regs.rbx = u64::from(r.ebx);
            regs.rcx = u64::from(r.ecx);
            regs.rdx = u64::from(r.edx);
            return skip_instruction();
        }
    }
    let topology = VcpuInfo {
        vcpu_id: vcpu.id,
        vcpu_count: vcpu.vm.vcpu_count.load(Ordering::Relaxed).max(1),
        tsc_hz: crate::arch::tsc::hz(),
    };
    let r = virtual_cpuid(leaf, subleaf, cpuid(leaf, subleaf), topology);
    // Features whose VM-execution control is off must not be advertised (#UD otherwise).
    let r = hv_core::virt_cpuid::hide_disabled_features(leaf, subleaf, r, crate::vcpu::secondary_controls());
    let r = match host {
        Some(h) if hv_core::virt_cpuid::needs_host_facts(leaf, h.cpuid.max_basic_leaf) => {
            h.cpuid.adjust(leaf, subleaf, r, xcr0_for(leaf))
        }
        _ => r,
    };
    regs.rax = u64::from(r.eax);
    regs.rbx = u64::from(r.ebx);
    regs.rcx = u64::from(r.ecx);
    regs.rdx = u64::from(r.edx);
    skip_instruction()
}

#[inline(always)]
fn handle_vmcall(vcpu: &'static Vcpu, regs: &mut GuestRegisters) -> Outcome {
    match value_hypercall(vcpu, regs.rax) {
        Some(value) => complete_hypercall(regs, Ok(value)),
        None => handle_other_hypercall(vcpu, regs),
    }
}

/// The hypercalls that only return a value: `NOP` and `VCPU_ID`.
#[inline(always)]
fn value_hypercall(vcpu: &'static Vcpu, nr: u64) -> Option<u64> {
    match nr {
        hypercall::NOP => Some(0),
        hypercall::VCPU_ID => Some(u64::from(vcpu.id)),
        _ => None,
    }
}

/// The hypercall's result in RAX; RIP past the VMCALL.
#[inline(always)]
fn complete_hypercall(regs: &mut GuestRegisters, result: Result<u64, HcError>) -> Outcome {
    regs.rax = match result {
        Ok(v) => v,
        Err(e) => e.to_rax(),
    };
    skip_instruction()
}

/// The hypercalls other than those of [`value_hypercall`].
#[inline(never)]
fn handle_other_hypercall(vcpu: &'static Vcpu, regs: &mut GuestRegisters) -> Outcome {
    let (nr, a, b) = (regs.rax, regs.rbx, regs.rcx);
    let result = match nr {
        hypercall::CONSOLE_WRITE => hypercall_console_write(vcpu, a, b),
        hypercall::PARTITION_STOP => {
            vcpu.vm.stop(a);
            return Outcome::Stop;
        }
        hypercall::EXIT_STATS => hypercall_exit_stats(vcpu, a, b),
        hypercall::IRQ_LINE => hypercall_irq_line(vcpu, a, b),
        hypercall::MEMORY_PROTECT => hypercall_memory_protect(vcpu, a, b, regs.rdx),
        // The service partition's waits are taken by `service::forward` before this
        // dispatcher; anyone else gets `NotPermitted`.
        hypercall::SERVICE_REPLY_WAIT => Err(HcError::NotPermitted),
        hypercall::GUEST_IRQ_LINE => crate::service::hypercall_guest_irq_line(vcpu, a, b, regs.rdx),
        hypercall::GUEST_POWER => crate::service::hypercall_guest_power(vcpu, a, b, regs.rdx),
        hypercall::GUEST_PIC_INTR => crate::service::hypercall_guest_pic_intr(vcpu, a, b),
        hypercall::GUEST_CONSOLE_WRITE => crate::service::hypercall_guest_console_write(vcpu, a, b, regs.rdx),
        hypercall::SERVICE_CONSOLE_READ => crate::console::input::hypercall_read(vcpu, a, b, regs.rdx),
        hypercall::SERVICE_COMPLETE => crate::service::hypercall_service_complete(vcpu, a, b, regs.rdx, regs.rsi),
        hypercall::SYSTEM_INFO => crate::control::system_info(vcpu, a),
        hypercall::VM_CREATE => crate::control::vm_create(vcpu, a, b),
        hypercall::VM_MAP_RAM => crate::control::vm_map_ram(vcpu, a, b, regs.rdx),
        hypercall::VM_SET_DEVICES => crate::control::vm_set_devices(vcpu, a, b),
        hypercall::VCPU_CREATE => crate::control::vcpu_create(vcpu, a, b),
        hypercall::VCPU_SET_STATE => crate::control::vcpu_set_state(vcpu, a, b, regs.rdx),
        hypercall::VCPU_START => crate::control::vcpu_start(vcpu, a, b),
        hypercall::VM_STOP => crate::control::vm_stop(vcpu, a, b),
        hypercall::VM_RESET => crate::control::vm_reset(vcpu, a),
        _ => Err(HcError::UnknownHypercall),
    };
    complete_hypercall(regs, result)
}

/// CONSOLE_WRITE(gpa, len): validated against the caller's RAM, then written with the
/// partition's name in front of each line.
#[inline(never)]
fn hypercall_console_write(vcpu: &'static Vcpu, gpa: u64, len: u64) -> Result<u64, HcError> {
    console_write(vcpu.vm, gpa, len, vcpu.vm)
}

/// Writes `len` bytes at guest-physical `gpa` of `source`'s RAM to the console as
/// `output`'s console output (its name in front of each line); checked first.
pub fn console_write(source: &Vm, gpa: u64, len: u64, output: &Vm) -> Result<u64, HcError> {
    if len == 0 || len > hv_abi::CONSOLE_WRITE_MAX {
        return Err(HcError::BadLength);
    }
    let host = source.guest_range(gpa, len).ok_or(HcError::BadAddress)?;
    // SAFETY: the range lies inside the source VM's RAM (checked above), which is
    // direct-mapped and stays allocated; the VM may change it concurrently, which only
    // garbles the output.
    let bytes = unsafe { core::slice::from_raw_parts(frames::phys_to_virt(host), len as usize) };
    crate::console::write_partition_output(
        output.name,
        bytes,
        &output.console_line_start,
        &output.console_filter,
        output.created_tsc,
    );
    Ok(len)
}

/// IRQ_LINE(pin, level): drives an input pin of the caller's own virtual IOAPIC.
#[inline(never)]
fn hypercall_irq_line(vcpu: &'static Vcpu, pin: u64, level: u64) -> Result<u64, HcError> {
    let pin = u32::try_from(pin).map_err(|_| HcError::BadArgument)?;
    let high = match level {
        0 => false,
        1 => true,
        _ => return Err(HcError::BadArgument),
    };
    crate::virq::set_irq_line(vcpu.vm, pin, high).map_err(|_| HcError::BadArgument)?;
    Ok(0)
}

/// MEMORY_PROTECT(gpa, len, rights) on the caller's own RAM, through the control
/// interface (which flushes the EPT on every CPU of the partition).
#[inline(never)]
fn hypercall_memory_protect(vcpu: &'static Vcpu, gpa: u64, len: u64, rights: u64) -> Result<u64, HcError> {
    use crate::partition::ControlError;
    use hv_core::ept::EptPermissions;
    let perms = u8::try_from(rights).ok().and_then(EptPermissions::from_bits).ok_or(HcError::BadArgument)?;
    let handle = crate::partition::handle_of(vcpu.vm).ok_or(HcError::BadArgument)?;
    // The control interface checks the range and the rights.
    crate::partition::protect_range(handle, gpa, len, perms).map_err(|e| match e {
        ControlError::BadRange => HcError::BadAddress,
        _ => HcError::BadArgument,
    })?;
    Ok(0)
}

/// EXIT_STATS(gpa, len): writes `ExitCount` entries for the reasons seen.
#[inline(never)]
fn hypercall_exit_stats(vcpu: &'static Vcpu, gpa: u64, len: u64) -> Result<u64, HcError> {
    let entry = core::mem::size_of::<hv_abi::ExitCount>() as u64;
    let capacity = len / entry;
    if capacity == 0 {
        return Err(HcError::BadLength);
    }
    let host = vcpu.vm.guest_range(gpa, capacity * entry).ok_or(HcError::BadAddress)?;
    let mut written = 0;
    for (reason, counter) in vcpu.exits.iter().enumerate() {
        let count = counter.load(Ordering::Relaxed);
        if count == 0 || written == capacity {
            continue;
        }
        let record = hv_abi::ExitCount { reason: reason as u32, _reserved: 0, count };
        // SAFETY: `host + written * entry` lies inside the checked range of the VM's RAM.
        unsafe { frames::phys_to_virt(host + written * entry).cast::<hv_abi::ExitCount>().write_unaligned(record) };
        written += 1;
    }
    Ok(written)
}

/// HLT: the vCPU sleeps (on the host side, see `virq::prepare_entry`) until an
/// interrupt it can take arrives; RIP already points past the HLT, as after a real one.
#[inline]
fn handle_hlt(vcpu: &'static Vcpu) -> Outcome {
    let outcome = skip_instruction();
    crate::virq::halt(vcpu);
    outcome
}

/// A host interrupt arrived while the guest ran (acknowledged on exit, SDM 28.2.2): a
/// kick or the host timer, both meant only to get this CPU out of guest mode. It is
/// ended here; the next entry looks at the vCPU's state again.
#[inline]
fn handle_external_interrupt() -> Outcome {
    let info = InterruptionInfo(vmcs::read(ro::VMEXIT_INTERRUPTION_INFO) as u32);
    if info.vector() != crate::arch::idt::SPURIOUS_VECTOR {
        crate::arch::lapic::end_of_interrupt();
    }
    Outcome::Continue
}

/// The VMX-preemption timer expired: a guest timer deadline was reached, or the kick
/// backstop (`virq::inject_and_arm`) came round; the next entry processes either.
#[inline]
fn handle_preemption_timer() -> Outcome {
    Outcome::Continue
}

/// The guest can take an interrupt now: the next entry injects it.
#[inline]
fn handle_interrupt_window() -> Outcome {
    Outcome::Continue
}

/// EOI-induced exit (SDM 30.1.4; trap-like: the EOI is done, RIP is past it): the
/// vector is in the exit qualification.
#[inline(never)]
fn handle_virtualized_eoi(vcpu: &'static Vcpu) -> Outcome {
    crate::virq::virtualized_eoi(vcpu, vmcs::read(ro::EXIT_QUALIFICATION) as u8);
    Outcome::Continue
}

/// The guest can take an NMI now: the next entry injects it.
#[inline]
fn handle_nmi_window() -> Outcome {
    Outcome::Continue
}

#[inline(always)]
fn handle_io_instruction(vcpu: &'static Vcpu, regs: &mut GuestRegisters) -> Outcome {
    let qualification = vmcs::read_present(ro::EXIT_QUALIFICATION);
    let Some(io) = IoInstruction::decode(qualification) else {
        return stop_with_dump(vcpu, "I/O exit with an invalid size", 0);
    };
    if io.string() {
        return handle_string_io(vcpu, regs, io);
    }
    handle_port_io(vcpu, regs, io)
}

/// An IN or OUT (`io`, not a string instruction): forwarded to the service partition
/// when a device of the guest decodes the port, else unclaimed (reads all-ones, writes
/// ignored); then the instruction is completed. The exits of partitions with devices
/// come here straight from `vcpu::on_exit` ([`InlineExit::PortIo`]).
#[inline(always)]
pub fn handle_port_io(vcpu: &'static Vcpu, regs: &mut GuestRegisters, io: IoInstruction) -> Outcome {
    match port_access(vcpu, &io, regs.rax) {
        Ok(completion) => complete_port_io(regs, io, completion),
        Err(outcome) => outcome,
    }
}

/// Completes a port access: an IN gets the value (all-ones when the access failed);
/// RIP past the instruction. Also the end of the same-frame switch
/// (`vcpu::on_service_exit`).
#[inline(always)]
pub fn complete_port_io(regs: &mut GuestRegisters, io: IoInstruction, completion: Completion) -> Outcome {
    regs.rax = hv_core::io_request::rax_after_port_io(regs.rax, &io, completion);
    skip_instruction()
}

/// One port access of `io.size` bytes (`data` for a write) of a string instruction:
/// forwarded to the service partition when the guest has a device there, else
/// unclaimed (`Failed`: reads all-ones, writes dropped). `Err` stops the guest when the
/// service partition failed.
#[inline(always)]
fn port_access(vcpu: &'static Vcpu, io: &IoInstruction, data: u64) -> Result<Completion, Outcome> {
    if vcpu.vm.forwards_port(io.port()) {
        crate::service::forward_port(vcpu, *io, data)
    } else if pci_config::in_config_block(io.port()) && vcpu.vm.routes_pci_config.load(Ordering::Relaxed) {
        pci_config_port_access(vcpu, io, data)
    } else {
        Ok(Completion::Failed)
    }
}

/// A port access in the PCI configuration block 0xCF8-0xCFF of a guest with the `pci`
/// device, routed by `hv_core::pci_config::route`: a dword write of `CONFIG_ADDRESS`
/// updates the VM's copy and goes on as a port write, a `CONFIG_DATA` access with
/// configuration cycles enabled becomes a `PCI_CONFIG` request, anything else is a port
/// request.
#[inline(never)]
fn pci_config_port_access(vcpu: &'static Vcpu, io: &IoInstruction, data: u64) -> Result<Completion, Outcome> {
    let write = (!io.is_in()).then_some(data & io.value_mask());
    let config_address = vcpu.vm.pci_config_address.load(Ordering::Acquire);
    match pci_config::route(config_address, io.port(), io.size(), write) {
        PciPortRoute::SetConfigAddress(value) => {
            vcpu.vm.pci_config_address.store(value, Ordering::Release);
            crate::service::forward_port(vcpu, *io, data)
        }
        PciPortRoute::ConfigSpace(address) => crate::service::forward_pci_config(vcpu, address, io.size(), write),
        PciPortRoute::Port => crate::service::forward_port(vcpu, *io, data),
    }
}

/// Most elements of a REP string instruction done per exit; the instruction is then
/// re-executed (as the CPU does when interrupted), so a huge RCX cannot hold a CPU.
const STRING_IO_BUDGET: u64 = 4096;
/// The CS access-rights L bit (64-bit code, SDM Vol. 3C "Guest Register State").
const CS_LONG: u64 = 1 << 13;

/// INS/OUTS, with or without REP, as the processor executes them
/// (`hv_core::string_io`): the address size (a 0x67 prefix) masks rCX and the offset
/// register and wraps their updates; INS writes ES:rDI, OUTS reads DS:rSI or the
/// segment its override names (in 64-bit mode only FS and GS have a base). Each
/// element's memory operand goes through the guest's page tables first, as a user
/// access at CPL 3 (a fault is delivered to the guest as #PF before the port is
/// touched), then the port access is made as for IN/OUT (forwarded or unclaimed).
/// 64-bit guests only so far; others are stopped with a clear line.
#[inline(never)]
fn handle_string_io(vcpu: &'static Vcpu, regs: &mut GuestRegisters, io: IoInstruction) -> Outcome {
    use hv_core::guest_paging::Access;
    use hv_core::mmio_decode::{CpuMode, Segment};
    use hv_core::string_io::{self, StringIo, StringRegs};
    let io = &io;
    let mode = crate::mmio::cpu_mode();
    if mode != CpuMode::Long64 {
        return stop_with_dump(vcpu, "string I/O outside 64-bit mode is not emulated yet", u64::from(io.port()));
    }
    let form = match string_io_form(vcpu, regs, io.is_in(), mode) {
        Ok(form) => form,
        Err(outcome) => return outcome,
    };
    let string = StringIo {
        form,
        is_in: io.is_in(),
        rep: io.rep(),
        size: io.size(),
        down: vmcs::read(guest::RFLAGS) & string_io::RFLAGS_DF != 0,
        mode,
    };
    let segment_base = match form.segment {
        Segment::Fs => vmcs::read(guest::FS_BASE),
        Segment::Gs => vmcs::read(guest::GS_BASE),
        // Zero in 64-bit mode (`string_io::segment_base_applies`).
        _ => 0,
    };
    let access =
        Access { write: io.is_in(), user: string_io::cpl(vmcs::read(guest::SS_ACCESS_RIGHTS)) == 3, fetch: false };
    let state = guest_paging_state();
    let mut sregs = StringRegs { rcx: regs.rcx, rsi: regs.rsi, rdi: regs.rdi };
    let mut remaining = string.count(&sregs);
    let mut done = 0;
    let mut result = Outcome::Continue;
    while remaining > 0 && done < STRING_IO_BUDGET {
        let mut hosts = [0u64; 4];
        let mut fault = None;
        for (byte, host) in hosts.iter_mut().enumerate().take(usize::from(io.size())) {
            match guest_byte(vcpu, regs, &state, string.linear(&sregs, segment_base, byte as u64), access) {
                Ok(h) => *host = h,
                Err(outcome) => {
                    fault = Some(outcome);
                    break;
                }
            }
        }
        if let Some(outcome) = fault {
            result = outcome;
            break;
        }
        let hosts = &hosts[..usize::from(io.size())];
        if io.is_in() {
            let value = match port_access(vcpu, io, 0) {
                Ok(c) => hv_core::io_request::value_read(c, io.size()),
                Err(stop) => {
                    result = stop;
                    break;
                }
            };
            for (i, &host) in hosts.iter().enumerate() {
                // SAFETY: one byte inside the VM's RAM (checked by `guest_byte`),
                // direct-mapped.
                unsafe { frames::phys_to_virt(host).write_volatile((value >> (8 * i)) as u8) };
            }
        } else {
            let mut data = 0u64;
            for (i, &host) in hosts.iter().enumerate() {
                // SAFETY: as above.
                data |= u64::from(unsafe { frames::phys_to_virt(host).read_volatile() }) << (8 * i);
            }
            if let Err(stop) = port_access(vcpu, io, data) {
                result = stop;
                break;
            }
        }
        // Registers follow each completed element, so a fault on a later one leaves them
        // as the CPU would (SDM: REP string instructions, "interrupted" state).
        sregs = string.after_element(sregs);
        remaining -= 1;
        done += 1;
        if vcpu.vm.stop_requested() {
            result = Outcome::Stop;
            break;
        }
    }
    regs.rcx = sregs.rcx;
    regs.rsi = sregs.rsi;
    regs.rdi = sregs.rdi;
    if remaining == 0 && result == Outcome::Continue {
        skip_instruction()
    } else {
        result
    }
}

/// The address size and segment of the INS/OUTS that exited: from the VM-exit
/// instruction-information field when the processor reports them there for INS/OUTS,
/// else from the instruction's prefixes, fetched at CS:RIP as the MMIO path fetches
/// (`Err`: the fetch fault delivered to the guest, or the partition stopped when the
/// bytes are not an INS/OUTS any more).
#[inline(never)]
fn string_io_form(
    vcpu: &'static Vcpu,
    regs: &mut GuestRegisters,
    is_in: bool,
    mode: hv_core::mmio_decode::CpuMode,
) -> Result<hv_core::string_io::StringIoForm, Outcome> {
    use hv_core::string_io::{from_instruction_bytes, from_instruction_info, PrefixError};
    if crate::vcpu::ins_outs_info_supported() {
        let info = vmcs::read(ro::VMEXIT_INSTRUCTION_INFO) as u32;
        if let Some(form) = from_instruction_info(info, is_in) {
            return Ok(form);
        }
    }
    let fetched = crate::mmio::fetch_string_io_instruction(vcpu, mode);
    match from_instruction_bytes(fetched.bytes(), mode, is_in) {
        Ok(form) => Ok(form),
        Err(PrefixError::Truncated) => Err(crate::mmio::string_io_fetch_failed(vcpu, regs, &fetched)),
        Err(PrefixError::NotThisInstruction) => {
            Err(stop_with_dump(vcpu, "the string I/O instruction at RIP is not the INS/OUTS that exited", 0))
        }
    }
}

/// The guest's paging registers, for walks of its page tables.
pub fn guest_paging_state() -> hv_core::guest_paging::PagingState {
    let (cr0, cr4, efer) = (vmcs::read(guest::CR0), vmcs::read(guest::CR4), vmcs::read(guest::IA32_EFER_FULL));
    // With EPT the processor keeps the PDPTEs of PAE paging in the VMCS and stores them
    // there on every exit (SDM Vol. 3C, VM exits, "Saving Guest State"); those are the
    // ones it walks from.
    let pdptes = if hv_core::control_regs::pae_paging(cr0, cr4, efer) {
        [guest::PDPTE0_FULL, guest::PDPTE1_FULL, guest::PDPTE2_FULL, guest::PDPTE3_FULL].map(vmcs::read)
    } else {
        [0; 4]
    };
    hv_core::guest_paging::PagingState {
        cr0,
        cr3: vmcs::read(guest::CR3),
        cr4,
        efer,
        // CPUID 0x8000_0008 passes through to guests (`virt_cpuid`).
        phys_bits: crate::arch::cpuid::phys_addr_bits(),
        pdptes,
    }
}

/// The host-physical address of the guest byte at guest-linear `linear`, checked for
/// `access` (a data read or write, user-mode at CPL 3) through the guest's page tables;
/// `Err` carries the outcome when the guest must see a page fault (with CR2 and the
/// SDM Vol. 3A "Page-Fault Exceptions" error code) or be stopped.
fn guest_byte(
    vcpu: &'static Vcpu,
    regs: &mut GuestRegisters,
    state: &hv_core::guest_paging::PagingState,
    linear: u64,
    access: hv_core::guest_paging::Access,
) -> Result<u64, Outcome> {
    use hv_core::guest_paging::{translate_access, WalkError};
    let gpa = match translate_access(state, linear, access, |gpa| vcpu.vm.read_guest_u64(gpa)) {
        Ok(gpa) => gpa,
        Err(WalkError::PageFault { error_code }) => {
            // The exit path reloads CR2 from `regs` before this entry.
            regs.cr2 = linear;
            return Err(inject(InterruptionInfo::hardware_exception(PF, Some(error_code))));
        }
        Err(WalkError::TableOutsideRam) => {
            return Err(stop_with_dump(vcpu, "guest page tables point outside its RAM", linear))
        }
        Err(WalkError::UnsupportedMode) => return Err(stop_with_dump(vcpu, "unsupported guest paging mode", linear)),
    };
    vcpu.vm.guest_range(gpa, 1).ok_or_else(|| stop_with_dump(vcpu, "string I/O to memory outside its RAM", gpa))
}

#[inline(always)]
fn handle_rdmsr(vcpu: &'static Vcpu, regs: &mut GuestRegisters) -> Outcome {
    let msr = regs.rcx as u32;
    let value = match policy(msr) {
        // Every x2APIC fault on RDMSR is a #GP (SDM 11.12.1.2).
        MsrPolicy::Virtualized(VirtMsr::X2Apic(_)) => vcpu.lapic().read_msr(msr, crate::arch::tsc::now()).ok(),
        MsrPolicy::Virtualized(v) => read_virtual_msr(vcpu, v),
        // A passthrough MSR only exits when the bitmap cannot describe it.
        MsrPolicy::Passthrough | MsrPolicy::PassthroughReadOnly | MsrPolicy::Unknown => None,
    };
    complete_rdmsr(regs, value)
}

/// Completes RDMSR with `value` in EDX:EAX, or #GP without one.
#[inline(always)]
fn complete_rdmsr(regs: &mut GuestRegisters, value: Option<u64>) -> Outcome {
    match value {
        Some(v) => {
            regs.rax = v & 0xffff_ffff;
            regs.rdx = v >> 32;
            skip_instruction()
        }
        None => inject(InterruptionInfo::hardware_exception(GP, Some(0))),
    }
}

fn read_virtual_msr(vcpu: &'static Vcpu, msr: VirtMsr) -> Option<u64> {
    match msr {
        VirtMsr::ApicBase => Some(vcpu.lapic().apic_base()),
        VirtMsr::TscDeadline => Some(vcpu.lapic().read_tsc_deadline(crate::arch::tsc::now())),
        other => read_plain_msr(other),
    }
}

/// The value of a virtualized MSR that needs neither the LAPIC nor any call; `None`
/// for the others (the LAPIC's, and those RDMSR must fault on).
#[inline(always)]
fn read_plain_msr(msr: VirtMsr) -> Option<u64> {
    Some(match msr {
        VirtMsr::Tsc => crate::arch::tsc::now(),
        // Locked, VMX off: the guest sees no VMX.
        VirtMsr::FeatureControl => 1,
        VirtMsr::Pat => vmcs::read(guest::IA32_PAT_FULL),
        VirtMsr::Efer => vmcs::read(guest::IA32_EFER_FULL),
        // No supervisor XSAVE state is offered to guests.
        VirtMsr::Xss => 0,
        VirtMsr::MtrrCap => 0x508,
        VirtMsr::MiscEnable => 1,
        VirtMsr::ArchCapabilities => crate::arch::cpuid::host_facts().map_or(0, |h| h.arch_capabilities),
        VirtMsr::TscAdjust
        | VirtMsr::SpecCtrl
        | VirtMsr::BiosSignId
        | VirtMsr::McgCap
        | VirtMsr::McgStatus
        | VirtMsr::MtrrPhysBase(_)
        | VirtMsr::MtrrPhysMask(_)
        | VirtMsr::MtrrFixed(_)
        | VirtMsr::MtrrDefType => 0,
        _ => return None,
    })
}

#[inline(never)]
fn handle_wrmsr(vcpu: &'static Vcpu, regs: &mut GuestRegisters) -> Outcome {
    let msr = regs.rcx as u32;
    let value = (regs.rdx << 32) | (regs.rax & 0xffff_ffff);
    let accepted = match policy(msr) {
        MsrPolicy::Virtualized(VirtMsr::Pat) => {
            // Every PAT entry must be a valid memory type: 0, 1, 4, 5, 6 or 7 (SDM 13.12.2).
            let valid = (0..8).all(|i| matches!((value >> (8 * i)) & 0xff, 0 | 1 | 4 | 5 | 6 | 7));
            valid && vmcs::write(guest::IA32_PAT_FULL, value).is_ok()
        }
        MsrPolicy::Virtualized(VirtMsr::FeatureControl | VirtMsr::ArchCapabilities) => false,
        MsrPolicy::Virtualized(VirtMsr::Efer) => write_efer(value),
        MsrPolicy::Virtualized(VirtMsr::Xss) => value == 0,
        MsrPolicy::Virtualized(VirtMsr::ApicBase) => {
            let changed = vcpu.lapic().set_apic_base(value);
            match changed {
                Ok(change) => {
                    if change.mode_changed() {
                        crate::virq::apic_mode_changed(vcpu);
                    }
                    true
                }
                Err(_) => false,
            }
        }
        MsrPolicy::Virtualized(VirtMsr::TscDeadline) => {
            vcpu.lapic().write_tsc_deadline(value);
            true
        }
        MsrPolicy::Virtualized(VirtMsr::X2Apic(_)) => {
            let effect = vcpu.lapic().write_msr(msr, value, crate::arch::tsc::now());
            match effect {
                Ok(effect) => {
                    crate::virq::mirror_to_page(vcpu);
                    crate::virq::apply_effect(vcpu, effect);
                    true
                }
                Err(_) => false,
            }
        }
        MsrPolicy::Virtualized(_) => true,
        MsrPolicy::Passthrough | MsrPolicy::PassthroughReadOnly | MsrPolicy::Unknown => false,
    };
    if accepted {
        skip_instruction()
    } else {
        inject(InterruptionInfo::hardware_exception(GP, Some(0)))
    }
}

/// EFER bits a guest may write: SCE (0), LME (8), NXE (11); LMA (10) is the CPU's
/// (SDM 2.2.1). LME may not change while paging is on.
fn write_efer(value: u64) -> bool {
    const SCE: u64 = 1 << 0;
    const LME: u64 = 1 << 8;
    const LMA: u64 = 1 << 10;
    const NXE: u64 = 1 << 11;
    const CR0_PG: u64 = 1 << 31;
    let current = vmcs::read(guest::IA32_EFER_FULL);
    if value & !(SCE | LME | LMA | NXE) != 0 {
        return false;
    }
    if (value ^ current) & LME != 0 && vmcs::read(guest::CR0) & CR0_PG != 0 {
        return false;
    }
    vmcs::write(guest::IA32_EFER_FULL, (value & (SCE | LME | NXE)) | (current & LMA)).is_ok()
}

#[inline(never)]
fn handle_cr_access(vcpu: &'static Vcpu, regs: &mut GuestRegisters) -> Outcome {
    let access = CrAccess::decode(vmcs::read(ro::EXIT_QUALIFICATION));
    if access.access != CrAccessType::MovToCr || !matches!(access.cr, 0 | 4) {
        return stop_with_dump(vcpu, "control-register access not emulated yet", u64::from(access.cr));
    }
    let value = gpr(regs, access.gpr.index());
    // The guest sees `value`; the CPU runs with the VMX fixed bits applied (SDM A.7/A.8).
    let Some(fixed) = crate::vcpu::fixed_bits() else {
        return stop_with_dump(vcpu, "VMX fixed bits unknown", u64::from(access.cr));
    };
    // Validate, then commit: the new CR0, CR4 and EFER are worked out and checked (a
    // #GP changes nothing) before any of them is written.
    let cr0 = (vmcs::read(guest::CR0) & !fixed.guest_cr0_fixed0())
        | (vmcs::read(control::CR0_READ_SHADOW) & fixed.guest_cr0_fixed0());
    let cr4 = (vmcs::read(guest::CR4) & !fixed.cr4_fixed0) | (vmcs::read(control::CR4_READ_SHADOW) & fixed.cr4_fixed0);
    let efer = vmcs::read(guest::IA32_EFER_FULL);
    let gp = || inject(InterruptionInfo::hardware_exception(GP, Some(0)));
    let (after, ia32e_mode) = if access.cr == 0 {
        // Paging switched with EFER.LME set (de)activates IA-32e mode, as the CPU would.
        let cs_long = vmcs::read(guest::CS_ACCESS_RIGHTS) & CS_LONG != 0;
        let Ok(write) = hv_core::control_regs::mov_to_cr0(cr0, value, efer, cr4, cs_long) else {
            return gp();
        };
        ((value, cr4, write.efer), write.ia32e_mode)
    } else {
        ((cr0, value, efer), false)
    };
    // PAE paging from here on: the processor loads the PDPTEs at CR3 (a reserved bit in
    // one is #GP) into the VMCS fields the next entry uses (SDM 4.4.1; Vol. 3C, VM
    // entries, "Loading Guest State").
    let pdptes = if hv_core::control_regs::loads_pdptes((cr0, cr4, efer), after) {
        match read_pdptes(vcpu) {
            Some(Ok(pdptes)) => Some(pdptes),
            Some(Err(hv_core::control_regs::GeneralProtection)) => return gp(),
            None => return stop_with_dump(vcpu, "PAE page-directory-pointer table outside the guest's RAM", 0),
        }
    } else {
        None
    };
    if let Some(pdptes) = pdptes {
        for (field, pdpte) in
            [guest::PDPTE0_FULL, guest::PDPTE1_FULL, guest::PDPTE2_FULL, guest::PDPTE3_FULL].into_iter().zip(pdptes)
        {
            let _ = vmcs::write(field, pdpte);
        }
    }
    let (fixed0, fixed1, shadow, field) = if access.cr == 0 {
        if after.2 != efer {
            let _ = vmcs::write(guest::IA32_EFER_FULL, after.2);
            crate::vcpu::set_ia32e_mode_guest(ia32e_mode);
        }
        (fixed.guest_cr0_fixed0(), fixed.cr0_fixed1, control::CR0_READ_SHADOW, guest::CR0)
    } else {
        (fixed.cr4_fixed0, fixed.cr4_fixed1, control::CR4_READ_SHADOW, guest::CR4)
    };
    let _ = vmcs::write(shadow, value);
    let _ = vmcs::write(field, hv_core::vmx_caps::apply_fixed_bits(value, fixed0, fixed1));
    skip_instruction()
}

/// The four PAE PDPTEs at the guest's CR3, checked as the processor checks them when
/// it loads them (`Err`: the guest gets #GP); `None` when the table is not in its RAM.
fn read_pdptes(vcpu: &Vcpu) -> Option<Result<[u64; 4], hv_core::control_regs::GeneralProtection>> {
    let table = hv_core::control_regs::pdpt_address(vmcs::read(guest::CR3));
    let mut pdptes = [0u64; 4];
    for (i, pdpte) in pdptes.iter_mut().enumerate() {
        *pdpte = vcpu.vm.read_guest_u64(table + 8 * i as u64)?;
    }
    Some(hv_core::control_regs::check_pdptes(pdptes, crate::arch::cpuid::phys_addr_bits()))
}

/// Reads general-purpose register `index` (SDM numbering: 0 RAX ... 15 R15; RSP from the VMCS).
pub fn gpr(regs: &GuestRegisters, index: u8) -> u64 {
    match index {
        0 => regs.rax,
        1 => regs.rcx,
        2 => regs.rdx,
        3 => regs.rbx,
        4 => vmcs::read(guest::RSP),
        5 => regs.rbp,
        6 => regs.rsi,
        7 => regs.rdi,
        8 => regs.r8,
        9 => regs.r9,
        10 => regs.r10,
        11 => regs.r11,
        12 => regs.r12,
        13 => regs.r13,
        14 => regs.r14,
        _ => regs.r15,
    }
}

/// Writes general-purpose register `index` (as [`gpr`] numbers them).
pub fn set_gpr(regs: &mut GuestRegisters, index: u8, value: u64) {
    let slot = match index {
        0 => &mut regs.rax,
        1 => &mut regs.rcx,
        2 => &mut regs.rdx,
        3 => &mut regs.rbx,
        4 => {
            let _ = vmcs::write(guest::RSP, value);
            return;
        }
        5 => &mut regs.rbp,
        6 => &mut regs.rsi,
        7 => &mut regs.rdi,
        8 => &mut regs.r8,
        9 => &mut regs.r9,
        10 => &mut regs.r10,
        11 => &mut regs.r11,
        12 => &mut regs.r12,
        13 => &mut regs.r13,
        14 => &mut regs.r14,
        _ => &mut regs.r15,
    };
    *slot = value;
}

#[inline(never)]
fn handle_triple_fault(vcpu: &'static Vcpu) -> Outcome {
    stop_with_dump(vcpu, "triple fault", 0)
}

#[inline(never)]
fn handle_ept_violation(vcpu: &'static Vcpu, regs: &mut GuestRegisters) -> Outcome {
    let gpa = vmcs::read(ro::GUEST_PHYSICAL_ADDR_FULL);
    let v = EptViolation::decode(vmcs::read(ro::EXIT_QUALIFICATION));
    if !v.fetch {
        if let Some((device, offset)) = crate::mmio::device_at(vcpu, gpa) {
            return crate::mmio::handle_mmio(vcpu, regs, device, offset, v.write);
        }
    }
    let kind = if v.fetch {
        "instruction fetch"
    } else if v.write {
        "write"
    } else {
        "read"
    };
    if vcpu.vm.guest_range(gpa, 1).is_some() {
        log::error!(
            "partition {}: vcpu {}: {kind} at guest-physical {gpa:#x}, which its memory rights forbid (MEMORY_PROTECT); stopping this partition",
            vcpu.vm.name,
            vcpu.id
        );
        vcpu.vm.stop(u64::MAX);
        return Outcome::Stop;
    }
    log::error!(
        "partition {}: vcpu {}: {kind} at guest-physical {gpa:#x}, outside its RAM ({} MiB) and any device; stopping this partition",
        vcpu.vm.name,
        vcpu.id,
        vcpu.vm.ram_bytes.load(Ordering::Relaxed) >> 20
    );
    vcpu.vm.stop(u64::MAX);
    Outcome::Stop
}

#[inline(never)]
fn handle_ept_misconfiguration(vcpu: &'static Vcpu) -> Outcome {
    stop_with_dump(vcpu, "EPT misconfiguration (a hypervisor bug)", vmcs::read(ro::GUEST_PHYSICAL_ADDR_FULL))
}

#[inline(never)]
fn handle_exception_or_nmi(vcpu: &'static Vcpu) -> Outcome {
    let info = InterruptionInfo(vmcs::read(ro::VMEXIT_INTERRUPTION_INFO) as u32);
    // With an empty exception bitmap only NMIs exit here: they were meant for the host,
    // which has nothing to do with them yet.
    if info.vector() == 2 {
        return Outcome::Continue;
    }
    stop_with_dump(vcpu, "unexpected exception exit", u64::from(info.vector()))
}

/// XSETBV always exits (SDM 26.1.2). The new XCR0 is checked as the CPU would check
/// it (SDM 13.3): XCR0 only (ECX = 0), x87 always on, AVX only with SSE, the three
/// AVX-512 bits together and only with AVX, nothing outside the components the guest's
/// CPUID lists (`XsaveLayout::supported`, a subset of what the CPU has); then it
/// is loaded. The host uses no extended state, and each CPU runs one vCPU, so the
/// guest's XCR0 can stay loaded across exits.
#[inline(never)]
fn handle_xsetbv(regs: &mut GuestRegisters) -> Outcome {
    let value = (regs.rdx << 32) | (regs.rax & 0xffff_ffff);
    // Before the host facts exist no guest runs; nothing is supported then.
    let supported = crate::arch::cpuid::host_facts().map_or(0, |h| h.cpuid.xsave.supported);
    if regs.rcx & 0xffff_ffff != 0 || !hv_core::virt_cpuid::xcr0_is_valid(value, supported) {
        return inject(InterruptionInfo::hardware_exception(GP, Some(0)));
    }
    // SAFETY: the value passed the CPU's own XCR0 rules for this CPU, and CR4.OSXSAVE
    // is set in the host (vmx::enable_on_this_cpu) whenever the CPU has XSAVE; the
    // hypervisor itself never uses extended state.
    unsafe {
        core::arch::asm!("xsetbv", in("ecx") 0u32, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack))
    };
    skip_instruction()
}

/// Guest activity states (SDM 25.4.2).
const ACTIVITY_ACTIVE: u64 = 0;
const ACTIVITY_WAIT_FOR_SIPI: u64 = 3;

/// INIT (SDM 26.2 and 11.4.7.3 "INIT reset"): the vCPU takes its INIT state (real mode,
/// CS:IP = F000:FFF0 with CS base FFFF0000, general registers 0) and waits for a SIPI.
#[inline(never)]
fn handle_init_signal(vcpu: &'static Vcpu, regs: &mut GuestRegisters) -> Outcome {
    *regs = GuestRegisters::default();
    if crate::vcpu::reset_to_real_mode(0xf000, 0xffff_0000, 0xfff0).is_err()
        || vmcs::write(guest::ACTIVITY_STATE, ACTIVITY_WAIT_FOR_SIPI).is_err()
    {
        return stop_with_dump(vcpu, "INIT could not be applied", 0);
    }
    Outcome::Continue
}

/// SIPI while waiting for one (SDM 26.2, table 28-1: the exit qualification holds the
/// vector): start in real mode at vector * 0x1000.
#[inline(never)]
fn handle_sipi(vcpu: &'static Vcpu) -> Outcome {
    let vector = vmcs::read(ro::EXIT_QUALIFICATION) & 0xff;
    if crate::vcpu::reset_to_real_mode(vector << 8, vector << 12, 0).is_err()
        || vmcs::write(guest::ACTIVITY_STATE, ACTIVITY_ACTIVE).is_err()
    {
        return stop_with_dump(vcpu, "SIPI could not be applied", vector);
    }
    Outcome::Continue
}

#[inline(never)]
fn handle_wbinvd() -> Outcome {
    // SAFETY: WBINVD writes back and invalidates caches; it has no effect on memory
    // contents and the guest asked for exactly this (INVD is treated as WBINVD).
    unsafe { core::arch::asm!("wbinvd", options(nostack)) };
    skip_instruction()
}

#[inline(never)]
fn handle_vmx_instruction() -> Outcome {
    // The guest sees no VMX (CPUID, FEATURE_CONTROL): VMX instructions raise #UD.
    inject(InterruptionInfo::hardware_exception(UD, None))
}

#[cold]
#[inline(never)]
fn handle_entry_failure(vcpu: &'static Vcpu, basic: u16) -> Outcome {
    let why = match basic {
        33 => "invalid guest state",
        34 => "MSR loading",
        41 => "machine-check event",
        _ => "unknown cause",
    };
    log::error!(
        "partition {}: vcpu {}: VM entry failed: {why} (exit reason {basic}); stopping this partition",
        vcpu.vm.name,
        vcpu.id
    );
    dump_guest_state(vcpu);
    vcpu.vm.stop(u64::MAX);
    Outcome::Stop
}

/// Stops the partition with a line naming `what` and a dump of the vCPU's state.
#[cold]
#[inline(never)]
pub fn stop_with_dump(vcpu: &'static Vcpu, what: &str, detail: u64) -> Outcome {
    log::error!("partition {}: vcpu {}: {what} ({detail:#x}); stopping this partition", vcpu.vm.name, vcpu.id);
    dump_guest_state(vcpu);
    vcpu.vm.stop(u64::MAX);
    Outcome::Stop
}

/// Logs the guest's state from the VMCS and its saved registers.
pub fn dump_guest_state(vcpu: &'static Vcpu) {
    // SAFETY: called on the vCPU's own physical CPU, the only one touching its registers.
    let r = unsafe { &*vcpu.regs.get() };
    let f = vmcs::read;
    log::error!(
        "partition {}: vcpu {} (cpu {}) state: rip {:#x} rsp {:#x} rflags {:#x} cr0 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x} cs {:#x}/{:#x} exit qualification {:#x}",
        vcpu.vm.name,
        vcpu.id,
        vcpu.cpu,
        f(guest::RIP),
        f(guest::RSP),
        f(guest::RFLAGS),
        f(guest::CR0),
        f(guest::CR3),
        f(guest::CR4),
        f(guest::IA32_EFER_FULL),
        f(guest::CS_SELECTOR),
        f(guest::CS_ACCESS_RIGHTS),
        f(ro::EXIT_QUALIFICATION),
    );
    log::error!(
        "partition {}: vcpu {} registers: rax {:#x} rbx {:#x} rcx {:#x} rdx {:#x} rsi {:#x} rdi {:#x} rbp {:#x} r8 {:#x} r9 {:#x} r10 {:#x} r11 {:#x} r12 {:#x} r13 {:#x} r14 {:#x} r15 {:#x}",
        vcpu.vm.name, vcpu.id, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15
    );
}

/// Logs a vCPU's exit statistics (exact counts; the average handler time over the
/// sampled exits, see [`handle_exit`]) and, for the partition's last vCPU, its end.
pub fn report_stop(vcpu: &'static Vcpu, last: bool) {
    let vm = vcpu.vm;
    let mut line = heapless_line::Line::new();
    for (reason, counter) in vcpu.exits.iter().enumerate() {
        let n = counter.load(Ordering::Relaxed);
        if n > 0 {
            let name = ExitReason::from_basic(reason as u16).map_or("other", ExitReason::name);
            let ticks = vcpu.exit_ticks[reason].load(Ordering::Relaxed);
            let timed = vcpu.exits_timed[reason].load(Ordering::Relaxed).max(1);
            line.push(name, n, ticks / timed);
        }
    }
    log::info!(
        "partition {}: vcpu {} exits: {} (handler time: 1 exit in {EXIT_TIMING_SAMPLE} of each reason timed)",
        vm.name,
        vcpu.id,
        line.as_str()
    );
    let pci_config_requests = vcpu.pci_config_requests.load(Ordering::Relaxed);
    if pci_config_requests > 0 {
        log::info!("partition {}: vcpu {} PCI configuration requests: {pci_config_requests}", vm.name, vcpu.id);
    }
    if last {
        match vm.exit_code.load(Ordering::Acquire) {
            u64::MAX => log::info!("partition {}: stopped by the hypervisor", vm.name),
            code => log::info!("partition {}: stopped itself (code {code})", vm.name),
        }
    }
}

/// A fixed-size text buffer for the exit-statistics line (no allocation).
mod heapless_line {
    use core::fmt::Write;

    pub struct Line {
        buf: [u8; 512],
        len: usize,
    }

    impl Line {
        pub fn new() -> Self {
            Self { buf: [0; 512], len: 0 }
        }

        pub fn push(&mut self, name: &str, count: u64, avg_ticks: u64) {
            let sep = if self.len == 0 { "" } else { ", " };
            let _ = write!(self, "{sep}{name} {count} (avg {avg_ticks} tsc)");
        }

        pub fn as_str(&self) -> &str {
            core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
        }
    }

    impl Write for Line {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            let n = s.len().min(self.buf.len() - self.len);
            self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
            self.len += n;
            Ok(())
        }
    }
}
