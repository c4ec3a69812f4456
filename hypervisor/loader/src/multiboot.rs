//! A Multiboot (version 0.6.96, "v1") kernel, loaded as QEMU's `-kernel` does.
//!
//! # The header
//!
//! The first 4-byte aligned `magic` ([`HEADER_MAGIC`]) in the first 8192 bytes whose
//! `magic + flags + checksum` is 0 (mod 2^32) starts the header; every header field used
//! must lie in those 8192 bytes. Flag bits 0..15 are requirements: bit 0 (page-aligned
//! modules) and bit 1 (memory information) are always met; any other, including bit 2
//! (video mode information: this loader sets up no display) fails the load with
//! [`LoadError::UnsupportedFlags`]. Of bits 16..31 only bit 16 means something here.
//!
//! # The kernel
//!
//! - Flag 16 set (the "a.out kludge"): the file from `header offset - (header_addr -
//!   load_addr)` is loaded at `load_addr`, up to `load_end_addr` (0: to the end of the
//!   file), then zeroed up to `bss_end_addr` (0: no bss); the entry is `entry_addr`,
//!   which must lie in the loaded text. Any image format works this way, a 64-bit ELF
//!   included.
//! - Flag 16 clear: the image must be an ELF32 i386 executable; its `PT_LOAD` segments
//!   are loaded at `p_paddr`, their bss zeroed, and the entry is `e_entry` (translated
//!   from `p_vaddr` to `p_paddr` when it lies in a segment's virtual range, as GRUB does).
//!   A 64-bit ELF without flag 16 is rejected, as QEMU does.
//!
//! Everything loads at or above [`MIN_LOAD_ADDR`] (1 MiB), below the end of RAM and
//! below [`ADDRESS_LIMIT`] (4 GiB - 1), inside one e820 RAM entry when a map is given.
//!
//! # The Multiboot information
//!
//! From the first page boundary after the kernel's end (bss included), in this order:
//! the information structure ([`INFO_SIZE`] bytes, zeroed), the memory map (one
//! [`MMAP_ENTRY_SIZE`]-byte entry per e820 entry: `size` = 20, `base_addr`, `length`,
//! `type`, 8-aligned), the module list ([`MODULE_ENTRY_SIZE`] bytes each: `mod_start`,
//! `mod_end` (exclusive), `string`, 0; 8-aligned), the command line, the boot loader
//! name ([`LOADER_NAME`]), the module strings, then each module on its own page. All of
//! it must fit in the same RAM entry below 4 GiB. The flags set are [`INFO_MEMORY`]
//! (`mem_lower` = KiB of contiguous RAM from 0, at most 640, so that it agrees with the
//! memory map: 639 with a PC map's EBDA; `mem_upper` = KiB of contiguous RAM from 1 MiB
//! on),
//! [`INFO_CMDLINE`], [`INFO_MODS`] (also when there are no modules), [`INFO_MMAP`] (when
//! an e820 map is given) and [`INFO_LOADER_NAME`].
//!
//! The vCPU starts with EAX = [`BOOTLOADER_MAGIC`] and EBX = the information address.

use crate::elf::{has_elf_magic, ElfFile, Want};
use crate::{
    align_up, check_c_string, check_fits, check_in_ram, end_of, put, ram_ranges, read_u32, write_c_string, E820Entry,
    EntryState, GuestMemory, LoadError, Loaded, Region, PAGE_SIZE,
};

/// The header's `magic`.
pub const HEADER_MAGIC: u32 = 0x1BAD_B002;
/// EAX at entry.
pub const BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;
/// The header must lie in this many bytes at the start of the image.
pub const HEADER_SEARCH_LEN: usize = 8192;
/// Lowest address a Multiboot kernel may load at (1 MiB: below it are the legacy
/// BIOS areas).
pub const MIN_LOAD_ADDR: u64 = 0x10_0000;
/// Boot data addresses are 32-bit: everything (kernel, information, modules) must end at
/// or below this address, so that even an exclusive end such as `mod_end` fits 32 bits.
pub const ADDRESS_LIMIT: u64 = 0xFFFF_FFFF;
/// `boot_loader_name`.
pub const LOADER_NAME: &str = "hv-loader";
/// The most `mem_lower` can be: KiB of conventional memory below the legacy video and
/// BIOS areas.
pub const MEM_LOWER_MAX_KIB: u32 = 640;

