//! The request slots the hypervisor shares with the service partition at
//! `hv_abi::service::SLOTS_GPA` (identity-mapped by the start page tables, which cover
//! the first 4 GiB). The hypervisor writes a slot before it hands its index out and
//! reads it back after the reply, so every access here is volatile: the compiler must
//! neither cache nor drop them.

use core::sync::atomic::{fence, Ordering};

use hv_abi::io_request::{IoRequestSlot, SLOT_BYTES};
use hv_abi::service::{SLOTS, SLOTS_GPA};

/// Byte offset of `data` in a slot.
const DATA_OFFSET: usize = 16;
/// Byte offset of `status` in a slot.
const STATUS_OFFSET: usize = 35;
/// 64-bit words per slot.
const WORDS: usize = SLOT_BYTES / 8;

/// The address of slot `index` (`index < SLOTS`).
fn slot_address(index: u32) -> u64 {
    SLOTS_GPA + u64::from(index.min(SLOTS - 1)) * SLOT_BYTES as u64
}

/// Reads slot `index` (`index < SLOTS`; larger indexes read the last slot).
// Inlined into the request loop, which reads a slot for every forwarded access.
#[inline(always)]
pub fn read(index: u32) -> IoRequestSlot {
    let words = slot_address(index) as *const u64;
    let mut bytes = [0u8; SLOT_BYTES];
    fence(Ordering::Acquire);
    for (i, chunk) in bytes.as_chunks_mut::<8>().0.iter_mut().enumerate().take(WORDS) {
        // SAFETY: the slot array is mapped read/write at SLOTS_GPA (identity-mapped) and
        // slot `index` lies inside it; the 8-byte words are aligned (slots are 64-byte
        // aligned). The hypervisor writes the slot only while no service vCPU works on
        // it; a racing write would only yield bytes that the hypervisor's reply
        // validation refuses.
        let word = unsafe { core::ptr::read_volatile(words.add(i)) };
        *chunk = word.to_le_bytes();
    }
    IoRequestSlot::from_bytes(&bytes)
}

/// Answers slot `index`: writes `data` (if given) and then `status`, and nothing else,
/// so every field the hypervisor posted stays as it was.
pub fn reply(index: u32, data: Option<u64>, status: u8) {
    let slot = slot_address(index) as *mut u8;
    if let Some(data) = data {
        // SAFETY: as in `read`; `data` is the aligned 8-byte word at offset 16 of the slot.
        unsafe { core::ptr::write_volatile(slot.add(DATA_OFFSET).cast::<u64>(), data.to_le()) };
    }
    fence(Ordering::Release);
    // SAFETY: as in `read`; `status` is the byte at offset 35 of the slot.
    unsafe { core::ptr::write_volatile(slot.add(STATUS_OFFSET), status) };
}
