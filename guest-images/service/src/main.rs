//! `service`: the service partition. It emulates the PC devices of the guest VMs
//! (`hv_devices::board::PcBoard`, one per guest VM) for the port I/O and MMIO the
//! hypervisor forwards to it (`hv_abi::service`, `hv_abi::io_request`).
//!
//! Every vCPU of the partition starts at [`_start`] in the 64-bit start state with
//! RDI = its vCPU id and its own stack (`hv_abi::service::STACK_BYTES` apart), prints
//! `service: vcpu N ready` (shown as `[<partition name>] service: vcpu N ready`) and
//! then serves requests forever. A request arrives on the service vCPU of the physical
//! CPU whose guest vCPU made the access; per request ([`serve`], [`vms::port_access`],
//! [`vms::mmio_access`]):
//!
//! 1. `SERVICE_REPLY_WAIT(reply)` returns the slot index with the request in registers
//!    ([`wait::reply_wait`]; the first call, and the one after a refused call, replies
//!    [`NO_REPLY`]); a slot index at or above `SLOTS` is ignored (the next call replies
//!    `NO_REPLY`).
//! 2. The request is the slot's five words as the call returned them (the slot in the
//!    shared array is the hypervisor's record; this partition does not read it).
//! 3. Only port I/O of 1, 2 or 4 bytes to a port (`address` <= 0xFFFF), MMIO of 1,
//!    2, 4 or 8 bytes (`address` = the guest-physical address) and PCI configuration
//!    accesses of 1, 2 or 4 bytes (`address` = bus << 16 | device << 11 | function << 8
//!    | register, <= 0xFF_FFFF; `PciHost::config_space_read` / `config_space_write`),
//!    read or write, by a VM
//!    whose index the table covers, is performed; anything else is answered `FAILED`
//!    (the hypervisor then completes it as an open bus; an interrupt acknowledge is
//!    the one other kind served, see below), and so is MMIO at an address
//!    that no device of the board decodes (`PcBoard::mmio_read` / `mmio_write`). A port
//!    no device decodes is an open bus on the board itself: `DONE`, reading all-ones.
//! 4. The VM's board is looked up (and created on its first request, or replaced when
//!    the VM id's generation changed: the old VM was destroyed), under that VM's lock.
//! 5. The board's clock is brought to now ([`clock::now`]) with `tick` (which does
//!    nothing until a device's next event is due: `hv_devices::board`, "Lazy ticks"),
//!    then the access is performed (ports: `PcBoard::read` / `write`; MMIO:
//!    `PcBoard::mmio_read` / `mmio_write`); interrupt lines that changed level are set
//!    with `GUEST_IRQ_LINE` as they change.
//! 6. The board's console output is drained; complete lines (and a partial line of 256
//!    bytes) go out with `GUEST_CONSOLE_WRITE` as the guest's output.
//! 7. A power request the access made is performed after the guest's partial console
//!    line is flushed: a power-off (PM1 S5, isa-debug-exit) with `GUEST_POWER`; a
//!    reset (0xCF9, the keyboard controller's pulse-reset command) reboots the guest
//!    once the VM's lock is released ([`builder::reboot`]: `VM_RESET`, the board reset,
//!    the guest's RAM and vCPUs built again), still within this request: the
//!    hypervisor drops the reset access's completion and restarts the guest's vCPUs.
//! 8. The next `SERVICE_REPLY_WAIT` replies with the slot index, the status (`DONE`) and,
//!    for a read, the data (zero-extended to the access size), in registers.
//!
//! The 8259 pair's INTR output: after every access, timer tick and console input the
//! board's `PicPair::output` is compared with the level last sent, and a change goes to
//! the hypervisor with `GUEST_PIC_INTR` (`vms::settle`). The hypervisor wires it to the
//! boot vCPU's LINT0; when that vCPU takes the interrupt, an interrupt-acknowledge
//! request (`kind::INTERRUPT_ACK`, one byte, read) arrives like a port read, and the
//! reply's data is the vector `PicPair::acknowledge` gives (`FAILED` when it gives
//! none: the PIC is uninitialized or not in 8086 mode).
//!
//! Device timers (PIT, RTC, ACPI PM timer, UART): every wait asks to be woken at the
//! earliest `next_event` of all boards ([`vms::next_wake`], passed as a TSC deadline);
//! when `SERVICE_REPLY_WAIT` returns `TIMER_EXPIRED`, every board is brought to now
//! ([`vms::tick_all`]), which raises the interrupts that came due.
//!
//! Deferred completion (`hv_abi::io_request`, "Deferred completion"): a read of the
//! `delay-test` port ([`vms::delay_test_access`]) is answered `DEFERRED` (step 8 writes
//! only the status). The next `SERVICE_REPLY_WAIT` of the vCPU that answered asks to be
//! woken at once; when it returns, the hypervisor has taken the answer, so the read is
//! confirmed ([`vms::confirm_deferred`]) and may complete. A timer tick that finds it
//! due completes it with `SERVICE_COMPLETE(slot, sequence, value, DONE)`, from whichever
//! vCPU ticks.
//!
//! Console input ([`console`]): after every request and every timer tick the service
//! partition asks the hypervisor for the bytes typed on the physical console (at most
//! every 10 ms, `SERVICE_CONSOLE_READ`; in between, a TSC comparison) and feeds them
//! to the UART of the guest that has the input focus, as fast as that guest reads them.
//!
//! Nothing in a slot can make it panic. There is no heap: the boards live in a static
//! table ([`vms`]).
#![no_std]
#![no_main]

