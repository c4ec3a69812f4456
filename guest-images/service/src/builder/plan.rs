//! The hardware-free part of the guest builder: every decision that does not need a
//! hypercall or the pool window, so that it can be unit-tested on the host (the
//! service itself is a `no_std` binary; see the tests at the end for how they run).
//!
//! - [`Pool`]: where each guest's RAM goes in the memory pool (sequential, 2 MiB
//!   aligned);
//! - [`choose_cpus`]: the physical CPU of each guest vCPU;
//! - [`e820`]: the guest's memory map;
//! - [`check_flat`]: the layout rules for flat images (as the hypervisor's own builder
//!   has them);
//! - [`flat_start_state`], [`entry_start_state`]: the boot vCPU's start state;
//! - [`gdt_bytes`], [`page_table_page`]: the boot structures of `hv_abi::start` (from there);
//! - [`DryRun`]: a [`GuestMemory`] that only checks ranges, for validating an image with
//!   its loader before anything is created;
//! - [`cmdline_from`], [`modules_from`], [`check_boot_files`]: a guest's command line and
//!   Multiboot modules from the payload, and whether its image takes them;
//! - [`Failure`]: why a partition was not started.

use core::fmt;

use hv_abi::service::control::{mode, VcpuStartState};
use hv_abi::start;
use hv_core::boot_conf::{ModuleFiles, StartMode, MAX_MODULES, MAX_VCPUS};
use hv_loader::multiboot::Module;
use hv_loader::{E820Entry, EntryState, GuestMemory, ImageKind, LoadError, Region, E820_RAM, E820_RESERVED};

/// Guest RAM comes in pieces of this size (`VM_MAP_RAM`'s unit).
pub const RAM_ALIGN: u64 = 2 << 20;
/// The platform tables (ACPI, MP) region: the BIOS area 0xE0000..0x100000, where the
/// RSDP and MP floating-pointer scans look.
pub const TABLES_GPA: u64 = 0xE_0000;
pub const TABLES_BYTES: u64 = 0x2_0000;
/// End of the low RAM entry of the e820 map (640 KiB minus the 1 KiB EBDA a PC BIOS
/// keeps); from here to [`HIGH_RAM_START`] is reserved (EBDA, VGA hole, option ROMs,
/// BIOS area with the platform tables).
pub const LOW_RAM_END: u64 = 0x9_FC00;
/// Start of the high RAM entry (1 MiB).
pub const HIGH_RAM_START: u64 = 0x10_0000;
/// RSP of a flat image started in real mode (below the 0x8000 real-mode entry area).
pub const REAL_MODE_STACK: u64 = 0x7000;
/// Lowest load address of a flat real-mode image (page 0 holds the IVT).
pub const REAL_MODE_MIN_LOAD: u64 = 0x1000;
/// Highest entry point (exclusive) of a flat real-mode image.
pub const REAL_MODE_ENTRY_LIMIT: u64 = 0x10_0000;
/// Linux's command line when its line names no `cmdline=` file.
pub const LINUX_CMDLINE: &str = "console=ttyS0";

/// The kernel command line from the bytes of a payload's `cmdline=` file: printable
/// ASCII only (the config's own rule, checked again: the payload is input).
pub fn cmdline_from(bytes: &[u8]) -> Result<&str, Failure> {
    if !hv_abi::service::is_valid_cmdline(bytes) {
        return Err(Failure::BadCmdline);
    }
    core::str::from_utf8(bytes).map_err(|_| Failure::BadCmdline)
}

/// A guest's Multiboot modules, in order.
#[derive(Debug, Clone, Copy)]
pub struct Modules<'a> {
    list: [Module<'a>; MAX_MODULES],
    len: usize,
}

impl<'a> Modules<'a> {
    /// No modules.
    #[must_use]
    pub const fn none() -> Self {
        Self { list: [Module { bytes: &[], cmdline: "" }; MAX_MODULES], len: 0 }
    }

    #[must_use]
    pub fn as_slice(&self) -> &[Module<'a>] {
        self.list.get(..self.len).unwrap_or(&[])
    }
}

/// The Multiboot modules a partition line lists, each file looked up with `find` (the
/// payload's files by path): the contents as they are, the string checked as a command
/// line is ([`cmdline_from`]: the payload is input). Fails on the first module whose
/// contents or string is missing, or whose string is not printable ASCII.
pub fn modules_from<'a>(
    listed: &[ModuleFiles<'_>],
    find: impl Fn(&str) -> Option<&'a [u8]>,
) -> Result<Modules<'a>, Failure> {
    let mut modules = Modules::none();
    for (index, files) in listed.iter().enumerate() {
        let bytes = find(files.data).ok_or(Failure::ModuleMissing(index))?;
        let string = find(files.string).ok_or(Failure::BadModuleString(index))?;
        let cmdline = cmdline_from(string).map_err(|_| Failure::BadModuleString(index))?;
        let slot = modules.list.get_mut(index).ok_or(Failure::Layout("more than 16 modules listed"))?;
        *slot = Module { bytes, cmdline };
        modules.len = index + 1;
    }
    Ok(modules)
}

