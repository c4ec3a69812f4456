//! The request slots the hypervisor shares with the service partition at
//! `hv_abi::service::SLOTS_GPA` (identity-mapped by the start page tables, which cover
//! the first 4 GiB). The hypervisor writes a slot before it hands its index out and
//! reads it back after the reply, so every access here is volatile: the compiler must
//! neither cache nor drop them.

use core::sync::atomic::{fence, Ordering};

use hv_abi::io_request::{IoRequestSlot, SLOT_BYTES};
use hv_abi::service::{SLOTS, SLOTS_GPA};

/// Byte offset of `data` in a slot.
const DATA_OFFSET: usize = IoRequestSlot::DATA_OFFSET;
/// Byte offset of `status` in a slot.
const STATUS_OFFSET: usize = IoRequestSlot::STATUS_OFFSET;

/// The address of slot `index` (`index < SLOTS`).
fn slot_address(index: u32) -> u64 {
    SLOTS_GPA + u64::from(index.min(SLOTS - 1)) * SLOT_BYTES as u64
}

/// Reads slot `index` (`index < SLOTS`; larger indexes read the last slot): its five
/// 64-bit words, the fields decoded from them as `IoRequestSlot::from_bytes` lays them
/// out (little-endian; the padding after the fields is not read).
// Inlined into the request loop, which reads a slot for every forwarded access.
#[inline(always)]
pub fn read(index: u32) -> IoRequestSlot {
    let words = slot_address(index) as *const u64;
    fence(Ordering::Acquire);
    let word = |i: usize| {
        // SAFETY: the slot array is mapped read/write at SLOTS_GPA (identity-mapped) and
        // slot `index` lies inside it; word `i` < 5 is an aligned 8-byte word of the slot
        // (slots are 64-byte aligned). The hypervisor writes the slot only while no
        // service vCPU works on it; a racing write would only yield values that the
        // hypervisor's reply validation does not depend on.
        u64::from_le(unsafe { core::ptr::read_volatile(words.add(i)) })
    };
    let (ids, bytes) = (word(3), word(4));
    IoRequestSlot {
        sequence: word(0),
        address: word(1),
        data: word(2),
        vm: ids as u32,
        vcpu: (ids >> 32) as u32,
        kind: bytes as u8,
        size: (bytes >> 8) as u8,
        direction: (bytes >> 16) as u8,
        status: (bytes >> 24) as u8,
        reserved: (bytes >> 32) as u32,
    }
}

const _: () = assert!(SLOT_BYTES >= 40, "read takes five words");

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
