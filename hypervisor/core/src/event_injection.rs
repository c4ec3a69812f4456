//! What to deliver into a guest on the next VM entry, and when to come back for the rest.
//!
//! The hypervisor keeps a vCPU's pending interrupts in its virtual LAPIC (and a pending
//! NMI beside it); the boot vCPU may also have the 8259's INTR on its LINT0 pin (ExtINT,
//! see `VirtualLapic::passes_pic_intr`). Before each VM entry [`plan_entry`] decides, from the guest's
//! interruptibility, whether one of them can be injected now (SDM Vol. 3C 27.6, "Event
//! injection") or whether the guest must first reach an instruction boundary where it
//! can take it: then interrupt-window exiting (SDM 26.7.5) or NMI-window exiting (SDM
//! 26.7.6) brings the vCPU back at exactly that point.
//!
//! [`preemption_timer_value`] turns a guest-timer deadline into the VMX-preemption timer
//! value that expires no earlier than the deadline (SDM 26.5.1).

/// Guest interruptibility-state bits (SDM 25.4.2, table 25-3).
pub mod interruptibility {
    /// Blocking by STI: the instruction after STI runs before any interrupt.
    pub const BLOCKING_BY_STI: u32 = 1 << 0;
    /// Blocking by MOV SS / POP SS.
    pub const BLOCKING_BY_MOV_SS: u32 = 1 << 1;
    /// Blocking by SMI.
    pub const BLOCKING_BY_SMI: u32 = 1 << 2;
    /// Blocking by NMI: an NMI handler runs and has not executed IRET yet.
    pub const BLOCKING_BY_NMI: u32 = 1 << 3;
}

/// The guest's state that decides whether an event can be injected now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestEventState {
    /// RFLAGS.IF.
    pub interrupts_enabled: bool,
    /// The guest interruptibility-state field.
    pub interruptibility: u32,
    /// The VM-entry interruption-information field is already valid (an exception or a
    /// re-injected event goes first; only one event can be injected per entry).
    pub event_queued: bool,
}

/// An event to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Nmi,
    /// A maskable external interrupt with this vector (16..=255).
    External(u8),
    /// The 8259's INTR through LINT0 (ExtINT): the caller runs an interrupt-acknowledge
    /// cycle of the PIC and injects the vector it answers as a maskable external
    /// interrupt, which the LAPIC does not track (no IRR/ISR bit, no LAPIC EOI).
    ExtInt,
}

/// What is waiting for the vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pending {
    /// A virtual NMI.
    pub nmi: bool,
    /// The 8259's INTR is high and the LAPIC passes it on (LINT0 in virtual-wire mode).
    pub extint: bool,
    /// The highest deliverable LAPIC vector (already filtered by the PPR).
    pub interrupt: Option<u8>,
}

/// The decision for one VM entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EntryPlan {
    pub inject: Option<Event>,
    /// Set interrupt-window exiting: an interrupt is pending that cannot be taken now.
    pub interrupt_window: bool,
    /// Set NMI-window exiting: an NMI is pending that cannot be taken now.
    pub nmi_window: bool,
}

/// Decides what to inject from what is `pending`; `nmi_window_supported` says whether
/// the CPU has NMI-window exiting (without it an interrupt window is the fallback: it
/// opens no earlier than an NMI could be taken).
///
/// Rules (SDM 27.3.1.5 and 6.7.1): an NMI needs no blocking by STI, MOV SS or NMI; a
/// maskable interrupt (ExtINT or a LAPIC vector) needs RFLAGS.IF = 1 and no blocking by
/// STI or MOV SS. NMIs go before maskable interrupts; ExtINT goes before the LAPIC's
/// vectors (it bypasses the LAPIC's priority logic, as KVM and QEMU deliver it too).
/// Whatever maskable interrupt is left waiting asks for an interrupt window.
#[must_use]
pub fn plan_entry(state: GuestEventState, pending: Pending, nmi_window_supported: bool) -> EntryPlan {
    let Pending { nmi: nmi_pending, extint, interrupt } = pending;
    use interruptibility::{BLOCKING_BY_MOV_SS, BLOCKING_BY_NMI, BLOCKING_BY_STI};
    let shadow = state.interruptibility & (BLOCKING_BY_STI | BLOCKING_BY_MOV_SS) != 0;
    let nmi_blocked = state.event_queued || shadow || state.interruptibility & BLOCKING_BY_NMI != 0;
    let interrupt_blocked = state.event_queued || shadow || !state.interrupts_enabled;
    let mut plan = EntryPlan::default();
    if nmi_pending {
        if nmi_blocked {
            if nmi_window_supported {
                plan.nmi_window = true;
            } else {
                plan.interrupt_window = true;
            }
        } else {
            plan.inject = Some(Event::Nmi);
        }
    }
    let maskable = [extint.then_some(Event::ExtInt), interrupt.map(Event::External)];
    for event in maskable.into_iter().flatten() {
        if plan.inject.is_none() && !interrupt_blocked {
            plan.inject = Some(event);
        } else {
            plan.interrupt_window = true;
        }
    }
    plan
}

