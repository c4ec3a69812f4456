//! Guest image loaders for the service partition's guest builder: a Linux bzImage per
//! the x86 boot protocol ([`linux`]), a Multiboot v1 kernel as QEMU's `-kernel` loads it
//! ([`multiboot`]) and a bare x86-64 ELF executable ([`elf64`]). [`detect`] tells them
//! apart.
//!
//! A loader reads an untrusted image and writes it into guest RAM through
//! [`GuestMemory`] (guest-physical `0..size()`), then says how the boot vCPU must start
//! ([`EntryState`]). The guest builder owns everything around that: the GDT, the identity
//! page tables for [`EntryState::Long64`], the e820 map it passes in, the ACPI tables.
//!
//! Rules every loader keeps:
//! - no panic on any input: every field is read with a checked little-endian read, every
//!   sum and product is checked, every slice is taken with `get`;
//! - validate, then commit: the whole image and every placement are checked before the
//!   first byte is written, so a rejected image leaves guest RAM untouched (only a
//!   [`GuestMemory`] that fails a write part-way can leave a partial load);
//! - every write lies inside `0..size()` (the tests' memory asserts it).
//!
//! # Guest-physical layout
//!
//! | range | what | constant |
//! |---|---|---|
//! | `0x7000..0x8000` | Linux `boot_params` ("zero page") | [`linux::BOOT_PARAMS_ADDR`] |
//! | `0x20000..0x30000` | Linux command line (NUL-terminated, at most 64 KiB with the NUL) | [`linux::CMDLINE_ADDR`], [`linux::CMDLINE_MAX`] |
//! | from `0x100000` (1 MiB) | Linux protected-mode kernel, plus `init_size` at its runtime address | [`linux::KERNEL_ADDR`] |
//! | highest fitting page in RAM | Linux initrd, below `initrd_addr_max` and above the kernel | — |
//! | from 1 MiB, where the image says | Multiboot kernel (nothing may load below [`multiboot::MIN_LOAD_ADDR`]) | — |
//! | next page after the Multiboot kernel | Multiboot information, memory map, module list, strings, then each module on its own page | — |
//! | where the image says, at or above the caller's minimum | ELF64 segments | — |
//!
//! All of it must lie inside guest RAM, and for Linux and Multiboot inside one RAM
//! (type 1) entry of the e820 map when a map is given.
#![no_std]
#![forbid(unsafe_code)]

mod elf;
pub mod elf64;
pub mod linux;
pub mod multiboot;

use core::fmt;

/// Size of a guest page: initrd and Multiboot modules start on one.
pub const PAGE_SIZE: u64 = 0x1000;

/// Guest RAM as seen by a loader: guest-physical `0..size()`, written through `write`.
pub trait GuestMemory {
    /// Bytes of guest RAM, from guest-physical 0.
    fn size(&self) -> u64;
    /// Copies `bytes` to guest-physical `gpa`; must fail with [`LoadError::OutOfRange`]
    /// (and write nothing) when `gpa..gpa + bytes.len()` is not inside `0..size()`.
    fn write(&mut self, gpa: u64, bytes: &[u8]) -> Result<(), LoadError>;
    /// Zeroes `len` bytes at `gpa`, with the same range rule as [`GuestMemory::write`].
    fn zero(&mut self, gpa: u64, len: u64) -> Result<(), LoadError>;
}

/// What [`detect`] recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    /// A Linux bzImage (boot sector signature and the `HdrS` setup header).
    LinuxBzImage,
    /// An image with a valid Multiboot v1 header.
    Multiboot,
    /// A little-endian 64-bit x86-64 ELF file.
    Elf64,
    /// None of the above.
    Unknown,
}

/// Recognises an image, checking in this order: a Linux bzImage (`0xAA55` at 0x1FE and
/// `HdrS` at 0x202), a Multiboot v1 header (magic 0x1BADB002, 4-byte aligned in the
/// first 8192 bytes, valid checksum), then an x86-64 ELF64 file. A recognised kind is a
/// hint for choosing the loader: the loader still validates everything.
pub fn detect(image: &[u8]) -> ImageKind {
    if linux::is_bzimage(image) {
        ImageKind::LinuxBzImage
    } else if multiboot::find_header(image).is_ok() {
        ImageKind::Multiboot
    } else if elf::is_elf64_x86_64(image) {
        ImageKind::Elf64
    } else {
        ImageKind::Unknown
    }
}

