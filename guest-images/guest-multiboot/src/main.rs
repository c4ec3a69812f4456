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
//! - `load_end_addr` = the end of the section: the loader copies exactly the section's
//!   bytes, which are contiguous in the file; `bss_end_addr` = `STACK_BYTES` further
//!   (the stack, zeroed by the loader, in no section of the ELF file);
//! - `entry_addr` = `_start` (also the ELF entry point).
//!
//! The linker resolves all of them (the header holds symbol references, not numbers).
//! The section's file offset (0x1000 with `link.ld`) keeps the header within the
//! first 8192 bytes of the file, where the loader looks for it.
//!
//! # What it checks
//!
//! The entry is 32-bit protected mode, paging off, with EAX = 0x2BADB002 and EBX = the
//! Multiboot information address, and no usable stack (the loader gives ESP 0): the
//! kernel's first instruction after `cli`/`cld` points ESP at a stack of its own, the
//! `STACK_BYTES` after the loaded text, which the header declares as bss
//! (`bss_end_addr`), so the loader zeroes it and puts the information after it. In order
//! (N = the check's number):
//!
//! 1. EAX is the boot loader magic 0x2BADB002;
//! 2. EBX is not 0 and the information's flags have bit 0 (`mem_lower`, `mem_upper`)
//!    and neither bit 11 nor 12 (VBE, framebuffer: the header asks for a video mode,
//!    bit 2, which the loader accepts without setting one, as QEMU does);
//! 3. `mem_lower` = 639 (KiB: low RAM ends at the EBDA, 0x9FC00, as the memory map says);
//! 4. `mem_upper` = (16 MiB - 1 MiB) / 1024 = 15360 (KiB);
//! 5. the flags have bit 6 (`mmap_length`, `mmap_addr`);
//! 6. the memory map holds at least 2 entries, each with `size` >= 20;
//! 7. one of them is RAM (type 1) from 1 MiB to 16 MiB;
//! 8. the flags have bit 2 (`cmdline`), and `cmdline` lies in RAM, below its last
//!    `STRING_MAX` bytes;
//! 9. the flags have bit 3 (`mods_count`, `mods_addr`), `mods_count` is at most
//!    `MODULES_MAX`, and `mods_addr` is not 0 when there are modules;
//! 10. each module starts on a page boundary (header flag 0 asks for it), does not end
//!     before it starts nor after the end of RAM, and its `string` lies in RAM as
//!     `cmdline` must.
//!
//! It reports on COM1 (port 0x3F8, waiting for LSR (0x3FD) bit 5, THR empty, before
//! each byte, for a bounded time), printing at most `STRING_MAX` bytes of each string
//! the loader gave: after check 9 the command line and the number of modules, after
//! check 10 of each module its size, the 32-bit FNV-1a hash of its contents and its
//! string. Then it writes its exit code to isa-debug-exit (8-bit OUT to 0xF4) and
//! halts forever:
//!
//! - all checks held: `multiboot: magic and boot information ok`, exit code 0x10;
//! - check N failed: `multiboot: check N failed`, exit code 0x10 + N.
//!
//! Expected lines (partition `mb` of `tests/configs/svc-multiboot.toml`, whose
//! `cmdline` and two `modules` QEMU would give as `-append "hvtest=multiboot
//! answer=42" -initrd "images/multiboot-module-a.txt alpha=1 beta,images/multiboot-module-b.bin"`):
//! ```text
//! [svc] service: partition mb: Multiboot image, 16 MiB, vcpu 0 on cpu 1, entry 0x...
//! [mb] multiboot: command line 'guest:guest-multiboot hvtest=multiboot answer=42'
//! [mb] multiboot: 2 modules
//! [mb] multiboot: module 0: 45 bytes, fnv-1a 0x999e4b4a, string 'images/multiboot-module-a.txt alpha=1 beta'
//! [mb] multiboot: module 1: 5000 bytes, fnv-1a 0xe89740d5, string 'images/multiboot-module-b.bin'
//! [mb] multiboot: magic and boot information ok
//! partition mb: powered off through its platform (code 16)
//! ```
#![no_std]
#![no_main]

