//! Which guest MSR accesses reach the hardware, which the hypervisor emulates, and the
//! VMCS MSR bitmap that implements the split.
//!
//! - [`MsrPolicy::Passthrough`]: the guest reads and writes the real MSR without a VM
//!   exit. FS_BASE, GS_BASE and SYSENTER_CS/ESP/EIP are switched by the VMCS guest- and
//!   host-state areas (SDM Vol. 3C 25.4.1, 25.5; 27.3.2.1, 28.5.1); KERNEL_GS_BASE,
//!   STAR, LSTAR, CSTAR, SFMASK and TSC_AUX are not, so they hold the guest's values
//!   while it runs and the host must not rely on its own values of them (or must save
//!   and restore them around VM entries).
//! - [`MsrPolicy::PassthroughReadOnly`]: reads reach the hardware, writes exit. No MSR
//!   has this policy today; the bitmap supports it.
//! - [`MsrPolicy::Virtualized`]: every access exits and is emulated from per-vCPU state.
//! - [`MsrPolicy::Unknown`]: every access exits and the hypervisor injects #GP(0).
//!
//! MSR addresses: SDM Vol. 4 chapter 2, table 2-2 ("IA-32 Architectural MSRs").

use core::fmt;

/// MSR addresses (SDM Vol. 4 table 2-2).
pub mod msr {
    pub const IA32_TSC: u32 = 0x10;
    pub const IA32_APIC_BASE: u32 = 0x1b;
    pub const IA32_FEATURE_CONTROL: u32 = 0x3a;
    pub const IA32_TSC_ADJUST: u32 = 0x3b;
    pub const IA32_SPEC_CTRL: u32 = 0x48;
    pub const IA32_PRED_CMD: u32 = 0x49;
    pub const IA32_BIOS_UPDT_TRIG: u32 = 0x79;
    pub const IA32_ARCH_CAPABILITIES: u32 = 0x10a;
    /// IA32_BIOS_SIGN_ID, a.k.a. the microcode revision (UCODE_REV).
    pub const IA32_BIOS_SIGN_ID: u32 = 0x8b;
    pub const IA32_MTRRCAP: u32 = 0xfe;
    pub const IA32_SYSENTER_CS: u32 = 0x174;
    pub const IA32_SYSENTER_ESP: u32 = 0x175;
    pub const IA32_SYSENTER_EIP: u32 = 0x176;
    pub const IA32_MCG_CAP: u32 = 0x179;
    pub const IA32_MCG_STATUS: u32 = 0x17a;
    pub const IA32_MISC_ENABLE: u32 = 0x1a0;
    /// IA32_MTRR_PHYSBASE0; PHYSBASEn = 0x200 + 2n, PHYSMASKn = 0x201 + 2n.
    pub const IA32_MTRR_PHYSBASE0: u32 = 0x200;
    pub const IA32_MTRR_FIX64K_00000: u32 = 0x250;
    pub const IA32_MTRR_FIX16K_80000: u32 = 0x258;
    pub const IA32_MTRR_FIX16K_A0000: u32 = 0x259;
    /// IA32_MTRR_FIX4K_C0000; the eight 4K fixed-range MTRRs are 0x268..=0x26F.
    pub const IA32_MTRR_FIX4K_C0000: u32 = 0x268;
    pub const IA32_MTRR_FIX4K_F8000: u32 = 0x26f;
    pub const IA32_PAT: u32 = 0x277;
    pub const IA32_MTRR_DEF_TYPE: u32 = 0x2ff;
    pub const IA32_TSC_DEADLINE: u32 = 0x6e0;
    /// First and last MSR of the x2APIC register range.
    pub const X2APIC_FIRST: u32 = 0x800;
    pub const X2APIC_LAST: u32 = 0x8ff;
    pub const IA32_XSS: u32 = 0xda0;
    pub const IA32_EFER: u32 = 0xc000_0080;
    pub const IA32_STAR: u32 = 0xc000_0081;
    pub const IA32_LSTAR: u32 = 0xc000_0082;
    pub const IA32_CSTAR: u32 = 0xc000_0083;
    pub const IA32_FMASK: u32 = 0xc000_0084;
    pub const IA32_FS_BASE: u32 = 0xc000_0100;
    pub const IA32_GS_BASE: u32 = 0xc000_0101;
    pub const IA32_KERNEL_GS_BASE: u32 = 0xc000_0102;
    pub const IA32_TSC_AUX: u32 = 0xc000_0103;
}

