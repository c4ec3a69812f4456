//! Starting the application processors.
//!
//! The trampoline below is copied to a free page under 1 MiB (its page number is the
//! SIPI vector). An AP wakes there in real mode, takes the trampoline's lock, loads a
//! tiny GDT, enables PAE, loads the hypervisor's CR3, sets EFER.LME/NXE and turns on
//! protected mode and paging in one step, then far-jumps to 64-bit code that loads the
//! stack and CPU number the BSP left in the page and calls [`ap_entry`] (SDM Vol. 3
//! 10.8.5 and 11.4.4.1 for the start-up sequence).
//!
//! The lock makes check-in serial, so one stack slot suffices: the BSP writes a fresh
//! stack and number, releases the lock, and waits until the AP that took them checks
//! in. This works both with the MADT's list of APIC IDs (one INIT-SIPI-SIPI each) and
//! without ACPI (INIT-SIPI-SIPI broadcast, counting check-ins until none arrives).

use core::sync::atomic::{AtomicU32, Ordering};

use hv_core::apic::{DeliveryMode, Destination};

use crate::arch::{lapic, tsc};
use crate::mm::{frames, paging, stacks};

core::arch::global_asm!(
    r#"
    .section .text.ap_trampoline, "ax"
    .code16
    .global hv_ap_trampoline_start
hv_ap_trampoline_start:
    cli
    cld
    movw %cs, %ax
    movw %ax, %ds
1:
    lock btsl $0, (hv_tr_lock - hv_ap_trampoline_start)
    jnc 2f
    pause
    jmp 1b
2:
    lgdtl (hv_tr_gdtr - hv_ap_trampoline_start)
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl (hv_tr_cr3 - hv_ap_trampoline_start), %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx
    rdmsr
    orl $0x900, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80010001, %eax
    movl %eax, %cr0
    ljmpl *(hv_tr_farjmp - hv_ap_trampoline_start)

    .code64
hv_tr_long_mode:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movq hv_tr_stack(%rip), %rsp
    movq hv_tr_cpu_index(%rip), %rdi
    movq hv_tr_entry(%rip), %rax
    callq *%rax
3:
    hlt
    jmp 3b

    // Flat 64-bit code and data descriptors with the accessed bit already set: the
    // page is mapped read-only once paging is on, and loading a descriptor whose
    // accessed bit is clear writes it (SDM Vol. 3 3.4.5.1).
    .balign 8
hv_tr_gdt:
    .quad 0
    .quad 0x00af9b000000ffff
    .quad 0x00cf93000000ffff
hv_tr_gdtr:
    .word 23
    .long 0
    .balign 8
hv_tr_farjmp:
    .long 0
    .word 0x08
    .balign 4
    .global hv_tr_lock
hv_tr_lock:
    .long 0
hv_tr_cr3:
    .long 0
    .balign 8
hv_tr_stack:
    .quad 0
hv_tr_cpu_index:
    .quad 0
hv_tr_entry:
    .quad 0
    .global hv_ap_trampoline_end
hv_ap_trampoline_end:
    .text
    "#,
    options(att_syntax)
);

extern "C" {
    static hv_ap_trampoline_start: u8;
    static hv_ap_trampoline_end: u8;
    static hv_tr_gdt: u8;
    static hv_tr_gdtr: u8;
    static hv_tr_farjmp: u8;
    static hv_tr_long_mode: u8;
    static hv_tr_lock: u8;
    static hv_tr_cr3: u8;
    static hv_tr_stack: u8;
    static hv_tr_cpu_index: u8;
    static hv_tr_entry: u8;
}

/// Stack size of each AP's kernel stack.
pub const AP_STACK_SIZE: usize = 64 * 1024;
/// How long to wait for an AP after its SIPI, and for the next check-in of a broadcast.
const CHECK_IN_TIMEOUT_US: u64 = 200_000;

/// APs that have checked in.
static CHECKED_IN: AtomicU32 = AtomicU32::new(0);

/// Which processors to start.
pub enum Targets<'a> {
    /// APIC IDs from the MADT.
    Madt(&'a [u32]),
    /// No ACPI: broadcast and count.
    Broadcast,
}

/// Why start-up did not happen at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmpError {
    NoLowPage,
    Map(paging::MapError),
    Stack(stacks::StackError),
    TrampolineTooLarge,
}

/// The trampoline copy in low memory.
struct Trampoline {
    phys: u64,
}

fn sym(s: &u8) -> u64 {
    s as *const u8 as u64
}

impl Trampoline {
    fn offset(symbol: &u8) -> u64 {
        // SAFETY: taking the address of a symbol from the assembly block above.
        sym(symbol) - sym(unsafe { &hv_ap_trampoline_start })
    }

    fn field<T>(&self, symbol: &u8) -> *mut T {
        frames::phys_to_virt(self.phys + Self::offset(symbol)).cast()
    }

    fn lock(&self) -> &AtomicU32 {
        // SAFETY: the lock word is a 4-byte aligned u32 inside the trampoline page,
        // which stays reserved (never handed to the frame allocator) forever.
        unsafe { &*self.field::<AtomicU32>(&hv_tr_lock) }
    }

    /// Puts a fresh stack and CPU number into the slot and releases the lock.
    fn offer_slot(&self, index: u32) -> Result<(), stacks::StackError> {
        let top = stacks::allocate(AP_STACK_SIZE)?;
        // SAFETY: the fields are aligned u64s inside the trampoline page; the lock is
        // held (set by the previous AP or by us), so no AP reads them concurrently.
        unsafe {
            self.field::<u64>(&hv_tr_stack).write_volatile(top);
            self.field::<u64>(&hv_tr_cpu_index).write_volatile(u64::from(index));
        }
        self.lock().store(0, Ordering::Release);
        Ok(())
    }
}

