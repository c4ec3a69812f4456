//! A virtual I/O APIC with 24 input pins, modelled on the Intel 82093AA I/O APIC
//! (datasheet order number 290566-001, "82093AA I/O Advanced Programmable Interrupt
//! Controller (IOAPIC)", section 3 "Register Description").
//!
//! The device is pure state: the kernel routes guest MMIO accesses that hit the I/O APIC
//! page (by convention at `0xFEC0_0000`; the caller owns the address decode and passes the
//! offset inside the page) to [`VIoApic::mmio_read`] / [`VIoApic::mmio_write`], feeds
//! interrupt-line changes of its device models to [`VIoApic::set_level`] (or the
//! [`VIoApic::assert_irq`] / [`VIoApic::deassert_irq`] / [`VIoApic::pulse`] helpers), and
//! forwards every end-of-interrupt broadcast of a virtual local APIC to [`VIoApic::eoi`].
//! Whenever an interrupt has to reach the local APIC(s), the call returns an
//! [`Interrupt`] that the hypervisor delivers (SDM Vol. 3 chapter 11); the I/O APIC keeps
//! no queue of its own.
//!
//! Modelling decisions (where the datasheet leaves room or describes bus timing):
//! - Delivery is instantaneous: an interrupt is handed to the caller in the same call that
//!   triggers it, so the delivery status bit (12, "send pending") always reads 0.
//! - Only 32-bit accesses to `IOREGSEL` (offset 0x00) and `IOWIN` (offset 0x10) are
//!   decoded (datasheet 3.1: "registers are 32-bit wide"); any other offset or size reads
//!   as 0 and ignores writes. Unimplemented register indexes (0x03..=0x0F, 0x40..=0xFF)
//!   read as 0 and ignore writes. There is no EOI register at offset 0x40: that register
//!   belongs to version 0x20 I/O APICs, and this model reports version 0x11.
//! - An edge on a masked edge-triggered pin is lost (datasheet 3.2.4, bit 16: "not
//!   delivered or held pending"). A masked level-triggered pin delivers nothing, but its
//!   line level is still tracked, so unmasking a pin that is still asserted with remote
//!   IRR clear delivers it (the write's [`IoapicEffect`] carries it).
//! - Register writes never create edges: changing the polarity or unmasking an
//!   edge-triggered pin delivers nothing. Level-triggered pins are re-evaluated after
//!   every redirection-entry write.
//! - Writing an entry as edge-triggered clears its remote IRR. Remote IRR is undefined
//!   for edge pins (3.2.4, bit 14); guests rely on clearing it this way (e.g. Linux
//!   briefly switches a pin to edge to clear a stuck remote IRR on version 0x11 parts,
//!   which have no EOI register).
//! - NMI, INIT, SMI and ExtINT are always treated as edge-triggered, whatever the trigger
//!   bit says (3.2.4, bits 10:8: NMI and INIT "are treated as edge triggered even if
//!   programmed level"; SMI and ExtINT require edge mode). Only fixed and lowest-priority
//!   entries are level-capable, and only they ever set remote IRR. Entries with a reserved
//!   delivery mode (0b011, 0b110) deliver nothing.
//!
//! Pin inputs are electrical line levels: `true` is a high line. With polarity bit 13 set
//! (active low) the pin is active while the line is low, and the active edge of an
//! edge-triggered pin is the falling one. A board model that advertises an active-low pin
//! (e.g. through a MADT interrupt source override) should keep its idle line high.

/// Number of input pins (and redirection-table entries) of the 82093AA.
pub const NUM_PINS: usize = 24;

/// Offset of `IOREGSEL` in the MMIO page (datasheet 3.1.1).
pub const IOREGSEL_OFFSET: u64 = 0x00;
/// Offset of `IOWIN` in the MMIO page (datasheet 3.1.2).
pub const IOWIN_OFFSET: u64 = 0x10;

/// Register index of `IOAPICID` (datasheet 3.2.1).
pub const REG_ID: u8 = 0x00;
/// Register index of `IOAPICVER` (datasheet 3.2.2).
pub const REG_VERSION: u8 = 0x01;
/// Register index of `IOAPICARB` (datasheet 3.2.3).
pub const REG_ARBITRATION: u8 = 0x02;
/// First register index of `IOREDTBL[23:0]`: entry `n` is at `0x10 + 2n` (low dword,
/// bits 31:0) and `0x11 + 2n` (high dword, bits 63:32) (datasheet 3.2.4).
pub const REG_REDTBL_BASE: u8 = 0x10;
/// Last register index of the redirection table (datasheet 3.2.4).
pub const REG_REDTBL_LAST: u8 = REG_REDTBL_BASE + 2 * NUM_PINS as u8 - 1;

/// `IOAPICVER` bits 7:0: the 82093AA reports version 0x11 (datasheet 3.2.2).
pub const VERSION: u8 = 0x11;

/// `IOAPICID` / `IOAPICARB` bits 27:24: the 4-bit ID (datasheet 3.2.1, 3.2.3).
const ID_SHIFT: u32 = 24;
const ID_MASK: u32 = 0xF << ID_SHIFT;

/// A pin number outside `0..NUM_PINS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidPin(pub u32);

/// Redirection-entry delivery mode, bits 10:8 (datasheet 3.2.4; the local-APIC meaning of
/// each mode is in SDM Vol. 3 section 11.6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryMode {
    /// 0b000: deliver `vector` to all destination processors.
    Fixed = 0b000,
    /// 0b001: deliver `vector` to the lowest-priority processor among the destinations.
    LowestPriority = 0b001,
    /// 0b010: SMI; the vector is ignored (datasheet: should be programmed as 0).
    Smi = 0b010,
    /// 0b100: NMI; the vector is ignored, always edge-triggered.
    Nmi = 0b100,
    /// 0b101: INIT; the vector is ignored, always edge-triggered.
    Init = 0b101,
    /// 0b111: external interrupt; the vector comes from an 8259A-compatible controller's
    /// INTA cycle (the virtual PIC), always edge-triggered.
    ExtInt = 0b111,
}

