//! The Linux bzImage loader against synthetic bzImages. Offsets are written out as
//! literals from the boot protocol, not taken from the crate's constants.

mod common;

use common::*;
use hv_loader::linux::{self, LinuxParams};
use hv_loader::{E820Entry, EntryState, LoadError, Region, E820_ACPI, E820_RAM, E820_RESERVED};

const RAM: u64 = 64 * MIB;
const BP: u64 = 0x7000;
const CMDLINE: &str = "console=ttyS0 root=/dev/vda rw";

fn params<'a>(e820: &'a [E820Entry], initrd: Option<&'a [u8]>) -> LinuxParams<'a> {
    LinuxParams { cmdline: CMDLINE, initrd, e820, acpi_rsdp: Some(0xf_5a10) }
}

/// The boot_params page the loader must produce, built independently.
fn expected_boot_params(image: &[u8], initrd: Option<(u64, u64)>, e820: &[E820Entry], rsdp: Option<u64>) -> Vec<u8> {
    let mut page = vec![0u8; 4096];
    let header_end = (0x202 + usize::from(image[0x201])).min(0x290);
    page[0x1f1..header_end].copy_from_slice(&image[0x1f1..header_end]);
    page[0x210] = 0xff;
    page[0x211] |= 0x80;
    set_u16(&mut page, 0x224, 0xfe00);
    set_u32(&mut page, 0x228, 0x2_0000);
    if header_end > 0x258 {
        set_u64(&mut page, 0x250, 0);
    }
    if let Some((addr, size)) = initrd {
        set_u32(&mut page, 0x218, addr as u32);
        set_u32(&mut page, 0x21c, size as u32);
        set_u32(&mut page, 0x0c0, (addr >> 32) as u32);
        set_u32(&mut page, 0x0c4, (size >> 32) as u32);
    }
    page[0x1e8] = e820.len() as u8;
    for (i, e) in e820.iter().enumerate() {
        set_u64(&mut page, 0x2d0 + 20 * i, e.addr);
        set_u64(&mut page, 0x2d0 + 20 * i + 8, e.size);
        set_u32(&mut page, 0x2d0 + 20 * i + 16, e.kind);
    }
    if let Some(rsdp) = rsdp {
        set_u64(&mut page, 0x070, rsdp);
    }
    page
}

