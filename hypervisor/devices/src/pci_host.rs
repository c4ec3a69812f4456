//! The PCI host bridge's configuration access: configuration mechanism #1 (PCI Local
//! Bus Specification 3.0, §3.2.2.3.2 "Software Generation of Configuration
//! Transactions"), with one function behind it, the host bridge itself at bus 0,
//! device 0, function 0.
//!
//! - `CONFIG_ADDRESS` (port 0xCF8) is a 32-bit register and only a 32-bit access at
//!   0xCF8 reaches it; "anything other than a DWORD access to CONFIG_ADDRESS" is an
//!   ordinary I/O access (§3.2.2.3.2). Bit 31 enables configuration cycles through
//!   `CONFIG_DATA`, bits 23:16 are the bus, 15:11 the device, 10:8 the function, 7:2
//!   the register (dword) number. Bits 30:24 (reserved) and 1:0 read 0 (the spec
//!   makes 1:0 read-only 0); nothing here uses the AMD extended-register bits.
//! - `CONFIG_DATA` (ports 0xCFC-0xCFF) reaches the dword selected by
//!   `CONFIG_ADDRESS`: a 1-, 2- or 4-byte access at 0xCFC + n accesses bytes n..
//!   of the dword; the part of an access beyond 0xCFF is not configuration space.
//!   With bit 31 clear, accesses to `CONFIG_DATA` are ordinary I/O: nothing here
//!   decodes them (reads all-ones, writes ignored).
//! - A configuration read of a function that does not exist ends in a master abort,
//!   which the host bridge completes as all-ones (§6.1: the vendor ID 0xFFFF that
//!   enumeration takes for "no device"); writes to it are dropped. Here that is every
//!   bus other than 0 and every device/function of bus 0 but 0.0.
//! - The non-configuration accesses in 0xCF8-0xCFF: only port 0xCF9, the reset
//!   control register of PC chipsets, holds something; this host owns a
//!   [`ResetControl`] and forwards byte lanes at 0xCF9 to it, so the whole range
//!   0xCF8-0xCFF can be routed here. Other bytes read open bus.
//!
//! More functions plug in later: implement [`PciFunction`] for them and add them to
//! `PciHost::function` (a fixed table; no allocation in this crate), with their BARs
//! and interrupt routing.

use crate::acpi_pm::{ResetControl, RESET_CONTROL_PORT};
use crate::{open_bus, Nanos, Platform, PortIo};

pub use hv_abi::platform::pci::{CONFIG_ADDRESS_MASK, CONFIG_ADDRESS_PORT, CONFIG_DATA_PORT, CONFIG_ENABLE};

/// One PCI function's 256-byte configuration space.
pub trait PciFunction {
    /// Reads the dword at `offset` (a multiple of 4, 0x00-0xFC). Called once per
    /// `CONFIG_DATA` read, whatever its size.
    fn config_read(&mut self, offset: u8) -> u32;
    /// Writes the dword at `offset` (a multiple of 4): the bits set in `mask` (whole
    /// bytes: those the guest's access covered) take the value of the same bits of
    /// `value`; the function applies its own read-only and write-1-to-clear rules.
    fn config_write(&mut self, offset: u8, value: u32, mask: u32);
}

/// Intel.
pub const HOST_BRIDGE_VENDOR_ID: u16 = 0x8086;
/// The Intel 82441FX PMC, the i440FX host bridge (QEMU's `pc` machine).
pub const HOST_BRIDGE_DEVICE_ID: u16 = 0x1237;
/// The 82441FX revision QEMU reports.
pub const HOST_BRIDGE_REVISION: u8 = 0x02;
/// Base class 0x06 (bridge), subclass 0x00 (host bridge), programming interface 0.
pub const HOST_BRIDGE_CLASS: u32 = 0x06_0000;
/// Command bits the guest can change: I/O space (0), memory space (1), bus master
/// (2), parity error response (6), SERR# enable (8). The rest are hardwired 0.
pub const HOST_BRIDGE_COMMAND_WRITABLE: u16 = 0x0147;

