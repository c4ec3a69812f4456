//! Running one vCPU on its physical CPU: VMCS set-up (host state, 64-bit guest start
//! state, controls computed from the capability MSRs, bitmaps, EPT, VPID) and the
//! enter → exit → dispatch loop.

use core::sync::atomic::{AtomicU32, Ordering};

use hv_core::vmx_caps::{apply_fixed_bits, VmxCapabilities};
use hv_core::vmx_controls::{self, Controls};
use spin::Once;
use x86::vmx::vmcs::{control, guest, host};

use crate::arch::msr::{self, Msr};
use crate::arch::{gdt, percpu};
use crate::dispatch::{self, InlineExit, Outcome};
use crate::mm::{frames, paging};
use crate::partition::Vcpu;
use crate::vmx::run::{self, Entry, GuestRegisters};
use crate::vmx::vmcs::{self, VmInstructionError, Vmcs};

/// Pages shared by every vCPU: I/O bitmaps A and B (every port exits: unclaimed ports
/// are emulated by the hypervisor, later forwarded) and the MSR bitmap.
struct SharedPages {
    io_a: u64,
    io_b: u64,
    msr: u64,
    /// The MSR bitmap for vCPUs with APIC virtualization (`hv_core::apicv::msr_bitmap`).
    msr_apicv: u64,
}

static SHARED: Once<Option<SharedPages>> = Once::new();
/// The controls every vCPU uses (computed once on the BSP).
static CONTROLS: Once<Controls> = Once::new();
/// `CONTROLS.proc2`, for the CPUID exit (one load instead of the `Once` check).
static SECONDARY_CONTROLS: AtomicU32 = AtomicU32::new(0);
/// The VMX fixed bits of CR0 and CR4 (read once on the BSP; all CPUs are alike).
static FIXED: Once<FixedBits> = Once::new();
/// The interrupt-related VMX features (read once on the BSP).
static EVENT_FEATURES: Once<EventFeatures> = Once::new();

/// Optional VMX features the interrupt code uses.
#[derive(Debug, Clone, Copy)]
struct EventFeatures {
    /// The VMX-preemption timer's rate (IA32_VMX_MISC[4:0], SDM A.6), when the
    /// pin-based control can be set.
    preemption_timer_rate: Option<u8>,
    /// NMI-window exiting can be set (SDM A.3.2).
    nmi_window: bool,
    /// APIC virtualization for x2APIC-mode guests can be used: TPR shadow, virtualize
    /// x2APIC mode, APIC-register virtualization and virtual-interrupt delivery are all
    /// allowed (SDM A.3.2, A.3.3), and the configuration does not turn it off.
    apicv: bool,
    /// The VM-exit instruction-information field is valid for INS/OUTS
    /// (IA32_VMX_BASIC bit 54, SDM Vol. 3D A.1 "Basic VMX Information").
    ins_outs_info: bool,
}

/// IA32_VMX_CR0_FIXED0/1 and IA32_VMX_CR4_FIXED0/1 (SDM A.7, A.8).
#[derive(Debug, Clone, Copy)]
pub struct FixedBits {
    pub cr0_fixed0: u64,
    pub cr0_fixed1: u64,
    pub cr4_fixed0: u64,
    pub cr4_fixed1: u64,
}

impl FixedBits {
    /// CR0 bits a guest must keep at 1: with unrestricted guest, PE and PG are the
    /// guest's own (SDM 26.8).
    #[must_use]
    pub fn guest_cr0_fixed0(&self) -> u64 {
        let unrestricted = secondary_controls() & vmx_controls::proc2::UNRESTRICTED_GUEST != 0;
        if unrestricted {
            self.cr0_fixed0 & !CR0_PE_PG
        } else {
            self.cr0_fixed0
        }
    }
}

/// Computes the controls from the capability MSRs and records the fixed bits; `Err`
/// names what is missing.
pub fn init(raw: &hv_core::vmx_caps::RawVmxMsrs, apicv_allowed: bool) -> Result<(), vmx_controls::MissingControl> {
    let controls = vmx_controls::compute(raw, &vmx_controls::hypervisor_request())?;
    CONTROLS.call_once(|| controls);
    SECONDARY_CONTROLS.store(controls.proc2, Ordering::Release);
    // SAFETY: the fixed-bit MSRs exist whenever VMX does (the caller probed it); reads
    // have no side effects.
    let fixed = unsafe {
        FixedBits {
            cr0_fixed0: msr::read(Msr::VmxCr0Fixed0),
            cr0_fixed1: msr::read(Msr::VmxCr0Fixed1),
            cr4_fixed0: msr::read(Msr::VmxCr4Fixed0),
            cr4_fixed1: msr::read(Msr::VmxCr4Fixed1),
        }
    };
    FIXED.call_once(|| fixed);
    crate::vmx::invept::init(raw.ept_vpid);
    let pin_timer = hv_core::vmx_caps::allowed1(raw.pinbased, vmx_controls::pin::PREEMPTION_TIMER);
    EVENT_FEATURES.call_once(|| EventFeatures {
        preemption_timer_rate: pin_timer.then_some((raw.misc & 0x1f) as u8),
        nmi_window: hv_core::vmx_caps::allowed1(raw.procbased, vmx_controls::proc1::NMI_WINDOW_EXITING),
        apicv: apicv_allowed
            && controls.proc & vmx_controls::proc1::ACTIVATE_SECONDARY != 0
            && hv_core::vmx_caps::allowed1(raw.procbased, vmx_controls::proc1::USE_TPR_SHADOW)
            && hv_core::vmx_caps::allowed1(raw.procbased2, APICV_PROC2),
        ins_outs_info: raw.basic & hv_core::string_io::BASIC_INS_OUTS_INFO != 0,
    });
    Ok(())
}

