//! The service partition at run time: same-core forwarding of guest I/O to it, and the
//! hypercalls only it may make (`hv_abi::service`).
//!
//! A physical CPU that runs a guest vCPU also holds one vCPU of the service partition.
//! That vCPU runs first, on its own, until it waits in `SERVICE_REPLY_WAIT` ([`bring_up`]).
//! From then on it runs only when this CPU forwards to it ([`begin_port_forward`] for
//! IN/OUT, in the guest's exit frame; [`forward`] for the rest, nested) or runs its
//! device timers: a guest access to a forwarded port is posted to the guest vCPU's
//! request slot, the CPU switches straight to the service vCPU (VMPTRLD; no IPI, no
//! scheduler), which returns from its wait with the slot index and the request in
//! registers ([`hand_out`]), emulates the access and answers with its next
//! `SERVICE_REPLY_WAIT` (status and data in registers, [`answer`]); the answer is
//! validated (`hv_core::io_request::validate_reply`) and the CPU switches back to the
//! guest, which completes its instruction.
//!
//! A service partition that stops (a fault, a triple fault, a failed entry) or takes
//! longer than [`REQUEST_DEADLINE_US`] on one request fails the waiting guest, which is
//! stopped with a line naming the access; the service partition is stopped in the
//! second case too. (For an IN/OUT handed over by [`begin_port_forward`] the deadline
//! counts from the service vCPU's first exit that is not its answer.) Guests without
//! forwarded devices never depend on it.
//!
//! **Deferred completion.** The service partition may reply `DEFERRED` (a request that
//! starts work it finishes later). The guest's instruction then stays where it is and
//! its CPU waits on the host side ([`wait_for_deferred`]): the service vCPU is back in
//! its wait, the CPU sleeps in `hlt` and runs the service's device timers when they are
//! due, until the service partition completes the request with `SERVICE_COMPLETE`
//! ([`hypercall_service_complete`], from any CPU: it kicks the waiting one), the guest
//! stops or gets an INIT (the request is dropped), or [`DEFERRED_DEADLINE_US`] passes
//! (the guest is stopped with a line naming the access; the service partition and the
//! other guests go on). Other CPUs are never held up: nothing is locked while waiting.

use core::sync::atomic::{AtomicU64, Ordering};

use hv_abi::io_request::{IoRequestSlot, SLOT_BYTES};
use hv_abi::service::{self, VmId, NO_REPLY};
use hv_abi::{hypercall, Error as HcError};
use hv_core::exit::IoInstruction;
use hv_core::io_request::deferred::DeferredWait;
use hv_core::io_request::{self, Completion, Reply, Request};
use hv_core::vmx_caps::VmxCapabilities;
use x86::vmx::vmcs::ro;

use crate::dispatch::{self, Outcome};
use crate::mm::frames;
use crate::partition::{self, Vcpu, Vm};
use crate::vmx::run::{self, Entry, GuestRegisters};
use crate::vmx::vmcs;

/// The longest the service partition may work on one request, in microseconds of
/// TSC time. Generous: under Bochs the TSC counts emulated instructions.
pub const REQUEST_DEADLINE_US: u64 = 2_000_000;
/// The longest a deferred request may wait for its `SERVICE_COMPLETE`, in
/// microseconds of TSC time, counted from the `DEFERRED` reply (longer than
/// [`REQUEST_DEADLINE_US`]: the service partition does background work meanwhile).
pub const DEFERRED_DEADLINE_US: u64 = 5_000_000;
/// [`ForwardError::MissedDeferredDeadline`]'s description names the deadline.
const _: () = assert!(DEFERRED_DEADLINE_US == 5_000_000);
/// The longest a service vCPU may take from its start to its first wait.
const BRING_UP_DEADLINE_US: u64 = 20_000_000;
/// Basic exit reason of VMCALL (SDM Vol. 3 appendix C).
const EXIT_VMCALL: u16 = 18;

/// Host-physical address of the request-slot array (0 while there is no service
/// partition).
static SLOTS: AtomicU64 = AtomicU64::new(0);

/// Why a forwarded access could not be completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardError {
    /// No service partition runs on this CPU: the port is unclaimed.
    NoService,
    /// The service partition stopped, or was never started.
    ServiceStopped,
    /// The service partition missed the request deadline and was stopped.
    MissedDeadline,
    /// The VMCS switch failed (a hypervisor bug); the access fails.
    SwitchFailed,
    /// A deferred request was not completed within [`DEFERRED_DEADLINE_US`].
    MissedDeferredDeadline,
    /// The guest was stopped (or reset) while it waited on a deferred request, which is
    /// dropped.
    GuestStopped,
    /// An INIT reached the guest vCPU while it waited on a deferred request, which is
    /// dropped; the instruction is not completed (the INIT resets the vCPU).
    Interrupted,
    /// The guest was reset (`partition::reset_vm`, a reboot) while it waited on a
    /// deferred request, which is dropped; the instruction is not completed (the vCPU
    /// restarts from its start state).
    ResetWhileWaiting,
}

impl ForwardError {
    /// A short description for log lines.
    #[must_use]
    pub fn describe(self) -> &'static str {
        match self {
            Self::NoService => "no service partition runs on this CPU",
            Self::ServiceStopped => "the service partition has stopped",
            Self::MissedDeadline => "the service partition missed the request deadline",
            Self::SwitchFailed => "switching to the service partition failed",
            Self::MissedDeferredDeadline => {
                "the service partition did not complete the deferred request within 5000 ms"
            }
            Self::GuestStopped => "the guest stopped while it waited",
            Self::Interrupted => "an INIT reached the vCPU while it waited",
            Self::ResetWhileWaiting => "the guest was reset while it waited",
        }
    }
}

/// A guest access to forward: port I/O, MMIO or PCI configuration (`hv_abi::io_request::kind`).
#[derive(Debug, Clone, Copy)]
pub struct Access {
    pub kind: u8,
    pub address: u64,
    pub size: u8,
    pub write: bool,
    pub data: u64,
}

/// The port access `io` of guest vCPU `vcpu` (`data`: a write's value, RAX) through
/// the service partition: [`access`] of a `kind::PORT` access.
#[inline(never)]
pub fn forward_port(vcpu: &'static Vcpu, io: IoInstruction, data: u64) -> Result<Completion, Outcome> {
    let port_access = Access {
        kind: hv_abi::io_request::kind::PORT,
        address: u64::from(io.port()),
        size: io.size(),
        write: !io.is_in(),
        data,
    };
    access(vcpu, &port_access)
}

