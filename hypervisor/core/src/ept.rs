//! Extended page tables (EPT): a builder for the 4-level EPT paging structures.
//!
//! EPT translates guest-physical to host-physical addresses (SDM Vol. 3C 29.3, "The
//! Extended Page Table Mechanism"). The structures have the same shape as 4-level IA-32e
//! paging: a PML4 table, page-directory-pointer tables, page directories and page tables,
//! 512 eight-byte entries each, translating 48 bits of guest-physical address. A PDPTE can
//! map a 1 GiB page and a PDE a 2 MiB page, if the CPU supports them (IA32_VMX_EPT_VPID_CAP
//! bits 17 and 16, SDM Vol. 3D A.10).
//!
//! # Memory
//! The builder never allocates from the heap: table frames come from a [`TableMemory`]
//! supplied by the caller (the kernel implements it over its direct map; the tests over a
//! `Vec`). All reads and writes of entries go through that trait, so the kernel
//! implementation should use volatile accesses of the whole 64-bit entry.
//!
//! # Atomicity
//! Every operation validates first and then commits: when it returns an error the tables
//! are as they were before the call (same frames, same contents), and no INVEPT is needed.
//! Large pages are split by filling a complete new table first and then replacing the
//! large-page entry with one 64-bit write, so a processor walking the tables concurrently
//! sees either the old or the new (equivalent) translation.
//!
//! # Invalidation
//! Processors cache EPT translations and paging-structure entries (SDM Vol. 3C 29.4).
//! Every successful change returns an [`InveptRequired`] token: the kernel executes a
//! single-context INVEPT for this EPTP on every logical processor that may run a guest on
//! it, then calls [`InveptRequired::acknowledge`]. Until then:
//! - freed table frames ([`TableMemory::free_table`]) may still be walked by a processor
//!   running a guest on this EPT, so the memory implementation must not hand them out for
//!   another use before the INVEPT (or the guest must not run meanwhile);
//! - a failed [`Ept::map`] rolls back what it wrote; if a guest ran on this EPT during the
//!   call, it may have cached those transient entries.
//!
//! # Software bookkeeping
//! An entry is considered present by the CPU when any of bits 2:0 is set. A leaf mapped
//! with [`EptPermissions::NONE`] has bits 2:0 clear but must still count as mapped, so every
//! entry this module writes also has bit 11 set ([`SW_PRESENT`]), a bit the CPU ignores in
//! all EPT entry formats; the builder tests that bit, not bits 2:0.

use core::fmt;
use core::ops::BitOr;

use crate::addr::{GuestPhysAddr, HostPhysAddr};

/// Number of 8-byte entries in each EPT paging structure (SDM Vol. 3C 29.3.2).
pub const ENTRIES_PER_TABLE: usize = 512;

/// Bits 2:0 of every EPT entry: read, write, execute access (SDM 29.3.2, tables 29-1 to
/// 29-6). An entry with all three clear is not present.
const PERM_MASK: u64 = 0b111;
/// Bits 5:3 of a leaf entry: EPT memory type (SDM 29.3.2, tables 29-2, 29-4, 29-6; the
/// types are in SDM 29.3.7).
const MEMTYPE_SHIFT: u32 = 3;
const MEMTYPE_MASK: u64 = 0b111 << MEMTYPE_SHIFT;
/// Bit 6 of a leaf entry: ignore PAT memory type (SDM 29.3.2, tables 29-2, 29-4, 29-6).
const IGNORE_PAT: u64 = 1 << 6;
/// Bit 7 of a PDPTE or PDE: the entry maps a 1 GiB or 2 MiB page (SDM 29.3.2, tables 29-2
/// and 29-4); reserved (zero) in PML4Es.
const LARGE_PAGE: u64 = 1 << 7;
/// Bit 11: ignored by the CPU in every EPT entry format (SDM 29.3.2, tables 29-1 to 29-6).
/// Set by this module in every entry it writes; see the module docs.
pub const SW_PRESENT: u64 = 1 << 11;
/// Bits 51:12: physical address of the next table or of the page (SDM 29.3.2, tables 29-1
/// to 29-6; bits above MAXPHYADDR must be zero, and for large pages the low bits too).
const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;
/// A 4-level EPT translates 48-bit guest-physical addresses (SDM Vol. 3 29.3.2).
pub const GPA_LIMIT: u64 = 1 << 48;
/// Host-physical addresses are at most 52 bits wide (SDM 29.3.2, "N" is MAXPHYADDR <= 52).
pub const HPA_LIMIT: u64 = 1 << 52;

/// EPTP bits 2:0: memory type of the paging structures, 6 = write-back (SDM Vol. 3C
/// 25.6.11, "Extended-Page-Table Pointer (EPTP)").
const EPTP_MEMTYPE_WB: u64 = 6;
/// EPTP bits 5:3: page-walk length minus one; 3 = 4-level walk (SDM Vol. 3C 25.6.11).
const EPTP_WALK_LENGTH_4: u64 = 3 << 3;
/// EPTP bit 6: enable accessed and dirty flags (SDM Vol. 3C 25.6.11, SDM 29.3.5).
const EPTP_AD_ENABLE: u64 = 1 << 6;

const SIZE_4K: u64 = 1 << 12;
const SIZE_2M: u64 = 1 << 21;
const SIZE_1G: u64 = 1 << 30;

/// Memory that holds EPT paging structures.
///
/// A table is one 4 KiB-aligned frame of [`ENTRIES_PER_TABLE`] `u64` entries, named by its
/// host-physical address. This is a safe trait: the implementation checks (or trusts, for
/// frames it handed out itself) the addresses it is given.
pub trait TableMemory {
    /// Allocates a 4 KiB-aligned table, zeroed, or `None` if out of memory.
    fn allocate_table(&mut self) -> Option<HostPhysAddr>;
    /// Reads entry `index` (`< 512`) of `table`.
    fn read(&self, table: HostPhysAddr, index: usize) -> u64;
    /// Writes entry `index` (`< 512`) of `table`, as a single 64-bit store.
    fn write(&mut self, table: HostPhysAddr, index: usize, value: u64);
    /// Releases a table obtained from `allocate_table`. See the module docs on INVEPT
    /// before reusing the frame.
    fn free_table(&mut self, table: HostPhysAddr);
}

/// Access rights of a guest-physical mapping: bits 2:0 of an EPT entry (SDM 29.3.2).
///
/// Write without read is an EPT misconfiguration (SDM 29.3.3.1) and is refused with
/// [`EptError::WriteWithoutRead`]. Execute-only ([`EptPermissions::EXECUTE`] alone) is
/// only allowed if the CPU reports support for it (IA32_VMX_EPT_VPID_CAP bit 0); the
/// caller checks that.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EptPermissions(u8);

impl EptPermissions {
    /// No access: every guest access causes an EPT violation. The page stays mapped.
    pub const NONE: Self = Self(0);
    /// Bit 0: reads allowed.
    pub const READ: Self = Self(1 << 0);
    /// Bit 1: writes allowed (requires [`EptPermissions::READ`]).
    pub const WRITE: Self = Self(1 << 1);
    /// Bit 2: instruction fetches allowed.
    pub const EXECUTE: Self = Self(1 << 2);
    /// Read only.
    pub const R: Self = Self::READ;
    /// Read and write.
    pub const RW: Self = Self(Self::READ.0 | Self::WRITE.0);
    /// Read and execute.
    pub const RX: Self = Self(Self::READ.0 | Self::EXECUTE.0);
    /// Read, write and execute.
    pub const RWX: Self = Self(Self::READ.0 | Self::WRITE.0 | Self::EXECUTE.0);

    /// The raw bits (2:0).
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// From raw bits; `None` if any bit above 2 is set.
    pub const fn from_bits(bits: u8) -> Option<Self> {
        if bits & !0b111 == 0 {
            Some(Self(bits))
        } else {
            None
        }
    }

    /// Whether all rights in `other` are also in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether no access is allowed.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The rights of both.
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// `Err(WriteWithoutRead)` for rights no EPT entry may hold (SDM 29.3.3.1).
    pub fn check(self) -> Result<(), EptError> {
        if self.contains(Self::WRITE) && !self.contains(Self::READ) {
            Err(EptError::WriteWithoutRead)
        } else {
            Ok(())
        }
    }
}

impl BitOr for EptPermissions {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        self.union(rhs)
    }
}

impl fmt::Debug for EptPermissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flag = |p: Self, c: char| if self.contains(p) { c } else { '-' };
        write!(f, "EptPermissions({}{}{})", flag(Self::READ, 'r'), flag(Self::WRITE, 'w'), flag(Self::EXECUTE, 'x'))
    }
}

/// EPT memory type of a leaf entry, bits 5:3 (SDM 29.3.7; 2, 3 and 7 are reserved and
/// cause an EPT misconfiguration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MemoryType {
    /// UC.
    Uncacheable = 0,
    /// WC.
    WriteCombining = 1,
    /// WT.
    WriteThrough = 4,
    /// WP.
    WriteProtected = 5,
    /// WB.
    WriteBack = 6,
}

