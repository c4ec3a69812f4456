//! ELF reading shared by [`crate::elf64`] and the Multiboot ELF32 path: the `elf` crate
//! parses the file header and program headers (zero-copy, no allocation); this module
//! checks the loadable segments and copies them.
//!
//! Only the file header and the program header table are read: section headers are
//! not needed to load an executable and are ignored, however broken.

use crate::{check_fits, end_of, GuestMemory, LoadError, Region};
use elf::abi::{EM_386, EM_X86_64, ET_EXEC, EV_CURRENT, PF_X, PN_XNUM, PT_LOAD};
use elf::endian::LittleEndian;
use elf::file::{Class, FileHeader};
use elf::segment::{ProgramHeader, SegmentTable};
use elf::ParseError;

/// Most loadable (non-empty `PT_LOAD`) segments accepted: real kernels have a handful,
/// and the pairwise overlap check stays cheap.
pub const MAX_LOAD_SEGMENTS: usize = 64;

/// `e_ident` length.
const EI_NIDENT: usize = 16;
/// File header length after `e_ident` for each class.
const EHDR_TAIL_32: usize = 36;
const EHDR_TAIL_64: usize = 48;
/// Program header sizes for each class.
const PHDR_SIZE_32: usize = 32;
const PHDR_SIZE_64: usize = 56;

/// Whether `image` starts like a little-endian x86-64 ELF64 file.
pub fn is_elf64_x86_64(image: &[u8]) -> bool {
    matches!(image.get(..20), Some([0x7f, b'E', b'L', b'F', 2, 1, .., m0, m1]) if u16::from_le_bytes([*m0, *m1]) == EM_X86_64)
}

/// Whether `image` starts with the ELF magic.
pub fn has_elf_magic(image: &[u8]) -> bool {
    image.get(..4) == Some(b"\x7fELF".as_slice())
}

/// The ELF class a loader takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// ELF32, `EM_386` (Multiboot).
    Elf32I386,
    /// ELF64, `EM_X86_64`.
    Elf64X86_64,
}

fn parse_error(e: ParseError) -> LoadError {
    match e {
        ParseError::BadMagic(_) => LoadError::BadMagic,
        ParseError::UnsupportedElfClass(_) => LoadError::BadElf("unknown ELF class"),
        ParseError::UnsupportedElfEndianness(_) => LoadError::BadElf("not little-endian"),
        ParseError::UnsupportedVersion(_) => LoadError::BadElf("unknown ELF version"),
        ParseError::IntegerOverflow | ParseError::TryFromIntError(_) => LoadError::Overflow("ELF header field"),
        _ => LoadError::BadElf("malformed ELF header"),
    }
}

/// A checked ELF executable: its header fields and its program header table.
pub struct ElfFile<'a> {
    data: &'a [u8],
    phdrs: SegmentTable<'a, LittleEndian>,
    entry: u64,
}

impl<'a> ElfFile<'a> {
    /// Parses the file header and locates the program header table of an `ET_EXEC`
    /// executable of the `want`ed class and machine.
    pub fn parse(data: &'a [u8], want: Want) -> Result<Self, LoadError> {
        let ident_bytes = data.get(..EI_NIDENT).ok_or(LoadError::Truncated {
            what: "ELF identification",
            needed: EI_NIDENT as u64,
            len: data.len() as u64,
        })?;
        if !has_elf_magic(ident_bytes) {
            return Err(LoadError::BadMagic);
        }
        let ident = elf::file::parse_ident::<LittleEndian>(ident_bytes).map_err(parse_error)?;
        let (class, machine, tail_len, phdr_size) = match want {
            Want::Elf32I386 => (Class::ELF32, EM_386, EHDR_TAIL_32, PHDR_SIZE_32),
            Want::Elf64X86_64 => (Class::ELF64, EM_X86_64, EHDR_TAIL_64, PHDR_SIZE_64),
        };
        if ident.1 != class {
            return Err(LoadError::BadElf(match class {
                Class::ELF32 => "not a 32-bit ELF file",
                Class::ELF64 => "not a 64-bit ELF file",
            }));
        }
        let header_len = EI_NIDENT + tail_len;
        let tail = data.get(EI_NIDENT..header_len).ok_or(LoadError::Truncated {
            what: "ELF file header",
            needed: header_len as u64,
            len: data.len() as u64,
        })?;
        let ehdr: FileHeader<LittleEndian> = FileHeader::parse_tail(ident, tail).map_err(parse_error)?;
        if ehdr.version != EV_CURRENT.into() {
            return Err(LoadError::BadElf("e_version is not EV_CURRENT"));
        }
        if ehdr.e_type != ET_EXEC {
            return Err(LoadError::BadElf("not an executable (e_type is not ET_EXEC)"));
        }
        if ehdr.e_machine != machine {
            return Err(LoadError::BadElf(match want {
                Want::Elf32I386 => "not an i386 executable (e_machine is not EM_386)",
                Want::Elf64X86_64 => "not an x86-64 executable (e_machine is not EM_X86_64)",
            }));
        }
        if ehdr.e_phnum == 0 || ehdr.e_phoff == 0 {
            return Err(LoadError::BadElf("no program headers"));
        }
        if ehdr.e_phnum == PN_XNUM {
            return Err(LoadError::BadElf("extended program header count (PN_XNUM) is not supported"));
        }
        if usize::from(ehdr.e_phentsize) != phdr_size {
            return Err(LoadError::BadElf("e_phentsize does not match the ELF class"));
        }
        let table_len = phdr_size.checked_mul(usize::from(ehdr.e_phnum)).ok_or(LoadError::Overflow("e_phnum"))?;
        let table_start = usize::try_from(ehdr.e_phoff).map_err(|_| LoadError::Overflow("e_phoff"))?;
        let table_end = table_start.checked_add(table_len).ok_or(LoadError::Overflow("e_phoff + table size"))?;
        let table = data.get(table_start..table_end).ok_or(LoadError::Truncated {
            what: "ELF program header table",
            needed: table_end as u64,
            len: data.len() as u64,
        })?;
        Ok(Self { data, phdrs: SegmentTable::new(ehdr.endianness, class, table), entry: ehdr.e_entry })
    }

