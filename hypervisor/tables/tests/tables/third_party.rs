//! The tables read by third-party parsers: rust-osdev's `acpi` crate (the same version
//! the hypervisor kernel reads the host firmware with) and its `aml` interpreter.

use std::ptr::NonNull;

use acpi::address::AddressSpace;
use acpi::fadt::Fadt;
use acpi::platform::interrupt::{InterruptModel, LocalInterruptLine, NmiProcessor, Polarity, TriggerMode};
use acpi::platform::ProcessorState;
use acpi::sdt::Signature;
use acpi::{AcpiHandler, AcpiTables, PhysicalMapping};
use aml::{AmlContext, AmlName, AmlValue, DebugVerbosity};

use hv_tables::PlatformDesc;

use crate::parse;

/// Guest memory for the `acpi` crate: guest-physical `gpa..gpa + len` is `base..`.
#[derive(Debug, Clone, Copy)]
struct GuestMemory {
    base: *const u8,
    gpa: usize,
    len: usize,
}

impl AcpiHandler for GuestMemory {
    unsafe fn map_physical_region<T>(&self, phys: usize, size: usize) -> PhysicalMapping<Self, T> {
        // The crate must only look inside the region (this is part of the test).
        assert!(phys >= self.gpa && phys + size <= self.gpa + self.len, "mapping {phys:#x}+{size} outside the region");
        // SAFETY: `phys..phys + size` lies inside the memory at `base` (checked above),
        // which outlives every mapping (see `with_tables`); the crate's table types are
        // `repr(C, packed)`, so any address is aligned for them.
        let ptr = unsafe { self.base.add(phys - self.gpa) };
        // SAFETY: as above; the pointer is derived from a live allocation.
        unsafe { PhysicalMapping::new(phys, NonNull::new(ptr as *mut T).unwrap(), size, size, *self) }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

fn memory(g: &parse::Guest) -> GuestMemory {
    GuestMemory { base: g.mem.as_ptr(), gpa: g.gpa as usize, len: g.mem.len() }
}

/// Everything the `acpi` crate reports, checked against `desc`.
fn check_with_acpi_crate(tables: &AcpiTables<GuestMemory>, desc: &PlatformDesc, dsdt: u64) {
    let n = desc.vcpus;
    let signatures: Vec<Signature> = tables.headers().map(|h| h.signature).collect();
    assert_eq!(signatures, [Signature::FADT, Signature::MADT]);

    let info = tables.platform_info().expect("platform info");
    let InterruptModel::Apic(apic) = &info.interrupt_model else { panic!("not the APIC model") };
    assert_eq!(apic.local_apic_address, desc.lapic_base);
    assert!(apic.also_has_legacy_pics);
    assert_eq!(apic.io_apics.len(), 1);
    assert_eq!(apic.io_apics[0].id, desc.ioapic_id);
    assert_eq!(u64::from(apic.io_apics[0].address), desc.ioapic_base);
    assert_eq!(apic.io_apics[0].global_system_interrupt_base, 0);
    let overrides: Vec<_> = apic
        .interrupt_source_overrides
        .iter()
        .map(|o| (o.isa_source, o.global_system_interrupt, o.polarity, o.trigger_mode))
        .collect();
    assert_eq!(
        overrides,
        [
            (0, 2, Polarity::ActiveHigh, TriggerMode::Edge),
            (desc.sci_irq, u32::from(desc.sci_irq), Polarity::ActiveHigh, TriggerMode::Level)
        ]
    );
    assert_eq!(apic.local_apic_nmi_lines.len(), 1);
    assert!(matches!(apic.local_apic_nmi_lines[0].processor, NmiProcessor::All));
    assert!(matches!(apic.local_apic_nmi_lines[0].line, LocalInterruptLine::Lint1));
    assert!(apic.nmi_sources.is_empty());

    let cpus = info.processor_info.as_ref().expect("processors");
    assert_eq!(cpus.boot_processor.local_apic_id, 0);
    assert_eq!(cpus.boot_processor.state, ProcessorState::Running);
    assert_eq!(cpus.application_processors.len(), n as usize - 1);
    for (i, ap) in cpus.application_processors.iter().enumerate() {
        assert_eq!((ap.processor_uid, ap.local_apic_id), (i as u32 + 1, i as u32 + 1));
        assert_eq!(ap.state, ProcessorState::WaitingForSipi);
    }
    let timer = info.pm_timer.as_ref().expect("PM timer");
    assert_eq!(timer.base.address_space, AddressSpace::SystemIo);
    assert_eq!(timer.base.address, u64::from(desc.pm_tmr_port));
    assert_eq!(timer.supports_32bit, desc.pm_timer_32bit);

    let fadt = tables.find_table::<Fadt>().expect("FADT");
    let evt = fadt.pm1a_event_block().unwrap();
    let cnt = fadt.pm1a_control_block().unwrap();
    assert_eq!((evt.address_space, evt.address), (AddressSpace::SystemIo, u64::from(desc.pm1_evt_port)));
    assert_eq!((cnt.address_space, cnt.address), (AddressSpace::SystemIo, u64::from(desc.pm1_cnt_port)));
    assert_eq!(fadt.pm1b_event_block().unwrap(), None);
    assert_eq!(fadt.pm1b_control_block().unwrap(), None);
    assert_eq!(fadt.gpe0_block().unwrap(), None);
    let reset = fadt.reset_register().unwrap();
    assert_eq!((reset.address_space, reset.address, reset.bit_width), (AddressSpace::SystemIo, 0xCF9, 8));
    assert_eq!({ fadt.reset_value }, desc.reset_value);
    assert_eq!({ fadt.sci_interrupt }, u16::from(desc.sci_irq));
    assert_eq!({ fadt.smi_cmd_port }, 0);
    assert_eq!({ fadt.century }, desc.century_cmos_index);
    assert_eq!(fadt.dsdt_address().unwrap() as u64, dsdt);
    let flags = { fadt.flags };
    assert!(flags.supports_equivalent_to_wbinvd());
    assert!(flags.all_procs_support_c1_power_state());
    assert!(!flags.power_button_is_control_method());
    assert!(flags.sleep_button_is_control_method());
    assert!(flags.supports_system_reset_via_fadt());
    assert!(!flags.system_is_hw_reduced_acpi());
    assert_eq!(flags.pm_timer_is_32_bit(), desc.pm_timer_32bit);
    assert_eq!(flags.local_xapics_must_use_physical_destination_mode(), n > 8);
    let arch = { fadt.iapc_boot_arch };
    assert!(arch.legacy_devices_are_accessible());
    assert!(!arch.motherboard_implements_8042());
    assert!(arch.dont_probe_vga());
    assert!(!arch.dont_enable_msi());

    let dsdt_table = tables.dsdt().expect("DSDT");
    assert_eq!(dsdt_table.address as u64, dsdt + 36);
}

#[test]
fn acpi_crate_reads_the_tables() {
    for (n, gpa) in [(1, 0xF_0000u64), (4, 0xE_0010), (9, 0x1234_5678), (254, 0xF_0000)] {
        let desc = PlatformDesc::pc_defaults(n);
        let (g, layout) = parse::build_guest(&desc, gpa, 0x1_0000).unwrap();
        // Through the XSDT (RSDP revision 2)...
        // SAFETY: `layout.rsdp` is the RSDP of tables in `g`, which outlives `tables`.
        let tables = unsafe { AcpiTables::from_rsdp(memory(&g), layout.rsdp as usize) }.expect("from_rsdp");
        check_with_acpi_crate(&tables, &desc, layout.dsdt);
        // ...and through the RSDT, as an ACPI 1.0 reader would.
        // SAFETY: as above, for the RSDT.
        let tables = unsafe { AcpiTables::from_rsdt(memory(&g), 0, layout.rsdt as usize) }.expect("from_rsdt");
        check_with_acpi_crate(&tables, &desc, layout.dsdt);
    }
}

/// A guest with none of `acpi-pm`, `pci` and `pic`: the `acpi` crate sees a
/// hardware-reduced platform with no PM timer, no reset register and no 8259s.
#[test]
fn acpi_crate_reads_hardware_reduced_tables() {
    let desc = PlatformDesc::for_devices(2, hv_abi::platform::devices::DeviceSet::default());
    let (g, layout) = parse::build_guest(&desc, 0xE_0000, 0x2_0000).unwrap();
    // SAFETY: `layout.rsdp` is the RSDP of tables in `g`, which outlives `tables`.
    let tables = unsafe { AcpiTables::from_rsdp(memory(&g), layout.rsdp as usize) }.expect("from_rsdp");
    let info = tables.platform_info().expect("platform info");
    let InterruptModel::Apic(apic) = &info.interrupt_model else { panic!("not the APIC model") };
    assert!(!apic.also_has_legacy_pics);
    assert!(info.pm_timer.is_none());
    let fadt = tables.find_table::<Fadt>().expect("FADT");
    let flags = { fadt.flags };
    assert!(flags.system_is_hw_reduced_acpi());
    assert!(!flags.supports_system_reset_via_fadt());
    assert_eq!(fadt.pm1a_event_block().unwrap().address, 0);
    assert_eq!(fadt.pm1a_control_block().unwrap().address, 0);
    assert_eq!(fadt.reset_register().unwrap().address, 0);
}

#[test]
fn acpi_crate_bios_scan_finds_the_rsdp() {
    // The whole first MiB (the crate also reads the EBDA pointer at 0x40E, which is 0
    // here, and maps 16 bytes beyond 0xFFFFF), with the tables in different places of
    // the legacy area.
    let desc = PlatformDesc::pc_defaults(2);
    for (gpa, len) in [(0xE_0000usize, 0x2_0000usize), (0xF_0000, 0x1_0000), (0xE_4000, 0x800), (0xF_FB00, 0x500)] {
        let mut mem = vec![0u8; 0x10_1000];
        let layout = hv_tables::build(&desc, gpa as u64, &mut mem[gpa..gpa + len]).unwrap();
        let g = parse::Guest { gpa: 0, mem };
        // SAFETY: `g` holds all of physical memory 0..1 MiB and outlives `tables`.
        let tables = unsafe { AcpiTables::search_for_rsdp_bios(memory(&g)) }.expect("RSDP found by the BIOS scan");
        check_with_acpi_crate(&tables, &desc, layout.dsdt);
        // The MP spec's scan of the BIOS ROM area, as Linux does it (0xF0000, 64 KiB).
        let mp: Vec<u64> = (0xF_0000..0x10_0000u64)
            .step_by(16)
            .filter(|&a| g.bytes(a, 4) == b"_MP_" && parse::sum(g.bytes(a, 16)) == 0)
            .collect();
        if gpa + len >= 0xF_0040 {
            assert_eq!(mp, [layout.mp_floating], "region {gpa:#x}+{len:#x}");
        } else {
            assert!(mp.is_empty(), "region below the F segment: no MP pointer there");
        }
    }
}

/// The `aml` interpreter needs a handler for hardware access; a static DSDT never
/// touches hardware, so every access fails the test.
struct NoHardware;

impl aml::Handler for NoHardware {
    fn read_u8(&self, _: usize) -> u8 {
        panic!("memory read")
    }
    fn read_u16(&self, _: usize) -> u16 {
        panic!("memory read")
    }
    fn read_u32(&self, _: usize) -> u32 {
        panic!("memory read")
    }
    fn read_u64(&self, _: usize) -> u64 {
        panic!("memory read")
    }
    fn write_u8(&mut self, _: usize, _: u8) {
        panic!("memory write")
    }
    fn write_u16(&mut self, _: usize, _: u16) {
        panic!("memory write")
    }
    fn write_u32(&mut self, _: usize, _: u32) {
        panic!("memory write")
    }
    fn write_u64(&mut self, _: usize, _: u64) {
        panic!("memory write")
    }
    fn read_io_u8(&self, _: u16) -> u8 {
        panic!("port read")
    }
    fn read_io_u16(&self, _: u16) -> u16 {
        panic!("port read")
    }
    fn read_io_u32(&self, _: u16) -> u32 {
        panic!("port read")
    }
    fn write_io_u8(&self, _: u16, _: u8) {
        panic!("port write")
    }
    fn write_io_u16(&self, _: u16, _: u16) {
        panic!("port write")
    }
    fn write_io_u32(&self, _: u16, _: u32) {
        panic!("port write")
    }
    fn read_pci_u8(&self, _: u16, _: u8, _: u8, _: u8, _: u16) -> u8 {
        panic!("PCI read")
    }
    fn read_pci_u16(&self, _: u16, _: u8, _: u8, _: u8, _: u16) -> u16 {
        panic!("PCI read")
    }
    fn read_pci_u32(&self, _: u16, _: u8, _: u8, _: u8, _: u16) -> u32 {
        panic!("PCI read")
    }
    fn write_pci_u8(&self, _: u16, _: u8, _: u8, _: u8, _: u16, _: u8) {
        panic!("PCI write")
    }
    fn write_pci_u16(&self, _: u16, _: u8, _: u8, _: u8, _: u16, _: u16) {
        panic!("PCI write")
    }
    fn write_pci_u32(&self, _: u16, _: u8, _: u8, _: u8, _: u16, _: u32) {
        panic!("PCI write")
    }
}

/// The DSDT through the `aml` crate's interpreter.
pub fn aml_namespace(dsdt_aml: &[u8]) -> AmlContext {
    let mut ctx = AmlContext::new(Box::new(NoHardware), DebugVerbosity::None);
    ctx.parse_table(dsdt_aml).expect("the aml crate parses the DSDT");
    ctx
}

fn integer(ctx: &AmlContext, path: &str) -> u64 {
    match ctx.namespace.get_by_path(&AmlName::from_str(path).unwrap()) {
        Ok(AmlValue::Integer(v)) => *v,
        other => panic!("{path}: {other:?}"),
    }
}

#[test]
fn aml_crate_reads_the_dsdt() {
    for s5 in [0u8, 1, 5, 7] {
        let desc = PlatformDesc { s5_slp_typ: s5, ..PlatformDesc::pc_defaults(2) };
        let (g, layout) = parse::build_guest(&desc, 0xF_0000, 0x1_0000).unwrap();
        let dsdt = parse::sdt(&g, layout.dsdt, b"DSDT");
        let mut ctx = aml_namespace(&dsdt.bytes[36..]);
        match ctx.namespace.get_by_path(&AmlName::from_str("\\_S5").unwrap()) {
            Ok(AmlValue::Package(p)) => {
                let values: Vec<u64> = p
                    .iter()
                    .map(|v| match v {
                        AmlValue::Integer(i) => *i,
                        other => panic!("_S5 element {other:?}"),
                    })
                    .collect();
                assert_eq!(values, [u64::from(s5), u64::from(s5), 0, 0]);
            }
            other => panic!("\\_S5: {other:?}"),
        }
        assert!(matches!(ctx.namespace.get_by_path(&AmlName::from_str("\\_SB.PCI0").unwrap()), Ok(AmlValue::Device)));
        assert_eq!(integer(&ctx, "\\_SB.PCI0._HID"), 0x030A_D041);
        assert_eq!(integer(&ctx, "\\_SB.PCI0._UID"), 0);
        assert_eq!(integer(&ctx, "\\_SB.PCI0._BBN"), 0);
        let crs = ctx.namespace.get_by_path(&AmlName::from_str("\\_SB.PCI0._CRS").unwrap()).expect("_CRS").clone();
        let resources = aml::resource::resource_descriptor_list(&crs).expect("_CRS parses as resources");
        let text: Vec<String> = resources.iter().map(|r| format!("{r:?}")).collect();
        assert_eq!(text.len(), 4, "{text:?}");
        assert!(text[0].contains("BusNumberRange") && text[0].contains("address_range: (0, 255)"), "{}", text[0]);
        assert!(text[1].contains("IOPort") && text[1].contains("memory_range: (3320, 3320)"), "{}", text[1]);
        assert!(text[2].contains("IORange") && text[2].contains("address_range: (0, 3319)"), "{}", text[2]);
        assert!(text[3].contains("IORange") && text[3].contains("address_range: (3328, 65535)"), "{}", text[3]);
        // Device initialisation (_STA/_INI) runs without touching hardware.
        ctx.initialize_objects().expect("initialize_objects");
    }
}
