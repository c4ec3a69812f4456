//! `guest-apicv`: the local APIC in x2APIC mode on 2 vCPUs, repeating the key register,
//! priority, timer and IPI checks of the other interrupt guests. The hypervisor turns on
//! APIC virtualization (virtual-interrupt delivery, x2APIC virtualization,
//! APIC-register virtualization) exactly when a vCPU enters x2APIC mode, so this guest
//! sees the CPU's virtual APIC where the CPU has it (and the software model elsewhere,
//! or with `apicv = false`); both must behave the same.
//!
//! Both vCPUs switch to x2APIC mode through IA32_APIC_BASE (EXTD | EN): the BSP first
//! thing, the AP right after INIT, SIPI, SIPI. Then, on the BSP:
//! 1. Registers served from the virtual-APIC page: ID, version, LDR, SVR, LVT timer,
//!    initial count, divide configuration, ICR, ESR read right; the current count
//!    counts down.
//! 2. Priorities: TPR write/read-back; with TPR 0x50 a SELF IPI of 0x45 waits in the
//!    IRR while 0x65 is delivered, lowering the TPR delivers 0x45; a handler that skips
//!    its EOI keeps its vector in service (ISR, PPR) and holds back a lower class until
//!    the EOI (MSR 0x80B); nested interrupts are retired by EOI highest first, with the
//!    ISR bits and PPR read inside the handlers.
//! 3. Timer: a one-shot fires once after its time, periodic ticks span N periods within
//!    1%, TSC-deadline fires at or after the deadline (`bench timer.latency`).
//! 4. `STI; HLT` is woken by the vCPU's own timer.
//! 5. A level-triggered I/O APIC pin: remote IRR until the EOI, the EOI with the line
//!    still high delivers again, the EOI after the line went low ends it (with APIC
//!    virtualization this needs the vector in the EOI-exit bitmap).
//! 6. IPIs through the 64-bit ICR (destination in bits 63:32): ping-pong with the AP
//!    (`bench ipi.roundtrip`), logical (cluster) destinations, all-excluding-self, an
//!    NMI to the AP; and `STI; HLT` on the BSP woken by an IPI from the AP.
//!
//! Every wait for something that must arrive is a generous hang guard (≥ 200 ms of
//! guest TSC); every window for something that must not arrive is short. Nothing is
//! printed between arming a timer and checking when it fired (a console line costs
//! milliseconds of guest time under emulation).
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use guest_rt::interrupts::{
    bus_to_tsc, cli, count, count_on, delay_us, last_tsc, last_tsc_on, set_hook, sti, sti_hlt, total, tsc, tsc_to_us,
    us_to_tsc, wait_for, SPURIOUS_VECTOR,
};
use guest_rt::ioapic::{self, entry, irq_line};
use guest_rt::lapic::{self, base, divide, icr, lvt, msrs, SVR_ENABLE};
use guest_rt::{check, check_fmt, exceptions, msr, println, smp, stop, vcpu_id};

const NAME: &str = "guest-apicv";

/// Vectors (distinct, so that each count means one thing).
const TIMER: u8 = 0x40;
const LEVEL: u8 = 0x41;
const LOW: u8 = 0x45;
const BACKSTOP: u8 = 0x4f;
const PING: u8 = 0x50;
const PONG: u8 = 0x51;
const SELF_ICR: u8 = 0x52;
const BROADCAST: u8 = 0x53;
const LOGICAL: u8 = 0x54;
const WAITING: u8 = 0x55;
const KICK: u8 = 0x5a;
const WAKE: u8 = 0x5b;
const HELD: u8 = 0x60;
const HIGH: u8 = 0x65;
const LOWER_CLASS: u8 = 0x70;
const OUTER: u8 = 0x80;
const SAME_CLASS: u8 = 0x85;
const NESTED: u8 = 0x90;
const NMI: u8 = 2;

/// The x2APIC MSRs (SDM table 11-6).
mod x2 {
    pub const ID: u32 = 0x802;
    pub const VERSION: u32 = 0x803;
    pub const TPR: u32 = 0x808;
    pub const PPR: u32 = 0x80a;
    pub const EOI: u32 = 0x80b;
    pub const LDR: u32 = 0x80d;
    pub const SVR: u32 = 0x80f;
    pub const ISR0: u32 = 0x810;
    pub const TMR0: u32 = 0x818;
    pub const IRR0: u32 = 0x820;
    pub const ESR: u32 = 0x828;
    pub const ICR: u32 = 0x830;
    pub const LVT_TIMER: u32 = 0x832;
    pub const TMICT: u32 = 0x838;
    pub const TMCCT: u32 = 0x839;
    pub const TDCR: u32 = 0x83e;
    pub const SELF_IPI: u32 = 0x83f;
}

