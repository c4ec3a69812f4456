//! Translating a guest's linear addresses through the guest's own page tables, for
//! accesses the hypervisor completes on the guest's behalf: string I/O (supervisor data
//! accesses) and the instruction fetch of an emulated MMIO access
//! (`crate::instruction_fetch`).
//!
//! Supported: paging off (linear = physical), 32-bit paging with 4 KiB pages and, with
//! CR4.PSE, 4 MiB pages (PSE-36 high address bits included; SDM Vol. 3A 4.3), PAE paging
//! with 4 KiB and 2 MiB pages (SDM 4.4; the four PDPTEs come from
//! [`PagingState::pdptes`], the copies the processor uses, as a VMCS holds them), and
//! 4-level IA-32e paging with 4 KiB, 2 MiB and 1 GiB pages (SDM 4.5). Every table read
//! goes through a callback that fails for addresses outside the guest's RAM, so a
//! hostile CR3 or entry cannot make the hypervisor read anything else.
//!
//! A failed walk reports the page-fault error code the processor would push (SDM Vol.
//! 3A 4.7): not-present entries, reserved bits (SDM 4.5.4, with MAXPHYADDR from
//! [`PagingState::phys_bits`]), and the access rights of SDM 4.6.1: writes (CR0.WP for
//! supervisor writes), user-mode accesses (U/S), execute-disable (EFER.NXE) and SMEP.
//! Not modelled: SMAP, protection keys, shadow stacks, and the accessed/dirty flags the
//! processor would set (the hypervisor only reads the tables).

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
    /// MAXPHYADDR the guest sees (CPUID 0x8000_0008 EAX[7:0]): entry bits from here to
    /// 51 are reserved (SDM 4.5.4). Values outside 32..=52 are taken as 52 (no such
    /// reserved bits).
    pub phys_bits: u8,
    /// The four PDPTEs of PAE paging (SDM 4.4.1): with EPT the processor keeps them in
    /// the VMCS (guest PDPTE0-3) once loaded, and walks from those, not from memory at
    /// CR3. Only used in PAE paging.
    pub pdptes: [u64; 4],
}

/// The kind of access being translated (SDM 4.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Access {
    /// A write (else a read or an instruction fetch).
    pub write: bool,
    /// A user-mode access (CPL 3; SDM 4.6: every access at CPL 3 that is not an
    /// implicit supervisor access).
    pub user: bool,
    /// An instruction fetch.
    pub fetch: bool,
}

impl Access {
    /// An instruction fetch at current privilege level `cpl`.
    #[must_use]
    pub const fn fetch(cpl: u8) -> Self {
        Self { write: false, user: cpl == 3, fetch: true }
    }
}

const CR0_PG: u64 = 1 << 31;
const CR0_WP: u64 = 1 << 16;
/// CR4.PSE (bit 4), CR4.PAE (bit 5) and CR4.SMEP (bit 20), SDM 2.5.
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const CR4_SMEP: u64 = 1 << 20;
/// IA32_EFER.NXE (bit 11) and .LMA (bit 10), SDM 2.2.1.
const EFER_NXE: u64 = 1 << 11;
const EFER_LMA: u64 = 1 << 10;
/// Paging-structure entry bits (SDM 4.5, the entry-format tables): present, R/W, U/S, PS,
/// XD.
const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const LARGE: u64 = 1 << 7;
const EXECUTE_DISABLE: u64 = 1 << 63;
const ADDR: u64 = 0x000f_ffff_ffff_f000;
/// Page-fault error code bits (SDM 4.7, figure 4-12): P, W/R, U/S, RSVD, I/D.
pub const PF_PRESENT: u32 = 1 << 0;
pub const PF_WRITE: u32 = 1 << 1;
pub const PF_USER: u32 = 1 << 2;
pub const PF_RESERVED: u32 = 1 << 3;
pub const PF_FETCH: u32 = 1 << 4;

