//! `guest-multiboot`: a Multiboot (v1, spec 0.6.96) kernel, for the service partition's
//! Multiboot loader (`hv_loader::multiboot`, as QEMU's `-kernel` loads one). Run with
//! 16 MiB of RAM and the `com1` and `debug-exit` devices.
//!
//! # The image
//!
//! An x86-64 ELF file like every test guest (linked at 2 MiB by `guest-images/link.ld`),
//! which a Multiboot loader takes only through the "a.out kludge": header flag 16 and
//! the address fields. Everything the kernel needs (the header, the code, the messages)
//! is in the one input section `.text._start`, which `link.ld` puts first in `.text`, at
//! 0x200000, so:
//!
//! - the header is the first thing loaded: `header_addr` = `load_addr` = the header's own
//!   address, and the loader's file offset of the text, `header offset - (header_addr -
//!   load_addr)`, is the header's file offset, where the bytes of address 0x200000 are;
//! - `load_end_addr` = `bss_end_addr` = the end of the section (no bss): the loader
//!   copies exactly the section's bytes, which are contiguous in the file;
//! - `entry_addr` = `_start` (also the ELF entry point).
//!
//! The linker resolves all of them (the header holds symbol references, not numbers).
//! The section's file offset (0x1000 with `link.ld`) keeps the header within the
//! first 8192 bytes of the file, where the loader looks for it.
//!
//! # What it checks
//!
//! The entry is 32-bit protected mode, paging off, with EAX = 0x2BADB002 and EBX = the
//! Multiboot information address, and no usable stack (the loader gives ESP 0), so the
//! code is assembly that never touches the stack: "calls" pass their return address in
//! a register. In order (N = the check's number):
//!
//! 1. EAX is the boot loader magic 0x2BADB002;
//! 2. EBX is not 0 and the information's flags have bit 0 (`mem_lower`, `mem_upper`);
//! 3. `mem_lower` = 640 (KiB);
//! 4. `mem_upper` = (16 MiB - 1 MiB) / 1024 = 15360 (KiB);
//! 5. the flags have bit 6 (`mmap_length`, `mmap_addr`);
//! 6. the memory map holds at least 2 entries, each with `size` >= 20;
//! 7. one of them is RAM (type 1) from 1 MiB to 16 MiB.
//!
//! Then it writes one line to COM1 (port 0x3F8, waiting for LSR (0x3FD) bit 5, THR
//! empty, before each byte, for a bounded time) and its exit code to isa-debug-exit
//! (8-bit OUT to 0xF4), and halts forever:
//!
//! - all checks held: `multiboot: magic and boot information ok`, exit code 0x10;
//! - check N failed: `multiboot: check N failed`, exit code 0x10 + N.
//!
//! Expected lines (partition `mb` of `tests/configs/svc-multiboot.toml`):
//! ```text
//! [svc] service: partition mb: Multiboot image, 16 MiB, vcpu 0 on cpu 1, entry 0x...
//! [mb] multiboot: magic and boot information ok
//! partition mb: powered off through its platform (code 16)
//! ```
#![no_std]
#![no_main]

/// The header's `magic`.
const HEADER_MAGIC: u32 = 0x1BAD_B002;
/// Header flags: page-aligned modules (bit 0), memory information (bit 1), the
/// address fields are valid (bit 16).
const HEADER_FLAGS: u32 = (1 << 0) | (1 << 1) | (1 << 16);
/// `magic + flags + checksum` = 0 (mod 2^32).
const HEADER_CHECKSUM: u32 = 0u32.wrapping_sub(HEADER_MAGIC.wrapping_add(HEADER_FLAGS));
/// EAX at entry.
const BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;

/// Information flags: `mem_lower`/`mem_upper` (bit 0), the memory map (bit 6).
const INFO_MEMORY: u32 = 1 << 0;
const INFO_MMAP: u32 = 1 << 6;
/// Byte offsets in the Multiboot information.
const INFO_MEM_LOWER: u32 = 4;
const INFO_MEM_UPPER: u32 = 8;
const INFO_MMAP_LENGTH: u32 = 44;
const INFO_MMAP_ADDR: u32 = 48;

/// The RAM the config gives this guest, and what the information must say about it.
const RAM_BYTES: u32 = 16 << 20;
const HIGH_RAM_START: u32 = 1 << 20;
const MEM_LOWER_KIB: u32 = 640;
const MEM_UPPER_KIB: u32 = (RAM_BYTES - HIGH_RAM_START) / 1024;
/// Memory map entry: `size` at +0 (the entry's bytes after this field), `base_addr` at
/// +4, `length` at +12 (64-bit each), `type` at +20 (1 = RAM).
const MMAP_MIN_SIZE: u32 = 20;
const MMAP_RAM: u32 = 1;

/// COM1: transmit holding register and line status register (bit 5: THR empty).
const COM1_THR: u16 = 0x3F8;
const COM1_LSR: u16 = 0x3FD;
const LSR_THR_EMPTY: u8 = 1 << 5;
/// LSR reads before a byte is sent anyway.
const THR_WAIT_LIMIT: u32 = 1_000_000;
/// isa-debug-exit, and the exit code of success (failures add the check's number).
const ISA_DEBUG_EXIT: u16 = 0xF4;
const EXIT_OK: u8 = 0x10;