/// How the boot vCPU must start. Registers not named here are zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryState {
    /// 32-bit flat protected mode (CS a flat 4 GiB code segment, DS/ES/SS a flat data
    /// segment), paging off, interrupts off (Linux 32-bit boot protocol, Multiboot).
    Protected32 {
        /// Where to start.
        eip: u32,
        /// EAX (the Multiboot magic 0x2BADB002, 0 for Linux).
        eax: u32,
        /// EBX (the Multiboot information address, 0 for Linux).
        ebx: u32,
        /// ESI (the `boot_params` address for Linux, 0 for Multiboot).
        esi: u32,
    },
    /// 64-bit long mode; the builder provides identity page tables and a flat GDT.
    Long64 {
        /// Where to start.
        rip: u64,
        /// RSI (0: a bare ELF64 image gets no boot information).
        rsi: u64,
    },
}

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;
/// e820 type of ACPI-reclaimable memory (the ACPI tables).
pub const E820_ACPI: u32 = 3;

/// One entry of the guest's e820 memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// First guest-physical byte.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// [`E820_RAM`], [`E820_RESERVED`], [`E820_ACPI`], ...
    pub kind: u32,
}

/// A guest-physical byte range `start..end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl Region {
    /// Whether the two ranges share a byte.
    pub fn overlaps(&self, other: &Region) -> bool {
        self.start < other.end && other.start < self.end
    }
}

/// What a loader placed, for a builder that must keep its own structures (page tables,
/// ACPI tables) clear of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loaded {
    /// How the boot vCPU starts.
    pub entry: EntryState,
    /// The memory the kernel occupies: the loaded image and its bss (for Linux also the
    /// `init_size` bytes at its runtime address).
    pub kernel: Region,
    /// Loader-built data outside the fixed low pages: the Linux initrd, or the Multiboot
    /// information with its strings, memory map and modules. `None` when there is none.
    pub data: Option<Region>,
}

