//! `guest-bench`: measures, with RDTSC, the round trip of the exits a guest causes most
//! often (CPUID, the null hypercall, OUT to an unclaimed port, RDMSR of a virtualized
//! MSR) and a native baseline (two back-to-back RDTSC reads; an empty loop of a known
//! instruction count).
//!
//! For each metric: `WARMUP` untimed rounds, then `SAMPLES` timed ones kept in a static
//! array, sorted in place, and one line in a fixed form that `cargo xtask bench` parses:
//!
//! ```text
//! bench: exit.cpuid n=10000 min=123 median=130 p99=150 max=900
//! bench: native.loop n=10000 min=3000 median=3010 p99=3050 max=3100 insns=201
//! ```
//!
//! All values are TSC ticks of one timed round, the RDTSC overhead included (subtract
//! `native.rdtsc` for the operation alone). `insns` is the instruction count of the
//! timed operation, for the native loop only.
#![no_std]
#![no_main]

use core::arch::asm;
use core::arch::x86_64::_rdtsc;
use core::cell::UnsafeCell;

use guest_rt::bench::sort;
use guest_rt::hv_abi::{guest::hypercall, hypercall as hc};
use guest_rt::{check, println, stop};

const NAME: &str = "guest-bench";
/// Untimed rounds before the timed ones (caches, TLB, branch predictors).
const WARMUP: usize = 1_000;
/// Timed rounds per metric.
const SAMPLES: usize = 10_000;
/// An unclaimed I/O port (the POST-code port: every port exits, unclaimed ones ignore
/// writes).
const PORT: u16 = 0x80;
/// IA32_FEATURE_CONTROL: virtualized, reads 1 (locked, VMX off).
const MSR_FEATURE_CONTROL: u32 = 0x3a;
/// Iterations of the native loop; it runs `1 + 2 * LOOP_ITERATIONS` instructions.
const LOOP_ITERATIONS: u32 = 100;
const LOOP_INSTRUCTIONS: u32 = 1 + 2 * LOOP_ITERATIONS;

/// The sample buffer, reused by every metric (no allocation; 80 KiB of .bss).
struct Samples(UnsafeCell<[u64; SAMPLES]>);

// SAFETY: the guest runs on one vCPU and only `_start`'s call chain touches the buffer.
unsafe impl Sync for Samples {}

static SAMPLES_BUF: Samples = Samples(UnsafeCell::new([0; SAMPLES]));

/// LFENCE as inline assembly: `_mm_lfence` is an SSE2 intrinsic, which this soft-float
/// target turns into an out-of-line call.
#[inline(always)]
fn lfence() {
    // SAFETY: LFENCE only orders instruction execution.
    unsafe { asm!("lfence", options(nostack, preserves_flags)) };
}

/// A serialized TSC read: the `lfence` before keeps earlier instructions from drifting
/// past it, the one after keeps later ones from starting before it.
#[inline(always)]
fn tsc() -> u64 {
    lfence();
    // SAFETY: RDTSC has no memory effects and is allowed at CPL 0.
    let t = unsafe { _rdtsc() };
    lfence();
    t
}

#[inline(always)]
fn op_none() {}

#[inline(always)]
fn op_loop() {
    // SAFETY: only ECX and the flags change, both declared.
    unsafe {
        asm!(
            "mov ecx, {n}",
            "2:",
            "dec ecx",
            "jnz 2b",
            n = const LOOP_ITERATIONS,
            out("ecx") _,
            options(nomem, nostack),
        );
    }
}

#[inline(always)]
fn op_cpuid() -> u32 {
    let eax: u32;
    // SAFETY: CPUID only writes EAX..EDX. RBX is reserved by LLVM, so it is saved in a
    // scratch register around the instruction.
    unsafe {
        asm!(
            "mov {save}, rbx",
            "cpuid",
            "mov rbx, {save}",
            save = out(reg) _,
            inout("eax") 0u32 => eax,
            inout("ecx") 0u32 => _,
            out("edx") _,
            options(nomem, nostack, preserves_flags),
        );
    }
    eax
}

#[inline(always)]
fn op_vmcall() -> u64 {
    // SAFETY: NOP takes no arguments and touches no guest memory.
    unsafe { hypercall(hc::NOP, 0, 0, 0, 0) }
}

#[inline(always)]
fn op_out() {
    // SAFETY: port 0x80 is claimed by no device: the hypervisor ignores the write.
    unsafe {
        asm!("out dx, al", in("dx") PORT, in("al") 0u8, options(nomem, nostack, preserves_flags));
    }
}

/// COM1's line status register: forwarded to the service partition's 16550 model when
/// the partition's config lists `com1`.
const COM1_LSR: u16 = 0x3fd;

#[inline(always)]
fn op_in_lsr() -> u8 {
    let lsr: u8;
    // SAFETY: a read of COM1's LSR, which the service partition's 16550 model answers
    // (no side effect on an idle UART).
    unsafe { asm!("in al, dx", in("dx") COM1_LSR, out("al") lsr, options(nomem, nostack, preserves_flags)) };
    lsr
}

