//! Emulated MMIO: guest accesses to the pages of the devices the hypervisor emulates
//! itself (the xAPIC page of each vCPU's virtual LAPIC, the partition's virtual IOAPIC)
//! and to the MMIO ranges of devices the service partition emulates for the VM (its
//! config's `devices`), which are forwarded (`service::access`) once decoded here.
//!
//! Those pages are not mapped in the EPT, so an access exits as an EPT violation that
//! names the guest-physical address and whether it was a read or a write, but neither
//! the data nor the instruction length. The instruction is therefore fetched at the
//! guest's CS:RIP through the guest's own page tables (`hv_core::guest_paging`), decoded
//! (`hv_core::mmio_decode`) and completed here: loads write the register, stores and
//! read-modify-write forms go to the device model, RFLAGS and RIP are updated.
//!
//! The fetch (`hv_core::instruction_fetch`) behaves as the processor's: it stops at the
//! CS limit (16- and 32-bit modes; offset 0xFFFF for 16-bit code) and at the first byte
//! whose page walk fails, and is not an error while the decoder finds the whole
//! instruction in the bytes it got. When the decoder needs a missing byte, the guest
//! gets the fault a processor would raise, RIP unchanged: #GP(0) beyond the CS limit (no
//! error code in real mode), #PF with CR2 = the byte's linear address and the SDM 4.7
//! error code when its walk fails (not present, reserved bit, U/S, execute-disable,
//! SMEP); one line is logged (`MMIO instruction fetch at ... failed: injected #PF`).
//! What a processor would not deliver as a fault stops only that partition with a clear
//! line and a dump: page tables or instruction bytes outside the guest's RAM (the
//! processor would take an EPT violation there, fatal for an access outside RAM; KVM
//! too treats a fetch from MMIO as an emulation failure), an unsupported instruction, a
//! decoded instruction that does not match the exit. Every paging mode is walked
//! (`hv_core::guest_paging`: 32-bit, PAE from the VMCS's PDPTEs, 4-level).

use hv_abi::platform::IOAPIC_BASE;
use hv_core::exit::InterruptionInfo;
use hv_core::instruction_fetch::{self, CodeLocation, Fetched, Missing};
use hv_core::io_request::Completion;
use hv_core::mmio_decode::{
    self, alu, merge_register, register_value, CpuMode, DecodeError, MmioOp, Operand, ALU_FLAGS_MASK,
};
use hv_core::string_io::{StringIo, StringIoForm, StringRegs, RFLAGS_DF};
use hv_core::vlapic::ApicMode;
use x86::vmx::vmcs::guest;

use crate::dispatch::{self, Outcome};
use crate::mm::frames;
use crate::partition::Vcpu;
use crate::vmx::run::GuestRegisters;
use crate::vmx::vmcs;

/// The emulated devices with an MMIO page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// The vCPU's own LAPIC in xAPIC mode (at its IA32_APIC_BASE address).
    Lapic,
    /// The partition's IOAPIC.
    Ioapic,
    /// A device the service partition emulates (the VM's config lists it): accesses
    /// are forwarded; the offset is the full guest-physical address.
    Forwarded,
}

/// Size of an emulated device's register page.
const PAGE: u64 = 0x1000;
/// Code-segment access-rights bits (SDM 25.4.1): L (64-bit code) and D/B (32-bit).
const CS_LONG: u64 = 1 << 13;
const CS_DEFAULT_32: u64 = 1 << 14;
/// CR0.PE (SDM 2.5).
const CR0_PE: u64 = 1;

/// The emulated device whose page holds `gpa`, and the offset in that page.
#[must_use]
pub fn device_at(vcpu: &Vcpu, gpa: u64) -> Option<(Device, u64)> {
    let page = gpa & !(PAGE - 1);
    let offset = gpa & (PAGE - 1);
    {
        let lapic = vcpu.lapic();
        if lapic.mode() == ApicMode::XApic && page == lapic.base_address() {
            return Some((Device::Lapic, offset));
        }
    }
    if page == IOAPIC_BASE {
        return Some((Device::Ioapic, offset));
    }
    let devices = hv_abi::platform::devices::DeviceSet(vcpu.vm.devices.load(core::sync::atomic::Ordering::Relaxed));
    devices.claims_mmio(gpa).then_some((Device::Forwarded, gpa))
}