/// The kind of a partition's image: flat when its line gives `load=`/`entry=`, else
/// what the loaders' `detect` makes of its bytes (`UnknownImage` when none takes it).
pub fn image_kind(flat: bool, image: &[u8]) -> Result<Kind, Failure> {
    if flat {
        return Ok(Kind::Flat);
    }
    match hv_loader::detect(image) {
        ImageKind::LinuxBzImage => Ok(Kind::BzImage),
        ImageKind::Multiboot => Ok(Kind::Multiboot),
        ImageKind::Elf64 => Ok(Kind::Elf64),
        ImageKind::Unknown => Err(Failure::UnknownImage),
    }
}

/// Whether an image of `kind` takes the boot files its line gives (the config's own
/// rule, checked again): a Linux bzImage takes an initrd and a command line, a
/// Multiboot kernel a command line and modules, a flat or ELF64 image none of them.
pub fn check_boot_files(kind: Kind, initrd: bool, cmdline: bool, modules: bool) -> Result<(), Failure> {
    let refused = match kind {
        Kind::BzImage if modules => Some("modules"),
        Kind::Multiboot if initrd => Some("initrd (its boot files are modules)"),
        Kind::Flat | Kind::Elf64 if initrd || cmdline || modules => Some("command line, initrd or modules"),
        _ => None,
    };
    match refused {
        Some(what) => Err(Failure::NotForImage { kind, what }),
        None => Ok(()),
    }
}
pub use hv_abi::start::{gdt_bytes, page_table_page, PAGE_TABLE_PAGES};

/// Why a guest partition was not started (printed after "not started: ").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Its `image=` path is not a file of the boot payload.
    ImageMissing,
    /// Its `initrd=` path is not a file of the boot payload.
    InitrdMissing,
    /// Its `cmdline=` file is missing or not printable ASCII.
    BadCmdline,
    /// The contents of its Multiboot module N (from 0) are missing from the payload.
    ModuleMissing(usize),
    /// The string of its Multiboot module N is missing or not printable ASCII.
    BadModuleString(usize),
    /// Its image takes none of `what`, which its line gives.
    NotForImage { kind: Kind, what: &'static str },
    /// A flat image's layout or the RAM size breaks a rule.
    Layout(&'static str),
    /// The pool has no room for its RAM.
    NoPoolMemory { need: u64, free: u64 },
    /// A pinned CPU is not online.
    CpuNotOnline(u32),
    /// A pinned CPU already runs a guest vCPU.
    CpuTaken(u32),
    /// Not enough free CPUs for its vCPUs.
    NotEnoughCpus { need: u32, free: u32 },
    /// The image is none of the formats the loaders take.
    UnknownImage,
    /// The loader refused the image.
    Load(LoadError),
    /// The platform tables could not be built.
    Tables(hv_tables::TableError),
    /// A control-interface hypercall was refused.
    Refused { call: &'static str, error: hv_abi::Error },
}

impl From<LoadError> for Failure {
    fn from(e: LoadError) -> Self {
        Self::Load(e)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::ImageMissing => write!(f, "its image is missing from the boot payload"),
            Self::InitrdMissing => write!(f, "its initrd is missing from the boot payload"),
            Self::BadCmdline => write!(f, "its command line is missing from the boot payload or not printable ASCII"),
            Self::ModuleMissing(n) => write!(f, "its module {n} is missing from the boot payload"),
            Self::BadModuleString(n) => {
                write!(f, "the string of its module {n} is missing from the boot payload or not printable ASCII")
            }
            Self::NotForImage { kind, what } => write!(f, "its {} image takes no {what}", kind.name()),
            Self::Layout(why) => write!(f, "{why}"),
            Self::NoPoolMemory { need, free } => {
                write!(f, "not enough pool memory for its RAM: needs {} MiB, {} MiB free", need >> 20, free >> 20)
            }
            Self::CpuNotOnline(cpu) => write!(f, "its pinned cpu {cpu} is not online"),
            Self::CpuTaken(cpu) => write!(f, "its pinned cpu {cpu} already runs a guest vcpu"),
            Self::NotEnoughCpus { need, free } => {
                write!(f, "not enough free cpus for its vcpus (one guest vcpu per cpu): needs {need}, {free} free")
            }
            Self::UnknownImage => {
                write!(f, "its image is not a Linux bzImage, a Multiboot kernel or an x86-64 ELF executable")
            }
            Self::Load(e) => write!(f, "{e}"),
            Self::Tables(e) => write!(f, "{e}"),
            Self::Refused { call, error } => write!(f, "{call} refused ({error:?})"),
        }
    }
}

/// What kind of image a partition has (the word printed before "image").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A flattened ELF image (`load=`/`entry=` on its line).
    Flat,
    BzImage,
    Multiboot,
    Elf64,
}

