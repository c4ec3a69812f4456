//! Property tests: random and mutated images, random parameters. No loader may panic,
//! every write must stay inside guest RAM ([`VecMemory`] asserts it), a rejected image
//! must leave RAM untouched, and an accepted one must start inside RAM.

mod common;

use common::*;
use hv_loader::linux::{self, LinuxParams};
use hv_loader::multiboot::{self, Module, MultibootParams};
use hv_loader::{detect, elf64, E820Entry, EntryState, LoadError, Loaded};
use proptest::prelude::*;

/// Checks one loader result against the memory it ran on.
fn check(result: Result<Loaded, LoadError>, mem: &VecMemory) {
    match result {
        Ok(loaded) => {
            let ram = mem.bytes.len() as u64;
            let entry = match loaded.entry {
                EntryState::Protected32 { eip, .. } => u64::from(eip),
                EntryState::Long64 { rip, .. } => rip,
            };
            assert!(entry < ram, "entry {entry:#x} outside RAM");
            assert!(loaded.kernel.start < loaded.kernel.end && loaded.kernel.end <= ram);
            if let Some(data) = loaded.data {
                assert!(data.end <= ram && !data.overlaps(&loaded.kernel), "{loaded:?}");
            }
        }
        Err(e) => {
            assert!(mem.writes.is_empty(), "rejected ({e}) after writing");
            assert!(!e.to_string().contains('\n'));
        }
    }
}

fn e820_entry() -> impl Strategy<Value = E820Entry> {
    (0u64..16 * MIB, 0u64..16 * MIB, 0u32..5).prop_map(|(addr, size, kind)| E820Entry { addr, size, kind })
}

/// An e820 map: none, the PC map of `ram` bytes, or random entries.
fn e820_map() -> impl Strategy<Value = (u8, Vec<E820Entry>)> {
    (0u8..3, prop::collection::vec(e820_entry(), 0..6))
}

fn pick_e820(choice: u8, random: Vec<E820Entry>, ram: u64) -> Vec<E820Entry> {
    match choice {
        0 => Vec::new(),
        1 if ram > MIB => pc_e820(ram),
        _ => random,
    }
}

/// A few guest RAM sizes, from too small for anything to 12 MiB.
fn ram_size() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0x8000u64), Just(MIB), 2 * MIB..12 * MIB, Just(8 * MIB)]
}

/// One change to an image: overwrite `width` bytes at an offset with `value`, the offset
/// either anywhere or in the format's header area.
#[derive(Debug, Clone)]
struct Mutation {
    in_header: bool,
    selector: usize,
    width: usize,
    value: u64,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    (any::<bool>(), any::<usize>(), prop::sample::select(vec![1usize, 2, 4, 8]), any::<u64>())
        .prop_map(|(in_header, selector, width, value)| Mutation { in_header, selector, width, value })
}

/// Applies mutations; `header` is the header range of the format.
fn mutate(mut image: Vec<u8>, header: std::ops::Range<usize>, mutations: &[Mutation], cut: Option<usize>) -> Vec<u8> {
    for m in mutations {
        let (base, len) = if m.in_header { (header.start, header.len()) } else { (0, image.len()) };
        let at = base + m.selector % len.max(1);
        for (i, b) in m.value.to_le_bytes()[..m.width].iter().enumerate() {
            if let Some(slot) = image.get_mut(at + i) {
                *slot = *b;
            }
        }
    }
    if let Some(cut) = cut {
        image.truncate(cut % (image.len() + 1));
    }
    image
}

fn run_linux(image: &[u8], ram: u64, p: &LinuxParams) {
    let mut mem = VecMemory::new(ram);
    check(linux::load_with_layout(&mut mem, image, p), &mem);
}

fn run_multiboot(image: &[u8], ram: u64, p: &MultibootParams) {
    let mut mem = VecMemory::new(ram);
    check(multiboot::load_with_layout(&mut mem, image, p), &mem);
}

fn run_elf64(image: &[u8], ram: u64, min: u64) {
    let mut mem = VecMemory::new(ram);
    check(elf64::load_with_layout(&mut mem, image, min), &mem);
}

