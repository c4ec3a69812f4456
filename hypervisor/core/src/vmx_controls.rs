//! Computing the VMCS control fields from the VMX capability MSRs.
//!
//! Each control field (pin-based, primary and secondary processor-based, VM-exit and
//! VM-entry) has a capability MSR that reports, per bit, whether the bit may be 0 and
//! whether it may be 1 (SDM Vol. 3D appendix A.3 to A.5): a bit set in the low 32 bits
//! ("allowed 0-settings") must be 1 in the field, a bit clear in the high 32 bits
//! ("allowed 1-settings") must be 0. [`adjust`] applies that rule to a request made of
//! required and optional bits; [`compute`] does it for all five fields.
//!
//! Default-1 bits: without the TRUE_ capability MSRs some bits that the processor lets
//! software clear (e.g. CR3-load/store exiting) are reported as must-be-1. The kernel
//! reads the TRUE_ variants when IA32_VMX_BASIC[55] says they exist (SDM A.2), and
//! [`RawVmxMsrs`] holds whichever it read, so using the low half of the stored value as
//! the must-be-1 set is exactly the TRUE_ semantics when they exist and the only legal
//! choice when they do not.
//!
//! Bit positions: SDM Vol. 3C 25.6.1 table 25-5 (pin-based), 25.6.2 tables 25-6 and
//! 25-7 (processor-based), 25.7.1 table 25-13 (VM-exit), 25.8.1 table 25-15 (VM-entry).

use core::fmt;

use crate::vmx_caps::RawVmxMsrs;

/// Pin-based VM-execution controls (SDM 25.6.1, table 25-5).
pub mod pin {
    pub use crate::vmx_caps::pin::*;
}

/// Primary processor-based VM-execution controls (SDM 25.6.2, table 25-6).
pub mod proc1 {
    pub use crate::vmx_caps::proc1::*;
    pub const INTERRUPT_WINDOW_EXITING: u32 = 1 << 2;
    pub const USE_TSC_OFFSETTING: u32 = 1 << 3;
    pub const HLT_EXITING: u32 = 1 << 7;
    pub const INVLPG_EXITING: u32 = 1 << 9;
    pub const MWAIT_EXITING: u32 = 1 << 10;
    pub const RDPMC_EXITING: u32 = 1 << 11;
    pub const RDTSC_EXITING: u32 = 1 << 12;
    pub const CR3_LOAD_EXITING: u32 = 1 << 15;
    pub const CR3_STORE_EXITING: u32 = 1 << 16;
    pub const ACTIVATE_TERTIARY: u32 = 1 << 17;
    pub const CR8_LOAD_EXITING: u32 = 1 << 19;
    pub const CR8_STORE_EXITING: u32 = 1 << 20;
    pub const NMI_WINDOW_EXITING: u32 = 1 << 22;
    pub const MOV_DR_EXITING: u32 = 1 << 23;
    pub const UNCONDITIONAL_IO_EXITING: u32 = 1 << 24;
    pub const USE_IO_BITMAPS: u32 = 1 << 25;
    pub const MONITOR_TRAP_FLAG: u32 = 1 << 27;
    pub const MONITOR_EXITING: u32 = 1 << 29;
    pub const PAUSE_EXITING: u32 = 1 << 30;
}

/// Secondary processor-based VM-execution controls (SDM 25.6.2, table 25-7).
pub mod proc2 {
    pub use crate::vmx_caps::proc2::*;
    pub const DESCRIPTOR_TABLE_EXITING: u32 = 1 << 2;
    pub const ENABLE_RDTSCP: u32 = 1 << 3;
    pub const WBINVD_EXITING: u32 = 1 << 6;
    pub const PAUSE_LOOP_EXITING: u32 = 1 << 10;
    pub const RDRAND_EXITING: u32 = 1 << 11;
    pub const ENABLE_INVPCID: u32 = 1 << 12;
    pub const ENABLE_VMFUNC: u32 = 1 << 13;
    pub const VMCS_SHADOWING: u32 = 1 << 14;
    pub const ENCLS_EXITING: u32 = 1 << 15;
    pub const RDSEED_EXITING: u32 = 1 << 16;
    pub const ENABLE_PML: u32 = 1 << 17;
    pub const EPT_VIOLATION_VE: u32 = 1 << 18;
    pub const ENABLE_XSAVES: u32 = 1 << 20;
    pub const USE_TSC_SCALING: u32 = 1 << 25;
    pub const ENABLE_USER_WAIT_PAUSE: u32 = 1 << 26;
}

