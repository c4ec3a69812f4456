//! The CPUID values a guest sees: the host's, adjusted to the virtual machine.
//!
//! [`virtual_cpuid`] is the whole contract, leaf by leaf (CPUID layouts: SDM Vol. 2A,
//! "CPUID—CPU Identification", table 3-8):
//!
//! | leaf | what the guest sees |
//! |------|---------------------|
//! | 0 | host vendor; highest basic leaf min(host, 0x1F) |
//! | 0 | with a known TSC frequency at least 0x16 (the leaves 0x15/0x16 below are synthesised) |
//! | 1 | ECX: hypervisor (31) set, VMX (5) and SMX (6) clear, OSXSAVE (27) as given, MONITOR (3), EIST (7), TM2 (8), PDCM (15), DTES64 (2), DS-CPL (4) clear; EDX: DS (21), ACPI thermal (22), TM (29) clear; EBX[31:24] = vCPU id (initial APIC ID), EBX[23:16] = vCPU count; EDX HTT (28) set iff count > 1 |
//! | 4 | for each cache present: EAX[31:26] = count − 1 cores per package, EAX[25:14] = 0 (one thread per cache); the rest as host |
//! | 6 | EAX = ARAT (bit 2: the virtual LAPIC timer always runs), the rest 0 (no thermal/power management) |
//! | 7.0 | SGX (EBX 2), RDT monitoring/allocation (EBX 12, 15), Intel PT (EBX 25), WAITPKG (ECX 5), SGX_LC (ECX 30) and IA32_CORE_CAPABILITIES (EDX 30) clear |
//! | 0xF, 0x10, 0x12, 0x14 | zeros (no RDT, SGX or processor trace) |
//! | 0xA | zeros (no PMU) |
//! | 0xB, 0x1F | one thread per core, `count` cores: level 0 SMT (shift 0, 1 processor), level 1 core (shift = bits for count, `count` processors), higher levels invalid; EDX = vCPU id |
//! | 0x4000_0000 | EAX 0x4000_0001, EBX:ECX:EDX = [`SIGNATURE`] |
//! | 0x4000_0001 | EAX = [`INTERFACE_VERSION`], rest 0 |
//! | 0x4000_0002..=0x4000_00FF | zeros |
//! | others | host value |
//!
//! Leaf 1 ECX[27] (OSXSAVE) mirrors CR4.OSXSAVE of whoever executes CPUID: the caller
//! passes the host value and should replace it with the guest's CR4 bit.
//!
//! Instructions that the VMCS secondary controls leave disabled raise #UD in the guest;
//! [`hide_disabled_features`] clears their CPUID bits. [`HostCpuid::adjust`] applies the
//! facts read once from the host: leaves above the host's highest basic leaf read zero
//! (a CPU answers them with its highest leaf's data), and the XSAVE leaf 0xD lists only
//! the state components whose size and offset the host reports ([`XsaveLayout`]), with
//! sizes computed from them.
//!
//! Hidden features and why: MONITOR/MWAIT, so an idle guest executes HLT, which exits and
//! lets the CPU serve other work; thermal monitoring and EIST, whose MSRs are not
//! virtualised; debug store and PDCM, as there is no PMU; RDT, SGX and processor trace,
//! which are not virtualised.

use crate::cpu_features::CpuidResult;
use crate::vlapic::VIRTUAL_BUS_HZ;
use crate::vmx_controls::proc2;

/// The hypervisor's CPUID signature, in CPUID 0x4000_0000 EBX, ECX, EDX (4 bytes each,
/// little-endian): `HVRSHVRSHVRS`. Guests (e.g. Linux' hypervisor detection) compare it
/// to known vendors; an unknown one makes them treat the platform as generic.
pub const SIGNATURE: &[u8; 12] = b"HVRSHVRSHVRS";

/// CPUID 0x4000_0001 EAX: version of the hypervisor interface described here.
pub const INTERFACE_VERSION: u32 = 1;

/// Highest hypervisor leaf (CPUID 0x4000_0000 EAX).
pub const MAX_HYPERVISOR_LEAF: u32 = TIMING_LEAF;

/// The hypervisor leaf with the timing facts (the convention VMware introduced and
/// other hypervisors follow): EAX = TSC kHz, EBX = LAPIC bus kHz.
pub const TIMING_LEAF: u32 = 0x4000_0010;

/// Highest basic leaf shown to guests.
pub const MAX_BASIC_LEAF: u32 = 0x1f;

/// The virtual processor that executes CPUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuInfo {
    /// This vCPU's (initial x2)APIC ID, 0-based.
    pub vcpu_id: u32,
    /// Number of vCPUs of the virtual machine (at least 1).
    pub vcpu_count: u32,
    /// The guest's TSC frequency in Hz (0: unknown, the timing leaves are then the host's).
    pub tsc_hz: u64,
}

/// CPUID.1:ECX bits (SDM Vol. 2A table 3-10).
pub mod leaf1_ecx {
    pub const DTES64: u32 = 1 << 2;
    pub const MONITOR: u32 = 1 << 3;
    pub const DS_CPL: u32 = 1 << 4;
    pub const EIST: u32 = 1 << 7;
    pub const TM2: u32 = 1 << 8;
    pub const PDCM: u32 = 1 << 15;
    pub const VMX: u32 = 1 << 5;
    pub const SMX: u32 = 1 << 6;
    pub const X2APIC: u32 = 1 << 21;
    pub const TSC_DEADLINE: u32 = 1 << 24;
    pub const OSXSAVE: u32 = 1 << 27;
    pub const HYPERVISOR: u32 = 1 << 31;
}