mod builder;
mod clock;
mod console;
mod fault_test;
mod vms;
mod wait;
mod wake;

use guest_rt::println;
use hv_abi::io_request::{direction, kind, status, IoRequestSlot};
use hv_abi::platform::devices::DELAY_TEST_PORT;
use hv_abi::service::{VmId, NO_REPLY, SLOTS, TIMER_EXPIRED};
use hv_abi::Error;
use hv_devices::Nanos;

/// Entry point of every vCPU (see the module documentation): RDI = vCPU id, RSI = RAM
/// size in bytes.
#[no_mangle]
#[link_section = ".text._start"]
pub extern "C" fn _start(vcpu: u64, _ram_bytes: u64) -> ! {
    check_protocol_version(vcpu);
    clock::init(vcpu == 0);
    println!("service: vcpu {vcpu} ready");
    if vcpu == 0 {
        // The user-space-VMM part: create, build and start the guests the payload names.
        builder::build_all();
    }
    // The answer the next wait gives: the slot (NO_REPLY: none), its status and data.
    let (mut reply, mut reply_status, mut reply_data) = (NO_REPLY, status::FAILED, 0);
    // What changes rarely lives in memory, so that the request path keeps its registers.
    let mut wake = WakeDeadline::new();
    let mut reported = false;
    // The request this vCPU just answered DEFERRED (its slot, [`NOT_DEFERRED`]: none),
    // until the hypervisor has taken the answer (its next wait returns). Only the slot
    // is looked at on every request; its VM and sequence number are kept beside it.
    let mut deferred_slot = NOT_DEFERRED;
    let mut deferred_request = (VmId(0), 0);
    loop {
        // After a DEFERRED answer, come back at once to confirm it (see the module
        // documentation).
        let wake_at = if deferred_slot != NOT_DEFERRED { WAKE_AT_ONCE } else { wake.tsc() };
        let wait = wait::reply_wait(reply, wake_at, reply_status, reply_data);
        let r = wait.result;
        reply = NO_REPLY;
        if deferred_slot != NOT_DEFERRED {
            confirm_deferred(deferred_request, deferred_slot);
            deferred_slot = NOT_DEFERRED;
        }
        // A slot index (the common case) is below SLOTS; TIMER_EXPIRED and the errors
        // are far above.
        if r >= u64::from(SLOTS) {
            not_a_request(vcpu, r, &mut reported);
            continue;
        }
        let index = r as u32;
        let request = &wait.request;
        let (status, data) = serve(request, index);
        if status == status::DEFERRED {
            deferred_slot = index;
            deferred_request = (VmId(request.vm), request.sequence);
        }
        (reply, reply_status, reply_data) = (r, status, data.unwrap_or(0));
        console::poll();
    }
}

