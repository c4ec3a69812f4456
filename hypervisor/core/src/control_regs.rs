//! MOV to CR0 as the CPU performs it, for the writes the hypervisor emulates (those
//! that touch a bit of the CR0 guest/host mask; SDM Vol. 3C 26.1.3).
//!
//! Besides the checks that raise #GP (SDM Vol. 2B "MOV—Move to/from Control
//! Registers", Vol. 3A 2.5), an emulated write must do what the CPU does when paging
//! is switched while EFER.LME is set: activate or deactivate IA-32e mode by setting or
//! clearing EFER.LMA (SDM Vol. 3A 10.8.5 "Initializing IA-32e Mode"). In VMX non-root
//! operation that state also lives in the "IA-32e mode guest" VM-entry control, which
//! must equal EFER.LMA on the next entry (SDM 27.3.1.1).

const CR0_PE: u64 = 1 << 0;
const CR0_NW: u64 = 1 << 29;
const CR0_CD: u64 = 1 << 30;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// The state after an emulated MOV to CR0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cr0Write {
    /// The new CR0 as the guest sees it.
    pub cr0: u64,
    /// The new IA32_EFER (LMA updated).
    pub efer: u64,
    /// The new value of the "IA-32e mode guest" VM-entry control (= EFER.LMA).
    pub ia32e_mode: bool,
}

/// The guest must see #GP(0) instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeneralProtection;

/// Emulates MOV to CR0 of `value`, with the guest's current CR0 (`old`), IA32_EFER,
/// CR4 and whether it runs 64-bit code (CS.L).
pub fn mov_to_cr0(old: u64, value: u64, efer: u64, cr4: u64, cs_long: bool) -> Result<Cr0Write, GeneralProtection> {
    if value >> 32 != 0 || (value & CR0_PG != 0 && value & CR0_PE == 0) || (value & CR0_NW != 0 && value & CR0_CD == 0)
    {
        return Err(GeneralProtection);
    }
    let mut efer = efer;
    let enabling_paging = old & CR0_PG == 0 && value & CR0_PG != 0;
    let disabling_paging = old & CR0_PG != 0 && value & CR0_PG == 0;
    if enabling_paging && efer & EFER_LME != 0 {
        if cr4 & CR4_PAE == 0 {
            return Err(GeneralProtection);
        }
        efer |= EFER_LMA;
    }
    if disabling_paging && efer & EFER_LMA != 0 {
        // Leaving IA-32e mode is only legal from compatibility mode.
        if cs_long {
            return Err(GeneralProtection);
        }
        efer &= !EFER_LMA;
    }
    Ok(Cr0Write { cr0: value, efer, ia32e_mode: efer & EFER_LMA != 0 })
}

/// CR4 bits whose change, with PAE paging in use after the write, reloads the PDPTEs:
/// PSE (4), PAE (5), PGE (7), SMEP (20). CR0: PG, CD, NW. SDM Vol. 3A 4.4.1.
const CR4_PDPTE_RELOAD: u64 = (1 << 4) | (1 << 5) | (1 << 7) | (1 << 20);
const CR0_PDPTE_RELOAD: u64 = CR0_PG | CR0_CD | CR0_NW;

/// Whether CR0, CR4 and IA32_EFER select PAE paging (SDM 4.1.1: CR0.PG = 1,
/// CR4.PAE = 1, EFER.LME = 0, hence not IA-32e mode).
#[must_use]
pub const fn pae_paging(cr0: u64, cr4: u64, efer: u64) -> bool {
    cr0 & CR0_PG != 0 && cr4 & CR4_PAE != 0 && efer & EFER_LMA == 0
}

/// Whether an emulated MOV to CR0 or CR4 that takes the guest from `before` to `after`
/// (each `(cr0, cr4, efer)`) makes the processor load the four PDPTEs from the PDPT at
/// CR3 (SDM 4.4.1): PAE paging is in use after it, and it changed CR0.CD, NW or PG, or
/// CR4.PAE, PGE, PSE or SMEP. With EPT the loaded PDPTEs go to the VMCS's guest
/// PDPTE fields, which the next VM entry loads (SDM Vol. 3C, VM entries, "Loading Guest
/// State").
#[must_use]
pub const fn loads_pdptes(before: (u64, u64, u64), after: (u64, u64, u64)) -> bool {
    pae_paging(after.0, after.1, after.2)
        && ((before.0 ^ after.0) & CR0_PDPTE_RELOAD != 0 || (before.1 ^ after.1) & CR4_PDPTE_RELOAD != 0)
}

/// The guest-physical address of the PAE page-directory-pointer table: CR3 bits 31:5
/// (SDM 4.4.1).
#[must_use]
pub const fn pdpt_address(cr3: u64) -> u64 {
    cr3 & 0xffff_ffe0
}