/// Number of variable-range MTRR pairs the guest gets (0x200..=0x213).
pub const VARIABLE_MTRRS: u8 = 10;

/// Number of fixed-range MTRRs: FIX64K_00000, FIX16K_80000/A0000, FIX4K_C0000..F8000.
pub const FIXED_MTRRS: u8 = 11;

/// What a guest reads from IA32_FEATURE_CONTROL: locked, VMX disabled (bit 0 only).
pub const GUEST_FEATURE_CONTROL: u64 = 1;

/// IA32_ARCH_CAPABILITIES bits (SDM Vol. 4 table 2-2) a guest may see of the host's
/// value: the "not affected" and "mitigation present" facts RDCL_NO (0), IBRS_ALL (1),
/// RSBA (2), SKIP_L1DFL_VMENTRY (3), SSB_NO (4), MDS_NO (5), IF_PSCHANGE_MC_NO (6),
/// TAA_NO (8), SBDR_SSDP_NO (13), FBSDP_NO (14), PSDP_NO (15), FB_CLEAR (17), PBRSB_NO
/// (24), GDS_NO (26), RFDS_NO (27). Bits that announce further MSRs (TSX_CTRL 7,
/// FB_CLEAR_CTRL 18, ...) are hidden: those MSRs are not virtualised.
pub const GUEST_ARCH_CAPABILITIES_MASK: u64 =
    0b1_0111_1111 | 1 << 13 | 1 << 14 | 1 << 15 | 1 << 17 | 1 << 24 | 1 << 26 | 1 << 27;

/// An MSR the hypervisor emulates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VirtMsr {
    /// IA32_TSC (0x10): guest TSC = host TSC + offset.
    Tsc,
    /// IA32_APIC_BASE (0x1B): the virtual LAPIC's base and mode.
    ApicBase,
    /// IA32_FEATURE_CONTROL (0x3A): reads [`GUEST_FEATURE_CONTROL`], writes #GP.
    FeatureControl,
    /// IA32_TSC_ADJUST (0x3B).
    TscAdjust,
    /// IA32_SPEC_CTRL (0x48): writes of allowed bits accepted.
    SpecCtrl,
    /// IA32_PRED_CMD (0x49): write-only command; writes of allowed bits accepted.
    PredCmd,
    /// IA32_BIOS_UPDT_TRIG (0x79): microcode updates are ignored.
    BiosUpdateTrigger,
    /// IA32_BIOS_SIGN_ID (0x8B): microcode revision.
    BiosSignId,
    /// IA32_ARCH_CAPABILITIES (0x10A): read-only, the host's value within
    /// [`GUEST_ARCH_CAPABILITIES_MASK`].
    ArchCapabilities,
    /// IA32_MTRRCAP (0xFE).
    MtrrCap,
    /// IA32_MCG_CAP (0x179): reads 0 (no machine-check banks).
    McgCap,
    /// IA32_MCG_STATUS (0x17A): reads 0.
    McgStatus,
    /// IA32_MISC_ENABLE (0x1A0).
    MiscEnable,
    /// IA32_MTRR_PHYSBASEn (0x200 + 2n), n < [`VARIABLE_MTRRS`].
    MtrrPhysBase(u8),
    /// IA32_MTRR_PHYSMASKn (0x201 + 2n), n < [`VARIABLE_MTRRS`].
    MtrrPhysMask(u8),
    /// Fixed-range MTRR by index (< [`FIXED_MTRRS`]): 0 FIX64K_00000 (0x250),
    /// 1 FIX16K_80000 (0x258), 2 FIX16K_A0000 (0x259), 3..=10 FIX4K_C0000..F8000
    /// (0x268..=0x26F).
    MtrrFixed(u8),
    /// IA32_PAT (0x277).
    Pat,
    /// IA32_MTRR_DEF_TYPE (0x2FF).
    MtrrDefType,
    /// IA32_TSC_DEADLINE (0x6E0).
    TscDeadline,
    /// x2APIC register `0x800 + n` (handled by the virtual LAPIC).
    X2Apic(u8),
    /// IA32_XSS (0xDA0): supervisor XSAVE state components.
    Xss,
    /// IA32_EFER (0xC000_0080): guest EFER in the VMCS.
    Efer,
}

