//! Creating the partitions the boot payload names, through the control interface.
//!
//! This is the hypervisor's own small guest builder for flat images (ELF images that
//! `boot/` flattened on the build host): it maps the RAM, copies the image, writes the
//! 64-bit boot structures of `hv_abi::start` (GDT, identity page tables) and starts the
//! boot vCPU. Everything read from the payload is checked again here: a bad partition
//! is skipped with a clear line and the others start.

use hv_abi::start;
use hv_core::boot_conf::{PartitionKind, PartitionSpec, StartMode};
use tar_no_std::TarArchiveRef;

use crate::partition::{self, BootState, ControlError};

/// Why a partition was not started.
#[derive(Debug)]
enum BuildError {
    NotFlat,
    ImageMissing,
    BadLayout(&'static str),
    TooManyVcpus,
    NoFreeCpu,
    Control(ControlError),
}

impl From<ControlError> for BuildError {
    fn from(e: ControlError) -> Self {
        Self::Control(e)
    }
}

/// Builds and starts the partitions in `specs`. With a service partition, only that
/// one (with one vCPU on every CPU): it builds and starts the guests itself through the
/// control interface, as a user-space VMM does beside KVM. Without one, the hypervisor
/// builds the flat test-guest images itself. Returns how many partitions started.
pub fn start_all(specs: &[PartitionSpec<'static>], payload: Option<&'static [u8]>, cpus_online: u32) -> u32 {
    if let Some(spec) = specs.iter().find(|s| s.kind == PartitionKind::Service) {
        let guests = specs.iter().filter(|s| s.kind == PartitionKind::Guest);
        // The pool holds every guest's RAM (2 MiB multiples).
        let pool: u64 = guests.map(|g| g.memory_bytes().next_multiple_of(2 << 20)).sum();
        let cpus: alloc::vec::Vec<u32> = (0..cpus_online).collect();
        return match build_service(spec, payload, &cpus, pool) {
            Ok(()) => {
                log::info!(
                    "partition {}: service partition, {} MiB, a {} MiB pool for guests, one vcpu on each of cpus 0-{}",
                    spec.name,
                    spec.memory_mib,
                    pool >> 20,
                    cpus_online - 1
                );
                1
            }
            Err(e) => {
                log::error!("partition {}: service partition not started: {}", spec.name, describe(&e));
                0
            }
        };
    }
    let mut started = 0;
    for spec in specs.iter().filter(|s| s.kind == PartitionKind::Guest) {
        if !spec.devices.is_empty() {
            log::warn!(
                "partition {}: lists devices but no service partition is configured; its ports stay unclaimed",
                spec.name
            );
        }
        match build(spec, payload, cpus_online) {
            Ok(cpus) => {
                started += 1;
                log::info!(
                    "partition {}: {} MiB, vcpu 0 on cpu {}, entry {:#x}",
                    spec.name,
                    spec.memory_mib,
                    cpus[0],
                    spec.flat.map_or(0, |f| f.1)
                );
                for (id, cpu) in cpus.iter().enumerate().skip(1) {
                    log::info!("partition {}: vcpu {id} on cpu {cpu}, waiting for INIT and start-up IPIs", spec.name);
                }
            }
            Err(e) => log::error!("partition {}: not started: {}", spec.name, describe(&e)),
        }
    }
    started
}

/// Builds the service partition: its RAM and image as for a guest, the request-slot
/// array (`hv_abi::service::SLOTS_GPA`), a memory pool of `pool` bytes for guests'
/// RAM (`POOL_GPA`) and the boot payload, read-only (`PAYLOAD_GPA`), mapped in; and one
/// vCPU on each of `cpus`, each started at the entry point with its own stack
/// (`hv_abi::service::STACK_BYTES`).
fn build_service(
    spec: &PartitionSpec<'static>,
    payload: Option<&'static [u8]>,
    cpus: &[u32],
    pool: u64,
) -> Result<(), BuildError> {
    let (load, entry) = spec.flat.ok_or(BuildError::NotFlat)?;
    if pool > hv_abi::service::POOL_MAX_BYTES {
        return Err(BuildError::BadLayout("the guests' RAM does not fit the service partition's pool (2 GiB)"));
    }
    let archive = payload.ok_or(BuildError::ImageMissing)?;
    if spec.start != StartMode::Long {
        return Err(BuildError::BadLayout("the service partition starts in 64-bit mode"));
    }
    let image = find_image(payload, spec.image).ok_or(BuildError::ImageMissing)?;
    let ram = spec.memory_bytes();
    let end = load.checked_add(image.len() as u64).ok_or(BuildError::BadLayout("image end overflows"))?;
    let stacks = hv_abi::service::STACK_BYTES * cpus.len() as u64;
    // The stacks lie right below the image, above the boot structures (below 64 KiB).
    if load < start::MIN_LOAD_ADDRESS || load.checked_sub(stacks).is_none_or(|low| low < 0x1_0000) {
        return Err(BuildError::BadLayout("image loads too low for the vCPUs' stacks below it"));
    }
    if end > ram || !(load..end).contains(&entry) || !ram.is_multiple_of(2 << 20) {
        return Err(BuildError::BadLayout("image does not fit its RAM, or its entry point lies outside it"));
    }
    if ram > hv_abi::service::SLOTS_GPA {
        return Err(BuildError::BadLayout("RAM reaches the request slots at 0xf0000000"));
    }
    let vm = partition::create_vm(spec.name)?;
    partition::make_service(vm)?;
    partition::map_ram(vm, ram)?;
    partition::write_guest(vm, load, image)?;
    write_boot_structures(vm)?;
    crate::service::map_slots(vm)?;
    crate::control::provide(vm, pool, archive, cpus.len() as u32)?;
    for (id, &cpu) in cpus.iter().enumerate() {
        let vcpu = partition::create_vcpu(vm, cpu)?;
        partition::set_boot_state(
            vcpu,
            BootState {
                rip: entry,
                rsp: load - 8 - id as u64 * hv_abi::service::STACK_BYTES,
                rdi: id as u64,
                rsi: ram,
                cr3: start::PAGE_TABLES,
                gdt_base: start::GDT,
                gdt_limit: start::GDT_LIMIT,
                ..Default::default()
            },
        )?;
        partition::start_vcpu(vcpu)?;
    }
    Ok(())
}

fn describe(e: &BuildError) -> &'static str {
    match e {
        BuildError::NotFlat => {
            "its image is not a flattened ELF image (no load/entry); the service partition will load such images"
        }
        BuildError::ImageMissing => "its image is missing from the boot payload",
        BuildError::BadLayout(why) => why,
        BuildError::TooManyVcpus => "more vCPUs than the hypervisor supports per partition",
        BuildError::NoFreeCpu => "not enough free physical CPUs for its vCPUs (one vCPU per CPU in this version)",
        BuildError::Control(ControlError::OutOfMemory) => "not enough free memory for its RAM",
        BuildError::Control(ControlError::CpuUnavailable) => "its pinned CPU does not exist or already runs a vCPU",
        BuildError::Control(_) => "the control interface refused it",
    }
}

fn find_image(payload: Option<&'static [u8]>, path: &str) -> Option<&'static [u8]> {
    let archive = TarArchiveRef::new(payload?).ok()?;
    archive.entries().find(|e| e.filename().as_str().is_ok_and(|n| n == path)).map(|e| e.data())
}

/// Builds one partition; returns the physical CPU of each vCPU.
fn build(
    spec: &PartitionSpec<'static>,
    payload: Option<&'static [u8]>,
    cpus_online: u32,
) -> Result<alloc::vec::Vec<u32>, BuildError> {
    let (load, entry) = spec.flat.ok_or(BuildError::NotFlat)?;
    if spec.vcpus as usize > partition::MAX_VCPUS {
        return Err(BuildError::TooManyVcpus);
    }
    let image = find_image(payload, spec.image).ok_or(BuildError::ImageMissing)?;
    let ram = spec.memory_bytes();
    // Validate the layout before creating anything.
    let end = load.checked_add(image.len() as u64).ok_or(BuildError::BadLayout("image end overflows"))?;
    let real = spec.start == StartMode::Real;
    if real {
        if load < 0x1000 {
            return Err(BuildError::BadLayout("a real-mode image must not load into page 0 (the IVT)"));
        }
        if entry >= 0x10_0000 {
            return Err(BuildError::BadLayout("a real-mode entry point must lie below 1 MiB"));
        }
    } else if load < start::MIN_LOAD_ADDRESS {
        return Err(BuildError::BadLayout("image loads below 2 MiB, where the boot structures live"));
    }
    if end > ram {
        return Err(BuildError::BadLayout("image does not fit in the partition's RAM"));
    }
    if !(load..end).contains(&entry) {
        return Err(BuildError::BadLayout("entry point outside the image"));
    }
    if !ram.is_multiple_of(2 << 20) {
        return Err(BuildError::BadLayout("memory_mib must be a multiple of 2"));
    }
    let cpus = choose_cpus(spec, cpus_online)?;

    let vm = partition::create_vm(spec.name)?;
    partition::map_ram(vm, ram)?;
    partition::set_devices(vm, spec.devices)?;
    partition::write_guest(vm, load, image)?;
    if !real {
        write_boot_structures(vm)?;
    }
    let mut handles = alloc::vec::Vec::with_capacity(cpus.len());
    for &cpu in &cpus {
        handles.push(partition::create_vcpu(vm, cpu)?);
    }
    let vcpu = handles[0];
    partition::set_boot_state(
        vcpu,
        BootState {
            real_mode: real,
            protected_mode: spec.start == StartMode::Protected,
            rip: entry,
            rsp: if real { 0x7000 } else { load - 8 },
            rdi: 0,
            rsi: ram,
            cr3: start::PAGE_TABLES,
            gdt_base: start::GDT,
            gdt_limit: start::GDT_LIMIT,
            ..Default::default()
        },
    )?;
    for &ap in &handles[1..] {
        partition::set_mp_state(ap, partition::MpState::WaitForSipi)?;
    }
    for &handle in &handles {
        partition::start_vcpu(handle)?;
    }
    Ok(cpus)
}

/// The physical CPU of each vCPU: the pinned ones in order, then free CPUs (APs
/// first, the BSP last, since the BSP also watches over the machine).
fn choose_cpus(spec: &PartitionSpec<'static>, cpus_online: u32) -> Result<alloc::vec::Vec<u32>, BuildError> {
    let wanted = spec.vcpus.max(1) as usize;
    let mut cpus: alloc::vec::Vec<u32> = spec.pinned_cpus().iter().copied().take(wanted).collect();
    for cpu in (1..cpus_online).chain(0..1) {
        if cpus.len() == wanted {
            break;
        }
        if partition::vcpu_for_cpu(cpu).is_none() && !cpus.contains(&cpu) {
            cpus.push(cpu);
        }
    }
    if cpus.len() < wanted || cpus.iter().any(|&c| c >= cpus_online || partition::vcpu_for_cpu(c).is_some()) {
        return Err(BuildError::NoFreeCpu);
    }
    Ok(cpus)
}

/// Writes the GDT and identity page tables of `hv_abi::start` into the VM's RAM.
fn write_boot_structures(vm: partition::VmHandle) -> Result<(), ControlError> {
    partition::write_guest(vm, start::GDT, &start::gdt_bytes())?;
    for i in 0..start::PAGE_TABLE_PAGES {
        partition::write_guest(vm, start::PAGE_TABLES + i * 4096, &start::page_table_page(i))?;
    }
    Ok(())
}
