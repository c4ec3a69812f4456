//! Guest platform tables the service partition's builder writes (ACPI RSDP/XSDT/MADT/FADT/DSDT, MP table): no_std, no unsafe, host-tested.
//!
//! [`build`] writes, into one caller-provided region of guest RAM, everything a PC
//! guest OS looks for to find its processors, interrupt controllers and the ACPI
//! fixed hardware of the virtual platform (`hv_abi::platform`, the device models of
//! `hv-devices`):
//!
//! - ACPI (written from the ACPI 6.5 specification, chapter 5): RSDP revision 2
//!   (§5.2.5) → RSDT (§5.2.7, for ACPI 1.0 readers) and XSDT (§5.2.8), both listing
//!   the FADT and the MADT; FADT revision 6, minor version 5 (§5.2.9, 276 bytes) →
//!   FACS (§5.2.10) and DSDT (§5.2.11.1); MADT revision 5 (§5.2.12).
//! - The Intel MultiProcessor Specification 1.4 table (chapter 4): the MP floating
//!   pointer structure and the MP configuration table ("PCMP").
//!
//! # Layout inside the region
//!
//! In this order, each table starting on a 16-byte guest-physical boundary (the FACS
//! on a 64-byte one, §5.2.10): FACS (64 bytes), DSDT, FADT (276), MADT, XSDT, RSDT,
//! MP configuration table; then the two floating structures that OSes find by
//! scanning: the RSDP (36 bytes in a 48-byte slot) and the MP floating pointer (16),
//! both on 16-byte boundaries. The floating structures follow the tables directly,
//! except when the tables end below 0xF0000 and the region covers 0xF0000..0xF0040:
//! then they sit at 0xF0000, where both the ACPI scan (0xE0000-0xFFFFF, §5.2.5.1)
//! and the MP spec's BIOS-ROM scan (0xF0000-0xFFFFF, §4) look. So a region anywhere
//! in 0xE0000..0x100000 that reaches to 0xF0040 or beyond has both found by the
//! scans; a region entirely below 0xF0000 still has its RSDP found by the ACPI scan
//! (if at or above 0xE0000) but not its MP floating pointer — pass the table
//! addresses to the guest another way then, or move the region.
//!
//! [`TableLayout::used_bytes`] is the length of the prefix of the region that
//! [`build`] wrote (it zeroes the gaps); bytes beyond it are left alone. The guest's
//! memory map should report `region_gpa..region_gpa + used_bytes` as reserved (the
//! FACS must not be ordinary RAM, §5.2.10). Every address the tables hold is 32-bit
//! (RSDT, FADT `DSDT`/`FIRMWARE_CTRL`, MP pointers), so the region must end at or below
//! 4 GiB. [`required_size`] gives the smallest region for a platform and placement:
//! at a 64-byte aligned `region_gpa`, 1008 bytes for 1 vCPU, 1104 for 4 and 8096 for
//! 254 (about 28 bytes per vCPU: 8 in the MADT, 20 in the MP table); up to 63 bytes
//! more elsewhere (the FACS's alignment).
//!
//! # What the tables say
//!
//! - **Processors**: vCPU `i` has APIC ID `i` and ACPI processor UID `i`; MADT
//!   "Processor Local APIC" entries (type 0, enabled), MP processor entries (vCPU 0 is
//!   the bootstrap processor). xAPIC entries only: IDs are 8-bit, so at most
//!   [`MAX_VCPUS`] = 254 vCPUs (IDs 0..=253, leaving 254 for the I/O APIC and 255 for
//!   broadcast); no x2APIC entries.
//! - **I/O APIC**: one, at `ioapic_base`, GSI base 0, with the ID `ioapic_id`
//!   ([`PlatformDesc::pc_defaults`]: the vCPU count `n`, the first ID after the local
//!   APICs, so no ID is shared even on APIC-bus systems). The 82093AA holds only a
//!   4-bit ID in `IOAPICID`, so for `n` ≥ 16 the register cannot show the table's ID;
//!   64-bit Linux takes the ID from the MADT and never checks it against the register.
//! - **ISA interrupts**: IRQ 0 (PIT) → GSI/pin 2, edge, active high; the SCI IRQ →
//!   GSI of the same number, level, active high (PIIX4 style); all other ISA IRQs
//!   1..15 (but 2, the cascade) → the pin of the same number with ISA conventions
//!   (edge, active high). The MADT states only the two overrides; the MP table lists
//!   all 15 assignments. No PCI interrupt routing is described (no `_PRT`, no PCI bus
//!   in the MP table): the platform has no PCI device with an interrupt pin yet.
//! - **Local interrupts**: LINT1 is NMI on every processor (MADT type 4 with UID 0xFF,
//!   edge, active high; MP local interrupt entry); LINT0 is ExtINT on the BSP (MP
//!   table; "virtual wire" mode — the MP feature byte 2 IMCRP bit is 0, since the
//!   platform has no IMCR at ports 0x22/0x23). MADT flags: `PCAT_COMPAT` (a dual
//!   8259 is present) when `legacy_pic`, else 0.
//! - **FADT**: see [`fadt_flags`] and [`IAPC_BOOT_ARCH`] for the flags and why; the
//!   PM1a event (4 bytes), PM1a control (2) and PM timer (4) blocks in system I/O at
//!   the given ports, both as the 32-bit fields and as `X_` Generic Address
//!   Structures (§5.2.3.2: system I/O, bit widths 32/16/32, word/word/dword access);
//!   no PM1b, PM2 or GPE blocks; `SCI_INT` = `sci_irq`; `SMI_CMD` = 0 and
//!   `ACPI_ENABLE`/`ACPI_DISABLE` = 0: there is no SMM and the platform is always in
//!   ACPI mode, so PM1 control must read `SCI_EN` = 1 (the `hv-devices` `AcpiPm`
//!   model does); `RESET_REG` = system I/O `reset_port`, 8 bits, byte access, with
//!   `RESET_VALUE` = `reset_value`; `CENTURY` = `century_cmos_index`; C2/C3 latencies
//!   0x0FFF (not supported); no day/month alarm. Without `fixed_hardware` the PM blocks
//!   (and their lengths) are 0 and `HW_REDUCED_ACPI` is set; without `reset_register`
//!   `RESET_REG` and `RESET_VALUE` are 0 and `RESET_REG_SUP` is clear
//!   ([`PlatformDesc::for_devices`] sets these from a guest's devices).
//! - **DSDT** (revision 2, 64-bit integers): `Name(\_S5, Package(4) { s5_slp_typ,
//!   s5_slp_typ, 0, 0 })` and `Scope(\_SB) { Device(PCI0) { Name(_HID,
//!   EISAID("PNP0A03")) Name(_UID, 0) Name(_BBN, 0) Name(_CRS, ResourceTemplate) } }`,
//!   the PCI root bus 0 behind the configuration mechanism #1 host bridge; `_CRS` gives
//!   bus numbers 0-255, the ports 0xCF8-0xCFF and the I/O windows 0-0xCF7 and
//!   0xD00-0xFFFF (no memory window: no device has BARs); the `\_SB` scope only when
//!   `pci_host`. Not included: `_PRT`, `_OSC`,
//!   processor objects, and the
//!   other sleep states (the PM model implements only S5).
//! - **FACS**: version 2, no hardware signature, no S4BIOS, no 64-bit wake, global
//!   lock 0. It exists because the FADT of a non-hardware-reduced platform must point
//!   to one (§5.2.10) and ACPICA dereferences it for the global lock.
//!
//! Everything is validated and sized before the first byte is written; the writes
//! themselves are bounds-checked again (`out`), so no input makes [`build`] panic or
//! write outside the region.
#![no_std]
#![forbid(unsafe_code)]

