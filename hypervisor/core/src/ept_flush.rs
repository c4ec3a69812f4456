//! The EPT flush handshake between a CPU that changed a VM's EPT rights and the CPUs
//! running the VM's vCPUs (`partition::protect_range` in the kernel), in the style of
//! KVM's TLB-flush requests.
//!
//! Per vCPU there are two flags: `pending` (an INVEPT is due before the vCPU's next
//! entry) and `in_guest` (the vCPU is in guest mode, or about to enter it).
//!
//! - The flusher changes the EPT, sets `pending` (sequentially consistent), kicks the
//!   vCPU's CPU, then reads `in_guest` and waits only while [`must_wait`] says so.
//! - The vCPU's CPU sets `in_guest` (sequentially consistent) before its last read of
//!   `pending` ahead of every entry, and clears it after every exit. It takes a request
//!   with a swap to `false` *before* it executes INVEPT, so that a request made after the
//!   take keeps `pending` set and gets an INVEPT of its own.
//!
//! So a vCPU the flusher sees outside guest mode reads `pending` set before it next
//! enters and flushes; a vCPU in guest mode is waited for until it has flushed or left
//! guest mode. A vCPU in the hypervisor (in a hypercall, a forwarded access, asleep) is
//! never waited for: two flushers cannot wait for each other. The tests below check the
//! handshake over every interleaving of a vCPU and two flushers.

/// Whether a flusher that set a vCPU's `pending` flag must keep waiting for it: the
/// vCPU has not taken the request (`pending`), is in guest mode (`in_guest`), and
/// neither is its VM stopping (it never enters again) nor is the vCPU held by a reset
/// (it flushes before it runs again).
#[must_use]
pub const fn must_wait(pending: bool, in_guest: bool, vm_stopping: bool, held: bool) -> bool {
    pending && in_guest && !vm_stopping && !held
}

#[cfg(test)]
mod tests {
    use super::must_wait;

