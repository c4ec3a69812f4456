//! The hypervisor kernel: entered by the bootloader on the bootstrap processor (BSP),
//! it takes over memory, builds its own page tables, starts every application
//! processor (AP), turns VMX on everywhere and reports what the machine can do.
//!
//! Boot order (see docs/ARCHITECTURE.md): console, IDT, frames, heap, screen, own page
//! tables, own stack → GDT/TSS, payload, CPU features, ACPI, TSC, LAPIC + host timer, APs, VMX
//! probe, pre-flight report, VMXON on every CPU, ready.
#![no_std]
#![no_main]

extern crate alloc;

mod acpi;
mod arch;
mod console;
mod control;
mod dispatch;
mod guests;
mod mm;
mod mmio;
mod partition;
mod payload;
mod platform;
mod service;
mod vcpu;
mod virq;
mod vmx;

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};

use bootloader_api::config::{BootloaderConfig, Mapping};
use bootloader_api::info::MemoryRegionKind;
use bootloader_api::{entry_point, BootInfo};
use hv_core::boot_conf::{BootConf, SelfTest, WhenIdle};
use hv_core::preflight::{CpuSource, Preflight, VmxUnavailable};
use hv_core::vmx_caps::VmxCapabilities;
use spin::Once;

use arch::{gdt, idt, lapic, percpu, smp, tsc};
use mm::{frames, heap, paging, stacks};

/// The bootloader maps all physical memory at an offset of its choosing.
static BOOTLOADER_CONFIG: BootloaderConfig = {
    let mut config = BootloaderConfig::new_default();
    config.mappings.physical_memory = Some(Mapping::Dynamic);
    config.kernel_stack_size = 128 * 1024;
    config
};

entry_point!(kernel_main, config = &BOOTLOADER_CONFIG);

/// Size of the BSP's own (guarded) stack.
const BSP_STACK_SIZE: usize = 128 * 1024;
/// Exit code for "this machine cannot run the hypervisor".
const EXIT_NO_VMX: u8 = 1;

/// What the BSP carries over from the bootloader to its own stack.
struct Handoff {
    entry_tsc: u64,
    /// TSC when the hypervisor's own tables and stack were in place.
    paging_tsc: u64,
    rsdp: Option<u64>,
    ramdisk: Option<&'static [u8]>,
}

static HANDOFF: Once<Handoff> = Once::new();

/// What the APs wait for after checking in.
static AP_COMMAND: AtomicU8 = AtomicU8::new(AP_WAIT);
const AP_WAIT: u8 = 0;
const AP_ENABLE_VMX: u8 = 1;
const AP_PARK: u8 = 2;
static VMX_CAPS: Once<VmxCapabilities> = Once::new();
static VMX_ON: AtomicU32 = AtomicU32::new(0);
static VMX_DONE: AtomicU32 = AtomicU32::new(0);
/// The settings from the boot payload, for the APs.
static CONF: Once<BootConf> = Once::new();
/// The number of APs that checked in (valid once the APs are told to enable VMX).
static AP_COUNT: AtomicU32 = AtomicU32::new(0);

/// Stops the boot with a clear message (the BSP only; before anything can run).
fn boot_failure(what: core::fmt::Arguments<'_>) -> ! {
    console::write_fatal(format_args!("FATAL: cpu 0: boot failed: {what}\n"));
    arch::halt_forever()
}

