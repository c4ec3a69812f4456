//! The Multiboot v1 loader against synthetic ELF32 and flat ("a.out kludge") kernels.
//! Structure offsets are written out as literals from the Multiboot 0.6.96 spec.

mod common;

use common::*;
use hv_loader::multiboot::{self, Module, MultibootParams};
use hv_loader::{E820Entry, EntryState, LoadError, Region, E820_RAM, E820_RESERVED};

const RAM: u64 = 64 * MIB;

fn no_modules(e820: &[E820Entry]) -> MultibootParams<'_> {
    MultibootParams { cmdline: "", modules: &[], e820 }
}

fn mbi_of(entry: EntryState) -> u64 {
    match entry {
        EntryState::Protected32 { eax: 0x2bad_b002, ebx, esi: 0, .. } => ebx.into(),
        other => panic!("not a Multiboot entry: {other:?}"),
    }
}

#[test]
fn loads_elf32_kernel_and_builds_the_information() {
    let image = mb_elf32(0x3).build();
    let e820 = pc_e820(RAM);
    let initrd = pattern(0x1234, 40);
    let tools = pattern(0x2000, 41);
    let modules = [Module { bytes: &initrd, cmdline: "initrd.img" }, Module { bytes: &tools, cmdline: "tools --fast" }];
    let p = MultibootParams { cmdline: "kernel quiet", modules: &modules, e820: &e820 };
    let mut mem = VecMemory::filled(RAM, 0xee);
    let loaded = multiboot::load_with_layout(&mut mem, &image, &p).unwrap();

    // The kernel: text and data at their p_paddr, bss zeroed.
    let spec = mb_elf32(0x3);
    assert_eq!(mem.slice(0x10_0000, 0x2000), &spec.segments[0].data[..]);
    assert_eq!(mem.slice(0x10_3000, 0x800), &spec.segments[1].data[..]);
    assert!(mem.slice(0x10_3800, 0x2345).iter().all(|&b| b == 0), "bss not zeroed");
    assert_eq!(mem.u8(0x10_3800 + 0x2345), 0xee, "zeroed past the bss");
    assert_eq!(loaded.kernel, Region { start: 0x10_0000, end: 0x10_5b45 });

    // Entry state; the information on the first page after the kernel's bss.
    let EntryState::Protected32 { eip, .. } = loaded.entry else { panic!() };
    assert_eq!(eip, 0x10_0010);
    let mbi = mbi_of(loaded.entry);
    assert_eq!(mbi, 0x10_6000);

    // flags: MEM | CMDLINE | MODS | MMAP | LOADER_NAME.
    assert_eq!(mem.u32(mbi), (1 << 0) | (1 << 2) | (1 << 3) | (1 << 6) | (1 << 9));
    // mem_lower agrees with the map: RAM ends at 0x9fc00 (639 KiB), before the EBDA.
    assert_eq!(mem.u32(mbi + 4), 639);
    assert_eq!(mem.u32(mbi + 8), ((RAM - MIB) / 1024) as u32);
    assert_eq!(mem.u32(mbi + 12), 0, "boot_device not given");
    assert_eq!(mem.c_str(mem.u32(mbi + 16).into()), "kernel quiet");
    assert_eq!(mem.c_str(mem.u32(mbi + 64).into()), "hv-loader");
    // The rest of the structure (syms, drives, config, apm, vbe, framebuffer) is zero.
    assert!(mem.slice(mbi + 28, 16).iter().all(|&b| b == 0));
    assert!(mem.slice(mbi + 52, 12).iter().all(|&b| b == 0));
    assert!(mem.slice(mbi + 68, 116 - 68).iter().all(|&b| b == 0));

    // Memory map: size 20, base, length, type per entry.
    assert_eq!(mem.u32(mbi + 44), 4 * 24);
    let mmap = u64::from(mem.u32(mbi + 48));
    assert_eq!(mmap % 8, 0);
    for (i, e) in e820.iter().enumerate() {
        let at = mmap + 24 * i as u64;
        assert_eq!(mem.u32(at), 20);
        assert_eq!(mem.u64(at + 4), e.addr);
        assert_eq!(mem.u64(at + 12), e.size);
        assert_eq!(mem.u32(at + 20), e.kind);
    }

    // Modules: page-aligned, in order, with their strings.
    assert_eq!(mem.u32(mbi + 20), 2);
    let mods = u64::from(mem.u32(mbi + 24));
    let mut last_end = 0;
    for (i, m) in modules.iter().enumerate() {
        let at = mods + 16 * i as u64;
        let (start, end) = (u64::from(mem.u32(at)), u64::from(mem.u32(at + 4)));
        assert_eq!(start % 0x1000, 0, "module {i} not page-aligned");
        assert_eq!(end - start, m.bytes.len() as u64);
        assert!(start >= last_end);
        last_end = end;
        assert_eq!(mem.slice(start, m.bytes.len()), m.bytes);
        assert_eq!(mem.c_str(mem.u32(at + 8).into()), m.cmdline);
        assert_eq!(mem.u32(at + 12), 0);
    }
    assert_eq!(loaded.data, Some(Region { start: 0x10_6000, end: last_end }));
    // Every write is the kernel or inside the information region.
    for (gpa, len) in &mem.writes {
        assert!(
            (0x10_0000..0x10_5b45).contains(gpa) || (0x10_6000..last_end).contains(gpa),
            "unexpected write {len:#x} at {gpa:#x}"
        );
    }
}

