//! Shared by the `loader_*` fuzz targets: a small guest RAM that fails the run on any
//! access outside it (the loaders check placements before writing) and records whether
//! anything was written, and the invariants every load must keep.

#![allow(dead_code)]

use hv_loader::{E820Entry, EntryState, GuestMemory, LoadError, Loaded, E820_RAM, E820_RESERVED};

/// Guest RAM size for the fuzz runs.
pub const RAM: u64 = 8 << 20;

/// Guest RAM in a `Vec`; out-of-range accesses panic.
pub struct FuzzMemory {
    bytes: Vec<u8>,
    written: bool,
}

impl FuzzMemory {
    pub fn new() -> Self {
        Self { bytes: vec![0; RAM as usize], written: false }
    }

    fn range(&mut self, gpa: u64, len: u64) -> core::ops::Range<usize> {
        let end = gpa.checked_add(len).expect("guest access wraps around");
        assert!(end <= RAM, "guest access {len:#x} bytes at {gpa:#x} is outside RAM");
        self.written = true;
        gpa as usize..end as usize
    }
}

impl GuestMemory for FuzzMemory {
    fn size(&self) -> u64 {
        RAM
    }

    fn write(&mut self, gpa: u64, bytes: &[u8]) -> Result<(), LoadError> {
        let r = self.range(gpa, bytes.len() as u64);
        self.bytes[r].copy_from_slice(bytes);
        Ok(())
    }

    fn zero(&mut self, gpa: u64, len: u64) -> Result<(), LoadError> {
        let r = self.range(gpa, len);
        self.bytes[r].fill(0);
        Ok(())
    }
}

/// An e820 map picked by `choice`: none, a PC map of [`RAM`], or one with a hole.
pub fn e820(choice: u8) -> Vec<E820Entry> {
    let ram = |addr, size| E820Entry { addr, size, kind: E820_RAM };
    match choice % 3 {
        0 => Vec::new(),
        1 => vec![
            ram(0, 0x9_fc00),
            E820Entry { addr: 0xf_0000, size: 0x1_0000, kind: E820_RESERVED },
            ram(1 << 20, RAM - (1 << 20)),
        ],
        _ => vec![
            ram(0, 0x9_fc00),
            ram(1 << 20, 3 << 20),
            E820Entry { addr: 4 << 20, size: 1 << 20, kind: E820_RESERVED },
            ram(5 << 20, 3 << 20),
        ],
    }
}

/// A rejected image leaves RAM untouched; an accepted one starts inside RAM, inside
/// what it loaded, with its boot data apart from the kernel.
pub fn check(result: Result<Loaded, LoadError>, mem: &FuzzMemory) {
    match result {
        Err(e) => {
            assert!(!mem.written, "rejected ({e}) after writing");
            let _ = e.to_string();
        }
        Ok(loaded) => {
            let entry = match loaded.entry {
                EntryState::Protected32 { eip, .. } => u64::from(eip),
                EntryState::Long64 { rip, .. } => rip,
            };
            assert!(entry < RAM);
            assert!(loaded.kernel.start < loaded.kernel.end && loaded.kernel.end <= RAM);
            if let Some(data) = loaded.data {
                assert!(data.end <= RAM && !data.overlaps(&loaded.kernel));
            }
        }
    }
}

/// Splits `len` bytes (fewer if `data` is shorter) off the end of `data`.
pub fn split_tail(data: &[u8], len: usize) -> (&[u8], &[u8]) {
    data.split_at(data.len() - len.min(data.len()))
}
