//! What the hypervisor takes from the firmware's ACPI tables, read through the
//! `acpi` crate: the processors (MADT), soft-off (FADT PM1 control + DSDT `\_S5`) and
//! whether a DMAR table (VT-d) exists.
//!
//! Generic over the `acpi` crate's [`AcpiHandler`], so the same code runs in the
//! kernel (direct map of physical memory) and in host tests (tables in a buffer).

use alloc::vec::Vec;

use acpi::address::{AddressSpace, GenericAddress};
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

/// What the hypervisor takes from ACPI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiInfo {
    pub bsp_apic_id: u32,
    /// Application processors that may be started, in MADT order (disabled ones left out).
    pub ap_apic_ids: Vec<u32>,
    pub dmar: bool,
    pub soft_off: Option<SoftOff>,
}

/// Reads the tables behind the RSDP at `rsdp`. `bytes(phys, len)` returns the bytes
/// at a physical address (for the DSDT's AML, which the crate does not interpret).
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
        soft_off: soft_off(&tables, bytes),
    })
}

fn soft_off<'a, H: AcpiHandler>(tables: &AcpiTables<H>, bytes: impl Fn(u64, usize) -> &'a [u8]) -> Option<SoftOff> {
    let fadt = tables.find_table::<acpi::fadt::Fadt>().ok()?;
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

    fn fadt_body(pm1a_cnt_port: u32) -> Vec<u8> {
        // FADT revision 1 layout up to PM1a_CNT_BLK (ACPI 6.5 table 5.9): FACS (36),
        // DSDT (40), ..., PM1a_EVT_BLK (56), PM1b_EVT_BLK (60), PM1a_CNT_BLK (64).
        let mut b = vec![0u8; 116 - 36];
        b[40 - 36..44 - 36].copy_from_slice(&(DSDT as u32).to_le_bytes());
        b[64 - 36..68 - 36].copy_from_slice(&pm1a_cnt_port.to_le_bytes());
        b[89 - 36] = 2; // PM1_CNT_LEN
        b
    }

    fn firmware(cpus: &[(u8, u8, u32)], with_dmar: bool) -> &'static [u8] {
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
        table(&mut mem, XSDT, b"XSDT", 1, &entries);
        table(&mut mem, MADT, b"APIC", 4, &madt_body(cpus));
        table(&mut mem, FADT, b"FACP", 1, &fadt_body(0x604));
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
}
