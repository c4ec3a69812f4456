//! The VMCS of one vCPU: its region, and typed access to its fields through VMREAD and
//! VMWRITE (SDM Vol. 3 chapter 25 "Virtual-machine control structures"; field
//! encodings from the `x86` crate, appendix B).

use crate::mm::frames;

/// The VM-instruction error number (SDM 31.4), or `None` for VMfailInvalid (no current
/// VMCS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmInstructionError(pub Option<u32>);

impl VmInstructionError {
    /// Reads the error of the last failed VMX instruction on the current VMCS.
    #[cold]
    #[inline(never)]
    #[must_use]
    pub fn current() -> Self {
        // A read of a read-only field of the current VMCS; if there is none the read
        // fails and we report VMfailInvalid.
        Self(try_read(x86::vmx::vmcs::ro::VM_INSTRUCTION_ERROR).map(|n| n as u32))
    }

    /// The SDM's name for the error (table 31-1), for the log.
    #[must_use]
    pub fn describe(&self) -> &'static str {
        match self.0 {
            None => "VMfailInvalid (no current VMCS)",
            Some(2) => "VMCLEAR with invalid physical address",
            Some(4) => "VMLAUNCH with non-clear VMCS",
            Some(5) => "VMRESUME with non-launched VMCS",
            Some(7) => "VM entry with invalid control field(s)",
            Some(8) => "VM entry with invalid host-state field(s)",
            Some(9) => "VMPTRLD with invalid physical address",
            Some(11) => "VMPTRLD with incorrect VMCS revision identifier",
            Some(12) => "VMREAD/VMWRITE from/to unsupported VMCS component",
            Some(13) => "VMWRITE to read-only VMCS component",
            Some(26) => "VM entry with events blocked by MOV SS",
            Some(_) => "other VM-instruction error",
        }
    }
}

/// A VMCS region (one 4 KiB frame).
pub struct Vmcs {
    phys: u64,
}

impl Vmcs {
    /// Allocates a region stamped with the revision identifier (SDM 25.2).
    pub fn new(revision_id: u32) -> Option<Self> {
        let phys = frames::allocate_frame().ok()?;
        // SAFETY: a fresh, direct-mapped frame owned by this VMCS; bits 30:0 of the first
        // word are the revision identifier, bit 31 (shadow VMCS) clear.
        unsafe { frames::phys_to_virt(phys).cast::<u32>().write_volatile(revision_id & 0x7fff_ffff) };
        Some(Self { phys })
    }

    /// Host-physical address of the region.
    #[must_use]
    pub fn phys(&self) -> u64 {
        self.phys
    }

    /// VMCLEAR then VMPTRLD: makes this the current VMCS of this CPU, in the clear
    /// state (the next entry is a VMLAUNCH).
    pub fn clear_and_load(&self) -> Result<(), VmInstructionError> {
        // SAFETY: `phys` is this VMCS's own 4 KiB-aligned region with the right
        // revision; VMX is on (the caller runs after VMXON on this CPU).
        unsafe {
            x86::bits64::vmx::vmclear(self.phys).map_err(|_| VmInstructionError::current())?;
            x86::bits64::vmx::vmptrld(self.phys).map_err(|_| VmInstructionError::current())
        }
    }
}

/// Makes the VMCS region at host-physical `phys` (one that [`Vmcs::clear_and_load`]
/// set up earlier on this CPU) the current VMCS again, to switch between the vCPUs
/// that share this CPU.
pub fn load(phys: u64) -> Result<(), VmInstructionError> {
    // SAFETY: callers pass the region of a vCPU pinned to this CPU, set up and never
    // freed; VMPTRLD checks alignment and revision and fails without effect otherwise.
    unsafe { x86::bits64::vmx::vmptrld(phys) }.map_err(|_| VmInstructionError::current())
}

/// [`load`] for the per-request switches of the fast port path: VMPTRLD straight from
/// `region` (a vCPU's `vmcs` field: the host-physical address of a region that
/// [`Vmcs::clear_and_load`] set up on this CPU, never 0 for a vCPU that ran), without
/// reading the flags back through PUSHF/POP. `false` when it failed (CF or ZF set, SDM
/// 31.2 "Conventions"), which changes nothing: the caller then takes the general path,
/// which reports the error.
#[must_use]
#[inline(always)]
pub fn load_from(region: &core::sync::atomic::AtomicU64) -> bool {
    let failed: u8;
    // SAFETY: VMPTRLD reads the 8-byte operand (a live `AtomicU64`, which only its
    // vCPU's set-up writes) and makes that region current; it checks alignment,
    // address width and revision and fails without effect otherwise. No stack use.
    unsafe {
        core::arch::asm!(
            "vmptrld qword ptr [{region}]",
            "setbe {failed}",
            region = in(reg) region.as_ptr(),
            failed = out(reg_byte) failed,
            options(nostack),
        );
    }
    failed == 0
}

