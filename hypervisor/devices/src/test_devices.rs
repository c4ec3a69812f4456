//! QEMU's test devices, which test guests use to report results and end a run:
//!
//! - [`IsaDebugExit`], QEMU's `isa-debug-exit` (`hw/misc/debugexit.c`): a write of value
//!   `v` ends the guest with code `v`, which QEMU turns into the process exit status
//!   `(v << 1) | 1`. Here it asks the platform for [`PlatformRequest::Exit`]`(v)`.
//! - [`DebugCon`], QEMU's `isa-debugcon` (`hw/char/debugcon.c`), the "port E9 hack" of
//!   Bochs: every byte written to port 0xE9 is console output, and reads return 0xE9 so
//!   a guest can detect the port.
//! - [`MmioScratch`], this platform's own `mmio-test` device: a page of scratch
//!   registers reached by MMIO (`hv_abi::platform::devices::MMIO_TEST_BASE`), which the
//!   svc-mmio scenario uses to check every MMIO instruction form the hypervisor decodes
//!   and forwards.
//! - [`DelayTest`], this platform's own `delay-test` port
//!   (`hv_abi::platform::devices::DELAY_TEST_PORT`): a read is answered only after a
//!   delay the guest wrote first, through the deferred completion of the I/O request
//!   protocol (`hv_abi::io_request`, the svc-deferred scenario).

use crate::uart16550::OutputRing;
use crate::{open_bus, read_bytewise, write_bytewise, Nanos, Platform, PlatformRequest, PortIo};

/// The port test guests conventionally use for `isa-debug-exit`
/// (`-device isa-debug-exit,iobase=0xf4,iosize=0x04`).
pub const ISA_DEBUG_EXIT_PORT: u16 = 0xF4;
/// The number of ports that conventional `isa-debug-exit` configuration decodes.
pub const ISA_DEBUG_EXIT_IOSIZE: u16 = 4;
/// The Bochs / QEMU debug console port.
pub const DEBUGCON_PORT: u16 = 0xE9;
/// What a read of the debug console port returns (QEMU's default `readback`).
pub const DEBUGCON_READBACK: u8 = 0xE9;

/// QEMU's `isa-debug-exit`: a write of 1, 2 or 4 bytes to any of its ports requests
/// [`PlatformRequest::Exit`] with the value written (the low `size` bytes). Reads
/// return open bus (QEMU's model returns 0; no guest relies on either).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IsaDebugExit {
    iobase: u16,
    iosize: u16,
}

impl IsaDebugExit {
    /// The conventional device: ports 0xF4..=0xF7.
    #[must_use]
    pub const fn new() -> Self {
        Self::with_range(ISA_DEBUG_EXIT_PORT, ISA_DEBUG_EXIT_IOSIZE)
    }

    /// A device decoding `iosize` ports from `iobase` (QEMU's `iobase` and `iosize`
    /// properties; QEMU's own defaults are 0x501 and 2). Ports past 0xFFFF are not
    /// decoded.
    #[must_use]
    pub const fn with_range(iobase: u16, iosize: u16) -> Self {
        Self { iobase, iosize }
    }

    /// Whether `port` is one of the device's ports.
    #[must_use]
    pub const fn decodes(&self, port: u16) -> bool {
        port >= self.iobase && port - self.iobase < self.iosize
    }
}

impl Default for IsaDebugExit {
    fn default() -> Self {
        Self::new()
    }
}

impl PortIo for IsaDebugExit {
    fn read(&mut self, _port: u16, size: u8, _now: Nanos, _platform: &mut dyn Platform) -> u32 {
        open_bus(size)
    }

    fn write(&mut self, port: u16, size: u8, value: u32, _now: Nanos, platform: &mut dyn Platform) {
        let mask = match size {
            1 => 0xFF,
            2 => 0xFFFF,
            4 => u32::MAX,
            _ => return,
        };
        if self.decodes(port) {
            platform.request(PlatformRequest::Exit(value & mask));
        }
    }
}