/// Every loader on `image`.
fn run_all(image: &[u8], ram: u64) {
    let _ = detect(image);
    let e820 = pc_e820(ram.max(2 * MIB));
    let initrd = [7u8; 0x3000];
    run_linux(
        image,
        ram,
        &LinuxParams { cmdline: "console=ttyS0", initrd: Some(&initrd), e820: &e820, acpi_rsdp: Some(0xe0000) },
    );
    let modules = [Module { bytes: &initrd, cmdline: "mod" }];
    run_multiboot(image, ram, &MultibootParams { cmdline: "x", modules: &modules, e820: &e820 });
    run_elf64(image, ram, MIB);
}

fn elf64_kernel() -> Vec<u8> {
    ElfSpec::elf64(
        0x20_0010,
        vec![
            Seg::load(0x20_0000, PF_R | PF_X, pattern(0x800, 1), 0),
            Seg::load(0x20_2000, PF_R | PF_W, pattern(0x300, 2), 0x900),
        ],
    )
    .build()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes(image in prop::collection::vec(any::<u8>(), 0..0x3000), ram in ram_size()) {
        run_all(&image, ram);
    }

    #[test]
    fn mutated_bzimage(
        mutations in prop::collection::vec(mutation(), 0..6),
        cut in prop::option::of(any::<usize>()),
        ram in ram_size(),
        initrd_len in 0usize..0x30_0000,
        cmdline in "[ -~]{0,40}",
        (choice, random) in e820_map(),
    ) {
        // Runtime range 2 MiB (1 MiB aligned up) + 2 MiB: fits the smaller RAM sizes.
        let mut image = bzimage(0x020f, 4, 0x2000);
        set_u64(&mut image, 0x258, 0);
        set_u32(&mut image, 0x260, 0x20_0000);
        let image = mutate(image, 0x1f0..0x270, &mutations, cut);
        let e820 = pick_e820(choice, random, ram);
        let initrd = vec![0x5a; initrd_len];
        let p = LinuxParams { cmdline: &cmdline, initrd: Some(&initrd), e820: &e820, acpi_rsdp: None };
        run_linux(&image, ram, &p);
        run_all(&image, ram);
    }

    #[test]
    fn mutated_multiboot_elf32(
        mutations in prop::collection::vec(mutation(), 0..6),
        cut in prop::option::of(any::<usize>()),
        ram in ram_size(),
        module_lens in prop::collection::vec(0usize..0x10_0000, 0..4),
        (choice, random) in e820_map(),
    ) {
        let e820 = pick_e820(choice, random, ram);
        // Header area: the ELF header and program headers, then the Multiboot header.
        let spec = mb_elf32(0);
        let image = mutate(spec.build(), 0..0x80, &mutations, cut);
        let datas: Vec<Vec<u8>> = module_lens.iter().map(|&n| vec![1; n]).collect();
        let modules: Vec<Module> = datas.iter().map(|d| Module { bytes: d, cmdline: "m" }).collect();
        run_multiboot(&image, ram, &MultibootParams { cmdline: "c", modules: &modules, e820: &e820 });
        let image = mutate(spec.build(), 0x1000..0x100c, &mutations, cut);
        run_multiboot(&image, ram, &MultibootParams { cmdline: "c", modules: &modules, e820: &e820 });
    }

    #[test]
    fn mutated_multiboot_flat(
        mutations in prop::collection::vec(mutation(), 0..6),
        cut in prop::option::of(any::<usize>()),
        ram in ram_size(),
        bss in 0u32..0x40_0000,
        (choice, random) in e820_map(),
    ) {
        let e820 = pick_e820(choice, random, ram);
        let image = mutate(mb_aout(0, bss), AOUT_HEADER_OFFSET..AOUT_HEADER_OFFSET + 32, &mutations, cut);
        run_multiboot(&image, ram, &MultibootParams { cmdline: "", modules: &[], e820: &e820 });
        run_all(&image, ram);
    }

    #[test]
    fn mutated_elf64(
        mutations in prop::collection::vec(mutation(), 0..6),
        cut in prop::option::of(any::<usize>()),
        ram in ram_size(),
        min in prop_oneof![Just(0u64), Just(MIB), Just(2 * MIB), any::<u64>()],
    ) {
        let image = mutate(elf64_kernel(), 0..64 + 2 * 56, &mutations, cut);
        run_elf64(&image, ram, min);
    }

    /// Valid ELF64 images with random segment layouts: accepted exactly when the
    /// segments are inside `min..ram`, disjoint and the entry is in the executable one.
    #[test]
    fn random_elf64_layouts(
        segs in prop::collection::vec((0u64..20 * MIB, 0usize..0x2000, 0u64..0x4000, any::<bool>()), 1..6),
        entry_pick in any::<prop::sample::Index>(),
        entry_offset in 0u64..0x6000,
        ram in 2 * MIB..16 * MIB,
    ) {
        let min = MIB;
        let segments: Vec<Seg> = segs
            .iter()
            .map(|&(paddr, len, bss, x)| Seg::load(paddr, if x { PF_R | PF_X } else { PF_R }, pattern(len, 3), bss))
            .collect();
        let chosen = &segments[entry_pick.index(segments.len())];
        let entry = chosen.paddr + entry_offset;
        let image = ElfSpec::elf64(entry, segments.clone()).build();
        let loads: Vec<&Seg> = segments.iter().filter(|s| s.memsz > 0).collect();
        let inside = loads.iter().all(|s| s.paddr >= min && s.paddr + s.memsz <= ram);
        let disjoint = loads.iter().enumerate().all(|(i, a)| {
            loads[..i].iter().all(|b| a.paddr + a.memsz <= b.paddr || b.paddr + b.memsz <= a.paddr)
        });
        let entry_ok = loads.iter().any(|s| s.flags & PF_X != 0 && s.paddr <= entry && entry < s.paddr + s.memsz);
        let mut mem = VecMemory::new(ram);
        let result = elf64::load(&mut mem, &image, min);
        prop_assert_eq!(result.is_ok(), !loads.is_empty() && inside && disjoint && entry_ok, "{:?}", result);
        if result.is_ok() {
            for s in &loads {
                prop_assert_eq!(mem.slice(s.paddr, s.data.len()), &s.data[..]);
                prop_assert!(mem.slice(s.paddr + s.data.len() as u64, (s.memsz - s.data.len() as u64) as usize).iter().all(|&b| b == 0));
            }
        } else {
            prop_assert!(mem.writes.is_empty());
        }
    }

    /// Valid bzImages with random parameters: the initrd, when placed, is page-aligned,
    /// inside one RAM entry, clear of the kernel and below initrd_addr_max.
    #[test]
    fn initrd_placement(
        ram in 2 * MIB..40 * MIB,
        initrd_len in 1usize..0x80_0000,
        addr_max in 0u32..0x300_0000,
        init_size in 0u32..0x100_0000,
        (choice, random) in e820_map(),
    ) {
        let e820 = pick_e820(choice, random, ram);
        let mut image = bzimage(0x020f, 4, 0x1000);
        set_u32(&mut image, 0x22c, addr_max);
        set_u32(&mut image, 0x260, init_size);
        let initrd = vec![3u8; initrd_len];
        let p = LinuxParams { cmdline: "", initrd: Some(&initrd), e820: &e820, acpi_rsdp: None };
        let mut mem = VecMemory::new(ram);
        match linux::load_with_layout(&mut mem, &image, &p) {
            Ok(loaded) => {
                let data = loaded.data.unwrap();
                prop_assert_eq!(data.start % 0x1000, 0);
                prop_assert_eq!(data.end - data.start, initrd_len as u64);
                prop_assert!(data.end <= u64::from(addr_max) + 1 && data.end <= ram);
                prop_assert!(data.start >= loaded.kernel.end);
                let in_entry = e820.is_empty() || e820.iter().any(|e| e.kind == 1 && e.addr <= data.start && data.end <= e.addr + e.size);
                prop_assert!(in_entry);
                prop_assert_eq!(u64::from(mem.u32(0x7218)), data.start);
                prop_assert_eq!(mem.u32(0x721c) as usize, initrd_len);
            }
            Err(_) => prop_assert!(mem.writes.is_empty()),
        }
    }
}
