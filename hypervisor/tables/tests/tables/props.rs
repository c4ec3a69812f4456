//! Property tests over vCPU counts, platform descriptions and region placements.

use hv_tables::{build, required_size, PlatformDesc, TableError};
use proptest::prelude::*;

use crate::parse::{self, Guest};

const GUARD: usize = 64;
const FILL: u8 = 0xA5;

/// A region placement: mostly in or near the legacy area, sometimes anywhere below (or
/// across) 4 GiB; sizes around what the tables need.
fn placement() -> impl Strategy<Value = (u64, usize)> {
    let gpa = prop_oneof![
        4 => 0xE_0000u64..0x10_0000,
        2 => 0u64..(1 << 32),
        1 => ((1u64 << 32) - 0x4000)..(1 << 32),
    ];
    let len = prop_oneof![0usize..0x2400, 0usize..0x2_0000];
    (gpa, len)
}

/// Builds into a guarded buffer; checks nothing outside `region` (and nothing past
/// `used_bytes` inside it) changed.
fn guarded_build(desc: &PlatformDesc, gpa: u64, len: usize) -> Result<(Guest, hv_tables::TableLayout), TableError> {
    let mut buf = vec![FILL; GUARD + len + GUARD];
    let result = build(desc, gpa, &mut buf[GUARD..GUARD + len]);
    assert!(buf[..GUARD].iter().chain(&buf[GUARD + len..]).all(|&b| b == FILL), "write outside the region");
    let region = buf[GUARD..GUARD + len].to_vec();
    match result {
        Ok(layout) => {
            assert!(layout.used_bytes <= len);
            assert!(region[layout.used_bytes..].iter().all(|&b| b == FILL), "write past used_bytes");
            Ok((Guest { gpa, mem: region }, layout))
        }
        Err(e) => {
            assert!(region.iter().all(|&b| b == FILL), "write on error {e}");
            Err(e)
        }
    }
}

