//! `guest-mmio`: every MMIO instruction form the hypervisor decodes
//! (`hv_core::mmio_decode`), against the `mmio-test` page at 0xFEB0_0000, whose accesses
//! the hypervisor decodes and forwards to the service partition's `hv_devices`
//! `MmioScratch` model. Run with the `mmio-test` device.
//!
//! The page (identity-mapped by the boot page tables): offsets 0x000-0x0FF are 32
//! read/write 64-bit scratch registers that behave as little-endian memory (any size at
//! any offset, a write changes only its bytes); 0x100 reads the constant
//! 0x1122_3344_5566_7788 (writes ignored); 0x108 counts the write accesses (read-only);
//! the rest reads 0 and ignores writes.
//!
//! Every form is run twice with the same registers: once on the device, once on an
//! ordinary RAM copy of the registers it touches (the CPU's own execution is the
//! reference), and the results must agree: the destination register, the status flags
//! (CF, PF, ZF, SF, OF, and AF for ADD/SUB/CMP; none for MOV forms), the memory
//! contents (for the read-only constant: unchanged), and the write counter (one per
//! store, read-modify-write or string element; none for loads, CMP, TEST and
//! register-destination forms). Each form is tried at several offsets (aligned,
//! unaligned, straddling two registers) and with several values. The forms:
//!
//! - plain `read_volatile` / `write_volatile` of 1, 2, 4 and 8 bytes;
//! - `MOV` store (88/89) from r8 (also AH, CH, DH, BH, SIL, R9B), r16, r32, r64; load
//!   (8A/8B) into the same registers (loads merge into the register as the CPU does);
//! - `MOV` with a 64-bit direct address (A0-A3: AL, AX, EAX, RAX, both directions);
//! - `MOV` immediate (C6, C7 with 16-, 32- and sign-extended 32-bit immediates);
//! - `MOVZX` / `MOVSX` from 8 and 16 bits into r16, r32, r64, and `MOVSXD`;
//! - `STOS` b/w/d/q, `REP STOS` b/w/d/q, and `REP STOSD` with RFLAGS.DF = 1;
//! - `ADD`/`OR`/`AND`/`SUB`/`XOR` with a memory destination and a register source
//!   (00-31, also a high-byte register) or an immediate (80, 81, 83), and with a
//!   register destination (02-33, also AH), 1/2/4/8 bytes;
//! - `CMP` (38/39, 3A/3B, 80/81/83 /7) and `TEST` (84/85, F6/F7 /0 and the /1 alias),
//!   whose flags are also checked against fixed expectations on the constant register.
//!
//! Besides: the constant and the counter read back at every size and offset, writes to
//! them and to reserved offsets are ignored (but counted), reserved offsets read 0.
//!
//! Last, a page fault on the hypervisor's own instruction fetch ([`fetch_fault`]): a
//! `mov eax, [rdi]` on its own code page, mapped at 4 GiB through 4 KiB page tables
//! this guest adds, is executed once on RAM (which loads the translation into the TLB),
//! then its PTE is cleared without INVLPG and it is executed on the device page. The
//! processor runs it from the stale TLB entry and exits; the hypervisor's walk of the
//! guest's tables fails, so the guest must get #PF (CR2 = the page, error code 0x10 with
//! EFER.NXE: not present, supervisor, instruction fetch) at the instruction, not after
//! it. Its #PF handler restores the PTE (with INVLPG) and returns; the retried load must
//! then read the device. The hypervisor logs `MMIO instruction fetch at 0x100000000
//! failed: injected #PF (error code 0x10, CR2 0x100000000)`; the scenario requires it
//! (it proves the fault came from the hypervisor, not from the processor's own walk).
//!
//! Expected console lines (prefix = the partition's name in the config, e.g. `[mmio]`),
//! in this order, among the `PASS guest-mmio: ...` group lines (N is the number of
//! forms, see [`Ctx::forms`]):
//! ```text
//! [mmio] mmio: N instruction forms checked
//! [mmio] PASS guest-mmio
//! ```
//! With 18 MiB of RAM it runs none of this: it tries one instruction the hypervisor
//! does not emulate (`LOCK CMPXCHG` on the page), prints `mmio: trying LOCK CMPXCHG on
//! the device page, which is not emulated`, and must be stopped by the hypervisor.
//!
//! On a mismatch: `FAIL guest-mmio: <form> ...` with the values seen and expected (at
//! most 30 such lines), then `FAIL guest-mmio: <group>`, `FAIL guest-mmio`, and the
//! guest stops with code 1.
#![no_std]
#![no_main]

use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{AtomicU64, Ordering};

use guest_rt::hv_abi::platform::devices::MMIO_TEST_BASE;
use guest_rt::{check_fmt, exceptions, println, stop};

const NAME: &str = "guest-mmio";
/// The RAM size (18 MiB) that makes this guest try an instruction the hypervisor does
/// not emulate instead of its checks ([`unemulated_instruction`]).
const UNEMULATED_RAM_BYTES: u64 = 18 << 20;
const BASE: u64 = MMIO_TEST_BASE;
const CONSTANT_OFFSET: u64 = 0x100;
const CONSTANT: u64 = 0x1122_3344_5566_7788;
const COUNTER_OFFSET: u64 = 0x108;
const SCRATCH_END: u64 = 0x100;

// RFLAGS status flags.
const CF: u64 = 1 << 0;
const PF: u64 = 1 << 2;
const AF: u64 = 1 << 4;
const ZF: u64 = 1 << 6;
const SF: u64 = 1 << 7;
const OF: u64 = 1 << 11;
/// Flags compared after ADD, SUB and CMP.
const ARITH: u64 = CF | PF | AF | ZF | SF | OF;
/// Flags compared after AND, OR, XOR and TEST (AF is undefined).
const LOGIC: u64 = CF | PF | ZF | SF | OF;
/// MOV forms leave the flags alone: nothing to compare.
const NONE: u64 = 0;

/// Most failure lines printed.
const MAX_FAILURE_LINES: u32 = 30;

/// What the run has seen so far.
struct Ctx {
    /// Instruction forms checked (each distinct encoding once, however many offsets and
    /// values it was tried with).
    forms: u32,
    /// Write accesses made to the device so far (what the counter must read).
    writes: u64,
    /// Mismatches in the current group.
    group_failures: u32,
    /// Mismatches printed.
    printed: u32,
    ok: bool,
}

impl Ctx {
    fn fail(&mut self, args: core::fmt::Arguments<'_>) {
        self.group_failures += 1;
        if self.printed < MAX_FAILURE_LINES {
            self.printed += 1;
            println!("FAIL {NAME}: {args}");
        }
    }