/// Primary VM-exit controls (SDM 25.7.1, table 25-13).
pub mod exit {
    pub const SAVE_DEBUG_CONTROLS: u32 = 1 << 2;
    pub const HOST_ADDRESS_SPACE_SIZE: u32 = 1 << 9;
    pub const LOAD_PERF_GLOBAL_CTRL: u32 = 1 << 12;
    pub const ACK_INTERRUPT_ON_EXIT: u32 = 1 << 15;
    pub const SAVE_PAT: u32 = 1 << 18;
    pub const LOAD_PAT: u32 = 1 << 19;
    pub const SAVE_EFER: u32 = 1 << 20;
    pub const LOAD_EFER: u32 = 1 << 21;
    pub const SAVE_PREEMPTION_TIMER: u32 = 1 << 22;
}

/// VM-entry controls (SDM 25.8.1, table 25-15).
pub mod entry {
    pub const LOAD_DEBUG_CONTROLS: u32 = 1 << 2;
    /// Set per vCPU by the caller when the guest runs in IA-32e mode (EFER.LMA).
    pub const IA32E_MODE_GUEST: u32 = 1 << 9;
    pub const ENTRY_TO_SMM: u32 = 1 << 10;
    pub const DEACTIVATE_DUAL_MONITOR: u32 = 1 << 11;
    pub const LOAD_PERF_GLOBAL_CTRL: u32 = 1 << 13;
    pub const LOAD_PAT: u32 = 1 << 14;
    pub const LOAD_EFER: u32 = 1 << 15;
}

/// Adjusts a requested control value to a capability MSR (SDM A.3.1 / A.3.2 / A.3.3 /
/// A.4 / A.5): bits set in the low half are forced to 1, bits clear in the high half are
/// forced to 0.
///
/// Returns `(required | allowed optional | must-be-1) & allowed-1`, or `Err` with the
/// required bits the processor does not allow to be 1.
pub const fn adjust(cap_msr: u64, required: u32, optional: u32) -> Result<u32, u32> {
    let must_be_one = cap_msr as u32;
    let allowed_one = (cap_msr >> 32) as u32;
    let missing = required & !allowed_one;
    if missing != 0 {
        return Err(missing);
    }
    Ok((required | optional | must_be_one) & allowed_one)
}

/// Which VMCS control field a [`MissingControl`] refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlField {
    PinBased,
    PrimaryProcBased,
    SecondaryProcBased,
    VmExit,
    VmEntry,
}

impl ControlField {
    /// The field's name in the singular, as used in error messages.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::PinBased => "pin-based control",
            Self::PrimaryProcBased => "primary processor-based control",
            Self::SecondaryProcBased => "secondary processor-based control",
            Self::VmExit => "VM-exit control",
            Self::VmEntry => "VM-entry control",
        }
    }

    /// The name of one bit of this field (SDM tables 25-5, 25-6, 25-7, 25-13, 25-15),
    /// `None` for reserved or unnamed bits.
    #[must_use]
    pub const fn bit_name(self, bit: u32) -> Option<&'static str> {
        let name = match self {
            Self::PinBased => match bit {
                0 => "external-interrupt exiting",
                3 => "NMI exiting",
                5 => "virtual NMIs",
                6 => "activate VMX-preemption timer",
                7 => "process posted interrupts",
                _ => "",
            },
            Self::PrimaryProcBased => match bit {
                2 => "interrupt-window exiting",
                3 => "use TSC offsetting",
                7 => "HLT exiting",
                9 => "INVLPG exiting",
                10 => "MWAIT exiting",
                11 => "RDPMC exiting",
                12 => "RDTSC exiting",
                15 => "CR3-load exiting",
                16 => "CR3-store exiting",
                17 => "activate tertiary controls",
                19 => "CR8-load exiting",
                20 => "CR8-store exiting",
                21 => "use TPR shadow",
                22 => "NMI-window exiting",
                23 => "MOV-DR exiting",
                24 => "unconditional I/O exiting",
                25 => "use I/O bitmaps",
                27 => "monitor trap flag",
                28 => "use MSR bitmaps",
                29 => "MONITOR exiting",
                30 => "PAUSE exiting",
                31 => "activate secondary controls",
                _ => "",
            },
            Self::SecondaryProcBased => match bit {
                0 => "virtualize APIC accesses",
                1 => "enable EPT",
                2 => "descriptor-table exiting",
                3 => "enable RDTSCP",
                4 => "virtualize x2APIC mode",
                5 => "enable VPID",
                6 => "WBINVD exiting",
                7 => "unrestricted guest",
                8 => "APIC-register virtualization",
                9 => "virtual-interrupt delivery",
                10 => "PAUSE-loop exiting",
                11 => "RDRAND exiting",
                12 => "enable INVPCID",
                13 => "enable VM functions",
                14 => "VMCS shadowing",
                15 => "enable ENCLS exiting",
                16 => "RDSEED exiting",
                17 => "enable PML",
                18 => "EPT-violation #VE",
                20 => "enable XSAVES/XRSTORS",
                25 => "use TSC scaling",
                26 => "enable user wait and pause",
                _ => "",
            },
            Self::VmExit => match bit {
                2 => "save debug controls",
                9 => "host address-space size",
                12 => "load IA32_PERF_GLOBAL_CTRL",
                15 => "acknowledge interrupt on exit",
                18 => "save IA32_PAT",
                19 => "load IA32_PAT",
                20 => "save IA32_EFER",
                21 => "load IA32_EFER",
                22 => "save VMX-preemption timer value",
                _ => "",
            },
            Self::VmEntry => match bit {
                2 => "load debug controls",
                9 => "IA-32e mode guest",
                10 => "entry to SMM",
                11 => "deactivate dual-monitor treatment",
                13 => "load IA32_PERF_GLOBAL_CTRL",
                14 => "load IA32_PAT",
                15 => "load IA32_EFER",
                _ => "",
            },
        };
        if name.is_empty() {
            None
        } else {
            Some(name)
        }
    }
}

