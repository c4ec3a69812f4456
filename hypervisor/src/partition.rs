//! Partitions (VMs) and their vCPUs, behind a handle-based control interface with
//! KVM's three levels:
//!
//! - the system: [`create_vm`];
//! - a VM handle: [`map_ram`], [`write_guest`], [`create_vcpu`], [`stop_vm`];
//! - a VM handle: [`set_irq_line`] (the VM's virtual IOAPIC input pins);
//! - a VM handle: [`reset_vm`] (a platform reset: every vCPU held out of guest mode
//!   and back in its power-on interrupt state, until [`start_vcpu`] restarts it from
//!   its start state);
//! - a vCPU handle: [`set_boot_state`], [`set_mp_state`], [`start_vcpu`], [`exit_stats`].
//!
//! Handles carry a generation number and are checked on every call: a stale handle
//! (of a destroyed VM) or a made-up one gets [`ControlError::BadHandle`]. In this
//! version the hypervisor drives the interface itself at boot, from the partitions
//! the boot payload names (`guests.rs`); the service partition will reach the same
//! calls by hypercall.
//!
//! Isolation: a VM's RAM is a run of frames taken from the frame allocator for it
//! alone and is the only memory its EPT maps; hypervisor memory is never mapped.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, Ordering};

use hv_core::addr::{GuestPhysAddr, HostPhysAddr};
use hv_core::ept::{EptPermissions, LargePages, MemoryType, TableMemory};
use hv_core::io_request::deferred::DeferredWait;
use hv_core::pci_config;
use hv_core::vioapic::VIoApic;
use hv_core::vlapic::{LapicConfig, VirtualLapic};
use spin::Mutex;

use crate::mm::frames;
use crate::vmx::run::GuestRegisters;

/// Most partitions at once.
pub const MAX_VMS: usize = 16;
/// Most vCPUs per partition.
pub const MAX_VCPUS: usize = 64;
/// Exit reasons counted per vCPU (basic reasons 0..=79).
pub const EXIT_REASONS: usize = 80;

/// Errors of the control interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlError {
    /// Unknown, stale or foreign handle.
    BadHandle,
    /// No free VM or vCPU slot.
    NoSlot,
    /// Not enough free memory for the VM's RAM or its tables.
    OutOfMemory,
    /// A guest-physical range outside the VM's RAM, unaligned, or overlapping.
    BadRange,
    /// The vCPU's physical CPU does not exist or already runs a vCPU.
    CpuUnavailable,
    /// The operation does not fit the VM's or vCPU's state (e.g. RAM mapped twice).
    BadState,
    /// Access rights no EPT entry may hold (write without read).
    BadRights,
}

/// The EPT's page-table frames, taken from the frame allocator and reached through
/// the direct map.
pub struct KernelTables;

impl TableMemory for KernelTables {
    fn allocate_table(&mut self) -> Option<HostPhysAddr> {
        frames::allocate_frame().ok().map(HostPhysAddr::new)
    }

    fn read(&self, table: HostPhysAddr, index: usize) -> u64 {
        // SAFETY: `table` is an EPT table frame this allocator handed out (direct-mapped)
        // and the EPT code keeps `index < 512`.
        unsafe { frames::phys_to_virt(table.as_u64()).cast::<u64>().add(index & 511).read_volatile() }
    }

    fn write(&mut self, table: HostPhysAddr, index: usize, value: u64) {
        // SAFETY: as in `read`; the table belongs to this VM's EPT, whose mutex the
        // caller holds.
        unsafe { frames::phys_to_virt(table.as_u64()).cast::<u64>().add(index & 511).write_volatile(value) }
    }

    fn free_table(&mut self, _table: HostPhysAddr) {
        // The boot-time frame allocator does not take frames back; a freed EPT table
        // stays unused until a later allocator can reuse it.
    }
}

/// The registers a vCPU starts with: the 64-bit start state of `hv_abi::start`, or
/// real mode at `rip` (CS = rip >> 4, IP = rip & 0xf) when `real_mode`.
#[derive(Debug, Clone, Copy, Default)]
pub struct BootState {
    pub real_mode: bool,
    /// 32-bit flat protected mode with paging off (`hv_abi::start`).
    pub protected_mode: bool,
    pub rip: u64,
    pub rsp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub cr3: u64,
    pub gdt_base: u64,
    pub gdt_limit: u16,
    /// RAX and RBX at the start (Multiboot's magic and information pointer).
    pub rax: u64,
    pub rbx: u64,
}

