//! `guest-pic`: the cascaded 8259A pair (master 0x20/0x21, slave 0xA0/0xA1) and the
//! edge/level control registers (ELCR, 0x4D0/0x4D1), which the hypervisor forwards to
//! the service partition's `hv_devices` PIC model, with the PIT (0x40-0x43) as the
//! interrupt source on the master and the RTC (0x70/0x71, IRQ 8) on the slave. Run with
//! the `pic`, `pit` and `rtc` devices (or `pc`).
//!
//! The PIC's INT output reaches the vCPU only through LINT0 in virtual-wire mode
//! (`guest-extint`); this guest software-enables its LAPIC and leaves LINT0 masked (its
//! reset value), so it takes no interrupts: it checks the registers and uses the poll
//! command, with interrupts off and I/O APIC pins 2 (where the PIT's IRQ 0 also goes)
//! and 8 (the RTC's IRQ 8) masked. The vector a slave interrupt is delivered with (the
//! slave's base 0x28) needs an INTA cycle, which only LINT0 ExtINT gives: `guest-extint`
//! checks that, the ISR bits inside its handler and the master's IR2 mask.
//!
//! 1. ICW1-ICW4 on both chips: master vector base 0x20, slave 0x28, slave on master IR2
//!    (master ICW3 0x04, slave ID 2), 8086 mode; after ICW1 the masks read 0 and
//!    IRR/ISR (OCW3 read register commands) read 0.
//! 2. OCW1: masks 0xa5 / 0x5a read back, then everything masked (0xff / 0xff).
//! 3. ELCR: all-ones reads back as 0xf8 / 0xde (IRQ 0, 1, 2, 8 and 13 are always edge);
//!    0x20 / 0x0c read back; then 0 / 0 again.
//! 4. PIT counter 0 in mode 2, divisor 11932 (about 100 Hz): after 30 ms, IRR bit 0 is
//!    set; with IRQ 0 masked in the IMR a poll (OCW3 P = 1, then a read) reports no
//!    request (0x00).
//! 5. IRQ 0 unmasked: a poll reports it (0x80, level 0) and acknowledges it (ISR bit 0
//!    set). While it is in service, a new IRQ 0 shows in IRR but a poll reports nothing.
//!    A non-specific EOI (OCW2 0x20) clears ISR; the next poll reports IRQ 0 again; a
//!    specific EOI for level 1 (0x61) leaves ISR bit 0 set, the specific EOI for level 0
//!    (0x60) clears it. A poll of the slave (nothing requesting) reads 0x00.
//! 6. A slave request through the cascade: the PIT stopped and IRQ 0 masked, the RTC's
//!    periodic interrupt (128 Hz, B.PIE) on IRQ 8 with slave IR0 unmasked. With master
//!    IR2 masked: slave IRR bit 0 and master IRR bit 2 are set, a poll of the master
//!    reports nothing. IR2 unmasked: a poll of the master reports level 2 (0x82, ISR
//!    0x04), then a poll of the slave level 0 (0x80, ISR 0x01). RTC register C read
//!    (IRQ 8 falls and rises again at the next tick): the new request shows in the
//!    slave's IRR but, with IR0 in service there, not at master IR2. A non-specific EOI
//!    to the slave clears its ISR and passes the request on to master IR2 (IRR bit 2),
//!    but a master poll still reports nothing while IR2 is in service there; the
//!    specific EOI for level 2 (0x62) to the master lets the polls report 0x82 / 0x80
//!    again; a specific EOI for level 0 to the slave and a non-specific one to the
//!    master leave both ISRs 0. Then PIE is cleared and register C read.
//! 7. The PIT is stopped and every IRQ masked again.
//!
//! Expected console lines (prefix = the partition's name in the config, e.g. `[pic]`),
//! among the other `PASS guest-pic: ...` check lines:
//! ```text
//! [pic] PASS guest-pic: master IR2 masked: slave IRQ 8 (RTC) shows in slave IRR bit 0 and master IRR bit 2, a master poll reports nothing
//! [pic] PASS guest-pic: IR2 unmasked: the master's poll reports the cascade (0x82, ISR 0x04), the slave's poll IRQ 8 (0x80, ISR 0x01)
//! [pic] PASS guest-pic: with slave IR0 in service a new IRQ 8 stays in slave IRR, master IRR bit 2 clear
//! [pic] PASS guest-pic: a non-specific EOI to the slave clears its ISR and passes the request to master IR2, which is still in service
//! [pic] PASS guest-pic: the master's specific EOI for IR2 lets the pending IRQ 8 be polled (0x82 / 0x80)
//! [pic] PASS guest-pic: specific EOI to the slave, non-specific to the master: both ISRs 0
//! [pic] PASS guest-pic
//! ```
//! On a failed check: `FAIL guest-pic: <check>`, then `FAIL guest-pic`, and the guest
//! stops with code 1.
#![no_std]
#![no_main]