/// Why an image was not loaded. Every failure of every loader is one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadError {
    /// The image does not carry the format's magic number.
    BadMagic,
    /// The image ends before `what`: `needed` bytes are required, it has `len`.
    Truncated {
        /// The structure that is cut off.
        what: &'static str,
        /// Bytes of image needed to hold it.
        needed: u64,
        /// Bytes the image has.
        len: u64,
    },
    /// `what` (`len` bytes at `gpa`) does not fit below `limit` (the end of guest RAM, or
    /// 4 GiB for 32-bit boot data).
    DoesNotFit {
        /// What was being placed.
        what: &'static str,
        /// Where.
        gpa: u64,
        /// How many bytes.
        len: u64,
        /// The address it must end below.
        limit: u64,
    },
    /// `what` (`len` bytes at `gpa`) is not inside one RAM entry of the e820 map.
    NotInRam {
        /// What was being placed.
        what: &'static str,
        /// Where.
        gpa: u64,
        /// How many bytes.
        len: u64,
    },
    /// The Linux boot protocol version is older than 2.06.
    UnsupportedProtocol(u16),
    /// The Linux setup header is inconsistent.
    BadSetupHeader(&'static str),
    /// The command line is longer than the kernel or the layout accepts.
    CmdlineTooLong {
        /// Its length in bytes (without a terminating NUL).
        len: u64,
        /// The most accepted.
        max: u64,
    },
    /// A command line or module string contains a NUL byte, which would cut it short.
    CmdlineHasNul,
    /// No page-aligned place in RAM below the kernel's `initrd_addr_max` and clear of the
    /// kernel holds an initrd this large.
    InitrdDoesNotFit {
        /// The initrd's size in bytes.
        size: u64,
    },
    /// The e820 map has more entries than `boot_params` holds.
    TooManyE820Entries {
        /// Entries given.
        count: usize,
        /// The most accepted.
        max: usize,
    },
    /// A Multiboot header has the magic but its checksum is wrong.
    BadChecksum,
    /// The Multiboot header is inconsistent.
    BadMultibootHeader(&'static str),
    /// The Multiboot header requires features (flag bits 0..15) this loader cannot give.
    UnsupportedFlags(u32),
    /// The ELF file is malformed or not what this loader takes.
    BadElf(&'static str),
    /// More loadable segments than the loader accepts.
    TooManySegments {
        /// The most accepted.
        max: usize,
    },
    /// Two loaded ranges (starting at `first` and `second`) overlap.
    Overlap {
        /// Start of the one found first.
        first: u64,
        /// Start of the other.
        second: u64,
    },
    /// A segment would load at `gpa`, below the lowest allowed address `min`.
    BelowMinimum {
        /// Where it would load.
        gpa: u64,
        /// The lowest allowed address.
        min: u64,
    },
    /// The entry point is not inside the loaded (executable) image.
    EntryOutsideImage {
        /// The entry point.
        entry: u64,
    },
    /// An address or size computation overflowed.
    Overflow(&'static str),
    /// A guest memory access outside `0..size()` (reported by [`GuestMemory`]).
    OutOfRange {
        /// Where.
        gpa: u64,
        /// How many bytes.
        len: u64,
    },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::BadMagic => write!(f, "image is not in the expected format (no magic number)"),
            Self::Truncated { what, needed, len } => {
                write!(f, "image truncated: {what} needs {needed} bytes, the image has {len}")
            }
            Self::DoesNotFit { what, gpa, len, limit } => {
                write!(f, "{what} ({len:#x} bytes at {gpa:#x}) does not fit below {limit:#x}")
            }
            Self::NotInRam { what, gpa, len } => {
                write!(f, "{what} ({len:#x} bytes at {gpa:#x}) is not inside one e820 RAM entry")
            }
            Self::UnsupportedProtocol(v) => {
                write!(f, "Linux boot protocol {}.{:02} is too old (2.06 or newer needed)", v >> 8, v & 0xff)
            }
            Self::BadSetupHeader(why) => write!(f, "bad Linux setup header: {why}"),
            Self::CmdlineTooLong { len, max } => {
                write!(f, "command line is {len} bytes, at most {max} are accepted")
            }
            Self::CmdlineHasNul => write!(f, "command line or module string contains a NUL byte"),
            Self::InitrdDoesNotFit { size } => {
                write!(f, "initrd of {size:#x} bytes does not fit in RAM below initrd_addr_max and above the kernel")
            }
            Self::TooManyE820Entries { count, max } => {
                write!(f, "e820 map has {count} entries, boot_params holds at most {max}")
            }
            Self::BadChecksum => write!(f, "Multiboot header checksum is wrong"),
            Self::BadMultibootHeader(why) => write!(f, "bad Multiboot header: {why}"),
            Self::UnsupportedFlags(bits) => {
                write!(f, "Multiboot header requires unsupported features (flag bits {bits:#x})")
            }
            Self::BadElf(why) => write!(f, "bad ELF image: {why}"),
            Self::TooManySegments { max } => write!(f, "more than {max} loadable ELF segments"),
            Self::Overlap { first, second } => {
                write!(f, "loaded ranges at {first:#x} and {second:#x} overlap")
            }
            Self::BelowMinimum { gpa, min } => {
                write!(f, "segment at {gpa:#x} lies below the lowest load address {min:#x}")
            }
            Self::EntryOutsideImage { entry } => {
                write!(f, "entry point {entry:#x} is outside the loaded executable image")
            }
            Self::Overflow(what) => write!(f, "address arithmetic overflows: {what}"),
            Self::OutOfRange { gpa, len } => {
                write!(f, "guest memory access of {len:#x} bytes at {gpa:#x} is outside guest RAM")
            }
        }
    }
}

// ---- helpers shared by the loaders ----

/// The `N` bytes at `offset`, or `Truncated` naming `what`.
fn bytes_at<const N: usize>(image: &[u8], offset: usize, what: &'static str) -> Result<[u8; N], LoadError> {
    let end = offset.checked_add(N).ok_or(LoadError::Overflow(what))?;
    image.get(offset..end).and_then(|s| <[u8; N]>::try_from(s).ok()).ok_or(LoadError::Truncated {
        what,
        needed: end as u64,
        len: image.len() as u64,
    })
}

fn read_u8(image: &[u8], offset: usize, what: &'static str) -> Result<u8, LoadError> {
    bytes_at::<1>(image, offset, what).map(|b| b[0])
}

fn read_u16(image: &[u8], offset: usize, what: &'static str) -> Result<u16, LoadError> {
    bytes_at(image, offset, what).map(u16::from_le_bytes)
}

fn read_u32(image: &[u8], offset: usize, what: &'static str) -> Result<u32, LoadError> {
    bytes_at(image, offset, what).map(u32::from_le_bytes)
}

fn read_u64(image: &[u8], offset: usize, what: &'static str) -> Result<u64, LoadError> {
    bytes_at(image, offset, what).map(u64::from_le_bytes)
}

/// Stores `bytes` at `offset` of a local buffer; the caller's offsets are constants
/// inside the buffer, a miss is ignored rather than a panic.
fn put(buf: &mut [u8], offset: usize, bytes: &[u8]) {
    if let Some(dst) = offset.checked_add(bytes.len()).and_then(|end| buf.get_mut(offset..end)) {
        dst.copy_from_slice(bytes);
    }
}

/// `value` rounded up to a multiple of `align` (a power of two).
fn align_up(value: u64, align: u64, what: &'static str) -> Result<u64, LoadError> {
    let mask = align.wrapping_sub(1);
    value.checked_add(mask).map(|v| v & !mask).ok_or(LoadError::Overflow(what))
}

/// `value` rounded down to a multiple of `align` (a power of two).
fn align_down(value: u64, align: u64) -> u64 {
    value & !align.wrapping_sub(1)
}

/// `gpa + len`, or `Overflow`.
fn end_of(gpa: u64, len: u64, what: &'static str) -> Result<u64, LoadError> {
    gpa.checked_add(len).ok_or(LoadError::Overflow(what))
}

/// Checks that `len` bytes at `gpa` end at or below `limit`.
fn check_fits(what: &'static str, gpa: u64, len: u64, limit: u64) -> Result<u64, LoadError> {
    let end = end_of(gpa, len, what)?;
    if end > limit {
        return Err(LoadError::DoesNotFit { what, gpa, len, limit });
    }
    Ok(end)
}

/// The RAM entries of `e820` as ranges clipped to guest RAM; a map without entries
/// stands for all of guest RAM.
fn ram_ranges<'a>(e820: &'a [E820Entry], mem_size: u64) -> impl Iterator<Item = Region> + 'a {
    let whole = e820.is_empty().then_some(Region { start: 0, end: mem_size });
    let entries = e820
        .iter()
        .filter(|e| e.kind == E820_RAM)
        .map(move |e| Region { start: e.addr.min(mem_size), end: e.addr.saturating_add(e.size).min(mem_size) });
    whole.into_iter().chain(entries).filter(|r| r.start < r.end)
}

/// Checks that `start..end` lies inside one RAM entry of `e820` (any range passes an
/// empty map; the caller checks guest RAM's own bounds).
fn check_in_ram(what: &'static str, e820: &[E820Entry], start: u64, end: u64) -> Result<(), LoadError> {
    if e820.is_empty() || ram_ranges(e820, u64::MAX).any(|r| r.start <= start && end <= r.end) {
        Ok(())
    } else {
        Err(LoadError::NotInRam { what, gpa: start, len: end.saturating_sub(start) })
    }
}

/// Rejects strings the guest reads as NUL-terminated C strings if they hold a NUL.
fn check_c_string(s: &str) -> Result<(), LoadError> {
    if s.as_bytes().contains(&0) {
        Err(LoadError::CmdlineHasNul)
    } else {
        Ok(())
    }
}

/// Writes `s` and a terminating NUL at `gpa`.
fn write_c_string(mem: &mut impl GuestMemory, gpa: u64, s: &str) -> Result<(), LoadError> {
    mem.write(gpa, s.as_bytes())?;
    mem.write(end_of(gpa, s.len() as u64, "string end")?, &[0])
}
