//! x86_64 architecture support: the only place (with `mm::paging`, `vmx` and the
//! consoles) that touches hardware directly. Each file wraps one hardware concept.

pub mod cmos;
pub mod cpuid;
pub mod gdt;
pub mod idt;
pub mod lapic;
pub mod msr;
pub mod percpu;
pub mod port;
pub mod smp;
pub mod tsc;

/// Stops this CPU for good: interrupts off, then `hlt` forever (an NMI only wakes
/// it to halt again).
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
