//! A Linux bzImage, started through the 32-bit boot protocol (Linux
//! `Documentation/arch/x86/boot.rst`): the real-mode setup code is not run; the loader
//! fills `boot_params` itself and the vCPU enters the protected-mode kernel at
//! `code32_start` with ESI pointing at `boot_params`.
//!
//! # Layout
//!
//! - [`BOOT_PARAMS_ADDR`] (0x7000): the `boot_params` "zero page", one page: zeroed, the
//!   image's setup header copied in at 0x1F1, the loader's fields set;
//! - [`CMDLINE_ADDR`] (0x20000): the NUL-terminated command line, at most
//!   [`CMDLINE_MAX`] bytes with the NUL (and at most the kernel's `cmdline_size` without);
//! - [`KERNEL_ADDR`] (0x100000, 1 MiB): the protected-mode kernel, the image from file
//!   offset `(setup_sects + 1) * 512` (a `setup_sects` of 0 means 4) to its end. It is
//!   always loaded there, as QEMU and GRUB's 16-bit path do, never at `pref_address`: the
//!   kernel's decompressor moves itself to its runtime address. From protocol 2.10 that
//!   runtime address (`pref_address` aligned up to `kernel_alignment` when relocatable
//!   and above 1 MiB, else `pref_address`) plus `init_size` must also be inside RAM, and
//!   the whole range from 1 MiB to the end of it is the kernel's;
//! - the initrd: page-aligned, as high as possible, wholly inside one e820 RAM entry
//!   (all of guest RAM when no map is given), below `initrd_addr_max + 1` (no such limit
//!   when the kernel sets `XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G`, protocol 2.12+), above the
//!   kernel's range; its address and size go to `ramdisk_image`/`ramdisk_size` and the
//!   high halves to `ext_ramdisk_image`/`ext_ramdisk_size`.
//!
//! # `boot_params` fields written
//!
//! The setup header from 0x1F1 to `0x202 + image[0x201]` (capped at 0x290, where the
//! header area of `boot_params` ends), then: `type_of_loader` = 0xFF (undefined
//! loader), `loadflags |= CAN_USE_HEAP` (LOADED_HIGH, required, stays set),
//! `heap_end_ptr` = 0xFE00 (read only by the real-mode setup code, which this protocol
//! skips), `cmd_line_ptr`, `ramdisk_*`, `setup_data` = 0, `e820_entries` and
//! `e820_table` (at most 128 entries), and `acpi_rsdp_addr` (protocol 2.14+ only; older
//! kernels find the RSDP by scanning, and the given address is dropped).
//!
//! Rejected: a boot protocol older than 2.06, a header too short for its version, a
//! kernel without LOADED_HIGH (a zImage), a `code32_start` outside the loaded kernel, a
//! command line over the limit or holding a NUL, more than 128 e820 entries, anything
//! not inside RAM, an initrd with no place.

use crate::{
    align_up, bytes_at, check_c_string, check_fits, check_in_ram, end_of, put, ram_ranges, read_u16, read_u32,
    read_u64, read_u8, write_c_string, E820Entry, EntryState, GuestMemory, LoadError, Loaded, Region, PAGE_SIZE,
};

/// Guest-physical address of `boot_params` (the "zero page"); ESI at entry.
pub const BOOT_PARAMS_ADDR: u64 = 0x7000;
/// Size of `boot_params`.
pub const BOOT_PARAMS_SIZE: usize = 0x1000;
/// Guest-physical address of the command line.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Bytes reserved for the command line at [`CMDLINE_ADDR`], terminating NUL included.
pub const CMDLINE_MAX: u64 = 0x1_0000;
/// Guest-physical address the protected-mode kernel is loaded at (1 MiB).
pub const KERNEL_ADDR: u64 = 0x10_0000;
/// Oldest boot protocol accepted (2.06: `cmdline_size`).
pub const MIN_PROTOCOL: u16 = 0x0206;
/// `type_of_loader` written: 0xFF, "undefined".
pub const LOADER_TYPE: u8 = 0xFF;
/// `heap_end_ptr` written.
pub const HEAP_END_PTR: u16 = 0xFE00;
/// Most e820 entries `boot_params` holds.
pub const E820_MAX_ENTRIES: usize = 128;

