//! The guest builder: the service partition creates, builds and starts every guest
//! partition of the boot payload through the control interface (`hv_abi::hypercall`
//! `SYSTEM_INFO` .. `VM_STOP`), as a user-space VMM does beside KVM. vCPU 0 calls
//! [`build_all`] once, before it serves its first request.
//!
//! # What it reads
//!
//! The hypervisor maps the boot payload read-only at `PAYLOAD_GPA`
//! (`SYSTEM_INFO(PAYLOAD_BYTES)` bytes) and the memory pool read/write at `POOL_GPA`
//! (`SYSTEM_INFO(POOL_BYTES)` bytes); the start page tables identity-map both. The
//! payload is a ustar archive, read in place by [`ustar`] (no copy, no allocation, no
//! panic on any bytes). Its `hypervisor.conf` is parsed with the hypervisor's own parser
//! (`hv_core::boot_conf::parse_with_partitions`, so both read the lines alike); every
//! `partition=` line of kind `guest` is built, in file order. Rejected lines are printed
//! (`service: hypervisor.conf line N: partition skipped: WHY`) and not counted.
//!
//! # Per guest
//!
//! First everything is validated, so that a bad partition creates nothing: the image is
//! in the archive (its `image=` path), so are its initrd, command line and Multiboot
//! modules (`initrd=`, `cmdline=`, `modules=`; strings printable ASCII) and its kind
//! takes them ([`plan::check_boot_files`], the config's rule again), the RAM (`memory_mib`, whole 2 MiB pieces) fits
//! the rest of the pool ([`plan::Pool`]: consecutive 2 MiB aligned ranges), each vCPU
//! gets a CPU ([`plan::choose_cpus`]: the `cpus=` list, else free CPUs, APs first and
//! the BSP last; one guest vCPU per CPU over all guests), the image loads (a flat image
//! by the layout rules of the hypervisor's own builder, [`plan::check_flat`]; any other
//! with its `hv_loader` loader run against a [`plan::DryRun`] memory that only checks
//! ranges) and the platform tables fit their region. Then:
//!
//! 1. `VM_CREATE(name)`, `VM_MAP_RAM(vm, offset, bytes)`, `VM_SET_DEVICES(vm, devices)`;
//! 2. the guest's RAM is written through the pool window (`POOL_GPA + offset`,
//!    [`PoolMemory`], bounds-checked against the RAM size): all of it zeroed; the ACPI
//!    and MP tables (`hv_tables::build` for `PlatformDesc::for_devices(vcpus, devices)`:
//!    they describe only the ACPI PM, PCI host and 8259 hardware the guest has) at
//!    0xE0000..0x100000 (skipped, with a line, when the image overlaps that range, as a
//!    real-mode image may); then the image:
//!    - flat (`load=`/`entry=` on the line): copied to `load`; the boot structures of
//!      `hv_abi::start` (GDT at 0x800, identity page tables for 4 GiB with 2 MiB pages at
//!      0x1000..0x7000) unless it starts in real mode; started as the hypervisor's own
//!      builder starts it ([`plan::flat_start_state`]);
//!    - Linux bzImage: `hv_loader::linux`, the command line of the line's `cmdline=`
//!      file (default `console=ttyS0`), the `initrd=` file as initial RAM disk, the e820
//!      map of [`plan::e820`], `acpi_rsdp` = the RSDP;
//!    - Multiboot: `hv_loader::multiboot`, the command line of the line's `cmdline=`
//!      file (the config writes the image's name first, as QEMU does; none: empty), the
//!      modules of its `modules=` list in order (each file's bytes, and its string file
//!      as the module's string), the same e820;
//!    - ELF64: `hv_loader::elf64` at or above `start::MIN_LOAD_ADDRESS`, plus the boot
//!      structures; RSP = lowest load address - 8, RDI = 0, RSI = RAM bytes;
//!    - anything else: not started.
//!
//!    A loader's 32-bit entry gets the boot GDT (CS 0x10, data 0x18: the x86 boot
//!    protocol's `__BOOT_CS` and `__BOOT_DS`) and ESP 0 ([`plan::entry_start_state`]);
//! 3. `VCPU_CREATE(vm, cpu)` per vCPU; `VCPU_SET_STATE` with the start state for vCPU 0
//!    and `WAIT_FOR_SIPI` for the others; `VCPU_START` each.
//!
//! It prints `service: partition NAME: KIND image, M MiB, vcpu 0 on cpu C, entry 0x..`
//! and `service: partition NAME: vcpu K on cpu C, waiting for INIT and start-up IPIs`
//! per further vCPU. A partition that fails prints `service: partition NAME not started:
//! REASON` and the next one is built; when the failure comes after `VM_CREATE` (a
//! refused hypercall), the VM is stopped with `VM_STOP(vm, u64::MAX)`, and its pool range
//! and the CPUs of the vCPUs it got stay taken. At the end: `service: N of M guest
//! partitions started`.
//!
//! # Guest memory layout
//!
//! | range | what |
//! |---|---|
//! | `0x800..0x828` | boot GDT (every guest but a real-mode flat one) |
//! | `0x1000..0x7000` | identity page tables (64-bit starts: flat long/protected, ELF64) |
//! | `0x7000..0x8000` | Linux `boot_params` |
//! | `0x20000..` | Linux command line |
//! | `0x9FC00..0x100000` | reserved in the e820 map; ACPI and MP tables from 0xE0000 |
//! | from 1 MiB | Linux and Multiboot kernels (and the Multiboot information, its strings and the modules after) |
//! | from 2 MiB | flat and ELF64 images; their stack grows down from the image |
//!
//! The e820 map: RAM `0..0x9FC00`, reserved `0x9FC00..0x100000`, RAM `0x100000..end`.
//!
//! # Host tests
//!
//! The pure parts ([`plan`], [`ustar`]) have unit tests; cargo never tests this `no_std`
//! binary, so they run from a harness crate that includes the two files with `#[path]`
//! and depends on hv-abi, hv-core, hv-loader and hv-tables (and `tar` for the archive
//! tests).