/// Completes the access at `offset` of `device` that made the guest exit.
pub fn handle_mmio(
    vcpu: &'static Vcpu,
    regs: &mut GuestRegisters,
    device: Device,
    offset: u64,
    exit_was_write: bool,
) -> Outcome {
    let mode = cpu_mode();
    let fetched = fetch_instruction(vcpu, mode);
    let instruction = match mmio_decode::decode(fetched.bytes(), mode) {
        Ok(i) => i,
        Err(DecodeError::Truncated) => return fetch_failed(vcpu, regs, &fetched),
        Err(e) => {
            log::error!(
                "partition {}: vcpu {}: MMIO instruction not emulated ({e:?}), bytes {:02x?}",
                vcpu.vm.name,
                vcpu.id,
                fetched.bytes()
            );
            return dispatch::stop_with_dump(vcpu, "unsupported instruction on an emulated device page", offset);
        }
    };
    if instruction.writes_memory() != exit_was_write {
        return dispatch::stop_with_dump(vcpu, "the MMIO instruction does not match the access that exited", offset);
    }
    let size = instruction.size;
    match instruction.op {
        MmioOp::Load { dest, high_byte, extend, dest_size } => {
            let value = match device_read(vcpu, device, offset, size) {
                Ok(v) => v,
                Err(stop) => return stop,
            };
            let old = dispatch::gpr(regs, dest);
            dispatch::set_gpr(regs, dest, merge_register(old, value, size, high_byte, extend, dest_size));
        }
        MmioOp::Store { src } => {
            let value = operand(regs, src, size);
            if let Err(stop) = device_write(vcpu, device, offset, size, value) {
                return stop;
            }
        }
        MmioOp::Alu { alu: op, src, reg_is_dest, writes_back } => {
            let memory = match device_read(vcpu, device, offset, size) {
                Ok(v) => v,
                Err(stop) => return stop,
            };
            let other = operand(regs, src, size);
            let (a, b) = if reg_is_dest { (other, memory) } else { (memory, other) };
            let result = alu(op, size, a, b);
            if writes_back {
                match (reg_is_dest, src) {
                    (true, Operand::Reg { index, high_byte }) => {
                        let old = dispatch::gpr(regs, index);
                        let merged =
                            merge_register(old, result.result, size, high_byte, mmio_decode::Extend::None, size);
                        dispatch::set_gpr(regs, index, merged);
                    }
                    _ => {
                        if let Err(stop) = device_write(vcpu, device, offset, size, result.result) {
                            return stop;
                        }
                    }
                }
            }
            let rflags = vmcs::read(guest::RFLAGS);
            let _ = vmcs::write(guest::RFLAGS, (rflags & !ALU_FLAGS_MASK) | result.flags);
        }
        MmioOp::StoreString { rep } if device == Device::Forwarded => {
            let string = StringIo {
                form: StringIoForm { address_size: instruction.address_size, segment: mmio_decode::Segment::Es },
                is_in: true,
                rep,
                size,
                down: vmcs::read(guest::RFLAGS) & RFLAGS_DF != 0,
                mode,
            };
            return store_string(vcpu, regs, offset, &string, u64::from(instruction.len));
        }
        MmioOp::StoreString { .. } => {
            return dispatch::stop_with_dump(vcpu, "string store to an emulated device page is not emulated", offset);
        }
    }
    dispatch::advance_rip(u64::from(instruction.len))
}

