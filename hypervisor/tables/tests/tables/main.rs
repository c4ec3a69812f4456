//! Host tests of `hv_tables::build`: an independent parser (`parse`), the rust-osdev
//! `acpi` and `aml` crates as third-party readers (`third_party`), the `hv-devices`
//! models the tables describe (`devices`), and property tests (`props`).

mod devices;
mod parse;
mod props;
mod third_party;

use hv_tables::{PlatformDesc, TableLayout};
use parse::{AmlObject, Gas, MadtEntry, MpEntry};

/// PCs' legacy BIOS area, where the tables usually go.
const F_SEGMENT: u64 = 0xF_0000;

/// The FADT flags expected for `desc`, spelled out bit by bit (ACPI 6.5 table 5.10).
fn expected_fadt_flags(desc: &PlatformDesc) -> u32 {
    let wbinvd = 1 << 0;
    let proc_c1 = 1 << 2;
    let slp_button = 1 << 5;
    let fix_rtc = 1 << 6;
    let tmr_val_ext = 1 << 8;
    let reset_reg_sup = 1 << 10;
    let force_apic_physical = 1 << 19;
    let hw_reduced = 1 << 20;
    wbinvd
        | proc_c1
        | slp_button
        | fix_rtc
        | if desc.reset_register { reset_reg_sup } else { 0 }
        | if desc.fixed_hardware { 0 } else { hw_reduced }
        | if desc.pm_timer_32bit { tmr_val_ext } else { 0 }
        | if desc.vcpus > 8 { force_apic_physical } else { 0 }
}

fn io_gas(bit_width: u8, access_size: u8, port: u16) -> Gas {
    Gas { space: 1, bit_width, bit_offset: 0, access_size, address: u64::from(port) }
}

