//! What the hypervisor takes from the firmware's ACPI tables, read through the
//! `acpi` crate: the processors (MADT), soft-off (FADT PM1 control + DSDT `\_S5`),
//! whether a DMAR table (VT-d) exists, and the reference clocks for the TSC
//! calibration: the ACPI PM timer (FADT) and the HPET (HPET table).
//!
//! Generic over the `acpi` crate's [`AcpiHandler`], so the same code runs in the
//! kernel (direct map of physical memory) and in host tests (tables in a buffer).

use alloc::vec::Vec;

use acpi::address::{AddressSpace, GenericAddress};
use acpi::fadt::Fadt;
use acpi::hpet::HpetTable;
use acpi::platform::ProcessorState;
use acpi::sdt::Signature;
use acpi::{AcpiError, AcpiHandler, AcpiTables};

use crate::acpi_s5::{find_s5, SleepTypes};

/// Where and how to request S5 (soft-off), ACPI 6.5 section 16.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoftOff {
    pub pm1a_control: GenericAddress,
    pub pm1b_control: Option<GenericAddress>,
    pub sleep_types: SleepTypes,
}

/// Where a fixed hardware register is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Register {
    /// An I/O port.
    Port(u16),
    /// The physical address of a memory-mapped register.
    Memory(u64),
}

/// The ACPI power-management timer: a free-running up-counter at 3.579545 MHz
/// (ACPI 6.5 section 4.8.3.3), read as a 32-bit register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PmTimer {
    pub register: Register,
    /// Counter width: 32 when the FADT flag TMR_VAL_EXT (bit 8) is set, else 24 (the
    /// upper 8 bits then read as 0); ACPI 6.5 table 5.10.
    pub bits: u32,
}

/// The HPET event timer block (IA-PC HPET spec 1.0a section 3.2.4, table 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hpet {
    /// Physical address of the 1 KiB register block (system memory).
    pub base: u64,
}

/// What the hypervisor takes from ACPI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiInfo {
    pub bsp_apic_id: u32,
    /// Application processors that may be started, in MADT order (disabled ones left out).
    pub ap_apic_ids: Vec<u32>,
    pub dmar: bool,
    pub soft_off: Option<SoftOff>,
    pub pm_timer: Option<PmTimer>,
    pub hpet: Option<Hpet>,
}

/// FADT field offsets (ACPI 6.5 table 5.9): PM_TMR_BLK, the PM timer's I/O port
/// (4 bytes), used when X_PM_TMR_BLK is zero or unusable.
const FADT_PM_TMR_BLK: u64 = 76;
/// HPET table (IA-PC HPET spec 1.0a section 3.2.4, table 3): the SDT header, Event
/// Timer Block ID (offset 36, 4 bytes), then BASE_ADDRESS as a Generic Address Structure
/// (offset 40, 12 bytes: address space ID, bit width, bit offset, access size, address
/// at +4), HPET number (52), minimum clock tick (53, 2 bytes), page protection (55).
const HPET_TABLE_LEN: usize = 56;
const HPET_BASE_GAS: usize = 40;
/// Generic Address Structure address space ID 0: system memory (ACPI 6.5 table 5.1).
const GAS_SYSTEM_MEMORY: u8 = 0;

/// Reads the tables behind the RSDP at `rsdp`. `bytes(phys, len)` returns the bytes
/// at a physical address within a table (for the DSDT's AML, which the crate does not
/// interpret, and for FADT and HPET fields the crate does not expose safely).
///
/// # Safety
/// `rsdp` must be the firmware's RSDP address and `handler` must map physical memory
/// that holds the tables.
pub unsafe fn read<'a, H: AcpiHandler>(
    handler: H,
    rsdp: usize,
    bytes: impl Fn(u64, usize) -> &'a [u8],
) -> Result<AcpiInfo, AcpiError> {
    // SAFETY: forwarded to the caller's contract.
    let tables = unsafe { AcpiTables::from_rsdp(handler, rsdp)? };
    let platform = tables.platform_info()?;
    let processors = platform.processor_info.ok_or(AcpiError::TableMissing(Signature::MADT))?;
    let ap_apic_ids = processors
        .application_processors
        .iter()
        .filter(|p| p.state != ProcessorState::Disabled)
        .map(|p| p.local_apic_id)
        .collect();
    let dmar = tables.headers().any(|h| h.signature == Signature::DMAR);
    Ok(AcpiInfo {
        bsp_apic_id: processors.boot_processor.local_apic_id,
        ap_apic_ids,
        dmar,
        soft_off: soft_off(&tables, &bytes),
        pm_timer: pm_timer(&tables, &bytes),
        hpet: hpet(&tables, &bytes),
    })
}

