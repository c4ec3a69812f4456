//! Model-specific registers by name (Intel SDM Vol. 4, chapter 2).

/// The MSRs the hypervisor uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Msr {
    /// IA32_FEATURE_CONTROL (SDM Vol. 4 table 2-2, address 0x3A).
    FeatureControl = 0x3a,
    /// IA32_APIC_BASE (0x1B).
    ApicBase = 0x1b,
    /// IA32_VMX_BASIC (0x480) and the capability MSRs after it (SDM Vol. 3 appendix A).
    VmxBasic = 0x480,
    VmxPinbasedCtls = 0x481,
    VmxProcbasedCtls = 0x482,
    VmxExitCtls = 0x483,
    VmxEntryCtls = 0x484,
    VmxMisc = 0x485,
    VmxCr0Fixed0 = 0x486,
    VmxCr0Fixed1 = 0x487,
    VmxCr4Fixed0 = 0x488,
    VmxCr4Fixed1 = 0x489,
    VmxProcbasedCtls2 = 0x48b,
    VmxEptVpidCap = 0x48c,
    VmxTruePinbasedCtls = 0x48d,
    VmxTrueProcbasedCtls = 0x48e,
    VmxTrueExitCtls = 0x48f,
    VmxTrueEntryCtls = 0x490,
    /// IA32_ARCH_CAPABILITIES (0x10A; exists when CPUID.(7,0):EDX[29] is set).
    ArchCapabilities = 0x10a,
    /// IA32_GS_BASE (0xC000_0101).
    GsBase = 0xc000_0101,
}

/// Reads an MSR.
///
/// # Safety
/// The MSR must exist on this CPU (reading an absent MSR raises #GP); the caller checks
/// the CPUID or capability bit that says so.
pub unsafe fn read(msr: Msr) -> u64 {
    // SAFETY: forwarded to the caller's contract.
    unsafe { x86_64::registers::model_specific::Msr::new(msr as u32).read() }
}

/// Writes an MSR.
///
/// # Safety
/// The MSR must exist and the value must be valid for it; the write must not break
/// memory safety (e.g. EFER.NXE off while NX pages are in use).
pub unsafe fn write(msr: Msr, value: u64) {
    // SAFETY: forwarded to the caller's contract.
    unsafe { x86_64::registers::model_specific::Msr::new(msr as u32).write(value) }
}