/// CPUID.1:EDX bit 28: HTT (EBX[23:16] is valid).
pub const LEAF1_EDX_HTT: u32 = 1 << 28;

/// CPUID.6:EAX bit 2: ARAT, the APIC timer always runs (SDM Vol. 2A table 3-8).
pub const LEAF6_EAX_ARAT: u32 = 1 << 2;

/// CPUID.1:EDX bits hidden from guests: DS (21), ACPI thermal MSRs (22), TM (29).
pub const LEAF1_EDX_HIDDEN: u32 = 1 << 21 | 1 << 22 | 1 << 29;

/// CPUID.1:ECX bits hidden from guests (see the module documentation).
pub const LEAF1_ECX_HIDDEN: u32 = leaf1_ecx::VMX
    | leaf1_ecx::SMX
    | leaf1_ecx::MONITOR
    | leaf1_ecx::EIST
    | leaf1_ecx::TM2
    | leaf1_ecx::PDCM
    | leaf1_ecx::DTES64
    | leaf1_ecx::DS_CPL;

/// CPUID.(EAX=7,ECX=0) bits (SDM Vol. 2A table 3-8).
pub mod leaf7 {
    /// EBX bit 2.
    pub const EBX_SGX: u32 = 1 << 2;
    /// EBX bit 10.
    pub const EBX_INVPCID: u32 = 1 << 10;
    /// ECX bit 5: UMONITOR/UMWAIT/TPAUSE.
    pub const ECX_WAITPKG: u32 = 1 << 5;
    /// ECX bit 30: SGX launch configuration.
    pub const ECX_SGX_LC: u32 = 1 << 30;
    /// ECX bit 3: protection keys for user pages.
    pub const ECX_PKU: u32 = 1 << 3;
    /// EBX bit 12: RDT monitoring.
    pub const EBX_RDT_M: u32 = 1 << 12;
    /// EBX bit 15: RDT allocation.
    pub const EBX_RDT_A: u32 = 1 << 15;
    /// EBX bit 25: Intel processor trace.
    pub const EBX_PT: u32 = 1 << 25;
    /// EDX bit 29: IA32_ARCH_CAPABILITIES.
    pub const EDX_ARCH_CAPABILITIES: u32 = 1 << 29;
    /// EDX bit 30: IA32_CORE_CAPABILITIES.
    pub const EDX_CORE_CAPABILITIES: u32 = 1 << 30;
}

/// CPUID.8000_0001:EDX bit 27: RDTSCP.
pub const EXT1_EDX_RDTSCP: u32 = 1 << 27;

/// CPUID.(EAX=0Dh,ECX=1):EAX bit 3: XSAVES/XRSTORS.
pub const XSAVE1_EAX_XSAVES: u32 = 1 << 3;

/// Greatest common divisor (Euclid).
const fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        let t = a % b;
        a = b;
        b = t;
    }
    if a == 0 {
        1
    } else {
        a
    }
}

/// Largest numerator or denominator of the TSC/crystal ratio in leaf 0x15. Linux
/// computes `crystal_khz * numerator / denominator` in 32 bits; with the 100 MHz
/// crystal (the virtual LAPIC timer's clock, which Linux derives from the crystal)
/// 100_000 * 42_000 still fits.
pub const MAX_RATIO_TERM: u64 = 42_000;

/// The TSC/crystal ratio (numerator, denominator) of leaf 0x15 (SDM Vol. 2A, CPUID leaf
/// 15H): exact when the reduced fraction has terms up to [`MAX_RATIO_TERM`], otherwise
/// the nearest fraction whose larger term is about [`MAX_RATIO_TERM`] (an error of at
/// most 1/42000, 24 ppm).
#[must_use]
pub const fn tsc_crystal_ratio(tsc_hz: u64, crystal_hz: u64) -> (u32, u32) {
    if tsc_hz == 0 || crystal_hz == 0 {
        return (0, 0);
    }
    let g = gcd(tsc_hz, crystal_hz);
    let (num, den) = (tsc_hz / g, crystal_hz / g);
    if num <= MAX_RATIO_TERM && den <= MAX_RATIO_TERM {
        return (num as u32, den as u32);
    }
    let big = if tsc_hz > crystal_hz { tsc_hz } else { crystal_hz };
    let den = (MAX_RATIO_TERM as u128 * crystal_hz as u128 / big as u128) as u64;
    let den = if den == 0 { 1 } else { den };
    let num = ((tsc_hz as u128 * den as u128 + crystal_hz as u128 / 2) / crystal_hz as u128) as u64;
    let num = if num == 0 {
        1
    } else if num > MAX_RATIO_TERM {
        MAX_RATIO_TERM
    } else {
        num
    };
    (num as u32, den as u32)
}

