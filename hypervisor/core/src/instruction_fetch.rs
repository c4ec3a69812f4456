//! Fetching the guest instruction the hypervisor must emulate (an access to an emulated
//! MMIO page), as the processor would: through the code segment and the guest's page
//! tables, with the faults a processor would raise when a byte it needs cannot be
//! fetched.
//!
//! [`fetch`] reads up to 15 bytes at CS:RIP, stopping at the code-segment limit (16- and
//! 32-bit modes; code segments are expand-up) or at the first byte whose page cannot be
//! read. A short fetch is not an error by itself: the instruction may end before the
//! missing bytes. Only when the decoder reports that it needs more bytes
//! (`mmio_decode::DecodeError::Truncated`) does [`Fetched::missing`] say what the
//! processor would have done on the first missing byte:
//!
//! - beyond the CS limit: #GP(0) (SDM Vol. 3A 5.3, limit checking). 16-bit code never
//!   fetches past offset 0xFFFF whatever the limit: the 8086 wrapped to offset 0, later
//!   processors fault (SDM Vol. 3B, architecture compatibility, "Segment Wraparound").
//!   Real mode delivers no error code;
//! - its page walk fails with a page fault: #PF with CR2 = that byte's linear address and
//!   the walk's error code (`guest_paging`, SDM 4.7);
//! - the walk reads a paging-structure entry outside the guest's RAM, the byte itself is
//!   outside RAM (a device page or no memory at all), or the paging mode is one the
//!   walker does not handle: [`Missing::Stop`]. A processor would not fault there: it
//!   would read the device or take an EPT violation that this hypervisor treats as
//!   fatal for an access outside RAM; KVM likewise reports a fetch from MMIO as an
//!   emulation failure. The hypervisor stops the partition with a dump.

use crate::guest_paging::{translate_access, Access, PagingState, WalkError};
use crate::mmio_decode::{CpuMode, MAX_INSTRUCTION_LEN};

/// #GP (SDM Vol. 3A 6.15, interrupt 13).
pub const GP_VECTOR: u8 = 13;
/// #PF (SDM Vol. 3A 6.15, interrupt 14).
pub const PF_VECTOR: u8 = 14;

const PAGE: u64 = 0x1000;

/// The guest's code segment and instruction pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeLocation {
    pub mode: CpuMode,
    /// CS base (ignored in 64-bit mode, SDM 3.4.4).
    pub cs_base: u64,
    /// CS limit in bytes - 1, as the VMCS holds it (granularity already applied).
    pub cs_limit: u32,
    pub rip: u64,
    /// Current privilege level (SS.DPL; 0 in real mode).
    pub cpl: u8,
}

/// The linear address of the instruction's first byte and how many bytes the code
/// segment lets the processor fetch there (at most 15).
#[must_use]
pub fn fetch_window(at: &CodeLocation) -> (u64, usize) {
    let max = MAX_INSTRUCTION_LEN as u64;
    let (offset, limit) = match at.mode {
        CpuMode::Long64 => return (at.rip, MAX_INSTRUCTION_LEN),
        CpuMode::Protected32 => (at.rip & 0xffff_ffff, u64::from(at.cs_limit)),
        // A 16-bit instruction pointer cannot pass 0xFFFF (SDM Vol. 3B, "Segment Wraparound").
        CpuMode::Real16 | CpuMode::Protected16 => (at.rip & 0xffff, u64::from(at.cs_limit).min(0xffff)),
    };
    let allowed = if offset > limit { 0 } else { (limit - offset + 1).min(max) };
    (at.cs_base.wrapping_add(offset) & 0xffff_ffff, allowed as usize)
}

/// Why the fetch stopped before 15 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchEnd {
    /// All 15 bytes were fetched.
    Complete,
    /// The next byte is beyond the code-segment limit.
    Limit,
    /// The page walk for the next byte (at `linear`) failed.
    Walk { linear: u64, error: WalkError },
    /// The next byte (at `linear`) translates to guest-physical `gpa`, outside the
    /// guest's RAM.
    OutsideRam { linear: u64, gpa: u64 },
}

