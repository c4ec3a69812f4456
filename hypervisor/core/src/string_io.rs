//! The architectural rules for completing a string I/O instruction (INS/OUTS, with or
//! without REP) on the guest's behalf: which address size and segment it uses, the
//! linear address of each element, and how rCX, rSI and rDI change.
//!
//! - Address size (SDM Vol. 1 3.6, table 3-4; Vol. 2B INS/INSB/INSW/INSD and
//!   OUTS/OUTSB/OUTSW/OUTSD): 16, 32 or 64 bits from the mode and an address-size (0x67)
//!   prefix. The count is CX, ECX or RCX, the offset SI/ESI/RSI or DI/EDI/RDI, and their
//!   updates wrap within that size. A 32-bit result zero-extends into the 64-bit
//!   register and a 16-bit one keeps the upper bits, as any register write does (SDM
//!   Vol. 1 3.4.1.1, "General-Purpose Registers in 64-Bit Mode").
//! - Segment: INS always writes ES:rDI (no override); OUTS reads DS:rSI unless a
//!   segment-override prefix names another segment. In 64-bit mode the bases of CS, DS,
//!   ES and SS are treated as 0; only FS and GS have a base (SDM Vol. 1 3.4.2.1,
//!   "Segment Registers in 64-Bit Mode").
//! - Both come from the VM-exit instruction-information field when the processor
//!   provides it for INS/OUTS (IA32_VMX_BASIC bit 54, SDM Vol. 3D appendix A.1 "Basic
//!   VMX Information"), laid out as in SDM Vol. 3C "VM-Exit Instruction-Information
//!   Field" (INS/OUTS: bits 9:7 address size, bits 17:15 segment register); otherwise
//!   from the instruction's prefixes ([`from_instruction_bytes`]).

use crate::mmio_decode::{CpuMode, Segment};

/// Address size and segment of one INS/OUTS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StringIoForm {
    /// Address size in bytes: 2, 4 or 8.
    pub address_size: u8,
    /// The segment of the memory operand (ES for INS).
    pub segment: Segment,
}

/// IA32_VMX_BASIC bit 54: the VM-exit instruction-information field is valid for
/// INS/OUTS exits (SDM Vol. 3D appendix A.1, "Basic VMX Information").
pub const BASIC_INS_OUTS_INFO: u64 = 1 << 54;

/// RFLAGS.DF (SDM Vol. 1 3.4.3.3): string operations count down.
pub const RFLAGS_DF: u64 = 1 << 10;

fn segment_from_code(code: u32) -> Option<Segment> {
    Some(match code {
        0 => Segment::Es,
        1 => Segment::Cs,
        2 => Segment::Ss,
        3 => Segment::Ds,
        4 => Segment::Fs,
        5 => Segment::Gs,
        _ => return None,
    })
}

/// Decodes the VM-exit instruction-information field of an INS (`is_in`) or OUTS exit
/// (SDM Vol. 3C "VM-Exit Instruction-Information Field", the INS/OUTS table): bits 9:7
/// address size (0 = 16-bit, 1 = 32-bit, 2 = 64-bit), bits 17:15 segment register
/// (OUTS only; INS always uses ES). `None` for an undefined encoding.
#[must_use]
pub fn from_instruction_info(info: u32, is_in: bool) -> Option<StringIoForm> {
    let address_size = match (info >> 7) & 7 {
        0 => 2,
        1 => 4,
        2 => 8,
        _ => return None,
    };
    let segment = if is_in { Segment::Es } else { segment_from_code((info >> 15) & 7)? };
    Some(StringIoForm { address_size, segment })
}

/// Why [`from_instruction_bytes`] found no INS/OUTS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefixError {
    /// The bytes end before the opcode: the instruction continues in bytes that were
    /// not fetched.
    Truncated,
    /// The opcode is not the INS/OUTS the exit reported (the code changed under the
    /// guest), or more than 15 bytes of prefixes.
    NotThisInstruction,
}