/// Number of bits needed to give each of `count` processors its own ID (x2APIC ID
/// shift of the level that contains them all).
#[must_use]
pub const fn id_bits(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

/// The CPUID result the guest sees for (`leaf`, `subleaf`), given the host's `host`
/// result for the same query. See the module documentation for the rules.
// Always inlined: the kernel calls it on every CPUID exit, where passing the results
// through memory cost more than the leaf's own rules.
#[must_use]
#[inline(always)]
pub fn virtual_cpuid(leaf: u32, subleaf: u32, host: CpuidResult, vcpu: VcpuInfo) -> CpuidResult {
    let count = vcpu.vcpu_count.max(1);
    let zero = CpuidResult::default();
    match leaf {
        0 => {
            let max = host.eax.min(MAX_BASIC_LEAF);
            CpuidResult { eax: if vcpu.tsc_hz != 0 { max.max(0x16) } else { max }, ..host }
        }
        1 => {
            let ecx =
                (host.ecx | leaf1_ecx::HYPERVISOR | leaf1_ecx::X2APIC | leaf1_ecx::TSC_DEADLINE) & !LEAF1_ECX_HIDDEN;
            let ebx = (host.ebx & 0xffff) | (vcpu.vcpu_id & 0xff) << 24 | count.min(0xff) << 16;
            let edx = if count > 1 { host.edx | LEAF1_EDX_HTT } else { host.edx & !LEAF1_EDX_HTT };
            CpuidResult { eax: host.eax, ebx, ecx, edx: edx & !LEAF1_EDX_HIDDEN }
        }
        4 if host.eax & 0x1f != 0 => {
            let eax = (host.eax & 0x3fff) | (count - 1).min(0x3f) << 26;
            CpuidResult { eax, ..host }
        }
        // ARAT: the virtual LAPIC timer never stops in an idle state, so a guest needs no
        // broadcast timer (Linux otherwise polls in idle or leans on the PIT).
        6 => CpuidResult { eax: LEAF6_EAX_ARAT, ..zero },
        0xa => zero,
        7 if subleaf == 0 => CpuidResult {
            ebx: host.ebx & !(leaf7::EBX_SGX | leaf7::EBX_RDT_M | leaf7::EBX_RDT_A | leaf7::EBX_PT),
            ecx: host.ecx & !(leaf7::ECX_WAITPKG | leaf7::ECX_SGX_LC),
            edx: host.edx & !leaf7::EDX_CORE_CAPABILITIES,
            ..host
        },
        0xf | 0x10 | 0x12 | 0x14 => zero,
        0xb | 0x1f => {
            let level = subleaf & 0xff;
            let (eax, ebx, ecx) = match subleaf {
                // SMT level: one thread per core.
                0 => (0, 1, level | 1 << 8),
                // Core level: all vCPUs in one package.
                1 => (id_bits(count), count & 0xffff, level | 2 << 8),
                _ => (0, 0, level),
            };
            CpuidResult { eax, ebx, ecx, edx: vcpu.vcpu_id }
        }
        0x15 if vcpu.tsc_hz != 0 => {
            let (num, den) = tsc_crystal_ratio(vcpu.tsc_hz, VIRTUAL_BUS_HZ);
            CpuidResult { eax: den, ebx: num, ecx: VIRTUAL_BUS_HZ as u32, edx: 0 }
        }
        0x16 if vcpu.tsc_hz != 0 => {
            let mhz = (vcpu.tsc_hz / 1_000_000).min(0xffff) as u32;
            CpuidResult { eax: mhz, ebx: mhz, ecx: (VIRTUAL_BUS_HZ / 1_000_000) as u32, edx: 0 }
        }
        0x4000_0000 => {
            let word =
                |i: usize| u32::from_le_bytes([SIGNATURE[i], SIGNATURE[i + 1], SIGNATURE[i + 2], SIGNATURE[i + 3]]);
            CpuidResult { eax: MAX_HYPERVISOR_LEAF, ebx: word(0), ecx: word(4), edx: word(8) }
        }
        0x4000_0001 => CpuidResult { eax: INTERFACE_VERSION, ..zero },
        TIMING_LEAF => CpuidResult {
            eax: (vcpu.tsc_hz / 1000).min(u64::from(u32::MAX)) as u32,
            ebx: (VIRTUAL_BUS_HZ / 1000) as u32,
            ..zero
        },
        0x4000_0002..=0x4000_00ff => zero,
        _ => host,
    }
}

/// Clears the CPUID bits of instructions that raise #UD in the guest because their
/// secondary processor-based control (SDM 25.6.2 table 25-7) is 0 in `proc2`: RDTSCP
/// (enable RDTSCP), INVPCID (enable INVPCID), XSAVES/XRSTORS (enable XSAVES/XRSTORS),
/// WAITPKG (enable user wait and pause). Apply after [`virtual_cpuid`].
#[must_use]
pub const fn hide_disabled_features(leaf: u32, subleaf: u32, mut r: CpuidResult, proc2_controls: u32) -> CpuidResult {
    match (leaf, subleaf) {
        (7, 0) => {
            if proc2_controls & proc2::ENABLE_INVPCID == 0 {
                r.ebx &= !leaf7::EBX_INVPCID;
            }
            if proc2_controls & proc2::ENABLE_USER_WAIT_PAUSE == 0 {
                r.ecx &= !leaf7::ECX_WAITPKG;
            }
        }
        (0xd, 1) if proc2_controls & proc2::ENABLE_XSAVES == 0 => r.eax &= !XSAVE1_EAX_XSAVES,
        (0x8000_0001, _) if proc2_controls & proc2::ENABLE_RDTSCP == 0 => r.edx &= !EXT1_EDX_RDTSCP,
        _ => {}
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ONE: VcpuInfo = VcpuInfo { vcpu_id: 0, vcpu_count: 1, tsc_hz: 0 };
    const FOUR_2: VcpuInfo = VcpuInfo { vcpu_id: 2, vcpu_count: 4, tsc_hz: 0 };

    fn r(eax: u32, ebx: u32, ecx: u32, edx: u32) -> CpuidResult {
        CpuidResult { eax, ebx, ecx, edx }
    }

    #[test]
    fn timing_leaves_describe_the_tsc_and_the_lapic_bus() {
        let v = VcpuInfo { vcpu_id: 0, vcpu_count: 1, tsc_hz: 2_400_000_000 };
        let l15 = virtual_cpuid(0x15, 0, r(2, 200, 0, 0), v);
        assert_eq!(u64::from(l15.ecx) * u64::from(l15.ebx) / u64::from(l15.eax), 2_400_000_000);
        assert_eq!(l15.ecx, 100_000_000);
        assert_eq!(virtual_cpuid(0x16, 0, r(1, 2, 3, 0), v), r(2400, 2400, 100, 0));
        assert_eq!(virtual_cpuid(TIMING_LEAF, 0, r(9, 9, 9, 9), v), r(2_400_000, 100_000, 0, 0));
        assert_eq!(virtual_cpuid(0x4000_0000, 0, r(0, 0, 0, 0), v).eax, TIMING_LEAF);
        // Bochs at 100 M instructions/s: a 1:1 ratio.
        let bochs = VcpuInfo { tsc_hz: 100_000_000, ..v };
        assert_eq!(virtual_cpuid(0x15, 0, r(0, 0, 0, 0), bochs), r(1, 1, 100_000_000, 0));
        // Unknown frequency: the host's leaves 0x15/0x16 stay.
        let unknown = VcpuInfo { tsc_hz: 0, ..v };
        assert_eq!(virtual_cpuid(0x15, 0, r(2, 200, 0, 0), unknown), r(2, 200, 0, 0));
    }

    #[test]
    fn leaf1_always_offers_x2apic_and_tsc_deadline() {
        let v = virtual_cpuid(1, 0, r(0, 0, 0, 0), ONE);
        assert_ne!(v.ecx & leaf1_ecx::X2APIC, 0);
        assert_ne!(v.ecx & leaf1_ecx::TSC_DEADLINE, 0);
    }

    #[test]
    fn leaf0_caps_max_leaf_and_keeps_vendor() {
        let genuine = r(0x20, 0x756e_6547, 0x6c65_746e, 0x4965_6e69);
        assert_eq!(virtual_cpuid(0, 0, genuine, ONE), r(0x1f, 0x756e_6547, 0x6c65_746e, 0x4965_6e69));
        let old = r(0xd, 1, 2, 3);
        assert_eq!(virtual_cpuid(0, 0, old, ONE), old);
    }

    #[test]
    fn leaf1() {
        // Host: VMX, SMX, OSXSAVE, x2APIC; APIC ID 7, 16 logical; CLFLUSH 8, brand 0.
        let host = r(0x000a_0671, 0x0710_0800, 0x0800_0060 | 1 << 21, 0x178b_fbff);
        let v = virtual_cpuid(1, 0, host, FOUR_2);
        assert_eq!(v.eax, host.eax);
        assert_eq!(v.ebx, 0x0204_0800);
        assert_eq!(v.ecx, 0x8800_0000 | 1 << 21 | leaf1_ecx::TSC_DEADLINE);
        assert_ne!(v.edx & LEAF1_EDX_HTT, 0);
        let v = virtual_cpuid(1, 0, host, ONE);
        assert_eq!(v.ebx, 0x0001_0800);
        assert_eq!(v.edx & LEAF1_EDX_HTT, 0);
        assert_eq!(v.edx | LEAF1_EDX_HTT, host.edx | LEAF1_EDX_HTT);
        // OSXSAVE is passed as given.
        let v = virtual_cpuid(1, 0, r(0, 0, 0, 0), ONE);
        assert_eq!(v.ecx, leaf1_ecx::HYPERVISOR | leaf1_ecx::X2APIC | leaf1_ecx::TSC_DEADLINE);
    }

    #[test]
    fn leaf4_cache_topology() {
        // L1d: type 1, level 1, 2 threads sharing, 8 cores per package.
        let host = r(0x1c00_4121, 0x01c0_003f, 0x3f, 0);
        let v = virtual_cpuid(4, 0, host, FOUR_2);
        assert_eq!(v, r(0x0c00_0121, 0x01c0_003f, 0x3f, 0));
        assert_eq!(virtual_cpuid(4, 0, host, ONE).eax, 0x0000_0121);
        // No more caches: untouched.
        assert_eq!(virtual_cpuid(4, 4, r(0, 0, 0, 0), FOUR_2), r(0, 0, 0, 0));
    }

    #[test]
    fn thermal_and_pmu_are_hidden() {
        let host = r(0x77, 0x2, 0x9, 0x1);
        assert_eq!(virtual_cpuid(6, 0, host, ONE), CpuidResult { eax: LEAF6_EAX_ARAT, ..CpuidResult::default() });
        assert_eq!(virtual_cpuid(0xa, 0, host, ONE), CpuidResult::default());
    }

    #[test]
    fn leaf7_hides_sgx_rdt_pt_waitpkg_and_core_capabilities() {
        let host = r(2, u32::MAX, u32::MAX, u32::MAX);
        let v = virtual_cpuid(7, 0, host, ONE);
        assert_eq!(v.ebx, !(leaf7::EBX_SGX | leaf7::EBX_RDT_M | leaf7::EBX_RDT_A | leaf7::EBX_PT));
        assert_eq!(v.ecx, !(leaf7::ECX_WAITPKG | leaf7::ECX_SGX_LC));
        assert_eq!((v.eax, v.edx), (2, !leaf7::EDX_CORE_CAPABILITIES));
        assert_eq!(virtual_cpuid(7, 1, host, ONE), host);
    }

    #[test]
    fn extended_topology() {
        for leaf in [0xb, 0x1f] {
            let host = r(1, 2, 3, 4);
            assert_eq!(virtual_cpuid(leaf, 0, host, FOUR_2), r(0, 1, 0x100, 2));
            assert_eq!(virtual_cpuid(leaf, 1, host, FOUR_2), r(2, 4, 0x201, 2));
            assert_eq!(virtual_cpuid(leaf, 2, host, FOUR_2), r(0, 0, 2, 2));
            assert_eq!(virtual_cpuid(leaf, 7, host, FOUR_2), r(0, 0, 7, 2));
            assert_eq!(virtual_cpuid(leaf, 1, host, ONE), r(0, 1, 0x201, 0));
            let five = VcpuInfo { vcpu_id: 4, vcpu_count: 5, tsc_hz: 0 };
            assert_eq!(virtual_cpuid(leaf, 1, host, five), r(3, 5, 0x201, 4));
        }
        assert_eq!([id_bits(0), id_bits(1), id_bits(2), id_bits(3), id_bits(4), id_bits(5)], [0, 0, 1, 2, 2, 3]);
        assert_eq!(id_bits(256), 8);
    }

    #[test]
    fn hypervisor_leaves() {
        let host = r(9, 9, 9, 9);
        let v = virtual_cpuid(0x4000_0000, 0, host, ONE);
        assert_eq!(v.eax, TIMING_LEAF);
        let mut sig = [0u8; 12];
        sig[0..4].copy_from_slice(&v.ebx.to_le_bytes());
        sig[4..8].copy_from_slice(&v.ecx.to_le_bytes());
        sig[8..12].copy_from_slice(&v.edx.to_le_bytes());
        assert_eq!(&sig, SIGNATURE);
        assert_eq!(virtual_cpuid(0x4000_0001, 0, host, ONE), r(1, 0, 0, 0));
        assert_eq!(virtual_cpuid(0x4000_0002, 0, host, ONE), CpuidResult::default());
        assert_eq!(virtual_cpuid(0x4000_00ff, 3, host, ONE), CpuidResult::default());
        assert_eq!(virtual_cpuid(0x4000_0100, 0, host, ONE), host);
    }

    #[test]
    fn other_leaves_pass_through() {
        let host = r(0x1234, 0x5678, 0x9abc, 0xdef0);
        for leaf in [2, 3, 5, 0xd, 0x15, 0x16, 0x8000_0000, 0x8000_0001, 0x8000_0008] {
            assert_eq!(virtual_cpuid(leaf, 0, host, FOUR_2), host, "leaf {leaf:#x}");
        }
    }

    #[test]
    fn disabled_controls_hide_instructions() {
        let all = r(u32::MAX, u32::MAX, u32::MAX, u32::MAX);
        let on = proc2::ENABLE_RDTSCP | proc2::ENABLE_INVPCID | proc2::ENABLE_XSAVES | proc2::ENABLE_USER_WAIT_PAUSE;
        for (leaf, sub) in [(7, 0), (0xd, 1), (0x8000_0001, 0), (1, 0)] {
            assert_eq!(hide_disabled_features(leaf, sub, all, on), all);
        }
        assert_eq!(hide_disabled_features(7, 0, all, 0).ebx, !leaf7::EBX_INVPCID);
        assert_eq!(hide_disabled_features(7, 0, all, 0).ecx, !leaf7::ECX_WAITPKG);
        assert_eq!(hide_disabled_features(0xd, 1, all, 0).eax, !XSAVE1_EAX_XSAVES);
        assert_eq!(hide_disabled_features(0xd, 0, all, 0), all);
        assert_eq!(hide_disabled_features(0x8000_0001, 0, all, 0).edx, !EXT1_EDX_RDTSCP);
    }

    proptest! {
        #[test]
        fn leaf1_never_shows_vmx(eax: u32, ebx: u32, ecx: u32, edx: u32, id in 0u32..1024, count in 1u32..1024) {
            let v = virtual_cpuid(1, 0, r(eax, ebx, ecx, edx), VcpuInfo { vcpu_id: id, vcpu_count: count, tsc_hz: 0 });
            prop_assert_eq!(v.ecx & (leaf1_ecx::VMX | leaf1_ecx::SMX), 0);
            prop_assert_ne!(v.ecx & leaf1_ecx::HYPERVISOR, 0);
            prop_assert_eq!(v.ecx & leaf1_ecx::OSXSAVE, ecx & leaf1_ecx::OSXSAVE);
            prop_assert_eq!(v.ebx >> 24, id & 0xff);
            prop_assert_eq!(v.edx & LEAF1_EDX_HTT != 0, count > 1);
        }

        #[test]
        fn topology_ids_fit(id in 0u32..4096, count in 1u32..4096) {
            let v = virtual_cpuid(0xb, 1, CpuidResult::default(), VcpuInfo { vcpu_id: id, vcpu_count: count, tsc_hz: 0 });
            prop_assert!(u64::from(count) <= 1u64 << v.eax);
            prop_assert!(v.eax == 0 || u64::from(count) > 1u64 << (v.eax - 1));
        }
    }
}

/// XCR0 bits (SDM Vol. 1 13.3): x87 (0), SSE (1), AVX (2), AVX-512 opmask, ZMM_Hi256 and
/// Hi16_ZMM (5-7).
const XCR0_X87: u64 = 1 << 0;
const XCR0_SSE: u64 = 1 << 1;
const XCR0_AVX: u64 = 1 << 2;
const XCR0_AVX512: u64 = 0b111 << 5;

/// Whether `value` is an XCR0 the CPU would accept given the `supported` bits (CPUID
/// 0xD.0 EDX:EAX): no unsupported bit, x87 set, AVX only with SSE, the AVX-512 bits
/// all or none and only with AVX (SDM Vol. 1 13.3, XSETBV in Vol. 2).
#[must_use]
pub const fn xcr0_is_valid(value: u64, supported: u64) -> bool {
    value & !supported == 0
        && value & XCR0_X87 != 0
        && (value & XCR0_AVX == 0 || value & XCR0_SSE != 0)
        && (value & XCR0_AVX512 == 0 || (value & XCR0_AVX512 == XCR0_AVX512 && value & XCR0_AVX != 0))
}

#[cfg(test)]
mod xcr0_tests {
    use super::xcr0_is_valid;

    #[test]
    fn xcr0_rules() {
        let all = 0xe7;
        assert!(xcr0_is_valid(0b1, all));
        assert!(xcr0_is_valid(0b11, all));
        assert!(xcr0_is_valid(0b111, all));
        assert!(xcr0_is_valid(0xe7, all));
        assert!(!xcr0_is_valid(0, all), "x87 must be on");
        assert!(!xcr0_is_valid(0b110, all), "x87 must be on");
        assert!(!xcr0_is_valid(0b101, all), "AVX needs SSE");
        assert!(!xcr0_is_valid(0b0010_0111, all), "AVX-512 bits go together");
        assert!(!xcr0_is_valid(0xe3, all), "AVX-512 needs AVX");
        assert!(!xcr0_is_valid(0b111, 0b11), "unsupported bit");
    }
}

/// Highest XSAVE user state component the layout tracks (PKRU is 9).
const XSAVE_MAX_COMPONENT: usize = 9;
/// Size of the legacy region plus the XSAVE header (SDM Vol. 1 13.4).
const XSAVE_LEGACY_AND_HEADER: u32 = 512 + 64;

/// The XSAVE user state components (XCR0 bits) the host really provides, with their
/// size and offset in the standard format (CPUID 0xD.i EAX and EBX for i >= 2, SDM Vol. 1
/// 13.2). A component that CPUID 0xD.0 lists but whose sub-leaf reports size 0 is dropped
/// (Bochs 2.7 lists PKRU that way; Linux then warns about a misordered layout and a size
/// mismatch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XsaveLayout {
    /// XCR0 bits a guest may set.
    pub supported: u64,
    /// Components 0..=9; 0 and 1 (x87, SSE) live in the legacy region.
    pub components: [XsaveComponent; XSAVE_MAX_COMPONENT + 1],
}

impl XsaveLayout {
    /// A layout without XSAVE: x87 and SSE only.
    pub const LEGACY: XsaveLayout =
        XsaveLayout { supported: XCR0_X87 | XCR0_SSE, components: [XsaveComponent::NONE; XSAVE_MAX_COMPONENT + 1] };

    /// Reads the layout through `cpuid(0xd, subleaf)`; `has_xsave` is CPUID.1:ECX[26].
    pub fn read(has_xsave: bool, mut cpuid: impl FnMut(u32) -> CpuidResult) -> XsaveLayout {
        if !has_xsave {
            return Self::LEGACY;
        }
        let leaf0 = cpuid(0);
        let listed = (u64::from(leaf0.edx) << 32) | u64::from(leaf0.eax);
        let mut layout = XsaveLayout { supported: listed & (XCR0_X87 | XCR0_SSE), ..Self::LEGACY };
        for (i, slot) in layout.components.iter_mut().enumerate().skip(2) {
            if listed & (1 << i) == 0 {
                continue;
            }
            let sub = cpuid(i as u32);
            // Size 0, or an offset inside the legacy region or header, is no component.
            if sub.eax != 0 && sub.ebx >= XSAVE_LEGACY_AND_HEADER {
                *slot = XsaveComponent { size: sub.eax, offset: sub.ebx, aligned: sub.ecx & 0b10 != 0 };
                layout.supported |= 1 << i;
            }
        }
        // The AVX-512 components only come together (SDM Vol. 1 13.3).
        if layout.supported & XCR0_AVX512 != XCR0_AVX512 || layout.supported & XCR0_AVX == 0 {
            layout.supported &= !XCR0_AVX512;
        }
        layout
    }

    /// Size of the standard-format XSAVE area for the components in `xcr0`.
    #[must_use]
    pub fn size_for(&self, xcr0: u64) -> u32 {
        let mut size = XSAVE_LEGACY_AND_HEADER;
        for (i, c) in self.components.iter().enumerate().skip(2) {
            if xcr0 & self.supported & (1 << i) != 0 {
                size = size.max(c.offset.saturating_add(c.size));
            }
        }
        size
    }

    /// Size of the compacted-format XSAVE area (XSAVEC/XSAVES) for the components in
    /// `mask`: after the legacy region and header, each component in order, aligned to
    /// 64 bytes when CPUID 0xD.i ECX bit 1 says so (SDM Vol. 1 13.4.3).
    #[must_use]
    pub fn compacted_size_for(&self, mask: u64) -> u32 {
        let mut size = XSAVE_LEGACY_AND_HEADER;
        for (i, c) in self.components.iter().enumerate().skip(2) {
            if mask & self.supported & (1 << i) != 0 {
                if c.aligned {
                    size = size.saturating_add(63) & !63;
                }
                size = size.saturating_add(c.size);
            }
        }
        size
    }
}

/// One XSAVE state component: size and standard-format offset (CPUID 0xD.i EAX, EBX),
/// and whether the compacted format aligns it to 64 bytes (ECX bit 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XsaveComponent {
    pub size: u32,
    pub offset: u32,
    pub aligned: bool,
}