/// The bytes fetched at CS:RIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetched {
    /// The linear address of the instruction's first byte.
    pub linear: u64,
    pub bytes: [u8; MAX_INSTRUCTION_LEN],
    pub len: usize,
    pub end: FetchEnd,
    /// Whether the guest is in real mode (no error codes on exceptions).
    real_mode: bool,
}

/// An exception the processor would raise for the instruction fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub vector: u8,
    /// `None` in real mode (VM entry requires it, SDM 26.2.1.3).
    pub error_code: Option<u32>,
    /// CR2 to set first (page faults only).
    pub cr2: Option<u64>,
}

/// `#PF (error code 0x10, CR2 0x...)`, `#GP (error code 0x0)`, `#GP (no error code)`.
impl core::fmt::Display for Fault {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.vector {
            PF_VECTOR => f.write_str("#PF")?,
            GP_VECTOR => f.write_str("#GP")?,
            v => write!(f, "vector {v}")?,
        }
        match self.error_code {
            Some(code) => write!(f, " (error code {code:#x}")?,
            None => f.write_str(" (no error code")?,
        }
        if let Some(cr2) = self.cr2 {
            write!(f, ", CR2 {cr2:#x}")?;
        }
        f.write_str(")")
    }
}

/// What must happen when the decoder needs a byte that was not fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// Deliver this exception, without completing the instruction.
    Fault(Fault),
    /// Nothing a processor would deliver as a fault: stop the guest (`what` for the
    /// log, `detail` the address concerned).
    Stop { what: &'static str, detail: u64 },
}

impl Fetched {
    /// The fetched bytes.
    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or(&self.bytes)
    }

    /// What the processor would do on the first byte that was not fetched, once the
    /// decoder has said it needs it.
    #[must_use]
    pub fn missing(&self) -> Missing {
        match self.end {
            FetchEnd::Limit => {
                Missing::Fault(Fault { vector: GP_VECTOR, error_code: (!self.real_mode).then_some(0), cr2: None })
            }
            FetchEnd::Walk { linear, error: WalkError::PageFault { error_code } } => {
                Missing::Fault(Fault { vector: PF_VECTOR, error_code: Some(error_code), cr2: Some(linear) })
            }
            FetchEnd::Walk { linear, error: WalkError::TableOutsideRam } => Missing::Stop {
                what: "the guest's page tables for its instruction lie outside its RAM",
                detail: linear,
            },
            FetchEnd::Walk { linear, error: WalkError::UnsupportedMode } => {
                Missing::Stop { what: "instruction fetch in an unsupported guest paging mode", detail: linear }
            }
            FetchEnd::OutsideRam { gpa, .. } => {
                Missing::Stop { what: "the instruction lies outside the guest's RAM", detail: gpa }
            }
            // The decoder never asks for a 16th byte (it reports the instruction as
            // invalid); should it, nothing more can be fetched.
            FetchEnd::Complete => Missing::Stop { what: "instruction longer than 15 bytes", detail: self.len as u64 },
        }
    }
}