/// A configuration-space access of guest vCPU `vcpu` at `address` (a
/// `hv_abi::io_request::kind::PCI_CONFIG` address, from `hv_core::pci_config::route`) of
/// `size` bytes, writing `write` (`None`: a read): [`access`] of a `PCI_CONFIG` access.
#[inline(never)]
pub fn forward_pci_config(
    vcpu: &'static Vcpu,
    address: u64,
    size: u8,
    write: Option<u64>,
) -> Result<Completion, Outcome> {
    let config_access = Access {
        kind: hv_abi::io_request::kind::PCI_CONFIG,
        address,
        size,
        write: write.is_some(),
        data: write.unwrap_or(0),
    };
    vcpu.pci_config_requests.fetch_add(1, Ordering::Relaxed);
    access(vcpu, &config_access)
}

/// A port access in flight through the same-frame switch: posted by
/// [`begin_port_forward`], answered in [`take_port_answer`] (or [`finish_port_forward`]).
/// Only what the common case needs; the slow paths rebuild the posted request
/// ([`PortForward::request`]). The slot is the guest vCPU's own (`Vcpu::request_slot`).
#[derive(Clone, Copy)]
pub struct PortForward {
    /// The guest's instruction (port, size, direction), which its completion needs.
    pub io: IoInstruction,
    /// RAX at the guest's exit (the data of an OUT; `post` masks it to the size).
    data: u64,
    /// The service vCPU it was handed to (`None`: nothing in flight).
    pub svc: Option<&'static Vcpu>,
    /// The guest's reset epoch when the access was posted.
    epoch: u32,
}

impl PortForward {
    /// Nothing in flight.
    pub const NONE: Self = Self { io: Self::NONE_IO, data: 0, svc: None, epoch: 0 };

    /// The instruction of [`PortForward::NONE`]: `in al, dx` with DX = 0 (qualification
    /// bit 3, size encoding 0).
    const NONE_IO: IoInstruction = IoInstruction::decode(1 << 3).unwrap();

    /// The request as guest vCPU `guest` posted it.
    fn request(&self, guest: &'static Vcpu) -> Request {
        port_request(guest, self.io, self.data)
    }

    /// The slot as guest vCPU `guest` posted it (for the slow paths' log lines).
    fn posted(&self, guest: &'static Vcpu) -> IoRequestSlot {
        let sequence = guest.io_sequence.load(Ordering::Relaxed);
        io_request::post(&self.request(guest), sequence).unwrap_or_default()
    }
}

/// The request of guest vCPU `guest` for the port access `io` (`data`: RAX at its exit).
#[inline(always)]
fn port_request(guest: &'static Vcpu, io: IoInstruction, data: u64) -> Request {
    Request {
        kind: hv_abi::io_request::kind::PORT,
        address: u64::from(io.port()),
        size: io.size(),
        write: !io.is_in(),
        data,
        vm: vm_id(guest.vm).0,
        vcpu: guest.id,
    }
}

/// The fast way to forward the port access `io` (`data`: RAX) of guest vCPU `guest`,
/// whose exit frame is `frame`: the request is posted to the guest's slot
/// and the CPU switches to this CPU's service vCPU in the same exit frame. Its VMCS is
/// made current, its registers and `on_service_exit` take the frame's place, and the
/// exit stub enters it when the guest's hook returns `run::RESUME`. Its next exit comes
/// to `on_service_exit` with the registers of both saved, which calls
/// [`take_port_answer`] (and [`finish_port_forward`] when that is not the answer).
///
/// Validate, then commit: [`PortForwardStart::Declined`], with nothing changed, when
/// the fast way does not apply. That is when no service vCPU on this CPU waits in
/// `SERVICE_REPLY_WAIT` (launched, not stopping, nothing for `prepare_entry` to do; the
/// stop is checked on its own: `prepare_entry` clears `attention` when it sees it) or
/// the guest vCPU has no slot. The caller then forwards the access the general way
/// ([`forward_port`]), which handles every case.
///
/// No deadline is taken here: the service vCPU's first exit that is not its answer
/// starts the [`REQUEST_DEADLINE_US`] clock ([`serve_after_exit`]), and until it exits
/// it holds nothing up but this guest vCPU (any interrupt makes it exit).
#[inline(always)]
pub fn begin_port_forward(
    guest: &'static Vcpu,
    io: IoInstruction,
    data: u64,
    frame: &mut run::ExitFrame,
    on_service_exit: run::ExitHook,
) -> PortForwardStart {
    let index = guest.request_slot;
    let Some(svc) = partition::service_vcpu_for_cpu(guest.cpu) else { return PortForwardStart::Declined };
    let slots = SLOTS.load(Ordering::Acquire);
    if index == partition::NO_REQUEST_SLOT
        || slots == 0
        || svc.attention.load(Ordering::Acquire) != 0
        || !svc.launched.load(Ordering::Relaxed)
        || svc.vm.stop_requested()
    {
        return PortForwardStart::Declined;
    }
    // In guest mode from here (an INVEPT asked for since the look at its attention is
    // carried out now); the exit hook clears it.
    if !crate::virq::enter_guest_mode(svc) || !vmcs::load_from(&svc.vmcs) {
        // The service partition stopped (INVEPT failed), or VMPTRLD failed and changed
        // nothing: the guest's VMCS is still current.
        crate::virq::left_guest_mode(svc);
        return PortForwardStart::Declined;
    }
    // SAFETY: only this CPU touches the service vCPU's registers, and the vCPU is not
    // running now (it waits in SERVICE_REPLY_WAIT, its exit handled).
    let svc_regs = unsafe { &mut *svc.regs.get() };
    // The service vCPU's exits must come to this frame: the exit stub's stack pointer,
    // which is where the frame lies (HOST_RSP of the guest's VMCS).
    let frame_rsp = core::ptr::from_mut::<run::ExitFrame>(frame) as u64;
    if svc_regs.host_rsp != frame_rsp {
        if vmcs::write(x86::vmx::vmcs::host::RSP, frame_rsp).is_err() {
            crate::virq::left_guest_mode(svc);
            return host_rsp_failed(guest);
        }
        svc_regs.host_rsp = frame_rsp;
    }
    // Commit: nothing below can fail. (The frame and the in-flight record first: fewer
    // values are live while the request's words are built.)
    frame.regs = svc.regs.get();
    frame.on_exit = on_service_exit;
    let in_flight = PortForward { io, data, svc: Some(svc), epoch: guest.reset_epoch.load(Ordering::Acquire) };
    // SAFETY: only this CPU touches the guest vCPU's `port_forward`.
    unsafe { *guest.port_forward.get() = in_flight };
    let sequence = guest.io_sequence.load(Ordering::Relaxed) + 1;
    guest.io_sequence.store(sequence, Ordering::Relaxed);
    let words = io_request::port_request_words(&io, sequence, data, guest.request_ids);
    hand_out_words(svc_regs, index, &words);
    write_slot_words(slots + u64::from(index) * SLOT_BYTES as u64, &words);
    PortForwardStart::Switched
}