/// The version register of the virtual LAPIC (as guest-x2apic checks it).
const APIC_VERSION: u64 = 0x0005_0014;
/// How long to wait for something that must arrive: a bound against hanging, not a
/// timing check.
const ARRIVE_US: u64 = 250_000;
/// How long to watch for something that must not arrive.
const QUIET_US: u64 = 400;
/// One-shot length in bus clocks at divide 1 (500 µs at 100 MHz).
const ONE_SHOT_BUS: u32 = 50_000;
/// Periodic test: period in bus clocks (divide 1) and number of periods measured.
const PERIOD_BUS: u32 = 25_000;
const PERIODS: usize = 40;
/// TSC-deadline latency samples.
const DEADLINE_RUNS: usize = 8;
/// Ping-pong round trips.
const ROUNDS: usize = 16;
/// The I/O APIC pin of the level test.
const LEVEL_PIN: u32 = 9;
/// The backstop one-shot of the IPI-wake HLT test: 250 ms at divide 1.
const BACKSTOP_BUS: u32 = 25_000_000;

// Periodic ticks.
static TICKS: [AtomicU64; PERIODS + 1] = [const { AtomicU64::new(0) }; PERIODS + 1];
static TICK_N: AtomicUsize = AtomicUsize::new(0);

// Nesting test: delivery order and what each handler saw.
static ORDER: [AtomicU8; 8] = [const { AtomicU8::new(0) }; 8];
static ORDER_N: AtomicU32 = AtomicU32::new(0);
static OUTER_PPR: AtomicU64 = AtomicU64::new(0);
static OUTER_IN_SERVICE: AtomicBool = AtomicBool::new(false);
static NESTED_AT_ONCE: AtomicBool = AtomicBool::new(false);
static NESTED_PPR: AtomicU64 = AtomicU64::new(0);
static NESTED_ISR_BOTH: AtomicBool = AtomicBool::new(false);
static NESTED_RETIRED_FIRST: AtomicBool = AtomicBool::new(false);
static HELD_BACK: AtomicBool = AtomicBool::new(false);
static PENDING_IN_IRR: AtomicBool = AtomicBool::new(false);
static SAME_ISR_ONLY: AtomicBool = AtomicBool::new(false);
static LOWER_ISR_ONLY: AtomicBool = AtomicBool::new(false);

// The AP.
static AP_READY: AtomicBool = AtomicBool::new(false);
static AP_X2APIC: AtomicBool = AtomicBool::new(false);
static AP_ID: AtomicU64 = AtomicU64::new(u64::MAX);
static AP_VCPU: AtomicU64 = AtomicU64::new(u64::MAX);
static AP_LDR: AtomicU64 = AtomicU64::new(u64::MAX);
/// Set by the BSP before it kicks the AP: wait a little, then send WAKE to the BSP.
static WAKE_REQUEST: AtomicBool = AtomicBool::new(false);
/// TSC on the AP just before it sent WAKE.
static WAKE_SENT_AT: AtomicU64 = AtomicU64::new(0);

/// Logical x2APIC ID derived from the x2APIC ID (SDM 11.12.10.2).
fn x2apic_ldr(id: u64) -> u64 {
    ((id >> 4) << 16) | (1 << (id & 0xf))
}

/// Whether `vector` is set in the 256-bit register whose first MSR is `first`.
fn bit(first: u32, vector: u8) -> bool {
    msr::read(first + u32::from(vector) / 32) & (1 << (vector % 32)) != 0
}

fn isr(vector: u8) -> bool {
    bit(x2::ISR0, vector)
}

fn irr(vector: u8) -> bool {
    bit(x2::IRR0, vector)
}

fn tmr(vector: u8) -> bool {
    bit(x2::TMR0, vector)
}

fn ppr() -> u64 {
    msr::read(x2::PPR)
}

fn self_ipi(vector: u8) {
    msr::write(x2::SELF_IPI, u64::from(vector));
}

/// Nothing in service on this vCPU.
fn isr_clear() -> bool {
    (0..8).all(|i| msr::read(x2::ISR0 + i) == 0)
}

/// A hook that leaves the EOI to the test.
fn no_eoi(_vector: u8) -> bool {
    false
}

/// Waits until `vector` was taken `n` times on this vCPU, then watches a little longer;
/// true if the count is exactly `n`.
fn exactly(vector: u8, n: u64) -> bool {
    wait_for(|| count(vector) >= n, us_to_tsc(ARRIVE_US));
    delay_us(QUIET_US);
    let got = count(vector);
    if got != n {
        println!("{NAME}: vector {vector:#x} taken {got} times, expected {n}");
    }
    got == n
}

/// Entry point (see `hv_abi::start`): the BSP.
#[no_mangle]
#[link_section = ".text._start"]
pub extern "C" fn _start(_vcpu: u64, _ram: u64) -> ! {
    exceptions::install();
    lapic::sync_mode();
    lapic::enable();
    let mut ok = true;
    ok &= check(NAME, "CPUID.1:EBX[23:16] reports 2 vCPUs", smp::vcpu_count() == 2);
    ok &= check(NAME, "CPUID.1:ECX shows x2APIC (bit 21)", core::arch::x86_64::__cpuid(1).ecx & (1 << 21) != 0);
    lapic::enter_x2apic();
    lapic::enable();
    ok &= check(NAME, "IA32_APIC_BASE EXTD | EN switches the BSP to x2APIC mode", {
        let b = lapic::apic_base();
        lapic::is_x2apic() && b & (base::EN | base::EXTD | base::BSP) == base::EN | base::EXTD | base::BSP
    });
    sti();

    ok &= register_checks();
    ok &= tpr_checks();
    ok &= deferred_eoi_checks();
    ok &= nesting_checks();
    ok &= one_shot_checks();
    ok &= periodic_checks();
    ok &= deadline_checks();
    ok &= hlt_timer_checks();
    ok &= level_checks();
    ok &= smp_checks();

    msr::write(x2::LVT_TIMER, u64::from(lvt::MASKED | u32::from(TIMER)));
    msr::write(x2::TMICT, 0);
    println!("{} {NAME}", if ok { "PASS" } else { "FAIL" });
    stop(if ok { 0 } else { 1 })
}