core::arch::global_asm!(
    r#"
    .section .text._start, "ax"
    .code32
    .balign 16
guest_multiboot_header:
    .long {magic}
    .long {flags}
    .long {checksum}
    .long guest_multiboot_header
    .long guest_multiboot_header
    .long guest_multiboot_end
    .long guest_multiboot_end
    .long _start

    .global _start
_start:
    cli
    cld
    mov ecx, 1
    cmp eax, {boot_magic}
    jne .Lmb_fail
    mov ecx, 2
    test ebx, ebx
    jz .Lmb_fail
    test dword ptr [ebx], {info_memory}
    jz .Lmb_fail
    mov ecx, 3
    cmp dword ptr [ebx + {mem_lower}], {mem_lower_kib}
    jne .Lmb_fail
    mov ecx, 4
    cmp dword ptr [ebx + {mem_upper}], {mem_upper_kib}
    jne .Lmb_fail
    mov ecx, 5
    test dword ptr [ebx], {info_mmap}
    jz .Lmb_fail

    // Walk the memory map: ESI = entry, EDI = end, EDX = entries, EBP = 1 once the
    // high RAM entry is seen.
    mov ecx, 6
    mov esi, dword ptr [ebx + {mmap_addr}]
    mov edi, esi
    add edi, dword ptr [ebx + {mmap_length}]
    jc .Lmb_fail
    xor edx, edx
    xor ebp, ebp
.Lmb_mmap_next:
    cmp esi, edi
    jae .Lmb_mmap_done
    mov eax, dword ptr [esi]
    cmp eax, {mmap_min_size}
    jb .Lmb_fail
    inc edx
    cmp dword ptr [esi + 20], {mmap_ram}
    jne .Lmb_mmap_skip
    cmp dword ptr [esi + 4], {high_ram}
    jne .Lmb_mmap_skip
    cmp dword ptr [esi + 8], 0
    jne .Lmb_mmap_skip
    cmp dword ptr [esi + 12], {high_ram_len}
    jne .Lmb_mmap_skip
    cmp dword ptr [esi + 16], 0
    jne .Lmb_mmap_skip
    mov ebp, 1
.Lmb_mmap_skip:
    lea esi, [esi + eax + 4]
    jmp .Lmb_mmap_next
.Lmb_mmap_done:
    cmp edx, 2
    jb .Lmb_fail
    mov ecx, 7
    test ebp, ebp
    jz .Lmb_fail

    mov esi, offset guest_multiboot_ok
    mov ebx, offset .Lmb_ok_exit
    jmp .Lmb_puts
.Lmb_ok_exit:
    mov al, {exit_ok}
    out {debug_exit}, al
.Lmb_halt:
    hlt
    jmp .Lmb_halt

    // Check ECX failed.
.Lmb_fail:
    mov esi, offset guest_multiboot_check
    mov ebx, offset .Lmb_fail_digit
    jmp .Lmb_puts
.Lmb_fail_digit:
    mov ah, cl
    add ah, 0x30
    mov edi, offset .Lmb_fail_rest
    jmp .Lmb_putc
.Lmb_fail_rest:
    mov esi, offset guest_multiboot_failed
    mov ebx, offset .Lmb_fail_exit
    jmp .Lmb_puts
.Lmb_fail_exit:
    mov al, cl
    add al, {exit_ok}
    out {debug_exit}, al
    jmp .Lmb_halt

    // Writes the NUL-terminated string at ESI to COM1, then jumps to EBX.
    // Clobbers EAX, EDX, ESI, EDI, EBP.
.Lmb_puts:
    mov ah, byte ptr [esi]
    test ah, ah
    jz .Lmb_puts_done
    mov edi, offset .Lmb_puts_sent
    jmp .Lmb_putc
.Lmb_puts_sent:
    inc esi
    jmp .Lmb_puts
.Lmb_puts_done:
    jmp ebx

    // Writes AH to COM1 once the transmit holding register is empty (or after
    // {thr_wait} reads of LSR), then jumps to EDI. Clobbers AL, DX, EBP.
.Lmb_putc:
    mov ebp, {thr_wait}
    mov dx, {com1_lsr}
.Lmb_putc_wait:
    in al, dx
    test al, {thr_empty}
    jnz .Lmb_putc_send
    dec ebp
    jnz .Lmb_putc_wait
.Lmb_putc_send:
    mov al, ah
    mov dx, {com1_thr}
    out dx, al
    jmp edi

guest_multiboot_ok:
    .asciz "multiboot: magic and boot information ok\n"
guest_multiboot_check:
    .asciz "multiboot: check "
guest_multiboot_failed:
    .asciz " failed\n"
    .balign 4
guest_multiboot_end:
    .code64
    .text
    "#,
    magic = const HEADER_MAGIC,
    flags = const HEADER_FLAGS,
    checksum = const HEADER_CHECKSUM,
    boot_magic = const BOOTLOADER_MAGIC,
    info_memory = const INFO_MEMORY,
    info_mmap = const INFO_MMAP,
    mem_lower = const INFO_MEM_LOWER,
    mem_upper = const INFO_MEM_UPPER,
    mmap_length = const INFO_MMAP_LENGTH,
    mmap_addr = const INFO_MMAP_ADDR,
    mem_lower_kib = const MEM_LOWER_KIB,
    mem_upper_kib = const MEM_UPPER_KIB,
    mmap_min_size = const MMAP_MIN_SIZE,
    mmap_ram = const MMAP_RAM,
    high_ram = const HIGH_RAM_START,
    high_ram_len = const RAM_BYTES - HIGH_RAM_START,
    com1_thr = const COM1_THR,
    com1_lsr = const COM1_LSR,
    thr_empty = const LSR_THR_EMPTY,
    thr_wait = const THR_WAIT_LIMIT,
    debug_exit = const ISA_DEBUG_EXIT,
    exit_ok = const EXIT_OK,
);

/// Nothing in this image is Rust code that could panic; `no_std` still needs a handler.
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {
        core::hint::spin_loop();
    }
}