/// Checks every ACPI table against `desc` with the independent parser.
pub fn check_acpi(g: &parse::Guest, layout: &TableLayout, desc: &PlatformDesc) {
    let a = parse::acpi(g, layout.rsdp);
    let n = desc.vcpus;

    // Root tables: the FADT and the MADT, nothing else, where the layout says.
    assert_eq!(a.rsdp.oem_id, desc.oem_id);
    assert_eq!(a.rsdp.xsdt, layout.xsdt);
    assert_eq!(u64::from(a.rsdp.rsdt), layout.rsdt);
    assert_eq!(a.xsdt_entries.len(), 2);
    assert_eq!((a.fadt_addr, a.madt_addr), (layout.fadt, layout.madt));
    assert_eq!(a.rsdt_entries.len(), 2);
    for t in [&a.xsdt, &a.rsdt, &a.fadt_sdt, &a.madt_sdt, &a.dsdt] {
        assert_eq!(t.oem_id, desc.oem_id, "{:?}", t.signature);
        assert_eq!(t.oem_table_id, desc.oem_table_id, "{:?}", t.signature);
    }
    assert_eq!((a.xsdt.revision, a.rsdt.revision), (1, 1));

    // FADT.
    let f = &a.fadt;
    assert_eq!((f.revision, f.minor_version, f.length), (6, 5, 276));
    assert_eq!(u64::from(f.firmware_ctrl), layout.facs);
    assert_eq!(f.x_firmware_ctrl, 0, "X_FIRMWARE_CTRL zero when FIRMWARE_CTRL is used");
    assert_eq!((u64::from(f.dsdt), f.x_dsdt), (layout.dsdt, layout.dsdt));
    assert_eq!(f.sci_int, u16::from(desc.sci_irq));
    assert_eq!((f.smi_cmd, f.acpi_enable, f.acpi_disable), (0, 0, 0));
    // The fixed hardware's blocks, or none on a hardware-reduced platform.
    let fixed = |port: u16| if desc.fixed_hardware { u32::from(port) } else { 0 };
    let fixed_gas = |bits, access, port| if desc.fixed_hardware { io_gas(bits, access, port) } else { Gas::default() };
    assert_eq!(f.pm1a_evt_blk, fixed(desc.pm1_evt_port));
    assert_eq!(f.pm1a_cnt_blk, fixed(desc.pm1_cnt_port));
    assert_eq!(f.pm_tmr_blk, fixed(desc.pm_tmr_port));
    assert_eq!((f.pm1b_evt_blk, f.pm1b_cnt_blk, f.pm2_cnt_blk, f.gpe0_blk, f.gpe1_blk), (0, 0, 0, 0, 0));
    let lens = if desc.fixed_hardware { (4, 2, 0, 4) } else { (0, 0, 0, 0) };
    assert_eq!((f.pm1_evt_len, f.pm1_cnt_len, f.pm2_cnt_len, f.pm_tmr_len), lens);
    assert_eq!((f.gpe0_blk_len, f.gpe1_blk_len), (0, 0));
    assert!(f.p_lvl2_lat > 100 && f.p_lvl3_lat > 1000, "no C2/C3");
    assert_eq!(f.century, desc.century_cmos_index);
    assert_eq!(f.iapc_boot_arch, 0b101, "LEGACY_DEVICES | VGA not present, no 8042");
    assert_eq!(f.flags, expected_fadt_flags(desc));
    assert_eq!(f.flags & (1 << 4), 0, "PWR_BUTTON 0: fixed-feature power button");
    assert_eq!(f.flags & (1 << 20) == 0, desc.fixed_hardware, "hardware-reduced exactly without the fixed hardware");
    if desc.reset_register {
        assert_eq!((f.reset_reg, f.reset_value), (io_gas(8, 1, desc.reset_port), desc.reset_value));
    } else {
        assert_eq!((f.reset_reg, f.reset_value), (Gas::default(), 0));
    }
    assert_eq!(f.x_pm1a_evt_blk, fixed_gas(32, 2, desc.pm1_evt_port));
    assert_eq!(f.x_pm1a_cnt_blk, fixed_gas(16, 2, desc.pm1_cnt_port));
    assert_eq!(f.x_pm_tmr_blk, fixed_gas(32, 3, desc.pm_tmr_port));
    for gas in [
        f.x_pm1b_evt_blk,
        f.x_pm1b_cnt_blk,
        f.x_pm2_cnt_blk,
        f.x_gpe0_blk,
        f.x_gpe1_blk,
        f.sleep_control_reg,
        f.sleep_status_reg,
    ] {
        assert_eq!(gas, Gas::default());
    }
    assert_eq!(&a.fadt_sdt.bytes[268..276], &[0; 8], "hypervisor vendor identity");

    // FACS: version 2, everything else zero.
    assert_eq!(a.facs[32], 2);
    assert!(a.facs[8..32].iter().chain(&a.facs[33..]).all(|&b| b == 0));

    // MADT.
    let m = &a.madt;
    assert_eq!(m.revision, 5);
    assert_eq!(u64::from(m.local_apic_address), desc.lapic_base);
    assert_eq!(m.flags, u32::from(desc.legacy_pic), "PCAT_COMPAT exactly with the 8259 pair");
    let mut expected: Vec<MadtEntry> =
        (0..n).map(|i| MadtEntry::LocalApic { uid: i as u8, apic_id: i as u8, flags: 1 }).collect();
    expected.push(MadtEntry::IoApic { id: desc.ioapic_id, address: desc.ioapic_base as u32, gsi_base: 0 });
    expected.push(MadtEntry::Override { bus: 0, source: 0, gsi: 2, flags: 0b0101 }); // edge, high
    expected.push(MadtEntry::Override { bus: 0, source: desc.sci_irq, gsi: u32::from(desc.sci_irq), flags: 0b1101 });
    expected.push(MadtEntry::LocalApicNmi { uid: 0xFF, flags: 0b0101, lint: 1 });
    assert_eq!(m.entries, expected);

    // DSDT.
    assert_eq!(a.dsdt.revision, 2);
    let t = u64::from(desc.s5_slp_typ);
    let mut objects = vec![("\\_S5_".to_string(), AmlObject::Package(vec![t, t, 0, 0]))];
    if desc.pci_host {
        objects.extend([
            ("\\_SB_.PCI0".to_string(), AmlObject::Device),
            ("\\_SB_.PCI0._HID".to_string(), AmlObject::Integer(0x030A_D041)), // EISAID("PNP0A03")
            ("\\_SB_.PCI0._UID".to_string(), AmlObject::Integer(0)),
            ("\\_SB_.PCI0._BBN".to_string(), AmlObject::Integer(0)),
            ("\\_SB_.PCI0._CRS".to_string(), AmlObject::Buffer(pci0_crs())),
        ]);
    }
    assert_eq!(parse::aml_objects(a.aml()), objects);
}