fn kernel_main(boot_info: &'static mut BootInfo) -> ! {
    let entry_tsc = tsc::now();
    percpu::install_bsp();
    console::init();
    idt::init_early();
    log::info!("hypervisor: {} starting", env!("CARGO_PKG_VERSION"));

    let Some(phys_offset) = boot_info.physical_memory_offset.into_option() else {
        boot_failure(format_args!("the bootloader did not map physical memory"))
    };
    let usable =
        boot_info.memory_regions.iter().filter(|r| r.kind == MemoryRegionKind::Usable).map(|r| (r.start, r.end));
    let mem = frames::init(phys_offset, usable);
    log::info!("memory: {} MiB usable in {} ranges", mem.usable_bytes >> 20, mem.ranges);
    if mem.dropped_bytes > 0 {
        log::warn!("memory: {} KiB in small fragments not used", mem.dropped_bytes >> 10);
    }
    if let Err(e) = heap::init() {
        boot_failure(format_args!("no memory for the heap: {e:?}"));
    }
    if let Some(fb) = boot_info.framebuffer.take() {
        let info = fb.info();
        console::attach_screen(console::framebuffer::FramebufferConsole::new(fb.into_buffer(), info));
        log::info!("console: framebuffer {}x{}", info.width, info.height);
    } else {
        log::info!("console: no framebuffer; serial only");
    }

    let stats = match paging::switch_to_own_tables() {
        Ok(s) => s,
        Err(e) => boot_failure(format_args!("could not build the page tables: {e:?}")),
    };
    log::info!(
        "paging: own tables loaded: {} mappings, {} executable, {} writable+executable made non-executable (W^X)",
        stats.leaves,
        stats.executable,
        stats.wx_fixed
    );
    check_w_xor_x();
    if let Err(e) = stacks::init() {
        boot_failure(format_args!("no room for stacks: {e:?}"));
    }
    let top = match stacks::allocate(BSP_STACK_SIZE) {
        Ok(top) => top,
        Err(e) => boot_failure(format_args!("no BSP stack: {e:?}")),
    };
    let ramdisk = boot_info.ramdisk_addr.into_option().map(|addr| {
        // SAFETY: the bootloader loaded the ramdisk at this address with this length;
        // the mapping was copied into our tables and the memory is never reused.
        unsafe { core::slice::from_raw_parts(addr as *const u8, boot_info.ramdisk_len as usize) }
    });
    let paging_tsc = tsc::now();
    HANDOFF.call_once(|| Handoff { entry_tsc, paging_tsc, rsdp: boot_info.rsdp_addr.into_option(), ramdisk });
    // SAFETY: `top` is the top of a fresh, mapped, guarded stack; `bsp_main` never
    // returns, so nothing on the old stack is used again.
    unsafe {
        core::arch::asm!("mov rsp, {top}", "call {main}", top = in(reg) top, main = sym bsp_main, options(noreturn))
    }
}