mod plan;
mod ustar;

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

use guest_rt::{println, raw_hypercall};
use hv_abi::hypercall as hc;
use hv_abi::service::control::{info, VcpuStartState, START_STATE_BYTES};
use hv_abi::service::{power, VmId, MAX_VMS, PAYLOAD_GPA, PAYLOAD_MAX_BYTES, POOL_GPA, POOL_MAX_BYTES};
use hv_abi::start;
use hv_core::boot_conf::{self, OnReset, PartitionKind, PartitionSpec, ProblemKind, StartMode, MAX_VCPUS};
use hv_loader::linux::LinuxParams;
use hv_loader::multiboot::MultibootParams;
use hv_loader::{E820Entry, EntryState, GuestMemory, ImageKind, LoadError, Loaded};
use hv_tables::{PlatformDesc, TableError};

use plan::{CpuSet, Cpus, Failure, Kind, Modules, Pool, TABLES_BYTES, TABLES_GPA};

/// The payload file the partitions are listed in.
const SETTINGS_ENTRY: &str = "hypervisor.conf";

/// Builds and starts every guest partition of the boot payload (see the module
/// documentation). Runs once, on one vCPU (a second call returns at once).
pub fn build_all() {
    static DONE: AtomicBool = AtomicBool::new(false);
    if DONE.swap(true, Ordering::AcqRel) {
        return;
    }
    let (mut started, mut guests) = (0u32, 0u32);
    match Builder::new() {
        Err(why) => println!("service: no guest partition started: {why}"),
        Ok((mut builder, conf)) => {
            boot_conf::parse_with_partitions(
                conf,
                |problem| {
                    if matches!(problem.kind, ProblemKind::NotText | ProblemKind::BadPartition(_)) {
                        println!("service: {problem}");
                    }
                },
                |spec| {
                    if spec.kind != PartitionKind::Guest {
                        return;
                    }
                    guests += 1;
                    let _building = BuilderLock::take();
                    match builder.build(&spec) {
                        Ok(()) => started += 1,
                        Err(why) => println!("service: partition {} not started: {why}", spec.name),
                    }
                },
            );
        }
    }
    println!("service: {started} of {guests} guest partitions started");
}