impl XsaveComponent {
    /// No component.
    pub const NONE: XsaveComponent = XsaveComponent { size: 0, offset: 0, aligned: false };
}

/// Facts read once from the host's CPUID that the per-leaf rules need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostCpuid {
    /// The host's highest basic leaf (CPUID.0:EAX).
    pub max_basic_leaf: u32,
    /// The XSAVE components the host provides.
    pub xsave: XsaveLayout,
}

/// Whether [`HostCpuid::adjust`] can change `leaf`'s result: leaf 7 (PKU), leaf 0xD
/// (XSAVE), and basic leaves above the host's highest one. The CPUID exit skips the
/// adjustment for every other leaf (the common ones) to keep its path short.
#[must_use]
#[inline(always)]
pub const fn needs_host_facts(leaf: u32, host_max_basic_leaf: u32) -> bool {
    leaf == 7 || leaf == 0xd || (leaf > host_max_basic_leaf && leaf <= MAX_BASIC_LEAF)
}

impl HostCpuid {
    /// Applies the host facts to a result of [`virtual_cpuid`]; `xcr0` is the guest's
    /// current XCR0 (for the size in 0xD.0 EBX). Leaves above the host's highest basic
    /// leaf read zero except those synthesised here (topology 0xB, frequencies
    /// 0x15/0x16); leaf 0xD lists only [`XsaveLayout::supported`]; PKU (7.0 ECX 3) is
    /// clear without the PKRU component.
    #[must_use]
    pub fn adjust(&self, leaf: u32, subleaf: u32, mut r: CpuidResult, xcr0: u64) -> CpuidResult {
        let xsave = &self.xsave;
        match leaf {
            0xb | 0x15 | 0x16 => {}
            0..=MAX_BASIC_LEAF if leaf > self.max_basic_leaf => return CpuidResult::default(),
            7 if subleaf == 0 && xsave.supported & (1 << XSAVE_MAX_COMPONENT) == 0 => r.ecx &= !leaf7::ECX_PKU,
            0xd => match subleaf {
                0 => {
                    r.eax = xsave.supported as u32;
                    r.edx = (xsave.supported >> 32) as u32;
                    r.ebx = xsave.size_for(xcr0);
                    r.ecx = xsave.size_for(xsave.supported);
                }
                // The compacted size of XCR0 | IA32_XSS (guests' XSS is always 0).
                1 => r.ebx = xsave.compacted_size_for(xcr0),
                2..=9 if xsave.supported & (1 << subleaf) == 0 => return CpuidResult::default(),
                _ => {}
            },
            _ => {}
        }
        r
    }
}

