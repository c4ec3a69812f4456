//! The PC's two cascaded interrupt controllers: Intel 8259A master at 0x20/0x21 (IRQ
//! 0-7), slave at 0xA0/0xA1 (IRQ 8-15) wired to master input IR2, and the PIIX-style
//! edge/level control registers (ELCR) at 0x4D0/0x4D1.
//!
//! Written from the Intel 8259A datasheet ("8259A Programmable Interrupt Controller",
//! order number 231468); names below are its sections: "Interrupt Sequence",
//! "Initialization Command Words" (ICW1-ICW4), "Operation Command Words" (OCW1-OCW3),
//! "Fully Nested Mode", "End of Interrupt", "Automatic End of Interrupt (AEOI) Mode",
//! "Automatic Rotation", "Specific Rotation", "Special Mask Mode", "Poll Command",
//! "Reading the 8259A Status", "Edge and Level Triggered Modes", "The Special Fully
//! Nested Mode", "Cascade Mode". The ELCR follows the Intel PIIX4 datasheet (82371AB,
//! "ELCR1/ELCR2 — Edge/Level Control Registers"): one bit per IRQ, 1 = level; IRQ 0, 1,
//! 2, 8 and 13 are always edge-triggered (those bits read 0).
//!
//! Ports: 0x20/0xA0 (A0 = 0) take ICW1 (bit 4 set), OCW2 (bits 4:3 = 00) and OCW3 (bits
//! 4:3 = 01) and read IRR or ISR as OCW3 selected (IRR after ICW1); 0x21/0xA1 (A0 = 1)
//! take ICW2-ICW4 while an initialization sequence is under way, OCW1 otherwise, and
//! read IMR. After an OCW3 poll command, the next read of either port is the poll byte.
//! Accesses wider than a byte are split into byte accesses at consecutive ports, low
//! byte first; undecoded ports read 0xFF.
//!
//! Modelling decisions:
//! - **Inputs.** [`PicPair::set_irq`] drives the 15 IR inputs (line 2 is the cascade,
//!   driven by the slave's INT output; `set_irq(2, ..)` is ignored). An input is
//!   level-triggered if its chip's ICW1 LTIM bit or its ELCR bit is set, else
//!   edge-triggered. Edge: a low-to-high transition sets the IRR bit, which stays set
//!   (even if the line falls again) until the request is acknowledged or ICW1 resets the
//!   edge sense; a line held high requests once. Level: the IRR bit is the line, so a
//!   request that goes away before INTA gives the default IR7 ("Edge and Level
//!   Triggered Modes"), and one still high after EOI is requested again. Edge requests
//!   deliberately survive a pulse shorter than the INTA sequence (the PIT and other
//!   models pulse their lines), where the datasheet wants IR high until the first INTA.
//! - **INT.** A chip requests (INT) when it is initialized (a full ICW sequence has
//!   been written and no new one is under way) and an unmasked IRR bit has higher
//!   priority than every ISR bit ("Fully Nested Mode"). [`PicPair::output`] is the
//!   master's INT.
//! - **INTA.** [`PicPair::acknowledge`] is one 8086-mode INTA sequence ("Interrupt
//!   Sequence"): the master's highest request moves from IRR to ISR (or not, with AEOI)
//!   and the vector is ICW2 bits 7:3 with the level in bits 2:0. If that level is a
//!   cascade input (master ICW3), the slave whose ID (slave ICW3) matches answers with
//!   its own vector the same way; if none matches, the bus floats and the vector is
//!   0xFF. With no request, the chip answers with its IR7 vector and sets no ISR bit:
//!   spurious IRQ 7 on the master; spurious IRQ 15 when the master's IR2 latched an
//!   edge of the slave's INT but the slave's request has gone (its line fell, level
//!   mode, or it was masked) — the master's IR2 ISR bit is then set, as on hardware, so
//!   the guest must EOI the master only. The slave's INT output drops during its INTA
//!   sequence: if it still requests afterwards (AEOI, special mask), the master sees a
//!   new edge on IR2. MCS-80/85 mode (ICW4 µPM = 0, or no ICW4) and an uninitialized
//!   master have no x86 vector: `acknowledge` then returns `None` and changes nothing.
//!   The caller is expected to acknowledge while [`PicPair::output`] is true; otherwise
//!   it gets the spurious vector, as a CPU would.
//! - **EOI and rotation** (OCW2): non-specific EOI, specific EOI, rotate on
//!   non-specific / specific EOI, set priority, rotate in AEOI mode set/clear, no-op,
//!   all implemented. In special mask mode a non-specific EOI skips masked ISR bits
//!   ("End of Interrupt").
//! - **Special mask mode** (OCW3 ESMM/SMM): ISR bits stop inhibiting other levels; an
//!   unmasked request is taken unless its own level is in service.
//! - **Special fully nested mode** (ICW4 SFNM, master): a cascade input in service
//!   does not inhibit a new request on that same input, so a higher-priority slave
//!   request nests.
//! - **Not modelled:** buffered mode (ICW4 BUF, M/S: the chips' roles are fixed by
//!   their ports), ICW1 ADI and the MCS-80 address bits, and the first-INTA timing.
//!   ICW1 also clears ISR (the datasheet lists only the other effects; software
//!   initializes with nothing in service).

use crate::{read_bytewise, write_bytewise, Nanos, Platform, PortIo};