/// 1. Register reads (served from the virtual-APIC page under APIC-register
///    virtualization).
fn register_checks() -> bool {
    let mut ok = true;
    let me = vcpu_id();
    let id = msr::read(x2::ID);
    ok &= check_fmt(NAME, format_args!("x2APIC ID (0x802) reads the vCPU id {me}"), id == me);
    ok &= check(NAME, "version (0x803) reads 0x00050014", msr::read(x2::VERSION) == APIC_VERSION);
    ok &= check(NAME, "LDR (0x80d) holds the logical ID derived from the x2APIC ID", {
        msr::read(x2::LDR) == x2apic_ldr(id)
    });

    msr::write(x2::SVR, u64::from(SVR_ENABLE | 0xf0));
    let svr_a = msr::read(x2::SVR);
    msr::write(x2::SVR, u64::from(SVR_ENABLE | u32::from(SPURIOUS_VECTOR)));
    let svr_b = msr::read(x2::SVR);
    ok &= check(NAME, "SVR (0x80f) reads back what was written (0x1f0, then 0x1ff)", svr_a == 0x1f0 && svr_b == 0x1ff);
    if svr_a != 0x1f0 || svr_b != 0x1ff {
        println!("{NAME}: SVR read {svr_a:#x}, then {svr_b:#x}");
    }

    let entries = [
        u32::from(TIMER) | lvt::PERIODIC | lvt::MASKED,
        u32::from(TIMER) | lvt::TSC_DEADLINE | lvt::MASKED,
        u32::from(TIMER) | lvt::ONE_SHOT | lvt::MASKED,
    ];
    let mut lvt_ok = true;
    for e in entries {
        msr::write(x2::LVT_TIMER, u64::from(e));
        let got = msr::read(x2::LVT_TIMER) & !(1 << 12);
        if got != u64::from(e) {
            println!("{NAME}: LVT timer wrote {e:#x}, read {got:#x}");
            lvt_ok = false;
        }
    }
    ok &= check(NAME, "LVT timer (0x832) reads back each mode written (periodic, TSC-deadline, one-shot)", lvt_ok);

    let mut dcr_ok = true;
    for dcr in [divide::BY_2, divide::BY_16, divide::BY_128, divide::BY_1] {
        msr::write(x2::TDCR, u64::from(dcr));
        dcr_ok &= msr::read(x2::TDCR) & 0xb == u64::from(dcr);
    }
    ok &= check(NAME, "divide configuration (0x83e) reads back 2, 16, 128, 1", dcr_ok);

    // Masked one-shot (LVT from above), 500 ms at divide 1: the count runs, no interrupt.
    let initial = 50_000_000u32;
    msr::write(x2::TMICT, u64::from(initial));
    let back = msr::read(x2::TMICT);
    let c1 = msr::read(x2::TMCCT);
    delay_us(200);
    let c2 = msr::read(x2::TMCCT);
    msr::write(x2::TMICT, 0);
    let stopped = msr::read(x2::TMCCT);
    ok &= check(NAME, "initial count (0x838) reads back what was written", back == u64::from(initial));
    ok &= check(NAME, "current count (0x839) counts down from the initial count", {
        c1 <= u64::from(initial) && c2 < c1 && c2 > 0
    });
    ok &= check(NAME, "initial count 0 stops the timer (current count 0)", stopped == 0 && msr::read(x2::TMICT) == 0);
    if !(c1 <= u64::from(initial) && c2 < c1 && c2 > 0) {
        println!("{NAME}: current count {c1}, then {c2}");
    }

    msr::write(x2::ESR, 0);
    ok &= check(NAME, "ESR (0x828) reads 0 after writing 0 (no errors)", msr::read(x2::ESR) == 0);

    let low = u64::from(icr::FIXED | icr::ASSERT | u32::from(SELF_ICR));
    let before = count(SELF_ICR);
    msr::write(x2::ICR, (me << 32) | low);
    let arrived = wait_for(|| count(SELF_ICR) > before, us_to_tsc(ARRIVE_US));
    let icr_self = msr::read(x2::ICR) & !(1 << 12);
    ok &= check(NAME, "a fixed IPI through the ICR (0x830) to its own x2APIC ID arrives", arrived);
    ok &= check(NAME, "the ICR reads back the IPI just sent", icr_self == (me << 32) | low);
    let nowhere = 0x1234_5678u64 << 32;
    let before = count(SELF_ICR);
    msr::write(x2::ICR, nowhere | low);
    delay_us(QUIET_US);
    let icr_nowhere = msr::read(x2::ICR) & !(1 << 12);
    ok &= check(NAME, "an IPI to a non-existent x2APIC ID arrives nowhere", count(SELF_ICR) == before);
    ok &= check(NAME, "the ICR reads back all 64 bits (destination 0x12345678)", icr_nowhere == nowhere | low);
    if icr_self != (me << 32) | low || icr_nowhere != nowhere | low {
        println!("{NAME}: ICR read {icr_self:#x}, then {icr_nowhere:#x}");
    }

    msr::write(x2::TPR, 0x30);
    let tpr = msr::read(x2::TPR);
    let p = ppr();
    msr::write(x2::TPR, 0);
    ok &= check(NAME, "TPR (0x808) reads back 0x30 and PPR (0x80a) follows it", tpr == 0x30 && p == 0x30);
    ok &= check(NAME, "TPR back to 0: PPR 0", msr::read(x2::TPR) == 0 && ppr() == 0);
    ok
}