#[cfg(test)]
mod host_cpuid_tests {
    use super::*;

    /// Bochs 2.7 `corei7_icelake_u`: 0xD.0 lists x87, SSE, AVX, AVX-512 and PKRU, but
    /// sub-leaf 9 is all zeros.
    fn bochs_icelake(sub: u32) -> CpuidResult {
        let r = |eax, ebx| CpuidResult { eax, ebx, ecx: 0, edx: 0 };
        match sub {
            0 => CpuidResult { eax: 0x2e7, ebx: 0xac0, ecx: 0xac0, edx: 0 },
            2 => r(0x100, 0x240),
            5 => r(0x40, 0x440),
            6 => r(0x200, 0x480),
            7 => r(0x400, 0x680),
            _ => r(0, 0),
        }
    }

    #[test]
    fn a_listed_component_without_size_is_dropped() {
        let layout = XsaveLayout::read(true, bochs_icelake);
        assert_eq!(layout.supported, 0xe7);
        assert_eq!(layout.size_for(0xe7), 0x680 + 0x400);
        assert_eq!(layout.size_for(0x7), 0x240 + 0x100);
        assert_eq!(layout.size_for(0x3), 576);
        // Compacted: 576 + AVX 256 + opmask 64 + ZMM_Hi256 512 + Hi16_ZMM 1024 (what
        // Linux computes; Bochs reports the standard size in 0xD.1 EBX).
        assert_eq!(layout.compacted_size_for(0xe7), 2432);
        let host1 = HostCpuid { max_basic_leaf: 0x1f, xsave: layout };
        assert_eq!(host1.adjust(0xd, 1, CpuidResult { eax: 0xf, ebx: 0xa80, ecx: 0, edx: 0 }, 0xe7).ebx, 2432);
        let host = HostCpuid { max_basic_leaf: 0x1f, xsave: layout };
        let l0 = host.adjust(0xd, 0, bochs_icelake(0), 0x7);
        assert_eq!((l0.eax, l0.ebx, l0.ecx, l0.edx), (0xe7, 0x340, 0xa80, 0));
        assert_eq!(host.adjust(0xd, 9, bochs_icelake(9), 0x7), CpuidResult::default());
        assert_eq!(host.adjust(0xd, 2, bochs_icelake(2), 0x7), bochs_icelake(2));
        let pku = CpuidResult { ecx: leaf7::ECX_PKU | 1, ..CpuidResult::default() };
        assert_eq!(host.adjust(7, 0, pku, 0x7).ecx, 1);
    }