/// The host bridge at 00:00.0, an Intel 82441FX (i440FX, 8086:1237).
///
/// Why the i440FX rather than Q35's MCH (8086:29C0): this platform offers
/// conventional PCI through configuration mechanism #1 only. The MCH identity tells
/// a guest there is PCI Express, an `MMCONFIG` window (`PCIEXBAR`) and an ICH9 LPC
/// bridge at 00:1F.0 holding the ACPI base — none of which exists here — while the
/// 82441FX promises nothing beyond the configuration header. Its header (§6.1,
/// type 0): IDs, revision 0x02, class 0x060000, header type 0x00 (single function,
/// so enumeration skips functions 1-7), no BARs, no capabilities, no interrupt.
/// Only the command register's [`HOST_BRIDGE_COMMAND_WRITABLE`] bits are writable;
/// the status register has no error bit set, so its write-1-to-clear bits have
/// nothing to clear. The device-specific registers 0x40-0xFF (the 82441FX's PAM,
/// SMRAM and DRAM control) read 0 and ignore writes: memory is set up by the
/// hypervisor, not by the guest through the bridge.
#[derive(Debug, Clone, Default)]
pub struct HostBridge {
    command: u16,
}

impl PciFunction for HostBridge {
    fn config_read(&mut self, offset: u8) -> u32 {
        match offset & 0xFC {
            0x00 => u32::from(HOST_BRIDGE_DEVICE_ID) << 16 | u32::from(HOST_BRIDGE_VENDOR_ID),
            // Status (upper half) 0.
            0x04 => u32::from(self.command),
            0x08 => HOST_BRIDGE_CLASS << 8 | u32::from(HOST_BRIDGE_REVISION),
            // Cache line size, latency timer, header type 0x00, BIST: all 0; the BARs,
            // CardBus CIS, subsystem IDs, expansion ROM, capabilities pointer,
            // interrupt line/pin: 0; device-specific space: 0.
            _ => 0,
        }
    }

    fn config_write(&mut self, offset: u8, value: u32, mask: u32) {
        if offset & 0xFC == 0x04 {
            let writable = mask as u16 & HOST_BRIDGE_COMMAND_WRITABLE;
            self.command = (self.command & !writable) | (value as u16 & writable);
        }
    }
}

/// The PCI host: `CONFIG_ADDRESS`/`CONFIG_DATA` at 0xCF8-0xCFF, the host bridge, and
/// the reset control register at 0xCF9 (see the module documentation).
#[derive(Debug, Clone, Default)]
pub struct PciHost {
    address: u32,
    bridge: HostBridge,
    reset: ResetControl,
}

impl PciHost {
    /// The host with configuration cycles disabled (`CONFIG_ADDRESS` = 0).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The function at `bus`/`device`/`function`, if one exists.
    fn function(&mut self, bus: u8, device: u8, function: u8) -> Option<&mut dyn PciFunction> {
        match (bus, device, function) {
            (0, 0, 0) => Some(&mut self.bridge),
            _ => None,
        }
    }

    /// The function `CONFIG_ADDRESS` selects and the register offset, or `None`
    /// when configuration cycles are disabled.
    fn target(&self) -> Option<(u8, u8, u8, u8)> {
        if self.address & CONFIG_ENABLE == 0 {
            return None;
        }
        // Bits 23:0 of CONFIG_ADDRESS are laid out as a `PCI_CONFIG` request's address.
        hv_abi::io_request::pci_config_target(u64::from(self.address & 0x00FF_FFFC))
    }

    fn config_data_read(&mut self) -> u32 {
        self.dword_read(self.target())
    }

    fn config_data_write(&mut self, value: u32, mask: u32) {
        self.dword_write(self.target(), value, mask);
    }

    /// The dword at `target` (bus, device, function, dword offset); all-ones for no
    /// target or no function (a master abort).
    fn dword_read(&mut self, target: Option<(u8, u8, u8, u8)>) -> u32 {
        match target {
            Some((bus, device, function, offset)) => {
                self.function(bus, device, function).map_or(u32::MAX, |f| f.config_read(offset))
            }
            None => u32::MAX,
        }
    }

    /// Writes the bytes of `mask` of the dword at `target`; dropped for no function.
    fn dword_write(&mut self, target: Option<(u8, u8, u8, u8)>, value: u32, mask: u32) {
        if let Some((bus, device, function, offset)) = target {
            if let Some(f) = self.function(bus, device, function) {
                f.config_write(offset, value, mask);
            }
        }
    }