    /// Ends a group: the counter must show every write made so far.
    fn group(&mut self, what: &str, forms_before: u32) {
        let counter = counter();
        let writes = self.writes;
        if counter != writes {
            self.fail(format_args!("{what}: the write counter reads {counter}, expected {writes}"));
        }
        let forms = self.forms - forms_before;
        let ok =
            check_fmt(NAME, format_args!("{what}: {forms} form(s), write counter {counter}"), self.group_failures == 0);
        self.ok &= ok;
        self.group_failures = 0;
    }
}

/// 8-byte load of the device at `offset` (a plain `MOV r64, m64`).
fn dev_read64(offset: u64) -> u64 {
    // SAFETY: the mmio-test page is identity-mapped by the boot page tables and is
    // emulated device memory (never RAM); `offset` is 8-byte aligned and inside it.
    unsafe { read_volatile((BASE + offset) as *const u64) }
}

/// 8-byte store to the device at `offset`; counts the write.
fn dev_write64(ctx: &mut Ctx, offset: u64, value: u64) {
    // SAFETY: as in `dev_read64`.
    unsafe { write_volatile((BASE + offset) as *mut u64, value) };
    ctx.writes += 1;
}

fn counter() -> u64 {
    dev_read64(COUNTER_OFFSET)
}

/// An instruction form as a function of (memory address, register value) returning
/// (register value after, RFLAGS after).
type Form = fn(u64, u64) -> (u64, u64);

/// Builds a [`Form`] from an instruction template: `{m}` is the register holding the
/// memory address; in the first arm `{r}` is a general register holding the register
/// operand (`{r:l}`, `{r:x}`, `{r:e}` for its 8-, 16- and 32-bit parts); in the second
/// the template names the register (e.g. `ah`) and the literal is the 64-bit register
/// that holds it (`"rax"`); the `imm` arm has no register operand (the register value
/// passes through). RFLAGS is captured right after the instruction.
macro_rules! form {
    ($insn:expr) => {{
        fn run(m: u64, r: u64) -> (u64, u64) {
            let mut r = r;
            let flags: u64;
            // SAFETY: `m` points at the mmio-test page or at a RAM copy of registers in
            // this guest that the caller owns, with room for the access; the
            // instruction touches only that memory and the named registers.
            unsafe {
                core::arch::asm!(
                    concat!($insn, "\n", "pushfq", "\n", "pop {flags}"),
                    m = in(reg) m,
                    r = inout(reg) r,
                    flags = out(reg) flags,
                );
            }
            (r, flags)
        }
        run as Form
    }};
    ($insn:expr, imm) => {{
        fn run(m: u64, r: u64) -> (u64, u64) {
            let flags: u64;
            // SAFETY: as in the first arm.
            unsafe {
                core::arch::asm!(
                    concat!($insn, "\n", "pushfq", "\n", "pop {flags}"),
                    m = in(reg) m,
                    flags = out(reg) flags,
                );
            }
            (r, flags)
        }
        run as Form
    }};
    ($insn:expr, $reg:tt) => {{
        fn run(m: u64, r: u64) -> (u64, u64) {
            let mut r = r;
            let flags: u64;
            // SAFETY: as in the first arm.
            unsafe {
                core::arch::asm!(
                    concat!($insn, "\n", "pushfq", "\n", "pop {flags}"),
                    m = in(reg) m,
                    flags = out(reg) flags,
                    inout($reg) r,
                );
            }
            (r, flags)
        }
        run as Form
    }};
}

/// A form as run on the device and (`reference`) on RAM; they differ only for the
/// direct-address forms, whose address is part of the instruction.
#[derive(Clone, Copy)]
struct Pair {
    device: Form,
    reference: Form,
}

impl From<Form> for Pair {
    fn from(f: Form) -> Self {
        Self { device: f, reference: f }
    }
}

/// Runs a form at each of `offsets` with each (memory, register) value of `cases`, on
/// the device and on RAM, and compares register, flags (`mask`), memory and the write
/// counter (`writes` per run). Scratch offsets get the registers around them set first
/// (the memory value in the register holding `offset`, a derived value in the next); at
/// the constant (0x100) the memory is the constant and must stay so.
fn check(
    ctx: &mut Ctx,
    what: &str,
    pair: impl Into<Pair>,
    offsets: &[u64],
    cases: &[(u64, u64)],
    writes: u64,
    mask: u64,
) {
    let pair = pair.into();
    ctx.forms += 1;
    for &offset in offsets {
        for &(mem, reg) in cases {
            let slot = offset & !7;
            let read_only = slot >= SCRATCH_END;
            let second = slot + 8 < SCRATCH_END;
            let mut ram = [0u64; 2];
            if read_only {
                ram[0] = dev_read64(slot);
            } else {
                ram = [mem, mem.rotate_left(19) ^ 0x5A5A_A5A5_0FF0_F00F];
                dev_write64(ctx, slot, ram[0]);
                if second {
                    dev_write64(ctx, slot + 8, ram[1]);
                }
            }
            let before = ram;
            let ram_address = ram.as_mut_ptr() as u64 + (offset & 7);
            let (want_reg, want_flags) = (pair.reference)(ram_address, reg);
            // SAFETY: `ram` is this function's own array, which the reference run may
            // have written through its address.
            let mut want_mem = unsafe { [read_volatile(&ram[0]), read_volatile(&ram[1])] };
            if read_only {
                want_mem[0] = before[0];
            }
            let count_before = counter();
            let (got_reg, got_flags) = (pair.device)(BASE + offset, reg);
            let count_after = counter();
            ctx.writes += writes;
            let got_mem = [dev_read64(slot), if second { dev_read64(slot + 8) } else { 0 }];
            if !second {
                want_mem[1] = 0;
            }
            let got_writes = count_after.wrapping_sub(count_before);
            if got_reg != want_reg {
                ctx.fail(format_args!(
                    "{what} at {offset:#x} (memory {mem:#x}, register {reg:#x}): register {got_reg:#x}, expected {want_reg:#x}"
                ));
            }
            if got_flags & mask != want_flags & mask {
                ctx.fail(format_args!(
                    "{what} at {offset:#x} (memory {mem:#x}, register {reg:#x}): flags {:#x}, expected {:#x}",
                    got_flags & mask,
                    want_flags & mask
                ));
            }
            if got_mem != want_mem {
                ctx.fail(format_args!(
                    "{what} at {offset:#x} (memory {mem:#x}, register {reg:#x}): memory {got_mem:#x?}, expected {want_mem:#x?}"
                ));
            }
            if got_writes != writes {
                ctx.fail(format_args!("{what} at {offset:#x}: {got_writes} writes counted, expected {writes}"));
            }
        }
    }
}