impl VirtMsr {
    /// The MSR address.
    #[must_use]
    pub const fn msr(self) -> u32 {
        use msr::*;
        match self {
            Self::Tsc => IA32_TSC,
            Self::ApicBase => IA32_APIC_BASE,
            Self::FeatureControl => IA32_FEATURE_CONTROL,
            Self::TscAdjust => IA32_TSC_ADJUST,
            Self::SpecCtrl => IA32_SPEC_CTRL,
            Self::PredCmd => IA32_PRED_CMD,
            Self::BiosUpdateTrigger => IA32_BIOS_UPDT_TRIG,
            Self::BiosSignId => IA32_BIOS_SIGN_ID,
            Self::ArchCapabilities => IA32_ARCH_CAPABILITIES,
            Self::MtrrCap => IA32_MTRRCAP,
            Self::McgCap => IA32_MCG_CAP,
            Self::McgStatus => IA32_MCG_STATUS,
            Self::MiscEnable => IA32_MISC_ENABLE,
            Self::MtrrPhysBase(n) => IA32_MTRR_PHYSBASE0 + 2 * n as u32,
            Self::MtrrPhysMask(n) => IA32_MTRR_PHYSBASE0 + 2 * n as u32 + 1,
            Self::MtrrFixed(0) => IA32_MTRR_FIX64K_00000,
            Self::MtrrFixed(1) => IA32_MTRR_FIX16K_80000,
            Self::MtrrFixed(2) => IA32_MTRR_FIX16K_A0000,
            Self::MtrrFixed(n) => IA32_MTRR_FIX4K_C0000 + (n as u32 - 3),
            Self::Pat => IA32_PAT,
            Self::MtrrDefType => IA32_MTRR_DEF_TYPE,
            Self::TscDeadline => IA32_TSC_DEADLINE,
            Self::X2Apic(n) => X2APIC_FIRST + n as u32,
            Self::Xss => IA32_XSS,
            Self::Efer => IA32_EFER,
        }
    }
}

/// How guest accesses to one MSR are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MsrPolicy {
    /// Reads and writes go to the hardware without VM exits.
    Passthrough,
    /// Reads go to the hardware; writes exit.
    PassthroughReadOnly,
    /// Reads and writes exit and are emulated.
    Virtualized(VirtMsr),
    /// Reads and writes exit; the hypervisor injects #GP(0).
    Unknown,
}

/// The policy of one MSR (see the module documentation).
// Always inlined: the kernel decides every RDMSR/WRMSR exit with it.
#[must_use]
#[inline(always)]
pub const fn policy(index: u32) -> MsrPolicy {
    use msr::*;
    use MsrPolicy::{Passthrough, Unknown, Virtualized as V};
    match index {
        IA32_FS_BASE | IA32_GS_BASE | IA32_KERNEL_GS_BASE | IA32_TSC_AUX => Passthrough,
        IA32_SYSENTER_CS | IA32_SYSENTER_ESP | IA32_SYSENTER_EIP => Passthrough,
        IA32_STAR | IA32_LSTAR | IA32_CSTAR | IA32_FMASK => Passthrough,
        IA32_TSC => V(VirtMsr::Tsc),
        IA32_APIC_BASE => V(VirtMsr::ApicBase),
        IA32_FEATURE_CONTROL => V(VirtMsr::FeatureControl),
        IA32_TSC_ADJUST => V(VirtMsr::TscAdjust),
        IA32_SPEC_CTRL => V(VirtMsr::SpecCtrl),
        IA32_PRED_CMD => V(VirtMsr::PredCmd),
        IA32_BIOS_UPDT_TRIG => V(VirtMsr::BiosUpdateTrigger),
        IA32_BIOS_SIGN_ID => V(VirtMsr::BiosSignId),
        IA32_ARCH_CAPABILITIES => V(VirtMsr::ArchCapabilities),
        IA32_MTRRCAP => V(VirtMsr::MtrrCap),
        IA32_MCG_CAP => V(VirtMsr::McgCap),
        IA32_MCG_STATUS => V(VirtMsr::McgStatus),
        IA32_MISC_ENABLE => V(VirtMsr::MiscEnable),
        0x200..=0x213 => {
            let n = ((index - IA32_MTRR_PHYSBASE0) / 2) as u8;
            if index & 1 == 0 {
                V(VirtMsr::MtrrPhysBase(n))
            } else {
                V(VirtMsr::MtrrPhysMask(n))
            }
        }
        IA32_MTRR_FIX64K_00000 => V(VirtMsr::MtrrFixed(0)),
        IA32_MTRR_FIX16K_80000 => V(VirtMsr::MtrrFixed(1)),
        IA32_MTRR_FIX16K_A0000 => V(VirtMsr::MtrrFixed(2)),
        IA32_MTRR_FIX4K_C0000..=IA32_MTRR_FIX4K_F8000 => {
            V(VirtMsr::MtrrFixed((index - IA32_MTRR_FIX4K_C0000) as u8 + 3))
        }
        IA32_PAT => V(VirtMsr::Pat),
        IA32_MTRR_DEF_TYPE => V(VirtMsr::MtrrDefType),
        IA32_TSC_DEADLINE => V(VirtMsr::TscDeadline),
        X2APIC_FIRST..=X2APIC_LAST => V(VirtMsr::X2Apic((index - X2APIC_FIRST) as u8)),
        IA32_XSS => V(VirtMsr::Xss),
        IA32_EFER => V(VirtMsr::Efer),
        _ => Unknown,
    }
}

