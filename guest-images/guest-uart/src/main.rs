//! `guest-uart`: drives COM1 (a 16550A at 0x3F8, IRQ 4) as a driver would; every
//! access is forwarded by the hypervisor to the service partition, whose
//! `hv_devices` UART model answers. Run with the `com1` device (or `pc`).
//!
//! 1. The scratch register round-trips (the UART is there).
//! 2. LCR.DLAB: the divisor latch (DLL/DLM) round-trips the 300 and 115200 baud
//!    divisors, is kept while DLAB is clear, and is not IER; LCR = 8N1 reads back.
//! 3. FCR: enabling the FIFOs shows in IIR bits 7:6.
//! 4. Loopback (MCR bit 4): MSR shows the looped-back modem lines; the bytes
//!    `LOOPBACK` written to THR come back through RBR in order, LSR.DR set before each
//!    read and clear after the last; they are not transmitted (they must not appear on
//!    the console).
//! 5. Polled output outside loopback: the line `uart: hello through the 16550`, byte by
//!    byte to THR after LSR.THRE.
//! 6. Interrupt-driven output: I/O APIC pin 4 → vector 0x44 (edge, fixed, to vCPU 0),
//!    MCR.OUT2 and IER.ETBEI set; the handler sends one byte of the line
//!    `uart: interrupt-driven line` per THRE interrupt (IIR = THR empty) and turns
//!    ETBEI off after the last one. At least one interrupt per byte must arrive.
//!
//! Expected console lines (prefix = the partition's name in the config, e.g. `[uart]`),
//! in this order, among the `PASS guest-uart: ...` check lines:
//! ```text
//! [uart] uart: hello through the 16550
//! [uart] uart: interrupt-driven line
//! [uart] PASS guest-uart
//! ```
//! (the first two come from the service partition's UART model; no console line may
//! contain `LOOPBACK`). On a failed check: `FAIL guest-uart: <check>`, then
//! `FAIL guest-uart`, and the guest stops with code 1.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use guest_rt::port::{inb, outb};

use guest_rt::interrupts::{count, set_hook, sti, us_to_tsc, wait_for};
use guest_rt::ioapic::{self, entry};
use guest_rt::{check, check_fmt, exceptions, lapic, println, stop};

const NAME: &str = "guest-uart";

const COM1: u16 = 0x3F8;
const THR: u16 = COM1; // RBR when read; DLL with DLAB = 1
const IER: u16 = COM1 + 1; // DLM with DLAB = 1
const IIR: u16 = COM1 + 2; // FCR when written
const LCR: u16 = COM1 + 3;
const MCR: u16 = COM1 + 4;
const LSR: u16 = COM1 + 5;
const MSR: u16 = COM1 + 6;
const SCR: u16 = COM1 + 7;

const LCR_DLAB: u8 = 0x80;
const LCR_8N1: u8 = 0x03;
const MCR_DTR_RTS: u8 = 0x03;
const MCR_OUT2: u8 = 0x08;
const MCR_LOOP: u8 = 0x10;
const LSR_DR: u8 = 0x01;
const LSR_THRE: u8 = 0x20;
const IER_ETBEI: u8 = 0x02;
const IIR_THRE: u8 = 0x02;

/// COM1's ISA IRQ, which is I/O APIC pin 4.
const PIN: u32 = 4;
const VECTOR: u8 = 0x44;
/// How long the interrupt-driven line may take (generous: emulators are slow).
const IRQ_LINE_US: u64 = 10_000_000;

const LOOPBACK: &[u8] = b"LOOPBACK";
const POLLED_LINE: &[u8] = b"uart: hello through the 16550\n";
const IRQ_LINE: &[u8] = b"uart: interrupt-driven line\n";

/// Bytes of [`IRQ_LINE`] sent so far by the interrupt handler.
static SENT: AtomicUsize = AtomicUsize::new(0);
/// THRE interrupts that found nothing more to send.
static DONE: AtomicBool = AtomicBool::new(false);
/// Interrupts whose IIR did not say "THR empty".
static OTHER_IIR: AtomicUsize = AtomicUsize::new(0);

/// Waits (bounded) for LSR bits `mask`; true if they came.
fn lsr_wait(mask: u8) -> bool {
    (0..100_000).any(|_| inb(LSR) & mask == mask)
}

/// The THRE interrupt: send the next byte, or stop the interrupts after the last.
fn on_thre(_vector: u8) -> bool {
    if inb(IIR) & 0x0F != IIR_THRE {
        OTHER_IIR.fetch_add(1, Ordering::SeqCst);
        return true;
    }
    let i = SENT.load(Ordering::SeqCst);
    match IRQ_LINE.get(i) {
        Some(&byte) => {
            SENT.store(i + 1, Ordering::SeqCst);
            outb(THR, byte);
        }
        None => {
            outb(IER, 0);
            DONE.store(true, Ordering::SeqCst);
        }
    }
    true
}