/// Translates `linear` for a supervisor data access (`write` or read). `read_entry(gpa)`
/// returns the qword at guest-physical `gpa`, or `None` outside RAM.
pub fn translate(
    state: &PagingState,
    linear: u64,
    write: bool,
    read_entry: impl Fn(u64) -> Option<u64>,
) -> Result<u64, WalkError> {
    translate_access(state, linear, Access { write, ..Access::default() }, read_entry)
}

/// The reserved bits of a present 4-level paging-structure entry at `level` (4 = PML4E,
/// 1 = PTE) that maps a page when `leaf` (SDM 4.5.4 and the entry-format tables of 4.5).
#[inline(always)]
fn reserved_bits(state: &PagingState, level: u32, leaf: bool) -> u64 {
    // Bits MAXPHYADDR..=51.
    let mut reserved = ((1u64 << 52) - 1) & !max_phys_mask(state);
    if state.efer & EFER_NXE == 0 {
        reserved |= EXECUTE_DISABLE;
    }
    match (level, leaf) {
        // PML4E: PS is reserved.
        (4, _) => reserved |= LARGE,
        // 1 GiB page: bits 29:13 (bit 12 is PAT).
        (3, true) => reserved |= 0x3fff_e000,
        // 2 MiB page: bits 20:13.
        (2, true) => reserved |= 0x1f_e000,
        _ => {}
    }
    reserved
}

/// Translates `linear` for `access`. `read_entry(gpa)` returns the qword at
/// guest-physical `gpa` (8-byte aligned), or `None` outside RAM. A page fault carries
/// the error code of SDM 4.7: P when an entry was present (a rights or reserved-bit
/// fault), W/R, U/S, RSVD, and I/D for a fetch when SMEP or (PAE and) EFER.NXE is on.
pub fn translate_access(
    state: &PagingState,
    linear: u64,
    access: Access,
    read_entry: impl Fn(u64) -> Option<u64>,
) -> Result<u64, WalkError> {
    if state.cr0 & CR0_PG == 0 {
        return Ok(linear & 0xffff_ffff);
    }
    let pae = state.cr4 & CR4_PAE != 0;
    let long = state.efer & EFER_LMA != 0;
    let nxe = pae && state.efer & EFER_NXE != 0;
    let mut code = 0;
    if access.write {
        code |= PF_WRITE;
    }
    if access.user {
        code |= PF_USER;
    }
    if access.fetch && (state.cr4 & CR4_SMEP != 0 || nxe) {
        code |= PF_FETCH;
    }
    match (pae, long) {
        (true, true) => walk_8_byte_entries::<4>(state, linear, access, code, state.cr3 & ADDR, read_entry),
        (true, false) => {
            // SDM 4.4.1: PDPTE i maps linear bits 31:30 = i (the processor checked its
            // reserved bits when it loaded it).
            let linear = linear & 0xffff_ffff;
            let pdpte = state.pdptes[(linear >> 30) as usize & 3];
            if pdpte & PRESENT == 0 {
                return Err(WalkError::PageFault { error_code: code });
            }
            if pdpte & pdpte_reserved_bits(state.phys_bits) != 0 {
                return Err(WalkError::PageFault { error_code: code | PF_PRESENT | PF_RESERVED });
            }
            walk_8_byte_entries::<2>(state, linear, access, code, pdpte & ADDR, read_entry)
        }
        (false, false) => walk_32_bit(state, linear & 0xffff_ffff, access, code, read_entry),
        // IA-32e mode without PAE cannot be entered (MOV to CR0 faults, VM entry fails).
        (false, true) => Err(WalkError::UnsupportedMode),
    }
}

/// MAXPHYADDR as reported (CPUID 0x8000_0008 EAX[7:0]), taken as 52 when outside
/// 32..=52 (so that no address bit is reserved for a value no processor reports).
#[must_use]
#[inline]
pub fn max_phys_addr(phys_bits: u8) -> u32 {
    if (32..=52).contains(&phys_bits) {
        u32::from(phys_bits)
    } else {
        52
    }
}

