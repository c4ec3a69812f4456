//! Test guest memories and builders of synthetic images, shared by the test files.
#![allow(dead_code)]

use hv_loader::{E820Entry, GuestMemory, LoadError, E820_RAM, E820_RESERVED};
use std::collections::BTreeMap;

pub const MIB: u64 = 1 << 20;

/// Guest RAM in a `Vec<u8>`. Every access must be inside it: an out-of-range access is a
/// loader bug (loaders check placements before writing), so it panics.
pub struct VecMemory {
    pub bytes: Vec<u8>,
    /// Every write and zero, as `(gpa, len)`.
    pub writes: Vec<(u64, u64)>,
}

impl VecMemory {
    pub fn new(size: u64) -> Self {
        Self { bytes: vec![0; size as usize], writes: Vec::new() }
    }

    /// Guest RAM pre-filled with `fill`, to see what a loader zeroes.
    pub fn filled(size: u64, fill: u8) -> Self {
        Self { bytes: vec![fill; size as usize], writes: Vec::new() }
    }

    pub fn slice(&self, gpa: u64, len: usize) -> &[u8] {
        &self.bytes[gpa as usize..gpa as usize + len]
    }

    pub fn u8(&self, gpa: u64) -> u8 {
        self.bytes[gpa as usize]
    }

    pub fn u16(&self, gpa: u64) -> u16 {
        u16::from_le_bytes(self.slice(gpa, 2).try_into().unwrap())
    }

    pub fn u32(&self, gpa: u64) -> u32 {
        u32::from_le_bytes(self.slice(gpa, 4).try_into().unwrap())
    }

    pub fn u64(&self, gpa: u64) -> u64 {
        u64::from_le_bytes(self.slice(gpa, 8).try_into().unwrap())
    }

    /// The NUL-terminated string at `gpa`.
    pub fn c_str(&self, gpa: u64) -> &str {
        let tail = &self.bytes[gpa as usize..];
        let len = tail.iter().position(|&b| b == 0).expect("string without NUL");
        std::str::from_utf8(&tail[..len]).unwrap()
    }

    fn check(&mut self, gpa: u64, len: u64) {
        let end = gpa.checked_add(len).expect("guest access wraps around");
        assert!(end <= self.bytes.len() as u64, "guest access {len:#x} bytes at {gpa:#x} is outside RAM");
        self.writes.push((gpa, len));
    }
}

impl GuestMemory for VecMemory {
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn write(&mut self, gpa: u64, bytes: &[u8]) -> Result<(), LoadError> {
        self.check(gpa, bytes.len() as u64);
        self.bytes[gpa as usize..gpa as usize + bytes.len()].copy_from_slice(bytes);
        Ok(())
    }

    fn zero(&mut self, gpa: u64, len: u64) -> Result<(), LoadError> {
        self.check(gpa, len);
        self.bytes[gpa as usize..(gpa + len) as usize].fill(0);
        Ok(())
    }
}

/// Guest RAM too large for a `Vec` (above 4 GiB): the written bytes are kept per write.
pub struct SparseMemory {
    pub size: u64,
    pub writes: BTreeMap<u64, Vec<u8>>,
}

impl SparseMemory {
    pub fn new(size: u64) -> Self {
        Self { size, writes: BTreeMap::new() }
    }

    /// The byte at `gpa` (from the last write covering it), 0 if never written.
    pub fn u8(&self, gpa: u64) -> u8 {
        self.writes
            .range(..=gpa)
            .rev()
            .find(|(start, bytes)| gpa < *start + bytes.len() as u64)
            .map_or(0, |(start, bytes)| bytes[(gpa - start) as usize])
    }

    pub fn u32(&self, gpa: u64) -> u32 {
        u32::from_le_bytes([self.u8(gpa), self.u8(gpa + 1), self.u8(gpa + 2), self.u8(gpa + 3)])
    }
}

impl GuestMemory for SparseMemory {
    fn size(&self) -> u64 {
        self.size
    }

