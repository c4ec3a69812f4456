//! The ACPI tables (ACPI 6.5 chapter 5; section numbers below refer to it).

use crate::aml;
use crate::out::{fix_checksum, Counter, Out, Sink};
use crate::{PlatformDesc, TableError, TableLayout, RSDP_LEN};

/// System description table header (§5.2.6): signature (0, 4), length (4,
/// 4), revision (8), checksum (9), OEMID (10, 6), OEM table ID (16, 8), OEM revision
/// (24, 4), creator ID (28, 4), creator revision (32, 4).
pub(crate) const HEADER_LEN: usize = 36;
const HEADER_CHECKSUM: usize = 9;
const OEM_REVISION: u32 = 1;
const CREATOR_ID: &[u8; 4] = b"HVTB";
const CREATOR_REVISION: u32 = 1;

pub(crate) const FACS_LEN: usize = 64;
pub(crate) const FADT_LEN: usize = 276;
/// XSDT: header + 2 × 64-bit entries (FADT, MADT).
pub(crate) const XSDT_LEN: usize = HEADER_LEN + 2 * 8;
/// RSDT: header + 2 × 32-bit entries (FADT, MADT).
pub(crate) const RSDT_LEN: usize = HEADER_LEN + 2 * 4;

/// FADT revision 6 with minor version 5: ACPI 6.5 (table 5.9).
const FADT_REVISION: u8 = 6;
const FADT_MINOR_VERSION: u8 = 5;
/// MADT revision 5: ACPI 6.3 and later (§5.2.12).
const MADT_REVISION: u8 = 5;
/// DSDT revision 2: integers are 64 bits (§5.2.11.1).
const DSDT_REVISION: u8 = 2;
/// FACS version 2 (§5.2.10).
const FACS_VERSION: u8 = 2;

// FADT flags (table 5.10).
/// `WBINVD`: the processors' WBINVD flushes all caches and keeps memory coherent; ACPI
/// requires it on every platform since 1.0 ("this value must be 1").
pub const FADT_WBINVD: u32 = 1 << 0;
/// `PROC_C1`: C1 (HLT) works on all processors; the hypervisor handles HLT.
pub const FADT_PROC_C1: u32 = 1 << 2;
/// `PWR_BUTTON`: 0 = a fixed-feature power button (PM1 `PWRBTN_STS`/`EN`), which the
/// PM model implements (`press_power_button`); so this bit stays 0.
pub const FADT_PWR_BUTTON: u32 = 1 << 4;
/// `SLP_BUTTON`: 1 = no fixed-feature sleep button (there is none, and no sleep state).
pub const FADT_SLP_BUTTON: u32 = 1 << 5;
/// `FIX_RTC`: 1 = the RTC wake status is not in the fixed registers: the PM model never
/// sets `RTC_STS` (no sleep states to wake from).
pub const FADT_FIX_RTC: u32 = 1 << 6;
/// `TMR_VAL_EXT`: the PM timer counts 32 bits (else 24).
pub const FADT_TMR_VAL_EXT: u32 = 1 << 8;
/// `RESET_REG_SUP`: `RESET_REG` and `RESET_VALUE` reset the system.
pub const FADT_RESET_REG_SUP: u32 = 1 << 10;
/// `FORCE_APIC_PHYSICAL_DESTINATION_MODE`: xAPIC logical flat mode addresses at most 8
/// processors, so with more vCPUs OSPM is told to use physical destinations.
pub const FADT_FORCE_APIC_PHYSICAL_DESTINATION_MODE: u32 = 1 << 19;
/// `HW_REDUCED_ACPI`: the platform has none of the ACPI fixed hardware (PM1 blocks, PM
/// timer); set when the guest has no `acpi-pm` device.
pub const FADT_HW_REDUCED_ACPI: u32 = 1 << 20;