/// The bits of a present PAE PDPTE that must be 0 (SDM 4.4.1, table 4-8): 2:1, 8:5 and
/// MAXPHYADDR ([`max_phys_addr`] of `phys_bits`) through 63.
#[must_use]
#[inline]
pub fn pdpte_reserved_bits(phys_bits: u8) -> u64 {
    0x1e6 | !((1u64 << max_phys_addr(phys_bits)) - 1)
}

/// The address bits below MAXPHYADDR ([`max_phys_addr`] of [`PagingState::phys_bits`]).
#[inline(always)]
fn max_phys_mask(state: &PagingState) -> u64 {
    (1u64 << max_phys_addr(state.phys_bits)) - 1
}

/// Whether `access` is denied on a page whose entries gave `writable`, `user` and
/// `executable` at every level (SDM 4.6.1): user accesses need U/S = 1 at every level;
/// writes need R/W = 1 (supervisor writes only with CR0.WP = 1); fetches need XD = 0
/// (with EFER.NXE) and, for supervisor fetches with CR4.SMEP, a supervisor page.
#[inline(always)]
fn denied(state: &PagingState, access: Access, writable: bool, user: bool, executable: bool) -> bool {
    (access.user && !user)
        || (access.write && !writable && (access.user || state.cr0 & CR0_WP != 0))
        || (access.fetch && (!executable || (!access.user && user && state.cr4 & CR4_SMEP != 0)))
}

/// The walk of the 8-byte-entry paging structures (4-level paging from the PML4, level
/// 4; PAE paging from the page directory a PDPTE names, level 2) of `linear`, starting
/// at the table at guest-physical `table`; `code` is the error code's access part. The
/// top level is a constant, so that the loop unrolls and each level's reserved bits
/// fold (the MMIO exit path walks on every emulated access).
#[inline(always)]
fn walk_8_byte_entries<const TOP_LEVEL: u32>(
    state: &PagingState,
    linear: u64,
    access: Access,
    code: u32,
    mut table: u64,
    read_entry: impl Fn(u64) -> Option<u64>,
) -> Result<u64, WalkError> {
    let nxe = state.efer & EFER_NXE != 0;
    let fault = |error_code| Err(WalkError::PageFault { error_code });
    let (mut writable, mut user, mut executable) = (true, true, true);
    for level in (1..=TOP_LEVEL).rev() {
        let shift = 12 + 9 * (level - 1);
        let index = (linear >> shift) & 0x1ff;
        let entry = read_entry(table + index * 8).ok_or(WalkError::TableOutsideRam)?;
        if entry & PRESENT == 0 {
            return fault(code);
        }
        let leaf = level == 1 || (matches!(level, 2 | 3) && entry & LARGE != 0);
        if entry & reserved_bits(state, level, leaf) != 0 {
            return fault(code | PF_PRESENT | PF_RESERVED);
        }
        writable &= entry & WRITABLE != 0;
        user &= entry & USER != 0;
        executable &= !(nxe && entry & EXECUTE_DISABLE != 0);
        if leaf {
            if denied(state, access, writable, user, executable) {
                return fault(code | PF_PRESENT);
            }
            let size = 1u64 << shift;
            return Ok((entry & ADDR & !(size - 1)) | (linear & (size - 1)));
        }
        table = entry & ADDR;
    }
    Err(WalkError::UnsupportedMode)
}

