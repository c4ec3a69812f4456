//! INVEPT: dropping the EPT-derived translations a CPU cached (SDM Vol. 3C 29.4.3.1,
//! and the INVEPT instruction page in Vol. 2).
//!
//! A CPU caches guest-physical and combined mappings per EPTP. After the hypervisor
//! removes or narrows an EPT mapping (`hv_core::ept::InveptRequired`), every CPU that
//! ran a vCPU of that VM must execute INVEPT before the vCPU runs again; INVEPT acts
//! only on the CPU that executes it.

use core::sync::atomic::{AtomicBool, Ordering};

/// INVEPT types (SDM Vol. 2, INVEPT): 1 single-context, 2 all-context.
const SINGLE_CONTEXT: u64 = 1;
const ALL_CONTEXT: u64 = 2;

static SINGLE_CONTEXT_SUPPORTED: AtomicBool = AtomicBool::new(false);

/// Records which INVEPT types the CPU has (from IA32_VMX_EPT_VPID_CAP).
pub fn init(ept_vpid_cap: u64) {
    SINGLE_CONTEXT_SUPPORTED
        .store(ept_vpid_cap & hv_core::vmx_caps::ept_vpid::INVEPT_SINGLE_CONTEXT != 0, Ordering::Relaxed);
}

/// Invalidates this CPU's cached translations for `eptp` (all contexts when the CPU
/// has no single-context INVEPT). `Err` when the instruction failed.
pub fn invalidate(eptp: u64) -> Result<(), ()> {
    let kind = if SINGLE_CONTEXT_SUPPORTED.load(Ordering::Relaxed) { SINGLE_CONTEXT } else { ALL_CONTEXT };
    let descriptor: [u64; 2] = [eptp, 0];
    let flags: u64;
    // SAFETY: INVEPT only drops cached translations on this CPU, which is in VMX root
    // operation (the caller runs between a VM exit and the next entry); the descriptor
    // is a valid 16-byte memory operand (EPTP, then 64 reserved zero bits).
    unsafe {
        core::arch::asm!(
            "invept {kind}, [{desc}]",
            "pushfq",
            "pop {flags}",
            kind = in(reg) kind,
            desc = in(reg) descriptor.as_ptr(),
            flags = lateout(reg) flags,
        );
    }
    // CF or ZF set: VMfailInvalid / VMfailValid (SDM 31.2).
    if flags & 0x41 == 0 {
        Ok(())
    } else {
        Err(())
    }
}