/// The FADT `Flags` for `desc`: `WBINVD`, `PROC_C1`, `SLP_BUTTON` and `FIX_RTC`
/// always; `RESET_REG_SUP` with the reset register; `TMR_VAL_EXT` if the PM timer is
/// 32-bit; `HW_REDUCED_ACPI` without the fixed hardware;
/// `FORCE_APIC_PHYSICAL_DESTINATION_MODE` above 8 vCPUs. `PWR_BUTTON` is 0 (a fixed
/// power button). Not set: `WBINVD_FLUSH`, `P_LVL2_UP` (no C2), `RTC_S4`, `DCK_CAP`,
/// `SEALED_CASE`, `HEADLESS`, `CPU_SW_SLP`, `PCI_EXP_WAK`, `USE_PLATFORM_CLOCK`,
/// `S4_RTC_STS_VALID`, `REMOTE_POWER_ON_CAPABLE`, `FORCE_APIC_CLUSTER_MODEL` and
/// `LOW_POWER_S0_IDLE_CAPABLE`. See the `FADT_*` constants for each bit's reason.
#[must_use]
pub fn fadt_flags(desc: &PlatformDesc) -> u32 {
    let mut flags = FADT_WBINVD | FADT_PROC_C1 | FADT_SLP_BUTTON | FADT_FIX_RTC;
    if desc.reset_register {
        flags |= FADT_RESET_REG_SUP;
    }
    if !desc.fixed_hardware {
        flags |= FADT_HW_REDUCED_ACPI;
    }
    if desc.pm_timer_32bit {
        flags |= FADT_TMR_VAL_EXT;
    }
    if desc.vcpus > 8 {
        flags |= FADT_FORCE_APIC_PHYSICAL_DESTINATION_MODE;
    }
    flags
}

/// FADT `IAPC_BOOT_ARCH` (table 5.11): `LEGACY_DEVICES` (bit 0: ISA devices such as the
/// UART, PIT, PIC and RTC exist) and `VGA Not Present` (bit 2: nothing to probe). `8042`
/// (bit 1) stays clear: only the keyboard controller's reset command (0x64 <- 0xFE) is
/// modelled, not a PS/2 controller an OS could probe (Linux then skips the i8042
/// probe, which otherwise fails with "Can't read CTR"). MSI, PCIe ASPM and the CMOS RTC
/// are not declared absent.
pub const IAPC_BOOT_ARCH: u16 = (1 << 0) | (1 << 2);

// FADT field offsets (table 5.9).
const FADT_FIRMWARE_CTRL: usize = 36;
const FADT_DSDT: usize = 40;
const FADT_SCI_INT: usize = 46;
const FADT_SMI_CMD: usize = 48;
const FADT_PM1A_EVT_BLK: usize = 56;
const FADT_PM1A_CNT_BLK: usize = 64;
const FADT_PM_TMR_BLK: usize = 76;
const FADT_PM1_EVT_LEN: usize = 88;
const FADT_PM1_CNT_LEN: usize = 89;
const FADT_PM_TMR_LEN: usize = 91;
const FADT_P_LVL2_LAT: usize = 96;
const FADT_P_LVL3_LAT: usize = 98;
const FADT_CENTURY: usize = 108;
const FADT_IAPC_BOOT_ARCH: usize = 109;
const FADT_FLAGS: usize = 112;
const FADT_RESET_REG: usize = 116;
const FADT_RESET_VALUE: usize = 128;
const FADT_MINOR: usize = 131;
const FADT_X_DSDT: usize = 140;
const FADT_X_PM1A_EVT_BLK: usize = 148;
const FADT_X_PM1A_CNT_BLK: usize = 172;
const FADT_X_PM_TMR_BLK: usize = 208;

const PM1_EVT_LEN: u8 = 4;
const PM1_CNT_LEN: u8 = 2;
const PM_TMR_LEN: u8 = 4;
/// C2/C3 latencies above 100/1000 µs mean "not supported" (table 5.9).
const NO_C2_C3_LATENCY: u16 = 0x0FFF;

/// Generic Address Structure (§5.2.3.2): address space ID, register bit
/// width, bit offset, access size (1 byte, 2 word, 3 dword, 4 qword), 64-bit address.
const GAS_SYSTEM_IO: u8 = 1;
const ACCESS_BYTE: u8 = 1;
const ACCESS_WORD: u8 = 2;
const ACCESS_DWORD: u8 = 3;

fn gas_io(o: &mut Out<'_>, bit_width: u8, access: u8, port: u16) {
    o.bytes(&[GAS_SYSTEM_IO, bit_width, 0, access]);
    o.u64(u64::from(port));
}

/// A table address for a 32-bit field: [`crate::build`] keeps the region below 4 GiB.
fn addr32(gpa: u64, what: &'static str) -> Result<u32, TableError> {
    u32::try_from(gpa).map_err(|_| TableError::Internal(what))
}