/// Required bits of one control field that the processor does not allow to be 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MissingControl {
    pub field: ControlField,
    pub bits: u32,
}

/// `secondary processor-based control 'unrestricted guest' (bit 7) is not supported by
/// this CPU`; several bits are listed as `controls 'a' (bit 1), 'b' (bit 7) are ...`.
impl fmt::Display for MissingControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let several = self.bits.count_ones() > 1;
        f.write_str(self.field.name())?;
        if several {
            f.write_str("s")?;
        }
        let mut first = true;
        for bit in 0..32 {
            if self.bits & (1 << bit) == 0 {
                continue;
            }
            f.write_str(if first { " " } else { ", " })?;
            first = false;
            match self.field.bit_name(bit) {
                Some(name) => write!(f, "'{name}' (bit {bit})")?,
                None => write!(f, "bit {bit}")?,
            }
        }
        f.write_str(if several { " are" } else { " is" })?;
        f.write_str(" not supported by this CPU")
    }
}

/// The bits a VMCS user wants in each control field: `required` ones must be available,
/// `optional` ones are set when the processor allows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ControlRequest {
    pub pin_required: u32,
    pub pin_optional: u32,
    pub proc_required: u32,
    pub proc_optional: u32,
    pub proc2_required: u32,
    pub proc2_optional: u32,
    pub exit_required: u32,
    pub exit_optional: u32,
    pub entry_required: u32,
    pub entry_optional: u32,
}

/// Values to write to the five VMCS control fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Controls {
    pub pin: u32,
    pub proc: u32,
    /// 0 unless "activate secondary controls" is set in `proc`.
    pub proc2: u32,
    pub exit: u32,
    pub entry: u32,
}

/// Computes the control fields for `req` from the capability MSRs.
///
/// Secondary controls: requesting any secondary bit asks for "activate secondary
/// controls" too (required when some secondary bit is required, optional otherwise).
/// `proc2` is computed only when that bit ends up set; otherwise it is 0, and required
/// secondary bits are reported missing.
pub fn compute(raw: &RawVmxMsrs, req: &ControlRequest) -> Result<Controls, MissingControl> {
    let err = |field| move |bits| MissingControl { field, bits };
    let pin = adjust(raw.pinbased, req.pin_required, req.pin_optional).map_err(err(ControlField::PinBased))?;

    let mut proc_required = req.proc_required;
    let mut proc_optional = req.proc_optional;
    if req.proc2_required != 0 {
        proc_required |= proc1::ACTIVATE_SECONDARY;
    } else if req.proc2_optional != 0 {
        proc_optional |= proc1::ACTIVATE_SECONDARY;
    }
    let proc = match adjust(raw.procbased, proc_required, proc_optional) {
        Ok(v) => v,
        // Secondary controls were only implied by secondary requests: name those.
        Err(bits) if bits == proc1::ACTIVATE_SECONDARY && req.proc_required & bits == 0 => {
            return Err(MissingControl { field: ControlField::SecondaryProcBased, bits: req.proc2_required });
        }
        Err(bits) => return Err(MissingControl { field: ControlField::PrimaryProcBased, bits }),
    };
    let proc2 = if proc & proc1::ACTIVATE_SECONDARY != 0 {
        adjust(raw.procbased2, req.proc2_required, req.proc2_optional).map_err(err(ControlField::SecondaryProcBased))?
    } else {
        0
    };
    let exit = adjust(raw.exit, req.exit_required, req.exit_optional).map_err(err(ControlField::VmExit))?;
    let entry = adjust(raw.entry, req.entry_required, req.entry_optional).map_err(err(ControlField::VmEntry))?;
    Ok(Controls { pin, proc, proc2, exit, entry })
}