/// The 4 KiB MSR bitmap of the VMCS (SDM Vol. 3C 25.6.9): a set bit makes the access
/// exit. Layout: read bitmap for MSRs 0x0000_0000..=0x0000_1FFF at bytes 0..1024, read
/// bitmap for 0xC000_0000..=0xC000_1FFF at 1024..2048, write bitmaps for the same two
/// ranges at 2048..3072 and 3072..4096. Accesses to MSRs outside both ranges always exit
/// (SDM 26.1.3), whatever the bitmap says.
///
/// Page-aligned so that a `static` of it can be handed to the VMCS directly. Building it
/// at compile time: `static BITMAP: MsrBitmap = MsrBitmap::for_policy();`.
#[derive(Clone, PartialEq, Eq)]
#[repr(C, align(4096))]
pub struct MsrBitmap([u8; 4096]);

/// Size of one of the four sub-bitmaps, in bytes.
const QUARTER: usize = 1024;
/// Offset of the write bitmaps.
const WRITE: usize = 2 * QUARTER;
/// First MSR of the high range.
const HIGH_FIRST: u32 = 0xc000_0000;
/// Number of MSRs in each range.
const RANGE_LEN: u32 = 0x2000;

/// Byte offset (in the read half) and bit mask of `index`, `None` outside both ranges.
const fn slot(index: u32) -> Option<(usize, u8)> {
    let (base, n) = if index < RANGE_LEN {
        (0, index)
    } else if index.wrapping_sub(HIGH_FIRST) < RANGE_LEN {
        (QUARTER, index - HIGH_FIRST)
    } else {
        return None;
    };
    Some((base + (n / 8) as usize, 1 << (n % 8)))
}

impl MsrBitmap {
    /// A bitmap that makes every access exit.
    #[must_use]
    pub const fn all_exit() -> Self {
        Self([0xff; 4096])
    }

    /// The bitmap for [`policy`]: exits on everything except reads and writes of
    /// `Passthrough` MSRs and reads of `PassthroughReadOnly` ones.
    #[must_use]
    pub const fn for_policy() -> Self {
        let mut b = Self::all_exit();
        let mut n = 0;
        while n < RANGE_LEN {
            b.apply(n, policy(n));
            b.apply(HIGH_FIRST + n, policy(HIGH_FIRST + n));
            n += 1;
        }
        b
    }

    /// Sets both intercepts of `index` from `policy`. Returns false (and changes nothing)
    /// for MSRs outside the bitmap's ranges, which always exit.
    pub const fn apply(&mut self, index: u32, policy: MsrPolicy) -> bool {
        let (read, write) = match policy {
            MsrPolicy::Passthrough => (false, false),
            MsrPolicy::PassthroughReadOnly => (false, true),
            MsrPolicy::Virtualized(_) | MsrPolicy::Unknown => (true, true),
        };
        self.set_read_intercept(index, read) && self.set_write_intercept(index, write)
    }

    /// Makes reads of `index` exit (`true`) or not. False when `index` is out of range.
    pub const fn set_read_intercept(&mut self, index: u32, intercept: bool) -> bool {
        self.set(index, 0, intercept)
    }

    /// Makes writes of `index` exit (`true`) or not. False when `index` is out of range.
    pub const fn set_write_intercept(&mut self, index: u32, intercept: bool) -> bool {
        self.set(index, WRITE, intercept)
    }

