//! The time-stamp counter: frequency and busy-wait delays.
//!
//! The frequency comes from CPUID 0x15/0x16 when the CPU reports it and a calibration
//! against a reference clock agrees within 5%; when they disagree (an emulator whose TSC
//! does not run at the reported rate) the calibration wins; see `hv_core::tsc_freq`.
//! The reference clock is the first of these that the machine has and that works: the
//! HPET (ACPI HPET table), the ACPI PM timer (FADT), PIT channel 2 (8254, gate via port
//! 0x61). Each calibration counts TSC ticks over ~10 ms of the reference clock.

use core::sync::atomic::{AtomicU64, Ordering};

use hv_core::acpi_info::{AcpiInfo, Hpet, PmTimer, Register};
use hv_core::tsc_freq::{self, Calibration, ReferenceClock};
use x86_64::instructions::port::PortReadOnly;

use crate::arch::port::{inb, outb};
use crate::mm::stacks;

/// TSC ticks per second; 0 until [`init`] ran.
static TSC_HZ: AtomicU64 = AtomicU64::new(0);

/// How long each calibration measures.
const CALIBRATION_US: u64 = 10_000;
/// Reads of a reference clock before it counts as not running.
const MAX_SPINS: u64 = 50_000_000;

/// PIT input clock, 1.193182 MHz (8254 data sheet; IBM PC design).
const PIT_HZ: u64 = 1_193_182;
/// PIT channel 2 data port, mode/command port and the system control port B (0x61).
const PIT_CH2_DATA: u16 = 0x42;
const PIT_COMMAND: u16 = 0x43;
const PORT_B: u16 = 0x61;

/// HPET register block size and register offsets (IA-PC HPET spec 1.0a section 2.3.1,
/// table 2).
const HPET_BLOCK_LEN: u64 = 1024;
/// General Capabilities and ID Register (section 2.3.4): bits 63:32 COUNTER_CLK_PERIOD
/// in femtoseconds, bit 13 COUNT_SIZE_CAP (1: the main counter is 64 bits wide).
const HPET_CAPABILITIES: u64 = 0x000;
const HPET_COUNT_SIZE_CAP: u64 = 1 << 13;
/// General Configuration Register (section 2.3.5): bit 0 ENABLE_CNF (the main counter
/// runs only while it is set).
const HPET_CONFIG: u64 = 0x010;
const HPET_ENABLE_CNF: u64 = 1 << 0;
/// Main Counter Value Register (section 2.3.7).
const HPET_MAIN_COUNTER: u64 = 0x0F0;

pub use hv_core::tsc_freq::TscSource as Source;

