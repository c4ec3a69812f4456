//! A Multiboot kernel is untrusted bytes: the loader must never panic, never write
//! outside guest RAM, write nothing when it rejects the image, and start inside RAM with
//! the information apart from the kernel when it accepts it. The first bytes choose the
//! e820 map, the command line and up to three modules cut from the tail; the rest is
//! the image.
#![no_main]

#[path = "loader_common.rs"]
mod common;

use common::{check, e820, split_tail, FuzzMemory};
use hv_loader::multiboot::{self, Module, MultibootParams};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [ctl, cmdline_len, m0, m1, m2, rest @ ..] = data else { return };
    let (cmdline, rest) = rest.split_at(usize::from(*cmdline_len).min(rest.len()));
    let cmdline = core::str::from_utf8(cmdline).unwrap_or("kernel");
    let (rest, mod2) = split_tail(rest, usize::from(*m2) * 16);
    let (rest, mod1) = split_tail(rest, usize::from(*m1) * 16);
    let (image, mod0) = split_tail(rest, usize::from(*m0) * 16);
    let all = [
        Module { bytes: mod0, cmdline: "zero" },
        Module { bytes: mod1, cmdline: "" },
        Module { bytes: mod2, cmdline: "two --x" },
    ];
    let modules = &all[..usize::from(ctl >> 6).min(all.len())];
    let e820 = e820(*ctl);
    let p = MultibootParams { cmdline, modules, e820: &e820 };
    let _ = hv_loader::detect(image);
    let mut mem = FuzzMemory::new();
    check(multiboot::load_with_layout(&mut mem, image, &p), &mem);
});
