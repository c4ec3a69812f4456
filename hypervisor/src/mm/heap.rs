//! The kernel heap: one contiguous run of frames, reached through the direct map,
//! managed by `linked_list_allocator`. Used at boot and for control-path objects;
//! never on a VM-exit path.

use linked_list_allocator::LockedHeap;

use crate::mm::frames;
use hv_core::PAGE_SIZE;

/// Heap size: 8 MiB covers per-CPU tables, ACPI parsing and later partition metadata.
pub const HEAP_SIZE: u64 = 8 * 1024 * 1024;

#[global_allocator]
static ALLOCATOR: LockedHeap = LockedHeap::empty();

/// Allocates the heap's frames and hands them to the allocator.
pub fn init() -> Result<(), hv_core::frames::AllocError> {
    let phys = frames::allocate_zeroed(HEAP_SIZE / PAGE_SIZE, PAGE_SIZE, u64::MAX)?;
    // SAFETY: the frames were just allocated for the heap alone and stay mapped
    // (direct map) for the hypervisor's lifetime; init runs once.
    unsafe { ALLOCATOR.lock().init(frames::phys_to_virt(phys), HEAP_SIZE as usize) };
    Ok(())
}