/// INS opcodes 6C (byte) and 6D (word/dword), OUTS 6E and 6F (SDM Vol. 2D table A-2).
const OP_INSB: u8 = 0x6c;
const OP_INS: u8 = 0x6d;
const OP_OUTSB: u8 = 0x6e;
const OP_OUTS: u8 = 0x6f;

/// The address size and segment of the INS (`is_in`) or OUTS at the start of `bytes`,
/// from its legacy prefixes (SDM Vol. 2A 2.1.1): 0x67 toggles the address size of
/// `mode`; the last segment override (26, 2E, 36, 3E, 64, 65) names the segment of
/// OUTS; in 64-bit mode an ES/CS/SS/DS override changes nothing (their bases are 0),
/// and a REX prefix (40-4F) is skipped.
pub fn from_instruction_bytes(bytes: &[u8], mode: CpuMode, is_in: bool) -> Result<StringIoForm, PrefixError> {
    let mut address_override = false;
    let mut segment = Segment::Ds;
    for &byte in bytes.iter().take(crate::mmio_decode::MAX_INSTRUCTION_LEN) {
        let over = match byte {
            0x67 => {
                address_override = true;
                None
            }
            0x66 | 0xf0 | 0xf2 | 0xf3 => None,
            0x40..=0x4f if mode == CpuMode::Long64 => None,
            0x26 => Some(Segment::Es),
            0x2e => Some(Segment::Cs),
            0x36 => Some(Segment::Ss),
            0x3e => Some(Segment::Ds),
            0x64 => Some(Segment::Fs),
            0x65 => Some(Segment::Gs),
            OP_INSB | OP_INS if is_in => {
                return Ok(StringIoForm { address_size: address_size(mode, address_override), segment: Segment::Es })
            }
            OP_OUTSB | OP_OUTS if !is_in => {
                return Ok(StringIoForm { address_size: address_size(mode, address_override), segment })
            }
            _ => return Err(PrefixError::NotThisInstruction),
        };
        if let Some(s) = over {
            if mode != CpuMode::Long64 || matches!(s, Segment::Fs | Segment::Gs) {
                segment = s;
            }
        }
    }
    if bytes.len() >= crate::mmio_decode::MAX_INSTRUCTION_LEN {
        Err(PrefixError::NotThisInstruction)
    } else {
        Err(PrefixError::Truncated)
    }
}

/// The address size in bytes of `mode` after an optional 0x67 prefix (SDM Vol. 1 table
/// 3-4).
#[must_use]
pub const fn address_size(mode: CpuMode, override_prefix: bool) -> u8 {
    match (mode, override_prefix) {
        (CpuMode::Real16 | CpuMode::Protected16, false) | (CpuMode::Protected32, true) => 2,
        (CpuMode::Real16 | CpuMode::Protected16, true) | (CpuMode::Protected32, false) | (CpuMode::Long64, true) => 4,
        (CpuMode::Long64, false) => 8,
    }
}

/// The mask of an `address_size`-byte address (2, 4, else 8).
#[must_use]
pub const fn address_mask(address_size: u8) -> u64 {
    match address_size {
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

/// Whether the base of `segment` takes part in address translation in `mode`: always
/// outside 64-bit mode, only for FS and GS in it.
#[must_use]
pub const fn segment_base_applies(segment: Segment, mode: CpuMode) -> bool {
    !matches!(mode, CpuMode::Long64) || matches!(segment, Segment::Fs | Segment::Gs)
}

/// `register` written with `value` as an `address_size`-byte register (SDM Vol. 1
/// 3.4.1.1): 64-bit replaces it, 32-bit zero-extends, 16-bit keeps bits 63:16.
#[must_use]
pub const fn write_sized(register: u64, value: u64, address_size: u8) -> u64 {
    match address_size {
        2 => (register & !0xffff) | (value & 0xffff),
        4 => value & 0xffff_ffff,
        _ => value,
    }
}

/// The general-purpose registers a string I/O instruction uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StringRegs {
    pub rcx: u64,
    pub rsi: u64,
    pub rdi: u64,
}

/// One INS/OUTS as the guest executes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StringIo {
    pub form: StringIoForm,
    /// INS (else OUTS).
    pub is_in: bool,
    pub rep: bool,
    /// Element size in bytes (1, 2 or 4).
    pub size: u8,
    /// RFLAGS.DF: the offset moves down.
    pub down: bool,
    /// The processor mode (64-bit mode has no 32-bit wrap of linear addresses).
    pub mode: CpuMode,
}