    #[test]
    fn the_tsc_ratio_keeps_linux_arithmetic_in_32_bits() {
        // Bochs calibrated at 100.001395 MHz: the exact fraction has 9-digit terms.
        let (num, den) = tsc_crystal_ratio(100_001_395, 100_000_000);
        assert!(u64::from(num) <= MAX_RATIO_TERM && u64::from(den) <= MAX_RATIO_TERM);
        assert!(100_000u64 * u64::from(num) <= u64::from(u32::MAX));
        let khz = 100_000 * u64::from(num) / u64::from(den);
        assert!(khz.abs_diff(100_001) <= 3, "{khz}");
        assert_eq!(tsc_crystal_ratio(2_400_000_000, 100_000_000), (24, 1));
        assert_eq!(tsc_crystal_ratio(100_000_000, 100_000_000), (1, 1));
        let (num, den) = tsc_crystal_ratio(2_893_437_000, 100_000_000);
        let khz = 100_000 * u64::from(num) / u64::from(den);
        assert!(khz.abs_diff(2_893_437) < 2_893_437 / 40_000, "{khz}");
        assert_eq!(tsc_crystal_ratio(0, 100), (0, 0));
    }

    #[test]
    fn compacted_components_can_be_aligned() {
        let layout = XsaveLayout::read(true, |sub| match sub {
            0 => CpuidResult { eax: 0x7, ..CpuidResult::default() },
            2 => CpuidResult { eax: 0x100, ebx: 0x240, ecx: 0b10, edx: 0 },
            _ => CpuidResult::default(),
        });
        assert_eq!(layout.compacted_size_for(0x7), 576 + 0x100);
        let odd = XsaveLayout {
            supported: 0x7 | 1 << 9,
            components: {
                let mut c = [XsaveComponent::NONE; 10];
                c[2] = XsaveComponent { size: 4, offset: 576, aligned: false };
                c[9] = XsaveComponent { size: 8, offset: 640, aligned: true };
                c
            },
        };
        assert_eq!(odd.compacted_size_for(0x207), 640 + 8);
    }