/// Why the payload could not be read at all.
enum NoPayload {
    Refused(Failure),
    Size(u64),
    NoSettings,
}

impl core::fmt::Display for NoPayload {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Refused(e) => write!(f, "{e}"),
            Self::Size(n) => write!(f, "the boot payload size {n:#x} is 0 or above {PAYLOAD_MAX_BYTES:#x}"),
            Self::NoSettings => write!(f, "the boot payload has no {SETTINGS_ENTRY}"),
        }
    }
}

/// What the builder keeps between partitions.
struct Builder {
    payload: &'static [u8],
    pool: Pool,
    cpus_online: u32,
    /// CPUs that run a guest vCPU (of a started or a stopped VM).
    used: CpuSet,
}

impl Builder {
    /// Asks the hypervisor for the payload, pool and CPUs; returns the builder and the
    /// bytes of `hypervisor.conf`.
    fn new() -> Result<(Self, &'static [u8]), NoPayload> {
        let payload_bytes =
            call("SYSTEM_INFO", hc::SYSTEM_INFO, info::PAYLOAD_BYTES, 0, 0).map_err(NoPayload::Refused)?;
        let pool_bytes = call("SYSTEM_INFO", hc::SYSTEM_INFO, info::POOL_BYTES, 0, 0).map_err(NoPayload::Refused)?;
        let cpus_online = call("SYSTEM_INFO", hc::SYSTEM_INFO, info::CPUS_ONLINE, 0, 0).map_err(NoPayload::Refused)?;
        let payload = payload(payload_bytes).ok_or(NoPayload::Size(payload_bytes))?;
        let conf = ustar::find(payload, SETTINGS_ENTRY).ok_or(NoPayload::NoSettings)?;
        let builder = Self {
            payload,
            // The window ends where the payload begins; a larger size would be a
            // hypervisor bug, and the builder never writes past the window.
            pool: Pool::new(pool_bytes.min(POOL_MAX_BYTES)),
            cpus_online: u32::try_from(cpus_online).unwrap_or(u32::MAX),
            used: CpuSet::new(),
        };
        Ok((builder, conf))
    }

    /// Validates, creates, builds and starts one guest partition.
    fn build(&mut self, spec: &PartitionSpec<'static>) -> Result<(), Failure> {
        // Validate everything first: nothing is created for a partition that fails here.
        let image = ustar::find(self.payload, spec.image).ok_or(Failure::ImageMissing)?;
        let extras = BootExtras {
            initrd: match spec.initrd {
                Some(path) => Some(ustar::find(self.payload, path).ok_or(Failure::InitrdMissing)?),
                None => None,
            },
            cmdline: match spec.cmdline {
                Some(path) => Some(plan::cmdline_from(ustar::find(self.payload, path).ok_or(Failure::BadCmdline)?)?),
                None => None,
            },
            modules: plan::modules_from(spec.modules(), |path| ustar::find(self.payload, path))?,
        };
        let kind = plan::image_kind(spec.flat.is_some(), image)?;
        plan::check_boot_files(
            kind,
            extras.initrd.is_some(),
            extras.cmdline.is_some(),
            !extras.modules.as_slice().is_empty(),
        )?;
        let ram = plan::guest_ram(spec.memory_bytes())?;
        let offset = self.pool.place(ram)?;
        if spec.vcpus == 0 || spec.vcpus as usize > MAX_VCPUS {
            return Err(Failure::Layout("vcpus must be 1 to 64"));
        }
        let cpus = plan::choose_cpus(spec.pinned_cpus(), spec.vcpus, self.cpus_online, &self.used)?;
        let e820 = plan::e820(ram);
        let used = match spec.flat {
            Some((load, entry)) => {
                let region = plan::check_flat(spec.start, load, entry, image.len() as u64, ram)?;
                [region, region]
            }
            None => {
                let (_, loaded) = load_image(&mut plan::DryRun { size: ram }, image, &extras, e820.as_slice(), None)?;
                [loaded.kernel, loaded.data.unwrap_or(loaded.kernel)]
            }
        };
        let desc = PlatformDesc::for_devices(spec.vcpus, spec.devices);
        let tables = plan::tables_fit(&used);
        if tables {
            let need = hv_tables::required_size(&desc, TABLES_GPA).map_err(Failure::Tables)?;
            if need as u64 > TABLES_BYTES {
                return Err(Failure::Tables(TableError::RegionTooSmall { need, have: TABLES_BYTES as usize }));
            }
        }

        let vm = create_vm(spec.name)?;
        let guest =
            Guest { vm, spec, image, extras, ram, offset, cpus: cpus.as_slice(), e820: e820.as_slice(), desc, tables };
        let built = Built { vm, spec: *spec, image, extras, ram, offset, pool_bytes: self.pool.bytes, cpus, tables };
        match self.commit(&guest, &built) {
            Ok((state, kind)) => {
                println!(
                    "service: partition {}: {} image, {} MiB, vcpu 0 on cpu {}, entry {:#x}",
                    spec.name,
                    kind.name(),
                    ram >> 20,
                    guest.cpus.first().copied().unwrap_or(0),
                    state.rip
                );
                for (id, cpu) in guest.cpus.iter().enumerate().skip(1) {
                    println!(
                        "service: partition {}: vcpu {id} on cpu {cpu}, waiting for INIT and start-up IPIs",
                        spec.name
                    );
                }
                Ok(())
            }
            Err(e) => {
                // The hypervisor logs the stop; a refusal here leaves nothing to do.
                raw_hypercall(hc::VM_STOP, u64::from(vm.0), u64::MAX, 0, 0);
                Err(e)
            }
        }
    }