/// One virtual CPU. Its registers are only touched by the physical CPU it runs on.
pub struct Vcpu {
    pub vm: &'static Vm,
    pub id: u32,
    pub cpu: u32,
    pub boot: Mutex<BootState>,
    pub regs: UnsafeCell<GuestRegisters>,
    pub exits: [AtomicU64; EXIT_REASONS],
    /// TSC ticks spent in the handler, per exit reason, over the exits that were timed
    /// (`dispatch::EXIT_TIMING_SAMPLE`), and how many were.
    pub exit_ticks: [AtomicU64; EXIT_REASONS],
    pub exits_timed: [AtomicU64; EXIT_REASONS],
    pub vpid: u16,
    /// Set by [`start_vcpu`]; the physical CPU enters only a started vCPU.
    pub started: AtomicBool,
    /// The virtual LAPIC. Its own CPU uses it on exits and before entries; other CPUs
    /// take the lock briefly to deliver IPIs and IOAPIC messages into it. Reached
    /// through [`Vcpu::lapic`], which marks it for re-evaluation.
    pub lapic_state: Mutex<VirtualLapic>,
    /// Someone used the LAPIC since the last entry evaluated it: the next entry must
    /// look at it again (`virq::prepare_entry` skips that work otherwise).
    pub lapic_dirty: AtomicBool,
    /// Events sent by other vCPUs, taken by the vCPU's own CPU before its next entry.
    pub nmi_pending: AtomicBool,
    pub init_pending: AtomicBool,
    /// The vector of a start-up IPI received while waiting for one ([`NO_SIPI`]: none).
    pub sipi_vector: AtomicU32,
    /// [`MpState`] as a `u8`: written by the vCPU's own CPU (and by INIT/SIPI handling
    /// there); read by others.
    pub mp_state: AtomicU8,
    /// Host-physical address of the vCPU's virtual-APIC page (0: no APIC
    /// virtualization on this machine), and whether it is in use (x2APIC mode).
    pub apic_page: u64,
    pub apicv_active: AtomicBool,
    /// Which entry controls the last entry armed (`virq`: event windows, guest timer),
    /// so that entries needing neither skip the VMCS accesses. Owner CPU only.
    pub entry_controls_set: AtomicU8,
    /// [`attention`] bits: the next entry must run the full evaluation of
    /// `virq::prepare_entry`. Whoever changes the state a bit names sets the bit after
    /// the state (Release); the vCPU's CPU clears them all before it evaluates.
    pub attention: AtomicU32,
    /// The VM's EPT changed: INVEPT on this vCPU's CPU before it runs again (set by
    /// [`protect_range`], cleared by the vCPU's CPU when it executes it).
    pub ept_flush_pending: AtomicBool,
    /// The vCPU is in guest mode, or about to enter it: set by its CPU (SeqCst) before
    /// its last look at [`Vcpu::ept_flush_pending`] ahead of every entry
    /// (`virq::enter_guest_mode`), cleared after every exit. [`protect_range`] waits
    /// only for vCPUs with this set: any other flushes before it next enters.
    pub in_guest: AtomicBool,
    /// Host-physical address of the vCPU's VMCS region (0 before its set-up).
    pub vmcs: AtomicU64,
    /// The VMCS was launched (the next entry is a VMRESUME).
    pub launched: AtomicBool,
    /// Sequence number of the last I/O request posted for this vCPU.
    /// It starts at the VM's generation << 32, so that the sequence numbers of a VM
    /// that reuses a destroyed one's slot differ from the old VM's (a late
    /// `SERVICE_COMPLETE` meant for the old VM cannot match).
    pub io_sequence: AtomicU64,
    /// PCI configuration-space requests posted for this vCPU (`kind::PCI_CONFIG`),
    /// reported when it stops.
    pub pci_config_requests: AtomicU64,
    /// The request the service partition deferred (`hv_core::io_request::deferred`):
    /// waited on by the vCPU's own CPU, completed by any service vCPU.
    pub deferred: Mutex<DeferredWait>,
    /// Service vCPUs: the TSC at which to wake it from `SERVICE_REPLY_WAIT` (0: none).
    pub wake_at: AtomicU64,
    /// The vCPU's registers when it left its loop (for [`get_registers`]).
    pub final_registers: Mutex<Option<RegisterState>>,
    /// Held by [`reset_vm`]: the vCPU's CPU keeps it out of guest mode until
    /// [`start_vcpu`] releases it.
    pub reset_held: AtomicBool,
    /// Set by the vCPU's own CPU once it is held and out of guest mode (what
    /// [`reset_vm`] waits for); cleared by [`reset_vm`] when it holds the vCPU.
    pub reset_parked: AtomicBool,
    /// The next entry first loads the start state ([`BootState`] and the MP state) anew,
    /// as after [`reset_vm`].
    pub restart_pending: AtomicBool,
    /// How many times [`reset_vm`] held the vCPU: a forwarded access that sees it change
    /// while in flight belongs to the guest before the reset and is dropped.
    pub reset_epoch: AtomicU32,
    /// The port access the service partition is working on while this CPU runs the
    /// service vCPU in this vCPU's exit frame (`service::begin_port_forward` until
    /// `service::finish_port_forward`). Only the vCPU's own CPU touches it.
    pub port_forward: UnsafeCell<crate::service::PortForward>,
    /// The vCPU's request slot (`hv_abi::service::slot_index`; [`NO_REQUEST_SLOT`]:
    /// none, the VM or vCPU index is beyond the slot array) and the id word of its
    /// requests (`vm | vcpu << 32`, `IoRequestSlot::to_words`), fixed at creation for
    /// the fast port path.
    pub request_slot: u32,
    pub request_ids: u64,
}

/// [`Vcpu::request_slot`] of a vCPU without one.
pub const NO_REQUEST_SLOT: u32 = u32::MAX;

/// A vCPU's registers as the control interface reports them (KVM's `kvm_regs` plus the
/// control registers of `kvm_sregs` that matter most).
#[derive(Debug, Clone, Copy, Default)]
pub struct RegisterState {
    pub gprs: GuestRegisters,
    pub rip: u64,
    pub rsp: u64,
    pub rflags: u64,
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
}

/// No start-up IPI is pending.
pub const NO_SIPI: u32 = u32::MAX;

/// The run state of a vCPU (KVM's "MP state").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MpState {
    /// Runs guest code.
    Runnable = 0,
    /// Executed HLT: sleeps until an interrupt it can take (or an NMI/INIT) arrives.
    Halted = 1,
    /// An application processor after reset or INIT: sleeps until a start-up IPI.
    WaitForSipi = 2,
}

impl MpState {
    #[must_use]
    pub fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::Halted,
            2 => Self::WaitForSipi,
            _ => Self::Runnable,
        }
    }
}

/// Bits of [`Vcpu::attention`]: what changed since the vCPU's CPU last evaluated its
/// state before an entry. Only "some bit set" matters to the entry path; the bits say
/// who asked, for a reader of the code or of a dump.
pub mod attention {
    /// The LAPIC was used ([`super::Vcpu::lapic`]).
    pub const LAPIC: u32 = 1 << 0;
    /// An NMI is pending.
    pub const NMI: u32 = 1 << 1;
    /// An INIT is pending.
    pub const INIT: u32 = 1 << 2;
    /// A start-up IPI arrived.
    pub const SIPI: u32 = 1 << 3;
    /// The MP state changed.
    pub const MP_STATE: u32 = 1 << 4;
    /// An INVEPT is due.
    pub const EPT_FLUSH: u32 = 1 << 5;
    /// The partition is stopping.
    pub const STOP: u32 = 1 << 6;
    /// The last entry armed an event window or the guest timer, or left an NMI
    /// pending: the next entry looks again (set by the vCPU's own CPU).
    pub const REARM: u32 = 1 << 7;
    /// The 8259's INTR output, wired to the boot vCPU's LINT0, changed level.
    pub const PIC_INTR: u32 = 1 << 8;
    /// The partition is being reset ([`super::reset_vm`]): hold the vCPU, then restart
    /// it from its start state.
    pub const RESET: u32 = 1 << 9;
    /// A new vCPU: its first entry evaluates everything.
    pub const ALL: u32 = u32::MAX;
}

