//! Platform control: powering the machine off.
//!
//! One `power_off(code)` for every place the hypervisor runs:
//! 1. QEMU (TCG or KVM): write the code to the isa-debug-exit device at port 0xF4 when
//!    QEMU was started with it; QEMU then exits with status `(code << 1) | 1`.
//! 2. ACPI soft-off (S5) from the FADT and the DSDT's `\_S5`: real hardware and QEMU.
//! 3. Bochs: the string "Shutdown" written to port 0x8900 ends the simulation. Only
//!    reached when ACPI is absent (Bochs + OVMF has no tables) or did not work.
//!
//! If all fail, the CPU halts with a line saying the machine can be switched off.

use core::sync::atomic::{AtomicBool, Ordering};

use acpi::address::{AddressSpace, GenericAddress};
use spin::Once;

use crate::acpi::SoftOff;
use crate::arch::port::{outb, outl, outw};
use crate::arch::{halt_forever, tsc};
use crate::mm::stacks;

/// QEMU's isa-debug-exit I/O port (as configured by the test runner).
const QEMU_DEBUG_EXIT_PORT: u16 = 0xf4;
/// Bochs' shutdown port (iodev/unmapped.cc).
const BOCHS_SHUTDOWN_PORT: u16 = 0x8900;
/// PM1 control: SLP_EN, bit 13, and SLP_TYP, bits 12:10 (ACPI 6.5 table 4.13).
const SLP_EN: u16 = 1 << 13;
const SLP_TYP_SHIFT: u16 = 10;

static SOFT_OFF: Once<SoftOff> = Once::new();
static UNDER_QEMU: AtomicBool = AtomicBool::new(false);

/// Records how this platform powers off.
pub fn init(soft_off: Option<SoftOff>, under_qemu: bool) {
    if let Some(s) = soft_off {
        SOFT_OFF.call_once(|| s);
    }
    UNDER_QEMU.store(under_qemu, Ordering::Relaxed);
}

/// Powers the machine off; `code` reaches the QEMU test runner as the exit status.
pub fn power_off(code: u8) -> ! {
    log::info!("platform: power off (code {code})");
    crate::console::drain();
    if UNDER_QEMU.load(Ordering::Relaxed) {
        // SAFETY: under QEMU, port 0xF4 is isa-debug-exit when configured and unused
        // otherwise (the write is then ignored).
        unsafe { outl(QEMU_DEBUG_EXIT_PORT, u32::from(code)) };
    }
    if let Some(s) = SOFT_OFF.get() {
        write_pm1(&s.pm1a_control, s.sleep_types.slp_typ_a);
        if let Some(b) = &s.pm1b_control {
            write_pm1(b, s.sleep_types.slp_typ_b);
        }
        tsc::delay_us(100_000);
        log::warn!("platform: ACPI soft-off did not take effect");
    }
    // SAFETY: port 0x8900 is Bochs' shutdown port; on other machines nothing decodes it
    // (reached only without working ACPI).
    unsafe {
        for b in *b"Shutdown" {
            outb(BOCHS_SHUTDOWN_PORT, b);
        }
    }
    crate::console::write_fatal(format_args!(
        "platform: could not power off; it is safe to switch the machine off now\n"
    ));
    halt_forever()
}

fn write_pm1(reg: &GenericAddress, slp_typ: u8) {
    let value = (u16::from(slp_typ) << SLP_TYP_SHIFT) | SLP_EN;
    match reg.address_space {
        AddressSpace::SystemIo => {
            // SAFETY: the FADT names this port as PM1 control; writing SLP_TYP|SLP_EN is
            // the S5 request the ACPI spec defines (section 16.1.6).
            unsafe { outw(reg.address as u16, value) };
        }
        AddressSpace::SystemMemory => {
            if let Ok(virt) = stacks::map_device(reg.address, 2) {
                // SAFETY: the FADT names this MMIO register as PM1 control; mapped uncached.
                unsafe { (virt as *mut u16).write_volatile(value) };
            }
        }
        _ => {}
    }
}
