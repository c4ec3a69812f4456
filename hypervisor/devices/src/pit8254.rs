//! The PC's programmable interval timer: an Intel 8254 at ports 0x40-0x43, clocked at
//! 1.193182 MHz, plus the timer bits of system control port B (0x61).
//!
//! Written from the Intel 8254 datasheet ("8254 Programmable Interval Timer", order
//! number 231164); names below are its sections and figures: "Control Word Format"
//! (Figure 7), "Write Operations", "Read Operations" ("Counter Latch Command",
//! "Read-Back Command", "Status Byte"), "Mode Definitions", "Gate Pin Operations
//! Summary" (Figure 16), "Minimum and Maximum Initial Counts" (Figure 17).
//!
//! Ports: 0x40, 0x41 and 0x42 are counters 0, 1 and 2; 0x43 is the write-only control
//! word register (it reads as open bus, as the chip leaves the bus floating). The model
//! also decodes **port 0x61** (PC/AT "system control port B"; on PIIX-class chipsets the
//! NMI status and control register), because four of its bits are the PIT's: the owner
//! routes 0x61 here as well. Bit 0 drives counter 2's GATE, bit 1 (speaker data) and bits
//! 2-3 (parity/channel-check enables) are stored and read back, bit 4 toggles with each
//! DRAM refresh request (every 18 PIT clocks, about 15.09 µs, the rate counter 1 is
//! programmed to on a PC), bit 5 reads counter 2's OUT, bits 6-7 (NMI sources) read 0.
//! The speaker itself is not modelled.
//!
//! Wiring, as on a PC: GATE 0 and GATE 1 are tied high, GATE 2 is port 0x61 bit 0; OUT 0
//! is ISA line 0 ([`PIT_IRQ`]), OUT 1 goes nowhere, OUT 2 is read through port 0x61.
//!
//! Modelling decisions:
//! - **Time, not ticks.** CLK is a free-running 1.193182 MHz clock whose edge number `k`
//!   falls at `ceil(k * 10^9 / 1193182)` ns. A counter never steps: its counting element
//!   (CE) and OUT are computed from the clock edge at which the count was loaded (the
//!   "anchor") and the number of edges since, in integers, so periodic modes do not
//!   drift however long they run. Re-anchoring happens only at the events the datasheet
//!   names (a count written, a gate change, the reload of a new count).
//! - **Loading.** As the datasheet says for every mode, a count written between edges
//!   `k` and `k + 1` reaches CE at edge `k + 1` (that edge does not decrement), so mode 0
//!   OUT rises N + 1 clocks after the write. Until then CE reads its previous value and
//!   the status byte shows null count.
//! - **Modes.** All six are implemented as the "Mode Definitions" describe them,
//!   including the rules for a new count written while counting (mode 0 stops at the
//!   first byte and sets OUT low; modes 2 and 3 load the new count at the end of the
//!   current period or half-period; modes 1 and 5 only at the next trigger) and the gate
//!   rules of Figure 16. Modes 0, 1, 4 and 5 wrap around after terminal count and keep
//!   counting. Mode 3 counts down by two; for an odd count N OUT is high for (N + 1) / 2
//!   clocks and low for (N - 1) / 2, CE reading N - 1, N - 3, ... in both halves.
//! - **Approximations.** A gate change takes effect at the write to port 0x61 rather than
//!   at the next sampled CLK edge. A count of 1 in modes 2 and 3, which Figure 17 rules
//!   out, is taken as 2. In BCD mode digits A-F are taken at face value (0xF = 15). The
//!   state before the first control word, which the datasheet leaves undefined, is that
//!   of a control word 0x36 (LSB then MSB, mode 3, binary) with no count written: OUT
//!   high, not counting, no interrupts.
//! - **IRQ 0.** Counter 0's OUT drives line 0; the model reports each low-to-high
//!   transition of OUT 0 as a pulse, `set_irq(0, true)` then `set_irq(0, false)`, for an
//!   edge-triggered interrupt controller: once per period in modes 2 and 3 (at the end
//!   of each period), once at terminal count in mode 0, after the one-clock strobe in
//!   mode 4. [`PortIo::next_event`] is the time of the next rising edge; [`PortIo::tick`]
//!   delivers the rising edges due by `now`. If `tick` runs late and several rising
//!   edges fell in between, they are **coalesced into one pulse** (a late timer
//!   interrupt, as a PIC that is already requesting would also have merged them); the
//!   following rising edges stay on the original grid. A port write that raises OUT 0
//!   at once (a control word for modes 1-5 while OUT was low) pulses the line then.
//!   Every port access first delivers the rising edges already due.
//! - **Access sizes.** The 8254 is an 8-bit device: a 2- or 4-byte access is split into
//!   byte accesses at consecutive ports, low byte first, and lanes on ports the model
//!   does not decode read 0xFF and are not written. Other sizes are open bus.

use crate::{open_bus, read_bytewise, write_bytewise, Nanos, Platform, PortIo};

/// Port of counter 0; counters 1 and 2 follow.
pub const PIT_BASE: u16 = 0x40;
/// The control word register (write-only).
pub const PIT_CONTROL: u16 = 0x43;
/// System control port B, whose timer bits the model decodes.
pub const PORT_B: u16 = 0x61;
/// The ISA line counter 0's OUT drives.
pub const PIT_IRQ: u8 = 0;
/// The input clock of all three counters, in Hz.
pub const PIT_HZ: u64 = 1_193_182;

const NANOS_PER_SEC: u128 = 1_000_000_000;
/// Clock edges between two toggles of port B bit 4 (the PC's refresh rate).
const REFRESH_CLOCKS: u64 = 18;
/// A `null_until` that never passes.
const NEVER: u64 = u64::MAX;
/// The state before any control word ("Modelling decisions").
const RESET_CONTROL: u8 = 0x36;

// Control word (Figure 7): SC1 SC0 RW1 RW0 M2 M1 M0 BCD.
const CW_SELECT_SHIFT: u8 = 6;
const CW_RW_SHIFT: u8 = 4;
const SELECT_READ_BACK: u8 = 3;
const RW_LATCH: u8 = 0;
const RW_LSB: u8 = 1;
const RW_MSB: u8 = 2;
// Read-back command ("Read-Back Command"): 1 1 /COUNT /STATUS CNT2 CNT1 CNT0 0.
const RB_NO_COUNT: u8 = 1 << 5;
const RB_NO_STATUS: u8 = 1 << 4;
// Status byte ("Status Byte"): OUTPUT NULL-COUNT RW1 RW0 M2 M1 M0 BCD.
const STATUS_OUT: u8 = 1 << 7;
const STATUS_NULL: u8 = 1 << 6;
// Port B.
const PORT_B_GATE2: u8 = 1 << 0;
const PORT_B_WRITABLE: u8 = 0x0F;
const PORT_B_REFRESH: u8 = 1 << 4;
const PORT_B_OUT2: u8 = 1 << 5;

