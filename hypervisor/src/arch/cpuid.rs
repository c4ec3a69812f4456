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
/// CPUID), 36 when the leaf is missing (SDM 4.1.4). Read once, then kept: the exit
/// paths that walk guest page tables ask for it, and under nested virtualization every
/// CPUID the hypervisor executes is itself a VM exit.
#[must_use]
pub fn phys_addr_bits() -> u8 {
    static PHYS_ADDR_BITS: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0);
    let known = PHYS_ADDR_BITS.load(core::sync::atomic::Ordering::Relaxed);
    if known != 0 {
        return known;
    }
    let bits = if cpuid(0x8000_0000, 0).eax >= 0x8000_0008 { cpuid(0x8000_0008, 0).eax as u8 } else { 36 };
    // Every CPU reads the same value; a race stores it twice.
    PHYS_ADDR_BITS.store(bits, core::sync::atomic::Ordering::Relaxed);
    bits
}

/// CPUID.1:ECX bit 26: XSAVE.
const LEAF1_ECX_XSAVE: u32 = 1 << 26;

/// CPUID.(7,0):EDX bit 29: IA32_ARCH_CAPABILITIES exists.
const LEAF7_EDX_ARCH_CAPABILITIES: u32 = 1 << 29;

/// What the guests' CPUID and MSR answers need from the host, read once at boot (every
/// CPU is alike: the boot checks that).
#[derive(Debug, Clone, Copy)]
pub struct HostFacts {
    /// The host's highest basic leaf and XSAVE components (`HostCpuid::adjust`).
    pub cpuid: hv_core::virt_cpuid::HostCpuid,
    /// CPUID.1:ECX[26]: the CPU has XSAVE (and the hypervisor sets CR4.OSXSAVE).
    pub has_xsave: bool,
    /// The guests' CPUID leaf 0 (vendor and highest basic leaf), the same for every
    /// vCPU: the CPUID exit answers it without executing CPUID (as KVM answers from its
    /// precomputed CPUID table).
    pub leaf0: CpuidResult,
    /// What guests read from IA32_ARCH_CAPABILITIES: the host's value within
    /// `GUEST_ARCH_CAPABILITIES_MASK`, or 0 when the host has none.
    pub arch_capabilities: u64,
}

static HOST_FACTS: spin::Once<HostFacts> = spin::Once::new();

/// Reads the [`HostFacts`] (once the TSC frequency `tsc_hz` is known, before any guest
/// runs).
pub fn init_host_facts(tsc_hz: u64) -> &'static HostFacts {
    HOST_FACTS.call_once(|| {
        let leaf0 = cpuid(0, 0);
        let has_xsave = cpuid(1, 0).ecx & LEAF1_ECX_XSAVE != 0;
        let arch_capabilities = if leaf0.eax >= 7 && cpuid(7, 0).edx & LEAF7_EDX_ARCH_CAPABILITIES != 0 {
            // SAFETY: CPUID.(7,0):EDX[29] says the MSR exists (SDM Vol. 4 table 2-2).
            let host = unsafe { super::msr::read(super::msr::Msr::ArchCapabilities) };
            host & hv_core::virt_msr::GUEST_ARCH_CAPABILITIES_MASK
        } else {
            0
        };
        let info = hv_core::virt_cpuid::VcpuInfo { vcpu_id: 0, vcpu_count: 1, tsc_hz };
        HostFacts {
            cpuid: hv_core::virt_cpuid::HostCpuid {
                max_basic_leaf: leaf0.eax,
                xsave: hv_core::virt_cpuid::XsaveLayout::read(has_xsave, |sub| cpuid(0xd, sub)),
            },
            has_xsave,
            leaf0: hv_core::virt_cpuid::virtual_cpuid(0, 0, leaf0, info),
            arch_capabilities,
        }
    })
}

/// The [`HostFacts`], once [`init_host_facts`] ran (`None` only before any guest runs).
#[inline(always)]
#[must_use]
pub fn host_facts() -> Option<&'static HostFacts> {
    HOST_FACTS.get()
}

/// XCR0 as loaded on this CPU (the guest's, as the hypervisor leaves it loaded), or the
/// x87|SSE default when the CPU has no XSAVE.
#[must_use]
pub fn xcr0() -> u64 {
    if !host_facts().is_some_and(|h| h.has_xsave) {
        return 0b11;
    }
    let (lo, hi): (u32, u32);
    // SAFETY: XGETBV with ECX = 0 reads XCR0; it is valid because CR4.OSXSAVE is set on
    // every CPU with XSAVE (vmx::enable_on_this_cpu) before any guest runs.
    unsafe { core::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}