    /// Everything after `VM_CREATE`: RAM, devices, memory contents, vCPUs. Returns the
    /// boot vCPU's start state and the image kind. What a reboot needs to build the
    /// guest again (`built`) is kept before its vCPUs start.
    fn commit(&mut self, g: &Guest<'_, '_>, built: &Built) -> Result<(VcpuStartState, Kind), Failure> {
        let vm = u64::from(g.vm.0);
        call("VM_MAP_RAM", hc::VM_MAP_RAM, vm, g.offset, g.ram)?;
        // The range is the VM's now, whatever happens next.
        self.pool.take(g.offset, g.ram);
        call("VM_SET_DEVICES", hc::VM_SET_DEVICES, vm, u64::from(g.spec.devices.0), 0)?;
        crate::vms::create_board(g.vm, g.cpus.len() as u32, g.ram);
        let (state, kind) = {
            let mut mem = PoolMemory::new(g.offset, g.ram, self.pool.bytes)
                .ok_or(Failure::Layout("the guest's RAM is outside the pool window"))?;
            write_memory(&mut mem, g)?
        };
        let mut ids = [0u64; MAX_VCPUS];
        for (slot, &cpu) in ids.iter_mut().zip(g.cpus) {
            *slot = call("VCPU_CREATE", hc::VCPU_CREATE, vm, u64::from(cpu), 0)?;
            self.used.insert(cpu);
        }
        let ids = ids.get(..g.cpus.len()).unwrap_or(&[]);
        for (i, &id) in ids.iter().enumerate() {
            set_state(vm, id, &plan::vcpu_start_state(i as u64, state))?;
        }
        BUILT.record(built);
        for &id in ids {
            call("VCPU_START", hc::VCPU_START, vm, id, 0)?;
        }
        Ok((state, kind))
    }
}

/// One guest partition being built (validated, its VM created).
struct Guest<'s, 'c> {
    vm: VmId,
    spec: &'s PartitionSpec<'c>,
    image: &'static [u8],
    extras: BootExtras,
    ram: u64,
    offset: u64,
    cpus: &'s [u32],
    e820: &'s [E820Entry],
    desc: PlatformDesc,
    /// Whether the platform tables go in (the image leaves their region free).
    tables: bool,
}

/// What the builder keeps of a guest it built, to build it again when it reboots.
#[derive(Clone, Copy)]
struct Built {
    vm: VmId,
    spec: PartitionSpec<'static>,
    image: &'static [u8],
    extras: BootExtras,
    ram: u64,
    offset: u64,
    pool_bytes: u64,
    cpus: Cpus,
    tables: bool,
}