/// `loadflags` bit: the protected-mode code is loaded at 1 MiB (a bzImage).
pub const LOADED_HIGH: u8 = 0x01;
/// `loadflags` bit: `heap_end_ptr` is valid.
pub const CAN_USE_HEAP: u8 = 0x80;
/// `xloadflags` bit: the kernel has the 64-bit entry point.
pub const XLF_KERNEL_64: u16 = 0x01;
/// `xloadflags` bit: kernel, `boot_params`, command line and initrd may be above 4 GiB.
pub const XLF_CAN_BE_LOADED_ABOVE_4G: u16 = 0x02;

/// Byte offsets in `boot_params` (and, from 0x1F1 to the header's end, in the image).
pub mod offsets {
    /// `acpi_rsdp_addr` (u64, protocol 2.14+).
    pub const ACPI_RSDP_ADDR: usize = 0x070;
    /// `ext_ramdisk_image` (u32): bits 32..63 of the initrd address.
    pub const EXT_RAMDISK_IMAGE: usize = 0x0C0;
    /// `ext_ramdisk_size` (u32): bits 32..63 of the initrd size.
    pub const EXT_RAMDISK_SIZE: usize = 0x0C4;
    /// `ext_cmd_line_ptr` (u32): bits 32..63 of the command line address (always 0 here).
    pub const EXT_CMD_LINE_PTR: usize = 0x0C8;
    /// `e820_entries` (u8).
    pub const E820_ENTRIES: usize = 0x1E8;
    /// Start of the setup header: `setup_sects` (u8).
    pub const SETUP_SECTS: usize = 0x1F1;
    /// `syssize` (u32, protocol 2.04+): the protected-mode kernel's size in 16-byte
    /// paragraphs.
    pub const SYSSIZE: usize = 0x1F4;
    /// `boot_flag` (u16, 0xAA55).
    pub const BOOT_FLAG: usize = 0x1FE;
    /// The second byte of the header's `jump`: the header ends at 0x202 plus it.
    pub const JUMP_OFFSET: usize = 0x201;
    /// `header` (the magic "HdrS").
    pub const HEADER: usize = 0x202;
    /// `version` (u16).
    pub const VERSION: usize = 0x206;
    /// `type_of_loader` (u8).
    pub const TYPE_OF_LOADER: usize = 0x210;
    /// `loadflags` (u8).
    pub const LOADFLAGS: usize = 0x211;
    /// `code32_start` (u32).
    pub const CODE32_START: usize = 0x214;
    /// `ramdisk_image` (u32).
    pub const RAMDISK_IMAGE: usize = 0x218;
    /// `ramdisk_size` (u32).
    pub const RAMDISK_SIZE: usize = 0x21C;
    /// `heap_end_ptr` (u16).
    pub const HEAP_END_PTR: usize = 0x224;
    /// `cmd_line_ptr` (u32).
    pub const CMD_LINE_PTR: usize = 0x228;
    /// `initrd_addr_max` (u32): highest address the initrd's last byte may have.
    pub const INITRD_ADDR_MAX: usize = 0x22C;
    /// `kernel_alignment` (u32).
    pub const KERNEL_ALIGNMENT: usize = 0x230;
    /// `relocatable_kernel` (u8).
    pub const RELOCATABLE_KERNEL: usize = 0x234;
    /// `xloadflags` (u16, protocol 2.12+).
    pub const XLOADFLAGS: usize = 0x236;
    /// `cmdline_size` (u32, protocol 2.06+): longest command line without the NUL.
    pub const CMDLINE_SIZE: usize = 0x238;
    /// `setup_data` (u64, protocol 2.09+).
    pub const SETUP_DATA: usize = 0x250;
    /// `pref_address` (u64, protocol 2.10+).
    pub const PREF_ADDRESS: usize = 0x258;
    /// `init_size` (u32, protocol 2.10+).
    pub const INIT_SIZE: usize = 0x260;
    /// End of the setup header area of `boot_params`.
    pub const SETUP_HEADER_LIMIT: usize = 0x290;
    /// `e820_table`: [`super::E820_MAX_ENTRIES`] entries of 20 bytes (u64 addr, u64 size,
    /// u32 type).
    pub const E820_TABLE: usize = 0x2D0;
}

