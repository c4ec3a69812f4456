//! `guest-deferred-stop` (2 vCPUs): vCPU 1 waits on deferred requests
//! (`hv_abi::io_request`, "Deferred completion") while vCPU 0 sends it an INIT, resets
//! (reboots) the guest, and after the reboot stops it; each time the hypervisor must
//! drop the request. CMOS NVRAM byte [`BOOT_MARK_INDEX`] (RTC ports 0x70/0x71; NVRAM
//! survives a reset) tells the boots apart.
//!
//! First boot:
//! 1. vCPU 0 sets the `delay-test` delay to [`FIRST_DELAY_MS`] and starts vCPU 1, which
//!    reads the port (the service partition answers `DEFERRED`).
//! 2. [`ACT_AFTER_MS`] later (before the read is due) vCPU 0 sends vCPU 1 an INIT: the
//!    hypervisor drops the request and vCPU 1 waits for a start-up IPI; the read never
//!    returns. vCPU 0 waits past the read's due time (the service partition's completion
//!    then finds no request waiting and is refused) and checks that it did not return.
//! 3. vCPU 0 sets the delay to `DELAY_TEST_NEVER` and starts vCPU 1 again (INIT, SIPI,
//!    SIPI), which reads again; [`ACT_AFTER_MS`] later vCPU 0 marks NVRAM and resets the
//!    guest through port 0xCF9: vCPU 1's CPU must leave its wait (dropping the request)
//!    for the reset to go on, and the guest boots again.
//!
//! Second boot: vCPU 0 sets the delay to `DELAY_TEST_NEVER` (the reset set the device
//! back), starts vCPU 1, which reads, and [`ACT_AFTER_MS`] later stops the guest with
//! `PARTITION_STOP`: vCPU 1's CPU leaves its wait and drops the request.
//!
//! If a read of vCPU 1 ever returns, or a step fails, the guest prints `FAIL` and stops
//! with code 1.
//!
//! Expected console lines: `deferred-stop: vcpu 1 waits on its deferred read; sending it
//! INIT`, `deferred-stop: the dropped read did not return`, `deferred-stop: vcpu 1 waits
//! on its second deferred read; resetting the guest`, `deferred-stop: boot 2: vcpu 1
//! waits on its deferred read; stopping the guest`.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use guest_rt::cmos;
use guest_rt::hv_abi::platform::devices::{DELAY_TEST_NEVER, DELAY_TEST_PORT};
use guest_rt::interrupts::{delay_us, us_to_tsc, wait_for};
use guest_rt::lapic::{self, icr};
use guest_rt::port::{inl, outb, outl};
use guest_rt::{println, smp, stop};

/// The delay of vCPU 1's first read, in milliseconds.
const FIRST_DELAY_MS: u32 = 300;
/// How long after vCPU 1 starts a read vCPU 0 acts (well before the read is due).
const ACT_AFTER_MS: u64 = 50;
/// How long vCPU 0 waits after the INIT: past the first read's due time, so that the
/// service partition has tried to complete it (and its device is free again).
const AFTER_INIT_MS: u64 = 2 * FIRST_DELAY_MS as u64;
/// The PIIX reset control register and the value that resets the system.
const RESET_CONTROL_PORT: u16 = 0xcf9;
const RESET_VALUE: u8 = 6;

/// The NVRAM byte that marks the second boot
/// (user RAM, MC146818A "Address Map": 0x0E-0x7F; 0x49 is used by nothing else here).
const BOOT_MARK_INDEX: u8 = 0x49;
const REBOOTED: u8 = 0xd2;

/// Reads vCPU 1 has started.
static READS_STARTED: AtomicU32 = AtomicU32::new(0);
/// A read of vCPU 1 returned.
static RETURNED: AtomicBool = AtomicBool::new(false);

/// vCPU 1: reads the delay-test port; the read is dropped before it completes.
extern "C" fn ap_entry(_apic_id: u32) -> ! {
    READS_STARTED.fetch_add(1, Ordering::SeqCst);
    let value = inl(DELAY_TEST_PORT);
    RETURNED.store(true, Ordering::SeqCst);
    println!("FAIL guest-deferred-stop: vcpu 1's read returned {value:#x} although it was dropped");
    stop(1)
}

/// Fails the guest with `why`.
fn fail(why: &str) -> ! {
    println!("FAIL guest-deferred-stop: {why}");
    stop(1)
}

/// Waits until vCPU 1 started its `n`-th read, then [`ACT_AFTER_MS`], and checks that no
/// read returned.
fn wait_for_read(n: u32) {
    if !wait_for(|| READS_STARTED.load(Ordering::SeqCst) >= n, us_to_tsc(1_000_000)) {
        fail("vcpu 1 did not start its read");
    }
    delay_us(ACT_AFTER_MS * 1000);
    if RETURNED.load(Ordering::SeqCst) {
        fail("vcpu 1's read returned before its delay");
    }
}

/// The second boot: vCPU 1 waits on a read that never completes while the guest stops.
fn second_boot() -> ! {
    cmos::write(BOOT_MARK_INDEX, 0);
    outl(DELAY_TEST_PORT, DELAY_TEST_NEVER);
    if smp::start_aps(1, ap_entry) != 1 {
        fail("vcpu 1 did not come online after the reboot");
    }
    wait_for_read(1);
    println!("deferred-stop: boot 2: vcpu 1 waits on its deferred read; stopping the guest");
    stop(0)
}

/// Entry point (see `hv_abi::start`).
#[no_mangle]
#[link_section = ".text._start"]
pub extern "C" fn _start(_vcpu: u64, _ram_bytes: u64) -> ! {
    if cmos::read(BOOT_MARK_INDEX) == REBOOTED {
        second_boot();
    }
    outl(DELAY_TEST_PORT, FIRST_DELAY_MS);
    if smp::start_aps(1, ap_entry) != 1 {
        fail("vcpu 1 did not come online");
    }
    wait_for_read(1);
    println!("deferred-stop: vcpu 1 waits on its deferred read; sending it INIT");
    lapic::send_ipi(1, icr::INIT | icr::ASSERT);
    delay_us(AFTER_INIT_MS * 1000);
    if RETURNED.load(Ordering::SeqCst) {
        fail("the read dropped by the INIT returned");
    }
    println!("deferred-stop: the dropped read did not return");

    outl(DELAY_TEST_PORT, DELAY_TEST_NEVER);
    if smp::start_aps(1, ap_entry) != 2 {
        fail("vcpu 1 did not come online again");
    }
    wait_for_read(2);
    println!("deferred-stop: vcpu 1 waits on its second deferred read; resetting the guest");
    cmos::write(BOOT_MARK_INDEX, REBOOTED);
    outb(RESET_CONTROL_PORT, RESET_VALUE);
    // The reset restarts this vCPU on its way back into the guest; nothing below runs.
    delay_us(1_000_000);
    fail("still running after the reset")
}