/// A `STOS` form as a function of (rDI, rCX, rAX) returning (rDI, rCX) after.
type StringForm = fn(u64, u64, u64) -> (u64, u64);

macro_rules! string_form {
    ($insn:expr) => {{
        fn run(rdi: u64, rcx: u64, rax: u64) -> (u64, u64) {
            let (mut di, mut cx) = (rdi, rcx);
            // SAFETY: rDI points at the mmio-test page or a RAM array of the caller with
            // room for every element; DF is clear again when the template ends.
            unsafe { core::arch::asm!($insn, inout("rdi") di, inout("rcx") cx, in("rax") rax) };
            (di, cx)
        }
        run as StringForm
    }};
}

/// The scratch registers `STOS` checks use: 0x40-0x5F.
const STRING_AREA: u64 = 0x40;
const STRING_WORDS: usize = 4;

/// Runs a `STOS` form with rDI at `offset`, rCX = `count`, rAX = a pattern, on the
/// device and on RAM, and compares rDI's movement, rCX, the memory of 0x40-0x5F and the
/// write counter (`elements` writes).
fn check_string(ctx: &mut Ctx, what: &str, f: StringForm, offset: u64, count: u64, elements: u64) {
    ctx.forms += 1;
    let rax = 0x8877_6655_4433_2211;
    let mut ram = [0u64; STRING_WORDS];
    for (i, word) in ram.iter_mut().enumerate() {
        *word = 0xA0A0_B0B0_C0C0_D0D0 ^ (i as u64 * 0x0101_0101_0101_0101);
        dev_write64(ctx, STRING_AREA + 8 * i as u64, *word);
    }
    let ram_start = ram.as_mut_ptr() as u64 + (offset - STRING_AREA);
    let (ram_di, ram_cx) = f(ram_start, count, rax);
    let mut want = [0u64; STRING_WORDS];
    for (w, r) in want.iter_mut().zip(&ram) {
        // SAFETY: `ram` is this function's own array, which the run may have written.
        *w = unsafe { read_volatile(r) };
    }
    let before = counter();
    let (dev_di, dev_cx) = f(BASE + offset, count, rax);
    let got_writes = counter().wrapping_sub(before);
    ctx.writes += elements;
    let mut got = [0u64; STRING_WORDS];
    for (i, g) in got.iter_mut().enumerate() {
        *g = dev_read64(STRING_AREA + 8 * i as u64);
    }
    let moved = (dev_di.wrapping_sub(BASE + offset), ram_di.wrapping_sub(ram_start));
    if moved.0 != moved.1 || dev_cx != ram_cx {
        ctx.fail(format_args!(
            "{what}: rdi moved {:#x} and rcx is {dev_cx}, expected {:#x} and {ram_cx}",
            moved.0, moved.1
        ));
    }
    if got != want {
        ctx.fail(format_args!("{what}: memory {got:#x?}, expected {want:#x?}"));
    }
    if got_writes != elements {
        ctx.fail(format_args!("{what}: {got_writes} writes counted, expected {elements}"));
    }
}

/// Values for loads and stores: (memory, register).
const MOVES: &[(u64, u64)] = &[(0x8877_6655_4433_2281, 0xAAAA_BBBB_CCCC_DDDD), (0x0102_0304_0506_0708, u64::MAX)];
/// Values for extensions: sign bits set and clear at every width.
const EXTENDS: &[(u64, u64)] = &[(0x8000_0000_8000_8080, 0x1111_2222_3333_4444), (0x7FFF_FFFF_7FFF_7F7F, u64::MAX)];
/// Values for ALU forms: carries out of every width (and zero results), signed
/// overflows, borrows.
const ALU: &[(u64, u64)] = &[
    (0x0123_4567_89AB_CDEF, 0xFEDC_BA98_7654_3211),
    (0x7FFF_FFFF_7FFF_7F7F, 0x0000_0001_0000_0101),
    (0, 1),
    (0x8000_0000_8000_8080, 0x8000_0000_8000_8080),
];
/// Byte offsets: aligned, unaligned, straddling two registers.
const AT_1: &[u64] = &[0x10, 0x1F, 0x23];
const AT_2: &[u64] = &[0x10, 0x1F, 0x25];
const AT_4: &[u64] = &[0x10, 0x1D, 0x2A];
const AT_8: &[u64] = &[0x10, 0x1B, 0x30];

/// Plain volatile accesses of every size against a byte model of the scratch area.
fn plain(ctx: &mut Ctx) {
    let start = ctx.forms;
    let mut model = [0u8; 64];
    let area = 0x60u64;
    for i in 0..8 {
        dev_write64(ctx, area + 8 * i, 0);
    }
    let read_all = |ctx: &mut Ctx, model: &[u8; 64], what: &str| {
        for offset in 0..64u64 {
            let byte = |o: u64| u64::from(model[o as usize]);
            let le = |n: u64| (0..n).rev().fold(0u64, |v, i| v << 8 | byte(offset + i));
            let at = BASE + area + offset;
            // SAFETY: `at` is inside the mmio-test page and aligned for each size read.
            let got = unsafe {
                [
                    Some(u64::from(read_volatile(at as *const u8))),
                    (offset % 2 == 0).then(|| u64::from(read_volatile(at as *const u16))),
                    (offset % 4 == 0).then(|| u64::from(read_volatile(at as *const u32))),
                    (offset % 8 == 0).then(|| read_volatile(at as *const u64)),
                ]
            };
            for (size, value) in [1u64, 2, 4, 8].into_iter().zip(got) {
                if let Some(value) = value.filter(|&v| v != le(size)) {
                    ctx.fail(format_args!(
                        "{what}: {size}-byte read at {:#x}: {value:#x}, expected {:#x}",
                        area + offset,
                        le(size)
                    ));
                }
            }
        }
    };
    let mut value = 0x0F1E_2D3C_4B5A_6978u64;
    for (size, offsets) in
        [(1u64, [0x01u64, 0x16, 0x2B]), (2, [0x02, 0x0E, 0x34]), (4, [0x04, 0x18, 0x2C]), (8, [0x00, 0x28, 0x38])]
    {
        ctx.forms += 2;
        for offset in offsets {
            value = value.rotate_left(13) ^ 0x9E37_79B9_7F4A_7C15;
            let at = BASE + area + offset;
            // SAFETY: `at` is inside the mmio-test page and aligned for `size`.
            unsafe {
                match size {
                    1 => write_volatile(at as *mut u8, value as u8),
                    2 => write_volatile(at as *mut u16, value as u16),
                    4 => write_volatile(at as *mut u32, value as u32),
                    _ => write_volatile(at as *mut u64, value),
                }
            }
            ctx.writes += 1;
            for i in 0..size {
                model[(offset + i) as usize] = value.to_le_bytes()[i as usize];
            }
        }
        read_all(ctx, &model, "plain");
    }
    ctx.group("plain volatile loads and stores (1, 2, 4, 8 bytes)", start);
}