#[test]
fn loads_kernel_cmdline_initrd_and_fills_boot_params() {
    let image = bzimage(0x020f, 8, 0x3000);
    let initrd = pattern(0x5123, 77);
    let e820 = pc_e820(RAM);
    let mut mem = VecMemory::filled(RAM, 0xee);
    let loaded = linux::load_with_layout(&mut mem, &image, &params(&e820, Some(&initrd))).unwrap();

    assert_eq!(loaded.entry, EntryState::Protected32 { eip: 0x10_0000, eax: 0, ebx: 0, esi: 0x7000 });
    // Runtime address: pref_address 16 MiB (already 2 MiB aligned) + init_size 4 MiB.
    assert_eq!(loaded.kernel, Region { start: MIB, end: 20 * MIB });
    // The initrd: the highest page below the end of RAM.
    let initrd_addr = (RAM - 0x5123) & !0xfff;
    assert_eq!(initrd_addr, 0x3ffa000);
    assert_eq!(loaded.data, Some(Region { start: initrd_addr, end: initrd_addr + 0x5123 }));

    // boot_params, every byte.
    let expected = expected_boot_params(&image, Some((initrd_addr, 0x5123)), &e820, Some(0xf_5a10));
    assert_eq!(mem.slice(BP, 4096), &expected[..]);
    // Spot checks of the fields by offset.
    assert_eq!(mem.u8(BP + 0x1f1), 8); // setup_sects
    assert_eq!(mem.u16(BP + 0x1fe), 0xaa55);
    assert_eq!(mem.slice(BP + 0x202, 4), b"HdrS");
    assert_eq!(mem.u16(BP + 0x206), 0x020f);
    assert_eq!(mem.u8(BP + 0x210), 0xff); // type_of_loader
    assert_eq!(mem.u8(BP + 0x211), 0x81); // LOADED_HIGH | CAN_USE_HEAP
    assert_eq!(mem.u32(BP + 0x214), 0x10_0000); // code32_start
    assert_eq!(mem.u32(BP + 0x218), initrd_addr as u32);
    assert_eq!(mem.u32(BP + 0x21c), 0x5123);
    assert_eq!(mem.u16(BP + 0x224), 0xfe00); // heap_end_ptr
    assert_eq!(mem.u32(BP + 0x228), 0x2_0000); // cmd_line_ptr
    assert_eq!(mem.u32(BP + 0x238), 2047); // cmdline_size kept
    assert_eq!(mem.u64(BP + 0x258), 0x100_0000); // pref_address kept
    assert_eq!(mem.u32(BP + 0x260), 0x40_0000); // init_size kept
    assert_eq!(mem.u32(BP + 0x0c0), 0);
    assert_eq!(mem.u32(BP + 0x0c4), 0);
    assert_eq!(mem.u64(BP + 0x070), 0xf_5a10); // acpi_rsdp_addr
    assert_eq!(mem.u8(BP + 0x1e8), 4); // e820_entries
    assert_eq!(mem.u64(BP + 0x2d0 + 3 * 20), MIB);
    assert_eq!(mem.u64(BP + 0x2d0 + 3 * 20 + 8), RAM - MIB);
    assert_eq!(mem.u32(BP + 0x2d0 + 3 * 20 + 16), 1);
    assert!(mem.slice(BP + 0x26c, 0x290 - 0x26c).iter().all(|&b| b == 0), "setup code copied");
    assert!(mem.slice(BP, 0x70).iter().all(|&b| b == 0));

    // Command line, kernel, initrd.
    assert_eq!(mem.c_str(0x2_0000), CMDLINE);
    assert_eq!(mem.slice(MIB, 0x3000), &image[9 * 512..]);
    assert_eq!(mem.u8(MIB + 0x3000), 0xee, "wrote past the kernel");
    assert_eq!(mem.slice(initrd_addr, 0x5123), &initrd[..]);
    // Nothing else was touched.
    for (gpa, len) in &mem.writes {
        let end = gpa + len;
        let ok = [(BP, BP + 4096), (0x2_0000, 0x2_0000 + CMDLINE.len() as u64 + 1), (MIB, MIB + 0x3000)]
            .iter()
            .chain([(initrd_addr, initrd_addr + 0x5123)].iter())
            .any(|&(s, e)| s <= *gpa && end <= e);
        assert!(ok, "unexpected write {len:#x} at {gpa:#x}");
    }
}

#[test]
fn setup_sects_zero_means_four() {
    let image = bzimage(0x020f, 0, 0x1000);
    assert_eq!(kernel_offset(&image), 5 * 512);
    let mut mem = VecMemory::new(RAM);
    linux::load(&mut mem, &image, &params(&[], None)).unwrap();
    assert_eq!(mem.slice(MIB, 0x1000), &image[5 * 512..]);
    assert_eq!(mem.u8(BP + 0x1f1), 0);
}

#[test]
fn without_initrd_the_ramdisk_fields_stay_zero() {
    let image = bzimage(0x020f, 4, 0x1000);
    let mut mem = VecMemory::new(RAM);
    for initrd in [None, Some(&[][..])] {
        let loaded = linux::load_with_layout(&mut mem, &image, &params(&[], initrd)).unwrap();
        assert_eq!(loaded.data, None);
        assert_eq!(mem.u32(BP + 0x218), 0);
        assert_eq!(mem.u32(BP + 0x21c), 0);
        assert_eq!(mem.u8(BP + 0x1e8), 0);
    }
}

#[test]
fn acpi_rsdp_only_from_protocol_2_14() {
    for (version, expect) in [(0x020d, 0), (0x020e, 0xf_5a10), (0x020f, 0xf_5a10)] {
        let image = bzimage(version, 4, 0x1000);
        let mut mem = VecMemory::new(RAM);
        linux::load(&mut mem, &image, &params(&[], None)).unwrap();
        assert_eq!(mem.u64(BP + 0x070), expect, "protocol {version:#x}");
    }
}