/// 2a. TPR masking with SELF IPIs.
fn tpr_checks() -> bool {
    let mut ok = true;
    let (low, high) = (count(LOW), count(HIGH));
    msr::write(x2::TPR, 0x50);
    ok &= check(NAME, "TPR 0x50 reads back and PPR is 0x50", msr::read(x2::TPR) == 0x50 && ppr() == 0x50);
    self_ipi(LOW);
    delay_us(QUIET_US);
    ok &= check(NAME, "TPR 0x50 holds SELF IPI 0x45 back: pending in the IRR, not in service", {
        count(LOW) == low && irr(LOW) && !isr(LOW)
    });
    self_ipi(HIGH);
    ok &= check(NAME, "SELF IPI 0x65 (class 6 > 5) is delivered meanwhile, 0x45 still pending", {
        wait_for(|| count(HIGH) == high + 1, us_to_tsc(ARRIVE_US)) && !isr(HIGH) && count(LOW) == low && irr(LOW)
    });
    msr::write(x2::TPR, 0);
    ok &= check(NAME, "lowering TPR to 0 delivers 0x45", wait_for(|| count(LOW) == low + 1, us_to_tsc(ARRIVE_US)));
    ok &= check(NAME, "IRR and ISR are clear again and PPR is 0", !irr(LOW) && !isr(LOW) && ppr() == 0);
    ok
}

/// 2b. A handler that does not send its EOI: its vector stays in service and blocks its
/// class and below until the test's EOI.
fn deferred_eoi_checks() -> bool {
    let mut ok = true;
    set_hook(HELD, Some(no_eoi));
    let (held, waiting) = (count(HELD), count(WAITING));
    self_ipi(HELD);
    let arrived = wait_for(|| count(HELD) > held, us_to_tsc(ARRIVE_US));
    let (in_service, p) = (isr(HELD), ppr());
    ok &= check(NAME, "after a handler without EOI, 0x60 is still in service (ISR) and PPR is 0x60", {
        arrived && in_service && p == 0x60
    });
    self_ipi(WAITING);
    delay_us(QUIET_US);
    ok &= check(NAME, "a lower class (0x55) waits in the IRR while 0x60 is in service", {
        count(WAITING) == waiting && irr(WAITING)
    });
    msr::write(x2::EOI, 0);
    ok &= check(NAME, "the EOI (0x80b) retires 0x60 and delivers 0x55", {
        wait_for(|| count(WAITING) == waiting + 1, us_to_tsc(ARRIVE_US))
    });
    ok &= check(NAME, "then nothing is in service or pending and PPR is 0", {
        isr_clear() && !irr(WAITING) && ppr() == 0 && count(HELD) == held + 1
    });
    set_hook(HELD, None);
    ok
}

fn record(vector: u8) {
    let i = ORDER_N.fetch_add(1, Ordering::SeqCst) as usize;
    if i < ORDER.len() {
        ORDER[i].store(vector, Ordering::SeqCst);
    }
}

/// The OUTER (0x80) handler: with 0x80 in service it enables interrupts and sends
/// itself a higher (0x90), a same-class (0x85) and a lower (0x70) vector.
fn outer_hook(vector: u8) -> bool {
    record(vector);
    OUTER_PPR.store(ppr(), Ordering::SeqCst);
    OUTER_IN_SERVICE.store(isr(OUTER), Ordering::SeqCst);
    sti();
    self_ipi(NESTED);
    NESTED_AT_ONCE.store(wait_for(|| count(NESTED) == 1, us_to_tsc(ARRIVE_US)), Ordering::SeqCst);
    // The nested handler's EOI retired 0x90, the highest in service, not 0x80.
    NESTED_RETIRED_FIRST.store(isr(OUTER) && !isr(NESTED) && ppr() == 0x80, Ordering::SeqCst);
    self_ipi(SAME_CLASS);
    self_ipi(LOWER_CLASS);
    delay_us(QUIET_US);
    HELD_BACK.store(count(SAME_CLASS) == 0 && count(LOWER_CLASS) == 0, Ordering::SeqCst);
    PENDING_IN_IRR.store(irr(SAME_CLASS) && irr(LOWER_CLASS), Ordering::SeqCst);
    cli();
    true
}