/// The secondary controls of APIC virtualization for x2APIC mode (SDM 25.6.2).
const APICV_PROC2: u32 = vmx_controls::proc2::VIRTUALIZE_X2APIC
    | vmx_controls::proc2::APIC_REGISTER_VIRTUALIZATION
    | vmx_controls::proc2::VIRTUAL_INTERRUPT_DELIVERY;

/// Whether vCPUs in x2APIC mode use APIC virtualization.
pub fn apicv_supported() -> bool {
    EVENT_FEATURES.get().is_some_and(|f| f.apicv)
}

/// Turns APIC virtualization on (with the virtual-APIC page at host-physical `page`) or
/// off on the current VMCS (SDM 25.6.2, 25.6.8, 25.6.9): TPR shadow, virtualize x2APIC
/// mode, APIC-register virtualization, virtual-interrupt delivery, TPR threshold 0,
/// and the MSR bitmap that lets the CPU complete the virtualized x2APIC accesses.
pub fn set_apicv(on: bool, page: u64) -> Result<(), VmInstructionError> {
    let fail = VmInstructionError(None);
    let pages = shared().ok_or(fail)?;
    let tpr_shadow = vmx_controls::proc1::USE_TPR_SHADOW;
    if on {
        vmcs::write(control::VIRT_APIC_ADDR_FULL, page)?;
        vmcs::write(control::TPR_THRESHOLD, 0)?;
        vmcs::write(control::MSR_BITMAPS_ADDR_FULL, pages.msr_apicv)?;
        update_control(control::PRIMARY_PROCBASED_EXEC_CONTROLS, 0, tpr_shadow)?;
        update_control(control::SECONDARY_PROCBASED_EXEC_CONTROLS, 0, APICV_PROC2)
    } else {
        update_control(control::SECONDARY_PROCBASED_EXEC_CONTROLS, APICV_PROC2, 0)?;
        update_control(control::PRIMARY_PROCBASED_EXEC_CONTROLS, tpr_shadow, 0)?;
        vmcs::write(control::MSR_BITMAPS_ADDR_FULL, pages.msr)?;
        vmcs::write(guest::INTERRUPT_STATUS, 0)
    }
}

/// Clears the `clear` bits and sets the `set` bits of a 32-bit control field of the
/// current VMCS, writing it only when that changes it.
fn update_control(field: u32, clear: u32, set: u32) -> Result<(), VmInstructionError> {
    let current = vmcs::read(field) as u32;
    let wanted = (current & !clear) | set;
    if wanted == current {
        return Ok(());
    }
    vmcs::write(field, u64::from(wanted))
}

/// The VMX-preemption timer's rate when the CPU has the timer.
pub fn preemption_timer_rate() -> Option<u8> {
    EVENT_FEATURES.get().and_then(|f| f.preemption_timer_rate)
}

/// Whether INS/OUTS exits report their address size and segment in the VM-exit
/// instruction-information field.
pub fn ins_outs_info_supported() -> bool {
    EVENT_FEATURES.get().is_some_and(|f| f.ins_outs_info)
}

/// Whether NMI-window exiting is available.
pub fn nmi_window_supported() -> bool {
    EVENT_FEATURES.get().is_some_and(|f| f.nmi_window)
}

/// Which event windows the next VM entry asks for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Windows {
    pub interrupt: bool,
    pub nmi: bool,
}

/// Sets interrupt-window and NMI-window exiting (SDM 26.7.5, 26.7.6) on the current
/// VMCS, writing the field only when it changes.
pub fn set_windows(windows: Windows) {
    use vmx_controls::proc1::{INTERRUPT_WINDOW_EXITING, NMI_WINDOW_EXITING};
    let mut wanted = 0;
    if windows.interrupt {
        wanted |= INTERRUPT_WINDOW_EXITING;
    }
    if windows.nmi && nmi_window_supported() {
        wanted |= NMI_WINDOW_EXITING;
    }
    let _ =
        update_control(control::PRIMARY_PROCBASED_EXEC_CONTROLS, INTERRUPT_WINDOW_EXITING | NMI_WINDOW_EXITING, wanted);
}

/// Sets or clears the "IA-32e mode guest" VM-entry control (SDM 25.8.1), which must
/// equal the guest's EFER.LMA on entry.
pub fn set_ia32e_mode_guest(on: bool) {
    let bit = vmx_controls::entry::IA32E_MODE_GUEST;
    let _ = update_control(control::VMENTRY_CONTROLS, bit, if on { bit } else { 0 });
}

/// Arms the VMX-preemption timer with `value` (SDM 26.5.1) on the current VMCS; the
/// pin-based control is written only when `already_on` says it is not set yet.
pub fn arm_preemption_timer(value: u32, already_on: bool) {
    if !already_on {
        let _ = update_control(control::PINBASED_EXEC_CONTROLS, 0, vmx_controls::pin::PREEMPTION_TIMER);
    }
    let _ = vmcs::write(guest::VMX_PREEMPTION_TIMER_VALUE, u64::from(value));
}

/// The VMX fixed bits (`None` before [`init`]).
#[must_use]
pub fn fixed_bits() -> Option<&'static FixedBits> {
    FIXED.get()
}

/// The secondary processor-based controls in use (0 before [`init`]).
pub fn secondary_controls() -> u32 {
    SECONDARY_CONTROLS.load(Ordering::Acquire)
}