/// The clock edges that have occurred by `now` (edge 0 at time 0).
fn clock_at(now: Nanos) -> u64 {
    u64::try_from(u128::from(now) * u128::from(PIT_HZ) / NANOS_PER_SEC).unwrap_or(u64::MAX)
}

/// The first time at which clock edge `edge` has occurred, if it is representable.
fn time_of(edge: u64) -> Option<Nanos> {
    u64::try_from((u128::from(edge) * NANOS_PER_SEC).div_ceil(u128::from(PIT_HZ))).ok()
}

/// What a counter shows at one clock edge: CE (as a count, before BCD encoding) and OUT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Snapshot {
    ce: u64,
    out: bool,
}

/// A counter counting from an anchor edge.
#[derive(Debug, Clone, Copy)]
struct Run {
    /// The edge at which CE holds the state `done` describes (for a fresh count: the
    /// edge that loads it).
    anchor: u64,
    /// The initial count, in clocks (1..=65536, or 2..=65536 in modes 2 and 3).
    n: u64,
    /// Modes 0, 1, 4, 5: decrements made before `anchor`. Modes 2, 3: position in the
    /// period at `anchor` (0 = just loaded).
    done: u64,
    /// Whether CE decrements at the edges after `anchor` (GATE allows it).
    counting: bool,
    /// CE and OUT before `anchor` (between a write and the edge that loads it).
    before: Snapshot,
}

impl Run {
    /// The counter's state at edge `k`.
    fn eval(&self, mode: u8, modulus: u64, k: u64) -> Snapshot {
        if k < self.anchor {
            return self.before;
        }
        let steps = self.done + if self.counting { k - self.anchor } else { 0 };
        match mode {
            2 | 3 => {
                let q = steps % self.n;
                let (ce, low) = if mode == 2 {
                    // Mode 2: N, N-1, ..., 1 (OUT low for that clock), reload.
                    (self.n - q, q == self.n - 1)
                } else {
                    // Mode 3: count down by two through each half; OUT high for the
                    // first (N + 1) / 2 clocks.
                    let high = self.n.div_ceil(2);
                    let even = self.n & !1;
                    if q < high {
                        (even - 2 * q, false)
                    } else {
                        (even - 2 * (q - high), true)
                    }
                };
                // GATE low sets OUT high at once (Figure 16).
                Snapshot { ce, out: !self.counting || !low }
            }
            _ => {
                let ce = (self.n % modulus + modulus - steps % modulus) % modulus;
                // Modes 0, 1: OUT high from terminal count on. Modes 4, 5: OUT low for
                // the one clock at terminal count.
                let out = if mode <= 1 { steps >= self.n } else { steps != self.n };
                Snapshot { ce, out }
            }
        }
    }

    /// The first edge after `after` at which OUT goes from low to high.
    fn next_rise(&self, mode: u8, modulus: u64, after: u64) -> Option<u64> {
        if after < self.anchor && !self.before.out && self.eval(mode, modulus, self.anchor).out {
            return Some(self.anchor);
        }
        if !self.counting {
            return None;
        }
        let from = after.max(self.anchor);
        match mode {
            // OUT rises where the position in the period wraps to 0.
            2 | 3 => {
                let position = (self.done + (from + 1 - self.anchor)) % self.n;
                Some(from + 1 + (self.n - position) % self.n)
            }
            // At terminal count, once.
            0 | 1 => (self.done < self.n).then(|| self.anchor + (self.n - self.done)).filter(|&e| e > from),
            // One clock after terminal count, once.
            _ => (self.done <= self.n).then(|| self.anchor + (self.n + 1 - self.done)).filter(|&e| e > from),
        }
    }
}

/// A new count waiting for the end of the current period (modes 2 and 3).
#[derive(Debug, Clone, Copy)]
struct Reload {
    at: u64,
    n: u64,
    /// Position in the new period at `at` (mode 3 can reload at the half-period).
    phase: u64,
}

impl Reload {
    const fn run(self) -> Run {
        Run { anchor: self.at, n: self.n, done: self.phase, counting: true, before: Snapshot { ce: self.n, out: true } }
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// CE holds still and OUT is constant: after a control word, between the two bytes
    /// of a new mode 0 count, and in modes 1 and 5 until the first trigger.
    Idle(Snapshot),
    Running {
        run: Run,
        reload: Option<Reload>,
    },
}

/// One of the three counters.
#[derive(Debug, Clone)]
struct Counter {
    /// Bits 5:0 of the last control word (RW, mode, BCD), as the status byte shows them.
    control: u8,
    /// The count register (CR), as written.
    cr: u16,
    /// A whole count has been written since the last control word.
    cr_valid: bool,
    /// Write flip-flop: the low byte of a two-byte count, waiting for the high byte.
    low_byte: Option<u8>,
    /// Read flip-flop: the next read of a two-byte count returns the high byte.
    read_high: bool,
    /// The output latch (OL) while a latched count waits to be read.
    latched_count: Option<u16>,
    latched_status: Option<u8>,
    gate: bool,
    /// Null count reads 1 before this edge.
    null_until: u64,
    state: State,
}

impl Counter {
    const fn new(gate: bool) -> Self {
        Self {
            control: RESET_CONTROL,
            cr: 0,
            cr_valid: false,
            low_byte: None,
            read_high: false,
            latched_count: None,
            latched_status: None,
            gate,
            null_until: 0,
            state: State::Idle(Snapshot { ce: 0, out: true }),
        }
    }

    /// The counting mode; modes 6 and 7 are modes 2 and 3 (Figure 7: M2 is "don't care").
    const fn mode(&self) -> u8 {
        let m = (self.control >> 1) & 7;
        if m >= 6 {
            m - 4
        } else {
            m
        }
    }

    const fn bcd(&self) -> bool {
        self.control & 1 != 0
    }

    const fn access(&self) -> u8 {
        (self.control >> CW_RW_SHIFT) & 3
    }