mod acpi;
mod aml;
mod mp;
mod out;

use core::fmt;

pub use acpi::{
    fadt_flags, FADT_FIX_RTC, FADT_FORCE_APIC_PHYSICAL_DESTINATION_MODE, FADT_PROC_C1, FADT_PWR_BUTTON,
    FADT_RESET_REG_SUP, FADT_SLP_BUTTON, FADT_TMR_VAL_EXT, FADT_WBINVD, IAPC_BOOT_ARCH,
};

/// The most vCPUs the tables describe (8-bit xAPIC IDs 0..=253; see the crate docs).
pub const MAX_VCPUS: u32 = 254;
/// QEMU PIIX4 PM I/O base: PM1a event block at +0, PM1a control at +4, PM timer at +8.
pub const DEFAULT_PM_BASE: u16 = 0x600;
/// The PC's usual SCI line (as on PIIX4; `hv_devices::acpi_pm::DEFAULT_SCI_IRQ`).
pub const DEFAULT_SCI_IRQ: u8 = 9;
/// The reset control register (`hv_devices::acpi_pm::RESET_CONTROL_PORT`).
pub const DEFAULT_RESET_PORT: u16 = 0xCF9;
/// `SYS_RST | RST_CPU`: a hard reset through port 0xCF9.
pub const DEFAULT_RESET_VALUE: u8 = 0x06;
/// The `SLP_TYP` of soft-off (S5) on this platform's PM1 control
/// (`hv_devices::board::S5_SLP_TYP`: non-zero, so that a stray `SLP_EN` write with
/// `SLP_TYP` 0 does not power off; the guest learns it from `\_S5`).
pub const DEFAULT_S5_SLP_TYP: u8 = 5;
/// The RTC CMOS byte holding the century (`hv_devices::rtc_cmos::CENTURY_INDEX`).
pub const DEFAULT_CENTURY_CMOS_INDEX: u8 = 0x32;

