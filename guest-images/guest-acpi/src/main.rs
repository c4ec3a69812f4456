//! `guest-acpi`: finds the ACPI tables the service partition's guest builder wrote at
//! 0xE0000 (`hv-tables`) as an OS does, checks what they say about the virtual PC, reads
//! the ACPI PM timer, and then leaves the ACPI way. Run with the `pc` devices (at least
//! `acpi-pm` and `pci`, which holds the reset register 0xCF9), or with none of
//! `acpi-pm`, `pci` and `pic` (the hardware-reduced case below).
//!
//! First it probes which of that hardware answers: PM1a control (16-bit IN of 0x604:
//! `SCI_EN` reads 1, an unclaimed port all-ones), the PCI host's `CONFIG_ADDRESS`
//! (32-bit IN of 0xCF8: reserved bits read 0) and the 8259 pair's ELCR (IN of 0x4D0:
//! bits 0-2 read 0). The tables must describe exactly what answers: FADT
//! `HW_REDUCED_ACPI` exactly without PM1a control, `RESET_REG_SUP` exactly with the PCI
//! host (0xCF9 is its reset control register), the DSDT's `PCI0` exactly with the PCI
//! host, MADT `PCAT_COMPAT` exactly with the 8259 pair.
//!
//! 1. The RSDP: the first 16-byte aligned `"RSD PTR "` in 0xE0000..0x100000 whose first
//!    20 bytes sum to 0; revision 2 or later, with its extended checksum (all `Length`
//!    bytes) valid.
//! 2. The XSDT (and the RSDT, for ACPI 1.0 readers): signature and checksum; every XSDT
//!    entry is a table in RAM with a valid checksum; among them the FADT (`FACP`) and the
//!    MADT (`APIC`). The DSDT comes from the FADT's `X_DSDT` (else `DSDT`).
//! 3. MADT: local APIC address 0xFEE00000; one enabled Processor Local APIC entry per
//!    vCPU (as many as CPUID.1:EBX[23:16] says, with distinct APIC IDs, this vCPU's
//!    among them); an I/O APIC at 0xFEC00000 with GSI base 0; the interrupt source
//!    override ISA IRQ 0 → GSI 2.
//! 4. FADT: `PM1a_EVT_BLK` 0x600, `PM1a_CNT_BLK` 0x604, `PM_TMR_BLK` 0x608, `SCI_INT` 9,
//!    `RESET_REG_SUP` with `RESET_REG` = system I/O 0xCF9 and `RESET_VALUE` 6. Without
//!    the fixed hardware (hardware-reduced): the three blocks are 0; without the PCI
//!    host: `RESET_REG` and `RESET_VALUE` are 0.
//! 5. The PM timer (32-bit IN at `PM_TMR_BLK`, forwarded to the service partition)
//!    advances across a 1 ms delay and stays within 24 bits (`TMR_VAL_EXT` clear).
//! 6. `\_S5` in the DSDT's AML: `Name(\_S5, Package() { SLP_TYPa, ... })`, its first
//!    element a `ByteConst` (0x0A nn) or `Zero`/`One` (0x00/0x01).
//!
//! Hardware-reduced, steps 5 and the power action are skipped (there is no PM timer and
//! no PM1 control): it prints `acpi: FADT: hardware-reduced, no PM blocks, no reset
//! register` and stops itself with code 0.
//!
//! Then, with 16 MiB of RAM (RSI at entry), it powers off: PM1a control (16-bit, read,
//! `SLP_TYP` replaced, `SLP_EN` set) = `SLP_TYPa << 10 | 1 << 13`.
//!
//! With any other RAM size it proves that a reset reboots it, counting its boots in
//! CMOS NVRAM byte 0x48 (RTC ports 0x70/0x71; NVRAM survives a reset, as on a PC):
//!
//! - boot 1 (the byte is 0): writes 0xB1 there, a pattern into its RAM (a static
//!   variable of the image and the last page of RAM) and 0x5A into the UART's scratch
//!   register, then resets through the FADT's reset register (8-bit OUT of
//!   `RESET_VALUE`);
//! - boot 2 (0xB1): checks that the RAM pattern is gone (RAM zeroed, image loaded
//!   again) and the scratch register reads 0 (devices reset), writes 0xB2, the pattern
//!   and the scratch value again, and resets through the keyboard controller (0xFE to
//!   port 0x64, the 8042's pulse-reset command);
//! - boot 3 (0xB2): the same checks, then it powers off through PM1a control as above.
//!
//! Any other byte fails. With a second vCPU, every one of these boots first checks that
//! the AP is not running (it waits for INIT and start-up IPIs again after a reset: its
//! spin counter, a variable of the image, stays 0), then starts it with INIT, SIPI,
//! SIPI and waits until it spins with interrupts off, so that each reset has to stop a
//! vCPU that runs guest code on another CPU.
//!
//! Expected console lines (prefix = the partition's name in the config, e.g. `[acpi]`),
//! with the platform of `hv_tables::PlatformDesc::pc_defaults`:
//! ```text
//! [acpi] acpi: boot N (CMOS 0x48 = 0x..)                 (not with 16 MiB)
//! [acpi] acpi: boot N: the AP is running                 (with a second vCPU)
//! [acpi] acpi: RSDP at 0x..., XSDT with 2 tables
//! [acpi] acpi: MADT: N CPUs, IOAPIC at 0xfec00000
//! [acpi] acpi: FADT: PM1a_CNT 0x604, PM_TMR 0x608, reset 0xcf9=6
//! [acpi] acpi: \_S5 SLP_TYP 5
//! [acpi] PASS guest-acpi
//! [acpi] acpi: boot N: resetting through ... / powering off through PM1a_CNT (S5)
//! ```
//! after which the hypervisor logs `partition NAME: powered off through its platform
//! (code 0)` or `partition NAME: reset through its platform; rebooting (reboot N)`. A
//! failed check prints `FAIL guest-acpi: <check>`, then `FAIL guest-acpi`, and stops
//! with code 1 without a power action; if the power action's OUT returns: `FAIL
//! guest-acpi: still running after ...`, stop code 1.
#![no_std]
#![no_main]

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};
use guest_rt::cmos;
use guest_rt::port::{inb, inl, inw, outb, outw};