/// What [`begin_port_forward`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum PortForwardStart {
    /// The service vCPU is in the frame: resume it.
    Switched,
    /// Nothing changed: forward the access the general way.
    Declined,
    /// The service vCPU's VMCS could not take this frame (a VMWRITE of a host field
    /// failed: a hypervisor bug); logged, and the guest stopped (its VMCS current
    /// again, or the guest stopped for that too).
    Broken,
}

/// [`begin_port_forward`] could not write HOST_RSP of the service vCPU's VMCS
/// (current): logged, the guest's VMCS made current again and the guest stopped. Out
/// of line, so that the fast path keeps no values across a call.
#[cold]
#[inline(never)]
fn host_rsp_failed(guest: &'static Vcpu) -> PortForwardStart {
    let err = vmcs::VmInstructionError::current();
    log::error!(
        "partition {}: vcpu {}: cannot point the service vCPU's exits at this CPU's frame: {}; stopping this partition",
        guest.vm.name,
        guest.id,
        err.describe()
    );
    // A failed switch back is logged, and stops the guest, too.
    let _ = switch_back(guest);
    guest.vm.stop(u64::MAX);
    PortForwardStart::Broken
}

/// The common end of a port access that [`begin_port_forward`] handed to the service
/// vCPU, whose exit this is (`svc_regs`: its registers, saved): when that exit is the
/// `SERVICE_REPLY_WAIT` that answers the guest's slot with `DONE` or `FAILED` and data
/// that fits (`io_request::PortAnswer`, which agrees with `validate_answer`), the wait
/// is taken (as [`take_wait`] takes it), `guest`'s VMCS is made current again and the
/// guest's RAX after its IN or OUT returned; `Err` when the guest must not complete
/// its instruction (it was reset meanwhile, or the switch back failed and it is
/// stopped).
///
/// Validate, then commit: `None`, with nothing changed (the service vCPU's VMCS still
/// current, its exit not taken), for any other exit or answer; the caller then calls
/// [`finish_port_forward`], which handles every case.
#[inline(always)]
pub fn take_port_answer(
    guest: &'static Vcpu,
    guest_rax: u64,
    svc_regs: &GuestRegisters,
    in_flight: &PortForward,
) -> Option<Result<u64, Outcome>> {
    let svc = in_flight.svc?;
    // The whole exit-reason field: a VMCALL exit with no other bit set.
    if vmcs::read_present(ro::EXIT_REASON) != u64::from(EXIT_VMCALL)
        || svc_regs.rax != hypercall::SERVICE_REPLY_WAIT
        || svc_regs.rbx != u64::from(guest.request_slot)
    {
        return None;
    }
    let (status, data) = answer(svc_regs);
    let rax = io_request::PortAnswer::for_access(&in_flight.io).apply(guest_rax, status, data)?;
    // Commit: the wait is taken.
    commit_wait(svc, svc_regs);
    if !vmcs::load_from(&guest.vmcs) {
        return Some(Err(switch_back_stopped(guest)));
    }
    if guest.reset_epoch.load(Ordering::Acquire) != in_flight.epoch {
        // The guest was reset while the access was in flight.
        return Some(Err(Outcome::Continue));
    }
    Some(Ok(rax))
}

/// [`take_port_answer`] could not switch back to the guest: the general path's
/// handling ([`switch_back`] fails, logged, and the guest stopped).
#[cold]
#[inline(never)]
fn switch_back_stopped(guest: &'static Vcpu) -> Outcome {
    match switch_back(guest) {
        Ok(()) => Outcome::Continue,
        Err(_) => Outcome::Stop,
    }
}

/// The service vCPU that [`begin_port_forward`] entered for guest vCPU `guest` exited
/// (its VMCS current, its registers saved) and [`take_port_answer`] did not take the
/// exit: takes its reply, or handles its exits and runs it on until it replies, misses
/// the deadline or stops, as [`forward`] does; then makes `guest`'s VMCS current again.
/// The result is what [`access`] gives.
#[inline(never)]
pub fn finish_port_forward(guest: &'static Vcpu, in_flight: &PortForward) -> Result<Completion, Outcome> {
    let result = match in_flight.svc {
        Some(svc) => take_reply(svc, guest, in_flight),
        // Cannot happen (`begin_port_forward` names it in every access it hands over).
        None => Err(ForwardError::ServiceStopped),
    };
    let result = match switch_back(guest).and(result) {
        Ok(Reply::Completed(completion)) => Ok(completion),
        Ok(Reply::Deferred) => wait_for_deferred(guest, &in_flight.request(guest)),
        Err(e) => Err(e),
    };
    let io = in_flight.io;
    conclude(guest, || (hv_abi::io_request::kind::PORT, u64::from(io.port()), !io.is_in()), result, in_flight.epoch)
}

/// The service vCPU's reply to `in_flight` (posted by guest vCPU `guest`), validated:
/// taken from the exit that just happened when that is the `SERVICE_REPLY_WAIT` that
/// answers the slot (the common case, inline), else by [`serve_after_exit`]. A reply
/// that fails validation is logged and fails the access.
#[inline(always)]
fn take_reply(svc: &'static Vcpu, guest: &'static Vcpu, in_flight: &PortForward) -> Result<Reply, ForwardError> {
    let reply = match take_wait(svc)? {
        Some(reply) if reply == u64::from(guest.request_slot) => {
            // SAFETY: only this CPU touches the service vCPU's registers; it is not running.
            let (status, data) = answer(unsafe { &*svc.regs.get() });
            io_request::validate_answer(in_flight.io.size(), !in_flight.io.is_in(), status, data)
        }
        other => serve_after_exit(svc, guest, in_flight, other)?,
    };
    Ok(reply.unwrap_or_else(|why| Reply::Completed(refused_reply(svc, &in_flight.posted(guest), why))))
}

