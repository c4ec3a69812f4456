//! ACPI fixed hardware and the PC's reset paths: [`AcpiPm`] (PM1a event and control
//! blocks, the PM timer), [`ResetControl`] (port 0xCF9) and [`KbdResetPort`] (the
//! keyboard controller's reset command at ports 0x60/0x64).
//!
//! [`AcpiPm`] is written from the ACPI 6.5 specification, chapter 4 "ACPI Hardware
//! Specification", §4.8.2 (fixed hardware features) and §4.8.3 (fixed hardware
//! registers); its port addresses are the FADT's `PM1a_EVT_BLK` (4 bytes:
//! `PM1_EVT_LEN` = 4), `PM1a_CNT_BLK` (2 bytes: `PM1_CNT_LEN` = 2) and `PM_TMR_BLK`
//! (4 bytes: `PM_TMR_LEN` = 4). There is no PM1b block, no PM2 block and no GPE block
//! (the FADT fields are 0). What the FADT built around it must say:
//!
//! - `SMI_CMD` = 0 (and `ACPI_ENABLE`/`ACPI_DISABLE` = 0): there is no legacy (SMM)
//!   mode to leave. `SCI_EN` reads 1 from the start and ignores writes, so OSPM finds
//!   the platform already in ACPI mode (§4.8.3.2.1: "SCI_EN ... selects the power
//!   management event to be either an SCI or SMI interrupt"; OSPM only performs the
//!   `SMI_CMD` handshake when it reads `SCI_EN` = 0).
//! - flags: `TMR_VAL_EXT` = 0 (24-bit timer); `PWR_BUTTON` = 0 (fixed power button)
//!   if [`AcpiPm::press_power_button`] is used; `SLP_BUTTON` = 1 (no sleep button);
//!   `RESET_REG_SUP` = 1 with `RESET_REG` = system I/O 0xCF9, `RESET_VALUE` = 0x06
//!   if [`ResetControl`] is present.
//! - `SCI_INT`: the IRQ given to [`AcpiPm::with_sci_irq`] (default 9, as on PCs).
//! - the `\_S5` package of the DSDT: `SLP_TYPa` = the `s5_slp_typ` given to
//!   [`AcpiPm::new`]. No other sleep state is implemented (`SLP_EN` with another
//!   `SLP_TYP` is ignored), so the DSDT should declare no `\_S1`-`\_S4`.
//!
//! All registers are decoded per byte, so 1-, 2- and 4-byte accesses at any offset
//! inside a block work (the spec asks for 16-bit PM1 and 32-bit PM timer accesses,
//! §4.8.3.1/§4.8.3.3; this is a superset). Ports of the blocks that hold nothing
//! read as open bus.

use crate::{open_bus, read_bytewise, write_bytewise, Nanos, Platform, PlatformRequest, PortIo};

/// The PM timer frequency, §4.8.2.1: 3.579545 MHz.
pub const PM_TIMER_HZ: u64 = 3_579_545;
/// The PC's usual SCI line.
pub const DEFAULT_SCI_IRQ: u8 = 9;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// PM1 status (§4.8.3.1.1): timer carry (bit 23 of the counter toggled).
pub const TMR_STS: u16 = 1 << 0;
/// PM1 status: bus master status (never set here).
pub const BM_STS: u16 = 1 << 4;
/// PM1 status: global (BIOS) release (never set here: no firmware lock).
pub const GBL_STS: u16 = 1 << 5;
/// PM1 status: fixed power button pressed.
pub const PWRBTN_STS: u16 = 1 << 8;
/// PM1 status: fixed sleep button (never set here).
pub const SLPBTN_STS: u16 = 1 << 9;
/// PM1 status: RTC alarm wake (never set here: no sleep states).
pub const RTC_STS: u16 = 1 << 10;
/// PM1 status: PCI Express wake (never set here).
pub const PCIEXP_WAKE_STS: u16 = 1 << 14;
/// PM1 status: wake status (never set here: no sleep states to wake from).
pub const WAK_STS: u16 = 1 << 15;
/// PM1 enable (§4.8.3.1.2): timer carry interrupt enable.
pub const TMR_EN: u16 = 1 << 0;
/// PM1 enable: global release interrupt enable.
pub const GBL_EN: u16 = 1 << 5;
/// PM1 enable: power button interrupt enable.
pub const PWRBTN_EN: u16 = 1 << 8;
/// PM1 enable: sleep button interrupt enable.
pub const SLPBTN_EN: u16 = 1 << 9;
/// PM1 enable: RTC alarm interrupt enable.
pub const RTC_EN: u16 = 1 << 10;
/// PM1 enable: PCI Express wake disable.
pub const PCIEXP_WAKE_DIS: u16 = 1 << 14;
/// PM1 control (§4.8.3.2.1): SCI (1) or SMI (0) for power management events.
pub const SCI_EN: u16 = 1 << 0;
/// PM1 control: bus master requests wake from C3.
pub const BM_RLD: u16 = 1 << 1;
/// PM1 control: global release (write-only, raises an SMI to firmware: ignored).
pub const GBL_RLS: u16 = 1 << 2;
/// PM1 control: the sleep type field, bits 12:10.
pub const SLP_TYP_MASK: u16 = 0b111 << SLP_TYP_SHIFT;
/// The position of `SLP_TYPx` in PM1 control.
pub const SLP_TYP_SHIFT: u16 = 10;
/// PM1 control: enter the sleep state `SLP_TYPx` (write-only, reads 0).
pub const SLP_EN: u16 = 1 << 13;