use guest_rt::hv_abi::platform::{IOAPIC_BASE, LAPIC_BASE};
use guest_rt::interrupts::delay_us;
use guest_rt::{println, stop};

const NAME: &str = "guest-acpi";

/// Where the RSDP is looked for (ACPI 6.5 §5.2.5.1: the BIOS area 0xE0000-0xFFFFF).
const RSDP_SCAN: core::ops::Range<u64> = 0xE_0000..0x10_0000;
/// RSDP fields (§5.2.5.3).
const RSDP_V1_LEN: usize = 20;
const RSDP_REVISION: usize = 15;
const RSDP_RSDT: usize = 16;
const RSDP_LENGTH: usize = 20;
const RSDP_XSDT: usize = 24;
const RSDP_V2_LEN: usize = 36;

/// System description table header (§5.2.6): signature (0, 4), length (4, 4), ...
const HEADER_LEN: usize = 36;

/// FADT field offsets (§5.2.9, table 5.9).
const FADT_DSDT: usize = 40;
const FADT_SCI_INT: usize = 46;
const FADT_PM1A_EVT_BLK: usize = 56;
const FADT_PM1A_CNT_BLK: usize = 64;
const FADT_PM_TMR_BLK: usize = 76;
const FADT_FLAGS: usize = 112;
const FADT_RESET_REG: usize = 116;
const FADT_RESET_VALUE: usize = 128;
const FADT_X_DSDT: usize = 140;
/// FADT flags: `TMR_VAL_EXT` (32-bit PM timer), `RESET_REG_SUP`.
const FADT_TMR_VAL_EXT: u32 = 1 << 8;
const FADT_RESET_REG_SUP: u32 = 1 << 10;
/// FADT flags: `HW_REDUCED_ACPI` (no fixed hardware).
const FADT_HW_REDUCED_ACPI: u32 = 1 << 20;
/// Generic Address Structure address space: system I/O (§5.2.3.2).
const GAS_SYSTEM_IO: u8 = 1;

/// MADT (§5.2.12): local interrupt controller address at 36, flags at 40, entries from 44.
const MADT_LAPIC_ADDRESS: usize = 36;
const MADT_FLAGS: usize = 40;
const MADT_ENTRIES: usize = 44;
/// MADT flags: `PCAT_COMPAT` (a dual 8259 is present).
const MADT_PCAT_COMPAT: u32 = 1 << 0;
const MADT_LOCAL_APIC: u8 = 0;
const MADT_IO_APIC: u8 = 1;
const MADT_SOURCE_OVERRIDE: u8 = 2;
const LOCAL_APIC_ENABLED: u32 = 1 << 0;

/// What this platform's tables must say (`hv_tables::PlatformDesc::pc_defaults`).
const PM1A_EVT_BLK: u32 = 0x600;
const PM1A_CNT_BLK: u32 = 0x604;
const PM_TMR_BLK: u32 = 0x608;
const SCI_INT: u16 = 9;
const RESET_PORT: u64 = 0xCF9;
const RESET_VALUE: u8 = 6;
/// ISA IRQ 0 (the PIT) is wired to this GSI.
const TIMER_GSI: u32 = 2;
/// The probes of the hardware the tables describe: PCI `CONFIG_ADDRESS` and the 8259
/// pair's ELCR (master; 0x4D0).
const PCI_CONFIG_ADDRESS: u16 = 0xCF8;
const ELCR_MASTER: u16 = 0x4D0;