impl DeliveryMode {
    /// Decodes bits 10:8; `None` for the reserved encodings 0b011 and 0b110.
    #[must_use]
    pub const fn from_bits(bits: u8) -> Option<Self> {
        match bits & 0b111 {
            0b000 => Some(Self::Fixed),
            0b001 => Some(Self::LowestPriority),
            0b010 => Some(Self::Smi),
            0b100 => Some(Self::Nmi),
            0b101 => Some(Self::Init),
            0b111 => Some(Self::ExtInt),
            _ => None,
        }
    }

    /// Whether the mode can be level-triggered (only fixed and lowest priority; the others
    /// are edge-only, datasheet 3.2.4 bits 10:8).
    #[must_use]
    pub const fn level_capable(self) -> bool {
        matches!(self, Self::Fixed | Self::LowestPriority)
    }
}

/// Destination mode, bit 11 (datasheet 3.2.4; SDM Vol. 3 section 11.6.2.1 / 11.6.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestMode {
    /// 0: the destination is an APIC ID.
    Physical,
    /// 1: the destination is a logical-destination bit set, matched against each local
    /// APIC's LDR/DFR.
    Logical,
}

/// One 64-bit redirection-table entry, `IOREDTBL[n]` (datasheet 3.2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedirectionEntry(pub u64);

impl RedirectionEntry {
    /// Bits 7:0: interrupt vector.
    pub const VECTOR: u64 = 0xFF;
    /// Bits 10:8: delivery mode.
    pub const DELIVERY_MODE_SHIFT: u32 = 8;
    /// Bit 11: destination mode (1 = logical).
    pub const DEST_LOGICAL: u64 = 1 << 11;
    /// Bit 12: delivery status (RO; 1 = send pending).
    pub const DELIVERY_STATUS: u64 = 1 << 12;
    /// Bit 13: input pin polarity (1 = active low).
    pub const ACTIVE_LOW: u64 = 1 << 13;
    /// Bit 14: remote IRR (RO).
    pub const REMOTE_IRR: u64 = 1 << 14;
    /// Bit 15: trigger mode (1 = level).
    pub const LEVEL: u64 = 1 << 15;
    /// Bit 16: interrupt mask (1 = masked).
    pub const MASKED: u64 = 1 << 16;
    /// Bits 55:48: extended destination (reserved on the 82093AA, see
    /// [`RedirectionEntry::extended_destination`]).
    pub const EXT_DEST_SHIFT: u32 = 48;
    /// Bits 63:56: destination.
    pub const DEST_SHIFT: u32 = 56;
    /// Bits software can change: everything but the read-only delivery status (12) and
    /// remote IRR (14) and the reserved bits 47:17, which read as 0. Bits 55:48 are
    /// reserved on the 82093AA but kept so that extended-destination guests read back what
    /// they wrote.
    pub const WRITABLE: u64 = 0xFFFF_0000_0000_0000 | Self::MASKED | Self::LEVEL | Self::ACTIVE_LOW | 0xFFF;
    /// Reset value: masked, everything else 0 (datasheet 3.2.4 default `xxx1 xxxx xxxx xxxxh`,
    /// the undefined bits chosen as 0).
    pub const RESET: Self = Self(Self::MASKED);

    /// Bits 7:0.
    #[must_use]
    pub const fn vector(self) -> u8 {
        (self.0 & Self::VECTOR) as u8
    }

    /// Bits 10:8; `None` for a reserved encoding.
    #[must_use]
    pub const fn delivery_mode(self) -> Option<DeliveryMode> {
        DeliveryMode::from_bits((self.0 >> Self::DELIVERY_MODE_SHIFT) as u8)
    }

    /// Bit 11.
    #[must_use]
    pub const fn dest_mode(self) -> DestMode {
        if self.0 & Self::DEST_LOGICAL != 0 {
            DestMode::Logical
        } else {
            DestMode::Physical
        }
    }

    /// Bit 12 (always 0 in this model: delivery is instantaneous).
    #[must_use]
    pub const fn delivery_pending(self) -> bool {
        self.0 & Self::DELIVERY_STATUS != 0
    }

    /// Bit 13.
    #[must_use]
    pub const fn active_low(self) -> bool {
        self.0 & Self::ACTIVE_LOW != 0
    }

    /// Bit 14.
    #[must_use]
    pub const fn remote_irr(self) -> bool {
        self.0 & Self::REMOTE_IRR != 0
    }

    /// Bit 15 as programmed (1 = level), see also [`RedirectionEntry::effectively_level`].
    #[must_use]
    pub const fn level_triggered(self) -> bool {
        self.0 & Self::LEVEL != 0
    }

    /// Whether the pin behaves as level-triggered: bit 15 set and a level-capable delivery
    /// mode (fixed or lowest priority). NMI, INIT, SMI and ExtINT are always edge.
    #[must_use]
    pub const fn effectively_level(self) -> bool {
        match self.delivery_mode() {
            Some(mode) => self.level_triggered() && mode.level_capable(),
            None => false,
        }
    }

    /// Bit 16.
    #[must_use]
    pub const fn masked(self) -> bool {
        self.0 & Self::MASKED != 0
    }

    /// Bits 63:56. In physical mode the 82093AA compares only bits 59:56 (a 4-bit APIC ID,
    /// datasheet 3.2.4); xAPIC-era systems use all 8 bits as the APIC ID. In logical mode it
    /// is a set of processors (SDM Vol. 3 section 11.6.2.2).
    #[must_use]
    pub const fn destination(self) -> u8 {
        (self.0 >> Self::DEST_SHIFT) as u8
    }

