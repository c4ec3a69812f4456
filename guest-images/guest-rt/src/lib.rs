//! The runtime of the test guests: console output through the `CONSOLE_WRITE`
//! hypercall, `PASS`/`FAIL` verdict lines that the scenarios judge, stopping the
//! partition, and a panic handler that reports `FAIL` and stops.
//!
//! For the interrupt guests it also has an IDT covering all 256 vectors
//! ([`exceptions`] for 0-31, [`interrupts`] for NMI and 32-255), local APIC
//! ([`lapic`]) and I/O APIC ([`ioapic`]) helpers, and multiprocessor start-up
//! ([`smp`]). The console is safe to use from several vCPUs at once.
#![no_std]

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicUsize, Ordering};

pub mod bench;
pub mod cmos;
pub mod interrupts;
pub mod ioapic;
pub mod lapic;
pub mod pic8259;
pub mod port;
pub mod smp;

pub use hv_abi;
use hv_abi::{guest::hypercall, hypercall as hc};

/// The console, as a `fmt::Write` target.
pub struct Console;

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for chunk in s.as_bytes().chunks(hv_abi::CONSOLE_WRITE_MAX as usize) {
            // SAFETY: runs in a guest of this hypervisor; the pointer and length describe
            // `chunk`, which lives in the guest's identity-mapped RAM.
            unsafe { hypercall(hc::CONSOLE_WRITE, chunk.as_ptr() as u64, chunk.len() as u64, 0, 0) };
        }
        Ok(())
    }
}

/// A line being formatted: sent in one hypercall when full or dropped.
pub struct LineBuffer {
    buf: [u8; hv_abi::CONSOLE_WRITE_MAX as usize],
    len: usize,
}

impl LineBuffer {
    pub const fn new() -> Self {
        Self { buf: [0; hv_abi::CONSOLE_WRITE_MAX as usize], len: 0 }
    }

    fn flush(&mut self) {
        if self.len > 0 {
            // Console::write_str never fails.
            let _ = Console.write_str(core::str::from_utf8(&self.buf[..self.len]).unwrap_or("?"));
            self.len = 0;
        }
    }
}

impl Default for LineBuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl Write for LineBuffer {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == self.buf.len() {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

impl Drop for LineBuffer {
    fn drop(&mut self) {
        self.flush();
    }
}

/// The vCPU (see [`smp::cpu_index`]) holding the console lock, plus one; 0 when free.
static CONSOLE_OWNER: AtomicUsize = AtomicUsize::new(0);

/// Holds the console lock while alive (see [`console_lock`]).
pub struct ConsoleGuard {
    release: bool,
}

impl Drop for ConsoleGuard {
    fn drop(&mut self) {
        if self.release {
            CONSOLE_OWNER.store(0, Ordering::Release);
        }
    }
}

/// Takes the console lock, so that the lines of several vCPUs do not interleave. A vCPU
/// that already holds it (an interrupt or fault handler printing in the middle of a
/// line of its own vCPU) gets through without waiting instead of deadlocking.
pub fn console_lock() -> ConsoleGuard {
    let me = smp::cpu_index() + 1;
    if CONSOLE_OWNER.load(Ordering::Relaxed) == me {
        return ConsoleGuard { release: false };
    }
    while CONSOLE_OWNER.compare_exchange_weak(0, me, Ordering::Acquire, Ordering::Relaxed).is_err() {
        core::hint::spin_loop();
    }
    ConsoleGuard { release: true }
}

/// Prints a line to the hypervisor console (one hypercall per line when it fits), under
/// the console lock.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _guard = $crate::console_lock();
        // Declared after the guard, so it is flushed before the lock is released.
        let mut line = $crate::LineBuffer::new();
        let _ = writeln!(line, $($arg)*);
    }};
}

