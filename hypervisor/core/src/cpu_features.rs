//! Decoding the CPUID leaves the hypervisor cares about (SDM Vol. 2A, CPUID).

use core::fmt;

/// Result registers of one CPUID query.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuidResult {
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// A 48-byte brand string or 12-byte vendor string, kept without allocation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CpuString<const N: usize> {
    bytes: [u8; N],
}

impl<const N: usize> CpuString<N> {
    /// The string with NULs dropped and surrounding spaces trimmed.
    #[must_use]
    pub fn as_str(&self) -> &str {
        let end = self.bytes.iter().position(|&b| b == 0).unwrap_or(N);
        core::str::from_utf8(&self.bytes[..end]).unwrap_or("?").trim()
    }
}

impl<const N: usize> Default for CpuString<N> {
    fn default() -> Self {
        Self { bytes: [0; N] }
    }
}

impl<const N: usize> fmt::Debug for CpuString<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl<const N: usize> fmt::Display for CpuString<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The processor features the hypervisor and its pre-flight report look at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuFeatures {
    pub vendor: CpuString<12>,
    pub brand: CpuString<48>,
    pub family: u32,
    pub model: u32,
    pub stepping: u32,
    /// CPUID.1:ECX[5].
    pub vmx: bool,
    /// CPUID.1:ECX[21].
    pub x2apic: bool,
    /// CPUID.1:ECX[24].
    pub tsc_deadline: bool,
    /// CPUID.1:ECX[31]: running under a hypervisor.
    pub hypervisor: bool,
    /// The hypervisor's signature (CPUID 0x4000_0000 EBX:ECX:EDX) when `hypervisor`.
    pub hypervisor_signature: CpuString<12>,
    /// CPUID.1:EBX[31:24]: the initial APIC ID of the CPU that ran the query.
    pub initial_apic_id: u32,
    /// CPUID.8000_0007:EDX[8].
    pub invariant_tsc: bool,
    /// CPUID.8000_0001:EDX[26].
    pub pages_1g: bool,
    /// CPUID.8000_0001:EDX[20].
    pub nx: bool,
    /// TSC frequency from CPUID 0x15 (crystal × ratio), or 0x16's base MHz.
    pub tsc_hz_from_cpuid: Option<u64>,
}

impl CpuFeatures {
    /// Decodes the features from a CPUID function (`leaf`, `subleaf`).
    pub fn read(cpuid: impl Fn(u32, u32) -> CpuidResult) -> Self {
        let l0 = cpuid(0, 0);
        let max_leaf = l0.eax;
        let mut f = Self::default();
        let mut vendor = [0u8; 12];
        vendor[0..4].copy_from_slice(&l0.ebx.to_le_bytes());
        vendor[4..8].copy_from_slice(&l0.edx.to_le_bytes());
        vendor[8..12].copy_from_slice(&l0.ecx.to_le_bytes());
        f.vendor = CpuString { bytes: vendor };

        if max_leaf >= 1 {
            let l1 = cpuid(1, 0);
            let base_family = (l1.eax >> 8) & 0xf;
            let base_model = (l1.eax >> 4) & 0xf;
            f.family = if base_family == 0xf { base_family + ((l1.eax >> 20) & 0xff) } else { base_family };
            f.model = if base_family == 0x6 || base_family == 0xf {
                base_model | (((l1.eax >> 16) & 0xf) << 4)
            } else {
                base_model
            };
            f.stepping = l1.eax & 0xf;
            f.vmx = l1.ecx & (1 << 5) != 0;
            f.x2apic = l1.ecx & (1 << 21) != 0;
            f.tsc_deadline = l1.ecx & (1 << 24) != 0;
            f.hypervisor = l1.ecx & (1 << 31) != 0;
            f.initial_apic_id = l1.ebx >> 24;
        }
        if max_leaf >= 0x15 {
            let l15 = cpuid(0x15, 0);
            if l15.eax != 0 && l15.ebx != 0 && l15.ecx != 0 {
                f.tsc_hz_from_cpuid = Some(u64::from(l15.ecx) * u64::from(l15.ebx) / u64::from(l15.eax));
            }
        }
        if f.tsc_hz_from_cpuid.is_none() && max_leaf >= 0x16 {
            let mhz = cpuid(0x16, 0).eax & 0xffff;
            if mhz != 0 {
                f.tsc_hz_from_cpuid = Some(u64::from(mhz) * 1_000_000);
            }
        }
        if f.hypervisor {
            let h = cpuid(0x4000_0000, 0);
            let mut sig = [0u8; 12];
            sig[0..4].copy_from_slice(&h.ebx.to_le_bytes());
            sig[4..8].copy_from_slice(&h.ecx.to_le_bytes());
            sig[8..12].copy_from_slice(&h.edx.to_le_bytes());
            f.hypervisor_signature = CpuString { bytes: sig };
        }

        let max_ext = cpuid(0x8000_0000, 0).eax;
        if max_ext >= 0x8000_0001 {
            let e1 = cpuid(0x8000_0001, 0);
            f.pages_1g = e1.edx & (1 << 26) != 0;
            f.nx = e1.edx & (1 << 20) != 0;
        }
        if max_ext >= 0x8000_0004 {
            let mut brand = [0u8; 48];
            for (i, leaf) in (0x8000_0002..=0x8000_0004).enumerate() {
                let r = cpuid(leaf, 0);
                for (j, reg) in [r.eax, r.ebx, r.ecx, r.edx].into_iter().enumerate() {
                    let at = i * 16 + j * 4;
                    brand[at..at + 4].copy_from_slice(&reg.to_le_bytes());
                }
            }
            f.brand = CpuString { bytes: brand };
        }
        if max_ext >= 0x8000_0007 {
            f.invariant_tsc = cpuid(0x8000_0007, 0).edx & (1 << 8) != 0;
        }
        f
    }