impl Vcpu {
    /// The virtual LAPIC, locked, marked for re-evaluation before the vCPU's next entry
    /// (the mark comes first, so an entry that misses the change has not yet looked).
    pub fn lapic(&self) -> spin::MutexGuard<'_, VirtualLapic> {
        self.lapic_dirty.store(true, Ordering::Release);
        self.request_attention(attention::LAPIC);
        self.lapic_state.lock()
    }

    /// Makes the vCPU's next entry evaluate its state (call after changing it).
    pub fn request_attention(&self, bits: u32) {
        self.attention.fetch_or(bits, Ordering::Release);
    }

    #[must_use]
    pub fn mp_state(&self) -> MpState {
        MpState::from_u8(self.mp_state.load(Ordering::Acquire))
    }

    pub fn set_mp_state(&self, state: MpState) {
        self.mp_state.store(state as u8, Ordering::Release);
        self.request_attention(attention::MP_STATE);
    }
}

// SAFETY: `regs` and `port_forward` are accessed only by the vCPU's own physical CPU
// (the one it was started on); everything else is immutable, atomic or behind a mutex.
unsafe impl Sync for Vcpu {}

/// One partition.
pub struct Vm {
    pub name: &'static str,
    pub generation: u32,
    /// The VM's slot in the VM table (its handle's index).
    pub index: u16,
    /// This VM is the service partition.
    pub is_service: AtomicBool,
    /// The emulated devices whose ports are forwarded to the service partition
    /// (`hv_abi::platform::devices::DeviceSet` bits).
    pub devices: AtomicU32,
    /// The same ports as a bitmap (bit `port % 64` of word `port / 64`), so that a port
    /// exit finds out whether it is forwarded with one load ([`Vm::forwards_port`]).
    /// Written by [`set_devices`] before `devices`. The PCI configuration block
    /// 0xCF8-0xCFF is never in it: with the `pci` device its accesses are routed by
    /// [`Vm::routes_pci_config`] instead.
    pub forwarded_ports: [AtomicU64; 1024],
    /// The VM has the `pci` device: accesses to 0xCF8-0xCFF are routed by
    /// `hv_core::pci_config::route` (configuration-space accesses as `PCI_CONFIG`
    /// requests, the rest as port requests). Written by [`set_devices`].
    pub routes_pci_config: AtomicBool,
    /// The hypervisor's copy of the VM's `CONFIG_ADDRESS` (the guest's last dword write
    /// at 0xCF8, masked; 0 at creation and after a reset), which names the function and
    /// register of its `CONFIG_DATA` accesses.
    pub pci_config_address: AtomicU32,
    /// Host-physical base and size of the VM's RAM (guest-physical 0 .. size).
    pub ram_base: AtomicU64,
    pub ram_bytes: AtomicU64,
    pub ept: Mutex<Option<hv_core::ept::Ept<KernelTables>>>,
    pub eptp: AtomicU64,
    pub vcpus: [AtomicPtr<Vcpu>; MAX_VCPUS],
    pub vcpu_count: AtomicU32,
    /// vCPUs that are still running, and those that have left their loop.
    pub running: AtomicU32,
    pub finished: AtomicU32,
    pub stopped: AtomicBool,
    pub exit_code: AtomicU64,
    /// Console state: the next byte the partition writes starts a line.
    pub console_line_start: AtomicBool,
    /// Console state: where the partition's output is in a terminal control sequence
    /// (`hv_core::console_output::ControlFilter`, as a byte).
    pub console_filter: AtomicU8,
    /// TSC when the VM was created (the zero of its console timestamps).
    pub created_tsc: u64,
    /// The partition's virtual IOAPIC.
    pub ioapic: Mutex<VIoApic>,
    /// The INTR output of the VM's 8259 pair (emulated by the service partition, which
    /// reports its level with `GUEST_PIC_INTR`), wired to the boot vCPU's LINT0.
    pub pic_intr: AtomicBool,
    /// Reboots so far ([`reset_vm`]).
    pub reboots: AtomicU32,
    /// Held by [`reset_vm`] from its checks to its return: one reset at a time.
    pub reset_lock: Mutex<()>,
}

/// A handle to a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmHandle {
    index: u16,
    generation: u32,
}

/// A handle to a vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuHandle {
    vm: VmHandle,
    /// The vCPU's id within its VM.
    pub vcpu: u16,
}

static VMS: [AtomicPtr<Vm>; MAX_VMS] = [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_VMS];
static GENERATION: AtomicU32 = AtomicU32::new(1);
static NEXT_VPID: AtomicU32 = AtomicU32::new(1);
/// The vCPU each physical CPU runs (at most one in this version: no scheduler yet).
static CPU_VCPU: [AtomicPtr<Vcpu>; 256] = [const { AtomicPtr::new(core::ptr::null_mut()) }; 256];
/// The service partition's vCPU on each physical CPU.
static SERVICE_VCPU: [AtomicPtr<Vcpu>; 256] = [const { AtomicPtr::new(core::ptr::null_mut()) }; 256];
/// Physical CPUs that exist (set at boot).
static CPUS_ONLINE: AtomicU32 = AtomicU32::new(1);
/// Large EPT pages this CPU supports.
static LARGE_PAGES: Mutex<LargePages> = Mutex::new(LargePages { two_mib: false, one_gib: false });

/// Bytes in hypervisor memory that the `guest-ept` scenario looks for in guest RAM
/// (and must never find).
pub static HYPERVISOR_CANARY: [u8; 24] = *b"HV-CANARY:hypervisor-mem";

/// Records the machine facts the control interface needs.
pub fn init(cpus_online: u32, large: LargePages) {
    // Keep the canary in the image (nothing else reads it).
    core::hint::black_box(&HYPERVISOR_CANARY);
    CPUS_ONLINE.store(cpus_online, Ordering::Release);
    *LARGE_PAGES.lock() = large;
}

fn vm(handle: VmHandle) -> Result<&'static Vm, ControlError> {
    let slot = VMS.get(usize::from(handle.index)).ok_or(ControlError::BadHandle)?;
    let ptr = slot.load(Ordering::Acquire);
    // SAFETY: non-null entries point at leaked `Vm`s that live forever.
    let vm = unsafe { ptr.as_ref() }.ok_or(ControlError::BadHandle)?;
    if vm.generation != handle.generation {
        return Err(ControlError::BadHandle);
    }
    Ok(vm)
}

fn vcpu(handle: VcpuHandle) -> Result<&'static Vcpu, ControlError> {
    let vm = vm(handle.vm)?;
    let ptr = vm.vcpus.get(usize::from(handle.vcpu)).ok_or(ControlError::BadHandle)?.load(Ordering::Acquire);
    // SAFETY: non-null entries point at leaked `Vcpu`s that live forever.
    unsafe { ptr.as_ref() }.ok_or(ControlError::BadHandle)
}