/// The header, with the checksum left 0 for [`fix_checksum`].
fn header(o: &mut Out<'_>, signature: &[u8; 4], len: usize, revision: u8, desc: &PlatformDesc) {
    o.bytes(signature);
    match u32::try_from(len) {
        Ok(len) => o.u32(len),
        Err(_) => o.fail(),
    }
    o.u8(revision);
    o.u8(0);
    o.bytes(&desc.oem_id);
    o.bytes(&desc.oem_table_id);
    o.u32(OEM_REVISION);
    o.bytes(CREATOR_ID);
    o.u32(CREATOR_REVISION);
}

/// Ends a table written into exactly `table`: length check, then checksum.
fn finish(o: Out<'_>, len: usize, what: &'static str) -> Result<(), TableError> {
    o.finish(len, what)
}

/// RSDP (§5.2.5.3): signature (0, 8), checksum of bytes 0..20 (8), OEMID (9,
/// 6), revision (15), RsdtAddress (16, 4), length (20, 4), XsdtAddress (24, 8),
/// extended checksum of all 36 bytes (32), reserved (33, 3).
pub(crate) fn write_rsdp(buf: &mut [u8], desc: &PlatformDesc, layout: &TableLayout) -> Result<(), TableError> {
    let mut o = Out::new(buf);
    o.bytes(b"RSD PTR ");
    o.u8(0);
    o.bytes(&desc.oem_id);
    o.u8(2);
    o.u32(addr32(layout.rsdt, "RSDP")?);
    o.u32(RSDP_LEN as u32);
    o.u64(layout.xsdt);
    o.zeros(4);
    finish(o, RSDP_LEN, "RSDP")?;
    fix_checksum(buf.get_mut(..20).ok_or(TableError::Internal("RSDP"))?, 8, "RSDP")?;
    fix_checksum(buf, 32, "RSDP")
}

/// XSDT (§5.2.8): the FADT and the MADT, 64-bit addresses.
pub(crate) fn write_xsdt(buf: &mut [u8], desc: &PlatformDesc, layout: &TableLayout) -> Result<(), TableError> {
    let mut o = Out::new(buf);
    header(&mut o, b"XSDT", XSDT_LEN, 1, desc);
    o.u64(layout.fadt);
    o.u64(layout.madt);
    finish(o, XSDT_LEN, "XSDT")?;
    fix_checksum(buf, HEADER_CHECKSUM, "XSDT")
}

/// RSDT (§5.2.7): the same two tables, 32-bit addresses.
pub(crate) fn write_rsdt(buf: &mut [u8], desc: &PlatformDesc, layout: &TableLayout) -> Result<(), TableError> {
    let mut o = Out::new(buf);
    header(&mut o, b"RSDT", RSDT_LEN, 1, desc);
    o.u32(addr32(layout.fadt, "RSDT")?);
    o.u32(addr32(layout.madt, "RSDT")?);
    finish(o, RSDT_LEN, "RSDT")?;
    fix_checksum(buf, HEADER_CHECKSUM, "RSDT")
}

/// FACS (§5.2.10): signature (0), length (4), hardware signature (8),
/// firmware waking vector (12), global lock (16), flags (20), X firmware waking vector
/// (24, 8), version (32), reserved (33, 3), OSPM flags (36), reserved (40, 24). No
/// checksum.
pub(crate) fn write_facs(buf: &mut [u8]) -> Result<(), TableError> {
    let mut o = Out::new(buf);
    o.bytes(b"FACS");
    o.u32(FACS_LEN as u32);
    o.zeros(24); // hardware signature .. X firmware waking vector
    o.u8(FACS_VERSION);
    o.zeros(FACS_LEN - 33);
    finish(o, FACS_LEN, "FACS")
}

