//! Virtual interrupts: the glue between the hardware-free models (`hv_core::vlapic`,
//! `hv_core::vioapic`, `hv_core::event_injection`) and VMX.
//!
//! - Before every VM entry, [`prepare_entry`] runs on the vCPU's own CPU: it applies a
//!   pending INIT or start-up IPI, keeps a halted or waiting vCPU asleep (host `hlt`
//!   with the host timer armed at the guest's next timer deadline), processes expired
//!   guest timers, injects the highest deliverable interrupt or asks for an interrupt
//!   window, and arms the VMX-preemption timer for the guest's next deadline.
//! - The 8259's INTR (emulated by the service partition, level reported with
//!   `GUEST_PIC_INTR`: [`set_pic_intr`]) drives the boot vCPU's LINT0. While it is high
//!   and the LAPIC passes it (`VirtualLapic::passes_pic_intr`: LINT0 unmasked ExtINT,
//!   or the LAPIC disabled), it is a pending maskable interrupt ahead of the LAPIC's
//!   vectors; when the vCPU can take it, an interrupt-acknowledge cycle through the
//!   service partition on the same CPU (`service::interrupt_acknowledge`) gives the
//!   vector, which is injected without touching the LAPIC's IRR/ISR.
//! - Register accesses (x2APIC MSRs, IA32_APIC_BASE, IA32_TSC_DEADLINE, xAPIC MMIO)
//!   go to the model; the effects that leave a LAPIC (IPIs, EOI broadcasts) are routed
//!   by [`apply_effect`].
//! - Delivery into another vCPU takes that vCPU's LAPIC lock briefly, then [`kick`]s
//!   its CPU with a host IPI: the CPU leaves guest mode (external-interrupt exiting) or
//!   its `hlt`, and its next [`prepare_entry`] sees the new state. No wake-up is lost:
//!   the state is set before the kick, and a sleeping CPU checks it with interrupts
//!   off before `sti; hlt`.
//!
//! Nothing here allocates. Only one LAPIC lock is held at a time, so deliveries between
//! vCPUs cannot deadlock.

use core::sync::atomic::Ordering;

use hv_core::apicv;
use hv_core::event_injection::{plan_entry, preemption_timer_value, Event, GuestEventState, Pending};
use hv_core::vioapic::{self, Interrupt};
use hv_core::vlapic::{ApicEffect, ApicMode, IpiDeliveryMode, IpiDestination, TriggerMode};
use x86::vmx::vmcs::{control, guest};

use crate::arch::{idt, lapic, percpu, tsc};
use crate::dispatch::Outcome;
use crate::mm::frames;
use crate::partition::{attention, MpState, Vcpu, Vm, NO_SIPI};
use crate::vmx::run::GuestRegisters;
use crate::vmx::vmcs;

/// RFLAGS.IF (SDM 3.4.3).
const RFLAGS_IF: u64 = 1 << 9;
/// VM-entry interruption-information field (SDM 25.8.3, table 25-17): valid bit and
/// the interruption types used here.
const ENTRY_VALID: u32 = 1 << 31;
const TYPE_EXTERNAL: u32 = 0 << 8;
const TYPE_NMI: u32 = 2 << 8;
const NMI_VECTOR: u32 = 2;

/// Kicks the CPU that runs `vcpu` (unless it is this CPU): a host IPI that makes it
/// leave guest mode or `hlt` and look at the vCPU's state again.
pub fn kick(vcpu: &Vcpu) {
    if vcpu.cpu == percpu::index() {
        return;
    }
    if let Some(apic_id) = percpu::apic_id_of(vcpu.cpu) {
        lapic::send_ipi(
            hv_core::apic::DeliveryMode::Fixed,
            idt::WAKE_VECTOR,
            hv_core::apic::Destination::Physical(apic_id),
        );
    }
}

/// Runs before each VM entry on the vCPU's own CPU. `Stop` when the partition stops.
///
/// The common entry has nothing to do: no one touched the vCPU's state since the last
/// evaluation ([`Vcpu::attention`] is 0), which also means that entry armed no window
/// and no guest timer and left no NMI pending. It costs one load; everything else goes
/// through [`evaluate`].
#[inline(always)]
pub fn prepare_entry(vcpu: &'static Vcpu, regs: &mut GuestRegisters) -> Outcome {
    if vcpu.attention.load(Ordering::Acquire) == 0 {
        return Outcome::Continue;
    }
    evaluate(vcpu, regs, NO_SLEEP_DEADLINE)
}

/// No deadline for [`prepare_entry_by`]'s sleep.
const NO_SLEEP_DEADLINE: u64 = u64::MAX;

