//! The CPUID values a guest sees: the host's, adjusted to the virtual machine.
//!
//! [`virtual_cpuid`] is the whole contract, leaf by leaf (CPUID layouts: SDM Vol. 2A,
//! "CPUID—CPU Identification", table 3-8):
//!
//! | leaf | what the guest sees |
//! |------|---------------------|
//! | 0 | host vendor; highest basic leaf min(host, 0x1F) |
//! | 1 | ECX: hypervisor (31) set, VMX (5) and SMX (6) clear, OSXSAVE (27) as given; EBX[31:24] = vCPU id (initial APIC ID), EBX[23:16] = vCPU count; EDX HTT (28) set iff count > 1 |
//! | 4 | for each cache present: EAX[31:26] = count − 1 cores per package, EAX[25:14] = 0 (one thread per cache); the rest as host |
//! | 6 | zeros (no thermal/power management) |
//! | 7.0 | SGX (EBX 2), WAITPKG (ECX 5) and SGX_LC (ECX 30) clear |
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
//! [`hide_disabled_features`] clears their CPUID bits.

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
    pub const VMX: u32 = 1 << 5;
    pub const SMX: u32 = 1 << 6;
    pub const X2APIC: u32 = 1 << 21;
    pub const TSC_DEADLINE: u32 = 1 << 24;
    pub const OSXSAVE: u32 = 1 << 27;
    pub const HYPERVISOR: u32 = 1 << 31;
}

/// CPUID.1:EDX bit 28: HTT (EBX[23:16] is valid).
pub const LEAF1_EDX_HTT: u32 = 1 << 28;

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
        0 => CpuidResult { eax: host.eax.min(MAX_BASIC_LEAF), ..host },
        1 => {
            let ecx = (host.ecx | leaf1_ecx::HYPERVISOR | leaf1_ecx::X2APIC | leaf1_ecx::TSC_DEADLINE)
                & !(leaf1_ecx::VMX | leaf1_ecx::SMX);
            let ebx = (host.ebx & 0xffff) | (vcpu.vcpu_id & 0xff) << 24 | count.min(0xff) << 16;
            let edx = if count > 1 { host.edx | LEAF1_EDX_HTT } else { host.edx & !LEAF1_EDX_HTT };
            CpuidResult { eax: host.eax, ebx, ecx, edx }
        }
        4 if host.eax & 0x1f != 0 => {
            let eax = (host.eax & 0x3fff) | (count - 1).min(0x3f) << 26;
            CpuidResult { eax, ..host }
        }
        6 | 0xa => zero,
        7 if subleaf == 0 => CpuidResult {
            ebx: host.ebx & !leaf7::EBX_SGX,
            ecx: host.ecx & !(leaf7::ECX_WAITPKG | leaf7::ECX_SGX_LC),
            ..host
        },
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
            let bus = VIRTUAL_BUS_HZ;
            let g = gcd(vcpu.tsc_hz, bus);
            let (num, den) = (vcpu.tsc_hz / g, bus / g);
            if num <= u64::from(u32::MAX) && den <= u64::from(u32::MAX) {
                CpuidResult { eax: den as u32, ebx: num as u32, ecx: bus as u32, edx: 0 }
            } else {
                zero
            }
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
        assert_eq!(virtual_cpuid(6, 0, host, ONE), CpuidResult::default());
        assert_eq!(virtual_cpuid(0xa, 0, host, ONE), CpuidResult::default());
    }

    #[test]
    fn leaf7_hides_sgx_and_waitpkg() {
        let host = r(2, u32::MAX, u32::MAX, u32::MAX);
        let v = virtual_cpuid(7, 0, host, ONE);
        assert_eq!(v.ebx, !leaf7::EBX_SGX);
        assert_eq!(v.ecx, !(leaf7::ECX_WAITPKG | leaf7::ECX_SGX_LC));
        assert_eq!((v.eax, v.edx), (2, u32::MAX));
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