impl StringIo {
    /// How many elements the instruction transfers from `regs`: the count register of
    /// the address size (rCX masked) with REP, else 1.
    #[must_use]
    pub const fn count(&self, regs: &StringRegs) -> u64 {
        if self.rep {
            regs.rcx & address_mask(self.form.address_size)
        } else {
            1
        }
    }

    /// The offset register: rDI for INS, rSI for OUTS, masked to the address size.
    #[must_use]
    pub const fn offset(&self, regs: &StringRegs) -> u64 {
        let register = if self.is_in { regs.rdi } else { regs.rsi };
        register & address_mask(self.form.address_size)
    }

    /// The linear address of byte `byte` of the next element, with `segment_base` the
    /// base of [`StringIoForm::segment`] (ignored when it does not apply, see
    /// [`segment_base_applies`]). Outside 64-bit mode linear addresses are 32 bits.
    #[must_use]
    pub const fn linear(&self, regs: &StringRegs, segment_base: u64, byte: u64) -> u64 {
        let base = if segment_base_applies(self.form.segment, self.mode) { segment_base } else { 0 };
        let linear = base.wrapping_add(self.offset(regs)).wrapping_add(byte);
        match self.mode {
            CpuMode::Long64 => linear,
            _ => linear & 0xffff_ffff,
        }
    }

    /// The registers after one element: the offset register moves by the element size
    /// (down with DF) and, with REP, the count register goes down by one, both as
    /// writes of the address size (wrapping within it).
    #[must_use]
    pub const fn after_element(&self, regs: StringRegs) -> StringRegs {
        let size = self.form.address_size;
        let step = if self.down { (self.size as u64).wrapping_neg() } else { self.size as u64 };
        let mut next = regs;
        if self.is_in {
            next.rdi = write_sized(regs.rdi, regs.rdi.wrapping_add(step), size);
        } else {
            next.rsi = write_sized(regs.rsi, regs.rsi.wrapping_add(step), size);
        }
        if self.rep {
            next.rcx = write_sized(regs.rcx, regs.rcx.wrapping_sub(1), size);
        }
        next
    }
}

