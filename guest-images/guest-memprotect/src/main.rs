//! `guest-memprotect`: changes the EPT rights of its own RAM with the MEMORY_PROTECT
//! hypercall, on two vCPUs.
//!
//! First both vCPUs call MEMORY_PROTECT at the same time, [`ROUNDS`] times each on a
//! page of their own (read-only, then read/write again, then a write): each call waits
//! until the other vCPU's CPU has flushed, and two calls in flight at once must not
//! wait for each other. Then vCPU 0 checks the argument rules and that a page made read-only still reads, and
//! that rights can be given back. vCPU 1 keeps writing a page of its own, so its CPU
//! holds a writable translation of it; vCPU 0 then makes that page read-only. The
//! hypercall returns only once every CPU of the partition has dropped the old
//! translation (INVEPT), so vCPU 1's next write must exit: the hypervisor stops the
//! partition with a line naming vCPU 1's write. If that write went through instead,
//! vCPU 1 prints `FAIL`.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use guest_rt::hv_abi::{hypercall as hc, Error};
use guest_rt::{check, exceptions, lapic, println, raw_hypercall, smp, stop};

const NAME: &str = "guest-memprotect";
/// EPT rights bits of MEMORY_PROTECT.
const R: u64 = 1;
const W: u64 = 2;
const X: u64 = 4;

/// Pages of its own RAM to play with (page aligned, in the image's .bss).
#[repr(C, align(4096))]
struct Pages([[u64; 512]; 5]);
static mut PAGES: Pages = Pages([[0; 512]; 5]);

/// Writes vCPU 1 has done to its page.
static AP_WRITES: AtomicU64 = AtomicU64::new(0);

/// MEMORY_PROTECT rounds of each vCPU in the concurrent phase.
const ROUNDS: u64 = 100;
/// vCPU 1 began its rounds; vCPU 1's calls that did not return 0 (`u64::MAX`: not done).
static AP_STARTED: AtomicBool = AtomicBool::new(false);
static AP_FAILED_CALLS: AtomicU64 = AtomicU64::new(u64::MAX);

fn page(n: usize) -> *mut u64 {
    // SAFETY: only the address is taken; each page is used by one vCPU at a time.
    unsafe { core::ptr::addr_of_mut!(PAGES.0[n]).cast::<u64>() }
}

fn protect(gpa: u64, len: u64, rights: u64) -> u64 {
    raw_hypercall(hc::MEMORY_PROTECT, gpa, len, rights, 0)
}

/// [`ROUNDS`] times: page `n` read-only, read/write again, then written. Returns the
/// calls that did not return 0.
fn protect_rounds(n: usize) -> u64 {
    let p = page(n);
    let mut failed = 0;
    for i in 0..ROUNDS {
        failed += u64::from(protect(p as u64, 4096, R) != 0);
        failed += u64::from(protect(p as u64, 4096, R | W | X) != 0);
        // SAFETY: page `n` belongs to this vCPU and is writable again; volatile.
        unsafe { p.write_volatile(i) };
    }
    failed
}

extern "C" fn ap_entry(_apic_id: u32) -> ! {
    AP_STARTED.store(true, Ordering::SeqCst);
    AP_FAILED_CALLS.store(protect_rounds(3), Ordering::SeqCst);
    let p = page(2);
    loop {
        // SAFETY: page 2 belongs to this vCPU; volatile so every write reaches memory.
        unsafe { p.write_volatile(AP_WRITES.fetch_add(1, Ordering::SeqCst)) };
        if AP_WRITES.load(Ordering::SeqCst) > 50_000_000 {
            println!("FAIL {NAME}: vCPU 1 kept writing its read-only page");
            stop(1);
        }
    }
}

/// Entry point (see `hv_abi::start`).
#[no_mangle]
#[link_section = ".text._start"]
pub extern "C" fn _start(_vcpu: u64, ram_bytes: u64) -> ! {
    exceptions::install();
    lapic::enable();
    let mut ok = true;
    let p0 = page(0) as u64;
    let p1 = page(1) as u64;
    let p2 = page(2) as u64;

    // Argument rules.
    let bad_address = Error::BadAddress.to_rax();
    let bad_argument = Error::BadArgument.to_rax();
    ok &= check(NAME, "an unaligned address is refused", protect(p0 + 8, 4096, R) == bad_address);
    ok &= check(NAME, "a length that is not whole pages is refused", protect(p0, 100, R) == bad_address);
    ok &= check(NAME, "a range past its RAM is refused", protect(ram_bytes - 4096, 8192, R) == bad_address);
    ok &= check(NAME, "write without read is refused", protect(p0, 4096, W) == bad_argument);
    ok &= check(NAME, "unknown rights bits are refused", protect(p0, 4096, 8) == bad_argument);

    // A page made read-only still reads.
    // SAFETY: page 0 is this vCPU's; volatile accesses.
    unsafe { page(0).write_volatile(0x1234_5678) };
    ok &= check(NAME, "making a page read-only succeeds", protect(p0, 4096, R) == 0);
    // SAFETY: as above; reading is allowed.
    ok &= check(NAME, "reads of the read-only page still work", unsafe { page(0).read_volatile() } == 0x1234_5678);
    // Rights can be given back.
    ok &= check(
        NAME,
        "no access, then read/write/execute again",
        protect(p1, 4096, 0) == 0 && protect(p1, 4096, R | W | X) == 0,
    );
    // SAFETY: page 1 is writable again.
    unsafe { page(1).write_volatile(7) };
    // SAFETY: as above.
    ok &= check(NAME, "the page given back is writable", unsafe { page(1).read_volatile() } == 7);

    // Across CPUs: vCPU 1 writes page 2 in a loop.
    let online = smp::start_aps(1, ap_entry);
    ok &= check(NAME, "vCPU 1 came online", online == 1);
    // Both vCPUs change rights at the same time.
    while online == 1 && !AP_STARTED.load(Ordering::SeqCst) {
        core::hint::spin_loop();
    }
    let failed = protect_rounds(4);
    while online == 1 && AP_FAILED_CALLS.load(Ordering::SeqCst) == u64::MAX {
        core::hint::spin_loop();
    }
    ok &= check(
        NAME,
        "both vCPUs called MEMORY_PROTECT 200 times at once, every call succeeded",
        failed == 0 && AP_FAILED_CALLS.load(Ordering::SeqCst) == 0,
    );
    let before = AP_WRITES.load(Ordering::SeqCst);
    while AP_WRITES.load(Ordering::SeqCst) < before + 1000 {
        core::hint::spin_loop();
    }
    if !ok {
        println!("FAIL {NAME}");
        stop(1);
    }
    println!("PASS {NAME}: checks done; making vCPU 1's page read-only (the hypervisor stops the partition at its next write)");
    let result = protect(p2, 4096, R);
    // Normally the partition is stopped before this line runs.
    println!("{NAME}: MEMORY_PROTECT returned {result:#x} while vCPU 1 still writes");
    loop {
        core::hint::spin_loop();
    }
}
