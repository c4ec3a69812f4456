//! VM-exit reasons, exit qualifications and event (interruption) information.
//!
//! Everything here decodes or encodes plain integers read from or written to the VMCS:
//! `const fn`s returning small `Copy` values, no allocation, no formatting, so it can run
//! on the VM-exit path.
//!
//! References (Intel SDM Vol. 3C, current numbering): exit reasons appendix C table C-1
//! and 25.9.1 (exit-reason field); exit qualifications 28.2.1 (tables 28-3 control-register
//! accesses, 28-4 MOV DR, 28-5 I/O instructions, 28-7 EPT violations); interruption
//! information 25.9.2 (VM-exit), 25.9.3 (IDT-vectoring) and 25.8.3 (VM-entry, table
//! 25-17); event injection 27.6.

macro_rules! exit_reasons {
    ($($(#[$doc:meta])* $variant:ident = $value:literal => $name:literal,)*) => {
        /// Basic VM-exit reasons (SDM appendix C, table C-1).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum ExitReason {
            $($(#[$doc])* $variant = $value,)*
        }

        impl ExitReason {
            /// Every basic exit reason known here, in numerical order.
            pub const ALL: &'static [ExitReason] = &[$(ExitReason::$variant),*];

            /// The exit reason with basic number `basic`, `None` for numbers that are
            /// unused or newer than this table.
            // Inlined: the kernel's exit dispatcher then switches on the number once.
            #[must_use]
            #[inline(always)]
            pub const fn from_basic(basic: u16) -> Option<Self> {
                match basic {
                    $($value => Some(Self::$variant),)*
                    _ => None,
                }
            }

            /// Name in snake_case, as the kernel's exit handlers are named.
            #[must_use]
            pub const fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)*
                }
            }
        }
    };
}

exit_reasons! {
    /// Exception (with the exception bitmap bit set) or NMI (with NMI exiting).
    ExceptionOrNmi = 0 => "exception_or_nmi",
    ExternalInterrupt = 1 => "external_interrupt",
    TripleFault = 2 => "triple_fault",
    InitSignal = 3 => "init_signal",
    /// Start-up IPI in the wait-for-SIPI activity state.
    Sipi = 4 => "sipi",
    IoSmi = 5 => "io_smi",
    OtherSmi = 6 => "other_smi",
    InterruptWindow = 7 => "interrupt_window",
    NmiWindow = 8 => "nmi_window",
    TaskSwitch = 9 => "task_switch",
    Cpuid = 10 => "cpuid",
    Getsec = 11 => "getsec",
    Hlt = 12 => "hlt",
    Invd = 13 => "invd",
    Invlpg = 14 => "invlpg",
    Rdpmc = 15 => "rdpmc",
    Rdtsc = 16 => "rdtsc",
    Rsm = 17 => "rsm",
    Vmcall = 18 => "vmcall",
    Vmclear = 19 => "vmclear",
    Vmlaunch = 20 => "vmlaunch",
    Vmptrld = 21 => "vmptrld",
    Vmptrst = 22 => "vmptrst",
    Vmread = 23 => "vmread",
    Vmresume = 24 => "vmresume",
    Vmwrite = 25 => "vmwrite",
    Vmxoff = 26 => "vmxoff",
    Vmxon = 27 => "vmxon",
    /// MOV to/from CR0/CR3/CR4/CR8, CLTS, LMSW: qualification [`CrAccess`].
    CrAccess = 28 => "cr_access",
    /// MOV to/from a debug register: qualification [`MovDr`].
    DrAccess = 29 => "dr_access",
    /// IN, OUT, INS, OUTS: qualification [`IoInstruction`].
    IoInstruction = 30 => "io_instruction",
    Rdmsr = 31 => "rdmsr",
    Wrmsr = 32 => "wrmsr",
    /// VM-entry failure (bit 31 of the exit-reason field set) due to invalid guest state.
    EntryFailureGuestState = 33 => "entry_failure_guest_state",
    EntryFailureMsrLoading = 34 => "entry_failure_msr_loading",
    Mwait = 36 => "mwait",
    MonitorTrapFlag = 37 => "monitor_trap_flag",
    Monitor = 39 => "monitor",
    Pause = 40 => "pause",
    EntryFailureMachineCheck = 41 => "entry_failure_machine_check",
    TprBelowThreshold = 43 => "tpr_below_threshold",
    ApicAccess = 44 => "apic_access",
    VirtualizedEoi = 45 => "virtualized_eoi",
    GdtrIdtrAccess = 46 => "gdtr_idtr_access",
    LdtrTrAccess = 47 => "ldtr_tr_access",
    /// Qualification [`EptViolation`]; guest-physical address in its own VMCS field.
    EptViolation = 48 => "ept_violation",
    EptMisconfiguration = 49 => "ept_misconfiguration",
    Invept = 50 => "invept",
    Rdtscp = 51 => "rdtscp",
    PreemptionTimer = 52 => "preemption_timer",
    Invvpid = 53 => "invvpid",
    /// WBINVD or WBNOINVD.
    Wbinvd = 54 => "wbinvd",
    Xsetbv = 55 => "xsetbv",
    ApicWrite = 56 => "apic_write",
    Rdrand = 57 => "rdrand",
    Invpcid = 58 => "invpcid",
    Vmfunc = 59 => "vmfunc",
    Encls = 60 => "encls",
    Rdseed = 61 => "rdseed",
    PmlFull = 62 => "pml_full",
    Xsaves = 63 => "xsaves",
    Xrstors = 64 => "xrstors",
    Pconfig = 65 => "pconfig",
    SppEvent = 66 => "spp_event",
    Umwait = 67 => "umwait",
    Tpause = 68 => "tpause",
    Loadiwkey = 69 => "loadiwkey",
    Enclv = 70 => "enclv",
    EnqcmdPasidFailure = 72 => "enqcmd_pasid_failure",
    EnqcmdsPasidFailure = 73 => "enqcmds_pasid_failure",
    BusLock = 74 => "bus_lock",
    /// Instruction timeout ("notify window").
    InstructionTimeout = 75 => "instruction_timeout",
    Seamcall = 76 => "seamcall",
    Tdcall = 77 => "tdcall",
    Rdmsrlist = 78 => "rdmsrlist",
    Wrmsrlist = 79 => "wrmsrlist",
}

