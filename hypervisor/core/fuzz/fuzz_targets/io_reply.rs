//! The service partition writes the reply half of an I/O request slot: whatever bytes it
//! leaves there, validation must not panic and may only accept a result that fits the
//! posted request.
#![no_main]

use hv_abi::io_request::{kind, IoRequestSlot, SLOT_BYTES};
use hv_core::io_request::{post, size_mask, validate_reply, Completion, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((head, rest)) = data.split_first() else { return };
    let mut raw = [0u8; SLOT_BYTES];
    for (dst, src) in raw.iter_mut().zip(rest) {
        *dst = *src;
    }
    let size = [1u8, 2, 4, 8][usize::from(head & 3)];
    let write = head & 4 != 0;
    let request_kind = if head & 8 != 0 { kind::MMIO } else { kind::PCI_CONFIG };
    let request = Request { kind: request_kind, address: 0xfee0_0000, size, write, data: u64::MAX, vm: 1, vcpu: 0 };
    let Ok(posted) = post(&request, u64::from(*head)) else { return };
    match validate_reply(&posted, &IoRequestSlot::from_bytes(&raw)) {
        Ok(Completion::Read(v)) => assert!(!write && v & !size_mask(size) == 0),
        Ok(Completion::Written) => assert!(write),
        Ok(Completion::Failed) | Err(_) => {}
    }
});
