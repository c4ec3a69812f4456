//! The CPUID instruction.

use hv_core::cpu_features::{CpuFeatures, CpuidResult};

/// Executes CPUID for `leaf`/`subleaf`.
#[must_use]
pub fn cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    CpuidResult { eax: r.eax, ebx: r.ebx, ecx: r.ecx, edx: r.edx }
}

/// This CPU's features.
#[must_use]
pub fn features() -> CpuFeatures {
    CpuFeatures::read(cpuid)
}

/// MAXPHYADDR: physical-address width from CPUID 0x8000_0008 EAX[7:0] (SDM Vol. 2A,
/// CPUID), 36 when the leaf is missing (SDM 4.1.4).
#[must_use]
pub fn phys_addr_bits() -> u8 {
    if cpuid(0x8000_0000, 0).eax >= 0x8000_0008 {
        cpuid(0x8000_0008, 0).eax as u8
    } else {
        36
    }
}