/// Master command port (ICW1, OCW2, OCW3; reads IRR/ISR).
pub const MASTER_CMD: u16 = 0x20;
/// Master data port (ICW2-ICW4, OCW1 = IMR).
pub const MASTER_DATA: u16 = 0x21;
/// Slave command port.
pub const SLAVE_CMD: u16 = 0xA0;
/// Slave data port.
pub const SLAVE_DATA: u16 = 0xA1;
/// Edge/level control for IRQ 0-7.
pub const ELCR_MASTER: u16 = 0x4D0;
/// Edge/level control for IRQ 8-15.
pub const ELCR_SLAVE: u16 = 0x4D1;
/// The master input the slave's INT drives.
pub const CASCADE_IRQ: u8 = 2;

/// ELCR bits that can be set: IRQ 0, 1, 2 and 8, 13 are always edge-triggered.
const ELCR_MASTER_MASK: u8 = 0xF8;
const ELCR_SLAVE_MASK: u8 = 0xDE;

// ICW1 (A0 = 0, D4 = 1).
const ICW1: u8 = 1 << 4;
const ICW1_IC4: u8 = 1 << 0;
const ICW1_SNGL: u8 = 1 << 1;
const ICW1_LTIM: u8 = 1 << 3;
// ICW4.
const ICW4_UPM: u8 = 1 << 0;
const ICW4_AEOI: u8 = 1 << 1;
const ICW4_SFNM: u8 = 1 << 4;
// OCW3 (A0 = 0, D4:D3 = 01).
const OCW3: u8 = 1 << 3;
const OCW3_RIS: u8 = 1 << 0;
const OCW3_RR: u8 = 1 << 1;
const OCW3_POLL: u8 = 1 << 2;
const OCW3_SMM: u8 = 1 << 5;
const OCW3_ESMM: u8 = 1 << 6;
// OCW2: R SL EOI in bits 7:5, the level in bits 2:0.
const OCW2_EOI: u8 = 0b001; // (0b010 is a no-op)
const OCW2_SPECIFIC_EOI: u8 = 0b011;
const OCW2_ROTATE_AEOI_CLEAR: u8 = 0b000;
const OCW2_ROTATE_AEOI_SET: u8 = 0b100;
const OCW2_ROTATE_EOI: u8 = 0b101;
const OCW2_SET_PRIORITY: u8 = 0b110;
const OCW2_ROTATE_SPECIFIC_EOI: u8 = 0b111;
/// Poll byte: an interrupt is requesting (bits 2:0 = its level).
const POLL_INT: u8 = 0x80;

/// Where a chip is in its initialization sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Init {
    /// Never initialized.
    Reset,
    Icw2,
    Icw3,
    Icw4,
    Ready,
}

/// One 8259A.
#[derive(Debug, Clone)]
struct Pic {
    master: bool,
    /// IRR bits latched by edges (used for edge-triggered inputs).
    edges: u8,
    isr: u8,
    imr: u8,
    /// Current level of each IR input.
    lines: u8,
    elcr: u8,
    icw1: u8,
    /// ICW2 bits 7:3.
    vector_base: u8,
    icw3: u8,
    icw4: u8,
    init: Init,
    /// The lowest-priority level; the one after it (mod 8) is the highest.
    lowest: u8,
    /// OCW3 RIS: port A0 = 0 reads ISR rather than IRR.
    read_isr: bool,
    /// OCW3 P: the next read is the poll byte.
    poll: bool,
    special_mask: bool,
    rotate_in_aeoi: bool,
}

impl Pic {
    const fn new(master: bool) -> Self {
        Self {
            master,
            edges: 0,
            isr: 0,
            imr: 0,
            lines: 0,
            elcr: 0,
            icw1: 0,
            vector_base: 0,
            icw3: 0,
            icw4: 0,
            init: Init::Reset,
            lowest: 7,
            read_isr: false,
            poll: false,
            special_mask: false,
            rotate_in_aeoi: false,
        }
    }

    const fn ready(&self) -> bool {
        matches!(self.init, Init::Ready)
    }

    /// Inputs that are level-triggered.
    const fn level_triggered(&self) -> u8 {
        if self.icw1 & ICW1_LTIM != 0 {
            0xFF
        } else {
            self.elcr
        }
    }

    const fn irr(&self) -> u8 {
        let level = self.level_triggered();
        (self.edges & !level) | (self.lines & level)
    }

    /// Whether IR `level` has a slave on it (master ICW3 in cascade mode).
    const fn is_cascade(&self, level: u8) -> bool {
        self.master && self.icw1 & ICW1_SNGL == 0 && self.icw3 & (1 << level) != 0
    }

    const fn vector(&self, level: u8) -> u8 {
        self.vector_base | level
    }

    /// 0 for the highest-priority level, 7 for the lowest.
    const fn rank(&self, level: u8) -> u8 {
        level.wrapping_sub(self.lowest).wrapping_sub(1) & 7
    }

    /// The highest-priority level among `bits`.
    fn highest(&self, bits: u8) -> Option<u8> {
        (0..8).filter(|&level| bits & (1 << level) != 0).min_by_key(|&level| self.rank(level))
    }

    /// The level this chip would have acknowledged now: INT is asserted when it is some.
    fn pending(&self) -> Option<u8> {
        if !self.ready() {
            return None;
        }
        let requests = self.irr() & !self.imr;
        if self.special_mask {
            // "Special Mask Mode": only the masks (and the level's own ISR bit) inhibit.
            return self.highest(requests & !self.isr);
        }
        let level = self.highest(requests)?;
        match self.highest(self.isr) {
            None => Some(level),
            Some(current) if self.rank(level) < self.rank(current) => Some(level),
            // "The Special Fully Nested Mode": a cascade input in service lets its own
            // slave's new (higher-priority) requests through.
            Some(current) if current == level && self.icw4 & ICW4_SFNM != 0 && self.is_cascade(level) => Some(level),
            Some(_) => None,
        }
    }

