//! The guest VMs the service partition emulates devices for: a static table of
//! `hv_abi::service::MAX_VMS` entries indexed by `VmId::index()`, each holding that
//! VM's [`PcBoard`], the interrupt-line levels last sent, its console line buffer, the
//! console input waiting for its UART (see [`crate::console`]) and its `delay-test`
//! device ([`DelayTest`], whose reads complete later: [`delay_test_access`]).
//!
//! **Locking.** The service partition has one vCPU per physical CPU that runs guest
//! vCPUs, so several service vCPUs may serve requests at once: of different VMs, or of
//! different vCPUs of the same VM. Each table entry has its own spin lock (an
//! `AtomicBool`); a request holds its VM's lock from the board look-up to the last
//! hypercall it makes, so the board, the line levels and the console buffer of one VM
//! change one request at a time, while different VMs proceed in parallel. A reset is
//! the exception: the guest's reboot (`crate::builder::reboot`) runs after the lock is
//! released, because `VM_RESET` waits for the guest's other vCPUs, which may need the
//! lock to finish an access first; the board reset then takes the lock again
//! ([`reset_board`]).
//!
//! **Board configuration.** The guest builder creates each guest's board when it builds
//! the VM ([`create_board`]), with the VM's vCPU count and RAM size (what fw_cfg
//! reports). The RTC starts at the machine's wall-clock time
//! (`SYSTEM_INFO(WALL_CLOCK_SECONDS)`: the hypervisor's reading of the host's CMOS RTC),
//! or at [`EPOCH_SECONDS`], 2026-01-01T00:00:00Z, when the hypervisor has none. A VM
//! whose first request comes without a board (not one this partition built) gets 1 vCPU
//! and 0 bytes of RAM.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use guest_rt::raw_hypercall;
use hv_abi::hypercall as hc;
use hv_abi::io_request::status;
use hv_abi::platform::IOAPIC_PINS;
use hv_abi::service::{power, VmId, MAX_VMS};
use hv_abi::CONSOLE_WRITE_MAX;
use hv_core::console_input::InputQueue;
use hv_devices::board::{BoardConfig, PcBoard};
use hv_devices::test_devices::DelayTest;
use hv_devices::{Nanos, Platform, PlatformRequest};

/// The RTC's wall-clock time at a board's creation when the hypervisor knows no
/// wall-clock time: 2026-01-01T00:00:00Z (Unix seconds).
pub const EPOCH_SECONDS: u64 = 1_767_225_600;
/// How long a partial console line waits for more bytes before it is sent as it is
/// (20 ms, in the boards' nanoseconds).
const PARTIAL_LINE_IDLE: Nanos = 20_000_000;

/// The longest console chunk sent at once (a partial line is sent when it gets this long).
const LINE_MAX: usize = CONSOLE_WRITE_MAX as usize;

/// What the service partition keeps per guest VM.
struct Vm {
    /// The full id (index and generation) the board belongs to.
    id: VmId,
    board: PcBoard,
    /// Levels last sent with `GUEST_IRQ_LINE` (bit n = GSI n high).
    lines: u32,
    /// The 8259 pair's INTR level last sent with `GUEST_PIC_INTR`.
    pic_intr: bool,
    /// The latest time the board was given (time never goes back for it).
    last_now: Nanos,
    /// The guest's console line being assembled.
    line: [u8; LINE_MAX],
    line_len: usize,
    /// When the last byte joined the partial line (a prompt without a newline is sent
    /// once the guest has written nothing for [`PARTIAL_LINE_IDLE`]).
    line_last: Nanos,
    /// Console input the UART's receiver has not taken yet.
    input: InputQueue,
    /// The `delay-test` device (not part of the board: its reads are deferred).
    delay: DelayTest<DeferTag>,
}

/// Names a deferred request for its `SERVICE_COMPLETE`: its request slot and sequence
/// number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeferTag {
    pub slot: u32,
    pub sequence: u64,
}

/// What a `delay-test` access did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DelayAccess {
    /// A write set the delay.
    Written,
    /// A read started: answer `DEFERRED`.
    Deferred,
    /// A read while another is in progress (or of a bad size): answer `FAILED`.
    Busy,
}