#[test]
fn old_protocol_without_init_size_fields() {
    // 2.06: the header ends after cmdline_size; no pref_address / init_size is read.
    let mut image = bzimage(0x0206, 4, 0x2000);
    set_u8(&mut image, 0x201, (0x23c - 0x202) as u8);
    let mut mem = VecMemory::new(4 * MIB);
    let loaded = linux::load_with_layout(&mut mem, &image, &params(&[], None)).unwrap();
    assert_eq!(loaded.kernel, Region { start: MIB, end: MIB + 0x2000 });
    // Only the header up to 0x23c is copied.
    assert_eq!(mem.u32(BP + 0x238), 2047);
    assert_eq!(mem.u64(BP + 0x258), 0);
}

#[test]
fn non_relocatable_kernel_reserves_pref_address_plus_init_size() {
    let mut image = bzimage(0x020f, 4, 0x1000);
    set_u8(&mut image, 0x234, 0);
    set_u64(&mut image, 0x258, 0x300_0000); // 48 MiB
    let mut mem = VecMemory::new(RAM);
    let loaded = linux::load_with_layout(&mut mem, &image, &params(&[], None)).unwrap();
    assert_eq!(loaded.kernel, Region { start: MIB, end: 52 * MIB });
    // Relocatable: pref_address 17 MiB rounds up to the 2 MiB alignment.
    let mut image = bzimage(0x020f, 4, 0x1000);
    set_u64(&mut image, 0x258, 0x110_0000);
    let loaded = linux::load_with_layout(&mut mem, &image, &params(&[], None)).unwrap();
    assert_eq!(loaded.kernel, Region { start: MIB, end: 22 * MIB });
}

#[test]
fn initrd_is_capped_by_initrd_addr_max() {
    let mut image = bzimage(0x020f, 4, 0x1000);
    set_u32(&mut image, 0x22c, 0x2ff_ffff); // last byte below 48 MiB
    let initrd = pattern(0x1_0000, 1);
    let mut mem = VecMemory::new(RAM);
    let loaded = linux::load_with_layout(&mut mem, &image, &params(&[], Some(&initrd))).unwrap();
    assert_eq!(loaded.data, Some(Region { start: 48 * MIB - 0x1_0000, end: 48 * MIB }));
    assert_eq!(mem.u32(BP + 0x218), (48 * MIB - 0x1_0000) as u32);
    // Unaligned maximum: the end stays at or below it, the start page-aligned.
    set_u32(&mut image, 0x22c, 0x2ff_f7ff);
    let loaded = linux::load_with_layout(&mut mem, &image, &params(&[], Some(&initrd))).unwrap();
    assert_eq!(loaded.data.unwrap().start, 48 * MIB - 0x1_1000);
}

#[test]
fn initrd_stays_in_one_e820_ram_entry() {
    let image = bzimage(0x020f, 4, 0x1000);
    let e820 = [
        E820Entry { addr: 0, size: 0x9_fc00, kind: E820_RAM },
        E820Entry { addr: MIB, size: 23 * MIB, kind: E820_RAM },
        E820Entry { addr: 24 * MIB, size: MIB, kind: E820_ACPI },
        E820Entry { addr: 25 * MIB, size: 3 * MIB, kind: E820_RAM },
        E820Entry { addr: 28 * MIB, size: 36 * MIB, kind: E820_RESERVED },
    ];
    let mut mem = VecMemory::new(RAM);
    // Fits the highest RAM entry: ends at 28 MiB.
    let small = pattern(2 * MIB as usize, 2);
    let loaded = linux::load_with_layout(&mut mem, &image, &params(&e820, Some(&small))).unwrap();
    assert_eq!(loaded.data, Some(Region { start: 26 * MIB, end: 28 * MIB }));
    // Too large for it (and it may not straddle the ACPI entry): the entry below, above
    // the kernel's 20 MiB.
    let big = pattern(3 * MIB as usize + 1, 3);
    let loaded = linux::load_with_layout(&mut mem, &image, &params(&e820, Some(&big))).unwrap();
    assert_eq!(loaded.data.unwrap().start, (24 * MIB - (3 * MIB + 1)) & !0xfff);
    assert!(loaded.data.unwrap().start >= 20 * MIB);
    // Too large for any place clear of the kernel.
    let huge = vec![0u8; 4 * MIB as usize + 1];
    let mut mem = VecMemory::new(RAM);
    let err = linux::load(&mut mem, &image, &params(&e820, Some(&huge))).unwrap_err();
    assert_eq!(err, LoadError::InitrdDoesNotFit { size: 4 * MIB + 1 });
    assert!(mem.writes.is_empty(), "a rejected load wrote");
}

