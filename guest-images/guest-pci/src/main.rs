//! `guest-pci`: enumerates PCI bus 0 through configuration mechanism #1 (0xCF8 /
//! 0xCFC), which the hypervisor forwards to the service partition's PCI host model. Run
//! with the `pci` device (or `pc`).
//!
//! Checks: `CONFIG_ADDRESS` reads back what was written; device 0-31, function 0, and
//! functions 1-7 of multi-function devices (header type bit 7): exactly one function
//! answers, 00:00.0, vendor 0x8086 device 0x1237 (the i440FX host bridge), class
//! 0x060000, single-function; a `CONFIG_DATA` read with `CONFIG_ENABLE` clear returns
//! all-ones.
//!
//! Sized accesses to `CONFIG_DATA` (a 1- or 2-byte access at 0xCFC + n reaches bytes
//! n.. of the selected dword), on the host bridge, compared with the dword reads:
//! the vendor ID as two bytes (0xCFC, 0xCFD) and as a word (0xCFC), the device ID as a
//! word at 0xCFE, the unaligned word at 0xCFD (bytes 1-2 of the dword), and at register
//! 0x08 the revision (byte at 0xCFC), subclass (0xCFE) and base class (0xCFF).
//!
//! Writes, on the command register (0x04, the bridge's only writable register: bits
//! I/O, memory, bus master, parity error response and SERR# enable, mask 0x0147): all
//! ones written as a dword read back 0x00000147 (the rest of the command and the status
//! are read-only); a byte write of 0 at 0xCFC changes only the low byte (word read at
//! 0xCFC gives 0x0100); a byte write at 0xCFD and a word write of 0x0006 at 0xCFC give
//! 0x00000006; a word write of all ones to the status (0xCFE) leaves the dword alone; a
//! dword of all ones to the IDs (register 0) leaves them alone; a dword written with
//! `CONFIG_ENABLE` clear is ignored; then the command is set back to its first value.
//!
//! Expected console lines (prefix = the partition's name in the config, e.g. `[pci]`),
//! among the `PASS guest-pci: ...` check lines:
//! ```text
//! [pci] pci: 00:00.0 8086:1237 class 060000
//! [pci] pci: bytes 0x86 0x80, words 0x8086 (0xCFC) 0x1237 (0xCFE) 0x3780 (0xCFD)
//! [pci] pci: command register C, all ones written reads W
//! [pci] PASS guest-pci
//! ```
//! On a failed check: `FAIL guest-pci: <check>`, then `FAIL guest-pci`, stop code 1.
#![no_std]
#![no_main]

use guest_rt::port::{inb, inl, inw, outb, outl, outw};
use guest_rt::{check, check_fmt, println, stop};

const NAME: &str = "guest-pci";
const CONFIG_ADDRESS: u16 = 0xCF8;
const CONFIG_DATA: u16 = 0xCFC;
const CONFIG_ENABLE: u32 = 1 << 31;
/// The command register's offset and the bits of it the host bridge implements (I/O
/// space, memory space, bus master, parity error response, SERR# enable).
const COMMAND: u8 = 0x04;
const COMMAND_WRITABLE: u32 = 0x0147;

fn address(bus: u8, device: u8, function: u8, offset: u8) -> u32 {
    CONFIG_ENABLE
        | u32::from(bus) << 16
        | u32::from(device & 0x1F) << 11
        | u32::from(function & 7) << 8
        | u32::from(offset & 0xFC)
}

fn config_read(bus: u8, device: u8, function: u8, offset: u8) -> u32 {
    outl(CONFIG_ADDRESS, address(bus, device, function, offset));
    inl(CONFIG_DATA)
}

/// Selects the host bridge's register `offset` (its dword) for the sized accesses.
fn select_bridge(offset: u8) {
    outl(CONFIG_ADDRESS, address(0, 0, 0, offset));
}

/// Byte `lane` (0-3) of `CONFIG_DATA`.
fn data_port(lane: u16) -> u16 {
    CONFIG_DATA + lane
}

