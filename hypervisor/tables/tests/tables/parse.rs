//! An independent reader of the tables, written from the specifications (ACPI 6.5
//! chapter 5 and §20.2; Intel MP spec 1.4 chapter 4), sharing no code or constants with
//! the crate. Every read goes through [`Guest::bytes`], which panics (fails the test)
//! on an address outside the region, so a table pointing outside it is caught.

use hv_tables::{build, PlatformDesc, TableError, TableLayout};

/// A region of guest memory at guest-physical `gpa`.
pub struct Guest {
    pub gpa: u64,
    pub mem: Vec<u8>,
}

impl Guest {
    pub fn bytes(&self, addr: u64, len: usize) -> &[u8] {
        assert!(addr >= self.gpa, "address {addr:#x} below the region at {:#x}", self.gpa);
        let off = usize::try_from(addr - self.gpa).unwrap();
        assert!(off + len <= self.mem.len(), "{addr:#x}+{len} beyond the region end");
        &self.mem[off..off + len]
    }
    pub fn u8(&self, addr: u64) -> u8 {
        self.bytes(addr, 1)[0]
    }
    pub fn u16(&self, addr: u64) -> u16 {
        u16::from_le_bytes(self.bytes(addr, 2).try_into().unwrap())
    }
    pub fn u32(&self, addr: u64) -> u32 {
        u32::from_le_bytes(self.bytes(addr, 4).try_into().unwrap())
    }
    pub fn u64(&self, addr: u64) -> u64 {
        u64::from_le_bytes(self.bytes(addr, 8).try_into().unwrap())
    }
}

/// Builds into a fresh `len`-byte region at `gpa`.
pub fn build_guest(desc: &PlatformDesc, gpa: u64, len: usize) -> Result<(Guest, TableLayout), TableError> {
    let mut mem = vec![0u8; len];
    let layout = build(desc, gpa, &mut mem)?;
    Ok((Guest { gpa, mem }, layout))
}

pub fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
}

/// RSDP (ACPI 6.5 §5.2.5.3).
#[derive(Debug)]
pub struct Rsdp {
    pub oem_id: [u8; 6],
    pub revision: u8,
    pub rsdt: u32,
    pub length: u32,
    pub xsdt: u64,
}

/// Reads the RSDP at `addr`, checking both checksums.
pub fn rsdp(g: &Guest, addr: u64) -> Rsdp {
    let b = g.bytes(addr, 36);
    assert_eq!(&b[0..8], b"RSD PTR ");
    assert_eq!(sum(&b[..20]), 0, "RSDP checksum (first 20 bytes)");
    assert_eq!(sum(b), 0, "RSDP extended checksum");
    assert_eq!(&b[33..36], &[0, 0, 0], "RSDP reserved");
    Rsdp {
        oem_id: b[9..15].try_into().unwrap(),
        revision: b[15],
        rsdt: g.u32(addr + 16),
        length: g.u32(addr + 20),
        xsdt: g.u64(addr + 24),
    }
}

/// A system description table with a checked checksum.
pub struct Sdt<'a> {
    pub signature: [u8; 4],
    pub revision: u8,
    pub oem_id: [u8; 6],
    pub oem_table_id: [u8; 8],
    pub bytes: &'a [u8],
}

pub fn sdt<'a>(g: &'a Guest, addr: u64, signature: &[u8; 4]) -> Sdt<'a> {
    let len = g.u32(addr + 4) as usize;
    assert!(len >= 36, "table length {len}");
    let bytes = g.bytes(addr, len);
    assert_eq!(&bytes[..4], signature);
    assert_eq!(sum(bytes), 0, "{} checksum", String::from_utf8_lossy(signature));
    Sdt {
        signature: *signature,
        revision: bytes[8],
        oem_id: bytes[10..16].try_into().unwrap(),
        oem_table_id: bytes[16..24].try_into().unwrap(),
        bytes,
    }
}