fn nested_hook(vector: u8) -> bool {
    record(vector);
    NESTED_PPR.store(ppr(), Ordering::SeqCst);
    NESTED_ISR_BOTH.store(isr(OUTER) && isr(NESTED), Ordering::SeqCst);
    true
}

fn same_class_hook(vector: u8) -> bool {
    record(vector);
    SAME_ISR_ONLY.store(isr(SAME_CLASS) && !isr(OUTER) && !isr(NESTED) && ppr() == 0x80, Ordering::SeqCst);
    true
}

fn lower_class_hook(vector: u8) -> bool {
    record(vector);
    LOWER_ISR_ONLY.store(isr(LOWER_CLASS) && !isr(SAME_CLASS) && ppr() == 0x70, Ordering::SeqCst);
    true
}

/// 2c. Nesting by priority class; EOIs retire the highest in-service vector.
fn nesting_checks() -> bool {
    let mut ok = true;
    set_hook(OUTER, Some(outer_hook));
    set_hook(NESTED, Some(nested_hook));
    set_hook(SAME_CLASS, Some(same_class_hook));
    set_hook(LOWER_CLASS, Some(lower_class_hook));
    self_ipi(OUTER);
    let all = wait_for(|| count(OUTER) == 1 && count(SAME_CLASS) == 1 && count(LOWER_CLASS) == 1, us_to_tsc(ARRIVE_US));
    for v in [OUTER, NESTED, SAME_CLASS, LOWER_CLASS] {
        set_hook(v, None);
    }
    ok &= check(NAME, "nesting: all four vectors arrive", all && count(NESTED) == 1);
    ok &= check(NAME, "in the 0x80 handler before its EOI: ISR has 0x80 and PPR is 0x80", {
        OUTER_IN_SERVICE.load(Ordering::SeqCst) && OUTER_PPR.load(Ordering::SeqCst) == 0x80
    });
    ok &= check(NAME, "0x90 nests inside the 0x80 handler at once, with both in the ISR and PPR 0x90", {
        NESTED_AT_ONCE.load(Ordering::SeqCst)
            && NESTED_ISR_BOTH.load(Ordering::SeqCst)
            && NESTED_PPR.load(Ordering::SeqCst) == 0x90
    });
    ok &= check(NAME, "the nested handler's EOI retired 0x90 first (0x80 still in service, PPR 0x80)", {
        NESTED_RETIRED_FIRST.load(Ordering::SeqCst)
    });
    ok &= check(NAME, "the same class (0x85) and a lower one (0x70) wait in the IRR until 0x80's EOI", {
        HELD_BACK.load(Ordering::SeqCst) && PENDING_IN_IRR.load(Ordering::SeqCst)
    });
    ok &= check(NAME, "after 0x80's EOI, 0x85 then 0x70 are each alone in service", {
        SAME_ISR_ONLY.load(Ordering::SeqCst) && LOWER_ISR_ONLY.load(Ordering::SeqCst)
    });
    let order: [u8; 4] = core::array::from_fn(|i| ORDER[i].load(Ordering::SeqCst));
    let expected = [OUTER, NESTED, SAME_CLASS, LOWER_CLASS];
    ok &= check(NAME, "delivery order: 0x80, 0x90, then 0x85 before 0x70", {
        ORDER_N.load(Ordering::SeqCst) == 4 && order == expected
    });
    if order != expected {
        println!("{NAME}: order {order:#04x?}");
    }
    ok &= check(NAME, "afterwards nothing is in service and PPR is 0", isr_clear() && ppr() == 0);
    ok
}

/// 3a. One-shot.
fn one_shot_checks() -> bool {
    let mut ok = true;
    let expected = bus_to_tsc(u64::from(ONE_SHOT_BUS));
    let before = count(TIMER);
    msr::write(x2::TDCR, u64::from(divide::BY_1));
    msr::write(x2::LVT_TIMER, u64::from(u32::from(TIMER) | lvt::ONE_SHOT));
    let t0 = tsc();
    msr::write(x2::TMICT, u64::from(ONE_SHOT_BUS));
    let fired = wait_for(|| count(TIMER) > before, us_to_tsc(ARRIVE_US));
    let took = last_tsc(TIMER).wrapping_sub(t0);
    delay_us(QUIET_US);
    let once = count(TIMER) == before + 1;
    let current = msr::read(x2::TMCCT);
    ok &= check(NAME, "one-shot: the interrupt arrives", fired);
    ok &= check(NAME, "one-shot: not before initial count bus clocks", fired && took >= expected);
    ok &= check(NAME, "one-shot: it fires once and the current count then reads 0", once && current == 0);
    println!("{NAME}: one-shot of {} us fired after {} us", tsc_to_us(expected), tsc_to_us(took));
    ok
}

/// Periodic hook: records each tick's entry TSC and stops the timer after PERIODS + 1.
fn periodic_tick(vector: u8) -> bool {
    let i = TICK_N.fetch_add(1, Ordering::SeqCst);
    if i < TICKS.len() {
        TICKS[i].store(last_tsc(vector), Ordering::SeqCst);
    }
    if i + 1 >= TICKS.len() {
        msr::write(x2::TMICT, 0);
    }
    true
}