/// Fetches up to 15 bytes at `at` (its CS:RIP): within the code-segment limit, page by
/// page through the guest's page tables (`paging`, `read_entry` as for
/// [`translate_access`]), stopping at the first byte that cannot be fetched.
/// `read_ram(gpa, dst)` copies guest-physical `gpa..gpa + dst.len()` (inside one page)
/// into `dst`, or returns `false` when that range is not all guest RAM.
pub fn fetch(
    at: &CodeLocation,
    paging: &PagingState,
    read_entry: impl Fn(u64) -> Option<u64>,
    mut read_ram: impl FnMut(u64, &mut [u8]) -> bool,
) -> Fetched {
    let (linear, allowed) = fetch_window(at);
    let wrap = if at.mode == CpuMode::Long64 { u64::MAX } else { 0xffff_ffff };
    let mut fetched = Fetched {
        linear,
        bytes: [0; MAX_INSTRUCTION_LEN],
        len: 0,
        end: FetchEnd::Complete,
        real_mode: at.mode == CpuMode::Real16,
    };
    let access = Access::fetch(at.cpl);
    while fetched.len < MAX_INSTRUCTION_LEN {
        if fetched.len >= allowed {
            fetched.end = FetchEnd::Limit;
            break;
        }
        let byte_at = linear.wrapping_add(fetched.len as u64) & wrap;
        let in_page = (PAGE - (byte_at & (PAGE - 1))) as usize;
        let chunk = in_page.min(allowed - fetched.len);
        let gpa = match translate_access(paging, byte_at, access, &read_entry) {
            Ok(gpa) => gpa,
            Err(error) => {
                fetched.end = FetchEnd::Walk { linear: byte_at, error };
                break;
            }
        };
        let Some(dst) = fetched.bytes.get_mut(fetched.len..fetched.len + chunk) else {
            break;
        };
        if !read_ram(gpa, dst) {
            fetched.end = FetchEnd::OutsideRam { linear: byte_at, gpa };
            break;
        }
        fetched.len += chunk;
    }
    fetched
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest_paging::{PF_FETCH, PF_PRESENT, PF_USER};
    use crate::mmio_decode::{decode, DecodeError};
    use alloc::collections::BTreeMap;

    const CR0_PE_PG_WP: u64 = 1 | (1 << 16) | (1 << 31);
    const LONG: PagingState = PagingState {
        cr0: CR0_PE_PG_WP,
        cr3: 0x1000,
        cr4: 1 << 5,
        efer: (1 << 8) | (1 << 10) | (1 << 11),
        phys_bits: 36,
        pdptes: [0; 4],
    };
    const FLAT: PagingState = PagingState { cr0: 1, cr3: 0, cr4: 0, efer: 0, phys_bits: 36, pdptes: [0; 4] };
    /// RAM: 1 MiB; every byte reads as its address's low byte.
    const RAM: u64 = 0x10_0000;

    fn read_ram(gpa: u64, dst: &mut [u8]) -> bool {
        if gpa + dst.len() as u64 > RAM {
            return false;
        }
        for (i, b) in dst.iter_mut().enumerate() {
            *b = (gpa + i as u64) as u8;
        }
        true
    }

    /// Page tables at 0x1000..0x5000 mapping linear page N of 0x40_0000.. to the entry
    /// `ptes[N]` (0: not present).
    fn tables(ptes: &[u64]) -> BTreeMap<u64, u64> {
        let mut mem: BTreeMap<u64, u64> = [(0x1000, 0x2000 | 3), (0x2000, 0x3000 | 3), (0x3010, 0x4000 | 3)].into();
        for (i, &pte) in ptes.iter().enumerate() {
            mem.insert(0x4000 + 8 * i as u64, pte);
        }
        mem
    }

    fn fetch_at(at: &CodeLocation, paging: &PagingState, mem: &BTreeMap<u64, u64>) -> Fetched {
        fetch(at, paging, |gpa| (gpa < RAM).then(|| *mem.get(&gpa).unwrap_or(&0)), read_ram)
    }

    fn long(rip: u64) -> CodeLocation {
        CodeLocation { mode: CpuMode::Long64, cs_base: 0x1234, cs_limit: 0, rip, cpl: 0 }
    }

    #[test]
    fn window_follows_the_code_segment() {
        let at = |mode, cs_base, cs_limit, rip| fetch_window(&CodeLocation { mode, cs_base, cs_limit, rip, cpl: 0 });
        // 64-bit mode: no base, no limit.
        assert_eq!(at(CpuMode::Long64, 0x1000, 0, 0xffff_8000_0000_0000), (0xffff_8000_0000_0000, 15));
        // 32-bit: base + EIP, wrapping at 4 GiB; the limit is inclusive.
        assert_eq!(at(CpuMode::Protected32, 0x1000, 0xffff_ffff, 0x5000), (0x6000, 15));
        assert_eq!(at(CpuMode::Protected32, 0x1000, 0xffff_ffff, 0xffff_fff8), (0xff8, 8));
        assert_eq!(at(CpuMode::Protected32, 0, 0x1003, 0x1000), (0x1000, 4));
        assert_eq!(at(CpuMode::Protected32, 0, 0x1000, 0x1000), (0x1000, 1));
        assert_eq!(at(CpuMode::Protected32, 0, 0xfff, 0x1000), (0x1000, 0));
        assert_eq!(at(CpuMode::Protected32, 0, 0xfff, 0x1_0000_1000), (0x1000, 0));
        // 16-bit: IP, and never past 0xFFFF whatever the limit.
        assert_eq!(at(CpuMode::Real16, 0xf_0000, 0xffff, 0xfff0), (0xf_fff0, 15));
        assert_eq!(at(CpuMode::Real16, 0xf_0000, 0xffff, 0xfffc), (0xf_fffc, 4));
        assert_eq!(at(CpuMode::Real16, 0, 0xffff_ffff, 0xfffe), (0xfffe, 2));
        assert_eq!(at(CpuMode::Protected16, 0x10, 0x7ff, 0x7fd), (0x80d, 3));
    }

    #[test]
    fn a_short_fetch_is_enough_when_the_instruction_fits() {
        // The code page 0x40_0000 is mapped to 0x9000; the next page is not present.
        let mem = tables(&[0x9000 | 1]);
        let f = fetch_at(&long(0x40_0ffd), &LONG, &mem);
        assert_eq!((f.linear, f.len), (0x40_0ffd, 3));
        assert_eq!(f.bytes(), [0xfd, 0xfe, 0xff]);
        assert_eq!(f.end, FetchEnd::Walk { linear: 0x40_1000, error: WalkError::PageFault { error_code: PF_FETCH } });
        // `mov eax, [rdi]` fits in two bytes: decoded without the next page.
        assert!(decode(&[0x8b, 0x07], CpuMode::Long64).is_ok());
        // `mov eax, [rdi + disp32]` does not: the decoder asks for more, and the guest
        // sees #PF at the next page (I/D: NXE is on).
        assert_eq!(decode(&[0x8b, 0x87, 0x00], CpuMode::Long64), Err(DecodeError::Truncated));
        assert_eq!(f.missing(), Missing::Fault(Fault { vector: 14, error_code: Some(PF_FETCH), cr2: Some(0x40_1000) }));
    }

    #[test]
    fn first_byte_page_faults() {
        // Not present at CPL 3.
        let mem = tables(&[0]);
        let f = fetch_at(&CodeLocation { cpl: 3, ..long(0x40_0123) }, &LONG, &mem);
        assert_eq!(f.len, 0);
        assert_eq!(
            f.missing(),
            Missing::Fault(Fault { vector: 14, error_code: Some(PF_USER | PF_FETCH), cr2: Some(0x40_0123) })
        );
        // Execute-disable page.
        let mem = tables(&[0x9000 | 1 | (1 << 63)]);
        let f = fetch_at(&long(0x40_0010), &LONG, &mem);
        assert_eq!(
            f.missing(),
            Missing::Fault(Fault { vector: 14, error_code: Some(PF_PRESENT | PF_FETCH), cr2: Some(0x40_0010) })
        );
    }

    #[test]
    fn pages_outside_ram_and_unsupported_modes_stop() {
        // The code page maps outside RAM.
        let mem = tables(&[0x20_0000 | 1]);
        let f = fetch_at(&long(0x40_0010), &LONG, &mem);
        assert_eq!(f.end, FetchEnd::OutsideRam { linear: 0x40_0010, gpa: 0x20_0010 });
        assert!(matches!(f.missing(), Missing::Stop { detail: 0x20_0010, .. }));
        // The page table lies outside RAM.
        let mut mem = tables(&[]);
        mem.insert(0x3010, 0x80_0000 | 3);
        let f = fetch_at(&long(0x40_0010), &LONG, &mem);
        assert_eq!(f.end, FetchEnd::Walk { linear: 0x40_0010, error: WalkError::TableOutsideRam });
        assert!(matches!(f.missing(), Missing::Stop { detail: 0x40_0010, .. }));
        // IA-32e mode without CR4.PAE (no processor runs that way).
        let impossible = PagingState { cr4: 0, ..LONG };
        let f = fetch_at(&long(0x10), &impossible, &mem);
        assert_eq!(f.end, FetchEnd::Walk { linear: 0x10, error: WalkError::UnsupportedMode });
        assert!(matches!(f.missing(), Missing::Stop { .. }));
    }

    #[test]
    fn the_cs_limit_clips_the_fetch() {
        let mem = BTreeMap::new();
        let at = CodeLocation { mode: CpuMode::Protected32, cs_base: 0x2_0000, cs_limit: 0x1001, rip: 0x1000, cpl: 0 };
        let f = fetch_at(&at, &FLAT, &mem);
        assert_eq!((f.bytes(), f.end), (&[0x00, 0x01][..], FetchEnd::Limit));
        // Two bytes: `mov eax, [edi]` fits; `mov eax, [edi + disp8]` needs a third: #GP(0).
        assert!(decode(&[0x8b, 0x07], CpuMode::Protected32).is_ok());
        assert_eq!(decode(&[0x8b, 0x47], CpuMode::Protected32), Err(DecodeError::Truncated));
        assert_eq!(f.missing(), Missing::Fault(Fault { vector: 13, error_code: Some(0), cr2: None }));
        // RIP beyond the limit: nothing is fetched.
        let f = fetch_at(&CodeLocation { rip: 0x1002, ..at }, &FLAT, &mem);
        assert_eq!((f.len, f.end), (0, FetchEnd::Limit));
        // Real mode: past 0xFFFF; #GP without an error code.
        let real = CodeLocation { mode: CpuMode::Real16, cs_base: 0x1_0000, cs_limit: 0xffff, rip: 0xfffe, cpl: 0 };
        let f = fetch_at(&real, &FLAT, &mem);
        assert_eq!((f.bytes(), f.end), (&[0xfe, 0xff][..], FetchEnd::Limit));
        assert_eq!(f.missing(), Missing::Fault(Fault { vector: 13, error_code: None, cr2: None }));
    }

    #[test]
    fn a_page_fault_before_the_limit_wins() {
        // 32-bit code in a 15-byte window that crosses into a page outside RAM, with
        // paging off: the fetch stops at the page, not at the limit.
        let mem = BTreeMap::new();
        let at = CodeLocation { mode: CpuMode::Protected32, cs_base: 0, cs_limit: u32::MAX, rip: RAM - 2, cpl: 0 };
        let f = fetch_at(&at, &FLAT, &mem);
        assert_eq!((f.len, f.end), (2, FetchEnd::OutsideRam { linear: RAM, gpa: RAM }));
        // A complete fetch in long mode.
        let mem = tables(&[0x9000 | 1, 0xa000 | 1]);
        let f = fetch_at(&long(0x40_0ff8), &LONG, &mem);
        assert_eq!((f.len, f.end), (15, FetchEnd::Complete));
        assert_eq!(f.bytes()[7..], [0xff, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06]);
    }

    #[test]
    fn faults_read_clearly() {
        use alloc::string::ToString;
        let pf = Fault { vector: PF_VECTOR, error_code: Some(0x10), cr2: Some(0x1_0000_0000) };
        assert_eq!(pf.to_string(), "#PF (error code 0x10, CR2 0x100000000)");
        assert_eq!(Fault { vector: GP_VECTOR, error_code: Some(0), cr2: None }.to_string(), "#GP (error code 0x0)");
        assert_eq!(Fault { vector: GP_VECTOR, error_code: None, cr2: None }.to_string(), "#GP (no error code)");
    }

    #[test]
    fn never_panics() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let modes = [CpuMode::Real16, CpuMode::Protected16, CpuMode::Protected32, CpuMode::Long64];
        for i in 0..5000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let at = CodeLocation {
                mode: modes[i % 4],
                cs_base: seed.rotate_left(9),
                cs_limit: seed as u32,
                rip: seed.rotate_left(31),
                cpl: (seed >> 5) as u8 & 3,
            };
            let mem = tables(&[seed & !0xffe, seed.rotate_left(3) & 0xf_f001]);
            let state = if seed & 1 == 0 { LONG } else { FLAT };
            let f = fetch_at(&at, &state, &mem);
            assert!(f.len <= MAX_INSTRUCTION_LEN);
            let _ = f.missing();
        }
    }
}