#[test]
fn initrd_never_overlaps_the_kernel_or_its_init_size() {
    let image = bzimage(0x020f, 4, 0x1000);
    // 24 MiB of RAM, the kernel's runtime range ends at 20 MiB: 4 MiB are free.
    let mut mem = VecMemory::new(24 * MIB);
    let fits = vec![1u8; 4 * MIB as usize];
    let loaded = linux::load_with_layout(&mut mem, &image, &params(&[], Some(&fits))).unwrap();
    assert_eq!(loaded.data, Some(Region { start: 20 * MIB, end: 24 * MIB }));
    let too_big = vec![1u8; 4 * MIB as usize + 1];
    let mut mem = VecMemory::new(24 * MIB);
    assert_eq!(
        linux::load(&mut mem, &image, &params(&[], Some(&too_big))),
        Err(LoadError::InitrdDoesNotFit { size: 4 * MIB + 1 })
    );
    assert!(mem.writes.is_empty());
}

#[test]
fn initrd_above_4g_when_the_kernel_allows_it() {
    let initrd = pattern(0x3000, 4);
    let ram = 6 << 30;
    let e820 = [
        E820Entry { addr: 0, size: 0x9_fc00, kind: E820_RAM },
        E820Entry { addr: MIB, size: ram - MIB, kind: E820_RAM },
    ];
    // XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G: the top of RAM.
    let mut image = bzimage(0x020f, 4, 0x1000);
    set_u16(&mut image, 0x236, 0x03);
    let mut mem = SparseMemory::new(ram);
    let loaded = linux::load_with_layout(&mut mem, &image, &params(&e820, Some(&initrd))).unwrap();
    let addr = ram - 0x3000;
    assert_eq!(loaded.data.unwrap().start, addr);
    assert_eq!(mem.u32(BP + 0x218), addr as u32);
    assert_eq!(mem.u32(BP + 0x21c), 0x3000);
    assert_eq!(mem.u32(BP + 0x0c0), (addr >> 32) as u32);
    assert_eq!(mem.u32(BP + 0x0c4), 0);
    assert_eq!(mem.u8(addr + 5), initrd[5]);
    // Without the flag (or with it before protocol 2.12): below initrd_addr_max.
    for (version, xlf) in [(0x020f, 0x01), (0x020b, 0x03)] {
        let mut image = bzimage(version, 4, 0x1000);
        set_u16(&mut image, 0x236, xlf);
        let mut mem = SparseMemory::new(ram);
        let loaded = linux::load_with_layout(&mut mem, &image, &params(&e820, Some(&initrd))).unwrap();
        assert_eq!(loaded.data.unwrap().end, 0x8000_0000);
        assert_eq!(mem.u32(BP + 0x0c0), 0);
    }
}

#[test]
fn setup_header_copy_stops_at_0x290() {
    let mut image = bzimage(0x020f, 4, 0x1000);
    set_u8(&mut image, 0x201, 0xff); // header "ends" at 0x301
    let mut mem = VecMemory::new(RAM);
    linux::load(&mut mem, &image, &params(&[], None)).unwrap();
    assert_eq!(mem.slice(BP + 0x26c, 0x290 - 0x26c), &image[0x26c..0x290]);
    assert!(mem.slice(BP + 0x290, 0x2d0 - 0x290).iter().all(|&b| b == 0));
}