    /// Whether the CPU is an Intel one (VT-x is Intel's; AMD-V is not supported).
    #[must_use]
    pub fn is_intel(&self) -> bool {
        self.vendor.as_str() == "GenuineIntel"
    }

    /// Whether we run under QEMU (TCG or KVM), whose isa-debug-exit device may exist.
    #[must_use]
    pub fn under_qemu_or_kvm(&self) -> bool {
        self.hypervisor && matches!(self.hypervisor_signature.as_str(), "TCGTCGTCGTCG" | "KVMKVMKVM")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs(s: &[u8; 16]) -> CpuidResult {
        let w = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
        CpuidResult { eax: w(0), ebx: w(4), ecx: w(8), edx: w(12) }
    }

    fn fake(leaf: u32, _sub: u32) -> CpuidResult {
        match leaf {
            0 => CpuidResult {
                eax: 0x16,
                ebx: u32::from_le_bytes(*b"Genu"),
                edx: u32::from_le_bytes(*b"ineI"),
                ecx: u32::from_le_bytes(*b"ntel"),
            },
            // Family 6, model 0x7e (Ice Lake client), stepping 5; APIC ID 3.
            1 => CpuidResult { eax: 0x0007_06e5, ebx: 3 << 24, ecx: (1 << 5) | (1 << 21) | (1 << 24), edx: 0 },
            0x15 => CpuidResult { eax: 2, ebx: 200, ecx: 19_200_000, edx: 0 },
            0x8000_0000 => CpuidResult { eax: 0x8000_0008, ..Default::default() },
            0x8000_0001 => CpuidResult { edx: (1 << 26) | (1 << 20), ..Default::default() },
            0x8000_0002 => regs(b"Intel(R) Core(TM"),
            0x8000_0003 => regs(b") i5-1035G1 CPU "),
            0x8000_0004 => regs(b"@ 1.00GHz\0\0\0\0\0\0\0"),
            0x8000_0007 => CpuidResult { edx: 1 << 8, ..Default::default() },
            _ => CpuidResult::default(),
        }
    }

    #[test]
    fn decodes_an_intel_cpu() {
        let f = CpuFeatures::read(fake);
        assert!(f.is_intel());
        assert_eq!(f.brand.as_str(), "Intel(R) Core(TM) i5-1035G1 CPU @ 1.00GHz");
        assert_eq!((f.family, f.model, f.stepping), (6, 0x7e, 5));
        assert!(f.vmx && f.x2apic && f.tsc_deadline && !f.hypervisor);
        assert!(f.invariant_tsc && f.pages_1g && f.nx);
        assert_eq!(f.initial_apic_id, 3);
        assert_eq!(f.tsc_hz_from_cpuid, Some(1_920_000_000));
        assert!(!f.under_qemu_or_kvm());
    }

    #[test]
    fn detects_qemu_tcg() {
        let f = CpuFeatures::read(|leaf, sub| match leaf {
            1 => CpuidResult { ecx: 1 << 31, ..fake(1, sub) },
            0x4000_0000 => CpuidResult {
                eax: 0x4000_0001,
                ebx: u32::from_le_bytes(*b"TCGT"),
                ecx: u32::from_le_bytes(*b"CGTC"),
                edx: u32::from_le_bytes(*b"GTCG"),
            },
            _ => fake(leaf, sub),
        });
        assert!(f.hypervisor && f.under_qemu_or_kvm());
        assert_eq!(f.hypervisor_signature.as_str(), "TCGTCGTCGTCG");
    }

    #[test]
    fn low_max_leaf_reads_nothing_more() {
        let f = CpuFeatures::read(|leaf, _| match leaf {
            0 => CpuidResult::default(),
            0x8000_0000 => CpuidResult::default(),
            _ => panic!("leaf {leaf:#x} must not be read"),
        });
        assert!(!f.vmx && f.brand.as_str().is_empty() && f.tsc_hz_from_cpuid.is_none());
    }
}