    #[test]
    fn avx512_needs_all_three_components() {
        let layout = XsaveLayout::read(true, |sub| match sub {
            6 => CpuidResult::default(),
            s => bochs_icelake(s),
        });
        assert_eq!(layout.supported, 0x7);
        assert_eq!(XsaveLayout::read(false, bochs_icelake), XsaveLayout::LEGACY);
    }

    #[test]
    fn only_leaves_the_adjustment_can_change_need_it() {
        let host = HostCpuid { max_basic_leaf: 0x14, xsave: XsaveLayout::read(true, bochs_icelake) };
        let some = CpuidResult { eax: 1, ebx: 2, ecx: 0xffff_ffff, edx: 4 };
        for leaf in (0..=0x20).chain([0x4000_0000, 0x8000_0001]) {
            if !needs_host_facts(leaf, host.max_basic_leaf) {
                for sub in 0..4 {
                    assert_eq!(host.adjust(leaf, sub, some, 0x7), some, "leaf {leaf:#x}.{sub}");
                }
            }
        }
        assert!(needs_host_facts(7, 0x1f) && needs_host_facts(0xd, 0x1f) && needs_host_facts(0x15, 0x14));
        assert!(!needs_host_facts(0, 0x1f) && !needs_host_facts(1, 0x1f) && !needs_host_facts(0x20, 0x14));
    }