/// Stops this partition before it serves anything when the hypervisor speaks another
/// version of the I/O request protocol (`hv_abi::io_request::check_version`): the
/// requests and answers would be misread on both sides. vCPU 0 says why and stops the
/// partition; the others wait for that.
fn check_protocol_version(vcpu: u64) {
    use hv_abi::io_request::{check_version, VersionMismatch, VERSION};
    let reported = guest_rt::raw_hypercall(
        hv_abi::hypercall::SYSTEM_INFO,
        hv_abi::service::control::info::IO_REQUEST_VERSION,
        0,
        0,
        0,
    );
    let Err(mismatch) = check_version(reported) else { return };
    if vcpu != 0 {
        // vCPU 0 says why and stops the partition, this vCPU with it.
        loop {
            core::hint::spin_loop();
        }
    }
    match mismatch {
        VersionMismatch::Other(theirs) => println!(
            "service: the hypervisor speaks I/O request protocol version {theirs}, this service partition version {VERSION}; not serving: build both from the same tree"
        ),
        VersionMismatch::Unknown => println!(
            "service: the hypervisor does not say which I/O request protocol it speaks (this service partition speaks version {VERSION}); not serving: build both from the same tree"
        ),
    }
    guest_rt::stop(u64::MAX)
}

/// The TSC deadline each wait asks to be woken at: the earliest of
/// [`vms::next_wake`] and [`console::next_wake`], converted (a division) only when a
/// wake-up time changed ([`wake::generation`]).
struct WakeDeadline {
    /// The generation `tsc` was computed at.
    seen: u64,
    /// The wake-up time `tsc` stands for.
    nanos: Option<Nanos>,
    /// As a TSC deadline (0: none).
    tsc: u64,
}

impl WakeDeadline {
    fn new() -> Self {
        Self { seen: u64::MAX, nanos: None, tsc: 0 }
    }

    /// The deadline for the next wait.
    #[inline(always)]
    fn tsc(&mut self) -> u64 {
        let generation = wake::generation();
        if generation != self.seen {
            self.recompute(generation);
        }
        self.tsc
    }

