//! APIC virtualization for guests in x2APIC mode (SDM Vol. 3C chapter 30): which x2APIC
//! MSR accesses the CPU may complete from the virtual-APIC page, the page's layout, and
//! the hand-over of the pending-interrupt state between the hypervisor's LAPIC model
//! (`crate::vlapic`) and the page.
//!
//! With "virtualize x2APIC mode", "APIC-register virtualization" and "virtual-interrupt
//! delivery", the CPU owns the guest's interrupt-priority state while the guest runs:
//! VIRR, VISR, VTPR and VPPR in the virtual-APIC page, RVI and SVI in the guest
//! interrupt status (SDM 30.1.1, 30.2). It delivers pending interrupts, virtualizes EOI,
//! TPR and self-IPI writes, and serves the register reads listed in
//! [`VIRTUALIZED_READS`] from the page, all without VM exits. The hypervisor's model
//! keeps everything else (timer, LVTs, SVR, LDR, ICR, ESR) and mirrors it into the page
//! after every write, and moves newly accepted interrupts (timer, IPIs, IOAPIC) into
//! VIRR before each VM entry.

use crate::virt_msr::MsrBitmap;

/// Byte offsets in the virtual-APIC page, as in the xAPIC page (SDM 30.1, table 11-1).
pub mod page {
    pub const TPR: usize = 0x080;
    pub const PPR: usize = 0x0A0;
    pub const ISR: usize = 0x100;
    pub const TMR: usize = 0x180;
    pub const IRR: usize = 0x200;
}

/// x2APIC MSRs whose RDMSR the CPU completes from the virtual-APIC page when
/// "APIC-register virtualization" is on (SDM 30.5, "Virtualizing MSR-Based APIC
/// Accesses"): ID, version, TPR, PPR, LDR, SVR, ISR0-7, TMR0-7, IRR0-7, ESR, ICR, LVT
/// timer..error, initial count, divide configuration. Any other RDMSR in 0x800-0x8FF
/// would read the real MSR, so it must exit; the current count (0x839) in particular is
/// the model's, and LVT CMCI (0x82F) is absent from the virtual LAPIC (its #GP comes
/// from the model).
pub const VIRTUALIZED_READS: [(u32, u32); 8] = [
    (0x802, 0x803),
    (0x808, 0x808),
    (0x80a, 0x80a),
    (0x80d, 0x80d),
    (0x80f, 0x828),
    (0x830, 0x830),
    (0x832, 0x838),
    (0x83e, 0x83e),
];

/// x2APIC MSRs whose WRMSR the CPU virtualizes with virtual-interrupt delivery (SDM
/// 30.5): TPR, EOI and SELF IPI. Every other write exits to the model.
pub const VIRTUALIZED_WRITES: [u32; 3] = [0x808, 0x80b, 0x83f];

/// The MSR bitmap for a vCPU with APIC virtualization: `base` (the bitmap of
/// `virt_msr::policy`) with the reads and writes above passed to the CPU.
#[must_use]
pub fn msr_bitmap(base: &MsrBitmap) -> MsrBitmap {
    let mut b = base.clone();
    for (first, last) in VIRTUALIZED_READS {
        for msr in first..=last {
            b.set_read_intercept(msr, false);
        }
    }
    for msr in VIRTUALIZED_WRITES {
        b.set_write_intercept(msr, false);
    }
    b
}

/// Reads the 256-bit register (VIRR, VISR, VTMR) at `offset` of a virtual-APIC page.
#[must_use]
pub fn read_bits(page: &[u32; 1024], offset: usize) -> [u32; 8] {
    core::array::from_fn(|i| page[(offset + 16 * i) / 4])
}

/// Writes the 256-bit register at `offset` of a virtual-APIC page.
pub fn write_bits(page: &mut [u32; 1024], offset: usize, bits: &[u32; 8]) {
    for (i, word) in bits.iter().enumerate() {
        page[(offset + 16 * i) / 4] = *word;
    }
}

/// The highest vector set in a 256-bit register, 0 when none (as RVI and SVI hold it).
#[must_use]
pub fn highest(bits: &[u32; 8]) -> u8 {
    crate::vlapic::highest_bit(bits).unwrap_or(0)
}

/// Whether a pending vector `rvi` is delivered at priority `ppr` (SDM 30.2.1).
#[must_use]
pub fn deliverable(rvi: u8, ppr: u8) -> bool {
    rvi >> 4 > ppr >> 4
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virt_msr::MsrBitmap;

    #[test]
    fn only_the_virtualized_accesses_pass() {
        let b = msr_bitmap(&MsrBitmap::for_policy());
        for msr in 0x800..=0x8ff {
            let read_passes = VIRTUALIZED_READS.iter().any(|&(a, z)| (a..=z).contains(&msr));
            assert_eq!(b.intercepts_read(msr), !read_passes, "read {msr:#x}");
            assert_eq!(b.intercepts_write(msr), !VIRTUALIZED_WRITES.contains(&msr), "write {msr:#x}");
        }
        assert!(b.intercepts_read(0x839), "the current count is the model's");
        assert!(b.intercepts_read(0x80b) && b.intercepts_read(0x83f), "write-only registers");
        assert!(b.intercepts_write(0x830), "ICR writes go to the model (IPIs)");
        // Outside the x2APIC range nothing changes.
        let base = MsrBitmap::for_policy();
        for msr in [0x1b, 0x6e0, 0xc000_0080] {
            assert_eq!(b.intercepts_read(msr), base.intercepts_read(msr));
            assert_eq!(b.intercepts_write(msr), base.intercepts_write(msr));
        }
    }

    #[test]
    fn page_bits_round_trip() {
        let mut page = [0u32; 1024];
        let mut bits = [0u32; 8];
        bits[1] = 1 << 5; // vector 37
        bits[7] = 1 << 31; // vector 255
        write_bits(&mut page, page::IRR, &bits);
        assert_eq!(page[0x210 / 4], 1 << 5);
        assert_eq!(page[0x270 / 4], 1 << 31);
        assert_eq!(read_bits(&page, page::IRR), bits);
        assert_eq!(highest(&bits), 255);
        assert_eq!(highest(&[0; 8]), 0);
    }

    #[test]
    fn priority_rules() {
        use crate::vlapic::processor_priority as ppr;
        assert_eq!(ppr(0x50, 0x65), 0x60);
        assert_eq!(ppr(0x50, 0x45), 0x50);
        assert!(!deliverable(0x45, 0x50));
        assert!(deliverable(0x65, 0x50));
        assert!(!deliverable(0x55, 0x50), "same class waits");
    }
}
