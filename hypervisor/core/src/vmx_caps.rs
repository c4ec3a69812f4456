//! Decoding the VMX capability MSRs and the decisions taken from them.
//!
//! References are to the Intel SDM, Volume 3, Appendix A ("VMX Capability Reporting
//! Facility") and section 24.6 / 25.x for the control bits.

use core::fmt;

/// IA32_FEATURE_CONTROL (MSR 0x3A) bits, SDM Vol. 4 table 2-2.
pub mod feature_control {
    /// Bit 0: lock. Once set, the MSR cannot be written until reset.
    pub const LOCK: u64 = 1 << 0;
    /// Bit 1: VMXON allowed inside SMX operation.
    pub const VMX_INSIDE_SMX: u64 = 1 << 1;
    /// Bit 2: VMXON allowed outside SMX operation.
    pub const VMX_OUTSIDE_SMX: u64 = 1 << 2;
}

/// What to do with IA32_FEATURE_CONTROL before VMXON (SDM Vol. 3 23.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureControlAction {
    /// Locked with VMX outside SMX enabled: nothing to do.
    AlreadyEnabled,
    /// Unlocked: write this value (VMX outside SMX + lock) first.
    Enable { new_value: u64 },
    /// Locked with VMX outside SMX disabled: firmware turned VT-x off.
    LockedOff,
}

/// Decides how to get VMXON permitted from the current IA32_FEATURE_CONTROL value.
#[must_use]
pub const fn feature_control_action(value: u64) -> FeatureControlAction {
    use feature_control::{LOCK, VMX_OUTSIDE_SMX};
    if value & LOCK == 0 {
        FeatureControlAction::Enable { new_value: value | VMX_OUTSIDE_SMX | LOCK }
    } else if value & VMX_OUTSIDE_SMX != 0 {
        FeatureControlAction::AlreadyEnabled
    } else {
        FeatureControlAction::LockedOff
    }
}

/// Applies the VMX fixed bits of CR0 or CR4 (SDM Vol. 3 A.7 and A.8): a bit set in
/// `fixed0` must be 1, a bit clear in `fixed1` must be 0.
#[must_use]
pub const fn apply_fixed_bits(value: u64, fixed0: u64, fixed1: u64) -> u64 {
    (value | fixed0) & fixed1
}

/// Raw values of the capability MSRs, read by the kernel (0 where absent).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RawVmxMsrs {
    /// IA32_VMX_BASIC, 0x480.
    pub basic: u64,
    /// IA32_VMX_PINBASED_CTLS (0x481), or IA32_VMX_TRUE_PINBASED_CTLS (0x48D).
    pub pinbased: u64,
    /// IA32_VMX_PROCBASED_CTLS (0x482), or the TRUE variant (0x48E).
    pub procbased: u64,
    /// IA32_VMX_EXIT_CTLS (0x483), or the TRUE variant (0x48F).
    pub exit: u64,
    /// IA32_VMX_ENTRY_CTLS (0x484), or the TRUE variant (0x490).
    pub entry: u64,
    /// IA32_VMX_MISC, 0x485.
    pub misc: u64,
    /// IA32_VMX_PROCBASED_CTLS2 (0x48B); only valid when the primary controls allow
    /// "activate secondary controls".
    pub procbased2: u64,
    /// IA32_VMX_EPT_VPID_CAP (0x48C); only valid when EPT or VPID is allowed.
    pub ept_vpid: u64,
}

/// IA32_VMX_BASIC bit 55: the TRUE_ control MSRs exist (SDM A.1).
pub const BASIC_TRUE_CONTROLS: u64 = 1 << 55;

/// Pin-based controls (SDM 25.6.1).
pub mod pin {
    pub const EXTERNAL_INTERRUPT_EXITING: u32 = 1 << 0;
    pub const NMI_EXITING: u32 = 1 << 3;
    pub const VIRTUAL_NMIS: u32 = 1 << 5;
    pub const PREEMPTION_TIMER: u32 = 1 << 6;
    pub const POSTED_INTERRUPTS: u32 = 1 << 7;
}

/// Primary processor-based controls (SDM 25.6.2, table 25-6).
pub mod proc1 {
    pub const USE_TPR_SHADOW: u32 = 1 << 21;
    pub const USE_MSR_BITMAPS: u32 = 1 << 28;
    pub const ACTIVATE_SECONDARY: u32 = 1 << 31;
}

/// Secondary processor-based controls (SDM 25.6.2, table 25-7).
pub mod proc2 {
    pub const VIRTUALIZE_APIC_ACCESSES: u32 = 1 << 0;
    pub const ENABLE_EPT: u32 = 1 << 1;
    pub const VIRTUALIZE_X2APIC: u32 = 1 << 4;
    pub const ENABLE_VPID: u32 = 1 << 5;
    pub const UNRESTRICTED_GUEST: u32 = 1 << 7;
    pub const APIC_REGISTER_VIRTUALIZATION: u32 = 1 << 8;
    pub const VIRTUAL_INTERRUPT_DELIVERY: u32 = 1 << 9;
}

