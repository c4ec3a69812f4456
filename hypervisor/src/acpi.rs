//! The firmware's ACPI tables, read through the direct map of physical memory. The
//! reading itself is hardware-free and lives in `hv_core::acpi_info` (host-tested).
//! Under Bochs + OVMF there are no tables; callers handle `None`. Read before the TSC
//! calibration, which uses the HPET and PM timer found here; nothing here needs the TSC.

use core::ptr::NonNull;

use acpi::{AcpiHandler, PhysicalMapping};
pub use hv_core::acpi_info::{AcpiInfo, SoftOff};

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

/// Parses the tables behind the RSDP at physical address `rsdp`.
pub fn read(rsdp: u64) -> Result<AcpiInfo, acpi::AcpiError> {
    let bytes = |phys: u64, len: usize| -> &'static [u8] {
        // SAFETY: bytes inside a table the `acpi` crate located and validated (the DSDT's
        // AML stream as sized by its header, FADT and HPET table fields within their
        // lengths), read through the permanent direct map.
        unsafe { core::slice::from_raw_parts(frames::phys_to_virt(phys), len) }
    };
    // SAFETY: `rsdp` is the RSDP address the firmware handed to the bootloader, and
    // `DirectMap` maps all of physical memory.
    unsafe { hv_core::acpi_info::read(DirectMap, rsdp as usize, bytes) }
}
