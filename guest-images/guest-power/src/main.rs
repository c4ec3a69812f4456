//! `guest-power`: reads QEMU's fw_cfg signature, CPU count and RAM size (selector 0x510,
//! data 0x511; the counts must match this VM's: 1 vCPU and the RAM size of its start
//! state, which the service partition's guest builder gave its board) and the RTC
//! seconds register (index 0x70, data 0x71), then ends itself through `isa-debug-exit`
//! (an 8-bit write of 0x31 to port 0xF4), all emulated by the service partition. Run
//! with the `fw-cfg`, `rtc` and `debug-exit` devices (or `pc`).
//!
//! Expected console lines (prefix = the partition's name in the config, e.g. `[power]`),
//! among the `PASS guest-power: ...` check lines:
//! ```text
//! [power] PASS guest-power
//! ```
//! after which the hypervisor stops the partition with exit code 0x31 (49), logging
//! the power-off (`partition power: powered off through its platform (code 49)`).
//! If the write returns: `FAIL guest-power: still running after isa-debug-exit`, stop
//! code 1; a failed check prints `FAIL guest-power: <check>` and `FAIL guest-power`
//! and stops with code 1 without touching port 0xF4.
#![no_std]
#![no_main]

use guest_rt::cmos;
use guest_rt::port::{inb, outb, outw};
use guest_rt::{check, check_fmt, println, stop};

const NAME: &str = "guest-power";
const FW_CFG_SELECTOR: u16 = 0x510;
const FW_CFG_DATA: u16 = 0x511;
const RTC_SECONDS: u8 = 0x00;
const RTC_REG_A: u8 = 0x0A;
const RTC_UIP: u8 = 0x80;
const ISA_DEBUG_EXIT: u16 = 0xF4;
const EXIT_CODE: u8 = 0x31;

/// fw_cfg item key: RAM size in bytes (64-bit little-endian).
const FW_CFG_RAM_SIZE: u16 = 0x0003;
/// fw_cfg item key: CPUs present (16-bit little-endian).
const FW_CFG_NB_CPUS: u16 = 0x0005;

/// The first `len` (at most 8) bytes of fw_cfg item `key`, little-endian.
fn fw_cfg_read(key: u16, len: u32) -> u64 {
    outw(FW_CFG_SELECTOR, key);
    (0..len).fold(0, |value, i| value | u64::from(inb(FW_CFG_DATA)) << (8 * i))
}

/// Entry point (see `hv_abi::start`).
#[no_mangle]
#[link_section = ".text._start"]
pub extern "C" fn _start(_vcpu: u64, ram: u64) -> ! {
    let mut ok = true;

    outw(FW_CFG_SELECTOR, 0x0000);
    let mut signature = [0u8; 4];
    for b in signature.iter_mut() {
        *b = inb(FW_CFG_DATA);
    }
    ok &= check_fmt(NAME, format_args!("fw_cfg signature is \"QEMU\" ({signature:02x?})"), &signature == b"QEMU");
    let cpus = fw_cfg_read(FW_CFG_NB_CPUS, 2);
    ok &= check_fmt(NAME, format_args!("fw_cfg reports 1 CPU ({cpus})"), cpus == 1);
    let ram_reported = fw_cfg_read(FW_CFG_RAM_SIZE, 8);
    ok &= check_fmt(
        NAME,
        format_args!("fw_cfg reports this VM's RAM ({ram_reported:#x} bytes; the start state says {ram:#x})"),
        ram_reported == ram && ram != 0,
    );

    // Read the seconds outside an update cycle (bounded wait for UIP to clear).
    let settled = (0..10_000).any(|_| cmos::read(RTC_REG_A) & RTC_UIP == 0);
    let seconds = cmos::read(RTC_SECONDS);
    ok &= check(NAME, "RTC register A: the update-in-progress bit clears", settled);
    ok &= check_fmt(NAME, format_args!("RTC seconds are a BCD value below 0x60 ({seconds:#04x})"), {
        seconds < 0x60 && seconds & 0x0F <= 9
    });

    if !ok {
        println!("FAIL {NAME}");
        stop(1);
    }
    println!("PASS {NAME}");
    outb(ISA_DEBUG_EXIT, EXIT_CODE);
    println!("FAIL {NAME}: still running after isa-debug-exit");
    stop(1)
}