/// The constant, the counter and the reserved offsets.
fn fixed_registers(ctx: &mut Ctx) {
    let start = ctx.forms;
    let at = |o: u64| BASE + o;
    // SAFETY: every address is inside the mmio-test page and aligned for its size.
    let reads = unsafe {
        [
            (read_volatile(at(0x100) as *const u64), CONSTANT),
            (u64::from(read_volatile(at(0x100) as *const u32)), 0x5566_7788),
            (u64::from(read_volatile(at(0x104) as *const u32)), 0x1122_3344),
            (u64::from(read_volatile(at(0x102) as *const u16)), 0x5566),
            (u64::from(read_volatile(at(0x107) as *const u8)), 0x11),
            (read_volatile(at(0x110) as *const u64), 0),
            (u64::from(read_volatile(at(0x800) as *const u32)), 0),
            (read_volatile(at(0xFF8) as *const u64), 0),
        ]
    };
    for (i, (got, want)) in reads.into_iter().enumerate() {
        if got != want {
            ctx.fail(format_args!("fixed read {i}: {got:#x}, expected {want:#x}"));
        }
    }
    // Writes to the read-only and reserved registers: ignored, counted.
    // SAFETY: as above.
    unsafe {
        write_volatile(at(0x100) as *mut u64, 0);
        write_volatile(at(0x104) as *mut u8, 0xFF);
        write_volatile(at(0x108) as *mut u64, 0x1234);
        write_volatile(at(0x800) as *mut u32, 0xDEAD_BEEF);
    }
    ctx.writes += 4;
    // SAFETY: as above.
    let after = unsafe { [read_volatile(at(0x100) as *const u64), u64::from(read_volatile(at(0x800) as *const u32))] };
    if after != [CONSTANT, 0] {
        ctx.fail(format_args!("writes to 0x100 and 0x800 were not ignored: {after:#x?}"));
    }
    // The counter at every size: its low bytes.
    let count = ctx.writes;
    // SAFETY: as above.
    let narrow = unsafe {
        [
            u64::from(read_volatile(at(0x108) as *const u8)),
            u64::from(read_volatile(at(0x108) as *const u16)),
            u64::from(read_volatile(at(0x108) as *const u32)),
        ]
    };
    if narrow != [count & 0xFF, count & 0xFFFF, count & 0xFFFF_FFFF] {
        ctx.fail(format_args!("narrow counter reads {narrow:#x?}, expected the low bytes of {count}"));
    }
    // An unaligned 8-byte load across the constant and the counter.
    let (got, _) = form!("mov {r}, qword ptr [{m}]")(at(0x104), 0);
    let want = 0x1122_3344 | (count & 0xFFFF_FFFF) << 32;
    if got != want {
        ctx.fail(format_args!("8-byte load at 0x104: {got:#x}, expected {want:#x}"));
    }
    ctx.forms += 1;
    ctx.group("constant, counter and reserved offsets", start);
}

/// MOV loads and stores with every register kind.
fn moves(ctx: &mut Ctx) {
    let start = ctx.forms;
    let stores: [(&str, Form, &[u64]); 13] = [
        ("mov m8, r8", form!("mov byte ptr [{m}], {r:l}"), AT_1),
        ("mov m8, ah", form!("mov byte ptr [{m}], ah", "rax"), AT_1),
        ("mov m8, ch", form!("mov byte ptr [{m}], ch", "rcx"), AT_1),
        ("mov m8, dh", form!("mov byte ptr [{m}], dh", "rdx"), AT_1),
        ("mov m8, bh", form!("xchg {r}, rbx\nmov byte ptr [{m}], bh\nxchg {r}, rbx"), AT_1),
        ("mov m8, sil", form!("mov byte ptr [{m}], sil", "rsi"), AT_1),
        ("mov m8, r9b", form!("mov byte ptr [{m}], r9b", "r9"), AT_1),
        ("mov m16, r16", form!("mov word ptr [{m}], {r:x}"), AT_2),
        ("mov m16, r10w", form!("mov word ptr [{m}], r10w", "r10"), AT_2),
        ("mov m32, r32", form!("mov dword ptr [{m}], {r:e}"), AT_4),
        ("mov m32, r11d", form!("mov dword ptr [{m}], r11d", "r11"), AT_4),
        ("mov m64, r64", form!("mov qword ptr [{m}], {r}"), AT_8),
        ("mov m64, r12", form!("mov qword ptr [{m}], r12", "r12"), AT_8),
    ];
    for (what, f, at) in stores {
        check(ctx, what, f, at, MOVES, 1, NONE);
    }
    let loads: [(&str, Form, &[u64]); 13] = [
        ("mov r8, m8", form!("mov {r:l}, byte ptr [{m}]"), AT_1),
        ("mov ah, m8", form!("mov ah, byte ptr [{m}]", "rax"), AT_1),
        ("mov ch, m8", form!("mov ch, byte ptr [{m}]", "rcx"), AT_1),
        ("mov dh, m8", form!("mov dh, byte ptr [{m}]", "rdx"), AT_1),
        ("mov bh, m8", form!("xchg {r}, rbx\nmov bh, byte ptr [{m}]\nxchg {r}, rbx"), AT_1),
        ("mov sil, m8", form!("mov sil, byte ptr [{m}]", "rsi"), AT_1),
        ("mov r9b, m8", form!("mov r9b, byte ptr [{m}]", "r9"), AT_1),
        ("mov r16, m16", form!("mov {r:x}, word ptr [{m}]"), AT_2),
        ("mov r10w, m16", form!("mov r10w, word ptr [{m}]", "r10"), AT_2),
        ("mov r32, m32", form!("mov {r:e}, dword ptr [{m}]"), AT_4),
        ("mov r11d, m32", form!("mov r11d, dword ptr [{m}]", "r11"), AT_4),
        ("mov r64, m64", form!("mov {r}, qword ptr [{m}]"), AT_8),
        ("mov r12, m64", form!("mov r12, qword ptr [{m}]", "r12"), AT_8),
    ];
    for (what, f, at) in loads {
        check(ctx, what, f, at, MOVES, 0, NONE);
    }
    // Loads from the constant.
    check(ctx, "mov r64, [constant]", form!("mov {r}, qword ptr [{m}]"), &[0x100], MOVES, 0, NONE);
    check(ctx, "mov r16, [constant + 2]", form!("mov {r:x}, word ptr [{m}]"), &[0x102], MOVES, 0, NONE);
    ctx.group("MOV register loads and stores (88, 89, 8A, 8B)", start);
}

