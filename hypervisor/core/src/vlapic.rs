//! The state machine of one virtual local APIC, in xAPIC and x2APIC mode (Intel SDM Vol. 3,
//! chapter 11, "Advanced Programmable Interrupt Controller (APIC)").
//!
//! Everything is fixed-size plain data: no allocation, no formatting, no hardware access. The
//! kernel forwards guest accesses here (MMIO offsets for the xAPIC, MSRs 0x800-0x8FF for the
//! x2APIC, IA32_APIC_BASE, IA32_TSC_DEADLINE), routes the [`ApicEffect`]s that leave the APIC
//! (IPIs, EOI broadcasts to the I/O APIC), asks [`VirtualLapic::highest_pending`] what to inject
//! and arms a real timer for [`VirtualLapic::next_deadline`].
//!
//! # Conventions
//! * Time is the guest TSC (`now` arguments); the TSC frequency is given at construction. The
//!   APIC timer counts at [`VIRTUAL_BUS_HZ`] divided by the divide configuration (SDM 11.5.4).
//! * Illegal accesses in **x2APIC** mode (reserved MSR, write to a read-only register, read of a
//!   write-only register, non-zero reserved bits in EOI/ESR/SELF IPI/bits 63:32) return
//!   [`ApicFault::GeneralProtection`]: inject #GP (SDM 11.12.1.2, 11.12.1.3).
//! * Illegal accesses in **xAPIC** mode (reserved offset, read of the write-only EOI register,
//!   unaligned offset, access while the APIC is not in xAPIC mode) return
//!   [`ApicFault::Ignored`]: the caller reads 0 / discards the write. A reserved offset also logs
//!   "illegal register address" (ESR bit 7, SDM 11.5.3). Writes to existing read-only xAPIC
//!   registers are silently dropped and return `Ok(ApicEffect::None)`.
//! * After any write the caller should re-evaluate [`VirtualLapic::highest_pending`] (TPR, EOI,
//!   SVR change deliverability) and, on [`ApicEffect::TimerChanged`], [`VirtualLapic::next_deadline`].

use crate::apic::{DeliveryMode, Destination};

/// Frequency of the virtual APIC bus clock that drives the APIC timer before division
/// (SDM 11.5.4). 100 MHz, as on recent Intel cores (CPUID leaf 0x15/0x16 should report it).
pub const VIRTUAL_BUS_HZ: u64 = 100_000_000;

/// Local APIC version register (SDM 11.4.8, figure 11-7): version 0x14 (integrated APIC),
/// max LVT entry 5 (six LVT entries), bit 24 (EOI-broadcast suppression) clear.
pub const APIC_VERSION: u32 = 0x0005_0014;

/// Architectural default APIC base (SDM 11.4.4).
pub const DEFAULT_APIC_BASE: u64 = 0xFEE0_0000;

/// IA32_APIC_BASE bit 8: processor is the BSP (read-only) (SDM 11.4.4, figure 11-5).
pub const APIC_BASE_BSP: u64 = 1 << 8;
/// IA32_APIC_BASE bit 10: x2APIC enable (EXTD) (SDM 11.12.1, figure 11-26).
pub const APIC_BASE_EXTD: u64 = 1 << 10;
/// IA32_APIC_BASE bit 11: APIC global enable (EN) (SDM 11.4.4).
pub const APIC_BASE_EN: u64 = 1 << 11;

/// First x2APIC MSR; register at xAPIC offset `o` is MSR `0x800 + o / 16` (SDM 11.12.1.2).
pub const X2APIC_MSR_BASE: u32 = 0x800;
/// Last MSR of the x2APIC range.
pub const X2APIC_MSR_LAST: u32 = 0x8FF;

/// Register offsets in the xAPIC page (SDM 11.4.1, table 11-1; x2APIC MSRs in table 11-6).
pub mod reg {
    pub const ID: u32 = 0x020;
    pub const VERSION: u32 = 0x030;
    pub const TPR: u32 = 0x080;
    pub const APR: u32 = 0x090;
    pub const PPR: u32 = 0x0A0;
    pub const EOI: u32 = 0x0B0;
    pub const RRD: u32 = 0x0C0;
    pub const LDR: u32 = 0x0D0;
    pub const DFR: u32 = 0x0E0;
    pub const SVR: u32 = 0x0F0;
    pub const ISR0: u32 = 0x100;
    pub const TMR0: u32 = 0x180;
    pub const IRR0: u32 = 0x200;
    pub const ESR: u32 = 0x280;
    pub const LVT_CMCI: u32 = 0x2F0;
    pub const ICR_LOW: u32 = 0x300;
    pub const ICR_HIGH: u32 = 0x310;
    pub const LVT_TIMER: u32 = 0x320;
    pub const LVT_THERMAL: u32 = 0x330;
    pub const LVT_PERF: u32 = 0x340;
    pub const LVT_LINT0: u32 = 0x350;
    pub const LVT_LINT1: u32 = 0x360;
    pub const LVT_ERROR: u32 = 0x370;
    pub const TIMER_INITIAL: u32 = 0x380;
    pub const TIMER_CURRENT: u32 = 0x390;
    pub const TIMER_DIVIDE: u32 = 0x3E0;
    /// x2APIC only (MSR 0x83F, SDM 11.12.11).
    pub const SELF_IPI: u32 = 0x3F0;
}

/// ESR bits (SDM 11.5.3, figure 11-9).
pub mod esr {
    pub const SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
    pub const RECEIVED_ILLEGAL_VECTOR: u32 = 1 << 6;
    pub const ILLEGAL_REGISTER_ADDRESS: u32 = 1 << 7;
}

/// LVT mask bit 16 (SDM 11.5.1, figure 11-8).
pub const LVT_MASKED: u32 = 1 << 16;
/// SVR bit 8: APIC software enable (SDM 11.9, figure 11-23).
pub const SVR_APIC_ENABLED: u32 = 1 << 8;
/// LVT delivery mode, bits 10:8 (SDM 11.5.1, figure 11-8).
pub const LVT_DELIVERY_MODE: u32 = 0b111 << 8;
/// LVT delivery mode ExtINT (111b): the processor answers the interrupt with an INTA
/// cycle to the external controller (the 8259), which supplies the vector (SDM 11.5.1).
pub const LVT_DELIVERY_EXTINT: u32 = 0b111 << 8;

/// Writable bits of the LVT entries (SDM 11.5.1, figure 11-8); delivery status (bit 12) and
/// remote IRR (bit 14) are read-only and always read 0 here.
const LVT_TIMER_BITS: u32 = 0x0007_00FF; // vector, mask, timer mode 18:17
const LVT_DM_BITS: u32 = 0x0001_07FF; // vector, delivery mode, mask (CMCI, thermal, perf)
const LVT_LINT_BITS: u32 = 0x0001_A7FF; // + pin polarity 13, trigger mode 15
const LVT_ERROR_BITS: u32 = 0x0001_00FF; // vector, mask
/// SVR: vector 7:0, software enable 8, focus checking 9; bit 12 (EOI-broadcast suppression)
/// is reserved because [`APIC_VERSION`] bit 24 is clear (SDM 11.9).
const SVR_BITS: u32 = 0x3FF;
/// ICR low writable bits: vector, delivery mode, destination mode, level, trigger mode,
/// shorthand; delivery status (bit 12) reads 0 (SDM 11.6.1, figure 11-12).
const ICR_LOW_BITS: u32 = 0x000C_CFFF;
/// Divide configuration register bits 0, 1, 3 (SDM 11.5.4, figure 11-10).
const DIVIDE_BITS: u32 = 0xB;

/// Which LVT entry (SDM 11.5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lvt {
    Cmci = 0,
    Timer = 1,
    Thermal = 2,
    Perf = 3,
    Lint0 = 4,
    Lint1 = 5,
    Error = 6,
}

impl Lvt {
    fn from_offset(offset: u32) -> Option<Self> {
        Some(match offset {
            reg::LVT_CMCI => Self::Cmci,
            reg::LVT_TIMER => Self::Timer,
            reg::LVT_THERMAL => Self::Thermal,
            reg::LVT_PERF => Self::Perf,
            reg::LVT_LINT0 => Self::Lint0,
            reg::LVT_LINT1 => Self::Lint1,
            reg::LVT_ERROR => Self::Error,
            _ => return None,
        })
    }

    fn writable_bits(self) -> u32 {
        match self {
            Self::Timer => LVT_TIMER_BITS,
            Self::Cmci | Self::Thermal | Self::Perf => LVT_DM_BITS,
            Self::Lint0 | Self::Lint1 => LVT_LINT_BITS,
            Self::Error => LVT_ERROR_BITS,
        }
    }
}

/// Operating mode selected by IA32_APIC_BASE EN/EXTD (SDM 11.12.5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApicMode {
    Disabled,
    XApic,
    X2Apic,
}

/// Why an access did not complete normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApicFault {
    /// Inject #GP(0) into the guest (x2APIC MSR rules, IA32_APIC_BASE rules).
    GeneralProtection,
    /// xAPIC illegal access: reads return 0, writes are dropped.
    Ignored,
}

/// ICR delivery mode, bits 10:8 (SDM 11.6.1). Superset of [`crate::apic::DeliveryMode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpiDeliveryMode {
    Fixed,
    LowestPriority,
    Smi,
    Nmi,
    Init,
    StartUp,
}

impl IpiDeliveryMode {
    fn from_bits(bits: u32) -> Option<Self> {
        Some(match bits & 7 {
            0b000 => Self::Fixed,
            0b001 => Self::LowestPriority,
            0b010 => Self::Smi,
            0b100 => Self::Nmi,
            0b101 => Self::Init,
            0b110 => Self::StartUp,
            _ => return None, // 011 and 111 are reserved
        })
    }

    /// The [`crate::apic`] encoding, for the modes it supports.
    #[must_use]
    pub fn to_apic(self) -> Option<DeliveryMode> {
        match self {
            Self::Fixed => Some(DeliveryMode::Fixed),
            Self::Nmi => Some(DeliveryMode::Nmi),
            Self::Init => Some(DeliveryMode::Init),
            Self::StartUp => Some(DeliveryMode::StartUp),
            Self::LowestPriority | Self::Smi => None,
        }
    }
}

impl From<DeliveryMode> for IpiDeliveryMode {
    fn from(mode: DeliveryMode) -> Self {
        match mode {
            DeliveryMode::Fixed => Self::Fixed,
            DeliveryMode::Nmi => Self::Nmi,
            DeliveryMode::Init => Self::Init,
            DeliveryMode::StartUp => Self::StartUp,
        }
    }
}

/// Where an IPI goes: ICR destination mode (bit 11), destination field and shorthand
/// (bits 19:18) (SDM 11.6.1, 11.6.2). Superset of [`crate::apic::Destination`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpiDestination {
    /// Physical APIC ID (0xFF in xAPIC / 0xFFFF_FFFF in x2APIC is broadcast).
    Physical(u32),
    /// Message destination address, matched with [`VirtualLapic::matches_logical`].
    Logical(u32),
    SelfOnly,
    AllIncludingSelf,
    AllExcludingSelf,
}

impl From<Destination> for IpiDestination {
    fn from(dest: Destination) -> Self {
        match dest {
            Destination::Physical(id) => Self::Physical(id),
            Destination::SelfOnly => Self::SelfOnly,
            Destination::AllIncludingSelf => Self::AllIncludingSelf,
            Destination::AllExcludingSelf => Self::AllExcludingSelf,
        }
    }
}

/// ICR bit 15 (SDM 11.6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerMode {
    Edge,
    Level,
}

/// What a register write asks the rest of the machine to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApicEffect {
    None,
    /// An EOI retired `vector`; if `level`, broadcast an EOI to the I/O APICs (SDM 11.8.5).
    Eoi {
        vector: u8,
        level: bool,
    },
    /// Send an IPI (SDM 11.6.1). `level` is ICR bit 14 (assert), `trigger` ICR bit 15. The
    /// `vector` is meaningful for Fixed, LowestPriority and StartUp.
    SendIpi {
        mode: IpiDeliveryMode,
        vector: u8,
        dest: IpiDestination,
        level: bool,
        trigger: TriggerMode,
    },
    /// A timer register changed: re-read [`VirtualLapic::next_deadline`].
    TimerChanged,
}

