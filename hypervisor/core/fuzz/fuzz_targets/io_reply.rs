//! The service partition writes the reply half of an I/O request slot (the hypervisor
//! reads back its status and data words), and later the
//! arguments of `SERVICE_COMPLETE` for a request it deferred: whatever bytes it leaves
//! there and whatever it passes, validation must not panic and may only accept a
//! result that fits the posted request; a refused completion changes nothing. The fast
//! port path's view of the same answer (`PortAnswer`, for a port IN or OUT of that size
//! and direction) must be the general path's (`validate_answer`, then
//! `rax_after_port_io`).
//!
//! Input: a head byte (access size, direction, kind), the slot's 64 bytes, then the
//! completion's sequence (8 bytes), status (1) and data (8), then the guest's RAX (8),
//! each zero-filled when the input ends early.
#![no_main]

use hv_abi::io_request::{kind, status, IoRequestSlot, SLOT_BYTES};
use hv_core::exit::IoInstruction;
use hv_core::io_request::deferred::DeferredWait;
use hv_core::io_request::{
    post, rax_after_port_io, size_mask, validate_answer, validate_reply, Completion, PortAnswer, Reply, Request,
};
use libfuzzer_sys::fuzz_target;

/// `N` bytes from `bytes` at `at`, zero-filled past the end.
fn take<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    for (dst, src) in out.iter_mut().zip(bytes.iter().skip(at)) {
        *dst = *src;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((head, rest)) = data.split_first() else { return };
    let raw: [u8; SLOT_BYTES] = take(rest, 0);
    let size = [1u8, 2, 4, 8][usize::from(head & 3)];
    let write = head & 4 != 0;
    let request_kind = if head & 8 != 0 { kind::MMIO } else { kind::PCI_CONFIG };
    let request = Request { kind: request_kind, address: 0xfee0_0000, size, write, data: u64::MAX, vm: 1, vcpu: 0 };
    let Ok(posted) = post(&request, u64::from(*head)) else { return };
    let reply = IoRequestSlot::from_bytes(&raw);
    match validate_reply(&posted, reply.status, reply.data) {
        Ok(Reply::Completed(Completion::Read(v))) => assert!(!write && v & !size_mask(size) == 0),
        Ok(Reply::Completed(Completion::Written)) => assert!(write),
        Ok(Reply::Deferred) => assert_eq!(reply.status, status::DEFERRED),
        Ok(Reply::Completed(Completion::Failed)) | Err(_) => {}
    }

    // The same answer to a port IN or OUT (8 bytes has no port form: 4).
    let size_encoding = match size {
        1 => 0,
        2 => 1,
        _ => 3,
    };
    let qualification = size_encoding | if write { 0 } else { 1 << 3 } | 0x3fd << 16;
    let io = IoInstruction::decode(qualification).expect("a defined size encoding");
    let rax = u64::from_le_bytes(take(rest, SLOT_BYTES + 17));
    let general = match validate_answer(io.size(), !io.is_in(), reply.status, reply.data) {
        Ok(Reply::Completed(completion)) => Some(rax_after_port_io(rax, &io, completion)),
        _ => None,
    };
    assert_eq!(PortAnswer::for_access(&io).apply(rax, reply.status, reply.data), general);

    // A later SERVICE_COMPLETE of the same request, had it been deferred.
    let sequence = u64::from_le_bytes(take(rest, SLOT_BYTES));
    let completion_status = take::<1>(rest, SLOT_BYTES + 8)[0];
    let value = u64::from_le_bytes(take(rest, SLOT_BYTES + 9));
    let mut wait = DeferredWait::Idle;
    assert!(wait.begin(posted, 1).is_ok());
    let before = wait;
    match wait.complete(sequence, completion_status, value) {
        Ok(()) => {
            assert_eq!(sequence, posted.sequence);
            match wait.take_completion() {
                Some(Completion::Read(v)) => assert!(!write && v & !size_mask(size) == 0),
                Some(Completion::Written) => assert!(write),
                Some(Completion::Failed) => assert_eq!(completion_status, status::FAILED),
                None => panic!("an accepted completion left nothing to take"),
            }
        }
        Err(_) => assert_eq!(wait, before),
    }
});