/// PM1 control (§4.8.3.2.1): `SLP_TYP` in bits 12:10, `SLP_EN` bit 13.
const SLP_TYP_SHIFT: u16 = 10;
const SLP_TYP_MASK: u16 = 0b111 << SLP_TYP_SHIFT;
const SLP_EN: u16 = 1 << 13;

/// AML (§20.2): `NameOp`, `RootChar`, `PackageOp`, `ZeroOp`, `OneOp`, `BytePrefix`.
const AML_NAME_OP: u8 = 0x08;
const AML_ROOT_CHAR: u8 = b'\\';
const AML_PACKAGE_OP: u8 = 0x12;
const AML_ZERO_OP: u8 = 0x00;
const AML_ONE_OP: u8 = 0x01;
const AML_BYTE_PREFIX: u8 = 0x0A;

/// The NVRAM byte that counts boots (user RAM,
/// MC146818A "Address Map": 0x0E-0x7F; 0x48 is used by nothing else here).
const BOOT_COUNT_INDEX: u8 = 0x48;
/// The boot-count byte after boot 1 and boot 2 (0 before boot 1: fresh NVRAM).
const AFTER_BOOT_1: u8 = 0xB1;
const AFTER_BOOT_2: u8 = 0xB2;
/// The 16550's scratch register (COM1 base + 7): 0 after power-on and reset.
const UART_SCRATCH: u16 = 0x3FF;
const SCRATCH_MARK: u8 = 0x5A;
/// The 8042's command port and its pulse-output-port command that pulses the reset
/// line (bit 0 low: 0xFE; IBM PC/AT Technical Reference, keyboard controller commands).
const KBD_COMMAND: u16 = 0x64;
const KBD_PULSE_RESET: u8 = 0xFE;
/// What boot 1 and 2 leave in RAM: a reboot must not find it (RAM zeroed, image loaded
/// again).
const RAM_MARK: u64 = 0x5245_424F_4F54_4D4B;
/// A variable of the image (`.bss`, 0 as loaded).
static IMAGE_MARK: AtomicU64 = AtomicU64::new(0);
/// How often the AP went round its loop (`.bss`, 0 as loaded).
static AP_SPINS: AtomicU64 = AtomicU64::new(0);
/// How long the AP must stay still at the start of a boot, and how long it may take to
/// start spinning once started.
const AP_STILL_US: u64 = 2_000;
const AP_START_US: u64 = 200_000;

/// The RAM size with which the guest powers off (any other size resets).
const POWER_OFF_RAM: u64 = 16 << 20;
/// The delay between the two PM timer reads.
const PM_TIMER_DELAY_US: u64 = 1000;

/// The guest's RAM, identity-mapped by the start page tables (`hv_abi::start`).
#[derive(Clone, Copy)]
struct Ram {
    bytes: u64,
}

impl Ram {
    /// The `len` bytes at guest-physical `addr`, if they lie inside RAM (and `addr` is
    /// not 0).
    fn get(self, addr: u64, len: usize) -> Option<&'static [u8]> {
        let end = addr.checked_add(len as u64)?;
        if addr == 0 || end > self.bytes {
            return None;
        }
        // SAFETY: `addr..end` lies inside this guest's RAM (checked above), which the
        // start page tables identity-map; `addr` is not null. Only this vCPU runs (the
        // others wait for INIT and start-up IPIs) and it never writes the tables (its
        // stack grows down from 2 MiB, far above the few KiB it uses), so the bytes do
        // not change while the shared slice lives.
        Some(unsafe { core::slice::from_raw_parts(addr as *const u8, len) })
    }

    /// The system description table at `addr` (its `Length` bytes), if its header and
    /// all of it lie inside RAM and `Length` covers at least the header.
    fn table(self, addr: u64) -> Option<&'static [u8]> {
        let header = self.get(addr, HEADER_LEN)?;
        let len = usize::try_from(u32_at(header, 4)).ok()?;
        if len < HEADER_LEN {
            return None;
        }
        self.get(addr, len)
    }
}

/// The little-endian `N` bytes at `at` (zeros past the end of `b`: every caller checks
/// the length first, and a zero makes the check that reads it fail).
fn le<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    at.checked_add(N).and_then(|end| b.get(at..end)).and_then(|s| s.try_into().ok()).unwrap_or([0; N])
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(le(b, at))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(le(b, at))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(le(b, at))
}