/// The FADT (see the crate docs and [`fadt_flags`]).
pub(crate) fn write_fadt(buf: &mut [u8], desc: &PlatformDesc, layout: &TableLayout) -> Result<(), TableError> {
    let mut o = Out::new(buf);
    header(&mut o, b"FACP", FADT_LEN, FADT_REVISION, desc);
    // FIRMWARE_CTRL only: "if X_FIRMWARE_CTRL contains a non-zero value then this field
    // must be zero", and the 32-bit field also serves ACPI 1.0 readers.
    o.seek(FADT_FIRMWARE_CTRL);
    o.u32(addr32(layout.facs, "FADT")?);
    o.seek(FADT_DSDT);
    o.u32(addr32(layout.dsdt, "FADT")?);
    o.seek(FADT_SCI_INT);
    o.u16(u16::from(desc.sci_irq));
    o.seek(FADT_SMI_CMD);
    o.u32(0); // no SMM: the platform is always in ACPI mode (SCI_EN reads 1)
    if desc.fixed_hardware {
        o.seek(FADT_PM1A_EVT_BLK);
        o.u32(u32::from(desc.pm1_evt_port));
        o.seek(FADT_PM1A_CNT_BLK);
        o.u32(u32::from(desc.pm1_cnt_port));
        o.seek(FADT_PM_TMR_BLK);
        o.u32(u32::from(desc.pm_tmr_port));
        o.seek(FADT_PM1_EVT_LEN);
        o.u8(PM1_EVT_LEN);
        o.seek(FADT_PM1_CNT_LEN);
        o.u8(PM1_CNT_LEN);
        o.seek(FADT_PM_TMR_LEN);
        o.u8(PM_TMR_LEN);
    }
    o.seek(FADT_P_LVL2_LAT);
    o.u16(NO_C2_C3_LATENCY);
    o.seek(FADT_P_LVL3_LAT);
    o.u16(NO_C2_C3_LATENCY);
    o.seek(FADT_CENTURY);
    o.u8(desc.century_cmos_index);
    o.seek(FADT_IAPC_BOOT_ARCH);
    o.u16(IAPC_BOOT_ARCH);
    o.seek(FADT_FLAGS);
    o.u32(fadt_flags(desc));
    if desc.reset_register {
        o.seek(FADT_RESET_REG);
        gas_io(&mut o, 8, ACCESS_BYTE, desc.reset_port);
        o.seek(FADT_RESET_VALUE);
        o.u8(desc.reset_value);
    }
    o.seek(FADT_MINOR);
    o.u8(FADT_MINOR_VERSION);
    o.seek(FADT_X_DSDT);
    o.u64(layout.dsdt);
    if desc.fixed_hardware {
        o.seek(FADT_X_PM1A_EVT_BLK);
        gas_io(&mut o, PM1_EVT_LEN * 8, ACCESS_WORD, desc.pm1_evt_port);
        o.seek(FADT_X_PM1A_CNT_BLK);
        gas_io(&mut o, PM1_CNT_LEN * 8, ACCESS_WORD, desc.pm1_cnt_port);
        o.seek(FADT_X_PM_TMR_BLK);
        gas_io(&mut o, PM_TMR_LEN * 8, ACCESS_DWORD, desc.pm_tmr_port);
    }
    // Everything else (PM1b, PM2, GPE blocks, sleep registers, hypervisor vendor
    // identity, and what `desc` says is absent) stays zero: the region was zeroed.
    o.seek(FADT_LEN);
    finish(o, FADT_LEN, "FADT")?;
    fix_checksum(buf, HEADER_CHECKSUM, "FADT")
}

// MADT (§5.2.12): header, local interrupt controller address (36, 4), flags
// (40, 4), then interrupt controller structures.
const MADT_PCAT_COMPAT: u32 = 1 << 0;
/// Processor Local APIC (§5.2.12.2): type 0, length 8, ACPI processor UID,
/// APIC ID, flags (4: bit 0 enabled, bit 1 online capable).
const MADT_LOCAL_APIC_LEN: usize = 8;
const LOCAL_APIC_ENABLED: u32 = 1 << 0;
/// I/O APIC (§5.2.12.3): type 1, length 12, I/O APIC ID, reserved, address
/// (4), GSI base (4).
const MADT_IO_APIC_LEN: usize = 12;
/// Interrupt Source Override (§5.2.12.5): type 2, length 10, bus (0 = ISA),
/// source IRQ, GSI (4), MPS INTI flags (2).
const MADT_ISO_LEN: usize = 10;
/// Local APIC NMI (§5.2.12.7): type 4, length 6, ACPI processor UID (0xFF =
/// all), MPS INTI flags (2), LINT#.
const MADT_LAPIC_NMI_LEN: usize = 6;
/// MPS INTI flags (§5.2.12.5): polarity bits 1:0 (01 active high), trigger mode bits
/// 3:2 (01 edge, 11 level).
pub(crate) const INTI_EDGE_HIGH: u16 = 0b0101;
pub(crate) const INTI_LEVEL_HIGH: u16 = 0b1101;
/// The timer (ISA IRQ 0) is wired to I/O APIC pin 2, as on PCs.
pub(crate) const TIMER_IRQ_PIN: u8 = 2;

