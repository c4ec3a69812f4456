//! Whether a wake-up time may have changed: the request loop asks the hypervisor to wake
//! it at the earliest of [`crate::vms::next_wake`] and [`crate::console::next_wake`],
//! converted to a TSC deadline. Both change rarely (a device timer set, a poll done),
//! so whoever changes one bumps a generation ([`changed`], after the change), and each
//! vCPU's loop recomputes its deadline only when the generation moved since it last did
//! ([`generation`]): one load and one comparison per request otherwise.

use core::sync::atomic::{AtomicU64, Ordering};

static GENERATION: AtomicU64 = AtomicU64::new(0);

/// A wake-up time may have changed (call after the change is stored).
#[inline]
pub fn changed() {
    GENERATION.fetch_add(1, Ordering::AcqRel);
}

/// The current generation: a loop that read the wake-up times after seeing this value
/// has seen every change made before it.
#[inline]
pub fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}