/// [`take_reply`] when the service vCPU's exit (already taken: `reply` is its
/// `SERVICE_REPLY_WAIT` argument, `None` for any other exit) is not the answer: the
/// vCPU runs on, the nested way, until it answers ([`serve_loop`]) or
/// [`REQUEST_DEADLINE_US`] from now passes.
#[inline(never)]
fn serve_after_exit(
    svc: &'static Vcpu,
    guest: &'static Vcpu,
    in_flight: &PortForward,
    reply: Option<u64>,
) -> Result<Result<Reply, io_request::ReplyError>, ForwardError> {
    let deadline = crate::arch::tsc::deadline_us(REQUEST_DEADLINE_US);
    serve_loop(svc, guest.request_slot, &in_flight.posted(guest), deadline, reply)
}

/// Performs `access` of guest vCPU `vcpu` through the service partition. No service
/// partition on this CPU: `Failed` (reads see all-ones, writes are dropped, as on an
/// open bus). A failed service partition, or a deferred request not completed in time,
/// stops the guest with a line naming the access (`Err` carries the outcome). A guest
/// stopped while it waited on a deferred request gives `Err(Stop)`. An access during
/// which the guest was reset (the reset write itself, one that waited while another
/// vCPU reset the partition, or a deferred one the reset dropped) or, while deferred,
/// got an INIT is not completed: `Err(Continue)` (RIP not advanced), and the vCPU's next
/// entry restarts it (`partition::reset_vm`) or applies the INIT, so nothing of it
/// reaches the rebuilt guest.
#[inline(always)]
pub fn access(vcpu: &'static Vcpu, access: &Access) -> Result<Completion, Outcome> {
    let request = Request {
        kind: access.kind,
        address: access.address,
        size: access.size,
        write: access.write,
        data: access.data,
        vm: vm_id(vcpu.vm).0,
        vcpu: vcpu.id,
    };
    let epoch = vcpu.reset_epoch.load(Ordering::Acquire);
    conclude(vcpu, || (access.kind, access.address, access.write), forward(vcpu, &request), epoch)
}

/// What the forwarding of an access (`what` gives its kind, address and whether it
/// writes, for a log line; posted when the guest's reset epoch was `epoch`) means for
/// the guest's instruction; see [`access`].
#[inline(always)]
fn conclude(
    vcpu: &'static Vcpu,
    what: impl FnOnce() -> (u8, u64, bool),
    result: Result<Completion, ForwardError>,
    epoch: u32,
) -> Result<Completion, Outcome> {
    // The common case inline; the rest out of line, where its arms cost the forwarding
    // paths no registers.
    if let Ok(completion) = result {
        if vcpu.reset_epoch.load(Ordering::Acquire) == epoch {
            return Ok(completion);
        }
    }
    conclude_otherwise(vcpu, what(), result)
}

/// [`conclude`] for an access that failed or during which the guest was reset.
#[inline(never)]
fn conclude_otherwise(
    vcpu: &'static Vcpu,
    what: (u8, u64, bool),
    result: Result<Completion, ForwardError>,
) -> Result<Completion, Outcome> {
    match result {
        // The guest was reset while the access was in flight.
        Ok(_) => Err(Outcome::Continue),
        Err(ForwardError::NoService) => Ok(Completion::Failed),
        Err(ForwardError::GuestStopped) => Err(Outcome::Stop),
        Err(ForwardError::Interrupted | ForwardError::ResetWhileWaiting) => Err(Outcome::Continue),
        Err(e) => Err(access_failed(vcpu, what, e)),
    }
}

/// A forwarded access (its kind, address and whether it writes) failed for `e`:
/// logged, and the guest stopped.
#[cold]
#[inline(never)]
fn access_failed(vcpu: &'static Vcpu, (kind, address, write): (u8, u64, bool), e: ForwardError) -> Outcome {
    let what = kind_name(kind);
    log::error!(
        "partition {}: vcpu {}: {what} {:#x} {} failed: {}; stopping this partition",
        vcpu.vm.name,
        vcpu.id,
        address,
        if write { "write" } else { "read" },
        e.describe()
    );
    vcpu.vm.stop(u64::MAX);
    Outcome::Stop
}

/// Takes frames for the request-slot array and maps them into the service partition
/// `vm` at `hv_abi::service::SLOTS_GPA`.
pub fn map_slots(vm: partition::VmHandle) -> Result<(), partition::ControlError> {
    let host = frames::allocate_zeroed(service::SLOTS_BYTES / 4096, 4096, u64::MAX)
        .map_err(|_| partition::ControlError::OutOfMemory)?;
    partition::map_shared(vm, service::SLOTS_GPA, host, service::SLOTS_BYTES)?;
    SLOTS.store(host, Ordering::Release);
    Ok(())
}

/// The VM id the service partition knows `vm` by.
#[must_use]
pub fn vm_id(vm: &Vm) -> VmId {
    VmId::new(vm.index, vm.generation)
}

/// Sets up the service vCPU of this CPU and runs it until its first wait. `false` (with
/// a log line, and the service partition stopped) when it cannot get there.
pub fn bring_up(svc: &'static Vcpu, caps: &VmxCapabilities) -> bool {
    let name = svc.vm.name;
    if let Err(e) = crate::vcpu::setup(svc, caps) {
        log::error!("partition {name}: vcpu {}: VMCS set-up failed: {}", svc.id, e.describe());
        svc.vm.stop(u64::MAX);
        return false;
    }
    match run_until_idle(svc, crate::arch::tsc::deadline_us(BRING_UP_DEADLINE_US)) {
        Ok(()) => true,
        Err(e) => {
            if e == ForwardError::MissedDeadline {
                log::error!("partition {name}: vcpu {} did not reach its first wait in time; stopping it", svc.id);
                svc.vm.stop(u64::MAX);
            }
            log::error!("partition {name}: vcpu {} is not serving: {}", svc.id, e.describe());
            false
        }
    }
}

/// Runs the service vCPU (its VMCS current) until it waits without a reply. No request
/// is pending, so there is nothing to reply to: a wait that replies is refused with
/// `BadArgument` and the vCPU runs on.
fn run_until_idle(svc: &'static Vcpu, deadline: u64) -> Result<(), ForwardError> {
    while run_until_wait(svc, deadline)? != NO_REPLY {
        set_service_rax(svc, HcError::BadArgument.to_rax());
    }
    Ok(())
}

/// Makes `guest`'s VMCS current again after its CPU ran the service vCPU. This cannot
/// fail with a region set up on this CPU; if it does, nothing may touch the guest's
/// VMCS any more, so the guest is stopped.
#[inline(always)]
fn switch_back(guest: &'static Vcpu) -> Result<(), ForwardError> {
    if vmcs::load(guest.vmcs.load(Ordering::Acquire)).is_err() {
        return Err(switch_back_failed(guest));
    }
    Ok(())
}

