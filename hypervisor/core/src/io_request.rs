//! Posting an emulated access into an I/O request slot and checking the service
//! partition's reply (`hv_abi::io_request`), validate-then-commit style: everything the
//! service partition wrote is decoded and checked here before the hypervisor touches the
//! guest's registers.
//!
//! The service partition answers a request with two fields of its slot, `status` and
//! `data`, and the hypervisor reads back only those two: every other field is the
//! hypervisor's record of the request, which it keeps its own copy of (`posted`), so
//! nothing the service partition writes there has any effect. A reply is accepted only
//! if its status is `Done`, `Failed` or `Deferred` and a read's data fits the access
//! size. Anything else is a misbehaving service partition: the caller completes the
//! guest's access with an open-bus result and logs it, and the hypervisor keeps running.
//!
//! A `Deferred` reply ([`Reply::Deferred`]) is completed later by the service
//! partition's `SERVICE_COMPLETE` hypercall; [`deferred`] holds the waiting vCPU's side
//! of that: the state machine and the checks every completion passes.

use hv_abi::io_request::{direction, kind, status, IoRequestSlot};

/// An access the hypervisor forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub kind: u8,
    pub address: u64,
    /// 1, 2, 4 or 8 bytes.
    pub size: u8,
    pub write: bool,
    /// The data of a write (ignored for reads).
    pub data: u64,
    pub vm: u32,
    pub vcpu: u32,
}

/// Why a request cannot be posted (a hypervisor bug, not guest input).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostError {
    BadKind,
    BadSize,
    /// An interrupt acknowledge is a one-byte read at address 0.
    BadInterruptAck,
    /// A PCI configuration address above bus 255, device 31, function 7, register 0xFF.
    BadPciConfigAddress,
}

/// The outcome of an accepted reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// A read completed with this value (only the low `size` bytes can be set).
    Read(u64),
    /// A write completed.
    Written,
    /// The service partition could not perform it: reads see all-ones, writes are
    /// dropped.
    Failed,
}

/// What an accepted reply says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// The access is over: complete the guest's instruction with this.
    Completed(Completion),
    /// The service partition accepted the request and completes it later
    /// (`SERVICE_COMPLETE`); the guest's instruction waits.
    Deferred,
}

/// Why a reply was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyError {
    /// The slot is still pending or free: no reply yet.
    NotAnswered,
    /// The status byte is not a known state.
    BadStatus(u8),
    /// A read's data has bits above the access size.
    DataTooWide,
}

pub use crate::mmio_decode::size_mask;

/// The slot that posts `request` as number `sequence`.
// Inlined into the forwarding paths, where most of its checks fold away.
#[inline(always)]
pub fn post(request: &Request, sequence: u64) -> Result<IoRequestSlot, PostError> {
    if !matches!(request.kind, kind::PORT | kind::MMIO | kind::PCI_CONFIG | kind::INTERRUPT_ACK) {
        return Err(PostError::BadKind);
    }
    if request.kind == kind::INTERRUPT_ACK && (request.write || request.size != 1 || request.address != 0) {
        return Err(PostError::BadInterruptAck);
    }
    if !matches!(request.size, 1 | 2 | 4 | 8)
        || (matches!(request.kind, kind::PORT | kind::PCI_CONFIG) && request.size == 8)
    {
        return Err(PostError::BadSize);
    }
    if request.kind == kind::PCI_CONFIG && request.address > hv_abi::io_request::MAX_PCI_CONFIG_ADDRESS {
        return Err(PostError::BadPciConfigAddress);
    }
    Ok(IoRequestSlot {
        sequence,
        address: request.address,
        data: if request.write { request.data & size_mask(request.size) } else { 0 },
        vm: request.vm,
        vcpu: request.vcpu,
        kind: request.kind,
        size: request.size,
        direction: if request.write { direction::WRITE } else { direction::READ },
        status: status::PENDING,
        reserved: 0,
    })
}