impl MemoryType {
    /// From the 3-bit encoding; `None` for the reserved values.
    pub const fn from_bits(bits: u8) -> Option<Self> {
        match bits {
            0 => Some(Self::Uncacheable),
            1 => Some(Self::WriteCombining),
            4 => Some(Self::WriteThrough),
            5 => Some(Self::WriteProtected),
            6 => Some(Self::WriteBack),
            _ => None,
        }
    }
}

/// Size of the page a translation comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PageSize {
    /// 4 KiB, mapped by a PTE.
    Size4K,
    /// 2 MiB, mapped by a PDE with bit 7 set.
    Size2M,
    /// 1 GiB, mapped by a PDPTE with bit 7 set.
    Size1G,
}

impl PageSize {
    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        match self {
            Self::Size4K => SIZE_4K,
            Self::Size2M => SIZE_2M,
            Self::Size1G => SIZE_1G,
        }
    }

    /// The paging-structure level holding the leaf: 1 = PT, 2 = PD, 3 = PDPT.
    const fn level(self) -> u8 {
        match self {
            Self::Size4K => 1,
            Self::Size2M => 2,
            Self::Size1G => 3,
        }
    }

    const fn from_level(level: u8) -> Self {
        match level {
            3 => Self::Size1G,
            2 => Self::Size2M,
            _ => Self::Size4K,
        }
    }
}

/// Large EPT pages the CPU supports (IA32_VMX_EPT_VPID_CAP bit 16: 2 MiB, bit 17: 1 GiB;
/// SDM Vol. 3D A.10). The default is none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LargePages {
    /// 2 MiB pages (PDEs with bit 7 set).
    pub two_mib: bool,
    /// 1 GiB pages (PDPTEs with bit 7 set).
    pub one_gib: bool,
}

/// The result of translating one guest-physical address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// The host-physical address of the byte.
    pub hpa: HostPhysAddr,
    /// Access rights of the page.
    pub perms: EptPermissions,
    /// Memory type of the page.
    pub mtype: MemoryType,
    /// Size of the page that maps it.
    pub size: PageSize,
}

/// Why an EPT operation was refused. The tables are unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EptError {
    /// An address or the length is not a multiple of 4 KiB.
    Unaligned,
    /// The length is zero.
    ZeroLength,
    /// The range wraps around, or leaves the 48-bit guest-physical or 52-bit
    /// host-physical address space.
    Overflow,
    /// `map`: this guest-physical address (the lowest one in the range) is already mapped.
    AlreadyMapped {
        /// The first mapped address in the requested range.
        gpa: GuestPhysAddr,
    },
    /// `unmap`/`protect`: this guest-physical address (the lowest one in the range) is not
    /// mapped.
    NotMapped {
        /// The first unmapped address in the requested range.
        gpa: GuestPhysAddr,
    },
    /// The [`TableMemory`] could not supply a table.
    OutOfTables,
    /// Write access without read access (an EPT misconfiguration, SDM 29.3.3.1).
    WriteWithoutRead,
}

impl fmt::Display for EptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unaligned => f.write_str("address or length not 4 KiB-aligned"),
            Self::ZeroLength => f.write_str("zero-length range"),
            Self::Overflow => f.write_str("range overflows the physical address space"),
            Self::AlreadyMapped { gpa } => write!(f, "guest-physical address {gpa:#x} is already mapped"),
            Self::NotMapped { gpa } => write!(f, "guest-physical address {gpa:#x} is not mapped"),
            Self::OutOfTables => f.write_str("out of memory for EPT tables"),
            Self::WriteWithoutRead => f.write_str("EPT write permission without read permission"),
        }
    }
}

/// Proof that the EPT changed: execute a single-context INVEPT for this EPT's EPTP (on
/// every logical processor that may use it) before the guest runs again, then call
/// [`InveptRequired::acknowledge`].
///
/// [`Ept::map`] returns it too. Mapping a range that was not mapped only turns
/// not-present entries into present ones, which the CPU does not cache, so for `map` the
/// INVEPT is harmless but not strictly needed; the uniform token keeps callers simple.
#[must_use = "the EPT changed: INVEPT (single-context) before the guest runs again"]
#[derive(Debug)]
pub struct InveptRequired {
    _private: (),
}

impl InveptRequired {
    const fn new() -> Self {
        Self { _private: () }
    }

    /// Records that the INVEPT was done.
    pub fn acknowledge(self) {}
}

/// What an entry at a given level is.
enum Kind {
    Absent,
    Leaf,
    Table(HostPhysAddr),
}

/// Entry kind at `level` (4 = PML4 ... 1 = PT).
fn kind(entry: u64, level: u8) -> Kind {
    if entry & SW_PRESENT == 0 {
        Kind::Absent
    } else if level == 1 || (level < 4 && entry & LARGE_PAGE != 0) {
        Kind::Leaf
    } else {
        Kind::Table(HostPhysAddr::new(entry & ADDR_MASK))
    }
}

/// Bytes translated by one entry at `level`.
const fn entry_size(level: u8) -> u64 {
    1 << (12 + 9 * (level as u32 - 1))
}

/// Index of `gpa` in a table at `level`.
const fn index_of(gpa: u64, level: u8) -> usize {
    ((gpa >> (12 + 9 * (level as u32 - 1))) & 0x1ff) as usize
}

/// Indices (inclusive) of the entries of a table at `level` covering `base..` that
/// intersect `start..end`. The intersection must be non-empty.
fn index_span(level: u8, base: u64, start: u64, end: u64) -> (usize, usize) {
    let size = entry_size(level);
    let lo = start.max(base);
    let hi = end.min(base + ENTRIES_PER_TABLE as u64 * size);
    debug_assert!(lo < hi);
    (((lo - base) / size) as usize, ((hi - 1 - base) / size) as usize)
}

/// A non-leaf entry pointing at `table`. All rights allowed; the leaves restrict them.
fn table_entry(table: HostPhysAddr) -> u64 {
    (table.as_u64() & ADDR_MASK) | PERM_MASK | SW_PRESENT
}

/// A leaf entry found by a walk.
struct LeafRef {
    table: HostPhysAddr,
    index: usize,
    level: u8,
    entry: u64,
    /// Guest-physical address of the page.
    base: u64,
}

/// An EPT hierarchy (PML4 root) over table memory `M`.
pub struct Ept<M: TableMemory> {
    mem: M,
    root: HostPhysAddr,
    large: LargePages,
    mapped: u64,
}

impl<M: TableMemory> fmt::Debug for Ept<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ept")
            .field("root", &self.root)
            .field("large", &self.large)
            .field("mapped", &self.mapped)
            .finish_non_exhaustive()
    }
}

impl<M: TableMemory> Ept<M> {
    /// An empty EPT: allocates the PML4 table. `large` is what the CPU supports; larger
    /// pages are never used beyond it.
    pub fn new(mut mem: M, large: LargePages) -> Result<Self, EptError> {
        let root = mem.allocate_table().ok_or(EptError::OutOfTables)?;
        Ok(Self { mem, root, large, mapped: 0 })
    }

    /// Host-physical address of the PML4 table.
    pub fn root(&self) -> HostPhysAddr {
        self.root
    }

    /// The EPTP VMCS field for this EPT (SDM Vol. 3C 25.6.11): write-back paging
    /// structures, 4-level walk, accessed/dirty flags enabled if `accessed_dirty` (only if
    /// the CPU supports them, IA32_VMX_EPT_VPID_CAP bit 21).
    pub fn eptp(&self, accessed_dirty: bool) -> u64 {
        let ad = if accessed_dirty { EPTP_AD_ENABLE } else { 0 };
        (self.root.as_u64() & ADDR_MASK) | EPTP_MEMTYPE_WB | EPTP_WALK_LENGTH_4 | ad
    }

    /// The table memory.
    pub fn mem(&self) -> &M {
        &self.mem
    }

    /// The table memory, mutably. Changing the tables behind the builder's back breaks it.
    pub fn mem_mut(&mut self) -> &mut M {
        &mut self.mem
    }

    /// The large pages this EPT may use.
    pub fn large_pages(&self) -> LargePages {
        self.large
    }

    /// Total bytes of guest-physical address space mapped (including pages with
    /// [`EptPermissions::NONE`]).
    pub fn mapped_bytes(&self) -> u64 {
        self.mapped
    }