/// Where legacy OSes scan for the RSDP (ACPI 6.5 §5.2.5.1: 0xE0000-0xFFFFF).
pub const ACPI_SCAN: core::ops::Range<u64> = 0xE_0000..0x10_0000;
/// Where the MP spec's BIOS-ROM scan looks for the floating pointer (§4: 0xF0000-0xFFFFF).
pub const MP_SCAN: core::ops::Range<u64> = 0xF_0000..0x10_0000;

/// The virtual platform the tables describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlatformDesc {
    /// vCPUs 0..vcpus, APIC ID = vCPU id; 1..=[`MAX_VCPUS`].
    pub vcpus: u32,
    /// Local APIC base (below 4 GiB; the MADT has no 64-bit override entry here).
    pub lapic_base: u64,
    /// I/O APIC base (below 4 GiB).
    pub ioapic_base: u64,
    /// I/O APIC ID: not a local APIC ID (so ≥ `vcpus`) and not 0xFF.
    pub ioapic_id: u8,
    /// I/O APIC input pins (GSIs 0..pins): 16..=256 (the ISA IRQs need pins 0..15; the
    /// version register's 8-bit "maximum redirection entry" allows 256).
    pub ioapic_pins: u32,
    /// `PM1a_EVT_BLK` (4 ports).
    pub pm1_evt_port: u16,
    /// `PM1a_CNT_BLK` (2 ports).
    pub pm1_cnt_port: u16,
    /// `PM_TMR_BLK` (4 ports).
    pub pm_tmr_port: u16,
    /// Whether the PM timer counts 32 bits (FADT `TMR_VAL_EXT`); the `hv-devices`
    /// model counts 24.
    pub pm_timer_32bit: bool,
    /// `SCI_INT`: an ISA IRQ, 1..=15 but not 2 (the cascade, and IRQ 0's pin).
    pub sci_irq: u8,
    /// `RESET_REG` (system I/O, 8 bits).
    pub reset_port: u16,
    /// `RESET_VALUE`.
    pub reset_value: u8,
    /// `SLP_TYPa` of `\_S5` (3 bits: 0..=7).
    pub s5_slp_typ: u8,
    /// FADT `CENTURY`: the RTC CMOS index of the century byte (0..=0x7F; 0 = none).
    pub century_cmos_index: u8,
    /// The ACPI fixed hardware is there (the guest has the `acpi-pm` device): the FADT
    /// gives the PM1a event, PM1a control and PM timer blocks. Without it the FADT
    /// declares a hardware-reduced ACPI platform (`HW_REDUCED_ACPI`, ACPI 6.5 §4.1) and
    /// gives none of them, so that OSPM does not drive ports nobody answers.
    pub fixed_hardware: bool,
    /// The reset register is there (with `reset_port` 0xCF9: the guest has the `pci`
    /// device, whose reset control register it is): FADT `RESET_REG_SUP` and
    /// `RESET_REG`. Without it both are 0.
    pub reset_register: bool,
    /// A PCI host bridge with configuration mechanism #1 is there (`pci`): the DSDT's
    /// `PCI0` root bus. Without it the DSDT has only `\_S5`.
    pub pci_host: bool,
    /// A dual 8259 is there (`pic`): MADT `PCAT_COMPAT`.
    pub legacy_pic: bool,
    /// OEMID of every ACPI table and the RSDP (also the MP table's OEM ID, space
    /// padded).
    pub oem_id: [u8; 6],
    /// OEM Table ID of every ACPI table (also the MP table's product ID, space padded).
    pub oem_table_id: [u8; 8],
}