fn shared() -> Option<&'static SharedPages> {
    SHARED
        .call_once(|| {
            let io_a = frames::allocate_frame().ok()?;
            let io_b = frames::allocate_frame().ok()?;
            let msr = frames::allocate_frame().ok()?;
            let msr_apicv = frames::allocate_frame().ok()?;
            let bitmap = hv_core::virt_msr::MsrBitmap::for_policy();
            let apicv_bitmap = hv_core::apicv::msr_bitmap(&bitmap);
            // SAFETY: four fresh, direct-mapped frames owned by these bitmaps; filled once
            // before any vCPU uses them, read-only afterwards (by the CPU).
            unsafe {
                core::ptr::write_bytes(frames::phys_to_virt(io_a), 0xff, 4096);
                core::ptr::write_bytes(frames::phys_to_virt(io_b), 0xff, 4096);
                core::ptr::copy_nonoverlapping(bitmap.as_bytes().as_ptr(), frames::phys_to_virt(msr), 4096);
                core::ptr::copy_nonoverlapping(apicv_bitmap.as_bytes().as_ptr(), frames::phys_to_virt(msr_apicv), 4096);
            }
            Some(SharedPages { io_a, io_b, msr, msr_apicv })
        })
        .as_ref()
}

/// CR0 bits for a 64-bit guest: PE, MP, ET, NE, WP, PG (SDM 2.5).
const GUEST_CR0: u64 = 0x8001_0033;
/// CR0.PE and CR0.PG, which unrestricted guest lets the guest own.
const CR0_PE_PG: u64 = 0x8000_0001;
/// CR4.PAE (SDM 2.5).
const GUEST_CR4: u64 = 1 << 5;
/// CR4.VMXE: fixed to 1 in VMX operation, hidden from the guest by the read shadow.
const CR4_VMXE: u64 = 1 << 13;
/// EFER.LME | EFER.LMA | EFER.NXE.
const GUEST_EFER: u64 = 0xd00;
/// The power-on PAT value (SDM 13.12.4).
const DEFAULT_PAT: u64 = 0x0007_0406_0007_0406;
/// Segment access rights (SDM 25.4.1, table 25-2): 64-bit code, data, busy TSS, unusable.
const AR_CODE64: u64 = 0xa09b;
const AR_DATA: u64 = 0xc093;
const AR_TSS_BUSY: u64 = 0x8b;
const AR_UNUSABLE: u64 = 1 << 16;

/// Runs `vcpu` on this CPU until its partition stops. Returns normally; the caller
/// then idles this CPU.
pub fn run(vcpu: &'static Vcpu, caps: &VmxCapabilities) {
    let name = vcpu.vm.name;
    if let Err(e) = setup(vcpu, caps) {
        log::error!("partition {name}: vcpu {}: VMCS set-up failed: {}", vcpu.id, e.describe());
        vcpu.vm.stop(u64::MAX);
        finish(vcpu);
        return;
    }
    // SAFETY: only this physical CPU touches the vCPU's registers.
    let regs = unsafe { &mut *vcpu.regs.get() };
    // The enter -> exit -> handle -> prepare loop runs inside `run::enter_with`, which
    // calls `on_exit` after every exit and returns only when the partition stops (a
    // stop request reaches `prepare_entry` through the vCPU's attention bits: `Vm::stop`
    // sets them, and a new vCPU starts with all of them set) or an entry fails.
    if crate::virq::prepare_entry(vcpu, regs) == Outcome::Continue && crate::virq::enter_guest_mode(vcpu) {
        let ctx = core::ptr::from_ref::<Vcpu>(vcpu).cast::<()>();
        let entry = run::enter_with(regs, vcpu.launched.load(Ordering::Relaxed), on_exit, ctx);
        // Nothing on this CPU is in guest mode now: also not the service vCPU, whose
        // VMRESUME in this frame may have been the entry that failed.
        crate::virq::left_guest_mode(vcpu);
        if let Some(svc) = crate::partition::service_vcpu_for_cpu(vcpu.cpu) {
            crate::virq::left_guest_mode(svc);
        }
        match entry {
            Entry::Exited => {}
            Entry::FailInvalid | Entry::FailValid => {
                let err = VmInstructionError::current();
                log::error!(
                    "partition {name}: vcpu {}: VM entry failed: {} ({:?}); stopping this partition",
                    vcpu.id,
                    err.describe(),
                    err.0
                );
                dispatch::dump_guest_state(vcpu);
                vcpu.vm.stop(u64::MAX);
            }
        }
    }
    finish(vcpu);
}

/// After every exit of a vCPU run by [`run`]: handles it and prepares the next entry;
/// [`run::LEAVE`] when the partition stops.
///
/// The common exit is handled here without any call (`dispatch::try_handle_exit_inline`
/// and the attention word of `prepare_entry`), so this function saves no registers;
/// everything else is a tail call to [`on_exit_general`] or [`on_entry_attention`].
/// The inline handlers and CPUID change neither CR2 nor `regs.cr2`: their entries keep
/// the CPU's CR2 ([`run::RESUME_KEEP_CR2`]); the others load it from `regs`.
extern "C" fn on_exit(regs: *mut GuestRegisters, ctx: *const (), frame: *mut run::ExitFrame) -> u64 {
    // SAFETY: `ctx` is the `&'static Vcpu` that `run` passed to `run::enter_with`, and
    // `regs` its registers (`Vcpu::regs`), which only this CPU touches and `run` does
    // not use while the guest runs.
    let (vcpu, guest) = unsafe { (&*ctx.cast::<Vcpu>(), &mut *regs) };
    crate::virq::left_guest_mode(vcpu);
    match dispatch::try_handle_exit_inline(vcpu, guest) {
        InlineExit::Done(Outcome::Continue) if vcpu.attention.load(Ordering::Acquire) == 0 => {
            resume(vcpu, run::RESUME_KEEP_CR2)
        }
        InlineExit::Done(Outcome::Continue) => on_entry_attention(regs, ctx),
        InlineExit::Done(Outcome::Stop) => run::LEAVE,
        InlineExit::Cpuid => on_cpuid_exit(regs, ctx),
        InlineExit::PortIo(io) => on_port_io_exit(regs, ctx, io, frame),
        InlineExit::NotInline => on_exit_general(regs, ctx),
    }
}