/// Result of [`VirtualLapic::accept`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acceptance {
    /// The IRR bit was clear and is now set.
    Accepted,
    /// The IRR bit was already set: the interrupts collapse into one (SDM 11.8.4).
    Coalesced,
    /// Vector 0-15: dropped, ESR "received illegal vector" logged (SDM 11.5.3).
    IllegalVector,
    /// APIC globally or software disabled: fixed interrupts are dropped (SDM 11.4.7.2).
    Disabled,
}

/// LVT timer mode, bits 18:17 (SDM 11.5.4, figure 11-8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerMode {
    OneShot,
    Periodic,
    TscDeadline,
    /// 11b: reserved; the timer does not run.
    Reserved,
}

/// Result of [`VirtualLapic::on_timer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TimerFire {
    /// Number of timer expirations that happened since the last processing (0: nothing due).
    pub expirations: u64,
    /// The vector set in the IRR (one interrupt, however many expirations), if the LVT timer
    /// entry was unmasked.
    pub delivered: Option<u8>,
}

impl TimerFire {
    /// Whether the timer expired at least once.
    #[must_use]
    pub fn fired(&self) -> bool {
        self.expirations > 0
    }

    /// Expirations merged into the single delivered interrupt.
    #[must_use]
    pub fn coalesced(&self) -> u64 {
        self.expirations.saturating_sub(1)
    }
}

/// Change made by [`VirtualLapic::set_apic_base`]: remap the MMIO page / MSR intercepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApicBaseChange {
    pub old_mode: ApicMode,
    pub new_mode: ApicMode,
    pub old_base: u64,
    pub new_base: u64,
}

impl ApicBaseChange {
    #[must_use]
    pub fn mode_changed(&self) -> bool {
        self.old_mode != self.new_mode
    }

    #[must_use]
    pub fn base_moved(&self) -> bool {
        self.old_base != self.new_base
    }
}

/// One-shot / periodic count-down state. Expiration `k` (k >= 1) happens after
/// `(start_count + (k - 1) * initial) * divide` bus clocks from `start_tsc`; deadlines are
/// computed from this anchor, so periodic reloads never drift (SDM 11.5.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct CountTimer {
    armed: bool,
    start_tsc: u64,
    start_count: u32,
    /// Expirations already processed since `start_tsc`.
    done: u64,
}

/// Construction parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LapicConfig {
    /// Initial (x2)APIC ID; its low 8 bits are the xAPIC ID.
    pub apic_id: u32,
    pub is_bsp: bool,
    /// Guest TSC frequency; must be non-zero (1 is used otherwise).
    pub tsc_hz: u64,
    /// MAXPHYADDR, bounding the APIC base address (SDM 11.4.4).
    pub phys_addr_bits: u8,
}

/// One virtual local APIC.
#[derive(Debug, Clone)]
pub struct VirtualLapic {
    mode: ApicMode,
    apic_base: u64,
    initial_id: u32,
    tsc_hz: u64,
    phys_addr_bits: u8,
    xapic_id: u8,
    tpr: u32,
    ldr: u32,
    dfr: u32,
    svr: u32,
    isr: [u32; 8],
    tmr: [u32; 8],
    irr: [u32; 8],
    /// Value read from the ESR (latched by the last ESR write).
    esr: u32,
    /// Errors detected since the last ESR write.
    esr_pending: u32,
    icr_low: u32,
    icr_high: u32,
    lvt: [u32; 7],
    timer_initial: u32,
    timer_divide: u32,
    timer: CountTimer,
    tsc_deadline: u64,
}

/// Whether `vector`'s bit is set in a 256-bit register (IRR, ISR, TMR; SDM 11.8.4).
#[must_use]
pub fn bit_test(bits: &[u32; 8], vector: u8) -> bool {
    bits[usize::from(vector >> 5)] & (1 << (vector & 31)) != 0
}

fn bit_set(bits: &mut [u32; 8], vector: u8) {
    bits[usize::from(vector >> 5)] |= 1 << (vector & 31);
}

fn bit_clear(bits: &mut [u32; 8], vector: u8) {
    bits[usize::from(vector >> 5)] &= !(1 << (vector & 31));
}

/// The highest vector set in a 256-bit register, if any.
#[must_use]
pub fn highest_bit(bits: &[u32; 8]) -> Option<u8> {
    (0..8usize).rev().find(|&i| bits[i] != 0).map(|i| (i as u8) * 32 + (31 - bits[i].leading_zeros()) as u8)
}

/// Processor priority from a task priority and the highest in-service vector (0 if
/// none; SDM 11.8.3.1, and 30.1.3 for the virtual PPR): TPR if TPR[7:4] >= ISRV[7:4],
/// else ISRV[7:4] with bits 3:0 zero.
#[must_use]
pub fn processor_priority(tpr: u8, isrv: u8) -> u8 {
    if tpr >> 4 >= isrv >> 4 {
        tpr
    } else {
        isrv & 0xF0
    }
}

/// Divide value of a divide configuration register value (SDM 11.5.4, figure 11-10):
/// bits 3,1,0 = 000→2, 001→4, 010→8, 011→16, 100→32, 101→64, 110→128, 111→1.
#[must_use]
pub fn divide_value(dcr: u32) -> u32 {
    let code = (dcr & 3) | ((dcr >> 1) & 4);
    if code == 7 {
        1
    } else {
        2 << code
    }
}

/// Logical x2APIC ID derived from the x2APIC ID (SDM 11.12.10.2): cluster in bits 31:16,
/// one-hot position `id & 0xF` in bits 15:0.
#[must_use]
pub fn x2apic_ldr(id: u32) -> u32 {
    ((id >> 4) << 16) | (1 << (id & 0xF))
}

impl VirtualLapic {
    /// A local APIC in its power-up state (SDM 11.4.7.1): xAPIC mode, base 0xFEE00000.
    #[must_use]
    pub fn new(config: LapicConfig) -> Self {
        let mut apic_base = DEFAULT_APIC_BASE | APIC_BASE_EN;
        if config.is_bsp {
            apic_base |= APIC_BASE_BSP;
        }
        let mut lapic = Self {
            mode: ApicMode::XApic,
            apic_base,
            initial_id: config.apic_id,
            tsc_hz: config.tsc_hz.max(1),
            phys_addr_bits: config.phys_addr_bits.clamp(32, 52),
            xapic_id: config.apic_id as u8,
            tpr: 0,
            ldr: 0,
            dfr: u32::MAX,
            svr: 0xFF,
            isr: [0; 8],
            tmr: [0; 8],
            irr: [0; 8],
            esr: 0,
            esr_pending: 0,
            icr_low: 0,
            icr_high: 0,
            lvt: [LVT_MASKED; 7],
            timer_initial: 0,
            timer_divide: 0,
            timer: CountTimer::default(),
            tsc_deadline: 0,
        };
        lapic.reset_registers();
        lapic
    }

    /// Power-up / INIT values of everything but the ID and IA32_APIC_BASE (SDM 11.4.7.1,
    /// 11.4.7.3, 11.12.5.1).
    fn reset_registers(&mut self) {
        self.tpr = 0;
        self.ldr = if self.mode == ApicMode::X2Apic { x2apic_ldr(self.initial_id) } else { 0 };
        self.dfr = u32::MAX;
        self.svr = 0xFF;
        self.isr = [0; 8];
        self.tmr = [0; 8];
        self.irr = [0; 8];
        self.esr = 0;
        self.esr_pending = 0;
        self.icr_low = 0;
        self.icr_high = 0;
        self.lvt = [LVT_MASKED; 7];
        self.timer_initial = 0;
        self.timer_divide = 0;
        self.timer = CountTimer::default();
        self.tsc_deadline = 0;
    }

    /// INIT: all registers but the APIC ID and IA32_APIC_BASE are reset; the mode is kept
    /// (SDM 11.4.7.3, 11.12.5.1). No-op while disabled.
    pub fn init_reset(&mut self) {
        if self.mode != ApicMode::Disabled {
            self.reset_registers();
        }
    }

    #[must_use]
    pub fn mode(&self) -> ApicMode {
        self.mode
    }

    /// The value RDMSR(IA32_APIC_BASE) returns.
    #[must_use]
    pub fn apic_base(&self) -> u64 {
        self.apic_base
    }

    /// Physical address of the xAPIC register page.
    #[must_use]
    pub fn base_address(&self) -> u64 {
        self.apic_base & !0xFFF
    }

    /// The ID this APIC answers to in the current mode: the 32-bit x2APIC ID, or the
    /// (writable) 8-bit xAPIC ID (SDM 11.4.6, 11.12.8).
    #[must_use]
    pub fn id(&self) -> u32 {
        match self.mode {
            ApicMode::X2Apic => self.initial_id,
            _ => u32::from(self.xapic_id),
        }
    }

    /// WRMSR(IA32_APIC_BASE) (SDM 11.4.4, 11.12.5.1). Legal: disabled → xAPIC,
    /// xAPIC → x2APIC, xAPIC/x2APIC → disabled, and staying in the same mode. #GP: reserved
    /// bits, EN=0 with EXTD=1, x2APIC → xAPIC, disabled → x2APIC. The BSP flag is read-only
    /// (written value ignored). Entering the disabled state resets all registers but the ID.
    pub fn set_apic_base(&mut self, value: u64) -> Result<ApicBaseChange, ApicFault> {
        let base_bits = ((1u64 << self.phys_addr_bits) - 1) & !0xFFF;
        let reserved = !(APIC_BASE_BSP | APIC_BASE_EXTD | APIC_BASE_EN | base_bits);
        if value & reserved != 0 {
            return Err(ApicFault::GeneralProtection);
        }
        let new_mode = match (value & APIC_BASE_EN != 0, value & APIC_BASE_EXTD != 0) {
            (false, false) => ApicMode::Disabled,
            (true, false) => ApicMode::XApic,
            (true, true) => ApicMode::X2Apic,
            (false, true) => return Err(ApicFault::GeneralProtection),
        };
        let old_mode = self.mode;
        match (old_mode, new_mode) {
            (ApicMode::X2Apic, ApicMode::XApic) | (ApicMode::Disabled, ApicMode::X2Apic) => {
                return Err(ApicFault::GeneralProtection);
            }
            _ => {}
        }
        let old_base = self.base_address();
        self.apic_base = (value & !APIC_BASE_BSP) | (self.apic_base & APIC_BASE_BSP);
        self.mode = new_mode;
        match (old_mode, new_mode) {
            // State is not preserved across the disabled state (SDM 11.12.5.1); the xAPIC
            // ID comes back as the low byte of the initial ID.
            (_, ApicMode::Disabled) | (ApicMode::Disabled, _) if old_mode != new_mode => {
                self.xapic_id = self.initial_id as u8;
                self.reset_registers();
            }
            // xAPIC → x2APIC: the ID is the x2APIC ID, the LDR is derived; the rest is kept.
            (ApicMode::XApic, ApicMode::X2Apic) => {
                self.ldr = x2apic_ldr(self.initial_id);
                // Delivery to/acceptance from the ICR's 8-bit destination is meaningless now.
                self.icr_high = 0;
            }
            _ => {}
        }
        Ok(ApicBaseChange { old_mode, new_mode, old_base, new_base: self.base_address() })
    }

    fn software_enabled(&self) -> bool {
        self.svr & SVR_APIC_ENABLED != 0
    }

    /// APIC globally enabled (xAPIC or x2APIC) and software enabled (SVR bit 8, SDM 11.4.7.2).
    #[must_use]
    pub fn is_enabled(&self) -> bool {
        self.mode != ApicMode::Disabled && self.software_enabled()
    }