pub(crate) fn madt_len(vcpus: usize) -> usize {
    HEADER_LEN + 8 + vcpus * MADT_LOCAL_APIC_LEN + MADT_IO_APIC_LEN + 2 * MADT_ISO_LEN + MADT_LAPIC_NMI_LEN
}

pub(crate) fn write_madt(buf: &mut [u8], desc: &PlatformDesc) -> Result<(), TableError> {
    let len = madt_len(desc.vcpus as usize);
    let mut o = Out::new(buf);
    header(&mut o, b"APIC", len, MADT_REVISION, desc);
    o.u32(addr32(desc.lapic_base, "MADT")?);
    o.u32(if desc.legacy_pic { MADT_PCAT_COMPAT } else { 0 });
    for id in 0..desc.vcpus {
        let id = u8::try_from(id).map_err(|_| TableError::Internal("MADT"))?;
        o.bytes(&[0, MADT_LOCAL_APIC_LEN as u8, id, id]);
        o.u32(LOCAL_APIC_ENABLED);
    }
    o.bytes(&[1, MADT_IO_APIC_LEN as u8, desc.ioapic_id, 0]);
    o.u32(addr32(desc.ioapic_base, "MADT")?);
    o.u32(0); // GSI base
    for (irq, gsi, flags) in [(0, TIMER_IRQ_PIN, INTI_EDGE_HIGH), (desc.sci_irq, desc.sci_irq, INTI_LEVEL_HIGH)] {
        o.bytes(&[2, MADT_ISO_LEN as u8, 0, irq]);
        o.u32(u32::from(gsi));
        o.u16(flags);
    }
    o.bytes(&[4, MADT_LAPIC_NMI_LEN as u8, 0xFF]);
    o.u16(INTI_EDGE_HIGH);
    o.u8(1); // LINT1
    finish(o, len, "MADT")?;
    fix_checksum(buf, HEADER_CHECKSUM, "MADT")
}

/// PCI0's `_CRS`: bus numbers 0-255, the configuration mechanism's ports 0xCF8-0xCFF,
/// and the I/O space around them as the root bus's windows. No memory window: the bus
/// has only the host bridge, which has no BARs.
fn pci0_resources() -> [u8; 16 + 8 + 16 + 16 + 2] {
    let mut out = [0u8; 58];
    let parts: [&[u8]; 5] = [
        &aml::word_address_space(2, 0x00, 0xFF),
        &aml::io_port(0x0CF8, 8),
        &aml::word_address_space(1, 0x0000, 0x0CF7),
        &aml::word_address_space(1, 0x0D00, 0xFFFF),
        &aml::END_TAG,
    ];
    let mut at = 0;
    for part in parts {
        out[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    out
}

/// The DSDT's AML (see the crate docs).
fn dsdt_aml(s: &mut dyn Sink, desc: &PlatformDesc) {
    let typ = u64::from(desc.s5_slp_typ);
    aml::name_package(s, b"\\_S5_", &[typ, typ, 0, 0]);
    if !desc.pci_host {
        return;
    }
    aml::scope(s, b"\\_SB_", &|s| {
        aml::device(s, b"PCI0", &|s| {
            aml::name_integer(s, b"_HID", u64::from(aml::eisa_id(b"PNP0A03")));
            aml::name_integer(s, b"_UID", 0);
            aml::name_integer(s, b"_BBN", 0);
            aml::name_buffer(s, b"_CRS", &pci0_resources());
        });
    });
}

pub(crate) fn dsdt_len(desc: &PlatformDesc) -> Result<usize, TableError> {
    let mut c = Counter::default();
    dsdt_aml(&mut c, desc);
    if c.failed {
        return Err(TableError::Internal("DSDT"));
    }
    Ok(HEADER_LEN + c.len)
}

pub(crate) fn write_dsdt(buf: &mut [u8], desc: &PlatformDesc) -> Result<(), TableError> {
    let len = buf.len();
    let mut o = Out::new(buf);
    header(&mut o, b"DSDT", len, DSDT_REVISION, desc);
    dsdt_aml(&mut o, desc);
    finish(o, len, "DSDT")?;
    fix_checksum(buf, HEADER_CHECKSUM, "DSDT")
}
