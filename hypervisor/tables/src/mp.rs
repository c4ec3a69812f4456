//! The Intel MultiProcessor Specification 1.4 tables (chapter 4; section numbers below
//! refer to it).

use crate::acpi::TIMER_IRQ_PIN;
use crate::out::{fix_checksum, Out, Sink};
use crate::{PlatformDesc, TableError, TableLayout, MP_FLOATING_LEN};

/// Specification revision 1.4.
const SPEC_REV: u8 = 4;
/// Configuration table header (§4.2): signature "PCMP" (0), base table length (4,
/// 2), spec revision (6), checksum (7), OEM ID (8, 8), product ID (16, 12), OEM table
/// pointer (28, 4), OEM table size (32, 2), entry count (34, 2), local APIC address (36,
/// 4), extended table length (40, 2), extended table checksum (42), reserved (43).
const HEADER_LEN: usize = 44;
const HEADER_CHECKSUM: usize = 7;
/// Processor entry (§4.3.1): type 0, local APIC ID, local APIC version, CPU flags
/// (bit 0 EN, bit 1 BP), CPU signature (4), feature flags (4), reserved (8).
const PROCESSOR_LEN: usize = 20;
/// Bus (§4.3.2), I/O APIC (§4.3.3), I/O interrupt assignment (§4.3.4) and local
/// interrupt assignment (§4.3.5) entries are 8 bytes.
const ENTRY_LEN: usize = 8;
/// ISA IRQs 0..15 except 2 (the cascade).
const ISA_IRQS: usize = 15;
const ENTRIES_AFTER_PROCESSORS: usize = 1 /* bus */ + 1 /* I/O APIC */ + ISA_IRQS + 2 /* local */;

/// The local APIC version the virtual LAPIC reports (`hv_core::vlapic::APIC_VERSION`
/// bits 7:0: an integrated APIC).
const LAPIC_VERSION: u8 = 0x14;
/// The 82093AA's version (`hv_core::vioapic::VERSION`).
const IOAPIC_VERSION: u8 = 0x11;
/// CPU signature (family 6, model 0, stepping 0) and feature flags (FPU, APIC): only
/// informative; OSes read the real CPUID.
const CPU_SIGNATURE: u32 = 0x0000_0600;
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
const CPU_ENABLED: u8 = 1 << 0;
const CPU_BOOTSTRAP: u8 = 1 << 1;

const ISA_BUS_ID: u8 = 0;
/// Interrupt types (§4.3.4).
const INT_VECTORED: u8 = 0;
const INT_NMI: u8 = 1;
const INT_EXTINT: u8 = 3;
/// I/O interrupt flags (§4.3.4): 0 = conforms to the bus (ISA: edge, active high);
/// the SCI is level, active high.
const FLAGS_CONFORM: u16 = 0;
const FLAGS_LEVEL_HIGH: u16 = crate::acpi::INTI_LEVEL_HIGH;
const ALL_LOCAL_APICS: u8 = 0xFF;
const BSP_APIC_ID: u8 = 0;

pub(crate) fn config_len(vcpus: usize) -> usize {
    HEADER_LEN + vcpus * PROCESSOR_LEN + ENTRIES_AFTER_PROCESSORS * ENTRY_LEN
}

/// `bytes` padded with spaces (or cut) to `N`.
fn padded<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [b' '; N];
    for (o, b) in out.iter_mut().zip(bytes) {
        *o = *b;
    }
    out
}

/// The configuration table, entries in the order the spec asks for (processors, buses,
/// I/O APICs, I/O interrupt assignments, local interrupt assignments).
pub(crate) fn write_config(buf: &mut [u8], desc: &PlatformDesc) -> Result<(), TableError> {
    let n = desc.vcpus as usize;
    let len = config_len(n);
    let entries = n + ENTRIES_AFTER_PROCESSORS;
    let lapic_base = u32::try_from(desc.lapic_base).map_err(|_| TableError::Internal("MP configuration table"))?;
    let ioapic_base = u32::try_from(desc.ioapic_base).map_err(|_| TableError::Internal("MP configuration table"))?;
    let (Ok(len16), Ok(entries16)) = (u16::try_from(len), u16::try_from(entries)) else {
        return Err(TableError::Internal("MP configuration table"));
    };

    let mut o = Out::new(buf);
    o.bytes(b"PCMP");
    o.u16(len16);
    o.u8(SPEC_REV);
    o.u8(0); // checksum
    o.bytes(&padded::<8>(&desc.oem_id));
    o.bytes(&padded::<12>(&desc.oem_table_id));
    o.u32(0); // no OEM table
    o.u16(0);
    o.u16(entries16);
    o.u32(lapic_base);
    o.u16(0); // no extended table: length and checksum 0
    o.u8(0);
    o.u8(0);

    for id in 0..n {
        let id = u8::try_from(id).map_err(|_| TableError::Internal("MP configuration table"))?;
        let flags = CPU_ENABLED | if id == BSP_APIC_ID { CPU_BOOTSTRAP } else { 0 };
        o.bytes(&[0, id, LAPIC_VERSION, flags]);
        o.u32(CPU_SIGNATURE);
        o.u32(CPU_FEATURES);
        o.zeros(8);
    }
    o.bytes(&[1, ISA_BUS_ID]);
    o.bytes(b"ISA   ");
    o.bytes(&[2, desc.ioapic_id, IOAPIC_VERSION, 1 /* EN */]);
    o.u32(ioapic_base);
    for irq in (0u8..16).filter(|&irq| irq != 2) {
        let pin = if irq == 0 { TIMER_IRQ_PIN } else { irq };
        let flags = if irq == desc.sci_irq { FLAGS_LEVEL_HIGH } else { FLAGS_CONFORM };
        o.bytes(&[3, INT_VECTORED]);
        o.u16(flags);
        o.bytes(&[ISA_BUS_ID, irq, desc.ioapic_id, pin]);
    }
    // ExtINT (the 8259's INTR) on the BSP's LINT0, NMI on every LINT1.
    for (kind, dest, lint) in [(INT_EXTINT, BSP_APIC_ID, 0), (INT_NMI, ALL_LOCAL_APICS, 1)] {
        o.bytes(&[4, kind]);
        o.u16(FLAGS_CONFORM);
        o.bytes(&[ISA_BUS_ID, 0, dest, lint]);
    }
    o.finish(len, "MP configuration table")?;
    fix_checksum(buf, HEADER_CHECKSUM, "MP configuration table")
}

/// The floating pointer structure (§4.1): "_MP_" (0), configuration table address
/// (4, 4), length in 16-byte units (8), spec revision (9), checksum (10), feature byte 1
/// (11: 0 = a configuration table is present), feature byte 2 (12: bit 7 IMCRP = 0,
/// virtual wire mode, no IMCR), feature bytes 3-5 (13..16, reserved).
pub(crate) fn write_floating(buf: &mut [u8], layout: &TableLayout) -> Result<(), TableError> {
    let config = u32::try_from(layout.mp_config).map_err(|_| TableError::Internal("MP floating pointer"))?;
    let mut o = Out::new(buf);
    o.bytes(b"_MP_");
    o.u32(config);
    o.u8((MP_FLOATING_LEN / 16) as u8);
    o.u8(SPEC_REV);
    o.u8(0); // checksum
    o.u8(0); // feature byte 1
    o.u8(0); // feature byte 2
    o.zeros(3);
    o.finish(MP_FLOATING_LEN, "MP floating pointer")?;
    fix_checksum(buf, 10, "MP floating pointer")
}