    /// Sets the level of IR input `level`.
    fn set_line(&mut self, level: u8, high: bool) {
        let bit = 1 << level;
        if high && self.lines & bit == 0 && self.level_triggered() & bit == 0 {
            self.edges |= bit;
        }
        if high {
            self.lines |= bit;
        } else {
            self.lines &= !bit;
        }
    }

    /// A write of the ELCR: inputs made level-triggered drop their edge latches.
    fn set_elcr(&mut self, value: u8) {
        self.elcr = value;
        self.edges &= !self.level_triggered();
    }

    /// The INTA (or poll) of `level`: IRR to ISR, or straight through with AEOI.
    fn acknowledge(&mut self, level: u8) {
        let bit = 1 << level;
        self.edges &= !bit;
        if self.icw4 & ICW4_AEOI == 0 {
            self.isr |= bit;
        } else if self.rotate_in_aeoi {
            self.lowest = level;
        }
    }

    /// The poll byte ("Poll Command"): it acknowledges the request it reports, as an
    /// INTA would (AEOI included).
    fn poll_byte(&mut self) -> u8 {
        match self.pending() {
            Some(level) => {
                self.acknowledge(level);
                POLL_INT | level
            }
            None => 0,
        }
    }

    fn read(&mut self, a0: bool) -> u8 {
        if self.poll {
            self.poll = false;
            return self.poll_byte();
        }
        if a0 {
            self.imr
        } else if self.read_isr {
            self.isr
        } else {
            self.irr()
        }
    }

    fn write(&mut self, a0: bool, value: u8) {
        match (a0, self.init) {
            (false, _) if value & ICW1 != 0 => self.write_icw1(value),
            (false, _) if value & OCW3 != 0 => self.write_ocw3(value),
            (false, _) => self.write_ocw2(value),
            (true, Init::Icw2) => {
                self.vector_base = value & 0xF8;
                self.init = if self.icw1 & ICW1_SNGL == 0 {
                    Init::Icw3
                } else if self.icw1 & ICW1_IC4 != 0 {
                    Init::Icw4
                } else {
                    Init::Ready
                };
            }
            (true, Init::Icw3) => {
                self.icw3 = value;
                self.init = if self.icw1 & ICW1_IC4 != 0 { Init::Icw4 } else { Init::Ready };
            }
            (true, Init::Icw4) => {
                self.icw4 = value;
                self.init = Init::Ready;
            }
            (true, _) => self.imr = value, // OCW1
        }
    }

    /// ICW1 ("Initialization Command Words"): resets the edge sense, IMR, priorities,
    /// special mask mode and the status read selection; ICW4 functions are cleared
    /// unless an ICW4 follows.
    fn write_icw1(&mut self, value: u8) {
        self.icw1 = value;
        self.edges = 0;
        self.isr = 0;
        self.imr = 0;
        self.icw3 = 0;
        self.icw4 = 0;
        self.lowest = 7;
        self.read_isr = false;
        self.poll = false;
        self.special_mask = false;
        self.rotate_in_aeoi = false;
        self.init = Init::Icw2;
    }

    /// OCW2: EOI and priority rotation commands.
    fn write_ocw2(&mut self, value: u8) {
        let level = value & 7;
        match value >> 5 {
            OCW2_EOI | OCW2_ROTATE_EOI => {
                let in_service = if self.special_mask { self.isr & !self.imr } else { self.isr };
                if let Some(done) = self.highest(in_service) {
                    self.isr &= !(1 << done);
                    if value >> 5 == OCW2_ROTATE_EOI {
                        self.lowest = done;
                    }
                }
            }
            OCW2_SPECIFIC_EOI => self.isr &= !(1 << level),
            OCW2_ROTATE_SPECIFIC_EOI => {
                self.isr &= !(1 << level);
                self.lowest = level;
            }
            OCW2_SET_PRIORITY => self.lowest = level,
            OCW2_ROTATE_AEOI_SET => self.rotate_in_aeoi = true,
            OCW2_ROTATE_AEOI_CLEAR => self.rotate_in_aeoi = false,
            _ => {} // no operation
        }
    }

    /// OCW3: status read selection, poll command, special mask mode.
    fn write_ocw3(&mut self, value: u8) {
        if value & OCW3_ESMM != 0 {
            self.special_mask = value & OCW3_SMM != 0;
        }
        if value & OCW3_POLL != 0 {
            self.poll = true;
        }
        if value & OCW3_RR != 0 {
            self.read_isr = value & OCW3_RIS != 0;
        }
    }
}

/// The master and slave 8259A and the ELCR; see the module documentation.
#[derive(Debug, Clone)]
pub struct PicPair {
    master: Pic,
    slave: Pic,
}

impl Default for PicPair {
    fn default() -> Self {
        Self::new()
    }
}

impl PicPair {
    /// Both chips uninitialized (no INT until the guest writes the ICW sequences), all
    /// lines low, every IRQ edge-triggered.
    #[must_use]
    pub const fn new() -> Self {
        Self { master: Pic::new(true), slave: Pic::new(false) }
    }

    /// Sets the level of ISA line `irq` (0-15, except 2, the cascade). Edge-triggered
    /// inputs latch a request on a rising edge; level-triggered ones follow the line.
    pub fn set_irq(&mut self, irq: u8, high: bool) {
        match irq {
            CASCADE_IRQ => {}
            0..=7 => self.master.set_line(irq, high),
            8..=15 => self.slave.set_line(irq - 8, high),
            _ => {}
        }
        self.sync_cascade();
    }