/// The five words ([`IoRequestSlot::to_words`]) of the port request for the IN or OUT
/// `io` (`rax`: the guest's RAX, an OUT's data), posted as number `sequence` by the
/// guest vCPU whose id word (`vm | vcpu << 32`) is `ids`: the same words as
/// [`post`] of that request gives, built without its checks (an `IoInstruction`'s size
/// is always 1, 2 or 4). The hypervisor's fast port path uses it.
#[must_use]
#[inline(always)]
pub fn port_request_words(io: &crate::exit::IoInstruction, sequence: u64, rax: u64, ids: u64) -> [u64; 5] {
    let (data, direction) = if io.is_in() { (0, direction::READ) } else { (rax & io.value_mask(), direction::WRITE) };
    let kinds = u64::from(kind::PORT)
        | u64::from(io.size()) << 8
        | u64::from(direction) << 16
        | u64::from(status::PENDING) << 24;
    [sequence, u64::from(io.port()), data, ids, kinds]
}

/// How the answer to a port IN or OUT becomes the guest's RAX, worked out when the
/// request is posted, so that taking the common answer costs a few instructions (the
/// hypervisor's fast port path). It agrees with [`validate_answer`] followed by
/// [`rax_after_port_io`] (a test checks every case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortAnswer {
    /// The bits of RAX the access keeps.
    keep: u64,
    /// The bits of the value read that reach RAX.
    take: u64,
    /// The bits a read's data must not set (0 for an OUT: its data is not looked at).
    refuse: u64,
}

impl PortAnswer {
    /// For the IN or OUT `io`.
    #[must_use]
    #[inline(always)]
    pub const fn for_access(io: &crate::exit::IoInstruction) -> Self {
        if !io.is_in() {
            return Self { keep: u64::MAX, take: 0, refuse: 0 };
        }
        let mask = io.value_mask();
        // IN to AL/AX keeps the rest of RAX; IN to EAX zero-extends (SDM 3.4.1.1).
        Self { keep: if io.size() == 4 { 0 } else { !mask }, take: mask, refuse: !mask }
    }

    /// The guest's RAX (`rax` before the access) after the service partition's answer
    /// `status`, `data`, when that is a `DONE` or `FAILED` that [`validate_answer`]
    /// accepts (a failed read sees all-ones); `None` for anything else (`DEFERRED`, a
    /// refused answer), which the caller takes the general way.
    #[must_use]
    #[inline(always)]
    pub const fn apply(self, rax: u64, reply_status: u8, data: u64) -> Option<u64> {
        let value = match reply_status {
            status::DONE if data & self.refuse == 0 => data,
            status::FAILED => u64::MAX,
            _ => return None,
        };
        Some((rax & self.keep) | (value & self.take))
    }
}

/// The value a read of `size` bytes completed with gives: all-ones when nothing answered
/// it.
#[must_use]
#[inline(always)]
pub fn value_read(completion: Completion, size: u8) -> u64 {
    let mask = size_mask(size);
    match completion {
        Completion::Read(v) => v & mask,
        Completion::Written | Completion::Failed => mask,
    }
}

/// The guest's RAX after the IN or OUT `io` completed with `completion` (`rax`: before
/// it): an IN writes the value read (all-ones when the access failed) to AL, AX or EAX,
/// an OUT leaves RAX alone.
#[must_use]
#[inline(always)]
pub fn rax_after_port_io(rax: u64, io: &crate::exit::IoInstruction, completion: Completion) -> u64 {
    if !io.is_in() {
        return rax;
    }
    let mask = io.value_mask();
    let value = value_read(completion, io.size());
    // IN to AL/AX keeps the rest of RAX; IN to EAX zero-extends (SDM 3.4.1.1).
    if io.size() == 4 {
        value
    } else {
        (rax & !mask) | value
    }
}

/// Checks the service partition's answer (`status` and `data`, the two fields it writes
/// back) to the request the hypervisor `posted`.
// Inlined into the forwarding path, which runs it on every forwarded access.
#[inline(always)]
pub fn validate_reply(posted: &IoRequestSlot, reply_status: u8, data: u64) -> Result<Reply, ReplyError> {
    validate_answer(posted.size, posted.direction == direction::WRITE, reply_status, data)
}