use guest_rt::cmos;
use guest_rt::interrupts::delay_us;
use guest_rt::ioapic::{self, entry};
use guest_rt::pic8259::{self, irr, isr, MASTER_CMD, MASTER_DATA, OCW2_EOI, SLAVE_CMD, SLAVE_DATA};
use guest_rt::port::{inb, outb};
use guest_rt::{check, check_fmt, exceptions, lapic, println, stop};

const NAME: &str = "guest-pic";

const ELCR_MASTER: u16 = 0x4D0;
const ELCR_SLAVE: u16 = 0x4D1;

/// OCW3 with the poll bit.
const OCW3_POLL: u8 = 0x0C;
/// OCW2: specific EOI (| level); the non-specific one is `pic8259::OCW2_EOI`.
const OCW2_SPECIFIC_EOI: u8 = 0x60;
/// Poll byte: a request is being reported (bits 2:0: its level).
const POLL_INT: u8 = 0x80;

const PIT_COUNTER0: u16 = 0x40;
const PIT_CONTROL: u16 = 0x43;
/// Counter 0, LSB then MSB, mode 2 / mode 0, binary.
const PIT_MODE2: u8 = 0x34;
const PIT_MODE0: u8 = 0x30;
/// About 100 Hz.
const PIT_DIVISOR: u16 = 11932;
/// Long enough for a few PIT periods, also with the service partition's wake-up latency.
const WAIT_US: u64 = 30_000;

/// Master IMR with only IR2 (the cascade) unmasked; slave IMR with only IR0 (IRQ 8).
const IMR_CASCADE: u8 = 0xFB;
const IMR_SLAVE_IRQ8: u8 = 0xFE;
/// The master's cascade input as an IRR/ISR bit, and its level.
const IR2: u8 = 1 << 2;
const LEVEL_IR2: u8 = 2;

const RTC_REG_A: u8 = 0x0A;
const RTC_REG_B: u8 = 0x0B;
const RTC_REG_C: u8 = 0x0C;
/// Register A: 32.768 kHz time base, rate 9 = 128 Hz periodic interrupt.
const RTC_A_128HZ: u8 = 0x29;
/// Register B: periodic interrupt enable.
const RTC_B_PIE: u8 = 0x40;

fn poll(cmd: u16) -> u8 {
    outb(cmd, OCW3_POLL);
    inb(cmd)
}