/// Header flag: align modules on 4 KiB pages.
pub const HF_PAGE_ALIGN: u32 = 1 << 0;
/// Header flag: provide memory information.
pub const HF_MEMORY_INFO: u32 = 1 << 1;
/// Header flag: provide video mode information. Accepted and not met, as QEMU's
/// `-kernel` does ("multiboot knows VBE. we don't."): the information's VBE and
/// framebuffer flags stay clear, so the kernel sees that no mode was set.
pub const HF_VIDEO_MODE: u32 = 1 << 2;
/// Header flag: the address fields are valid.
pub const HF_ADDRESS: u32 = 1 << 16;
/// The requirement bits (0..15) this loader accepts.
pub const SUPPORTED_REQUIREMENTS: u32 = HF_PAGE_ALIGN | HF_MEMORY_INFO | HF_VIDEO_MODE;

/// Information flag: `mem_lower`/`mem_upper` are valid.
pub const INFO_MEMORY: u32 = 1 << 0;
/// Information flag: `cmdline` is valid.
pub const INFO_CMDLINE: u32 = 1 << 2;
/// Information flag: `mods_count`/`mods_addr` are valid.
pub const INFO_MODS: u32 = 1 << 3;
/// Information flag: `mmap_length`/`mmap_addr` are valid.
pub const INFO_MMAP: u32 = 1 << 6;
/// Information flag: `boot_loader_name` is valid.
pub const INFO_LOADER_NAME: u32 = 1 << 9;

/// Bytes of the information structure (through the framebuffer fields), zeroed first.
pub const INFO_SIZE: u64 = 116;
/// Bytes per module list entry.
pub const MODULE_ENTRY_SIZE: u64 = 16;
/// Bytes per memory map entry (the `size` field, 4, plus `size` = 20).
pub const MMAP_ENTRY_SIZE: u64 = 24;

/// Byte offsets in the Multiboot information structure.
pub mod info_offsets {
    /// `flags`.
    pub const FLAGS: usize = 0;
    /// `mem_lower` (KiB).
    pub const MEM_LOWER: usize = 4;
    /// `mem_upper` (KiB).
    pub const MEM_UPPER: usize = 8;
    /// `boot_device` (not given).
    pub const BOOT_DEVICE: usize = 12;
    /// `cmdline`.
    pub const CMDLINE: usize = 16;
    /// `mods_count`.
    pub const MODS_COUNT: usize = 20;
    /// `mods_addr`.
    pub const MODS_ADDR: usize = 24;
    /// `mmap_length` (bytes).
    pub const MMAP_LENGTH: usize = 44;
    /// `mmap_addr`.
    pub const MMAP_ADDR: usize = 48;
    /// `boot_loader_name`.
    pub const BOOT_LOADER_NAME: usize = 64;
}

use info_offsets as io;

/// A boot module.
#[derive(Debug, Clone, Copy)]
pub struct Module<'a> {
    /// Its contents, placed on a page of their own.
    pub bytes: &'a [u8],
    /// Its string (`string` in the module list).
    pub cmdline: &'a str,
}

/// What the loader needs besides the image.
#[derive(Debug, Clone, Copy)]
pub struct MultibootParams<'a> {
    /// The kernel command line.
    pub cmdline: &'a str,
    /// The modules, in order.
    pub modules: &'a [Module<'a>],
    /// The guest's memory map, given as the Multiboot memory map; also the source of
    /// `mem_upper`.
    pub e820: &'a [E820Entry],
}

/// The address fields (header flag 16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressFields {
    /// Where the header's `magic` is loaded.
    pub header_addr: u32,
    /// Where the text starts.
    pub load_addr: u32,
    /// Where the loaded text ends (0: the end of the file).
    pub load_end_addr: u32,
    /// Where the bss ends (0: no bss).
    pub bss_end_addr: u32,
    /// The entry point.
    pub entry_addr: u32,
}

/// A Multiboot header found in an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// File offset of `magic`.
    pub offset: usize,
    /// `flags`.
    pub flags: u32,
    /// The address fields, when flag 16 is set.
    pub address: Option<AddressFields>,
}

