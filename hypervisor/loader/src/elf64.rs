//! A bare x86-64 ELF64 executable (`ET_EXEC`, `EM_X86_64`), started in 64-bit long mode
//! on the builder's identity page tables and flat GDT.
//!
//! Each `PT_LOAD` segment is copied to its physical address `p_paddr` and its tail
//! (`p_memsz - p_filesz`) zeroed. Rejected: a segment below `min_load_addr` or past the
//! end of guest RAM, two segments overlapping, `p_filesz > p_memsz`, segment data past
//! the end of the file, any overflowing sum, more than 64 loadable segments, and an entry
//! point outside every executable (`PF_X`) loaded segment.
//!
//! The entry point: `e_entry` is looked up first among the segments' virtual ranges
//! (`p_vaddr..p_vaddr + p_memsz`) and translated to the matching physical address (so a
//! kernel linked at a virtual address different from its load address still starts
//! right on identity page tables), else among their physical ranges as it is. For the
//! usual image with `p_vaddr == p_paddr` both give `e_entry`.
//!
//! Section headers are not read. Nothing is written into the guest besides the segments:
//! RSI is 0.

use crate::elf::{ElfFile, Want};
use crate::{EntryState, GuestMemory, LoadError, Loaded};

pub use crate::elf::MAX_LOAD_SEGMENTS;

/// Loads the ELF64 executable `image`; every segment must lie at or above
/// `min_load_addr` and inside guest RAM.
pub fn load(mem: &mut impl GuestMemory, image: &[u8], min_load_addr: u64) -> Result<EntryState, LoadError> {
    load_with_layout(mem, image, min_load_addr).map(|l| l.entry)
}

/// [`load`], also saying where the segments went ([`Loaded::kernel`] is the span from the
/// lowest segment start to the highest segment end; there is no [`Loaded::data`]).
pub fn load_with_layout(mem: &mut impl GuestMemory, image: &[u8], min_load_addr: u64) -> Result<Loaded, LoadError> {
    let file = ElfFile::parse(image, Want::Elf64X86_64)?;
    let (span, rip) = file.plan(min_load_addr, mem.size(), true)?;
    file.write(mem)?;
    Ok(Loaded { entry: EntryState::Long64 { rip, rsi: 0 }, kernel: span, data: None })
}