use offsets as off;

/// What the loader needs besides the image.
#[derive(Debug, Clone, Copy)]
pub struct LinuxParams<'a> {
    /// The kernel command line.
    pub cmdline: &'a str,
    /// The initial RAM disk, if any (an empty one counts as none).
    pub initrd: Option<&'a [u8]>,
    /// The guest's memory map, copied to `e820_table`; the initrd goes into a RAM entry.
    pub e820: &'a [E820Entry],
    /// The ACPI RSDP address, for kernels with protocol 2.14+.
    pub acpi_rsdp: Option<u64>,
}

/// Whether `image` carries the boot sector signature and the "HdrS" setup header magic.
pub fn is_bzimage(image: &[u8]) -> bool {
    image.get(off::BOOT_FLAG..off::BOOT_FLAG + 2) == Some(&[0x55, 0xAA][..])
        && image.get(off::HEADER..off::HEADER + 4) == Some(&b"HdrS"[..])
}

/// The setup header fields the loader uses.
#[derive(Debug, Clone, Copy)]
struct SetupHeader {
    version: u16,
    /// Byte offset just past the header in the image.
    header_end: usize,
    /// File offset of the protected-mode kernel.
    kernel_offset: usize,
    /// How many bytes the protected-mode kernel has at least (`syssize` * 16).
    kernel_size: u64,
    code32_start: u32,
    /// Highest address the initrd may end at (exclusive).
    initrd_limit: u64,
    cmdline_size: u32,
    /// First byte past the memory the kernel needs from [`KERNEL_ADDR`] on, given the
    /// loaded size (added later) and, from 2.10, its runtime address and `init_size`.
    runtime_end: u64,
}

fn parse_header(image: &[u8]) -> Result<SetupHeader, LoadError> {
    let boot_flag = read_u16(image, off::BOOT_FLAG, "boot sector signature")?;
    let magic: [u8; 4] = bytes_at(image, off::HEADER, "setup header magic")?;
    if boot_flag != 0xAA55 || &magic != b"HdrS" {
        return Err(LoadError::BadMagic);
    }
    let version = read_u16(image, off::VERSION, "setup header version")?;
    if version < MIN_PROTOCOL {
        return Err(LoadError::UnsupportedProtocol(version));
    }
    let header_end = off::HEADER + usize::from(read_u8(image, off::JUMP_OFFSET, "setup header")?);
    let needed = if version >= 0x020A { off::INIT_SIZE + 4 } else { off::CMDLINE_SIZE + 4 };
    if header_end < needed {
        return Err(LoadError::BadSetupHeader("the header (its end given by byte 0x201) is too short for its version"));
    }
    if image.len() < header_end {
        return Err(LoadError::Truncated { what: "setup header", needed: header_end as u64, len: image.len() as u64 });
    }
    if read_u8(image, off::LOADFLAGS, "loadflags")? & LOADED_HIGH == 0 {
        return Err(LoadError::BadSetupHeader("LOADED_HIGH is clear (a zImage, not a bzImage)"));
    }
    let setup_sects = match read_u8(image, off::SETUP_SECTS, "setup_sects")? {
        0 => 4,
        n => usize::from(n),
    };
    let kernel_offset = (setup_sects + 1) * 512;
    let kernel_size = u64::from(read_u32(image, off::SYSSIZE, "syssize")?) * 16;
    let code32_start = read_u32(image, off::CODE32_START, "code32_start")?;
    let initrd_addr_max = read_u32(image, off::INITRD_ADDR_MAX, "initrd_addr_max")?;
    let xloadflags = if version >= 0x020C { read_u16(image, off::XLOADFLAGS, "xloadflags")? } else { 0 };
    let above_4g = XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G;
    let initrd_limit = if xloadflags & above_4g == above_4g { u64::MAX } else { u64::from(initrd_addr_max) + 1 };
    let cmdline_size = read_u32(image, off::CMDLINE_SIZE, "cmdline_size")?;
    let runtime_end = if version >= 0x020A {
        let pref_address = read_u64(image, off::PREF_ADDRESS, "pref_address")?;
        let init_size = read_u32(image, off::INIT_SIZE, "init_size")?;
        let runtime_start = if read_u8(image, off::RELOCATABLE_KERNEL, "relocatable_kernel")? != 0 {
            let alignment = read_u32(image, off::KERNEL_ALIGNMENT, "kernel_alignment")?;
            if !alignment.is_power_of_two() {
                return Err(LoadError::BadSetupHeader("kernel_alignment is not a power of two"));
            }
            align_up(pref_address.max(KERNEL_ADDR), alignment.into(), "kernel runtime address")?
        } else if pref_address == 0 {
            KERNEL_ADDR
        } else {
            pref_address
        };
        if runtime_start < KERNEL_ADDR {
            return Err(LoadError::BadSetupHeader("pref_address of a non-relocatable kernel is below 1 MiB"));
        }
        end_of(runtime_start, init_size.into(), "kernel runtime address + init_size")?
    } else {
        KERNEL_ADDR
    };
    Ok(SetupHeader {
        version,
        header_end,
        kernel_offset,
        kernel_size,
        code32_start,
        initrd_limit,
        cmdline_size,
        runtime_end,
    })
}