/// IA32_VMX_EPT_VPID_CAP bits (SDM A.10).
pub mod ept_vpid {
    pub const PAGE_WALK_4: u64 = 1 << 6;
    pub const MEMORY_TYPE_WB: u64 = 1 << 14;
    pub const PAGES_2M: u64 = 1 << 16;
    pub const PAGES_1G: u64 = 1 << 17;
    pub const INVEPT: u64 = 1 << 20;
    pub const ACCESSED_DIRTY: u64 = 1 << 21;
    pub const INVEPT_SINGLE_CONTEXT: u64 = 1 << 25;
    pub const INVEPT_ALL_CONTEXT: u64 = 1 << 26;
    pub const INVVPID: u64 = 1 << 32;
}

/// True when a control MSR's allowed-1 settings (high 32 bits) permit all of `bits`.
#[must_use]
pub const fn allowed1(msr: u64, bits: u32) -> bool {
    ((msr >> 32) as u32) & bits == bits
}

/// What the processor's VMX implementation offers, decoded from [`RawVmxMsrs`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmxCapabilities {
    /// VMCS revision identifier (IA32_VMX_BASIC bits 30:0), written to VMXON/VMCS regions.
    pub revision_id: u32,
    /// Size of the VMXON region and VMCS in bytes (bits 44:32).
    pub region_size: u32,
    /// Whether the TRUE_ control MSRs exist.
    pub true_controls: bool,
    pub secondary_controls: bool,
    pub ept: bool,
    /// EPT 4-level walk with write-back paging structures: what the EPT builder needs.
    pub ept_walk_wb: bool,
    pub ept_2m: bool,
    pub ept_1g: bool,
    pub ept_ad: bool,
    pub invept: bool,
    pub vpid: bool,
    pub invvpid: bool,
    pub unrestricted_guest: bool,
    pub tpr_shadow: bool,
    pub apic_access: bool,
    pub x2apic_virtualization: bool,
    pub apic_register_virtualization: bool,
    pub virtual_interrupt_delivery: bool,
    pub posted_interrupts: bool,
    pub preemption_timer: bool,
    /// The preemption timer counts down once every 2^rate TSC ticks (IA32_VMX_MISC 4:0).
    pub preemption_timer_rate: u8,
}

impl VmxCapabilities {
    /// Decodes the raw MSR values (SDM Appendix A).
    #[must_use]
    pub fn decode(raw: &RawVmxMsrs) -> Self {
        let secondary = allowed1(raw.procbased, proc1::ACTIVATE_SECONDARY);
        let p2 = |bits| secondary && allowed1(raw.procbased2, bits);
        let ept = p2(proc2::ENABLE_EPT);
        let vpid = p2(proc2::ENABLE_VPID);
        let cap = |bit: u64| (ept || vpid) && raw.ept_vpid & bit != 0;
        Self {
            revision_id: (raw.basic & 0x7fff_ffff) as u32,
            region_size: ((raw.basic >> 32) & 0x1fff) as u32,
            true_controls: raw.basic & BASIC_TRUE_CONTROLS != 0,
            secondary_controls: secondary,
            ept,
            ept_walk_wb: ept && cap(ept_vpid::PAGE_WALK_4) && cap(ept_vpid::MEMORY_TYPE_WB),
            ept_2m: ept && cap(ept_vpid::PAGES_2M),
            ept_1g: ept && cap(ept_vpid::PAGES_1G),
            ept_ad: ept && cap(ept_vpid::ACCESSED_DIRTY),
            invept: ept && cap(ept_vpid::INVEPT),
            vpid,
            invvpid: vpid && cap(ept_vpid::INVVPID),
            unrestricted_guest: ept && p2(proc2::UNRESTRICTED_GUEST),
            tpr_shadow: allowed1(raw.procbased, proc1::USE_TPR_SHADOW),
            apic_access: p2(proc2::VIRTUALIZE_APIC_ACCESSES),
            x2apic_virtualization: p2(proc2::VIRTUALIZE_X2APIC),
            apic_register_virtualization: p2(proc2::APIC_REGISTER_VIRTUALIZATION),
            virtual_interrupt_delivery: p2(proc2::VIRTUAL_INTERRUPT_DELIVERY)
                && allowed1(raw.pinbased, pin::EXTERNAL_INTERRUPT_EXITING),
            posted_interrupts: allowed1(raw.pinbased, pin::POSTED_INTERRUPTS),
            preemption_timer: allowed1(raw.pinbased, pin::PREEMPTION_TIMER),
            preemption_timer_rate: (raw.misc & 0x1f) as u8,
        }
    }

    /// APIC virtualisation as the pre-flight report means it: TPR shadow, virtualised
    /// APIC accesses and APIC-register virtualisation.
    #[must_use]
    pub fn apicv(&self) -> bool {
        self.tpr_shadow && self.apic_access && self.apic_register_virtualization
    }