    /// Where the vCPU's CPU is.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    enum Cpu {
        /// In the hypervisor, about to enter: sets `in_guest` next.
        Root,
        /// `in_guest` set: reads `pending` next.
        Check,
        /// Took a request (swapped `pending` to false): executes INVEPT next.
        Invept,
        /// The old order: INVEPT done, clears `pending` next.
        Clear,
        /// [`Variant::InGuestAfterCheck`]: sets `in_guest` next, then enters.
        Mark,
        /// In guest mode, using the translations its TLB holds.
        Guest,
    }

    /// Where a flusher is.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    enum Flusher {
        /// Changes the EPT next.
        Change,
        /// Sets `pending` next (its EPT change has version `.0`).
        Request(u32),
        /// Waits for its change `.0`: reads `pending` next.
        Wait(u32),
        /// `pending` was set: reads `in_guest` next.
        WaitInGuest(u32),
        /// Returned: its change `.0` must never be missing from the TLB in guest mode.
        Done(u32),
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    struct State {
        cpu: Cpu,
        entries: u32,
        pending: bool,
        in_guest: bool,
        /// EPT version (one per change) and the version the vCPU's TLB reflects.
        ept: u32,
        tlb: u32,
        flushers: [Flusher; 2],
        variant: Variant,
    }

    /// The handshake as the kernel does it, and two broken ones the model must reject.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    enum Variant {
        Kernel,
        /// The old order: INVEPT, then clear `pending`.
        ClearAfterInvept,
        /// `in_guest` set after the last read of `pending`.
        InGuestAfterCheck,
    }

    /// The vCPU's next step (one atomic action); none after its third entry.
    fn cpu_step(s: &State) -> Vec<State> {
        let mut out = Vec::new();
        let mut n = *s;
        match s.cpu {
            Cpu::Root if s.entries < 3 => {
                n.in_guest = s.variant != Variant::InGuestAfterCheck;
                n.cpu = Cpu::Check;
                out.push(n);
            }
            Cpu::Root => {}
            Cpu::Check => {
                if s.pending {
                    if s.variant != Variant::ClearAfterInvept {
                        n.pending = false;
                    }
                    n.cpu = Cpu::Invept;
                } else {
                    n = enter(n);
                }
                out.push(n);
            }
            Cpu::Invept => {
                n.tlb = s.ept;
                n = if s.variant == Variant::ClearAfterInvept { State { cpu: Cpu::Clear, ..n } } else { enter(n) };
                out.push(n);
            }
            Cpu::Clear => {
                n.pending = false;
                out.push(enter(n));
            }
            Cpu::Mark => {
                n.in_guest = true;
                n.cpu = Cpu::Guest;
                n.entries += 1;
                out.push(n);
            }
            Cpu::Guest => {
                // An exit (a kick, or any other) at any time.
                n.in_guest = false;
                n.cpu = Cpu::Root;
                out.push(n);
            }
        }
        out
    }

    /// The step into guest mode (through [`Cpu::Mark`] in [`Variant::InGuestAfterCheck`]).
    fn enter(mut n: State) -> State {
        if n.variant == Variant::InGuestAfterCheck {
            n.cpu = Cpu::Mark;
        } else {
            n.cpu = Cpu::Guest;
            n.entries += 1;
        }
        n
    }

    fn flusher_step(s: &State, i: usize) -> Option<State> {
        let mut n = *s;
        match s.flushers[i] {
            Flusher::Change => {
                n.ept += 1;
                n.flushers[i] = Flusher::Request(n.ept);
            }
            Flusher::Request(v) => {
                n.pending = true;
                n.flushers[i] = Flusher::Wait(v);
            }
            // The two loads of the kernel's wait loop, one step each.
            Flusher::Wait(v) => {
                n.flushers[i] =
                    if must_wait(s.pending, true, false, false) { Flusher::WaitInGuest(v) } else { Flusher::Done(v) };
            }
            Flusher::WaitInGuest(v) => {
                n.flushers[i] =
                    if must_wait(true, s.in_guest, false, false) { Flusher::Wait(v) } else { Flusher::Done(v) };
            }
            Flusher::Done(_) => return None,
        }
        Some(n)
    }

    /// Every reachable state; `Err` with the first state in which the vCPU runs in guest
    /// mode without a change whose flusher has returned.
    fn explore(variant: Variant) -> Result<usize, State> {
        let start = State {
            cpu: Cpu::Root,
            entries: 0,
            pending: false,
            in_guest: false,
            ept: 0,
            tlb: 0,
            flushers: [Flusher::Change; 2],
            variant,
        };
        let mut stack = vec![start];
        let mut seen = std::collections::HashSet::new();
        while let Some(s) = stack.pop() {
            if !seen.insert(s) {
                continue;
            }
            for f in s.flushers {
                if let Flusher::Done(v) = f {
                    if s.cpu == Cpu::Guest && s.tlb < v {
                        return Err(s);
                    }
                }
            }
            stack.extend(cpu_step(&s));
            stack.extend((0..2).filter_map(|i| flusher_step(&s, i)));
        }
        Ok(seen.len())
    }

    #[test]
    fn no_vcpu_uses_a_translation_older_than_a_returned_flush() {
        assert!(explore(Variant::Kernel).is_ok_and(|states| states > 100));
    }

    #[test]
    fn clearing_the_request_after_invept_would_lose_a_second_flush() {
        // The order this replaced: a request made between the INVEPT and the clear is
        // marked done by an INVEPT older than its change.
        assert!(explore(Variant::ClearAfterInvept).is_err());
    }

    #[test]
    fn marking_guest_mode_after_the_last_look_would_miss_a_flush() {
        assert!(explore(Variant::InGuestAfterCheck).is_err());
    }

    #[test]
    fn waits_only_for_a_vcpu_in_guest_mode_that_has_not_flushed() {
        assert!(must_wait(true, true, false, false));
        assert!(!must_wait(false, true, false, false), "flushed");
        assert!(!must_wait(true, false, false, false), "in the hypervisor: flushes before it enters");
        assert!(!must_wait(true, true, true, false), "stopping: never enters again");
        assert!(!must_wait(true, true, false, true), "held by a reset");
    }
}