impl ExitReason {
    /// The VMX instructions a guest may try (SDM chapter 31): without nested VMX they get
    /// #UD. VMCALL (the hypercall) and VMFUNC are not in this set.
    #[must_use]
    pub const fn is_vmx_instruction(self) -> bool {
        matches!(
            self,
            Self::Vmclear
                | Self::Vmlaunch
                | Self::Vmptrld
                | Self::Vmptrst
                | Self::Vmread
                | Self::Vmresume
                | Self::Vmwrite
                | Self::Vmxoff
                | Self::Vmxon
                | Self::Invept
                | Self::Invvpid
        )
    }
}

/// The 32-bit exit-reason VMCS field (SDM 25.9.1, table 25-18).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitReasonField(pub u32);

impl ExitReasonField {
    /// Bits 15:0: the basic exit reason.
    #[must_use]
    pub const fn basic(self) -> u16 {
        self.0 as u16
    }

    /// The basic exit reason decoded, `None` when unknown.
    #[must_use]
    #[inline]
    pub const fn reason(self) -> Option<ExitReason> {
        ExitReason::from_basic(self.basic())
    }

    /// Bit 27: the exit happened while the guest was in an SGX enclave.
    #[must_use]
    pub const fn enclave(self) -> bool {
        self.0 & (1 << 27) != 0
    }

    /// Bit 28: a monitor-trap-flag VM exit is pending.
    #[must_use]
    pub const fn pending_mtf(self) -> bool {
        self.0 & (1 << 28) != 0
    }

    /// Bit 29: VM exit from VMX root operation (SMM dual-monitor treatment only).
    #[must_use]
    pub const fn from_vmx_root(self) -> bool {
        self.0 & (1 << 29) != 0
    }

    /// Bit 31: VM-entry failure (the guest never ran).
    #[must_use]
    pub const fn entry_failure(self) -> bool {
        self.0 & (1 << 31) != 0
    }
}