/// QEMU's `isa-debugcon` (Bochs' port E9): bytes written to its port are appended to a
/// 4 KiB output ring ([`OutputRing`]: when full, the oldest byte is dropped) that the
/// owner drains with [`DebugCon::take_output`]; reads return [`DEBUGCON_READBACK`].
///
/// The port is 8 bits wide: a 2- or 4-byte access is split into byte accesses at
/// consecutive ports, low byte first (as in [`crate::uart16550`]), so a wide write at
/// the port outputs only its low byte and a 2-byte read returns 0xFFE9.
#[derive(Debug, Clone)]
pub struct DebugCon {
    port: u16,
    output: OutputRing,
}

impl DebugCon {
    /// A debug console at [`DEBUGCON_PORT`] (0xE9).
    #[must_use]
    pub const fn new() -> Self {
        Self::with_port(DEBUGCON_PORT)
    }

    /// A debug console at `port` (SeaBIOS, for one, uses 0x402).
    #[must_use]
    pub const fn with_port(port: u16) -> Self {
        Self { port, output: OutputRing::new() }
    }

    /// The port decoded.
    #[must_use]
    pub const fn port(&self) -> u16 {
        self.port
    }

    /// Moves up to `out.len()` output bytes, oldest first, into `out`; returns how many.
    pub fn take_output(&mut self, out: &mut [u8]) -> usize {
        self.output.take(out)
    }

    /// Output bytes waiting to be taken.
    #[must_use]
    pub const fn output_len(&self) -> usize {
        self.output.len()
    }

    /// Output bytes lost because the ring was full.
    #[must_use]
    pub const fn output_dropped(&self) -> u64 {
        self.output.dropped()
    }
}

impl Default for DebugCon {
    fn default() -> Self {
        Self::new()
    }
}

impl PortIo for DebugCon {
    fn read(&mut self, port: u16, size: u8, _now: Nanos, _platform: &mut dyn Platform) -> u32 {
        read_bytewise(port, size, |p| (p == self.port).then_some(DEBUGCON_READBACK))
    }

    fn write(&mut self, port: u16, size: u8, value: u32, _now: Nanos, _platform: &mut dyn Platform) {
        write_bytewise(port, size, value, |p, byte| {
            if p == self.port {
                self.output.push(byte);
            }
        });
    }
}

/// Bytes of the `mmio-test` page.
pub const MMIO_SCRATCH_BYTES: u64 = 0x1000;
/// Offset of the first byte after the scratch registers.
pub const MMIO_SCRATCH_END: u64 = 0x100;
/// Number of 64-bit scratch registers (offsets 0x000-0x0FF).
pub const MMIO_SCRATCH_REGISTERS: usize = 32;
/// Offset of the read-only constant register.
pub const MMIO_CONSTANT_OFFSET: u64 = 0x100;
/// What the constant register reads.
pub const MMIO_CONSTANT: u64 = 0x1122_3344_5566_7788;
/// Offset of the read-only write counter.
pub const MMIO_WRITE_COUNT_OFFSET: u64 = 0x108;

/// The `mmio-test` device: one 4 KiB page of registers, addressed by byte offset.
///
/// | offset | register |
/// |---|---|
/// | 0x000-0x0FF | 32 scratch registers of 64 bits, read/write |
/// | 0x100-0x107 | constant [`MMIO_CONSTANT`] (read-only) |
/// | 0x108-0x10F | write counter (read-only) |
/// | 0x110-0xFFF | reserved: read 0, writes ignored |
///
/// The page behaves as memory made of byte lanes, little-endian: an access of `size`
/// bytes (1, 2, 4 or 8) at any offset, aligned or not, covers the bytes `offset ..
/// offset + size`, each of which reads what its own location holds (so an access may
/// straddle two registers, or the scratch area and the constant); a write changes only
/// the scratch bytes it covers. Bytes past the end of the page read 0 and are not
/// written. Every write access the device accepts (a valid size at an offset inside the
/// page, whatever it covers, read-only registers included) adds 1 to the write counter,
/// which wraps at 2^64. Reads have no side effects. Other sizes read 0 and are ignored
/// (not counted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MmioScratch {
    scratch: [u8; MMIO_SCRATCH_END as usize],
    writes: u64,
}

