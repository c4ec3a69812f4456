//! `guest-pic`: the cascaded 8259A pair (master 0x20/0x21, slave 0xA0/0xA1) and the
//! edge/level control registers (ELCR, 0x4D0/0x4D1), which the hypervisor forwards to
//! the service partition's `hv_devices` PIC model, with the PIT (0x40-0x43) as the
//! interrupt source. Run with the `pic` and `pit` devices (or `pc`).
//!
//! The PIC's INT output reaches the vCPU only through LINT0 in virtual-wire mode
//! (`guest-extint`); this guest software-enables its LAPIC and leaves LINT0 masked (its
//! reset value), so it takes no interrupts: it checks the registers and uses the poll
//! command, with interrupts off and I/O APIC pin 2 (where the PIT's IRQ 0 also goes)
//! masked.
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
//! 6. The PIT is stopped and every IRQ masked again.
//!
//! Expected console lines (prefix = the partition's name in the config, e.g. `[pic]`),
//! among the `PASS guest-pic: ...` check lines:
//! ```text
//! [pic] PASS guest-pic
//! ```
//! On a failed check: `FAIL guest-pic: <check>`, then `FAIL guest-pic`, and the guest
//! stops with code 1.
#![no_std]
#![no_main]

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

    // 6. Quiet again.
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