    /// Whether the INTR output of an 8259 wired to this LAPIC's LINT0 pin reaches the
    /// processor (the PC's virtual-wire wiring, MP specification 1.4 section 3.6.2.2):
    /// - the LAPIC is hardware-disabled (IA32_APIC_BASE.EN = 0): the processor is then
    ///   "functionally equivalent to an IA-32 processor without an on-chip APIC"
    ///   (SDM 11.4.3), so the pin is its INTR input;
    /// - the LAPIC is software-disabled (SVR bit 8 clear, its state from power-up and
    ///   INIT): passed through. A PC's firmware puts the boot processor in virtual-wire
    ///   mode before it boots anything, and guests here start without firmware, so the
    ///   reset state stands in for it (KVM gets the same effect from an ExtINT LVT LINT0
    ///   reset value on the boot vCPU). An operating system that sets the LAPIC up
    ///   programs LINT0 itself;
    /// - the LAPIC is enabled: LVT LINT0 must be unmasked with delivery mode ExtINT
    ///   (SDM 11.5.1). Fixed, NMI or other modes on LINT0 are not wired to the 8259.
    ///
    /// ExtINT is not subject to the task priority and is not recorded in IRR or ISR: the
    /// vector comes from the 8259's INTA cycle and the guest ends it at the 8259.
    #[must_use]
    pub fn passes_pic_intr(&self) -> bool {
        if !self.is_enabled() {
            return true;
        }
        let lint0 = self.lvt[Lvt::Lint0 as usize];
        lint0 & LVT_MASKED == 0 && lint0 & LVT_DELIVERY_MODE == LVT_DELIVERY_EXTINT
    }

    /// Spurious-interrupt vector, SVR bits 7:0 (SDM 11.9).
    #[must_use]
    pub fn spurious_vector(&self) -> u8 {
        self.svr as u8
    }

    #[must_use]
    pub fn tpr(&self) -> u8 {
        self.tpr as u8
    }

    /// Raw LVT entry (SDM 11.5.1).
    #[must_use]
    pub fn lvt(&self, which: Lvt) -> u32 {
        self.lvt[which as usize]
    }

    #[must_use]
    pub fn irr(&self) -> [u32; 8] {
        self.irr
    }

    #[must_use]
    pub fn isr(&self) -> [u32; 8] {
        self.isr
    }

    #[must_use]
    pub fn tmr(&self) -> [u32; 8] {
        self.tmr
    }

    /// Takes the pending interrupts out of the IRR (it is left empty), for the caller to
    /// deliver elsewhere: the virtual-APIC page under APIC virtualization (`crate::apicv`).
    pub fn take_irr(&mut self) -> [u32; 8] {
        core::mem::take(&mut self.irr)
    }

    /// Hands the interrupt-priority state over to APIC virtualization, which owns it from
    /// then on: returns IRR, ISR and TPR and clears them here (TMR stays: it tells which
    /// vectors need an EOI broadcast).
    pub fn hand_over_priority_state(&mut self) -> ([u32; 8], [u32; 8], u8) {
        let tpr = self.tpr as u8;
        self.tpr = 0;
        (core::mem::take(&mut self.irr), core::mem::take(&mut self.isr), tpr)
    }

    /// The registers a virtual-APIC page must show for reads the CPU completes itself in
    /// x2APIC mode (`crate::apicv::VIRTUALIZED_READS` minus the CPU-owned TPR, PPR, ISR,
    /// TMR and IRR), as (page offset, value). Reading them has no side effect.
    #[must_use]
    pub fn page_mirror(&self) -> [(usize, u32); 15] {
        let lvt = |l: Lvt| self.lvt[l as usize];
        [
            (reg::ID as usize, self.initial_id),
            (reg::VERSION as usize, APIC_VERSION),
            (reg::LDR as usize, self.ldr),
            (reg::SVR as usize, self.svr),
            (reg::ESR as usize, self.esr),
            // In x2APIC mode the ICR is one 64-bit register at 0x300 (SDM 30.5).
            (reg::ICR_LOW as usize, self.icr_low),
            (reg::ICR_LOW as usize + 4, self.icr_high),
            (reg::LVT_TIMER as usize, lvt(Lvt::Timer)),
            (reg::LVT_THERMAL as usize, lvt(Lvt::Thermal)),
            (reg::LVT_PERF as usize, lvt(Lvt::Perf)),
            (reg::LVT_LINT0 as usize, lvt(Lvt::Lint0)),
            (reg::LVT_LINT1 as usize, lvt(Lvt::Lint1)),
            (reg::LVT_ERROR as usize, lvt(Lvt::Error)),
            (reg::TIMER_INITIAL as usize, self.timer_initial),
            (reg::TIMER_DIVIDE as usize, self.timer_divide),
        ]
    }

    /// The divide configuration register (SDM 11.5.4).
    #[must_use]
    pub fn timer_divide(&self) -> u32 {
        self.timer_divide
    }

    /// Processor priority (SDM 11.8.3.1): if TPR[7:4] >= ISRV[7:4] then TPR, else
    /// ISRV[7:4] with bits 3:0 zero; ISRV is the highest in-service vector (0 if none).
    #[must_use]
    pub fn ppr(&self) -> u8 {
        processor_priority(self.tpr as u8, highest_bit(&self.isr).unwrap_or(0))
    }

    /// Highest IRR vector whose priority class exceeds the PPR's (SDM 11.8.3), if the APIC
    /// is enabled.
    #[must_use]
    pub fn highest_pending(&self) -> Option<u8> {
        if !self.is_enabled() {
            return None;
        }
        let vector = highest_bit(&self.irr)?;
        (vector >> 4 > self.ppr() >> 4).then_some(vector)
    }

    /// Delivery of `vector` to the processor: IRR bit → ISR bit (SDM 11.8.4). Returns false
    /// (and changes nothing) if the vector is not pending.
    pub fn acknowledge(&mut self, vector: u8) -> bool {
        if !bit_test(&self.irr, vector) {
            return false;
        }
        bit_clear(&mut self.irr, vector);
        bit_set(&mut self.isr, vector);
        true
    }

    /// [`Self::highest_pending`] followed by [`Self::acknowledge`].
    pub fn take_pending(&mut self) -> Option<u8> {
        let vector = self.highest_pending()?;
        self.acknowledge(vector);
        Some(vector)
    }

    /// A fixed / lowest-priority interrupt arrives (SDM 11.8.4): set the IRR bit and the TMR
    /// bit (level) or clear it (edge). Vectors 0-15 are illegal (SDM 11.5.3). Dropped while
    /// the APIC is globally or software disabled (SDM 11.4.7.2).
    pub fn accept(&mut self, vector: u8, level_triggered: bool) -> Acceptance {
        if self.mode == ApicMode::Disabled {
            return Acceptance::Disabled;
        }
        if vector < 16 {
            self.raise_error(esr::RECEIVED_ILLEGAL_VECTOR);
            return Acceptance::IllegalVector;
        }
        if !self.software_enabled() {
            return Acceptance::Disabled;
        }
        if level_triggered {
            bit_set(&mut self.tmr, vector);
        } else {
            bit_clear(&mut self.tmr, vector);
        }
        if bit_test(&self.irr, vector) {
            return Acceptance::Coalesced;
        }
        bit_set(&mut self.irr, vector);
        Acceptance::Accepted
    }

    /// Log an error and signal it through the LVT error entry (SDM 11.5.3). An illegal error
    /// vector only logs "received illegal vector" (no recursion).
    fn raise_error(&mut self, bits: u32) {
        self.esr_pending |= bits;
        let lvt = self.lvt[Lvt::Error as usize];
        if lvt & LVT_MASKED != 0 || !self.is_enabled() {
            return;
        }
        let vector = lvt as u8;
        if vector < 16 {
            self.esr_pending |= esr::RECEIVED_ILLEGAL_VECTOR;
        } else {
            bit_clear(&mut self.tmr, vector);
            bit_set(&mut self.irr, vector);
        }
    }

    /// EOI: retire the highest in-service vector (SDM 11.8.5).
    fn eoi(&mut self) -> ApicEffect {
        match highest_bit(&self.isr) {
            Some(vector) => {
                bit_clear(&mut self.isr, vector);
                ApicEffect::Eoi { vector, level: bit_test(&self.tmr, vector) }
            }
            None => ApicEffect::None,
        }
    }

    /// Does a logical-mode message destination address select this APIC (SDM 11.6.2.2,
    /// 11.12.10.2)? xAPIC flat model (DFR[31:28] = 1111b): MDA & LDR[31:24] != 0; xAPIC
    /// cluster model (0000b): MDA[7:4] == LDR[31:28] and MDA[3:0] & LDR[27:24] != 0; x2APIC:
    /// MDA[31:16] == LDR[31:16] and MDA[15:0] & LDR[15:0] != 0. 0xFF / 0xFFFF_FFFF broadcast.
    #[must_use]
    pub fn matches_logical(&self, mda: u32) -> bool {
        match self.mode {
            ApicMode::Disabled => false,
            ApicMode::X2Apic => mda == u32::MAX || (mda >> 16 == self.ldr >> 16 && mda & self.ldr & 0xFFFF != 0),
            ApicMode::XApic => {
                let mda = mda & 0xFF;
                let logical_id = self.ldr >> 24;
                if mda == 0xFF {
                    return true;
                }
                match self.dfr >> 28 {
                    0xF => mda & logical_id != 0,
                    0x0 => mda >> 4 == logical_id >> 4 && mda & logical_id & 0xF != 0,
                    _ => false, // reserved model
                }
            }
        }
    }

    /// Is this APIC a target of an IPI to `dest` (SDM 11.6.2)? `is_sender` tells whether it
    /// is the sending APIC (for the shorthands). Lowest-priority arbitration among the
    /// matching APICs is the caller's job (compare [`Self::ppr`]).
    #[must_use]
    pub fn is_target(&self, dest: IpiDestination, is_sender: bool) -> bool {
        if self.mode == ApicMode::Disabled {
            return false;
        }
        match dest {
            IpiDestination::Physical(id) => match self.mode {
                ApicMode::X2Apic => id == u32::MAX || id == self.initial_id,
                _ => id & 0xFF == 0xFF || id & 0xFF == u32::from(self.xapic_id),
            },
            IpiDestination::Logical(mda) => self.matches_logical(mda),
            IpiDestination::SelfOnly => is_sender,
            IpiDestination::AllIncludingSelf => true,
            IpiDestination::AllExcludingSelf => !is_sender,
        }
    }

    /// Decode an ICR write into an IPI (SDM 11.6.1). Reserved delivery modes send nothing;
    /// fixed / lowest-priority IPIs with vectors 0-15 log "send illegal vector" (SDM 11.5.3).
    fn send_ipi(&mut self, low: u32, dest_field: u32) -> ApicEffect {
        let Some(mode) = IpiDeliveryMode::from_bits(low >> 8) else {
            return ApicEffect::None;
        };
        let vector = low as u8;
        if matches!(mode, IpiDeliveryMode::Fixed | IpiDeliveryMode::LowestPriority) && vector < 16 {
            self.raise_error(esr::SEND_ILLEGAL_VECTOR);
            return ApicEffect::None;
        }
        let dest = match (low >> 18) & 3 {
            0 if low & (1 << 11) != 0 => IpiDestination::Logical(dest_field),
            0 => IpiDestination::Physical(dest_field),
            1 => IpiDestination::SelfOnly,
            2 => IpiDestination::AllIncludingSelf,
            _ => IpiDestination::AllExcludingSelf,
        };
        let trigger = if low & (1 << 15) != 0 { TriggerMode::Level } else { TriggerMode::Edge };
        ApicEffect::SendIpi { mode, vector, dest, level: low & (1 << 14) != 0, trigger }
    }

