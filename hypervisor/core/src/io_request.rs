//! Posting an emulated access into an I/O request slot and checking the service
//! partition's reply (`hv_abi::io_request`), validate-then-commit style: everything the
//! service partition wrote is decoded and checked here before the hypervisor touches the
//! guest's registers.
//!
//! A reply is accepted only if the slot still describes the request the hypervisor
//! posted (sequence, kind, address, size, direction, VM, vCPU), its status is `Done` or
//! `Failed`, the reserved field is 0, and a read's data fits the access size. Anything
//! else is a misbehaving service partition: the caller stops the guest's access with an
//! open-bus result and logs it, and the hypervisor keeps running.

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

/// Why a reply was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyError {
    /// The slot is still pending or free: no reply yet.
    NotAnswered,
    /// The status byte is not a known state.
    BadStatus(u8),
    /// The slot no longer describes the posted request (sequence, kind, address, size,
    /// direction, VM or vCPU changed).
    RequestChanged,
    /// Reserved bits are set.
    ReservedNotZero,
    /// A read's data has bits above the access size.
    DataTooWide,
}

pub use crate::mmio_decode::size_mask;

/// The slot that posts `request` as number `sequence`.
pub fn post(request: &Request, sequence: u64) -> Result<IoRequestSlot, PostError> {
    if !matches!(request.kind, kind::PORT | kind::MMIO | kind::PCI_CONFIG | kind::INTERRUPT_ACK) {
        return Err(PostError::BadKind);
    }
    if request.kind == kind::INTERRUPT_ACK && (request.write || request.size != 1 || request.address != 0) {
        return Err(PostError::BadInterruptAck);
    }
    if !matches!(request.size, 1 | 2 | 4 | 8) || (request.kind == kind::PORT && request.size == 8) {
        return Err(PostError::BadSize);
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

/// Checks the service partition's `reply` to the slot the hypervisor `posted`.
pub fn validate_reply(posted: &IoRequestSlot, reply: &IoRequestSlot) -> Result<Completion, ReplyError> {
    let unchanged = reply.sequence == posted.sequence
        && reply.kind == posted.kind
        && reply.address == posted.address
        && reply.size == posted.size
        && reply.direction == posted.direction
        && reply.vm == posted.vm
        && reply.vcpu == posted.vcpu;
    match reply.status {
        status::FREE | status::PENDING => return Err(ReplyError::NotAnswered),
        status::DONE | status::FAILED => {}
        other => return Err(ReplyError::BadStatus(other)),
    }
    if !unchanged {
        return Err(ReplyError::RequestChanged);
    }
    if reply.reserved != 0 {
        return Err(ReplyError::ReservedNotZero);
    }
    if reply.status == status::FAILED {
        return Ok(Completion::Failed);
    }
    if posted.direction == direction::WRITE {
        return Ok(Completion::Written);
    }
    if reply.data & !size_mask(posted.size) != 0 {
        return Err(ReplyError::DataTooWide);
    }
    Ok(Completion::Read(reply.data))
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
}

/// The vector of a validated interrupt-acknowledge reply: the 8259's answer, any byte.
/// Every vector is accepted, as the CPU takes whatever the 8259 puts on the bus: a
/// real-mode guest's PIC uses 0x08-0x0F and 0x70-0x77 (the BIOS layout), a protected-mode
/// guest remaps it; VM entry accepts any vector for an external interrupt (SDM 26.2.1.3).
/// [`validate_reply`] has already refused data wider than the one-byte access.
pub fn interrupt_ack_vector(reply: Result<Completion, ReplyError>) -> Result<u8, InterruptAckError> {
    match reply {
        Ok(Completion::Read(value)) => {
            u8::try_from(value).map_err(|_| InterruptAckError::Refused(ReplyError::DataTooWide))
        }
        Ok(Completion::Failed) => Err(InterruptAckError::NoVector),
        Ok(Completion::Written) => Err(InterruptAckError::NotARead),
        Err(why) => Err(InterruptAckError::Refused(why)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hv_abi::io_request::SLOT_BYTES;
    use proptest::prelude::*;

    fn read_port(port: u64, size: u8) -> Request {
        Request { kind: kind::PORT, address: port, size, write: false, data: 0, vm: 3, vcpu: 1 }
    }

    #[test]
    fn a_read_round_trip() {
        let posted = post(&read_port(0x3f8, 1), 7).unwrap();
        assert_eq!((posted.status, posted.direction, posted.data), (status::PENDING, direction::READ, 0));
        let reply = IoRequestSlot { data: 0x41, status: status::DONE, ..posted };
        assert_eq!(validate_reply(&posted, &reply), Ok(Completion::Read(0x41)));
    }

    #[test]
    fn a_write_round_trip_masks_the_data() {
        let w =
            Request { kind: kind::MMIO, address: 0xfed0_0000, size: 2, write: true, data: 0xdead_beef, vm: 1, vcpu: 0 };
        let posted = post(&w, 1).unwrap();
        assert_eq!(posted.data, 0xbeef);
        let reply = IoRequestSlot { status: status::DONE, data: 0x1234, ..posted };
        assert_eq!(validate_reply(&posted, &reply), Ok(Completion::Written));
    }

    #[test]
    fn an_interrupt_acknowledge_round_trip() {
        let posted = post(&interrupt_ack(2, 0), 9).unwrap();
        assert_eq!(
            (posted.kind, posted.size, posted.direction, posted.address, posted.status),
            (kind::INTERRUPT_ACK, 1, direction::READ, 0, status::PENDING)
        );
        let answer = |slot: IoRequestSlot| interrupt_ack_vector(validate_reply(&posted, &slot));
        assert_eq!(answer(IoRequestSlot { data: 0x20, status: status::DONE, ..posted }), Ok(0x20));
        assert_eq!(answer(IoRequestSlot { data: 0xff, status: status::DONE, ..posted }), Ok(0xff));
        assert_eq!(answer(IoRequestSlot { data: 0x08, status: status::DONE, ..posted }), Ok(0x08));
        assert_eq!(answer(IoRequestSlot { status: status::FAILED, ..posted }), Err(InterruptAckError::NoVector));
        assert_eq!(
            answer(IoRequestSlot { data: 0x120, status: status::DONE, ..posted }),
            Err(InterruptAckError::Refused(ReplyError::DataTooWide))
        );
        assert_eq!(answer(posted), Err(InterruptAckError::Refused(ReplyError::NotAnswered)));
        assert_eq!(
            answer(IoRequestSlot { kind: kind::PORT, data: 0x20, status: status::DONE, ..posted }),
            Err(InterruptAckError::Refused(ReplyError::RequestChanged))
        );
        assert_eq!(
            answer(IoRequestSlot { size: 4, data: 0x20, status: status::DONE, ..posted }),
            Err(InterruptAckError::Refused(ReplyError::RequestChanged))
        );
        assert_eq!(interrupt_ack_vector(Ok(Completion::Written)), Err(InterruptAckError::NotARead));
        assert_eq!(
            interrupt_ack_vector(Ok(Completion::Read(0x100))),
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
    }

    #[test]
    fn misbehaving_replies_are_refused() {
        let posted = post(&read_port(0x70, 1), 5).unwrap();
        let done = IoRequestSlot { status: status::DONE, data: 1, ..posted };
        assert_eq!(validate_reply(&posted, &posted), Err(ReplyError::NotAnswered));
        assert_eq!(validate_reply(&posted, &IoRequestSlot { status: 9, ..done }), Err(ReplyError::BadStatus(9)));
        for changed in [
            IoRequestSlot { sequence: 6, ..done },
            IoRequestSlot { address: 0x71, ..done },
            IoRequestSlot { size: 4, ..done },
            IoRequestSlot { direction: direction::WRITE, ..done },
            IoRequestSlot { kind: kind::MMIO, ..done },
            IoRequestSlot { vm: 4, ..done },
            IoRequestSlot { vcpu: 0, ..done },
        ] {
            assert_eq!(validate_reply(&posted, &changed), Err(ReplyError::RequestChanged), "{changed:?}");
        }
        assert_eq!(validate_reply(&posted, &IoRequestSlot { reserved: 1, ..done }), Err(ReplyError::ReservedNotZero));
        assert_eq!(validate_reply(&posted, &IoRequestSlot { data: 0x100, ..done }), Err(ReplyError::DataTooWide));
        assert_eq!(
            validate_reply(&posted, &IoRequestSlot { status: status::FAILED, data: 0x100, ..done }),
            Ok(Completion::Failed)
        );
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
            if let Ok(vector) = interrupt_ack_vector(validate_reply(&posted, &reply)) {
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
            match validate_reply(&posted, &reply) {
                Ok(Completion::Read(v)) => prop_assert!(!write && v & !size_mask(size) == 0),
                Ok(Completion::Written) => prop_assert!(write),
                Ok(Completion::Failed) | Err(_) => {}
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
            prop_assert_eq!(validate_reply(&posted, &reply), Ok(expected));
        }
    }
}