#[test]
fn setup_data_from_the_image_is_cleared() {
    let mut image = bzimage(0x020f, 4, 0x1000);
    set_u64(&mut image, 0x250, 0xdead_beef);
    let mut mem = VecMemory::new(RAM);
    linux::load(&mut mem, &image, &params(&[], None)).unwrap();
    assert_eq!(mem.u64(BP + 0x250), 0);
}

#[test]
fn e820_table_holds_128_entries_and_no_more() {
    let image = bzimage(0x020f, 4, 0x1000);
    let mut e820: Vec<E820Entry> =
        (0..127).map(|i| E820Entry { addr: i * 0x1000, size: 0x1000, kind: E820_RAM }).collect();
    e820.push(E820Entry { addr: MIB, size: RAM - MIB, kind: E820_RAM });
    let mut mem = VecMemory::new(RAM);
    linux::load(&mut mem, &image, &params(&e820, None)).unwrap();
    assert_eq!(mem.u8(BP + 0x1e8), 128);
    assert_eq!(mem.u64(BP + 0x2d0 + 127 * 20), MIB);
    assert_eq!(mem.u32(BP + 0x2d0 + 126 * 20 + 16), 1);
    e820.push(E820Entry { addr: RAM, size: 0x1000, kind: E820_RESERVED });
    let mut mem = VecMemory::new(RAM);
    assert_eq!(
        linux::load(&mut mem, &image, &params(&e820, None)),
        Err(LoadError::TooManyE820Entries { count: 129, max: 128 })
    );
    assert!(mem.writes.is_empty());
}

/// Loads `image` into fresh 64 MiB RAM and expects `err` with nothing written.
fn rejects(image: &[u8], p: &LinuxParams, err: LoadError) {
    let mut mem = VecMemory::new(RAM);
    assert_eq!(linux::load(&mut mem, image, p), Err(err));
    assert!(mem.writes.is_empty(), "a rejected load wrote");
    assert!(!err.to_string().is_empty());
}

#[test]
fn rejects_bad_magic() {
    let good = bzimage(0x020f, 4, 0x1000);
    let mut image = good.clone();
    set_u16(&mut image, 0x1fe, 0xaa56);
    rejects(&image, &params(&[], None), LoadError::BadMagic);
    let mut image = good;
    image[0x205] = b's';
    rejects(&image, &params(&[], None), LoadError::BadMagic);
    rejects(&[0u8; 4096], &params(&[], None), LoadError::BadMagic);
}

#[test]
fn rejects_truncation_at_each_point() {
    let image = bzimage(0x020f, 4, 0x1000);
    let p = params(&[], None);
    let t = |what, needed: u64, len: usize| LoadError::Truncated { what, needed, len: len as u64 };
    rejects(&[], &p, t("boot sector signature", 0x200, 0));
    rejects(&image[..0x1ff], &p, t("boot sector signature", 0x200, 0x1ff));
    rejects(&image[..0x204], &p, t("setup header magic", 0x206, 0x204));
    rejects(&image[..0x207], &p, t("setup header version", 0x208, 0x207));
    rejects(&image[..0x250], &p, t("setup header", 0x26c, 0x250));
    // The header is complete but the kernel is missing, or shorter than the 0x1000
    // bytes its `syssize` promises.
    let full = 5 * 512 + 0x1000;
    rejects(&image[..0x26c], &p, t("protected-mode kernel", full, 0x26c));
    rejects(&image[..5 * 512], &p, t("protected-mode kernel", full, 5 * 512));
    rejects(&image[..5 * 512 + 0x800], &p, t("protected-mode kernel", full, 5 * 512 + 0x800));
    rejects(&image[..full as usize - 1], &p, t("protected-mode kernel", full, full as usize - 1));
    // Setup sectors claimed beyond the file.
    let mut image = bzimage(0x020f, 4, 0x1000);
    set_u8(&mut image, 0x1f1, 200);
    rejects(&image, &p, t("protected-mode kernel", 201 * 512 + 0x1000, 5 * 512 + 0x1000));
    // A `syssize` of 0 still needs one byte of kernel.
    let mut image = bzimage(0x020f, 4, 0x1000);
    set_u32(&mut image, 0x1f4, 0);
    rejects(&image[..5 * 512], &p, t("protected-mode kernel", 5 * 512 + 1, 5 * 512));
}