#[test]
fn higher_half_elf32_entry_is_translated_to_its_physical_address() {
    let mut spec = mb_elf32(0);
    for s in &mut spec.segments {
        s.vaddr += 0xc000_0000;
    }
    spec.entry = 0xc010_0020;
    let mut mem = VecMemory::new(RAM);
    let entry = multiboot::load(&mut mem, &spec.build(), &no_modules(&[])).unwrap();
    assert!(matches!(entry, EntryState::Protected32 { eip: 0x10_0020, .. }));
    // A physical entry in a higher-half kernel is taken as it is.
    spec.entry = 0x10_0040;
    let entry = multiboot::load(&mut mem, &spec.build(), &no_modules(&[])).unwrap();
    assert!(matches!(entry, EntryState::Protected32 { eip: 0x10_0040, .. }));
}

#[test]
fn loads_flat_kernel_with_the_address_fields() {
    let image = mb_aout(0, 0x1800);
    let mut mem = VecMemory::filled(RAM, 0xee);
    let loaded = multiboot::load_with_layout(&mut mem, &image, &no_modules(&[])).unwrap();
    let base = u64::from(AOUT_LOAD_ADDR);
    assert_eq!(mem.slice(base, 0x3000), &image[..0x3000]);
    assert!(mem.slice(base + 0x3000, 0x1800).iter().all(|&b| b == 0), "bss not zeroed");
    assert_eq!(mem.u8(base + 0x4800), 0xee, "trailing file bytes loaded");
    assert_eq!(loaded.kernel, Region { start: base, end: base + 0x4800 });
    assert_eq!(
        loaded.entry,
        EntryState::Protected32 { eip: AOUT_LOAD_ADDR + 0x100, eax: 0x2bad_b002, ebx: 0x20_5000, esi: 0 }
    );
    // No e820: no memory map, mem_upper from the RAM size, an empty module list.
    let mbi = 0x20_5000;
    assert_eq!(mem.u32(mbi), (1 << 0) | (1 << 2) | (1 << 3) | (1 << 9));
    assert_eq!(mem.u32(mbi + 8), ((RAM - MIB) / 1024) as u32);
    assert_eq!(mem.u32(mbi + 20), 0);
    assert_eq!(mem.u32(mbi + 44), 0);
    assert_eq!(mem.c_str(mem.u32(mbi + 16).into()), "");
}