/// General-purpose register numbering of exit qualifications and instruction
/// information (SDM tables 28-3, 28-4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Gpr {
    Rax = 0,
    Rcx = 1,
    Rdx = 2,
    Rbx = 3,
    Rsp = 4,
    Rbp = 5,
    Rsi = 6,
    Rdi = 7,
    R8 = 8,
    R9 = 9,
    R10 = 10,
    R11 = 11,
    R12 = 12,
    R13 = 13,
    R14 = 14,
    R15 = 15,
}

impl Gpr {
    /// The register numbered `index & 0xF`.
    #[must_use]
    pub const fn from_index(index: u8) -> Self {
        match index & 0xf {
            0 => Self::Rax,
            1 => Self::Rcx,
            2 => Self::Rdx,
            3 => Self::Rbx,
            4 => Self::Rsp,
            5 => Self::Rbp,
            6 => Self::Rsi,
            7 => Self::Rdi,
            8 => Self::R8,
            9 => Self::R9,
            10 => Self::R10,
            11 => Self::R11,
            12 => Self::R12,
            13 => Self::R13,
            14 => Self::R14,
            _ => Self::R15,
        }
    }

    /// The register's number (0 RAX ... 15 R15).
    #[must_use]
    pub const fn index(self) -> u8 {
        self as u8
    }
}

/// Access type of a control-register access exit (table 28-3 bits 5:4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrAccessType {
    MovToCr = 0,
    MovFromCr = 1,
    Clts = 2,
    Lmsw = 3,
}

/// LMSW operand type (table 28-3 bit 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LmswOperand {
    Register = 0,
    Memory = 1,
}

/// Exit qualification for control-register accesses (SDM 28.2.1, table 28-3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrAccess {
    /// Bits 3:0: the control register (0 for CLTS and LMSW).
    pub cr: u8,
    /// Bits 5:4.
    pub access: CrAccessType,
    /// Bit 6 (LMSW only).
    pub lmsw_operand: LmswOperand,
    /// Bits 11:8: source (MOV to CR) or destination (MOV from CR) register.
    pub gpr: Gpr,
    /// Bits 31:16: the LMSW source data (LMSW only).
    pub lmsw_source: u16,
}

impl CrAccess {
    #[must_use]
    pub const fn decode(qualification: u64) -> Self {
        Self {
            cr: (qualification & 0xf) as u8,
            access: match (qualification >> 4) & 3 {
                0 => CrAccessType::MovToCr,
                1 => CrAccessType::MovFromCr,
                2 => CrAccessType::Clts,
                _ => CrAccessType::Lmsw,
            },
            lmsw_operand: if qualification & (1 << 6) != 0 { LmswOperand::Memory } else { LmswOperand::Register },
            gpr: Gpr::from_index((qualification >> 8) as u8),
            lmsw_source: (qualification >> 16) as u16,
        }
    }
}

/// Direction of a MOV DR (table 28-4 bit 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrDirection {
    ToDr = 0,
    FromDr = 1,
}

/// Exit qualification for MOV DR (SDM 28.2.1, table 28-4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MovDr {
    /// Bits 2:0: the debug register.
    pub dr: u8,
    /// Bit 4.
    pub direction: DrDirection,
    /// Bits 11:8.
    pub gpr: Gpr,
}

impl MovDr {
    #[must_use]
    pub const fn decode(qualification: u64) -> Self {
        Self {
            dr: (qualification & 7) as u8,
            direction: if qualification & (1 << 4) != 0 { DrDirection::FromDr } else { DrDirection::ToDr },
            gpr: Gpr::from_index((qualification >> 8) as u8),
        }
    }
}

/// Exit qualification for I/O instructions (SDM 28.2.1, table 28-5), checked: it holds
/// the qualification itself (its defined bits), so that passing it on costs nothing,
/// and reads the fields from it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IoInstruction(u64);

impl IoInstruction {
    /// The bits table 28-5 defines: 6:0 and 31:16.
    const DEFINED: u64 = 0xFFFF_007F;

