//! `guest-ept`: touches all of its RAM above its image, checks that nothing of the
//! hypervisor's or another partition's memory shows through, then reads one byte past
//! the end of its RAM, which the hypervisor must answer by stopping it with a line
//! naming the address.
//!
//! Two partitions run this image at once (see `tests/configs/guest-ept.toml`); each
//! tags its RAM with a pattern derived from its own RAM size and looks for the other's.
#![no_std]
#![no_main]

use guest_rt::{check, println, stop};

const NAME: &str = "guest-ept";
/// Where filling starts: above the image (linked at 2 MiB) and its stack below it.
const FILL_START: u64 = 4 << 20;
/// The tag's upper bytes: "EPTAG" in ASCII; the low bytes hold the RAM size in MiB.
const TAG_PREFIX: u64 = 0x4550_5441_4700_0000;

fn tag(ram_mib: u64) -> u64 {
    TAG_PREFIX | ram_mib
}

/// The hypervisor's canary (`partition::HYPERVISOR_CANARY`), XOR-encoded so that this
/// image never holds it in clear; it is compared with a key known only at run time, so
/// no decoded copy ever sits in guest memory either.
const ENCODED_CANARY: [u8; 24] =
    *b"\x12\x0c\x77\x19\x1b\x14\x1b\x08\x03\x60\x32\x23\x2a\x3f\x28\x2c\x33\x29\x35\x28\x77\x37\x3f\x37";

fn is_canary(window: &[u8], key: u8) -> bool {
    window.len() == ENCODED_CANARY.len() && window.iter().zip(ENCODED_CANARY.iter()).all(|(w, e)| w ^ key == *e)
}

/// Entry point (see `hv_abi::start`): RDI = vCPU id, RSI = RAM size in bytes.
#[no_mangle]
#[link_section = ".text._start"]
pub extern "C" fn _start(_vcpu: u64, ram: u64) -> ! {
    let mib = ram >> 20;
    let mine = tag(mib);
    let mut ok = true;
    // Fill every qword from 4 MiB to the end of RAM, then read it all back.
    for a in (FILL_START..ram).step_by(8) {
        // SAFETY: [4 MiB, ram) is this guest's own RAM, identity-mapped, unused by the image.
        unsafe { (a as *mut u64).write_volatile(mine ^ a) };
    }
    let intact = (FILL_START..ram).step_by(8).all(|a| {
        // SAFETY: as above.
        unsafe { (a as *const u64).read_volatile() == mine ^ a }
    });
    ok &= check(NAME, "all RAM above 4 MiB keeps what was written", intact);
    // Give the other partition time to fill its RAM too, then scan all of ours.
    for _ in 0..2_000_000 {
        core::hint::spin_loop();
    }
    let key = core::hint::black_box(0x5a);
    let (mut foreign, mut hypervisor) = (0u64, 0u64);
    for a in (0..ram).step_by(8) {
        // SAFETY: every address below `ram` is this guest's RAM (identity-mapped).
        let v = unsafe { (a as *const u64).read_volatile() };
        if v ^ a != mine && (v ^ a) & !0xffff == TAG_PREFIX {
            foreign += 1;
        }
        if a + 24 <= ram {
            // SAFETY: as above; 24 bytes inside RAM.
            let window = unsafe { core::slice::from_raw_parts(a as *const u8, 24) };
            if is_canary(window, key) {
                hypervisor += 1;
            }
        }
    }
    ok &= check(NAME, "no other partition's tag is visible", foreign == 0);
    ok &= check(NAME, "no hypervisor canary is visible", hypervisor == 0);
    // The detector itself works: a decoded copy, made only now, is recognised.
    let mut probe = [0u8; 24];
    for (p, e) in probe.iter_mut().zip(ENCODED_CANARY.iter()) {
        *p = e ^ key;
    }
    ok &= check(NAME, "the canary detector recognises the canary", is_canary(core::hint::black_box(&probe), key));
    if ok {
        println!("PASS {NAME}: {mib} MiB touched and isolated");
    }
    println!("{NAME}: reading one byte past the end of RAM at {ram:#x}");
    // SAFETY: deliberately outside RAM: the hypervisor stops this guest here.
    let _ = unsafe { (ram as *const u8).read_volatile() };
    println!("FAIL {NAME}: the read past the end of RAM returned");
    stop(1)
}