#[test]
fn loads_bytes_past_syssize() {
    // A kernel longer than its `syssize` (an appended signature) loads whole.
    let mut image = bzimage(0x020f, 4, 0x1000);
    set_u32(&mut image, 0x1f4, 0x800 / 16);
    let mut mem = VecMemory::new(RAM);
    assert!(linux::load(&mut mem, &image, &params(&[], None)).is_ok());
}

#[test]
fn rejects_old_protocols() {
    for version in [0x0000, 0x0200, 0x0204, 0x0205] {
        let image = bzimage(version, 4, 0x1000);
        rejects(&image, &params(&[], None), LoadError::UnsupportedProtocol(version));
    }
    assert!(LoadError::UnsupportedProtocol(0x205).to_string().contains("2.05"));
}

#[test]
fn rejects_bad_setup_headers() {
    let p = params(&[], None);
    // Header shorter than 2.10 needs.
    let mut image = bzimage(0x020f, 4, 0x1000);
    set_u8(&mut image, 0x201, 0x50);
    rejects(
        &image,
        &p,
        LoadError::BadSetupHeader("the header (its end given by byte 0x201) is too short for its version"),
    );
    // A zImage.
    let mut image = bzimage(0x020f, 4, 0x1000);
    set_u8(&mut image, 0x211, 0);
    rejects(&image, &p, LoadError::BadSetupHeader("LOADED_HIGH is clear (a zImage, not a bzImage)"));
    // Relocatable with a bogus alignment.
    let mut image = bzimage(0x020f, 4, 0x1000);
    set_u32(&mut image, 0x230, 0x30_0000);
    rejects(&image, &p, LoadError::BadSetupHeader("kernel_alignment is not a power of two"));
    // Non-relocatable below 1 MiB.
    let mut image = bzimage(0x020f, 4, 0x1000);
    set_u8(&mut image, 0x234, 0);
    set_u64(&mut image, 0x258, 0x8_0000);
    rejects(&image, &p, LoadError::BadSetupHeader("pref_address of a non-relocatable kernel is below 1 MiB"));
    // pref_address + init_size overflows.
    let mut image = bzimage(0x020f, 4, 0x1000);
    set_u8(&mut image, 0x234, 0);
    set_u64(&mut image, 0x258, u64::MAX - 10);
    rejects(&image, &p, LoadError::Overflow("kernel runtime address + init_size"));
}

#[test]
fn rejects_entry_outside_the_kernel() {
    for code32 in [0x0, 0xf_ffff, 0x10_1000, 0xffff_ffff] {
        let mut image = bzimage(0x020f, 4, 0x1000);
        set_u32(&mut image, 0x214, code32);
        rejects(&image, &params(&[], None), LoadError::EntryOutsideImage { entry: code32.into() });
    }
}

#[test]
fn rejects_long_command_lines() {
    let image = bzimage(0x020f, 4, 0x1000);
    let at_limit = "x".repeat(2047);
    let mut mem = VecMemory::new(RAM);
    linux::load(&mut mem, &image, &LinuxParams { cmdline: &at_limit, ..params(&[], None) }).unwrap();
    assert_eq!(mem.c_str(0x2_0000).len(), 2047);
    let over = "x".repeat(2048);
    rejects(
        &image,
        &LinuxParams { cmdline: &over, ..params(&[], None) },
        LoadError::CmdlineTooLong { len: 2048, max: 2047 },
    );
    // A kernel that accepts anything is still held to the 64 KiB area.
    let mut image = bzimage(0x020f, 4, 0x1000);
    set_u32(&mut image, 0x238, u32::MAX);
    let huge = "y".repeat(0x1_0000);
    rejects(
        &image,
        &LinuxParams { cmdline: &huge, ..params(&[], None) },
        LoadError::CmdlineTooLong { len: 0x1_0000, max: 0xffff },
    );
    rejects(&image, &LinuxParams { cmdline: "a\0b", ..params(&[], None) }, LoadError::CmdlineHasNul);
}

