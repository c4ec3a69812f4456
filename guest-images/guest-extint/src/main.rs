//! `guest-extint`: device interrupts through the 8259 pair and the LAPIC's LINT0 in
//! virtual-wire mode (ExtINT), with the I/O APIC left masked, as Linux, SeaBIOS and
//! DOS-era software take them. The PIC, the PIT and the RTC are the service
//! partition's models; the hypervisor wires the PIC's INTR to this vCPU's LINT0 and
//! gets each vector from an interrupt-acknowledge cycle of the PIC model. Run with the
//! `pic`, `pit` and `rtc` devices (or `pc`).
//!
//! 1. The LAPIC is software-enabled (LINT0 keeps its masked reset value) and I/O APIC
//!    pins 2 (IRQ 0) and 8 (IRQ 8) are masked. The PIC pair is initialized as Linux's
//!    `init_8259A()` does: ICW1 0x11, ICW2 0x20 / 0x28, ICW3 0x04 / 0x02, ICW4 0x01.
//! 2. LINT0 masked: with IRQ 0 unmasked and the PIT (counter 0, mode 2, about 100 Hz)
//!    running, no interrupt arrives while IF = 1, and IRR bit 0 shows the request.
//! 3. LINT0 = ExtINT, unmasked (0x700): IRQ 0 arrives at vector 0x20, and keeps
//!    arriving, one per PIT period, each ended with a non-specific EOI to the master;
//!    the LAPIC's ISR never holds the vector (ExtINT is not tracked there, and the
//!    handler sends no LAPIC EOI).
//! 4. IRQ 0 masked in the IMR: nothing arrives though IRR bit 0 is set; unmasked again,
//!    the latched request arrives.
//! 5. The LAPIC software-disabled (SVR bit 8 clear, which masks LINT0): IRQ 0 still
//!    arrives at 0x20, as the hypervisor passes the PIC's INTR through a disabled LAPIC
//!    (its reset state stands in for the firmware's virtual-wire set-up). Then the
//!    LAPIC is enabled again and LINT0 set to ExtINT.
//! 6. A slave IRQ through the cascade: the RTC's periodic interrupt (IRQ 8, 128 Hz)
//!    with master IR2 and slave IR0 unmasked arrives at vector 0x28; the handler reads
//!    RTC register C and EOIs the slave, then the master, alternately with
//!    non-specific and specific (0x60 / 0x62) EOIs. On entry the master's ISR must be
//!    0x04 (IR2) and the slave's 0x01 (IR0); between the two EOIs 0x04 and 0x00. With
//!    IR2 masked on the master (slave IR0 still unmasked) nothing arrives though the
//!    master's IRR bit 2 is set; unmasked again, the latched IRQ 8 arrives at 0x28.
//! 7. The LAPIC switched to x2APIC mode (APIC virtualization where the CPU has it):
//!    IRQ 0 still arrives at 0x20 through LINT0 ExtINT, not in the LAPIC's ISR.
//! 8. Spurious IRQ 15: the slave re-initialized level-triggered (ICW1 LTIM); with
//!    IF = 0 the RTC raises IRQ 8 (the master latches the cascade edge), then register
//!    C is read so that the slave's request goes away before the INTA cycle. On STI
//!    the interrupt arrives at the slave's IR7 vector 0x2F, with the master's IR2 in
//!    service and nothing in the slave's ISR (8259A datasheet, "Interrupt Sequence"
//!    and "Edge and Level Triggered Modes"); the handler EOIs the master only.
//! 9. Everything masked and stopped again.
//!
//! Expected console lines (prefix = the partition's name in the config), among the
//! other `PASS guest-extint: ...` check lines:
//! ```text
//! [extint] PASS guest-extint: LINT0 masked: the PIC's INTR does not reach the vCPU
//! [extint] PASS guest-extint: LINT0 ExtINT: IRQ 0 arrives at vector 0x20 with PIC EOIs
//! [extint] PASS guest-extint: ExtINT vectors are not in the LAPIC's ISR
//! [extint] PASS guest-extint: IRQ 0 masked in the IMR does not arrive
//! [extint] PASS guest-extint: LAPIC software-disabled (LINT0 0x10700): IRQ 0 still arrives at vector 0x20
//! [extint] PASS guest-extint: slave IRQ 8 (RTC) arrives at vector 0x28 through the cascade
//! [extint] PASS guest-extint: IRQ 8 in service on both chips until its EOIs (master 0x04 / slave 0x01 in the handler, 0x04 / 0x00 between the EOIs)
//! [extint] PASS guest-extint: IR2 masked on the master: IRQ 8 does not arrive
//! [extint] PASS guest-extint: IR2 unmasked: the latched IRQ 8 arrives at vector 0x28
//! [extint] PASS guest-extint: x2APIC mode (LINT0 0x700): IRQ 0 arrives at vector 0x20
//! [extint] PASS guest-extint: spurious IRQ 15 arrives at 0x2f with master IR2 in service
//! [extint] PASS guest-extint
//! ```
//! On a failed check: `FAIL guest-extint: <check>`, then `FAIL guest-extint`, and the
//! guest stops with code 1.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};