/// Checks W^X on the kernel image as the CPU will enforce it: code read+execute,
/// constants read-only and non-executable, data read+write and non-executable.
fn check_w_xor_x() {
    use paging::Protection::{ReadExecute, ReadOnly, ReadWrite};
    static CONSTANT: [u8; 8] = *b"rodata!!";
    static VARIABLE: AtomicU32 = AtomicU32::new(0);
    let code = paging::protection(kernel_main as fn(&'static mut BootInfo) -> ! as usize as u64);
    let rodata = paging::protection(CONSTANT.as_ptr() as u64);
    let data = paging::protection(&VARIABLE as *const AtomicU32 as u64);
    if (code, rodata, data) == (ReadExecute, ReadOnly, ReadWrite) {
        log::info!("paging: W^X holds: code RX, constants R+NX, data RW+NX");
    } else {
        log::error!("paging: W^X check failed: code {code:?}, constants {rodata:?}, data {data:?}");
    }
}

/// The rest of the BSP's boot, on its own guarded stack.
extern "C" fn bsp_main() -> ! {
    let Some(handoff) = HANDOFF.get() else { boot_failure(format_args!("lost the boot hand-off")) };
    if let Err(e) = gdt::init_for_this_cpu() {
        boot_failure(format_args!("no GDT/TSS: {e:?}"));
    }
    idt::enable_ist();
    idt::load();

    let (conf, partitions) = payload::read(handoff.ramdisk);
    let conf = *CONF.call_once(|| conf);
    console::set_level(conf.log_level);
    console::set_timestamps(conf.console_timestamps);

    let cpu = arch::cpuid::features();
    let acpi_info = match handoff.rsdp {
        Some(rsdp) => match acpi::read(rsdp) {
            Ok(info) => Some(info),
            Err(e) => {
                log::warn!("acpi: tables unusable ({e:?}); continuing as if there were none");
                None
            }
        },
        None => None,
    };
    let (hz, source) = tsc::init(cpu.tsc_hz_from_cpuid, acpi_info.as_ref());
    // The host facts every guest CPUID and RDMSR exit applies, read before any guest runs.
    let _ = crate::arch::cpuid::init_host_facts(hz);
    log::info!("tsc: {} MHz ({source})", hz / 1_000_000);
    crate::arch::cmos::init_wall_clock();
    let apic_mode = match lapic::init_bsp(cpu.x2apic) {
        Ok(mode) => mode,
        Err(e) => boot_failure(format_args!("cannot map the local APIC: {e:?}")),
    };
    percpu::set_apic_id(lapic::id());
    log::info!(
        "lapic: {} mode, bsp apic id {}",
        if apic_mode == lapic::Mode::X2Apic { "x2APIC" } else { "xAPIC" },
        lapic::id()
    );
    match lapic::init_timer_bsp(cpu.tsc_deadline) {
        lapic::TimerKind::TscDeadline => log::info!("timer: host timer in LAPIC TSC-deadline mode"),
        lapic::TimerKind::OneShot { lapic_hz } => {
            log::info!("timer: host timer in LAPIC one-shot mode at {} kHz (measured against the TSC)", lapic_hz / 1000)
        }
    }

    platform::init(acpi_info.as_ref().and_then(|a| a.soft_off), cpu.under_qemu_or_kvm());
    let (targets, source) = match &acpi_info {
        Some(info) => {
            log::info!("acpi: MADT lists {} processors (bsp apic id {})", info.ap_apic_ids.len() + 1, info.bsp_apic_id);
            (smp::Targets::Madt(&info.ap_apic_ids), CpuSource::Madt)
        }
        None => {
            log::info!("acpi: no ACPI tables; finding application processors by INIT-SIPI-SIPI broadcast");
            (smp::Targets::Broadcast, CpuSource::Broadcast)
        }
    };
    let smp_start_tsc = tsc::now();
    let aps = match smp::start_aps(targets, ap_entry) {
        Ok(n) => n,
        Err(e) => {
            log::warn!("smp: application processors not started ({e:?}); running on the BSP only");
            0
        }
    };
    let cpus = aps + 1;
    log::info!("smp: {cpus} cpus online");

    let smp_end_tsc = tsc::now();
    let vmx = vmx::probe(&cpu);
    let preflight = Preflight {
        cpu: &cpu,
        cpus_found: cpus,
        cpu_source: source,
        vmx: vmx.as_ref().map_err(|e| *e),
        acpi: acpi_info.is_some(),
        dmar: acpi_info.as_ref().is_some_and(|a| a.dmar),
        tsc_hz: hz,
    };
    console::write_block(|out| preflight.render(out));

    let caps = match vmx {
        Ok(caps) => caps,
        Err(why) => no_vmx(why),
    };
    log::info!("vmx: capabilities: {caps}");
    let guests_possible = match vcpu::init(&vmx::read_raw_msrs(), conf.apicv) {
        Ok(()) => {
            if vcpu::apicv_supported() {
                log::info!("virq: vCPUs in x2APIC mode use APIC virtualization (virtual-interrupt delivery)");
            } else if !conf.apicv {
                log::info!("virq: APIC virtualization turned off (apicv = false); interrupts are injected by software");
            } else {
                log::info!("virq: this CPU has no APIC virtualization; interrupts are injected by software");
            }
            true
        }
        Err(missing) => {
            log::error!("vmx: cannot run guests on this CPU: {missing}");
            false
        }
    };
    partition::init(cpus, hv_core::ept::LargePages { two_mib: caps.ept_2m, one_gib: caps.ept_1g });
    let caps = VMX_CAPS.call_once(|| caps);
    let vmx_start_tsc = tsc::now();
    match vmx::enable_on_this_cpu(caps) {
        Ok(()) => {
            VMX_ON.fetch_add(1, Ordering::AcqRel);
            log::info!("vmx: cpu 0 on");
        }
        Err(why) if aps == 0 => no_vmx(why),
        Err(why) => log::error!("vmx: cpu 0 failed: {}", why.reason()),
    }
    let started = if partitions.is_empty() {
        0
    } else if guests_possible {
        guests::start_all(&partitions, handoff.ramdisk, cpus)
    } else {
        log::error!("partitions: {} not started: this CPU cannot run guests", partitions.len());
        0
    };
    AP_COUNT.store(aps, Ordering::Release);
    AP_COMMAND.store(AP_ENABLE_VMX, Ordering::Release);
    lapic::send_ipi(hv_core::apic::DeliveryMode::Fixed, idt::WAKE_VECTOR, hv_core::apic::Destination::AllExcludingSelf);
    let deadline = tsc::deadline_us(2_000_000);
    while VMX_DONE.load(Ordering::Acquire) < aps && tsc::now() < deadline {
        core::hint::spin_loop();
    }
    let on = VMX_ON.load(Ordering::Acquire);
    if VMX_DONE.load(Ordering::Acquire) < aps {
        log::warn!("vmx: {} cpus did not report back", aps - VMX_DONE.load(Ordering::Acquire));
    }
    if conf.selftest == SelfTest::CpuFault {
        await_selftest_fault(aps);
    }
    log::info!("memory: {} MiB free after boot", frames::free_bytes() >> 20);
    log::info!("hypervisor: ready, {cpus} cpus, vmx on {on}");
    let ready_tsc = tsc::now();
    let ticks = ready_tsc - handoff.entry_tsc;
    log::info!("boot: entry to ready: {ticks} tsc ticks ({} ms)", ticks * 1000 / hz.max(1));
    log::info!(
        "boot: phases (tsc ticks): memory+paging {}, devices+acpi {}, ap start-up {} (fixed waits {}), report+vmx probe {}, vmxon on all {}",
        handoff.paging_tsc - handoff.entry_tsc,
        smp_start_tsc - handoff.paging_tsc,
        smp_end_tsc - smp_start_tsc,
        smp::fixed_wait_ticks(source == CpuSource::Broadcast, aps),
        vmx_start_tsc - smp_end_tsc,
        ready_tsc - vmx_start_tsc,
    );

    if started > 0 {
        let mut ran_guest = run_partitions_on_this_cpu(0, caps);
        // A guest vCPU the service partition starts on this CPU later (`VCPU_START`)
        // runs here, as the APs run theirs (each CPU runs at most one).
        while partition::any_running() {
            if !ran_guest {
                if let Some(v) = partition::vcpu_for_cpu(0).filter(|v| v.started.load(Ordering::Acquire)) {
                    vcpu::run(v, caps);
                    ran_guest = true;
                    continue;
                }
            }
            core::hint::spin_loop();
        }
        service::shut_down();
        PARTITIONS_DONE.store(true, Ordering::Release);
        if aps > 0 {
            lapic::send_ipi(
                hv_core::apic::DeliveryMode::Fixed,
                idt::WAKE_VECTOR,
                hv_core::apic::Destination::AllExcludingSelf,
            );
        }
        log::info!("hypervisor: all partitions stopped");
        destroy_stopped_partitions();
    }
    match conf.when_idle {
        WhenIdle::PowerOff => platform::power_off(0),
        WhenIdle::Halt => {
            log::info!("hypervisor: no partition is running; cpus halted (when_idle = halt)");
            arch::halt_forever()
        }
    }
}

/// Runs what this CPU was given: first the service partition's vCPU until it waits
/// for requests, then the guest vCPU (which switches to the service vCPU on forwarded
/// exits) until its partition stops. Whether it ran a guest vCPU (the BSP does not wait
/// for one here: it is the CPU that notices when every partition has stopped).
fn run_partitions_on_this_cpu(cpu: u32, caps: &'static hv_core::vmx_caps::VmxCapabilities) -> bool {
    let service = partition::service_vcpu_for_cpu(cpu).filter(|v| v.started.load(Ordering::Acquire));
    if let Some(svc) = service {
        // On the BSP this is where the service partition builds and starts the guests.
        service::bring_up(svc, caps);
        if cpu != 0 {
            wait_for_guest_vcpu(cpu);
        }
    }
    if let Some(v) = partition::vcpu_for_cpu(cpu).filter(|v| v.started.load(Ordering::Acquire)) {
        vcpu::run(v, caps);
        return true;
    }
    false
}

/// Set once every guest has stopped: CPUs still waiting for a guest vCPU give up.
static PARTITIONS_DONE: AtomicBool = AtomicBool::new(false);

/// Sleeps until the service partition starts a guest vCPU on this CPU (`VCPU_START`
/// kicks it) or the hypervisor is done with partitions. The check runs with
/// interrupts off and `sti; hlt` cannot miss the kick that follows it.
fn wait_for_guest_vcpu(cpu: u32) {
    loop {
        x86_64::instructions::interrupts::disable();
        let started = partition::vcpu_for_cpu(cpu).is_some_and(|v| v.started.load(Ordering::Acquire));
        if started || PARTITIONS_DONE.load(Ordering::Acquire) {
            return;
        }
        x86_64::instructions::interrupts::enable_and_hlt();
    }
}

/// `selftest = cpu-fault`: the last AP faults on purpose; the BSP checks that it was
/// reported and carries on.
fn await_selftest_fault(aps: u32) {
    if aps == 0 {
        log::warn!("selftest: cpu-fault needs at least 2 cpus; skipped");
        return;
    }
    let deadline = tsc::deadline_us(2_000_000);
    while idt::FATAL_TRAPS.load(Ordering::Acquire) == 0 && tsc::now() < deadline {
        core::hint::spin_loop();
    }
    match idt::FATAL_TRAPS.load(Ordering::Acquire) {
        0 => log::error!("selftest: cpu {aps} did not report its fault"),
        n => log::info!("selftest: {n} cpu halted by its own fault; cpu 0 keeps running"),
    }
}

/// Destroys every stopped partition through the control interface and checks that
/// its handles are refused afterwards (the interface's stale-handle rule, exercised on
/// every boot that ran partitions).
fn destroy_stopped_partitions() {
    let handles: alloc::vec::Vec<_> = partition::all_vms().collect();
    for vm in handles {
        let vcpu = partition::vcpu_handle(vm, 0);
        if let Ok(regs) = vcpu.and_then(partition::get_registers) {
            log::info!(
                "control: vcpu 0 stopped at rip {:#x} (rax {:#x}, rsp {:#x}, rflags {:#x}, cr0 {:#x}, cr3 {:#x}, cr4 {:#x}, efer {:#x})",
                regs.rip,
                regs.gprs.rax,
                regs.rsp,
                regs.rflags,
                regs.cr0,
                regs.cr3,
                regs.cr4,
                regs.efer
            );
        }
        match partition::destroy_vm(vm) {
            Ok(()) => {
                let stale_vm = partition::destroy_vm(vm) == Err(partition::ControlError::BadHandle);
                // A VM that never got a vCPU (one the service partition created and
                // stopped) has no vCPU handle to check.
                let stale_vcpu = vcpu.is_err()
                    || vcpu.is_ok_and(|v| partition::exit_stats(v, 0) == Err(partition::ControlError::BadHandle));
                if stale_vm && stale_vcpu {
                    log::info!("control: partition destroyed; its stale VM and vCPU handles are refused");
                } else {
                    log::error!("control: a destroyed partition's handle was still accepted");
                }
            }
            Err(e) => log::warn!("control: partition not destroyed: {e:?}"),
        }
    }
}

/// VMX cannot be used: say why and what to do, then power off.
fn no_vmx(why: VmxUnavailable) -> ! {
    AP_COMMAND.store(AP_PARK, Ordering::Release);
    log::info!("vmx: unavailable: {}", why.reason());
    log::info!("vmx: to fix: {}", why.fix());
    platform::power_off(EXIT_NO_VMX)
}

/// Where every AP arrives from the trampoline, on its own stack, with the hypervisor's
/// page tables; `index` is its dense CPU number.
extern "C" fn ap_entry(index: u64) -> ! {
    // The trampoline hands over a page-aligned stack top; at this depth it is the next
    // page boundary up.
    let stack_top = stack_pointer().next_multiple_of(4096);
    idt::load();
    let block = alloc::boxed::Box::leak(alloc::boxed::Box::new(percpu::PerCpu::new(index as u32)));
    // SAFETY: a fresh, leaked block for this CPU alone, installed before any use.
    unsafe { percpu::install(block) };
    if let Err(e) = gdt::init_for_this_cpu() {
        log::error!("smp: cpu {index}: no GDT/TSS ({e:?}); parking it");
        smp::check_in();
        arch::halt_forever();
    }
    lapic::enable_this_cpu();
    percpu::set_apic_id(lapic::id());
    lapic::init_timer_this_cpu();
    log::info!("smp: cpu {index} online (apic id {})", lapic::id());
    smp::check_in();

    loop {
        match AP_COMMAND.load(Ordering::Acquire) {
            AP_WAIT => {
                // Sleep until the BSP's wake-up IPI; `sti; hlt` cannot miss it.
                x86_64::instructions::interrupts::enable_and_hlt();
                x86_64::instructions::interrupts::disable();
            }
            AP_ENABLE_VMX => break,
            _ => arch::halt_forever(),
        }
    }
    // The BSP removed the trampoline's identity mapping; drop it from this TLB too.
    x86_64::instructions::tlb::flush_all();
    if let Some(caps) = VMX_CAPS.get() {
        match vmx::enable_on_this_cpu(caps) {
            Ok(()) => {
                VMX_ON.fetch_add(1, Ordering::AcqRel);
                log::info!("vmx: cpu {index} on");
            }
            Err(why) => log::error!("vmx: cpu {index} failed: {}", why.reason()),
        }
    }
    VMX_DONE.fetch_add(1, Ordering::AcqRel);
    if let Some(caps) = VMX_CAPS.get() {
        let _ = run_partitions_on_this_cpu(index as u32, caps);
    }
    let is_last = index == u64::from(AP_COUNT.load(Ordering::Acquire));
    if is_last && CONF.get().is_some_and(|c| c.selftest == SelfTest::CpuFault) {
        let guard = stack_top - smp::AP_STACK_SIZE as u64 - 4096;
        log::info!("selftest: cpu {index} reads its stack guard page at {guard:#x}");
        // SAFETY: deliberately not safe: the guard page is unmapped, the read faults
        // (#PF) and the exception handler halts this CPU. Nothing is read or written.
        unsafe { core::ptr::read_volatile(guard as *const u64) };
    }
    arch::halt_forever()
}

/// The current stack pointer.
fn stack_pointer() -> u64 {
    let rsp: u64;
    // SAFETY: reads the stack pointer into a register; no memory access.
    unsafe { core::arch::asm!("mov {}, rsp", out(reg) rsp, options(nomem, nostack, preserves_flags)) };
    rsp
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let rsp = stack_pointer();
    let cpu = percpu::index();
    console::write_fatal(format_args!(
        "FATAL: cpu {cpu}: hypervisor panic: {info}\nFATAL:   rsp {rsp:#018x} cr3 {:#x}\nFATAL: cpu {cpu} halted\n",
        paging::root()
    ));
    arch::halt_forever()
}