/// The direct-address forms (A0-A3) at 0x20, against the equivalent ModR/M forms on RAM.
fn direct_address(ctx: &mut Ctx) {
    let start = ctx.forms;
    macro_rules! moffs {
        ($what:literal, $insn:literal, $reference:literal, $writes:literal) => {
            let pair = Pair { device: form!($insn, "rax"), reference: form!($reference, "rax") };
            check(ctx, $what, pair, &[0x20], MOVES, $writes, NONE);
        };
    }
    // The template's address must be MMIO_TEST_BASE + 0x20 (the `m` operand is unused
    // by the device run, but named so that the macro's templates all take it).
    moffs!("mov al, moffs8 (a0)", "movabs al, byte ptr [0xfeb00020] # {m}", "mov al, byte ptr [{m}]", 0);
    moffs!("mov ax, moffs16 (66 a1)", "movabs ax, word ptr [0xfeb00020] # {m}", "mov ax, word ptr [{m}]", 0);
    moffs!("mov eax, moffs32 (a1)", "movabs eax, dword ptr [0xfeb00020] # {m}", "mov eax, dword ptr [{m}]", 0);
    moffs!("mov rax, moffs64 (48 a1)", "movabs rax, qword ptr [0xfeb00020] # {m}", "mov rax, qword ptr [{m}]", 0);
    moffs!("mov moffs8, al (a2)", "movabs byte ptr [0xfeb00020], al # {m}", "mov byte ptr [{m}], al", 1);
    moffs!("mov moffs16, ax (66 a3)", "movabs word ptr [0xfeb00020], ax # {m}", "mov word ptr [{m}], ax", 1);
    moffs!("mov moffs32, eax (a3)", "movabs dword ptr [0xfeb00020], eax # {m}", "mov dword ptr [{m}], eax", 1);
    moffs!("mov moffs64, rax (48 a3)", "movabs qword ptr [0xfeb00020], rax # {m}", "mov qword ptr [{m}], rax", 1);
    ctx.group("MOV with a direct address (A0-A3)", start);
}

/// MOV with an immediate (C6, C7).
fn immediates(ctx: &mut Ctx) {
    let start = ctx.forms;
    check(ctx, "mov m8, imm8 (c6)", form!("mov byte ptr [{m}], 0x5a", imm), AT_1, MOVES, 1, NONE);
    check(ctx, "mov m16, imm16 (66 c7)", form!("mov word ptr [{m}], 0x1234", imm), AT_2, MOVES, 1, NONE);
    check(ctx, "mov m32, imm32 (c7)", form!("mov dword ptr [{m}], 0x89abcdef", imm), AT_4, MOVES, 1, NONE);
    check(ctx, "mov m64, imm32 < 0 (48 c7)", form!("mov qword ptr [{m}], -0x12345678", imm), AT_8, MOVES, 1, NONE);
    check(ctx, "mov m64, imm32 > 0 (48 c7)", form!("mov qword ptr [{m}], 0x7edcba98", imm), AT_8, MOVES, 1, NONE);
    ctx.group("MOV with an immediate (C6, C7)", start);
}

/// MOVZX, MOVSX, MOVSXD.
fn extensions(ctx: &mut Ctx) {
    let start = ctx.forms;
    let forms: [(&str, Form, &[u64]); 11] = [
        ("movzx r32, m8", form!("movzx {r:e}, byte ptr [{m}]"), AT_1),
        ("movzx r64, m8", form!("movzx {r}, byte ptr [{m}]"), AT_1),
        ("movzx r16, m8", form!("movzx {r:x}, byte ptr [{m}]"), AT_1),
        ("movzx r32, m16", form!("movzx {r:e}, word ptr [{m}]"), AT_2),
        ("movzx r64, m16", form!("movzx {r}, word ptr [{m}]"), AT_2),
        ("movsx r32, m8", form!("movsx {r:e}, byte ptr [{m}]"), AT_1),
        ("movsx r64, m8", form!("movsx {r}, byte ptr [{m}]"), AT_1),
        ("movsx r16, m8", form!("movsx {r:x}, byte ptr [{m}]"), AT_1),
        ("movsx r32, m16", form!("movsx {r:e}, word ptr [{m}]"), AT_2),
        ("movsx r64, m16", form!("movsx {r}, word ptr [{m}]"), AT_2),
        ("movsxd r64, m32", form!("movsxd {r}, dword ptr [{m}]"), AT_4),
    ];
    for (what, f, at) in forms {
        check(ctx, what, f, at, EXTENDS, 0, NONE);
    }
    ctx.group("MOVZX, MOVSX, MOVSXD", start);
}

/// STOS and REP STOS.
fn strings(ctx: &mut Ctx) {
    let start = ctx.forms;
    check_string(ctx, "stosb", string_form!("stosb"), 0x43, 0, 1);
    check_string(ctx, "stosw", string_form!("stosw"), 0x45, 0, 1);
    check_string(ctx, "stosd", string_form!("stosd"), 0x48, 0, 1);
    check_string(ctx, "stosq", string_form!("stosq"), 0x4B, 0, 1);
    check_string(ctx, "rep stosb", string_form!("rep stosb"), 0x41, 13, 13);
    check_string(ctx, "rep stosw", string_form!("rep stosw"), 0x42, 7, 7);
    check_string(ctx, "rep stosd", string_form!("rep stosd"), 0x44, 5, 5);
    check_string(ctx, "rep stosq", string_form!("rep stosq"), 0x40, 4, 4);
    check_string(ctx, "rep stosd with DF = 1", string_form!("std\nrep stosd\ncld"), 0x5C, 6, 6);
    ctx.group("STOS and REP STOS", start);
}