/// Byte and word reads of `CONFIG_DATA` against the dword reads; returns whether all
/// checks passed.
fn sized_reads() -> bool {
    let id = config_read(0, 0, 0, 0x00);
    let class = config_read(0, 0, 0, 0x08);
    let mut ok = true;

    select_bridge(0x00);
    let (b0, b1) = (inb(data_port(0)), inb(data_port(1)));
    let vendor_word = inw(data_port(0));
    let device_word = inw(data_port(2));
    let middle_word = inw(data_port(1));
    println!(
        "pci: bytes {b0:#04x} {b1:#04x}, words {vendor_word:#06x} (0xCFC) {device_word:#06x} (0xCFE) {middle_word:#06x} (0xCFD)"
    );
    let vendor = u16::from_le_bytes([b0, b1]);
    ok &= check_fmt(
        NAME,
        format_args!("vendor ID as bytes at 0xCFC/0xCFD is 0x8086, as the dword says ({vendor:#06x})"),
        vendor == 0x8086 && u32::from(vendor) == id & 0xFFFF,
    );
    ok &= check_fmt(
        NAME,
        format_args!("vendor ID as a word at 0xCFC is 0x8086 ({vendor_word:#06x})"),
        u32::from(vendor_word) == id & 0xFFFF,
    );
    ok &= check_fmt(
        NAME,
        format_args!("device ID as a word at 0xCFE is 0x1237, as the dword says ({device_word:#06x})"),
        device_word == 0x1237 && u32::from(device_word) == id >> 16,
    );
    ok &= check_fmt(
        NAME,
        format_args!("unaligned word at 0xCFD is bytes 1-2 of the dword, 0x3780 ({middle_word:#06x})"),
        u32::from(middle_word) == id >> 8 & 0xFFFF,
    );

    select_bridge(0x08);
    let (revision, subclass, base) = (inb(data_port(0)), inb(data_port(2)), inb(data_port(3)));
    ok &= check_fmt(
        NAME,
        format_args!(
            "register 0x08 as bytes: revision 0x02 (0xCFC), subclass 0x00 (0xCFE), base class 0x06 (0xCFF), as the dword says ({revision:#04x} {subclass:#04x} {base:#04x})"
        ),
        (revision, subclass, base) == (0x02, 0x00, 0x06) && u32::from_le_bytes([revision, (class >> 8) as u8, subclass, base]) == class,
    );
    ok
}

/// Sized writes to the command register (and to read-only registers) read back
/// through dword and word reads; returns whether all checks passed.
fn command_writes() -> bool {
    let mut ok = true;
    let first = config_read(0, 0, 0, COMMAND);
    select_bridge(COMMAND);
    outl(CONFIG_DATA, u32::MAX);
    let all = inl(CONFIG_DATA);
    println!("pci: command register {first:#010x}, all ones written reads {all:#010x}");
    ok &= check_fmt(
        NAME,
        format_args!("command/status: all ones written as a dword read back 0x00000147 ({all:#010x})"),
        all == COMMAND_WRITABLE,
    );

    outb(data_port(0), 0);
    let word = inw(data_port(0));
    ok &= check_fmt(
        NAME,
        format_args!("command: a byte write of 0 at 0xCFC clears only the low byte (word reads 0x0100: {word:#06x})"),
        word == 0x0100,
    );
    outb(data_port(1), 0);
    outw(data_port(0), 0x0006);
    let dword = inl(CONFIG_DATA);
    ok &= check_fmt(
        NAME,
        format_args!("command: byte 0 at 0xCFD, then word 0x0006 at 0xCFC read back 0x00000006 ({dword:#010x})"),
        dword == 0x0006,
    );
    outw(data_port(2), 0xFFFF);
    let dword = inl(CONFIG_DATA);
    ok &= check_fmt(
        NAME,
        format_args!("status: a word of all ones at 0xCFE leaves the dword at 0x00000006 ({dword:#010x})"),
        dword == 0x0006,
    );

    select_bridge(0x00);
    outl(CONFIG_DATA, u32::MAX);
    let id = inl(CONFIG_DATA);
    ok &= check_fmt(NAME, format_args!("IDs: all ones written leave 0x12378086 ({id:#010x})"), id == 0x1237_8086);

    outl(CONFIG_ADDRESS, address(0, 0, 0, COMMAND) & !CONFIG_ENABLE);
    outl(CONFIG_DATA, COMMAND_WRITABLE);
    let dword = config_read(0, 0, 0, COMMAND);
    ok &= check_fmt(
        NAME,
        format_args!("command: a dword written with CONFIG_ENABLE clear is ignored ({dword:#010x})"),
        dword == 0x0006,
    );

    select_bridge(COMMAND);
    outw(data_port(0), first as u16);
    let back = inl(CONFIG_DATA);
    ok &= check_fmt(
        NAME,
        format_args!("command: set back to its first value ({first:#010x} -> {back:#010x})"),
        back == first,
    );
    ok
}

