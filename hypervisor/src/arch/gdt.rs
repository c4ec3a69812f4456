//! Per-CPU GDT and TSS, with separate, guarded interrupt stacks (IST) for the
//! exceptions that can arrive on a broken stack: #DF, NMI and #MC.

use alloc::boxed::Box;

use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

use crate::mm::stacks;

/// IST slots (1-based in the IDT, 0-based in the TSS).
pub const IST_DOUBLE_FAULT: u8 = 1;
pub const IST_NMI: u8 = 2;
pub const IST_MACHINE_CHECK: u8 = 3;

/// Size of each IST stack.
const IST_STACK_SIZE: usize = 16 * 1024;

/// Kernel code selector (GDT entry 1), the one the IDT gates use.
pub const KERNEL_CS: u16 = 0x08;
/// Kernel data selector (GDT entry 2).
pub const KERNEL_DS: u16 = 0x10;
/// TSS selector (GDT entries 3-4).
pub const TSS_SELECTOR: u16 = 0x18;

/// Builds and loads a GDT with a TSS for the current CPU. The tables live forever.
pub fn init_for_this_cpu() -> Result<(), stacks::StackError> {
    let mut tss = Box::new(TaskStateSegment::new());
    for slot in [IST_DOUBLE_FAULT, IST_NMI, IST_MACHINE_CHECK] {
        let top = stacks::allocate(IST_STACK_SIZE)?;
        tss.interrupt_stack_table[usize::from(slot - 1)] = VirtAddr::new(top);
    }
    let tss: &'static TaskStateSegment = Box::leak(tss);

    let mut gdt = Box::new(GlobalDescriptorTable::new());
    let code = gdt.append(Descriptor::kernel_code_segment());
    let data = gdt.append(Descriptor::kernel_data_segment());
    let tss_sel = gdt.append(Descriptor::tss_segment(tss));
    debug_assert_eq!(code.0, KERNEL_CS);
    let gdt: &'static GlobalDescriptorTable = Box::leak(gdt);
    gdt.load();
    let cpu = crate::arch::percpu::current();
    cpu.gdt_base.store(gdt as *const GlobalDescriptorTable as u64, core::sync::atomic::Ordering::Release);
    cpu.tss_base.store(tss as *const TaskStateSegment as u64, core::sync::atomic::Ordering::Release);
    // SAFETY: the selectors come from the GDT just loaded, which lives forever; the
    // code segment is a 64-bit ring-0 code segment and the data segment a writable one.
    unsafe {
        CS::set_reg(code);
        SS::set_reg(data);
        DS::set_reg(data);
        ES::set_reg(data);
        load_tss(tss_sel);
    }
    let _: SegmentSelector = tss_sel;
    Ok(())
}