    /// Maps `gpa..gpa + len` to `hpa..hpa + len` with the given rights and memory type
    /// (leaves have "ignore PAT" set, so `mtype` is the effective type).
    ///
    /// Both addresses and `len` must be 4 KiB-aligned and `len` non-zero. No page of the
    /// range may be mapped already. Each chunk uses the largest page the CPU supports for
    /// which `gpa`, `hpa` and the remaining length allow it. On error nothing changed.
    pub fn map(
        &mut self,
        gpa: GuestPhysAddr,
        hpa: HostPhysAddr,
        len: u64,
        perms: EptPermissions,
        mtype: MemoryType,
    ) -> Result<InveptRequired, EptError> {
        perms.check()?;
        let (start, end) = check_range(gpa, len)?;
        if !hpa.is_aligned(SIZE_4K) {
            return Err(EptError::Unaligned);
        }
        hpa.as_u64().checked_add(len).filter(|&e| e <= HPA_LIMIT).ok_or(EptError::Overflow)?;
        if let Some(first) = self.first_mapped(self.root, 4, 0, start, end) {
            return Err(EptError::AlreadyMapped { gpa: GuestPhysAddr::new(first) });
        }

        let attrs = u64::from(perms.bits()) | (mtype as u64) << MEMTYPE_SHIFT | IGNORE_PAT | SW_PRESENT;
        let (mut g, mut h) = (start, hpa.as_u64());
        while g < end {
            let size = self.chunk_size(g, h, end - g);
            if let Err(e) = self.install_leaf(g, h, size, attrs) {
                // Everything in start..g was unmapped before, so clearing the range (and
                // freeing the tables that end up empty, including ones just allocated)
                // restores the previous state: no empty table exists outside a call.
                self.clear_range(self.root, 4, 0, start, end);
                return Err(e);
            }
            self.mapped += size.bytes();
            g += size.bytes();
            h += size.bytes();
        }
        Ok(InveptRequired::new())
    }

    /// Unmaps `gpa..gpa + len`. Every page in the range must be mapped. Large pages that
    /// the range covers only in part are split; the rest keeps its translation, rights
    /// and memory type. Tables that become empty are freed. On error nothing changed.
    pub fn unmap(&mut self, gpa: GuestPhysAddr, len: u64) -> Result<InveptRequired, EptError> {
        let (start, end) = check_range(gpa, len)?;
        self.check_all_mapped(start, end)?;
        self.split_boundaries(start, end)?;
        self.clear_range(self.root, 4, 0, start, end);
        Ok(InveptRequired::new())
    }

    /// Sets the rights of `gpa..gpa + len` to `perms`. Every page in the range must be
    /// mapped. Large pages that the range covers only in part are split. On error nothing
    /// changed.
    pub fn protect(&mut self, gpa: GuestPhysAddr, len: u64, perms: EptPermissions) -> Result<InveptRequired, EptError> {
        perms.check()?;
        let (start, end) = check_range(gpa, len)?;
        self.check_all_mapped(start, end)?;
        self.split_boundaries(start, end)?;
        self.protect_range(self.root, 4, 0, start, end, u64::from(perms.bits()));
        Ok(InveptRequired::new())
    }

    /// Translates one guest-physical address, or `None` if it is not mapped.
    pub fn translate(&self, gpa: GuestPhysAddr) -> Option<Translation> {
        let gpa = gpa.as_u64();
        let leaf = self.find_leaf(gpa)?;
        let size = PageSize::from_level(leaf.level);
        let page_hpa = leaf.entry & ADDR_MASK & !(size.bytes() - 1);
        Some(Translation {
            hpa: HostPhysAddr::new(page_hpa + (gpa - leaf.base)),
            perms: EptPermissions((leaf.entry & PERM_MASK) as u8),
            mtype: MemoryType::from_bits(((leaf.entry & MEMTYPE_MASK) >> MEMTYPE_SHIFT) as u8)?,
            size,
        })
    }

    /// Frees every table, the PML4 included, and returns the memory.
    pub fn destroy(mut self) -> M {
        self.free_subtree(self.root, 4);
        self.mem.free_table(self.root);
        self.mem
    }

    // ---- internals ----

    /// The largest page usable at `g`/`h` with `remaining` bytes left.
    fn chunk_size(&self, g: u64, h: u64, remaining: u64) -> PageSize {
        let fits = |size: u64| g.is_multiple_of(size) && h.is_multiple_of(size) && remaining >= size;
        if self.large.one_gib && fits(SIZE_1G) {
            PageSize::Size1G
        } else if self.large.two_mib && fits(SIZE_2M) {
            PageSize::Size2M
        } else {
            PageSize::Size4K
        }
    }

    /// Writes one leaf, creating the tables above it. The slot must be free.
    fn install_leaf(&mut self, g: u64, h: u64, size: PageSize, attrs: u64) -> Result<(), EptError> {
        let leaf_level = size.level();
        let mut table = self.root;
        let mut level = 4;
        while level > leaf_level {
            let index = index_of(g, level);
            let entry = self.mem.read(table, index);
            table = match kind(entry, level) {
                Kind::Table(child) => child,
                Kind::Absent => {
                    let child = self.mem.allocate_table().ok_or(EptError::OutOfTables)?;
                    self.mem.write(table, index, table_entry(child));
                    child
                }
                Kind::Leaf => {
                    debug_assert!(false, "overlap check missed a mapping");
                    return Err(EptError::AlreadyMapped { gpa: GuestPhysAddr::new(g) });
                }
            };
            level -= 1;
        }
        let index = index_of(g, leaf_level);
        debug_assert!(matches!(kind(self.mem.read(table, index), leaf_level), Kind::Absent));
        let large = if leaf_level > 1 { LARGE_PAGE } else { 0 };
        self.mem.write(table, index, attrs | large | (h & ADDR_MASK));
        Ok(())
    }

    /// The leaf mapping `gpa`, if any.
    fn find_leaf(&self, gpa: u64) -> Option<LeafRef> {
        if gpa >= GPA_LIMIT {
            return None;
        }
        let mut table = self.root;
        let mut level = 4;
        loop {
            let index = index_of(gpa, level);
            let entry = self.mem.read(table, index);
            match kind(entry, level) {
                Kind::Absent => return None,
                Kind::Leaf => {
                    let base = gpa & !(entry_size(level) - 1);
                    return Some(LeafRef { table, index, level, entry, base });
                }
                Kind::Table(child) => {
                    table = child;
                    level -= 1;
                }
            }
        }
    }

    /// Lowest mapped address in `start..end` within the table at `level` covering `base..`.
    fn first_mapped(&self, table: HostPhysAddr, level: u8, base: u64, start: u64, end: u64) -> Option<u64> {
        let size = entry_size(level);
        let (first, last) = index_span(level, base, start, end);
        for index in first..=last {
            let entry_base = base + index as u64 * size;
            match kind(self.mem.read(table, index), level) {
                Kind::Absent => {}
                Kind::Leaf => return Some(entry_base.max(start)),
                Kind::Table(child) => {
                    if let Some(found) = self.first_mapped(child, level - 1, entry_base, start, end) {
                        return Some(found);
                    }
                }
            }
        }
        None
    }

    /// Lowest unmapped address in `start..end` within the table at `level` covering `base..`.
    fn first_unmapped(&self, table: HostPhysAddr, level: u8, base: u64, start: u64, end: u64) -> Option<u64> {
        let size = entry_size(level);
        let (first, last) = index_span(level, base, start, end);
        for index in first..=last {
            let entry_base = base + index as u64 * size;
            match kind(self.mem.read(table, index), level) {
                Kind::Absent => return Some(entry_base.max(start)),
                Kind::Leaf => {}
                Kind::Table(child) => {
                    if let Some(found) = self.first_unmapped(child, level - 1, entry_base, start, end) {
                        return Some(found);
                    }
                }
            }
        }
        None
    }

    fn check_all_mapped(&self, start: u64, end: u64) -> Result<(), EptError> {
        match self.first_unmapped(self.root, 4, 0, start, end) {
            Some(gpa) => Err(EptError::NotMapped { gpa: GuestPhysAddr::new(gpa) }),
            None => Ok(()),
        }
    }

    /// Splits the large pages that straddle `start` or `end`, so that afterwards every leaf
    /// intersecting `start..end` lies inside it. Either all the tables needed are
    /// allocated up front, or nothing changes and `OutOfTables` is returned.
    fn split_boundaries(&mut self, start: u64, end: u64) -> Result<(), EptError> {
        // Pages to split, as (level, gpa of the page): at most a 1 GiB page and one of its
        // 2 MiB sub-pages for each boundary.
        let mut plan = [(0u8, 0u64); 4];
        let mut planned = 0;
        for b in [start, end] {
            let Some(leaf) = self.find_leaf(b) else { continue };
            if leaf.base == b {
                continue;
            }
            let mut push = |page: (u8, u64)| {
                if !plan[..planned].contains(&page) {
                    plan[planned] = page;
                    planned += 1;
                }
            };
            push((leaf.level, leaf.base));
            if leaf.level == 3 && !b.is_multiple_of(SIZE_2M) {
                push((2, b & !(SIZE_2M - 1)));
            }
        }

        let mut pool = [HostPhysAddr::new(0); 4];
        for i in 0..planned {
            match self.mem.allocate_table() {
                Some(t) => pool[i] = t,
                None => {
                    for &t in &pool[..i] {
                        self.mem.free_table(t);
                    }
                    return Err(EptError::OutOfTables);
                }
            }
        }

        let mut used = 0;
        for b in [start, end] {
            while let Some(leaf) = self.find_leaf(b) {
                if leaf.base == b {
                    break;
                }
                debug_assert!(used < planned, "split plan too small");
                self.split(&leaf, pool[used]);
                used += 1;
            }
        }
        debug_assert_eq!(used, planned, "split plan too large");
        for &t in &pool[used..planned] {
            self.mem.free_table(t);
        }
        Ok(())
    }