/// Checks the MP tables against `desc` with the independent parser.
pub fn check_mp(g: &parse::Guest, layout: &TableLayout, desc: &PlatformDesc) {
    let fl = parse::mp_floating(g, layout.mp_floating);
    assert_eq!(u64::from(fl.config), layout.mp_config);
    assert_eq!((fl.length, fl.spec_rev), (1, 4));
    assert_eq!(fl.features, [0; 5], "configuration table present, virtual wire mode (no IMCR)");

    let c = parse::mp_config(g, layout.mp_config);
    assert_eq!(c.spec_rev, 4);
    assert_eq!(&c.oem_id[..6], &desc.oem_id);
    assert_eq!(&c.oem_id[6..], b"  ");
    assert_eq!(&c.product_id[..8], &desc.oem_table_id);
    assert_eq!(u64::from(c.lapic_address), desc.lapic_base);

    let n = desc.vcpus as usize;
    let count = |f: fn(&MpEntry) -> bool| c.entries.iter().filter(|e| f(e)).count();
    assert_eq!(count(|e| matches!(e, MpEntry::Processor { .. })), n);
    assert_eq!(count(|e| matches!(e, MpEntry::Bus { .. })), 1);
    assert_eq!(count(|e| matches!(e, MpEntry::IoApic { .. })), 1);
    assert_eq!(count(|e| matches!(e, MpEntry::IoInterrupt { .. })), 15);
    assert_eq!(count(|e| matches!(e, MpEntry::LocalInterrupt { .. })), 2);
    assert_eq!(c.entries.len(), n + 19);

    for (i, e) in c.entries[..n].iter().enumerate() {
        let bsp = if i == 0 { 2 } else { 0 };
        assert_eq!(*e, MpEntry::Processor { apic_id: i as u8, version: 0x14, flags: 1 | bsp });
    }
    assert_eq!(c.entries[n], MpEntry::Bus { id: 0, kind: *b"ISA   " });
    assert_eq!(
        c.entries[n + 1],
        MpEntry::IoApic { id: desc.ioapic_id, version: 0x11, flags: 1, address: desc.ioapic_base as u32 }
    );
    let mut irqs = Vec::new();
    for e in &c.entries[n + 2..n + 17] {
        let MpEntry::IoInterrupt { kind, flags, bus, irq, ioapic, pin } = *e else { panic!("{e:?}") };
        assert_eq!((kind, bus, ioapic), (0, 0, desc.ioapic_id));
        assert_eq!(pin, if irq == 0 { 2 } else { irq }, "IRQ {irq}");
        assert_eq!(flags, if irq == desc.sci_irq { 0b1101 } else { 0 }, "IRQ {irq}");
        irqs.push(irq);
    }
    assert_eq!(irqs, [0, 1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
    assert_eq!(
        c.entries[n + 17],
        MpEntry::LocalInterrupt { kind: 3, flags: 0, bus: 0, irq: 0, lapic: 0, lint: 0 },
        "ExtINT on the BSP's LINT0"
    );
    assert_eq!(
        c.entries[n + 18],
        MpEntry::LocalInterrupt { kind: 1, flags: 0, bus: 0, irq: 0, lapic: 0xFF, lint: 1 },
        "NMI on every LINT1"
    );
}

/// No two structures overlap, all lie in `0..used_bytes`, with their alignments.
pub fn check_placement(g: &parse::Guest, layout: &TableLayout) {
    let len = |addr: u64| g.u32(addr + 4) as u64;
    let mut spans = vec![
        (layout.rsdp, 36),
        (layout.mp_floating, 16),
        (layout.facs, 64),
        (layout.mp_config, u64::from(g.u16(layout.mp_config + 4))),
    ];
    for t in [layout.rsdt, layout.xsdt, layout.madt, layout.fadt, layout.dsdt] {
        spans.push((t, len(t)));
    }
    spans.sort_unstable();
    for w in spans.windows(2) {
        assert!(w[0].0 + w[0].1 <= w[1].0, "{:x?} overlaps {:x?}", w[0], w[1]);
    }
    let end = g.gpa + layout.used_bytes as u64;
    assert!(spans.iter().all(|&(a, l)| a >= g.gpa && a + l <= end));
    assert!(spans.iter().any(|&(a, l)| a + l == end), "used_bytes ends with the last structure");
    assert_eq!(layout.rsdp % 16, 0);
    assert_eq!(layout.mp_floating % 16, 0);
    assert_eq!(layout.facs % 64, 0);
}

#[test]
fn pc_defaults_for_several_vcpu_counts() {
    for n in [1, 2, 4, 8, 9, 15, 16, 100, 253, 254] {
        let desc = PlatformDesc::pc_defaults(n);
        let (g, layout) = parse::build_guest(&desc, F_SEGMENT, 0x1_0000).unwrap();
        check_acpi(&g, &layout, &desc);
        check_mp(&g, &layout, &desc);
        check_placement(&g, &layout);
        assert_eq!(layout.used_bytes, hv_tables::required_size(&desc, F_SEGMENT).unwrap());
    }
}

/// A guest without `acpi-pm`, `pci` or `pic` gets tables that describe only what it
/// has: a hardware-reduced FADT with no PM blocks and no reset register, no PCI0, no
/// PCAT_COMPAT; each device on its own brings its part back.
#[test]
fn tables_follow_the_devices() {
    use hv_abi::platform::devices::DeviceSet;
    let set = |names: &[&str]| names.iter().fold(DeviceSet::default(), |s, n| s.with(n).unwrap());
    assert_eq!(PlatformDesc::for_devices(2, set(&["pc"])), PlatformDesc::pc_defaults(2));
    for names in [&[][..], &["com1"], &["acpi-pm"], &["pci"], &["pic"], &["acpi-pm", "pic"]] {
        let desc = PlatformDesc::for_devices(2, set(names));
        assert_eq!(desc.fixed_hardware, names.contains(&"acpi-pm"));
        assert_eq!((desc.reset_register, desc.pci_host), (names.contains(&"pci"), names.contains(&"pci")));
        assert_eq!(desc.legacy_pic, names.contains(&"pic"));
        let (g, layout) = parse::build_guest(&desc, 0xE_0000, 0x2_0000).unwrap();
        check_acpi(&g, &layout, &desc);
        check_mp(&g, &layout, &desc);
        check_placement(&g, &layout);
    }
}

#[test]
fn other_ports_and_irqs() {
    let desc = PlatformDesc {
        lapic_base: 0xFEE1_0000,
        ioapic_base: 0xFEC1_0000,
        ioapic_id: 9,
        pm1_evt_port: 0xB000,
        pm1_cnt_port: 0xB004,
        pm_tmr_port: 0xB008,
        pm_timer_32bit: true,
        sci_irq: 11,
        reset_port: 0x92,
        reset_value: 0x01,
        s5_slp_typ: 7,
        century_cmos_index: 0,
        oem_id: *b"ABCDEF",
        oem_table_id: *b"12345678",
        ..PlatformDesc::pc_defaults(3)
    };
    let (g, layout) = parse::build_guest(&desc, 0x7654_3210, 0x4000).unwrap();
    check_acpi(&g, &layout, &desc);
    check_mp(&g, &layout, &desc);
    check_placement(&g, &layout);
}

#[test]
fn scans_find_the_floating_structures() {
    let rsdp_scan = |g: &parse::Guest| parse::scan(g, b"RSD PTR ", parse::rsdp_len);
    let mp_scan = |g: &parse::Guest| parse::scan(g, b"_MP_", parse::mp_floating_len);
    let desc = PlatformDesc::pc_defaults(4);
    // Regions in the legacy area, including unaligned ones and one ending at 1 MiB.
    for (gpa, len) in [(0xE_0000, 0x2_0000), (0xF_0000, 0x1_0000), (0xE_0123, 0x1_2000), (0xF_F000 - 0x33, 0x1033)] {
        let (g, layout) = parse::build_guest(&desc, gpa, len).unwrap();
        assert_eq!(rsdp_scan(&g), [layout.rsdp], "{gpa:#x}");
        assert_eq!(mp_scan(&g), [layout.mp_floating], "{gpa:#x}");
        assert!(hv_tables::ACPI_SCAN.contains(&layout.rsdp));
        assert!(hv_tables::MP_SCAN.contains(&layout.mp_floating), "{gpa:#x}: {:#x}", layout.mp_floating);
        check_acpi(&g, &layout, &desc);
        check_mp(&g, &layout, &desc);
        check_placement(&g, &layout);
    }
}

#[test]
fn region_too_small_by_one_byte() {
    for n in [1, 4, 254] {
        let desc = PlatformDesc::pc_defaults(n);
        for gpa in [F_SEGMENT, F_SEGMENT + 1, F_SEGMENT + 17, F_SEGMENT + 63] {
            let need = hv_tables::required_size(&desc, gpa).unwrap();
            let mut buf = vec![0x5Au8; need - 1];
            assert_eq!(
                hv_tables::build(&desc, gpa, &mut buf),
                Err(hv_tables::TableError::RegionTooSmall { need, have: need - 1 })
            );
            assert!(buf.iter().all(|&b| b == 0x5A), "nothing written");
            let (g, layout) = parse::build_guest(&desc, gpa, need).unwrap();
            assert_eq!(layout.used_bytes, need);
            check_acpi(&g, &layout, &desc);
        }
    }
}

/// PCI0's `_CRS` as iasl compiles `ResourceTemplate() { WordBusNumber(ResourceProducer,
/// MinFixed, MaxFixed, PosDecode, 0, 0, 0xFF, 0, 0x100) IO(Decode16, 0xCF8, 0xCF8, 1, 8)
/// WordIO(ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, 0, 0, 0xCF7, 0,
/// 0xCF8) WordIO(..., 0, 0xD00, 0xFFFF, 0, 0xF300) }` (ACPI 6.5 §6.4.3.5.3, §6.4.2.5).
fn pci0_crs() -> Vec<u8> {
    let mut v = vec![0x88, 0x0D, 0x00, 0x02, 0x0C, 0x00, 0, 0, 0, 0, 0xFF, 0, 0, 0, 0x00, 0x01];
    v.extend([0x47, 0x01, 0xF8, 0x0C, 0xF8, 0x0C, 0x01, 0x08]);
    v.extend([0x88, 0x0D, 0x00, 0x01, 0x0C, 0x03, 0, 0, 0, 0, 0xF7, 0x0C, 0, 0, 0xF8, 0x0C]);
    v.extend([0x88, 0x0D, 0x00, 0x01, 0x0C, 0x03, 0, 0, 0x00, 0x0D, 0xFF, 0xFF, 0, 0, 0x00, 0xF3]);
    v.extend([0x79, 0x00]);
    v
}
