//! A bzImage is untrusted bytes: the Linux loader must never panic, never write outside
//! guest RAM, write nothing when it rejects the image, and start inside RAM when it
//! accepts it. The first bytes choose the e820 map, the ACPI RSDP, the command line and
//! how much of the tail is the initrd; the rest is the image.
#![no_main]

#[path = "loader_common.rs"]
mod common;

use common::{check, e820, split_tail, FuzzMemory};
use hv_loader::linux::{self, LinuxParams};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [ctl, cmdline_len, initrd_pages, rest @ ..] = data else { return };
    let (cmdline, rest) = rest.split_at(usize::from(*cmdline_len).min(rest.len()));
    let cmdline = core::str::from_utf8(cmdline).unwrap_or("console=ttyS0");
    let (image, initrd) = split_tail(rest, usize::from(*initrd_pages) * 64);
    let e820 = e820(*ctl);
    let p = LinuxParams {
        cmdline,
        initrd: (ctl & 4 != 0).then_some(initrd),
        e820: &e820,
        acpi_rsdp: (ctl & 8 != 0).then_some(0xf_5a10),
    };
    let _ = hv_loader::detect(image);
    let mut mem = FuzzMemory::new();
    check(linux::load_with_layout(&mut mem, image, &p), &mem);
});
