//! The ELF64 loader against synthetic x86-64 executables, and image detection.

mod common;

use common::*;
use hv_loader::{detect, elf64, EntryState, ImageKind, LoadError, Region};

const RAM: u64 = 16 * MIB;
const MIN: u64 = 2 * MIB;

/// Text at 2 MiB (RX), rodata at 2 MiB + 0x3000 (R), data at 2 MiB + 0x5000 (RW) with
/// 0x1800 bytes of bss, a PT_NOTE and an empty PT_LOAD that must be ignored.
fn kernel() -> ElfSpec {
    let note = Seg {
        p_type: PT_NOTE,
        flags: PF_R,
        vaddr: 0,
        paddr: 0,
        data: vec![4; 0x20],
        memsz: 0x20,
        offset: None,
        filesz: None,
    };
    let empty =
        Seg { p_type: PT_LOAD, flags: PF_R, vaddr: 0, paddr: 0, data: vec![], memsz: 0, offset: Some(0), filesz: None };
    ElfSpec::elf64(
        0x20_0040,
        vec![
            Seg::load(0x20_0000, PF_R | PF_X, pattern(0x2345, 1), 0),
            note,
            Seg::load(0x20_3000, PF_R, pattern(0x1000, 2), 0),
            empty,
            Seg::load(0x20_5000, PF_R | PF_W, pattern(0x0a00, 3), 0x1800),
        ],
    )
}

fn rejects(image: &[u8], err: LoadError) {
    let mut mem = VecMemory::new(RAM);
    assert_eq!(elf64::load(&mut mem, image, MIN), Err(err));
    assert!(mem.writes.is_empty(), "a rejected load wrote");
    assert!(!err.to_string().is_empty());
}

#[test]
fn loads_segments_and_zeroes_bss() {
    let spec = kernel();
    let image = spec.build();
    assert_eq!(detect(&image), ImageKind::Elf64);
    let mut mem = VecMemory::filled(RAM, 0xee);
    let loaded = elf64::load_with_layout(&mut mem, &image, MIN).unwrap();
    assert_eq!(loaded.entry, EntryState::Long64 { rip: 0x20_0040, rsi: 0 });
    assert_eq!(loaded.kernel, Region { start: 0x20_0000, end: 0x20_5a00 + 0x1800 });
    assert_eq!(loaded.data, None);
    assert_eq!(mem.slice(0x20_0000, 0x2345), &spec.segments[0].data[..]);
    assert_eq!(mem.u8(0x20_2345), 0xee, "wrote between segments");
    assert_eq!(mem.slice(0x20_3000, 0x1000), &spec.segments[2].data[..]);
    assert_eq!(mem.slice(0x20_5000, 0xa00), &spec.segments[4].data[..]);
    assert!(mem.slice(0x20_5a00, 0x1800).iter().all(|&b| b == 0));
    assert_eq!(mem.u8(0x20_7200), 0xee, "zeroed past the bss");
    assert_eq!(mem.u8(0), 0xee, "the empty PT_LOAD or PT_NOTE was loaded");
}

#[test]
fn segment_order_in_the_file_does_not_matter_and_ends_may_touch() {
    let image = ElfSpec::elf64(
        0x30_0000,
        vec![
            Seg::load(0x30_1000, PF_R, pattern(0x1000, 1), 0),
            Seg::load(0x30_0000, PF_R | PF_X, pattern(0x1000, 2), 0),
            Seg::load(MIN, PF_R, pattern(0x10, 3), 0),
            Seg::load(RAM - 0x1000, PF_R | PF_W, vec![], 0x1000),
        ],
    )
    .build();
    let mut mem = VecMemory::new(RAM);
    let loaded = elf64::load_with_layout(&mut mem, &image, MIN).unwrap();
    assert_eq!(loaded.kernel, Region { start: MIN, end: RAM });
}

#[test]
fn entry_from_a_virtual_address_is_translated() {
    let mut spec = kernel();
    for s in &mut spec.segments {
        if s.p_type == PT_LOAD && s.memsz > 0 {
            s.vaddr += 0xffff_ffff_8000_0000;
        }
    }
    spec.entry = 0xffff_ffff_8020_0100;
    let mut mem = VecMemory::new(RAM);
    assert_eq!(elf64::load(&mut mem, &spec.build(), MIN), Ok(EntryState::Long64 { rip: 0x20_0100, rsi: 0 }));
    // A physical entry is taken as it is.
    spec.entry = 0x20_0200;
    assert_eq!(elf64::load(&mut mem, &spec.build(), MIN), Ok(EntryState::Long64 { rip: 0x20_0200, rsi: 0 }));
}