/// [`prepare_entry`] for a vCPU that owes work by TSC `deadline` (a service vCPU
/// serving a request or a timer wake-up): a halted vCPU, or one waiting for a start-up
/// IPI (after an INIT), sleeps no later than `deadline`, and `Stop` comes back once it
/// has passed while the vCPU still sleeps, even though the partition is not stopping
/// (the caller tells the two apart and treats the second as a missed deadline).
#[inline(always)]
pub fn prepare_entry_by(vcpu: &'static Vcpu, regs: &mut GuestRegisters, deadline: u64) -> Outcome {
    if vcpu.attention.load(Ordering::Acquire) == 0 {
        return Outcome::Continue;
    }
    evaluate(vcpu, regs, deadline)
}

/// The full evaluation before an entry (see [`prepare_entry`] and [`prepare_entry_by`]:
/// `sleep_deadline` bounds the sleep of a halted or waiting vCPU).
#[inline(never)]
fn evaluate(vcpu: &'static Vcpu, regs: &mut GuestRegisters, sleep_deadline: u64) -> Outcome {
    // Cleared before anything is looked at: a change made from now on sets a bit again
    // and is seen by the next entry at the latest (its kick makes that one come soon).
    vcpu.attention.swap(0, Ordering::AcqRel);
    // Anything but a runnable vCPU going straight back in needs the full evaluation.
    let mut eventful = false;
    if vcpu.init_pending.swap(false, Ordering::AcqRel) {
        apply_init(vcpu);
        eventful = true;
    }
    loop {
        if vcpu.vm.stop_requested() {
            return Outcome::Stop;
        }
        if vcpu.reset_held.load(Ordering::Acquire) {
            // A reset of the partition (`partition::reset_vm`): out of guest mode until
            // the service partition has rebuilt it and starts the vCPU again.
            sleep_while_held(vcpu);
            continue;
        }
        if vcpu.restart_pending.swap(false, Ordering::AcqRel) {
            if let Err(outcome) = restart(vcpu, regs) {
                return outcome;
            }
            eventful = true;
            continue;
        }
        if flush_ept_if_requested(vcpu) == Outcome::Stop {
            return Outcome::Stop;
        }
        match vcpu.mp_state() {
            MpState::Runnable => break,
            MpState::WaitForSipi => {
                eventful = true;
                let vector = vcpu.sipi_vector.swap(NO_SIPI, Ordering::AcqRel);
                if vector != NO_SIPI {
                    if let Err(outcome) = start_at_sipi(vcpu, regs, vector as u8) {
                        return outcome;
                    }
                    continue;
                }
            }
            MpState::Halted => {
                eventful = true;
                // The service partition's device timers may raise the interrupt that
                // ends the halt.
                crate::service::run_timers_if_due(vcpu);
                if reset_begun(vcpu) {
                    continue;
                }
                if wakes_from_halt(vcpu) {
                    vcpu.set_mp_state(MpState::Runnable);
                    continue;
                }
                if let Some(outcome) = halted_forever(vcpu) {
                    return outcome;
                }
            }
        }
        if tsc::now() >= sleep_deadline {
            // Owes work it can no longer do in time; the caller decides what follows.
            return Outcome::Stop;
        }
        sleep_until_kicked(vcpu, sleep_deadline);
        if vcpu.init_pending.swap(false, Ordering::AcqRel) {
            apply_init(vcpu);
        }
    }
    // The common exit: nothing touched the LAPIC, no event is pending, and the last
    // entry armed no window and no guest timer (only the kick backstop, which the
    // VMX-preemption timer reloads from the VMCS on every entry). Nothing to do.
    let dirty = vcpu.lapic_dirty.swap(false, Ordering::AcqRel);
    let quiet = !eventful
        && !dirty
        && !vcpu.nmi_pending.load(Ordering::Acquire)
        && !pic_intr_high(vcpu)
        && vcpu.entry_controls_set.load(Ordering::Relaxed) == ENTRY_BACKSTOP_ONLY;
    let extint_waits = !quiet && inject_and_arm(vcpu);
    // What the next entry must look at again even if no one changes anything: an
    // armed window or guest timer, an NMI still waiting for its window, the 8259's
    // INTR still high on a LINT0 that passes it (after an INTA the PIC may still
    // request: a higher-priority IRQ, or the next one).
    if vcpu.entry_controls_set.load(Ordering::Relaxed) != ENTRY_BACKSTOP_ONLY
        || vcpu.nmi_pending.load(Ordering::Acquire)
        || extint_waits
    {
        vcpu.request_attention(attention::REARM);
    }
    Outcome::Continue
}

/// Executes the INVEPT that `partition::protect_range` asked this vCPU's CPU for, if it
/// did (also while the vCPU waits on a deferred request, so that the caller is not held
/// up). `Stop` when INVEPT failed (the partition is stopped). The request is taken
/// (swapped to false) before the INVEPT: one made after the take stays set and gets
/// an INVEPT of its own, so no request is marked done by an INVEPT older than it.
pub fn flush_ept_if_requested(vcpu: &'static Vcpu) -> Outcome {
    if vcpu.ept_flush_pending.load(Ordering::Acquire) {
        return flush_ept_now(vcpu);
    }
    Outcome::Continue
}