/// The hook's result `code` (an entry of `vcpu`): `vcpu` is marked in guest mode
/// (`virq::enter_guest_mode`, which carries out an INVEPT request that came since the
/// last look); [`run::LEAVE`] when that INVEPT failed and the partition stopped.
#[inline(always)]
fn resume(vcpu: &'static Vcpu, code: u64) -> u64 {
    if crate::virq::enter_guest_mode(vcpu) {
        code
    } else {
        run::LEAVE
    }
}

/// [`on_exit`] for an IN or OUT of a partition with forwarded devices (counted): its
/// own function, see `InlineExit::PortIo`. A forwarded port goes the fast way when it
/// can (`service::begin_port_forward`: this CPU switches to the service vCPU in this
/// exit frame, and [`on_service_exit`] completes the instruction); otherwise
/// [`on_port_io_exit_general`] forwards it the general way. The fast way makes no call,
/// so this function saves no registers.
#[inline(never)]
fn on_port_io_exit(
    regs: *mut GuestRegisters,
    ctx: *const (),
    io: hv_core::exit::IoInstruction,
    frame: *mut run::ExitFrame,
) -> u64 {
    // SAFETY: as in `on_exit`; `frame` is the exit stub's frame, which the stub reads
    // only after this hook returns.
    let (vcpu, guest, frame) = unsafe { (&*ctx.cast::<Vcpu>(), &*regs, &mut *frame) };
    vcpu.launched.store(true, Ordering::Relaxed);
    if !vcpu.vm.forwards_port(io.port()) {
        return on_port_io_exit_general(regs, ctx, io);
    }
    match crate::service::begin_port_forward(vcpu, io, guest.rax, frame, on_service_exit) {
        // The stub enters the service vCPU (registers and VMCS), whose next exit comes
        // to `on_service_exit`.
        crate::service::PortForwardStart::Switched => run::RESUME,
        crate::service::PortForwardStart::Declined => on_port_io_exit_general(regs, ctx, io),
        crate::service::PortForwardStart::Broken => run::LEAVE,
    }
}

/// [`on_port_io_exit`] when the fast way does not apply: `dispatch::handle_port_io`
/// (forwarded the nested way, or unclaimed). The guest's CR2 is loaded from `regs` on
/// entry: the service partition may have run on this CPU meanwhile.
#[inline(never)]
fn on_port_io_exit_general(regs: *mut GuestRegisters, ctx: *const (), io: hv_core::exit::IoInstruction) -> u64 {
    // SAFETY: as in `on_exit`.
    let (vcpu, guest) = unsafe { (&*ctx.cast::<Vcpu>(), &mut *regs) };
    let outcome = dispatch::handle_port_io(vcpu, guest, io);
    resume_after_port_io(vcpu, outcome, regs, ctx)
}

/// The entry after a forwarded IN/OUT ended with `outcome`: [`run::LEAVE`] when the
/// partition stops, else [`run::RESUME`] (CR2 from `regs`: the service partition ran on
/// this CPU), through `prepare_entry` when the vCPU needs attention.
#[inline(always)]
fn resume_after_port_io(vcpu: &'static Vcpu, outcome: Outcome, regs: *mut GuestRegisters, ctx: *const ()) -> u64 {
    if outcome == Outcome::Stop {
        return run::LEAVE;
    }
    if vcpu.attention.load(Ordering::Acquire) == 0 {
        return resume(vcpu, run::RESUME);
    }
    on_entry_attention(regs, ctx)
}

/// The exit hook of a service vCPU that [`on_port_io_exit`] entered in guest vCPU
/// `ctx`'s exit frame: `svc_regs` are the service vCPU's registers. The frame is given
/// back to the guest (its registers, [`on_exit`]) before anything else. The common
/// exit, the `SERVICE_REPLY_WAIT` that answers the guest's slot, is taken inline
/// (`service::take_port_answer`, which makes the guest's VMCS current again); any
/// other goes to [`on_service_exit_general`]. Then the guest's IN or OUT is completed.
extern "C" fn on_service_exit(svc_regs: *mut GuestRegisters, ctx: *const (), frame: *mut run::ExitFrame) -> u64 {
    // SAFETY: `ctx` is the guest's `&'static Vcpu` (the frame's context, unchanged by
    // the switch); only this CPU touches its registers and the service vCPU's
    // (`svc_regs`, saved by the stub), which the stub does not use until this hook
    // returns; `frame` is the exit stub's frame.
    let (vcpu, svc_regs, frame) = unsafe { (&*ctx.cast::<Vcpu>(), &*svc_regs, &mut *frame) };
    let regs = vcpu.regs.get();
    frame.regs = regs;
    frame.on_exit = on_exit;
    // SAFETY: only this CPU touches the guest vCPU's `port_forward`.
    let in_flight = unsafe { &*vcpu.port_forward.get() };
    if let Some(svc) = in_flight.svc {
        crate::virq::left_guest_mode(svc);
    }
    // SAFETY: as above (the guest's registers, not in use by the stub until we return).
    let guest = unsafe { &mut *regs };
    let Some(result) = crate::service::take_port_answer(vcpu, guest.rax, svc_regs, in_flight) else {
        return on_service_exit_general(regs, ctx);
    };
    let outcome = match result {
        Ok(rax) => {
            guest.rax = rax;
            dispatch::skip_instruction()
        }
        Err(outcome) => outcome,
    };
    resume_after_port_io(vcpu, outcome, regs, ctx)
}

/// [`on_service_exit`] for every exit but the common answer: `service::finish_port_forward`
/// takes the reply (running the service vCPU on, the nested way, when this exit was
/// something else) and makes the guest's VMCS current again, and the guest's IN or
/// OUT is completed.
#[inline(never)]
fn on_service_exit_general(regs: *mut GuestRegisters, ctx: *const ()) -> u64 {
    // SAFETY: as in `on_service_exit`: the guest's `&'static Vcpu` and its registers.
    let (vcpu, guest) = unsafe { (&*ctx.cast::<Vcpu>(), &mut *regs) };
    // SAFETY: only this CPU touches the guest vCPU's `port_forward`.
    let in_flight = unsafe { *vcpu.port_forward.get() };
    let outcome = match crate::service::finish_port_forward(vcpu, &in_flight) {
        Ok(completion) => dispatch::complete_port_io(guest, in_flight.io, completion),
        Err(outcome) => outcome,
    };
    resume_after_port_io(vcpu, outcome, regs, ctx)
}