/// Finds the Multiboot header: [`LoadError::BadMagic`] when no magic is found,
/// [`LoadError::BadChecksum`] when every magic found has a wrong checksum.
pub fn find_header(image: &[u8]) -> Result<Header, LoadError> {
    let window = image.get(..HEADER_SEARCH_LEN).unwrap_or(image);
    let mut bad_checksum = false;
    for offset in (0..window.len().saturating_sub(11)).step_by(4) {
        if read_u32(window, offset, "Multiboot header")? != HEADER_MAGIC {
            continue;
        }
        let flags = read_u32(window, offset + 4, "Multiboot header")?;
        let checksum = read_u32(window, offset + 8, "Multiboot header")?;
        if HEADER_MAGIC.wrapping_add(flags).wrapping_add(checksum) != 0 {
            bad_checksum = true;
            continue;
        }
        let address = if flags & HF_ADDRESS != 0 {
            let field = |i: usize| {
                let at = offset + 12 + 4 * i;
                if at + 4 > HEADER_SEARCH_LEN {
                    Err(LoadError::BadMultibootHeader("address fields extend past the first 8192 bytes"))
                } else {
                    read_u32(image, at, "Multiboot address fields")
                }
            };
            Some(AddressFields {
                header_addr: field(0)?,
                load_addr: field(1)?,
                load_end_addr: field(2)?,
                bss_end_addr: field(3)?,
                entry_addr: field(4)?,
            })
        } else {
            None
        };
        return Ok(Header { offset, flags, address });
    }
    Err(if bad_checksum { LoadError::BadChecksum } else { LoadError::BadMagic })
}

/// A flat kernel image (flag 16): `bytes` at `load_addr`, then zeroes to `mem_end`.
struct Flat<'a> {
    load_addr: u64,
    bytes: &'a [u8],
    mem_end: u64,
}

/// Checks the address fields against the image and `MIN_LOAD_ADDR..limit`; returns the
/// kernel and its entry point.
fn plan_flat<'a>(
    image: &'a [u8],
    header_offset: usize,
    a: AddressFields,
    limit: u64,
) -> Result<(Flat<'a>, u64), LoadError> {
    let (header_addr, load_addr) = (u64::from(a.header_addr), u64::from(a.load_addr));
    let text_before_header =
        header_addr.checked_sub(load_addr).ok_or(LoadError::BadMultibootHeader("load_addr is above header_addr"))?;
    let text_offset = (header_offset as u64)
        .checked_sub(text_before_header)
        .ok_or(LoadError::BadMultibootHeader("header_addr - load_addr exceeds the header's offset in the file"))?;
    let file_len = image.len() as u64;
    let load_size = match a.load_end_addr {
        0 => file_len.saturating_sub(text_offset),
        end => u64::from(end)
            .checked_sub(load_addr)
            .ok_or(LoadError::BadMultibootHeader("load_end_addr is below load_addr"))?,
    };
    let text_end = end_of(text_offset, load_size, "Multiboot text end")?;
    let bytes = usize::try_from(text_offset)
        .ok()
        .zip(usize::try_from(text_end).ok())
        .and_then(|(s, e)| image.get(s..e))
        .ok_or(LoadError::Truncated { what: "Multiboot kernel text", needed: text_end, len: file_len })?;
    let load_end = end_of(load_addr, load_size, "Multiboot load end")?;
    let mem_end = match a.bss_end_addr {
        0 => load_end,
        end if u64::from(end) < load_end => {
            return Err(LoadError::BadMultibootHeader("bss_end_addr is below the end of the loaded text"))
        }
        end => u64::from(end),
    };
    if load_addr < MIN_LOAD_ADDR {
        return Err(LoadError::BelowMinimum { gpa: load_addr, min: MIN_LOAD_ADDR });
    }
    check_fits("Multiboot kernel", load_addr, mem_end.saturating_sub(load_addr), limit)?;
    let entry = u64::from(a.entry_addr);
    if !(load_addr..load_end).contains(&entry) {
        return Err(LoadError::EntryOutsideImage { entry });
    }
    Ok((Flat { load_addr, bytes, mem_end }, entry))
}

