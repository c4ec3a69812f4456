//! `guest-hypercall`: bad hypercall numbers and bad arguments get error codes, never a
//! crash; good calls still work afterwards.
#![no_std]
#![no_main]

use guest_rt::hv_abi::{hypercall as hc, Error, ExitCount};
use guest_rt::{check, println, raw_hypercall, stop};

const NAME: &str = "guest-hypercall";
static MESSAGE: &[u8] = b"hypercall console write works\n";
static mut STATS: [ExitCount; 16] = [ExitCount { reason: 0, _reserved: 0, count: 0 }; 16];

fn is(ret: u64, e: Error) -> bool {
    Error::from_rax(ret) == Some(e)
}

/// A name `VM_CREATE` would accept, in this guest's RAM.
static VM_NAME: &[u8] = b"intruder";

/// The control interface and the service partition's calls belong to the service
/// partition alone (the config has one): each, called by this guest with arguments
/// that would otherwise be good enough to act on, gets `NotPermitted`.
fn service_only_calls_are_refused() -> bool {
    let name = VM_NAME.as_ptr() as u64;
    let message = MESSAGE.as_ptr() as u64;
    // (number, name, arguments): VM id 1 stands for "some guest VM".
    let calls: [(u64, &str, [u64; 4]); 16] = [
        (hc::SERVICE_REPLY_WAIT, "SERVICE_REPLY_WAIT", [u64::MAX, 0, 0, 0]),
        (hc::GUEST_IRQ_LINE, "GUEST_IRQ_LINE", [1, 4, 1, 0]),
        (hc::GUEST_POWER, "GUEST_POWER", [1, 0, 0, 0]),
        (hc::GUEST_CONSOLE_WRITE, "GUEST_CONSOLE_WRITE", [1, message, 8, 0]),
        (hc::SYSTEM_INFO, "SYSTEM_INFO", [0, 0, 0, 0]),
        (hc::VM_CREATE, "VM_CREATE", [name, VM_NAME.len() as u64, 0, 0]),
        (hc::VM_MAP_RAM, "VM_MAP_RAM", [1, 0, 2 << 20, 0]),
        (hc::VM_SET_DEVICES, "VM_SET_DEVICES", [1, 1, 0, 0]),
        (hc::VCPU_CREATE, "VCPU_CREATE", [1, 0, 0, 0]),
        (hc::VCPU_SET_STATE, "VCPU_SET_STATE", [1, 0, 0x20_0000, 0]),
        (hc::VCPU_START, "VCPU_START", [1, 0, 0, 0]),
        (hc::VM_STOP, "VM_STOP", [1, 0, 0, 0]),
        (hc::SERVICE_CONSOLE_READ, "SERVICE_CONSOLE_READ", [0x20_0000, 64, 0, 0]),
        (hc::GUEST_PIC_INTR, "GUEST_PIC_INTR", [1, 1, 0, 0]),
        (hc::VM_RESET, "VM_RESET", [1, 0, 0, 0]),
        (hc::SERVICE_COMPLETE, "SERVICE_COMPLETE", [0, 0, 0, 0]),
    ];
    let mut refused = 0;
    for (nr, call, [a, b, c, d]) in calls {
        let r = raw_hypercall(nr, a, b, c, d);
        if is(r, Error::NotPermitted) {
            refused += 1;
        } else {
            println!("FAIL {NAME}: {call} from a guest returned {r:#x}, not NotPermitted");
        }
    }
    check(NAME, "the 16 service-only hypercalls from a guest -> NotPermitted", refused == calls.len())
}

/// Entry point (see `hv_abi::start`): RDI = vCPU id, RSI = RAM size in bytes.
#[no_mangle]
#[link_section = ".text._start"]
pub extern "C" fn _start(vcpu: u64, ram: u64) -> ! {
    let mut ok = true;
    ok &= check(
        NAME,
        "unknown number 0xdead -> UnknownHypercall",
        is(raw_hypercall(0xdead, 0, 0, 0, 0), Error::UnknownHypercall),
    );
    ok &= check(
        NAME,
        "number u64::MAX -> UnknownHypercall",
        is(raw_hypercall(u64::MAX, 1, 2, 3, 4), Error::UnknownHypercall),
    );
    let w = |gpa: u64, len: u64| raw_hypercall(hc::CONSOLE_WRITE, gpa, len, 0, 0);
    ok &= check(NAME, "console write just past RAM -> BadAddress", is(w(ram, 8), Error::BadAddress));
    ok &= check(NAME, "console write straddling the end of RAM -> BadAddress", is(w(ram - 4, 8), Error::BadAddress));
    ok &= check(NAME, "console write with a wrapping range -> BadAddress", is(w(u64::MAX - 3, 8), Error::BadAddress));
    ok &= check(NAME, "console write of 0 bytes -> BadLength", is(w(0x20_0000, 0), Error::BadLength));
    ok &= check(NAME, "console write of 257 bytes -> BadLength", is(w(0x20_0000, 257), Error::BadLength));
    let len = MESSAGE.len() as u64;
    ok &= check(NAME, "a good console write returns its length", w(MESSAGE.as_ptr() as u64, len) == len);
    let stats = core::ptr::addr_of_mut!(STATS) as u64;
    let entry = core::mem::size_of::<ExitCount>() as u64;
    let s = |gpa: u64, bytes: u64| raw_hypercall(hc::EXIT_STATS, gpa, bytes, 0, 0);
    ok &= check(
        NAME,
        "exit stats into a buffer smaller than one entry -> BadLength",
        is(s(stats, entry - 1), Error::BadLength),
    );
    ok &= check(
        NAME,
        "exit stats into a buffer past RAM -> BadAddress",
        is(s(ram - entry, 2 * entry), Error::BadAddress),
    );
    let n = s(stats, 16 * entry);
    // SAFETY: the hypervisor wrote `n` entries into STATS; nothing else touches it.
    let entries = unsafe { &*core::ptr::addr_of!(STATS) };
    let vmcalls = entries.iter().take(n as usize).find(|e| e.reason == 18).map_or(0, |e| e.count);
    println!("{NAME}: exit stats: {n} reasons, {vmcalls} VMCALL exits so far");
    ok &= check(NAME, "exit stats count this vCPU's VMCALL exits", n >= 1 && vmcalls >= 10);
    ok &= service_only_calls_are_refused();
    ok &= check(NAME, "NOP returns 0", raw_hypercall(hc::NOP, 1, 2, 3, 4) == 0);
    ok &= check(NAME, "VCPU_ID still answers", raw_hypercall(hc::VCPU_ID, 0, 0, 0, 0) == vcpu);
    if ok {
        println!("PASS {NAME}");
    }
    stop(if ok { 0 } else { 1 })
}