    /// The `PT_LOAD` segments that occupy memory (`p_memsz > 0`).
    fn loads(&self) -> impl Iterator<Item = ProgramHeader> + 'a {
        self.phdrs.iter().filter(|p| p.p_type == PT_LOAD && p.p_memsz > 0)
    }

    /// Checks every `PT_LOAD` segment against the file and `min..limit` (guest-physical,
    /// by `p_paddr`), checks that no two overlap, and finds the entry point. Returns the
    /// span of the loaded segments and the guest-physical entry: `e_entry` translated from
    /// the virtual to the physical address of the segment that contains it (by
    /// `p_vaddr`, else by `p_paddr` as it is), which must be executable when
    /// `require_exec`.
    pub fn plan(&self, min: u64, limit: u64, require_exec: bool) -> Result<(Region, u64), LoadError> {
        let file_len = self.data.len() as u64;
        for p in self.phdrs.iter().filter(|p| p.p_type == PT_LOAD) {
            if p.p_filesz > p.p_memsz {
                return Err(LoadError::BadElf("segment p_filesz exceeds p_memsz"));
            }
            let file_end = end_of(p.p_offset, p.p_filesz, "p_offset + p_filesz")?;
            if file_end > file_len {
                return Err(LoadError::Truncated { what: "ELF segment data", needed: file_end, len: file_len });
            }
        }
        let mut span: Option<Region> = None;
        for (i, p) in self.loads().enumerate() {
            if i >= MAX_LOAD_SEGMENTS {
                return Err(LoadError::TooManySegments { max: MAX_LOAD_SEGMENTS });
            }
            if p.p_paddr < min {
                return Err(LoadError::BelowMinimum { gpa: p.p_paddr, min });
            }
            let end = check_fits("ELF segment", p.p_paddr, p.p_memsz, limit)?;
            let this = Region { start: p.p_paddr, end };
            if let Some(q) = self.loads().take(i).find(|q| this.overlaps(&segment_region(q))) {
                return Err(LoadError::Overlap { first: q.p_paddr, second: p.p_paddr });
            }
            span = Some(match span {
                None => this,
                Some(s) => Region { start: s.start.min(this.start), end: s.end.max(this.end) },
            });
        }
        let span = span.ok_or(LoadError::BadElf("no loadable segment"))?;
        let entry = self.entry_gpa(require_exec).ok_or(LoadError::EntryOutsideImage { entry: self.entry })?;
        Ok((span, entry))
    }

    /// `e_entry` as a guest-physical address inside a loaded segment, if any.
    fn entry_gpa(&self, require_exec: bool) -> Option<u64> {
        let e = self.entry;
        let usable = |p: &ProgramHeader| !require_exec || p.p_flags & PF_X != 0;
        let by_vaddr = self.loads().filter(usable).find_map(|p| {
            let offset = e.checked_sub(p.p_vaddr)?;
            (offset < p.p_memsz).then(|| p.p_paddr.checked_add(offset)).flatten()
        });
        let by_paddr = || {
            self.loads().filter(usable).any(|p| {
                let r = segment_region(&p);
                r.start <= e && e < r.end
            })
        };
        by_vaddr.or_else(|| by_paddr().then_some(e))
    }

    /// Copies every loadable segment to its `p_paddr` and zeroes its tail
    /// (`p_memsz - p_filesz`). Call only after [`ElfFile::plan`] accepted the file.
    pub fn write(&self, mem: &mut impl GuestMemory) -> Result<(), LoadError> {
        for p in self.loads() {
            let start = usize::try_from(p.p_offset).map_err(|_| LoadError::Overflow("p_offset"))?;
            let len = usize::try_from(p.p_filesz).map_err(|_| LoadError::Overflow("p_filesz"))?;
            let end = start.checked_add(len).ok_or(LoadError::Overflow("p_offset + p_filesz"))?;
            let bytes = self.data.get(start..end).ok_or(LoadError::Truncated {
                what: "ELF segment data",
                needed: end as u64,
                len: self.data.len() as u64,
            })?;
            mem.write(p.p_paddr, bytes)?;
            let bss = p.p_memsz.checked_sub(p.p_filesz).ok_or(LoadError::BadElf("segment p_filesz exceeds p_memsz"))?;
            if bss > 0 {
                mem.zero(end_of(p.p_paddr, p.p_filesz, "segment bss")?, bss)?;
            }
        }
        Ok(())
    }
}

/// A segment's guest-physical range (saturating: [`ElfFile::plan`] rejects overflow).
fn segment_region(p: &ProgramHeader) -> Region {
    Region { start: p.p_paddr, end: p.p_paddr.saturating_add(p.p_memsz) }
}