/// A function that answered.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Found {
    device: u8,
    function: u8,
    id: u32,
    class: u32,
    header: u8,
}

/// Entry point (see `hv_abi::start`).
#[no_mangle]
#[link_section = ".text._start"]
pub extern "C" fn _start(_vcpu: u64, _ram: u64) -> ! {
    let mut ok = true;

    let probe = address(0, 3, 0, 0x10);
    outl(CONFIG_ADDRESS, probe);
    let back = inl(CONFIG_ADDRESS);
    ok &= check_fmt(NAME, format_args!("CONFIG_ADDRESS reads back ({probe:#010x} -> {back:#010x})"), back == probe);

    let mut found: [Option<Found>; 8] = [None; 8];
    let mut count = 0usize;
    let mut record = |f: Found| {
        if let Some(slot) = found.get_mut(count) {
            *slot = Some(f);
        }
        count += 1;
    };
    for device in 0..32u8 {
        let functions = match config_read(0, device, 0, 0x0C) >> 16 & 0x80 {
            0 => 1,
            _ => 8,
        };
        for function in 0..functions {
            let id = config_read(0, device, function, 0);
            if id & 0xFFFF == 0xFFFF {
                continue;
            }
            let class = config_read(0, device, function, 0x08) >> 8;
            let header = (config_read(0, device, function, 0x0C) >> 16) as u8;
            record(Found { device, function, id, class, header });
        }
    }
    for f in found.iter().flatten() {
        println!(
            "pci: 00:{:02x}.{} {:04x}:{:04x} class {:06x}",
            f.device,
            f.function,
            f.id & 0xFFFF,
            f.id >> 16,
            f.class
        );
    }
    ok &= check_fmt(NAME, format_args!("exactly one function on bus 0 ({count} found)"), count == 1);
    let bridge = found[0];
    ok &= check(NAME, "it is 00:00.0", bridge.is_some_and(|f| (f.device, f.function) == (0, 0)));
    ok &= check(NAME, "vendor 0x8086, device 0x1237 (i440FX host bridge)", bridge.is_some_and(|f| f.id == 0x1237_8086));
    ok &= check(NAME, "class 0x060000 (host bridge)", bridge.is_some_and(|f| f.class == 0x06_0000));
    ok &= check(NAME, "header type 0, single function", bridge.is_some_and(|f| f.header == 0));

    outl(CONFIG_ADDRESS, address(0, 0, 0, 0) & !CONFIG_ENABLE);
    let data = inl(CONFIG_DATA);
    ok &= check_fmt(NAME, format_args!("CONFIG_DATA with CONFIG_ENABLE clear reads all-ones ({data:#010x})"), {
        data == 0xFFFF_FFFF
    });

    ok &= sized_reads();
    ok &= command_writes();

    if ok {
        println!("PASS {NAME}");
    } else {
        println!("FAIL {NAME}");
    }
    stop(if ok { 0 } else { 1 })
}