/// STOS / REP STOS (`string`) into a forwarded device at guest-physical `gpa` (the
/// exiting element): stores rAX's low `string.size` bytes element by element while the
/// elements stay in `gpa`'s page (which the guest's page tables map to one
/// guest-physical page), moving rDI (and counting rCX down) as the CPU does: by the
/// same rules as INS, which also writes through ES:rDI (`hv_core::string_io`). A REP
/// store that reaches the page's end is re-executed for the rest, as after an
/// interrupted string instruction.
fn store_string(vcpu: &'static Vcpu, regs: &mut GuestRegisters, gpa: u64, string: &StringIo, len: u64) -> Outcome {
    let (size, down) = (string.size, string.down);
    let step = u64::from(size);
    let mut remaining = string.count(&StringRegs { rcx: regs.rcx, rsi: regs.rsi, rdi: regs.rdi });
    let value = regs.rax & mmio_decode::size_mask(size);
    let mut at = gpa;
    while remaining > 0 {
        if let Err(stop) = device_write(vcpu, Device::Forwarded, at, size, value) {
            return stop;
        }
        let after = string.after_element(StringRegs { rcx: regs.rcx, rsi: regs.rsi, rdi: regs.rdi });
        (regs.rcx, regs.rdi) = (after.rcx, after.rdi);
        remaining -= 1;
        let next = if down { at.wrapping_sub(step) } else { at.wrapping_add(step) };
        let same_page = next & !(PAGE - 1) == at & !(PAGE - 1) && (next & (PAGE - 1)) + step <= PAGE;
        if remaining > 0 && (!same_page || vcpu.vm.stop_requested()) {
            return Outcome::Continue;
        }
        at = next;
    }
    dispatch::advance_rip(len)
}

fn operand(regs: &GuestRegisters, src: Operand, size: u8) -> u64 {
    match src {
        Operand::Reg { index, high_byte } => register_value(dispatch::gpr(regs, index), size, high_byte),
        Operand::Imm(value) => value,
    }
}

/// Reads `size` bytes at `offset` of the device. LAPIC registers are 32 bits wide at
/// 16-byte-aligned offsets (SDM 11.4.1); a narrower read returns the bytes of the
/// register's dword, anything else reads 0 (the access is undefined on hardware).
fn device_read(vcpu: &'static Vcpu, device: Device, offset: u64, size: u8) -> Result<u64, Outcome> {
    Ok(match device {
        Device::Lapic => {
            let dword = (offset & !3) as u32;
            let value = vcpu.lapic().read_mmio(dword, crate::arch::tsc::now()).unwrap_or(0);
            (u64::from(value) >> (8 * (offset & 3))) & mmio_decode::size_mask(size)
        }
        Device::Ioapic => u64::from(vcpu.vm.ioapic.lock().mmio_read(offset, size)),
        Device::Forwarded => {
            let access = forwarded(offset, size, None);
            match crate::service::access(vcpu, &access)? {
                Completion::Read(v) => v & mmio_decode::size_mask(size),
                Completion::Written | Completion::Failed => mmio_decode::size_mask(size),
            }
        }
    })
}

/// The forwarded MMIO access at guest-physical `gpa` (`write`: its data).
fn forwarded(gpa: u64, size: u8, write: Option<u64>) -> crate::service::Access {
    crate::service::Access {
        kind: hv_abi::io_request::kind::MMIO,
        address: gpa,
        size,
        write: write.is_some(),
        data: write.unwrap_or(0),
    }
}

/// Writes `size` bytes at `offset` of the device. The LAPIC takes only 32-bit writes
/// (SDM 11.4.1); others are dropped.
fn device_write(vcpu: &'static Vcpu, device: Device, offset: u64, size: u8, value: u64) -> Result<(), Outcome> {
    match device {
        Device::Lapic => {
            if size != 4 {
                return Ok(());
            }
            let effect = vcpu.lapic().write_mmio(offset as u32, value as u32, crate::arch::tsc::now());
            if let Ok(effect) = effect {
                crate::virq::apply_effect(vcpu, effect);
            }
        }
        Device::Ioapic => {
            let effect = vcpu.vm.ioapic.lock().mmio_write(offset, value as u32, size);
            crate::virq::deliver_ioapic_effect(vcpu.vm, effect);
        }
        Device::Forwarded => {
            crate::service::access(vcpu, &forwarded(offset, size, Some(value)))?;
        }
    }
    Ok(())
}

/// The guest's mode for decoding, from CR0.PE and the code segment (SDM Vol. 1 3.6).
pub fn cpu_mode() -> CpuMode {
    let cs = vmcs::read(guest::CS_ACCESS_RIGHTS);
    if vmcs::read(guest::CR0) & CR0_PE == 0 {
        CpuMode::Real16
    } else if cs & CS_LONG != 0 && vmcs::read(guest::IA32_EFER_FULL) & (1 << 10) != 0 {
        CpuMode::Long64
    } else if cs & CS_DEFAULT_32 != 0 {
        CpuMode::Protected32
    } else {
        CpuMode::Protected16
    }
}

