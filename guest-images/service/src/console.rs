//! Console input for the guests: the bytes typed on the physical console reach the
//! service partition through `SERVICE_CONSOLE_READ` (the hypervisor handles the escape
//! sequences and knows which guest has the input focus) and go into that guest's UART
//! receiver ([`vms::queue_input`]), paced by the receiver's room: what it cannot take
//! yet waits in the guest's queue (`hv_core::console_input::InputQueue`) and is fed as
//! the guest reads its UART (after every access, and at every timer tick).
//!
//! **When.** [`poll`] runs after every request and every timer tick but asks the
//! hypervisor at most every [`POLL_INTERVAL`] (until then it costs a TSC read and a
//! comparison); while some guest takes input every service vCPU also waits with the
//! next poll as a deadline ([`next_wake`]), so input reaches an idle guest too,
//! whichever CPU it runs on. Only one service vCPU polls at a time.
//!
//! **How much.** Each call names the guest the service partition believes has the focus
//! and asks for no more than that guest's queue has room for; the hypervisor takes
//! nothing when the focus is another guest (and says which), and a switch ends a call,
//! so every byte lands in its own guest's queue. A guest whose queue is full (it has not
//! read its UART for [`hv_core::console_input::QUEUE_BYTES`] bytes) loses what is typed
//! next, as a UART overruns, rather than stopping the input for everyone: the escape
//! sequences still work.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use guest_rt::raw_hypercall;
use hv_abi::hypercall as hc;
use hv_abi::service::console::{decode, ANY_TARGET, READ_MAX};
use hv_abi::service::VmId;
use hv_devices::Nanos;

use crate::vms;

/// How often the hypervisor is asked for input: 10 ms, a tenth of the time a typed key
/// may take to echo before a user notices.
pub const POLL_INTERVAL: Nanos = 10_000_000;
/// The interval after a poll that found input (more usually follows: a paste, or an
/// emulated UART that hands over one byte at a time): 1 ms, about 4 characters at the
/// console's 38400 baud, so the physical UART's 16-byte FIFO does not overrun.
pub const BUSY_POLL_INTERVAL: Nanos = 1_000_000;
/// Calls per poll at most (a focus change costs one; a full buffer asks again).
const CALLS_PER_POLL: usize = 4;

/// The time of the next poll (0: at once).
static NEXT_POLL: AtomicU64 = AtomicU64::new(0);
/// The same as a TSC value ([`crate::clock::to_tsc`]), so that [`poll`] costs a TSC read
/// and a comparison while no poll is due (it runs after every request).
static NEXT_POLL_TSC: AtomicU64 = AtomicU64::new(0);
/// A service vCPU is polling.
static POLLING: AtomicBool = AtomicBool::new(false);
/// The raw VmId of the guest that had the focus at the last call, or `ANY_TARGET`.
static FOCUS: AtomicU64 = AtomicU64::new(ANY_TARGET);
/// Some guest took input at the last call: keep the periodic wake-up.
static ARMED: AtomicBool = AtomicBool::new(false);

/// Polls the hypervisor for console input if [`POLL_INTERVAL`] has passed since the last
/// poll, and keeps the wake-up deadline of the next one.
#[inline]
pub fn poll() {
    if crate::clock::tsc_now() < NEXT_POLL_TSC.load(Ordering::Acquire) {
        return;
    }
    poll_now();
}

/// [`poll`] once the TSC says a poll may be due.
#[inline(never)]
fn poll_now() {
    let now = crate::clock::now();
    if now < NEXT_POLL.load(Ordering::Acquire) {
        return;
    }
    if POLLING.swap(true, Ordering::AcqRel) {
        return;
    }
    let (focus, got) = read_all(FOCUS.load(Ordering::Acquire));
    FOCUS.store(focus, Ordering::Release);
    let next = now.saturating_add(if got { BUSY_POLL_INTERVAL } else { POLL_INTERVAL });
    NEXT_POLL.store(next, Ordering::Release);
    NEXT_POLL_TSC.store(crate::clock::to_tsc(next), Ordering::Release);
    ARMED.store(focus != ANY_TARGET, Ordering::Release);
    crate::wake::changed();
    POLLING.store(false, Ordering::Release);
}

/// When the next poll is due, while some guest takes input (a deadline for every
/// service vCPU's wait: each CPU's service vCPU runs only for that CPU's guest, and the
/// guest with the focus may be the only one left).
pub fn next_wake() -> Option<Nanos> {
    ARMED.load(Ordering::Acquire).then(|| NEXT_POLL.load(Ordering::Acquire))
}

/// Takes what input there is now, starting with `focus` as the expected target; returns
/// the focus the hypervisor reported last (`ANY_TARGET`: no guest takes input) and
/// whether any input came.
fn read_all(mut focus: u64) -> (u64, bool) {
    let mut buf = [0u8; READ_MAX as usize];
    let mut got = false;
    for _ in 0..CALLS_PER_POLL {
        let len = match focus {
            ANY_TARGET => 0,
            id => match vms::input_room(VmId(id as u32)) {
                // A full queue still reads (and drops), so that Ctrl-A n keeps working.
                0 => READ_MAX as usize,
                room => room.min(READ_MAX as usize),
            },
        };
        // The buffer is on this vCPU's stack, in the partition's identity-mapped RAM; the
        // hypervisor checks the range and writes at most `len` bytes.
        let r = raw_hypercall(hc::SERVICE_CONSOLE_READ, buf.as_mut_ptr() as u64, len as u64, focus, 0);
        let Some((count, target)) = decode(r) else { return (ANY_TARGET, got) };
        got |= count > 0;
        if let (Some(id), Some(bytes)) = (target, buf.get(..count.min(len))) {
            if !bytes.is_empty() {
                vms::queue_input(id, bytes);
            }
        }
        let reported = target.map_or(ANY_TARGET, |id| u64::from(id.0));
        // More may be waiting after a full read or a switch (which ends a call), and a
        // new focus needs a call that names it.
        let again = reported != focus || count > 0;
        focus = reported;
        if !again {
            break;
        }
    }
    (focus, got)
}