/// ADD, OR, AND, SUB, XOR in every form, 1/2/4/8 bytes.
fn arithmetic(ctx: &mut Ctx) {
    macro_rules! alu {
        ($op:literal, $mask:expr) => {{
            let start = ctx.forms;
            let forms: [(&str, Form, &[u64], u64); 15] = [
                (concat!($op, " m8, r8"), form!(concat!($op, " byte ptr [{m}], {r:l}")), AT_1, 1),
                (concat!($op, " m16, r16"), form!(concat!($op, " word ptr [{m}], {r:x}")), AT_2, 1),
                (concat!($op, " m32, r32"), form!(concat!($op, " dword ptr [{m}], {r:e}")), AT_4, 1),
                (concat!($op, " m64, r64"), form!(concat!($op, " qword ptr [{m}], {r}")), AT_8, 1),
                (concat!($op, " r8, m8"), form!(concat!($op, " {r:l}, byte ptr [{m}]")), AT_1, 0),
                (concat!($op, " r16, m16"), form!(concat!($op, " {r:x}, word ptr [{m}]")), AT_2, 0),
                (concat!($op, " r32, m32"), form!(concat!($op, " {r:e}, dword ptr [{m}]")), AT_4, 0),
                (concat!($op, " r64, m64"), form!(concat!($op, " {r}, qword ptr [{m}]")), AT_8, 0),
                (concat!($op, " m8, imm8 (80)"), form!(concat!($op, " byte ptr [{m}], 0x81"), imm), AT_1, 1),
                (concat!($op, " m16, imm16 (81)"), form!(concat!($op, " word ptr [{m}], 0x8234"), imm), AT_2, 1),
                (concat!($op, " m16, imm8 (83)"), form!(concat!($op, " word ptr [{m}], -3"), imm), AT_2, 1),
                (concat!($op, " m32, imm32 (81)"), form!(concat!($op, " dword ptr [{m}], 0x12345678"), imm), AT_4, 1),
                (concat!($op, " m32, imm8 (83)"), form!(concat!($op, " dword ptr [{m}], 0x7f"), imm), AT_4, 1),
                (concat!($op, " m64, imm32 (81)"), form!(concat!($op, " qword ptr [{m}], -0x789abcd"), imm), AT_8, 1),
                (concat!($op, " m64, imm8 (83)"), form!(concat!($op, " qword ptr [{m}], -1"), imm), AT_8, 1),
            ];
            for (what, f, at, writes) in forms {
                check(ctx, what, f, at, ALU, writes, $mask);
            }
            // On the read-only constant: the result is dropped, but the write is counted
            // and the flags are those of the operation.
            check(
                ctx,
                concat!($op, " [constant], r64"),
                form!(concat!($op, " qword ptr [{m}], {r}")),
                &[0x100],
                ALU,
                1,
                $mask,
            );
            check(
                ctx,
                concat!($op, " r64, [constant]"),
                form!(concat!($op, " {r}, qword ptr [{m}]")),
                &[0x100],
                ALU,
                0,
                $mask,
            );
            ctx.group(concat!($op, ": memory and register destinations, register and immediate sources"), start);
        }};
    }
    alu!("add", ARITH);
    alu!("or", LOGIC);
    alu!("and", LOGIC);
    alu!("sub", ARITH);
    alu!("xor", LOGIC);
    let start = ctx.forms;
    check(ctx, "xor m8, ch", form!("xor byte ptr [{m}], ch", "rcx"), AT_1, ALU, 1, LOGIC);
    check(ctx, "add ah, m8", form!("add ah, byte ptr [{m}]", "rax"), AT_1, ALU, 0, ARITH);
    ctx.group("ALU with high-byte registers", start);
}

/// CMP and TEST: flags only.
fn compares(ctx: &mut Ctx) {
    let start = ctx.forms;
    let forms: [(&str, Form, &[u64], u64); 18] = [
        ("cmp m8, r8", form!("cmp byte ptr [{m}], {r:l}"), AT_1, ARITH),
        ("cmp m16, r16", form!("cmp word ptr [{m}], {r:x}"), AT_2, ARITH),
        ("cmp m32, r32", form!("cmp dword ptr [{m}], {r:e}"), AT_4, ARITH),
        ("cmp m64, r64", form!("cmp qword ptr [{m}], {r}"), AT_8, ARITH),
        ("cmp r8, m8", form!("cmp {r:l}, byte ptr [{m}]"), AT_1, ARITH),
        ("cmp r16, m16", form!("cmp {r:x}, word ptr [{m}]"), AT_2, ARITH),
        ("cmp r32, m32", form!("cmp {r:e}, dword ptr [{m}]"), AT_4, ARITH),
        ("cmp r64, m64", form!("cmp {r}, qword ptr [{m}]"), AT_8, ARITH),
        ("cmp m8, imm8 (80)", form!("cmp byte ptr [{m}], 0x7f", imm), AT_1, ARITH),
        ("cmp m16, imm16 (81)", form!("cmp word ptr [{m}], 0x1234", imm), AT_2, ARITH),
        ("cmp m32, imm8 (83)", form!("cmp dword ptr [{m}], -2", imm), AT_4, ARITH),
        ("cmp m64, imm32 (81)", form!("cmp qword ptr [{m}], 0x12345678", imm), AT_8, ARITH),
        ("test m8, r8", form!("test byte ptr [{m}], {r:l}"), AT_1, LOGIC),
        ("test m16, r16", form!("test word ptr [{m}], {r:x}"), AT_2, LOGIC),
        ("test m32, r32", form!("test dword ptr [{m}], {r:e}"), AT_4, LOGIC),
        ("test m64, r64", form!("test qword ptr [{m}], {r}"), AT_8, LOGIC),
        ("test m8, imm8 (f6 /0)", form!("test byte ptr [{m}], 0x81", imm), AT_1, LOGIC),
        ("test m32, imm32 (f7 /0)", form!("test dword ptr [{m}], 0x80000001", imm), AT_4, LOGIC),
    ];
    for (what, f, at, mask) in forms {
        check(ctx, what, f, at, ALU, 0, mask);
    }
    check(ctx, "test m16, imm16 (66 f7 /0)", form!("test word ptr [{m}], 0x8001", imm), AT_2, ALU, 0, LOGIC);
    check(ctx, "test m64, imm32 (48 f7 /0)", form!("test qword ptr [{m}], -0x80000000", imm), AT_8, ALU, 0, LOGIC);
    check(ctx, "test m8, ah (84)", form!("test byte ptr [{m}], ah", "rax"), AT_1, ALU, 0, LOGIC);
    alias_forms(ctx);

    // Fixed expectations on the constant 0x1122_3344_5566_7788.
    let cmp = form!("cmp qword ptr [{m}], {r}");
    let test = form!("test qword ptr [{m}], {r}");
    let cases: [(&str, Form, u64, u64); 5] = [
        ("cmp [constant], constant: ZF", cmp, CONSTANT, ZF),
        ("cmp [constant], constant + 1: CF, SF", cmp, CONSTANT + 1, CF | SF),
        ("cmp [constant], 1 << 63: CF, SF, OF", cmp, 1 << 63, CF | SF | OF),
        ("test [constant], 0xee..: ZF", test, !CONSTANT, ZF),
        ("test [constant], 1 << 60: nothing", test, 1 << 60, 0),
    ];
    for (what, f, reg, want) in cases {
        let (_, flags) = f(BASE + CONSTANT_OFFSET, reg);
        let got = flags & (CF | ZF | SF | OF);
        if got != want {
            ctx.fail(format_args!("{what}: CF/ZF/SF/OF {got:#x}, expected {want:#x}"));
        }
    }
    ctx.group("CMP and TEST (flags only)", start);
}