/// The current privilege level from the guest's SS access rights (SS.DPL, bits 6:5;
/// SDM Vol. 3C "Guest Register State": the CPL is SS.DPL).
#[must_use]
pub const fn cpl(ss_access_rights: u64) -> u8 {
    ((ss_access_rights >> 5) & 3) as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn form(address_size: u8, segment: Segment) -> StringIoForm {
        StringIoForm { address_size, segment }
    }

    fn io(address_size: u8, is_in: bool, rep: bool, size: u8, down: bool) -> StringIo {
        let segment = if is_in { Segment::Es } else { Segment::Ds };
        StringIo { form: form(address_size, segment), is_in, rep, size, down, mode: CpuMode::Long64 }
    }

    #[test]
    fn instruction_info_fields() {
        // OUTS, 64-bit addresses, DS.
        assert_eq!(from_instruction_info((2 << 7) | (3 << 15), false), Some(form(8, Segment::Ds)));
        // OUTS with a GS override and a 0x67 prefix in 64-bit mode.
        assert_eq!(from_instruction_info((1 << 7) | (5 << 15), false), Some(form(4, Segment::Gs)));
        // INS ignores bits 17:15 (undefined for INS): always ES.
        assert_eq!(from_instruction_info(7 << 15, true), Some(form(2, Segment::Es)));
        assert_eq!(from_instruction_info(3 << 7, true), None);
        assert_eq!(from_instruction_info((2 << 7) | (6 << 15), false), None);
    }

    #[test]
    fn prefixes_give_address_size_and_segment() {
        use CpuMode::*;
        assert_eq!(from_instruction_bytes(&[0xf3, 0x6c], Long64, true), Ok(form(8, Segment::Es)));
        assert_eq!(from_instruction_bytes(&[0x67, 0xf3, 0x6c], Long64, true), Ok(form(4, Segment::Es)));
        // INS takes no override.
        assert_eq!(from_instruction_bytes(&[0x64, 0x6d], Long64, true), Ok(form(8, Segment::Es)));
        assert_eq!(from_instruction_bytes(&[0x64, 0xf3, 0x6e], Long64, false), Ok(form(8, Segment::Fs)));
        // In 64-bit mode a later ES/CS/SS/DS does not cancel FS/GS.
        assert_eq!(from_instruction_bytes(&[0x65, 0x2e, 0x6f], Long64, false), Ok(form(8, Segment::Gs)));
        // Outside it the last override wins.
        assert_eq!(from_instruction_bytes(&[0x65, 0x2e, 0x6f], Protected32, false), Ok(form(4, Segment::Cs)));
        assert_eq!(from_instruction_bytes(&[0x67, 0x6e], Protected32, false), Ok(form(2, Segment::Ds)));
        assert_eq!(from_instruction_bytes(&[0x67, 0x6e], Real16, false), Ok(form(4, Segment::Ds)));
        assert_eq!(from_instruction_bytes(&[0x48, 0x6d], Long64, true), Ok(form(8, Segment::Es)));
        assert_eq!(from_instruction_bytes(&[0xf3, 0x67], Long64, true), Err(PrefixError::Truncated));
        assert_eq!(from_instruction_bytes(&[], Long64, true), Err(PrefixError::Truncated));
        // An OUTS where the exit said INS, or another opcode.
        assert_eq!(from_instruction_bytes(&[0x6e], Long64, true), Err(PrefixError::NotThisInstruction));
        assert_eq!(from_instruction_bytes(&[0x90], Long64, false), Err(PrefixError::NotThisInstruction));
        assert_eq!(from_instruction_bytes(&[0x66; 15], Long64, false), Err(PrefixError::NotThisInstruction));
    }

    #[test]
    fn segment_bases_in_64_bit_mode_only_for_fs_and_gs() {
        assert!(!segment_base_applies(Segment::Ds, CpuMode::Long64));
        assert!(!segment_base_applies(Segment::Es, CpuMode::Long64));
        assert!(segment_base_applies(Segment::Fs, CpuMode::Long64));
        assert!(segment_base_applies(Segment::Gs, CpuMode::Long64));
        assert!(segment_base_applies(Segment::Es, CpuMode::Protected32));
        let outs = StringIo { form: form(8, Segment::Fs), ..io(8, false, false, 1, false) };
        let regs = StringRegs { rsi: 0x10, ..StringRegs::default() };
        assert_eq!(outs.linear(&regs, 0x1_4000_0000, 0), 0x1_4000_0010);
        let ds = io(8, false, false, 1, false);
        assert_eq!(ds.linear(&regs, 0x1_4000_0000, 0), 0x10);
        let compat = StringIo { mode: CpuMode::Protected32, form: form(4, Segment::Ds), ..ds };
        assert_eq!(compat.linear(&StringRegs { rsi: 0xffff_fff0, ..regs }, 0x100, 0), 0xf0);
    }

    #[test]
    fn address_size_32_in_64_bit_mode() {
        // rep insb with 0x67: only ECX counts, EDI wraps and zero-extends.
        let ins = io(4, true, true, 1, false);
        let regs = StringRegs { rcx: 0xdead_beef_0000_0002, rsi: 0, rdi: 0x5555_0000_ffff_ffff };
        assert_eq!(ins.count(&regs), 2);
        assert_eq!(ins.offset(&regs), 0xffff_ffff);
        let one = ins.after_element(regs);
        assert_eq!(one, StringRegs { rcx: 1, rsi: 0, rdi: 0 });
        let two = ins.after_element(one);
        assert_eq!(two, StringRegs { rcx: 0, rsi: 0, rdi: 1 });
        assert_eq!(ins.count(&two), 0);
    }

    #[test]
    fn address_size_16_keeps_upper_bits() {
        let outs = io(2, false, true, 2, true);
        let regs = StringRegs { rcx: 0x1234_0001, rsi: 0xabcd_0000, rdi: 7 };
        assert_eq!(outs.count(&regs), 1);
        assert_eq!(outs.after_element(regs), StringRegs { rcx: 0x1234_0000, rsi: 0xabcd_fffe, rdi: 7 });
    }

    #[test]
    fn cpl_is_ss_dpl() {
        assert_eq!(cpl(0xc093), 0);
        assert_eq!(cpl(0xc0f3), 3);
    }

    proptest! {
        /// After n elements the offset register has moved n elements within the
        /// address size, the count register has gone down by n, and bits above the
        /// address size are those a register write of that size leaves.
        #[test]
        fn elements_wrap_within_the_address_size(
            address_size in prop::sample::select(vec![2u8, 4, 8]),
            is_in: bool,
            size in prop::sample::select(vec![1u8, 2, 4]),
            down: bool,
            rcx: u64, rsi: u64, rdi: u64,
            n in 1u64..40,
        ) {
            let s = io(address_size, is_in, true, size, down);
            let mut regs = StringRegs { rcx, rsi, rdi };
            for _ in 0..n {
                regs = s.after_element(regs);
            }
            let mask = address_mask(address_size);
            let moved = if down { (n * u64::from(size)).wrapping_neg() } else { n * u64::from(size) };
            let (old, new, other_old, other_new) =
                if is_in { (rdi, regs.rdi, rsi, regs.rsi) } else { (rsi, regs.rsi, rdi, regs.rdi) };
            prop_assert_eq!(new & mask, old.wrapping_add(moved) & mask);
            prop_assert_eq!(regs.rcx & mask, rcx.wrapping_sub(n) & mask);
            prop_assert_eq!(other_new, other_old);
            let upper = |original: u64, value: u64| match address_size {
                2 => value & !mask == original & !mask,
                4 => value >> 32 == 0,
                _ => true,
            };
            prop_assert!(upper(old, new));
            prop_assert!(upper(rcx, regs.rcx));
        }

        /// The linear address uses only the address-size bits of the offset register.
        #[test]
        fn linear_uses_the_masked_offset(
            address_size in prop::sample::select(vec![2u8, 4, 8]),
            is_in: bool,
            rsi: u64, rdi: u64, base: u64,
            segment in prop::sample::select(vec![Segment::Ds, Segment::Fs, Segment::Gs, Segment::Ss]),
        ) {
            let mut s = io(address_size, is_in, false, 1, false);
            if !is_in {
                s.form.segment = segment;
            }
            let regs = StringRegs { rcx: 0, rsi, rdi };
            let offset = if is_in { rdi } else { rsi } & address_mask(address_size);
            let applied = if !is_in && matches!(segment, Segment::Fs | Segment::Gs) { base } else { 0 };
            prop_assert_eq!(s.linear(&regs, base, 0), applied.wrapping_add(offset));
            prop_assert_eq!(s.count(&regs), 1);
        }
    }
}