    /// WRMSR(0x830) in x2APIC mode: destination in bits 63:32 (SDM 11.12.9). Reserved bits
    /// are ignored.
    pub fn write_icr_x2apic(&mut self, value: u64) -> Result<ApicEffect, ApicFault> {
        if self.mode != ApicMode::X2Apic {
            return Err(ApicFault::GeneralProtection);
        }
        self.icr_low = value as u32 & ICR_LOW_BITS;
        self.icr_high = (value >> 32) as u32;
        Ok(self.send_ipi(self.icr_low, self.icr_high))
    }

    // ----- register access -------------------------------------------------------------------

    /// Read a register at xAPIC offset `offset` with the rules of the current mode (in x2APIC
    /// mode, the ICR at 0x300 returns its low half; use [`Self::read_msr`] for all 64 bits).
    pub fn read(&mut self, offset: u32, now: u64) -> Result<u32, ApicFault> {
        match self.mode {
            ApicMode::Disabled => Err(ApicFault::Ignored),
            ApicMode::XApic => self.read_mmio(offset, now),
            ApicMode::X2Apic => self.read_reg(offset, now).map(|v| v as u32),
        }
    }

    /// Write a register at xAPIC offset `offset` with the rules of the current mode (in x2APIC
    /// mode, writing 0x300 writes the whole ICR with destination 0; use [`Self::write_msr`]).
    pub fn write(&mut self, offset: u32, value: u32, now: u64) -> Result<ApicEffect, ApicFault> {
        match self.mode {
            ApicMode::Disabled => Err(ApicFault::Ignored),
            ApicMode::XApic => self.write_mmio(offset, value, now),
            ApicMode::X2Apic => self.write_reg(offset, u64::from(value), now),
        }
    }

    /// 32-bit MMIO read at `offset` in the APIC page (SDM 11.4.1). Only xAPIC mode decodes
    /// the page; unaligned or out-of-range offsets are [`ApicFault::Ignored`].
    pub fn read_mmio(&mut self, offset: u32, now: u64) -> Result<u32, ApicFault> {
        if self.mode != ApicMode::XApic || offset & 0xF != 0 || offset > 0xFF0 {
            return Err(ApicFault::Ignored);
        }
        self.read_reg(offset, now).map(|v| v as u32)
    }

    /// 32-bit MMIO write at `offset` in the APIC page (SDM 11.4.1).
    pub fn write_mmio(&mut self, offset: u32, value: u32, now: u64) -> Result<ApicEffect, ApicFault> {
        if self.mode != ApicMode::XApic || offset & 0xF != 0 || offset > 0xFF0 {
            return Err(ApicFault::Ignored);
        }
        self.write_reg(offset, u64::from(value), now)
    }

    /// RDMSR of an x2APIC MSR (SDM 11.12.1.2, table 11-6); #GP outside x2APIC mode.
    pub fn read_msr(&mut self, msr: u32, now: u64) -> Result<u64, ApicFault> {
        if self.mode != ApicMode::X2Apic || !(X2APIC_MSR_BASE..=X2APIC_MSR_LAST).contains(&msr) {
            return Err(ApicFault::GeneralProtection);
        }
        self.read_reg((msr - X2APIC_MSR_BASE) << 4, now)
    }

    /// WRMSR of an x2APIC MSR (SDM 11.12.1.2, table 11-6); #GP outside x2APIC mode.
    pub fn write_msr(&mut self, msr: u32, value: u64, now: u64) -> Result<ApicEffect, ApicFault> {
        if self.mode != ApicMode::X2Apic || !(X2APIC_MSR_BASE..=X2APIC_MSR_LAST).contains(&msr) {
            return Err(ApicFault::GeneralProtection);
        }
        self.write_reg((msr - X2APIC_MSR_BASE) << 4, value, now)
    }

    /// Outcome of an illegal access: #GP in x2APIC mode (SDM 11.12.1.2); in xAPIC mode the
    /// access is ignored and ESR "illegal register address" is logged (SDM 11.5.3).
    fn illegal(&mut self) -> ApicFault {
        if self.mode == ApicMode::X2Apic {
            ApicFault::GeneralProtection
        } else {
            self.raise_error(esr::ILLEGAL_REGISTER_ADDRESS);
            ApicFault::Ignored
        }
    }

    fn read_reg(&mut self, offset: u32, now: u64) -> Result<u64, ApicFault> {
        let x2 = self.mode == ApicMode::X2Apic;
        let value = match offset {
            reg::ID if x2 => self.initial_id,
            reg::ID => u32::from(self.xapic_id) << 24,
            reg::VERSION => APIC_VERSION,
            reg::TPR => self.tpr,
            // Arbitration priority and remote read: no x2APIC MSR (SDM table 11-6); not
            // implemented by current xAPICs, read 0.
            reg::APR | reg::RRD if x2 => return Err(self.illegal()),
            reg::APR | reg::RRD => 0,
            reg::PPR => u32::from(self.ppr()),
            reg::EOI => return Err(self.illegal()), // write-only
            reg::LDR => self.ldr,
            reg::DFR if x2 => return Err(self.illegal()), // no DFR in x2APIC (SDM 11.12.1.2)
            reg::DFR => self.dfr | 0x0FFF_FFFF,
            reg::SVR => self.svr,
            0x100..=0x170 => self.isr[((offset - reg::ISR0) >> 4) as usize],
            0x180..=0x1F0 => self.tmr[((offset - reg::TMR0) >> 4) as usize],
            0x200..=0x270 => self.irr[((offset - reg::IRR0) >> 4) as usize],
            reg::ESR => self.esr,
            reg::ICR_LOW if x2 => return Ok((u64::from(self.icr_high) << 32) | u64::from(self.icr_low)),
            reg::ICR_LOW => self.icr_low,
            reg::ICR_HIGH if x2 => return Err(self.illegal()), // MSR 0x831 does not exist
            reg::ICR_HIGH => self.icr_high,
            reg::TIMER_INITIAL => self.timer_initial,
            reg::TIMER_CURRENT => self.current_count(now),
            reg::TIMER_DIVIDE => self.timer_divide,
            _ => match Lvt::from_offset(offset) {
                Some(which) => self.lvt[which as usize],
                // Includes SELF IPI (write-only in x2APIC, absent in xAPIC).
                None => return Err(self.illegal()),
            },
        };
        Ok(u64::from(value))
    }

    fn write_reg(&mut self, offset: u32, value: u64, now: u64) -> Result<ApicEffect, ApicFault> {
        let x2 = self.mode == ApicMode::X2Apic;
        if x2 && offset != reg::ICR_LOW && value >> 32 != 0 {
            // Bits 63:32 of every x2APIC MSR but the ICR are reserved (SDM 11.12.1.2).
            return Err(ApicFault::GeneralProtection);
        }
        let v = value as u32;
        match offset {
            reg::ID if !x2 => self.xapic_id = (v >> 24) as u8, // SDM 11.4.6
            // Read-only registers: #GP in x2APIC (SDM 11.12.1.2), dropped in xAPIC.
            reg::ID
            | reg::VERSION
            | reg::APR
            | reg::PPR
            | reg::RRD
            | reg::LDR
            | reg::DFR
            | reg::TIMER_CURRENT
            | 0x100..=0x270
                if x2 =>
            {
                return Err(self.illegal());
            }
            reg::VERSION | reg::APR | reg::PPR | reg::RRD | reg::TIMER_CURRENT | 0x100..=0x270 => {}
            reg::TPR => self.tpr = v & 0xFF, // SDM 11.8.3.1
            reg::EOI if x2 && v != 0 => return Err(ApicFault::GeneralProtection), // SDM 11.12.1.2
            reg::EOI => return Ok(self.eoi()),
            reg::LDR => self.ldr = v & 0xFF00_0000, // SDM 11.6.2.2
            reg::DFR => self.dfr = (v & 0xF000_0000) | 0x0FFF_FFFF,
            reg::SVR => {
                self.advance_timer(now);
                self.svr = v & SVR_BITS;
                if !self.software_enabled() {
                    // Software disable masks every LVT entry (SDM 11.4.7.2).
                    for entry in &mut self.lvt {
                        *entry |= LVT_MASKED;
                    }
                }
                return Ok(ApicEffect::TimerChanged);
            }
            // x2APIC: only 0 may be written to the ESR (SDM 11.5.3).
            reg::ESR if x2 && v != 0 => return Err(ApicFault::GeneralProtection),
            reg::ESR => {
                self.esr = self.esr_pending;
                self.esr_pending = 0;
            }
            reg::ICR_LOW if x2 => return self.write_icr_x2apic(value),
            reg::ICR_LOW => {
                self.icr_low = v & ICR_LOW_BITS;
                return Ok(self.send_ipi(self.icr_low, self.icr_high >> 24));
            }
            reg::ICR_HIGH if !x2 => self.icr_high = v & 0xFF00_0000,
            reg::TIMER_INITIAL => {
                self.write_initial_count(v, now);
                return Ok(ApicEffect::TimerChanged);
            }
            reg::TIMER_DIVIDE => {
                self.advance_timer(now);
                let count = self.current_count(now);
                self.timer_divide = v & DIVIDE_BITS;
                self.rebase_timer(now, count);
                return Ok(ApicEffect::TimerChanged);
            }
            reg::SELF_IPI if x2 => {
                // Vector in bits 7:0, bits 31:8 reserved (SDM 11.12.11).
                if v & !0xFF != 0 {
                    return Err(ApicFault::GeneralProtection);
                }
                let low = v | (1 << 14) | (0b01 << 18); // fixed, edge, assert, self
                return Ok(self.send_ipi(low, 0));
            }
            _ => match Lvt::from_offset(offset) {
                Some(which) => return Ok(self.write_lvt(which, v, now)),
                None => return Err(self.illegal()),
            },
        }
        Ok(ApicEffect::None)
    }

    fn write_lvt(&mut self, which: Lvt, value: u32, now: u64) -> ApicEffect {
        let mut value = value & which.writable_bits();
        if !self.software_enabled() {
            value |= LVT_MASKED; // SDM 11.4.7.2: the mask cannot be cleared while disabled
        }
        if which != Lvt::Timer {
            self.lvt[which as usize] = value;
            return ApicEffect::None;
        }
        // Deliver what expired under the old entry, then continue from the current count.
        self.advance_timer(now);
        let old_mode = self.timer_mode();
        let count = self.current_count(now);
        self.lvt[Lvt::Timer as usize] = value;
        let new_mode = self.timer_mode();
        if (old_mode == TimerMode::TscDeadline) != (new_mode == TimerMode::TscDeadline) {
            // Switching between TSC-deadline and count-down modes disarms the timer
            // (SDM 11.5.4.1).
            self.timer_initial = 0;
            self.timer = CountTimer::default();
            self.tsc_deadline = 0;
        } else {
            self.rebase_timer(now, count);
        }
        ApicEffect::TimerChanged
    }

    // ----- timer -----------------------------------------------------------------------------

    /// LVT timer mode (SDM 11.5.4).
    #[must_use]
    pub fn timer_mode(&self) -> TimerMode {
        match (self.lvt[Lvt::Timer as usize] >> 17) & 3 {
            0 => TimerMode::OneShot,
            1 => TimerMode::Periodic,
            2 => TimerMode::TscDeadline,
            _ => TimerMode::Reserved,
        }
    }

    fn divide(&self) -> u32 {
        divide_value(self.timer_divide)
    }

    fn counting(&self) -> bool {
        self.timer.armed && matches!(self.timer_mode(), TimerMode::OneShot | TimerMode::Periodic)
    }

    /// Timer clocks (bus clocks / divide) elapsed since the anchor.
    fn elapsed_ticks(&self, now: u64) -> u128 {
        let tsc = u128::from(now.saturating_sub(self.timer.start_tsc));
        tsc * u128::from(VIRTUAL_BUS_HZ) / u128::from(self.tsc_hz) / u128::from(self.divide())
    }

