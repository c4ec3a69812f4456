//! Console input: which guest partition receives the bytes typed on the physical
//! console (its *focus*), and the escape sequence that switches it.
//!
//! Bytes from the physical serial port pass through [`Escape`]: **Ctrl-A** (0x01)
//! starts a sequence; the next byte decides what it means:
//! - `n`: switch the focus to the next guest partition that has a UART, in VM-table
//!   order, cycling;
//! - Ctrl-A again: a literal 0x01 for the focused partition;
//! - anything else: ignored (both bytes are dropped).
//!
//! [`ConsoleInput::read`] is the whole `SERVICE_CONSOLE_READ` logic without the
//! hardware: the kernel hands it the partitions that can take input and a function that
//! yields the bytes waiting in the physical UART, and copies the result to the service
//! partition. The focus starts at the first partition that can take input, and moves to
//! the first one again when the focused partition stops; every change of focus (and every
//! `Ctrl-A n`, even one that finds no other partition) is reported once, so that the
//! kernel can tell the user where input goes.
//!
//! [`InputQueue`] is the service partition's side: the bytes for one guest that its
//! UART's receiver has not taken yet, handed over as the receiver makes room.

use hv_abi::service::console::{ANY_TARGET, READ_MAX};
use hv_abi::Error;

/// Ctrl-A: starts an escape sequence (ASCII SOH).
pub const ESCAPE: u8 = 0x01;
/// After [`ESCAPE`]: switch to the next partition.
pub const NEXT: u8 = b'n';

/// What one input byte means after escape processing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// A byte for the focused partition.
    Data(u8),
    /// `Ctrl-A n`: focus the next partition.
    SwitchNext,
    /// Nothing (the start of a sequence, or an unknown sequence).
    Nothing,
}

/// The escape-sequence state machine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Escape {
    /// The previous byte was an [`ESCAPE`] that started a sequence.
    armed: bool,
}

impl Escape {
    /// A machine outside any sequence.
    #[must_use]
    pub const fn new() -> Self {
        Self { armed: false }
    }

    /// Whether a sequence has been started (the last byte was a lone Ctrl-A).
    #[must_use]
    pub const fn in_sequence(self) -> bool {
        self.armed
    }

    /// Feeds one byte.
    pub fn feed(&mut self, byte: u8) -> Key {
        if !self.armed {
            if byte == ESCAPE {
                self.armed = true;
                return Key::Nothing;
            }
            return Key::Data(byte);
        }
        self.armed = false;
        match byte {
            ESCAPE => Key::Data(ESCAPE),
            NEXT => Key::SwitchNext,
            _ => Key::Nothing,
        }
    }
}

/// The focus to keep: `current` while it is still a candidate, else the first candidate
/// (none when there are none).
#[must_use]
pub fn valid_focus<K: Copy + PartialEq>(candidates: &[K], current: Option<K>) -> Option<K> {
    match current {
        Some(c) if candidates.contains(&c) => Some(c),
        _ => candidates.first().copied(),
    }
}

/// The candidate after `current`, cycling to the first; the first when `current` is not
/// a candidate; none when there are no candidates.
#[must_use]
pub fn next_focus<K: Copy + PartialEq>(candidates: &[K], current: Option<K>) -> Option<K> {
    let after = current.and_then(|c| candidates.iter().position(|&k| k == c)).map_or(0, |i| i + 1);
    candidates.get(after).or(candidates.first()).copied()
}

/// The checked arguments of `SERVICE_CONSOLE_READ` (besides the buffer's address, which
/// the kernel checks against the caller's RAM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadArgs {
    /// Bytes wanted (0 ..= [`READ_MAX`]; 0 only asks where input goes).
    pub len: usize,
    /// The target the caller has room for (`None`: any).
    pub expected: Option<u32>,
}

