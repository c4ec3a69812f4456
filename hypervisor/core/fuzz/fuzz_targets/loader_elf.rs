//! An ELF64 executable is untrusted bytes: the loader must never panic, never write
//! outside guest RAM, write nothing when it rejects the image, and start inside RAM when
//! it accepts it. The first byte chooses the lowest load address; the rest is the image.
#![no_main]

#[path = "loader_common.rs"]
mod common;

use common::{check, FuzzMemory};
use hv_loader::elf64;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [min, image @ ..] = data else { return };
    let min_load_addr = u64::from(*min) << 16;
    let _ = hv_loader::detect(image);
    let mut mem = FuzzMemory::new();
    check(elf64::load_with_layout(&mut mem, image, min_load_addr), &mem);
});
