//! The control interface by hypercall, for the service partition only
//! (`hv_abi::hypercall::SYSTEM_INFO` .. `VM_STOP`, and `VM_RESET`): the same calls as
//! `partition.rs`'s control interface, reached the way a user-space VMM reaches KVM's
//! ioctls.
//!
//! Validate, then commit: each call decodes and checks every argument (the caller, VM
//! ids, pool ranges, CPU numbers, the start state read from the service partition's
//! RAM) before it changes anything; a bad argument returns an error code and changes
//! nothing.
//!
//! The service partition's memory pool is one run of frames mapped into it at
//! `POOL_GPA`; `VM_MAP_RAM` gives a guest a 2 MiB-aligned part of it, and no two guests
//! get overlapping parts. The boot payload is copied into frames of its own and mapped
//! read-only at `PAYLOAD_GPA`.

use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use hv_abi::service::control::{info, mode, VcpuStartState, START_STATE_BYTES};
use hv_abi::service::{self, VmId};
use hv_abi::Error as HcError;
use hv_core::ept::EptPermissions;
use spin::{Mutex, Once};

use crate::mm::frames;
use crate::partition::{self, BootState, ControlError, MpState, Vcpu, VmHandle};

/// The service partition's memory pool and payload.
struct Resources {
    /// Host-physical base and size of the pool.
    pool_base: u64,
    pool_bytes: u64,
    payload_bytes: u64,
    cpus_online: u32,
}

static RESOURCES: Once<Resources> = Once::new();
/// Pool ranges given to guests, as (offset, bytes).
static POOL_USED: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());

/// Gives the service partition `vm` (no vCPUs yet) a pool of `pool_bytes` and a
/// read-only copy of the boot payload.
pub fn provide(vm: VmHandle, pool_bytes: u64, payload: &[u8], cpus_online: u32) -> Result<(), ControlError> {
    if pool_bytes > service::POOL_MAX_BYTES || payload.len() as u64 > service::PAYLOAD_MAX_BYTES {
        return Err(ControlError::BadRange);
    }
    let pool_base = if pool_bytes == 0 {
        0
    } else {
        let base =
            frames::allocate_zeroed(pool_bytes / 4096, 2 << 20, u64::MAX).map_err(|_| ControlError::OutOfMemory)?;
        partition::map_shared(vm, service::POOL_GPA, base, pool_bytes)?;
        base
    };
    let payload_pages = (payload.len() as u64).div_ceil(4096).max(1);
    let copy = frames::allocate_zeroed(payload_pages, 4096, u64::MAX).map_err(|_| ControlError::OutOfMemory)?;
    // SAFETY: `copy` is a fresh run of `payload_pages` direct-mapped frames owned by the
    // payload copy; `payload.len()` bytes fit in it.
    unsafe { core::ptr::copy_nonoverlapping(payload.as_ptr(), frames::phys_to_virt(copy), payload.len()) };
    partition::map_shared_with(vm, service::PAYLOAD_GPA, copy, payload_pages * 4096, EptPermissions::READ)?;
    RESOURCES.call_once(|| Resources { pool_base, pool_bytes, payload_bytes: payload.len() as u64, cpus_online });
    Ok(())
}

