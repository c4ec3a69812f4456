//! Guest platform tables the service partition's builder writes (ACPI RSDP/XSDT/MADT/FADT/DSDT, MP table): no_std, no unsafe, host-tested.
#![no_std]
#![forbid(unsafe_code)]
