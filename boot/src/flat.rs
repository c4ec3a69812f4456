//! Flattening ELF64 partition images on the build host.
//!
//! The hypervisor does not parse ELF: for a partition it loads itself, `boot/` turns the
//! ELF executable into one flat byte range (the PT_LOAD segments at their physical
//! addresses, gaps and `.bss` zero-filled) plus the load address and entry point, which
//! go into `hypervisor.conf`. Images that are not ELF are passed through unchanged (the
//! service partition loads those).

use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
use object::Endianness;

/// A flattened image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlatImage {
    /// Guest-physical address of `bytes[0]`.
    pub load: u64,
    /// Guest-physical entry point.
    pub entry: u64,
    pub bytes: Vec<u8>,
}

/// Why an ELF image cannot be flattened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlatError {
    Malformed(String),
    NoLoadableSegment,
    /// A segment starts below the lowest allowed address (`hv_abi::start::MIN_LOAD_ADDRESS`
    /// for 64-bit starts: the hypervisor puts the boot page tables, GDT and stack there).
    BelowMinimum {
        address: u64,
        minimum: u64,
    },
    EntryOutside {
        entry: u64,
    },
    /// The image does not fit the partition's RAM.
    TooLarge {
        end: u64,
        ram: u64,
    },
}

impl std::fmt::Display for FlatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FlatError::Malformed(m) => write!(f, "not a valid ELF64 executable: {m}"),
            FlatError::NoLoadableSegment => write!(f, "the ELF file has no PT_LOAD segment"),
            FlatError::BelowMinimum { address, minimum } => write!(
                f,
                "a segment is linked at {address:#x}, below {minimum:#x} (reserved for the boot structures and stack); link the image higher"
            ),
            FlatError::EntryOutside { entry } => write!(f, "the entry point {entry:#x} is outside the loaded segments"),
            FlatError::TooLarge { end, ram } => {
                write!(f, "the image ends at {end:#x}, beyond the partition's {} MiB of RAM; raise memory_mib", ram >> 20)
            }
        }
    }
}

/// Whether `data` starts like an ELF file.
#[must_use]
pub fn is_elf(data: &[u8]) -> bool {
    data.starts_with(b"\x7fELF")
}

/// Flattens an ELF64 executable for a partition with `ram` bytes of RAM that starts in
/// 64-bit mode (its image must stay clear of the boot structures below 2 MiB).
pub fn flatten(data: &[u8], ram: u64) -> Result<FlatImage, FlatError> {
    flatten_above(data, ram, hv_abi::start::MIN_LOAD_ADDRESS)
}

/// Lowest load address of a real-mode image: page 0 holds the real-mode IVT.
pub const REAL_MODE_MIN_LOAD: u64 = 0x1000;