impl Sdt<'_> {
    pub fn u8(&self, off: usize) -> u8 {
        self.bytes[off]
    }
    pub fn u16(&self, off: usize) -> u16 {
        u16::from_le_bytes(self.bytes[off..off + 2].try_into().unwrap())
    }
    pub fn u32(&self, off: usize) -> u32 {
        u32::from_le_bytes(self.bytes[off..off + 4].try_into().unwrap())
    }
    pub fn u64(&self, off: usize) -> u64 {
        u64::from_le_bytes(self.bytes[off..off + 8].try_into().unwrap())
    }
    pub fn gas(&self, off: usize) -> Gas {
        Gas {
            space: self.bytes[off],
            bit_width: self.bytes[off + 1],
            bit_offset: self.bytes[off + 2],
            access_size: self.bytes[off + 3],
            address: self.u64(off + 4),
        }
    }
}

/// Generic Address Structure (ACPI 6.5 §5.2.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Gas {
    pub space: u8,
    pub bit_width: u8,
    pub bit_offset: u8,
    pub access_size: u8,
    pub address: u64,
}

/// The FADT fields (ACPI 6.5 table 5.9).
#[derive(Debug)]
pub struct Fadt {
    pub length: usize,
    pub revision: u8,
    pub minor_version: u8,
    pub firmware_ctrl: u32,
    pub dsdt: u32,
    pub sci_int: u16,
    pub smi_cmd: u32,
    pub acpi_enable: u8,
    pub acpi_disable: u8,
    pub pm1a_evt_blk: u32,
    pub pm1b_evt_blk: u32,
    pub pm1a_cnt_blk: u32,
    pub pm1b_cnt_blk: u32,
    pub pm2_cnt_blk: u32,
    pub pm_tmr_blk: u32,
    pub gpe0_blk: u32,
    pub gpe1_blk: u32,
    pub pm1_evt_len: u8,
    pub pm1_cnt_len: u8,
    pub pm2_cnt_len: u8,
    pub pm_tmr_len: u8,
    pub gpe0_blk_len: u8,
    pub gpe1_blk_len: u8,
    pub p_lvl2_lat: u16,
    pub p_lvl3_lat: u16,
    pub century: u8,
    pub iapc_boot_arch: u16,
    pub flags: u32,
    pub reset_reg: Gas,
    pub reset_value: u8,
    pub x_firmware_ctrl: u64,
    pub x_dsdt: u64,
    pub x_pm1a_evt_blk: Gas,
    pub x_pm1b_evt_blk: Gas,
    pub x_pm1a_cnt_blk: Gas,
    pub x_pm1b_cnt_blk: Gas,
    pub x_pm2_cnt_blk: Gas,
    pub x_pm_tmr_blk: Gas,
    pub x_gpe0_blk: Gas,
    pub x_gpe1_blk: Gas,
    pub sleep_control_reg: Gas,
    pub sleep_status_reg: Gas,
}

pub fn fadt(t: &Sdt<'_>) -> Fadt {
    assert_eq!(t.bytes.len(), 276, "ACPI 6.x FADT length");
    Fadt {
        length: t.bytes.len(),
        revision: t.revision,
        minor_version: t.u8(131),
        firmware_ctrl: t.u32(36),
        dsdt: t.u32(40),
        sci_int: t.u16(46),
        smi_cmd: t.u32(48),
        acpi_enable: t.u8(52),
        acpi_disable: t.u8(53),
        pm1a_evt_blk: t.u32(56),
        pm1b_evt_blk: t.u32(60),
        pm1a_cnt_blk: t.u32(64),
        pm1b_cnt_blk: t.u32(68),
        pm2_cnt_blk: t.u32(72),
        pm_tmr_blk: t.u32(76),
        gpe0_blk: t.u32(80),
        gpe1_blk: t.u32(84),
        pm1_evt_len: t.u8(88),
        pm1_cnt_len: t.u8(89),
        pm2_cnt_len: t.u8(90),
        pm_tmr_len: t.u8(91),
        gpe0_blk_len: t.u8(92),
        gpe1_blk_len: t.u8(93),
        p_lvl2_lat: t.u16(96),
        p_lvl3_lat: t.u16(98),
        century: t.u8(108),
        iapc_boot_arch: t.u16(109),
        flags: t.u32(112),
        reset_reg: t.gas(116),
        reset_value: t.u8(128),
        x_firmware_ctrl: t.u64(132),
        x_dsdt: t.u64(140),
        x_pm1a_evt_blk: t.gas(148),
        x_pm1b_evt_blk: t.gas(160),
        x_pm1a_cnt_blk: t.gas(172),
        x_pm1b_cnt_blk: t.gas(184),
        x_pm2_cnt_blk: t.gas(196),
        x_pm_tmr_blk: t.gas(208),
        x_gpe0_blk: t.gas(220),
        x_gpe1_blk: t.gas(232),
        sleep_control_reg: t.gas(244),
        sleep_status_reg: t.gas(256),
    }
}