    /// Decodes the qualification; `None` for the size encodings (bits 2:0) 2 and 4-7,
    /// which the SDM does not use.
    #[must_use]
    #[inline]
    pub const fn decode(qualification: u64) -> Option<Self> {
        match qualification & 7 {
            0 | 1 | 3 => Some(Self(qualification & Self::DEFINED)),
            _ => None,
        }
    }

    /// Access size in bytes (1, 2 or 4), from bits 2:0 (0, 1, 3).
    #[must_use]
    #[inline]
    pub const fn size(self) -> u8 {
        (self.0 & 7) as u8 + 1
    }

    /// The bits of a value of [`IoInstruction::size`] bytes: 0xFF, 0xFFFF or 0xFFFF_FFFF.
    #[must_use]
    #[inline]
    pub const fn value_mask(self) -> u64 {
        u64::MAX >> (64 - 8 * self.size() as u32)
    }

    /// Bit 3: IN/INS (true) or OUT/OUTS (false).
    #[must_use]
    #[inline]
    pub const fn is_in(self) -> bool {
        self.0 & (1 << 3) != 0
    }

    /// Bit 4: INS/OUTS.
    #[must_use]
    #[inline]
    pub const fn string(self) -> bool {
        self.0 & (1 << 4) != 0
    }

    /// Bit 5: REP prefix.
    #[must_use]
    #[inline]
    pub const fn rep(self) -> bool {
        self.0 & (1 << 5) != 0
    }

    /// Bit 6: the port was an immediate operand (false: in DX).
    #[must_use]
    #[inline]
    pub const fn immediate(self) -> bool {
        self.0 & (1 << 6) != 0
    }

    /// Bits 31:16.
    #[must_use]
    #[inline]
    pub const fn port(self) -> u16 {
        (self.0 >> 16) as u16
    }
}

impl core::fmt::Debug for IoInstruction {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IoInstruction")
            .field("size", &self.size())
            .field("is_in", &self.is_in())
            .field("string", &self.string())
            .field("rep", &self.rep())
            .field("immediate", &self.immediate())
            .field("port", &self.port())
            .finish()
    }
}

/// Exit qualification for EPT violations (SDM 28.2.1, table 28-7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EptViolation {
    /// Bit 0: data read.
    pub read: bool,
    /// Bit 1: data write.
    pub write: bool,
    /// Bit 2: instruction fetch.
    pub fetch: bool,
    /// Bit 3: the guest-physical address was readable (AND of the EPT entries).
    pub readable: bool,
    /// Bit 4: ... writable.
    pub writable: bool,
    /// Bit 5: ... executable (supervisor-mode executable with mode-based execute).
    pub executable: bool,
    /// Bit 6: ... user-mode executable (mode-based execute control only).
    pub user_executable: bool,
    /// Bit 7: the guest linear-address field is valid.
    pub linear_address_valid: bool,
    /// Bit 8 (when bit 7 is set): the access was to the translated linear address
    /// (true) or to a guest paging-structure entry (false).
    pub translated_access: bool,
    /// Bit 12: NMI unblocking due to IRET.
    pub nmi_unblocking: bool,
}

impl EptViolation {
    #[must_use]
    pub const fn decode(qualification: u64) -> Self {
        let q = qualification;
        Self {
            read: bit(q, 0),
            write: bit(q, 1),
            fetch: bit(q, 2),
            readable: bit(q, 3),
            writable: bit(q, 4),
            executable: bit(q, 5),
            user_executable: bit(q, 6),
            linear_address_valid: bit(q, 7),
            translated_access: bit(q, 8),
            nmi_unblocking: bit(q, 12),
        }
    }
}

const fn bit(value: u64, n: u32) -> bool {
    value & (1 << n) != 0
}

/// Exception vectors (SDM Vol. 3A 6.3.1, table 6-1).
pub mod vector {
    pub const DE: u8 = 0;
    pub const DB: u8 = 1;
    pub const NMI: u8 = 2;
    pub const BP: u8 = 3;
    pub const OF: u8 = 4;
    pub const BR: u8 = 5;
    pub const UD: u8 = 6;
    pub const NM: u8 = 7;
    pub const DF: u8 = 8;
    pub const TS: u8 = 10;
    pub const NP: u8 = 11;
    pub const SS: u8 = 12;
    pub const GP: u8 = 13;
    pub const PF: u8 = 14;
    pub const MF: u8 = 16;
    pub const AC: u8 = 17;
    pub const MC: u8 = 18;
    pub const XM: u8 = 19;
    pub const VE: u8 = 20;
    pub const CP: u8 = 21;
}