    /// Expirations reached by `now` since the anchor.
    fn expirations_by(&self, now: u64) -> u64 {
        let ticks = self.elapsed_ticks(now);
        let first = u128::from(self.timer.start_count);
        if ticks < first {
            0
        } else if self.timer_mode() == TimerMode::Periodic {
            let more = (ticks - first) / u128::from(self.timer_initial.max(1));
            u64::try_from(more).unwrap_or(u64::MAX - 1) + 1
        } else {
            1
        }
    }

    /// TSC at which expiration `k` (>= 1) happens: the first TSC whose elapsed bus clocks
    /// reach `(start_count + (k - 1) * initial) * divide`.
    fn expiry_tsc(&self, k: u64) -> u64 {
        let ticks = u128::from(self.timer.start_count) + u128::from(k - 1) * u128::from(self.timer_initial);
        let bus = ticks * u128::from(self.divide());
        let tsc = (bus * u128::from(self.tsc_hz)).div_ceil(u128::from(VIRTUAL_BUS_HZ));
        u64::try_from(u128::from(self.timer.start_tsc) + tsc).unwrap_or(u64::MAX)
    }

    /// Current-count register at `now` (SDM 11.5.4): counts down from the initial count,
    /// reloading in periodic mode; 0 when stopped, expired (one-shot) or in TSC-deadline mode.
    #[must_use]
    pub fn current_count(&self, now: u64) -> u32 {
        if self.mode == ApicMode::Disabled || !self.counting() {
            return 0;
        }
        let ticks = self.elapsed_ticks(now);
        let first = u128::from(self.timer.start_count);
        if ticks < first {
            return (first - ticks) as u32;
        }
        if self.timer_mode() == TimerMode::Periodic {
            let initial = u128::from(self.timer_initial.max(1));
            (initial - (ticks - first) % initial) as u32
        } else {
            0
        }
    }

    /// Restart the count-down anchor at `now` with `count` clocks to the next expiration.
    fn rebase_timer(&mut self, now: u64, count: u32) {
        if self.counting() && count != 0 {
            self.timer = CountTimer { armed: true, start_tsc: now, start_count: count, done: 0 };
        } else {
            self.timer.armed = false;
        }
    }

    fn write_initial_count(&mut self, value: u32, now: u64) {
        if self.timer_mode() == TimerMode::TscDeadline {
            return; // ignored in TSC-deadline mode (SDM 11.5.4.1)
        }
        self.advance_timer(now);
        self.timer_initial = value;
        // Writing 0 stops the timer (SDM 11.5.4).
        self.timer = CountTimer { armed: value != 0, start_tsc: now, start_count: value, done: 0 };
    }

    /// WRMSR(IA32_TSC_DEADLINE) (SDM 11.5.4.1): arms the timer for `value` (0 disarms); a
    /// deadline already past fires at the next [`Self::on_timer`]. Ignored outside
    /// TSC-deadline mode.
    pub fn write_tsc_deadline(&mut self, value: u64) {
        if self.mode != ApicMode::Disabled && self.timer_mode() == TimerMode::TscDeadline {
            self.tsc_deadline = value;
        }
    }

    /// RDMSR(IA32_TSC_DEADLINE): the armed deadline, 0 once fired or outside TSC-deadline
    /// mode (SDM 11.5.4.1). Processes a due expiry first.
    pub fn read_tsc_deadline(&mut self, now: u64) -> u64 {
        self.advance_timer(now);
        if self.timer_mode() == TimerMode::TscDeadline {
            self.tsc_deadline
        } else {
            0
        }
    }

    /// TSC at which [`Self::on_timer`] must next run, or `None` when the timer is stopped,
    /// its vector is already pending in the IRR, or its LVT entry is masked (masked expirations are accounted for whenever a timer
    /// register is written, so nothing is lost).
    #[must_use]
    pub fn next_deadline(&self) -> Option<u64> {
        let lvt = self.lvt[Lvt::Timer as usize];
        if self.mode == ApicMode::Disabled || lvt & LVT_MASKED != 0 {
            return None;
        }
        // While the timer's vector waits in the IRR, another expiry would only coalesce
        // into it (SDM 11.8.4): nothing needs to run until it is delivered. (Without this,
        // a timer period shorter than the path into the guest would keep a vCPU exiting
        // before it runs a single instruction.)
        if bit_test(&self.irr, lvt as u8) {
            return None;
        }
        match self.timer_mode() {
            TimerMode::TscDeadline => (self.tsc_deadline != 0).then_some(self.tsc_deadline),
            TimerMode::OneShot | TimerMode::Periodic if self.timer.armed => Some(self.expiry_tsc(self.timer.done + 1)),
            _ => None,
        }
    }

    /// Process timer expirations up to `now` (SDM 11.5.4): one interrupt (the LVT timer
    /// vector into the IRR, unless masked) however many periods elapsed; one-shot and
    /// TSC-deadline timers disarm, periodic ones keep their drift-free schedule.
    pub fn on_timer(&mut self, now: u64) -> TimerFire {
        self.advance_timer(now)
    }