    /// CE wraps around modulo this (FFFF + 1 binary, 9999 + 1 BCD).
    const fn modulus(&self) -> u64 {
        if self.bcd() {
            10_000
        } else {
            0x1_0000
        }
    }

    /// CR as a number of clocks: 0 is the maximum count (Figure 17).
    fn initial_count(&self) -> u64 {
        let raw = u64::from(self.cr);
        let n = if self.bcd() {
            (raw >> 12) * 1000 + ((raw >> 8) & 0xF) * 100 + ((raw >> 4) & 0xF) * 10 + (raw & 0xF)
        } else {
            raw
        };
        let n = if n == 0 { self.modulus() } else { n };
        if matches!(self.mode(), 2 | 3) {
            n.max(2)
        } else {
            n
        }
    }

    /// CE as the chip presents it (binary or BCD).
    fn encode(&self, ce: u64) -> u16 {
        if self.bcd() {
            let v = ce % 10_000;
            ((v / 1000) << 12 | (v / 100 % 10) << 8 | (v / 10 % 10) << 4 | (v % 10)) as u16
        } else {
            (ce & 0xFFFF) as u16
        }
    }

    /// CE and OUT at edge `k` (a pending reload counts once its edge has come).
    fn snapshot(&self, k: u64) -> Snapshot {
        match self.state {
            State::Idle(snapshot) => snapshot,
            State::Running { reload: Some(reload), .. } if k >= reload.at => {
                reload.run().eval(self.mode(), self.modulus(), k)
            }
            State::Running { run, .. } => run.eval(self.mode(), self.modulus(), k),
        }
    }

    fn out(&self, k: u64) -> bool {
        self.snapshot(k).out
    }

    /// The status byte ("Status Byte").
    fn status(&self, k: u64) -> u8 {
        let mut status = self.control & 0x3F;
        if self.out(k) {
            status |= STATUS_OUT;
        }
        if k < self.null_until {
            status |= STATUS_NULL;
        }
        status
    }

    /// Makes a reload whose edge has come the current run.
    fn settle(&mut self, k: u64) {
        if let State::Running { reload: Some(reload), .. } = self.state {
            if k >= reload.at {
                self.state = State::Running { run: reload.run(), reload: None };
            }
        }
    }

    /// The first edge after `after` at which OUT rises.
    fn next_rise(&self, after: u64) -> Option<u64> {
        let State::Running { run, reload } = self.state else { return None };
        let (mode, modulus) = (self.mode(), self.modulus());
        let Some(reload) = reload else { return run.next_rise(mode, modulus, after) };
        match run.next_rise(mode, modulus, after) {
            Some(edge) if edge <= reload.at => Some(edge),
            _ => reload.run().next_rise(mode, modulus, after.max(reload.at)),
        }
    }

    /// A control word for this counter ("Write Operations": it resets the control logic,
    /// and OUT goes to the mode's initial state: low in mode 0, high otherwise).
    fn write_control(&mut self, control: u8, k: u64) {
        let ce = self.snapshot(k).ce;
        self.control = control & 0x3F;
        self.cr_valid = false;
        self.low_byte = None;
        self.read_high = false;
        self.latched_count = None;
        self.latched_status = None;
        self.null_until = NEVER;
        self.state = State::Idle(Snapshot { ce, out: self.mode() != 0 });
    }

    /// "Counter Latch Command" (and the count half of a read-back): ignored while a
    /// latched count is still unread.
    fn latch_count(&mut self, k: u64) {
        if self.latched_count.is_none() {
            self.latched_count = Some(self.encode(self.snapshot(k).ce));
        }
    }

    fn latch_status(&mut self, k: u64) {
        if self.latched_status.is_none() {
            self.latched_status = Some(self.status(k));
        }
    }

    /// A read of the counter's port ("Read Operations"): a latched status first, then a
    /// latched count, else CE as it is now; two-byte counts alternate LSB, MSB.
    fn read(&mut self, k: u64) -> u8 {
        if let Some(status) = self.latched_status.take() {
            return status;
        }
        let value = self.latched_count.unwrap_or_else(|| self.encode(self.snapshot(k).ce));
        let [low, high] = value.to_le_bytes();
        let (byte, last) = match self.access() {
            RW_LSB => (low, true),
            RW_MSB => (high, true),
            _ => {
                self.read_high = !self.read_high;
                if self.read_high {
                    (low, false)
                } else {
                    (high, true)
                }
            }
        };
        if last {
            self.latched_count = None;
        }
        byte
    }

    /// A write of the counter's port: a byte of a new count ("Write Operations").
    fn write(&mut self, byte: u8, k: u64) {
        self.cr = match (self.access(), self.low_byte.take()) {
            (RW_LSB, _) => u16::from(byte),
            (RW_MSB, _) => u16::from(byte) << 8,
            (_, Some(low)) => u16::from_le_bytes([low, byte]),
            (_, None) => {
                self.low_byte = Some(byte);
                if self.mode() == 0 {
                    // Mode 0: writing the first byte stops counting and sets OUT low.
                    self.state = State::Idle(Snapshot { ce: self.snapshot(k).ce, out: false });
                }
                return;
            }
        };
        self.cr_valid = true;
        self.load(k);
    }

    /// Starts counting from a fresh load of CR at edge `k + 1`.
    fn start(&mut self, k: u64, counting: bool, before: Snapshot) {
        let run = Run { anchor: k + 1, n: self.initial_count(), done: 0, counting, before };
        self.state = State::Running { run, reload: None };
        self.null_until = k + 1;
    }

    /// A whole new count has been written at edge `k`: what each mode does with it
    /// ("Mode Definitions").
    fn load(&mut self, k: u64) {
        self.settle(k);
        let now = self.snapshot(k);
        match (self.mode(), self.state) {
            // Loaded on the next clock; mode 0 sets OUT low at once.
            (0, _) => self.start(k, self.gate, Snapshot { ce: now.ce, out: false }),
            (4, _) => self.start(k, self.gate, now),
            // Modes 1, 5: loaded only by the next trigger.
            (1 | 5, _) => self.null_until = NEVER,
            // Modes 2, 3: the first count (or one rewritten before it was loaded) starts
            // at once; later ones wait for the end of the current (half-)period, or for
            // a trigger if GATE is low.
            (_, State::Idle(_)) => self.start(k, self.gate, now),
            (_, State::Running { run, .. }) if k < run.anchor => self.start(k, self.gate, run.before),
            (_, State::Running { run, .. }) if !run.counting => self.null_until = NEVER,
            (mode, State::Running { run, .. }) => {
                let n = self.initial_count();
                let position = (run.done + (k - run.anchor)) % run.n;
                let half = run.n.div_ceil(2);
                let reload = if mode == 3 && position < half {
                    Reload { at: k + (half - position), n, phase: n.div_ceil(2) }
                } else {
                    Reload { at: k + (run.n - position), n, phase: 0 }
                };
                self.state = State::Running { run, reload: Some(reload) };
                self.null_until = reload.at;
            }
        }
    }