    /// Replaces a large leaf by a table (`new_table`, zeroed) of 512 leaves one level down
    /// with the same translation, rights, memory type and flags.
    fn split(&mut self, leaf: &LeafRef, new_table: HostPhysAddr) {
        debug_assert!(leaf.level > 1);
        let child_level = leaf.level - 1;
        let child_size = entry_size(child_level);
        let page_hpa = leaf.entry & ADDR_MASK;
        let large = if child_level > 1 { LARGE_PAGE } else { 0 };
        let attrs = leaf.entry & !ADDR_MASK & !LARGE_PAGE;
        for i in 0..ENTRIES_PER_TABLE {
            self.mem.write(new_table, i, attrs | large | (page_hpa + i as u64 * child_size));
        }
        // The table is complete before it becomes visible.
        self.mem.write(leaf.table, leaf.index, table_entry(new_table));
    }

    /// Clears every leaf in `start..end` (leaves must not straddle the bounds) under the
    /// table at `level` covering `base..`, freeing tables that end up empty. Returns
    /// whether this table is now empty.
    fn clear_range(&mut self, table: HostPhysAddr, level: u8, base: u64, start: u64, end: u64) -> bool {
        let size = entry_size(level);
        let (first, last) = index_span(level, base, start, end);
        for index in first..=last {
            let entry_base = base + index as u64 * size;
            match kind(self.mem.read(table, index), level) {
                Kind::Absent => {}
                Kind::Leaf => {
                    debug_assert!(start <= entry_base && entry_base + size <= end, "leaf straddles the range");
                    self.mem.write(table, index, 0);
                    self.mapped -= size;
                }
                Kind::Table(child) => {
                    if self.clear_range(child, level - 1, entry_base, start, end) {
                        self.mem.write(table, index, 0);
                        self.mem.free_table(child);
                    }
                }
            }
        }
        (0..ENTRIES_PER_TABLE).all(|i| self.mem.read(table, i) & SW_PRESENT == 0)
    }

    /// Sets the rights bits of every leaf in `start..end` (leaves must not straddle the
    /// bounds) under the table at `level` covering `base..`.
    fn protect_range(&mut self, table: HostPhysAddr, level: u8, base: u64, start: u64, end: u64, perms: u64) {
        let size = entry_size(level);
        let (first, last) = index_span(level, base, start, end);
        for index in first..=last {
            let entry = self.mem.read(table, index);
            match kind(entry, level) {
                Kind::Absent => {}
                Kind::Leaf => {
                    debug_assert!({
                        let entry_base = base + index as u64 * size;
                        start <= entry_base && entry_base + size <= end
                    });
                    self.mem.write(table, index, (entry & !PERM_MASK) | perms);
                }
                Kind::Table(child) => {
                    self.protect_range(child, level - 1, base + index as u64 * size, start, end, perms);
                }
            }
        }
    }

    /// Frees every table below the table at `level` (not the table itself).
    fn free_subtree(&mut self, table: HostPhysAddr, level: u8) {
        for index in 0..ENTRIES_PER_TABLE {
            if let Kind::Table(child) = kind(self.mem.read(table, index), level) {
                self.free_subtree(child, level - 1);
                self.mem.write(table, index, 0);
                self.mem.free_table(child);
            }
        }
    }
}