impl Default for MmioScratch {
    fn default() -> Self {
        Self::new()
    }
}

impl MmioScratch {
    /// Every scratch register 0, no writes counted.
    #[must_use]
    pub const fn new() -> Self {
        Self { scratch: [0; MMIO_SCRATCH_END as usize], writes: 0 }
    }

    /// The write accesses counted so far.
    #[must_use]
    pub const fn writes(&self) -> u64 {
        self.writes
    }

    /// The byte at `offset` of the page (0 outside it).
    fn byte(&self, offset: u64) -> u8 {
        let lane = |value: u64, base: u64| value.to_le_bytes()[(offset - base) as usize];
        match offset {
            0..MMIO_SCRATCH_END => self.scratch[offset as usize],
            MMIO_CONSTANT_OFFSET..MMIO_WRITE_COUNT_OFFSET => lane(MMIO_CONSTANT, MMIO_CONSTANT_OFFSET),
            MMIO_WRITE_COUNT_OFFSET..0x110 => lane(self.writes, MMIO_WRITE_COUNT_OFFSET),
            _ => 0,
        }
    }

    /// Reads `size` bytes (1, 2, 4 or 8) at byte `offset` of the page, little-endian.
    /// Other sizes, and offsets outside the page, read 0.
    #[must_use]
    pub fn read(&self, offset: u64, size: u8) -> u64 {
        if !matches!(size, 1 | 2 | 4 | 8) || offset >= MMIO_SCRATCH_BYTES {
            return 0;
        }
        let end = offset + u64::from(size);
        let mask = u64::MAX >> (64 - 8 * u32::from(size));
        // An access inside one register (the common case) without the byte loop.
        if offset >= MMIO_CONSTANT_OFFSET && end <= MMIO_WRITE_COUNT_OFFSET {
            return (MMIO_CONSTANT >> (8 * (offset - MMIO_CONSTANT_OFFSET))) & mask;
        }
        if let Some(bytes) = self.scratch.get(offset as usize..end as usize) {
            let mut word = [0u8; 8];
            word.iter_mut().zip(bytes).for_each(|(w, b)| *w = *b);
            return u64::from_le_bytes(word);
        }
        (0..u64::from(size)).rev().fold(0, |value, lane| value << 8 | u64::from(self.byte(offset + lane)))
    }

    /// Writes the low `size` bytes (1, 2, 4 or 8) of `value` at byte `offset` of the
    /// page; only scratch bytes change. Returns whether the write was accepted (and
    /// counted): false for other sizes and offsets outside the page.
    pub fn write(&mut self, offset: u64, size: u8, value: u64) -> bool {
        if !matches!(size, 1 | 2 | 4 | 8) || offset >= MMIO_SCRATCH_BYTES {
            return false;
        }
        for (lane, byte) in value.to_le_bytes().into_iter().take(usize::from(size)).enumerate() {
            if let Some(slot) = usize::try_from(offset + lane as u64).ok().and_then(|i| self.scratch.get_mut(i)) {
                *slot = byte;
            }
        }
        self.writes = self.writes.wrapping_add(1);
        true
    }
}