    /// Bits 55:48, reserved on the 82093AA. Hypervisors that offer more than 255 APIC IDs
    /// without interrupt remapping use them the way MSIs use address bits 11:5 (the
    /// "extended destination ID" convention of KVM and Hyper-V; the MSI address format is
    /// SDM Vol. 3 section 11.11.1): bits 55:49 carry destination ID bits 14:8. Bit 48 is
    /// the interrupt-format bit of VT-d remappable entries and must be 0 in that
    /// convention. The raw byte is exposed; see [`Interrupt::extended_dest_id`].
    #[must_use]
    pub const fn extended_destination(self) -> u8 {
        (self.0 >> Self::EXT_DEST_SHIFT) as u8
    }
}

/// An interrupt the hypervisor must deliver to the destination local APIC(s) (the
/// inter-APIC message of datasheet 3.2.4; destination semantics in SDM Vol. 3 section 11.6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupt {
    /// Bits 7:0 of the entry (meaningless for SMI, NMI, INIT and ExtINT).
    pub vector: u8,
    pub delivery_mode: DeliveryMode,
    pub dest_mode: DestMode,
    /// Entry bits 63:56.
    pub destination: u8,
    /// Entry bits 55:48 (see [`RedirectionEntry::extended_destination`]).
    pub extended_destination: u8,
    /// Whether the local APIC must set the TMR bit and broadcast an EOI for this vector
    /// back to [`VIoApic::eoi`] (SDM Vol. 3 section 11.8.4 / 11.8.5).
    pub level_triggered: bool,
    /// The input pin that raised it.
    pub pin: u8,
}

impl Interrupt {
    /// The 15-bit destination under the extended-destination-ID convention: entry bits
    /// 63:56 as bits 7:0 and entry bits 55:49 as bits 14:8. Only meaningful if the
    /// hypervisor advertises that convention to the guest; otherwise use `destination`.
    #[must_use]
    pub const fn extended_dest_id(&self) -> u16 {
        self.destination as u16 | ((self.extended_destination as u16 >> 1) << 8)
    }
}

/// Side effects of an MMIO write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IoapicEffect {
    /// An interrupt to deliver now: a level-triggered pin that became deliverable through
    /// the write (unmasked, switched to level or polarity flipped while asserted).
    pub deliver: Option<Interrupt>,
    /// The pin whose redirection entry was written (even if unchanged), so that the
    /// caller can refresh derived state such as the VMCS EOI-exit bitmap.
    pub entry_written: Option<u8>,
}

/// The virtual I/O APIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VIoApic {
    /// `IOREGSEL` bits 7:0 (datasheet 3.1.1).
    ioregsel: u8,
    /// The 4-bit ID of `IOAPICID` bits 27:24 (datasheet 3.2.1).
    id: u8,
    /// The 4-bit arbitration ID of `IOAPICARB` bits 27:24 (datasheet 3.2.3).
    arb_id: u8,
    redtbl: [RedirectionEntry; NUM_PINS],
    /// Electrical line level of each pin, bit `n` = pin `n` is high.
    lines: u32,
}

impl Default for VIoApic {
    fn default() -> Self {
        Self::new(0)
    }
}

impl VIoApic {
    /// A device in its reset state with the given 4-bit ID (bits above 3 are dropped):
    /// every entry masked, all lines low, `IOREGSEL` 0.
    #[must_use]
    pub const fn new(id: u8) -> Self {
        let id = id & 0xF;
        Self { ioregsel: 0, id, arb_id: id, redtbl: [RedirectionEntry::RESET; NUM_PINS], lines: 0 }
    }

    /// Reset: redirection entries, `IOREGSEL` and the line levels go back to their reset
    /// values. The ID is kept (the 82093AA resets it to 0, but the ID is a board property
    /// the hypervisor set at [`VIoApic::new`]).
    pub fn reset(&mut self) {
        *self = Self::new(self.id);
    }

    /// The current 4-bit ID.
    #[must_use]
    pub const fn id(&self) -> u8 {
        self.id
    }

    /// The redirection entry of `pin`.
    pub fn entry(&self, pin: u32) -> Result<RedirectionEntry, InvalidPin> {
        Ok(self.redtbl[Self::index(pin)?])
    }

    /// Whether any level-triggered (effectively level, see
    /// [`RedirectionEntry::effectively_level`]) entry uses `vector`, i.e. whether an EOI of
    /// `vector` must reach [`VIoApic::eoi`] (for the VMCS EOI-exit bitmap).
    #[must_use]
    pub fn level_vector(&self, vector: u8) -> bool {
        self.redtbl.iter().any(|e| e.effectively_level() && e.vector() == vector)
    }

    /// Guest read of `size` bytes at `offset` in the I/O APIC page. Only 32-bit reads of
    /// `IOREGSEL` and `IOWIN` are decoded; anything else reads 0.
    #[must_use]
    pub fn mmio_read(&self, offset: u64, size: u8) -> u32 {
        if size != 4 {
            return 0;
        }
        match offset {
            IOREGSEL_OFFSET => u32::from(self.ioregsel),
            IOWIN_OFFSET => self.read_register(self.ioregsel),
            _ => 0,
        }
    }

    /// Guest write of `size` bytes at `offset` in the I/O APIC page. Only 32-bit writes of
    /// `IOREGSEL` and `IOWIN` are decoded; anything else is ignored.
    pub fn mmio_write(&mut self, offset: u64, value: u32, size: u8) -> IoapicEffect {
        if size != 4 {
            return IoapicEffect::default();
        }
        match offset {
            IOREGSEL_OFFSET => {
                // Bits 31:8 are reserved (datasheet 3.1.1).
                self.ioregsel = value as u8;
                IoapicEffect::default()
            }
            IOWIN_OFFSET => self.write_register(self.ioregsel, value),
            _ => IoapicEffect::default(),
        }
    }