/// One [`Built`] per VM-table index, each written once (before the VM's vCPUs start,
/// so before any reset of it can ask for it) and read-only afterwards.
struct BuiltTable([BuiltSlot; MAX_VMS as usize]);

struct BuiltSlot {
    /// Set (Release) once `built` is written; never cleared.
    ready: AtomicBool,
    built: UnsafeCell<Option<Built>>,
}

// SAFETY: a slot's `built` is written once, by `record` before it sets `ready`
// (Release), and only read after `ready` was seen set (Acquire); the builder lock
// keeps two writers apart, and `record` never writes a slot that is ready.
unsafe impl Sync for BuiltTable {}

static BUILT: BuiltTable =
    BuiltTable([const { BuiltSlot { ready: AtomicBool::new(false), built: UnsafeCell::new(None) } }; MAX_VMS as usize]);

impl BuiltTable {
    /// Keeps `built` for its VM (called with the builder lock held). A slot already
    /// written stays as it is (a VM index is used once in this version).
    fn record(&self, built: &Built) {
        let Some(slot) = self.0.get(usize::from(built.vm.index())) else { return };
        if slot.ready.load(Ordering::Acquire) {
            return;
        }
        // SAFETY: the slot is not ready, so no reader looks at it (see the `Sync`
        // impl), and the builder lock, which the caller holds, keeps other writers out.
        unsafe { *slot.built.get() = Some(*built) };
        slot.ready.store(true, Ordering::Release);
    }

    /// What was kept for VM `id` (its generation must match).
    fn get(&self, id: VmId) -> Option<Built> {
        let slot = self.0.get(usize::from(id.index()))?;
        if !slot.ready.load(Ordering::Acquire) {
            return None;
        }
        // SAFETY: the slot is ready: written once and never again (see the `Sync` impl).
        let built = unsafe { *slot.built.get() };
        built.filter(|b| b.vm == id)
    }
}

/// The builder's own lock: the guest builds of [`build_all`] and the rebuilds of
/// [`reboot`] (on any service vCPU) share the hypercall argument buffers ([`NAME`],
/// [`START_STATE`]) and the [`BUILT`] table, so one runs at a time.
struct BuilderLock;

static BUILDER_LOCKED: AtomicBool = AtomicBool::new(false);

impl BuilderLock {
    fn take() -> Self {
        while BUILDER_LOCKED.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            core::hint::spin_loop();
        }
        Self
    }
}

impl Drop for BuilderLock {
    fn drop(&mut self) {
        BUILDER_LOCKED.store(false, Ordering::Release);
    }
}

/// Guest VM `id`'s platform was reset (0xCF9, the keyboard controller, the FADT reset
/// register): it reboots, as a PC does. Called by the access that made the reset
/// request, outside every board lock (other service vCPUs may have to finish accesses
/// of the same guest before its vCPUs can stop):
///
/// 1. `VM_RESET(vm)`: the hypervisor holds every vCPU of the guest out of guest mode
///    (kicking those on other CPUs and waiting for them), puts their LAPICs and the
///    I/O APIC back to power-on, and logs `partition NAME: reset through its platform;
///    rebooting (reboot N)`;
/// 2. the guest's board goes through a system reset (`crate::vms::reset_board`: every
///    device to power-on, except the RTC/CMOS clock and NVRAM, which survive);
/// 3. its RAM is written as at the first boot ([`write_memory`]: zeroed, platform
///    tables, image, boot structures), vCPU 0 gets its start state again and the
///    others wait for SIPI (`VCPU_SET_STATE`), and `VCPU_START` releases them all.
///
/// It prints `service: partition NAME: reboot N: KIND image loaded again, entry 0x..`.
/// A guest whose line says `on_reset=stop`, or that the builder did not build, is
/// stopped instead with `GUEST_POWER(RESET)` (the first with a line saying so); one
/// whose rebuild fails after step 1 with `VM_STOP(vm, u64::MAX)` and a line naming why.
/// A `VM_RESET` that is refused (the guest is stopping, or another of its vCPUs is
/// resetting it right now) leaves it alone.
pub fn reboot(id: VmId) {
    let Some(built) = BUILT.get(id) else {
        raw_hypercall(hc::GUEST_POWER, u64::from(id.0), power::RESET, 0, 0);
        return;
    };
    let name = built.spec.name;
    if built.spec.on_reset == OnReset::Stop {
        println!("service: partition {name}: on_reset = stop, so it is not rebooted");
        raw_hypercall(hc::GUEST_POWER, u64::from(id.0), power::RESET, 0, 0);
        return;
    }
    let reboot = match call("VM_RESET", hc::VM_RESET, u64::from(id.0), 0, 0) {
        Ok(n) => n,
        Err(why) => {
            println!("service: partition {name}: reset not performed: {why}");
            return;
        }
    };
    crate::vms::reset_board(id);
    let _building = BuilderLock::take();
    match rebuild(&built) {
        Ok((state, kind)) => println!(
            "service: partition {name}: reboot {reboot}: {} image loaded again, entry {:#x}",
            kind.name(),
            state.rip
        ),
        Err(why) => {
            println!("service: partition {name} not rebooted: {why}");
            raw_hypercall(hc::VM_STOP, u64::from(id.0), u64::MAX, 0, 0);
        }
    }
}