/// Model-specific registers.
pub mod msr {
    /// RDMSR. An MSR that does not exist raises #GP (announce it with
    /// [`crate::exceptions::expect_fault`]`(2)` when that is the point).
    #[inline(always)]
    pub fn read(msr: u32) -> u64 {
        let (lo, hi): (u32, u32);
        // SAFETY: RDMSR only reads; a #GP on purpose is skipped by the guest's handler.
        unsafe { core::arch::asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nostack)) };
        (u64::from(hi) << 32) | u64::from(lo)
    }

    /// WRMSR (2 bytes: 0f 30).
    #[inline(always)]
    pub fn write(msr: u32, value: u64) {
        // SAFETY: the MSRs the guests write only affect this guest; a #GP on purpose is
        // skipped by the guest's handler.
        unsafe {
            core::arch::asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack));
        }
    }
}

/// Issues a raw hypercall (for tests of the hypercall interface itself).
pub fn raw_hypercall(nr: u64, a: u64, b: u64, c: u64, d: u64) -> u64 {
    // SAFETY: runs in a guest of this hypervisor; a bad pointer argument is exactly
    // what some tests pass on purpose, and the hypervisor validates it.
    unsafe { hypercall(nr, a, b, c, d) }
}

/// This vCPU's id.
pub fn vcpu_id() -> u64 {
    raw_hypercall(hc::VCPU_ID, 0, 0, 0, 0)
}

/// Stops the partition with `code`.
pub fn stop(code: u64) -> ! {
    raw_hypercall(hc::PARTITION_STOP, code, 0, 0, 0);
    // PARTITION_STOP does not return; if it ever did, spin without exits.
    loop {
        core::hint::spin_loop();
    }
}

/// Records one check: prints `PASS name: what` or `FAIL name: what` and returns `ok`.
pub fn check(name: &str, what: &str, ok: bool) -> bool {
    println!("{} {name}: {what}", if ok { "PASS" } else { "FAIL" });
    ok
}

/// [`check`] with a formatted description (`format_args!`).
pub fn check_fmt(name: &str, what: fmt::Arguments<'_>, ok: bool) -> bool {
    println!("{} {name}: {what}", if ok { "PASS" } else { "FAIL" });
    ok
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    println!("FAIL guest panic: {info}");
    stop(1)
}

/// Exceptions inside the guest: an IDT whose 32 exception gates record what happened
/// and, when the test announced the fault with [`expect_fault`], resume after the
/// faulting instruction. An unannounced exception prints `FAIL` and stops the guest.
///
/// The same IDT has gates for all 256 vectors: NMI (2) and vectors 32-255 go to
/// [`crate::interrupts`], which counts them and sends the EOI. The announcement state
/// is global, so announce faults on one vCPU at a time.
pub mod exceptions {
    use core::sync::atomic::{AtomicU64, Ordering};