/// [`switch_back`] failed: logged, and the guest stopped.
#[cold]
#[inline(never)]
fn switch_back_failed(guest: &'static Vcpu) -> ForwardError {
    log::error!("partition {}: vcpu {}: cannot switch back from the service partition", guest.vm.name, guest.id);
    guest.vm.stop(u64::MAX);
    ForwardError::SwitchFailed
}

fn set_service_rax(svc: &'static Vcpu, value: u64) {
    // SAFETY: only this CPU (the service vCPU's own) touches its registers, and the
    // vCPU is not running now.
    unsafe { (*svc.regs.get()).rax = value };
}

/// The TSC at which the service vCPU on `cpu` wants to be woken, if any (for a vCPU
/// that sleeps in HLT on that CPU: it must wake up by then).
#[must_use]
pub fn wake_deadline(cpu: u32) -> Option<u64> {
    let svc = partition::service_vcpu_for_cpu(cpu)?;
    Some(svc.wake_at.load(Ordering::Acquire)).filter(|&t| t != 0)
}

/// Runs the service vCPU of `guest`'s CPU when its wake-up deadline has passed (its
/// device models' timers), returning `TIMER_EXPIRED` from its wait. Called on the
/// guest's timer and external-interrupt exits (the kick backstop makes one at least
/// every millisecond) and from its HLT sleep, with the guest's VMCS current (and
/// current again on return); a no-op for the service partition's own vCPUs.
pub fn run_timers_if_due(guest: &'static Vcpu) {
    if guest.vm.is_service.load(Ordering::Relaxed) {
        return;
    }
    let Some(svc) = partition::service_vcpu_for_cpu(guest.cpu) else { return };
    let due = svc.wake_at.load(Ordering::Acquire);
    if due == 0 || crate::arch::tsc::now() < due || svc.vm.stop_requested() {
        return;
    }
    svc.wake_at.store(0, Ordering::Release);
    if vmcs::load(svc.vmcs.load(Ordering::Acquire)).is_err() {
        return;
    }
    set_service_rax(svc, service::TIMER_EXPIRED);
    if run_until_idle(svc, crate::arch::tsc::deadline_us(REQUEST_DEADLINE_US)) == Err(ForwardError::MissedDeadline) {
        log::error!(
            "partition {}: missed the {} ms deadline on a timer wake-up; stopping it",
            svc.vm.name,
            REQUEST_DEADLINE_US / 1000
        );
        svc.vm.stop(u64::MAX);
    }
    // A failure has stopped the guest, which its next entry check sees.
    let _ = switch_back(guest);
}

/// Enters the service vCPU (its VMCS current) until it calls `SERVICE_REPLY_WAIT`,
/// handling its other exits as any partition's; returns the call's reply argument
/// (RBX), with RIP already past the VMCALL. The result of the call (RAX) is whatever
/// the caller sets before the next entry.
///
/// Inlined into its callers (the forwarding path runs it once per request); the other
/// exits and a failed entry are handled out of line.
#[inline(always)]
fn run_until_wait(svc: &'static Vcpu, deadline: u64) -> Result<u64, ForwardError> {
    // SAFETY: only this CPU (the service vCPU's own) touches its registers.
    let regs: &mut GuestRegisters = unsafe { &mut *svc.regs.get() };
    loop {
        if svc.vm.stop_requested() {
            return Err(ForwardError::ServiceStopped);
        }
        if crate::arch::tsc::now() > deadline {
            return Err(ForwardError::MissedDeadline);
        }
        if crate::virq::prepare_entry_by(svc, regs, deadline) == Outcome::Stop {
            return Err(not_entered(svc));
        }
        if !crate::virq::enter_guest_mode(svc) {
            return Err(ForwardError::ServiceStopped);
        }
        let entry = run::enter(regs, svc.launched.load(Ordering::Relaxed));
        crate::virq::left_guest_mode(svc);
        match entry {
            Entry::Exited => {
                svc.launched.store(true, Ordering::Relaxed);
                if let Some(reply) = take_wait(svc)? {
                    return Ok(reply);
                }
            }
            Entry::FailInvalid | Entry::FailValid => return Err(entry_failed(svc)),
        }
    }
}

/// [`run_until_wait`]'s `prepare_entry_by` gave `Stop`: the service partition stopped,
/// or the vCPU sleeps (halted, or waiting for a start-up IPI after an INIT) and the
/// deadline passed (logged here; the caller reports the missed deadline and stops the
/// service partition, as for a vCPU that runs too long).
#[cold]
#[inline(never)]
fn not_entered(svc: &'static Vcpu) -> ForwardError {
    if svc.vm.stop_requested() {
        return ForwardError::ServiceStopped;
    }
    let state = match svc.mp_state() {
        partition::MpState::Halted => "is halted (HLT)",
        partition::MpState::WaitForSipi => "waits for a start-up IPI (after an INIT)",
        partition::MpState::Runnable => "did not run",
    };
    log::error!("partition {}: vcpu {} {state} past the deadline of the work it owes", svc.vm.name, svc.id);
    ForwardError::MissedDeadline
}

/// The service vCPU's exit that just happened (its VMCS current): a `SERVICE_REPLY_WAIT`
/// is taken (counted, its wake-up deadline kept, RIP past the VMCALL) and its reply
/// argument (RBX) returned; any other exit is handled as any partition's (`None`).
#[inline(always)]
fn take_wait(svc: &'static Vcpu) -> Result<Option<u64>, ForwardError> {
    // SAFETY: only this CPU (the service vCPU's own) touches its registers.
    let regs: &mut GuestRegisters = unsafe { &mut *svc.regs.get() };
    let basic = vmcs::read(ro::EXIT_REASON) as u16;
    if basic == EXIT_VMCALL && regs.rax == hypercall::SERVICE_REPLY_WAIT {
        commit_wait(svc, regs);
        return Ok(Some(regs.rbx));
    }
    if handle_other_exit(svc, regs) == Outcome::Stop {
        return Err(ForwardError::ServiceStopped);
    }
    Ok(None)
}

/// Takes the `SERVICE_REPLY_WAIT` exit that service vCPU `svc` (its VMCS current, its
/// registers `regs`) just made: counted, its wake-up deadline (RCX) kept, RIP past the
/// VMCALL.
#[inline(always)]
fn commit_wait(svc: &'static Vcpu, regs: &GuestRegisters) {
    svc.exits[usize::from(EXIT_VMCALL)].fetch_add(1, Ordering::Relaxed);
    svc.wake_at.store(regs.rcx, Ordering::Release);
    let _ = dispatch::advance_rip_trusted(vmcs::read_present(ro::VMEXIT_INSTRUCTION_LEN));
}