/// Step 3 of [`reboot`]: the guest's memory as at its first boot, its vCPUs' start
/// states, and `VCPU_START` for each (they are held by `VM_RESET` until then).
fn rebuild(b: &Built) -> Result<(VcpuStartState, Kind), Failure> {
    let e820 = plan::e820(b.ram);
    let guest = Guest {
        vm: b.vm,
        spec: &b.spec,
        image: b.image,
        extras: b.extras,
        ram: b.ram,
        offset: b.offset,
        cpus: b.cpus.as_slice(),
        e820: e820.as_slice(),
        desc: PlatformDesc::for_devices(b.spec.vcpus, b.spec.devices),
        tables: b.tables,
    };
    let (state, kind) = {
        let mut mem = PoolMemory::new(b.offset, b.ram, b.pool_bytes)
            .ok_or(Failure::Layout("the guest's RAM is outside the pool window"))?;
        write_memory(&mut mem, &guest)?
    };
    let vm = u64::from(b.vm.0);
    let vcpus = guest.cpus.len() as u64;
    for id in 0..vcpus {
        set_state(vm, id, &plan::vcpu_start_state(id, state))?;
    }
    for id in 0..vcpus {
        call("VCPU_START", hc::VCPU_START, vm, id, 0)?;
    }
    Ok((state, kind))
}

/// Writes the guest's RAM: zeroes, platform tables, image, boot structures. Returns the
/// boot vCPU's start state and the image kind.
fn write_memory(mem: &mut PoolMemory, g: &Guest<'_, '_>) -> Result<(VcpuStartState, Kind), Failure> {
    mem.zero(0, g.ram)?;
    let rsdp = if g.tables {
        let region = mem.slice_mut(TABLES_GPA, TABLES_BYTES)?;
        Some(hv_tables::build(&g.desc, TABLES_GPA, region).map_err(Failure::Tables)?.rsdp)
    } else {
        println!(
            "service: partition {}: no ACPI or MP tables: its image overlaps {TABLES_GPA:#x}..{:#x}",
            g.spec.name,
            TABLES_GPA + TABLES_BYTES
        );
        None
    };
    if let Some((load, entry)) = g.spec.flat {
        mem.write(load, g.image)?;
        if g.spec.start != StartMode::Real {
            write_boot_structures(mem, true)?;
        }
        return Ok((plan::flat_start_state(g.spec.start, load, entry, g.ram), Kind::Flat));
    }
    let (kind, loaded) = load_image(mem, g.image, &g.extras, g.e820, rsdp)?;
    let long = matches!(loaded.entry, EntryState::Long64 { .. });
    write_boot_structures(mem, long)?;
    let mut state = plan::entry_start_state(loaded.entry, loaded.kernel.start.saturating_sub(8));
    if kind == Kind::Elf64 {
        // The 64-bit start contract of `hv_abi::start`: RSI = RAM bytes.
        state.rsi = g.ram;
    }
    Ok((state, kind))
}