    fn write(&mut self, gpa: u64, bytes: &[u8]) -> Result<(), LoadError> {
        let end = gpa.checked_add(bytes.len() as u64).expect("guest access wraps around");
        assert!(end <= self.size, "guest access outside RAM");
        self.writes.insert(gpa, bytes.to_vec());
        Ok(())
    }

    fn zero(&mut self, gpa: u64, len: u64) -> Result<(), LoadError> {
        self.write(gpa, &vec![0; len as usize])
    }
}

/// The e820 map of a PC with `size` bytes of RAM: low RAM, the legacy hole, RAM from
/// 1 MiB.
pub fn pc_e820(size: u64) -> Vec<E820Entry> {
    vec![
        E820Entry { addr: 0, size: 0x9_fc00, kind: E820_RAM },
        E820Entry { addr: 0x9_fc00, size: 0x400, kind: E820_RESERVED },
        E820Entry { addr: 0xf_0000, size: 0x1_0000, kind: E820_RESERVED },
        E820Entry { addr: MIB, size: size - MIB, kind: E820_RAM },
    ]
}

pub fn set_u8(image: &mut [u8], offset: usize, value: u8) {
    image[offset] = value;
}

pub fn set_u16(image: &mut [u8], offset: usize, value: u16) {
    image[offset..offset + 2].copy_from_slice(&value.to_le_bytes());
}