/// Whether the exception pushes an error code: #DF, #TS, #NP, #SS, #GP, #PF, #AC, #CP.
///
/// These are the vectors for which a VM-entry injection of a hardware exception must
/// deliver an error code (SDM 27.2.1.3) — except in real mode (CR0.PE = 0 with
/// unrestricted guest), where none may be delivered. #CP only exists with CET.
#[must_use]
pub const fn has_error_code(vector: u8) -> bool {
    use vector::*;
    matches!(vector, DF | TS | NP | SS | GP | PF | AC | CP)
}

/// Interruption type, bits 10:8 of the interruption-information fields (SDM 25.8.3 table
/// 25-17, 25.9.2 table 25-19, 25.9.3 table 25-20). 1 is reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum InterruptionType {
    ExternalInterrupt = 0,
    Nmi = 2,
    HardwareException = 3,
    /// INT n.
    SoftwareInterrupt = 4,
    /// INT1 (ICEBP).
    PrivilegedSoftwareException = 5,
    /// INT3 (#BP), INTO (#OF).
    SoftwareException = 6,
    /// On entry: pending MTF VM exit (vector 0).
    Other = 7,
}

impl InterruptionType {
    #[must_use]
    pub const fn from_bits(bits: u8) -> Option<Self> {
        match bits & 7 {
            0 => Some(Self::ExternalInterrupt),
            2 => Some(Self::Nmi),
            3 => Some(Self::HardwareException),
            4 => Some(Self::SoftwareInterrupt),
            5 => Some(Self::PrivilegedSoftwareException),
            6 => Some(Self::SoftwareException),
            7 => Some(Self::Other),
            _ => None,
        }
    }

    /// Types delivered by an instruction: injecting them needs the VM-entry instruction
    /// length (SDM 27.6.1.1).
    #[must_use]
    pub const fn needs_instruction_length(self) -> bool {
        matches!(self, Self::SoftwareInterrupt | Self::PrivilegedSoftwareException | Self::SoftwareException)
    }
}

/// An interruption-information field: VM-exit interruption information (25.9.2),
/// IDT-vectoring information (25.9.3) or VM-entry interruption information (25.8.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InterruptionInfo(pub u32);

impl InterruptionInfo {
    /// Bit 11: an error code is delivered (its value is in a separate field).
    pub const ERROR_CODE_VALID: u32 = 1 << 11;
    /// Bit 12 (VM-exit and IDT-vectoring only): NMI unblocking due to IRET.
    pub const NMI_UNBLOCKING: u32 = 1 << 12;
    /// Bit 31.
    pub const VALID: u32 = 1 << 31;

    /// A valid field with this vector, type and error-code flag.
    #[must_use]
    pub const fn new(vector: u8, kind: InterruptionType, error_code_valid: bool) -> Self {
        let ec = if error_code_valid { Self::ERROR_CODE_VALID } else { 0 };
        Self(Self::VALID | ec | (kind as u32) << 8 | vector as u32)
    }

    /// Bits 7:0.
    #[must_use]
    pub const fn vector(self) -> u8 {
        self.0 as u8
    }

    /// Bits 10:8, `None` for the reserved type 1.
    #[must_use]
    pub const fn kind(self) -> Option<InterruptionType> {
        InterruptionType::from_bits((self.0 >> 8) as u8)
    }

    #[must_use]
    pub const fn error_code_valid(self) -> bool {
        self.0 & Self::ERROR_CODE_VALID != 0
    }

    #[must_use]
    pub const fn nmi_unblocking(self) -> bool {
        self.0 & Self::NMI_UNBLOCKING != 0
    }

    #[must_use]
    pub const fn valid(self) -> bool {
        self.0 & Self::VALID != 0
    }

    /// Whether injecting this event needs the VM-entry instruction length (types 4-6).
    #[must_use]
    pub const fn needs_instruction_length(self) -> bool {
        matches!((self.0 >> 8) & 7, 4..=6)
    }