/// Like [`flatten`] with another lowest load address (real-mode images build their own
/// boot structures and may start at [`REAL_MODE_MIN_LOAD`]).
pub fn flatten_above(data: &[u8], ram: u64, min_load: u64) -> Result<FlatImage, FlatError> {
    let file = ElfFile64::<Endianness>::parse(data).map_err(|e| FlatError::Malformed(e.to_string()))?;
    let endian = file.endian();
    let mut segments = Vec::new();
    for ph in file.elf_program_headers() {
        if ph.p_type(endian) != object::elf::PT_LOAD || ph.p_memsz(endian) == 0 {
            continue;
        }
        let bytes = ph.data(endian, data).map_err(|()| FlatError::Malformed("segment data out of bounds".into()))?;
        if ph.p_filesz(endian) > ph.p_memsz(endian) {
            return Err(FlatError::Malformed("segment file size exceeds memory size".into()));
        }
        segments.push((ph.p_paddr(endian), ph.p_memsz(endian), bytes));
    }
    let load = segments.iter().map(|s| s.0).min().ok_or(FlatError::NoLoadableSegment)?;
    if load < min_load {
        return Err(FlatError::BelowMinimum { address: load, minimum: min_load });
    }
    let end = segments
        .iter()
        .map(|s| s.0.checked_add(s.1))
        .try_fold(0u64, |acc, e| e.map(|e| acc.max(e)))
        .ok_or_else(|| FlatError::Malformed("segment address overflows".into()))?;
    if end > ram {
        return Err(FlatError::TooLarge { end, ram });
    }
    let entry = file.elf_header().e_entry(endian);
    if !(load..end).contains(&entry) {
        return Err(FlatError::EntryOutside { entry });
    }
    let mut bytes = vec![0u8; (end - load) as usize];
    for (addr, _, data) in segments {
        let at = (addr - load) as usize;
        bytes[at..at + data.len()].copy_from_slice(data);
    }
    Ok(FlatImage { load, entry, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 executable with the given segments (paddr, file bytes, memsz).
    fn elf(entry: u64, segments: &[(u64, &[u8], u64)]) -> Vec<u8> {
        let phoff = 64u64;
        let data_start = phoff + 56 * segments.len() as u64;
        let mut out = vec![0u8; data_start as usize];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = 2; // 64-bit
        out[5] = 1; // little-endian
        out[6] = 1; // version
        out[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        out[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        out[20..24].copy_from_slice(&1u32.to_le_bytes());
        out[24..32].copy_from_slice(&entry.to_le_bytes());
        out[32..40].copy_from_slice(&phoff.to_le_bytes());
        out[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
        out[54..56].copy_from_slice(&56u16.to_le_bytes()); // phentsize
        out[56..58].copy_from_slice(&(segments.len() as u16).to_le_bytes());
        let mut offset = data_start;
        for (i, (paddr, bytes, memsz)) in segments.iter().enumerate() {
            let ph = (phoff as usize) + i * 56;
            out[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
            out[ph + 8..ph + 16].copy_from_slice(&offset.to_le_bytes());
            out[ph + 16..ph + 24].copy_from_slice(&paddr.to_le_bytes());
            out[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
            out[ph + 32..ph + 40].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
            out[ph + 40..ph + 48].copy_from_slice(&memsz.to_le_bytes());
            offset += bytes.len() as u64;
        }
        for (_, bytes, _) in segments {
            out.extend_from_slice(bytes);
        }
        out
    }

    #[test]
    fn flattens_segments_with_gaps_and_bss() {
        let image = elf(0x20_0000, &[(0x20_0000, b"code", 4), (0x20_1000, b"data", 0x10)]);
        let flat = flatten(&image, 16 << 20).unwrap();
        assert_eq!((flat.load, flat.entry), (0x20_0000, 0x20_0000));
        assert_eq!(flat.bytes.len(), 0x1010);
        assert_eq!(&flat.bytes[..4], b"code");
        assert!(flat.bytes[4..0x1000].iter().all(|&b| b == 0));
        assert_eq!(&flat.bytes[0x1000..0x1004], b"data");
        assert!(flat.bytes[0x1004..].iter().all(|&b| b == 0));
    }

    #[test]
    fn rejects_bad_images() {
        assert!(matches!(flatten(b"\x7fELFjunk", 1 << 20), Err(FlatError::Malformed(_))));
        assert_eq!(
            flatten(&elf(0x1000, &[(0x1000, b"x", 1)]), 16 << 20),
            Err(FlatError::BelowMinimum { address: 0x1000, minimum: 0x20_0000 })
        );
        assert_eq!(
            flatten(&elf(0x30_0000, &[(0x20_0000, b"x", 1)]), 16 << 20),
            Err(FlatError::EntryOutside { entry: 0x30_0000 })
        );
        assert_eq!(
            flatten(&elf(0x20_0000, &[(0x20_0000, b"x", 0x100_0000)]), 16 << 20),
            Err(FlatError::TooLarge { end: 0x120_0000, ram: 16 << 20 })
        );
        assert_eq!(flatten(&elf(0x20_0000, &[]), 16 << 20), Err(FlatError::NoLoadableSegment));
    }

    #[test]
    fn truncated_files_never_panic() {
        let image = elf(0x20_0000, &[(0x20_0000, b"code", 4)]);
        for len in 0..image.len() {
            let _ = flatten(&image[..len], 16 << 20);
        }
    }
}