impl PlatformDesc {
    /// The platform of `hv_abi::platform` with QEMU-PIIX4-like ACPI ports: LAPIC at
    /// 0xFEE0_0000, IOAPIC at 0xFEC0_0000 with 24 pins and ID `vcpus` (saturated at
    /// 255, which [`build`] refuses, as it does `vcpus` > [`MAX_VCPUS`]), PM1a event
    /// 0x600, PM1a control 0x604, PM timer 0x608 (24-bit), SCI on IRQ 9, reset 0x06
    /// to port 0xCF9, `\_S5` type [`DEFAULT_S5_SLP_TYP`] (5), century byte 0x32.
    #[must_use]
    pub fn pc_defaults(vcpus: u32) -> Self {
        Self {
            vcpus,
            lapic_base: hv_abi::platform::LAPIC_BASE,
            ioapic_base: hv_abi::platform::IOAPIC_BASE,
            ioapic_id: u8::try_from(vcpus).unwrap_or(u8::MAX),
            ioapic_pins: hv_abi::platform::IOAPIC_PINS,
            pm1_evt_port: DEFAULT_PM_BASE,
            pm1_cnt_port: DEFAULT_PM_BASE + 4,
            pm_tmr_port: DEFAULT_PM_BASE + 8,
            pm_timer_32bit: false,
            sci_irq: DEFAULT_SCI_IRQ,
            reset_port: DEFAULT_RESET_PORT,
            reset_value: DEFAULT_RESET_VALUE,
            s5_slp_typ: DEFAULT_S5_SLP_TYP,
            century_cmos_index: DEFAULT_CENTURY_CMOS_INDEX,
            fixed_hardware: true,
            reset_register: true,
            pci_host: true,
            legacy_pic: true,
            oem_id: *b"HVISOR",
            oem_table_id: *b"HVGUEST ",
        }
    }

    /// [`PlatformDesc::pc_defaults`] for a guest with `devices` (its config's
    /// `devices`): the tables describe only the hardware it has
    /// ([`PlatformDesc::fixed_hardware`] with `acpi-pm`, [`PlatformDesc::reset_register`]
    /// and [`PlatformDesc::pci_host`] with `pci`, [`PlatformDesc::legacy_pic`] with
    /// `pic`). With `"pc"` it is `pc_defaults`.
    #[must_use]
    pub fn for_devices(vcpus: u32, devices: hv_abi::platform::devices::DeviceSet) -> Self {
        Self {
            fixed_hardware: devices.has("acpi-pm"),
            reset_register: devices.has("pci"),
            pci_host: devices.has("pci"),
            legacy_pic: devices.has("pic"),
            ..Self::pc_defaults(vcpus)
        }
    }
}