/// What a kernel gets beside its image: a Linux kernel the initrd and the command line
/// (default [`plan::LINUX_CMDLINE`]), a Multiboot kernel the command line (default
/// empty) and the modules.
#[derive(Clone, Copy)]
struct BootExtras {
    initrd: Option<&'static [u8]>,
    cmdline: Option<&'static str>,
    modules: Modules<'static>,
}

/// Loads a non-flat image with the loader its format calls for.
fn load_image(
    mem: &mut impl GuestMemory,
    image: &[u8],
    extras: &BootExtras,
    e820: &[E820Entry],
    acpi_rsdp: Option<u64>,
) -> Result<(Kind, Loaded), Failure> {
    match hv_loader::detect(image) {
        ImageKind::LinuxBzImage => {
            let cmdline = extras.cmdline.unwrap_or(plan::LINUX_CMDLINE);
            let params = LinuxParams { cmdline, initrd: extras.initrd, e820, acpi_rsdp };
            Ok((Kind::BzImage, hv_loader::linux::load_with_layout(mem, image, &params)?))
        }
        ImageKind::Multiboot => {
            let cmdline = extras.cmdline.unwrap_or("");
            let params = MultibootParams { cmdline, modules: extras.modules.as_slice(), e820 };
            Ok((Kind::Multiboot, hv_loader::multiboot::load_with_layout(mem, image, &params)?))
        }
        ImageKind::Elf64 => Ok((Kind::Elf64, hv_loader::elf64::load_with_layout(mem, image, start::MIN_LOAD_ADDRESS)?)),
        ImageKind::Unknown => Err(Failure::UnknownImage),
    }
}

/// Writes the boot GDT and, with `page_tables`, the identity page tables of
/// `hv_abi::start`.
fn write_boot_structures(mem: &mut PoolMemory, page_tables: bool) -> Result<(), LoadError> {
    mem.write(start::GDT, &plan::gdt_bytes())?;
    if page_tables {
        for i in 0..plan::PAGE_TABLE_PAGES {
            mem.write(start::PAGE_TABLES + i * 4096, &plan::page_table_page(i))?;
        }
    }
    Ok(())
}

/// The boot payload, `len` bytes at `PAYLOAD_GPA`, if the size is plausible.
fn payload(len: u64) -> Option<&'static [u8]> {
    if len == 0 || len > PAYLOAD_MAX_BYTES {
        return None;
    }
    let len = usize::try_from(len).ok()?;
    // SAFETY: the hypervisor maps the payload read-only at PAYLOAD_GPA for the
    // partition's lifetime with the size SYSTEM_INFO reports (checked against the
    // window, which ends where the request slots begin); the start page tables
    // identity-map it; nothing writes it (the EPT forbids it), so a shared 'static
    // slice over it is sound.
    Some(unsafe { core::slice::from_raw_parts(PAYLOAD_GPA as *const u8, len) })
}

/// A guest's RAM as the service partition sees it: `size` bytes at `POOL_GPA + offset`.
struct PoolMemory {
    /// Service address of guest-physical 0.
    base: u64,
    size: u64,
}

impl PoolMemory {
    /// The guest RAM at pool `offset`, if it lies inside a pool of `pool_bytes` that
    /// fits the pool window.
    fn new(offset: u64, size: u64, pool_bytes: u64) -> Option<Self> {
        let end = offset.checked_add(size)?;
        (end <= pool_bytes && pool_bytes <= POOL_MAX_BYTES).then_some(Self { base: POOL_GPA + offset, size })
    }