/// Entry point (see `hv_abi::start`).
#[no_mangle]
#[link_section = ".text._start"]
pub extern "C" fn _start(_vcpu: u64, _ram: u64) -> ! {
    exceptions::install();
    lapic::sync_mode();
    lapic::enable();
    let mut ok = true;

    // 1. Present.
    outb(SCR, 0x5A);
    let scr = inb(SCR);
    ok &= check_fmt(NAME, format_args!("the scratch register round-trips (0x5a -> {scr:#04x})"), scr == 0x5A);
    outb(IER, 0);

    // 2. Divisor latch: 384 (300 baud) round-trips and is not IER; then 1 (115200 baud).
    outb(LCR, LCR_DLAB | LCR_8N1);
    outb(THR, 0x80);
    outb(IER, 0x01);
    let (dll, dlm) = (inb(THR), inb(IER));
    ok &= check_fmt(NAME, format_args!("DLAB: divisor 0x0180 (300 baud) reads back ({dlm:02x}{dll:02x})"), {
        (dll, dlm) == (0x80, 0x01)
    });
    outb(LCR, LCR_8N1);
    ok &= check(NAME, "LCR 8N1 with DLAB clear reads back", inb(LCR) == LCR_8N1);
    ok &= check(NAME, "with DLAB clear, offset 1 is IER (0), not DLM (1)", inb(IER) == 0);
    outb(LCR, LCR_DLAB | LCR_8N1);
    let kept = (inb(THR), inb(IER)) == (0x80, 0x01);
    ok &= check(NAME, "the divisor survives DLAB being cleared and set again", kept);
    outb(THR, 0x01);
    outb(IER, 0x00);
    ok &= check(NAME, "DLAB: divisor 1 (115200 baud) reads back", (inb(THR), inb(IER)) == (0x01, 0x00));
    outb(LCR, LCR_8N1);
    ok &= check(NAME, "LSR: transmitter empty (THRE and TEMT) at rest", inb(LSR) & 0x60 == 0x60);

    // 3. FIFOs: enable, clear both, trigger level 14.
    outb(IIR, 0xC7);
    let iir = inb(IIR);
    ok &= check_fmt(NAME, format_args!("FCR enables the FIFOs (IIR {iir:#04x}, bits 7:6 set)"), iir & 0xC0 == 0xC0);

    // 4. Loopback.
    outb(MCR, MCR_LOOP | MCR_DTR_RTS);
    let msr = inb(MSR);
    ok &= check_fmt(NAME, format_args!("loopback: MSR shows CTS and DSR from RTS and DTR ({msr:#04x})"), {
        msr & 0xF0 == 0x30
    });
    ok &= check(NAME, "loopback: the receiver starts empty", inb(LSR) & LSR_DR == 0);
    for &b in LOOPBACK {
        outb(THR, b);
    }
    let mut back = [0u8; LOOPBACK.len()];
    let mut ready = true;
    for slot in back.iter_mut() {
        ready &= lsr_wait(LSR_DR);
        *slot = inb(THR);
    }
    ok &= check(NAME, "loopback: LSR.DR was set before each byte", ready);
    ok &= check(NAME, "loopback: the bytes come back through RBR in order", back == LOOPBACK);
    ok &= check(NAME, "loopback: LSR.DR is clear after the last byte", inb(LSR) & LSR_DR == 0);

    // 5. Polled output.
    outb(MCR, MCR_DTR_RTS | MCR_OUT2);
    let mut polled = true;
    for &b in POLLED_LINE {
        polled &= lsr_wait(LSR_THRE);
        outb(THR, b);
    }
    ok &= check(NAME, "polled output: LSR.THRE was set before every byte", polled);

    // 6. Interrupt-driven output.
    set_hook(VECTOR, Some(on_thre));
    ioapic::write_entry(PIN, entry::FIXED | entry::dest(0) | u64::from(VECTOR));
    sti();
    outb(IER, IER_ETBEI);
    let done = wait_for(|| DONE.load(Ordering::SeqCst), us_to_tsc(IRQ_LINE_US));
    ioapic::write_entry(PIN, entry::MASKED);
    let (sent, irqs, other) = (SENT.load(Ordering::SeqCst), count(VECTOR), OTHER_IIR.load(Ordering::SeqCst));
    ok &= check_fmt(NAME, format_args!("interrupt-driven output: all {sent} bytes sent ({irqs} interrupts)"), {
        done && sent == IRQ_LINE.len()
    });
    ok &= check(NAME, "interrupt-driven output: at least one THRE interrupt per byte", irqs >= IRQ_LINE.len() as u64);
    ok &= check(NAME, "interrupt-driven output: every interrupt was THR empty", other == 0);

    if ok {
        println!("PASS {NAME}");
    } else {
        println!("FAIL {NAME}");
    }
    stop(if ok { 0 } else { 1 })
}