/// Where [`build`] put each structure (guest-physical addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableLayout {
    /// Root System Description Pointer (revision 2, 36 bytes, 16-byte aligned).
    pub rsdp: u64,
    /// RSDT (32-bit entries; for ACPI 1.0 readers).
    pub rsdt: u64,
    /// XSDT.
    pub xsdt: u64,
    /// MADT ("APIC").
    pub madt: u64,
    /// FADT ("FACP").
    pub fadt: u64,
    /// FACS (64 bytes, 64-byte aligned).
    pub facs: u64,
    /// DSDT.
    pub dsdt: u64,
    /// MP floating pointer structure (16 bytes, 16-byte aligned).
    pub mp_floating: u64,
    /// MP configuration table ("PCMP").
    pub mp_config: u64,
    /// Bytes of the region written, from its start (gaps zeroed); the rest is untouched.
    pub used_bytes: usize,
}

/// Why [`build`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableError {
    /// The region cannot hold the tables at this placement.
    RegionTooSmall { need: usize, have: usize },
    /// `vcpus` was 0.
    NoVcpus,
    /// More vCPUs than 8-bit xAPIC IDs allow ([`MAX_VCPUS`]).
    TooManyVcpus(u32),
    /// The region's placement is unusable.
    BadRegion(&'static str),
    /// A [`PlatformDesc`] field is out of range.
    BadDesc(&'static str),
    /// A table's encoding disagreed with its planned size (a bug in this crate).
    Internal(&'static str),
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RegionTooSmall { need, have } => {
                write!(f, "platform table region too small: need {need} bytes, have {have}")
            }
            Self::NoVcpus => write!(f, "platform tables need at least one vCPU"),
            Self::TooManyVcpus(n) => {
                write!(f, "platform tables describe at most {MAX_VCPUS} vCPUs (xAPIC IDs), {n} requested")
            }
            Self::BadRegion(why) => write!(f, "unusable platform table region: {why}"),
            Self::BadDesc(why) => write!(f, "invalid platform description: {why}"),
            Self::Internal(what) => write!(f, "internal error while encoding the {what}"),
        }
    }
}

/// The highest guest-physical address (exclusive) the tables may occupy: every pointer
/// field they hold is 32-bit.
const ADDRESS_LIMIT: u64 = 1 << 32;

/// Sizes of the structures.
pub(crate) const RSDP_LEN: usize = 36;
/// The RSDP's slot: 36 bytes rounded up to the 16-byte alignment of what follows.
const RSDP_SLOT: usize = 48;
pub(crate) const MP_FLOATING_LEN: usize = 16;
/// RSDP slot + MP floating pointer.
const FLOATING_LEN: usize = RSDP_SLOT + MP_FLOATING_LEN;

/// Offsets (from the region start) and lengths of every structure.
#[derive(Debug, Clone, Copy)]
struct Plan {
    facs: usize,
    dsdt: usize,
    dsdt_len: usize,
    fadt: usize,
    madt: usize,
    madt_len: usize,
    xsdt: usize,
    rsdt: usize,
    mp_config: usize,
    mp_config_len: usize,
    /// Where the floating structures go at the earliest (16-byte aligned).
    tables_end: usize,
}