/// Status bits that can be set (and so cleared) here.
const STS_IMPLEMENTED: u16 = TMR_STS | PWRBTN_STS;
/// Enable bits that are stored.
const EN_WRITABLE: u16 = TMR_EN | GBL_EN | PWRBTN_EN | SLPBTN_EN | RTC_EN | PCIEXP_WAKE_DIS;
/// Status/enable pairs that raise the SCI (same bit positions).
const SCI_SOURCES: u16 = TMR_STS | GBL_STS | PWRBTN_STS | SLPBTN_STS | RTC_STS;
/// Control bits that are stored and read back.
const CNT_STORED: u16 = BM_RLD | SLP_TYP_MASK;

/// The I/O ports of the ACPI register blocks, as put in the FADT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcpiPmPorts {
    /// `PM1a_EVT_BLK`: PM1 status at +0 (16 bits), PM1 enable at +2 (16 bits).
    pub pm1_evt: u16,
    /// `PM1a_CNT_BLK`: PM1 control (16 bits).
    pub pm1_cnt: u16,
    /// `PM_TMR_BLK`: the PM timer (32 bits).
    pub pm_tmr: u16,
}

/// A byte of one of the blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reg {
    Status(u8),
    Enable(u8),
    Control(u8),
    Timer(u8),
}

/// The ACPI PM1a event and control registers and the PM timer (see the module
/// documentation).
#[derive(Debug, Clone)]
pub struct AcpiPm {
    ports: AcpiPmPorts,
    s5_slp_typ: u8,
    sci_irq: u8,
    /// The PM timer counted 0 at this time.
    origin: Nanos,
    /// Timer carries up to this time are accounted for in `TMR_STS`.
    last: Nanos,
    status: u16,
    enable: u16,
    /// The stored bits of PM1 control (`CNT_STORED`).
    control: u16,
    sci_high: bool,
}

impl AcpiPm {
    /// The ACPI registers at `ports`, with `\_S5`'s `SLP_TYPa` = `s5_slp_typ` (bits
    /// 2:0), the PM timer counting from 0 at `now`, everything disabled, and the SCI
    /// on IRQ [`DEFAULT_SCI_IRQ`].
    #[must_use]
    pub fn new(ports: AcpiPmPorts, s5_slp_typ: u8, now: Nanos) -> Self {
        Self {
            ports,
            s5_slp_typ: s5_slp_typ & 0b111,
            sci_irq: DEFAULT_SCI_IRQ,
            origin: now,
            last: now,
            status: 0,
            enable: 0,
            control: 0,
            sci_high: false,
        }
    }

    /// The same with the SCI on interrupt line `irq` (the FADT's `SCI_INT`).
    #[must_use]
    pub fn with_sci_irq(mut self, irq: u8) -> Self {
        self.sci_irq = irq;
        self
    }

    /// The ports this device decodes.
    #[must_use]
    pub fn ports(&self) -> AcpiPmPorts {
        self.ports
    }