    /// The master's INT output: an unmasked request with priority above everything in
    /// service.
    #[must_use]
    pub fn output(&self) -> bool {
        self.master.pending().is_some()
    }

    /// An INTA sequence: the vector to deliver, with IRR, ISR and the cascade updated as
    /// the module documentation describes; `None` (and no change) while the master is
    /// uninitialized or not in 8086 mode.
    pub fn acknowledge(&mut self) -> Option<u8> {
        if !self.master.ready() || self.master.icw4 & ICW4_UPM == 0 {
            return None;
        }
        let Some(level) = self.master.pending() else {
            return Some(self.master.vector(7)); // spurious IRQ 7: no ISR bit
        };
        if !self.master.is_cascade(level) {
            self.master.acknowledge(level);
            return Some(self.master.vector(level));
        }
        let slave = &mut self.slave;
        let vector = if !slave.ready() || slave.icw1 & ICW1_SNGL != 0 || slave.icw3 & 7 != level {
            0xFF // no slave answers: the data bus floats
        } else if let Some(slave_level) = slave.pending() {
            slave.acknowledge(slave_level);
            slave.vector(slave_level)
        } else {
            slave.vector(7) // spurious IRQ 15: no slave ISR bit, the master's IR2 is set
        };
        self.master.acknowledge(level);
        // The slave's INT drops during its INTA sequence; a request it still has is a
        // new edge on IR2.
        self.master.set_line(CASCADE_IRQ, false);
        self.sync_cascade();
        Some(vector)
    }

    /// Drives master IR2 from the slave's INT output.
    fn sync_cascade(&mut self) {
        let int = self.slave.pending().is_some();
        self.master.set_line(CASCADE_IRQ, int);
    }

    fn read_byte(&mut self, port: u16) -> Option<u8> {
        let value = match port {
            MASTER_CMD | MASTER_DATA => self.master.read(port == MASTER_DATA),
            SLAVE_CMD | SLAVE_DATA => self.slave.read(port == SLAVE_DATA),
            ELCR_MASTER => self.master.elcr,
            ELCR_SLAVE => self.slave.elcr,
            _ => return None,
        };
        self.sync_cascade(); // a poll read acknowledges
        Some(value)
    }

    fn write_byte(&mut self, port: u16, value: u8) {
        match port {
            MASTER_CMD | MASTER_DATA => self.master.write(port == MASTER_DATA, value),
            SLAVE_CMD | SLAVE_DATA => self.slave.write(port == SLAVE_DATA, value),
            ELCR_MASTER => self.master.set_elcr(value & ELCR_MASTER_MASK),
            ELCR_SLAVE => self.slave.set_elcr(value & ELCR_SLAVE_MASK),
            _ => {}
        }
        self.sync_cascade();
    }
}

impl PortIo for PicPair {
    fn read(&mut self, port: u16, size: u8, _now: Nanos, _platform: &mut dyn Platform) -> u32 {
        read_bytewise(port, size, |p| self.read_byte(p))
    }