    #[test]
    fn leaves_above_the_host_maximum_read_zero_unless_synthesised() {
        let host = HostCpuid { max_basic_leaf: 0xd, xsave: XsaveLayout::LEGACY };
        let some = CpuidResult { eax: 1, ebx: 2, ecx: 3, edx: 4 };
        assert_eq!(host.adjust(0x14, 0, some, 3), CpuidResult::default());
        assert_eq!(host.adjust(0x15, 0, some, 3), some);
        assert_eq!(host.adjust(0x16, 0, some, 3), some);
        assert_eq!(host.adjust(0xb, 1, some, 3), some);
        assert_eq!(host.adjust(0x4000_0000, 0, some, 3), some);
        assert_eq!(host.adjust(0x8000_0001, 0, some, 3), some);
        assert_eq!(host.adjust(0xa, 0, some, 3), some);
    }

    #[test]
    fn a_known_tsc_frequency_raises_the_basic_leaf_maximum() {
        let host = CpuidResult { eax: 0xd, ..CpuidResult::default() };
        let v = VcpuInfo { vcpu_id: 0, vcpu_count: 1, tsc_hz: 100_000_000 };
        assert_eq!(virtual_cpuid(0, 0, host, v).eax, 0x16);
        assert_eq!(virtual_cpuid(0, 0, host, VcpuInfo { tsc_hz: 0, ..v }).eax, 0xd);
        let many = CpuidResult { eax: 0x20, ..host };
        assert_eq!(virtual_cpuid(0, 0, many, v).eax, MAX_BASIC_LEAF);
    }

    #[test]
    fn idle_thermal_and_debug_store_features_are_hidden() {
        let all = CpuidResult { eax: 0, ebx: 0, ecx: u32::MAX, edx: u32::MAX };
        let v = virtual_cpuid(1, 0, all, VcpuInfo { vcpu_id: 0, vcpu_count: 1, tsc_hz: 0 });
        assert_eq!(v.ecx & LEAF1_ECX_HIDDEN, 0);
        assert_eq!(v.edx & LEAF1_EDX_HIDDEN, 0);
        assert_ne!(v.ecx & leaf1_ecx::HYPERVISOR, 0);
    }
}
