//! The physical frame allocator.
//!
//! A bump allocator over the usable ranges above 1 MiB. It hands out runs of
//! contiguous, aligned frames, optionally below a limit (the AP trampoline needs its
//! page tables below 4 GiB). Boot-time allocations (page tables, stacks, heap, VMXON
//! regions) are never freed; partition memory pools are carved out of it as whole
//! ranges by later code.

use crate::memory_map::{align_up, PhysRange};
use crate::PAGE_SIZE;

/// Why an allocation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocError {
    /// No range has `frames` contiguous free frames with that alignment and limit.
    OutOfMemory,
    /// `frames` was zero or the alignment is not a power-of-two multiple of 4 KiB.
    BadRequest,
}

/// Bump allocator over at most `N` ranges.
#[derive(Debug, Clone)]
pub struct FrameAllocator<const N: usize> {
    /// Per range: the next free address and the end.
    free: [PhysRange; N],
    count: usize,
    allocated_bytes: u64,
}

impl<const N: usize> FrameAllocator<N> {
    /// Takes ownership of the given ranges (page-aligned, sorted, disjoint); extra
    /// ranges beyond `N` are ignored.
    pub fn new(ranges: impl IntoIterator<Item = PhysRange>) -> Self {
        let mut alloc = Self { free: [PhysRange::default(); N], count: 0, allocated_bytes: 0 };
        for r in ranges.into_iter().filter(|r| !r.is_empty()).take(N) {
            alloc.free[alloc.count] = r;
            alloc.count += 1;
        }
        alloc
    }

    /// Allocates `frames` contiguous frames aligned to `align` bytes, ending at or
    /// below `limit` (exclusive upper bound; `u64::MAX` for none). Searches from the
    /// lowest range up.
    pub fn allocate(&mut self, frames: u64, align: u64, limit: u64) -> Result<u64, AllocError> {
        if frames == 0 || !align.is_power_of_two() || align < PAGE_SIZE {
            return Err(AllocError::BadRequest);
        }
        let bytes = frames.checked_mul(PAGE_SIZE).ok_or(AllocError::BadRequest)?;
        for r in &mut self.free[..self.count] {
            let Some(start) = align_up(r.start, align) else { continue };
            let Some(end) = start.checked_add(bytes) else { continue };
            if end <= r.end && end <= limit {
                // Frames skipped for alignment stay lost: boot-time only, and small.
                r.start = end;
                self.allocated_bytes += bytes;
                return Ok(start);
            }
        }
        Err(AllocError::OutOfMemory)
    }

    /// One 4 KiB frame anywhere.
    pub fn allocate_frame(&mut self) -> Result<u64, AllocError> {
        self.allocate(1, PAGE_SIZE, u64::MAX)
    }

    /// Bytes still free.
    #[must_use]
    pub fn free_bytes(&self) -> u64 {
        self.free[..self.count].iter().map(PhysRange::len).sum()
    }

    /// Bytes handed out so far.
    #[must_use]
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc() -> FrameAllocator<4> {
        FrameAllocator::new([PhysRange::new(0x10_0000, 0x10_3000), PhysRange::new(0x20_0000, 0x60_0000)])
    }

    #[test]
    fn single_frames_come_in_order() {
        let mut a = alloc();
        assert_eq!(a.allocate_frame(), Ok(0x10_0000));
        assert_eq!(a.allocate_frame(), Ok(0x10_1000));
        assert_eq!(a.allocate_frame(), Ok(0x10_2000));
        assert_eq!(a.allocate_frame(), Ok(0x20_0000));
        assert_eq!(a.allocated_bytes(), 4 * PAGE_SIZE);
    }

    #[test]
    fn contiguous_runs_skip_small_ranges() {
        let mut a = alloc();
        assert_eq!(a.allocate(4, PAGE_SIZE, u64::MAX), Ok(0x20_0000));
        assert_eq!(a.allocate_frame(), Ok(0x10_0000));
    }

    #[test]
    fn alignment_is_honoured() {
        let mut a = alloc();
        a.allocate_frame().unwrap();
        let big = a.allocate(512, 0x20_0000, u64::MAX).unwrap();
        assert_eq!(big % 0x20_0000, 0);
        assert_eq!(big, 0x20_0000);
        assert_eq!(a.allocate(1, 0x20_0000, u64::MAX), Ok(0x40_0000));
    }

    #[test]
    fn limit_is_honoured() {
        let mut a = alloc();
        assert_eq!(a.allocate(4, PAGE_SIZE, 0x20_3000), Err(AllocError::OutOfMemory));
        assert_eq!(a.allocate(3, PAGE_SIZE, 0x20_3000), Ok(0x10_0000));
    }

    #[test]
    fn exhaustion_and_bad_requests() {
        let mut a = alloc();
        assert_eq!(a.allocate(0, PAGE_SIZE, u64::MAX), Err(AllocError::BadRequest));
        assert_eq!(a.allocate(1, 3000, u64::MAX), Err(AllocError::BadRequest));
        assert_eq!(a.allocate(u64::MAX, PAGE_SIZE, u64::MAX), Err(AllocError::BadRequest));
        let total = a.free_bytes() / PAGE_SIZE;
        assert_eq!(total, 3 + 1024);
        assert_eq!(a.allocate(1025, PAGE_SIZE, u64::MAX), Err(AllocError::OutOfMemory));
        for _ in 0..total {
            a.allocate_frame().unwrap();
        }
        assert_eq!(a.allocate_frame(), Err(AllocError::OutOfMemory));
        assert_eq!(a.free_bytes(), 0);
    }
}
