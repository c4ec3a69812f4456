//! The hypervisor's own page tables (4-level, SDM Vol. 3 section 4.5).
//!
//! At boot the bootloader's mappings (kernel image, direct map of physical memory,
//! framebuffer, boot info, ramdisk) are copied into fresh tables with W^X enforced:
//! every writable page becomes non-executable, and every page keeps the effective
//! protection its old parents gave it. The new tables then add what the hypervisor
//! needs: guarded stacks, uncached device windows and, during AP start-up only, an
//! identity mapping of the trampoline page.

use core::sync::atomic::{AtomicU64, Ordering};

use hv_core::frames::AllocError;
use spin::Mutex;

use crate::mm::frames;

/// Page-table entry bits (SDM Vol. 3 tables 4-15 to 4-20).
pub mod flags {
    pub const PRESENT: u64 = 1 << 0;
    pub const WRITABLE: u64 = 1 << 1;
    pub const USER: u64 = 1 << 2;
    pub const WRITE_THROUGH: u64 = 1 << 3;
    pub const CACHE_DISABLE: u64 = 1 << 4;
    /// PS: this entry maps a 1 GiB (PDPTE) or 2 MiB (PDE) page.
    pub const HUGE: u64 = 1 << 7;
    pub const NO_EXECUTE: u64 = 1 << 63;
}
use flags::*;

/// Physical-address bits of an entry that points at a table or a 4 KiB page.
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Why a mapping could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapError {
    OutOfMemory,
    /// The address is already mapped (possibly by a large page).
    AlreadyMapped,
}

impl From<AllocError> for MapError {
    fn from(_: AllocError) -> Self {
        Self::OutOfMemory
    }
}

/// Physical address of the active top-level table (0 before [`switch_to_own_tables`]).
static ROOT: AtomicU64 = AtomicU64::new(0);
/// Serialises changes to the hypervisor's tables across CPUs.
static LOCK: Mutex<()> = Mutex::new(());

/// What the copy found, for the boot log.
#[derive(Debug, Default, Clone, Copy)]
pub struct CopyStats {
    pub leaves: u64,
    pub executable: u64,
    /// Writable and executable pages made non-executable.
    pub wx_fixed: u64,
}

fn table(phys: u64) -> *mut u64 {
    frames::phys_to_virt(phys).cast()
}

/// Reads entry `i` of the table at `phys`.
fn read_entry(phys: u64, i: usize) -> u64 {
    // SAFETY: `phys` is a page-table frame (the bootloader's or ours), mapped by the
    // direct map; `i < 512` keeps the read inside it.
    unsafe { table(phys).add(i).read_volatile() }
}

fn write_entry(phys: u64, i: usize, value: u64) {
    // SAFETY: `phys` is one of our own table frames (allocated here, mapped by the
    // direct map), `i < 512`; callers hold LOCK or run before other CPUs exist.
    unsafe { table(phys).add(i).write_volatile(value) }
}

fn index(virt: u64, level: u32) -> usize {
    ((virt >> (12 + 9 * (level - 1))) & 0x1ff) as usize
}

/// Recursively copies the old table at `old` (level `level`) into the new one.
fn copy_table(
    old: u64,
    new: u64,
    level: u32,
    parent_nx: bool,
    parent_w: bool,
    stats: &mut CopyStats,
) -> Result<(), MapError> {
    for i in 0..512 {
        let e = read_entry(old, i);
        if e & PRESENT == 0 {
            continue;
        }
        let nx = parent_nx || e & NO_EXECUTE != 0;
        let w = parent_w && e & WRITABLE != 0;
        let leaf = level == 1 || ((level == 2 || level == 3) && e & HUGE != 0);
        if leaf {
            let mut entry = e & !(NO_EXECUTE | WRITABLE | USER);
            if w {
                entry |= WRITABLE;
            }
            if nx || w {
                entry |= NO_EXECUTE;
            }
            if w && !nx {
                stats.wx_fixed += 1;
            }
            if entry & NO_EXECUTE == 0 {
                stats.executable += 1;
            }
            stats.leaves += 1;
            write_entry(new, i, entry);
        } else if level > 1 {
            let child = frames::allocate_frame()?;
            write_entry(new, i, child | PRESENT | WRITABLE);
            copy_table(e & ADDR_MASK, child, level - 1, nx, w, stats)?;
        }
    }
    Ok(())
}