/// `TEST r/m, imm` through the /1 alias of F6 and F7 (with `{m}` in RDI, so that the
/// bytes can name it: ModR/M 0x0F = mod 00, reg 1, rm 7 = [rdi]).
fn alias_forms(ctx: &mut Ctx) {
    macro_rules! alias {
        ($bytes:literal) => {{
            fn run(m: u64, r: u64) -> (u64, u64) {
                let flags: u64;
                // SAFETY: as in `form!`; the bytes are `test [rdi], imm` (F6 /1 or F7 /1).
                unsafe {
                    core::arch::asm!(concat!($bytes, "\n", "pushfq", "\n", "pop {flags}"), in("rdi") m, flags = out(reg) flags);
                }
                (r, flags)
            }
            run as Form
        }};
    }
    let forms: [(&str, Form, u64, &[u64]); 2] = [
        ("test m8, imm8 (f6 /1)", alias!(".byte 0xf6, 0x0f, 0x81"), 3, AT_1),
        ("test m32, imm32 (f7 /1)", alias!(".byte 0xf7, 0x0f, 0x01, 0x00, 0x00, 0x80"), 6, AT_4),
    ];
    for (what, f, len, at) in forms {
        // The alias is not in Intel's opcode tables: try it on RAM first, and skip it
        // (with a note) if this CPU raises #UD for it.
        let mut probe = 0u64;
        let probe_address = &mut probe as *mut u64 as u64;
        let seen = exceptions::fault_of(len, || {
            f(probe_address, 0);
        });
        if let Some(seen) = seen {
            println!("{NAME}: {what} raises vector {} on this CPU; not checked", seen.vector);
            continue;
        }
        check(ctx, what, f, at, ALU, 0, LOGIC);
    }
}

/// Linear address of [`fetch_fault`]'s code page: PDPT entry 4, past the 4 GiB the
/// boot page tables identity-map.
const ALIAS: u64 = 4 << 30;
/// Page-table entry bits (SDM Vol. 3A 4.5): present, writable.
const PTE_PRESENT: u64 = 1;
const PTE_WRITABLE: u64 = 2;
const PTE_ADDR: u64 = 0x000f_ffff_ffff_f000;
/// Page-fault error code bit 4, I/D (SDM Vol. 3A 4.7).
const PF_FETCH: u64 = 1 << 4;
/// IA32_EFER and its NXE bit; CR4.SMEP.
const IA32_EFER: u32 = 0xc000_0080;
const EFER_NXE: u64 = 1 << 11;
const CR4_SMEP: u64 = 1 << 20;

/// A 4 KiB-aligned page (page tables, the code page).
#[repr(C, align(4096))]
struct Page([u64; 512]);
static mut ALIAS_PD: Page = Page([0; 512]);
static mut ALIAS_PT: Page = Page([0; 512]);
static mut ALIAS_CODE: Page = Page([0; 512]);

/// What [`guest_mmio_pf_handler`] saw, and what it restores: the PTE at
/// `PF_RESTORE_AT` gets `PF_RESTORE_VALUE`, then `INVLPG [PF_RESTORE_LINEAR]`.
static PF_COUNT: AtomicU64 = AtomicU64::new(0);
static PF_ERROR: AtomicU64 = AtomicU64::new(0);
static PF_RIP: AtomicU64 = AtomicU64::new(0);
static PF_CR2: AtomicU64 = AtomicU64::new(0);
static PF_RESTORE_AT: AtomicU64 = AtomicU64::new(0);
static PF_RESTORE_VALUE: AtomicU64 = AtomicU64::new(0);
static PF_RESTORE_LINEAR: AtomicU64 = AtomicU64::new(0);

// The #PF gate of `fetch_fault`: records the error code, RIP and CR2, counts the fault,
// restores the PTE and returns to the faulting instruction.
core::arch::global_asm!(
    r#"
    .section .text.guest_mmio_pf, "ax"
    .global guest_mmio_pf_handler
guest_mmio_pf_handler:
    push rax
    push rcx
    mov rax, [rsp + 16]
    mov [rip + {error}], rax
    mov rax, [rsp + 24]
    mov [rip + {rip}], rax
    mov rax, cr2
    mov [rip + {cr2}], rax
    lock inc qword ptr [rip + {count}]
    mov rax, [rip + {at}]
    mov rcx, [rip + {value}]
    mov [rax], rcx
    mov rax, [rip + {linear}]
    invlpg [rax]
    pop rcx
    pop rax
    add rsp, 8
    iretq
    .text
    "#,
    error = sym PF_ERROR,
    rip = sym PF_RIP,
    cr2 = sym PF_CR2,
    count = sym PF_COUNT,
    at = sym PF_RESTORE_AT,
    value = sym PF_RESTORE_VALUE,
    linear = sym PF_RESTORE_LINEAR,
);

extern "C" {
    fn guest_mmio_pf_handler();
}

/// Calls the code page at [`ALIAS`] (`mov eax, [rdi]; ret`) with `rdi` = `address`.
fn run_alias(address: u64) -> u32 {
    let value: u32;
    // SAFETY: ALIAS maps `ALIAS_CODE`, which holds `mov eax, [rdi]; ret`; `address` is
    // a readable u32 (RAM or the device page); the callee uses only RAX and the stack.
    unsafe { core::arch::asm!("call {f}", f = in(reg) ALIAS, in("rdi") address, out("eax") value) };
    value
}

/// The IDT's 16-byte gate for `vector`.
fn idt_gate(vector: usize) -> *mut [u64; 2] {
    let mut idtr = [0u8; 10];
    // SAFETY: SIDT stores 10 bytes into the buffer.
    unsafe { core::arch::asm!("sidt [{}]", in(reg) idtr.as_mut_ptr(), options(nostack)) };
    let mut base = [0u8; 8];
    base.copy_from_slice(&idtr[2..]);
    (u64::from_le_bytes(base) as *mut [u64; 2]).wrapping_add(vector)
}

