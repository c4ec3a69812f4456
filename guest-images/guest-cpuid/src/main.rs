//! `guest-cpuid`: checks the virtual CPUID contract (see `hv_core::virt_cpuid`):
//! hypervisor bit set, VMX hidden, the hypervisor leaves with their signature, APIC IDs
//! equal to vCPU ids, topology leaves matching the partition's vCPU count.
#![no_std]
#![no_main]

use core::arch::x86_64::{__cpuid_count, CpuidResult};

use guest_rt::{check, println, stop};

fn cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    __cpuid_count(leaf, subleaf)
}

/// Entry point (see `hv_abi::start`): RDI = vCPU id, RSI = RAM size in bytes.
#[no_mangle]
#[link_section = ".text._start"]
pub extern "C" fn _start(vcpu: u64, _ram_bytes: u64) -> ! {
    const NAME: &str = "guest-cpuid";
    let vcpus = 1;
    let mut ok = true;
    let l1 = cpuid(1, 0);
    ok &= check(NAME, "leaf 1: hypervisor bit (ECX 31) set", l1.ecx & (1 << 31) != 0);
    ok &= check(NAME, "leaf 1: VMX (ECX 5) hidden", l1.ecx & (1 << 5) == 0);
    ok &= check(NAME, "leaf 1: SMX (ECX 6) hidden", l1.ecx & (1 << 6) == 0);
    ok &= check(NAME, "leaf 1: initial APIC ID equals the vCPU id", u64::from(l1.ebx >> 24) == vcpu);
    let h = cpuid(0x4000_0000, 0);
    let mut sig = [0u8; 12];
    sig[..4].copy_from_slice(&h.ebx.to_le_bytes());
    sig[4..8].copy_from_slice(&h.ecx.to_le_bytes());
    sig[8..].copy_from_slice(&h.edx.to_le_bytes());
    println!("{NAME}: hypervisor signature {:?}, highest leaf {:#x}", core::str::from_utf8(&sig).unwrap_or("?"), h.eax);
    ok &= check(NAME, "leaf 0x40000000: signature HVRSHVRSHVRS", &sig == b"HVRSHVRSHVRS");
    ok &= check(NAME, "leaf 0x40000000: highest hypervisor leaf >= 0x40000001", h.eax >= 0x4000_0001);
    ok &= check(NAME, "leaf 0x40000001: interface version 1", cpuid(0x4000_0001, 0).eax == 1);
    let max = cpuid(0, 0).eax;
    if max >= 0xb {
        let smt = cpuid(0xb, 0);
        let core = cpuid(0xb, 1);
        ok &= check(NAME, "leaf 0xB: x2APIC id equals the vCPU id", u64::from(smt.edx) == vcpu);
        ok &= check(NAME, "leaf 0xB: one thread per core", smt.ebx & 0xffff == 1);
        ok &= check(NAME, "leaf 0xB: logical processors = vCPU count", core.ebx & 0xffff == vcpus);
    }
    if ok {
        println!("PASS {NAME}");
    }
    stop(if ok { 0 } else { 1 })
}