fn soft_off<'a, H: AcpiHandler>(tables: &AcpiTables<H>, bytes: &impl Fn(u64, usize) -> &'a [u8]) -> Option<SoftOff> {
    let fadt = tables.find_table::<Fadt>().ok()?;
    let pm1a_control = fadt.pm1a_control_block().ok()?;
    let pm1b_control = fadt.pm1b_control_block().ok().flatten();
    let dsdt = tables.dsdt().ok()?;
    let sleep_types = find_s5(bytes(dsdt.address as u64, dsdt.length as usize))?;
    matches!(pm1a_control.address_space, AddressSpace::SystemIo | AddressSpace::SystemMemory).then_some(SoftOff {
        pm1a_control,
        pm1b_control,
        sleep_types,
    })
}

/// The PM timer from the FADT: X_PM_TMR_BLK when it is non-zero and in system I/O or
/// system memory, else the PM_TMR_BLK port. None when PM_TMR_LEN is not 4 (no PM timer,
/// ACPI 6.5 table 5.9) or on hardware-reduced ACPI (flag HW_REDUCED_ACPI, bit 20 of
/// table 5.10: the PM timer fields are ignored there).
fn pm_timer<'a, H: AcpiHandler>(tables: &AcpiTables<H>, bytes: &impl Fn(u64, usize) -> &'a [u8]) -> Option<PmTimer> {
    let fadt = tables.find_table::<Fadt>().ok()?;
    let flags = { fadt.flags };
    if flags.system_is_hw_reduced_acpi() {
        return None;
    }
    // The crate checks PM_TMR_LEN == 4 and returns X_PM_TMR_BLK when its address is
    // non-zero (FADT revision >= 2), else PM_TMR_BLK as a port; an X_PM_TMR_BLK with a
    // malformed address space or access size is an error.
    let legacy = || {
        let field = bytes(fadt.physical_start() as u64 + FADT_PM_TMR_BLK, 4);
        let port = u32::from_le_bytes(field.try_into().ok()?);
        u16::try_from(port).ok().filter(|&p| p != 0).map(Register::Port)
    };
    let register = match fadt.pm_timer_block() {
        Ok(None) => return None,
        Ok(Some(gas)) => usable_register(&gas).or_else(legacy)?,
        Err(_) => legacy()?,
    };
    Some(PmTimer { register, bits: if flags.pm_timer_is_32_bit() { 32 } else { 24 } })
}

/// A register the kernel can read: a non-zero port or memory address.
fn usable_register(gas: &GenericAddress) -> Option<Register> {
    match gas.address_space {
        AddressSpace::SystemIo => u16::try_from(gas.address).ok().filter(|&p| p != 0).map(Register::Port),
        AddressSpace::SystemMemory => (gas.address != 0).then_some(Register::Memory(gas.address)),
        _ => None,
    }
}

/// The HPET's register block from the HPET table. Parsed here rather than through
/// `acpi::HpetInfo`, which asserts (panics) when the block is not in system memory.
fn hpet<'a, H: AcpiHandler>(tables: &AcpiTables<H>, bytes: &impl Fn(u64, usize) -> &'a [u8]) -> Option<Hpet> {
    let table = tables.find_table::<HpetTable>().ok()?;
    if table.region_length() < HPET_TABLE_LEN {
        return None;
    }
    let raw = bytes(table.physical_start() as u64, HPET_TABLE_LEN);
    let gas = raw.get(HPET_BASE_GAS..HPET_BASE_GAS + 12)?;
    let base = u64::from_le_bytes(gas[4..12].try_into().ok()?);
    (gas[0] == GAS_SYSTEM_MEMORY && base != 0).then_some(Hpet { base })
}

#[cfg(test)]
mod tests {
    //! Synthetic firmware tables in a buffer whose offsets stand for physical addresses.
    use super::*;
    use alloc::vec;
    use core::ptr::NonNull;

    use acpi::PhysicalMapping;