/// Checks `SERVICE_CONSOLE_READ`'s length (RCX) and expected target (RDX).
pub fn read_args(len: u64, expected: u64) -> Result<ReadArgs, Error> {
    if len > READ_MAX {
        return Err(Error::BadLength);
    }
    let expected = match expected {
        ANY_TARGET => None,
        v => Some(u32::try_from(v).map_err(|_| Error::BadArgument)?),
    };
    // `len` <= READ_MAX (64) fits every usize.
    Ok(ReadArgs { len: len as usize, expected })
}

/// The result of one [`ConsoleInput::read`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOutcome<K> {
    /// Bytes placed at the start of the output buffer.
    pub count: usize,
    /// Whom they are for: the focus when the call began (`None`: no partition takes
    /// input).
    pub target: Option<K>,
    /// The focus changed during the call (or `Ctrl-A n` was typed): the new focus, to be
    /// announced.
    pub announce: Option<K>,
}

/// The console-input state: the escape machine and the focus.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsoleInput<K> {
    escape: Escape,
    focus: Option<K>,
}

impl<K: Copy + PartialEq> ConsoleInput<K> {
    /// No focus yet, outside any escape sequence.
    #[must_use]
    pub const fn new() -> Self {
        Self { escape: Escape::new(), focus: None }
    }

    /// The partition input goes to now.
    #[must_use]
    pub const fn focus(&self) -> Option<K> {
        self.focus
    }

    /// One `SERVICE_CONSOLE_READ`: brings the focus up to date with `candidates` (the
    /// partitions that can take input now, in order), then, unless `expected` names
    /// another partition than the focus, takes bytes from `next_byte` (the physical
    /// UART) through the escape machine until `out` is full, the UART is empty, or the
    /// focus switched (the bytes before a switch belong to the old focus, so a switch
    /// always ends the call). Data bytes while no partition takes input are dropped.
    /// Takes at most `out.len()` bytes from `next_byte`, so the call is bounded.
    pub fn read(
        &mut self,
        candidates: &[K],
        expected: Option<K>,
        mut next_byte: impl FnMut() -> Option<u8>,
        out: &mut [u8],
    ) -> ReadOutcome<K> {
        let before = self.focus;
        self.focus = valid_focus(candidates, self.focus);
        let mut announce = (self.focus != before).then_some(self.focus).flatten();
        let target = self.focus;
        let mut count = 0;
        if expected.is_some() && expected != target {
            return ReadOutcome { count, target, announce };
        }
        for _ in 0..out.len() {
            let Some(byte) = next_byte() else { break };
            match self.escape.feed(byte) {
                Key::Data(b) => {
                    if target.is_some() {
                        if let Some(slot) = out.get_mut(count) {
                            *slot = b;
                            count += 1;
                        }
                    }
                }
                Key::SwitchNext => {
                    self.focus = next_focus(candidates, self.focus);
                    announce = self.focus;
                    break;
                }
                Key::Nothing => {}
            }
        }
        ReadOutcome { count, target, announce }
    }
}

/// Bytes a guest's console input queue holds beyond its UART's receiver.
pub const QUEUE_BYTES: usize = 256;

/// The service partition's side: console input waiting for one guest's UART receiver,
/// oldest first. Bytes enter with [`InputQueue::extend`] (as many as fit) and leave with
/// [`InputQueue::deliver`], paced by the room in the receiver, so a guest that reads its
/// UART loses nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputQueue {
    buf: [u8; QUEUE_BYTES],
    head: usize,
    len: usize,
}

impl Default for InputQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl InputQueue {
    /// An empty queue.
    #[must_use]
    pub const fn new() -> Self {
        Self { buf: [0; QUEUE_BYTES], head: 0, len: 0 }
    }

    /// Bytes waiting.
    #[must_use]
    pub const fn len(&self) -> usize {
        self.len
    }

    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Room left.
    #[must_use]
    pub const fn free(&self) -> usize {
        QUEUE_BYTES - self.len
    }

