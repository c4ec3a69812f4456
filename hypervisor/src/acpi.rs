//! Reading the firmware's ACPI tables (through the `acpi` crate): the MADT for the
//! processors, the FADT and DSDT for soft-off, and whether a DMAR (VT-d) table exists.
//! Under Bochs + OVMF there are no tables; callers handle `None`.

use alloc::vec::Vec;
use core::ptr::NonNull;

use acpi::address::{AddressSpace, GenericAddress};
use acpi::platform::ProcessorState;
use acpi::sdt::Signature;
use acpi::{AcpiHandler, AcpiTables, PhysicalMapping};
use hv_core::acpi_s5::{find_s5, SleepTypes};

use crate::mm::frames;

/// Maps ACPI tables through the direct map of physical memory.
#[derive(Clone, Copy, Debug)]
struct DirectMap;

impl AcpiHandler for DirectMap {
    unsafe fn map_physical_region<T>(&self, physical_address: usize, size: usize) -> PhysicalMapping<Self, T> {
        let virt = frames::phys_to_virt(physical_address as u64).cast::<T>();
        // The direct map's offset is non-zero, so the pointer is never null.
        let virt = NonNull::new(virt).unwrap_or(NonNull::dangling());
        // SAFETY: the direct map covers all physical memory the firmware's memory map
        // lists, which includes the ACPI tables; the mapping is permanent.
        unsafe { PhysicalMapping::new(physical_address, virt, size, size, *self) }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

/// Where and how to request S5 (soft-off), ACPI 6.5 section 16.1.
#[derive(Debug, Clone, Copy)]
pub struct SoftOff {
    pub pm1a_control: GenericAddress,
    pub pm1b_control: Option<GenericAddress>,
    pub sleep_types: SleepTypes,
}

/// What the hypervisor takes from ACPI.
#[derive(Debug)]
pub struct AcpiInfo {
    pub bsp_apic_id: u32,
    /// Enabled (or online-capable) application processors, in MADT order.
    pub ap_apic_ids: Vec<u32>,
    pub dmar: bool,
    pub soft_off: Option<SoftOff>,
}

/// Parses the tables behind the RSDP at physical address `rsdp`.
pub fn read(rsdp: u64) -> Result<AcpiInfo, acpi::AcpiError> {
    // SAFETY: `rsdp` is the RSDP address the firmware handed to the bootloader.
    let tables = unsafe { AcpiTables::from_rsdp(DirectMap, rsdp as usize)? };
    let platform = tables.platform_info()?;
    let processors = platform.processor_info.ok_or(acpi::AcpiError::InvalidMadt(acpi::madt::MadtError::UnexpectedEntry))?;
    let ap_apic_ids = processors
        .application_processors
        .iter()
        .filter(|p| p.state != ProcessorState::Disabled)
        .map(|p| p.local_apic_id)
        .collect();
    let dmar = tables.headers().any(|h| h.signature == Signature::DMAR);
    Ok(AcpiInfo { bsp_apic_id: processors.boot_processor.local_apic_id, ap_apic_ids, dmar, soft_off: soft_off(&tables) })
}

fn soft_off(tables: &AcpiTables<DirectMap>) -> Option<SoftOff> {
    let fadt = tables.find_table::<acpi::fadt::Fadt>().ok()?;
    let pm1a_control = fadt.pm1a_control_block().ok()?;
    let pm1b_control = fadt.pm1b_control_block().ok().flatten();
    let dsdt = tables.dsdt().ok()?;
    // SAFETY: the DSDT's AML stream, as located and sized by its header, in the
    // direct map; only read.
    let aml = unsafe { core::slice::from_raw_parts(frames::phys_to_virt(dsdt.address as u64), dsdt.length as usize) };
    let sleep_types = find_s5(aml)?;
    matches!(pm1a_control.address_space, AddressSpace::SystemIo | AddressSpace::SystemMemory).then_some(SoftOff {
        pm1a_control,
        pm1b_control,
        sleep_types,
    })
}