/// 3b. Periodic: N interrupts span N periods within 1% (as guest-apic-timer).
fn periodic_checks() -> bool {
    let mut ok = true;
    TICK_N.store(0, Ordering::SeqCst);
    set_hook(TIMER, Some(periodic_tick));
    let period = bus_to_tsc(u64::from(PERIOD_BUS));
    msr::write(x2::TDCR, u64::from(divide::BY_1));
    msr::write(x2::LVT_TIMER, u64::from(u32::from(TIMER) | lvt::PERIODIC));
    msr::write(x2::TMICT, u64::from(PERIOD_BUS));
    let guard = ((PERIODS as u64 + 10) * period * 2).max(us_to_tsc(ARRIVE_US));
    let all = wait_for(|| TICK_N.load(Ordering::SeqCst) >= TICKS.len(), guard);
    let stopped = msr::read(x2::TMCCT);
    delay_us(QUIET_US);
    set_hook(TIMER, None);
    msr::write(x2::LVT_TIMER, u64::from(lvt::MASKED | u32::from(TIMER)));
    msr::write(x2::TMICT, 0);
    let n = TICK_N.load(Ordering::SeqCst);
    ok &= check(NAME, "periodic: the interrupts keep coming", all);
    ok &= check(NAME, "periodic: writing initial count 0 from the handler stops it", n == TICKS.len() && stopped == 0);
    if !all {
        println!("{NAME}: only {n} periodic interrupts");
        return false;
    }
    let t = |i: usize| TICKS[i].load(Ordering::SeqCst);
    let elapsed = t(PERIODS) - t(0);
    let expected = PERIODS as u64 * period;
    let tolerance = expected / 100 + period / 2;
    let max_gap = (1..=PERIODS).map(|i| t(i) - t(i - 1)).max().unwrap_or(0);
    println!(
        "{NAME}: {PERIODS} periods of {period} TSC ticks took {elapsed} (expected {expected}), longest gap {max_gap}"
    );
    ok &= check(NAME, "periodic: N interrupts span N periods within 1%", elapsed.abs_diff(expected) <= tolerance);
    ok &= check(NAME, "periodic: no period is lost (every gap < 1.5 periods)", max_gap < period + period / 2);
    ok
}

/// 3c. TSC-deadline mode.
fn deadline_checks() -> bool {
    let mut ok = true;
    if !check(NAME, "CPUID.1:ECX shows TSC-deadline (bit 24)", core::arch::x86_64::__cpuid(1).ecx & (1 << 24) != 0) {
        return false;
    }
    msr::write(x2::LVT_TIMER, u64::from(u32::from(TIMER) | lvt::TSC_DEADLINE));
    let mut latency = [0u64; DEADLINE_RUNS];
    let mut runs = 0;
    let mut in_time = true;
    let mut cleared = true;
    for slot in latency.iter_mut() {
        let before = count(TIMER);
        let deadline = tsc() + us_to_tsc(200);
        msr::write(msrs::TSC_DEADLINE, deadline);
        if !wait_for(|| count(TIMER) > before, us_to_tsc(ARRIVE_US)) {
            in_time = false;
            break;
        }
        let at = last_tsc(TIMER);
        in_time &= at >= deadline;
        *slot = at.wrapping_sub(deadline);
        runs += 1;
        cleared &= msr::read(msrs::TSC_DEADLINE) == 0;
    }
    let before = count(TIMER);
    delay_us(QUIET_US);
    msr::write(x2::LVT_TIMER, u64::from(lvt::MASKED | u32::from(TIMER)));
    ok &= check(NAME, "TSC-deadline: each interrupt comes, at or after its deadline", in_time && runs == DEADLINE_RUNS);
    ok &= check(NAME, "TSC-deadline: after it fired the MSR reads 0 and nothing more comes", {
        cleared && count(TIMER) == before
    });
    // From the deadline to the handler's first instructions (its TSC read).
    guest_rt::bench::report("timer.latency", &mut latency[..runs]);
    ok
}

/// 4a. `STI; HLT` woken by the vCPU's own one-shot.
fn hlt_timer_checks() -> bool {
    let mut ok = true;
    cli();
    let (before, taken) = (count(TIMER), total());
    let expected = bus_to_tsc(u64::from(ONE_SHOT_BUS));
    msr::write(x2::TDCR, u64::from(divide::BY_1));
    msr::write(x2::LVT_TIMER, u64::from(u32::from(TIMER) | lvt::ONE_SHOT));
    let t0 = tsc();
    msr::write(x2::TMICT, u64::from(ONE_SHOT_BUS));
    sti_hlt();
    let woke = tsc();
    let (got, all) = (count(TIMER) - before, total() - taken);
    msr::write(x2::LVT_TIMER, u64::from(lvt::MASKED | u32::from(TIMER)));
    ok &= check(NAME, "STI; HLT returns after the timer interrupt (its handler ran once, nothing else)", {
        got == 1 && all == 1
    });
    ok &= check(NAME, "HLT: the wake-up came at or after the timer's deadline", {
        last_tsc(TIMER).wrapping_sub(t0) >= expected && woke - t0 >= expected
    });
    println!("{NAME}: HLT with a one-shot of {} us: woke after {} us", tsc_to_us(expected), tsc_to_us(woke - t0));
    ok
}