    /// The fixed power button is pressed (§4.8.2.2.1): sets `PWRBTN_STS`, which
    /// raises the SCI if `PWRBTN_EN` is set; OSPM then shuts down through `\_S5`.
    pub fn press_power_button(&mut self, now: Nanos, platform: &mut dyn Platform) {
        self.advance(now.max(self.last));
        self.status |= PWRBTN_STS;
        self.update_sci(platform);
    }

    /// The PM timer's 3.579545 MHz count since `origin` (not wrapped).
    fn ticks(&self, now: Nanos) -> u128 {
        u128::from(now.saturating_sub(self.origin)) * u128::from(PM_TIMER_HZ) / NANOS_PER_SEC
    }

    /// `TMR_VAL` (§4.8.3.3): the 24-bit counter; bits 31:24 read 0 (`TMR_VAL_EXT` = 0).
    fn timer_value(&self, now: Nanos) -> u32 {
        (self.ticks(now) & 0x00FF_FFFF) as u32
    }

    /// Sets `TMR_STS` if bit 23 of the counter toggled in (last, now] (§4.8.2.1: "the
    /// power management timer generates an interrupt when the last bit of the timer
    /// changes").
    fn advance(&mut self, now: Nanos) {
        if now > self.last {
            if self.ticks(now) >> 23 != self.ticks(self.last) >> 23 {
                self.status |= TMR_STS;
            }
            self.last = now;
        }
    }

    fn sci_level(&self) -> bool {
        // SCI_EN is always 1.
        self.status & self.enable & SCI_SOURCES != 0
    }

    fn update_sci(&mut self, platform: &mut dyn Platform) {
        let level = self.sci_level();
        if level != self.sci_high {
            self.sci_high = level;
            platform.set_irq(self.sci_irq, level);
        }
    }

    fn decode(&self, port: u16) -> Option<Reg> {
        let offset = |base: u16, len: u16| port.checked_sub(base).filter(|&o| o < len).map(|o| o as u8);
        if let Some(o) = offset(self.ports.pm1_evt, 4) {
            Some(if o < 2 { Reg::Status(o) } else { Reg::Enable(o - 2) })
        } else if let Some(o) = offset(self.ports.pm1_cnt, 2) {
            Some(Reg::Control(o))
        } else {
            offset(self.ports.pm_tmr, 4).map(Reg::Timer)
        }
    }

    fn read_byte(&self, port: u16, now: Nanos) -> u8 {
        let byte = |value: u32, lane: u8| (value >> (8 * lane)) as u8;
        match self.decode(port) {
            Some(Reg::Status(lane)) => byte(self.status.into(), lane),
            Some(Reg::Enable(lane)) => byte(self.enable.into(), lane),
            Some(Reg::Control(lane)) => byte((self.control | SCI_EN).into(), lane),
            Some(Reg::Timer(lane)) => byte(self.timer_value(now), lane),
            None => 0xFF,
        }
    }

    fn write_byte(&mut self, port: u16, value: u8, platform: &mut dyn Platform) {
        let lane_bits = |lane: u8| (u16::from(value) << (8 * lane), 0xFFu16 << (8 * lane));
        match self.decode(port) {
            // Write 1 to clear (§4.8.3.1.1).
            Some(Reg::Status(lane)) => self.status &= !(lane_bits(lane).0 & STS_IMPLEMENTED),
            Some(Reg::Enable(lane)) => {
                let (bits, mask) = lane_bits(lane);
                let mask = mask & EN_WRITABLE;
                self.enable = (self.enable & !mask) | (bits & mask);
            }
            Some(Reg::Control(lane)) => {
                let (bits, mask) = lane_bits(lane);
                let mask = mask & CNT_STORED;
                self.control = (self.control & !mask) | (bits & mask);
                // SLP_TYPx and SLP_EN share byte 1, so one byte write carries both.
                let slp_typ = (bits & SLP_TYP_MASK) >> SLP_TYP_SHIFT;
                if bits & SLP_EN != 0 && slp_typ == u16::from(self.s5_slp_typ) {
                    platform.request(PlatformRequest::PowerOff);
                }
            }
            Some(Reg::Timer(_)) | None => {}
        }
    }
}