/// MADT interrupt controller structures (ACPI 6.5 §5.2.12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MadtEntry {
    LocalApic { uid: u8, apic_id: u8, flags: u32 },
    IoApic { id: u8, address: u32, gsi_base: u32 },
    Override { bus: u8, source: u8, gsi: u32, flags: u16 },
    LocalApicNmi { uid: u8, flags: u16, lint: u8 },
    Other(u8),
}

pub struct Madt {
    pub revision: u8,
    pub local_apic_address: u32,
    pub flags: u32,
    pub entries: Vec<MadtEntry>,
}

pub fn madt(t: &Sdt<'_>) -> Madt {
    let mut entries = Vec::new();
    let mut off = 44;
    while off < t.bytes.len() {
        let (kind, len) = (t.u8(off), usize::from(t.u8(off + 1)));
        assert!(len >= 2 && off + len <= t.bytes.len(), "MADT entry at {off}: length {len}");
        let entry = match (kind, len) {
            (0, 8) => MadtEntry::LocalApic { uid: t.u8(off + 2), apic_id: t.u8(off + 3), flags: t.u32(off + 4) },
            (1, 12) => {
                assert_eq!(t.u8(off + 3), 0, "I/O APIC reserved byte");
                MadtEntry::IoApic { id: t.u8(off + 2), address: t.u32(off + 4), gsi_base: t.u32(off + 8) }
            }
            (2, 10) => MadtEntry::Override {
                bus: t.u8(off + 2),
                source: t.u8(off + 3),
                gsi: t.u32(off + 4),
                flags: t.u16(off + 8),
            },
            (4, 6) => MadtEntry::LocalApicNmi { uid: t.u8(off + 2), flags: t.u16(off + 3), lint: t.u8(off + 5) },
            (0..=4, _) => panic!("MADT entry type {kind} with length {len}"),
            _ => MadtEntry::Other(kind),
        };
        entries.push(entry);
        off += len;
    }
    assert_eq!(off, t.bytes.len(), "MADT entries end with the table");
    Madt { revision: t.revision, local_apic_address: t.u32(36), flags: t.u32(40), entries }
}

/// Everything reachable from the RSDP.
pub struct Acpi<'a> {
    pub rsdp: Rsdp,
    pub xsdt: Sdt<'a>,
    pub xsdt_entries: Vec<u64>,
    pub rsdt: Sdt<'a>,
    pub rsdt_entries: Vec<u32>,
    pub fadt_addr: u64,
    pub fadt: Fadt,
    pub fadt_sdt: Sdt<'a>,
    pub madt_addr: u64,
    pub madt: Madt,
    pub madt_sdt: Sdt<'a>,
    pub dsdt: Sdt<'a>,
    pub facs: &'a [u8],
}

impl Acpi<'_> {
    /// The DSDT's AML (after the header).
    pub fn aml(&self) -> &[u8] {
        &self.dsdt.bytes[36..]
    }
}