/// A service vCPU exit other than `SERVICE_REPLY_WAIT`: handled as any partition's.
#[inline(never)]
fn handle_other_exit(svc: &'static Vcpu, regs: &mut GuestRegisters) -> Outcome {
    dispatch::handle_exit(svc, regs)
}

/// A failed entry of the service vCPU: logged, and the service partition stopped.
#[cold]
#[inline(never)]
fn entry_failed(svc: &'static Vcpu) -> ForwardError {
    let err = vmcs::VmInstructionError::current();
    log::error!(
        "partition {}: vcpu {}: VM entry failed: {}; stopping this partition",
        svc.vm.name,
        svc.id,
        err.describe()
    );
    dispatch::dump_guest_state(svc);
    svc.vm.stop(u64::MAX);
    ForwardError::ServiceStopped
}

/// Forwards `request` of guest vCPU `guest` (whose VMCS is current) to the service
/// vCPU of this CPU and waits for its validated reply; the guest's VMCS is current
/// again on return. A reply that fails validation is logged and fails the access; a
/// `DEFERRED` one waits for the request's completion ([`wait_for_deferred`]).
#[inline(always)]
pub fn forward(guest: &'static Vcpu, request: &Request) -> Result<Completion, ForwardError> {
    let reply = forward_with(guest, request, |svc, posted, reply| {
        reply.unwrap_or_else(|why| Reply::Completed(refused_reply(svc, posted, why)))
    })?;
    match reply {
        Reply::Completed(completion) => Ok(completion),
        Reply::Deferred => wait_for_deferred(guest, request),
    }
}

/// An interrupt-acknowledge (INTA) cycle of `guest`'s 8259 pair: forwarded to the
/// service vCPU of this CPU like a port access (`hv_abi::io_request::kind::INTERRUPT_ACK`),
/// whose validated reply is the vector to inject. `None` (with a warning line) when the
/// service partition gives none: a refused reply, a `FAILED` answer (its PIC has no
/// vector to give), or a service partition that stopped or missed the deadline. Called
/// with `guest`'s VMCS current (current again on return) and no LAPIC lock held: the
/// service partition's hypercalls may deliver into this vCPU.
pub fn interrupt_acknowledge(guest: &'static Vcpu) -> Option<u8> {
    let request = io_request::interrupt_ack(vm_id(guest.vm).0, guest.id);
    match forward_with(guest, &request, |_, _, reply| io_request::interrupt_ack_vector(reply)) {
        Ok(Ok(vector)) => Some(vector),
        Ok(Err(why)) => {
            interrupt_ack_failed(guest, format_args!("{why:?}"));
            None
        }
        Err(e) => {
            interrupt_ack_failed(guest, format_args!("{}", e.describe()));
            None
        }
    }
}

/// [`interrupt_acknowledge`] got no vector: logged.
#[cold]
#[inline(never)]
fn interrupt_ack_failed(guest: &'static Vcpu, why: core::fmt::Arguments<'_>) {
    log::warn!(
        "partition {}: vcpu {}: interrupt acknowledge of its 8259 PIC gave no vector ({why}); no interrupt delivered",
        guest.vm.name,
        guest.id
    );
}