#[test]
fn rejects_bad_placement() {
    // Below the minimum.
    let mut mem = VecMemory::new(RAM);
    assert_eq!(
        elf64::load(&mut mem, &kernel().build(), MIN + 1),
        Err(LoadError::BelowMinimum { gpa: 0x20_0000, min: MIN + 1 })
    );
    assert!(mem.writes.is_empty());
    // Beyond RAM.
    let mut spec = kernel();
    spec.segments[4].paddr = RAM - 0x1000;
    rejects(&spec.build(), LoadError::DoesNotFit { what: "ELF segment", gpa: RAM - 0x1000, len: 0x2200, limit: RAM });
    // Overlapping (only by the bss).
    let mut spec = kernel();
    spec.segments[2].paddr = 0x20_6000;
    rejects(&spec.build(), LoadError::Overlap { first: 0x20_6000, second: 0x20_5000 });
    // p_paddr + p_memsz overflows.
    let mut spec = kernel();
    spec.segments[4].paddr = u64::MAX - 0x100;
    rejects(&spec.build(), LoadError::Overflow("ELF segment"));
}

#[test]
fn rejects_bad_segments() {
    // p_filesz > p_memsz.
    let mut spec = kernel();
    spec.segments[2].memsz = 0x800;
    rejects(&spec.build(), LoadError::BadElf("segment p_filesz exceeds p_memsz"));
    // Data beyond the file.
    let mut spec = kernel();
    spec.segments[4].offset = Some(0x10_0000);
    let image = spec.build();
    rejects(&image, LoadError::Truncated { what: "ELF segment data", needed: 0x10_0a00, len: image.len() as u64 });
    // p_offset + p_filesz overflows.
    let mut spec = kernel();
    spec.segments[4].offset = Some(u64::MAX - 4);
    rejects(&spec.build(), LoadError::Overflow("p_offset + p_filesz"));
    // Even a PT_LOAD with p_memsz 0 must be consistent.
    let mut spec = kernel();
    spec.segments[3].filesz = Some(1);
    rejects(&spec.build(), LoadError::BadElf("segment p_filesz exceeds p_memsz"));
    // No loadable segment.
    let image = ElfSpec::elf64(0x20_0000, vec![kernel().segments[1].clone()]).build();
    rejects(&image, LoadError::BadElf("no loadable segment"));
    // Too many.
    let segs = (0..65).map(|i| Seg::load(MIN + i * 0x1000, PF_R | PF_X, vec![0x90; 16], 0)).collect();
    rejects(&ElfSpec::elf64(MIN, segs).build(), LoadError::TooManySegments { max: 64 });
    let segs = (0..64).map(|i| Seg::load(MIN + i * 0x1000, PF_R | PF_X, vec![0x90; 16], 0)).collect();
    let mut mem = VecMemory::new(RAM);
    elf64::load(&mut mem, &ElfSpec::elf64(MIN, segs).build(), MIN).unwrap();
}

#[test]
fn rejects_entry_outside_executable_segments() {
    for entry in [0x20_3000, 0x20_5000, 0x20_2345, 0x10_0000, 0] {
        let mut spec = kernel();
        spec.entry = entry;
        rejects(&spec.build(), LoadError::EntryOutsideImage { entry });
    }
}

