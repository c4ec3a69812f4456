//! Encoding the local APIC's interrupt command register (SDM Vol. 3 section 11.6.1,
//! figure 11-12), shared by the xAPIC (two 32-bit registers) and x2APIC (one MSR).

/// Delivery mode, ICR bits 10:8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryMode {
    Fixed = 0b000,
    Nmi = 0b100,
    Init = 0b101,
    StartUp = 0b110,
}

/// Destination shorthand, ICR bits 19:18.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// A physical APIC ID.
    Physical(u32),
    SelfOnly,
    AllIncludingSelf,
    AllExcludingSelf,
}

/// ICR bit 14: level assert (must be 1 for everything but INIT level de-assert).
const LEVEL_ASSERT: u64 = 1 << 14;

/// The 64-bit ICR value. In x2APIC mode it is written as is to MSR 0x830 (the
/// destination in bits 63:32, SDM 11.12.9); in xAPIC mode the destination goes in
/// ICR-high bits 63:56, see [`Icr::xapic_parts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Icr {
    pub low: u32,
    pub dest: u32,
}

impl Icr {
    #[must_use]
    pub fn new(mode: DeliveryMode, vector: u8, dest: Destination) -> Self {
        let (shorthand, id) = match dest {
            Destination::Physical(id) => (0b00u64, id),
            Destination::SelfOnly => (0b01, 0),
            Destination::AllIncludingSelf => (0b10, 0),
            Destination::AllExcludingSelf => (0b11, 0),
        };
        let low = u64::from(vector) | ((mode as u64) << 8) | LEVEL_ASSERT | (shorthand << 18);
        Self { low: low as u32, dest: id }
    }

    /// The x2APIC MSR value.
    #[must_use]
    pub fn x2apic(&self) -> u64 {
        (u64::from(self.dest) << 32) | u64::from(self.low)
    }

    /// (ICR high, ICR low) for the xAPIC; the 8-bit destination sits in bits 31:24 of
    /// the high register. Write high first: writing low sends the IPI.
    #[must_use]
    pub fn xapic_parts(&self) -> (u32, u32) {
        ((self.dest & 0xff) << 24, self.low)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_and_sipi_broadcasts() {
        // The classic values: INIT = 0x000C4500, SIPI = 0x000C46vv.
        assert_eq!(Icr::new(DeliveryMode::Init, 0, Destination::AllExcludingSelf).low, 0x000c_4500);
        assert_eq!(Icr::new(DeliveryMode::StartUp, 0x08, Destination::AllExcludingSelf).low, 0x000c_4608);
    }

    #[test]
    fn physical_destination_in_both_modes() {
        let icr = Icr::new(DeliveryMode::StartUp, 0x9f, Destination::Physical(3));
        assert_eq!(icr.x2apic(), (3 << 32) | 0x469f);
        assert_eq!(icr.xapic_parts(), (3 << 24, 0x469f));
        let nmi = Icr::new(DeliveryMode::Nmi, 0, Destination::SelfOnly);
        assert_eq!(nmi.low, 0x0004_4400);
    }
}