    /// Appends as many of `bytes` as fit, in order; returns how many.
    pub fn extend(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.free());
        for &b in bytes.iter().take(n) {
            if let Some(slot) = self.buf.get_mut((self.head + self.len) % QUEUE_BYTES) {
                *slot = b;
                self.len += 1;
            }
        }
        n
    }

    /// Hands at most `space` bytes (the room in the receiver), oldest first, to `push`;
    /// returns how many.
    pub fn deliver(&mut self, space: usize, mut push: impl FnMut(u8)) -> usize {
        let n = space.min(self.len);
        for _ in 0..n {
            if let Some(&b) = self.buf.get(self.head) {
                push(b);
            }
            self.head = (self.head + 1) % QUEUE_BYTES;
            self.len -= 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    #[test]
    fn the_queue_paces_by_the_receivers_room() {
        let mut q = InputQueue::new();
        assert_eq!(q.extend(b"hello hv\r"), 9);
        let mut rx = Vec::new();
        assert_eq!(q.deliver(4, |b| rx.push(b)), 4);
        assert_eq!(rx, b"hell");
        assert_eq!(q.deliver(0, |b| rx.push(b)), 0, "a full receiver takes nothing; the bytes stay");
        assert_eq!(q.len(), 5);
        assert_eq!(q.deliver(16, |b| rx.push(b)), 5);
        assert_eq!(rx, b"hello hv\r");
        assert!(q.is_empty());
    }

    #[test]
    fn the_queue_keeps_order_across_the_wrap_and_refuses_overflow() {
        let mut q = InputQueue::new();
        let mut out = Vec::new();
        let mut next = 0u8;
        for round in 0..10 {
            let chunk: Vec<u8> = (0..100).map(|i| next.wrapping_add(i)).collect();
            let taken = q.extend(&chunk);
            next = next.wrapping_add(taken as u8);
            assert!(q.len() <= QUEUE_BYTES);
            q.deliver(37 + round, |b| out.push(b));
        }
        q.deliver(usize::MAX, |b| out.push(b));
        for (i, pair) in out.windows(2).enumerate() {
            assert_eq!(pair[1], pair[0].wrapping_add(1), "at {i}");
        }
        let mut full = InputQueue::new();
        assert_eq!(full.extend(&[7; QUEUE_BYTES + 10]), QUEUE_BYTES);
        assert_eq!((full.free(), full.extend(b"x")), (0, 0));
    }

    fn feed_all(bytes: &[u8]) -> Vec<Key> {
        let mut e = Escape::new();
        bytes.iter().map(|&b| e.feed(b)).collect()
    }

    #[test]
    fn plain_bytes_pass_through() {
        assert_eq!(feed_all(b"hi\r"), [Key::Data(b'h'), Key::Data(b'i'), Key::Data(b'\r')]);
    }

    #[test]
    fn ctrl_a_n_switches() {
        assert_eq!(feed_all(b"\x01n"), [Key::Nothing, Key::SwitchNext]);
        assert_eq!(feed_all(b"a\x01nb"), [Key::Data(b'a'), Key::Nothing, Key::SwitchNext, Key::Data(b'b')]);
    }

    #[test]
    fn ctrl_a_twice_is_a_literal_ctrl_a() {
        assert_eq!(feed_all(b"\x01\x01"), [Key::Nothing, Key::Data(ESCAPE)]);
        // The literal does not start a new sequence.
        assert_eq!(feed_all(b"\x01\x01n"), [Key::Nothing, Key::Data(ESCAPE), Key::Data(b'n')]);
        assert_eq!(feed_all(b"\x01\x01\x01n"), [Key::Nothing, Key::Data(ESCAPE), Key::Nothing, Key::SwitchNext]);
    }

    #[test]
    fn unknown_sequences_are_ignored() {
        assert_eq!(feed_all(b"\x01zq"), [Key::Nothing, Key::Nothing, Key::Data(b'q')]);
        assert_eq!(feed_all(b"\x01N"), [Key::Nothing, Key::Nothing], "only lower-case n switches");
        let mut e = Escape::new();
        e.feed(ESCAPE);
        assert!(e.in_sequence());
        e.feed(b'x');
        assert!(!e.in_sequence());
    }

    #[test]
    fn focus_cycles_through_the_candidates() {
        assert_eq!(next_focus::<u32>(&[], None), None);
        assert_eq!(next_focus::<u32>(&[], Some(3)), None);
        assert_eq!(next_focus(&[1, 2, 3], None), Some(1));
        assert_eq!(next_focus(&[1, 2, 3], Some(1)), Some(2));
        assert_eq!(next_focus(&[1, 2, 3], Some(3)), Some(1));
        assert_eq!(next_focus(&[1, 2, 3], Some(9)), Some(1), "a stopped focus restarts at the first");
        assert_eq!(next_focus(&[7], Some(7)), Some(7));
        assert_eq!(valid_focus(&[1, 2], Some(2)), Some(2));
        assert_eq!(valid_focus(&[1, 2], Some(5)), Some(1));
        assert_eq!(valid_focus(&[1, 2], None), Some(1));
        assert_eq!(valid_focus::<u32>(&[], Some(1)), None);
    }

    #[test]
    fn read_arguments_are_checked() {
        assert_eq!(read_args(0, ANY_TARGET), Ok(ReadArgs { len: 0, expected: None }));
        assert_eq!(read_args(READ_MAX, 5), Ok(ReadArgs { len: 64, expected: Some(5) }));
        assert_eq!(read_args(READ_MAX + 1, ANY_TARGET), Err(Error::BadLength));
        assert_eq!(read_args(u64::MAX, ANY_TARGET), Err(Error::BadLength));
        assert_eq!(read_args(1, 1 << 32), Err(Error::BadArgument));
        assert_eq!(read_args(1, u64::from(u32::MAX)), Ok(ReadArgs { len: 1, expected: Some(u32::MAX) }));
    }

    /// Reads with a UART holding `pending`.
    fn read(
        c: &mut ConsoleInput<u32>,
        candidates: &[u32],
        expected: Option<u32>,
        pending: &mut VecDeque<u8>,
        len: usize,
    ) -> (Vec<u8>, ReadOutcome<u32>) {
        let mut out = vec![0u8; len];
        let r = c.read(candidates, expected, || pending.pop_front(), &mut out);
        out.truncate(r.count);
        (out, r)
    }

    #[test]
    fn the_first_candidate_gets_input_and_is_announced_once() {
        let mut c = ConsoleInput::new();
        let mut uart: VecDeque<u8> = b"hello\r".iter().copied().collect();
        let (bytes, r) = read(&mut c, &[4, 9], None, &mut uart, 64);
        assert_eq!(bytes, b"hello\r");
        assert_eq!((r.target, r.announce), (Some(4), Some(4)));
        let (bytes, r) = read(&mut c, &[4, 9], None, &mut uart, 64);
        assert!(bytes.is_empty());
        assert_eq!((r.target, r.announce), (Some(4), None));
    }

    #[test]
    fn a_switch_ends_the_call_and_the_rest_goes_to_the_next() {
        let mut c = ConsoleInput::new();
        let mut uart: VecDeque<u8> = b"ab\x01ncd".iter().copied().collect();
        let (bytes, r) = read(&mut c, &[1, 2], None, &mut uart, 64);
        assert_eq!(bytes, b"ab");
        assert_eq!((r.target, r.announce), (Some(1), Some(2)));
        assert_eq!(c.focus(), Some(2));
        let (bytes, r) = read(&mut c, &[1, 2], None, &mut uart, 64);
        assert_eq!(bytes, b"cd");
        assert_eq!((r.target, r.announce), (Some(2), None));
        // Cycling back to the first.
        uart.extend(b"\x01n");
        let (bytes, r) = read(&mut c, &[1, 2], None, &mut uart, 64);
        assert!(bytes.is_empty());
        assert_eq!((r.target, r.announce), (Some(2), Some(1)));
    }

    #[test]
    fn a_switch_with_one_candidate_is_still_announced() {
        let mut c = ConsoleInput::new();
        let mut uart: VecDeque<u8> = b"\x01n".iter().copied().collect();
        let (_, r) = read(&mut c, &[3], None, &mut uart, 8);
        assert_eq!((r.target, r.announce), (Some(3), Some(3)));
    }

    #[test]
    fn a_mismatched_expectation_takes_nothing() {
        let mut c = ConsoleInput::new();
        let mut uart: VecDeque<u8> = b"xy".iter().copied().collect();
        let (bytes, r) = read(&mut c, &[1, 2], Some(2), &mut uart, 64);
        assert!(bytes.is_empty());
        assert_eq!((r.target, r.announce), (Some(1), Some(1)));
        assert_eq!(uart.len(), 2, "nothing was taken from the UART");
        let (bytes, r) = read(&mut c, &[1, 2], Some(1), &mut uart, 64);
        assert_eq!(bytes, b"xy");
        assert_eq!(r.target, Some(1));
    }

    #[test]
    fn length_bounds_what_is_taken() {
        let mut c = ConsoleInput::new();
        let mut uart: VecDeque<u8> = b"abcdef".iter().copied().collect();
        let (bytes, _) = read(&mut c, &[1], None, &mut uart, 4);
        assert_eq!(bytes, b"abcd");
        assert_eq!(uart.len(), 2);
        let (bytes, r) = read(&mut c, &[1], None, &mut uart, 0);
        assert!(bytes.is_empty() && r.target == Some(1));
        assert_eq!(uart.len(), 2, "a zero-length read only reports the focus");
    }

    #[test]
    fn literal_ctrl_a_and_ignored_sequences_in_a_read() {
        let mut c = ConsoleInput::new();
        let mut uart: VecDeque<u8> = b"x\x01\x01y\x01zw\r".iter().copied().collect();
        let (bytes, r) = read(&mut c, &[1, 2], None, &mut uart, 64);
        assert_eq!(bytes, b"x\x01yw\r");
        assert_eq!(r.target, Some(1));
        assert_eq!(c.focus(), Some(1));
    }

    #[test]
    fn the_focus_moves_on_when_its_partition_goes() {
        let mut c = ConsoleInput::new();
        let mut uart = VecDeque::new();
        let (_, r) = read(&mut c, &[1, 2], None, &mut uart, 1);
        assert_eq!(r.announce, Some(1));
        let (_, r) = read(&mut c, &[2], None, &mut uart, 1);
        assert_eq!((r.target, r.announce), (Some(2), Some(2)));
        let (_, r) = read(&mut c, &[], None, &mut uart, 1);
        assert_eq!((r.target, r.announce), (None, None));
    }

    #[test]
    fn without_candidates_input_is_dropped_but_escapes_still_count() {
        let mut c = ConsoleInput::new();
        let mut uart: VecDeque<u8> = b"ab\x01".iter().copied().collect();
        let (bytes, r) = read(&mut c, &[], None, &mut uart, 64);
        assert!(bytes.is_empty() && r.target.is_none() && uart.is_empty());
        // The sequence started before the guest existed completes now.
        uart.extend(b"nq");
        let (bytes, r) = read(&mut c, &[5], None, &mut uart, 64);
        assert!(bytes.is_empty());
        assert_eq!((r.target, r.announce), (Some(5), Some(5)));
        let (bytes, _) = read(&mut c, &[5], None, &mut uart, 64);
        assert_eq!(bytes, b"q");
    }

    proptest::proptest! {
        #[test]
        fn reads_never_overrun_and_stay_bounded(
            input in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            len in 0usize..=64,
            ncand in 0usize..4,
        ) {
            let candidates: Vec<u32> = (0..ncand as u32).collect();
            let mut c = ConsoleInput::new();
            let mut uart: VecDeque<u8> = input.iter().copied().collect();
            let mut rounds = 0;
            while !uart.is_empty() && rounds < 1000 {
                let before = uart.len();
                let (bytes, r) = read(&mut c, &candidates, None, &mut uart, len);
                proptest::prop_assert!(bytes.len() <= len);
                proptest::prop_assert!(before - uart.len() <= len);
                proptest::prop_assert!(r.target.is_none() || candidates.contains(&r.target.unwrap()));
                if len == 0 { break; }
                rounds += 1;
            }
        }
    }
}