/// The caller is the service partition.
fn check_caller(caller: &'static Vcpu) -> Result<&'static Resources, HcError> {
    if !caller.vm.is_service.load(Ordering::Acquire) {
        return Err(HcError::NotPermitted);
    }
    RESOURCES.get().ok_or(HcError::NotPermitted)
}

/// The guest VM named by `id`.
fn guest(id: u64) -> Result<VmHandle, HcError> {
    let id = u32::try_from(id).map_err(|_| HcError::BadArgument)?;
    let vm = partition::guest_vm_by_id(VmId(id)).ok_or(HcError::BadArgument)?;
    partition::handle_of(vm).ok_or(HcError::BadArgument)
}

fn control_error(e: ControlError) -> HcError {
    match e {
        ControlError::BadRange => HcError::BadAddress,
        _ => HcError::BadArgument,
    }
}

/// `SYSTEM_INFO(item)`.
pub fn system_info(caller: &'static Vcpu, item: u64) -> Result<u64, HcError> {
    let r = check_caller(caller)?;
    match item {
        info::CPUS_ONLINE => Ok(u64::from(r.cpus_online)),
        info::POOL_BYTES => Ok(r.pool_bytes),
        info::PAYLOAD_BYTES => Ok(r.payload_bytes),
        info::WALL_CLOCK_SECONDS => crate::arch::cmos::wall_clock_seconds().ok_or(HcError::BadArgument),
        info::IO_REQUEST_VERSION => Ok(u64::from(hv_abi::io_request::VERSION)),
        _ => Err(HcError::BadArgument),
    }
}

/// `VM_CREATE(name, len)`: the name is copied out of the service partition's RAM and
/// checked (`[a-z0-9-]{1,32}`) before the VM exists.
pub fn vm_create(caller: &'static Vcpu, gpa: u64, len: u64) -> Result<u64, HcError> {
    check_caller(caller)?;
    if !(1..=32).contains(&len) {
        return Err(HcError::BadLength);
    }
    let host = caller.vm.guest_range(gpa, len).ok_or(HcError::BadAddress)?;
    let mut name = [0u8; 32];
    // SAFETY: `len` (<= 32) bytes inside the service partition's RAM (checked), which is
    // direct-mapped; a concurrent change only changes the name, which is checked below.
    unsafe { core::ptr::copy_nonoverlapping(frames::phys_to_virt(host), name.as_mut_ptr(), len as usize) };
    let name = &name[..len as usize];
    if !hv_core::boot_conf::is_partition_name(name) {
        return Err(HcError::BadArgument);
    }
    let name = core::str::from_utf8(name).map_err(|_| HcError::BadArgument)?;
    // `create_vm` copies the name only once it has a free entry: a loop of calls cannot
    // exhaust the heap.
    let handle = partition::create_vm(name).map_err(control_error)?;
    let vm = partition::guest_vm(handle).ok_or(HcError::BadArgument)?;
    Ok(u64::from(crate::service::vm_id(vm).0))
}

/// `VM_MAP_RAM(vm, offset, bytes)`: a part of the pool no other guest has.
pub fn vm_map_ram(caller: &'static Vcpu, id: u64, offset: u64, bytes: u64) -> Result<u64, HcError> {
    let r = check_caller(caller)?;
    let vm = guest(id)?;
    let aligned = offset.is_multiple_of(2 << 20) && bytes.is_multiple_of(2 << 20) && bytes != 0;
    let end = offset.checked_add(bytes).ok_or(HcError::BadAddress)?;
    if !aligned || end > r.pool_bytes {
        return Err(HcError::BadAddress);
    }
    let mut used = POOL_USED.lock();
    if used.iter().any(|&(o, b)| offset < o + b && o < end) {
        return Err(HcError::BadAddress);
    }
    partition::map_ram_from(vm, r.pool_base + offset, bytes).map_err(control_error)?;
    used.push((offset, bytes));
    Ok(0)
}

/// `VM_SET_DEVICES(vm, set)`.
pub fn vm_set_devices(caller: &'static Vcpu, id: u64, set: u64) -> Result<u64, HcError> {
    check_caller(caller)?;
    let vm = guest(id)?;
    let bits = u32::try_from(set).map_err(|_| HcError::BadArgument)?;
    let all = (1u32 << hv_abi::platform::devices::ALL.len()) - 1;
    if bits & !all != 0 {
        return Err(HcError::BadArgument);
    }
    partition::set_devices(vm, hv_abi::platform::devices::DeviceSet(bits)).map_err(control_error)?;
    Ok(0)
}

/// `VCPU_CREATE(vm, cpu)`.
pub fn vcpu_create(caller: &'static Vcpu, id: u64, cpu: u64) -> Result<u64, HcError> {
    check_caller(caller)?;
    let vm = guest(id)?;
    let cpu = u32::try_from(cpu).map_err(|_| HcError::BadArgument)?;
    let handle = partition::create_vcpu(vm, cpu).map_err(control_error)?;
    Ok(u64::from(handle.vcpu))
}

/// The handle of vCPU `vcpu` of guest VM `id`.
fn guest_vcpu(id: u64, vcpu: u64) -> Result<partition::VcpuHandle, HcError> {
    let vm = guest(id)?;
    let vcpu = u16::try_from(vcpu).map_err(|_| HcError::BadArgument)?;
    partition::vcpu_handle(vm, vcpu).map_err(|_| HcError::BadArgument)
}

/// `VCPU_SET_STATE(vm, vcpu, gpa)`: the start state is copied out of the service
/// partition's RAM and checked before it is applied.
pub fn vcpu_set_state(caller: &'static Vcpu, id: u64, vcpu: u64, gpa: u64) -> Result<u64, HcError> {
    check_caller(caller)?;
    let handle = guest_vcpu(id, vcpu)?;
    let host = caller.vm.guest_range(gpa, START_STATE_BYTES as u64).ok_or(HcError::BadAddress)?;
    let mut bytes = [0u8; START_STATE_BYTES];
    // SAFETY: `START_STATE_BYTES` inside the service partition's RAM (checked),
    // direct-mapped; a concurrent change only changes the values, checked below.
    unsafe { core::ptr::copy_nonoverlapping(frames::phys_to_virt(host), bytes.as_mut_ptr(), START_STATE_BYTES) };
    let state = VcpuStartState::from_bytes(&bytes);
    let gdt_limit = u16::try_from(state.gdt_limit).map_err(|_| HcError::BadArgument)?;
    let boot = BootState {
        real_mode: state.mode == mode::REAL16,
        protected_mode: state.mode == mode::PROTECTED32,
        rip: state.rip,
        rsp: state.rsp,
        rdi: state.rdi,
        rsi: state.rsi,
        rax: state.rax,
        rbx: state.rbx,
        cr3: state.cr3,
        gdt_base: state.gdt_base,
        gdt_limit,
    };
    match state.mode {
        mode::LONG64 | mode::PROTECTED32 => {}
        // Real mode starts at CS = rip >> 4 (below 1 MiB).
        mode::REAL16 if state.rip < 0x10_0000 => {}
        mode::WAIT_FOR_SIPI => {
            partition::set_mp_state(handle, MpState::WaitForSipi).map_err(control_error)?;
            return Ok(0);
        }
        _ => return Err(HcError::BadArgument),
    }
    partition::set_boot_state(handle, boot).map_err(control_error)?;
    Ok(0)
}

/// `VCPU_START(vm, vcpu)`.
pub fn vcpu_start(caller: &'static Vcpu, id: u64, vcpu: u64) -> Result<u64, HcError> {
    check_caller(caller)?;
    let handle = guest_vcpu(id, vcpu)?;
    partition::start_vcpu(handle).map_err(control_error)?;
    Ok(0)
}

/// `VM_STOP(vm, code)`.
pub fn vm_stop(caller: &'static Vcpu, id: u64, code: u64) -> Result<u64, HcError> {
    check_caller(caller)?;
    let vm = guest(id)?;
    partition::stop_vm(vm, code).map_err(control_error)?;
    Ok(0)
}

/// `VM_RESET(vm)`: the guest's platform was reset and the service partition reboots it
/// (`partition::reset_vm`, which checks the VM's state before it changes anything);
/// returns the reboot's number. The caller runs on its own CPU, where a vCPU of the
/// guest may be inside the very access that reset it.
pub fn vm_reset(caller: &'static Vcpu, id: u64) -> Result<u64, HcError> {
    check_caller(caller)?;
    let vm = guest(id)?;
    let reboot = partition::reset_vm(vm, caller.cpu).map_err(control_error)?;
    Ok(u64::from(reboot))
}