/// [`flush_ept_if_requested`] when a request is there.
#[cold]
#[inline(never)]
fn flush_ept_now(vcpu: &'static Vcpu) -> Outcome {
    if vcpu.ept_flush_pending.swap(false, Ordering::SeqCst)
        && crate::vmx::invept::invalidate(vcpu.vm.eptp.load(Ordering::Acquire)).is_err()
    {
        log::error!("partition {}: vcpu {}: INVEPT failed; stopping the partition", vcpu.vm.name, vcpu.id);
        vcpu.vm.stop(u64::MAX);
        return Outcome::Stop;
    }
    Outcome::Continue
}

/// Marks `vcpu` as in guest mode for the entry that follows (its CPU, interrupts off,
/// after everything else before the entry), then carries out an INVEPT request that
/// came meanwhile (`partition::flush_ept` reads `in_guest` after it sets the request,
/// so a request this look misses waits for the vCPU's next exit). `false` when INVEPT
/// failed (the partition is stopped). The caller clears `in_guest` after the exit.
#[inline(always)]
pub fn enter_guest_mode(vcpu: &'static Vcpu) -> bool {
    vcpu.in_guest.store(true, Ordering::SeqCst);
    if vcpu.ept_flush_pending.load(Ordering::SeqCst) {
        return flush_before_entry(vcpu);
    }
    true
}

/// [`enter_guest_mode`] found an INVEPT request.
#[cold]
#[inline(never)]
fn flush_before_entry(vcpu: &'static Vcpu) -> bool {
    if flush_ept_now(vcpu) == Outcome::Stop {
        vcpu.in_guest.store(false, Ordering::Release);
        return false;
    }
    true
}

/// `vcpu` left guest mode (after its exit; see [`enter_guest_mode`]).
#[inline(always)]
pub fn left_guest_mode(vcpu: &Vcpu) {
    vcpu.in_guest.store(false, Ordering::Release);
}

/// Whether a reset of the partition began (a device timer run on this CPU may have
/// started one): the vCPU's state is about to be replaced.
pub fn reset_begun(vcpu: &Vcpu) -> bool {
    vcpu.reset_held.load(Ordering::Acquire) || vcpu.restart_pending.load(Ordering::Acquire)
}

/// A vCPU held by a reset (`partition::reset_vm`): tells the resetting CPU that it is
/// out of guest mode, runs the service partition's device timers of this CPU when due
/// (the rebuild of the partition may take a while, and other guests' devices keep
/// time) and sleeps until a kick (`start_vcpu` releases it with one) or the service
/// partition's next timer. Called with interrupts off, like [`sleep_until_kicked`];
/// the guest's own timers are not armed: its LAPIC is being reset.
fn sleep_while_held(vcpu: &'static Vcpu) {
    vcpu.reset_parked.store(true, Ordering::Release);
    crate::service::run_timers_if_due(vcpu);
    if !vcpu.reset_held.load(Ordering::Acquire) || vcpu.vm.stop_requested() {
        return;
    }
    lapic::arm_timer(crate::service::wake_deadline(vcpu.cpu));
    x86_64::instructions::interrupts::enable_and_hlt();
    x86_64::instructions::interrupts::disable();
    lapic::arm_timer(None);
}

/// After a reset: the vCPU starts again from the state the service partition gave it
/// (`VCPU_SET_STATE`), its MP state included (an AP waits for SIPI again).
fn restart(vcpu: &'static Vcpu, regs: &mut GuestRegisters) -> Result<(), Outcome> {
    if crate::vcpu::restart(vcpu, regs).is_err() {
        log::error!("partition {}: vcpu {}: its start state could not be loaded again", vcpu.vm.name, vcpu.id);
        vcpu.vm.stop(u64::MAX);
        return Err(Outcome::Stop);
    }
    log::debug!("partition {}: vcpu {} restarted after a reset", vcpu.vm.name, vcpu.id);
    Ok(())
}

/// Whether a halted vCPU resumes: an NMI or INIT, or an interrupt it can take now
/// (RFLAGS.IF set; HLT resumes only for unmasked interrupts, SDM Vol. 2A HLT).
fn wakes_from_halt(vcpu: &'static Vcpu) -> bool {
    if vcpu.nmi_pending.load(Ordering::Acquire) || vcpu.init_pending.load(Ordering::Acquire) {
        return true;
    }
    let interrupts_enabled = vmcs::read(guest::RFLAGS) & RFLAGS_IF != 0;
    let mut lapic = vcpu.lapic();
    lapic.on_timer(tsc::now());
    if interrupts_enabled && pic_intr_high(vcpu) && lapic.passes_pic_intr() {
        return true;
    }
    if !vcpu.apicv_active.load(Ordering::Relaxed) {
        return interrupts_enabled && lapic.highest_pending().is_some();
    }
    // Under APIC virtualization the priority state is in the virtual-APIC page.
    let page = apic_page(vcpu);
    let mut pending = apicv::read_bits(page, apicv::page::IRR);
    for (word, new) in pending.iter_mut().zip(lapic.irr()) {
        *word |= new;
    }
    let svi = (vmcs::read(guest::INTERRUPT_STATUS) >> 8) as u8;
    let ppr = hv_core::vlapic::processor_priority(page[apicv::page::TPR / 4] as u8, svi);
    interrupts_enabled && apicv::deliverable(apicv::highest(&pending), ppr)
}

