//! Translating a guest's linear addresses through the guest's own page tables, for
//! instructions the hypervisor completes on the guest's behalf (string I/O now; MMIO
//! instruction fetch later).
//!
//! Supported: paging off (linear = physical) and 4-level IA-32e paging with 4 KiB,
//! 2 MiB and 1 GiB pages (SDM Vol. 3 4.5). 32-bit and PAE paging report
//! [`WalkError::UnsupportedMode`]. Every table read goes through a callback that fails
//! for addresses outside the guest's RAM, so a hostile CR3 or entry cannot make the
//! hypervisor read anything else.

/// Why a translation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalkError {
    /// A page fault the guest should see, with its error code (SDM 4.7).
    PageFault { error_code: u32 },
    /// A paging-structure entry lies outside the guest's RAM.
    TableOutsideRam,
    /// A paging mode this walker does not handle.
    UnsupportedMode,
}

/// The guest's paging registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagingState {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
}

const CR0_PG: u64 = 1 << 31;
const CR0_WP: u64 = 1 << 16;
const CR4_PAE: u64 = 1 << 5;
const EFER_LMA: u64 = 1 << 10;
const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const LARGE: u64 = 1 << 7;
const ADDR: u64 = 0x000f_ffff_ffff_f000;
/// Page-fault error code bits: present (0), write (1).
const PF_PRESENT: u32 = 1 << 0;
const PF_WRITE: u32 = 1 << 1;

/// Translates `linear` for a supervisor access (`write` or read). `read_entry(gpa)`
/// returns the qword at guest-physical `gpa`, or `None` outside RAM.
pub fn translate(
    state: &PagingState,
    linear: u64,
    write: bool,
    read_entry: impl Fn(u64) -> Option<u64>,
) -> Result<u64, WalkError> {
    if state.cr0 & CR0_PG == 0 {
        return Ok(linear & 0xffff_ffff);
    }
    if state.efer & EFER_LMA == 0 || state.cr4 & CR4_PAE == 0 {
        return Err(WalkError::UnsupportedMode);
    }
    let write_code = if write { PF_WRITE } else { 0 };
    let mut table = state.cr3 & ADDR;
    let mut writable = true;
    for level in (1..=4u32).rev() {
        let shift = 12 + 9 * (level - 1);
        let index = (linear >> shift) & 0x1ff;
        let entry = read_entry(table + index * 8).ok_or(WalkError::TableOutsideRam)?;
        if entry & PRESENT == 0 {
            return Err(WalkError::PageFault { error_code: write_code });
        }
        writable &= entry & WRITABLE != 0;
        let leaf = level == 1 || (matches!(level, 2 | 3) && entry & LARGE != 0);
        if leaf {
            if write && !writable && state.cr0 & CR0_WP != 0 {
                return Err(WalkError::PageFault { error_code: write_code | PF_PRESENT });
            }
            let size = 1u64 << shift;
            return Ok((entry & ADDR & !(size - 1)) | (linear & (size - 1)));
        }
        table = entry & ADDR;
    }
    Err(WalkError::UnsupportedMode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;

    const LONG: PagingState =
        PagingState { cr0: CR0_PG | CR0_WP | 1, cr3: 0x1000, cr4: CR4_PAE, efer: EFER_LMA | (1 << 8) };

    fn memory(entries: &[(u64, u64)]) -> BTreeMap<u64, u64> {
        entries.iter().copied().collect()
    }

    fn walk(mem: &BTreeMap<u64, u64>, linear: u64, write: bool) -> Result<u64, WalkError> {
        translate(&LONG, linear, write, |gpa| if gpa < 0x100_0000 { Some(*mem.get(&gpa).unwrap_or(&0)) } else { None })
    }

    #[test]
    fn four_kib_two_mib_and_one_gib_pages() {
        // PML4[0] -> 0x2000; PDPT[0] -> PD 0x3000; PDPT[1] = 1 GiB page at 0x4000_0000;
        // PD[0] = 2 MiB page at 0x20_0000; PD[1] -> PT 0x4000; PT[3] = 0x9000.
        let mem = memory(&[
            (0x1000, 0x2000 | 3),
            (0x2000, 0x3000 | 3),
            (0x2008, 0x4000_0000 | 3 | LARGE),
            (0x3000, 0x20_0000 | 3 | LARGE),
            (0x3008, 0x4000 | 3),
            (0x4000 + 3 * 8, 0x9000 | 1),
        ]);
        assert_eq!(walk(&mem, 0x1234, false), Ok(0x20_1234));
        assert_eq!(walk(&mem, 0x20_3abc, false), Ok(0x9abc));
        assert_eq!(walk(&mem, 0x4123_4567, false), Ok(0x4123_4567));
        // The 4 KiB page is read-only and CR0.WP is set.
        assert_eq!(walk(&mem, 0x20_3000, true), Err(WalkError::PageFault { error_code: 3 }));
        // Not present.
        assert_eq!(walk(&mem, 0x20_5000, true), Err(WalkError::PageFault { error_code: 2 }));
        assert_eq!(walk(&mem, 0x80_0000_0000, false), Err(WalkError::PageFault { error_code: 0 }));
    }

    #[test]
    fn tables_outside_ram_and_other_modes() {
        let mem = memory(&[(0x1000, 0x7fff_f000 | 3)]);
        assert_eq!(walk(&mem, 0, false), Err(WalkError::TableOutsideRam));
        let off = PagingState { cr0: 1, ..LONG };
        assert_eq!(translate(&off, 0x1234_5678, true, |_| None), Ok(0x1234_5678));
        let legacy = PagingState { efer: 0, ..LONG };
        assert_eq!(translate(&legacy, 0, false, |_| None), Err(WalkError::UnsupportedMode));
    }

    #[test]
    fn never_panics_on_random_tables() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            let mut mem = BTreeMap::new();
            for _ in 0..32 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                mem.insert((seed % 0x8000) & !7, seed.rotate_left(17));
            }
            let _ = walk(&mem, seed, seed & 1 == 0);
        }
    }
}