/// Checks the four PDPTEs read at [`pdpt_address`] as the processor does when it loads
/// them (SDM 4.4.1, table 4-8): a present PDPTE must have bits 2:1, 8:5 and
/// MAXPHYADDR (`phys_bits`; 52 when outside 32..=52) through 63 clear, or the MOV
/// raises #GP(0) and changes nothing.
pub fn check_pdptes(pdptes: [u64; 4], phys_bits: u8) -> Result<[u64; 4], GeneralProtection> {
    let reserved = crate::guest_paging::pdpte_reserved_bits(phys_bits);
    if pdptes.iter().any(|&e| e & 1 != 0 && e & reserved != 0) {
        return Err(GeneralProtection);
    }
    Ok(pdptes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pdptes_load_when_pae_paging_starts_or_its_bits_change() {
        let (off, on) = (PROTECTED, PROTECTED | CR0_PG);
        // Paging enabled with CR4.PAE, EFER.LME clear: PAE paging, load.
        assert!(loads_pdptes((off, CR4_PAE, 0), (on, CR4_PAE, 0)));
        // CR4.PAE set while paging is on (32-bit to PAE paging), or PGE toggled.
        assert!(loads_pdptes((on, 0, 0), (on, CR4_PAE, 0)));
        assert!(loads_pdptes((on, CR4_PAE, 0), (on, CR4_PAE | 1 << 7, 0)));
        // Nothing relevant changed (WP only), 32-bit paging, IA-32e mode, paging off.
        assert!(!loads_pdptes((on, CR4_PAE, 0), (on | 1 << 16, CR4_PAE, 0)));
        assert!(!loads_pdptes((off, 0, 0), (on, 0, 0)));
        assert!(!loads_pdptes((off, CR4_PAE, EFER_LME), (on, CR4_PAE, EFER_LME | EFER_LMA)));
        assert!(!loads_pdptes((on, CR4_PAE, 0), (off, CR4_PAE, 0)));
        assert!(pae_paging(on, CR4_PAE, 0) && !pae_paging(on, CR4_PAE, EFER_LME | EFER_LMA));
        assert_eq!(pdpt_address(0x1234_5678_9abc_def8), 0x9abc_dee0);
    }

    #[test]
    fn pdptes_with_reserved_bits_raise_gp() {
        let good = [0x1000 | 1, 0, 0x3000 | 1 | 1 << 3 | 1 << 4, 0xffff_ffff_ffff_fffe];
        assert_eq!(check_pdptes(good, 36), Ok(good), "PWT/PCD allowed; not-present entries unchecked");
        for bad in [1 << 1, 1 << 2, 1 << 5, 1 << 8, 1 << 36, 1 << 63] {
            assert_eq!(check_pdptes([0x1000 | 1 | bad, 0, 0, 0], 36), Err(GeneralProtection), "{bad:#x}");
        }
        assert_eq!(check_pdptes([0x10_0000_0000 | 1, 0, 0, 0], 46), Ok([0x10_0000_0000 | 1, 0, 0, 0]));
    }

    const PROTECTED: u64 = 0x11;
    const LONG: u64 = 0x8001_0033;

    #[test]
    fn paging_with_lme_activates_ia32e_mode() {
        let w = mov_to_cr0(PROTECTED, LONG, EFER_LME | 1 << 11, CR4_PAE, false).unwrap();
        assert_eq!(w, Cr0Write { cr0: LONG, efer: EFER_LME | EFER_LMA | 1 << 11, ia32e_mode: true });
    }

    #[test]
    fn paging_without_lme_stays_legacy() {
        let w = mov_to_cr0(PROTECTED, LONG, 0, 0, false).unwrap();
        assert_eq!(w, Cr0Write { cr0: LONG, efer: 0, ia32e_mode: false });
    }

    #[test]
    fn long_mode_needs_pae() {
        assert_eq!(mov_to_cr0(PROTECTED, LONG, EFER_LME, 0, false), Err(GeneralProtection));
    }

    #[test]
    fn leaving_long_mode_from_compatibility_mode() {
        let w = mov_to_cr0(LONG, PROTECTED, EFER_LME | EFER_LMA, CR4_PAE, false).unwrap();
        assert_eq!(w, Cr0Write { cr0: PROTECTED, efer: EFER_LME, ia32e_mode: false });
        assert_eq!(mov_to_cr0(LONG, PROTECTED, EFER_LME | EFER_LMA, CR4_PAE, true), Err(GeneralProtection));
    }

    #[test]
    fn writes_that_fault() {
        assert_eq!(mov_to_cr0(PROTECTED, CR0_PG, 0, 0, false), Err(GeneralProtection), "PG without PE");
        assert_eq!(mov_to_cr0(PROTECTED, CR0_NW | CR0_PE, 0, 0, false), Err(GeneralProtection), "NW without CD");
        assert_eq!(mov_to_cr0(PROTECTED, 1 << 32 | CR0_PE, 0, 0, false), Err(GeneralProtection), "bits 63:32");
        assert!(mov_to_cr0(PROTECTED, CR0_CD | CR0_NW | CR0_PE, 0, 0, false).is_ok());
    }

    #[test]
    fn unchanged_paging_keeps_efer() {
        let efer = EFER_LME | EFER_LMA;
        assert_eq!(mov_to_cr0(LONG, LONG | CR0_CD, efer, CR4_PAE, true).unwrap().efer, efer);
    }
}