fn remote_irr(pin: u32) -> bool {
    ioapic::read_entry(pin) & entry::REMOTE_IRR != 0
}

/// Drives `pin` to `level`; the hypercall must succeed.
fn line(pin: u32, level: u32) -> bool {
    let r = irq_line(pin, level);
    if r != 0 {
        println!("{NAME}: IRQ_LINE({pin}, {level}) returned {r:#x}");
    }
    r == 0
}

/// 5. A level-triggered I/O APIC pin; the test sends the EOIs (MSR 0x80b).
fn level_checks() -> bool {
    let mut ok = true;
    set_hook(LEVEL, Some(no_eoi));
    let redirection = entry::FIXED | entry::LEVEL | entry::dest(0) | u64::from(LEVEL);
    ioapic::write_entry(LEVEL_PIN, redirection);
    ok &= check(NAME, "level: pin 9 programmed level -> 0x41, physical destination 0 (remote IRR clear)", {
        ioapic::read_entry(LEVEL_PIN) & !entry::DELIVERY_PENDING == redirection
    });
    ok &= check(NAME, "level: a high line on pin 9 delivers vector 0x41", line(LEVEL_PIN, 1) && exactly(LEVEL, 1));
    ok &= check(NAME, "level: remote IRR is set until the EOI", remote_irr(LEVEL_PIN));
    ok &= check(NAME, "level: the LAPIC took it as level-triggered (TMR and ISR set)", tmr(LEVEL) && isr(LEVEL));
    msr::write(x2::EOI, 0);
    ok &= check(NAME, "level: the EOI with the line still high delivers it again", exactly(LEVEL, 2));
    ok &= check(NAME, "level: ... with remote IRR set again", remote_irr(LEVEL_PIN));
    ok &= check(NAME, "level: lowering the line delivers nothing", line(LEVEL_PIN, 0) && exactly(LEVEL, 2));
    msr::write(x2::EOI, 0);
    ok &= check(NAME, "level: the EOI after the line went low ends it (remote IRR, ISR clear)", {
        exactly(LEVEL, 2) && !remote_irr(LEVEL_PIN) && !isr(LEVEL)
    });
    ioapic::write_entry(LEVEL_PIN, redirection | entry::MASKED);
    set_hook(LEVEL, None);
    ok
}

/// The PING handler on the AP: answer the BSP (x2APIC ID 0) with a fixed IPI.
fn pong(_vector: u8) -> bool {
    lapic::send_ipi(0, icr::FIXED | icr::ASSERT | u32::from(PONG));
    true
}

extern "C" fn ap_entry(_apic_id: u32) -> ! {
    lapic::enter_x2apic();
    lapic::enable();
    let b = lapic::apic_base();
    AP_X2APIC.store(lapic::is_x2apic() && b & (base::EN | base::EXTD) == base::EN | base::EXTD, Ordering::SeqCst);
    AP_ID.store(msr::read(x2::ID), Ordering::SeqCst);
    AP_VCPU.store(vcpu_id(), Ordering::SeqCst);
    AP_LDR.store(msr::read(x2::LDR), Ordering::SeqCst);
    AP_READY.store(true, Ordering::SeqCst);
    loop {
        sti_hlt();
        if WAKE_REQUEST.swap(false, Ordering::SeqCst) {
            // Let the BSP settle into HLT, then wake it.
            delay_us(300);
            WAKE_SENT_AT.store(tsc(), Ordering::SeqCst);
            lapic::send_ipi(0, icr::FIXED | icr::ASSERT | u32::from(WAKE));
        }
    }
}

/// Sends one IPI and waits until `expected` deliveries of `vector` arrived on the two
/// vCPUs, then a little longer for extra ones; returns the deliveries per vCPU.
fn deliver(vector: u8, dest: u32, low: u32, expected: u64) -> [u64; 2] {
    let before = [count_on(0, vector), count_on(1, vector)];
    let delta = |before: &[u64; 2]| [count_on(0, vector) - before[0], count_on(1, vector) - before[1]];
    lapic::send_ipi(dest, low);
    wait_for(|| delta(&before).iter().sum::<u64>() >= expected, us_to_tsc(ARRIVE_US));
    delay_us(QUIET_US);
    delta(&before)
}

