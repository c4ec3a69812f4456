//! The `svc-fault-test` port (`hv_abi::platform::devices`, only in test configs): the
//! service partition misbehaves on purpose, for the scenarios that check that the
//! hypervisor survives a broken service partition (`svc-crash`, `svc-deadline`,
//! `svc-halt`, `svc-init`).

use core::sync::atomic::{AtomicU32, AtomicU8, Ordering};

use guest_rt::{println, raw_hypercall};
use hv_abi::hypercall as hc;

/// Fails on purpose, for the scenarios that check how the hypervisor survives a broken
/// service partition: `FAULT_TEST_CRASH` triple-faults this vCPU (an empty IDT, then a
/// breakpoint), `FAULT_TEST_HANG` spins with interrupts off and never replies,
/// `FAULT_TEST_HALT` halts with interrupts off, `FAULT_TEST_INIT` sends this vCPU an
/// INIT (it then waits for a start-up IPI that never comes),
/// `FAULT_TEST_CREATE_FLOOD` calls `VM_CREATE` in a loop and reports what it got.
pub fn perform(value: u8) {
    use hv_abi::platform::devices::{
        FAULT_TEST_CRASH, FAULT_TEST_CREATE_FLOOD, FAULT_TEST_CREATE_FLOOD_CALLS, FAULT_TEST_HALT, FAULT_TEST_HANG,
        FAULT_TEST_INIT,
    };
    match value {
        FAULT_TEST_CREATE_FLOOD => {
            let seen = create_vm_flood(FAULT_TEST_CREATE_FLOOD_CALLS);
            println!(
                "service: fault test: VM_CREATE called {} times so far: {} created (stopped again), {} refused (no free VM), {} failed otherwise",
                seen.created + seen.refused + seen.other,
                seen.created,
                seen.refused,
                seen.other
            );
        }
        FAULT_TEST_CRASH => {
            println!("service: fault test: crashing this vcpu with a triple fault");
            let empty = [0u16; 5];
            // SAFETY: deliberately fatal: with a zero-limit IDT the breakpoint cannot be
            // delivered (#BP -> #GP -> #DF -> triple fault), which the hypervisor handles
            // by stopping this partition. Nothing after it runs.
            unsafe { core::arch::asm!("lidt [{}]", "int3", in(reg) empty.as_ptr(), options(nostack)) };
        }
        FAULT_TEST_HALT => {
            println!("service: fault test: halting this vcpu with interrupts off");
            loop {
                // SAFETY: deliberately stuck: HLT with interrupts off sleeps until an NMI
                // or INIT, which nothing sends; the hypervisor's request deadline ends it.
                unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) };
            }
        }
        FAULT_TEST_INIT => {
            use guest_rt::lapic::{self, icr};
            println!("service: fault test: sending this vcpu an INIT");
            lapic::send_ipi(lapic::id(), icr::INIT | icr::ASSERT);
            // The INIT takes effect at the next exit at the latest; nothing below runs.
            loop {
                core::hint::spin_loop();
            }
        }
        FAULT_TEST_HANG => {
            println!("service: fault test: hanging this vcpu with interrupts off");
            loop {
                core::hint::spin_loop();
            }
        }
        _ => {}
    }
}

/// What [`create_vm_flood`] has seen, over all its calls.
struct CreateFlood {
    /// Calls that created a VM (each stopped again at once).
    created: u32,
    /// Calls refused with `BadArgument`: no free VM entry.
    refused: u32,
    /// Calls that failed otherwise.
    other: u32,
}

/// The totals of [`create_vm_flood`]: created, refused, failed otherwise (atomics: any
/// service vCPU may serve the fault-test port).
static FLOOD_SEEN: [AtomicU32; 3] = [const { AtomicU32::new(0) }; 3];

/// The 32-byte VM name the flood passes (the hypervisor reads it from this partition's
/// RAM).
static FLOOD_NAME: [AtomicU8; 32] = [const { AtomicU8::new(b'f') }; 32];

/// `calls` `VM_CREATE` calls with a 32-byte name, as a broken service partition might
/// make them; every VM one of them creates is stopped at once (`VM_STOP`), so that it
/// holds nothing up. Returns the totals so far.
fn create_vm_flood(calls: u32) -> CreateFlood {
    let (name, len) = (FLOOD_NAME.as_ptr() as u64, FLOOD_NAME.len() as u64);
    for _ in 0..calls {
        let r = raw_hypercall(hc::VM_CREATE, name, len, 0, 0);
        let outcome = match hv_abi::Error::from_rax(r) {
            None => {
                raw_hypercall(hc::VM_STOP, r, 0, 0, 0);
                0
            }
            Some(hv_abi::Error::BadArgument) => 1,
            Some(_) => 2,
        };
        FLOOD_SEEN[outcome].fetch_add(1, Ordering::Relaxed);
    }
    let [created, refused, other] = FLOOD_SEEN.each_ref().map(|n| n.load(Ordering::Relaxed));
    CreateFlood { created, refused, other }
}