use guest_rt::cmos;
use guest_rt::interrupts::{self, cli, count, delay_us, sti};
use guest_rt::ioapic::{self, entry};
use guest_rt::pic8259::{
    self, irr, ICW1_EDGE, ICW1_LEVEL, ICW3_MASTER, MASTER_CMD, MASTER_DATA, MASTER_VECTOR_BASE, OCW2_EOI,
    OCW3_READ_IRR, SLAVE_CMD, SLAVE_DATA, SLAVE_VECTOR_BASE,
};
use guest_rt::port::outb;
use guest_rt::{check, check_fmt, exceptions, lapic, println, stop};

const NAME: &str = "guest-extint";

/// IMR values: only IRQ 0; only the cascade (IR2); only slave IR0 (IRQ 8); none.
const IMR_IRQ0: u8 = 0xFE;
const IMR_CASCADE: u8 = 0xFB;
const IMR_SLAVE_IRQ8: u8 = 0xFE;
const IMR_NONE: u8 = 0xFF;

/// The vectors the PIC gives with the bases above.
const VECTOR_IRQ0: u8 = MASTER_VECTOR_BASE;
const VECTOR_IRQ8: u8 = SLAVE_VECTOR_BASE;
const VECTOR_SPURIOUS_MASTER: u8 = MASTER_VECTOR_BASE | 7;
const VECTOR_SPURIOUS_SLAVE: u8 = SLAVE_VECTOR_BASE | 7;

/// LVT LINT0 (SDM 11.5.1, figure 11-8): delivery mode ExtINT (111b), unmasked, edge,
/// active high: the virtual-wire setting.
const LINT0_EXTINT: u32 = 0x700;
const LVT_MASKED: u32 = 1 << 16;

const PIT_COUNTER0: u16 = 0x40;
const PIT_CONTROL: u16 = 0x43;
/// Counter 0, LSB then MSB, mode 2 (rate generator) / mode 0 (stops the pulses until a
/// count is written), binary.
const PIT_MODE2: u8 = 0x34;
const PIT_MODE0: u8 = 0x30;
/// About 100 Hz.
const PIT_DIVISOR: u16 = 11932;

const RTC_REG_A: u8 = 0x0A;
const RTC_REG_B: u8 = 0x0B;
const RTC_REG_C: u8 = 0x0C;
/// Register A: 32.768 kHz time base (DV = 010), rate 9 = 128 Hz periodic interrupt.
const RTC_A_128HZ: u8 = 0x29;
/// Register B: periodic interrupt enable.
const RTC_B_PIE: u8 = 0x40;