impl PortIo for AcpiPm {
    fn read(&mut self, port: u16, size: u8, now: Nanos, platform: &mut dyn Platform) -> u32 {
        if !matches!(size, 1 | 2 | 4) {
            return open_bus(size);
        }
        let now = now.max(self.last);
        self.advance(now);
        self.update_sci(platform);
        read_bytewise(port, size, |p| Some(self.read_byte(p, now)))
    }

    fn write(&mut self, port: u16, size: u8, value: u32, now: Nanos, platform: &mut dyn Platform) {
        if !matches!(size, 1 | 2 | 4) {
            return;
        }
        self.advance(now.max(self.last));
        write_bytewise(port, size, value, |p, byte| self.write_byte(p, byte, platform));
        self.update_sci(platform);
    }

    /// The next timer carry, when it would raise the SCI.
    fn next_event(&self) -> Option<Nanos> {
        if self.sci_high || self.enable & TMR_EN == 0 || self.status & TMR_STS != 0 {
            return None;
        }
        let carry = (self.ticks(self.last) >> 23) + 1;
        let offset = ((carry << 23) * NANOS_PER_SEC).div_ceil(u128::from(PM_TIMER_HZ));
        Some(self.origin.saturating_add(u64::try_from(offset).unwrap_or(u64::MAX)))
    }

    fn tick(&mut self, now: Nanos, platform: &mut dyn Platform) {
        self.advance(now.max(self.last));
        self.update_sci(platform);
    }
}

/// The reset control register at port 0xCF9 (Intel ICH/PIIX "RST_CNT"), named by the
/// FADT's `RESET_REG` (ACPI 6.5 §4.8.3.6, "Reset Register").
///
/// Bits: 1 `SYS_RST` (hard vs. soft reset), 2 `RST_CPU` (a 0→1 transition starts the
/// reset), 3 `FULL_RST` (also cycle power). The exact rule here: bits 1 and 3 are
/// stored and read back; **any write with bit 2 set requests
/// [`PlatformRequest::Reset`]**, whatever bits 1 and 3 say (the platform has a
/// single kind of reset; a soft "INIT only" reset is made a full one). Bit 2 always
/// reads 0: the reset has completed by the time the guest could read it, so every
/// write with bit 2 set is a 0→1 transition. This covers the FADT's
/// `RESET_VALUE` = 0x06 and Linux's `reboot=pci` sequence (write 0x02, then 0x06 or
/// 0x0E: only the second one resets). Other ports and sizes: a 2- or 4-byte access
/// is split into bytes and only the byte at 0xCF9 is decoded.
///
/// Port 0xCF9 lies inside the PCI configuration range 0xCF8-0xCFF; byte accesses there
/// are not configuration accesses (PCI 3.0 §3.2.2.3.2), and
/// [`crate::pci_host::PciHost`] forwards them to its own `ResetControl`, so route
/// 0xCF8-0xCFF to the `PciHost` and use this type alone only on a platform without it.
#[derive(Debug, Clone, Default)]
pub struct ResetControl {
    value: u8,
}

/// The reset control register's port.
pub const RESET_CONTROL_PORT: u16 = 0xCF9;
/// Reset control: hard reset (stored).
pub const SYS_RST: u8 = 1 << 1;
/// Reset control: start the reset.
pub const RST_CPU: u8 = 1 << 2;
/// Reset control: full reset with power cycle (stored).
pub const FULL_RST: u8 = 1 << 3;

impl ResetControl {
    /// The register at its reset value, 0.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
}

impl PortIo for ResetControl {
    fn read(&mut self, port: u16, size: u8, _now: Nanos, _platform: &mut dyn Platform) -> u32 {
        read_bytewise(port, size, |p| (p == RESET_CONTROL_PORT).then_some(self.value))
    }

    fn write(&mut self, port: u16, size: u8, value: u32, _now: Nanos, platform: &mut dyn Platform) {
        write_bytewise(port, size, value, |p, byte| {
            if p == RESET_CONTROL_PORT {
                self.value = byte & (SYS_RST | FULL_RST);
                if byte & RST_CPU != 0 {
                    platform.request(PlatformRequest::Reset);
                }
            }
        });
    }
}

