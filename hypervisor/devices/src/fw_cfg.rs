//! QEMU's firmware configuration device (`fw_cfg`), its traditional I/O-port interface
//! on x86, written from QEMU's `docs/specs/fw_cfg.rst` ("Guest-side Hardware
//! Interface"): a 16-bit selector register at port 0x510 and an 8-bit data register at
//! port 0x511.
//!
//! - **Selector** (0x510, write only, 16 bits, little-endian): a write selects an item
//!   and sets the data offset to 0. Bit 15 selects the architecture-specific item space
//!   (none exists here: every such item reads as empty); bit 14 asked for write access
//!   in old QEMU versions and is ignored, as writes are (so 0x4000 selects the same item
//!   as 0x0000, as in QEMU). Only a 16-bit write at 0x510 selects; a 4-byte write at
//!   0x510 selects with its low 16 bits (the ISA bus would split it into two 16-bit
//!   cycles, the second of which, at 0x512, nothing decodes). A 1-byte write at 0x510
//!   is half a selector and is ignored. Reads of 0x510 return open bus.
//! - **Data** (0x511, 8 bits): each read returns the next byte of the selected item and
//!   advances the offset; past the end of the item (and for unknown selectors) reads
//!   return 0, as the specification says. A wider read is split into byte lanes (the
//!   crate's convention for 8-bit devices): lane 0 reads the data register, the lanes
//!   at 0x512 and above read 0xFF. Writes are ignored (QEMU ignores data-port writes
//!   since v2.4).
//! - **Items**: `FW_CFG_SIGNATURE` (0x0000) = `"QEMU"`; `FW_CFG_ID` (0x0001) = 1 as a
//!   32-bit little-endian value (bit 0: the traditional interface; bit 1, the DMA
//!   interface at 0x514, is clear: there is none); `FW_CFG_RAM_SIZE` (0x0003) = RAM in
//!   bytes, 64-bit little-endian; `FW_CFG_NB_CPUS` (0x0005) and `FW_CFG_MAX_CPUS`
//!   (0x000F), 16-bit little-endian. There is no file directory (0x0019 reads as
//!   empty: a count of 0).

use crate::{open_bus, read_bytewise, Nanos, Platform, PortIo};

/// The selector port.
pub const SELECTOR_PORT: u16 = 0x510;
/// The data port.
pub const DATA_PORT: u16 = 0x511;

/// Item keys (QEMU's `FW_CFG_*` names).
pub mod key {
    /// `"QEMU"`.
    pub const SIGNATURE: u16 = 0x0000;
    /// The feature bitmap (32-bit LE): bit 0 traditional interface, bit 1 DMA.
    pub const ID: u16 = 0x0001;
    /// RAM size in bytes (64-bit LE).
    pub const RAM_SIZE: u16 = 0x0003;
    /// Number of CPUs present at start (16-bit LE).
    pub const NB_CPUS: u16 = 0x0005;
    /// Largest number of CPUs (16-bit LE).
    pub const MAX_CPUS: u16 = 0x000F;
    /// Selector bit 14: the write channel (ignored).
    pub const WRITE_CHANNEL: u16 = 0x4000;
    /// Selector bit 15: architecture-specific items.
    pub const ARCH_LOCAL: u16 = 0x8000;
}

/// The signature item's bytes.
pub const SIGNATURE: [u8; 4] = *b"QEMU";
/// `FW_CFG_ID`: the traditional interface only.
pub const ID_TRADITIONAL: u32 = 1 << 0;

/// The fw_cfg device: the selected item, the offset in it, and the values the items
/// are made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FwCfg {
    selector: u16,
    offset: u32,
    ram_bytes: u64,
    nb_cpus: u16,
    max_cpus: u16,
}

impl FwCfg {
    /// A device telling the guest it has `ram_bytes` of RAM and `nb_cpus` CPUs of at
    /// most `max_cpus`; item 0 (the signature) selected.
    #[must_use]
    pub const fn new(ram_bytes: u64, nb_cpus: u16, max_cpus: u16) -> Self {
        Self { selector: key::SIGNATURE, offset: 0, ram_bytes, nb_cpus, max_cpus }
    }

    /// The selector last written.
    #[must_use]
    pub const fn selector(&self) -> u16 {
        self.selector
    }

    /// Byte `offset` of the item `selector` names, or `None` past its end (unknown
    /// items are empty).
    #[must_use]
    pub fn item_byte(&self, selector: u16, offset: u32) -> Option<u8> {
        let offset = usize::try_from(offset).ok()?;
        if selector & key::ARCH_LOCAL != 0 {
            return None;
        }
        let at = |bytes: &[u8]| bytes.get(offset).copied();
        match selector & !key::WRITE_CHANNEL {
            key::SIGNATURE => at(&SIGNATURE),
            key::ID => at(&ID_TRADITIONAL.to_le_bytes()),
            key::RAM_SIZE => at(&self.ram_bytes.to_le_bytes()),
            key::NB_CPUS => at(&self.nb_cpus.to_le_bytes()),
            key::MAX_CPUS => at(&self.max_cpus.to_le_bytes()),
            _ => None,
        }
    }