/// The `delay-test` device: reads that complete only after a delay of device time.
///
/// - A write of 1, 2 or 4 bytes sets the delay, in milliseconds, to the value written
///   (its low `size` bytes); [`DELAY_TEST_NEVER`] (all-ones, written with 4 bytes) means
///   that reads never complete. The power-on delay is 0.
/// - A read is not answered at once: its owner [`DelayTest::start_read`]s it with a tag
///   of its own (the service partition's: the request slot and sequence number) and
///   answers the request "deferred". The read is due the delay after it started, but
///   completes only once the owner [`DelayTest::confirm`]s that the deferral was taken
///   (the hypervisor refuses a completion that overtakes the "deferred" answer);
///   [`DelayTest::next_event`] says when a confirmed read is due, and
///   [`DelayTest::take_completed`] hands the tag and the value out once `now` reaches
///   it. The value is
///   [`DELAY_TEST_VALUE_BASE`] plus the number of reads completed before (wrapping),
///   cut to the access size.
/// - One read is in progress at a time (one per device; the guests that use it have
///   one vCPU): a read started while another waits is refused ([`DelayBusy`]), and its
///   owner fails it (the guest reads all-ones).
/// - [`DelayTest::cancel`] forgets the read in progress (its guest is gone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelayTest<T> {
    delay_ms: u32,
    in_progress: Option<DelayedRead<T>>,
    completed: u32,
}

/// A read in progress: the owner's tag, when it is due ([`Nanos::MAX`]: never), the
/// access size, and whether the owner confirmed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DelayedRead<T> {
    tag: T,
    due: Nanos,
    size: u8,
    confirmed: bool,
}

/// A read started while another was in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DelayBusy;

pub use hv_abi::platform::devices::{DELAY_TEST_NEVER, DELAY_TEST_PORT, DELAY_TEST_VALUE_BASE};

/// Nanoseconds per millisecond.
const NANOS_PER_MS: Nanos = 1_000_000;

impl<T: Copy + PartialEq> Default for DelayTest<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy + PartialEq> DelayTest<T> {
    /// Delay 0, no read in progress, none completed.
    #[must_use]
    pub const fn new() -> Self {
        Self { delay_ms: 0, in_progress: None, completed: 0 }
    }

    /// The delay in milliseconds ([`DELAY_TEST_NEVER`]: reads never complete).
    #[must_use]
    pub const fn delay_ms(&self) -> u32 {
        self.delay_ms
    }

    /// Reads completed so far (wrapping).
    #[must_use]
    pub const fn completed(&self) -> u32 {
        self.completed
    }

    /// A write of the low `size` bytes (1, 2 or 4) of `value`: the new delay. Other
    /// sizes are ignored. A read in progress keeps the delay it started with.
    pub fn write(&mut self, size: u8, value: u32) {
        let mask = match size {
            1 => 0xFF,
            2 => 0xFFFF,
            4 => u32::MAX,
            _ => return,
        };
        self.delay_ms = value & mask;
    }

    /// Starts a read of `size` bytes at `now`, to be completed with `tag`. Refused
    /// while another read is in progress, and for sizes other than 1, 2 and 4.
    pub fn start_read(&mut self, tag: T, size: u8, now: Nanos) -> Result<(), DelayBusy> {
        if self.in_progress.is_some() || !matches!(size, 1 | 2 | 4) {
            return Err(DelayBusy);
        }
        let due = if self.delay_ms == DELAY_TEST_NEVER {
            Nanos::MAX
        } else {
            now.saturating_add(Nanos::from(self.delay_ms) * NANOS_PER_MS)
        };
        self.in_progress = Some(DelayedRead { tag, due, size, confirmed: false });
        Ok(())
    }

    /// The owner's "deferred" answer to the read tagged `tag` was taken: the read may
    /// complete from now on. False (nothing changed) when no read with that tag is in
    /// progress.
    pub fn confirm(&mut self, tag: T) -> bool {
        match &mut self.in_progress {
            Some(read) if read.tag == tag => {
                read.confirmed = true;
                true
            }
            _ => false,
        }
    }

    /// When the read in progress is due, if it is confirmed and ever will be.
    #[must_use]
    pub fn next_event(&self) -> Option<Nanos> {
        self.in_progress.filter(|read| read.confirmed).map(|read| read.due).filter(|&due| due != Nanos::MAX)
    }