    /// What the last exception was.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Seen {
        pub vector: u64,
        pub error_code: u64,
        pub rip: u64,
        pub cr2: u64,
    }

    static VECTOR: AtomicU64 = AtomicU64::new(u64::MAX);
    static ERROR: AtomicU64 = AtomicU64::new(0);
    static RIP: AtomicU64 = AtomicU64::new(0);
    static CR2: AtomicU64 = AtomicU64::new(0);
    /// Bytes to skip after the announced faulting instruction (0: not announced;
    /// [`TRAP`]: an announced trap, resumed where it reports).
    static SKIP: AtomicU64 = AtomicU64::new(0);
    const TRAP: u64 = u64::MAX;
    /// Exceptions taken, per vector.
    static COUNTS: [AtomicU64; 32] = [const { AtomicU64::new(0) }; 32];
    /// DR6 at the last #DB.
    static DR6: AtomicU64 = AtomicU64::new(0);
    /// The #DB vector and RFLAGS.TF.
    const DB: u64 = 1;
    const RFLAGS_TF: u64 = 1 << 8;

    #[repr(C)]
    struct Frame {
        r11: u64,
        r10: u64,
        r9: u64,
        r8: u64,
        rdx: u64,
        rcx: u64,
        rax: u64,
        rsi: u64,
        rdi: u64,
        vector: u64,
        error_code: u64,
        rip: u64,
        cs: u64,
        rflags: u64,
        rsp: u64,
        ss: u64,
    }

    // Vectors with a CPU-pushed error code: 8, 10-14, 17, 21, 29, 30. Every stub is 16
    // bytes (push imm8, push imm32, jmp rel32 at most); the frame is the same for all
    // (an error code or a 0 in its place), which keeps RSP 16-byte aligned at the call.
    core::arch::global_asm!(
        r#"
        .section .text.guest_exceptions, "ax"
        .balign 16
        .global guest_rt_exception_stubs
    guest_rt_exception_stubs:
        .set vec, 0
        .rept 256
        .balign 16
        .if (vec == 8) | (vec == 10) | (vec == 11) | (vec == 12) | (vec == 13) | (vec == 14) | (vec == 17) | (vec == 21) | (vec == 29) | (vec == 30)
        .else
        push 0
        .endif
        push vec
        jmp guest_rt_exception_common
        .set vec, vec + 1
        .endr
    guest_rt_exception_common:
        push rdi
        push rsi
        push rax
        push rcx
        push rdx
        push r8
        push r9
        push r10
        push r11
        mov rdi, rsp
        cld
        call {handler}
        pop r11
        pop r10
        pop r9
        pop r8
        pop rdx
        pop rcx
        pop rax
        pop rsi
        pop rdi
        add rsp, 16
        iretq
        .text
        "#,
        handler = sym on_exception,
    );

    extern "C" {
        static guest_rt_exception_stubs: [u8; 256 * 16];
    }

    #[repr(C, align(16))]
    struct Idt([[u64; 2]; 256]);
    static mut IDT: Idt = Idt([[0; 2]; 256]);

    extern "C" fn on_exception(frame: &mut Frame) {
        if frame.vector == 2 || frame.vector >= 32 {
            crate::interrupts::dispatch(frame.vector as u8);
            return;
        }
        let cr2: u64;
        // SAFETY: reading CR2 has no side effects (the guest runs in ring 0).
        unsafe { core::arch::asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack)) };
        if let Some(count) = COUNTS.get(frame.vector as usize) {
            count.fetch_add(1, Ordering::SeqCst);
        }
        if frame.vector == DB {
            let dr6: u64;
            // SAFETY: reading DR6 has no side effects (the guest runs in ring 0).
            unsafe { core::arch::asm!("mov {}, dr6", out(reg) dr6, options(nomem, nostack)) };
            DR6.store(dr6, Ordering::SeqCst);
            // A single-step trap: resume without TF, so that it traps once.
            frame.rflags &= !RFLAGS_TF;
        }
        VECTOR.store(frame.vector, Ordering::SeqCst);
        ERROR.store(frame.error_code, Ordering::SeqCst);
        RIP.store(frame.rip, Ordering::SeqCst);
        CR2.store(cr2, Ordering::SeqCst);
        match SKIP.swap(0, Ordering::SeqCst) {
            0 => {
                crate::println!(
                    "FAIL unexpected exception: vector {} error {:#x} at rip {:#x} (cr2 {:#x})",
                    frame.vector,
                    frame.error_code,
                    frame.rip,
                    cr2
                );
                crate::stop(1)
            }
            // A trap (#BP) already reports the next instruction.
            TRAP => {}
            // A fault reports the faulting instruction: resume after it.
            n => frame.rip = frame.rip.wrapping_add(n),
        }
    }

    /// Installs the IDT (256 64-bit interrupt gates, code selector 0x08 of the boot GDT)
    /// on the boot vCPU; other vCPUs [`load`] it.
    pub fn install() {
        let base = core::ptr::addr_of!(guest_rt_exception_stubs) as u64;
        for v in 0..256u64 {
            let h = base + v * 16;
            let low = (h & 0xffff) | (0x08 << 16) | (0x8e00 << 32) | ((h >> 16) & 0xffff) << 48;
            // SAFETY: the IDT is written before it is loaded, by the boot vCPU, before any
            // other vCPU runs.
            unsafe { (*core::ptr::addr_of_mut!(IDT)).0[v as usize] = [low, h >> 32] };
        }
        load();
    }

    /// Points `vector`'s gate at `handler` as an interrupt gate that ring 3 may reach
    /// with `INT vector` (DPL 3), for tests that run code at CPL 3. Call after
    /// [`install`], on the boot vCPU, before any other vCPU runs.
    pub fn set_user_gate(vector: u8, handler: u64) {
        let h = handler;
        let low = (h & 0xffff) | (0x08 << 16) | (0xee00 << 32) | ((h >> 16) & 0xffff) << 48;
        // SAFETY: as in `install`: one gate, written by the boot vCPU while no other vCPU
        // runs; the CPU reads it only when the vector is raised.
        unsafe { (*core::ptr::addr_of_mut!(IDT)).0[usize::from(vector)] = [low, h >> 32] };
    }

    /// Loads the IDT that [`install`] filled into this vCPU's IDTR.
    pub fn load() {
        let limit = (core::mem::size_of::<Idt>() - 1) as u16;
        let mut pointer = [0u8; 10];
        pointer[..2].copy_from_slice(&limit.to_le_bytes());
        pointer[2..].copy_from_slice(&(core::ptr::addr_of!(IDT) as u64).to_le_bytes());
        // SAFETY: the IDT is static and its gates point at the stubs above.
        unsafe { core::arch::asm!("lidt [{}]", in(reg) pointer.as_ptr(), options(nostack)) };
    }

    /// Announces that the next instruction faults and is `len` bytes long.
    pub fn expect_fault(len: u64) {
        VECTOR.store(u64::MAX, Ordering::SeqCst);
        SKIP.store(len, Ordering::SeqCst);
    }

    /// Announces that the next instruction traps (the CPU resumes after it).
    pub fn expect_trap() {
        VECTOR.store(u64::MAX, Ordering::SeqCst);
        SKIP.store(TRAP, Ordering::SeqCst);
    }

    /// Runs `f`, which must execute one instruction of `len` bytes that is expected to
    /// fault, and returns the exception it raised (`None`, and the announcement is
    /// withdrawn, if it did not fault).
    pub fn fault_of(len: u64, f: impl FnOnce()) -> Option<Seen> {
        expect_fault(len);
        f();
        let s = seen();
        if s.is_none() {
            SKIP.store(0, Ordering::SeqCst);
        }
        s
    }

    /// Whether `f` (one RDMSR or WRMSR, 2 bytes) raises #GP(0).
    pub fn msr_gp(f: impl FnOnce()) -> bool {
        fault_of(2, f).is_some_and(|s| s.vector == 13 && s.error_code == 0)
    }

    /// How many exceptions of `vector` (0-31) this guest has taken.
    pub fn count(vector: u8) -> u64 {
        COUNTS.get(usize::from(vector)).map_or(0, |c| c.load(Ordering::SeqCst))
    }

    /// DR6 as the last #DB handler found it (the handler also clears RFLAGS.TF in the
    /// frame it returns to).
    pub fn last_dr6() -> u64 {
        DR6.load(Ordering::SeqCst)
    }

    /// Clears DR6 (its reserved bits read as 1 whatever is written).
    pub fn clear_dr6() {
        // SAFETY: the guest runs in ring 0; DR6 only reports debug conditions.
        unsafe { core::arch::asm!("mov dr6, {}", in(reg) 0u64, options(nomem, nostack)) };
    }

    /// The exception seen since the last [`expect_fault`], if any.
    pub fn seen() -> Option<Seen> {
        match VECTOR.load(Ordering::SeqCst) {
            u64::MAX => None,
            vector => Some(Seen {
                vector,
                error_code: ERROR.load(Ordering::SeqCst),
                rip: RIP.load(Ordering::SeqCst),
                cr2: CR2.load(Ordering::SeqCst),
            }),
        }
    }
}
