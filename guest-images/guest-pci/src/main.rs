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
//! Expected console lines (prefix = the partition's name in the config, e.g. `[pci]`),
//! among the `PASS guest-pci: ...` check lines:
//! ```text
//! [pci] pci: 00:00.0 8086:1237 class 060000
//! [pci] PASS guest-pci
//! ```
//! On a failed check: `FAIL guest-pci: <check>`, then `FAIL guest-pci`, stop code 1.
#![no_std]
#![no_main]

use guest_rt::port::{inl, outl};
use guest_rt::{check, check_fmt, println, stop};

const NAME: &str = "guest-pci";
const CONFIG_ADDRESS: u16 = 0xCF8;
const CONFIG_DATA: u16 = 0xCFC;
const CONFIG_ENABLE: u32 = 1 << 31;

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

    if ok {
        println!("PASS {NAME}");
    } else {
        println!("FAIL {NAME}");
    }
    stop(if ok { 0 } else { 1 })
}