/// The keyboard controller (8042) data port.
pub const KBD_DATA_PORT: u16 = 0x60;
/// The keyboard controller (8042) status/command port.
pub const KBD_COMMAND_PORT: u16 = 0x64;
/// 8042 command: write the next data byte to the output port.
const KBD_WRITE_OUTPUT_PORT: u8 = 0xD1;
/// Status: system flag (self-test passed).
const KBD_STATUS_SYS: u8 = 1 << 2;
/// Status: the last write went to the command port.
const KBD_STATUS_COMMAND: u8 = 1 << 3;
/// Status: keyboard not inhibited.
const KBD_STATUS_UNINHIBITED: u8 = 1 << 4;

/// Just enough of the 8042 keyboard controller at ports 0x60/0x64 for its reset
/// path; there is no keyboard or mouse behind it.
///
/// - Status (read 0x64): 0x1C after a command write (and at start), 0x14 after a
///   data write: output buffer empty (bit 0 = 0, nothing to read), input buffer
///   empty (bit 1 = 0, so guests polling before a write proceed at once), system
///   flag (bit 2, self-test passed), bit 3 = last write was a command, keyboard not
///   inhibited (bit 4); no timeout or parity error.
/// - Data (read 0x60): 0 — no byte is ever produced, so a driver's command that
///   waits for a reply times out and it finds no keyboard.
/// - Commands (write 0x64): 0xF0-0xFF pulse the output port lines whose bits 3:0
///   are 0; line 0 is the CPU reset, so an even one (0xFE, the usual "pulse reset")
///   requests [`PlatformRequest::Reset`]. 0xD1 (write output port) makes the next
///   data byte the output port: a byte with bit 0 (reset, active low) clear also
///   requests a reset; its A20 bit is ignored (A20 is always enabled here). Other
///   commands are ignored.
#[derive(Debug, Clone)]
pub struct KbdResetPort {
    last_write_command: bool,
    expect_output_port: bool,
}

impl Default for KbdResetPort {
    fn default() -> Self {
        Self { last_write_command: true, expect_output_port: false }
    }
}

impl KbdResetPort {
    /// The controller after its self-test.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn status(&self) -> u8 {
        KBD_STATUS_SYS | KBD_STATUS_UNINHIBITED | if self.last_write_command { KBD_STATUS_COMMAND } else { 0 }
    }
}

impl PortIo for KbdResetPort {
    fn read(&mut self, port: u16, size: u8, _now: Nanos, _platform: &mut dyn Platform) -> u32 {
        match (port, size) {
            (KBD_DATA_PORT, 1) => 0,
            (KBD_COMMAND_PORT, 1) => self.status().into(),
            _ => open_bus(size),
        }
    }