/// Whether the bytes sum to 0 (mod 256), the ACPI checksum rule.
fn sums_to_zero(b: &[u8]) -> bool {
    b.iter().fold(0u8, |sum, &x| sum.wrapping_add(x)) == 0
}

/// A table's signature, for messages.
fn signature(table: &[u8]) -> &str {
    table.get(..4).and_then(|s| core::str::from_utf8(s).ok()).unwrap_or("????")
}

/// The verdict so far: every failed check prints `FAIL guest-acpi: <check>`.
struct Checks {
    ok: bool,
}

impl Checks {
    fn check(&mut self, ok: bool, what: fmt::Arguments<'_>) -> bool {
        if !ok {
            println!("FAIL {NAME}: {what}");
            self.ok = false;
        }
        ok
    }

    /// Checks a table's signature and checksum.
    fn table(&mut self, table: &[u8], want: &[u8; 4]) -> bool {
        let ok =
            self.check(table.starts_with(want), format_args!("{} is a {} table", signature(table), signature(want)));
        ok & self.check(sums_to_zero(table), format_args!("{} checksum", signature(table)))
    }
}

/// Gives up after a check that the rest depends on.
fn fatal(what: fmt::Arguments<'_>) -> ! {
    println!("FAIL {NAME}: {what}");
    println!("FAIL {NAME}");
    stop(1)
}

/// The first RSDP in the scan area whose first 20 bytes sum to 0: its address and
/// those 20 bytes.
fn find_rsdp(ram: Ram) -> Option<(u64, &'static [u8])> {
    RSDP_SCAN
        .step_by(16)
        .filter_map(|addr| Some((addr, ram.get(addr, RSDP_V1_LEN)?)))
        .find(|(_, b)| b.starts_with(b"RSD PTR ") && sums_to_zero(b))
}

/// What the MADT says.
struct Madt {
    /// Enabled Processor Local APIC entries.
    cpus: u32,
    /// The I/O APIC's address (0: none).
    ioapic: u32,
}

/// Which of the hardware the tables describe answers (see the module documentation).
#[derive(Clone, Copy)]
struct Present {
    /// PM1a control: the ACPI fixed hardware.
    fixed_hardware: bool,
    /// The PCI host bridge (with the reset control register 0xCF9).
    pci_host: bool,
    /// The 8259 pair.
    pic: bool,
}

impl Present {
    fn probe() -> Self {
        Self {
            fixed_hardware: inw(PM1A_CNT_BLK as u16) != 0xFFFF,
            pci_host: inl(PCI_CONFIG_ADDRESS) != 0xFFFF_FFFF,
            pic: inb(ELCR_MASTER) & 0b111 == 0,
        }
    }
}

fn check_madt(c: &mut Checks, madt: &[u8], present: Present) -> Madt {
    let lapic = u32_at(madt, MADT_LAPIC_ADDRESS);
    c.check(u64::from(lapic) == LAPIC_BASE, format_args!("MADT local APIC address {lapic:#x} is {LAPIC_BASE:#x}"));
    let flags = u32_at(madt, MADT_FLAGS);
    c.check(
        (flags & MADT_PCAT_COMPAT != 0) == present.pic,
        format_args!("MADT flags {flags:#x}: PCAT_COMPAT exactly when the 8259 pair answers ({})", present.pic),
    );
    let mut apic_ids = [false; 256];
    let (mut cpus, mut ioapics, mut ioapic, mut gsi_base, mut timer_gsi) = (0u32, 0u32, 0u32, u32::MAX, None);
    let mut at = MADT_ENTRIES;
    while at + 2 <= madt.len() {
        let (kind, len) = (madt[at], usize::from(madt[at + 1]));
        let Some(entry) = madt.get(at..at + len).filter(|_| len >= 2) else {
            c.check(false, format_args!("MADT entry at offset {at} has a bad length {len}"));
            break;
        };
        match (kind, len) {
            (MADT_LOCAL_APIC, 8) => {
                let id = usize::from(entry[3]);
                if u32_at(entry, 4) & LOCAL_APIC_ENABLED != 0 {
                    cpus += 1;
                    c.check(!apic_ids[id], format_args!("MADT: APIC ID {id} is listed once"));
                    apic_ids[id] = true;
                }
            }
            (MADT_IO_APIC, 12) => {
                ioapics += 1;
                ioapic = u32_at(entry, 4);
                gsi_base = u32_at(entry, 8);
            }
            (MADT_SOURCE_OVERRIDE, 10) => {
                // Bus 0 (ISA), source IRQ 0.
                if entry[2] == 0 && entry[3] == 0 {
                    timer_gsi = Some(u32_at(entry, 4));
                }
            }
            (MADT_LOCAL_APIC | MADT_IO_APIC | MADT_SOURCE_OVERRIDE, _) => {
                c.check(false, format_args!("MADT entry type {kind} at offset {at} has length {len}"));
            }
            _ => {}
        }
        at += len;
    }
    let vcpus = guest_rt::smp::vcpu_count();
    c.check(cpus == vcpus, format_args!("MADT: {cpus} enabled local APICs for {vcpus} vCPUs (CPUID.1:EBX[23:16])"));
    let me = guest_rt::lapic::id() as usize;
    c.check(apic_ids.get(me) == Some(&true), format_args!("MADT: this vCPU's APIC ID {me} is listed"));
    c.check(ioapics == 1, format_args!("MADT: {ioapics} I/O APIC entries, one expected"));
    c.check(u64::from(ioapic) == IOAPIC_BASE, format_args!("MADT: I/O APIC at {ioapic:#x}, not {IOAPIC_BASE:#x}"));
    c.check(gsi_base == 0, format_args!("MADT: I/O APIC GSI base {gsi_base} is 0"));
    c.check(
        timer_gsi == Some(TIMER_GSI),
        format_args!("MADT: interrupt source override ISA IRQ 0 -> GSI {TIMER_GSI} (found {timer_gsi:?})"),
    );
    Madt { cpus, ioapic }
}