    #[inline(never)]
    fn recompute(&mut self, generation: u64) {
        self.seen = generation;
        let next = match (vms::next_wake(), console::next_wake()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if next != self.nanos {
            self.nanos = next;
            self.tsc = next.map_or(0, clock::to_tsc);
        }
    }
}

/// The hypervisor has taken this vCPU's `DEFERRED` answer (in slot `slot`, to the
/// request `(vm, sequence)`): it may complete from now on.
#[cold]
#[inline(never)]
fn confirm_deferred((vm, sequence): (VmId, u64), slot: u32) {
    vms::confirm_deferred(vm, vms::DeferTag { slot, sequence });
}

/// A `SERVICE_REPLY_WAIT` result `r` that is no slot index: `TIMER_EXPIRED` runs the
/// device timers and polls the console; an error is reported once per vCPU
/// (`reported`), and the next wait replies nothing.
#[cold]
#[inline(never)]
fn not_a_request(vcpu: u64, r: u64, reported: &mut bool) {
    if r == TIMER_EXPIRED {
        vms::tick_all();
        console::poll();
    } else if let Some(e) = Error::from_rax(r) {
        if !*reported {
            println!("service: vcpu {vcpu}: SERVICE_REPLY_WAIT refused ({e:?}); waiting again without a reply");
            *reported = true;
        }
    }
}

/// No request was just answered DEFERRED (not a slot index: slots are below `SLOTS`).
const NOT_DEFERRED: u32 = u32::MAX;

/// A `SERVICE_REPLY_WAIT` wake-up deadline that has always passed (TSC 1; 0 means none).
const WAKE_AT_ONCE: u64 = 1;

/// The `svc-fault-test` port (`hv_abi::platform::devices`), which only test configs
/// forward.
const FAULT_TEST_PORT: u16 = 0xf6;

/// Performs the access `request` describes, posted in slot `index`; returns the status
/// to reply and, for a read, the data.
#[inline(always)]
fn serve(request: &IoRequestSlot, index: u32) -> (u8, Option<u64>) {
    match request.kind {
        kind::PORT => serve_port(request, index),
        kind::MMIO => serve_mmio(request),
        kind::INTERRUPT_ACK => serve_interrupt_ack(request),
        kind::PCI_CONFIG => {
            serve_pci_config(VmId(request.vm), request.address, request.size, request.direction, request.data)
        }
        _ => FAILED,
    }
}

/// A PCI configuration-space request (`kind::PCI_CONFIG`) of VM `vm`: an access to
/// `CONFIG_DATA` that the hypervisor resolved with the VM's `CONFIG_ADDRESS` (`address`
/// = bus << 16 | device << 11 | function << 8 | register). Out of line, and given the
/// fields by value, so that port requests keep the request in registers.
#[cold]
#[inline(never)]
fn serve_pci_config(vm: VmId, address: u64, size: u8, towards: u8, data: u64) -> (u8, Option<u64>) {
    if !matches!(size, 1 | 2 | 4) || address > hv_abi::io_request::MAX_PCI_CONFIG_ADDRESS {
        return FAILED;
    }
    let write = match towards {
        direction::READ => None,
        // The hypervisor masked the data to the access size.
        direction::WRITE => Some(data as u32),
        _ => return FAILED,
    };
    match vms::pci_config_access(vm, address, size, write) {
        Some(value) => done(write.is_none(), u64::from(value)),
        None => FAILED,
    }
}

/// An interrupt acknowledge (`kind::INTERRUPT_ACK`, a one-byte read): the INTA cycle of
/// the VM's 8259 pair; the vector is the data.
fn serve_interrupt_ack(request: &IoRequestSlot) -> (u8, Option<u64>) {
    if request.size != 1 || request.direction != direction::READ {
        return FAILED;
    }
    match vms::interrupt_acknowledge(VmId(request.vm)) {
        Some(vector) => done(true, u64::from(vector)),
        None => FAILED,
    }
}

/// The reply to a request that could not be performed.
const FAILED: (u8, Option<u64>) = (status::FAILED, None);

/// The reply to a performed access: `DONE`, with the data for a read.
fn done(read: bool, value: u64) -> (u8, Option<u64>) {
    (status::DONE, read.then_some(value))
}

/// A port request (`kind::PORT`).
#[inline(always)]
fn serve_port(request: &IoRequestSlot, index: u32) -> (u8, Option<u64>) {
    if !matches!(request.size, 1 | 2 | 4) || request.address > u64::from(u16::MAX) {
        return FAILED;
    }
    let port = request.address as u16;
    let write = match request.direction {
        direction::READ => None,
        // The hypervisor masked the data to the access size; the low 32 bits hold it.
        direction::WRITE => Some(request.data as u32),
        _ => return FAILED,
    };
    if port == FAULT_TEST_PORT || port == DELAY_TEST_PORT {
        let tag = vms::DeferTag { slot: index, sequence: request.sequence };
        return serve_test_port(VmId(request.vm), tag, request.size, port, write);
    }
    match vms::port_access(VmId(request.vm), port, request.size, write) {
        Some(value) => done(write.is_none(), u64::from(value)),
        None => FAILED,
    }
}

/// A request for one of the test ports that are not part of a board (`svc-fault-test`,
/// `delay-test`). Out of line: the other ports' requests do not pay for it.
#[cold]
#[inline(never)]
fn serve_test_port(vm: VmId, tag: vms::DeferTag, size: u8, port: u16, write: Option<u32>) -> (u8, Option<u64>) {
    if port == FAULT_TEST_PORT {
        if let Some(value) = write {
            fault_test::perform(value as u8);
        }
        return FAILED;
    }
    serve_delay_test(vm, tag, size, write)
}

/// A `delay-test` port request of VM `vm` (`tag`: its slot and sequence number) of
/// `size` bytes: a write sets the delay, a read is answered `DEFERRED` (completed later,
/// see the module documentation). Out of line: the other ports' requests do not pay
/// for it.
#[cold]
#[inline(never)]
fn serve_delay_test(vm: VmId, tag: vms::DeferTag, size: u8, write: Option<u32>) -> (u8, Option<u64>) {
    match vms::delay_test_access(vm, tag, size, write) {
        Some(vms::DelayAccess::Written) => done(false, 0),
        Some(vms::DelayAccess::Deferred) => (status::DEFERRED, None),
        Some(vms::DelayAccess::Busy) | None => FAILED,
    }
}

/// An MMIO request (`kind::MMIO`): `address` is the guest-physical address.
fn serve_mmio(request: &IoRequestSlot) -> (u8, Option<u64>) {
    if !matches!(request.size, 1 | 2 | 4 | 8) {
        return FAILED;
    }
    let write = match request.direction {
        direction::READ => None,
        // The hypervisor masked the data to the access size.
        direction::WRITE => Some(request.data),
        _ => return FAILED,
    };
    match vms::mmio_access(VmId(request.vm), request.address, request.size, write) {
        Some(value) => done(write.is_none(), value),
        None => FAILED,
    }
}