/// Follows RSDP → XSDT/RSDT → FADT/MADT → DSDT/FACS, checking checksums and that both
/// root tables list the same tables.
pub fn acpi(g: &Guest, rsdp_addr: u64) -> Acpi<'_> {
    let rsdp = rsdp(g, rsdp_addr);
    assert_eq!(rsdp.revision, 2);
    assert_eq!(rsdp.length, 36);
    let xsdt = sdt(g, rsdp.xsdt, b"XSDT");
    let xsdt_entries: Vec<u64> = (36..xsdt.bytes.len()).step_by(8).map(|o| xsdt.u64(o)).collect();
    assert_eq!((xsdt.bytes.len() - 36) % 8, 0);
    let rsdt = sdt(g, u64::from(rsdp.rsdt), b"RSDT");
    assert_eq!((rsdt.bytes.len() - 36) % 4, 0);
    let rsdt_entries: Vec<u32> = (36..rsdt.bytes.len()).step_by(4).map(|o| rsdt.u32(o)).collect();
    assert_eq!(xsdt_entries, rsdt_entries.iter().map(|&a| u64::from(a)).collect::<Vec<_>>());

    let find = |sig: &[u8; 4]| {
        let found: Vec<u64> = xsdt_entries.iter().copied().filter(|&a| g.bytes(a, 4) == sig).collect();
        assert_eq!(found.len(), 1, "{} listed once", String::from_utf8_lossy(sig));
        found[0]
    };
    let fadt_addr = find(b"FACP");
    let madt_addr = find(b"APIC");
    let fadt_sdt = sdt(g, fadt_addr, b"FACP");
    let fadt = fadt(&fadt_sdt);
    let madt_sdt = sdt(g, madt_addr, b"APIC");
    let madt = madt(&madt_sdt);
    let dsdt = sdt(g, fadt.x_dsdt, b"DSDT");
    let facs_addr = if fadt.x_firmware_ctrl != 0 { fadt.x_firmware_ctrl } else { u64::from(fadt.firmware_ctrl) };
    assert_eq!(facs_addr % 64, 0, "FACS 64-byte aligned");
    let facs = g.bytes(facs_addr, 64);
    assert_eq!(&facs[..4], b"FACS");
    assert_eq!(u32::from_le_bytes(facs[4..8].try_into().unwrap()), 64);
    Acpi {
        rsdp,
        xsdt,
        xsdt_entries,
        rsdt,
        rsdt_entries,
        fadt_addr,
        fadt,
        fadt_sdt,
        madt_addr,
        madt,
        madt_sdt,
        dsdt,
        facs,
    }
}

/// The 16-byte aligned guest-physical addresses in the region where a structure with
/// `signature` and a valid checksum over `len(bytes)` starts.
pub fn scan(g: &Guest, signature: &[u8], len: impl Fn(&[u8]) -> usize) -> Vec<u64> {
    let first = g.gpa.div_ceil(16) * 16;
    let end = g.gpa + g.mem.len() as u64;
    (first..end)
        .step_by(16)
        .filter(|&a| {
            let avail = (end - a) as usize;
            let head = g.bytes(a, avail.min(36));
            if !head.starts_with(signature) {
                return false;
            }
            let n = len(head);
            n <= avail && sum(g.bytes(a, n)) == 0
        })
        .collect()
}

/// The RSDP's checked length: 20 bytes for revision 0, else its Length field.
pub fn rsdp_len(head: &[u8]) -> usize {
    if head.len() < 20 || head[15] == 0 {
        20
    } else if head.len() >= 24 {
        u32::from_le_bytes(head[20..24].try_into().unwrap()) as usize
    } else {
        usize::MAX
    }
}

/// The MP floating pointer's length: 16 bytes × its length field.
pub fn mp_floating_len(head: &[u8]) -> usize {
    if head.len() > 8 {
        16 * usize::from(head[8])
    } else {
        usize::MAX
    }
}

// ---------------------------------------------------------------------------------------
// AML (ACPI 6.5 §20.2), just the subset a static DSDT like this one uses.

/// A named object: an integer, a package of integers, or a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AmlObject {
    Integer(u64),
    Package(Vec<u64>),
    Buffer(Vec<u8>),
    Device,
}