/// Held while a VM or a vCPU is created, so that a free table entry is found and taken
/// in one step: nothing is allocated for a creation that finds no entry (the service
/// partition may call `VM_CREATE` and `VCPU_CREATE` in a loop, from every CPU at once,
/// and must not be able to exhaust the heap), and two creations never pick the same
/// entry. Creation is rare (boot, the guest builder), so one lock for both is enough.
static CREATION: Mutex<()> = Mutex::new(());

/// System level: creates an empty VM named `name` (copied: names live as long as the
/// hypervisor). `NoSlot`, with nothing allocated, when all `MAX_VMS` entries are taken.
pub fn create_vm(name: &str) -> Result<VmHandle, ControlError> {
    let _creation = CREATION.lock();
    let index = VMS.iter().position(|s| s.load(Ordering::Acquire).is_null()).ok_or(ControlError::NoSlot)?;
    let generation = GENERATION.fetch_add(1, Ordering::AcqRel);
    let name: &'static str = alloc::boxed::Box::leak(alloc::string::String::from(name).into_boxed_str());
    let vm = alloc::boxed::Box::leak(alloc::boxed::Box::new(Vm {
        name,
        generation,
        index: index as u16,
        is_service: AtomicBool::new(false),
        devices: AtomicU32::new(0),
        forwarded_ports: [const { AtomicU64::new(0) }; 1024],
        routes_pci_config: AtomicBool::new(false),
        pci_config_address: AtomicU32::new(0),
        ram_base: AtomicU64::new(0),
        ram_bytes: AtomicU64::new(0),
        ept: Mutex::new(None),
        eptp: AtomicU64::new(0),
        vcpus: [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_VCPUS],
        vcpu_count: AtomicU32::new(0),
        running: AtomicU32::new(0),
        finished: AtomicU32::new(0),
        stopped: AtomicBool::new(false),
        exit_code: AtomicU64::new(0),
        console_line_start: AtomicBool::new(true),
        console_filter: AtomicU8::new(0),
        created_tsc: crate::arch::tsc::now(),
        ioapic: Mutex::new(VIoApic::default()),
        pic_intr: AtomicBool::new(false),
        reboots: AtomicU32::new(0),
        reset_lock: Mutex::new(()),
    }));
    // The entry was free under `CREATION`, and only creation (under it) fills entries.
    VMS[index].store(vm, Ordering::Release);
    Ok(VmHandle { index: index as u16, generation })
}

/// VM level: gives the VM `bytes` of RAM at guest-physical 0, from frames taken for it
/// alone, mapped write-back and read/write/execute in a new EPT.
pub fn map_ram(handle: VmHandle, bytes: u64) -> Result<(), ControlError> {
    if bytes == 0 || !bytes.is_multiple_of(2 << 20) {
        return Err(ControlError::BadRange);
    }
    if vm(handle)?.ept.lock().is_some() {
        return Err(ControlError::BadState);
    }
    let base = frames::allocate_zeroed(bytes / 4096, 2 << 20, u64::MAX).map_err(|_| ControlError::OutOfMemory)?;
    map_ram_from(handle, base, bytes)
}

/// VM level: gives the VM `bytes` of RAM at guest-physical 0 made of the frames at
/// host-physical `base` (2 MiB aligned), which the caller owns for this VM (the service
/// partition's memory pool, whose ranges the caller keeps apart).
pub fn map_ram_from(handle: VmHandle, base: u64, bytes: u64) -> Result<(), ControlError> {
    let vm = vm(handle)?;
    if bytes == 0 || !bytes.is_multiple_of(2 << 20) || !base.is_multiple_of(2 << 20) {
        return Err(ControlError::BadRange);
    }
    let mut ept_slot = vm.ept.lock();
    if ept_slot.is_some() {
        return Err(ControlError::BadState);
    }
    let large = *LARGE_PAGES.lock();
    let mut ept = hv_core::ept::Ept::new(KernelTables, large).map_err(|_| ControlError::OutOfMemory)?;
    let flush = ept
        .map(GuestPhysAddr::new(0), HostPhysAddr::new(base), bytes, EptPermissions::RWX, MemoryType::WriteBack)
        .map_err(|_| ControlError::OutOfMemory)?;
    // A fresh EPT has never been used by any CPU: nothing to invalidate.
    flush.acknowledge();
    vm.eptp.store(ept.eptp(false), Ordering::Release);
    vm.ram_base.store(base, Ordering::Release);
    vm.ram_bytes.store(bytes, Ordering::Release);
    *ept_slot = Some(ept);
    Ok(())
}

/// VM level: copies `data` into the VM's RAM at `gpa`.
pub fn write_guest(handle: VmHandle, gpa: u64, data: &[u8]) -> Result<(), ControlError> {
    let vm = vm(handle)?;
    let host = vm.guest_range(gpa, data.len() as u64).ok_or(ControlError::BadRange)?;
    // SAFETY: `host` is inside this VM's RAM (checked), direct-mapped, and the VM does
    // not run yet while the builder writes it (and the guest may race only with itself).
    unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), frames::phys_to_virt(host), data.len()) };
    Ok(())
}

