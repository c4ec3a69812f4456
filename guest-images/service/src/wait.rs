//! `SERVICE_REPLY_WAIT` (`hv_abi::hypercall`), the call the service partition's vCPUs
//! spend their time in: it answers the request just served, in registers (status RSI,
//! data RDX), and returns the next request in registers too (the slot index in RAX and
//! the slot's five words in RBX, RCX, RDX, RSI and RDI; `IoRequestSlot::to_words`). The
//! slot in the shared array holds the same request as its record; the service
//! partition neither reads nor writes it.

use hv_abi::hypercall as hc;
use hv_abi::io_request::IoRequestSlot;

/// What a `SERVICE_REPLY_WAIT` returned.
#[derive(Debug, Clone, Copy)]
pub struct Wait {
    /// A slot index (below `hv_abi::service::SLOTS`), `TIMER_EXPIRED` or an error.
    pub result: u64,
    /// The request, when `result` is a slot index (else whatever the registers held).
    pub request: IoRequestSlot,
}

/// Answers `reply` (a slot index, or `NO_REPLY`: then `status` and `data` are not
/// looked at) with `status` and `data`, and waits for the next request or until the
/// TSC reaches `wake_at` (0: no deadline).
#[inline(always)]
pub fn reply_wait(reply: u64, wake_at: u64, status: u8, data: u64) -> Wait {
    let (result, sequence, address, value, ids, kinds): (u64, u64, u64, u64, u64, u64);
    // SAFETY: VMCALL traps to the hypervisor, which for SERVICE_REPLY_WAIT writes only
    // the six registers named here and touches no memory of this partition but the
    // request slots. RBX is reserved by LLVM, so it is swapped in and out around the call.
    unsafe {
        core::arch::asm!(
            "xchg rbx, {b}",
            "vmcall",
            "xchg rbx, {b}",
            b = inout(reg) reply => sequence,
            inout("rax") hc::SERVICE_REPLY_WAIT => result,
            inout("rcx") wake_at => address,
            inout("rdx") data => value,
            inout("rsi") u64::from(status) => ids,
            out("rdi") kinds,
            options(nostack),
        );
    }
    Wait { result, request: IoRequestSlot::from_words([sequence, address, value, ids, kinds]) }
}