    /// The register `index` as seen through `IOWIN` (datasheet 3.2).
    #[must_use]
    pub fn read_register(&self, index: u8) -> u32 {
        match index {
            // 3.2.1: bits 27:24 ID, the rest reserved.
            REG_ID => u32::from(self.id) << ID_SHIFT,
            // 3.2.2: bits 23:16 maximum redirection entry (entries - 1), bits 7:0 version.
            REG_VERSION => ((NUM_PINS as u32 - 1) << 16) | u32::from(VERSION),
            // 3.2.3: bits 27:24 arbitration ID.
            REG_ARBITRATION => u32::from(self.arb_id) << ID_SHIFT,
            REG_REDTBL_BASE..=REG_REDTBL_LAST => {
                let offset = index - REG_REDTBL_BASE;
                let entry = self.redtbl[usize::from(offset / 2)].0;
                if offset % 2 == 0 {
                    entry as u32
                } else {
                    (entry >> 32) as u32
                }
            }
            _ => 0,
        }
    }

    /// Writes the register `index` as through `IOWIN` (datasheet 3.2).
    pub fn write_register(&mut self, index: u8, value: u32) -> IoapicEffect {
        match index {
            // 3.2.1: writing the ID also loads the arbitration ID (3.2.3).
            REG_ID => {
                self.id = ((value & ID_MASK) >> ID_SHIFT) as u8;
                self.arb_id = self.id;
                IoapicEffect::default()
            }
            REG_REDTBL_BASE..=REG_REDTBL_LAST => {
                let offset = index - REG_REDTBL_BASE;
                let pin = usize::from(offset / 2);
                let old = self.redtbl[pin].0;
                let (half_mask, shifted) = if offset % 2 == 0 {
                    (0xFFFF_FFFFu64, u64::from(value))
                } else {
                    (!0xFFFF_FFFFu64, u64::from(value) << 32)
                };
                let writable = RedirectionEntry::WRITABLE & half_mask;
                let mut new = (old & !writable) | (shifted & writable);
                let entry = RedirectionEntry(new);
                if !entry.effectively_level() {
                    new &= !RedirectionEntry::REMOTE_IRR;
                }
                self.redtbl[pin] = RedirectionEntry(new);
                IoapicEffect { deliver: self.evaluate_level(pin), entry_written: Some(pin as u8) }
            }
            // Version and arbitration are read-only; other indexes are unimplemented.
            _ => IoapicEffect::default(),
        }
    }

    /// Sets the electrical level of `pin` (`true` = high). Returns the interrupt to deliver,
    /// if any:
    /// - edge-triggered: on the active edge (rising, or falling if active low) while
    ///   unmasked; an edge while masked is lost;
    /// - level-triggered: while active, unmasked and remote IRR clear; remote IRR is then
    ///   set until an EOI with the entry's vector.
    pub fn set_level(&mut self, pin: u32, high: bool) -> Result<Option<Interrupt>, InvalidPin> {
        let index = Self::index(pin)?;
        let bit = 1u32 << index;
        let entry = self.redtbl[index];
        let was_active = self.active(index);
        if high {
            self.lines |= bit;
        } else {
            self.lines &= !bit;
        }
        if entry.effectively_level() {
            return Ok(self.evaluate_level(index));
        }
        let rising = !was_active && self.active(index);
        if rising && !entry.masked() {
            Ok(Self::message(entry, index))
        } else {
            Ok(None)
        }
    }

    /// Drives the line of `pin` high (`set_level(pin, true)`).
    pub fn assert_irq(&mut self, pin: u32) -> Result<Option<Interrupt>, InvalidPin> {
        self.set_level(pin, true)
    }

    /// Drives the line of `pin` low (`set_level(pin, false)`).
    pub fn deassert_irq(&mut self, pin: u32) -> Result<Option<Interrupt>, InvalidPin> {
        self.set_level(pin, false)
    }

    /// A positive pulse for edge sources: the line goes high, then low. An edge-triggered
    /// active-high pin delivers on the rising edge, an active-low one on the falling edge;
    /// either way at most one interrupt comes back. (On a level-triggered pin the pulse
    /// delivers at most once too, since remote IRR stays set until the EOI.)
    pub fn pulse(&mut self, pin: u32) -> Result<Option<Interrupt>, InvalidPin> {
        let first = self.set_level(pin, true)?;
        let second = self.set_level(pin, false)?;
        Ok(first.or(second))
    }

    /// An EOI broadcast for `vector` from a local APIC (datasheet 3.2.4, bit 14): clears
    /// remote IRR of every level-triggered entry with that vector; each such pin that is
    /// still active and unmasked is delivered again (and its remote IRR set again). The
    /// result is indexed by pin.
    pub fn eoi(&mut self, vector: u8) -> [Option<Interrupt>; NUM_PINS] {
        let mut out = [None; NUM_PINS];
        for (pin, slot) in out.iter_mut().enumerate() {
            let entry = self.redtbl[pin];
            if entry.effectively_level() && entry.vector() == vector && entry.remote_irr() {
                self.redtbl[pin].0 &= !RedirectionEntry::REMOTE_IRR;
                *slot = self.evaluate_level(pin);
            }
        }
        out
    }

    fn index(pin: u32) -> Result<usize, InvalidPin> {
        match usize::try_from(pin) {
            Ok(index) if index < NUM_PINS => Ok(index),
            _ => Err(InvalidPin(pin)),
        }
    }

    /// Whether the pin is at its active level (line level XOR polarity, bit 13).
    fn active(&self, index: usize) -> bool {
        let high = self.lines & (1 << index) != 0;
        high != self.redtbl[index].active_low()
    }

    /// Delivers a level-triggered pin if it is active, unmasked and remote IRR is clear,
    /// and sets remote IRR. No-op for edge pins.
    fn evaluate_level(&mut self, index: usize) -> Option<Interrupt> {
        let entry = self.redtbl[index];
        if !entry.effectively_level() || entry.masked() || entry.remote_irr() || !self.active(index) {
            return None;
        }
        let message = Self::message(entry, index)?;
        self.redtbl[index].0 |= RedirectionEntry::REMOTE_IRR;
        Some(message)
    }