    #[derive(Clone, Copy, Debug)]
    struct Buffer(*const u8);

    impl AcpiHandler for Buffer {
        unsafe fn map_physical_region<T>(&self, phys: usize, size: usize) -> PhysicalMapping<Self, T> {
            // SAFETY: test tables live in a leaked buffer large enough for every table.
            unsafe { PhysicalMapping::new(phys, NonNull::new(self.0.add(phys) as *mut T).unwrap(), size, size, *self) }
        }
        fn unmap_physical_region<T>(_: &PhysicalMapping<Self, T>) {}
    }

    const RSDP: usize = 0x40;
    const XSDT: usize = 0x100;
    const MADT: usize = 0x200;
    const FADT: usize = 0x400;
    const DSDT: usize = 0x600;
    const DMAR: usize = 0x700;
    const HPET: usize = 0x800;

    fn put(mem: &mut [u8], at: usize, bytes: &[u8]) {
        mem[at..at + bytes.len()].copy_from_slice(bytes);
    }

    /// Fixes the checksum byte so that the bytes sum to zero.
    fn checksum(mem: &mut [u8], start: usize, len: usize, at: usize) {
        mem[at] = 0;
        let sum = mem[start..start + len].iter().fold(0u8, |a, b| a.wrapping_add(*b));
        mem[at] = 0u8.wrapping_sub(sum);
    }

    /// An SDT header (36 bytes) followed by `body`, checksummed.
    fn table(mem: &mut [u8], at: usize, sig: &[u8; 4], revision: u8, body: &[u8]) {
        let len = 36 + body.len();
        put(mem, at, sig);
        put(mem, at + 4, &(len as u32).to_le_bytes());
        mem[at + 8] = revision;
        put(mem, at + 10, b"HVTEST");
        put(mem, at + 16, b"HVTABLES");
        put(mem, at + 36, body);
        checksum(mem, at, len, at + 9);
    }

    /// MADT with local APIC entries (type 0): (processor uid, apic id, flags).
    fn madt_body(cpus: &[(u8, u8, u32)]) -> Vec<u8> {
        let mut b = vec![];
        b.extend_from_slice(&0xfee0_0000u32.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes()); // PCAT_COMPAT
        for &(uid, id, flags) in cpus {
            b.extend_from_slice(&[0, 8, uid, id]);
            b.extend_from_slice(&flags.to_le_bytes());
        }
        b
    }

    /// What the synthetic FADT and HPET table say about the reference clocks.
    #[derive(Clone, Copy)]
    struct Clocks {
        /// FADT revision: 1 (116 bytes, no X_ fields) or 6 (276 bytes).
        fadt_revision: u8,
        pm_tmr_blk: u32,
        pm_tmr_len: u8,
        /// FADT Flags (ACPI 6.5 table 5.10).
        flags: u32,
        /// X_PM_TMR_BLK: (address space ID, address); only in revision 6.
        x_pm_tmr_blk: Option<(u8, u64)>,
        /// HPET table BASE_ADDRESS: (address space ID, address).
        hpet: Option<(u8, u64)>,
    }

    /// What QEMU's q35/i440fx firmware describes: PM timer at port 0x608, 24-bit, HPET at
    /// 0xFED0_0000.
    const QEMU_LIKE: Clocks = Clocks {
        fadt_revision: 1,
        pm_tmr_blk: 0x608,
        pm_tmr_len: 4,
        flags: 0,
        x_pm_tmr_blk: None,
        hpet: Some((0, 0xfed0_0000)),
    };
    const TMR_VAL_EXT: u32 = 1 << 8;
    const HW_REDUCED_ACPI: u32 = 1 << 20;

    fn fadt_body(pm1a_cnt_port: u32, clocks: &Clocks) -> Vec<u8> {
        // FADT layout (ACPI 6.5 table 5.9): FACS (36), DSDT (40), ..., PM1a_EVT_BLK (56),
        // PM1b_EVT_BLK (60), PM1a_CNT_BLK (64), ..., PM_TMR_BLK (76), ..., PM1_CNT_LEN (89),
        // PM_TMR_LEN (91), ..., Flags (112); revision 2+: ..., X_PM_TMR_BLK (208), ... (276).
        let len = if clocks.fadt_revision >= 2 { 276 } else { 116 };
        let mut b = vec![0u8; len - 36];
        let mut at = |offset: usize, bytes: &[u8]| b[offset - 36..offset - 36 + bytes.len()].copy_from_slice(bytes);
        at(40, &(DSDT as u32).to_le_bytes());
        at(64, &pm1a_cnt_port.to_le_bytes());
        at(76, &clocks.pm_tmr_blk.to_le_bytes());
        at(89, &[2]); // PM1_CNT_LEN
        at(91, &[clocks.pm_tmr_len]);
        at(112, &clocks.flags.to_le_bytes());
        if let Some((space, address)) = clocks.x_pm_tmr_blk {
            at(208, &[space, 32, 0, 3]); // 32 bits wide, offset 0, dword access
            at(212, &address.to_le_bytes());
        }
        b
    }