#[test]
fn flat_kernel_variants() {
    // load_end_addr 0: the file up to its end; bss_end_addr 0: no bss.
    let mut image = mb_aout(0, 0);
    let fields = [AOUT_LOAD_ADDR + 0x40, AOUT_LOAD_ADDR, 0, 0, AOUT_LOAD_ADDR + 0x100];
    let header = mb_header(1 << 16, Some(fields));
    image[0x40..0x40 + 32].copy_from_slice(&header);
    let mut mem = VecMemory::filled(RAM, 0xee);
    let loaded = multiboot::load_with_layout(&mut mem, &image, &no_modules(&[])).unwrap();
    assert_eq!(loaded.kernel, Region { start: 0x20_0000, end: 0x20_3500 });
    assert_eq!(mem.slice(0x20_0000, 0x3500), &image[..]);

    // The text starts 0x20 bytes into the file (header_addr - load_addr = 0x20).
    let mut image = pattern(0x2000, 8);
    let fields = [0x30_0020, 0x30_0000, 0x30_1000, 0x30_2000, 0x30_0000];
    image[0x40..0x60].copy_from_slice(&mb_header(1 << 16, Some(fields)));
    let mut mem = VecMemory::new(RAM);
    multiboot::load(&mut mem, &image, &no_modules(&[])).unwrap();
    assert_eq!(mem.slice(0x30_0000, 0x1000), &image[0x20..0x1020]);
}

#[test]
fn elf64_kernels_need_the_address_fields() {
    // A 64-bit ELF with flag 16: loaded flat from the address fields, like QEMU does.
    // The whole file is loaded at 1 MiB; the header (the first segment's data, file
    // offset 0x1000, see ElfSpec::build) lands at 1 MiB + 0x1000.
    let header_at = 0x1000;
    let fields = [0x10_1000, 0x10_0000, 0, 0, 0x10_1020];
    let mut text = mb_header(1 << 16, Some(fields));
    text.extend_from_slice(&pattern(0x1000, 1));
    let spec = ElfSpec::elf64(0x10_0000, vec![Seg::load(0x10_0000, PF_R | PF_X, text.clone(), 0)]);
    let image = spec.build();
    assert_eq!(&image[header_at..header_at + 4], &0x1bad_b002u32.to_le_bytes());
    let mut mem = VecMemory::new(RAM);
    let entry = multiboot::load(&mut mem, &image, &no_modules(&[])).unwrap();
    assert!(matches!(entry, EntryState::Protected32 { eip: 0x10_1020, .. }));
    assert_eq!(mem.slice(0x10_0000, image.len()), &image[..]);
    assert_eq!(mem.slice(0x10_1000, text.len()), &text[..]);
    // Without flag 16: rejected.
    let mut text = mb_header(0, None);
    text.extend_from_slice(&pattern(0x1000, 1));
    let image = ElfSpec::elf64(0x10_0000, vec![Seg::load(0x10_0000, PF_R | PF_X, text, 0)]).build();
    let mut mem = VecMemory::new(RAM);
    assert_eq!(
        multiboot::load(&mut mem, &image, &no_modules(&[])),
        Err(LoadError::BadElf("a 64-bit ELF Multiboot kernel needs the address fields (flag 16)"))
    );
    assert!(mem.writes.is_empty());
}

#[test]
fn mem_upper_follows_contiguous_ram_entries() {
    let image = mb_elf32(0x2).build();
    let e820 = [
        E820Entry { addr: 0, size: 0x9_fc00, kind: E820_RAM },
        E820Entry { addr: 8 * MIB, size: 8 * MIB, kind: E820_RAM },
        E820Entry { addr: MIB, size: 7 * MIB, kind: E820_RAM },
        E820Entry { addr: 16 * MIB, size: MIB, kind: E820_RESERVED },
        E820Entry { addr: 17 * MIB, size: 47 * MIB, kind: E820_RAM },
    ];
    let mut mem = VecMemory::new(RAM);
    let mbi = mbi_of(multiboot::load(&mut mem, &image, &no_modules(&e820)).unwrap());
    assert_eq!(mem.u32(mbi + 8), 15 * 1024);
    assert_eq!(mem.u32(mbi + 44), 5 * 24);
}