/// Decodes a term list into absolute paths ("\\_SB_.PCI0._HID") and objects.
pub fn aml_objects(aml: &[u8]) -> Vec<(String, AmlObject)> {
    let mut out = Vec::new();
    term_list(aml, "\\", &mut out);
    out
}

fn pkg_length(b: &[u8]) -> (usize, usize) {
    let follow = usize::from(b[0] >> 6);
    if follow == 0 {
        return (usize::from(b[0] & 0x3F), 1);
    }
    assert_eq!(b[0] & 0x30, 0, "PkgLength reserved bits");
    let mut v = usize::from(b[0] & 0x0F);
    for i in 0..follow {
        v |= usize::from(b[1 + i]) << (4 + 8 * i);
    }
    (v, 1 + follow)
}

fn name_seg(b: &[u8]) -> String {
    let seg = &b[..4];
    assert!(seg[0].is_ascii_uppercase() || seg[0] == b'_', "lead name char {seg:?}");
    assert!(seg[1..].iter().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_'), "{seg:?}");
    String::from_utf8(seg.to_vec()).unwrap()
}

/// A NameString relative to `scope`: (absolute path, bytes used).
fn name_string(b: &[u8], scope: &str) -> (String, usize) {
    let (mut path, mut i) = if b[0] == b'\\' { (String::from("\\"), 1) } else { (scope.to_string(), 0) };
    let segs = match b[i] {
        0x2E => {
            i += 1;
            2
        }
        0x2F => {
            i += 2;
            usize::from(b[i - 1])
        }
        _ => 1,
    };
    for _ in 0..segs {
        if !path.ends_with('\\') {
            path.push('.');
        }
        path.push_str(&name_seg(&b[i..]));
        i += 4;
    }
    (path, i)
}

fn aml_integer(b: &[u8]) -> (u64, usize) {
    let le = |n: usize| b[1..=n].iter().rev().fold(0u64, |a, &x| (a << 8) | u64::from(x));
    match b[0] {
        0x00 => (0, 1),
        0x01 => (1, 1),
        0xFF => (u64::MAX, 1),
        0x0A => (le(1), 2),
        0x0B => (le(2), 3),
        0x0C => (le(4), 5),
        0x0E => (le(8), 9),
        op => panic!("not an integer: opcode {op:#x}"),
    }
}

fn term_list(b: &[u8], scope: &str, out: &mut Vec<(String, AmlObject)>) {
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            0x08 => {
                let (path, n) = name_string(&b[i + 1..], scope);
                i += 1 + n;
                if b[i] == 0x12 {
                    let (len, n) = pkg_length(&b[i + 1..]);
                    let body = &b[i + 1 + n..i + 1 + len];
                    let count = usize::from(body[0]);
                    let mut elements = Vec::new();
                    let mut j = 1;
                    while j < body.len() {
                        let (v, used) = aml_integer(&body[j..]);
                        elements.push(v);
                        j += used;
                    }
                    assert_eq!(elements.len(), count, "package NumElements");
                    out.push((path, AmlObject::Package(elements)));
                    i += 1 + len;
                } else if b[i] == 0x11 {
                    let (len, n) = pkg_length(&b[i + 1..]);
                    let body = &b[i + 1 + n..i + 1 + len];
                    let (size, used) = aml_integer(body);
                    assert_eq!(size as usize, body.len() - used, "BufferSize");
                    out.push((path, AmlObject::Buffer(body[used..].to_vec())));
                    i += 1 + len;
                } else {
                    let (v, used) = aml_integer(&b[i..]);
                    out.push((path, AmlObject::Integer(v)));
                    i += used;
                }
            }
            0x10 => {
                let (len, n) = pkg_length(&b[i + 1..]);
                let (path, m) = name_string(&b[i + 1 + n..], scope);
                term_list(&b[i + 1 + n + m..i + 1 + len], &path, out);
                i += 1 + len;
            }
            0x5B if b[i + 1] == 0x82 => {
                let (len, n) = pkg_length(&b[i + 2..]);
                let (path, m) = name_string(&b[i + 2 + n..], scope);
                out.push((path.clone(), AmlObject::Device));
                term_list(&b[i + 2 + n + m..i + 2 + len], &path, out);
                i += 2 + len;
            }
            op => panic!("unexpected AML opcode {op:#x} at {i}"),
        }
    }
    assert_eq!(i, b.len(), "term list ends exactly");
}

