//! Normalising the firmware memory map into usable physical ranges.
//!
//! The bootloader hands over a list of regions; usable ones may be unsorted, adjacent
//! or unaligned. The frame allocator wants sorted, merged, page-aligned ranges, with low
//! memory (below 1 MiB) kept apart: the AP start-up trampoline must live there, and
//! firmware and legacy devices use parts of it.

use crate::PAGE_SIZE;

/// Physical address where "low memory" ends (real-mode addressable, 1 MiB).
pub const LOW_MEMORY_END: u64 = 0x10_0000;

/// A half-open physical range `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PhysRange {
    pub start: u64,
    pub end: u64,
}

impl PhysRange {
    #[must_use]
    pub const fn new(start: u64, end: u64) -> Self {
        Self { start, end }
    }

    #[must_use]
    pub const fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// Rounds `value` up to a multiple of `align` (a power of two); `None` on overflow.
#[must_use]
pub const fn align_up(value: u64, align: u64) -> Option<u64> {
    match value.checked_add(align - 1) {
        Some(v) => Some(v & !(align - 1)),
        None => None,
    }
}

/// Rounds `value` down to a multiple of `align` (a power of two).
#[must_use]
pub const fn align_down(value: u64, align: u64) -> u64 {
    value & !(align - 1)
}

/// Usable RAM, split into low memory (below 1 MiB) and the rest, each sorted,
/// merged and page-aligned. Fixed capacity: this runs before there is a heap.
#[derive(Debug, Clone)]
pub struct UsableMemory<const N: usize> {
    ranges: [PhysRange; N],
    count: usize,
    /// Usable bytes that did not fit (more than `N` disjoint ranges); reported, not used.
    pub dropped_bytes: u64,
}

impl<const N: usize> UsableMemory<N> {
    /// Builds the set from raw `(start, end)` usable regions, in any order, possibly
    /// overlapping or unaligned. Partial pages at either end are dropped.
    pub fn from_regions(regions: impl IntoIterator<Item = (u64, u64)>) -> Self {
        let mut set = Self { ranges: [PhysRange::default(); N], count: 0, dropped_bytes: 0 };
        for (start, end) in regions {
            let Some(start) = align_up(start, PAGE_SIZE) else { continue };
            let end = align_down(end, PAGE_SIZE);
            if end > start {
                set.insert(PhysRange::new(start, end));
            }
        }
        set
    }

    /// Inserts a range, keeping the list sorted and merged.
    fn insert(&mut self, mut new: PhysRange) {
        // Merge with every range that overlaps or touches `new`.
        let mut i = 0;
        while i < self.count {
            let r = self.ranges[i];
            if r.start <= new.end && new.start <= r.end {
                new.start = new.start.min(r.start);
                new.end = new.end.max(r.end);
                self.remove(i);
            } else {
                i += 1;
            }
        }
        let pos = self.ranges[..self.count].iter().position(|r| r.start > new.start).unwrap_or(self.count);
        if self.count == N {
            // Full: keep the larger ranges, drop the smallest one.
            let (smallest_idx, smallest) = self.ranges[..self.count]
                .iter()
                .enumerate()
                .min_by_key(|(_, r)| r.len())
                .map(|(i, r)| (i, *r))
                .unwrap_or((0, PhysRange::default()));
            if smallest.len() >= new.len() {
                self.dropped_bytes += new.len();
                return;
            }
            self.dropped_bytes += smallest.len();
            self.remove(smallest_idx);
            return self.insert(new);
        }
        self.ranges.copy_within(pos..self.count, pos + 1);
        self.ranges[pos] = new;
        self.count += 1;
    }

    fn remove(&mut self, idx: usize) {
        self.ranges.copy_within(idx + 1..self.count, idx);
        self.count -= 1;
    }

    /// All usable ranges, sorted by address.
    #[must_use]
    pub fn ranges(&self) -> &[PhysRange] {
        &self.ranges[..self.count]
    }