#[test]
fn rejects_bad_headers() {
    let good = kernel().build();
    // Magic, class, endianness, version, type, machine.
    let mut image = good.clone();
    image[1] = b'F';
    rejects(&image, LoadError::BadMagic);
    let mut image = good.clone();
    image[4] = 1;
    rejects(&image, LoadError::BadElf("not a 64-bit ELF file"));
    let mut image = good.clone();
    image[4] = 3;
    rejects(&image, LoadError::BadElf("unknown ELF class"));
    let mut image = good.clone();
    image[5] = 2;
    rejects(&image, LoadError::BadElf("not little-endian"));
    let mut image = good.clone();
    image[6] = 2;
    rejects(&image, LoadError::BadElf("unknown ELF version"));
    let mut image = good.clone();
    set_u32(&mut image, 20, 2);
    rejects(&image, LoadError::BadElf("e_version is not EV_CURRENT"));
    let mut spec = kernel();
    spec.e_type = 3;
    rejects(&spec.build(), LoadError::BadElf("not an executable (e_type is not ET_EXEC)"));
    let mut spec = kernel();
    spec.machine = 3;
    rejects(&spec.build(), LoadError::BadElf("not an x86-64 executable (e_machine is not EM_X86_64)"));
    // A 32-bit file.
    rejects(&mb_elf32(0).build(), LoadError::BadElf("not a 64-bit ELF file"));
    // Program header table: missing, wrong entry size, PN_XNUM, past the file.
    let mut image = good.clone();
    set_u16(&mut image, 56, 0);
    rejects(&image, LoadError::BadElf("no program headers"));
    let mut image = good.clone();
    set_u64(&mut image, 32, 0);
    rejects(&image, LoadError::BadElf("no program headers"));
    let mut image = good.clone();
    set_u16(&mut image, 54, 64);
    rejects(&image, LoadError::BadElf("e_phentsize does not match the ELF class"));
    let mut image = good.clone();
    set_u16(&mut image, 56, 0xffff);
    rejects(&image, LoadError::BadElf("extended program header count (PN_XNUM) is not supported"));
    let mut image = good.clone();
    set_u64(&mut image, 32, good.len() as u64 - 100);
    rejects(
        &image,
        LoadError::Truncated {
            what: "ELF program header table",
            needed: good.len() as u64 - 100 + 5 * 56,
            len: good.len() as u64,
        },
    );
    let mut image = good.clone();
    set_u64(&mut image, 32, u64::MAX - 8);
    assert!(matches!(elf64::load(&mut VecMemory::new(RAM), &image, MIN), Err(LoadError::Overflow(_))));
}

#[test]
fn rejects_truncation_at_each_point() {
    let good = kernel().build();
    let t = |what, needed: u64, len: usize| LoadError::Truncated { what, needed, len: len as u64 };
    rejects(&[], t("ELF identification", 16, 0));
    rejects(&good[..3], t("ELF identification", 16, 3));
    rejects(&good[..16], t("ELF file header", 64, 16));
    rejects(&good[..63], t("ELF file header", 64, 63));
    rejects(&good[..64 + 56 * 5 - 1], t("ELF program header table", 64 + 56 * 5, 64 + 56 * 5 - 1));
    // Everything but the last segment's last byte.
    let end = good.len();
    rejects(&good[..end - 1], t("ELF segment data", end as u64, end - 1));
}

#[test]
fn section_headers_are_not_read() {
    let mut image = kernel().build();
    set_u64(&mut image, 40, u64::MAX); // e_shoff far outside the file
    set_u16(&mut image, 60, 0xffff); // e_shnum
    set_u16(&mut image, 58, 3); // e_shentsize
    let mut mem = VecMemory::new(RAM);
    elf64::load(&mut mem, &image, MIN).unwrap();
}

#[test]
fn detects_each_kind() {
    assert_eq!(detect(&bzimage(0x020f, 4, 0x100)), ImageKind::LinuxBzImage);
    assert_eq!(detect(&bzimage(0x0200, 4, 0x100)), ImageKind::LinuxBzImage, "detection does not judge the version");
    assert_eq!(detect(&mb_elf32(0).build()), ImageKind::Multiboot);
    assert_eq!(detect(&mb_aout(0, 0)), ImageKind::Multiboot);
    assert_eq!(detect(&kernel().build()), ImageKind::Elf64);
    // A bzImage that also carries a Multiboot header is a bzImage.
    let mut both = bzimage(0x020f, 4, 0x100);
    both[0x400..0x40c].copy_from_slice(&mb_header(0, None));
    assert_eq!(detect(&both), ImageKind::LinuxBzImage);
    // An ELF64 with a Multiboot header is a Multiboot kernel.
    let mut spec = kernel();
    spec.prefix = mb_header(0, None);
    assert_eq!(detect(&spec.build()), ImageKind::Multiboot);
    // Neither.
    let plain32 = ElfSpec::elf32(0x10_0000, vec![Seg::load(0x10_0000, PF_R | PF_X, vec![0x90; 4], 0)]).build();
    assert_eq!(detect(&plain32), ImageKind::Unknown);
    let mut not_x86 = kernel();
    not_x86.machine = 183;
    assert_eq!(detect(&not_x86.build()), ImageKind::Unknown);
    assert_eq!(detect(&[]), ImageKind::Unknown);
    assert_eq!(detect(b"\x7fELF"), ImageKind::Unknown);
    let mut bad_sum = mb_aout(0, 0);
    bad_sum[0x48] ^= 1;
    assert_eq!(detect(&bad_sum), ImageKind::Unknown);
}