    /// The read in progress, completed, once it is confirmed and `now` reached its due
    /// time: its tag and value (fitting its size). The device is then free for the next
    /// read.
    pub fn take_completed(&mut self, now: Nanos) -> Option<(T, u32)> {
        let read = self.in_progress.filter(|read| read.confirmed && read.due != Nanos::MAX && now >= read.due)?;
        self.in_progress = None;
        let value = DELAY_TEST_VALUE_BASE.wrapping_add(self.completed);
        self.completed = self.completed.wrapping_add(1);
        let mask = match read.size {
            1 => 0xFF,
            2 => 0xFFFF,
            _ => u32::MAX,
        };
        Some((read.tag, value & mask))
    }

    /// Forgets the read in progress; returns its tag.
    pub fn cancel(&mut self) -> Option<T> {
        self.in_progress.take().map(|read| read.tag)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::uart16550::OUTPUT_CAPACITY;
    use crate::RecordingPlatform;
    use std::vec::Vec;

    #[test]
    fn debug_exit_requests_exit_with_the_value_written() {
        let mut dev = IsaDebugExit::new();
        let mut platform = RecordingPlatform::default();
        dev.write(0xF4, 1, 0x10, 0, &mut platform);
        assert_eq!(platform.last_request, Some(PlatformRequest::Exit(0x10)));
        dev.write(0xF4, 2, 0xFFFF_1234, 0, &mut platform);
        assert_eq!(platform.last_request, Some(PlatformRequest::Exit(0x1234)));
        dev.write(0xF4, 4, 0xDEAD_BEEF, 0, &mut platform);
        assert_eq!(platform.last_request, Some(PlatformRequest::Exit(0xDEAD_BEEF)));
        // Only the low `size` bytes count.
        dev.write(0xF4, 1, 0x1_0003, 0, &mut platform);
        assert_eq!(platform.last_request, Some(PlatformRequest::Exit(3)));
        // Writing 0 is a request too (QEMU exits with status 1).
        dev.write(0xF4, 1, 0, 0, &mut platform);
        assert_eq!(platform.last_request, Some(PlatformRequest::Exit(0)));
        // No interrupt line is touched.
        assert_eq!(platform.lines, 0);
    }

    #[test]
    fn debug_exit_decodes_its_range_and_sizes_only() {
        let mut dev = IsaDebugExit::default();
        let mut platform = RecordingPlatform::default();
        dev.write(0xF7, 1, 5, 0, &mut platform);
        assert_eq!(platform.last_request, Some(PlatformRequest::Exit(5)));
        platform.last_request = None;
        for port in [0xF3, 0xF8, 0x00, 0xFFFF] {
            dev.write(port, 1, 1, 0, &mut platform);
        }
        for size in [0, 3, 5, 8] {
            dev.write(0xF4, size, 1, 0, &mut platform);
        }
        assert_eq!(platform.last_request, None);

        let mut one = IsaDebugExit::with_range(0x501, 1);
        assert!(one.decodes(0x501));
        assert!(!one.decodes(0x502));
        assert!(!one.decodes(0x500));
        one.write(0x502, 1, 7, 0, &mut platform);
        assert_eq!(platform.last_request, None);
        one.write(0x501, 4, 7, 0, &mut platform);
        assert_eq!(platform.last_request, Some(PlatformRequest::Exit(7)));
        // A range running past the end of the port space does not wrap.
        let top = IsaDebugExit::with_range(0xFFFE, 4);
        assert!(top.decodes(0xFFFF));
        assert!(!top.decodes(0));
        assert!(!IsaDebugExit::with_range(0xF4, 0).decodes(0xF4));
    }

    #[test]
    fn debug_exit_reads_are_open_bus() {
        let mut dev = IsaDebugExit::new();
        let mut platform = RecordingPlatform::default();
        assert_eq!(dev.read(0xF4, 1, 0, &mut platform), 0xFF);
        assert_eq!(dev.read(0xF4, 2, 0, &mut platform), 0xFFFF);
        assert_eq!(dev.read(0xF4, 4, 0, &mut platform), 0xFFFF_FFFF);
        assert_eq!(platform, RecordingPlatform::default());
        assert_eq!(dev.next_event(), None);
    }

    fn drain(dev: &mut DebugCon) -> Vec<u8> {
        let mut buf = [0u8; OUTPUT_CAPACITY];
        let n = dev.take_output(&mut buf);
        buf[..n].to_vec()
    }

    #[test]
    fn debugcon_collects_written_bytes() {
        let mut dev = DebugCon::new();
        let mut platform = RecordingPlatform::default();
        for &b in b"ok\n" {
            dev.write(0xE9, 1, u32::from(b), 0, &mut platform);
        }
        assert_eq!(dev.output_len(), 3);
        let mut two = [0u8; 2];
        assert_eq!(dev.take_output(&mut two), 2);
        assert_eq!(&two, b"ok");
        assert_eq!(drain(&mut dev), b"\n");
        assert_eq!(dev.take_output(&mut two), 0);
        assert_eq!(platform, RecordingPlatform::default());
    }

    #[test]
    fn debugcon_reads_return_e9() {
        let mut dev = DebugCon::default();
        let mut platform = RecordingPlatform::default();
        assert_eq!(dev.read(0xE9, 1, 0, &mut platform), 0xE9);
        assert_eq!(dev.read(0xE9, 2, 0, &mut platform), 0xFFE9);
        assert_eq!(dev.read(0xE9, 4, 0, &mut platform), 0xFFFF_FFE9);
        assert_eq!(dev.read(0xE8, 2, 0, &mut platform), 0xE9FF);
        assert_eq!(dev.read(0xEA, 1, 0, &mut platform), 0xFF);
        assert_eq!(dev.read(0xE9, 3, 0, &mut platform), open_bus(3));
    }

    #[test]
    fn debugcon_wide_and_foreign_accesses() {
        let mut dev = DebugCon::new();
        let mut platform = RecordingPlatform::default();
        dev.write(0xE9, 4, 0x4443_4241, 0, &mut platform); // only 'A' lands on 0xE9
        dev.write(0xE8, 2, 0x4200, 0, &mut platform); // the high byte lands on 0xE9
        dev.write(0xEA, 1, u32::from(b'x'), 0, &mut platform);
        dev.write(0xE9, 3, u32::from(b'y'), 0, &mut platform);
        assert_eq!(drain(&mut dev), b"AB");
    }

    #[test]
    fn debugcon_other_port_and_full_ring() {
        let mut dev = DebugCon::with_port(0x402);
        let mut platform = RecordingPlatform::default();
        assert_eq!(dev.port(), 0x402);
        assert_eq!(dev.read(0xE9, 1, 0, &mut platform), 0xFF);
        assert_eq!(dev.read(0x402, 1, 0, &mut platform), 0xE9);
        for i in 0..OUTPUT_CAPACITY + 3 {
            dev.write(0x402, 1, i as u32, 0, &mut platform);
        }
        assert_eq!(dev.output_len(), OUTPUT_CAPACITY);
        assert_eq!(dev.output_dropped(), 3);
        let out = drain(&mut dev);
        assert_eq!(out[0], 3);
        assert_eq!(out[OUTPUT_CAPACITY - 1], (OUTPUT_CAPACITY + 2) as u8);
    }

    #[test]
    fn mmio_scratch_registers_hold_what_is_written() {
        let mut dev = MmioScratch::new();
        assert_eq!(dev, MmioScratch::default());
        for reg in 0..MMIO_SCRATCH_REGISTERS as u64 {
            assert_eq!(dev.read(reg * 8, 8), 0);
        }
        assert!(dev.write(0x10, 8, 0x0102_0304_0506_0708));
        assert_eq!(dev.read(0x10, 8), 0x0102_0304_0506_0708);
        assert_eq!(dev.read(0x10, 4), 0x0506_0708);
        assert_eq!(dev.read(0x14, 4), 0x0102_0304);
        assert_eq!(dev.read(0x12, 2), 0x0506);
        assert_eq!(dev.read(0x17, 1), 0x01);
        // A write changes only the bytes it covers.
        assert!(dev.write(0x11, 1, 0xAA));
        assert_eq!(dev.read(0x10, 8), 0x0102_0304_0506_AA08);
        assert!(dev.write(0x14, 2, 0xFFFF_BBCC));
        assert_eq!(dev.read(0x10, 8), 0x0102_BBCC_0506_AA08);
        assert!(dev.write(0x10, 4, 0xFFFF_FFFF_0000_0000));
        assert_eq!(dev.read(0x10, 8), 0x0102_BBCC_0000_0000);
        // Unaligned, straddling two registers.
        assert!(dev.write(0x1D, 8, 0x1112_1314_1516_1718));
        assert_eq!(dev.read(0x18, 8), 0x1617_1800_0000_0000);
        assert_eq!(dev.read(0x20, 8), 0x0000_0011_1213_1415);
        assert_eq!(dev.read(0x1D, 8), 0x1112_1314_1516_1718);
        // The last register.
        assert!(dev.write(0xF8, 8, u64::MAX));
        assert_eq!(dev.read(0xF8, 8), u64::MAX);
        assert_eq!(dev.writes(), 6);
    }

    #[test]
    fn mmio_constant_counter_and_reserved_offsets() {
        let mut dev = MmioScratch::new();
        assert_eq!(dev.read(MMIO_CONSTANT_OFFSET, 8), MMIO_CONSTANT);
        assert_eq!(dev.read(MMIO_CONSTANT_OFFSET, 4), 0x5566_7788);
        assert_eq!(dev.read(MMIO_CONSTANT_OFFSET + 4, 4), 0x1122_3344);
        assert_eq!(dev.read(MMIO_CONSTANT_OFFSET + 7, 1), 0x11);
        assert_eq!(dev.read(MMIO_WRITE_COUNT_OFFSET, 8), 0);
        // Writes to read-only and reserved offsets are ignored, but counted.
        assert!(dev.write(MMIO_CONSTANT_OFFSET, 8, 0));
        assert!(dev.write(MMIO_WRITE_COUNT_OFFSET, 8, 0x55));
        assert!(dev.write(0x200, 4, 0xDEAD_BEEF));
        assert!(dev.write(0xFFF, 1, 0x12));
        assert_eq!(dev.read(MMIO_CONSTANT_OFFSET, 8), MMIO_CONSTANT);
        assert_eq!(dev.read(MMIO_WRITE_COUNT_OFFSET, 8), 4);
        assert_eq!(dev.read(0x200, 4), 0);
        assert_eq!(dev.read(0xFFF, 1), 0);
        assert_eq!(dev.read(0x110, 8), 0);
        // Straddling: scratch and constant, constant and counter, counter and reserved.
        assert!(dev.write(0xFC, 8, 0xAAAA_AAAA_BBBB_BBBB));
        assert_eq!(dev.read(0xFC, 8), 0x5566_7788_BBBB_BBBB);
        assert_eq!(dev.read(0x104, 8), 0x0000_0005_1122_3344);
        assert_eq!(dev.read(0x10C, 8), 0);
        // Past the end of the page: bytes read 0; outside it nothing is decoded.
        assert_eq!(dev.read(0xFF9, 8), 0);
        assert!(dev.write(0xFFE, 8, u64::MAX));
        assert!(!dev.write(0x1000, 1, 1));
        assert_eq!(dev.read(0x1000, 1), 0);
        assert!(!dev.write(u64::MAX, 8, 1));
        assert_eq!(dev.read(u64::MAX, 8), 0);
        // Bad sizes: read 0, not written, not counted.
        for size in [0, 3, 5, 6, 7, 9, 16, 255] {
            assert_eq!(dev.read(MMIO_CONSTANT_OFFSET, size), 0);
            assert!(!dev.write(0, size, u64::MAX));
        }
        assert_eq!(dev.read(0, 8), 0);
        assert_eq!(dev.writes(), 6);
    }

    const MS: Nanos = 1_000_000;

    #[test]
    fn delay_test_reads_complete_after_the_delay_written() {
        let mut dev = DelayTest::<u32>::new();
        assert_eq!((dev.delay_ms(), dev.completed(), dev.next_event()), (0, 0, None));
        dev.write(4, 25);
        assert_eq!(dev.delay_ms(), 25);
        assert_eq!(dev.start_read(7, 4, 100 * MS), Ok(()));
        assert_eq!(dev.next_event(), None, "not before the owner confirms");
        assert_eq!(dev.take_completed(200 * MS), None);
        assert!(!dev.confirm(8), "another tag");
        assert!(dev.confirm(7));
        assert_eq!(dev.next_event(), Some(125 * MS));
        assert_eq!(dev.take_completed(125 * MS - 1), None, "not before the delay");
        assert_eq!(dev.take_completed(125 * MS), Some((7, DELAY_TEST_VALUE_BASE)));
        assert_eq!(dev.take_completed(200 * MS), None, "completed once");
        assert_eq!(dev.next_event(), None);
        // The next read counts on, and a late poll still completes it.
        dev.start_read(8, 4, 300 * MS).unwrap();
        assert!(dev.confirm(8));
        assert!(!dev.confirm(7), "the old read is over");
        assert_eq!(dev.take_completed(900 * MS), Some((8, DELAY_TEST_VALUE_BASE + 1)));
        assert_eq!(dev.completed(), 2);
    }

    #[test]
    fn delay_test_zero_delay_narrow_reads_and_sizes() {
        let mut dev = DelayTest::<u8>::default();
        dev.start_read(1, 2, 5).unwrap();
        dev.confirm(1);
        assert_eq!(dev.next_event(), Some(5), "delay 0 is due at once");
        assert_eq!(dev.take_completed(5), Some((1, DELAY_TEST_VALUE_BASE & 0xFFFF)));
        dev.start_read(2, 1, 5).unwrap();
        dev.confirm(2);
        assert_eq!(dev.take_completed(5), Some((2, (DELAY_TEST_VALUE_BASE + 1) & 0xFF)));
        for size in [0, 3, 8, 255] {
            assert_eq!(dev.start_read(3, size, 0), Err(DelayBusy));
        }
        // Writes take the low `size` bytes; other sizes are ignored.
        dev.write(1, 0x1234);
        assert_eq!(dev.delay_ms(), 0x34);
        dev.write(2, 0xFFFF_0102);
        assert_eq!(dev.delay_ms(), 0x0102);
        dev.write(8, 9);
        assert_eq!(dev.delay_ms(), 0x0102);
    }

    #[test]
    fn delay_test_one_read_at_a_time_and_never() {
        let mut dev = DelayTest::<u64>::new();
        dev.write(4, DELAY_TEST_NEVER);
        dev.start_read(10, 4, 0).unwrap();
        assert!(dev.confirm(10));
        assert_eq!(dev.start_read(11, 4, 0), Err(DelayBusy));
        assert_eq!(dev.next_event(), None, "never due");
        assert_eq!(dev.take_completed(Nanos::MAX), None);
        // A shorter delay written meanwhile does not change the read in progress.
        dev.write(4, 1);
        assert_eq!(dev.take_completed(Nanos::MAX), None);
        assert_eq!(dev.cancel(), Some(10));
        assert_eq!(dev.cancel(), None);
        dev.write(4, 0);
        dev.start_read(12, 4, Nanos::MAX - 1).unwrap();
        dev.confirm(12);
        assert_eq!(dev.next_event(), Some(Nanos::MAX - 1));
        assert_eq!(dev.take_completed(Nanos::MAX - 1), Some((12, DELAY_TEST_VALUE_BASE)));
        assert_eq!(dev.completed(), 1);
    }

    #[test]
    fn delay_test_huge_delays_saturate() {
        let mut dev = DelayTest::<u8>::new();
        dev.write(4, DELAY_TEST_NEVER - 1);
        dev.start_read(1, 4, Nanos::MAX - 10).unwrap();
        dev.confirm(1);
        // Saturated at Nanos::MAX, which means "never".
        assert_eq!(dev.next_event(), None);
        assert_eq!(dev.take_completed(Nanos::MAX), None);
    }
}