/// The vCPU's virtual-APIC page.
#[allow(clippy::mut_from_ref, reason = "the page belongs to the vCPU, which only its own CPU touches (see SAFETY)")]
fn apic_page(vcpu: &'static Vcpu) -> &'static mut [u32; 1024] {
    // SAFETY: `apic_page` is a frame allocated for this vCPU alone (non-zero whenever
    // APIC virtualization is active, which is the only time this is called), direct-
    // mapped. It is touched only on the vCPU's own CPU: by the CPU while the guest runs,
    // and by the hypervisor between exit and entry, never both at once; callers do not
    // keep the reference across an entry.
    unsafe { &mut *frames::phys_to_virt(vcpu.apic_page).cast::<[u32; 1024]>() }
}

/// Writes the model's registers that the CPU reads from the virtual-APIC page (after
/// every change the model made).
pub fn mirror_to_page(vcpu: &'static Vcpu) {
    if !vcpu.apicv_active.load(Ordering::Relaxed) {
        return;
    }
    let page = apic_page(vcpu);
    let lapic = vcpu.lapic();
    for (offset, value) in lapic.page_mirror() {
        page[offset / 4] = value;
    }
    apicv::write_bits(page, apicv::page::TMR, &lapic.tmr());
}

/// The vCPU's LAPIC changed mode (IA32_APIC_BASE): APIC virtualization follows x2APIC
/// mode when the machine has it.
pub fn apic_mode_changed(vcpu: &'static Vcpu) {
    let x2apic = vcpu.lapic().mode() == ApicMode::X2Apic;
    let active = vcpu.apicv_active.load(Ordering::Relaxed);
    if x2apic && !active && vcpu.apic_page != 0 {
        activate_apicv(vcpu);
    } else if !x2apic && active {
        vcpu.apicv_active.store(false, Ordering::Relaxed);
        if crate::vcpu::set_apicv(false, 0).is_err() {
            log::error!("partition {}: vcpu {}: APIC virtualization could not be turned off", vcpu.vm.name, vcpu.id);
            vcpu.vm.stop(u64::MAX);
        }
    }
}

/// Hands the interrupt state to the CPU: pending and in-service vectors and the TPR go
/// into the virtual-APIC page, RVI/SVI into the guest interrupt status (SDM 30.1, 30.2).
fn activate_apicv(vcpu: &'static Vcpu) {
    let page = apic_page(vcpu);
    *page = [0; 1024];
    let (irr, isr, tpr) = vcpu.lapic().hand_over_priority_state();
    apicv::write_bits(page, apicv::page::IRR, &irr);
    apicv::write_bits(page, apicv::page::ISR, &isr);
    page[apicv::page::TPR / 4] = u32::from(tpr);
    let status = u64::from(apicv::highest(&irr)) | u64::from(apicv::highest(&isr)) << 8;
    if crate::vcpu::set_apicv(true, vcpu.apic_page).is_err() || vmcs::write(guest::INTERRUPT_STATUS, status).is_err() {
        log::error!("partition {}: vcpu {}: APIC virtualization could not be turned on", vcpu.vm.name, vcpu.id);
        vcpu.vm.stop(u64::MAX);
        return;
    }
    vcpu.apicv_active.store(true, Ordering::Relaxed);
    mirror_to_page(vcpu);
    log::info!(
        "partition {}: vcpu {}: x2APIC mode with APIC virtualization (virtual-interrupt delivery)",
        vcpu.vm.name,
        vcpu.id
    );
}

/// INIT while APIC virtualization is active: the CPU-owned state is reset too.
fn reset_apicv_page(vcpu: &'static Vcpu) {
    if vcpu.apicv_active.load(Ordering::Relaxed) {
        *apic_page(vcpu) = [0; 1024];
        let _ = vmcs::write(guest::INTERRUPT_STATUS, 0);
        mirror_to_page(vcpu);
    }
}

/// Before entry under APIC virtualization: newly accepted interrupts move from the
/// model into VIRR and RVI, level-triggered vectors into the EOI-exit bitmap (their EOI
/// must reach the IOAPIC); the CPU delivers them itself. Returns the timer deadline to
/// arm (none while the timer's vector still waits in VIRR).
fn sync_apicv(vcpu: &'static Vcpu, lapic: &mut hv_core::vlapic::VirtualLapic) -> Option<u64> {
    let page = apic_page(vcpu);
    let new = lapic.take_irr();
    if new.iter().any(|&w| w != 0) {
        let mut virr = apicv::read_bits(page, apicv::page::IRR);
        for (word, bits) in virr.iter_mut().zip(new) {
            *word |= bits;
        }
        apicv::write_bits(page, apicv::page::IRR, &virr);
        let tmr = lapic.tmr();
        apicv::write_bits(page, apicv::page::TMR, &tmr);
        let eoi_exit =
            [control::EOI_EXIT0_FULL, control::EOI_EXIT1_FULL, control::EOI_EXIT2_FULL, control::EOI_EXIT3_FULL];
        for (i, field) in eoi_exit.into_iter().enumerate() {
            let _ = vmcs::write(field, u64::from(tmr[2 * i]) | u64::from(tmr[2 * i + 1]) << 32);
        }
        let status = vmcs::read(guest::INTERRUPT_STATUS);
        let rvi = u64::from(apicv::highest(&virr)).max(status & 0xff);
        let _ = vmcs::write(guest::INTERRUPT_STATUS, (status & !0xff) | rvi);
    }
    let timer_vector = lapic.lvt(hv_core::vlapic::Lvt::Timer) as u8;
    let virr = apicv::read_bits(page, apicv::page::IRR);
    let timer_waits = hv_core::vlapic::bit_test(&virr, timer_vector);
    let deadline = lapic.next_deadline();
    if timer_waits {
        // The CPU delivers the waiting vector and the guest may EOI it without an exit,
        // so the timer must stay armed; but an expiry now would only coalesce, and a
        // deadline already past would exit before the guest runs an instruction. The
        // next check comes no sooner than `APICV_TIMER_MIN_GAP_US` from now.
        let earliest = tsc::now().saturating_add(tsc::hz() / 1_000_000 * APICV_TIMER_MIN_GAP_US);
        deadline.map(|d| d.max(earliest))
    } else {
        deadline
    }
}

/// See `sync_apicv`: the shortest time between two timer checks while the timer's
/// vector waits in VIRR.
const APICV_TIMER_MIN_GAP_US: u64 = 10;

/// An EOI-induced exit (SDM 30.1.4): the guest ended a level-triggered interrupt, which
/// the IOAPIC must hear about.
pub fn virtualized_eoi(vcpu: &'static Vcpu, vector: u8) {
    let level = hv_core::vlapic::bit_test(&vcpu.lapic().tmr(), vector);
    apply_effect(vcpu, ApicEffect::Eoi { vector, level });
}

/// A vCPU halted with interrupts off in a partition with no other vCPU can never be
/// woken (nothing sends it an NMI or INIT): the partition ends with a clear line.
fn halted_forever(vcpu: &'static Vcpu) -> Option<Outcome> {
    let interrupts_enabled = vmcs::read(guest::RFLAGS) & RFLAGS_IF != 0;
    if interrupts_enabled || vcpu.vm.vcpu_count.load(Ordering::Acquire) > 1 {
        return None;
    }
    log::warn!(
        "partition {}: vcpu {} halted with interrupts disabled and nothing can wake it; stopping the partition",
        vcpu.vm.name,
        vcpu.id
    );
    vcpu.vm.stop(0);
    Some(Outcome::Stop)
}

/// Sleeps in `hlt` until a kick or the host timer, armed at the guest's next timer
/// deadline (or the service partition's wake-up on this CPU, or `sleep_deadline` when
/// earlier). Called with interrupts off; `sti; hlt` cannot miss a kick that arrives
/// after the caller's last check, because the interrupt stays pending until then.
fn sleep_until_kicked(vcpu: &'static Vcpu, sleep_deadline: u64) {
    let guest_deadline = vcpu.lapic().next_deadline();
    // The service partition's vCPU on this CPU runs its device timers from here too.
    let wake = crate::service::wake_deadline(vcpu.cpu);
    let own = Some(sleep_deadline).filter(|&t| t != NO_SLEEP_DEADLINE);
    let deadline = [guest_deadline, wake, own].into_iter().flatten().min();
    sleep_until(deadline);
}

/// Sleeps in `hlt` until a kick or the host timer, armed at TSC `deadline` (if any).
/// Called with interrupts off, after the caller's last look at what it waits for: a
/// kick sent after that look stays pending and ends the `hlt` at once.
pub fn sleep_until(deadline: Option<u64>) {
    lapic::arm_timer(deadline);
    x86_64::instructions::interrupts::enable_and_hlt();
    x86_64::instructions::interrupts::disable();
    lapic::arm_timer(None);
}

/// INIT (SDM 11.4.7.3 and 9.4): the LAPIC is reset (its ID and base kept), pending
/// events are dropped and the vCPU waits for a start-up IPI.
fn apply_init(vcpu: &'static Vcpu) {
    vcpu.lapic().init_reset();
    reset_apicv_page(vcpu);
    vcpu.nmi_pending.store(false, Ordering::Release);
    vcpu.sipi_vector.store(NO_SIPI, Ordering::Release);
    vcpu.set_mp_state(MpState::WaitForSipi);
}

/// A start-up IPI with `vector`: real mode at CS = vector << 8, IP = 0 (SDM 9.4.4).
fn start_at_sipi(vcpu: &'static Vcpu, regs: &mut GuestRegisters, vector: u8) -> Result<(), Outcome> {
    *regs = GuestRegisters::default();
    let vector = u64::from(vector);
    if crate::vcpu::reset_to_real_mode(vector << 8, vector << 12, 0).is_err()
        || vmcs::write(control::VMENTRY_INTERRUPTION_INFO_FIELD, 0).is_err()
        || vmcs::write(guest::INTERRUPTIBILITY_STATE, 0).is_err()
    {
        log::error!("partition {}: vcpu {}: start-up IPI could not be applied", vcpu.vm.name, vcpu.id);
        vcpu.vm.stop(u64::MAX);
        return Err(Outcome::Stop);
    }
    log::debug!("partition {}: vcpu {} started at {:#x}", vcpu.vm.name, vcpu.id, vector << 12);
    vcpu.set_mp_state(MpState::Runnable);
    Ok(())
}

/// Whether `vcpu` is its VM's boot vCPU and the VM's 8259 INTR (wired to its LINT0) is
/// high.
#[inline(always)]
fn pic_intr_high(vcpu: &Vcpu) -> bool {
    vcpu.id == 0 && vcpu.vm.pic_intr.load(Ordering::Acquire)
}

/// The service partition reports the level of `vm`'s 8259 INTR output
/// (`GUEST_PIC_INTR`). A change makes the boot vCPU evaluate it before its next entry;
/// a rise also kicks it (out of guest mode or its HLT sleep) when it runs on another CPU.
pub fn set_pic_intr(vm: &'static Vm, high: bool) {
    if vm.pic_intr.swap(high, Ordering::AcqRel) == high {
        return;
    }
    if let Some(boot) = vm.boot_vcpu() {
        boot.request_attention(attention::PIC_INTR);
        if high {
            kick(boot);
        }
    }
}

/// Injects what can be injected now, asks for a window for the rest and arms the timer
/// for the guest's next deadline. Returns whether the 8259's INTR is high on a LINT0
/// that passes it (the next entry must look at it again).
fn inject_and_arm(vcpu: &'static Vcpu) -> bool {
    let now = tsc::now();
    let nmi = vcpu.nmi_pending.load(Ordering::Acquire);
    let mut window = crate::vcpu::Windows::default();
    let mut acknowledge_pic = false;
    let extint;
    let deadline = {
        let mut lapic = vcpu.lapic_state.lock();
        lapic.on_timer(now);
        let apicv = vcpu.apicv_active.load(Ordering::Relaxed);
        // Under APIC virtualization the CPU delivers maskable interrupts itself.
        let apicv_deadline = apicv.then(|| sync_apicv(vcpu, &mut lapic));
        let interrupt = if apicv { None } else { lapic.highest_pending() };
        // LINT0 in virtual-wire mode: ExtINT bypasses the LAPIC's IRR and priority, so
        // it is offered under APIC virtualization too (event injection goes before
        // virtual-interrupt delivery, SDM 27.6 and 30.2.1).
        extint = pic_intr_high(vcpu) && lapic.passes_pic_intr();
        if interrupt.is_some() || nmi || extint {
            let state = GuestEventState {
                interrupts_enabled: vmcs::read(guest::RFLAGS) & RFLAGS_IF != 0,
                interruptibility: vmcs::read(guest::INTERRUPTIBILITY_STATE) as u32,
                // A single-step trap left pending by a completed instruction
                // (`dispatch::single_step_trap`) counts as a queued event: an injection
                // would discard it, and it goes first (SDM Vol. 3C "Delivery of
                // Pending Debug Exceptions after VM Entry").
                event_queued: vmcs::read(control::VMENTRY_INTERRUPTION_INFO_FIELD) as u32 & ENTRY_VALID != 0
                    || vmcs::read(guest::PENDING_DBG_EXCEPTIONS) & crate::dispatch::PENDING_DEBUG_BS != 0,
            };
            let pending = Pending { nmi, extint, interrupt };
            let plan = plan_entry(state, pending, crate::vcpu::nmi_window_supported());
            match plan.inject {
                Some(Event::External(vector)) => {
                    lapic.acknowledge(vector);
                    let _ = vmcs::write(
                        control::VMENTRY_INTERRUPTION_INFO_FIELD,
                        u64::from(ENTRY_VALID | TYPE_EXTERNAL | u32::from(vector)),
                    );
                }
                Some(Event::Nmi) => {
                    vcpu.nmi_pending.store(false, Ordering::Release);
                    let _ = vmcs::write(
                        control::VMENTRY_INTERRUPTION_INFO_FIELD,
                        u64::from(ENTRY_VALID | TYPE_NMI | NMI_VECTOR),
                    );
                }
                // The INTA cycle runs the service partition: not under the LAPIC lock.
                Some(Event::ExtInt) => acknowledge_pic = true,
                None => {}
            }
            window = crate::vcpu::Windows { interrupt: plan.interrupt_window, nmi: plan.nmi_window };
        }
        match apicv_deadline {
            Some(deadline) => deadline,
            None => lapic.next_deadline(),
        }
    };
    if acknowledge_pic {
        inject_extint(vcpu);
    }
    let mut wanted = 0;
    if window.interrupt || window.nmi {
        wanted |= ENTRY_WINDOWS;
    }
    let previous = vcpu.entry_controls_set.load(Ordering::Relaxed);
    // The window controls are touched only when a window is wanted or was set.
    if (previous | wanted) & ENTRY_WINDOWS != 0 {
        crate::vcpu::set_windows(window);
    }
    match crate::vcpu::preemption_timer_rate() {
        Some(rate) => {
            // The VMX-preemption timer always runs: at the guest timer's deadline, and
            // at the latest `KICK_BACKSTOP_US` from now. The backstop bounds how long a
            // kick (a stop, an INVEPT request, an NMI or INIT) can go unnoticed when
            // the external-interrupt exit does not come: Bochs 2.7 takes it only while
            // the guest has RFLAGS.IF set (the SDM has it exit regardless of IF).
            let backstop = now.saturating_add(tsc::hz() / 1_000_000 * KICK_BACKSTOP_US);
            let due = deadline.map_or(backstop, |d| d.min(backstop));
            crate::vcpu::arm_preemption_timer(preemption_timer_value(now, due, rate), previous & ENTRY_TIMER != 0);
            wanted |= ENTRY_TIMER;
            if deadline.is_none() {
                wanted |= ENTRY_BACKSTOP;
            }
        }
        // Without the preemption timer the host timer interrupts the guest instead.
        None => {
            if deadline.is_some() || previous & ENTRY_TIMER != 0 {
                lapic::arm_timer(deadline);
            }
            if deadline.is_some() {
                wanted |= ENTRY_TIMER;
            }
        }
    }
    vcpu.entry_controls_set.store(wanted, Ordering::Relaxed);
    extint
}

/// The boot vCPU takes the 8259's INTR now (the plan allowed a maskable interrupt):
/// an INTA cycle through the service partition gives the vector, injected as an
/// external interrupt that the LAPIC does not track (no IRR/ISR bit, no LAPIC EOI; the
/// guest ends it at the 8259). The service partition reports the PIC's new INTR level
/// during the cycle. Without a vector (the service partition's reply failed validation
/// or it has none, logged by `interrupt_acknowledge`), nothing is injected and the line
/// counts as low until the service partition reports it again, so that a misbehaving
/// service partition cannot make every entry try again.
fn inject_extint(vcpu: &'static Vcpu) {
    match crate::service::interrupt_acknowledge(vcpu) {
        Some(vector) => {
            let _ = vmcs::write(
                control::VMENTRY_INTERRUPTION_INFO_FIELD,
                u64::from(ENTRY_VALID | TYPE_EXTERNAL | u32::from(vector)),
            );
        }
        None => vcpu.vm.pic_intr.store(false, Ordering::Release),
    }
}

/// The longest a running vCPU goes without an exit (see `inject_and_arm`).
const KICK_BACKSTOP_US: u64 = 1000;

/// `Vcpu::entry_controls_set` bits: an event window or the guest timer is armed, or
/// only the kick backstop runs (the preemption-timer value is the backstop's).
const ENTRY_WINDOWS: u8 = 1 << 0;
const ENTRY_TIMER: u8 = 1 << 1;
const ENTRY_BACKSTOP: u8 = 1 << 2;
/// The state in which an entry has nothing to re-arm.
const ENTRY_BACKSTOP_ONLY: u8 = ENTRY_TIMER | ENTRY_BACKSTOP;

/// HLT: the vCPU sleeps from its next entry on until it can be woken.
pub fn halt(vcpu: &'static Vcpu) {
    vcpu.set_mp_state(MpState::Halted);
}

/// Routes what a LAPIC register write asks for: IPIs to their targets, a level EOI to
/// the IOAPIC.
pub fn apply_effect(vcpu: &'static Vcpu, effect: ApicEffect) {
    match effect {
        ApicEffect::None | ApicEffect::TimerChanged => {}
        ApicEffect::Eoi { vector, level } => {
            if level {
                let redeliver = vcpu.vm.ioapic.lock().eoi(vector);
                for interrupt in redeliver.into_iter().flatten() {
                    deliver_ioapic_message(vcpu.vm, interrupt);
                }
            }
        }
        ApicEffect::SendIpi { mode, vector, dest, level, trigger } => {
            // INIT level de-assert (level 0, level-triggered) only synchronises arbitration
            // IDs on old processors (SDM 11.6.1): nothing to do.
            if mode == IpiDeliveryMode::Init && !level && trigger == TriggerMode::Level {
                return;
            }
            deliver(vcpu.vm, Some(vcpu.id), mode, vector, dest, trigger == TriggerMode::Level);
        }
    }
}

/// Delivers an interrupt message to the vCPUs of `vm` that `dest` selects. `sender` is
/// the sending vCPU (for the shorthands), `None` for the IOAPIC.
fn deliver(vm: &'static Vm, sender: Option<u32>, mode: IpiDeliveryMode, vector: u8, dest: IpiDestination, level: bool) {
    let is_target = |v: &Vcpu| v.lapic().is_target(dest, sender == Some(v.id));
    match mode {
        IpiDeliveryMode::LowestPriority => {
            // Arbitration by processor priority (SDM 11.6.2.4): the lowest PPR wins,
            // the lowest APIC ID breaks ties.
            let winner = vm.vcpus().filter(|v| is_target(v)).min_by_key(|v| (v.lapic().ppr(), v.id));
            if let Some(target) = winner {
                target.lapic().accept(vector, level);
                kick(target);
            }
        }
        IpiDeliveryMode::Fixed => {
            for target in vm.vcpus().filter(|v| is_target(v)) {
                target.lapic().accept(vector, level);
                kick(target);
            }
        }
        IpiDeliveryMode::Nmi => {
            for target in vm.vcpus().filter(|v| is_target(v)) {
                target.nmi_pending.store(true, Ordering::Release);
                target.request_attention(attention::NMI);
                kick(target);
            }
        }
        IpiDeliveryMode::Init => {
            for target in vm.vcpus().filter(|v| is_target(v)) {
                target.init_pending.store(true, Ordering::Release);
                target.request_attention(attention::INIT);
                kick(target);
            }
        }
        IpiDeliveryMode::StartUp => {
            // A SIPI reaches only a vCPU that waits for one; others ignore it (SDM 9.4.4:
            // a second SIPI after a successful start is ignored).
            for target in vm.vcpus().filter(|v| is_target(v)) {
                if target.mp_state() == MpState::WaitForSipi || target.init_pending.load(Ordering::Acquire) {
                    target.sipi_vector.store(u32::from(vector), Ordering::Release);
                    target.request_attention(attention::SIPI);
                    kick(target);
                }
            }
        }
        // No SMM in guests.
        IpiDeliveryMode::Smi => {}
    }
}

/// Delivers an IOAPIC redirection message (SDM 11.6.2 destinations; the IOAPIC has
/// no shorthands).
fn deliver_ioapic_message(vm: &'static Vm, interrupt: Interrupt) {
    let dest = match interrupt.dest_mode {
        vioapic::DestMode::Physical => IpiDestination::Physical(u32::from(interrupt.destination)),
        vioapic::DestMode::Logical => IpiDestination::Logical(u32::from(interrupt.destination)),
    };
    let mode = match interrupt.delivery_mode {
        vioapic::DeliveryMode::Fixed => IpiDeliveryMode::Fixed,
        vioapic::DeliveryMode::LowestPriority => IpiDeliveryMode::LowestPriority,
        vioapic::DeliveryMode::Nmi => IpiDeliveryMode::Nmi,
        vioapic::DeliveryMode::Init => IpiDeliveryMode::Init,
        vioapic::DeliveryMode::Smi => IpiDeliveryMode::Smi,
        // The 8259 reaches the boot vCPU through LINT0 ([`set_pic_intr`]); I/O APIC
        // input 0, where a PC wires it for ExtINT redirection, is not connected to it
        // (the MADT routes ISA IRQ 0 to GSI 2), so an ExtINT redirection sends nothing.
        vioapic::DeliveryMode::ExtInt => return,
    };
    deliver(vm, None, mode, interrupt.vector, dest, interrupt.level_triggered);
}

/// Sets the level of `pin` of `vm`'s IOAPIC and delivers what results.
pub fn set_irq_line(vm: &'static Vm, pin: u32, high: bool) -> Result<(), vioapic::InvalidPin> {
    let message = vm.ioapic.lock().set_level(pin, high)?;
    if let Some(interrupt) = message {
        deliver_ioapic_message(vm, interrupt);
    }
    Ok(())
}

/// Delivers an IOAPIC message that an MMIO write made due (e.g. unmasking an asserted
/// level-triggered pin).
pub fn deliver_ioapic_effect(vm: &'static Vm, effect: vioapic::IoapicEffect) {
    if let Some(interrupt) = effect.deliver {
        deliver_ioapic_message(vm, interrupt);
    }
}