    /// HPET table body (IA-PC HPET spec 1.0a table 3) after the SDT header.
    fn hpet_body(space: u8, address: u64) -> Vec<u8> {
        let mut b = vec![];
        b.extend_from_slice(&0x8086_a201u32.to_le_bytes()); // Event Timer Block ID
        b.extend_from_slice(&[space, 64, 0, 0]);
        b.extend_from_slice(&address.to_le_bytes());
        b.extend_from_slice(&[0, 0x80, 0, 0]); // HPET number, min tick, page protection
        b
    }

    fn firmware(cpus: &[(u8, u8, u32)], with_dmar: bool) -> &'static [u8] {
        firmware_with(cpus, with_dmar, &QEMU_LIKE)
    }

    fn firmware_with(cpus: &[(u8, u8, u32)], with_dmar: bool, clocks: &Clocks) -> &'static [u8] {
        let mut mem = vec![0u8; 0x1000];
        // RSDP revision 2 (ACPI 6.5 table 5.3).
        put(&mut mem, RSDP, b"RSD PTR ");
        put(&mut mem, RSDP + 9, b"HVTEST");
        mem[RSDP + 15] = 2;
        put(&mut mem, RSDP + 20, &36u32.to_le_bytes());
        put(&mut mem, RSDP + 24, &(XSDT as u64).to_le_bytes());
        checksum(&mut mem, RSDP, 20, RSDP + 8);
        checksum(&mut mem, RSDP, 36, RSDP + 32);

        let mut entries: Vec<u8> = [MADT, FADT].iter().flat_map(|a| (*a as u64).to_le_bytes()).collect();
        if with_dmar {
            entries.extend_from_slice(&(DMAR as u64).to_le_bytes());
            table(&mut mem, DMAR, b"DMAR", 1, &[39, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        }
        if let Some((space, address)) = clocks.hpet {
            entries.extend_from_slice(&(HPET as u64).to_le_bytes());
            table(&mut mem, HPET, b"HPET", 1, &hpet_body(space, address));
        }
        table(&mut mem, XSDT, b"XSDT", 1, &entries);
        table(&mut mem, MADT, b"APIC", 4, &madt_body(cpus));
        table(&mut mem, FADT, b"FACP", clocks.fadt_revision, &fadt_body(0x604, clocks));
        let aml = [0x08, b'_', b'S', b'5', b'_', 0x12, 0x06, 0x04, 0x0a, 0x05, 0x00, 0x00, 0x00];
        table(&mut mem, DSDT, b"DSDT", 2, &aml);
        Vec::leak(mem)
    }

    fn read_fw(mem: &'static [u8]) -> Result<AcpiInfo, AcpiError> {
        // SAFETY: `mem` holds complete, checksummed tables at the offsets used.
        unsafe { read(Buffer(mem.as_ptr()), RSDP, |phys, len| &mem[phys as usize..phys as usize + len]) }
    }

    #[test]
    fn madt_processors_and_soft_off() {
        let info = read_fw(firmware(&[(0, 0, 1), (1, 2, 1), (2, 4, 0), (3, 6, 1)], false)).unwrap();
        assert_eq!(info.bsp_apic_id, 0);
        // APIC ID 4 is disabled (flags bit 0 clear) and must not be started.
        assert_eq!(info.ap_apic_ids, [2, 6]);
        assert!(!info.dmar);
        let off = info.soft_off.unwrap();
        assert_eq!(off.pm1a_control.address_space, AddressSpace::SystemIo);
        assert_eq!(off.pm1a_control.address, 0x604);
        assert_eq!(off.pm1b_control, None);
        assert_eq!(off.sleep_types, SleepTypes { slp_typ_a: 5, slp_typ_b: 0 });
    }

    #[test]
    fn single_cpu_with_dmar() {
        let info = read_fw(firmware(&[(0, 0, 1)], true)).unwrap();
        assert!(info.ap_apic_ids.is_empty());
        assert!(info.dmar);
    }

    #[test]
    fn bad_checksum_is_an_error_not_a_crash() {
        let mem = firmware(&[(0, 0, 1), (1, 1, 1)], false);
        let mut copy = mem.to_vec();
        copy[RSDP + 8] ^= 0xff;
        assert!(read_fw(Vec::leak(copy)).is_err());
    }

    fn clocks_of(clocks: Clocks) -> (Option<PmTimer>, Option<Hpet>) {
        let info = read_fw(firmware_with(&[(0, 0, 1)], false, &clocks)).unwrap();
        (info.pm_timer, info.hpet)
    }

    #[test]
    fn pm_timer_port_and_hpet() {
        let (pm, hpet) = clocks_of(QEMU_LIKE);
        assert_eq!(pm, Some(PmTimer { register: Register::Port(0x608), bits: 24 }));
        assert_eq!(hpet, Some(Hpet { base: 0xfed0_0000 }));
        let (pm, _) = clocks_of(Clocks { flags: TMR_VAL_EXT, ..QEMU_LIKE });
        assert_eq!(pm, Some(PmTimer { register: Register::Port(0x608), bits: 32 }));
    }

    #[test]
    fn x_pm_tmr_blk_wins_when_usable() {
        let rev6 = Clocks { fadt_revision: 6, flags: TMR_VAL_EXT, ..QEMU_LIKE };
        // Revision 6 with X_PM_TMR_BLK zero: the 32-bit field.
        assert_eq!(clocks_of(rev6).0, Some(PmTimer { register: Register::Port(0x608), bits: 32 }));
        // System I/O (space 1) at another port.
        let (pm, _) = clocks_of(Clocks { x_pm_tmr_blk: Some((1, 0x1808)), ..rev6 });
        assert_eq!(pm, Some(PmTimer { register: Register::Port(0x1808), bits: 32 }));
        // System memory (space 0).
        let (pm, _) = clocks_of(Clocks { x_pm_tmr_blk: Some((0, 0xfe00_0408)), ..rev6 });
        assert_eq!(pm, Some(PmTimer { register: Register::Memory(0xfe00_0408), bits: 32 }));
        // PCI configuration space (2) is no place for a PM timer, and an I/O address
        // beyond 16 bits is no port: PM_TMR_BLK.
        for x in [(2, 0x1808), (1, 0x1_0000)] {
            let (pm, _) = clocks_of(Clocks { x_pm_tmr_blk: Some(x), ..rev6 });
            assert_eq!(pm, Some(PmTimer { register: Register::Port(0x608), bits: 32 }), "{x:?}");
        }
        // Unusable X_PM_TMR_BLK and no PM_TMR_BLK: none.
        let (pm, _) = clocks_of(Clocks { x_pm_tmr_blk: Some((2, 0x1808)), pm_tmr_blk: 0, ..rev6 });
        assert_eq!(pm, None);
    }

    #[test]
    fn no_pm_timer() {
        // PM_TMR_LEN must be 4 when there is a PM timer.
        assert_eq!(clocks_of(Clocks { pm_tmr_len: 0, ..QEMU_LIKE }).0, None);
        assert_eq!(clocks_of(Clocks { pm_tmr_blk: 0, ..QEMU_LIKE }).0, None);
        // Hardware-reduced ACPI ignores the PM timer fields.
        assert_eq!(clocks_of(Clocks { flags: HW_REDUCED_ACPI | TMR_VAL_EXT, ..QEMU_LIKE }).0, None);
    }

    #[test]
    fn hpet_absent_or_unusable() {
        assert_eq!(clocks_of(Clocks { hpet: None, ..QEMU_LIKE }).1, None);
        // In system I/O space (invalid per the HPET spec): refused without a panic.
        assert_eq!(clocks_of(Clocks { hpet: Some((1, 0xfed0_0000)), ..QEMU_LIKE }).1, None);
        assert_eq!(clocks_of(Clocks { hpet: Some((0, 0)), ..QEMU_LIKE }).1, None);
    }
}