/// Posts `request` to `guest`'s slot, runs the service vCPU of this CPU until it
/// answers, and hands the validated reply to `finish` (with the service vCPU and the
/// posted slot, for its log lines); `guest`'s VMCS is current again on return.
#[inline(always)]
fn forward_with<T>(
    guest: &'static Vcpu,
    request: &Request,
    finish: impl FnOnce(&'static Vcpu, &IoRequestSlot, Result<Reply, io_request::ReplyError>) -> T,
) -> Result<T, ForwardError> {
    let svc = partition::service_vcpu_for_cpu(guest.cpu).ok_or(ForwardError::NoService)?;
    let slots = SLOTS.load(Ordering::Acquire);
    let index = service::slot_index(guest.vm.index, guest.id).ok_or(ForwardError::NoService)?;
    if slots == 0 {
        return Err(ForwardError::NoService);
    }
    if svc.vm.stop_requested() || svc.vmcs.load(Ordering::Acquire) == 0 {
        return Err(ForwardError::ServiceStopped);
    }
    let sequence = guest.io_sequence.fetch_add(1, Ordering::Relaxed) + 1;
    let posted = io_request::post(request, sequence).map_err(|_| ForwardError::SwitchFailed)?;
    let slot = slots + u64::from(index) * SLOT_BYTES as u64;
    write_slot(slot, &posted);
    if vmcs::load(svc.vmcs.load(Ordering::Acquire)).is_err() {
        return Err(ForwardError::SwitchFailed);
    }
    let result = serve(svc, index, &posted).map(|reply| finish(svc, &posted, reply));
    switch_back(guest)?;
    result
}

/// Runs the service vCPU (current VMCS) until it answers slot `index`; returns its
/// reply, validated.
#[inline(always)]
fn serve(
    svc: &'static Vcpu,
    index: u32,
    posted: &IoRequestSlot,
) -> Result<Result<Reply, io_request::ReplyError>, ForwardError> {
    let deadline = crate::arch::tsc::deadline_us(REQUEST_DEADLINE_US);
    // SAFETY: only this CPU touches the service vCPU's registers; it is not running.
    hand_out(unsafe { &mut *svc.regs.get() }, index, posted);
    serve_loop(svc, index, posted, deadline, None)
}

/// Runs the service vCPU (current VMCS), which holds request `posted` in slot `index`,
/// until it answers that slot or `deadline` passes; returns its answer, validated.
/// `reply` is the argument of a `SERVICE_REPLY_WAIT` it made already (`None`: none
/// yet). A wait without a reply gets the request handed out again; one that names
/// another slot is refused with `BadArgument`.
#[inline(always)]
fn serve_loop(
    svc: &'static Vcpu,
    index: u32,
    posted: &IoRequestSlot,
    deadline: u64,
    mut reply: Option<u64>,
) -> Result<Result<Reply, io_request::ReplyError>, ForwardError> {
    loop {
        if let Some(reply) = reply {
            // SAFETY: only this CPU touches the service vCPU's registers; it is not running.
            let regs = unsafe { &mut *svc.regs.get() };
            if reply == u64::from(index) {
                let (status, data) = answer(regs);
                return Ok(io_request::validate_reply(posted, status, data));
            }
            if reply == NO_REPLY {
                hand_out(regs, index, posted);
            } else {
                regs.rax = HcError::BadArgument.to_rax();
            }
        }
        reply = match run_until_wait(svc, deadline) {
            Ok(reply) => Some(reply),
            Err(ForwardError::MissedDeadline) => return Err(missed_request_deadline(svc, posted)),
            Err(e) => return Err(e),
        };
    }
}

/// The service partition deferred `request`, which guest vCPU `guest` (whose VMCS is
/// current, and current again on return) posted last: the CPU waits on the host side until
/// the completion comes (`SERVICE_COMPLETE`, from any CPU; it kicks this one) and
/// returns it. Meanwhile it sleeps in `hlt`, woken by kicks and by the host timer at the
/// service vCPU's wake-up deadline (its device timers run then, which may complete the
/// request from this CPU) or at the deferred deadline, and carries out INVEPT requests.
/// The wait ends without a completion, the request dropped, when the guest is stopped
/// or gets an INIT, the service partition stops, or [`DEFERRED_DEADLINE_US`] passes.
#[cold]
#[inline(never)]
fn wait_for_deferred(guest: &'static Vcpu, request: &Request) -> Result<Completion, ForwardError> {
    // The slot as it was posted (only this CPU numbers the vCPU's requests), rebuilt
    // here so that the synchronous path keeps no copy of it.
    let sequence = guest.io_sequence.load(Ordering::Relaxed);
    let Ok(posted) = io_request::post(request, sequence) else { return Err(ForwardError::SwitchFailed) };
    let posted = &posted;
    let svc = partition::service_vcpu_for_cpu(guest.cpu).ok_or(ForwardError::ServiceStopped)?;
    let deadline = crate::arch::tsc::deadline_us(DEFERRED_DEADLINE_US);
    if guest.deferred.lock().begin(*posted, deadline).is_err() {
        // One request per vCPU at a time: a wait left over is a hypervisor bug.
        log::error!("partition {}: vcpu {}: a deferred request was already waiting", guest.vm.name, guest.id);
        guest.deferred.lock().abandon();
        return Err(ForwardError::SwitchFailed);
    }
    log::debug!("partition {}: vcpu {}: {} deferred", guest.vm.name, guest.id, describe_access(posted));
    let result = loop {
        if let Some(completion) = guest.deferred.lock().take_completion() {
            break Ok(completion);
        }
        if guest.vm.stop_requested() || crate::virq::flush_ept_if_requested(guest) == Outcome::Stop {
            break Err(ForwardError::GuestStopped);
        }
        if guest.init_pending.load(Ordering::Acquire) {
            break Err(ForwardError::Interrupted);
        }
        // A reset waits until every vCPU of the guest has left guest mode (parked in
        // `virq`): this one must stop waiting for it.
        if crate::virq::reset_begun(guest) {
            break Err(ForwardError::ResetWhileWaiting);
        }
        if svc.vm.stop_requested() {
            break Err(ForwardError::ServiceStopped);
        }
        if guest.deferred.lock().is_overdue(crate::arch::tsc::now()) {
            break Err(ForwardError::MissedDeferredDeadline);
        }
        // The service partition's device timers, which may complete the request here.
        run_timers_if_due(guest);
        if matches!(*guest.deferred.lock(), DeferredWait::Completed(_)) {
            continue;
        }
        let wake = wake_deadline(guest.cpu).map_or(deadline, |t| t.min(deadline));
        crate::virq::sleep_until(Some(wake));
    };
    if let Err(e) = result {
        guest.deferred.lock().abandon();
        if matches!(e, ForwardError::GuestStopped | ForwardError::Interrupted | ForwardError::ResetWhileWaiting) {
            log::info!(
                "partition {}: vcpu {}: {} dropped: {}",
                guest.vm.name,
                guest.id,
                describe_access(posted),
                e.describe()
            );
        }
    }
    result
}

/// "deferred port 0xf8 read"-style words for log lines about request `posted`.
fn describe_access(posted: &IoRequestSlot) -> DeferredAccess {
    DeferredAccess(*posted)
}

/// See [`describe_access`].
struct DeferredAccess(IoRequestSlot);

impl core::fmt::Display for DeferredAccess {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let what = if self.0.kind == hv_abi::io_request::kind::PORT { "port" } else { "MMIO" };
        let direction = if self.0.direction == hv_abi::io_request::direction::WRITE { "write" } else { "read" };
        write!(f, "deferred {what} {:#x} {direction}", self.0.address)
    }
}

/// `SERVICE_COMPLETE(slot, sequence, data, status)`: completes the deferred request of
/// the guest vCPU that owns request slot `slot`, after checking everything (the slot
/// names a guest vCPU that waits on a deferred request with this sequence number,
/// `status` is DONE or FAILED, a read's data fits its size); then kicks that vCPU's CPU,
/// which completes the instruction. A refusal changes nothing and is logged.
pub fn hypercall_service_complete(
    caller: &'static Vcpu,
    slot: u64,
    sequence: u64,
    data: u64,
    status: u64,
) -> Result<u64, HcError> {
    if !caller.vm.is_service.load(Ordering::Acquire) {
        return Err(HcError::NotPermitted);
    }
    let Some(guest) = partition::guest_vcpu_for_slot(slot) else {
        return Err(refused_completion(caller, slot, sequence, "no guest vcpu has that slot"));
    };
    // A status that does not fit a byte is no status: the check below refuses it.
    let status = u8::try_from(status).unwrap_or(u8::MAX);
    let accepted = guest.deferred.lock().complete(sequence, status, data);
    if let Err(why) = accepted {
        return Err(refused_completion(caller, slot, sequence, why.describe()));
    }
    crate::virq::kick(guest);
    Ok(0)
}

/// A refused `SERVICE_COMPLETE`: logged; nothing changed.
#[cold]
#[inline(never)]
fn refused_completion(svc: &'static Vcpu, slot: u64, sequence: u64, why: &str) -> HcError {
    log::warn!(
        "partition {}: SERVICE_COMPLETE of slot {slot} (sequence {sequence:#x}) refused: {why}; nothing changed",
        svc.vm.name
    );
    HcError::BadArgument
}

/// The service partition missed the deadline on request `posted`: logged, and stopped.
#[cold]
#[inline(never)]
fn missed_request_deadline(svc: &'static Vcpu, posted: &IoRequestSlot) -> ForwardError {
    log::error!(
        "partition {}: missed the {} ms deadline on a request ({} {:#x}); stopping it",
        svc.vm.name,
        REQUEST_DEADLINE_US / 1000,
        kind_name(posted.kind),
        posted.address
    );
    svc.vm.stop(u64::MAX);
    ForwardError::MissedDeadline
}