/// Every checksum in the region sums to zero (found by following the pointers).
fn all_checksums_zero(g: &Guest, layout: &hv_tables::TableLayout) {
    let r = parse::rsdp(g, layout.rsdp); // both RSDP checksums
    for (addr, sig) in [
        (r.xsdt, b"XSDT"),
        (u64::from(r.rsdt), b"RSDT"),
        (layout.fadt, b"FACP"),
        (layout.madt, b"APIC"),
        (layout.dsdt, b"DSDT"),
    ] {
        parse::sdt(g, addr, sig);
    }
    let fl = parse::mp_floating(g, layout.mp_floating);
    parse::mp_config(g, u64::from(fl.config));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Default platforms: build succeeds iff the region is big enough and below 4 GiB;
    /// then every table is right and every checksum is zero.
    #[test]
    fn defaults_at_any_placement(vcpus in 1u32..=254, (gpa, len) in placement()) {
        let desc = PlatformDesc::pc_defaults(vcpus);
        let need = required_size(&desc, gpa);
        let fits_below_4g = gpa.checked_add(len as u64).is_some_and(|end| end <= 1 << 32);
        match guarded_build(&desc, gpa, len) {
            Ok((g, layout)) => {
                let need = need.unwrap();
                prop_assert!(len >= need && fits_below_4g);
                all_checksums_zero(&g, &layout);
                crate::check_acpi(&g, &layout, &desc);
                crate::check_mp(&g, &layout, &desc);
                crate::check_placement(&g, &layout);
                // In the legacy area the scans find them.
                if gpa >= 0xE_0000 && gpa + len as u64 <= 0x10_0000 {
                    prop_assert_eq!(parse::scan(&g, b"RSD PTR ", parse::rsdp_len), vec![layout.rsdp]);
                    prop_assert_eq!(parse::scan(&g, b"_MP_", parse::mp_floating_len), vec![layout.mp_floating]);
                    if gpa + len as u64 >= 0xF_0040 {
                        prop_assert!(hv_tables::MP_SCAN.contains(&layout.mp_floating));
                    }
                }
            }
            Err(TableError::RegionTooSmall { need: n, have }) => {
                prop_assert_eq!(have, len);
                prop_assert_eq!(Ok(n), need);
                prop_assert!(len < n);
            }
            Err(TableError::BadRegion(_)) => prop_assert!(!fits_below_4g || need.is_err()),
            Err(e) => prop_assert!(false, "unexpected {e}"),
        }
    }

    /// Random descriptions, valid ones and ones with one field broken: never a panic or
    /// a stray write; a valid one builds tables that say what it says.
    #[test]
    fn random_descriptions(
        vcpus in 1u32..=254,
        id_offset in any::<u8>(),
        ioapic_pins in 16u32..=256,
        ports in (1u16..0xFFF0, 1u16..0xFFF0, 1u16..0xFFF0, 1u16..=0xFFFF),
        sci_irq in prop::sample::select(vec![1u8, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]),
        s5_slp_typ in 0u8..=7,
        century in 0u8..=0x7F,
        timer32 in any::<bool>(),
        present in any::<(bool, bool, bool, bool)>(),
        bases in (1u64..(1 << 32), 1u64..(1 << 32)),
        oem in (any::<[u8; 6]>(), any::<[u8; 8]>()),
        gpa in 0xE_0000u64..0x10_0000,
        broken in 0usize..16,
        junk in any::<u64>(),
    ) {
        let ioapic_id = u8::try_from(vcpus + u32::from(id_offset) % (255 - vcpus)).unwrap();
        let mut desc = PlatformDesc {
            vcpus,
            lapic_base: bases.0,
            ioapic_base: bases.1,
            ioapic_id,
            ioapic_pins,
            pm1_evt_port: ports.0,
            pm1_cnt_port: ports.1,
            pm_tmr_port: ports.2,
            pm_timer_32bit: timer32,
            sci_irq,
            reset_port: ports.3,
            reset_value: junk as u8,
            s5_slp_typ,
            century_cmos_index: century,
            fixed_hardware: present.0,
            reset_register: present.1,
            pci_host: present.2,
            legacy_pic: present.3,
            oem_id: oem.0,
            oem_table_id: oem.1,
        };
        // Break one field (most of the time) with an arbitrary value.
        match broken {
            0 => desc.vcpus = junk as u32,
            1 => desc.lapic_base = junk,
            2 => desc.ioapic_base = junk,
            3 => desc.ioapic_id = junk as u8,
            4 => desc.ioapic_pins = junk as u32,
            5 => desc.pm1_evt_port = junk as u16,
            6 => desc.pm1_cnt_port = junk as u16,
            7 => desc.pm_tmr_port = junk as u16,
            8 => desc.sci_irq = junk as u8,
            9 => desc.reset_port = junk as u16,
            10 => desc.s5_slp_typ = junk as u8,
            11 => desc.century_cmos_index = junk as u8,
            _ => {}
        }
        let len = (0x10_0000 - gpa) as usize;
        let need = required_size(&desc, gpa);
        match guarded_build(&desc, gpa, len) {
            Ok((g, layout)) => {
                prop_assert!(need.is_ok_and(|need| need <= layout.used_bytes && need <= len));
                all_checksums_zero(&g, &layout);
                crate::check_acpi(&g, &layout, &desc);
                crate::check_mp(&g, &layout, &desc);
                crate::check_placement(&g, &layout);
            }
            Err(TableError::Internal(what)) => prop_assert!(false, "internal error: {what}"),
            Err(TableError::RegionTooSmall { need: n, have }) => {
                prop_assert_eq!(need, Ok(n));
                prop_assert!(have < n);
            }
            Err(e) => {
                prop_assert_eq!(need, Err(e));
                // An intact description fails only if its random PM blocks overlap.
                prop_assert!(broken < 12 || e == TableError::BadDesc("PM blocks must not overlap"), "{e}");
            }
        }
    }
}