    /// The message for `entry`; `None` for a reserved delivery mode.
    fn message(entry: RedirectionEntry, index: usize) -> Option<Interrupt> {
        Some(Interrupt {
            vector: entry.vector(),
            delivery_mode: entry.delivery_mode()?,
            dest_mode: entry.dest_mode(),
            destination: entry.destination(),
            extended_destination: entry.extended_destination(),
            level_triggered: entry.effectively_level(),
            pin: index as u8,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LEVEL: u32 = 1 << 15;
    const ACTIVE_LOW: u32 = 1 << 13;
    const MASKED: u32 = 1 << 16;
    const REMOTE_IRR: u32 = 1 << 14;

    fn write_reg(io: &mut VIoApic, index: u8, value: u32) -> IoapicEffect {
        assert_eq!(io.mmio_write(IOREGSEL_OFFSET, u32::from(index), 4), IoapicEffect::default());
        io.mmio_write(IOWIN_OFFSET, value, 4)
    }

    fn read_reg(io: &mut VIoApic, index: u8) -> u32 {
        io.mmio_write(IOREGSEL_OFFSET, u32::from(index), 4);
        io.mmio_read(IOWIN_OFFSET, 4)
    }

    fn low_index(pin: u8) -> u8 {
        REG_REDTBL_BASE + 2 * pin
    }

    /// Programs `pin`'s low dword (the high dword is left alone).
    fn program(io: &mut VIoApic, pin: u8, low: u32) -> IoapicEffect {
        write_reg(io, low_index(pin), low)
    }

    fn fixed(pin: u8, vector: u8, level: bool) -> Interrupt {
        Interrupt {
            vector,
            delivery_mode: DeliveryMode::Fixed,
            dest_mode: DestMode::Physical,
            destination: 0,
            extended_destination: 0,
            level_triggered: level,
            pin,
        }
    }

    #[test]
    fn register_file() {
        let mut io = VIoApic::new(0);
        assert_eq!(read_reg(&mut io, REG_VERSION), 0x0017_0011);
        assert_eq!((read_reg(&mut io, REG_VERSION) >> 16) & 0xFF, NUM_PINS as u32 - 1);
        assert_eq!(read_reg(&mut io, REG_ID), 0);
        // ID: only bits 27:24 stick, and the arbitration ID follows.
        write_reg(&mut io, REG_ID, 0xFFFF_FFFF);
        assert_eq!(read_reg(&mut io, REG_ID), 0x0F00_0000);
        write_reg(&mut io, REG_ID, 0x0500_0000);
        assert_eq!(read_reg(&mut io, REG_ID), 0x0500_0000);
        assert_eq!(io.id(), 5);
        assert_eq!(read_reg(&mut io, REG_ARBITRATION), 0x0500_0000);
        // Version and arbitration are read-only.
        write_reg(&mut io, REG_VERSION, 0);
        write_reg(&mut io, REG_ARBITRATION, 0x0900_0000);
        assert_eq!(read_reg(&mut io, REG_VERSION), 0x0017_0011);
        assert_eq!(read_reg(&mut io, REG_ARBITRATION), 0x0500_0000);
        // IOREGSEL reads back its low byte.
        io.mmio_write(IOREGSEL_OFFSET, 0x1234_5612, 4);
        assert_eq!(io.mmio_read(IOREGSEL_OFFSET, 4), 0x12);
        // Reset values of the redirection table: masked.
        for pin in 0..NUM_PINS as u8 {
            assert_eq!(read_reg(&mut io, low_index(pin)), MASKED);
            assert_eq!(read_reg(&mut io, low_index(pin) + 1), 0);
        }
        // Unimplemented indexes.
        for index in [0x03, 0x0F, 0x40, 0xFF] {
            write_reg(&mut io, index, 0xFFFF_FFFF);
            assert_eq!(read_reg(&mut io, index), 0);
        }
        assert_eq!(VIoApic::new(0x3A).id(), 0xA);
    }

    #[test]
    fn only_aligned_dword_accesses() {
        let mut io = VIoApic::new(1);
        io.mmio_write(IOREGSEL_OFFSET, u32::from(REG_ID), 4);
        assert_eq!(io.mmio_read(IOWIN_OFFSET, 4), 0x0100_0000);
        for size in [1, 2, 8] {
            assert_eq!(io.mmio_read(IOWIN_OFFSET, size), 0);
            assert_eq!(io.mmio_write(IOWIN_OFFSET, 0x0F00_0000, size), IoapicEffect::default());
            assert_eq!(io.mmio_write(IOREGSEL_OFFSET, 0x01, size), IoapicEffect::default());
        }
        for offset in [0x04, 0x08, 0x0C, 0x14, 0x20, 0x40, 0xFFC] {
            assert_eq!(io.mmio_read(offset, 4), 0);
            io.mmio_write(offset, 0xFFFF_FFFF, 4);
        }
        assert_eq!(io.mmio_read(IOREGSEL_OFFSET, 4), u32::from(REG_ID));
        assert_eq!(io.mmio_read(IOWIN_OFFSET, 4), 0x0100_0000);
    }

    #[test]
    fn entry_decode_and_read_only_bits() {
        let mut io = VIoApic::new(0);
        // Level, active low, logical, lowest priority, vector 0x41, destination 0x0F,
        // extended destination 0x06.
        let low = 0x41 | (0b001 << 8) | (1 << 11) | ACTIVE_LOW | LEVEL;
        // The active-low line idles high.
        assert_eq!(io.set_level(3, true), Ok(None));
        let effect = program(&mut io, 3, low);
        assert_eq!(effect, IoapicEffect { deliver: None, entry_written: Some(3) });
        write_reg(&mut io, low_index(3) + 1, 0x0F06_0000);
        let e = io.entry(3).unwrap();
        assert_eq!(e.vector(), 0x41);
        assert_eq!(e.delivery_mode(), Some(DeliveryMode::LowestPriority));
        assert_eq!(e.dest_mode(), DestMode::Logical);
        assert!(e.active_low() && e.level_triggered() && e.effectively_level() && !e.masked());
        assert!(!e.remote_irr() && !e.delivery_pending());
        assert_eq!(e.destination(), 0x0F);
        assert_eq!(e.extended_destination(), 0x06);
        // Pulling the line low asserts.
        let irq = io.set_level(3, false).unwrap().unwrap();
        assert_eq!(
            irq,
            Interrupt {
                vector: 0x41,
                delivery_mode: DeliveryMode::LowestPriority,
                dest_mode: DestMode::Logical,
                destination: 0x0F,
                extended_destination: 0x06,
                level_triggered: true,
                pin: 3,
            }
        );
        assert_eq!(irq.extended_dest_id(), 0x30F);
        assert_eq!(read_reg(&mut io, low_index(3)), low | REMOTE_IRR);
        // Read-modify-write: the guest writes back with RO bits cleared / set; remote IRR
        // and delivery status are untouched, reserved bits 31:17 read as 0.
        program(&mut io, 3, (low | 0xFFFE_0000 | MASKED) & !REMOTE_IRR);
        assert_eq!(read_reg(&mut io, low_index(3)), low | MASKED | REMOTE_IRR);
        program(&mut io, 3, low | REMOTE_IRR | (1 << 12));
        assert_eq!(read_reg(&mut io, low_index(3)), low | REMOTE_IRR);
        // High dword: bits 47:32 reserved.
        write_reg(&mut io, low_index(3) + 1, 0xFFFF_FFFF);
        assert_eq!(read_reg(&mut io, low_index(3) + 1), 0xFFFF_0000);
        // Writing the high half leaves remote IRR alone too.
        assert!(io.entry(3).unwrap().remote_irr());
        // Reserved delivery modes decode as None.
        assert_eq!(DeliveryMode::from_bits(0b011), None);
        assert_eq!(DeliveryMode::from_bits(0b110), None);
        assert_eq!(DeliveryMode::from_bits(0b111), Some(DeliveryMode::ExtInt));
    }

    #[test]
    fn edge_triggered() {
        let mut io = VIoApic::new(0);
        program(&mut io, 1, 0x31);
        assert_eq!(io.set_level(1, true), Ok(Some(fixed(1, 0x31, false))));
        // Holding high or going low does nothing; the next rising edge delivers again.
        assert_eq!(io.set_level(1, true), Ok(None));
        assert_eq!(io.set_level(1, false), Ok(None));
        assert_eq!(io.pulse(1), Ok(Some(fixed(1, 0x31, false))));
        assert_eq!(io.pulse(1), Ok(Some(fixed(1, 0x31, false))));
        // No remote IRR for edge pins, and EOI does nothing.
        assert!(!io.entry(1).unwrap().remote_irr());
        assert_eq!(io.eoi(0x31), [None; NUM_PINS]);
        assert!(!io.level_vector(0x31));
    }

    #[test]
    fn edge_polarity() {
        let mut io = VIoApic::new(0);
        program(&mut io, 2, 0x32 | ACTIVE_LOW);
        assert_eq!(io.assert_irq(2), Ok(None));
        assert_eq!(io.deassert_irq(2), Ok(Some(fixed(2, 0x32, false))));
        assert_eq!(io.deassert_irq(2), Ok(None));
        assert_eq!(io.assert_irq(2), Ok(None));
        // A positive pulse delivers on its falling edge, once.
        assert_eq!(io.pulse(2), Ok(Some(fixed(2, 0x32, false))));
        // Flipping the polarity through a register write creates no edge.
        assert_eq!(program(&mut io, 2, 0x32).deliver, None);
    }

    #[test]
    fn edge_lost_while_masked() {
        let mut io = VIoApic::new(0);
        program(&mut io, 4, 0x34 | MASKED);
        assert_eq!(io.set_level(4, true), Ok(None));
        // Unmasking while the line is still high: the edge is gone.
        assert_eq!(program(&mut io, 4, 0x34).deliver, None);
        assert_eq!(io.set_level(4, false), Ok(None));
        assert_eq!(io.set_level(4, true), Ok(Some(fixed(4, 0x34, false))));
        program(&mut io, 4, 0x34 | MASKED);
        assert_eq!(io.pulse(4), Ok(None));
        assert_eq!(program(&mut io, 4, 0x34).deliver, None);
    }

    #[test]
    fn level_triggered_remote_irr_and_eoi() {
        let mut io = VIoApic::new(0);
        program(&mut io, 9, 0x59 | LEVEL);
        assert!(io.level_vector(0x59));
        assert_eq!(io.assert_irq(9), Ok(Some(fixed(9, 0x59, true))));
        assert!(io.entry(9).unwrap().remote_irr());
        // Still asserted, remote IRR set: nothing more, even on re-assertion.
        assert_eq!(io.assert_irq(9), Ok(None));
        assert_eq!(io.deassert_irq(9), Ok(None));
        assert_eq!(io.assert_irq(9), Ok(None));
        // EOI of another vector does nothing.
        assert_eq!(io.eoi(0x58), [None; NUM_PINS]);
        assert!(io.entry(9).unwrap().remote_irr());
        // EOI while still asserted: delivered again.
        let redelivered = io.eoi(0x59);
        assert_eq!(redelivered[9], Some(fixed(9, 0x59, true)));
        assert_eq!(redelivered.iter().flatten().count(), 1);
        assert!(io.entry(9).unwrap().remote_irr());
        // Deassert, EOI: remote IRR clears, nothing delivered.
        assert_eq!(io.deassert_irq(9), Ok(None));
        assert_eq!(io.eoi(0x59), [None; NUM_PINS]);
        assert!(!io.entry(9).unwrap().remote_irr());
        // The next assertion delivers.
        assert_eq!(io.assert_irq(9), Ok(Some(fixed(9, 0x59, true))));
    }

    #[test]
    fn level_polarity() {
        let mut io = VIoApic::new(0);
        io.set_level(10, true).unwrap();
        // Programming active low while the line is high: inactive.
        assert_eq!(program(&mut io, 10, 0x5A | LEVEL | ACTIVE_LOW).deliver, None);
        assert_eq!(io.set_level(10, false), Ok(Some(fixed(10, 0x5A, true))));
        io.set_level(10, true).unwrap();
        assert_eq!(io.eoi(0x5A), [None; NUM_PINS]);
        // Flipping the polarity of an idle line makes it active: delivered by the write.
        assert_eq!(program(&mut io, 10, 0x5A | LEVEL).deliver, Some(fixed(10, 0x5A, true)));
    }

    #[test]
    fn level_delivered_on_unmask() {
        let mut io = VIoApic::new(0);
        program(&mut io, 11, 0x5B | LEVEL | MASKED);
        assert_eq!(io.assert_irq(11), Ok(None));
        assert!(!io.entry(11).unwrap().remote_irr());
        let effect = program(&mut io, 11, 0x5B | LEVEL);
        assert_eq!(effect, IoapicEffect { deliver: Some(fixed(11, 0x5B, true)), entry_written: Some(11) });
        // Masking after delivery keeps remote IRR; EOI while masked clears it without
        // delivering; unmasking then delivers again.
        program(&mut io, 11, 0x5B | LEVEL | MASKED);
        assert!(io.entry(11).unwrap().remote_irr());
        assert_eq!(io.eoi(0x5B), [None; NUM_PINS]);
        assert!(!io.entry(11).unwrap().remote_irr());
        assert_eq!(program(&mut io, 11, 0x5B | LEVEL).deliver, Some(fixed(11, 0x5B, true)));
        // Unmasking with remote IRR set delivers nothing.
        program(&mut io, 11, 0x5B | LEVEL | MASKED);
        assert_eq!(program(&mut io, 11, 0x5B | LEVEL).deliver, None);
        // A masked pin that was asserted and deasserted leaves no trace.
        io.eoi(0x5B);
        program(&mut io, 11, 0x5B | LEVEL | MASKED);
        io.deassert_irq(11).unwrap();
        assert_eq!(program(&mut io, 11, 0x5B | LEVEL).deliver, None);
    }

    #[test]
    fn switching_to_edge_clears_remote_irr() {
        let mut io = VIoApic::new(0);
        program(&mut io, 12, 0x5C | LEVEL);
        io.assert_irq(12).unwrap();
        assert!(io.entry(12).unwrap().remote_irr());
        program(&mut io, 12, 0x5C | MASKED);
        assert!(!io.entry(12).unwrap().remote_irr());
        // Back to level and unmasked while still asserted: delivered.
        assert_eq!(program(&mut io, 12, 0x5C | LEVEL).deliver, Some(fixed(12, 0x5C, true)));
    }

    #[test]
    fn edge_only_delivery_modes() {
        let mut io = VIoApic::new(0);
        // NMI programmed level: behaves as edge, never sets remote IRR.
        program(&mut io, 5, (0b100 << 8) | LEVEL);
        let irq = io.assert_irq(5).unwrap().unwrap();
        assert_eq!((irq.delivery_mode, irq.level_triggered), (DeliveryMode::Nmi, false));
        assert!(!io.entry(5).unwrap().remote_irr());
        assert_eq!(io.assert_irq(5), Ok(None));
        assert_eq!(io.pulse(5).unwrap().map(|i| i.delivery_mode), None);
        io.deassert_irq(5).unwrap();
        assert_eq!(io.pulse(5).unwrap().map(|i| i.delivery_mode), Some(DeliveryMode::Nmi));
        // ExtINT.
        program(&mut io, 0, 0b111 << 8);
        assert_eq!(io.pulse(0).unwrap().map(|i| i.delivery_mode), Some(DeliveryMode::ExtInt));
        // Reserved delivery mode: nothing, level or edge.
        program(&mut io, 6, (0b011 << 8) | 0x40);
        assert_eq!(io.pulse(6), Ok(None));
        program(&mut io, 7, (0b110 << 8) | 0x40 | LEVEL);
        assert_eq!(io.assert_irq(7), Ok(None));
        assert!(!io.entry(7).unwrap().remote_irr());
    }

    #[test]
    fn eoi_broadcast_to_pins_sharing_a_vector() {
        let mut io = VIoApic::new(0);
        for pin in [16, 17, 18, 19] {
            program(&mut io, pin, 0x70 | LEVEL);
        }
        // Pin 20 shares the vector but is edge-triggered.
        program(&mut io, 20, 0x70);
        for pin in [16, 17, 18, 19] {
            assert_eq!(io.assert_irq(u32::from(pin)), Ok(Some(fixed(pin, 0x70, true))));
        }
        assert!(io.pulse(20).unwrap().is_some());
        io.deassert_irq(17).unwrap();
        program(&mut io, 18, 0x70 | LEVEL | MASKED);
        let out = io.eoi(0x70);
        assert_eq!(out[16], Some(fixed(16, 0x70, true)));
        assert_eq!(out[17], None);
        assert_eq!(out[18], None);
        assert_eq!(out[19], Some(fixed(19, 0x70, true)));
        assert_eq!(out.iter().flatten().count(), 2);
        let irr: [bool; 5] = core::array::from_fn(|i| io.entry(16 + i as u32).unwrap().remote_irr());
        assert_eq!(irr, [true, false, false, true, false]);
    }

    #[test]
    fn out_of_range_pins() {
        let mut io = VIoApic::new(0);
        for pin in [24, 25, 31, 32, 1000, u32::MAX] {
            assert_eq!(io.set_level(pin, true), Err(InvalidPin(pin)));
            assert_eq!(io.assert_irq(pin), Err(InvalidPin(pin)));
            assert_eq!(io.deassert_irq(pin), Err(InvalidPin(pin)));
            assert_eq!(io.pulse(pin), Err(InvalidPin(pin)));
            assert_eq!(io.entry(pin), Err(InvalidPin(pin)));
        }
        assert_eq!(io, VIoApic::new(0));
        // The last valid entry is at 0x3E/0x3F, 0x40 is past the table.
        assert_eq!(write_reg(&mut io, REG_REDTBL_LAST - 1, 0x20).entry_written, Some(23));
        assert_eq!(write_reg(&mut io, REG_REDTBL_LAST + 1, 0x20).entry_written, None);
        assert_eq!(io.pulse(23), Ok(Some(fixed(23, 0x20, false))));
    }

    #[test]
    fn reset_keeps_id() {
        let mut io = VIoApic::new(2);
        program(&mut io, 1, 0x31 | LEVEL);
        io.assert_irq(1).unwrap();
        write_reg(&mut io, REG_ID, 0x0700_0000);
        io.reset();
        assert_eq!(io, VIoApic::new(7));
        assert_eq!(VIoApic::default(), VIoApic::new(0));
    }

    #[derive(Debug, Clone)]
    enum Op {
        SetLevel(u32, bool),
        Pulse(u32),
        Eoi(u8),
        WriteLow { pin: u8, value: u32 },
        WriteHigh { pin: u8, value: u32 },
        Select(u32),
        Window(u32),
    }

    const VECTORS: [u8; 3] = [0x40, 0x41, 0x42];

    fn op_strategy() -> impl Strategy<Value = Op> {
        // Mostly a few pins, so that line changes, writes and EOIs meet on the same entry.
        let pin = prop_oneof![3 => 0u32..4, 1 => 0u32..26];
        let entry_pin = prop_oneof![3 => 0u8..4, 1 => 0u8..NUM_PINS as u8];
        // Low dwords built from the interesting bits plus random noise.
        let low = (0usize..3, prop_oneof![3 => 0u32..2, 1 => 0u32..8], any::<[bool; 5]>(), any::<u32>()).prop_map(
            |(v, mode, b, noise)| {
                let mut value = u32::from(VECTORS[v]) | (mode << 8) | (noise & 0xFFFE_0000);
                for (bit, flag) in [11, 12, 13, 14, 15].into_iter().zip(b) {
                    value |= u32::from(flag) << bit;
                }
                // Mask with probability ~1/2 driven by the noise.
                value | ((noise & 1) << 16)
            },
        );
        prop_oneof![
            (pin.clone(), any::<bool>()).prop_map(|(p, l)| Op::SetLevel(p, l)),
            pin.prop_map(Op::Pulse),
            prop::sample::select(&[0x40u8, 0x41, 0x42, 0x99][..]).prop_map(Op::Eoi),
            (entry_pin.clone(), low).prop_map(|(pin, value)| Op::WriteLow { pin, value }),
            (entry_pin, any::<u32>()).prop_map(|(pin, value)| Op::WriteHigh { pin, value }),
            (0u32..0x48).prop_map(Op::Select),
            any::<u32>().prop_map(Op::Window),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn level_never_delivered_with_remote_irr_set(ops in prop::collection::vec(op_strategy(), 1..80)) {
            let mut io = VIoApic::new(0);
            for op in &ops {
                let before: [RedirectionEntry; NUM_PINS] = core::array::from_fn(|p| io.entry(p as u32).unwrap());
                let mut delivered = [None; NUM_PINS];
                let mut eoi_vector = None;
                match *op {
                    Op::SetLevel(pin, level) => {
                        let r = io.set_level(pin, level);
                        prop_assert_eq!(r.is_err(), pin >= NUM_PINS as u32);
                        if let Ok(Some(irq)) = r {
                            delivered[usize::from(irq.pin)] = Some(irq);
                        }
                    }
                    Op::Pulse(pin) => {
                        let r = io.pulse(pin);
                        prop_assert_eq!(r.is_err(), pin >= NUM_PINS as u32);
                        if let Ok(Some(irq)) = r {
                            delivered[usize::from(irq.pin)] = Some(irq);
                        }
                    }
                    Op::Eoi(vector) => {
                        delivered = io.eoi(vector);
                        eoi_vector = Some(vector);
                    }
                    Op::WriteLow { pin, value } | Op::WriteHigh { pin, value } => {
                        let index = low_index(pin) + u8::from(matches!(op, Op::WriteHigh { .. }));
                        let effect = write_reg(&mut io, index, value);
                        prop_assert_eq!(effect.entry_written, Some(pin));
                        if let Some(irq) = effect.deliver {
                            delivered[usize::from(irq.pin)] = Some(irq);
                        }
                    }
                    Op::Select(value) => {
                        prop_assert_eq!(io.mmio_write(IOREGSEL_OFFSET, value, 4), IoapicEffect::default());
                    }
                    Op::Window(value) => {
                        let index = io.mmio_read(IOREGSEL_OFFSET, 4) as u8;
                        let effect = io.mmio_write(IOWIN_OFFSET, value, 4);
                        if let Some(irq) = effect.deliver {
                            prop_assert_eq!(effect.entry_written, Some(irq.pin));
                            prop_assert!((REG_REDTBL_BASE..=REG_REDTBL_LAST).contains(&index));
                            delivered[usize::from(irq.pin)] = Some(irq);
                        }
                    }
                }
                for (pin, irq) in delivered.iter().enumerate() {
                    let after = io.entry(pin as u32).unwrap();
                    // Invariants holding for every pin after every operation.
                    prop_assert!(!after.delivery_pending());
                    prop_assert!(!after.remote_irr() || after.effectively_level());
                    let Some(irq) = irq else { continue };
                    prop_assert_eq!(usize::from(irq.pin), pin);
                    prop_assert!(!after.masked());
                    prop_assert_eq!(irq.vector, after.vector());
                    prop_assert_eq!(Some(irq.delivery_mode), after.delivery_mode());
                    prop_assert_eq!(irq.level_triggered, after.effectively_level());
                    if irq.level_triggered {
                        // Remote IRR was clear before, or cleared by this very EOI.
                        let cleared_by_eoi = eoi_vector == Some(before[pin].vector()) && before[pin].effectively_level();
                        prop_assert!(!before[pin].remote_irr() || cleared_by_eoi);
                        prop_assert!(after.remote_irr());
                    }
                }
                if eoi_vector.is_none() {
                    prop_assert!(delivered.iter().flatten().count() <= 1);
                }
            }
        }
    }
}