    /// A hardware exception to inject; `error_code` must be `Some` exactly when
    /// [`has_error_code`] (and not in real mode), or VM entry fails.
    #[must_use]
    pub const fn hardware_exception(vector: u8, error_code: Option<u32>) -> Injection {
        Injection { info: Self::new(vector, InterruptionType::HardwareException, error_code.is_some()), error_code }
    }

    /// An external interrupt to inject.
    #[must_use]
    pub const fn external_interrupt(vector: u8) -> Injection {
        Injection { info: Self::new(vector, InterruptionType::ExternalInterrupt, false), error_code: None }
    }

    /// A software exception (#BP from INT3, #OF from INTO); needs the instruction length.
    #[must_use]
    pub const fn software_exception(vector: u8) -> Injection {
        Injection { info: Self::new(vector, InterruptionType::SoftwareException, false), error_code: None }
    }

    /// A software interrupt (INT n); needs the instruction length.
    #[must_use]
    pub const fn software_interrupt(vector: u8) -> Injection {
        Injection { info: Self::new(vector, InterruptionType::SoftwareInterrupt, false), error_code: None }
    }

    /// An NMI (vector 2).
    #[must_use]
    pub const fn nmi() -> Injection {
        Injection { info: Self::new(vector::NMI, InterruptionType::Nmi, false), error_code: None }
    }
}

/// An event to inject on the next VM entry (SDM 27.6): write `info` to the VM-entry
/// interruption-information field, `error_code` (when `Some`) to the VM-entry exception
/// error code, and the instruction length when [`Injection::needs_instruction_length`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Injection {
    pub info: InterruptionInfo,
    pub error_code: Option<u32>,
}

impl Injection {
    #[must_use]
    pub const fn needs_instruction_length(&self) -> bool {
        self.info.needs_instruction_length()
    }
}

/// An event interrupted by a VM exit that must be delivered again, from [`reinject`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reinjection {
    /// The VM-entry interruption information to write.
    pub info: InterruptionInfo,
    /// Copy the IDT-vectoring error code to the VM-entry exception error code.
    pub copy_error_code: bool,
    /// Copy the VM-exit instruction length to the VM-entry instruction length
    /// (software interrupts and exceptions).
    pub needs_instruction_length: bool,
}