/// The header's `magic`.
const HEADER_MAGIC: u32 = 0x1BAD_B002;
/// Header flags: page-aligned modules (bit 0), memory information (bit 1), a video
/// mode (bit 2: QEMU's `-kernel` boots such kernels without setting a mode, and so
/// must this loader), the address fields are valid (bit 16).
const HEADER_FLAGS: u32 = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 16);
/// `magic + flags + checksum` = 0 (mod 2^32).
const HEADER_CHECKSUM: u32 = 0u32.wrapping_sub(HEADER_MAGIC.wrapping_add(HEADER_FLAGS));
/// EAX at entry.
const BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;
/// The kernel's stack: the bss after its text.
const STACK_BYTES: u32 = 4096;

/// Information flags: `mem_lower`/`mem_upper` (bit 0), `cmdline` (bit 2), the modules
/// (bit 3), the memory map (bit 6).
const INFO_MEMORY: u32 = 1 << 0;
const INFO_CMDLINE: u32 = 1 << 2;
const INFO_MODS: u32 = 1 << 3;
const INFO_MMAP: u32 = 1 << 6;
/// Information flags: VBE (bit 11) and framebuffer (bit 12) information: no mode was
/// set, so neither may be claimed.
const INFO_VIDEO: u32 = (1 << 11) | (1 << 12);
/// Byte offsets in the Multiboot information.
const INFO_MEM_LOWER: u32 = 4;
const INFO_MEM_UPPER: u32 = 8;
const INFO_CMDLINE_ADDR: u32 = 16;
const INFO_MODS_COUNT: u32 = 20;
const INFO_MODS_ADDR: u32 = 24;
const INFO_MMAP_LENGTH: u32 = 44;
const INFO_MMAP_ADDR: u32 = 48;
/// Module list entry: `mod_start` at +0, `mod_end` (exclusive) at +4, `string` at +8.
const MODULE_START: u32 = 0;
const MODULE_END: u32 = 4;
const MODULE_STRING: u32 = 8;
const MODULE_ENTRY_BYTES: u32 = 16;
/// Most modules the kernel looks at.
const MODULES_MAX: u32 = 16;
/// Most bytes of a loader-given string it prints.
const STRING_MAX: u32 = 200;
const PAGE_MASK: u32 = 0xFFF;

/// The RAM the config gives this guest, and what the information must say about it.
const RAM_BYTES: u32 = 16 << 20;
const HIGH_RAM_START: u32 = 1 << 20;
const MEM_LOWER_KIB: u32 = 639;
const MEM_UPPER_KIB: u32 = (RAM_BYTES - HIGH_RAM_START) / 1024;
/// Memory map entry: `size` at +0 (the entry's bytes after this field), `base_addr` at
/// +4, `length` at +12 (64-bit each), `type` at +20 (1 = RAM).
const MMAP_MIN_SIZE: u32 = 20;
const MMAP_RAM: u32 = 1;

/// 32-bit FNV-1a: the hash starts at the offset basis; per byte, XOR then multiply by
/// the prime.
const FNV_OFFSET_BASIS: u32 = 0x811C_9DC5;
const FNV_PRIME: u32 = 0x0100_0193;

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
    .long guest_multiboot_end + {stack_bytes}
    .long _start

    .global _start
_start:
    cli
    cld
    mov esp, offset guest_multiboot_end + {stack_bytes}
    mov ecx, 1
    cmp eax, {boot_magic}
    jne .Lmb_fail
    mov ecx, 2
    test ebx, ebx
    jz .Lmb_fail
    test dword ptr [ebx], {info_memory}
    jz .Lmb_fail
    test dword ptr [ebx], {info_video}
    jnz .Lmb_fail
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

    // The command line.
    mov ecx, 8
    test dword ptr [ebx], {info_cmdline}
    jz .Lmb_fail
    mov eax, dword ptr [ebx + {cmdline}]
    call .Lmb_check_string_address
    // The module list.
    mov ecx, 9
    test dword ptr [ebx], {info_mods}
    jz .Lmb_fail
    mov eax, dword ptr [ebx + {mods_count}]
    cmp eax, {modules_max}
    ja .Lmb_fail
    test eax, eax
    jz .Lmb_mods_listed
    cmp dword ptr [ebx + {mods_addr}], 0
    je .Lmb_fail