/// Checks every field of `desc` (see the field docs).
fn validate(desc: &PlatformDesc) -> Result<(), TableError> {
    let bad = |cond: bool, why| if cond { Err(TableError::BadDesc(why)) } else { Ok(()) };
    if desc.vcpus == 0 {
        return Err(TableError::NoVcpus);
    }
    if desc.vcpus > MAX_VCPUS {
        return Err(TableError::TooManyVcpus(desc.vcpus));
    }
    bad(desc.lapic_base == 0 || desc.lapic_base >= ADDRESS_LIMIT, "lapic_base must be non-zero and below 4 GiB")?;
    bad(desc.ioapic_base == 0 || desc.ioapic_base >= ADDRESS_LIMIT, "ioapic_base must be non-zero and below 4 GiB")?;
    bad(u32::from(desc.ioapic_id) < desc.vcpus, "ioapic_id must not be a local APIC ID (0..vcpus)")?;
    bad(desc.ioapic_id == 0xFF, "ioapic_id 0xFF is the broadcast ID")?;
    bad(!(16..=256).contains(&desc.ioapic_pins), "ioapic_pins must be 16..=256")?;
    bad(!(1..=15).contains(&desc.sci_irq) || desc.sci_irq == 2, "sci_irq must be an ISA IRQ 1..=15 other than 2")?;
    bad(desc.s5_slp_typ > 7, "s5_slp_typ must fit SLP_TYP (3 bits)")?;
    bad(desc.century_cmos_index > 0x7F, "century_cmos_index must be a CMOS index 0..=0x7F")?;
    bad(desc.reset_register && desc.reset_port == 0, "reset_port must be non-zero")?;
    if !desc.fixed_hardware {
        return Ok(());
    }
    // The PM blocks: non-zero, inside the 64 KiB port space, not overlapping.
    let blocks = [(desc.pm1_evt_port, 4u32), (desc.pm1_cnt_port, 2), (desc.pm_tmr_port, 4)];
    for &(port, len) in &blocks {
        bad(port == 0, "PM block ports must be non-zero")?;
        bad(u32::from(port) + len > 0x1_0000, "PM blocks must end within the I/O port space")?;
    }
    for (i, &(a, alen)) in blocks.iter().enumerate() {
        for &(b, blen) in &blocks[i + 1..] {
            let (a, b) = (u32::from(a), u32::from(b));
            bad(a < b + blen && b < a + alen, "PM blocks must not overlap")?;
        }
    }
    Ok(())
}

/// The first offset at or after `off` that lies on an `align`-byte guest-physical
/// boundary (`align` a power of two).
fn align_at(region_gpa: u64, off: usize, align: usize) -> usize {
    let misalign = ((region_gpa % align as u64) as usize + off % align) % align;
    off + (align - misalign) % align
}

/// Plans the tables for `desc` (validated) at `region_gpa`.
fn plan(desc: &PlatformDesc, region_gpa: u64) -> Result<Plan, TableError> {
    let n = desc.vcpus as usize; // ≤ MAX_VCPUS
    let facs = align_at(region_gpa, 0, 64);
    let dsdt = align_at(region_gpa, facs + acpi::FACS_LEN, 16);
    let dsdt_len = acpi::dsdt_len(desc)?;
    let fadt = align_at(region_gpa, dsdt + dsdt_len, 16);
    let madt = align_at(region_gpa, fadt + acpi::FADT_LEN, 16);
    let madt_len = acpi::madt_len(n);
    let xsdt = align_at(region_gpa, madt + madt_len, 16);
    let rsdt = align_at(region_gpa, xsdt + acpi::XSDT_LEN, 16);
    let mp_config = align_at(region_gpa, rsdt + acpi::RSDT_LEN, 16);
    let mp_config_len = mp::config_len(n);
    let tables_end = align_at(region_gpa, mp_config + mp_config_len, 16);
    Ok(Plan { facs, dsdt, dsdt_len, fadt, madt, madt_len, xsdt, rsdt, mp_config, mp_config_len, tables_end })
}

/// The smallest region [`build`] accepts for `desc` at guest-physical `region_gpa`
/// (it depends on the placement only through alignment padding).
///
/// # Errors
/// The `desc` errors of [`build`], and [`TableError::BadRegion`] if such a region would
/// not end at or below 4 GiB.
pub fn required_size(desc: &PlatformDesc, region_gpa: u64) -> Result<usize, TableError> {
    planned(desc, region_gpa).map(|(_, need)| need)
}

/// Validates `desc`, plans the tables at `region_gpa` and returns the plan with the
/// smallest region size.
fn planned(desc: &PlatformDesc, region_gpa: u64) -> Result<(Plan, usize), TableError> {
    validate(desc)?;
    let plan = plan(desc, region_gpa)?;
    let need = plan.tables_end + FLOATING_LEN;
    match region_gpa.checked_add(need as u64) {
        Some(end) if end <= ADDRESS_LIMIT => Ok((plan, need)),
        _ => Err(TableError::BadRegion("the tables must lie below 4 GiB (32-bit table pointers)")),
    }
}