/// [`on_exit`] for a CPUID exit (counted): its own function, see `InlineExit::Cpuid`.
#[inline(never)]
extern "C" fn on_cpuid_exit(regs: *mut GuestRegisters, ctx: *const ()) -> u64 {
    // SAFETY: as in `on_exit`.
    let (vcpu, guest) = unsafe { (&*ctx.cast::<Vcpu>(), &mut *regs) };
    if dispatch::handle_cpuid_exit(vcpu, guest) == Outcome::Stop {
        return run::LEAVE;
    }
    if vcpu.attention.load(Ordering::Acquire) == 0 {
        return resume(vcpu, run::RESUME_KEEP_CR2);
    }
    on_entry_attention(regs, ctx)
}

/// [`on_exit`] for the exits it does not handle inline.
#[inline(never)]
extern "C" fn on_exit_general(regs: *mut GuestRegisters, ctx: *const ()) -> u64 {
    // SAFETY: as in `on_exit`.
    let (vcpu, regs) = unsafe { (&*ctx.cast::<Vcpu>(), &mut *regs) };
    vcpu.launched.store(true, Ordering::Relaxed);
    if dispatch::handle_exit(vcpu, regs) == Outcome::Stop || crate::virq::prepare_entry(vcpu, regs) == Outcome::Stop {
        return run::LEAVE;
    }
    resume(vcpu, run::RESUME)
}

/// [`on_exit`] after an exit handled inline when the next entry needs the full
/// evaluation of `prepare_entry`.
#[inline(never)]
extern "C" fn on_entry_attention(regs: *mut GuestRegisters, ctx: *const ()) -> u64 {
    // SAFETY: as in `on_exit`.
    let (vcpu, regs) = unsafe { (&*ctx.cast::<Vcpu>(), &mut *regs) };
    if crate::virq::prepare_entry(vcpu, regs) == Outcome::Stop {
        return run::LEAVE;
    }
    resume(vcpu, run::RESUME)
}

/// The vCPU left its loop: it reports its exits, the last one out the partition's
/// end, and only then does it stop counting as running (so that "all partitions
/// stopped" follows every report).
fn finish(vcpu: &'static Vcpu) {
    let vm = vcpu.vm;
    // SAFETY: only this physical CPU touches the vCPU's registers; the loop has ended.
    let gprs = unsafe { *vcpu.regs.get() };
    *vcpu.final_registers.lock() = Some(crate::partition::RegisterState {
        gprs,
        rip: vmcs::read(guest::RIP),
        rsp: vmcs::read(guest::RSP),
        rflags: vmcs::read(guest::RFLAGS),
        cr0: vmcs::read(guest::CR0),
        cr3: vmcs::read(guest::CR3),
        cr4: vmcs::read(guest::CR4),
        efer: vmcs::read(guest::IA32_EFER_FULL),
    });
    let finished = vm.finished.fetch_add(1, Ordering::AcqRel) + 1;
    dispatch::report_stop(vcpu, finished == vm.running.load(Ordering::Acquire));
    vm.running.fetch_sub(1, Ordering::AcqRel);
}

/// The VMCS fields (selector, base, limit, access rights) of SS, DS, ES, FS and GS.
const DATA_SEGMENTS: [(u32, u32, u32, u32); 5] = [
    (guest::SS_SELECTOR, guest::SS_BASE, guest::SS_LIMIT, guest::SS_ACCESS_RIGHTS),
    (guest::DS_SELECTOR, guest::DS_BASE, guest::DS_LIMIT, guest::DS_ACCESS_RIGHTS),
    (guest::ES_SELECTOR, guest::ES_BASE, guest::ES_LIMIT, guest::ES_ACCESS_RIGHTS),
    (guest::FS_SELECTOR, guest::FS_BASE, guest::FS_LIMIT, guest::FS_ACCESS_RIGHTS),
    (guest::GS_SELECTOR, guest::GS_BASE, guest::GS_LIMIT, guest::GS_ACCESS_RIGHTS),
];

/// Gives SS, DS, ES, FS and GS one selector, base 0, `limit` and access rights `ar`.
fn write_data_segments(selector: u64, limit: u64, ar: u64) -> Result<(), VmInstructionError> {
    for (sel, base, lim, rights) in DATA_SEGMENTS {
        vmcs::write(sel, selector)?;
        vmcs::write(base, 0)?;
        vmcs::write(lim, limit)?;
        vmcs::write(rights, ar)?;
    }
    Ok(())
}

/// CR0.ET|NE: what a real-mode guest runs with (NE is fixed to 1 in VMX operation; the
/// read shadow shows the reset value, ET only).
const REAL_MODE_CR0: u64 = 0x30;
const REAL_MODE_CR0_SHADOW: u64 = 0x10;
/// Real-mode segment access rights (SDM 25.4.1): present, accessed, read/write data
/// and execute/read code, 16-bit, byte granular; a busy TSS for TR.
const AR_REAL_DATA: u64 = 0x93;
const AR_REAL_CODE: u64 = 0x9b;