/// The body of [`fetch_instruction`] and [`fetch_string_io_instruction`], written once
/// and expanded in each: an `#[inline(always)]` function shared by the two changed how
/// the compiler inlines the whole MMIO path and cost every MMIO round trip about 36
/// instructions (`cargo xtask bench`, `io.forwarded_mmio`).
macro_rules! fetch_at_rip {
    ($vcpu:expr, $mode:expr) => {{
        let vcpu: &'static Vcpu = $vcpu;
        let at = CodeLocation {
            mode: $mode,
            cs_base: vmcs::read(guest::CS_BASE),
            cs_limit: vmcs::read(guest::CS_LIMIT) as u32,
            rip: vmcs::read(guest::RIP),
            // SS.DPL is the CPL (SDM Vol. 3C "Guest Register State"); 0 in real mode.
            cpl: hv_core::string_io::cpl(vmcs::read(guest::SS_ACCESS_RIGHTS)),
        };
        let read_ram = |gpa: u64, dst: &mut [u8]| {
            let Some(host) = vcpu.vm.guest_range(gpa, dst.len() as u64) else {
                return false;
            };
            // SAFETY: `dst.len()` bytes inside the VM's RAM (checked), direct-mapped;
            // the guest may change them concurrently, which only changes what is
            // decoded (and every decoded instruction, or INS/OUTS opcode, is checked
            // against the exit).
            let src = unsafe { core::slice::from_raw_parts(frames::phys_to_virt(host), dst.len()) };
            dst.copy_from_slice(src);
            true
        };
        instruction_fetch::fetch(&at, &dispatch::guest_paging_state(), |gpa| vcpu.vm.read_guest_u64(gpa), read_ram)
    }};
}

/// Reads up to 15 instruction bytes at CS:RIP as the processor would (within the CS
/// limit, through the guest's page tables); fewer when a byte cannot be fetched: the
/// decoder then says whether the instruction fits. `mode` is [`cpu_mode`].
fn fetch_instruction(vcpu: &'static Vcpu, mode: CpuMode) -> Fetched {
    fetch_at_rip!(vcpu, mode)
}

/// The INS/OUTS at CS:RIP (when the exit does not describe its prefixes), fetched as
/// [`fetch_instruction`] fetches an MMIO instruction.
#[inline(never)]
pub fn fetch_string_io_instruction(vcpu: &'static Vcpu, mode: CpuMode) -> Fetched {
    fetch_at_rip!(vcpu, mode)
}

/// The prefixes of the INS/OUTS run into bytes that could not be fetched: the fault
/// the processor would raise (RIP unchanged), or the partition stopped (as
/// [`fetch_failed`] for MMIO, without its log line).
#[cold]
#[inline(never)]
pub fn string_io_fetch_failed(vcpu: &'static Vcpu, regs: &mut GuestRegisters, fetched: &Fetched) -> Outcome {
    match fetched.missing() {
        Missing::Fault(fault) => {
            if let Some(cr2) = fault.cr2 {
                // The exit path reloads CR2 from `regs` before this entry.
                regs.cr2 = cr2;
            }
            dispatch::inject(InterruptionInfo::hardware_exception(fault.vector, fault.error_code))
        }
        Missing::Stop { what, detail } => dispatch::stop_with_dump(vcpu, what, detail),
    }
}

/// The decoder needs bytes that could not be fetched: delivers the fault the processor
/// would raise (RIP unchanged), or stops the partition when there is none.
#[cold]
#[inline(never)]
fn fetch_failed(vcpu: &'static Vcpu, regs: &mut GuestRegisters, fetched: &Fetched) -> Outcome {
    match fetched.missing() {
        Missing::Fault(fault) => {
            log::warn!(
                "partition {}: vcpu {}: MMIO instruction fetch at {:#x} failed: injected {fault}",
                vcpu.vm.name,
                vcpu.id,
                fetched.linear,
            );
            if let Some(cr2) = fault.cr2 {
                // The exit path reloads CR2 from `regs` before this entry.
                regs.cr2 = cr2;
            }
            dispatch::inject(InterruptionInfo::hardware_exception(fault.vector, fault.error_code))
        }
        Missing::Stop { what, detail } => dispatch::stop_with_dump(vcpu, what, detail),
    }
}