#[test]
fn rejects_kernels_too_large_for_ram() {
    let image = bzimage(0x020f, 4, 0x1000);
    // init_size reaches 20 MiB.
    let mut mem = VecMemory::new(20 * MIB - 1);
    assert_eq!(
        linux::load(&mut mem, &image, &params(&[], None)),
        Err(LoadError::DoesNotFit { what: "kernel with its init_size", gpa: MIB, len: 19 * MIB, limit: 20 * MIB - 1 })
    );
    assert!(mem.writes.is_empty());
    // The file itself larger than RAM (init_size small).
    let mut image = bzimage(0x020f, 4, 3 * MIB as usize);
    set_u32(&mut image, 0x260, 0x1000);
    set_u64(&mut image, 0x258, 0);
    let mut mem = VecMemory::new(3 * MIB);
    assert!(matches!(
        linux::load(&mut mem, &image, &params(&[], None)),
        Err(LoadError::DoesNotFit { what: "kernel with its init_size", .. })
    ));
    // RAM that does not even reach boot_params (the kernel check comes first).
    let mut mem = VecMemory::new(0x7800);
    assert!(linux::load(&mut mem, &image, &params(&[], None)).is_err());
    assert!(mem.writes.is_empty());
}

#[test]
fn rejects_kernel_outside_e820_ram() {
    let image = bzimage(0x020f, 4, 0x1000);
    let e820 = [
        E820Entry { addr: 0, size: 0x9_fc00, kind: E820_RAM },
        E820Entry { addr: MIB, size: 8 * MIB, kind: E820_RAM },
        E820Entry { addr: 9 * MIB, size: RAM - 9 * MIB, kind: E820_RESERVED },
    ];
    rejects(
        &image,
        &params(&e820, None),
        LoadError::NotInRam { what: "kernel with its init_size", gpa: MIB, len: 19 * MIB },
    );
    // boot_params must be in RAM too.
    let e820 = [E820Entry { addr: 0x8000, size: RAM - 0x8000, kind: E820_RAM }];
    rejects(&image, &params(&e820, None), LoadError::NotInRam { what: "boot_params", gpa: BP, len: 0x1000 });
}

#[test]
fn error_messages_are_one_line() {
    let errors = [
        LoadError::BadMagic,
        LoadError::Truncated { what: "x", needed: 1, len: 0 },
        LoadError::DoesNotFit { what: "x", gpa: 1, len: 2, limit: 3 },
        LoadError::NotInRam { what: "x", gpa: 1, len: 2 },
        LoadError::UnsupportedProtocol(0x204),
        LoadError::BadSetupHeader("x"),
        LoadError::CmdlineTooLong { len: 2, max: 1 },
        LoadError::CmdlineHasNul,
        LoadError::InitrdDoesNotFit { size: 1 },
        LoadError::TooManyE820Entries { count: 129, max: 128 },
        LoadError::BadChecksum,
        LoadError::BadMultibootHeader("x"),
        LoadError::UnsupportedFlags(4),
        LoadError::BadElf("x"),
        LoadError::TooManySegments { max: 64 },
        LoadError::Overlap { first: 1, second: 2 },
        LoadError::BelowMinimum { gpa: 1, min: 2 },
        LoadError::EntryOutsideImage { entry: 1 },
        LoadError::Overflow("x"),
        LoadError::OutOfRange { gpa: 1, len: 2 },
    ];
    for e in errors {
        let s = e.to_string();
        assert!(!s.is_empty() && !s.contains('\n'), "{e:?}: {s:?}");
    }
}
