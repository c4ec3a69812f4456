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

/// CPUID.1:ECX bit 26: XSAVE.
const LEAF1_ECX_XSAVE: u32 = 1 << 26;

/// What guests read from IA32_ARCH_CAPABILITIES: the host's value within
/// `GUEST_ARCH_CAPABILITIES_MASK`, or 0 when the host has none; set by
/// [`read_arch_capabilities`] at boot.
pub static GUEST_ARCH_CAPABILITIES: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// CPUID.(7,0):EDX bit 29: IA32_ARCH_CAPABILITIES exists.
const LEAF7_EDX_ARCH_CAPABILITIES: u32 = 1 << 29;

/// Reads the host's IA32_ARCH_CAPABILITIES (when CPUID says it exists) into
/// [`GUEST_ARCH_CAPABILITIES`].
pub fn read_arch_capabilities() {
    if cpuid(0, 0).eax < 7 || cpuid(7, 0).edx & LEAF7_EDX_ARCH_CAPABILITIES == 0 {
        return;
    }
    // SAFETY: CPUID.(7,0):EDX[29] says the MSR exists (SDM Vol. 4 table 2-2).
    let value =
        unsafe { x86_64::registers::model_specific::Msr::new(hv_core::virt_msr::msr::IA32_ARCH_CAPABILITIES).read() };
    GUEST_ARCH_CAPABILITIES
        .store(value & hv_core::virt_msr::GUEST_ARCH_CAPABILITIES_MASK, core::sync::atomic::Ordering::Relaxed);
}

/// The host facts the guests' CPUID rules need, read once on first use (every CPU is
/// alike: the boot checks that).
#[must_use]
pub fn host_facts() -> &'static hv_core::virt_cpuid::HostCpuid {
    static FACTS: spin::Once<hv_core::virt_cpuid::HostCpuid> = spin::Once::new();
    FACTS.call_once(|| {
        let max_basic_leaf = cpuid(0, 0).eax;
        HOST_MAX_BASIC_LEAF.store(max_basic_leaf, core::sync::atomic::Ordering::Relaxed);
        hv_core::virt_cpuid::HostCpuid {
            max_basic_leaf,
            xsave: hv_core::virt_cpuid::XsaveLayout::read(cpuid(1, 0).ecx & LEAF1_ECX_XSAVE != 0, |sub| {
                cpuid(0xd, sub)
            }),
        }
    })
}

/// The guest's CPUID leaf 0 (vendor and highest basic leaf), the same for every vCPU
/// and fixed once the TSC frequency is known: EAX..EDX, then 1 once set by
/// [`set_virtual_leaf0`]. The CPUID exit answers leaf 0 from here without executing
/// CPUID (as KVM answers from its precomputed CPUID table).
static VIRTUAL_LEAF0: [core::sync::atomic::AtomicU32; 5] = [const { core::sync::atomic::AtomicU32::new(0) }; 5];

/// Computes the guest's leaf 0 (after the TSC frequency is known, before guests run).
pub fn set_virtual_leaf0(tsc_hz: u64) {
    use core::sync::atomic::Ordering::{Relaxed, Release};
    let info = hv_core::virt_cpuid::VcpuInfo { vcpu_id: 0, vcpu_count: 1, tsc_hz };
    let r = hv_core::virt_cpuid::virtual_cpuid(0, 0, cpuid(0, 0), info);
    for (slot, v) in VIRTUAL_LEAF0.iter().zip([r.eax, r.ebx, r.ecx, r.edx]) {
        slot.store(v, Relaxed);
    }
    VIRTUAL_LEAF0[4].store(1, Release);
}

/// The guest's leaf 0, once [`set_virtual_leaf0`] ran.
#[inline(always)]
#[must_use]
pub fn virtual_leaf0() -> Option<CpuidResult> {
    use core::sync::atomic::Ordering::{Acquire, Relaxed};
    if VIRTUAL_LEAF0[4].load(Acquire) == 0 {
        return None;
    }
    let v = |i: usize| VIRTUAL_LEAF0[i].load(Relaxed);
    Some(CpuidResult { eax: v(0), ebx: v(1), ecx: v(2), edx: v(3) })
}

/// The host's highest basic CPUID leaf, for the CPUID exit's cheap check
/// (`hv_core::virt_cpuid::needs_host_facts`); set by [`host_facts`] at boot, before any
/// guest runs (until then every leaf above 0 counts as "above the host's maximum" and
/// takes the full path).
pub static HOST_MAX_BASIC_LEAF: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

/// XCR0 as loaded on this CPU (the guest's, as the hypervisor leaves it loaded), or the
/// x87|SSE default when the CPU has no XSAVE.
#[must_use]
pub fn xcr0() -> u64 {
    if cpuid(1, 0).ecx & LEAF1_ECX_XSAVE == 0 {
        return 0b11;
    }
    let (lo, hi): (u32, u32);
    // SAFETY: XGETBV with ECX = 0 reads XCR0; it is valid because CR4.OSXSAVE is set on
    // every CPU with XSAVE (vmx::enable_on_this_cpu) before any guest runs.
    unsafe { core::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}
