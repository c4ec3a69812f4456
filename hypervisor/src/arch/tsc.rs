//! The time-stamp counter: frequency and busy-wait delays.
//!
//! The frequency comes from CPUID 0x15/0x16 when the CPU reports it and a calibration
//! against PIT channel 2 (8254, gate via port 0x61) agrees; when they disagree (an
//! emulator whose TSC does not run at the reported rate) the calibration wins; see
//! `hv_core::tsc_freq`. Later work adds the HPET and ACPI PM timer.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch::port::{inb, outb};

/// TSC ticks per second; 0 until [`init`] ran.
static TSC_HZ: AtomicU64 = AtomicU64::new(0);

/// PIT input clock, 1.193182 MHz (8254 data sheet; IBM PC design).
const PIT_HZ: u64 = 1_193_182;
/// PIT channel 2 data port, mode/command port and the system control port B (0x61).
const PIT_CH2_DATA: u16 = 0x42;
const PIT_COMMAND: u16 = 0x43;
const PORT_B: u16 = 0x61;

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

/// Determines the TSC frequency once, on the BSP.
pub fn init(from_cpuid: Option<u64>) -> (u64, Source) {
    let (hz, source) = hv_core::tsc_freq::choose(from_cpuid, calibrate_with_pit());
    TSC_HZ.store(hz, Ordering::Relaxed);
    (hz, source)
}

/// Counts TSC ticks over ~10 ms of PIT channel 2 in mode 0 (interrupt on terminal
/// count: OUT2 goes high when the count reaches zero, visible in port 0x61 bit 5).
fn calibrate_with_pit() -> Option<u64> {
    const COUNT: u16 = 11_932; // ~10 ms
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
            if spins > 50_000_000 {
                return None; // no PIT here
            }
        }
        now() - start
    };
    (ticks > 0).then(|| ticks * PIT_HZ / u64::from(COUNT))
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