/// Validates a guest-physical range; returns `(start, end)`.
fn check_range(gpa: GuestPhysAddr, len: u64) -> Result<(u64, u64), EptError> {
    if len == 0 {
        return Err(EptError::ZeroLength);
    }
    if !gpa.is_aligned(SIZE_4K) || !len.is_multiple_of(SIZE_4K) {
        return Err(EptError::Unaligned);
    }
    let start = gpa.as_u64();
    let end = start.checked_add(len).filter(|&e| e <= GPA_LIMIT).ok_or(EptError::Overflow)?;
    Ok((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    /// Host-physical address of the first test table.
    const MEM_BASE: u64 = 0x10_0000_0000;

    /// Table memory over a `Vec`; frames are never reused, so a use after free panics.
    #[derive(Default)]
    struct TestMem {
        tables: Vec<Option<Box<[u64; ENTRIES_PER_TABLE]>>>,
        live: usize,
        /// Allocations still allowed; `None` for unlimited.
        quota: Option<usize>,
        allocations: usize,
    }

    impl TestMem {
        fn slot(&self, table: HostPhysAddr) -> usize {
            let a = table.as_u64();
            assert!(a >= MEM_BASE && a.is_multiple_of(SIZE_4K), "bad table address {table:?}");
            ((a - MEM_BASE) / SIZE_4K) as usize
        }

        fn table(&self, table: HostPhysAddr) -> &[u64; ENTRIES_PER_TABLE] {
            self.tables[self.slot(table)].as_ref().expect("access to a freed table")
        }

        /// Every live table and its contents.
        fn snapshot(&self) -> BTreeMap<usize, Vec<u64>> {
            let live = self.tables.iter().enumerate();
            live.filter_map(|(i, t)| t.as_ref().map(|t| (i, t.to_vec()))).collect()
        }
    }

    impl TableMemory for TestMem {
        fn allocate_table(&mut self) -> Option<HostPhysAddr> {
            if let Some(q) = &mut self.quota {
                *q = q.checked_sub(1)?;
            }
            self.tables.push(Some(Box::new([0; ENTRIES_PER_TABLE])));
            self.live += 1;
            self.allocations += 1;
            Some(HostPhysAddr::new(MEM_BASE + (self.tables.len() as u64 - 1) * SIZE_4K))
        }

        fn read(&self, table: HostPhysAddr, index: usize) -> u64 {
            self.table(table)[index]
        }

        fn write(&mut self, table: HostPhysAddr, index: usize, value: u64) {
            let slot = self.slot(table);
            self.tables[slot].as_mut().expect("write to a freed table")[index] = value;
        }

        fn free_table(&mut self, table: HostPhysAddr) {
            let slot = self.slot(table);
            assert!(self.tables[slot].take().is_some(), "double free of {table:?}");
            self.live -= 1;
        }
    }

    const ALL: LargePages = LargePages { two_mib: true, one_gib: true };
    const ONLY_2M: LargePages = LargePages { two_mib: true, one_gib: false };
    const ONLY_1G: LargePages = LargePages { two_mib: false, one_gib: true };
    const NO_LARGE: LargePages = LargePages { two_mib: false, one_gib: false };
    const WB: MemoryType = MemoryType::WriteBack;

    fn g(a: u64) -> GuestPhysAddr {
        GuestPhysAddr::new(a)
    }

    fn h(a: u64) -> HostPhysAddr {
        HostPhysAddr::new(a)
    }

    fn new_ept(large: LargePages) -> Ept<TestMem> {
        Ept::new(TestMem::default(), large).unwrap()
    }

    fn map(ept: &mut Ept<TestMem>, gpa: u64, hpa: u64, len: u64, perms: EptPermissions, mtype: MemoryType) {
        ept.map(g(gpa), h(hpa), len, perms, mtype).unwrap().acknowledge();
    }

    /// Tables reachable from the root (including it).
    fn reachable(ept: &Ept<TestMem>) -> usize {
        fn walk(mem: &TestMem, table: HostPhysAddr, level: u8) -> usize {
            1 + (0..ENTRIES_PER_TABLE)
                .filter_map(|i| match kind(mem.read(table, i), level) {
                    Kind::Table(child) => Some(walk(mem, child, level - 1)),
                    _ => None,
                })
                .sum::<usize>()
        }
        walk(ept.mem(), ept.root(), 4)
    }

    /// Live tables, checking that none leaked.
    fn live(ept: &Ept<TestMem>) -> usize {
        assert_eq!(reachable(ept), ept.mem().live, "leaked or dangling tables");
        ept.mem().live
    }

    /// The page sizes covering `start..end`, run-length encoded.
    fn sizes(ept: &Ept<TestMem>, start: u64, end: u64) -> Vec<(PageSize, usize)> {
        let mut out: Vec<(PageSize, usize)> = Vec::new();
        let mut cur = start;
        while cur < end {
            let t = ept.translate(g(cur)).unwrap_or_else(|| panic!("{cur:#x} not mapped"));
            match out.last_mut() {
                Some((s, n)) if *s == t.size => *n += 1,
                _ => out.push((t.size, 1)),
            }
            cur = (cur & !(t.size.bytes() - 1)) + t.size.bytes();
        }
        out
    }

    fn check_range_maps(ept: &Ept<TestMem>, gpa: u64, hpa: u64, len: u64, perms: EptPermissions, mt: MemoryType) {
        let step = (len / 7).max(1);
        let offsets = (0..len).step_by(step as usize).chain([0, 1, 0xfff, 0x1000, len / 2, len - 8, len - 1]);
        for off in offsets {
            let t = ept.translate(g(gpa + off)).unwrap();
            assert_eq!((t.hpa, t.perms, t.mtype), (h(hpa + off), perms, mt), "at {:#x}", gpa + off);
        }
    }

    #[test]
    fn translate_at_every_offset_class() {
        let mut ept = new_ept(ALL);
        map(&mut ept, 0x1000, 0x7000, SIZE_4K, EptPermissions::R, MemoryType::Uncacheable);
        map(&mut ept, 0x40_0000, 0x8000_0000, SIZE_2M, EptPermissions::RW, MemoryType::WriteCombining);
        map(&mut ept, SIZE_1G, 3 * SIZE_1G, SIZE_1G, EptPermissions::RX, MemoryType::WriteThrough);
        map(&mut ept, 0x8_0000_0000, 0xF_FFFF_FFFF_F000, SIZE_4K, EptPermissions::RWX, MemoryType::WriteProtected);
        let cases = [
            (0x1000, 0x7000, SIZE_4K, PageSize::Size4K, EptPermissions::R, MemoryType::Uncacheable),
            (0x40_0000, 0x8000_0000, SIZE_2M, PageSize::Size2M, EptPermissions::RW, MemoryType::WriteCombining),
            (SIZE_1G, 3 * SIZE_1G, SIZE_1G, PageSize::Size1G, EptPermissions::RX, MemoryType::WriteThrough),
            (0x8_0000_0000, 0xF_FFFF_FFFF_F000, SIZE_4K, PageSize::Size4K, EptPermissions::RWX, WB_PROT),
        ];
        const WB_PROT: MemoryType = MemoryType::WriteProtected;
        for (gpa, hpa, len, size, perms, mt) in cases {
            for off in [0, 1, 7, 8, 0x7ff, 0x800, 0xfff, 0x1000, len / 2 - 1, len / 2, len - 0x1000, len - 8, len - 1] {
                if off >= len {
                    continue;
                }
                let t = ept.translate(g(gpa + off)).unwrap();
                assert_eq!(t, Translation { hpa: h(hpa + off), perms, mtype: mt, size }, "gpa {:#x}", gpa + off);
            }
            assert_eq!(ept.translate(g(gpa - 1)), None);
            assert_eq!(ept.translate(g(gpa + len)), None);
        }
        for unmapped in [0, 0x3F_FFFF, 0x60_0000, 0x3FFF_FFFF, 2 * SIZE_1G, GPA_LIMIT - 1, GPA_LIMIT, u64::MAX] {
            assert_eq!(ept.translate(g(unmapped)), None, "{unmapped:#x}");
        }
        assert_eq!(ept.mapped_bytes(), 2 * SIZE_4K + SIZE_2M + SIZE_1G);
    }

    #[test]
    fn page_size_choice() {
        use PageSize::*;
        type Case = (LargePages, u64, Vec<(PageSize, usize)>, usize);
        let cases: [Case; 6] = [
            (ALL, 2 * SIZE_1G, vec![(Size1G, 1)], 2),
            (ONLY_2M, 2 * SIZE_1G, vec![(Size2M, 512)], 3),
            (NO_LARGE, 2 * SIZE_1G, vec![(Size4K, 512 * 512)], 3 + 512),
            (ONLY_1G, 2 * SIZE_1G, vec![(Size1G, 1)], 2),
            // An hpa that is only 4 KiB (or 2 MiB) aligned forces small pages.
            (ALL, 2 * SIZE_1G + SIZE_4K, vec![(Size4K, 512 * 512)], 3 + 512),
            (ALL, 2 * SIZE_1G + SIZE_2M, vec![(Size2M, 512)], 3),
        ];
        for (large, hpa, expect, tables) in cases {
            let mut ept = new_ept(large);
            map(&mut ept, SIZE_1G, hpa, SIZE_1G, EptPermissions::RWX, WB);
            assert_eq!(sizes(&ept, SIZE_1G, 2 * SIZE_1G), expect, "{large:?} hpa {hpa:#x}");
            assert_eq!(live(&ept), tables);
            check_range_maps(&ept, SIZE_1G, hpa, SIZE_1G, EptPermissions::RWX, WB);
        }

        // A range that is not aligned at either end: small pages up to the first large
        // boundary, then the largest pages, then small ones again.
        let (gpa, hpa) = (SIZE_1G - 2 * SIZE_4K, 5 * SIZE_1G - 2 * SIZE_4K);
        let len = 2 * SIZE_4K + SIZE_1G + SIZE_2M + 3 * SIZE_4K;
        let mut ept = new_ept(ALL);
        map(&mut ept, gpa, hpa, len, EptPermissions::RW, WB);
        assert_eq!(sizes(&ept, gpa, gpa + len), vec![(Size4K, 2), (Size1G, 1), (Size2M, 1), (Size4K, 3)]);
        check_range_maps(&ept, gpa, hpa, len, EptPermissions::RW, WB);
        assert_eq!(ept.mapped_bytes(), len);

        // Without 1 GiB support the same range uses 2 MiB pages in the middle.
        let mut ept = new_ept(ONLY_2M);
        map(&mut ept, gpa, hpa, len, EptPermissions::RW, WB);
        assert_eq!(sizes(&ept, gpa, gpa + len), vec![(Size4K, 2), (Size2M, 513), (Size4K, 3)]);

        // gpa and hpa aligned differently: 4 KiB pages only.
        let mut ept = new_ept(ALL);
        map(&mut ept, 0, SIZE_4K, 2 * SIZE_2M, EptPermissions::RW, WB);
        assert_eq!(sizes(&ept, 0, 2 * SIZE_2M), vec![(Size4K, 1024)]);
    }

    #[test]
    fn leaf_entry_format() {
        let mut ept = new_ept(ALL);
        map(&mut ept, SIZE_1G, 7 * SIZE_1G, SIZE_1G, EptPermissions::RX, MemoryType::WriteThrough);
        map(&mut ept, 0x20_0000, 0x4060_0000, SIZE_2M, EptPermissions::RW, WB);
        map(&mut ept, 0x5000, 0x1234_5000, SIZE_4K, EptPermissions::NONE, MemoryType::Uncacheable);
        let mem = ept.mem();
        let pml4e = mem.read(ept.root(), 0);
        assert_eq!(pml4e & 0xff, 0b111, "non-leaf: RWX, bits 7:3 zero");
        let pdpt = h(pml4e & ADDR_MASK);
        assert_eq!(mem.read(pdpt, 1), (7 * SIZE_1G) | 1 << 7 | 1 << 6 | 4 << 3 | 0b101 | SW_PRESENT);
        let pd = h(mem.read(pdpt, 0) & ADDR_MASK);
        assert_eq!(mem.read(pd, 1), 0x4060_0000 | 1 << 7 | 1 << 6 | 6 << 3 | 0b011 | SW_PRESENT);
        let pt = h(mem.read(pd, 0) & ADDR_MASK);
        assert_eq!(mem.read(pt, 5), 0x1234_5000 | 1 << 6 | SW_PRESENT);
        assert_eq!(ept.translate(g(0x5abc)).unwrap().perms, EptPermissions::NONE);
    }

    #[test]
    fn eptp_format() {
        let ept = new_ept(ALL);
        let root = ept.root().as_u64();
        assert_eq!(ept.eptp(false), root | 6 | 3 << 3);
        assert_eq!(ept.eptp(true), root | 6 | 3 << 3 | 1 << 6);
        assert_eq!(ept.eptp(false) & 0xfff, 0x1e);
    }

    #[test]
    fn argument_errors() {
        let mut ept = new_ept(ALL);
        let rw = EptPermissions::RW;
        let mut try_map = |gpa, hpa, len, p| ept.map(g(gpa), h(hpa), len, p, WB).map(InveptRequired::acknowledge);
        assert_eq!(try_map(0x1000, 0x1000, 0, rw), Err(EptError::ZeroLength));
        assert_eq!(try_map(0x1001, 0x1000, 0x1000, rw), Err(EptError::Unaligned));
        assert_eq!(try_map(0x1000, 0x1800, 0x1000, rw), Err(EptError::Unaligned));
        assert_eq!(try_map(0x1000, 0x1000, 0x1100, rw), Err(EptError::Unaligned));
        assert_eq!(try_map(GPA_LIMIT - 0x1000, 0, 0x2000, rw), Err(EptError::Overflow));
        assert_eq!(try_map(GPA_LIMIT, 0, 0x1000, rw), Err(EptError::Overflow));
        assert_eq!(try_map(u64::MAX - 0xfff, 0, 0x1000, rw), Err(EptError::Overflow));
        assert_eq!(try_map(0, HPA_LIMIT - 0x1000, 0x2000, rw), Err(EptError::Overflow));
        assert_eq!(try_map(0, u64::MAX - 0xfff, 0x2000, rw), Err(EptError::Overflow));
        assert_eq!(try_map(0, 0, 0x1000, EptPermissions::WRITE), Err(EptError::WriteWithoutRead));
        assert_eq!(
            try_map(0, 0, 0x1000, EptPermissions::WRITE | EptPermissions::EXECUTE),
            Err(EptError::WriteWithoutRead)
        );
        assert_eq!(try_map(GPA_LIMIT - 0x1000, HPA_LIMIT - 0x1000, 0x1000, rw), Ok(()));
        assert_eq!(ept.unmap(g(0x1000), 0).map(InveptRequired::acknowledge), Err(EptError::ZeroLength));
        assert_eq!(ept.unmap(g(0x1800), 0x1000).map(InveptRequired::acknowledge), Err(EptError::Unaligned));
        assert_eq!(ept.unmap(g(GPA_LIMIT), 0x1000).map(InveptRequired::acknowledge), Err(EptError::Overflow));
        let prot = ept.protect(g(GPA_LIMIT - 0x1000), 0x1000, EptPermissions::WRITE);
        assert_eq!(prot.map(InveptRequired::acknowledge), Err(EptError::WriteWithoutRead));
        assert_eq!(ept.mapped_bytes(), 0x1000);
        assert_eq!(ept.unmap(g(GPA_LIMIT - 0x1000), 0x1000).map(InveptRequired::acknowledge), Ok(()));
        assert_eq!(live(&ept), 1);
    }

    #[test]
    fn error_display() {
        assert_eq!(
            EptError::AlreadyMapped { gpa: g(0x20_0000) }.to_string(),
            "guest-physical address 0x200000 is already mapped"
        );
        assert_eq!(EptError::NotMapped { gpa: g(0x1000) }.to_string(), "guest-physical address 0x1000 is not mapped");
        assert_eq!(EptError::OutOfTables.to_string(), "out of memory for EPT tables");
        assert_eq!(format!("{:?}", EptPermissions::RX), "EptPermissions(r-x)");
    }

    #[test]
    fn overlap_is_refused_and_changes_nothing() {
        let mut ept = new_ept(ALL);
        map(&mut ept, SIZE_2M, 0x4000_0000, SIZE_2M, EptPermissions::RW, WB);
        map(&mut ept, 8 * SIZE_2M, 0x5000_0000, SIZE_4K, EptPermissions::RW, WB);
        let before = ept.mem().snapshot();
        let cases = [
            (SIZE_2M + SIZE_4K, SIZE_4K, SIZE_2M + SIZE_4K),
            (SIZE_2M, SIZE_2M, SIZE_2M),
            (SIZE_2M - SIZE_4K, 2 * SIZE_4K, SIZE_2M),
            (0, SIZE_1G, SIZE_2M),
            (2 * SIZE_2M - SIZE_4K, SIZE_4K, 2 * SIZE_2M - SIZE_4K),
            (4 * SIZE_2M, 8 * SIZE_2M, 8 * SIZE_2M),
            (8 * SIZE_2M, SIZE_4K, 8 * SIZE_2M),
        ];
        for (gpa, len, first) in cases {
            let r = ept.map(g(gpa), h(0x8000_0000), len, EptPermissions::RWX, WB);
            assert_eq!(r.map(InveptRequired::acknowledge), Err(EptError::AlreadyMapped { gpa: g(first) }));
            assert_eq!(ept.mem().snapshot(), before);
            assert_eq!(ept.mapped_bytes(), SIZE_2M + SIZE_4K);
        }
        assert_eq!(ept.mem().allocations, 3 + 1);
        // The neighbours are free.
        map(&mut ept, 2 * SIZE_2M, 0x8000_0000, 6 * SIZE_2M, EptPermissions::RWX, WB);
        map(&mut ept, 0, 0x9000_0000, SIZE_2M, EptPermissions::RWX, WB);
        assert_eq!(live(&ept), 4);
    }

    #[test]
    fn allocation_failure_mid_map_changes_nothing() {
        let mut ept = new_ept(ALL);
        // An existing mapping, so the walk shares some tables with it.
        map(&mut ept, 511 * SIZE_1G, 0x1000_0000, SIZE_4K, EptPermissions::R, WB);
        let before = ept.mem().snapshot();
        let live_before = live(&ept);
        // Crosses a PML4-entry boundary with every page size on both sides.
        let gpa = 512 * SIZE_1G - 2 * SIZE_2M - 2 * SIZE_4K;
        let hpa = 64 * SIZE_1G - 2 * SIZE_2M - 2 * SIZE_4K;
        let len = 2 * SIZE_4K + 2 * SIZE_2M + SIZE_1G + SIZE_2M + SIZE_4K;
        let needed = {
            let mut probe = new_ept(ALL);
            map(&mut probe, 511 * SIZE_1G, 0x1000_0000, SIZE_4K, EptPermissions::R, WB);
            let n = probe.mem().allocations;
            map(&mut probe, gpa, hpa, len, EptPermissions::RW, WB);
            probe.mem().allocations - n
        };
        // A PT below the existing PD; PDPT, PD, PT in the next PML4 entry.
        assert_eq!(needed, 4);
        for quota in 0..needed {
            ept.mem_mut().quota = Some(quota);
            let r = ept.map(g(gpa), h(hpa), len, EptPermissions::RW, WB);
            assert_eq!(r.map(InveptRequired::acknowledge), Err(EptError::OutOfTables), "quota {quota}");
            assert_eq!(ept.mem().snapshot(), before, "quota {quota}");
            assert_eq!(live(&ept), live_before);
            assert_eq!(ept.mapped_bytes(), SIZE_4K);
        }
        ept.mem_mut().quota = Some(needed);
        map(&mut ept, gpa, hpa, len, EptPermissions::RW, WB);
        check_range_maps(&ept, gpa, hpa, len, EptPermissions::RW, WB);
        assert_eq!(ept.mapped_bytes(), SIZE_4K + len);

        // Out of memory for the root.
        let mem = TestMem { quota: Some(0), ..TestMem::default() };
        assert!(matches!(Ept::new(mem, ALL), Err(EptError::OutOfTables)));
    }

    #[test]
    fn unmap_splits_1g_page() {
        let mut ept = new_ept(ALL);
        let (base, hpa) = (SIZE_1G, 4 * SIZE_1G);
        map(&mut ept, base, hpa, SIZE_1G, EptPermissions::RX, MemoryType::WriteThrough);
        let hole = base + 3 * SIZE_2M + 5 * SIZE_4K;
        ept.unmap(g(hole), SIZE_4K).unwrap().acknowledge();
        assert_eq!(ept.translate(g(hole)), None);
        assert_eq!(ept.translate(g(hole + SIZE_4K - 1)), None);
        assert_eq!(ept.mapped_bytes(), SIZE_1G - SIZE_4K);
        use PageSize::*;
        assert_eq!(sizes(&ept, base, hole), vec![(Size2M, 3), (Size4K, 5)]);
        assert_eq!(sizes(&ept, hole + SIZE_4K, base + SIZE_1G), vec![(Size4K, 506), (Size2M, 508)]);
        check_range_maps(&ept, base, hpa, hole - base, EptPermissions::RX, MemoryType::WriteThrough);
        let after = hole + SIZE_4K;
        check_range_maps(
            &ept,
            after,
            hpa + (after - base),
            base + SIZE_1G - after,
            EptPermissions::RX,
            MemoryType::WriteThrough,
        );
        assert_eq!(live(&ept), 4);

        // Unmapping the rest frees everything but the root.
        ept.unmap(g(base), hole - base).unwrap().acknowledge();
        assert_eq!(live(&ept), 4);
        ept.unmap(g(after), base + SIZE_1G - after).unwrap().acknowledge();
        assert_eq!(live(&ept), 1);
        assert_eq!(ept.mapped_bytes(), 0);

        // A 2 MiB-aligned hole only splits the 1 GiB page.
        map(&mut ept, base, hpa, SIZE_1G, EptPermissions::RX, WB);
        ept.unmap(g(base + SIZE_2M), SIZE_2M).unwrap().acknowledge();
        assert_eq!(sizes(&ept, base, base + SIZE_2M), vec![(Size2M, 1)]);
        assert_eq!(sizes(&ept, base + 2 * SIZE_2M, base + SIZE_1G), vec![(Size2M, 510)]);
        assert_eq!(live(&ept), 3);
    }

    #[test]
    fn unmap_splits_2m_page() {
        let mut ept = new_ept(ONLY_2M);
        map(&mut ept, SIZE_2M, 0x60_0000, SIZE_2M, EptPermissions::RW, MemoryType::Uncacheable);
        ept.unmap(g(SIZE_2M), 3 * SIZE_4K).unwrap().acknowledge();
        assert_eq!(sizes(&ept, SIZE_2M + 3 * SIZE_4K, 2 * SIZE_2M), vec![(PageSize::Size4K, 509)]);
        let rest = SIZE_2M + 3 * SIZE_4K;
        check_range_maps(&ept, rest, 0x60_3000, 2 * SIZE_2M - rest, EptPermissions::RW, MemoryType::Uncacheable);
        assert_eq!(ept.translate(g(SIZE_2M + 3 * SIZE_4K - 1)), None);
        assert_eq!(live(&ept), 4);
        ept.unmap(g(rest), 2 * SIZE_2M - rest).unwrap().acknowledge();
        assert_eq!(live(&ept), 1);
    }

    #[test]
    fn protect_splits_2m_page() {
        let mut ept = new_ept(ONLY_2M);
        map(&mut ept, SIZE_2M, 0x60_0000, SIZE_2M, EptPermissions::RW, MemoryType::Uncacheable);
        ept.protect(g(SIZE_2M + SIZE_4K), 2 * SIZE_4K, EptPermissions::R).unwrap().acknowledge();
        let expect = |i: u64| if i == 1 || i == 2 { EptPermissions::R } else { EptPermissions::RW };
        for i in 0..512 {
            let t = ept.translate(g(SIZE_2M + i * SIZE_4K + 0x123)).unwrap();
            let want = Translation {
                hpa: h(0x60_0000 + i * SIZE_4K + 0x123),
                perms: expect(i),
                mtype: MemoryType::Uncacheable,
                size: PageSize::Size4K,
            };
            assert_eq!(t, want);
        }
        assert_eq!(ept.mapped_bytes(), SIZE_2M);
        assert_eq!(live(&ept), 4);
    }

    #[test]
    fn protect_splits_1g_page() {
        use PageSize::*;
        let mut ept = new_ept(ALL);
        map(&mut ept, SIZE_1G, 0, SIZE_1G + SIZE_2M, EptPermissions::RWX, WB);
        assert_eq!(sizes(&ept, SIZE_1G, 2 * SIZE_1G + SIZE_2M), vec![(Size1G, 1), (Size2M, 1)]);
        // Straddles the two pages; both are split.
        ept.protect(g(2 * SIZE_1G - SIZE_4K), 2 * SIZE_4K, EptPermissions::NONE).unwrap().acknowledge();
        assert_eq!(sizes(&ept, SIZE_1G, 2 * SIZE_1G + SIZE_2M), vec![(Size2M, 511), (Size4K, 1024)]);
        for (a, p) in [
            (2 * SIZE_1G - 2 * SIZE_4K, EptPermissions::RWX),
            (2 * SIZE_1G - SIZE_4K, EptPermissions::NONE),
            (2 * SIZE_1G, EptPermissions::NONE),
            (2 * SIZE_1G + SIZE_4K, EptPermissions::RWX),
        ] {
            let t = ept.translate(g(a + 8)).unwrap();
            assert_eq!((t.hpa, t.perms, t.mtype), (h(a - SIZE_1G + 8), p, WB));
        }
        assert_eq!(ept.mapped_bytes(), SIZE_1G + SIZE_2M);
        // Root, PDPT, PD under the 1 GiB page, its last PT, the PD of the 2 MiB page (existing), its PT.
        assert_eq!(live(&ept), 6);
        // NONE pages are still mapped.
        ept.unmap(g(2 * SIZE_1G - SIZE_4K), 2 * SIZE_4K).unwrap().acknowledge();
        assert_eq!(ept.mapped_bytes(), SIZE_1G + SIZE_2M - 2 * SIZE_4K);
        // Protecting whole pages does not split them.
        ept.protect(g(SIZE_1G), SIZE_2M, EptPermissions::R).unwrap().acknowledge();
        assert_eq!(ept.translate(g(SIZE_1G)).unwrap().size, Size2M);
        assert_eq!(ept.translate(g(SIZE_1G)).unwrap().perms, EptPermissions::R);
    }

    #[test]
    fn split_allocation_failure_changes_nothing() {
        let mut ept = new_ept(ALL);
        map(&mut ept, SIZE_1G, 0, SIZE_1G, EptPermissions::RWX, WB);
        let before = ept.mem().snapshot();
        // Start and end in different, unaligned 2 MiB parts of the 1 GiB page: 3 tables.
        let (gpa, len) = (SIZE_1G + SIZE_2M + SIZE_4K, SIZE_2M);
        for quota in 0..3 {
            ept.mem_mut().quota = Some(quota);
            let r = ept.protect(g(gpa), len, EptPermissions::R).map(InveptRequired::acknowledge);
            assert_eq!(r, Err(EptError::OutOfTables));
            let r = ept.unmap(g(gpa), len).map(InveptRequired::acknowledge);
            assert_eq!(r, Err(EptError::OutOfTables));
            assert_eq!(ept.mem().snapshot(), before);
            assert_eq!(live(&ept), 2);
        }
        ept.mem_mut().quota = Some(3);
        ept.unmap(g(gpa), len).unwrap().acknowledge();
        assert_eq!(live(&ept), 5);
        assert_eq!(ept.mapped_bytes(), SIZE_1G - len);
        // Within one 2 MiB part: 2 tables.
        let mut ept = new_ept(ALL);
        map(&mut ept, SIZE_1G, 0, SIZE_1G, EptPermissions::RWX, WB);
        ept.mem_mut().quota = Some(1);
        let r = ept.unmap(g(SIZE_1G + SIZE_4K), SIZE_4K).map(InveptRequired::acknowledge);
        assert_eq!(r, Err(EptError::OutOfTables));
        ept.mem_mut().quota = Some(2);
        ept.unmap(g(SIZE_1G + SIZE_4K), SIZE_4K).unwrap().acknowledge();
        assert_eq!(live(&ept), 4);
    }

    #[test]
    fn unmap_and_protect_require_full_mapping() {
        let mut ept = new_ept(ALL);
        map(&mut ept, 0, 0, 2 * SIZE_4K, EptPermissions::RW, WB);
        map(&mut ept, 3 * SIZE_4K, 0, SIZE_4K, EptPermissions::RW, WB);
        map(&mut ept, SIZE_1G, 0, SIZE_1G, EptPermissions::RW, WB);
        let before = ept.mem().snapshot();
        let cases = [
            (0, 4 * SIZE_4K, 2 * SIZE_4K),
            (5 * SIZE_4K, SIZE_4K, 5 * SIZE_4K),
            (SIZE_1G - SIZE_4K, 2 * SIZE_4K, SIZE_1G - SIZE_4K),
            (SIZE_1G + SIZE_4K, SIZE_1G, 2 * SIZE_1G),
        ];
        for (gpa, len, first) in cases {
            let want = Err(EptError::NotMapped { gpa: g(first) });
            assert_eq!(ept.unmap(g(gpa), len).map(InveptRequired::acknowledge), want);
            assert_eq!(ept.protect(g(gpa), len, EptPermissions::R).map(InveptRequired::acknowledge), want);
            assert_eq!(ept.mem().snapshot(), before);
        }
        // Several adjacent mappings can be unmapped at once.
        map(&mut ept, 2 * SIZE_4K, 0, SIZE_4K, EptPermissions::R, WB);
        ept.unmap(g(0), 4 * SIZE_4K).unwrap().acknowledge();
        assert_eq!(ept.mapped_bytes(), SIZE_1G);
    }

    #[test]
    fn empty_tables_are_freed() {
        let mut ept = new_ept(NO_LARGE);
        let pages = [0, SIZE_4K, SIZE_2M, SIZE_1G, 512 * SIZE_1G, 512 * SIZE_1G + SIZE_4K];
        for &p in &pages {
            map(&mut ept, p, 0x1000_0000 + p, SIZE_4K, EptPermissions::RW, WB);
        }
        // Root; PDPT 0: PD 0 (PTs for 0 and 2M), PD 1 (PT); PDPT 1: PD, PT.
        assert_eq!(live(&ept), 1 + 1 + 1 + 2 + 1 + 1 + 1 + 1 + 1);
        let steps =
            [(SIZE_4K, 10), (0, 9), (SIZE_2M, 7), (512 * SIZE_1G + SIZE_4K, 7), (512 * SIZE_1G, 4), (SIZE_1G, 1)];
        for (p, left) in steps {
            ept.unmap(g(p), SIZE_4K).unwrap().acknowledge();
            assert_eq!(live(&ept), left, "after unmapping {p:#x}");
        }
        assert_eq!(ept.mapped_bytes(), 0);
        // A range unmap over several tables frees them all.
        map(&mut ept, SIZE_2M - SIZE_4K, 0, SIZE_1G + 2 * SIZE_4K, EptPermissions::RW, WB);
        assert!(live(&ept) > 500);
        ept.unmap(g(SIZE_2M - SIZE_4K), SIZE_1G + 2 * SIZE_4K).unwrap().acknowledge();
        assert_eq!(live(&ept), 1);
    }

    #[test]
    fn destroy_frees_everything() {
        let mut ept = new_ept(ALL);
        map(&mut ept, 0, 0, SIZE_1G + SIZE_2M + SIZE_4K, EptPermissions::RW, WB);
        map(&mut ept, 600 * SIZE_1G, 0, SIZE_4K, EptPermissions::RW, WB);
        assert_eq!(live(&ept), 7);
        let mem = ept.destroy();
        assert_eq!(mem.live, 0);
    }

    // ---- property test against a simple model ----

    const SPACE: u64 = 8 * SIZE_1G;
    const HPA_BASE: u64 = 1 << 40;

    #[derive(Debug, Clone, Copy, PartialEq)]
    struct Seg {
        end: u64,
        hpa: u64,
        perms: EptPermissions,
        mtype: MemoryType,
    }

    /// Disjoint mapped ranges by start address.
    #[derive(Default)]
    struct Model {
        segs: BTreeMap<u64, Seg>,
    }

    impl Model {
        fn lookup(&self, gpa: u64) -> Option<(u64, Seg)> {
            let (&start, &seg) = self.segs.range(..=gpa).next_back()?;
            (seg.end > gpa).then_some((start, seg))
        }

        fn first_mapped(&self, start: u64, end: u64) -> Option<u64> {
            if self.lookup(start).is_some() {
                return Some(start);
            }
            self.segs.range(start..end).next().map(|(&s, _)| s)
        }

        fn first_unmapped(&self, start: u64, end: u64) -> Option<u64> {
            let mut cur = start;
            while cur < end {
                match self.lookup(cur) {
                    Some((_, seg)) => cur = seg.end,
                    None => return Some(cur),
                }
            }
            None
        }

        fn split_at(&mut self, a: u64) {
            if let Some((start, seg)) = self.lookup(a) {
                if start < a {
                    self.segs.insert(start, Seg { end: a, ..seg });
                    self.segs.insert(a, Seg { hpa: seg.hpa + (a - start), ..seg });
                }
            }
        }

        fn keys_in(&self, start: u64, end: u64) -> Vec<u64> {
            self.segs.range(start..end).map(|(&k, _)| k).collect()
        }

        fn mapped(&self) -> u64 {
            self.segs.iter().map(|(&s, seg)| seg.end - s).sum()
        }
    }

    #[derive(Debug, Clone)]
    enum Target {
        Range(u64, u64),
        /// Part of the `seg`-th mapped range (modulo their number).
        Within(usize, u64, u64),
    }

    #[derive(Debug, Clone)]
    enum Op {
        Map { gpa: u64, hpa: u64, len: u64, perms: EptPermissions, mtype: MemoryType },
        Unmap(Target),
        Protect(Target, EptPermissions),
    }

    fn perms_strategy() -> impl Strategy<Value = EptPermissions> {
        use EptPermissions as P;
        prop::sample::select(vec![P::NONE, P::R, P::RW, P::RX, P::RWX, P::EXECUTE])
    }

    fn mtype_strategy() -> impl Strategy<Value = MemoryType> {
        use MemoryType::*;
        prop::sample::select(vec![Uncacheable, WriteCombining, WriteThrough, WriteProtected, WriteBack])
    }

    /// (gpa, len, hpa) with a granularity of 4 KiB, 2 MiB or 1 GiB, sometimes offset by a
    /// few pages, with an hpa in the same phase (so large pages can happen) or not.
    fn range_strategy() -> impl Strategy<Value = (u64, u64, u64)> {
        let off = prop_oneof![3 => Just(0u64), 1 => 1u64..4];
        (0usize..3, any::<u64>(), off, any::<u64>(), 0u64..4, 0u64..64, prop::bool::weighted(0.25)).prop_map(
            |(gi, slot, off, n, m, hslot, shifted)| {
                let gran = [SIZE_4K, SIZE_2M, SIZE_1G][gi];
                let max_n = [16, 3, 1][gi];
                let gpa = (slot % (SPACE / gran)) * gran + off * SIZE_4K;
                let len = ((n % (max_n + 1)) * gran + m * SIZE_4K).max(SIZE_4K);
                let shift = if !shifted {
                    0
                } else if gran == SIZE_1G {
                    SIZE_2M
                } else {
                    SIZE_4K
                };
                let hpa = HPA_BASE + hslot * SIZE_1G * 2 + gpa % gran + shift;
                (gpa, len, hpa)
            },
        )
    }

    fn target_strategy() -> impl Strategy<Value = Target> {
        prop_oneof![
            1 => range_strategy().prop_map(|(gpa, len, _)| Target::Range(gpa, len)),
            3 => (any::<usize>(), any::<u64>(), any::<u64>()).prop_map(|(s, a, b)| Target::Within(s, a, b)),
        ]
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (range_strategy(), perms_strategy(), mtype_strategy())
                .prop_map(|((gpa, len, hpa), perms, mtype)| Op::Map { gpa, hpa, len, perms, mtype }),
            2 => target_strategy().prop_map(Op::Unmap),
            2 => (target_strategy(), perms_strategy()).prop_map(|(t, p)| Op::Protect(t, p)),
        ]
    }

    fn resolve(model: &Model, target: &Target) -> Option<(u64, u64)> {
        match *target {
            Target::Range(gpa, len) => Some((gpa, len)),
            Target::Within(i, a, b) => {
                if model.segs.is_empty() {
                    return None;
                }
                let (&start, seg) = model.segs.iter().nth(i % model.segs.len())?;
                let pages = (seg.end - start) / SIZE_4K;
                let first = a % pages;
                let count = 1 + b % (pages - first);
                Some((start + first * SIZE_4K, count * SIZE_4K))
            }
        }
    }

    fn check_against_model(ept: &Ept<TestMem>, model: &Model, probes: &[u64]) -> Result<(), TestCaseError> {
        prop_assert_eq!(ept.mapped_bytes(), model.mapped());
        live(ept);
        let mut addrs: Vec<u64> = probes.to_vec();
        for (&s, seg) in &model.segs {
            addrs.extend([s, s + 1, s + (seg.end - s) / 2, seg.end - 1, seg.end, s.wrapping_sub(1)]);
        }
        for a in addrs {
            let got = ept.translate(g(a));
            match model.lookup(a) {
                None => prop_assert_eq!(got, None, "gpa {:#x}", a),
                Some((start, seg)) => {
                    let t = got.ok_or_else(|| TestCaseError::fail(format!("{a:#x} not mapped")))?;
                    prop_assert_eq!(t.hpa, h(seg.hpa + (a - start)), "gpa {:#x}", a);
                    prop_assert_eq!((t.perms, t.mtype), (seg.perms, seg.mtype), "gpa {:#x}", a);
                    // The page never reaches outside the mapped range it belongs to.
                    let page = a & !(t.size.bytes() - 1);
                    prop_assert!(page >= start && page + t.size.bytes() <= seg.end, "gpa {:#x}: {:?}", a, t.size);
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn matches_model(
            large in (any::<bool>(), any::<bool>()).prop_map(|(two_mib, one_gib)| LargePages { two_mib, one_gib }),
            ops in prop::collection::vec(op_strategy(), 1..24),
            probes in prop::collection::vec(0..SPACE + SIZE_1G, 24),
        ) {
            let mut ept = new_ept(large);
            let mut model = Model::default();
            for op in &ops {
                let before = ept.mem().snapshot();
                let result = match *op {
                    Op::Map { gpa, hpa, len, perms, mtype } => {
                        let r = ept.map(g(gpa), h(hpa), len, perms, mtype).map(InveptRequired::acknowledge);
                        match model.first_mapped(gpa, gpa + len) {
                            Some(first) => prop_assert_eq!(r, Err(EptError::AlreadyMapped { gpa: g(first) })),
                            None => {
                                prop_assert_eq!(r, Ok(()));
                                model.segs.insert(gpa, Seg { end: gpa + len, hpa, perms, mtype });
                            }
                        }
                        r
                    }
                    Op::Unmap(ref t) => {
                        let Some((gpa, len)) = resolve(&model, t) else { continue };
                        let r = ept.unmap(g(gpa), len).map(InveptRequired::acknowledge);
                        match model.first_unmapped(gpa, gpa + len) {
                            Some(first) => prop_assert_eq!(r, Err(EptError::NotMapped { gpa: g(first) })),
                            None => {
                                prop_assert_eq!(r, Ok(()));
                                model.split_at(gpa);
                                model.split_at(gpa + len);
                                for k in model.keys_in(gpa, gpa + len) {
                                    model.segs.remove(&k);
                                }
                            }
                        }
                        r
                    }
                    Op::Protect(ref t, perms) => {
                        let Some((gpa, len)) = resolve(&model, t) else { continue };
                        let r = ept.protect(g(gpa), len, perms).map(InveptRequired::acknowledge);
                        match model.first_unmapped(gpa, gpa + len) {
                            Some(first) => prop_assert_eq!(r, Err(EptError::NotMapped { gpa: g(first) })),
                            None => {
                                prop_assert_eq!(r, Ok(()));
                                model.split_at(gpa);
                                model.split_at(gpa + len);
                                for k in model.keys_in(gpa, gpa + len) {
                                    model.segs.get_mut(&k).unwrap().perms = perms;
                                }
                            }
                        }
                        r
                    }
                };
                if result.is_err() {
                    prop_assert!(ept.mem().snapshot() == before, "failed {:?} changed the tables", op);
                }
                check_against_model(&ept, &model, &probes)?;
            }
            // Unmapping everything leaves only the root.
            let all: Vec<(u64, u64)> = model.segs.iter().map(|(&s, seg)| (s, seg.end - s)).collect();
            for (s, len) in all {
                ept.unmap(g(s), len).unwrap().acknowledge();
            }
            prop_assert_eq!(live(&ept), 1);
            prop_assert_eq!(ept.mapped_bytes(), 0);
            prop_assert_eq!(ept.destroy().live, 0);
        }
    }
}