/// [`validate_reply`] for a request of `size` bytes, a write or a read: what it looks
/// at of the posted request.
#[inline(always)]
pub fn validate_answer(size: u8, write: bool, reply_status: u8, data: u64) -> Result<Reply, ReplyError> {
    match reply_status {
        status::DONE | status::FAILED => completion(size, write, reply_status, data).map(Reply::Completed),
        status::DEFERRED => Ok(Reply::Deferred),
        status::FREE | status::PENDING => Err(ReplyError::NotAnswered),
        other => Err(ReplyError::BadStatus(other)),
    }
}

/// The completion that `status` (`DONE` or `FAILED`, checked by the caller) and `data`
/// give a request of `size` bytes, a write or a read.
#[inline(always)]
fn completion(size: u8, write: bool, status: u8, data: u64) -> Result<Completion, ReplyError> {
    if status == status::FAILED {
        return Ok(Completion::Failed);
    }
    if write {
        return Ok(Completion::Written);
    }
    if data & !size_mask(size) != 0 {
        return Err(ReplyError::DataTooWide);
    }
    Ok(Completion::Read(data))
}

/// Deferred completion: the state of a guest vCPU whose request the service partition
/// answered `Deferred`, and the checks of its later `SERVICE_COMPLETE`.
///
/// The waiting vCPU's CPU [`DeferredWait::begin`]s the wait with the request it posted
/// and a deadline, then polls [`DeferredWait::take_completion`] and
/// [`DeferredWait::is_overdue`] between sleeps; any service vCPU may
/// [`DeferredWait::complete`] it meanwhile. A completion is checked in full
/// ([`validate_completion`]) before the state changes, so a refused one changes
/// nothing. A wait that ends otherwise (the guest stops, an INIT, the deadline) is
/// [`DeferredWait::abandon`]ed: later completions of it are refused.
pub mod deferred {
    use super::{completion, Completion, ReplyError};
    use hv_abi::io_request::{status, IoRequestSlot};

    /// Why a `SERVICE_COMPLETE` was refused.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum CompletionError {
        /// The vCPU waits on no deferred request (none was deferred, it was completed
        /// already, or the wait was abandoned).
        NotWaiting,
        /// The sequence number is not the deferred request's.
        WrongSequence { expected: u64, got: u64 },
        /// The status is neither `DONE` nor `FAILED`.
        BadStatus(u8),
        /// A read's data has bits above the access size.
        DataTooWide,
    }

    impl CompletionError {
        /// A short description for log lines.
        #[must_use]
        pub fn describe(self) -> &'static str {
            match self {
                Self::NotWaiting => "that vcpu waits on no deferred request",
                Self::WrongSequence { .. } => "the sequence number is not the deferred request's",
                Self::BadStatus(_) => "the status is neither DONE nor FAILED",
                Self::DataTooWide => "the data is wider than the access",
            }
        }
    }

    /// Checks a completion (`sequence`, `status`, `data`) of the deferred request
    /// `posted`; the result is what the guest's instruction completes with.
    pub fn validate_completion(
        posted: &IoRequestSlot,
        sequence: u64,
        completion_status: u8,
        data: u64,
    ) -> Result<Completion, CompletionError> {
        if sequence != posted.sequence {
            return Err(CompletionError::WrongSequence { expected: posted.sequence, got: sequence });
        }
        if !matches!(completion_status, status::DONE | status::FAILED) {
            return Err(CompletionError::BadStatus(completion_status));
        }
        let write = posted.direction == hv_abi::io_request::direction::WRITE;
        completion(posted.size, write, completion_status, data).map_err(|e| match e {
            ReplyError::DataTooWide => CompletionError::DataTooWide,
            // `completion` refuses nothing else.
            _ => CompletionError::BadStatus(completion_status),
        })
    }

    /// Why a wait could not begin (a hypervisor bug: one request per vCPU at a time).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct AlreadyWaiting;

    /// A guest vCPU's deferred request, if any.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub enum DeferredWait {
        /// No deferred request.
        #[default]
        Idle,
        /// The service partition deferred `posted`; the guest waits until the TSC
        /// reaches `deadline`.
        Waiting { posted: IoRequestSlot, deadline: u64 },
        /// Completed; the vCPU's CPU has not taken the result yet.
        Completed(Completion),
    }

    impl DeferredWait {
        /// Starts waiting on `posted` until TSC `deadline`. Only from `Idle`.
        pub fn begin(&mut self, posted: IoRequestSlot, deadline: u64) -> Result<(), AlreadyWaiting> {
            if *self != Self::Idle {
                return Err(AlreadyWaiting);
            }
            *self = Self::Waiting { posted, deadline };
            Ok(())
        }

        /// A `SERVICE_COMPLETE(sequence, data, status)`: checked against the waiting
        /// request ([`validate_completion`]); only an accepted one changes the state.
        pub fn complete(&mut self, sequence: u64, completion_status: u8, data: u64) -> Result<(), CompletionError> {
            let Self::Waiting { posted, .. } = self else { return Err(CompletionError::NotWaiting) };
            let done = validate_completion(posted, sequence, completion_status, data)?;
            *self = Self::Completed(done);
            Ok(())
        }

        /// The completion, once there is one (the state is `Idle` again).
        pub fn take_completion(&mut self) -> Option<Completion> {
            let Self::Completed(done) = *self else { return None };
            *self = Self::Idle;
            Some(done)
        }

        /// Whether a request still waits at TSC `now` past its deadline.
        #[must_use]
        pub fn is_overdue(&self, now: u64) -> bool {
            matches!(*self, Self::Waiting { deadline, .. } if now >= deadline)
        }

        /// Drops whatever the vCPU waited on or was given (the state is `Idle`); returns
        /// the request if one was still waiting.
        pub fn abandon(&mut self) -> Option<IoRequestSlot> {
            let previous = core::mem::take(self);
            match previous {
                Self::Waiting { posted, .. } => Some(posted),
                Self::Idle | Self::Completed(_) => None,
            }
        }
    }
}