/// Builds every table into `region`, which the guest sees at guest-physical `region_gpa`.
/// The RSDP and the MP floating pointer land on 16-byte boundaries; when `region_gpa..+len`
/// lies in 0xE0000..0x100000 (where legacy OSes scan) they are found by the scan (the MP
/// floating pointer only if the region reaches 0xF0040: see the crate docs).
///
/// # Errors
/// [`TableError::NoVcpus`], [`TableError::TooManyVcpus`] and [`TableError::BadDesc`] for
/// a bad `desc` (checked first); [`TableError::BadRegion`] if the region, or the
/// smallest region at `region_gpa`, does not end at or below 4 GiB;
/// [`TableError::RegionTooSmall`] if `region` is shorter than [`required_size`].
/// Nothing is written then.
pub fn build(desc: &PlatformDesc, region_gpa: u64, region: &mut [u8]) -> Result<TableLayout, TableError> {
    let (plan, need) = planned(desc, region_gpa)?;
    let region_end = match region_gpa.checked_add(region.len() as u64) {
        Some(end) if end <= ADDRESS_LIMIT => end,
        _ => return Err(TableError::BadRegion("the region must end at or below 4 GiB (32-bit table pointers)")),
    };
    if region.len() < need {
        return Err(TableError::RegionTooSmall { need, have: region.len() });
    }
    // The floating structures: right after the tables, or at 0xF0000 if the tables end
    // below it and the region covers 0xF0000..0xF0040 (crate docs).
    let tables_end_gpa = region_gpa + plan.tables_end as u64;
    let floating = if tables_end_gpa < MP_SCAN.start && region_end >= MP_SCAN.start + FLOATING_LEN as u64 {
        (MP_SCAN.start - region_gpa) as usize
    } else {
        plan.tables_end
    };
    let rsdp = floating;
    let mp_floating = floating + RSDP_SLOT;
    let used_bytes = floating + FLOATING_LEN;

    let gpa = |off: usize| region_gpa + off as u64;
    let layout = TableLayout {
        rsdp: gpa(rsdp),
        rsdt: gpa(plan.rsdt),
        xsdt: gpa(plan.xsdt),
        madt: gpa(plan.madt),
        fadt: gpa(plan.fadt),
        facs: gpa(plan.facs),
        dsdt: gpa(plan.dsdt),
        mp_floating: gpa(mp_floating),
        mp_config: gpa(plan.mp_config),
        used_bytes,
    };

    let used = region.get_mut(..used_bytes).ok_or(TableError::Internal("region"))?;
    used.fill(0);
    acpi::write_facs(table(used, plan.facs, acpi::FACS_LEN, "FACS")?)?;
    acpi::write_dsdt(table(used, plan.dsdt, plan.dsdt_len, "DSDT")?, desc)?;
    acpi::write_fadt(table(used, plan.fadt, acpi::FADT_LEN, "FADT")?, desc, &layout)?;
    acpi::write_madt(table(used, plan.madt, plan.madt_len, "MADT")?, desc)?;
    acpi::write_xsdt(table(used, plan.xsdt, acpi::XSDT_LEN, "XSDT")?, desc, &layout)?;
    acpi::write_rsdt(table(used, plan.rsdt, acpi::RSDT_LEN, "RSDT")?, desc, &layout)?;
    acpi::write_rsdp(table(used, rsdp, RSDP_LEN, "RSDP")?, desc, &layout)?;
    mp::write_config(table(used, plan.mp_config, plan.mp_config_len, "MP configuration table")?, desc)?;
    mp::write_floating(table(used, mp_floating, MP_FLOATING_LEN, "MP floating pointer")?, &layout)?;
    Ok(layout)
}