    /// Total usable bytes.
    #[must_use]
    pub fn total_bytes(&self) -> u64 {
        self.ranges().iter().map(PhysRange::len).sum()
    }

    /// The usable ranges above 1 MiB, clipped at 1 MiB.
    pub fn above_low_memory(&self) -> impl Iterator<Item = PhysRange> + '_ {
        self.ranges()
            .iter()
            .filter(|r| r.end > LOW_MEMORY_END)
            .map(|r| PhysRange::new(r.start.max(LOW_MEMORY_END), r.end))
    }

    /// The highest usable page below 1 MiB at or above `min`, for the AP trampoline
    /// (its page number becomes the SIPI vector, so it must be below 1 MiB).
    #[must_use]
    pub fn low_page(&self, min: u64) -> Option<u64> {
        self.ranges()
            .iter()
            .filter(|r| r.start < LOW_MEMORY_END)
            .filter_map(|r| {
                let end = r.end.min(LOW_MEMORY_END);
                let page = end.checked_sub(PAGE_SIZE)?;
                (page >= r.start.max(min)).then_some(page)
            })
            .max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_sorts_and_aligns() {
        let m = UsableMemory::<8>::from_regions([
            (0x20_0000, 0x30_0000),
            (0x1000, 0x9_f000),
            (0x10_0000, 0x20_0000),
            (0x40_0123, 0x50_0fff),
        ]);
        assert_eq!(
            m.ranges(),
            &[
                PhysRange::new(0x1000, 0x9_f000),
                PhysRange::new(0x10_0000, 0x30_0000),
                PhysRange::new(0x40_1000, 0x50_0000)
            ]
        );
        assert_eq!(m.total_bytes(), 0x9e000 + 0x20_0000 + 0xff000);
    }

    #[test]
    fn overlapping_regions_merge() {
        let m =
            UsableMemory::<4>::from_regions([(0x10_0000, 0x30_0000), (0x20_0000, 0x40_0000), (0x3f_f000, 0x41_0000)]);
        assert_eq!(m.ranges(), &[PhysRange::new(0x10_0000, 0x41_0000)]);
    }

    #[test]
    fn sub_page_regions_are_ignored() {
        let m = UsableMemory::<4>::from_regions([(0x1001, 0x1fff), (0x5000, 0x5000), (0x9000, 0x8000)]);
        assert!(m.ranges().is_empty());
    }

    #[test]
    fn full_set_drops_smallest() {
        let m =
            UsableMemory::<2>::from_regions([(0x10_0000, 0x10_1000), (0x20_0000, 0x30_0000), (0x40_0000, 0x50_0000)]);
        assert_eq!(m.ranges(), &[PhysRange::new(0x20_0000, 0x30_0000), PhysRange::new(0x40_0000, 0x50_0000)]);
        assert_eq!(m.dropped_bytes, 0x1000);
    }

    #[test]
    fn low_memory_is_split_off() {
        let m = UsableMemory::<4>::from_regions([(0x0, 0x9_f000), (0xf_0000, 0x20_0000)]);
        let high: alloc::vec::Vec<_> = m.above_low_memory().collect();
        assert_eq!(high, [PhysRange::new(0x10_0000, 0x20_0000)]);
        assert_eq!(m.low_page(0x1000), Some(0xf_f000));
        let only_low = UsableMemory::<4>::from_regions([(0x0, 0x9_f000)]);
        assert_eq!(only_low.low_page(0x1000), Some(0x9_e000));
        assert_eq!(only_low.low_page(0x9_f000), None);
    }

    #[test]
    fn align_helpers() {
        assert_eq!(align_up(0x1001, 0x1000), Some(0x2000));
        assert_eq!(align_up(u64::MAX, 0x1000), None);
        assert_eq!(align_down(0x1fff, 0x1000), 0x1000);
    }
}