#[test]
fn header_search_rules() {
    // The header anywhere 4-aligned in the first 8192 bytes (flat kernels, so no ELF).
    for offset in [0usize, 4, 0x100, 8192 - 12] {
        let mut image = vec![0x90u8; 0x4000];
        let fields = [0x20_0000 + offset as u32, 0x20_0000, 0, 0, 0x20_0000];
        let header = if offset + 32 <= 8192 { mb_header(1 << 16, Some(fields)) } else { mb_header(0, None) };
        image[offset..offset + header.len()].copy_from_slice(&header);
        let found = multiboot::find_header(&image).unwrap();
        assert_eq!(found.offset, offset);
        assert_eq!(hv_loader::detect(&image), hv_loader::ImageKind::Multiboot);
    }
    // Beyond 8192 bytes, straddling the limit, or misaligned: not found.
    for offset in [8192usize, 8188, 2, 0x101] {
        let mut image = vec![0x90u8; 0x4000];
        image[offset..offset + 12].copy_from_slice(&mb_header(0, None));
        assert_eq!(multiboot::find_header(&image), Err(LoadError::BadMagic), "offset {offset}");
    }
    // A bad checksum; a good header after a bad one is still found.
    let mut image = vec![0u8; 0x100];
    image[0..12].copy_from_slice(&mb_header(0, None));
    image[8] ^= 1;
    assert_eq!(multiboot::find_header(&image), Err(LoadError::BadChecksum));
    image[0x20..0x2c].copy_from_slice(&mb_header(0, None));
    assert_eq!(multiboot::find_header(&image).unwrap().offset, 0x20);
    // Address fields past the first 8192 bytes, or past the end of the file.
    let mut image = vec![0u8; 0x4000];
    image[8180..8192].copy_from_slice(&mb_header(1 << 16, None));
    assert_eq!(
        multiboot::find_header(&image),
        Err(LoadError::BadMultibootHeader("address fields extend past the first 8192 bytes"))
    );
    let image = mb_header(1 << 16, None);
    assert_eq!(
        multiboot::find_header(&image),
        Err(LoadError::Truncated { what: "Multiboot address fields", needed: 16, len: 12 })
    );
}

/// Loads into fresh RAM and expects `err` with nothing written.
fn rejects(image: &[u8], p: &MultibootParams, err: LoadError) {
    let mut mem = VecMemory::new(RAM);
    assert_eq!(multiboot::load(&mut mem, image, p), Err(err));
    assert!(mem.writes.is_empty(), "a rejected load wrote");
}

#[test]
fn required_flags() {
    // Bits 0 and 1 are met; bits 16.. other than 16 are optional and ignored.
    let mut mem = VecMemory::new(RAM);
    multiboot::load(&mut mem, &mb_elf32(0x3 | (1 << 17) | (1 << 31)).build(), &no_modules(&[])).unwrap();
    // Video mode (bit 2) is accepted as QEMU accepts it, with no VBE or framebuffer
    // information (flags 11 and 12 clear); unknown mandatory bits are refused.
    for image in [mb_elf32(0x7).build(), mb_aout(0x4, 0)] {
        let mut mem = VecMemory::new(RAM);
        let entry = multiboot::load(&mut mem, &image, &no_modules(&[])).unwrap();
        let mbi = mbi_of(entry);
        assert_eq!(mem.u32(mbi) & ((1 << 11) | (1 << 12)), 0);
        assert!(mem.slice(mbi + 72, 116 - 72).iter().all(|&b| b == 0));
    }
    rejects(&mb_elf32(0x1 | (1 << 5) | (1 << 15)).build(), &no_modules(&[]), LoadError::UnsupportedFlags(0x8020));
    rejects(&mb_aout(0x5 | (1 << 3), 0), &no_modules(&[]), LoadError::UnsupportedFlags(0x8));
}

#[test]
fn mem_lower_follows_the_memory_map() {
    let image = mb_elf32(0x3).build();
    let load = |e820: &[E820Entry]| {
        let mut mem = VecMemory::new(RAM);
        let p = MultibootParams { cmdline: "", modules: &[], e820 };
        let mbi = mbi_of(multiboot::load(&mut mem, &image, &p).unwrap());
        (mem.u32(mbi + 4), mem.u32(mbi + 8))
    };
    let upper = ((RAM - MIB) / 1024) as u32;
    // No map: all RAM from 0, capped at 640 KiB.
    assert_eq!(load(&[]), (640, ((RAM - MIB) / 1024) as u32));
    // A PC map: low RAM ends at the EBDA.
    assert_eq!(load(&pc_e820(RAM)), (639, upper));
    // Low RAM made of two adjacent entries; low RAM that does not start at 0.
    let split = [
        E820Entry { addr: 0, size: 0x1000, kind: E820_RAM },
        E820Entry { addr: 0x1000, size: 0x9_f000, kind: E820_RAM },
        E820Entry { addr: MIB, size: RAM - MIB, kind: E820_RAM },
    ];
    assert_eq!(load(&split), (640, upper));
    let hole = [
        E820Entry { addr: 0x1000, size: 0x9_f000, kind: E820_RAM },
        E820Entry { addr: MIB, size: RAM - MIB, kind: E820_RAM },
    ];
    assert_eq!(load(&hole), (0, upper));
}