/// What the FADT says.
struct Fadt {
    hw_reduced: bool,
    pm1a_cnt: u32,
    pm_tmr: u32,
    reset_port: u64,
    reset_value: u8,
    pm_timer_mask: u32,
    dsdt: u64,
}

fn check_fadt(c: &mut Checks, fadt: &[u8], present: Present) -> Fadt {
    let len = fadt.len();
    c.check(len >= FADT_X_DSDT + 8, format_args!("FADT length {len} covers X_DSDT"));
    let pm1a_evt = u32_at(fadt, FADT_PM1A_EVT_BLK);
    let pm1a_cnt = u32_at(fadt, FADT_PM1A_CNT_BLK);
    let pm_tmr = u32_at(fadt, FADT_PM_TMR_BLK);
    let sci = u16_at(fadt, FADT_SCI_INT);
    let flags = u32_at(fadt, FADT_FLAGS);
    let reset_space = fadt.get(FADT_RESET_REG).copied().unwrap_or(0);
    let reset_port = u64_at(fadt, FADT_RESET_REG + 4);
    let reset_value = fadt.get(FADT_RESET_VALUE).copied().unwrap_or(0);
    let hw_reduced = flags & FADT_HW_REDUCED_ACPI != 0;
    c.check(
        hw_reduced != present.fixed_hardware,
        format_args!(
            "FADT flags {flags:#x}: HW_REDUCED_ACPI exactly when PM1a control does not answer ({})",
            !present.fixed_hardware
        ),
    );
    // The fixed hardware's blocks, or none.
    let (evt, cnt, tmr) = if present.fixed_hardware { (PM1A_EVT_BLK, PM1A_CNT_BLK, PM_TMR_BLK) } else { (0, 0, 0) };
    c.check(pm1a_evt == evt, format_args!("FADT PM1a_EVT_BLK {pm1a_evt:#x} is {evt:#x}"));
    c.check(pm1a_cnt == cnt, format_args!("FADT PM1a_CNT_BLK {pm1a_cnt:#x} is {cnt:#x}"));
    c.check(pm_tmr == tmr, format_args!("FADT PM_TMR_BLK {pm_tmr:#x} is {tmr:#x}"));
    c.check(sci == SCI_INT, format_args!("FADT SCI_INT {sci} is {SCI_INT}"));
    c.check(
        (flags & FADT_RESET_REG_SUP != 0) == present.pci_host,
        format_args!("FADT flags {flags:#x}: RESET_REG_SUP exactly when the PCI host answers ({})", present.pci_host),
    );
    let (space, port, value) = if present.pci_host { (GAS_SYSTEM_IO, RESET_PORT, RESET_VALUE) } else { (0, 0, 0) };
    c.check(reset_space == space, format_args!("FADT RESET_REG address space {reset_space} is {space}"));
    c.check(reset_port == port, format_args!("FADT RESET_REG address {reset_port:#x} is {port:#x}"));
    c.check(reset_value == value, format_args!("FADT RESET_VALUE {reset_value} is {value}"));
    let (dsdt32, x_dsdt) = (u64::from(u32_at(fadt, FADT_DSDT)), u64_at(fadt, FADT_X_DSDT));
    if dsdt32 != 0 && x_dsdt != 0 {
        c.check(dsdt32 == x_dsdt, format_args!("FADT DSDT {dsdt32:#x} and X_DSDT {x_dsdt:#x} agree"));
    }
    let pm_timer_mask = if flags & FADT_TMR_VAL_EXT != 0 { u32::MAX } else { 0xFF_FFFF };
    Fadt {
        hw_reduced,
        pm1a_cnt,
        pm_tmr,
        reset_port,
        reset_value,
        pm_timer_mask,
        dsdt: if x_dsdt != 0 { x_dsdt } else { dsdt32 },
    }
}