/// Puts the current VMCS's guest into real mode at CS = `cs` (base `cs_base`), IP =
/// `ip`, as INIT and SIPI require (the boot stack pointer is kept at 0).
pub fn reset_to_real_mode(cs: u64, cs_base: u64, ip: u64) -> Result<(), VmInstructionError> {
    let controls = CONTROLS.get().ok_or(VmInstructionError(None))?;
    let fixed = FIXED.get().ok_or(VmInstructionError(None))?;
    let boot = crate::partition::BootState { real_mode: true, rip: ip, ..Default::default() };
    let cr4 = apply_fixed_bits(CR4_VMXE, fixed.cr4_fixed0, fixed.cr4_fixed1);
    write_real_mode_state(&boot, controls, fixed.guest_cr0_fixed0(), fixed.cr0_fixed1, cr4)?;
    vmcs::write(guest::CS_SELECTOR, cs)?;
    vmcs::write(guest::CS_BASE, cs_base)?;
    vmcs::write(guest::RIP, ip)?;
    // No single-step trap of the old context survives INIT (`dispatch::single_step_trap`).
    vmcs::write(guest::PENDING_DBG_EXCEPTIONS, 0)?;
    vmcs::write(guest::RFLAGS, 0x2)
}

/// Overrides the 64-bit start state with real mode at `boot.rip` (unrestricted guest,
/// SDM 26.8): CS = rip >> 4 and IP = rip & 0xf, 64 KiB segments, paging and protection
/// off, EFER 0, the IA-32e-mode-guest entry control clear, the IVT at 0.
fn write_real_mode_state(
    boot: &crate::partition::BootState,
    controls: &Controls,
    cr0_fixed0: u64,
    cr0_fixed1: u64,
    cr4: u64,
) -> Result<(), VmInstructionError> {
    let w = vmcs::write;
    let cs = (boot.rip >> 4) & 0xffff;
    w(control::VMENTRY_CONTROLS, u64::from(controls.entry & !vmx_controls::entry::IA32E_MODE_GUEST))?;
    w(guest::CR0, apply_fixed_bits(REAL_MODE_CR0, cr0_fixed0, cr0_fixed1))?;
    w(control::CR0_READ_SHADOW, REAL_MODE_CR0_SHADOW)?;
    w(guest::CR4, cr4 & !GUEST_CR4)?;
    w(control::CR4_READ_SHADOW, 0)?;
    w(guest::CR3, 0)?;
    w(guest::IA32_EFER_FULL, 0)?;
    w(guest::CS_SELECTOR, cs)?;
    w(guest::CS_BASE, cs << 4)?;
    w(guest::CS_LIMIT, 0xffff)?;
    w(guest::CS_ACCESS_RIGHTS, AR_REAL_CODE)?;
    write_data_segments(0, 0xffff, AR_REAL_DATA)?;
    w(guest::TR_LIMIT, 0xffff)?;
    w(guest::GDTR_BASE, 0)?;
    w(guest::GDTR_LIMIT, 0xffff)?;
    w(guest::IDTR_BASE, 0)?;
    w(guest::IDTR_LIMIT, 0x3ff)?;
    w(guest::RIP, boot.rip & 0xf)?;
    w(guest::RSP, boot.rsp)?;
    Ok(())
}

/// CR0.PE|ET|NE: 32-bit protected mode without paging; the shadow shows PE|ET.
const PROTECTED_CR0: u64 = 0x31;
const PROTECTED_CR0_SHADOW: u64 = 0x11;
/// Flat 32-bit code and data (SDM 25.4.1: G and D/B set).
const AR_CODE32: u64 = 0xc09b;

/// Overrides the 64-bit start state with 32-bit flat protected mode, paging off (the
/// GDT at `hv_abi::start::GDT` has the matching descriptors); RIP/RSP stay as set.
fn write_protected_mode_state(
    controls: &Controls,
    cr0_fixed0: u64,
    cr0_fixed1: u64,
    cr4: u64,
) -> Result<(), VmInstructionError> {
    let w = vmcs::write;
    w(control::VMENTRY_CONTROLS, u64::from(controls.entry & !vmx_controls::entry::IA32E_MODE_GUEST))?;
    w(guest::CR0, apply_fixed_bits(PROTECTED_CR0, cr0_fixed0, cr0_fixed1))?;
    w(control::CR0_READ_SHADOW, PROTECTED_CR0_SHADOW)?;
    w(guest::CR4, cr4 & !GUEST_CR4)?;
    w(control::CR4_READ_SHADOW, 0)?;
    w(guest::IA32_EFER_FULL, 0)?;
    w(guest::CS_SELECTOR, u64::from(hv_abi::start::CODE32_SELECTOR))?;
    w(guest::CS_ACCESS_RIGHTS, AR_CODE32)?;
    write_data_segments(u64::from(hv_abi::start::DATA32_SELECTOR), 0xffff_ffff, AR_DATA)?;
    Ok(())
}