impl Vm {
    /// A VM with a board of `vcpus` vCPUs and `ram_bytes` of RAM whose RTC shows the
    /// wall-clock time now ([`wall_clock_seconds`]).
    fn new(id: VmId, now: Nanos, vcpus: u32, ram_bytes: u64) -> Self {
        let config = BoardConfig { vcpus, ram_bytes, epoch_seconds: wall_clock_seconds() };
        Self {
            id,
            board: PcBoard::new(config, now),
            lines: 0,
            pic_intr: false,
            last_now: now,
            line: [0; LINE_MAX],
            line_len: 0,
            line_last: now,
            input: InputQueue::new(),
            delay: DelayTest::new(),
        }
    }

    /// Completes the `delay-test` read in progress if it is confirmed and due, with
    /// `SERVICE_COMPLETE` (a refusal, when the guest stopped meanwhile, is the
    /// hypervisor's to log; the read is over either way); else lowers [`next_wake`] to
    /// its due time. Only here and in [`confirm_deferred`]: accesses, which every
    /// forwarded request makes, need not look at the device (a read becomes due only
    /// after its confirmation).
    fn complete_delayed_read(&mut self) {
        if let Some((tag, value)) = self.delay.take_completed(self.last_now) {
            raw_hypercall(
                hc::SERVICE_COMPLETE,
                u64::from(tag.slot),
                tag.sequence,
                u64::from(value),
                u64::from(status::DONE),
            );
        }
        if let Some(due) = self.delay.next_event() {
            lower_next_wake(due);
        }
    }

    /// Moves waiting console input into the UART's receiver, as much as it has room for
    /// (none is lost to an overrun); the rest waits for the guest to read. Returns
    /// whether any moved (the interrupt it may raise is driven by the next `tick`).
    fn feed_input(board: &mut PcBoard, input: &mut InputQueue) -> bool {
        if input.is_empty() {
            return false;
        }
        let space = board.console_input_space();
        input.deliver(space, |byte| {
            board.push_console_input(byte);
        }) > 0
    }

    /// Sends the assembled line (if any) as the guest's console output.
    fn send_line(&mut self) {
        let len = self.line_len.min(LINE_MAX);
        if len > 0 {
            // The bytes are in this partition's RAM (a static, identity-mapped); the
            // hypervisor checks the range. A refusal only loses the text.
            raw_hypercall(hc::GUEST_CONSOLE_WRITE, u64::from(self.id.0), self.line.as_ptr() as u64, len as u64, 0);
        }
        self.line_len = 0;
    }

    /// Moves the board's console output into the line buffer, sending every complete
    /// line (with its '\n') and every partial line that reaches [`LINE_MAX`] bytes;
    /// with `flush`, also what remains.
    fn drain_console(&mut self, flush: bool) {
        let mut chunk = [0u8; 64];
        loop {
            let n = self.board.take_console_output(&mut chunk);
            let Some(bytes) = chunk.get(..n).filter(|b| !b.is_empty()) else { break };
            self.line_last = self.last_now;
            for &byte in bytes {
                if let Some(slot) = self.line.get_mut(self.line_len) {
                    *slot = byte;
                    self.line_len += 1;
                }
                if byte == b'\n' || self.line_len >= LINE_MAX {
                    self.send_line();
                }
            }
        }
        if flush {
            self.send_line();
        }
    }
}

/// The board's view of the platform: interrupt lines go to the guest VM's I/O APIC
/// with `GUEST_IRQ_LINE` (only on a level change), power requests are kept until the
/// access is over.
struct Wire<'a> {
    id: VmId,
    lines: &'a mut u32,
    power: Option<PlatformRequest>,
}

impl Platform for Wire<'_> {
    fn set_irq(&mut self, gsi: u8, high: bool) {
        if u32::from(gsi) >= IOAPIC_PINS {
            return;
        }
        let bit = 1u32 << gsi;
        if (*self.lines & bit != 0) == high {
            return;
        }
        *self.lines ^= bit;
        raw_hypercall(hc::GUEST_IRQ_LINE, u64::from(self.id.0), u64::from(gsi), u64::from(high), 0);
    }

    fn request(&mut self, request: PlatformRequest) {
        // The first one counts: it ends the guest.
        self.power.get_or_insert(request);
    }
}