/// Starts the APs; returns how many checked in. Must run on the BSP with the IDT,
/// GDT, paging and LAPIC set up.
pub fn start_aps(targets: Targets<'_>, entry: extern "C" fn(u64) -> !) -> Result<u32, SmpError> {
    let phys = frames::trampoline_page().ok_or(SmpError::NoLowPage)?;
    // SAFETY: addresses of the symbols from the assembly block above.
    let (start, end) = unsafe { (sym(&hv_ap_trampoline_start), sym(&hv_ap_trampoline_end)) };
    let len = end - start;
    if len > 4096 {
        return Err(SmpError::TrampolineTooLarge);
    }
    let t = Trampoline { phys };
    // SAFETY: copies the trampoline code into the reserved low page (direct-mapped,
    // writable) and patches its absolute fields; no AP runs yet.
    unsafe {
        core::ptr::copy_nonoverlapping(start as *const u8, frames::phys_to_virt(phys), len as usize);
        t.field::<u32>(&hv_tr_gdtr).byte_add(2).write_unaligned((phys + Trampoline::offset(&hv_tr_gdt)) as u32);
        t.field::<u32>(&hv_tr_farjmp).write_volatile((phys + Trampoline::offset(&hv_tr_long_mode)) as u32);
        t.field::<u32>(&hv_tr_cr3).write_volatile(paging::root() as u32);
        t.field::<u64>(&hv_tr_entry).write_volatile(entry as usize as u64);
    }
    t.lock().store(1, Ordering::Release);
    // After paging is on, the AP still fetches from the page's physical address, so
    // identity-map it (read + execute) for the duration of the start-up.
    paging::map_4k(phys, phys, 0).map_err(SmpError::Map)?;

    let vector = (phys >> 12) as u8;
    let result = match targets {
        Targets::Madt(ids) => start_listed(&t, ids, vector),
        Targets::Broadcast => start_broadcast(&t, vector),
    };
    // Keep late APs spinning in real mode: take the lock for good. If one already took
    // the last slot, give it the usual time to check in.
    if t.lock().compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire).is_err() {
        let seen = CHECKED_IN.load(Ordering::Acquire);
        wait_for_check_in(seen + 1);
    }
    paging::unmap_4k(phys);
    result.map(|()| CHECKED_IN.load(Ordering::Acquire))
}

/// Waits until `count` APs have checked in or the timeout passes.
fn wait_for_check_in(count: u32) -> bool {
    let deadline = tsc::deadline_us(CHECK_IN_TIMEOUT_US);
    while CHECKED_IN.load(Ordering::Acquire) < count {
        if tsc::now() > deadline {
            return false;
        }
        core::hint::spin_loop();
    }
    true
}

fn start_listed(t: &Trampoline, ids: &[u32], vector: u8) -> Result<(), SmpError> {
    for &id in ids {
        let next = CHECKED_IN.load(Ordering::Acquire) + 1;
        t.offer_slot(next).map_err(SmpError::Stack)?;
        lapic::send_ipi(DeliveryMode::Init, 0, Destination::Physical(id));
        tsc::delay_us(10_000);
        lapic::send_ipi(DeliveryMode::StartUp, vector, Destination::Physical(id));
        if !wait_for_check_in(next) {
            // A second SIPI, as the MP start-up algorithm prescribes.
            lapic::send_ipi(DeliveryMode::StartUp, vector, Destination::Physical(id));
            if !wait_for_check_in(next) {
                log::warn!("smp: cpu with apic id {id} did not start; continuing without it");
                // Take the slot back so that it is not left half-offered.
                let _ = t.lock().compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire);
            }
        }
    }
    Ok(())
}

fn start_broadcast(t: &Trampoline, vector: u8) -> Result<(), SmpError> {
    t.offer_slot(1).map_err(SmpError::Stack)?;
    lapic::send_ipi(DeliveryMode::Init, 0, Destination::AllExcludingSelf);
    tsc::delay_us(10_000);
    lapic::send_ipi(DeliveryMode::StartUp, vector, Destination::AllExcludingSelf);
    tsc::delay_us(200);
    lapic::send_ipi(DeliveryMode::StartUp, vector, Destination::AllExcludingSelf);
    loop {
        let next = CHECKED_IN.load(Ordering::Acquire) + 1;
        if !wait_for_check_in(next) {
            return Ok(());
        }
        t.offer_slot(next + 1).map_err(SmpError::Stack)?;
    }
}

/// TSC ticks that AP start-up spends in fixed waits, by design: the 10 ms after each
/// INIT, and with the broadcast method the 200 us between the SIPIs and the final
/// window in which no further AP checks in. (With a MADT list the wait for each AP
/// ends early, at its check-in.)
#[must_use]
pub fn fixed_wait_ticks(broadcast: bool, aps: u32) -> u64 {
    let us = if broadcast { 10_000 + 200 + CHECK_IN_TIMEOUT_US } else { 10_000 * u64::from(aps) };
    us * tsc::hz() / 1_000_000
}

/// Called by each AP right after it has set up its CPU state.
pub fn check_in() {
    CHECKED_IN.fetch_add(1, Ordering::AcqRel);
}