/// The 32-bit paging walk of `linear` (SDM 4.3): a page directory at CR3, 4-byte
/// entries; a PDE with PS set maps a 4 MiB page when CR4.PSE is on (bits 20:13 give
/// physical address bits 39:32, PSE-36; bit 21 and the bits at and above MAXPHYADDR of
/// those are reserved, SDM table 4-4), else it names a page table. No execute-disable.
fn walk_32_bit(
    state: &PagingState,
    linear: u64,
    access: Access,
    code: u32,
    read_entry: impl Fn(u64) -> Option<u64>,
) -> Result<u64, WalkError> {
    let fault = |error_code| Err(WalkError::PageFault { error_code });
    // A 4-byte entry: the half of the aligned qword that holds it.
    let read32 = |gpa: u64| read_entry(gpa & !7).map(|q| (q >> ((gpa & 4) * 8)) & 0xffff_ffff);
    let pde = read32((state.cr3 & 0xffff_f000) | ((linear >> 22) << 2)).ok_or(WalkError::TableOutsideRam)?;
    if pde & PRESENT == 0 {
        return fault(code);
    }
    if state.cr4 & CR4_PSE != 0 && pde & LARGE != 0 {
        // Physical address bits 39:32 from PDE bits 20:13, as far as MAXPHYADDR (at most
        // 40 here) goes; the rest of 21:13 is reserved.
        let phys_bits = max_phys_addr(state.phys_bits).min(40);
        let reserved = (1u64 << 21) | (0x1f_e000 & !((1u64 << (13 + phys_bits - 32)) - 1));
        if pde & reserved != 0 {
            return fault(code | PF_PRESENT | PF_RESERVED);
        }
        if denied(state, access, pde & WRITABLE != 0, pde & USER != 0, true) {
            return fault(code | PF_PRESENT);
        }
        return Ok((pde & 0xffc0_0000) | ((pde >> 13) & 0xff) << 32 | (linear & 0x3f_ffff));
    }
    let pte = read32((pde & 0xffff_f000) | (((linear >> 12) & 0x3ff) << 2)).ok_or(WalkError::TableOutsideRam)?;
    if pte & PRESENT == 0 {
        return fault(code);
    }
    let (writable, user) = (pde & pte & WRITABLE != 0, pde & pte & USER != 0);
    if denied(state, access, writable, user, true) {
        return fault(code | PF_PRESENT);
    }
    Ok((pte & 0xffff_f000) | (linear & 0xfff))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;

    const LONG: PagingState = PagingState {
        cr0: CR0_PG | CR0_WP | 1,
        cr3: 0x1000,
        cr4: CR4_PAE,
        efer: EFER_LMA | (1 << 8),
        phys_bits: 36,
        pdptes: [0; 4],
    };

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

    /// PML4[0] -> PDPT 0x2000 (user, writable); PDPT[0] -> PD 0x3000 (user); PD[0] -> PT
    /// 0x4000 (user); PT[0] = 0x9000 supervisor, PT[1] = 0xa000 user, PT[2] = 0xb000 user
    /// execute-disable, PT[3] = 0xc000 user read-only; PD[1] = 2 MiB user page at
    /// 0x20_0000.
    fn rights_tables(extra: &[(u64, u64)]) -> BTreeMap<u64, u64> {
        let mut mem = memory(&[
            (0x1000, 0x2000 | 7),
            (0x2000, 0x3000 | 7),
            (0x3000, 0x4000 | 7),
            (0x3008, 0x20_0000 | 7 | LARGE),
            (0x4000, 0x9000 | 3),
            (0x4008, 0xa000 | 7),
            (0x4010, 0xb000 | 7 | EXECUTE_DISABLE),
            (0x4018, 0xc000 | 5),
        ]);
        mem.extend(extra.iter().copied());
        mem
    }

    fn walk_with(state: &PagingState, mem: &BTreeMap<u64, u64>, linear: u64, access: Access) -> Result<u64, WalkError> {
        translate_access(state, linear, access, |gpa| {
            if gpa < 0x100_0000 {
                Some(*mem.get(&gpa).unwrap_or(&0))
            } else {
                None
            }
        })
    }

    fn pf(error_code: u32) -> Result<u64, WalkError> {
        Err(WalkError::PageFault { error_code })
    }

    #[test]
    fn fetch_error_codes_follow_nxe_and_smep() {
        let mem = rights_tables(&[]);
        let nx = PagingState { efer: LONG.efer | EFER_NXE, ..LONG };
        let smep = PagingState { cr4: LONG.cr4 | CR4_SMEP, ..LONG };
        let both = PagingState { cr4: LONG.cr4 | CR4_SMEP, ..nx };
        let kernel = Access::fetch(0);
        let user = Access::fetch(3);
        // Not present (PT[4] is 0): I/D only with NXE or SMEP; U/S at CPL 3.
        assert_eq!(walk_with(&LONG, &mem, 0x4000, kernel), pf(0));
        assert_eq!(walk_with(&nx, &mem, 0x4000, kernel), pf(PF_FETCH));
        assert_eq!(walk_with(&smep, &mem, 0x4000, kernel), pf(PF_FETCH));
        assert_eq!(walk_with(&LONG, &mem, 0x4000, user), pf(PF_USER));
        assert_eq!(walk_with(&both, &mem, 0x4000, user), pf(PF_USER | PF_FETCH));
        // Execute-disable: honoured only with NXE (else bit 63 is reserved).
        assert_eq!(walk_with(&nx, &mem, 0x2123, kernel), pf(PF_PRESENT | PF_FETCH));
        assert_eq!(walk_with(&LONG, &mem, 0x2123, kernel), pf(PF_PRESENT | PF_RESERVED));
        assert_eq!(walk_with(&nx, &mem, 0x2123, Access::default()), Ok(0xb123));
        // SMEP: a supervisor fetch from a user page faults; a supervisor page is fine.
        assert_eq!(walk_with(&smep, &mem, 0x1000, kernel), pf(PF_PRESENT | PF_FETCH));
        assert_eq!(walk_with(&smep, &mem, 0x0010, kernel), Ok(0x9010));
        assert_eq!(walk_with(&LONG, &mem, 0x1000, kernel), Ok(0xa000));
        assert_eq!(walk_with(&smep, &mem, 0x20_0010, kernel), pf(PF_PRESENT | PF_FETCH));
        // A user fetch from a supervisor page faults; from a user page it does not.
        assert_eq!(walk_with(&LONG, &mem, 0x0010, user), pf(PF_PRESENT | PF_USER));
        assert_eq!(walk_with(&smep, &mem, 0x1010, user), Ok(0xa010));
        assert_eq!(walk_with(&LONG, &mem, 0x20_0010, user), Ok(0x20_0010));
    }

    #[test]
    fn write_rights_for_user_and_supervisor() {
        let mem = rights_tables(&[]);
        let no_wp = PagingState { cr0: LONG.cr0 & !CR0_WP, ..LONG };
        let user_write = Access { write: true, user: true, fetch: false };
        let kernel_write = Access { write: true, ..Access::default() };
        assert_eq!(walk_with(&LONG, &mem, 0x3000, user_write), pf(PF_PRESENT | PF_WRITE | PF_USER));
        assert_eq!(walk_with(&no_wp, &mem, 0x3000, user_write), pf(PF_PRESENT | PF_WRITE | PF_USER));
        assert_eq!(walk_with(&LONG, &mem, 0x3000, kernel_write), pf(PF_PRESENT | PF_WRITE));
        assert_eq!(walk_with(&no_wp, &mem, 0x3000, kernel_write), Ok(0xc000));
        assert_eq!(walk_with(&LONG, &mem, 0x1000, user_write), Ok(0xa000));
    }

    #[test]
    fn reserved_bits_fault_with_rsvd() {
        let fetch = Access::fetch(0);
        let rsvd = pf(PF_PRESENT | PF_RESERVED);
        // A PTE address bit above MAXPHYADDR (36).
        let mem = rights_tables(&[(0x4000, 0x10_0000_9000 | 3)]);
        assert_eq!(walk_with(&LONG, &mem, 0x0000, fetch), rsvd);
        let wide = PagingState { phys_bits: 46, ..LONG };
        assert_eq!(walk_with(&wide, &mem, 0x0000, fetch), Ok(0x10_0000_9000));
        // PS in a PML4E.
        let mem = rights_tables(&[(0x1000, 0x2000 | 7 | LARGE)]);
        assert_eq!(walk_with(&LONG, &mem, 0x1000, Access::fetch(3)), pf(PF_PRESENT | PF_RESERVED | PF_USER));
        // A 2 MiB page with bit 13 set.
        let mem = rights_tables(&[(0x3008, 0x20_2000 | 7 | LARGE)]);
        assert_eq!(walk_with(&LONG, &mem, 0x20_0000, fetch), rsvd);
        // A 1 GiB page with bit 20 set.
        let mem = rights_tables(&[(0x2008, 0x4010_0000 | 7 | LARGE)]);
        assert_eq!(walk_with(&LONG, &mem, 0x4000_0000, fetch), rsvd);
        // A not-present entry's other bits do not matter.
        let mem = rights_tables(&[(0x4020, 0xffff_ffff_ffff_fffe)]);
        assert_eq!(walk_with(&LONG, &mem, 0x4000, fetch), pf(0));
    }

    #[test]
    fn tables_outside_ram_and_other_modes() {
        let mem = memory(&[(0x1000, 0x7fff_f000 | 3)]);
        assert_eq!(walk(&mem, 0, false), Err(WalkError::TableOutsideRam));
        let off = PagingState { cr0: 1, ..LONG };
        assert_eq!(translate(&off, 0x1234_5678, true, |_| None), Ok(0x1234_5678));
        // PAE paging with no PDPTE present; 32-bit paging with a page directory
        // outside RAM; IA-32e mode without PAE cannot exist.
        let pae = PagingState { efer: 0, ..LONG };
        assert_eq!(translate(&pae, 0, false, |_| None), Err(WalkError::PageFault { error_code: 0 }));
        let bits32 = PagingState { cr4: 0, efer: 0, ..LONG };
        assert_eq!(translate(&bits32, 0, false, |_| None), Err(WalkError::TableOutsideRam));
        let impossible = PagingState { cr4: 0, ..LONG };
        assert_eq!(translate(&impossible, 0, false, |_| None), Err(WalkError::UnsupportedMode));
    }

    /// 32-bit paging, CR3 = 0x1000: PDE 0 -> page table 0x2000 (user, writable), whose
    /// PTE 5 maps 0x7000 supervisor read-only and PTE 6 maps 0x8000 user writable; PDE 1
    /// is a 4 MiB user page at 0x0080_0000 with PA bits 33:32 = 0b11 (PSE-36); PDE 2 is a
    /// 4 MiB page with reserved bit 21.
    fn bits32_tables() -> BTreeMap<u64, u64> {
        // Pairs of 4-byte entries in one qword: (low, high).
        let pair = |low: u64, high: u64| low | high << 32;
        memory(&[
            (0x1000, pair(0x2000 | 7, 0x0080_0000 | 3 << 13 | LARGE | 7)),
            (0x1008, pair(0x00c0_0000 | 1 << 21 | LARGE | 3, 0)),
            (0x2010, pair(0, 0x7000 | 1)),
            (0x2018, pair(0x8000 | 7, 0)),
        ])
    }

    const BITS32: PagingState =
        PagingState { cr0: CR0_PG | CR0_WP | 1, cr3: 0x1000, cr4: CR4_PSE, efer: 0, phys_bits: 36, pdptes: [0; 4] };

    #[test]
    fn thirty_two_bit_paging_with_4_kib_and_4_mib_pages() {
        let mem = bits32_tables();
        let read = Access::default();
        assert_eq!(walk_with(&BITS32, &mem, 0x5abc, read), Ok(0x7abc));
        assert_eq!(walk_with(&BITS32, &mem, 0x6abc, Access { write: true, user: true, fetch: false }), Ok(0x8abc));
        assert_eq!(walk_with(&BITS32, &mem, 0x0051_2345, read), Ok(0x3_0091_2345), "PSE-36 high bits");
        // Linear bits above 31 are not part of a 32-bit address.
        assert_eq!(walk_with(&BITS32, &mem, 0x1_0000_5abc, read), Ok(0x7abc));
        // Supervisor read-only page: user reads and supervisor writes (CR0.WP) fault.
        assert_eq!(walk_with(&BITS32, &mem, 0x5000, Access { user: true, ..read }), pf(PF_PRESENT | PF_USER));
        assert_eq!(walk_with(&BITS32, &mem, 0x5000, Access { write: true, ..read }), pf(PF_PRESENT | PF_WRITE));
        // Not present; no I/D bit without SMEP (32-bit paging has no execute-disable).
        assert_eq!(walk_with(&BITS32, &mem, 0x3000, Access::fetch(0)), pf(0));
        let smep = PagingState { cr4: CR4_PSE | CR4_SMEP, ..BITS32 };
        assert_eq!(walk_with(&smep, &mem, 0x3000, Access::fetch(0)), pf(PF_FETCH));
        // SMEP: a supervisor fetch from a user page.
        assert_eq!(walk_with(&smep, &mem, 0x6000, Access::fetch(0)), pf(PF_FETCH | PF_PRESENT));
        // Reserved bit 21 of a 4 MiB PDE; PA bits above MAXPHYADDR (36 allows 35:32).
        assert_eq!(walk_with(&BITS32, &mem, 0x0080_0000, read), pf(PF_PRESENT | PF_RESERVED));
        let narrow = PagingState { phys_bits: 33, ..BITS32 };
        assert_eq!(walk_with(&narrow, &mem, 0x0040_0000, read), pf(PF_PRESENT | PF_RESERVED));
        // Without CR4.PSE the PS bit is ignored: PDE 1 names a page table (at 0x0080_6000,
        // empty), whose PTE 0 is not present.
        let no_pse = PagingState { cr4: 0, ..BITS32 };
        assert_eq!(walk_with(&no_pse, &mem, 0x0040_0000, read), pf(0));
    }

    #[test]
    fn pae_paging_from_the_pdptes() {
        // PDPTE 1 -> PD 0x3000: PD[0] -> PT 0x4000 whose PTE 2 maps 0x9000 (XD);
        // PD[1] = 2 MiB page at 0x0060_0000. PDPTE 0 not present, PDPTE 2 with reserved
        // bit 1 (R/W is reserved in a PDPTE).
        let mem =
            memory(&[(0x3000, 0x4000 | 3), (0x3008, 0x0060_0000 | LARGE | 3), (0x4010, 0x9000 | 3 | EXECUTE_DISABLE)]);
        let pae = PagingState {
            cr4: CR4_PAE,
            efer: EFER_NXE,
            pdptes: [0, 0x3000 | 1, 0x5000 | 3, 0],
            cr3: 0xdead_0000,
            ..LONG
        };
        let read = Access::default();
        assert_eq!(walk_with(&pae, &mem, 0x4000_2abc, read), Ok(0x9abc));
        assert_eq!(walk_with(&pae, &mem, 0x4023_4567, read), Ok(0x0063_4567));
        assert_eq!(walk_with(&pae, &mem, 0x4000_2000, Access::fetch(0)), pf(PF_PRESENT | PF_FETCH), "XD with NXE");
        assert_eq!(walk_with(&pae, &mem, 0x1000, read), pf(0), "PDPTE 0 not present");
        assert_eq!(walk_with(&pae, &mem, 0x8000_0000, read), pf(PF_PRESENT | PF_RESERVED), "PDPTE 2 reserved bit");
        // Without NXE bit 63 is reserved, and fetches carry no I/D bit.
        let no_nx = PagingState { efer: 0, ..pae };
        assert_eq!(walk_with(&no_nx, &mem, 0x4000_2000, Access::fetch(0)), pf(PF_PRESENT | PF_RESERVED));
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
            let state = PagingState {
                efer: seed & (EFER_NXE | EFER_LMA),
                cr4: seed & (CR4_SMEP | CR4_PAE),
                phys_bits: seed as u8,
                ..LONG
            };
            let _ = walk_with(&state, &mem, seed.rotate_left(7), Access::fetch((seed >> 40) as u8 & 3));
        }
    }
}