pub fn setup(vcpu: &'static Vcpu, caps: &VmxCapabilities) -> Result<(), VmInstructionError> {
    let fail = VmInstructionError(None);
    let controls = CONTROLS.get().ok_or(fail)?;
    let pages = shared().ok_or(fail)?;
    let region = Vmcs::new(caps.revision_id).ok_or(fail)?;
    // The region stays the current VMCS of this CPU for the vCPU's lifetime (its frame
    // is never returned to the allocator).
    region.clear_and_load()?;
    vcpu.vmcs.store(region.phys(), Ordering::Release);
    let w = vmcs::write;
    let cpu = percpu::current();
    let boot = *vcpu.boot.lock();

    let fixed = FIXED.get().ok_or(fail)?;
    let FixedBits { cr0_fixed1, cr4_fixed0, cr4_fixed1, .. } = *fixed;
    let (efer, pat, gs_base) =
        // SAFETY: IA32_EFER, IA32_PAT and IA32_GS_BASE exist on every CPU that has VMX.
        // Reads have no side effects.
        unsafe {
            (
                x86_64::registers::model_specific::Msr::new(0xc000_0080).read(),
                x86_64::registers::model_specific::Msr::new(0x277).read(),
                msr::read(Msr::GsBase),
            )
        };

    // Host state (SDM 25.5): where and how the CPU comes back on a VM exit.
    w(host::CR0, x86_64::registers::control::Cr0::read_raw())?;
    w(host::CR3, paging::root())?;
    w(host::CR4, x86_64::registers::control::Cr4::read_raw())?;
    w(host::CS_SELECTOR, u64::from(gdt::KERNEL_CS))?;
    for field in [host::SS_SELECTOR, host::DS_SELECTOR, host::ES_SELECTOR] {
        w(field, u64::from(gdt::KERNEL_DS))?;
    }
    w(host::FS_SELECTOR, 0)?;
    w(host::GS_SELECTOR, 0)?;
    w(host::TR_SELECTOR, u64::from(gdt::TSS_SELECTOR))?;
    w(host::FS_BASE, 0)?;
    w(host::GS_BASE, gs_base)?;
    w(host::TR_BASE, cpu.tss_base.load(Ordering::Acquire))?;
    w(host::GDTR_BASE, cpu.gdt_base.load(Ordering::Acquire))?;
    w(host::IDTR_BASE, crate::arch::idt::base())?;
    w(host::IA32_SYSENTER_CS, 0)?;
    w(host::IA32_SYSENTER_ESP, 0)?;
    w(host::IA32_SYSENTER_EIP, 0)?;
    w(host::IA32_EFER_FULL, efer)?;
    w(host::IA32_PAT_FULL, pat)?;
    w(host::RIP, run::exit_entry_point())?;

    // Controls (SDM 25.6), computed from the capability MSRs at boot.
    w(control::PINBASED_EXEC_CONTROLS, u64::from(controls.pin))?;
    w(control::PRIMARY_PROCBASED_EXEC_CONTROLS, u64::from(controls.proc))?;
    w(control::SECONDARY_PROCBASED_EXEC_CONTROLS, u64::from(controls.proc2))?;
    w(control::VMEXIT_CONTROLS, u64::from(controls.exit))?;
    w(control::EXCEPTION_BITMAP, 0)?;
    w(control::PAGE_FAULT_ERR_CODE_MASK, 0)?;
    w(control::PAGE_FAULT_ERR_CODE_MATCH, 0)?;
    w(control::CR3_TARGET_COUNT, 0)?;
    w(control::VMEXIT_MSR_STORE_COUNT, 0)?;
    w(control::VMEXIT_MSR_LOAD_COUNT, 0)?;
    w(control::VMENTRY_MSR_LOAD_COUNT, 0)?;
    w(control::VMENTRY_INTERRUPTION_INFO_FIELD, 0)?;
    w(control::IO_BITMAP_A_ADDR_FULL, pages.io_a)?;
    w(control::IO_BITMAP_B_ADDR_FULL, pages.io_b)?;
    w(control::MSR_BITMAPS_ADDR_FULL, pages.msr)?;
    w(control::EPTP_FULL, vcpu.vm.eptp.load(Ordering::Acquire))?;
    if controls.proc2 & vmx_controls::proc2::ENABLE_VPID != 0 {
        w(control::VPID, u64::from(vcpu.vpid))?;
    }
    let cr0_mask = (fixed.guest_cr0_fixed0() | !cr0_fixed1) & 0xffff_ffff;
    let cr4_mask = (cr4_fixed0 | !cr4_fixed1) & 0xffff_ffff;
    w(control::CR0_GUEST_HOST_MASK, cr0_mask)?;
    w(control::CR4_GUEST_HOST_MASK, cr4_mask)?;
    w(guest::LINK_PTR_FULL, u64::MAX)?;
    write_start_state(&boot, controls, fixed)?;

    // SAFETY: only this CPU touches the vCPU's registers; nothing runs the vCPU yet.
    let regs = unsafe { &mut *vcpu.regs.get() };
    load_start_registers(regs, &boot);
    Ok(())
}

/// The general-purpose registers of the start state `boot` (the rest are 0).
fn load_start_registers(regs: &mut GuestRegisters, boot: &crate::partition::BootState) {
    regs.rdi = boot.rdi;
    regs.rsi = boot.rsi;
    regs.rax = boot.rax;
    regs.rbx = boot.rbx;
}

/// After a reset of its partition (`partition::reset_vm`), on the vCPU's own CPU with
/// its VMCS current: the guest state is the start state again (`Vcpu::boot`, as
/// `VCPU_SET_STATE` left it), the other registers are 0, no event is being injected,
/// APIC virtualization is off (the LAPIC is back in xAPIC mode), and the translations
/// this CPU cached for the VM are dropped (INVEPT single-context also drops the
/// combined linear mappings of every VPID, SDM Vol. 3C 29.4.3.1): the guest's page
/// tables were rewritten.
pub fn restart(vcpu: &'static Vcpu, regs: &mut GuestRegisters) -> Result<(), VmInstructionError> {
    let fail = VmInstructionError(None);
    let controls = CONTROLS.get().ok_or(fail)?;
    let fixed = FIXED.get().ok_or(fail)?;
    if vcpu.apicv_active.swap(false, Ordering::Relaxed) {
        set_apicv(false, 0)?;
    }
    let boot = *vcpu.boot.lock();
    write_start_state(&boot, controls, fixed)?;
    vmcs::write(control::VMENTRY_INTERRUPTION_INFO_FIELD, 0)?;
    *regs = GuestRegisters::default();
    load_start_registers(regs, &boot);
    crate::vmx::invept::invalidate(vcpu.vm.eptp.load(Ordering::Acquire)).map_err(|()| fail)?;
    for address in RESET_ZEROED_PASSTHROUGH_MSRS {
        // SAFETY: these architectural MSRs exist on every CPU with long mode (SDM Vol. 4
        // table 2-2); the guest reads and writes them directly (`hv_core::virt_msr`) and
        // the hypervisor does not use them, so zeroing them only changes what this CPU's
        // guest sees.
        unsafe { x86_64::registers::model_specific::Msr::new(address).write(0) };
    }
    reset_xcr0();
    vcpu.lapic_dirty.store(true, Ordering::Release);
    vcpu.request_attention(crate::partition::attention::ALL);
    Ok(())
}