.Lmb_mods_listed:
    mov esi, offset guest_multiboot_cmdline
    call .Lmb_puts
    mov esi, dword ptr [ebx + {cmdline}]
    call .Lmb_put_string
    mov esi, offset guest_multiboot_quote_end
    call .Lmb_puts
    mov esi, offset guest_multiboot_prefix
    call .Lmb_puts
    mov eax, dword ptr [ebx + {mods_count}]
    call .Lmb_put_dec
    mov esi, offset guest_multiboot_modules
    call .Lmb_puts

    // Each module: EBP = its number, EDI = its list entry.
    mov ecx, 10
    xor ebp, ebp
    mov edi, dword ptr [ebx + {mods_addr}]
.Lmb_module_next:
    cmp ebp, dword ptr [ebx + {mods_count}]
    jae .Lmb_modules_done
    mov eax, dword ptr [edi + {module_start}]
    test eax, {page_mask}
    jnz .Lmb_fail
    mov edx, dword ptr [edi + {module_end}]
    cmp eax, edx
    ja .Lmb_fail
    cmp edx, {ram_bytes}
    ja .Lmb_fail
    mov eax, dword ptr [edi + {module_string}]
    call .Lmb_check_string_address
    mov esi, offset guest_multiboot_module
    call .Lmb_puts
    mov eax, ebp
    call .Lmb_put_dec
    mov esi, offset guest_multiboot_colon
    call .Lmb_puts
    mov eax, dword ptr [edi + {module_end}]
    sub eax, dword ptr [edi + {module_start}]
    call .Lmb_put_dec
    mov esi, offset guest_multiboot_bytes
    call .Lmb_puts
    mov esi, dword ptr [edi + {module_start}]
    mov edx, dword ptr [edi + {module_end}]
    call .Lmb_fnv1a
    call .Lmb_put_hex
    mov esi, offset guest_multiboot_string
    call .Lmb_puts
    mov esi, dword ptr [edi + {module_string}]
    call .Lmb_put_string
    mov esi, offset guest_multiboot_quote_end
    call .Lmb_puts
    inc ebp
    add edi, {module_entry_bytes}
    jmp .Lmb_module_next
.Lmb_modules_done:

    mov esi, offset guest_multiboot_ok
    call .Lmb_puts
    mov al, {exit_ok}
    out {debug_exit}, al
.Lmb_halt:
    hlt
    jmp .Lmb_halt

    // Check ECX failed.
.Lmb_fail:
    mov esi, offset guest_multiboot_check
    call .Lmb_puts
    mov eax, ecx
    call .Lmb_put_dec
    mov esi, offset guest_multiboot_failed
    call .Lmb_puts
    mov al, cl
    add al, {exit_ok}
    out {debug_exit}, al
    jmp .Lmb_halt

    // Check ECX fails unless EAX, a string's address, is not 0 and at least
    // {string_max} bytes below the end of RAM (so that printing it reads RAM only).
.Lmb_check_string_address:
    test eax, eax
    jz .Lmb_fail
    cmp eax, {ram_bytes} - {string_max}
    ja .Lmb_fail
    ret

    // Writes AL to COM1 once the transmit holding register is empty (or after
    // {thr_wait} reads of LSR). Preserves every register.
.Lmb_putc:
    push ecx
    push edx
    push eax
    mov ecx, {thr_wait}
    mov dx, {com1_lsr}
.Lmb_putc_wait:
    in al, dx
    test al, {thr_empty}
    jnz .Lmb_putc_send
    dec ecx
    jnz .Lmb_putc_wait
.Lmb_putc_send:
    pop eax
    mov dx, {com1_thr}
    out dx, al
    pop edx
    pop ecx
    ret

    // Writes the NUL-terminated string at ESI (one of this kernel's). Preserves every
    // register.
.Lmb_puts:
    push eax
    push esi
.Lmb_puts_next:
    mov al, byte ptr [esi]
    test al, al
    jz .Lmb_puts_done
    call .Lmb_putc
    inc esi
    jmp .Lmb_puts_next
.Lmb_puts_done:
    pop esi
    pop eax
    ret

    // Writes the NUL-terminated string at ESI (one the loader gave), at most
    // {string_max} bytes of it. Preserves every register.
.Lmb_put_string:
    push eax
    push ecx
    push esi
    mov ecx, {string_max}
.Lmb_put_string_next:
    mov al, byte ptr [esi]
    test al, al
    jz .Lmb_put_string_done
    call .Lmb_putc
    inc esi
    dec ecx
    jnz .Lmb_put_string_next
.Lmb_put_string_done:
    pop esi
    pop ecx
    pop eax
    ret

    // Writes EAX in decimal. Preserves every register.
