//! `guest-console-input`: reads one line of console input through COM1 (a 16550A at
//! 0x3F8, IRQ 4, emulated by the service partition) and prints it back. Run with the
//! `com1` device (or `pc`) beside the service partition; the hypervisor gives the
//! physical console's input to one such guest at a time (`Ctrl-A n` switches).
//!
//! 1. The UART is set up as a driver would: 8N1, FIFOs on (receive trigger level 1),
//!    OUT2 (the PC's interrupt enable) and IER.ERBFI; I/O APIC pin 4 → vector 0x45
//!    (edge, fixed, to vCPU 0).
//! 2. It prints `ready for input` through the UART (polled: LSR.THRE, then THR).
//! 3. The receive interrupt handler takes every byte while LSR.DR is set (RBR) into a
//!    ring; the main loop waits with `sti; hlt` until a CR or LF ends a non-empty line
//!    (an empty line, e.g. the LF after a CR, is skipped).
//! 4. It prints `got: <line>` through the UART (bytes as received; the console shows
//!    non-printable ones as `.`) and stops with code 0.
//!
//! Expected console lines (prefix = the partition's name in the config):
//! ```text
//! [NAME] ready for input
//! [NAME] got: hello hv
//! ```
//! A line longer than 64 bytes is cut at 64. There is no time limit: interactively
//! (`cargo xtask run --config tests/configs/svc-console-input.toml`) it waits for the
//! user.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use guest_rt::interrupts::{cli, set_hook, sti_hlt};
use guest_rt::ioapic::{self, entry};
use guest_rt::port::{inb, outb};
use guest_rt::{exceptions, lapic, stop};

/// COM1 registers (PC16550D data sheet, Table II; DLAB = 0).
const COM1: u16 = 0x3F8;
const RBR: u16 = COM1; // THR when written
const IER: u16 = COM1 + 1;
const FCR: u16 = COM1 + 2; // IIR when read
const LCR: u16 = COM1 + 3;
const MCR: u16 = COM1 + 4;
const LSR: u16 = COM1 + 5;

/// LCR: 8 data bits, no parity, 1 stop bit (8.1).
const LCR_8N1: u8 = 0x03;
/// FCR: FIFOs on, both cleared, receive trigger level 1 (8.5).
const FCR_ENABLE_CLEAR: u8 = 0x07;
/// MCR: DTR, RTS and OUT2 (8.8; OUT2 gates the interrupt on a PC).
const MCR_DTR_RTS_OUT2: u8 = 0x0B;
/// IER bit 0: received data available (8.7).
const IER_ERBFI: u8 = 0x01;
/// LSR bit 0, data ready; bit 5, transmitter holding register empty (8.4).
const LSR_DR: u8 = 0x01;
const LSR_THRE: u8 = 0x20;

/// COM1's ISA IRQ, I/O APIC pin 4, and the vector it gets here.
const PIN: u32 = 4;
const VECTOR: u8 = 0x45;

/// The longest line kept.
const LINE_MAX: usize = 64;

/// Bytes received by the handler: a single-producer (handler) single-consumer (main
/// loop, same vCPU) ring.
const RING: usize = 256;
static RX: [AtomicU8; RING] = [const { AtomicU8::new(0) }; RING];
static RX_HEAD: AtomicUsize = AtomicUsize::new(0);
static RX_TAIL: AtomicUsize = AtomicUsize::new(0);

/// The receive interrupt: take every byte the UART holds (reading RBR until LSR.DR is
/// clear also clears the interrupt condition). A full ring drops the byte.
fn on_receive(_vector: u8) -> bool {
    for _ in 0..64 {
        if inb(LSR) & LSR_DR == 0 {
            break;
        }
        let byte = inb(RBR);
        let tail = RX_TAIL.load(Ordering::SeqCst);
        if tail.wrapping_sub(RX_HEAD.load(Ordering::SeqCst)) < RING {
            RX[tail % RING].store(byte, Ordering::SeqCst);
            RX_TAIL.store(tail.wrapping_add(1), Ordering::SeqCst);
        }
    }
    true
}

/// The next received byte, waiting (`sti; hlt`) until one arrives.
fn next_byte() -> u8 {
    loop {
        cli();
        let head = RX_HEAD.load(Ordering::SeqCst);
        if head != RX_TAIL.load(Ordering::SeqCst) {
            let byte = RX[head % RING].load(Ordering::SeqCst);
            RX_HEAD.store(head.wrapping_add(1), Ordering::SeqCst);
            return byte;
        }
        // Atomic with the check above: an interrupt pending now wakes the HLT.
        sti_hlt();
    }
}

/// Writes `bytes` to THR, each after LSR.THRE.
fn send(bytes: &[u8]) {
    for &b in bytes {
        while inb(LSR) & LSR_THRE == 0 {
            core::hint::spin_loop();
        }
        outb(RBR, b);
    }
}

/// Entry point (see `hv_abi::start`).
#[no_mangle]
#[link_section = ".text._start"]
pub extern "C" fn _start(_vcpu: u64, _ram: u64) -> ! {
    exceptions::install();
    lapic::sync_mode();
    lapic::enable();

    outb(IER, 0);
    outb(LCR, LCR_8N1);
    outb(FCR, FCR_ENABLE_CLEAR);
    outb(MCR, MCR_DTR_RTS_OUT2);
    set_hook(VECTOR, Some(on_receive));
    ioapic::write_entry(PIN, entry::FIXED | entry::dest(0) | u64::from(VECTOR));
    outb(IER, IER_ERBFI);

    send(b"ready for input\n");
    let mut line = [0u8; LINE_MAX];
    let mut len = 0;
    loop {
        match next_byte() {
            b'\r' | b'\n' if len == 0 => {}
            b'\r' | b'\n' => break,
            byte => {
                if let Some(slot) = line.get_mut(len) {
                    *slot = byte;
                    len += 1;
                }
            }
        }
    }
    cli();
    outb(IER, 0);
    send(b"got: ");
    send(line.get(..len).unwrap_or_default());
    send(b"\n");
    stop(0)
}