/// Reads the TSC.
#[must_use]
pub fn now() -> u64 {
    // SAFETY: RDTSC has no side effects; CR4.TSD is clear in ring 0 anyway.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Ticks per second (after [`init`]).
#[must_use]
pub fn hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// Determines the TSC frequency once, on the BSP. `acpi` names the HPET and the PM
/// timer when the firmware has ACPI tables; the PIT is tried last (or only).
pub fn init(from_cpuid: Option<u64>, acpi: Option<&AcpiInfo>) -> (u64, Source) {
    let hpet = acpi.and_then(|a| a.hpet);
    let pm_timer = acpi.and_then(|a| a.pm_timer);
    let calibration = hpet
        .and_then(calibrate_with_hpet)
        .or_else(|| pm_timer.and_then(calibrate_with_pm_timer))
        .or_else(calibrate_with_pit);
    if let Some(Calibration { clock, hz }) = calibration {
        log::debug!("tsc: {clock} calibration measured {hz} Hz");
    }
    let (hz, source) = tsc_freq::choose(from_cpuid, calibration);
    TSC_HZ.store(hz, Ordering::Relaxed);
    (hz, source)
}

/// Counts TSC ticks while `read_clock`, a counter `bits` wide, advances at least
/// `target` ticks. Starts on a tick edge; the TSC is read right after the reference
/// clock at both ends. Returns (TSC ticks, reference ticks), or `None` when the clock
/// stands still or crawls.
fn measure(read_clock: impl Fn() -> u64, bits: u32, target: u64) -> Option<(u64, u64)> {
    let mut spins: u64 = 0;
    let first = read_clock();
    let mut start = first;
    while start == first {
        start = read_clock();
        spins += 1;
        if spins > MAX_SPINS {
            return None;
        }
    }
    let tsc_start = now();
    loop {
        let elapsed = tsc_freq::counter_elapsed(start, read_clock(), bits);
        let tsc = now();
        if elapsed >= target {
            return Some((tsc - tsc_start, elapsed));
        }
        spins += 1;
        if spins > MAX_SPINS {
            return None;
        }
    }
}

/// Calibrates against the HPET main counter. The counter is enabled for the
/// measurement if it was off, and left as it was found.
fn calibrate_with_hpet(hpet: Hpet) -> Option<Calibration> {
    let mmio = match stacks::map_device(hpet.base, HPET_BLOCK_LEN) {
        Ok(virt) => virt,
        Err(e) => {
            log::warn!("tsc: cannot map the HPET at {:#x} ({e:?}); trying the next clock", hpet.base);
            return None;
        }
    };
    // SAFETY: `mmio` maps the HPET's 1 KiB register block uncached (the ACPI HPET table
    // names it); the capabilities, configuration and main counter registers are 64-bit,
    // 8-byte aligned, and reading them has no side effects (HPET spec 1.0a section 2.3).
    let read = |reg: u64| unsafe { ((mmio + reg) as *const u64).read_volatile() };
    // SAFETY: as for `read`; only the configuration register is written, and only its
    // ENABLE_CNF bit changes (a read-modify-write that keeps every other bit).
    let write = |reg: u64, value: u64| unsafe { ((mmio + reg) as *mut u64).write_volatile(value) };

    let capabilities = read(HPET_CAPABILITIES);
    let period_fs = capabilities >> 32;
    if period_fs == 0 || period_fs > tsc_freq::HPET_MAX_PERIOD_FS {
        log::warn!(
            "tsc: the HPET at {:#x} reports a period of {period_fs} fs (not 1..={} fs); trying the next clock",
            hpet.base,
            tsc_freq::HPET_MAX_PERIOD_FS
        );
        return None;
    }
    let bits = if capabilities & HPET_COUNT_SIZE_CAP != 0 { 64 } else { 32 };
    let config = read(HPET_CONFIG);
    let was_off = config & HPET_ENABLE_CNF == 0;
    if was_off {
        write(HPET_CONFIG, config | HPET_ENABLE_CNF);
    }
    let measured = measure(|| read(HPET_MAIN_COUNTER), bits, tsc_freq::hpet_ticks_in_us(CALIBRATION_US, period_fs));
    if was_off {
        write(HPET_CONFIG, config);
    }
    let hz = measured.and_then(|(tsc_ticks, hpet_ticks)| tsc_freq::hz_from_hpet(tsc_ticks, hpet_ticks, period_fs));
    if hz.is_none() {
        log::warn!("tsc: the HPET at {:#x} does not count; trying the next clock", hpet.base);
    }
    Some(Calibration { clock: ReferenceClock::Hpet, hz: hz? })
}

/// Calibrates against the ACPI PM timer (3.579545 MHz, 24 or 32 bits wide; ACPI 6.5
/// section 4.8.3.3).
fn calibrate_with_pm_timer(pm: PmTimer) -> Option<Calibration> {
    #[derive(Clone, Copy)]
    enum Access {
        Port(u16),
        Mmio(u64),
    }
    let access = match pm.register {
        Register::Port(port) => Access::Port(port),
        Register::Memory(phys) => match stacks::map_device(phys, 4) {
            Ok(virt) => Access::Mmio(virt),
            Err(e) => {
                log::warn!("tsc: cannot map the ACPI PM timer at {phys:#x} ({e:?}); trying the next clock");
                return None;
            }
        },
    };
    let read = || -> u64 {
        let value = match access {
            // SAFETY: the FADT names this port as the PM timer, a read-only 32-bit
            // register whose reads have no side effects (ACPI 6.5 section 4.8.3.3).
            Access::Port(port) => unsafe { PortReadOnly::<u32>::new(port).read() },
            // SAFETY: as for the port; `virt` maps the register uncached.
            Access::Mmio(virt) => unsafe { (virt as *const u32).read_volatile() },
        };
        u64::from(value)
    };
    let target = tsc_freq::PM_TIMER_HZ * CALIBRATION_US / 1_000_000;
    let hz = measure(read, pm.bits, target)
        .and_then(|(tsc_ticks, pm_ticks)| tsc_freq::hz_from_ticks(tsc_ticks, pm_ticks, tsc_freq::PM_TIMER_HZ));
    if hz.is_none() {
        log::warn!("tsc: the ACPI PM timer ({:?}) does not count; trying the next clock", pm.register);
    }
    Some(Calibration { clock: ReferenceClock::PmTimer, hz: hz? })
}

/// Counts TSC ticks over ~10 ms of PIT channel 2 in mode 0 (interrupt on terminal
/// count: OUT2 goes high when the count reaches zero, visible in port 0x61 bit 5).
fn calibrate_with_pit() -> Option<Calibration> {
    // 11,932 ticks at 1.193182 MHz: ~10 ms.
    const COUNT: u16 = 11_932;

    // SAFETY: ports 0x42/0x43/0x61 belong to the PIT and the speaker gate, which
    // nothing else in the hypervisor uses; the speaker stays off (bit 1 clear).
    let ticks = unsafe {
        let b = inb(PORT_B);
        outb(PORT_B, (b & !0x02) | 0x01); // gate channel 2 on, speaker off
        outb(PIT_COMMAND, 0b1011_0000); // channel 2, lobyte/hibyte, mode 0, binary
        outb(PIT_CH2_DATA, (COUNT & 0xff) as u8);
        outb(PIT_CH2_DATA, (COUNT >> 8) as u8);
        let start = now();
        let mut spins: u64 = 0;
        while inb(PORT_B) & 0x20 == 0 {
            spins += 1;
            if spins > MAX_SPINS {
                return None; // no PIT here
            }
        }
        now() - start
    };
    let hz = tsc_freq::hz_from_ticks(ticks, u64::from(COUNT), PIT_HZ)?;
    Some(Calibration { clock: ReferenceClock::Pit, hz })
}

/// Busy-waits for `us` microseconds.
pub fn delay_us(us: u64) {
    let end = now() + us * hz() / 1_000_000;
    while now() < end {
        core::hint::spin_loop();
    }
}

/// A TSC deadline `us` microseconds from now.
#[must_use]
pub fn deadline_us(us: u64) -> u64 {
    now() + us * hz() / 1_000_000
}