// ---------------------------------------------------------------------------------------
// Intel MP spec 1.4, chapter 4.

#[derive(Debug)]
pub struct MpFloating {
    pub config: u32,
    pub length: u8,
    pub spec_rev: u8,
    pub features: [u8; 5],
}

pub fn mp_floating(g: &Guest, addr: u64) -> MpFloating {
    let b = g.bytes(addr, 16);
    assert_eq!(&b[..4], b"_MP_");
    assert_eq!(sum(b), 0, "MP floating pointer checksum");
    MpFloating { config: g.u32(addr + 4), length: b[8], spec_rev: b[9], features: b[11..16].try_into().unwrap() }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MpEntry {
    Processor { apic_id: u8, version: u8, flags: u8 },
    Bus { id: u8, kind: [u8; 6] },
    IoApic { id: u8, version: u8, flags: u8, address: u32 },
    IoInterrupt { kind: u8, flags: u16, bus: u8, irq: u8, ioapic: u8, pin: u8 },
    LocalInterrupt { kind: u8, flags: u16, bus: u8, irq: u8, lapic: u8, lint: u8 },
}

pub struct MpConfig {
    pub spec_rev: u8,
    pub oem_id: [u8; 8],
    pub product_id: [u8; 12],
    pub lapic_address: u32,
    pub entries: Vec<MpEntry>,
}

pub fn mp_config(g: &Guest, addr: u64) -> MpConfig {
    let len = usize::from(g.u16(addr + 4));
    let b = g.bytes(addr, len);
    assert_eq!(&b[..4], b"PCMP");
    assert_eq!(sum(b), 0, "MP configuration table checksum");
    assert_eq!(g.u32(addr + 28), 0, "no OEM table");
    assert_eq!(g.u16(addr + 40), 0, "no extended table");
    assert_eq!(b[42], 0, "extended table checksum");
    let count = usize::from(g.u16(addr + 34));
    let mut entries = Vec::new();
    let mut off = 44;
    let mut last_type = 0;
    for _ in 0..count {
        let kind = b[off];
        assert!(kind >= last_type, "entries sorted by type");
        last_type = kind;
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let (entry, len) = match kind {
            0 => {
                assert_eq!(&b[off + 12..off + 20], &[0; 8], "processor reserved bytes");
                (MpEntry::Processor { apic_id: b[off + 1], version: b[off + 2], flags: b[off + 3] }, 20)
            }
            1 => (MpEntry::Bus { id: b[off + 1], kind: b[off + 2..off + 8].try_into().unwrap() }, 8),
            2 => (
                MpEntry::IoApic {
                    id: b[off + 1],
                    version: b[off + 2],
                    flags: b[off + 3],
                    address: u32::from_le_bytes(b[off + 4..off + 8].try_into().unwrap()),
                },
                8,
            ),
            3 => (
                MpEntry::IoInterrupt {
                    kind: b[off + 1],
                    flags: u16_at(off + 2),
                    bus: b[off + 4],
                    irq: b[off + 5],
                    ioapic: b[off + 6],
                    pin: b[off + 7],
                },
                8,
            ),
            4 => (
                MpEntry::LocalInterrupt {
                    kind: b[off + 1],
                    flags: u16_at(off + 2),
                    bus: b[off + 4],
                    irq: b[off + 5],
                    lapic: b[off + 6],
                    lint: b[off + 7],
                },
                8,
            ),
            other => panic!("MP entry type {other}"),
        };
        entries.push(entry);
        off += len;
    }
    assert_eq!(off, len, "entries fill the base table");
    MpConfig {
        spec_rev: b[6],
        oem_id: b[8..16].try_into().unwrap(),
        product_id: b[16..28].try_into().unwrap(),
        lapic_address: g.u32(addr + 36),
        entries,
    }
}