    /// GATE changes level at edge `k` (Figure 16).
    fn set_gate(&mut self, level: bool, k: u64) {
        if level == self.gate {
            return;
        }
        self.settle(k);
        let now = self.snapshot(k);
        self.gate = level;
        let mode = self.mode();
        let running = matches!(self.state, State::Running { .. });
        // Modes 1, 5 (trigger) and 2, 3 (rising edge reloads): CR goes into CE at the
        // next clock.
        if level && self.cr_valid && (matches!(mode, 1 | 5) || (matches!(mode, 2 | 3) && running)) {
            self.start(k, true, now);
            return;
        }
        // Modes 0, 4 (the level enables counting) and 2, 3 going low (stops counting,
        // OUT high): freeze or resume CE where it is.
        if matches!(mode, 0 | 4) || (matches!(mode, 2 | 3) && !level) {
            if let State::Running { run, reload } = &mut self.state {
                if k >= run.anchor {
                    let steps = run.done + if run.counting { k - run.anchor } else { 0 };
                    run.done = if matches!(mode, 2 | 3) { steps % run.n } else { steps };
                    run.anchor = k;
                }
                run.counting = level;
                if reload.take().is_some() {
                    // The new count now waits for the next trigger.
                    self.null_until = NEVER;
                }
            }
        }
    }
}

/// The 8254 with counters 0-2 at ports 0x40-0x42, the control word at 0x43 and the
/// timer bits of port 0x61; see the module documentation.
#[derive(Debug, Clone)]
pub struct Pit8254 {
    counters: [Counter; 3],
    /// Port 0x61 bits 3:0 as written.
    port_b: u8,
    /// Rising edges of OUT 0 up to this clock edge have been delivered.
    irq_clock: u64,
    /// The latest time seen.
    last_now: Nanos,
}

impl Default for Pit8254 {
    fn default() -> Self {
        Self::new()
    }
}

impl Pit8254 {
    /// The PIT in its reset state: no counter counts, OUT 0-2 high, GATE 2 low.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            counters: [Counter::new(true), Counter::new(true), Counter::new(false)],
            port_b: 0,
            irq_clock: 0,
            last_now: 0,
        }
    }

    /// The level of counter `channel`'s OUT at `now` (false for a channel above 2).
    #[must_use]
    pub fn out(&self, channel: usize, now: Nanos) -> bool {
        self.counters.get(channel).is_some_and(|c| c.out(clock_at(now.max(self.last_now))))
    }

    /// Takes `now` as the current time (time never goes back) and returns its clock edge.
    fn advance(&mut self, now: Nanos) -> u64 {
        self.last_now = self.last_now.max(now);
        clock_at(self.last_now)
    }

    /// Delivers the rising edges of OUT 0 up to edge `k`, coalesced into one pulse.
    fn deliver(&mut self, k: u64, platform: &mut dyn Platform) {
        if k > self.irq_clock {
            if self.counters[0].next_rise(self.irq_clock).is_some_and(|edge| edge <= k) {
                pulse(platform);
            }
            self.irq_clock = k;
        }
        for counter in &mut self.counters {
            counter.settle(k);
        }
    }

    fn read_byte(&mut self, port: u16, k: u64) -> Option<u8> {
        match port {
            0x40..=0x42 => Some(self.counters[usize::from(port - PIT_BASE)].read(k)),
            PORT_B => {
                let mut value = self.port_b;
                if (k / REFRESH_CLOCKS) % 2 == 1 {
                    value |= PORT_B_REFRESH;
                }
                if self.counters[2].out(k) {
                    value |= PORT_B_OUT2;
                }
                Some(value)
            }
            _ => None,
        }
    }

    fn write_byte(&mut self, port: u16, value: u8, k: u64) {
        match port {
            0x40..=0x42 => self.counters[usize::from(port - PIT_BASE)].write(value, k),
            PIT_CONTROL => self.write_control(value, k),
            PORT_B => {
                self.port_b = value & PORT_B_WRITABLE;
                self.counters[2].set_gate(value & PORT_B_GATE2 != 0, k);
            }
            _ => {}
        }
    }

    /// A write of the control word register: a control word, a counter latch command or
    /// a read-back command (Figure 7).
    fn write_control(&mut self, value: u8, k: u64) {
        let select = value >> CW_SELECT_SHIFT;
        if select == SELECT_READ_BACK {
            for (i, counter) in self.counters.iter_mut().enumerate() {
                if value & (2 << i) == 0 {
                    continue;
                }
                if value & RB_NO_COUNT == 0 {
                    counter.latch_count(k);
                }
                if value & RB_NO_STATUS == 0 {
                    counter.latch_status(k);
                }
            }
            return;
        }
        let counter = &mut self.counters[usize::from(select)];
        if (value >> CW_RW_SHIFT) & 3 == RW_LATCH {
            counter.latch_count(k);
        } else {
            counter.write_control(value, k);
        }
    }
}

/// A pulse on IRQ 0, for an edge-triggered interrupt controller.
fn pulse(platform: &mut dyn Platform) {
    platform.set_irq(PIT_IRQ, true);
    platform.set_irq(PIT_IRQ, false);
}

impl PortIo for Pit8254 {
    fn read(&mut self, port: u16, size: u8, now: Nanos, platform: &mut dyn Platform) -> u32 {
        if !matches!(size, 1 | 2 | 4) {
            return open_bus(size);
        }
        let k = self.advance(now);
        self.deliver(k, platform);
        read_bytewise(port, size, |p| self.read_byte(p, k))
    }