/// `SLP_TYPa` of `\_S5` in the AML `aml`: `NameOp [RootChar] "_S5_" PackageOp PkgLength
/// NumElements` and the first element, a `ByteConst` or `Zero`/`One`.
fn s5_slp_typ(aml: &[u8]) -> Result<u8, &'static str> {
    let name = aml.windows(4).position(|w| w == b"_S5_").ok_or("the DSDT has no _S5_")?;
    let before = &aml[..name];
    if !(before.ends_with(&[AML_NAME_OP]) || before.ends_with(&[AML_NAME_OP, AML_ROOT_CHAR])) {
        return Err("_S5_ is not declared by Name()");
    }
    let package = name + 4;
    if aml.get(package) != Some(&AML_PACKAGE_OP) {
        return Err("\\_S5 is not a package");
    }
    // PkgLength (§20.2.4): bits 7:6 of the lead byte = how many bytes follow; it counts
    // itself and the package's contents.
    let length_at = package + 1;
    let lead = *aml.get(length_at).ok_or("\\_S5 ends before its PkgLength")?;
    let follow = usize::from(lead >> 6);
    let length = if follow == 0 {
        usize::from(lead & 0x3F)
    } else {
        (1..=follow)
            .try_fold(usize::from(lead & 0x0F), |len, i| {
                aml.get(length_at + i).map(|&b| len | usize::from(b) << (4 + 8 * (i - 1)))
            })
            .ok_or("\\_S5 ends inside its PkgLength")?
    };
    let end = length_at + length;
    let contents = aml.get(length_at + 1 + follow..end).ok_or("\\_S5's PkgLength runs past the DSDT")?;
    match contents {
        [0, ..] | [] => Err("\\_S5 is an empty package"),
        [_, AML_BYTE_PREFIX, typ, ..] => Ok(*typ),
        [_, AML_ZERO_OP, ..] => Ok(0),
        [_, AML_ONE_OP, ..] => Ok(1),
        _ => Err("\\_S5's first element is not a ByteConst, Zero or One"),
    }
}

/// An I/O port from a 32-bit (or 64-bit) table field.
fn port(value: u64, what: &str) -> u16 {
    u16::try_from(value).unwrap_or_else(|_| fatal(format_args!("{what} {value:#x} is not an I/O port")))
}

/// The last 8-byte word of RAM's last page (free: the image sits at 2 MiB, its stack
/// below it).
fn last_page_word(ram_bytes: u64) -> *mut u64 {
    (ram_bytes - 4096) as *mut u64
}

/// Which boot this is (1, 2 or 3) by the CMOS boot count; from the second boot on,
/// checks that nothing of the last boot survived but NVRAM.
fn start_of_boot(c: &mut Checks, ram_bytes: u64) -> u8 {
    let count = cmos::read(BOOT_COUNT_INDEX);
    let boot = match count {
        0 => 1,
        AFTER_BOOT_1 => 2,
        AFTER_BOOT_2 => 3,
        other => fatal(format_args!("CMOS byte {BOOT_COUNT_INDEX:#x} holds {other:#x}, not a boot count")),
    };
    println!("acpi: boot {boot} (CMOS {BOOT_COUNT_INDEX:#x} = {count:#04x})");
    let image = IMAGE_MARK.load(Ordering::Relaxed);
    // SAFETY: the last page of RAM is identity-mapped by the start page tables, 8-byte
    // aligned, and used by nothing else (see `last_page_word`); only this vCPU runs.
    let last = unsafe { last_page_word(ram_bytes).read_volatile() };
    let scratch = inb(UART_SCRATCH);
    c.check(
        image == 0,
        format_args!("boot {boot}: the image's variable reads {image:#x}, not 0 (image not loaded again)"),
    );
    c.check(last == 0, format_args!("boot {boot}: RAM's last page reads {last:#x}, not 0 (RAM not zeroed)"));
    c.check(scratch == 0, format_args!("boot {boot}: the UART scratch register reads {scratch:#x}, not 0 (not reset)"));
    boot
}

/// The AP's code: count, with interrupts off (as `start_aps` enters it), forever.
extern "C" fn ap_spin(_apic_id: u32) -> ! {
    loop {
        AP_SPINS.fetch_add(1, Ordering::Relaxed);
        core::hint::spin_loop();
    }
}