/// The kernel to write.
enum Kernel<'a> {
    Flat(Flat<'a>),
    Elf(ElfFile<'a>),
}

/// Where each piece of the Multiboot information goes.
struct InfoPlan {
    info: u64,
    mmap: u64,
    mods: u64,
    cmdline: u64,
    name: u64,
    /// First module string; the others follow, each after the previous one's NUL.
    strings: u64,
    /// One past the last byte (the last module's end, or the strings' end).
    end: u64,
}

/// A bump allocator over guest-physical addresses, with checked arithmetic.
struct Bump(u64);

impl Bump {
    fn take(&mut self, len: u64, align: u64) -> Result<u64, LoadError> {
        let at = align_up(self.0, align, "Multiboot information layout")?;
        self.0 = end_of(at, len, "Multiboot information layout")?;
        Ok(at)
    }
}

/// The size of `n` items of `size` bytes.
fn array_len(n: usize, size: u64) -> Result<u64, LoadError> {
    (n as u64).checked_mul(size).ok_or(LoadError::Overflow("Multiboot information layout"))
}

/// Lays out the information, its strings and the modules from `base` on.
fn plan_info(base: u64, p: &MultibootParams) -> Result<InfoPlan, LoadError> {
    let mut bump = Bump(base);
    let info = bump.take(INFO_SIZE, 8)?;
    let mmap = bump.take(array_len(p.e820.len(), MMAP_ENTRY_SIZE)?, 8)?;
    let mods = bump.take(array_len(p.modules.len(), MODULE_ENTRY_SIZE)?, 8)?;
    let cmdline = bump.take(p.cmdline.len() as u64 + 1, 1)?;
    let name = bump.take(LOADER_NAME.len() as u64 + 1, 1)?;
    let strings = bump.0;
    for m in p.modules {
        bump.take(m.cmdline.len() as u64 + 1, 1)?;
    }
    for m in p.modules {
        bump.take(m.bytes.len() as u64, PAGE_SIZE)?;
    }
    Ok(InfoPlan { info, mmap, mods, cmdline, name, strings, end: bump.0 })
}

/// KiB of RAM from 1 MiB up to the first byte that no e820 RAM entry covers (up to the
/// end of guest RAM when there is no map), capped to `u32`.
fn mem_upper_kib(e820: &[E820Entry], mem_size: u64) -> u32 {
    contiguous_ram_kib(e820, mem_size, MIN_LOAD_ADDR)
}

/// `mem_lower`: KiB of RAM contiguous from address 0, at most [`MEM_LOWER_MAX_KIB`].
fn mem_lower_kib(e820: &[E820Entry], mem_size: u64) -> u32 {
    contiguous_ram_kib(e820, mem_size, 0).min(MEM_LOWER_MAX_KIB)
}

/// KiB of RAM contiguous from `start` in `e820` (all of `mem_size` with no map).
fn contiguous_ram_kib(e820: &[E820Entry], mem_size: u64, start: u64) -> u32 {
    let mut end = start;
    // Each step moves `end` to the end of a RAM range containing it; chains of adjacent
    // entries need at most one step per entry.
    for _ in 0..=e820.len() {
        match ram_ranges(e820, mem_size).find(|r| r.start <= end && end < r.end) {
            Some(r) => end = r.end,
            None => break,
        }
    }
    u32::try_from(end.saturating_sub(start) / 1024).unwrap_or(u32::MAX)
}

/// A 32-bit field value, or `Overflow` (planned addresses are below 4 GiB).
fn addr32(value: u64) -> Result<u32, LoadError> {
    u32::try_from(value).map_err(|_| LoadError::Overflow("Multiboot address above 4 GiB"))
}

/// Loads the Multiboot kernel `image` with `p`, returning the 32-bit entry state
/// (`eax` = [`BOOTLOADER_MAGIC`], `ebx` = the information address).
pub fn load(mem: &mut impl GuestMemory, image: &[u8], p: &MultibootParams) -> Result<EntryState, LoadError> {
    load_with_layout(mem, image, p).map(|l| l.entry)
}

/// [`load`], also saying where the kernel and the information with its modules went.
pub fn load_with_layout(mem: &mut impl GuestMemory, image: &[u8], p: &MultibootParams) -> Result<Loaded, LoadError> {
    let ram = mem.size();
    let limit = ram.min(ADDRESS_LIMIT);
    let header = find_header(image)?;
    let unsupported = header.flags & 0xFFFF & !SUPPORTED_REQUIREMENTS;
    if unsupported != 0 {
        return Err(LoadError::UnsupportedFlags(unsupported));
    }

    // The kernel.
    let (kernel, span, entry) = match header.address {
        Some(a) => {
            let (flat, entry) = plan_flat(image, header.offset, a, limit)?;
            let span = Region { start: flat.load_addr, end: flat.mem_end };
            (Kernel::Flat(flat), span, entry)
        }
        None => {
            if !has_elf_magic(image) {
                return Err(LoadError::BadMultibootHeader("no address fields (flag 16) and not an ELF file"));
            }
            if image.get(4) == Some(&2) {
                return Err(LoadError::BadElf("a 64-bit ELF Multiboot kernel needs the address fields (flag 16)"));
            }
            let file = ElfFile::parse(image, Want::Elf32I386)?;
            let (span, entry) = file.plan(MIN_LOAD_ADDR, limit, false)?;
            (Kernel::Elf(file), span, entry)
        }
    };
    check_in_ram("Multiboot kernel", p.e820, span.start, span.end)?;
    let eip = addr32(entry)?;

    // The information, its strings and the modules.
    check_c_string(p.cmdline)?;
    for m in p.modules {
        check_c_string(m.cmdline)?;
    }
    let base = align_up(span.end, PAGE_SIZE, "Multiboot information address")?;
    let plan = plan_info(base, p)?;
    check_fits("Multiboot information and modules", base, plan.end.saturating_sub(base), limit)?;
    check_in_ram("Multiboot information and modules", p.e820, base, plan.end)?;

    let mut info = [0u8; INFO_SIZE as usize];
    let mut flags = INFO_MEMORY | INFO_CMDLINE | INFO_MODS | INFO_LOADER_NAME;
    put(&mut info, io::MEM_LOWER, &mem_lower_kib(p.e820, ram).to_le_bytes());
    put(&mut info, io::MEM_UPPER, &mem_upper_kib(p.e820, ram).to_le_bytes());
    put(&mut info, io::CMDLINE, &addr32(plan.cmdline)?.to_le_bytes());
    put(&mut info, io::MODS_COUNT, &addr32(p.modules.len() as u64)?.to_le_bytes());
    put(&mut info, io::MODS_ADDR, &addr32(plan.mods)?.to_le_bytes());
    if !p.e820.is_empty() {
        flags |= INFO_MMAP;
        put(&mut info, io::MMAP_LENGTH, &addr32(array_len(p.e820.len(), MMAP_ENTRY_SIZE)?)?.to_le_bytes());
        put(&mut info, io::MMAP_ADDR, &addr32(plan.mmap)?.to_le_bytes());
    }
    put(&mut info, io::BOOT_LOADER_NAME, &addr32(plan.name)?.to_le_bytes());
    put(&mut info, io::FLAGS, &flags.to_le_bytes());

    // Commit.
    match &kernel {
        Kernel::Flat(flat) => {
            mem.write(flat.load_addr, flat.bytes)?;
            let text_end = end_of(flat.load_addr, flat.bytes.len() as u64, "Multiboot load end")?;
            let bss = flat.mem_end.saturating_sub(text_end);
            if bss > 0 {
                mem.zero(text_end, bss)?;
            }
        }
        Kernel::Elf(file) => file.write(mem)?,
    }
    mem.write(plan.info, &info)?;
    let mut at = plan.mmap;
    for e in p.e820 {
        let mut entry = [0u8; MMAP_ENTRY_SIZE as usize];
        put(&mut entry, 0, &20u32.to_le_bytes());
        put(&mut entry, 4, &e.addr.to_le_bytes());
        put(&mut entry, 12, &e.size.to_le_bytes());
        put(&mut entry, 20, &e.kind.to_le_bytes());
        mem.write(at, &entry)?;
        at = end_of(at, MMAP_ENTRY_SIZE, "memory map")?;
    }
    write_c_string(mem, plan.cmdline, p.cmdline)?;
    write_c_string(mem, plan.name, LOADER_NAME)?;
    // Module strings from `plan.strings`, module data page by page after them, the list
    // entries at `plan.mods`: the same walk as `plan_info`.
    let mut strings = Bump(plan.strings);
    let mut data = Bump(strings.0);
    for m in p.modules {
        data.take(m.cmdline.len() as u64 + 1, 1)?;
    }
    let mut entry_at = plan.mods;
    for m in p.modules {
        let string = strings.take(m.cmdline.len() as u64 + 1, 1)?;
        write_c_string(mem, string, m.cmdline)?;
        let start = data.take(m.bytes.len() as u64, PAGE_SIZE)?;
        mem.write(start, m.bytes)?;
        let mut entry = [0u8; MODULE_ENTRY_SIZE as usize];
        put(&mut entry, 0, &addr32(start)?.to_le_bytes());
        put(&mut entry, 4, &addr32(data.0)?.to_le_bytes());
        put(&mut entry, 8, &addr32(string)?.to_le_bytes());
        mem.write(entry_at, &entry)?;
        entry_at = end_of(entry_at, MODULE_ENTRY_SIZE, "module list")?;
    }
    Ok(Loaded {
        entry: EntryState::Protected32 { eip, eax: BOOTLOADER_MAGIC, ebx: addr32(plan.info)?, esi: 0 },
        kernel: span,
        data: Some(Region { start: base, end: plan.end }),
    })
}