/// The #PF the hypervisor must inject when its walk for the MMIO instruction fails
/// (see the module documentation). Interrupts stay off from warming the TLB to the
/// faulting fetch, so that nothing but the load itself makes the vCPU exit there.
fn fetch_fault(ctx: &mut Ctx) {
    const SCRATCH: u64 = 0x5a5a_1234_9876_a5a5;
    dev_write64(ctx, 0, SCRATCH);
    let cr3: u64;
    let cr4: u64;
    // SAFETY: reading CR3 and CR4 has no side effects (the guest runs in ring 0).
    unsafe {
        core::arch::asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack));
        core::arch::asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack));
    }
    let fetch_bit = if guest_rt::msr::read(IA32_EFER) & EFER_NXE != 0 || cr4 & CR4_SMEP != 0 { PF_FETCH } else { 0 };
    let pd = core::ptr::addr_of_mut!(ALIAS_PD);
    let pt = core::ptr::addr_of_mut!(ALIAS_PT);
    let code = core::ptr::addr_of_mut!(ALIAS_CODE);
    // SAFETY: the boot page tables identity-map the first 4 GiB, where this guest's RAM
    // (its tables at CR3 and these statics) lies; PML4 entry 0 holds the PDPT, whose
    // entries 0..4 are the boot identity map, so entry 4 (ALIAS) is free. Only this vCPU
    // runs; the statics are used by this function alone.
    let (pdpt_entry, pte) = unsafe {
        let pml4 = (cr3 & PTE_ADDR) as *const u64;
        let pdpt = (pml4.read_volatile() & PTE_ADDR) as *mut u64;
        let pdpt_entry = pdpt.add(4);
        if pdpt_entry.read_volatile() != 0 {
            ctx.fail(format_args!("fetch fault: PDPT entry 4 is in use"));
            ctx.group("#PF on the hypervisor's instruction fetch", ctx.forms);
            return;
        }
        // mov eax, [rdi]; ret
        (*code).0[0] = 0x00c3_078b;
        (*pt).0[0] = code as u64 | PTE_PRESENT;
        (*pd).0[0] = pt as u64 | PTE_PRESENT | PTE_WRITABLE;
        pdpt_entry.write_volatile(pd as u64 | PTE_PRESENT | PTE_WRITABLE);
        (pdpt_entry, core::ptr::addr_of_mut!((*pt).0[0]))
    };
    let gate = idt_gate(14);
    let handler = guest_mmio_pf_handler as *const () as u64;
    let low = (handler & 0xffff) | (0x08 << 16) | (0x8e00 << 32) | ((handler >> 16) & 0xffff) << 48;
    PF_RESTORE_AT.store(pte as u64, Ordering::SeqCst);
    PF_RESTORE_VALUE.store(code as u64 | PTE_PRESENT, Ordering::SeqCst);
    PF_RESTORE_LINEAR.store(ALIAS, Ordering::SeqCst);
    let ram = 0x1357_9bdf_u32;
    let (warm, loaded, saved) = guest_rt::interrupts::without_interrupts(|| {
        // SAFETY: the IDT is guest_rt's, identity-mapped and writable; its #PF gate is
        // put back below, before interrupts or any other fault can use it.
        let saved = unsafe { gate.read_volatile() };
        // SAFETY: as above; the gate points at `guest_mmio_pf_handler`.
        unsafe { gate.write_volatile([low, handler >> 32]) };
        // Loads the translation of ALIAS into the TLB, without an exit.
        let warm = run_alias(&ram as *const u32 as u64);
        // SAFETY: `pte` is ALIAS's PTE in `ALIAS_PT`; no INVLPG on purpose.
        unsafe { pte.write_volatile(0) };
        let loaded = run_alias(BASE);
        (warm, loaded, saved)
    });
    // SAFETY: puts guest_rt's #PF gate back; the alias is unmapped again (with INVLPG)
    // and PDPT entry 4 freed.
    unsafe {
        gate.write_volatile(saved);
        pdpt_entry.write_volatile(0);
        core::arch::asm!("invlpg [{}]", in(reg) ALIAS, options(nostack));
    }
    let faults = PF_COUNT.load(Ordering::SeqCst);
    let (error, rip, cr2) =
        (PF_ERROR.load(Ordering::SeqCst), PF_RIP.load(Ordering::SeqCst), PF_CR2.load(Ordering::SeqCst));
    if warm != ram {
        ctx.fail(format_args!("fetch fault: the RAM load through the alias read {warm:#x}, expected {ram:#x}"));
    }
    if faults != 1 || error != fetch_bit || rip != ALIAS || cr2 != ALIAS {
        ctx.fail(format_args!(
            "fetch fault: {faults} #PF (error code {error:#x} at rip {rip:#x}, cr2 {cr2:#x}), expected one with error code {fetch_bit:#x} at rip and cr2 {ALIAS:#x}"
        ));
    }
    if u64::from(loaded) != SCRATCH & 0xffff_ffff {
        ctx.fail(format_args!("fetch fault: the retried load read {loaded:#x}, expected {:#x}", SCRATCH & 0xffff_ffff));
    }
    let ok = ctx.group_failures == 0;
    ctx.group("#PF on the hypervisor's instruction fetch", ctx.forms);
    if ok {
        println!("mmio: #PF with error code {error:#x} at cr2 {cr2:#x}, then the retried load read the device");
    }
}

/// Entry point (see `hv_abi::start`).
/// With [`UNEMULATED_RAM_BYTES`] of RAM: a `LOCK CMPXCHG` on the device page, which the
/// hypervisor's decoder does not take. The hypervisor must stop this guest with a dump
/// (`MMIO instruction not emulated`), and nothing else; if the instruction ever
/// completes, the guest says so and stops with code 1.
fn unemulated_instruction() -> ! {
    println!("mmio: trying LOCK CMPXCHG on the device page, which is not emulated");
    let (mut expected, new) = (0u32, 1u32);
    // SAFETY: a compare-and-exchange on the identity-mapped mmio-test page; the
    // hypervisor stops this guest at its EPT violation, so it should not complete (if
    // it does, it only changes a scratch register).
    unsafe {
        core::arch::asm!(
            "lock cmpxchg dword ptr [{addr}], {new:e}",
            addr = in(reg) BASE,
            new = in(reg) new,
            inout("eax") expected,
            options(nostack),
        );
    }
    println!("FAIL {NAME}: LOCK CMPXCHG on the device page completed (eax {expected:#x})");
    stop(1)
}

#[no_mangle]
#[link_section = ".text._start"]
pub extern "C" fn _start(_vcpu: u64, ram: u64) -> ! {
    exceptions::install();
    if ram == UNEMULATED_RAM_BYTES {
        unemulated_instruction();
    }
    let mut ctx = Ctx { forms: 0, writes: counter(), group_failures: 0, printed: 0, ok: true };
    let first = ctx.writes;
    if first != 0 {
        ctx.fail(format_args!("the write counter starts at {first}, expected 0"));
        ctx.ok = false;
    }
    fixed_registers(&mut ctx);
    plain(&mut ctx);
    moves(&mut ctx);
    direct_address(&mut ctx);
    immediates(&mut ctx);
    extensions(&mut ctx);
    strings(&mut ctx);
    arithmetic(&mut ctx);
    compares(&mut ctx);
    fetch_fault(&mut ctx);

    println!("mmio: {} instruction forms checked", ctx.forms);
    if ctx.ok {
        println!("PASS {NAME}");
    } else {
        println!("FAIL {NAME}");
    }
    stop(if ctx.ok { 0 } else { 1 })
}