pub fn set_u32(image: &mut [u8], offset: usize, value: u32) {
    image[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
}

pub fn set_u64(image: &mut [u8], offset: usize, value: u64) {
    image[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
}

/// A recognisable byte pattern.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1).collect()
}

// ---- Linux bzImage ----

/// A synthetic bzImage: `setup_sects` setup sectors after the boot sector, then a
/// `kernel_len`-byte protected-mode kernel of [`pattern`] bytes. The setup header looks
/// like a modern x86-64 kernel's (protocol `version`, relocatable, 2 MiB alignment,
/// `pref_address` 16 MiB, `init_size` 4 MiB, `cmdline_size` 2047, `initrd_addr_max`
/// 0x7fffffff), ending at 0x26C.
pub fn bzimage(version: u16, setup_sects: u8, kernel_len: usize) -> Vec<u8> {
    let sects = if setup_sects == 0 { 4 } else { usize::from(setup_sects) };
    let kernel_offset = (sects + 1) * 512;
    let mut image = vec![0u8; kernel_offset + kernel_len];
    for (i, b) in image[..0x1f1].iter_mut().enumerate() {
        *b = (i % 251) as u8; // boot sector noise, never copied
    }
    set_u8(&mut image, 0x1f1, setup_sects);
    set_u16(&mut image, 0x1f2, 1); // root_flags
    set_u32(&mut image, 0x1f4, (kernel_len / 16) as u32); // syssize
    set_u16(&mut image, 0x1fa, 0xffff); // vid_mode
    set_u16(&mut image, 0x1fe, 0xaa55);
    set_u8(&mut image, 0x200, 0xeb);
    set_u8(&mut image, 0x201, (0x26c - 0x202) as u8);
    image[0x202..0x206].copy_from_slice(b"HdrS");
    set_u16(&mut image, 0x206, version);
    set_u16(&mut image, 0x20e, 0x3c0); // kernel_version
    set_u8(&mut image, 0x211, 0x01); // loadflags: LOADED_HIGH
    set_u32(&mut image, 0x214, 0x10_0000); // code32_start
    set_u32(&mut image, 0x22c, 0x7fff_ffff); // initrd_addr_max
    set_u32(&mut image, 0x230, 0x20_0000); // kernel_alignment
    set_u8(&mut image, 0x234, 1); // relocatable_kernel
    set_u8(&mut image, 0x235, 21); // min_alignment
    set_u16(&mut image, 0x236, 0x01); // xloadflags: XLF_KERNEL_64 (not above 4 GiB)
    set_u32(&mut image, 0x238, 2047); // cmdline_size
    set_u32(&mut image, 0x248, 0x1234); // payload_offset
    set_u32(&mut image, 0x24c, 0x5678); // payload_length
    set_u64(&mut image, 0x258, 0x100_0000); // pref_address
    set_u32(&mut image, 0x260, 0x40_0000); // init_size
    set_u32(&mut image, 0x264, 0x190); // handover_offset
    set_u32(&mut image, 0x268, 0); // kernel_info_offset
                                   // Bytes after the header (the setup code) must not be copied.
    for b in &mut image[0x26c..kernel_offset] {
        *b = 0xcc;
    }
    image[kernel_offset..].copy_from_slice(&pattern(kernel_len, 7));
    image
}

/// Offset of the protected-mode kernel in a [`bzimage`].
pub fn kernel_offset(image: &[u8]) -> usize {
    let sects = match image[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    (sects + 1) * 512
}

// ---- ELF ----

/// One program header of an [`ElfSpec`].
#[derive(Clone, Debug)]
pub struct Seg {
    pub p_type: u32,
    pub flags: u32,
    pub vaddr: u64,
    pub paddr: u64,
    pub data: Vec<u8>,
    pub memsz: u64,
    /// File offset override (else the data is appended after the previous segment).
    pub offset: Option<u64>,
    /// `p_filesz` override.
    pub filesz: Option<u64>,
}

pub const PT_LOAD: u32 = 1;
pub const PT_NOTE: u32 = 4;
pub const PF_X: u32 = 1;
pub const PF_W: u32 = 2;
pub const PF_R: u32 = 4;

impl Seg {
    /// A `PT_LOAD` at `paddr == vaddr` with `data` and `bss` zero bytes after it.
    pub fn load(paddr: u64, flags: u32, data: Vec<u8>, bss: u64) -> Self {
        let memsz = data.len() as u64 + bss;
        Self { p_type: PT_LOAD, flags, vaddr: paddr, paddr, data, memsz, offset: None, filesz: None }
    }
}

/// An ELF executable to build.
#[derive(Clone, Debug)]
pub struct ElfSpec {
    pub class64: bool,
    pub machine: u16,
    pub e_type: u16,
    pub entry: u64,
    pub segments: Vec<Seg>,
    /// Bytes placed right after the program header table, before any segment data.
    pub prefix: Vec<u8>,
}

impl ElfSpec {
    pub fn elf64(entry: u64, segments: Vec<Seg>) -> Self {
        Self { class64: true, machine: 62, e_type: 2, entry, segments, prefix: Vec::new() }
    }

    pub fn elf32(entry: u64, segments: Vec<Seg>) -> Self {
        Self { class64: false, machine: 3, e_type: 2, entry, segments, prefix: Vec::new() }
    }

    pub fn ehdr_size(&self) -> usize {
        if self.class64 {
            64
        } else {
            52
        }
    }

    pub fn phdr_size(&self) -> usize {
        if self.class64 {
            56
        } else {
            32
        }
    }

    /// The file offset of the first byte after the program header table (where
    /// [`ElfSpec::prefix`] starts).
    pub fn data_start(&self) -> usize {
        self.ehdr_size() + self.phdr_size() * self.segments.len()
    }

    pub fn build(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.data_start()];
        out.extend_from_slice(&self.prefix);
        let mut offsets = Vec::new();
        for s in &self.segments {
            // Keep the customary congruence of offset and address modulo the page size.
            while (out.len() as u64) % 0x1000 != s.paddr % 0x1000 && !s.data.is_empty() {
                out.push(0);
            }
            offsets.push(s.offset.unwrap_or(out.len() as u64));
            out.extend_from_slice(&s.data);
        }
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = if self.class64 { 2 } else { 1 };
        out[5] = 1; // little-endian
        out[6] = 1; // EV_CURRENT
        let phoff = self.ehdr_size();
        set_u16(&mut out, 16, self.e_type);
        set_u16(&mut out, 18, self.machine);
        set_u32(&mut out, 20, 1);
        if self.class64 {
            set_u64(&mut out, 24, self.entry);
            set_u64(&mut out, 32, phoff as u64);
            set_u64(&mut out, 40, 0); // no section headers
            set_u16(&mut out, 52, 64);
            set_u16(&mut out, 54, 56);
            set_u16(&mut out, 56, self.segments.len() as u16);
            set_u16(&mut out, 58, 64);
        } else {
            set_u32(&mut out, 24, self.entry as u32);
            set_u32(&mut out, 28, phoff as u32);
            set_u32(&mut out, 32, 0);
            set_u16(&mut out, 40, 52);
            set_u16(&mut out, 42, 32);
            set_u16(&mut out, 44, self.segments.len() as u16);
            set_u16(&mut out, 46, 40);
        }
        for (i, (s, offset)) in self.segments.iter().zip(offsets).enumerate() {
            let at = phoff + i * self.phdr_size();
            let filesz = s.filesz.unwrap_or(s.data.len() as u64);
            if self.class64 {
                set_u32(&mut out, at, s.p_type);
                set_u32(&mut out, at + 4, s.flags);
                set_u64(&mut out, at + 8, offset);
                set_u64(&mut out, at + 16, s.vaddr);
                set_u64(&mut out, at + 24, s.paddr);
                set_u64(&mut out, at + 32, filesz);
                set_u64(&mut out, at + 40, s.memsz);
                set_u64(&mut out, at + 48, 0x1000);
            } else {
                set_u32(&mut out, at, s.p_type);
                set_u32(&mut out, at + 4, offset as u32);
                set_u32(&mut out, at + 8, s.vaddr as u32);
                set_u32(&mut out, at + 12, s.paddr as u32);
                set_u32(&mut out, at + 16, filesz as u32);
                set_u32(&mut out, at + 20, s.memsz as u32);
                set_u32(&mut out, at + 24, s.flags);
                set_u32(&mut out, at + 28, 0x1000);
            }
        }
        out
    }
}

// ---- Multiboot ----

/// A Multiboot header with `flags` and, when given, the five address fields.
pub fn mb_header(flags: u32, address: Option<[u32; 5]>) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&0x1bad_b002u32.to_le_bytes());
    h.extend_from_slice(&flags.to_le_bytes());
    h.extend_from_slice(&0u32.wrapping_sub(0x1bad_b002).wrapping_sub(flags).to_le_bytes());
    if let Some(fields) = address {
        for f in fields {
            h.extend_from_slice(&f.to_le_bytes());
        }
    }
    h
}