/// What to re-inject after a VM exit that interrupted the delivery of an event (SDM
/// 28.2.4 "Information for VM exits during event delivery", 27.6 "Event injection"):
/// when the IDT-vectoring information is valid, the same event (type, vector, error-code
/// flag) is injected on the next VM entry. The NMI-unblocking and reserved bits are
/// dropped (they must be 0 in the VM-entry field). `None` when nothing was being
/// delivered.
#[must_use]
pub const fn reinject(idt_vectoring: InterruptionInfo) -> Option<Reinjection> {
    if !idt_vectoring.valid() {
        return None;
    }
    let info =
        InterruptionInfo(idt_vectoring.0 & (InterruptionInfo::VALID | InterruptionInfo::ERROR_CODE_VALID | 0x7ff));
    Some(Reinjection {
        info,
        copy_error_code: info.error_code_valid(),
        needs_instruction_length: info.needs_instruction_length(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn exit_reasons_round_trip_and_names_are_unique() {
        let mut names = HashSet::new();
        for &r in ExitReason::ALL {
            assert_eq!(ExitReason::from_basic(r as u16), Some(r));
            assert!(names.insert(r.name()), "duplicate {}", r.name());
            assert!(r.name().bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
        }
        // 0..=79 minus the unused 35, 38, 42 and 71.
        assert_eq!(ExitReason::ALL.len(), 76);
        for unused in [35, 38, 42, 71, 80, 0xffff] {
            assert_eq!(ExitReason::from_basic(unused), None);
        }
        assert_eq!(ExitReason::from_basic(75), Some(ExitReason::InstructionTimeout));
        assert_eq!(ExitReason::ALL.iter().filter(|r| r.is_vmx_instruction()).count(), 11);
        assert!(!ExitReason::Vmcall.is_vmx_instruction());
    }

    #[test]
    fn known_exit_numbers() {
        use ExitReason::*;
        for (n, r, name) in [
            (0, ExceptionOrNmi, "exception_or_nmi"),
            (10, Cpuid, "cpuid"),
            (12, Hlt, "hlt"),
            (18, Vmcall, "vmcall"),
            (28, CrAccess, "cr_access"),
            (30, IoInstruction, "io_instruction"),
            (31, Rdmsr, "rdmsr"),
            (32, Wrmsr, "wrmsr"),
            (33, EntryFailureGuestState, "entry_failure_guest_state"),
            (48, EptViolation, "ept_violation"),
            (49, EptMisconfiguration, "ept_misconfiguration"),
            (52, PreemptionTimer, "preemption_timer"),
            (55, Xsetbv, "xsetbv"),
            (64, Xrstors, "xrstors"),
        ] {
            assert_eq!(ExitReason::from_basic(n), Some(r));
            assert_eq!(r.name(), name);
        }
    }

    #[test]
    fn exit_reason_field() {
        let f = ExitReasonField(0x8000_0021);
        assert!(f.entry_failure());
        assert_eq!(f.reason(), Some(ExitReason::EntryFailureGuestState));
        let f = ExitReasonField((1 << 27) | (1 << 28) | 12);
        assert!(f.enclave() && f.pending_mtf() && !f.from_vmx_root() && !f.entry_failure());
        assert_eq!(f.reason(), Some(ExitReason::Hlt));
        assert!(ExitReasonField(1 << 29).from_vmx_root());
    }

    #[test]
    fn gpr_numbering() {
        for i in 0..16u8 {
            assert_eq!(Gpr::from_index(i).index(), i);
        }
        assert_eq!(Gpr::from_index(4), Gpr::Rsp);
        assert_eq!(Gpr::from_index(0x13), Gpr::Rbx);
    }

    #[test]
    fn cr_access() {
        // mov cr3, rbx: CR 3, type 0, GPR 3.
        let q = CrAccess::decode(0x303);
        assert_eq!((q.cr, q.access, q.gpr), (3, CrAccessType::MovToCr, Gpr::Rbx));
        // mov r12, cr8.
        let q = CrAccess::decode(0xc18);
        assert_eq!((q.cr, q.access, q.gpr), (8, CrAccessType::MovFromCr, Gpr::R12));
        assert_eq!(CrAccess::decode(0x20).access, CrAccessType::Clts);
        // lmsw [mem] with source 0x0001.
        let q = CrAccess::decode(0x0001_0070);
        assert_eq!((q.access, q.lmsw_operand, q.lmsw_source), (CrAccessType::Lmsw, LmswOperand::Memory, 1));
        assert_eq!(CrAccess::decode(0xffff_0030).lmsw_operand, LmswOperand::Register);
        assert_eq!(CrAccess::decode(0xffff_0030).lmsw_source, 0xffff);
    }

    #[test]
    fn mov_dr() {
        let q = MovDr::decode(0x0717);
        assert_eq!((q.dr, q.direction, q.gpr), (7, DrDirection::FromDr, Gpr::Rdi));
        let q = MovDr::decode(0x0f00);
        assert_eq!((q.dr, q.direction, q.gpr), (0, DrDirection::ToDr, Gpr::R15));
    }

    #[test]
    fn io_instruction() {
        // out dx, al with DX = 0x3f8.
        let q = IoInstruction::decode(0x03f8_0000).unwrap();
        assert_eq!(
            (q.size(), q.is_in(), q.string(), q.rep(), q.immediate(), q.port()),
            (1, false, false, false, false, 0x3f8)
        );
        // in eax, 0x71.
        let q = IoInstruction::decode(0x0071_004b).unwrap();
        assert_eq!((q.size(), q.is_in(), q.immediate(), q.port()), (4, true, true, 0x71));
        // rep insw from port 0x1f0.
        let q = IoInstruction::decode(0x01f0_0039).unwrap();
        assert_eq!((q.size(), q.is_in(), q.string(), q.rep()), (2, true, true, true));
        assert_eq!(IoInstruction::decode(2), None);
        for (qualification, mask) in [(0, 0xFF), (1, 0xFFFF), (3, 0xFFFF_FFFF)] {
            assert_eq!(IoInstruction::decode(qualification).unwrap().value_mask(), mask);
        }
    }

    #[test]
    fn ept_violation() {
        // Write to a read-only page through a valid linear address.
        let q = EptViolation::decode(0x18a);
        assert!(q.write && q.readable && !q.writable && !q.read && !q.fetch);
        assert!(q.linear_address_valid && q.translated_access && !q.nmi_unblocking);
        // Fetch from a non-present page during a paging-structure walk, NMI unblocking.
        let q = EptViolation::decode(0x1084);
        assert!(q.fetch && !q.readable && !q.executable && q.linear_address_valid);
        assert!(!q.translated_access && q.nmi_unblocking);
        assert!(EptViolation::decode(0x60).user_executable);
    }

    #[test]
    fn interruption_info_encoding() {
        let gp = InterruptionInfo::hardware_exception(vector::GP, Some(0x10));
        assert_eq!(gp.info.0, 0x8000_0b0d);
        assert_eq!(gp.error_code, Some(0x10));
        assert!(!gp.needs_instruction_length());
        assert_eq!(InterruptionInfo::hardware_exception(vector::UD, None).info.0, 0x8000_0306);
        assert_eq!(InterruptionInfo::external_interrupt(0x20).info.0, 0x8000_0020);
        let bp = InterruptionInfo::software_exception(vector::BP);
        assert_eq!(bp.info.0, 0x8000_0603);
        assert!(bp.needs_instruction_length());
        assert_eq!(InterruptionInfo::software_interrupt(0x80).info.0, 0x8000_0480);
        assert_eq!(InterruptionInfo::nmi().info.0, 0x8000_0202);
    }

    #[test]
    fn interruption_info_decoding_round_trips() {
        let kinds = [
            InterruptionType::ExternalInterrupt,
            InterruptionType::Nmi,
            InterruptionType::HardwareException,
            InterruptionType::SoftwareInterrupt,
            InterruptionType::PrivilegedSoftwareException,
            InterruptionType::SoftwareException,
            InterruptionType::Other,
        ];
        for kind in kinds {
            for vector in [0u8, 2, 14, 0x80, 0xff] {
                for ec in [false, true] {
                    let i = InterruptionInfo::new(vector, kind, ec);
                    assert!(i.valid());
                    assert_eq!((i.vector(), i.kind(), i.error_code_valid()), (vector, Some(kind), ec));
                    assert_eq!(i.needs_instruction_length(), kind.needs_instruction_length());
                }
            }
        }
        assert_eq!(InterruptionInfo(0x100).kind(), None);
        // A #PF exit with NMI unblocking.
        let i = InterruptionInfo(0x8000_1b0e);
        assert!(i.nmi_unblocking() && i.error_code_valid());
        assert_eq!(i.kind(), Some(InterruptionType::HardwareException));
    }

    #[test]
    fn error_code_vectors() {
        let with: Vec<u8> = (0..=255u8).filter(|&v| has_error_code(v)).collect();
        assert_eq!(with, [8, 10, 11, 12, 13, 14, 17, 21]);
    }

    #[test]
    fn reinjection() {
        assert_eq!(reinject(InterruptionInfo(0x0000_0b0e)), None);
        // #PF with error code and the (exit-only) NMI-unblocking bit and junk in 30:13.
        let r = reinject(InterruptionInfo(0xc000_1b0e)).unwrap();
        assert_eq!(r.info.0, 0x8000_0b0e);
        assert!(r.copy_error_code && !r.needs_instruction_length);
        // INT 0x80 interrupted by an EPT violation on the IDT: needs the length.
        let r = reinject(InterruptionInfo(0x8000_0480)).unwrap();
        assert_eq!(r.info.0, 0x8000_0480);
        assert!(!r.copy_error_code && r.needs_instruction_length);
        // External interrupt and NMI.
        assert!(!reinject(InterruptionInfo(0x8000_0030)).unwrap().needs_instruction_length);
        assert_eq!(reinject(InterruptionInfo::nmi().info).unwrap().info, InterruptionInfo::nmi().info);
    }
}