/// The interrupt-acknowledge request of `vcpu` of guest VM `vm`
/// (`hv_abi::io_request::kind::INTERRUPT_ACK`): a one-byte read at address 0.
#[must_use]
pub const fn interrupt_ack(vm: u32, vcpu: u32) -> Request {
    Request { kind: kind::INTERRUPT_ACK, address: 0, size: 1, write: false, data: 0, vm, vcpu }
}

/// Why an interrupt acknowledge delivers no interrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptAckError {
    /// The service partition's reply failed validation.
    Refused(ReplyError),
    /// The service partition answered `FAILED`: its PIC gave no vector (uninitialized,
    /// or not in 8086 mode).
    NoVector,
    /// Not the completion of a read (cannot come from [`validate_reply`] for a posted
    /// interrupt acknowledge; checked anyway).
    NotARead,
    /// The service partition answered `DEFERRED`: an interrupt acknowledge must be
    /// answered at once (the vector is injected on the entry being prepared).
    Deferred,
}

/// The vector of a validated interrupt-acknowledge reply: the 8259's answer, any byte.
/// Every vector is accepted, as the CPU takes whatever the 8259 puts on the bus: a
/// real-mode guest's PIC uses 0x08-0x0F and 0x70-0x77 (the BIOS layout), a protected-mode
/// guest remaps it; VM entry accepts any vector for an external interrupt (SDM 26.2.1.3).
/// [`validate_reply`] has already refused data wider than the one-byte access.
pub fn interrupt_ack_vector(reply: Result<Reply, ReplyError>) -> Result<u8, InterruptAckError> {
    match reply {
        Ok(Reply::Completed(Completion::Read(value))) => {
            u8::try_from(value).map_err(|_| InterruptAckError::Refused(ReplyError::DataTooWide))
        }
        Ok(Reply::Completed(Completion::Failed)) => Err(InterruptAckError::NoVector),
        Ok(Reply::Completed(Completion::Written)) => Err(InterruptAckError::NotARead),
        Ok(Reply::Deferred) => Err(InterruptAckError::Deferred),
        Err(why) => Err(InterruptAckError::Refused(why)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hv_abi::io_request::SLOT_BYTES;
    use proptest::prelude::*;

    /// The answer the service partition left in `slot` (its status and data words).
    fn reply_in(posted: &IoRequestSlot, slot: &IoRequestSlot) -> Result<Reply, ReplyError> {
        validate_reply(posted, slot.status, slot.data)
    }

    fn read_port(port: u64, size: u8) -> Request {
        Request { kind: kind::PORT, address: port, size, write: false, data: 0, vm: 3, vcpu: 1 }
    }

    proptest! {
        /// The fast path's answer is the general path's: `validate_answer`, then
        /// `rax_after_port_io`, for every IN and OUT, status and data.
        #[test]
        fn port_answer_matches_the_general_path(
            qualification in any::<u32>(),
            rax in any::<u64>(),
            reply_status in prop_oneof![Just(status::DONE), Just(status::FAILED), Just(status::DEFERRED), any::<u8>()],
            data in prop_oneof![any::<u64>(), 0u64..0x100, 0u64..0x1_0000, 0u64..0x1_0000_0000],
        ) {
            if let Some(io) = crate::exit::IoInstruction::decode(u64::from(qualification)) {
                let general = match validate_answer(io.size(), !io.is_in(), reply_status, data) {
                    Ok(Reply::Completed(completion)) => Some(rax_after_port_io(rax, &io, completion)),
                    _ => None,
                };
                prop_assert_eq!(PortAnswer::for_access(&io).apply(rax, reply_status, data), general);
            }
        }
    }

    proptest! {
        /// The fast path's words are exactly what `post` gives for the same access.
        #[test]
        fn port_request_words_match_post(qualification in any::<u32>(), sequence in any::<u64>(), rax in any::<u64>(), vm in any::<u32>(), vcpu in any::<u32>()) {
            if let Some(io) = crate::exit::IoInstruction::decode(u64::from(qualification)) {
                let request = Request { kind: kind::PORT, address: u64::from(io.port()), size: io.size(), write: !io.is_in(), data: rax, vm, vcpu };
                let posted = post(&request, sequence).unwrap();
                let ids = u64::from(vm) | u64::from(vcpu) << 32;
                prop_assert_eq!(port_request_words(&io, sequence, rax, ids), posted.to_words());
            }
        }
    }

    #[test]
    fn a_read_round_trip() {
        let posted = post(&read_port(0x3f8, 1), 7).unwrap();
        assert_eq!((posted.status, posted.direction, posted.data), (status::PENDING, direction::READ, 0));
        let reply = IoRequestSlot { data: 0x41, status: status::DONE, ..posted };
        assert_eq!(reply_in(&posted, &reply), Ok(Reply::Completed(Completion::Read(0x41))));
    }

    #[test]
    fn a_write_round_trip_masks_the_data() {
        let w =
            Request { kind: kind::MMIO, address: 0xfed0_0000, size: 2, write: true, data: 0xdead_beef, vm: 1, vcpu: 0 };
        let posted = post(&w, 1).unwrap();
        assert_eq!(posted.data, 0xbeef);
        let reply = IoRequestSlot { status: status::DONE, data: 0x1234, ..posted };
        assert_eq!(reply_in(&posted, &reply), Ok(Reply::Completed(Completion::Written)));
    }

    #[test]
    fn an_interrupt_acknowledge_round_trip() {
        let posted = post(&interrupt_ack(2, 0), 9).unwrap();
        assert_eq!(
            (posted.kind, posted.size, posted.direction, posted.address, posted.status),
            (kind::INTERRUPT_ACK, 1, direction::READ, 0, status::PENDING)
        );
        let answer = |slot: IoRequestSlot| interrupt_ack_vector(reply_in(&posted, &slot));
        assert_eq!(answer(IoRequestSlot { data: 0x20, status: status::DONE, ..posted }), Ok(0x20));
        assert_eq!(answer(IoRequestSlot { data: 0xff, status: status::DONE, ..posted }), Ok(0xff));
        assert_eq!(answer(IoRequestSlot { data: 0x08, status: status::DONE, ..posted }), Ok(0x08));
        assert_eq!(answer(IoRequestSlot { status: status::FAILED, ..posted }), Err(InterruptAckError::NoVector));
        assert_eq!(
            answer(IoRequestSlot { data: 0x120, status: status::DONE, ..posted }),
            Err(InterruptAckError::Refused(ReplyError::DataTooWide))
        );
        assert_eq!(answer(posted), Err(InterruptAckError::Refused(ReplyError::NotAnswered)));
        // The other fields are the hypervisor's record: what the service partition
        // writes there changes nothing (the posted copy decides).
        assert_eq!(
            answer(IoRequestSlot { kind: kind::PORT, size: 4, data: 0x20, status: status::DONE, ..posted }),
            Ok(0x20)
        );
        assert_eq!(interrupt_ack_vector(Ok(Reply::Completed(Completion::Written))), Err(InterruptAckError::NotARead));
        assert_eq!(answer(IoRequestSlot { status: status::DEFERRED, ..posted }), Err(InterruptAckError::Deferred));
        assert_eq!(
            interrupt_ack_vector(Ok(Reply::Completed(Completion::Read(0x100)))),
            Err(InterruptAckError::Refused(ReplyError::DataTooWide))
        );
        // Only the one form posts.
        for bad in [
            Request { write: true, ..interrupt_ack(0, 0) },
            Request { size: 2, ..interrupt_ack(0, 0) },
            Request { address: 0x20, ..interrupt_ack(0, 0) },
        ] {
            assert_eq!(post(&bad, 1), Err(PostError::BadInterruptAck), "{bad:?}");
        }
    }

    #[test]
    fn bad_posts_are_refused() {
        assert_eq!(post(&Request { kind: 9, ..read_port(0, 1) }, 0), Err(PostError::BadKind));
        assert_eq!(post(&read_port(0, 3), 0), Err(PostError::BadSize));
        assert_eq!(post(&read_port(0, 8), 0), Err(PostError::BadSize), "no 8-byte port I/O");
        let pci = |address, size| Request { kind: kind::PCI_CONFIG, address, size, ..read_port(0, 1) };
        assert!(post(&pci(0xFF_FFFF, 4), 0).is_ok(), "bus 255, device 31, function 7, register 0xFF");
        assert_eq!(post(&pci(0x100_0000, 1), 0), Err(PostError::BadPciConfigAddress));
        assert_eq!(post(&pci(0x40, 8), 0), Err(PostError::BadSize), "no 8-byte configuration access");
    }

    #[test]
    fn misbehaving_replies_are_refused() {
        let posted = post(&read_port(0x70, 1), 5).unwrap();
        let done = IoRequestSlot { status: status::DONE, data: 1, ..posted };
        assert_eq!(reply_in(&posted, &posted), Err(ReplyError::NotAnswered));
        assert_eq!(reply_in(&posted, &IoRequestSlot { status: 9, ..done }), Err(ReplyError::BadStatus(9)));
        // Only status and data are read back: a slot whose other fields were changed
        // is answered by the posted copy (a one-byte read stays a one-byte read).
        for changed in [
            IoRequestSlot { sequence: 6, ..done },
            IoRequestSlot { address: 0x71, ..done },
            IoRequestSlot { size: 4, ..done },
            IoRequestSlot { direction: direction::WRITE, ..done },
            IoRequestSlot { kind: kind::MMIO, ..done },
            IoRequestSlot { vm: 4, ..done },
            IoRequestSlot { vcpu: 0, ..done },
            IoRequestSlot { reserved: 1, ..done },
        ] {
            assert_eq!(reply_in(&posted, &changed), Ok(Reply::Completed(Completion::Read(1))), "{changed:?}");
        }
        assert_eq!(
            reply_in(&posted, &IoRequestSlot { size: 4, data: 0x100, ..done }),
            Err(ReplyError::DataTooWide),
            "the posted size decides"
        );
        assert_eq!(reply_in(&posted, &IoRequestSlot { data: 0x100, ..done }), Err(ReplyError::DataTooWide));
        assert_eq!(
            reply_in(&posted, &IoRequestSlot { status: status::FAILED, data: 0x100, ..done }),
            Ok(Reply::Completed(Completion::Failed))
        );
    }

    #[test]
    fn a_deferred_reply_needs_only_its_status() {
        let posted = post(&read_port(0xf8, 4), 9).unwrap();
        let deferred = IoRequestSlot { status: status::DEFERRED, ..posted };
        assert_eq!(reply_in(&posted, &deferred), Ok(Reply::Deferred));
        // Data is not looked at: nothing is completed yet.
        assert_eq!(reply_in(&posted, &IoRequestSlot { data: u64::MAX, ..deferred }), Ok(Reply::Deferred));
        assert_eq!(reply_in(&posted, &IoRequestSlot { status: 5, ..deferred }), Err(ReplyError::BadStatus(5)));
    }

    mod deferred_completion {
        use super::super::deferred::{validate_completion, AlreadyWaiting, CompletionError, DeferredWait};
        use super::*;

        fn waiting_read(size: u8, sequence: u64) -> (IoRequestSlot, DeferredWait) {
            let posted = post(&read_port(0xf8, size), sequence).unwrap();
            let mut wait = DeferredWait::default();
            wait.begin(posted, 1000).unwrap();
            (posted, wait)
        }

        #[test]
        fn a_read_completes_once_with_its_data() {
            let (_, mut wait) = waiting_read(4, 7);
            assert_eq!(wait.take_completion(), None, "nothing before the completion");
            assert_eq!(wait.complete(7, status::DONE, 0xde1a_0001), Ok(()));
            assert_eq!(wait.take_completion(), Some(Completion::Read(0xde1a_0001)));
            assert_eq!(wait, DeferredWait::Idle);
            assert_eq!(wait.take_completion(), None);
            assert_eq!(wait.complete(7, status::DONE, 1), Err(CompletionError::NotWaiting), "completed only once");
        }

        #[test]
        fn writes_and_failures_ignore_the_data() {
            let posted = post(&Request { write: true, data: 5, ..read_port(0xf8, 1) }, 3).unwrap();
            assert_eq!(validate_completion(&posted, 3, status::DONE, u64::MAX), Ok(Completion::Written));
            assert_eq!(validate_completion(&posted, 3, status::FAILED, u64::MAX), Ok(Completion::Failed));
            let (read, _) = waiting_read(1, 4);
            assert_eq!(validate_completion(&read, 4, status::FAILED, u64::MAX), Ok(Completion::Failed));
        }

        #[test]
        fn bad_completions_change_nothing() {
            let (_, mut wait) = waiting_read(2, 11);
            let before = wait;
            assert_eq!(
                wait.complete(12, status::DONE, 1),
                Err(CompletionError::WrongSequence { expected: 11, got: 12 })
            );
            for bad in [status::FREE, status::PENDING, status::DEFERRED, 5, 0xff] {
                assert_eq!(wait.complete(11, bad, 1), Err(CompletionError::BadStatus(bad)));
            }
            assert_eq!(wait.complete(11, status::DONE, 0x1_0000), Err(CompletionError::DataTooWide));
            assert_eq!(wait, before);
            assert_eq!(wait.complete(11, status::DONE, 0xffff), Ok(()));
            let mut idle = DeferredWait::Idle;
            assert_eq!(idle.complete(0, status::DONE, 0), Err(CompletionError::NotWaiting));
            assert_eq!(idle, DeferredWait::Idle);
        }

        #[test]
        fn one_wait_at_a_time_and_abandoning_refuses_later_completions() {
            let (posted, mut wait) = waiting_read(4, 1);
            assert_eq!(wait.begin(posted, 5), Err(AlreadyWaiting));
            assert!(!wait.is_overdue(999));
            assert!(wait.is_overdue(1000));
            assert_eq!(wait.abandon(), Some(posted));
            assert!(!wait.is_overdue(u64::MAX), "an abandoned wait has no deadline");
            assert_eq!(wait.complete(1, status::DONE, 0), Err(CompletionError::NotWaiting));
            // A completion that came but was not taken is dropped too.
            wait.begin(posted, 5).unwrap();
            wait.complete(1, status::DONE, 0).unwrap();
            assert_eq!(wait.begin(posted, 5), Err(AlreadyWaiting));
            assert_eq!(wait.abandon(), None);
            assert_eq!(wait, DeferredWait::Idle);
        }

        proptest! {
            /// Whatever the service partition passes to SERVICE_COMPLETE, a completion is
            /// either refused without a change or fits the deferred request.
            #[test]
            fn any_completion_is_safe(size_pick in 0usize..4, write: bool, sequence: u64, st: u8, data: u64) {
                let size = [1u8, 2, 4, 8][size_pick];
                let request = Request { kind: kind::MMIO, address: 0x1000, size, write, data: 0, vm: 1, vcpu: 2 };
                let posted = post(&request, 42).unwrap();
                let mut wait = DeferredWait::Idle;
                wait.begin(posted, 10).unwrap();
                let before = wait;
                match wait.complete(sequence, st, data) {
                    Ok(()) => {
                        prop_assert!(sequence == 42 && (st == status::DONE || st == status::FAILED));
                        match wait.take_completion() {
                            Some(Completion::Read(v)) => prop_assert!(!write && v == data && v & !size_mask(size) == 0),
                            Some(Completion::Written) => prop_assert!(write && st == status::DONE),
                            Some(Completion::Failed) => prop_assert_eq!(st, status::FAILED),
                            None => prop_assert!(false, "accepted without a completion"),
                        }
                    }
                    Err(_) => prop_assert_eq!(wait, before),
                }
            }
        }
    }

    #[test]
    fn the_byte_layout_is_fixed() {
        let slot = IoRequestSlot {
            sequence: 0x0102_0304_0506_0708,
            address: 0x3f8,
            data: 0xaa,
            vm: 2,
            vcpu: 1,
            kind: kind::PORT,
            size: 1,
            direction: direction::WRITE,
            status: status::PENDING,
            reserved: 0,
        };
        let b = slot.to_bytes();
        assert_eq!(b[0], 0x08);
        assert_eq!(&b[8..10], &[0xf8, 0x03]);
        assert_eq!(&b[32..36], &[kind::PORT, 1, direction::WRITE, status::PENDING]);
        assert!(b[40..].iter().all(|&x| x == 0));
        assert_eq!(IoRequestSlot::from_bytes(&b), slot);
    }

    proptest! {
        /// Whatever the service partition writes into an interrupt acknowledge's slot,
        /// the outcome is a byte vector or a refusal.
        #[test]
        fn any_interrupt_ack_reply_is_safe(bytes in proptest::collection::vec(any::<u8>(), SLOT_BYTES)) {
            let posted = post(&interrupt_ack(1, 0), 3).unwrap();
            let mut raw = [0u8; SLOT_BYTES];
            raw.copy_from_slice(&bytes);
            let reply = IoRequestSlot::from_bytes(&raw);
            if let Ok(vector) = interrupt_ack_vector(reply_in(&posted, &reply)) {
                prop_assert_eq!(u64::from(vector), reply.data);
                prop_assert_eq!(reply.status, status::DONE);
            }
        }

        /// Whatever the service partition writes into the slot, the outcome is either a
        /// refusal or one that fits the posted request.
        #[test]
        fn any_reply_bytes_are_safe(bytes in proptest::collection::vec(any::<u8>(), SLOT_BYTES), size_pick in 0usize..4, write: bool) {
            let size = [1u8, 2, 4, 8][size_pick];
            let request = Request { kind: kind::MMIO, address: 0x1000, size, write, data: u64::MAX, vm: 1, vcpu: 2 };
            let posted = post(&request, 42).unwrap();
            let mut raw = [0u8; SLOT_BYTES];
            raw.copy_from_slice(&bytes);
            let reply = IoRequestSlot::from_bytes(&raw);
            match reply_in(&posted, &reply) {
                Ok(Reply::Completed(Completion::Read(v))) => prop_assert!(!write && v & !size_mask(size) == 0),
                Ok(Reply::Completed(Completion::Written)) => prop_assert!(write),
                Ok(Reply::Deferred) => prop_assert_eq!(reply.status, status::DEFERRED),
                Ok(Reply::Completed(Completion::Failed)) | Err(_) => {}
            }
        }

        /// A reply that changes only data and status is accepted when it should be.
        #[test]
        fn honest_replies_are_accepted(size_pick in 0usize..4, value: u64, fail: bool) {
            let size = [1u8, 2, 4, 8][size_pick];
            let posted = post(&Request { kind: kind::MMIO, address: 0x2000, size, write: false, data: 0, vm: 0, vcpu: 0 }, 1).unwrap();
            let reply = IoRequestSlot {
                data: value & size_mask(size),
                status: if fail { status::FAILED } else { status::DONE },
                ..posted
            };
            let expected = if fail { Completion::Failed } else { Completion::Read(value & size_mask(size)) };
            prop_assert_eq!(reply_in(&posted, &reply), Ok(Reply::Completed(expected)));
        }
    }
}