impl Kind {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Flat => "flat",
            Self::BzImage => "bzImage",
            Self::Multiboot => "Multiboot",
            Self::Elf64 => "ELF64",
        }
    }
}

/// The guest's RAM size: `memory_mib`, which must make whole 2 MiB pieces.
pub fn guest_ram(memory_bytes: u64) -> Result<u64, Failure> {
    if memory_bytes == 0 || !memory_bytes.is_multiple_of(RAM_ALIGN) {
        return Err(Failure::Layout("memory_mib must be a multiple of 2 (guest RAM comes in 2 MiB pieces)"));
    }
    Ok(memory_bytes)
}

/// The memory pool: guests get consecutive 2 MiB aligned ranges from offset 0 on; a
/// range is never given out twice (a VM that failed after `VM_MAP_RAM` keeps its range
/// until it is destroyed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    /// Bytes of the pool.
    pub bytes: u64,
    /// First offset not given out yet.
    pub next: u64,
}

impl Pool {
    #[must_use]
    pub const fn new(bytes: u64) -> Self {
        Self { bytes, next: 0 }
    }

    /// The offset `ram` bytes would get (nothing is taken yet: see [`Pool::take`]).
    pub fn place(&self, ram: u64) -> Result<u64, Failure> {
        let offset = self.next.checked_next_multiple_of(RAM_ALIGN).unwrap_or(u64::MAX);
        let free = self.bytes.saturating_sub(offset) & !(RAM_ALIGN - 1);
        match offset.checked_add(ram) {
            Some(end) if end <= self.bytes => Ok(offset),
            _ => Err(Failure::NoPoolMemory { need: ram, free }),
        }
    }

    /// Marks `offset..offset + ram` as given out.
    pub fn take(&mut self, offset: u64, ram: u64) {
        self.next = self.next.max(offset.saturating_add(ram));
    }
}

/// Most CPUs the builder tracks; CPUs at or above it are never chosen.
pub const MAX_CPUS: u32 = 1024;

/// A set of physical CPUs (those that run a guest vCPU).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuSet([u64; (MAX_CPUS / 64) as usize]);

impl Default for CpuSet {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuSet {
    #[must_use]
    pub const fn new() -> Self {
        Self([0; (MAX_CPUS / 64) as usize])
    }

    #[must_use]
    pub fn contains(&self, cpu: u32) -> bool {
        self.0.get((cpu / 64) as usize).is_some_and(|w| w & (1 << (cpu % 64)) != 0)
    }

    pub fn insert(&mut self, cpu: u32) {
        if let Some(w) = self.0.get_mut((cpu / 64) as usize) {
            *w |= 1 << (cpu % 64);
        }
    }
}

/// The physical CPU of each vCPU of a partition, in vCPU order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cpus {
    list: [u32; MAX_VCPUS],
    len: usize,
}

impl Cpus {
    #[must_use]
    pub fn as_slice(&self) -> &[u32] {
        self.list.get(..self.len).unwrap_or(&[])
    }
}

/// Chooses the CPU of each of `vcpus` vCPUs: the `pinned` list when given (one CPU
/// per vCPU, each online and free), else free CPUs, the APs first (1, 2, ...) and the
/// BSP (0) last, since the BSP also watches over the machine. `used` holds the CPUs
/// that already run a guest vCPU; nothing is taken here.
pub fn choose_cpus(pinned: &[u32], vcpus: u32, cpus_online: u32, used: &CpuSet) -> Result<Cpus, Failure> {
    let online = cpus_online.min(MAX_CPUS);
    let need = vcpus.clamp(1, MAX_VCPUS as u32);
    let mut cpus = Cpus { list: [0; MAX_VCPUS], len: 0 };
    if !pinned.is_empty() {
        for &cpu in pinned.iter().take(need as usize) {
            if cpu >= online {
                return Err(Failure::CpuNotOnline(cpu));
            }
            if used.contains(cpu) || cpus.as_slice().contains(&cpu) {
                return Err(Failure::CpuTaken(cpu));
            }
            push(&mut cpus, cpu);
        }
        if cpus.len == need as usize {
            return Ok(cpus);
        }
        return Err(Failure::Layout("cpus must list one cpu per vcpu"));
    }
    let free = (1..online).chain(0..online.min(1)).filter(|&cpu| !used.contains(cpu));
    for cpu in free.clone().take(need as usize) {
        push(&mut cpus, cpu);
    }
    if cpus.len < need as usize {
        return Err(Failure::NotEnoughCpus { need, free: free.count() as u32 });
    }
    Ok(cpus)
}