/// The controls this hypervisor runs its guests with.
///
/// - pin: external interrupts and NMIs exit (the host keeps them); virtual NMIs and the
///   preemption timer when available.
/// - primary: HLT, MWAIT and MONITOR exit; I/O and MSR accesses go through bitmaps;
///   secondary controls on. PAUSE exiting is deliberately not requested.
/// - secondary: EPT, VPID and unrestricted guest (real-mode guests); RDTSCP, INVPCID
///   and XSAVES enabled when available (otherwise those instructions raise #UD in the
///   guest, so the virtual CPUID must hide them).
/// - exit: 64-bit host, EFER and PAT saved and loaded, interrupts acknowledged on exit.
/// - entry: EFER and PAT loaded. [`entry::IA32E_MODE_GUEST`] is added per vCPU.
#[must_use]
pub const fn hypervisor_request() -> ControlRequest {
    ControlRequest {
        pin_required: pin::EXTERNAL_INTERRUPT_EXITING | pin::NMI_EXITING,
        // The VMX preemption timer is not requested: with the timer value at 0 it would
        // exit before every guest instruction. The LAPIC-timer code enables it when it
        // arms the timer.
        pin_optional: pin::VIRTUAL_NMIS,
        proc_required: proc1::HLT_EXITING
            | proc1::MWAIT_EXITING
            | proc1::MONITOR_EXITING
            | proc1::USE_IO_BITMAPS
            | proc1::USE_MSR_BITMAPS
            | proc1::ACTIVATE_SECONDARY,
        proc_optional: 0,
        proc2_required: proc2::ENABLE_EPT | proc2::ENABLE_VPID | proc2::UNRESTRICTED_GUEST,
        proc2_optional: proc2::ENABLE_RDTSCP | proc2::ENABLE_INVPCID | proc2::ENABLE_XSAVES,
        exit_required: exit::HOST_ADDRESS_SPACE_SIZE
            | exit::SAVE_EFER
            | exit::LOAD_EFER
            | exit::SAVE_PAT
            | exit::LOAD_PAT
            | exit::ACK_INTERRUPT_ON_EXIT,
        exit_optional: 0,
        entry_required: entry::LOAD_EFER | entry::LOAD_PAT,
        entry_optional: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use proptest::prelude::*;

    /// The Bochs 2.7 corei7_icelake_u values of `vmx_caps` tests (PLATFORM.md). Those
    /// tests did not record the exit/entry MSRs; the values here are the TRUE_ exit and
    /// entry MSRs of a typical Ice Lake part (default-1 bits 0-8, 10, 11, 13, 14, 16, 17
    /// of exit and 0-8, 12 of entry, with "save/load debug controls" clearable).
    fn icelake() -> RawVmxMsrs {
        RawVmxMsrs {
            basic: 0x00d8_1000_0000_0004,
            pinbased: 0x0000_007f_0000_0016,
            procbased: 0xfff9_fffe_0401_e172,
            exit: 0x01ff_ffff_0003_6dfb,
            entry: 0x0003_ffff_0000_11fb,
            misc: 0x5,
            procbased2: 0x0297_7fff_0000_0000,
            ept_vpid: 0x0000_0f01_0633_4141,
        }
    }

    #[test]
    fn adjust_rules() {
        // Low half forced on, high half limits, optional dropped when not allowed.
        assert_eq!(adjust(0x0000_00ff_0000_0003, 0x10, 0x100), Ok(0x13));
        assert_eq!(adjust(0x0000_00ff_0000_0003, 0x10, 0x20), Ok(0x33));
        assert_eq!(adjust(0x0000_00ff_0000_0000, 0x300, 0), Err(0x300));
        assert_eq!(adjust(0, 0, u32::MAX), Ok(0));
    }

    #[test]
    fn hypervisor_request_on_icelake() {
        let c = compute(&icelake(), &hypervisor_request()).unwrap();
        let req = hypervisor_request();
        assert_eq!(c.pin, 0x16 | req.pin_required | pin::VIRTUAL_NMIS);
        assert_eq!(c.proc & req.proc_required, req.proc_required);
        assert_eq!(c.proc & proc1::PAUSE_EXITING, 0);
        // All optional secondary bits are in Bochs' allowed-1 (0x02977fff).
        assert_eq!(c.proc2, req.proc2_required | req.proc2_optional);
        // Without XSAVES support it is simply left out.
        let mut raw = icelake();
        raw.procbased2 &= !(u64::from(proc2::ENABLE_XSAVES) << 32);
        let c2 = compute(&raw, &req).unwrap();
        assert_eq!(c2.proc2, req.proc2_required | proc2::ENABLE_RDTSCP | proc2::ENABLE_INVPCID);
        assert_eq!(c.exit, 0x0003_6dfb | req.exit_required);
        assert_eq!(c.exit & exit::SAVE_DEBUG_CONTROLS, 0);
        assert_eq!(c.entry, 0x11fb | req.entry_required);
        assert_eq!(c.entry & entry::IA32E_MODE_GUEST, 0);
    }

    #[test]
    fn default1_bits_follow_the_msr_given() {
        let req = hypervisor_request();
        // Non-TRUE primary MSR: default-1 bits 1, 4-6, 8, 13-16, 26 must stay 1,
        // including CR3-load/store exiting (15, 16).
        let c = compute(&icelake(), &req).unwrap();
        let default1 = 0x0401_e172;
        assert_eq!(c.proc & default1, default1);
        assert_ne!(c.proc & proc1::CR3_LOAD_EXITING, 0);
        assert_eq!(c.proc, default1 | req.proc_required);
        // TRUE primary MSR: CR3-load/store exiting may be 0 and are dropped when not
        // requested; the reserved default-1 bits stay.
        let mut raw = icelake();
        raw.procbased = 0xfff9_fffe_0400_6172;
        let c = compute(&raw, &req).unwrap();
        assert_eq!(c.proc & (proc1::CR3_LOAD_EXITING | proc1::CR3_STORE_EXITING), 0);
        assert_eq!(c.proc, 0x0400_6172 | req.proc_required);
        // Asked for, they are set.
        let mut req2 = req;
        req2.proc_optional |= proc1::CR3_LOAD_EXITING;
        assert_ne!(compute(&raw, &req2).unwrap().proc & proc1::CR3_LOAD_EXITING, 0);
    }

    #[test]
    fn missing_unrestricted_guest_is_named() {
        let mut raw = icelake();
        raw.procbased2 &= !(u64::from(proc2::UNRESTRICTED_GUEST) << 32);
        let e = compute(&raw, &hypervisor_request()).unwrap_err();
        assert_eq!(e, MissingControl { field: ControlField::SecondaryProcBased, bits: proc2::UNRESTRICTED_GUEST });
        assert_eq!(
            e.to_string(),
            "secondary processor-based control 'unrestricted guest' (bit 7) is not supported by this CPU"
        );
    }

    #[test]
    fn several_missing_bits_are_listed() {
        let e = MissingControl { field: ControlField::VmExit, bits: exit::LOAD_EFER | exit::SAVE_EFER | 1 << 30 };
        assert_eq!(
            e.to_string(),
            "VM-exit controls 'save IA32_EFER' (bit 20), 'load IA32_EFER' (bit 21), bit 30 are not supported by this CPU"
        );
    }

    #[test]
    fn secondary_controls_absent() {
        let mut raw = icelake();
        raw.procbased &= !(u64::from(proc1::ACTIVATE_SECONDARY) << 32);
        // Activation required explicitly: the primary bit is named.
        let e = compute(&raw, &hypervisor_request()).unwrap_err();
        assert_eq!(e.field, ControlField::PrimaryProcBased);
        assert_eq!(e.bits, proc1::ACTIVATE_SECONDARY);
        let mut req = hypervisor_request();
        req.proc_required &= !proc1::ACTIVATE_SECONDARY;
        // Activation only implied by required secondary bits: those are named.
        let e = compute(&raw, &req).unwrap_err();
        assert_eq!(e.field, ControlField::SecondaryProcBased);
        assert_eq!(e.bits, req.proc2_required);
        // Only optional secondary bits: proc2 is 0 and secondary stays off.
        req.proc2_required = 0;
        let c = compute(&raw, &req).unwrap();
        assert_eq!(c.proc2, 0);
        assert_eq!(c.proc & proc1::ACTIVATE_SECONDARY, 0);
        // Nothing secondary requested: no activation even when available.
        let c = compute(&icelake(), &ControlRequest::default()).unwrap();
        assert_eq!((c.proc & proc1::ACTIVATE_SECONDARY, c.proc2), (0, 0));
    }

    #[test]
    fn bit_names_cover_the_named_constants() {
        for (field, bits) in [
            (ControlField::PinBased, hypervisor_request().pin_required | hypervisor_request().pin_optional),
            (ControlField::PrimaryProcBased, hypervisor_request().proc_required),
            (
                ControlField::SecondaryProcBased,
                hypervisor_request().proc2_required | hypervisor_request().proc2_optional,
            ),
            (ControlField::VmExit, hypervisor_request().exit_required),
            (ControlField::VmEntry, hypervisor_request().entry_required | entry::IA32E_MODE_GUEST),
        ] {
            for bit in 0..32 {
                if bits & (1 << bit) != 0 {
                    assert!(field.bit_name(bit).is_some(), "{field:?} bit {bit}");
                }
            }
        }
        assert_eq!(ControlField::PrimaryProcBased.bit_name(0), None);
    }

    proptest! {
        #[test]
        fn adjusted_value_respects_the_msr(cap: u64, required: u32, optional: u32) {
            let allowed0 = cap as u32;
            let allowed1 = (cap >> 32) as u32;
            match adjust(cap, required, optional) {
                Ok(v) => {
                    prop_assert_eq!(v & !allowed1, 0);
                    prop_assert_eq!(v & required, required);
                    prop_assert_eq!(v & allowed0 & allowed1, allowed0 & allowed1);
                }
                Err(missing) => {
                    prop_assert_ne!(missing, 0);
                    prop_assert_eq!(missing, required & !allowed1);
                }
            }
        }

        #[test]
        fn consistent_msr_gives_allowed0_subset(low: u32, extra: u32, required: u32, optional: u32) {
            // A real MSR never forces a bit that it does not allow to be 1.
            let cap = (u64::from(low | extra) << 32) | u64::from(low);
            if let Ok(v) = adjust(cap, required, optional) {
                prop_assert_eq!(v & low, low);
                prop_assert_eq!(v & !(low | extra), 0);
                prop_assert_eq!(v & required, required);
            }
        }

        #[test]
        fn compute_respects_every_msr(
            pin in any::<u64>(), procbased in any::<u64>(), procbased2 in any::<u64>(),
            exit_msr in any::<u64>(), entry_msr in any::<u64>(), supported in any::<bool>(),
        ) {
            // Consistent MSRs (must-be-1 bits allowed to be 1); with `supported`, every
            // required bit allowed too, so that the Ok path is exercised.
            let req = hypervisor_request();
            let fix = |m: u64, required: u32| {
                let m = m | (m & 0xffff_ffff) << 32;
                if supported { m | u64::from(required) << 32 } else { m }
            };
            let raw = RawVmxMsrs {
                pinbased: fix(pin, req.pin_required),
                procbased: fix(procbased, req.proc_required),
                procbased2: fix(procbased2 & 0xffff_ffff_0000_0000, req.proc2_required),
                exit: fix(exit_msr, req.exit_required),
                entry: fix(entry_msr, req.entry_required),
                ..RawVmxMsrs::default()
            };
            prop_assert!(!supported || compute(&raw, &req).is_ok());
            if let Ok(c) = compute(&raw, &req) {
                for (v, msr, required) in [
                    (c.pin, raw.pinbased, req.pin_required),
                    (c.proc, raw.procbased, req.proc_required),
                    (c.proc2, raw.procbased2, req.proc2_required),
                    (c.exit, raw.exit, req.exit_required),
                    (c.entry, raw.entry, req.entry_required),
                ] {
                    prop_assert_eq!(v & msr as u32, msr as u32);
                    prop_assert_eq!(v & !((msr >> 32) as u32), 0);
                    prop_assert_eq!(v & required, required);
                }
            }
        }
    }
}