    fn write(&mut self, port: u16, size: u8, value: u32, _now: Nanos, _platform: &mut dyn Platform) {
        write_bytewise(port, size, value, |p, byte| self.write_byte(p, byte));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{open_bus, RecordingPlatform};
    use proptest::prelude::*;

    fn outb(pic: &mut PicPair, port: u16, value: u8) {
        pic.write(port, 1, u32::from(value), 0, &mut RecordingPlatform::default());
    }

    fn inb(pic: &mut PicPair, port: u16) -> u8 {
        u8::try_from(pic.read(port, 1, 0, &mut RecordingPlatform::default())).unwrap()
    }

    fn pulse(pic: &mut PicPair, irq: u8) {
        pic.set_irq(irq, true);
        pic.set_irq(irq, false);
    }

    /// Linux's init_8259A() (with the historical vectors 0x20/0x28), then every IRQ
    /// unmasked.
    fn linux() -> PicPair {
        let mut pic = PicPair::new();
        outb(&mut pic, MASTER_DATA, 0xFF);
        outb(&mut pic, SLAVE_DATA, 0xFF);
        for (cmd, data, base, icw3) in [(MASTER_CMD, MASTER_DATA, 0x20, 0x04), (SLAVE_CMD, SLAVE_DATA, 0x28, 0x02)] {
            outb(&mut pic, cmd, 0x11); // ICW1: edge, cascade, ICW4 follows
            outb(&mut pic, data, base); // ICW2
            outb(&mut pic, data, icw3); // ICW3
            outb(&mut pic, data, 0x01); // ICW4: 8086 mode, normal EOI
        }
        outb(&mut pic, MASTER_DATA, 0x00);
        outb(&mut pic, SLAVE_DATA, 0x00);
        pic
    }

    fn isr(pic: &mut PicPair, cmd: u16) -> u8 {
        outb(pic, cmd, 0x0B);
        let value = inb(pic, cmd);
        outb(pic, cmd, 0x0A);
        value
    }

    fn irr(pic: &mut PicPair, cmd: u16) -> u8 {
        outb(pic, cmd, 0x0A);
        inb(pic, cmd)
    }

    #[test]
    fn init_as_linux_does() {
        let mut pic = PicPair::new();
        // probe_8259A(): the IMR reads back what was written, even before ICW1.
        outb(&mut pic, SLAVE_DATA, 0xFF);
        outb(&mut pic, MASTER_DATA, 0xFB);
        assert_eq!(inb(&mut pic, MASTER_DATA), 0xFB);
        pulse(&mut pic, 0);
        assert!(!pic.output(), "no INT before initialization");
        assert_eq!(pic.acknowledge(), None);
        let mut pic = linux();
        pulse(&mut pic, 0);
        assert!(pic.output());
        assert_eq!(pic.acknowledge(), Some(0x20));
        assert!(!pic.output());
        assert_eq!(isr(&mut pic, MASTER_CMD), 0x01);
        outb(&mut pic, MASTER_CMD, 0x60); // mask_and_ack_8259A(): specific EOI
        assert_eq!(isr(&mut pic, MASTER_CMD), 0);
        // A slave IRQ: the vector comes from the slave; EOI slave, then master IR2.
        pulse(&mut pic, 12);
        assert!(pic.output());
        assert_eq!(pic.acknowledge(), Some(0x2C));
        assert_eq!((isr(&mut pic, MASTER_CMD), isr(&mut pic, SLAVE_CMD)), (0x04, 0x10));
        outb(&mut pic, SLAVE_CMD, 0x64);
        outb(&mut pic, MASTER_CMD, 0x62);
        assert_eq!((isr(&mut pic, MASTER_CMD), isr(&mut pic, SLAVE_CMD)), (0, 0));
        assert!(!pic.output());
    }

    #[test]
    fn init_as_seabios_does() {
        // SeaBIOS pic_setup(): both ICW1 first, then ICW2, ICW3, ICW4 interleaved.
        let mut pic = PicPair::new();
        for (port, value) in [
            (MASTER_CMD, 0x11),
            (SLAVE_CMD, 0x11),
            (MASTER_DATA, 0x08),
            (SLAVE_DATA, 0x70),
            (MASTER_DATA, 0x04),
            (SLAVE_DATA, 0x02),
            (MASTER_DATA, 0x01),
            (SLAVE_DATA, 0x01),
            (MASTER_DATA, !0x04),
            (SLAVE_DATA, 0xFF),
        ] {
            outb(&mut pic, port, value);
        }
        pulse(&mut pic, 0);
        pulse(&mut pic, 14);
        assert!(!pic.output(), "all masked but the cascade");
        outb(&mut pic, MASTER_DATA, !0x05); // enable IRQ 0
        assert_eq!(pic.acknowledge(), Some(0x08));
        outb(&mut pic, MASTER_CMD, 0x20);
        outb(&mut pic, SLAVE_DATA, !0x40); // enable IRQ 14
        assert_eq!(pic.acknowledge(), Some(0x76));
        outb(&mut pic, SLAVE_CMD, 0x20);
        outb(&mut pic, MASTER_CMD, 0x20);
        assert!(!pic.output());
    }

    #[test]
    fn masked_requests_wait_in_irr() {
        let mut pic = linux();
        outb(&mut pic, MASTER_DATA, 0x08);
        pulse(&mut pic, 3);
        assert!(!pic.output());
        assert_eq!(irr(&mut pic, MASTER_CMD), 0x08);
        outb(&mut pic, MASTER_DATA, 0x00);
        assert_eq!(pic.acknowledge(), Some(0x23));
        outb(&mut pic, MASTER_CMD, 0x20);
        // Masking IR2 on the master masks the whole slave; a masked slave line too.
        outb(&mut pic, MASTER_DATA, 0x04);
        pulse(&mut pic, 9);
        assert!(!pic.output());
        outb(&mut pic, MASTER_DATA, 0x00);
        assert_eq!(pic.acknowledge(), Some(0x29));
        outb(&mut pic, SLAVE_CMD, 0x20);
        outb(&mut pic, MASTER_CMD, 0x20);
        outb(&mut pic, SLAVE_DATA, 0x40);
        pulse(&mut pic, 14);
        assert!(!pic.output());
        assert_eq!(irr(&mut pic, SLAVE_CMD), 0x40);
    }

    #[test]
    fn priority_nesting_and_eoi() {
        let mut pic = linux();
        pulse(&mut pic, 5);
        pulse(&mut pic, 3);
        assert_eq!(pic.acknowledge(), Some(0x23), "IR3 before IR5");
        assert!(!pic.output(), "IR5 waits while IR3 is in service");
        pulse(&mut pic, 1);
        assert!(pic.output(), "IR1 nests over IR3");
        assert_eq!(pic.acknowledge(), Some(0x21));
        assert_eq!(isr(&mut pic, MASTER_CMD), 0x0A);
        // Non-specific EOI ends the highest level in service.
        outb(&mut pic, MASTER_CMD, 0x20);
        assert_eq!(isr(&mut pic, MASTER_CMD), 0x08);
        assert!(!pic.output());
        outb(&mut pic, MASTER_CMD, 0x20);
        assert_eq!(pic.acknowledge(), Some(0x25));
        // Specific EOI ends exactly the level named, whatever its priority.
        pulse(&mut pic, 0);
        assert_eq!(pic.acknowledge(), Some(0x20));
        assert_eq!(isr(&mut pic, MASTER_CMD), 0x21);
        outb(&mut pic, MASTER_CMD, 0x65);
        assert_eq!(isr(&mut pic, MASTER_CMD), 0x01);
        // A slave IRQ in service blocks lower master levels and the other slave ones,
        // not master IR0/IR1.
        outb(&mut pic, MASTER_CMD, 0x20);
        pulse(&mut pic, 10);
        assert_eq!(pic.acknowledge(), Some(0x2A));
        pulse(&mut pic, 8);
        pulse(&mut pic, 4);
        assert!(!pic.output());
        pulse(&mut pic, 1);
        assert_eq!(pic.acknowledge(), Some(0x21));
        outb(&mut pic, MASTER_CMD, 0x20);
        outb(&mut pic, SLAVE_CMD, 0x20);
        outb(&mut pic, MASTER_CMD, 0x20);
        assert_eq!(pic.acknowledge(), Some(0x28), "the slave's IR0 outranks master IR4");
    }

    #[test]
    fn spurious_irq7_and_irq15() {
        let mut pic = linux();
        // Nothing requesting: IR7's vector, no ISR bit.
        assert_eq!(pic.acknowledge(), Some(0x27));
        assert_eq!(isr(&mut pic, MASTER_CMD), 0);
        // A level-triggered request that goes away before INTA: default IR7.
        outb(&mut pic, ELCR_MASTER, 0x20);
        pic.set_irq(5, true);
        assert!(pic.output());
        pic.set_irq(5, false);
        assert_eq!(pic.acknowledge(), Some(0x27));
        assert_eq!(isr(&mut pic, MASTER_CMD), 0);
        // A slave request that goes away after the master latched IR2: the slave
        // answers IR7 (IRQ 15) without an ISR bit, the master's IR2 is in service.
        outb(&mut pic, ELCR_SLAVE, 0x04);
        pic.set_irq(10, true);
        pic.set_irq(10, false);
        assert!(pic.output());
        assert_eq!(pic.acknowledge(), Some(0x2F));
        assert_eq!((isr(&mut pic, MASTER_CMD), isr(&mut pic, SLAVE_CMD)), (0x04, 0));
        // The same after the slave masked its request.
        outb(&mut pic, MASTER_CMD, 0x20);
        pulse(&mut pic, 12);
        outb(&mut pic, SLAVE_DATA, 0x10);
        assert_eq!(pic.acknowledge(), Some(0x2F));
    }

    #[test]
    fn elcr_level_interrupt_is_raised_again_after_eoi_while_high() {
        let mut pic = linux();
        outb(&mut pic, ELCR_MASTER, 0xFF);
        outb(&mut pic, ELCR_SLAVE, 0xFF);
        assert_eq!((inb(&mut pic, ELCR_MASTER), inb(&mut pic, ELCR_SLAVE)), (0xF8, 0xDE));
        assert_eq!(pic.read(ELCR_MASTER, 2, 0, &mut RecordingPlatform::default()), 0xDEF8);
        pic.set_irq(11, true);
        assert_eq!(pic.acknowledge(), Some(0x2B));
        assert!(!pic.output(), "in service");
        outb(&mut pic, SLAVE_CMD, 0x20);
        outb(&mut pic, MASTER_CMD, 0x20);
        assert!(pic.output(), "still high after EOI: requested again");
        assert_eq!(pic.acknowledge(), Some(0x2B));
        pic.set_irq(11, false); // the handler quiets the device before EOI
        outb(&mut pic, SLAVE_CMD, 0x20);
        outb(&mut pic, MASTER_CMD, 0x20);
        assert!(!pic.output());
        // Edge-triggered (ELCR bit clear): a line held high requests once.
        outb(&mut pic, ELCR_SLAVE, 0x00);
        pic.set_irq(11, true);
        assert_eq!(pic.acknowledge(), Some(0x2B));
        outb(&mut pic, SLAVE_CMD, 0x20);
        outb(&mut pic, MASTER_CMD, 0x20);
        assert!(!pic.output());
        // ICW1 LTIM makes every input of that chip level-triggered.
        outb(&mut pic, MASTER_CMD, 0x19);
        outb(&mut pic, MASTER_DATA, 0x20);
        outb(&mut pic, MASTER_DATA, 0x04);
        outb(&mut pic, MASTER_DATA, 0x01);
        pic.set_irq(1, true);
        assert_eq!(pic.acknowledge(), Some(0x21));
        outb(&mut pic, MASTER_CMD, 0x20);
        assert_eq!(pic.acknowledge(), Some(0x21));
    }

    #[test]
    fn icw1_resets_the_edge_sense() {
        let mut pic = linux();
        pic.set_irq(3, true);
        let mut pic2 = pic.clone();
        // Re-initializing drops the request, and the line held high does not re-request.
        outb(&mut pic2, MASTER_CMD, 0x11);
        for value in [0x20, 0x04, 0x01] {
            outb(&mut pic2, MASTER_DATA, value);
        }
        assert!(!pic2.output());
        pic2.set_irq(3, false);
        pic2.set_irq(3, true);
        assert_eq!(pic2.acknowledge(), Some(0x23));
        assert_eq!(pic.acknowledge(), Some(0x23));
    }

    #[test]
    fn ocw3_selects_irr_or_isr() {
        let mut pic = linux();
        pulse(&mut pic, 4);
        pulse(&mut pic, 6);
        assert_eq!(inb(&mut pic, MASTER_CMD), 0x50, "IRR after ICW1");
        assert_eq!(pic.acknowledge(), Some(0x24));
        outb(&mut pic, MASTER_CMD, 0x0B);
        assert_eq!(inb(&mut pic, MASTER_CMD), 0x10);
        outb(&mut pic, MASTER_CMD, 0x08); // RR = 0: the selection stays
        assert_eq!(inb(&mut pic, MASTER_CMD), 0x10);
        outb(&mut pic, MASTER_CMD, 0x0A);
        assert_eq!(inb(&mut pic, MASTER_CMD), 0x40);
        assert_eq!(inb(&mut pic, MASTER_DATA), 0x00, "A0 = 1 reads IMR");
    }

    #[test]
    fn poll_command() {
        let mut pic = linux();
        outb(&mut pic, MASTER_CMD, 0x0C);
        assert_eq!(inb(&mut pic, MASTER_CMD), 0x00, "nothing requesting");
        assert_eq!(inb(&mut pic, MASTER_CMD), 0x00, "back to IRR");
        pulse(&mut pic, 6);
        pulse(&mut pic, 3);
        outb(&mut pic, MASTER_CMD, 0x0C);
        assert_eq!(inb(&mut pic, MASTER_DATA), 0x83, "poll works on either port");
        assert_eq!(isr(&mut pic, MASTER_CMD), 0x08);
        outb(&mut pic, MASTER_CMD, 0x20);
        outb(&mut pic, MASTER_CMD, 0x0C);
        assert_eq!(inb(&mut pic, MASTER_CMD), 0x86);
        // Polling the slave after the master reports the cascade.
        outb(&mut pic, MASTER_CMD, 0x20);
        pulse(&mut pic, 13);
        outb(&mut pic, MASTER_CMD, 0x0C);
        assert_eq!(inb(&mut pic, MASTER_CMD), 0x82);
        outb(&mut pic, SLAVE_CMD, 0x0C);
        assert_eq!(inb(&mut pic, SLAVE_CMD), 0x85);
    }

    #[test]
    fn auto_eoi_and_rotation_in_aeoi() {
        let mut pic = PicPair::new();
        for (port, value) in [(MASTER_CMD, 0x11), (MASTER_DATA, 0x20), (MASTER_DATA, 0x04), (MASTER_DATA, 0x03)] {
            outb(&mut pic, port, value);
        }
        for (port, value) in [(SLAVE_CMD, 0x11), (SLAVE_DATA, 0x28), (SLAVE_DATA, 0x02), (SLAVE_DATA, 0x03)] {
            outb(&mut pic, port, value);
        }
        pulse(&mut pic, 3);
        pulse(&mut pic, 4);
        assert_eq!(pic.acknowledge(), Some(0x23));
        assert_eq!(isr(&mut pic, MASTER_CMD), 0, "AEOI: nothing stays in service");
        assert_eq!(pic.acknowledge(), Some(0x24));
        // Two slave requests under AEOI: the second is not lost at the cascade.
        pulse(&mut pic, 9);
        pulse(&mut pic, 12);
        assert_eq!(pic.acknowledge(), Some(0x29));
        assert!(pic.output());
        assert_eq!(pic.acknowledge(), Some(0x2C));
        assert!(!pic.output());
        // Rotate in AEOI mode: each acknowledged level becomes the lowest priority.
        outb(&mut pic, MASTER_CMD, 0x80);
        pulse(&mut pic, 1);
        assert_eq!(pic.acknowledge(), Some(0x21));
        pulse(&mut pic, 1);
        pulse(&mut pic, 5);
        assert_eq!(pic.acknowledge(), Some(0x25), "IR1 is now lowest");
        outb(&mut pic, MASTER_CMD, 0x00);
        assert_eq!(pic.acknowledge(), Some(0x21));
    }

    #[test]
    fn rotation_commands() {
        let mut pic = linux();
        // Set priority: IR4 lowest, so the order is 5 6 7 0 1 2 3 4.
        outb(&mut pic, MASTER_CMD, 0xC4);
        pulse(&mut pic, 0);
        pulse(&mut pic, 5);
        assert_eq!(pic.acknowledge(), Some(0x25));
        assert!(!pic.output(), "IR0 now ranks below IR5 in service");
        outb(&mut pic, MASTER_CMD, 0x20);
        assert_eq!(pic.acknowledge(), Some(0x20));
        // Rotate on non-specific EOI: IR0 ends and becomes the lowest (1 2 ... 7 0).
        outb(&mut pic, MASTER_CMD, 0xA0);
        assert_eq!(isr(&mut pic, MASTER_CMD), 0);
        pulse(&mut pic, 0);
        pulse(&mut pic, 7);
        assert_eq!(pic.acknowledge(), Some(0x27));
        // Rotate on specific EOI: IR7 ends and becomes the lowest (0 1 ... 7 again).
        outb(&mut pic, MASTER_CMD, 0xE7);
        assert_eq!(isr(&mut pic, MASTER_CMD), 0);
        pulse(&mut pic, 7);
        assert_eq!(pic.acknowledge(), Some(0x20));
        // No-op and an EOI for a level not in service change nothing.
        outb(&mut pic, MASTER_CMD, 0x40);
        outb(&mut pic, MASTER_CMD, 0x63);
        assert_eq!(isr(&mut pic, MASTER_CMD), 0x01);
    }

    #[test]
    fn special_mask_mode() {
        let mut pic = linux();
        pulse(&mut pic, 1);
        assert_eq!(pic.acknowledge(), Some(0x21));
        pulse(&mut pic, 6);
        assert!(!pic.output(), "fully nested: IR6 waits for IR1");
        // The IR1 handler masks its own level and enters special mask mode: lower
        // levels get through.
        outb(&mut pic, MASTER_DATA, 0x02);
        outb(&mut pic, MASTER_CMD, 0x68);
        assert!(pic.output());
        assert_eq!(pic.acknowledge(), Some(0x26));
        assert_eq!(isr(&mut pic, MASTER_CMD), 0x42);
        // A non-specific EOI skips the masked IR1 and ends IR6.
        outb(&mut pic, MASTER_CMD, 0x20);
        assert_eq!(isr(&mut pic, MASTER_CMD), 0x02);
        // Leaving special mask mode restores the priority structure.
        outb(&mut pic, MASTER_CMD, 0x48);
        outb(&mut pic, MASTER_DATA, 0x00);
        pulse(&mut pic, 6);
        assert!(!pic.output());
        outb(&mut pic, MASTER_CMD, 0x61);
        assert_eq!(pic.acknowledge(), Some(0x26));
    }

    #[test]
    fn special_fully_nested_mode_lets_higher_slave_requests_nest() {
        for (sfnm, nests) in [(false, false), (true, true)] {
            let mut pic = linux();
            outb(&mut pic, MASTER_CMD, 0x11);
            for value in [0x20, 0x04, if sfnm { 0x11 } else { 0x01 }] {
                outb(&mut pic, MASTER_DATA, value);
            }
            pulse(&mut pic, 12);
            assert_eq!(pic.acknowledge(), Some(0x2C));
            pulse(&mut pic, 9);
            assert_eq!(pic.output(), nests);
            if nests {
                assert_eq!(pic.acknowledge(), Some(0x29));
                assert_eq!(isr(&mut pic, SLAVE_CMD), 0x12);
            }
            pulse(&mut pic, 13);
            assert!(!pic.output() || !nests, "a lower slave level does not nest");
        }
    }

    #[test]
    fn mcs80_mode_and_missing_slave_have_no_vector() {
        let mut pic = PicPair::new();
        outb(&mut pic, MASTER_CMD, 0x12); // single, no ICW4: MCS-80/85 mode
        outb(&mut pic, MASTER_DATA, 0x20);
        pulse(&mut pic, 0);
        assert!(pic.output());
        assert_eq!(pic.acknowledge(), None);
        assert!(pic.output(), "nothing changed");
        // Master with a slave on IR2, but the slave's ID is 3: nobody answers.
        let mut pic = linux();
        outb(&mut pic, SLAVE_CMD, 0x11);
        for value in [0x28, 0x03, 0x01] {
            outb(&mut pic, SLAVE_DATA, value);
        }
        pulse(&mut pic, 8);
        assert_eq!(pic.acknowledge(), Some(0xFF));
        // A single-mode master treats IR2 as an ordinary input.
        let mut pic = linux();
        outb(&mut pic, MASTER_CMD, 0x13);
        outb(&mut pic, MASTER_DATA, 0x40);
        outb(&mut pic, MASTER_DATA, 0x01);
        pulse(&mut pic, 9);
        assert_eq!(pic.acknowledge(), Some(0x42));
    }

    #[test]
    fn wide_and_undecoded_accesses() {
        let mut pic = linux();
        let mut p = RecordingPlatform::default();
        pic.write(MASTER_CMD, 2, 0xA5_0B, 0, &mut p); // OCW3 read ISR, then IMR = 0xA5
        assert_eq!(pic.read(MASTER_CMD, 2, 0, &mut p), 0xA5_00);
        assert_eq!(pic.read(0x22, 1, 0, &mut p), 0xFF);
        assert_eq!(pic.read(0xFFFF, 4, 0, &mut p), 0xFFFF_FFFF);
        assert_eq!(pic.read(MASTER_CMD, 3, 0, &mut p), open_bus(3));
        pic.write(MASTER_DATA, 0, 0, 0, &mut p);
        assert_eq!(inb(&mut pic, MASTER_DATA), 0xA5);
        assert_eq!((pic.next_event(), p), (None, RecordingPlatform::default()));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Write { port: u16, size: u8, value: u32 },
        Read { port: u16, size: u8 },
        Irq { irq: u8, high: bool },
        Ack,
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        let port = prop_oneof![
            Just(MASTER_CMD),
            Just(MASTER_DATA),
            Just(SLAVE_CMD),
            Just(SLAVE_DATA),
            Just(ELCR_MASTER),
            Just(ELCR_SLAVE),
            any::<u16>()
        ];
        let size = prop_oneof![Just(1u8), Just(2), Just(4), Just(3)];
        prop_oneof![
            3 => (port.clone(), size.clone(), any::<u32>())
                .prop_map(|(port, size, value)| Op::Write { port, size, value }),
            1 => (port, size).prop_map(|(port, size)| Op::Read { port, size }),
            3 => (0u8..20, any::<bool>()).prop_map(|(irq, high)| Op::Irq { irq, high }),
            2 => Just(Op::Ack),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn random_sequences_never_panic(init in any::<bool>(), ops in prop::collection::vec(op_strategy(), 1..300)) {
            let mut pic = if init { linux() } else { PicPair::new() };
            let mut platform = RecordingPlatform::default();
            for op in ops {
                match op {
                    Op::Write { port, size, value } => pic.write(port, size, value, 0, &mut platform),
                    Op::Read { port, size } => {
                        let v = pic.read(port, size, 0, &mut platform);
                        if size == 1 || size == 2 {
                            prop_assert!(v < 1 << (8 * u32::from(size)));
                        }
                    }
                    Op::Irq { irq, high } => pic.set_irq(irq, high),
                    Op::Ack => {
                        let output = pic.output();
                        let x86 = pic.master.ready() && pic.master.icw4 & ICW4_UPM != 0;
                        let vector = pic.acknowledge();
                        prop_assert_eq!(vector.is_some(), x86);
                        if !x86 {
                            prop_assert_eq!(pic.output(), output);
                        }
                    }
                }
            }
            prop_assert_eq!(platform, RecordingPlatform::default());
        }
    }
}