/// VM level: creates vCPU number `vcpu_count` of the VM, pinned to physical `cpu`. A
/// physical CPU runs at most one guest vCPU and, beside it, one vCPU of the service
/// partition.
///
/// Everything is checked under `CREATION` before anything is allocated; a refused
/// creation allocates nothing.
pub fn create_vcpu(handle: VmHandle, cpu: u32) -> Result<VcpuHandle, ControlError> {
    let _creation = CREATION.lock();
    let vm = vm(handle)?;
    let table = if vm.is_service.load(Ordering::Acquire) { &SERVICE_VCPU } else { &CPU_VCPU };
    let cpu_slot = table.get(cpu as usize).ok_or(ControlError::CpuUnavailable)?;
    if cpu >= CPUS_ONLINE.load(Ordering::Acquire) || !cpu_slot.load(Ordering::Acquire).is_null() {
        return Err(ControlError::CpuUnavailable);
    }
    let id = vm.vcpu_count.load(Ordering::Acquire);
    if id as usize >= MAX_VCPUS {
        return Err(ControlError::NoSlot);
    }
    let apic_page = if crate::vcpu::apicv_supported() {
        frames::allocate_zeroed(1, 4096, u64::MAX).map_err(|_| ControlError::OutOfMemory)?
    } else {
        0
    };
    let vcpu = alloc::boxed::Box::leak(alloc::boxed::Box::new(Vcpu {
        vm,
        id,
        cpu,
        boot: Mutex::new(BootState::default()),
        regs: UnsafeCell::new(GuestRegisters::default()),
        exits: [const { AtomicU64::new(0) }; EXIT_REASONS],
        exit_ticks: [const { AtomicU64::new(0) }; EXIT_REASONS],
        exits_timed: [const { AtomicU64::new(0) }; EXIT_REASONS],
        vpid: (NEXT_VPID.fetch_add(1, Ordering::AcqRel) & 0xffff) as u16,
        started: AtomicBool::new(false),
        lapic_dirty: AtomicBool::new(true),
        lapic_state: Mutex::new(VirtualLapic::new(lapic_config(id))),
        nmi_pending: AtomicBool::new(false),
        init_pending: AtomicBool::new(false),
        sipi_vector: AtomicU32::new(NO_SIPI),
        mp_state: AtomicU8::new(MpState::Runnable as u8),
        apic_page,
        apicv_active: AtomicBool::new(false),
        entry_controls_set: AtomicU8::new(0),
        attention: AtomicU32::new(attention::ALL),
        ept_flush_pending: AtomicBool::new(false),
        in_guest: AtomicBool::new(false),
        vmcs: AtomicU64::new(0),
        launched: AtomicBool::new(false),
        io_sequence: AtomicU64::new(u64::from(vm.generation) << 32),
        pci_config_requests: AtomicU64::new(0),
        deferred: Mutex::new(DeferredWait::Idle),
        wake_at: AtomicU64::new(0),
        final_registers: Mutex::new(None),
        reset_held: AtomicBool::new(false),
        reset_parked: AtomicBool::new(false),
        restart_pending: AtomicBool::new(false),
        reset_epoch: AtomicU32::new(0),
        port_forward: UnsafeCell::new(crate::service::PortForward::NONE),
        request_slot: hv_abi::service::slot_index(vm.index, id).unwrap_or(NO_REQUEST_SLOT),
        request_ids: u64::from(crate::service::vm_id(vm).0) | u64::from(id) << 32,
    }));
    // The CPU's entry and vCPU number `id` were free under `CREATION`, and only
    // creation (under it) fills them.
    cpu_slot.store(vcpu, Ordering::Release);
    vm.vcpus[id as usize].store(vcpu, Ordering::Release);
    vm.vcpu_count.store(id + 1, Ordering::Release);
    Ok(VcpuHandle { vm: handle, vcpu: id as u16 })
}

/// The power-on configuration of vCPU `id`'s virtual LAPIC (APIC ID = vCPU id; vCPU 0
/// is the bootstrap processor).
fn lapic_config(id: u32) -> LapicConfig {
    LapicConfig {
        apic_id: id,
        is_bsp: id == 0,
        tsc_hz: crate::arch::tsc::hz(),
        phys_addr_bits: crate::arch::cpuid::phys_addr_bits(),
    }
}

/// vCPU level: sets the registers the vCPU starts with.
pub fn set_boot_state(handle: VcpuHandle, state: BootState) -> Result<(), ControlError> {
    *vcpu(handle)?.boot.lock() = state;
    Ok(())
}

/// vCPU level: sets the vCPU's run state before it starts (or while [`reset_vm`] holds
/// it): `WaitForSipi` makes it an application processor that waits for INIT and a
/// start-up IPI from another vCPU.
pub fn set_mp_state(handle: VcpuHandle, state: MpState) -> Result<(), ControlError> {
    let v = vcpu(handle)?;
    if v.started.load(Ordering::Acquire) && !v.reset_held.load(Ordering::Acquire) {
        return Err(ControlError::BadState);
    }
    v.set_mp_state(state);
    Ok(())
}

/// VM level: changes the access rights of guest-physical `[gpa, gpa + len)` (page
/// aligned, inside the VM's RAM; `EptPermissions::NONE` unmaps it in effect). Returns
/// once no CPU can use the old rights: every CPU that runs one of the VM's vCPUs has
/// executed INVEPT, or will before its vCPU next enters the guest (its own CPU, when
/// the caller is one of the VM's vCPUs).
pub fn protect_range(handle: VmHandle, gpa: u64, len: u64, perms: EptPermissions) -> Result<(), ControlError> {
    let vm = vm(handle)?;
    perms.check().map_err(|_| ControlError::BadRights)?;
    if len == 0 || gpa % 4096 != 0 || len % 4096 != 0 || vm.guest_range(gpa, len).is_none() {
        return Err(ControlError::BadRange);
    }
    let flush = {
        let mut ept = vm.ept.lock();
        let ept = ept.as_mut().ok_or(ControlError::BadState)?;
        ept.protect(GuestPhysAddr::new(gpa), len, perms).map_err(|_| ControlError::BadRange)?
    };
    let flushed = flush_ept(vm);
    flush.acknowledge();
    if flushed {
        Ok(())
    } else {
        Err(ControlError::BadState)
    }
}

/// How long [`flush_ept`] waits for a vCPU in guest mode on another CPU to leave it
/// (a kicked vCPU exits within the kick backstop, `virq::KICK_BACKSTOP_US`).
const FLUSH_WAIT_TIMEOUT_US: u64 = 1_000_000;