/// With a second vCPU: checks that it does not run yet (after a reset it waits for a
/// start-up IPI again), then starts it and waits until it runs guest code.
fn start_ap(c: &mut Checks, boot: u8) {
    if guest_rt::smp::vcpu_count() < 2 {
        return;
    }
    delay_us(AP_STILL_US);
    let spins = AP_SPINS.load(Ordering::Relaxed);
    c.check(spins == 0, format_args!("boot {boot}: the AP ran {spins} loops before its start-up IPI"));
    guest_rt::exceptions::install();
    guest_rt::lapic::sync_mode();
    guest_rt::lapic::enable();
    let online = guest_rt::smp::start_aps(1, ap_spin);
    let spinning = guest_rt::interrupts::wait_for(
        || AP_SPINS.load(Ordering::Relaxed) > 0,
        guest_rt::interrupts::us_to_tsc(AP_START_US),
    );
    if c.check(
        online == 1 && spinning,
        format_args!("boot {boot}: the AP came online ({online}) and runs ({spinning})"),
    ) {
        println!("acpi: boot {boot}: the AP is running");
    }
}

/// Leaves what the next boot must not find, and the boot count it must find.
fn before_reset(boot: u8, ram_bytes: u64) {
    IMAGE_MARK.store(RAM_MARK, Ordering::Relaxed);
    // SAFETY: as in `start_of_boot`.
    unsafe { last_page_word(ram_bytes).write_volatile(RAM_MARK) };
    outb(UART_SCRATCH, SCRATCH_MARK);
    cmos::write(BOOT_COUNT_INDEX, if boot == 1 { AFTER_BOOT_1 } else { AFTER_BOOT_2 });
}