/// The `len` bytes at `off` of `region`, for one table.
fn table<'a>(region: &'a mut [u8], off: usize, len: usize, what: &'static str) -> Result<&'a mut [u8], TableError> {
    off.checked_add(len).and_then(|end| region.get_mut(off..end)).ok_or(TableError::Internal(what))
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::ToString;

    #[test]
    fn sizes_for_the_report() {
        // 64-byte aligned placement: no padding before the FACS.
        for (n, size) in [(1u32, 1008usize), (4, 1104), (254, 8096)] {
            assert_eq!(required_size(&PlatformDesc::pc_defaults(n), 0xF_0000), Ok(size), "{n} vCPUs");
        }
    }

    #[test]
    fn validation() {
        let ok = PlatformDesc::pc_defaults(4);
        assert!(validate(&ok).is_ok());
        let cases: [(PlatformDesc, TableError); 6] = [
            (PlatformDesc { vcpus: 0, ..ok }, TableError::NoVcpus),
            (PlatformDesc::pc_defaults(255), TableError::TooManyVcpus(255)),
            (
                PlatformDesc { ioapic_id: 3, ..ok },
                TableError::BadDesc("ioapic_id must not be a local APIC ID (0..vcpus)"),
            ),
            (PlatformDesc { sci_irq: 2, ..ok }, TableError::BadDesc("sci_irq must be an ISA IRQ 1..=15 other than 2")),
            (PlatformDesc { pm_tmr_port: 0x603, ..ok }, TableError::BadDesc("PM blocks must not overlap")),
            (
                PlatformDesc { pm_tmr_port: 0xFFFD, ..ok },
                TableError::BadDesc("PM blocks must end within the I/O port space"),
            ),
        ];
        for (desc, err) in cases {
            assert_eq!(validate(&desc), Err(err));
            let mut buf = [0xA5u8; 64];
            assert_eq!(build(&desc, 0xF_0000, &mut buf), Err(err));
            assert!(buf.iter().all(|&b| b == 0xA5), "nothing written on error");
        }
        // Adjacent blocks are fine.
        assert!(validate(&PlatformDesc { pm1_cnt_port: 0x604, pm_tmr_port: 0x606, ..ok }).is_ok());
    }

    #[test]
    fn errors_display_one_line() {
        let errors = [
            TableError::RegionTooSmall { need: 1088, have: 1000 },
            TableError::NoVcpus,
            TableError::TooManyVcpus(300),
            TableError::BadRegion("x"),
            TableError::BadDesc("y"),
            TableError::Internal("FADT"),
        ];
        for e in errors {
            let s = e.to_string();
            assert!(!s.is_empty() && !s.contains('\n'), "{s}");
        }
        assert_eq!(
            TableError::RegionTooSmall { need: 1088, have: 1000 }.to_string(),
            "platform table region too small: need 1088 bytes, have 1000"
        );
    }

    #[test]
    fn region_must_end_below_4_gib() {
        let desc = PlatformDesc::pc_defaults(1);
        let mut buf = [0u8; 2048];
        assert!(build(&desc, (1 << 32) - 2048, &mut buf).is_ok());
        assert!(matches!(build(&desc, (1 << 32) - 2047, &mut buf), Err(TableError::BadRegion(_))));
        assert!(matches!(build(&desc, u64::MAX - 100, &mut buf), Err(TableError::BadRegion(_))));
        assert!(matches!(required_size(&desc, u64::MAX), Err(TableError::BadRegion(_))));
    }

    #[test]
    fn floating_structures_move_to_the_f_segment() {
        let desc = PlatformDesc::pc_defaults(2);
        let mut buf = [0u8; 0x2_0000];
        // The whole legacy area: tables at 0xE0000, pointers at 0xF0000.
        let l = build(&desc, 0xE_0000, &mut buf).unwrap();
        assert_eq!((l.facs, l.rsdp, l.mp_floating), (0xE_0000, 0xF_0000, 0xF_0030));
        assert_eq!(l.used_bytes, 0x1_0040);
        // A region ending just short of 0xF0040: right after the tables.
        let l = build(&desc, 0xE_0000, &mut buf[..0x1_003F]).unwrap();
        assert!(l.rsdp < 0xF_0000);
        // In the F segment already: compact.
        let l = build(&desc, 0xF_0000, &mut buf).unwrap();
        assert_eq!(l.used_bytes, required_size(&desc, 0xF_0000).unwrap());
    }
}