/// Has every vCPU of `vm` execute INVEPT before its next entry, and waits until none
/// on another CPU is still in guest mode with the old translations; `false` when one
/// did not leave guest mode within [`FLUSH_WAIT_TIMEOUT_US`] (the VM is stopped, with
/// a line).
///
/// The handshake of `hv_core::ept_flush`, as KVM's TLB-flush requests: the request bit is set (SeqCst) before the vCPU's
/// `in_guest` is read, and the vCPU's CPU sets `in_guest` (SeqCst) before it reads the
/// request bit ahead of every entry (`virq::enter_guest_mode`). So a vCPU seen outside
/// guest mode flushes before it next enters, and only vCPUs in guest mode need the
/// wait: they are kicked, and their next exit ends it (their CPU flushes before it
/// enters again). A vCPU in the hypervisor (a hypercall such as another
/// `MEMORY_PROTECT`, a forwarded access, a service vCPU in `SERVICE_REPLY_WAIT`, a halted
/// or held vCPU) is not waited for, so two callers cannot wait for each other. The wait
/// ends too when the VM stops (its vCPUs never enter again) and for a held vCPU (a
/// reset in progress: it flushes before it runs again).
fn flush_ept(vm: &'static Vm) -> bool {
    let here = crate::arch::percpu::index();
    for v in vm.vcpus() {
        v.ept_flush_pending.store(true, Ordering::SeqCst);
        v.request_attention(attention::EPT_FLUSH);
        crate::virq::kick(v);
    }
    let deadline = crate::arch::tsc::deadline_us(FLUSH_WAIT_TIMEOUT_US);
    for v in vm.vcpus().filter(|v| v.cpu != here && v.started.load(Ordering::Acquire)) {
        while hv_core::ept_flush::must_wait(
            v.ept_flush_pending.load(Ordering::SeqCst),
            v.in_guest.load(Ordering::SeqCst),
            vm.stop_requested(),
            v.reset_held.load(Ordering::Acquire),
        ) {
            if crate::arch::tsc::now() > deadline {
                log::error!(
                    "partition {}: vcpu {} did not leave guest mode within {} ms for an EPT flush (INVEPT); stopping this partition",
                    vm.name,
                    v.id,
                    FLUSH_WAIT_TIMEOUT_US / 1000
                );
                vm.stop(u64::MAX);
                return false;
            }
            core::hint::spin_loop();
        }
    }
    true
}

/// vCPU level: the registers of a vCPU that has stopped (KVM's `KVM_GET_REGS`);
/// `BadState` while it runs or before it ran.
pub fn get_registers(handle: VcpuHandle) -> Result<RegisterState, ControlError> {
    vcpu(handle)?.final_registers.lock().ok_or(ControlError::BadState)
}

/// VM level: sets the level of input `pin` of the VM's virtual IOAPIC (KVM's
/// `KVM_IRQ_LINE`); an interrupt that results is delivered to the VM's vCPUs.
#[allow(
    dead_code,
    reason = "a control-interface call the service partition will reach by hypercall (issue 5); guests use IRQ_LINE on their own VM"
)]
pub fn set_irq_line(handle: VmHandle, pin: u32, high: bool) -> Result<(), ControlError> {
    let vm = vm(handle)?;
    crate::virq::set_irq_line(vm, pin, high).map_err(|_| ControlError::BadRange)
}

/// vCPU level: marks the vCPU runnable and wakes its physical CPU, which enters it; or
/// releases a vCPU that [`reset_vm`] holds, which restarts from its start state.
pub fn start_vcpu(handle: VcpuHandle) -> Result<(), ControlError> {
    let v = vcpu(handle)?;
    if v.vm.ram_bytes.load(Ordering::Acquire) == 0 {
        return Err(ControlError::BadState);
    }
    if v.reset_held.swap(false, Ordering::AcqRel) {
        // It never stopped counting as running.
        v.request_attention(attention::RESET);
        crate::virq::kick(v);
        return Ok(());
    }
    if v.started.swap(true, Ordering::AcqRel) {
        return Err(ControlError::BadState);
    }
    v.vm.running.fetch_add(1, Ordering::AcqRel);
    crate::virq::kick(v);
    Ok(())
}

/// How long [`reset_vm`] waits for a vCPU on another CPU to leave guest mode.
const RESET_PARK_TIMEOUT_US: u64 = 1_000_000;

/// VM level: the VM's platform was reset, and the caller (the service partition, on
/// physical CPU `caller_cpu`) reboots it; returns the number of this reboot.
///
/// Checks first (nothing changes when one fails): the VM is not stopping, has RAM and
/// vCPUs, all of them started, none held already, and no other reset runs. Then every
/// vCPU is *held* (it does not enter the guest until [`start_vcpu`] releases it, and
/// then starts from its [`BootState`] and MP state) and kicked; the call waits until
/// every vCPU on another CPU has left guest mode (`reset_parked`, set by its CPU in
/// `virq::prepare_entry`). A vCPU on `caller_cpu` needs no wait: the caller runs there
/// only while that vCPU is in the hypervisor, inside a forwarded access (the reset
/// write itself) or a device-timer run, and it checks the hold before it enters again.
/// Then the vCPUs' interrupt state is put back to power-on (LAPIC, pending NMI, INIT
/// and SIPI dropped, runnable) and so is the VM's I/O APIC.
///
/// The wait is bounded: a vCPU that does not leave guest mode within
/// [`RESET_PARK_TIMEOUT_US`] stops the VM (with a line) and the call returns
/// `BadState`; so does it when the VM is stopped meanwhile.
pub fn reset_vm(handle: VmHandle, caller_cpu: u32) -> Result<u32, ControlError> {
    let vm = vm(handle)?;
    let _one_reset = vm.reset_lock.try_lock().ok_or(ControlError::BadState)?;
    let vcpu_not_running_or_held =
        vm.vcpus().any(|v| !v.started.load(Ordering::Acquire) || v.reset_held.load(Ordering::Acquire));
    if vm.stop_requested()
        || vm.ram_bytes.load(Ordering::Acquire) == 0
        || vm.vcpu_count.load(Ordering::Acquire) == 0
        || vcpu_not_running_or_held
    {
        return Err(ControlError::BadState);
    }
    let reboot = vm.reboots.fetch_add(1, Ordering::AcqRel).wrapping_add(1);
    log::info!("partition {}: reset through its platform; rebooting (reboot {reboot})", vm.name);
    for v in vm.vcpus() {
        v.reset_parked.store(false, Ordering::Release);
        v.restart_pending.store(true, Ordering::Release);
        v.reset_epoch.fetch_add(1, Ordering::AcqRel);
        v.reset_held.store(true, Ordering::Release);
        v.request_attention(attention::RESET);
        crate::virq::kick(v);
    }
    let deadline = crate::arch::tsc::deadline_us(RESET_PARK_TIMEOUT_US);
    for v in vm.vcpus().filter(|v| v.cpu != caller_cpu) {
        while !v.reset_parked.load(Ordering::Acquire) {
            if vm.stop_requested() {
                return Err(ControlError::BadState);
            }
            if crate::arch::tsc::now() > deadline {
                log::error!(
                    "partition {}: vcpu {} did not leave guest mode for the reset within {} ms; stopping the partition",
                    vm.name,
                    v.id,
                    RESET_PARK_TIMEOUT_US / 1000
                );
                vm.stop(u64::MAX);
                return Err(ControlError::BadState);
            }
            core::hint::spin_loop();
        }
    }
    // No vCPU of the VM runs guest code or sends interrupts now.
    *vm.ioapic.lock() = VIoApic::default();
    // The 8259 pair is reset with the board; its INTR is low until the service
    // partition reports it again.
    vm.pic_intr.store(false, Ordering::Release);
    // The PCI host's CONFIG_ADDRESS is reset with the board (to 0: cycles disabled).
    vm.pci_config_address.store(0, Ordering::Release);
    for v in vm.vcpus() {
        *v.lapic() = VirtualLapic::new(lapic_config(v.id));
        v.nmi_pending.store(false, Ordering::Release);
        v.init_pending.store(false, Ordering::Release);
        v.sipi_vector.store(NO_SIPI, Ordering::Release);
        v.set_mp_state(MpState::Runnable);
    }
    Ok(reboot)
}