    fn advance_timer(&mut self, now: u64) -> TimerFire {
        if self.mode == ApicMode::Disabled {
            return TimerFire::default();
        }
        let expirations = match self.timer_mode() {
            TimerMode::TscDeadline => {
                if self.tsc_deadline != 0 && now >= self.tsc_deadline {
                    self.tsc_deadline = 0;
                    1
                } else {
                    0
                }
            }
            TimerMode::OneShot | TimerMode::Periodic if self.timer.armed => {
                let reached = self.expirations_by(now);
                let new = reached.saturating_sub(self.timer.done);
                self.timer.done = self.timer.done.max(reached);
                if new > 0 && self.timer_mode() == TimerMode::OneShot {
                    self.timer.armed = false;
                }
                new
            }
            _ => 0,
        };
        let mut fire = TimerFire { expirations, delivered: None };
        let lvt = self.lvt[Lvt::Timer as usize];
        if expirations > 0 && lvt & LVT_MASKED == 0 {
            let vector = lvt as u8;
            if matches!(self.accept(vector, false), Acceptance::Accepted | Acceptance::Coalesced) {
                fire.delivered = Some(vector);
            }
        }
        fire
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apic::Icr;
    use proptest::prelude::*;

    const TSC_HZ: u64 = 1_000_000_000; // 10 TSC ticks per bus clock

    fn lapic(id: u32) -> VirtualLapic {
        VirtualLapic::new(LapicConfig { apic_id: id, is_bsp: id == 0, tsc_hz: TSC_HZ, phys_addr_bits: 39 })
    }

    /// Software-enabled xAPIC.
    fn enabled(id: u32) -> VirtualLapic {
        let mut l = lapic(id);
        l.write(reg::SVR, 0x1FF, 0).unwrap();
        l
    }

    fn x2(id: u32) -> VirtualLapic {
        let mut l = enabled(id);
        l.set_apic_base(DEFAULT_APIC_BASE | APIC_BASE_EN | APIC_BASE_EXTD).unwrap();
        l
    }

    #[test]
    fn the_pic_reaches_the_processor_through_lint0_in_virtual_wire_mode() {
        // Power-up: software-disabled, LINT0 masked; the 8259's INTR passes (the reset
        // state stands in for the firmware's virtual-wire set-up).
        let mut l = lapic(0);
        assert!(!l.is_enabled() && l.lvt(Lvt::Lint0) & LVT_MASKED != 0);
        assert!(l.passes_pic_intr());
        // Software-enabled: LINT0 decides. Masked (reset value) blocks.
        l.write(reg::SVR, 0x1FF, 0).unwrap();
        assert!(!l.passes_pic_intr());
        // Unmasked ExtINT (Linux's and SeaBIOS's virtual wire: 0x700) passes, also level
        // and active-low (bits 15 and 13 do not matter here).
        for value in [0x700, 0x8700, 0xA700] {
            l.write(reg::LVT_LINT0, value, 0).unwrap();
            assert!(l.passes_pic_intr(), "{value:#x}");
        }
        // Masked ExtINT (Linux's "ExtINT masked on CPU0" with the I/O APIC), fixed, NMI
        // and the reserved modes do not.
        for value in [0x1_0700, 0x0030, 0x0400, 0x0100, 0x0300, 0x0600] {
            l.write(reg::LVT_LINT0, value, 0).unwrap();
            assert!(!l.passes_pic_intr(), "{value:#x}");
        }
        // Software disable masks LINT0 (SDM 11.4.7.2), and the pin passes through again.
        l.write(reg::LVT_LINT0, 0x700, 0).unwrap();
        l.write(reg::SVR, 0xFF, 0).unwrap();
        assert_ne!(l.lvt(Lvt::Lint0) & LVT_MASKED, 0);
        assert!(l.passes_pic_intr());
        // Hardware-disabled: the pin is the processor's INTR (SDM 11.4.3).
        let mut l = enabled(0);
        l.set_apic_base(DEFAULT_APIC_BASE).unwrap();
        assert!(l.passes_pic_intr());
        // x2APIC mode follows the same LINT0 rule.
        let mut l = x2(0);
        assert!(!l.passes_pic_intr());
        l.write_msr(msr(reg::LVT_LINT0), 0x700, 0).unwrap();
        assert!(l.passes_pic_intr());
    }

    #[test]
    fn hand_over_to_apic_virtualization_empties_the_priority_state() {
        let mut l = x2(3);
        l.write_msr(0x808, 0x20, 0).unwrap();
        l.accept(0x40, false);
        l.accept(0x50, true);
        l.take_pending();
        let (irr, isr, tpr) = l.hand_over_priority_state();
        assert_eq!((irr[2], isr[2], tpr), (1 << 0, 1 << 16, 0x20));
        assert_eq!((l.irr(), l.isr(), l.tpr()), ([0; 8], [0; 8], 0));
        assert_ne!(l.tmr()[2] & (1 << 16), 0, "TMR stays for EOI broadcasts");
        l.accept(0x60, false);
        assert_eq!(l.take_irr()[3], 1);
        assert_eq!(l.irr(), [0; 8]);
    }

    #[test]
    fn page_mirror_matches_the_x2apic_reads() {
        let mut l = x2(5);
        l.write_msr(0x83e, 0b1011, 0).unwrap();
        l.write_msr(0x832, 0x2_0033, 0).unwrap();
        l.write_msr(0x830, (7u64 << 32) | 0x4040, 0).unwrap();
        let mirror = l.page_mirror();
        let at = |offset: usize| mirror.iter().find(|(o, _)| *o == offset).map(|(_, v)| *v);
        for msr in [0x802u32, 0x803, 0x80d, 0x80f, 0x832, 0x833, 0x838, 0x83e] {
            let offset = ((msr - 0x800) << 4) as usize;
            assert_eq!(at(offset).map(u64::from), Some(l.read_msr(msr, 0).unwrap()), "{msr:#x}");
        }
        // RDMSR 0x830 reads 64 bits at 0x300 (SDM 30.5).
        let icr = u64::from(at(0x300).unwrap()) | u64::from(at(0x304).unwrap()) << 32;
        assert_eq!(icr, l.read_msr(0x830, 0).unwrap());
    }

    fn msr(offset: u32) -> u32 {
        X2APIC_MSR_BASE + (offset >> 4)
    }

    // ----- registers -----

    #[test]
    fn power_up_state() {
        let mut l = lapic(3);
        assert_eq!(l.mode(), ApicMode::XApic);
        assert_eq!(l.apic_base(), 0xFEE0_0000 | APIC_BASE_EN);
        assert_eq!(lapic(0).apic_base(), 0xFEE0_0000 | APIC_BASE_EN | APIC_BASE_BSP);
        assert_eq!(l.read(reg::ID, 0), Ok(3 << 24));
        assert_eq!(l.read(reg::VERSION, 0), Ok(0x0005_0014));
        assert_eq!(l.read(reg::SVR, 0), Ok(0xFF));
        assert_eq!(l.read(reg::DFR, 0), Ok(u32::MAX));
        for off in [reg::LVT_TIMER, reg::LVT_LINT0, reg::LVT_LINT1, reg::LVT_ERROR, reg::LVT_PERF] {
            assert_eq!(l.read(off, 0), Ok(LVT_MASKED));
        }
        assert!(!l.is_enabled());
    }

    #[test]
    fn xapic_register_semantics() {
        let mut l = enabled(1);
        // ID is writable in bits 31:24.
        l.write(reg::ID, 0x0700_00FF, 0).unwrap();
        assert_eq!(l.read(reg::ID, 0), Ok(0x0700_0000));
        assert_eq!(l.id(), 7);
        // Read-only registers drop writes.
        assert_eq!(l.write(reg::VERSION, 0, 0), Ok(ApicEffect::None));
        assert_eq!(l.read(reg::VERSION, 0), Ok(APIC_VERSION));
        assert_eq!(l.write(reg::PPR, 0xFF, 0), Ok(ApicEffect::None));
        assert_eq!(l.write(reg::IRR0 + 0x10, u32::MAX, 0), Ok(ApicEffect::None));
        assert_eq!(l.read(reg::IRR0 + 0x10, 0), Ok(0));
        // TPR 8 bits; LDR 31:24; DFR 31:28 with ones below.
        l.write(reg::TPR, 0x1234, 0).unwrap();
        assert_eq!(l.read(reg::TPR, 0), Ok(0x34));
        l.write(reg::LDR, 0x1234_5678, 0).unwrap();
        assert_eq!(l.read(reg::LDR, 0), Ok(0x1200_0000));
        l.write(reg::DFR, 0, 0).unwrap();
        assert_eq!(l.read(reg::DFR, 0), Ok(0x0FFF_FFFF));
        // SVR: bit 12 reserved (no EOI-broadcast suppression).
        l.write(reg::SVR, 0x11FF, 0).unwrap();
        assert_eq!(l.read(reg::SVR, 0), Ok(0x1FF));
        assert_eq!(l.spurious_vector(), 0xFF);
        // LVT writable bits; delivery status / remote IRR read 0.
        l.write(reg::LVT_LINT0, 0xFFFF_FFFF, 0).unwrap();
        assert_eq!(l.read(reg::LVT_LINT0, 0), Ok(0x0001_A7FF));
        l.write(reg::LVT_ERROR, 0xFFFF_FFFF, 0).unwrap();
        assert_eq!(l.read(reg::LVT_ERROR, 0), Ok(0x0001_00FF));
        l.write(reg::LVT_TIMER, 0xFFFF_FFFF, 0).unwrap();
        assert_eq!(l.read(reg::LVT_TIMER, 0), Ok(0x0007_00FF));
        l.write(reg::TIMER_DIVIDE, 0xFF, 0).unwrap();
        assert_eq!(l.read(reg::TIMER_DIVIDE, 0), Ok(0xB));
        // ICR: delivery status reads 0, high keeps bits 31:24.
        l.write(reg::ICR_HIGH, 0xFFFF_FFFF, 0).unwrap();
        assert_eq!(l.read(reg::ICR_HIGH, 0), Ok(0xFF00_0000));
        l.write(reg::ICR_LOW, 0x0000_1000 | 0x4000 | 0x40, 0).unwrap();
        assert_eq!(l.read(reg::ICR_LOW, 0), Ok(0x4040));
    }

    #[test]
    fn xapic_illegal_accesses_are_ignored_and_logged() {
        let mut l = enabled(0);
        assert_eq!(l.read(reg::EOI, 0), Err(ApicFault::Ignored));
        assert_eq!(l.read(reg::SELF_IPI, 0), Err(ApicFault::Ignored));
        assert_eq!(l.write(0x3A0, 1, 0), Err(ApicFault::Ignored));
        assert_eq!(l.read(0x024, 0), Err(ApicFault::Ignored)); // unaligned
        assert_eq!(l.read(0x400, 0), Err(ApicFault::Ignored));
        l.write(reg::ESR, 0, 0).unwrap();
        assert_eq!(l.read(reg::ESR, 0), Ok(esr::ILLEGAL_REGISTER_ADDRESS));
        // The next write clears it.
        l.write(reg::ESR, 0, 0).unwrap();
        assert_eq!(l.read(reg::ESR, 0), Ok(0));
        // MSR access in xAPIC mode is #GP.
        assert_eq!(l.read_msr(0x802, 0), Err(ApicFault::GeneralProtection));
        assert_eq!(l.write_msr(0x808, 0, 0), Err(ApicFault::GeneralProtection));
    }

    #[test]
    fn x2apic_register_semantics() {
        let mut l = x2(0x123);
        assert_eq!(l.read_msr(0x802, 0), Ok(0x123));
        assert_eq!(l.read_msr(0x803, 0), Ok(u64::from(APIC_VERSION)));
        assert_eq!(l.read_msr(0x80D, 0), Ok(0x0012_0008)); // cluster 0x12, bit 3
        assert_eq!(l.id(), 0x123);
        // Read-only registers: #GP on write.
        for m in [0x802, 0x803, 0x80A, 0x80D, 0x810, 0x818, 0x820, 0x839] {
            assert_eq!(l.write_msr(m, 0, 0), Err(ApicFault::GeneralProtection), "msr {m:#x}");
        }
        // Reserved / nonexistent: DFR, ICR high, APR, RRD, gaps, beyond 0x83F.
        for m in [0x80E, 0x831, 0x809, 0x80C, 0x800, 0x801, 0x804, 0x829, 0x83A, 0x840, 0x8FF] {
            assert_eq!(l.read_msr(m, 0), Err(ApicFault::GeneralProtection), "msr {m:#x}");
            assert_eq!(l.write_msr(m, 0, 0), Err(ApicFault::GeneralProtection), "msr {m:#x}");
        }
        assert_eq!(l.read_msr(0x7FF, 0), Err(ApicFault::GeneralProtection));
        assert_eq!(l.read_msr(0x900, 0), Err(ApicFault::GeneralProtection));
        // Write-only: EOI, SELF IPI.
        assert_eq!(l.read_msr(0x80B, 0), Err(ApicFault::GeneralProtection));
        assert_eq!(l.read_msr(0x83F, 0), Err(ApicFault::GeneralProtection));
        // Non-zero EOI / ESR, reserved SELF IPI bits, bits 63:32 → #GP.
        assert_eq!(l.write_msr(0x80B, 1, 0), Err(ApicFault::GeneralProtection));
        assert_eq!(l.write_msr(0x80B, 0, 0), Ok(ApicEffect::None));
        assert_eq!(l.write_msr(0x828, 1, 0), Err(ApicFault::GeneralProtection));
        assert_eq!(l.write_msr(0x828, 0, 0), Ok(ApicEffect::None));
        assert_eq!(l.write_msr(0x83F, 0x100, 0), Err(ApicFault::GeneralProtection));
        assert_eq!(l.write_msr(0x808, 1 << 32, 0), Err(ApicFault::GeneralProtection));
        // Read/write ones.
        l.write_msr(0x808, 0x50, 0).unwrap();
        assert_eq!(l.read_msr(0x808, 0), Ok(0x50));
        assert_eq!(l.read_msr(0x80A, 0), Ok(0x50));
        // 64-bit ICR.
        l.write_msr(0x830, (5 << 32) | 0x4030, 0).unwrap();
        assert_eq!(l.read_msr(0x830, 0), Ok((5 << 32) | 0x4030));
        // MMIO does not decode in x2APIC mode.
        assert_eq!(l.read_mmio(reg::ID, 0), Err(ApicFault::Ignored));
        // `read`/`write` by offset follow the x2APIC rules.
        assert_eq!(l.read(reg::DFR, 0), Err(ApicFault::GeneralProtection));
        assert_eq!(l.read(reg::TPR, 0), Ok(0x50));
        assert_eq!(msr(reg::SELF_IPI), 0x83F);
    }

    #[test]
    fn x2apic_keeps_xapic_state_and_derives_ldr() {
        let mut l = enabled(0x21);
        l.write(reg::TPR, 0x20, 0).unwrap();
        l.write(reg::ID, 0x0500_0000, 0).unwrap();
        l.write(reg::LDR, 0x0100_0000, 0).unwrap();
        l.set_apic_base(DEFAULT_APIC_BASE | APIC_BASE_EN | APIC_BASE_EXTD).unwrap();
        assert_eq!(l.read_msr(0x808, 0), Ok(0x20));
        assert_eq!(l.read_msr(0x802, 0), Ok(0x21));
        assert_eq!(l.read_msr(0x80D, 0), Ok(u64::from(x2apic_ldr(0x21))));
        assert_eq!(x2apic_ldr(0x21), (2 << 16) | 2);
        assert_eq!(l.read_msr(0x80F, 0), Ok(0x1FF));
    }

    // ----- IA32_APIC_BASE -----

    #[test]
    fn mode_transitions() {
        let en = DEFAULT_APIC_BASE | APIC_BASE_EN;
        let x2 = en | APIC_BASE_EXTD;
        let off = DEFAULT_APIC_BASE;
        let mut l = enabled(4);
        // xAPIC → x2APIC → xAPIC (#GP) → disabled → x2APIC (#GP) → xAPIC → x2APIC.
        let c = l.set_apic_base(x2).unwrap();
        assert_eq!(
            (c.old_mode, c.new_mode, c.mode_changed(), c.base_moved()),
            (ApicMode::XApic, ApicMode::X2Apic, true, false)
        );
        assert_eq!(l.set_apic_base(en), Err(ApicFault::GeneralProtection));
        assert_eq!(l.mode(), ApicMode::X2Apic);
        assert_eq!(l.set_apic_base(x2).map(|c| c.mode_changed()), Ok(false));
        assert_eq!(l.set_apic_base(off).map(|c| c.new_mode), Ok(ApicMode::Disabled));
        assert_eq!(l.set_apic_base(x2), Err(ApicFault::GeneralProtection));
        assert_eq!(l.set_apic_base(off | APIC_BASE_EXTD), Err(ApicFault::GeneralProtection));
        assert_eq!(l.mode(), ApicMode::Disabled);
        assert_eq!(l.set_apic_base(en).map(|c| c.new_mode), Ok(ApicMode::XApic));
        assert_eq!(l.set_apic_base(x2).map(|c| c.new_mode), Ok(ApicMode::X2Apic));
        // Invalid state from xAPIC too.
        let mut l = lapic(4);
        assert_eq!(l.set_apic_base(off | APIC_BASE_EXTD), Err(ApicFault::GeneralProtection));
        assert_eq!(l.mode(), ApicMode::XApic);
    }

    #[test]
    fn apic_base_reserved_bits_bsp_and_relocation() {
        let mut l = lapic(1);
        for bit in [0u64, 7, 9, 39, 40, 63] {
            assert_eq!(
                l.set_apic_base(DEFAULT_APIC_BASE | APIC_BASE_EN | (1 << bit)),
                Err(ApicFault::GeneralProtection),
                "bit {bit}"
            );
        }
        // The BSP flag is read-only both ways.
        l.set_apic_base(DEFAULT_APIC_BASE | APIC_BASE_EN | APIC_BASE_BSP).unwrap();
        assert_eq!(l.apic_base() & APIC_BASE_BSP, 0);
        let mut bsp = lapic(0);
        bsp.set_apic_base(DEFAULT_APIC_BASE | APIC_BASE_EN).unwrap();
        assert_ne!(bsp.apic_base() & APIC_BASE_BSP, 0);
        // Relocation.
        let c = l.set_apic_base(0x7F_FFFF_F000 | APIC_BASE_EN).unwrap();
        assert!(c.base_moved() && !c.mode_changed());
        assert_eq!((c.old_base, c.new_base), (DEFAULT_APIC_BASE, 0x7F_FFFF_F000));
        assert_eq!(l.base_address(), 0x7F_FFFF_F000);
    }

    #[test]
    fn disabling_resets_state_and_blocks_access() {
        let mut l = enabled(2);
        l.write(reg::TPR, 0x40, 0).unwrap();
        l.write(reg::ID, 0x0900_0000, 0).unwrap();
        l.accept(0x80, false);
        l.set_apic_base(DEFAULT_APIC_BASE).unwrap();
        assert_eq!(l.read(reg::TPR, 0), Err(ApicFault::Ignored));
        assert_eq!(l.accept(0x80, false), Acceptance::Disabled);
        assert!(!l.is_target(IpiDestination::AllIncludingSelf, false));
        l.set_apic_base(DEFAULT_APIC_BASE | APIC_BASE_EN).unwrap();
        assert_eq!(l.read(reg::TPR, 0), Ok(0));
        assert_eq!(l.read(reg::ID, 0), Ok(2 << 24));
        assert_eq!(l.read(reg::SVR, 0), Ok(0xFF));
        assert_eq!(l.irr(), [0; 8]);
    }

    #[test]
    fn init_reset_keeps_id_and_mode() {
        let mut l = x2(0x42);
        l.write_msr(0x808, 0x30, 0).unwrap();
        l.init_reset();
        assert_eq!(l.mode(), ApicMode::X2Apic);
        assert_eq!(l.read_msr(0x808, 0), Ok(0));
        assert_eq!(l.read_msr(0x802, 0), Ok(0x42));
        assert_eq!(l.read_msr(0x80D, 0), Ok(u64::from(x2apic_ldr(0x42))));
        assert_eq!(l.read_msr(0x80F, 0), Ok(0xFF));
    }

    // ----- priority -----

    #[test]
    fn tpr_masks_lower_classes() {
        let mut l = enabled(0);
        assert_eq!(l.accept(0x45, false), Acceptance::Accepted);
        assert_eq!(l.highest_pending(), Some(0x45));
        l.write(reg::TPR, 0x40, 0).unwrap(); // same class: blocked
        assert_eq!(l.highest_pending(), None);
        l.write(reg::TPR, 0x3F, 0).unwrap();
        assert_eq!(l.highest_pending(), Some(0x45));
        l.write(reg::TPR, 0x50, 0).unwrap();
        assert_eq!(l.highest_pending(), None);
        assert_eq!(l.accept(0x61, false), Acceptance::Accepted);
        assert_eq!(l.highest_pending(), Some(0x61));
        assert_eq!(l.accept(0x61, false), Acceptance::Coalesced);
    }

    #[test]
    fn ppr_rule() {
        let mut l = enabled(0);
        assert_eq!(l.ppr(), 0);
        l.write(reg::TPR, 0x35, 0).unwrap();
        assert_eq!(l.ppr(), 0x35);
        l.accept(0x47, false);
        assert!(l.acknowledge(0x47));
        // ISRV class 4 > TPR class 3: PPR = 0x40.
        assert_eq!(l.ppr(), 0x40);
        assert_eq!(l.read(reg::PPR, 0), Ok(0x40));
        // TPR class 4 == ISRV class 4: PPR = TPR.
        l.write(reg::TPR, 0x4A, 0).unwrap();
        assert_eq!(l.ppr(), 0x4A);
        l.write(reg::TPR, 0x70, 0).unwrap();
        assert_eq!(l.ppr(), 0x70);
    }

    #[test]
    fn isr_nesting_and_eoi() {
        let mut l = enabled(0);
        l.accept(0x30, true);
        assert_eq!(l.take_pending(), Some(0x30));
        // Same class while 0x30 in service: blocked; higher class nests.
        l.accept(0x35, false);
        assert_eq!(l.highest_pending(), None);
        l.accept(0x50, false);
        assert_eq!(l.take_pending(), Some(0x50));
        assert_eq!(l.ppr(), 0x50);
        assert!(!l.acknowledge(0x50)); // not pending any more
                                       // EOI retires the highest ISR first (edge), then 0x30 (level).
        assert_eq!(l.write(reg::EOI, 0, 0), Ok(ApicEffect::Eoi { vector: 0x50, level: false }));
        assert_eq!(l.highest_pending(), None); // 0x35 still blocked by 0x30 in service
        assert_eq!(l.write(reg::EOI, 0xDEAD, 0), Ok(ApicEffect::Eoi { vector: 0x30, level: true }));
        assert_eq!(l.isr(), [0; 8]);
        assert_eq!(l.take_pending(), Some(0x35));
        assert_eq!(l.write(reg::EOI, 0, 0), Ok(ApicEffect::Eoi { vector: 0x35, level: false }));
        assert_eq!(l.write(reg::EOI, 0, 0), Ok(ApicEffect::None));
    }

    #[test]
    fn isr_irr_tmr_registers_read_back() {
        let mut l = x2(0);
        l.accept(0xE1, true);
        l.accept(0x22, false);
        assert_eq!(l.read_msr(0x827, 0), Ok(1 << 1)); // IRR bits 224..255
        assert_eq!(l.read_msr(0x81F, 0), Ok(1 << 1)); // TMR
        assert_eq!(l.read_msr(0x821, 0), Ok(1 << 2)); // IRR bits 32..63
        l.acknowledge(0xE1);
        assert_eq!(l.read_msr(0x817, 0), Ok(1 << 1)); // ISR
        assert_eq!(l.write_msr(0x80B, 0, 0), Ok(ApicEffect::Eoi { vector: 0xE1, level: true }));
    }

    #[test]
    fn illegal_vectors_are_dropped_and_logged() {
        let mut l = enabled(0);
        for v in 0..16 {
            assert_eq!(l.accept(v, false), Acceptance::IllegalVector);
        }
        assert_eq!(l.irr(), [0; 8]);
        assert_eq!(l.read(reg::ESR, 0), Ok(0)); // latched only by an ESR write
        l.write(reg::ESR, 0, 0).unwrap();
        assert_eq!(l.read(reg::ESR, 0), Ok(esr::RECEIVED_ILLEGAL_VECTOR));
        // With an unmasked error LVT the error is signalled.
        l.write(reg::LVT_ERROR, 0xFE, 0).unwrap();
        l.accept(3, false);
        assert_eq!(l.highest_pending(), Some(0xFE));
        // Sending an illegal vector.
        assert_eq!(l.write(reg::ICR_LOW, 0x4005, 0), Ok(ApicEffect::None));
        l.write(reg::ESR, 0, 0).unwrap();
        assert_eq!(l.read(reg::ESR, 0), Ok(esr::RECEIVED_ILLEGAL_VECTOR | esr::SEND_ILLEGAL_VECTOR));
    }

    #[test]
    fn software_disable_drops_and_masks() {
        let mut l = enabled(0);
        l.accept(0x40, false);
        l.write(reg::LVT_LINT0, 0x700, 0).unwrap(); // ExtINT, unmasked
        l.write(reg::SVR, 0xF0, 0).unwrap();
        assert_eq!(l.highest_pending(), None);
        assert_eq!(l.accept(0x41, false), Acceptance::Disabled);
        assert_eq!(l.read(reg::LVT_LINT0, 0), Ok(0x0001_0700));
        l.write(reg::LVT_LINT0, 0x700, 0).unwrap(); // cannot unmask while disabled
        assert_eq!(l.read(reg::LVT_LINT0, 0), Ok(0x0001_0700));
        assert_eq!(l.spurious_vector(), 0xF0);
        l.write(reg::SVR, 0x1F0, 0).unwrap();
        assert_eq!(l.highest_pending(), Some(0x40)); // held IRR bit comes back
        assert_eq!(l.read(reg::LVT_LINT0, 0), Ok(0x0001_0700)); // still masked
    }

    // ----- destinations -----

    #[test]
    fn logical_flat_and_cluster() {
        let mut l = enabled(0);
        l.write(reg::LDR, 0x2400_0000, 0).unwrap(); // bits 2 and 5
        assert!(l.matches_logical(0x04));
        assert!(l.matches_logical(0x21));
        assert!(!l.matches_logical(0x01));
        assert!(l.matches_logical(0xFF));
        l.write(reg::DFR, 0x0FFF_FFFF, 0).unwrap(); // cluster model
        assert!(l.matches_logical(0x24)); // cluster 2, bit 2
        assert!(l.matches_logical(0x2C));
        assert!(!l.matches_logical(0x34)); // other cluster
        assert!(!l.matches_logical(0x28)); // bit not set
        assert!(l.matches_logical(0xFF));
        assert!(l.is_target(IpiDestination::Logical(0x24), false));
    }

    #[test]
    fn logical_x2apic_cluster() {
        let l = x2(0x35); // cluster 3, bit 5
        assert!(l.matches_logical(0x0003_0020));
        assert!(l.matches_logical(0x0003_FFFF));
        assert!(!l.matches_logical(0x0003_0010));
        assert!(!l.matches_logical(0x0002_0020));
        assert!(l.matches_logical(u32::MAX));
        assert!(!lapic(0).clone().is_target(IpiDestination::Logical(0x1), false));
        // LDR 0
    }

    #[test]
    fn physical_targets_and_shorthands() {
        let mut l = enabled(5);
        assert!(l.is_target(IpiDestination::Physical(5), false));
        assert!(!l.is_target(IpiDestination::Physical(6), false));
        assert!(l.is_target(IpiDestination::Physical(0xFF), false));
        assert!(l.is_target(IpiDestination::SelfOnly, true));
        assert!(!l.is_target(IpiDestination::SelfOnly, false));
        assert!(l.is_target(IpiDestination::AllIncludingSelf, true));
        assert!(!l.is_target(IpiDestination::AllExcludingSelf, true));
        assert!(l.is_target(IpiDestination::AllExcludingSelf, false));
        l.set_apic_base(DEFAULT_APIC_BASE | APIC_BASE_EN | APIC_BASE_EXTD).unwrap();
        assert!(l.is_target(IpiDestination::Physical(5), false));
        assert!(!l.is_target(IpiDestination::Physical(0xFF), false));
        assert!(l.is_target(IpiDestination::Physical(u32::MAX), false));
    }

    // ----- ICR -----

    #[test]
    fn icr_decoding_all_shorthands_via_apic_encoder() {
        let dests = [
            Destination::Physical(3),
            Destination::SelfOnly,
            Destination::AllIncludingSelf,
            Destination::AllExcludingSelf,
        ];
        let modes = [DeliveryMode::Fixed, DeliveryMode::Nmi, DeliveryMode::Init, DeliveryMode::StartUp];
        for dest in dests {
            for mode in modes {
                let icr = Icr::new(mode, 0x9f, dest);
                let want = ApicEffect::SendIpi {
                    mode: mode.into(),
                    vector: 0x9f,
                    dest: dest.into(),
                    level: true,
                    trigger: TriggerMode::Edge,
                };
                let mut l = enabled(0);
                let (high, low) = icr.xapic_parts();
                assert_eq!(l.write(reg::ICR_HIGH, high, 0), Ok(ApicEffect::None));
                assert_eq!(l.write(reg::ICR_LOW, low, 0), Ok(want));
                let mut l = x2(0);
                assert_eq!(l.write_msr(0x830, icr.x2apic(), 0), Ok(want));
                assert_eq!(l.write_icr_x2apic(icr.x2apic()), Ok(want));
                assert_eq!(IpiDeliveryMode::from(mode).to_apic(), Some(mode));
            }
        }
    }

    #[test]
    fn icr_logical_lowest_priority_smi_and_reserved() {
        let mut l = enabled(0);
        l.write(reg::ICR_HIGH, 0x0300_0000, 0).unwrap();
        // Lowest priority, logical, level-triggered assert.
        assert_eq!(
            l.write(reg::ICR_LOW, 0xC941, 0),
            Ok(ApicEffect::SendIpi {
                mode: IpiDeliveryMode::LowestPriority,
                vector: 0x41,
                dest: IpiDestination::Logical(3),
                level: true,
                trigger: TriggerMode::Level,
            })
        );
        // INIT level de-assert.
        assert_eq!(
            l.write(reg::ICR_LOW, 0x8500, 0),
            Ok(ApicEffect::SendIpi {
                mode: IpiDeliveryMode::Init,
                vector: 0,
                dest: IpiDestination::Physical(3),
                level: false,
                trigger: TriggerMode::Level,
            })
        );
        assert!(matches!(l.write(reg::ICR_LOW, 0x4200, 0), Ok(ApicEffect::SendIpi { mode: IpiDeliveryMode::Smi, .. })));
        assert_eq!(l.write(reg::ICR_LOW, 0x4340, 0), Ok(ApicEffect::None)); // reserved mode 011
        assert_eq!(l.write(reg::ICR_LOW, 0x4740, 0), Ok(ApicEffect::None)); // reserved mode 111
                                                                            // x2APIC: 32-bit logical destination.
        let mut l = x2(0);
        assert_eq!(
            l.write_msr(0x830, (0x0001_0002u64 << 32) | 0x4830, 0),
            Ok(ApicEffect::SendIpi {
                mode: IpiDeliveryMode::Fixed,
                vector: 0x30,
                dest: IpiDestination::Logical(0x0001_0002),
                level: true,
                trigger: TriggerMode::Edge,
            })
        );
        assert_eq!(enabled(0).write_icr_x2apic(0x4830), Err(ApicFault::GeneralProtection));
    }

    #[test]
    fn self_ipi_msr() {
        let mut l = x2(0);
        assert_eq!(
            l.write_msr(0x83F, 0x77, 0),
            Ok(ApicEffect::SendIpi {
                mode: IpiDeliveryMode::Fixed,
                vector: 0x77,
                dest: IpiDestination::SelfOnly,
                level: true,
                trigger: TriggerMode::Edge,
            })
        );
        assert_eq!(enabled(0).write(reg::SELF_IPI, 0x77, 0), Err(ApicFault::Ignored));
    }

    // ----- timer -----

    #[test]
    fn divide_encodings() {
        let table = [
            (0b0000, 2),
            (0b0001, 4),
            (0b0010, 8),
            (0b0011, 16),
            (0b1000, 32),
            (0b1001, 64),
            (0b1010, 128),
            (0b1011, 1),
        ];
        for (dcr, div) in table {
            assert_eq!(divide_value(dcr), div, "dcr {dcr:#b}");
            // Observed through the count rate: 10 TSC per bus clock.
            let mut l = enabled(0);
            l.write(reg::TIMER_DIVIDE, dcr, 0).unwrap();
            l.write(reg::TIMER_INITIAL, 1000, 0).unwrap();
            assert_eq!(l.read(reg::TIMER_CURRENT, 100 * u64::from(div)), Ok(990));
        }
    }

    #[test]
    fn one_shot_fires_once_and_disarms() {
        let mut l = enabled(0);
        l.write(reg::TIMER_DIVIDE, 0xB, 0).unwrap(); // ÷1
        l.write(reg::LVT_TIMER, 0x40, 0).unwrap();
        assert_eq!(l.write(reg::TIMER_INITIAL, 100, 1000), Ok(ApicEffect::TimerChanged));
        assert_eq!(l.next_deadline(), Some(1000 + 1000));
        assert_eq!(l.read(reg::TIMER_CURRENT, 1500), Ok(50));
        assert!(!l.on_timer(1999).fired());
        let fire = l.on_timer(2000);
        assert_eq!(fire, TimerFire { expirations: 1, delivered: Some(0x40) });
        assert_eq!(l.highest_pending(), Some(0x40));
        assert_eq!(l.next_deadline(), None);
        assert_eq!(l.read(reg::TIMER_CURRENT, 2500), Ok(0));
        assert!(!l.on_timer(1_000_000).fired());
        assert_eq!(l.read(reg::TIMER_INITIAL, 0), Ok(100));
    }

    #[test]
    fn initial_count_zero_stops() {
        let mut l = enabled(0);
        l.write(reg::LVT_TIMER, 0x2_0040, 0).unwrap(); // periodic
        l.write(reg::TIMER_INITIAL, 100, 0).unwrap();
        assert!(l.next_deadline().is_some());
        l.write(reg::TIMER_INITIAL, 0, 10).unwrap();
        assert_eq!(l.next_deadline(), None);
        assert_eq!(l.read(reg::TIMER_CURRENT, 100_000), Ok(0));
        assert!(!l.on_timer(100_000).fired());
    }

    #[test]
    fn periodic_is_drift_free_and_coalesces() {
        let mut l = enabled(0);
        l.write(reg::TIMER_DIVIDE, 0, 0).unwrap(); // ÷2 → period = 100 * 2 * 10 = 2000 TSC
        l.write(reg::LVT_TIMER, 0x2_0030, 0).unwrap();
        l.write(reg::TIMER_INITIAL, 100, 5).unwrap();
        for k in 1..=1000u64 {
            assert_eq!(l.next_deadline(), Some(5 + 2000 * k));
            // Late by 7 ticks every time: the schedule must not slip.
            let fire = l.on_timer(5 + 2000 * k + 7);
            assert_eq!(fire.expirations, 1);
            l.acknowledge(0x30);
            l.write(reg::EOI, 0, 0).unwrap();
        }
        // Miss 5 periods: one interrupt, 4 coalesced.
        let fire = l.on_timer(5 + 2000 * 1005 + 1);
        assert_eq!((fire.expirations, fire.coalesced(), fire.delivered), (5, 4, Some(0x30)));
        // Until the interrupt is delivered, further expiries would only coalesce.
        assert_eq!(l.next_deadline(), None);
        l.acknowledge(0x30);
        assert_eq!(l.next_deadline(), Some(5 + 2000 * 1006));
        assert_eq!(l.read(reg::TIMER_CURRENT, 5 + 2000 * 1005 + 20), Ok(99));
    }

    #[test]
    fn masked_timer_does_not_set_irr() {
        let mut l = enabled(0);
        l.write(reg::LVT_TIMER, LVT_MASKED | 0x2_0040, 0).unwrap();
        l.write(reg::TIMER_INITIAL, 10, 0).unwrap();
        assert_eq!(l.next_deadline(), None);
        let fire = l.on_timer(10_000);
        assert!(fire.fired() && fire.delivered.is_none());
        assert_eq!(l.irr(), [0; 8]);
        // Unmasking does not deliver the expirations that happened while masked.
        l.write(reg::LVT_TIMER, 0x2_0040, 10_050).unwrap();
        assert_eq!(l.irr(), [0; 8]);
        assert!(l.next_deadline().is_some_and(|d| d > 10_050));
    }

    #[test]
    fn tsc_deadline_mode() {
        let mut l = enabled(0);
        l.write(reg::LVT_TIMER, 0x4_0050, 0).unwrap();
        assert_eq!(l.timer_mode(), TimerMode::TscDeadline);
        // Initial count ignored, current count 0.
        l.write(reg::TIMER_INITIAL, 100, 0).unwrap();
        assert_eq!(l.read(reg::TIMER_INITIAL, 0), Ok(0));
        assert_eq!(l.next_deadline(), None);
        l.write_tsc_deadline(5000);
        assert_eq!(l.next_deadline(), Some(5000));
        assert!(!l.on_timer(4999).fired());
        assert_eq!(l.on_timer(5000), TimerFire { expirations: 1, delivered: Some(0x50) });
        assert_eq!(l.read_tsc_deadline(5000), 0);
        assert_eq!(l.next_deadline(), None);
        // Past deadline fires at the next on_timer.
        l.acknowledge(0x50);
        l.write_tsc_deadline(10);
        assert_eq!(l.next_deadline(), Some(10));
        assert_eq!(l.on_timer(6000).delivered, Some(0x50));
        // 0 disarms.
        l.write_tsc_deadline(9000);
        l.write_tsc_deadline(0);
        assert!(!l.on_timer(10_000).fired());
    }

    #[test]
    fn mode_switch_disarms() {
        let mut l = enabled(0);
        l.write(reg::LVT_TIMER, 0x4_0050, 0).unwrap();
        l.write_tsc_deadline(5000);
        l.write(reg::LVT_TIMER, 0x0_0050, 0).unwrap(); // → one-shot
        assert_eq!(l.next_deadline(), None);
        assert_eq!(l.read_tsc_deadline(0), 0);
        l.write(reg::TIMER_INITIAL, 100, 0).unwrap();
        l.write(reg::LVT_TIMER, 0x4_0050, 10).unwrap(); // → TSC deadline
        assert_eq!(l.next_deadline(), None);
        assert_eq!(l.read(reg::TIMER_INITIAL, 10), Ok(0));
        assert_eq!(l.read_tsc_deadline(10), 0);
        // TSC-deadline MSR writes ignored outside that mode.
        l.write(reg::LVT_TIMER, 0x0_0050, 20).unwrap();
        l.write_tsc_deadline(99);
        assert_eq!(l.read_tsc_deadline(20), 0);
        // One-shot ↔ periodic keeps counting.
        l.write(reg::TIMER_INITIAL, 100, 0).unwrap();
        l.write(reg::LVT_TIMER, 0x2_0050, 500).unwrap();
        // ÷2 (reset value): 500 TSC = 50 bus clocks = 25 timer clocks.
        assert_eq!(l.read(reg::TIMER_CURRENT, 500), Ok(75));
        assert_eq!(l.next_deadline(), Some(2000));
    }

    #[test]
    fn divide_change_keeps_current_count() {
        let mut l = enabled(0);
        l.write(reg::TIMER_DIVIDE, 0xB, 0).unwrap(); // ÷1
        l.write(reg::LVT_TIMER, 0x40, 0).unwrap();
        l.write(reg::TIMER_INITIAL, 100, 0).unwrap();
        l.write(reg::TIMER_DIVIDE, 0x0, 500).unwrap(); // ÷2 with 50 left
        assert_eq!(l.read(reg::TIMER_CURRENT, 500), Ok(50));
        assert_eq!(l.next_deadline(), Some(500 + 50 * 2 * 10));
    }

    proptest! {
        #[test]
        fn periodic_never_drifts(
            initial in 1u32..5_000_000,
            dcr_code in 0u32..8,
            tsc_hz in 500_000_000u64..5_000_000_000,
            start in 0u64..1_000_000_000_000,
            lates in proptest::collection::vec((0u64..4, 0u64..1_000_000), 1..40),
        ) {
            let dcr = (dcr_code & 3) | ((dcr_code & 4) << 1);
            let mut l = VirtualLapic::new(LapicConfig { apic_id: 0, is_bsp: true, tsc_hz, phys_addr_bits: 39 });
            l.write(reg::SVR, 0x1FF, 0).unwrap();
            l.write(reg::TIMER_DIVIDE, dcr, 0).unwrap();
            l.write(reg::LVT_TIMER, 0x2_0040, 0).unwrap();
            l.write(reg::TIMER_INITIAL, initial, start).unwrap();
            let period_bus = u128::from(initial) * u128::from(divide_value(dcr));
            let mut total = 0u64;
            let mut now = start;
            for (periods, extra) in lates {
                let deadline = l.next_deadline().unwrap();
                prop_assert!(deadline > now);
                // The deadline is exactly the first TSC at which the next expiration happens.
                let k = u128::from(total + 1);
                let exact = u128::from(start) + (k * period_bus * u128::from(tsc_hz)).div_ceil(u128::from(VIRTUAL_BUS_HZ));
                prop_assert_eq!(u128::from(deadline), exact);
                now = deadline + periods * (deadline - start) / (total + 1) + extra;
                let fire = l.on_timer(now);
                prop_assert!(fire.expirations >= 1);
                prop_assert_eq!(fire.delivered, Some(0x40));
                total += fire.expirations;
                l.acknowledge(0x40);
                l.write(reg::EOI, 0, now).unwrap();
                let elapsed_bus = u128::from(now - start) * u128::from(VIRTUAL_BUS_HZ) / u128::from(tsc_hz);
                prop_assert_eq!(u128::from(total), elapsed_bus / period_bus);
                let count = l.current_count(now);
                prop_assert!((1..=initial).contains(&count));
            }
        }
    }
}