fn push(cpus: &mut Cpus, cpu: u32) {
    if let Some(slot) = cpus.list.get_mut(cpus.len) {
        *slot = cpu;
        cpus.len += 1;
    }
}

/// The guest's e820 map: RAM `0..0x9FC00`, reserved `0x9FC00..0x100000` (EBDA, VGA
/// hole, ROM area, and the platform tables at 0xE0000), RAM `0x100000..ram` (the
/// last entry is left out when RAM ends at 1 MiB or below).
#[must_use]
pub fn e820(ram: u64) -> E820Map {
    let entries = [
        E820Entry { addr: 0, size: LOW_RAM_END.min(ram), kind: E820_RAM },
        E820Entry { addr: LOW_RAM_END, size: HIGH_RAM_START - LOW_RAM_END, kind: E820_RESERVED },
        E820Entry { addr: HIGH_RAM_START, size: ram.saturating_sub(HIGH_RAM_START), kind: E820_RAM },
    ];
    E820Map { entries, len: if ram > HIGH_RAM_START { 3 } else { 2 } }
}

/// A guest memory map of at most three entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Map {
    entries: [E820Entry; 3],
    len: usize,
}

impl E820Map {
    #[must_use]
    pub fn as_slice(&self) -> &[E820Entry] {
        self.entries.get(..self.len).unwrap_or(&[])
    }
}

/// Checks a flat image (`load`, `entry`, `len` bytes) against the partition's start
/// mode and `ram`, with the rules of the hypervisor's own builder: a real-mode image
/// loads at or above 0x1000 with its entry below 1 MiB, any other at or above
/// `start::MIN_LOAD_ADDRESS` (the boot structures and the stack lie below); the image
/// fits in RAM and holds its entry point. Returns the image's range.
pub fn check_flat(mode: StartMode, load: u64, entry: u64, len: u64, ram: u64) -> Result<Region, Failure> {
    let end = load.checked_add(len).ok_or(Failure::Layout("image end overflows"))?;
    if mode == StartMode::Real {
        if load < REAL_MODE_MIN_LOAD {
            return Err(Failure::Layout("a real-mode image must not load into page 0 (the IVT)"));
        }
        if entry >= REAL_MODE_ENTRY_LIMIT {
            return Err(Failure::Layout("a real-mode entry point must lie below 1 MiB"));
        }
    } else if load < start::MIN_LOAD_ADDRESS {
        return Err(Failure::Layout("image loads below 2 MiB, where the boot structures live"));
    }
    if end > ram {
        return Err(Failure::Layout("image does not fit in the partition's RAM"));
    }
    if !(load..end).contains(&entry) {
        return Err(Failure::Layout("entry point outside the image"));
    }
    Ok(Region { start: load, end })
}

/// Whether the platform tables can go to [`TABLES_GPA`]: none of `used` overlaps it.
#[must_use]
pub fn tables_fit(used: &[Region]) -> bool {
    let tables = Region { start: TABLES_GPA, end: TABLES_GPA + TABLES_BYTES };
    !used.iter().any(|r| r.overlaps(&tables))
}

/// The boot vCPU's start state for a flat image, as the hypervisor's own builder sets
/// it: RIP = entry, RDI = 0 (vCPU 0), RSI = RAM bytes; RSP = `load - 8`, or 0x7000 in
/// real mode; CR3 and GDTR name the boot structures (which a real-mode guest does not
/// get, and its mode does not use).
#[must_use]
pub fn flat_start_state(mode: StartMode, load: u64, entry: u64, ram: u64) -> VcpuStartState {
    let (m, rsp) = match mode {
        StartMode::Long => (mode::LONG64, load.saturating_sub(8)),
        StartMode::Protected => (mode::PROTECTED32, load.saturating_sub(8)),
        StartMode::Real => (mode::REAL16, REAL_MODE_STACK),
    };
    VcpuStartState {
        mode: m,
        gdt_limit: u32::from(start::GDT_LIMIT),
        rip: entry,
        rsp,
        rax: 0,
        rbx: 0,
        rsi: ram,
        rdi: 0,
        cr3: start::PAGE_TABLES,
        gdt_base: start::GDT,
    }
}