/// Entry point (see `hv_abi::start`).
#[no_mangle]
#[link_section = ".text._start"]
pub extern "C" fn _start(_vcpu: u64, _ram: u64) -> ! {
    exceptions::install();
    lapic::sync_mode();
    lapic::enable();
    let mut ok = true;

    ok &= check(NAME, "I/O APIC pin 2 (IRQ 0) is masked: no interrupt reaches the vCPU", {
        ioapic::read_entry(2) & entry::MASKED != 0
    });

    // 1. Initialization.
    pic8259::init(pic8259::ICW1_EDGE);
    let masks = (inb(MASTER_DATA), inb(SLAVE_DATA));
    ok &= check_fmt(
        NAME,
        format_args!("after ICW1-ICW4 both masks read 0 ({:02x} / {:02x})", masks.0, masks.1),
        masks == (0, 0),
    );
    let status = (irr(MASTER_CMD), isr(MASTER_CMD), irr(SLAVE_CMD), isr(SLAVE_CMD));
    ok &= check_fmt(
        NAME,
        format_args!(
            "after initialization IRR and ISR read 0 on both chips (master {:02x} {:02x}, slave {:02x} {:02x})",
            status.0, status.1, status.2, status.3
        ),
        status == (0, 0, 0, 0),
    );

    // 2. OCW1.
    outb(MASTER_DATA, 0xA5);
    outb(SLAVE_DATA, 0x5A);
    let masks = (inb(MASTER_DATA), inb(SLAVE_DATA));
    ok &= check_fmt(
        NAME,
        format_args!("OCW1: masks 0xa5 / 0x5a read back ({:02x} / {:02x})", masks.0, masks.1),
        masks == (0xA5, 0x5A),
    );
    outb(MASTER_DATA, 0xFF);
    outb(SLAVE_DATA, 0xFF);
    ok &= check(NAME, "OCW1: all masked reads back", (inb(MASTER_DATA), inb(SLAVE_DATA)) == (0xFF, 0xFF));

    // 3. ELCR.
    outb(ELCR_MASTER, 0xFF);
    outb(ELCR_SLAVE, 0xFF);
    let elcr = (inb(ELCR_MASTER), inb(ELCR_SLAVE));
    ok &= check_fmt(
        NAME,
        format_args!(
            "ELCR: all-ones reads 0xf8 / 0xde (IRQ 0, 1, 2, 8, 13 always edge) ({:02x} / {:02x})",
            elcr.0, elcr.1
        ),
        elcr == (0xF8, 0xDE),
    );
    outb(ELCR_MASTER, 0x20);
    outb(ELCR_SLAVE, 0x0C);
    let elcr = (inb(ELCR_MASTER), inb(ELCR_SLAVE));
    ok &= check_fmt(
        NAME,
        format_args!("ELCR: 0x20 / 0x0c read back ({:02x} / {:02x})", elcr.0, elcr.1),
        elcr == (0x20, 0x0C),
    );
    outb(ELCR_MASTER, 0);
    outb(ELCR_SLAVE, 0);
    ok &= check(NAME, "ELCR: 0 / 0 read back", (inb(ELCR_MASTER), inb(ELCR_SLAVE)) == (0, 0));

    // 4. The PIT raises IRQ 0; masked in the IMR it is in IRR but not polled.
    outb(PIT_CONTROL, PIT_MODE2);
    let [low, high] = PIT_DIVISOR.to_le_bytes();
    outb(PIT_COUNTER0, low);
    outb(PIT_COUNTER0, high);
    delay_us(WAIT_US);
    let r = irr(MASTER_CMD);
    ok &= check_fmt(NAME, format_args!("with the PIT running, IRR bit 0 is set ({r:#04x})"), r & 1 != 0);
    let p = poll(MASTER_CMD);
    ok &= check_fmt(NAME, format_args!("IRQ 0 masked in the IMR: a poll reports nothing ({p:#04x})"), p == 0);

    // 5. Unmasked: poll, in-service blocking, EOIs.
    outb(MASTER_DATA, 0xFE);
    let p = poll(MASTER_CMD);
    ok &= check_fmt(NAME, format_args!("IRQ 0 unmasked: a poll reports level 0 ({p:#04x})"), p == POLL_INT);
    let s = isr(MASTER_CMD);
    ok &= check_fmt(NAME, format_args!("the poll acknowledged it: ISR bit 0 set ({s:#04x})"), s == 0x01);
    delay_us(WAIT_US);
    let r = irr(MASTER_CMD);
    let p = poll(MASTER_CMD);
    ok &= check_fmt(
        NAME,
        format_args!(
            "while IRQ 0 is in service a new one shows in IRR ({r:#04x}) but a poll reports nothing ({p:#04x})"
        ),
        r & 1 != 0 && p == 0,
    );
    outb(MASTER_CMD, OCW2_EOI);
    let s = isr(MASTER_CMD);
    ok &= check_fmt(NAME, format_args!("a non-specific EOI clears ISR ({s:#04x})"), s == 0);
    let p = poll(MASTER_CMD);
    let s = isr(MASTER_CMD);
    ok &= check_fmt(
        NAME,
        format_args!("after the EOI the pending IRQ 0 is polled ({p:#04x}), ISR bit 0 set ({s:#04x})"),
        p == POLL_INT && s == 0x01,
    );
    outb(MASTER_CMD, OCW2_SPECIFIC_EOI | 1);
    let s = isr(MASTER_CMD);
    ok &= check_fmt(NAME, format_args!("a specific EOI for level 1 leaves ISR bit 0 set ({s:#04x})"), s == 0x01);
    outb(MASTER_CMD, OCW2_SPECIFIC_EOI);
    let s = isr(MASTER_CMD);
    ok &= check_fmt(NAME, format_args!("the specific EOI for level 0 clears ISR ({s:#04x})"), s == 0);
    let p = poll(SLAVE_CMD);
    ok &= check_fmt(NAME, format_args!("a poll of the slave (nothing requesting) reads 0 ({p:#04x})"), p == 0);

    // 6. A slave request through the cascade: the RTC's IRQ 8.
    outb(PIT_CONTROL, PIT_MODE0);
    outb(MASTER_DATA, 0xFF);
    outb(SLAVE_DATA, IMR_SLAVE_IRQ8);
    ok &= check(NAME, "I/O APIC pin 8 (IRQ 8) is masked: no interrupt reaches the vCPU", {
        ioapic::read_entry(8) & entry::MASKED != 0
    });
    let rtc_a = cmos::read(RTC_REG_A);
    let rtc_b = cmos::read(RTC_REG_B);
    cmos::write(RTC_REG_A, RTC_A_128HZ);
    cmos::read(RTC_REG_C);
    cmos::write(RTC_REG_B, rtc_b | RTC_B_PIE);
    // Several RTC periods (7.8 ms): IRQ 8 rises at the first and stays high until C is read.
    delay_us(WAIT_US);
    let (slave_r, master_r) = (irr(SLAVE_CMD), irr(MASTER_CMD));
    let p = poll(MASTER_CMD);
    ok &= check_fmt(
        NAME,
        format_args!(
            "master IR2 masked: slave IRQ 8 (RTC) shows in slave IRR bit 0 and master IRR bit 2, a master poll \
             reports nothing ({slave_r:#04x} / {master_r:#04x}, poll {p:#04x})"
        ),
        slave_r & 1 != 0 && master_r & IR2 != 0 && p == 0,
    );
    outb(MASTER_DATA, IMR_CASCADE);
    let pm = poll(MASTER_CMD);
    let (sm, ss) = (isr(MASTER_CMD), isr(SLAVE_CMD));
    let ps = poll(SLAVE_CMD);
    let (sm2, ss2) = (isr(MASTER_CMD), isr(SLAVE_CMD));
    ok &= check_fmt(
        NAME,
        format_args!(
            "IR2 unmasked: the master's poll reports the cascade ({pm:#04x}, ISR {sm:#04x}), the slave's poll IRQ 8 \
             ({ps:#04x}, ISR {ss2:#04x}; before it {ss:#04x}, master then {sm2:#04x})"
        ),
        pm == POLL_INT | LEVEL_IR2 && sm == IR2 && ss == 0 && ps == POLL_INT && ss2 == 0x01 && sm2 == IR2,
    );
    // IRQ 8 falls; the next tick raises it again.
    cmos::read(RTC_REG_C);
    delay_us(WAIT_US);
    let (slave_r, master_r) = (irr(SLAVE_CMD), irr(MASTER_CMD));
    let p = poll(SLAVE_CMD);
    ok &= check_fmt(
        NAME,
        format_args!(
            "with slave IR0 in service a new IRQ 8 stays in slave IRR, master IRR bit 2 clear ({slave_r:#04x} / \
             {master_r:#04x}, slave poll {p:#04x})"
        ),
        slave_r & 1 != 0 && master_r & IR2 == 0 && p == 0,
    );
    outb(SLAVE_CMD, OCW2_EOI);
    let ss = isr(SLAVE_CMD);
    let master_r = irr(MASTER_CMD);
    let p = poll(MASTER_CMD);
    let sm = isr(MASTER_CMD);
    ok &= check_fmt(
        NAME,
        format_args!(
            "a non-specific EOI to the slave clears its ISR and passes the request to master IR2, which is still in \
             service (slave ISR {ss:#04x}, master IRR {master_r:#04x}, poll {p:#04x}, ISR {sm:#04x})"
        ),
        ss == 0 && master_r & IR2 != 0 && p == 0 && sm == IR2,
    );
    outb(MASTER_CMD, OCW2_SPECIFIC_EOI | LEVEL_IR2);
    let sm = isr(MASTER_CMD);
    let pm = poll(MASTER_CMD);
    let ps = poll(SLAVE_CMD);
    let (sm2, ss2) = (isr(MASTER_CMD), isr(SLAVE_CMD));
    ok &= check_fmt(
        NAME,
        format_args!(
            "the master's specific EOI for IR2 lets the pending IRQ 8 be polled ({pm:#04x} / {ps:#04x}; ISR after \
             the EOI {sm:#04x}, after the polls {sm2:#04x} / {ss2:#04x})"
        ),
        sm == 0 && pm == POLL_INT | LEVEL_IR2 && ps == POLL_INT && sm2 == IR2 && ss2 == 0x01,
    );
    outb(SLAVE_CMD, OCW2_SPECIFIC_EOI);
    let (sm, ss) = (isr(MASTER_CMD), isr(SLAVE_CMD));
    outb(MASTER_CMD, OCW2_EOI);
    let (sm2, ss2) = (isr(MASTER_CMD), isr(SLAVE_CMD));
    ok &= check_fmt(
        NAME,
        format_args!(
            "specific EOI to the slave, non-specific to the master: both ISRs 0 (after the slave's EOI {sm:#04x} / \
             {ss:#04x}, after the master's {sm2:#04x} / {ss2:#04x})"
        ),
        sm == IR2 && ss == 0 && (sm2, ss2) == (0, 0),
    );
    cmos::write(RTC_REG_B, rtc_b & !RTC_B_PIE);
    cmos::write(RTC_REG_A, rtc_a);
    cmos::read(RTC_REG_C);

    // 7. Quiet again.
    outb(PIT_CONTROL, PIT_MODE0);
    outb(MASTER_DATA, 0xFF);
    outb(SLAVE_DATA, 0xFF);

    if ok {
        println!("PASS {NAME}");
    } else {
        println!("FAIL {NAME}");
    }
    stop(if ok { 0 } else { 1 })
}