/// The VMX-preemption timer value for a guest deadline: the timer counts down by one
/// each time bit `rate` of the TSC changes (SDM 26.5.1, IA32_VMX_MISC[4:0]), so a value
/// `v` expires between `(v - 1) << rate` and `v << rate` ticks after VM entry. The value
/// is rounded up and one is added, so it never expires before `deadline`; it saturates
/// at `u32::MAX` (the vCPU then exits early and the timer is re-armed). A deadline that
/// has passed gives 0: an exit before the first guest instruction.
#[must_use]
pub fn preemption_timer_value(now: u64, deadline: u64, rate: u8) -> u32 {
    let delta = deadline.saturating_sub(now);
    if delta == 0 {
        return 0;
    }
    let shift = u32::from(rate.min(63));
    let ticks = (delta >> shift).saturating_add(u64::from(delta & ((1u64 << shift) - 1) != 0)).saturating_add(1);
    u32::try_from(ticks).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::interruptibility::*;
    use super::*;
    use proptest::prelude::*;

    const OPEN: GuestEventState =
        GuestEventState { interrupts_enabled: true, interruptibility: 0, event_queued: false };
    const NMI: Pending = Pending { nmi: true, extint: false, interrupt: None };
    const EXTINT: Pending = Pending { nmi: false, extint: true, interrupt: None };

    fn lapic(vector: u8) -> Pending {
        Pending { interrupt: Some(vector), ..Pending::default() }
    }

    #[test]
    fn extint_goes_before_lapic_vectors_and_after_nmis() {
        assert_eq!(plan_entry(OPEN, EXTINT, true), EntryPlan { inject: Some(Event::ExtInt), ..Default::default() });
        // A LAPIC vector waits for a window behind the ExtINT.
        let both = Pending { extint: true, ..lapic(0xf0) };
        assert_eq!(
            plan_entry(OPEN, both, true),
            EntryPlan { inject: Some(Event::ExtInt), interrupt_window: true, nmi_window: false }
        );
        // An NMI goes first; the ExtINT waits for the window.
        let all = Pending { nmi: true, ..both };
        assert_eq!(
            plan_entry(OPEN, all, true),
            EntryPlan { inject: Some(Event::Nmi), interrupt_window: true, nmi_window: false }
        );
    }

    #[test]
    fn extint_is_masked_by_if_and_the_interrupt_shadow() {
        for state in [
            GuestEventState { interrupts_enabled: false, ..OPEN },
            GuestEventState { interruptibility: BLOCKING_BY_STI, ..OPEN },
            GuestEventState { interruptibility: BLOCKING_BY_MOV_SS, ..OPEN },
            GuestEventState { event_queued: true, ..OPEN },
        ] {
            assert_eq!(
                plan_entry(state, EXTINT, true),
                EntryPlan { inject: None, interrupt_window: true, nmi_window: false },
                "{state:?}"
            );
        }
        // Blocking by NMI does not block it.
        let state = GuestEventState { interruptibility: BLOCKING_BY_NMI, ..OPEN };
        assert_eq!(plan_entry(state, EXTINT, true).inject, Some(Event::ExtInt));
    }

    #[test]
    fn an_open_guest_takes_the_interrupt() {
        let plan = plan_entry(OPEN, lapic(0x40), true);
        assert_eq!(plan, EntryPlan { inject: Some(Event::External(0x40)), ..Default::default() });
    }

    #[test]
    fn nothing_pending_means_nothing_to_do() {
        assert_eq!(plan_entry(OPEN, Pending::default(), true), EntryPlan::default());
    }

    #[test]
    fn if_clear_or_sti_shadow_opens_a_window() {
        for state in [
            GuestEventState { interrupts_enabled: false, ..OPEN },
            GuestEventState { interruptibility: BLOCKING_BY_STI, ..OPEN },
            GuestEventState { interruptibility: BLOCKING_BY_MOV_SS, ..OPEN },
            GuestEventState { event_queued: true, ..OPEN },
        ] {
            let plan = plan_entry(state, lapic(0x40), true);
            assert_eq!(plan, EntryPlan { inject: None, interrupt_window: true, nmi_window: false }, "{state:?}");
        }
    }

    #[test]
    fn nmi_blocking_does_not_block_maskable_interrupts() {
        let state = GuestEventState { interruptibility: BLOCKING_BY_NMI, ..OPEN };
        assert_eq!(plan_entry(state, lapic(0x40), true).inject, Some(Event::External(0x40)));
    }

    #[test]
    fn nmi_goes_first_and_ignores_if() {
        let state = GuestEventState { interrupts_enabled: false, ..OPEN };
        let plan = plan_entry(state, Pending { nmi: true, ..lapic(0x40) }, true);
        assert_eq!(plan, EntryPlan { inject: Some(Event::Nmi), interrupt_window: true, nmi_window: false });
    }

    #[test]
    fn blocked_nmi_waits_for_its_window() {
        let state = GuestEventState { interruptibility: BLOCKING_BY_NMI, ..OPEN };
        assert_eq!(plan_entry(state, NMI, true), EntryPlan { nmi_window: true, ..Default::default() });
        // Without NMI-window exiting the interrupt window stands in.
        assert_eq!(plan_entry(state, NMI, false), EntryPlan { interrupt_window: true, ..Default::default() });
        // A maskable interrupt can still go in while the NMI waits.
        assert_eq!(plan_entry(state, Pending { nmi: true, ..lapic(0x30) }, true).inject, Some(Event::External(0x30)));
    }

    #[test]
    fn preemption_timer_examples() {
        assert_eq!(preemption_timer_value(100, 100, 5), 0);
        assert_eq!(preemption_timer_value(200, 100, 5), 0);
        assert_eq!(preemption_timer_value(0, 32, 5), 2);
        assert_eq!(preemption_timer_value(0, 33, 5), 3);
        assert_eq!(preemption_timer_value(0, 1, 0), 2);
        assert_eq!(preemption_timer_value(0, u64::MAX, 0), u32::MAX);
    }

    proptest! {
        /// Whatever TSC phase the entry happens at, the timer never expires before the
        /// deadline: the earliest expiry `(v - 1) << rate` ticks after entry is at least
        /// the distance to the deadline.
        #[test]
        fn never_early(now in 0u64..1 << 60, delta in 1u64..1 << 40, rate in 0u8..32) {
            let v = preemption_timer_value(now, now + delta, rate);
            prop_assert!(v >= 1);
            if v < u32::MAX {
                prop_assert!((u64::from(v) - 1) << rate >= delta);
                // ... and not more than two timer ticks late.
                prop_assert!(u64::from(v) << rate <= delta + (2u64 << rate));
            }
        }

        /// An injected maskable interrupt always meets the SDM's entry conditions.
        #[test]
        fn injections_are_legal(enabled: bool, bits in 0u32..16, queued: bool, nmi: bool, extint: bool, vector in proptest::option::of(16u8..=255)) {
            let state = GuestEventState { interrupts_enabled: enabled, interruptibility: bits, event_queued: queued };
            let plan = plan_entry(state, Pending { nmi, extint, interrupt: vector }, true);
            match plan.inject {
                Some(Event::External(_) | Event::ExtInt) => {
                    prop_assert!(enabled && !queued && bits & (BLOCKING_BY_STI | BLOCKING_BY_MOV_SS) == 0);
                }
                Some(Event::Nmi) => prop_assert!(!queued && bits & (BLOCKING_BY_STI | BLOCKING_BY_MOV_SS | BLOCKING_BY_NMI) == 0),
                None => {}
            }
            // Something pending and not injected always leaves a way back.
            let injected_nmi = plan.inject == Some(Event::Nmi);
            if nmi && !injected_nmi {
                prop_assert!(plan.nmi_window || plan.interrupt_window);
            }
            if vector.is_some() && !matches!(plan.inject, Some(Event::External(_))) {
                prop_assert!(plan.interrupt_window);
            }
            if extint && plan.inject != Some(Event::ExtInt) {
                prop_assert!(plan.interrupt_window);
            }
            // ExtINT goes before the LAPIC's vector.
            if extint && matches!(plan.inject, Some(Event::External(_))) {
                prop_assert!(false, "a LAPIC vector went before the ExtINT");
            }
        }
    }
}