/// vCPU level: the vCPU's exit count for basic exit reason `reason`.
pub fn exit_stats(handle: VcpuHandle, reason: usize) -> Result<u64, ControlError> {
    Ok(vcpu(handle)?.exits.get(reason).map_or(0, |c| c.load(Ordering::Relaxed)))
}

/// VM level: destroys a VM whose vCPUs have all stopped. Its slot is freed and its
/// handles (and its vCPUs') become stale: every later call with them gets
/// `BadHandle`. Its RAM and tables stay reserved: the boot-time frame allocator does
/// not take frames back (a later allocator will).
pub fn destroy_vm(handle: VmHandle) -> Result<(), ControlError> {
    // Entries are freed under the lock that fills them.
    let _creation = CREATION.lock();
    let vm = vm(handle)?;
    if vm.running.load(Ordering::Acquire) != 0 {
        return Err(ControlError::BadState);
    }
    for slot in &vm.vcpus[..vm.vcpu_count.load(Ordering::Acquire) as usize] {
        // SAFETY: non-null entries point at leaked `Vcpu`s that live forever.
        if let Some(v) = unsafe { slot.load(Ordering::Acquire).as_ref() } {
            let table = if vm.is_service.load(Ordering::Acquire) { &SERVICE_VCPU } else { &CPU_VCPU };
            if let Some(slot) = table.get(v.cpu as usize) {
                slot.store(core::ptr::null_mut(), Ordering::Release);
            }
        }
    }
    VMS[usize::from(handle.index)].store(core::ptr::null_mut(), Ordering::Release);
    Ok(())
}

/// VM level: stops every vCPU of the VM (each leaves its loop at its next exit).
pub fn stop_vm(handle: VmHandle, code: u64) -> Result<(), ControlError> {
    vm(handle)?.stop(code);
    Ok(())
}

impl Vm {
    /// Whether guest accesses to `port` go to the service partition (a device of
    /// [`Vm::devices`] decodes it).
    #[inline(always)]
    #[must_use]
    pub fn forwards_port(&self, port: u16) -> bool {
        // The index is below 1024 for every u16 port.
        let word = self.forwarded_ports[usize::from(port >> 6)].load(Ordering::Relaxed);
        word & (1 << (port & 63)) != 0
    }

    /// The host-physical address of guest range `[gpa, gpa + len)`, if it lies in RAM.
    #[must_use]
    pub fn guest_range(&self, gpa: u64, len: u64) -> Option<u64> {
        let end = gpa.checked_add(len)?;
        (end <= self.ram_bytes.load(Ordering::Acquire)).then(|| self.ram_base.load(Ordering::Acquire) + gpa)
    }

    /// The aligned qword at guest-physical `gpa` (a paging-structure entry, for walks of
    /// the guest's page tables), if `gpa` is 8-byte aligned and lies in the VM's RAM.
    #[must_use]
    pub fn read_guest_u64(&self, gpa: u64) -> Option<u64> {
        if gpa % 8 != 0 {
            return None;
        }
        let host = self.guest_range(gpa, 8)?;
        // SAFETY: `host..host + 8` lies inside the VM's RAM (checked) and is 8-byte
        // aligned (the RAM base is 2 MiB aligned); the RAM is direct-mapped and stays
        // allocated. The guest may change it concurrently, which only changes the value.
        Some(unsafe { frames::phys_to_virt(host).cast::<u64>().read_volatile() })
    }

    /// Asks every vCPU to stop; the first caller's code is kept. vCPUs on other CPUs
    /// are kicked, so one that runs guest code without exits or sleeps stops too.
    pub fn stop(&self, code: u64) {
        if !self.stopped.swap(true, Ordering::AcqRel) {
            self.exit_code.store(code, Ordering::Release);
        }
        for v in self.vcpus() {
            v.request_attention(attention::STOP);
            crate::virq::kick(v);
        }
    }

    /// The VM's boot vCPU (vCPU 0), once created.
    #[must_use]
    pub fn boot_vcpu(&self) -> Option<&'static Vcpu> {
        self.vcpus().next().filter(|v| v.id == 0)
    }

    /// The VM's vCPUs.
    pub fn vcpus(&self) -> impl Iterator<Item = &'static Vcpu> + '_ {
        let count = (self.vcpu_count.load(Ordering::Acquire) as usize).min(MAX_VCPUS);
        self.vcpus[..count].iter().filter_map(|slot| {
            // SAFETY: non-null entries point at leaked `Vcpu`s that live forever.
            unsafe { slot.load(Ordering::Acquire).as_ref() }
        })
    }

    /// Whether a stop was requested.
    #[must_use]
    pub fn stop_requested(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }
}

/// The vCPU assigned to physical CPU `cpu`, if it was started.
#[must_use]
pub fn vcpu_for_cpu(cpu: u32) -> Option<&'static Vcpu> {
    let ptr = CPU_VCPU.get(cpu as usize)?.load(Ordering::Acquire);
    // SAFETY: non-null entries point at leaked `Vcpu`s that live forever.
    unsafe { ptr.as_ref() }
}

/// The service partition's vCPU on physical CPU `cpu`, if there is one.
#[must_use]
pub fn service_vcpu_for_cpu(cpu: u32) -> Option<&'static Vcpu> {
    let ptr = SERVICE_VCPU.get(cpu as usize)?.load(Ordering::Acquire);
    // SAFETY: non-null entries point at leaked `Vcpu`s that live forever.
    unsafe { ptr.as_ref() }
}

