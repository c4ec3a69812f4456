//! Hardware-free logic of the hypervisor.
//!
//! Everything here is plain data manipulation: no port I/O, no MSRs, no page tables
//! of the running machine. The kernel (`hypervisor/`) reads the hardware and hands the
//! raw values to these functions; the same code is unit-tested on the host
//! (`cargo test -p hv-core`).
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod acpi_info;
pub mod acpi_s5;
pub mod addr;
pub mod apic;
pub mod apicv;
pub mod boot_conf;
pub mod cmos_clock;
pub mod console_input;
pub mod console_output;
pub mod control_regs;
pub mod cpu_features;
pub mod ept;
pub mod ept_flush;
pub mod event_injection;
pub mod exit;
pub mod frames;
pub mod guest_paging;
pub mod instruction_fetch;
pub mod io_request;
pub mod memory_map;
pub mod mmio_decode;
pub mod pci_config;
pub mod preflight;
pub mod string_io;
pub mod tsc_freq;
pub mod vioapic;
pub mod virt_cpuid;
pub mod virt_msr;
pub mod vlapic;
pub mod vmx_caps;
pub mod vmx_controls;

/// Size of a 4 KiB page frame.
pub const PAGE_SIZE: u64 = 4096;