/// The highest page-aligned start for `size` bytes inside one RAM range, at or above
/// `floor`, ending at or below `limit`.
fn place_initrd(size: u64, floor: u64, limit: u64, e820: &[E820Entry], mem_size: u64) -> Option<u64> {
    ram_ranges(e820, mem_size)
        .filter_map(|r| {
            let top = r.end.min(limit);
            let start = crate::align_down(top.checked_sub(size)?, PAGE_SIZE);
            (start >= r.start.max(floor)).then_some(start)
        })
        .max()
}

/// Loads the bzImage `image` with `p`, returning the 32-bit entry state
/// (`eip` = `code32_start`, `esi` = [`BOOT_PARAMS_ADDR`]).
pub fn load(mem: &mut impl GuestMemory, image: &[u8], p: &LinuxParams) -> Result<EntryState, LoadError> {
    load_with_layout(mem, image, p).map(|l| l.entry)
}

/// [`load`], also saying where the kernel (with its `init_size`) and the initrd went.
pub fn load_with_layout(mem: &mut impl GuestMemory, image: &[u8], p: &LinuxParams) -> Result<Loaded, LoadError> {
    let ram = mem.size();
    let hdr = parse_header(image)?;

    // The protected-mode kernel: at least the `syssize` paragraphs the header promises
    // (an image cut short would start and die in the decompressor), and at least one
    // byte. Bytes past it (an appended signature) are loaded too.
    let needed = (hdr.kernel_offset as u64).saturating_add(hdr.kernel_size.max(1));
    let kernel = match image.get(hdr.kernel_offset..) {
        Some(k) if !k.is_empty() && image.len() as u64 >= needed => k,
        _ => return Err(LoadError::Truncated { what: "protected-mode kernel", needed, len: image.len() as u64 }),
    };
    let load_end = end_of(KERNEL_ADDR, kernel.len() as u64, "kernel end")?;
    if !(KERNEL_ADDR..load_end).contains(&u64::from(hdr.code32_start)) {
        return Err(LoadError::EntryOutsideImage { entry: hdr.code32_start.into() });
    }
    let kernel_end = load_end.max(hdr.runtime_end);
    check_fits("kernel with its init_size", KERNEL_ADDR, kernel_end.saturating_sub(KERNEL_ADDR), ram)?;
    check_in_ram("kernel with its init_size", p.e820, KERNEL_ADDR, kernel_end)?;

    // boot_params and the command line.
    let params_end = check_fits("boot_params", BOOT_PARAMS_ADDR, BOOT_PARAMS_SIZE as u64, ram)?;
    check_in_ram("boot_params", p.e820, BOOT_PARAMS_ADDR, params_end)?;
    check_c_string(p.cmdline)?;
    let cmdline_len = p.cmdline.len() as u64;
    let cmdline_max = u64::from(hdr.cmdline_size).min(CMDLINE_MAX - 1);
    if cmdline_len > cmdline_max {
        return Err(LoadError::CmdlineTooLong { len: cmdline_len, max: cmdline_max });
    }
    let cmdline_end = check_fits("command line", CMDLINE_ADDR, cmdline_len + 1, ram)?;
    check_in_ram("command line", p.e820, CMDLINE_ADDR, cmdline_end)?;

    if p.e820.len() > E820_MAX_ENTRIES {
        return Err(LoadError::TooManyE820Entries { count: p.e820.len(), max: E820_MAX_ENTRIES });
    }

    // The initrd.
    let initrd = match p.initrd {
        Some(bytes) if !bytes.is_empty() => {
            let size = bytes.len() as u64;
            let start = place_initrd(size, kernel_end, hdr.initrd_limit, p.e820, ram)
                .ok_or(LoadError::InitrdDoesNotFit { size })?;
            Some((start, bytes))
        }
        _ => None,
    };

    // boot_params, built here and written in one piece.
    let mut page = [0u8; BOOT_PARAMS_SIZE];
    let copy_end = hdr.header_end.min(off::SETUP_HEADER_LIMIT);
    let header = image.get(off::SETUP_SECTS..copy_end).ok_or(LoadError::Truncated {
        what: "setup header",
        needed: copy_end as u64,
        len: image.len() as u64,
    })?;
    put(&mut page, off::SETUP_SECTS, header);
    page[off::TYPE_OF_LOADER] = LOADER_TYPE;
    page[off::LOADFLAGS] |= CAN_USE_HEAP;
    put(&mut page, off::HEAP_END_PTR, &HEAP_END_PTR.to_le_bytes());
    put(&mut page, off::CMD_LINE_PTR, &(CMDLINE_ADDR as u32).to_le_bytes());
    put(&mut page, off::EXT_CMD_LINE_PTR, &0u32.to_le_bytes());
    put(&mut page, off::SETUP_DATA, &0u64.to_le_bytes());
    if let Some((start, bytes)) = initrd {
        let size = bytes.len() as u64;
        put(&mut page, off::RAMDISK_IMAGE, &(start as u32).to_le_bytes());
        put(&mut page, off::RAMDISK_SIZE, &(size as u32).to_le_bytes());
        put(&mut page, off::EXT_RAMDISK_IMAGE, &((start >> 32) as u32).to_le_bytes());
        put(&mut page, off::EXT_RAMDISK_SIZE, &((size >> 32) as u32).to_le_bytes());
    }
    page[off::E820_ENTRIES] = p.e820.len() as u8;
    for (i, e) in p.e820.iter().enumerate() {
        let at = off::E820_TABLE + i * 20;
        put(&mut page, at, &e.addr.to_le_bytes());
        put(&mut page, at + 8, &e.size.to_le_bytes());
        put(&mut page, at + 16, &e.kind.to_le_bytes());
    }
    if let (Some(rsdp), true) = (p.acpi_rsdp, hdr.version >= 0x020E) {
        put(&mut page, off::ACPI_RSDP_ADDR, &rsdp.to_le_bytes());
    }

    // Commit.
    mem.write(BOOT_PARAMS_ADDR, &page)?;
    write_c_string(mem, CMDLINE_ADDR, p.cmdline)?;
    mem.write(KERNEL_ADDR, kernel)?;
    if let Some((start, bytes)) = initrd {
        mem.write(start, bytes)?;
    }
    Ok(Loaded {
        entry: EntryState::Protected32 { eip: hdr.code32_start, eax: 0, ebx: 0, esi: BOOT_PARAMS_ADDR as u32 },
        kernel: Region { start: KERNEL_ADDR, end: kernel_end },
        data: initrd.map(|(start, bytes)| Region { start, end: start.saturating_add(bytes.len() as u64) }),
    })
}