    /// Whether this VMX implementation can run the hypervisor's guests: EPT with a
    /// 4-level write-back walk and INVEPT, and unrestricted guest (real-mode guests).
    #[must_use]
    pub fn missing_for_guests(&self) -> Option<&'static str> {
        if !self.ept {
            Some("EPT")
        } else if !self.ept_walk_wb {
            Some("EPT 4-level write-back page walk")
        } else if !self.invept {
            Some("INVEPT")
        } else if !self.unrestricted_guest {
            Some("unrestricted guest")
        } else {
            None
        }
    }
}

fn yn(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// The one-line capability summary: `ept yes (2M yes, 1G yes, A/D yes), vpid yes, ...`.
impl fmt::Display for VmxCapabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "revision {:#x}, ept {} (2M {}, 1G {}, A/D {}), vpid {}, unrestricted-guest {}, apic-virtualization {}, \
             x2apic-virtualization {}, virtual-interrupt-delivery {}, posted-interrupts {}, preemption-timer {}",
            self.revision_id,
            yn(self.ept),
            yn(self.ept_2m),
            yn(self.ept_1g),
            yn(self.ept_ad),
            yn(self.vpid),
            yn(self.unrestricted_guest),
            yn(self.apicv()),
            yn(self.x2apic_virtualization),
            yn(self.virtual_interrupt_delivery),
            yn(self.posted_interrupts),
            yn(self.preemption_timer),
        )?;
        if self.preemption_timer {
            write!(f, " (tsc/{})", 1u64 << self.preemption_timer_rate)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    /// Values read under Bochs 2.7 with CPU model corei7_icelake_u (see PLATFORM.md).
    fn icelake() -> RawVmxMsrs {
        RawVmxMsrs {
            basic: 0x00d8_1000_0000_0004,
            pinbased: 0x0000_007f_0000_0016,
            procbased: 0xfff9_fffe_0401_e172,
            exit: 0,
            entry: 0,
            misc: 0x5,
            procbased2: 0x0297_7fff_0000_0000,
            ept_vpid: 0x0000_0f01_0633_4141,
        }
    }

    #[test]
    fn decodes_icelake_under_bochs() {
        let c = VmxCapabilities::decode(&icelake());
        assert_eq!(c.revision_id, 4);
        assert_eq!(c.region_size, 0x1000);
        assert!(c.true_controls);
        assert!(c.ept && c.ept_walk_wb && c.ept_2m && c.ept_1g && c.ept_ad && c.invept);
        assert!(c.vpid && c.invvpid && c.unrestricted_guest);
        assert!(c.apic_access && c.apic_register_virtualization && c.virtual_interrupt_delivery);
        assert!(c.x2apic_virtualization);
        assert!(!c.posted_interrupts);
        assert!(c.preemption_timer);
        assert_eq!(c.preemption_timer_rate, 5);
        assert_eq!(c.missing_for_guests(), None);
        let line = c.to_string();
        assert!(line.contains("ept yes (2M yes, 1G yes, A/D yes)"), "{line}");
        assert!(line.contains("posted-interrupts no"), "{line}");
        assert!(line.contains("preemption-timer yes (tsc/32)"), "{line}");
    }

    #[test]
    fn secondary_controls_gate_ept_and_vpid() {
        let mut raw = icelake();
        raw.procbased &= !((proc1::ACTIVATE_SECONDARY as u64) << 32);
        let c = VmxCapabilities::decode(&raw);
        assert!(!c.secondary_controls && !c.ept && !c.vpid && !c.unrestricted_guest && !c.ept_1g);
        assert_eq!(c.missing_for_guests(), Some("EPT"));
    }

    #[test]
    fn missing_unrestricted_guest_is_named() {
        let mut raw = icelake();
        raw.procbased2 &= !((proc2::UNRESTRICTED_GUEST as u64) << 32);
        let c = VmxCapabilities::decode(&raw);
        assert_eq!(c.missing_for_guests(), Some("unrestricted guest"));
    }

    #[test]
    fn feature_control_decisions() {
        assert_eq!(feature_control_action(0), FeatureControlAction::Enable { new_value: 0b101 });
        assert_eq!(feature_control_action(0b010), FeatureControlAction::Enable { new_value: 0b111 });
        assert_eq!(feature_control_action(0b101), FeatureControlAction::AlreadyEnabled);
        assert_eq!(feature_control_action(0b001), FeatureControlAction::LockedOff);
        assert_eq!(feature_control_action(0b011), FeatureControlAction::LockedOff);
    }

    #[test]
    fn fixed_bits() {
        // CR4: VMXE (bit 13) fixed to 1, bits above 22 fixed to 0.
        assert_eq!(apply_fixed_bits(0x20, 1 << 13, 0x3f_ffff), 0x2020);
        assert_eq!(apply_fixed_bits(1 << 30, 0, 0x3f_ffff), 0);
    }
}
