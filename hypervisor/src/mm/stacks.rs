//! Stacks with an unmapped guard page below each one, in a region of their own.
//!
//! A stack overflow then faults on the guard page (reported as such by the #PF
//! dump, on the #DF IST stack) instead of silently overwriting a neighbour.

use spin::Mutex;

use crate::mm::{frames, paging};
use hv_core::PAGE_SIZE;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StackError {
    /// No region yet, or the region is exhausted.
    NoSpace,
    Map(paging::MapError),
}

struct Region {
    start: u64,
    next: u64,
    end: u64,
}

/// Stacks live in the first half of a free top-level slot; the second half is the
/// device window (see [`map_device`]).
static STACKS: Mutex<Region> = Mutex::new(Region { start: 0, next: 0, end: 0 });
static DEVICES: Mutex<Region> = Mutex::new(Region { start: 0, next: 0, end: 0 });

/// Reserves a top-level slot for stacks and device windows.
pub fn init() -> Result<(), StackError> {
    let base = paging::free_upper_half_slot().ok_or(StackError::NoSpace)?;
    let half = 1u64 << 38; // 256 GiB
    *STACKS.lock() = Region { start: base, next: base, end: base + half };
    *DEVICES.lock() = Region { start: base + half, next: base + half, end: base + 2 * half };
    Ok(())
}

/// Allocates a stack of `size` bytes (rounded up to pages) with a guard page below it
/// and returns its top (16-byte aligned).
pub fn allocate(size: usize) -> Result<u64, StackError> {
    let pages = (size as u64).div_ceil(PAGE_SIZE);
    let mut region = STACKS.lock();
    let guard = region.next;
    let top = guard + (pages + 1) * PAGE_SIZE;
    if region.start == 0 || top > region.end {
        return Err(StackError::NoSpace);
    }
    region.next = top;
    drop(region);
    for page in 0..pages {
        let phys = frames::allocate_frame().map_err(|_| StackError::Map(paging::MapError::OutOfMemory))?;
        let virt = guard + (page + 1) * PAGE_SIZE;
        paging::map_4k(virt, phys, paging::flags::WRITABLE | paging::flags::NO_EXECUTE).map_err(StackError::Map)?;
    }
    Ok(top)
}

/// Whether `addr` is a guard page of the stack region (in the region, not mapped).
#[must_use]
pub fn is_guard_page(addr: u64) -> bool {
    let Some(region) = STACKS.try_lock() else { return false };
    addr >= region.start && addr < region.next && paging::translate(addr).is_none()
}

/// Maps `len` bytes of device memory at `phys` uncached (PCD|PWT: UC with the default
/// PAT, SDM 11.12.3), non-executable, and returns the virtual address.
pub fn map_device(phys: u64, len: u64) -> Result<u64, StackError> {
    let first = phys & !(PAGE_SIZE - 1);
    let pages = (phys + len - first).div_ceil(PAGE_SIZE);
    let mut region = DEVICES.lock();
    let virt = region.next;
    if region.start == 0 || virt + pages * PAGE_SIZE > region.end {
        return Err(StackError::NoSpace);
    }
    region.next = virt + pages * PAGE_SIZE;
    drop(region);
    use paging::flags::{CACHE_DISABLE, NO_EXECUTE, WRITABLE, WRITE_THROUGH};
    for page in 0..pages {
        paging::map_4k(
            virt + page * PAGE_SIZE,
            first + page * PAGE_SIZE,
            WRITABLE | NO_EXECUTE | CACHE_DISABLE | WRITE_THROUGH,
        )
        .map_err(StackError::Map)?;
    }
    Ok(virt + (phys - first))
}