#[test]
fn rejects_bad_images() {
    let p = no_modules(&[]);
    // No header at all (a plain ELF32), a bad checksum.
    let plain = ElfSpec::elf32(0x10_0000, vec![Seg::load(0x10_0000, PF_R | PF_X, pattern(0x100, 1), 0)]).build();
    rejects(&plain, &p, LoadError::BadMagic);
    rejects(&[], &p, LoadError::BadMagic);
    let mut image = mb_elf32(0).build();
    image[0x1008] ^= 0x80;
    rejects(&image, &p, LoadError::BadChecksum);
    // Neither flag 16 nor ELF.
    let mut image = vec![0u8; 0x1000];
    image[0x10..0x1c].copy_from_slice(&mb_header(0, None));
    rejects(&image, &p, LoadError::BadMultibootHeader("no address fields (flag 16) and not an ELF file"));
    // ELF32 that is not an i386 executable.
    let mut spec = mb_elf32(0);
    spec.e_type = 3;
    rejects(&spec.build(), &p, LoadError::BadElf("not an executable (e_type is not ET_EXEC)"));
    let mut spec = mb_elf32(0);
    spec.machine = 40;
    rejects(&spec.build(), &p, LoadError::BadElf("not an i386 executable (e_machine is not EM_386)"));
}

#[test]
fn rejects_bad_elf32_placement() {
    let p = no_modules(&[]);
    // Below 1 MiB.
    let mut spec = mb_elf32(0);
    spec.segments[1].paddr = 0xf_0000;
    spec.segments[1].vaddr = 0xf_0000;
    rejects(&spec.build(), &p, LoadError::BelowMinimum { gpa: 0xf_0000, min: 0x10_0000 });
    // Overlapping segments (the data segment's start inside the text).
    let mut spec = mb_elf32(0);
    spec.segments[1].paddr = 0x10_1000;
    spec.segments[1].vaddr = 0x10_1000;
    rejects(&spec.build(), &p, LoadError::Overlap { first: 0x10_0000, second: 0x10_1000 });
    // Beyond RAM.
    let mut spec = mb_elf32(0);
    spec.segments[1].paddr = RAM - 0x100;
    spec.segments[1].vaddr = RAM - 0x100;
    rejects(
        &spec.build(),
        &p,
        LoadError::DoesNotFit { what: "ELF segment", gpa: RAM - 0x100, len: 0x2b45, limit: RAM },
    );
    // Entry in no segment.
    let mut spec = mb_elf32(0);
    spec.entry = 0x50_0000;
    rejects(&spec.build(), &p, LoadError::EntryOutsideImage { entry: 0x50_0000 });
}

