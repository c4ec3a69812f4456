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
