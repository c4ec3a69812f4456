//! Per-CPU data, reached through the GS base (IA32_GS_BASE) of each CPU.
//!
//! Slot 0 of the structure is a pointer to itself, so `mov reg, gs:[0]` yields the
//! current CPU's `PerCpu` without knowing the CPU number first.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::arch::msr::{self, Msr};

/// One CPU's data.
#[repr(C)]
pub struct PerCpu {
    /// Must stay the first field: read as `gs:[0]`.
    self_ptr: *const PerCpu,
    /// Dense CPU number: 0 is the BSP, APs in check-in order.
    pub index: u32,
    /// Local APIC ID (x2APIC ID in x2APIC mode).
    pub apic_id: AtomicU32,
    /// This CPU's GDT and TSS (the VMCS host state needs their bases).
    pub gdt_base: AtomicU64,
    pub tss_base: AtomicU64,
}

// SAFETY: `self_ptr` is only read, and only as a pointer to this very `PerCpu`; the
// other fields are immutable or atomic.
unsafe impl Sync for PerCpu {}

impl PerCpu {
    /// A per-CPU block for CPU `index`, not yet installed.
    pub const fn new(index: u32) -> Self {
        Self {
            self_ptr: core::ptr::null(),
            index,
            apic_id: AtomicU32::new(u32::MAX),
            gdt_base: AtomicU64::new(0),
            tss_base: AtomicU64::new(0),
        }
    }
}

static BSP: PerCpu = PerCpu::new(0);

/// Installs `cpu` as this CPU's per-CPU block.
///
/// # Safety
/// Called once per CPU, before anything reads [`current`], with a block that lives
/// forever and is not installed on another CPU.
pub unsafe fn install(cpu: &'static mut PerCpu) {
    cpu.self_ptr = cpu;
    // SAFETY: IA32_GS_BASE exists on every x86_64 CPU; the hypervisor uses GS only for
    // this pointer.
    unsafe { msr::write(Msr::GsBase, cpu as *const PerCpu as u64) };
}

/// Installs the BSP's static block; first thing on the BSP.
pub fn install_bsp() {
    let ptr = &BSP as *const PerCpu;
    // SAFETY: writes the self pointer of the BSP's block once, before any reader, from
    // the only running CPU; the block is a static that lives forever.
    unsafe {
        core::ptr::addr_of!((*ptr).self_ptr).cast_mut().write(ptr);
        msr::write(Msr::GsBase, ptr as u64);
    }
}

/// The current CPU's block.
#[must_use]
pub fn current() -> &'static PerCpu {
    let ptr: *const PerCpu;
    // SAFETY: GS base points at an installed `PerCpu` whose first field is its own
    // address (installed before any code calls this, on every CPU).
    unsafe { core::arch::asm!("mov {}, gs:[0]", out(reg) ptr, options(nostack, readonly, preserves_flags)) };
    // SAFETY: see above; installed blocks are 'static.
    unsafe { &*ptr }
}

/// The current CPU's dense index.
#[must_use]
pub fn index() -> u32 {
    current().index
}

/// Most CPUs the hypervisor drives.
pub const MAX_CPUS: usize = 256;

/// The APIC ID of each CPU by dense index (`u32::MAX`: not online), for IPIs to a
/// given CPU.
static APIC_IDS: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(u32::MAX) }; MAX_CPUS];

/// Records the APIC ID of the current CPU.
pub fn set_apic_id(id: u32) {
    let cpu = current();
    cpu.apic_id.store(id, Ordering::Relaxed);
    if let Some(slot) = APIC_IDS.get(cpu.index as usize) {
        slot.store(id, Ordering::Release);
    }
}

/// The APIC ID of CPU `index`, if it is online.
#[must_use]
pub fn apic_id_of(index: u32) -> Option<u32> {
    APIC_IDS.get(index as usize).map(|slot| slot.load(Ordering::Acquire)).filter(|&id| id != u32::MAX)
}
