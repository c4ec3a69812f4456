//! Typed physical addresses.
//!
//! A guest-physical address (what the guest puts on its "bus", translated by EPT) and a
//! host-physical address (what the machine's memory controller sees) are both plain
//! `u64`s in hardware, and mixing them up is a classic hypervisor bug. The two newtypes
//! here have no conversions between each other: going from one to the other takes an
//! explicit `as_u64()` and `new()`, which stands out in review.

use core::fmt;

macro_rules! phys_addr {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[repr(transparent)]
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(u64);

        impl $name {
            /// Wraps a raw address.
            pub const fn new(addr: u64) -> Self {
                Self(addr)
            }

            /// The raw address.
            pub const fn as_u64(self) -> u64 {
                self.0
            }

            /// `self + offset`, or `None` if that overflows `u64`.
            pub const fn checked_add(self, offset: u64) -> Option<Self> {
                match self.0.checked_add(offset) {
                    Some(a) => Some(Self(a)),
                    None => None,
                }
            }

            /// Whether the address is a multiple of `align`.
            ///
            /// # Panics
            /// If `align` is not a power of two.
            pub const fn is_aligned(self, align: u64) -> bool {
                assert!(align.is_power_of_two(), "alignment must be a power of two");
                self.0 & (align - 1) == 0
            }

            /// The largest multiple of `align` that is `<= self`.
            ///
            /// # Panics
            /// If `align` is not a power of two.
            pub const fn align_down(self, align: u64) -> Self {
                assert!(align.is_power_of_two(), "alignment must be a power of two");
                Self(self.0 & !(align - 1))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:#x})"), self.0)
            }
        }

        impl fmt::LowerHex for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }
    };
}

phys_addr!(
    /// A guest-physical address: the input of the EPT translation.
    GuestPhysAddr
);

phys_addr!(
    /// A host-physical address: the output of the EPT translation, and where the EPT
    /// paging structures themselves live.
    HostPhysAddr
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basics() {
        let a = GuestPhysAddr::new(0x20_1234);
        assert_eq!(a.as_u64(), 0x20_1234);
        assert!(!a.is_aligned(0x1000));
        assert!(a.is_aligned(4));
        assert_eq!(a.align_down(0x1000), GuestPhysAddr::new(0x20_1000));
        assert_eq!(a.align_down(0x20_0000), GuestPhysAddr::new(0x20_0000));
        assert!(GuestPhysAddr::new(0).is_aligned(1 << 63));
        assert_eq!(a.checked_add(0x10), Some(GuestPhysAddr::new(0x20_1244)));
        assert_eq!(GuestPhysAddr::new(u64::MAX).checked_add(1), None);
        assert_eq!(HostPhysAddr::new(u64::MAX - 1).checked_add(1), Some(HostPhysAddr::new(u64::MAX)));
        assert!(HostPhysAddr::new(1) < HostPhysAddr::new(2));
    }

    #[test]
    fn debug_is_hex() {
        assert_eq!(format!("{:?}", GuestPhysAddr::new(0xabc000)), "GuestPhysAddr(0xabc000)");
        assert_eq!(format!("{:?}", HostPhysAddr::new(0x1000)), "HostPhysAddr(0x1000)");
        assert_eq!(format!("{:#x}", HostPhysAddr::new(0x1000)), "0x1000");
    }

    #[test]
    #[should_panic]
    fn non_power_of_two_alignment_panics() {
        let _ = HostPhysAddr::new(0x3000).is_aligned(0x3000);
    }
}