/// The boot vCPU's start state for what a loader returned. `Protected32`: the boot GDT
/// (CS 0x10, data 0x18: the boot protocol's `__BOOT_CS` and `__BOOT_DS`), EIP/EAX/EBX/ESI as given, ESP 0 (Linux sets its own stack from
/// `boot_params`, Multiboot leaves ESP undefined), no page tables. `Long64`: CR3 = the
/// boot page tables, GDTR = the boot GDT, RIP and RSI as given, RSP = `long64_rsp`.
/// RDI is 0 (vCPU 0) in both.
#[must_use]
pub fn entry_start_state(entry: EntryState, long64_rsp: u64) -> VcpuStartState {
    let gdt =
        VcpuStartState { gdt_limit: u32::from(start::GDT_LIMIT), gdt_base: start::GDT, ..VcpuStartState::default() };
    match entry {
        EntryState::Protected32 { eip, eax, ebx, esi } => VcpuStartState {
            mode: mode::PROTECTED32,
            rip: u64::from(eip),
            rax: u64::from(eax),
            rbx: u64::from(ebx),
            rsi: u64::from(esi),
            ..gdt
        },
        EntryState::Long64 { rip, rsi } => {
            VcpuStartState { mode: mode::LONG64, rip, rsi, rsp: long64_rsp, cr3: start::PAGE_TABLES, ..gdt }
        }
    }
}

/// The start state of every vCPU but the first: wait for INIT and a start-up IPI.
#[must_use]
pub fn ap_start_state() -> VcpuStartState {
    VcpuStartState { mode: mode::WAIT_FOR_SIPI, ..VcpuStartState::default() }
}

/// The start state of vCPU `vcpu` of a guest whose boot vCPU starts with `boot`: `boot`
/// for vCPU 0, [`ap_start_state`] for the others. The same at the first boot and after
/// every reboot.
#[must_use]
pub fn vcpu_start_state(vcpu: u64, boot: VcpuStartState) -> VcpuStartState {
    if vcpu == 0 {
        boot
    } else {
        ap_start_state()
    }
}

/// Guest memory that only checks ranges and keeps nothing: a loader run against it
/// validates an image completely (loaders validate before they write and never read
/// guest memory back), so a later run against the real memory of the same size does
/// the same.
#[derive(Debug, Clone, Copy)]
pub struct DryRun {
    pub size: u64,
}

impl GuestMemory for DryRun {
    fn size(&self) -> u64 {
        self.size
    }

    fn write(&mut self, gpa: u64, bytes: &[u8]) -> Result<(), LoadError> {
        self.zero(gpa, bytes.len() as u64)
    }

    fn zero(&mut self, gpa: u64, len: u64) -> Result<(), LoadError> {
        match gpa.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(LoadError::OutOfRange { gpa, len }),
        }
    }
}