/// The read-only constant register of the service partition's `mmio-test` page
/// (`hv_abi::platform::devices::MMIO_TEST_BASE` + 0x100).
const MMIO_TEST_CONSTANT: u64 = 0xfeb0_0100;

#[inline(always)]
fn op_mmio_read() -> u64 {
    // SAFETY: the page is identity-mapped by the boot page tables; the hypervisor
    // decodes the load and forwards it to the service partition (or, when the partition
    // has no such device, stops it: `forwarded_mmio` guards every use).
    unsafe { core::ptr::read_volatile(MMIO_TEST_CONSTANT as *const u64) }
}

#[inline(always)]
fn op_rdmsr() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the hypervisor virtualizes IA32_FEATURE_CONTROL; RDMSR only writes EDX:EAX.
    unsafe {
        asm!(
            "rdmsr",
            in("ecx") MSR_FEATURE_CONTROL,
            out("eax") lo,
            out("edx") hi,
            options(nomem, nostack, preserves_flags),
        );
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Runs `op` `WARMUP` times untimed and `SAMPLES` times timed, then prints the line.
/// `extra` is appended to the line as is (e.g. ` insns=201`).
#[inline(always)]
fn measure(name: &str, extra: &str, mut op: impl FnMut()) {
    for _ in 0..WARMUP {
        let t0 = tsc();
        op();
        let t1 = tsc();
        core::hint::black_box(t1.wrapping_sub(t0));
    }
    // SAFETY: the only reference to the buffer while it lives (one vCPU, no reentry).
    let samples = unsafe { &mut *SAMPLES_BUF.0.get() };
    for slot in samples.iter_mut() {
        let t0 = tsc();
        op();
        let t1 = tsc();
        *slot = t1.wrapping_sub(t0);
    }
    sort(samples);
    let n = samples.len();
    let p99 = samples[(n * 99 / 100).min(n - 1)];
    println!(
        "bench: {name} n={n} min={} median={} p99={p99} max={}{extra}",
        samples[0],
        samples[n / 2],
        samples[n - 1]
    );
}

/// Entry point (see `hv_abi::start`): RDI = vCPU id, RSI = RAM size in bytes.
#[no_mangle]
#[link_section = ".text._start"]
pub extern "C" fn _start(_vcpu: u64, _ram_bytes: u64) -> ! {
    let mut ok = true;
    // The operations do what the measurements assume.
    ok &= check(NAME, "NOP hypercall returns 0", op_vmcall() == 0);
    ok &= check(NAME, "RDMSR IA32_FEATURE_CONTROL reads 1", op_rdmsr() == 1);
    ok &= check(NAME, "CPUID leaf 0 reports a highest leaf", op_cpuid() > 0);
    op_out();
    // An idle 16550 reports THRE and TEMT; all-ones means no service partition answered.
    let forwarded = op_in_lsr() & 0x60 == 0x60 && op_in_lsr() != 0xff;
    if !forwarded {
        println!("{NAME}: COM1 is not forwarded to a service partition; io.forwarded_port is not measured");
    }
    let mut sorted = [5u64, 1, 4, 1, 3, 9, 2, 6, 0, 8];
    sort(&mut sorted);
    ok &= check(NAME, "sort works", sorted == [0, 1, 1, 2, 3, 4, 5, 6, 8, 9]);

    let started = tsc();
    measure("native.rdtsc", "", op_none);
    measure("native.loop", LOOP_SUFFIX, op_loop);
    measure("exit.cpuid", "", || {
        core::hint::black_box(op_cpuid());
    });
    measure("exit.vmcall", "", || {
        core::hint::black_box(op_vmcall());
    });
    measure("exit.io_unclaimed", "", op_out);
    measure("exit.rdmsr", "", || {
        core::hint::black_box(op_rdmsr());
    });
    if forwarded {
        measure("io.forwarded_port", "", || {
            core::hint::black_box(op_in_lsr());
        });
        // The bench config gives the partition the mmio-test page along with COM1.
        let mmio_ok = op_mmio_read() == 0x1122_3344_5566_7788;
        ok &= check(NAME, "the mmio-test page's constant reads back", mmio_ok);
        if mmio_ok {
            measure("io.forwarded_mmio", "", || {
                core::hint::black_box(op_mmio_read());
            });
        }
    }
    println!("{NAME}: all metrics took {} tsc ticks", tsc().wrapping_sub(started));

    if ok {
        println!("PASS {NAME}");
    }
    stop(if ok { 0 } else { 1 })
}

/// The `insns=` suffix of the `native.loop` line.
const LOOP_SUFFIX: &str = " insns=201";
const _: () = assert!(LOOP_INSTRUCTIONS == 201, "update LOOP_SUFFIX");