.Lmb_put_dec:
    push eax
    push ecx
    push edx
    push esi
    mov ecx, 10
    xor esi, esi
.Lmb_put_dec_divide:
    xor edx, edx
    div ecx
    push edx
    inc esi
    test eax, eax
    jnz .Lmb_put_dec_divide
.Lmb_put_dec_emit:
    pop eax
    add al, 0x30
    call .Lmb_putc
    dec esi
    jnz .Lmb_put_dec_emit
    pop esi
    pop edx
    pop ecx
    pop eax
    ret

    // Writes EAX as 0x and 8 lower-case hexadecimal digits. Preserves every register.
.Lmb_put_hex:
    push eax
    push ecx
    push edx
    mov edx, eax
    mov al, 0x30
    call .Lmb_putc
    mov al, 0x78
    call .Lmb_putc
    mov ecx, 8
.Lmb_put_hex_next:
    rol edx, 4
    mov al, dl
    and al, 0xF
    cmp al, 10
    jb .Lmb_put_hex_digit
    add al, 0x27
.Lmb_put_hex_digit:
    add al, 0x30
    call .Lmb_putc
    dec ecx
    jnz .Lmb_put_hex_next
    pop edx
    pop ecx
    pop eax
    ret

    // EAX = the 32-bit FNV-1a hash of the bytes from ESI up to EDX (exclusive).
    // Preserves the other registers.
.Lmb_fnv1a:
    push esi
    push ecx
    mov eax, {fnv_offset_basis}
.Lmb_fnv1a_next:
    cmp esi, edx
    jae .Lmb_fnv1a_done
    movzx ecx, byte ptr [esi]
    xor eax, ecx
    imul eax, eax, {fnv_prime}
    inc esi
    jmp .Lmb_fnv1a_next
.Lmb_fnv1a_done:
    pop ecx
    pop esi
    ret

guest_multiboot_ok:
    .asciz "multiboot: magic and boot information ok\n"
guest_multiboot_check:
    .asciz "multiboot: check "
guest_multiboot_failed:
    .asciz " failed\n"
guest_multiboot_cmdline:
    .asciz "multiboot: command line '"
guest_multiboot_quote_end:
    .asciz "'\n"
guest_multiboot_prefix:
    .asciz "multiboot: "
guest_multiboot_modules:
    .asciz " modules\n"
guest_multiboot_module:
    .asciz "multiboot: module "
guest_multiboot_colon:
    .asciz ": "
guest_multiboot_bytes:
    .asciz " bytes, fnv-1a "
guest_multiboot_string:
    .asciz ", string '"
    .balign 16
guest_multiboot_end:
    .code64
    .text
    "#,
    magic = const HEADER_MAGIC,
    flags = const HEADER_FLAGS,
    checksum = const HEADER_CHECKSUM,
    stack_bytes = const STACK_BYTES,
    boot_magic = const BOOTLOADER_MAGIC,
    info_memory = const INFO_MEMORY,
    info_cmdline = const INFO_CMDLINE,
    info_mods = const INFO_MODS,
    info_mmap = const INFO_MMAP,
    mem_lower = const INFO_MEM_LOWER,
    info_video = const INFO_VIDEO,
    mem_upper = const INFO_MEM_UPPER,
    cmdline = const INFO_CMDLINE_ADDR,
    mods_count = const INFO_MODS_COUNT,
    mods_addr = const INFO_MODS_ADDR,
    mmap_length = const INFO_MMAP_LENGTH,
    mmap_addr = const INFO_MMAP_ADDR,
    module_start = const MODULE_START,
    module_end = const MODULE_END,
    module_string = const MODULE_STRING,
    module_entry_bytes = const MODULE_ENTRY_BYTES,
    modules_max = const MODULES_MAX,
    string_max = const STRING_MAX,
    page_mask = const PAGE_MASK,
    ram_bytes = const RAM_BYTES,
    mem_lower_kib = const MEM_LOWER_KIB,
    mem_upper_kib = const MEM_UPPER_KIB,
    mmap_min_size = const MMAP_MIN_SIZE,
    mmap_ram = const MMAP_RAM,
    high_ram = const HIGH_RAM_START,
    high_ram_len = const RAM_BYTES - HIGH_RAM_START,
    fnv_offset_basis = const FNV_OFFSET_BASIS,
    fnv_prime = const FNV_PRIME,
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