/// The service partition's reply to `posted` failed validation: logged; the access
/// fails as on an open bus.
#[cold]
#[inline(never)]
fn refused_reply(svc: &'static Vcpu, posted: &IoRequestSlot, why: io_request::ReplyError) -> Completion {
    log::warn!(
        "partition {}: refused reply for {} access {:#x} ({why:?}); the access fails as on an open bus",
        svc.vm.name,
        kind_name(posted.kind),
        posted.address
    );
    Completion::Failed
}

/// A request kind's name for log lines.
fn kind_name(kind: u8) -> &'static str {
    match kind {
        hv_abi::io_request::kind::PORT => "port",
        hv_abi::io_request::kind::MMIO => "MMIO",
        hv_abi::io_request::kind::PCI_CONFIG => "PCI configuration",
        hv_abi::io_request::kind::INTERRUPT_ACK => "interrupt acknowledge",
        _ => "unknown",
    }
}

/// Writes the slot at host-physical `slot`: the record of request `value`.
#[inline(always)]
fn write_slot(slot: u64, value: &IoRequestSlot) {
    write_slot_words(slot, &value.to_words());
}

/// [`write_slot`] of a request's five words (`IoRequestSlot::to_words`).
#[inline(always)]
fn write_slot_words(slot: u64, value: &[u64; 5]) {
    let words = frames::phys_to_virt(slot).cast::<u64>();
    for (i, &word) in value.iter().enumerate() {
        // SAFETY: `slot` is one 64-byte slot inside the slot array (index checked by
        // `slot_index`), frames owned by the hypervisor and direct-mapped; word `i` < 5
        // of it is aligned. The service partition may write it at the same time, which
        // only garbles its own reply (and every reply is validated). The padding after
        // the five words stays 0 (the frames were zeroed and nothing writes there).
        unsafe { core::ptr::write_volatile(words.add(i), word.to_le()) };
    }
    core::sync::atomic::fence(Ordering::Release);
}

/// Hands request `posted` in slot `index` to a service vCPU waiting in
/// `SERVICE_REPLY_WAIT` (`regs`, entered next): the call returns the slot index, with
/// the slot's five words in RBX, RCX, RDX, RSI and RDI.
#[inline(always)]
fn hand_out(regs: &mut GuestRegisters, index: u32, posted: &IoRequestSlot) {
    hand_out_words(regs, index, &posted.to_words());
}

/// [`hand_out`] of a request's five words (`IoRequestSlot::to_words`).
#[inline(always)]
fn hand_out_words(regs: &mut GuestRegisters, index: u32, words: &[u64; 5]) {
    let [sequence, address, data, ids, kinds] = *words;
    regs.rax = u64::from(index);
    regs.rbx = sequence;
    regs.rcx = address;
    regs.rdx = data;
    regs.rsi = ids;
    regs.rdi = kinds;
}

/// The answer a service vCPU gave with its `SERVICE_REPLY_WAIT` (`regs` as it made the
/// call): status RSI (a value above a byte is no status, which validation refuses) and
/// data RDX.
#[inline(always)]
fn answer(regs: &GuestRegisters) -> (u8, u64) {
    (u8::try_from(regs.rsi).unwrap_or(u8::MAX), regs.rdx)
}

/// The guest VM a service-only hypercall names, after checking the caller.
fn target_guest(caller: &'static Vcpu, id: u64) -> Result<&'static Vm, HcError> {
    if !caller.vm.is_service.load(Ordering::Acquire) {
        return Err(HcError::NotPermitted);
    }
    let id = u32::try_from(id).map_err(|_| HcError::BadArgument)?;
    partition::guest_vm_by_id(VmId(id)).ok_or(HcError::BadArgument)
}

/// `GUEST_IRQ_LINE(vm, line, level)`.
pub fn hypercall_guest_irq_line(caller: &'static Vcpu, id: u64, line: u64, level: u64) -> Result<u64, HcError> {
    let vm = target_guest(caller, id)?;
    let line = u32::try_from(line).map_err(|_| HcError::BadArgument)?;
    let high = match level {
        0 => false,
        1 => true,
        _ => return Err(HcError::BadArgument),
    };
    crate::virq::set_irq_line(vm, line, high).map_err(|_| HcError::BadArgument)?;
    Ok(0)
}

/// `GUEST_PIC_INTR(vm, level)`: the level of the VM's 8259 INTR output, which drives
/// its boot vCPU's LINT0 (`virq::set_pic_intr`).
pub fn hypercall_guest_pic_intr(caller: &'static Vcpu, id: u64, level: u64) -> Result<u64, HcError> {
    let vm = target_guest(caller, id)?;
    let high = match level {
        0 => false,
        1 => true,
        _ => return Err(HcError::BadArgument),
    };
    crate::virq::set_pic_intr(vm, high);
    Ok(0)
}

/// `GUEST_POWER(vm, action, code)`.
pub fn hypercall_guest_power(caller: &'static Vcpu, id: u64, action: u64, code: u64) -> Result<u64, HcError> {
    let vm = target_guest(caller, id)?;
    match action {
        service::power::OFF => {
            log::info!("partition {}: powered off through its platform (code {code})", vm.name);
            vm.stop(code);
        }
        service::power::RESET => {
            // The service partition reboots a guest with `VM_RESET`; this is the way out
            // when it does not (`on_reset = "stop"`, or a guest it did not build).
            log::info!("partition {}: reset through its platform; not rebooted, so it stops", vm.name);
            vm.stop(0);
        }
        _ => return Err(HcError::BadArgument),
    }
    Ok(0)
}

/// `GUEST_CONSOLE_WRITE(vm, gpa, len)`: bytes from the service partition's RAM, shown
/// as the guest's console output.
pub fn hypercall_guest_console_write(caller: &'static Vcpu, id: u64, gpa: u64, len: u64) -> Result<u64, HcError> {
    let vm = target_guest(caller, id)?;
    dispatch::console_write(caller.vm, gpa, len, vm)
}

/// After the last guest stopped: reports the service partition's exits and marks it
/// stopped, so that it can be destroyed like the others. Its vCPUs wait in
/// `SERVICE_REPLY_WAIT` and are never entered again.
pub fn shut_down() {
    let Some(vm) = partition::service_vm() else { return };
    vm.stop(0);
    for v in vm.vcpus() {
        dispatch::report_stop(v, false);
    }
    vm.running.store(0, Ordering::Release);
    log::info!("partition {}: stopped (no guest left to serve)", vm.name);
}