/// CR4.OSXSAVE (SDM Vol. 3A 2.5).
const CR4_OSXSAVE: u64 = 1 << 18;

/// XCR0 back to its value after RESET, x87 only (SDM Vol. 3A 9.1.1, table 9-1): a
/// guest's XSETBV stays loaded on its CPU (`dispatch::handle_xsetbv`), and the rebooted
/// guest must not find its previous boot's XCR0.
fn reset_xcr0() {
    if x86_64::registers::control::Cr4::read_raw() & CR4_OSXSAVE == 0 {
        return;
    }
    // SAFETY: CR4.OSXSAVE is set in the host (checked), so XSETBV is allowed in VMX root
    // operation; XCR0 = 1 (x87 only) is valid on every CPU with XSAVE (SDM Vol. 1
    // 13.3), and the hypervisor itself never uses extended state.
    unsafe { core::arch::asm!("xsetbv", in("ecx") 0u32, in("eax") 1u32, in("edx") 0u32, options(nostack)) };
}

/// The passthrough MSRs that no VMCS area switches (`hv_core::virt_msr`) and that a
/// restarted guest must not inherit from its previous boot: KERNEL_GS_BASE, STAR,
/// LSTAR, CSTAR, FMASK. They are set to 0, so that nothing of the previous boot
/// survives (the SDM, Vol. 3A 9.1.1, leaves their values after RESET undefined).
const RESET_ZEROED_PASSTHROUGH_MSRS: [u32; 5] = [
    hv_core::virt_msr::msr::IA32_KERNEL_GS_BASE,
    hv_core::virt_msr::msr::IA32_STAR,
    hv_core::virt_msr::msr::IA32_LSTAR,
    hv_core::virt_msr::msr::IA32_CSTAR,
    hv_core::virt_msr::msr::IA32_FMASK,
];

/// Writes the guest state of start state `boot` into the current VMCS (SDM 25.4): the
/// 64-bit start state of `hv_abi::start`, or real mode / 32-bit protected mode when
/// `boot` asks for it; the IA-32e-mode-guest entry control and the CR0/CR4 read
/// shadows to match; no pending events, active.
fn write_start_state(
    boot: &crate::partition::BootState,
    controls: &Controls,
    fixed: &FixedBits,
) -> Result<(), VmInstructionError> {
    let w = vmcs::write;
    let FixedBits { cr0_fixed1, cr4_fixed0, cr4_fixed1, .. } = *fixed;
    let guest_cr0_fixed0 = fixed.guest_cr0_fixed0();
    let cr0 = apply_fixed_bits(GUEST_CR0, guest_cr0_fixed0, cr0_fixed1);
    let cr4 = apply_fixed_bits(GUEST_CR4 | CR4_VMXE, cr4_fixed0, cr4_fixed1);
    w(control::VMENTRY_CONTROLS, u64::from(controls.entry | vmx_controls::entry::IA32E_MODE_GUEST))?;
    w(control::CR0_READ_SHADOW, GUEST_CR0)?;
    w(control::CR4_READ_SHADOW, GUEST_CR4)?;
    w(guest::CR0, cr0)?;
    w(guest::CR3, boot.cr3)?;
    w(guest::CR4, cr4)?;
    w(guest::DR7, 0x400)?;
    w(guest::RSP, boot.rsp)?;
    w(guest::RIP, boot.rip)?;
    w(guest::RFLAGS, 0x2)?;
    w(guest::CS_SELECTOR, u64::from(hv_abi::start::CODE_SELECTOR))?;
    w(guest::CS_BASE, 0)?;
    w(guest::CS_LIMIT, 0xffff_ffff)?;
    w(guest::CS_ACCESS_RIGHTS, AR_CODE64)?;
    write_data_segments(u64::from(hv_abi::start::DATA_SELECTOR), 0xffff_ffff, AR_DATA)?;
    w(guest::LDTR_SELECTOR, 0)?;
    w(guest::LDTR_BASE, 0)?;
    w(guest::LDTR_LIMIT, 0)?;
    w(guest::LDTR_ACCESS_RIGHTS, AR_UNUSABLE)?;
    w(guest::TR_SELECTOR, 0)?;
    w(guest::TR_BASE, 0)?;
    w(guest::TR_LIMIT, 0x67)?;
    w(guest::TR_ACCESS_RIGHTS, AR_TSS_BUSY)?;
    w(guest::GDTR_BASE, boot.gdt_base)?;
    w(guest::GDTR_LIMIT, u64::from(boot.gdt_limit))?;
    w(guest::IDTR_BASE, 0)?;
    w(guest::IDTR_LIMIT, 0)?;
    w(guest::IA32_EFER_FULL, GUEST_EFER)?;
    w(guest::IA32_PAT_FULL, DEFAULT_PAT)?;
    w(guest::IA32_DEBUGCTL_FULL, 0)?;
    w(guest::IA32_SYSENTER_CS, 0)?;
    w(guest::IA32_SYSENTER_ESP, 0)?;
    w(guest::IA32_SYSENTER_EIP, 0)?;
    w(guest::ACTIVITY_STATE, 0)?;
    w(guest::INTERRUPTIBILITY_STATE, 0)?;
    w(guest::PENDING_DBG_EXCEPTIONS, 0)?;

    if boot.real_mode {
        write_real_mode_state(boot, controls, guest_cr0_fixed0, cr0_fixed1, cr4)?;
    } else if boot.protected_mode {
        write_protected_mode_state(controls, guest_cr0_fixed0, cr0_fixed1, cr4)?;
    }
    Ok(())
}
