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

#[cfg(test)]
mod tests {
    use super::*;

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