/// The guest VM the service partition names `id`, if it still exists (a destroyed VM's
/// id is refused by its generation) and is not the service partition itself.
#[must_use]
pub fn guest_vm_by_id(id: hv_abi::service::VmId) -> Option<&'static Vm> {
    let ptr = VMS.get(usize::from(id.index()))?.load(Ordering::Acquire);
    // SAFETY: non-null entries point at leaked `Vm`s that live forever.
    let vm = unsafe { ptr.as_ref() }?;
    let matches = (vm.generation & 0xffff) as u16 == id.generation_low() && !vm.is_service.load(Ordering::Acquire);
    matches.then_some(vm)
}

/// The guest vCPU whose request slot is `slot` (`hv_abi::service::slot_index`), if that
/// VM and vCPU exist and the VM is not the service partition.
#[must_use]
pub fn guest_vcpu_for_slot(slot: u64) -> Option<&'static Vcpu> {
    let per_vm = u64::from(hv_abi::service::MAX_VCPUS_PER_VM);
    if slot >= u64::from(hv_abi::service::SLOTS) {
        return None;
    }
    let ptr = VMS.get(usize::try_from(slot / per_vm).ok()?)?.load(Ordering::Acquire);
    // SAFETY: non-null entries point at leaked `Vm`s that live forever.
    let vm = unsafe { ptr.as_ref() }.filter(|vm| !vm.is_service.load(Ordering::Acquire))?;
    let id = u32::try_from(slot % per_vm).ok()?;
    vm.vcpus().find(|v| v.id == id)
}

/// The VM behind `handle`, if the handle is valid.
#[must_use]
pub fn guest_vm(handle: VmHandle) -> Option<&'static Vm> {
    vm(handle).ok()
}

/// The service partition, if one exists.
#[must_use]
pub fn service_vm() -> Option<&'static Vm> {
    VMS.iter().find_map(|slot| {
        // SAFETY: non-null entries point at leaked `Vm`s that live forever.
        unsafe { slot.load(Ordering::Acquire).as_ref() }.filter(|vm| vm.is_service.load(Ordering::Acquire))
    })
}

/// VM level: marks a fresh VM (no vCPUs yet) as the service partition.
pub fn make_service(handle: VmHandle) -> Result<(), ControlError> {
    let vm = vm(handle)?;
    if vm.vcpu_count.load(Ordering::Acquire) != 0 {
        return Err(ControlError::BadState);
    }
    vm.is_service.store(true, Ordering::Release);
    Ok(())
}

/// VM level: forwards the ports of `devices` to the service partition (those of the
/// PCI configuration block through [`Vm::routes_pci_config`]).
pub fn set_devices(handle: VmHandle, devices: hv_abi::platform::devices::DeviceSet) -> Result<(), ControlError> {
    let vm = vm(handle)?;
    for word in &vm.forwarded_ports {
        word.store(0, Ordering::Relaxed);
    }
    for (first, last) in devices.port_ranges() {
        for port in (first..=last).filter(|&p| !pci_config::in_config_block(p)) {
            vm.forwarded_ports[usize::from(port >> 6)].fetch_or(1 << (port & 63), Ordering::Relaxed);
        }
    }
    vm.routes_pci_config.store(devices.claims_port(pci_config::CONFIG_ADDRESS_PORT), Ordering::Relaxed);
    vm.pci_config_address.store(0, Ordering::Relaxed);
    vm.devices.store(devices.0, Ordering::Release);
    Ok(())
}

/// VM level: maps `bytes` of host memory at `host` (frames the caller took from the
/// frame allocator for this purpose) at guest-physical `gpa`, read/write, write-back,
/// not executable. Used for the request slots the hypervisor shares with the service
/// partition; the range must lie above the VM's RAM, and the VM must have no vCPUs yet
/// (so no CPU has used its EPT and nothing needs invalidating).
pub fn map_shared(handle: VmHandle, gpa: u64, host: u64, bytes: u64) -> Result<(), ControlError> {
    map_shared_with(handle, gpa, host, bytes, EptPermissions::RW)
}

/// [`map_shared`] with the given access rights (read-only for the boot payload).
pub fn map_shared_with(
    handle: VmHandle,
    gpa: u64,
    host: u64,
    bytes: u64,
    perms: EptPermissions,
) -> Result<(), ControlError> {
    let vm = vm(handle)?;
    let aligned = bytes != 0 && gpa % 4096 == 0 && bytes % 4096 == 0 && gpa.checked_add(bytes).is_some();
    if !aligned || gpa < vm.ram_bytes.load(Ordering::Acquire) {
        return Err(ControlError::BadRange);
    }
    if vm.vcpu_count.load(Ordering::Acquire) != 0 {
        return Err(ControlError::BadState);
    }
    let mut ept_slot = vm.ept.lock();
    let ept = ept_slot.as_mut().ok_or(ControlError::BadState)?;
    let flush = ept
        .map(GuestPhysAddr::new(gpa), HostPhysAddr::new(host), bytes, perms, MemoryType::WriteBack)
        .map_err(|_| ControlError::BadRange)?;
    // No vCPU exists yet, so no CPU holds translations of this EPT.
    flush.acknowledge();
    Ok(())
}

/// The handle of `vm`, if it still exists (for calls a VM makes on itself).
pub fn handle_of(vm: &'static Vm) -> Option<VmHandle> {
    let index = VMS.iter().position(|slot| core::ptr::eq(slot.load(Ordering::Acquire), vm))?;
    Some(VmHandle { index: index as u16, generation: vm.generation })
}

/// Every VM that exists now, as handles.
pub fn all_vms() -> impl Iterator<Item = VmHandle> {
    VMS.iter().enumerate().filter_map(|(index, slot)| {
        // SAFETY: non-null entries point at leaked `Vm`s that live forever.
        unsafe { slot.load(Ordering::Acquire).as_ref() }
            .map(|vm| VmHandle { index: index as u16, generation: vm.generation })
    })
}

/// The handle of vCPU `vcpu` of `vm` (checked like any other call).
pub fn vcpu_handle(vm_handle: VmHandle, vcpu_id: u16) -> Result<VcpuHandle, ControlError> {
    let handle = VcpuHandle { vm: vm_handle, vcpu: vcpu_id };
    vcpu(handle).map(|_| handle)
}

/// Whether any guest VM still has running vCPUs (the service partition serves guests
/// and does not count).
#[must_use]
pub fn any_running() -> bool {
    VMS.iter().any(|slot| {
        // SAFETY: non-null entries point at leaked `Vm`s that live forever.
        unsafe { slot.load(Ordering::Acquire).as_ref() }
            .is_some_and(|vm| !vm.is_service.load(Ordering::Acquire) && vm.running.load(Ordering::Acquire) > 0)
    })
}
