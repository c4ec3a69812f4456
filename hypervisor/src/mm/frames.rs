//! The global physical frame allocator and the direct map of physical memory.

use core::sync::atomic::{AtomicU64, Ordering};

use hv_core::frames::{AllocError, FrameAllocator};
use hv_core::memory_map::UsableMemory;
use hv_core::PAGE_SIZE;
use spin::Mutex;

/// Most usable ranges the allocator keeps (firmware maps are fragmented, merged ranges are few).
const MAX_RANGES: usize = 128;

static FRAMES: Mutex<Option<FrameAllocator<MAX_RANGES>>> = Mutex::new(None);
/// Virtual address at which all physical memory is mapped (chosen by the bootloader).
static PHYS_OFFSET: AtomicU64 = AtomicU64::new(0);
/// The page the AP trampoline will use (below 1 MiB), picked from the memory map.
static TRAMPOLINE_PAGE: AtomicU64 = AtomicU64::new(0);

/// Statistics for the boot log.
#[derive(Debug, Clone, Copy)]
pub struct MemorySummary {
    pub usable_bytes: u64,
    pub ranges: usize,
    pub dropped_bytes: u64,
}

/// Takes over the usable memory. `regions` are the bootloader's usable regions.
pub fn init(phys_offset: u64, regions: impl IntoIterator<Item = (u64, u64)>) -> MemorySummary {
    PHYS_OFFSET.store(phys_offset, Ordering::Relaxed);
    let usable = UsableMemory::<MAX_RANGES>::from_regions(regions);
    // Page 0 holds the real-mode IVT/BDA on legacy systems; start the search above it.
    if let Some(page) = usable.low_page(PAGE_SIZE) {
        TRAMPOLINE_PAGE.store(page, Ordering::Relaxed);
    }
    let summary = MemorySummary {
        usable_bytes: usable.total_bytes(),
        ranges: usable.ranges().len(),
        dropped_bytes: usable.dropped_bytes,
    };
    *FRAMES.lock() = Some(FrameAllocator::new(usable.above_low_memory()));
    summary
}

/// The virtual address of physical address `phys` in the direct map.
#[must_use]
pub fn phys_to_virt(phys: u64) -> *mut u8 {
    (PHYS_OFFSET.load(Ordering::Relaxed) + phys) as *mut u8
}

/// The low page reserved for the AP trampoline, if the memory map has one.
#[must_use]
pub fn trampoline_page() -> Option<u64> {
    match TRAMPOLINE_PAGE.load(Ordering::Relaxed) {
        0 => None,
        p => Some(p),
    }
}

/// Allocates `count` contiguous zeroed frames aligned to `align`, below `limit`.
pub fn allocate_zeroed(count: u64, align: u64, limit: u64) -> Result<u64, AllocError> {
    let phys = FRAMES.lock().as_mut().ok_or(AllocError::OutOfMemory)?.allocate(count, align, limit)?;
    // SAFETY: the range was just handed out by the allocator, so nothing else uses it,
    // and it lies in usable RAM, which the direct map covers.
    unsafe { core::ptr::write_bytes(phys_to_virt(phys), 0, (count * PAGE_SIZE) as usize) };
    Ok(phys)
}

/// One zeroed 4 KiB frame.
pub fn allocate_frame() -> Result<u64, AllocError> {
    allocate_zeroed(1, PAGE_SIZE, u64::MAX)
}

/// Free bytes left.
#[must_use]
pub fn free_bytes() -> u64 {
    FRAMES.lock().as_ref().map_or(0, FrameAllocator::free_bytes)
}