    /// The data register: the next byte of the selected item (0 past its end).
    fn next_byte(&mut self) -> u8 {
        let byte = self.item_byte(self.selector, self.offset).unwrap_or(0);
        self.offset = self.offset.saturating_add(1);
        byte
    }
}

impl PortIo for FwCfg {
    fn read(&mut self, port: u16, size: u8, _now: Nanos, _platform: &mut dyn Platform) -> u32 {
        if !matches!(size, 1 | 2 | 4) {
            return open_bus(size);
        }
        read_bytewise(port, size, |p| (p == DATA_PORT).then(|| self.next_byte()))
    }

    fn write(&mut self, port: u16, size: u8, value: u32, _now: Nanos, _platform: &mut dyn Platform) {
        if port == SELECTOR_PORT && matches!(size, 2 | 4) {
            self.selector = value as u16;
            self.offset = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::RecordingPlatform;
    use proptest::prelude::*;
    use std::vec::Vec;

    fn select(dev: &mut FwCfg, selector: u16) {
        dev.write(SELECTOR_PORT, 2, u32::from(selector), 0, &mut RecordingPlatform::default());
    }

    fn read_item(dev: &mut FwCfg, selector: u16, len: usize) -> Vec<u8> {
        select(dev, selector);
        (0..len).map(|_| dev.read(DATA_PORT, 1, 0, &mut RecordingPlatform::default()) as u8).collect()
    }

    #[test]
    fn the_items_read_back_little_endian() {
        let mut dev = FwCfg::new(0x1_2345_6789, 3, 8);
        assert_eq!(read_item(&mut dev, key::SIGNATURE, 4), b"QEMU");
        assert_eq!(read_item(&mut dev, key::ID, 4), [1, 0, 0, 0]);
        assert_eq!(read_item(&mut dev, key::RAM_SIZE, 8), 0x1_2345_6789u64.to_le_bytes());
        assert_eq!(read_item(&mut dev, key::NB_CPUS, 2), [3, 0]);
        assert_eq!(read_item(&mut dev, key::MAX_CPUS, 2), [8, 0]);
    }

    #[test]
    fn reads_past_the_end_and_of_unknown_items_return_zero() {
        let mut dev = FwCfg::new(1 << 30, 1, 1);
        assert_eq!(read_item(&mut dev, key::SIGNATURE, 8), [b'Q', b'E', b'M', b'U', 0, 0, 0, 0]);
        for unknown in [0x0002, 0x0019, 0x0020, 0x3FFF, key::ARCH_LOCAL, key::ARCH_LOCAL | 3, 0xFFFF] {
            assert_eq!(read_item(&mut dev, unknown, 16), [0; 16], "{unknown:#x}");
        }
    }

    #[test]
    fn selecting_resets_the_offset_and_bit_14_is_ignored() {
        let mut dev = FwCfg::new(0, 1, 1);
        assert_eq!(read_item(&mut dev, key::SIGNATURE, 2), b"QE");
        assert_eq!(read_item(&mut dev, key::SIGNATURE, 4), b"QEMU");
        assert_eq!(read_item(&mut dev, key::WRITE_CHANNEL | key::SIGNATURE, 4), b"QEMU");
        assert_eq!(dev.selector(), key::WRITE_CHANNEL);
    }

    #[test]
    fn other_accesses() {
        let mut dev = FwCfg::new(0, 1, 1);
        let p = &mut RecordingPlatform::default();
        // The selector is write-only.
        assert_eq!(dev.read(SELECTOR_PORT, 1, 0, p), 0xFF);
        // A byte write at the selector does not select; data writes are ignored.
        select(&mut dev, key::ID);
        dev.write(SELECTOR_PORT, 1, 0, 0, p);
        dev.write(DATA_PORT, 1, 0x55, 0, p);
        assert_eq!(dev.read(DATA_PORT, 1, 0, p), 1);
        // A 4-byte write selects with its low half.
        dev.write(SELECTOR_PORT, 4, 0xABCD_0000, 0, p);
        assert_eq!(dev.read(DATA_PORT, 1, 0, p), b'Q' as u32);
        // A 2-byte read at the data port: one data byte, then open bus at 0x512.
        assert_eq!(dev.read(DATA_PORT, 2, 0, p), 0xFF00 | b'E' as u32);
        assert_eq!(dev.read(DATA_PORT, 3, 0, p), 0xFFFF_FFFF);
        assert_eq!(dev.read(DATA_PORT, 1, 0, p), b'M' as u32);
        assert_eq!(*p, RecordingPlatform::default());
    }

    proptest! {
        #[test]
        fn never_panics(ops in proptest::collection::vec((any::<bool>(), 0x50Eu16..0x514, any::<u8>(), any::<u32>()), 0..200)) {
            let mut dev = FwCfg::new(u64::MAX, u16::MAX, u16::MAX);
            let p = &mut RecordingPlatform::default();
            for (write, port, size, value) in ops {
                if write {
                    dev.write(port, size, value, 0, p);
                } else {
                    let v = dev.read(port, size, 0, p);
                    prop_assert!(!matches!(size, 1 | 2) || v >> (8 * u32::from(size)) == 0);
                }
            }
        }
    }
}