    fn write(&mut self, port: u16, size: u8, value: u32, _now: Nanos, platform: &mut dyn Platform) {
        let byte = value as u8;
        match (port, size) {
            (KBD_DATA_PORT, 1) => {
                self.last_write_command = false;
                if core::mem::take(&mut self.expect_output_port) && byte & 1 == 0 {
                    platform.request(PlatformRequest::Reset);
                }
            }
            (KBD_COMMAND_PORT, 1) => {
                self.last_write_command = true;
                self.expect_output_port = byte == KBD_WRITE_OUTPUT_PORT;
                if byte & 0xF0 == 0xF0 && byte & 1 == 0 {
                    platform.request(PlatformRequest::Reset);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RecordingPlatform;
    use proptest::prelude::*;

    const PORTS: AcpiPmPorts = AcpiPmPorts { pm1_evt: 0x600, pm1_cnt: 0x604, pm_tmr: 0x608 };
    const T0: Nanos = 5_000_000_017;
    const S5: u8 = 5;

    fn pm() -> (AcpiPm, RecordingPlatform) {
        (AcpiPm::new(PORTS, S5, T0), RecordingPlatform::default())
    }

    /// The time of PM timer tick `k`.
    fn tick_time(k: u64) -> Nanos {
        T0 + u64::try_from((u128::from(k) * NANOS_PER_SEC).div_ceil(u128::from(PM_TIMER_HZ))).unwrap()
    }

    #[test]
    fn pm_timer_counts_at_3_579545_mhz() {
        let (mut pm, mut p) = pm();
        assert_eq!(pm.read(0x608, 4, T0, &mut p), 0);
        assert_eq!(pm.read(0x608, 4, tick_time(1) - 1, &mut p), 0);
        assert_eq!(pm.read(0x608, 4, tick_time(1), &mut p), 1);
        // One second is exactly PM_TIMER_HZ ticks, every second: no drift.
        for s in [1, 2, 3, 10, 1000] {
            let expected = (s * PM_TIMER_HZ) & 0xFF_FFFF;
            assert_eq!(u64::from(pm.read(0x608, 4, T0 + s * 1_000_000_000, &mut p)), expected);
        }
        // 24-bit wrap: bits 31:24 read 0.
        let (mut pm, mut p) = self::pm();
        assert_eq!(pm.read(0x608, 4, tick_time(0xFF_FFFF), &mut p), 0xFF_FFFF);
        assert_eq!(pm.read(0x608, 4, tick_time(0x100_0000), &mut p), 0);
        assert_eq!(pm.read(0x608, 4, tick_time(0x100_0005), &mut p), 5);
        // Byte and word reads see the same count; writes are ignored.
        let t = tick_time(0x112_3456);
        assert_eq!(pm.read(0x608, 2, t, &mut p), 0x3456);
        assert_eq!(pm.read(0x60A, 1, t, &mut p), 0x12);
        assert_eq!(pm.read(0x60B, 1, t, &mut p), 0);
        pm.write(0x608, 4, 0, t, &mut p);
        assert_eq!(pm.read(0x608, 4, t, &mut p), 0x12_3456);
        // Time going backwards does not move the counter back.
        assert_eq!(pm.read(0x608, 4, T0, &mut p), 0x12_3456);
    }

    #[test]
    fn timer_carry_sets_tmr_sts_and_sci() {
        let (mut pm, mut p) = pm();
        assert_eq!(pm.next_event(), None);
        pm.write(0x602, 2, u32::from(TMR_EN), T0, &mut p);
        assert_eq!(pm.read(0x602, 2, T0, &mut p), u32::from(TMR_EN));
        let carry = tick_time(1 << 23);
        assert_eq!(pm.next_event(), Some(carry));
        pm.tick(carry - 1, &mut p);
        assert_eq!(pm.read(0x600, 2, carry - 1, &mut p), 0);
        pm.tick(carry, &mut p);
        assert_eq!(pm.read(0x600, 2, carry, &mut p), u32::from(TMR_STS));
        assert_eq!(p.lines, 1 << DEFAULT_SCI_IRQ);
        assert_eq!(pm.next_event(), None);
        // Write 1 to clear; writing 0 does nothing.
        pm.write(0x600, 2, 0, carry, &mut p);
        assert_eq!(pm.read(0x600, 2, carry, &mut p), u32::from(TMR_STS));
        pm.write(0x600, 2, 0xFFFF, carry, &mut p);
        assert_eq!(pm.read(0x600, 2, carry, &mut p), 0);
        assert_eq!(p.lines, 0);
        // The next carry is bit 23 going back to 0, at 2^24 ticks.
        assert_eq!(pm.next_event(), Some(tick_time(1 << 24)));
        // A carry passes unnoticed by the SCI when TMR_EN is 0, but TMR_STS is set.
        pm.write(0x602, 2, 0, carry, &mut p);
        assert_eq!(pm.read(0x600, 4, tick_time(1 << 24), &mut p), u32::from(TMR_STS));
        assert_eq!(p.lines, 0);
        // Enabling with TMR_STS pending raises the SCI at once.
        pm.write(0x602, 2, u32::from(TMR_EN), tick_time(1 << 24), &mut p);
        assert_eq!(p.lines, 1 << DEFAULT_SCI_IRQ);
    }

    #[test]
    fn power_button_and_enables() {
        let (pm, mut p) = pm();
        let mut pm = pm.with_sci_irq(11);
        pm.press_power_button(T0, &mut p);
        assert_eq!(pm.read(0x600, 2, T0, &mut p), u32::from(PWRBTN_STS));
        assert_eq!(p.lines, 0);
        // Only the implemented enables stick; a byte write reaches the high byte.
        pm.write(0x603, 1, 0xFF, T0, &mut p);
        assert_eq!(
            pm.read(0x602, 2, T0, &mut p),
            u32::from((PWRBTN_EN | SLPBTN_EN | RTC_EN | PCIEXP_WAKE_DIS) & 0xFF00)
        );
        assert_eq!(p.lines, 1 << 11);
        // Clearing by a byte write to the status high byte lowers the SCI.
        pm.write(0x601, 1, 0x01, T0, &mut p);
        assert_eq!(pm.read(0x600, 2, T0, &mut p), 0);
        assert_eq!(p.lines, 0);
        // A dword write covers status (w1c) and enable together.
        pm.press_power_button(T0, &mut p);
        assert_eq!(pm.read(0x600, 4, T0, &mut p), u32::from(PWRBTN_STS) | 0x4700 << 16);
        pm.write(0x600, 4, u32::from(PWRBTN_STS), T0, &mut p);
        assert_eq!(pm.read(0x600, 4, T0, &mut p), 0);
        assert_eq!(p.rising_edges[11], 2);
    }

    #[test]
    fn pm1_control_and_s5() {
        let (mut pm, mut p) = pm();
        // SCI_EN reads 1 from the start and cannot be cleared.
        assert_eq!(pm.read(0x604, 2, T0, &mut p), u32::from(SCI_EN));
        pm.write(0x604, 2, 0, T0, &mut p);
        assert_eq!(pm.read(0x604, 2, T0, &mut p), u32::from(SCI_EN));
        // SLP_TYP and BM_RLD are stored; SLP_EN and GBL_RLS read 0.
        pm.write(0x604, 2, u32::from(3 << SLP_TYP_SHIFT | BM_RLD | GBL_RLS), T0, &mut p);
        assert_eq!(pm.read(0x604, 2, T0, &mut p), u32::from(3 << SLP_TYP_SHIFT | BM_RLD | SCI_EN));
        // SLP_EN with another sleep type: ignored.
        pm.write(0x604, 2, u32::from(3 << SLP_TYP_SHIFT | SLP_EN), T0, &mut p);
        assert_eq!(p.last_request, None);
        // SLP_TYP = S5 without SLP_EN: nothing yet.
        pm.write(0x604, 2, u32::from(u16::from(S5) << SLP_TYP_SHIFT), T0, &mut p);
        assert_eq!(p.last_request, None);
        // The OSPM sequence: SLP_TYP then SLP_EN with it.
        pm.write(0x604, 2, u32::from(u16::from(S5) << SLP_TYP_SHIFT | SLP_EN | SCI_EN), T0, &mut p);
        assert_eq!(p.last_request, Some(PlatformRequest::PowerOff));
        assert_eq!(pm.read(0x604, 2, T0, &mut p) & u32::from(SLP_EN), 0);
        // A byte write to the high byte works too.
        let (mut pm, mut p) = self::pm();
        pm.write(0x605, 1, u32::from((u16::from(S5) << SLP_TYP_SHIFT | SLP_EN) >> 8), T0, &mut p);
        assert_eq!(p.last_request, Some(PlatformRequest::PowerOff));
    }

    #[test]
    fn undecoded_ports_and_sizes() {
        let (mut pm, mut p) = pm();
        assert_eq!(pm.read(0x606, 2, T0, &mut p), 0xFFFF);
        assert_eq!(pm.read(0x5FF, 1, T0, &mut p), 0xFF);
        assert_eq!(pm.read(0x60C, 4, T0, &mut p), 0xFFFF_FFFF);
        assert_eq!(pm.read(0x600, 3, T0, &mut p), open_bus(3));
        // A dword at the control block's last byte reaches the 2 unused ports and
        // the timer.
        assert_eq!(pm.read(0x605, 4, T0, &mut p), 0x00FF_FF00);
        pm.write(0x606, 2, 0xFFFF, T0, &mut p);
        assert_eq!(p, RecordingPlatform::default());
        assert_eq!(pm.ports(), PORTS);
    }

    #[test]
    fn reset_control_rule() {
        let mut rc = ResetControl::new();
        let mut p = RecordingPlatform::default();
        assert_eq!(rc.read(0xCF9, 1, 0, &mut p), 0);
        // Linux reboot=pci: 0x02 (prepare hard reset), then 0x06.
        rc.write(0xCF9, 1, 0x02, 0, &mut p);
        assert_eq!(p.last_request, None);
        assert_eq!(rc.read(0xCF9, 1, 0, &mut p), 0x02);
        rc.write(0xCF9, 1, 0x06, 0, &mut p);
        assert_eq!(p.last_request, Some(PlatformRequest::Reset));
        // RST_CPU reads back 0; SYS_RST/FULL_RST are kept.
        assert_eq!(rc.read(0xCF9, 1, 0, &mut p), 0x02);
        for value in [0x04, 0x0E, 0xFF] {
            let mut p = RecordingPlatform::default();
            rc.write(0xCF9, 1, value, 0, &mut p);
            assert_eq!(p.last_request, Some(PlatformRequest::Reset), "{value:#x}");
        }
        let mut p = RecordingPlatform::default();
        for value in [0x00, 0x02, 0x08, 0x0A, 0xFB] {
            rc.write(0xCF9, 1, value, 0, &mut p);
        }
        assert_eq!(p.last_request, None);
        // Wider accesses: only the byte lane at 0xCF9 counts.
        rc.write(0xCF8, 2, 0x0400, 0, &mut p);
        assert_eq!(p.last_request, Some(PlatformRequest::Reset));
        assert_eq!(rc.read(0xCF8, 4, 0, &mut p), 0xFFFF_00FF);
        let mut p = RecordingPlatform::default();
        rc.write(0xCFA, 1, 0x06, 0, &mut p);
        assert_eq!(p.last_request, None);
    }

    #[test]
    fn keyboard_controller_reset() {
        let mut kbd = KbdResetPort::new();
        let mut p = RecordingPlatform::default();
        assert_eq!(kbd.read(KBD_COMMAND_PORT, 1, 0, &mut p), 0x1C);
        assert_eq!(kbd.read(KBD_DATA_PORT, 1, 0, &mut p), 0);
        kbd.write(KBD_DATA_PORT, 1, 0x12, 0, &mut p);
        assert_eq!(kbd.read(KBD_COMMAND_PORT, 1, 0, &mut p), 0x14);
        // Ordinary commands do nothing; the A20 dance through 0xD1 neither.
        for command in [0x20, 0xAA, 0xAD, 0xF1, 0xFF] {
            kbd.write(KBD_COMMAND_PORT, 1, command, 0, &mut p);
        }
        kbd.write(KBD_COMMAND_PORT, 1, 0xD1, 0, &mut p);
        kbd.write(KBD_DATA_PORT, 1, 0xDF, 0, &mut p);
        kbd.write(KBD_DATA_PORT, 1, 0x00, 0, &mut p);
        assert_eq!(p.last_request, None);
        // Pulse reset.
        kbd.write(KBD_COMMAND_PORT, 1, 0xFE, 0, &mut p);
        assert_eq!(p.last_request, Some(PlatformRequest::Reset));
        // Write output port with the reset line low.
        let mut p = RecordingPlatform::default();
        kbd.write(KBD_COMMAND_PORT, 1, 0xD1, 0, &mut p);
        kbd.write(KBD_DATA_PORT, 1, 0xFE, 0, &mut p);
        assert_eq!(p.last_request, Some(PlatformRequest::Reset));
        // Other ports and sizes: open bus, ignored.
        let mut p = RecordingPlatform::default();
        assert_eq!(kbd.read(0x61, 1, 0, &mut p), 0xFF);
        assert_eq!(kbd.read(KBD_COMMAND_PORT, 2, 0, &mut p), 0xFFFF);
        kbd.write(KBD_COMMAND_PORT, 2, 0xFE, 0, &mut p);
        assert_eq!(p.last_request, None);
    }

    proptest! {
        /// Garbage never panics, the SCI matches status & enable, and only S5 powers off.
        #[test]
        fn random_accesses(ops in proptest::collection::vec(
            (0x5FEu16..0x60E, prop_oneof![Just(1u8), Just(2), Just(4), Just(0)], any::<u32>(), 0u64..5_000_000_000, any::<bool>()), 1..100)) {
            let (mut pm, mut p) = pm();
            let mut now = T0;
            for (port, size, value, dt, is_write) in ops {
                now += dt;
                if is_write {
                    pm.write(port, size, value, now, &mut p);
                } else {
                    pm.read(port, size, now, &mut p);
                }
                prop_assert_eq!(p.lines & (1 << DEFAULT_SCI_IRQ) != 0, pm.sci_level());
                prop_assert!(pm.read(0x608, 4, now, &mut p) <= 0xFF_FFFF);
            }
        }
    }
}