    /// A configuration-space read as the hypervisor posts it
    /// (`hv_abi::io_request::kind::PCI_CONFIG`): `address` is bus << 16 | device << 11
    /// | function << 8 | register, `size` 1, 2 or 4. The same as reading `CONFIG_DATA`
    /// at 0xCFC + (register & 3) with `CONFIG_ADDRESS` selecting the register's dword:
    /// bytes beyond that dword are not configuration space and read 0xFF. `CONFIG_ADDRESS`
    /// is neither used nor changed. Other sizes and addresses above 0xFF_FFFF read
    /// all-ones.
    pub fn config_space_read(&mut self, address: u64, size: u8) -> u32 {
        let Some((target, lane)) = config_space_target(address, size) else {
            return open_bus(size);
        };
        let data = self.dword_read(Some(target));
        (0..u32::from(size)).fold(0, |value, i| {
            let byte = if lane + i < 4 { data >> (8 * (lane + i)) & 0xFF } else { 0xFF };
            value | byte << (8 * i)
        })
    }

    /// A configuration-space write as the hypervisor posts it (see
    /// [`PciHost::config_space_read`]): the bytes of `value` that fall in the register's
    /// dword are written; others, and bad sizes and addresses, are dropped.
    pub fn config_space_write(&mut self, address: u64, size: u8, value: u32) {
        let Some((target, lane)) = config_space_target(address, size) else {
            return;
        };
        let (mut data, mut mask) = (0u32, 0u32);
        for i in (0..u32::from(size)).filter(|i| lane + i < 4) {
            data |= (value >> (8 * i) & 0xFF) << (8 * (lane + i));
            mask |= 0xFF << (8 * (lane + i));
        }
        self.dword_write(Some(target), data, mask);
    }
}

/// The function, dword offset and first byte lane of a configuration-space address
/// (bus << 16 | device << 11 | function << 8 | register), if it and `size` are valid.
fn config_space_target(address: u64, size: u8) -> Option<((u8, u8, u8, u8), u32)> {
    let (bus, device, function, register) = hv_abi::io_request::pci_config_target(address)?;
    matches!(size, 1 | 2 | 4).then_some(((bus, device, function, register & 0xFC), u32::from(register & 3)))
}

/// The byte of `CONFIG_DATA` at `port`, if it is one.
fn data_lane(port: u16) -> Option<u32> {
    port.checked_sub(CONFIG_DATA_PORT).filter(|&lane| lane < 4).map(u32::from)
}

impl PortIo for PciHost {
    fn read(&mut self, port: u16, size: u8, now: Nanos, platform: &mut dyn Platform) -> u32 {
        if !matches!(size, 1 | 2 | 4) {
            return open_bus(size);
        }
        if port == CONFIG_ADDRESS_PORT && size == 4 {
            return self.address;
        }
        let ports = || (0..size).map(|lane| port.wrapping_add(lane.into()));
        let data = if ports().any(|p| data_lane(p).is_some()) { self.config_data_read() } else { u32::MAX };
        let mut value = 0;
        for (lane, p) in ports().enumerate() {
            let byte = match data_lane(p) {
                Some(data_lane) => (data >> (8 * data_lane)) as u8,
                None if p == RESET_CONTROL_PORT => self.reset.read(p, 1, now, platform) as u8,
                None => 0xFF,
            };
            value |= u32::from(byte) << (8 * lane);
        }
        value
    }

