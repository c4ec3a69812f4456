//! How the hypervisor routes a guest's accesses to PCI configuration mechanism #1
//! (PCI Local Bus Specification 3.0, §3.2.2.3.2): `CONFIG_ADDRESS` at port 0xCF8,
//! `CONFIG_DATA` at 0xCFC-0xCFF.
//!
//! The hypervisor keeps a copy of each VM's `CONFIG_ADDRESS`, as Xen does for its
//! device models: a dword write at 0xCF8 updates the copy and is still forwarded as a
//! port write (the service partition's PCI host model keeps its own register, and reads
//! of 0xCF8 go to it). An access that starts at 0xCFC-0xCFF while the copy has the
//! enable bit set becomes a PCI configuration request
//! (`hv_abi::io_request::kind::PCI_CONFIG`) that names the function and register, so
//! the service partition needs no second look at the latch and the request says what
//! it is. Everything else in 0xCF8-0xCFF (byte and word accesses at 0xCF8-0xCFB, among
//! them the reset control register at 0xCF9; `CONFIG_DATA` with configuration cycles
//! disabled) is forwarded as the port access it is.

pub use hv_abi::platform::pci::{CONFIG_ADDRESS_MASK, CONFIG_ADDRESS_PORT, CONFIG_DATA_PORT, CONFIG_ENABLE};

/// Where a port access in 0xCF8-0xCFF goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PciPortRoute {
    /// A dword write to `CONFIG_ADDRESS`: keep this value as the VM's copy, then
    /// forward the write as a port access.
    SetConfigAddress(u32),
    /// A configuration-space access: post a `PCI_CONFIG` request with this address
    /// (`bus << 16 | device << 11 | function << 8 | register`, the register being the
    /// byte the access starts at) and the access's size and direction.
    ConfigSpace(u64),
    /// Any other access: forward it as the port access it is.
    Port,
}

/// Whether `port` lies in the mechanism #1 block 0xCF8-0xCFF.
#[must_use]
#[inline]
pub const fn in_config_block(port: u16) -> bool {
    port & !7 == CONFIG_ADDRESS_PORT
}

/// The route of an access of `size` bytes (1, 2 or 4) at `port` (in 0xCF8-0xCFF)
/// that writes `data` (`None`: a read), given the VM's copy of `CONFIG_ADDRESS`.
#[must_use]
pub fn route(config_address: u32, port: u16, size: u8, data: Option<u64>) -> PciPortRoute {
    if port == CONFIG_ADDRESS_PORT && size == 4 {
        return match data {
            Some(value) => PciPortRoute::SetConfigAddress(value as u32 & CONFIG_ADDRESS_MASK),
            None => PciPortRoute::Port,
        };
    }
    match port.checked_sub(CONFIG_DATA_PORT) {
        Some(lane @ 0..=3) if config_address & CONFIG_ENABLE != 0 => {
            PciPortRoute::ConfigSpace(u64::from(config_address & 0x00FF_FFFC) | u64::from(lane))
        }
        _ => PciPortRoute::Port,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hv_abi::io_request::{pci_config_target as decode_address, MAX_PCI_CONFIG_ADDRESS};
    use proptest::prelude::*;

    const ENABLED_00_1F_3_REG_0X40: u32 = CONFIG_ENABLE | 0x1F << 11 | 3 << 8 | 0x40;

    #[test]
    fn a_dword_write_at_cf8_sets_the_copy_masked() {
        assert_eq!(route(0, 0xCF8, 4, Some(0xFFFF_FFFF)), PciPortRoute::SetConfigAddress(0x80FF_FFFC));
        assert_eq!(route(0, 0xCF8, 4, Some(0x1_8000_0000)), PciPortRoute::SetConfigAddress(CONFIG_ENABLE));
        // A read of CONFIG_ADDRESS is the model's.
        assert_eq!(route(CONFIG_ENABLE, 0xCF8, 4, None), PciPortRoute::Port);
    }

    #[test]
    fn smaller_accesses_at_cf8_to_cfb_are_port_accesses() {
        for port in 0xCF8..=0xCFB {
            for size in [1, 2] {
                assert_eq!(route(ENABLED_00_1F_3_REG_0X40, port, size, Some(0xFE)), PciPortRoute::Port);
                assert_eq!(route(ENABLED_00_1F_3_REG_0X40, port, size, None), PciPortRoute::Port);
            }
        }
        // The reset control register.
        assert_eq!(route(ENABLED_00_1F_3_REG_0X40, 0xCF9, 1, Some(0x06)), PciPortRoute::Port);
        // A dword that does not start at 0xCF8.
        assert_eq!(route(ENABLED_00_1F_3_REG_0X40, 0xCF9, 4, None), PciPortRoute::Port);
    }

    #[test]
    fn config_data_with_cycles_enabled_names_function_and_register() {
        let want = |lane: u64| PciPortRoute::ConfigSpace(0x1F << 11 | 3 << 8 | 0x40 | lane);
        for lane in 0..4u16 {
            for size in [1, 2, 4] {
                assert_eq!(route(ENABLED_00_1F_3_REG_0X40, 0xCFC + lane, size, None), want(lane.into()));
                assert_eq!(route(ENABLED_00_1F_3_REG_0X40, 0xCFC + lane, size, Some(1)), want(lane.into()));
            }
        }
        let bus_255 = CONFIG_ENABLE | 0xFF << 16 | 0xFC;
        assert_eq!(route(bus_255, 0xCFC, 4, None), PciPortRoute::ConfigSpace(0xFF_00FC));
        assert_eq!(decode_address(0xFF_00FC), Some((255, 0, 0, 0xFC)));
        assert_eq!(decode_address(0x1F << 11 | 3 << 8 | 0x42), Some((0, 31, 3, 0x42)));
        assert_eq!(decode_address(MAX_PCI_CONFIG_ADDRESS + 1), None);
    }

    #[test]
    fn config_data_with_cycles_disabled_is_a_port_access() {
        for port in 0xCFC..=0xCFF {
            assert_eq!(route(0x00FF_FFFC, port, 1, None), PciPortRoute::Port);
        }
    }

    proptest! {
        /// A `ConfigSpace` address always decodes, names the dword CONFIG_ADDRESS
        /// selects, and the lane of the port; the block test matches 0xCF8-0xCFF only.
        #[test]
        fn routes_are_consistent(config_address in any::<u32>(), port in 0xCF0u16..0xD08, size in prop::sample::select(vec![1u8, 2, 4]), data in any::<Option<u64>>()) {
            prop_assert_eq!(in_config_block(port), (0xCF8..=0xCFF).contains(&port));
            if let PciPortRoute::ConfigSpace(address) = route(config_address, port, size, data) {
                prop_assert!((0xCFC..=0xCFF).contains(&port));
                prop_assert!(config_address & CONFIG_ENABLE != 0);
                prop_assert_eq!(address & !3, u64::from(config_address & 0x00FF_FFFC));
                prop_assert_eq!(address & 3, u64::from(port - 0xCFC));
                prop_assert!(decode_address(address).is_some());
            }
        }
    }
}