/// Builds the hypervisor's tables from the active (bootloader's) ones and loads them.
/// The top-level table is placed below 4 GiB so that APs can load it from real mode.
pub fn switch_to_own_tables() -> Result<CopyStats, MapError> {
    let (old_root, _) = x86_64::registers::control::Cr3::read_raw();
    let new_root = frames::allocate_zeroed(1, 4096, 1 << 32)?;
    let mut stats = CopyStats::default();
    copy_table(old_root.start_address().as_u64(), new_root, 4, false, true, &mut stats)?;
    ROOT.store(new_root, Ordering::Release);
    // SAFETY: the new tables map everything the old ones did (same virtual and physical
    // addresses, possibly with fewer permissions: only W+X pages lost X, and the kernel
    // never executes from writable memory), so all live references stay valid.
    unsafe { load_root(new_root) };
    Ok(stats)
}

/// Loads `root` into CR3 and flushes global entries too (CR4.PGE toggle, SDM 4.10.4.1).
///
/// # Safety
/// `root` must map everything the running code uses.
pub unsafe fn load_root(root: u64) {
    use x86_64::registers::control::{Cr3, Cr4, Cr4Flags};
    use x86_64::structures::paging::PhysFrame;
    use x86_64::PhysAddr;
    let frame = PhysFrame::containing_address(PhysAddr::new(root));
    // SAFETY: forwarded to the caller's contract; toggling PGE only flushes the TLB.
    unsafe {
        Cr3::write(frame, x86_64::registers::control::Cr3Flags::empty());
        let cr4 = Cr4::read();
        Cr4::write(cr4 - Cr4Flags::PAGE_GLOBAL);
        Cr4::write(cr4);
    }
}

/// The active top-level table's physical address.
#[must_use]
pub fn root() -> u64 {
    ROOT.load(Ordering::Acquire)
}

/// The first unused top-level slot in the upper half, as a base virtual address.
pub fn free_upper_half_slot() -> Option<u64> {
    let _guard = LOCK.lock();
    (256..512).find(|&i| read_entry(root(), i) & PRESENT == 0).map(|i| 0xffff_0000_0000_0000 | ((i as u64) << 39))
}

/// Maps one 4 KiB page. `extra` is added to PRESENT (WRITABLE, NO_EXECUTE, cache bits).
pub fn map_4k(virt: u64, phys: u64, extra: u64) -> Result<(), MapError> {
    let _guard = LOCK.lock();
    let mut table = root();
    for level in (2..=4).rev() {
        let i = index(virt, level);
        let e = read_entry(table, i);
        table = if e & PRESENT == 0 {
            let child = frames::allocate_frame()?;
            write_entry(table, i, child | PRESENT | WRITABLE);
            child
        } else if e & HUGE != 0 {
            return Err(MapError::AlreadyMapped);
        } else {
            e & ADDR_MASK
        };
    }
    let i = index(virt, 1);
    if read_entry(table, i) & PRESENT != 0 {
        return Err(MapError::AlreadyMapped);
    }
    write_entry(table, i, (phys & ADDR_MASK) | PRESENT | extra);
    Ok(())
}

/// Removes a 4 KiB mapping made by [`map_4k`] and flushes it from this CPU's TLB.
/// Other CPUs must flush themselves before relying on the page being gone.
pub fn unmap_4k(virt: u64) {
    let _guard = LOCK.lock();
    let mut table = root();
    for level in (2..=4).rev() {
        let e = read_entry(table, index(virt, level));
        if e & PRESENT == 0 || e & HUGE != 0 {
            return;
        }
        table = e & ADDR_MASK;
    }
    write_entry(table, index(virt, 1), 0);
    x86_64::instructions::tlb::flush(x86_64::VirtAddr::new(virt));
}

/// A page's protection as the CPU sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    Unmapped,
    ReadExecute,
    ReadOnly,
    ReadWrite,
    /// Writable and executable: a W^X violation.
    ReadWriteExecute,
}

/// The protection of the page holding `virt` in the hypervisor's tables.
#[must_use]
pub fn protection(virt: u64) -> Protection {
    match translate(virt) {
        None => Protection::Unmapped,
        Some((_, f)) => match (f & WRITABLE != 0, f & NO_EXECUTE == 0) {
            (false, true) => Protection::ReadExecute,
            (false, false) => Protection::ReadOnly,
            (true, false) => Protection::ReadWrite,
            (true, true) => Protection::ReadWriteExecute,
        },
    }
}

/// The physical address and entry flags `virt` maps to, if any.
#[must_use]
pub fn translate(virt: u64) -> Option<(u64, u64)> {
    let root = root();
    if root == 0 {
        return None;
    }
    let mut table = root;
    for level in (1..=4).rev() {
        let e = read_entry(table, index(virt, level));
        if e & PRESENT == 0 {
            return None;
        }
        if level == 1 || (level <= 3 && e & HUGE != 0) {
            let page_size = 1u64 << (12 + 9 * (level - 1));
            let base = e & ADDR_MASK & !(page_size - 1);
            return Some((base + (virt & (page_size - 1)), e & !ADDR_MASK));
        }
        table = e & ADDR_MASK;
    }
    None
}
