//! The machine's CMOS real-time clock (MC146818-compatible, index port 0x70, data port
//! 0x71): read once at boot for the wall-clock time the guests' virtual RTCs start
//! from (`SYSTEM_INFO(WALL_CLOCK_SECONDS)`). The decoding is `hv_core::cmos_clock`.
//!
//! Only the time, date, century and status A/B registers are read: reading them has no
//! side effect (status C, which clears the interrupt flags, is never touched), and the
//! RTC's time keeping is left as the firmware set it. Guests never reach these ports:
//! every guest port access exits to the hypervisor.

use core::sync::atomic::{AtomicU64, Ordering};

use hv_core::cmos_clock::{index, CmosTime, UtcDateTime, STATUS_A_UPDATE_IN_PROGRESS, TIME_REGISTERS};

use super::{port, tsc};

/// RTC index (address) port; bit 7 of a write is the NMI mask on PCs, left clear as
/// Linux leaves it.
const INDEX_PORT: u16 = 0x70;
/// RTC data port.
const DATA_PORT: u16 = 0x71;
/// How long an update may keep the registers busy: UIP stays set for at most 1984 us
/// per second (MC146818A datasheet, "Update Cycle"); a clock busy for longer is absent
/// or broken.
const UPDATE_WAIT_US: u64 = 10_000;
/// Reads of all registers until two in a row agree (an update between them changes
/// some; a third pair cannot straddle another update a second later).
const READ_ATTEMPTS: usize = 4;

/// Unix seconds the RTC showed at boot (0: not read, or no valid time).
static BOOT_SECONDS: AtomicU64 = AtomicU64::new(0);
/// The TSC when it showed them.
static BOOT_TSC: AtomicU64 = AtomicU64::new(0);

fn read_register(register: u8) -> u8 {
    // SAFETY: the hypervisor owns the machine's RTC (UEFI boot services have ended and
    // no runtime service is called); selecting one of the time, date or status A/B
    // registers and reading it changes no RTC state.
    unsafe {
        port::outb(INDEX_PORT, register);
        port::inb(DATA_PORT)
    }
}

fn read_time_registers() -> [u8; 8] {
    TIME_REGISTERS.map(read_register)
}

/// One consistent read of the RTC, outside an update cycle; `None` for a clock that
/// stays busy (an absent RTC reads all-ones, UIP included) or never reads the same
/// twice.
fn read_consistent() -> Option<[u8; 8]> {
    for _ in 0..READ_ATTEMPTS {
        let deadline = tsc::deadline_us(UPDATE_WAIT_US);
        while read_register(index::STATUS_A) & STATUS_A_UPDATE_IN_PROGRESS != 0 {
            if tsc::now() > deadline {
                return None;
            }
            core::hint::spin_loop();
        }
        let first = read_time_registers();
        if read_time_registers() == first {
            return Some(first);
        }
    }
    None
}

/// Reads the RTC (the TSC must be calibrated) and logs the wall-clock time the guests'
/// RTCs will start from, or why there is none.
pub fn init_wall_clock() {
    let Some(registers) = read_consistent() else {
        log::warn!("clock: the CMOS RTC does not answer; guests' RTCs start at the service partition's default date");
        return;
    };
    let time = CmosTime::from_registers(registers);
    match time.unix_seconds() {
        Some(seconds) => {
            BOOT_TSC.store(tsc::now(), Ordering::Relaxed);
            BOOT_SECONDS.store(seconds, Ordering::Release);
            log::info!("clock: host time {} (CMOS RTC)", UtcDateTime::from_unix_seconds(seconds));
        }
        None => log::warn!(
            "clock: the CMOS RTC shows no valid time ({time:x?}); guests' RTCs start at the service partition's default date"
        ),
    }
}

/// The wall-clock time now, in Unix seconds: the RTC at boot plus the TSC time since
/// (`None` when the RTC gave no time).
#[must_use]
pub fn wall_clock_seconds() -> Option<u64> {
    let boot = BOOT_SECONDS.load(Ordering::Acquire);
    if boot == 0 {
        return None;
    }
    let elapsed_ticks = tsc::now().saturating_sub(BOOT_TSC.load(Ordering::Relaxed));
    Some(boot + elapsed_ticks / tsc::hz().max(1))
}