// The service crate is a `no_std` binary that cargo never tests; these tests run on the
// host from a harness crate that includes this file with `#[path]` and depends on
// hv-abi, hv-core, hv-loader and hv-tables (see the builder's module documentation).
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_command_line_is_checked_again() {
        assert_eq!(cmdline_from(b"console=ttyS0 hvtest=boot"), Ok("console=ttyS0 hvtest=boot"));
        assert_eq!(cmdline_from(b"tab\there"), Err(Failure::BadCmdline));
        assert_eq!(cmdline_from(&[b'x'; 2048]), Err(Failure::BadCmdline));
        assert!(cmdline_from(&[b'x'; 2047]).is_ok());
    }

    #[test]
    fn modules_come_from_the_payload_and_are_checked_again() {
        let files = [
            ("m0", &b"module zero"[..]),
            ("m0.s", &b"mods/zero.bin a=1"[..]),
            ("m1", &b"one"[..]),
            ("m1.s", &b"mods/one"[..]),
            ("bad.s", &b"tab\there"[..]),
        ];
        let find = |path: &str| files.iter().find(|(p, _)| *p == path).map(|(_, bytes)| *bytes);
        let listed = [ModuleFiles { data: "m0", string: "m0.s" }, ModuleFiles { data: "m1", string: "m1.s" }];
        let modules = modules_from(&listed, find).unwrap();
        let got: std::vec::Vec<(&[u8], &str)> = modules.as_slice().iter().map(|m| (m.bytes, m.cmdline)).collect();
        assert_eq!(got, [(&b"module zero"[..], "mods/zero.bin a=1"), (&b"one"[..], "mods/one")]);
        assert!(modules_from(&[], find).unwrap().as_slice().is_empty());
        let missing = [listed[0], ModuleFiles { data: "nope", string: "m1.s" }];
        assert_eq!(modules_from(&missing, find).unwrap_err(), Failure::ModuleMissing(1));
        let no_string = [ModuleFiles { data: "m0", string: "nope" }];
        assert_eq!(modules_from(&no_string, find).unwrap_err(), Failure::BadModuleString(0));
        let bad_string = [listed[1], ModuleFiles { data: "m0", string: "bad.s" }];
        assert_eq!(modules_from(&bad_string, find).unwrap_err(), Failure::BadModuleString(1));
        let too_many = [listed[0]; MAX_MODULES + 1];
        assert!(modules_from(&too_many, find).is_err());
        assert_eq!(modules_from(&too_many[..MAX_MODULES], find).unwrap().as_slice().len(), MAX_MODULES);
    }

    #[test]
    fn boot_files_must_suit_the_image() {
        assert_eq!(check_boot_files(Kind::BzImage, true, true, false), Ok(()));
        assert_eq!(
            check_boot_files(Kind::BzImage, false, false, true),
            Err(Failure::NotForImage { kind: Kind::BzImage, what: "modules" })
        );
        assert_eq!(check_boot_files(Kind::Multiboot, false, true, true), Ok(()));
        assert!(check_boot_files(Kind::Multiboot, true, false, false).is_err());
        for kind in [Kind::Flat, Kind::Elf64] {
            assert_eq!(check_boot_files(kind, false, false, false), Ok(()));
            for (initrd, cmdline, modules) in [(true, false, false), (false, true, false), (false, false, true)] {
                assert!(check_boot_files(kind, initrd, cmdline, modules).is_err(), "{kind:?}");
            }
        }
        assert_eq!(
            std::format!("{}", Failure::NotForImage { kind: Kind::Elf64, what: "command line, initrd or modules" }),
            "its ELF64 image takes no command line, initrd or modules"
        );
        assert_eq!(image_kind(true, b"anything"), Ok(Kind::Flat));
        assert_eq!(image_kind(false, b"not a kernel"), Err(Failure::UnknownImage));
        let magic = hv_loader::multiboot::HEADER_MAGIC;
        let header: std::vec::Vec<u8> =
            [magic, 0, 0u32.wrapping_sub(magic)].iter().flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(image_kind(false, &header), Ok(Kind::Multiboot));
    }

    #[test]
    fn pool_ranges_are_sequential_and_2_mib_aligned() {
        let mut pool = Pool::new(64 << 20);
        let a = pool.place(16 << 20).unwrap();
        assert_eq!(a, 0);
        pool.take(a, 16 << 20);
        let b = pool.place(32 << 20).unwrap();
        assert_eq!(b, 16 << 20);
        // Not taken: the same offset again.
        assert_eq!(pool.place(32 << 20), Ok(b));
        pool.take(b, 32 << 20);
        assert_eq!(pool.place(32 << 20), Err(Failure::NoPoolMemory { need: 32 << 20, free: 16 << 20 }));
        assert_eq!(pool.place(16 << 20), Ok(48 << 20));
        // An unaligned pool size leaves the tail unused.
        let pool = Pool::new((4 << 20) + 4096);
        assert_eq!(pool.place(4 << 20), Ok(0));
        assert!(pool.place(6 << 20).is_err());
        assert!(Pool { bytes: u64::MAX, next: u64::MAX - 1 }.place(2 << 20).is_err());
    }

    #[test]
    fn ram_must_be_whole_2_mib_pieces() {
        assert_eq!(guest_ram(16 << 20), Ok(16 << 20));
        assert!(guest_ram(1 << 20).is_err());
        assert!(guest_ram(3 << 20).is_err());
        assert!(guest_ram(0).is_err());
    }

    fn used(cpus: &[u32]) -> CpuSet {
        let mut set = CpuSet::new();
        for &c in cpus {
            set.insert(c);
        }
        set
    }

    #[test]
    fn free_cpus_are_aps_first_then_the_bsp() {
        let none = CpuSet::new();
        assert_eq!(choose_cpus(&[], 1, 4, &none).unwrap().as_slice(), [1]);
        assert_eq!(choose_cpus(&[], 4, 4, &none).unwrap().as_slice(), [1, 2, 3, 0]);
        assert_eq!(choose_cpus(&[], 2, 4, &used(&[1, 2])).unwrap().as_slice(), [3, 0]);
        assert_eq!(choose_cpus(&[], 1, 1, &none).unwrap().as_slice(), [0]);
        assert_eq!(choose_cpus(&[], 3, 4, &used(&[1, 2])), Err(Failure::NotEnoughCpus { need: 3, free: 2 }));
        assert_eq!(choose_cpus(&[], 1, 0, &none), Err(Failure::NotEnoughCpus { need: 1, free: 0 }));
    }

    #[test]
    fn pinned_cpus_must_be_online_and_free() {
        let none = CpuSet::new();
        assert_eq!(choose_cpus(&[0, 2], 2, 4, &none).unwrap().as_slice(), [0, 2]);
        assert_eq!(choose_cpus(&[4], 1, 4, &none), Err(Failure::CpuNotOnline(4)));
        assert_eq!(choose_cpus(&[1, 3], 2, 4, &used(&[3])), Err(Failure::CpuTaken(3)));
        assert_eq!(choose_cpus(&[1, 1], 2, 4, &none), Err(Failure::CpuTaken(1)));
        assert!(choose_cpus(&[1], 2, 4, &none).is_err());
    }

    #[test]
    fn cpu_sets_ignore_cpus_they_cannot_hold() {
        let mut set = CpuSet::new();
        set.insert(MAX_CPUS);
        set.insert(63);
        set.insert(64);
        assert!(!set.contains(MAX_CPUS) && set.contains(63) && set.contains(64) && !set.contains(65));
        assert_eq!(choose_cpus(&[], 1, u32::MAX, &CpuSet::new()).unwrap().as_slice(), [1]);
    }

    #[test]
    fn e820_has_low_ram_the_reserved_bios_area_and_high_ram() {
        let map = e820(64 << 20);
        assert_eq!(
            map.as_slice(),
            [
                E820Entry { addr: 0, size: 0x9_FC00, kind: E820_RAM },
                E820Entry { addr: 0x9_FC00, size: 0x6_0400, kind: E820_RESERVED },
                E820Entry { addr: 0x10_0000, size: (64 << 20) - 0x10_0000, kind: E820_RAM },
            ]
        );
        let reserved = map.as_slice()[1];
        assert!(reserved.addr <= TABLES_GPA && TABLES_GPA + TABLES_BYTES <= reserved.addr + reserved.size);
        assert_eq!(e820(1 << 20).as_slice().len(), 2);
    }

    #[test]
    fn flat_layout_rules() {
        let ram = 16 << 20;
        assert_eq!(
            check_flat(StartMode::Long, 0x20_0000, 0x20_0010, 0x1000, ram),
            Ok(Region { start: 0x20_0000, end: 0x20_1000 })
        );
        assert!(check_flat(StartMode::Long, 0x10_0000, 0x10_0000, 0x1000, ram).is_err());
        assert!(check_flat(StartMode::Protected, 0x1000, 0x1000, 0x1000, ram).is_err());
        assert!(check_flat(StartMode::Long, 0x20_0000, 0x20_1000, 0x1000, ram).is_err());
        assert!(check_flat(StartMode::Long, 0x20_0000, 0x20_0000, ram, ram).is_err());
        assert!(check_flat(StartMode::Long, u64::MAX - 4, u64::MAX - 4, 0x1000, ram).is_err());
        assert!(check_flat(StartMode::Real, 0x8000, 0x8000, 0x20_0000, ram).is_ok());
        assert!(check_flat(StartMode::Real, 0x800, 0x800, 0x1000, ram).is_err());
        assert!(check_flat(StartMode::Real, 0x8000, 0x10_0000, 0x20_0000, ram).is_err());
    }

    #[test]
    fn tables_are_skipped_only_when_something_overlaps_them() {
        assert!(tables_fit(&[Region { start: 0x20_0000, end: 0x30_0000 }]));
        assert!(tables_fit(&[Region { start: 0x10_0000, end: 0x30_0000 }, Region { start: 0, end: 0xE_0000 }]));
        assert!(!tables_fit(&[Region { start: 0x8000, end: 0x20_1000 }]));
        assert!(!tables_fit(&[Region { start: 0xF_FFFF, end: 0x10_0000 }]));
    }

    #[test]
    fn flat_start_states_match_the_hypervisors_builder() {
        let long = flat_start_state(StartMode::Long, 0x20_0000, 0x20_0040, 32 << 20);
        assert_eq!(
            long,
            VcpuStartState {
                mode: mode::LONG64,
                gdt_limit: 31,
                rip: 0x20_0040,
                rsp: 0x1F_FFF8,
                rax: 0,
                rbx: 0,
                rsi: 32 << 20,
                rdi: 0,
                cr3: 0x1000,
                gdt_base: 0x800,
            }
        );
        let prot = flat_start_state(StartMode::Protected, 0x20_0000, 0x20_0040, 32 << 20);
        assert_eq!(prot, VcpuStartState { mode: mode::PROTECTED32, ..long });
        let real = flat_start_state(StartMode::Real, 0x8000, 0x8000, 32 << 20);
        assert_eq!((real.mode, real.rip, real.rsp, real.rsi), (mode::REAL16, 0x8000, 0x7000, 32 << 20));
    }

    #[test]
    fn loader_entry_states_map_to_start_states() {
        let linux = entry_start_state(EntryState::Protected32 { eip: 0x10_0000, eax: 0, ebx: 0, esi: 0x7000 }, 99);
        assert_eq!(
            linux,
            VcpuStartState {
                mode: mode::PROTECTED32,
                gdt_limit: 31,
                rip: 0x10_0000,
                rsp: 0,
                rax: 0,
                rbx: 0,
                rsi: 0x7000,
                rdi: 0,
                cr3: 0,
                gdt_base: 0x800,
            }
        );
        let mb =
            entry_start_state(EntryState::Protected32 { eip: 0x10_000c, eax: 0x2BAD_B002, ebx: 0x12_3000, esi: 0 }, 0);
        assert_eq!((mb.rax, mb.rbx, mb.rsi), (0x2BAD_B002, 0x12_3000, 0));
        let elf = entry_start_state(EntryState::Long64 { rip: 0x40_0000, rsi: 0 }, 0x3F_FFF8);
        assert_eq!(
            elf,
            VcpuStartState {
                mode: mode::LONG64,
                gdt_limit: 31,
                rip: 0x40_0000,
                rsp: 0x3F_FFF8,
                rax: 0,
                rbx: 0,
                rsi: 0,
                rdi: 0,
                cr3: 0x1000,
                gdt_base: 0x800,
            }
        );
        assert_eq!(ap_start_state().mode, mode::WAIT_FOR_SIPI);
        let boot = flat_start_state(StartMode::Long, 0x20_0000, 0x20_0010, 16 << 20);
        assert_eq!(vcpu_start_state(0, boot), boot);
        for ap in [1, 2, 63] {
            assert_eq!(vcpu_start_state(ap, boot), ap_start_state());
        }
    }

    #[test]
    fn boot_structures_are_the_start_contracts() {
        let gdt = gdt_bytes();
        assert_eq!(gdt.len(), usize::from(start::GDT_LIMIT) + 1);
        assert_eq!(&gdt[8..16], &0x00af_9b00_0000_ffff_u64.to_le_bytes());
        // The x86 boot protocol's __BOOT_CS (0x10) and __BOOT_DS (0x18): flat 4 GiB,
        // execute/read and read/write.
        assert_eq!(&gdt[0x10..0x18], &0x00cf_9b00_0000_ffff_u64.to_le_bytes());
        assert_eq!(&gdt[0x18..0x20], &0x00cf_9300_0000_ffff_u64.to_le_bytes());
        assert_eq!((start::CODE32_SELECTOR, start::DATA32_SELECTOR), (0x10, 0x18));
        let entry = |page: &[u8; 4096], i: usize| u64::from_le_bytes(page[i * 8..i * 8 + 8].try_into().unwrap());
        let pml4 = page_table_page(0);
        assert_eq!(entry(&pml4, 0), 0x2003);
        assert!((1..512).all(|i| entry(&pml4, i) == 0));
        let pdpt = page_table_page(1);
        assert_eq!([entry(&pdpt, 0), entry(&pdpt, 3), entry(&pdpt, 4)], [0x3003, 0x6003, 0]);
        let last = page_table_page(PAGE_TABLE_PAGES - 1);
        assert_eq!(entry(&last, 511), 0xFFE0_0000 | 0x83);
        assert_eq!(entry(&page_table_page(2), 1), 0x20_0083);
        assert!(page_table_page(PAGE_TABLE_PAGES).iter().all(|&b| b == 0));
        // The tables end where Linux's boot_params begin.
        assert_eq!(start::PAGE_TABLES + PAGE_TABLE_PAGES * 4096, hv_loader::linux::BOOT_PARAMS_ADDR);
    }

    #[test]
    fn dry_runs_check_ranges_only() {
        let mut m = DryRun { size: 0x1000 };
        assert!(m.write(0xFFF, &[1]).is_ok());
        assert_eq!(m.write(0xFFF, &[1, 2]), Err(LoadError::OutOfRange { gpa: 0xFFF, len: 2 }));
        assert!(m.zero(u64::MAX, 2).is_err());
    }

    #[test]
    fn failures_print_one_line() {
        let all = [
            Failure::ImageMissing,
            Failure::ModuleMissing(3),
            Failure::BadModuleString(0),
            Failure::NotForImage { kind: Kind::BzImage, what: "modules" },
            Failure::Layout("x"),
            Failure::NoPoolMemory { need: 4 << 20, free: 2 << 20 },
            Failure::CpuNotOnline(7),
            Failure::CpuTaken(1),
            Failure::NotEnoughCpus { need: 2, free: 1 },
            Failure::UnknownImage,
            Failure::Load(LoadError::BadMagic),
            Failure::Tables(hv_tables::TableError::NoVcpus),
            Failure::Refused { call: "VM_CREATE", error: hv_abi::Error::BadArgument },
        ];
        for f in all {
            let s = std::format!("{f}");
            assert!(!s.is_empty() && !s.contains('\n'), "{s}");
        }
        assert_eq!(
            std::format!("{}", Failure::Refused { call: "VM_MAP_RAM", error: hv_abi::Error::BadArgument }),
            "VM_MAP_RAM refused (BadArgument)"
        );
    }
}
