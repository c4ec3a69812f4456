//! Device models of the virtual PC platform, run by the service partition (issue 5):
//! each one is a plain state machine behind the [`PortIo`] interface, with no
//! hardware access, no allocation and no `unsafe`, so it is unit-tested on the host
//! and fuzzed. The service partition routes forwarded port I/O to them, drives their
//! timers from [`PortIo::next_event`]/[`PortIo::tick`], and turns what they report
//! through [`Platform`] into IRQ-line hypercalls and power actions.
//!
//! Conventions:
//! - time is [`Nanos`]: monotonic nanoseconds since the platform was created (the
//!   service partition derives it from the TSC);
//! - accesses are 1, 2 or 4 bytes; a device ignores writes and reads all-ones on
//!   ports or sizes it does not decode, as an open ISA bus does; a wider access to an
//!   8-bit device is split into byte lanes on consecutive ports, low byte first
//!   ([`read_bytewise`], [`write_bytewise`]);
//! - every value a guest writes is untrusted: models never panic.
#![no_std]
#![forbid(unsafe_code)]

pub mod acpi_pm;
pub mod board;
pub mod fw_cfg;
pub mod pci_host;
pub mod pic8259;
pub mod pit8254;
pub mod rtc_cmos;
pub mod test_devices;
pub mod uart16550;

/// Monotonic time in nanoseconds since the platform was created.
pub type Nanos = u64;

/// A power or reset action a device asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlatformRequest {
    /// ACPI S5 (soft off) through PM1 control, or the guest's last shutdown path.
    PowerOff,
    /// A system reset (port 0xCF9, the keyboard controller's pulse-reset command).
    Reset,
    /// QEMU's `isa-debug-exit`: the guest ends with this code (QEMU's process exit
    /// status is `(code << 1) | 1`).
    Exit(u32),
}

/// What the devices report to the platform around them.
pub trait Platform {
    /// Sets the level of ISA/IOAPIC interrupt line `irq` (edge sources pulse it).
    fn set_irq(&mut self, irq: u8, high: bool);
    /// Asks for a power action.
    fn request(&mut self, request: PlatformRequest);
}

/// A device reached by port I/O.
pub trait PortIo {
    /// Reads `size` bytes (1, 2 or 4) at `port`.
    fn read(&mut self, port: u16, size: u8, now: Nanos, platform: &mut dyn Platform) -> u32;
    /// Writes the low `size` bytes of `value` at `port`.
    fn write(&mut self, port: u16, size: u8, value: u32, now: Nanos, platform: &mut dyn Platform);
    /// The next time [`PortIo::tick`] must run (a timer, an interrupt to raise), if any.
    fn next_event(&self) -> Option<Nanos> {
        None
    }
    /// Lets time pass up to `now`: timers expire, interrupts are raised.
    fn tick(&mut self, _now: Nanos, _platform: &mut dyn Platform) {}
}

/// All-ones for an access of `size` bytes: what an undecoded read returns.
#[must_use]
pub const fn open_bus(size: u8) -> u32 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        _ => 0xffff_ffff,
    }
}

/// Reads `size` bytes at `port` from an 8-bit device one byte lane at a time, low byte
/// first, the way the ISA bus splits a wide access: `byte(p)` is the device's answer at
/// port `p`, `None` where it does not decode (open bus, 0xFF). Sizes other than 1, 2
/// and 4 read open bus without touching the device.
#[inline]
pub fn read_bytewise(port: u16, size: u8, mut byte: impl FnMut(u16) -> Option<u8>) -> u32 {
    // The common case, one byte, without the lane loop.
    if size == 1 {
        return u32::from(byte(port).unwrap_or(0xFF));
    }
    if !matches!(size, 2 | 4) {
        return open_bus(size);
    }
    (0..size).fold(0, |acc, lane| {
        let value = port.checked_add(u16::from(lane)).and_then(&mut byte).unwrap_or(0xFF);
        acc | (u32::from(value) << (8 * u32::from(lane)))
    })
}

/// Writes the low `size` bytes of `value` at `port` to an 8-bit device one byte lane at
/// a time, low byte first: `byte(p, v)` writes `v` at port `p` (the device ignores ports
/// it does not decode). Sizes other than 1, 2 and 4 are ignored.
#[inline]
pub fn write_bytewise(port: u16, size: u8, value: u32, mut byte: impl FnMut(u16, u8)) {
    // The common case, one byte, without the lane loop.
    if size == 1 {
        byte(port, value as u8);
        return;
    }
    if !matches!(size, 2 | 4) {
        return;
    }
    for lane in 0..size {
        if let Some(p) = port.checked_add(u16::from(lane)) {
            byte(p, value.to_le_bytes()[usize::from(lane)]);
        }
    }
}

/// A [`Platform`] that records what devices report, for tests and the fuzzer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecordingPlatform {
    /// Current level of each of 24 lines (bit n = line n high).
    pub lines: u32,
    /// Rising edges seen per line.
    pub rising_edges: [u32; 24],
    /// The last power request.
    pub last_request: Option<PlatformRequest>,
}

impl Platform for RecordingPlatform {
    fn set_irq(&mut self, irq: u8, high: bool) {
        let Some(edges) = self.rising_edges.get_mut(usize::from(irq)) else { return };
        let bit = 1u32 << irq;
        if high && self.lines & bit == 0 {
            *edges += 1;
        }
        if high {
            self.lines |= bit;
        } else {
            self.lines &= !bit;
        }
    }

    fn request(&mut self, request: PlatformRequest) {
        self.last_request = Some(request);
    }
}