/// Performs a power-off request for guest VM `id` (a reset is a reboot: see
/// [`settle`]).
fn power_off(id: VmId, code: u64) {
    raw_hypercall(hc::GUEST_POWER, u64::from(id.0), power::OFF, code, 0);
}

/// A reset that [`settle`] left for the caller: performed with
/// `crate::builder::reboot` once the VM's lock is released.
#[must_use]
struct PendingReset(Option<VmId>);

impl PendingReset {
    /// Reboots the guest, if it asked for a reset. Call without holding any VM's lock.
    fn perform(self) {
        if let Some(id) = self.0 {
            crate::builder::reboot(id);
        }
    }
}

/// One table entry: a spin lock and the VM it guards.
struct Entry {
    locked: AtomicBool,
    vm: UnsafeCell<Option<Vm>>,
}

// SAFETY: `vm` is only reached through `Entry::lock`, which gives one holder at a time
// (the flag is taken with Acquire and released with Release ordering).
unsafe impl Sync for Entry {}

impl Entry {
    const fn new() -> Self {
        Self { locked: AtomicBool::new(false), vm: UnsafeCell::new(None) }
    }

    fn lock(&self) -> Guard<'_> {
        while self.locked.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            core::hint::spin_loop();
        }
        Guard { entry: self }
    }
}

/// Holds an entry's lock while alive.
struct Guard<'a> {
    entry: &'a Entry,
}

impl Guard<'_> {
    fn vm(&mut self) -> &mut Option<Vm> {
        // SAFETY: this guard holds the entry's lock, so no other reference to the
        // entry's `vm` exists while the returned one (tied to `&mut self`) lives.
        unsafe { &mut *self.entry.vm.get() }
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.entry.locked.store(false, Ordering::Release);
    }
}

static TABLE: [Entry; MAX_VMS as usize] = [const { Entry::new() }; MAX_VMS as usize];