// VMREAD and VMWRITE are inline assembly rather than the `x86` crate's functions: these
// run several times on every exit, and the crate reads the flags back through
// PUSHF/POP. Both instructions report failure in RFLAGS (SDM 31.2 "Conventions"):
// VMfailInvalid sets CF, VMfailValid sets ZF, so "below or equal" means failure. On
// failure the destination of VMREAD is left unchanged (SDM Vol. 3 31.3 "VMREAD").
//
// VMREAD is declared `pure, readonly`: the VMCS is treated as memory that only
// non-`readonly` code changes (VMWRITE below, VMPTRLD, VM entries through
// `hv_vmx_run`), so the compiler may drop an unused read or merge two reads with no
// possible change in between, but never move a read across such a change.

/// Writes a field of the current VMCS.
#[inline]
pub fn write(field: u32, value: u64) -> Result<(), VmInstructionError> {
    let failed: u8;
    // SAFETY: VMWRITE only changes the current VMCS (checked by the CPU: a missing VMCS
    // or a bad field encoding fails with an error, reported to the caller). What a
    // field's value means for the guest is validated at VM entry. No stack use.
    unsafe {
        core::arch::asm!(
            "vmwrite {field}, {value}",
            "setbe {failed}",
            field = in(reg) u64::from(field),
            value = in(reg) value,
            failed = lateout(reg_byte) failed,
            options(nostack),
        );
    }
    if failed != 0 {
        return Err(VmInstructionError::current());
    }
    Ok(())
}

/// Writes a field of the current VMCS where the caller would ignore a failure anyway
/// (a VMCS that just exited is current and the field is one every VMCS has): no status
/// is captured.
#[inline]
pub fn write_ignoring_failure(field: u32, value: u64) {
    // SAFETY: as in `write`; a failure changes nothing and is not reported.
    unsafe {
        core::arch::asm!(
            "vmwrite {field}, {value}",
            field = in(reg) u64::from(field),
            value = in(reg) value,
            options(nostack),
        );
    }
}

/// Reads a field of the current VMCS (0 if it cannot be read).
#[inline]
#[must_use]
pub fn read(field: u32) -> u64 {
    let value: u64;
    // SAFETY: VMREAD has no side effect; `value` is zeroed first and a failed VMREAD
    // leaves it unchanged, so failure yields 0. No stack use.
    unsafe {
        core::arch::asm!(
            "xor {value:e}, {value:e}",
            "vmread {value}, {field}",
            field = in(reg) u64::from(field),
            value = out(reg) value,
            options(nostack, pure, readonly),
        );
    }
    value
}

/// Reads a field that every VMCS has (the basic exit information fields, guest RIP,
/// the interruptibility state), on the exit path: the VMCS that just exited is
/// current, so the VMREAD cannot fail, and unlike [`read`] nothing is zeroed first.
/// Were it to fail anyway, the value would be unspecified (not undefined behaviour).
#[inline]
#[must_use]
pub fn read_present(field: u32) -> u64 {
    let value: u64;
    // SAFETY: VMREAD has no side effect; it writes `value` (any bit pattern is a valid
    // `u64`) or, failing, leaves the register as it was. No stack use.
    unsafe {
        core::arch::asm!(
            "vmread {value}, {field}",
            field = in(reg) u64::from(field),
            value = lateout(reg) value,
            options(nostack, pure, readonly),
        );
    }
    value
}

/// Reads a field of the current VMCS, `None` when VMREAD fails (no current VMCS, or a
/// field it does not have).
#[must_use]
pub fn try_read(field: u32) -> Option<u64> {
    let value: u64;
    let failed: u8;
    // SAFETY: as in `read`; the flags say whether the read succeeded.
    unsafe {
        core::arch::asm!(
            "xor {value:e}, {value:e}",
            "vmread {value}, {field}",
            "setbe {failed}",
            field = in(reg) u64::from(field),
            value = out(reg) value,
            failed = lateout(reg_byte) failed,
            options(nostack, pure, readonly),
        );
    }
    (failed == 0).then_some(value)
}