/// 6. The AP: start-up, IPIs both ways, and HLT woken by an IPI.
fn smp_checks() -> bool {
    let mut ok = true;
    set_hook(PING, Some(pong));
    let online = smp::start_aps(1, ap_entry);
    let ready = wait_for(|| AP_READY.load(Ordering::SeqCst), us_to_tsc(ARRIVE_US));
    if !check(NAME, "INIT, SIPI, SIPI through the x2APIC ICR brought the AP online", online == 1 && ready) {
        return false;
    }
    ok &= check(NAME, "the AP switched itself to x2APIC mode", AP_X2APIC.load(Ordering::SeqCst));
    let ap_id = AP_ID.load(Ordering::SeqCst);
    ok &= check(NAME, "the AP's x2APIC ID (0x802) is its vCPU id 1", {
        ap_id == 1 && AP_VCPU.load(Ordering::SeqCst) == 1
    });
    ok &= check(
        NAME,
        "the AP's LDR (0x80d) is derived from its x2APIC ID",
        AP_LDR.load(Ordering::SeqCst) == x2apic_ldr(1),
    );

    // Ping-pong: BSP -> AP (PING), AP's handler -> BSP (PONG).
    let mut roundtrip = [0u64; ROUNDS];
    let (pings, pongs) = ([count_on(0, PING), count_on(1, PING)], count_on(0, PONG));
    let mut answered = 0;
    for slot in roundtrip.iter_mut() {
        let before = count_on(0, PONG);
        let t0 = tsc();
        lapic::send_ipi(1, icr::FIXED | icr::ASSERT | u32::from(PING));
        if !wait_for(|| count_on(0, PONG) > before, us_to_tsc(ARRIVE_US)) {
            break;
        }
        *slot = last_tsc_on(0, PONG).wrapping_sub(t0);
        answered += 1;
    }
    delay_us(QUIET_US);
    let d = [count_on(0, PING) - pings[0], count_on(1, PING) - pings[1]];
    let pong_total = count_on(0, PONG) - pongs;
    let right = answered == ROUNDS && d == [0, ROUNDS as u64] && pong_total == ROUNDS as u64;
    ok &= check(NAME, "ping-pong: 16 fixed IPIs to the AP, each answered once by an IPI to the BSP", right);
    if !right {
        println!("{NAME}: {answered} of {ROUNDS} answered, pings {d:?}, pongs {pong_total}");
    }
    guest_rt::bench::report("ipi.roundtrip", &mut roundtrip[..answered]);

    // Logical destinations: cluster 0, one bit per x2APIC ID.
    let logical = icr::FIXED | icr::LOGICAL | icr::ASSERT | u32::from(LOGICAL);
    let to_ap = deliver(LOGICAL, x2apic_ldr(1) as u32, logical, 1);
    let to_both = deliver(LOGICAL, (x2apic_ldr(0) | x2apic_ldr(1)) as u32, logical, 2);
    ok &= check(NAME, "a logical (cluster) destination reaches exactly the vCPUs in it", {
        to_ap == [0, 1] && to_both == [1, 1]
    });
    if to_ap != [0, 1] || to_both != [1, 1] {
        println!("{NAME}: logical to the AP delivered {to_ap:?}, to both {to_both:?}");
    }

    let d = deliver(BROADCAST, 0, icr::FIXED | icr::ALL_EXCLUDING_SELF | icr::ASSERT | u32::from(BROADCAST), 1);
    ok &= check(NAME, "all-excluding-self reaches the AP exactly once and not the sender", d == [0, 1]);
    if d != [0, 1] {
        println!("{NAME}: all-excluding-self delivered {d:?}");
    }

    let d = deliver(NMI, 1, icr::NMI | icr::ASSERT, 1);
    ok &= check(NAME, "an NMI IPI reaches the AP's NMI handler (vector 2) and no one else", d == [0, 1]);
    if d != [0, 1] {
        println!("{NAME}: NMI delivered {d:?}");
    }

    ok &= hlt_ipi_checks();
    set_hook(PING, None);
    ok
}

/// 4b. `STI; HLT` on the BSP woken by an IPI from the AP. A 250 ms one-shot is the
/// backstop against hanging.
fn hlt_ipi_checks() -> bool {
    let mut ok = true;
    cli();
    let (wake, backstop, taken) = (count(WAKE), count(BACKSTOP), total());
    msr::write(x2::TDCR, u64::from(divide::BY_1));
    msr::write(x2::LVT_TIMER, u64::from(u32::from(BACKSTOP) | lvt::ONE_SHOT));
    msr::write(x2::TMICT, u64::from(BACKSTOP_BUS));
    WAKE_REQUEST.store(true, Ordering::SeqCst);
    lapic::send_ipi(1, icr::FIXED | icr::ASSERT | u32::from(KICK));
    sti_hlt();
    cli();
    msr::write(x2::TMICT, 0);
    msr::write(x2::LVT_TIMER, u64::from(lvt::MASKED | u32::from(TIMER)));
    let (got, all, timed_out) = (count(WAKE) - wake, total() - taken, count(BACKSTOP) - backstop);
    sti();
    let sent = WAKE_SENT_AT.load(Ordering::SeqCst);
    ok &= check(NAME, "STI; HLT on vCPU 0 returns with the IPI from vCPU 1 taken (and nothing else)", {
        got == 1 && all == 1 && timed_out == 0
    });
    ok &= check(NAME, "the wake-up is vCPU 1's IPI (it recorded sending it)", sent != 0);
    if got != 1 || all != 1 || timed_out != 0 {
        println!("{NAME}: HLT woke with {got} WAKE, {all} interrupts in all, {timed_out} backstop");
    }
    ok
}