    const fn set(&mut self, index: u32, half: usize, intercept: bool) -> bool {
        let Some((byte, mask)) = slot(index) else { return false };
        if intercept {
            self.0[half + byte] |= mask;
        } else {
            self.0[half + byte] &= !mask;
        }
        true
    }

    const fn get(&self, index: u32, half: usize) -> bool {
        match slot(index) {
            Some((byte, mask)) => self.0[half + byte] & mask != 0,
            None => true,
        }
    }

    /// Whether RDMSR of `index` causes a VM exit.
    #[must_use]
    pub const fn intercepts_read(&self, index: u32) -> bool {
        self.get(index, 0)
    }

    /// Whether WRMSR of `index` causes a VM exit.
    #[must_use]
    pub const fn intercepts_write(&self, index: u32) -> bool {
        self.get(index, WRITE)
    }

    /// The 4096 bytes to put in the page the VMCS MSR-bitmap address points to.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; 4096] {
        &self.0
    }
}

impl Default for MsrBitmap {
    fn default() -> Self {
        Self::all_exit()
    }
}

impl fmt::Debug for MsrBitmap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let clear = |r: core::ops::Range<usize>| self.0[r].iter().map(|b| b.count_zeros()).sum::<u32>();
        f.debug_struct("MsrBitmap")
            .field("reads_passed", &clear(0..WRITE))
            .field("writes_passed", &clear(WRITE..4096))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    static BITMAP: MsrBitmap = MsrBitmap::for_policy();

    const PASSTHROUGH: [u32; 11] = [
        0xc000_0100,
        0xc000_0101,
        0xc000_0102,
        0x174,
        0x175,
        0x176,
        0xc000_0081,
        0xc000_0082,
        0xc000_0083,
        0xc000_0084,
        0xc000_0103,
    ];

    fn in_bitmap(index: u32) -> bool {
        index < 0x2000 || (0xc000_0000..0xc000_2000).contains(&index)
    }

    #[test]
    fn passthrough_list() {
        for m in PASSTHROUGH {
            assert_eq!(policy(m), MsrPolicy::Passthrough, "{m:#x}");
            assert!(!BITMAP.intercepts_read(m) && !BITMAP.intercepts_write(m), "{m:#x}");
        }
        let passed_reads = (0..0x2000).chain(0xc000_0000..0xc000_2000).filter(|&m| !BITMAP.intercepts_read(m)).count();
        let passed_writes =
            (0..0x2000).chain(0xc000_0000..0xc000_2000).filter(|&m| !BITMAP.intercepts_write(m)).count();
        assert_eq!((passed_reads, passed_writes), (PASSTHROUGH.len(), PASSTHROUGH.len()));
        // Byte/bit placement: FS_BASE is high MSR 0x100 -> byte 1024 + 32, bit 0.
        assert_eq!(BITMAP.as_bytes()[1024 + 32] & 1, 0);
        assert_eq!(BITMAP.as_bytes()[3072 + 32] & 1, 0);
        // SYSENTER_CS 0x174 -> byte 46, bit 4 (reads) and 2048 + 46 (writes).
        assert_eq!(BITMAP.as_bytes()[46], 0x8f);
        assert_eq!(BITMAP.as_bytes()[2048 + 46], 0x8f);
    }

    #[test]
    fn virtualized_msrs() {
        use VirtMsr::*;
        for (m, v) in [
            (0xc000_0080, Efer),
            (0x277, Pat),
            (0x1b, ApicBase),
            (0x10, Tsc),
            (0x3b, TscAdjust),
            (0x6e0, TscDeadline),
            (0xfe, MtrrCap),
            (0x2ff, MtrrDefType),
            (0x200, MtrrPhysBase(0)),
            (0x201, MtrrPhysMask(0)),
            (0x212, MtrrPhysBase(9)),
            (0x213, MtrrPhysMask(9)),
            (0x250, MtrrFixed(0)),
            (0x258, MtrrFixed(1)),
            (0x259, MtrrFixed(2)),
            (0x268, MtrrFixed(3)),
            (0x26f, MtrrFixed(10)),
            (0x3a, FeatureControl),
            (0x1a0, MiscEnable),
            (0x8b, BiosSignId),
            (0x10a, ArchCapabilities),
            (0x48, SpecCtrl),
            (0x49, PredCmd),
            (0x800, X2Apic(0)),
            (0x830, X2Apic(0x30)),
            (0x8ff, X2Apic(0xff)),
            (0x179, McgCap),
            (0x17a, McgStatus),
        ] {
            assert_eq!(policy(m), MsrPolicy::Virtualized(v), "{m:#x}");
            assert_eq!(v.msr(), m);
            assert!(BITMAP.intercepts_read(m) && BITMAP.intercepts_write(m));
        }
        for m in [0x214, 0x24f, 0x251, 0x25a, 0x267, 0x270, 0x7ff, 0x900, 0xe7, 0xe8, 0xce, 0xc000_0085] {
            assert_eq!(policy(m), MsrPolicy::Unknown, "{m:#x}");
        }
    }

    #[test]
    fn every_virt_msr_round_trips() {
        for m in (0..0x2000).chain(0xc000_0000..0xc000_2000) {
            if let MsrPolicy::Virtualized(v) = policy(m) {
                assert_eq!(v.msr(), m);
            }
        }
    }

    #[test]
    fn range_boundaries() {
        let mut b = MsrBitmap::all_exit();
        for m in [0, 0x1fff, 0xc000_0000, 0xc000_1fff] {
            assert!(b.apply(m, MsrPolicy::Passthrough));
            assert!(!b.intercepts_read(m) && !b.intercepts_write(m), "{m:#x}");
        }
        assert_eq!(b.as_bytes()[0], 0xfe);
        assert_eq!(b.as_bytes()[1023], 0x7f);
        assert_eq!(b.as_bytes()[1024], 0xfe);
        assert_eq!(b.as_bytes()[2047], 0x7f);
        assert_eq!(b.as_bytes()[2048], 0xfe);
        assert_eq!(b.as_bytes()[3071], 0x7f);
        assert_eq!(b.as_bytes()[3072], 0xfe);
        assert_eq!(b.as_bytes()[4095], 0x7f);
        // Just outside the ranges: cannot be expressed, always exit.
        for m in [0x2000, 0xbfff_ffff, 0xc000_2000, u32::MAX, 0x4000_0000] {
            assert!(!b.apply(m, MsrPolicy::Passthrough));
            assert!(b.intercepts_read(m) && b.intercepts_write(m), "{m:#x}");
        }
        assert_eq!(b.as_bytes().iter().map(|x| x.count_zeros()).sum::<u32>(), 8);
    }

    #[test]
    fn read_only_passthrough() {
        let mut b = MsrBitmap::all_exit();
        assert!(b.apply(0xce, MsrPolicy::PassthroughReadOnly));
        assert!(!b.intercepts_read(0xce) && b.intercepts_write(0xce));
        assert!(b.apply(0xce, MsrPolicy::Unknown));
        assert!(b.intercepts_read(0xce) && b.intercepts_write(0xce));
    }

    #[test]
    fn unknown_msrs_exit() {
        for m in [0x0, 0x1, 0x17, 0xe7, 0x1fff, 0xc000_0000, 0xc000_1fff, 0x4b56_4d00] {
            assert_eq!(policy(m), MsrPolicy::Unknown);
            assert!(BITMAP.intercepts_read(m) && BITMAP.intercepts_write(m));
        }
        assert_eq!(core::mem::align_of::<MsrBitmap>(), 4096);
        assert_eq!(core::mem::size_of::<MsrBitmap>(), 4096);
        assert_eq!(MsrBitmap::for_policy(), BITMAP);
    }

    fn interesting_msr() -> impl Strategy<Value = u32> {
        prop_oneof![
            any::<u32>(),
            0u32..0x2000,
            0xc000_0000u32..0xc000_2000,
            0x1f00u32..0x2100,
            0xbfff_ff00u32..0xc000_0200
        ]
    }

    proptest! {
        #[test]
        fn bitmap_agrees_with_policy(m in interesting_msr()) {
            let p = policy(m);
            let read_passes = matches!(p, MsrPolicy::Passthrough | MsrPolicy::PassthroughReadOnly);
            let write_passes = matches!(p, MsrPolicy::Passthrough);
            prop_assert_eq!(BITMAP.intercepts_read(m), !(read_passes && in_bitmap(m)));
            prop_assert_eq!(BITMAP.intercepts_write(m), !(write_passes && in_bitmap(m)));
        }
    }
}