/// Long enough for about ten PIT periods, also with the service partition's wake-up
/// latency (about 1 ms).
const RUN_US: u64 = 100_000;
/// Long enough for a few PIT periods.
const SHORT_US: u64 = 30_000;

/// Set by the handler when the LAPIC's ISR held an ExtINT vector.
static LAPIC_ISR_SEEN: AtomicBool = AtomicBool::new(false);
/// A vector from the PIC that no test expects (0: none).
static UNEXPECTED: AtomicU8 = AtomicU8::new(0);
/// The master's and the slave's ISR as the spurious IRQ 15 handler saw them.
static SPURIOUS_MASTER_ISR: AtomicU8 = AtomicU8::new(0);
static SPURIOUS_SLAVE_ISR: AtomicU8 = AtomicU8::new(0xFF);
/// IRQ 8 handler runs so far (even ones use non-specific EOIs, odd ones specific EOIs).
static IRQ8_RUNS: AtomicU64 = AtomicU64::new(0);
/// The first IRQ 8 handler run whose ISRs were not as expected: master and slave ISR
/// on entry, then between the slave's and the master's EOI, one byte each (0: none).
static IRQ8_BAD_ISR: AtomicU32 = AtomicU32::new(0);

/// OCW2: specific EOI (| level).
const OCW2_SPECIFIC_EOI: u8 = 0x60;
/// The master's cascade input (IR2) as an ISR bit and as a level.
const LEVEL_IR2: u8 = 2;
/// Slave IR0 (IRQ 8) as an ISR bit.
const SLAVE_IR0: u8 = 0x01;

/// [`pic8259::isr`], then IRR selected again for the chip's next read of the command port.
fn isr(cmd: u16) -> u8 {
    let value = pic8259::isr(cmd);
    outb(cmd, OCW3_READ_IRR);
    value
}

/// Initializes both 8259As (`slave_icw1`: edge or level) and masks everything.
fn init_pics(slave_icw1: u8) {
    outb(MASTER_DATA, IMR_NONE);
    outb(SLAVE_DATA, IMR_NONE);
    pic8259::init(slave_icw1);
    outb(MASTER_DATA, IMR_NONE);
    outb(SLAVE_DATA, IMR_NONE);
}

/// The handler hook of the PIC's vectors 0x20-0x2F: checks that the LAPIC does not
/// track the vector, ends the interrupt at the PIC as the vector needs, and asks the
/// runtime for no LAPIC EOI (ExtINT has none).
fn pic_interrupt(vector: u8) -> bool {
    if lapic::isr(vector) {
        LAPIC_ISR_SEEN.store(true, Ordering::SeqCst);
    }
    match vector {
        VECTOR_IRQ0 => outb(MASTER_CMD, OCW2_EOI),
        VECTOR_IRQ8 => {
            let (master_in, slave_in) = (isr(MASTER_CMD), isr(SLAVE_CMD));
            // The RTC holds IRQ 8 until register C is read.
            cmos::read(RTC_REG_C);
            let specific = IRQ8_RUNS.fetch_add(1, Ordering::SeqCst) % 2 == 1;
            outb(SLAVE_CMD, if specific { OCW2_SPECIFIC_EOI } else { OCW2_EOI });
            let (master_between, slave_between) = (isr(MASTER_CMD), isr(SLAVE_CMD));
            outb(MASTER_CMD, if specific { OCW2_SPECIFIC_EOI | LEVEL_IR2 } else { OCW2_EOI });
            let seen = [master_in, slave_in, master_between, slave_between];
            if seen != [ICW3_MASTER, SLAVE_IR0, ICW3_MASTER, 0] {
                // Keep the first bad run; 0 cannot be a bad run (master_in would be 0x04).
                let _ = IRQ8_BAD_ISR.compare_exchange(0, u32::from_be_bytes(seen), Ordering::SeqCst, Ordering::SeqCst);
            }
        }
        VECTOR_SPURIOUS_SLAVE => {
            // Spurious IRQ 15: the master's IR2 is in service, the slave's ISR empty;
            // only the master gets an EOI.
            SPURIOUS_MASTER_ISR.store(isr(MASTER_CMD), Ordering::SeqCst);
            SPURIOUS_SLAVE_ISR.store(isr(SLAVE_CMD), Ordering::SeqCst);
            outb(MASTER_CMD, OCW2_EOI);
        }
        // Spurious IRQ 7: no EOI.
        VECTOR_SPURIOUS_MASTER => {}
        other => UNEXPECTED.store(other, Ordering::SeqCst),
    }
    false
}

