//! VMX operation: checking support, reading the capabilities, and VMXON on each CPU
//! (SDM Vol. 3 chapter 24, "Introduction to VMX operation", and appendix A).

use hv_core::cpu_features::CpuFeatures;
use hv_core::preflight::VmxUnavailable;
use hv_core::vmx_caps::{
    apply_fixed_bits, feature_control_action, FeatureControlAction, RawVmxMsrs, VmxCapabilities, BASIC_TRUE_CONTROLS,
};
use x86_64::registers::control::{Cr0, Cr4, Cr4Flags};

use crate::arch::msr::{self, Msr};
use crate::mm::frames;

/// Checks, on the BSP, whether VMX can be used at all, and reads its capabilities.
pub fn probe(cpu: &CpuFeatures) -> Result<VmxCapabilities, VmxUnavailable> {
    if !cpu.is_intel() {
        return Err(VmxUnavailable::NotIntel);
    }
    if !cpu.vmx {
        return Err(VmxUnavailable::NotReported { under_hypervisor: cpu.hypervisor });
    }
    // SAFETY: IA32_FEATURE_CONTROL exists when CPUID reports VMX (SDM Vol. 4 2-2).
    let fc = unsafe { msr::read(Msr::FeatureControl) };
    if feature_control_action(fc) == FeatureControlAction::LockedOff {
        return Err(VmxUnavailable::LockedOffByFirmware);
    }
    Ok(VmxCapabilities::decode(&read_raw_msrs()))
}

pub mod invept;
pub mod run;
pub mod vmcs;

/// Reads the capability MSRs, preferring the TRUE_ variants (SDM A.2). Only call after
/// [`probe`] succeeded.
pub fn read_raw_msrs() -> RawVmxMsrs {
    // SAFETY: all of these exist when CPUID reports VMX, except: the TRUE_ MSRs (only
    // read when IA32_VMX_BASIC[55] says they exist), PROCBASED_CTLS2 (only when the
    // primary controls allow secondary ones) and EPT_VPID_CAP (only when EPT or VPID
    // may be enabled), as SDM A.3.3 and A.10 require.
    unsafe {
        let basic = msr::read(Msr::VmxBasic);
        let true_ctls = basic & BASIC_TRUE_CONTROLS != 0;
        let pick = |normal, true_| msr::read(if true_ctls { true_ } else { normal });
        let procbased = pick(Msr::VmxProcbasedCtls, Msr::VmxTrueProcbasedCtls);
        let secondary = hv_core::vmx_caps::allowed1(procbased, hv_core::vmx_caps::proc1::ACTIVATE_SECONDARY);
        let procbased2 = if secondary { msr::read(Msr::VmxProcbasedCtls2) } else { 0 };
        use hv_core::vmx_caps::proc2::{ENABLE_EPT, ENABLE_VPID};
        let ept_vpid = if hv_core::vmx_caps::allowed1(procbased2, ENABLE_EPT)
            || hv_core::vmx_caps::allowed1(procbased2, ENABLE_VPID)
        {
            msr::read(Msr::VmxEptVpidCap)
        } else {
            0
        };
        RawVmxMsrs {
            basic,
            pinbased: pick(Msr::VmxPinbasedCtls, Msr::VmxTruePinbasedCtls),
            procbased,
            exit: pick(Msr::VmxExitCtls, Msr::VmxTrueExitCtls),
            entry: pick(Msr::VmxEntryCtls, Msr::VmxTrueEntryCtls),
            misc: msr::read(Msr::VmxMisc),
            procbased2,
            ept_vpid,
        }
    }
}

/// Enters VMX root operation on the current CPU (SDM 24.7, "Enabling and entering
/// VMX operation"): permits VMXON in IA32_FEATURE_CONTROL, applies the CR0/CR4 fixed
/// bits with CR4.VMXE set, and executes VMXON on a fresh VMXON region.
pub fn enable_on_this_cpu(caps: &VmxCapabilities) -> Result<(), VmxUnavailable> {
    // SAFETY: the MSRs exist (probe() succeeded on the BSP; all CPUs are alike). The
    // feature-control write is what the SDM prescribes when the MSR is unlocked; the
    // CR0/CR4 writes only set bits VMX requires (NE, VMXE), plus OSXSAVE (which only
    // permits XSETBV/XSAVE), and keep paging intact:
    // CR0 fixed-0 contains PE and PG, which are already set.
    unsafe {
        match feature_control_action(msr::read(Msr::FeatureControl)) {
            FeatureControlAction::AlreadyEnabled => {}
            FeatureControlAction::Enable { new_value } => msr::write(Msr::FeatureControl, new_value),
            FeatureControlAction::LockedOff => return Err(VmxUnavailable::LockedOffByFirmware),
        }
        let cr0 = apply_fixed_bits(Cr0::read_raw(), msr::read(Msr::VmxCr0Fixed0), msr::read(Msr::VmxCr0Fixed1));
        Cr0::write_raw(cr0);
        let mut cr4 = Cr4::read_raw() | Cr4Flags::VIRTUAL_MACHINE_EXTENSIONS.bits();
        // OSXSAVE lets the hypervisor execute XSETBV for its guests (the XSETBV exit);
        // set only when the CPU has XSAVE (CPUID.1:ECX[26]).
        if crate::arch::cpuid::cpuid(1, 0).ecx & (1 << 26) != 0 {
            cr4 |= Cr4Flags::OSXSAVE.bits();
        }
        Cr4::write_raw(apply_fixed_bits(cr4, msr::read(Msr::VmxCr4Fixed0), msr::read(Msr::VmxCr4Fixed1)));
    }
    let region = frames::allocate_frame().map_err(|_| VmxUnavailable::VmxonFailed)?;
    // SAFETY: the frame was just allocated and is direct-mapped; the first 4 bytes of
    // the VMXON region hold the VMCS revision identifier with bit 31 clear (SDM 25.11.5).
    unsafe { frames::phys_to_virt(region).cast::<u32>().write_volatile(caps.revision_id & 0x7fff_ffff) };
    vmxon(region)
}

/// Executes VMXON with the region at physical address `region`.
fn vmxon(region: u64) -> Result<(), VmxUnavailable> {
    let rflags: u64;
    // SAFETY: CR4.VMXE is set, the fixed bits are applied and the region is a zeroed,
    // 4 KiB-aligned frame carrying the revision identifier. VMXON reports failure in
    // CF/ZF (SDM 31.2 "VMfailInvalid"/"VMfailValid"), read back right after it.
    unsafe {
        core::arch::asm!(
            "vmxon [{region}]",
            "pushfq",
            "pop {rflags}",
            region = in(reg) &region,
            rflags = lateout(reg) rflags,
        );
    }
    const CF: u64 = 1 << 0;
    const ZF: u64 = 1 << 6;
    if rflags & (CF | ZF) != 0 {
        Err(VmxUnavailable::VmxonFailed)
    } else {
        Ok(())
    }
}