    fn write(&mut self, port: u16, size: u8, value: u32, now: Nanos, platform: &mut dyn Platform) {
        if !matches!(size, 1 | 2 | 4) {
            return;
        }
        let k = self.advance(now);
        self.deliver(k, platform);
        write_bytewise(port, size, value, |port, byte| {
            let out0 = self.counters[0].out(k);
            self.write_byte(port, byte, k);
            if !out0 && self.counters[0].out(k) {
                pulse(platform);
            }
        });
    }

    /// The next rising edge of OUT 0, if counter 0 will produce one.
    fn next_event(&self) -> Option<Nanos> {
        self.counters[0].next_rise(self.irq_clock).and_then(time_of)
    }

    fn tick(&mut self, now: Nanos, platform: &mut dyn Platform) {
        let k = self.advance(now);
        self.deliver(k, platform);
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::RecordingPlatform;
    use proptest::prelude::*;

    const CH0: u16 = PIT_BASE;
    const CH2: u16 = PIT_BASE + 2;

    /// The first time at which clock edge `edge` has occurred.
    fn at(edge: u64) -> Nanos {
        time_of(edge).unwrap()
    }

    struct Bench {
        pit: Pit8254,
        platform: RecordingPlatform,
    }

    impl Bench {
        fn new() -> Self {
            Self { pit: Pit8254::new(), platform: RecordingPlatform::default() }
        }
        fn out(&mut self, port: u16, value: u8, now: Nanos) {
            self.pit.write(port, 1, u32::from(value), now, &mut self.platform);
        }
        fn inb(&mut self, port: u16, now: Nanos) -> u8 {
            u8::try_from(self.pit.read(port, 1, now, &mut self.platform)).unwrap()
        }
        /// Control word, then a two-byte count, all at `now`.
        fn program(&mut self, control: u8, count: u16, now: Nanos) {
            let port = PIT_BASE + u16::from(control >> 6);
            self.out(PIT_CONTROL, control, now);
            let [low, high] = count.to_le_bytes();
            self.out(port, low, now);
            self.out(port, high, now);
        }
        /// Latches counter `channel` and reads the latched two-byte count at `now`.
        fn latched(&mut self, channel: u8, now: Nanos) -> u16 {
            self.out(PIT_CONTROL, channel << 6, now);
            let port = PIT_BASE + u16::from(channel);
            u16::from_le_bytes([self.inb(port, now), self.inb(port, now)])
        }
        fn tick(&mut self, now: Nanos) {
            self.pit.tick(now, &mut self.platform);
        }
        fn irqs(&self) -> u32 {
            self.platform.rising_edges[0]
        }
    }

    #[test]
    fn clock_conversions_round_trip() {
        for edge in [0, 1, 2, 1_193_181, 1_193_182, 1 << 40] {
            assert_eq!(clock_at(at(edge)), edge);
            assert_eq!(clock_at(at(edge) - u64::from(edge > 0)), edge.saturating_sub(1));
        }
        assert_eq!(clock_at(1_000_000_000), PIT_HZ);
        assert_eq!(time_of(u64::MAX), None);
    }

    #[test]
    fn mode0_counts_down_and_raises_out_once_at_terminal_count() {
        let mut b = Bench::new();
        b.program(0x30, 1000, at(100));
        // Loaded at edge 101 (which does not decrement), terminal count 1000 clocks later.
        assert!(!b.pit.out(0, at(100)));
        assert_eq!(b.pit.next_event(), Some(at(1101)));
        assert_eq!(b.latched(0, at(101)), 1000);
        assert_eq!(b.latched(0, at(600)), 501);
        b.tick(at(1100));
        assert_eq!(b.irqs(), 0);
        assert!(!b.pit.out(0, at(1100)));
        assert_eq!(b.latched(0, at(1100)), 1);
        b.tick(at(1101));
        assert_eq!(b.irqs(), 1);
        assert!(b.pit.out(0, at(1101)));
        assert_eq!(b.platform.lines & 1, 0, "IRQ 0 is pulsed, not left high");
        // The counter wraps around and keeps counting; OUT stays high, no more IRQs.
        assert_eq!(b.latched(0, at(1106)), 0xFFFB);
        assert_eq!(b.pit.next_event(), None);
        b.tick(at(1_000_000));
        assert_eq!(b.irqs(), 1);
        assert!(b.pit.out(0, at(1_000_000)));
    }

    #[test]
    fn mode0_new_count_restarts_and_first_byte_stops_counting() {
        let mut b = Bench::new();
        b.program(0x30, 100, at(0));
        b.tick(at(200));
        assert_eq!(b.irqs(), 1);
        // The first byte of a new count sets OUT low and freezes CE.
        b.out(CH0, 50, at(300));
        assert!(!b.pit.out(0, at(300)));
        assert_eq!(b.latched(0, at(400)), b.latched(0, at(500)));
        assert_eq!(b.pit.next_event(), None);
        // The second byte loads it at the next clock.
        b.out(CH0, 0, at(600));
        assert_eq!(b.pit.next_event(), Some(at(651)));
        b.tick(at(651));
        assert_eq!(b.irqs(), 2);
    }

    /// Drives counter 0 in `control`'s periodic mode through many periods by waking at
    /// each `next_event`: every pulse lands exactly on the clock grid.
    fn run_periodic(control: u8, count: u16, periods: u64) {
        let mut b = Bench::new();
        let start = 12_345;
        b.program(control, count, start);
        let anchor = clock_at(start) + 1;
        let period = if count == 0 { 0x1_0000 } else { u64::from(count) };
        for i in 1..=periods {
            let due = b.pit.next_event().unwrap();
            assert_eq!(due, at(anchor + i * period));
            b.tick(due - 1);
            assert_eq!(u64::from(b.irqs()), i - 1);
            b.tick(due);
            assert_eq!(u64::from(b.irqs()), i);
        }
        // Elapsed time matches the pulse count exactly: no drift after `periods` periods.
        let now = at(anchor + periods * period);
        assert_eq!((clock_at(now) - anchor) / period, periods);
    }

    #[test]
    fn modes_2_and_3_periodic_irq0_does_not_drift() {
        run_periodic(0x34, 11_932, 100_000); // mode 2 at 100 Hz for 1000 s
        run_periodic(0x36, 1193, 100_000); // mode 3 (odd count) at 1 kHz for 100 s
        for (control, count) in [(0x34, 2), (0x34, 0), (0x36, 1194), (0x36, 3), (0x36, 0)] {
            run_periodic(control, count, 100); // 0 = 65536
        }
    }

    #[test]
    fn periodic_pulses_match_elapsed_time_with_irregular_ticks() {
        for control in [0x34, 0x36] {
            let mut b = Bench::new();
            b.program(control, 11_932, 0);
            let anchor = 1;
            let mut now = 0;
            while now < 10_000_000_000 {
                now += 997_003; // ticks faster than the 10 ms period, at no fixed phase
                b.tick(now);
                let expected = (clock_at(now) - anchor) / 11_932;
                assert_eq!(u64::from(b.irqs()), expected, "control {control:#x} at {now}");
            }
        }
    }

    #[test]
    fn mode3_is_a_square_wave() {
        let mut b = Bench::new();
        b.program(0x36, 1193, at(0)); // odd: high 597 clocks, low 596
        assert!(b.pit.out(0, at(1)));
        assert!(b.pit.out(0, at(597)));
        assert!(!b.pit.out(0, at(598)));
        assert!(!b.pit.out(0, at(1193)));
        assert!(b.pit.out(0, at(1194)));
        // CE counts down by two from N - 1 in each half.
        assert_eq!(b.latched(0, at(1)), 1192);
        assert_eq!(b.latched(0, at(2)), 1190);
        assert_eq!(b.latched(0, at(598)), 1192);
        b.program(0x36, 1000, at(10_000)); // even: high 500, low 500
        assert_eq!(b.latched(0, at(10_001)), 1000);
        assert_eq!(b.latched(0, at(10_002)), 998);
        assert!(b.pit.out(0, at(10_500)));
        assert!(!b.pit.out(0, at(10_501)));
        assert_eq!(b.latched(0, at(10_501)), 1000);
    }

    #[test]
    fn late_tick_coalesces_pulses_and_keeps_the_grid() {
        let mut b = Bench::new();
        b.program(0x34, 1000, at(0));
        b.tick(at(1 + 10 * 1000 + 5));
        assert_eq!(b.irqs(), 1);
        assert_eq!(b.pit.next_event(), Some(at(1 + 11 * 1000)));
        b.tick(at(1 + 11 * 1000));
        assert_eq!(b.irqs(), 2);
    }

    #[test]
    fn modes_2_and_3_new_count_waits_for_the_end_of_the_period() {
        let mut b = Bench::new();
        b.program(0x34, 1000, at(0));
        let [low, high] = 500u16.to_le_bytes();
        b.out(CH0, low, at(301));
        b.out(CH0, high, at(301));
        b.out(PIT_CONTROL, 0xE2, at(301));
        assert_ne!(b.inb(CH0, at(301)) & STATUS_NULL, 0);
        assert_eq!(b.latched(0, at(301)), 700, "the current period is not affected");
        for edge in [1001, 1501, 2001] {
            assert_eq!(b.pit.next_event(), Some(at(edge)));
            b.tick(at(edge));
        }
        assert_eq!(b.irqs(), 3);
        b.out(PIT_CONTROL, 0xE2, at(2001));
        assert_eq!(b.inb(CH0, at(2001)) & STATUS_NULL, 0);
        // Mode 3: at the end of the half-period. Reloaded at the end of the high half
        // (edge 3501) into the low half of the new count, which ends 200 clocks later.
        b.program(0x36, 1000, at(3000));
        b.out(CH0, 144, at(3101)); // 400 = 0x190
        b.out(CH0, 1, at(3101));
        assert!(b.pit.out(0, at(3500)));
        assert!(!b.pit.out(0, at(3501)));
        assert_eq!(b.latched(0, at(3501)), 400);
        assert_eq!(b.pit.next_event(), Some(at(3701)));
        b.tick(at(3701));
        assert_eq!(b.pit.next_event(), Some(at(4101)));
    }

    #[test]
    fn mode4_strobes_and_control_words_can_raise_out0() {
        let mut b = Bench::new();
        b.out(PIT_CONTROL, 0x38, at(0)); // Linux's one-shot clockevent
        assert_eq!(b.pit.next_event(), None);
        b.out(CH0, 100, at(10));
        b.out(CH0, 0, at(10));
        // Loaded at 11, CE = 0 at 111 (OUT low), OUT high again at 112.
        assert!(b.pit.out(0, at(110)));
        assert!(!b.pit.out(0, at(111)));
        assert!(b.pit.out(0, at(112)));
        assert_eq!(b.pit.next_event(), Some(at(112)));
        b.tick(at(112));
        assert_eq!(b.irqs(), 1);
        assert_eq!(b.pit.next_event(), None);
        // A control word that raises OUT 0 at once pulses IRQ 0 then.
        b.program(0x30, 1000, at(200)); // mode 0: OUT low
        b.out(PIT_CONTROL, 0x34, at(300)); // mode 2 starts with OUT high
        assert_eq!(b.irqs(), 2);
        assert_eq!(b.pit.next_event(), None, "no count written yet");
    }

    #[test]
    fn counter_latch_freezes_the_read_value() {
        let mut b = Bench::new();
        b.program(0x34, 50_000, at(0));
        b.out(PIT_CONTROL, 0x00, at(101));
        b.out(PIT_CONTROL, 0x00, at(2000)); // ignored: the first latch is unread
        assert_eq!(b.inb(CH0, at(30_000)), (49_900 & 0xFF) as u8);
        assert_eq!(b.inb(CH0, at(40_000)), (49_900 >> 8) as u8);
        // Unlatched again: reads follow CE.
        let live = u16::from_le_bytes([b.inb(CH0, at(40_001)), b.inb(CH0, at(40_001))]);
        assert_eq!(live, 50_000 - 40_000);
        // A control word drops an unread latch.
        b.out(PIT_CONTROL, 0x00, at(40_002));
        b.program(0x34, 7, at(40_003));
        assert_eq!(b.latched(0, at(40_004)), 7);
    }

    #[test]
    fn lsb_msb_flip_flops() {
        let mut b = Bench::new();
        // Counter 2 with GATE 2 low: the count is loaded but does not move.
        b.program(0xB0, 0x1234, at(0));
        assert_eq!(b.inb(CH2, at(5)), 0x34);
        assert_eq!(b.inb(CH2, at(6)), 0x12);
        // Reads and writes of a two-byte count may interleave.
        assert_eq!(b.inb(CH2, at(7)), 0x34);
        b.out(CH2, 0x78, at(8));
        assert_eq!(b.inb(CH2, at(9)), 0x12);
        b.out(CH2, 0x56, at(10));
        assert_eq!(b.inb(CH2, at(11)), 0x78);
        assert_eq!(b.inb(CH2, at(11)), 0x56);
        // LSB only: the high byte is 0 and every read returns the low byte.
        b.out(PIT_CONTROL, 0x90, at(20));
        b.out(CH2, 0xAB, at(20));
        assert_eq!([b.inb(CH2, at(21)), b.inb(CH2, at(21))], [0xAB, 0xAB]);
        // MSB only: the low byte is 0.
        b.out(PIT_CONTROL, 0xA0, at(30));
        b.out(CH2, 0x12, at(30));
        assert_eq!([b.inb(CH2, at(31)), b.inb(CH2, at(31))], [0x12, 0x12]);
        b.out(PIT_CONTROL, 0x80, at(31)); // latch counter 2
        assert_eq!(b.inb(CH2, at(32)), 0x12);
        // A control word resets the read flip-flop.
        b.program(0xB0, 0x4321, at(40));
        assert_eq!(b.inb(CH2, at(41)), 0x21);
        b.out(PIT_CONTROL, 0xB0, at(42));
        b.out(CH2, 0x11, at(42));
        b.out(CH2, 0x22, at(42));
        assert_eq!(b.inb(CH2, at(43)), 0x11);
    }

    #[test]
    fn read_back_latches_status_and_count() {
        let mut b = Bench::new();
        // Status before a count: null count, OUT high (mode 2), RW/mode/BCD as written.
        b.out(PIT_CONTROL, 0x34, at(0));
        b.out(PIT_CONTROL, 0xE2, at(0));
        assert_eq!(b.inb(CH0, at(0)), 0x80 | 0x40 | 0x34);
        b.out(CH0, 0x10, at(0));
        b.out(CH0, 0x27, at(0)); // 10000
        b.out(PIT_CONTROL, 0xE2, at(0));
        assert_eq!(b.inb(CH0, at(0)), 0xC0 | 0x34, "null count until the next clock");
        b.out(PIT_CONTROL, 0xE2, at(1));
        assert_eq!(b.inb(CH0, at(1)), 0x80 | 0x34);
        // Count and status: status first, then the count, whatever the order latched.
        b.out(PIT_CONTROL, 0xC2, at(101));
        b.out(PIT_CONTROL, 0xE2, at(5000)); // ignored: status already latched
        assert_eq!(b.inb(CH0, at(6000)), 0x80 | 0x34);
        assert_eq!(u16::from_le_bytes([b.inb(CH0, at(6000)), b.inb(CH0, at(6000))]), 9900);
        // Several counters at once; OUT low shows in the status.
        b.program(0x70, 500, at(7000)); // counter 1, mode 0
        b.out(PIT_CONTROL, 0xCE, at(7100));
        assert_eq!(b.inb(PIT_BASE + 1, at(8000)), 0x30);
        assert_eq!(b.inb(PIT_BASE + 1, at(8000)), (500 - 99) as u8);
        assert_eq!(b.inb(PIT_BASE + 1, at(8000)), 1);
        assert_eq!(b.inb(CH0, at(8000)) & 0x3F, 0x34);
        assert_eq!(b.inb(PIT_BASE + 2, at(8000)), 0x80 | 0x36, "counter 2 in its reset state");
        // A read-back with neither count nor status selected latches nothing.
        b.out(PIT_CONTROL, 0xF2, at(8000));
        let latched = u16::from_le_bytes([b.inb(CH0, at(8000)), b.inb(CH0, at(8000))]);
        assert_eq!(latched, 10_000 - 7099, "counter 0's count, latched by 0xCE");
        let live = u16::from_le_bytes([b.inb(CH0, at(8000)), b.inb(CH0, at(8000))]);
        assert_eq!(live, 10_000 - 7999);
    }

    #[test]
    fn linux_pit_calibration_polls_out2_through_port_b() {
        // As in Linux's pit_calibrate_tsc(): gate high, speaker off, counter 2 in mode 0
        // with a 50 ms count, then poll port 0x61 bit 5.
        let mut b = Bench::new();
        let mut now = 3_000_000;
        let v = b.inb(PORT_B, now);
        b.out(PORT_B, (v & !0x02) | 0x01, now);
        let latch: u16 = (PIT_HZ / 20) as u16;
        b.out(PIT_CONTROL, 0xB0, now);
        b.out(CH2, latch as u8, now);
        b.out(CH2, (latch >> 8) as u8, now);
        let start = now;
        let expected_edge = clock_at(start) + 1 + u64::from(latch);
        let mut polls = 0;
        while b.inb(PORT_B, now) & 0x20 == 0 {
            now += 1000;
            polls += 1;
            assert!(polls < 100_000);
        }
        assert_eq!(b.inb(PORT_B, now) & 0x01, 0x01);
        assert!(clock_at(now) >= expected_edge && clock_at(now - 1000) < expected_edge);
        let elapsed = now - start;
        assert!(elapsed.abs_diff(50_000_000) < 2000, "{elapsed}");
        assert_eq!(b.irqs(), 0, "counter 2 does not interrupt");
    }

    #[test]
    fn linux_quick_calibration_reads_the_msb() {
        // quick_pit_calibrate(): mode 0 from 0xFFFF, reading LSB then MSB unlatched.
        let mut b = Bench::new();
        b.out(PORT_B, 0x01, 0);
        b.out(PIT_CONTROL, 0xB0, 0);
        b.out(CH2, 0xFF, 0);
        b.out(CH2, 0xFF, 0);
        for i in 1..200u64 {
            let now = i * 250_000;
            let _ = b.inb(CH2, now);
            let msb = b.inb(CH2, now);
            let expected = 0xFFFF - (clock_at(now) - 1);
            assert_eq!(u64::from(msb), expected >> 8);
        }
    }

    #[test]
    fn gate2_controls_counting() {
        let mut b = Bench::new();
        b.program(0xB0, 1000, at(0)); // gate low: loaded at edge 1, held
        assert_eq!(b.latched(2, at(500)), 1000);
        b.out(PORT_B, 0x01, at(500));
        assert_eq!(b.latched(2, at(600)), 900);
        b.out(PORT_B, 0x00, at(600));
        assert_eq!(b.latched(2, at(5000)), 900);
        b.out(PORT_B, 0x01, at(5000));
        assert!(!b.pit.out(2, at(5899)));
        assert!(b.pit.out(2, at(5900)));
        // Modes 2/3: gate low forces OUT high and stops; the rising edge reloads.
        b.program(0xB4, 100, at(6000));
        assert!(!b.pit.out(2, at(6100)));
        b.out(PORT_B, 0x00, at(6100));
        assert!(b.pit.out(2, at(6100)));
        assert_eq!(b.latched(2, at(7000)), 1);
        b.out(PORT_B, 0x01, at(7000));
        assert_eq!(b.latched(2, at(7001)), 100);
        assert_eq!(b.latched(2, at(7050)), 51);
    }

    #[test]
    fn modes_1_and_5_are_triggered_by_gate2() {
        let mut b = Bench::new();
        b.program(0xB2, 100, at(0)); // mode 1
        assert!(b.pit.out(2, at(50)));
        assert_eq!(b.latched(2, at(50)), 0, "not loaded before a trigger");
        b.out(PORT_B, 0x01, at(50));
        assert!(b.pit.out(2, at(50)));
        assert!(!b.pit.out(2, at(51)));
        assert_eq!(b.latched(2, at(51)), 100);
        // Retriggering restarts the one-shot with CR.
        b.out(PORT_B, 0x00, at(100));
        b.out(PORT_B, 0x01, at(120));
        assert!(!b.pit.out(2, at(220)));
        assert!(b.pit.out(2, at(221)));
        // Mode 5: a one-clock strobe N + 1 clocks after the trigger.
        b.out(PORT_B, 0x00, at(300));
        b.program(0xBA, 10, at(300));
        b.out(PORT_B, 0x01, at(400));
        assert!(b.pit.out(2, at(410)));
        assert!(!b.pit.out(2, at(411)));
        assert!(b.pit.out(2, at(412)));
    }

    #[test]
    fn bcd_counting() {
        let mut b = Bench::new();
        b.out(PORT_B, 0x01, 0);
        b.program(0xB1, 0x1000, at(0)); // BCD 1000
        assert_eq!(b.latched(2, at(1)), 0x1000);
        assert_eq!(b.latched(2, at(2)), 0x0999);
        assert_eq!(b.latched(2, at(1001)), 0x0000);
        assert!(b.pit.out(2, at(1001)));
        assert_eq!(b.latched(2, at(1002)), 0x9999, "wraps around to 9999");
        b.program(0xB1, 0, at(2000)); // 0 = 10000
        assert!(!b.pit.out(2, at(12_000)));
        assert!(b.pit.out(2, at(12_001)));
    }

    #[test]
    fn port_b_bits_access_sizes_and_undecoded_ports() {
        let mut b = Bench::new();
        b.out(PORT_B, 0xFF, at(0));
        assert_eq!(b.inb(PORT_B, at(0)) & 0xCF, 0x0F);
        let r0 = b.inb(PORT_B, at(0)) & PORT_B_REFRESH;
        let r1 = b.inb(PORT_B, at(REFRESH_CLOCKS)) & PORT_B_REFRESH;
        let r2 = b.inb(PORT_B, at(2 * REFRESH_CLOCKS)) & PORT_B_REFRESH;
        assert_ne!(r0, r1);
        assert_eq!(r0, r2);
        assert_ne!(b.inb(PORT_B, at(100)) & PORT_B_OUT2, 0, "OUT 2 high at reset");
        // Wide accesses are split into bytes; undecoded ports and sizes are open bus.
        let (mut b, mut p) = (Bench::new(), RecordingPlatform::default());
        b.program(0x30, 0x1234, at(0));
        b.program(0x70, 0x5678, at(0));
        b.out(PIT_CONTROL, 0xCC, at(1)); // latch count and status of counters 1, 2
        b.out(PIT_CONTROL, 0x00, at(1));
        assert_eq!(b.pit.read(CH0, 2, at(1), &mut p), 0x3034, "counter 0 LSB, counter 1 status");
        assert_eq!(b.pit.read(PIT_CONTROL, 1, at(1), &mut p), 0xFF);
        assert_eq!(b.pit.read(0x50, 4, at(1), &mut p), 0xFFFF_FFFF);
        assert_eq!(b.pit.read(CH0, 3, at(1), &mut p), open_bus(3));
        assert_eq!(b.pit.read(0xFFFF, 2, at(1), &mut p), 0xFFFF);
        // A 2-byte write at 0x42 writes counter 2's LSB-only count, then a control word
        // (latch counter 2).
        b.out(PIT_CONTROL, 0x90, at(2));
        b.pit.write(CH2, 2, 0x80_05, at(2), &mut p);
        assert_eq!(b.inb(CH2, at(500)), 0, "latched at edge 2, before the load at edge 3");
        assert_eq!(b.inb(CH2, at(500)), 5, "GATE 2 low: loaded but held");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Read { port: u16, size: u8 },
        Write { port: u16, size: u8, value: u32 },
        Advance(u64),
        Tick,
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        let port = prop_oneof![0x3Fu16..=0x44, Just(PORT_B), Just(0x60u16)];
        let size = prop_oneof![Just(1u8), Just(2), Just(4), Just(3), Just(0)];
        prop_oneof![
            2 => (port.clone(), size.clone()).prop_map(|(port, size)| Op::Read { port, size }),
            3 => (port, size, any::<u32>()).prop_map(|(port, size, value)| Op::Write { port, size, value }),
            2 => prop_oneof![0u64..2000, 0u64..100_000_000, Just(u64::MAX / 4)].prop_map(Op::Advance),
            1 => Just(Op::Tick),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn random_sequences_never_panic(ops in prop::collection::vec(op_strategy(), 1..200)) {
            let mut pit = Pit8254::new();
            let mut platform = RecordingPlatform::default();
            let mut now: Nanos = 0;
            for op in ops {
                match op {
                    Op::Read { port, size } => {
                        let v = pit.read(port, size, now, &mut platform);
                        if size == 1 || size == 2 {
                            prop_assert!(v < 1 << (8 * u32::from(size)));
                        }
                    }
                    Op::Write { port, size, value } => pit.write(port, size, value, now, &mut platform),
                    Op::Advance(dt) => now = now.saturating_add(dt),
                    Op::Tick => {
                        pit.tick(now, &mut platform);
                        if let Some(next) = pit.next_event() {
                            prop_assert!(next > now);
                        }
                    }
                }
                prop_assert_eq!(platform.lines, 0);
                for channel in 0..4 {
                    let _ = pit.out(channel, now);
                }
            }
        }
    }
}