/// Runs with interrupts enabled for `us` microseconds.
fn run_open(us: u64) {
    sti();
    delay_us(us);
    cli();
}

/// How many interrupts at `vector` arrive while [`run_open`] runs for `us`.
fn taken_while_open(vector: u8, us: u64) -> u64 {
    let before = count(vector);
    run_open(us);
    count(vector) - before
}

/// Entry point (see `hv_abi::start`).
#[no_mangle]
#[link_section = ".text._start"]
pub extern "C" fn _start(_vcpu: u64, _ram: u64) -> ! {
    exceptions::install();
    lapic::sync_mode();
    lapic::enable();
    for vector in MASTER_VECTOR_BASE..=VECTOR_SPURIOUS_SLAVE {
        interrupts::set_hook(vector, Some(pic_interrupt));
    }
    let mut ok = true;

    // 1. The I/O APIC stays masked; the PIC pair as Linux sets it up.
    ok &= check(NAME, "I/O APIC pins 2 (IRQ 0) and 8 (IRQ 8) are masked", {
        ioapic::read_entry(2) & entry::MASKED != 0 && ioapic::read_entry(8) & entry::MASKED != 0
    });
    init_pics(ICW1_EDGE);
    let lint0 = lapic::read(lapic::reg::LVT_LINT0);
    ok &= check_fmt(NAME, format_args!("LINT0 is masked after reset ({lint0:#x})"), lint0 & LVT_MASKED != 0);

    // 2. LINT0 masked: the PIC requests, the vCPU gets nothing.
    outb(MASTER_DATA, IMR_IRQ0);
    outb(PIT_CONTROL, PIT_MODE2);
    let [low, high] = PIT_DIVISOR.to_le_bytes();
    outb(PIT_COUNTER0, low);
    outb(PIT_COUNTER0, high);
    run_open(SHORT_US);
    let (taken, r) = (count(VECTOR_IRQ0), irr(MASTER_CMD));
    ok &= check_fmt(
        NAME,
        format_args!("LINT0 masked: the PIC's INTR does not reach the vCPU ({taken} taken, IRR {r:#04x})"),
        taken == 0 && r & 1 != 0,
    );

    // 3. Virtual wire: LINT0 ExtINT.
    lapic::write(lapic::reg::LVT_LINT0, LINT0_EXTINT);
    run_open(RUN_US);
    let taken = count(VECTOR_IRQ0);
    ok &= check_fmt(
        NAME,
        format_args!("LINT0 ExtINT: IRQ 0 arrives at vector 0x20 with PIC EOIs ({taken} in 100 ms at 100 Hz)"),
        taken >= 5,
    );
    let s = isr(MASTER_CMD);
    ok &= check_fmt(NAME, format_args!("every IRQ 0 was ended at the master (ISR {s:#04x})"), s == 0);
    ok &= check(NAME, "ExtINT vectors are not in the LAPIC's ISR", !LAPIC_ISR_SEEN.load(Ordering::SeqCst));

    // 4. A masked IRQ does not arrive; unmasked, its latched request does.
    outb(MASTER_DATA, IMR_NONE);
    let (taken, r) = (taken_while_open(VECTOR_IRQ0, SHORT_US), irr(MASTER_CMD));
    ok &= check_fmt(
        NAME,
        format_args!("IRQ 0 masked in the IMR does not arrive ({taken} taken, IRR {r:#04x})"),
        taken == 0 && r & 1 != 0,
    );
    outb(PIT_CONTROL, PIT_MODE0);
    outb(MASTER_DATA, IMR_IRQ0);
    let unmasked = taken_while_open(VECTOR_IRQ0, 1_000);
    ok &= check_fmt(NAME, format_args!("unmasked, the latched IRQ 0 arrives ({unmasked} taken)"), unmasked == 1);
    outb(MASTER_DATA, IMR_NONE);

    // 5. A software-disabled LAPIC (SVR bit 8 clear; it masks LINT0) passes the PIC's
    //    INTR through, as the hypervisor documents (the reset state stands in for the
    //    firmware's virtual wire).
    lapic::write(lapic::reg::SVR, u32::from(interrupts::SPURIOUS_VECTOR));
    let lint0 = lapic::read(lapic::reg::LVT_LINT0);
    let before = count(VECTOR_IRQ0);
    outb(PIT_CONTROL, PIT_MODE2);
    outb(PIT_COUNTER0, low);
    outb(PIT_COUNTER0, high);
    outb(MASTER_DATA, IMR_IRQ0);
    run_open(SHORT_US);
    outb(MASTER_DATA, IMR_NONE);
    outb(PIT_CONTROL, PIT_MODE0);
    let taken = count(VECTOR_IRQ0) - before;
    ok &= check_fmt(
        NAME,
        format_args!(
            "LAPIC software-disabled (LINT0 {lint0:#x}): IRQ 0 still arrives at vector 0x20 ({taken} in 30 ms)"
        ),
        lint0 & LVT_MASKED != 0 && taken >= 1,
    );
    lapic::enable();
    lapic::write(lapic::reg::LVT_LINT0, LINT0_EXTINT);

    // 6. A slave IRQ through the cascade: the RTC's periodic interrupt.
    cmos::write(RTC_REG_A, RTC_A_128HZ);
    let b = cmos::read(RTC_REG_B);
    cmos::write(RTC_REG_B, b | RTC_B_PIE);
    cmos::read(RTC_REG_C);
    outb(SLAVE_DATA, IMR_SLAVE_IRQ8);
    outb(MASTER_DATA, IMR_CASCADE);
    run_open(RUN_US);
    let taken = count(VECTOR_IRQ8);
    ok &= check_fmt(
        NAME,
        format_args!("slave IRQ 8 (RTC) arrives at vector 0x28 through the cascade ({taken} in 100 ms at 128 Hz)"),
        taken >= 5,
    );
    let [m_in, s_in, m_between, s_between] = IRQ8_BAD_ISR.load(Ordering::SeqCst).to_be_bytes();
    let runs = IRQ8_RUNS.load(Ordering::SeqCst);
    ok &= check_fmt(
        NAME,
        format_args!(
            "IRQ 8 in service on both chips until its EOIs (master 0x04 / slave 0x01 in the handler, 0x04 / 0x00 \
             between the EOIs; {runs} runs, non-specific and specific EOIs alternating; first bad run {m_in:#04x} / \
             {s_in:#04x}, {m_between:#04x} / {s_between:#04x})"
        ),
        runs >= 2 && (m_in, s_in, m_between, s_between) == (0, 0, 0, 0),
    );
    // The master's IR2 mask blocks the slave: its request waits in the master's IRR.
    outb(MASTER_DATA, IMR_NONE);
    let (taken, r) = (taken_while_open(VECTOR_IRQ8, SHORT_US), irr(MASTER_CMD));
    ok &= check_fmt(
        NAME,
        format_args!(
            "IR2 masked on the master: IRQ 8 does not arrive ({taken} taken in 30 ms at 128 Hz, master IRR {r:#04x})"
        ),
        taken == 0 && r & ICW3_MASTER != 0,
    );
    outb(MASTER_DATA, IMR_CASCADE);
    let unmasked = taken_while_open(VECTOR_IRQ8, 1_000);
    ok &= check_fmt(
        NAME,
        format_args!("IR2 unmasked: the latched IRQ 8 arrives at vector 0x28 ({unmasked} taken in 1 ms)"),
        unmasked >= 1,
    );
    cmos::write(RTC_REG_B, b & !RTC_B_PIE);
    cmos::read(RTC_REG_C);
    let s = (isr(MASTER_CMD), isr(SLAVE_CMD));
    ok &= check_fmt(
        NAME,
        format_args!("every IRQ 8 was ended at both chips (ISR {:#04x} / {:#04x})", s.0, s.1),
        s == (0, 0),
    );

    // 7. x2APIC mode (with APIC virtualization where the CPU has it, which delivers the
    //    LAPIC's own vectors itself): ExtINT is still injected by the hypervisor.
    lapic::enter_x2apic();
    let lint0 = lapic::read(lapic::reg::LVT_LINT0);
    let before = count(VECTOR_IRQ0);
    outb(PIT_CONTROL, PIT_MODE2);
    outb(PIT_COUNTER0, low);
    outb(PIT_COUNTER0, high);
    outb(MASTER_DATA, IMR_IRQ0);
    run_open(SHORT_US);
    outb(MASTER_DATA, IMR_NONE);
    outb(PIT_CONTROL, PIT_MODE0);
    let taken = count(VECTOR_IRQ0) - before;
    ok &= check_fmt(
        NAME,
        format_args!("x2APIC mode (LINT0 {lint0:#x}): IRQ 0 arrives at vector 0x20 ({taken} in 30 ms)"),
        lint0 == LINT0_EXTINT && taken >= 1 && !LAPIC_ISR_SEEN.load(Ordering::SeqCst),
    );

    // 8. Spurious IRQ 15: the slave's level request goes away before the INTA cycle.
    init_pics(ICW1_LEVEL);
    outb(SLAVE_DATA, IMR_SLAVE_IRQ8);
    outb(MASTER_DATA, IMR_CASCADE);
    cmos::write(RTC_REG_B, b | RTC_B_PIE);
    delay_us(SHORT_US);
    let requested = irr(MASTER_CMD);
    cmos::write(RTC_REG_B, b & !RTC_B_PIE);
    cmos::read(RTC_REG_C);
    let irq8_before = count(VECTOR_IRQ8);
    run_open(1_000);
    let spurious = count(VECTOR_SPURIOUS_SLAVE);
    let (master_isr, slave_isr) =
        (SPURIOUS_MASTER_ISR.load(Ordering::SeqCst), SPURIOUS_SLAVE_ISR.load(Ordering::SeqCst));
    ok &= check_fmt(
        NAME,
        format_args!(
            "spurious IRQ 15 arrives at 0x2f with master IR2 in service ({spurious} taken, master IRR before \
             {requested:#04x}, ISR in the handler {master_isr:#04x} / {slave_isr:#04x})"
        ),
        spurious == 1
            && requested & ICW3_MASTER != 0
            && master_isr == ICW3_MASTER
            && slave_isr == 0
            && count(VECTOR_IRQ8) == irq8_before,
    );

    // 9. Quiet again.
    outb(MASTER_DATA, IMR_NONE);
    outb(SLAVE_DATA, IMR_NONE);
    lapic::write(lapic::reg::LVT_LINT0, LVT_MASKED | LINT0_EXTINT);
    let unexpected = UNEXPECTED.load(Ordering::SeqCst);
    ok &= check_fmt(
        NAME,
        format_args!(
            "no other PIC vector arrived (unexpected {unexpected:#04x}, spurious IRQ 7: {})",
            count(VECTOR_SPURIOUS_MASTER)
        ),
        unexpected == 0 && count(VECTOR_SPURIOUS_MASTER) == 0,
    );

    if ok {
        println!("PASS {NAME}");
    } else {
        println!("FAIL {NAME}");
    }
    stop(if ok { 0 } else { 1 })
}