    fn write(&mut self, port: u16, size: u8, value: u32, now: Nanos, platform: &mut dyn Platform) {
        if !matches!(size, 1 | 2 | 4) {
            return;
        }
        if port == CONFIG_ADDRESS_PORT && size == 4 {
            self.address = value & CONFIG_ADDRESS_MASK;
            return;
        }
        let (mut data, mut mask) = (0u32, 0u32);
        for lane in 0..size {
            let p = port.wrapping_add(lane.into());
            let byte = value >> (8 * lane) & 0xFF;
            match data_lane(p) {
                Some(data_lane) => {
                    data |= byte << (8 * data_lane);
                    mask |= 0xFF << (8 * data_lane);
                }
                None if p == RESET_CONTROL_PORT => self.reset.write(p, 1, byte, now, platform),
                None => {}
            }
        }
        if mask != 0 {
            self.config_data_write(data, mask);
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::{PlatformRequest, RecordingPlatform};
    use proptest::prelude::*;
    use std::vec::Vec;

    fn address(bus: u8, device: u8, function: u8, offset: u8) -> u32 {
        CONFIG_ENABLE
            | u32::from(bus) << 16
            | u32::from(device) << 11
            | u32::from(function) << 8
            | u32::from(offset & 0xFC)
    }

    fn config_read(host: &mut PciHost, p: &mut RecordingPlatform, addr: u32, offset: u8, size: u8) -> u32 {
        host.write(CONFIG_ADDRESS_PORT, 4, addr | u32::from(offset & 0xFC), 0, p);
        host.read(CONFIG_DATA_PORT + u16::from(offset & 3), size, 0, p)
    }

    fn config_write(host: &mut PciHost, p: &mut RecordingPlatform, addr: u32, offset: u8, size: u8, value: u32) {
        host.write(CONFIG_ADDRESS_PORT, 4, addr | u32::from(offset & 0xFC), 0, p);
        host.write(CONFIG_DATA_PORT + u16::from(offset & 3), size, value, 0, p);
    }

    #[test]
    fn enumeration_finds_only_the_bridge() {
        let mut host = PciHost::new();
        let mut p = RecordingPlatform::default();
        let mut found = Vec::new();
        for bus in [0u8, 1, 0xFF] {
            for device in 0..32 {
                for function in 0..8 {
                    let id = config_read(&mut host, &mut p, address(bus, device, function, 0), 0, 4);
                    if id & 0xFFFF != 0xFFFF {
                        found.push((bus, device, function, id));
                    } else {
                        assert_eq!(id, 0xFFFF_FFFF);
                    }
                }
            }
        }
        assert_eq!(found, [(0, 0, 0, 0x1237_8086)]);
        let bridge = address(0, 0, 0, 0);
        // Class 0x060000, revision 2; header type 0 (single function); no BARs.
        assert_eq!(config_read(&mut host, &mut p, bridge, 0x08, 4), 0x0600_0002);
        assert_eq!(config_read(&mut host, &mut p, bridge, 0x0E, 1), 0x00);
        for bar in (0x10..=0x24).step_by(4) {
            assert_eq!(config_read(&mut host, &mut p, bridge, bar, 4), 0);
        }
        assert_eq!(config_read(&mut host, &mut p, bridge, 0xFC, 4), 0);
        assert_eq!(p, RecordingPlatform::default());
    }

    #[test]
    fn sized_accesses_at_byte_offsets() {
        let mut host = PciHost::new();
        let mut p = RecordingPlatform::default();
        let bridge = address(0, 0, 0, 0);
        assert_eq!(config_read(&mut host, &mut p, bridge, 0x00, 2), 0x8086);
        assert_eq!(config_read(&mut host, &mut p, bridge, 0x02, 2), 0x1237);
        assert_eq!(config_read(&mut host, &mut p, bridge, 0x01, 1), 0x80);
        assert_eq!(config_read(&mut host, &mut p, bridge, 0x03, 1), 0x12);
        assert_eq!(config_read(&mut host, &mut p, bridge, 0x0B, 1), 0x06);
        assert_eq!(config_read(&mut host, &mut p, bridge, 0x0A, 2), 0x0600);
        // An unaligned word at 0xCFD and a dword at 0xCFE: the part past 0xCFF is
        // not configuration space.
        assert_eq!(config_read(&mut host, &mut p, bridge, 0x01, 2), 0x3780);
        assert_eq!(config_read(&mut host, &mut p, bridge, 0x02, 4), 0xFFFF_1237);
        // The low two bits of the register number in CONFIG_ADDRESS are ignored.
        host.write(CONFIG_ADDRESS_PORT, 4, bridge | 0x0B, 0, &mut p);
        assert_eq!(host.read(CONFIG_ADDRESS_PORT, 4, 0, &mut p), bridge | 0x08);
        assert_eq!(host.read(CONFIG_DATA_PORT, 4, 0, &mut p), 0x0600_0002);
        assert_eq!(host.read(CONFIG_DATA_PORT, 3, 0, &mut p), open_bus(3));
    }

    #[test]
    fn command_register_and_read_only_fields() {
        let mut host = PciHost::new();
        let mut p = RecordingPlatform::default();
        let bridge = address(0, 0, 0, 0);
        // Everything but the command register's writable bits is read-only.
        for offset in (0..=0xFC).step_by(4) {
            config_write(&mut host, &mut p, bridge, offset, 4, 0xFFFF_FFFF);
        }
        assert_eq!(config_read(&mut host, &mut p, bridge, 0x00, 4), 0x1237_8086);
        assert_eq!(config_read(&mut host, &mut p, bridge, 0x04, 4), 0x0000_0147);
        assert_eq!(config_read(&mut host, &mut p, bridge, 0x08, 4), 0x0600_0002);
        assert_eq!(config_read(&mut host, &mut p, bridge, 0x0C, 4), 0);
        assert_eq!(config_read(&mut host, &mut p, bridge, 0x10, 4), 0);
        assert_eq!(config_read(&mut host, &mut p, bridge, 0x3C, 4), 0);
        assert_eq!(config_read(&mut host, &mut p, bridge, 0x58, 4), 0);
        // Byte writes change only their byte of the command register.
        config_write(&mut host, &mut p, bridge, 0x04, 1, 0x00);
        assert_eq!(config_read(&mut host, &mut p, bridge, 0x04, 2), 0x0100);
        config_write(&mut host, &mut p, bridge, 0x05, 1, 0x00);
        config_write(&mut host, &mut p, bridge, 0x04, 2, 0x0006);
        assert_eq!(config_read(&mut host, &mut p, bridge, 0x04, 4), 0x0006);
        // Writes to the status half (0x06) leave the command alone.
        config_write(&mut host, &mut p, bridge, 0x06, 2, 0xFFFF);
        assert_eq!(config_read(&mut host, &mut p, bridge, 0x04, 4), 0x0006);
        // Writes to absent functions go nowhere.
        config_write(&mut host, &mut p, address(0, 0, 1, 0), 0x04, 4, 0);
        config_write(&mut host, &mut p, address(1, 0, 0, 0), 0x04, 4, 0);
        assert_eq!(config_read(&mut host, &mut p, bridge, 0x04, 4), 0x0006);
    }

    #[test]
    fn disabled_config_address() {
        let mut host = PciHost::new();
        let mut p = RecordingPlatform::default();
        let bridge = address(0, 0, 0, 0);
        config_write(&mut host, &mut p, bridge, 0x04, 2, 0x0002);
        // Bit 31 clear: CONFIG_DATA is not decoded.
        host.write(CONFIG_ADDRESS_PORT, 4, 0x0000_0004, 0, &mut p);
        assert_eq!(host.read(CONFIG_ADDRESS_PORT, 4, 0, &mut p), 0x0000_0004);
        assert_eq!(host.read(CONFIG_DATA_PORT, 4, 0, &mut p), 0xFFFF_FFFF);
        assert_eq!(host.read(CONFIG_DATA_PORT, 2, 0, &mut p), 0xFFFF);
        assert_eq!(host.read(CONFIG_DATA_PORT + 1, 1, 0, &mut p), 0xFF);
        host.write(CONFIG_DATA_PORT, 4, 0x0000_0007, 0, &mut p);
        assert_eq!(config_read(&mut host, &mut p, bridge, 0x04, 4), 0x0002);
        // Reserved bits read 0.
        host.write(CONFIG_ADDRESS_PORT, 4, 0xFFFF_FFFF, 0, &mut p);
        assert_eq!(host.read(CONFIG_ADDRESS_PORT, 4, 0, &mut p), 0x80FF_FFFC);
        // Non-dword accesses at 0xCF8 do not touch CONFIG_ADDRESS.
        host.write(CONFIG_ADDRESS_PORT, 4, bridge, 0, &mut p);
        host.write(CONFIG_ADDRESS_PORT, 1, 0x08, 0, &mut p);
        host.write(CONFIG_ADDRESS_PORT + 2, 2, 0, 0, &mut p);
        assert_eq!(host.read(CONFIG_ADDRESS_PORT, 4, 0, &mut p), bridge);
        assert_eq!(host.read(CONFIG_ADDRESS_PORT, 2, 0, &mut p), 0x00FF);
        assert_eq!(host.read(CONFIG_ADDRESS_PORT + 2, 2, 0, &mut p), 0xFFFF);
        assert_eq!(p.last_request, None);
    }

    #[test]
    fn reset_control_through_the_host() {
        let mut host = PciHost::new();
        let mut p = RecordingPlatform::default();
        host.write(RESET_CONTROL_PORT, 1, 0x02, 0, &mut p);
        assert_eq!(host.read(RESET_CONTROL_PORT, 1, 0, &mut p), 0x02);
        assert_eq!(p.last_request, None);
        host.write(RESET_CONTROL_PORT, 1, 0x06, 0, &mut p);
        assert_eq!(p.last_request, Some(PlatformRequest::Reset));
        // A dword at 0xCF8 is CONFIG_ADDRESS, never the reset register.
        let mut p = RecordingPlatform::default();
        host.write(CONFIG_ADDRESS_PORT, 4, 0x0000_0400, 0, &mut p);
        assert_eq!(p.last_request, None);
    }

    proptest! {
        /// Garbage never panics; absent functions always read all-ones.
        #[test]
        fn random_accesses(ops in proptest::collection::vec(
            (0xCF6u16..0xD02, prop_oneof![Just(1u8), Just(2), Just(4), Just(0)], any::<u32>(), any::<bool>()), 1..100)) {
            let mut host = PciHost::new();
            let mut p = RecordingPlatform::default();
            for (port, size, value, is_write) in ops {
                if is_write {
                    host.write(port, size, value, 0, &mut p);
                } else {
                    host.read(port, size, 0, &mut p);
                }
                let saved = host.address;
                let absent = config_read(&mut host, &mut p, address(0, 3, 0, 0), 0, 4);
                prop_assert_eq!(absent, u32::MAX);
                host.address = saved;
            }
        }

        /// A `PCI_CONFIG` request does what the same access through `CONFIG_DATA` does
        /// with `CONFIG_ADDRESS` selecting its dword, and leaves `CONFIG_ADDRESS` alone.
        #[test]
        fn config_space_requests_match_config_data_accesses(
            ops in proptest::collection::vec(
                (prop_oneof![Just(0u64), Just(0x100), Just(0x1_0000), 0u64..0x100_0010],
                 prop_oneof![Just(1u8), Just(2), Just(4), Just(8)], any::<u32>(), any::<bool>()), 1..60),
            config_address in any::<u32>(),
        ) {
            let (mut by_request, mut by_port) = (PciHost::new(), PciHost::new());
            let mut p = RecordingPlatform::default();
            by_request.write(CONFIG_ADDRESS_PORT, 4, config_address, 0, &mut p);
            for (address, size, value, is_write) in ops {
                let valid = matches!(size, 1 | 2 | 4) && address <= hv_abi::io_request::MAX_PCI_CONFIG_ADDRESS;
                let saved = by_port.address;
                by_port.address = CONFIG_ENABLE | address as u32 & 0x00FF_FFFC;
                let port = CONFIG_DATA_PORT + (address & 3) as u16;
                if is_write {
                    by_request.config_space_write(address, size, value);
                    if valid {
                        by_port.write(port, size, value, 0, &mut p);
                    }
                } else {
                    let got = by_request.config_space_read(address, size);
                    let want = if valid { by_port.read(port, size, 0, &mut p) } else { open_bus(size) };
                    prop_assert_eq!(got, want, "read {:#x} size {}", address, size);
                }
                by_port.address = saved;
            }
            prop_assert_eq!(by_request.address, config_address & CONFIG_ADDRESS_MASK);
            prop_assert_eq!(by_request.bridge.command, by_port.bridge.command);
            prop_assert!(p.last_request.is_none(), "no reset through configuration space");
        }
    }

    #[test]
    fn config_space_requests_reach_the_bridge() {
        let mut host = PciHost::new();
        assert_eq!(host.config_space_read(0, 4), 0x1237_8086);
        assert_eq!(host.config_space_read(2, 2), 0x1237);
        assert_eq!(host.config_space_read(3, 4), 0xFFFF_FF12, "bytes past the dword read 0xFF");
        assert_eq!(host.config_space_read(0x0B, 1), 0x06, "base class: bridge");
        assert_eq!(host.config_space_read(1 << 11, 4), u32::MAX, "no device 1");
        assert_eq!(host.config_space_read(1 << 16, 2), 0xFFFF, "no bus 1");
        host.config_space_write(0x04, 2, 0xFFFF);
        assert_eq!(host.config_space_read(0x04, 4), u32::from(HOST_BRIDGE_COMMAND_WRITABLE));
        host.config_space_write(0x05, 1, 0);
        assert_eq!(host.config_space_read(0x04, 2), 0x0047, "byte 5 written alone");
        assert_eq!(host.address, 0, "CONFIG_ADDRESS untouched");
    }
}