/// A Multiboot ELF32 kernel like a small real one: text (with the header at its start)
/// at 1 MiB, data at 1 MiB + 0x3000 with 0x2345 bytes of bss; entry 16 bytes into the
/// text.
pub fn mb_elf32(flags: u32) -> ElfSpec {
    let mut text = mb_header(flags, None);
    text.extend_from_slice(&pattern(0x2000 - text.len(), 3));
    ElfSpec::elf32(
        0x10_0010,
        vec![Seg::load(0x10_0000, PF_R | PF_X, text, 0), Seg::load(0x10_3000, PF_R | PF_W, pattern(0x800, 9), 0x2345)],
    )
}

/// Where the [`mb_aout`] header sits in the file.
pub const AOUT_HEADER_OFFSET: usize = 0x40;
/// [`mb_aout`]'s load address.
pub const AOUT_LOAD_ADDR: u32 = 0x20_0000;

/// A flat Multiboot kernel (flag 16): 0x3000 bytes of text loaded from file offset 0 at
/// 2 MiB, the header at file offset 0x40, `bss` bytes of bss, entry 0x100 into the text,
/// followed by 0x500 bytes of trailing junk in the file that must not be loaded.
pub fn mb_aout(flags: u32, bss: u32) -> Vec<u8> {
    let load_end = AOUT_LOAD_ADDR + 0x3000;
    let fields = [
        AOUT_LOAD_ADDR + AOUT_HEADER_OFFSET as u32,
        AOUT_LOAD_ADDR,
        load_end,
        if bss == 0 { 0 } else { load_end + bss },
        AOUT_LOAD_ADDR + 0x100,
    ];
    let mut image = pattern(0x3500, 5);
    let header = mb_header(flags | (1 << 16), Some(fields));
    image[AOUT_HEADER_OFFSET..AOUT_HEADER_OFFSET + header.len()].copy_from_slice(&header);
    image
}