    /// The guest's bytes `gpa..gpa + len`, or `OutOfRange` when they are not inside
    /// its RAM.
    fn slice_mut(&mut self, gpa: u64, len: u64) -> Result<&mut [u8], LoadError> {
        let out = LoadError::OutOfRange { gpa, len };
        match gpa.checked_add(len) {
            Some(end) if end <= self.size => {}
            _ => return Err(out),
        }
        let len = usize::try_from(len).map_err(|_| out)?;
        let ptr = (self.base + gpa) as *mut u8;
        // SAFETY: `gpa..gpa + len` is inside this guest's RAM (checked above), which is
        // inside the pool window (`new`), mapped read/write at POOL_GPA and
        // identity-mapped by the start page tables. The range belongs to this guest
        // alone (the pool gives each range out once), its vCPUs do not run (not started
        // yet, or held by `VM_RESET` for a reboot), no other service vCPU touches the
        // pool while the builder lock is held, and the slice borrows `self` mutably, so
        // no other reference to these bytes exists while it lives.
        Ok(unsafe { core::slice::from_raw_parts_mut(ptr, len) })
    }
}

impl GuestMemory for PoolMemory {
    fn size(&self) -> u64 {
        self.size
    }

    fn write(&mut self, gpa: u64, bytes: &[u8]) -> Result<(), LoadError> {
        self.slice_mut(gpa, bytes.len() as u64)?.copy_from_slice(bytes);
        Ok(())
    }

    fn zero(&mut self, gpa: u64, len: u64) -> Result<(), LoadError> {
        self.slice_mut(gpa, len)?.fill(0);
        Ok(())
    }
}

/// A control-interface hypercall; a negative result is the refusal `call` names.
fn call(call: &'static str, nr: u64, a: u64, b: u64, c: u64) -> Result<u64, Failure> {
    let r = raw_hypercall(nr, a, b, c, 0);
    match hv_abi::Error::from_rax(r) {
        Some(error) => Err(Failure::Refused { call, error }),
        None => Ok(r),
    }
}

/// The name passed to `VM_CREATE` (the hypervisor reads it from this partition's RAM).
static NAME: [AtomicU8; 32] = [const { AtomicU8::new(0) }; 32];

/// `VM_CREATE` for a VM called `name` (1 to 32 bytes; the parser checked its letters).
fn create_vm(name: &str) -> Result<VmId, Failure> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > NAME.len() {
        return Err(Failure::Layout("name must be 1 to 32 bytes"));
    }
    for (slot, &b) in NAME.iter().zip(bytes) {
        slot.store(b, Ordering::Release);
    }
    let id = call("VM_CREATE", hc::VM_CREATE, NAME.as_ptr() as u64, bytes.len() as u64, 0)?;
    // A VmId is 32 bits; anything else would be a hypervisor bug.
    u32::try_from(id).map(VmId).map_err(|_| Failure::Refused { call: "VM_CREATE", error: hv_abi::Error::BadArgument })
}

/// The start state passed to `VCPU_SET_STATE` (little-endian words, as
/// `VcpuStartState::to_bytes` lays them out).
static START_STATE: [AtomicU64; START_STATE_BYTES / 8] = [const { AtomicU64::new(0) }; START_STATE_BYTES / 8];

/// `VCPU_SET_STATE` of vCPU `vcpu` of VM `vm`.
fn set_state(vm: u64, vcpu: u64, state: &VcpuStartState) -> Result<(), Failure> {
    for (word, bytes) in START_STATE.iter().zip(state.to_bytes().as_chunks::<8>().0) {
        word.store(u64::from_le_bytes(*bytes), Ordering::Release);
    }
    call("VCPU_SET_STATE", hc::VCPU_SET_STATE, vm, vcpu, START_STATE.as_ptr() as u64).map(|_| ())
}

/// The service partition has no heap, but `hv-core` (whose `boot_conf` parser the
/// builder uses) is a `no_std` + `alloc` crate, and linking `alloc` needs a global
/// allocator. Nothing the service calls allocates; this one refuses every request, so
/// an allocation would end in the allocation-error panic (reported by the runtime's
/// panic handler), never in a silent use of memory.
struct NoHeap;

// SAFETY: `alloc` never returns memory (a null pointer is the documented way to report
// failure), so there is nothing `dealloc` could be given back.
unsafe impl GlobalAlloc for NoHeap {
    unsafe fn alloc(&self, _layout: Layout) -> *mut u8 {
        core::ptr::null_mut()
    }

    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
}

#[global_allocator]
static HEAP: NoHeap = NoHeap;