#[test]
fn rejects_bad_address_fields() {
    let p = no_modules(&[]);
    let with = |fields: [u32; 5]| {
        let mut image = mb_aout(0, 0);
        image[0x40..0x60].copy_from_slice(&mb_header(1 << 16, Some(fields)));
        image
    };
    let l = AOUT_LOAD_ADDR;
    rejects(&with([l, l + 4, 0, 0, l + 4]), &p, LoadError::BadMultibootHeader("load_addr is above header_addr"));
    rejects(
        &with([l + 0x80, l, 0, 0, l]),
        &p,
        LoadError::BadMultibootHeader("header_addr - load_addr exceeds the header's offset in the file"),
    );
    rejects(&with([l + 0x40, l, l - 1, 0, l]), &p, LoadError::BadMultibootHeader("load_end_addr is below load_addr"));
    rejects(
        &with([l + 0x40, l, l + 0x4000, 0, l]),
        &p,
        LoadError::Truncated { what: "Multiboot kernel text", needed: 0x4000, len: 0x3500 },
    );
    rejects(
        &with([l + 0x40, l, l + 0x3000, l + 0x2000, l]),
        &p,
        LoadError::BadMultibootHeader("bss_end_addr is below the end of the loaded text"),
    );
    rejects(
        &with([l + 0x40, l, l + 0x3000, 0, l + 0x3000]),
        &p,
        LoadError::EntryOutsideImage { entry: (l + 0x3000).into() },
    );
    rejects(&with([0x8_0040, 0x8_0000, 0, 0, 0x8_0000]), &p, LoadError::BelowMinimum { gpa: 0x8_0000, min: 0x10_0000 });
    rejects(
        &with([l + 0x40, l, l + 0x3000, 0x7000_0000, l]),
        &p,
        LoadError::DoesNotFit { what: "Multiboot kernel", gpa: l.into(), len: 0x7000_0000 - u64::from(l), limit: RAM },
    );
}

#[test]
fn rejects_boot_data_that_does_not_fit() {
    let image = mb_aout(0, 0);
    // A module larger than what is left of RAM.
    let big = vec![0u8; 62 * MIB as usize];
    let modules = [Module { bytes: &big, cmdline: "big" }];
    let p = MultibootParams { cmdline: "", modules: &modules, e820: &[] };
    let err = {
        let mut mem = VecMemory::new(RAM);
        let err = multiboot::load(&mut mem, &image, &p).unwrap_err();
        assert!(mem.writes.is_empty());
        err
    };
    assert!(
        matches!(err, LoadError::DoesNotFit { what: "Multiboot information and modules", gpa: 0x20_3000, .. }),
        "{err:?}"
    );
    // The information would cross out of the e820 RAM entry holding the kernel.
    let e820 = [E820Entry { addr: MIB, size: 0x20_3000 - MIB + 0x80, kind: E820_RAM }];
    rejects(
        &image,
        &no_modules(&e820),
        LoadError::NotInRam {
            what: "Multiboot information and modules",
            gpa: 0x20_3000,
            len: 116 + 4 + 24 + 1 + 10, // info, padding, one mmap entry, "" and "hv-loader"
        },
    );
    // The kernel itself outside e820 RAM.
    let e820 = [E820Entry { addr: 0, size: 0x9_fc00, kind: E820_RAM }];
    rejects(&image, &no_modules(&e820), LoadError::NotInRam { what: "Multiboot kernel", gpa: 0x20_0000, len: 0x3000 });
    // Strings with a NUL.
    rejects(&image, &MultibootParams { cmdline: "a\0", modules: &[], e820: &[] }, LoadError::CmdlineHasNul);
    let modules = [Module { bytes: &[1], cmdline: "m\0" }];
    rejects(&image, &MultibootParams { cmdline: "", modules: &modules, e820: &[] }, LoadError::CmdlineHasNul);
}

#[test]
fn boot_data_stays_below_4g() {
    // 5 GiB of RAM: the kernel near the 4 GiB line, the modules cannot cross it.
    let fields = [0xfff0_0040, 0xfff0_0000, 0, 0, 0xfff0_0000];
    let mut image = pattern(0x1000, 2);
    image[0x40..0x60].copy_from_slice(&mb_header(1 << 16, Some(fields)));
    let module = vec![0u8; 0x10_0000];
    let modules = [Module { bytes: &module, cmdline: "" }];
    let mut mem = SparseMemory::new(5 << 30);
    let err =
        multiboot::load(&mut mem, &image, &MultibootParams { cmdline: "", modules: &modules, e820: &[] }).unwrap_err();
    assert!(matches!(err, LoadError::DoesNotFit { limit: 0xffff_ffff, .. }), "{err:?}");
    assert!(mem.writes.is_empty());
    // Without the module everything fits below 4 GiB.
    let entry = multiboot::load(&mut mem, &image, &no_modules(&[])).unwrap();
    assert_eq!(mbi_of(entry), 0xfff0_1000);
}