/// Runs `f` on the board of guest VM `id` as one access (see the module documentation
/// for the locking): under the VM's lock, the board is looked up (created on the VM's
/// first request, replaced when the id's generation changed), brought to now with
/// `tick`, and handed to `f` with the time and the wiring; then the console output is
/// drained, a power-off request is performed and [`next_wake`] is updated
/// ([`settle`], skipped when the board says nothing it looks at changed); a reset
/// request reboots the guest after the lock is released. `None` when the table does
/// not cover the VM.
// Inlined into the request loop: every forwarded access runs it.
#[inline(always)]
fn access<R>(id: VmId, f: impl FnOnce(&mut PcBoard, Nanos, &mut Wire<'_>) -> R) -> Option<R> {
    let (result, reset) = with_vm(id, |vm| {
        let now = crate::clock::now().max(vm.last_now);
        vm.last_now = now;
        let mut wire = Wire { id, lines: &mut vm.lines, power: None };
        vm.board.tick(now, &mut wire);
        let result = f(&mut vm.board, now, &mut wire);
        // The access may have emptied the receiver (a read of RBR): refill it, and drive
        // the interrupt line the new bytes raise.
        if !vm.input.is_empty() && Vm::feed_input(&mut vm.board, &mut vm.input) {
            vm.board.tick(now, &mut wire);
        }
        let request = wire.power;
        // Most accesses (a status-register poll) change nothing that `settle` looks at:
        // `take_changed` is exact when it says so, and a partial console line waits on
        // time, not on the board.
        let reset = if vm.board.take_changed() || request.is_some() || vm.line_len > 0 {
            settle(vm, request)
        } else {
            PendingReset(None)
        };
        (result, reset)
    })?;
    reset.perform();
    Some(result)
}

/// Runs `f` on the table entry of guest VM `id` under its lock: the entry is created on
/// the VM's first request (or console input), or replaced when the id's generation
/// changed (the old VM was destroyed). `None` when the table does not cover the VM.
// Inlined into the request loop: every forwarded access runs it (`opt-level = "s"`
// would call it, which costs the round trip dozens of instructions).
#[inline(always)]
fn with_vm<R>(id: VmId, f: impl FnOnce(&mut Vm) -> R) -> Option<R> {
    let entry = TABLE.get(usize::from(id.index()))?;
    let mut guard = entry.lock();
    let slot = guard.vm();
    if slot.as_ref().is_none_or(|vm| vm.id != id) {
        new_unbuilt_board(slot, id);
    }
    slot.as_mut().map(f)
}

/// A board for a VM this partition did not build (its board would have been created
/// then), in `slot`: with what the protocol says of every VM. Out of line: it is rare,
/// and the request path keeps its registers.
#[cold]
#[inline(never)]
fn new_unbuilt_board(slot: &mut Option<Vm>, id: VmId) {
    *slot = Some(Vm::new(id, crate::clock::now(), 1, 0));
}

/// Creates guest VM `id`'s board (replacing any board of a destroyed VM in its place)
/// for a VM of `vcpus` vCPUs and `ram_bytes` of RAM, what its fw_cfg reports. Called by
/// the guest builder before the VM's vCPUs start, so the first request finds it.
pub fn create_board(id: VmId, vcpus: u32, ram_bytes: u64) {
    let Some(entry) = TABLE.get(usize::from(id.index())) else { return };
    let mut guard = entry.lock();
    *guard.vm() = Some(Vm::new(id, crate::clock::now(), vcpus, ram_bytes));
}

/// The machine's wall-clock time in Unix seconds, from the hypervisor
/// (`SYSTEM_INFO(WALL_CLOCK_SECONDS)`), or [`EPOCH_SECONDS`] when it has none (said
/// once).
fn wall_clock_seconds() -> u64 {
    static REPORTED: AtomicBool = AtomicBool::new(false);
    let r = raw_hypercall(hc::SYSTEM_INFO, hv_abi::service::control::info::WALL_CLOCK_SECONDS, 0, 0, 0);
    if hv_abi::Error::from_rax(r).is_none() {
        return r;
    }
    if !REPORTED.swap(true, Ordering::Relaxed) {
        guest_rt::println!(
            "service: the hypervisor knows no wall-clock time; guest RTCs start at 2026-01-01 00:00:00 UTC"
        );
    }
    EPOCH_SECONDS
}

/// Room in guest VM `id`'s console input queue (0 when the table does not cover it).
pub fn input_room(id: VmId) -> usize {
    with_vm(id, |vm| vm.input.free()).unwrap_or(0)
}

/// Queues console input for guest VM `id` and feeds its UART's receiver as far as it
/// has room, raising the receive interrupt as the UART model dictates. Bytes beyond the
/// queue's room are dropped (the caller asks for no more than [`input_room`], except
/// when the queue is full: see `crate::console`). Returns how many were queued.
pub fn queue_input(id: VmId, bytes: &[u8]) -> usize {
    let Some((queued, reset)) = with_vm(id, |vm| {
        let queued = vm.input.extend(bytes);
        let mut reset = PendingReset(None);
        if Vm::feed_input(&mut vm.board, &mut vm.input) {
            let now = crate::clock::now().max(vm.last_now);
            vm.last_now = now;
            let mut wire = Wire { id: vm.id, lines: &mut vm.lines, power: None };
            vm.board.tick(now, &mut wire);
            let request = wire.power;
            reset = settle(vm, request);
        }
        (queued, reset)
    }) else {
        return 0;
    };
    reset.perform();
    queued
}

/// After `VM_RESET` held guest VM `id`'s vCPUs: its board goes through a system reset
/// (`PcBoard::reset`: every device back to power-on, the RTC/CMOS clock and NVRAM
/// kept), after its console output is sent; every interrupt line still high is
/// lowered, so the levels the hypervisor's I/O APIC holds and [`Vm::lines`] agree
/// (the I/O APIC itself was reset by `VM_RESET`; lowering a low pin changes nothing).
/// Console input waiting for the UART stays queued: it was typed for the guest. The
/// `delay-test` device is reset too (its read in progress, if any, is forgotten).
pub fn reset_board(id: VmId) {
    with_vm(id, |vm| {
        let now = crate::clock::now().max(vm.last_now);
        vm.last_now = now;
        vm.drain_console(true);
        let mut wire = Wire { id, lines: &mut vm.lines, power: None };
        vm.board.reset(now, &mut wire);
        for gsi in 0..IOAPIC_PINS {
            if *wire.lines & (1 << gsi) != 0 {
                wire.set_irq(gsi as u8, false);
            }
        }
        // The reset 8259 pair's INTR is low; the hypervisor's VM_RESET lowered its copy.
        vm.pic_intr = false;
        // A delay-test read in progress was dropped by the hypervisor with the reset.
        vm.delay = DelayTest::new();
    });
}

/// What follows every access (that `PcBoard::take_changed` says may have changed
/// something, or that made a power request or left a partial line), interrupt
/// acknowledge and timer tick of a VM: the 8259
/// pair's INTR level goes to the hypervisor if it changed ([`sync_pic_intr`]), its
/// console output is drained (all of it when a power request ends or resets the
/// guest), a power-off request is performed, and the board's next event lowers
/// [`next_wake`]. A reset request is returned: the caller reboots the guest once it has
/// released the VM's lock ([`PendingReset::perform`]).
fn settle(vm: &mut Vm, request: Option<PlatformRequest>) -> PendingReset {
    sync_pic_intr(vm);
    // Most accesses write nothing to the console: no output, no partial line waiting.
    if vm.board.console_output_len() > 0 || request.is_some() {
        vm.drain_console(request.is_some());
    }
    if vm.line_len > 0 {
        // A partial line (a shell prompt) goes out once the guest stopped writing.
        let due = vm.line_last.saturating_add(PARTIAL_LINE_IDLE);
        if vm.last_now >= due {
            vm.send_line();
        } else {
            lower_next_wake(due);
        }
    }
    if let Some(next) = vm.board.next_event() {
        lower_next_wake(next);
    }
    match request {
        Some(PlatformRequest::PowerOff) => power_off(vm.id, 0),
        Some(PlatformRequest::Exit(code)) => power_off(vm.id, u64::from(code)),
        Some(PlatformRequest::Reset) => return PendingReset(Some(vm.id)),
        None => {}
    }
    PendingReset(None)
}

/// Sends the 8259 pair's INTR output level with `GUEST_PIC_INTR` when it differs from
/// the level last sent. Any port write to the PIC (masks, EOIs, initialization), any
/// IRQ line a device moved (an access, a timer tick, console input) and an interrupt
/// acknowledge can change it, and every one of them ends in [`settle`].
fn sync_pic_intr(vm: &mut Vm) {
    let high = vm.board.pic().output();
    if high != vm.pic_intr {
        vm.pic_intr = high;
        // A refusal (the VM is gone) only loses the level.
        raw_hypercall(hc::GUEST_PIC_INTR, u64::from(vm.id.0), u64::from(high), 0, 0);
    }
}

/// An interrupt-acknowledge cycle of guest VM `id`'s 8259 pair
/// (`hv_abi::io_request::kind::INTERRUPT_ACK`): the board is brought to now (a request
/// that came due takes part), then `PicPair::acknowledge` gives the vector (IRR to ISR,
/// the cascade, the spurious IR7 vector when nothing requests any more). `None` when
/// the table does not cover the VM or the PIC has no vector (uninitialized, MCS-80
/// mode). The new INTR level goes out before the reply ([`settle`]).
pub fn interrupt_acknowledge(id: VmId) -> Option<u8> {
    access(id, |board, _now, _wire| board.pic_mut().acknowledge()).flatten()
}

/// Lowers [`next_wake`] to `t` (a read, and an atomic update only when it is lower).
#[inline]
fn lower_next_wake(t: Nanos) {
    if t < NEXT_WAKE.load(Ordering::Acquire) {
        NEXT_WAKE.fetch_min(t, Ordering::AcqRel);
        crate::wake::changed();
    }
}

/// Performs a port access of guest VM `id`: a read (`write` = `None`) returns the value
/// (fitting `size`), a write returns 0. Undecoded ports are an open bus (the board reads
/// all-ones). `None` when the table does not cover the VM.
// Inlined into the request loop: every forwarded access runs it (`opt-level = "s"`
// would call it, which costs the round trip dozens of instructions).
#[inline(always)]
pub fn port_access(id: VmId, port: u16, size: u8, write: Option<u32>) -> Option<u32> {
    access(id, |board, now, wire| match write {
        None => board.read(port, size, now, wire),
        Some(value) => {
            board.write(port, size, value, now, wire);
            0
        }
    })
}

/// Performs an MMIO access of guest VM `id` at guest-physical address `gpa`: a read
/// (`write` = `None`) returns the value (fitting `size`), a write returns 0. `None` when
/// the table does not cover the VM, or when no device of the board decodes `gpa` or
/// `size` is not 1, 2, 4 or 8 (the board's `mmio_read` / `mmio_write`); the board is
/// still brought to now in that case.
// Inlined into the request loop: every forwarded access runs it (`opt-level = "s"`
// would call it, which costs the round trip dozens of instructions).
#[inline(always)]
pub fn mmio_access(id: VmId, gpa: u64, size: u8, write: Option<u64>) -> Option<u64> {
    access(id, |board, now, wire| match write {
        None => board.mmio_read(gpa, size, now, wire),
        Some(value) => board.mmio_write(gpa, size, value, now, wire).then_some(0),
    })
    .flatten()
}

/// Performs a PCI configuration-space access of guest VM `id` at `address` (bus << 16 |
/// device << 11 | function << 8 | register, as `kind::PCI_CONFIG` gives it) of `size`
/// bytes: a read (`write` = `None`) returns the value, a write returns 0. Functions
/// that do not exist read all-ones. `None` when the table does not cover the VM.
pub fn pci_config_access(id: VmId, address: u64, size: u8, write: Option<u32>) -> Option<u32> {
    access(id, |board, _now, _wire| {
        let host = board.pci_host_mut();
        match write {
            None => host.config_space_read(address, size),
            Some(value) => {
                host.config_space_write(address, size, value);
                0
            }
        }
    })
}

/// A `delay-test` access of guest VM `id` (`tag` names the request): a write sets the
/// delay, a read starts (to be answered `DEFERRED`; it completes once confirmed and
/// due, from [`tick_all`]). `None` when the table does not cover the VM.
#[inline(never)]
pub fn delay_test_access(id: VmId, tag: DeferTag, size: u8, write: Option<u32>) -> Option<DelayAccess> {
    with_vm(id, |vm| {
        let now = crate::clock::now().max(vm.last_now);
        vm.last_now = now;
        match write {
            Some(value) => {
                vm.delay.write(size, value);
                DelayAccess::Written
            }
            None => match vm.delay.start_read(tag, size, now) {
                Ok(()) => DelayAccess::Deferred,
                Err(_) => DelayAccess::Busy,
            },
        }
    })
}

/// The hypervisor took the `DEFERRED` answer to request `tag` of guest VM `id`: its
/// `delay-test` read may complete from now on ([`next_wake`] is lowered to its due time).
#[cold]
#[inline(never)]
pub fn confirm_deferred(id: VmId, tag: DeferTag) {
    with_vm(id, |vm| {
        if vm.delay.confirm(tag) {
            if let Some(due) = vm.delay.next_event() {
                lower_next_wake(due);
            }
        }
    });
}

/// The earliest time any board asked to be ticked at (a lower bound: a board whose
/// timer moved later only causes an early wake-up, after which [`tick_all`] recomputes
/// it). `u64::MAX`: none.
static NEXT_WAKE: AtomicU64 = AtomicU64::new(u64::MAX);

/// When the service partition must next run its device timers, if ever.
pub fn next_wake() -> Option<Nanos> {
    Some(NEXT_WAKE.load(Ordering::Acquire)).filter(|&t| t != u64::MAX)
}

/// Brings every board to now: timers expire and raise their interrupts, console output
/// and power requests are handled as after an access. Recomputes [`next_wake`].
pub fn tick_all() {
    NEXT_WAKE.store(u64::MAX, Ordering::Release);
    crate::wake::changed();
    for entry in &TABLE {
        let reset = {
            let mut guard = entry.lock();
            let Some(vm) = guard.vm().as_mut() else { continue };
            let now = crate::clock::now().max(vm.last_now);
            vm.last_now = now;
            Vm::feed_input(&mut vm.board, &mut vm.input);
            let mut wire = Wire { id: vm.id, lines: &mut vm.lines, power: None };
            vm.board.tick(now, &mut wire);
            let request = wire.power;
            let reset = settle(vm, request);
            vm.complete_delayed_read();
            reset
        };
        reset.perform();
    }
}