/// Entry point (see `hv_abi::start`): RDI = vCPU id, RSI = RAM size in bytes.
#[no_mangle]
#[link_section = ".text._start"]
pub extern "C" fn _start(_vcpu: u64, ram_bytes: u64) -> ! {
    let ram = Ram { bytes: ram_bytes };
    let mut c = Checks { ok: true };
    let present = Present::probe();
    let boot = if ram_bytes == POWER_OFF_RAM { None } else { Some(start_of_boot(&mut c, ram_bytes)) };
    if let Some(boot) = boot {
        start_ap(&mut c, boot);
    }

    // RSDP.
    let (rsdp_addr, rsdp) = find_rsdp(ram).unwrap_or_else(|| {
        fatal(format_args!("no RSDP with a valid checksum in {:#x}..{:#x}", RSDP_SCAN.start, RSDP_SCAN.end))
    });
    let revision = rsdp[RSDP_REVISION];
    if revision < 2 {
        fatal(format_args!("RSDP revision {revision}: no XSDT"));
    }
    // The revision 2 fields (Length, XsdtAddress, the extended checksum) follow the
    // 20 bytes of revision 0.
    let v2 = ram.get(rsdp_addr, RSDP_V2_LEN).unwrap_or_else(|| fatal(format_args!("the RSDP runs past RAM")));
    let rsdp_len = u32_at(v2, RSDP_LENGTH) as usize;
    let rsdp = match ram.get(rsdp_addr, rsdp_len) {
        Some(full) if rsdp_len >= RSDP_V2_LEN => full,
        _ => fatal(format_args!("RSDP length {rsdp_len} is below {RSDP_V2_LEN} or runs past RAM")),
    };
    c.check(sums_to_zero(rsdp), format_args!("RSDP extended checksum (all {rsdp_len} bytes)"));

    // RSDT (32-bit entries, for ACPI 1.0 readers): present and intact.
    let rsdt_addr = u64::from(u32_at(rsdp, RSDP_RSDT));
    match ram.table(rsdt_addr) {
        Some(rsdt) => {
            c.table(rsdt, b"RSDT");
        }
        None => {
            c.check(false, format_args!("RSDT address {rsdt_addr:#x} holds a table in RAM"));
        }
    }

    // XSDT and the tables it lists.
    let xsdt_addr = u64_at(rsdp, RSDP_XSDT);
    let xsdt = ram
        .table(xsdt_addr)
        .unwrap_or_else(|| fatal(format_args!("XSDT address {xsdt_addr:#x} does not hold a table in RAM")));
    c.table(xsdt, b"XSDT");
    let entries_len = xsdt.len() - HEADER_LEN;
    c.check(entries_len.is_multiple_of(8), format_args!("XSDT entries are {entries_len} bytes, a multiple of 8"));
    let tables = entries_len / 8;
    let (mut fadt, mut madt) = (None, None);
    for i in 0..tables {
        let addr = u64_at(xsdt, HEADER_LEN + 8 * i);
        let Some(table) = ram.table(addr) else {
            c.check(false, format_args!("XSDT entry {i} ({addr:#x}) holds a table in RAM"));
            continue;
        };
        c.check(sums_to_zero(table), format_args!("{} checksum (XSDT entry {i} at {addr:#x})", signature(table)));
        match &table[..4] {
            b"FACP" => fadt = Some(table),
            b"APIC" => madt = Some(table),
            _ => {}
        }
    }
    println!("acpi: RSDP at {rsdp_addr:#x}, XSDT with {tables} tables");

    // MADT.
    let madt = madt.unwrap_or_else(|| fatal(format_args!("the XSDT lists no MADT (APIC)")));
    let m = check_madt(&mut c, madt, present);
    println!("acpi: MADT: {} CPUs, IOAPIC at {:#x}", m.cpus, m.ioapic);

    // FADT.
    let fadt = fadt.unwrap_or_else(|| fatal(format_args!("the XSDT lists no FADT (FACP)")));
    let f = check_fadt(&mut c, fadt, present);
    if f.hw_reduced {
        match f.reset_port {
            0 => println!("acpi: FADT: hardware-reduced, no PM blocks, no reset register"),
            reset => println!("acpi: FADT: hardware-reduced, no PM blocks, reset {reset:#x}={}", f.reset_value),
        }
    } else {
        println!(
            "acpi: FADT: PM1a_CNT {:#x}, PM_TMR {:#x}, reset {:#x}={}",
            f.pm1a_cnt, f.pm_tmr, f.reset_port, f.reset_value
        );

        // The PM timer, read through the service partition's ACPI PM model.
        let pm_tmr = port(u64::from(f.pm_tmr), "PM_TMR_BLK");
        let t0 = inl(pm_tmr);
        delay_us(PM_TIMER_DELAY_US);
        let t1 = inl(pm_tmr);
        let mask = f.pm_timer_mask;
        c.check(
            t0 & !mask == 0 && t1 & !mask == 0,
            format_args!("PM timer reads {t0:#x}, {t1:#x} fit its width (mask {mask:#x})"),
        );
        c.check(
            t1.wrapping_sub(t0) & mask != 0,
            format_args!("PM timer advanced over {PM_TIMER_DELAY_US} us ({t0:#x}, then {t1:#x})"),
        );
    }

    // DSDT and \_S5.
    let dsdt = ram
        .table(f.dsdt)
        .unwrap_or_else(|| fatal(format_args!("the FADT's DSDT {:#x} does not hold a table in RAM", f.dsdt)));
    c.table(dsdt, b"DSDT");
    let slp_typ = s5_slp_typ(&dsdt[HEADER_LEN..]).unwrap_or_else(|why| fatal(format_args!("{why}")));
    println!("acpi: \\_S5 SLP_TYP {slp_typ}");
    c.check(slp_typ <= 7, format_args!("\\_S5 SLP_TYP {slp_typ} fits the 3-bit SLP_TYP field"));
    let pci0 = dsdt[HEADER_LEN..].windows(4).any(|w| w == b"PCI0");
    c.check(
        pci0 == present.pci_host,
        format_args!("the DSDT has PCI0 ({pci0}) exactly when the PCI host answers ({})", present.pci_host),
    );

    if !c.ok {
        println!("FAIL {NAME}");
        stop(1);
    }
    println!("PASS {NAME}");
    if f.hw_reduced {
        // No PM1 control to power off with, and (in the scenario) no reset register.
        stop(0);
    }

    match boot {
        Some(boot @ 1) => {
            let reset = port(f.reset_port, "RESET_REG");
            println!("acpi: boot {boot}: resetting through the FADT reset register ({reset:#x} = {})", f.reset_value);
            before_reset(boot, ram_bytes);
            outb(reset, f.reset_value);
            println!("FAIL {NAME}: still running after writing RESET_VALUE {} to {reset:#x}", f.reset_value);
        }
        Some(boot @ 2) => {
            println!("acpi: boot {boot}: resetting through the keyboard controller ({KBD_COMMAND:#x} = {KBD_PULSE_RESET:#x})");
            before_reset(boot, ram_bytes);
            outb(KBD_COMMAND, KBD_PULSE_RESET);
            println!("FAIL {NAME}: still running after the keyboard controller's reset command");
        }
        _ => {
            if let Some(boot) = boot {
                println!("acpi: boot {boot}: powering off through PM1a_CNT (S5)");
            }
            let pm1a_cnt = port(u64::from(f.pm1a_cnt), "PM1a_CNT_BLK");
            let value = (inw(pm1a_cnt) & !(SLP_TYP_MASK | SLP_EN)) | u16::from(slp_typ) << SLP_TYP_SHIFT | SLP_EN;
            outw(pm1a_cnt, value);
            println!("FAIL {NAME}: still running after writing {value:#06x} (SLP_TYP {slp_typ}, SLP_EN) to PM1a_CNT");
        }
    }
    stop(1)
}
